/* The Python side of the vcore seam: how C code holding a Python object finds its core.
 *
 * volumed._native.VolumeCore (the Python face of vcore.h, implemented with the core) wraps one
 * vcore. The FUSE engine's Python constructor takes such an object and keeps the vcore itself (a
 * reference of its own), so its worker threads never touch the Python object or the GIL. */
#ifndef VOLUMED_VCORE_PY_H
#define VOLUMED_VCORE_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "vcore.h"

/* The vcore of a VolumeCore object with a new reference (release it with vc_unref), or NULL with
 * TypeError set when obj is not a VolumeCore. Call with the GIL held. */
vcore *vcore_from_pyobject(PyObject *obj);

/* Add the VolumeCore type to the module volumed._native (called from its PyInit). 0 or -1. */
int vcore_py_register(PyObject *module);

#endif
