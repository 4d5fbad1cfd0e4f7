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
