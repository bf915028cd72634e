/* A small process-wide pool of worker threads that help the calling thread with one batch.
 *
 * A batch of n items (sectors) is cut into chunks; the calling thread and up to threads-1 workers
 * claim chunks until none are left, so a worker that wakes late (or never, on a busy machine) only
 * means the caller does more of the work itself. The caller claims from the front and helpers from
 * the back, so a buffer processed again and again splits the same way each time and each half
 * stays in its core's cache. Each participant calls enter() once to get its
 * private state (the sector core hands out a per-thread cipher context there), run() per chunk,
 * and leave() once. Called by sector_cipher.c with the GIL released; nothing here touches Python.
 *
 * Workers are created on first use, block all signals (Python handles signals on its main thread),
 * spin briefly (SPIN_NS) before sleeping on a condition variable when idle, so back-to-back batches
 * do not pay a futex wake-up each, and are forgotten in a forked child (the child starts new ones
 * when it needs them). The caller likewise spins briefly before sleeping while helpers finish.
 *
 * On a machine whose other cores are busy with other processes a helper may get no CPU until the
 * caller is done (its wake-up and spinning then only cost the caller), or be preempted holding a
 * chunk that the caller must wait for, or share the caller's core. wp_run watches for that (a batch
 * less than 1.25x faster than the caller's own CPU time per chunk predicts for running it alone,
 * two batches in a row) and then runs the next SOLO_BATCHES
 * eligible batches on the calling thread alone before trying helpers again, so asking for two
 * threads never costs much more than one. */
#ifndef VOLUMED_WORKPOOL_H
#define VOLUMED_WORKPOOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

typedef struct wp_batch {
    /* Set by the caller. */
    size_t n;      /* items */
    size_t chunk;  /* items per claim, >= 1 */
    void *arg;
    void *(*enter)(void *arg);                                    /* NULL return = failure */
    int (*run)(void *arg, void *state, size_t begin, size_t end); /* 0 = success */
    void (*leave)(void *arg, void *state);
    /* Internal. */
    atomic_uint_least64_t claimed; /* chunks claimed: from the front (low 32 bits, the caller)
                                      and from the back (high 32 bits, helpers) */
    atomic_int failed;
    int wanted;               /* helpers still invited (pool mutex) */
    atomic_int joined, finished;
    atomic_size_t helped;     /* chunks run by helpers */
    struct wp_batch *qnext;
    pthread_cond_t done;
} wp_batch;

/* Run the batch on the calling thread plus up to threads-1 pool workers; returns when every chunk
 * is done. Returns 0, or -1 if any enter() or run() failed (the other chunks still ran). */
int wp_run(wp_batch *b, int threads);

/* Turn the solo rule on or off (on by default) and forget its history, so the next eligible batch
 * invites helpers. Tests turn it off to exercise the helpers whatever the machine's load. */
void wp_set_adaptive(int on);

/* Number of worker threads started so far (for tests and the benchmark). */
int wp_workers(void);

/* Counters since start (for the benchmark): batches run with helpers invited, batches run solo
 * because helpers had not been helping, chunks run by helpers, chunks in invited batches. */
typedef struct {
    unsigned long long invited, solo, helped_chunks, invited_chunks;
} wp_stats_t;
void wp_stats(wp_stats_t *out);

#endif
