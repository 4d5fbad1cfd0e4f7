/* Ports: netmap-style packet rings between processes, in shared memory
 * (ports/layout.h). A region holds two ports; each port has a TX ring and
 * an RX ring. ports/region.c maps and checks regions, ports/claim.c says
 * which process holds a port (fork-aware), ports/ring.c publishes and reads
 * positions, ports/wait.c waits for the peer (linger, sleep, kick, watch its
 * process), ports/tx.c fills TX slots, ports/rx.c reads RX slots, and
 * ports/switch.c copies packets between the ports of many regions.
 */
#ifndef BIO_PORTS_H
#define BIO_PORTS_H

#include "batch/batch.h"
#include "core/compat.h"
#include "core/core.h"
#include "ports/layout.h"
#include "xdp/xdp.h"

#include <stdatomic.h>
#include <structmember.h>

/* A party's wake sockets, in the order PortRegion() takes them per party.
 * Each is that party's end of a Unix datagram socketpair whose other end
 * the peer holds: a party sleeps on its own end and wakes the peer by
 * sending on it (ports/ring.c). Neither party can make the other's sends or
 * receives block, nor read the other's wake-ups. */
enum { BIO_PORT_WAKE_DATA = 0, BIO_PORT_WAKE_ROOM = 1 };

#define BIO_PORT_CHECK_NS 100000000 /* re-check a peer we cannot watch this often */
#define BIO_PORT_DRAIN_MAX 64       /* wake-ups read from a socket per wake */

/* A ring's slot arrays in the region (private pointers, set from our own
 * copy of the layout). */
typedef struct {
    uint32_t *idx, *len, *flags, *dst, *src;
    struct sockaddr_in6 *names;
} BioPortSlots;

/* PortRegion: one mapped region, its wake sockets, and the memory its
 * buffers are in (the region itself, or a shared pool of frames). */
typedef struct {
    PyObject_HEAD
    BioMemory *mem;   /* the MAP_SHARED mapping; unmapped with the last user */
    PyObject *view;   /* writable memoryview over mem */
    BioMemory *pmem;  /* the buffers' mapping: mem (inline) or the pool's */
    PyObject *pview;  /* writable memoryview over pmem */
    BioPortHeader *hdr;
    unsigned char *base, *pbase, *bufs; /* region, buffers' mapping, buffer 0 */
    int memfd;
    int pool_fd;      /* the pool's memfd (BIO_PORT_POOL_SHARED), else -1 */
    int wake[2][2];   /* [party][BIO_PORT_WAKE_*]: -1 where that party's end is not here */
    uint32_t nslots, cap, mask, slot_size, stride, nbufs, kind, pool, pool_offset;
    BioPortLayout L;
    BioPortCtl *ctl[2];
    BioPortSlots slots[2];
    PyObject *frames; /* the Umem whose frame table says which region holds each
                       * frame of the pool (ports/frames.c), or NULL: only the process
                       * that made the pool has it */
    int switched;     /* a NIC port's region whose rings a switch moves (without the GIL):
                       * bio_port_ring_ready refuses every other call on them */
} BioPortRegion;

/* PortClaim: one party's hold on a port of a region. */
typedef struct {
    PyObject_HEAD
    BioPortRegion *reg;
    int party;
    uint32_t gen;         /* generation of our claim, 0: not claimed */
    uint32_t epoch;       /* bio_port_epoch when claimed */
    int closed;           /* 1 once closed; read by waiters without the GIL (atomic) */
    int local_fd;         /* eventfd of this process alone, made by its claim: readable once
                           * this handle is closed or taken over, so that its waiters wake */
    uint32_t local_epoch; /* bio_port_epoch local_fd was made in */
} BioPortClaim;

/* PortTx / PortRx: our side of one ring of a port, with netmap's private
 * head/cur/tail (free-running positions). */
typedef struct {
    PyObject_HEAD
    BioPortClaim *port;
    BioPortRegion *reg;   /* port->reg */
    int side, r, party;  /* BIO_PORT_PROD (TX) or _CONS (RX); ring; our party */
    uint32_t head, cur, tail, published;
    uint32_t cap, mask;
    uint32_t gen;        /* port->gen this view was set up for */
    uint32_t busy;       /* bio_port_epoch of a call in progress without the GIL, 0: none */
    uint32_t turn;       /* RX: the next TX ring of a round-robin spread() */
    BioPortSide *me, *peer;
    BioPortSlots *s;
    int sleep_fd, kick_fd;
    int64_t linger_ns;
    /* the peer's process, watched while sleeping */
    uint32_t watch_gen;
    int watch_fd;        /* pidfd, or -1 */
    int watch_proc;      /* no pidfd: check /proc every BIO_PORT_CHECK_NS */
    int32_t watch_pid;
    uint64_t watch_start;
    /* recvmmsg scratch, allocated on first use */
    struct mmsghdr *msgs;
    struct iovec *iov;
    PyObject *weakrefs;
} BioPortRing;


extern PyTypeObject BioPortRegion_Type, BioPortClaim_Type, BioPortTx_Type, BioPortRx_Type,
    BioSwitch_Type, BioNic_Type;

/* Every ports type, the PORT_* constants and the fork hook. */
int bio_ports_init_types(PyObject *module);

/* Raise OSError(err, msg) (the errno picks the subclass) and return NULL. */
PyObject *bio_port_oserror(int err, const char *fmt, ...);

/* Spin politely for a moment. */
static inline void
bio_port_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* ---- who we are, who holds a port (ports/claim.c) ------------------------------- */

/* This process's pid, start time and pid namespace, read again after a fork. */
typedef struct {
    uint32_t epoch; /* bio_port_epoch these were read in */
    int32_t pid;
    uint64_t start, pidns;
} BioPortSelf;

extern _Atomic uint32_t bio_port_epoch; /* bumped in every forked child */
/* pthread_atfork child hook: a new process, so new claims. */
void bio_port_atfork_child(void);
/* Start time and state letter of process pid, from /proc. 0 or -errno. */
int bio_port_proc_stat(int32_t pid, uint64_t *start, char *state);
/* This process, as a claim records it. */
const BioPortSelf *bio_port_whoami(void);
/* 0 if p may be used now (claimed by this process, claiming it if need be);
 * -1 with ValueError (closed) or RuntimeError (taken over). GIL. */
int bio_port_claim_ready(BioPortClaim *p);
/* Whether p is still usable by a call that began with it held: 0, or
 * -ECANCELED (closed since) or -ESTALE (taken over since). nogil-safe. */
int bio_port_claim_current(BioPortClaim *p);
/* Close the handle: if it holds the port, mark the party CLOSED and wake
 * the peer; wake this handle's own waiters in any case. nogil-safe. */
void bio_port_claim_release(BioPortClaim *p);

/* ---- positions and the shared entry points (ports/ring.c) ----------------------- */

/* Wake whoever sleeps on the other end of wake socket fd: 1 if a wake-up
 * was sent, 0 if not (its queue is full of them, or it is gone). Never
 * blocks. nogil-safe. */
int bio_port_wake_send(int fd);
/* Read the wake-ups waiting on fd (at most BIO_PORT_DRAIN_MAX): how many. */
int bio_port_wake_drain(int fd);
/* Whether g is in a call without the GIL in this process now. */
int bio_port_ring_busy(BioPortRing *g);
/* Read the other side's position into tail. 0, or -EBADMSG if it is
 * impossible (beyond the ring, or behind one read before). nogil-safe. */
int bio_port_ring_refresh(BioPortRing *g);
/* Publish head, kicking the other side if it sleeps waiting for it. */
void bio_port_ring_publish(BioPortRing *g);
/* State of the peer party (BIO_PORT_FREE / OPEN / CLOSED). */
uint32_t bio_port_ring_peer_state(BioPortRing *g);
/* Raise for a failed ring operation (err < 0) and return NULL. GIL. */
PyObject *bio_port_ring_raise(BioPortRing *g, int err);
/* Make g usable now (its port held here, positions set up). 0 or -1. GIL. */
int bio_port_ring_ready(BioPortRing *g);
/* (bio_port_ring_buf: after the frames of a shared pool, below) */
/* Raise OSError(EBADMSG) for a slot bio_port_ring_buf refused. */
PyObject *bio_port_ring_bad_slot(BioPortRing *g, uint32_t pos, uint32_t idx);
/* What PortTx and PortRx share: constructor, dealloc, len(), methods,
 * members and attributes. */
PyObject *bio_port_ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds);
void bio_port_ring_dealloc(BioPortRing *g);
Py_ssize_t bio_port_ring_len(BioPortRing *g);
PyObject *bio_port_ring_sync(BioPortRing *g, PyObject *ignored);
PyObject *bio_port_ring_wait(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames);
PyObject *bio_port_ring_advance(BioPortRing *g, PyObject *const *args, Py_ssize_t nargs);
PyObject *bio_port_ring_counters(BioPortRing *g, PyObject *ignored);
PyObject *bio_port_ring_peer_counters(BioPortRing *g, PyObject *ignored);
extern const char bio_port_ring_sync_doc[], bio_port_ring_wait_doc[],
    bio_port_ring_advance_doc[], bio_port_ring_counters_doc[], bio_port_ring_peer_counters_doc[];
extern PyMemberDef bio_port_ring_members[];
extern PyGetSetDef bio_port_ring_getset[];

/* The methods both ring types have, for their method tables. */
#define BIO_PORT_RING_METHODS                                                              \
    {"sync", (PyCFunction)bio_port_ring_sync, METH_NOARGS, bio_port_ring_sync_doc},        \
    {"wait", (PyCFunction)(void (*)(void))bio_port_ring_wait, METH_FASTCALL | METH_KEYWORDS, \
     bio_port_ring_wait_doc},                                                              \
    {"advance", (PyCFunction)(void (*)(void))bio_port_ring_advance, METH_FASTCALL,         \
     bio_port_ring_advance_doc},                                                           \
    {"counters", (PyCFunction)bio_port_ring_counters, METH_NOARGS,                         \
     bio_port_ring_counters_doc},                                                          \
    {"peer_counters", (PyCFunction)bio_port_ring_peer_counters, METH_NOARGS,               \
     bio_port_ring_peer_counters_doc}

/* ---- waiting for the peer (ports/wait.c) ----------------------------------------- */

/* A wait in progress. */
typedef struct {
    BioPortRing *g;
    uint32_t want;      /* slots wanted beyond cur */
    int64_t deadline;   /* -1: none */
    int64_t linger_end; /* spin until then before sleeping */
} BioPortWait;

/* Wait until w->want slots lie beyond cur: 1, 0 (deadline), -EPIPE,
 * -ECONNRESET, -EBADMSG, -ECANCELED (closed here meanwhile), -ESTALE (taken
 * over meanwhile) or -EINTR. Resumable. nogil. */
int bio_port_ring_wait_nogil(void *w);
/* Keep the watch on the peer's process current: 0, or -ECONNRESET. */
int bio_port_ring_watch(BioPortRing *g);
/* Stop watching the peer's process. */
void bio_port_ring_unwatch(BioPortRing *g);
/* Poll fd (events) and the handle's local_fd until the deadline (-1:
 * none): 1 if fd is ready, 0 at the deadline, -ECANCELED / -ESTALE if the
 * handle was closed or taken over, or -errno. nogil. */
int bio_port_poll_nogil(BioPortClaim *p, int fd, short events, int64_t deadline);

/* ---- frames of a shared pool (ports/frames.c) ------------------------------------ */

/* Whether frame f is in a slot of region g by the pool's frame table (never
 * true in a process without the table, nor in a forked child: its copy of
 * the table is not the table). Inline: asked for every frame a pump or a
 * switch moves. */
static inline int
bio_port_frames_held(BioPortRegion *g, uint32_t f)
{
    const BioUmem *u = (const BioUmem *)g->frames;
    return u != NULL && bio_umem_ours(u) && f < u->frames && u->state[f] == BIO_FRAME_PORT &&
           u->lease_of[f] == (void *)g;
}
/* Whether a slot of g may name frame f in this process: one g holds, where
 * the frame table is (elsewhere there is no table to ask). So the process
 * that made the pool never reads, writes or hands a peer a frame through a
 * slot naming one the kernel or another region holds. */
static inline int
bio_port_frames_usable(BioPortRegion *g, uint32_t f)
{
    const BioUmem *u = (const BioUmem *)g->frames;
    return u == NULL || !bio_umem_ours(u) || bio_port_frames_held(g, f);
}
/* Frame f, held by a region on the same pool, is now in a slot of `to`. */
void bio_port_frames_move(BioPortRegion *to, uint32_t f);
/* The region goes: the frames it holds go back to the pool's free list. */
void bio_port_frames_release(BioPortRegion *g);
/* Frames of g's pool that other regions hold or batches borrow. */
uint32_t bio_port_frames_elsewhere(BioPortRegion *g);

/* Buffer of the slot at free-running position pos of ring g, or NULL if the
 * index read there lies outside the pool, or names a frame of a shared pool
 * that the frame table says the region does not hold (*idx says which).
 * Inline: every packet a ring moves asks it. */
static inline unsigned char *
bio_port_ring_buf(BioPortRing *g, uint32_t pos, uint32_t *idx)
{
    uint32_t i = __atomic_load_n(&g->s->idx[pos & g->mask], __ATOMIC_RELAXED);
    *idx = i;
    if (i >= g->reg->nbufs || (g->reg->frames != NULL && !bio_port_frames_usable(g->reg, i)))
        return NULL;
    return g->reg->bufs + (size_t)i * g->reg->stride;
}
/* PortRegion.use_frames(umem, ring0, ring1). */
PyObject *bio_port_region_use_frames(BioPortRegion *g, PyObject *args);
extern const char bio_port_region_use_frames_doc[];

/* ---- NIC ports (ports/nic.c) ------------------------------------------------------ */

enum bio_nic_counter {
    BIO_NIC_C_RX_FRAMES,    /* frames moved from the rx ring into RX slots */
    BIO_NIC_C_RX_MOVED,     /* ... whose data the kernel put elsewhere in the frame: moved */
    BIO_NIC_C_RETURNED_BAD, /* released RX slots naming a frame the region does not hold */
    BIO_NIC_C_TX_FRAMES,    /* frames moved from TX slots onto the tx ring */
    BIO_NIC_C_TX_BAD,       /* published TX slots naming a frame the region does not hold:
                             * dropped */
    BIO_NIC_C_TX_RING_FULL, /* the pump stopped: the tx ring was full */
    BIO_NIC_C_TX_NO_FRAME,  /* the pump stopped: no free frame to give a TX slot back */
    BIO_NIC_NCOUNTERS
};

/* NicCore: the pump between an AF_XDP socket and a NIC port's region. */
typedef struct {
    PyObject_HEAD
    BioXsk *xsk;                  /* held for good (bio_xsk_enter) until close() */
    BioPortRegion *reg;           /* frames: the socket's Umem */
    BioPortRing *prod, *cons;     /* port 0: fills ring 0 (received), takes ring 1 (to send) */
    BioPortRing *app_rx, *app_tx; /* port 1: the application's rings */
    uint32_t reclaimed;           /* ring 0 slots released up to here gave their frames back */
    uint32_t offset;              /* where a slot's data starts in its frame */
    int started;
    int switched;                 /* a switch drives it: the application's calls are refused */
    int busy, closing;            /* waits without the GIL in progress; close() came */
    uint64_t counters[BIO_NIC_NCOUNTERS];
} BioNic;

/* Move received frames into the free RX slots (after taking back the
 * frames of released ones, and topping the fill ring up) and publish.
 * Returns frames moved or -EBADMSG. Touches no Python object: a switch
 * runs it without the GIL, holding the NIC port alone. */
int bio_nic_rx_pump(BioNic *c);
/* Move published TX slots' frames onto the tx ring, give the slots fresh
 * frames back, and make the kernel transmit (without the GIL when nogil).
 * Returns frames queued or -errno. */
int bio_nic_tx_pump(BioNic *c, int nogil);
/* A switch takes the NIC port over: every ring made usable in this process
 * (the switch's), the application's own calls refused from now on (on its
 * rings, its pump and its Umem). 0, or -1 with an exception (nothing
 * changed). GIL. */
int bio_nic_hold(BioNic *c);
/* Undo bio_nic_hold (the switch did not take the port after all). GIL. */
void bio_nic_unhold(BioNic *c);
/* The AF_XDP socket: readable when frames wait on its rx ring. */
int bio_nic_fd(BioNic *c);
/* Whether frames wait on the rx ring that the pump could move now. */
int bio_nic_rx_pending(BioNic *c);

/* ---- flows (ports/fib.c) ------------------------------------------------------------ */

/* A hash of an Ethernet frame's flow: its IP addresses, protocol and TCP or
 * UDP ports (behind one 802.1Q tag), its MAC addresses if it is not IP.
 * Reads only data[0, len): bytes a peer rewrites meanwhile only change it. */
uint32_t bio_port_flow_hash(const unsigned char *data, uint32_t len);

/* ---- TX (ports/tx.c) -------------------------------------------------------------- */

/* A key argument (dst/src/key): absent or None is 0, else an int in u32. */
int bio_port_key(const char *what, PyObject *obj, uint32_t *out);
/* Write the metadata of the slot at head and advance head (and cur).
 * Inline: every packet a producer moves goes through it. */
static inline void
bio_port_tx_commit(BioPortRing *g, uint32_t len, uint32_t flags, uint32_t dst, uint32_t src,
                   const struct sockaddr_in6 *name)
{
    uint32_t k = g->head & g->mask;
    g->s->len[k] = len;
    g->s->flags[k] = flags;
    g->s->dst[k] = dst;
    g->s->src[k] = src;
    g->s->names[k] = *name;
    g->head++;
    if ((int32_t)(g->cur - g->head) < 0)
        g->cur = g->head;
}

#endif /* BIO_PORTS_H */
