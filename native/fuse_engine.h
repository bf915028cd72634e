/* The native FUSE request engine (issue 12): one mounted volume's file served by native threads.
 *
 * The engine owns a libfuse lowlevel session for the mount point and serves the one-file file
 * system of volumed/mount/fs.py (the pyfuse3 engine) with the same semantics, in worker threads
 * that never take the GIL: libfuse's multi-threaded loop with clone_fd, so each worker reads
 * requests from its own clone of the mount's /dev/fuse descriptor (FUSE_DEV_IOC_CLONE) and
 * replies on it. Reads, writes and fsync go straight to the volume core (vcore.h).
 *
 * The access latch lives here, in native memory: every request that touches the volume checks it
 * before and after its I/O; fe_close_latch closes it (requests from then on fail with EIO) and
 * fe_drain waits for the requests in flight. The key wipe is the core's (vc_wipe_key).
 *
 * Threads: up to `depth` workers (libfuse starts one whenever all are busy), of which at most
 * `threads` serve requests on the CPU at once; the others are requests waiting for the backing
 * disk (fuse_engine.c, "CPU slots and I/O depth"). depth == threads: every worker serves end to end.
 *
 * Faults: an optional hook (fe_set_hook_on) sees every read/write/flush first and may fail it with
 * an errno or delay it; the Python face points it at volumed.mount.faults (taking the GIL only
 * while a fault is set). With no hook set no request takes the GIL. */
#ifndef VOLUMED_FUSE_ENGINE_H
#define VOLUMED_FUSE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "vcore.h"

typedef struct fe_engine fe_engine;

#define FE_MAX_WORKERS 64

enum { FE_OP_READ = 0, FE_OP_WRITE = 1, FE_OP_FLUSH = 2, FE_OP_HEAL = 3 };

/* The fault hook: 0 to go on, or an errno to fail the request with (FE_OP_HEAL: called after a
 * successful write, result ignored). Called from worker threads while the hook is on. */
typedef int (*fe_hook_fn)(void *ctx, int op, uint64_t off, uint64_t len);

typedef struct {
    vcore *core;             /* the engine takes a reference of its own */
    const char *mountpoint;  /* an empty directory */
    const char *name;        /* the file's name (the volume's EBS id) */
    const char *options;     /* mount options, comma separated ("fsname=volumed,allow_other,...") */
    int threads;             /* CPU slots: requests served on the CPU at once (1..FE_MAX_WORKERS) */
    int depth;               /* worker threads at most (threads..FE_MAX_WORKERS; below threads, or
                                0: threads): with depth > threads a request gives its CPU slot up
                                while it waits for the backing disk (fuse_engine.c) */
    fe_hook_fn hook;         /* may be NULL */
    void *hook_ctx;
} fe_config;

typedef struct {
    uint64_t requests;       /* requests answered (every opcode) */
    uint64_t io_requests;    /* reads, writes and fsyncs among them */
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t per_worker[FE_MAX_WORKERS]; /* requests answered by each worker thread */
    uint64_t disk_waits;     /* requests that gave their CPU slot up to wait for the disk */
    int workers;             /* worker threads that answered at least one request */
    int threads;             /* CPU slots (the configured threads) */
    int depth;               /* worker threads at most */
    int latch_open;
    int hook_on;
    int running;
} fe_stats;

/* Create the session and mount it. 0, or -1 with a message in err. */
int fe_create(const fe_config *cfg, fe_engine **out, char *err, size_t errlen);

/* Start serving in a thread of its own (the libfuse multi-threaded loop). 0 or an errno. */
int fe_start(fe_engine *e);

/* Wait until the loop ends (unmounted, aborted or fe_exit); timeout_ms < 0 waits for ever.
 * 1 if it ended, 0 on timeout. */
int fe_wait(fe_engine *e, long timeout_ms);

/* End serving: mark the session exited and detach the mount (lazily: open files keep the
 * connection until closed; the caller aborts the connection if the loop does not end). */
void fe_exit(fe_engine *e);

/* Revocation: close the latch (every later request that touches the volume gets EIO). */
void fe_close_latch(fe_engine *e);
int fe_latch_open(const fe_engine *e);

/* Wait for the requests in flight to finish (after fe_close_latch, or while the hook is being
 * switched on before a power cut). */
void fe_drain(fe_engine *e);

/* Drop the kernel's cached pages and attributes of the file. Never from a request. 0 or -errno. */
int fe_invalidate(fe_engine *e);

void fe_set_hook_on(fe_engine *e, int on);

void fe_get_stats(fe_engine *e, fe_stats *st);

/* The backing file's errno values a block device's user can act on (a full disk, a quota, a
 * read-only or too-small file system, the disk below failing, no memory): passed through to the
 * caller; any other errno of the backing file is a bug and becomes EIO. One list for fe_errno_of,
 * its log and engine_errno_table(); the same set as PASSED_THROUGH in volumed/mount/errno_map.py
 * (tests/mount/test_engine.py compares them). X(name) is applied to each errno. */
#define FE_PASSED_THROUGH(X) X(ENOSPC) X(EDQUOT) X(EROFS) X(EFBIG) X(EIO) X(ENOMEM)

/* The errno a core return code becomes at the FUSE boundary (the one table of the native path;
 * volumed/mount/errno_map.py holds the pyfuse3 path's and a test checks they agree). */
int fe_errno_of(int rc);

/* Stop serving: unmount if still mounted and wait (2 s at most) for the loop to end (joining its
 * thread). 0 once it ended (idempotent), -1 if it still serves: an open file holds the
 * connection, so abort it (/sys/fs/fuse/connections/N/abort) and call again. Once it returned 0,
 * every other call on e returns at once; the caller frees e only when no thread is inside one
 * (the Python face counts them). */
int fe_stop(fe_engine *e);

/* fe_stop, then free everything and drop the core reference. -1 (nothing freed) as fe_stop. */
int fe_destroy(fe_engine *e);

#endif
