/* C reference for burstio's xdp bench: an AF_XDP receiver written as
 * tightly as C allows, with raw system calls (no libbpf/libxdp), with the
 * ring sizes and batch burstio uses.
 *
 *   xsk MODE IFNAME QUEUE XSKMAP_FD SECONDS BATCH NAPI_PID
 *
 * MODE rxdrop: receive and give each frame straight back to the fill ring.
 * MODE l2fwd: receive, swap the Ethernet addresses in place and send the
 * same frame back out (zero copy within the UMEM); completions go back to
 * the fill ring. XSKMAP_FD is an inherited XSKMAP of the steering program
 * the bench attached; this program puts its socket at key QUEUE. It prints
 * "ready", waits for the first frame, warms up for 0.2 s, then counts for
 * SECONDS and prints one JSON line: frames, wall ns, CPU ns of this
 * process and of the NAPI thread NAPI_PID (0: none), XDP_STATISTICS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9
#endif

#define FRAMES 4096
#define FRAME_SIZE 2048
#define RING 2048

struct ring {
    uint32_t *prod, *cons, *flags;
    void *desc;
    uint32_t mask, cached_prod, cached_cons;
};

static int64_t
now_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
thread_cpu_ns(int pid)
{
    if (pid <= 0)
        return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
        return (int64_t)((ut + st) * (1000000000ULL / (unsigned long long)sysconf(_SC_CLK_TCK)));
    return 0;
}

static void
die(const char *what)
{
    fprintf(stderr, "xsk: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void
map_ring(struct ring *r, int fd, uint64_t pgoff, struct xdp_ring_offset *o, size_t esize)
{
    size_t len = o->desc + RING * esize;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, (off_t)pgoff);
    if (m == MAP_FAILED)
        die("mmap ring");
    r->prod = (uint32_t *)(m + o->producer);
    r->cons = (uint32_t *)(m + o->consumer);
    r->flags = (uint32_t *)(m + o->flags);
    r->desc = m + o->desc;
    r->mask = RING - 1;
    r->cached_prod = *r->prod;
    r->cached_cons = *r->cons;
}

/* Producer rings: free entries (reload the consumer when short). */
static inline uint32_t
prod_free(struct ring *r, uint32_t want)
{
    uint32_t free = RING - (r->cached_prod - r->cached_cons);
    if (free < want) {
        r->cached_cons = __atomic_load_n(r->cons, __ATOMIC_ACQUIRE);
        free = RING - (r->cached_prod - r->cached_cons);
    }
    return free < want ? free : want;
}

static inline void
prod_submit(struct ring *r, uint32_t n)
{
    r->cached_prod += n;
    __atomic_store_n(r->prod, r->cached_prod, __ATOMIC_RELEASE);
}

/* Consumer rings: entries ready (reload the producer when short). */
static inline uint32_t
cons_ready(struct ring *r, uint32_t want)
{
    uint32_t ready = r->cached_prod - r->cached_cons;
    if (ready < want) {
        r->cached_prod = __atomic_load_n(r->prod, __ATOMIC_ACQUIRE);
        ready = r->cached_prod - r->cached_cons;
    }
    return ready < want ? ready : want;
}

static inline void
cons_release(struct ring *r, uint32_t n)
{
    r->cached_cons += n;
    __atomic_store_n(r->cons, r->cached_cons, __ATOMIC_RELEASE);
}

struct xsk {
    int fd;
    unsigned char *umem;
    struct ring fill, comp, rx, tx;
};

static void
setup(struct xsk *x, const char *ifname, uint32_t queue, int map_fd)
{
    x->umem = mmap(NULL, (size_t)FRAMES * FRAME_SIZE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (x->umem == MAP_FAILED)
        die("mmap umem");
    if ((x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0)) < 0)
        die("socket(AF_XDP)");
    struct xdp_umem_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.addr = (uint64_t)(uintptr_t)x->umem;
    reg.len = (uint64_t)FRAMES * FRAME_SIZE;
    reg.chunk_size = FRAME_SIZE;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) < 0)
        die("XDP_UMEM_REG");
    int n = RING;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &n, sizeof(n)) < 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &n, sizeof(n)) < 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &n, sizeof(n)) < 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &n, sizeof(n)) < 0)
        die("ring sizes");
    struct xdp_mmap_offsets off;
    socklen_t len = sizeof(off);
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &len) < 0)
        die("XDP_MMAP_OFFSETS");
    map_ring(&x->fill, x->fd, XDP_UMEM_PGOFF_FILL_RING, &off.fr, sizeof(uint64_t));
    map_ring(&x->comp, x->fd, XDP_UMEM_PGOFF_COMPLETION_RING, &off.cr, sizeof(uint64_t));
    map_ring(&x->rx, x->fd, XDP_PGOFF_RX_RING, &off.rx, sizeof(struct xdp_desc));
    map_ring(&x->tx, x->fd, XDP_PGOFF_TX_RING, &off.tx, sizeof(struct xdp_desc));
    struct sockaddr_xdp sa;
    memset(&sa, 0, sizeof(sa));
    sa.sxdp_family = AF_XDP;
    sa.sxdp_ifindex = if_nametoindex(ifname);
    sa.sxdp_queue_id = queue;
    sa.sxdp_flags = XDP_COPY | XDP_USE_NEED_WAKEUP;
    if (bind(x->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("bind");
    unsigned int budget = RING; /* as burstio: copy-mode sends up to a ring per sendto() */
    setsockopt(x->fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget, sizeof(budget));
    /* half the frames in the fill ring, as burstio starts */
    uint32_t k = prod_free(&x->fill, RING);
    for (uint32_t i = 0; i < k; i++)
        ((uint64_t *)x->fill.desc)[(x->fill.cached_prod + i) & x->fill.mask] = (uint64_t)i * FRAME_SIZE;
    prod_submit(&x->fill, k);
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    uint32_t key = queue, value = (uint32_t)x->fd;
    a.map_fd = (uint32_t)map_fd;
    a.key = (uint64_t)(uintptr_t)&key;
    a.value = (uint64_t)(uintptr_t)&value;
    if (syscall(__NR_bpf, BPF_MAP_UPDATE_ELEM, &a, sizeof(a)) < 0)
        die("XSKMAP update");
}

/* rxdrop: up to batch frames, straight back to the fill ring. */
static uint32_t
rxdrop_once(struct xsk *x, uint32_t batch)
{
    uint32_t n = cons_ready(&x->rx, batch);
    if (n == 0)
        return 0;
    uint32_t room = prod_free(&x->fill, n); /* frames recycle one for one: always n */
    const struct xdp_desc *d = x->rx.desc;
    uint64_t *f = x->fill.desc;
    for (uint32_t i = 0; i < room; i++)
        f[(x->fill.cached_prod + i) & x->fill.mask] =
            d[(x->rx.cached_cons + i) & x->rx.mask].addr & ~(uint64_t)(FRAME_SIZE - 1);
    prod_submit(&x->fill, room);
    cons_release(&x->rx, n);
    return n;
}

/* l2fwd: up to batch frames, MACs swapped, back out on the tx ring;
 * completed frames back to the fill ring. */
static uint32_t
l2fwd_once(struct xsk *x, uint32_t batch)
{
    uint32_t done = cons_ready(&x->comp, RING);
    if (done) {
        uint32_t room = prod_free(&x->fill, done);
        for (uint32_t i = 0; i < room; i++)
            ((uint64_t *)x->fill.desc)[(x->fill.cached_prod + i) & x->fill.mask] =
                ((uint64_t *)x->comp.desc)[(x->comp.cached_cons + i) & x->comp.mask] &
                ~(uint64_t)(FRAME_SIZE - 1);
        prod_submit(&x->fill, room);
        cons_release(&x->comp, room);
    }
    uint32_t n = cons_ready(&x->rx, batch);
    n = prod_free(&x->tx, n);
    if (n == 0)
        return 0;
    for (uint32_t i = 0; i < n; i++) {
        struct xdp_desc d = ((struct xdp_desc *)x->rx.desc)[(x->rx.cached_cons + i) & x->rx.mask];
        unsigned char *p = x->umem + d.addr, mac[6];
        memcpy(mac, p, 6);
        memcpy(p, p + 6, 6);
        memcpy(p + 6, mac, 6);
        ((struct xdp_desc *)x->tx.desc)[(x->tx.cached_prod + i) & x->tx.mask] = d;
    }
    prod_submit(&x->tx, n);
    cons_release(&x->rx, n);
    while (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno == EAGAIN &&
           __atomic_load_n(x->tx.cons, __ATOMIC_ACQUIRE) != x->tx.cached_prod) {
        uint32_t c = cons_ready(&x->comp, RING); /* completion ring full: give frames back */
        uint32_t room = prod_free(&x->fill, c);
        for (uint32_t i = 0; i < room; i++)
            ((uint64_t *)x->fill.desc)[(x->fill.cached_prod + i) & x->fill.mask] =
                ((uint64_t *)x->comp.desc)[(x->comp.cached_cons + i) & x->comp.mask] &
                ~(uint64_t)(FRAME_SIZE - 1);
        prod_submit(&x->fill, room);
        cons_release(&x->comp, room);
    }
    return n;
}

/* Wait in poll() (copy mode never asks for a wakeup through the flag). */
static void
wait_rx(struct xsk *x)
{
    if (*x->fill.flags & XDP_RING_NEED_WAKEUP)
        recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    struct pollfd p = {.fd = x->fd, .events = POLLIN};
    poll(&p, 1, 100);
}

int
main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: xsk rxdrop|l2fwd IFNAME QUEUE XSKMAP_FD SECONDS BATCH NAPI_PID\n");
        return 2;
    }
    int fwd = strcmp(argv[1], "l2fwd") == 0;
    double seconds = atof(argv[5]);
    uint32_t batch = (uint32_t)atoi(argv[6]);
    int napi = atoi(argv[7]);
    struct xsk x;
    setup(&x, argv[2], (uint32_t)atoi(argv[3]), atoi(argv[4]));
    printf("ready\n");
    fflush(stdout);
    uint32_t (*once)(struct xsk *, uint32_t) = fwd ? l2fwd_once : rxdrop_once;
    int64_t deadline = now_ns(CLOCK_MONOTONIC) + 20000000000LL;
    while (once(&x, batch) == 0) { /* the first frame */
        if (now_ns(CLOCK_MONOTONIC) > deadline) {
            fprintf(stderr, "xsk: no frame in 20 s\n");
            return 1;
        }
        wait_rx(&x);
    }
    int64_t warm = now_ns(CLOCK_MONOTONIC) + 200000000;
    while (now_ns(CLOCK_MONOTONIC) < warm)
        if (once(&x, batch) == 0)
            wait_rx(&x);
    uint64_t frames = 0;
    int64_t t0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    int64_t n0 = thread_cpu_ns(napi), end = t0 + (int64_t)(seconds * 1e9);
    for (uint32_t k = 0;; k++) {
        uint32_t n = once(&x, batch);
        frames += n;
        if (n == 0)
            wait_rx(&x);
        if ((k & 63) == 0 && now_ns(CLOCK_MONOTONIC) >= end)
            break;
    }
    int64_t t1 = now_ns(CLOCK_MONOTONIC), c1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    int64_t n1 = thread_cpu_ns(napi);
    struct xdp_statistics s;
    socklen_t len = sizeof(s);
    memset(&s, 0, sizeof(s));
    getsockopt(x.fd, SOL_XDP, XDP_STATISTICS, &s, &len);
    printf("{\"frames\": %llu, \"ns\": %lld, \"cpu_ns\": %lld, \"napi_cpu_ns\": %lld, "
           "\"stats\": {\"rx_dropped\": %llu, \"rx_ring_full\": %llu, \"rx_fill_ring_empty_descs\": %llu, "
           "\"rx_invalid_descs\": %llu}}\n",
           (unsigned long long)frames, (long long)(t1 - t0), (long long)(c1 - c0),
           (long long)(n1 - n0), (unsigned long long)s.rx_dropped,
           (unsigned long long)s.rx_ring_full, (unsigned long long)s.rx_fill_ring_empty_descs,
           (unsigned long long)s.rx_invalid_descs);
    return 0;
}
