/* test_eng_tp_watch.c (label unit, no GPU): the tensor-parallel watchdog / abort state machine
 * (eng_tp_watch.h) driven by N fake ranks, one thread each, with NCCL's semantics simulated: a
 * rank's "stream" finishes only once every rank has issued its step (the collectives meet) and the
 * step's work time has passed, or when its communicator is aborted (the waiting kernels return).
 * A rank told to hang blocks in "issuing" (a launch behind a waiting NCCL kernel) until its own
 * communicator is aborted. An abort, as ncclCommAbort on a single-process clique, returns only
 * once every rank's abort has begun (the teardown meets its peers): aborts started one after
 * another from one thread never return (the deadlock seen on two H200s). Cases, one line each:
 *  1. healthy: 40 steps on 4 ranks, no trip, no abort;
 *  2. slow but inside the watchdog (work 150 ms, watchdog 1000 ms): no trip;
 *  3. rank 1 fails before issuing: every other rank's wait returns -EHOSTDOWN within 500 ms,
 *     the reason names rank 1 (GPU 11) and its message, every communicator aborted exactly once,
 *     no abort stuck waiting for its peers, then begin() refuses (sticky);
 *  4. rank 2 hangs while issuing (watchdog 300 ms, grace 200 ms): the others return -EHOSTDOWN
 *     after the watchdog (not before), rc -ETIMEDOUT, the reason says watchdog and names rank 2
 *     "issuing"; rank 2's communicator is aborted after the grace period, which releases it;
 *  5. a poll error on rank 0 (ncclCommGetAsyncError) trips the group with that message;
 *  6. rank 3 fails after the others finished the step (no one waiting): still a trip and every
 *     communicator aborted;
 *  7. every rank refuses the step before issuing it (a bad batch, skip()): no trip, no abort, the
 *     next step runs;
 *  8. rank 2 refuses while the others issued theirs: a trip naming rank 2, all return. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "eng_tp_watch.h"

#define N 4

static int g_fail;

static void s_check(int ok, const char *fmt, const char *detail) {
    printf("%-4s %s%s%s\n", ok ? "ok" : "FAIL", fmt, detail && *detail ? ": " : "",
           detail ? detail : "");
    fflush(stdout);
    if (!ok)
        g_fail++;
}

static uint64_t s_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct sim {
    eng_tp_watch_t *w;
    atomic_int issued;              /* ranks that issued this step */
    atomic_int aborts[N];           /* abort_fn calls per rank */
    atomic_int entered[N];          /* abort_fn began, per rank */
    atomic_int stuck;               /* an abort waited 3 s for its peers' */
    atomic_int released[N];         /* comm aborted: kernels return */
    uint64_t step_t0, work_ms;
    int fail_rank;                  /* fails before issuing; -1 none */
    int hang_rank;                  /* blocks while issuing until aborted; -1 none */
    int poll_err_rank;              /* poll returns an error; -1 none */
    int late_fail_rank;             /* fails after the others are done; -1 none */
    int skip_mask;                  /* ranks that refuse the step before issuing (bit r) */
    int rc[N];
    uint64_t ret_ms[N];             /* ms from step start to the rank's return */
} sim_t;

static void s_abort(void *ud, int rank) {
    sim_t *s = ud;
    atomic_store(&s->entered[rank], 1);
    atomic_store(&s->released[rank], 1); /* the abort flag: this rank's kernels return */
    uint64_t t0 = s_ms();
    for (;;) { /* the teardown waits for every peer's abort to begin */
        int all = 1;
        for (int r = 0; r < N; r++)
            all &= atomic_load(&s->entered[r]);
        if (all)
            break;
        if (s_ms() - t0 > 3000) {
            atomic_store(&s->stuck, 1);
            break;
        }
        usleep(1000);
    }
    usleep(5000); /* an abort takes a while */
    atomic_fetch_add(&s->aborts[rank], 1);
}

static int s_poll(void *pud, int rank, char *msg, size_t len) {
    sim_t *s = pud;
    if (rank == s->poll_err_rank && s_ms() - s->step_t0 > 20) {
        snprintf(msg, len, "ncclCommGetAsyncError: remote process exited or there was a network error");
        return -EIO;
    }
    if (atomic_load(&s->released[rank]))
        return 1;
    return atomic_load(&s->issued) == N && s_ms() - s->step_t0 >= s->work_ms;
}

typedef struct rank_arg {
    sim_t *s;
    int rank;
} rank_arg_t;

static void *s_rank(void *arg) {
    rank_arg_t *a = arg;
    sim_t *s = a->s;
    int r = a->rank, rc;
    if (s->skip_mask & (1 << r)) {
        rc = eng_tp_watch_skip(s->w, r, -EINVAL, "batch.seqs[0].n_tokens: must be >= 1");
        if (rc == 0)
            rc = -EINVAL;
    } else if (r == s->fail_rank) {
        eng_tp_watch_fail(s->w, r, -EIO, "injected fault");
        rc = -EIO;
    } else {
        if (r == s->hang_rank)
            while (!atomic_load(&s->released[r]))
                usleep(1000);
        atomic_fetch_add(&s->issued, 1);
        rc = eng_tp_watch_issued(s->w, r);
        if (rc == 0)
            rc = eng_tp_watch_wait(s->w, r, s_poll, s, 2000);
        if (rc == 0 && r == s->late_fail_rank) {
            usleep(50000); /* the others are done and idle */
            eng_tp_watch_fail(s->w, r, -EIO, "launch failed after the last collective");
            rc = -EIO;
        }
    }
    s->rc[r] = rc;
    s->ret_ms[r] = s_ms() - s->step_t0;
    return NULL;
}

/* one step on all ranks; returns 0 when every thread came back */
static int s_step(sim_t *s) {
    pthread_t th[N];
    rank_arg_t args[N];
    atomic_store(&s->issued, 0);
    s->step_t0 = s_ms();
    int b = eng_tp_watch_begin(s->w);
    if (b < 0)
        return b;
    for (int r = 0; r < N; r++) {
        args[r] = (rank_arg_t){s, r};
        pthread_create(&th[r], NULL, s_rank, &args[r]);
    }
    for (int r = 0; r < N; r++)
        pthread_join(th[r], NULL);
    return 0;
}

static const int s_devs[N] = {10, 11, 12, 13};

static void s_setup(sim_t *s, uint64_t watchdog_ms, uint64_t grace_ms) {
    memset(s, 0, sizeof *s);
    s->fail_rank = s->hang_rank = s->poll_err_rank = s->late_fail_rank = -1;
    eng_tp_watch_opts_t o = {.n = N, .watchdog_ms = watchdog_ms, .grace_ms = grace_ms,
                             .devices = s_devs, .abort_fn = s_abort, .ud = s};
    if (eng_tp_watch_new(&o, &s->w) < 0) {
        printf("FAIL eng_tp_watch_new\n");
        exit(1);
    }
}

static int s_all_aborted_once(sim_t *s) {
    for (int r = 0; r < N; r++)
        if (atomic_load(&s->aborts[r]) != 1)
            return 0;
    return !atomic_load(&s->stuck);
}

static int s_none_aborted(sim_t *s) {
    for (int r = 0; r < N; r++)
        if (atomic_load(&s->aborts[r]) != 0)
            return 0;
    return 1;
}

int main(void) {
    sim_t s;
    char why[512], d[800];

    /* 1. healthy */
    s_setup(&s, 1000, 0);
    int ok = 1;
    for (int i = 0; i < 40 && ok; i++) {
        s.work_ms = (uint64_t)(i % 3);
        ok = s_step(&s) == 0;
        for (int r = 0; r < N; r++)
            ok &= s.rc[r] == 0;
    }
    ok &= !eng_tp_watch_dead(s.w) && s_none_aborted(&s);
    s_check(ok, "healthy: 40 steps on 4 ranks, no trip, no abort", NULL);
    eng_tp_watch_free(s.w);

    /* 2. slow inside the watchdog */
    s_setup(&s, 1000, 0);
    s.work_ms = 150;
    ok = s_step(&s) == 0 && s_step(&s) == 0;
    for (int r = 0; r < N; r++)
        ok &= s.rc[r] == 0;
    ok &= !eng_tp_watch_dead(s.w) && s_none_aborted(&s);
    s_check(ok, "slow step (150 ms) inside the watchdog (1000 ms): no trip", NULL);
    eng_tp_watch_free(s.w);

    /* 3. rank 1 fails before issuing */
    s_setup(&s, 30000, 0);
    s.work_ms = 0;
    s.fail_rank = 1;
    ok = s_step(&s) == 0;
    int rc = eng_tp_watch_reason(s.w, why, sizeof why);
    uint64_t worst = 0;
    for (int r = 0; r < N; r++) {
        if (r != 1)
            ok &= s.rc[r] == -EHOSTDOWN;
        worst = s.ret_ms[r] > worst ? s.ret_ms[r] : worst;
    }
    usleep(50000);
    ok &= worst < 500 && rc == -EIO && strstr(why, "rank 1 (GPU 11): injected fault") != NULL;
    ok &= s_all_aborted_once(&s) && eng_tp_watch_begin(s.w) == -EHOSTDOWN;
    snprintf(d, sizeof d, "slowest rank back after %llu ms (bound 500), rc %d, reason '%s'",
             (unsigned long long)worst, rc, why);
    s_check(ok, "rank 1 fails before its collectives: the others return, all comms aborted once, "
            "sticky", d);
    eng_tp_watch_free(s.w);

    /* 4. rank 2 hangs while issuing: the watchdog */
    s_setup(&s, 300, 200);
    s.hang_rank = 2;
    ok = s_step(&s) == 0;
    rc = eng_tp_watch_reason(s.w, why, sizeof why);
    uint64_t first = UINT64_MAX;
    for (int r = 0; r < N; r++) {
        ok &= s.rc[r] == -EHOSTDOWN;
        if (r != 2)
            first = s.ret_ms[r] < first ? s.ret_ms[r] : first;
    }
    usleep(50000);
    ok &= first >= 290 && first < 1500 && s.ret_ms[2] >= 480 && s.ret_ms[2] < 3000;
    ok &= rc == -ETIMEDOUT && strstr(why, "watchdog") && strstr(why, "rank 2 (GPU 12) issuing");
    ok &= eng_tp_watch_settle(s.w, 2000) == 0;
    for (int r = 0; r < N; r++)
        ok &= eng_tp_watch_aborted(s.w, r);
    ok &= s_all_aborted_once(&s);
    snprintf(d, sizeof d, "others back after %llu ms (watchdog 300), hung rank after %llu ms "
             "(+ grace 200), reason '%s'", (unsigned long long)first,
             (unsigned long long)s.ret_ms[2], why);
    s_check(ok, "rank 2 hangs while issuing: watchdog trip, forced abort after the grace", d);
    eng_tp_watch_free(s.w);

    /* 5. async error seen by a poll */
    s_setup(&s, 30000, 0);
    s.work_ms = 100000; /* never finishes by itself */
    s.poll_err_rank = 0;
    ok = s_step(&s) == 0;
    rc = eng_tp_watch_reason(s.w, why, sizeof why);
    ok &= s.rc[0] == -EIO && rc == -EIO && strstr(why, "rank 0 (GPU 10): ncclCommGetAsyncError");
    for (int r = 1; r < N; r++)
        ok &= s.rc[r] == -EHOSTDOWN;
    usleep(50000);
    ok &= s_all_aborted_once(&s);
    s_check(ok, "async NCCL error on rank 0: trip naming it, the others return", why);
    eng_tp_watch_free(s.w);

    /* 6. a failure after the step finished everywhere else */
    s_setup(&s, 30000, 0);
    s.late_fail_rank = 3;
    ok = s_step(&s) == 0 && s.rc[0] == 0 && s.rc[3] == -EIO;
    rc = eng_tp_watch_reason(s.w, why, sizeof why);
    usleep(50000);
    ok &= rc == -EIO && eng_tp_watch_dead(s.w) && s_all_aborted_once(&s);
    s_check(ok, "late failure on rank 3: trip, every comm aborted", why);
    eng_tp_watch_free(s.w);

    /* 7. all ranks skip: symmetric refusal */
    s_setup(&s, 30000, 0);
    s.skip_mask = (1 << N) - 1;
    ok = s_step(&s) == 0;
    for (int r = 0; r < N; r++)
        ok &= s.rc[r] == -EINVAL;
    s.skip_mask = 0;
    ok &= !eng_tp_watch_dead(s.w) && s_step(&s) == 0;
    for (int r = 0; r < N; r++)
        ok &= s.rc[r] == 0;
    ok &= s_none_aborted(&s);
    s_check(ok, "every rank refuses the step (bad batch): no trip, the next step runs", NULL);
    eng_tp_watch_free(s.w);

    /* 8. one rank skips while the others issued */
    s_setup(&s, 30000, 0);
    s.skip_mask = 1 << 2;
    ok = s_step(&s) == 0;
    rc = eng_tp_watch_reason(s.w, why, sizeof why);
    for (int r = 0; r < N; r++)
        ok &= r == 2 ? (s.rc[r] == -EHOSTDOWN || s.rc[r] == -EINVAL) : s.rc[r] == -EHOSTDOWN;
    usleep(50000);
    ok &= rc == -EINVAL && strstr(why, "rank 2 (GPU 12): batch.seqs[0]") && s_all_aborted_once(&s);
    snprintf(d, sizeof d, "%s; rc %d %d %d %d, aborts %d %d %d %d", why, s.rc[0], s.rc[1],
             s.rc[2], s.rc[3], atomic_load(&s.aborts[0]), atomic_load(&s.aborts[1]),
             atomic_load(&s.aborts[2]), atomic_load(&s.aborts[3]));
    s_check(ok, "rank 2 alone refuses the step: trip naming it, all comms aborted", d);
    eng_tp_watch_free(s.w);

    printf("%s\n", g_fail ? "FAILED" : "all passed");
    return g_fail ? 1 : 0;
}
