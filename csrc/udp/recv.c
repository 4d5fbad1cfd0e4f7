/* UdpIo's receive path: recvmmsg into a PacketBatch, with UDP GRO split.
 *
 * A datagram's way in: recv() -> bio_udp_recv_wait_nogil (recvmmsg, or one
 * recvmsg per datagram when recvmmsg is off; poll() when nothing is ready,
 * or, busy polling through the socket without a deadline, a recvmmsg that
 * blocks: the kernel busy polls, then sleeps)
 * -> bio_udp_recv_finish_nogil (lengths, flags, cmsgs, GRO split) -> entries of
 * the caller's PacketBatch. Policy (timeouts, GRO on/off, fallbacks) is the
 * Python BurstSocket's; this file only moves bytes and counts.
 */
#include "udp/udp.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

/* ---- receive ----------------------------------------------------------- */

/* Receive window. After u->single_after receive calls in a row that each
 * found a single datagram (a request/response peer), ask for one message at
 * a time: the receive then skips a second attempt, which would find nothing
 * (and, busy polling, poll the device once more), on the latency path. The
 * mode ends when a call finds more than one datagram or did not have to wait
 * for its datagram (it was already queued: a burst is arriving); every
 * single_after-th call in the mode also asks for the full window. Whether
 * a call waited: where its first try was non-blocking (a deadline, or busy
 * polling through the socket), whether that try found the datagram; where it
 * blocked in the receive at once, whether the call took longer than
 * BIO_UDP_RX_WAITED_NS (a sleep and a wake-up take longer). (A time mark
 * alone misjudged busy polling ping-pong, whose waits straddle it: the mode
 * flipped, paying a second receive attempt and device poll per request.) */
#define BIO_UDP_RX_WAITED_NS 5000

static int
bio_udp_recv_single_mode(const BioUdp *u)
{
    int t = u->single_after;
    return t > 0 && u->rx_singles >= t && (u->rx_singles - t + 1) % t != 0;
}

/* Messages to ask for: every slot, unless GRO could split them into more
 * entries than the batch holds, or single mode is on. */
static int
bio_udp_recv_vlen(const BioUdp *u, const BioBatch *b)
{
    Py_ssize_t v = b->slots;
    if (u->gro) {
        Py_ssize_t fit = b->capacity / (u->gro_max_segments > 0 ? u->gro_max_segments : 64);
        v = fit < 1 ? 1 : (fit < v ? fit : v);
    }
    if (bio_udp_recv_single_mode(u))
        v = 1;
    return (int)(v > BIO_MMSG_MAX ? BIO_MMSG_MAX : v);
}

/* Learn from a receive that produced `entries` datagrams; `waited`: the
 * call had to wait for its first one. */
static void
bio_udp_recv_learn(BioUdp *u, Py_ssize_t entries, int waited)
{
    int t = u->single_after;
    if (entries > 1 || (entries == 1 && !waited && bio_udp_recv_single_mode(u)))
        u->rx_singles = 0;
    else if (entries == 1 && ++u->rx_singles >= 3 * t && t > 0)
        u->rx_singles -= t; /* keep the count bounded, same phase */
}

static void
bio_udp_recv_prepare(BioBatch *b, int vlen)
{
    for (int k = 0; k < vlen; k++) {
        struct msghdr *h = &b->msgs[k].msg_hdr;
        b->iov[k].iov_base = b->arena + (size_t)k * (size_t)b->slot_size;
        b->iov[k].iov_len = (size_t)b->slot_size;
        h->msg_name = &b->names[k];
        h->msg_namelen = sizeof(struct sockaddr_in6);
        h->msg_iov = &b->iov[k];
        h->msg_iovlen = 1;
        h->msg_control = bio_batch_cmsg(b, k);
        h->msg_controllen = bio_batch_cmsg_size(b);
        h->msg_flags = 0;
    }
}

/* One receive syscall round: recvmmsg, or recvmsg for one slot (the
 * one-slot window of request/response traffic: recvmmsg's own set-up is
 * pure overhead there) or when recvmmsg is off. Returns datagrams (>= 1) or
 * -errno. nogil. */
static int
bio_udp_recv_once_nogil(BioUdp *u, BioBatch *b, int vlen, int flags)
{
    flags |= MSG_TRUNC; /* msg_len is then the datagram's real length */
    if (u->recv_mmsg && vlen > 1) {
        BIO_COUNT(u->counters, BIO_UDP_C_RX_SYSCALLS, 1);
        int r = recvmmsg(u->fd, b->msgs, (unsigned int)vlen, flags | MSG_WAITFORONE, NULL);
        return r < 0 ? -errno : r;
    }
    int n = 0;
    for (; n < vlen; n++) {
        BIO_COUNT(u->counters, BIO_UDP_C_RX_SYSCALLS, 1);
        ssize_t r = recvmsg(u->fd, &b->msgs[n].msg_hdr, flags | (n ? MSG_DONTWAIT : 0));
        if (r < 0) {
            int e = errno;
            if (n == 0)
                return -e;
            /* keep the error for the next call, as recvmmsg does */
            if (e != EAGAIN && e != EWOULDBLOCK && e != EINTR)
                u->pending_errno = e;
            break;
        }
        b->msgs[n].msg_len = (unsigned int)r;
    }
    return n;
}

/* Wait in u's busy-polling epoll instance wfd (which also holds the wake
 * eventfd) until deadline_ns: 1 woken, 0 timed out, -BIO_ECLOSED closing,
 * -errno. nogil. */
static int
bio_udp_recv_epoll_nogil(BioUdp *u, int wfd, int64_t deadline_ns)
{
    BIO_COUNT(u->counters, BIO_UDP_C_RX_SYSCALLS, 1);
    int p = bio_epoll_wait_nogil(wfd, deadline_ns);
    return bio_wake_closing(&u->wake) ? -BIO_ECLOSED : p;
}

/* Whether a receive without a deadline blocks in recvmmsg itself: block_rx
 * is on (BurstSocket turns it on), in the process that set it (a fork()ed
 * child shares the socket, and its close() must not shut the parent's
 * receive side down: it polls), and no busy-polling epoll instance is to be
 * waited in. Any thread. */
static int
bio_udp_recv_blocks(const BioUdp *u)
{
    uint32_t gen = __atomic_load_n(&u->block_gen, __ATOMIC_RELAXED);
    return gen != 0 && gen == bio_fork_gen() && __atomic_load_n(&u->wait_fd, __ATOMIC_RELAXED) < 0;
}

/* One receive that blocks in the kernel: recvmmsg(MSG_WAITFORONE) without
 * MSG_DONTWAIT (recvmsg in the one-slot window) sleeps until a datagram
 * comes, busy polling the device first for the socket's SO_BUSY_POLL: one
 * system call per wake-up, as a blocking recvfrom() makes, where poll() and
 * a receive make two (and poll() does not busy poll at all: it honours only
 * the net.core.busy_poll sysctl). close() from another thread sees rx_blocked and shuts the receive
 * side down (bio_udp_close, csrc/udp/io.c), which ends the sleep; whatever
 * the call returns then (the empty message a shut-down socket gives)
 * becomes -BIO_ECLOSED. Datagrams, -EAGAIN where the socket cannot block
 * (O_NONBLOCK, SO_RCVTIMEO), -BIO_ECLOSED, or -errno. nogil. */
static int
bio_udp_recv_blocking_nogil(BioUdp *u, BioBatch *b, int vlen, int flags)
{
    int r = -BIO_ECLOSED;
    __atomic_add_fetch(&u->rx_blocked, 1, __ATOMIC_SEQ_CST);
    /* paired with the fence in bio_udp_close: either we see its flag, or it
     * sees us inside and shuts the socket down */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!bio_wake_closing(&u->wake)) {
        bio_udp_recv_prepare(b, vlen);
        r = bio_udp_recv_once_nogil(u, b, vlen, flags & ~MSG_DONTWAIT);
    }
    __atomic_sub_fetch(&u->rx_blocked, 1, __ATOMIC_SEQ_CST);
    return bio_wake_closing(&u->wake) ? -BIO_ECLOSED : r;
}

/* Receive, waiting until deadline_ns (-1: forever) in recvmmsg itself
 * (no deadline, bio_udp_recv_blocks), in poll() on the socket
 * and the wake eventfd, or in the busy-polling epoll instance, or spinning.
 * Returns datagrams, 0 on timeout, -BIO_ECLOSED when close() woke it, or
 * -errno; *waited_out: whether the datagram had to be waited for (the
 * receive window's sign of a burst). nogil. */
static int
bio_udp_recv_wait_nogil(BioUdp *u, BioBatch *b, int vlen, int flags,
                        int64_t deadline_ns, int *waited_out)
{
    int64_t spin_end = -1;
    int first = 1, waited = 0;
    /* without a deadline, block in the receive itself; busy polling through
     * the socket (spin_us), only once the spin below has found nothing */
    int block = deadline_ns < 0 && bio_udp_recv_blocks(u);
    *waited_out = 1;
    if (block && __atomic_load_n(&u->spin_us, __ATOMIC_RELAXED) <= 0) {
        int64_t t0 = bio_now_ns(); /* did it wait? only the clock can tell here */
        int r = bio_udp_recv_blocking_nogil(u, b, vlen, flags);
        if (r != -EAGAIN && r != -EWOULDBLOCK) {
            *waited_out = bio_now_ns() - t0 > BIO_UDP_RX_WAITED_NS;
            return r;
        }
        first = block = 0; /* the socket cannot block: wait in poll() as below */
    }
    int wfd0 = __atomic_load_n(&u->wait_fd, __ATOMIC_RELAXED);
    if (wfd0 >= 0 && u->wait_first) {
        /* Request/response traffic under busy polling: the socket was empty
         * last time, so wait (polling the device) before the receive that
         * would fail. epoll_wait returns at once if a datagram is there. */
        int p = bio_udp_recv_epoll_nogil(u, wfd0, deadline_ns);
        if (p < 0 && p != -EBADF && p != -EINVAL)
            return p;
        waited = 1;
    }
    for (;;) {
        if (bio_wake_closing(&u->wake))
            return -BIO_ECLOSED;
        bio_udp_recv_prepare(b, vlen);
        int r = bio_udp_recv_once_nogil(u, b, vlen, flags);
        if (first) {
            /* wait first next time while receives empty the socket; a full
             * batch (not the one-slot window) means more is waiting:
             * receive first then */
            u->wait_first = waited ? !(vlen > 1 && r >= vlen) : (r == -EAGAIN || r == -EWOULDBLOCK);
            if (!waited && r > 0)
                *waited_out = 0; /* the first try found it queued */
            first = 0;
        }
        if (r != -EAGAIN && r != -EWOULDBLOCK)
            return r;
        int64_t now = bio_now_ns();
        if (deadline_ns >= 0 && now >= deadline_ns)
            return 0;
        int spin = __atomic_load_n(&u->spin_us, __ATOMIC_RELAXED);
        if (spin > 0 && spin_end < 0)
            spin_end = now + (int64_t)spin * 1000;
        if (now < spin_end)
            continue; /* busy poll from here: each receive polls the device once */
        if (block) {
            block = 0;
            r = bio_udp_recv_blocking_nogil(u, b, vlen, flags);
            if (r != -EAGAIN && r != -EWOULDBLOCK)
                return r;
        }
        int wfd = __atomic_load_n(&u->wait_fd, __ATOMIC_RELAXED);
        int p;
        if (wfd >= 0) {
            p = bio_udp_recv_epoll_nogil(u, wfd, deadline_ns);
        } else {
            BIO_COUNT(u->counters, BIO_UDP_C_RX_SYSCALLS, 1);
            p = bio_wake_poll_nogil(&u->wake, u->fd, POLLIN, deadline_ns);
        }
        if ((p == -EBADF || p == -EINVAL) && wfd >= 0 &&
            wfd != __atomic_load_n(&u->wait_fd, __ATOMIC_RELAXED))
            continue; /* the epoll instance was swapped out under us */
        if (p <= 0)
            return p;
    }
}

/* Read the control messages of message k (batch/cmsg.c) into its private
 * scratch, and its metadata's when the batch has some (the batch's arrays
 * are writable by other threads: what the split uses must not be). */
static void
bio_udp_recv_cmsgs(BioBatch *b, int k)
{
    const struct msghdr *h = &b->msgs[k].msg_hdr;
    size_t cap = bio_batch_cmsg_size(b);
    size_t len = h->msg_controllen < cap ? h->msg_controllen : cap;
    BioCmsgIn in;
    bio_cmsg_parse(h->msg_control, h->msg_control ? len : 0, &in);
    b->priv[k].seg = in.seg;
    b->priv[k].ts = in.ts;
    if (b->meta != NULL)
        b->meta->priv[k] = in.m;
}

static uint32_t
bio_udp_recv_stored_len(const BioBatch *b, int k)
{
    unsigned int len = b->msgs[k].msg_len;
    return len > (size_t)b->slot_size ? (uint32_t)b->slot_size : len;
}

/* Segments message k splits into (1 if not coalesced). */
static Py_ssize_t
bio_udp_recv_segments(const BioBatch *b, int k)
{
    uint32_t seg = b->priv[k].seg, stored = bio_udp_recv_stored_len(b, k);
    if (seg == 0 || stored <= seg)
        return 1;
    return (stored + seg - 1) / seg;
}

/* Write the entries of message k, starting at entry `first`, `cnt` of them.
 * Entries >= k only: called from the last message to the first, so no
 * message's own data is overwritten before it is read. */
static void
bio_udp_recv_expand(BioUdp *u, BioBatch *b, int k, Py_ssize_t first, Py_ssize_t cnt)
{
    const struct sockaddr_in6 name = b->names[k];
    const int64_t ts = b->priv[k].ts;
    BioMetaPriv meta;
    if (b->meta != NULL)
        meta = b->meta->priv[k];
    const uint32_t seg = b->priv[k].seg, stored = bio_udp_recv_stored_len(b, k);
    const int trunc = (b->msgs[k].msg_hdr.msg_flags & MSG_TRUNC) != 0;
    const uint64_t base = (uint64_t)k * (uint64_t)b->slot_size;
    const Py_ssize_t want = bio_udp_recv_segments(b, k);
    uint64_t datagrams = 0;

    for (Py_ssize_t s = cnt - 1; s >= 0; s--) {
        Py_ssize_t j = first + s;
        uint32_t off = (uint32_t)s * (want > 1 ? seg : 0);
        uint32_t len = stored - off;
        uint32_t fl = 0, sz = 0;
        if (want > 1) {
            fl = BIO_FLAG_GRO;
            sz = seg;
            if (s == cnt - 1 && cnt < want)
                fl |= BIO_FLAG_COALESCED; /* the batch ran out of entries */
            else if (len > seg)
                len = seg;
        }
        if (trunc && s == cnt - 1)
            fl |= BIO_FLAG_TRUNCATED;
        b->offsets[j] = base + off;
        b->lengths[j] = len;
        b->flags[j] = fl;
        b->segment_sizes[j] = sz;
        b->timestamps[j] = ts;
        b->sockets[j] = u->socket_index;
        b->errnos[j] = 0;
        b->names[j] = name;
        if (b->meta != NULL)
            bio_batch_meta_store(b, j, &meta);
        datagrams += (fl & BIO_FLAG_COALESCED) ? (len + seg - 1) / seg : 1;
    }
    BIO_COUNT(u->counters, BIO_UDP_C_RX_DATAGRAMS, datagrams);
    BIO_COUNT(u->counters, BIO_UDP_C_RX_BYTES, stored);
    if (want > 1) {
        BIO_COUNT(u->counters, BIO_UDP_C_RX_GRO_MESSAGES, 1);
        BIO_COUNT(u->counters, BIO_UDP_C_RX_GRO_DATAGRAMS, datagrams);
    }
    if (trunc) {
        /* count the cut datagram and any whole segments that did not fit */
        uint64_t len = b->msgs[k].msg_len;
        uint64_t lost = seg ? (len + seg - 1) / seg - ((uint64_t)stored + seg - 1) / seg : 0;
        BIO_COUNT(u->counters, BIO_UDP_C_RX_TRUNCATED, 1 + lost);
    }
}

/* Turn n received messages into entries; returns the entry count. nogil. */
Py_ssize_t
bio_udp_recv_finish_nogil(BioUdp *u, BioBatch *b, int n)
{
    Py_ssize_t total = 0;
    for (int k = 0; k < n; k++) {
        bio_udp_recv_cmsgs(b, k);
        Py_ssize_t want = bio_udp_recv_segments(b, k);
        /* leave at least one entry for every later message */
        Py_ssize_t room = b->capacity - total - (n - k - 1);
        b->msg_entry[k] = total;
        total += want < room ? want : room;
    }
    for (int k = n - 1; k >= 0; k--) {
        Py_ssize_t next = k == n - 1 ? total : b->msg_entry[k + 1];
        bio_udp_recv_expand(u, b, k, b->msg_entry[k], next - b->msg_entry[k]);
    }
    BIO_COUNT(u->counters, BIO_UDP_C_RX_BATCHES, 1);
    return total;
}

typedef struct {
    BioUdp *u;
    BioBatch *b;
    int vlen, flags, waited;
    int64_t deadline;
    Py_ssize_t entries;
} BioUdpRecv;

/* Wait, receive, turn messages into entries; messages, 0 on timeout, or
 * -errno. nogil. */
static int
bio_udp_recv_run_nogil(void *arg)
{
    BioUdpRecv *c = arg;
    int r = bio_udp_recv_wait_nogil(c->u, c->b, c->vlen, c->flags, c->deadline, &c->waited);
    if (r > 0)
        c->entries = bio_udp_recv_finish_nogil(c->u, c->b, r);
    return r;
}

const char bio_udp_recv_batch_doc[] =
"recv_batch($self, /, batch, timeout=None)\n--\n\n"
"Fill batch with the datagrams ready now, waiting up to timeout seconds\n"
"(None: forever) for the first. Returns the entry count, 0 on timeout.";

PyObject *
bio_udp_recv_batch(BioUdp *u, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"batch", "timeout", NULL};
    PyObject *a[2];
    int64_t timeout_ns;
    if (bio_args_parse("recv_batch", args, nargs, kwnames, names, 2, 1, a) < 0 ||
        bio_batch_arg("recv_batch", a[0]) < 0 ||
        bio_timeout_parse(a[1] ? a[1] : Py_None, &timeout_ns) < 0)
        return NULL;
    BioBatch *b = (BioBatch *)a[0];
    if (bio_batch_check_idle(b) < 0)
        return NULL;
    if (u->gro && b->slot_size < BIO_GRO_SLOT_MIN) {
        PyErr_Format(PyExc_ValueError,
                     "UDP GRO is on and a coalesced receive can reach 64 KiB: "
                     "the batch needs slot_size >= %d, got %zd "
                     "(e.g. PacketBatch(1024, %d, slots=16))",
                     BIO_GRO_SLOT_MIN, b->slot_size, BIO_GRO_SLOT_MIN);
        return NULL;
    }
    if (u->meta && bio_batch_meta_ensure(b) < 0)
        return NULL;
    if (u->fd < 0)
        return bio_raise_errno(-EBADF);
    if (u->pending_errno) {
        int e = u->pending_errno;
        u->pending_errno = 0;
        return bio_raise_errno(-e);
    }
    if (bio_udp_enter(u) < 0)
        return NULL;
    bio_batch_reset(b);
    /* block in recvmmsg itself only where close() can end it by a shutdown
     * (bio_udp_recv_blocking_nogil); other waits poll the wake eventfd too,
     * so that close() from another thread ends them at once */
    BioUdpRecv c = {.u = u, .b = b, .vlen = bio_udp_recv_vlen(u, b), .flags = MSG_DONTWAIT,
                    .deadline = timeout_ns < 0 ? -1 : bio_now_ns() + timeout_ns};
    b->busy = 1;
    int r = bio_nogil_retry(bio_udp_recv_run_nogil, &c);
    b->busy = 0;
    int closed = r == -BIO_ECLOSED && bio_wake_closing(&u->wake);
    bio_udp_leave(u);
    if (r == -EINTR)
        return NULL;
    if (closed)
        return bio_udp_raise_closed();
    if (r < 0)
        return bio_raise_errno(r);
    b->count = c.entries;
    b->appended = r; /* slots 0..r-1 hold what arrived; append() goes after */
    bio_udp_recv_learn(u, c.entries, c.waited);
    return PyLong_FromSsize_t(c.entries);
}
