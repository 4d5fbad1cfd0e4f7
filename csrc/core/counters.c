/* Counters: every C object's counters are a uint64_t array added to with
 * BIO_COUNT (core/core.h); this file reads them into a dict and finds one by
 * name for Python's count(name, n).
 *
 * Where a datagram goes through it: nowhere; what a datagram did (received,
 * sent, dropped, copied) is counted where it happened and read here.
 */
#include "core/core.h"

#include <string.h>

PyObject *
bio_counters_dict(const uint64_t *counters, const char *const *names, int n)
{
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(__atomic_load_n(&counters[i], __ATOMIC_RELAXED));
        if (v == NULL || PyDict_SetItemString(d, names[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

int
bio_counters_find(const char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    PyErr_Format(PyExc_KeyError, "no counter named %s", name);
    return -1;
}

PyObject *
bio_counters_count_py(uint64_t *counters, const char *const *names, int n, PyObject *args)
{
    const char *name;
    unsigned long long add;
    if (!PyArg_ParseTuple(args, "sK:count", &name, &add))
        return NULL;
    int i = bio_counters_find(names, n, name);
    if (i < 0)
        return NULL;
    BIO_COUNT(counters, i, add);
    Py_RETURN_NONE;
}
