/* The switch's forwarding: moving packets from the clients' TX rings (and
 * the NIC queues' received frames) into the RX rings (and NIC queues) their
 * destinations name.
 *
 * Where a packet goes through it: a client's TX ring (the switch's rx side
 * of that port), or a NIC queue's RX ring after its pump moved the socket's
 * frames there (ports/nic.c) -> bio_switch_route (by dst key, or by the
 * frame's destination MAC address; a group picks one of its ports,
 * ports/fib.c) -> a copy into the free slot of each destination port's RX
 * ring (cut to its slot), or a NIC queue's TX ring (if it fits its slot) ->
 * one publish per ring per pass, kicking only clients that sleep; the NIC
 * queues' pumps then transmit. A packet that cannot be delivered is counted
 * (unknown, full, gone, filtered, runt, oversize), never silently lost;
 * with on_full="wait" its source waits for room instead.
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

/* ---- ports that are no longer served ------------------------------------- */

/* Forget what was learned on port i (its table entries free for others),
 * release sources waiting for it. Static routes stay, so that packets for it
 * are dropped (gone_drops) rather than flooded to everyone else. */
void
bio_switch_gone(BioSwitch *sw, int i, int why)
{
    if (sw->ports[i].gone)
        return;
    __atomic_store_n(&sw->ports[i].gone, why, __ATOMIC_RELEASE);
    BIO_COUNT(sw->counters, BIO_SWITCH_C_PORTS_GONE, 1);
    bio_switch_forget(sw, i);
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
    if (sp->gone || sp->nic != NULL)
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

/* The MAC-mode key of the 6 bytes at m. */
static uint64_t
bio_switch_mac_key(const unsigned char *m)
{
    uint64_t k = 0;
    for (int b = 0; b < 6; b++)
        k = k << 8 | m[b];
    return BIO_SWITCH_MAC_TAG | k;
}

/* Read the packet at pos of port i's client TX ring once (the client may
 * change the slot under us), with its destination and source: the slot's
 * keys, or (MAC mode) the frame's addresses. 0, or -1 if it names a buffer
 * outside the pool (the port is isolated) or is a runt (counted). */
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
    if (sw->ports[i].nic != NULL) /* a frame off the wire has no address (ports/nic.c) */
        memset(&p->name, 0, sizeof(p->name));
    else
        memcpy(&p->name, &rx->s->names[k], sizeof(p->name));
    p->bcast = p->dst == BIO_PORT_BROADCAST;
    if (p->src == BIO_PORT_BROADCAST)
        p->src = 0; /* not an address to learn */
    if (!sw->by_mac)
        return 0;
    if (p->len < 14) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_RUNT_DROPS, 1);
        return -1;
    }
    unsigned char mac[12];
    memcpy(mac, p->data, sizeof(mac)); /* once: the client may be rewriting them */
    p->bcast = mac[0] & 1;             /* broadcast and multicast go everywhere */
    p->dst = bio_switch_mac_key(mac);
    p->src = (mac[6] & 1) ? 0 : bio_switch_mac_key(mac + 6);
    if (p->src == BIO_SWITCH_MAC_TAG)
        p->src = 0; /* 00:00:00:00:00:00 is no one */
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

/* Start loading the first bytes of the buffer of the slot at pos of ring g
 * (a packet's addresses and headers, which a route reads; or where the next
 * copy into g goes: write), so that they are there when needed. Nothing is
 * read from a buffer outside the pool (and a prefetch never faults). */
static inline void
bio_switch_prefetch(BioPortRing *g, uint32_t pos, int write)
{
    uint32_t idx = __atomic_load_n(&g->s->idx[pos & g->mask], __ATOMIC_RELAXED);
    if (idx >= g->reg->nbufs)
        return;
    if (write)
        __builtin_prefetch(g->reg->bufs + (size_t)idx * g->reg->stride, 1);
    else
        __builtin_prefetch(g->reg->bufs + (size_t)idx * g->reg->stride, 0);
}

/* Copy p into the free slot at the head of port q's RX ring, never beyond
 * that slot: a client gets a packet longer than its slots cut to them
 * (FLAG_TRUNCATED); a NIC queue gets none that is cut short (the wire would
 * carry a broken frame): dropped, counted. */
static void
bio_switch_copy(BioSwitch *sw, int q, const BioSwitchPacket *p)
{
    BioPortRing *t = sw->ports[q].tx;
    uint32_t idx, len = p->len, flags = p->flags;
    if (len > t->reg->slot_size || (flags & BIO_FLAG_TRUNCATED)) {
        if (sw->ports[q].nic != NULL) {
            BIO_COUNT(sw->counters, BIO_SWITCH_C_OVERSIZE_DROPS, 1);
            return;
        }
        if (len > t->reg->slot_size) {
            len = t->reg->slot_size;
            flags |= BIO_FLAG_TRUNCATED;
        }
    }
    unsigned char *buf = bio_port_ring_buf(t, t->head, &idx);
    if (buf == NULL) {
        bio_switch_isolate_slot(sw, q, t, t->head, idx);
        BIO_COUNT(sw->counters, BIO_SWITCH_C_GONE_DROPS, 1);
        return;
    }
    if ((uint32_t)(t->tail - t->head) > 1)
        bio_switch_prefetch(t, t->head + 1, 1); /* the next packet's copy to q */
    memcpy(buf, p->data, len);
    bio_port_tx_commit(t, len, flags, p->dst, p->src, &p->name);
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

/* Route the packet at pos of port i's client TX ring: by destination
 * (broadcast and, with flood_unknown, unknown ones go everywhere else; a
 * group picks one of its live ports), then learn its source.
 * BIO_SWITCH_DONE or BIO_SWITCH_BLOCKED. */
static int
bio_switch_route(BioSwitch *sw, int i, uint32_t pos)
{
    BioSwitchPacket p;
    if (bio_switch_read(sw, i, pos, &p) < 0)
        return BIO_SWITCH_DONE;
    int r, q = p.bcast ? -1 : bio_switch_lookup(sw, i, p.dst);
    if (q <= -2 && (q = bio_switch_pick(sw, -2 - q, &p)) < 0) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_GONE_DROPS, 1); /* every port of the group is gone */
        r = BIO_SWITCH_DONE;
    } else if (q >= 0)
        r = bio_switch_unicast(sw, i, q, &p);
    else if (p.bcast || sw->flood_unknown)
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
    for (uint32_t k = 0; k < BIO_SWITCH_PREFETCH && rx->head + k != rx->tail; k++)
        bio_switch_prefetch(rx, rx->head + k, 0);
    while (rx->head != rx->tail && n < sw->budget && !sp->gone) {
        if ((uint32_t)(rx->tail - rx->head) > BIO_SWITCH_PREFETCH)
            bio_switch_prefetch(rx, rx->head + BIO_SWITCH_PREFETCH, 0);
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

/* Run a NIC queue's pump (rx: received frames into its RX ring; tx: its
 * TX ring's frames out); a queue whose socket fails is isolated. Frames
 * taken in start its gathering (nic_gather_ns): the switch sleeps through
 * the kernel's next wake-ups and looks again when it is over. */
static void
bio_switch_pump(BioSwitch *sw, int i, int tx)
{
    BioNic *c = sw->ports[i].nic;
    int r = tx ? bio_nic_tx_pump(c, 1) : bio_nic_rx_pump(c);
    if (!tx && r > 0 && sw->nic_gather_ns > 0)
        sw->ports[i].gather_until = bio_now_ns() + sw->nic_gather_ns;
    if (r < 0)
        bio_switch_isolate(sw, i, "its NIC queue failed: %s (%s)", strerror(-r),
                           tx ? "sending" : "receiving");
}

/* Pumps of the NIC queues in, packets moved, releases to the clients that
 * sent and packets to the clients that receive (each kicked only if it
 * sleeps), pumps of the NIC queues out. */
uint32_t
bio_switch_pass(BioSwitch *sw)
{
    int n = atomic_load_explicit(&sw->nports, memory_order_acquire);
    uint32_t moved = 0;
    for (int i = 0; i < n; i++)
        if (sw->ports[i].nic != NULL && !sw->ports[i].gone)
            bio_switch_pump(sw, i, 0);
    for (int i = 0; i < n; i++)
        if (!sw->ports[i].gone)
            moved += bio_switch_take(sw, i);
    for (int i = 0; i < n; i++) {
        if (sw->ports[i].gone)
            continue;
        bio_port_ring_publish(sw->ports[i].rx);
        bio_port_ring_publish(sw->ports[i].tx);
        if (sw->ports[i].nic != NULL)
            bio_switch_pump(sw, i, 1);
    }
    BIO_COUNT(sw->counters, BIO_SWITCH_C_PASSES, 1);
    return moved;
}

