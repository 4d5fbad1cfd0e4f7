/* UdpIo: batched UDP syscalls on one socket (udp/io.c the type, udp/recv.c
 * the receive path, udp/send.c the send path).
 */
#ifndef BIO_UDP_H
#define BIO_UDP_H

#include "batch/batch.h"
#include "core/compat.h"

enum bio_udp_counter {
    BIO_UDP_C_RX_DATAGRAMS,
    BIO_UDP_C_RX_BYTES,
    BIO_UDP_C_RX_BATCHES,
    BIO_UDP_C_RX_SYSCALLS,
    BIO_UDP_C_RX_TRUNCATED,
    BIO_UDP_C_RX_GRO_MESSAGES,
    BIO_UDP_C_RX_GRO_DATAGRAMS,
    BIO_UDP_C_KERNEL_DROPS,
    BIO_UDP_C_TX_DATAGRAMS,
    BIO_UDP_C_TX_BYTES,
    BIO_UDP_C_TX_BATCHES,
    BIO_UDP_C_TX_SYSCALLS,
    BIO_UDP_C_TX_GSO_MESSAGES,
    BIO_UDP_C_TX_GSO_DATAGRAMS,
    BIO_UDP_C_TX_ERRORS,
    BIO_UDP_C_TX_UNREPORTED_ERRORS,
    BIO_UDP_C_GSO_DOWNGRADES,
    BIO_UDP_C_TX_LATE,
    BIO_UDP_C_TX_ECN_UNMARKED,
    BIO_UDP_C_ECN_DOWNGRADES,
    BIO_UDP_NCOUNTERS
};

typedef struct {
    PyObject_HEAD
    int fd;               /* our own dup of the socket (-1: closed); see BioWake */
    BioWake wake;         /* close() wakes every waiter; closes fd when the last leaves */
    int retired_wait_fd;  /* a wait_fd replaced while a receive used it: closed later */
    int recv_mmsg;        /* recvmmsg, else one recvmsg per datagram */
    int send_mmsg;        /* sendmmsg, else one sendmsg per message */
    int gso;              /* coalesce same-size runs into UDP_SEGMENT sends */
    int gso_max_segments; /* segments per GSO send we build (<= kernel's) */
    int gro_max_segments; /* most segments one GRO receive can carry */
    int gro;              /* UDP_GRO is on: split coalesced receives */
    int socket_index;     /* written to batch.sockets for received entries */
    int rx_singles;       /* receive calls in a row that found one datagram */
    int single_after;     /* that many in a row: ask for one (0: never) */
    int pending_errno;    /* error seen after a partial receive, raised next */
    int wait_fd;          /* our dup of an epoll instance to wait in (busy polls; it
                           * also holds wake.efd), -1: poll() */
    int spin_us;          /* before poll(), a receive with a deadline: retry
                           * this long (busy polls once per try with SO_BUSY_POLL) */
    int wait_first;       /* busy polling in wait_fd and the last waiting
                           * receive found the socket empty: wait first */
    uint32_t block_gen;   /* receives without a deadline block in recvmmsg itself
                           * (the kernel busy polls by SO_BUSY_POLL, then sleeps),
                           * in the process of this fork generation only; 0: never */
    int rx_blocked;       /* receives of this process inside that blocking
                           * recvmmsg now: close() shuts the receive side down */
    int family;           /* the socket's, AF_INET or AF_INET6 (SO_DOMAIN) */
    int meta;             /* pktinfo or ECN is on: receives fill the batch's metadata */
    int ecn_cmsg;         /* send ECN codepoints (BioCmsgOut.ecn; 0: off or downgraded) */
    int dscp;             /* the socket's DSCP bits, kept in the TOS byte of a codepoint */
    int txtime;           /* 1: send transmit times as SCM_TXTIME (SO_TXTIME is on) */
    long long txtime_offset; /* ns added to a transmit time for SO_TXTIME's clock */
    uint64_t counters[BIO_UDP_NCOUNTERS];
    PyObject *recover;    /* policy called when a send stops early, or NULL */
} BioUdp;

extern PyTypeObject BioUdp_Type;

int bio_udp_init_type(PyObject *module);

/* The receive path's finishing step (udp/recv.c): n received messages of b
 * (msgs[k]: msg_len, msg_flags, control, read by batch/cmsg.c) into
 * entries, GRO split included. The entry count. nogil. */
Py_ssize_t bio_udp_recv_finish_nogil(BioUdp *u, BioBatch *b, int n);
/* udp_parse_for_fuzz(control, length, slot_size, gro): that step on one
 * synthetic message (udp/fuzz.c). */
PyObject *bio_udp_parse_for_fuzz(PyObject *module, PyObject *args);
extern const char bio_udp_parse_for_fuzz_doc[];

/* The Python entry points of udp/recv.c and udp/send.c, for the type's
 * method table (udp/io.c). */
PyObject *bio_udp_recv_batch(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames);
PyObject *bio_udp_send_batch(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames);
PyObject *bio_udp_send_raw(BioUdp *u, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames);
PyObject *bio_udp_send_segments(BioUdp *u, PyObject *args, PyObject *kwds);
/* How u's sends build their messages (batch/msgs.c). */
BioBatchSendOpts bio_udp_send_opts(BioUdp *u);
/* Begin a call that uses u->fd (GIL held): 0, or -1 with OSError EBADF if
 * closed (or closing); a child after fork() gets its own wake eventfd. */
int bio_udp_enter(BioUdp *u);
/* End it (GIL held): the last call out of a closing UdpIo closes it. */
void bio_udp_leave(BioUdp *u);
/* OSError EBADF "... closed while waiting"; NULL. */
PyObject *bio_udp_raise_closed(void);
extern const char bio_udp_recv_batch_doc[], bio_udp_send_segments_doc[];

#endif /* BIO_UDP_H */
