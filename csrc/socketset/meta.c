/* A SocketSet's receive cmsgs and per-datagram metadata: which of its
 * sockets asked for metadata (pktinfo or ECN on: SocketSet.add(meta=True)),
 * the cmsgs of every receive turned into its private scratch (the UDP_GRO
 * segment size of any socket, whose UDP_GRO may have been turned on after
 * add(); the local address, interface and codepoint of one that asked); on
 * send, the checks a socket's family asks of an entry's local address.
 *
 * Where a datagram goes through it: every receive gets a control buffer
 * (epoll: slot j's, wide once the batch has metadata; io_uring: room after
 * the name in the provided buffer, more for a socket that asked), and its
 * cmsgs (batch/cmsg.c) become entry j's private scratch, which
 * bio_socketset_set_received (base.c) and the GRO split write into the
 * batch's arrays.
 */
#include "socketset/socketset.h"

#include <string.h>

int
bio_socketset_meta_ensure(BioSocketSet *r, BioBatch *b)
{
    return r->nmeta > 0 ? bio_batch_meta_ensure(b) : 0;
}

void
bio_socketset_recv_cmsgs(const BioSocketSet *r, int idx, BioBatch *b, Py_ssize_t j,
                         const unsigned char *control, size_t len)
{
    BioCmsgIn in;
    bio_cmsg_parse(control, control != NULL ? len : 0, &in);
    b->priv[j].seg = in.seg;
    if (b->meta == NULL)
        return;
    if (!(r->flags[idx] & BIO_SOCK_F_META))
        memset(&in.m, 0, sizeof(in.m)); /* it did not ask: no metadata */
    b->meta->priv[j] = in.m;
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
