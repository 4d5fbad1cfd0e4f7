/* Argument parsing for the hot entry points (METH_FASTCALL): no argument
 * tuple or dict is built per call, and errors read like CPython's own. */
#include "core/core.h"

int
bio_args_parse(const char *fname, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames, const char *const *names, int max_pos,
               int required, PyObject **out)
{
    int n = 0;
    while (names[n] != NULL)
        out[n++] = NULL;
    if (nargs > max_pos) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional arguments (%zd given)",
                     fname, max_pos, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int j = 0;
        while (j < n && PyUnicode_CompareWithASCIIString(key, names[j]) != 0)
            j++;
        if (j == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         fname, key);
            return -1;
        }
        if (out[j] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         fname, names[j]);
            return -1;
        }
        out[j] = args[nargs + k];
    }
    for (int i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s' (pos %d)",
                         fname, names[i], i + 1);
            return -1;
        }
    }
    return 0;
}

int
bio_args_batch(const char *fname, PyObject *obj)
{
    if (PyObject_TypeCheck(obj, &BioBatch_Type))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() argument 1 must be burstio.PacketBatch, not %.100s",
                 fname, Py_TYPE(obj)->tp_name);
    return -1;
}

PyObject *
bio_counters_dict(const void *counters, const char *const *names, int n)
{
    const uint64_t *c = counters;
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(__atomic_load_n(&c[i], __ATOMIC_RELAXED));
        if (v == NULL || PyDict_SetItemString(d, names[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

int
bio_counter_find(const char *const *names, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    PyErr_Format(PyExc_KeyError, "no counter named %s", name);
    return -1;
}
