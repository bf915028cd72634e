/* volumed._native: the sector cipher's Python face (see volumed/cipher/__init__.py for the contract
 * and volumed/_native.pyi for the typed API).
 *
 * This file only parses arguments, holds buffers (buffer protocol, no copies), releases the GIL and
 * hands the batch to the thread pool (workpool.c) which runs the per-sector loops of the core
 * (sector_core.c) on per-thread contexts of the key object. Keys are copied into locked memory
 * (keymem.c) and the caller's writable key buffer is overwritten at once.
 *
 * Lifetime: a cipher counts its running batches (`active`, only touched with the GIL held).
 * close() while a batch runs in another thread marks the cipher closed (new calls raise ValueError)
 * and the last running batch wipes the key when it finishes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/opensslv.h>

#include "sector_core.h"
#include "vcore_py.h"
#include "workpool.h"

/* Batches below this many bytes stay on the calling thread; larger ones are cut into chunks of
 * PAR_CHUNK_BYTES that the pool's threads claim. */
#define PAR_MIN_BYTES (128 * 1024)
#define PAR_CHUNK_BYTES (32 * 1024)
#define MAX_SECTOR_SIZE (16 * 1024 * 1024)
#define MAX_THREADS 64

static int n_threads = 1;

/* ------------------------------------------------------------------------------------------- */
/* Cipher objects (XtsCipher and GcmCipher share this layout).                                   */

typedef struct {
    PyObject_HEAD
    sc_key key;
    int has_key;  /* key initialised and not yet wiped */
    int closed;   /* close() called */
    int active;   /* batches running with the GIL released */
    Py_ssize_t sector_size;
    unsigned char *aad_prefix; /* GCM: prefix bytes (not secret) */
    size_t prefix_len;
} CipherObject;

static void cipher_wipe(CipherObject *self)
{
    if (self->has_key) {
        sc_key_wipe(&self->key);
        self->has_key = 0;
    }
}

/* Put key[0..len) into locked memory. Returns 0, or -1 with an exception set. */
static int cipher_store_key(CipherObject *self, sc_mode mode, const unsigned char *key, size_t len)
{
    int err = sc_key_init(&self->key, mode, key, len);
    if (err != 0) {
        PyErr_Format(PyExc_MemoryError,
                     "cannot lock memory for the key (%s); raise the locked-memory limit "
                     "(ulimit -l / RLIMIT_MEMLOCK)", strerror(err));
        return -1;
    }
    self->has_key = 1;
    return 0;
}

/* Copy the key into locked memory and overwrite the caller's buffer if it is writable. Returns 0,
 * or -1 with an exception set (wrong length: the caller's buffer is left alone). */
static int cipher_take_key(CipherObject *self, PyObject *keyobj, size_t want, sc_mode mode)
{
    Py_buffer kb;
    if (PyObject_GetBuffer(keyobj, &kb, PyBUF_SIMPLE) != 0)
        return -1;
    if ((size_t)kb.len != want) {
        PyErr_Format(PyExc_ValueError, "key must be %zu bytes, got %zd", want, kb.len);
        PyBuffer_Release(&kb);
        return -1;
    }
    int rc = cipher_store_key(self, mode, kb.buf, want);
    if (!kb.readonly)
        OPENSSL_cleanse(kb.buf, (size_t)kb.len);
    PyBuffer_Release(&kb);
    return rc;
}

/* Copy the AAD prefix (at most 1 MiB) into the object. Returns 0, or -1 with an exception set. */
static int cipher_set_prefix(CipherObject *self, const Py_buffer *prefix)
{
    if (prefix->len > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "aad_prefix must be at most 1 MiB");
        return -1;
    }
    PyMem_Free(self->aad_prefix); /* __init__ called again after a failed first call */
    self->aad_prefix = PyMem_Malloc(prefix->len ? (size_t)prefix->len : 1);
    if (self->aad_prefix == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(self->aad_prefix, prefix->buf, (size_t)prefix->len);
    self->prefix_len = (size_t)prefix->len;
    return 0;
}

static int check_sector_size(Py_ssize_t ss, int multiple_of_512)
{
    if (ss <= 0 || ss > MAX_SECTOR_SIZE || (multiple_of_512 && ss % 512)) {
        PyErr_Format(PyExc_ValueError, "sector_size must be a positive %sat most %d, got %zd",
                     multiple_of_512 ? "multiple of 512 " : "number ", MAX_SECTOR_SIZE, ss);
        return -1;
    }
    return 0;
}

static int check_open(CipherObject *self)
{
    if (self->closed || !self->has_key) {
        PyErr_SetString(PyExc_ValueError, "cipher is closed");
        return -1;
    }
    return 0;
}

static PyObject *cipher_close(CipherObject *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    if (self->active == 0)
        cipher_wipe(self);
    Py_RETURN_NONE;
}

static PyObject *cipher_enter(CipherObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) != 0)
        return NULL;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *cipher_exit(CipherObject *self, PyObject *Py_UNUSED(args))
{
    return cipher_close(self, NULL);
}

static PyObject *cipher_get_closed(CipherObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->closed || !self->has_key);
}

static void cipher_dealloc(CipherObject *self)
{
    cipher_wipe(self); /* no batch can be running: each holds a reference */
    PyMem_Free(self->aad_prefix);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ------------------------------------------------------------------------------------------- */
/* Batches.                                                                                       */

typedef enum { OP_XTS_ENC, OP_XTS_DEC, OP_GCM_SEAL, OP_GCM_OPEN } op_t;

typedef struct {
    sc_key *key;
    op_t op;
    const unsigned char *in;
    unsigned char *out;
    size_t ss;
    uint64_t first;  /* first sector number */
    uint64_t step;   /* XTS: 512-byte units per sector */
    const unsigned char *nonces;
    unsigned char *tags; /* seal: written; open: read */
    const unsigned char *prefix;
    size_t prefix_len;
    unsigned char *failed;
} job_t;

typedef struct {
    sc_ctx *ctx;
    unsigned char aad[]; /* prefix_len + 8 */
} part_t;

static void *job_enter(void *arg)
{
    job_t *j = arg;
    part_t *p = malloc(sizeof *p + j->prefix_len + 8);
    if (p == NULL)
        return NULL;
    p->ctx = sc_ctx_get(j->key);
    if (p->ctx == NULL) {
        free(p);
        return NULL;
    }
    if (j->prefix_len)
        memcpy(p->aad, j->prefix, j->prefix_len);
    return p;
}

static void job_leave(void *arg, void *state)
{
    job_t *j = arg;
    part_t *p = state;
    sc_ctx_put(j->key, p->ctx);
    free(p);
}

static int job_run(void *arg, void *state, size_t begin, size_t end)
{
    job_t *j = arg;
    part_t *p = state;
    switch (j->op) {
    case OP_XTS_ENC:
    case OP_XTS_DEC:
        return sc_xts(j->key, p->ctx, j->op == OP_XTS_ENC, j->in, j->out, j->ss,
                      j->first * j->step, j->step, begin, end);
    case OP_GCM_SEAL:
        return sc_gcm_seal(j->key, p->ctx, j->in, j->out, j->ss, j->first, j->nonces, j->tags,
                           p->aad, j->prefix_len, begin, end);
    case OP_GCM_OPEN:
        return sc_gcm_open(j->key, p->ctx, j->in, j->out, j->ss, j->first, j->nonces, j->tags,
                           p->aad, j->prefix_len, j->failed, begin, end);
    }
    return -1;
}

/* Run a batch of n sectors with the GIL released; splits it across the pool when it is large.
 * Returns 0, or -1 with RuntimeError set. */
static int run_batch(CipherObject *self, job_t *j, size_t n)
{
    if (n == 0)
        return 0;
    size_t bytes = n * j->ss;
    int threads = bytes >= PAR_MIN_BYTES ? n_threads : 1;
    size_t chunk = threads > 1 ? PAR_CHUNK_BYTES / j->ss : n;
    if (chunk == 0)
        chunk = 1;
    wp_batch b = {.n = n, .chunk = chunk, .arg = j, .enter = job_enter, .run = job_run,
                  .leave = job_leave};
    int rc;
    self->active++;
    Py_BEGIN_ALLOW_THREADS
    rc = wp_run(&b, threads);
    Py_END_ALLOW_THREADS
    self->active--;
    if (self->closed && self->active == 0)
        cipher_wipe(self);
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed in the sector cipher");
        return -1;
    }
    return 0;
}

/* A sector number argument: a non-negative int below 2^64, else ValueError. */
static int parse_sector(PyObject *obj, uint64_t *out)
{
    PyObject *idx = PyNumber_Index(obj);
    if (idx == NULL)
        return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(idx);
    Py_DECREF(idx);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "first_sector must be an integer in 0..2**64-1");
        return -1;
    }
    *out = v;
    return 0;
}

/* The data buffers of a call: in (buf) and out (out, or buf itself when out is None). */
typedef struct {
    Py_buffer in, out;
    int has_in, has_out;
} bufs_t;

static void bufs_release(bufs_t *b)
{
    if (b->has_out)
        PyBuffer_Release(&b->out);
    if (b->has_in)
        PyBuffer_Release(&b->in);
}

/* Acquire buf/out and check lengths; returns the sector count, or -1 with ValueError set. */
static Py_ssize_t bufs_get(bufs_t *b, PyObject *buf, PyObject *out, Py_ssize_t ss)
{
    memset(b, 0, sizeof *b);
    if (PyObject_GetBuffer(buf, &b->in, PyBUF_SIMPLE) != 0)
        return -1;
    b->has_in = 1;
    if (out == NULL || out == Py_None) {
        b->out = b->in;
    } else {
        if (PyObject_GetBuffer(out, &b->out, PyBUF_SIMPLE) != 0)
            goto fail;
        b->has_out = 1;
    }
    if (b->out.readonly) {
        PyErr_SetString(PyExc_ValueError, "output buffer is read-only");
        goto fail;
    }
    if (b->in.len % ss) {
        PyErr_Format(PyExc_ValueError, "buffer length %zd is not a multiple of the sector size %zd",
                     b->in.len, ss);
        goto fail;
    }
    if (b->out.len != b->in.len) {
        PyErr_SetString(PyExc_ValueError, "out must have the same length as buf");
        goto fail;
    }
    const char *i0 = b->in.buf, *o0 = b->out.buf;
    if (i0 != o0 && i0 < o0 + b->out.len && o0 < i0 + b->in.len) {
        PyErr_SetString(PyExc_ValueError, "out overlaps buf without being the same memory");
        goto fail;
    }
    return b->in.len / ss;
fail:
    bufs_release(b);
    return -1;
}

/* A read-only side buffer (nonces, tags) of exactly want bytes; writable if asked. */
static int side_buf(Py_buffer *v, PyObject *obj, size_t want, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, v, PyBUF_SIMPLE) != 0)
        return -1;
    if ((size_t)v->len != want || (writable && v->readonly)) {
        PyErr_Format(PyExc_ValueError, "%s must be %s%zu bytes, got %zd", what,
                     writable ? "a writable buffer of " : "", want, v->len);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------- */
/* XtsCipher                                                                                      */

static int xts_init(CipherObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "sector_size", NULL};
    PyObject *key;
    Py_ssize_t ss = 4096;
    if (self->has_key) {
        PyErr_SetString(PyExc_TypeError, "XtsCipher is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|n:XtsCipher", kwlist, &key, &ss))
        return -1;
    if (check_sector_size(ss, 1) != 0 || cipher_take_key(self, key, 64, SC_XTS) != 0)
        return -1;
    self->sector_size = ss;
    if (CRYPTO_memcmp(self->key.key.bytes, self->key.key.bytes + 32, 32) == 0) {
        cipher_wipe(self);
        PyErr_SetString(PyExc_ValueError, "XTS key halves must differ");
        return -1;
    }
    return 0;
}

static PyObject *xts_run(CipherObject *self, PyObject *args, PyObject *kw, int encrypt)
{
    static char *kwlist[] = {"buf", "first_sector", "out", NULL};
    PyObject *buf, *first_obj, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, encrypt ? "OO|O:encrypt" : "OO|O:decrypt", kwlist,
                                     &buf, &first_obj, &out))
        return NULL;
    uint64_t first;
    if (check_open(self) != 0 || parse_sector(first_obj, &first) != 0)
        return NULL;
    bufs_t b;
    Py_ssize_t n = bufs_get(&b, buf, out, self->sector_size);
    if (n < 0)
        return NULL;
    uint64_t step = (uint64_t)self->sector_size / 512;
    if (n > 0 && (first > UINT64_MAX / step - (uint64_t)(n - 1))) {
        PyErr_SetString(PyExc_ValueError, "sector numbers of this batch overflow the 64-bit tweak");
        bufs_release(&b);
        return NULL;
    }
    job_t j = {.key = &self->key, .op = encrypt ? OP_XTS_ENC : OP_XTS_DEC, .in = b.in.buf,
               .out = b.out.buf, .ss = (size_t)self->sector_size, .first = first, .step = step};
    int rc = run_batch(self, &j, (size_t)n);
    bufs_release(&b);
    if (rc != 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *xts_encrypt(CipherObject *self, PyObject *args, PyObject *kw)
{
    return xts_run(self, args, kw, 1);
}

static PyObject *xts_decrypt(CipherObject *self, PyObject *args, PyObject *kw)
{
    return xts_run(self, args, kw, 0);
}

/* ------------------------------------------------------------------------------------------- */
/* GcmCipher                                                                                      */

static int gcm_init(CipherObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "aad_prefix", "sector_size", NULL};
    PyObject *key;
    Py_buffer prefix;
    Py_ssize_t ss = 4096;
    if (self->has_key) {
        PyErr_SetString(PyExc_TypeError, "GcmCipher is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oy*|n:GcmCipher", kwlist, &key, &prefix, &ss))
        return -1;
    int rc = -1;
    if (cipher_set_prefix(self, &prefix) != 0 || check_sector_size(ss, 0) != 0)
        goto done;
    if (cipher_take_key(self, key, 32, SC_GCM) != 0)
        goto done;
    self->sector_size = ss;
    rc = 0;
done:
    PyBuffer_Release(&prefix);
    return rc;
}

/* The arguments of one GCM call, buffers held. */
typedef struct {
    bufs_t b;
    Py_buffer nonces, tags;
    uint64_t first;
    Py_ssize_t n;
} gcm_call;

/* Parse and acquire encrypt(buf, first_sector, nonces, tags_out, out=None) (seal) or
 * decrypt(buf, first_sector, nonces, tags, out=None). Returns 0, or -1 with nothing held. */
static int gcm_call_begin(CipherObject *self, PyObject *args, PyObject *kw, int seal, gcm_call *c)
{
    static char *seal_kw[] = {"buf", "first_sector", "nonces", "tags_out", "out", NULL};
    static char *open_kw[] = {"buf", "first_sector", "nonces", "tags", "out", NULL};
    PyObject *buf, *first_obj, *nonces_obj, *tags_obj, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, seal ? "OOOO|O:encrypt" : "OOOO|O:decrypt",
                                     seal ? seal_kw : open_kw, &buf, &first_obj, &nonces_obj,
                                     &tags_obj, &out))
        return -1;
    if (check_open(self) != 0 || parse_sector(first_obj, &c->first) != 0)
        return -1;
    c->n = bufs_get(&c->b, buf, out, self->sector_size);
    if (c->n < 0)
        return -1;
    if (c->n > 0 && c->first > UINT64_MAX - (uint64_t)(c->n - 1)) {
        PyErr_SetString(PyExc_ValueError, "sector numbers of this batch overflow 64 bits");
        goto fail;
    }
    if (side_buf(&c->nonces, nonces_obj, (size_t)c->n * SC_GCM_NONCE, 0, "nonces") != 0)
        goto fail;
    if (side_buf(&c->tags, tags_obj, (size_t)c->n * SC_GCM_TAG, seal,
                 seal ? "tags_out" : "tags") != 0) {
        PyBuffer_Release(&c->nonces);
        goto fail;
    }
    return 0;
fail:
    bufs_release(&c->b);
    return -1;
}

static void gcm_call_end(gcm_call *c)
{
    PyBuffer_Release(&c->tags);
    PyBuffer_Release(&c->nonces);
    bufs_release(&c->b);
}

static PyObject *gcm_encrypt(CipherObject *self, PyObject *args, PyObject *kw)
{
    gcm_call c;
    if (gcm_call_begin(self, args, kw, 1, &c) != 0)
        return NULL;
    job_t j = {.key = &self->key, .op = OP_GCM_SEAL, .in = c.b.in.buf, .out = c.b.out.buf,
               .ss = (size_t)self->sector_size, .first = c.first, .nonces = c.nonces.buf,
               .tags = c.tags.buf, .prefix = self->aad_prefix, .prefix_len = self->prefix_len};
    int rc = run_batch(self, &j, (size_t)c.n);
    gcm_call_end(&c);
    return rc == 0 ? Py_NewRef(Py_None) : NULL;
}

static PyObject *gcm_decrypt(CipherObject *self, PyObject *args, PyObject *kw)
{
    gcm_call c;
    if (gcm_call_begin(self, args, kw, 0, &c) != 0)
        return NULL;
    PyObject *result = NULL;
    unsigned char *failed = PyMem_Calloc((size_t)c.n + 1, 1);
    if (failed == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    job_t j = {.key = &self->key, .op = OP_GCM_OPEN, .in = c.b.in.buf, .out = c.b.out.buf,
               .ss = (size_t)self->sector_size, .first = c.first, .nonces = c.nonces.buf,
               .tags = c.tags.buf, .prefix = self->aad_prefix, .prefix_len = self->prefix_len,
               .failed = failed};
    if (run_batch(self, &j, (size_t)c.n) != 0)
        goto done;
    result = PyList_New(0);
    for (Py_ssize_t i = 0; result != NULL && i < c.n; i++) {
        if (!failed[i])
            continue;
        PyObject *idx = PyLong_FromSsize_t(i);
        if (idx == NULL || PyList_Append(result, idx) != 0)
            Py_CLEAR(result);
        Py_XDECREF(idx);
    }
done:
    PyMem_Free(failed);
    gcm_call_end(&c);
    return result;
}

/* ------------------------------------------------------------------------------------------- */
/* Type and module tables.                                                                        */

static PyMemberDef cipher_members[] = {
    {"sector_size", T_PYSSIZET, offsetof(CipherObject, sector_size), READONLY,
     "bytes per sector"},
    {NULL},
};

static PyGetSetDef cipher_getset[] = {
    {"closed", (getter)cipher_get_closed, NULL, "True once close() was called", NULL},
    {NULL},
};

#define COMMON_METHODS                                                                         \
    {"close", (PyCFunction)cipher_close, METH_NOARGS,                                          \
     "Wipe the key (at once, or when the batches running in other threads end)."},            \
    {"__enter__", (PyCFunction)cipher_enter, METH_NOARGS, NULL},                               \
    {"__exit__", (PyCFunction)cipher_exit, METH_VARARGS, NULL},

static PyMethodDef xts_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))xts_encrypt, METH_VARARGS | METH_KEYWORDS,
     "encrypt(buf, first_sector, out=None): XTS-encrypt consecutive sectors (in place by default)."},
    {"decrypt", (PyCFunction)(void (*)(void))xts_decrypt, METH_VARARGS | METH_KEYWORDS,
     "decrypt(buf, first_sector, out=None): XTS-decrypt consecutive sectors (in place by default)."},
    COMMON_METHODS
    {NULL},
};

static PyTypeObject GcmType;

/* GcmCipher.derive(salt, info, aad_prefix) -> a new GcmCipher keyed by HKDF-SHA256(this key,
 * salt, info), with the AAD prefix given: the subkey goes from OpenSSL into locked memory, never
 * through Python. */
static PyObject *gcm_derive(CipherObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"salt", "info", "aad_prefix", NULL};
    Py_buffer salt, info, prefix;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*:derive", kwlist, &salt, &info, &prefix))
        return NULL;
    PyObject *res = NULL;
    CipherObject *o = NULL;
    unsigned char sub[32];
    if (check_open(self) != 0)
        goto done;
    if (sc_hkdf_sha256(&self->key, salt.buf, (size_t)salt.len, info.buf, (size_t)info.len, sub,
                       sizeof sub) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "HKDF-SHA256 failed in OpenSSL");
        goto done;
    }
    o = (CipherObject *)GcmType.tp_alloc(&GcmType, 0);
    if (o == NULL || cipher_set_prefix(o, &prefix) != 0)
        goto done;
    o->sector_size = self->sector_size;
    if (cipher_store_key(o, SC_GCM, sub, sizeof sub) != 0)
        goto done;
    res = (PyObject *)o;
    o = NULL;
done:
    OPENSSL_cleanse(sub, sizeof sub);
    Py_XDECREF(o);
    PyBuffer_Release(&salt);
    PyBuffer_Release(&info);
    PyBuffer_Release(&prefix);
    return res;
}

static PyMethodDef gcm_methods[] = {
    {"derive", (PyCFunction)(void (*)(void))gcm_derive, METH_VARARGS | METH_KEYWORDS,
     "derive(salt, info, aad_prefix) -> GcmCipher keyed by HKDF-SHA256(this key, salt, info)."},
    {"encrypt", (PyCFunction)(void (*)(void))gcm_encrypt, METH_VARARGS | METH_KEYWORDS,
     "encrypt(buf, first_sector, nonces, tags_out, out=None): GCM-seal consecutive sectors."},
    {"decrypt", (PyCFunction)(void (*)(void))gcm_decrypt, METH_VARARGS | METH_KEYWORDS,
     "decrypt(buf, first_sector, nonces, tags, out=None) -> list of sectors that failed to "
     "verify (zero-filled)."},
    COMMON_METHODS
    {NULL},
};

/* The two cipher types differ in name, doc, constructor and methods only. */
#define CIPHER_TYPE(name, doc, init, methods)                                                      \
    {                                                                                              \
        PyVarObject_HEAD_INIT(NULL, 0)                                                             \
        .tp_name = name,                                                                           \
        .tp_doc = doc,                                                                             \
        .tp_basicsize = sizeof(CipherObject),                                                      \
        .tp_flags = Py_TPFLAGS_DEFAULT,                                                            \
        .tp_new = PyType_GenericNew,                                                               \
        .tp_init = (initproc)init,                                                                 \
        .tp_dealloc = (destructor)cipher_dealloc,                                                  \
        .tp_methods = methods,                                                                     \
        .tp_members = cipher_members,                                                              \
        .tp_getset = cipher_getset,                                                                \
    }

static PyTypeObject XtsType = CIPHER_TYPE(
    "volumed._native.XtsCipher",
    "XtsCipher(key, sector_size=4096): AES-256-XTS with the LUKS2 plain64 tweak.", xts_init, xts_methods);

static PyTypeObject GcmType = CIPHER_TYPE( /* declared above, for derive */
    "volumed._native.GcmCipher",
    "GcmCipher(key, aad_prefix, sector_size=4096): AES-256-GCM per sector.", gcm_init, gcm_methods);

#undef CIPHER_TYPE

static PyObject *mod_openssl_version(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromFormat("OpenSSL %s", OpenSSL_version(OPENSSL_VERSION_STRING));
}

static PyObject *mod_set_threads(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"n", "adaptive", NULL};
    int n, adaptive = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|p:set_threads", kwlist, &n, &adaptive))
        return NULL;
    if (n < 1 || n > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be in 1..%d, got %d", MAX_THREADS, n);
        return NULL;
    }
    n_threads = n;
    wp_set_adaptive(adaptive);
    Py_RETURN_NONE;
}

static PyObject *mod_get_threads(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(n_threads);
}

static PyObject *mod_pool_workers(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(wp_workers());
}

static PyObject *mod_pool_stats(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    wp_stats_t st;
    wp_stats(&st);
    return Py_BuildValue("{sKsKsKsK}", "invited", st.invited, "solo", st.solo, "helped_chunks",
                         st.helped_chunks, "invited_chunks", st.invited_chunks);
}

/* The known-answer helpers hand whole buffers to one EVP_CipherUpdate, whose length is an int:
 * longer buffers are refused here, before any allocation, with a clear error (never truncated). */
static int kat_len_ok(const char *fn, const char *what, Py_ssize_t len)
{
    if (len > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: %s of %zd bytes is longer than INT_MAX (%d bytes)", fn,
                     what, len, INT_MAX);
        return 0;
    }
    return 1;
}

static PyObject *mod_kat_xts(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "tweak", "data", "encrypt", NULL};
    Py_buffer key, tweak, data;
    int encrypt;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*p:kat_xts", kwlist, &key, &tweak, &data,
                                     &encrypt))
        return NULL;
    PyObject *res = NULL;
    if ((key.len != 32 && key.len != 64) || tweak.len != 16 || data.len % 16 || data.len == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "kat_xts needs a 32- or 64-byte key, a 16-byte tweak and whole blocks");
    } else if (!kat_len_ok("kat_xts", "data", data.len)) {
    } else if ((res = PyBytes_FromStringAndSize(NULL, data.len)) != NULL &&
               sc_kat_xts(key.buf, (size_t)key.len, tweak.buf, encrypt, data.buf,
                          (unsigned char *)PyBytes_AS_STRING(res), (size_t)data.len) != 0) {
        Py_CLEAR(res);
        PyErr_SetString(PyExc_ValueError, "OpenSSL refused the XTS operation (equal key halves?)");
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&tweak);
    PyBuffer_Release(&data);
    return res;
}

static int kat_gcm_args_ok(const char *fn, Py_buffer *key, Py_buffer *nonce, Py_buffer *aad,
                           Py_buffer *data)
{
    if (key->len != 32 || nonce->len != SC_GCM_NONCE) {
        PyErr_SetString(PyExc_ValueError, "kat_gcm needs a 32-byte key and a 12-byte nonce");
        return 0;
    }
    return kat_len_ok(fn, "aad", aad->len) && kat_len_ok(fn, "data", data->len);
}

static PyObject *mod_kat_gcm_seal(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "nonce", "aad", "data", NULL};
    Py_buffer key, nonce, aad, data;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*y*:kat_gcm_seal", kwlist, &key, &nonce,
                                     &aad, &data))
        return NULL;
    PyObject *ct = NULL, *res = NULL;
    unsigned char tag[SC_GCM_TAG];
    if (kat_gcm_args_ok("kat_gcm_seal", &key, &nonce, &aad, &data) &&
        (ct = PyBytes_FromStringAndSize(NULL, data.len)) != NULL) {
        if (sc_kat_gcm_seal(key.buf, nonce.buf, aad.buf, (size_t)aad.len, data.buf,
                            (unsigned char *)PyBytes_AS_STRING(ct), (size_t)data.len, tag) == 0)
            res = Py_BuildValue("(Oy#)", ct, (const char *)tag, (Py_ssize_t)SC_GCM_TAG);
        else
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed in kat_gcm_seal");
    }
    Py_XDECREF(ct);
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&aad);
    PyBuffer_Release(&data);
    return res;
}

static PyObject *mod_kat_gcm_open(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "nonce", "aad", "data", "tag", NULL};
    Py_buffer key, nonce, aad, data, tag;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*y*y*:kat_gcm_open", kwlist, &key, &nonce,
                                     &aad, &data, &tag))
        return NULL;
    PyObject *pt = NULL, *res = NULL;
    if (!kat_gcm_args_ok("kat_gcm_open", &key, &nonce, &aad, &data)) {
    } else if (tag.len != SC_GCM_TAG) {
        PyErr_SetString(PyExc_ValueError, "kat_gcm_open needs a 16-byte tag");
    } else if ((pt = PyBytes_FromStringAndSize(NULL, data.len)) != NULL) {
        int rc = sc_kat_gcm_open(key.buf, nonce.buf, aad.buf, (size_t)aad.len, data.buf,
                                 (unsigned char *)PyBytes_AS_STRING(pt), (size_t)data.len,
                                 tag.buf);
        if (rc == 1)
            res = Py_NewRef(pt);
        else if (rc == 0)
            res = Py_NewRef(Py_None);
        else
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed in kat_gcm_open");
    }
    Py_XDECREF(pt);
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&aad);
    PyBuffer_Release(&data);
    PyBuffer_Release(&tag);
    return res;
}

static PyMethodDef module_methods[] = {
    {"openssl_version", mod_openssl_version, METH_NOARGS,
     "The libcrypto this module runs on, e.g. 'OpenSSL 3.0.22'."},
    {"set_threads", (PyCFunction)(void (*)(void))mod_set_threads, METH_VARARGS | METH_KEYWORDS,
     "set_threads(n, adaptive=True): threads (the caller plus pool workers) for one large batch; "
     "adaptive=False keeps inviting helpers even when they do not speed batches up."},
    {"get_threads", mod_get_threads, METH_NOARGS, "Threads used for one large batch."},
    {"pool_workers", mod_pool_workers, METH_NOARGS, "Pool worker threads started so far."},
    {"pool_stats", mod_pool_stats, METH_NOARGS,
     "Counters: batches with helpers invited, batches run solo, chunks run by helpers, chunks."},
    {"kat_xts", (PyCFunction)(void (*)(void))mod_kat_xts, METH_VARARGS | METH_KEYWORDS,
     "kat_xts(key, tweak, data, encrypt) -> bytes: one XTS data unit (known-answer tests only)."},
    {"kat_gcm_seal", (PyCFunction)(void (*)(void))mod_kat_gcm_seal, METH_VARARGS | METH_KEYWORDS,
     "kat_gcm_seal(key, nonce, aad, data) -> (ciphertext, tag) (known-answer tests only)."},
    {"kat_gcm_open", (PyCFunction)(void (*)(void))mod_kat_gcm_open, METH_VARARGS | METH_KEYWORDS,
     "kat_gcm_open(key, nonce, aad, data, tag) -> plaintext or None (known-answer tests only)."},
    {NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native sector cipher over OpenSSL libcrypto (see volumed.cipher for the contract).", -1,
    module_methods,
};

/* Threads for large batches by default: the CPUs this process may run on, at most MAX_THREADS. */
static int default_threads(void)
{
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        n = CPU_COUNT(&set);
    if (n < 1)
        n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > MAX_THREADS ? MAX_THREADS : n;
}

int fuse_engine_py_register(PyObject *module); /* fuse_engine_py.c */

PyMODINIT_FUNC PyInit__native(void)
{
    if (sc_init() != 0) {
        PyErr_SetString(PyExc_ImportError, "libcrypto lacks AES-256-XTS or AES-256-GCM");
        return NULL;
    }
    if (PyType_Ready(&XtsType) < 0 || PyType_Ready(&GcmType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    n_threads = default_threads();
    if (PyModule_AddObjectRef(m, "XtsCipher", (PyObject *)&XtsType) < 0 ||
        PyModule_AddObjectRef(m, "GcmCipher", (PyObject *)&GcmType) < 0 ||
        PyModule_AddIntConstant(m, "PARALLEL_MIN_BYTES", PAR_MIN_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_SECTOR_SIZE", MAX_SECTOR_SIZE) < 0 ||
        vcore_py_register(m) < 0 || fuse_engine_py_register(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* For the volume core's XTS store (vc_xtsstore.c): the same thread setting as the cipher objects. */
int native_pool_threads(void)
{
    return n_threads;
}
