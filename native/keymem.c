/* Locked key memory; see keymem.h. */
#define _GNU_SOURCE
#include "keymem.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>

int keymem_store(keymem *km, const unsigned char *src, size_t len)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t maplen = (len + (size_t)page - 1) / (size_t)page * (size_t)page;
    if (maplen == 0)
        maplen = (size_t)page;
    void *p = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return errno;
    if (mlock(p, maplen) != 0) {
        int err = errno;
        munmap(p, maplen);
        return err;
    }
#ifdef MADV_DONTDUMP
    (void)madvise(p, maplen, MADV_DONTDUMP);
#endif
    memcpy(p, src, len);
    km->bytes = p;
    km->len = len;
    km->maplen = maplen;
    return 0;
}

void keymem_wipe(keymem *km)
{
    if (km->bytes == NULL)
        return;
    OPENSSL_cleanse(km->bytes, km->maplen);
    munlock(km->bytes, km->maplen);
    munmap(km->bytes, km->maplen);
    km->bytes = NULL;
    km->len = 0;
    km->maplen = 0;
}
