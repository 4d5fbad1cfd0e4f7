/* The switch's private state, shared by ports/fib.c (the forwarding table,
 * groups), ports/forward.c (moving packets, NIC queues, isolating a client)
 * and ports/switch.c (sleeping, the Python entry points).
 *
 * What the switch trusts: nothing in a client's region. It is party 0 of
 * every region and reads a client's positions, slot arrays, flags and claim
 * records there; each is read once, checked, and used only as checked. A
 * client whose writes are impossible (a position beyond the ring or moving
 * back, a slot naming a buffer outside its pool, a claim record of the
 * switch's side rewritten) or who kicks the switch without doing anything,
 * is isolated: the switch stops serving its port, drops what it published,
 * closes its side (so the client's waits end) and carries on with the
 * others.
 */
#ifndef BIO_SWITCH_H
#define BIO_SWITCH_H

#include "ports/ports.h"

#include <poll.h>
#include <pthread.h>

enum bio_switch_counter {
    BIO_SWITCH_C_FORWARDED,      /* copies delivered into a port's RX ring */
    BIO_SWITCH_C_FLOODED,        /* packets sent to every other port */
    BIO_SWITCH_C_UNKNOWN_DROPS,  /* unknown destination, flooding off */
    BIO_SWITCH_C_FULL_DROPS,     /* destination ring full, on_full="drop" */
    BIO_SWITCH_C_GONE_DROPS,     /* destination port closed, exited or isolated */
    BIO_SWITCH_C_FILTERED,       /* destination is the port it came from */
    BIO_SWITCH_C_BAD_SLOTS,      /* slots naming a buffer outside the pool */
    BIO_SWITCH_C_LEARNED,        /* table entries learned or moved */
    BIO_SWITCH_C_TABLE_FULL,     /* keys not learned: table full */
    BIO_SWITCH_C_PASSES,
    BIO_SWITCH_C_SLEEPS,
    BIO_SWITCH_C_WAKEUPS,
    BIO_SWITCH_C_PORTS_GONE,     /* ports no longer served, whatever the reason */
    BIO_SWITCH_C_PORTS_ISOLATED, /* ... of which isolated for misbehaving */
    BIO_SWITCH_C_ISOLATED_DROPS, /* packets an isolated client had published, not taken */
    BIO_SWITCH_C_IDLE_KICKS,     /* wake-ups by a client that had done nothing new */
    BIO_SWITCH_C_RUNT_DROPS,     /* MAC mode: packets shorter than an Ethernet header */
    BIO_SWITCH_C_OVERSIZE_DROPS, /* to a NIC queue: longer than its slot, or cut short already */
    BIO_SWITCH_C_LEARN_REFUSED,  /* sources not learned: an address of the wire, from a client */
    BIO_SWITCH_C_LEARN_LIMITED,  /* sources not learned: their port has max_learned already */
    BIO_SWITCH_NCOUNTERS
};

enum { BIO_SWITCH_DONE, BIO_SWITCH_BLOCKED };
#define BIO_SWITCH_RETURN_AFTER 65536 /* forward() returns to Python this often */
#define BIO_SWITCH_IDLE_KICKS 64      /* idle wake-ups in a row that isolate a client */
#define BIO_SWITCH_WHY 200            /* bytes of an isolation's reason */
#define BIO_SWITCH_GROUPS 64          /* port groups of a switch */
#define BIO_SWITCH_GROUP_PORTS 64     /* ports of a group */
#define BIO_SWITCH_MAC_TAG (1ULL << 48) /* a MAC-mode key: this | the 48-bit address */
#define BIO_SWITCH_NIC_SLICE_NS 100000 /* a sleep waiting for a NIC queue's TX room */
#define BIO_SWITCH_PREFETCH 4           /* packets ahead whose first bytes a pass loads early */

/* How a group picks the port of a packet. */
enum { BIO_SWITCH_SPREAD_FLOW = 0, BIO_SWITCH_SPREAD_RR = 1 };

typedef struct {
    BioPortRing *rx, *tx; /* the switch's side: reads the client's TX, fills its RX; a NIC
                           * queue's: its port's RX (received) and TX (to send) */
    BioNic *nic;   /* a NIC queue's pump, or NULL for a client's region */
    int gone;      /* 0 live, else -EPIPE (closed), -ECONNRESET (exited), -EPROTO (isolated);
                    * atomic: Python reads it while a pass runs */
    int exited;    /* its process exited: take what it sent, then gone */
    int blocked;   /* on_full="wait": the port its next packet waits for, or -1 */
    int reported;  /* its isolation was handed to Python (take_isolations) */
    int kicked;    /* its wake sockets fired in the last sleep */
    uint32_t idle_kicks; /* such wakes in a row with nothing new from the client */
    uint32_t seen[4];    /* the client's TX position, RX position, claim generation and
                          * state at its last kick */
    uint32_t learned;    /* table entries learned on it now (at most the switch's max_learned) */
    /* what the table said for this port's last packet, while fib_gen is what it was then: its
     * destination's target, and that its source needs no learning (ports/fib.c) */
    uint64_t dst_key, dst_gen, src_key, src_gen;
    int dst_target;
    int64_t gather_until; /* a NIC queue, with nic_gather_ns: its socket is looked at again
                           * then (CLOCK_MONOTONIC ns), not polled, after a pass took frames */
    char why[BIO_SWITCH_WHY]; /* why it was isolated */
} BioSwitchPort;

typedef struct {
    uint64_t key;  /* a dst key, or BIO_SWITCH_MAC_TAG | a MAC address */
    int32_t port;  /* a port, -2 - g for group g, or BIO_SWITCH_LOCAL */
    uint8_t used, fixed; /* fixed: a static route or a local address, never learned over */
} BioSwitchEntry;

/* BioSwitchEntry.port of a local address (a NIC queue's own MAC): fixed, never
 * learned on any port, and unknown as a destination. */
#define BIO_SWITCH_LOCAL (-1)

typedef struct {
    int n, spread;  /* ports, BIO_SWITCH_SPREAD_* */
    uint32_t next;  /* round robin: the next turn */
    int ports[BIO_SWITCH_GROUP_PORTS];
} BioSwitchGroup;

/* One packet as the switch read it from a client's slot (once). */
typedef struct {
    const unsigned char *data;
    uint32_t len, flags;
    uint64_t dst, src; /* keys, or MAC-mode keys read from the frame */
    int bcast;         /* to every other port: dst BROADCAST, or a group MAC address */
    struct sockaddr_in6 name;
} BioSwitchPacket;

typedef struct {
    PyObject_HEAD
    int efd;                 /* the switch's own doorbell (stop, add), owned, never shared */
    int max_ports;
    _Atomic int nports;
    BioSwitchPort *ports;
    PyObject *rings;         /* list keeping every ring alive */
    BioSwitchEntry *fib;
    uint32_t fib_mask, fib_used;
    uint64_t fib_gen;        /* bumped by every change of the table (from 1: a port's zeroed
                              * memory of its last lookup is no memory) */
    pthread_mutex_t lock;    /* the table and the ports' states: held by a pass, by
                              * route(), and while isolating */
    uint32_t lock_epoch;     /* bio_port_epoch the lock was made in (a fork remakes it) */
    int learning, flood_unknown, wait_full;
    uint32_t max_learned;    /* entries a port may have learned at once */
    int by_mac;              /* route by the frames' MAC addresses, not by the slots' keys */
    BioSwitchGroup *groups;
    int ngroups;
    unsigned int budget;     /* packets per port per pass */
    int64_t linger_ns;
    int64_t nic_gather_ns;   /* after a pass took a NIC queue's frames, look again this much
                              * later rather than at the kernel's next wake-up (0: at it) */
    _Atomic int stop;
    uint64_t counters[BIO_SWITCH_NCOUNTERS];
    struct pollfd *pfd;      /* 1 + 3 x max_ports: doorbell, 2 wake sockets and a pidfd
                              * per port */
    int *pfd_port;
    uint32_t busy;           /* bio_port_epoch of a forward() in progress, 0: none */
} BioSwitch;

/* ---- ports/fib.c ---------------------------------------------------------------- */

/* The target key routes to, for a packet from port i: a port, -2 - g for
 * group g, or -1 (unknown, or a local address); remembered for port i's
 * next packet while the table does not change. Table lock held. */
int bio_switch_lookup(BioSwitch *sw, int i, uint64_t key);
/* key -> target, static if fixed (BIO_SWITCH_LOCAL and fixed: a local
 * address); target -1 and not fixed removes the key. 1 changed, 0 unchanged,
 * -1 table full. Table lock held. */
int bio_switch_set(BioSwitch *sw, uint64_t key, int port, int fixed);
/* Remove what was learned on port i. Table lock held. */
void bio_switch_forget(BioSwitch *sw, int i);
/* Learn that `src` lives behind port i (0: nothing to learn), unless a
 * static route or local address says otherwise, it was learned on a NIC
 * queue and i is a client's, or port i has max_learned entries already
 * (each counted). Table lock held. */
void bio_switch_learn(BioSwitch *sw, int i, uint64_t src);
/* The live port of group g that packet p goes to, or -1 if none is live.
 * Table lock held. */
int bio_switch_pick(BioSwitch *sw, int g, const BioSwitchPacket *p);
/* route(key, target), local(key), routes(), group(ports, spread), groups(). GIL. */
PyObject *bio_switch_route_py(BioSwitch *sw, PyObject *args);
PyObject *bio_switch_local_py(BioSwitch *sw, PyObject *arg);
PyObject *bio_switch_routes(BioSwitch *sw, PyObject *ignored);
PyObject *bio_switch_group_py(BioSwitch *sw, PyObject *args);
PyObject *bio_switch_groups_py(BioSwitch *sw, PyObject *ignored);
/* Make the lock usable in this process (after a fork). GIL. */
void bio_switch_lock_ready(BioSwitch *sw);

/* ---- ports/forward.c ------------------------------------------------------------ */

/* Port i is no longer served (why: -EPIPE, -ECONNRESET or -EPROTO). Table
 * lock held. nogil-safe. */
void bio_switch_gone(BioSwitch *sw, int i, int why);
/* Isolate port i for misbehaving, with the reason: stop serving it, count
 * and drop what it published, close the switch's side so that the client
 * sees it. Table lock held. nogil-safe. */
void bio_switch_isolate(BioSwitch *sw, int i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* One pass over every live port (NIC queues pumped first and last), then
 * publish what moved. Returns packets taken. Table lock held. nogil. */
uint32_t bio_switch_pass(BioSwitch *sw);
/* Port i's wake sockets fired: isolate it after BIO_SWITCH_IDLE_KICKS such
 * wakes in a row while it did nothing new. Table lock held. nogil. */
void bio_switch_kicked(BioSwitch *sw, int i);

#endif /* BIO_SWITCH_H */
