/* The bpf() system call, raw: map create/lookup/update/delete/iterate,
 * program load, BPF links (attach and detach), BPF_PROG_RUN, object
 * information and ids. No libbpf: Python (src/burstio/xdp/_bpf.py) reads
 * the ELF object, creates the maps, patches their descriptors into the
 * program and decides everything else; these functions only make the calls.
 *
 * Where a frame goes through it: nowhere; the programs loaded here decide
 * where every frame goes (src/burstio/xdp/bpf/), and BPF_PROG_RUN with live
 * frames is how the packet generator sends.
 */
#include "xdp/xdp.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* One bpf() call: its result, or -errno. */
static long
bio_bpf_call(int cmd, union bpf_attr *attr)
{
    long r = syscall(__NR_bpf, cmd, attr, sizeof(*attr));
    return r < 0 ? -errno : r;
}

/* A bpf() call that returns a descriptor, as a Python int (or OSError). */
static PyObject *
bio_bpf_fd_result(long r)
{
    return r < 0 ? bio_raise_errno((int)r) : PyLong_FromLong(r);
}

PyDoc_STRVAR(bio_bpf_map_create_doc,
"bpf_map_create($module, map_type, key_size, value_size, max_entries, map_flags, name, /)\n"
"--\n\nBPF_MAP_CREATE: a new map; returns its descriptor (the caller closes it).");

static PyObject *
bio_bpf_map_create(PyObject *self, PyObject *args)
{
    unsigned int type, ksize, vsize, entries, flags;
    const char *name;
    if (!PyArg_ParseTuple(args, "IIIIIs:bpf_map_create", &type, &ksize, &vsize, &entries,
                          &flags, &name))
        return NULL;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_type = type;
    a.key_size = ksize;
    a.value_size = vsize;
    a.max_entries = entries;
    a.map_flags = flags;
    strncpy(a.map_name, name, sizeof(a.map_name) - 1);
    return bio_bpf_fd_result(bio_bpf_call(BPF_MAP_CREATE, &a));
}

/* A map element operation on (fd, key, value, flags); 0 or -errno. */
static long
bio_bpf_elem(int cmd, int fd, const void *key, void *value, uint64_t flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)fd;
    a.key = (uint64_t)(uintptr_t)key;
    a.value = (uint64_t)(uintptr_t)value;
    a.flags = flags;
    return bio_bpf_call(cmd, &a);
}

PyDoc_STRVAR(bio_bpf_map_update_doc,
"bpf_map_update($module, fd, key, value, flags, /)\n--\n\n"
"BPF_MAP_UPDATE_ELEM (flags: BPF_ANY, BPF_NOEXIST, BPF_EXIST). For a\n"
"per-CPU map value holds every possible CPU's slot.");

static PyObject *
bio_bpf_map_update(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer key, value;
    unsigned long long flags;
    if (!PyArg_ParseTuple(args, "iy*y*K:bpf_map_update", &fd, &key, &value, &flags))
        return NULL;
    long r = bio_bpf_elem(BPF_MAP_UPDATE_ELEM, fd, key.buf, value.buf, flags);
    PyBuffer_Release(&key);
    PyBuffer_Release(&value);
    if (r < 0)
        return bio_raise_errno((int)r);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bio_bpf_map_lookup_doc,
"bpf_map_lookup($module, fd, key, value_size, /)\n--\n\n"
"BPF_MAP_LOOKUP_ELEM: the value (value_size bytes; for a per-CPU map every\n"
"possible CPU's slot, 8-byte aligned), or None if the key is absent.");

static PyObject *
bio_bpf_map_lookup(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer key;
    Py_ssize_t vsize;
    if (!PyArg_ParseTuple(args, "iy*n:bpf_map_lookup", &fd, &key, &vsize))
        return NULL;
    if (vsize < 0 || vsize > (1 << 24)) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "value_size must be between 0 and %d, got %zd", 1 << 24,
                     vsize);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, vsize);
    if (out == NULL) {
        PyBuffer_Release(&key);
        return NULL;
    }
    long r = bio_bpf_elem(BPF_MAP_LOOKUP_ELEM, fd, key.buf, PyBytes_AS_STRING(out), 0);
    PyBuffer_Release(&key);
    if (r < 0) {
        Py_DECREF(out);
        if (r == -ENOENT)
            Py_RETURN_NONE;
        return bio_raise_errno((int)r);
    }
    return out;
}

PyDoc_STRVAR(bio_bpf_map_delete_doc,
"bpf_map_delete($module, fd, key, /)\n--\n\n"
"BPF_MAP_DELETE_ELEM: True if the key was there, False if not.");

static PyObject *
bio_bpf_map_delete(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "iy*:bpf_map_delete", &fd, &key))
        return NULL;
    long r = bio_bpf_elem(BPF_MAP_DELETE_ELEM, fd, key.buf, NULL, 0);
    PyBuffer_Release(&key);
    if (r == -ENOENT)
        Py_RETURN_FALSE;
    if (r < 0)
        return bio_raise_errno((int)r);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(bio_bpf_map_next_key_doc,
"bpf_map_next_key($module, fd, key, key_size, /)\n--\n\n"
"BPF_MAP_GET_NEXT_KEY: the key after `key` (None: the first), or None at the end.");

static PyObject *
bio_bpf_map_next_key(PyObject *self, PyObject *args)
{
    int fd;
    PyObject *key_obj;
    Py_ssize_t ksize;
    if (!PyArg_ParseTuple(args, "iOn:bpf_map_next_key", &fd, &key_obj, &ksize))
        return NULL;
    if (ksize <= 0 || ksize > 512) {
        PyErr_Format(PyExc_ValueError, "key_size must be between 1 and 512, got %zd", ksize);
        return NULL;
    }
    Py_buffer key = {0};
    if (key_obj != Py_None && PyObject_GetBuffer(key_obj, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, ksize);
    long r = out == NULL ? 0
                         : bio_bpf_elem(BPF_MAP_GET_NEXT_KEY, fd, key.buf,
                                        PyBytes_AS_STRING(out), 0);
    if (key_obj != Py_None)
        PyBuffer_Release(&key);
    if (out != NULL && r < 0) {
        Py_CLEAR(out);
        if (r == -ENOENT)
            Py_RETURN_NONE;
        return bio_raise_errno((int)r);
    }
    return out;
}

/* BPF_PROG_LOAD of insns; with a log buffer of log_size bytes (level 1)
 * when log_size > 0: level 0 with a buffer is EINVAL. Descriptor or -errno. */
static long
bio_bpf_prog_load_once(unsigned type, const Py_buffer *insns, const char *license,
                       const char *name, unsigned attach, unsigned flags, char *log,
                       uint32_t log_size)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.prog_type = type;
    a.prog_flags = flags;
    a.insns = (uint64_t)(uintptr_t)insns->buf;
    a.insn_cnt = (uint32_t)(insns->len / 8);
    a.license = (uint64_t)(uintptr_t)license;
    a.expected_attach_type = attach;
    strncpy(a.prog_name, name, sizeof(a.prog_name) - 1);
    if (log_size > 0) {
        a.log_level = 1;
        a.log_buf = (uint64_t)(uintptr_t)log;
        a.log_size = log_size;
        log[0] = '\0';
    }
    return bio_bpf_call(BPF_PROG_LOAD, &a);
}

PyDoc_STRVAR(bio_bpf_prog_load_doc,
"bpf_prog_load($module, prog_type, insns, license, name, expected_attach_type, prog_flags,\n"
"              log_size, /)\n"
"--\n\nBPF_PROG_LOAD (prog_flags: BPF_F_XDP_HAS_FRAGS for a program that\n"
"takes multi-buffer frames): returns (fd, ''). If the kernel refuses it and\n"
"log_size > 0, it is loaded again with a verifier log of that size and the\n"
"OSError carries the log as its `log` attribute.");

static PyObject *
bio_bpf_prog_load(PyObject *self, PyObject *args)
{
    unsigned int type, attach, flags;
    Py_buffer insns;
    const char *license, *name;
    Py_ssize_t log_size;
    if (!PyArg_ParseTuple(args, "Iy*ssIIn:bpf_prog_load", &type, &insns, &license, &name,
                          &attach, &flags, &log_size))
        return NULL;
    PyObject *ret = NULL;
    if (insns.len == 0 || insns.len % 8 != 0 || log_size < 0 || log_size > (1 << 24)) {
        PyErr_Format(PyExc_ValueError,
                     "insns must be whole 8-byte instructions (got %zd bytes) and log_size "
                     "between 0 and %d (got %zd)", insns.len, 1 << 24, log_size);
        goto out;
    }
    long r = bio_bpf_prog_load_once(type, &insns, license, name, attach, flags, NULL, 0);
    if (r >= 0) {
        ret = Py_BuildValue("(ls)", r, "");
        goto out;
    }
    int err = (int)r;
    char *log = log_size > 0 ? PyMem_RawMalloc((size_t)log_size) : NULL;
    if (log != NULL) {
        long again = bio_bpf_prog_load_once(type, &insns, license, name, attach, flags, log,
                                            (uint32_t)log_size);
        if (again >= 0)
            close((int)again); /* accepted with a log after all: report the first error */
    }
    bio_raise_errno(err);
    if (log != NULL) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        PyObject *text = PyUnicode_DecodeUTF8(log, (Py_ssize_t)strnlen(log, (size_t)log_size),
                                              "replace");
        if (text == NULL || PyObject_SetAttrString(v, "log", text) < 0)
            PyErr_Clear();
        Py_XDECREF(text);
        PyErr_Restore(t, v, tb);
        PyMem_RawFree(log);
    }
out:
    PyBuffer_Release(&insns);
    return ret;
}

PyDoc_STRVAR(bio_bpf_link_create_doc,
"bpf_link_create($module, prog_fd, target_ifindex, attach_type, flags, /)\n--\n\n"
"BPF_LINK_CREATE: attach prog_fd (for XDP: attach_type BPF_XDP, flags\n"
"XDP_FLAGS_SKB_MODE or XDP_FLAGS_DRV_MODE). Returns the link's descriptor;\n"
"the kernel detaches the program when the last descriptor closes.");

static PyObject *
bio_bpf_link_create(PyObject *self, PyObject *args)
{
    int prog_fd;
    unsigned int ifindex, attach, flags;
    if (!PyArg_ParseTuple(args, "iIII:bpf_link_create", &prog_fd, &ifindex, &attach, &flags))
        return NULL;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.link_create.prog_fd = (uint32_t)prog_fd;
    a.link_create.target_ifindex = ifindex;
    a.link_create.attach_type = attach;
    a.link_create.flags = flags;
    return bio_bpf_fd_result(bio_bpf_call(BPF_LINK_CREATE, &a));
}

PyDoc_STRVAR(bio_bpf_link_detach_doc,
"bpf_link_detach($module, link_fd, /)\n--\n\n"
"BPF_LINK_DETACH: detach the link's program now (the descriptor stays open).");

static PyObject *
bio_bpf_link_detach(PyObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i:bpf_link_detach", &fd))
        return NULL;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.link_detach.link_fd = (uint32_t)fd;
    long r = bio_bpf_call(BPF_LINK_DETACH, &a);
    if (r < 0)
        return bio_raise_errno((int)r);
    Py_RETURN_NONE;
}

static PyMethodDef bio_bpf_methods[] = {
    {"bpf_map_create", bio_bpf_map_create, METH_VARARGS, bio_bpf_map_create_doc},
    {"bpf_map_update", bio_bpf_map_update, METH_VARARGS, bio_bpf_map_update_doc},
    {"bpf_map_lookup", bio_bpf_map_lookup, METH_VARARGS, bio_bpf_map_lookup_doc},
    {"bpf_map_delete", bio_bpf_map_delete, METH_VARARGS, bio_bpf_map_delete_doc},
    {"bpf_map_next_key", bio_bpf_map_next_key, METH_VARARGS, bio_bpf_map_next_key_doc},
    {"bpf_prog_load", bio_bpf_prog_load, METH_VARARGS, bio_bpf_prog_load_doc},
    {"bpf_link_create", bio_bpf_link_create, METH_VARARGS, bio_bpf_link_create_doc},
    {"bpf_link_detach", bio_bpf_link_detach, METH_VARARGS, bio_bpf_link_detach_doc},
    {NULL, NULL, 0, NULL},
};

int
bio_bpf_init(PyObject *module)
{
    if (PyModule_AddFunctions(module, bio_bpf_methods) < 0)
        return -1;
    return bio_bpf_test_run_init(module);
}
