/* Placeholder module: the native sector cipher is being written (see volumed/cipher/__init__.py
 * for the contract). volumed.cipher treats a module without XtsCipher as "not built". */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_native", "stub", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&mod); }
