/* What burstio's XDP programs share: the section and map-declaration
 * conventions src/burstio/xdp/_bpf.py loads (no BTF, no libbpf), the few
 * helpers they call, and a header parse that finds a frame's addresses,
 * protocol and destination port behind up to two VLAN tags and IPv6
 * extension headers.
 *
 * Conventions: a program's code is in section "xdp", its license in
 * "license"; each map is a `struct bio_map` in section "maps", and the
 * loader creates one map per symbol there and patches its descriptor into
 * every ld_imm64 that the relocations of ".relxdp" point at the symbol.
 *
 * Where a frame goes through it: every frame the device receives is parsed
 * by bio_parse() in the driver hook, before the kernel's stack sees it.
 */
#ifndef BIO_BPF_H
#define BIO_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/types.h>

#define SEC(name) __attribute__((section(name), used))
#define BIO_INLINE static inline __attribute__((always_inline))

/* A map declaration: the loader creates a map of this shape per symbol. */
struct bio_map {
    __u32 type, key_size, value_size, max_entries, flags;
};
#define BIO_MAP(name, kind, key, value, entries) \
    struct bio_map name SEC("maps") = {kind, sizeof(key), sizeof(value), entries, 0}

/* Helpers, by their number in the kernel's helper table (linux/bpf.h). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;

#define bio_htons(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define bio_ntohs(x) bio_htons(x)

/* What the rules look at. Addresses are 16 bytes as two words; an IPv4
 * address is in the first 4 bytes, the rest zero. */
struct bio_key {
    __u64 src[2], dst[2];
    __u8 family;    /* 4 or 6 */
    __u8 proto;     /* IP protocol (after IPv6 extension headers) */
    __u8 has_ports; /* a TCP or UDP header is there (not a later fragment) */
    __u8 pad;
    __u16 dport;    /* host order */
};

#define BIO_PARSE_OK 0
#define BIO_PARSE_NOT_IP -1

/* How far bio_parse() reads: every field a rule can name, or only what
 * tells the IP version (the Ethernet type behind the VLAN tags, and that
 * the IP header is there and sound). Rules that name nothing but the
 * version (Rule(), family rules) leave the rest of the headers unread, and
 * with them a cache line that whoever wrote the frame (a NIC's DMA, a
 * sender on another CPU) holds: on the project's VMs that first read is
 * half of what a frame costs in the driver hook. */
#define BIO_DEPTH_ALL 0
#define BIO_DEPTH_FAMILY 1

/* The L4 header at off: its destination port into k when TCP/UDP. */
BIO_INLINE void
bio_parse_ports(void *data, void *end, __u64 off, struct bio_key *k)
{
    __u8 *l4 = (__u8 *)data + (off & 0xffff);
    if ((k->proto == IPPROTO_UDP || k->proto == IPPROTO_TCP) && (void *)(l4 + 4) <= end) {
        k->dport = (__u16)(l4[2] << 8 | l4[3]);
        k->has_ports = 1;
    }
}

BIO_INLINE int
bio_parse_ipv4(void *data, void *end, __u64 off, struct bio_key *k, __u32 depth)
{
    struct iphdr *ip = (struct iphdr *)((__u8 *)data + (off & 0xffff));
    if ((void *)(ip + 1) > end || ip->ihl < 5)
        return BIO_PARSE_NOT_IP;
    k->family = 4;
    if (depth == BIO_DEPTH_FAMILY)
        return BIO_PARSE_OK;
    k->proto = ip->protocol;
    k->src[0] = ip->saddr; /* the 4 bytes as they lie in memory */
    k->dst[0] = ip->daddr;
    if (ip->frag_off & bio_htons(0x1fff)) /* a later fragment: no ports */
        return BIO_PARSE_OK;
    bio_parse_ports(data, end, off + ip->ihl * 4, k);
    return BIO_PARSE_OK;
}

BIO_INLINE int
bio_parse_ipv6(void *data, void *end, __u64 off, struct bio_key *k, __u32 depth)
{
    struct ipv6hdr *ip = (struct ipv6hdr *)((__u8 *)data + (off & 0xffff));
    if ((void *)(ip + 1) > end)
        return BIO_PARSE_NOT_IP;
    k->family = 6;
    if (depth == BIO_DEPTH_FAMILY)
        return BIO_PARSE_OK;
    __builtin_memcpy(k->src, &ip->saddr, 16);
    __builtin_memcpy(k->dst, &ip->daddr, 16);
    __u8 next = ip->nexthdr;
    off += sizeof(*ip);
#pragma unroll
    for (int i = 0; i < 4; i++) { /* hop-by-hop, routing, fragment, destination options */
        if (next != 0 && next != 43 && next != 44 && next != 60)
            break;
        __u8 *h = (__u8 *)data + (off & 0xffff);
        if ((void *)(h + 8) > end)
            return BIO_PARSE_OK;
        if (next == 44 && ((h[2] << 8 | h[3]) & 0xfff8)) { /* a later fragment */
            k->proto = 44;
            return BIO_PARSE_OK;
        }
        off += next == 44 ? 8 : ((__u64)h[1] + 1) * 8;
        next = h[0];
    }
    k->proto = next;
    bio_parse_ports(data, end, off, k);
    return BIO_PARSE_OK;
}

/* Parse the frame's headers into k, as deep as depth says (the fields
 * beyond it stay 0): BIO_PARSE_OK, or BIO_PARSE_NOT_IP. */
BIO_INLINE int
bio_parse(struct xdp_md *ctx, struct bio_key *k, __u32 depth)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __builtin_memset(k, 0, sizeof(*k));
    if ((void *)(eth + 1) > end)
        return BIO_PARSE_NOT_IP;
    __u16 type = eth->h_proto;
    __u64 off = sizeof(*eth);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (type != bio_htons(ETH_P_8021Q) && type != bio_htons(ETH_P_8021AD))
            break;
        __u16 *tag = (__u16 *)((__u8 *)data + off);
        if ((void *)(tag + 2) > end)
            return BIO_PARSE_NOT_IP;
        type = tag[1];
        off += 4;
    }
    if (type == bio_htons(ETH_P_IP))
        return bio_parse_ipv4(data, end, off, k, depth);
    if (type == bio_htons(ETH_P_IPV6))
        return bio_parse_ipv6(data, end, off, k, depth);
    return BIO_PARSE_NOT_IP;
}

#endif /* BIO_BPF_H */
