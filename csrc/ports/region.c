/* Port regions: the shared memory of two ports, netmap style.
 *
 * A region (one sealed memfd, mapped MAP_SHARED by two parties) holds a
 * header, two rings of `nslots` slots and a pool of 2 x nslots buffers
 * (ports/layout.h). Ring r carries party r's packets to party 1-r: a port
 * of party k produces into ring k (its TX) and consumes ring 1-k (its RX).
 * Every slot names one buffer by index (idx[]), with its length, flags, a
 * destination and a source key and an optional socket address, in
 * parallel arrays. This file creates a region (size, seal, map, write the
 * header) or attaches to one (check the seals, the header and the size),
 * and registers the ports types.
 *
 * Where a packet goes through it: nowhere itself; a packet lives in one of
 * the region's buffers from the moment a TX slot is filled (ports/tx.c)
 * until the peer releases the RX slot that names it (ports/rx.c).
 *
 * Policy (sizes, defaults, fd creation and passing, wording of argument
 * errors, the switch's thread) is src/burstio/ports.py's. The GIL is
 * dropped only through bio_nogil_retry.
 */
#include "ports/ports.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <structmember.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Raise OSError(err, msg) (the errno picks the subclass) and return NULL. */
PyObject *
bio_port_oserror(int err, const char *fmt, ...)
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

/* Map `size` bytes of fd shared and wrap the mapping in a Memory object (it
 * unmaps when its last user goes) with a writable memoryview. 0, or -1 with
 * OSError. */
static int
bio_port_map(int fd, uint64_t size, BioMemory **mem, PyObject **view)
{
    void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
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
    *mem = m;
    *view = PyMemoryView_FromObject((PyObject *)m);
    return *view == NULL ? -1 : 0;
}

/* Map the region's memfd; its buffers are there too unless a pool holds
 * them (bio_port_region_map_pool). 0 or -1. */
static int
bio_port_region_map(BioPortRegion *g, uint64_t size)
{
    if (bio_port_map(g->memfd, size, &g->mem, &g->view) < 0)
        return -1;
    g->base = g->mem->ptr;
    g->hdr = (BioPortHeader *)g->base;
    g->pmem = (BioMemory *)Py_NewRef((PyObject *)g->mem);
    g->pview = Py_NewRef(g->view);
    g->pbase = g->base;
    return 0;
}

/* Point the region's shortcuts at its (validated) layout. Only these
 * private copies are used afterwards: a peer rewriting the header cannot
 * move anything. */
static void
bio_port_region_bind(BioPortRegion *g, uint32_t nslots, uint32_t slot_size, uint32_t kind,
                     uint32_t nbufs)
{
    g->nslots = nslots;
    g->cap = g->mask = nslots - 1;
    g->slot_size = slot_size;
    g->stride = g->L.stride;
    g->nbufs = nbufs;
    g->kind = kind;
    g->bufs = g->pbase + g->L.bufs;
    for (int r = 0; r < 2; r++) {
        g->ctl[r] = (BioPortCtl *)(g->base + g->L.ctl[r]);
        g->slots[r].idx = (uint32_t *)(g->base + g->L.idx[r]);
        g->slots[r].len = (uint32_t *)(g->base + g->L.len[r]);
        g->slots[r].flags = (uint32_t *)(g->base + g->L.flags[r]);
        g->slots[r].dst = (uint32_t *)(g->base + g->L.dst[r]);
        g->slots[r].src = (uint32_t *)(g->base + g->L.src[r]);
        g->slots[r].names = (struct sockaddr_in6 *)(g->base + g->L.names[r]);
    }
}

/* The dimensions of a region to create: slots, slot size, kind, and for a
 * shared pool its frames, frame size and the offset of buffer 0 in a frame
 * (frames 0: inline buffers). */
typedef struct {
    uint32_t nslots, slot_size, kind, frames, stride, offset;
} BioPortDims;

/* Size, seal and map a fresh memfd, write the header and give ring r's slot
 * i buffer r * nslots + i (inline) or no buffer (a pool: ports/frames.c
 * hands frames out). The pool is mapped already. 0, or -1 with an
 * exception set. */
static int
bio_port_region_create(BioPortRegion *g, const BioPortDims *d)
{
    int r = bio_port_layout(&g->L, d->nslots, d->slot_size, d->frames ? d->stride : 0, d->offset);
    if (r == -EFBIG) {
        PyErr_Format(PyExc_ValueError, "a region of %u slots of %u bytes needs %llu bytes; "
                     "the limit is %llu", d->nslots, d->slot_size, (unsigned long long)g->L.size,
                     (unsigned long long)BIO_PORT_SIZE_MAX);
        return -1;
    }
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "slots must be a power of two between %u and %u and "
                     "slot_size between 1 and %u, got %u and %u", BIO_PORT_SLOTS_MIN,
                     BIO_PORT_SLOTS_MAX, d->frames ? d->stride - d->offset : BIO_PORT_SLOT_SIZE_MAX,
                     d->nslots, d->slot_size);
        return -1;
    }
    if (ftruncate(g->memfd, (off_t)g->L.size) < 0 ||
        fcntl(g->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    BioMemory *pmem = g->pmem; /* a pool's mapping, made before */
    PyObject *pview = g->pview;
    g->pmem = NULL;
    g->pview = NULL;
    if (bio_port_region_map(g, g->L.size) < 0) {
        Py_XDECREF(pmem);
        Py_XDECREF(pview);
        return -1;
    }
    if (pmem != NULL) {
        Py_SETREF(g->pmem, pmem);
        Py_SETREF(g->pview, pview);
        g->pbase = pmem->ptr;
    }
    uint32_t nbufs = d->frames ? d->frames : 2 * d->nslots;
    bio_port_region_bind(g, d->nslots, d->slot_size, d->kind, nbufs);
    BioPortHeader *h = g->hdr; /* the fresh memfd reads as zeros */
    h->version = BIO_PORT_LAYOUT_VERSION;
    h->header_size = sizeof(BioPortHeader);
    h->size = g->L.size;
    h->nslots = d->nslots;
    h->slot_size = d->slot_size;
    h->stride = g->L.stride;
    h->nbufs = nbufs;
    h->kind = d->kind;
    g->pool = h->pool = d->frames ? BIO_PORT_POOL_SHARED : BIO_PORT_POOL_INLINE;
    h->pool_size = d->frames ? (uint64_t)d->frames * d->stride : 0;
    g->pool_offset = h->pool_offset = d->frames ? d->offset : 0;
    for (uint32_t i = 0; i < 2 * d->nslots; i++)
        g->slots[i / d->nslots].idx[i % d->nslots] = d->frames ? BIO_PORT_NO_BUFFER : i;
    atomic_thread_fence(memory_order_release);
    h->magic = BIO_PORT_MAGIC; /* last: a half-made region is not a region */
    return 0;
}

/* ValueError unless fd is a memfd sealed against shrinking (a peer that
 * could truncate it would make our accesses fault) holding at least a
 * header. Its size in *size. 0 or -1. */
static int
bio_port_region_check_fd(int fd, uint64_t *size, const char *what)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        PyErr_Format(PyExc_ValueError, "fd %d is not a %s: %s", fd, what,
                     seals < 0 ? "not a memfd" : "not sealed against shrinking (F_SEAL_SHRINK), "
                                                 "so a peer could truncate it under us");
        return -1;
    }
    if (strcmp(what, "ring region") == 0 && (uint64_t)st.st_size < sizeof(BioPortHeader)) {
        PyErr_Format(PyExc_ValueError, "fd %d is not a ring region: %lld bytes is smaller "
                     "than the %zu-byte header", fd, (long long)st.st_size, sizeof(BioPortHeader));
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

/* Map the pool memfd g->pool_fd of `frames` x `stride` bytes, checked:
 * sealed against shrinking, exactly that size. 0, or -1 with an error. */
static int
bio_port_region_map_pool(BioPortRegion *g, uint32_t frames, uint32_t stride)
{
    uint64_t fsize, want = (uint64_t)frames * stride;
    if (bio_port_region_check_fd(g->pool_fd, &fsize, "frame pool") < 0)
        return -1;
    if (fsize != want) {
        PyErr_Format(PyExc_ValueError, "frame pool is %llu bytes but %u frames of %u bytes "
                     "need %llu", (unsigned long long)fsize, frames, stride,
                     (unsigned long long)want);
        return -1;
    }
    return bio_port_map(g->pool_fd, fsize, &g->pmem, &g->pview);
}

/* Check the shared-pool part of a header: a pool region needs its pool's
 * memfd, an inline one must not have one. 0, or -1 with ValueError. */
static int
bio_port_region_check_pool(BioPortRegion *g, uint32_t pool, uint64_t pool_size, uint32_t offset,
                           uint32_t nbufs, uint32_t stride)
{
    if (pool == BIO_PORT_POOL_INLINE && pool_size == 0 && offset == 0) {
        if (g->pool_fd < 0)
            return 0;
        PyErr_SetString(PyExc_ValueError, "this ring region's buffers are its own: no frame pool "
                        "goes with it");
        return -1;
    }
    if (pool != BIO_PORT_POOL_SHARED || nbufs == 0 || nbufs > BIO_PORT_FRAMES_MAX ||
        pool_size != (uint64_t)nbufs * stride) {
        PyErr_Format(PyExc_ValueError, "ring region header is corrupt: pool %u of %llu bytes, "
                     "%u buffers of %u bytes", pool, (unsigned long long)pool_size, nbufs, stride);
        return -1;
    }
    if (g->pool_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "this ring region's buffers are in a frame pool: pass "
                        "the pool's memfd too");
        return -1;
    }
    return bio_port_region_map_pool(g, nbufs, stride);
}

/* Check the mapped header of a region we attach to: magic, version,
 * dimensions and size against what they imply, and its pool. 0, or -1
 * with ValueError. */
static int
bio_port_region_check(BioPortRegion *g, uint64_t fsize)
{
    const volatile BioPortHeader *h = g->hdr;
    uint64_t magic = h->magic, size = h->size, pool_size = h->pool_size;
    uint32_t version = h->version, hsize = h->header_size, nslots = h->nslots;
    uint32_t slot_size = h->slot_size, stride = h->stride, nbufs = h->nbufs, kind = h->kind;
    uint32_t pool = h->pool, offset = h->pool_offset;
    if (magic != BIO_PORT_MAGIC) {
        char msg[100]; /* PyErr_Format has no zero padding */
        snprintf(msg, sizeof(msg), "not a burstio ring region (magic 0x%016llx, expected "
                 "0x%016llx)", (unsigned long long)magic, (unsigned long long)BIO_PORT_MAGIC);
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    if (version != BIO_PORT_LAYOUT_VERSION || hsize != sizeof(BioPortHeader)) {
        PyErr_Format(PyExc_ValueError, "ring region version %u (header %u bytes); this "
                     "burstio reads version %u (header %zu bytes)", version, hsize,
                     BIO_PORT_LAYOUT_VERSION, sizeof(BioPortHeader));
        return -1;
    }
    int shared = pool == BIO_PORT_POOL_SHARED;
    if (bio_port_layout(&g->L, nslots, slot_size, shared ? stride : 0, shared ? offset : 0) < 0 ||
        stride != g->L.stride || (!shared && nbufs != 2 * nslots) || kind > BIO_PORT_KIND_NIC) {
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
    if (bio_port_region_check_pool(g, pool, pool_size, offset, nbufs, stride) < 0)
        return -1;
    if (shared)
        g->pbase = g->pmem->ptr;
    g->pool = pool;
    g->pool_offset = shared ? offset : 0;
    bio_port_region_bind(g, nslots, slot_size, kind, nbufs);
    return 0;
}

/* Map and check an existing region (and its pool). 0, or -1 with an
 * exception set. */
static int
bio_port_region_attach(BioPortRegion *g)
{
    uint64_t fsize;
    if (bio_port_region_check_fd(g->memfd, &fsize, "ring region") < 0 ||
        bio_port_region_map(g, fsize) < 0)
        return -1;
    Py_CLEAR(g->pmem); /* the pool's, if it has one (bio_port_region_check) */
    Py_CLEAR(g->pview);
    if (bio_port_region_check(g, fsize) < 0)
        return -1;
    if (g->pmem == NULL) {
        g->pmem = (BioMemory *)Py_NewRef((PyObject *)g->mem);
        g->pview = Py_NewRef(g->view);
        g->pbase = g->base;
        g->bufs = g->pbase + g->L.bufs;
    }
    return 0;
}

/* Close the region's descriptors (at dealloc: nothing uses them then). */
static void
bio_port_region_close_fds(BioPortRegion *g)
{
    int *fds[] = {&g->memfd, &g->pool_fd, &g->wake[0][0], &g->wake[0][1], &g->wake[1][0],
                  &g->wake[1][1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

/* ValueError unless fd is a Unix datagram socket (a wake socket: a peer
 * holding an eventfd or a pipe end we also use could make our calls block
 * or steal our wake-ups). 0 or -1. */
static int
bio_port_region_check_wake(int i, int fd)
{
    int domain = -1, type = -1;
    socklen_t len = sizeof(int);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX &&
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_DGRAM)
        return 0;
    char path[64], target[128];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof(target) - 1);
    target[n > 0 ? n : 0] = 0;
    PyErr_Format(PyExc_ValueError, "wake descriptor %d of a ring port is not a Unix datagram "
                 "socket: %s", i, n > 0 ? target : strerror(errno));
    return -1;
}

/* Parse the 4 wake sockets: (party 0 data, party 0 room, party 1 data,
 * party 1 room), -1 for a party whose ends are not in this process (each
 * party has both or neither; one at least). 0, or -1 with TypeError or
 * ValueError (and none of them taken). */
static int
bio_port_region_parse_wakes(BioPortRegion *g, PyObject *wakes)
{
    static const char usage[] = "wakes must be a sequence of 4 file descriptors (-1 for both "
                                "of a party whose ends are not here)";
    PyObject *seq = PySequence_Fast(wakes, usage);
    if (seq == NULL)
        return -1;
    int fd[4], ok = PySequence_Fast_GET_SIZE(seq) == 4;
    for (int i = 0; ok && i < 4; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        ok = !(v == -1 && PyErr_Occurred()) && v >= -1 && v <= INT32_MAX;
        fd[i] = ok ? (int)v : -1;
    }
    Py_DECREF(seq);
    ok = ok && (fd[0] < 0) == (fd[1] < 0) && (fd[2] < 0) == (fd[3] < 0) &&
         (fd[0] >= 0 || fd[2] >= 0);
    if (!ok) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (int i = 0; i < 4; i++)
        if (fd[i] >= 0 && bio_port_region_check_wake(i, fd[i]) < 0)
            return -1;
    for (int i = 0; i < 4; i++)
        g->wake[i / 2][i % 2] = fd[i];
    return 0;
}

/* Parse the pool arguments of PortRegion(): the pool's memfd, and for a new
 * region its frames, frame size and buffer offset. 0 or -1. */
static int
bio_port_region_pool_args(PyObject *fd_o, PyObject *const objs[3], BioPortDims *d, int *pool_fd)
{
    long long v[3] = {0, 0, 0}, fd = -1;
    static const char *const names[3] = {"pool_frames", "pool_stride", "pool_offset"};
    static const long long hi[3] = {BIO_PORT_FRAMES_MAX, 65536, 65535};
    if (fd_o != NULL && bio_args_int("pool_fd", fd_o, -1, INT32_MAX, &fd) < 0)
        return -1;
    for (int i = 0; i < 3; i++)
        if (objs[i] != NULL && bio_args_int(names[i], objs[i], 0, hi[i], &v[i]) < 0)
            return -1;
    if ((fd >= 0) != (v[0] > 0) && d->nslots) {
        PyErr_SetString(PyExc_ValueError, "a region on a frame pool needs pool_fd and "
                        "pool_frames both");
        return -1;
    }
    d->frames = (uint32_t)v[0];
    d->stride = (uint32_t)v[1];
    d->offset = (uint32_t)v[2];
    *pool_fd = (int)fd;
    return 0;
}

/* PortRegion(memfd, wakes, slots=0, slot_size=0, kind=0, pool_fd=-1,
 * pool_frames=0, pool_stride=0, pool_offset=0): create (slots > 0) or
 * attach. The region owns the descriptors only if this succeeds. */
static PyObject *
bio_port_region_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"memfd", "wakes", "slots", "slot_size", "kind", "pool_fd",
                             "pool_frames", "pool_stride", "pool_offset", NULL};
    int memfd, pool_fd = -1;
    BioPortDims d = {0};
    PyObject *wakes, *pool_fd_o = NULL, *pool[3] = {NULL, NULL, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|IIIOOOO:PortRegion", kwlist, &memfd, &wakes,
                                     &d.nslots, &d.slot_size, &d.kind, &pool_fd_o, &pool[0],
                                     &pool[1], &pool[2]) ||
        bio_port_region_pool_args(pool_fd_o, pool, &d, &pool_fd) < 0)
        return NULL;
    if (d.kind > BIO_PORT_KIND_NIC) {
        PyErr_Format(PyExc_ValueError, "kind must be between 0 and %d, got %u", BIO_PORT_KIND_NIC,
                     d.kind);
        return NULL;
    }
    BioPortRegion *g = (BioPortRegion *)type->tp_alloc(type, 0);
    if (g == NULL)
        return NULL;
    g->memfd = g->pool_fd = -1;
    g->wake[0][0] = g->wake[0][1] = g->wake[1][0] = g->wake[1][1] = -1;
    if (bio_port_region_parse_wakes(g, wakes) < 0)
        goto fail;
    if (d.nslots && (g->wake[0][0] < 0 || g->wake[1][0] < 0)) {
        PyErr_SetString(PyExc_ValueError, "a new region needs the wake sockets of both ports");
        goto fail;
    }
    g->memfd = memfd;
    g->pool_fd = pool_fd;
    int r;
    if (d.nslots)
        r = (d.frames && bio_port_region_map_pool(g, d.frames, d.stride) < 0)
                ? -1 : bio_port_region_create(g, &d);
    else
        r = bio_port_region_attach(g);
    if (r < 0)
        goto fail;
    return (PyObject *)g; /* owns memfd, the pool's and the wake sockets from here on */
fail:
    g->memfd = g->pool_fd = -1; /* the caller still owns the fds */
    g->wake[0][0] = g->wake[0][1] = g->wake[1][0] = g->wake[1][1] = -1;
    Py_DECREF(g);
    return NULL;
}

static void
bio_port_region_dealloc(BioPortRegion *g)
{
    bio_port_frames_release(g);
    bio_port_region_close_fds(g);
    Py_XDECREF(g->view);
    Py_XDECREF(g->mem);
    Py_XDECREF(g->pview);
    Py_XDECREF(g->pmem);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

/* fds(party) -> (memfd, (data, room), pool_fd): what a process needs to
 * use port `party` (its wake sockets' ends, the pool's memfd); -1s if they
 * are not here. */
static PyObject *
bio_port_region_fds(BioPortRegion *g, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i != 0 && i != 1) {
        PyErr_Format(PyExc_ValueError, "party must be 0 or 1, got %ld", i);
        return NULL;
    }
    return Py_BuildValue("(i(ii)i)", g->memfd, g->wake[i][BIO_PORT_WAKE_DATA],
                         g->wake[i][BIO_PORT_WAKE_ROOM], g->pool_fd);
}

/* layout() -> dict of byte offsets: where each array of each ring lives. */
static PyObject *
bio_port_region_layout(BioPortRegion *g, PyObject *Py_UNUSED(ignored))
{
    const BioPortLayout *L = &g->L;
    return Py_BuildValue(
        "{s:(KK)s:(KK)s:(KK)s:(KK)s:(KK)s:(KK)s:(KK)s:K,s:K,s:I,s:I,s:I,s:I,s:I,s:I,s:K}",
        "ctl", L->ctl[0], L->ctl[1], "idx", L->idx[0], L->idx[1], "len", L->len[0], L->len[1],
        "flags", L->flags[0], L->flags[1], "dst", L->dst[0], L->dst[1], "src", L->src[0],
        L->src[1], "names", L->names[0], L->names[1], "bufs", L->bufs, "size", L->size,
        "stride", L->stride, "slots", g->nslots, "slot_size", g->slot_size, "buffers", g->nbufs,
        "kind", g->kind, "pool", g->pool, "pool_size",
        (unsigned long long)(g->pool ? (uint64_t)g->nbufs * g->stride : 0));
}

/* party(i) -> (state, pid, generation): who holds port i, as recorded. */
static PyObject *
bio_port_region_party(BioPortRegion *g, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i != 0 && i != 1) {
        PyErr_Format(PyExc_ValueError, "party must be 0 or 1, got %ld", i);
        return NULL;
    }
    BioPortParty *p = &g->hdr->party[i];
    return Py_BuildValue("(iiI)", (int)atomic_load(&p->state), (int)atomic_load(&p->pid),
                         (unsigned)atomic_load(&p->generation));
}

static PyObject *
bio_port_region_get_memory(BioPortRegion *g, void *c)
{
    return PyMemoryView_FromObject((PyObject *)(c == NULL ? g->mem : g->pmem));
}

static PyMethodDef bio_port_region_methods[] = {
    {"fds", (PyCFunction)bio_port_region_fds, METH_O,
     "fds($self, party, /)\n--\n\n"
     "(memfd, (data, room), pool_fd): the descriptors a process needs to use port\n"
     "`party` (-1 for wake sockets not held here, and for the pool of a region\n"
     "whose buffers are its own). Owned by the region (closed when the last port\n"
     "and ring using it are gone); dup them to pass them on."},
    {"layout", (PyCFunction)bio_port_region_layout, METH_NOARGS,
     "layout($self, /)\n--\n\nA dict of the region's offsets and dimensions."},
    {"party", (PyCFunction)bio_port_region_party, METH_O,
     "party($self, i, /)\n--\n\n"
     "(state, pid, generation) of port i (state 0 free, 1 open, 2 closed)."},
    {"use_frames", (PyCFunction)bio_port_region_use_frames, METH_VARARGS,
     bio_port_region_use_frames_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_port_region_members[] = {
    {"slots", T_UINT, offsetof(BioPortRegion, nslots), READONLY, "slots per ring"},
    {"slot_size", T_UINT, offsetof(BioPortRegion, slot_size), READONLY, "bytes per buffer"},
    {"stride", T_UINT, offsetof(BioPortRegion, stride), READONLY,
     "distance between buffers (slot_size rounded up to 64)"},
    {"buffers", T_UINT, offsetof(BioPortRegion, nbufs), READONLY, "buffers in the pool"},
    {"kind", T_UINT, offsetof(BioPortRegion, kind), READONLY,
     "0: pipe, 1: switch port, 2: a NIC queue's port"},
    {"pool", T_UINT, offsetof(BioPortRegion, pool), READONLY,
     "0: the buffers are the region's own; 1: they are frames of a shared pool"},
    {"frames", T_OBJECT, offsetof(BioPortRegion, frames), READONLY,
     "the Umem whose frame table this region's frames are in, or None"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef bio_port_region_getset[] = {
    {"memory", (getter)bio_port_region_get_memory, NULL,
     "writable memoryview over the whole region", NULL},
    {"buffers_memory", (getter)bio_port_region_get_memory, NULL,
     "writable memoryview over the memory the buffers are in: the region, or its pool",
     (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject BioPortRegion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortRegion",
    .tp_basicsize = sizeof(BioPortRegion),
    .tp_dealloc = (destructor)bio_port_region_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PortRegion(memfd, wakes, slots=0, slot_size=0, kind=0, pool_fd=-1, "
              "pool_frames=0, pool_stride=0, pool_offset=0)\n--\n\n"
              "The shared memory of two ports (internal). slots=0 attaches to an existing "
              "region; pool_fd names the frame pool its buffers are in.",
    .tp_methods = bio_port_region_methods,
    .tp_members = bio_port_region_members,
    .tp_getset = bio_port_region_getset,
    .tp_new = bio_port_region_new,
};

/* ---- the ports types ----------------------------------------------------- */

int
bio_ports_init_types(PyObject *module)
{
    static int atfork_done;
    if (!atfork_done && pthread_atfork(NULL, NULL, bio_port_atfork_child) != 0)
        return -1;
    atfork_done = 1;
    PyTypeObject *types[] = {&BioPortRegion_Type, &BioPortClaim_Type, &BioPortTx_Type,
                             &BioPortRx_Type, &BioSwitch_Type, &BioNic_Type};
    const char *names[] = {"PortRegion", "PortClaim", "PortTx", "PortRx", "SwitchCore", "NicCore"};
    for (int i = 0; i < 6; i++)
        if (PyType_Ready(types[i]) < 0 ||
            PyModule_AddObjectRef(module, names[i], (PyObject *)types[i]) < 0)
            return -1;
    if (PyModule_AddIntConstant(module, "PORT_BROADCAST", (long)BIO_PORT_BROADCAST) < 0 ||
        PyModule_AddIntConstant(module, "PORT_LAYOUT_VERSION", BIO_PORT_LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "PORT_SLOTS_MAX", BIO_PORT_SLOTS_MAX) < 0 ||
        PyModule_AddIntConstant(module, "PORT_SLOT_SIZE_MAX", BIO_PORT_SLOT_SIZE_MAX) < 0 ||
        PyModule_AddIntConstant(module, "PORT_FRAMES_MAX", BIO_PORT_FRAMES_MAX) < 0 ||
        PyModule_AddIntConstant(module, "XDP_HEADROOM", BIO_XDP_HEADROOM) < 0)
        return -1;
    return 0;
}
