/* Umem: the frames AF_XDP sockets receive into and send from, and who
 * holds each of them; XskLease: the frames lent to one batch.
 *
 * One mmap'd region of `frames` x `frame_size` bytes, registered with the
 * kernel (XDP_UMEM_REG) on an AF_XDP socket that the first XskSocket binds;
 * further sockets share it (XDP_SHARED_UMEM). Every frame has a state (in a
 * fill ring, lent to a batch, on a tx ring; none: on the free list), kept
 * here, private, and changed only with the GIL held: the free list is the
 * page pool the fill rings are refilled from in bulk.
 *
 * Where a frame goes through it: free list -> a fill ring (the kernel
 * receives into it) -> a lease (a batch's entries point into it) -> back to
 * the free list when the lease dies: when the batch was refilled, cleared or
 * dropped and no memoryview of it remains (each holds the lease). Frames
 * sent go free list -> tx ring -> completion ring -> free list; a lent frame
 * sent as it is (zero copy) is freed when both the lease and the
 * completion have let it go.
 */
#include "xdp/xdp.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const bio_umem_counter_names[BIO_UMEM_NCOUNTERS] = {
    "fill_starved", "frames_lent", "frames_returned",
};

/* This process's pid, kept by a pthread_atfork child hook: a check per
 * call without a getpid() system call. */
pid_t bio_xdp_pid;

static void
bio_xdp_atfork_child(void)
{
    bio_xdp_pid = getpid();
}

int
bio_umem_check_pid(BioUmem *u)
{
    if (u->pid == bio_xdp_pid)
        return 0;
    PyErr_Format(PyExc_RuntimeError,
                 "this Umem belongs to process %d; a forked child cannot use its AF_XDP "
                 "sockets or frames (make new ones in the child)", (int)u->pid);
    return -1;
}

/* ---- the type ------------------------------------------------------------- */

/* ValueError unless memfd is a memfd sealed against shrinking of exactly
 * u->size bytes (other processes map it: none may truncate it under the
 * kernel). Records which file it is. 0 or -1. */
static int
bio_umem_check_memfd(BioUmem *u, int memfd)
{
    struct stat st;
    if (fstat(memfd, &st) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    int seals = fcntl(memfd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK) || (uint64_t)st.st_size != u->size) {
        PyErr_Format(PyExc_ValueError, "memfd %d must be a memfd of %zu bytes sealed against "
                     "shrinking, got %s of %lld bytes", memfd, u->size,
                     seals < 0 ? "a file that is not a memfd" : "a memfd",
                     (long long)st.st_size);
        return -1;
    }
    u->file_dev = (uint64_t)st.st_dev;
    u->file_ino = (uint64_t)st.st_ino;
    return 0;
}

/* mmap the frames (anonymous, or memfd shared) and the bookkeeping arrays.
 * 0, or -1 with an error. */
static int
bio_umem_alloc(BioUmem *u, int memfd)
{
    if (memfd >= 0 && bio_umem_check_memfd(u, memfd) < 0)
        return -1;
    u->area = memfd >= 0 ? mmap(NULL, u->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                                memfd, 0)
                         : mmap(NULL, u->size, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (u->area == MAP_FAILED) {
        u->area = NULL;
        bio_raise_errno(-errno);
        return -1;
    }
    u->state = PyMem_RawCalloc(u->frames, sizeof(*u->state));
    u->lease_of = PyMem_RawCalloc(u->frames, sizeof(*u->lease_of));
    u->free = PyMem_RawCalloc(u->frames, sizeof(*u->free));
    if (u->state == NULL || u->lease_of == NULL || u->free == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t f = 0; f < u->frames; f++) /* the lowest frames are taken first */
        u->free[f] = u->frames - 1 - f;
    u->nfree = u->frames;
    return 0;
}

/* The AF_XDP socket and XDP_UMEM_REG. 0, or -1 with OSError (its errno
 * intact: Python words the privilege errors). */
static int
bio_umem_register(BioUmem *u)
{
    u->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (u->fd < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    struct bio_xdp_umem_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.addr = (uint64_t)(uintptr_t)u->area;
    reg.len = u->size;
    reg.chunk_size = u->frame_size;
    reg.headroom = u->headroom;
    if (setsockopt(u->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    return 0;
}

static PyObject *
bio_umem_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"frames", "frame_size", "headroom", "memfd", NULL};
    PyObject *frames_o, *size_o, *head_o, *memfd_o = NULL;
    long long frames, frame_size, headroom, memfd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|O:Umem", kwlist, &frames_o, &size_o, &head_o,
                                     &memfd_o))
        return NULL;
    if ((memfd_o != NULL && bio_args_int("memfd", memfd_o, -1, INT32_MAX, &memfd) < 0) ||
        bio_args_int("frames", frames_o, 1, 1 << 22, &frames) < 0 ||
        bio_args_int("frame_size", size_o, 2048, 65536, &frame_size) < 0 ||
        bio_args_int("headroom", head_o, 0, frame_size - 512, &headroom) < 0)
        return NULL;
    if (frame_size & (frame_size - 1)) {
        PyErr_Format(PyExc_ValueError, "frame_size must be a power of two, got %lld", frame_size);
        return NULL;
    }
    BioUmem *u = (BioUmem *)type->tp_alloc(type, 0);
    if (u == NULL)
        return NULL;
    u->fd = -1;
    u->frames = (uint32_t)frames;
    u->frame_size = (uint32_t)frame_size;
    u->frame_shift = (uint32_t)__builtin_ctz((unsigned)frame_size);
    u->headroom = (uint32_t)headroom;
    u->size = (size_t)frames * (size_t)frame_size;
    u->pid = bio_xdp_pid;
    if (bio_umem_alloc(u, (int)memfd) < 0 || bio_umem_register(u) < 0) {
        Py_DECREF(u);
        return NULL;
    }
    return (PyObject *)u;
}

static void
bio_umem_dealloc(BioUmem *u)
{
    if (u->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)u);
    if (u->fd >= 0 && !u->fd_taken)
        close(u->fd);
    if (u->area != NULL)
        munmap(u->area, u->size);
    PyMem_RawFree(u->state);
    PyMem_RawFree(u->lease_of);
    PyMem_RawFree(u->free);
    Py_TYPE(u)->tp_free((PyObject *)u);
}

static PyObject *
bio_umem_counters(BioUmem *u, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(u->counters, bio_umem_counter_names, BIO_UMEM_NCOUNTERS);
}

/* How many frames are in each state: {'free', 'fill', 'lent', 'tx'} (a frame
 * lent and on a tx ring counts in both). */
static PyObject *
bio_umem_frame_states(BioUmem *u, PyObject *Py_UNUSED(ignored))
{
    uint32_t fill = 0, lent = 0, tx = 0, port = 0;
    for (uint32_t f = 0; f < u->frames; f++) {
        fill += (u->state[f] & BIO_FRAME_FILL) != 0;
        lent += (u->state[f] & BIO_FRAME_LENT) != 0;
        tx += (u->state[f] & BIO_FRAME_TX) != 0;
        port += (u->state[f] & BIO_FRAME_PORT) != 0;
    }
    return Py_BuildValue("{sIsIsIsIsI}", "free", u->nfree, "fill", fill, "lent", lent, "tx", tx,
                         "port", port);
}

static PyMethodDef bio_umem_methods[] = {
    {"counters", (PyCFunction)bio_umem_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"frame_states", (PyCFunction)bio_umem_frame_states, METH_NOARGS,
     "frame_states($self, /)\n--\n\n"
     "How many frames are free, in fill rings, lent to batches, on tx rings, in port\n"
     "regions' slots."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
bio_umem_get_u32(BioUmem *u, void *c)
{
    return PyLong_FromUnsignedLong(*(uint32_t *)((char *)u + (size_t)c));
}

static PyObject *
bio_umem_get_size(BioUmem *u, void *c)
{
    return PyLong_FromSize_t(u->size);
}

static PyObject *
bio_umem_get_fd(BioUmem *u, void *c)
{
    return PyLong_FromLong(u->fd);
}

static PyGetSetDef bio_umem_getset[] = {
    {"frames", (getter)bio_umem_get_u32, NULL, "frames in the UMEM",
     (void *)offsetof(BioUmem, frames)},
    {"frame_size", (getter)bio_umem_get_u32, NULL, "bytes per frame",
     (void *)offsetof(BioUmem, frame_size)},
    {"headroom", (getter)bio_umem_get_u32, NULL, "bytes the kernel leaves before each frame",
     (void *)offsetof(BioUmem, headroom)},
    {"free_frames", (getter)bio_umem_get_u32, NULL, "frames on the free list",
     (void *)offsetof(BioUmem, nfree)},
    {"size", (getter)bio_umem_get_size, NULL, "bytes of frames", NULL},
    {"fd", (getter)bio_umem_get_fd, NULL, "the AF_XDP socket the UMEM is registered on", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject BioUmem_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.Umem",
    .tp_basicsize = sizeof(BioUmem),
    .tp_dealloc = (destructor)bio_umem_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Umem(frames, frame_size, headroom, memfd=-1)\n--\n\n"
              "frames x frame_size bytes registered as an AF_XDP UMEM (see burstio.xdp.Umem); "
              "with memfd, that memfd mapped shared.",
    .tp_weaklistoffset = offsetof(BioUmem, weakrefs),
    .tp_methods = bio_umem_methods,
    .tp_getset = bio_umem_getset,
    .tp_new = bio_umem_new,
};

/* ---- XskLease: the frames lent to one batch --------------------------------- */

BioXskLease *
bio_xsk_lease_new(BioUmem *u, Py_ssize_t n)
{
    BioXskLease *l = PyObject_NewVar(BioXskLease, &BioXskLease_Type, n > 0 ? n : 1);
    if (l == NULL)
        return NULL;
    l->umem = (BioUmem *)Py_NewRef((PyObject *)u);
    l->n = 0;
    return l;
}

/* The last holder (the batch, a memoryview of a frame) let go: the frames
 * go back to the free list, unless a tx ring still holds one. */
static void
bio_xsk_lease_dealloc(BioXskLease *l)
{
    BioUmem *u = l->umem;
    for (Py_ssize_t i = 0; i < l->n; i++)
        if (u->lease_of[l->frames[i]] == l)
            bio_umem_drop(u, l->frames[i], BIO_FRAME_LENT);
    BIO_COUNT(u->counters, BIO_UMEM_RETURNED, l->n);
    Py_DECREF(u);
    PyObject_Free(l);
}

/* The whole UMEM, writable: entries' offsets are UMEM offsets. Every
 * export holds the lease, so its frames stay lent while one is open. */
static int
bio_xsk_lease_getbuffer(BioXskLease *l, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)l, l->umem->area, (Py_ssize_t)l->umem->size, 0,
                             flags);
}

static PyBufferProcs bio_xsk_lease_as_buffer = {(getbufferproc)bio_xsk_lease_getbuffer, NULL};

static PyObject *
bio_xsk_lease_frames(BioXskLease *l, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New(l->n);
    for (Py_ssize_t i = 0; list != NULL && i < l->n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(l->frames[i]);
        if (v == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static PyMethodDef bio_xsk_lease_methods[] = {
    {"frames", (PyCFunction)bio_xsk_lease_frames, METH_NOARGS,
     "frames($self, /)\n--\n\nThe indices of the frames this lease holds."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject BioXskLease_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.XskLease",
    .tp_basicsize = offsetof(BioXskLease, frames),
    .tp_itemsize = sizeof(uint32_t),
    .tp_dealloc = (destructor)bio_xsk_lease_dealloc,
    .tp_as_buffer = &bio_xsk_lease_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Frames of a Umem lent to one PacketBatch (internal): they go back to the\n"
              "free list when the batch and every memoryview of them let go.",
    .tp_methods = bio_xsk_lease_methods,
};

int
bio_umem_init_type(PyObject *module)
{
    bio_xdp_pid = getpid();
    if (pthread_atfork(NULL, NULL, bio_xdp_atfork_child) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        return -1;
    }
    if (PyType_Ready(&BioXskLease_Type) < 0 || PyType_Ready(&BioUmem_Type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "XskLease", (PyObject *)&BioXskLease_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Umem", (PyObject *)&BioUmem_Type);
}
