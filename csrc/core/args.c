/* Arguments: the fast parsing of the hot entry points (METH_FASTCALL: no
 * argument tuple or dict is built per call, and errors read like CPython's
 * own), and the one check of an int argument, worded as
 * src/burstio/_checks.py words it.
 *
 * Where a datagram goes through it: nowhere; it checks what the caller says
 * about the datagrams (batch, start, count, sizes, keys) before any moves.
 */
#include "core/core.h"

#include <string.h>

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

/* type(obj).__name__, as Python words a type in an error. */
static const char *
bio_args_type_name(PyObject *obj)
{
    const char *name = Py_TYPE(obj)->tp_name, *dot = strrchr(name, '.');
    return dot != NULL ? dot + 1 : name;
}

/* The value of the int obj; ValueError unless lo <= it <= hi. 0 or -1. */
static int
bio_args_int_range(const char *name, PyObject *obj, long long lo, long long hi,
                   long long *out)
{
    PyObject *v = PyNumber_Index(obj);
    if (v == NULL)
        return -1;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) {
        Py_DECREF(v);
        return -1;
    }
    if (overflow || x < lo || x > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be between %lld and %lld, got %S", name, lo, hi,
                     v);
        Py_DECREF(v);
        return -1;
    }
    Py_DECREF(v);
    *out = x;
    return 0;
}

int
bio_args_int_type(const char *name, PyObject *obj, int or_none)
{
    if (or_none && obj == Py_None)
        return 0;
    if (PyBool_Check(obj) || !(PyLong_Check(obj) || PyIndex_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "%s must be int%s, got %.100s", name,
                     or_none ? " or None" : "", bio_args_type_name(obj));
        return -1;
    }
    return 0;
}

int
bio_args_int(const char *name, PyObject *obj, long long lo, long long hi, long long *out)
{
    if (bio_args_int_type(name, obj, 0) < 0)
        return -1;
    return bio_args_int_range(name, obj, lo, hi, out);
}

int
bio_args_int_or_none(const char *name, PyObject *obj, long long lo, long long hi,
                     long long *out)
{
    if (obj == NULL || obj == Py_None)
        return 1;
    if (bio_args_int_type(name, obj, 1) < 0)
        return -1;
    return bio_args_int_range(name, obj, lo, hi, out);
}

int
bio_args_contiguous(PyObject *obj, Py_buffer *view)
{
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "buffer must be a bytes-like object, got %.100s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "buffer must be C-contiguous");
        return -1;
    }
    return 0;
}
