/* filter: early drop in the driver hook. Frames that match a rule get the
 * rule's action (XDP_DROP, or XDP_PASS for an exception listed before a
 * broader drop); the rest go on to the kernel's stack. Per-rule packet and
 * byte counters; rules change at run time through the "rules" map, without
 * reloading (rules.h).
 *
 * Build: scripts/build-bpf.sh (clang -target bpf -O2 -g0); loaded by
 * src/burstio/xdp/programs.py (Filter).
 *
 * Where a frame goes through it: driver hook -> bio_parse (as deep as the
 * rules need) -> the first matching rule, counted -> dropped before the
 * kernel allocates anything for it, or passed on.
 */
#include "rules.h"

SEC("xdp")
int
filter(struct xdp_md *ctx)
{
    return bio_classify(ctx, XDP_PASS);
}

char bio_license[] SEC("license") = "Dual MIT/GPL";
