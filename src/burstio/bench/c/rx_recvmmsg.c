/* C reference for burstio's receive benchmarks: drain a pre-filled UDP
 * socket with recvmmsg, as a careful C program would, and report.
 *
 *   rx_recvmmsg FD BATCH SLOT_SIZE [--wait]
 *
 * FD is an inherited, already bound UDP socket. With --wait, read one byte
 * from stdin first (so a syscall counter can attach). Prints one JSON line:
 * datagrams, bytes, wall ns, CPU ns and recvmmsg calls of the drain.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t
now_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: rx_recvmmsg FD BATCH SLOT_SIZE [--wait]\n");
        return 2;
    }
    int fd = atoi(argv[1]);
    unsigned int vlen = (unsigned int)atoi(argv[2]);
    size_t slot = (size_t)atol(argv[3]);
    char *buf = malloc(vlen * slot);
    struct mmsghdr *msgs = calloc(vlen, sizeof(*msgs));
    struct iovec *iov = calloc(vlen, sizeof(*iov));
    struct sockaddr_in6 *names = calloc(vlen, sizeof(*names));
    if (!buf || !msgs || !iov || !names)
        return 1;
    for (unsigned int i = 0; i < vlen; i++) {
        iov[i].iov_base = buf + i * slot;
        iov[i].iov_len = slot;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &names[i];
    }
    if (argc > 4) {
        char go;
        if (read(0, &go, 1) != 1)
            return 1;
    }
    uint64_t datagrams = 0, bytes = 0, calls = 0;
    int64_t t0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (;;) {
        for (unsigned int i = 0; i < vlen; i++)
            msgs[i].msg_hdr.msg_namelen = sizeof(names[i]);
        calls++;
        int r = recvmmsg(fd, msgs, vlen, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            perror("recvmmsg");
            return 1;
        }
        datagrams += (uint64_t)r;
        for (int i = 0; i < r; i++)
            bytes += msgs[i].msg_len;
    }
    int64_t t1 = now_ns(CLOCK_MONOTONIC), c1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    printf("{\"datagrams\": %llu, \"bytes\": %llu, \"ns\": %lld, \"cpu_ns\": %lld, "
           "\"calls\": %llu}\n",
           (unsigned long long)datagrams, (unsigned long long)bytes, (long long)(t1 - t0),
           (long long)(c1 - c0), (unsigned long long)calls);
    return 0;
}
