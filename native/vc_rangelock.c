/* Range locks: overlapping requests serialize, disjoint ones run in parallel; see vc_internal.h.
 * A short array of held ranges under one mutex: requests in flight are few (the FUSE workers and
 * Python threads), so a scan beats any tree.
 *
 * Shared holders (reads) exclude only exclusive ones (writes), so reads that share a lock unit
 * (a 50-sector GCM group: adjacent readahead requests of a sequential read) run in parallel. A
 * writer that has to wait announces its range, and new shared requests that overlap it queue
 * behind it, so a stream of overlapping reads cannot starve a write; writers never wait for an
 * announced range, only for granted ones, so two waiting writers cannot deadlock. */
#include <stdlib.h>

#include "vc_internal.h"

static int grow(vc_range **a, size_t *cap, size_t n)
{
    if (n < *cap)
        return 0;
    vc_range *g = realloc(*a, 2 * *cap * sizeof *g);
    if (g == NULL)
        return vc_fail(VC_E_NOMEM, "no memory for a range lock");
    *a = g;
    *cap *= 2;
    return 0;
}

int rl_init(vc_rangelock *rl)
{
    pthread_mutex_init(&rl->mu, NULL);
    pthread_cond_init(&rl->cv, NULL);
    rl->cap = rl->wcap = 16;
    rl->nheld = rl->nwait = 0;
    rl->barrier = 0;
    rl->held = malloc(rl->cap * sizeof *rl->held);
    rl->wait = malloc(rl->wcap * sizeof *rl->wait);
    if (rl->held && rl->wait)
        return 0;
    free(rl->held), free(rl->wait);
    rl->held = rl->wait = NULL;
    return VC_E_NOMEM;
}

void rl_destroy(vc_rangelock *rl)
{
    free(rl->held);
    free(rl->wait);
    rl->held = rl->wait = NULL;
    pthread_cond_destroy(&rl->cv);
    pthread_mutex_destroy(&rl->mu);
}

/* Does [lo, hi) taken shared (or not) conflict with a granted range, or (shared only) with a
 * writer waiting for its turn? */
static int conflicts(const vc_rangelock *rl, uint64_t lo, uint64_t hi, int shared)
{
    for (size_t i = 0; i < rl->nheld; i++)
        if (rl->held[i].lo < hi && lo < rl->held[i].hi && !(shared && rl->held[i].shared))
            return 1;
    if (shared)
        for (size_t i = 0; i < rl->nwait; i++)
            if (rl->wait[i].lo < hi && lo < rl->wait[i].hi)
                return 1;
    return 0;
}

static void drop(vc_range *a, size_t *n, uint64_t lo, uint64_t hi, int shared)
{
    for (size_t i = 0; i < *n; i++) {
        if (a[i].lo == lo && a[i].hi == hi && a[i].shared == shared) {
            a[i] = a[--*n];
            return;
        }
    }
}

static int lock_mode(vc_rangelock *rl, uint64_t lo, uint64_t hi, int shared)
{
    pthread_mutex_lock(&rl->mu);
    /* room first: a granted lock must never fail to be recorded */
    int rc = grow(&rl->held, &rl->cap, rl->nheld);
    if (rc == 0 && !shared && (rl->barrier || conflicts(rl, lo, hi, 0))) {
        rc = grow(&rl->wait, &rl->wcap, rl->nwait);
        if (rc == 0) {
            rl->wait[rl->nwait++] = (vc_range){lo, hi, 0};
            while (rl->barrier || conflicts(rl, lo, hi, 0))
                pthread_cond_wait(&rl->cv, &rl->mu);
            drop(rl->wait, &rl->nwait, lo, hi, 0);
            pthread_cond_broadcast(&rl->cv); /* readers queued behind this announcement */
            rc = grow(&rl->held, &rl->cap, rl->nheld);
        }
    } else {
        while (rc == 0 && (rl->barrier || conflicts(rl, lo, hi, shared)))
            pthread_cond_wait(&rl->cv, &rl->mu);
        if (rc == 0)
            rc = grow(&rl->held, &rl->cap, rl->nheld);
    }
    if (rc == 0)
        rl->held[rl->nheld++] = (vc_range){lo, hi, shared};
    pthread_mutex_unlock(&rl->mu);
    return rc;
}

int rl_lock(vc_rangelock *rl, uint64_t lo, uint64_t hi)
{
    return lock_mode(rl, lo, hi, 0);
}

int rl_lock_shared(vc_rangelock *rl, uint64_t lo, uint64_t hi)
{
    return lock_mode(rl, lo, hi, 1);
}

static void unlock_mode(vc_rangelock *rl, uint64_t lo, uint64_t hi, int shared)
{
    pthread_mutex_lock(&rl->mu);
    drop(rl->held, &rl->nheld, lo, hi, shared);
    pthread_cond_broadcast(&rl->cv);
    pthread_mutex_unlock(&rl->mu);
}

void rl_unlock(vc_rangelock *rl, uint64_t lo, uint64_t hi)
{
    unlock_mode(rl, lo, hi, 0);
}

void rl_unlock_shared(vc_rangelock *rl, uint64_t lo, uint64_t hi)
{
    unlock_mode(rl, lo, hi, 1);
}

void rl_exclusive(vc_rangelock *rl)
{
    pthread_mutex_lock(&rl->mu);
    while (rl->barrier)
        pthread_cond_wait(&rl->cv, &rl->mu);
    rl->barrier = 1;
    while (rl->nheld)
        pthread_cond_wait(&rl->cv, &rl->mu);
    pthread_mutex_unlock(&rl->mu);
}

void rl_exclusive_end(vc_rangelock *rl)
{
    pthread_mutex_lock(&rl->mu);
    rl->barrier = 0;
    pthread_cond_broadcast(&rl->cv);
    pthread_mutex_unlock(&rl->mu);
}
