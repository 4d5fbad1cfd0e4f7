/* The rules steer.bpf.c and filter.bpf.c match frames against, and their
 * counters; the layout src/burstio/xdp/programs.py writes (RULE, RULES).
 *
 * Rules live in two slots of the "rules" array map; "config" says which
 * slot is active. Python writes the inactive slot (and zeroes its
 * counters), then flips "active" with one 4-byte store: a running program
 * sees the old set or the new one, never half of each, and rules change
 * without reloading the program. Counters are per CPU, per slot, per rule,
 * plus one row for frames no rule matched (Python sums the CPUs). Each
 * slot says how deep its rules need a frame parsed (Python works it out
 * from the rules): a set that names nothing beyond the IP version leaves
 * the IP and transport headers unread.
 *
 * Where a frame goes through it: bio_classify() parses it as deep as the
 * active rules need, finds the first rule that matches it and counts it
 * there (or as unmatched).
 */
#ifndef BIO_RULES_H
#define BIO_RULES_H

#include "bpf.h"

#define BIO_MAX_RULES 32
#define BIO_ROWS (BIO_MAX_RULES + 1) /* per slot: the rules, then "unmatched" */

/* One rule: every field that is set must match (0 / the full range: any). */
struct bio_rule {
    __u8 family;             /* 0, 4 or 6 */
    __u8 proto;              /* 0 or an IP protocol */
    __u16 dport_lo, dport_hi; /* host order; a range other than 0-65535 needs ports */
    __u8 action;             /* what the program does on a match (XDP_DROP, XDP_PASS, ...) */
    __u8 pad;
    __u64 src[2], src_mask[2], dst[2], dst_mask[2];
};

struct bio_rules {
    __u32 count;
    __u32 depth; /* how far a frame must be parsed for these rules (BIO_DEPTH_*, bpf.h) */
    struct bio_rule rule[BIO_MAX_RULES];
};

struct bio_config {
    __u32 active; /* the slot of "rules" in force: 0 or 1 */
    __u32 pad;
};

struct bio_counter {
    __u64 packets, bytes;
};

BIO_MAP(rules, BPF_MAP_TYPE_ARRAY, __u32, struct bio_rules, 2);
BIO_MAP(config, BPF_MAP_TYPE_ARRAY, __u32, struct bio_config, 1);
BIO_MAP(counters, BPF_MAP_TYPE_PERCPU_ARRAY, __u32, struct bio_counter, 2 * BIO_ROWS);

BIO_INLINE int
bio_rule_matches(const struct bio_rule *r, const struct bio_key *k)
{
    if ((r->family && r->family != k->family) || (r->proto && r->proto != k->proto))
        return 0;
    if ((r->dport_lo != 0 || r->dport_hi != 0xffff) &&
        (!k->has_ports || k->dport < r->dport_lo || k->dport > r->dport_hi))
        return 0;
    return (k->src[0] & r->src_mask[0]) == r->src[0] && (k->src[1] & r->src_mask[1]) == r->src[1] &&
           (k->dst[0] & r->dst_mask[0]) == r->dst[0] && (k->dst[1] & r->dst_mask[1]) == r->dst[1];
}

/* The frame parsed as deep as the active slot's rules need, then the first
 * of them that matches it, counted (with the frame's bytes): its action, or
 * `otherwise` when none does (counted as unmatched, as are frames that are
 * not IP: k.family 0). */
BIO_INLINE int
bio_classify(struct xdp_md *ctx, int otherwise)
{
    struct bio_key key, *k = &key;
    __u32 zero = 0;
    struct bio_config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg)
        return otherwise;
    __u32 slot = cfg->active & 1;
    struct bio_rules *rs = bpf_map_lookup_elem(&rules, &slot);
    if (!rs)
        return otherwise;
    bio_parse(ctx, k, rs->depth);
    __u32 row = BIO_MAX_RULES, n = rs->count;
    int action = otherwise;
    for (__u32 i = 0; i < BIO_MAX_RULES && k->family; i++) {
        if (i >= n)
            break;
        if (bio_rule_matches(&rs->rule[i], k)) {
            row = i;
            action = rs->rule[i].action;
            break;
        }
    }
    __u32 at = slot * BIO_ROWS + row;
    struct bio_counter *c = bpf_map_lookup_elem(&counters, &at);
    if (c) {
        c->packets += 1;
        c->bytes += (__u64)(ctx->data_end - ctx->data);
    }
    return action;
}

#endif /* BIO_RULES_H */
