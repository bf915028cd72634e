/* volumed._native.VolumeCore: the Python face of the native volume core (vcore.h), typed in
 * volumed/cipher/_native.pyi. Parses arguments, holds buffers (buffer protocol, no copies), releases
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

/* logging.getLogger("volumed.volume") (borrowed; Py_None if logging fails). */
static PyObject *log_obj(void)
{
    static PyObject *log;
    if (log == NULL) {
        PyObject *mod = PyImport_ImportModule("logging");
        log = mod ? PyObject_CallMethod(mod, "getLogger", "s", "volumed.volume") : NULL;
        Py_XDECREF(mod);
        if (log == NULL) {
            PyErr_Clear();
            return Py_None;
        }
    }
    return log;
}

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
    if (rc == VC_E_INTEGRITY) { /* FORMAT.md: a log line on volumed.volume names the sector too */
        PyObject *res = PyObject_CallMethod(log_obj(), "error", "ss", "%s", msg);
        Py_XDECREF(res);
        PyErr_Clear();
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
                             "journal_fd", "name", "history_fd", "history_max_bytes", "gcm", NULL};
    int fd, journal_fd = -1, history_fd = -1;
    unsigned long long history_max = 32u << 20;
    const char *cipher = NULL, *name = "";
    PyObject *keyobj = Py_None, *gcmobj = Py_None;
    unsigned long long data_offset = 0, size = 0;
    unsigned int sector_size = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|$sOKKIisiKO", kwlist, &fd, &cipher, &keyobj,
                                     &data_offset, &size, &sector_size, &journal_fd, &name,
                                     &history_fd, &history_max, &gcmobj))
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
    } else if (strcmp(cipher, "gcm") == 0) {
        cfg.cipher = VC_CIPHER_GCM;
    } else {
        PyErr_Format(PyExc_ValueError, "VolumeCore serves the xts, gcm and null ciphers, not %s",
                     cipher);
        return -1;
    }
    /* GCM: gcm = (meta_key, note_key, mac_key, uuid, salt, next, reserved, flushed, seqid,
     * note_seq, reserve_chunk, nonce_limit, doubtful (u64 pairs, native order), mac_tmpl,
     * hdr_tmpl); the keys are wiped. */
    Py_buffer gb[3] = {{0}};
    vc_gcm_session gs = {0};
    Py_ssize_t ulen = 0, slen = 0, dlen = 0;
    const char *dbytes = NULL;
    int have_gcm = cfg.cipher == VC_CIPHER_GCM;
    if (have_gcm) {
        unsigned long long next, reserved, flushed, seqid, note_seq, chunk, limit;
        if (!PyTuple_Check(gcmobj) ||
            !PyArg_ParseTuple(gcmobj, "w*w*w*y#y#KKKKKKKy#ss", &gb[0], &gb[1], &gb[2], &gs.uuid,
                              &ulen, &gs.salt, &slen, &next, &reserved, &flushed, &seqid,
                              &note_seq, &chunk, &limit, &dbytes, &dlen, &gs.mac_tmpl,
                              &gs.hdr_tmpl)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a GCM VolumeCore needs gcm=(session tuple)");
            return -1;
        }
        gs.meta_key = gb[0].buf, gs.note_key = gb[1].buf, gs.mac_key = gb[2].buf;
        gs.next = next, gs.reserved = reserved, gs.flushed = flushed, gs.seqid = seqid;
        gs.note_seq = note_seq, gs.reserve_chunk = chunk, gs.nonce_limit = limit;
        gs.doubtful = (const uint64_t *)dbytes;
        gs.ndoubtful = (size_t)dlen / 16;
        cfg.gcm = &gs;
        if (ulen != 16 || slen != 16 || dlen % 16 || gb[0].len != 32 || gb[1].len != 32 ||
            gb[2].len != 32) {
            for (int i = 0; i < 3; i++)
                PyBuffer_Release(&gb[i]);
            PyErr_SetString(PyExc_ValueError, "a GCM session needs 32-byte keys, a 16-byte uuid "
                            "and salt, and doubtful ranges as u64 pairs");
            return -1;
        }
    }
    Py_buffer kb = {0};
    int have_key = keyobj != Py_None;
    if (have_key) {
        if (PyObject_GetBuffer(keyobj, &kb, PyBUF_SIMPLE) != 0) {
            for (int i = 0; have_gcm && i < 3; i++)
                PyBuffer_Release(&gb[i]);
            return -1;
        }
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
    for (int i = 0; have_gcm && i < 3; i++) { /* the derived keys: copied, wiped here */
        OPENSSL_cleanse(gb[i].buf, (size_t)gb[i].len);
        PyBuffer_Release(&gb[i]);
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

/* The (position, count) arguments of read, read_sealed and the records calls: 0, or -1 with an
 * exception set (a negative count is ValueError naming what it counts). */
static int at_count(VolumeCoreObject *self, PyObject *args, const char *what,
                    unsigned long long *at, Py_ssize_t *n)
{
    if (!PyArg_ParseTuple(args, "Kn", at, n) || ready(self))
        return -1;
    if (*n < 0) {
        PyErr_Format(PyExc_ValueError, "negative %s %zd", what, *n);
        return -1;
    }
    return 0;
}

static PyObject *vcpy_read(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long off;
    Py_ssize_t len;
    if (at_count(self, args, "length", &off, &len))
        return NULL;
    return filled_bytearray(self, vc_read, off, (size_t)len, len);
}

/* readinto(offset, buf) and write(offset, data): one buffer (fmt "Kw*" or "Ky*") and a core call
 * on it with the GIL released. */
typedef int (*buf_fn)(vcore *, uint64_t, unsigned char *, size_t);

static PyObject *buffer_call(VolumeCoreObject *self, PyObject *args, const char *fmt, buf_fn fn)
{
    unsigned long long off;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, fmt, &off, &b))
        return NULL;
    if (ready(self)) {
        PyBuffer_Release(&b);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fn(self->core, off, b.buf, (size_t)b.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static int read_into(vcore *c, uint64_t off, unsigned char *buf, size_t len)
{
    return vc_read(c, off, len, buf);
}

static int write_from(vcore *c, uint64_t off, unsigned char *buf, size_t len)
{
    return vc_write(c, off, buf, len);
}

static PyObject *vcpy_readinto(VolumeCoreObject *self, PyObject *args)
{
    return buffer_call(self, args, "Kw*", read_into);
}

static PyObject *vcpy_write(VolumeCoreObject *self, PyObject *args)
{
    return buffer_call(self, args, "Ky*", write_from);
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

/* Calls with no argument or one u64, the GIL released, the code raised: the shape of flush,
 * wipe_key, close_clean, kill, capture_end (core_fn) and set_size, capture_begin, fail_backing
 * (u64_fn). */
typedef int (*core_fn)(vcore *);
typedef int (*u64_fn)(vcore *, uint64_t);

static PyObject *core_call(VolumeCoreObject *self, core_fn fn, u64_fn ufn, uint64_t v)
{
    if (ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fn ? fn(self->core) : ufn(self->core, v);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static PyObject *u64_call(VolumeCoreObject *self, PyObject *args, u64_fn fn)
{
    unsigned long long v;
    if (!PyArg_ParseTuple(args, "K", &v))
        return NULL;
    return core_call(self, NULL, fn, v);
}

static int wipe_core(vcore *c)
{
    vc_wipe_key(c);
    return 0;
}

static int kill_core(vcore *c)
{
    vc_kill(c);
    return 0;
}

static int end_capture(vcore *c)
{
    vc_capture_end(c);
    return 0;
}

static int fail_core(vcore *c, uint64_t err)
{
    vc_fail_backing(c, (int)err);
    return 0;
}

static PyObject *vcpy_flush(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return core_call(self, vc_flush, NULL, 0);
}

static PyObject *vcpy_wipe_key(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return core_call(self, wipe_core, NULL, 0);
}

static PyObject *vcpy_close_clean(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return core_call(self, vc_close_clean, NULL, 0);
}

static PyObject *vcpy_kill(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return core_call(self, kill_core, NULL, 0);
}

static PyObject *vcpy_capture_end(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    return core_call(self, end_capture, NULL, 0);
}

static PyObject *vcpy_fail_backing(VolumeCoreObject *self, PyObject *args)
{
    return u64_call(self, args, fail_core);
}

static PyObject *vcpy_set_size(VolumeCoreObject *self, PyObject *args)
{
    return u64_call(self, args, vc_set_size);
}

static PyObject *vcpy_capture_begin(VolumeCoreObject *self, PyObject *args)
{
    return u64_call(self, args, vc_capture_begin);
}

/* Records into a list of bytes (None for a hole), via fn (vc_read_records or vc_capture_read). */
static PyObject *records(VolumeCoreObject *self, PyObject *args,
                         int (*fn)(vcore *, uint64_t, size_t, unsigned char *, unsigned char *))
{
    unsigned long long first;
    Py_ssize_t n;
    if (at_count(self, args, "count", &first, &n))
        return NULL;
    size_t ss = vc_record_size(self->core);
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
    if (at_count(self, args, "count", &first, &n))
        return NULL;
    return filled_bytearray(self, vc_read_sealed, first, (size_t)n,
                            n * (Py_ssize_t)vc_sector_size(self->core));
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
    return PyUnicode_FromString(self->cipher == VC_CIPHER_XTS   ? "xts"
                                : self->cipher == VC_CIPHER_GCM ? "gcm"
                                                                : "null");
}

static PyObject *vcpy_gcm_grow(VolumeCoreObject *self, PyObject *args)
{
    unsigned long long size;
    const char *mac_tmpl, *hdr_tmpl;
    if (!PyArg_ParseTuple(args, "Kss", &size, &mac_tmpl, &hdr_tmpl) || ready(self))
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = vc_gcm_grow(self->core, size, mac_tmpl, hdr_tmpl);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return raise_code(rc);
    Py_RETURN_NONE;
}

static PyObject *vcpy_gcm_state(VolumeCoreObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t st[4];
    if (ready(self))
        return NULL;
    int rc = vc_gcm_state(self->core, st);
    if (rc != 0)
        return raise_code(rc);
    return Py_BuildValue("(KKKK)", (unsigned long long)st[0], (unsigned long long)st[1],
                         (unsigned long long)st[2], (unsigned long long)st[3]);
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
    {"close_clean", (PyCFunction)vcpy_close_clean, METH_NOARGS, "flush and end the session cleanly"},
    {"kill", (PyCFunction)vcpy_kill, METH_NOARGS, "wipe the key with no bookkeeping I/O"},
    {"gcm_grow", (PyCFunction)vcpy_gcm_grow, METH_VARARGS, "GCM: grow(size, mac_tmpl, hdr_tmpl)"},
    {"gcm_state", (PyCFunction)vcpy_gcm_state, METH_NOARGS,
     "GCM: (seqid, nonce_reserved, nonce_flushed, next counter)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef vcpy_getset[] = {
    {"size", (getter)vcpy_get_size, NULL, "volume bytes", NULL},
    {"sector_size", (getter)vcpy_get_sector_size, NULL, "bytes per sector", NULL},
    {"cipher", (getter)vcpy_get_cipher, NULL, "xts, gcm or null", NULL},
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
