/* The XTS store (LUKS2 aes-xts-plain64): sector n lives at base + n*ss, encrypted in place with
 * the tweak n*(ss/512). An all-zero on-disk sector is a hole and reads as zeros without decryption
 * (an XTS ciphertext of all zeros has probability 2^-32768); a whole-sector write of zeros punches
 * the hole. The same rules as volumed/volume/xtsstore.py (the reference). Large batches are split
 * across the workpool like the Python cipher's (VC_PAR_MIN_BYTES). */
#include <stdlib.h>
#include <string.h>

#include "vc_internal.h"
#include "workpool.h"

int vc_is_zero(const unsigned char *p, size_t len)
{
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

typedef struct {
    vc_store *s;
    int encrypt;
    const unsigned char *in;
    unsigned char *out;
    uint64_t first;
} xts_job;

static void *job_enter(void *arg)
{
    xts_job *j = arg;
    return sc_ctx_get(&j->s->key);
}

static void job_leave(void *arg, void *state)
{
    xts_job *j = arg;
    sc_ctx_put(&j->s->key, state);
}

/* Sectors [begin, end) of the job: every run of sectors whose input is not all zero goes through
 * the cipher; zero sectors are left alone (holes on read; punched on write by the caller). */
static int job_run(void *arg, void *state, size_t begin, size_t end)
{
    xts_job *j = arg;
    size_t ss = j->s->ss;
    uint64_t step = ss / 512;
    size_t i = begin;
    while (i < end) {
        if (vc_is_zero(j->in + i * ss, ss)) {
            i++;
            continue;
        }
        size_t a = i;
        while (i < end && !vc_is_zero(j->in + i * ss, ss))
            i++;
        /* sc_xts indexes from its in/out pointers: pass the run's own start */
        if (sc_xts(&j->s->key, state, j->encrypt, j->in + a * ss, j->out + a * ss, ss,
                   (j->first + a) * step, step, 0, i - a) != 0)
            return -1;
    }
    return 0;
}

static int run_job(xts_job *j, size_t n)
{
    size_t bytes = n * j->s->ss;
    int threads = bytes >= VC_PAR_MIN_BYTES ? native_pool_threads() : 1;
    if (threads <= 1) { /* the common small request: no pool bookkeeping */
        sc_ctx *ctx = sc_ctx_get(&j->s->key);
        if (ctx == NULL)
            return vc_fail(VC_E_NOMEM, "no memory for a cipher context");
        int rc = job_run(j, ctx, 0, n);
        sc_ctx_put(&j->s->key, ctx);
        return rc ? vc_fail(VC_E_NOMEM, "the XTS cipher failed (OpenSSL error)") : 0;
    }
    size_t chunk = threads > 1 ? VC_PAR_CHUNK_BYTES / j->s->ss : n;
    wp_batch b = {.n = n, .chunk = chunk ? chunk : 1, .arg = j, .enter = job_enter,
                  .run = job_run, .leave = job_leave};
    if (wp_run(&b, threads) != 0)
        return vc_fail(VC_E_NOMEM, "the XTS cipher failed (OpenSSL error or no memory)");
    return 0;
}

static int xts_read(vc_store *s, uint64_t first, size_t n, unsigned char *out)
{
    int rc = vb_pread(s->b, s->base + first * s->ss, n * s->ss, out);
    if (rc)
        return rc;
    xts_job j = {s, 0, out, out, first};
    return run_job(&j, n);
}

static int xts_write(vc_store *s, uint64_t first, size_t n, const unsigned char *in)
{
    size_t ss = s->ss;
    unsigned char small[4 * 4096]; /* ciphertext of a small write: no allocation */
    unsigned char *buf = n * ss <= sizeof small ? small : malloc(n * ss);
    if (buf == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for %zu sectors of ciphertext", n);
    xts_job j = {s, 1, in, buf, first};
    int rc = run_job(&j, n);
    size_t i = 0;
    while (rc == 0 && i < n) {
        size_t a = i;
        int zero = vc_is_zero(in + i * ss, ss);
        while (i < n && vc_is_zero(in + i * ss, ss) == zero)
            i++;
        uint64_t off = s->base + (first + a) * ss;
        rc = zero ? vb_punch(s->b, off, (i - a) * ss) : vb_pwrite(s->b, off, (i - a) * ss, buf + a * ss);
    }
    if (buf != small)
        free(buf);
    return rc;
}

static int common_discard(vc_store *s, uint64_t first, uint64_t n)
{
    return vb_punch(s->b, s->base + first * s->ss, n * s->ss);
}

static int common_flush(vc_store *s)
{
    return vb_sync(s->b);
}

static void xts_wipe(vc_store *s)
{
    if (s->keyed) {
        sc_key_wipe(&s->key);
        s->keyed = 0;
    }
}

static int xts_seal_zeros(vc_store *s, uint64_t first, size_t n, unsigned char *buf)
{
    sc_ctx *ctx = sc_ctx_get(&s->key);
    if (ctx == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for a cipher context");
    uint64_t step = s->ss / 512;
    int rc = sc_xts(&s->key, ctx, 1, buf, buf, s->ss, first * step, step, 0, n);
    sc_ctx_put(&s->key, ctx);
    return rc ? vc_fail(VC_E_NOMEM, "the XTS cipher failed") : 0;
}

/* Records in place: the sector as stored, an all-zero one a hole. */
static int plain_records(vc_store *s, uint64_t first, size_t n, unsigned char *out,
                         unsigned char *present)
{
    int rc = vb_pread(s->b, s->base + first * s->ss, n * s->ss, out);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        present[i] = !vc_is_zero(out + i * s->ss, s->ss);
    return 0;
}

const vc_store_ops vc_xts_ops = {"xts", xts_read, xts_write, common_discard, common_flush, xts_wipe,
                                 xts_seal_zeros, plain_records, common_flush, NULL};

/* ---- null cipher (benchmarks: the request path without the cipher) ---------------------- */

static int null_read(vc_store *s, uint64_t first, size_t n, unsigned char *out)
{
    return vb_pread(s->b, s->base + first * s->ss, n * s->ss, out);
}

static int null_write(vc_store *s, uint64_t first, size_t n, const unsigned char *in)
{
    return vb_pwrite(s->b, s->base + first * s->ss, n * s->ss, in);
}

static void null_wipe(vc_store *s)
{
    (void)s;
}

static int null_seal_zeros(vc_store *s, uint64_t first, size_t n, unsigned char *buf)
{
    (void)s, (void)first, (void)n, (void)buf;
    return 0;
}

const vc_store_ops vc_null_ops = {"null", null_read, null_write, common_discard, common_flush,
                                  null_wipe, null_seal_zeros, plain_records, common_flush, NULL};

int vc_store_records(vc_store *s, uint64_t first, size_t n, unsigned char *out,
                     unsigned char *present)
{
    return s->ops->records(s, first, n, out, present);
}
