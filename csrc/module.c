/* burstio._native: module definition. One file per subsystem:
 *   memory.c     Memory: an mmap'd region exported as a buffer
 *   batch.c      PacketBatch (arena + metadata arrays)
 *   args.c       fast argument parsing for the hot entry points
 *   addr.c       address tuples <-> sockaddr
 *   wait.c       GIL release, poll, EINTR, OSError
 *   udp.c        UdpIo type and the receive path (recvmmsg, GRO split)
 *   udp_send.c   the send path (sendmmsg, GSO)
 *   ring.c       SocketSet on io_uring: many sockets, one call
 *   drain.c      the same SocketSet contract on epoll + recvmmsg
 *   zerocopy.c   zero-copy send: buffer pool, SEND_ZC, MSG_ZEROCOPY
 *   shmring.c    netmap-style packet rings in shared memory between processes
 *   napi.c       busy polling and NAPI: epoll params, reuseport BPF, io_uring NAPI
 *   probe.c      capability probes for mmsg syscalls
 *   uring.c      io_uring (liburing)
 */
#include "core/core.h"

static PyMethodDef bio_module_methods[] = {
    {"probe_mmsg", bio_probe_mmsg, METH_NOARGS,
     "probe_mmsg() -> dict: try sendmmsg and recvmmsg on loopback"},
    {"probe_uring", bio_probe_uring, METH_NOARGS,
     "probe_uring() -> dict: try io_uring setup flags, opcodes, buffer rings"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bio_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "burstio._native",
    .m_doc = "burstio's C core: syscalls and memory. Private; use burstio.",
    .m_size = -1,
    .m_methods = bio_module_methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m = PyModule_Create(&bio_module);
    if (m == NULL)
        return NULL;
    if (bio_memory_init_type(m) < 0 || bio_batch_init_type(m) < 0 ||
        bio_udp_init_type(m) < 0 || bio_ring_init_types(m) < 0 ||
        bio_zerocopy_init_types(m) < 0 || bio_shmring_init_types(m) < 0 ||
        bio_napi_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
