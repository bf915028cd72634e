/* The volume core: the vcore.h API over one store (see vc_internal.h for the layers).
 *
 * Every I/O call: range check, enter the key latch (VC_E_KEY once the key is wiped; counts the call
 * in flight), lock the sectors it touches, then the store. Partial sectors are read-modify-written
 * in one bounce buffer over the whole range under that lock, so the store writes once. The capture
 * session's hook runs under the same lock before anything changes. vc_wipe_key closes the latch,
 * waits until no call is in flight, then wipes the key (sc_key_wipe: locked memory, cleansed).
 * The same rules as volumed/volume/refcore.py (the reference the differential tests compare with). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "vc_internal.h"

static __thread char last_error[512];

int vc_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

const char *vc_last_error(void)
{
    return last_error;
}

uint64_t vc_size(const vcore *c)
{
    return atomic_load(&((vcore *)c)->size);
}

uint32_t vc_sector_size(const vcore *c)
{
    return (uint32_t)c->ss;
}

int vc_open(const vc_config *cfg, vcore **out)
{
    *out = NULL;
    size_t ss = cfg->sector_size;
    if (ss == 0 || ss % 512 || ss > (16u << 20) || cfg->size % ss)
        return vc_fail(VC_E_RANGE, "invalid geometry: sector size %zu, volume size %llu", ss,
                       (unsigned long long)cfg->size);
    if (cfg->cipher == VC_CIPHER_XTS) {
        if (cfg->key == NULL || cfg->key_len != 64)
            return vc_fail(VC_E_RANGE, "an XTS key must be 64 bytes, got %zu", cfg->key_len);
        if (CRYPTO_memcmp(cfg->key, cfg->key + 32, 32) == 0)
            return vc_fail(VC_E_RANGE, "an XTS key's two halves must differ");
    } else if (cfg->cipher == VC_CIPHER_GCM) {
        if (cfg->key == NULL || cfg->key_len != 32 || cfg->gcm == NULL)
            return vc_fail(VC_E_RANGE, "a GCM core needs a 32-byte key and its session");
    } else if (cfg->cipher != VC_CIPHER_NULL) {
        return vc_fail(VC_E_RANGE, "unknown cipher %d", (int)cfg->cipher);
    }
    vcore *c = calloc(1, sizeof *c);
    if (c == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for the volume core");
    c->name = strdup(cfg->name ? cfg->name : "");
    int rc = c->name ? rl_init(&c->locks) : VC_E_NOMEM;
    if (rc != 0) {
        free(c->name);
        free(c);
        return vc_fail(VC_E_NOMEM, "no memory for the volume core");
    }
    rc = vb_open(&c->backing, cfg->fd, cfg->journal_fd, cfg->history_fd, cfg->history_max_bytes);
    if (rc != 0) {
        rl_destroy(&c->locks);
        free(c->name);
        free(c);
        return vc_fail(rc, "cannot use the backing file: %s", strerror(-rc));
    }
    c->store.b = &c->backing;
    c->store.base = cfg->data_offset;
    c->store.ss = ss;
    c->store.rec_size = ss;
    c->store.unit = 1;
    c->store.name = c->name;
    c->store.ops = cfg->cipher == VC_CIPHER_XTS ? &vc_xts_ops
                   : cfg->cipher == VC_CIPHER_GCM ? &vc_gcm_ops
                                                  : &vc_null_ops;
    if (cfg->cipher == VC_CIPHER_GCM) {
        rc = vc_gcm_open(&c->store, cfg->key, cfg->key_len, cfg->gcm);
        if (rc != 0) {
            vb_close(&c->backing);
            rl_destroy(&c->locks);
            free(c->name);
            free(c);
            return rc;
        }
    } else if (cfg->cipher == VC_CIPHER_XTS) {
        int err = sc_key_init(&c->store.key, SC_XTS, cfg->key, cfg->key_len);
        if (err != 0) {
            vb_close(&c->backing);
            rl_destroy(&c->locks);
            free(c->name);
            free(c);
            return vc_fail(-err, "cannot lock memory for the key (%s); raise the locked-memory "
                           "limit (ulimit -l / RLIMIT_MEMLOCK)", strerror(err));
        }
        c->store.keyed = 1;
    }
    c->ss = ss;
    atomic_store(&c->size, cfg->size);
    atomic_store(&c->refs, 1);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    atomic_store(&c->inflight, 0);
    atomic_store(&c->keyed, 1);
    *out = c;
    return 0;
}

/* ---- the key latch ------------------------------------------------------------------------- */

static int key_gone(vcore *c)
{
    return vc_fail(VC_E_KEY, "the key of volume %s has been wiped (access revoked or volume "
                   "closed); reopen it once access is restored", c->name);
}

/* The latch without a mutex on the request path (seq_cst atomics, Dekker style): a request adds
 * itself to inflight, then checks keyed; the wiper clears keyed, then waits for inflight to reach 0.
 * Either the request sees keyed == 0 and backs out, or the wiper sees it in flight and waits for
 * its leave(), which wakes the wiper (under mu, so the wake-up cannot be lost) once keyed is 0. */
static void leave(vcore *c)
{
    if (atomic_fetch_sub(&c->inflight, 1) == 1 && !atomic_load(&c->keyed)) {
        pthread_mutex_lock(&c->mu);
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
}

static int enter(vcore *c)
{
    atomic_fetch_add(&c->inflight, 1);
    if (atomic_load(&c->keyed))
        return 0;
    leave(c);
    return key_gone(c);
}

void vc_wipe_key(vcore *c)
{
    pthread_mutex_lock(&c->mu);
    atomic_store(&c->keyed, 0); /* new calls answer VC_E_KEY from here on */
    while (atomic_load(&c->inflight) > 0)
        pthread_cond_wait(&c->cv, &c->mu);
    c->store.ops->wipe(&c->store); /* idempotent; a second wiper waits here for the first */
    pthread_mutex_unlock(&c->mu);
}

void vc_ref(vcore *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void vc_unref(vcore *c)
{
    if (c == NULL || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    vc_wipe_key(c);
    if (c->store.ops->release)
        c->store.ops->release(&c->store);
    cap_free(c->cap);
    vb_close(&c->backing);
    rl_destroy(&c->locks);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c->name);
    free(c);
}

/* ---- I/O ------------------------------------------------------------------------------------ */

static int out_of_range(vcore *c, const char *what, uint64_t off, uint64_t len)
{
    return vc_fail(VC_E_RANGE, "%s of %llu bytes at %llu is outside the volume (size %llu)", what,
                   (unsigned long long)len, (unsigned long long)off,
                   (unsigned long long)vc_size(c));
}

static int in_range(vcore *c, uint64_t off, uint64_t len)
{
    uint64_t size = vc_size(c);
    return off <= size && len <= size - off;
}

/* The preamble of vc_read, vc_write and vc_discard: 1 when there is nothing to do, 0 when the
 * call is entered (the caller leaves), or a code. */
static int begin_io(vcore *c, const char *what, uint64_t off, uint64_t len)
{
    if (!in_range(c, off, len))
        return out_of_range(c, what, off, len);
    return len == 0 ? 1 : enter(c);
}

/* Range locks on whole lock units (a GCM write rewrites its group's metadata page). Reads take
 * theirs shared: a store's read changes nothing the next read sees (the GCM store's metadata
 * cache has its own slot mutexes). */
static int lock_mode(vcore *c, uint64_t first, uint64_t last, int shared)
{
    uint64_t u = c->store.unit, lo = first / u * u, hi = (last + u - 1) / u * u;
    return shared ? rl_lock_shared(&c->locks, lo, hi) : rl_lock(&c->locks, lo, hi);
}

static void unlock_mode(vcore *c, uint64_t first, uint64_t last, int shared)
{
    uint64_t u = c->store.unit, lo = first / u * u, hi = (last + u - 1) / u * u;
    if (shared)
        rl_unlock_shared(&c->locks, lo, hi);
    else
        rl_unlock(&c->locks, lo, hi);
}

#define lock(c, first, last) lock_mode(c, first, last, 0)
#define unlock(c, first, last) unlock_mode(c, first, last, 0)

/* Before a write or discard changes sectors [first, last) (their lock held). */
static void before_change(vcore *c, uint64_t first, uint64_t last)
{
    vc_capture *cap = c->cap; /* only replaced under the barrier, which our range lock excludes */
    if (cap != NULL)
        cap_before_write(cap, &c->store, first, last);
}

int vc_read(vcore *c, uint64_t off, size_t len, unsigned char *out)
{
    int rc = begin_io(c, "read", off, len);
    if (rc)
        return rc > 0 ? 0 : rc;
    size_t ss = c->ss;
    uint64_t first = off / ss, last = (off + len + ss - 1) / ss;
    size_t n = (size_t)(last - first), head = (size_t)(off - first * ss);
    unsigned char *buf = out;
    if (head || len != n * ss) {
        buf = malloc(n * ss);
        if (buf == NULL) {
            leave(c);
            return vc_fail(VC_E_NOMEM, "no memory for a %zu-sector read", n);
        }
    }
    rc = lock_mode(c, first, last, 1);
    if (rc == 0) {
        rc = c->store.ops->read(&c->store, first, n, buf);
        unlock_mode(c, first, last, 1);
    }
    if (buf != out) {
        if (rc == 0)
            memcpy(out, buf + head, len);
        OPENSSL_cleanse(buf, n * ss);
        free(buf);
    }
    leave(c);
    return rc;
}

/* The write itself, entered and checked: [off, off+len) with its sectors locked here. */
static int write_locked(vcore *c, uint64_t off, const unsigned char *in, size_t len)
{
    size_t ss = c->ss;
    uint64_t first = off / ss, last = (off + len + ss - 1) / ss;
    size_t n = (size_t)(last - first), head = (size_t)(off - first * ss);
    int rc = lock(c, first, last);
    if (rc)
        return rc;
    before_change(c, first, last);
    if (head == 0 && len == n * ss) {
        rc = c->store.ops->write(&c->store, first, n, in);
    } else {
        /* Partial first and/or last sector: one bounce buffer over the whole range with the edge
         * sectors read first, so the store writes once. */
        unsigned char *b = malloc(n * ss);
        if (b == NULL) {
            rc = vc_fail(VC_E_NOMEM, "no memory for a %zu-sector write", n);
        } else {
            if (head)
                rc = c->store.ops->read(&c->store, first, 1, b);
            if (rc == 0 && (off + len) % ss && !(head && n == 1))
                rc = c->store.ops->read(&c->store, last - 1, 1, b + (n - 1) * ss);
            if (rc == 0) {
                memcpy(b + head, in, len);
                rc = c->store.ops->write(&c->store, first, n, b);
            }
            OPENSSL_cleanse(b, n * ss);
            free(b);
        }
    }
    unlock(c, first, last);
    return rc;
}

int vc_write(vcore *c, uint64_t off, const unsigned char *in, size_t len)
{
    int rc = begin_io(c, "write", off, len);
    if (rc)
        return rc > 0 ? 0 : rc;
    rc = write_locked(c, off, in, len);
    leave(c);
    return rc;
}

static int write_zeros(vcore *c, uint64_t off, size_t len)
{
    unsigned char *z = calloc(1, len);
    if (z == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for a discard");
    int rc = write_locked(c, off, z, len);
    free(z);
    return rc;
}

int vc_discard(vcore *c, uint64_t off, uint64_t len)
{
    int rc = begin_io(c, "discard", off, len);
    if (rc)
        return rc > 0 ? 0 : rc;
    size_t ss = c->ss;
    uint64_t first = (off + ss - 1) / ss, last = (off + len) / ss;
    if (last <= first) {
        rc = write_zeros(c, off, (size_t)len);
    } else {
        if (off < first * ss)
            rc = write_zeros(c, off, (size_t)(first * ss - off));
        if (rc == 0 && off + len > last * ss)
            rc = write_zeros(c, last * ss, (size_t)(off + len - last * ss));
        if (rc == 0)
            rc = lock(c, first, last);
        if (rc == 0) {
            before_change(c, first, last);
            rc = c->store.ops->discard(&c->store, first, last - first);
            unlock(c, first, last);
        }
    }
    leave(c);
    return rc;
}

/* The store's flush; under the barrier where the store needs one (GCM: no write in flight while
 * it declares its writes durable and forgets which slots are volatile). */
static int flush_with(vcore *c, int (*fn)(vc_store *), int barrier)
{
    int rc = enter(c);
    if (rc)
        return rc;
    if (barrier)
        rl_exclusive(&c->locks);
    rc = fn(&c->store);
    if (barrier)
        rl_exclusive_end(&c->locks);
    leave(c);
    return rc;
}

int vc_flush(vcore *c)
{
    return flush_with(c, c->store.ops->flush, c->store.flush_is_barrier);
}

int vc_close_clean(vcore *c)
{
    return flush_with(c, c->store.ops->close, 1);
}

void vc_kill(vcore *c)
{
    c->store.killed = 1;
    vc_wipe_key(c);
}

size_t vc_record_size(const vcore *c)
{
    return c->store.rec_size;
}

int vc_gcm_grow(vcore *c, uint64_t size, const char *mac_tmpl, const char *hdr_tmpl)
{
    if (c->store.ops != &vc_gcm_ops)
        return vc_fail(VC_E_STATE, "%s is not a GCM volume", c->name);
    if (size % c->ss || size < vc_size(c))
        return vc_fail(VC_E_RANGE, "cannot resize to %llu bytes (volume size %llu)",
                       (unsigned long long)size, (unsigned long long)vc_size(c));
    int rc = enter(c);
    if (rc)
        return rc;
    rl_exclusive(&c->locks);
    rc = vc_gcm_grow_store(&c->store, vc_size(c), size, mac_tmpl, hdr_tmpl);
    if (rc == 0)
        atomic_store(&c->size, size);
    rl_exclusive_end(&c->locks);
    leave(c);
    return rc;
}

int vc_gcm_state(vcore *c, uint64_t out[4])
{
    if (c->store.ops != &vc_gcm_ops)
        return vc_fail(VC_E_STATE, "%s is not a GCM volume", c->name);
    int rc = enter(c);
    if (rc)
        return rc;
    vc_gcm_state_get(&c->store, out);
    leave(c);
    return 0;
}

void vc_fail_backing(vcore *c, int err)
{
    rl_exclusive(&c->locks);
    atomic_store(&c->backing.dead, err > 0 ? err : EIO);
    rl_exclusive_end(&c->locks);
}

int vc_set_size(vcore *c, uint64_t size)
{
    if (size % c->ss || size < vc_size(c))
        return vc_fail(VC_E_RANGE, "cannot resize to %llu bytes (volume size %llu)",
                       (unsigned long long)size, (unsigned long long)vc_size(c));
    rl_exclusive(&c->locks);
    atomic_store(&c->size, size);
    rl_exclusive_end(&c->locks);
    return 0;
}

int vc_read_records(vcore *c, uint64_t first, size_t n, unsigned char *out, unsigned char *present)
{
    if (first > vc_size(c) / c->ss || n > vc_size(c) / c->ss - first)
        return out_of_range(c, "records read", first * c->ss, (uint64_t)n * c->ss);
    int rc = enter(c);
    if (rc)
        return rc;
    rc = vc_store_records(&c->store, first, n, out, present);
    leave(c);
    return rc;
}

int vc_read_sealed(vcore *c, uint64_t first, size_t n, unsigned char *out)
{
    if (first > vc_size(c) / c->ss || n > vc_size(c) / c->ss - first)
        return out_of_range(c, "sealed read", first * c->ss, (uint64_t)n * c->ss);
    if (c->store.rec_size != c->ss)
        return c->store.ops->seal_zeros(&c->store, first, 0, out); /* the format has no image */
    int rc = enter(c);
    if (rc)
        return rc;
    unsigned char *present = malloc(n ? n : 1);
    rc = present ? lock(c, first, first + n) : vc_fail(VC_E_NOMEM, "no memory");
    if (rc == 0) {
        rc = vc_store_records(&c->store, first, n, out, present);
        size_t i = 0, ss = c->ss;
        while (rc == 0 && i < n) {
            if (present[i]) {
                i++;
                continue;
            }
            size_t a = i;
            while (i < n && !present[i])
                i++;
            rc = c->store.ops->seal_zeros(&c->store, first + a, i - a, out + a * ss);
        }
        unlock(c, first, first + n);
    }
    free(present);
    leave(c);
    return rc;
}

/* ---- capture session ------------------------------------------------------------------------ */

int vc_capture_begin(vcore *c, uint64_t max_kept_bytes)
{
    if (max_kept_bytes == 0)
        return vc_fail(VC_E_RANGE, "max_kept_bytes must be positive");
    int rc = enter(c);
    if (rc)
        return rc;
    rl_exclusive(&c->locks);
    pthread_mutex_lock(&c->mu);
    int busy = c->cap != NULL;
    pthread_mutex_unlock(&c->mu);
    if (busy) {
        rc = vc_fail(VC_E_STATE, "a snapshot of %s is already being taken: wait for it to "
                     "finish, then try again", c->name);
    } else {
        rc = c->store.ops->flush(&c->store);
        if (rc == 0) {
            vc_capture *cap = cap_new(vc_size(c) / c->ss, max_kept_bytes, c->store.rec_size);
            if (cap == NULL) {
                rc = vc_fail(VC_E_NOMEM, "no memory for a capture session");
            } else {
                pthread_mutex_lock(&c->mu);
                c->cap = cap;
                pthread_mutex_unlock(&c->mu);
            }
        }
    }
    rl_exclusive_end(&c->locks);
    leave(c);
    return rc;
}

int vc_capture_read(vcore *c, uint64_t first, size_t n, unsigned char *out, unsigned char *present)
{
    int rc = lock(c, first, first + n);
    if (rc)
        return rc;
    rc = enter(c); /* a revoked volume's records are not copied on, even if all preserved */
    if (rc == 0) {
        pthread_mutex_lock(&c->mu);
        vc_capture *cap = c->cap;
        pthread_mutex_unlock(&c->mu);
        rc = cap ? cap_read(cap, &c->store, first, n, out, present)
                 : vc_fail(VC_E_STATE, "the capture session was closed");
        leave(c);
    }
    unlock(c, first, first + n);
    return rc;
}

int vc_capture_stats_get(vcore *c, vc_capture_stats *st)
{
    pthread_mutex_lock(&c->mu);
    vc_capture *cap = c->cap;
    if (cap)
        cap_stats(cap, st);
    pthread_mutex_unlock(&c->mu);
    return cap ? 0 : vc_fail(VC_E_STATE, "no capture session is open");
}

void vc_capture_end(vcore *c)
{
    rl_exclusive(&c->locks); /* no writer is inside its hook */
    pthread_mutex_lock(&c->mu);
    vc_capture *cap = c->cap;
    c->cap = NULL;
    pthread_mutex_unlock(&c->mu);
    rl_exclusive_end(&c->locks);
    cap_free(cap);
}
