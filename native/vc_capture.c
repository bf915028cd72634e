/* The copy-on-write capture session of a snapshot of a live volume (the native counterpart of
 * volumed.volume.records.CaptureSession; see vcore.h for the contract).
 *
 * `next` is the copier's watermark: sectors below it are copied. It only moves while the copier
 * holds the range lock of the sectors it passes, so a writer holding the lock of sector s sees
 * next <= s exactly when the copier has not taken s yet, whichever value it reads. Preserved records
 * live in a hash map (sector -> record, or HOLE for an all-zero one) under the session's mutex
 * until the copier takes them. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vc_internal.h"

#define HOLE ((unsigned char *)1)
/* What a preserved hole counts against max_kept_bytes: no record bytes, but an entry of the map
 * (its slot, at most half the table used). Counting it as 0 let writes over never-written sectors
 * grow the map with the volume's size, past the cap. Same as refcore.HOLE_COST. */
#define HOLE_COST 64

typedef struct {
    uint64_t sector; /* UINT64_MAX = empty slot */
    unsigned char *rec;
} slot;

struct vc_capture {
    uint64_t sectors;
    _Atomic uint64_t next;
    size_t ss;
    pthread_mutex_t mu;
    slot *tab;
    size_t cap, used;
    uint64_t kept_bytes, max_kept_bytes, captured, peak_kept;
    char error[256]; /* "" unless the session failed */
};

static size_t hash(uint64_t s, size_t cap)
{
    return (size_t)((s * 0x9E3779B97F4A7C15ull) >> 17) & (cap - 1);
}

vc_capture *cap_new(uint64_t sectors, uint64_t max_kept_bytes, size_t ss)
{
    vc_capture *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->cap = 1024;
    c->tab = malloc(c->cap * sizeof *c->tab);
    if (c->tab == NULL) {
        free(c);
        return NULL;
    }
    for (size_t i = 0; i < c->cap; i++)
        c->tab[i].sector = UINT64_MAX;
    c->sectors = sectors;
    c->ss = ss;
    c->max_kept_bytes = max_kept_bytes;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static void clear_locked(vc_capture *c)
{
    for (size_t i = 0; i < c->cap; i++) {
        if (c->tab[i].sector != UINT64_MAX && c->tab[i].rec != HOLE)
            free(c->tab[i].rec);
        c->tab[i].sector = UINT64_MAX;
    }
    c->used = 0;
    c->kept_bytes = 0;
}

void cap_free(vc_capture *c)
{
    if (c == NULL)
        return;
    clear_locked(c);
    free(c->tab);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static slot *find(vc_capture *c, uint64_t s)
{
    for (size_t i = hash(s, c->cap);; i = (i + 1) & (c->cap - 1)) {
        if (c->tab[i].sector == s || c->tab[i].sector == UINT64_MAX)
            return &c->tab[i];
    }
}

static int grow(vc_capture *c)
{
    slot *old = c->tab;
    size_t oldcap = c->cap;
    slot *tab = malloc(2 * oldcap * sizeof *tab);
    if (tab == NULL)
        return -1;
    c->tab = tab;
    c->cap = 2 * oldcap;
    for (size_t i = 0; i < c->cap; i++)
        tab[i].sector = UINT64_MAX;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].sector != UINT64_MAX)
            *find(c, old[i].sector) = old[i];
    free(old);
    return 0;
}

/* Remove the entry at slot e (backward-shift deletion keeps probe chains intact). */
static void remove_slot(vc_capture *c, slot *e)
{
    size_t i = (size_t)(e - c->tab);
    size_t mask = c->cap - 1;
    c->tab[i].sector = UINT64_MAX;
    c->used--;
    for (size_t j = (i + 1) & mask; c->tab[j].sector != UINT64_MAX; j = (j + 1) & mask) {
        size_t h = hash(c->tab[j].sector, c->cap);
        /* move j back to i if its home is not cyclically in (i, j] */
        if ((i < j) ? (h <= i || h > j) : (h <= i && h > j)) {
            c->tab[i] = c->tab[j];
            c->tab[j].sector = UINT64_MAX;
            i = j;
        }
    }
}

static void fail_locked(vc_capture *c, const char *fmt, ...)
{
    if (c->error[0] == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->error, sizeof c->error, fmt, ap);
        va_end(ap);
    }
    clear_locked(c);
}

void cap_before_write(vc_capture *c, vc_store *s, uint64_t first, uint64_t last)
{
    uint64_t next = atomic_load(&c->next);
    uint64_t lo = first > next ? first : next, hi = last < c->sectors ? last : c->sectors;
    if (lo >= hi)
        return;
    size_t n = (size_t)(hi - lo), ss = c->ss;
    pthread_mutex_lock(&c->mu);
    int failed = c->error[0] != 0;
    pthread_mutex_unlock(&c->mu);
    if (failed)
        return;
    unsigned char *buf = malloc(n * ss), *present = malloc(n);
    int rc = (buf && present) ? vc_store_records(s, lo, n, buf, present) : VC_E_NOMEM;
    pthread_mutex_lock(&c->mu);
    if (rc != 0) {
        fail_locked(c, "sectors %llu-%llu could not be preserved before a write: %s",
                    (unsigned long long)lo, (unsigned long long)(hi - 1),
                    rc == VC_E_NOMEM ? "no memory" : vc_last_error());
    } else if (c->error[0] == 0) {
        for (size_t i = 0; i < n; i++) {
            if (find(c, lo + i)->sector != UINT64_MAX)
                continue; /* preserved by an earlier write: that is the barrier's version */
            uint64_t size = present[i] ? ss : HOLE_COST;
            if (c->kept_bytes + size > c->max_kept_bytes) {
                fail_locked(c, "writes during the copy needed more than %llu bytes of preserved "
                            "records in memory (the snapshot's limit, "
                            "$VOLUMED_SNAPSHOT_MAX_PRESERVED): retry when writes are lighter, or "
                            "raise the limit", (unsigned long long)c->max_kept_bytes);
                break;
            }
            unsigned char *rec = HOLE;
            if (present[i]) {
                rec = malloc(ss);
                if (rec == NULL) {
                    fail_locked(c, "no memory to preserve sector %llu before a write",
                                (unsigned long long)(lo + i));
                    break;
                }
                memcpy(rec, buf + i * ss, ss);
            }
            if ((c->used + 1) * 2 > c->cap && grow(c) != 0) {
                if (rec != HOLE)
                    free(rec);
                fail_locked(c, "no memory to preserve sector %llu before a write",
                            (unsigned long long)(lo + i));
                break;
            }
            slot *e = find(c, lo + i);
            e->sector = lo + i;
            e->rec = rec;
            c->used++;
            c->kept_bytes += size;
            c->captured++;
            if (c->used > c->peak_kept)
                c->peak_kept = c->used;
        }
    }
    pthread_mutex_unlock(&c->mu);
    free(buf);
    free(present);
}

int cap_read(vc_capture *c, vc_store *s, uint64_t first, size_t n, unsigned char *out,
             unsigned char *present)
{
    if (first != atomic_load(&c->next) || first + n > c->sectors)
        return vc_fail(VC_E_RANGE, "capture reads must be consecutive: at %llu, asked %llu+%zu",
                       (unsigned long long)atomic_load(&c->next), (unsigned long long)first, n);
    pthread_mutex_lock(&c->mu);
    if (c->error[0]) {
        int rc = vc_fail(VC_E_STATE, "%s", c->error);
        pthread_mutex_unlock(&c->mu);
        return rc;
    }
    pthread_mutex_unlock(&c->mu);
    int rc = vc_store_records(s, first, n, out, present);
    if (rc)
        return rc;
    size_t ss = c->ss;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n && c->used; i++) {
        slot *e = find(c, first + i);
        if (e->sector == UINT64_MAX)
            continue;
        if (e->rec == HOLE) {
            present[i] = 0;
            memset(out + i * ss, 0, ss);
            c->kept_bytes -= HOLE_COST;
        } else {
            present[i] = 1;
            memcpy(out + i * ss, e->rec, ss);
            free(e->rec);
            c->kept_bytes -= ss;
        }
        remove_slot(c, e);
    }
    pthread_mutex_unlock(&c->mu);
    atomic_store(&c->next, first + n);
    return 0;
}

void cap_stats(vc_capture *c, vc_capture_stats *st)
{
    pthread_mutex_lock(&c->mu);
    st->captured = c->captured;
    st->peak_kept = c->peak_kept;
    st->kept_bytes = c->kept_bytes;
    st->failed = c->error[0] != 0;
    pthread_mutex_unlock(&c->mu);
}
