/* UdpIo: the syscall side of a BurstSocket, one UDP socket: the type, its
 * settings (members) and counters. Receiving is udp/recv.c, sending
 * udp/send.c.
 *
 * Where a datagram goes through it: nowhere itself; recv_batch() and
 * send_batch() here are udp/recv.c's and udp/send.c's. Policy (timeouts,
 * GRO/GSO on or off, fallbacks, recover) is the Python BurstSocket's
 * (src/burstio/_udp.py); this object holds what it decided.
 */
#include "udp/udp.h"
#include "udp/pacer.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *const bio_udp_counter_names[BIO_UDP_NCOUNTERS] = {
    "rx_datagrams",    "rx_bytes",         "rx_batches",  "rx_syscalls",
    "rx_truncated",    "rx_gro_messages",  "rx_gro_datagrams",
    "kernel_drops",    "tx_datagrams",     "tx_bytes",    "tx_batches",
    "tx_syscalls",     "tx_gso_messages",  "tx_gso_datagrams",
    "tx_errors",       "tx_unreported_errors", "gso_downgrades",
    "tx_late",         "tx_ecn_unmarked",  "ecn_downgrades",
};

static PyObject *
bio_udp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i:UdpIo", kwlist, &fd))
        return NULL;
    BioUdp *u = (BioUdp *)type->tp_alloc(type, 0);
    if (u == NULL)
        return NULL;
    u->fd = u->wait_fd = u->retired_wait_fd = u->wake.efd = -1;
    if (fd >= 0) { /* our own descriptor: a number closed and reused elsewhere cannot reach us */
        int err = bio_wake_init(&u->wake);
        socklen_t flen = sizeof(u->family);
        if (err == 0 && (u->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
            err = -errno;
        if (err == 0 && getsockopt(u->fd, SOL_SOCKET, SO_DOMAIN, &u->family, &flen) < 0)
            err = -errno;
        if (err < 0) {
            Py_DECREF(u);
            return bio_raise_errno(err);
        }
    }
    u->recv_mmsg = 1;
    u->send_mmsg = 1;
    u->gso_max_segments = 64;
    u->gro_max_segments = 64;
    u->ecn_cmsg = 1;
    return (PyObject *)u;
}

/* Close what u owns (no call is using it). */
static void
bio_udp_release(BioUdp *u)
{
    int *fds[] = {&u->fd, &u->wait_fd, &u->retired_wait_fd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
    bio_wake_fini(&u->wake);
}

PyObject *
bio_udp_raise_closed(void)
{
    PyObject *v = Py_BuildValue("(is)", EBADF, "the BurstSocket was closed while waiting");
    if (v != NULL)
        PyErr_SetObject(PyExc_OSError, v);
    Py_XDECREF(v);
    return NULL;
}

BioBatchSendOpts
bio_udp_send_opts(BioUdp *u)
{
    BioBatchSendOpts o = {.gso = u->gso, .gso_max_segments = u->gso_max_segments,
                          .family = u->family, .ecn = u->ecn_cmsg, .dscp = (uint8_t)u->dscp,
                          .txtime = u->txtime, .txtime_offset = u->txtime_offset,
                          .late = &u->counters[BIO_UDP_C_TX_LATE],
                          .unmarked = &u->counters[BIO_UDP_C_TX_ECN_UNMARKED]};
    return o;
}

int
bio_udp_enter(BioUdp *u)
{
    if (u->fd < 0 || bio_wake_closing(&u->wake)) {
        bio_raise_errno(-EBADF);
        return -1;
    }
    uint32_t gen = u->wake.fork_gen;
    int err = bio_wake_refresh(&u->wake);
    if (gen != u->wake.fork_gen && u->wait_fd >= 0) {
        /* a child after fork(): the epoll instance is the parent's (its
         * busy-poll parameters, its wake eventfd); wait in poll() until the
         * policy gives us one of our own (src/burstio/_udp.py) */
        close(u->wait_fd);
        u->wait_fd = -1;
    }
    if (err < 0) {
        bio_raise_errno(err);
        return -1;
    }
    u->wake.users++;
    return 0;
}

void
bio_udp_leave(BioUdp *u)
{
    if (--u->wake.users > 0)
        return;
    if (u->retired_wait_fd >= 0) {
        close(u->retired_wait_fd);
        u->retired_wait_fd = -1;
    }
    if (bio_wake_closing(&u->wake))
        bio_udp_release(u);
}

PyDoc_STRVAR(bio_udp_close_doc,
"close($self, /)\n--\n\n"
"Close our descriptor. A call waiting in another thread wakes at once with\n"
"OSError(EBADF); the descriptor is closed when the last call has left. A\n"
"receive of this process blocked in recvmmsg itself (block_rx) is woken by\n"
"shutting the socket's receive side down (SHUT_RD), for every descriptor of\n"
"that socket.");

/* Wake receives of this process blocked in recvmmsg (udp/recv.c): after
 * the closing flag is set, a shut-down receive side ends their sleep (the
 * kernel wakes a socket's sleepers on shutdown, even an unconnected UDP
 * socket's, which answers ENOTCONN), and any receive entering later returns
 * at once. Only while one is inside: a socket that a fork()ed child or
 * another descriptor still receives on keeps its receive side otherwise. */
static void
bio_udp_wake_blocked(BioUdp *u)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* paired with the receive's */
    if (u->fd >= 0 && __atomic_load_n(&u->rx_blocked, __ATOMIC_SEQ_CST) > 0 &&
        __atomic_load_n(&u->block_gen, __ATOMIC_RELAXED) == bio_fork_gen())
        (void)shutdown(u->fd, SHUT_RD); /* ENOTCONN when unconnected: shut down all the same */
}

static PyObject *
bio_udp_close(BioUdp *u, PyObject *Py_UNUSED(ignored))
{
    if (u->fd < 0 && u->wake.efd < 0)
        Py_RETURN_NONE;
    bio_wake_kick(&u->wake);
    bio_udp_wake_blocked(u);
    if (u->wake.users == 0)
        bio_udp_release(u);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bio_udp_set_wait_fd_doc,
"set_wait_fd($self, epfd, /)\n--\n\n"
"Wait for receives in (our dup of) the epoll instance epfd, which must hold\n"
"the socket; its busy-poll parameters then apply. -1: poll() the socket.");

static PyObject *
bio_udp_set_wait_fd(BioUdp *u, PyObject *arg)
{
    long long epfd;
    if (bio_args_int("epfd", arg, -1, 0x7fffffff, &epfd) < 0 || bio_udp_enter(u) < 0)
        return NULL;
    int own = -1;
    if (epfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = u->wake.efd};
        own = fcntl((int)epfd, F_DUPFD_CLOEXEC, 0);
        if (own < 0 || (epoll_ctl(own, EPOLL_CTL_ADD, u->wake.efd, &ev) < 0 && errno != EEXIST)) {
            int e = errno;
            if (own >= 0)
                close(own);
            bio_udp_leave(u);
            return bio_raise_errno(-e);
        }
    }
    int old = __atomic_exchange_n(&u->wait_fd, own, __ATOMIC_RELAXED);
    if (old >= 0 && u->wake.users > 1 && u->retired_wait_fd < 0)
        u->retired_wait_fd = old; /* a receive may be waiting in it: closed when it leaves */
    else if (old >= 0)
        close(old);
    bio_udp_leave(u);
    Py_RETURN_NONE;
}

static PyObject *
bio_udp_get_block_rx(BioUdp *u, void *Py_UNUSED(closure))
{
    uint32_t gen = __atomic_load_n(&u->block_gen, __ATOMIC_RELAXED);
    return PyBool_FromLong(gen != 0 && gen == bio_fork_gen());
}

/* block_rx = True: receives of this process without a deadline block in
 * recvmmsg itself (set while busy polling through the socket). 0 or -1. */
static int
bio_udp_set_block_rx(BioUdp *u, PyObject *v, void *Py_UNUSED(closure))
{
    int on = v == NULL ? 0 : PyObject_IsTrue(v);
    if (on < 0)
        return -1;
    __atomic_store_n(&u->block_gen, on ? bio_fork_gen() : 0, __ATOMIC_RELAXED);
    return 0;
}

static PyGetSetDef bio_udp_getset[] = {
    {"block_rx", (getter)bio_udp_get_block_rx, (setter)bio_udp_set_block_rx,
     "True: a receive without a deadline blocks in recvmmsg itself, so that the "
     "kernel busy polls by the socket's SO_BUSY_POLL and then sleeps (one system "
     "call per wake-up); close() wakes it with shutdown(SHUT_RD). Set in this "
     "process, it is off in a fork()ed child (False there).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *
bio_udp_counters(BioUdp *u, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(u->counters, bio_udp_counter_names, BIO_UDP_NCOUNTERS);
}

static PyObject *
bio_udp_count(BioUdp *u, PyObject *args)
{
    return bio_counters_count_py(u->counters, bio_udp_counter_names, BIO_UDP_NCOUNTERS, args);
}

static PyObject *
bio_udp_reset_counters(BioUdp *u, PyObject *Py_UNUSED(ignored))
{
    memset(u->counters, 0, sizeof(u->counters));
    Py_RETURN_NONE;
}

static PyMethodDef bio_udp_methods[] = {
    {"recv_batch", (PyCFunction)(void (*)(void))bio_udp_recv_batch,
     METH_FASTCALL | METH_KEYWORDS, bio_udp_recv_batch_doc},
    {"send_batch", (PyCFunction)(void (*)(void))bio_udp_send_batch,
     METH_FASTCALL | METH_KEYWORDS,
     "send_batch($self, /, batch, start=0, count=None, *, on_error='raise')\n--\n\n"
     "Send entries [start, start+count); returns the entries processed. If the\n"
     "send stops early and a `recover` policy is set, its result is returned\n"
     "(see BurstSocket)."},
    {"send_raw", (PyCFunction)(void (*)(void))bio_udp_send_raw,
     METH_FASTCALL | METH_KEYWORDS,
     "send_raw($self, /, batch, start=0, count=None, *, on_error='raise', gso=True, "
     "ecn=True)\n--\n\n"
     "send_batch without the recover policy (gso=False / ecn=False: without GSO /\n"
     "codepoints for this call). Returns (processed, errno, index, gso): the\n"
     "entries processed and, if the send stopped early, its errno, the failing\n"
     "entry and whether it was in a GSO send (errno 0: nothing stopped it)."},
    {"send_segments", (PyCFunction)(void (*)(void))bio_udp_send_segments,
     METH_VARARGS | METH_KEYWORDS, bio_udp_send_segments_doc},
    {"close", (PyCFunction)bio_udp_close, METH_NOARGS, bio_udp_close_doc},
    {"set_wait_fd", (PyCFunction)bio_udp_set_wait_fd, METH_O, bio_udp_set_wait_fd_doc},
    {"counters", (PyCFunction)bio_udp_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"count", (PyCFunction)bio_udp_count, METH_VARARGS,
     "count($self, name, n, /)\n--\n\nAdd n to a counter (for policy code in Python)."},
    {"reset_counters", (PyCFunction)bio_udp_reset_counters, METH_NOARGS,
     "reset_counters($self, /)\n--\n\nSet every counter to 0."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_udp_members[] = {
    {"fd", T_INT, offsetof(BioUdp, fd), READONLY,
     "our own dup of the socket's descriptor (-1: closed)"},
    {"recv_mmsg", T_INT, offsetof(BioUdp, recv_mmsg), 0,
     "1: recvmmsg; 0: one recvmsg per datagram"},
    {"send_mmsg", T_INT, offsetof(BioUdp, send_mmsg), 0,
     "1: sendmmsg; 0: one sendmsg per message"},
    {"gso", T_INT, offsetof(BioUdp, gso), 0, "1: coalesce runs into UDP_SEGMENT sends"},
    {"wait_fd", T_INT, offsetof(BioUdp, wait_fd), READONLY,
     "our dup of the epoll instance receives wait in (set_wait_fd); -1: poll()"},
    {"spin_us", T_INT, offsetof(BioUdp, spin_us), 0,
     "microseconds a receive with a deadline keeps retrying before it sleeps "
     "in poll() (with SO_BUSY_POLL each try busy polls the device once; "
     "without a deadline see block_rx); 0: none"},
    {"gso_max_segments", T_INT, offsetof(BioUdp, gso_max_segments), 0,
     "segments per GSO send to build"},
    {"gro_max_segments", T_INT, offsetof(BioUdp, gro_max_segments), 0,
     "most segments one GRO receive can carry (sizes receive calls)"},
    {"gro", T_INT, offsetof(BioUdp, gro), 0, "1: UDP_GRO is on, split receives"},
    {"socket_index", T_INT, offsetof(BioUdp, socket_index), 0,
     "value written to batch.sockets on receive"},
    {"single_after", T_INT, offsetof(BioUdp, single_after), 0,
     "after this many one-datagram receives in a row, ask for one message at a "
     "time, probing with the full window every as many calls (0: never)"},
    {"recover", T_OBJECT, offsetof(BioUdp, recover), 0,
     "recover(batch, start, done, end, skip, errno, index, gso) -> int: called "
     "when send_batch stops early (error, GSO or ECN refusal) with what stopped "
     "that call; its result is returned"},
    {"family", T_INT, offsetof(BioUdp, family), READONLY,
     "the socket's address family (AF_INET or AF_INET6)"},
    {"meta", T_INT, offsetof(BioUdp, meta), 0,
     "1: the socket has pktinfo or ECN on; receives fill the batch's local_addrs, "
     "ifindexes and ecn"},
    {"ecn_cmsg", T_INT, offsetof(BioUdp, ecn_cmsg), 0,
     "1: send each datagram's ECN codepoint (IP_TOS/IPV6_TCLASS cmsg); 0: not (off or "
     "downgraded, counted in tx_ecn_unmarked); 2 (tests only): a TOS byte out of range, which "
     "every kernel refuses with EINVAL"},
    {"dscp", T_INT, offsetof(BioUdp, dscp), 0,
     "the DSCP bits (TOS byte & 0xfc) sent with a codepoint"},
    {"txtime", T_INT, offsetof(BioUdp, txtime), 0,
     "1: send transmit times as SCM_TXTIME cmsgs (SO_TXTIME on); 0: a transmit time is refused"},
    {"txtime_offset", T_LONGLONG, offsetof(BioUdp, txtime_offset), 0,
     "ns added to each transmit time (CLOCK_MONOTONIC) for the clock SO_TXTIME was set with"},
    {NULL, 0, 0, 0, NULL},
};

static int
bio_udp_traverse(BioUdp *u, visitproc visit, void *arg)
{
    Py_VISIT(u->recover);
    return 0;
}

static int
bio_udp_clear(BioUdp *u)
{
    Py_CLEAR(u->recover);
    return 0;
}

static void
bio_udp_dealloc(BioUdp *u)
{
    PyObject_GC_UnTrack(u);
    bio_udp_release(u);
    bio_udp_clear(u);
    Py_TYPE(u)->tp_free((PyObject *)u);
}

PyTypeObject BioUdp_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.UdpIo",
    .tp_basicsize = sizeof(BioUdp),
    .tp_dealloc = (destructor)bio_udp_dealloc,
    .tp_traverse = (traverseproc)bio_udp_traverse,
    .tp_clear = (inquiry)bio_udp_clear,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "UdpIo(fd)\n--\n\nBatched UDP syscalls on one socket (internal).",
    .tp_methods = bio_udp_methods,
    .tp_members = bio_udp_members,
    .tp_getset = bio_udp_getset,
    .tp_new = bio_udp_new,
};

static PyMethodDef bio_udp_functions[] = {
    {"udp_parse_for_fuzz", bio_udp_parse_for_fuzz, METH_VARARGS, bio_udp_parse_for_fuzz_doc},
    {NULL, NULL, 0, NULL},
};

int
bio_udp_init_type(PyObject *module)
{
    if (PyType_Ready(&BioUdp_Type) < 0 || bio_pacer_init_type(module) < 0)
        return -1;
    if (PyModule_AddFunctions(module, bio_udp_functions) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "UdpIo", (PyObject *)&BioUdp_Type);
}
