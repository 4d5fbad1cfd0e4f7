/* Port rings: waiting for the peer, and watching its process.
 *
 * Notification suppression: a side that must wait lingers (spins on the
 * other side's position) for `linger_ns`, then sets its sleeping flag and
 * the position it waits for, fences, re-checks, and sleeps in poll() on
 * its eventfd. The other side, after publishing, fences and kicks (writes
 * the eventfd) only if that side sleeps and the position was reached; an
 * exchange on the flag makes that one kick per sleep (ports/ring.c). Both
 * fences are seq_cst: of "I publish, then look at your flag" and "I raise
 * my flag, then look at your position" at least one sees the other's store.
 *
 * Liveness: a side about to sleep watches the peer's process with a pidfd
 * (checked against the start time its claim recorded, ports/claim.c, so a
 * reused pid is not mistaken for the peer); the pidfd turning readable
 * means the peer exited: ECONNRESET instead of a hang. A clean close()
 * marks the party CLOSED and kicks: EPIPE. A sleeper also polls its own
 * handle's local_fd: a close() in another thread of this process (or a
 * forked child taking the port over) ends the wait at once.
 *
 * Nothing the peer writes can make a wait spin or block: a wake-up is a
 * datagram on our own end of a socketpair, read without blocking; the
 * peer's flags only decide whether we kick it.
 *
 * Where a packet goes through it: nowhere; a side with no room (TX) or
 * nothing to read (RX) waits here until the peer's position moves.
 */
#include "ports/ports.h"

#include <errno.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- watching the peer's process ------------------------------------------- */

/* 1 if process pid is the one that started at `start` and has not exited;
 * 1 as well when /proc cannot tell. nogil-safe. */
static int
bio_port_alive(int32_t pid, uint64_t start)
{
    uint64_t s;
    char state;
    int r = bio_port_proc_stat(pid, &s, &state);
    if (r == -ENOENT || r == -ESRCH)
        return 0;
    if (r < 0)
        return 1;
    return (start == 0 || s == start) && state != 'Z' && state != 'X';
}

/* Stop watching the peer's process (close its pidfd). nogil-safe. */
void
bio_port_ring_unwatch(BioPortRing *g)
{
    if (g->watch_fd >= 0)
        close(g->watch_fd);
    g->watch_fd = -1;
    g->watch_proc = 0;
    g->watch_pid = 0;
}

/* Keep the watch on the peer's process current: a pidfd on the process
 * that claimed the peer party, opened once per claim and checked against
 * the start time it recorded (a reused pid is not the peer), or /proc
 * checks where pidfd_open is refused. Nothing is watched when the peer is
 * this process or lives in another pid namespace. 0, or -ECONNRESET when
 * the peer's process is gone. nogil-safe (one thread per ring). */
int
bio_port_ring_watch(BioPortRing *g)
{
    BioPortParty *pt = &g->reg->hdr->party[1 - g->party];
    uint32_t gen = atomic_load_explicit(&pt->generation, memory_order_acquire);
    if (gen == g->watch_gen)
        return g->watch_proc && !bio_port_alive(g->watch_pid, g->watch_start) ? -ECONNRESET : 0;
    bio_port_ring_unwatch(g);
    int32_t pid = atomic_load_explicit(&pt->pid, memory_order_relaxed);
    uint64_t start = atomic_load_explicit(&pt->start_time, memory_order_relaxed);
    uint64_t ns = atomic_load_explicit(&pt->pidns, memory_order_relaxed);
    if (atomic_load_explicit(&pt->generation, memory_order_acquire) != gen)
        return 0; /* a claim in progress: look again next time */
    g->watch_gen = gen;
    const BioPortSelf *me = bio_port_whoami();
    if (gen == 0 || pid <= 0 || pid == me->pid || ns != me->pidns)
        return 0;
    g->watch_pid = pid;
    g->watch_start = start;
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0 && errno == ESRCH)
        return -ECONNRESET;
    if (fd < 0)
        g->watch_proc = 1;
    else
        g->watch_fd = fd;
    /* the pidfd names whoever has the pid now: make sure that is the peer */
    return bio_port_alive(pid, start) ? 0 : -ECONNRESET;
}

/* Milliseconds for poll() from now until `until` (-1: none). */
static int
bio_port_poll_ms(int64_t until)
{
    if (until < 0)
        return -1;
    int64_t now = bio_now_ns(), left = until > now ? (until - now + 999999) / 1000000 : 0;
    return left > 0x7fffffff ? 0x7fffffff : (int)left;
}

int
bio_port_poll_nogil(BioPortClaim *p, int fd, short events, int64_t deadline)
{
    struct pollfd f[2] = {{.fd = fd, .events = events}, {.fd = p->local_fd, .events = POLLIN}};
    int r = bio_port_claim_current(p);
    if (r < 0)
        return r;
    int ms = bio_port_poll_ms(deadline);
    if (ms == 0)
        return 0;
    int n = poll(f, 2, ms);
    if (n < 0)
        return -errno;
    r = bio_port_claim_current(p);
    if (r < 0)
        return r;
    if (n > 0 && (f[0].revents & POLLNVAL))
        return -EBADF;
    return f[0].revents ? 1 : 0;
}

/* Poll g's wake socket, the handle's local_fd (and the peer's pidfd) until
 * the deadline (-1: none), in slices of BIO_PORT_CHECK_NS when there is no
 * pidfd to watch (peer unclaimed, in this process, or no pidfd here), so
 * that a new claimant is noticed. Returns 1 (look again), 0 (deadline),
 * -ECONNRESET (peer exited), -ECANCELED / -ESTALE (handle closed or taken
 * over) or -errno. nogil. */
static int
bio_port_ring_poll_nogil(BioPortRing *g, int64_t deadline)
{
    struct pollfd p[3] = {{.fd = g->sleep_fd, .events = POLLIN},
                          {.fd = g->port->local_fd, .events = POLLIN},
                          {.fd = g->watch_fd, .events = POLLIN}};
    int64_t until = deadline, now = bio_now_ns();
    if (g->watch_fd < 0 && (until < 0 || until > now + BIO_PORT_CHECK_NS))
        until = now + BIO_PORT_CHECK_NS;
    int n = poll(p, g->watch_fd >= 0 ? 3 : 2, bio_port_poll_ms(until));
    if (n < 0)
        return -errno;
    int r = bio_port_claim_current(g->port);
    if (r < 0)
        return r;
    if (n > 0 && g->watch_fd >= 0 && p[2].revents)
        return -ECONNRESET;
    if (n > 0 && (p[0].revents & POLLNVAL))
        return -EBADF;
    if (n > 0 && p[0].revents) {
        if (bio_port_wake_drain(g->sleep_fd) > 0)
            BIO_COUNT(g->me->counters, BIO_PORT_C_WAKEUPS, 1);
        return 1;
    }
    return deadline >= 0 && bio_now_ns() >= deadline ? 0 : 1;
}

/* Sleep until the peer's position reaches `at`: raise our flag with the
 * position (seq_cst, then a fence), look once more, and only then poll.
 * Returns 1 (look again), 0 (deadline), -ECONNRESET, -ECANCELED, -ESTALE
 * or -errno. nogil. */
static int
bio_port_ring_sleep_nogil(BioPortRing *g, uint32_t at, int64_t deadline)
{
    int r = bio_port_ring_watch(g);
    if (r < 0)
        return r;
    atomic_store_explicit(&g->me->wake_at, at, memory_order_relaxed);
    atomic_store_explicit(&g->me->sleeping, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with the publisher's fence */
    uint32_t other = atomic_load_explicit(&g->peer->pos, memory_order_acquire);
    r = 1;
    if ((int32_t)(other - at) < 0 && bio_port_ring_peer_state(g) != BIO_PORT_CLOSED) {
        BIO_COUNT(g->me->counters, BIO_PORT_C_SLEEPS, 1);
        r = bio_port_ring_poll_nogil(g, deadline);
    }
    atomic_store_explicit(&g->me->sleeping, 0, memory_order_relaxed);
    return r;
}

/* Spin until the peer's position reaches `at`, the clock reaches `end` or
 * the handle is closed. 1 if the position did. nogil. */
static int
bio_port_ring_linger(BioPortRing *g, uint32_t at, int64_t end)
{
    for (;;) {
        for (int i = 0; i < 64; i++) {
            uint32_t other = atomic_load_explicit(&g->peer->pos, memory_order_relaxed);
            if ((int32_t)(other - at) >= 0)
                return 1;
            bio_port_pause();
        }
        if (bio_now_ns() >= end || __atomic_load_n(&g->port->closed, __ATOMIC_RELAXED))
            return 0;
    }
}

/* ---- waiting ---------------------------------------------------------------- */

/* Wait until `want` slots lie beyond cur: linger, then sleep, until then.
 * Returns 1 (there), 0 (deadline), -EPIPE (peer closed), -ECONNRESET (peer
 * exited), -EBADMSG (corrupt), -ECANCELED (closed here), -ESTALE (taken
 * over) or -EINTR. Resumable. nogil. */
int
bio_port_ring_wait_nogil(void *arg)
{
    BioPortWait *w = arg;
    BioPortRing *g = w->g;
    uint32_t at = g->cur + w->want - (g->side == BIO_PORT_PROD ? g->cap : 0);
    for (;;) {
        int closed = bio_port_ring_peer_state(g) == BIO_PORT_CLOSED; /* before the position */
        int r = bio_port_claim_current(g->port);
        if (r == 0)
            r = bio_port_ring_refresh(g);
        if (r < 0)
            return r;
        if ((uint32_t)(g->tail - g->cur) >= w->want)
            return 1;
        if (closed)
            return -EPIPE;
        int64_t now = bio_now_ns();
        if (w->deadline >= 0 && now >= w->deadline)
            break;
        if (now < w->linger_end) {
            if (bio_port_ring_linger(g, at, w->linger_end))
                BIO_COUNT(g->me->counters, BIO_PORT_C_LINGER_HITS, 1);
            continue;
        }
        r = bio_port_ring_sleep_nogil(g, at, w->deadline);
        if (r == -ECONNRESET && bio_port_ring_peer_state(g) == BIO_PORT_CLOSED)
            continue; /* it closed, then exited: a clean end (next turn) */
        if (r < 0)
            return r;
        if (r == 0)
            break;
    }
    BIO_COUNT(g->me->counters, BIO_PORT_C_TIMEOUTS, 1);
    return 0;
}

