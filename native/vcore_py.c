/* volumed._native.VolumeCore: the Python face of the native volume core (vcore.h), typed in
 * volumed/_native.pyi. Parses arguments, holds buffers (buffer protocol, no copies), releases
 * the GIL around every call into the core and turns its codes into volumed.errors exceptions (the
 * one mapping of the Python side; the FUSE engine maps the same codes to errno values).
 * volumed.volume.cores wraps nothing around it: it satisfies the VolumeCore protocol itself. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include <openssl/crypto.h>

#include "vcore_py.h"

typedef struct {
    PyObject_HEAD
    vcore *core;
    int cipher; /* vc_cipher */
} VolumeCoreObject;

static PyTypeObject VolumeCoreType;

/* Raise the exception for a core code, with the thread's message. Returns NULL. */
static PyObject *raise_code(int rc)
{
    const char *msg = vc_last_error();
    if (rc > -10000) {
        errno = -rc;
        PyObject *args = Py_BuildValue("(is)", -rc, msg[0] ? msg : strerror(-rc));
        if (args) {
            PyErr_SetObject(PyExc_OSError, args);
            Py_DECREF(args);
        }
        return NULL;
    }
    if (rc == VC_E_NOMEM) {
        PyErr_SetString(PyExc_MemoryError, msg);
        return NULL;
    }
    const char *name = rc == VC_E_KEY         ? "KeyAccessError"
                       : rc == VC_E_INTEGRITY ? "IntegrityError"
                       : rc == VC_E_RANGE     ? "UsageError"
                                              : "StateError";
    PyObject *mod = PyImport_ImportModule("volumed.errors");
    PyObject *exc = mod ? PyObject_GetAttrString(mod, name) : NULL;
    Py_XDECREF(mod);
    if (exc == NULL)
        return NULL;
    PyErr_SetString(exc, msg);
    Py_DECREF(exc);
    return NULL;
}

static int vcpy_init(VolumeCoreObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"fd", "cipher", "key", "data_offset", "size", "sector_size",
                             "journal_fd", "name", "history_fd", "history_max_bytes", NULL};
    int fd, journal_fd = -1, history_fd = -1;
    unsigned long long history_max = 32u << 20;
    const char *cipher = NULL, *name = "";
    PyObject *keyobj = Py_None;
    unsigned long long data_offset = 0, size = 0;
    unsigned int sector_size = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|$sOKKIisiK", kwlist, &fd, &cipher, &keyobj,
                                     &data_offset, &size, &sector_size, &journal_fd, &name,
                                     &history_fd, &history_max))
        return -1;
    if (cipher == NULL || size == 0) {
        PyErr_SetString(PyExc_TypeError, "VolumeCore needs cipher= and size=");
        return -1;
    }
    if (self->core != NULL) {
        PyErr_SetString(PyExc_TypeError, "VolumeCore is already initialised");
        return -1;
    }
    vc_config cfg = {.fd = fd, .journal_fd = journal_fd, .data_offset = data_offset, .size = size,
                     .sector_size = sector_size, .name = name, .history_fd = history_fd,
                     .history_max_bytes = history_max};
    if (strcmp(cipher, "xts") == 0) {
        cfg.cipher = VC_CIPHER_XTS;
    } else if (strcmp(cipher, "null") == 0) {
        cfg.cipher = VC_CIPHER_NULL;
    } else {
        PyErr_Format(PyExc_ValueError, "VolumeCore serves the xts and null ciphers, not %s", cipher);
        return -1;
    }
    Py_buffer kb = {0};
    int have_key = keyobj != Py_None;
    if (have_key) {
        if (PyObject_GetBuffer(keyobj, &kb, PyBUF_SIMPLE) != 0)
            return -1;
        cfg.key = kb.buf;
        cfg.key_len = (size_t)kb.len;
    }
    vcore *c = NULL;
    int rc = vc_open(&cfg, &c);
    if (have_key) {
        if (!kb.readonly && rc != VC_E_RANGE) /* taken (or refused for memory): wipe the caller's */
            OPENSSL_cleanse(kb.buf, (size_t)kb.len);
        PyBuffer_Release(&kb);
    }
    if (rc != 0) {
        if (rc == VC_E_RANGE)
            PyErr_SetString(PyExc_ValueError, vc_last_error());
        else
            raise_code(rc);
        return -1;
    }
    self->core = c;
    self->cipher = cfg.cipher;
    return 0;
}

static void vcpy_dealloc(VolumeCoreObject *self)
{
    if (self->core != NULL) {
        vcore *c = self->core;
        self->core = NULL;
        Py_BEGIN_ALLOW_THREADS
        vc_unref(c); /* may wait for an engine thread's call in flight */
        Py_END_ALLOW_THREADS
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(VolumeCoreObject *self)
{
    if (self->core == NULL) {
        PyErr_SetString(PyExc_ValueError, "VolumeCore is not initialised");
        return -1;
    }
    return 0;
}

/* A new bytearray of nbytes filled by fn(core, at, count, buf) with the GIL released: the shape of
 * read (bytes of the volume) and read_sealed (sealed sectors). */
typedef int (*fill_fn)(vcore *, uint64_t, size_t, unsigned char *);

static PyObject *filled_bytearray(VolumeCoreObject *self, fill_fn fn, uint64_t at, size_t count,
                                  Py_ssize_t nbytes)
{
    PyObject *out = PyByteArray_FromStringAndSize(NULL, nbytes);
    if (out == NULL)
        return NULL;
    int rc;
    unsigned char *buf = (unsigned char *)PyByteArray_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    rc = fn(self->core, at, count, buf);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        Py_DECREF(out);
        return raise_code(rc);
    }
    return out;
}

static PyObject *vcpy_read(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long off;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "Kn", &off, &len) || ready(self))
        return NULL;
    if (len < 0)
        return PyErr_Format(PyExc_ValueError, "negative length %zd", len);
    return filled_bytearray(self, vc_read, off, (size_t)len, len);
}

static PyObject *vcpy_readinto(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long off;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "Kw*", &off, &b))
        return NULL;
    if (ready(self)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vc_read(self->core, off, (size_t)b.len, b.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static PyObject *vcpy_write(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long off;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "Ky*", &off, &b))
        return NULL;
    if (ready(self)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vc_write(self->core, off, b.buf, (size_t)b.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static PyObject *vcpy_discard(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long off, len;
    if (!PyArg_ParseTuple(args, "KK", &off, &len) || ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vc_discard(self->core, off, len);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static PyObject *vcpy_flush(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vc_flush(self->core);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static PyObject *vcpy_wipe_key(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ready(self))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    vc_wipe_key(self->core);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *vcpy_fail_backing(VolumeCoreObject *self, PyObject *args)
{
    int err;
    if (!PyArg_ParseTuple(args, "i", &err) || ready(self))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    vc_fail_backing(self->core, err);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *vcpy_set_size(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long size;
    if (!PyArg_ParseTuple(args, "K", &size) || ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vc_set_size(self->core, size);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

/* Records into a list of bytes (None for a hole), via fn (vc_read_records or vc_capture_read). */
static PyObject *records(VolumeCoreObject *self, PyObject *args,
                         int (*fn)(vcore *, uint64_t, size_t, unsigned char *, unsigned char *))
{
    unsigned long long first;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "Kn", &first, &n) || ready(self))
        return NULL;
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "negative count %zd", n);
    size_t ss = vc_sector_size(self->core);
    unsigned char *buf = PyMem_Malloc(n * ss + 1), *present = PyMem_Malloc(n + 1);
    if (buf == NULL || present == NULL) {
        PyMem_Free(buf);
        PyMem_Free(present);
        return PyErr_NoMemory();
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fn(self->core, first, (size_t)n, buf, present);
    Py_END_ALLOW_THREADS
    PyObject *out = NULL;
    if (rc != 0) {
        raise_code(rc);
    } else if ((out = PyList_New(n)) != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *r = present[i] ? PyBytes_FromStringAndSize((char *)buf + i * ss, ss)
                                     : Py_NewRef(Py_None);
            if (r == NULL) {
                Py_CLEAR(out);
                break;
            }
            PyList_SET_ITEM(out, i, r);
        }
    }
    PyMem_Free(buf);
    PyMem_Free(present);
    return out;
}

static PyObject *vcpy_read_records(VolumeCoreObject *self, PyObject *args)
{
    return records(self, args, vc_read_records);
}

static PyObject *vcpy_capture_read(VolumeCoreObject *self, PyObject *args)
{
    return records(self, args, vc_capture_read);
}

static PyObject *vcpy_read_sealed(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long first;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "Kn", &first, &n) || ready(self))
        return NULL;
    if (n < 0)
        return PyErr_Format(PyExc_ValueError, "negative count %zd", n);
    return filled_bytearray(self, vc_read_sealed, first, (size_t)n,
                            n * (Py_ssize_t)vc_sector_size(self->core));
}

static PyObject *vcpy_capture_begin(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long max_kept;
    if (!PyArg_ParseTuple(args, "K", &max_kept) || ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vc_capture_begin(self->core, max_kept);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static PyObject *vcpy_capture_stats(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ready(self))
        return NULL;
    vc_capture_stats st;
    int rc = vc_capture_stats_get(self->core, &st);
    if (rc != 0)
        return raise_code(rc);
    return Py_BuildValue("{sKsKsKsO}", "captured", st.captured, "peak_kept", st.peak_kept,
                         "kept_bytes", st.kept_bytes, "failed", st.failed ? Py_True : Py_False);
}

static PyObject *vcpy_capture_end(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (ready(self))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    vc_capture_end(self->core);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *vcpy_get_size(VolumeCoreObject *self, void *Py_UNUSED(closure))
{
    return ready(self) ? NULL : PyLong_FromUnsignedLongLong(vc_size(self->core));
}

static PyObject *vcpy_get_sector_size(VolumeCoreObject *self, void *Py_UNUSED(closure))
{
    return ready(self) ? NULL : PyLong_FromUnsignedLong(vc_sector_size(self->core));
}

static PyObject *vcpy_get_cipher(VolumeCoreObject *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(self->cipher == VC_CIPHER_XTS ? "xts" : "null");
}

static PyMethodDef vcpy_methods[] = {
    {"read", (PyCFunction)vcpy_read, METH_VARARGS, "read(offset, length) -> bytearray"},
    {"readinto", (PyCFunction)vcpy_readinto, METH_VARARGS, "readinto(offset, buf)"},
    {"write", (PyCFunction)vcpy_write, METH_VARARGS, "write(offset, data)"},
    {"discard", (PyCFunction)vcpy_discard, METH_VARARGS, "discard(offset, length)"},
    {"flush", (PyCFunction)vcpy_flush, METH_NOARGS, "the durability point"},
    {"wipe_key", (PyCFunction)vcpy_wipe_key, METH_NOARGS, "wait for calls in flight, wipe the key"},
    {"fail_backing", (PyCFunction)vcpy_fail_backing, METH_VARARGS, "simulated power loss"},
    {"set_size", (PyCFunction)vcpy_set_size, METH_VARARGS, "grow the volume"},
    {"read_records", (PyCFunction)vcpy_read_records, METH_VARARGS, "records as stored"},
    {"read_sealed", (PyCFunction)vcpy_read_sealed, METH_VARARGS, "sectors as LUKS2 expects"},
    {"capture_begin", (PyCFunction)vcpy_capture_begin, METH_VARARGS, "open a capture session"},
    {"capture_read", (PyCFunction)vcpy_capture_read, METH_VARARGS, "records at the barrier"},
    {"capture_stats", (PyCFunction)vcpy_capture_stats, METH_NOARGS, "the session's counters"},
    {"capture_end", (PyCFunction)vcpy_capture_end, METH_NOARGS, "close the capture session"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef vcpy_getset[] = {
    {"size", (getter)vcpy_get_size, NULL, "volume bytes", NULL},
    {"sector_size", (getter)vcpy_get_sector_size, NULL, "bytes per sector", NULL},
    {"cipher", (getter)vcpy_get_cipher, NULL, "xts or null", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject VolumeCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "volumed._native.VolumeCore",
    .tp_basicsize = sizeof(VolumeCoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One open volume's decrypted bytes, served by the native core (native/vcore.h).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)vcpy_init,
    .tp_dealloc = (destructor)vcpy_dealloc,
    .tp_methods = vcpy_methods,
    .tp_getset = vcpy_getset,
};

vcore *vcore_from_pyobject(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &VolumeCoreType) || ((VolumeCoreObject *)obj)->core == NULL) {
        PyErr_SetString(PyExc_TypeError, "expected an initialised volumed._native.VolumeCore");
        return NULL;
    }
    vcore *c = ((VolumeCoreObject *)obj)->core;
    vc_ref(c);
    return c;
}

int vcore_py_register(PyObject *module)
{
    if (PyType_Ready(&VolumeCoreType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "VolumeCore", (PyObject *)&VolumeCoreType);
}
