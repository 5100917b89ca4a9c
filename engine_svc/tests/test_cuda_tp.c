/* test_cuda_tp.c (label gpu): the fast runner split over 2 GPUs (tensor_parallel 2: heads, KV
 * heads and MLP/expert intermediate columns split, NCCL all-reduce; eng_cuda_tp.h) against the
 * single-GPU fast runner and the transformers fixtures. Exit 77 without a CUDA device or with
 * fewer than 2 GPUs (or without libnccl.so.2: the split model cannot load).
 *
 * Per fixture (tiny-qwen3 dense, tiny-qwen3-moe, tiny-omni: 2 KV heads and an even intermediate
 * size, so N = 2 divides them):
 *  1. KV bytes per token per GPU of the split model = half the single-GPU runner's;
 *  2. all golden prompts prefilled in one multi-sequence step on both: the split model's first
 *     logits vs the fixture's fp32 first_logits within test_cuda_model.c's bf16 tolerance (nmse <
 *     1e-3, max abs < 5% of max |logit|), and vs the single-GPU logits (same tolerance; max abs and
 *     NMSE printed);
 *  3. greedy decode, all prompts batched (decode CUDA graphs with the NCCL all-reduces inside),
 *     both models fed the single-GPU runner's tokens: the split model's greedy token must equal
 *     the single-GPU one at every step, except where the single-GPU top-2 gap is within twice
 *     the measured logit difference of that row (a bf16 near-tie); prompts with no such step
 *     must match exactly (their free-running greedy sequences are equal);
 *  3b. the one-shot all-reduce over peer memory (the default) against NCCL (OM_CUDA_TP_AR=nccl):
 *     bit-identical logits and ids at every step, batched and alone, and with the prefills on NCCL
 *     and the decode steps on the one-shot kernel (OM_CUDA_TP_AR_ROWS=16);
 *  4. eng_service with OMNIPIPE_TENSOR_PARALLEL=2: the golden prompts alone, then all batched:
 *     greedy tokens alone == batched, and == a single-GPU service's, except at near-ties (top-2
 *     logprob gap < 0.05). One line per check.
 *
 * Checks 1-3 run per split: moe_parallel expert (whole experts per GPU, the default) and column,
 * each with the f32 all-reduce (OM_CUDA_TP_REDUCE=fp32, the default); the bf16 all-reduce runs
 * of both follow as "info" lines (printed, not counted: the A/B of the reduction). Check 4 runs
 * for expert and column. For the dense tiny-qwen3 both splits are the same (MLPs stay
 * column-split).
 * Diagnostic: for a prompt whose first logits fail a check (every prompt with OM_TP_TRACE=1),
 * the prefill is re-run with eng_cuda_model_trace on both models and, per layer, the NMSE of the
 * residual stream TP vs 1-GPU and the tokens whose router top-k sets differ are printed
 * ("trace" lines), so the first departing layer shows in one run.
 * Before all that (one GPU suffices): the expert-range MoE kernels (eng_cuda_moe_range_check):
 * the sum over 2 or 4 "ranks" of the block restricted to their experts == the full block, GEMV
 * and grouped paths, bf16 and f32 partials, and ranks with no routed pair give exact zeros. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "eng_backend.h"
#include "eng_cuda.h"
#include "eng_service.h"

#define MAXP 8
#define NSTEP 16
#define MAXTOK 512
#define TOL 0.05

static int g_fail;
static int g_info; /* s_result lines are informational (not counted) */
static char g_fix[1024];

static void s_result(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_result(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%-4s ", g_info ? (ok ? "info" : "info-FAIL") : (ok ? "ok" : "FAIL"));
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!ok && !g_info)
        g_fail++;
}

/* Reads an F32 tensor from a safetensors file; returns malloc'd data or NULL. */
static float *s_st_f32(const char *path, const char *name, size_t *ret_n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint64_t hl = 0;
    float *out = NULL;
    if (fread(&hl, 8, 1, f) == 1 && hl < (64u << 20)) {
        char *h = malloc(hl + 1);
        if (h && fread(h, 1, hl, f) == hl) {
            json_t *j = json_loadb(h, hl, 0, NULL);
            json_t *t = j ? json_object_get(j, name) : NULL;
            const char *dt = t ? json_string_value(json_object_get(t, "dtype")) : NULL;
            if (dt && strcmp(dt, "F32") == 0) {
                json_t *o = json_object_get(t, "data_offsets");
                uint64_t b0 = json_integer_value(json_array_get(o, 0)),
                         b1 = json_integer_value(json_array_get(o, 1));
                out = malloc(b1 - b0);
                fseek(f, (long)(8 + hl + b0), SEEK_SET);
                if (!out || fread(out, 1, b1 - b0, f) != b1 - b0) {
                    free(out);
                    out = NULL;
                } else {
                    *ret_n = (b1 - b0) / 4;
                }
            }
            json_decref(j);
        }
        free(h);
    }
    fclose(f);
    return out;
}

/* nmse of a vs ref, max abs difference, max |ref| */
static void s_cmp(const float *a, const float *ref, size_t n, double *nmse, double *mx, double *ma) {
    double num = 0, den = 0;
    *mx = 0;
    *ma = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
        if (fabs(d) > *mx)
            *mx = fabs(d);
        if (fabs(ref[i]) > *ma)
            *ma = fabs(ref[i]);
    }
    *nmse = den > 0 ? num / den : num;
}

/* top-1 minus top-2 of a row */
static double s_gap(const float *x, int n) {
    double a = -INFINITY, b = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (x[i] > a) {
            b = a;
            a = x[i];
        } else if (x[i] > b) {
            b = x[i];
        }
    }
    return a - b;
}

/* mp: ENG_CUDA_MOE_PAR_*; red: OM_CUDA_TP_REDUCE for the load (NULL: unset = default) */
static int s_load(const char *dir, int tp, int mp, const char *red, eng_cuda_model_t **m, char *err,
                  size_t errlen) {
    eng_cuda_model_opts_t o = {0};
    o.kv_fraction = 0.02;
    o.max_ctx = 4096;
    o.max_batch_tokens = 1024;
    o.max_seqs = 16;
    o.tensor_parallel = tp;
    o.moe_parallel = mp;
    if (red)
        setenv("OM_CUDA_TP_REDUCE", red, 1);
    else
        unsetenv("OM_CUDA_TP_REDUCE");
    int r = eng_cuda_model_load(dir, &o, m, err, errlen);
    unsetenv("OM_CUDA_TP_REDUCE");
    return r;
}

/* --- 0. expert-range MoE kernels (one GPU) ------------------------------------------------ */

static void t_moe_ranges(void) {
    static const struct {
        int T, D, I, E, K, ranks;
    } sh[] = {{1, 128, 128, 8, 2, 2}, {1, 128, 128, 8, 2, 4}, {4, 128, 192, 16, 4, 4},
              {64, 128, 192, 16, 4, 2}, {300, 128, 128, 16, 4, 4}};
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++)
        for (int mode = 1; mode <= 2; mode++)
            for (int f32 = 0; f32 <= 1; f32++) {
                char err[512] = "";
                double nm = 0, mx = 0, mref = 0;
                int zbad = 0, idle = 0;
                int r = eng_cuda_moe_range_check(0, sh[i].T, sh[i].D, sh[i].I, sh[i].E, sh[i].K,
                                                 sh[i].ranks, mode, f32, &nm, &mx, &mref, &zbad,
                                                 &idle, err, sizeof err);
                if (r < 0) {
                    s_result(0, "moe expert ranges T=%d E=%d ranks=%d %s: %d %s", sh[i].T,
                             sh[i].E, sh[i].ranks, mode == 1 ? "gemv" : "grouped", r, err);
                    continue;
                }
                /* f32 partials: the full block's bf16 result up to f32 summation order (a bf16
                   ulp, <= 2^-7 of the value, here and there; bound 2 ulps of the largest);
                   bf16 partials: one rounding per rank more */
                double nb = f32 ? 1e-6 : 1e-4, mb = (f32 ? 0.016 : 0.03) * mref;
                /* T = 1 with K = 2 over 4 ranks: at least 2 ranks get nothing */
                bool idle_ok = !(sh[i].T == 1 && sh[i].ranks == 4) || idle >= 2;
                s_result(nm < nb && mx <= mb && zbad == 0 && idle_ok,
                         "moe expert ranges T=%d D=%d I=%d E=%d K=%d over %d ranks, %s, %s "
                         "partials: sum vs full block nmse %.2e (< %.0e), max abs %.5f (<= %.5f), "
                         "idle rank rows %d, non-zero among them %d", sh[i].T, sh[i].D, sh[i].I,
                         sh[i].E, sh[i].K, sh[i].ranks, mode == 1 ? "gemv" : "grouped",
                         f32 ? "f32" : "bf16", nm, nb, mx, mb, idle, zbad);
            }
}

/* --- 1-3. runner level ---------------------------------------------------------------------- */

/* The traced prefill (eng_cuda_model_trace) of the batch b on both models; per layer, for prompt
 * p (tokens [off, off + n) of the batch): residual NMSE TP vs 1-GPU and differing top-k sets. */
static void s_trace(const char *name, const char *tag, eng_cuda_model_t *one,
                    eng_cuda_model_t *two, const eng_batch_t *b, int p, int off, int n) {
    eng_cuda_model_info_t in;
    eng_cuda_model_get_info(one, &in);
    int L = (int)in.n_layers, D = (int)in.hidden, K = (int)in.top_k, T = (int)b->n_tokens;
    size_t nh = (size_t)L * T * D, ni = (size_t)L * T * K;
    float *h1 = calloc(nh, 4), *h2 = calloc(nh, 4);
    int32_t *i1 = calloc(ni, 4), *i2 = calloc(ni, 4);
    float *lg = malloc((size_t)b->n_logits * in.vocab * 4);
    char err[512] = "";
    int r = h1 && h2 && i1 && i2 && lg ? 0 : -ENOMEM;
    if (r == 0 && (r = eng_cuda_model_trace(one, (uint32_t)T, h1, i1)) == 0)
        r = eng_cuda_model_forward(one, b, lg, NULL, err, sizeof err);
    eng_cuda_model_trace(one, 0, NULL, NULL);
    if (r == 0 && (r = eng_cuda_model_trace(two, (uint32_t)T, h2, i2)) == 0)
        r = eng_cuda_model_forward(two, b, lg, NULL, err, sizeof err);
    eng_cuda_model_trace(two, 0, NULL, NULL);
    if (r < 0) {
        printf("trace %s %s prompt %d: traced prefill failed: %d %s\n", name, tag, p, r, err);
    } else {
        int first = -1;
        for (int l = 0; l < L; l++) {
            double nm, mx, ma;
            size_t o = ((size_t)l * T + off) * D;
            s_cmp(h2 + o, h1 + o, (size_t)n * D, &nm, &mx, &ma);
            if (nm > 0 && first < 0)
                first = l;
            char diff[512] = ""; /* 3 entries of <= 90 characters (K <= 8 shown) */
            int nd = 0, w = 0;
            for (int t = off; t < off + n; t++) {
                const int32_t *a = i1 + ((size_t)l * T + t) * K, *c = i2 + ((size_t)l * T + t) * K;
                bool same = true; /* same set (order may differ) */
                for (int k = 0; k < K && same; k++) {
                    bool f = false;
                    for (int j = 0; j < K; j++)
                        f |= a[k] == c[j];
                    same = f;
                }
                if (same)
                    continue;
                if (nd++ < 3 && w < (int)sizeof diff - 128) {
                    w += snprintf(diff + w, sizeof diff - w, " [token %d: 1-GPU", t - off);
                    for (int k = 0; k < K && k < 8; k++)
                        w += snprintf(diff + w, sizeof diff - w, " %d", a[k]);
                    w += snprintf(diff + w, sizeof diff - w, " | TP");
                    for (int k = 0; k < K && k < 8; k++)
                        w += snprintf(diff + w, sizeof diff - w, " %d", c[k]);
                    w += snprintf(diff + w, sizeof diff - w, "]");
                }
            }
            printf("trace %s %s prompt %d layer %d: residual nmse %.2e max abs %.4f (max %.2f); "
                   "top-%d sets differ at %d/%d tokens%s\n", name, tag, p, l, nm, mx, ma, K, nd, n,
                   diff);
        }
        printf("trace %s %s prompt %d: first layer whose residual differs: %d\n", name, tag, p,
               first);
    }
    fflush(stdout);
    free(h1);
    free(h2);
    free(i1);
    free(i2);
    free(lg);
}

/* A fixture's golden prompts (at most MAXP), each with room for NSTEP generated tokens, and a
 * block table of `per` blocks each (per = the most any prompt needs): sequence i owns blocks
 * i·per .. i·per+per-1, listed in reverse (exercises the indirection) or in order. */
typedef struct {
    int n, per;
    int len[MAXP];
    int32_t *toks[MAXP], *bt[MAXP];
} t_prompts_t;

static void s_prompts(json_t *g, int bs, int reversed, t_prompts_t *p) {
    json_t *prompts = json_object_get(g, "prompts");
    p->n = (int)json_array_size(prompts);
    if (p->n > MAXP)
        p->n = MAXP;
    p->per = 0;
    for (int i = 0; i < p->n; i++) {
        json_t *a = json_array_get(prompts, i);
        p->len[i] = (int)json_array_size(a);
        p->toks[i] = malloc((size_t)(p->len[i] + NSTEP) * 4);
        for (int j = 0; j < p->len[i]; j++)
            p->toks[i][j] = (int32_t)json_integer_value(json_array_get(a, j));
        int nb = (p->len[i] + NSTEP + bs) / bs;
        if (nb > p->per)
            p->per = nb;
    }
    for (int i = 0; i < p->n; i++) {
        p->bt[i] = malloc((size_t)p->per * 4);
        for (int j = 0; j < p->per; j++)
            p->bt[i][j] = i * p->per + (reversed ? p->per - 1 - j : j);
    }
}

static void s_prompts_free(t_prompts_t *p) {
    for (int i = 0; i < p->n; i++) {
        free(p->toks[i]);
        free(p->bt[i]);
    }
    p->n = 0;
}

static void t_runner(const char *name, int mp, const char *red) {
    char dir[1200], path[1300], err[512] = "";
    char tag[64]; /* "TP=2 expert/fp32" */
    snprintf(tag, sizeof tag, "TP=2 %s/%s", mp == ENG_CUDA_MOE_PAR_COLUMN ? "column" : "expert",
             red ? red : "fp32");
    snprintf(dir, sizeof dir, "%s/%s", g_fix, name);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    if (!g) {
        s_result(0, "%s: cannot read %s", name, path);
        return;
    }
    eng_cuda_model_t *one = NULL, *two = NULL;
    int r = s_load(dir, 1, 0, NULL, &one, err, sizeof err);
    if (r < 0) {
        s_result(0, "%s: load on 1 GPU: %d %s", name, r, err);
        json_decref(g);
        return;
    }
    r = s_load(dir, 2, mp, red, &two, err, sizeof err);
    if (r < 0) {
        s_result(0, "%s: load %s: %d %s", name, tag, r, err);
        eng_cuda_model_free(one);
        json_decref(g);
        return;
    }
    eng_cuda_model_info_t i1, i2;
    eng_cuda_model_get_info(one, &i1);
    eng_cuda_model_get_info(two, &i2);
    uint64_t kb1 = eng_cuda_model_kv_bytes_per_token(one), kb2 = eng_cuda_model_kv_bytes_per_token(two);
    bool want_ep = mp != ENG_CUDA_MOE_PAR_COLUMN && i1.n_experts > 1;
    bool want_f32 = !red || strcmp(red, "bf16") != 0;
    s_result(i2.tensor_parallel == 2 && kb2 * 2 == kb1 && i2.n_heads == i1.n_heads &&
                 i2.moe_inter == i1.moe_inter && i2.expert_parallel == (uint32_t)want_ep &&
                 i2.tp_reduce_f32 == (uint32_t)want_f32,
             "%s: %s info: %u GPUs, experts %s, %s all-reduce, KV bytes/token/GPU %llu vs %llu on "
             "1 GPU, weights %.2f MiB/GPU vs %.2f MiB", name, tag, i2.tensor_parallel,
             i2.expert_parallel ? "whole per GPU" : "column-split", i2.tp_reduce_f32 ? "f32" : "bf16",
             (unsigned long long)kb2, (unsigned long long)kb1, i2.weight_bytes / 1048576.0,
             i1.weight_bytes / 1048576.0);

    int V = (int)i1.vocab;
    t_prompts_t P;
    s_prompts(g, (int)i1.block_size, 1, &P);
    const int n = P.n, per = P.per;
    int32_t **toks = P.toks, **bt = P.bt;
    const int *len = P.len;
    float *l1 = malloc((size_t)n * V * 4), *l2 = malloc((size_t)n * V * 4);
    int32_t id1[MAXP], id2[MAXP];
    eng_batch_seq_t seqs[MAXP];
    eng_batch_t b = {seqs, (uint32_t)n, 0, (uint32_t)n};
    int mism[MAXP] = {0};
    bool first_bad[MAXP] = {0};
    int checked = 0, equal = 0, near = 0, bad = 0;
    double worst_nmse = 0, worst_mx = 0;
    for (int i = 0; i < n; i++) {
        seqs[i] = (eng_batch_seq_t){toks[i], (uint32_t)len[i], 0, NULL, bt[i], (uint32_t)per, true};
        b.n_tokens += len[i];
    }
    for (int s = 0; s < NSTEP; s++) {
        if (s > 0) {
            for (int i = 0; i < n; i++) {
                seqs[i].tokens = toks[i] + len[i] + s - 1;
                seqs[i].n_tokens = 1;
                seqs[i].n_past = (uint32_t)(len[i] + s - 1);
            }
            b.n_tokens = (uint32_t)n;
        }
        if ((r = eng_cuda_model_forward(one, &b, l1, id1, err, sizeof err)) < 0) {
            s_result(0, "%s: 1 GPU step %d: %d %s", name, s, r, err);
            goto out;
        }
        if ((r = eng_cuda_model_forward(two, &b, l2, id2, err, sizeof err)) < 0) {
            s_result(0, "%s: TP=2 step %d: %d %s", name, s, r, err);
            goto out;
        }
        for (int i = 0; i < n; i++) {
            double nm, mx, ma;
            s_cmp(l2 + (size_t)i * V, l1 + (size_t)i * V, (size_t)V, &nm, &mx, &ma);
            if (nm > worst_nmse)
                worst_nmse = nm;
            if (mx > worst_mx)
                worst_mx = mx;
            if (s == 0) {
                first_bad[i] |= !(nm < 1e-3 && mx < 0.05 * ma);
                s_result(nm < 1e-3 && mx < 0.05 * ma,
                         "%s prompt %d (%d tokens): %s vs 1-GPU first logits: nmse %.2e (< 1e-3), "
                         "max abs %.4f (< %.4f)", name, i, len[i], tag, nm, mx, 0.05 * ma);
            }
            checked++;
            if (id1[i] == id2[i]) {
                equal++;
            } else {
                double gp = s_gap(l1 + (size_t)i * V, V);
                mism[i]++;
                if (gp <= 2 * mx) {
                    near++;
                } else {
                    bad++;
                    s_result(0, "%s prompt %d step %d: %s token %d, 1 GPU %d (gap %.4f > 2 x "
                             "diff %.4f)", name, i, s, tag, id2[i], id1[i], gp, mx);
                }
            }
            toks[i][len[i] + s] = id1[i]; /* both follow the single-GPU greedy sequence */
        }
        if (s == 0) { /* vs the fp32 reference */
            snprintf(path, sizeof path, "%s/golden.safetensors", dir);
            for (int i = 0; i < n && i < 2; i++) {
                char tn[32];
                size_t nr = 0;
                snprintf(tn, sizeof tn, "first_logits.%d", i);
                float *ref = s_st_f32(path, tn, &nr);
                if (!ref || (int)nr != V) {
                    s_result(0, "%s: %s missing", name, tn);
                    free(ref);
                    continue;
                }
                double nm, mx, ma, nm1, mx1, ma1;
                s_cmp(l2 + (size_t)i * V, ref, (size_t)V, &nm, &mx, &ma);
                first_bad[i] |= !(nm < 1e-3 && mx < 0.05 * ma);
                s_cmp(l1 + (size_t)i * V, ref, (size_t)V, &nm1, &mx1, &ma1);
                s_result(nm < 1e-3 && mx < 0.05 * ma,
                         "%s prompt %d: %s first logits vs fp32 ref: nmse %.2e (< 1e-3), max abs "
                         "%.4f (< %.4f); 1-GPU vs fp32 ref: nmse %.2e", name, i, tag, nm, mx,
                         0.05 * ma, nm1);
                free(ref);
            }
        }
    }
    {
        int exact = 0;
        for (int i = 0; i < n; i++)
            exact += mism[i] == 0;
        s_result(bad == 0, "%s: greedy decode %d prompts x %d steps batched: %s token == 1-GPU "
                 "token at %d/%d steps (%d near-ties), %d/%d prompts identical; logits worst nmse "
                 "%.2e, max abs %.4f", name, n, NSTEP, tag, equal, checked, near, exact, n,
                 worst_nmse, worst_mx);
    }
    { /* diagnostic: the step-0 prefill again, traced, for the prompts that failed */
        const char *all = getenv("OM_TP_TRACE");
        b.n_tokens = 0;
        for (int i = 0; i < n; i++) {
            seqs[i].tokens = toks[i];
            seqs[i].n_tokens = (uint32_t)len[i];
            seqs[i].n_past = 0;
            b.n_tokens += len[i];
        }
        for (int i = 0, off = 0; i < n; off += len[i], i++)
            if (first_bad[i] || (all && !strcmp(all, "1")))
                s_trace(name, tag, one, two, &b, i, off, len[i]);
    }
out:
    s_prompts_free(&P);
    free(l1);
    free(l2);
    eng_cuda_model_free(two);
    eng_cuda_model_free(one);
    json_decref(g);
}

/* --- 3b. the one-shot all-reduce over peer memory against NCCL ---------------------------- */

static int s_load_ar(const char *dir, int mp, const char *ar, const char *rows,
                     eng_cuda_model_t **m, char *err, size_t errlen) {
    setenv("OM_CUDA_TP_AR", ar, 1);
    if (rows)
        setenv("OM_CUDA_TP_AR_ROWS", rows, 1);
    int r = s_load(dir, 2, mp, NULL, m, err, errlen);
    unsetenv("OM_CUDA_TP_AR");
    unsetenv("OM_CUDA_TP_AR_ROWS");
    return r;
}

/* With 2 ranks the one-shot kernel's sum a + b is NCCL's f32 sum, rounded once as before: the
 * split model's logits must be bit-identical with OM_CUDA_TP_AR=p2p (default) and =nccl, at every
 * step: all prompts batched (eager prefill, decode graphs at T = n, PDL on with p2p), then prompt
 * 0 alone (T = 1 graphs). The "rows 16" variant sends the prefills (> 16 rows) through NCCL and
 * the decode steps through the one-shot kernel: the hand-over between the two paths. */
static void t_p2p(const char *name, int mp) {
    char dir[1200], err[512] = "";
    const char *mode = mp == ENG_CUDA_MOE_PAR_COLUMN ? "column" : "expert";
    snprintf(dir, sizeof dir, "%s/%s/golden.json", g_fix, name);
    json_t *g = json_load_file(dir, 0, NULL);
    snprintf(dir, sizeof dir, "%s/%s", g_fix, name);
    if (!g) {
        s_result(0, "%s: cannot read golden.json", name);
        return;
    }
    eng_cuda_model_t *m[3] = {NULL, NULL, NULL}; /* nccl, p2p, p2p with 16 rows */
    static const char *lab[3] = {"nccl", "p2p", "p2p rows 16"};
    int r = s_load_ar(dir, mp, "nccl", NULL, &m[0], err, sizeof err);
    if (r >= 0)
        r = s_load_ar(dir, mp, "p2p", NULL, &m[1], err, sizeof err);
    if (r >= 0)
        r = s_load_ar(dir, mp, "p2p", "16", &m[2], err, sizeof err);
    if (r < 0) {
        s_result(0, "%s: TP=2 %s load for the all-reduce A/B: %d %s", name, mode, r, err);
        goto done;
    }
    eng_cuda_model_info_t in[3];
    for (int k = 0; k < 3; k++)
        eng_cuda_model_get_info(m[k], &in[k]);
    s_result(in[0].tp_ar_rows == 0 && in[1].tp_ar_rows == 512 && in[2].tp_ar_rows == 16,
             "%s: TP=2 %s one-shot all-reduce rows: nccl %u (want 0), p2p %u (512), p2p rows 16 "
             "%u (16)", name, mode, in[0].tp_ar_rows, in[1].tp_ar_rows, in[2].tp_ar_rows);
    if (in[1].tp_ar_rows == 0)
        goto done; /* no peer access: the line above failed and says so */
    {
        int V = (int)in[0].vocab;
        t_prompts_t P;
        s_prompts(g, (int)in[0].block_size, 0, &P);
        const int n = P.n, per = P.per;
        int32_t **toks = P.toks, **bt = P.bt;
        const int *len = P.len;
        float *lg[3];
        for (int k = 0; k < 3; k++)
            lg[k] = malloc((size_t)n * V * 4);
        int rows = 0, same[3] = {0, 0, 0}, ids_same[3] = {0, 0, 0};
        eng_batch_seq_t seqs[MAXP];
        for (int phase = 0; phase < 2 && r >= 0; phase++) {
            const int nb = phase == 0 ? n : 1; /* all prompts batched, then prompt 0 alone */
            eng_batch_t b = {seqs, (uint32_t)nb, 0, (uint32_t)nb};
            for (int i = 0; i < nb; i++) {
                seqs[i] = (eng_batch_seq_t){toks[i], (uint32_t)len[i], 0, NULL, bt[i],
                                            (uint32_t)per, true};
                b.n_tokens += len[i];
            }
            for (int s = 0; s < NSTEP && r >= 0; s++) {
                if (s > 0) {
                    for (int i = 0; i < nb; i++) {
                        seqs[i].tokens = toks[i] + len[i] + s - 1;
                        seqs[i].n_tokens = 1;
                        seqs[i].n_past = (uint32_t)(len[i] + s - 1);
                    }
                    b.n_tokens = (uint32_t)nb;
                }
                int32_t id[3][MAXP];
                for (int k = 0; k < 3 && r >= 0; k++)
                    if ((r = eng_cuda_model_forward(m[k], &b, lg[k], id[k], err, sizeof err)) < 0)
                        s_result(0, "%s: TP=2 %s %s phase %d step %d: %d %s", name, mode, lab[k],
                                 phase, s, r, err);
                for (int i = 0; i < nb && r >= 0; i++) {
                    rows++;
                    for (int k = 1; k < 3; k++) {
                        same[k] += !memcmp(lg[k] + (size_t)i * V, lg[0] + (size_t)i * V,
                                           (size_t)V * 4);
                        ids_same[k] += id[k][i] == id[0][i];
                    }
                    toks[i][len[i] + s] = id[0][i];
                }
            }
        }
        for (int k = 1; k < 3 && r >= 0; k++)
            s_result(same[k] == rows && ids_same[k] == rows,
                     "%s: TP=2 %s all-reduce %s vs nccl: bit-identical logits rows %d/%d, equal "
                     "greedy ids %d/%d (%d prompts batched + prompt 0 alone, %d steps each)", name,
                     mode, lab[k], same[k], rows, ids_same[k], rows, n, NSTEP);
        s_prompts_free(&P);
        for (int k = 0; k < 3; k++)
            free(lg[k]);
    }
done:
    for (int k = 0; k < 3; k++)
        eng_cuda_model_free(m[k]);
    json_decref(g);
}

/* --- 4. eng_service level ------------------------------------------------------------------ */

typedef struct t_run {
    int32_t tokens[NSTEP];
    float gap[NSTEP]; /* top1 - top2 logprob */
    uint32_t n;
    int err;
} t_run_t;

static eng_service_t *s_service(const char *name, int tp, const char *mp) {
    char dir[1200], err[512] = "", tpv[16];
    snprintf(dir, sizeof dir, "%s/%s", g_fix, name);
    snprintf(tpv, sizeof tpv, "%d", tp);
    setenv("OMNIPIPE_TENSOR_PARALLEL", tpv, 1);
    setenv("OMNIPIPE_CUDA_RUNNER", "fast", 1);
    if (mp)
        setenv("OMNIPIPE_MOE_PARALLEL", mp, 1);
    eng_service_opts_t o = {.model_dir = dir, .backend = "cuda", .engine_id = "tp-test",
                            .kv_blocks = 1024};
    eng_service_t *s = NULL;
    int r = eng_service_new(&o, NULL, NULL, &s, err, sizeof err);
    unsetenv("OMNIPIPE_TENSOR_PARALLEL");
    unsetenv("OMNIPIPE_MOE_PARALLEL");
    if (r < 0) {
        s_result(0, "%s: eng_service_new(cuda, tensor_parallel %d): %d %s", name, tp, r, err);
        return NULL;
    }
    return s;
}

static int s_submit(eng_service_t *s, uint64_t id, json_t *prompt) {
    int32_t ids[MAXTOK];
    size_t n = json_array_size(prompt);
    if (n > MAXTOK)
        return -E2BIG;
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(prompt, i));
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_request_id = true;
    h.request_id = id;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_max_tokens = sp.has_ignore_eos = sp.has_logprobs = true;
    sp.max_tokens = NSTEP;
    sp.ignore_eos = true;
    sp.logprobs = 2;
    Omnipipe__PreparedRequest pr = OMNIPIPE__PREPARED_REQUEST__INIT;
    pr.ids = ids;
    pr.n_ids = n;
    pr.sampling = &sp;
    return eng_service_submit(s, &h, &pr, 1);
}

static int s_drain(eng_service_t *s, t_run_t *runs, size_t n_runs) {
    for (int guard = 0; eng_service_has_work(s); guard++) {
        const Omnipipe__TokenBatch *b = NULL;
        int r = eng_service_step(s, 1, &b);
        if (r < 0 || guard > 100000)
            return r < 0 ? r : -ETIMEDOUT;
        for (size_t i = 0; b && i < b->n_seqs; i++) {
            const Omnipipe__SeqStep *st = b->seqs[i];
            if (st->request_id >= n_runs)
                return -EINVAL;
            t_run_t *q = &runs[st->request_id];
            for (size_t j = 0; j < st->n_token_ids && q->n < NSTEP; j++) {
                q->tokens[q->n] = st->token_ids[j];
                q->gap[q->n] = 0;
                if (j < st->n_logprobs && st->logprobs[j]->n_top >= 2)
                    q->gap[q->n] = st->logprobs[j]->top[0]->logprob - st->logprobs[j]->top[1]->logprob;
                q->n++;
            }
            if (st->has_finish && st->finish == OMNIPIPE__FINISH_REASON__FINISH_ERROR)
                q->err = 1;
        }
    }
    return 0;
}

/* runs a and b agree, or part at a near-tie of either */
static int s_same(const t_run_t *a, const t_run_t *b, int *ret_exact) {
    if (a->n != NSTEP || b->n != NSTEP || a->err || b->err)
        return 0;
    uint32_t j = 0;
    while (j < NSTEP && a->tokens[j] == b->tokens[j])
        j++;
    *ret_exact = j == NSTEP;
    return j == NSTEP || a->gap[j] < TOL || b->gap[j] < TOL;
}

static void t_service(const char *name, const char *mp) {
    char path[1300];
    snprintf(path, sizeof path, "%s/%s/golden.json", g_fix, name);
    json_t *g = json_load_file(path, 0, NULL);
    json_t *prompts = json_object_get(g, "prompts");
    size_t n = json_array_size(prompts);
    if (n > MAXP)
        n = MAXP;
    t_run_t alone[MAXP], batch[MAXP], ref[MAXP];
    memset(alone, 0, sizeof alone);
    memset(batch, 0, sizeof batch);
    memset(ref, 0, sizeof ref);
    int r = 0;
    eng_service_t *s = s_service(name, 1, NULL);
    for (size_t i = 0; s && i < n && r >= 0; i++)
        if ((r = s_submit(s, i, json_array_get(prompts, i))) >= 0)
            r = s_drain(s, ref, n);
    eng_service_free(s);
    s = r >= 0 && s ? s_service(name, 2, mp) : NULL;
    for (size_t i = 0; s && i < n && r >= 0; i++)
        if ((r = s_submit(s, i, json_array_get(prompts, i))) >= 0)
            r = s_drain(s, alone, n);
    for (size_t i = 0; s && i < n && r >= 0; i++)
        r = s_submit(s, i, json_array_get(prompts, i));
    if (s && r >= 0)
        r = s_drain(s, batch, n);
    eng_service_free(s);
    if (!s || r < 0) {
        s_result(0, "%s: eng_service TP=2 %s run failed: %d", name, mp, r);
        json_decref(g);
        return;
    }
    int ok_ab = 1, ok_ref = 1, ex_ab = 0, ex_ref = 0;
    for (size_t i = 0; i < n; i++) {
        int e = 0;
        ok_ab &= s_same(&alone[i], &batch[i], &e);
        ex_ab += e;
        e = 0;
        ok_ref &= s_same(&alone[i], &ref[i], &e);
        ex_ref += e;
    }
    s_result(ok_ab, "%s: eng_service TP=2 %s greedy %zu prompts x %d tokens: alone == batched "
             "(%d/%zu identical, the rest part at near-ties)", name, mp, n, NSTEP, ex_ab, n);
    s_result(ok_ref, "%s: eng_service TP=2 %s alone == 1-GPU service (%d/%zu identical, the rest "
             "part at near-ties)", name, mp, ex_ref, n);
    json_decref(g);
}

int main(void) {
    eng_backend_t *probe = NULL;
    if (eng_backend_new("cuda", 0, 0, &probe) < 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    eng_backend_free(probe);
    const char *fxd = getenv("OM_FIXTURES_DIR");
    if (fxd)
        snprintf(g_fix, sizeof g_fix, "%s", fxd);
    else
        snprintf(g_fix, sizeof g_fix, "%s/fixtures",
                 getenv("OM_SHARED_DIR") ? getenv("OM_SHARED_DIR") : OM_SHARED_DIR);
    t_moe_ranges();
    { /* 2 GPUs and NCCL? */
        char dir[1200], err[512] = "";
        snprintf(dir, sizeof dir, "%s/tiny-qwen3", g_fix);
        eng_cuda_model_t *m = NULL;
        int r = s_load(dir, 2, 0, NULL, &m, err, sizeof err);
        if (r == -ENODEV || r == -ELIBACC) {
            printf("SKIP: tensor_parallel 2 unavailable: %s\n", err);
            printf("%s\n", g_fail ? "FAILED (one-GPU checks)" : "one-GPU checks passed");
            return g_fail ? 1 : 77;
        }
        s_result(r == 0, "tiny-qwen3: load with tensor_parallel 2 (NCCL): %s", r == 0 ? "ok" : err);
        eng_cuda_model_free(m);
        if (r < 0)
            return 1;
    }
    static const char *fx[] = {"tiny-qwen3", "tiny-qwen3-moe", "tiny-omni"};
    for (int i = 0; i < 3; i++) {
        t_runner(fx[i], ENG_CUDA_MOE_PAR_EXPERT, NULL);
        t_runner(fx[i], ENG_CUDA_MOE_PAR_COLUMN, NULL);
    }
    for (int i = 0; i < 3; i++) {
        t_p2p(fx[i], ENG_CUDA_MOE_PAR_EXPERT);
        t_p2p(fx[i], ENG_CUDA_MOE_PAR_COLUMN);
    }
    g_info = 1; /* the bf16 all-reduce (OM_CUDA_TP_REDUCE=bf16): the A/B, not counted */
    for (int i = 0; i < 3; i++) {
        t_runner(fx[i], ENG_CUDA_MOE_PAR_COLUMN, "bf16");
        t_runner(fx[i], ENG_CUDA_MOE_PAR_EXPERT, "bf16");
    }
    g_info = 0;
    for (int i = 0; i < 3; i++) {
        t_service(fx[i], "expert");
        t_service(fx[i], "column");
    }
    printf("%s\n", g_fail ? "FAILED" : "all passed");
    return g_fail ? 1 : 0;
}
