/* steer: frames that match a rule go to the AF_XDP socket of the queue
 * they arrived on (XSKMAP "xsks", keyed by rx queue index); everything
 * else goes on to the kernel's stack (XDP_PASS), so the host's other
 * traffic keeps working. A queue without a socket passes its frames on too.
 *
 * Build: scripts/build-bpf.sh (clang -target bpf -O2 -g0); loaded by
 * src/burstio/xdp/programs.py (Steer).
 *
 * Where a frame goes through it: driver hook -> bio_parse (as deep as the
 * rules need) -> the first matching rule (rules.h) -> bpf_redirect_map to
 * the queue's socket (the rule's action XDP_REDIRECT) or XDP_PASS.
 */
#include "rules.h"

BIO_MAP(xsks, BPF_MAP_TYPE_XSKMAP, __u32, __u32, 256);

SEC("xdp")
int
steer(struct xdp_md *ctx)
{
    if (bio_classify(ctx, XDP_PASS) != XDP_REDIRECT)
        return XDP_PASS;
    return (int)bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char bio_license[] SEC("license") = "Dual MIT/GPL";
