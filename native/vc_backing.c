/* The core's backing file and its optional power-loss recorder; see vc_internal.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <endian.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "vc_internal.h"

int vb_open(vc_backing *b, int fd, int journal_fd, int history_fd, uint64_t history_max)
{
    b->jfd = b->hfd = -1;
    b->hbytes = 0;
    b->hmax = history_max;
    atomic_store(&b->dead, 0);
    atomic_store(&b->lost, 0);
    atomic_store(&b->no_nowait, 0);
    b->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (b->fd < 0)
        return -errno;
    if (journal_fd >= 0 && (b->jfd = fcntl(journal_fd, F_DUPFD_CLOEXEC, 0)) < 0)
        goto fail;
    if (journal_fd >= 0 && history_fd >= 0 && history_max > 0 && (b->hfd = fcntl(history_fd, F_DUPFD_CLOEXEC, 0)) < 0)
        goto fail;
    pthread_mutex_init(&b->jmu, NULL);
    return 0;
fail:;
    int err = -errno;
    close(b->fd);
    if (b->jfd >= 0)
        close(b->jfd);
    return err;
}

static int dead(vc_backing *b)
{
    int err = atomic_load(&b->dead);
    return err ? vc_fail(-err, "simulated power loss: the disk is gone until remounted") : 0;
}

void vb_close(vc_backing *b)
{
    if (b->fd >= 0)
        close(b->fd);
    if (b->jfd >= 0)
        close(b->jfd);
    if (b->hfd >= 0)
        close(b->hfd);
    b->fd = b->jfd = b->hfd = -1;
    pthread_mutex_destroy(&b->jmu);
}

/* The calling thread's wait hook (vcore.h vc_set_wait_hook). */
static __thread void (*wait_fn)(void *);
static __thread void *wait_ctx;

void vc_set_wait_hook(void (*fn)(void *ctx), void *ctx)
{
    wait_fn = fn;
    wait_ctx = ctx;
}

static void about_to_wait(void)
{
    if (wait_fn != NULL)
        wait_fn(wait_ctx);
}

/* With a wait hook: read what the page cache holds without waiting (RWF_NOWAIT); 1 when the rest
 * must wait for the disk (the hook was told), 0 when [done, len) was read or hit the end of file. */
static int read_cached(vc_backing *b, uint64_t off, size_t len, unsigned char *buf, size_t *done)
{
#ifdef RWF_NOWAIT
    while (*done < len && !atomic_load_explicit(&b->no_nowait, memory_order_relaxed)) {
        struct iovec iov = {buf + *done, len - *done};
        ssize_t n = preadv2(b->fd, &iov, 1, (off_t)(off + *done), RWF_NOWAIT);
        if (n > 0) {
            *done += (size_t)n;
            continue; /* a short read: the next page is not cached (or the end of file) */
        }
        if (n == 0)
            return 0; /* end of file: the caller's pread sees it too */
        if (errno == EINTR)
            continue;
        if (errno == EOPNOTSUPP || errno == EINVAL)
            atomic_store(&b->no_nowait, 1); /* this file system cannot: always read as before */
        break; /* EAGAIN (not cached), or any error: the blocking pread says what it is */
    }
    if (*done >= len)
        return 0;
#else
    (void)b, (void)off, (void)buf;
#endif
    about_to_wait();
    return 1;
}

int vb_pread(vc_backing *b, uint64_t off, size_t len, unsigned char *buf)
{
    if (dead(b))
        return dead(b);
    size_t done = 0;
    if (wait_fn != NULL && read_cached(b, off, len, buf, &done) == 0 && done >= len)
        return 0;
    while (done < len) {
        ssize_t n = pread(b->fd, buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vc_fail(-errno, "backing read at byte %llu failed: %s",
                           (unsigned long long)(off + done), strerror(errno));
        }
        if (n == 0) {
            memset(buf + done, 0, len - done);
            break;
        }
        done += (size_t)n;
    }
    return 0;
}

static int write_all(int fd, const unsigned char *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vc_fail(-errno, "backing write at byte %llu failed: %s",
                           (unsigned long long)(off + done), strerror(errno));
        }
        done += (size_t)n;
    }
    return 0;
}

/* Append one record (u64 offset, u64 length, old bytes) to fd; the journal mutex is held. */
static int append(int fd, uint64_t off, const unsigned char *old, uint64_t len)
{
    uint64_t hdr[2] = {htole64(off), htole64(len)};
    struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)old, len}};
    size_t want = sizeof hdr + len, done = 0;
    while (done < want) {
        ssize_t n = writev(fd, iov, 2);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return vc_fail(-errno, "power-loss journal write failed: %s", strerror(errno));
        done += (size_t)n;
        size_t k = (size_t)n; /* advance past what was written (short writes are rare) */
        for (int i = 0; i < 2; i++) {
            size_t t = k < iov[i].iov_len ? k : iov[i].iov_len;
            iov[i].iov_base = (char *)iov[i].iov_base + t;
            iov[i].iov_len -= t;
            k -= t;
        }
    }
    return 0;
}

/* The pre-image of [off, off+len) to the journal (and the history), under the journal mutex. */
static int record(vc_backing *b, uint64_t off, uint64_t len)
{
    unsigned char *old = malloc(len ? len : 1);
    if (old == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for the power-loss recorder");
    int rc = vb_pread(b, off, len, old);
    if (rc == 0) {
        pthread_mutex_lock(&b->jmu);
        rc = append(b->jfd, off, old, len);
        if (rc == 0 && b->hfd >= 0) {
            if (b->hbytes + 16 + len > b->hmax) { /* forget the oldest history wholesale */
                if (ftruncate(b->hfd, 0) == 0)
                    b->hbytes = 0;
            }
            rc = append(b->hfd, off, old, len);
            b->hbytes += 16 + len;
        }
        pthread_mutex_unlock(&b->jmu);
    }
    free(old);
    return rc;
}

int vb_pwrite(vc_backing *b, uint64_t off, size_t len, const unsigned char *buf)
{
    if (dead(b))
        return dead(b);
    if (b->jfd >= 0 && len) {
        int rc = record(b, off, len);
        if (rc)
            return rc;
    }
    return write_all(b->fd, buf, len, off);
}

int vb_punch(vc_backing *b, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    if (dead(b))
        return dead(b);
    if (b->jfd >= 0) {
        int rc = record(b, off, len);
        if (rc)
            return rc;
    }
    if (fallocate(b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0)
        return vc_fail(-errno, "backing hole punch at byte %llu failed: %s",
                       (unsigned long long)off, strerror(errno));
    return 0;
}

int vb_sync(vc_backing *b)
{
    if (dead(b))
        return dead(b);
    if (atomic_load(&b->lost))
        return vc_fail(-EIO, "an earlier fdatasync of the backing file failed (%s): writes since "
                       "the last successful flush may never have reached the disk, and no later "
                       "fdatasync can tell; unmount and mount the volume again",
                       strerror(atomic_load(&b->lost)));
    about_to_wait();
    if (fdatasync(b->fd) != 0) {
        int err = errno;
        atomic_store(&b->lost, err);
        return vc_fail(-err, "backing fdatasync failed: %s", strerror(err));
    }
    if (b->jfd >= 0) { /* everything before the sync is durable: the journal starts over */
        pthread_mutex_lock(&b->jmu);
        int rc = ftruncate(b->jfd, 0);
        pthread_mutex_unlock(&b->jmu);
        if (rc != 0)
            return vc_fail(-errno, "power-loss journal truncate failed: %s", strerror(errno));
    }
    return 0;
}

int vb_pwrite_durable(vc_backing *b, uint64_t off, size_t len, const unsigned char *buf)
{
    if (dead(b))
        return dead(b);
    about_to_wait();
#ifdef RWF_DSYNC
    struct iovec iov = {(void *)buf, len};
    ssize_t n;
    do
        n = pwritev2(b->fd, &iov, 1, (off_t)off, RWF_DSYNC);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)len)
        return 0;
    if (n >= 0 || (errno != EOPNOTSUPP && errno != EINVAL))
        return vc_fail(n < 0 ? -errno : -EIO, "durable backing write at byte %llu failed: %s",
                       (unsigned long long)off, n < 0 ? strerror(errno) : "short write");
#endif
    int rc = write_all(b->fd, buf, len, off);
    if (rc == 0 && fdatasync(b->fd) != 0) {
        int err = errno;
        atomic_store(&b->lost, err); /* as in vb_sync: the error is reported once */
        rc = vc_fail(-err, "backing fdatasync failed: %s", strerror(err));
    }
    return rc;
}

int vb_truncate_up(vc_backing *b, uint64_t size)
{
    if (dead(b))
        return dead(b);
    struct stat st;
    if (fstat(b->fd, &st) != 0)
        return vc_fail(-errno, "backing fstat failed: %s", strerror(errno));
    if ((uint64_t)st.st_size < size && ftruncate(b->fd, (off_t)size) != 0)
        return vc_fail(-errno, "backing file could not grow: %s", strerror(errno));
    return 0;
}
