/* The native FUSE request engine: see fuse_engine.h for the contract.
 *
 * Request semantics follow volumed/mount/fs.py (the pyfuse3 engine) rule for rule; the
 * differential test (tests/mount/test_engine_differential.py) runs the same random request
 * sequences through both and compares replies and files byte for byte. */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312

#include "fuse_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define ROOT_INODE FUSE_ROOT_ID
#define FILE_INODE (FUSE_ROOT_ID + 1)
#define ATTR_TIMEOUT 60.0
#define FUSE_SUPER_MAGIC 0x65735546 /* linux/magic.h */
#define READ_BUF_BYTES (1u << 20) /* the largest read the kernel sends (max_pages 256) */

struct fe_worker {
    _Atomic uint64_t requests;
    _Atomic uint64_t io_requests;
    _Atomic uint64_t bytes_read;
    _Atomic uint64_t bytes_written;
} __attribute__((aligned(64)));

struct fe_engine {
    vcore *core;
    uint64_t size;
    char *mountpoint;
    char *name;
    char *path; /* mountpoint/name, for the truncate after a refused write past the end */
    struct fuse_session *se;
    _Atomic int mounted; /* cleared by fe_exit before the lazy unmount: no restore_size after */
    int threads; /* CPU slots */
    int depth;   /* worker threads at most */
    int gated;   /* depth > threads: requests take CPU slots (below) */
    sem_t slots;
    _Atomic uint64_t disk_waits;
    fe_hook_fn hook;
    void *hook_ctx;

    pthread_t loop_thread;
    int started;
    int joined; /* the loop thread was joined (fe_stop) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ended;

    _Atomic int latch_open;
    _Atomic long inflight;
    _Atomic int hook_on;
    _Atomic int restoring;
    _Atomic uint64_t next_fh;
    _Atomic int64_t mtime_ns;
    _Atomic int nworkers;
    struct fe_worker w[FE_MAX_WORKERS];
};

/* ---- per-thread state: the worker's counter slot and its read buffer ------------------------ */

static __thread fe_engine *slot_engine;
static __thread struct fe_worker *slot;
static __thread unsigned char *read_buf;
static pthread_key_t read_buf_key;
static pthread_once_t read_buf_once = PTHREAD_ONCE_INIT;

static void read_buf_free(void *p)
{
    free(p);
}

static void read_buf_key_init(void)
{
    pthread_key_create(&read_buf_key, read_buf_free);
}

static void on_disk_wait(void *ctx);

static struct fe_worker *worker(fe_engine *e)
{
    if (slot_engine != e) {
        int i = atomic_fetch_add(&e->nworkers, 1);
        slot = &e->w[i < FE_MAX_WORKERS ? i : FE_MAX_WORKERS - 1];
        slot_engine = e;
        vc_set_wait_hook(e->gated ? on_disk_wait : NULL, e);
    }
    return slot;
}

static unsigned char *thread_read_buf(void)
{
    if (read_buf == NULL) {
        pthread_once(&read_buf_once, read_buf_key_init);
        void *p = NULL;
        if (posix_memalign(&p, 4096, READ_BUF_BYTES) != 0)
            return NULL;
        read_buf = p;
        pthread_setspecific(read_buf_key, p);
    }
    return read_buf;
}

/* ---- the latch, in-flight accounting, the fault hook ---------------------------------------- */

int fe_errno_of(int rc)
{
    if (rc >= 0)
        return 0;
    switch (rc) {
    case VC_E_KEY:
    case VC_E_INTEGRITY:
        return EIO;
    case VC_E_RANGE:
        return EINVAL;
    case VC_E_STATE:
        return EROFS;
    case VC_E_NOMEM:
        return ENOMEM;
    }
#define FE_CASE(e) case e:
    switch (-rc) { /* the backing file's errno a block device's user can act on (PASSED_THROUGH) */
    FE_PASSED_THROUGH(FE_CASE)
        return -rc;
    }
#undef FE_CASE
    return EIO; /* any other errno of the backing file is a bug: EIO */
}

/* A backing file's errno passed through to the caller: one line on stderr (the daemon's log) the
 * first time and then at 2, 4, 8, ... occurrences per errno, as errno_map.py logs it for pyfuse3. */
static void log_passed_through(int err)
{
#define FE_ENTRY(e) {e, #e},
    static const struct { int code; const char *name; } passed[] = {FE_PASSED_THROUGH(FE_ENTRY)};
#undef FE_ENTRY
    static _Atomic unsigned long seen[sizeof passed / sizeof passed[0]];
    for (size_t i = 0; i < sizeof passed / sizeof passed[0]; i++) {
        if (passed[i].code != err)
            continue;
        unsigned long n = atomic_fetch_add(&seen[i], 1) + 1;
        if ((n & (n - 1)) == 0)
            fprintf(stderr, "volumed-engine: the backing file reported %s (%s; %lu time(s) so far): "
                    "returned to the caller as that errno\n", passed[i].name, strerror(err), n);
        return;
    }
}

/* A core return code as the errno of a request, logging backing errors passed through and
 * integrity failures (with the core's message naming the sector, as errno_map.py logs them). */
static int request_errno(int rc)
{
    int err = fe_errno_of(rc);
    if (rc == VC_E_INTEGRITY)
        fprintf(stderr, "volumed-engine: integrity failure: %s\n", vc_last_error());
    if (rc < 0 && rc > -4096 && err == -rc)
        log_passed_through(err);
    return err;
}

/* Enter a request that touches the volume: counted in flight first, then the latch checked, so
 * fe_drain after fe_close_latch waits for every request that saw the latch open. */
static int enter(fe_engine *e)
{
    atomic_fetch_add(&e->inflight, 1);
    if (!atomic_load(&e->latch_open)) {
        atomic_fetch_sub(&e->inflight, 1);
        return EIO;
    }
    return 0;
}

/* Leave it: err is the request's errno so far; the latch is checked again after the I/O. */
static int leave(fe_engine *e, int err)
{
    if (err == 0 && !atomic_load(&e->latch_open))
        err = EIO;
    atomic_fetch_sub(&e->inflight, 1);
    return err;
}

static int hook(fe_engine *e, int op, uint64_t off, uint64_t len)
{
    if (e->hook == NULL || !atomic_load_explicit(&e->hook_on, memory_order_acquire))
        return 0;
    return e->hook(e->hook_ctx, op, off, len);
}

/* ---- CPU slots and I/O depth ----------------------------------------------------------------
 * `threads` (--io-threads) bounds the requests served on the CPU at once, `depth` (--io-depth) the
 * worker threads, so the requests in flight. With depth > threads a volume request takes one of the
 * CPU slots just before the core (slot_take) and gives it back once answered, or earlier: when
 * the core is about to wait for the backing disk (its wait hook, vcore.h: a read the page cache
 * cannot answer, an fdatasync), so up to depth requests wait for the disk at once while at most
 * `threads` run on the CPU, and libfuse (which starts a worker whenever all are busy) has a thread
 * to read the next request. A request whose core call gave its slot up finishes that call (its
 * cipher and reply) without one: a thread waits for a slot only outside the core, never holding a
 * range lock, a store lock or the barrier, so the slots add no lock-order cycle (a slot holder
 * waiting for a range lock waits for a thread that needs no slot to go on). Revocation is
 * unchanged: a request is counted in flight (enter) before it waits for a slot, so fe_drain waits
 * for it too, and it checks the latch again after its I/O (leave). */

static __thread fe_engine *slot_of; /* the engine whose CPU slot this thread holds, or NULL */

static void slot_take(fe_engine *e)
{
    if (!e->gated || slot_of == e)
        return;
    while (sem_wait(&e->slots) != 0)
        ; /* EINTR only */
    slot_of = e;
}

static void slot_give(fe_engine *e)
{
    if (slot_of != e)
        return;
    slot_of = NULL;
    sem_post(&e->slots);
}

/* The core's wait hook on a gated engine's workers: about to wait for the disk. */
static void on_disk_wait(void *ctx)
{
    fe_engine *e = ctx;
    if (slot_of == e) {
        atomic_fetch_add_explicit(&e->disk_waits, 1, memory_order_relaxed);
        slot_give(e);
    }
}

static void count(fe_engine *e)
{
    atomic_fetch_add_explicit(&worker(e)->requests, 1, memory_order_relaxed);
}

/* ---- attributes ----------------------------------------------------------------------------- */

static void fill_attr(fe_engine *e, fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    int64_t t = atomic_load(&e->mtime_ns);
    st->st_ino = ino;
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = t / 1000000000;
    st->st_atim.tv_nsec = st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = t % 1000000000;
    st->st_blksize = 4096;
    if (ino == ROOT_INODE) {
        st->st_mode = S_IFDIR | 0700;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | 0600;
        st->st_nlink = 1;
        st->st_size = (off_t)e->size;
        st->st_blocks = (blkcnt_t)(e->size / 512);
    }
}

static void fill_entry(fe_engine *e, fuse_ino_t ino, struct fuse_entry_param *ep)
{
    memset(ep, 0, sizeof *ep);
    ep->ino = ino;
    ep->generation = 0;
    ep->attr_timeout = ep->entry_timeout = ATTR_TIMEOUT;
    fill_attr(e, ino, &ep->attr);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- requests ------------------------------------------------------------------------------- */

#define ENGINE(req) ((fe_engine *)fuse_req_userdata(req))

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    /* As pyfuse3 negotiates for VolumeFS: readdirplus always, writeback cache, export support. */
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    if (conn->capable & FUSE_CAP_EXPORT_SUPPORT)
        conn->want |= FUSE_CAP_EXPORT_SUPPORT;
    if (conn->capable & FUSE_CAP_WRITEBACK_CACHE)
        conn->want |= FUSE_CAP_WRITEBACK_CACHE;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fe_engine *e = ENGINE(req);
    struct fuse_entry_param ep;
    count(e);
    if (!atomic_load(&e->latch_open)) {
        fuse_reply_err(req, EIO);
    } else if (parent == ROOT_INODE && strcmp(name, e->name) == 0) {
        fill_entry(e, FILE_INODE, &ep);
        fuse_reply_entry(req, &ep);
    } else if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        fill_entry(e, ROOT_INODE, &ep);
        fuse_reply_entry(req, &ep);
    } else {
        fuse_reply_err(req, ENOENT);
    }
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    struct stat st;
    (void)fi;
    count(e);
    /* the directory stays listable after revocation; the file does not */
    if (ino != ROOT_INODE && !atomic_load(&e->latch_open)) {
        fuse_reply_err(req, EIO);
    } else if (ino != ROOT_INODE && ino != FILE_INODE) {
        fuse_reply_err(req, ENOENT);
    } else {
        fill_attr(e, ino, &st);
        fuse_reply_attr(req, &st, ATTR_TIMEOUT);
    }
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    count(ENGINE(req));
    if (ino != ROOT_INODE) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    fi->fh = ino;
    fuse_reply_open(req, fi);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    char buf[512];
    size_t n = 0;
    (void)ino;
    (void)fi;
    count(e);
    if (off < 1) {
        struct fuse_entry_param ep;
        fill_entry(e, FILE_INODE, &ep);
        size_t cap = size < sizeof buf ? size : sizeof buf;
        n = fuse_add_direntry_plus(req, buf, cap, e->name, &ep, 1);
        if (n > cap)
            n = 0; /* does not fit: an empty reply, the kernel asks again with a larger buffer */
    }
    fuse_reply_buf(req, buf, n);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    count(ENGINE(req));
    fuse_reply_err(req, 0);
}

/* File handles: a counter, shifted, with bit 0 set for O_DIRECT opens (every write on those is
 * acknowledged: flushed before the reply; op_write also looks at the write's own flags, for
 * O_DIRECT set with fcntl after the open). O_SYNC/O_DSYNC writes go through the cache and the
 * kernel's fsync. */
static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    count(e);
    if (!atomic_load(&e->latch_open)) {
        fuse_reply_err(req, EIO);
        return;
    }
    if (ino != FILE_INODE) {
        fuse_reply_err(req, ino == ROOT_INODE ? EISDIR : ENOENT);
        return;
    }
    if (fi->flags & O_TRUNC) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    uint64_t n = atomic_fetch_add(&e->next_fh, 1);
    fi->fh = (n << 1) | ((fi->flags & O_DIRECT) ? 1 : 0);
    fi->direct_io = 0;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    struct fe_worker *w = worker(e);
    (void)ino;
    (void)fi;
    atomic_fetch_add_explicit(&w->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->io_requests, 1, memory_order_relaxed);
    if (off < 0 || (uint64_t)off >= e->size) {
        if (!atomic_load(&e->latch_open))
            fuse_reply_err(req, EIO);
        else
            fuse_reply_buf(req, NULL, 0);
        return;
    }
    size_t n = size;
    if (n > e->size - (uint64_t)off)
        n = (size_t)(e->size - (uint64_t)off);
    unsigned char *buf = thread_read_buf();
    if (buf == NULL || n > READ_BUF_BYTES) {
        fuse_reply_err(req, buf == NULL ? ENOMEM : EINVAL);
        return;
    }
    int err = enter(e);
    if (err == 0) {
        err = hook(e, FE_OP_READ, (uint64_t)off, n);
        if (err == 0) {
            slot_take(e);
            err = request_errno(vc_read(e->core, (uint64_t)off, n, buf));
        }
        err = leave(e, err);
    }
    if (err != 0) {
        fuse_reply_err(req, err);
    } else {
        atomic_fetch_add_explicit(&w->bytes_read, n, memory_order_relaxed);
        fuse_reply_buf(req, (const char *)buf, n);
    }
    slot_give(e);
}

static void *restore_size_thread(void *arg)
{
    fe_engine *e = arg;
    /* Only while this engine's mount is attached, and only on our own file: after an unmount
     * the path names whatever the directory under it holds now (a symlink planted there would
     * have this root daemon truncate its target), so no symlink is followed and the file must be
     * this file system's (FUSE, our inode) before it is truncated through its descriptor. */
    int fd = atomic_load(&e->mounted) ? open(e->path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
                                      : -1;
    if (fd >= 0) {
        struct stat st;
        struct statfs sf;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_ino == FILE_INODE &&
            fstatfs(fd, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC && atomic_load(&e->mounted) &&
            ftruncate(fd, (off_t)e->size) != 0) {
            /* nothing to do: the kernel keeps its grown size until the next truncate */
        }
        close(fd);
    }
    atomic_store(&e->restoring, 0);
    return NULL;
}

/* After a refused write past the end: the writeback cache accepted it and grew the size the
 * kernel caches (and trusts), so truncate the file back to the volume's size through the mount,
 * from a thread of its own, never inside a request (the kernel sends the truncate here). */
static void restore_size(fe_engine *e)
{
    if (atomic_exchange(&e->restoring, 1))
        return;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, restore_size_thread, e) != 0)
        atomic_store(&e->restoring, 0);
    pthread_attr_destroy(&attr);
}

/* vc_flush between two latch checks (so no flush succeeds once the latch is closed). */
static int flush_checked(fe_engine *e)
{
    int err = enter(e);
    if (err != 0)
        return err;
    err = hook(e, FE_OP_FLUSH, 0, 0);
    if (err == 0) {
        slot_take(e);
        err = request_errno(vc_flush(e->core));
    }
    return leave(e, err);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    struct fe_worker *w = worker(e);
    (void)ino;
    atomic_fetch_add_explicit(&w->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->io_requests, 1, memory_order_relaxed);
    if (off < 0 || (uint64_t)off + size > e->size) {
        /* Past the end: with the writeback cache, a write-back of pages the kernel accepted
         * beyond the size. Refuse it and set the kernel's size back. */
        restore_size(e);
        fuse_reply_err(req, ENOSPC);
        return;
    }
    int err = enter(e);
    if (err == 0) {
        err = hook(e, FE_OP_WRITE, (uint64_t)off, size);
        if (err == 0) {
            slot_take(e);
            err = request_errno(vc_write(e->core, (uint64_t)off, (const unsigned char *)buf, size));
        }
        err = leave(e, err);
    }
    if (err == 0)
        hook(e, FE_OP_HEAL, (uint64_t)off, size);
    /* Acknowledged on return: a file opened O_DIRECT (fh bit 0), and one switched to O_DIRECT
     * later with fcntl(F_SETFL) (InnoDB does): the kernel sends the file's flags with each write
     * it does not write back from the cache. */
    if (err == 0 && ((fi->fh & 1) || (fi->flags & O_DIRECT)))
        err = flush_checked(e);
    if (err != 0) {
        fuse_reply_err(req, err);
    } else {
        atomic_fetch_add_explicit(&w->bytes_written, size, memory_order_relaxed);
        fuse_reply_write(req, size);
    }
    slot_give(e);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    struct fe_worker *w = worker(e);
    (void)ino;
    (void)datasync;
    (void)fi;
    atomic_fetch_add_explicit(&w->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->io_requests, 1, memory_order_relaxed);
    fuse_reply_err(req, flush_checked(e));
    slot_give(e);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    (void)ino;
    (void)fi;
    count(e);
    fuse_reply_err(req, atomic_load(&e->latch_open) ? 0 : EIO);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    count(ENGINE(req));
    fuse_reply_err(req, 0);
}

/* Only a truncate to the volume's own size and time updates are accepted (the size is fixed;
 * with the writeback cache the kernel sends the mtime/ctime it kept at write-back). */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    fe_engine *e = ENGINE(req);
    struct stat st;
    (void)fi;
    count(e);
    if (!atomic_load(&e->latch_open)) {
        fuse_reply_err(req, EIO);
        return;
    }
    if (ino != FILE_INODE) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if ((to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) ||
        ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != e->size)) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW)
        atomic_store(&e->mtime_ns, now_ns());
    else if (to_set & FUSE_SET_ATTR_MTIME)
        atomic_store(&e->mtime_ns,
                     (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec);
    fill_attr(e, ino, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    fe_engine *e = ENGINE(req);
    struct statvfs s;
    (void)ino;
    count(e);
    memset(&s, 0, sizeof s);
    s.f_bsize = s.f_frsize = 4096;
    s.f_blocks = e->size / 4096;
    s.f_files = 2;
    s.f_namemax = 255;
    fuse_reply_statfs(req, &s);
}

/* The pyfuse3 engine has no fallocate (libfuse answers ENOSYS and the kernel then tells every
 * caller EOPNOTSUPP); the native engine answers the same, so both engines agree. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    (void)ino;
    (void)mode;
    (void)off;
    (void)len;
    (void)fi;
    count(ENGINE(req));
    fuse_reply_err(req, EOPNOTSUPP);
}

static const struct fuse_lowlevel_ops ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .fallocate = op_fallocate,
};

/* ---- lifecycle ------------------------------------------------------------------------------ */

int fe_create(const fe_config *cfg, fe_engine **out, char *err, size_t errlen)
{
    *out = NULL;
    if (cfg->core == NULL || cfg->mountpoint == NULL || cfg->name == NULL || cfg->threads < 1 ||
        cfg->threads > FE_MAX_WORKERS || cfg->depth > FE_MAX_WORKERS) {
        snprintf(err, errlen, "bad engine configuration (threads and depth must be 1 to %d)",
                 FE_MAX_WORKERS);
        return -1;
    }
    fe_engine *e = calloc(1, sizeof *e);
    if (e == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (sem_init(&e->slots, 0, (unsigned)cfg->threads) != 0) {
        snprintf(err, errlen, "cannot create the CPU slots: %s", strerror(errno));
        free(e);
        return -1;
    }
    e->mountpoint = strdup(cfg->mountpoint);
    e->name = strdup(cfg->name);
    if (e->mountpoint == NULL || e->name == NULL ||
        asprintf(&e->path, "%s/%s", cfg->mountpoint, cfg->name) < 0) {
        e->path = NULL;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    e->core = cfg->core;
    vc_ref(e->core);
    e->size = vc_size(e->core);
    e->threads = cfg->threads;
    e->depth = cfg->depth > cfg->threads ? cfg->depth : cfg->threads;
    e->gated = e->depth > e->threads;
    e->hook = cfg->hook;
    e->hook_ctx = cfg->hook_ctx;
    atomic_store(&e->latch_open, 1);
    atomic_store(&e->next_fh, 1);
    atomic_store(&e->mtime_ns, now_ns());
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);

    char *argv[] = {"volumed-engine", "-o", (char *)(cfg->options ? cfg->options : ""), NULL};
    struct fuse_args args = FUSE_ARGS_INIT(cfg->options && cfg->options[0] ? 3 : 1, argv);
    e->se = fuse_session_new(&args, &ops, sizeof ops, e);
    if (e->se == NULL) {
        snprintf(err, errlen, "fuse_session_new failed (bad mount options %s?)",
                 cfg->options ? cfg->options : "");
        goto fail;
    }
    if (fuse_session_mount(e->se, e->mountpoint) != 0) {
        snprintf(err, errlen, "cannot mount at %s (see the daemon's log)", e->mountpoint);
        goto fail;
    }
    atomic_store(&e->mounted, 1);
    *out = e;
    return 0;
fail:
    if (e->se != NULL)
        fuse_session_destroy(e->se);
    if (e->core != NULL)
        vc_unref(e->core);
    sem_destroy(&e->slots);
    free(e->mountpoint);
    free(e->name);
    free(e->path);
    free(e);
    return -1;
}

static void *loop_main(void *arg)
{
    fe_engine *e = arg;
    struct fuse_loop_config *lc = fuse_loop_cfg_create();
    if (lc != NULL) {
        fuse_loop_cfg_set_clone_fd(lc, 1);
        /* libfuse starts a worker whenever all are busy, up to max_threads; idle ones are kept
         * (idle_threads = max_threads: no thread is ever ended and started again) */
        fuse_loop_cfg_set_max_threads(lc, (unsigned)e->depth);
        fuse_loop_cfg_set_idle_threads(lc, (unsigned)e->depth);
        fuse_session_loop_mt(e->se, lc);
        fuse_loop_cfg_destroy(lc);
    }
    pthread_mutex_lock(&e->mu);
    e->ended = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

int fe_start(fe_engine *e)
{
    if (e->started)
        return EBUSY;
    int rc = pthread_create(&e->loop_thread, NULL, loop_main, e);
    if (rc == 0)
        e->started = 1;
    return rc;
}

int fe_wait(fe_engine *e, long timeout_ms)
{
    if (!e->started)
        return 1;
    pthread_mutex_lock(&e->mu);
    if (timeout_ms < 0) {
        while (!e->ended)
            pthread_cond_wait(&e->cv, &e->mu);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!e->ended && pthread_cond_timedwait(&e->cv, &e->mu, &ts) == 0)
            ;
    }
    int ended = e->ended;
    pthread_mutex_unlock(&e->mu);
    return ended;
}

void fe_exit(fe_engine *e)
{
    fuse_session_exit(e->se);
    if (atomic_exchange(&e->mounted, 0))
        fuse_session_unmount(e->se); /* lazy: the connection ends with the last open file */
}

void fe_close_latch(fe_engine *e)
{
    atomic_store(&e->latch_open, 0);
}

int fe_latch_open(const fe_engine *e)
{
    return atomic_load(&e->latch_open);
}

void fe_drain(fe_engine *e)
{
    struct timespec ms = {0, 1000000L};
    while (atomic_load(&e->inflight) > 0)
        nanosleep(&ms, NULL);
}

int fe_invalidate(fe_engine *e)
{
    return fuse_lowlevel_notify_inval_inode(e->se, FILE_INODE, 0, 0);
}

void fe_set_hook_on(fe_engine *e, int on)
{
    atomic_store_explicit(&e->hook_on, on ? 1 : 0, memory_order_release);
}

void fe_get_stats(fe_engine *e, fe_stats *st)
{
    memset(st, 0, sizeof *st);
    int n = atomic_load(&e->nworkers);
    if (n > FE_MAX_WORKERS)
        n = FE_MAX_WORKERS;
    for (int i = 0; i < n; i++) {
        uint64_t r = atomic_load_explicit(&e->w[i].requests, memory_order_relaxed);
        st->per_worker[i] = r;
        st->requests += r;
        st->io_requests += atomic_load_explicit(&e->w[i].io_requests, memory_order_relaxed);
        st->bytes_read += atomic_load_explicit(&e->w[i].bytes_read, memory_order_relaxed);
        st->bytes_written += atomic_load_explicit(&e->w[i].bytes_written, memory_order_relaxed);
        if (r > 0)
            st->workers++;
    }
    st->threads = e->threads;
    st->depth = e->depth;
    st->disk_waits = atomic_load_explicit(&e->disk_waits, memory_order_relaxed);
    st->latch_open = atomic_load(&e->latch_open);
    st->hook_on = atomic_load(&e->hook_on);
    pthread_mutex_lock(&e->mu);
    st->running = e->started && !e->ended;
    pthread_mutex_unlock(&e->mu);
}

int fe_stop(fe_engine *e)
{
    if (e->started && !e->joined) {
        fe_exit(e);
        if (!fe_wait(e, 2000))
            return -1; /* still serving an open file: the caller aborts the connection first */
        pthread_join(e->loop_thread, NULL);
        e->joined = 1;
    } else if (!e->started && atomic_exchange(&e->mounted, 0)) {
        fuse_session_unmount(e->se);
    }
    return 0;
}

int fe_destroy(fe_engine *e)
{
    if (e == NULL)
        return 0;
    if (fe_stop(e) != 0)
        return -1;
    /* The connection's descriptors are closed by now (the session's at fe_exit's unmount, the
     * workers' clones as the loop ended), so the kernel has ended it and a restore-size thread's
     * request still waiting for a reply returned; that thread still uses e: wait for it. */
    fuse_session_destroy(e->se);
    struct timespec ms = {0, 1000000L};
    while (atomic_load(&e->restoring))
        nanosleep(&ms, NULL);
    vc_unref(e->core);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    sem_destroy(&e->slots);
    free(e->mountpoint);
    free(e->name);
    free(e->path);
    free(e);
    return 0;
}
