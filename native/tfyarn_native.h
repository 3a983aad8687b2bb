/* Declarations shared by the files of the tfyarn._native extension. */
#ifndef TFYARN_NATIVE_H
#define TFYARN_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "dlpack_abi.h"

#define TFY_MAX_NDIM 8

/* A contiguous free range inside a slab. */
typedef struct {
    size_t offset;
    size_t size;
} tfy_extent;

/* One mmap'ed region that buffers are carved from; registered at most once, through the
 * registrar (see tfy_registrar below). */
typedef struct tfy_slab {
    char *base;        /* aligned start handed out to buffers */
    size_t size;       /* usable bytes from base */
    void *map_base;    /* what mmap returned (for munmap) */
    size_t map_size;
    int huge;          /* 0 normal pages, 1 transparent huge pages advised, 2 hugetlbfs */
    int dedicated;     /* holds exactly one large buffer; unmapped when it is released */
    size_t live;       /* buffers currently carved from this slab */
    tfy_extent *free;  /* free ranges sorted by offset */
    size_t nfree, capfree;
    void *reg;         /* the registrar's handle; NULL until registered */
    struct tfy_slab *next;
} tfy_slab;

typedef struct {
    PyObject_HEAD
    size_t slab_bytes;
    size_t alignment;
    int hugepages;
    int closed;
    tfy_slab *slabs;
    Py_ssize_t live;   /* buffers allocated and not yet released */
    PyObject *buffer_type; /* class of the Buffer objects alloc() returns */
} tfy_pool;

typedef struct {
    PyObject_HEAD
    tfy_pool *pool;    /* owning pool (NULL for a view) */
    tfy_slab *slab;
    char *ptr;
    size_t nbytes;
    size_t extent;     /* bytes reserved in the slab (nbytes rounded up to the alignment) */
    PyObject *parent;  /* for a typed view: the Buffer whose memory it shows */
    int released;
    Py_ssize_t exports; /* live buffer-protocol views, DLPack tensors and typed views */
    tfy_dl_dtype dtype; /* what __dlpack__ exports: uint8[nbytes] unless a typed view */
    int ndim;
    int64_t shape[TFY_MAX_NDIM];
} tfy_buffer;

extern PyTypeObject tfy_pool_type;
extern PyTypeObject tfy_buffer_type;

int tfy_pool_setup(PyObject *module);
int tfy_kernels_setup(PyObject *module);
int tfy_ucx_setup(PyObject *module);

/* Registration of pool memory with a transport (UCX: ucp_mem_map), installed by that
 * transport so that the pool knows nothing about it. The calls point one way only: ucx.c
 * calls the pool, never the reverse. Both functions run with the GIL held. */
typedef struct {
    /* Register [base, base+len): an opaque handle, or NULL (no exception set) when the
     * memory cannot be registered; the pool then tries again on the slab's next use. */
    void *(*register_memory)(void *base, size_t len);
    /* Undo register_memory (the slab is being unmapped). */
    void (*deregister_memory)(void *handle);
} tfy_registrar;

/* Install the registrar, once for the life of the process (a static object: slabs keep
 * handles it made until they are unmapped). Slabs created from then on are registered at
 * once, older ones on their next use. */
void tfy_pool_set_registrar(const tfy_registrar *registrar);
/* The registrar's handle covering [addr, addr+len) when obj is a pool Buffer (or a view of
 * one) whose slab is (or can now be) registered; NULL otherwise. Needs the GIL. */
void *tfy_buffer_registration(PyObject *obj, const void *addr, size_t len);

#endif
