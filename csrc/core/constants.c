/* Kernel constants: the values this extension was compiled with (the
 * system's headers, completed by core/compat.h), as attributes of
 * burstio._native, so that Python has one source for the socket options,
 * cmsg types and ioctls it uses and the C code agrees with it.
 *
 * Where a datagram goes through it: nowhere; these name the options that
 * decide how one is sent (UDP_SEGMENT, MSG_ZEROCOPY, SO_TXTIME) and what
 * comes with it on receive (UDP_GRO, SO_TIMESTAMPNS, SO_RXQ_OVFL).
 */
#include "core/core.h"
#include "core/compat.h"

#include <netinet/ip.h>

#define BIO_CONSTANT(name) {#name, (long)(name)}

static const struct {
    const char *name;
    long value;
} bio_constants[] = {
    /* UDP offloads */
    BIO_CONSTANT(SOL_UDP),
    BIO_CONSTANT(UDP_SEGMENT),
    BIO_CONSTANT(UDP_GRO),
    /* receive metadata and drops */
    BIO_CONSTANT(SO_TIMESTAMPNS),
    BIO_CONSTANT(SCM_TIMESTAMPNS),
    BIO_CONSTANT(SO_RXQ_OVFL),
    BIO_CONSTANT(SO_MEMINFO),
    BIO_CONSTANT(SK_MEMINFO_DROPS),
    BIO_CONSTANT(SK_MEMINFO_VARS),
    /* busy polling and NAPI */
    BIO_CONSTANT(SO_BUSY_POLL),
    BIO_CONSTANT(SO_INCOMING_NAPI_ID),
    BIO_CONSTANT(SO_PREFER_BUSY_POLL),
    BIO_CONSTANT(SO_BUSY_POLL_BUDGET),
    BIO_CONSTANT(EPIOCSPARAMS),
    BIO_CONSTANT(EPIOCGPARAMS),
    BIO_CONSTANT(SO_ATTACH_REUSEPORT_CBPF),
    /* zero-copy send */
    BIO_CONSTANT(SO_ZEROCOPY),
    BIO_CONSTANT(MSG_ZEROCOPY),
    /* buffers, checksums, AF_XDP */
    BIO_CONSTANT(SO_RCVBUFFORCE),
    BIO_CONSTANT(SO_SNDBUFFORCE),
    BIO_CONSTANT(SO_NO_CHECK),
    BIO_CONSTANT(AF_XDP),
    /* packet info, TOS/traffic class, path MTU */
    BIO_CONSTANT(IP_PKTINFO),
    BIO_CONSTANT(IPV6_RECVPKTINFO),
    BIO_CONSTANT(IPV6_PKTINFO),
    BIO_CONSTANT(IP_RECVTOS),
    BIO_CONSTANT(IP_TOS),
    BIO_CONSTANT(IPV6_RECVTCLASS),
    BIO_CONSTANT(IPV6_TCLASS),
    BIO_CONSTANT(IP_MTU_DISCOVER),
    BIO_CONSTANT(IPV6_MTU_DISCOVER),
    BIO_CONSTANT(IP_PMTUDISC_DO),
    BIO_CONSTANT(IPV6_PMTUDISC_DO),
    BIO_CONSTANT(IP_MTU),
    BIO_CONSTANT(IPV6_MTU),
    /* XDP and AF_XDP: socket options, bind flags, BPF objects, actions */
    BIO_CONSTANT(SOL_XDP),
    BIO_CONSTANT(XDP_SHARED_UMEM),
    BIO_CONSTANT(XDP_COPY),
    BIO_CONSTANT(XDP_ZEROCOPY),
    BIO_CONSTANT(XDP_USE_NEED_WAKEUP),
    BIO_CONSTANT(XDP_USE_SG),
    BIO_CONSTANT(XDP_PKT_CONTD),
    BIO_CONSTANT(XDP_MAX_TX_SKB_BUDGET),
    BIO_CONSTANT(XDP_PACKET_HEADROOM),
    BIO_CONSTANT(BPF_MAP_TYPE_HASH),
    BIO_CONSTANT(BPF_MAP_TYPE_ARRAY),
    BIO_CONSTANT(BPF_MAP_TYPE_PERCPU_ARRAY),
    BIO_CONSTANT(BPF_MAP_TYPE_XSKMAP),
    BIO_CONSTANT(BPF_PROG_TYPE_XDP),
    BIO_CONSTANT(BPF_XDP),
    BIO_CONSTANT(BPF_LINK_TYPE_XDP),
    BIO_CONSTANT(BPF_PSEUDO_MAP_FD),
    BIO_CONSTANT(BPF_ANY),
    BIO_CONSTANT(BPF_NOEXIST),
    BIO_CONSTANT(BPF_EXIST),
    BIO_CONSTANT(BPF_F_TEST_XDP_LIVE_FRAMES),
    BIO_CONSTANT(BPF_F_XDP_HAS_FRAGS),
    BIO_CONSTANT(XDP_FLAGS_SKB_MODE),
    BIO_CONSTANT(XDP_FLAGS_DRV_MODE),
    BIO_CONSTANT(XDP_ABORTED),
    BIO_CONSTANT(XDP_DROP),
    BIO_CONSTANT(XDP_PASS),
    BIO_CONSTANT(XDP_TX),
    BIO_CONSTANT(XDP_REDIRECT),
    /* transmit time */
    BIO_CONSTANT(SO_TXTIME),
    BIO_CONSTANT(SCM_TXTIME),
};

int
bio_constants_init(PyObject *module)
{
    for (size_t i = 0; i < sizeof(bio_constants) / sizeof(bio_constants[0]); i++)
        if (PyModule_AddIntConstant(module, bio_constants[i].name, bio_constants[i].value) < 0)
            return -1;
    return 0;
}
