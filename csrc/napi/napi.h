/* Busy polling and NAPI (napi/napi.c): the syscalls the socket and select
 * modules lack.
 */
#ifndef BIO_NAPI_H
#define BIO_NAPI_H

#include "core/core.h"

/* Add setns, attach_reuseport_cbpf and register_uring_napi to the module. */
int bio_napi_init(PyObject *module);

#endif /* BIO_NAPI_H */
