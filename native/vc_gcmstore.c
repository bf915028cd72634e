/* The GCM store (volumed-gcm format 2; docs/FORMAT.md "GCM volumes"): the native counterpart of
 * volumed/volume/gcmstore.py (its reference and test oracle; the same rules, the same bytes).
 *
 * Layout: groups of G = 50 sectors, each a metadata page (2 slot entries per sector: session salt,
 * u64 BE counter, tag; HMAC-SHA256 under the metadata key at 4064) then the 50 slot-0 and the 50
 * slot-1 data pages. A sector's current version is its slot with the higher counter.
 *
 * The session (see vcore.h, vc_gcm_session) was begun by the Python GcmStore: it read the note,
 * turned an unclean session's counters into doubtful ranges (and resolved them past 64, never
 * merging), reserved a fresh range durably and drew this session's random salt. Here:
 *   - every sector is sealed under the session subkey HKDF-SHA256(data key, salt = UUID,
 *     info = "volumed gcm sector key v2" || salt) (sc_hkdf_sha256: the data key never leaves
 *     locked memory), nonce = 4 zero bytes || counter, AAD "volumed-gcm-v2" || UUID || be64(n);
 *     a read derives the subkey of the salt stored in the slot (at most SUBKEY_CACHE kept);
 *   - counters come from the in-memory counter under ctr_mu, which only moves up; a reservation
 *     of reserve_chunk more is written to the header (fdatasync, header, fdatasync) before any
 *     counter of it is used; a metadata page loaded from disk with a counter at or above the next
 *     one makes the session skip ahead of it (a header older than the data);
 *   - (I1) a write goes to the sector's non-current slot, unless the sector was written since the
 *     last flush (the dirty map), then to that volatile slot again; a doubtful newest slot is
 *     verified first and, if it fails, the older one is kept as current;
 *   - a write changes its group's metadata page in the cache and leaves it there, dirty: the page
 *     is sealed and written by the next flush, or earlier when its cache slot is needed (the
 *     reference writes it with every write; the crash model allows either: until a flush, any
 *     write may be lost, and a page write is atomic), so a random 4 KiB write costs one data
 *     write, not a data write, a page MAC and a metadata write;
 *   - flush (under the core's barrier): the dirty metadata pages, fdatasync, then the nonce note
 *     (the last counter allocated) as one RWF_DSYNC page write, then punch the older slot of
 *     sectors zeroed since the last flush;
 *   - a slot that fails its tag is crash residue only if its counter is doubtful (then the other
 *     slot, or zeros); otherwise VC_E_INTEGRITY naming the sector.
 *
 * Why no (key, nonce) pair repeats (FORMAT.md "Nonces", unchanged by this store): the key of every
 * encryption here is this session's subkey, and its salt was drawn at random (os.urandom) for this
 * open, never read from the file; so whatever the file says (an old header put back, a copied file
 * mounted twice, a crash between the data and the note) no other session shares the key, except
 * with probability n^2/2^129 for n sessions. Within the session the nonce is the counter, taken
 * under ctr_mu from a value that only increases (skip-ahead raises it, a failed write has still
 * consumed its counters), and every seal takes a fresh one (alloc below): so no two encryptions of
 * the session share a nonce. The reservation and the notes order versions and tell crash residue
 * from tampering; uniqueness does not depend on them.
 *
 * Locks: the core's range lock covers whole groups (unit = G), so one thread at a time touches a
 * group's page and dirty bits; ctr_mu (counter, reservation), hdr_mu (header writes), dmu (the
 * dirty map), the metadata cache's slot mutexes and the subkey cache's mutex are leaves. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "vc_internal.h"
#include "workpool.h"

#define PAGE 4096u
#define G 50u
#define SALT 16u
#define SLOT_BYTES 40u
#define ENTRIES_BYTES (G * 2 * SLOT_BYTES) /* 4000 */
#define MAC_OFF (PAGE - 32u)
#define HDR_SIZE 16384u
#define NOTE_OFFSET (2u * HDR_SIZE)
#define DATA_OFFSET (NOTE_OFFSET + 2u * PAGE)
#define GROUP_BYTES ((uint64_t)PAGE * (1 + 2 * G))
#define META_CACHE 4096u
#define SUBKEY_CACHE 256u
#define REC_BYTES (SALT + 12u + 16u + PAGE)
#define JSON_OFF 128u

static const char AAD_TAG[] = "volumed-gcm-v2"; /* 14 bytes */
static const char SUBKEY_INFO[] = "volumed gcm sector key v2";
#define PREFIX_LEN (14u + 16u)

typedef struct subkey {
    unsigned char salt[SALT];
    sc_key key;
    int refs; /* the table's reference plus each user's; under kmu */
} subkey;

typedef struct {
    pthread_mutex_t mu;
    uint64_t group; /* UINT64_MAX: empty */
    unsigned char *page;
    int dirty;      /* changed in memory, not yet written (nor sealed) */
} cache_slot;

typedef struct {
    keymem meta_key, note_key, mac_key;
    sc_key root;             /* the data key: only for HKDF of subkeys */
    subkey *session;         /* this session's subkey (never evicted) */
    unsigned char uuid[16], salt[SALT], prefix[PREFIX_LEN];
    /* counters */
    pthread_mutex_t ctr_mu, hdr_mu, dmu, kmu;
    uint64_t next, reserved, flushed, seqid, note_seq;
    uint64_t chunk, limit;   /* RESERVE_CHUNK and NONCE_LIMIT of the Python reference */
    uint64_t *doubtful;      /* pairs (lo, hi] */
    size_t ndoubtful;
    char *mac_tmpl, *hdr_tmpl;
    /* dirty map: group -> (written since the flush, zeroed since the flush) bit masks */
    uint64_t *dkey, *dmask, *zmask;
    size_t dcap, dused;
    /* caches */
    cache_slot cache[META_CACHE];
    subkey *subkeys[SUBKEY_CACHE];
    size_t nsub, subpos;
} gcm_state;

#define ST(s) ((gcm_state *)(s)->priv)

static void gcm_free(gcm_state *st);

/* ---- small helpers --------------------------------------------------------------------------- */

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static void put_be16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static uint64_t meta_offset(uint64_t g)
{
    return DATA_OFFSET + g * GROUP_BYTES;
}

static uint64_t slot_offset(uint64_t g, unsigned k, unsigned i)
{
    return meta_offset(g) + (uint64_t)PAGE * (1 + k * G + i);
}

static uint64_t groups_for(uint64_t size)
{
    return (size / PAGE + G - 1) / G;
}

static unsigned char *entry(unsigned char *page, unsigned i, unsigned k)
{
    return page + (2 * i + k) * SLOT_BYTES;
}

static uint64_t ctr_of(unsigned char *page, unsigned i, unsigned k)
{
    return be64(entry(page, i, k) + SALT);
}

static int tag_zero(unsigned char *page, unsigned i, unsigned k)
{
    return vc_is_zero(entry(page, i, k) + SALT + 8, 16);
}

/* HMAC-SHA256 of msg under a 32-byte key in locked memory. */
static void hmac32(const keymem *key, const unsigned char *msg, size_t len, unsigned char out[32])
{
    unsigned int n = 32;
    if (HMAC(EVP_sha256(), key->bytes, (int)key->len, msg, len, out, &n) == NULL)
        memset(out, 0xff, 32); /* never a valid MAC by chance: a failure */
}

/* The page MAC: HMAC(metadata key, "VGM2" || be64(g) || bytes 0..4063). */
static void meta_mac(gcm_state *st, uint64_t g, const unsigned char *page, unsigned char out[32])
{
    unsigned char msg[12 + MAC_OFF] = {'V', 'G', 'M', '2'};
    put_be64(msg + 4, g);
    memcpy(msg + 12, page, MAC_OFF);
    hmac32(&st->meta_key, msg, sizeof msg, out);
}

static void seal_meta(gcm_state *st, uint64_t g, unsigned char *page)
{
    memset(page + ENTRIES_BYTES, 0, MAC_OFF - ENTRIES_BYTES);
    meta_mac(st, g, page, page + MAC_OFF);
}

static int is_doubtful(gcm_state *st, uint64_t c)
{
    for (size_t i = 0; i < st->ndoubtful; i++)
        if (c > st->doubtful[2 * i] && c <= st->doubtful[2 * i + 1])
            return 1;
    return 0;
}

static int integrity(vc_store *s, uint64_t sector)
{
    return vc_fail(VC_E_INTEGRITY, "sector %llu of %s fails authentication (data altered on disk)",
                   (unsigned long long)sector, s->name);
}

/* ---- session subkeys ------------------------------------------------------------------------ */

static void subkey_put(gcm_state *st, subkey *k)
{
    pthread_mutex_lock(&st->kmu);
    int last = --k->refs == 0;
    pthread_mutex_unlock(&st->kmu);
    if (last) {
        sc_key_wipe(&k->key);
        free(k);
    }
}

static subkey *derive(gcm_state *st, const unsigned char *salt)
{
    unsigned char info[sizeof SUBKEY_INFO - 1 + SALT], sub[32];
    memcpy(info, SUBKEY_INFO, sizeof SUBKEY_INFO - 1);
    memcpy(info + sizeof SUBKEY_INFO - 1, salt, SALT);
    subkey *k = calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    int ok = sc_hkdf_sha256(&st->root, st->uuid, 16, info, sizeof info, sub, 32) == 0 &&
             sc_key_init(&k->key, SC_GCM, sub, 32) == 0;
    OPENSSL_cleanse(sub, sizeof sub);
    if (!ok) {
        free(k);
        return NULL;
    }
    memcpy(k->salt, salt, SALT);
    k->refs = 1;
    return k;
}

/* The subkey of salt with a reference for the caller (subkey_put), or NULL (no memory). */
static subkey *subkey_get(gcm_state *st, const unsigned char *salt)
{
    pthread_mutex_lock(&st->kmu);
    subkey *k = NULL;
    if (memcmp(salt, st->salt, SALT) == 0) {
        k = st->session;
    } else {
        for (size_t i = 0; i < st->nsub && !k; i++)
            if (memcmp(st->subkeys[i]->salt, salt, SALT) == 0)
                k = st->subkeys[i];
    }
    if (k) {
        k->refs++;
        pthread_mutex_unlock(&st->kmu);
        return k;
    }
    pthread_mutex_unlock(&st->kmu);
    subkey *made = derive(st, salt);
    if (made == NULL)
        return NULL;
    subkey *evicted = NULL;
    pthread_mutex_lock(&st->kmu);
    for (size_t i = 0; i < st->nsub && !k; i++) /* another thread may have made it meanwhile */
        if (memcmp(st->subkeys[i]->salt, salt, SALT) == 0)
            k = st->subkeys[i];
    if (k == NULL) {
        k = made;
        made = NULL;
        if (st->nsub < SUBKEY_CACHE) {
            st->subkeys[st->nsub++] = k;
        } else { /* dropped, freed when its last user lets go */
            evicted = st->subkeys[st->subpos];
            st->subkeys[st->subpos] = k;
            st->subpos = (st->subpos + 1) % SUBKEY_CACHE;
        }
    }
    k->refs++;
    pthread_mutex_unlock(&st->kmu);
    if (made)
        subkey_put(st, made);
    if (evicted)
        subkey_put(st, evicted);
    return k;
}

/* One GCM batch: consecutive sectors under one subkey (workpool job, like vc_xtsstore.c's). */
typedef struct {
    gcm_state *st;
    subkey *k;
    int seal;
    const unsigned char *in;
    unsigned char *out;
    uint64_t first;
    const unsigned char *nonces;
    unsigned char *tags, *failed;
} gcm_job;

static void *gjob_enter(void *arg)
{
    return sc_ctx_get(&((gcm_job *)arg)->k->key);
}

static void gjob_leave(void *arg, void *state)
{
    sc_ctx_put(&((gcm_job *)arg)->k->key, state);
}

static int gjob_run(void *arg, void *state, size_t begin, size_t end)
{
    gcm_job *j = arg;
    unsigned char aad[PREFIX_LEN + 8]; /* private to this thread (sc_gcm_seal/open) */
    memcpy(aad, j->st->prefix, PREFIX_LEN);
    return j->seal ? sc_gcm_seal(&j->k->key, state, j->in, j->out, PAGE, j->first, j->nonces,
                                 j->tags, aad, PREFIX_LEN, begin, end)
                   : sc_gcm_open(&j->k->key, state, j->in, j->out, PAGE, j->first, j->nonces,
                                 j->tags, aad, PREFIX_LEN, j->failed, begin, end);
}

/* GCM open or seal of n consecutive sectors (first = the first's number) under one subkey; a
 * batch of VC_PAR_MIN_BYTES or more is split across the workpool (each sector is sealed or opened
 * alone, with its own nonce: the split changes no byte). */
static int gcm_run(gcm_state *st, subkey *k, int seal, const unsigned char *in, unsigned char *out,
                   uint64_t first, const unsigned char *nonces, unsigned char *tags,
                   unsigned char *failed, size_t n)
{
    gcm_job j = {st, k, seal, in, out, first, nonces, tags, failed};
    int threads = n * PAGE >= VC_PAR_MIN_BYTES ? native_pool_threads() : 1;
    int rc;
    if (threads <= 1) {
        sc_ctx *ctx = sc_ctx_get(&k->key);
        if (ctx == NULL)
            return vc_fail(VC_E_NOMEM, "no memory for a cipher context");
        rc = gjob_run(&j, ctx, 0, n);
        sc_ctx_put(&k->key, ctx);
    } else {
        wp_batch b = {.n = n, .chunk = VC_PAR_CHUNK_BYTES / PAGE, .arg = &j, .enter = gjob_enter,
                      .run = gjob_run, .leave = gjob_leave};
        rc = wp_run(&b, threads);
    }
    return rc ? vc_fail(VC_E_NOMEM, "the GCM cipher failed (OpenSSL error or no memory)") : 0;
}

static void nonce_of(unsigned char nonce[12], uint64_t ctr)
{
    memset(nonce, 0, 4);
    put_be64(nonce + 4, ctr);
}

/* ---- header, notes, counters ------------------------------------------------------------------ */

static int render(char *out, size_t cap, const char *tmpl, gcm_state *st, const char *mac_b64)
{
    size_t o = 0;
    for (const char *p = tmpl; *p; p++) {
        char tmp[64];
        const char *piece = NULL;
        size_t plen = 1;
        if (*p == '\x01' && p[1]) {
            p++;
            if (*p == 'F' || *p == 'R') {
                plen = (size_t)snprintf(tmp, sizeof tmp, "%llu",
                                        (unsigned long long)(*p == 'F' ? st->flushed : st->reserved));
                piece = tmp;
            } else if (*p == 'M') {
                plen = (size_t)snprintf(tmp, sizeof tmp, "\"%s\"", mac_b64 ? mac_b64 : "");
                piece = tmp;
            } else { /* D: [[lo,hi],...] */
                if (o + 1 >= cap)
                    return -1;
                out[o++] = '[';
                for (size_t i = 0; i < st->ndoubtful; i++) {
                    int n = snprintf(out + o, cap - o, "%s[%llu,%llu]", i ? "," : "",
                                     (unsigned long long)st->doubtful[2 * i],
                                     (unsigned long long)st->doubtful[2 * i + 1]);
                    if (n < 0 || (size_t)n >= cap - o)
                        return -1;
                    o += (size_t)n;
                }
                piece = "]";
            }
        } else {
            piece = p;
        }
        if (o + plen >= cap)
            return -1;
        memcpy(out + o, piece, plen);
        o += plen;
    }
    out[o] = 0;
    return (int)o;
}

/* The next header copy (seqid + 1), always after an fdatasync by the caller (so the other copy is
 * durable while this one is written); gcmstore.GcmStore._write_header. */
static int write_header(vc_store *s, int sync_after)
{
    gcm_state *st = ST(s);
    pthread_mutex_lock(&st->hdr_mu);
    char *json = malloc(HDR_SIZE), *macj = malloc(HDR_SIZE);
    unsigned char *copy = calloc(1, HDR_SIZE);
    int rc = 0, bumped = 0;
    if (!json || !macj || !copy) {
        rc = vc_fail(VC_E_NOMEM, "no memory for a header copy");
        goto out;
    }
    st->seqid++;
    bumped = 1;
    int mlen = render(macj, HDR_SIZE, st->mac_tmpl, st, NULL);
    unsigned char mac[32], b64[64];
    if (mlen >= 0)
        hmac32(&st->mac_key, (unsigned char *)macj, (size_t)mlen, mac);
    EVP_EncodeBlock(b64, mac, 32);
    int jlen = mlen < 0 ? -1 : render(json, HDR_SIZE - JSON_OFF, st->hdr_tmpl, st, (char *)b64);
    if (jlen < 0) {
        rc = vc_fail(VC_E_STATE, "GCM header JSON does not fit in its 16 KiB copy");
        goto out;
    }
    unsigned which = (unsigned)(st->seqid % 2);
    memcpy(copy, "VOLUMEDG", 8);
    put_be16(copy + 8, 2);
    put_be16(copy + 10, which);
    copy[12] = (unsigned char)(jlen >> 24), copy[13] = (unsigned char)(jlen >> 16);
    copy[14] = (unsigned char)(jlen >> 8), copy[15] = (unsigned char)jlen;
    put_be64(copy + 16, st->seqid);
    put_be64(copy + 24, HDR_SIZE);
    memcpy(copy + JSON_OFF, json, (size_t)jlen);
    SHA256(copy, HDR_SIZE, copy + 32);
    rc = vb_pwrite(s->b, (uint64_t)which * HDR_SIZE, HDR_SIZE, copy);
    if (rc == 0 && sync_after)
        rc = vb_sync(s->b);
out:
    if (rc && bumped)
        st->seqid--; /* the retry rewrites this copy: the other stays the durable valid one */
    pthread_mutex_unlock(&st->hdr_mu);
    free(json);
    free(macj);
    free(copy);
    return rc;
}

static int write_note(vc_store *s, uint64_t flushed)
{
    gcm_state *st = ST(s);
    st->note_seq++;
    unsigned char page[PAGE] = {'V', 'G', 'N', 'S'};
    unsigned which = (unsigned)(st->note_seq % 2);
    put_be16(page + 4, 2);
    put_be16(page + 6, which);
    put_be64(page + 8, st->note_seq);
    put_be64(page + 16, flushed);
    hmac32(&st->note_key, page, MAC_OFF, page + MAC_OFF);
    return vb_pwrite_durable(s->b, NOTE_OFFSET + (uint64_t)which * PAGE, PAGE, page);
}

/* Reserve counters up to at least need (ctr_mu held): fdatasync, header, fdatasync. */
static int reserve(vc_store *s, uint64_t need)
{
    gcm_state *st = ST(s);
    if (need > st->limit)
        return vc_fail(VC_E_STATE, "volume %s has used its nonce space under this key; it is "
                       "read-only now: copy its data to a new volume", s->name);
    uint64_t want = st->reserved + st->chunk;
    if (want < need)
        want = need;
    if (want > st->limit)
        want = st->limit;
    int rc = vb_sync(s->b);
    if (rc)
        return rc;
    uint64_t old = st->reserved;
    st->reserved = want;
    rc = write_header(s, 1);
    if (rc)
        st->reserved = old; /* not durable: no counter of it may be used */
    return rc;
}

/* n fresh counters from *first: each used for one encryption at most (see the top comment). */
static int alloc(vc_store *s, size_t n, uint64_t *first)
{
    gcm_state *st = ST(s);
    pthread_mutex_lock(&st->ctr_mu);
    /* next may lie past the limit (a session started at it, or skip-ahead to a counter near 2^64
     * from a page on disk): refuse rather than let next + n wrap round to 0, "empty" */
    uint64_t last = st->next > st->limit || n > st->limit - st->next + 1 ? UINT64_MAX
                                                                          : st->next + n - 1;
    int rc = last > st->reserved ? reserve(s, last) : 0;
    if (rc == 0) {
        *first = st->next;
        st->next = last + 1;
    }
    pthread_mutex_unlock(&st->ctr_mu);
    return rc;
}

/* ---- metadata pages ---------------------------------------------------------------------------- */

/* Write a dirty cached page out, sealed (its slot's mutex held). */
static int write_back(vc_store *s, cache_slot *c)
{
    if (!c->dirty)
        return 0;
    seal_meta(ST(s), c->group, c->page);
    int rc = vb_pwrite(s->b, meta_offset(c->group), PAGE, c->page);
    if (rc == 0)
        c->dirty = 0;
    return rc;
}

/* Every dirty metadata page out (flush, under the barrier). */
static int write_back_all(vc_store *s)
{
    int rc = 0;
    for (unsigned i = 0; i < META_CACHE && rc == 0; i++) {
        cache_slot *c = &ST(s)->cache[i];
        pthread_mutex_lock(&c->mu);
        rc = c->group != UINT64_MAX ? write_back(s, c) : 0;
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

/* Group g's metadata page from disk into page, verified; a counter in it at or above the next
 * one makes the session count on from above it (the header is older than the data). */
static int meta_load(vc_store *s, uint64_t g, unsigned char *page)
{
    gcm_state *st = ST(s);
    int rc = vb_pread(s->b, meta_offset(g), PAGE, page);
    if (rc)
        return rc;
    unsigned char want[32];
    meta_mac(st, g, page, want);
    if (CRYPTO_memcmp(want, page + MAC_OFF, 32) != 0)
        return vc_fail(VC_E_INTEGRITY, "metadata of sectors %llu-%llu of %s fails authentication: "
                       "the volume was altered on disk", (unsigned long long)(g * G),
                       (unsigned long long)(g * G + G - 1), s->name);
    uint64_t top = 0;
    for (unsigned i = 0; i < G; i++)
        for (unsigned k = 0; k < 2; k++)
            if (ctr_of(page, i, k) > top)
                top = ctr_of(page, i, k);
    pthread_mutex_lock(&st->ctr_mu);
    if (top >= st->next) { /* the header is older than the data: count on from above it */
        fprintf(stderr, "volumed: GCM volume %s: sectors %llu-%llu hold counter %llu above this "
                "session's %llu (the header is older than the data); counting on from above it\n",
                s->name, (unsigned long long)(g * G), (unsigned long long)(g * G + G - 1),
                (unsigned long long)top, (unsigned long long)st->next);
        st->next = top == UINT64_MAX ? top : top + 1; /* past the limit: alloc refuses */
    }
    pthread_mutex_unlock(&st->ctr_mu);
    return 0;
}

/* Lock group g's cache slot and make it hold g's verified page, loading it (and writing out a
 * dirty page of another group first). Returns the slot, locked, or NULL (unlocked) with *rc: a
 * code, or 0 when the page is sound but cannot be cached (that dirty page could not be written,
 * or no memory): then it is in full, loaded from disk. */
static cache_slot *meta_hold(vc_store *s, uint64_t g, unsigned char *full, int *rc)
{
    cache_slot *c = &ST(s)->cache[g % META_CACHE];
    pthread_mutex_lock(&c->mu);
    *rc = 0;
    if (c->group == g)
        return c;
    int room = write_back(s, c) == 0 && (c->page != NULL || (c->page = malloc(PAGE)) != NULL);
    if (room) {
        c->group = UINT64_MAX; /* the slot's page is overwritten: hold no group until it verifies */
        *rc = meta_load(s, g, c->page);
        if (*rc == 0) {
            c->group = g;
            c->dirty = 0;
            return c;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (!room)
        *rc = meta_load(s, g, full);
    return NULL;
}

/* Bytes [lo, hi) of group g's verified metadata page into page (at the same offsets): a request
 * copies the entries of its own sectors, not the whole page. The caller holds g's range lock. */
static int meta_range(vc_store *s, uint64_t g, size_t lo, size_t hi, unsigned char *page)
{
    int rc;
    cache_slot *c = meta_hold(s, g, page, &rc);
    if (c != NULL) {
        memcpy(page + lo, c->page + lo, hi - lo);
        pthread_mutex_unlock(&c->mu);
    }
    return rc;
}

/* The whole verified metadata page of group g into page (the caller holds the group's lock). */
static int meta(vc_store *s, uint64_t g, unsigned char *page)
{
    return meta_range(s, g, 0, PAGE, page);
}

/* Bytes [lo, hi) of page become those of group g's page (the caller holds g's lock and changed
 * only these): in the cache, dirty, sealed and written by the next flush or when its slot is
 * needed; where the page cannot be cached, sealed and written now. */
static int meta_patch(vc_store *s, uint64_t g, size_t lo, size_t hi, const unsigned char *page)
{
    unsigned char full[PAGE];
    int rc;
    cache_slot *c = meta_hold(s, g, full, &rc);
    if (c != NULL) {
        memcpy(c->page + lo, page + lo, hi - lo);
        c->dirty = 1;
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    if (rc)
        return rc;
    memcpy(full + lo, page + lo, hi - lo);
    seal_meta(ST(s), g, full);
    return vb_pwrite(s->b, meta_offset(g), PAGE, full);
}

/* ---- the dirty map ----------------------------------------------------------------------------- */

static size_t dfind(gcm_state *st, uint64_t g)
{
    size_t m = st->dcap - 1, i = (size_t)((g * 0x9E3779B97F4A7C15ull) >> 20) & m;
    while (st->dkey[i] != UINT64_MAX && st->dkey[i] != g)
        i = (i + 1) & m;
    return i;
}

static int dgrow(gcm_state *st)
{
    size_t oldcap = st->dcap, cap = oldcap ? 2 * oldcap : 64;
    uint64_t *ok = st->dkey, *om = st->dmask, *oz = st->zmask;
    st->dkey = malloc(cap * sizeof *st->dkey);
    st->dmask = calloc(cap, sizeof *st->dmask);
    st->zmask = calloc(cap, sizeof *st->zmask);
    if (!st->dkey || !st->dmask || !st->zmask) {
        free(st->dkey), free(st->dmask), free(st->zmask);
        st->dkey = ok, st->dmask = om, st->zmask = oz;
        return -1;
    }
    memset(st->dkey, 0xff, cap * sizeof *st->dkey);
    st->dcap = cap;
    for (size_t i = 0; i < oldcap; i++) {
        if (ok[i] == UINT64_MAX)
            continue;
        size_t j = dfind(st, ok[i]);
        st->dkey[j] = ok[i], st->dmask[j] = om[i], st->zmask[j] = oz[i];
    }
    free(ok), free(om), free(oz);
    return 0;
}

static uint64_t dirty_of(gcm_state *st, uint64_t g)
{
    pthread_mutex_lock(&st->dmu);
    uint64_t m = 0;
    if (st->dcap) {
        size_t i = dfind(st, g);
        m = st->dkey[i] == g ? st->dmask[i] : 0;
    }
    pthread_mutex_unlock(&st->dmu);
    return m;
}

static int mark(gcm_state *st, uint64_t g, uint64_t dirty, uint64_t zeroed)
{
    pthread_mutex_lock(&st->dmu);
    int rc = 0;
    if ((st->dused + 1) * 2 > st->dcap && dgrow(st) != 0) {
        rc = vc_fail(VC_E_NOMEM, "no memory for the GCM dirty map");
    } else {
        size_t i = dfind(st, g);
        if (st->dkey[i] != g) {
            st->dkey[i] = g;
            st->dused++;
        }
        st->dmask[i] |= dirty;
        st->zmask[i] |= zeroed;
    }
    pthread_mutex_unlock(&st->dmu);
    return rc;
}

/* ---- slots ------------------------------------------------------------------------------------- */

/* Slot k of sector index i of group g into out (one page): 1 verified (or a zero-marker: zeros),
 * 0 fails, or a negative code. */
static int decrypt_slot(vc_store *s, uint64_t g, unsigned i, unsigned k, unsigned char *page,
                        unsigned char *out)
{
    if (tag_zero(page, i, k)) {
        memset(out, 0, PAGE);
        return 1;
    }
    int rc = vb_pread(s->b, slot_offset(g, k, i), PAGE, out);
    if (rc)
        return rc;
    unsigned char *e = entry(page, i, k), nonce[12], tag[16], failed = 0;
    nonce_of(nonce, be64(e + SALT));
    memcpy(tag, e + SALT + 8, 16);
    subkey *key = subkey_get(ST(s), e);
    if (key == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for a session subkey");
    rc = gcm_run(ST(s), key, 0, out, out, g * G + i, nonce, tag, &failed, 1);
    subkey_put(ST(s), key);
    return rc ? rc : !failed;
}

/* Slot k (the newer) of sector index i failed: crash residue if doubtful, else tampering. */
static int fallback(vc_store *s, uint64_t g, unsigned i, unsigned k, unsigned char *page,
                    unsigned char *out)
{
    gcm_state *st = ST(s);
    uint64_t sector = g * G + i;
    if (!is_doubtful(st, ctr_of(page, i, k)))
        return integrity(s, sector);
    unsigned o = 1 - k;
    if (ctr_of(page, i, o) == 0) {
        memset(out, 0, PAGE);
        return 0;
    }
    int ok = decrypt_slot(s, g, i, o, page, out);
    if (ok < 0)
        return ok;
    if (ok)
        return 0;
    if (is_doubtful(st, ctr_of(page, i, o))) { /* neither version was ever durable */
        memset(out, 0, PAGE);
        return 0;
    }
    return integrity(s, sector);
}

static unsigned newest(unsigned char *page, unsigned i)
{
    return ctr_of(page, i, 1) > ctr_of(page, i, 0);
}

/* ---- the store interface ----------------------------------------------------------------------- */

/* For each group-chunk of [first, first+n): fn(s, sector, g, i0, cnt, rel). */
#define FOR_CHUNKS(first, n, body)                                                                \
    for (uint64_t _s = (first), _end = (first) + (n); _s < _end;) {                               \
        uint64_t g = _s / G;                                                                      \
        unsigned i0 = (unsigned)(_s % G);                                                         \
        unsigned cnt = (unsigned)((G - i0) < (_end - _s) ? (G - i0) : (_end - _s));               \
        size_t rel = (size_t)(_s - (first));                                                      \
        body;                                                                                     \
        _s += cnt;                                                                                \
    }

/* The bytes of a metadata page that hold the entries of sector indexes [i0, i0 + cnt). */
#define ENTRIES_LO(i0) ((size_t)2 * (i0) * SLOT_BYTES)
#define ENTRIES_HI(i0, cnt) ((size_t)2 * ((i0) + (cnt)) * SLOT_BYTES)

static int read_group(vc_store *s, uint64_t g, unsigned i0, unsigned cnt, unsigned char *dst)
{
    unsigned char page[PAGE]; /* only the entries of [i0, i0 + cnt) are filled in */
    int rc = meta_range(s, g, ENTRIES_LO(i0), ENTRIES_HI(i0, cnt), page);
    if (rc)
        return rc;
    unsigned char prim[G], real[G];
    for (unsigned j = 0; j < cnt; j++) {
        unsigned i = i0 + j;
        prim[j] = (unsigned char)newest(page, i);
        real[j] = ctr_of(page, i, prim[j]) != 0 && !tag_zero(page, i, prim[j]);
        if (!real[j])
            memset(dst + (size_t)j * PAGE, 0, PAGE);
    }
    for (unsigned j = 0; j < cnt && rc == 0;) { /* runs of real sectors in one slot: one pread */
        if (!real[j]) {
            j++;
            continue;
        }
        unsigned a = j;
        while (j < cnt && real[j] && prim[j] == prim[a])
            j++;
        rc = vb_pread(s->b, slot_offset(g, prim[a], i0 + a), (size_t)(j - a) * PAGE,
                      dst + (size_t)a * PAGE);
    }
    unsigned char nonces[G * 12], tags[G * 16], failed[G];
    for (unsigned j = 0; j < cnt && rc == 0;) { /* runs of one salt: one subkey */
        if (!real[j]) {
            j++;
            continue;
        }
        unsigned a = j;
        const unsigned char *salt = entry(page, i0 + a, prim[a]);
        while (j < cnt && real[j] && memcmp(entry(page, i0 + j, prim[j]), salt, SALT) == 0) {
            unsigned char *e = entry(page, i0 + j, prim[j]);
            nonce_of(nonces + 12 * (j - a), be64(e + SALT));
            memcpy(tags + 16 * (j - a), e + SALT + 8, 16);
            failed[j - a] = 0;
            j++;
        }
        subkey *key = subkey_get(ST(s), salt);
        if (key == NULL)
            return vc_fail(VC_E_NOMEM, "no memory for a session subkey");
        unsigned char *run = dst + (size_t)a * PAGE;
        rc = gcm_run(ST(s), key, 0, run, run, g * G + i0 + a, nonces, tags, failed, j - a);
        subkey_put(ST(s), key);
        for (unsigned t = 0; rc == 0 && t < j - a; t++)
            if (failed[t])
                rc = fallback(s, g, i0 + a + t, prim[a + t], page, run + (size_t)t * PAGE);
    }
    return rc;
}

static int gcm_read(vc_store *s, uint64_t first, size_t n, unsigned char *out)
{
    FOR_CHUNKS(first, n, {
        int rc = read_group(s, g, i0, cnt, out + rel * PAGE);
        if (rc)
            return rc;
    });
    return 0;
}

static void forget_targets(vc_store *s, uint64_t g, unsigned i0, unsigned cnt,
                           const unsigned char *target, uint64_t sectors);

/* write_sectors for sectors [g*G+i0, +cnt) (in NULL: zeros). */
static int write_group(vc_store *s, uint64_t g, unsigned i0, unsigned cnt, const unsigned char *in)
{
    gcm_state *st = ST(s);
    unsigned char page[PAGE], probe[PAGE]; /* page: only the entries of [i0, i0 + cnt) */
    size_t lo = ENTRIES_LO(i0), hi = ENTRIES_HI(i0, cnt);
    int rc = meta_range(s, g, lo, hi, page), probed = 0;
    if (rc)
        return rc;
    uint64_t dirty = dirty_of(st, g), written = 0, zeroed = 0;
    unsigned char target[G], zero[G];
    size_t nz = 0;
    for (unsigned j = 0; j < cnt; j++) {
        unsigned i = i0 + j, prim = newest(page, i);
        if (dirty >> i & 1) {
            target[j] = (unsigned char)prim;
        } else {
            unsigned cur = prim;
            uint64_t pc = ctr_of(page, i, prim);
            if (pc && is_doubtful(st, pc)) { /* crash residue must not become the kept version */
                int ok = decrypt_slot(s, g, i, prim, page, probe);
                probed = 1;
                if (ok < 0) {
                    OPENSSL_cleanse(probe, sizeof probe);
                    return ok;
                }
                if (!ok)
                    cur = 1 - prim;
            }
            target[j] = (unsigned char)(1 - cur);
        }
        zero[j] = in == NULL || vc_is_zero(in + (size_t)j * PAGE, PAGE);
        nz += !zero[j];
        written |= 1ull << i;
        if (zero[j])
            zeroed |= 1ull << i;
    }
    if (probed) /* plaintext of a doubtful slot */
        OPENSSL_cleanse(probe, sizeof probe);
    uint64_t c0;
    rc = alloc(s, cnt, &c0);
    if (rc)
        return rc;
    unsigned char nonces[G * 12], tags[G * 16] = {0};
    for (unsigned j = 0; j < cnt; j++)
        nonce_of(nonces + 12 * j, c0 + j);
    unsigned char small[4 * PAGE]; /* the ciphertext of a small write: no allocation */
    unsigned char *buf = !nz ? NULL : cnt <= 4 ? small : malloc((size_t)cnt * PAGE);
    if (nz && buf == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for %u sectors of ciphertext", cnt);
    for (unsigned j = 0; j < cnt && rc == 0;) {
        if (zero[j]) {
            j++;
            continue;
        }
        unsigned a = j;
        while (j < cnt && !zero[j])
            j++;
        rc = gcm_run(st, st->session, 1, in + (size_t)a * PAGE, buf + (size_t)a * PAGE,
                     g * G + i0 + a, nonces + 12 * a, tags + 16 * a, NULL, j - a);
    }
    for (unsigned j = 0; j < cnt && rc == 0; j++) {
        unsigned char *e = entry(page, i0 + j, target[j]);
        memcpy(e, st->salt, SALT);
        put_be64(e + SALT, c0 + j);
        memcpy(e + SALT + 8, tags + 16 * j, 16);
    }
    int landing = rc == 0; /* from here a failure may leave any target slot half-written */
    for (unsigned k = 0; k < 2 && rc == 0; k++) {
        for (int z = 0; z < 2 && rc == 0; z++) { /* data runs, then zero runs, of slot k */
            for (unsigned j = 0; j < cnt && rc == 0;) {
                if (target[j] != k || zero[j] != z) {
                    j++;
                    continue;
                }
                unsigned a = j;
                while (j < cnt && target[j] == k && zero[j] == z)
                    j++;
                uint64_t off = slot_offset(g, k, i0 + a);
                rc = z ? vb_punch(s->b, off, (uint64_t)(j - a) * PAGE)
                       : vb_pwrite(s->b, off, (size_t)(j - a) * PAGE, buf + (size_t)a * PAGE);
            }
        }
    }
    /* The new entries go to the cached page, dirty: it is sealed and written by the next flush
     * (or earlier, when its cache slot is needed); where it cannot be cached, it is written now.
     * On failure the page keeps its entries as they were before this write. */
    if (rc == 0)
        rc = meta_patch(s, g, lo, hi, page);
    if (rc == 0)
        rc = mark(st, g, written, zeroed);
    else if (landing)
        forget_targets(s, g, i0, cnt, target, written);
    if (buf != small) /* ciphertext only: nothing to wipe */
        free(buf);
    return rc;
}

/* A write of sectors [g*G+i0, +cnt) failed once its data writes had begun: any target slot may
 * hold part of the new data under its old entry (for a sector written since the last flush, that
 * is the entry of a write already returned). Empty those entries in the cached page (written at
 * the next flush) and drop the sectors' volatile bits, so a read takes the other slot (the version
 * of the last flush) and the next write goes to the emptied slot, never over that version. */
static void forget_targets(vc_store *s, uint64_t g, unsigned i0, unsigned cnt,
                           const unsigned char *target, uint64_t sectors)
{
    gcm_state *st = ST(s);
    unsigned char page[PAGE];
    size_t lo = ENTRIES_LO(i0), hi = ENTRIES_HI(i0, cnt);
    if (meta_range(s, g, lo, hi, page) != 0)
        return; /* the page cannot be had: its sectors fail to read anyway */
    for (unsigned j = 0; j < cnt; j++)
        memset(entry(page, i0 + j, target[j]), 0, SLOT_BYTES);
    meta_patch(s, g, lo, hi, page);
    pthread_mutex_lock(&st->dmu);
    if (st->dcap) {
        size_t d = dfind(st, g);
        if (st->dkey[d] == g)
            st->dmask[d] &= ~sectors;
    }
    pthread_mutex_unlock(&st->dmu);
}

static int gcm_write(vc_store *s, uint64_t first, size_t n, const unsigned char *in)
{
    FOR_CHUNKS(first, n, {
        int rc = write_group(s, g, i0, cnt, in ? in + rel * PAGE : NULL);
        if (rc)
            return rc;
    });
    return 0;
}

static int gcm_discard(vc_store *s, uint64_t first, uint64_t n)
{
    return gcm_write(s, first, (size_t)n, NULL);
}

/* After the flush's fdatasync: punch the older slot of sectors zeroed since (space comes back). */
static int punch_stale(vc_store *s)
{
    gcm_state *st = ST(s);
    unsigned char page[PAGE];
    int rc = 0;
    for (size_t d = 0; d < st->dcap && rc == 0; d++) {
        uint64_t g = st->dkey[d], z = st->zmask[d];
        if (g == UINT64_MAX || z == 0)
            continue;
        rc = meta(s, g, page);
        for (unsigned k = 0; k < 2 && rc == 0; k++) {
            for (unsigned i = 0; i < G && rc == 0;) {
                unsigned stale = ctr_of(page, i, 1) <= ctr_of(page, i, 0);
                if (!(z >> i & 1) || stale != k) {
                    i++;
                    continue;
                }
                unsigned a = i;
                while (i < G && (z >> i & 1) && (ctr_of(page, i, 1) <= ctr_of(page, i, 0)) == k)
                    i++;
                rc = vb_punch(s->b, slot_offset(g, k, a), (uint64_t)(i - a) * PAGE);
            }
        }
    }
    return rc;
}

/* The durability point; the core holds its barrier. */
static int gcm_flush(vc_store *s)
{
    gcm_state *st = ST(s);
    int rc = write_back_all(s);
    if (rc == 0)
        rc = vb_sync(s->b);
    if (rc)
        return rc;
    uint64_t last = st->next - 1;
    if (last > st->flushed) { /* flushed moves only once noted: a failed note is owed */
        rc = write_note(s, last);
        if (rc == 0)
            st->flushed = last;
    }
    if (rc != 0) { /* no note: forget which sectors are volatile, keep the zeroed for the next */
        if (st->dcap)
            memset(st->dmask, 0, st->dcap * sizeof *st->dmask);
        return rc;
    }
    rc = punch_stale(s);
    if (st->dcap) { /* forget which sectors are volatile and which were zeroed */
        memset(st->dkey, 0xff, st->dcap * sizeof *st->dkey);
        memset(st->dmask, 0, st->dcap * sizeof *st->dmask);
        memset(st->zmask, 0, st->dcap * sizeof *st->zmask);
        st->dused = 0;
    }
    return rc;
}

static int gcm_close(vc_store *s)
{
    gcm_state *st = ST(s);
    int rc = gcm_flush(s);
    if (rc == 0)
        rc = vb_sync(s->b);
    if (rc == 0) {
        st->flushed = st->reserved;
        rc = write_header(s, 1);
    }
    return rc;
}

/* Before the key is wiped: a clean session when nothing was written since the last flush. */
static void retire(vc_store *s)
{
    gcm_state *st = ST(s);
    if (s->killed || st->dused || st->flushed != st->next - 1)
        return;
    if (vb_sync(s->b) == 0) {
        st->flushed = st->reserved;
        write_header(s, 0);
    }
}

static void gcm_wipe(vc_store *s)
{
    gcm_state *st = ST(s);
    if (!s->keyed)
        return;
    retire(s);
    s->keyed = 0;
    for (size_t i = 0; i < st->nsub; i++)
        subkey_put(st, st->subkeys[i]);
    st->nsub = 0;
    subkey_put(st, st->session);
    st->session = NULL;
    sc_key_wipe(&st->root);
    keymem_wipe(&st->meta_key);
    keymem_wipe(&st->note_key);
    keymem_wipe(&st->mac_key);
    for (unsigned i = 0; i < META_CACHE; i++) { /* dirty pages too: unflushed, as in a crash */
        free(st->cache[i].page);
        st->cache[i].page = NULL;
        st->cache[i].group = UINT64_MAX;
        st->cache[i].dirty = 0;
    }
}

static int gcm_seal_zeros(vc_store *s, uint64_t first, size_t n, unsigned char *buf)
{
    (void)first, (void)n, (void)buf;
    return vc_fail(VC_E_STATE, "GCM volume %s has no LUKS2 image: export reads XTS volumes",
                   s->name);
}

#define NO_SLOT 2

/* The slot a read uses of sector index i (doubtful newest slot verified first): 0 or 1,
 * NO_SLOT when it stores no data, or a negative code. */
static int current_slot(vc_store *s, uint64_t g, unsigned i, unsigned char *page,
                        unsigned char *probe)
{
    unsigned k = newest(page, i);
    for (unsigned t = 0; t < 2; t++) {
        unsigned at = t ? 1 - k : k;
        uint64_t c = ctr_of(page, i, at);
        if (c == 0)
            return NO_SLOT;
        if (is_doubtful(ST(s), c)) {
            int ok = decrypt_slot(s, g, i, at, page, probe);
            if (ok < 0)
                return ok;
            if (!ok)
                continue; /* crash residue: the version is the other slot */
        }
        return tag_zero(page, i, at) ? NO_SLOT : (int)at;
    }
    return NO_SLOT;
}

/* Records: salt + nonce + tag + the slot's data page (gcmstore.current_slots, formats.gcm_records). */
static int gcm_records(vc_store *s, uint64_t first, size_t n, unsigned char *out,
                       unsigned char *present)
{
    unsigned char page[PAGE], probe[PAGE];
    int rc = 0;
    FOR_CHUNKS(first, n, {
        rc = meta(s, g, page);
        for (unsigned j = 0; j < cnt && rc == 0; j++) {
            unsigned char *rec = out + (rel + j) * REC_BYTES;
            int k = current_slot(s, g, i0 + j, page, probe);
            if (k < 0) {
                rc = k;
                break;
            }
            present[rel + j] = k != NO_SLOT;
            if (k == NO_SLOT) {
                memset(rec, 0, REC_BYTES);
                continue;
            }
            unsigned char *e = entry(page, i0 + j, (unsigned)k);
            memcpy(rec, e, SALT);
            nonce_of(rec + SALT, be64(e + SALT));
            memcpy(rec + SALT + 12, e + SALT + 8, 16);
            rc = vb_pread(s->b, slot_offset(g, (unsigned)k, i0 + j), PAGE, rec + SALT + 28);
        }
        if (rc)
            break;
    });
    OPENSSL_cleanse(probe, sizeof probe);
    return rc;
}

static void gcm_release(vc_store *s)
{
    if (s->priv)
        gcm_free(ST(s));
    s->priv = NULL;
}

const vc_store_ops vc_gcm_ops = {"gcm", gcm_read, gcm_write, gcm_discard, gcm_flush, gcm_wipe,
                                 gcm_seal_zeros, gcm_records, gcm_close, gcm_release};

/* ---- opening, growing -------------------------------------------------------------------------- */

static int set_templates(gcm_state *st, const char *mac_tmpl, const char *hdr_tmpl)
{
    char *m = strdup(mac_tmpl), *h = strdup(hdr_tmpl);
    if (!m || !h) {
        free(m), free(h);
        return vc_fail(VC_E_NOMEM, "no memory for the header templates");
    }
    free(st->mac_tmpl), free(st->hdr_tmpl);
    st->mac_tmpl = m, st->hdr_tmpl = h;
    return 0;
}

static void gcm_free(gcm_state *st)
{
    free(st->doubtful), free(st->mac_tmpl), free(st->hdr_tmpl);
    free(st->dkey), free(st->dmask), free(st->zmask);
    for (unsigned i = 0; i < META_CACHE; i++) {
        free(st->cache[i].page);
        pthread_mutex_destroy(&st->cache[i].mu);
    }
    pthread_mutex_destroy(&st->ctr_mu), pthread_mutex_destroy(&st->hdr_mu);
    pthread_mutex_destroy(&st->dmu), pthread_mutex_destroy(&st->kmu);
    free(st);
}

int vc_gcm_open(vc_store *s, const unsigned char *key, size_t key_len, const vc_gcm_session *gs)
{
    if (gs == NULL || key == NULL || key_len != 32 || !gs->meta_key || !gs->note_key ||
        !gs->mac_key || !gs->uuid || !gs->salt || !gs->mac_tmpl || !gs->hdr_tmpl ||
        s->ss != PAGE || gs->reserve_chunk == 0 || gs->nonce_limit >= UINT64_MAX - G ||
        gs->next == 0) /* counter 0 marks an empty slot: never a nonce */
        return vc_fail(VC_E_RANGE, "a GCM core needs a 32-byte key, its session and 4 KiB sectors");
    gcm_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for the GCM store");
    pthread_mutex_init(&st->ctr_mu, NULL), pthread_mutex_init(&st->hdr_mu, NULL);
    pthread_mutex_init(&st->dmu, NULL), pthread_mutex_init(&st->kmu, NULL);
    for (unsigned i = 0; i < META_CACHE; i++) {
        pthread_mutex_init(&st->cache[i].mu, NULL);
        st->cache[i].group = UINT64_MAX;
    }
    memcpy(st->uuid, gs->uuid, 16);
    memcpy(st->salt, gs->salt, SALT);
    memcpy(st->prefix, AAD_TAG, 14);
    memcpy(st->prefix + 14, gs->uuid, 16);
    st->next = gs->next, st->reserved = gs->reserved, st->flushed = gs->flushed;
    st->seqid = gs->seqid, st->note_seq = gs->note_seq;
    st->chunk = gs->reserve_chunk, st->limit = gs->nonce_limit;
    st->ndoubtful = gs->ndoubtful;
    st->doubtful = malloc((gs->ndoubtful ? gs->ndoubtful : 1) * 2 * sizeof(uint64_t));
    int rc = st->doubtful ? set_templates(st, gs->mac_tmpl, gs->hdr_tmpl)
                          : vc_fail(VC_E_NOMEM, "no memory for the GCM store");
    if (rc) {
        gcm_free(st);
        return rc;
    }
    if (gs->ndoubtful)
        memcpy(st->doubtful, gs->doubtful, gs->ndoubtful * 2 * sizeof(uint64_t));
    int err = keymem_store(&st->meta_key, gs->meta_key, 32), root = 0;
    if (!err)
        err = keymem_store(&st->note_key, gs->note_key, 32);
    if (!err)
        err = keymem_store(&st->mac_key, gs->mac_key, 32);
    if (!err)
        root = !(err = sc_key_init(&st->root, SC_GCM, key, 32));
    if (!err && (st->session = derive(st, st->salt)) == NULL)
        err = ENOMEM;
    if (err) {
        keymem_wipe(&st->meta_key), keymem_wipe(&st->note_key), keymem_wipe(&st->mac_key);
        if (root)
            sc_key_wipe(&st->root);
        gcm_free(st);
        return vc_fail(-err, "cannot lock memory for the keys (%s); raise the locked-memory "
                       "limit (ulimit -l / RLIMIT_MEMLOCK)", strerror(err));
    }
    s->priv = st;
    s->keyed = 1;
    s->rec_size = REC_BYTES;
    s->unit = G;
    s->flush_is_barrier = 1;
    return 0;
}

int vc_gcm_grow_store(vc_store *s, uint64_t old_size, uint64_t size, const char *mac_tmpl,
                      const char *hdr_tmpl)
{
    gcm_state *st = ST(s);
    if (!s->keyed)
        return vc_fail(VC_E_KEY, "the key of volume %s has been wiped", s->name);
    if (groups_for(size) > ((uint64_t)INT64_MAX - DATA_OFFSET) / GROUP_BYTES) /* offsets would wrap */
        return vc_fail(VC_E_RANGE, "cannot grow %s to %llu bytes: past the largest file", s->name,
                       (unsigned long long)size);
    unsigned char page[PAGE];
    int rc = 0;
    for (uint64_t g = groups_for(old_size); g < groups_for(size) && rc == 0; g++) {
        memset(page, 0, PAGE);
        seal_meta(st, g, page);
        rc = vb_pwrite(s->b, meta_offset(g), PAGE, page);
    }
    if (rc == 0)
        rc = vb_truncate_up(s->b, DATA_OFFSET + groups_for(size) * GROUP_BYTES);
    if (rc == 0)
        rc = vb_sync(s->b);
    char *om = NULL, *oh = NULL;
    if (rc == 0) {
        om = st->mac_tmpl, oh = st->hdr_tmpl;
        st->mac_tmpl = st->hdr_tmpl = NULL;
        rc = set_templates(st, mac_tmpl, hdr_tmpl);
    }
    if (rc == 0)
        rc = write_header(s, 1);
    if (rc && om) { /* the volume keeps its size: keep the header it had */
        free(st->mac_tmpl), free(st->hdr_tmpl);
        st->mac_tmpl = om, st->hdr_tmpl = oh;
    } else {
        free(om), free(oh);
    }
    return rc;
}

void vc_gcm_state_get(vc_store *s, uint64_t out[4])
{
    gcm_state *st = ST(s);
    pthread_mutex_lock(&st->ctr_mu);
    out[0] = st->seqid, out[1] = st->reserved, out[2] = st->flushed, out[3] = st->next;
    pthread_mutex_unlock(&st->ctr_mu);
}
