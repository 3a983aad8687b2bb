/* The DLPack data-exchange ABI (https://dmlc.github.io/dlpack/), unversioned form.
 *
 * Only the structs a producer fills in are declared here; the layout is fixed by the
 * DLPack specification (it is what TensorFlow, NumPy and PyTorch read), so these
 * declarations must not be reordered. Capsules carrying a DLManagedTensor are named
 * "dltensor"; a consumer renames them "used_dltensor" once it owns the tensor.
 */
#ifndef TFYARN_DLPACK_ABI_H
#define TFYARN_DLPACK_ABI_H

#include <stdint.h>

enum { TFY_DL_CPU = 1 };

/* DLDataTypeCode values. */
enum {
    TFY_DL_INT = 0,
    TFY_DL_UINT = 1,
    TFY_DL_FLOAT = 2,
    TFY_DL_BFLOAT = 4,
    TFY_DL_BOOL = 6,
};

typedef struct {
    int32_t device_type;
    int32_t device_id;
} tfy_dl_device;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} tfy_dl_dtype;

typedef struct {
    void *data;
    tfy_dl_device device;
    int32_t ndim;
    tfy_dl_dtype dtype;
    int64_t *shape;
    int64_t *strides; /* NULL: compact row-major */
    uint64_t byte_offset;
} tfy_dl_tensor;

typedef struct tfy_dl_managed_tensor {
    tfy_dl_tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct tfy_dl_managed_tensor *self);
} tfy_dl_managed_tensor;

#endif
