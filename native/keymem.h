/* Locked, non-dumpable memory for key bytes.
 *
 * The native sector cipher keeps the only long-lived copy of a volume key here: one anonymous
 * mapping per key, mlock'ed (never swapped) and MADV_DONTDUMP (absent from core dumps), wiped with
 * OPENSSL_cleanse before it is unmapped. Used by sector_core.c; nothing else allocates key bytes. */
#ifndef VOLUMED_KEYMEM_H
#define VOLUMED_KEYMEM_H

#include <stddef.h>

typedef struct {
    unsigned char *bytes; /* NULL when empty */
    size_t len;           /* bytes in use */
    size_t maplen;        /* bytes mapped (page multiple) */
} keymem;

/* Map, lock and fill with a copy of src[0..len). Returns 0, or an errno value (nothing mapped). */
int keymem_store(keymem *km, const unsigned char *src, size_t len);

/* Wipe, unlock and unmap. Safe on an empty keymem and when called twice. */
void keymem_wipe(keymem *km);

#endif
