/* udp_parse_for_fuzz(): the receive path's per-message finishing step
 * (udp/recv.c: the cmsg walk, then the GRO split into entries) run on one
 * synthetic message whose control buffer and length the caller makes up, as
 * if the kernel had written them. A fuzzer feeds it arbitrary bytes; the
 * step must never read outside the control buffer or write an entry that
 * points outside the slot, whatever they hold.
 *
 * Where a datagram goes through it: nowhere real; a made-up message goes
 * through exactly what a received one goes through after recvmmsg.
 */
#include "udp/udp.h"

#include <string.h>

const char bio_udp_parse_for_fuzz_doc[] =
"udp_parse_for_fuzz($module, control, length, slot_size, gro, /)\n--\n\n"
"Run recv_batch's finishing step on one made-up message: `control` as its\n"
"control buffer (arbitrary bytes, read as the kernel's cmsgs, at most the\n"
"256 bytes a receive slot with metadata has), `length` as the datagram's length in a slot\n"
"of `slot_size` bytes (MSG_TRUNC when it does not fit), `gro` as a GRO\n"
"socket's batch (room for 64 segments per slot) or not (one entry). Returns\n"
"the entries as [(offset, length, flags, segment_size), ...].";

/* The batch and the UdpIo the step runs on: one slot of slot_size, room
 * for a GRO receive's segments when gro. 0, or -1 with an error set. */
static int
bio_udp_fuzz_objects(long long slot_size, int gro, BioBatch **b, BioUdp **u)
{
    *u = (BioUdp *)PyObject_CallFunction((PyObject *)&BioUdp_Type, "i", -1);
    if (*u == NULL)
        return -1;
    (*u)->gro = gro;
    Py_ssize_t capacity = gro ? (*u)->gro_max_segments : 1;
    PyObject *args = Py_BuildValue("(nL)", capacity, slot_size);
    PyObject *kw = Py_BuildValue("{s:i}", "slots", 1);
    *b = args && kw ? (BioBatch *)PyObject_Call((PyObject *)&BioBatch_Type, args, kw) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(kw);
    /* with the metadata arrays, so that every cmsg the walk knows is read */
    return *b == NULL || bio_batch_meta_ensure(*b) < 0 ? -1 : 0;
}

/* The entries [0, n) of b as a list of (offset, length, flags, segment_size). */
static PyObject *
bio_udp_fuzz_entries(const BioBatch *b, Py_ssize_t n)
{
    PyObject *list = PyList_New(n);
    for (Py_ssize_t j = 0; list != NULL && j < n; j++) {
        PyObject *t = Py_BuildValue("(KIII)", (unsigned long long)b->offsets[j], b->lengths[j],
                                    b->flags[j], b->segment_sizes[j]);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, j, t);
    }
    return list;
}

PyObject *
bio_udp_parse_for_fuzz(PyObject *module, PyObject *args)
{
    PyObject *a[4], *ret = NULL;
    long long length, slot_size;
    Py_buffer cb;
    if (!PyArg_ParseTuple(args, "OOOO:udp_parse_for_fuzz", &a[0], &a[1], &a[2], &a[3]) ||
        bio_args_int("length", a[1], 0, UINT32_MAX, &length) < 0 ||
        bio_args_int("slot_size", a[2], 1, 16 << 20, &slot_size) < 0)
        return NULL;
    int gro = PyObject_IsTrue(a[3]);
    if (gro < 0 || bio_args_contiguous(a[0], &cb) < 0)
        return NULL;
    BioBatch *b = NULL;
    BioUdp *u = NULL;
    /* a private copy of exactly len(control) bytes: the walk's only bounds */
    unsigned char *control = PyMem_Malloc(cb.len > 0 ? (size_t)cb.len : 1);
    if (control == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    memcpy(control, cb.buf, (size_t)cb.len);
    if (bio_udp_fuzz_objects(slot_size, gro, &b, &u) < 0)
        goto out;
    struct msghdr *h = &b->msgs[0].msg_hdr;
    memset(h, 0, sizeof(*h));
    h->msg_control = control;
    h->msg_controllen = (size_t)cb.len;
    h->msg_flags = length > slot_size ? MSG_TRUNC : 0;
    b->msgs[0].msg_len = (unsigned int)length;
    ret = bio_udp_fuzz_entries(b, bio_udp_recv_finish_nogil(u, b, 1));
out:
    Py_XDECREF(b);
    Py_XDECREF(u);
    PyMem_Free(control);
    PyBuffer_Release(&cb);
    return ret;
}
