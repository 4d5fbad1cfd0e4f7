/* The io_uring SocketSet's completions: what the kernel hands back.
 *
 * Where a datagram goes through it: a receive CQE names a provided buffer
 * holding the recvmsg header, the sender's address, the cmsgs and the
 * payload; bio_uringset_take_datagram copies the payload into slot j of the
 * caller's batch (entry j, batch.sockets[j] = the socket's index), reads the
 * cmsgs (socketset/meta.c) and gives the buffer straight back to the ring.
 * A CQE that arrives while no batch is waiting (a send is in progress) is
 * kept in the stash, buffer and all, for the next recv_batch. Send and
 * stream completions go to the call in progress; those of an old socket or
 * call (another generation) are dropped.
 */
#include "socketset/uring.h"

#include <errno.h>
#include <string.h>

/* Give buffer bid back to the buffer ring (published by
 * bio_uringset_recycle_publish). nogil. */
static void
bio_uringset_recycle(BioUringSet *r, unsigned bid)
{
    io_uring_buf_ring_add(r->bufring, r->bufs + (size_t)bid * r->buf_size, r->buf_size,
                          (unsigned short)bid, io_uring_buf_ring_mask(r->nbufs), (int)r->recycled);
    r->recycled++;
}

/* Make the buffers given back visible to the kernel. nogil. */
static void
bio_uringset_recycle_publish(BioUringSet *r)
{
    if (r->recycled) {
        io_uring_buf_ring_advance(r->bufring, (int)r->recycled);
        r->recycled = 0;
    }
}

/* Whether a receive CQE belongs to the socket now in its slot. */
static int
bio_uringset_current(BioUringSet *r, const struct io_uring_cqe *cqe)
{
    uint32_t idx = BIO_UD_IDX(cqe->user_data);
    return idx < (uint32_t)r->base.cap && r->base.state[idx] != BIO_SOCK_FREE &&
           BIO_UD_MID(cqe->user_data) == BIO_GEN(r->base.gen[idx]);
}

/* A current socket's multishot ended (no F_MORE): re-arm it next call; an
 * error is queued for take_errors(). nogil. */
static void
bio_uringset_recv_status(BioUringSet *r, const struct io_uring_cqe *cqe)
{
    BioSocketSet *t = &r->base;
    uint32_t idx = BIO_UD_IDX(cqe->user_data);
    if (!(cqe->flags & IORING_CQE_F_MORE) && t->state[idx] == BIO_SOCK_ARMED)
        t->state[idx] = BIO_SOCK_IDLE;
    if (cqe->res >= 0)
        return;
    if (cqe->res == -ENOBUFS)
        BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_RX_ENOBUFS, 1);
    bio_socketset_error_nogil(t, (int)idx, -cqe->res);
}

/* Copy the datagram of a receive CQE into entry j of b. nogil. */
static void
bio_uringset_take_datagram(BioUringSet *r, const struct io_uring_cqe *cqe, BioBatch *b,
                           Py_ssize_t j)
{
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    unsigned char *buf = r->bufs + (size_t)bid * r->buf_size;
    uint32_t idx = BIO_UD_IDX(cqe->user_data);
    struct msghdr *hdr = bio_uringset_hdr(r, idx);
    struct io_uring_recvmsg_out *out = io_uring_recvmsg_validate(buf, cqe->res, hdr);
    uint32_t plen = 0, stored = 0;
    int trunc = 0;
    memset(&b->names[j], 0, sizeof(b->names[j]));
    uint32_t len = 0;
    if (out != NULL) {
        plen = io_uring_recvmsg_payload_length(out, cqe->res, hdr);
        stored = plen > (uint32_t)b->slot_size ? (uint32_t)b->slot_size : plen;
        trunc = (out->flags & MSG_TRUNC) || stored < plen;
        len = out->payloadlen > plen ? out->payloadlen : plen;
        memcpy(b->arena + (size_t)j * (size_t)b->slot_size, io_uring_recvmsg_payload(out, hdr), stored);
        size_t nl = out->namelen < sizeof(b->names[j]) ? out->namelen : sizeof(b->names[j]);
        memcpy(&b->names[j], io_uring_recvmsg_name(out), nl);
    }
    /* its cmsgs follow the name: UDP_GRO (turned on after add()), and the
     * metadata of a socket that asked */
    size_t cl = out == NULL ? 0
                : out->controllen < hdr->msg_controllen ? out->controllen : hdr->msg_controllen;
    bio_socketset_recv_cmsgs(&r->base, (int)idx, b, j,
                             out == NULL ? NULL : (unsigned char *)(out + 1) + hdr->msg_namelen, cl);
    bio_socketset_set_received(&r->base, b, j, stored, len, trunc, (int)idx);
    bio_uringset_recycle(r, bid);
    BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_RX_DATAGRAMS, 1);
    BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_RX_BYTES, stored);
    if (trunc)
        BIO_COUNT(r->base.counters, BIO_SOCKETSET_C_RX_TRUNCATED, 1);
}

/* Handle a receive CQE: its datagram into rp->b if there is room (0: the
 * batch is full, leave the CQE), or kept for later (no batch), or dropped
 * (a removed socket's). nogil. */
static int
bio_uringset_on_recv(BioUringSet *r, const struct io_uring_cqe *cqe, BioUringReap *rp)
{
    int current = bio_uringset_current(r, cqe);
    int data = cqe->res >= 0 && (cqe->flags & IORING_CQE_F_BUFFER);
    uint32_t idx = BIO_UD_IDX(cqe->user_data);
    if (current && r->base.state[idx] == BIO_SOCK_REMOVING) {
        if (data) /* a last datagram of a socket being removed: not wanted */
            bio_uringset_recycle(r, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        if (!(cqe->flags & IORING_CQE_F_MORE))
            r->base.state[idx] = BIO_SOCK_IDLE; /* the kernel has let go */
        return 1;
    }
    if (data && current && rp->b != NULL && rp->n >= bio_socketset_room(&r->base, rp->b))
        return 0;
    if (data && current && rp->b == NULL && r->nstash >= r->stash_cap)
        return 0; /* cannot happen: one CQE per buffer */
    if (current)
        bio_uringset_recv_status(r, cqe);
    if (data && current && rp->b != NULL)
        bio_uringset_take_datagram(r, cqe, rp->b, rp->n++);
    else if (data && current)
        r->stash[r->nstash++] = *cqe; /* keeps its buffer until recv_batch */
    else if (data)
        bio_uringset_recycle(r, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    return 1;
}

/* Send and stream completions of the call in progress (others are stale). */
static void
bio_uringset_on_other(BioUringSet *r, const struct io_uring_cqe *cqe, BioUringReap *rp)
{
    unsigned op = BIO_UD_OP(cqe->user_data);
    if (op == BIO_OP_WAKE && BIO_UD_IDX(cqe->user_data) == 1)
        r->wake_armed = 0; /* the chain's end: queue another next call */
    if (op == BIO_OP_CANCEL || op == BIO_OP_WAKE)
        return; /* a wake: the waiter looks at the closing flag */
    if (BIO_UD_MID(cqe->user_data) != BIO_GEN(r->base.call_gen))
        return;
    if (op == BIO_OP_SEND && rp->send != NULL && BIO_UD_IDX(cqe->user_data) < rp->send->total) {
        rp->send->results[BIO_UD_IDX(cqe->user_data)] = cqe->res < 0 ? -cqe->res : 0;
        rp->send->done++;
    } else if (op == BIO_OP_STREAM && rp->stream != NULL) {
        rp->stream->got = cqe->res;
        rp->stream->result_seen = 1;
    } else if (op == BIO_OP_STREAM_TIMEOUT && rp->stream != NULL) {
        rp->stream->timeout_seen = 1;
    }
}

void
bio_uringset_reap_nogil(BioUringSet *r, BioUringReap *rp)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&r->uring, head, cqe) {
        if (BIO_UD_OP(cqe->user_data) == BIO_OP_RECV) {
            if (!bio_uringset_on_recv(r, cqe, rp))
                break;
        } else {
            bio_uringset_on_other(r, cqe, rp);
        }
        seen++;
    }
    io_uring_cq_advance(&r->uring, seen);
    bio_uringset_recycle_publish(r);
}

void
bio_uringset_unstash(BioUringSet *r, BioBatch *b, Py_ssize_t *n)
{
    unsigned used = 0;
    while (used < r->nstash && *n < bio_socketset_room(&r->base, b)) {
        const struct io_uring_cqe *cqe = &r->stash[used++];
        if (bio_uringset_current(r, cqe))
            bio_uringset_take_datagram(r, cqe, b, (*n)++);
        else
            bio_uringset_recycle(r, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    }
    memmove(r->stash, r->stash + used, (r->nstash - used) * sizeof(*r->stash));
    r->nstash -= used;
    bio_uringset_recycle_publish(r);
}

