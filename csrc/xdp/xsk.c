/* XskSocket: one AF_XDP socket on one device queue: its rings, bind,
 * waiting, options, statistics, counters, close; the Python type. Receiving
 * is xdp/rx.c, sending xdp/tx.c; the frames are the Umem's (xdp/umem.c).
 *
 * The first socket of a Umem binds the Umem's own registration socket; the
 * others make their own and bind with XDP_SHARED_UMEM, each with its own
 * fill and completion rings (one socket per device queue). Policy (modes,
 * fallbacks, sizes, the XSKMAP entry) is Python's (src/burstio/xdp/_xsk.py).
 *
 * Where a frame goes through it: nowhere itself; recv_batch and send_batch
 * are rx.c's and tx.c's. close() while another thread waits wakes it
 * (eventfd) and the socket is closed when that call returns.
 */
#include "xdp/xdp.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *const bio_xsk_counter_names[BIO_XSK_NCOUNTERS] = {
    "rx_frames",  "rx_bytes",     "rx_batches",      "rx_waits",     "rx_bad_descs",
    "fill_frames", "fill_starved", "tx_frames",      "tx_bytes",     "tx_batches",
    "tx_copied",  "tx_zerocopy",  "tx_kicks",        "tx_dropped",   "tx_ring_full", "tx_no_frame",
    "completions", "bad_completions",
};

/* ---- calls, waiting, closing --------------------------------------------- */

static void bio_xsk_close_now(BioXsk *x);

int
bio_xsk_enter(BioXsk *x, const char *what)
{
    if (x->fd < 0 || x->closing) {
        PyObject *v = Py_BuildValue("(is)", EBADF, "the XskSocket is closed");
        if (v != NULL)
            PyErr_SetObject(PyExc_OSError, v);
        Py_XDECREF(v);
        return -1;
    }
    if (bio_umem_check_pid(x->umem) < 0)
        return -1;
    if (x->busy) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s: the XskSocket is in use by another call (one thread at a time)", what);
        return -1;
    }
    x->busy = 1;
    return 0;
}

void
bio_xsk_leave(BioXsk *x)
{
    x->busy = 0;
    if (x->closing)
        bio_xsk_close_now(x);
}

int
bio_xsk_poll_nogil(BioXsk *x, short events, int64_t deadline_ns)
{
    struct pollfd p[2] = {{.fd = x->fd, .events = events}, {.fd = x->wake_fd, .events = POLLIN}};
    int ms = bio_deadline_ms(deadline_ns);
    if (ms == 0)
        return 0;
    int r = poll(p, 2, ms);
    if (r < 0)
        return -errno;
    if (p[1].revents || (p[0].revents & POLLNVAL))
        return -EBADF;
    if (p[0].revents & POLLERR)
        return -ENETDOWN; /* the device went away (sk_err) */
    return r > 0;
}

static void
bio_xsk_close_now(BioXsk *x)
{
    bio_ring_unmap(&x->fill);
    bio_ring_unmap(&x->comp);
    bio_ring_unmap(&x->rx);
    bio_ring_unmap(&x->tx);
    if (x->fd >= 0) {
        close(x->fd);
        if (x->umem_fd)
            x->umem->fd = -1;
        x->umem->sockets--;
    }
    x->fd = -1;
    if (x->wake_fd >= 0)
        close(x->wake_fd);
    x->wake_fd = -1;
    x->closing = 0;
}

/* ---- set-up: socket, ring sizes, mmap --------------------------------------- */

static int
bio_xsk_setopt(int fd, int opt, uint32_t value)
{
    return setsockopt(fd, SOL_XDP, opt, &value, sizeof(value)) < 0 ? -errno : 0;
}

/* Ring sizes on fd, then map them (a size of 0: no such ring). 0 or -errno. */
static int
bio_xsk_rings(BioXsk *x, const uint32_t sizes[4])
{
    static const int opts[4] = {XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING,
                                XDP_TX_RING};
    int e;
    for (int i = 0; i < 4; i++)
        if (sizes[i] && (e = bio_xsk_setopt(x->fd, opts[i], sizes[i])) < 0)
            return e;
    struct xdp_mmap_offsets off;
    socklen_t len = sizeof(off);
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &len) < 0)
        return -errno;
    if ((sizes[0] && (e = bio_ring_map(&x->fill, x->fd, XDP_UMEM_PGOFF_FILL_RING, &off.fr,
                                       sizes[0], sizeof(uint64_t))) < 0) ||
        (sizes[1] && (e = bio_ring_map(&x->comp, x->fd, XDP_UMEM_PGOFF_COMPLETION_RING,
                                       &off.cr, sizes[1], sizeof(uint64_t))) < 0) ||
        (sizes[2] && (e = bio_ring_map(&x->rx, x->fd, XDP_PGOFF_RX_RING, &off.rx, sizes[2],
                                       sizeof(struct xdp_desc))) < 0) ||
        (sizes[3] && (e = bio_ring_map(&x->tx, x->fd, XDP_PGOFF_TX_RING, &off.tx, sizes[3],
                                       sizeof(struct xdp_desc))) < 0))
        return e;
    return 0;
}

/* The ring sizes from Python: each 0 or a power of two up to 1 << 20. */
static int
bio_xsk_sizes(PyObject *const *objs, uint32_t sizes[4])
{
    static const char *const names[4] = {"fill_size", "comp_size", "rx_size", "tx_size"};
    for (int i = 0; i < 4; i++) {
        long long v;
        if (bio_args_int(names[i], objs[i], 0, 1 << 20, &v) < 0)
            return -1;
        if (v & (v - 1)) {
            PyErr_Format(PyExc_ValueError, "%s must be a power of two, got %lld", names[i], v);
            return -1;
        }
        sizes[i] = (uint32_t)v;
    }
    if (!sizes[0] || !sizes[1] || (!sizes[2] && !sizes[3])) {
        PyErr_SetString(PyExc_ValueError,
                        "an XskSocket needs a fill ring, a completion ring and an rx or tx ring");
        return -1;
    }
    return 0;
}

static PyObject *
bio_xsk_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"umem", "ifindex", "queue", "fill_size", "comp_size", "rx_size",
                             "tx_size", NULL};
    PyObject *umem, *o[4];
    unsigned int ifindex, queue;
    uint32_t sizes[4];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!IIOOOO:XskSocket", kwlist, &BioUmem_Type,
                                     &umem, &ifindex, &queue, &o[0], &o[1], &o[2], &o[3]) ||
        bio_xsk_sizes(o, sizes) < 0 || bio_umem_check_pid((BioUmem *)umem) < 0)
        return NULL;
    BioUmem *u = (BioUmem *)umem;
    if (u->switched) {
        PyErr_SetString(PyExc_RuntimeError, "the Umem's frames belong to a switch (its NIC port "
                        "was attached with add_nic): no other socket may share it");
        return NULL;
    }
    if (u->fd_taken && u->fd < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "the Umem's first XskSocket is closed: a new socket cannot share it "
                        "(make a new Umem)");
        return NULL;
    }
    BioXsk *x = (BioXsk *)type->tp_alloc(type, 0);
    if (x == NULL)
        return NULL;
    x->umem = (BioUmem *)Py_NewRef(umem);
    x->ifindex = ifindex;
    x->queue = queue;
    x->pid = ((BioUmem *)umem)->pid;
    x->fill_batch = 16;
    x->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    x->umem_fd = !u->fd_taken;
    x->fd = x->umem_fd ? u->fd : socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->wake_fd < 0 || x->fd < 0) {
        x->fd = -1;
        Py_DECREF(x);
        return bio_raise_errno(-errno);
    }
    u->fd_taken = 1;
    u->sockets++;
    int e = bio_xsk_rings(x, sizes);
    x->scratch_size = sizes[2] ? sizes[2] : 1;
    x->scratch = PyMem_RawCalloc(x->scratch_size, sizeof(*x->scratch));
    if (e < 0 || x->scratch == NULL) {
        Py_DECREF(x);
        return e < 0 ? bio_raise_errno(e) : PyErr_NoMemory();
    }
    return (PyObject *)x;
}

PyDoc_STRVAR(bio_xsk_bind_doc,
"bind($self, flags, /)\n--\n\n"
"bind() to the device queue with these XDP_* flags (XDP_SHARED_UMEM is\n"
"added for a socket that shares its Umem; flags must then be 0). On\n"
"failure the socket stays unbound and bind may be tried again with other\n"
"flags. Returns True when the kernel bound it zero copy. Fills the fill ring.");

static PyObject *
bio_xsk_bind(BioXsk *x, PyObject *arg)
{
    long long flags;
    if (bio_args_int("flags", arg, 0, 0xffff, &flags) < 0 || bio_xsk_enter(x, "bind") < 0)
        return NULL;
    struct sockaddr_xdp sa;
    memset(&sa, 0, sizeof(sa));
    sa.sxdp_family = AF_XDP;
    sa.sxdp_ifindex = x->ifindex;
    sa.sxdp_queue_id = x->queue;
    sa.sxdp_flags = (uint16_t)flags;
    if (!x->umem_fd) {
        sa.sxdp_flags |= XDP_SHARED_UMEM;
        sa.sxdp_shared_umem_fd = (uint32_t)x->umem->fd;
    }
    int r = bind(x->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
    struct xdp_options opts = {0};
    socklen_t len = sizeof(opts);
    if (r == 0 && getsockopt(x->fd, SOL_XDP, XDP_OPTIONS, &opts, &len) < 0)
        r = -errno;
    bio_xsk_leave(x);
    if (r < 0)
        return bio_raise_errno(r);
    x->bind_flags = sa.sxdp_flags;
    x->zerocopy = (opts.flags & XDP_OPTIONS_ZEROCOPY) != 0;
    if (x->rx.size)
        bio_xsk_refill(x); /* frames for the kernel from the first packet on */
    return PyBool_FromLong(x->zerocopy);
}

PyDoc_STRVAR(bio_xsk_setsockopt_doc,
"setsockopt($self, level, optname, value, /)\n--\n\n"
"setsockopt(2) with an int value (busy-poll options, XDP_MAX_TX_SKB_BUDGET).");

static PyObject *
bio_xsk_setsockopt(BioXsk *x, PyObject *args)
{
    int level, opt, value;
    if (!PyArg_ParseTuple(args, "iii:setsockopt", &level, &opt, &value))
        return NULL;
    if (x->fd < 0)
        return bio_raise_errno(-EBADF);
    if (setsockopt(x->fd, level, opt, &value, sizeof(value)) < 0)
        return bio_raise_errno(-errno);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bio_xsk_getsockopt_doc,
"getsockopt($self, level, optname, /)\n--\n\ngetsockopt(2) of an int option.");

static PyObject *
bio_xsk_getsockopt(BioXsk *x, PyObject *args)
{
    int level, opt, value = 0;
    socklen_t len = sizeof(value);
    if (!PyArg_ParseTuple(args, "ii:getsockopt", &level, &opt))
        return NULL;
    if (x->fd < 0)
        return bio_raise_errno(-EBADF);
    if (getsockopt(x->fd, level, opt, &value, &len) < 0)
        return bio_raise_errno(-errno);
    return PyLong_FromLong(value);
}

PyDoc_STRVAR(bio_xsk_statistics_doc,
"statistics($self, /)\n--\n\n"
"The kernel's XDP_STATISTICS: rx_dropped, rx_invalid_descs, tx_invalid_descs,\n"
"rx_ring_full, rx_fill_ring_empty_descs, tx_ring_empty_descs.");

static PyObject *
bio_xsk_statistics(BioXsk *x, PyObject *Py_UNUSED(ignored))
{
    struct xdp_statistics s;
    socklen_t len = sizeof(s);
    memset(&s, 0, sizeof(s));
    if (x->fd < 0)
        return bio_raise_errno(-EBADF);
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &s, &len) < 0)
        return bio_raise_errno(-errno);
    return Py_BuildValue("{sKsKsKsKsKsK}", "rx_dropped", (unsigned long long)s.rx_dropped,
                         "rx_invalid_descs", (unsigned long long)s.rx_invalid_descs,
                         "tx_invalid_descs", (unsigned long long)s.tx_invalid_descs,
                         "rx_ring_full", (unsigned long long)s.rx_ring_full,
                         "rx_fill_ring_empty_descs", (unsigned long long)s.rx_fill_ring_empty_descs,
                         "tx_ring_empty_descs", (unsigned long long)s.tx_ring_empty_descs);
}

/* One ring's positions as a dict (size 0: no ring). */
static PyObject *
bio_xsk_ring_dict(const BioXskRing *r)
{
    if (r->size == 0)
        return Py_BuildValue("{sI}", "size", 0);
    return Py_BuildValue("{sIsIsIsi}", "size", r->size, "producer",
                         __atomic_load_n(r->producer, __ATOMIC_ACQUIRE), "consumer",
                         __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE), "need_wakeup",
                         bio_ring_needs_wakeup(r));
}

static PyObject *
bio_xsk_rings_py(BioXsk *x, PyObject *Py_UNUSED(ignored))
{
    if (x->fd < 0)
        return bio_raise_errno(-EBADF);
    return Py_BuildValue("{sNsNsNsN}", "fill", bio_xsk_ring_dict(&x->fill), "completion",
                         bio_xsk_ring_dict(&x->comp), "rx", bio_xsk_ring_dict(&x->rx), "tx",
                         bio_xsk_ring_dict(&x->tx));
}

static PyObject *
bio_xsk_counters(BioXsk *x, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(x->counters, bio_xsk_counter_names, BIO_XSK_NCOUNTERS);
}

static PyObject *
bio_xsk_reset_counters(BioXsk *x, PyObject *Py_UNUSED(ignored))
{
    memset(x->counters, 0, sizeof(x->counters));
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bio_xsk_close_doc,
"close($self, /)\n--\n\n"
"Close the socket. A call waiting in another thread wakes with OSError(EBADF)\n"
"and the socket closes as it returns. Frames still in its rings stay out of\n"
"the free list (the kernel may hold them until it lets the socket go).");

static PyObject *
bio_xsk_close(BioXsk *x, PyObject *Py_UNUSED(ignored))
{
    if (x->fd < 0)
        Py_RETURN_NONE;
    if (x->busy) {
        uint64_t one = 1;
        x->closing = 1;
        if (write(x->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            return bio_raise_errno(-errno);
        Py_RETURN_NONE;
    }
    bio_xsk_close_now(x);
    Py_RETURN_NONE;
}

static void
bio_xsk_dealloc(BioXsk *x)
{
    if (x->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)x);
    bio_xsk_close_now(x);
    PyMem_RawFree(x->scratch);
    Py_XDECREF(x->umem);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

static PyMethodDef bio_xsk_methods[] = {
    {"bind", (PyCFunction)bio_xsk_bind, METH_O, bio_xsk_bind_doc},
    {"recv_batch", (PyCFunction)(void (*)(void))bio_xsk_recv_batch,
     METH_FASTCALL | METH_KEYWORDS, bio_xsk_recv_batch_doc},
    {"send_batch", (PyCFunction)(void (*)(void))bio_xsk_send_batch,
     METH_FASTCALL | METH_KEYWORDS, bio_xsk_send_batch_doc},
    {"send_udp", (PyCFunction)(void (*)(void))bio_xsk_send_udp,
     METH_FASTCALL | METH_KEYWORDS, bio_xsk_send_udp_doc},
    {"wait_tx", (PyCFunction)bio_xsk_wait_tx, METH_VARARGS, bio_xsk_wait_tx_doc},
    {"setsockopt", (PyCFunction)bio_xsk_setsockopt, METH_VARARGS, bio_xsk_setsockopt_doc},
    {"getsockopt", (PyCFunction)bio_xsk_getsockopt, METH_VARARGS, bio_xsk_getsockopt_doc},
    {"statistics", (PyCFunction)bio_xsk_statistics, METH_NOARGS, bio_xsk_statistics_doc},
    {"rings", (PyCFunction)bio_xsk_rings_py, METH_NOARGS,
     "rings($self, /)\n--\n\nEach ring's size, producer, consumer and need_wakeup flag."},
    {"counters", (PyCFunction)bio_xsk_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"reset_counters", (PyCFunction)bio_xsk_reset_counters, METH_NOARGS,
     "reset_counters($self, /)\n--\n\nSet every counter to 0."},
    {"close", (PyCFunction)bio_xsk_close, METH_NOARGS, bio_xsk_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_xsk_members[] = {
    {"fd", T_INT, offsetof(BioXsk, fd), READONLY, "the AF_XDP socket (-1: closed)"},
    {"ifindex", T_UINT, offsetof(BioXsk, ifindex), READONLY, "the device"},
    {"queue", T_UINT, offsetof(BioXsk, queue), READONLY, "the device queue"},
    {"bind_flags", T_UINT, offsetof(BioXsk, bind_flags), READONLY, "the flags it was bound with"},
    {"zerocopy", T_INT, offsetof(BioXsk, zerocopy), READONLY, "1: bound zero copy"},
    {"umem", T_OBJECT, offsetof(BioXsk, umem), READONLY, "the Umem"},
    {"fill_batch", T_UINT, offsetof(BioXsk, fill_batch), 0,
     "refill the fill ring once this many entries are free"},
    {"fill_target", T_UINT, offsetof(BioXsk, fill_target), 0,
     "a refill stops once the fill ring holds this many frames (0: its size)"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject BioXsk_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.XskSocket",
    .tp_basicsize = sizeof(BioXsk),
    .tp_dealloc = (destructor)bio_xsk_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "XskSocket(umem, ifindex, queue, fill_size, comp_size, rx_size, tx_size)\n--\n\n"
              "An AF_XDP socket on one device queue (see burstio.xdp.XskSocket).",
    .tp_weaklistoffset = offsetof(BioXsk, weakrefs),
    .tp_methods = bio_xsk_methods,
    .tp_members = bio_xsk_members,
    .tp_new = bio_xsk_new,
};

int
bio_xsk_init_type(PyObject *module)
{
    if (PyType_Ready(&BioXsk_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "XskSocket", (PyObject *)&BioXsk_Type);
}

int
bio_xdp_init(PyObject *module)
{
    if (bio_bpf_init(module) < 0 || bio_umem_init_type(module) < 0 ||
        bio_xsk_init_type(module) < 0 || bio_frames_init_types(module) < 0 ||
        bio_build_init(module) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "FLAG_CONTINUES", BIO_XSK_FLAG_CONTINUES);
}
