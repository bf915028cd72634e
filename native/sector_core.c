/* Sector cipher core; see sector_core.h. */
#include "sector_core.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

static EVP_CIPHER *cipher_xts, *cipher_gcm, *cipher_xts128;

int sc_init(void)
{
    if (cipher_xts == NULL)
        cipher_xts = EVP_CIPHER_fetch(NULL, "AES-256-XTS", NULL);
    if (cipher_xts128 == NULL)
        cipher_xts128 = EVP_CIPHER_fetch(NULL, "AES-128-XTS", NULL);
    if (cipher_gcm == NULL)
        cipher_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    return cipher_xts && cipher_xts128 && cipher_gcm ? 0 : -1;
}

static void store_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void store_be64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[7 - i] = (unsigned char)(v >> (8 * i));
}

int sc_key_init(sc_key *k, sc_mode mode, const unsigned char *key, size_t len)
{
    memset(k, 0, sizeof *k);
    k->mode = mode;
    int err = keymem_store(&k->key, key, len);
    if (err != 0)
        return err;
    pthread_mutex_init(&k->mu, NULL);
    return 0;
}

void sc_key_wipe(sc_key *k)
{
    if (k->key.bytes == NULL && k->all == NULL)
        return;
    for (size_t i = 0; i < k->nall; i++) {
        EVP_CIPHER_CTX_free(k->all[i]->enc); /* cleanses the key schedule */
        EVP_CIPHER_CTX_free(k->all[i]->dec);
        free(k->all[i]->scratch); /* cleansed after every use */
        free(k->all[i]);
    }
    free(k->all);
    k->all = NULL;
    k->nall = k->capall = 0;
    k->free_list = NULL;
    keymem_wipe(&k->key);
    pthread_mutex_destroy(&k->mu);
}

sc_ctx *sc_ctx_get(sc_key *k)
{
    pthread_mutex_lock(&k->mu);
    sc_ctx *c = k->free_list;
    if (c != NULL) {
        k->free_list = c->next_free;
        pthread_mutex_unlock(&k->mu);
        return c;
    }
    if (k->nall == k->capall) {
        size_t cap = k->capall ? 2 * k->capall : 4;
        sc_ctx **all = realloc(k->all, cap * sizeof *all);
        if (all == NULL) {
            pthread_mutex_unlock(&k->mu);
            return NULL;
        }
        k->all = all;
        k->capall = cap;
    }
    c = calloc(1, sizeof *c);
    if (c != NULL)
        k->all[k->nall++] = c;
    pthread_mutex_unlock(&k->mu);
    return c;
}

void sc_ctx_put(sc_key *k, sc_ctx *c)
{
    pthread_mutex_lock(&k->mu);
    c->next_free = k->free_list;
    k->free_list = c;
    pthread_mutex_unlock(&k->mu);
}

/* The context of c for one direction, keyed on first use (the only key schedule it ever runs). */
static EVP_CIPHER_CTX *keyed(sc_key *k, sc_ctx *c, int encrypt)
{
    EVP_CIPHER_CTX **slot = encrypt ? &c->enc : &c->dec;
    if (*slot != NULL)
        return *slot;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return NULL;
    const EVP_CIPHER *cipher = k->mode == SC_XTS ? cipher_xts : cipher_gcm;
    if (!EVP_CipherInit_ex(ctx, cipher, NULL, k->key.bytes, NULL, encrypt)) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    *slot = ctx;
    return ctx;
}

int sc_xts(sc_key *k, sc_ctx *c, int encrypt, const unsigned char *in, unsigned char *out,
           size_t sector_size, uint64_t first_unit, uint64_t step, size_t begin, size_t end)
{
    EVP_CIPHER_CTX *ctx = sector_size <= INT_MAX ? keyed(k, c, encrypt) : NULL;
    if (ctx == NULL)
        goto fail;
    unsigned char iv[16] = {0};
    int outl;
    for (size_t i = begin; i < end; i++) {
        store_le64(iv, first_unit + (uint64_t)i * step);
        size_t off = i * sector_size;
        if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1) ||
            !EVP_CipherUpdate(ctx, out + off, &outl, in + off, (int)sector_size))
            goto fail;
    }
    return 0;
fail:
    ERR_clear_error();
    return -1;
}

/* EVP_CipherUpdate takes an int length: a sector, and the AAD (prefix + 8-byte sector number),
 * must fit one. The Python constructors bound both far lower; the core checks for any caller. */
static int gcm_lengths_ok(size_t sector_size, size_t prefix_len)
{
    return sector_size <= INT_MAX && prefix_len <= (size_t)INT_MAX - 8;
}

/* Start sector i: nonce and additional data. */
static int gcm_start(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, unsigned char *aad,
                     size_t prefix_len, uint64_t sector)
{
    int outl;
    store_be64(aad + prefix_len, sector);
    return EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, -1) &&
           EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)(prefix_len + 8));
}

int sc_gcm_seal(sc_key *k, sc_ctx *c, const unsigned char *in, unsigned char *out,
                size_t sector_size, uint64_t first_sector, const unsigned char *nonces,
                unsigned char *tags, unsigned char *aad, size_t prefix_len, size_t begin,
                size_t end)
{
    EVP_CIPHER_CTX *ctx = gcm_lengths_ok(sector_size, prefix_len) ? keyed(k, c, 1) : NULL;
    if (ctx == NULL)
        goto fail;
    int outl, finl;
    for (size_t i = begin; i < end; i++) {
        size_t off = i * sector_size;
        if (!gcm_start(ctx, nonces + SC_GCM_NONCE * i, aad, prefix_len, first_sector + i) ||
            !EVP_CipherUpdate(ctx, out + off, &outl, in + off, (int)sector_size) ||
            !EVP_CipherFinal_ex(ctx, out + off + outl, &finl) ||
            !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, SC_GCM_TAG, tags + SC_GCM_TAG * i))
            goto fail;
    }
    return 0;
fail:
    ERR_clear_error();
    return -1;
}

int sc_gcm_open(sc_key *k, sc_ctx *c, const unsigned char *in, unsigned char *out,
                size_t sector_size, uint64_t first_sector, const unsigned char *nonces,
                const unsigned char *tags, unsigned char *aad, size_t prefix_len,
                unsigned char *failed, size_t begin, size_t end)
{
    EVP_CIPHER_CTX *ctx = gcm_lengths_ok(sector_size, prefix_len) ? keyed(k, c, 0) : NULL;
    if (ctx == NULL)
        goto fail;
    if (c->scratch_len < sector_size) {
        unsigned char *s = malloc(sector_size);
        if (s == NULL)
            goto fail;
        free(c->scratch);
        c->scratch = s;
        c->scratch_len = sector_size;
    }
    int outl, finl;
    unsigned char tag[SC_GCM_TAG];
    for (size_t i = begin; i < end; i++) {
        size_t off = i * sector_size;
        memcpy(tag, tags + SC_GCM_TAG * i, SC_GCM_TAG);
        if (!gcm_start(ctx, nonces + SC_GCM_NONCE * i, aad, prefix_len, first_sector + i) ||
            !EVP_CipherUpdate(ctx, c->scratch, &outl, in + off, (int)sector_size) ||
            !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, SC_GCM_TAG, tag))
            goto fail;
        if (EVP_CipherFinal_ex(ctx, c->scratch + outl, &finl) > 0) {
            memcpy(out + off, c->scratch, sector_size);
        } else { /* tag mismatch: never hand out unauthenticated plaintext */
            memset(out + off, 0, sector_size);
            failed[i] = 1;
            ERR_clear_error();
        }
    }
    OPENSSL_cleanse(c->scratch, sector_size);
    return 0;
fail:
    if (c->scratch != NULL)
        OPENSSL_cleanse(c->scratch, c->scratch_len);
    ERR_clear_error();
    return -1;
}

int sc_kat_xts(const unsigned char *key, size_t keylen, const unsigned char *tweak, int encrypt,
               const unsigned char *in, unsigned char *out, size_t len)
{
    const EVP_CIPHER *cipher = keylen == 64 ? cipher_xts : keylen == 32 ? cipher_xts128 : NULL;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int outl, ok = cipher != NULL && ctx != NULL && len <= INT_MAX &&
                   EVP_CipherInit_ex(ctx, cipher, NULL, key, tweak, encrypt) &&
                   EVP_CipherUpdate(ctx, out, &outl, in, (int)len);
    EVP_CIPHER_CTX_free(ctx);
    ERR_clear_error();
    return ok ? 0 : -1;
}

/* A fresh AES-256-GCM context started with nonce and additional data. */
static EVP_CIPHER_CTX *kat_gcm_start(const unsigned char *key, const unsigned char *nonce,
                                     const unsigned char *aad, size_t aadlen, int encrypt)
{
    if (aadlen > INT_MAX)
        return NULL;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int outl;
    if (ctx != NULL && EVP_CipherInit_ex(ctx, cipher_gcm, NULL, key, nonce, encrypt) &&
        (aadlen == 0 || EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)aadlen)))
        return ctx;
    EVP_CIPHER_CTX_free(ctx);
    return NULL;
}

int sc_kat_gcm_seal(const unsigned char *key, const unsigned char *nonce, const unsigned char *aad,
                    size_t aadlen, const unsigned char *in, unsigned char *out, size_t len,
                    unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = kat_gcm_start(key, nonce, aad, aadlen, 1);
    int outl = 0, finl;
    int ok = ctx != NULL && len <= INT_MAX &&
             (len == 0 || EVP_CipherUpdate(ctx, out, &outl, in, (int)len)) &&
             EVP_CipherFinal_ex(ctx, out + outl, &finl) &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, SC_GCM_TAG, tag);
    EVP_CIPHER_CTX_free(ctx);
    ERR_clear_error();
    return ok ? 0 : -1;
}

int sc_kat_gcm_open(const unsigned char *key, const unsigned char *nonce, const unsigned char *aad,
                    size_t aadlen, const unsigned char *in, unsigned char *out, size_t len,
                    const unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = kat_gcm_start(key, nonce, aad, aadlen, 0);
    unsigned char t[SC_GCM_TAG];
    memcpy(t, tag, SC_GCM_TAG);
    int outl = 0, finl, rc = -1;
    if (ctx != NULL && len <= INT_MAX &&
        (len == 0 || EVP_CipherUpdate(ctx, out, &outl, in, (int)len)) &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, SC_GCM_TAG, t))
        rc = EVP_CipherFinal_ex(ctx, out + outl, &finl) > 0 ? 1 : 0;
    EVP_CIPHER_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}
