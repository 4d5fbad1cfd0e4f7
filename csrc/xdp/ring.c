/* The four AF_XDP rings (fill, completion, rx, tx): their mapping and the
 * single-producer/single-consumer protocol with the kernel.
 *
 * Each ring is a power-of-two array of descriptors with a producer and a
 * consumer index shared with the kernel. The side that produces writes its
 * descriptors, then publishes the producer index with a store-release; the
 * side that consumes reads the producer with a load-acquire before it reads
 * the descriptors, and hands them back by publishing its consumer index with
 * a store-release once it has read them (so the producer's load-acquire of
 * the consumer orders its rewrite after our reads). Both sides keep a cached
 * copy of the other's index and reload it only when the cache runs short.
 *
 * Where a frame goes through it: its address on the fill ring (ours to the
 * kernel), its descriptor on the rx ring (the kernel's to us), on the tx
 * ring (ours to the kernel) and its address on the completion ring (back).
 */
#include "xdp/xdp.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

int
bio_ring_map(BioXskRing *r, int fd, uint64_t pgoff, const struct xdp_ring_offset *off,
             uint32_t size, size_t esize)
{
    size_t len = off->desc + (size_t)size * esize;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     (off_t)pgoff);
    if (map == MAP_FAILED)
        return -errno;
    r->map = map;
    r->map_len = len;
    r->producer = (uint32_t *)((char *)map + off->producer);
    r->consumer = (uint32_t *)((char *)map + off->consumer);
    r->flags = (uint32_t *)((char *)map + off->flags);
    r->desc = (char *)map + off->desc;
    r->size = size;
    r->cached_prod = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
    r->cached_cons = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
    return 0;
}

void
bio_ring_unmap(BioXskRing *r)
{
    if (r->map != NULL)
        munmap(r->map, r->map_len);
    memset(r, 0, sizeof(*r));
}

uint32_t
bio_ring_prod_free(BioXskRing *r, uint32_t want)
{
    uint32_t free = r->size - (r->cached_prod - r->cached_cons);
    if (free >= want)
        return want;
    r->cached_cons = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
    free = r->size - (r->cached_prod - r->cached_cons);
    return free < want ? free : want;
}

void
bio_ring_prod_submit(BioXskRing *r, uint32_t n)
{
    r->cached_prod += n;
    __atomic_store_n(r->producer, r->cached_prod, __ATOMIC_RELEASE);
}

uint32_t
bio_ring_cons_ready(BioXskRing *r, uint32_t want)
{
    uint32_t ready = r->cached_prod - r->cached_cons;
    if (ready < want) {
        r->cached_prod = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
        ready = r->cached_prod - r->cached_cons;
    }
    return ready < want ? ready : want;
}

void
bio_ring_cons_release(BioXskRing *r, uint32_t n)
{
    r->cached_cons += n;
    __atomic_store_n(r->consumer, r->cached_cons, __ATOMIC_RELEASE);
}

int
bio_ring_needs_wakeup(const BioXskRing *r)
{
    return r->flags != NULL && (__atomic_load_n(r->flags, __ATOMIC_RELAXED) & XDP_RING_NEED_WAKEUP);
}
