/* The io_uring capability probe, through the system's liburing (Debian 12:
 * 2.3): which setup flags, opcodes and buffer rings this kernel has, found
 * by trying them. Python (src/burstio/_caps.py) decides what to use.
 *
 * Where a datagram goes through it: nowhere; the probe tells whether
 * SocketSet (socketset/uring.c) and zero-copy send (zerocopy/uring.c) can
 * take the io_uring path.
 */
#include "probe/probe.h"
#include "core/compat.h"

#include <errno.h>
#include <liburing.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static int
bio_probe_uring_put(PyObject *d, const char *name, int ok, const char *detail)
{
    PyObject *v = Py_BuildValue("(Os)", ok ? Py_True : Py_False, detail);
    int r = v == NULL ? -1 : PyDict_SetItemString(d, name, v);
    Py_XDECREF(v);
    return r;
}

/* Try io_uring_queue_init with `flags`; returns 0 or -errno. */
static int
bio_probe_uring_try_setup(unsigned flags)
{
    struct io_uring uring;
    int r = io_uring_queue_init(4, &uring, flags);
    if (r == 0)
        io_uring_queue_exit(&uring);
    return r;
}

/* Register a one-entry buffer ring (provided buffers), mmap'd by hand (2.3 lacks
 * io_uring_setup_buf_ring). Returns 0 or -errno. */
static int
bio_probe_uring_try_buf_ring(struct io_uring *uring)
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
    int r = io_uring_register_buf_ring(uring, &reg, 0);
    if (r == 0)
        io_uring_unregister_buf_ring(uring, 0);
    munmap(mem, size);
    return r;
}

/* Register NAPI busy polling (1 us) on `uring` and take it back (liburing 2.3
 * has no wrapper: the raw system call, as napi/napi.c makes it). Returns 0
 * or -errno. */
static int
bio_probe_uring_try_napi(struct io_uring *uring)
{
    struct bio_uring_napi napi;
    memset(&napi, 0, sizeof(napi));
    napi.busy_poll_to = 1;
    if (syscall(__NR_io_uring_register, uring->ring_fd, IORING_REGISTER_NAPI, &napi, 1) < 0)
        return -errno;
    memset(&napi, 0, sizeof(napi));
    if (syscall(__NR_io_uring_register, uring->ring_fd, IORING_UNREGISTER_NAPI, &napi, 1) < 0)
        return -errno;
    return 0;
}

static const struct {
    const char *name;
    int op;
} bio_probe_uring_ops[] = {
    {"io_uring_recvmsg", IORING_OP_RECVMSG},
    {"io_uring_sendmsg", IORING_OP_SENDMSG},
    {"io_uring_send_zc", IORING_OP_SEND_ZC},
    {"io_uring_sendmsg_zc", IORING_OP_SENDMSG_ZC},
    {"io_uring_poll_add", IORING_OP_POLL_ADD},
};

static int
bio_probe_uring_probe_ops(PyObject *d, struct io_uring *uring)
{
    char detail[128];
    struct io_uring_probe *p = io_uring_get_probe_ring(uring);
    for (size_t i = 0; i < sizeof(bio_probe_uring_ops) / sizeof(bio_probe_uring_ops[0]); i++) {
        int ok = p != NULL && io_uring_opcode_supported(p, bio_probe_uring_ops[i].op);
        snprintf(detail, sizeof(detail), "opcode %d %s by IORING_REGISTER_PROBE",
                 bio_probe_uring_ops[i].op, ok ? "supported" : "not supported");
        if (bio_probe_uring_put(d, bio_probe_uring_ops[i].name, ok, detail) < 0) {
            io_uring_free_probe(p);
            return -1;
        }
    }
    io_uring_free_probe(p);
    int r = bio_probe_uring_try_buf_ring(uring);
    snprintf(detail, sizeof(detail), r == 0 ? "registered a provided-buffer ring"
                                            : "IORING_REGISTER_PBUF_RING: %s",
             strerror(-r));
    if (bio_probe_uring_put(d, "io_uring_buf_ring", r == 0, detail) < 0)
        return -1;
    r = bio_probe_uring_try_napi(uring);
    snprintf(detail, sizeof(detail), r == 0 ? "registered and unregistered NAPI busy polling"
                                            : "IORING_REGISTER_NAPI: %s (Linux >= 6.9)",
             strerror(-r));
    return bio_probe_uring_put(d, "io_uring_napi", r == 0, detail);
}

/* probe_uring() -> dict of name -> (bool, detail): set up io_urings (plain,
 * SINGLE_ISSUER|DEFER_TASKRUN, SQPOLL), ask the kernel which opcodes it has,
 * register a buffer ring and NAPI busy polling. */
PyObject *
bio_probe_uring(PyObject *self, PyObject *args)
{
    char detail[128];
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    struct io_uring uring;
    int r = io_uring_queue_init(4, &uring, 0);
    snprintf(detail, sizeof(detail), "io_uring_setup: %s",
             r == 0 ? "works" : strerror(-r));
    if (r < 0)
        return bio_probe_uring_put(d, "io_uring", 0, detail) < 0 ? (Py_DECREF(d), NULL) : d;
    int pr = bio_probe_uring_put(d, "io_uring", 1, detail);
    if (pr == 0)
        pr = bio_probe_uring_probe_ops(d, &uring);
    io_uring_queue_exit(&uring);
    if (pr < 0)
        goto fail;
    r = bio_probe_uring_try_setup(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    snprintf(detail, sizeof(detail), "setup with SINGLE_ISSUER|DEFER_TASKRUN: %s",
             r == 0 ? "works" : strerror(-r));
    if (bio_probe_uring_put(d, "io_uring_defer_taskrun", r == 0, detail) < 0)
        goto fail;
    r = bio_probe_uring_try_setup(IORING_SETUP_SQPOLL);
    snprintf(detail, sizeof(detail), "setup with SQPOLL: %s",
             r == 0 ? "works" : strerror(-r));
    if (bio_probe_uring_put(d, "io_uring_sqpoll", r == 0, detail) < 0)
        goto fail;
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}
