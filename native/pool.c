/* Buffer pool: page/hugepage-aligned slabs carved into buffers.
 *
 * A slab is one mmap; buffers are first-fit extents inside it, coalesced on release, so a
 * training loop that allocates the same sizes every step reuses the same (already UCX-
 * registered) memory. A request larger than the slab size gets a dedicated slab that is
 * unmapped as soon as its buffer is released. All state is protected by the GIL: pool
 * methods never release it.
 *
 * Buffers export their memory through the buffer protocol (writable, 1-D bytes) and
 * DLPack; every export is counted so that release() can refuse while a view is alive
 * instead of leaving it dangling.
 */
#include "tfyarn_native.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_2M ((size_t)2 << 20)

static size_t page_size(void) {
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096;
}

static size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* ------------------------------------------------------------------ slabs */

/* How slabs get registered with a transport; NULL until one (ucx.c) installs itself. */
static const tfy_registrar *g_registrar;

void tfy_pool_set_registrar(const tfy_registrar *registrar) { g_registrar = registrar; }

static void slab_unregister(tfy_slab *s) {
    if (s->reg != NULL && g_registrar != NULL) g_registrar->deregister_memory(s->reg);
    s->reg = NULL;
}

/* Register the slab (once) when a registrar is installed. Returns 0 when registered, -1
 * (no exception) when not. */
static int slab_register(tfy_slab *s) {
    if (s->reg != NULL) return 0;
    if (g_registrar == NULL) return -1;
    s->reg = g_registrar->register_memory(s->base, s->size);
    return s->reg != NULL ? 0 : -1;
}

static void slab_free(tfy_slab *s) {
    slab_unregister(s);
    if (s->map_base != NULL) munmap(s->map_base, s->map_size);
    PyMem_Free(s->free);
    PyMem_Free(s);
}

/* mmap `size` bytes aligned to `align`; trims the over-allocation needed for alignment. */
static void *map_aligned(size_t size, size_t align, int extra_flags, void **map_base,
                         size_t *map_size) {
    size_t total = size + (align > page_size() ? align : 0);
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags,
                   -1, 0);
    if (p == MAP_FAILED) return NULL;
    uintptr_t start = (uintptr_t)p;
    uintptr_t aligned = (start + align - 1) / align * align;
    /* hugetlbfs mappings cannot be partially unmapped at non-huge boundaries; keep them. */
    if (!(extra_flags & MAP_HUGETLB) && total > size) {
        size_t head = aligned - start;
        size_t tail = total - head - size;
        if (head) munmap(p, head);
        if (tail) munmap((void *)(aligned + size), tail);
        *map_base = (void *)aligned;
        *map_size = size;
    } else {
        *map_base = p;
        *map_size = total;
    }
    return (void *)aligned;
}

static tfy_slab *slab_new(tfy_pool *pool, size_t size, int dedicated) {
    tfy_slab *s = PyMem_Calloc(1, sizeof *s);
    if (s == NULL) return (tfy_slab *)PyErr_NoMemory();
    size_t align = pool->alignment;
    void *base = NULL;
    if (pool->hugepages) {
        /* Explicit huge pages need a reserved hugetlbfs pool (vm.nr_hugepages); when the
         * kernel has none, fall back to transparent huge pages on 2 MiB-aligned memory. */
        size_t hsize = round_up(size, HUGE_2M);
        size_t halign = align > HUGE_2M ? align : HUGE_2M;
#ifdef MAP_HUGETLB
        base = map_aligned(hsize, halign, MAP_HUGETLB, &s->map_base, &s->map_size);
        if (base != NULL) s->huge = 2;
#endif
        if (base == NULL) {
            base = map_aligned(hsize, halign, 0, &s->map_base, &s->map_size);
#ifdef MADV_HUGEPAGE
            if (base != NULL && madvise(base, hsize, MADV_HUGEPAGE) == 0) s->huge = 1;
#endif
        }
        size = hsize;
    } else {
        size = round_up(size, page_size());
        base = map_aligned(size, align, 0, &s->map_base, &s->map_size);
    }
    if (base == NULL) {
        int err = errno;
        PyMem_Free(s);
        PyErr_Format(PyExc_MemoryError, "tfyarn buffer pool: mmap of %zu bytes failed: %s", size,
                     strerror(err));
        return NULL;
    }
    s->base = base;
    s->size = size;
    s->dedicated = dedicated;
    s->capfree = 8;
    s->free = PyMem_Malloc(s->capfree * sizeof(tfy_extent));
    if (s->free == NULL) {
        slab_free(s);
        return (tfy_slab *)PyErr_NoMemory();
    }
    s->free[0].offset = 0;
    s->free[0].size = size;
    s->nfree = 1;
    /* Register now if a transport (UCX) is in use in this process; otherwise on first use. */
    (void)slab_register(s);
    return s;
}

/* First fit; returns the offset or (size_t)-1. */
static size_t slab_take(tfy_slab *s, size_t size) {
    for (size_t i = 0; i < s->nfree; i++) {
        if (s->free[i].size >= size) {
            size_t off = s->free[i].offset;
            s->free[i].offset += size;
            s->free[i].size -= size;
            if (s->free[i].size == 0) {
                memmove(&s->free[i], &s->free[i + 1], (s->nfree - i - 1) * sizeof(tfy_extent));
                s->nfree--;
            }
            s->live++;
            return off;
        }
    }
    return (size_t)-1;
}

/* Give an extent back, merging with its neighbours. Returns -1 on allocation failure. */
static int slab_give(tfy_slab *s, size_t off, size_t size) {
    size_t i = 0;
    while (i < s->nfree && s->free[i].offset < off) i++;
    int merge_prev = i > 0 && s->free[i - 1].offset + s->free[i - 1].size == off;
    int merge_next = i < s->nfree && off + size == s->free[i].offset;
    s->live--;
    if (merge_prev && merge_next) {
        s->free[i - 1].size += size + s->free[i].size;
        memmove(&s->free[i], &s->free[i + 1], (s->nfree - i - 1) * sizeof(tfy_extent));
        s->nfree--;
    } else if (merge_prev) {
        s->free[i - 1].size += size;
    } else if (merge_next) {
        s->free[i].offset = off;
        s->free[i].size += size;
    } else {
        if (s->nfree == s->capfree) {
            size_t cap = s->capfree * 2;
            tfy_extent *f = PyMem_Realloc(s->free, cap * sizeof(tfy_extent));
            if (f == NULL) return -1; /* the range leaks; the slab stays usable */
            s->free = f;
            s->capfree = cap;
        }
        memmove(&s->free[i + 1], &s->free[i], (s->nfree - i) * sizeof(tfy_extent));
        s->free[i].offset = off;
        s->free[i].size = size;
        s->nfree++;
    }
    return 0;
}

static void pool_unlink(tfy_pool *pool, tfy_slab *s) {
    tfy_slab **pp = &pool->slabs;
    while (*pp != NULL && *pp != s) pp = &(*pp)->next;
    if (*pp == s) *pp = s->next;
}

/* ------------------------------------------------------------------ Buffer */

static int buffer_check_live(tfy_buffer *b) {
    if (b->released) {
        PyErr_SetString(PyExc_ValueError,
                        "this tfyarn Buffer was released; allocate a new one from the pool");
        return -1;
    }
    return 0;
}

/* Return the memory to the pool. Requires exports == 0. */
static void buffer_do_release(tfy_buffer *b) {
    if (b->released) return;
    b->released = 1;
    if (b->parent != NULL) {
        ((tfy_buffer *)b->parent)->exports--;
        Py_CLEAR(b->parent);
        return;
    }
    tfy_pool *pool = b->pool;
    tfy_slab *s = b->slab;
    if (pool == NULL || s == NULL) return;
    pool->live--;
    if (s->dedicated) {
        pool_unlink(pool, s);
        slab_free(s);
    } else {
        (void)slab_give(s, (size_t)(b->ptr - s->base), b->extent);
    }
    b->slab = NULL;
}

static PyObject *buffer_release(tfy_buffer *b, PyObject *unused) {
    if (b->released) Py_RETURN_NONE;
    if (b->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot release a tfyarn Buffer while %zd view(s) of it are alive "
                     "(NumPy arrays, memoryviews, typed views or DLPack tensors); delete them "
                     "first",
                     b->exports);
        return NULL;
    }
    buffer_do_release(b);
    Py_RETURN_NONE;
}

static void buffer_dealloc(tfy_buffer *b) {
    /* Exporters hold references, so exports is 0 here. */
    buffer_do_release(b);
    Py_CLEAR(b->pool);
    Py_CLEAR(b->parent);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static int buffer_getbuffer(tfy_buffer *b, Py_buffer *view, int flags) {
    if (b->released) {
        PyErr_SetString(PyExc_BufferError, "this tfyarn Buffer was released");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)b, b->ptr, (Py_ssize_t)b->nbytes, 0, flags) < 0)
        return -1;
    b->exports++;
    return 0;
}

static void buffer_releasebuffer(tfy_buffer *b, Py_buffer *view) { b->exports--; }

static PyBufferProcs buffer_as_buffer = {
    (getbufferproc)buffer_getbuffer,
    (releasebufferproc)buffer_releasebuffer,
};

/* DLPack: the capsule owns one reference to the Buffer until the consumer's deleter runs. */
typedef struct {
    tfy_dl_managed_tensor mt;
    int64_t shape[TFY_MAX_NDIM];
} dl_holder;

static void dl_deleter(tfy_dl_managed_tensor *mt) {
    if (mt == NULL) return;
    PyGILState_STATE g = PyGILState_Ensure();
    tfy_buffer *b = (tfy_buffer *)mt->manager_ctx;
    if (b != NULL) {
        b->exports--;
        Py_DECREF(b);
    }
    PyMem_RawFree(mt);
    PyGILState_Release(g);
}

static void dl_capsule_destructor(PyObject *cap) {
    /* A capsule nobody consumed still owns its tensor. */
    if (PyCapsule_IsValid(cap, "dltensor")) {
        tfy_dl_managed_tensor *mt = PyCapsule_GetPointer(cap, "dltensor");
        if (mt != NULL && mt->deleter != NULL) mt->deleter(mt);
    } else {
        PyErr_Clear();
    }
}

static PyObject *buffer_dlpack(tfy_buffer *b, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$OOO:__dlpack__", kwlist, &stream,
                                     &max_version, &dl_device, &copy))
        return NULL;
    if (stream != Py_None) {
        PyErr_SetString(PyExc_BufferError,
                        "tfyarn Buffers live in host memory: __dlpack__ takes stream=None");
        return NULL;
    }
    if (copy == Py_True) {
        PyErr_SetString(PyExc_BufferError,
                        "tfyarn Buffer.__dlpack__ never copies (copy=True is not supported)");
        return NULL;
    }
    if (buffer_check_live(b) < 0) return NULL;
    dl_holder *h = PyMem_RawCalloc(1, sizeof *h);
    if (h == NULL) return PyErr_NoMemory();
    h->mt.dl_tensor.data = b->ptr;
    h->mt.dl_tensor.device.device_type = TFY_DL_CPU;
    h->mt.dl_tensor.device.device_id = 0;
    h->mt.dl_tensor.ndim = b->ndim;
    h->mt.dl_tensor.dtype = b->dtype;
    memcpy(h->shape, b->shape, sizeof h->shape);
    h->mt.dl_tensor.shape = h->shape;
    h->mt.dl_tensor.strides = NULL;
    h->mt.dl_tensor.byte_offset = 0;
    h->mt.manager_ctx = b;
    h->mt.deleter = dl_deleter;
    PyObject *cap = PyCapsule_New(&h->mt, "dltensor", dl_capsule_destructor);
    if (cap == NULL) {
        PyMem_RawFree(h);
        return NULL;
    }
    Py_INCREF(b);
    b->exports++;
    return cap;
}

static PyObject *buffer_dlpack_device(tfy_buffer *b, PyObject *unused) {
    return Py_BuildValue("(ii)", TFY_DL_CPU, 0);
}

/* _view(code, bits, shape, offset=0): a typed window on this buffer, for DLPack export. */
static PyObject *buffer_view(tfy_buffer *b, PyObject *args) {
    int code, bits;
    PyObject *shape;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTuple(args, "iiO!|n:_view", &code, &bits, &PyTuple_Type, &shape, &offset))
        return NULL;
    if (buffer_check_live(b) < 0) return NULL;
    Py_ssize_t ndim = PyTuple_GET_SIZE(shape);
    if (ndim > TFY_MAX_NDIM) {
        PyErr_Format(PyExc_ValueError, "at most %d dimensions are supported, got %zd",
                     TFY_MAX_NDIM, ndim);
        return NULL;
    }
    if (bits <= 0 || bits % 8 != 0 || bits > 128 || code < 0 || code > 255) {
        PyErr_Format(PyExc_ValueError, "unsupported element type (code %d, %d bits)", code, bits);
        return NULL;
    }
    int64_t dims[TFY_MAX_NDIM];
    size_t count = 1;
    for (Py_ssize_t i = 0; i < ndim; i++) {
        long long d = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, i));
        if (d == -1 && PyErr_Occurred()) return NULL;
        if (d < 0) {
            PyErr_Format(PyExc_ValueError, "negative dimension %lld in shape", d);
            return NULL;
        }
        dims[i] = d;
        count *= (size_t)d;
    }
    size_t need = count * (size_t)(bits / 8);
    if (offset < 0 || (size_t)offset + need > b->nbytes) {
        PyErr_Format(PyExc_ValueError,
                     "a view of %zu bytes at offset %zd does not fit in a Buffer of %zu bytes",
                     need, offset, b->nbytes);
        return NULL;
    }
    tfy_buffer *v = (tfy_buffer *)Py_TYPE(b)->tp_alloc(Py_TYPE(b), 0);
    if (v == NULL) return NULL;
    v->ptr = b->ptr + offset;
    v->nbytes = need;
    v->parent = (PyObject *)b;
    Py_INCREF(b);
    b->exports++;
    v->dtype.code = (uint8_t)code;
    v->dtype.bits = (uint8_t)bits;
    v->dtype.lanes = 1;
    v->ndim = (int)ndim;
    memcpy(v->shape, dims, (size_t)ndim * sizeof(int64_t));
    return (PyObject *)v;
}

static PyObject *buffer_get_nbytes(tfy_buffer *b, void *c) { return PyLong_FromSize_t(b->nbytes); }

static PyObject *buffer_get_address(tfy_buffer *b, void *c) {
    if (buffer_check_live(b) < 0) return NULL;
    return PyLong_FromVoidPtr(b->ptr);
}

static PyObject *buffer_get_released(tfy_buffer *b, void *c) {
    return PyBool_FromLong(b->released);
}

static PyObject *buffer_get_exports(tfy_buffer *b, void *c) { return PyLong_FromSsize_t(b->exports); }

static PyObject *buffer_get_registered(tfy_buffer *b, void *c) {
    tfy_buffer *root = b;
    while (root->parent != NULL) root = (tfy_buffer *)root->parent;
    return PyBool_FromLong(root->slab != NULL && root->slab->reg != NULL);
}

static Py_ssize_t buffer_len(tfy_buffer *b) { return (Py_ssize_t)b->nbytes; }

static PySequenceMethods buffer_as_sequence = {.sq_length = (lenfunc)buffer_len};

static PyObject *buffer_repr(tfy_buffer *b) {
    if (b->released) return PyUnicode_FromFormat("<tfyarn Buffer released>");
    return PyUnicode_FromFormat("<tfyarn Buffer %zu bytes at %p%s>", b->nbytes, b->ptr,
                                b->parent != NULL ? " (view)" : "");
}

static PyMethodDef buffer_methods[] = {
    {"release", (PyCFunction)buffer_release, METH_NOARGS,
     "Return the memory to the pool (fails while views of it are alive); idempotent."},
    {"__dlpack__", (PyCFunction)(void (*)(void))buffer_dlpack, METH_VARARGS | METH_KEYWORDS,
     "Export the memory as a DLPack capsule (no copy)."},
    {"__dlpack_device__", (PyCFunction)buffer_dlpack_device, METH_NOARGS,
     "DLPack device of the memory: (kDLCPU, 0)."},
    {"_view", (PyCFunction)buffer_view, METH_VARARGS,
     "_view(code, bits, shape, offset=0): typed window for DLPack export."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef buffer_getset[] = {
    {"nbytes", (getter)buffer_get_nbytes, NULL, "Size in bytes.", NULL},
    {"address", (getter)buffer_get_address, NULL, "Address of the first byte.", NULL},
    {"released", (getter)buffer_get_released, NULL, "Whether release() was called.", NULL},
    {"exports", (getter)buffer_get_exports, NULL, "Views of this buffer currently alive.", NULL},
    {"registered", (getter)buffer_get_registered, NULL,
     "Whether the slab holding this buffer is registered with UCX.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tfy_buffer_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tfyarn._native.Buffer",
    .tp_basicsize = sizeof(tfy_buffer),
    .tp_dealloc = (destructor)buffer_dealloc,
    .tp_repr = (reprfunc)buffer_repr,
    .tp_as_sequence = &buffer_as_sequence,
    .tp_as_buffer = &buffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Memory from a tfyarn BufferPool (buffer protocol and DLPack, no copies).",
    .tp_methods = buffer_methods,
    .tp_getset = buffer_getset,
};

/* ------------------------------------------------------------------ BufferPool */

static int pool_init(tfy_pool *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"slab_bytes", "alignment", "hugepages", NULL};
    Py_ssize_t slab_bytes = (Py_ssize_t)64 << 20, alignment = 0;
    int hugepages = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|nnp:BufferPool", kwlist, &slab_bytes,
                                     &alignment, &hugepages))
        return -1;
    if (alignment == 0) alignment = (Py_ssize_t)page_size();
    if (alignment < 0 || (alignment & (alignment - 1)) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "BufferPool alignment must be a power of two, got %zd (default: the page "
                     "size, %zu)",
                     alignment, page_size());
        return -1;
    }
    if (slab_bytes <= 0) {
        PyErr_Format(PyExc_ValueError, "BufferPool slab_bytes must be positive, got %zd",
                     slab_bytes);
        return -1;
    }
    self->slab_bytes = (size_t)slab_bytes;
    self->alignment = (size_t)alignment;
    self->hugepages = hugepages;
    if (self->buffer_type == NULL) {
        self->buffer_type = (PyObject *)&tfy_buffer_type;
        Py_INCREF(self->buffer_type);
    }
    return 0;
}

static void pool_free_slabs(tfy_pool *self) {
    tfy_slab *s = self->slabs;
    while (s != NULL) {
        tfy_slab *n = s->next;
        slab_free(s);
        s = n;
    }
    self->slabs = NULL;
}

static void pool_dealloc(tfy_pool *self) {
    /* Buffers hold a reference to their pool, so none is alive here. */
    pool_free_slabs(self);
    Py_CLEAR(self->buffer_type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *pool_alloc(tfy_pool *self, PyObject *arg) {
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes == -1 && PyErr_Occurred()) return NULL;
    if (nbytes < 0) {
        PyErr_Format(PyExc_ValueError, "BufferPool.alloc: nbytes must be >= 0, got %zd", nbytes);
        return NULL;
    }
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "BufferPool.alloc on a closed pool");
        return NULL;
    }
    size_t extent = round_up(nbytes > 0 ? (size_t)nbytes : 1, self->alignment);
    tfy_slab *slab = NULL;
    size_t off = (size_t)-1;
    if (extent > self->slab_bytes) {
        slab = slab_new(self, extent, 1);
        if (slab == NULL) return NULL;
        slab->next = self->slabs;
        self->slabs = slab;
        off = slab_take(slab, extent);
    } else {
        for (tfy_slab *s = self->slabs; s != NULL; s = s->next) {
            if (s->dedicated) continue;
            off = slab_take(s, extent);
            if (off != (size_t)-1) {
                slab = s;
                break;
            }
        }
        if (slab == NULL) {
            slab = slab_new(self, self->slab_bytes, 0);
            if (slab == NULL) return NULL;
            slab->next = self->slabs;
            self->slabs = slab;
            off = slab_take(slab, extent);
        }
    }
    PyTypeObject *tp = (PyTypeObject *)self->buffer_type;
    tfy_buffer *b = (tfy_buffer *)tp->tp_alloc(tp, 0);
    if (b == NULL) {
        slab_give(slab, off, extent);
        return NULL;
    }
    Py_INCREF(self);
    b->pool = self;
    b->slab = slab;
    b->ptr = slab->base + off;
    b->nbytes = (size_t)nbytes;
    b->extent = extent;
    b->dtype.code = TFY_DL_UINT;
    b->dtype.bits = 8;
    b->dtype.lanes = 1;
    b->ndim = 1;
    b->shape[0] = (int64_t)nbytes;
    self->live++;
    return (PyObject *)b;
}

static PyObject *pool_close(tfy_pool *self, PyObject *unused) {
    if (self->closed) Py_RETURN_NONE;
    if (self->live > 0) {
        PyErr_Format(PyExc_BufferError,
                     "BufferPool.close: %zd buffer(s) are still allocated; release() them first",
                     self->live);
        return NULL;
    }
    pool_free_slabs(self);
    self->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *pool_trim(tfy_pool *self, PyObject *unused) {
    tfy_slab **pp = &self->slabs;
    Py_ssize_t freed = 0;
    while (*pp != NULL) {
        tfy_slab *s = *pp;
        if (s->live == 0) {
            *pp = s->next;
            slab_free(s);
            freed++;
        } else {
            pp = &s->next;
        }
    }
    return PyLong_FromSsize_t(freed);
}

static PyObject *pool_set_buffer_type(tfy_pool *self, PyObject *tp) {
    if (!PyType_Check(tp) || !PyType_IsSubtype((PyTypeObject *)tp, &tfy_buffer_type)) {
        PyErr_SetString(PyExc_TypeError, "_set_buffer_type needs a subclass of _native.Buffer");
        return NULL;
    }
    Py_INCREF(tp);
    Py_XSETREF(self->buffer_type, tp);
    Py_RETURN_NONE;
}

static PyObject *pool_get_stat(tfy_pool *self, void *which) {
    size_t slabs = 0, bytes = 0, huge = 0, registered = 0;
    for (tfy_slab *s = self->slabs; s != NULL; s = s->next) {
        slabs++;
        bytes += s->size;
        huge += s->huge != 0;
        registered += s->reg != NULL;
    }
    switch ((intptr_t)which) {
    case 0: return PyLong_FromSize_t(slabs);
    case 1: return PyLong_FromSize_t(bytes);
    case 2: return PyLong_FromSsize_t(self->live);
    case 3: return PyLong_FromSize_t(huge);
    default: return PyLong_FromSize_t(registered);
    }
}

static PyObject *pool_get_slab_bytes(tfy_pool *self, void *c) {
    return PyLong_FromSize_t(self->slab_bytes);
}
static PyObject *pool_get_alignment(tfy_pool *self, void *c) {
    return PyLong_FromSize_t(self->alignment);
}
static PyObject *pool_get_hugepages(tfy_pool *self, void *c) {
    return PyBool_FromLong(self->hugepages);
}
static PyObject *pool_get_closed(tfy_pool *self, void *c) { return PyBool_FromLong(self->closed); }

static PyMethodDef pool_methods[] = {
    {"alloc", (PyCFunction)pool_alloc, METH_O, "alloc(nbytes) -> Buffer"},
    {"close", (PyCFunction)pool_close, METH_NOARGS, "Unmap every slab; buffers must be released."},
    {"trim", (PyCFunction)pool_trim, METH_NOARGS, "Unmap slabs with no live buffer; -> count."},
    {"_set_buffer_type", (PyCFunction)pool_set_buffer_type, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pool_getset[] = {
    {"slab_bytes", (getter)pool_get_slab_bytes, NULL, "Size of a regular slab.", NULL},
    {"alignment", (getter)pool_get_alignment, NULL, "Alignment of every buffer.", NULL},
    {"hugepages", (getter)pool_get_hugepages, NULL, "Whether huge pages were requested.", NULL},
    {"closed", (getter)pool_get_closed, NULL, "Whether close() was called.", NULL},
    {"nslabs", (getter)pool_get_stat, NULL, "Slabs currently mapped.", (void *)0},
    {"mapped_bytes", (getter)pool_get_stat, NULL, "Bytes currently mapped.", (void *)1},
    {"live_buffers", (getter)pool_get_stat, NULL, "Buffers allocated, not released.", (void *)2},
    {"huge_slabs", (getter)pool_get_stat, NULL, "Slabs backed by huge pages.", (void *)3},
    {"registered_slabs", (getter)pool_get_stat, NULL, "Slabs registered with UCX.", (void *)4},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject tfy_pool_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tfyarn._native.BufferPool",
    .tp_basicsize = sizeof(tfy_pool),
    .tp_dealloc = (destructor)pool_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Aligned, UCX-registered slabs carved into Buffers.",
    .tp_methods = pool_methods,
    .tp_getset = pool_getset,
    .tp_init = (initproc)pool_init,
    .tp_new = PyType_GenericNew,
};

void *tfy_buffer_registration(PyObject *obj, const void *addr, size_t len) {
    if (obj == NULL || !PyObject_TypeCheck(obj, &tfy_buffer_type)) return NULL;
    tfy_buffer *b = (tfy_buffer *)obj;
    while (b->parent != NULL) b = (tfy_buffer *)b->parent;
    tfy_slab *s = b->slab;
    if (b->released || s == NULL) return NULL;
    if ((const char *)addr < s->base || (const char *)addr + len > s->base + s->size) return NULL;
    return slab_register(s) == 0 ? s->reg : NULL;
}

int tfy_pool_setup(PyObject *module) {
    if (PyType_Ready(&tfy_buffer_type) < 0 || PyType_Ready(&tfy_pool_type) < 0) return -1;
    Py_INCREF(&tfy_buffer_type);
    if (PyModule_AddObject(module, "Buffer", (PyObject *)&tfy_buffer_type) < 0) return -1;
    Py_INCREF(&tfy_pool_type);
    if (PyModule_AddObject(module, "BufferPool", (PyObject *)&tfy_pool_type) < 0) return -1;
    return PyModule_AddIntConstant(module, "PAGE_SIZE", (long)page_size());
}
