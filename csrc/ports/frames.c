/* Frames of a shared pool between the port regions on it: which region
 * holds each frame, in the process that made the pool.
 *
 * A pool is one sealed memfd of frames that is also the UMEM of an AF_XDP
 * socket (a NIC port, ports/nic.c); every region on it (the NIC port's own,
 * and the pipes made from it for worker processes) names its buffers by
 * frame index. The process that made the pool keeps the only frame table:
 * the Umem's state per frame (xdp/umem.c), where BIO_FRAME_PORT with
 * lease_of[f] == region means "in a slot of that region". Workers map the
 * pool and can write anything into their region's slot arrays, so every
 * frame index read back from shared memory is checked here before it is
 * moved to another region or given to the kernel: it must be a frame the
 * table says that region holds. A frame is given to the kernel (fill ring,
 * tx ring) only from that state, and comes back to it only from the
 * kernel's rings, so no frame is ever in the kernel's hands twice, whatever
 * a worker writes; at worst a worker loses its own pipe's frames, or
 * changes bytes it could change anyway.
 *
 * Where a packet goes through it: nowhere; forward() (ports/rx.c) and the
 * NIC port's pump (ports/nic.c) ask it before they move a frame.
 */
#include "ports/ports.h"
#include "xdp/xdp.h"

#include <errno.h>
#include <sys/stat.h>

/* The region's Umem, or NULL. */
static inline BioUmem *
bio_port_frames_umem(BioPortRegion *g)
{
    return (BioUmem *)g->frames;
}

void
bio_port_frames_move(BioPortRegion *to, uint32_t f)
{
    bio_port_frames_umem(to)->lease_of[f] = to;
}

void
bio_port_frames_release(BioPortRegion *g)
{
    BioUmem *u = bio_port_frames_umem(g);
    if (u == NULL)
        return;
    for (uint32_t f = 0; bio_umem_ours(u) && f < u->frames; f++) /* a child's copy: none */
        if ((u->state[f] & BIO_FRAME_PORT) && u->lease_of[f] == (void *)g)
            bio_umem_drop(u, f, BIO_FRAME_PORT);
    Py_CLEAR(g->frames);
}

uint32_t
bio_port_frames_elsewhere(BioPortRegion *g)
{
    BioUmem *u = bio_port_frames_umem(g);
    uint32_t n = 0;
    for (uint32_t f = 0; u != NULL && f < u->frames; f++)
        n += ((u->state[f] & BIO_FRAME_PORT) && u->lease_of[f] != (void *)g) ||
             (u->state[f] & BIO_FRAME_LENT);
    return n;
}

/* ValueError unless the region's pool is the Umem's memory: the same memfd,
 * frames, frame size, and buffer 0 where the kernel puts a received frame
 * (the Umem's headroom plus XDP's). 0 or -1. */
static int
bio_port_frames_check(BioPortRegion *g, BioUmem *u)
{
    struct stat st;
    if (g->pool != BIO_PORT_POOL_SHARED || fstat(g->pool_fd, &st) < 0 ||
        (uint64_t)st.st_dev != u->file_dev || (uint64_t)st.st_ino != u->file_ino) {
        PyErr_SetString(PyExc_ValueError, "use_frames(): the region's buffers are not in this "
                        "Umem's memfd");
        return -1;
    }
    if (g->nbufs != u->frames || g->stride != u->frame_size ||
        g->pool_offset != u->headroom + BIO_XDP_HEADROOM) {
        PyErr_Format(PyExc_ValueError, "use_frames(): the region has %u buffers of %u bytes from "
                     "offset %u; the Umem has %u frames of %u bytes, received at offset %u",
                     g->nbufs, g->stride, g->pool_offset, u->frames, u->frame_size,
                     u->headroom + BIO_XDP_HEADROOM);
        return -1;
    }
    if (g->frames != NULL) {
        PyErr_SetString(PyExc_ValueError, "use_frames(): the region has its frames already");
        return -1;
    }
    return 0;
}

/* Give every slot of ring r of g a free frame of u. 0, or -1 with
 * ValueError (the frames taken so far stay g's, released with it). */
static int
bio_port_frames_fill(BioPortRegion *g, BioUmem *u, int r)
{
    for (uint32_t i = 0; i < g->nslots; i++) {
        int64_t f = bio_umem_take(u, BIO_FRAME_PORT);
        if (f < 0) {
            PyErr_Format(PyExc_ValueError, "the frame pool ran out: ring %d of a region of %u "
                         "slots needs %u frames (make the pool with more frames)", r, g->nslots,
                         g->nslots);
            return -1;
        }
        u->lease_of[f] = g;
        g->slots[r].idx[i] = (uint32_t)f;
    }
    return 0;
}

PyObject *
bio_port_region_use_frames(BioPortRegion *g, PyObject *args)
{
    BioUmem *u;
    int ring0, ring1;
    if (!PyArg_ParseTuple(args, "O!pp:use_frames", &BioUmem_Type, &u, &ring0, &ring1) ||
        bio_umem_check_pid(u) < 0 || bio_port_frames_check(g, u) < 0)
        return NULL;
    if (u->switched) {
        PyErr_SetString(PyExc_RuntimeError, "use_frames(): the Umem's frames belong to a switch "
                        "(its NIC port was attached with add_nic)");
        return NULL;
    }
    g->frames = Py_NewRef((PyObject *)u);
    if ((ring0 && bio_port_frames_fill(g, u, 0) < 0) || (ring1 && bio_port_frames_fill(g, u, 1) < 0)) {
        bio_port_frames_release(g);
        return NULL;
    }
    Py_RETURN_NONE;
}

const char bio_port_region_use_frames_doc[] =
"use_frames($self, umem, ring0, ring1, /)\n--\n\n"
"Keep this region's frames in the Umem's frame table (its pool is the Umem's\n"
"memfd), and give every slot of ring 0 and/or ring 1 a free frame. From then\n"
"on forward() swaps frames with other regions on the same Umem, checking each\n"
"index, and the region's frames go back to the Umem when it is gone.";
