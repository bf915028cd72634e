/* Worker pool; see workpool.h. */
#define _GNU_SOURCE
#include "workpool.h"

#include <signal.h>
#include <stdlib.h>

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_work = PTHREAD_COND_INITIALIZER;
static wp_batch *queue_head, *queue_tail;
static int nworkers;
static int atfork_installed;

/* Claim and run chunks until none are left. */
static void participate(wp_batch *b)
{
    if (atomic_load(&b->next) >= b->n) /* joined too late: nothing left to claim */
        return;
    void *state = b->enter(b->arg);
    if (state == NULL) {
        atomic_store(&b->failed, 1);
        return;
    }
    for (;;) {
        size_t begin = atomic_fetch_add(&b->next, b->chunk);
        if (begin >= b->n)
            break;
        size_t end = begin + b->chunk < b->n ? begin + b->chunk : b->n;
        if (b->run(b->arg, state, begin, end) != 0)
            atomic_store(&b->failed, 1);
    }
    b->leave(b->arg, state);
}

/* Remove b from the queue; pool_mu held. */
static void dequeue(wp_batch *b)
{
    wp_batch *prev = NULL;
    for (wp_batch *p = queue_head; p != NULL; prev = p, p = p->qnext) {
        if (p != b)
            continue;
        if (prev)
            prev->qnext = p->qnext;
        else
            queue_head = p->qnext;
        if (queue_tail == p)
            queue_tail = prev;
        p->qnext = NULL;
        return;
    }
}

static void *worker_main(void *unused)
{
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&pool_mu);
        while (queue_head == NULL)
            pthread_cond_wait(&pool_work, &pool_mu);
        wp_batch *b = queue_head;
        b->joined++;
        if (--b->wanted == 0)
            dequeue(b);
        pthread_mutex_unlock(&pool_mu);

        participate(b);

        pthread_mutex_lock(&pool_mu);
        b->finished++;
        pthread_cond_signal(&b->done);
        pthread_mutex_unlock(&pool_mu);
    }
    return NULL;
}

/* In a forked child only the forking thread exists: forget the workers and any queued batches. */
static void atfork_child(void)
{
    pthread_mutex_init(&pool_mu, NULL);
    pthread_cond_init(&pool_work, NULL);
    queue_head = queue_tail = NULL;
    nworkers = 0;
}

/* Start workers until there are `want`; pool_mu held. Returns how many exist. */
static int ensure_workers(int want)
{
    if (!atfork_installed) {
        pthread_atfork(NULL, NULL, atfork_child);
        atfork_installed = 1;
    }
    while (nworkers < want) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t t;
        int rc = pthread_create(&t, &attr, worker_main, NULL);
        pthread_attr_destroy(&attr);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0)
            break;
        nworkers++;
    }
    return nworkers;
}

int wp_run(wp_batch *b, int threads)
{
    atomic_store(&b->next, 0);
    atomic_store(&b->failed, 0);
    b->wanted = b->joined = b->finished = 0;
    b->qnext = NULL;

    int helpers = threads - 1;
    size_t chunks = (b->n + b->chunk - 1) / b->chunk;
    if ((size_t)helpers > chunks - 1)
        helpers = chunks > 0 ? (int)(chunks - 1) : 0;

    if (helpers > 0) {
        pthread_mutex_lock(&pool_mu);
        int have = ensure_workers(helpers);
        if (helpers > have)
            helpers = have;
        if (helpers > 0) {
            pthread_cond_init(&b->done, NULL);
            b->wanted = helpers;
            if (queue_tail)
                queue_tail->qnext = b;
            else
                queue_head = b;
            queue_tail = b;
            if (helpers == 1)
                pthread_cond_signal(&pool_work);
            else
                pthread_cond_broadcast(&pool_work);
        }
        pthread_mutex_unlock(&pool_mu);
    }

    participate(b);

    if (helpers > 0) {
        pthread_mutex_lock(&pool_mu);
        if (b->wanted > 0) { /* helpers that never came: withdraw the offer */
            dequeue(b);
            b->wanted = 0;
        }
        while (b->finished < b->joined)
            pthread_cond_wait(&b->done, &pool_mu);
        pthread_mutex_unlock(&pool_mu);
        pthread_cond_destroy(&b->done);
    }
    return atomic_load(&b->failed) ? -1 : 0;
}

int wp_workers(void)
{
    pthread_mutex_lock(&pool_mu);
    int n = nworkers;
    pthread_mutex_unlock(&pool_mu);
    return n;
}
