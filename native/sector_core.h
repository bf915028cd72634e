/* The sector cipher core: key objects and the per-sector XTS and GCM loops over OpenSSL EVP.
 *
 * A key object owns the key bytes (in keymem: locked, wiped on sc_key_wipe) and a pool of cipher
 * contexts, one per thread that is using the key at the same moment. A context is keyed once, when
 * it is created (the AES key schedule), and afterwards only its tweak or nonce is re-initialised per
 * sector (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv, -1)). Threads take a context with
 * sc_ctx_get and give it back with sc_ctx_put; the pool grows to the highest concurrency seen and
 * is freed (OpenSSL cleanses context memory when freeing it) by sc_key_wipe.
 *
 * No Python here: sector_cipher.c calls these with the GIL released, from the calling thread and
 * from workpool workers. */
#ifndef VOLUMED_SECTOR_CORE_H
#define VOLUMED_SECTOR_CORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "keymem.h"

#define SC_GCM_NONCE 12
#define SC_GCM_TAG 16

typedef enum { SC_XTS = 1, SC_GCM = 2 } sc_mode;

typedef struct sc_ctx {
    EVP_CIPHER_CTX *enc, *dec; /* created on first use, keyed once */
    unsigned char *scratch;    /* GCM open: one sector, decrypted here until its tag verifies */
    size_t scratch_len;
    struct sc_ctx *next_free;
} sc_ctx;

typedef struct sc_key {
    sc_mode mode;
    keymem key;
    pthread_mutex_t mu; /* guards the context lists */
    sc_ctx *free_list;
    sc_ctx **all;       /* every context made, for sc_key_wipe */
    size_t nall, capall;
} sc_key;

/* Fetch the ciphers once per process. Returns 0, or -1 if OpenSSL lacks AES-256-XTS/GCM. */
int sc_init(void);

/* Take ownership of a copy of key[0..len) in locked memory. Returns 0 or an errno value. The mode
 * fixes the key length (XTS 64, GCM 32); the caller has checked it. */
int sc_key_init(sc_key *k, sc_mode mode, const unsigned char *key, size_t len);

/* Free every context and wipe the key. No batch may be running. Safe to call twice. */
void sc_key_wipe(sc_key *k);

/* A context for this thread (NULL on allocation failure), and giving it back. Thread-safe. */
sc_ctx *sc_ctx_get(sc_key *k);
void sc_ctx_put(sc_key *k, sc_ctx *c);

/* XTS over sectors [begin, end) of a batch: sector i uses the tweak (first_unit + i*step) as a
 * 64-bit little-endian integer zero-padded to 16 bytes (LUKS2 plain64 counting 512-byte units).
 * in and out point at sector 0 of the batch and may be equal. Returns 0 or -1 (OpenSSL error). */
int sc_xts(sc_key *k, sc_ctx *c, int encrypt, const unsigned char *in, unsigned char *out,
           size_t sector_size, uint64_t first_unit, uint64_t step, size_t begin, size_t end);

/* GCM seal over sectors [begin, end): sector i uses nonces[12i..12i+12), additional data
 * aad_prefix || be64(first_sector + i) (aad has room for the prefix plus 8 bytes and is private to
 * the calling thread), and writes its tag to tags[16i..16i+16). Returns 0 or -1. */
int sc_gcm_seal(sc_key *k, sc_ctx *c, const unsigned char *in, unsigned char *out,
                size_t sector_size, uint64_t first_sector, const unsigned char *nonces,
                unsigned char *tags, unsigned char *aad, size_t prefix_len, size_t begin,
                size_t end);

/* GCM open over sectors [begin, end): failed[i] is set to 1 for a sector whose tag does not verify,
 * and that sector's output is zero-filled. Each sector is decrypted into the context's scratch
 * sector and copied to out only once its tag verified, so out never holds unauthenticated
 * plaintext, not even for a moment; the scratch is cleansed before returning. Returns 0 or -1 (an
 * OpenSSL error other than a tag mismatch, or no memory for the scratch sector). */
int sc_gcm_open(sc_key *k, sc_ctx *c, const unsigned char *in, unsigned char *out,
                size_t sector_size, uint64_t first_sector, const unsigned char *nonces,
                const unsigned char *tags, unsigned char *aad, size_t prefix_len,
                unsigned char *failed, size_t begin, size_t end);

/* HKDF-SHA256 (RFC 5869) of the key k holds: out[0..outlen) from salt and info. For subkeys that
 * must not pass through the caller's memory as the key itself does not (GcmCipher.derive).
 * Returns 0 or -1 (an OpenSSL error). */
int sc_hkdf_sha256(const sc_key *k, const unsigned char *salt, size_t saltlen,
                   const unsigned char *info, size_t infolen, unsigned char *out, size_t outlen);

/* One-shot primitives for known-answer tests (fresh context, caller's key; not for volume data).
 * kat_xts: AES-128-XTS (32-byte key) or AES-256-XTS (64-byte key), 16-byte tweak, len a multiple
 * of 16. kat_gcm: AES-256-GCM with a 12-byte nonce; open returns 1 verified, 0 tag mismatch.
 * All return -1 on an OpenSSL error. */
int sc_kat_xts(const unsigned char *key, size_t keylen, const unsigned char *tweak, int encrypt,
               const unsigned char *in, unsigned char *out, size_t len);
int sc_kat_gcm_seal(const unsigned char *key, const unsigned char *nonce, const unsigned char *aad,
                    size_t aadlen, const unsigned char *in, unsigned char *out, size_t len,
                    unsigned char *tag);
int sc_kat_gcm_open(const unsigned char *key, const unsigned char *nonce, const unsigned char *aad,
                    size_t aadlen, const unsigned char *in, unsigned char *out, size_t len,
                    const unsigned char *tag);

#endif
