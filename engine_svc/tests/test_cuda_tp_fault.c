/* test_cuda_tp_fault.c (label gpu): a tensor-parallel group (2 GPUs, NCCL) never hangs when one
 * rank fails (eng_cuda_tp.cu, eng_tp_watch.h). Exit 77 with fewer than 2 GPUs or without
 * libnccl.so.2.
 *
 * Every case runs in a forked child (a dead group leaves the process's sticky CUDA error set, and
 * a hang must be observable): the parent makes no CUDA call, waits for each child at most
 * CASE_LIMIT_S seconds and kills it otherwise (then the case FAILs as "hung"). Faults come from
 * the test hook OM_CUDA_TP_FAULT=rank:step[:error|hang], read at load. Model: tiny-qwen3-moe
 * (fixtures), its golden prompts prefilled in one step (forward 0), then greedy decode steps
 * (forward 1 eager, forward 2 captures the batch's CUDA graph with the NCCL all-reduces inside,
 * later forwards replay it). One line per case: PASS/FAIL, what was measured, the bound.
 *
 *  control   no fault: 8 steps on the bounded wait (default) give the same greedy ids as the old
 *            unbounded wait (OM_CUDA_TP_WAIT=sync) at every step (the wait changes nothing);
 *  error@3   rank 1 fails at forward 3 (graph replay; rank 0's graph waits in NCCL): forward 3
 *            returns -EHOSTDOWN naming "rank 1 (GPU d)" and the injected fault in < 5 s (watchdog
 *            20 s: the abort, not the watchdog, ended it); eng_cuda_error_is_sticky(); the next
 *            forward returns -EHOSTDOWN in < 100 ms; eng_cuda_model_free returns in < 30 s; the
 *            child exits;
 *  error@0   rank 0 fails at forward 0 (eager prefill; rank 1 issues its kernels and waits): the
 *            same checks;
 *  hang@2    rank 1 hangs (issues nothing) at forward 2 with OMNIPIPE_TP_WATCHDOG_MS=3000: the
 *            forward returns -EHOSTDOWN saying "watchdog" after >= 3 s and < 3 s + grace + 5 s;
 *            free and exit as above;
 *  service   eng_service on TP=2 with rank 1 failing at forward 2: eng_service_step returns
 *            -EHOSTDOWN, the step's requests end with FINISH_ERROR and Status UNAVAILABLE,
 *            retryable (what engine_svc sends before it exits for a restart). */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "eng_backend.h"
#include "eng_cuda.h"
#include "eng_service.h"

#define MAXP 8
#define NSTEP 8
#define CASE_LIMIT_S 120

static char g_fix[1024];

static double s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void s_line(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_line(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%-4s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

static int s_load(int tp, eng_cuda_model_t **m, char *err, size_t errlen) {
    char dir[1200];
    snprintf(dir, sizeof dir, "%s/tiny-qwen3-moe", g_fix);
    eng_cuda_model_opts_t o = {0};
    o.kv_fraction = 0.02;
    o.max_ctx = 4096;
    o.max_batch_tokens = 1024;
    o.max_seqs = 16;
    o.tensor_parallel = tp;
    return eng_cuda_model_load(dir, &o, m, err, errlen);
}

/* The golden prompts as one batch: forward 0 prefills them, later forwards decode one token per
 * sequence. Tokens fed in decode: ids[] of the previous step when given, else a fixed valid id. */
typedef struct run {
    json_t *g;
    int n, per, V;
    int32_t *toks[MAXP], *bt[MAXP];
    int len[MAXP];
    eng_batch_seq_t seqs[MAXP];
    eng_batch_t b;
    int step;
} run_t;

static int s_run_init(run_t *r, eng_cuda_model_t *m) {
    char path[1300];
    memset(r, 0, sizeof *r);
    snprintf(path, sizeof path, "%s/tiny-qwen3-moe/golden.json", g_fix);
    r->g = json_load_file(path, 0, NULL);
    json_t *prompts = json_object_get(r->g, "prompts");
    if (!r->g || !prompts)
        return -ENOENT;
    eng_cuda_model_info_t in;
    eng_cuda_model_get_info(m, &in);
    r->V = (int)in.vocab;
    int bs = (int)in.block_size;
    r->n = (int)json_array_size(prompts);
    if (r->n > MAXP)
        r->n = MAXP;
    for (int i = 0; i < r->n; i++) {
        json_t *p = json_array_get(prompts, i);
        r->len[i] = (int)json_array_size(p);
        r->toks[i] = malloc((size_t)(r->len[i] + NSTEP + 1) * 4);
        for (int j = 0; j < r->len[i]; j++)
            r->toks[i][j] = (int32_t)json_integer_value(json_array_get(p, j));
        int nb = (r->len[i] + NSTEP + bs) / bs;
        if (nb > r->per)
            r->per = nb;
    }
    for (int i = 0; i < r->n; i++) {
        r->bt[i] = malloc((size_t)r->per * 4);
        for (int j = 0; j < r->per; j++)
            r->bt[i][j] = i * r->per + j;
        r->seqs[i] = (eng_batch_seq_t){r->toks[i], (uint32_t)r->len[i], 0, NULL, r->bt[i],
                                       (uint32_t)r->per, true};
        r->b.n_tokens += (uint32_t)r->len[i];
    }
    r->b.seqs = r->seqs;
    r->b.n_seqs = (uint32_t)r->n;
    r->b.n_logits = (uint32_t)r->n;
    return 0;
}

/* One forward; ids (n) NULL: no host copies (the engine's own path). */
static int s_run_step(run_t *r, eng_cuda_model_t *m, const int32_t *prev, int32_t *ids, char *err,
                      size_t errlen) {
    if (r->step > 0) {
        r->b.n_tokens = 0;
        for (int i = 0; i < r->n; i++) {
            eng_batch_seq_t *q = &r->seqs[i];
            q->n_past += q->n_tokens;
            q->tokens = &r->toks[i][q->n_past];
            r->toks[i][q->n_past] = prev ? prev[i] : (int32_t)((r->step * 7 + i) % r->V);
            q->n_tokens = 1;
            r->b.n_tokens++;
        }
    }
    r->step++;
    return eng_cuda_model_forward(m, &r->b, NULL, ids, err, errlen);
}

static void s_run_free(run_t *r) {
    for (int i = 0; i < r->n; i++) {
        free(r->toks[i]);
        free(r->bt[i]);
    }
    json_decref(r->g);
}

/* --- cases (children) ------------------------------------------------------------------------ */

static int c_probe(void) {
    eng_backend_t *probe = NULL;
    if (eng_backend_new("cuda", 0, 0, &probe) < 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    eng_backend_free(probe);
    char err[512] = "";
    eng_cuda_model_t *m = NULL;
    int r = s_load(2, &m, err, sizeof err);
    if (r == -ENODEV || r == -ELIBACC) {
        printf("SKIP: tensor_parallel 2 unavailable: %s\n", err);
        return 77;
    }
    if (r < 0) {
        s_line(0, "tp_fault probe: load tiny-qwen3-moe with tensor_parallel 2: %d %s", r, err);
        return 1;
    }
    eng_cuda_model_free(m);
    return 0;
}

static int c_control(void) {
    int32_t ids[2][NSTEP][MAXP];
    char err[512] = "";
    int n = 0, rc = 0;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        if (pass == 1)
            setenv("OM_CUDA_TP_WAIT", "sync", 1);
        eng_cuda_model_t *m = NULL;
        run_t r;
        if ((rc = s_load(2, &m, err, sizeof err)) < 0 || (rc = s_run_init(&r, m)) < 0)
            break;
        n = r.n;
        for (int s = 0; s < NSTEP && rc == 0; s++)
            rc = s_run_step(&r, m, s ? ids[pass][s - 1] : NULL, ids[pass][s], err, sizeof err);
        s_run_free(&r);
        eng_cuda_model_free(m);
    }
    unsetenv("OM_CUDA_TP_WAIT");
    int diff = 0;
    for (int s = 0; rc == 0 && s < NSTEP; s++)
        for (int i = 0; i < n; i++)
            diff += ids[0][s][i] != ids[1][s][i];
    int ok = rc == 0 && diff == 0;
    s_line(ok, "tp_fault control: bounded wait vs OM_CUDA_TP_WAIT=sync greedy ids, %d prompts x %d "
           "steps: %d differ (bound 0)%s%s", n, NSTEP, rc == 0 ? diff : -1, rc ? ": " : "",
           rc ? err : "");
    return ok ? 0 : 1;
}

/* fault = OM_CUDA_TP_FAULT, at = the forward it hits, want = substring of the error */
static int c_fault(const char *name, const char *fault, int at, const char *watchdog_ms,
                   double min_ms, double max_ms, const char *want) {
    char err[512] = "", err2[512] = "";
    setenv("OM_CUDA_TP_FAULT", fault, 1);
    if (watchdog_ms)
        setenv("OMNIPIPE_TP_WATCHDOG_MS", watchdog_ms, 1);
    eng_cuda_model_t *m = NULL;
    run_t r;
    int rc = s_load(2, &m, err, sizeof err);
    if (rc < 0 || s_run_init(&r, m) < 0) {
        s_line(0, "tp_fault %s: load: %d %s", name, rc, err);
        return 1;
    }
    for (int s = 0; s < at && rc == 0; s++)
        rc = s_run_step(&r, m, NULL, NULL, err, sizeof err);
    if (rc < 0) {
        s_line(0, "tp_fault %s: forward before the fault failed: %d %s", name, rc, err);
        return 1;
    }
    double t0 = s_now_ms();
    rc = s_run_step(&r, m, NULL, NULL, err, sizeof err);
    double t_fault = s_now_ms() - t0;
    bool sticky = eng_cuda_error_is_sticky();
    t0 = s_now_ms();
    int rc2 = s_run_step(&r, m, NULL, NULL, err2, sizeof err2);
    double t_after = s_now_ms() - t0;
    t0 = s_now_ms();
    eng_cuda_model_free(m);
    double t_free = s_now_ms() - t0;
    s_run_free(&r);
    int ok = rc == -EHOSTDOWN && strstr(err, "rank ") && strstr(err, want) && t_fault >= min_ms &&
             t_fault < max_ms && sticky && rc2 == -EHOSTDOWN && t_after < 100 && t_free < 30000;
    s_line(ok, "tp_fault %s: forward %d returned %d in %.1f ms (bound [%.0f, %.0f) ms, want %d "
           "naming '%s'), sticky %d, next forward %d in %.2f ms (bound 100), free %.1f ms (bound "
           "30000); error: %s", name, at, rc, t_fault, min_ms, max_ms, -EHOSTDOWN, want, sticky,
           rc2, t_after, t_free, err);
    return ok ? 0 : 1;
}

static int c_error3(void) {
    return c_fault("error@3 (rank 1, graph replay)", "1:3:error", 3, "20000", 0, 5000,
                   "injected fault");
}

static int c_error0(void) {
    return c_fault("error@0 (rank 0, eager prefill)", "0:0", 0, "20000", 0, 5000,
                   "injected fault");
}

static int c_hang2(void) {
    /* watchdog 3000 ms; the hung rank is aborted after the grace (watchdog / 4) */
    return c_fault("hang@2 (rank 1 issues nothing, watchdog 3000 ms)", "1:2:hang", 2, "3000",
                   2900, 3000 + 750 + 5000, "watchdog");
}

static int c_service(void) {
    char dir[1200], err[512] = "", path[1300];
    snprintf(dir, sizeof dir, "%s/tiny-qwen3-moe", g_fix);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    setenv("OM_CUDA_TP_FAULT", "1:2:error", 1);
    setenv("OMNIPIPE_TENSOR_PARALLEL", "2", 1);
    setenv("OMNIPIPE_CUDA_RUNNER", "fast", 1);
    eng_service_opts_t o = {.model_dir = dir, .backend = "cuda", .engine_id = "tp-fault",
                            .kv_blocks = 1024};
    eng_service_t *s = NULL;
    int r = eng_service_new(&o, NULL, NULL, &s, err, sizeof err);
    json_t *g = json_load_file(path, 0, NULL);
    json_t *prompts = json_object_get(g, "prompts");
    if (r < 0 || !prompts) {
        s_line(0, "tp_fault service: eng_service_new(TP=2): %d %s", r, err);
        return 1;
    }
    size_t n = json_array_size(prompts) < MAXP ? json_array_size(prompts) : MAXP;
    for (size_t i = 0; i < n && r >= 0; i++) {
        json_t *p = json_array_get(prompts, i);
        int32_t ids[512];
        size_t np = json_array_size(p) < 512 ? json_array_size(p) : 512;
        for (size_t j = 0; j < np; j++)
            ids[j] = (int32_t)json_integer_value(json_array_get(p, j));
        Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
        h.has_request_id = true;
        h.request_id = i;
        Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
        sp.has_max_tokens = sp.has_ignore_eos = true;
        sp.max_tokens = 16;
        sp.ignore_eos = true;
        Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
        pr.ids = ids;
        pr.n_ids = np;
        pr.sampling = &sp;
        r = eng_service_submit(s, &h, &pr, 1);
    }
    int step_rc = 0, n_unavail = 0, n_err = 0, steps = 0;
    double t0 = s_now_ms(), t_fail = 0;
    for (; r >= 0 && eng_service_has_work(s) && steps < 50; steps++) {
        const Omnipipe__TokenBatch *b = NULL;
        double ts = s_now_ms();
        int rs = eng_service_step(s, 1, &b);
        for (size_t i = 0; b && i < b->n_seqs; i++) {
            const Omnipipe__SeqStep *st = b->seqs[i];
            if (st->has_finish && st->finish == OMNIPIPE__FINISH_REASON__FINISH_ERROR) {
                n_err++;
                if (st->error && st->error->has_code &&
                    st->error->code == OMNIPIPE__CODE__UNAVAILABLE && st->error->retryable)
                    n_unavail++;
            }
        }
        if (rs < 0) {
            step_rc = rs;
            t_fail = s_now_ms() - ts;
            break;
        }
    }
    (void)t0;
    bool sticky = eng_cuda_error_is_sticky();
    eng_service_free(s);
    json_decref(g);
    int ok = step_rc == -EHOSTDOWN && sticky && n_err > 0 && n_unavail == n_err && t_fail < 5000;
    s_line(ok, "tp_fault service: step %d returned %d in %.1f ms (bound 5000, want %d), sticky %d, "
           "%d requests ended, %d of them UNAVAILABLE retryable (want all)", steps, step_rc,
           t_fail, -EHOSTDOWN, sticky, n_err, n_unavail);
    return ok ? 0 : 1;
}

/* --- parent ---------------------------------------------------------------------------------- */

/* runs fn in a child; its exit code, or -1 when it had to be killed (hung) */
static int s_child(const char *name, int (*fn)(void)) {
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        alarm(CASE_LIMIT_S + 5); /* belt and braces: never outlive the parent's patience */
        int rc = fn();
        fflush(stdout);
        exit(rc); /* a normal exit: CUDA / NCCL teardown included in the time limit */
    }
    if (p < 0)
        return 1;
    double t0 = s_now_ms();
    for (;;) {
        int st = 0;
        pid_t w = waitpid(p, &st, WNOHANG);
        if (w == p)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        if (s_now_ms() - t0 > CASE_LIMIT_S * 1000.0) {
            kill(p, SIGKILL);
            waitpid(p, &st, 0);
            s_line(0, "tp_fault %s: the child did not finish within %d s (hung); killed", name,
                   CASE_LIMIT_S);
            return -1;
        }
        usleep(20000);
    }
}

int main(void) {
    const char *fx = getenv("OM_FIXTURES_DIR");
    if (fx)
        snprintf(g_fix, sizeof g_fix, "%s", fx);
    else
        snprintf(g_fix, sizeof g_fix, "%s/fixtures",
                 getenv("OM_SHARED_DIR") ? getenv("OM_SHARED_DIR") : OM_SHARED_DIR);
    int pr = s_child("probe", c_probe);
    if (pr == 77)
        return 77;
    if (pr != 0)
        return 1;
    static const struct {
        const char *name;
        int (*fn)(void);
    } cases[] = {
        {"control", c_control}, {"error@3", c_error3}, {"error@0", c_error0},
        {"hang@2", c_hang2},    {"service", c_service},
    };
    int fail = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = s_child(cases[i].name, cases[i].fn);
        if (rc != 0) {
            fail++;
            if (rc > 0 && rc != 1)
                s_line(0, "tp_fault %s: the child exited with %d", cases[i].name, rc);
        }
    }
    printf("%s\n", fail ? "FAILED" : "all passed");
    return fail ? 1 : 0;
}
