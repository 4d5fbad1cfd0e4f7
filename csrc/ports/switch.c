/* The switch (SwitchCore): party 0 of one region per port, it copies each
 * packet a client publishes into the RX ring of the port its destination key
 * names (static routes, learning from source keys, flooding broadcast and
 * unknown keys), so clients share no memory with each other.
 *
 * Where a packet goes through it: a client's TX ring (the switch's rx side
 * of that port) -> bio_switch_route (by dst key) -> a copy into the free
 * slot of each destination port's RX ring (the switch's tx side) -> one
 * publish per ring per pass, kicking only clients that sleep. A packet that
 * cannot be delivered is counted (unknown, full, gone, filtered), never
 * silently lost; with on_full="wait" its source waits for room instead.
 */
#include "ports/ports.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <unistd.h>

/* ---- switch: forwarding table -------------------------------------------- */

enum bio_switch_counter {
    BIO_SWITCH_C_FORWARDED,     /* copies delivered into a port's RX ring */
    BIO_SWITCH_C_FLOODED,       /* packets sent to every other port */
    BIO_SWITCH_C_UNKNOWN_DROPS, /* unknown destination, flooding off */
    BIO_SWITCH_C_FULL_DROPS,    /* destination ring full, on_full="drop" */
    BIO_SWITCH_C_GONE_DROPS,    /* destination port closed or exited */
    BIO_SWITCH_C_FILTERED,      /* destination is the port it came from */
    BIO_SWITCH_C_BAD_SLOTS,     /* slots naming a buffer outside the pool */
    BIO_SWITCH_C_LEARNED,       /* table entries learned or moved */
    BIO_SWITCH_C_TABLE_FULL,    /* keys not learned: table full */
    BIO_SWITCH_C_PASSES,
    BIO_SWITCH_C_SLEEPS,
    BIO_SWITCH_C_WAKEUPS,
    BIO_SWITCH_C_PORTS_GONE,
    BIO_SWITCH_NCOUNTERS
};

static const char *const bio_switch_counter_names[BIO_SWITCH_NCOUNTERS] = {
    "forwarded", "flooded", "unknown_drops", "full_drops", "gone_drops", "filtered",
    "bad_slots", "learned", "table_full", "passes", "sleeps", "wakeups", "ports_gone",
};

enum { BIO_SWITCH_DONE, BIO_SWITCH_BLOCKED };
#define BIO_SWITCH_RETURN_AFTER 65536 /* forward() returns to Python this often */

typedef struct {
    BioPortRing *rx, *tx; /* the switch's side: reads the client's TX, fills its RX */
    int gone;            /* 0 live, else -EPIPE (closed), -ECONNRESET (exited), -EBADMSG */
    int exited;          /* its process exited: take what it sent, then gone */
    int blocked;         /* on_full="wait": the port its next packet waits for, or -1 */
} BioSwitchPort;

typedef struct {
    uint32_t key;
    int32_t port; /* -1: removed */
    uint8_t used, fixed;
} BioSwitchEntry;

typedef struct {
    const unsigned char *data;
    uint32_t len, flags, dst, src;
    struct sockaddr_in6 name;
} BioSwitchPacket;

typedef struct {
    PyObject_HEAD
    int efd;                 /* the switch's doorbell, owned */
    int max_ports;
    _Atomic int nports;
    BioSwitchPort *ports;
    PyObject *rings;         /* list keeping every ring alive */
    BioSwitchEntry *fib;
    uint32_t fib_mask, fib_used;
    pthread_mutex_t lock;    /* the table: held by a pass and by route() */
    int learning, flood_unknown, wait_full;
    unsigned int budget;     /* packets per port per pass */
    int64_t linger_ns;
    _Atomic int stop;
    uint64_t counters[BIO_SWITCH_NCOUNTERS];
    struct pollfd *pfd;
    int *pfd_port;
    int busy;
} BioSwitch;

static uint32_t
bio_switch_hash(uint32_t k)
{
    k ^= k >> 16;
    k *= 0x7feb352du;
    k ^= k >> 15;
    k *= 0x846ca68bu;
    return k ^ (k >> 16);
}

/* The table entry for key, or the empty one where it would go; NULL if the
 * table is full and the key absent. */
static BioSwitchEntry *
bio_switch_slot(BioSwitch *sw, uint32_t key)
{
    uint32_t i = bio_switch_hash(key) & sw->fib_mask;
    for (uint32_t n = 0; n <= sw->fib_mask; n++, i = (i + 1) & sw->fib_mask) {
        BioSwitchEntry *e = &sw->fib[i];
        if (!e->used || e->key == key)
            return e;
    }
    return NULL;
}

/* Port that key routes to, or -1 (unknown or removed). Table lock held. */
static int
bio_switch_lookup(BioSwitch *sw, uint32_t key)
{
    BioSwitchEntry *e = bio_switch_slot(sw, key);
    return e != NULL && e->used ? e->port : -1;
}

/* key -> port (-1 removes). A fixed entry (static route) is never changed
 * by learning. 1 changed, 0 unchanged, -1 table full (kept below 3/4). */
static int
bio_switch_set(BioSwitch *sw, uint32_t key, int port, int fixed)
{
    BioSwitchEntry *e = bio_switch_slot(sw, key);
    if (e == NULL || (!e->used && (sw->fib_used + 1) * 4 > (sw->fib_mask + 1) * 3))
        return -1;
    if (e->used && e->fixed && !fixed)
        return 0;
    if (e->used && e->port == port && e->fixed == fixed)
        return 0;
    if (!e->used)
        sw->fib_used++;
    e->used = 1;
    e->key = key;
    e->port = port;
    e->fixed = (uint8_t)fixed;
    return 1;
}

/* Learn that `src` lives behind port i. */
static void
bio_switch_learn(BioSwitch *sw, int i, uint32_t src)
{
    if (!sw->learning || src == 0 || src == BIO_PORT_BROADCAST)
        return;
    int r = bio_switch_set(sw, src, i, 0);
    if (r > 0)
        BIO_COUNT(sw->counters, BIO_SWITCH_C_LEARNED, 1);
    else if (r < 0)
        BIO_COUNT(sw->counters, BIO_SWITCH_C_TABLE_FULL, 1);
}

/* Port i is gone (closed, exited or corrupt): forget what was learned on
 * it, release sources waiting for it. Static routes stay, so that packets
 * for it are dropped (gone_drops) rather than flooded to everyone else. */
static void
bio_switch_gone(BioSwitch *sw, int i, int why)
{
    if (sw->ports[i].gone)
        return;
    sw->ports[i].gone = why;
    BIO_COUNT(sw->counters, BIO_SWITCH_C_PORTS_GONE, 1);
    for (uint32_t k = 0; k <= sw->fib_mask; k++)
        if (sw->fib[k].used && sw->fib[k].port == i && !sw->fib[k].fixed)
            sw->fib[k].port = -1;
    int n = atomic_load(&sw->nports);
    for (int q = 0; q < n; q++)
        if (sw->ports[q].blocked == i)
            sw->ports[q].blocked = -1;
}

/* ---- switch: moving packets --------------------------------------------- */

/* Read the packet at pos of a client's TX ring once (the client may change
 * the slot under us). 0, or -1 if it names a buffer outside the pool. */
static int
bio_switch_read(BioPortRing *rx, uint32_t pos, BioSwitchPacket *p)
{
    uint32_t idx, k = pos & rx->mask;
    p->data = bio_port_ring_buf(rx, pos, &idx);
    if (p->data == NULL)
        return -1;
    p->len = __atomic_load_n(&rx->s->len[k], __ATOMIC_RELAXED);
    if (p->len > rx->reg->slot_size)
        p->len = rx->reg->slot_size;
    p->flags = __atomic_load_n(&rx->s->flags[k], __ATOMIC_RELAXED) & BIO_FLAG_TRUNCATED;
    p->dst = __atomic_load_n(&rx->s->dst[k], __ATOMIC_RELAXED);
    p->src = __atomic_load_n(&rx->s->src[k], __ATOMIC_RELAXED);
    memcpy(&p->name, &rx->s->names[k], sizeof(p->name));
    return 0;
}

/* Free slots in port q's RX ring, reading its client's position when the
 * last one known says full. */
static uint32_t
bio_switch_room(BioSwitch *sw, int q)
{
    BioPortRing *t = sw->ports[q].tx;
    if (t->tail == t->head && bio_port_ring_refresh(t) < 0)
        bio_switch_gone(sw, q, -EBADMSG);
    return sw->ports[q].gone ? 0 : t->tail - t->head;
}

/* Copy p into the free slot at the head of port q's RX ring. */
static void
bio_switch_copy(BioSwitch *sw, int q, const BioSwitchPacket *p)
{
    BioPortRing *t = sw->ports[q].tx;
    uint32_t idx;
    unsigned char *buf = bio_port_ring_buf(t, t->head, &idx);
    if (buf == NULL) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_BAD_SLOTS, 1);
        bio_switch_gone(sw, q, -EBADMSG);
        return;
    }
    memcpy(buf, p->data, p->len);
    bio_port_tx_commit(t, p->len, p->flags, p->dst, p->src, &p->name);
    BIO_COUNT(sw->counters, BIO_SWITCH_C_FORWARDED, 1);
}

/* Deliver p from port i to every other live port; with on_full="wait",
 * only when all of them have room. BIO_SWITCH_DONE or BIO_SWITCH_BLOCKED. */
static int
bio_switch_flood(BioSwitch *sw, int i, const BioSwitchPacket *p)
{
    int n = atomic_load_explicit(&sw->nports, memory_order_acquire);
    for (int q = 0; sw->wait_full && q < n; q++) {
        if (q != i && !sw->ports[q].gone && bio_switch_room(sw, q) == 0) {
            sw->ports[i].blocked = q;
            return BIO_SWITCH_BLOCKED;
        }
    }
    for (int q = 0; q < n; q++) {
        if (q == i || sw->ports[q].gone)
            continue;
        if (bio_switch_room(sw, q) > 0)
            bio_switch_copy(sw, q, p);
        else
            BIO_COUNT(sw->counters, BIO_SWITCH_C_FULL_DROPS, 1);
    }
    BIO_COUNT(sw->counters, BIO_SWITCH_C_FLOODED, 1);
    return BIO_SWITCH_DONE;
}

/* Deliver p from port i to port q. BIO_SWITCH_DONE or BIO_SWITCH_BLOCKED. */
static int
bio_switch_unicast(BioSwitch *sw, int i, int q, const BioSwitchPacket *p)
{
    if (q == i) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_FILTERED, 1);
        return BIO_SWITCH_DONE;
    }
    if (sw->ports[q].gone) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_GONE_DROPS, 1);
        return BIO_SWITCH_DONE;
    }
    if (bio_switch_room(sw, q) == 0) {
        if (sw->wait_full && !sw->ports[q].gone) {
            sw->ports[i].blocked = q;
            return BIO_SWITCH_BLOCKED;
        }
        BIO_COUNT(sw->counters,
                  sw->ports[q].gone ? BIO_SWITCH_C_GONE_DROPS : BIO_SWITCH_C_FULL_DROPS, 1);
        return BIO_SWITCH_DONE;
    }
    bio_switch_copy(sw, q, p);
    return BIO_SWITCH_DONE;
}

/* Route the packet at pos of port i's client TX ring: by destination key
 * (broadcast and, with flood_unknown, unknown keys go everywhere else),
 * then learn its source key. BIO_SWITCH_DONE or BIO_SWITCH_BLOCKED. */
static int
bio_switch_route(BioSwitch *sw, int i, uint32_t pos)
{
    BioSwitchPacket p;
    if (bio_switch_read(sw->ports[i].rx, pos, &p) < 0) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_BAD_SLOTS, 1);
        return BIO_SWITCH_DONE;
    }
    int r, q = p.dst == BIO_PORT_BROADCAST ? -1 : bio_switch_lookup(sw, p.dst);
    if (q >= 0)
        r = bio_switch_unicast(sw, i, q, &p);
    else if (p.dst == BIO_PORT_BROADCAST || sw->flood_unknown)
        r = bio_switch_flood(sw, i, &p);
    else {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_UNKNOWN_DROPS, 1);
        r = BIO_SWITCH_DONE;
    }
    if (r == BIO_SWITCH_DONE)
        bio_switch_learn(sw, i, p.src);
    return r;
}

/* Route what port i's client has published, up to the budget; a port whose
 * client closed or exited is gone once all it sent is taken. Returns
 * packets taken. */
static uint32_t
bio_switch_take(BioSwitch *sw, int i)
{
    BioSwitchPort *sp = &sw->ports[i];
    BioPortRing *rx = sp->rx;
    int ending = sp->exited || bio_port_ring_peer_state(rx) == BIO_PORT_CLOSED;
    if (bio_port_ring_refresh(rx) < 0) {
        bio_switch_gone(sw, i, -EBADMSG);
        return 0;
    }
    uint32_t n = 0;
    sp->blocked = -1;
    while (rx->head != rx->tail && n < sw->budget && !sp->gone) {
        if (bio_switch_route(sw, i, rx->head) == BIO_SWITCH_BLOCKED)
            break;
        rx->head++;
        n++;
    }
    rx->cur = rx->head;
    if (ending && rx->head == rx->tail)
        bio_switch_gone(sw, i,
                        bio_port_ring_peer_state(rx) == BIO_PORT_CLOSED ? -EPIPE : -ECONNRESET);
    return n;
}

/* One pass over every live port, then publish what moved: releases to the
 * clients that sent, packets to the clients that receive (each kicked only
 * if it sleeps). Returns packets taken. Table lock held. nogil. */
static uint32_t
bio_switch_pass(BioSwitch *sw)
{
    int n = atomic_load_explicit(&sw->nports, memory_order_acquire);
    uint32_t moved = 0;
    for (int i = 0; i < n; i++)
        if (!sw->ports[i].gone)
            moved += bio_switch_take(sw, i);
    for (int i = 0; i < n; i++) {
        if (sw->ports[i].gone)
            continue;
        bio_port_ring_publish(sw->ports[i].rx);
        bio_port_ring_publish(sw->ports[i].tx);
    }
    BIO_COUNT(sw->counters, BIO_SWITCH_C_PASSES, 1);
    return moved;
}

/* ---- switch: sleeping ------------------------------------------------------ */

/* Raise the switch's flags before sleeping: on every live client's TX ring
 * (wake when it publishes past what the last pass saw) and on every full
 * ring a source waits for (wake when one slot frees). After the fence,
 * 1 if something is there already. nogil. */
static int
bio_switch_arm(BioSwitch *sw, int n)
{
    for (int i = 0; i < n; i++) {
        BioSwitchPort *sp = &sw->ports[i];
        if (sp->gone)
            continue;
        atomic_store_explicit(&sp->rx->me->wake_at, sp->rx->tail + 1, memory_order_relaxed);
        atomic_store_explicit(&sp->rx->me->sleeping, 1, memory_order_seq_cst);
        if (sp->blocked >= 0) {
            BioPortRing *t = sw->ports[sp->blocked].tx;
            atomic_store_explicit(&t->me->wake_at, t->head + 1 - t->cap, memory_order_relaxed);
            atomic_store_explicit(&t->me->sleeping, 1, memory_order_seq_cst);
        }
    }
    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < n; i++) {
        BioSwitchPort *sp = &sw->ports[i];
        if (sp->gone)
            continue;
        if (atomic_load_explicit(&sp->rx->peer->pos, memory_order_acquire) != sp->rx->tail ||
            bio_port_ring_peer_state(sp->rx) == BIO_PORT_CLOSED)
            return 1;
        if (sp->blocked >= 0) {
            BioPortRing *t = sw->ports[sp->blocked].tx;
            uint32_t at = t->head + 1 - t->cap;
            if ((int32_t)(atomic_load_explicit(&t->peer->pos, memory_order_acquire) - at) >= 0)
                return 1;
        }
    }
    return 0;
}

/* Lower every flag bio_switch_arm may have raised. nogil. */
static void
bio_switch_disarm(BioSwitch *sw, int n)
{
    for (int i = 0; i < n; i++) {
        atomic_store_explicit(&sw->ports[i].rx->me->sleeping, 0, memory_order_relaxed);
        atomic_store_explicit(&sw->ports[i].tx->me->sleeping, 0, memory_order_relaxed);
    }
}

/* Poll the doorbell and the live clients' pidfds until the deadline (in
 * slices if some client cannot be watched by pidfd). A client whose pidfd
 * fires is marked exited (what it sent is taken, then it is gone). 1, 0 (deadline) or -errno.
 * nogil. */
static int
bio_switch_poll_nogil(BioSwitch *sw, int n, int64_t deadline)
{
    int np = 1, slices = 0;
    sw->pfd[0] = (struct pollfd){.fd = sw->efd, .events = POLLIN};
    for (int i = 0; i < n; i++) {
        BioSwitchPort *sp = &sw->ports[i];
        if (sp->gone || sp->exited)
            continue;
        if (bio_port_ring_watch(sp->rx) < 0) {
            sp->exited = 1;
            return 1;
        }
        if (sp->rx->watch_fd < 0)
            slices = 1;
        else {
            sw->pfd_port[np] = i;
            sw->pfd[np++] = (struct pollfd){.fd = sp->rx->watch_fd, .events = POLLIN};
        }
    }
    int64_t now = bio_now_ns(), until = deadline;
    if (slices && (until < 0 || until > now + BIO_PORT_CHECK_NS))
        until = now + BIO_PORT_CHECK_NS;
    int ms = until < 0 ? -1 : (int)(until > now ? (until - now + 999999) / 1000000 : 0);
    int r = poll(sw->pfd, (nfds_t)np, ms);
    if (r < 0)
        return -errno;
    for (int k = 1; r > 0 && k < np; k++)
        if (sw->pfd[k].revents)
            sw->ports[sw->pfd_port[k]].exited = 1;
    if (r > 0 && (sw->pfd[0].revents & POLLIN)) {
        uint64_t v;
        if (read(sw->efd, &v, sizeof(v)) == (ssize_t)sizeof(v))
            BIO_COUNT(sw->counters, BIO_SWITCH_C_WAKEUPS, 1);
    }
    return r == 0 && deadline >= 0 && bio_now_ns() >= deadline ? 0 : 1;
}

typedef struct {
    BioSwitch *sw;
    int64_t deadline, linger_end;
    uint64_t moved;
} BioSwitchRun;

/* Forward until the deadline (-1: until stop()), lingering after traffic
 * and sleeping when idle; returns to Python every BIO_SWITCH_RETURN_AFTER
 * packets. 0 or -errno (-EINTR resumable). nogil. */
static int
bio_switch_run_nogil(void *arg)
{
    BioSwitchRun *c = arg;
    BioSwitch *sw = c->sw;
    while (!atomic_load(&sw->stop)) {
        pthread_mutex_lock(&sw->lock);
        uint32_t n = bio_switch_pass(sw);
        pthread_mutex_unlock(&sw->lock);
        int64_t now = bio_now_ns();
        if (n) {
            c->moved += n;
            c->linger_end = now + sw->linger_ns;
            if (c->moved >= BIO_SWITCH_RETURN_AFTER)
                return 0;
            continue;
        }
        if (c->deadline >= 0 && now >= c->deadline)
            return 0;
        if (now < c->linger_end) {
            for (int k = 0; k < 64; k++)
                bio_port_pause();
            continue;
        }
        int np = atomic_load_explicit(&sw->nports, memory_order_acquire), r = 1;
        if (!bio_switch_arm(sw, np) && !atomic_load(&sw->stop)) {
            BIO_COUNT(sw->counters, BIO_SWITCH_C_SLEEPS, 1);
            r = bio_switch_poll_nogil(sw, np, c->deadline);
        }
        bio_switch_disarm(sw, np);
        if (r <= 0)
            return r;
    }
    return 0;
}

/* ---- switch: Python entry points ------------------------------------------ */

/* SwitchCore(efd, max_ports=64, table_size=4096): owns efd on success. */
static PyObject *
bio_switch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"efd", "max_ports", "table_size", NULL};
    int efd, max_ports = 64, table = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|ii:SwitchCore", kwlist, &efd, &max_ports,
                                     &table))
        return NULL;
    if (max_ports < 1 || max_ports > 4096 || table < 16 || table > (1 << 24) ||
        (table & (table - 1))) {
        PyErr_Format(PyExc_ValueError, "max_ports must be between 1 and 4096 and table_size a "
                     "power of two between 16 and %d, got %d and %d", 1 << 24, max_ports, table);
        return NULL;
    }
    BioSwitch *sw = (BioSwitch *)type->tp_alloc(type, 0);
    if (sw == NULL)
        return NULL;
    sw->efd = -1;
    pthread_mutex_init(&sw->lock, NULL);
    sw->ports = PyMem_RawCalloc((size_t)max_ports, sizeof(BioSwitchPort));
    sw->fib = PyMem_RawCalloc((size_t)table, sizeof(BioSwitchEntry));
    sw->pfd = PyMem_RawCalloc((size_t)max_ports + 1, sizeof(struct pollfd));
    sw->pfd_port = PyMem_RawCalloc((size_t)max_ports + 1, sizeof(int));
    sw->rings = PyList_New(0);
    if (sw->ports == NULL || sw->fib == NULL || sw->pfd == NULL || sw->pfd_port == NULL ||
        sw->rings == NULL) {
        Py_DECREF(sw);
        return PyErr_NoMemory();
    }
    sw->efd = efd; /* owned from here on */
    sw->max_ports = max_ports;
    sw->fib_mask = (uint32_t)table - 1;
    sw->learning = sw->flood_unknown = sw->wait_full = 1;
    sw->budget = 256;
    return (PyObject *)sw;
}

static void
bio_switch_dealloc(BioSwitch *sw)
{
    if (sw->efd >= 0)
        close(sw->efd);
    PyMem_RawFree(sw->ports);
    PyMem_RawFree(sw->fib);
    PyMem_RawFree(sw->pfd);
    PyMem_RawFree(sw->pfd_port);
    Py_XDECREF(sw->rings);
    pthread_mutex_destroy(&sw->lock);
    Py_TYPE(sw)->tp_free((PyObject *)sw);
}

PyDoc_STRVAR(bio_switch_add_doc,
"add($self, rx, tx, /)\n--\n\n"
"Add a port: the switch's side of a region (party 0), rx reading the\n"
"client's TX ring and tx filling its RX ring. Returns the port index.\n"
"Safe while forward() runs in another thread; the port is held by the\n"
"process that forwards.");

static PyObject *
bio_switch_add(BioSwitch *sw, PyObject *args)
{
    BioPortRing *rx, *tx;
    if (!PyArg_ParseTuple(args, "O!O!:add", &BioPortRx_Type, &rx, &BioPortTx_Type, &tx))
        return NULL;
    if (rx->port != tx->port || rx->party != 0) {
        PyErr_SetString(PyExc_ValueError, "add() needs the rx and tx rings of one port, party 0 "
                        "(the switch's side of the region)");
        return NULL;
    }
    int n = atomic_load(&sw->nports);
    if (n >= sw->max_ports) {
        PyErr_Format(PyExc_ValueError, "the switch is full: %d ports", sw->max_ports);
        return NULL;
    }
    /* held by the process that forwards: claimed here only if forward() runs
     * now (in another thread), else by the next forward(), which may be in
     * a process forked after this */
    if ((sw->busy && (bio_port_ring_ready(rx) < 0 || bio_port_ring_ready(tx) < 0)) ||
        PyList_Append(sw->rings, (PyObject *)rx) < 0 ||
        PyList_Append(sw->rings, (PyObject *)tx) < 0)
        return NULL;
    sw->ports[n] = (BioSwitchPort){.rx = rx, .tx = tx, .blocked = -1};
    atomic_store_explicit(&sw->nports, n + 1, memory_order_release);
    uint64_t one = 1; /* a sleeping switch has no flag up on the new port: wake it */
    if (sw->efd >= 0 && write(sw->efd, &one, sizeof(one)) < 0)
        return bio_raise_errno(-errno);
    return PyLong_FromLong(n);
}

PyDoc_STRVAR(bio_switch_route_doc,
"route($self, key, port, /)\n--\n\n"
"Static route: packets whose dst is key go to port (an index from add());\n"
"learning never changes it. port None removes the key.");

static PyObject *
bio_switch_route_py(BioSwitch *sw, PyObject *args)
{
    PyObject *key_o, *port_o;
    uint32_t key;
    if (!PyArg_ParseTuple(args, "OO:route", &key_o, &port_o) ||
        bio_port_key("key", key_o, &key) < 0)
        return NULL;
    long port = -1;
    if (port_o != Py_None && (port = PyLong_AsLong(port_o)) == -1 && PyErr_Occurred())
        return NULL;
    int n = atomic_load(&sw->nports);
    if (port_o != Py_None && (port < 0 || port >= n)) {
        PyErr_Format(PyExc_ValueError, "port must be a port index from 0 to %d, got %ld", n - 1,
                     port);
        return NULL;
    }
    if (key == BIO_PORT_BROADCAST || key == 0) {
        PyErr_Format(PyExc_ValueError, "key must be between 1 and 4294967294 (0 is \"no key\", "
                     "4294967295 broadcast), got %u", key);
        return NULL;
    }
    /* with the GIL: a pass holding the table never needs it, and ends soon */
    pthread_mutex_lock(&sw->lock);
    int r = bio_switch_set(sw, key, (int)port, port >= 0);
    pthread_mutex_unlock(&sw->lock);
    if (r < 0)
        return bio_port_oserror(ENOSPC, "forwarding table full (%u entries)", sw->fib_mask + 1);
    Py_RETURN_NONE;
}

/* routes() -> {key: (port, static)} */
static PyObject *
bio_switch_routes(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    pthread_mutex_lock(&sw->lock); /* with the GIL, as in route() */
    for (uint32_t k = 0; d != NULL && k <= sw->fib_mask; k++) {
        BioSwitchEntry *e = &sw->fib[k];
        if (!e->used || e->port < 0)
            continue;
        PyObject *key = PyLong_FromUnsignedLong(e->key);
        PyObject *v = Py_BuildValue("(iO)", e->port, e->fixed ? Py_True : Py_False);
        if (key == NULL || v == NULL || PyDict_SetItem(d, key, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(key);
        Py_XDECREF(v);
    }
    pthread_mutex_unlock(&sw->lock);
    return d;
}

PyDoc_STRVAR(bio_switch_forward_doc,
"forward($self, /, timeout=None)\n--\n\n"
"Forward packets for up to timeout seconds (None: until stop(); 0: what is\n"
"there now), sleeping when idle; returns after 65536 packets at most.\n"
"Returns the packets taken from the clients.");

static PyObject *
bio_switch_forward(BioSwitch *sw, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t timeout_ns;
    if (bio_args_parse("forward", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &timeout_ns) < 0)
        return NULL;
    if (sw->busy) {
        PyErr_SetString(PyExc_RuntimeError, "the switch is forwarding in another thread");
        return NULL;
    }
    int n = atomic_load(&sw->nports);
    for (int i = 0; i < n; i++) /* hold every port in this process */
        if (bio_port_ring_ready(sw->ports[i].rx) < 0 || bio_port_ring_ready(sw->ports[i].tx) < 0)
            return NULL;
    int64_t now = bio_now_ns();
    BioSwitchRun c = {.sw = sw, .deadline = timeout_ns < 0 ? -1 : now + timeout_ns,
                  .linger_end = now + sw->linger_ns};
    sw->busy = 1;
    int r = bio_nogil_retry(bio_switch_run_nogil, &c);
    sw->busy = 0;
    if (r == -EINTR)
        return NULL;
    if (r < 0)
        return bio_raise_errno(r);
    return PyLong_FromUnsignedLongLong(c.moved);
}

static PyObject *
bio_switch_stop(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    atomic_store(&sw->stop, 1);
    uint64_t one = 1;
    if (sw->efd >= 0 && write(sw->efd, &one, sizeof(one)) < 0)
        return bio_raise_errno(-errno);
    Py_RETURN_NONE;
}

static PyObject *
bio_switch_counters(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(sw->counters, bio_switch_counter_names, BIO_SWITCH_NCOUNTERS);
}

/* port_state(i) -> 0 live, or -errno why it is gone */
static PyObject *
bio_switch_port_state(BioSwitch *sw, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0 || i >= atomic_load(&sw->nports)) {
        PyErr_Format(PyExc_IndexError, "no port %ld", i);
        return NULL;
    }
    return PyLong_FromLong(sw->ports[i].gone);
}

static PyMethodDef bio_switch_methods[] = {
    {"add", (PyCFunction)bio_switch_add, METH_VARARGS, bio_switch_add_doc},
    {"route", (PyCFunction)bio_switch_route_py, METH_VARARGS, bio_switch_route_doc},
    {"routes", (PyCFunction)bio_switch_routes, METH_NOARGS,
     "routes($self, /)\n--\n\nThe forwarding table as {key: (port, static)}."},
    {"forward", (PyCFunction)(void (*)(void))bio_switch_forward, METH_FASTCALL | METH_KEYWORDS,
     bio_switch_forward_doc},
    {"stop", (PyCFunction)bio_switch_stop, METH_NOARGS,
     "stop($self, /)\n--\n\nMake forward() return (from any thread)."},
    {"counters", (PyCFunction)bio_switch_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"port_state", (PyCFunction)bio_switch_port_state, METH_O,
     "port_state($self, i, /)\n--\n\n"
     "0 if port i is live, else -errno: EPIPE closed, ECONNRESET exited, EBADMSG corrupt."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_switch_members[] = {
    {"learning", T_INT, offsetof(BioSwitch, learning), 0, "1: learn source keys"},
    {"flood_unknown", T_INT, offsetof(BioSwitch, flood_unknown), 0,
     "1: flood unknown destinations; 0: drop them (unknown_drops)"},
    {"wait_full", T_INT, offsetof(BioSwitch, wait_full), 0,
     "1: a packet waits for room in a full ring; 0: it is dropped (full_drops)"},
    {"budget", T_UINT, offsetof(BioSwitch, budget), 0, "packets per port per pass"},
    {"linger_ns", T_LONGLONG, offsetof(BioSwitch, linger_ns), 0,
     "how long the switch keeps polling after traffic before it sleeps (ns)"},
    {"nports", T_INT, offsetof(BioSwitch, nports), READONLY, "ports added"},
    {"stopping", T_INT, offsetof(BioSwitch, stop), 0,
     "1 once stop() was called: forward() returns at once (set 0 to run again)"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject BioSwitch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.SwitchCore",
    .tp_basicsize = sizeof(BioSwitch),
    .tp_dealloc = (destructor)bio_switch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SwitchCore(efd, max_ports=64, table_size=4096)\n--\n\n"
              "Copies packets between ports by destination key (internal; see "
              "burstio.ports.Switch).",
    .tp_methods = bio_switch_methods,
    .tp_members = bio_switch_members,
    .tp_new = bio_switch_new,
};
