/* The switch (SwitchCore): party 0 of one region per port, it copies each
 * packet a client publishes into the RX ring of the port its destination
 * names (a key, or the frame's MAC address: static routes, groups of ports,
 * learning from sources, flooding broadcast and unknown ones), so clients
 * share no memory with each other; a NIC queue is a port too (ports/nic.c).
 * This file is its sleeping and waking and its Python entry points;
 * ports/fib.c is the table, ports/forward.c moves the packets and isolates
 * misbehaving clients (ports/switch.h).
 *
 * Where a packet goes through it: forward() runs passes (ports/forward.c)
 * without the GIL until the deadline, lingering after traffic and sleeping
 * when idle. Each client wakes the switch through wake sockets of its own
 * (ports/ring.c), so a client that kicks without reason is found out and
 * isolated, and none can read, steal or block another's wake-ups; stop()
 * rings a doorbell no client holds.
 */
#include "ports/switch.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>
#include <time.h>
#include <unistd.h>

static const char *const bio_switch_counter_names[BIO_SWITCH_NCOUNTERS] = {
    "forwarded", "flooded", "unknown_drops", "full_drops", "gone_drops", "filtered",
    "bad_slots", "learned", "table_full", "passes", "sleeps", "wakeups", "ports_gone",
    "ports_isolated", "isolated_drops", "idle_kicks", "runt_drops", "oversize_drops",
    "learn_refused", "learn_limited",
};

/* ---- sleeping ---------------------------------------------------------------- */

/* Whether NIC queue sp gathers at `now`: its frames are looked at when
 * that is over, whatever the kernel's wake-ups say. */
static inline int
bio_switch_gathering(const BioSwitchPort *sp, int64_t now)
{
    return sp->gather_until > now;
}

/* Raise the switch's flags before sleeping: on every live client's TX ring
 * (wake when it publishes past what the last pass saw) and on every full
 * ring a source waits for (wake when one slot frees). After the fence,
 * 1 if something is there already (a gathering NIC queue's frames wait for
 * the end of its gathering). nogil. */
static int
bio_switch_arm(BioSwitch *sw, int n, int64_t now)
{
    for (int i = 0; i < n; i++) {
        BioSwitchPort *sp = &sw->ports[i];
        if (sp->gone || sp->nic != NULL) /* a NIC queue: its socket is polled instead */
            continue;
        atomic_store_explicit(&sp->rx->me->wake_at, sp->rx->tail + 1, memory_order_relaxed);
        atomic_store_explicit(&sp->rx->me->sleeping, 1, memory_order_seq_cst);
        if (sp->blocked >= 0 && !sw->ports[sp->blocked].gone) {
            BioPortRing *t = sw->ports[sp->blocked].tx;
            atomic_store_explicit(&t->me->wake_at, t->head + 1 - t->cap, memory_order_relaxed);
            atomic_store_explicit(&t->me->sleeping, 1, memory_order_seq_cst);
        }
    }
    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < n; i++) {
        BioSwitchPort *sp = &sw->ports[i];
        if (sp->gone)
            continue;
        if (sp->nic != NULL) {
            if (!bio_switch_gathering(sp, now) && bio_nic_rx_pending(sp->nic))
                return 1;
            continue;
        }
        if (atomic_load_explicit(&sp->rx->peer->pos, memory_order_acquire) != sp->rx->tail ||
            bio_port_ring_peer_state(sp->rx) == BIO_PORT_CLOSED)
            return 1;
        if (sp->blocked >= 0 && !sw->ports[sp->blocked].gone) {
            BioPortRing *t = sw->ports[sp->blocked].tx;
            uint32_t at = t->head + 1 - t->cap;
            if ((int32_t)(atomic_load_explicit(&t->peer->pos, memory_order_acquire) - at) >= 0)
                return 1;
        }
    }
    return 0;
}

/* Lower every flag bio_switch_arm may have raised. nogil. */
static void
bio_switch_disarm(BioSwitch *sw, int n)
{
    for (int i = 0; i < n; i++) {
        if (sw->ports[i].gone || sw->ports[i].nic != NULL)
            continue;
        atomic_store_explicit(&sw->ports[i].rx->me->sleeping, 0, memory_order_relaxed);
        atomic_store_explicit(&sw->ports[i].tx->me->sleeping, 0, memory_order_relaxed);
    }
}

/* Add port i's wake sockets and pidfd to the poll set. 1 if its process
 * turns out to have exited (nothing added), 0 otherwise; *slices set if it
 * cannot be watched by pidfd. nogil. */
static int
bio_switch_poll_add(BioSwitch *sw, int i, int *np, int *slices, int64_t now)
{
    BioSwitchPort *sp = &sw->ports[i];
    if (sp->nic != NULL) { /* its socket, while its RX ring has room for what it receives
                            * and it does not gather */
        if (sp->nic->prod->tail != sp->nic->prod->head && !bio_switch_gathering(sp, now)) {
            sw->pfd_port[*np] = i;
            sw->pfd[(*np)++] = (struct pollfd){.fd = bio_nic_fd(sp->nic), .events = POLLIN};
        }
        return 0;
    }
    if (bio_port_ring_watch(sp->rx) < 0) {
        sp->exited = 1;
        return 1;
    }
    int fds[3] = {sp->rx->sleep_fd, sp->tx->sleep_fd, sp->rx->watch_fd};
    for (int k = 0; k < 3; k++) {
        if (fds[k] < 0)
            continue;
        sw->pfd_port[*np] = i;
        sw->pfd[(*np)++] = (struct pollfd){.fd = fds[k], .events = POLLIN};
    }
    if (sp->rx->watch_fd < 0)
        *slices = 1;
    return 0;
}

/* poll() until `until` (CLOCK_MONOTONIC ns, -1: none) with a nanosecond
 * timeout: a NIC queue's slices are shorter than poll()'s millisecond. nogil. */
static int
bio_switch_ppoll(struct pollfd *p, nfds_t n, int64_t until, int64_t now)
{
    struct timespec ts, *tp = NULL;
    if (until >= 0) {
        int64_t left = until > now ? until - now : 0;
        ts.tv_sec = (time_t)(left / 1000000000);
        ts.tv_nsec = (long)(left % 1000000000);
        tp = &ts;
    }
    return ppoll(p, n, tp, NULL);
}

/* Poll the doorbell, the live clients' wake sockets and their pidfds, and
 * the NIC queues' sockets that do not gather, until the deadline (in slices
 * if some client cannot be watched by pidfd, or until the first gathering
 * ends). A client whose pidfd fires is marked exited (what it sent is
 * taken, then it is gone); one whose wake sockets fire is drained and
 * marked kicked. 1, 0 (deadline) or -errno. nogil. */
static int
bio_switch_poll_nogil(BioSwitch *sw, int n, int64_t deadline, int64_t now)
{
    int np = 1, slices = 0;
    int64_t slice = BIO_PORT_CHECK_NS, until = deadline;
    sw->pfd[0] = (struct pollfd){.fd = sw->efd, .events = POLLIN};
    for (int i = 0; i < n; i++) {
        BioSwitchPort *sp = &sw->ports[i];
        if (!sp->gone && !sp->exited && bio_switch_poll_add(sw, i, &np, &slices, now))
            return 1;
        if (!sp->gone && sp->nic != NULL && bio_switch_gathering(sp, now) &&
            (until < 0 || until > sp->gather_until))
            until = sp->gather_until;
        int b = sp->blocked;
        if (b >= 0 && sw->ports[b].nic != NULL) { /* completions raise no event: look again soon */
            slices = 1;
            slice = BIO_SWITCH_NIC_SLICE_NS;
        }
    }
    if (slices && (until < 0 || until > now + slice))
        until = now + slice;
    int r = bio_switch_ppoll(sw->pfd, (nfds_t)np, until, now);
    if (r < 0)
        return -errno;
    for (int k = 1; r > 0 && k < np; k++) {
        BioSwitchPort *sp = &sw->ports[sw->pfd_port[k]];
        if (!sw->pfd[k].revents || sp->nic != NULL)
            continue;
        if (sw->pfd[k].fd == sp->rx->watch_fd)
            sp->exited = 1;
        else if (bio_port_wake_drain(sw->pfd[k].fd) > 0)
            sp->kicked = 1;
    }
    uint64_t v;
    if (r > 0 && (sw->pfd[0].revents & POLLIN) && read(sw->efd, &v, sizeof(v)) < 0)
        r = 1; /* emptied by an earlier wake: nothing to read */
    if (r > 0)
        BIO_COUNT(sw->counters, BIO_SWITCH_C_WAKEUPS, 1);
    return r == 0 && deadline >= 0 && bio_now_ns() >= deadline ? 0 : 1;
}

/* Judge the clients whose wake sockets fired in the last sleep. nogil. */
static void
bio_switch_judge_kicks(BioSwitch *sw, int n)
{
    pthread_mutex_lock(&sw->lock);
    for (int i = 0; i < n; i++)
        if (sw->ports[i].kicked)
            bio_switch_kicked(sw, i);
    pthread_mutex_unlock(&sw->lock);
}

typedef struct {
    BioSwitch *sw;
    int64_t deadline, linger_end;
    uint64_t moved, isolated; /* packets taken; ports_isolated when the call began */
} BioSwitchRun;

/* Whether a port was isolated since the call began (forward() then returns,
 * so that Python reports it at once). */
static int
bio_switch_news(BioSwitchRun *c)
{
    return __atomic_load_n(&c->sw->counters[BIO_SWITCH_C_PORTS_ISOLATED], __ATOMIC_RELAXED) !=
           c->isolated;
}

/* Sleep until something happens, unless it already has. 1 (go on), 0
 * (deadline) or -errno. nogil. */
static int
bio_switch_sleep_nogil(BioSwitchRun *c)
{
    BioSwitch *sw = c->sw;
    int np = atomic_load_explicit(&sw->nports, memory_order_acquire), r = 1;
    int64_t now = bio_now_ns();
    if (!bio_switch_arm(sw, np, now) && !atomic_load(&sw->stop)) {
        BIO_COUNT(sw->counters, BIO_SWITCH_C_SLEEPS, 1);
        r = bio_switch_poll_nogil(sw, np, c->deadline, now);
    }
    bio_switch_disarm(sw, np);
    bio_switch_judge_kicks(sw, np);
    return r;
}

/* Forward until the deadline (-1: until stop()), lingering after traffic
 * and sleeping when idle; returns to Python every BIO_SWITCH_RETURN_AFTER
 * packets and when a port was isolated. 0 or -errno (-EINTR resumable).
 * nogil. */
static int
bio_switch_run_nogil(void *arg)
{
    BioSwitchRun *c = arg;
    BioSwitch *sw = c->sw;
    while (!atomic_load(&sw->stop)) {
        pthread_mutex_lock(&sw->lock);
        uint32_t n = bio_switch_pass(sw);
        pthread_mutex_unlock(&sw->lock);
        int64_t now = bio_now_ns();
        c->moved += n;
        if (bio_switch_news(c) || c->moved >= BIO_SWITCH_RETURN_AFTER)
            return 0;
        if (n) {
            c->linger_end = now + sw->linger_ns;
            continue;
        }
        if (c->deadline >= 0 && now >= c->deadline)
            return 0;
        if (now < c->linger_end) {
            for (int k = 0; k < 64; k++)
                bio_port_pause();
            continue;
        }
        int r = bio_switch_sleep_nogil(c);
        if (r <= 0 || bio_switch_news(c))
            return r;
    }
    return 0;
}

/* ---- Python entry points ------------------------------------------------------ */

/* Make the lock usable in this process: after a fork, a thread that held it
 * in the parent does not exist here. GIL. */
void
bio_switch_lock_ready(BioSwitch *sw)
{
    uint32_t epoch = atomic_load(&bio_port_epoch);
    if (sw->lock_epoch != epoch) {
        pthread_mutex_init(&sw->lock, NULL);
        sw->lock_epoch = epoch;
    }
}

/* SwitchCore(efd, max_ports=64, table_size=4096): owns efd on success. */
static PyObject *
bio_switch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
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
    BioSwitch *sw = (BioSwitch *)type->tp_alloc(type, 0);
    if (sw == NULL)
        return NULL;
    sw->efd = -1;
    pthread_mutex_init(&sw->lock, NULL);
    sw->lock_epoch = atomic_load(&bio_port_epoch);
    sw->ports = PyMem_RawCalloc((size_t)max_ports, sizeof(BioSwitchPort));
    sw->fib = PyMem_RawCalloc((size_t)table, sizeof(BioSwitchEntry));
    sw->groups = PyMem_RawCalloc(BIO_SWITCH_GROUPS, sizeof(BioSwitchGroup));
    sw->pfd = PyMem_RawCalloc(3 * (size_t)max_ports + 1, sizeof(struct pollfd));
    sw->pfd_port = PyMem_RawCalloc(3 * (size_t)max_ports + 1, sizeof(int));
    sw->rings = PyList_New(0);
    if (sw->ports == NULL || sw->fib == NULL || sw->pfd == NULL || sw->pfd_port == NULL ||
        sw->rings == NULL || sw->groups == NULL) {
        Py_DECREF(sw);
        return PyErr_NoMemory();
    }
    sw->efd = efd; /* owned from here on */
    sw->max_ports = max_ports;
    sw->fib_mask = (uint32_t)table - 1;
    sw->fib_gen = 1;
    sw->learning = sw->flood_unknown = sw->wait_full = 1;
    sw->budget = 256;
    sw->max_learned = 256;
    return (PyObject *)sw;
}

static void
bio_switch_dealloc(BioSwitch *sw)
{
    if (sw->efd >= 0)
        close(sw->efd);
    PyMem_RawFree(sw->ports);
    PyMem_RawFree(sw->fib);
    PyMem_RawFree(sw->groups);
    PyMem_RawFree(sw->pfd);
    PyMem_RawFree(sw->pfd_port);
    Py_XDECREF(sw->rings);
    pthread_mutex_destroy(&sw->lock);
    Py_TYPE(sw)->tp_free((PyObject *)sw);
}

/* Whether forward() runs now (in another thread of this process). */
static int
bio_switch_busy(BioSwitch *sw)
{
    return sw->busy != 0 && sw->busy == atomic_load(&bio_port_epoch);
}

/* Append port (rx, tx, nic) to the switch, keeping `keep` alive, and wake
 * a sleeping forward() so that it polls the new port. Its index, or -1. */
static int
bio_switch_append(BioSwitch *sw, BioPortRing *rx, BioPortRing *tx, BioNic *nic, PyObject *keep)
{
    int n = atomic_load(&sw->nports);
    if (n >= sw->max_ports) {
        PyErr_Format(PyExc_ValueError, "the switch is full: %d ports", sw->max_ports);
        return -1;
    }
    if (PyList_Append(sw->rings, keep) < 0)
        return -1;
    sw->ports[n] = (BioSwitchPort){.rx = rx, .tx = tx, .nic = nic, .blocked = -1};
    atomic_store_explicit(&sw->nports, n + 1, memory_order_release);
    uint64_t one = 1; /* a sleeping switch does not poll the new port yet: wake it */
    if (sw->efd >= 0 && write(sw->efd, &one, sizeof(one)) < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    return n;
}

PyDoc_STRVAR(bio_switch_add_doc,
"add($self, rx, tx, /)\n--\n\n"
"Add a port: the switch's side of a region (party 0), rx reading the\n"
"client's TX ring and tx filling its RX ring. Returns the port index.\n"
"Safe while forward() runs in another thread; the port is held by the\n"
"process that forwards.");

static PyObject *
bio_switch_add(BioSwitch *sw, PyObject *args)
{
    BioPortRing *rx, *tx;
    if (!PyArg_ParseTuple(args, "O!O!:add", &BioPortRx_Type, &rx, &BioPortTx_Type, &tx))
        return NULL;
    if (rx->port != tx->port || rx->party != 0) {
        PyErr_SetString(PyExc_ValueError, "add() needs the rx and tx rings of one port, party 0 "
                        "(the switch's side of the region)");
        return NULL;
    }
    /* held by the process that forwards: claimed here only if forward() runs
     * now (in another thread), else by the next forward(), which may be in
     * a process forked after this */
    PyObject *keep = PyTuple_Pack(2, (PyObject *)rx, (PyObject *)tx);
    int r = keep == NULL ||
            (bio_switch_busy(sw) && (bio_port_ring_ready(rx) < 0 || bio_port_ring_ready(tx) < 0))
                ? -1 : bio_switch_append(sw, rx, tx, NULL, keep);
    Py_XDECREF(keep);
    return r < 0 ? NULL : PyLong_FromLong(r);
}

PyDoc_STRVAR(bio_switch_add_nic_doc,
"add_nic($self, nic, /)\n--\n\n"
"Add a NIC queue: its pump (a NicCore), whose port's RX ring the switch\n"
"reads and whose TX ring it fills; each pass pumps it in and out. From\n"
"then on the NIC port is the switch's (its own sync and wait are refused),\n"
"and the switch must forward in the process that made it. Returns the port\n"
"index.");

static PyObject *
bio_switch_add_nic(BioSwitch *sw, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &BioNic_Type)) {
        PyErr_Format(PyExc_TypeError, "add_nic() argument must be a NicCore, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    BioNic *c = (BioNic *)arg;
    if (c->switched) {
        PyErr_SetString(PyExc_ValueError, "add_nic(): that NIC port belongs to a switch already");
        return NULL;
    }
    /* a pass moves its frames without the GIL: nobody else may hold any */
    uint32_t held = bio_port_frames_elsewhere(c->reg);
    if (held || c->xsk->umem->sockets > 1) {
        PyErr_Format(PyExc_ValueError, held ? "add_nic(): %u frames of the NIC port's pool are in "
                     "its pipes: a NIC port in a switch shares its frames with no one (close and "
                     "drop its pipes first)" : "add_nic(): another AF_XDP socket shares the NIC "
                     "port's Umem: a NIC port in a switch shares its frames with no one", held);
        return NULL;
    }
    if (bio_nic_hold(c) < 0)
        return NULL;
    int r = bio_switch_append(sw, c->app_rx, c->app_tx, c, arg);
    if (r < 0)
        bio_nic_unhold(c);
    else if (bio_switch_busy(sw))
        c->busy++; /* as bio_switch_nics_busy() did for the others */
    return r < 0 ? NULL : PyLong_FromLong(r);
}

/* Whether an exception raised while making port i's side usable is the
 * client's doing (a claim record or a position of the switch's side
 * rewritten): ValueError, RuntimeError or OSError(EBADMSG). GIL. */
static int
bio_switch_client_fault(void)
{
    if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_RuntimeError))
        return 1;
    if (!PyErr_ExceptionMatches(PyExc_OSError))
        return 0;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *e = value != NULL ? PyObject_GetAttrString(value, "errno") : NULL;
    int fault = e != NULL && PyLong_Check(e) && PyLong_AsLong(e) == EBADMSG;
    Py_XDECREF(e);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    return fault;
}

/* Make port i's side usable in this process (claimed, positions set up);
 * a port whose client made that impossible is isolated, with the error as
 * the reason. 0, or -1 with an exception that is not the client's doing. */
static int
bio_switch_ready(BioSwitch *sw, int i)
{
    BioSwitchPort *sp = &sw->ports[i];
    if (sp->nic != NULL && !sp->gone) /* ours: nothing a client wrote can make it fail */
        return bio_nic_hold(sp->nic);
    if (sp->gone || (bio_port_ring_ready(sp->rx) == 0 && bio_port_ring_ready(sp->tx) == 0))
        return 0;
    if (!bio_switch_client_fault())
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *text = value != NULL ? PyObject_Str(value) : NULL;
    const char *why = text != NULL ? PyUnicode_AsUTF8(text) : NULL;
    PyErr_Clear();
    pthread_mutex_lock(&sw->lock);
    bio_switch_isolate(sw, i, "the switch could not use its side of the region: %s",
                       why != NULL ? why : "?");
    pthread_mutex_unlock(&sw->lock);
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 0;
}

/* A forward() begins (d = 1) or ends (d = -1) passes that pump every NIC
 * queue without the GIL: counted as a call in progress on each pump, so
 * that a close() of a NIC port meanwhile lets its socket (and the rings a
 * pass reads) go only once the passes are over. GIL. */
static void
bio_switch_nics_busy(BioSwitch *sw, int d)
{
    int n = atomic_load(&sw->nports);
    for (int i = 0; i < n; i++) {
        BioNic *c = sw->ports[i].nic;
        if (c == NULL)
            continue;
        c->busy += d;
        if (c->closing && c->busy == 0)
            bio_xsk_leave(c->xsk); /* the close() came meanwhile: its socket goes now */
    }
}

PyDoc_STRVAR(bio_switch_forward_doc,
"forward($self, /, timeout=None)\n--\n\n"
"Forward packets for up to timeout seconds (None: until stop(); 0: what is\n"
"there now), sleeping when idle; returns after 65536 packets at most, and\n"
"as soon as a port was isolated (take_isolations() says which). Nothing a\n"
"client writes makes it raise. Returns the packets taken from the clients.");

static PyObject *
bio_switch_forward(BioSwitch *sw, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1];
    int64_t timeout_ns;
    if (bio_args_parse("forward", args, nargs, kwnames, names, 1, 0, a) < 0 ||
        bio_timeout_parse(a[0] ? a[0] : Py_None, &timeout_ns) < 0)
        return NULL;
    if (bio_switch_busy(sw)) {
        PyErr_SetString(PyExc_RuntimeError, "the switch is forwarding in another thread");
        return NULL;
    }
    bio_switch_lock_ready(sw);
    BioSwitchRun c = {.sw = sw, .isolated = sw->counters[BIO_SWITCH_C_PORTS_ISOLATED]};
    int n = atomic_load(&sw->nports);
    for (int i = 0; i < n; i++) /* hold every port in this process */
        if (bio_switch_ready(sw, i) < 0)
            return NULL;
    if (bio_switch_news(&c))
        return PyLong_FromLong(0);
    int64_t now = bio_now_ns();
    c.deadline = timeout_ns < 0 ? -1 : now + timeout_ns;
    c.linger_end = now + sw->linger_ns;
    sw->busy = atomic_load(&bio_port_epoch);
    bio_switch_nics_busy(sw, 1);
    int r = bio_nogil_retry(bio_switch_run_nogil, &c);
    bio_switch_nics_busy(sw, -1);
    sw->busy = 0;
    if (r == -EINTR)
        return NULL;
    if (r < 0)
        return bio_raise_errno(r);
    return PyLong_FromUnsignedLongLong(c.moved);
}

static PyObject *
bio_switch_stop(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    atomic_store(&sw->stop, 1);
    uint64_t one = 1;
    if (sw->efd >= 0 && write(sw->efd, &one, sizeof(one)) < 0)
        return bio_raise_errno(-errno);
    Py_RETURN_NONE;
}

static PyObject *
bio_switch_counters(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    return bio_counters_dict(sw->counters, bio_switch_counter_names, BIO_SWITCH_NCOUNTERS);
}

/* Port index from a Python int, or -1 with IndexError. */
static int
bio_switch_index(BioSwitch *sw, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i < 0 || i >= atomic_load(&sw->nports)) {
        PyErr_Format(PyExc_IndexError, "no port %ld", i);
        return -1;
    }
    return (int)i;
}

/* port_state(i) -> 0 live, or -errno why it is gone */
static PyObject *
bio_switch_port_state(BioSwitch *sw, PyObject *arg)
{
    int i = bio_switch_index(sw, arg);
    if (i < 0)
        return NULL;
    return PyLong_FromLong(__atomic_load_n(&sw->ports[i].gone, __ATOMIC_ACQUIRE));
}

/* isolation_reason(i) -> why port i was isolated, or None */
static PyObject *
bio_switch_isolation_reason(BioSwitch *sw, PyObject *arg)
{
    int i = bio_switch_index(sw, arg);
    if (i < 0)
        return NULL;
    if (__atomic_load_n(&sw->ports[i].gone, __ATOMIC_ACQUIRE) != -EPROTO)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(sw->ports[i].why, (Py_ssize_t)strlen(sw->ports[i].why),
                                "replace");
}

/* take_isolations() -> [(i, reason)] of the ports isolated since the last call */
static PyObject *
bio_switch_take_isolations(BioSwitch *sw, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    int n = atomic_load(&sw->nports);
    for (int i = 0; out != NULL && i < n; i++) {
        BioSwitchPort *sp = &sw->ports[i];
        if (sp->reported || __atomic_load_n(&sp->gone, __ATOMIC_ACQUIRE) != -EPROTO)
            continue;
        PyObject *item = Py_BuildValue("(is)", i, sp->why);
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
        sp->reported = 1;
    }
    return out;
}

static PyMethodDef bio_switch_methods[] = {
    {"add", (PyCFunction)bio_switch_add, METH_VARARGS, bio_switch_add_doc},
    {"add_nic", (PyCFunction)bio_switch_add_nic, METH_O, bio_switch_add_nic_doc},
    {"route", (PyCFunction)bio_switch_route_py, METH_VARARGS,
     "route($self, key, target, /)\n--\n\n"
     "Static route: packets to key (a dst key, or a MAC-mode key) go to target, a\n"
     "port index or a group (-2 - g, from group()); learning never changes it.\n"
     "target None removes the key."},
    {"local", (PyCFunction)bio_switch_local_py, METH_O,
     "local($self, key, /)\n--\n\n"
     "Make key a local address (a NIC queue's own MAC): never learned on any port,\n"
     "an unknown destination until route() gives it a static route. A static route\n"
     "of key stays as it is."},
    {"routes", (PyCFunction)bio_switch_routes, METH_NOARGS,
     "routes($self, /)\n--\n\nThe forwarding table as {key: (target, static)}."},
    {"group", (PyCFunction)bio_switch_group_py, METH_VARARGS,
     "group($self, ports, spread, /)\n--\n\n"
     "A new group of port indices, spread by flow hash (0) or in turn (1):\n"
     "returns its target for route() (-2 - g)."},
    {"groups", (PyCFunction)bio_switch_groups_py, METH_NOARGS,
     "groups($self, /)\n--\n\n[(ports, spread)] of every group, in order."},
    {"forward", (PyCFunction)(void (*)(void))bio_switch_forward, METH_FASTCALL | METH_KEYWORDS,
     bio_switch_forward_doc},
    {"stop", (PyCFunction)bio_switch_stop, METH_NOARGS,
     "stop($self, /)\n--\n\nMake forward() return (from any thread)."},
    {"counters", (PyCFunction)bio_switch_counters, METH_NOARGS,
     "counters($self, /)\n--\n\nA dict of every counter."},
    {"port_state", (PyCFunction)bio_switch_port_state, METH_O,
     "port_state($self, i, /)\n--\n\n"
     "0 if port i is live, else -errno: EPIPE closed, ECONNRESET exited, EPROTO isolated."},
    {"isolation_reason", (PyCFunction)bio_switch_isolation_reason, METH_O,
     "isolation_reason($self, i, /)\n--\n\nWhy port i was isolated, or None."},
    {"take_isolations", (PyCFunction)bio_switch_take_isolations, METH_NOARGS,
     "take_isolations($self, /)\n--\n\n"
     "[(i, reason)] for every port isolated since the last call (each once)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_switch_members[] = {
    {"learning", T_INT, offsetof(BioSwitch, learning), 0, "1: learn source keys"},
    {"flood_unknown", T_INT, offsetof(BioSwitch, flood_unknown), 0,
     "1: flood unknown destinations; 0: drop them (unknown_drops)"},
    {"wait_full", T_INT, offsetof(BioSwitch, wait_full), 0,
     "1: a packet waits for room in a full ring; 0: it is dropped (full_drops)"},
    {"by_mac", T_INT, offsetof(BioSwitch, by_mac), 0,
     "1: route by the frames' destination MAC addresses, learn their sources; 0: by keys"},
    {"budget", T_UINT, offsetof(BioSwitch, budget), 0, "packets per port per pass"},
    {"max_learned", T_UINT, offsetof(BioSwitch, max_learned), 0,
     "table entries a port may have learned at once (learn_limited counts the rest)"},
    {"linger_ns", T_LONGLONG, offsetof(BioSwitch, linger_ns), 0,
     "how long the switch keeps polling after traffic before it sleeps (ns)"},
    {"nic_gather_ns", T_LONGLONG, offsetof(BioSwitch, nic_gather_ns), 0,
     "after a pass took a NIC queue's frames, the switch looks at that queue again this\n"
     "much later, sleeping through the kernel's wake-ups meanwhile (ns; 0: at each one)"},
    {"nports", T_INT, offsetof(BioSwitch, nports), READONLY, "ports added"},
    {"stopping", T_INT, offsetof(BioSwitch, stop), 0,
     "1 once stop() was called: forward() returns at once (set 0 to run again)"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject BioSwitch_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.SwitchCore",
    .tp_basicsize = sizeof(BioSwitch),
    .tp_dealloc = (destructor)bio_switch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SwitchCore(efd, max_ports=64, table_size=4096)\n--\n\n"
              "Copies packets between ports by destination key (internal; see "
              "burstio.ports.Switch).",
    .tp_methods = bio_switch_methods,
    .tp_members = bio_switch_members,
    .tp_new = bio_switch_new,
};
