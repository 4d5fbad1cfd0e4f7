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

/* Map `size` bytes of g->memfd shared and wrap the mapping in a Memory
 * object (it unmaps when its last user goes). 0, or -1 with OSError. */
static int
bio_port_region_map(BioPortRegion *g, uint64_t size)
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
bio_port_region_bind(BioPortRegion *g, uint32_t nslots, uint32_t slot_size, uint32_t kind)
{
    g->nslots = nslots;
    g->cap = g->mask = nslots - 1;
    g->slot_size = slot_size;
    g->stride = g->L.stride;
    g->nbufs = 2 * nslots;
    g->kind = kind;
    g->bufs = g->base + g->L.bufs;
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

/* Size, seal and map a fresh memfd, write the header and give ring r's
 * slot i buffer r * nslots + i. 0, or -1 with an exception set. */
static int
bio_port_region_create(BioPortRegion *g, uint32_t nslots, uint32_t slot_size, uint32_t kind)
{
    int r = bio_port_layout(&g->L, nslots, slot_size);
    if (r == -EFBIG) {
        PyErr_Format(PyExc_ValueError, "a region of %u slots of %u bytes needs %llu bytes; "
                     "the limit is %llu", nslots, slot_size, (unsigned long long)g->L.size,
                     (unsigned long long)BIO_PORT_SIZE_MAX);
        return -1;
    }
    if (r < 0) {
        PyErr_Format(PyExc_ValueError, "slots must be a power of two between %u and %u and "
                     "slot_size between 1 and %u, got %u and %u", BIO_PORT_SLOTS_MIN,
                     BIO_PORT_SLOTS_MAX, BIO_PORT_SLOT_SIZE_MAX, nslots, slot_size);
        return -1;
    }
    if (ftruncate(g->memfd, (off_t)g->L.size) < 0 ||
        fcntl(g->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    if (bio_port_region_map(g, g->L.size) < 0)
        return -1;
    bio_port_region_bind(g, nslots, slot_size, kind);
    BioPortHeader *h = g->hdr; /* the fresh memfd reads as zeros */
    h->version = BIO_PORT_LAYOUT_VERSION;
    h->header_size = sizeof(BioPortHeader);
    h->size = g->L.size;
    h->nslots = nslots;
    h->slot_size = slot_size;
    h->stride = g->L.stride;
    h->nbufs = 2 * nslots;
    h->kind = kind;
    for (uint32_t i = 0; i < 2 * nslots; i++)
        g->slots[i / nslots].idx[i % nslots] = i;
    atomic_thread_fence(memory_order_release);
    h->magic = BIO_PORT_MAGIC; /* last: a half-made region is not a region */
    return 0;
}

/* ValueError unless fd is a memfd sealed against shrinking (a peer that
 * could truncate it would make our accesses fault) holding at least a
 * header. Its size in *size. 0 or -1. */
static int
bio_port_region_check_fd(int fd, uint64_t *size)
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
    if ((uint64_t)st.st_size < sizeof(BioPortHeader)) {
        PyErr_Format(PyExc_ValueError, "fd %d is not a ring region: %lld bytes is smaller "
                     "than the %zu-byte header", fd, (long long)st.st_size, sizeof(BioPortHeader));
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

/* Check the mapped header of a region we attach to: magic, version,
 * dimensions and size against what they imply. 0, or -1 with ValueError. */
static int
bio_port_region_check(BioPortRegion *g, uint64_t fsize)
{
    const volatile BioPortHeader *h = g->hdr;
    uint64_t magic = h->magic, size = h->size;
    uint32_t version = h->version, hsize = h->header_size, nslots = h->nslots;
    uint32_t slot_size = h->slot_size, stride = h->stride, nbufs = h->nbufs, kind = h->kind;
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
    if (bio_port_layout(&g->L, nslots, slot_size) < 0 || stride != g->L.stride ||
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
    bio_port_region_bind(g, nslots, slot_size, kind);
    return 0;
}

/* Map and check an existing region. 0, or -1 with an exception set. */
static int
bio_port_region_attach(BioPortRegion *g)
{
    uint64_t fsize;
    if (bio_port_region_check_fd(g->memfd, &fsize) < 0 || bio_port_region_map(g, fsize) < 0)
        return -1;
    return bio_port_region_check(g, fsize);
}

/* Close the region's descriptors (at dealloc: nothing uses them then). */
static void
bio_port_region_close_fds(BioPortRegion *g)
{
    int *fds[] = {&g->memfd, &g->wake[0][0], &g->wake[0][1], &g->wake[1][0], &g->wake[1][1]};
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

/* PortRegion(memfd, wakes, slots=0, ...): create (slots > 0) or attach. The
 * region owns the descriptors only if this succeeds. */
static PyObject *
bio_port_region_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"memfd", "wakes", "slots", "slot_size", "kind", NULL};
    int memfd;
    unsigned int nslots = 0, slot_size = 0, kind = 0;
    PyObject *wakes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|III:PortRegion", kwlist, &memfd, &wakes,
                                     &nslots, &slot_size, &kind))
        return NULL;
    BioPortRegion *g = (BioPortRegion *)type->tp_alloc(type, 0);
    if (g == NULL)
        return NULL;
    g->memfd = -1;
    g->wake[0][0] = g->wake[0][1] = g->wake[1][0] = g->wake[1][1] = -1;
    if (bio_port_region_parse_wakes(g, wakes) < 0)
        goto fail;
    if (nslots && (g->wake[0][0] < 0 || g->wake[1][0] < 0)) {
        PyErr_SetString(PyExc_ValueError, "a new region needs the wake sockets of both ports");
        goto fail;
    }
    g->memfd = memfd;
    int r = nslots ? bio_port_region_create(g, nslots, slot_size, kind)
                   : bio_port_region_attach(g);
    if (r < 0)
        goto fail;
    return (PyObject *)g; /* owns memfd and the wake sockets from here on */
fail:
    g->memfd = -1; /* the caller still owns the fds */
    g->wake[0][0] = g->wake[0][1] = g->wake[1][0] = g->wake[1][1] = -1;
    Py_DECREF(g);
    return NULL;
}

static void
bio_port_region_dealloc(BioPortRegion *g)
{
    bio_port_region_close_fds(g);
    Py_XDECREF(g->view);
    Py_XDECREF(g->mem);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

/* fds(party) -> (memfd, (data, room)): what a process needs to use port
 * `party` (its wake sockets' ends); -1s if they are not here. */
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
    return Py_BuildValue("(i(ii))", g->memfd, g->wake[i][BIO_PORT_WAKE_DATA],
                         g->wake[i][BIO_PORT_WAKE_ROOM]);
}

/* layout() -> dict of byte offsets: where each array of each ring lives. */
static PyObject *
bio_port_region_layout(BioPortRegion *g, PyObject *Py_UNUSED(ignored))
{
    const BioPortLayout *L = &g->L;
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
    return PyMemoryView_FromObject((PyObject *)g->mem);
}

static PyMethodDef bio_port_region_methods[] = {
    {"fds", (PyCFunction)bio_port_region_fds, METH_O,
     "fds($self, party, /)\n--\n\n"
     "(memfd, (data, room)): the descriptors a process needs to use port `party`\n"
     "(-1 for wake sockets not held here). Owned by the region (closed when the\n"
     "last port and ring using it are gone); dup them to pass them on."},
    {"layout", (PyCFunction)bio_port_region_layout, METH_NOARGS,
     "layout($self, /)\n--\n\nA dict of the region's offsets and dimensions."},
    {"party", (PyCFunction)bio_port_region_party, METH_O,
     "party($self, i, /)\n--\n\n"
     "(state, pid, generation) of port i (state 0 free, 1 open, 2 closed)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_port_region_members[] = {
    {"slots", T_UINT, offsetof(BioPortRegion, nslots), READONLY, "slots per ring"},
    {"slot_size", T_UINT, offsetof(BioPortRegion, slot_size), READONLY, "bytes per buffer"},
    {"stride", T_UINT, offsetof(BioPortRegion, stride), READONLY,
     "distance between buffers (slot_size rounded up to 64)"},
    {"buffers", T_UINT, offsetof(BioPortRegion, nbufs), READONLY, "buffers in the pool"},
    {"kind", T_UINT, offsetof(BioPortRegion, kind), READONLY, "0: pipe, 1: switch port"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef bio_port_region_getset[] = {
    {"memory", (getter)bio_port_region_get_memory, NULL,
     "writable memoryview over the whole region", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject BioPortRegion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortRegion",
    .tp_basicsize = sizeof(BioPortRegion),
    .tp_dealloc = (destructor)bio_port_region_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PortRegion(memfd, wakes, slots=0, slot_size=0, kind=0)\n--\n\n"
              "The shared memory of two ports (internal). slots=0 attaches to an existing "
              "region.",
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
                             &BioPortRx_Type, &BioSwitch_Type};
    const char *names[] = {"PortRegion", "PortClaim", "PortTx", "PortRx", "SwitchCore"};
    for (int i = 0; i < 5; i++)
        if (PyType_Ready(types[i]) < 0 ||
            PyModule_AddObjectRef(module, names[i], (PyObject *)types[i]) < 0)
            return -1;
    if (PyModule_AddIntConstant(module, "PORT_BROADCAST", (long)BIO_PORT_BROADCAST) < 0 ||
        PyModule_AddIntConstant(module, "PORT_LAYOUT_VERSION", BIO_PORT_LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "PORT_SLOTS_MAX", BIO_PORT_SLOTS_MAX) < 0 ||
        PyModule_AddIntConstant(module, "PORT_SLOT_SIZE_MAX", BIO_PORT_SLOT_SIZE_MAX) < 0)
        return -1;
    return 0;
}
