/* eng_tp_watch.c: the watchdog / abort state machine of a tensor-parallel group (eng_tp_watch.h).
 * One mutex guards the state; the watchdog thread sleeps on a condition variable (CLOCK_MONOTONIC)
 * until the step's deadline or a trip's grace period; communicator aborts run outside the state
 * lock, each on a thread of its own, all at once: ncclCommAbort of one rank of a single-process
 * clique may wait for its peers' aborts, so aborting them one after another from one thread
 * deadlocks (seen on two H200s: a failed rank's group hung, a watchdog trip took 16.8 s). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "eng_tp_watch.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { S_IDLE, S_ISSUING, S_WAITING, S_DONE, S_FAILED, S_SKIPPED };

struct eng_tp_watch {
    pthread_mutex_t mu;          /* guards everything below */
    pthread_cond_t cv;           /* wakes the watchdog thread */
    pthread_t th;
    bool th_started, quit;
    int n;
    uint64_t watchdog_ns, grace_ns;
    int dev[ENG_TP_WATCH_MAX_RANKS];       /* -1: unknown */
    eng_tp_abort_fn abort_fn;
    void *ud;
    int state[ENG_TP_WATCH_MAX_RANKS];     /* S_* of the current step */
    bool aborted[ENG_TP_WATCH_MAX_RANKS];  /* abort claimed (called or about to be) */
    bool abort_done[ENG_TP_WATCH_MAX_RANKS]; /* abort_fn returned */
    pthread_cond_t done_cv;                /* signalled when an abort_fn returns */
    bool active;                           /* a step is running */
    uint64_t deadline_ns;                  /* monotonic; 0 = none */
    bool dead;
    int rc;                                /* the trip's error */
    uint64_t trip_ns;
    char reason[512];
    int skip_rank, skip_rc;                /* first rank that skipped this step; -1 none */
    char skip_msg[400];
};

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const char *s_state_name(int s) {
    static const char *const names[] = {"idle", "issuing", "waiting", "done", "failed", "skipped"};
    return s >= 0 && s <= S_SKIPPED ? names[s] : "?";
}

static void s_label(const eng_tp_watch_t *w, int rank, char *buf, size_t len) {
    if (w->dev[rank] >= 0)
        snprintf(buf, len, "rank %d (GPU %d)", rank, w->dev[rank]);
    else
        snprintf(buf, len, "rank %d", rank);
}

/* Marks the group dead (first trip only). Lock held. */
static void s_trip_locked(eng_tp_watch_t *w, int rc, const char *reason) {
    if (w->dead)
        return;
    w->dead = true;
    w->rc = rc < 0 ? rc : -EIO;
    w->trip_ns = s_now_ns();
    snprintf(w->reason, sizeof w->reason, "%s", reason);
    pthread_cond_broadcast(&w->cv);
}

/* After a rank left ISSUING: a step some ranks skipped while others issued theirs is a trip (the
 * issued collectives will never meet); a step nobody is issuing or waiting on has ended. */
static void s_settle_locked(eng_tp_watch_t *w) {
    int issuing = 0, running = 0, skipped = 0;
    for (int r = 0; r < w->n; r++) {
        issuing += w->state[r] == S_ISSUING;
        running += w->state[r] == S_WAITING || w->state[r] == S_DONE;
        skipped += w->state[r] == S_SKIPPED;
    }
    if (!w->dead && issuing == 0 && skipped > 0 && running > 0) {
        char why[512], lab[48];
        s_label(w, w->skip_rank, lab, sizeof lab);
        snprintf(why, sizeof why, "%s: %s (the other ranks issued the step)", lab, w->skip_msg);
        s_trip_locked(w, w->skip_rc, why);
    }
    bool busy = false;
    for (int r = 0; r < w->n; r++)
        busy |= w->state[r] == S_ISSUING || w->state[r] == S_WAITING;
    if (!busy)
        w->active = false;
}

/* Claims the abort of every rank that may be aborted now (dead group, not ISSUING, not aborted
 * yet; `force`: ISSUING ones too). Lock held. Returns the count written to list. */
static int s_claim_locked(eng_tp_watch_t *w, bool force, int *list) {
    int k = 0;
    if (!w->dead)
        return 0;
    for (int r = 0; r < w->n; r++)
        if (!w->aborted[r] && (force || w->state[r] != S_ISSUING)) {
            w->aborted[r] = true;
            list[k++] = r;
        }
    return k;
}

struct abort_arg {
    eng_tp_watch_t *w;
    int rank;
};

/* One rank's abort; marks it done when abort_fn returns. Lock NOT held. */
static void s_abort_one(eng_tp_watch_t *w, int rank) {
    w->abort_fn(w->ud, rank);
    pthread_mutex_lock(&w->mu);
    w->abort_done[rank] = true;
    pthread_cond_broadcast(&w->done_cv);
    pthread_mutex_unlock(&w->mu);
}

static void *s_abort_thread(void *p) {
    struct abort_arg a = *(struct abort_arg *)p;
    free(p);
    s_abort_one(a.w, a.rank);
    return NULL;
}

/* Starts abort_fn for each claimed rank, each on a detached thread, and returns at once (an
 * abort may wait for a peer's abort, which a later claim starts). Lock NOT held. Where a thread
 * cannot be started the abort runs here. */
static void s_abort_list(eng_tp_watch_t *w, const int *list, int k) {
    for (int i = 0; i < k; i++) {
        struct abort_arg *a = malloc(sizeof *a);
        pthread_attr_t at;
        pthread_t th;
        bool started = false;
        if (a && pthread_attr_init(&at) == 0) {
            a->w = w;
            a->rank = list[i];
            started = pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED) == 0 &&
                      pthread_create(&th, &at, s_abort_thread, a) == 0;
            pthread_attr_destroy(&at);
        }
        if (!started) {
            free(a);
            s_abort_one(w, list[i]);
        }
    }
}

static void s_timeout_reason_locked(eng_tp_watch_t *w, char *buf, size_t len) {
    int o = snprintf(buf, len, "watchdog: the step ran past %llu ms (OMNIPIPE_TP_WATCHDOG_MS); "
                     "ranks not finished:", (unsigned long long)(w->watchdog_ns / 1000000ull));
    for (int r = 0; r < w->n && o > 0 && (size_t)o < len; r++)
        if (w->state[r] != S_DONE) {
            char lab[48];
            s_label(w, r, lab, sizeof lab);
            o += snprintf(buf + o, len - (size_t)o, " %s %s,", lab, s_state_name(w->state[r]));
        }
    if (o > 0 && (size_t)o < len && buf[o - 1] == ',')
        buf[o - 1] = 0;
}

static void s_abstime(uint64_t ns, struct timespec *ts) {
    ts->tv_sec = (time_t)(ns / 1000000000ull);
    ts->tv_nsec = (long)(ns % 1000000000ull);
}

static void *s_watchdog(void *arg) {
    eng_tp_watch_t *w = arg;
    int list[ENG_TP_WATCH_MAX_RANKS] = {0};
    pthread_mutex_lock(&w->mu);
    while (!w->quit) {
        uint64_t now = s_now_ns(), wake = 0;
        if (!w->dead && w->active && w->deadline_ns) {
            if (now >= w->deadline_ns) {
                char why[512];
                s_timeout_reason_locked(w, why, sizeof why);
                s_trip_locked(w, -ETIMEDOUT, why);
                int k = s_claim_locked(w, false, list);
                pthread_mutex_unlock(&w->mu);
                s_abort_list(w, list, k);
                pthread_mutex_lock(&w->mu);
                continue;
            }
            wake = w->deadline_ns;
        } else if (w->dead) {
            bool issuing = false;
            for (int r = 0; r < w->n; r++)
                issuing |= !w->aborted[r] && w->state[r] == S_ISSUING;
            if (issuing) {
                if (now >= w->trip_ns + w->grace_ns) {
                    /* blocked in a launch behind an NCCL kernel that only an abort releases */
                    int k = s_claim_locked(w, true, list);
                    pthread_mutex_unlock(&w->mu);
                    s_abort_list(w, list, k);
                    pthread_mutex_lock(&w->mu);
                    continue;
                }
                wake = w->trip_ns + w->grace_ns;
            }
        }
        if (wake) {
            struct timespec ts;
            s_abstime(wake, &ts);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        } else {
            pthread_cond_wait(&w->cv, &w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int eng_tp_watch_new(const eng_tp_watch_opts_t *o, eng_tp_watch_t **ret) {
    if (!o || !ret || o->n < 1 || o->n > ENG_TP_WATCH_MAX_RANKS || !o->abort_fn)
        return -EINVAL;
    eng_tp_watch_t *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->skip_rank = -1;
    w->n = o->n;
    w->watchdog_ns = o->watchdog_ms * 1000000ull;
    w->grace_ns = (o->grace_ms ? o->grace_ms : 2000) * 1000000ull;
    w->abort_fn = o->abort_fn;
    w->ud = o->ud;
    for (int r = 0; r < w->n; r++)
        w->dev[r] = o->devices ? o->devices[r] : -1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, &ca);
    pthread_cond_init(&w->done_cv, &ca);
    pthread_condattr_destroy(&ca);
    int e = pthread_create(&w->th, NULL, s_watchdog, w);
    if (e != 0) {
        eng_tp_watch_free(w);
        return -e;
    }
    w->th_started = true;
    *ret = w;
    return 0;
}

void eng_tp_watch_free(eng_tp_watch_t *w) {
    if (!w)
        return;
    /* abort threads still running use w: wait for them; if one never returns, leak w (the
       process is about to exit on its device-lost path) */
    if (eng_tp_watch_settle(w, 60000) < 0)
        return;
    if (w->th_started) {
        pthread_mutex_lock(&w->mu);
        w->quit = true;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->th, NULL);
    }
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->done_cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

int eng_tp_watch_begin(eng_tp_watch_t *w) {
    pthread_mutex_lock(&w->mu);
    if (w->dead) {
        pthread_mutex_unlock(&w->mu);
        return -EHOSTDOWN;
    }
    for (int r = 0; r < w->n; r++)
        w->state[r] = S_ISSUING;
    w->skip_rank = -1;
    w->skip_msg[0] = 0;
    w->active = true;
    w->deadline_ns = w->watchdog_ns ? s_now_ns() + w->watchdog_ns : 0;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

int eng_tp_watch_issued(eng_tp_watch_t *w, int rank) {
    int list[ENG_TP_WATCH_MAX_RANKS] = {0}, k = 0, rc = 0;
    pthread_mutex_lock(&w->mu);
    w->state[rank] = S_WAITING;
    s_settle_locked(w);
    if (w->dead) {
        k = s_claim_locked(w, false, list);
        rc = -EHOSTDOWN;
    }
    pthread_mutex_unlock(&w->mu);
    s_abort_list(w, list, k);
    return rc;
}

int eng_tp_watch_skip(eng_tp_watch_t *w, int rank, int rc, const char *msg) {
    int list[ENG_TP_WATCH_MAX_RANKS] = {0}, k = 0;
    pthread_mutex_lock(&w->mu);
    w->state[rank] = S_SKIPPED;
    if (w->skip_rank < 0) {
        w->skip_rank = rank;
        w->skip_rc = rc < 0 ? rc : -EIO;
        snprintf(w->skip_msg, sizeof w->skip_msg, "%s", msg && *msg ? msg : "failed");
    }
    s_settle_locked(w);
    bool dead = w->dead;
    if (dead)
        k = s_claim_locked(w, false, list);
    pthread_mutex_unlock(&w->mu);
    s_abort_list(w, list, k);
    return dead ? -EHOSTDOWN : 0;
}

void eng_tp_watch_fail(eng_tp_watch_t *w, int rank, int rc, const char *msg) {
    int list[ENG_TP_WATCH_MAX_RANKS] = {0};
    char why[512], lab[48];
    pthread_mutex_lock(&w->mu);
    w->state[rank] = S_FAILED;
    s_label(w, rank, lab, sizeof lab);
    snprintf(why, sizeof why, "%s: %s", lab, msg && *msg ? msg : "failed");
    s_trip_locked(w, rc, why);
    int k = s_claim_locked(w, false, list);
    pthread_mutex_unlock(&w->mu);
    s_abort_list(w, list, k);
}

int eng_tp_watch_wait(eng_tp_watch_t *w, int rank, eng_tp_poll_fn poll, void *pud,
                      uint64_t spin_us) {
    int list[ENG_TP_WATCH_MAX_RANKS] = {0};
    const uint64_t t0 = s_now_ns();
    uint64_t sleep_ns = 5000;
    for (;;) {
        char msg[400] = "";
        pthread_mutex_lock(&w->mu);
        if (w->dead) {
            if (w->state[rank] == S_ISSUING || w->state[rank] == S_WAITING)
                w->state[rank] = S_FAILED;
            int k = s_claim_locked(w, false, list);
            pthread_mutex_unlock(&w->mu);
            s_abort_list(w, list, k);
            return -EHOSTDOWN;
        }
        w->state[rank] = S_WAITING;
        int p = poll(pud, rank, msg, sizeof msg);
        if (p > 0) {
            w->state[rank] = S_DONE;
            s_settle_locked(w);
            pthread_mutex_unlock(&w->mu);
            return 0;
        }
        if (p < 0) {
            char why[512], lab[48];
            w->state[rank] = S_FAILED;
            s_label(w, rank, lab, sizeof lab);
            snprintf(why, sizeof why, "%s: %s", lab, *msg ? msg : "failed");
            s_trip_locked(w, p, why);
            int k = s_claim_locked(w, false, list);
            pthread_mutex_unlock(&w->mu);
            s_abort_list(w, list, k);
            return p;
        }
        pthread_mutex_unlock(&w->mu);
        if (s_now_ns() - t0 < spin_us * 1000ull) {
            sched_yield();
        } else {
            struct timespec ts = {0, (long)sleep_ns};
            nanosleep(&ts, NULL);
            if (sleep_ns < 200000)
                sleep_ns *= 2;
        }
    }
}

bool eng_tp_watch_dead(eng_tp_watch_t *w) {
    pthread_mutex_lock(&w->mu);
    bool d = w->dead;
    pthread_mutex_unlock(&w->mu);
    return d;
}

int eng_tp_watch_reason(eng_tp_watch_t *w, char *buf, size_t len) {
    pthread_mutex_lock(&w->mu);
    int rc = w->dead ? w->rc : 0;
    if (buf && len)
        snprintf(buf, len, "%s", w->dead ? w->reason : "");
    pthread_mutex_unlock(&w->mu);
    return rc;
}

bool eng_tp_watch_aborted(eng_tp_watch_t *w, int rank) {
    pthread_mutex_lock(&w->mu);
    bool a = rank >= 0 && rank < w->n && w->abort_done[rank];
    pthread_mutex_unlock(&w->mu);
    return a;
}

bool eng_tp_watch_abort_started(eng_tp_watch_t *w, int rank) {
    pthread_mutex_lock(&w->mu);
    bool a = rank >= 0 && rank < w->n && w->aborted[rank];
    pthread_mutex_unlock(&w->mu);
    return a;
}

int eng_tp_watch_settle(eng_tp_watch_t *w, uint64_t timeout_ms) {
    struct timespec ts;
    s_abstime(s_now_ns() + timeout_ms * 1000000ull, &ts);
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    for (;;) {
        bool pending = false;
        for (int r = 0; r < w->n; r++)
            pending |= w->aborted[r] && !w->abort_done[r];
        if (!pending)
            break;
        if (pthread_cond_timedwait(&w->done_cv, &w->mu, &ts) == ETIMEDOUT) {
            rc = -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}
