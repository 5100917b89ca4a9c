/* eng_tp_watch.h: the watchdog / abort state machine of a tensor-parallel group (eng_cuda_tp.cu),
 * plain C with no CUDA or NCCL in it, so it is unit-tested on the CPU (test_eng_tp_watch).
 *
 * Problem: the ranks of a group meet inside NCCL collectives. When one rank fails (a CUDA error, a
 * launch failure, an exception) before issuing its collectives, the others wait inside NCCL for
 * ever. The cure is ncclCommAbort on every rank's communicator (it makes the waiting NCCL kernels
 * return), but a communicator must not be aborted (= freed) while its own rank's thread is still
 * inside an NCCL call on it. So each rank reports its phase:
 *
 *   begin()        every rank ISSUING (enqueueing its step's kernels and collectives); the step's
 *                  deadline is now + watchdog_ms
 *   issued(r)      rank r ISSUING -> WAITING (only polls its stream from now on)
 *   wait(r, poll)  bounded wait: poll() under the lock (stream query, ncclCommGetAsyncError) until
 *                  it says done (-> DONE) or fails (trips the group), or the group dies
 *   fail(r, ...)   rank r failed (-> FAILED): trips the group
 *   skip(r, ...)   rank r refused the step before issuing it (a bad batch: -EINVAL, -E2BIG; the
 *                  same on every rank): no trip if every rank skipped (the step just fails), a
 *                  trip once no rank is issuing and some skipped while others issued
 *
 * A trip (the first failure, or the deadline passing: the watchdog thread) marks the group dead
 * for good (sticky), records "rank r: reason" and aborts (abort_fn) the communicator of every rank
 * that is not ISSUING, once each, one at a time, outside the state lock. A rank still ISSUING
 * aborts its own communicator when it reaches issued()/fail(); if it does not get there within
 * grace_ms (it is blocked in a launch behind a waiting NCCL kernel), the watchdog thread aborts
 * it anyway. After a trip every wait() returns -EHOSTDOWN at once and begin() refuses.
 *
 * Errors: 0 or -errno. Thread-safe (that is the point); one step at a time. */
#ifndef ENG_TP_WATCH_H
#define ENG_TP_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ENG_TP_WATCH_MAX_RANKS 64

typedef struct eng_tp_watch eng_tp_watch_t;

/* Aborts rank `rank`'s communicator; called at most once per rank, never two at a time. */
typedef void (*eng_tp_abort_fn)(void *ud, int rank);
/* One poll of rank `rank`'s step, called with the watch's lock held (keep it short, never block):
 * 1 = the step's work finished, 0 = not yet, < 0 = failed (msg says why). */
typedef int (*eng_tp_poll_fn)(void *pud, int rank, char *msg, size_t msglen);

typedef struct eng_tp_watch_opts {
    int n;                  /* ranks, 1 .. ENG_TP_WATCH_MAX_RANKS */
    uint64_t watchdog_ms;   /* a step running longer trips the group; 0 = no deadline */
    uint64_t grace_ms;      /* after a trip, a rank ISSUING this long is aborted anyway; 0 = 2000 */
    const int *devices;     /* (n) CUDA device of each rank, for messages ("rank 1 (GPU 3): ...");
                               NULL: ranks only */
    eng_tp_abort_fn abort_fn;
    void *ud;
} eng_tp_watch_opts_t;

/* Starts the watchdog thread. -EINVAL (bad n / no abort_fn), -ENOMEM, -errno of pthread_create. */
int eng_tp_watch_new(const eng_tp_watch_opts_t *o, eng_tp_watch_t **ret);
/* Stops the watchdog thread. NULL is fine. */
void eng_tp_watch_free(eng_tp_watch_t *w);

/* A step starts on every rank. -EHOSTDOWN when the group is dead. */
int eng_tp_watch_begin(eng_tp_watch_t *w);
/* Rank `rank` has issued all its work. -EHOSTDOWN when the group died meanwhile (its
 * communicator has then been aborted before this returns). */
int eng_tp_watch_issued(eng_tp_watch_t *w, int rank);
/* Rank `rank` refused the step (rc < 0, msg) without issuing collectives: 0 while that may be
 * symmetric, -EHOSTDOWN once the group died (other ranks issued theirs: a trip naming this one). */
int eng_tp_watch_skip(eng_tp_watch_t *w, int rank, int rc, const char *msg);
/* Rank `rank` failed with rc (< 0) and msg: trips the group (if not dead yet) naming it. */
void eng_tp_watch_fail(eng_tp_watch_t *w, int rank, int rc, const char *msg);
/* Waits for rank `rank`'s step: 0 when poll said done, -EHOSTDOWN when the group died (any
 * rank's failure, the deadline), or poll's error (which trips the group). Spins (sched_yield) for
 * the first spin_us, then sleeps with a growing interval up to 200 us. */
int eng_tp_watch_wait(eng_tp_watch_t *w, int rank, eng_tp_poll_fn poll, void *pud, uint64_t spin_us);

bool eng_tp_watch_dead(eng_tp_watch_t *w);
/* The trip's error (< 0; -ETIMEDOUT for the watchdog) and reason "rank r: ..." (copied to buf);
 * 0 and "" while alive. */
int eng_tp_watch_reason(eng_tp_watch_t *w, char *buf, size_t len);
/* Whether rank `rank`'s communicator has been aborted (abort_fn returned). */
bool eng_tp_watch_aborted(eng_tp_watch_t *w, int rank);
/* Whether rank `rank`'s abort has begun (claimed; abort_fn called or about to be): what releases a
 * launch blocked behind that rank's NCCL kernels, which may be long before abort_fn returns. */
bool eng_tp_watch_abort_started(eng_tp_watch_t *w, int rank);
/* Waits until every claimed abort has returned (teardown of a dead group): 0, or -ETIMEDOUT. */
int eng_tp_watch_settle(eng_tp_watch_t *w, uint64_t timeout_ms);

#ifdef __cplusplus
}
#endif

#endif
