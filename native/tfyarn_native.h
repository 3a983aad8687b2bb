/* Declarations shared by the files of the tfyarn._native extension. */
#ifndef TFYARN_NATIVE_H
#define TFYARN_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "dlpack_abi.h"

#ifdef TFYARN_HAVE_UCX
#include <ucp/api/ucp.h>
#endif

#define TFY_MAX_NDIM 8

/* A contiguous free range inside a slab. */
typedef struct {
    size_t offset;
    size_t size;
} tfy_extent;

/* One mmap'ed region that buffers are carved from; registered with UCX at most once. */
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
#ifdef TFYARN_HAVE_UCX
    ucp_mem_h memh;    /* NULL until registered */
#endif
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

#ifdef TFYARN_HAVE_UCX
/* The process-wide UCP context, created on first use (reads UCX_* variables then);
 * NULL with a Python exception set on failure. */
ucp_context_h tfy_ucx_context(void);
/* The context if it already exists, else NULL (no exception). */
ucp_context_h tfy_ucx_context_if_any(void);
/* Memory handle covering [addr, addr+len) when obj is a pool Buffer (or a view of one)
 * whose slab is (or can now be) registered; NULL otherwise. Needs the GIL. */
ucp_mem_h tfy_buffer_memh(PyObject *obj, const void *addr, size_t len);
#endif

#endif
