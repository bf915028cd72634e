/* volumed._native.FuseEngine: the Python face of the native FUSE request engine (fuse_engine.h).
 *
 * Python (volumed.mount.engine) creates it over a VolumeCore, starts it, and drives the rest of a
 * mount's life: revocation (close_latch, drain, invalidate), faults (set_hook), status (stats),
 * unmount (exit, wait, close). Every call that may wait releases the GIL; the worker threads never
 * take it, except to call the fault hook while one is set. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <time.h>

#include "fuse_engine.h"
#include "vcore_py.h"

/* Teardown against the other threads of the daemon (the unmount reaper blocked in wait(), a
 * status request, the revocation's drain): every method takes the engine with use() under the
 * GIL, and those that release the GIL count themselves in `users` until they have it back.
 * close() refuses new callers (`closing`), stops the loop (after which every engine call returns
 * at once), waits for `users` to reach 0, and only then frees the engine. */
typedef struct {
    PyObject_HEAD
    fe_engine *e;
    PyObject *hook; /* a callable(op, off, len) -> errno or 0, or NULL; read under the GIL */
    int users;      /* calls inside the engine with the GIL released */
    int closing;    /* close() is stopping the engine: no new calls */
} EngineObject;

/* The engine's fault hook: take the GIL, call the Python hook, return its errno (EIO if it
 * raised: a bug in the fault layer fails the request rather than serving it unchecked). */
static int call_hook(void *ctx, int op, uint64_t off, uint64_t len)
{
    EngineObject *self = ctx;
    int err = 0;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *h = self->hook;
    if (h != NULL) {
        Py_INCREF(h);
        PyObject *r = PyObject_CallFunction(h, "iKK", op, (unsigned long long)off,
                                            (unsigned long long)len);
        if (r == NULL) {
            PyErr_WriteUnraisable(h);
            err = EIO;
        } else {
            long v = r == Py_None ? 0 : PyLong_AsLong(r);
            if (v == -1 && PyErr_Occurred()) {
                PyErr_WriteUnraisable(h);
                v = EIO;
            }
            err = (int)v;
            Py_DECREF(r);
        }
        Py_DECREF(h);
    }
    PyGILState_Release(g);
    return err;
}

static int engine_init(EngineObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"core", "mountpoint", "name", "threads", "options", "depth", NULL};
    PyObject *core_obj;
    const char *mountpoint, *name, *options = "";
    int threads, depth = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Ossi|si", kwlist, &core_obj, &mountpoint, &name,
                                     &threads, &options, &depth))
        return -1;
    if (self->e != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FuseEngine already initialised");
        return -1;
    }
    vcore *core = vcore_from_pyobject(core_obj);
    if (core == NULL)
        return -1;
    fe_config cfg = {.core = core, .mountpoint = mountpoint, .name = name, .options = options,
                     .threads = threads, .depth = depth, .hook = call_hook, .hook_ctx = self};
    char err[256] = "";
    fe_engine *e = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fe_create(&cfg, &e, err, sizeof err);
    Py_END_ALLOW_THREADS
    vc_unref(core); /* the engine holds its own reference */
    if (rc != 0) {
        PyErr_SetString(PyExc_OSError, err);
        return -1;
    }
    self->e = e;
    return 0;
}

static int need(EngineObject *self)
{
    if (self->e == NULL || self->closing) {
        PyErr_SetString(PyExc_ValueError, "the engine is closed");
        return -1;
    }
    return 0;
}

/* The engine for a call that releases the GIL (NULL with ValueError if closed or closing);
 * unuse() once the GIL is held again. */
static fe_engine *use(EngineObject *self)
{
    if (need(self) < 0)
        return NULL;
    self->users++;
    return self->e;
}

static void unuse(EngineObject *self)
{
    self->users--;
}

static PyObject *engine_start(EngineObject *self, PyObject *unused)
{
    (void)unused;
    if (need(self) < 0)
        return NULL;
    int rc = fe_start(self->e);
    if (rc != 0) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *engine_wait(EngineObject *self, PyObject *args)
{
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &timeout) || need(self) < 0)
        return NULL;
    long ms = -1;
    if (timeout != Py_None) {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        ms = t <= 0 ? 0 : (long)(t * 1000.0);
    }
    fe_engine *e = use(self);
    if (e == NULL)
        return NULL;
    int ended;
    Py_BEGIN_ALLOW_THREADS
    ended = fe_wait(e, ms);
    Py_END_ALLOW_THREADS
    unuse(self);
    return PyBool_FromLong(ended);
}

/* A no-argument method that runs fn(engine) with the GIL released (it may wait for the kernel or
 * for requests in flight). */
#define NOGIL_METHOD(method, fn)                                                                   \
    static PyObject *method(EngineObject *self, PyObject *unused)                                  \
    {                                                                                              \
        (void)unused;                                                                              \
        fe_engine *e = use(self);                                                                  \
        if (e == NULL)                                                                             \
            return NULL;                                                                           \
        Py_BEGIN_ALLOW_THREADS                                                                     \
        fn(e);                                                                                     \
        Py_END_ALLOW_THREADS                                                                       \
        unuse(self);                                                                               \
        Py_RETURN_NONE;                                                                            \
    }

NOGIL_METHOD(engine_exit, fe_exit)
NOGIL_METHOD(engine_close_latch, fe_close_latch)
NOGIL_METHOD(engine_drain, fe_drain)

static PyObject *engine_invalidate(EngineObject *self, PyObject *unused)
{
    (void)unused;
    fe_engine *e = use(self);
    if (e == NULL)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fe_invalidate(e);
    Py_END_ALLOW_THREADS
    unuse(self);
    return PyLong_FromLong(rc < 0 ? -rc : rc);
}

static PyObject *engine_set_hook(EngineObject *self, PyObject *hook)
{
    if (need(self) < 0)
        return NULL;
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "the hook must be callable or None");
        return NULL;
    }
    if (hook == Py_None) {
        fe_set_hook_on(self->e, 0); /* workers already inside call_hook see NULL under the GIL */
        Py_CLEAR(self->hook);
    } else {
        Py_INCREF(hook);
        Py_XSETREF(self->hook, hook);
        fe_set_hook_on(self->e, 1);
    }
    Py_RETURN_NONE;
}

static PyObject *engine_stats(EngineObject *self, PyObject *unused)
{
    (void)unused;
    if (need(self) < 0)
        return NULL;
    fe_stats st;
    fe_get_stats(self->e, &st);
    PyObject *per = PyList_New(0);
    if (per == NULL)
        return NULL;
    for (int i = 0; i < FE_MAX_WORKERS && st.per_worker[i]; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st.per_worker[i]);
        if (v == NULL || PyList_Append(per, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(per);
            return NULL;
        }
        Py_DECREF(v);
    }
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:N,s:i,s:i,s:i,s:O,s:O,s:O}",
                         "requests", (unsigned long long)st.requests,
                         "disk_waits", (unsigned long long)st.disk_waits,
                         "io_requests", (unsigned long long)st.io_requests,
                         "bytes_read", (unsigned long long)st.bytes_read,
                         "bytes_written", (unsigned long long)st.bytes_written,
                         "per_worker", per, "workers", st.workers, "threads", st.threads,
                         "depth", st.depth,
                         "latch_open", st.latch_open ? Py_True : Py_False,
                         "hook_on", st.hook_on ? Py_True : Py_False,
                         "running", st.running ? Py_True : Py_False);
}

static PyObject *engine_close(EngineObject *self, PyObject *unused)
{
    (void)unused;
    if (self->e == NULL)
        Py_RETURN_TRUE;
    if (self->closing) {
        PyErr_SetString(PyExc_RuntimeError, "another thread is closing the engine");
        return NULL;
    }
    fe_engine *e = self->e;
    self->closing = 1; /* from here on no new call enters e */
    int rc;
    fe_set_hook_on(e, 0);
    Py_BEGIN_ALLOW_THREADS
    rc = fe_stop(e);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        self->closing = 0;
        Py_RETURN_FALSE; /* still serving an open file: abort the connection, call again */
    }
    /* The loop has ended, so the calls still inside e return at once: wait for them. */
    struct timespec ms = {0, 1000000L};
    while (self->users > 0) {
        Py_BEGIN_ALLOW_THREADS
        nanosleep(&ms, NULL);
        Py_END_ALLOW_THREADS
    }
    self->e = NULL;
    self->closing = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = fe_destroy(e); /* stopped already: frees */
    Py_END_ALLOW_THREADS
    (void)rc;
    Py_CLEAR(self->hook);
    Py_RETURN_TRUE;
}

static void engine_dealloc(EngineObject *self)
{
    if (self->e != NULL) {
        fe_set_hook_on(self->e, 0);
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = fe_destroy(self->e);
        Py_END_ALLOW_THREADS
        /* On failure the engine is left running (and leaked) rather than freed in use, and so
         * is this object: its workers hold it as the fault hook's context. */
        if (rc != 0)
            return;
    }
    Py_CLEAR(self->hook);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef engine_methods[] = {
    {"start", (PyCFunction)engine_start, METH_NOARGS, "Start serving in native threads."},
    {"wait", (PyCFunction)engine_wait, METH_VARARGS,
     "wait(timeout=None) -> bool: True once the request loop has ended."},
    {"exit", (PyCFunction)engine_exit, METH_NOARGS,
     "End serving: detach the mount (open files keep the connection until closed)."},
    {"close_latch", (PyCFunction)engine_close_latch, METH_NOARGS,
     "Revocation: every later request that touches the volume fails with EIO."},
    {"drain", (PyCFunction)engine_drain, METH_NOARGS, "Wait for the requests in flight."},
    {"invalidate", (PyCFunction)engine_invalidate, METH_NOARGS,
     "Drop the kernel's cached pages of the file; 0 or an errno. Never from a request."},
    {"set_hook", (PyCFunction)engine_set_hook, METH_O,
     "set_hook(fn or None): fn(op, off, len) -> errno or 0 sees every read/write/flush first "
     "(op: 0 read, 1 write, 2 flush, 3 heal after a write); None serves without the GIL."},
    {"stats", (PyCFunction)engine_stats, METH_NOARGS, "Counters of the engine (a dict)."},
    {"close", (PyCFunction)engine_close, METH_NOARGS,
     "Unmount, stop and free; False if an open file still holds the connection."},
    {NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "volumed._native.FuseEngine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FuseEngine(core, mountpoint, name, threads, options='', depth=0): mount core's volume "
              "as one file named name at mountpoint, served by up to max(depth, threads) native "
              "workers, at most threads of them on the CPU at once (the others wait for the disk).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
};

/* table[name] = fe_errno_of(rc); -1 with an exception set on failure. */
static int put_errno_of(PyObject *table, const char *name, int rc)
{
    PyObject *v = PyLong_FromLong(fe_errno_of(rc));
    int r = v == NULL ? -1 : PyDict_SetItemString(table, name, v);
    Py_XDECREF(v);
    return r;
}

/* engine_errno_table() -> dict: what each core return code becomes at the native FUSE boundary
 * (compared with volumed/mount/errno_map.py by the tests): the core's codes, every errno of
 * FE_PASSED_THROUGH (as a negative return code of the backing file), and EBADF for the rest. */
static PyObject *mod_engine_errno_table(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    PyObject *t = PyDict_New();
    if (t == NULL)
        return NULL;
#define PUT(name, rc)                                                                              \
    if (put_errno_of(t, name, rc) < 0)                                                             \
        goto fail;
#define PUT_ERRNO(e) PUT(#e, -(e))
    PUT("VC_E_KEY", VC_E_KEY)
    PUT("VC_E_INTEGRITY", VC_E_INTEGRITY)
    PUT("VC_E_RANGE", VC_E_RANGE)
    PUT("VC_E_STATE", VC_E_STATE)
    PUT("VC_E_NOMEM", VC_E_NOMEM)
    FE_PASSED_THROUGH(PUT_ERRNO)
    PUT_ERRNO(EBADF) /* not passed through: EIO */
#undef PUT_ERRNO
#undef PUT
    return t;
fail:
    Py_DECREF(t);
    return NULL;
}

static PyMethodDef engine_module_methods[] = {
    {"engine_errno_table", mod_engine_errno_table, METH_NOARGS,
     "The native FUSE engine's errno for each core return code."},
    {NULL},
};

int fuse_engine_py_register(PyObject *module)
{
    if (PyType_Ready(&EngineType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "FuseEngine", (PyObject *)&EngineType) < 0)
        return -1;
    return PyModule_AddFunctions(module, engine_module_methods);
}
