/* Worker pool; see workpool.h. */
#define _GNU_SOURCE
#include "workpool.h"

#include <signal.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>

#define SPIN_NS 50000    /* how long an idle worker or a waiting caller polls before sleeping */
#define SOLO_BATCHES 256 /* batches run without helpers after helpers kept not helping */
#define STRIKES 2        /* unhelpful parallel batches in a row that trigger solo mode */

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_work = PTHREAD_COND_INITIALIZER;
static wp_batch *queue_head, *queue_tail;
static int nworkers;
static int atfork_installed;
static atomic_int queued; /* mirrors queue_head != NULL, for lock-free polling */
static atomic_int solo_left, strikes;
static atomic_int adaptive = 1;
static atomic_ullong st_invited, st_solo, st_helped, st_chunks;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Poll until cond() holds or SPIN_NS pass; returns whether it holds. */
static int spin_until(int (*cond)(void *), void *arg)
{
    uint64_t end = 0;
    for (unsigned i = 0;; i++) {
        if (cond(arg))
            return 1;
        if ((i & 63) == 0) {
            uint64_t t = now_ns();
            if (end == 0)
                end = t + SPIN_NS;
            else if (t >= end)
                return 0;
        }
        cpu_relax();
    }
}

static int work_queued(void *unused)
{
    (void)unused;
    return atomic_load_explicit(&queued, memory_order_relaxed) != 0;
}

static int helpers_done(void *arg)
{
    wp_batch *b = arg;
    return atomic_load(&b->finished) == atomic_load(&b->joined);
}

/* Claim one chunk (the caller from the front, helpers from the back); returns its index, or
 * (size_t)-1 when every chunk is taken. */
static size_t claim(wp_batch *b, int helper, size_t nchunks)
{
    uint64_t cur = atomic_load(&b->claimed);
    for (;;) {
        uint64_t front = cur & 0xffffffffu, back = cur >> 32;
        if (front + back >= nchunks)
            return (size_t)-1;
        uint64_t want = helper ? cur + ((uint64_t)1 << 32) : cur + 1;
        if (atomic_compare_exchange_weak(&b->claimed, &cur, want))
            return helper ? nchunks - 1 - (size_t)back : (size_t)front;
    }
}

/* Claim and run chunks until none are left. */
static void participate(wp_batch *b, int helper)
{
    size_t nchunks = (b->n + b->chunk - 1) / b->chunk;
    uint64_t cur = atomic_load(&b->claimed);
    if ((cur & 0xffffffffu) + (cur >> 32) >= nchunks) /* joined too late: nothing left */
        return;
    void *state = b->enter(b->arg);
    if (state == NULL) {
        atomic_store(&b->failed, 1);
        return;
    }
    for (;;) {
        size_t idx = claim(b, helper, nchunks);
        if (idx == (size_t)-1)
            break;
        size_t begin = idx * b->chunk;
        size_t end = begin + b->chunk < b->n ? begin + b->chunk : b->n;
        if (b->run(b->arg, state, begin, end) != 0)
            atomic_store(&b->failed, 1);
        if (helper)
            atomic_fetch_add(&b->helped, 1);
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
        atomic_store(&queued, queue_head != NULL);
        return;
    }
}

static void *worker_main(void *unused)
{
    (void)unused;
    for (;;) {
        spin_until(work_queued, NULL);
        pthread_mutex_lock(&pool_mu);
        while (queue_head == NULL)
            pthread_cond_wait(&pool_work, &pool_mu);
        wp_batch *b = queue_head;
        atomic_fetch_add(&b->joined, 1);
        if (--b->wanted == 0)
            dequeue(b);
        pthread_mutex_unlock(&pool_mu);

        participate(b, 1);

        /* Count and signal under the lock: the caller, once it sees the count, takes the lock
         * before it lets b (on its stack) go, so the worker is done with b by then. */
        pthread_mutex_lock(&pool_mu);
        atomic_fetch_add(&b->finished, 1);
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
    atomic_store(&queued, 0);
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

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* After a parallel batch of `chunks` chunks that took wall_ns, of which the caller ran own_chunks
 * in own_cpu_ns of its CPU time: the caller alone would have needed about
 * chunks * own_cpu_ns / own_chunks. A speed-up below 1.25x (helpers got no core of their own, or
 * only one shared with the caller) counts as a strike; enough in a row switch to solo mode. */
static void judge_helpers(size_t chunks, size_t own_chunks, uint64_t own_cpu_ns, uint64_t wall_ns)
{
    atomic_fetch_add(&st_invited, 1);
    atomic_fetch_add(&st_helped, chunks - own_chunks);
    atomic_fetch_add(&st_chunks, chunks);
    int helpful = own_chunks == 0 ||
                  (double)chunks * (double)own_cpu_ns / (double)own_chunks >= 1.25 * (double)wall_ns;
    if (!helpful) {
        if (atomic_fetch_add(&strikes, 1) + 1 >= STRIKES) {
            atomic_store(&strikes, 0);
            atomic_store(&solo_left, SOLO_BATCHES);
        }
    } else {
        atomic_store(&strikes, 0);
    }
}

int wp_run(wp_batch *b, int threads)
{
    atomic_store(&b->claimed, 0);
    atomic_store(&b->failed, 0);
    b->wanted = 0;
    atomic_store(&b->joined, 0);
    atomic_store(&b->finished, 0);
    atomic_store(&b->helped, 0);
    b->qnext = NULL;

    int helpers = threads - 1;
    size_t chunks = (b->n + b->chunk - 1) / b->chunk;
    if ((size_t)helpers > chunks - 1)
        helpers = chunks > 0 ? (int)(chunks - 1) : 0;

    if (helpers > 0 && atomic_load(&adaptive) && atomic_load(&solo_left) > 0) {
        atomic_fetch_sub(&solo_left, 1);
        atomic_fetch_add(&st_solo, 1);
        helpers = 0;
    }

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
            atomic_store(&queued, 1);
            if (helpers == 1)
                pthread_cond_signal(&pool_work);
            else
                pthread_cond_broadcast(&pool_work);
        }
        pthread_mutex_unlock(&pool_mu);
    }

    uint64_t w0 = helpers > 0 ? now_ns() : 0, c0 = helpers > 0 ? thread_cpu_ns() : 0;
    participate(b, 0);

    if (helpers > 0) {
        uint64_t own_cpu = thread_cpu_ns() - c0;
        pthread_mutex_lock(&pool_mu);
        if (b->wanted > 0) { /* helpers that never came: withdraw the offer */
            dequeue(b);
            b->wanted = 0;
        }
        pthread_mutex_unlock(&pool_mu); /* from here on `joined` is final */
        spin_until(helpers_done, b);
        pthread_mutex_lock(&pool_mu); /* always: see worker_main */
        while (atomic_load(&b->finished) < atomic_load(&b->joined))
            pthread_cond_wait(&b->done, &pool_mu);
        pthread_mutex_unlock(&pool_mu);
        pthread_cond_destroy(&b->done);
        judge_helpers(chunks, chunks - atomic_load(&b->helped), own_cpu, now_ns() - w0);
    }
    return atomic_load(&b->failed) ? -1 : 0;
}

void wp_set_adaptive(int on)
{
    atomic_store(&adaptive, on != 0);
    atomic_store(&solo_left, 0);
    atomic_store(&strikes, 0);
}

int wp_workers(void)
{
    pthread_mutex_lock(&pool_mu);
    int n = nworkers;
    pthread_mutex_unlock(&pool_mu);
    return n;
}

void wp_stats(wp_stats_t *out)
{
    out->invited = atomic_load(&st_invited);
    out->solo = atomic_load(&st_solo);
    out->helped_chunks = atomic_load(&st_helped);
    out->invited_chunks = atomic_load(&st_chunks);
}
