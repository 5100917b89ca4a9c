/* replica_bench.c: engine replicas (one engine_svc per GPU, `omnipipe up --engines N`, engine i on
 * device i) measured through the whole pipeline, and the fault drill of issue #6: kill one engine under
 * load. Uses om_client like any client; starts and stops `omnipipe up` itself on a temp runtime dir.
 *
 *   replica_bench --model DIR [--backend cpu|cuda] [--load-format auto|dummy] [--threads N]
 *                 [--engines 1,2] [--concurrency 64,256] [--prompt-len 512] [--gen-len 128]
 *                 [--clients 16] [--repeat 1] [--heartbeat-ms N] [--deadline-ms 600000]
 *                 [--omnipipe PATH] [--log-level L] [--ready-timeout S] [--json FILE]
 *                 [--tensor-parallel N]   (each engine split over N GPUs: replicas against a split)
 *   replica_bench --fault --model DIR ... [--fault-concurrency 64] [--kill-engine engine-0]
 *                 [--kill-after N] [--after-rejoin N] [--rejoin-timeout S] [--restart-delay-ms N]
 *
 * Scaling mode: for each engine count N (in the order given), `omnipipe up --engines N` is started, then
 * for each concurrency C, C requests are submitted at once over K = min(C, --clients) client threads
 * (one om_client each, streaming): a P-token prompt of pseudo-random ids (ChatRequest.prompt_ids, all
 * distinct so the prefix cache does not help), greedy, ignore_eos, exactly G new tokens. Then `up` is
 * stopped (the GPUs are free for the next N). Figures per (N, C), the median of --repeat runs by tok/s:
 *   tok/s        all generated tokens / (last request end - first submit): the aggregate figure
 *   x vs 1       tok/s / tok/s of the N = 1 row at the same C (when N = 1 was run)
 *   TTFT p50/p99 submit to the first TextDelta; p99 x vs 1 as for tok/s
 *   TPOT         mean over requests of (end - first token) / (tokens - 1)
 *   per engine   requests finished by each engine (Final's header.engine_id, set by mm_prep's router)
 *
 * Fault mode (--fault): `omnipipe up --engines N (default 2) --restart on-failure` and a closed loop of
 * one client keeping --fault-concurrency streaming requests in flight (a finished one is replaced at once).
 * Once --kill-after requests have finished OK (default: the concurrency) and some request is streaming,
 * the engine --kill-engine is sent SIGKILL. The loop goes on; `up` restarts the engine (its backoff), the
 * bench waits for up's "ready again" line (at most --rejoin-timeout s), and stops submitting once the
 * restarted engine has finished --after-rejoin requests (default 4) submitted after it rejoined; then
 * it waits for the rest (at most the deadline + 5 s). Reported: the requests in flight at the kill by
 * outcome (finished OK / Status UNAVAILABLE retryable / any other Status / no answer), the longest time
 * after the kill with no request finishing OK, the largest TTFT of requests submitted between kill and
 * rejoin, and requests finished per engine in each phase. Exit 0 only if: every request in flight at
 * the kill ended OK or retryable UNAVAILABLE and at least one ended retryable (the killed engine had
 * work), no request anywhere got another Status or no answer, the longest gap is below --deadline-ms,
 * and the restarted engine finished requests again. The per-request deadline defaults to 60 s here.
 *
 * Not a test of speed: the figures are printed (and written as JSON); the fault mode's exit status is a
 * behaviour check, which tests/CMakeLists.txt runs on CPU engines (replica_fault). */
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "om_client.h"
#include "om_time.h"

#define RB_MAX_LIST 8      /* engine counts / concurrencies */
#define RB_MAX_REPEAT 9
#define RB_MAX_PROCS 16    /* daemons named in up's ready line */
#define RB_MAX_ENG 16      /* distinct engine ids counted */

typedef struct rb_opts {
    const char *model;           /* checkpoint dir (with tokenizer files) */
    const char *backend;         /* "cpu" | "cuda" */
    const char *load_format;     /* "auto" | "dummy" */
    const char *threads;         /* CPU engine threads, passed to `up`; NULL = default */
    const char *heartbeat_ms;    /* daemons' --heartbeat-ms; NULL = default */
    const char *restart_delay;   /* fault: up's --restart-delay-ms; NULL = default */
    const char *tp;              /* up's --tensor-parallel (GPUs per engine); NULL = 1 */
    const char *omnipipe;        /* omnipipe binary; NULL = next to this one */
    const char *log_level;       /* daemons' --log-level */
    const char *json_path;       /* NULL = no JSON */
    const char *kill_engine;     /* fault: the engine to kill ("engine-0") */
    unsigned ready_timeout_s, rejoin_timeout_s;
    uint32_t engines[RB_MAX_LIST]; /* engine counts */
    size_t n_engines;
    uint32_t levels[RB_MAX_LIST];  /* concurrencies */
    size_t n_levels;
    uint32_t prompt_len, gen_len, clients, repeat;
    uint64_t deadline_ms;        /* per request, relative; 0 = mode default */
    bool fault;
    uint32_t fault_conc;         /* fault: requests kept in flight */
    uint32_t kill_after;         /* fault: OK finals before the kill; 0 = fault_conc */
    uint32_t after_rejoin;       /* fault: OK finals of the restarted engine before stopping */
    int32_t id_lo, id_hi;        /* prompt ids drawn from [id_lo, id_hi) */
} rb_opts_t;

static volatile sig_atomic_t s_interrupted;
static void s_on_signal(int sig) {
    (void)sig;
    s_interrupted = 1;
}


/* the prompt of request `index`: distinct for every index */
static void s_prompt(const rb_opts_t *o, uint64_t index, int32_t *ids) {
    uint64_t st = 0x5eed0000ull ^ (index * 0x100000001b3ull);
    uint32_t span = (uint32_t)(o->id_hi - o->id_lo);
    for (uint32_t i = 0; i < o->prompt_len; i++)
        ids[i] = o->id_lo + (int32_t)(bench_splitmix(&st) % span);
}

static void s_sampling(uint32_t max_tokens, Omnipipe__SamplingParams *sp) {
    omnipipe__sampling_params__init(sp);
    sp->has_temperature = true;
    sp->temperature = 0.0f;
    sp->has_max_tokens = true;
    sp->max_tokens = max_tokens;
    sp->has_ignore_eos = true;
    sp->ignore_eos = true;
}


/* nearest-rank percentile of sorted v[n] */

/* per-engine counters: names as mm_prep reports them */
typedef struct rb_eng_count {
    size_t n;
    char name[RB_MAX_ENG][32];
    uint32_t count[RB_MAX_ENG];
} rb_eng_count_t;

static void s_count_engine(rb_eng_count_t *ec, const char *name) {
    if (!name || !name[0])
        name = "?";
    for (size_t i = 0; i < ec->n; i++)
        if (strcmp(ec->name[i], name) == 0) {
            ec->count[i]++;
            return;
        }
    if (ec->n == RB_MAX_ENG)
        return;
    snprintf(ec->name[ec->n], sizeof ec->name[0], "%s", name);
    ec->count[ec->n++] = 1;
}

static void s_engine_str(const rb_eng_count_t *ec, char *buf, size_t len) {
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < ec->n && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%s=%u", i ? " " : "", ec->name[i], ec->count[i]);
    if (!ec->n)
        snprintf(buf, len, "-");
}

/* ------------------------------------------------------------------------------------------------ */
/* `omnipipe up` */

typedef struct rb_up {
    pid_t pid;                   /* 0 = not running */
    char rt[256];                /* temp runtime dir */
    char out[300];               /* up's stdout (ready / restarted / ready again lines) */
    size_t n_procs;
    char proc_name[RB_MAX_PROCS][32];
    pid_t proc_pid[RB_MAX_PROCS];
} rb_up_t;

/* the ready line: "... (pids decoder=1 mm_prep=2 engine-0=3 tokenizer=4)" */
static void s_parse_pids(rb_up_t *u, const char *line) {
    const char *p = strstr(line, "(pids ");
    u->n_procs = 0;
    if (!p)
        return;
    p += 6;
    while (*p && *p != ')' && u->n_procs < RB_MAX_PROCS) {
        char name[32];
        int pid, used = 0;
        if (sscanf(p, " %31[^= )]=%d%n", name, &pid, &used) != 2 || used == 0)
            break;
        snprintf(u->proc_name[u->n_procs], sizeof u->proc_name[0], "%s", name);
        u->proc_pid[u->n_procs++] = (pid_t)pid;
        p += used;
    }
}

/* true when up's stdout has a line starting with prefix; the line is copied to ret */
static bool s_up_line(const rb_up_t *u, const char *prefix, char *ret, size_t len) {
    FILE *f = fopen(u->out, "r");
    char line[1024];
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f))
        if (strncmp(line, prefix, strlen(prefix)) == 0) {
            found = true;
            if (ret)
                snprintf(ret, len, "%s", line);
        }
    if (f)
        fclose(f);
    return found;
}


static int s_up_start(const rb_opts_t *o, uint32_t engines, bool restart, rb_up_t *u) {
    memset(u, 0, sizeof *u);
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
        fprintf(stderr, "replica_bench: '%s' is missing or not executable (build omnipipe and the daemons, or "
                        "pass --omnipipe PATH)\n", bin);
        return -ENOENT;
    }
    snprintf(u->rt, sizeof u->rt, "/tmp/replica-XXXXXX");
    if (!mkdtemp(u->rt))
        return -errno;
    snprintf(u->out, sizeof u->out, "%s/up.out", u->rt);
    char timeout[24], neng[24];
    snprintf(timeout, sizeof timeout, "%u", o->ready_timeout_s);
    snprintf(neng, sizeof neng, "%u", engines);
    char *args[40];
    int n = 0;
    args[n++] = bin;
    args[n++] = "up";
    args[n++] = "--model";
    args[n++] = (char *)o->model;
    args[n++] = "--runtime-dir";
    args[n++] = u->rt;
    args[n++] = "--engines";
    args[n++] = neng;
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
    if (o->heartbeat_ms) {
        args[n++] = "--heartbeat-ms";
        args[n++] = (char *)o->heartbeat_ms;
    }
    if (o->tp) {
        args[n++] = "--tensor-parallel";
        args[n++] = (char *)o->tp;
    }
    if (o->log_level) {
        args[n++] = "--log-level";
        args[n++] = (char *)o->log_level;
    }
    if (restart) {
        args[n++] = "--restart";
        args[n++] = "on-failure";
        if (o->restart_delay) {
            args[n++] = "--restart-delay-ms";
            args[n++] = (char *)o->restart_delay;
        }
    }
    args[n] = NULL;
    fprintf(stderr, "replica_bench: starting");
    for (int i = 0; i < n; i++)
        fprintf(stderr, " %s", args[i]);
    fprintf(stderr, "\n");
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        if (!freopen(u->out, "w", stdout))
            _exit(126);
        execv(bin, args);
        fprintf(stderr, "replica_bench: cannot run '%s': %s\n", bin, strerror(errno));
        _exit(127);
    }
    u->pid = pid;
    uint64_t end = om_time_mono_ms() + (uint64_t)o->ready_timeout_s * 1000 + 5000;
    while (om_time_mono_ms() < end && !s_interrupted) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            u->pid = 0;
            fprintf(stderr, "replica_bench: omnipipe up ended before ready (status 0x%x)\n", st);
            return -ECHILD;
        }
        char line[1024];
        if (s_up_line(u, "omnipipe: ready", line, sizeof line)) {
            s_parse_pids(u, line);
            return 0;
        }
        usleep(100 * 1000);
    }
    fprintf(stderr, "replica_bench: omnipipe up not ready after %u s\n", o->ready_timeout_s);
    return -ETIMEDOUT;
}

/* stops up (SIGTERM; SIGKILL after 60 s), prints its stdout to stderr, removes the runtime dir */
static void s_up_stop(rb_up_t *u) {
    if (u->pid) {
        kill(u->pid, SIGTERM);
        uint64_t end = om_time_mono_ms() + 60000;
        int st;
        while (waitpid(u->pid, &st, WNOHANG) == 0) {
            if (om_time_mono_ms() > end) {
                fprintf(stderr, "replica_bench: omnipipe up did not stop within 60 s, killing it\n");
                kill(u->pid, SIGKILL);
                waitpid(u->pid, &st, 0);
                break;
            }
            usleep(50 * 1000);
        }
        u->pid = 0;
    }
    if (u->rt[0]) {
        FILE *f = fopen(u->out, "r");
        char line[1024];
        while (f && fgets(line, sizeof line, f))
            fprintf(stderr, "up: %s", line);
        if (f)
            fclose(f);
        DIR *d = opendir(u->rt); /* only sockets and up.out */
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

static pid_t s_up_pid_of(const rb_up_t *u, const char *name) {
    for (size_t i = 0; i < u->n_procs; i++)
        if (strcmp(u->proc_name[i], name) == 0)
            return u->proc_pid[i];
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* scaling mode */

/* one request's timeline; times in ns on CLOCK_MONOTONIC */
typedef struct rb_req {
    uint64_t t_submit, t_first, t_end;
    uint32_t n_tokens;           /* generated */
    bool ok;                     /* FINISH_LENGTH with exactly gen_len tokens */
    char engine[32];             /* the engine that served it (Final's header.engine_id) */
    char err[160];               /* why not ok */
} rb_req_t;

typedef struct rb_fig {
    bool valid;                  /* every request ok */
    uint32_t n_ok, n_req;
    uint64_t tokens;
    double wall_s, tok_s, ttft_p50_ms, ttft_p99_ms, tpot_ms;
    rb_eng_count_t per_engine;   /* ok requests by engine */
    char first_err[160];
} rb_fig_t;

typedef struct rb_shared {
    const rb_opts_t *o;
    const char *rt;
    pthread_barrier_t barrier;
    uint32_t n_req, n_threads;
    uint64_t base;               /* prompt index of request 0 */
    rb_req_t *rq;
} rb_shared_t;

typedef struct rb_thread {
    rb_shared_t *sh;
    uint32_t k;                  /* handles requests i with i % n_threads == k */
    int rc;
} rb_thread_t;

static void *s_client_main(void *arg) {
    rb_thread_t *th = arg;
    rb_shared_t *sh = th->sh;
    const rb_opts_t *o = sh->o;
    om_client_opts_t co = {.runtime_dir = sh->rt, .default_deadline_ms = o->deadline_ms};
    om_client_t *c = NULL;
    char err[256];
    int r = om_client_new(&co, &c, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "replica_bench: client: %s\n", err);
    uint64_t until = om_time_mono_ms() + 400; /* connect and hear the stages before the clock starts */
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
    uint32_t mine = 0, done = 0;
    int32_t *ids = malloc((size_t)o->prompt_len * sizeof *ids);
    uint64_t *idx_of_id = calloc((size_t)sh->n_req + 2, sizeof *idx_of_id); /* id - first_id -> i + 1 */
    uint64_t first_id = 0;
    if (!ids || !idx_of_id) {
        th->rc = -ENOMEM;
        goto out;
    }
    Omnipipe__SamplingParams sp;
    s_sampling(o->gen_len, &sp);
    for (uint32_t i = th->k; i < sh->n_req; i += sh->n_threads) {
        s_prompt(o, sh->base + i, ids);
        Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
        req.prompt_ids = ids;
        req.n_prompt_ids = o->prompt_len;
        req.sampling = &sp;
        req.has_stream = true;
        req.stream = true;
        uint64_t id = 0;
        sh->rq[i].t_submit = om_time_mono_ns();
        r = om_client_submit(c, &req, o->deadline_ms, &id);
        if (r < 0) {
            snprintf(sh->rq[i].err, sizeof sh->rq[i].err, "submit: %s", strerror(-r));
            sh->rq[i].t_end = om_time_mono_ns();
            continue;
        }
        if (mine == 0)
            first_id = id;
        if (id - first_id <= sh->n_req)
            idx_of_id[id - first_id] = (uint64_t)i + 1;
        mine++;
    }
    while (done < mine && !s_interrupted) {
        r = om_client_poll(c, 100, &ev);
        if (r < 0) {
            th->rc = r;
            break;
        }
        if (r == 0 || ev.request_id < first_id || ev.request_id - first_id > sh->n_req ||
            !idx_of_id[ev.request_id - first_id])
            continue;
        rb_req_t *q = &sh->rq[idx_of_id[ev.request_id - first_id] - 1];
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
            q->ok = f->has_finish && f->finish == OMNIPIPE__FINISH_REASON__FINISH_LENGTH && q->n_tokens == o->gen_len;
            if (ev.env->header && ev.env->header->engine_id)
                snprintf(q->engine, sizeof q->engine, "%s", ev.env->header->engine_id);
            if (!q->ok)
                snprintf(q->err, sizeof q->err, "finish %d after %u tokens", (int)f->finish, q->n_tokens);
            done++;
        } else if (ev.kind == OM_CLIENT_STATUS) {
            const Omnipipe__Status *st = ev.env->status;
            q->t_end = now;
            snprintf(q->err, sizeof q->err, "status %d from %s: %.120s", (int)st->code, st->stage ? st->stage : "?",
                     st->message ? st->message : "");
            done++;
        }
    }
out:
    free(idx_of_id);
    free(ids);
    om_client_free(c);
    return NULL;
}

static int s_scale_run(const rb_opts_t *o, const char *rt, uint64_t *next_index, uint32_t n_req, rb_req_t *rq) {
    rb_shared_t sh = {.o = o, .rt = rt, .n_req = n_req, .base = *next_index, .rq = rq};
    *next_index += n_req;
    sh.n_threads = n_req < o->clients ? n_req : o->clients;
    memset(rq, 0, n_req * sizeof *rq);
    rb_thread_t *th = calloc(sh.n_threads, sizeof *th);
    pthread_t *tid = calloc(sh.n_threads, sizeof *tid);
    if (!th || !tid || pthread_barrier_init(&sh.barrier, NULL, sh.n_threads) != 0) {
        free(th);
        free(tid);
        return -ENOMEM;
    }
    int r = 0;
    for (uint32_t i = 0; i < sh.n_threads; i++) {
        th[i] = (rb_thread_t){.sh = &sh, .k = i};
        if ((r = -pthread_create(&tid[i], NULL, s_client_main, &th[i])) < 0) {
            fprintf(stderr, "replica_bench: cannot start client threads: %s\n", strerror(-r));
            exit(1); /* the barrier would never open */
        }
    }
    for (uint32_t i = 0; i < sh.n_threads; i++) {
        pthread_join(tid[i], NULL);
        if (th[i].rc < 0 && r == 0)
            r = th[i].rc;
    }
    pthread_barrier_destroy(&sh.barrier);
    free(th);
    free(tid);
    return r;
}

static void s_figures(const rb_req_t *rq, uint32_t n, rb_fig_t *f) {
    memset(f, 0, sizeof *f);
    f->n_req = n;
    double *ttft = calloc(n ? n : 1, sizeof *ttft);
    if (!ttft)
        return;
    uint64_t t0 = UINT64_MAX, t1 = 0;
    double tpot_sum = 0;
    uint32_t n_tpot = 0;
    for (uint32_t i = 0; i < n; i++) {
        const rb_req_t *r = &rq[i];
        if (r->t_submit < t0)
            t0 = r->t_submit;
        if (r->t_end > t1)
            t1 = r->t_end;
        f->tokens += r->n_tokens;
        if (!r->ok) {
            if (!f->first_err[0])
                snprintf(f->first_err, sizeof f->first_err, "%s", r->err[0] ? r->err : "no answer");
            continue;
        }
        s_count_engine(&f->per_engine, r->engine);
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
}

static int s_scale(const rb_opts_t *o) {
    static rb_fig_t fig[RB_MAX_LIST][RB_MAX_LIST]; /* [engine count][level] */
    static rb_fig_t runs[RB_MAX_REPEAT];
    uint32_t max_c = 0;
    for (size_t l = 0; l < o->n_levels; l++)
        max_c = o->levels[l] > max_c ? o->levels[l] : max_c;
    rb_req_t *rq = calloc(max_c, sizeof *rq);
    if (!rq)
        return 1;
    printf("# replica_bench: model %s, backend %s, load-format %s, prompt %u, gen %u, clients <= %u, repeat %u\n",
           o->model, o->backend, o->load_format, o->prompt_len, o->gen_len, o->clients, o->repeat);
    fflush(stdout);
    uint64_t next_index = 0;
    int rc = 0;
    for (size_t e = 0; e < o->n_engines && !s_interrupted; e++) {
        rb_up_t up;
        int r = s_up_start(o, o->engines[e], false, &up);
        if (r < 0) {
            fprintf(stderr, "replica_bench: %u engine(s): omnipipe up failed: %s\n", o->engines[e], strerror(-r));
            s_up_stop(&up);
            rc = 1;
            continue;
        }
        for (size_t l = 0; l < o->n_levels && !s_interrupted; l++) {
            uint32_t k;
            for (k = 0; k < o->repeat && !s_interrupted; k++) {
                r = s_scale_run(o, up.rt, &next_index, o->levels[l], rq);
                s_figures(rq, o->levels[l], &runs[k]);
                fprintf(stderr, "replica_bench: engines %u C %u run %u: %.1f tok/s, TTFT p50 %.1f p99 %.1f ms, "
                                "%u/%u ok%s%s\n", o->engines[e], o->levels[l], k, runs[k].tok_s,
                        runs[k].ttft_p50_ms, runs[k].ttft_p99_ms, runs[k].n_ok, runs[k].n_req,
                        runs[k].valid ? "" : ": ", runs[k].valid ? "" : runs[k].first_err);
                if (r < 0 || !runs[k].valid) {
                    k++;
                    break;
                }
            }
            /* the median by tok/s; an invalid run taints the cell */
            for (uint32_t i = 1; i < k; i++)
                for (uint32_t j = i; j > 0 && runs[j].tok_s < runs[j - 1].tok_s; j--) {
                    rb_fig_t t = runs[j];
                    runs[j] = runs[j - 1];
                    runs[j - 1] = t;
                }
            fig[e][l] = k ? runs[k / 2] : (rb_fig_t){0};
            for (uint32_t i = 0; i < k; i++)
                if (!runs[i].valid)
                    fig[e][l] = runs[i];
        }
        s_up_stop(&up);
    }
    /* the table */
    if (o->tp)
        printf("# each engine splits the model over %s GPUs (--tensor-parallel %s)\n", o->tp, o->tp);
    printf("# engines |    C |  tok/s (all gen) | x vs 1 | TTFT p50 / p99 ms   | p99 x vs 1 | TPOT ms | "
           "requests per engine\n");
    json_t *rows = json_array();
    for (size_t e = 0; e < o->n_engines; e++)
        for (size_t l = 0; l < o->n_levels; l++) {
            const rb_fig_t *f = &fig[e][l];
            const rb_fig_t *one = NULL;
            for (size_t b = 0; b < o->n_engines; b++)
                if (o->engines[b] == 1 && fig[b][l].valid)
                    one = &fig[b][l];
            char ts[24] = "-", xs[16] = "-", tt[40] = "-", px[16] = "-", tp[16] = "-", pe[400];
            s_engine_str(&f->per_engine, pe, sizeof pe);
            if (f->valid) {
                snprintf(ts, sizeof ts, "%.1f", f->tok_s);
                snprintf(tt, sizeof tt, "%.1f / %.1f", f->ttft_p50_ms, f->ttft_p99_ms);
                snprintf(tp, sizeof tp, "%.2f", f->tpot_ms);
                if (one && one->tok_s > 0)
                    snprintf(xs, sizeof xs, "%.2f", f->tok_s / one->tok_s);
                if (one && one->ttft_p99_ms > 0)
                    snprintf(px, sizeof px, "%.2f", f->ttft_p99_ms / one->ttft_p99_ms);
            }
            printf("%9u | %4u | %16s | %6s | %19s | %10s | %7s | %s\n", o->engines[e], o->levels[l], ts, xs, tt, px,
                   tp, pe);
            if (f->n_req && !f->valid) {
                printf("#   engines %u C %u: %u of %u requests failed: %s\n", o->engines[e], o->levels[l],
                       f->n_req - f->n_ok, f->n_req, f->first_err);
                rc = 1;
            }
            json_t *pej = json_object();
            for (size_t i = 0; pej && i < f->per_engine.n; i++)
                json_object_set_new(pej, f->per_engine.name[i], json_integer(f->per_engine.count[i]));
            json_t *row = json_pack("{s:i,s:i,s:b,s:i,s:i,s:I,s:f,s:f,s:f,s:f,s:f,s:o,s:s}", "engines",
                                    (int)o->engines[e], "concurrency", (int)o->levels[l], "valid", f->valid,
                                    "requests", (int)f->n_req, "ok", (int)f->n_ok, "tokens", (json_int_t)f->tokens,
                                    "wall_s", f->wall_s, "tok_s", f->tok_s, "ttft_p50_ms", f->ttft_p50_ms,
                                    "ttft_p99_ms", f->ttft_p99_ms, "tpot_ms", f->tpot_ms, "per_engine",
                                    pej ? pej : json_object(), "error", f->first_err);
            if (row && f->valid && one && one->tok_s > 0) {
                json_object_set_new(row, "tok_s_vs_1", json_real(f->tok_s / one->tok_s));
                json_object_set_new(row, "ttft_p99_vs_1", json_real(f->ttft_p99_ms / one->ttft_p99_ms));
            }
            if (row)
                json_array_append_new(rows, row);
        }
    fflush(stdout);
    if (o->json_path) {
        json_t *top = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:o}", "mode", "scaling", "model", o->model,
                                "backend", o->backend, "load_format", o->load_format, "prompt_len",
                                (int)o->prompt_len, "gen_len", (int)o->gen_len, "clients", (int)o->clients,
                                "repeat", (int)o->repeat, "rows", rows);
        rows = NULL;
        if (!top || json_dump_file(top, o->json_path, JSON_INDENT(2)) < 0) {
            fprintf(stderr, "replica_bench: cannot write %s\n", o->json_path);
            rc = 1;
        }
        json_decref(top);
    }
    json_decref(rows);
    free(rq);
    return s_interrupted ? 130 : rc;
}

/* ------------------------------------------------------------------------------------------------ */
/* fault mode */

enum { RB_INFLIGHT = 0, RB_OK, RB_RETRYABLE, RB_OTHER };
enum { RB_BEFORE = 0, RB_AFTER_KILL, RB_AFTER_REJOIN, RB_PHASES };
static const char *const s_phase_name[RB_PHASES] = {"before kill", "kill -> rejoin", "after rejoin"};

typedef struct rb_freq {
    uint64_t id;                 /* om_client request id */
    uint64_t t_submit, t_first, t_end; /* ns, CLOCK_MONOTONIC */
    int outcome;                 /* RB_* */
    int phase;                   /* when it was submitted */
    bool at_kill;                /* in flight when the engine was killed */
    char engine[32];             /* Final's engine_id */
    char err[200];               /* Status or bad finish */
} rb_freq_t;

typedef struct rb_fault {
    rb_freq_t *q;
    size_t n, cap;
    uint64_t first_id;
} rb_fault_t;

static rb_freq_t *s_fault_find(rb_fault_t *f, uint64_t id) {
    if (id >= f->first_id && id - f->first_id < f->n && f->q[id - f->first_id].id == id)
        return &f->q[id - f->first_id];
    for (size_t i = 0; i < f->n; i++) /* ids not consecutive: search */
        if (f->q[i].id == id)
            return &f->q[i];
    return NULL;
}

static int s_fault_submit(const rb_opts_t *o, om_client_t *c, rb_fault_t *f, int phase, int32_t *ids) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 256;
        rb_freq_t *q = realloc(f->q, cap * sizeof *q);
        if (!q)
            return -ENOMEM;
        f->q = q;
        f->cap = cap;
    }
    rb_freq_t *q = &f->q[f->n];
    memset(q, 0, sizeof *q);
    s_prompt(o, f->n, ids);
    Omnipipe__SamplingParams sp;
    s_sampling(o->gen_len, &sp);
    Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
    req.prompt_ids = ids;
    req.n_prompt_ids = o->prompt_len;
    req.sampling = &sp;
    req.has_stream = true;
    req.stream = true;
    q->t_submit = om_time_mono_ns();
    q->phase = phase;
    int r = om_client_submit(c, &req, o->deadline_ms, &q->id);
    if (r < 0) {
        fprintf(stderr, "replica_bench: submit: %s\n", strerror(-r));
        return r;
    }
    if (f->n == 0)
        f->first_id = q->id;
    f->n++;
    return 0;
}

static int s_fault(const rb_opts_t *o) {
    uint32_t n_eng = o->n_engines ? o->engines[0] : 2;
    uint32_t kill_after = o->kill_after ? o->kill_after : o->fault_conc;
    printf("# replica_bench --fault: model %s, backend %s, %u engines, %u requests in flight, prompt %u, gen %u, "
           "deadline %" PRIu64 " ms, kill %s after %u finished\n",
           o->model, o->backend, n_eng, o->fault_conc, o->prompt_len, o->gen_len, o->deadline_ms, o->kill_engine,
           kill_after);
    fflush(stdout);
    rb_up_t up;
    int r = s_up_start(o, n_eng, true, &up);
    if (r < 0) {
        fprintf(stderr, "replica_bench: omnipipe up failed: %s\n", strerror(-r));
        s_up_stop(&up);
        return 1;
    }
    pid_t victim = s_up_pid_of(&up, o->kill_engine);
    if (victim <= 0) {
        fprintf(stderr, "replica_bench: --kill-engine: '%s' is not in up's ready line\n", o->kill_engine);
        s_up_stop(&up);
        return 2;
    }
    om_client_opts_t co = {.runtime_dir = up.rt, .default_deadline_ms = o->deadline_ms};
    om_client_t *c = NULL;
    char err[256];
    if ((r = om_client_new(&co, &c, err, sizeof err)) < 0) {
        fprintf(stderr, "replica_bench: client: %s\n", err);
        s_up_stop(&up);
        return 1;
    }
    om_client_event_t ev;
    uint64_t until = om_time_mono_ms() + 400;
    while (om_time_mono_ms() < until)
        om_client_poll(c, 20, &ev);

    rb_fault_t f = {0};
    int32_t *ids = malloc((size_t)o->prompt_len * sizeof *ids);
    if (!ids) {
        om_client_free(c);
        s_up_stop(&up);
        return 1;
    }
    int phase = RB_BEFORE;
    uint32_t inflight = 0, n_ok = 0, rejoin_ok = 0;
    uint64_t t_kill = 0, t_rejoin = 0, t_stop = 0, last_ok = 0, max_gap = 0, last_scan = 0;
    bool stopping = false, rejoin_failed = false;
    char restart_line[256] = "", rejoin_line[256] = "";
    char prefix[96];
    snprintf(prefix, sizeof prefix, "omnipipe: ready again: %s ", o->kill_engine);
    while (!s_interrupted) {
        while (!stopping && inflight < o->fault_conc) {
            if ((r = s_fault_submit(o, c, &f, phase, ids)) < 0)
                break;
            inflight++;
        }
        if (r < 0)
            break;
        r = om_client_poll(c, 20, &ev);
        if (r < 0) {
            fprintf(stderr, "replica_bench: poll: %s\n", strerror(-r));
            break;
        }
        uint64_t now = om_time_mono_ns();
        rb_freq_t *q = r > 0 && ev.kind != OM_CLIENT_STATS ? s_fault_find(&f, ev.request_id) : NULL;
        if (q && q->outcome == RB_INFLIGHT) {
            if (ev.kind == OM_CLIENT_DELTA && !q->t_first) {
                q->t_first = now;
            } else if (ev.kind == OM_CLIENT_FINAL) {
                const Omnipipe__Final *fin = ev.env->final;
                q->t_end = now;
                if (!q->t_first)
                    q->t_first = now;
                if (ev.env->header && ev.env->header->engine_id)
                    snprintf(q->engine, sizeof q->engine, "%s", ev.env->header->engine_id);
                bool ok = fin->has_finish && fin->finish == OMNIPIPE__FINISH_REASON__FINISH_LENGTH &&
                          fin->n_token_ids == o->gen_len;
                q->outcome = ok ? RB_OK : RB_OTHER;
                if (!ok)
                    snprintf(q->err, sizeof q->err, "finish %d after %zu tokens", (int)fin->finish, fin->n_token_ids);
            } else if (ev.kind == OM_CLIENT_STATUS) {
                const Omnipipe__Status *st = ev.env->status;
                q->t_end = now;
                bool retry = st->code == OMNIPIPE__CODE__UNAVAILABLE && st->has_retryable && st->retryable;
                q->outcome = retry ? RB_RETRYABLE : RB_OTHER;
                snprintf(q->err, sizeof q->err, "status %d (%s) from %s: %.140s", (int)st->code,
                         st->retryable ? "retryable" : "final", st->stage ? st->stage : "?",
                         st->message ? st->message : "");
            }
            if (q->outcome != RB_INFLIGHT) {
                inflight--;
                if (q->outcome == RB_OK) {
                    n_ok++;
                    if (t_kill) {
                        uint64_t from = last_ok > t_kill ? last_ok : t_kill;
                        if (now - from > max_gap)
                            max_gap = now - from;
                    }
                    last_ok = now;
                    if (phase == RB_AFTER_REJOIN && q->phase == RB_AFTER_REJOIN &&
                        strcmp(q->engine, o->kill_engine) == 0)
                        rejoin_ok++;
                }
            }
        }
        /* the kill: enough finished, and some request streaming */
        if (phase == RB_BEFORE && n_ok >= kill_after) {
            bool streaming = false;
            for (size_t i = 0; i < f.n && !streaming; i++)
                streaming = f.q[i].outcome == RB_INFLIGHT && f.q[i].t_first;
            if (streaming) {
                for (size_t i = 0; i < f.n; i++)
                    f.q[i].at_kill = f.q[i].outcome == RB_INFLIGHT;
                t_kill = om_time_mono_ns();
                kill(victim, SIGKILL);
                fprintf(stderr, "replica_bench: SIGKILL %s (pid %d) with %u requests in flight, %u finished\n",
                        o->kill_engine, (int)victim, inflight, n_ok);
                phase = RB_AFTER_KILL;
            }
        }
        /* the rejoin: up's "ready again" line */
        if (phase == RB_AFTER_KILL && om_time_mono_ms() - last_scan >= 100) {
            last_scan = om_time_mono_ms();
            if (!restart_line[0]) {
                char pre[96];
                snprintf(pre, sizeof pre, "omnipipe: restarted %s ", o->kill_engine);
                s_up_line(&up, pre, restart_line, sizeof restart_line);
            }
            if (s_up_line(&up, prefix, rejoin_line, sizeof rejoin_line)) {
                t_rejoin = om_time_mono_ns();
                phase = RB_AFTER_REJOIN;
                fprintf(stderr, "replica_bench: %s rejoined %.0f ms after the kill\n", o->kill_engine,
                        (double)(t_rejoin - t_kill) / 1e6);
            } else if (om_time_mono_ns() - t_kill > (uint64_t)o->rejoin_timeout_s * 1000000000ull) {
                fprintf(stderr, "replica_bench: %s did not rejoin within %u s\n", o->kill_engine,
                        o->rejoin_timeout_s);
                rejoin_failed = true;
                stopping = true;
                t_stop = now;
            }
        }
        now = om_time_mono_ns(); /* the kill may have happened after the event's time */
        if (!stopping && phase == RB_AFTER_REJOIN && rejoin_ok >= o->after_rejoin) {
            stopping = true;
            t_stop = now;
        }
        if (stopping && (inflight == 0 || now - t_stop > (o->deadline_ms + 5000) * 1000000ull))
            break;
    }
    /* the gap up to the end of the run counts too (a stall at the end is a stall) */
    if (t_kill && !s_interrupted) {
        uint64_t end = stopping ? t_stop : om_time_mono_ns();
        uint64_t from = last_ok > t_kill ? last_ok : t_kill;
        if (end > from && end - from > max_gap)
            max_gap = end - from;
    }

    /* the report */
    uint32_t k_out[4] = {0}, all_out[4] = {0}, k_named = 0;
    uint64_t max_ttft_after = 0;
    rb_eng_count_t per[RB_PHASES];
    memset(per, 0, sizeof per);
    const char *first_other = NULL;
    for (size_t i = 0; i < f.n; i++) {
        const rb_freq_t *q = &f.q[i];
        all_out[q->outcome]++;
        if (q->at_kill) {
            k_out[q->outcome]++;
            if (q->outcome == RB_RETRYABLE && strstr(q->err, o->kill_engine))
                k_named++;
        }
        if (q->outcome == RB_OK)
            s_count_engine(&per[q->phase], q->engine);
        if (q->outcome == RB_OTHER && !first_other)
            first_other = q->err;
        if (q->phase == RB_AFTER_KILL && q->outcome == RB_OK && q->t_first - q->t_submit > max_ttft_after)
            max_ttft_after = q->t_first - q->t_submit;
    }
    bool ok_kill = t_kill && k_out[RB_OTHER] == 0 && k_out[RB_INFLIGHT] == 0 && k_out[RB_RETRYABLE] > 0;
    bool ok_all = all_out[RB_OTHER] == 0 && all_out[RB_INFLIGHT] == 0;
    bool ok_gap = t_kill && max_gap / 1000000ull < o->deadline_ms;
    bool ok_rejoin = !rejoin_failed && t_rejoin && rejoin_ok >= o->after_rejoin;
    printf("# fault: %s SIGKILLed after %u requests had finished; %u in flight then\n", o->kill_engine, kill_after,
           k_out[0] + k_out[1] + k_out[2] + k_out[3]);
    printf("in flight at the kill: %u finished OK, %u Status UNAVAILABLE retryable (%u naming %s), %u other, "
           "%u no answer: %s\n", k_out[RB_OK], k_out[RB_RETRYABLE], k_named, o->kill_engine, k_out[RB_OTHER],
           k_out[RB_INFLIGHT], ok_kill ? "PASS" : "FAIL");
    printf("all %zu requests: %u OK, %u retryable, %u other, %u no answer: %s%s%s\n", f.n, all_out[RB_OK],
           all_out[RB_RETRYABLE], all_out[RB_OTHER], all_out[RB_INFLIGHT], ok_all ? "PASS" : "FAIL",
           first_other ? "; first other: " : "", first_other ? first_other : "");
    printf("longest time after the kill with no request finishing OK: %.0f ms (deadline %" PRIu64 " ms): %s\n",
           (double)max_gap / 1e6, o->deadline_ms, ok_gap ? "PASS" : "FAIL");
    printf("largest TTFT of requests submitted between kill and rejoin: %.0f ms\n", (double)max_ttft_after / 1e6);
    printf("restart: %s", restart_line[0] ? restart_line : "(no restart line)\n");
    printf("rejoin: %.0f ms after the kill; %s finished %u requests submitted after it rejoined: %s\n",
           t_rejoin ? (double)(t_rejoin - t_kill) / 1e6 : -1.0, o->kill_engine, rejoin_ok,
           ok_rejoin ? "PASS" : "FAIL");
    for (int p = 0; p < RB_PHASES; p++) {
        char pe[400];
        s_engine_str(&per[p], pe, sizeof pe);
        printf("finished OK per engine, submitted %-14s: %s\n", s_phase_name[p], pe);
    }
    bool pass = ok_kill && ok_all && ok_gap && ok_rejoin && !s_interrupted;
    printf("replica fault: %s\n", pass ? "PASS" : "FAIL");
    fflush(stdout);
    if (o->json_path) {
        json_t *phases = json_object();
        for (int p = 0; phases && p < RB_PHASES; p++) {
            json_t *pj = json_object();
            for (size_t i = 0; pj && i < per[p].n; i++)
                json_object_set_new(pj, per[p].name[i], json_integer(per[p].count[i]));
            json_object_set_new(phases, s_phase_name[p], pj ? pj : json_null());
        }
        json_t *top = json_pack(
            "{s:s,s:s,s:i,s:i,s:{s:i,s:i,s:i,s:i,s:i},s:{s:i,s:i,s:i,s:i},s:f,s:f,s:f,s:i,s:o,s:b}", "mode", "fault",
            "backend", o->backend, "engines", (int)n_eng, "concurrency", (int)o->fault_conc, "at_kill", "ok",
            (int)k_out[RB_OK], "retryable", (int)k_out[RB_RETRYABLE], "retryable_naming_engine", (int)k_named,
            "other", (int)k_out[RB_OTHER], "no_answer", (int)k_out[RB_INFLIGHT], "all", "ok", (int)all_out[RB_OK],
            "retryable", (int)all_out[RB_RETRYABLE], "other", (int)all_out[RB_OTHER], "no_answer",
            (int)all_out[RB_INFLIGHT], "max_gap_ms", (double)max_gap / 1e6, "max_ttft_after_kill_ms",
            (double)max_ttft_after / 1e6, "rejoin_ms", t_rejoin ? (double)(t_rejoin - t_kill) / 1e6 : -1.0,
            "rejoined_engine_ok", (int)rejoin_ok, "per_engine", phases ? phases : json_object(), "pass", pass);
        if (!top || json_dump_file(top, o->json_path, JSON_INDENT(2)) < 0)
            fprintf(stderr, "replica_bench: cannot write %s\n", o->json_path);
        json_decref(top);
    }
    free(ids);
    free(f.q);
    om_client_free(c);
    s_up_stop(&up);
    return s_interrupted ? 130 : pass ? 0 : 1;
}

/* ------------------------------------------------------------------------------------------------ */
/* options */


static int s_parse_list(const char *name, const char *s, uint32_t hi, uint32_t *out, size_t *n) {
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || errno || v == 0 || v > hi || (*end && *end != ',') || *n == RB_MAX_LIST) {
            fprintf(stderr, "replica_bench: --%s: expected up to %d comma-separated counts in 1..%u, got '%s'\n",
                    name, RB_MAX_LIST, hi, s);
            return -EINVAL;
        }
        out[(*n)++] = (uint32_t)v;
        p = *end ? end + 1 : end;
    }
    if (!*n)
        fprintf(stderr, "replica_bench: --%s: empty list\n", name);
    return *n ? 0 : -EINVAL;
}


static void s_usage(FILE *f) {
    fprintf(f, "usage: replica_bench --model DIR [--backend cpu|cuda] [--load-format auto|dummy] [--threads N]\n"
               "         [--engines 1,2] [--concurrency 64,256] [--prompt-len P (512)] [--gen-len G (128)]\n"
               "         [--clients K (16)] [--repeat R (1)] [--heartbeat-ms N] [--deadline-ms N]\n"
               "         [--omnipipe PATH] [--log-level L (err)] [--ready-timeout S (600)] [--json FILE]\n"
               "         [--tensor-parallel N (1): GPUs per engine]\n"
               "       replica_bench --fault --model DIR ... [--engines N (2)] [--fault-concurrency C (64)]\n"
               "         [--kill-engine NAME (engine-0)] [--kill-after N (C)] [--after-rejoin N (4)]\n"
               "         [--rejoin-timeout S (600)] [--restart-delay-ms N]\n");
}

int main(int argc, char **argv) {
    enum {
        O_MODEL = 1000, O_BACKEND, O_LF, O_THREADS, O_ENGINES, O_CONC, O_PROMPT, O_GEN, O_CLIENTS, O_REPEAT, O_HB,
        O_DEADLINE, O_OMNIPIPE, O_LOG, O_READY, O_JSON, O_FAULT, O_FCONC, O_KILL, O_KILL_AFTER, O_AFTER_REJOIN,
        O_REJOIN_TIMEOUT, O_RDELAY, O_TP, O_HELP,
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, O_MODEL},
        {"backend", required_argument, NULL, O_BACKEND},
        {"load-format", required_argument, NULL, O_LF},
        {"threads", required_argument, NULL, O_THREADS},
        {"engines", required_argument, NULL, O_ENGINES},
        {"concurrency", required_argument, NULL, O_CONC},
        {"prompt-len", required_argument, NULL, O_PROMPT},
        {"gen-len", required_argument, NULL, O_GEN},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"repeat", required_argument, NULL, O_REPEAT},
        {"heartbeat-ms", required_argument, NULL, O_HB},
        {"deadline-ms", required_argument, NULL, O_DEADLINE},
        {"omnipipe", required_argument, NULL, O_OMNIPIPE},
        {"log-level", required_argument, NULL, O_LOG},
        {"ready-timeout", required_argument, NULL, O_READY},
        {"json", required_argument, NULL, O_JSON},
        {"fault", no_argument, NULL, O_FAULT},
        {"fault-concurrency", required_argument, NULL, O_FCONC},
        {"kill-engine", required_argument, NULL, O_KILL},
        {"kill-after", required_argument, NULL, O_KILL_AFTER},
        {"after-rejoin", required_argument, NULL, O_AFTER_REJOIN},
        {"rejoin-timeout", required_argument, NULL, O_REJOIN_TIMEOUT},
        {"restart-delay-ms", required_argument, NULL, O_RDELAY},
        {"tensor-parallel", required_argument, NULL, O_TP},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    rb_opts_t o = {.backend = "cpu", .load_format = "auto", .log_level = "err", .kill_engine = "engine-0",
                   .ready_timeout_s = 600, .rejoin_timeout_s = 600, .prompt_len = 512, .gen_len = 128,
                   .clients = 16, .repeat = 1, .fault_conc = 64, .after_rejoin = 4,
                   .engines = {1, 2}, .n_engines = 2, .levels = {64, 256}, .n_levels = 2};
    bool engines_given = false;
    uint32_t u32;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: o.model = optarg; break;
        case O_BACKEND: o.backend = optarg; break;
        case O_LF: o.load_format = optarg; break;
        case O_THREADS:
            if (bench_parse_u32("replica_bench", "threads", optarg, 0, 4096, &u32) < 0)
                return 2;
            o.threads = optarg;
            break;
        case O_ENGINES:
            if (s_parse_list("engines", optarg, 32, o.engines, &o.n_engines) < 0)
                return 2;
            engines_given = true;
            break;
        case O_CONC:
            if (s_parse_list("concurrency", optarg, 4096, o.levels, &o.n_levels) < 0)
                return 2;
            break;
        case O_PROMPT:
            if (bench_parse_u32("replica_bench", "prompt-len", optarg, 1, 1u << 20, &o.prompt_len) < 0)
                return 2;
            break;
        case O_GEN:
            if (bench_parse_u32("replica_bench", "gen-len", optarg, 1, 1u << 20, &o.gen_len) < 0)
                return 2;
            break;
        case O_CLIENTS:
            if (bench_parse_u32("replica_bench", "clients", optarg, 1, 1024, &o.clients) < 0)
                return 2;
            break;
        case O_REPEAT:
            if (bench_parse_u32("replica_bench", "repeat", optarg, 1, RB_MAX_REPEAT, &o.repeat) < 0)
                return 2;
            break;
        case O_HB:
            if (bench_parse_u32("replica_bench", "heartbeat-ms", optarg, 10, 60000, &u32) < 0)
                return 2;
            o.heartbeat_ms = optarg;
            break;
        case O_DEADLINE:
            if (bench_parse_u32("replica_bench", "deadline-ms", optarg, 100, 86400000, &u32) < 0)
                return 2;
            o.deadline_ms = u32;
            break;
        case O_OMNIPIPE: o.omnipipe = optarg; break;
        case O_LOG: o.log_level = optarg; break;
        case O_READY:
            if (bench_parse_u32("replica_bench", "ready-timeout", optarg, 1, 86400, &o.ready_timeout_s) < 0)
                return 2;
            break;
        case O_JSON: o.json_path = optarg; break;
        case O_FAULT: o.fault = true; break;
        case O_FCONC:
            if (bench_parse_u32("replica_bench", "fault-concurrency", optarg, 1, 4096, &o.fault_conc) < 0)
                return 2;
            break;
        case O_KILL: o.kill_engine = optarg; break;
        case O_KILL_AFTER:
            if (bench_parse_u32("replica_bench", "kill-after", optarg, 1, 1u << 20, &o.kill_after) < 0)
                return 2;
            break;
        case O_AFTER_REJOIN:
            if (bench_parse_u32("replica_bench", "after-rejoin", optarg, 1, 1u << 20, &o.after_rejoin) < 0)
                return 2;
            break;
        case O_REJOIN_TIMEOUT:
            if (bench_parse_u32("replica_bench", "rejoin-timeout", optarg, 1, 86400, &o.rejoin_timeout_s) < 0)
                return 2;
            break;
        case O_RDELAY:
            if (bench_parse_u32("replica_bench", "restart-delay-ms", optarg, 0, 30000, &u32) < 0)
                return 2;
            o.restart_delay = optarg;
            break;
        case O_TP:
            if (bench_parse_u32("replica_bench", "tensor-parallel", optarg, 1, 8, &u32) < 0)
                return 2;
            o.tp = optarg;
            break;
        case O_HELP: s_usage(stdout); return 0;
        default: s_usage(stderr); return 2;
        }
    }
    if (!o.model || optind < argc) {
        fprintf(stderr, "replica_bench: --model DIR is required (and no positional arguments)\n");
        s_usage(stderr);
        return 2;
    }
    if (strcmp(o.backend, "cpu") != 0 && strcmp(o.backend, "cuda") != 0) {
        fprintf(stderr, "replica_bench: --backend: expected cpu or cuda, got '%s'\n", o.backend);
        return 2;
    }
    if (strcmp(o.load_format, "auto") != 0 && strcmp(o.load_format, "dummy") != 0) {
        fprintf(stderr, "replica_bench: --load-format: expected auto or dummy, got '%s'\n", o.load_format);
        return 2;
    }
    if (o.fault) {
        if (!engines_given) {
            o.engines[0] = 2;
            o.n_engines = 1;
        }
        if (o.n_engines != 1 || o.engines[0] < 2) {
            fprintf(stderr, "replica_bench: --fault: --engines must be one count of at least 2\n");
            return 2;
        }
        if (!o.deadline_ms)
            o.deadline_ms = 60000;
    } else if (!o.deadline_ms) {
        o.deadline_ms = 600000; /* a benchmark run must not time out on a slow backend */
    }
    int64_t vocab;
    if (bench_vocab_size("replica_bench", o.model, &vocab) < 0)
        return 2;
    /* ordinary tokens only: Qwen's special tokens start at 151643 */
    o.id_hi = (int32_t)(vocab < 151643 ? vocab : 151643);
    o.id_lo = o.id_hi > 4096 ? 1000 : 0;
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    signal(SIGPIPE, SIG_IGN);
    return o.fault ? s_fault(&o) : s_scale(&o);
}
