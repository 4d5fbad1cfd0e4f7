/* A SocketSet's per-datagram metadata: which of its sockets asked for it
 * (pktinfo or ECN on: SocketSet.add(meta=True)), the control buffer each of
 * their receives gets, and the cmsgs turned into the batch's metadata; on
 * send, the checks a socket's family asks of an entry's local address.
 *
 * Where a datagram goes through it: a receive on a socket that asked gets a
 * control buffer (epoll: slot j's wide buffer; io_uring: room after the name
 * in the provided buffer), and its cmsgs (batch/cmsg.c) become entry j's
 * local address, interface and codepoint. Sockets that did not ask receive
 * exactly as before, with no control buffer.
 */
#include "socketset/socketset.h"

#include <string.h>

int
bio_socketset_meta_ensure(BioSocketSet *r, BioBatch *b)
{
    return r->nmeta > 0 ? bio_batch_meta_ensure(b) : 0;
}

void
bio_socketset_meta_prepare(const BioSocketSet *r, int idx, BioBatch *b, Py_ssize_t k)
{
    struct msghdr *h = &b->msgs[k].msg_hdr;
    int meta = (r->flags[idx] & BIO_SOCK_F_META) && b->meta != NULL;
    h->msg_control = meta ? bio_batch_cmsg(b, k) : NULL;
    h->msg_controllen = meta ? bio_batch_cmsg_size(b) : 0;
}

void
bio_socketset_meta_store(const BioSocketSet *r, int idx, BioBatch *b, Py_ssize_t j,
                         const unsigned char *control, size_t len)
{
    if (b->meta == NULL || !(r->flags[idx] & BIO_SOCK_F_META) || control == NULL)
        return; /* bio_socketset_set_received cleared the entry's metadata */
    BioCmsgIn in;
    bio_cmsg_parse(control, len, &in);
    bio_batch_meta_store(b, j, &in.m);
}

int
bio_socketset_meta_check(const BioSocketSet *r, const BioBatch *b, Py_ssize_t j)
{
    int32_t s = b->priv[j].sock;
    if (b->meta == NULL || !(r->flags[s] & BIO_SOCK_F_V4))
        return 0;
    const struct in6_addr *local = &b->meta->priv[j].local;
    if (IN6_IS_ADDR_UNSPECIFIED(local) || bio_cmsg_addr_v4(local))
        return 0;
    PyErr_Format(PyExc_ValueError, "datagram %zd: its local address is IPv6 but socket %d is IPv4", j,
                 (int)s);
    return -1;
}
