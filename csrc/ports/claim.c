/* Port claims: which process holds a port, fork-aware.
 *
 * Liveness starts here: each party records its pid, process start time and
 * pid namespace when it claims its port (on first use in a process, so a
 * fork or an attach takes the port over and the old handle becomes stale;
 * a new generation number tells). A clean close() marks the party CLOSED
 * and kicks the peer, who then sees EPIPE; ports/wait.c watches the holder's
 * process while waiting for it. Each handle has an eventfd of its own
 * process (local_fd) that its waiters also poll: close() from another
 * thread, or a forked child taking the port over, makes it readable, so no
 * wait outlives its handle.
 *
 * Where a packet goes through it: nowhere; a ring may move packets only
 * while its port is held by the process using it (bio_port_claim_ready).
 */
#include "ports/ports.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <structmember.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- who we are (fork-aware) --------------------------------------------- */

_Atomic uint32_t bio_port_epoch = 1;
static BioPortSelf bio_port_self;

void
bio_port_atfork_child(void)
{
    atomic_fetch_add(&bio_port_epoch, 1);
}

/* Start time (clock ticks after boot) and state letter of process pid,
 * from /proc/<pid>/stat. 0, or -errno (-ENOENT: no such process). */
int
bio_port_proc_stat(int32_t pid, uint64_t *start, char *state)
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
 * fork. Called with the GIL (or from the only thread using a ring). */
const BioPortSelf *
bio_port_whoami(void)
{
    uint32_t epoch = atomic_load(&bio_port_epoch);
    if (bio_port_self.epoch != epoch) {
        struct stat st;
        char state;
        bio_port_self.pid = (int32_t)getpid();
        if (bio_port_proc_stat(bio_port_self.pid, &bio_port_self.start, &state) < 0)
            bio_port_self.start = 0;
        bio_port_self.pidns = stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
        bio_port_self.epoch = epoch;
    }
    return &bio_port_self;
}

/* ---- PortClaim: who holds a port ------------------------------------------- */

/* Wake the peer through both of our wake sockets (it may sleep on either). */
static void
bio_port_claim_wake_peer(BioPortClaim *p)
{
    for (int w = 0; w < 2; w++)
        bio_port_wake_send(p->reg->wake[p->party][w]);
}

/* Make fd readable for good (nothing reads it): whoever polls it wakes. */
static void
bio_port_claim_poke(int fd)
{
    uint64_t one = 1;
    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0)
        return; /* a full counter: readable already */
}

/* Make local_fd this process's own: after a fork the child shares the
 * parent's, so it first wakes the parent's waiters on this handle (once the
 * child holds the port they find it taken over) and then makes its own. 0,
 * or -1 with OSError. GIL. */
static int
bio_port_claim_local(BioPortClaim *p, uint32_t epoch)
{
    if (p->local_fd >= 0 && p->local_epoch == epoch)
        return 0;
    if (p->local_fd >= 0) {
        bio_port_claim_poke(p->local_fd);
        close(p->local_fd);
    }
    p->local_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->local_fd < 0) {
        bio_raise_errno(-errno);
        return -1;
    }
    p->local_epoch = epoch;
    return 0;
}

/* Claim port p for this process: record pid, start time and pid namespace,
 * then a new generation (which makes any other handle stale). ValueError
 * if a previous owner closed it. 0 or -1. GIL. */
static int
bio_port_claim_hold(BioPortClaim *p)
{
    BioPortParty *pt = &p->reg->hdr->party[p->party];
    if (atomic_load_explicit(&pt->state, memory_order_acquire) == BIO_PORT_CLOSED) {
        PyErr_Format(PyExc_ValueError, "port %d of this region was closed by its owner "
                     "(process %d)", p->party, (int)atomic_load(&pt->pid));
        return -1;
    }
    const BioPortSelf *me = bio_port_whoami();
    int32_t before = atomic_load_explicit(&pt->pid, memory_order_relaxed);
    atomic_store_explicit(&pt->pid, me->pid, memory_order_relaxed);
    atomic_store_explicit(&pt->start_time, me->start, memory_order_relaxed);
    atomic_store_explicit(&pt->pidns, me->pidns, memory_order_relaxed);
    uint32_t gen = atomic_fetch_add_explicit(&pt->generation, 1, memory_order_acq_rel) + 1;
    if (gen == 0) /* 0 means "not claimed" here */
        gen = atomic_fetch_add_explicit(&pt->generation, 1, memory_order_acq_rel) + 1;
    atomic_store_explicit(&pt->state, BIO_PORT_OPEN, memory_order_release);
    p->gen = gen;
    p->epoch = me->epoch;
    if (before != 0 && before != me->pid)
        bio_port_claim_wake_peer(p); /* taken over: a peer may be watching the previous holder */
    return bio_port_claim_local(p, me->epoch);
}

/* 0 if p may be used now: claimed by this process (claimed on first use and
 * again after a fork). ValueError (closed) or RuntimeError (another handle
 * took it over) and -1 otherwise. GIL. */
int
bio_port_claim_ready(BioPortClaim *p)
{
    if (p->closed) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on a closed port");
        return -1;
    }
    if (p->reg->kind == BIO_PORT_KIND_NIC) { /* its pump and frame table live in one process */
        if (p->reg->frames == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "a NIC port works in the process that opened "
                            "its queue: give other processes a pipe from NicPort.pipe() or a "
                            "switch port");
            return -1;
        }
        if (bio_umem_check_pid((BioUmem *)p->reg->frames) < 0)
            return -1;
    }
    if (p->gen == 0 || p->epoch != atomic_load_explicit(&bio_port_epoch, memory_order_relaxed))
        return bio_port_claim_hold(p);
    BioPortParty *pt = &p->reg->hdr->party[p->party];
    if (atomic_load_explicit(&pt->generation, memory_order_relaxed) != p->gen) {
        PyErr_Format(PyExc_RuntimeError, "port %d was taken over by process %d: this handle "
                     "is stale (one process holds a port at a time)", p->party,
                     (int)atomic_load(&pt->pid));
        return -1;
    }
    return bio_port_claim_local(p, p->epoch); /* made again if it failed before */
}

int
bio_port_claim_current(BioPortClaim *p)
{
    if (__atomic_load_n(&p->closed, __ATOMIC_ACQUIRE))
        return -ECANCELED;
    BioPortParty *pt = &p->reg->hdr->party[p->party];
    if (p->epoch != atomic_load_explicit(&bio_port_epoch, memory_order_relaxed) ||
        atomic_load_explicit(&pt->generation, memory_order_relaxed) != p->gen)
        return -ESTALE;
    return 0;
}

/* Whether this handle holds the port right now (claimed in this process,
 * not taken over since). */
static int
bio_port_claim_holds(BioPortClaim *p)
{
    BioPortParty *pt = &p->reg->hdr->party[p->party];
    return !__atomic_load_n(&p->closed, __ATOMIC_ACQUIRE) && p->gen != 0 &&
           p->epoch == atomic_load(&bio_port_epoch) && atomic_load(&pt->generation) == p->gen;
}

void
bio_port_claim_release(BioPortClaim *p)
{
    if (p->reg == NULL || __atomic_load_n(&p->closed, __ATOMIC_ACQUIRE))
        return;
    if (bio_port_claim_holds(p)) {
        atomic_store_explicit(&p->reg->hdr->party[p->party].state, BIO_PORT_CLOSED,
                              memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        bio_port_claim_wake_peer(p);
    }
    __atomic_store_n(&p->closed, 1, __ATOMIC_RELEASE);
    if (p->local_epoch == atomic_load(&bio_port_epoch)) {
        bio_port_claim_poke(p->local_fd); /* our own waiters: they see closed and raise */
    } else if (p->local_fd >= 0) {
        close(p->local_fd); /* inherited: the parent's waiters are none of our business */
        p->local_fd = -1;
    }
}

/* PortClaim(region, party): a handle; nothing is claimed until first use. */
static PyObject *
bio_port_claim_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"region", "party", NULL};
    BioPortRegion *reg;
    int party;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!i:PortClaim", kwlist, &BioPortRegion_Type,
                                     &reg, &party))
        return NULL;
    if (party != 0 && party != 1) {
        PyErr_Format(PyExc_ValueError, "party must be 0 or 1, got %d", party);
        return NULL;
    }
    if (reg->wake[party][0] < 0) {
        PyErr_Format(PyExc_ValueError, "this region has no wake sockets for port %d here (it "
                     "was received for port %d)", party, 1 - party);
        return NULL;
    }
    BioPortClaim *p = (BioPortClaim *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->reg = (BioPortRegion *)Py_NewRef(reg);
    p->party = party;
    p->local_fd = -1; /* made by the first claim: nothing can wait on it before */
    return (PyObject *)p;
}

static void
bio_port_claim_dealloc(BioPortClaim *p)
{
    bio_port_claim_release(p);
    if (p->local_fd >= 0)
        close(p->local_fd);
    Py_XDECREF(p->reg);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyObject *
bio_port_claim_close(BioPortClaim *p, PyObject *Py_UNUSED(ignored))
{
    bio_port_claim_release(p);
    Py_RETURN_NONE;
}

static PyObject *
bio_port_claim_hold_py(BioPortClaim *p, PyObject *Py_UNUSED(ignored))
{
    if (bio_port_claim_ready(p) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bio_port_claim_get_holds(BioPortClaim *p, void *c)
{
    return PyBool_FromLong(bio_port_claim_holds(p));
}

static PyMethodDef bio_port_claim_methods[] = {
    {"close", (PyCFunction)bio_port_claim_close, METH_NOARGS,
     "close($self, /)\n--\n\nGive the port up; if this handle holds it, the peer sees it closed."},
    {"claim", (PyCFunction)bio_port_claim_hold_py, METH_NOARGS,
     "claim($self, /)\n--\n\nHold the port in this process now (done by the first use anyway)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef bio_port_claim_members[] = {
    {"party", T_INT, offsetof(BioPortClaim, party), READONLY, "0 or 1: which port of the region"},
    {"region", T_OBJECT, offsetof(BioPortClaim, reg), READONLY, "the PortRegion"},
    {"closed", T_INT, offsetof(BioPortClaim, closed), READONLY, "1 once closed"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef bio_port_claim_getset[] = {
    {"holds", (getter)bio_port_claim_get_holds, NULL,
     "whether this handle holds the port now (claimed here, not taken over)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject BioPortClaim_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.PortClaim",
    .tp_basicsize = sizeof(BioPortClaim),
    .tp_dealloc = (destructor)bio_port_claim_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PortClaim(region, party)\n--\n\nOne party's hold on a port of a region (internal).",
    .tp_methods = bio_port_claim_methods,
    .tp_members = bio_port_claim_members,
    .tp_getset = bio_port_claim_getset,
    .tp_new = bio_port_claim_new,
};

