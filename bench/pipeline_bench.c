/* pipeline_bench.c: pipeline overhead benchmark: aggregate generated tokens/s and TTFT through all four
 * daemons (client -> tokenizer -> mm_prep -> engine -> decoder -> client, over ZeroMQ) against the
 * same workload run through eng_service alone, in process (the code engine_svc runs, driven the way
 * `omnipipe generate` drives it). Not a test: it asserts nothing and prints its figures.
 *
 *   pipeline_bench --model DIR [--backend cpu|cuda] [--load-format auto|dummy] [--threads N]
 *                  [--kv-blocks N] [--max-batch-tokens N] [--concurrency 1,8,32,128]
 *                  [--prompt-len P] [--gen-len N] [--clients K] [--repeat R]
 *                  [--runtime-dir D] [--omnipipe PATH] [--log-level L] [--ready-timeout S]
 *                  [--skip-engine] [--skip-pipeline] [--json FILE]
 *
 * Workload, identical on both paths: for each concurrency C, C requests submitted at once, each a
 * P-token prompt of pseudo-random ids (ChatRequest.prompt_ids: no chat template; every prompt is
 * distinct, so the prefix cache does not help), greedy, ignore_eos, exactly N new tokens.
 *
 * Pipeline path: without --runtime-dir it starts `omnipipe up` (the binary next to this one, or
 * --omnipipe) on a fresh temp runtime dir, waits for its `ready` line, and stops it (SIGTERM) when
 * done; with --runtime-dir it attaches to daemons already running there. Engine flags reach the
 * daemon through `omnipipe up` (--backend, --threads, --load-format) or, for keys `up` has no flag
 * for, through the engine's own config environment (OMNIPIPE_KV_BLOCKS, OMNIPIPE_MAX_BATCH_TOKENS;
 * only engine_svc declares those keys). The C requests are spread round-robin over
 * K = min(C, --clients) client threads, each with its own om_client (streaming on). TTFT = from
 * om_client_submit() to the first TextDelta (or the Final when none came).
 *
 * Engine-alone path: eng_service_new() with the same options (runs after the pipeline has been
 * stopped, so on a GPU the daemon's memory is free again), all C requests submitted, then
 * eng_service_step() until no work. TTFT = from submit to the return of the step that produced the
 * request's first token.
 *
 * Figures per concurrency (the median of --repeat runs by tokens/s): tokens/s = all generated tokens /
 * (last request end - first submit); TTFT p50/p99; TPOT (mean over requests of (end - first token) /
 * (tokens - 1)); ratio = pipeline tokens/s / engine tokens/s; overhead % = (1 - ratio) * 100. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "eng_service.h"
#include "om_client.h"
#include "om_time.h"

#define PB_MAX_LEVELS 16
#define PB_MAX_REPEAT 15
#define PB_MAX_PROCS 8 /* daemons of `omnipipe up` whose CPU time is reported */
#define PB_DEADLINE_MS (3600ull * 1000ull) /* per request; the benchmark must not time out on CPU */

typedef struct pb_opts {
    const char *model;         /* checkpoint dir */
    const char *backend;       /* "cpu" | "cuda" */
    const char *load_format;   /* "auto" | "dummy" */
    const char *threads;       /* CPU engine threads (string, passed to `up`); NULL = engine default */
    const char *kv_blocks;     /* NULL = engine default */
    const char *mbt;           /* max batch tokens; NULL = engine default */
    const char *runtime_dir;   /* attach to running daemons; NULL = start `omnipipe up` */
    const char *omnipipe;      /* path of the omnipipe binary; NULL = next to this one */
    const char *log_level;     /* daemons' --log-level */
    const char *json_path;     /* NULL = no JSON */
    unsigned ready_timeout_s;
    uint32_t levels[PB_MAX_LEVELS]; /* concurrencies */
    size_t n_levels;
    uint32_t prompt_len;       /* P tokens */
    uint32_t gen_len;          /* N tokens */
    uint32_t clients;          /* max client threads per level */
    uint32_t repeat;           /* runs per level */
    bool skip_engine, skip_pipeline;
    bool interleave;           /* alternate engine / pipeline runs with both loaded (default on cpu) */
    int32_t id_lo, id_hi;      /* prompt ids drawn from [id_lo, id_hi) */
} pb_opts_t;

/* one request's timeline; times in ns on CLOCK_MONOTONIC */
typedef struct pb_req {
    uint64_t t_submit, t_first, t_end;
    uint32_t n_tokens;         /* generated tokens */
    bool ok;                   /* finished with FINISH_LENGTH and n_tokens == N */
    char err[160];             /* why not, when !ok */
} pb_req_t;

/* the figures of one run of one level */
typedef struct pb_fig {
    bool valid;
    uint32_t n_ok, n_req;
    uint64_t tokens;           /* generated, all requests */
    double wall_s;             /* first submit to last end */
    double tok_s;              /* tokens / wall_s */
    double ttft_p50_ms, ttft_p99_ms;
    double tpot_ms;            /* mean time per output token after the first */
    /* CPU time (user + system, ms) spent during the run: [0] this process (the engine alone, or the
     * client threads), [1 + i] daemon i of `omnipipe up` (pipeline only) */
    double cpu_ms[1 + PB_MAX_PROCS];
    char first_err[160];
} pb_fig_t;

static volatile sig_atomic_t s_interrupted;
static void s_on_signal(int sig) {
    (void)sig;
    s_interrupted = 1;
}


/* the prompt of request `index` of a path (salt): distinct for every (salt, index) */
static void s_prompt(const pb_opts_t *o, uint64_t salt, uint64_t index, int32_t *ids) {
    uint64_t st = salt * 0x100000001b3ull ^ index;
    uint32_t span = (uint32_t)(o->id_hi - o->id_lo);
    for (uint32_t i = 0; i < o->prompt_len; i++)
        ids[i] = o->id_lo + (int32_t)(bench_splitmix(&st) % span);
}

static void s_sampling(const pb_opts_t *o, uint32_t max_tokens, Omnipipe__SamplingParams *sp) {
    omnipipe__sampling_params__init(sp);
    sp->has_temperature = true;
    sp->temperature = 0.0f;
    sp->has_max_tokens = true;
    sp->max_tokens = max_tokens;
    sp->has_ignore_eos = true;
    sp->ignore_eos = true;
    (void)o;
}


/* nearest-rank percentile of sorted v[n] */

static void s_figures(const pb_opts_t *o, const pb_req_t *rq, uint32_t n, pb_fig_t *f) {
    memset(f, 0, sizeof *f);
    f->n_req = n;
    double *ttft = calloc(n ? n : 1, sizeof *ttft);
    if (!ttft)
        return;
    uint64_t t0 = UINT64_MAX, t1 = 0;
    double tpot_sum = 0;
    uint32_t n_tpot = 0;
    for (uint32_t i = 0; i < n; i++) {
        const pb_req_t *r = &rq[i];
        if (r->t_submit < t0)
            t0 = r->t_submit;
        if (r->t_end > t1)
            t1 = r->t_end;
        f->tokens += r->n_tokens;
        if (!r->ok) {
            if (!f->first_err[0])
                snprintf(f->first_err, sizeof f->first_err, "%s", r->err[0] ? r->err : "unknown");
            continue;
        }
        ttft[f->n_ok++] = (double)(r->t_first - r->t_submit) / 1e6;
        if (r->n_tokens > 1) {
            tpot_sum += (double)(r->t_end - r->t_first) / 1e6 / (double)(r->n_tokens - 1);
            n_tpot++;
        }
    }
    qsort(ttft, f->n_ok, sizeof *ttft, bench_cmp_double);
    f->ttft_p50_ms = bench_pct(ttft, f->n_ok, 50);
    f->ttft_p99_ms = bench_pct(ttft, f->n_ok, 99);
    f->tpot_ms = n_tpot ? tpot_sum / n_tpot : 0;
    f->wall_s = t1 > t0 ? (double)(t1 - t0) / 1e9 : 0;
    f->tok_s = f->wall_s > 0 ? (double)f->tokens / f->wall_s : 0;
    f->valid = f->n_ok == n && n > 0;
    free(ttft);
    (void)o;
}

/* ------------------------------------------------------------------------------------------------ */
/* engine alone */

static int s_engine_run(const pb_opts_t *o, eng_service_t *svc, uint64_t *next_id, uint32_t n_req,
                        uint32_t gen_len, pb_req_t *rq) {
    uint64_t base = *next_id;
    *next_id += n_req;
    int32_t *ids = malloc((size_t)o->prompt_len * sizeof *ids);
    if (!ids)
        return -ENOMEM;
    Omnipipe__SamplingParams sp;
    s_sampling(o, gen_len, &sp);
    memset(rq, 0, n_req * sizeof *rq);
    int r = 0;
    for (uint32_t i = 0; i < n_req && r == 0; i++) {
        s_prompt(o, 'e', base + i, ids);
        Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
        h.has_request_id = true;
        h.request_id = base + i;
        h.has_deadline_unix_ms = true;
        h.deadline_unix_ms = om_time_wall_ms() + PB_DEADLINE_MS;
        Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
        pr.ids = ids;
        pr.n_ids = o->prompt_len;
        pr.sampling = &sp;
        rq[i].t_submit = om_time_mono_ns();
        r = eng_service_submit(svc, &h, &pr, om_time_wall_ms());
        if (r < 0)
            fprintf(stderr, "pipeline_bench: engine: submit: %s\n", strerror(-r));
    }
    free(ids);
    while (r == 0 && eng_service_has_work(svc)) {
        const Omnipipe__TokenBatch *b = NULL;
        int rs = eng_service_step(svc, om_time_wall_ms(), &b);
        uint64_t now = om_time_mono_ns();
        for (size_t k = 0; b && k < b->n_seqs; k++) {
            const Omnipipe__SeqStep *st = b->seqs[k];
            if (st->request_id < base || st->request_id >= base + n_req)
                continue;
            pb_req_t *q = &rq[st->request_id - base];
            if (st->n_token_ids > 0 && q->n_tokens == 0)
                q->t_first = now;
            q->n_tokens += (uint32_t)st->n_token_ids;
            if (st->has_finish && st->finish != OMNIPIPE__FINISH_REASON__FINISH_NONE) {
                q->t_end = now;
                q->ok = st->finish == OMNIPIPE__FINISH_REASON__FINISH_LENGTH && q->n_tokens == gen_len;
                if (!q->ok)
                    snprintf(q->err, sizeof q->err, "engine: finish %d after %u tokens%s%s", (int)st->finish,
                             q->n_tokens, st->error && st->error->message ? ": " : "",
                             st->error && st->error->message ? st->error->message : "");
            }
        }
        if (rs < 0) {
            fprintf(stderr, "pipeline_bench: engine step failed: %s\n", strerror(-rs));
            eng_service_fail_all(svc, rs, "engine step failed");
        }
        if (s_interrupted) {
            eng_service_fail_all(svc, -ECANCELED, "interrupted");
            r = -EINTR;
        }
    }
    return r;
}

/* ------------------------------------------------------------------------------------------------ */
/* pipeline */

typedef struct pb_shared {
    const pb_opts_t *o;
    const char *rt;              /* runtime dir */
    pthread_barrier_t barrier;   /* clients connected -> all submit */
    uint32_t n_req, gen_len, n_threads;
    uint64_t base;               /* prompt index of request 0 */
    pb_req_t *rq;
} pb_shared_t;

typedef struct pb_thread {
    pb_shared_t *sh;
    uint32_t k;                  /* this thread handles requests i with i % n_threads == k */
    int rc;
} pb_thread_t;

static void *s_client_main(void *arg) {
    pb_thread_t *th = arg;
    pb_shared_t *sh = th->sh;
    const pb_opts_t *o = sh->o;
    om_client_opts_t co = {.runtime_dir = sh->rt, .default_deadline_ms = PB_DEADLINE_MS};
    om_client_t *c = NULL;
    char err[256];
    int r = om_client_new(&co, &c, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "pipeline_bench: client: %s\n", err);
    /* let both DEALERs connect and hear the stages' heartbeats before the clock starts */
    uint64_t until = om_time_mono_ms() + 400;
    om_client_event_t ev;
    while (c && om_time_mono_ms() < until)
        om_client_poll(c, 20, &ev);
    pthread_barrier_wait(&sh->barrier);
    if (r < 0) {
        for (uint32_t i = th->k; i < sh->n_req; i += sh->n_threads)
            snprintf(sh->rq[i].err, sizeof sh->rq[i].err, "client: %.140s", err);
        th->rc = r;
        return NULL;
    }
    uint32_t mine = 0;
    size_t map_cap = sh->n_req;
    int32_t *ids = malloc((size_t)o->prompt_len * sizeof *ids);
    /* a client's request ids count up from the first; map them back to our request index (+ 1) */
    uint64_t *idx_of_id = calloc(map_cap + 2, sizeof *idx_of_id);
    uint64_t first_id = 0;
    if (!ids || !idx_of_id) {
        th->rc = -ENOMEM;
        goto out;
    }
    Omnipipe__SamplingParams sp;
    s_sampling(o, sh->gen_len, &sp);
    for (uint32_t i = th->k; i < sh->n_req; i += sh->n_threads) {
        s_prompt(o, 'p', sh->base + i, ids);
        Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
        req.prompt_ids = ids;
        req.n_prompt_ids = o->prompt_len;
        req.sampling = &sp;
        req.has_stream = true;
        req.stream = true;
        uint64_t id = 0;
        sh->rq[i].t_submit = om_time_mono_ns();
        r = om_client_submit(c, &req, PB_DEADLINE_MS, &id);
        if (r < 0) {
            snprintf(sh->rq[i].err, sizeof sh->rq[i].err, "submit: %s", strerror(-r));
            sh->rq[i].t_end = om_time_mono_ns();
            continue;
        }
        if (mine == 0)
            first_id = id;
        if (id - first_id <= map_cap)
            idx_of_id[id - first_id] = (uint64_t)i + 1;
        mine++;
    }
    uint32_t done = 0;
    while (done < mine && !s_interrupted) {
        r = om_client_poll(c, 100, &ev);
        if (r < 0) {
            th->rc = r;
            break;
        }
        if (r == 0 || ev.request_id < first_id || ev.request_id - first_id > map_cap ||
            !idx_of_id[ev.request_id - first_id])
            continue;
        pb_req_t *q = &sh->rq[idx_of_id[ev.request_id - first_id] - 1];
        uint64_t now = om_time_mono_ns();
        if (ev.kind == OM_CLIENT_DELTA) {
            if (!q->t_first)
                q->t_first = now;
        } else if (ev.kind == OM_CLIENT_FINAL) {
            const Omnipipe__Final *f = ev.env->final;
            if (!q->t_first)
                q->t_first = now;
            q->t_end = now;
            q->n_tokens = (uint32_t)f->n_token_ids;
            q->ok = f->has_finish && f->finish == OMNIPIPE__FINISH_REASON__FINISH_LENGTH && q->n_tokens == sh->gen_len;
            if (!q->ok)
                snprintf(q->err, sizeof q->err, "pipeline: finish %d after %u tokens", (int)f->finish, q->n_tokens);
            done++;
        } else if (ev.kind == OM_CLIENT_STATUS) {
            const Omnipipe__Status *st = ev.env->status;
            q->t_end = now;
            snprintf(q->err, sizeof q->err, "pipeline: status %d from %s: %s", (int)st->code,
                     st->stage ? st->stage : "?", st->message ? st->message : "");
            done++;
        }
    }
out:
    free(idx_of_id);
    free(ids);
    om_client_free(c);
    return NULL;
}

static int s_pipeline_run(const pb_opts_t *o, const char *rt, uint64_t *next_id, uint32_t n_req, uint32_t gen_len,
                          pb_req_t *rq) {
    pb_shared_t sh = {.o = o, .rt = rt, .n_req = n_req, .gen_len = gen_len, .base = *next_id, .rq = rq};
    *next_id += n_req;
    sh.n_threads = n_req < o->clients ? n_req : o->clients;
    memset(rq, 0, n_req * sizeof *rq);
    pb_thread_t *th = calloc(sh.n_threads, sizeof *th);
    pthread_t *tid = calloc(sh.n_threads, sizeof *tid);
    if (!th || !tid || pthread_barrier_init(&sh.barrier, NULL, sh.n_threads) != 0) {
        free(th);
        free(tid);
        return -ENOMEM;
    }
    uint32_t started = 0;
    int r = 0;
    for (; started < sh.n_threads; started++) {
        th[started] = (pb_thread_t){.sh = &sh, .k = started};
        if ((r = -pthread_create(&tid[started], NULL, s_client_main, &th[started])) < 0)
            break;
    }
    if (started < sh.n_threads) { /* cannot happen in practice; the barrier would never open */
        fprintf(stderr, "pipeline_bench: cannot start client threads: %s\n", strerror(-r));
        exit(1);
    }
    for (uint32_t i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        if (th[i].rc < 0 && r == 0)
            r = th[i].rc;
    }
    pthread_barrier_destroy(&sh.barrier);
    free(th);
    free(tid);
    return r;
}

/* ------------------------------------------------------------------------------------------------ */
/* `omnipipe up` */

typedef struct pb_up {
    pid_t pid;                   /* 0 = not started */
    char rt[256];                /* its temp runtime dir */
    char out[300];               /* its stdout (for the ready line) */
    size_t n_procs;              /* daemons named in the ready line */
    char proc_name[PB_MAX_PROCS][32];
    pid_t proc_pid[PB_MAX_PROCS];
} pb_up_t;

/* CPU time of a process so far (user + system, ms); -1 when unreadable */
static double s_proc_cpu_ms(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* comm may hold spaces; fields 3.. follow the last ')' */
    unsigned long long ut, st;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

static double s_self_cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
}

/* snapshot: [0] this process, [1 + i] daemon i */
static void s_cpu_snapshot(const pb_up_t *u, double *ret) {
    ret[0] = s_self_cpu_ms();
    for (size_t i = 0; u && i < u->n_procs; i++)
        ret[1 + i] = s_proc_cpu_ms(u->proc_pid[i]);
}

/* the ready line: "... (pids decoder=1 mm_prep=2 engine-0=3 tokenizer=4)" */
static void s_parse_pids(pb_up_t *u, const char *line) {
    const char *p = strstr(line, "(pids ");
    u->n_procs = 0;
    if (!p)
        return;
    p += 6;
    while (*p && *p != ')' && u->n_procs < PB_MAX_PROCS) {
        char name[32];
        int pid, used = 0;
        if (sscanf(p, " %31[^= )]=%d%n", name, &pid, &used) != 2 || used == 0)
            break;
        snprintf(u->proc_name[u->n_procs], sizeof u->proc_name[0], "%s", name);
        u->proc_pid[u->n_procs++] = (pid_t)pid;
        p += used;
    }
}


static int s_up_start(const pb_opts_t *o, pb_up_t *u) {
    char bin[PATH_MAX + 16];
    if (o->omnipipe)
        snprintf(bin, sizeof bin, "%s", o->omnipipe);
    else {
        char dir[PATH_MAX];
        if (bench_self_dir(dir, sizeof dir) < 0)
            return -ENOENT;
        snprintf(bin, sizeof bin, "%s/omnipipe", dir);
    }
    if (access(bin, X_OK) < 0) {
        fprintf(stderr, "pipeline_bench: '%s' is missing or not executable (build omnipipe and the daemons "
                        "first, or pass --omnipipe PATH)\n", bin);
        return -ENOENT;
    }
    snprintf(u->rt, sizeof u->rt, "/tmp/pipebench-XXXXXX");
    if (!mkdtemp(u->rt))
        return -errno;
    snprintf(u->out, sizeof u->out, "%s/up.out", u->rt);
    char timeout[24];
    snprintf(timeout, sizeof timeout, "%u", o->ready_timeout_s);
    char *args[32];
    int n = 0;
    args[n++] = bin;
    args[n++] = "up";
    args[n++] = "--model";
    args[n++] = (char *)o->model;
    args[n++] = "--runtime-dir";
    args[n++] = u->rt;
    args[n++] = "--backend";
    args[n++] = (char *)o->backend;
    args[n++] = "--load-format";
    args[n++] = (char *)o->load_format;
    args[n++] = "--ready-timeout";
    args[n++] = timeout;
    if (o->threads) {
        args[n++] = "--threads";
        args[n++] = (char *)o->threads;
    }
    if (o->log_level) {
        args[n++] = "--log-level";
        args[n++] = (char *)o->log_level;
    }
    args[n] = NULL;
    fprintf(stderr, "pipeline_bench: starting");
    for (int i = 0; i < n; i++)
        fprintf(stderr, " %s", args[i]);
    if (o->kv_blocks)
        fprintf(stderr, " (OMNIPIPE_KV_BLOCKS=%s)", o->kv_blocks);
    if (o->mbt)
        fprintf(stderr, " (OMNIPIPE_MAX_BATCH_TOKENS=%s)", o->mbt);
    fprintf(stderr, "\n");
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        FILE *f = freopen(u->out, "w", stdout);
        if (!f)
            _exit(126);
        if (o->kv_blocks)
            setenv("OMNIPIPE_KV_BLOCKS", o->kv_blocks, 1);
        if (o->mbt)
            setenv("OMNIPIPE_MAX_BATCH_TOKENS", o->mbt, 1);
        execv(bin, args);
        fprintf(stderr, "pipeline_bench: cannot run '%s': %s\n", bin, strerror(errno));
        _exit(127);
    }
    u->pid = pid;
    uint64_t end = om_time_mono_ms() + (uint64_t)o->ready_timeout_s * 1000 + 5000;
    while (om_time_mono_ms() < end && !s_interrupted) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            u->pid = 0;
            fprintf(stderr, "pipeline_bench: omnipipe up ended before ready (status 0x%x)\n", st);
            return -ECHILD;
        }
        FILE *f = fopen(u->out, "r");
        char line[1024];
        bool ready = false;
        while (f && !ready && fgets(line, sizeof line, f))
            if (strstr(line, "ready")) {
                ready = true;
                s_parse_pids(u, line);
            }
        if (f)
            fclose(f);
        if (ready)
            return 0;
        usleep(100 * 1000);
    }
    fprintf(stderr, "pipeline_bench: omnipipe up not ready after %u s\n", o->ready_timeout_s);
    return -ETIMEDOUT;
}

static void s_up_stop(pb_up_t *u) {
    if (u->pid) {
        kill(u->pid, SIGTERM);
        uint64_t end = om_time_mono_ms() + 30000;
        int st;
        while (waitpid(u->pid, &st, WNOHANG) == 0) {
            if (om_time_mono_ms() > end) {
                fprintf(stderr, "pipeline_bench: omnipipe up did not stop within 30 s, killing it\n");
                kill(u->pid, SIGKILL);
                waitpid(u->pid, &st, 0);
                break;
            }
            usleep(50 * 1000);
        }
        u->pid = 0;
    }
    if (u->rt[0]) { /* the runtime dir holds only sockets and up.out */
        DIR *d = opendir(u->rt);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[600];
            snprintf(p, sizeof p, "%s/%s", u->rt, e->d_name);
            unlink(p);
        }
        if (d)
            closedir(d);
        rmdir(u->rt);
        u->rt[0] = '\0';
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* the two paths, run by level */

typedef struct pb_ctx {
    const pb_opts_t *o;
    pb_up_t up;                  /* `omnipipe up` (its daemons' pids stay known for the CPU table) */
    const char *rt;              /* the pipeline's runtime dir */
    eng_service_t *svc;          /* the engine alone */
    uint64_t next_id;            /* request ids / prompt indices, never reused */
    pb_req_t *rq;                /* (max concurrency) */
    pb_fig_t runs[2][PB_MAX_LEVELS][PB_MAX_REPEAT]; /* [0 engine alone, 1 pipeline][level][run] */
    uint32_t n_runs[2][PB_MAX_LEVELS];
    pb_fig_t fig[2][PB_MAX_LEVELS];                 /* the median runs */
} pb_ctx_t;

/* starts (or attaches to) the daemons and sends one short warm-up request */
static int s_pipe_setup(pb_ctx_t *x) {
    const pb_opts_t *o = x->o;
    int r = 0;
    x->rt = o->runtime_dir;
    if (!x->rt) {
        r = s_up_start(o, &x->up);
        x->rt = x->up.rt;
    }
    if (r == 0) { /* warm-up: first-call costs, CUDA graph capture */
        r = s_pipeline_run(o, x->rt, &x->next_id, 1, 8 < o->gen_len ? 8 : o->gen_len, x->rq);
        if (r == 0 && !x->rq[0].ok) {
            fprintf(stderr, "pipeline_bench: pipeline warm-up request failed: %s\n", x->rq[0].err);
            r = -EIO;
        }
    }
    return r;
}

static int s_pipe_one(pb_ctx_t *x, size_t l, uint32_t k) {
    const pb_opts_t *o = x->o;
    double c0[1 + PB_MAX_PROCS], c1[1 + PB_MAX_PROCS];
    s_cpu_snapshot(&x->up, c0);
    int r = s_pipeline_run(o, x->rt, &x->next_id, o->levels[l], o->gen_len, x->rq);
    s_cpu_snapshot(&x->up, c1);
    pb_fig_t *f = &x->runs[1][l][k];
    s_figures(o, x->rq, o->levels[l], f);
    for (size_t i = 0; i < 1 + x->up.n_procs; i++)
        f->cpu_ms[i] = c0[i] >= 0 && c1[i] >= 0 ? c1[i] - c0[i] : -1;
    x->n_runs[1][l] = k + 1;
    fprintf(stderr, "pipeline_bench: pipeline C=%u run %u: %.1f tok/s, TTFT p50 %.1f ms%s%s\n", o->levels[l], k + 1,
            f->tok_s, f->ttft_p50_ms, f->valid ? "" : ", FAILED: ", f->first_err);
    return r;
}

/* loads the engine in process and runs one short warm-up request */
static int s_eng_setup(pb_ctx_t *x) {
    const pb_opts_t *o = x->o;
    if (o->runtime_dir && strcmp(o->backend, "cuda") == 0)
        fprintf(stderr, "pipeline_bench: warning: the attached daemons still hold GPU memory; the in-process "
                        "engine may get less KV (pass --kv-blocks to size both alike)\n");
    eng_service_opts_t so = {.model_dir = o->model, .backend = o->backend, .load_format = o->load_format,
                             .engine_id = "pipeline_bench"};
    if (o->threads)
        so.n_threads = atoi(o->threads);
    if (o->kv_blocks)
        so.kv_blocks = strtoull(o->kv_blocks, NULL, 10);
    if (o->mbt)
        so.max_batch_tokens = (uint32_t)strtoul(o->mbt, NULL, 10);
    char err[512] = "";
    int r = eng_service_new(&so, NULL, NULL, &x->svc, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "pipeline_bench: loading '%s' on %s: %s\n", o->model, o->backend, err);
        return r;
    }
    r = s_engine_run(o, x->svc, &x->next_id, 1, 8 < o->gen_len ? 8 : o->gen_len, x->rq);
    if (r == 0 && !x->rq[0].ok) {
        fprintf(stderr, "pipeline_bench: engine warm-up request failed: %s\n", x->rq[0].err);
        r = -EIO;
    }
    return r;
}

static int s_eng_one(pb_ctx_t *x, size_t l, uint32_t k) {
    const pb_opts_t *o = x->o;
    double c0 = s_self_cpu_ms();
    int r = s_engine_run(o, x->svc, &x->next_id, o->levels[l], o->gen_len, x->rq);
    double c1 = s_self_cpu_ms();
    pb_fig_t *f = &x->runs[0][l][k];
    s_figures(o, x->rq, o->levels[l], f);
    f->cpu_ms[0] = c1 - c0;
    x->n_runs[0][l] = k + 1;
    fprintf(stderr, "pipeline_bench: engine   C=%u run %u: %.1f tok/s, TTFT p50 %.1f ms%s%s\n", o->levels[l], k + 1,
            f->tok_s, f->ttft_p50_ms, f->valid ? "" : ", FAILED: ", f->first_err);
    return r;
}

/* ------------------------------------------------------------------------------------------------ */

/* vocab_size from config.json (top level, text_config or thinker_config.text_config) */

static int s_parse_levels(const char *s, pb_opts_t *o) {
    o->n_levels = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || errno || v == 0 || v > 4096 || (*end && *end != ',') || o->n_levels == PB_MAX_LEVELS)
            return -EINVAL;
        o->levels[o->n_levels++] = (uint32_t)v;
        s = *end ? end + 1 : end;
    }
    return o->n_levels ? 0 : -EINVAL;
}


static void s_usage(FILE *f) {
    fprintf(f, "usage: pipeline_bench --model DIR [--backend cpu|cuda] [--load-format auto|dummy]\n"
               "         [--threads N] [--kv-blocks N] [--max-batch-tokens N]\n"
               "         [--concurrency 1,8,32,128] [--prompt-len P (128)] [--gen-len N (128)]\n"
               "         [--clients K (16)] [--repeat R (1)] [--runtime-dir D (attach)]\n"
               "         [--omnipipe PATH] [--log-level L (err)] [--ready-timeout S (600)]\n"
               "         [--skip-engine] [--skip-pipeline] [--interleave | --sequential] [--json FILE]\n");
}

/* the median run (by tokens/s) of r runs */
static pb_fig_t s_median(pb_fig_t *runs, uint32_t r) {
    pb_fig_t tmp[PB_MAX_REPEAT];
    memcpy(tmp, runs, r * sizeof *tmp);
    for (uint32_t i = 1; i < r; i++) /* insertion sort by tok_s */
        for (uint32_t j = i; j > 0 && tmp[j].tok_s < tmp[j - 1].tok_s; j--) {
            pb_fig_t t = tmp[j];
            tmp[j] = tmp[j - 1];
            tmp[j - 1] = t;
        }
    for (uint32_t i = 0; i < r; i++) /* an invalid run taints the level */
        if (!runs[i].valid)
            return runs[i];
    return tmp[r / 2];
}

static json_t *s_fig_json(const pb_fig_t *f) {
    if (f->n_req == 0)
        return json_null();
    return json_pack("{s:b,s:i,s:i,s:I,s:f,s:f,s:f,s:f,s:f,s:s}", "valid", f->valid, "requests", (int)f->n_req,
                     "ok", (int)f->n_ok, "tokens", (json_int_t)f->tokens, "wall_s", f->wall_s, "tok_s", f->tok_s,
                     "ttft_p50_ms", f->ttft_p50_ms, "ttft_p99_ms", f->ttft_p99_ms, "tpot_ms", f->tpot_ms,
                     "error", f->first_err);
}

int main(int argc, char **argv) {
    enum {
        O_MODEL = 1000, O_BACKEND, O_LF, O_THREADS, O_KV, O_MBT, O_CONC, O_PROMPT, O_GEN, O_CLIENTS, O_REPEAT,
        O_RT, O_OMNIPIPE, O_LOG, O_READY, O_SKIP_ENG, O_SKIP_PIPE, O_JSON, O_INTERLEAVE, O_SEQUENTIAL, O_HELP,
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, O_MODEL},
        {"backend", required_argument, NULL, O_BACKEND},
        {"load-format", required_argument, NULL, O_LF},
        {"threads", required_argument, NULL, O_THREADS},
        {"kv-blocks", required_argument, NULL, O_KV},
        {"max-batch-tokens", required_argument, NULL, O_MBT},
        {"concurrency", required_argument, NULL, O_CONC},
        {"prompt-len", required_argument, NULL, O_PROMPT},
        {"gen-len", required_argument, NULL, O_GEN},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"repeat", required_argument, NULL, O_REPEAT},
        {"runtime-dir", required_argument, NULL, O_RT},
        {"omnipipe", required_argument, NULL, O_OMNIPIPE},
        {"log-level", required_argument, NULL, O_LOG},
        {"ready-timeout", required_argument, NULL, O_READY},
        {"skip-engine", no_argument, NULL, O_SKIP_ENG},
        {"skip-pipeline", no_argument, NULL, O_SKIP_PIPE},
        {"json", required_argument, NULL, O_JSON},
        {"interleave", no_argument, NULL, O_INTERLEAVE},
        {"sequential", no_argument, NULL, O_SEQUENTIAL},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    pb_opts_t o = {.backend = "cpu", .load_format = "auto", .log_level = "err", .ready_timeout_s = 600,
                   .prompt_len = 128, .gen_len = 128, .clients = 16, .repeat = 1,
                   .levels = {1, 8, 32, 128}, .n_levels = 4};
    uint32_t u32;
    int c, order = -1; /* -1 = by backend */
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: o.model = optarg; break;
        case O_BACKEND: o.backend = optarg; break;
        case O_LF: o.load_format = optarg; break;
        case O_THREADS:
            if (bench_parse_u32("pipeline_bench", "threads", optarg, 0, 4096, &u32) < 0)
                return 2;
            o.threads = optarg;
            break;
        case O_KV:
            if (bench_parse_u32("pipeline_bench", "kv-blocks", optarg, 1, UINT32_MAX, &u32) < 0)
                return 2;
            o.kv_blocks = optarg;
            break;
        case O_MBT:
            if (bench_parse_u32("pipeline_bench", "max-batch-tokens", optarg, 1, 1u << 24, &u32) < 0)
                return 2;
            o.mbt = optarg;
            break;
        case O_CONC:
            if (s_parse_levels(optarg, &o) < 0) {
                fprintf(stderr, "pipeline_bench: --concurrency: expected up to %d comma-separated counts in "
                                "1..4096, got '%s'\n", PB_MAX_LEVELS, optarg);
                return 2;
            }
            break;
        case O_PROMPT:
            if (bench_parse_u32("pipeline_bench", "prompt-len", optarg, 1, 1u << 20, &o.prompt_len) < 0)
                return 2;
            break;
        case O_GEN:
            if (bench_parse_u32("pipeline_bench", "gen-len", optarg, 1, 1u << 20, &o.gen_len) < 0)
                return 2;
            break;
        case O_CLIENTS:
            if (bench_parse_u32("pipeline_bench", "clients", optarg, 1, 1024, &o.clients) < 0)
                return 2;
            break;
        case O_REPEAT:
            if (bench_parse_u32("pipeline_bench", "repeat", optarg, 1, PB_MAX_REPEAT, &o.repeat) < 0)
                return 2;
            break;
        case O_RT: o.runtime_dir = optarg; break;
        case O_OMNIPIPE: o.omnipipe = optarg; break;
        case O_LOG: o.log_level = optarg; break;
        case O_READY:
            if (bench_parse_u32("pipeline_bench", "ready-timeout", optarg, 1, 86400, &o.ready_timeout_s) < 0)
                return 2;
            break;
        case O_SKIP_ENG: o.skip_engine = true; break;
        case O_SKIP_PIPE: o.skip_pipeline = true; break;
        case O_JSON: o.json_path = optarg; break;
        case O_INTERLEAVE: order = 1; break;
        case O_SEQUENTIAL: order = 0; break;
        case O_HELP: s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (!o.model || optind < argc) {
        fprintf(stderr, "pipeline_bench: --model DIR is required (and no positional arguments)\n");
        s_usage(stderr);
        return 2;
    }
    if (strcmp(o.backend, "cpu") != 0 && strcmp(o.backend, "cuda") != 0) {
        fprintf(stderr, "pipeline_bench: --backend: expected cpu or cuda, got '%s'\n", o.backend);
        return 2;
    }
    if (strcmp(o.load_format, "auto") != 0 && strcmp(o.load_format, "dummy") != 0) {
        fprintf(stderr, "pipeline_bench: --load-format: expected auto or dummy, got '%s'\n", o.load_format);
        return 2;
    }
    o.interleave = order < 0 ? strcmp(o.backend, "cpu") == 0 : order == 1;
    int64_t vocab;
    if (bench_vocab_size("pipeline_bench", o.model, &vocab) < 0)
        return 1;
    /* ordinary tokens only: Qwen's special tokens start at 151643 */
    o.id_hi = (int32_t)(vocab < 151643 ? vocab : 151643);
    o.id_lo = o.id_hi > 4096 ? 1000 : 0;
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    signal(SIGPIPE, SIG_IGN);

    uint32_t max_c = 0;
    for (size_t i = 0; i < o.n_levels; i++)
        max_c = o.levels[i] > max_c ? o.levels[i] : max_c;
    static pb_ctx_t x;
    x.o = &o;
    x.next_id = 1;
    x.rq = calloc(max_c, sizeof *x.rq);
    if (!x.rq)
        return 1;
    int rc = 0;
    printf("# pipeline_bench: model %s, backend %s, load-format %s, threads %s, prompt %u, gen %u, "
           "clients <= %u, repeat %u, %s\n",
           o.model, o.backend, o.load_format, o.threads ? o.threads : "default", o.prompt_len, o.gen_len, o.clients,
           o.repeat, o.interleave ? "interleaved" : "sequential");
    fflush(stdout);

    /* interleaved (default on cpu): daemons and the in-process engine both loaded, runs alternate
     * engine / pipeline so that drift in machine load hits both alike. Sequential (default on cuda):
     * pipeline first, stopped, then the engine alone, so each gets the whole device. */
    int r = 0;
    if (o.interleave) {
        if (!o.skip_pipeline)
            r = s_pipe_setup(&x);
        if (r == 0 && !o.skip_engine && !s_interrupted)
            r = s_eng_setup(&x);
        for (size_t l = 0; l < o.n_levels && r == 0 && !s_interrupted; l++)
            for (uint32_t k = 0; k < o.repeat && r == 0 && !s_interrupted; k++) {
                if (!o.skip_engine)
                    r = s_eng_one(&x, l, k);
                if (r == 0 && !o.skip_pipeline && !s_interrupted)
                    r = s_pipe_one(&x, l, k);
            }
    } else {
        if (!o.skip_pipeline) {
            r = s_pipe_setup(&x);
            for (size_t l = 0; l < o.n_levels && r == 0 && !s_interrupted; l++)
                for (uint32_t k = 0; k < o.repeat && r == 0 && !s_interrupted; k++)
                    r = s_pipe_one(&x, l, k);
            if (!o.runtime_dir)
                s_up_stop(&x.up);
        }
        if (r == 0 && !o.skip_engine && !s_interrupted) {
            r = s_eng_setup(&x);
            for (size_t l = 0; l < o.n_levels && r == 0 && !s_interrupted; l++)
                for (uint32_t k = 0; k < o.repeat && r == 0 && !s_interrupted; k++)
                    r = s_eng_one(&x, l, k);
        }
    }
    x.svc = eng_service_free(x.svc);
    if (!o.runtime_dir)
        s_up_stop(&x.up);
    if (r < 0) {
        fprintf(stderr, "pipeline_bench: stopped early (%s; see above); levels without figures show '-'\n",
                strerror(-r));
        rc = 1;
    }
    for (int path = 0; path < 2; path++)
        for (size_t l = 0; l < o.n_levels; l++)
            if (x.n_runs[path][l])
                x.fig[path][l] = s_median(x.runs[path][l], x.n_runs[path][l]);
    const pb_up_t *up = &x.up;
    pb_fig_t (*fig)[PB_MAX_LEVELS] = x.fig;

    printf("#    C | engine tok/s | pipeline tok/s |  ratio | overhead | TTFT p50/p99 engine ms | TTFT p50/p99 "
           "pipeline ms | TPOT engine/pipeline ms\n");
    json_t *jl = json_array();
    for (size_t l = 0; l < o.n_levels; l++) {
        const pb_fig_t *e = &fig[0][l], *p = &fig[1][l];
        bool both = e->valid && p->valid && e->tok_s > 0;
        double ratio = both ? p->tok_s / e->tok_s : 0;
        char rs[16] = "-", os[16] = "-";
        if (both) {
            snprintf(rs, sizeof rs, "%.4f", ratio);
            snprintf(os, sizeof os, "%+.2f%%", (1.0 - ratio) * 100.0);
        }
        char et[16] = "-", pt[16] = "-", ett[32] = "-", ptt[32] = "-", tp[32] = "-";
        if (e->valid) {
            snprintf(et, sizeof et, "%.1f", e->tok_s);
            snprintf(ett, sizeof ett, "%.1f / %.1f", e->ttft_p50_ms, e->ttft_p99_ms);
        }
        if (p->valid) {
            snprintf(pt, sizeof pt, "%.1f", p->tok_s);
            snprintf(ptt, sizeof ptt, "%.1f / %.1f", p->ttft_p50_ms, p->ttft_p99_ms);
        }
        char etp[16] = "-", ptp[16] = "-";
        if (e->valid)
            snprintf(etp, sizeof etp, "%.2f", e->tpot_ms);
        if (p->valid)
            snprintf(ptp, sizeof ptp, "%.2f", p->tpot_ms);
        snprintf(tp, sizeof tp, "%s / %s", etp, ptp);
        printf("%6u | %12s | %14s | %6s | %8s | %22s | %24s | %s\n", o.levels[l], et, pt, rs, os, ett, ptt, tp);
        if (e->n_req && !e->valid)
            printf("#   C=%u engine: %u of %u requests failed: %s\n", o.levels[l], e->n_req - e->n_ok, e->n_req,
                   e->first_err);
        if (p->n_req && !p->valid)
            printf("#   C=%u pipeline: %u of %u requests failed: %s\n", o.levels[l], p->n_req - p->n_ok, p->n_req,
                   p->first_err);
        json_t *row = json_pack("{s:i,s:o,s:o}", "concurrency", (int)o.levels[l], "engine", s_fig_json(e),
                                "pipeline", s_fig_json(p));
        if (row && both) {
            json_object_set_new(row, "ratio", json_real(ratio));
            json_object_set_new(row, "overhead_pct", json_real((1.0 - ratio) * 100.0));
        }
        if (row)
            json_array_append_new(jl, row);
    }
    /* where the CPU goes: the engine alone against each daemon and the client threads */
    if (!o.skip_pipeline || !o.skip_engine) {
        printf("# CPU time per run, ms (user + system), and us per generated token\n#    C | %20s", "engine alone");
        for (size_t i = 0; i < up->n_procs; i++)
            printf(" | %20s", up->proc_name[i]);
        printf(" | %20s\n", "pipeline clients");
        for (size_t l = 0; l < o.n_levels; l++) {
            const pb_fig_t *e = &fig[0][l], *p = &fig[1][l];
            printf("%6u", o.levels[l]);
            double v[2 + PB_MAX_PROCS], tok[2 + PB_MAX_PROCS];
            size_t n = 0;
            v[n] = e->n_req ? e->cpu_ms[0] : -1, tok[n++] = (double)e->tokens;
            for (size_t i = 0; i < up->n_procs; i++)
                v[n] = p->n_req ? p->cpu_ms[1 + i] : -1, tok[n++] = (double)p->tokens;
            v[n] = p->n_req ? p->cpu_ms[0] : -1, tok[n++] = (double)p->tokens;
            for (size_t i = 0; i < n; i++) {
                char cell[40] = "-";
                if (v[i] >= 0 && tok[i] > 0)
                    snprintf(cell, sizeof cell, "%.0f (%.1f us/tok)", v[i], v[i] * 1000.0 / tok[i]);
                printf(" | %20s", cell);
            }
            printf("\n");
            json_t *row = json_array_get(jl, l), *cpu = json_object();
            if (row && cpu) {
                if (e->n_req)
                    json_object_set_new(cpu, "engine_alone", json_real(e->cpu_ms[0]));
                for (size_t i = 0; p->n_req && i < up->n_procs; i++)
                    json_object_set_new(cpu, up->proc_name[i], json_real(p->cpu_ms[1 + i]));
                if (p->n_req)
                    json_object_set_new(cpu, "pipeline_clients", json_real(p->cpu_ms[0]));
                json_object_set_new(row, "cpu_ms", cpu);
            } else
                json_decref(cpu);
        }
    }
    fflush(stdout);
    if (o.json_path) {
        json_t *top = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:o}", "model", o.model, "backend", o.backend,
                                "load_format", o.load_format, "threads", o.threads ? o.threads : "default",
                                "prompt_len", (int)o.prompt_len, "gen_len", (int)o.gen_len, "clients",
                                (int)o.clients, "repeat", (int)o.repeat, "levels", jl);
        jl = NULL;
        if (!top || json_dump_file(top, o.json_path, JSON_INDENT(2)) < 0) {
            fprintf(stderr, "pipeline_bench: cannot write %s\n", o.json_path);
            rc = 1;
        }
        json_decref(top);
    }
    json_decref(jl);
    free(x.rq);
    return s_interrupted ? 130 : rc;
}
