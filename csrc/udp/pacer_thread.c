/* The pacer's sender thread: no GIL, no Python object, every signal blocked
 * (the interpreter's handlers run in its own threads).
 *
 * Where a datagram goes through it: the entry at the head of the pacer's
 * queue (udp/pacer.c put it there) -> bio_pacer_wait_due sleeps until its
 * release time (bio_pacer_release_time: its transmit time when it starts a
 * flow, else centred on what the release carries): a futex wait to that
 * absolute CLOCK_MONOTONIC deadline (close() cuts it short; queue() signals
 * the condition variable only when the thread waits for an entry, since a
 * new entry never goes before the head), with the thread's timer slack at
 * 1 ns -> bio_pacer_collect makes messages of every entry due within half
 * the release's span of now (the pacer's slack, half of it in a dense flow:
 * bio_pacer_span; GSO runs of consecutive entries of one socket,
 * destination, local address and codepoint: they leave together, so their
 * times need not match) -> bio_pacer_send:
 * sendmmsg per run of messages on one socket; a full socket (EAGAIN) is
 * waited for in poll(POLLOUT), not spun on; a refusal is recorded per
 * datagram; GSO or a codepoint the kernel refuses (EIO/EINVAL) is dropped
 * for this pacer, counted, and the datagrams sent without it (the run-time
 * downgrade of udp/send.c's policy, which Python cannot run from this
 * thread: it reads the counters).
 *
 * What a release costs: one wake-up (14-19 us of CPU in the KVM guest we
 * measured, whatever the primitive: clock_nanosleep, a timerfd or a
 * condition variable, timer slack 1 ns or 50 us; two timer writes, a
 * timer interrupt and a halt of the idle vCPU, each a VM exit of ~3.6 us),
 * one clock_gettime (vDSO, no syscall) and one sendmmsg. A slack S makes
 * one wake-up carry every datagram due within S/2 of it, and the release
 * time centres it on them: one wake-up per S in a steady flow, each
 * datagram within S/2 of its time either way (plus the wake-up latency),
 * where waking at the head's time would send each up to S early for as
 * many wake-ups. In a dense flow (BIO_PACER_DENSE datagrams due within S/2)
 * a release spans S/2 instead: a wake-up per S/2 that still carries that
 * many, each datagram within S/4 of its time. Releases are at least S/4
 * apart in any case (half the span of the one before).
 *
 * The wake-up latency: the thread asks the scheduler for a short slice
 * (bio_pacer_short_slice), so that a busy thread on its CPU (the
 * application's own, typically) does not hold its release back for the
 * rest of that thread's slice.
 */
#include "udp/pacer.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static struct timespec
bio_pacer_ts(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    return ts;
}

void
bio_pacer_kick(BioPacer *p)
{
    __atomic_add_fetch(&p->kick, 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &p->kick, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Sleep until the absolute CLOCK_MONOTONIC time ts or a bio_pacer_kick,
 * whichever first (or spuriously: the caller looks again). mu held on entry
 * and return, released while sleeping. A futex wait of its own, not
 * pthread_cond_timedwait: glibc takes the mutex back from a condition wait
 * as if contended, so the next unlock is a FUTEX_WAKE syscall, one more per
 * release for no waiter. */
static void
bio_pacer_sleep_until(BioPacer *p, const struct timespec *ts)
{
    uint32_t seen = __atomic_load_n(&p->kick, __ATOMIC_ACQUIRE); /* a kick after this: no sleep */
    pthread_mutex_unlock(&p->mu);
    syscall(SYS_futex, &p->kick, FUTEX_WAIT_BITSET_PRIVATE, seen, ts, NULL, FUTEX_BITSET_MATCH_ANY);
    pthread_mutex_lock(&p->mu);
}

void
bio_pacer_notify(BioPacer *p)
{
    uint64_t one = 1;
    if (p->note_efd >= 0 && write(p->note_efd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, a reader will look anyway */
    }
}

void
bio_pacer_record_error(BioPacer *p, const BioPacerEntry *e, int err)
{
    BIO_COUNT(p->counters, BIO_PACER_C_TX_ERRORS, 1);
    pthread_mutex_lock(&p->mu);
    if (p->nerr < BIO_PACER_ERRORS) {
        BioPacerError *r = &p->errors[p->nerr++];
        r->seq = e->seq;
        r->err = err;
        r->name = e->name;
    } else {
        BIO_COUNT(p->counters, BIO_PACER_C_PACED_ERRORS_DROPPED, 1);
    }
    pthread_mutex_unlock(&p->mu);
    bio_pacer_notify(p);
}

/* How much of the schedule the release that takes the head spans (the
 * pacer's slack S): S/2 in a dense flow, where BIO_PACER_DENSE entries from
 * the head on are due within S/2 of it, else S. A release spanning L sends
 * each datagram within L/2 of its time, for a wake-up per L: where a flow is
 * dense, a wake-up per S/2 still carries BIO_PACER_DENSE datagrams or more,
 * so the precision costs little CPU per datagram (a wake-up costs about ten
 * sends here); a sparse flow keeps one wake-up per S. mu held. */
static int64_t
bio_pacer_span(const BioPacer *p, int64_t slack)
{
    if (slack <= 0 || p->tail - p->head < BIO_PACER_DENSE)
        return slack;
    int64_t t = bio_pacer_entry(p, p->head)->meta.txtime;
    int64_t u = bio_pacer_entry(p, p->head + BIO_PACER_DENSE - 1)->meta.txtime;
    return u - t <= slack / 2 ? slack / 2 : slack; /* an earlier time than the head's is due with it */
}

/* When the release that takes the head goes (its span L, bio_pacer_span;
 * half of it H): a release sends every entry due within H of its time, so
 * none leaves more than H early. A head due by `now` goes now (a late
 * datagram leaves at once). It starts a flow (the head is due more than the
 * slack after the previous release's reach `last_until`, or the pacer was
 * idle) at the head's time; within a flow it goes at the earliest time that
 * keeps that bound for the entries due within L of the head: the last of
 * them, t_last, less H, but not before the head's time. So a flow's
 * releases are centred on the datagrams they carry, each datagram within H
 * of its time either way, at one wake-up per L, where going at the head's
 * time would make each up to L early. mu held. */
static int64_t
bio_pacer_release_time(const BioPacer *p, int64_t slack, int64_t span, int64_t last_until, int64_t now)
{
    int64_t t = bio_pacer_entry(p, p->head)->meta.txtime, t_last = t;
    if (span <= 0 || t <= now || last_until < 0 || t - last_until > slack)
        return t;
    for (uint64_t pos = p->head + 1; pos < p->tail && pos - p->head < BIO_PACER_ROUND; pos++) {
        int64_t u = bio_pacer_entry(p, pos)->meta.txtime;
        if (u - t > span) /* both >= 0: no overflow */
            break;
        t_last = u > t_last ? u : t_last;
    }
    return t_last - span / 2 > t ? t_last - span / 2 : t;
}

/* Wait until the head entry's release is due (1, *span: the span it was
 * timed with) or close() began (0): one timed wait to its release time
 * (bio_pacer_release_time), the only wake-up of a release, one futex
 * syscall. mu held on entry and return; released while waiting. */
static int
bio_pacer_wait_due(BioPacer *p, int64_t last_until, int64_t *span)
{
    int64_t due = INT64_MAX; /* the head's release time, once known */
    for (;;) {
        if (bio_wake_closing(&p->wake))
            return 0;
        if (p->head == p->tail) {
            p->idle = 1; /* queue() signals us */
            pthread_cond_wait(&p->cv, &p->mu);
            p->idle = 0;
            continue;
        }
        /* entries queued meanwhile may put it later: the time already waited for stands, with
         * its span; a head due at the first look goes now, one that became due while waited
         * for, when its release time comes */
        int64_t now = bio_now_ns(), slack = __atomic_load_n(&p->slack_ns, __ATOMIC_RELAXED);
        int64_t sp = bio_pacer_span(p, slack);
        int64_t t = bio_pacer_release_time(p, slack, sp, last_until, due == INT64_MAX ? now : -1);
        if (t < due) {
            due = t;
            *span = sp;
        }
        if (due <= now)
            return 1;
        struct timespec ts = bio_pacer_ts(due);
        bio_pacer_sleep_until(p, &ts);
    }
}

/* Whether two entries of one release may share a message: one local
 * address and codepoint. Their transmit times may differ: the release has
 * honoured them (the pacer's messages carry no SCM_TXTIME). */
static int
bio_pacer_same_meta(const BioMetaPriv *a, const BioMetaPriv *b)
{
    return memcmp(&a->local, &b->local, sizeof(a->local)) == 0 && a->ifindex == b->ifindex &&
           a->ecn == b->ecn;
}

/* Entries from position pos (at most `room`, each due by `until`) that one
 * GSO message carries: one socket, destination, local address and
 * codepoint, one size (the last may be shorter), within the payload limit.
 * mu held. */
static Py_ssize_t
bio_pacer_run(const BioPacer *p, uint64_t pos, Py_ssize_t room, int64_t until)
{
    const BioPacerEntry *e = bio_pacer_entry(p, pos);
    size_t seg = e->len, total = seg;
    Py_ssize_t run = 1;
    if (!p->gso || seg == 0)
        return 1;
    while (run < room && run < p->gso_max_segments && pos + (uint64_t)run < p->tail) {
        const BioPacerEntry *f = bio_pacer_entry(p, pos + (uint64_t)run);
        if (f->meta.txtime > until || f->len == 0 || f->len > seg ||
            total + f->len > BIO_MAX_UDP_PAYLOAD ||
            f->sock != e->sock || memcmp(&f->name, &e->name, sizeof(e->name)) != 0 ||
            !bio_pacer_same_meta(&f->meta, &e->meta))
            break;
        total += f->len;
        run++;
        if (f->len < seg)
            break;
    }
    return run;
}

/* Point message m at entries [first, first + run) from head on. */
static void
bio_pacer_fill(BioPacer *p, int m, Py_ssize_t first, Py_ssize_t run)
{
    const BioPacerEntry *e = bio_pacer_entry(p, p->head + (uint64_t)first);
    struct msghdr *h = &p->msgs[m].msg_hdr;
    memset(h, 0, sizeof(*h));
    for (Py_ssize_t r = 0; r < run; r++) {
        const BioPacerEntry *f = bio_pacer_entry(p, p->head + (uint64_t)(first + r));
        p->iov[first + r].iov_base = bio_pacer_payload(p, f);
        p->iov[first + r].iov_len = f->len;
    }
    socklen_t namelen = bio_addr_len(&e->name);
    h->msg_name = namelen ? (void *)&e->name : NULL;
    h->msg_namelen = namelen;
    h->msg_iov = &p->iov[first];
    h->msg_iovlen = (size_t)run;
    BioCmsgOut c = {.segment = run > 1 ? (uint16_t)e->len : 0, .m = &e->meta,
                    .ecn = __atomic_load_n(&p->ecn_cmsg, __ATOMIC_RELAXED),
                    .dscp = (uint8_t)p->dscp};
    bio_cmsg_build(h, p->cmsg[m], &c);
    p->msg_ecn[m] = c.ecn;
    if (e->meta.ecn && !c.ecn)
        BIO_COUNT(p->counters, BIO_PACER_C_TX_ECN_UNMARKED, run);
    p->msg_first[m] = first;
}

/* Make messages of the entries due by `until`, from head on (up to
 * BIO_PACER_MSGS messages, BIO_PACER_ROUND entries); returns how many
 * entries they hold, *nmsg the messages, *more whether entries due by
 * `until` are left for another round of this release. mu held. */
static Py_ssize_t
bio_pacer_collect(BioPacer *p, int64_t until, int *nmsg, int *more)
{
    Py_ssize_t n = 0;
    int m = 0;
    while (p->head + (uint64_t)n < p->tail && m < BIO_PACER_MSGS && n < BIO_PACER_ROUND) {
        if (bio_pacer_entry(p, p->head + (uint64_t)n)->meta.txtime > until)
            break;
        Py_ssize_t run = bio_pacer_run(p, p->head + (uint64_t)n, BIO_PACER_ROUND - n, until);
        bio_pacer_fill(p, m++, n, run);
        n += run;
    }
    *nmsg = m;
    *more = p->head + (uint64_t)n < p->tail &&
            bio_pacer_entry(p, p->head + (uint64_t)n)->meta.txtime <= until;
    return n;
}

/* Wait for fd to take more (POLLOUT) or close(): 0, or -BIO_ECLOSED. */
static int
bio_pacer_wait_writable(BioPacer *p, int fd)
{
    BIO_COUNT(p->counters, BIO_PACER_C_PACED_WAITS, 1);
    int r;
    do
        r = bio_wake_poll_nogil(&p->wake, fd, POLLOUT, -1);
    while (r == -EINTR);
    return r == -BIO_ECLOSED ? r : 0;
}

/* Count a message the kernel took. */
static void
bio_pacer_account(BioPacer *p, const struct msghdr *h)
{
    uint64_t bytes = 0;
    for (size_t r = 0; r < h->msg_iovlen; r++)
        bytes += h->msg_iov[r].iov_len;
    BIO_COUNT(p->counters, BIO_PACER_C_TX_DATAGRAMS, h->msg_iovlen);
    BIO_COUNT(p->counters, BIO_PACER_C_TX_BYTES, bytes);
    if (h->msg_iovlen > 1) {
        BIO_COUNT(p->counters, BIO_PACER_C_TX_GSO_MESSAGES, 1);
        BIO_COUNT(p->counters, BIO_PACER_C_TX_GSO_DATAGRAMS, h->msg_iovlen);
    }
}

/* Send entry e alone, with its codepoint when `ecn`: 0 or the errno; a full
 * socket is waited for (-BIO_ECLOSED: close() came meanwhile). */
static int
bio_pacer_send_one(BioPacer *p, int fd, const BioPacerEntry *e, int ecn, unsigned char *cm)
{
    struct iovec iov = {.iov_base = bio_pacer_payload(p, e), .iov_len = e->len};
    struct msghdr h;
    memset(&h, 0, sizeof(h));
    socklen_t namelen = bio_addr_len(&e->name);
    h.msg_name = namelen ? (void *)&e->name : NULL;
    h.msg_namelen = namelen;
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    BioCmsgOut c = {.m = &e->meta, .ecn = ecn, .dscp = (uint8_t)p->dscp};
    bio_cmsg_build(&h, cm, &c);
    for (;;) {
        BIO_COUNT(p->counters, BIO_PACER_C_TX_SYSCALLS, 1);
        if (sendmsg(fd, &h, MSG_DONTWAIT) >= 0) {
            bio_pacer_account(p, &h);
            return 0;
        }
        int err = errno;
        if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)
            return err;
        if (err != EINTR && bio_pacer_wait_writable(p, fd) < 0)
            return BIO_ECLOSED;
    }
}

/* The kernel refused message k (err): when GSO or a codepoint may be what
 * it refused (EIO/EINVAL), send its datagrams one by one, then without the
 * codepoint, and drop what went that way for this pacer (counted); record
 * what still fails. 0, or -BIO_ECLOSED. */
static int
bio_pacer_refused(BioPacer *p, int fd, int k, int err)
{
    const struct msghdr *h = &p->msgs[k].msg_hdr;
    Py_ssize_t first = p->msg_first[k];
    /* EMSGSIZE on a GSO run: each of its datagrams alone tells which are too big */
    int retry = err == EIO || err == EINVAL || (err == EMSGSIZE && h->msg_iovlen > 1);
    int gso_refused = err == EIO || err == EINVAL;
    unsigned char cm[BIO_CMSG_WIDE] __attribute__((aligned(8)));
    for (size_t r = 0; r < h->msg_iovlen; r++) {
        const BioPacerEntry *e = bio_pacer_entry(p, p->head + (uint64_t)first + r);
        int ecn = __atomic_load_n(&p->ecn_cmsg, __ATOMIC_RELAXED);
        int e2 = retry ? bio_pacer_send_one(p, fd, e, ecn, cm) : err;
        if (e2 == EINVAL && ecn && e->meta.ecn) { /* the codepoint refused? */
            ecn = 0;
            e2 = bio_pacer_send_one(p, fd, e, 0, cm);
            if (e2 == 0 && __atomic_exchange_n(&p->ecn_cmsg, 0, __ATOMIC_RELAXED))
                BIO_COUNT(p->counters, BIO_PACER_C_ECN_DOWNGRADES, 1);
        }
        if (e2 == BIO_ECLOSED)
            return -BIO_ECLOSED;
        /* went alone as the message would have: GSO was what the kernel refused */
        if (e2 == 0 && gso_refused && h->msg_iovlen > 1 && (ecn || !e->meta.ecn || !p->msg_ecn[k]) &&
            __atomic_exchange_n(&p->gso, 0, __ATOMIC_RELAXED))
            BIO_COUNT(p->counters, BIO_PACER_C_GSO_DOWNGRADES, 1);
        if (e2 == 0 && e->meta.ecn && !ecn && p->msg_ecn[k])
            BIO_COUNT(p->counters, BIO_PACER_C_TX_ECN_UNMARKED, 1);
        if (e2 != 0)
            bio_pacer_record_error(p, e, e2);
    }
    return 0;
}

/* Messages [k, end) all go to fds[k]'s socket: how far that run reaches. */
static int
bio_pacer_same_socket(const BioPacer *p, int k, int nmsg)
{
    int32_t s = bio_pacer_entry(p, p->head + (uint64_t)p->msg_first[k])->sock;
    int end = k + 1;
    while (end < nmsg && bio_pacer_entry(p, p->head + (uint64_t)p->msg_first[end])->sock == s)
        end++;
    return end;
}

/* Send messages [0, nmsg) (n entries). Returns the entries done, sent or
 * refused: all n, or fewer when close() came while a socket was full. */
static Py_ssize_t
bio_pacer_send(BioPacer *p, int nmsg, Py_ssize_t n, const int *fds)
{
    int k = 0;
    while (k < nmsg) {
        int end = bio_pacer_same_socket(p, k, nmsg), fd = fds[k];
        BIO_COUNT(p->counters, BIO_PACER_C_TX_SYSCALLS, 1);
        int r = sendmmsg(fd, &p->msgs[k], (unsigned)(end - k), MSG_DONTWAIT);
        for (int i = 0; i < r; i++)
            bio_pacer_account(p, &p->msgs[k + i].msg_hdr);
        if (r > 0) {
            k += r;
            continue;
        }
        int err = r < 0 ? errno : EAGAIN;
        if (err == EINTR)
            continue;
        if ((err == EAGAIN || err == EWOULDBLOCK) && bio_pacer_wait_writable(p, fd) == 0)
            continue;
        if ((err == EAGAIN || err == EWOULDBLOCK) || bio_pacer_refused(p, fd, k, err) < 0)
            return p->msg_first[k]; /* closing: the rest is unsent */
        k++;
    }
    return n;
}

/* The socket of each message (the table may change between rounds). mu held. */
static void
bio_pacer_fds(const BioPacer *p, int nmsg, int *fds)
{
    for (int k = 0; k < nmsg; k++) {
        int32_t s = bio_pacer_entry(p, p->head + (uint64_t)p->msg_first[k])->sock;
        fds[k] = s >= 0 && s < p->nfds ? p->fds[s] : -1;
    }
}

/* Entries [head, head + done) are finished: free their room; wake the
 * calls waiting for room, or for the queue to drain once it has. mu held. */
static void
bio_pacer_advance(BioPacer *p, Py_ssize_t done)
{
    if (done > 0) {
        const BioPacerEntry *last = bio_pacer_entry(p, p->head + (uint64_t)done - 1);
        p->bhead = last->off + last->len;
        p->head += (uint64_t)done;
    }
    p->sending = 0;
    if (__atomic_load_n(&p->waiters, __ATOMIC_ACQUIRE) > 0 ||
        __atomic_load_n(&p->want_room, __ATOMIC_RELAXED) ||
        (p->head == p->tail && __atomic_load_n(&p->drainers, __ATOMIC_ACQUIRE) > 0))
        bio_pacer_notify(p); /* a flush() is woken once, when the queue has drained */
}

/* The scheduler slice the thread asks for (ns): the shortest the kernel takes. */
#define BIO_PACER_SCHED_SLICE_NS 100000ULL

/* Ask for a short scheduler slice, keeping the policy, niceness and
 * reset-on-fork the thread inherited: a fair thread that asks for a shorter
 * slice (sched_attr.sched_runtime, Linux >= 6.12, no privilege needed) gets
 * an earlier deadline when it wakes, so it preempts a thread that is busy on
 * its CPU at once instead of at the end of that thread's slice (measured
 * here, a busy thread on the pacer's CPU: wake-up lateness p99 3-5 ms with
 * the default slice, about 1 ms with this one). A thread that runs 0.1 ms
 * without sleeping is preempted sooner by its peers; the pacer's releases
 * run a few tens of us. Older kernels ignore or refuse it: best effort, the
 * thread runs either way. Own thread, before its first wait. */
static void
bio_pacer_short_slice(void)
{
    BioSchedAttr a;
    memset(&a, 0, sizeof(a));
    if (syscall(SYS_sched_getattr, 0, &a, (unsigned)sizeof(a), 0U) != 0 ||
        (a.sched_policy != SCHED_OTHER && a.sched_policy != SCHED_BATCH))
        return; /* a real-time or deadline thread is left as it is */
    a.size = sizeof(a);
    a.sched_flags &= SCHED_FLAG_RESET_ON_FORK;
    a.sched_runtime = BIO_PACER_SCHED_SLICE_NS;
    a.sched_deadline = a.sched_period = 0;
    if (syscall(SYS_sched_setattr, 0, &a, 0U) != 0) {
        /* EINVAL, EPERM on a kernel or sandbox that refuses it: the default slice */
    }
}

static void *
bio_pacer_main(void *arg)
{
    BioPacer *p = arg;
    int fds[BIO_PACER_MSGS];
    /* wake at the deadline, not up to 50 us after (the CPU a wake-up costs is the same) */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    bio_pacer_short_slice();
    pthread_setname_np(pthread_self(), "burstio-pacer"); /* top -H, perf: the pacer's own line */
    int more = 0; /* the release under way has entries left for another round */
    int64_t until = -1; /* the reach of the last release (-1: none yet) */
    int64_t span = 0;   /* the span of the release under way */
    pthread_mutex_lock(&p->mu);
    /* a release: one wait, then rounds of sends until what is due by its `until` has gone */
    while (more ? !bio_wake_closing(&p->wake) : bio_pacer_wait_due(p, until, &span)) {
        if (!more) {
            until = bio_now_ns() + span / 2;
            BIO_COUNT(p->counters, BIO_PACER_C_PACED_RELEASES, 1);
        }
        int nmsg;
        Py_ssize_t n = bio_pacer_collect(p, until, &nmsg, &more);
        bio_pacer_fds(p, nmsg, fds);
        p->sending = 1;
        pthread_mutex_unlock(&p->mu);
        Py_ssize_t done = bio_pacer_send(p, nmsg, n, fds);
        pthread_mutex_lock(&p->mu);
        bio_pacer_advance(p, done);
    }
    p->sending = 0;
    pthread_mutex_unlock(&p->mu);
    bio_pacer_notify(p);
    return NULL;
}

int
bio_pacer_start(BioPacer *p)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread inherits the mask */
    int err = pthread_create(&p->thread, NULL, bio_pacer_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0)
        return -err;
    p->running = 1;
    return 0;
}
