/* test_cuda_model.c: whole-model parity of the CUDA backend on the transformers fixtures
 * (fixtures/README.md), label gpu.
 *
 * 1. Fast runner (eng_cuda_model, bf16) on tiny-qwen3-moe, tiny-omni and tiny-qwen3 (dense, tied):
 *    all prompts prefilled in one multi-sequence step; first-step logits vs first_logits.i (fp32
 *    reference) within bf16 tolerance; then teacher-forced decode of runs.bf16[i].tokens, all
 *    prompts batched (CUDA-graph buckets): the CUDA top-1 must equal the reference's wherever the
 *    reference's top-2 gap exceeds the measured logit error, and that error must stay small.
 * 2. The model graph (eng_model, cuda_runner "vtable") on the CUDA backend vs the same on the CPU
 *    backend, same prompt, prefill + 3 decode steps: logits NMSE.
 * Fixtures are read from $OM_FIXTURES_DIR or $OM_SHARED_DIR/fixtures; exit 77 without a GPU. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "eng_backend.h"
#include "eng_cuda.h"
#include "eng_model.h"

static int g_fail;
static char g_fix[1024];

static void s_result(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_result(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%-4s ", ok ? "ok" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!ok)
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
        if (fread(h, 1, hl, f) == hl) {
            json_t *j = json_loadb(h, hl, 0, NULL);
            json_t *t = j ? json_object_get(j, name) : NULL;
            if (t && strcmp(json_string_value(json_object_get(t, "dtype")), "F32") == 0) {
                json_t *o = json_object_get(t, "data_offsets");
                uint64_t b0 = json_integer_value(json_array_get(o, 0)),
                         b1 = json_integer_value(json_array_get(o, 1));
                out = malloc(b1 - b0);
                fseek(f, (long)(8 + hl + b0), SEEK_SET);
                if (fread(out, 1, b1 - b0, f) != b1 - b0) {
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

static double s_nmse(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

static int s_argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

/* --- 1. fast runner vs transformers goldens ------------------------------------------------ */

static void t_fixture(const char *name) {
    char dir[1200], path[1300];
    snprintf(dir, sizeof dir, "%s/%s", g_fix, name);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    if (!g) {
        s_result(0, "%s: cannot read %s", name, path);
        return;
    }
    eng_cuda_model_opts_t o = {0};
    o.dummy = false;
    o.kv_fraction = 0.02;
    o.max_ctx = 4096;
    o.max_batch_tokens = 1024;
    o.max_seqs = 16;
    eng_cuda_model_t *m = NULL;
    char err[512] = "";
    int r = eng_cuda_model_load(dir, &o, &m, err, sizeof err);
    if (r < 0) {
        s_result(0, "%s: load: %d %s", name, r, err);
        json_decref(g);
        return;
    }
    eng_cuda_model_info_t info;
    eng_cuda_model_get_info(m, &info);
    int V = (int)info.vocab, bs = (int)info.block_size;
    json_t *prompts = json_object_get(g, "prompts");
    json_t *runs = json_object_get(json_object_get(g, "runs"), "bf16");
    int n = (int)json_array_size(prompts);
    if (n > 8)
        n = 8;
    int steps = (int)json_array_size(json_object_get(json_array_get(runs, 0), "tokens"));
    int32_t *toks[8], *bt[8];
    int len[8], per = 0;
    for (int i = 0; i < n; i++) {
        json_t *p = json_array_get(prompts, i);
        len[i] = (int)json_array_size(p);
        toks[i] = malloc((len[i] + steps) * 4);
        for (int j = 0; j < len[i]; j++)
            toks[i][j] = (int32_t)json_integer_value(json_array_get(p, j));
        json_t *rt = json_object_get(json_array_get(runs, i), "tokens");
        for (int j = 0; j < steps; j++)
            toks[i][len[i] + j] = (int32_t)json_integer_value(json_array_get(rt, j));
        int nb = (len[i] + steps + bs) / bs;
        if (nb > per)
            per = nb;
    }
    for (int i = 0; i < n; i++) {
        bt[i] = malloc(per * 4);
        for (int j = 0; j < per; j++)
            bt[i][j] = i * per + (per - 1 - j); /* reversed: exercises the indirection */
    }
    float *logits = malloc((size_t)n * V * 4);
    int32_t ids[8];
    eng_batch_seq_t seqs[8];
    eng_batch_t b = {seqs, (uint32_t)n, 0, (uint32_t)n};
    for (int i = 0; i < n; i++) {
        seqs[i] = (eng_batch_seq_t){toks[i], (uint32_t)len[i], 0, NULL, bt[i], (uint32_t)per, true};
        b.n_tokens += len[i];
    }
    r = eng_cuda_model_forward(m, &b, logits, ids, err, sizeof err);
    if (r < 0) {
        s_result(0, "%s: prefill: %d %s", name, r, err);
        goto out;
    }
    /* first logits vs the fp32 reference */
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
        double nm = s_nmse(logits + (size_t)i * V, ref, V);
        double mx = 0, ma = 0;
        for (int v = 0; v < V; v++) {
            double d = fabs((double)logits[(size_t)i * V + v] - ref[v]);
            if (d > mx)
                mx = d;
            if (fabs(ref[v]) > ma)
                ma = fabs(ref[v]);
        }
        s_result(nm < 1e-3 && mx < 0.05 * ma, "%s prompt %d (%d tokens): first logits vs fp32 ref: "
                 "nmse %.2e, max abs err %.4f (max |logit| %.2f)", name, i, len[i], nm, mx, ma);
        free(ref);
    }
    /* teacher-forced: step s compares with topk[s] */
    double max_err = 0;
    int checked = 0, agree = 0, total = 0;
    int *mine_top = calloc((size_t)n * steps, sizeof(int));
    float *gap = calloc((size_t)n * steps, sizeof(float));
    int *ref_top = calloc((size_t)n * steps, sizeof(int));
    for (int s = 0; s < steps; s++) {
        if (s > 0) {
            for (int i = 0; i < n; i++) {
                seqs[i].tokens = toks[i] + len[i] + s - 1;
                seqs[i].n_tokens = 1;
                seqs[i].n_past = (uint32_t)(len[i] + s - 1);
            }
            b.n_tokens = (uint32_t)n;
            r = eng_cuda_model_forward(m, &b, logits, ids, err, sizeof err);
            if (r < 0) {
                s_result(0, "%s: decode step %d: %d %s", name, s, r, err);
                goto out2;
            }
        }
        for (int i = 0; i < n; i++) {
            json_t *tk = json_array_get(json_object_get(json_array_get(runs, i), "topk"), s);
            json_t *tid = json_array_get(tk, 0), *tl = json_array_get(tk, 1);
            const float *lg = logits + (size_t)i * V;
            for (size_t k = 0; k < json_array_size(tid); k++) {
                int id = (int)json_integer_value(json_array_get(tid, k));
                double d = fabs(lg[id] - json_number_value(json_array_get(tl, k)));
                if (d > max_err)
                    max_err = d;
            }
            ref_top[i * steps + s] = (int)json_integer_value(json_array_get(tid, 0));
            gap[i * steps + s] = (float)(json_number_value(json_array_get(tl, 0)) -
                                         json_number_value(json_array_get(tl, 1)));
            mine_top[i * steps + s] = ids[i];
            if (ids[i] != s_argmax(lg, V))
                s_result(0, "%s: GPU argmax %d != host argmax %d", name, ids[i], s_argmax(lg, V));
        }
    }
    for (int i = 0; i < n * steps; i++) {
        total++;
        if (mine_top[i] == ref_top[i])
            agree++;
        if (gap[i] > max_err) {
            checked++;
            if (mine_top[i] != ref_top[i])
                s_result(0, "%s: seq %d step %d: top-1 %d, reference %d (gap %.4f > err %.4f)",
                         name, i / steps, i % steps, mine_top[i], ref_top[i], gap[i], max_err);
        }
    }
    s_result(max_err < 0.25 && checked * 2 >= total,
             "%s: teacher-forced %d prompts x %d steps: top-1 agrees %d/%d; %d steps with gap > "
             "measured logit error %.4f all agree", name, n, steps, agree, total, checked, max_err);
out2:
    free(mine_top);
    free(gap);
    free(ref_top);
out:
    for (int i = 0; i < n; i++) {
        free(toks[i]);
        free(bt[i]);
    }
    free(logits);
    eng_cuda_model_free(m);
    json_decref(g);
}

/* --- 1b. decode tail (OM_CUDA_TAIL) on the fixtures -------------------------------------- */

/* One teacher-forced run of the fast runner with OM_CUDA_TAIL=tail: every prompt prefilled but
 * its last 4 tokens (one step), then those 4 tokens as chunks of T <= 8 (seq 0 alone: R = 1,
 * logits row 3; seqs 1 and 2 together with only seq 2 wanting logits: R = 1, row 7; the rest in
 * one step), then `steps` decode steps of all prompts (eager, then CUDA-graph replays). The
 * logits and ids of every step are appended to lg/ids (row stride *ret_V, the vocab); returns
 * the number of logits rows or < 0. */
static int s_tail_run(const char *dir, const char *tail, json_t *g, int steps, float *lg,
                      int32_t *ids, int max_rows, int *ret_V) {
    setenv("OM_CUDA_TAIL", tail, 1);
    eng_cuda_model_opts_t o = {0};
    o.kv_fraction = 0.02;
    o.max_ctx = 4096;
    o.max_batch_tokens = 1024;
    o.max_seqs = 16;
    eng_cuda_model_t *m = NULL;
    char err[512] = "";
    int r = eng_cuda_model_load(dir, &o, &m, err, sizeof err);
    unsetenv("OM_CUDA_TAIL");
    if (r < 0) {
        printf("load %s (OM_CUDA_TAIL=%s): %d %s\n", dir, tail, r, err);
        return r;
    }
    eng_cuda_model_info_t info;
    eng_cuda_model_get_info(m, &info);
    const int V = (int)info.vocab, bs = (int)info.block_size;
    *ret_V = V;
    json_t *prompts = json_object_get(g, "prompts");
    json_t *runs = json_object_get(json_object_get(g, "runs"), "bf16");
    int n = (int)json_array_size(prompts);
    if (n > 8)
        n = 8;
    int32_t *toks[8], *bt[8];
    int len[8], per = 0, rows = 0;
    for (int i = 0; i < n; i++) {
        json_t *p = json_array_get(prompts, i);
        json_t *rt = json_object_get(json_array_get(runs, i), "tokens");
        len[i] = (int)json_array_size(p);
        toks[i] = malloc((len[i] + steps) * 4);
        for (int j = 0; j < len[i]; j++)
            toks[i][j] = (int32_t)json_integer_value(json_array_get(p, j));
        for (int j = 0; j < steps; j++)
            toks[i][len[i] + j] = (int32_t)json_integer_value(json_array_get(rt, j));
        int nb = (len[i] + steps + bs) / bs;
        if (nb > per)
            per = nb;
    }
    for (int i = 0; i < n; i++) {
        bt[i] = malloc(per * 4);
        for (int j = 0; j < per; j++)
            bt[i][j] = i * per + j;
    }
    eng_batch_seq_t seqs[8];
    /* step plan: 0 prefill but 4; 1 seq 0's 4; 2 seqs 1, 2's 4 (seq 1 no logits); 3 the rest's
       4; 4.. decode */
    for (int st = 0; st < 4 + steps && r >= 0; st++) {
        eng_batch_t b = {seqs, 0, 0, 0};
        for (int i = 0; i < n; i++) {
            const int cut = len[i] > 4 ? len[i] - 4 : 1;
            eng_batch_seq_t q = {toks[i], 0, 0, NULL, bt[i], (uint32_t)per, true};
            if (st == 0) {
                q.n_tokens = (uint32_t)cut;
            } else if (st <= 3) {
                const int grp = i == 0 ? 1 : (i <= 2 ? 2 : 3);
                if (grp != st || cut >= len[i])
                    continue;
                q.tokens = toks[i] + cut;
                q.n_tokens = (uint32_t)(len[i] - cut);
                q.n_past = (uint32_t)cut;
                q.want_logits = i != 1;
            } else {
                const int k = st - 4; /* token len + k - 1 decodes to len + k */
                if (k == 0)
                    continue; /* the prompts' last logits came from the chunk steps */
                q.tokens = toks[i] + len[i] + k - 1;
                q.n_tokens = 1;
                q.n_past = (uint32_t)(len[i] + k - 1);
            }
            seqs[b.n_seqs++] = q;
            b.n_tokens += q.n_tokens;
            b.n_logits += q.want_logits ? 1 : 0;
        }
        if (b.n_seqs == 0)
            continue;
        if (rows + (int)b.n_logits > max_rows) {
            r = -E2BIG;
            break;
        }
        r = eng_cuda_model_forward(m, &b, lg + (size_t)rows * V, ids + rows, err, sizeof err);
        if (r < 0)
            printf("%s (OM_CUDA_TAIL=%s) step %d: %d %s\n", dir, tail, st, r, err);
        rows += (int)b.n_logits;
    }
    for (int i = 0; i < n; i++) {
        free(toks[i]);
        free(bt[i]);
    }
    eng_cuda_model_free(m);
    return r < 0 ? r : rows;
}

/* The tail with OM_CUDA_TAIL=1 against =0 (and =0 against itself, the control: the runner is
 * deterministic): every step's logits and ids bit for bit; ids also against a host argmax of the
 * logits. */
static void t_tail_fixture(const char *name) {
    char dir[1200], path[1300];
    snprintf(dir, sizeof dir, "%s/%s", g_fix, name);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    if (!g) {
        s_result(0, "%s: cannot read %s", name, path);
        return;
    }
    const int steps = 6, max_rows = 8 * (steps + 4), V = 152064; /* V: an upper bound */
    float *lg[3];
    int32_t *ids[3];
    int rows[3], Vk[3] = {0, 0, 0};
    const char *mode[3] = {"0", "1", "0"};
    for (int k = 0; k < 3; k++) {
        lg[k] = malloc((size_t)max_rows * V * 4);
        ids[k] = malloc((size_t)max_rows * 4);
        rows[k] = s_tail_run(dir, mode[k], g, steps, lg[k], ids[k], max_rows, &Vk[k]);
    }
    if (rows[0] < 0 || rows[1] < 0 || rows[2] < 0 || rows[0] != rows[1] || rows[0] != rows[2]) {
        s_result(0, "%s: decode tail runs failed or differ in rows (%d, %d, %d)", name, rows[0],
                 rows[1], rows[2]);
    } else {
        const int Vr = Vk[0] == Vk[1] && Vk[0] == Vk[2] && Vk[0] <= V ? Vk[0] : 0;
        long d[2] = {0, 0}, di[2] = {0, 0}, host = 0;
        for (int c = 0; c < 2; c++) {
            const int k = c == 0 ? 1 : 2;
            for (size_t i = 0; i < (size_t)rows[0] * Vr; i++)
                d[c] += memcmp(&lg[0][i], &lg[k][i], 4) != 0;
            for (int i = 0; i < rows[0]; i++)
                di[c] += ids[0][i] != ids[k][i];
        }
        for (int i = 0; i < rows[0]; i++) {
            const float *x = lg[1] + (size_t)i * Vr;
            int b = -1;
            for (int v = 0; v < Vr; v++)
                if (x[v] == x[v] && (b < 0 || x[v] > x[b]))
                    b = v;
            host += ids[1][i] != (b < 0 ? 0 : b);
        }
        s_result(Vr > 0 && d[1] == 0 && di[1] == 0,
                 "%s: decode tail control, OM_CUDA_TAIL=0 twice: %d rows, logits != %ld, ids != "
                 "%ld (max 0)", name, rows[0], d[1], di[1]);
        s_result(Vr > 0 && d[0] == 0 && di[0] == 0 && host == 0,
                 "%s: decode tail OM_CUDA_TAIL=1 vs 0: %d rows (prefill, chunks T<=8 R=1, %d "
                 "decode steps), logits != %ld, ids != %ld, ids != host argmax %ld (max 0)",
                 name, rows[0], steps - 1, d[0], di[0], host);
    }
    for (int k = 0; k < 3; k++) {
        free(lg[k]);
        free(ids[k]);
    }
    json_decref(g);
}

/* --- 2. model graph on CUDA vtable vs CPU backend ----------------------------------------- */

static int s_run_model(const char *dir, eng_backend_t *be, const int32_t *toks, int len,
                       int steps, float *ret, int V) {
    eng_model_t *m = NULL;
    char err[512] = "";
    /* the model graph over the backend ops, not the fast runner the cuda backend gets by default */
    eng_model_load_opts_t lo = {.cuda_runner = "vtable"};
    int r = eng_model_load(dir, &lo, be, &m, err, sizeof err);
    if (r < 0) {
        printf("eng_model_load(%s): %d %s\n", be->name, r, err);
        return r;
    }
    if ((r = eng_model_alloc_kv(m, 64, 16)) < 0) {
        eng_model_free(m);
        return r;
    }
    int32_t bt[64];
    for (int i = 0; i < 64; i++)
        bt[i] = 63 - i;
    for (int s = 0; s <= steps && r >= 0; s++) {
        eng_batch_seq_t q = {s == 0 ? toks : toks + len + s - 1, s == 0 ? (uint32_t)len : 1,
                             s == 0 ? 0 : (uint32_t)(len + s - 1), NULL, bt, 64, true};
        eng_batch_t b = {&q, 1, q.n_tokens, 1};
        eng_tensor_t *lg = NULL;
        r = eng_model_forward(m, &b, &lg);
        if (r >= 0)
            r = eng_backend_download(be, ret + (size_t)s * V, lg);
    }
    eng_model_free(m);
    return r;
}

static void t_backend_parity(const char *name) {
    char dir[1200], path[1300];
    snprintf(dir, sizeof dir, "%s/%s", g_fix, name);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    if (!g) {
        s_result(0, "%s: cannot read %s", name, path);
        return;
    }
    json_t *p = json_array_get(json_object_get(g, "prompts"), 0);
    json_t *rt = json_object_get(json_array_get(json_object_get(json_object_get(g, "runs"), "fp32"), 0),
                                 "tokens");
    int len = (int)json_array_size(p), steps = 3;
    int32_t *toks = malloc((len + steps) * 4);
    for (int j = 0; j < len; j++)
        toks[j] = (int32_t)json_integer_value(json_array_get(p, j));
    for (int j = 0; j < steps; j++)
        toks[len + j] = (int32_t)json_integer_value(json_array_get(rt, j));
    eng_backend_t *cpu = NULL, *gpu = NULL;
    eng_backend_new("cpu", 0, 0, &cpu);
    eng_backend_new("cuda", 0, 0, &gpu);
    /* vocab from the CPU run's logits size: read config via a CPU model load */
    int V = 152064;
    float *a = calloc((size_t)(steps + 1) * V, 4), *c = calloc((size_t)(steps + 1) * V, 4);
    int r1 = s_run_model(dir, cpu, toks, len, steps, a, V);
    int r2 = r1 < 0 ? r1 : s_run_model(dir, gpu, toks, len, steps, c, V);
    if (r1 < 0 || r2 < 0) {
        s_result(0, "%s: eng_model CPU/CUDA run failed (%d, %d) %s", name, r1, r2,
                 eng_cuda_last_error());
    } else {
        for (int s = 0; s <= steps; s++) {
            /* V may be smaller than 152064: rows were written with stride V, compare the prefix
               that the model wrote (logits beyond vocab are untouched zeros on both sides) */
            double nm = s_nmse(c + (size_t)s * V, a + (size_t)s * V, (size_t)V);
            s_result(nm < 1e-3, "%s: eng_model on CUDA vs CPU, %s: logits nmse %.2e", name,
                     s == 0 ? "prefill" : "decode", nm);
        }
    }
    free(a);
    free(c);
    free(toks);
    eng_backend_free(gpu);
    eng_backend_free(cpu);
    json_decref(g);
}

int main(void) {
    eng_backend_t *probe = NULL;
    if (eng_backend_new("cuda", 0, 0, &probe) < 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    eng_backend_free(probe);
    const char *fx = getenv("OM_FIXTURES_DIR");
    if (fx)
        snprintf(g_fix, sizeof g_fix, "%s", fx);
    else
        snprintf(g_fix, sizeof g_fix, "%s/fixtures",
                 getenv("OM_SHARED_DIR") ? getenv("OM_SHARED_DIR") : OM_SHARED_DIR);
    t_fixture("tiny-qwen3-moe");
    t_fixture("tiny-omni");
    t_fixture("tiny-qwen3");
    t_tail_fixture("tiny-qwen3-moe");
    t_tail_fixture("tiny-omni");
    t_tail_fixture("tiny-qwen3");
    t_backend_parity("tiny-qwen3-moe");
    t_backend_parity("tiny-omni");
    printf("%s\n", g_fail ? "FAILED" : "all passed");
    return g_fail ? 1 : 0;
}
