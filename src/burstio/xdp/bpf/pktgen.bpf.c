/* pktgen: the packet generator's XDP program, run by BPF_PROG_RUN with
 * live frames (BPF_F_TEST_XDP_LIVE_FRAMES): each run rewrites the UDP
 * source port of the template frame to the next of `flows` ports (with the
 * UDP checksum updated incrementally, RFC 1624) and transmits it (XDP_TX)
 * out of the device the run names. "state" counts the frames per CPU.
 *
 * Build: scripts/build-bpf.sh; driven by src/burstio/xdp/pktgen.py.
 *
 * Where a frame goes through it: a page of the test run's page pool holds
 * the template -> the port is rewritten -> XDP_TX -> the device's transmit.
 */
#include "bpf.h"

struct bio_gen_config {
    __u32 flows;     /* source ports port_base .. port_base + flows - 1 */
    __u16 port_base;
    __u16 l4_offset; /* where the UDP header starts in the frame */
};

struct bio_gen_state {
    __u64 seq;  /* frames generated on this CPU */
};

BIO_MAP(gen_config, BPF_MAP_TYPE_ARRAY, __u32, struct bio_gen_config, 1);
BIO_MAP(gen_state, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct bio_gen_state, 1);

SEC("xdp")
int
pktgen(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct bio_gen_config *cfg = bpf_map_lookup_elem(&gen_config, &zero);
    struct bio_gen_state *st = bpf_map_lookup_elem(&gen_state, &zero);
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    if (!cfg || !st || cfg->flows == 0)
        return XDP_ABORTED;
    __u8 *udp = (__u8 *)data + (cfg->l4_offset & 0xff);
    if ((void *)(udp + 8) > end)
        return XDP_ABORTED;
    __u16 port = (__u16)(cfg->port_base + st->seq % cfg->flows);
    st->seq++;
    __u16 old = (__u16)(udp[0] << 8 | udp[1]);
    udp[0] = (__u8)(port >> 8);
    udp[1] = (__u8)port;
    __u16 check = (__u16)(udp[6] << 8 | udp[7]);
    if (check) { /* IPv4 may send none; IPv6 always has one */
        __u32 sum = (__u16)~check + (__u32)(__u16)~old + port;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        check = (__u16)~sum;
        if (!check)
            check = 0xffff;
        udp[6] = (__u8)(check >> 8);
        udp[7] = (__u8)check;
    }
    return XDP_TX;
}

char bio_license[] SEC("license") = "Dual MIT/GPL";
