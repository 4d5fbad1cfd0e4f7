/* The switch's forwarding table: destinations (a key, or a MAC address) to
 * a port or a group of ports, learned or static; the groups and how a
 * packet picks one of their ports (by its flow's hash, or in turn).
 *
 * Keys are 64 bits: a key-mode destination is the slot's 32-bit dst key; a
 * MAC-mode destination is BIO_SWITCH_MAC_TAG | the 48-bit address, so the
 * two can never meet. An entry's target is a port index (>= 0), a group
 * (-2 - g), or BIO_SWITCH_LOCAL (a NIC queue's own address: never learned,
 * unknown as a destination). A removed entry leaves no trace (learned ones
 * go with their port), so the table never fills with the dead.
 *
 * Where a packet goes through it: ports/forward.c looks its destination up
 * here, asks a group which of its live ports takes it, and learns its
 * source on the port it came from.
 */
#include "ports/switch.h"

#include <errno.h>
#include <string.h>

/* ---- hashes ------------------------------------------------------------------ */

static uint32_t
bio_switch_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    return (uint32_t)(k ^ (k >> 33));
}

uint32_t
bio_port_flow_hash(const unsigned char *d, uint32_t len)
{
    uint32_t at = 12, proto = 0, l4 = 0;
    uint64_t h = 0;
    if (len < 14) {
        memcpy(&h, d, len < 8 ? len : 8);
        return bio_switch_hash(h ^ len);
    }
    uint16_t type = (uint16_t)(d[12] << 8 | d[13]);
    if (type == 0x8100 && len >= 18) {
        at = 16;
        type = (uint16_t)(d[16] << 8 | d[17]);
    }
    at += 2;
    if (type == 0x0800 && len >= at + 20) {
        proto = d[at + 9];
        memcpy(&h, d + at + 12, 8); /* source and destination */
        l4 = at + (uint32_t)(d[at] & 0x0f) * 4;
    } else if (type == 0x86dd && len >= at + 40) {
        uint64_t w[4];
        proto = d[at + 6];
        memcpy(w, d + at + 8, 32);
        h = w[0] ^ w[1] ^ w[2] ^ w[3];
        l4 = at + 40;
    } else {
        memcpy(&h, d, 8); /* no IP: the MAC addresses */
        return bio_switch_hash(h ^ (uint64_t)(d[8] << 8 | d[9]) << 48);
    }
    if ((proto == 6 || proto == 17) && len >= l4 + 4) {
        uint32_t ports;
        memcpy(&ports, d + l4, 4);
        h ^= (uint64_t)ports << 17;
    }
    return bio_switch_hash(h ^ proto);
}

/* ---- the table -------------------------------------------------------------- */

/* The table entry for key, or the empty one where it would go; NULL if the
 * table is full and the key absent. */
static BioSwitchEntry *
bio_switch_slot(BioSwitch *sw, uint64_t key)
{
    uint32_t i = bio_switch_hash(key) & sw->fib_mask;
    for (uint32_t n = 0; n <= sw->fib_mask; n++, i = (i + 1) & sw->fib_mask) {
        BioSwitchEntry *e = &sw->fib[i];
        if (!e->used || e->key == key)
            return e;
    }
    return NULL;
}

int
bio_switch_lookup(BioSwitch *sw, int i, uint64_t key)
{
    BioSwitchPort *sp = &sw->ports[i];
    if (sp->dst_gen == sw->fib_gen && sp->dst_key == key)
        return sp->dst_target; /* a run of packets to one destination: one probe */
    BioSwitchEntry *e = bio_switch_slot(sw, key);
    sp->dst_key = key;
    sp->dst_target = e != NULL && e->used ? e->port : -1;
    sp->dst_gen = sw->fib_gen;
    return sp->dst_target;
}

/* The port that learned entry e, or -1 (a static route, a local address). */
static inline int
bio_switch_learner(const BioSwitchEntry *e)
{
    return e->used && !e->fixed && e->port >= 0 ? e->port : -1;
}

/* Empty slot k, moving the entries after it in its probe run back so that
 * each stays reachable from its hash (linear probing's deletion: the table
 * keeps no tombstones, so what goes frees its room). */
static void
bio_switch_delete_at(BioSwitch *sw, uint32_t k)
{
    uint32_t mask = sw->fib_mask, hole = k;
    int learner = bio_switch_learner(&sw->fib[k]);
    if (learner >= 0)
        sw->ports[learner].learned--;
    for (uint32_t j = (k + 1) & mask; sw->fib[j].used; j = (j + 1) & mask) {
        uint32_t home = bio_switch_hash(sw->fib[j].key) & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) { /* its home is not after the hole */
            sw->fib[hole] = sw->fib[j];
            hole = j;
        }
    }
    memset(&sw->fib[hole], 0, sizeof(sw->fib[hole]));
    sw->fib_used--;
    sw->fib_gen++;
}

/* A fixed entry (a static route, a local address) is never changed by
 * learning, only replaced by another fixed one or removed; the table is kept
 * below 3/4 full; each entry learned counts against its port. */
int
bio_switch_set(BioSwitch *sw, uint64_t key, int port, int fixed)
{
    BioSwitchEntry *e = bio_switch_slot(sw, key);
    if (port == -1 && !fixed) {
        if (e == NULL || !e->used)
            return 0; /* nothing to remove */
        bio_switch_delete_at(sw, (uint32_t)(e - sw->fib));
        return 1;
    }
    if (e == NULL || (!e->used && (sw->fib_used + 1) * 4 > (sw->fib_mask + 1) * 3))
        return -1;
    if (e->used && e->fixed && !fixed)
        return 0;
    if (e->used && e->port == port && e->fixed == fixed)
        return 0;
    int learner = bio_switch_learner(e);
    if (learner >= 0)
        sw->ports[learner].learned--;
    if (!e->used)
        sw->fib_used++;
    e->used = 1;
    e->key = key;
    e->port = port;
    e->fixed = (uint8_t)fixed;
    if ((learner = bio_switch_learner(e)) >= 0)
        sw->ports[learner].learned++;
    sw->fib_gen++;
    return 1;
}

void
bio_switch_forget(BioSwitch *sw, int i)
{
    for (uint32_t k = 0; k <= sw->fib_mask;) {
        if (bio_switch_learner(&sw->fib[k]) == i)
            bio_switch_delete_at(sw, k); /* a later entry may have moved here: look again */
        else
            k++;
    }
}

/* Learning's policy (docs: the Switch's docstring): static routes and local
 * addresses win; an address learned on a NIC queue (a host on the wire) is
 * not taken over by a client's port; a port learns at most max_learned
 * addresses, so that no client fills the table for the others. */
void
bio_switch_learn(BioSwitch *sw, int i, uint64_t src)
{
    BioSwitchPort *sp = &sw->ports[i];
    if (!sw->learning || src == 0 || (sp->src_gen == sw->fib_gen && sp->src_key == src))
        return; /* (the table has not changed since it said: nothing to learn) */
    BioSwitchEntry *e = bio_switch_slot(sw, src);
    int known = e != NULL && e->used;
    if (known && (e->fixed || e->port == i)) {
        sp->src_key = src;
        sp->src_gen = sw->fib_gen;
        return;
    }
    if (known && sw->ports[e->port].nic != NULL && sw->ports[i].nic == NULL) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_LEARN_REFUSED, 1);
        return;
    }
    if (sw->ports[i].learned >= sw->max_learned) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_LEARN_LIMITED, 1);
        return;
    }
    int r = bio_switch_set(sw, src, i, 0);
    if (r > 0)
        BIO_COUNT(sw->counters, BIO_SWITCH_C_LEARNED, 1);
    else if (r < 0)
        BIO_COUNT(sw->counters, BIO_SWITCH_C_TABLE_FULL, 1);
}

/* ---- groups ---------------------------------------------------------------- */

/* A hash of the packet's flow: in MAC mode its frame's (bio_port_flow_hash),
 * else its source key. */
static uint32_t
bio_switch_flow_hash(const BioSwitch *sw, const BioSwitchPacket *p)
{
    return sw->by_mac ? bio_port_flow_hash(p->data, p->len) : bio_switch_hash(p->src);
}

int
bio_switch_pick(BioSwitch *sw, int g, const BioSwitchPacket *p)
{
    BioSwitchGroup *grp = &sw->groups[g];
    int live[BIO_SWITCH_GROUP_PORTS], n = 0;
    for (int k = 0; k < grp->n; k++)
        if (!sw->ports[grp->ports[k]].gone)
            live[n++] = grp->ports[k];
    if (n == 0)
        return -1;
    uint32_t at = grp->spread == BIO_SWITCH_SPREAD_FLOW ? bio_switch_flow_hash(sw, p) : grp->next++;
    return live[at % (uint32_t)n];
}

/* ---- Python entry points ----------------------------------------------------- */

/* A key argument of route(): 1..2^32-2 in key mode, a MAC-mode key
 * (BIO_SWITCH_MAC_TAG | address) in MAC mode. 0 or -1 with ValueError. */
static int
bio_switch_key_arg(BioSwitch *sw, PyObject *obj, uint64_t *key)
{
    unsigned long long k = PyLong_AsUnsignedLongLong(obj);
    if (k == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    int ok = sw->by_mac ? (k >> 48) == (BIO_SWITCH_MAC_TAG >> 48)
                        : k >= 1 && k < BIO_PORT_BROADCAST;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, sw->by_mac ? "key must be a MAC address key, got %llu"
                                                  : "key must be between 1 and 4294967294 (0 is "
                                                    "\"no key\", 4294967295 broadcast), got %llu",
                     k);
        return -1;
    }
    *key = k;
    return 0;
}

/* A route's target: None (remove), a port index, or -2 - g for group g.
 * 0 or -1 with ValueError. */
static int
bio_switch_target_arg(BioSwitch *sw, PyObject *obj, int *target)
{
    if (obj == Py_None) {
        *target = -1;
        return 0;
    }
    long t = PyLong_AsLong(obj);
    if (t == -1 && PyErr_Occurred())
        return -1;
    int n = atomic_load(&sw->nports);
    if ((t >= 0 && t < n) || (t <= -2 && -2 - t < sw->ngroups)) {
        *target = (int)t;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "target must be a port index from 0 to %d or a group from "
                 "-2 to %d, got %ld", n - 1, -1 - sw->ngroups, t);
    return -1;
}

PyObject *
bio_switch_route_py(BioSwitch *sw, PyObject *args)
{
    PyObject *key_o, *target_o;
    uint64_t key;
    int target;
    if (!PyArg_ParseTuple(args, "OO:route", &key_o, &target_o) ||
        bio_switch_key_arg(sw, key_o, &key) < 0 || bio_switch_target_arg(sw, target_o, &target) < 0)
        return NULL;
    /* with the GIL: a pass holding the table never needs it, and ends soon */
    bio_switch_lock_ready(sw);
    pthread_mutex_lock(&sw->lock);
    int r = bio_switch_set(sw, key, target, target != -1);
    pthread_mutex_unlock(&sw->lock);
    if (r < 0)
        return bio_port_oserror(ENOSPC, "forwarding table full (%u entries)", sw->fib_mask + 1);
    Py_RETURN_NONE;
}

PyObject *
bio_switch_local_py(BioSwitch *sw, PyObject *arg)
{
    uint64_t key;
    if (bio_switch_key_arg(sw, arg, &key) < 0)
        return NULL;
    bio_switch_lock_ready(sw);
    pthread_mutex_lock(&sw->lock); /* with the GIL, as in route() */
    BioSwitchEntry *e = bio_switch_slot(sw, key);
    int r = e != NULL && e->used && e->fixed ? 0 : bio_switch_set(sw, key, BIO_SWITCH_LOCAL, 1);
    pthread_mutex_unlock(&sw->lock);
    if (r < 0)
        return bio_port_oserror(ENOSPC, "forwarding table full (%u entries)", sw->fib_mask + 1);
    Py_RETURN_NONE;
}

PyObject *
bio_switch_routes(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    bio_switch_lock_ready(sw);
    pthread_mutex_lock(&sw->lock); /* with the GIL, as in route() */
    for (uint32_t k = 0; d != NULL && k <= sw->fib_mask; k++) {
        BioSwitchEntry *e = &sw->fib[k];
        if (!e->used || e->port == -1)
            continue;
        PyObject *key = PyLong_FromUnsignedLongLong(e->key);
        PyObject *v = Py_BuildValue("(iO)", e->port, e->fixed ? Py_True : Py_False);
        if (key == NULL || v == NULL || PyDict_SetItem(d, key, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(key);
        Py_XDECREF(v);
    }
    pthread_mutex_unlock(&sw->lock);
    return d;
}

PyObject *
bio_switch_group_py(BioSwitch *sw, PyObject *args)
{
    PyObject *ports, *seq;
    int spread;
    if (!PyArg_ParseTuple(args, "Oi:group", &ports, &spread))
        return NULL;
    if ((seq = PySequence_Fast(ports, "ports must be a sequence of port indices")) == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int nports = atomic_load(&sw->nports);
    BioSwitchGroup grp = {.n = (int)n, .spread = spread};
    int ok = n >= 1 && n <= BIO_SWITCH_GROUP_PORTS && (spread == BIO_SWITCH_SPREAD_FLOW ||
                                                     spread == BIO_SWITCH_SPREAD_RR);
    for (Py_ssize_t k = 0; ok && k < n; k++) {
        long p = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, k));
        ok = p >= 0 && p < nports;
        grp.ports[ok ? k : 0] = (int)p;
    }
    Py_DECREF(seq);
    if (!ok || sw->ngroups >= BIO_SWITCH_GROUPS) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "a group is 1 to %d port indices from 0 to %d spread by "
                     "flow (0) or in turn (1), and a switch has at most %d groups",
                     BIO_SWITCH_GROUP_PORTS, nports - 1, BIO_SWITCH_GROUPS);
        return NULL;
    }
    bio_switch_lock_ready(sw);
    pthread_mutex_lock(&sw->lock);
    sw->groups[sw->ngroups] = grp;
    int g = sw->ngroups++;
    pthread_mutex_unlock(&sw->lock);
    return PyLong_FromLong(-2 - g);
}

PyObject *
bio_switch_groups_py(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(sw->ngroups);
    for (int g = 0; out != NULL && g < sw->ngroups; g++) {
        PyObject *ports = PyTuple_New(sw->groups[g].n);
        for (int k = 0; ports != NULL && k < sw->groups[g].n; k++)
            PyTuple_SET_ITEM(ports, k, PyLong_FromLong(sw->groups[g].ports[k]));
        PyObject *item = ports ? Py_BuildValue("(Ni)", ports, sw->groups[g].spread) : NULL;
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, g, item);
    }
    return out;
}
