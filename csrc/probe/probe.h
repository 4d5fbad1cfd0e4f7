/* Capability probes that need syscalls the socket module lacks
 * (probe/mmsg.c: sendmmsg/recvmmsg; probe/uring.c: io_uring).
 */
#ifndef BIO_PROBE_H
#define BIO_PROBE_H

#include "core/core.h"

/* probe_mmsg() and probe_uring(): dicts of name -> (works, detail). */
PyObject *bio_probe_mmsg(PyObject *self, PyObject *args);
PyObject *bio_probe_uring(PyObject *self, PyObject *args);
/* Add probe_mmsg and probe_uring to the module. */
int bio_probe_init(PyObject *module);

#endif /* BIO_PROBE_H */
