/* eng_bench_cuda.c: engine benchmark of the CUDA model runner (eng_cuda_model) driven directly with
 * synthetic eng_batch_t steps (no scheduler, no daemons): dummy bf16 weights generated on the GPU
 * from a config.json, paged KV, greedy decode fed back from the GPU argmax.
 *
 * Measures: device-to-device copy bandwidth (the ceiling's denominator); batch-1 decode tok/s at
 * 512 and 4096 tokens of context; TTFT (one prefill step + first token) for 512 and 4096-token
 * prompts; aggregate decode tok/s at 8, 32 and 128 concurrent sequences (512-token prompts); MoE
 * GEMV vs grouped path at batch 8; second chat turn with and without the prefix cache (turn-1
 * blocks reused vs the whole conversation prefilled again). Prints a table last.
 *
 * --service: after the direct batch-1 runs, frees the runner and measures the same batch-1 decode
 * through eng_service (what engine_svc and `omnipipe generate --backend cuda --load-format dummy`
 * run: scheduler, KV block manager, the backend's SAMPLE hook), greedy, temperature/top-p, and
 * top-p with penalties, with logprobs, greedy with ignore_eos + min_tokens, all sampled on the
 * GPU; OMNIPIPE_GPU_SAMPLE=0 in the environment samples on the host instead.
 * --service-ab: instead of --service's rows, ctx 512 only: greedy, top-p, + penalties, + logprobs
 * under three settings, alternating, two rounds: the defaults (the draw queued behind the
 * unsynchronised step, the sampler's sparse bin lists), OMNIPIPE_SAMPLE_FUSED=0 (the synchronised
 * step, then the draw) and that plus OM_CUDA_SAMPLE_SPARSE=0 (the whole-row selects: the path
 * before both); then per setting the mean ms/token of greedy and what each sampled mode costs
 * over it.
 *
 * --tensor-parallel N: the model split over GPUs 0..N-1 (eng_cuda_tp.h; N = 1 is the unsplit
 * runner) and only the split/replicate comparison: batch-1 decode at ctx 512 (tok/s, ms/token),
 * TTFT 512, aggregate decode at 32 and 128 sequences, KV capacity (max concurrent 4096-token
 * contexts = KV blocks x block size / 4096) and the communication time per decode step at batch
 * 1, 32 and 128 (the step's 2 x layers all-reduces of (B, hidden), f32 or bf16 as the steps reduce
 * (OM_CUDA_TP_REDUCE), replayed alone as one CUDA graph, eng_cuda_model_measure_comm). Ends with
 * one "TP N=..." table row (bench/tp-run). --moe-parallel expert|column: the MoE split with N > 1
 * (default expert; the row says which, and "bf16" when OM_CUDA_TP_REDUCE=bf16).
 *
 * --curve: only the decode step time at batch 1, 2, 4, ... 256 (ctx 512), i.e. one GPU's aggregate
 * tok/s as a function of its batch, and from it the most that two replicas can gain at C concurrent
 * requests (each decodes C/2: 2 x tok/s(C/2) / tok/s(C)), the bound bench/multi-gpu-run measures.
 *
 * --skip LIST (profiling, with --b1-only): decode steps leave out the named kernels of every layer
 * (qkv, rope, attn, oproj, router, moe; eng_cuda_model_opts_t.profile_skip), so the step time
 * against a full run is their marginal cost inside the CUDA graph, PDL overlap included. The
 * tokens are wrong; `bench/gpu-run` with SKIPS=1 runs one kernel at a time.
 *
 * Usage: eng_bench_cuda CONFIG_DIR [--steps N] [--quick] [--profile] [--b1-only] [--service]
 *        [--service-ab]
 *        [--tensor-parallel N] [--moe-parallel expert|column] [--curve] [--skip LIST]
 * --profile: only runs, inside a profiler range (ncu --profile-from-start off), one batch-1 decode
 * step at ctx 512, one 512-token prefill and one batch-128 decode step (bench/ncu_summary.py);
 * OM_PROFILE_BATCHES="32,64" (env) profiles decode steps at those batches instead of 128,
 * OM_PROFILE_PREFILL=4096 a prefill of that length instead of 512. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_cuda.h"
#include "eng_service.h"

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static eng_cuda_model_t *g_m;
static eng_cuda_model_info_t g_info;
static uint32_t g_next_block;
static char g_err[512];

static void s_die(int r, const char *what) {
    fprintf(stderr, "FATAL: %s: %d %s (%s)\n", what, r, g_err, eng_cuda_last_error());
    exit(1);
}

typedef struct seq {
    int32_t *tokens;   /* all tokens of the sequence so far */
    uint32_t len;      /* tokens in KV (n_past) */
    uint32_t n_tok;    /* tokens known (len or len+1 with the pending token) */
    int32_t *bt;       /* block table */
    uint32_t n_bt;
} seq_t;

static void s_seq_init(seq_t *s, uint32_t cap, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->tokens = malloc(cap * 4);
    uint32_t nb = (cap + g_info.block_size - 1) / g_info.block_size;
    s->bt = malloc(nb * 4);
    if (g_next_block + nb > g_info.n_blocks) {
        fprintf(stderr, "FATAL: out of KV blocks (%u)\n", g_info.n_blocks);
        exit(1);
    }
    for (uint32_t i = 0; i < nb; i++)
        s->bt[i] = (int32_t)(g_next_block++);
    s->n_bt = nb;
    uint64_t x = seed * 2654435761u + 1;
    for (uint32_t i = 0; i < cap; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        s->tokens[i] = (int32_t)(x % (g_info.vocab - 1000));
    }
}

/* Prefills tokens [len, len+n) of each sequence (chunks of at most chunk tokens per step, all
 * sequences in a step together); leaves the greedy next token pending. Returns seconds. */
static double s_prefill(seq_t *ss, int n, uint32_t count, uint32_t chunk) {
    eng_batch_seq_t *bs = calloc(n, sizeof *bs);
    int32_t *ids = malloc(n * 4);
    double t0 = s_now();
    for (uint32_t off = 0; off < count; off += chunk) {
        uint32_t k = count - off < chunk ? count - off : chunk;
        eng_batch_t b = {bs, (uint32_t)n, 0, (uint32_t)n};
        for (int i = 0; i < n; i++) {
            bs[i] = (eng_batch_seq_t){ss[i].tokens + ss[i].len, k, ss[i].len, NULL, ss[i].bt,
                                      ss[i].n_bt, off + k == count};
            b.n_tokens += k;
        }
        b.n_logits = off + k == count ? (uint32_t)n : 0;
        int r = eng_cuda_model_forward(g_m, &b, NULL, ids, g_err, sizeof g_err);
        if (r < 0)
            s_die(r, "prefill");
        for (int i = 0; i < n; i++)
            ss[i].len += k;
    }
    double dt = s_now() - t0;
    for (int i = 0; i < n; i++) {
        ss[i].tokens[ss[i].len] = ids[i];
        ss[i].n_tok = ss[i].len + 1;
    }
    free(bs);
    free(ids);
    return dt;
}

/* Decodes `steps` steps of all n sequences together; returns seconds. */
static double s_decode(seq_t *ss, int n, int steps) {
    eng_batch_seq_t *bs = calloc(n, sizeof *bs);
    int32_t *ids = malloc(n * 4);
    double t0 = s_now();
    for (int st = 0; st < steps; st++) {
        eng_batch_t b = {bs, (uint32_t)n, (uint32_t)n, (uint32_t)n};
        for (int i = 0; i < n; i++)
            bs[i] = (eng_batch_seq_t){ss[i].tokens + ss[i].len, 1, ss[i].len, NULL, ss[i].bt,
                                      ss[i].n_bt, true};
        int r = eng_cuda_model_forward(g_m, &b, NULL, ids, g_err, sizeof g_err);
        if (r < 0)
            s_die(r, "decode");
        for (int i = 0; i < n; i++) {
            ss[i].len++;
            ss[i].tokens[ss[i].len] = ids[i];
        }
    }
    double dt = s_now() - t0;
    free(bs);
    free(ids);
    return dt;
}

static void s_seq_free(seq_t *s) {
    free(s->tokens);
    free(s->bt);
}

/* the --service rows: sampling configurations (every one samples on the GPU) */
enum { S_GREEDY, S_TOPP, S_TOPP_PEN, S_TOPP_LP, S_GREEDY_IGN, S_N_MODES };
static const char *const s_mode_name[S_N_MODES] = {
    "greedy", "temperature 0.8, top-p 0.95",
    "temperature 0.8, top-p 0.95, rep 1.1 + presence 0.5 + frequency 0.3",
    "temperature 0.8, top-p 0.95, logprobs 5", "greedy, ignore_eos + min_tokens"};

/* an eng_service on the dummy model for s_service_req */
static eng_service_t *s_service_open(const char *dir, int ctx, int steps) {
    eng_service_opts_t o = {.model_dir = dir, .backend = "cuda", .load_format = "dummy",
                            .engine_id = "bench", .max_model_len = (uint32_t)(ctx + steps + 64)};
    eng_service_t *svc = NULL;
    int r = eng_service_new(&o, NULL, NULL, &svc, g_err, sizeof g_err);
    if (r < 0)
        s_die(r, "eng_service_new");
    return svc;
}

/* One request through eng_service: a ctx-token prompt, then up to steps timed decode tokens (after
 * two warm-up tokens). Without ignore_eos a dummy model may stop early at an eos; the rate is over
 * the tokens actually timed (*ret_timed). Returns decode tok/s; *ret_ttft the seconds until the
 * first token. A later request with the same prompt on the same service finds it in the prefix
 * cache (only the decode is timed). */
static double s_service_req(eng_service_t *svc, int ctx, int steps, int mode, double *ret_ttft,
                            int *ret_timed) {
    const float temperature = mode == S_GREEDY || mode == S_GREEDY_IGN ? 0.0f : 0.8f;
    int r;
    seq_t p;
    s_seq_init(&p, (uint32_t)ctx + 8, 77);
    g_next_block = 0;
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_request_id = true;
    h.request_id = 1;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = sp.has_temperature = sp.has_seed = true;
    sp.max_tokens = (uint32_t)steps + 3;
    sp.temperature = temperature;
    sp.seed = 5;
    if (temperature > 0) {
        sp.has_top_p = true;
        sp.top_p = 0.95f;
    }
    if (mode == S_TOPP_PEN) {
        sp.has_repetition_penalty = sp.has_presence_penalty = sp.has_frequency_penalty = true;
        sp.repetition_penalty = 1.1f;
        sp.presence_penalty = 0.5f;
        sp.frequency_penalty = 0.3f;
    }
    if (mode == S_TOPP_LP) {
        sp.has_logprobs = true;
        sp.logprobs = 5;
    }
    if (mode == S_GREEDY_IGN) {
        sp.has_ignore_eos = sp.has_min_tokens = true;
        sp.ignore_eos = true;
        sp.min_tokens = (uint32_t)steps;
    }
    Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
    pr.ids = p.tokens;
    pr.n_ids = (size_t)ctx;
    pr.sampling = &sp;
    if ((r = eng_service_submit(svc, &h, &pr, 1)) < 0)
        s_die(r, "eng_service_submit");
    int got = 0;
    double t0 = s_now(), t_first = 0, t_dec = 0;
    while (eng_service_has_work(svc)) {
        const Omnipipe__TokenBatch *b = NULL;
        if ((r = eng_service_step(svc, 1, &b)) < 0)
            s_die(r, "eng_service_step");
        for (size_t i = 0; b && i < b->n_seqs; i++) {
            if (b->seqs[i]->has_finish && b->seqs[i]->finish == OMNIPIPE__FINISH_REASON__FINISH_ERROR)
                s_die(-EIO, b->seqs[i]->error && b->seqs[i]->error->message
                                ? b->seqs[i]->error->message : "request failed");
            got += (int)b->seqs[i]->n_token_ids;
        }
        if (got >= 1 && t_first == 0)
            t_first = s_now();
        if (got >= 3 && t_dec == 0)
            t_dec = s_now();
    }
    double dt = s_now() - t_dec;
    s_seq_free(&p);
    *ret_ttft = t_first - t0;
    *ret_timed = got - 3;
    return got > 3 && dt > 0 ? (got - 3) / dt : 0;
}

static double s_service_b1(const char *dir, int ctx, int steps, int mode, double *ret_ttft,
                           int *ret_timed) {
    eng_service_t *svc = s_service_open(dir, ctx, steps);
    double tps = s_service_req(svc, ctx, steps, mode, ret_ttft, ret_timed);
    eng_service_free(svc);
    return tps;
}

/* n sequences with 512-token prompts (seeds seed0 + i, prefilled 8 at a time), 3 warm-up decode
 * steps, then `steps` timed ones: their wall time in seconds. Frees the sequences and the KV. */
static double s_agg_decode(int n, int steps, uint64_t seed0) {
    seq_t *ss = calloc(n, sizeof *ss);
    if (!ss)
        s_die(-ENOMEM, "aggregate decode");
    for (int i = 0; i < n; i++)
        s_seq_init(&ss[i], 512 + steps + 8, seed0 + i);
    for (int i = 0; i < n; i += 8)
        s_prefill(ss + i, n - i < 8 ? n - i : 8, 512, 512);
    s_decode(ss, n, 3);
    double dt = s_decode(ss, n, steps);
    for (int i = 0; i < n; i++)
        s_seq_free(&ss[i]);
    free(ss);
    g_next_block = 0;
    return dt;
}

/* --tensor-parallel: the figures that compare a split model with one GPU (see the top comment). */
static int s_tp_bench(int tp, int steps) {
    double ttft, b1, agg[2] = {0}, comm[3] = {0}, ar_us[3] = {0}, step_ms[3] = {0};
    int bsz[2] = {32, 128}, cb[3] = {1, 32, 128};
    {
        seq_t s;
        s_seq_init(&s, 512 + steps + 8, 7);
        ttft = s_prefill(&s, 1, 512, 4096);
        s_decode(&s, 1, 2);
        double dt = s_decode(&s, 1, steps);
        b1 = steps / dt;
        step_ms[0] = dt / steps * 1e3;
        printf("TP %d: batch 1, ctx 512: TTFT %.1f ms, decode %.1f tok/s (%.2f ms/token)\n", tp,
               ttft * 1e3, b1, 1e3 / b1);
        fflush(stdout);
        s_seq_free(&s);
        g_next_block = 0;
    }
    for (int k = 0; k < 2; k++) {
        int n = bsz[k];
        double dt = s_agg_decode(n, steps, 100);
        agg[k] = (double)n * steps / dt;
        step_ms[k + 1] = dt / steps * 1e3;
        printf("TP %d: batch %d, ctx 512: aggregate decode %.0f tok/s (%.2f ms/step)\n", tp, n,
               agg[k], step_ms[k + 1]);
        fflush(stdout);
    }
    for (int k = 0; k < 3 && tp > 1; k++) { /* one GPU: no all-reduce, nothing to time */
        int r = eng_cuda_model_measure_comm(g_m, (uint32_t)cb[k], &comm[k], &ar_us[k], g_err,
                                            sizeof g_err);
        if (r < 0)
            s_die(r, "measure_comm");
        printf("TP %d: communication per decode step, batch %d: %.3f ms (%u all-reduces of "
               "(%d, %u) %s, %.1f us each; %.0f%% of the step)\n", tp, cb[k], comm[k],
               2 * g_info.n_layers, cb[k], g_info.hidden,
               !g_info.tp_reduce_f32                    ? "bf16 NCCL"
               : (uint32_t)cb[k] <= g_info.tp_ar_rows ? "f32 one-shot p2p, bf16 out"
                                                        : "f32 NCCL",
               ar_us[k], step_ms[k] > 0 ? 100 * comm[k] / step_ms[k] : 0);
        fflush(stdout);
    }
    double ctx4k = (double)g_info.n_blocks * g_info.block_size / 4096.0;
    printf("TP %d: KV %.2f GB/GPU, %u blocks of %u tokens = %.0f concurrent 4096-token contexts; "
           "KV bytes/token/GPU %llu; weights %.2f GB/GPU\n", tp, g_info.kv_bytes / 1e9,
           g_info.n_blocks, g_info.block_size, ctx4k,
           (unsigned long long)eng_cuda_model_kv_bytes_per_token(g_m), g_info.weight_bytes / 1e9);
    printf("\n| GPUs | b1 tok/s | b1 ms/tok | TTFT512 ms | agg32 tok/s | agg128 tok/s | max 4096-ctx "
           "| comm ms/step b1/32/128 |\n|---|---|---|---|---|---|---|---|\n");
    char label[64] = "";
    if (tp > 1)
        snprintf(label, sizeof label, " %s%s",
                 g_info.expert_parallel ? "expert"
                 : g_info.n_experts > 1 ? "column"
                                        : "dense",
                 g_info.tp_reduce_f32 ? (g_info.tp_ar_rows ? " p2p" : " nccl") : " bf16");
    printf("| TP N=%d%s | %.1f | %.2f | %.1f | %.0f | %.0f | %.0f | %.3f / %.3f / %.3f |\n", tp,
           label, b1, 1e3 / b1, ttft * 1e3, agg[0], agg[1], ctx4k, comm[0], comm[1], comm[2]);
    eng_cuda_model_free(g_m);
    return 0;
}

/* One GPU's decode throughput against its batch (ctx 512) and the replica bound it implies. */
static int s_curve(int steps) {
    static const int bs[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
    enum { NB = sizeof bs / sizeof bs[0] };
    double tps[NB] = {0};
    for (int k = 0; k < NB; k++) {
        int n = bs[k];
        double dt = s_agg_decode(n, steps, 700);
        tps[k] = (double)n * steps / dt;
        printf("curve batch %d, ctx 512: %.2f ms/step, %.0f tok/s\n", n, dt / steps * 1e3, tps[k]);
        fflush(stdout);
    }
    printf("\n| concurrent C | 1 GPU at C (tok/s) | 1 GPU at C/2 (tok/s) | 2 replicas at most (x) |\n"
           "|---|---|---|---|\n");
    for (int k = 1; k < NB; k++)
        printf("| %d | %.0f | %.0f | %.2fx |\n", bs[k], tps[k], tps[k - 1],
               2.0 * tps[k - 1] / tps[k]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG_DIR [--steps N] [--quick]\n", argv[0]);
        return 2;
    }
    int steps = 64, quick = 0, profile = 0, b1_only = 0, service = 0, tp = 0, curve = 0;
    int moe_par = ENG_CUDA_MOE_PAR_DEFAULT;
    unsigned skip = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--profile"))
            profile = 1;
        else if (!strcmp(argv[i], "--b1-only"))
            b1_only = 1;
        else if (!strcmp(argv[i], "--service"))
            service = 1;
        else if (!strcmp(argv[i], "--service-ab"))
            service = 2;
        else if (!strcmp(argv[i], "--curve"))
            curve = 1;
        else if (!strcmp(argv[i], "--skip") && i + 1 < argc) {
            static const struct {
                const char *name;
                unsigned bit;
            } k[] = {{"qkv", ENG_CUDA_SKIP_QKV},     {"rope", ENG_CUDA_SKIP_ROPE},
                     {"attn", ENG_CUDA_SKIP_ATTN},   {"oproj", ENG_CUDA_SKIP_OPROJ},
                     {"router", ENG_CUDA_SKIP_ROUTER}, {"moe", ENG_CUDA_SKIP_MOE}};
            char buf[256];
            snprintf(buf, sizeof buf, "%s", argv[++i]);
            for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                unsigned bit = 0;
                for (size_t j = 0; j < sizeof k / sizeof k[0]; j++)
                    if (!strcmp(t, k[j].name))
                        bit = k[j].bit;
                if (!bit) {
                    fprintf(stderr, "--skip: '%s' is not one of qkv, rope, attn, oproj, router, moe\n",
                            t);
                    return 2;
                }
                skip |= bit;
            }
        }
        else if (!strcmp(argv[i], "--tensor-parallel") && i + 1 < argc)
            tp = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--moe-parallel") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "expert"))
                moe_par = ENG_CUDA_MOE_PAR_EXPERT;
            else if (!strcmp(v, "column"))
                moe_par = ENG_CUDA_MOE_PAR_COLUMN;
            else {
                fprintf(stderr, "--moe-parallel: '%s' is not expert or column\n", v);
                return 2;
            }
        }
    }
    if (tp < 0 || tp > 64) {
        fprintf(stderr, "--tensor-parallel: %d is not a GPU count in [1, 64]\n", tp);
        return 2;
    }
    double d2d = 0;
    int r = eng_cuda_measure_d2d_gbps(0, 1u << 30, &d2d);
    if (r < 0)
        s_die(r, "d2d");
    eng_cuda_model_opts_t o = {0};
    o.dummy = true;
    o.seed = 1;
    o.kv_fraction = 0.90;
    o.max_ctx = 8192;
    o.max_batch_tokens = 4096;
    o.max_seqs = 256;
    o.tensor_parallel = tp;
    o.moe_parallel = moe_par;
    o.profile_skip = skip;
    double t0 = s_now();
    r = eng_cuda_model_load(argv[1], &o, &g_m, g_err, sizeof g_err);
    if (r < 0)
        s_die(r, "load");
    eng_cuda_model_get_info(g_m, &g_info);
    printf("model: %u layers, D %u, %u/%u heads x %u, %u experts top-%u inter %u, vocab %u\n",
           g_info.n_layers, g_info.hidden, g_info.n_heads, g_info.n_kv_heads, g_info.head_dim,
           g_info.n_experts, g_info.top_k, g_info.moe_inter, g_info.vocab);
    if (g_info.tensor_parallel > 1)
        printf("split: %u GPUs, MoE %s, %s all-reduce\n", g_info.tensor_parallel,
               g_info.expert_parallel ? "expert (E/N whole experts per GPU)" : "column-split",
               g_info.tp_reduce_f32 ? "f32" : "bf16");
    printf("weights %.2f GB (dummy, generated on GPU in %.2f s), active/step %.2f GB, KV %.2f GB "
           "(%u blocks of %u), load wall %.2f s\n",
           g_info.weight_bytes / 1e9, g_info.load_seconds, g_info.active_bytes / 1e9,
           g_info.kv_bytes / 1e9, g_info.n_blocks, g_info.block_size, s_now() - t0);
    double ceil_tps = d2d * 1e9 / g_info.active_bytes;
    printf("d2d copy %.0f GB/s -> batch-1 ceiling %.0f tok/s\n", d2d, ceil_tps);

    /* warm-up: builds graphs for the buckets used below */
    {
        seq_t w;
        s_seq_init(&w, 600, 99);
        s_prefill(&w, 1, 512, 4096);
        s_decode(&w, 1, 4);
        s_seq_free(&w);
    }
    if (tp > 0)
        return s_tp_bench(tp, steps);
    if (curve) {
        s_curve(steps);
        eng_cuda_model_free(g_m);
        return 0;
    }
    if (profile) {
        seq_t a, p;
        s_seq_init(&a, 600, 11);
        /* OM_PROFILE_PREFILL: the profiled prefill's length (default 512, at most 4096) */
        const char *pp = getenv("OM_PROFILE_PREFILL");
        const int plen = pp && atoi(pp) >= 1 && atoi(pp) <= 4096 ? atoi(pp) : 512;
        s_seq_init(&p, plen + 88, 12);
        s_prefill(&a, 1, 512, 4096);
        s_decode(&a, 1, 4);
        int nb[8] = {128}, n_nb = 1, n = 0;
        const char *pb = getenv("OM_PROFILE_BATCHES");
        if (pb && *pb) {
            n_nb = 0;
            for (const char *q = pb; *q && n_nb < 8;) {
                char *end = NULL;
                long v = strtol(q, &end, 10);
                if (end == q || v < 1 || v > 512) {
                    fprintf(stderr, "OM_PROFILE_BATCHES: '%s' is not a list of batches in [1, 512]\n", pb);
                    return 2;
                }
                nb[n_nb++] = (int)v;
                q = *end == ',' ? end + 1 : end;
            }
        }
        for (int k = 0; k < n_nb; k++)
            n = nb[k] > n ? nb[k] : n;
        seq_t *ss = calloc(n, sizeof *ss);
        for (int i = 0; i < n; i++)
            s_seq_init(&ss[i], 600, 100 + i);
        for (int i = 0; i < n; i += 8)
            s_prefill(ss + i, n - i < 8 ? n - i : 8, 512, 512);
        for (int k = 0; k < n_nb; k++)
            s_decode(ss, nb[k], 3);
        eng_cuda_profiler(true);
        s_decode(&a, 1, 1);
        s_prefill(&p, 1, (uint32_t)plen, 4096);
        for (int k = 0; k < n_nb; k++)
            s_decode(ss, nb[k], 1);
        eng_cuda_profiler(false);
        eng_cuda_model_free(g_m);
        printf("profile done\n");
        return 0;
    }
    /* batch-1: TTFT and decode at 512 and 4096 */
    double ttft[2], dec1[2];
    int ctxs[2] = {512, 4096};
    for (int c = 0; c < 2; c++) {
        seq_t s;
        s_seq_init(&s, ctxs[c] + steps + 8, 7 + c);
        ttft[c] = s_prefill(&s, 1, ctxs[c], 4096);
        s_decode(&s, 1, 2);
        dec1[c] = steps / s_decode(&s, 1, steps);
        printf("batch 1, ctx %d: TTFT %.1f ms, decode %.1f tok/s (%.2f ms/token)\n", ctxs[c],
               ttft[c] * 1e3, dec1[c], 1e3 / dec1[c]);
        fflush(stdout);
        s_seq_free(&s);
    }
    if (b1_only || service) {
        eng_cuda_model_free(g_m);
        g_m = NULL;
        if (!service)
            return 0;
        if (service == 2) { /* the sampled-step switches, alternating, ctx 512 */
            static const int ab_modes[4] = {S_GREEDY, S_TOPP, S_TOPP_PEN, S_TOPP_LP};
            static const struct {
                const char *name, *fused, *sparse;
            } set[3] = {{"default (fused + sparse bins)", "1", "1"},
                        {"OMNIPIPE_SAMPLE_FUSED=0", "0", "1"},
                        {"OMNIPIPE_SAMPLE_FUSED=0 OM_CUDA_SAMPLE_SPARSE=0 (old path)", "0", "0"}};
            double ms[3][4] = {{0}}; /* [setting][mode] mean ms/token */
            const int rounds = 2;
            /* one service (one model: two do not fit) per OMNIPIPE_SAMPLE_FUSED value and round
               (read at creation); OM_CUDA_SAMPLE_SPARSE is read per call */
            eng_service_t *svc = NULL;
            for (int round = 0; round < rounds; round++)
                for (int f = 0; f < 3; f++)
                    for (int k = 0; k < 4; k++) {
                        if (k == 0 && f != 2) { /* settings 1 and 2 share the unfused service */
                            eng_service_free(svc);
                            setenv("OMNIPIPE_SAMPLE_FUSED", set[f].fused, 1);
                            svc = s_service_open(argv[1], ctxs[0], steps);
                        }
                        setenv("OM_CUDA_SAMPLE_SPARSE", set[f].sparse, 1);
                        double tt = 0;
                        int timed = 0;
                        double tps = s_service_req(svc, ctxs[0], steps, ab_modes[k], &tt, &timed);
                        ms[f][k] += tps > 0 ? 1e3 / tps / rounds : 0;
                        printf("service-ab round %d, %s, ctx %d, %s: decode %.1f tok/s (%.3f "
                               "ms/token over %d tokens)\n",
                               round, set[f].name, ctxs[0], s_mode_name[ab_modes[k]], tps,
                               tps > 0 ? 1e3 / tps : 0, timed);
                        fflush(stdout);
                    }
            unsetenv("OMNIPIPE_SAMPLE_FUSED");
            unsetenv("OM_CUDA_SAMPLE_SPARSE");
            eng_service_free(svc);
            for (int f = 0; f < 3; f++)
                printf("service-ab summary %s (mean of %d): greedy %.3f ms/token (%.1f tok/s; "
                       "direct runner %.1f); top-p %.1f tok/s (+%.3f ms), + penalties +%.3f ms, "
                       "+ logprobs +%.3f ms over greedy\n",
                       set[f].name, rounds, ms[f][0], ms[f][0] > 0 ? 1e3 / ms[f][0] : 0, dec1[0],
                       ms[f][1] > 0 ? 1e3 / ms[f][1] : 0, ms[f][1] - ms[f][0], ms[f][2] - ms[f][0],
                       ms[f][3] - ms[f][0]);
            return 0;
        }
        /* the same batch-1 decode through eng_service (fast runner, scheduler, GPU sampling) */
        const char *const *how = s_mode_name;
        for (int c = 0; c < 2; c++)
            for (int k = 0; k < S_N_MODES; k++) {
                double tt = 0;
                int timed = 0;
                double tps = s_service_b1(argv[1], ctxs[c], steps, k, &tt, &timed);
                printf("service batch 1, ctx %d, %s: TTFT %.1f ms, decode %.1f tok/s (%.2f "
                       "ms/token over %d tokens; direct runner %.1f tok/s, %.1f%% overhead)\n",
                       ctxs[c], how[k], tt * 1e3, tps, tps > 0 ? 1e3 / tps : 0, timed, dec1[c],
                       tps > 0 ? 100.0 * (dec1[c] / tps - 1.0) : 0);
                fflush(stdout);
            }
        return 0;
    }
    /* aggregate decode at 8, 32, 128 */
    int bsz[3] = {8, 32, 128};
    double agg[3] = {0};
    int nb = quick ? 2 : 3;
    for (int k = 0; k < nb; k++) {
        int n = bsz[k];
        double dt = s_agg_decode(n, steps, 100);
        agg[k] = (double)n * steps / dt;
        printf("batch %d, ctx 512: aggregate decode %.0f tok/s (%.2f ms/step)\n", n, agg[k],
               dt / steps * 1e3);
        fflush(stdout);
    }
    /* MoE path comparison at batch 1 and 8 */
    double moe_cmp[2][2] = {{0}};
    int cmp_b[2] = {1, 8};
    for (int mode = 1; mode <= 2; mode++)
        for (int k = 0; k < 2; k++) {
            eng_cuda_model_set_moe_mode(g_m, mode);
            int n = cmp_b[k];
            seq_t *ss = calloc(n, sizeof *ss);
            for (int i = 0; i < n; i++)
                s_seq_init(&ss[i], 512 + steps + 8, 300 + i);
            s_prefill(ss, n, 512, 512);
            s_decode(ss, n, 3);
            moe_cmp[mode - 1][k] = (double)n * steps / s_decode(ss, n, steps);
            for (int i = 0; i < n; i++)
                s_seq_free(&ss[i]);
            free(ss);
            g_next_block = 0;
        }
    eng_cuda_model_set_moe_mode(g_m, 0);
    /* second chat turn: 512-token turn 1 + 64 generated, then 100 new tokens */
    double turn2_cached, turn2_full;
    {
        seq_t s;
        s_seq_init(&s, 512 + 64 + 100 + 8, 500);
        s_prefill(&s, 1, 512, 4096);
        s_decode(&s, 1, 63); /* 64 generated tokens: 63 in KV + 1 pending */
        uint32_t new_tokens = 1 + 100;
        turn2_cached = s_prefill(&s, 1, new_tokens, 4096);
        seq_t f;
        s_seq_init(&f, 512 + 64 + 100 + 8, 500);
        memcpy(f.tokens, s.tokens, (512 + 64 + 100) * 4);
        turn2_full = s_prefill(&f, 1, 512 + 64 + 100, 4096);
        s_seq_free(&s);
        s_seq_free(&f);
    }
    printf("\n=== omnipipe CUDA engine benchmark (dummy bf16 weights, %d decode steps) ===\n", steps);
    printf("| metric | value | target / note |\n|---|---|---|\n");
    printf("| d2d copy bandwidth | %.0f GB/s | read+write |\n", d2d);
    printf("| active bytes / decode step (batch 1) | %.2f GB | |\n", g_info.active_bytes / 1e9);
    printf("| batch-1 ceiling | %.0f tok/s | active bytes / d2d |\n", ceil_tps);
    printf("| batch-1 decode, ctx 512 | %.1f tok/s (%.0f%% of ceiling) | >= 300 |\n", dec1[0],
           100 * dec1[0] / ceil_tps);
    printf("| batch-1 decode, ctx 4096 | %.1f tok/s | |\n", dec1[1]);
    printf("| TTFT 512-token prompt | %.1f ms | <= 40 ms |\n", ttft[0] * 1e3);
    printf("| TTFT 4096-token prompt | %.1f ms | |\n", ttft[1] * 1e3);
    for (int k = 0; k < nb; k++)
        printf("| aggregate decode, %d seqs (ctx 512) | %.0f tok/s |%s\n", bsz[k], agg[k],
               bsz[k] == 128 ? " >= 4000 |" : " |");
    printf("| MoE GEMV path, batch 1 / 8 | %.1f / %.0f tok/s | |\n", moe_cmp[0][0], moe_cmp[0][1]);
    printf("| MoE grouped path, batch 1 / 8 | %.1f / %.0f tok/s | |\n", moe_cmp[1][0],
           moe_cmp[1][1]);
    printf("| 2nd turn (575 cached + 101 new), prefix cache | %.1f ms | |\n", turn2_cached * 1e3);
    printf("| 2nd turn, no prefix cache (676 tokens) | %.1f ms | |\n", turn2_full * 1e3);
    eng_cuda_model_free(g_m);
    return 0;
}
