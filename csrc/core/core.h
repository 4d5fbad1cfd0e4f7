/* burstio._native: the small core that every C file of the extension includes.
 *
 * Conventions:
 *  - functions are named bio_<area>_<action>; internal ones return 0 (or a
 *    count) or -errno;
 *  - functions whose name ends in _nogil run with the GIL released and never
 *    touch Python objects; bio_nogil_retry (core/wait.c) is the one place
 *    that releases the GIL, retries EINTR and runs the signal handlers;
 *  - OSError is raised only at the Python boundary (bio_raise_errno);
 *  - every counter is a uint64_t that only BIO_COUNT adds to and that is read
 *    with a relaxed atomic load (bio_counters_dict);
 *  - a bad argument is worded as src/burstio/_checks.py words it
 *    (bio_args_int).
 *
 * Each subsystem has its own header (batch/batch.h, udp/udp.h, ...), seen only
 * by the files that need its structs; kernel and liburing constants that
 * older headers lack are in core/compat.h.
 */
#ifndef BIO_CORE_H
#define BIO_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <netinet/in.h>
#include <stdint.h>
#include <errno.h>
#include <sys/types.h>
#include <sys/socket.h>

/* Add n to counter `index` of the uint64_t array `array`: a relaxed atomic
 * add, so that a reader in another thread (or, for a port ring, another
 * process) never sees a torn value. The one way counters are counted. */
#define BIO_COUNT(array, index, n) \
    ((void)__atomic_fetch_add(&(array)[(index)], (uint64_t)(n), __ATOMIC_RELAXED))

/* ---- memory (core/memory.c) ----------------------------------------------- */

/* One mmap'd region exposed through the buffer protocol; unmapped when the
 * last user lets go. */
typedef struct {
    PyObject_HEAD
    unsigned char *ptr;
    size_t size;
} BioMemory;

extern PyTypeObject BioMemory_Type;
/* mmap `size` zeroed private bytes and fault them in (with the GIL
 * released); NULL with OSError set. Called with the GIL. */
BioMemory *bio_memory_new(size_t size);
/* Own an existing mapping of `size` bytes at ptr (munmap'd with the object);
 * NULL with an error set, and then ptr is unmapped. */
BioMemory *bio_memory_wrap(void *ptr, size_t size);
int bio_memory_init_type(PyObject *module);

/* ---- arguments (core/args.c) ---------------------------------------------- */

/* Map METH_FASTCALL|METH_KEYWORDS arguments onto out[] (borrowed; NULL when
 * absent) by the NULL-terminated `names`: the first max_pos may come by
 * position, the first `required` must come. Returns 0, or -1 with
 * TypeError set in the wording CPython uses. */
int bio_args_parse(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames, const char *const *names, int max_pos,
                   int required, PyObject **out);
/* The int argument `name`: TypeError "NAME must be int, got TYPE" unless obj
 * is an int (bool is not; an object with __index__, a numpy integer, is),
 * ValueError "NAME must be between LO and HI, got VALUE" unless lo <= it <=
 * hi. 0 with *out set, or -1 with the error set. */
int bio_args_int(const char *name, PyObject *obj, long long lo, long long hi, long long *out);
/* The same for an argument that may be None (or absent: obj NULL): then
 * *out is left alone and 1 is returned; the TypeError says "int or None". */
int bio_args_int_or_none(const char *name, PyObject *obj, long long lo, long long hi,
                         long long *out);
/* bio_args_int's type check alone, for a caller that words its own range
 * error: 0, or -1 with the TypeError ("int or None" when or_none, and then
 * None passes). */
int bio_args_int_type(const char *name, PyObject *obj, int or_none);
/* A C-contiguous buffer of obj: TypeError (not bytes-like) or ValueError (not
 * contiguous) otherwise. 0 or -1; release with PyBuffer_Release. */
int bio_args_contiguous(PyObject *obj, Py_buffer *view);

/* ---- counters (core/counters.c) ------------------------------------------- */

/* A dict {name: value} of n counters (each read with a relaxed atomic load,
 * so another thread's updates are never torn), or NULL with an error. */
PyObject *bio_counters_dict(const uint64_t *counters, const char *const *names, int n);
/* The index of counter `name`, or -1 with KeyError set. */
int bio_counters_find(const char *const *names, int n, const char *name);
/* count(name, n): add n to the counter called name (policy code in Python
 * counts what it does). None, or NULL with an error. */
PyObject *bio_counters_count_py(uint64_t *counters, const char *const *names, int n,
                                PyObject *args);

/* ---- addresses (core/addr.c) ---------------------------------------------- */

/* Parse (host, port) or (host, port, flowinfo, scope_id) with a numeric
 * host into *out. Returns 0, or -1 with TypeError/ValueError set. */
int bio_addr_parse(PyObject *addr, struct sockaddr_in6 *out);
/* Build the socket-module style tuple for a stored address; None if the
 * family is 0. New reference or NULL. */
PyObject *bio_addr_build(const struct sockaddr_in6 *sa);
/* Length of the sockaddr stored in sa (0: none). */
socklen_t bio_addr_len(const struct sockaddr_in6 *sa);

/* ---- waiting and errors (core/wait.c) ------------------------------------- */

int64_t bio_now_ns(void);
/* Milliseconds from now until deadline_ns, rounded up so a wait never ends
 * early: -1 for no deadline (deadline_ns < 0), 0 once it has passed, at most
 * INT_MAX. The timeout for poll(2) and epoll_wait(2). */
int bio_deadline_ms(int64_t deadline_ns);
/* Poll fd for `events` until deadline_ns (-1: forever). Returns 1 ready,
 * 0 timed out, -errno (EINTR included). nogil. */
int bio_poll_nogil(int fd, short events, int64_t deadline_ns);
/* epoll_wait(epfd) for one event until deadline_ns (-1: forever): 1 ready,
 * 0 timeout, -errno. The epoll instance's own busy-poll parameters make the
 * wait busy poll. nogil. */
int bio_epoll_wait_nogil(int epfd, int64_t deadline_ns);
/* Convert a timeout in seconds (None: forever) to ns, -1 meaning forever.
 * Returns 0, or -1 with TypeError/ValueError set. */
int bio_timeout_parse(PyObject *timeout, int64_t *ns);
/* Raise OSError for -err (err < 0) and return NULL. */
PyObject *bio_raise_errno(int err);
/* The one place that drops the GIL for a blocking call: run fn(ctx)
 * without the GIL until it returns something other than -EINTR; on -EINTR
 * run the signal handlers (PEP 475) and call it again, or return -EINTR
 * with the handler's exception set. fn must resume where it stopped (its
 * progress lives in ctx). Called with the GIL. */
int bio_nogil_retry(int (*fn)(void *ctx), void *ctx);
/* Set `sent` on the pending exception (a signal handler raised part way
 * through a send): the caller can tell how far the send got. */
void bio_exc_note_sent(Py_ssize_t sent);

/* ---- close wakes every waiter; fork (core/wait.c) ------------------------- */

/* What an object's close() uses to wake the calls blocked in it: an
 * eventfd that every wait polls along with what it waits for, and a flag.
 * close() sets `closing` and writes the eventfd: every waiter wakes at once,
 * sees the flag and returns -BIO_ECLOSED; the descriptors are closed by the
 * last call to leave (`users`), never under a waiter. `fork_gen` is the
 * process generation the eventfd was made in: a child re-makes its own. */
typedef struct {
    int efd;           /* eventfd, -1: none yet */
    int closing;       /* set once by close(); read with atomic loads */
    int users;         /* calls in progress (counted with the GIL) */
    uint32_t fork_gen; /* bio_fork_gen() when efd was made */
    pid_t pid;         /* the process that made the object */
} BioWake;

/* What a wait returns when close() woke it. */
#define BIO_ECLOSED EBADF

/* The process generation: bumped in a child after fork() (pthread_atfork). */
uint32_t bio_fork_gen(void);
/* Install the pthread_atfork hook (module init). 0, or -1 with an error. */
int bio_fork_init(void);
/* Set w up (its eventfd, this process). 0 or -errno. */
int bio_wake_init(BioWake *w);
/* In a child after fork(): replace the inherited eventfd (the parent's close
 * would wake us) by one of our own. 0 or -errno. GIL held. */
int bio_wake_refresh(BioWake *w);
/* Whether close() has begun. Any thread, GIL or not. */
int bio_wake_closing(const BioWake *w);
/* close(): set the flag and wake every waiter of this process (a fork()ed
 * child's copy that has no eventfd of its own writes none). Any thread. */
void bio_wake_kick(BioWake *w);
/* Close the eventfd (the object is done). */
void bio_wake_fini(BioWake *w);
/* Whether this process made the object (0: a fork()ed child holds a copy). */
int bio_wake_same_process(const BioWake *w);
/* Poll fd for `events` and w's eventfd until deadline_ns (-1: forever).
 * 1 fd ready, 0 timed out, -BIO_ECLOSED closing, -errno. nogil. */
int bio_wake_poll_nogil(const BioWake *w, int fd, short events, int64_t deadline_ns);

/* A send made with MSG_DONTWAIT found socket fd full (EAGAIN). A
 * non-blocking socket reports it: -EAGAIN. A blocking one waits for room
 * as the kernel would inside the send, but in poll() on fd (POLLOUT) and
 * w's eventfd, so that close() ends the wait: -BIO_ECLOSED. Like the
 * kernel's, the wait lasts at most the socket's SO_SNDTIMEO (*timeo_ns:
 * read at a call's first wait when -2; 0: none), then -EAGAIN. 0: send
 * again; -errno. Every send path that may block goes through here. nogil. */
int bio_wake_wait_writable_nogil(const BioWake *w, int fd, int64_t *timeo_ns);

/* ---- kernel constants (core/constants.c) ---------------------------------- */

/* Add the kernel constants the extension was compiled with to the module. */
int bio_constants_init(PyObject *module);

#endif /* BIO_CORE_H */
