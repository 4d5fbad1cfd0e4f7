/* Shared-memory packet rings between processes, netmap style.
 *
 * A region (one sealed memfd, mapped MAP_SHARED by two parties) holds a
 * header, two rings of `nslots` slots and a pool of 2 x nslots buffers.
 * SocketSet r carries party r's packets to party 1-r: a port of party k
 * produces into ring k (its TX) and consumes ring 1-k (its RX). Every slot
 * names one buffer by index (idx[]), with its length, flags, a destination
 * and a source key and an optional socket address, in parallel arrays.
 *
 * Each ring is single producer / single consumer. Its control block has one
 * cache line per side: the side's published position (free-running u32:
 * slots published by the producer, released by the consumer), a sleeping
 * flag with the position that should wake it, and the side's counters.
 * Each side keeps netmap's head/cur/tail privately: it owns [head, tail)
 * (TX: free slots to fill; RX: packets to read); sync() publishes head with
 * a release store and reads the other side's position with an acquire load.
 *
 * Notification suppression: a side that must wait lingers (spins on the
 * other side's position) for `linger_ns`, then sets its sleeping flag and
 * the position it waits for, fences, re-checks, and sleeps in poll() on
 * its eventfd. The other side, after publishing, fences and kicks (writes
 * the eventfd) only if that side sleeps and the position was reached; an
 * exchange on the flag makes that one kick per sleep. Both fences are
 * seq_cst: of "I publish, then look at your flag" and "I raise my flag,
 * then look at your position" at least one sees the other's store.
 *
 * Liveness: each party records its pid, process start time and pid
 * namespace when it claims its port (first use in a process, so a fork or
 * an attach takes the port over and the old handle becomes stale). A side
 * about to sleep watches the peer's process with a pidfd (checked against
 * the start time, so a reused pid is not mistaken for the peer); the
 * pidfd turning readable means the peer exited: ECONNRESET instead of a
 * hang. A clean close() marks the party CLOSED and kicks: EPIPE.
 *
 * The switch (SwitchCore) is party 0 of one region per port: it copies each
 * slot a client publishes into the RX ring of the port its destination key
 * names (static routes, learning from source keys), so clients share no
 * memory with each other.
 *
 * Policy (sizes, defaults, fd creation and passing, wording of argument
 * errors, the switch's thread) is burstio/rings.py's. The GIL is dropped
 * only through bio_nogil_retry.
 */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <structmember.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_GET_SEALS 1034
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif

#define BIO_SHM_MAGIC 0x31474e4952534942ULL /* "BISRING1" */
#define BIO_SHM_VERSION 1u
#define BIO_SHM_LINE 64
#define BIO_SHM_PAGE 4096
#define BIO_SHM_SLOTS_MIN 2u
#define BIO_SHM_SLOTS_MAX 65536u
#define BIO_SHM_SLOT_SIZE_MAX (16u << 20)
#define BIO_SHM_SIZE_MAX ((uint64_t)1 << 34)
#define BIO_SHM_BROADCAST 0xffffffffu
#define BIO_SHM_CHECK_NS 100000000 /* re-check a peer we cannot watch this often */
#define BIO_SHM_RECV_MAX 1024      /* messages per recvmmsg */

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "shared rings need lock-free 32-bit atomics");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "shared rings need lock-free 64-bit atomics");

enum { BIO_SHM_PROD = 0, BIO_SHM_CONS = 1 };            /* sides of a ring */
enum { BIO_SHM_WAKE_DATA = 0, BIO_SHM_WAKE_ROOM = 1 };  /* a party's eventfds */
enum { BIO_SHM_FREE = 0, BIO_SHM_OPEN = 1, BIO_SHM_CLOSED = 2 }; /* party states */

enum bio_shm_counter {
    BIO_SHM_C_SYNCS,       /* positions published */
    BIO_SHM_C_KICKS,       /* eventfd writes to wake the other side */
    BIO_SHM_C_SLEEPS,      /* waits that went to sleep in poll() */
    BIO_SHM_C_WAKEUPS,     /* sleeps ended by a kick */
    BIO_SHM_C_LINGER_HITS, /* waits satisfied while lingering */
    BIO_SHM_C_TIMEOUTS,    /* waits that ended at their deadline */
    BIO_SHM_NCOUNTERS
};

static const char *const bio_shm_counter_names[BIO_SHM_NCOUNTERS] = {
    "syncs", "kicks", "sleeps", "wakeups", "linger_hits", "timeouts",
};

/* ---- shared memory layout ---------------------------------------------- */

/* One side of a ring: written by that side only (counters included). */
typedef struct {
    _Alignas(128) _Atomic uint32_t pos; /* published head, free-running */
    _Atomic uint32_t sleeping;          /* 1 while this side sleeps */
    _Atomic uint32_t wake_at;           /* ... until the other side's pos reaches this */
    uint32_t reserved;
    _Atomic uint64_t counters[BIO_SHM_NCOUNTERS];
} BioShmSide;

typedef struct {
    BioShmSide side[2]; /* [BIO_SHM_PROD], [BIO_SHM_CONS] */
} BioShmCtl;

/* Who holds a port: written by its claimant. */
typedef struct {
    _Alignas(64) _Atomic uint32_t state; /* BIO_SHM_FREE / OPEN / CLOSED */
    _Atomic uint32_t generation;         /* bumped by every claim */
    _Atomic int32_t pid;
    uint32_t reserved;
    _Atomic uint64_t start_time; /* /proc/<pid>/stat field 22 */
    _Atomic uint64_t pidns;      /* inode of its pid namespace */
} BioShmParty;

typedef struct {
    uint64_t magic;
    uint32_t version, header_size;
    uint64_t size;
    uint32_t nslots, slot_size, stride, nbufs;
    uint32_t kind, reserved;
    BioShmParty party[2];
} BioShmHeader;

typedef struct {
    uint64_t ctl[2], idx[2], len[2], flags[2], dst[2], src[2], names[2];
    uint64_t bufs, size;
    uint32_t stride;
} BioShmLayout;

static uint64_t
bio_shm_align(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Offsets of everything in a region of these dimensions. 0, or -EINVAL
 * (dimensions out of range) / -EFBIG (region too large). */
static int
bio_shm_layout(BioShmLayout *L, uint32_t nslots, uint32_t slot_size)
{
    if (nslots < BIO_SHM_SLOTS_MIN || nslots > BIO_SHM_SLOTS_MAX || (nslots & (nslots - 1)) ||
        slot_size < 1 || slot_size > BIO_SHM_SLOT_SIZE_MAX)
        return -EINVAL;
    uint64_t off = bio_shm_align(sizeof(BioShmHeader), BIO_SHM_LINE), n = nslots;
    for (int r = 0; r < 2; r++) {
        L->ctl[r] = off = bio_shm_align(off, 128);
        off += sizeof(BioShmCtl);
    }
    for (int r = 0; r < 2; r++) {
        uint64_t *dest[] = {&L->idx[r], &L->len[r], &L->flags[r], &L->dst[r], &L->src[r]};
        for (int a = 0; a < 5; a++) {
            *dest[a] = off = bio_shm_align(off, BIO_SHM_LINE);
            off += 4 * n;
        }
        L->names[r] = off = bio_shm_align(off, BIO_SHM_LINE);
        off += sizeof(struct sockaddr_in6) * n;
    }
    L->stride = (uint32_t)bio_shm_align(slot_size, BIO_SHM_LINE);
    L->bufs = bio_shm_align(off, BIO_SHM_PAGE);
    L->size = bio_shm_align(L->bufs + 2 * n * L->stride, BIO_SHM_PAGE);
    return L->size > BIO_SHM_SIZE_MAX ? -EFBIG : 0;
}

/* ---- who we are (fork-aware) ------------------------------------------- */

typedef struct {
    uint32_t epoch; /* bio_shm_epoch these were read in */
    int32_t pid;
    uint64_t start, pidns;
} BioShmSelf;

static _Atomic uint32_t bio_shm_epoch = 1; /* bumped in every forked child */
static BioShmSelf bio_shm_self;

static void
bio_shm_atfork_child(void)
{
    atomic_fetch_add(&bio_shm_epoch, 1);
}

/* Start time (clock ticks after boot) and state letter of process pid,
 * from /proc/<pid>/stat. 0, or -errno (-ENOENT: no such process). */
static int
bio_shm_proc_stat(int32_t pid, uint64_t *start, char *state)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    int e = errno;
    close(fd);
    if (n <= 0)
        return n < 0 ? -e : -EIO;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold anything */
    if (p == NULL || p[1] != ' ')
        return -EIO;
    *state = p[2];
    p += 2;
    for (int field = 3; field < 22; field++) { /* to field 22: starttime */
        p = strchr(p, ' ');
        if (p == NULL)
            return -EIO;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

/* This process's pid, start time and pid namespace, read again after a
 * fork. Called with the GIL (or from the only thread using the ring). */
static const BioShmSelf *
bio_shm_whoami(void)
{
    uint32_t epoch = atomic_load(&bio_shm_epoch);
    if (bio_shm_self.epoch != epoch) {
        struct stat st;
        char state;
        bio_shm_self.pid = (int32_t)getpid();
        if (bio_shm_proc_stat(bio_shm_self.pid, &bio_shm_self.start, &state) < 0)
            bio_shm_self.start = 0;
        bio_shm_self.pidns = stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
        bio_shm_self.epoch = epoch;
    }
    return &bio_shm_self;
}

/* ---- process-local objects ---------------------------------------------- */

typedef struct {
    uint32_t *idx, *len, *flags, *dst, *src;
    struct sockaddr_in6 *names;
} BioShmSlots;

typedef struct {
    PyObject_HEAD
    BioMemory *mem;   /* the MAP_SHARED mapping; unmapped with the last user */
    PyObject *view;   /* writable memoryview over mem */
    BioShmHeader *hdr;
    unsigned char *base, *bufs;
    int memfd;
    int efd[2][2];    /* [party][BIO_SHM_WAKE_*] */
    uint32_t nslots, cap, mask, slot_size, stride, nbufs, kind;
    BioShmLayout L;
    BioShmCtl *ctl[2];
    BioShmSlots slots[2];
} BioShmRegion;

typedef struct {
    PyObject_HEAD
    BioShmRegion *reg;
    int party;
    uint32_t gen;   /* generation of our claim, 0: not claimed */
    uint32_t epoch; /* bio_shm_epoch when claimed */
    int closed;
} BioShmPort;

typedef struct {
    PyObject_HEAD
    BioShmPort *port;
    BioShmRegion *reg;   /* port->reg */
    int side, r, party;  /* BIO_SHM_PROD (TX) or _CONS (RX); ring; our party */
    uint32_t head, cur, tail, published;
    uint32_t cap, mask;
    uint32_t gen;        /* port->gen this view was set up for */
    BioShmSide *me, *peer;
    BioShmSlots *s;
    int sleep_fd, kick_fd;
    int64_t linger_ns;
    /* the peer's process, watched while sleeping */
    uint32_t watch_gen;
    int watch_fd;        /* pidfd, or -1 */
    int watch_proc;      /* no pidfd: check /proc every BIO_SHM_CHECK_NS */
    int32_t watch_pid;
    uint64_t watch_start;
    /* recvmmsg scratch, allocated on first use */
    struct mmsghdr *msgs;
    struct iovec *iov;
    int busy;
    PyObject *weakrefs;
} BioShmRing;

static PyTypeObject BioShmRegion_Type, BioShmPort_Type, BioShmTx_Type, BioShmRx_Type,
    BioShmSwitch_Type;

/* Raise OSError(err, msg) (the errno picks the subclass) and return NULL. */
static PyObject *
bio_shm_oserror(int err, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    PyObject *v = Py_BuildValue("(is)", err, msg);
    if (v != NULL)
        PyErr_SetObject(PyExc_OSError, v);
    Py_XDECREF(v);
    return NULL;
}

#define BIO_SHM_COUNT(side, c) \
    atomic_store_explicit(&(side)->counters[(c)],                              \
        atomic_load_explicit(&(side)->counters[(c)], memory_order_relaxed) + 1, \
        memory_order_relaxed) /* one writer per side: no RMW needed */

/* ---- region: map, check, describe --------------------------------------- */

/* Map `size` bytes of g->memfd shared and wrap the mapping in a Memory
 * object (it unmaps when its last user goes). 0, or -1 with OSError. */
static int
bio_shmregion_map(BioShmRegion *g, uint64_t size)
{
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   g->memfd, 0);
    if (p == MAP_FAILED) {
        bio_raise_errno(-errno);
        return -1;
    }
    BioMemory *m = PyObject_New(BioMemory, &BioMemory_Type);
    if (m == NULL) {
        munmap(p, (size_t)size);
        return -1;
    }
    m->ptr = p;
    m->size = (size_t)size;
    g->mem = m;
    g->base = p;
    g->hdr = p;
    g->view = PyMemoryView_FromObject((PyObject *)m);
    return g->view == NULL ? -1 : 0;
}

/* Point the region's shortcuts at its (validated) layout. Only these
 * private copies are used afterwards: a peer rewriting the header cannot
 * move anything. */
static void
bio_shmregion_bind(BioShmRegion *g, uint32_t nslots, uint32_t slot_size, uint32_t kind)
{
    g->nslots = nslots;
    g->cap = g->mask = nslots - 1;
    g->slot_size = slot_size;
    g->stride = g->L.stride;
    g->nbufs = 2 * nslots;
    g->kind = kind;
    g->bufs = g->base + g->L.bufs;
    for (int r = 0; r < 2; r++) {
        g->ctl[r] = (BioShmCtl *)(g->base + g->L.ctl[r]);
        g->slots[r].idx = (uint32_t *)(g->base + g->L.idx[r]);
        g->slots[r].len = (uint32_t *)(g->base + g->L.len[r]);
        g->slots[r].flags = (uint32_t *)(g->base + g->L.flags[r]);
        g->slots[r].dst = (uint32_t *)(g->base + g->L.dst[r]);
        g->slots[r].src = (uint32_t *)(g->base + g->L.src[r]);
        g->slots[r].names = (struct sockaddr_in6 *)(g->base + g->L.names[r]);
    }
}

/* Size, seal and map a fresh memfd, write the header and give ring r's
 * slot i buffer r * nslots + i. 0, or -1 with an exception set. */
static int
bio_shmregion_create(BioShmRegion *g, uint32_t nslots, uint32_t slot_size, uint32_t kind)
{
    int r = bio_shm_layout(&g->L, nslots, slot_size);
    if (r == -EFBIG) {
        PyErr_Format(PyExc_ValueError, "a region of %u slots of %u bytes needs %llu bytes; "
                     "the limit is %llu", nslots, slot_size, (unsigned long long)g->L.size,
                     (unsigned long long)BIO_SHM_SIZE_MAX);
        return -1;
    }
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "slots must be a power of two between %u and %u and "
                     "slot_size between 1 and %u, got %u and %u", BIO_SHM_SLOTS_MIN,
                     BIO_SHM_SLOTS_MAX, BIO_SHM_SLOT_SIZE_MAX, nslots, slot_size);
        return -1;
    }
    if (ftruncate(g->memfd, (off_t)g->L.size) < 0 ||
        fcntl(g->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    if (bio_shmregion_map(g, g->L.size) < 0)
        return -1;
    bio_shmregion_bind(g, nslots, slot_size, kind);
    BioShmHeader *h = g->hdr; /* the fresh memfd reads as zeros */
    h->version = BIO_SHM_VERSION;
    h->header_size = sizeof(BioShmHeader);
    h->size = g->L.size;
    h->nslots = nslots;
    h->slot_size = slot_size;
    h->stride = g->L.stride;
    h->nbufs = 2 * nslots;
    h->kind = kind;
    for (uint32_t i = 0; i < 2 * nslots; i++)
        g->slots[i / nslots].idx[i % nslots] = i;
    atomic_thread_fence(memory_order_release);
    h->magic = BIO_SHM_MAGIC; /* last: a half-made region is not a region */
    return 0;
}

/* ValueError unless fd is a memfd sealed against shrinking (a peer that
 * could truncate it would make our accesses fault) holding at least a
 * header. Its size in *size. 0 or -1. */
static int
bio_shmregion_check_fd(int fd, uint64_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        PyErr_Format(PyExc_ValueError, "fd %d is not a ring region: %s", fd,
                     seals < 0 ? "not a memfd" : "not sealed against shrinking (F_SEAL_SHRINK), "
                                                 "so a peer could truncate it under us");
        return -1;
    }
    if ((uint64_t)st.st_size < sizeof(BioShmHeader)) {
        PyErr_Format(PyExc_ValueError, "fd %d is not a ring region: %lld bytes is smaller "
                     "than the %zu-byte header", fd, (long long)st.st_size, sizeof(BioShmHeader));
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

/* Check the mapped header of a region we attach to: magic, version,
 * dimensions and size against what they imply. 0, or -1 with ValueError. */
static int
bio_shmregion_check(BioShmRegion *g, uint64_t fsize)
{
    const volatile BioShmHeader *h = g->hdr;
    uint64_t magic = h->magic, size = h->size;
    uint32_t version = h->version, hsize = h->header_size, nslots = h->nslots;
    uint32_t slot_size = h->slot_size, stride = h->stride, nbufs = h->nbufs, kind = h->kind;
    if (magic != BIO_SHM_MAGIC) {
        char msg[100]; /* PyErr_Format has no zero padding */
        snprintf(msg, sizeof(msg), "not a burstio ring region (magic 0x%016llx, expected "
                 "0x%016llx)", (unsigned long long)magic, (unsigned long long)BIO_SHM_MAGIC);
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    if (version != BIO_SHM_VERSION || hsize != sizeof(BioShmHeader)) {
        PyErr_Format(PyExc_ValueError, "ring region version %u (header %u bytes); this "
                     "burstio reads version %u (header %zu bytes)", version, hsize,
                     BIO_SHM_VERSION, sizeof(BioShmHeader));
        return -1;
    }
    if (bio_shm_layout(&g->L, nslots, slot_size) < 0 || stride != g->L.stride ||
        nbufs != 2 * nslots || kind > 1) {
        PyErr_Format(PyExc_ValueError, "ring region header is corrupt: %u slots of %u bytes "
                     "(stride %u), %u buffers, kind %u", nslots, slot_size, stride, nbufs, kind);
        return -1;
    }
    if (size != g->L.size || fsize != g->L.size) {
        PyErr_Format(PyExc_ValueError, "ring region is %llu bytes (header says %llu) but "
                     "%u slots of %u bytes need %llu", (unsigned long long)fsize,
                     (unsigned long long)size, nslots, slot_size,
                     (unsigned long long)g->L.size);
        return -1;
    }
    bio_shmregion_bind(g, nslots, slot_size, kind);
    return 0;
}

/* Map and check an existing region. 0, or -1 with an exception set. */
static int
bio_shmregion_attach(BioShmRegion *g)
{
    uint64_t fsize;
    if (bio_shmregion_check_fd(g->memfd, &fsize) < 0 || bio_shmregion_map(g, fsize) < 0)
        return -1;
    return bio_shmregion_check(g, fsize);
}

/* Close the region's descriptors (at dealloc: nothing uses them then). */
static void
bio_shmregion_close_fds(BioShmRegion *g)
{
    int *fds[] = {&g->memfd, &g->efd[0][0], &g->efd[0][1], &g->efd[1][0], &g->efd[1][1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

/* Parse the 4 eventfds: (party 0 data, party 0 room, party 1 data, party 1
 * room). 0 or -1 with TypeError. */
static int
bio_shmregion_parse_efds(BioShmRegion *g, PyObject *efds)
{
    PyObject *seq = PySequence_Fast(efds, "efds must be a sequence of 4 file descriptors");
    if (seq == NULL)
        return -1;
    int ok = PySequence_Fast_GET_SIZE(seq) == 4;
    for (int i = 0; ok && i < 4; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        ok = !(fd == -1 && PyErr_Occurred()) && fd >= 0 && fd <= INT32_MAX;
        g->efd[i / 2][i % 2] = ok ? (int)fd : -1;
    }
    Py_DECREF(seq);
    if (!ok) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "efds must be a sequence of 4 file descriptors");
        for (int i = 0; i < 4; i++)
            g->efd[i / 2][i % 2] = -1;
    }
    return ok ? 0 : -1;
}

/* PortRegion(memfd, efds, slots=0, ...): create (slots > 0) or attach. The
 * region owns the descriptors only if this succeeds. */
static PyObject *
bio_shmregion_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"memfd", "efds", "slots", "slot_size", "kind", NULL};
    int memfd;
    unsigned int nslots = 0, slot_size = 0, kind = 0;
    PyObject *efds;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|III:PortRegion", kwlist, &memfd, &efds,
                                     &nslots, &slot_size, &kind))
        return NULL;
    BioShmRegion *g = (BioShmRegion *)type->tp_alloc(type, 0);
    if (g == NULL)
        return NULL;
    g->memfd = -1;
    g->efd[0][0] = g->efd[0][1] = g->efd[1][0] = g->efd[1][1] = -1;
    if (bio_shmregion_parse_efds(g, efds) < 0)
        goto fail;
    g->memfd = memfd;
    if ((nslots ? bio_shmregion_create(g, nslots, slot_size, kind) : bio_shmregion_attach(g)) < 0)
        goto fail;
    return (PyObject *)g; /* owns memfd and the eventfds from here on */
fail:
    g->memfd = -1; /* the caller still owns the fds */
    g->efd[0][0] = g->efd[0][1] = g->efd[1][0] = g->efd[1][1] = -1;
    Py_DECREF(g);
    return NULL;
}

static void
bio_shmregion_dealloc(BioShmRegion *g)
{
    bio_shmregion_close_fds(g);
    Py_XDECREF(g->view);
    Py_XDECREF(g->mem);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyObject *
bio_shmregion_fds(BioShmRegion *g, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(i(iiii))", g->memfd, g->efd[0][0], g->efd[0][1], g->efd[1][0],
                         g->efd[1][1]);
}

/* layout() -> dict of byte offsets: where each array of each ring lives. */
static PyObject *
bio_shmregion_layout(BioShmRegion *g, PyObject *Py_UNUSED(ignored))
{
    const BioShmLayout *L = &g->L;
    return Py_BuildValue(
        "{s:(KK)s:(KK)s:(KK)s:(KK)s:(KK)s:(KK)s:(KK)s:K,s:K,s:I,s:I,s:I,s:I,s:I}",
        "ctl", L->ctl[0], L->ctl[1], "idx", L->idx[0], L->idx[1], "len", L->len[0], L->len[1],
        "flags", L->flags[0], L->flags[1], "dst", L->dst[0], L->dst[1], "src", L->src[0],
        L->src[1], "names", L->names[0], L->names[1], "bufs", L->bufs, "size", L->size,
        "stride", L->stride, "slots", g->nslots, "slot_size", g->slot_size, "buffers", g->nbufs,
        "kind", g->kind);
}

/* party(i) -> (state, pid, generation): who holds port i, as recorded. */
static PyObject *
bio_shmregion_party(BioShmRegion *g, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i != 0 && i != 1) {
        PyErr_Format(PyExc_ValueError, "party must be 0 or 1, got %ld", i);
        return NULL;
    }
    BioShmParty *p = &g->hdr->party[i];
    return Py_BuildValue("(iiI)", (int)atomic_load(&p->state), (int)atomic_load(&p->pid),
                         (unsigned)atomic_load(&p->generation));
}

static PyObject *
bio_shmregion_get_memory(BioShmRegion *g, void *c)
{
    return PyMemoryView_FromObject((PyObject *)g->mem);
}

static PyMethodDef bio_shmregion_methods[] = {
    {"fds", (PyCFunction)bio_shmregion_fds, METH_NOARGS,
     "fds() -> (memfd, (efd0_data, efd0_room, efd1_data, efd1_room)): owned by the region "
     "(closed when the last port and ring using it are gone); dup them to pass them on"},
    {"layout", (PyCFunction)bio_shmregion_layout, METH_NOARGS,
     "layout() -> dict of offsets and dimensions"},
    {"party", (PyCFunction)bio_shmregion_party, METH_O,
     "party(i) -> (state, pid, generation) of port i (state 0 free, 1 open, 2 closed)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_shmregion_members[] = {
    {"slots", T_UINT, offsetof(BioShmRegion, nslots), READONLY, "slots per ring"},
    {"slot_size", T_UINT, offsetof(BioShmRegion, slot_size), READONLY, "bytes per buffer"},
    {"stride", T_UINT, offsetof(BioShmRegion, stride), READONLY,
     "distance between buffers (slot_size rounded up to 64)"},
    {"buffers", T_UINT, offsetof(BioShmRegion, nbufs), READONLY, "buffers in the pool"},
    {"kind", T_UINT, offsetof(BioShmRegion, kind), READONLY, "0: pipe, 1: switch port"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef bio_shmregion_getset[] = {
    {"memory", (getter)bio_shmregion_get_memory, NULL,
     "writable memoryview over the whole region", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BioShmRegion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortRegion",
    .tp_basicsize = sizeof(BioShmRegion),
    .tp_dealloc = (destructor)bio_shmregion_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PortRegion(memfd, efds, slots=0, slot_size=0, kind=0): a ring region "
              "(internal). slots=0 attaches to an existing one.",
    .tp_methods = bio_shmregion_methods,
    .tp_members = bio_shmregion_members,
    .tp_getset = bio_shmregion_getset,
    .tp_new = bio_shmregion_new,
};

/* ---- port: who holds it -------------------------------------------------- */

/* Claim port p for this process: record pid, start time and pid namespace,
 * then a new generation (which makes any other handle stale). ValueError
 * if a previous owner closed it. 0 or -1. GIL. */
static int
bio_shmport_claim(BioShmPort *p)
{
    BioShmParty *pt = &p->reg->hdr->party[p->party];
    if (atomic_load_explicit(&pt->state, memory_order_acquire) == BIO_SHM_CLOSED) {
        PyErr_Format(PyExc_ValueError, "port %d of this region was closed by its owner "
                     "(process %d)", p->party, (int)atomic_load(&pt->pid));
        return -1;
    }
    const BioShmSelf *me = bio_shm_whoami();
    int32_t before = atomic_load_explicit(&pt->pid, memory_order_relaxed);
    atomic_store_explicit(&pt->pid, me->pid, memory_order_relaxed);
    atomic_store_explicit(&pt->start_time, me->start, memory_order_relaxed);
    atomic_store_explicit(&pt->pidns, me->pidns, memory_order_relaxed);
    uint32_t gen = atomic_fetch_add_explicit(&pt->generation, 1, memory_order_acq_rel) + 1;
    if (gen == 0) /* 0 means "not claimed" here */
        gen = atomic_fetch_add_explicit(&pt->generation, 1, memory_order_acq_rel) + 1;
    atomic_store_explicit(&pt->state, BIO_SHM_OPEN, memory_order_release);
    p->gen = gen;
    p->epoch = me->epoch;
    if (before == 0 || before == me->pid)
        return 0; /* a first claim: a sleeping peer notices within BIO_SHM_CHECK_NS */
    uint64_t one = 1; /* taken over: a peer may be watching the previous holder */
    for (int w = 0; w < 2; w++)
        if (p->reg->efd[1 - p->party][w] >= 0 &&
            write(p->reg->efd[1 - p->party][w], &one, sizeof(one)) < 0)
            continue;
    return 0;
}

/* 0 if p may be used now: claimed by this process (claimed on first use and
 * again after a fork). ValueError (closed) or RuntimeError (another handle
 * took it over) and -1 otherwise. GIL. */
static int
bio_shmport_ready(BioShmPort *p)
{
    if (p->closed) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed port");
        return -1;
    }
    if (p->gen == 0 || p->epoch != atomic_load_explicit(&bio_shm_epoch, memory_order_relaxed))
        return bio_shmport_claim(p);
    BioShmParty *pt = &p->reg->hdr->party[p->party];
    if (atomic_load_explicit(&pt->generation, memory_order_relaxed) != p->gen) {
        PyErr_Format(PyExc_RuntimeError, "port %d was taken over by process %d: this handle "
                     "is stale (one process holds a port at a time)", p->party,
                     (int)atomic_load(&pt->pid));
        return -1;
    }
    return 0;
}

/* Whether this handle holds the port right now (claimed in this process,
 * not taken over since). */
static int
bio_shmport_holds(BioShmPort *p)
{
    BioShmParty *pt = &p->reg->hdr->party[p->party];
    return !p->closed && p->gen != 0 && p->epoch == atomic_load(&bio_shm_epoch) &&
           atomic_load(&pt->generation) == p->gen;
}

/* Close the handle. If it holds the port, mark the party CLOSED and kick
 * both of the peer's eventfds so that a sleeping peer sees it. */
static void
bio_shmport_release(BioShmPort *p)
{
    if (p->closed || p->reg == NULL)
        return;
    if (bio_shmport_holds(p)) {
        BioShmRegion *g = p->reg;
        atomic_store_explicit(&g->hdr->party[p->party].state, BIO_SHM_CLOSED,
                              memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        uint64_t one = 1;
        for (int w = 0; w < 2; w++)
            if (g->efd[1 - p->party][w] >= 0 &&
                write(g->efd[1 - p->party][w], &one, sizeof(one)) < 0)
                continue; /* nobody to wake, or a full counter: it is awake */
    }
    p->closed = 1;
}

/* PortClaim(region, party): a handle; nothing is claimed until first use. */
static PyObject *
bio_shmport_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"region", "party", NULL};
    BioShmRegion *reg;
    int party;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!i:PortClaim", kwlist, &BioShmRegion_Type,
                                     &reg, &party))
        return NULL;
    if (party != 0 && party != 1) {
        PyErr_Format(PyExc_ValueError, "party must be 0 or 1, got %d", party);
        return NULL;
    }
    BioShmPort *p = (BioShmPort *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->reg = (BioShmRegion *)Py_NewRef(reg);
    p->party = party;
    return (PyObject *)p;
}

static void
bio_shmport_dealloc(BioShmPort *p)
{
    bio_shmport_release(p);
    Py_XDECREF(p->reg);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *
bio_shmport_close(BioShmPort *p, PyObject *Py_UNUSED(ignored))
{
    bio_shmport_release(p);
    Py_RETURN_NONE;
}

static PyObject *
bio_shmport_claim_py(BioShmPort *p, PyObject *Py_UNUSED(ignored))
{
    if (bio_shmport_ready(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bio_shmport_get_holds(BioShmPort *p, void *c)
{
    return PyBool_FromLong(bio_shmport_holds(p));
}

static PyMethodDef bio_shmport_methods[] = {
    {"close", (PyCFunction)bio_shmport_close, METH_NOARGS,
     "close(): give the port up; if this handle holds it, the peer sees it closed"},
    {"claim", (PyCFunction)bio_shmport_claim_py, METH_NOARGS,
     "claim(): hold the port in this process now (done by the first use anyway)"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_shmport_members[] = {
    {"party", T_INT, offsetof(BioShmPort, party), READONLY, "0 or 1: which port of the region"},
    {"region", T_OBJECT, offsetof(BioShmPort, reg), READONLY, "the PortRegion"},
    {"closed", T_INT, offsetof(BioShmPort, closed), READONLY, "1 once closed"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef bio_shmport_getset[] = {
    {"holds", (getter)bio_shmport_get_holds, NULL,
     "whether this handle holds the port now (claimed here, not taken over)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BioShmPort_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortClaim",
    .tp_basicsize = sizeof(BioShmPort),
    .tp_dealloc = (destructor)bio_shmport_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PortClaim(region, party): one party's hold on a ring region (internal).",
    .tp_methods = bio_shmport_methods,
    .tp_members = bio_shmport_members,
    .tp_getset = bio_shmport_getset,
    .tp_new = bio_shmport_new,
};

/* ---- ring: positions, publishing, kicks --------------------------------- */

static inline void
bio_shm_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Read the other side's position (acquire) into tail. 0, or -EBADMSG if it
 * is impossible from here (the shared memory is corrupt). nogil-safe. */
static int
bio_shmring_refresh(BioShmRing *g)
{
    uint32_t other = atomic_load_explicit(&g->peer->pos, memory_order_acquire);
    uint32_t tail = g->side == BIO_SHM_PROD ? other + g->cap : other;
    if ((uint32_t)(tail - g->head) > g->cap)
        return -EBADMSG;
    g->tail = tail;
    return 0;
}

/* Wake the other side: one eventfd write, counted. nogil-safe. */
static void
bio_shmring_kick(BioShmRing *g)
{
    uint64_t one = 1;
    if (write(g->kick_fd, &one, sizeof(one)) == (ssize_t)sizeof(one))
        BIO_SHM_COUNT(g->me, BIO_SHM_C_KICKS);
}

/* Publish head (release) and kick the other side if it sleeps waiting for a
 * position we have now reached; the exchange on its flag makes that one
 * kick per sleep. Nothing to do if head did not move. nogil-safe. */
static void
bio_shmring_publish(BioShmRing *g)
{
    if (g->head == g->published)
        return;
    atomic_store_explicit(&g->me->pos, g->head, memory_order_release);
    g->published = g->head;
    BIO_SHM_COUNT(g->me, BIO_SHM_C_SYNCS);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with the sleeper's fence */
    if (!atomic_load_explicit(&g->peer->sleeping, memory_order_acquire))
        return;
    uint32_t at = atomic_load_explicit(&g->peer->wake_at, memory_order_relaxed);
    if ((int32_t)(g->head - at) >= 0 &&
        atomic_exchange_explicit(&g->peer->sleeping, 0, memory_order_acq_rel))
        bio_shmring_kick(g);
}

/* State of the peer party (BIO_SHM_FREE / OPEN / CLOSED). */
static uint32_t
bio_shmring_peer_state(BioShmRing *g)
{
    return atomic_load_explicit(&g->reg->hdr->party[1 - g->party].state, memory_order_acquire);
}

/* ---- ring: watching the peer's process ---------------------------------- */

/* 1 if process pid is the one that started at `start` and has not exited;
 * 1 as well when /proc cannot tell. nogil-safe. */
static int
bio_shm_alive(int32_t pid, uint64_t start)
{
    uint64_t s;
    char state;
    int r = bio_shm_proc_stat(pid, &s, &state);
    if (r == -ENOENT || r == -ESRCH)
        return 0;
    if (r < 0)
        return 1;
    return (start == 0 || s == start) && state != 'Z' && state != 'X';
}

/* Stop watching the peer's process (close its pidfd). nogil-safe. */
static void
bio_shmring_unwatch(BioShmRing *g)
{
    if (g->watch_fd >= 0)
        close(g->watch_fd);
    g->watch_fd = -1;
    g->watch_proc = 0;
    g->watch_pid = 0;
}

/* Keep the watch on the peer's process current: a pidfd on the process
 * that claimed the peer party, opened once per claim and checked against
 * the start time it recorded (a reused pid is not the peer), or /proc
 * checks where pidfd_open is refused. Nothing is watched when the peer is
 * this process or lives in another pid namespace. 0, or -ECONNRESET when
 * the peer's process is gone. nogil-safe (one thread per ring). */
static int
bio_shmring_watch(BioShmRing *g)
{
    BioShmParty *pt = &g->reg->hdr->party[1 - g->party];
    uint32_t gen = atomic_load_explicit(&pt->generation, memory_order_acquire);
    if (gen == g->watch_gen)
        return g->watch_proc && !bio_shm_alive(g->watch_pid, g->watch_start) ? -ECONNRESET : 0;
    bio_shmring_unwatch(g);
    int32_t pid = atomic_load_explicit(&pt->pid, memory_order_relaxed);
    uint64_t start = atomic_load_explicit(&pt->start_time, memory_order_relaxed);
    uint64_t ns = atomic_load_explicit(&pt->pidns, memory_order_relaxed);
    if (atomic_load_explicit(&pt->generation, memory_order_acquire) != gen)
        return 0; /* a claim in progress: look again next time */
    g->watch_gen = gen;
    const BioShmSelf *me = bio_shm_whoami();
    if (gen == 0 || pid <= 0 || pid == me->pid || ns != me->pidns)
        return 0;
    g->watch_pid = pid;
    g->watch_start = start;
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0 && errno == ESRCH)
        return -ECONNRESET;
    if (fd < 0)
        g->watch_proc = 1;
    else
        g->watch_fd = fd;
    /* the pidfd names whoever has the pid now: make sure that is the peer */
    return bio_shm_alive(pid, start) ? 0 : -ECONNRESET;
}

/* Poll g's eventfd (and the peer's pidfd) until the deadline (-1: none),
 * in slices of BIO_SHM_CHECK_NS when there is no pidfd to watch (peer
 * unclaimed, in this process, or no pidfd here), so that a new claimant is
 * noticed. Returns 1 (look again), 0 (deadline), -ECONNRESET (peer
 * exited) or -errno. nogil. */
static int
bio_shmring_poll_nogil(BioShmRing *g, int64_t deadline)
{
    struct pollfd p[2] = {{.fd = g->sleep_fd, .events = POLLIN},
                          {.fd = g->watch_fd, .events = POLLIN}};
    int64_t until = deadline, now = bio_now_ns();
    if (g->watch_fd < 0 && (until < 0 || until > now + BIO_SHM_CHECK_NS))
        until = now + BIO_SHM_CHECK_NS;
    int ms = -1;
    if (until >= 0) {
        int64_t left = until > now ? (until - now + 999999) / 1000000 : 0;
        ms = left > 0x7fffffff ? 0x7fffffff : (int)left;
    }
    int n = poll(p, g->watch_fd >= 0 ? 2 : 1, ms);
    if (n < 0)
        return -errno;
    if (n > 0 && g->watch_fd >= 0 && p[1].revents)
        return -ECONNRESET;
    if (n > 0 && (p[0].revents & POLLNVAL))
        return -EBADF;
    if (n > 0) {
        uint64_t v;
        if (read(g->sleep_fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
            BIO_SHM_COUNT(g->me, BIO_SHM_C_WAKEUPS);
        return 1;
    }
    return deadline >= 0 && bio_now_ns() >= deadline ? 0 : 1;
}

/* Sleep until the peer's position reaches `at`: raise our flag with the
 * position (seq_cst, then a fence), look once more, and only then poll.
 * Returns 1 (look again), 0 (deadline), -ECONNRESET or -errno. nogil. */
static int
bio_shmring_sleep_nogil(BioShmRing *g, uint32_t at, int64_t deadline)
{
    int r = bio_shmring_watch(g);
    if (r < 0)
        return r;
    atomic_store_explicit(&g->me->wake_at, at, memory_order_relaxed);
    atomic_store_explicit(&g->me->sleeping, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with the publisher's fence */
    uint32_t other = atomic_load_explicit(&g->peer->pos, memory_order_acquire);
    r = 1;
    if ((int32_t)(other - at) < 0 && bio_shmring_peer_state(g) != BIO_SHM_CLOSED) {
        BIO_SHM_COUNT(g->me, BIO_SHM_C_SLEEPS);
        r = bio_shmring_poll_nogil(g, deadline);
    }
    atomic_store_explicit(&g->me->sleeping, 0, memory_order_relaxed);
    return r;
}

/* Spin until the peer's position reaches `at` or the clock reaches `end`.
 * 1 if it did. nogil. */
static int
bio_shmring_linger(BioShmRing *g, uint32_t at, int64_t end)
{
    for (;;) {
        for (int i = 0; i < 64; i++) {
            uint32_t other = atomic_load_explicit(&g->peer->pos, memory_order_relaxed);
            if ((int32_t)(other - at) >= 0)
                return 1;
            bio_shm_pause();
        }
        if (bio_now_ns() >= end)
            return 0;
    }
}

typedef struct {
    BioShmRing *g;
    uint32_t want;      /* slots wanted beyond cur */
    int64_t deadline;   /* -1: none */
    int64_t linger_end; /* spin until then before sleeping */
} BioShmWait;

/* Wait until `want` slots lie beyond cur: linger, then sleep, until then.
 * Returns 1 (there), 0 (deadline), -EPIPE (peer closed), -ECONNRESET (peer
 * exited), -EBADMSG (corrupt) or -EINTR. Resumable. nogil. */
static int
bio_shmring_wait_nogil(void *arg)
{
    BioShmWait *w = arg;
    BioShmRing *g = w->g;
    uint32_t at = g->cur + w->want - (g->side == BIO_SHM_PROD ? g->cap : 0);
    for (;;) {
        int closed = bio_shmring_peer_state(g) == BIO_SHM_CLOSED; /* before the position */
        int r = bio_shmring_refresh(g);
        if (r < 0)
            return r;
        if ((uint32_t)(g->tail - g->cur) >= w->want)
            return 1;
        if (closed)
            return -EPIPE;
        int64_t now = bio_now_ns();
        if (w->deadline >= 0 && now >= w->deadline)
            break;
        if (now < w->linger_end) {
            if (bio_shmring_linger(g, at, w->linger_end))
                BIO_SHM_COUNT(g->me, BIO_SHM_C_LINGER_HITS);
            continue;
        }
        r = bio_shmring_sleep_nogil(g, at, w->deadline);
        if (r == -ECONNRESET && bio_shmring_peer_state(g) == BIO_SHM_CLOSED)
            continue; /* it closed, then exited: a clean end (next turn) */
        if (r < 0)
            return r;
        if (r == 0)
            break;
    }
    BIO_SHM_COUNT(g->me, BIO_SHM_C_TIMEOUTS);
    return 0;
}

/* ---- ring: Python entry points shared by TX and RX ---------------------- */

/* Raise for a failed ring operation (err < 0) and return NULL: the peer's
 * close or exit, corrupt shared memory, or a plain errno. GIL. */
static PyObject *
bio_shmring_raise(BioShmRing *g, int err)
{
    int peer = 1 - g->party;
    int pid = (int)atomic_load(&g->reg->hdr->party[peer].pid);
    if (err == -EPIPE)
        return bio_shm_oserror(EPIPE, "port %d was closed by its owner (process %d): %s", peer,
                               pid, g->side == BIO_SHM_PROD ? "nothing sent now will be read"
                                                            : "nothing more will arrive");
    if (err == -ECONNRESET)
        return bio_shm_oserror(ECONNRESET, "the process holding port %d (pid %d) exited "
                               "without closing it", peer, g->watch_pid ? g->watch_pid : pid);
    if (err == -EBADMSG)
        return bio_shm_oserror(EBADMSG, "ring %d: the peer's position %u is impossible with "
                               "head %u in a ring of %u slots: the shared memory is corrupt",
                               g->r, (unsigned)atomic_load(&g->peer->pos), g->head,
                               g->reg->nslots);
    return bio_raise_errno(err);
}

/* Make g usable now: no call of another thread inside it, its port held by
 * this process, its head/cur/tail set up after a claim. 0, or -1 with an
 * exception. GIL. */
static int
bio_shmring_ready(BioShmRing *g)
{
    if (g->busy) {
        PyErr_SetString(PyExc_RuntimeError, "ring is in use by another call (a wait or "
                        "receive in another thread)");
        return -1;
    }
    if (bio_shmport_ready(g->port) < 0)
        return -1;
    if (g->gen != g->port->gen) {
        g->head = g->cur = g->published =
            atomic_load_explicit(&g->me->pos, memory_order_acquire);
        g->gen = g->port->gen;
        int r = bio_shmring_refresh(g);
        if (r < 0) {
            bio_shmring_raise(g, r);
            return -1;
        }
    }
    return 0;
}

/* Buffer of the slot at free-running position pos, or NULL if the index
 * read there lies outside the pool (*idx says which). */
static unsigned char *
bio_shmring_buf(BioShmRing *g, uint32_t pos, uint32_t *idx)
{
    uint32_t i = __atomic_load_n(&g->s->idx[pos & g->mask], __ATOMIC_RELAXED);
    *idx = i;
    return i < g->reg->nbufs ? g->reg->bufs + (size_t)i * g->reg->stride : NULL;
}

/* Raise OSError(EBADMSG) for a slot naming a buffer outside the pool. */
static PyObject *
bio_shmring_bad_slot(BioShmRing *g, uint32_t pos, uint32_t idx)
{
    return bio_shm_oserror(EBADMSG, "slot %u of ring %d names buffer %u but the pool has %u: "
                           "the shared memory is corrupt", pos & g->mask, g->r, idx,
                           g->reg->nbufs);
}

/* PortTx(port) / PortRx(port): the producing side of ring `party` or the
 * consuming side of ring 1 - party; head/cur/tail are set up on first use. */
static PyObject *
bio_shmring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"port", NULL};
    BioShmPort *port;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &BioShmPort_Type, &port))
        return NULL;
    BioShmRing *g = (BioShmRing *)type->tp_alloc(type, 0);
    if (g == NULL)
        return NULL;
    BioShmRegion *reg = port->reg;
    int tx = PyType_IsSubtype(type, &BioShmTx_Type);
    g->port = (BioShmPort *)Py_NewRef(port);
    g->reg = reg;
    g->party = port->party;
    g->side = tx ? BIO_SHM_PROD : BIO_SHM_CONS;
    g->r = tx ? g->party : 1 - g->party;
    g->cap = reg->cap;
    g->mask = reg->mask;
    g->me = &reg->ctl[g->r]->side[g->side];
    g->peer = &reg->ctl[g->r]->side[1 - g->side];
    g->s = &reg->slots[g->r];
    g->sleep_fd = reg->efd[g->party][tx ? BIO_SHM_WAKE_ROOM : BIO_SHM_WAKE_DATA];
    g->kick_fd = reg->efd[1 - g->party][tx ? BIO_SHM_WAKE_DATA : BIO_SHM_WAKE_ROOM];
    g->watch_fd = -1;
    return (PyObject *)g;
}

static void
bio_shmring_dealloc(BioShmRing *g)
{
    if (g->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)g);
    bio_shmring_unwatch(g);
    PyMem_RawFree(g->msgs);
    PyMem_RawFree(g->iov);
    Py_XDECREF(g->port);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static Py_ssize_t
bio_shmring_len(BioShmRing *g)
{
    return (Py_ssize_t)(uint32_t)(g->tail - g->head);
}

PyDoc_STRVAR(bio_shmring_sync_doc,
"sync() -> int\n\n"
"Publish head to the peer (kicking it only if it sleeps waiting for what\n"
"was published) and read the peer's progress into tail. Returns the slots\n"
"owned now: free slots (TX) or packets to read (RX).");

static PyObject *
bio_shmring_sync(BioShmRing *g, PyObject *Py_UNUSED(ignored))
{
    if (bio_shmring_ready(g) < 0)
        return NULL;
    bio_shmring_publish(g);
    int r = bio_shmring_refresh(g);
    if (r == 0 && g->side == BIO_SHM_PROD && bio_shmring_peer_state(g) == BIO_SHM_CLOSED)
        r = -EPIPE;
    if (r < 0)
        return bio_shmring_raise(g, r);
    return PyLong_FromUnsignedLong(g->tail - g->head);
}

/* Parse wait()'s n (1..capacity) and timeout. 0 or -1 with an error set. */
static int
bio_shmring_wait_args(BioShmRing *g, PyObject *n_obj, PyObject *timeout, uint32_t *want,
                      int64_t *timeout_ns)
{
    long n = 1;
    if (n_obj != NULL) {
        n = PyLong_AsLong(n_obj);
        if (n == -1 && PyErr_Occurred())
            return -1;
    }
    if (n < 1 || n > (long)g->cap) {
        PyErr_Format(PyExc_ValueError, "n must be between 1 and %u (the ring's capacity), "
                     "got %ld", g->cap, n);
        return -1;
    }
    *want = (uint32_t)n;
    return bio_timeout_parse(timeout ? timeout : Py_None, timeout_ns);
}

/* The outcome of a wait: the slots owned, or an error. A closed or exited
 * peer is an error on TX, and on RX once nothing is left to read. GIL. */
static PyObject *
bio_shmring_wait_result(BioShmRing *g, int r)
{
    if (r == -ECONNRESET || r == -EPIPE) {
        int e = bio_shmring_refresh(g);
        if (e < 0)
            return bio_shmring_raise(g, e);
        if (g->side == BIO_SHM_CONS && g->tail != g->head)
            return PyLong_FromUnsignedLong(g->tail - g->head);
    }
    if (r < 0)
        return bio_shmring_raise(g, r);
    return PyLong_FromUnsignedLong(g->tail - g->head);
}

PyDoc_STRVAR(bio_shmring_wait_doc,
"wait(n=1, timeout=None) -> int\n\n"
"sync(), then wait until n slots lie beyond cur (TX: free; RX: packets):\n"
"spin for `linger_ns`, then sleep until the peer kicks. Returns the slots\n"
"owned (fewer than n after the timeout). Raises ConnectionResetError if the\n"
"peer's process exits, BrokenPipeError if it closed its port (RX: once\n"
"everything it sent has been read).");

static PyObject *
bio_shmring_wait(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"n", "timeout", NULL};
    PyObject *a[2];
    BioShmWait w = {.g = g};
    int64_t timeout_ns;
    if (bio_args_parse("wait", args, nargs, kwnames, names, 2, 0, a) < 0 ||
        bio_shmring_wait_args(g, a[0], a[1], &w.want, &timeout_ns) < 0 ||
        bio_shmring_ready(g) < 0)
        return NULL;
    bio_shmring_publish(g);
    int r = bio_shmring_refresh(g);
    if (r == 0 && (uint32_t)(g->tail - g->cur) < w.want) {
        int64_t now = bio_now_ns();
        w.deadline = timeout_ns < 0 ? -1 : now + timeout_ns;
        w.linger_end = now + g->linger_ns;
        g->busy = 1;
        r = bio_nogil_retry(bio_shmring_wait_nogil, &w);
        g->busy = 0;
        if (r == -EINTR)
            return NULL;
    }
    return bio_shmring_wait_result(g, r);
}

PyDoc_STRVAR(bio_shmring_advance_doc,
"advance(n=None)\n\n"
"Hand n owned slots (default: all) over at the next sync: head and cur\n"
"move past them. TX: they hold packets now; RX: they are free again.");

static PyObject *
bio_shmring_advance(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "advance() takes at most 1 argument (%zd given)", nargs);
        return NULL;
    }
    if (bio_shmring_ready(g) < 0)
        return NULL;
    uint32_t owned = g->tail - g->head;
    long n = owned;
    if (nargs == 1 && args[0] != Py_None) {
        n = PyLong_AsLong(args[0]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
    }
    if (n < 0 || (unsigned long)n > owned) {
        PyErr_Format(PyExc_ValueError, "advance(%ld): only %u slots are owned (head to tail)",
                     n, owned);
        return NULL;
    }
    g->head += (uint32_t)n;
    if ((int32_t)(g->cur - g->head) < 0)
        g->cur = g->head;
    Py_RETURN_NONE;
}

/* counters() / peer_counters(): one side's counters of this ring. */
static PyObject *
bio_shm_side_counters(BioShmSide *side)
{
    return bio_counters_dict((const void *)side->counters, bio_shm_counter_names, BIO_SHM_NCOUNTERS);
}

static PyObject *
bio_shmring_counters(BioShmRing *g, PyObject *Py_UNUSED(ignored))
{
    return bio_shm_side_counters(g->me);
}

static PyObject *
bio_shmring_peer_counters(BioShmRing *g, PyObject *Py_UNUSED(ignored))
{
    return bio_shm_side_counters(g->peer);
}

static PyObject *
bio_shmring_get_pos(BioShmRing *g, void *which)
{
    uint32_t v = which == (void *)0 ? g->head : which == (void *)1 ? g->cur : g->tail;
    return PyLong_FromUnsignedLong(v & g->mask);
}

/* cur = v: a ring index between head and tail (netmap's rule). */
static int
bio_shmring_set_cur(BioShmRing *g, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete cur");
        return -1;
    }
    long i = PyLong_AsLong(v);
    if (i == -1 && PyErr_Occurred())
        return -1;
    uint32_t rel = ((uint32_t)i - g->head) & g->mask, owned = g->tail - g->head;
    if (i < 0 || i > (long)g->mask || rel > owned) {
        PyErr_Format(PyExc_ValueError, "cur must be a ring index from head (%u) to tail (%u), "
                     "got %ld", g->head & g->mask, g->tail & g->mask, i);
        return -1;
    }
    g->cur = g->head + rel;
    return 0;
}

static PyObject *
bio_shmring_get_peer_pid(BioShmRing *g, void *c)
{
    return PyLong_FromLong(atomic_load(&g->reg->hdr->party[1 - g->party].pid));
}

/* ---- TX: filling slots ---------------------------------------------------- */

/* A key argument (dst/src): absent or None is 0, else an int in u32. 0 or
 * -1 with TypeError/ValueError. */
static int
bio_shm_key(const char *what, PyObject *obj, uint32_t *out)
{
    *out = 0;
    if (obj == NULL || obj == Py_None)
        return 0;
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be int, got %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if ((v == (unsigned long long)-1 && PyErr_Occurred()) || v > 0xffffffffULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be between 0 and 4294967295, got %R", what, obj);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* Make sure a TX ring owns a free slot, reading the consumer's position if
 * the last one known says full. 0, or -1 with BlockingIOError. GIL. */
static int
bio_shmtx_room(BioShmRing *g)
{
    if (g->tail != g->head)
        return 0;
    int r = bio_shmring_refresh(g);
    if (r < 0) {
        bio_shmring_raise(g, r);
        return -1;
    }
    if (g->tail != g->head)
        return 0;
    bio_shm_oserror(EAGAIN, "ring full: all %u slots are in flight; sync() or wait() for "
                    "room", g->cap);
    return -1;
}

/* Write the metadata of the slot at head and advance head (and cur). */
static void
bio_shmtx_commit(BioShmRing *g, uint32_t len, uint32_t flags, uint32_t dst, uint32_t src,
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

/* Parse (dst, src, addr) of put()/claim(). 0 or -1. */
static int
bio_shmtx_meta(PyObject *dst_o, PyObject *src_o, PyObject *addr, uint32_t *dst, uint32_t *src,
               struct sockaddr_in6 *name)
{
    memset(name, 0, sizeof(*name));
    if (bio_shm_key("dst", dst_o, dst) < 0 || bio_shm_key("src", src_o, src) < 0)
        return -1;
    return addr != NULL && addr != Py_None ? bio_addr_parse(addr, name) : 0;
}

PyDoc_STRVAR(bio_shmtx_put_doc,
"put(payload, dst=0, src=0, addr=None) -> int\n\n"
"Copy payload into the free slot at head and advance head; returns the free\n"
"slots left. dst/src are 32-bit keys (a switch forwards by dst and learns\n"
"src); addr an optional socket address for send_to(). Published by sync().\n"
"BlockingIOError when the ring is full.");

static PyObject *
bio_shmtx_put(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"payload", "dst", "src", "addr", NULL};
    PyObject *a[4];
    uint32_t dst, src, idx;
    struct sockaddr_in6 name;
    Py_buffer pb;
    if (bio_args_parse("put", args, nargs, kwnames, names, 4, 1, a) < 0 ||
        bio_shmtx_meta(a[1], a[2], a[3], &dst, &src, &name) < 0)
        return NULL;
    if (PyObject_GetBuffer(a[0], &pb, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "payload must be a bytes-like object, got %.100s",
                     Py_TYPE(a[0])->tp_name);
        return NULL;
    }
    if (pb.len > (Py_ssize_t)g->reg->slot_size) {
        PyErr_Format(PyExc_ValueError, "payload of %zd bytes does not fit a %u-byte slot",
                     pb.len, g->reg->slot_size);
        PyBuffer_Release(&pb);
        return NULL;
    }
    if (bio_shmring_ready(g) < 0 || bio_shmtx_room(g) < 0) {
        PyBuffer_Release(&pb);
        return NULL;
    }
    unsigned char *buf = bio_shmring_buf(g, g->head, &idx);
    if (buf == NULL) {
        PyBuffer_Release(&pb);
        return bio_shmring_bad_slot(g, g->head, idx);
    }
    memcpy(buf, pb.buf, (size_t)pb.len);
    PyBuffer_Release(&pb);
    bio_shmtx_commit(g, (uint32_t)pb.len, 0, dst, src, &name);
    return PyLong_FromUnsignedLong(g->tail - g->head);
}

PyDoc_STRVAR(bio_shmtx_claim_doc,
"claim(length, dst=0, src=0, addr=None) -> memoryview\n\n"
"Zero copy: take the free slot at head for a packet of `length` bytes,\n"
"advance head, and return a writable memoryview of its payload to fill in\n"
"place before the next sync(). BlockingIOError when the ring is full.");

static PyObject *
bio_shmtx_claim(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"length", "dst", "src", "addr", NULL};
    PyObject *a[4];
    uint32_t dst, src, idx;
    struct sockaddr_in6 name;
    if (bio_args_parse("claim", args, nargs, kwnames, names, 4, 1, a) < 0 ||
        bio_shmtx_meta(a[1], a[2], a[3], &dst, &src, &name) < 0)
        return NULL;
    long len = PyLong_AsLong(a[0]);
    if (len == -1 && PyErr_Occurred())
        return NULL;
    if (len < 0 || len > (long)g->reg->slot_size) {
        PyErr_Format(PyExc_ValueError, "length must be between 0 and %u (the slot size), "
                     "got %ld", g->reg->slot_size, len);
        return NULL;
    }
    if (bio_shmring_ready(g) < 0 || bio_shmtx_room(g) < 0)
        return NULL;
    unsigned char *buf = bio_shmring_buf(g, g->head, &idx);
    if (buf == NULL)
        return bio_shmring_bad_slot(g, g->head, idx);
    Py_ssize_t off = buf - g->reg->base;
    bio_shmtx_commit(g, (uint32_t)len, 0, dst, src, &name);
    return PySequence_GetSlice(g->reg->view, off, off + len);
}

/* Parse put_batch()'s start/count against b: [*start, *end). 0 or -1. */
static int
bio_shm_batch_range(BioBatch *b, PyObject *start_o, PyObject *count_o, Py_ssize_t *start,
                    Py_ssize_t *end)
{
    Py_ssize_t s = 0, n;
    if (start_o != NULL && (s = PyNumber_AsSsize_t(start_o, PyExc_OverflowError)) == -1 &&
        PyErr_Occurred())
        return -1;
    if (s < 0 || s > b->count) {
        PyErr_Format(PyExc_ValueError, "start must be between 0 and %zd (the batch's length), "
                     "got %zd", b->count, s);
        return -1;
    }
    n = b->count - s;
    if (count_o != NULL && count_o != Py_None &&
        (n = PyNumber_AsSsize_t(count_o, PyExc_OverflowError)) == -1 && PyErr_Occurred())
        return -1;
    if (n < 0 || n > b->count - s) {
        PyErr_Format(PyExc_ValueError, "count must be between 0 and %zd (entries after "
                     "start), got %zd", b->count - s, n);
        return -1;
    }
    *start = s;
    *end = s + n;
    return 0;
}

/* ValueError unless every entry of [start, end) lies inside its buffer and
 * fits a slot. 0 or -1. */
static int
bio_shmtx_check_batch(BioShmRing *g, BioBatch *b, Py_ssize_t start, Py_ssize_t end)
{
    if (bio_batch_check_entries(b, start, end) < 0)
        return -1;
    for (Py_ssize_t j = start; j < end; j++) {
        if (b->lengths[j] > g->reg->slot_size) {
            PyErr_Format(PyExc_ValueError, "datagram %zd of %u bytes does not fit a %u-byte "
                         "slot", j, (unsigned)b->lengths[j], g->reg->slot_size);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(bio_shmtx_put_batch_doc,
"put_batch(batch, start=0, count=None, *, dst=0, src=0) -> int\n\n"
"Copy entries [start, start+count) of a PacketBatch (payload, address,\n"
"flags) into free slots, in one call; returns how many fit. BlockingIOError\n"
"if the ring is full and none did.");

static PyObject *
bio_shmtx_put_batch(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"batch", "start", "count", "dst", "src", NULL};
    PyObject *a[5];
    uint32_t dst, src, idx;
    Py_ssize_t start, end;
    if (bio_args_parse("put_batch", args, nargs, kwnames, names, 3, 1, a) < 0 ||
        bio_args_batch("put_batch", a[0]) < 0 || bio_shm_key("dst", a[3], &dst) < 0 ||
        bio_shm_key("src", a[4], &src) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    if (bio_batch_check_idle(b) < 0 || bio_shm_batch_range(b, a[1], a[2], &start, &end) < 0 ||
        bio_shmtx_check_batch(g, b, start, end) < 0 || bio_shmring_ready(g) < 0)
        return NULL;
    if (start == end)
        return PyLong_FromLong(0);
    if (bio_shmtx_room(g) < 0)
        return NULL;
    Py_ssize_t n = end - start, room = (Py_ssize_t)(uint32_t)(g->tail - g->head);
    if (n > room)
        n = room;
    for (Py_ssize_t j = start; j < start + n; j++) {
        unsigned char *buf = bio_shmring_buf(g, g->head, &idx);
        if (buf == NULL)
            return bio_shmring_bad_slot(g, g->head, idx);
        memcpy(buf, b->data + b->offsets[j], b->lengths[j]);
        bio_shmtx_commit(g, b->lengths[j], b->flags[j] & BIO_FLAG_TRUNCATED, dst, src,
                         &b->names[j]);
    }
    return PyLong_FromSsize_t(n);
}

/* ---- TX: receiving from a socket straight into free slots ---------------- */

typedef struct {
    BioShmRing *g;
    int fd;
    uint32_t dst, src;
    int64_t deadline;          /* -1: none */
    uint32_t vlen;             /* messages asked for */
    uint32_t bad;              /* a slot naming a buffer outside the pool */
    uint64_t bytes, truncated, syscalls;
} BioShmRecv;

/* Point message k at the buffer and name of free slot head + k. 0, or
 * -EBADMSG if that slot names a buffer outside the pool. */
static int
bio_shmtx_recv_prepare(BioShmRing *g, uint32_t k)
{
    uint32_t idx;
    unsigned char *buf = bio_shmring_buf(g, g->head + k, &idx);
    if (buf == NULL)
        return -EBADMSG;
    struct msghdr *h = &g->msgs[k].msg_hdr;
    g->iov[k].iov_base = buf;
    g->iov[k].iov_len = g->reg->slot_size;
    memset(h, 0, sizeof(*h));
    h->msg_name = &g->s->names[(g->head + k) & g->mask];
    h->msg_namelen = sizeof(struct sockaddr_in6);
    h->msg_iov = &g->iov[k];
    h->msg_iovlen = 1;
    return 0;
}

/* Commit n received messages as packets at head. */
static void
bio_shmtx_recv_commit(BioShmRecv *c, int n)
{
    BioShmRing *g = c->g;
    for (int k = 0; k < n; k++) {
        uint32_t len = g->msgs[k].msg_len, slot = g->head & g->mask;
        int trunc = (g->msgs[k].msg_hdr.msg_flags & MSG_TRUNC) != 0;
        if (g->msgs[k].msg_hdr.msg_namelen == 0)
            g->s->names[slot].sin6_family = 0;
        c->bytes += len > g->reg->slot_size ? g->reg->slot_size : len;
        c->truncated += trunc;
        struct sockaddr_in6 name = g->s->names[slot];
        bio_shmtx_commit(g, len > g->reg->slot_size ? g->reg->slot_size : len,
                         trunc ? BIO_FLAG_TRUNCATED : 0, c->dst, c->src, &name);
    }
}

/* recvmmsg into the free slots, polling until the deadline for the first
 * datagram. Returns datagrams (committed at head), 0 on timeout, or
 * -errno. Resumable. nogil. */
static int
bio_shmtx_recv_nogil(void *arg)
{
    BioShmRecv *c = arg;
    BioShmRing *g = c->g;
    for (;;) {
        for (uint32_t k = 0; k < c->vlen; k++) {
            if (bio_shmtx_recv_prepare(g, k) < 0) {
                c->bad = g->head + k;
                return -EBADMSG;
            }
        }
        c->syscalls++;
        int n = recvmmsg(c->fd, g->msgs, c->vlen, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n > 0) {
            bio_shmtx_recv_commit(c, n);
            return n;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        if (c->deadline >= 0 && bio_now_ns() >= c->deadline)
            return 0;
        c->syscalls++;
        int p = bio_poll_nogil(c->fd, POLLIN, c->deadline);
        if (p <= 0)
            return p;
    }
}

/* Allocate the recvmmsg scratch (once per ring). 0 or -1 with MemoryError. */
static int
bio_shmtx_scratch(BioShmRing *g)
{
    if (g->msgs != NULL)
        return 0;
    uint32_t n = g->cap < BIO_SHM_RECV_MAX ? g->cap : BIO_SHM_RECV_MAX;
    g->msgs = PyMem_RawCalloc(n, sizeof(struct mmsghdr));
    g->iov = PyMem_RawCalloc(n, sizeof(struct iovec));
    if (g->msgs == NULL || g->iov == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(bio_shmtx_recv_from_doc,
"recv_from(fd, timeout=None, dst=0, src=0) -> (datagrams, bytes, truncated, syscalls)\n\n"
"recvmmsg from a UDP socket straight into the free slots (no copy through\n"
"Python or a batch), waiting up to timeout for the first datagram. The\n"
"packets are committed at head with the sender's address; sync() publishes.");

static PyObject *
bio_shmtx_recv_from(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"fd", "timeout", "dst", "src", NULL};
    PyObject *a[4];
    int64_t timeout_ns;
    BioShmRecv c = {.g = g};
    if (bio_args_parse("recv_from", args, nargs, kwnames, names, 4, 1, a) < 0 ||
        bio_timeout_parse(a[1] ? a[1] : Py_None, &timeout_ns) < 0 ||
        bio_shm_key("dst", a[2], &c.dst) < 0 || bio_shm_key("src", a[3], &c.src) < 0)
        return NULL;
    c.fd = PyObject_AsFileDescriptor(a[0]);
    if (c.fd < 0 || bio_shmring_ready(g) < 0 || bio_shmtx_scratch(g) < 0 ||
        bio_shmtx_room(g) < 0)
        return NULL;
    uint32_t room = g->tail - g->head;
    c.vlen = room < BIO_SHM_RECV_MAX ? room : BIO_SHM_RECV_MAX;
    c.deadline = timeout_ns < 0 ? -1 : bio_now_ns() + timeout_ns;
    g->busy = 1;
    int r = bio_nogil_retry(bio_shmtx_recv_nogil, &c);
    g->busy = 0;
    if (r == -EINTR)
        return NULL;
    if (r == -EBADMSG)
        return bio_shmring_bad_slot(g, c.bad, g->s->idx[c.bad & g->mask]);
    if (r < 0)
        return bio_raise_errno(r);
    return Py_BuildValue("(iKKK)", r, (unsigned long long)c.bytes,
                         (unsigned long long)c.truncated, (unsigned long long)c.syscalls);
}

/* ---- RX: reading packets ---------------------------------------------------- */

/* Position of owned packet i (0 = head), or raise IndexError. */
static int
bio_shmrx_index(BioShmRing *g, Py_ssize_t i, uint32_t *pos)
{
    uint32_t owned = g->tail - g->head;
    if (i < 0)
        i += owned;
    if (i < 0 || i >= (Py_ssize_t)owned) {
        PyErr_Format(PyExc_IndexError, "ring index out of range (%u packets are owned)", owned);
        return -1;
    }
    *pos = g->head + (uint32_t)i;
    return 0;
}

/* Length of the packet at pos, never more than a slot. */
static uint32_t
bio_shmrx_len(BioShmRing *g, uint32_t pos)
{
    uint32_t len = __atomic_load_n(&g->s->len[pos & g->mask], __ATOMIC_RELAXED);
    return len > g->reg->slot_size ? g->reg->slot_size : len;
}

/* rx[i]: writable memoryview of owned packet i's payload (no copy). */
static PyObject *
bio_shmrx_item(BioShmRing *g, Py_ssize_t i)
{
    uint32_t pos, idx;
    if (bio_shmring_ready(g) < 0 || bio_shmrx_index(g, i, &pos) < 0)
        return NULL;
    unsigned char *buf = bio_shmring_buf(g, pos, &idx);
    if (buf == NULL)
        return bio_shmring_bad_slot(g, pos, idx);
    Py_ssize_t off = buf - g->reg->base;
    return PySequence_GetSlice(g->reg->view, off, off + bio_shmrx_len(g, pos));
}

/* Read one u32 array of owned packet i: dst(i), src(i), flags(i). */
static PyObject *
bio_shmrx_field(BioShmRing *g, PyObject *arg, uint32_t *array)
{
    uint32_t pos;
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if ((i == -1 && PyErr_Occurred()) || bio_shmring_ready(g) < 0 ||
        bio_shmrx_index(g, i, &pos) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(__atomic_load_n(&array[pos & g->mask], __ATOMIC_RELAXED));
}

static PyObject *
bio_shmrx_dst(BioShmRing *g, PyObject *arg)
{
    return bio_shmrx_field(g, arg, g->s->dst);
}

static PyObject *
bio_shmrx_src(BioShmRing *g, PyObject *arg)
{
    return bio_shmrx_field(g, arg, g->s->src);
}

static PyObject *
bio_shmrx_flags(BioShmRing *g, PyObject *arg)
{
    return bio_shmrx_field(g, arg, g->s->flags);
}

static PyObject *
bio_shmrx_addr(BioShmRing *g, PyObject *arg)
{
    uint32_t pos;
    Py_ssize_t i = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if ((i == -1 && PyErr_Occurred()) || bio_shmring_ready(g) < 0 ||
        bio_shmrx_index(g, i, &pos) < 0)
        return NULL;
    struct sockaddr_in6 name = g->s->names[pos & g->mask];
    if (name.sin6_family != AF_INET && name.sin6_family != AF_INET6)
        name.sin6_family = 0;
    return bio_addr_build(&name);
}

/* Lower *n to an optional count argument (None/absent: no limit). 0, or -1
 * with TypeError/ValueError. */
static int
bio_shm_count_arg(PyObject *obj, uint32_t *n)
{
    if (obj == NULL || obj == Py_None)
        return 0;
    long c = PyLong_AsLong(obj);
    if (c == -1 && PyErr_Occurred())
        return -1;
    if (c < 0) {
        PyErr_Format(PyExc_ValueError, "count must be >= 0, got %ld", c);
        return -1;
    }
    if ((unsigned long)c < *n)
        *n = (uint32_t)c;
    return 0;
}

/* Point batch entry j at the packet at pos (offset into the region). 0, or
 * -1 with OSError(EBADMSG). */
static int
bio_shmrx_entry(BioShmRing *g, BioBatch *b, Py_ssize_t j, uint32_t pos)
{
    uint32_t idx, k = pos & g->mask;
    unsigned char *buf = bio_shmring_buf(g, pos, &idx);
    if (buf == NULL) {
        bio_shmring_bad_slot(g, pos, idx);
        return -1;
    }
    b->offsets[j] = (uint64_t)(buf - g->reg->base);
    b->lengths[j] = bio_shmrx_len(g, pos);
    b->flags[j] = __atomic_load_n(&g->s->flags[k], __ATOMIC_RELAXED) & BIO_FLAG_TRUNCATED;
    b->segment_sizes[j] = 0;
    b->timestamps[j] = 0;
    b->sockets[j] = 0;
    b->errnos[j] = 0;
    b->names[j] = g->s->names[k];
    if (b->names[j].sin6_family != AF_INET && b->names[j].sin6_family != AF_INET6)
        b->names[j].sin6_family = 0;
    return 0;
}

PyDoc_STRVAR(bio_shmrx_peek_doc,
"peek(batch, count=None) -> int\n\n"
"Zero copy: make the PacketBatch's entries point at the owned packets from\n"
"head on (at most count, and the batch's capacity), in the region's memory.\n"
"batch[i], batch.offsets/lengths (offsets into `memory`) and\n"
"BurstSocket.send_batch(batch) then read the ring itself. Valid until those\n"
"slots are advanced past. Returns the entries made.");

static PyObject *
bio_shmrx_peek(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"batch", "count", NULL};
    PyObject *a[2];
    if (bio_args_parse("peek", args, nargs, kwnames, names, 2, 1, a) < 0 ||
        bio_args_batch("peek", a[0]) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    uint32_t owned = g->tail - g->head;
    if (bio_shm_count_arg(a[1], &owned) < 0 || bio_batch_check_idle(b) < 0 ||
        bio_shmring_ready(g) < 0)
        return NULL;
    Py_ssize_t n = (Py_ssize_t)owned < b->capacity ? (Py_ssize_t)owned : b->capacity;
    bio_batch_reset(b);
    b->ext_view = Py_NewRef(g->reg->view);
    b->ext_source = Py_NewRef((PyObject *)g->reg->mem);
    b->data = g->reg->base;
    b->data_len = g->reg->mem->size;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (bio_shmrx_entry(g, b, j, g->head + (uint32_t)j) < 0) {
            bio_batch_reset(b);
            return NULL;
        }
    }
    b->count = n;
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(bio_shmrx_forward_doc,
"forward(tx, count=None) -> int\n\n"
"Zero copy: move owned packets to a TX ring of the same region (this port's\n"
"tx, to echo through a pipe) by swapping buffer indices: each packet's\n"
"buffer goes to the TX slot, the TX slot's free buffer comes back to this\n"
"slot. Both heads advance. Returns the packets moved (limited by both\n"
"rings).");

static PyObject *
bio_shmrx_forward(BioShmRing *g, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"tx", "count", NULL};
    PyObject *a[2];
    if (bio_args_parse("forward", args, nargs, kwnames, names, 2, 1, a) < 0)
        return NULL;
    if (!PyObject_TypeCheck(a[0], &BioShmTx_Type)) {
        PyErr_Format(PyExc_TypeError, "forward() argument 1 must be a TX ring, not %.100s",
                     Py_TYPE(a[0])->tp_name);
        return NULL;
    }
    BioShmRing *t = (BioShmRing *)a[0];
    if (t->reg != g->reg) {
        PyErr_SetString(PyExc_ValueError, "forward() swaps buffers, so both rings must belong "
                        "to one region; copy with tx.put_batch() instead");
        return NULL;
    }
    uint32_t n = g->tail - g->head;
    if (bio_shm_count_arg(a[1], &n) < 0 || bio_shmring_ready(g) < 0 ||
        bio_shmring_ready(t) < 0)
        return NULL;
    int r = n > (uint32_t)(t->tail - t->head) ? bio_shmring_refresh(t) : 0;
    if (r < 0)
        return bio_shmring_raise(t, r);
    if (n > (uint32_t)(t->tail - t->head))
        n = t->tail - t->head;
    for (uint32_t j = 0; j < n; j++) {
        uint32_t rk = (g->head + j) & g->mask, tk = t->head & t->mask;
        uint32_t idx = g->s->idx[rk];
        g->s->idx[rk] = t->s->idx[tk];
        t->s->idx[tk] = idx;
        bio_shmtx_commit(t, bio_shmrx_len(g, g->head + j), g->s->flags[rk], g->s->dst[rk],
                         g->s->src[rk], &g->s->names[rk]);
    }
    g->head += n;
    if ((int32_t)(g->cur - g->head) < 0)
        g->cur = g->head;
    return PyLong_FromUnsignedLong(n);
}

/* ---- the two ring types ------------------------------------------------------ */

#define BIO_SHMRING_COMMON_METHODS                                                      \
    {"sync", (PyCFunction)bio_shmring_sync, METH_NOARGS, bio_shmring_sync_doc},         \
    {"wait", (PyCFunction)(void (*)(void))bio_shmring_wait, METH_FASTCALL | METH_KEYWORDS, \
     bio_shmring_wait_doc},                                                             \
    {"advance", (PyCFunction)(void (*)(void))bio_shmring_advance, METH_FASTCALL,        \
     bio_shmring_advance_doc},                                                          \
    {"counters", (PyCFunction)bio_shmring_counters, METH_NOARGS,                        \
     "counters() -> dict: this side's syncs, kicks, sleeps, wakeups, linger_hits, timeouts"}, \
    {"peer_counters", (PyCFunction)bio_shmring_peer_counters, METH_NOARGS,              \
     "peer_counters() -> dict: the same counters of the other side of this ring"}

static PyMethodDef bio_shmtx_methods[] = {
    BIO_SHMRING_COMMON_METHODS,
    {"put", (PyCFunction)(void (*)(void))bio_shmtx_put, METH_FASTCALL | METH_KEYWORDS,
     bio_shmtx_put_doc},
    {"claim", (PyCFunction)(void (*)(void))bio_shmtx_claim, METH_FASTCALL | METH_KEYWORDS,
     bio_shmtx_claim_doc},
    {"put_batch", (PyCFunction)(void (*)(void))bio_shmtx_put_batch,
     METH_FASTCALL | METH_KEYWORDS, bio_shmtx_put_batch_doc},
    {"recv_from", (PyCFunction)(void (*)(void))bio_shmtx_recv_from,
     METH_FASTCALL | METH_KEYWORDS, bio_shmtx_recv_from_doc},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef bio_shmrx_methods[] = {
    BIO_SHMRING_COMMON_METHODS,
    {"peek", (PyCFunction)(void (*)(void))bio_shmrx_peek, METH_FASTCALL | METH_KEYWORDS,
     bio_shmrx_peek_doc},
    {"forward", (PyCFunction)(void (*)(void))bio_shmrx_forward, METH_FASTCALL | METH_KEYWORDS,
     bio_shmrx_forward_doc},
    {"dst", (PyCFunction)bio_shmrx_dst, METH_O, "dst(i) -> destination key of packet i"},
    {"src", (PyCFunction)bio_shmrx_src, METH_O, "src(i) -> source key of packet i"},
    {"flags", (PyCFunction)bio_shmrx_flags, METH_O, "flags(i) -> FLAG_* bits of packet i"},
    {"addr", (PyCFunction)bio_shmrx_addr, METH_O,
     "addr(i) -> socket address of packet i, or None"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_shmring_members[] = {
    {"linger_ns", T_LONGLONG, offsetof(BioShmRing, linger_ns), 0,
     "how long wait() spins on the peer's position before it sleeps (ns)"},
    {"capacity", T_UINT, offsetof(BioShmRing, cap), READONLY,
     "slots that can be in flight (slots - 1, as in netmap)"},
    {"ring", T_INT, offsetof(BioShmRing, r), READONLY, "index of the ring in its region"},
    {"port", T_OBJECT, offsetof(BioShmRing, port), READONLY, "the PortClaim"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef bio_shmring_getset[] = {
    {"head", (getter)bio_shmring_get_pos, NULL, "first owned slot (ring index)", (void *)0},
    {"cur", (getter)bio_shmring_get_pos, (setter)bio_shmring_set_cur,
     "wake-up point: wait(n) waits for n slots beyond cur (ring index, head..tail)",
     (void *)1},
    {"tail", (getter)bio_shmring_get_pos, NULL, "first slot not owned (ring index)", (void *)2},
    {"peer_pid", (getter)bio_shmring_get_peer_pid, NULL,
     "pid recorded by the peer's port (0: not claimed yet)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods bio_shmtx_as_sequence = {.sq_length = (lenfunc)bio_shmring_len};
static PySequenceMethods bio_shmrx_as_sequence = {
    .sq_length = (lenfunc)bio_shmring_len,
    .sq_item = (ssizeargfunc)bio_shmrx_item,
};

static PyTypeObject BioShmTx_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortTx",
    .tp_basicsize = sizeof(BioShmRing),
    .tp_dealloc = (destructor)bio_shmring_dealloc,
    .tp_as_sequence = &bio_shmtx_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "PortTx(port): the producing side of a port's TX ring (internal base of "
              "burstio.ports.PortTx). len() is the free slots owned.",
    .tp_weaklistoffset = offsetof(BioShmRing, weakrefs),
    .tp_methods = bio_shmtx_methods,
    .tp_members = bio_shmring_members,
    .tp_getset = bio_shmring_getset,
    .tp_new = bio_shmring_new,
};

static PyTypeObject BioShmRx_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortRx",
    .tp_basicsize = sizeof(BioShmRing),
    .tp_dealloc = (destructor)bio_shmring_dealloc,
    .tp_as_sequence = &bio_shmrx_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "PortRx(port): the consuming side of a port's RX ring (internal base of "
              "burstio.ports.PortRx). len() is the packets owned; rx[i] packet i.",
    .tp_weaklistoffset = offsetof(BioShmRing, weakrefs),
    .tp_methods = bio_shmrx_methods,
    .tp_members = bio_shmring_members,
    .tp_getset = bio_shmring_getset,
    .tp_new = bio_shmring_new,
};

/* ---- switch: forwarding table -------------------------------------------- */

enum bio_sw_counter {
    BIO_SW_FORWARDED,     /* copies delivered into a port's RX ring */
    BIO_SW_FLOODED,       /* packets sent to every other port */
    BIO_SW_UNKNOWN_DROPS, /* unknown destination, flooding off */
    BIO_SW_FULL_DROPS,    /* destination ring full, on_full="drop" */
    BIO_SW_GONE_DROPS,    /* destination port closed or exited */
    BIO_SW_FILTERED,      /* destination is the port it came from */
    BIO_SW_BAD_SLOTS,     /* slots naming a buffer outside the pool */
    BIO_SW_LEARNED,       /* table entries learned or moved */
    BIO_SW_TABLE_FULL,    /* keys not learned: table full */
    BIO_SW_PASSES,
    BIO_SW_SLEEPS,
    BIO_SW_WAKEUPS,
    BIO_SW_PORTS_GONE,
    BIO_SW_NCOUNTERS
};

static const char *const bio_sw_counter_names[BIO_SW_NCOUNTERS] = {
    "forwarded", "flooded", "unknown_drops", "full_drops", "gone_drops", "filtered",
    "bad_slots", "learned", "table_full", "passes", "sleeps", "wakeups", "ports_gone",
};

enum { BIO_SW_DONE, BIO_SW_BLOCKED };
#define BIO_SW_RETURN_AFTER 65536 /* forward() returns to Python this often */

typedef struct {
    BioShmRing *rx, *tx; /* the switch's side: reads the client's TX, fills its RX */
    int gone;            /* 0 live, else -EPIPE (closed), -ECONNRESET (exited), -EBADMSG */
    int exited;          /* its process exited: drain what it sent, then gone */
    int blocked;         /* on_full="wait": the port its next packet waits for, or -1 */
} BioSwPort;

typedef struct {
    uint32_t key;
    int32_t port; /* -1: removed */
    uint8_t used, fixed;
} BioSwEntry;

typedef struct {
    const unsigned char *data;
    uint32_t len, flags, dst, src;
    struct sockaddr_in6 name;
} BioSwPkt;

typedef struct {
    PyObject_HEAD
    int efd;                 /* the switch's doorbell, owned */
    int max_ports;
    _Atomic int nports;
    BioSwPort *ports;
    PyObject *rings;         /* list keeping every ring alive */
    BioSwEntry *fib;
    uint32_t fib_mask, fib_used;
    pthread_mutex_t lock;    /* the table: held by a pass and by route() */
    int learning, flood_unknown, wait_full;
    unsigned int budget;     /* packets per port per pass */
    int64_t linger_ns;
    _Atomic int stop;
    uint64_t counters[BIO_SW_NCOUNTERS];
    struct pollfd *pfd;
    int *pfd_port;
    int busy;
} BioShmSwitch;

static uint32_t
bio_sw_hash(uint32_t k)
{
    k ^= k >> 16;
    k *= 0x7feb352du;
    k ^= k >> 15;
    k *= 0x846ca68bu;
    return k ^ (k >> 16);
}

/* The table entry for key, or the empty one where it would go; NULL if the
 * table is full and the key absent. */
static BioSwEntry *
bio_sw_slot(BioShmSwitch *sw, uint32_t key)
{
    uint32_t i = bio_sw_hash(key) & sw->fib_mask;
    for (uint32_t n = 0; n <= sw->fib_mask; n++, i = (i + 1) & sw->fib_mask) {
        BioSwEntry *e = &sw->fib[i];
        if (!e->used || e->key == key)
            return e;
    }
    return NULL;
}

/* Port that key routes to, or -1 (unknown or removed). Table lock held. */
static int
bio_sw_lookup(BioShmSwitch *sw, uint32_t key)
{
    BioSwEntry *e = bio_sw_slot(sw, key);
    return e != NULL && e->used ? e->port : -1;
}

/* key -> port (-1 removes). A fixed entry (static route) is never changed
 * by learning. 1 changed, 0 unchanged, -1 table full (kept below 3/4). */
static int
bio_sw_set(BioShmSwitch *sw, uint32_t key, int port, int fixed)
{
    BioSwEntry *e = bio_sw_slot(sw, key);
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
bio_sw_learn(BioShmSwitch *sw, int i, uint32_t src)
{
    if (!sw->learning || src == 0 || src == BIO_SHM_BROADCAST)
        return;
    int r = bio_sw_set(sw, src, i, 0);
    if (r > 0)
        sw->counters[BIO_SW_LEARNED]++;
    else if (r < 0)
        sw->counters[BIO_SW_TABLE_FULL]++;
}

/* Port i is gone (closed, exited or corrupt): forget what was learned on
 * it, release sources waiting for it. Static routes stay, so that packets
 * for it are dropped (gone_drops) rather than flooded to everyone else. */
static void
bio_sw_gone(BioShmSwitch *sw, int i, int why)
{
    if (sw->ports[i].gone)
        return;
    sw->ports[i].gone = why;
    sw->counters[BIO_SW_PORTS_GONE]++;
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
bio_sw_read(BioShmRing *rx, uint32_t pos, BioSwPkt *p)
{
    uint32_t idx, k = pos & rx->mask;
    p->data = bio_shmring_buf(rx, pos, &idx);
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
bio_sw_room(BioShmSwitch *sw, int q)
{
    BioShmRing *t = sw->ports[q].tx;
    if (t->tail == t->head && bio_shmring_refresh(t) < 0)
        bio_sw_gone(sw, q, -EBADMSG);
    return sw->ports[q].gone ? 0 : t->tail - t->head;
}

/* Copy p into the free slot at the head of port q's RX ring. */
static void
bio_sw_copy(BioShmSwitch *sw, int q, const BioSwPkt *p)
{
    BioShmRing *t = sw->ports[q].tx;
    uint32_t idx;
    unsigned char *buf = bio_shmring_buf(t, t->head, &idx);
    if (buf == NULL) {
        sw->counters[BIO_SW_BAD_SLOTS]++;
        bio_sw_gone(sw, q, -EBADMSG);
        return;
    }
    memcpy(buf, p->data, p->len);
    bio_shmtx_commit(t, p->len, p->flags, p->dst, p->src, &p->name);
    sw->counters[BIO_SW_FORWARDED]++;
}

/* Deliver p from port i to every other live port; with on_full="wait",
 * only when all of them have room. BIO_SW_DONE or BIO_SW_BLOCKED. */
static int
bio_sw_flood(BioShmSwitch *sw, int i, const BioSwPkt *p)
{
    int n = atomic_load_explicit(&sw->nports, memory_order_acquire);
    for (int q = 0; sw->wait_full && q < n; q++) {
        if (q != i && !sw->ports[q].gone && bio_sw_room(sw, q) == 0) {
            sw->ports[i].blocked = q;
            return BIO_SW_BLOCKED;
        }
    }
    for (int q = 0; q < n; q++) {
        if (q == i || sw->ports[q].gone)
            continue;
        if (bio_sw_room(sw, q) > 0)
            bio_sw_copy(sw, q, p);
        else
            sw->counters[BIO_SW_FULL_DROPS]++;
    }
    sw->counters[BIO_SW_FLOODED]++;
    return BIO_SW_DONE;
}

/* Deliver p from port i to port q. BIO_SW_DONE or BIO_SW_BLOCKED. */
static int
bio_sw_unicast(BioShmSwitch *sw, int i, int q, const BioSwPkt *p)
{
    if (q == i) {
        sw->counters[BIO_SW_FILTERED]++;
        return BIO_SW_DONE;
    }
    if (sw->ports[q].gone) {
        sw->counters[BIO_SW_GONE_DROPS]++;
        return BIO_SW_DONE;
    }
    if (bio_sw_room(sw, q) == 0) {
        if (sw->wait_full && !sw->ports[q].gone) {
            sw->ports[i].blocked = q;
            return BIO_SW_BLOCKED;
        }
        sw->counters[sw->ports[q].gone ? BIO_SW_GONE_DROPS : BIO_SW_FULL_DROPS]++;
        return BIO_SW_DONE;
    }
    bio_sw_copy(sw, q, p);
    return BIO_SW_DONE;
}

/* Route the packet at pos of port i's client TX ring: by destination key
 * (broadcast and, with flood_unknown, unknown keys go everywhere else),
 * then learn its source key. BIO_SW_DONE or BIO_SW_BLOCKED. */
static int
bio_sw_route(BioShmSwitch *sw, int i, uint32_t pos)
{
    BioSwPkt p;
    if (bio_sw_read(sw->ports[i].rx, pos, &p) < 0) {
        sw->counters[BIO_SW_BAD_SLOTS]++;
        return BIO_SW_DONE;
    }
    int r, q = p.dst == BIO_SHM_BROADCAST ? -1 : bio_sw_lookup(sw, p.dst);
    if (q >= 0)
        r = bio_sw_unicast(sw, i, q, &p);
    else if (p.dst == BIO_SHM_BROADCAST || sw->flood_unknown)
        r = bio_sw_flood(sw, i, &p);
    else {
        sw->counters[BIO_SW_UNKNOWN_DROPS]++;
        r = BIO_SW_DONE;
    }
    if (r == BIO_SW_DONE)
        bio_sw_learn(sw, i, p.src);
    return r;
}

/* Route what port i's client has published, up to the budget; a port whose
 * client closed or exited is gone once drained. Returns packets taken. */
static uint32_t
bio_sw_drain(BioShmSwitch *sw, int i)
{
    BioSwPort *sp = &sw->ports[i];
    BioShmRing *rx = sp->rx;
    int ending = sp->exited || bio_shmring_peer_state(rx) == BIO_SHM_CLOSED;
    if (bio_shmring_refresh(rx) < 0) {
        bio_sw_gone(sw, i, -EBADMSG);
        return 0;
    }
    uint32_t n = 0;
    sp->blocked = -1;
    while (rx->head != rx->tail && n < sw->budget && !sp->gone) {
        if (bio_sw_route(sw, i, rx->head) == BIO_SW_BLOCKED)
            break;
        rx->head++;
        n++;
    }
    rx->cur = rx->head;
    if (ending && rx->head == rx->tail)
        bio_sw_gone(sw, i, bio_shmring_peer_state(rx) == BIO_SHM_CLOSED ? -EPIPE : -ECONNRESET);
    return n;
}

/* One pass over every live port, then publish what moved: releases to the
 * clients that sent, packets to the clients that receive (each kicked only
 * if it sleeps). Returns packets taken. Table lock held. nogil. */
static uint32_t
bio_sw_pass(BioShmSwitch *sw)
{
    int n = atomic_load_explicit(&sw->nports, memory_order_acquire);
    uint32_t moved = 0;
    for (int i = 0; i < n; i++)
        if (!sw->ports[i].gone)
            moved += bio_sw_drain(sw, i);
    for (int i = 0; i < n; i++) {
        if (sw->ports[i].gone)
            continue;
        bio_shmring_publish(sw->ports[i].rx);
        bio_shmring_publish(sw->ports[i].tx);
    }
    sw->counters[BIO_SW_PASSES]++;
    return moved;
}

/* ---- switch: sleeping ------------------------------------------------------ */

/* Raise the switch's flags before sleeping: on every live client's TX ring
 * (wake when it publishes past what the last pass saw) and on every full
 * ring a source waits for (wake when one slot frees). After the fence,
 * 1 if something is there already. nogil. */
static int
bio_sw_arm(BioShmSwitch *sw, int n)
{
    for (int i = 0; i < n; i++) {
        BioSwPort *sp = &sw->ports[i];
        if (sp->gone)
            continue;
        atomic_store_explicit(&sp->rx->me->wake_at, sp->rx->tail + 1, memory_order_relaxed);
        atomic_store_explicit(&sp->rx->me->sleeping, 1, memory_order_seq_cst);
        if (sp->blocked >= 0) {
            BioShmRing *t = sw->ports[sp->blocked].tx;
            atomic_store_explicit(&t->me->wake_at, t->head + 1 - t->cap, memory_order_relaxed);
            atomic_store_explicit(&t->me->sleeping, 1, memory_order_seq_cst);
        }
    }
    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < n; i++) {
        BioSwPort *sp = &sw->ports[i];
        if (sp->gone)
            continue;
        if (atomic_load_explicit(&sp->rx->peer->pos, memory_order_acquire) != sp->rx->tail ||
            bio_shmring_peer_state(sp->rx) == BIO_SHM_CLOSED)
            return 1;
        if (sp->blocked >= 0) {
            BioShmRing *t = sw->ports[sp->blocked].tx;
            uint32_t at = t->head + 1 - t->cap;
            if ((int32_t)(atomic_load_explicit(&t->peer->pos, memory_order_acquire) - at) >= 0)
                return 1;
        }
    }
    return 0;
}

/* Lower every flag bio_sw_arm may have raised. nogil. */
static void
bio_sw_disarm(BioShmSwitch *sw, int n)
{
    for (int i = 0; i < n; i++) {
        atomic_store_explicit(&sw->ports[i].rx->me->sleeping, 0, memory_order_relaxed);
        atomic_store_explicit(&sw->ports[i].tx->me->sleeping, 0, memory_order_relaxed);
    }
}

/* Poll the doorbell and the live clients' pidfds until the deadline (in
 * slices if some client cannot be watched by pidfd). A client whose pidfd
 * fires is marked exited (drained, then gone). 1, 0 (deadline) or -errno.
 * nogil. */
static int
bio_sw_poll_nogil(BioShmSwitch *sw, int n, int64_t deadline)
{
    int np = 1, slices = 0;
    sw->pfd[0] = (struct pollfd){.fd = sw->efd, .events = POLLIN};
    for (int i = 0; i < n; i++) {
        BioSwPort *sp = &sw->ports[i];
        if (sp->gone || sp->exited)
            continue;
        if (bio_shmring_watch(sp->rx) < 0) {
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
    if (slices && (until < 0 || until > now + BIO_SHM_CHECK_NS))
        until = now + BIO_SHM_CHECK_NS;
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
            sw->counters[BIO_SW_WAKEUPS]++;
    }
    return r == 0 && deadline >= 0 && bio_now_ns() >= deadline ? 0 : 1;
}

typedef struct {
    BioShmSwitch *sw;
    int64_t deadline, linger_end;
    uint64_t moved;
} BioSwRun;

/* Forward until the deadline (-1: until stop()), lingering after traffic
 * and sleeping when idle; returns to Python every BIO_SW_RETURN_AFTER
 * packets. 0 or -errno (-EINTR resumable). nogil. */
static int
bio_sw_run_nogil(void *arg)
{
    BioSwRun *c = arg;
    BioShmSwitch *sw = c->sw;
    while (!atomic_load(&sw->stop)) {
        pthread_mutex_lock(&sw->lock);
        uint32_t n = bio_sw_pass(sw);
        pthread_mutex_unlock(&sw->lock);
        int64_t now = bio_now_ns();
        if (n) {
            c->moved += n;
            c->linger_end = now + sw->linger_ns;
            if (c->moved >= BIO_SW_RETURN_AFTER)
                return 0;
            continue;
        }
        if (c->deadline >= 0 && now >= c->deadline)
            return 0;
        if (now < c->linger_end) {
            for (int k = 0; k < 64; k++)
                bio_shm_pause();
            continue;
        }
        int np = atomic_load_explicit(&sw->nports, memory_order_acquire), r = 1;
        if (!bio_sw_arm(sw, np) && !atomic_load(&sw->stop)) {
            sw->counters[BIO_SW_SLEEPS]++;
            r = bio_sw_poll_nogil(sw, np, c->deadline);
        }
        bio_sw_disarm(sw, np);
        if (r <= 0)
            return r;
    }
    return 0;
}

/* ---- switch: Python entry points ------------------------------------------ */

/* SwitchCore(efd, max_ports=64, table_size=4096): owns efd on success. */
static PyObject *
bio_sw_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
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
    BioShmSwitch *sw = (BioShmSwitch *)type->tp_alloc(type, 0);
    if (sw == NULL)
        return NULL;
    sw->efd = -1;
    pthread_mutex_init(&sw->lock, NULL);
    sw->ports = PyMem_RawCalloc((size_t)max_ports, sizeof(BioSwPort));
    sw->fib = PyMem_RawCalloc((size_t)table, sizeof(BioSwEntry));
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
bio_sw_dealloc(BioShmSwitch *sw)
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

PyDoc_STRVAR(bio_sw_add_doc,
"add(rx, tx) -> int\n\n"
"Add a port: the switch's side of a region (party 0), rx reading the\n"
"client's TX ring and tx filling its RX ring. Returns the port index.\n"
"Safe while forward() runs in another thread; the port is held by the\n"
"process that forwards.");

static PyObject *
bio_sw_add(BioShmSwitch *sw, PyObject *args)
{
    BioShmRing *rx, *tx;
    if (!PyArg_ParseTuple(args, "O!O!:add", &BioShmRx_Type, &rx, &BioShmTx_Type, &tx))
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
    if ((sw->busy && (bio_shmring_ready(rx) < 0 || bio_shmring_ready(tx) < 0)) ||
        PyList_Append(sw->rings, (PyObject *)rx) < 0 || PyList_Append(sw->rings, (PyObject *)tx) < 0)
        return NULL;
    sw->ports[n] = (BioSwPort){.rx = rx, .tx = tx, .blocked = -1};
    atomic_store_explicit(&sw->nports, n + 1, memory_order_release);
    uint64_t one = 1; /* a sleeping switch has no flag up on the new port: wake it */
    if (sw->efd >= 0 && write(sw->efd, &one, sizeof(one)) < 0)
        return bio_raise_errno(-errno);
    return PyLong_FromLong(n);
}

PyDoc_STRVAR(bio_sw_route_doc,
"route(key, port)\n\n"
"Static route: packets whose dst is key go to port (an index from add());\n"
"learning never changes it. port None removes the key.");

static PyObject *
bio_sw_route_py(BioShmSwitch *sw, PyObject *args)
{
    PyObject *key_o, *port_o;
    uint32_t key;
    if (!PyArg_ParseTuple(args, "OO:route", &key_o, &port_o) || bio_shm_key("key", key_o, &key) < 0)
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
    if (key == BIO_SHM_BROADCAST || key == 0) {
        PyErr_Format(PyExc_ValueError, "key must be between 1 and 4294967294 (0 is \"no key\", "
                     "4294967295 broadcast), got %u", key);
        return NULL;
    }
    /* with the GIL: a pass holding the table never needs it, and ends soon */
    pthread_mutex_lock(&sw->lock);
    int r = bio_sw_set(sw, key, (int)port, port >= 0);
    pthread_mutex_unlock(&sw->lock);
    if (r < 0)
        return bio_shm_oserror(ENOSPC, "forwarding table full (%u entries)", sw->fib_mask + 1);
    Py_RETURN_NONE;
}

/* routes() -> {key: (port, static)} */
static PyObject *
bio_sw_routes(BioShmSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    pthread_mutex_lock(&sw->lock); /* with the GIL, as in route() */
    for (uint32_t k = 0; d != NULL && k <= sw->fib_mask; k++) {
        BioSwEntry *e = &sw->fib[k];
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

PyDoc_STRVAR(bio_sw_forward_doc,
"forward(timeout=None) -> int\n\n"
"Forward packets for up to timeout seconds (None: until stop(); 0: what is\n"
"there now), sleeping when idle; returns after 65536 packets at most.\n"
"Returns the packets taken from the clients.");

static PyObject *
bio_sw_forward(BioShmSwitch *sw, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
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
        if (bio_shmring_ready(sw->ports[i].rx) < 0 || bio_shmring_ready(sw->ports[i].tx) < 0)
            return NULL;
    int64_t now = bio_now_ns();
    BioSwRun c = {.sw = sw, .deadline = timeout_ns < 0 ? -1 : now + timeout_ns,
                  .linger_end = now + sw->linger_ns};
    sw->busy = 1;
    int r = bio_nogil_retry(bio_sw_run_nogil, &c);
    sw->busy = 0;
    if (r == -EINTR)
        return NULL;
    if (r < 0)
        return bio_raise_errno(r);
    return PyLong_FromUnsignedLongLong(c.moved);
}

static PyObject *
bio_sw_stop(BioShmSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    atomic_store(&sw->stop, 1);
    uint64_t one = 1;
    if (sw->efd >= 0 && write(sw->efd, &one, sizeof(one)) < 0)
        return bio_raise_errno(-errno);
    Py_RETURN_NONE;
}

static PyObject *
bio_sw_counters(BioShmSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(sw->counters, bio_sw_counter_names, BIO_SW_NCOUNTERS);
}

/* port_state(i) -> 0 live, or -errno why it is gone */
static PyObject *
bio_sw_port_state(BioShmSwitch *sw, PyObject *arg)
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

static PyMethodDef bio_sw_methods[] = {
    {"add", (PyCFunction)bio_sw_add, METH_VARARGS, bio_sw_add_doc},
    {"route", (PyCFunction)bio_sw_route_py, METH_VARARGS, bio_sw_route_doc},
    {"routes", (PyCFunction)bio_sw_routes, METH_NOARGS, "routes() -> {key: (port, static)}"},
    {"forward", (PyCFunction)(void (*)(void))bio_sw_forward, METH_FASTCALL | METH_KEYWORDS,
     bio_sw_forward_doc},
    {"stop", (PyCFunction)bio_sw_stop, METH_NOARGS,
     "stop(): make forward() return (from any thread)"},
    {"counters", (PyCFunction)bio_sw_counters, METH_NOARGS, "counters() -> dict"},
    {"port_state", (PyCFunction)bio_sw_port_state, METH_O,
     "port_state(i) -> 0 if port i is live, else -errno: EPIPE closed, ECONNRESET exited, "
     "EBADMSG corrupt"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_sw_members[] = {
    {"learning", T_INT, offsetof(BioShmSwitch, learning), 0, "1: learn source keys"},
    {"flood_unknown", T_INT, offsetof(BioShmSwitch, flood_unknown), 0,
     "1: flood unknown destinations; 0: drop them (unknown_drops)"},
    {"wait_full", T_INT, offsetof(BioShmSwitch, wait_full), 0,
     "1: a packet waits for room in a full ring; 0: it is dropped (full_drops)"},
    {"budget", T_UINT, offsetof(BioShmSwitch, budget), 0, "packets per port per pass"},
    {"linger_ns", T_LONGLONG, offsetof(BioShmSwitch, linger_ns), 0,
     "how long the switch keeps polling after traffic before it sleeps (ns)"},
    {"nports", T_INT, offsetof(BioShmSwitch, nports), READONLY, "ports added"},
    {"stopping", T_INT, offsetof(BioShmSwitch, stop), 0,
     "1 once stop() was called: forward() returns at once (set 0 to run again)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BioShmSwitch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.SwitchCore",
    .tp_basicsize = sizeof(BioShmSwitch),
    .tp_dealloc = (destructor)bio_sw_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SwitchCore(efd, max_ports=64, table_size=4096): copies packets between ring "
              "ports by destination key (internal; see burstio.ports.Switch).",
    .tp_methods = bio_sw_methods,
    .tp_members = bio_sw_members,
    .tp_new = bio_sw_new,
};

/* ---- module ------------------------------------------------------------------ */

int
bio_shmring_init_types(PyObject *module)
{
    static int atfork_done;
    if (!atfork_done && pthread_atfork(NULL, NULL, bio_shm_atfork_child) != 0)
        return -1;
    atfork_done = 1;
    PyTypeObject *types[] = {&BioShmRegion_Type, &BioShmPort_Type, &BioShmTx_Type,
                             &BioShmRx_Type, &BioShmSwitch_Type};
    const char *names[] = {"PortRegion", "PortClaim", "PortTx", "PortRx", "SwitchCore"};
    for (int i = 0; i < 5; i++)
        if (PyType_Ready(types[i]) < 0 ||
            PyModule_AddObjectRef(module, names[i], (PyObject *)types[i]) < 0)
            return -1;
    if (PyModule_AddIntConstant(module, "PORT_BROADCAST", (long)BIO_SHM_BROADCAST) < 0 ||
        PyModule_AddIntConstant(module, "PORT_LAYOUT_VERSION", BIO_SHM_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "PORT_SLOTS_MAX", BIO_SHM_SLOTS_MAX) < 0 ||
        PyModule_AddIntConstant(module, "PORT_SLOT_SIZE_MAX", BIO_SHM_SLOT_SIZE_MAX) < 0)
        return -1;
    return 0;
}
