/* Range locks: overlapping requests serialize, disjoint ones run in parallel; see vc_internal.h.
 * A short array of held ranges under one mutex: requests in flight are few (the FUSE workers and
 * Python threads), so a scan beats any tree. */
#include <stdlib.h>

#include "vc_internal.h"

int rl_init(vc_rangelock *rl)
{
    pthread_mutex_init(&rl->mu, NULL);
    pthread_cond_init(&rl->cv, NULL);
    rl->cap = 16;
    rl->nheld = 0;
    rl->barrier = 0;
    rl->held = malloc(rl->cap * sizeof *rl->held);
    return rl->held ? 0 : VC_E_NOMEM;
}

void rl_destroy(vc_rangelock *rl)
{
    free(rl->held);
    rl->held = NULL;
    pthread_cond_destroy(&rl->cv);
    pthread_mutex_destroy(&rl->mu);
}

static int overlaps(const vc_rangelock *rl, uint64_t lo, uint64_t hi)
{
    for (size_t i = 0; i < rl->nheld; i++)
        if (rl->held[i].lo < hi && lo < rl->held[i].hi)
            return 1;
    return 0;
}

int rl_lock(vc_rangelock *rl, uint64_t lo, uint64_t hi)
{
    pthread_mutex_lock(&rl->mu);
    while (rl->barrier || overlaps(rl, lo, hi))
        pthread_cond_wait(&rl->cv, &rl->mu);
    if (rl->nheld == rl->cap) {
        vc_range *n = realloc(rl->held, 2 * rl->cap * sizeof *n);
        if (n == NULL) {
            pthread_mutex_unlock(&rl->mu);
            return vc_fail(VC_E_NOMEM, "no memory for a range lock");
        }
        rl->held = n;
        rl->cap *= 2;
    }
    rl->held[rl->nheld++] = (vc_range){lo, hi};
    pthread_mutex_unlock(&rl->mu);
    return 0;
}

void rl_unlock(vc_rangelock *rl, uint64_t lo, uint64_t hi)
{
    pthread_mutex_lock(&rl->mu);
    for (size_t i = 0; i < rl->nheld; i++) {
        if (rl->held[i].lo == lo && rl->held[i].hi == hi) {
            rl->held[i] = rl->held[--rl->nheld];
            break;
        }
    }
    pthread_cond_broadcast(&rl->cv);
    pthread_mutex_unlock(&rl->mu);
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
