/* io_uring, through the system's liburing (Debian 12: 2.3).
 * For now: the capability probe. The ring backend builds on this file. */
#include "core/core.h"

#include <errno.h>
#include <liburing.h>
#include <string.h>
#include <sys/mman.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

static int
bio_uring_put(PyObject *d, const char *name, int ok, const char *detail)
{
    PyObject *v = Py_BuildValue("(Os)", ok ? Py_True : Py_False, detail);
    int r = v == NULL ? -1 : PyDict_SetItemString(d, name, v);
    Py_XDECREF(v);
    return r;
}

/* Try io_uring_queue_init with `flags`; returns 0 or -errno. */
static int
bio_uring_try_setup(unsigned flags)
{
    struct io_uring ring;
    int r = io_uring_queue_init(4, &ring, flags);
    if (r == 0)
        io_uring_queue_exit(&ring);
    return r;
}

/* Register a one-entry provided-buffer ring, mmap'd by hand (2.3 lacks
 * io_uring_setup_buf_ring). Returns 0 or -errno. */
static int
bio_uring_try_buf_ring(struct io_uring *ring)
{
    size_t size = 4096;
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                     MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)mem;
    reg.ring_entries = 1;
    reg.bgid = 0;
    int r = io_uring_register_buf_ring(ring, &reg, 0);
    if (r == 0)
        io_uring_unregister_buf_ring(ring, 0);
    munmap(mem, size);
    return r;
}

static const struct {
    const char *name;
    int op;
} bio_uring_ops[] = {
    {"io_uring_recvmsg", IORING_OP_RECVMSG},
    {"io_uring_sendmsg", IORING_OP_SENDMSG},
    {"io_uring_send_zc", IORING_OP_SEND_ZC},
    {"io_uring_sendmsg_zc", IORING_OP_SENDMSG_ZC},
    {"io_uring_poll_add", IORING_OP_POLL_ADD},
};

static int
bio_uring_probe_ring(PyObject *d, struct io_uring *ring)
{
    char detail[128];
    struct io_uring_probe *p = io_uring_get_probe_ring(ring);
    for (size_t i = 0; i < sizeof(bio_uring_ops) / sizeof(bio_uring_ops[0]); i++) {
        int ok = p != NULL && io_uring_opcode_supported(p, bio_uring_ops[i].op);
        snprintf(detail, sizeof(detail), "opcode %d %s by IORING_REGISTER_PROBE",
                 bio_uring_ops[i].op, ok ? "supported" : "not supported");
        if (bio_uring_put(d, bio_uring_ops[i].name, ok, detail) < 0) {
            io_uring_free_probe(p);
            return -1;
        }
    }
    io_uring_free_probe(p);
    int r = bio_uring_try_buf_ring(ring);
    snprintf(detail, sizeof(detail), r == 0 ? "registered a provided-buffer ring"
                                            : "IORING_REGISTER_PBUF_RING: %s",
             strerror(-r));
    return bio_uring_put(d, "io_uring_buf_ring", r == 0, detail);
}

/* probe_uring() -> dict of name -> (bool, detail) Set up rings (plain, SINGLE_ISSUER|DEFER_TASKRUN, SQPOLL), ask the kernel which opcodes it has and register a provided-buffer ring. */
PyObject *
bio_probe_uring(PyObject *self, PyObject *args)
{
    char detail[128];
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    struct io_uring ring;
    int r = io_uring_queue_init(4, &ring, 0);
    snprintf(detail, sizeof(detail), "io_uring_setup: %s",
             r == 0 ? "works" : strerror(-r));
    if (r < 0)
        return bio_uring_put(d, "io_uring", 0, detail) < 0 ? (Py_DECREF(d), NULL) : d;
    int pr = bio_uring_put(d, "io_uring", 1, detail);
    if (pr == 0)
        pr = bio_uring_probe_ring(d, &ring);
    io_uring_queue_exit(&ring);
    if (pr < 0)
        goto fail;
    r = bio_uring_try_setup(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    snprintf(detail, sizeof(detail), "setup with SINGLE_ISSUER|DEFER_TASKRUN: %s",
             r == 0 ? "works" : strerror(-r));
    if (bio_uring_put(d, "io_uring_defer_taskrun", r == 0, detail) < 0)
        goto fail;
    r = bio_uring_try_setup(IORING_SETUP_SQPOLL);
    snprintf(detail, sizeof(detail), "setup with SQPOLL: %s",
             r == 0 ? "works" : strerror(-r));
    if (bio_uring_put(d, "io_uring_sqpoll", r == 0, detail) < 0)
        goto fail;
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}
