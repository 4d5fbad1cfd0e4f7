/* Kernel and liburing constants that older headers lack: every fallback of
 * the extension, and nowhere else. Each is the kernel's ABI value, defined
 * here only if the system's headers (Debian 12: Linux 6.1 uapi, liburing
 * 2.3) do not define it; core/constants.c exports what is in effect.
 *
 * The headers whose names these complete are included first, so that a
 * name a newer header has (as an enum value, such as IORING_REGISTER_NAPI)
 * is declared before a fallback macro of the same value could shadow it.
 */
#ifndef BIO_COMPAT_H
#define BIO_COMPAT_H

#include <fcntl.h>
#include <liburing.h>
#include <linux/bpf.h>
#include <linux/errqueue.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

/* ---- UDP offloads (Linux 4.18 GSO, 5.0 GRO) --------------------------------- */

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* cmsg / sockopt: GSO segment size */
#endif
#ifndef UDP_GRO
#define UDP_GRO 104     /* sockopt: coalesce receives; cmsg: their segment size */
#endif

/* ---- socket options --------------------------------------------------------- */

#ifndef SO_NO_CHECK
#define SO_NO_CHECK 11
#endif
#ifndef SO_SNDBUFFORCE
#define SO_SNDBUFFORCE 32
#endif
#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40 /* cmsg: datagrams the socket dropped */
#endif
#ifndef SO_BUSY_POLL
#define SO_BUSY_POLL 46
#endif
#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55 /* u32[SK_MEMINFO_VARS]; SK_MEMINFO_DROPS: <linux/sock_diag.h> */
#endif
#ifndef SO_INCOMING_NAPI_ID
#define SO_INCOMING_NAPI_ID 56
#endif
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef SO_TXTIME
#define SO_TXTIME 61
#endif
#ifndef SCM_TXTIME
#define SCM_TXTIME SO_TXTIME
#endif
#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69 /* Linux 5.11 */
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70 /* Linux 5.11 */
#endif
#ifndef AF_XDP
#define AF_XDP 44
#endif

/* ---- the scheduler (sched_setattr, Linux 3.14) ------------------------------------ */

#ifndef SCHED_FLAG_RESET_ON_FORK
#define SCHED_FLAG_RESET_ON_FORK 0x01 /* sched_attr.sched_flags (linux/sched.h) */
#endif

/* The kernel's struct sched_attr (linux/sched/types.h, SCHED_ATTR_SIZE_VER0:
 * 48 bytes), declared here because that header redefines glibc's struct
 * sched_param. */
typedef struct {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime; /* SCHED_DEADLINE's runtime; a fair thread's slice (Linux 6.12) */
    uint64_t sched_deadline;
    uint64_t sched_period;
} BioSchedAttr;

/* ---- MSG_ZEROCOPY (Linux 4.14) ------------------------------------------------ */

#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif

/* ---- epoll busy polling (Linux 6.9) -------------------------------------------- */

#ifndef EPIOCSPARAMS
/* struct epoll_params of <linux/eventpoll.h> */
struct bio_epoll_params {
    uint32_t busy_poll_usecs;
    uint16_t busy_poll_budget;
    uint8_t prefer_busy_poll;
    uint8_t pad;
};
_Static_assert(sizeof(struct bio_epoll_params) == 8, "struct epoll_params is 8 bytes");
#define EPIOCSPARAMS _IOW(0x8A, 0x01, struct bio_epoll_params)
#define EPIOCGPARAMS _IOR(0x8A, 0x02, struct bio_epoll_params)
#endif

/* ---- io_uring (liburing 2.3 has Linux 6.0's uapi) ------------------------------- */

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3) /* Linux 6.2 */
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31) /* Linux 6.2 */
#endif
#ifndef IORING_REGISTER_NAPI
#define IORING_REGISTER_NAPI 27 /* Linux 6.9 */
#endif
#ifndef IORING_UNREGISTER_NAPI
#define IORING_UNREGISTER_NAPI 28
#endif
/* struct io_uring_napi (Linux >= 6.9; opcode/op_param since 6.13, 0 = the
 * original behaviour), under our own name: liburing 2.3 lacks it. */
struct bio_uring_napi {
    uint32_t busy_poll_to;
    uint8_t prefer_busy_poll;
    uint8_t opcode;
    uint8_t pad[2];
    uint32_t op_param;
    uint32_t resv;
};
_Static_assert(sizeof(struct bio_uring_napi) == 16, "struct io_uring_napi is 16 bytes");

/* ---- memfd seals, pidfd (Linux 3.17, 5.3) ------------------------------------- */

#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#endif
#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#endif
#ifndef F_SEAL_SEAL
#define F_SEAL_SEAL 0x0001
#endif
#ifndef F_SEAL_SHRINK
#define F_SEAL_SHRINK 0x0002
#endif
#ifndef F_SEAL_GROW
#define F_SEAL_GROW 0x0004
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* ---- AF_XDP (Debian 12's uapi is Linux 6.1's) ------------------------------------ */

#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef XDP_USE_SG
#define XDP_USE_SG (1 << 4) /* bind flag: multi-buffer frames, Linux 6.6 */
#endif
#ifndef XDP_PKT_CONTD
#define XDP_PKT_CONTD (1 << 0) /* xdp_desc.options: the packet goes on in the next descriptor */
#endif
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9 /* sockopt: copy-mode frames per sendto(), Linux 6.17 */
#endif
/* struct xdp_umem_reg as Linux 6.8 has it (tx_metadata_len after flags),
 * under our own name: every byte the kernel reads is ours and zeroed. */
struct bio_xdp_umem_reg {
    uint64_t addr;
    uint64_t len;
    uint32_t chunk_size;
    uint32_t headroom;
    uint32_t flags;
    uint32_t tx_metadata_len;
};
_Static_assert(sizeof(struct bio_xdp_umem_reg) == 32, "struct xdp_umem_reg is 32 bytes");
/* struct xdp_statistics with the fields Linux 5.9 added (Debian 12 has them). */
_Static_assert(sizeof(struct xdp_statistics) == 48, "struct xdp_statistics is 48 bytes");

/* ---- BPF (Linux 6.1's uapi has what burstio uses; these guard older ones) ------- */

#ifndef BPF_F_TEST_XDP_LIVE_FRAMES
#define BPF_F_TEST_XDP_LIVE_FRAMES (1U << 1) /* Linux 5.18 */
#endif
#ifndef BPF_F_XDP_HAS_FRAGS
#define BPF_F_XDP_HAS_FRAGS (1U << 5) /* prog_flags: takes multi-buffer frames, Linux 5.18 */
#endif
#ifndef XDP_FLAGS_SKB_MODE
#define XDP_FLAGS_SKB_MODE (1U << 1)
#endif
#ifndef XDP_FLAGS_DRV_MODE
#define XDP_FLAGS_DRV_MODE (1U << 2)
#endif

#endif /* BIO_COMPAT_H */
