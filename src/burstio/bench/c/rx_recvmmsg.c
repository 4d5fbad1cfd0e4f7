/* C reference for burstio's receive benchmarks: drain a pre-filled UDP
 * socket with recvmmsg, as a careful C program would, and report.
 *
 *   rx_recvmmsg FD BATCH SLOT_SIZE
 *
 * FD is an inherited, already bound UDP socket. The program lives as long as
 * the benchmark and serves one drain per command, so it is as warm as the
 * Python side: its buffers are touched once at start-up (no page fault in a
 * timed drain), and the bench runs untimed warm-up drains before the timed
 * ones. Commands, one per line on stdin:
 *
 *   drain   drain the socket until it is empty; print one JSON line:
 *           datagrams, bytes, wall ns, CPU ns and recvmmsg calls of the drain
 *
 * End of input ends the program.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    unsigned int vlen;
    char *buf;
    struct mmsghdr *msgs;
    struct iovec *iov;
    struct sockaddr_in6 *names;
} Drainer;

typedef struct {
    uint64_t datagrams, bytes, calls;
    int64_t ns, cpu_ns;
} DrainResult;

/* The clock's time in ns. */
static int64_t
now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Allocate the drainer's arrays and touch every page of them once; 0 or -1. */
static int
drainer_init(Drainer *d, int fd, unsigned int vlen, size_t slot)
{
    d->fd = fd;
    d->vlen = vlen;
    d->buf = malloc(vlen * slot);
    d->msgs = calloc(vlen, sizeof(*d->msgs));
    d->iov = calloc(vlen, sizeof(*d->iov));
    d->names = calloc(vlen, sizeof(*d->names));
    if (!d->buf || !d->msgs || !d->iov || !d->names)
        return -1;
    memset(d->buf, 0, vlen * slot); /* pre-fault: no page fault while timed */
    for (unsigned int i = 0; i < vlen; i++) {
        d->iov[i].iov_base = d->buf + i * slot;
        d->iov[i].iov_len = slot;
        d->msgs[i].msg_hdr.msg_iov = &d->iov[i];
        d->msgs[i].msg_hdr.msg_iovlen = 1;
        d->msgs[i].msg_hdr.msg_name = &d->names[i];
    }
    return 0;
}

/* recvmmsg until the socket is empty; 0, or -1 with errno set. */
static int
drainer_run(Drainer *d, DrainResult *out)
{
    memset(out, 0, sizeof(*out));
    int64_t t0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (;;) {
        for (unsigned int i = 0; i < d->vlen; i++)
            d->msgs[i].msg_hdr.msg_namelen = sizeof(d->names[i]);
        out->calls++;
        int r = recvmmsg(d->fd, d->msgs, d->vlen, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            return -1;
        }
        out->datagrams += (uint64_t)r;
        for (int i = 0; i < r; i++)
            out->bytes += d->msgs[i].msg_len;
    }
    out->ns = now_ns(CLOCK_MONOTONIC) - t0;
    out->cpu_ns = now_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: rx_recvmmsg FD BATCH SLOT_SIZE\n");
        return 2;
    }
    Drainer d;
    if (drainer_init(&d, atoi(argv[1]), (unsigned int)atoi(argv[2]), (size_t)atol(argv[3])) < 0) {
        perror("rx_recvmmsg: allocating");
        return 1;
    }
    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        if (strcmp(line, "drain\n") != 0) {
            fprintf(stderr, "rx_recvmmsg: unknown command %s", line);
            return 2;
        }
        DrainResult r;
        if (drainer_run(&d, &r) < 0) {
            perror("recvmmsg");
            return 1;
        }
        printf("{\"datagrams\": %llu, \"bytes\": %llu, \"ns\": %lld, \"cpu_ns\": %lld, "
               "\"calls\": %llu}\n",
               (unsigned long long)r.datagrams, (unsigned long long)r.bytes, (long long)r.ns,
               (long long)r.cpu_ns, (unsigned long long)r.calls);
        fflush(stdout);
    }
    return 0;
}
