/* Control messages: reading a received datagram's (UDP_GRO segment size,
 * SCM_TIMESTAMPNS, IP_PKTINFO/IPV6_PKTINFO destination and interface,
 * IP_TOS/IPV6_TCLASS codepoint) and writing an outgoing message's
 * (UDP_SEGMENT, the source address, the ECN codepoint, SCM_TXTIME).
 *
 * Where a datagram goes through it: on receive, after recvmmsg (udp/recv.c)
 * or a SocketSet receive (socketset/), its cmsgs become the entry's segment
 * size, timestamp and metadata; on send, the message built for it
 * (batch/msgs.c, udp/pacer.c) gets the cmsgs that carry its metadata.
 *
 * Which cmsg for which family: a datagram to an IPv4 destination (or to
 * ::ffff:a.b.c.d from an IPv6 socket) takes its TOS byte from IP_TOS, one
 * to an IPv6 destination from IPV6_TCLASS, and each stack ignores the other
 * level's cmsg; so the ECN codepoint is written as both, and the right one
 * applies whatever the destination (a connected socket's too). A source
 * address goes as IP_PKTINFO (IPv4, accepted by an IPv6 socket for an IPv4
 * destination) or IPV6_PKTINFO.
 */
#include "batch/batch.h"
#include "core/compat.h"

#include <netinet/ip.h>
#include <string.h>

static const unsigned char bio_cmsg_v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int
bio_cmsg_addr_v4(const struct in6_addr *a)
{
    return memcmp(a->s6_addr, bio_cmsg_v4_prefix, sizeof(bio_cmsg_v4_prefix)) == 0;
}

/* One cmsg's payload into out (the metadata cmsgs). */
static void
bio_cmsg_parse_meta(int level, int type, const unsigned char *data, size_t dlen, BioMetaPriv *m)
{
    if (level == IPPROTO_IP && type == IP_PKTINFO && dlen >= sizeof(struct in_pktinfo)) {
        struct in_pktinfo pi;
        memcpy(&pi, data, sizeof(pi));
        memset(&m->local, 0, sizeof(m->local));
        memcpy(m->local.s6_addr, bio_cmsg_v4_prefix, sizeof(bio_cmsg_v4_prefix));
        memcpy(m->local.s6_addr + 12, &pi.ipi_addr, 4);
        m->ifindex = pi.ipi_ifindex > 0 ? (uint32_t)pi.ipi_ifindex : 0;
    } else if (level == IPPROTO_IPV6 && type == IPV6_PKTINFO &&
               dlen >= sizeof(struct in6_pktinfo)) {
        struct in6_pktinfo pi;
        memcpy(&pi, data, sizeof(pi));
        m->local = pi.ipi6_addr;
        m->ifindex = pi.ipi6_ifindex;
    } else if (level == IPPROTO_IP && type == IP_TOS && dlen >= 1) {
        m->ecn = data[0] & 3; /* the kernel writes the TOS byte */
    } else if (level == IPPROTO_IPV6 && type == IPV6_TCLASS && dlen >= sizeof(int)) {
        int tc;
        memcpy(&tc, data, sizeof(tc));
        m->ecn = (uint8_t)(tc & 3);
    }
}

void
bio_cmsg_parse(const unsigned char *control, size_t len, BioCmsgIn *out)
{
    size_t off = 0;
    memset(out, 0, sizeof(*out));
    while (len - off >= sizeof(struct cmsghdr)) {
        struct cmsghdr c;
        memcpy(&c, control + off, sizeof(c));
        if (c.cmsg_len < CMSG_LEN(0) || c.cmsg_len > len - off)
            return;
        const unsigned char *data = control + off + CMSG_LEN(0);
        size_t dlen = c.cmsg_len - CMSG_LEN(0);
        if (c.cmsg_level == SOL_UDP && c.cmsg_type == UDP_GRO && dlen >= sizeof(int)) {
            int seg;
            memcpy(&seg, data, sizeof(seg));
            out->seg = seg > 0 ? (uint32_t)seg : 0;
        } else if (c.cmsg_level == SOL_SOCKET && c.cmsg_type == SCM_TIMESTAMPNS &&
                   dlen >= sizeof(struct timespec)) {
            struct timespec ts;
            memcpy(&ts, data, sizeof(ts));
            out->ts = (int64_t)((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
        } else {
            bio_cmsg_parse_meta(c.cmsg_level, c.cmsg_type, data, dlen, &out->m);
        }
        size_t step = CMSG_ALIGN(c.cmsg_len);
        if (step > len - off)
            return;
        off += step;
    }
}

/* Append one cmsg of `len` payload bytes to h's control buffer: a buffer
 * handed to bio_cmsg_build holds BIO_CMSG_TX_ALL when o->m is set (the wide
 * slots, batch.h), and UDP_SEGMENT's alone otherwise. */
static void
bio_cmsg_put(struct msghdr *h, int level, int type, const void *data, size_t len)
{
    struct cmsghdr *c = (struct cmsghdr *)((unsigned char *)h->msg_control + h->msg_controllen);
    memset(c, 0, CMSG_SPACE(len));
    c->cmsg_level = level;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(len);
    memcpy(CMSG_DATA(c), data, len);
    h->msg_controllen += CMSG_SPACE(len);
}

/* The source address of m as IP_PKTINFO or IPV6_PKTINFO. */
static void
bio_cmsg_put_local(struct msghdr *h, const BioMetaPriv *m)
{
    if (bio_cmsg_addr_v4(&m->local)) {
        struct in_pktinfo pi;
        memset(&pi, 0, sizeof(pi));
        pi.ipi_ifindex = (int)m->ifindex;
        memcpy(&pi.ipi_spec_dst, m->local.s6_addr + 12, 4);
        bio_cmsg_put(h, IPPROTO_IP, IP_PKTINFO, &pi, sizeof(pi));
    } else {
        struct in6_pktinfo pi = {.ipi6_addr = m->local, .ipi6_ifindex = m->ifindex};
        bio_cmsg_put(h, IPPROTO_IPV6, IPV6_PKTINFO, &pi, sizeof(pi));
    }
}

void
bio_cmsg_build(struct msghdr *h, unsigned char *buf, const BioCmsgOut *o)
{
    h->msg_control = buf;
    h->msg_controllen = 0;
    if (o->segment)
        bio_cmsg_put(h, SOL_UDP, UDP_SEGMENT, &o->segment, sizeof(o->segment));
    const BioMetaPriv *m = o->m;
    if (m != NULL && !IN6_IS_ADDR_UNSPECIFIED(&m->local))
        bio_cmsg_put_local(h, m);
    if (m != NULL && m->ecn && o->ecn) {
        int tos = (int)(o->dscp & 0xfc) | m->ecn;
        if (o->ecn == 2)
            tos += 256; /* tests: a value every kernel refuses (EINVAL) */
        bio_cmsg_put(h, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
        bio_cmsg_put(h, IPPROTO_IPV6, IPV6_TCLASS, &tos, sizeof(tos));
    }
    if (m != NULL && m->txtime && o->txtime) {
        uint64_t t = (uint64_t)(m->txtime + o->txtime_offset);
        bio_cmsg_put(h, SOL_SOCKET, SCM_TXTIME, &t, sizeof(t));
    }
    if (h->msg_controllen == 0)
        h->msg_control = NULL;
}

int
bio_cmsg_carries_ecn(const struct msghdr *h)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR((struct msghdr *)h, c))
        if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS)
            return 1;
    return 0;
}
