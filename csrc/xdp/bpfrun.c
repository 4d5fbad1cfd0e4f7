/* The bpf() system call, continued: BPF_PROG_RUN (a program run on given
 * bytes, or on live frames that really leave through a device), and what
 * the kernel says about loaded objects (information by descriptor, ids,
 * descriptors by id) for `burstio xdp show` and detach.
 *
 * Where a frame goes through it: with BPF_F_TEST_XDP_LIVE_FRAMES, the
 * packet generator's frames go from here out of the device the program
 * returns XDP_TX on.
 */
#include "xdp/xdp.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    union bpf_attr attr;
    long result;
} BioBpfRun;

/* BPF_PROG_TEST_RUN without the GIL; the kernel restarts it on a signal. */
static int
bio_bpf_run_nogil(void *ctx)
{
    BioBpfRun *r = ctx;
    long n = syscall(__NR_bpf, BPF_PROG_TEST_RUN, &r->attr, sizeof(r->attr));
    r->result = n < 0 ? -errno : n;
    return n < 0 ? -errno : 0;
}

PyDoc_STRVAR(bio_bpf_prog_run_doc,
"bpf_prog_run($module, prog_fd, data, repeat, flags, batch_size, ifindex, queue, out_size, /)\n"
"--\n\nBPF_PROG_TEST_RUN of an XDP program on the frame `data`, `repeat` times\n"
"(the GIL released). flags BPF_F_TEST_XDP_LIVE_FRAMES sends the frames for\n"
"real (XDP_TX leaves through ifindex; batch_size frames per batch);\n"
"otherwise the program sees a copy as received on ifindex/queue (0: none).\n"
"Returns (retval, duration_ns, frame after the run or None when out_size is 0).");

static PyObject *
bio_bpf_prog_run(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer data;
    unsigned int repeat, flags, batch, ifindex, queue;
    Py_ssize_t out_size;
    if (!PyArg_ParseTuple(args, "iy*IIIIIn:bpf_prog_run", &fd, &data, &repeat, &flags, &batch,
                          &ifindex, &queue, &out_size))
        return NULL;
    PyObject *out = NULL, *ret = NULL;
    if (out_size < 0 || out_size > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "out_size must be between 0 and %d, got %zd", 1 << 20,
                     out_size);
        goto done;
    }
    if (out_size > 0 && (out = PyBytes_FromStringAndSize(NULL, out_size)) == NULL)
        goto done;
    struct xdp_md md;
    memset(&md, 0, sizeof(md));
    md.data_end = (uint32_t)data.len;
    md.ingress_ifindex = ifindex;
    md.rx_queue_index = queue;
    BioBpfRun r;
    memset(&r, 0, sizeof(r));
    r.attr.test.prog_fd = (uint32_t)fd;
    r.attr.test.data_in = (uint64_t)(uintptr_t)data.buf;
    r.attr.test.data_size_in = (uint32_t)data.len;
    if (out != NULL) {
        r.attr.test.data_out = (uint64_t)(uintptr_t)PyBytes_AS_STRING(out);
        r.attr.test.data_size_out = (uint32_t)out_size;
    }
    r.attr.test.repeat = repeat;
    r.attr.test.flags = flags;
    r.attr.test.batch_size = batch;
    if (ifindex) {
        r.attr.test.ctx_in = (uint64_t)(uintptr_t)&md;
        r.attr.test.ctx_size_in = sizeof(md);
    }
    int e = bio_nogil_retry(bio_bpf_run_nogil, &r);
    if (e < 0) {
        if (e != -EINTR || !PyErr_Occurred())
            bio_raise_errno(e);
        goto done;
    }
    if (out != NULL && _PyBytes_Resize(&out, r.attr.test.data_size_out) < 0)
        goto done;
    ret = Py_BuildValue("(IIO)", r.attr.test.retval, r.attr.test.duration,
                        out != NULL ? out : Py_None);
done:
    Py_XDECREF(out);
    PyBuffer_Release(&data);
    return ret;
}

/* BPF_OBJ_GET_INFO_BY_FD into info (size bytes). 0 or -errno. */
static long
bio_bpf_obj_info(int fd, void *info, uint32_t size)
{
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    memset(info, 0, size);
    a.info.bpf_fd = (uint32_t)fd;
    a.info.info_len = size;
    a.info.info = (uint64_t)(uintptr_t)info;
    long r = syscall(__NR_bpf, BPF_OBJ_GET_INFO_BY_FD, &a, sizeof(a));
    return r < 0 ? -errno : 0;
}

PyDoc_STRVAR(bio_bpf_prog_info_doc,
"bpf_prog_info($module, fd, /)\n--\n\n"
"What the kernel says about a program: {'type', 'id', 'name', 'tag' (hex)}.");

static PyObject *
bio_bpf_prog_info(PyObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i:bpf_prog_info", &fd))
        return NULL;
    struct bpf_prog_info info;
    long r = bio_bpf_obj_info(fd, &info, sizeof(info));
    if (r < 0)
        return bio_raise_errno((int)r);
    char tag[2 * BPF_TAG_SIZE + 1];
    for (int i = 0; i < BPF_TAG_SIZE; i++)
        snprintf(tag + 2 * i, 3, "%02x", info.tag[i]);
    return Py_BuildValue("{sIsIssss}", "type", info.type, "id", info.id, "name", info.name,
                         "tag", tag);
}

PyDoc_STRVAR(bio_bpf_link_info_doc,
"bpf_link_info($module, fd, /)\n--\n\n"
"What the kernel says about a link: {'type', 'id', 'prog_id', 'ifindex'}\n"
"(ifindex: an XDP link's device, else 0).");

static PyObject *
bio_bpf_link_info(PyObject *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i:bpf_link_info", &fd))
        return NULL;
    struct bpf_link_info info;
    long r = bio_bpf_obj_info(fd, &info, sizeof(info));
    if (r < 0)
        return bio_raise_errno((int)r);
    unsigned ifindex = info.type == BPF_LINK_TYPE_XDP ? info.xdp.ifindex : 0;
    return Py_BuildValue("{sIsIsIsI}", "type", info.type, "id", info.id, "prog_id",
                         info.prog_id, "ifindex", ifindex);
}

/* The (next id, fd by id) commands of an object kind, or -1 with ValueError. */
static int
bio_bpf_kind(const char *kind, int *next_cmd, int *fd_cmd)
{
    if (strcmp(kind, "prog") == 0) {
        *next_cmd = BPF_PROG_GET_NEXT_ID;
        *fd_cmd = BPF_PROG_GET_FD_BY_ID;
    } else if (strcmp(kind, "link") == 0) {
        *next_cmd = BPF_LINK_GET_NEXT_ID;
        *fd_cmd = BPF_LINK_GET_FD_BY_ID;
    } else if (strcmp(kind, "map") == 0) {
        *next_cmd = BPF_MAP_GET_NEXT_ID;
        *fd_cmd = BPF_MAP_GET_FD_BY_ID;
    } else {
        PyErr_Format(PyExc_ValueError, "kind must be 'prog', 'link' or 'map', got '%s'", kind);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(bio_bpf_next_id_doc,
"bpf_next_id($module, kind, start_id, /)\n--\n\n"
"The id of the next loaded object of kind 'prog', 'link' or 'map' after\n"
"start_id, or None after the last.");

static PyObject *
bio_bpf_next_id(PyObject *self, PyObject *args)
{
    const char *kind;
    unsigned int start;
    int next_cmd, fd_cmd;
    if (!PyArg_ParseTuple(args, "sI:bpf_next_id", &kind, &start) ||
        bio_bpf_kind(kind, &next_cmd, &fd_cmd) < 0)
        return NULL;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.start_id = start;
    if (syscall(__NR_bpf, next_cmd, &a, sizeof(a)) < 0) {
        if (errno == ENOENT)
            Py_RETURN_NONE;
        return bio_raise_errno(-errno);
    }
    return PyLong_FromUnsignedLong(a.next_id);
}

PyDoc_STRVAR(bio_bpf_fd_by_id_doc,
"bpf_fd_by_id($module, kind, id, /)\n--\n\n"
"A new descriptor of the loaded object of kind 'prog', 'link' or 'map' with this id.");

static PyObject *
bio_bpf_fd_by_id(PyObject *self, PyObject *args)
{
    const char *kind;
    unsigned int id;
    int next_cmd, fd_cmd;
    if (!PyArg_ParseTuple(args, "sI:bpf_fd_by_id", &kind, &id) ||
        bio_bpf_kind(kind, &next_cmd, &fd_cmd) < 0)
        return NULL;
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    if (fd_cmd == BPF_PROG_GET_FD_BY_ID)
        a.prog_id = id;
    else if (fd_cmd == BPF_MAP_GET_FD_BY_ID)
        a.map_id = id;
    else
        a.link_id = id;
    long r = syscall(__NR_bpf, fd_cmd, &a, sizeof(a));
    return r < 0 ? bio_raise_errno(-errno) : PyLong_FromLong(r);
}

static PyMethodDef bio_bpf_run_methods[] = {
    {"bpf_prog_run", bio_bpf_prog_run, METH_VARARGS, bio_bpf_prog_run_doc},
    {"bpf_prog_info", bio_bpf_prog_info, METH_VARARGS, bio_bpf_prog_info_doc},
    {"bpf_link_info", bio_bpf_link_info, METH_VARARGS, bio_bpf_link_info_doc},
    {"bpf_next_id", bio_bpf_next_id, METH_VARARGS, bio_bpf_next_id_doc},
    {"bpf_fd_by_id", bio_bpf_fd_by_id, METH_VARARGS, bio_bpf_fd_by_id_doc},
    {NULL, NULL, 0, NULL},
};

int
bio_bpf_test_run_init(PyObject *module)
{
    return PyModule_AddFunctions(module, bio_bpf_run_methods);
}
