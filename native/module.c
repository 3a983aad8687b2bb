/* tfyarn._native: buffer pool, DLPack export, kernels and (when built with UCX) the UCP
 * bindings. The Python-facing API is tfyarn/native.py; this module is its engine. */
#include "tfyarn_native.h"

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tfyarn._native",
    .m_doc = "tfyarn's C extension (use tfyarn.native, not this module).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) return NULL;
    if (tfy_pool_setup(m) < 0 || tfy_kernels_setup(m) < 0 || tfy_ucx_setup(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
