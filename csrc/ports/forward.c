/* The switch's forwarding: the table of keys, and moving packets from the
 * clients' TX rings into the RX rings their destination keys name.
 *
 * Where a packet goes through it: a client's TX ring (the switch's rx side
 * of that port) -> bio_switch_route (by dst key) -> a copy into the free
 * slot of each destination port's RX ring (the switch's tx side) -> one
 * publish per ring per pass, kicking only clients that sleep. A packet that
 * cannot be delivered is counted (unknown, full, gone, filtered), never
 * silently lost; with on_full="wait" its source waits for room instead.
 *
 * Every word read from a client's region is read once and checked before
 * use (ports/switch.h says what the switch trusts); a client that writes an
 * impossible one is isolated here, and the pass goes on with the others.
 */
#include "ports/switch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const unsigned char *data;
    uint32_t len, flags, dst, src;
    struct sockaddr_in6 name;
} BioSwitchPacket;

/* ---- the forwarding table ------------------------------------------------- */

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

int
bio_switch_lookup(BioSwitch *sw, uint32_t key)
{
    BioSwitchEntry *e = bio_switch_slot(sw, key);
    return e != NULL && e->used ? e->port : -1;
}

/* A fixed entry (static route) is never changed by learning; the table is
 * kept below 3/4 full. */
int
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

/* ---- ports that are no longer served ------------------------------------- */

/* Forget what was learned on port i, release sources waiting for it. Static
 * routes stay, so that packets for it are dropped (gone_drops) rather than
 * flooded to everyone else. */
void
bio_switch_gone(BioSwitch *sw, int i, int why)
{
    if (sw->ports[i].gone)
        return;
    __atomic_store_n(&sw->ports[i].gone, why, __ATOMIC_RELEASE);
    BIO_COUNT(sw->counters, BIO_SWITCH_C_PORTS_GONE, 1);
    for (uint32_t k = 0; k <= sw->fib_mask; k++)
        if (sw->fib[k].used && sw->fib[k].port == i && !sw->fib[k].fixed)
            sw->fib[k].port = -1;
    int n = atomic_load(&sw->nports);
    for (int q = 0; q < n; q++)
        if (sw->ports[q].blocked == i)
            sw->ports[q].blocked = -1;
}

void
bio_switch_isolate(BioSwitch *sw, int i, const char *fmt, ...)
{
    BioSwitchPort *sp = &sw->ports[i];
    if (sp->gone)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sp->why, sizeof(sp->why), fmt, ap);
    va_end(ap);
    /* what it published beyond what was taken, as last checked */
    BIO_COUNT(sw->counters, BIO_SWITCH_C_ISOLATED_DROPS, sp->rx->tail - sp->rx->head);
    BIO_COUNT(sw->counters, BIO_SWITCH_C_PORTS_ISOLATED, 1);
    bio_switch_gone(sw, i, -EPROTO);
    bio_port_claim_release(sp->rx->port); /* the client's waits end: BrokenPipeError */
}

/* Isolate port i for an impossible position on its ring g (rx: what it
 * published; tx: what it released). */
static void
bio_switch_isolate_pos(BioSwitch *sw, int i, BioPortRing *g)
{
    uint32_t pos = atomic_load_explicit(&g->peer->pos, memory_order_relaxed);
    if (g->side == BIO_PORT_CONS)
        bio_switch_isolate(sw, i, "its TX ring's published position %u is impossible (the "
                           "switch read up to %u and took up to %u of %u slots)", pos, g->tail,
                           g->head, g->reg->nslots);
    else
        bio_switch_isolate(sw, i, "its RX ring's released position %u is impossible (the "
                           "switch published up to %u, saw %u released, of %u slots)", pos,
                           g->head, g->tail - g->cap, g->reg->nslots);
}

/* Isolate port i for a slot of ring g naming a buffer outside its pool. */
static void
bio_switch_isolate_slot(BioSwitch *sw, int i, BioPortRing *g, uint32_t pos, uint32_t idx)
{
    BIO_COUNT(sw->counters, BIO_SWITCH_C_BAD_SLOTS, 1);
    bio_switch_isolate(sw, i, "slot %u of its %s ring names buffer %u but its pool has %u",
                       pos & g->mask, g->side == BIO_PORT_CONS ? "TX" : "RX", idx,
                       g->reg->nbufs);
}

void
bio_switch_kicked(BioSwitch *sw, int i)
{
    BioSwitchPort *sp = &sw->ports[i];
    BioPortParty *pt = &sp->rx->reg->hdr->party[1];
    uint32_t now[4] = {atomic_load_explicit(&sp->rx->peer->pos, memory_order_relaxed),
                       atomic_load_explicit(&sp->tx->peer->pos, memory_order_relaxed),
                       atomic_load_explicit(&pt->generation, memory_order_relaxed),
                       atomic_load_explicit(&pt->state, memory_order_relaxed)};
    sp->kicked = 0;
    if (sp->gone)
        return;
    if (memcmp(now, sp->seen, sizeof(now)) != 0) {
        memcpy(sp->seen, now, sizeof(now));
        sp->idle_kicks = 0;
        return;
    }
    BIO_COUNT(sw->counters, BIO_SWITCH_C_IDLE_KICKS, 1);
    if (++sp->idle_kicks >= BIO_SWITCH_IDLE_KICKS)
        bio_switch_isolate(sw, i, "it woke the switch %u times in a row without publishing, "
                           "releasing, claiming or closing anything", sp->idle_kicks);
}

/* ---- moving packets -------------------------------------------------------- */

/* Read the packet at pos of port i's client TX ring once (the client may
 * change the slot under us). 0, or -1 if it names a buffer outside the
 * pool (the port is isolated). */
static int
bio_switch_read(BioSwitch *sw, int i, uint32_t pos, BioSwitchPacket *p)
{
    BioPortRing *rx = sw->ports[i].rx;
    uint32_t idx, k = pos & rx->mask;
    p->data = bio_port_ring_buf(rx, pos, &idx);
    if (p->data == NULL) {
        bio_switch_isolate_slot(sw, i, rx, pos, idx);
        return -1;
    }
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
        bio_switch_isolate_pos(sw, q, t);
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
        bio_switch_isolate_slot(sw, q, t, t->head, idx);
        BIO_COUNT(sw->counters, BIO_SWITCH_C_GONE_DROPS, 1);
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
        /* (finding the room may isolate q: then nothing waits for it) */
        if (q != i && !sw->ports[q].gone && bio_switch_room(sw, q) == 0 && !sw->ports[q].gone) {
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
    if (bio_switch_read(sw, i, pos, &p) < 0)
        return BIO_SWITCH_DONE;
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
        bio_switch_isolate_pos(sw, i, rx);
        return 0;
    }
    uint32_t n = 0;
    sp->blocked = -1;
    while (rx->head != rx->tail && n < sw->budget && !sp->gone) {
        if (bio_switch_route(sw, i, rx->head) == BIO_SWITCH_BLOCKED || sp->gone)
            break; /* waiting for room, or isolated: its packet was not taken */
        rx->head++;
        n++;
    }
    rx->cur = rx->head;
    if (ending && rx->head == rx->tail)
        bio_switch_gone(sw, i,
                        bio_port_ring_peer_state(rx) == BIO_PORT_CLOSED ? -EPIPE : -ECONNRESET);
    return n;
}

/* Releases to the clients that sent, packets to the clients that receive
 * (each kicked only if it sleeps). */
uint32_t
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

