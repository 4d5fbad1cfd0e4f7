/* Memory: one mmap'd region that Python sees through the buffer protocol.
 *
 * Where a datagram goes through it: into a PacketBatch's arena (receive
 * slots, appended payloads), a zero-copy pool's buffers or a port region
 * (shared with another process); this file only owns the mapping.
 *
 * A PacketBatch keeps its arena in a Memory object rather than in itself, so
 * that the memoryviews it hands out (batch[i], batch.arena) keep the memory
 * alive without referring back to the batch: no reference cycle, and the
 * region is unmapped as soon as the last user lets go. */
#include "core/core.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

static void
bio_memory_dealloc(BioMemory *m)
{
    if (m->ptr != NULL)
        munmap(m->ptr, m->size);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static int
bio_memory_getbuffer(BioMemory *m, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)m, m->ptr, (Py_ssize_t)m->size, 0, flags);
}

static PyBufferProcs bio_memory_as_buffer = {(getbufferproc)bio_memory_getbuffer, NULL};

PyTypeObject BioMemory_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "burstio._native.Memory",
    .tp_basicsize = sizeof(BioMemory),
    .tp_dealloc = (destructor)bio_memory_dealloc,
    .tp_as_buffer = &bio_memory_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An mmap'd memory region (internal); see PacketBatch.arena.",
};

/* Fault every page of [ptr, ptr + size) in, so that no receive takes a page
 * fault later. Done without the GIL: a large arena takes seconds, and other
 * threads must not stall meanwhile. 0 or -errno. */
static int
bio_memory_fault_in(unsigned char *ptr, size_t size)
{
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
#ifdef MADV_POPULATE_WRITE
    if (madvise(ptr, size, MADV_POPULATE_WRITE) < 0)
        err = errno == EINVAL ? 1 : -errno; /* EINVAL: older kernel, touch the pages */
#else
    err = 1;
#endif
    if (err == 1) {
        err = 0;
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        for (size_t off = 0; off < size; off += page)
            ((volatile unsigned char *)ptr)[off] = 0;
    }
    Py_END_ALLOW_THREADS
    return err;
}

BioMemory *
bio_memory_new(size_t size)
{
    BioMemory *m = PyObject_New(BioMemory, &BioMemory_Type);
    if (m == NULL)
        return NULL;
    m->size = size;
    m->ptr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int err = m->ptr == MAP_FAILED ? -errno : 0;
    if (m->ptr == MAP_FAILED)
        m->ptr = NULL;
    else
        err = bio_memory_fault_in(m->ptr, size);
    if (err < 0) {
        Py_DECREF(m);
        bio_raise_errno(err);
        return NULL;
    }
    return m;
}

BioMemory *
bio_memory_wrap(void *ptr, size_t size)
{
    BioMemory *m = PyObject_New(BioMemory, &BioMemory_Type);
    if (m == NULL) {
        munmap(ptr, size);
        return NULL;
    }
    m->ptr = ptr;
    m->size = size;
    return m;
}

int
bio_memory_init_type(PyObject *module)
{
    return PyType_Ready(&BioMemory_Type);
}
