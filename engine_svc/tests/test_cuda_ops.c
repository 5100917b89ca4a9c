/* test_cuda_ops.c: per-op parity of the CUDA backend against the CPU reference backend (the spec),
 * through the same vtable (eng_backend.h), on real Qwen3-Omni shapes and odd ones.
 *
 * Every case: seeded random inputs (xorshift, printed seed), both backends run the op, then
 *  (a) NMSE(cuda, cpu) <= the case's bound (f32 paths ~1e-10; paths that round x to bf16 for the
 *      tensor cores, 1e-4),
 *  (b) NaN/Inf positions agree (cases with a poisoned input row),
 *  (c) guard bytes around every CUDA output are untouched (outputs are views into a larger
 *      buffer filled with a canary).
 * MoE runs both expert paths (GEMV, grouped tensor-core GEMM), batch 1 (120 of 128 expert groups
 * empty) to 300 tokens. Label gpu: needs a CUDA device; exits 77 (skip) without one. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "eng_cuda.h"

#define GUARD 64 /* elements of canary each side */

static eng_backend_t *g_cpu, *g_gpu;
static int g_fail, g_cases;
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;

static uint64_t s_rand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
static float s_unif(float a) { return a * (2.0f * (float)(s_rand() >> 40) / 16777216.0f - 1.0f); }

/* A tensor on both backends. On the GPU it is a view into a guarded buffer. */
typedef struct pair {
    eng_tensor_t c, g;   /* cpu and gpu descriptors */
    eng_tensor_t gbuf;   /* gpu backing buffer with guards */
    size_t es;           /* element size */
    int64_t n;           /* elements */
} pair_t;

static void s_check(int r, const char *what) {
    if (r < 0) {
        fprintf(stderr, "FATAL: %s: %d (%s)\n", what, r, eng_cuda_last_error());
        exit(1);
    }
}

static void s_pair(pair_t *p, eng_dtype_t dt, int nd, int64_t d0, int64_t d1, int64_t d2) {
    int64_t sh[3] = {d0, d1, d2};
    memset(p, 0, sizeof *p);
    s_check(eng_tensor_init(&p->c, dt, nd, sh), "tensor_init");
    p->g = p->c;
    p->n = eng_tensor_nelem(&p->c);
    p->es = eng_dtype_size(dt);
    int64_t gs[1] = {p->n + 2 * GUARD};
    s_check(eng_tensor_init(&p->gbuf, dt, 1, gs), "tensor_init");
    s_check(g_cpu->ops->alloc(g_cpu, &p->c), "cpu alloc");
    s_check(g_gpu->ops->alloc(g_gpu, &p->gbuf), "gpu alloc");
    unsigned char *canary = malloc((size_t)(p->n + 2 * GUARD) * p->es);
    memset(canary, 0xA5, (size_t)(p->n + 2 * GUARD) * p->es);
    s_check(g_gpu->ops->upload(g_gpu, &p->gbuf, 0, canary, (size_t)(p->n + 2 * GUARD) * p->es), "up");
    free(canary);
    p->g.data = (char *)p->gbuf.data + GUARD * p->es;
}

static void s_free(pair_t *p) {
    g_cpu->ops->release(g_cpu, &p->c);
    g_gpu->ops->release(g_gpu, &p->gbuf);
}

/* Uploads the same values (given as f32, or i32 for index tensors) to both sides. */
static void s_set(pair_t *p, const void *vals) {
    size_t nb = (size_t)p->n * p->es;
    void *buf = malloc(nb);
    if (p->c.dtype == ENG_DTYPE_BF16) {
        for (int64_t i = 0; i < p->n; i++)
            ((uint16_t *)buf)[i] = eng_f32_to_bf16(((const float *)vals)[i]);
    } else {
        memcpy(buf, vals, nb);
    }
    s_check(g_cpu->ops->upload(g_cpu, &p->c, 0, buf, nb), "cpu upload");
    s_check(g_gpu->ops->upload(g_gpu, &p->gbuf, GUARD * p->es, buf, nb), "gpu upload");
    free(buf);
}

static void s_set_rand(pair_t *p, float a) {
    float *v = malloc((size_t)p->n * sizeof(float));
    for (int64_t i = 0; i < p->n; i++)
        v[i] = s_unif(a);
    s_set(p, v);
    free(v);
}

/* Compares an f32 output pair; checks guards. */
static void s_compare(const char *name, pair_t *p, double max_nmse) {
    g_cases++;
    size_t nb = (size_t)p->n * 4;
    float *a = malloc(nb), *bb = malloc((size_t)(p->n + 2 * GUARD) * 4);
    s_check(g_cpu->ops->download(g_cpu, a, &p->c, 0, nb), "cpu download");
    s_check(g_gpu->ops->download(g_gpu, bb, &p->gbuf, 0, (size_t)(p->n + 2 * GUARD) * 4), "gpu download");
    const unsigned char *gb = (const unsigned char *)bb;
    int guard_bad = 0;
    for (size_t i = 0; i < GUARD * 4; i++)
        if (gb[i] != 0xA5 || gb[(GUARD + p->n) * 4 + i] != 0xA5)
            guard_bad = 1;
    const float *b = bb + GUARD;
    double num = 0, den = 0;
    int64_t nan_mismatch = 0, n_nonfinite = 0;
    for (int64_t i = 0; i < p->n; i++) {
        int fa = isfinite(a[i]), fb = isfinite(b[i]);
        if (!fa || !fb) {
            n_nonfinite++;
            if (fa != fb || isnan(a[i]) != isnan(b[i]))
                nan_mismatch++;
            continue;
        }
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)a[i] * a[i];
    }
    double nmse = den > 0 ? num / den : num;
    int ok = !guard_bad && nan_mismatch == 0 && nmse <= max_nmse && n_nonfinite < p->n;
    printf("%-4s %-58s nmse %.3e (max %.0e) nonfinite %lld%s%s\n", ok ? "ok" : "FAIL", name, nmse,
           max_nmse, (long long)n_nonfinite, nan_mismatch ? " NaN/Inf MISMATCH" : "",
           guard_bad ? " GUARD OVERWRITTEN" : "");
    if (!ok)
        g_fail++;
    free(a);
    free(bb);
}

/* --- cases -------------------------------------------------------------------------------- */

static void t_embed(int64_t T, int64_t V, int64_t D) {
    pair_t ids, w, out;
    s_pair(&ids, ENG_DTYPE_I32, 1, T, 1, 1);
    s_pair(&w, ENG_DTYPE_BF16, 2, V, D, 1);
    s_pair(&out, ENG_DTYPE_F32, 2, T, D, 1);
    int32_t *iv = malloc(T * 4);
    for (int64_t i = 0; i < T; i++)
        iv[i] = (int32_t)(s_rand() % V);
    s_set(&ids, iv);
    s_set_rand(&w, 1.0f);
    s_check(g_cpu->ops->embed(g_cpu, &out.c, &ids.c, &w.c), "cpu embed");
    s_check(g_gpu->ops->embed(g_gpu, &out.g, &ids.g, &w.g), "gpu embed");
    char nm[96];
    snprintf(nm, sizeof nm, "EMBED T=%lld V=%lld D=%lld", (long long)T, (long long)V, (long long)D);
    s_compare(nm, &out, 0.0);
    free(iv);
    s_free(&ids); s_free(&w); s_free(&out);
}

static void t_norm(int64_t T, int64_t D, eng_dtype_t wdt, int add, int poison) {
    pair_t x, w, out, res;
    s_pair(&x, ENG_DTYPE_F32, 2, T, D, 1);
    s_pair(&w, wdt, 1, D, 1, 1);
    s_pair(&out, ENG_DTYPE_F32, 2, T, D, 1);
    s_pair(&res, ENG_DTYPE_F32, 2, T, D, 1);
    float *xv = malloc(T * D * 4);
    for (int64_t i = 0; i < T * D; i++)
        xv[i] = s_unif(3.0f);
    if (poison && T > 1) {
        xv[D + 3] = NAN;
        xv[(T - 1) * D] = INFINITY;
    }
    s_set(&x, xv);
    s_set_rand(&w, 1.0f);
    s_set_rand(&res, 2.0f);
    struct eng_rmsnorm_params p = {1e-6f};
    if (add) {
        s_check(g_cpu->ops->add_rmsnorm(g_cpu, &out.c, &res.c, &x.c, &w.c, &p), "cpu add_rmsnorm");
        s_check(g_gpu->ops->add_rmsnorm(g_gpu, &out.g, &res.g, &x.g, &w.g, &p), "gpu add_rmsnorm");
    } else {
        s_check(g_cpu->ops->rmsnorm(g_cpu, &out.c, &x.c, &w.c, &p), "cpu rmsnorm");
        s_check(g_gpu->ops->rmsnorm(g_gpu, &out.g, &x.g, &w.g, &p), "gpu rmsnorm");
    }
    char nm[96];
    snprintf(nm, sizeof nm, "%s T=%lld D=%lld w=%s%s", add ? "ADD_RMSNORM" : "RMSNORM",
             (long long)T, (long long)D, eng_dtype_name(wdt), poison ? " +NaN/Inf rows" : "");
    s_compare(nm, &out, 1e-10);
    if (add) {
        strcat(nm, " (residual)");
        s_compare(nm, &res, 1e-12);
    }
    free(xv);
    s_free(&x); s_free(&w); s_free(&out); s_free(&res);
}

static void t_matmul(int64_t T, int64_t K, int64_t N) {
    pair_t x, w, out;
    s_pair(&x, ENG_DTYPE_F32, 2, T, K, 1);
    s_pair(&w, ENG_DTYPE_BF16, 2, N, K, 1);
    s_pair(&out, ENG_DTYPE_F32, 2, T, N, 1);
    s_set_rand(&x, 1.0f);
    s_set_rand(&w, 0.05f);
    s_check(g_cpu->ops->matmul(g_cpu, &out.c, &x.c, &w.c), "cpu matmul");
    s_check(g_gpu->ops->matmul(g_gpu, &out.g, &x.g, &w.g), "gpu matmul");
    char nm[96];
    snprintf(nm, sizeof nm, "MATMUL T=%lld K=%lld N=%lld (%s)", (long long)T, (long long)K,
             (long long)N, T <= 8 ? "gemv f32" : "cuBLAS bf16 x");
    s_compare(nm, &out, T <= 8 ? 1e-10 : 1e-4);
    s_free(&x); s_free(&w); s_free(&out);
}

static void t_rope(int64_t T, int Hq, int Hk, int hd, int s0, int s1, int s2, eng_dtype_t wdt) {
    pair_t q, k, qn, kn, pos;
    s_pair(&q, ENG_DTYPE_F32, 2, T, (int64_t)Hq * hd, 1);
    s_pair(&k, ENG_DTYPE_F32, 2, T, (int64_t)Hk * hd, 1);
    s_pair(&qn, wdt, 1, hd, 1, 1);
    s_pair(&kn, wdt, 1, hd, 1, 1);
    s_pair(&pos, ENG_DTYPE_I32, 2, 3, T, 1);
    s_set_rand(&q, 2.0f);
    s_set_rand(&k, 2.0f);
    s_set_rand(&qn, 1.5f);
    s_set_rand(&kn, 1.5f);
    int32_t *pv = malloc(3 * T * 4);
    for (int64_t i = 0; i < 3 * T; i++)
        pv[i] = (int32_t)(s_rand() % 40000);
    s_set(&pos, pv);
    struct eng_rope_params p = {1e-6f, 1e6f, Hq, Hk, hd, {s0, s1, s2}};
    s_check(g_cpu->ops->qk_norm_rope(g_cpu, &q.c, &k.c, &qn.c, &kn.c, &pos.c, &p), "cpu rope");
    s_check(g_gpu->ops->qk_norm_rope(g_gpu, &q.g, &k.g, &qn.g, &kn.g, &pos.g, &p), "gpu rope");
    char nm[112];
    snprintf(nm, sizeof nm, "QK_NORM_ROPE T=%lld Hq=%d Hk=%d hd=%d mrope=[%d,%d,%d] w=%s",
             (long long)T, Hq, Hk, hd, s0, s1, s2, eng_dtype_name(wdt));
    /* positions up to 4e4 rad: f32 argument rounding dominates (both sides compute pos*inv_freq
     * in f32; cos/sin differ by ulps) */
    char nk[128];
    snprintf(nk, sizeof nk, "%s k", nm);
    strcat(nm, " q");
    s_compare(nm, &q, 1e-9);
    s_compare(nk, &k, 1e-9);
    free(pv);
    s_free(&q); s_free(&k); s_free(&qn); s_free(&kn); s_free(&pos);
}

/* A paged batch: S sequences with n_past[i] cached tokens and n_new[i] new ones. */
/* kv_bf16: the GPU reads bf16 pools (the model runner's layout); the CPU reference gets the same
 * bf16-rounded values in f32 pools. */
/* mode: 0 the generic kernels; 1/2 the tensor-core decode/prefill kernels (bf16 KV, hd 128; Q
 * and P are rounded to bf16 for the MMAs, hence the looser bound). */
static void t_attention_m(int S, const int *n_past, const int *n_new, int Hq, int Hk, int hd,
                          int bs, int kv_bf16, int mode) {
    int max_blocks = 0, T = 0, total_blocks = 0;
    for (int i = 0; i < S; i++) {
        int nb = (n_past[i] + n_new[i] + bs - 1) / bs;
        if (nb > max_blocks)
            max_blocks = nb;
        total_blocks += nb;
        T += n_new[i];
    }
    int n_blocks = total_blocks + 3;
    int kvo = Hk * hd;
    pair_t q, out, kp, vp, ts, tp, bt;
    s_pair(&q, ENG_DTYPE_F32, 2, T, (int64_t)Hq * hd, 1);
    s_pair(&out, ENG_DTYPE_F32, 2, T, (int64_t)Hq * hd, 1);
    s_pair(&kp, ENG_DTYPE_F32, 2, (int64_t)n_blocks * bs, kvo, 1);
    s_pair(&vp, ENG_DTYPE_F32, 2, (int64_t)n_blocks * bs, kvo, 1);
    s_pair(&ts, ENG_DTYPE_I32, 1, T, 1, 1);
    s_pair(&tp, ENG_DTYPE_I32, 1, T, 1, 1);
    s_pair(&bt, ENG_DTYPE_I32, 2, S, max_blocks, 1);
    s_set_rand(&q, 1.0f);
    eng_tensor_t kb = kp.g, vb = vp.g; /* GPU bf16 pools when kv_bf16 */
    {
        int64_t n = kp.n;
        float *kv = malloc((size_t)n * 4), *vv = malloc((size_t)n * 4);
        uint16_t *kh = malloc((size_t)n * 2), *vh = malloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) {
            kh[i] = eng_f32_to_bf16(s_unif(1.0f));
            vh[i] = eng_f32_to_bf16(s_unif(1.0f));
            kv[i] = eng_bf16_to_f32(kh[i]);
            vv[i] = eng_bf16_to_f32(vh[i]);
        }
        s_set(&kp, kv);
        s_set(&vp, vv);
        if (kv_bf16) {
            kb.dtype = vb.dtype = ENG_DTYPE_BF16;
            kb.data = vb.data = NULL;
            s_check(g_gpu->ops->alloc(g_gpu, &kb), "gpu alloc");
            s_check(g_gpu->ops->alloc(g_gpu, &vb), "gpu alloc");
            s_check(g_gpu->ops->upload(g_gpu, &kb, 0, kh, (size_t)n * 2), "up");
            s_check(g_gpu->ops->upload(g_gpu, &vb, 0, vh, (size_t)n * 2), "up");
        }
        free(kv); free(vv); free(kh); free(vh);
    }
    /* shuffled block ids */
    int *perm = malloc(n_blocks * sizeof(int));
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(s_rand() % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *btv = calloc((size_t)S * max_blocks, 4), *tsv = malloc(T * 4), *tpv = malloc(T * 4);
    int used = 0, t = 0, max_len = 0;
    for (int i = 0; i < S; i++) {
        int len = n_past[i] + n_new[i];
        for (int j = 0; j < (len + bs - 1) / bs; j++)
            btv[i * max_blocks + j] = perm[used++];
        for (int j = 0; j < n_new[i]; j++, t++) {
            tsv[t] = i;
            tpv[t] = n_past[i] + j;
        }
        if (len > max_len)
            max_len = len;
    }
    s_set(&bt, btv);
    s_set(&ts, tsv);
    s_set(&tp, tpv);
    struct eng_attn_meta m = {&ts.c, &tp.c, &bt.c, S, max_blocks, bs, max_len};
    struct eng_attn_params p = {1.0f / sqrtf((float)hd), Hq, Hk, hd};
    s_check(g_cpu->ops->attention(g_cpu, &out.c, &q.c, &kp.c, &vp.c, &m, &p), "cpu attention");
    struct eng_attn_meta mg = {&ts.g, &tp.g, &bt.g, S, max_blocks, bs, max_len};
    s_check(eng_backend_cuda_set_attn_mode(g_gpu, mode), "attn mode");
    s_check(g_gpu->ops->attention(g_gpu, &out.g, &q.g, &kb, &vb, &mg, &p), "gpu attention");
    eng_backend_cuda_set_attn_mode(g_gpu, 0);
    char nm[160];
    snprintf(nm, sizeof nm, "ATTENTION%s S=%d T=%d max_kv=%d Hq=%d Hk=%d hd=%d bs=%d kv=%s%s",
             mode == 1 ? " tc-decode" : (mode == 2 ? " tc-prefill" : ""), S, T, max_len, Hq, Hk,
             hd, bs, kv_bf16 ? "bf16" : "f32", getenv("OM_CUDA_ATTN_PREWAIT_TEST") ? " prewait" : "");
    s_compare(nm, &out, mode ? 1e-4 : 1e-9);
    if (kv_bf16) {
        g_gpu->ops->release(g_gpu, &kb);
        g_gpu->ops->release(g_gpu, &vb);
    }
    free(perm); free(btv); free(tsv); free(tpv);
    s_free(&q); s_free(&out); s_free(&kp); s_free(&vp); s_free(&ts); s_free(&tp); s_free(&bt);
}

static void t_attention(int S, const int *n_past, const int *n_new, int Hq, int Hk, int hd, int bs,
                        int kv_bf16) {
    t_attention_m(S, n_past, n_new, Hq, Hk, hd, bs, kv_bf16, 0);
}

/* The tensor-core kernels (eng_cuda_attn_tc.cu): decode for many sequences of different lengths
 * (splits from 1 to 32, GQA groups of 1 to 16 heads, odd block sizes, several new tokens of one
 * sequence) and causal prefill (tiles of <= 64 consecutive tokens, n_past > 0, 1-token tiles). */
static void t_attention_tc(int quick) {
    int np1[] = {511}, nn1[] = {1};
    t_attention_m(1, np1, nn1, 32, 4, 128, 16, 1, 1);
    int np2[] = {4095}, nn2[] = {1};
    t_attention_m(1, np2, nn2, 32, 4, 128, 16, 1, 1);
    int np3[] = {50}, nn3[] = {100};
    t_attention_m(1, np3, nn3, 32, 4, 128, 16, 1, 1);
    t_attention_m(1, np3, nn3, 32, 4, 128, 16, 1, 2);
    int np4[] = {0, 33, 700, 5}, nn4[] = {20, 1, 1, 7};
    t_attention_m(4, np4, nn4, 32, 4, 128, 16, 1, 1);
    t_attention_m(4, np4, nn4, 32, 4, 128, 16, 1, 2);
    /* 130 decoding sequences, lengths 1..900 (the model runner's large-batch case) */
    enum { NS = 130 };
    int npb[NS], nnb[NS];
    for (int i = 0; i < NS; i++) {
        npb[i] = i == 0 ? 0 : (i == 1 ? 511 : (int)(s_rand() % 900));
        nnb[i] = 1;
    }
    t_attention_m(NS, npb, nnb, 32, 4, 128, 16, 1, 1);
    /* group sizes 16, 1, 5; block size 5 */
    int np5[] = {0, 130, 64, 7, 300, 1, 63}, nn5[] = {1, 1, 1, 1, 1, 1, 1};
    t_attention_m(7, np5, nn5, 16, 1, 128, 5, 1, 1);
    t_attention_m(7, np5, nn5, 4, 4, 128, 16, 1, 1);
    t_attention_m(7, np5, nn5, 10, 2, 128, 5, 1, 1);
    int np6[] = {0, 200, 0}, nn6[] = {130, 64, 1};
    t_attention_m(3, np6, nn6, 32, 4, 128, 16, 1, 2);
    t_attention_m(3, np6, nn6, 10, 2, 128, 5, 1, 2);
    t_attention_m(3, np6, nn6, 16, 1, 128, 16, 1, 1);
    if (!quick) {
        int np7[] = {0}, nn7[] = {700};
        t_attention_m(1, np7, nn7, 32, 4, 128, 16, 1, 2);
    }
}

static void t_moe(int64_t T, int64_t D, int64_t I, int E, int K, int mode, int skew) {
    pair_t x, out, router, gate, up, down;
    s_pair(&x, ENG_DTYPE_F32, 2, T, D, 1);
    s_pair(&out, ENG_DTYPE_F32, 2, T, D, 1);
    s_pair(&router, ENG_DTYPE_BF16, 2, E, D, 1);
    s_pair(&gate, ENG_DTYPE_BF16, 3, E, I, D);
    s_pair(&up, ENG_DTYPE_BF16, 3, E, I, D);
    s_pair(&down, ENG_DTYPE_BF16, 3, E, D, I);
    s_set_rand(&x, 1.0f);
    float *rv = malloc((size_t)E * D * 4);
    for (int64_t i = 0; i < E * D; i++)
        rv[i] = s_unif(0.1f);
    if (skew) /* make experts 0..K+1 win for most tokens: big groups, many empty ones */
        for (int e = 0; e < K + 2 && e < E; e++)
            for (int64_t d = 0; d < D; d++)
                rv[e * D + d] += 0.02f;
    s_set(&router, rv);
    s_set_rand(&gate, 0.1f);
    s_set_rand(&up, 0.1f);
    s_set_rand(&down, 0.1f);
    struct eng_moe_weights w = {&router.c, &gate.c, &up.c, &down.c};
    struct eng_moe_weights wg = {&router.g, &gate.g, &up.g, &down.g};
    struct eng_moe_params p = {E, K, true};
    s_check(g_cpu->ops->moe(g_cpu, &out.c, &x.c, &w, &p), "cpu moe");
    s_check(eng_backend_cuda_set_moe_mode(g_gpu, mode), "moe mode");
    s_check(g_gpu->ops->moe(g_gpu, &out.g, &x.g, &wg, &p), "gpu moe");
    char nm[120];
    snprintf(nm, sizeof nm, "MOE T=%lld D=%lld I=%lld E=%d K=%d %s%s", (long long)T, (long long)D,
             (long long)I, E, K, mode == 1 ? "gemv" : "grouped", skew ? " skewed" : "");
    /* x (and the SwiGLU output on the grouped path) are rounded to bf16 on the GPU side; a
     * near-tie in the router can pick another expert for a token, so the bound is loose-ish */
    s_compare(nm, &out, mode == 1 ? (T <= 8 ? 1e-8 : 1e-4) : 2e-4);
    if (mode == 2) { /* every tile height gives the same bits (each output is one MMA chain) */
        size_t n = (size_t)T * D;
        float *ref = malloc(n * 4), *got = malloc(n * 4);
        int bad[4] = {0, 0, 0, 0};
        static const int bms[4] = {64, 32, 128, 64}, vecs[4] = {1, 1, 1, 0};
        for (int b = 0; b < 4; b++) {
            s_check(eng_cuda_test_set_moe_bm(bms[b], vecs[b]), "moe bm");
            s_check(g_gpu->ops->moe(g_gpu, &out.g, &x.g, &wg, &p), "gpu moe (bm)");
            s_check(g_gpu->ops->download(g_gpu, b == 0 ? ref : got, &out.g, 0, n * 4), "download");
            for (size_t i = 0; b > 0 && i < n; i++)
                bad[b] += memcmp(&ref[i], &got[i], 4) != 0;
        }
        eng_cuda_test_set_moe_bm(0, -1);
        int ok = bad[1] == 0 && bad[2] == 0 && bad[3] == 0;
        g_fail += !ok;
        printf("%-4s MOE_BM T=%lld D=%lld I=%lld E=%d K=%d%s: 32-row tiles %d, 128-row tiles %d, "
               "scalar permute / un-permute %d values differ from 64-row tiles with 16-byte rows "
               "(bound 0)\n", ok ? "ok" : "FAIL", (long long)T, (long long)D, (long long)I, E, K,
               skew ? " skewed" : "", bad[1], bad[2], bad[3]);
        free(ref);
        free(got);
    }
    eng_backend_cuda_set_moe_mode(g_gpu, 0);
    free(rv);
    s_free(&x); s_free(&out); s_free(&router); s_free(&gate); s_free(&up); s_free(&down);
}

static void t_elementwise(int64_t T, int64_t D) {
    pair_t a, b, out, rows, ro;
    s_pair(&a, ENG_DTYPE_F32, 2, T, D, 1);
    s_pair(&b, ENG_DTYPE_F32, 2, T, D, 1);
    s_pair(&out, ENG_DTYPE_F32, 2, T, D, 1);
    s_set_rand(&a, 8.0f);
    s_set_rand(&b, 3.0f);
    s_check(g_cpu->ops->silu_mul(g_cpu, &out.c, &a.c, &b.c), "cpu silu");
    s_check(g_gpu->ops->silu_mul(g_gpu, &out.g, &a.g, &b.g), "gpu silu");
    char nm[64];
    snprintf(nm, sizeof nm, "SILU_MUL T=%lld D=%lld", (long long)T, (long long)D);
    s_compare(nm, &out, 1e-12);
    s_check(g_cpu->ops->add(g_cpu, &out.c, &a.c, &b.c), "cpu add");
    s_check(g_gpu->ops->add(g_gpu, &out.g, &a.g, &b.g), "gpu add");
    snprintf(nm, sizeof nm, "ADD T=%lld D=%lld", (long long)T, (long long)D);
    s_compare(nm, &out, 0.0);
    int64_t R = T > 3 ? 3 : T;
    s_pair(&rows, ENG_DTYPE_I32, 1, R, 1, 1);
    s_pair(&ro, ENG_DTYPE_F32, 2, R, D, 1);
    int32_t rv[3] = {(int32_t)(T - 1), 0, (int32_t)(T / 2)};
    s_set(&rows, rv);
    s_check(g_cpu->ops->get_rows(g_cpu, &ro.c, &a.c, &rows.c), "cpu get_rows");
    s_check(g_gpu->ops->get_rows(g_gpu, &ro.g, &a.g, &rows.g), "gpu get_rows");
    snprintf(nm, sizeof nm, "GET_ROWS R=%lld of T=%lld", (long long)R, (long long)T);
    s_compare(nm, &ro, 0.0);
    s_free(&a); s_free(&b); s_free(&out); s_free(&rows); s_free(&ro);
}

/* --- fused decode kernels of the model runner (bf16; test hooks of eng_cuda.h) ------------ */

static float s_bfr(float x) { return eng_bf16_to_f32(eng_f32_to_bf16(x)); }

/* n random bf16 values uniform(-a, a) + off, as bit patterns. */
static uint16_t *s_bf_rand(size_t n, float a, float off) {
    uint16_t *v = malloc(n * 2 + 2);
    for (size_t i = 0; i < n; i++)
        v[i] = eng_f32_to_bf16(off + s_unif(a));
    return v;
}

/* Appends |a - ref|² and ref² of n bf16 values; counts bit differences against u (may be NULL). */
static void s_acc_err(const uint16_t *a, const float *ref, size_t n, double *num, double *den) {
    for (size_t i = 0; i < n; i++) {
        double x = eng_bf16_to_f32(a[i]), r = ref[i];
        *num += (x - r) * (x - r);
        *den += r * r;
    }
}
static long s_bits_differ(const uint16_t *a, const uint16_t *b, size_t n) {
    long d = 0;
    for (size_t i = 0; i < n; i++)
        d += a[i] != b[i];
    return d;
}

/* k_gemv_norm_rope (QKV GEMV + QK-norm + RoPE/M-RoPE + KV write, one kernel) against (a) the two
 * kernels it replaces (k_gemv_norm + k_qk_norm_rope): bit-identical outputs expected, and (b) a
 * CPU reference with the same rounding points (bf16 after each op, f32 statistics; NMSE bound:
 * summation order and cos/sin ulps may flip a bf16 rounding). Also: the per-head counters must be
 * left zero after 3 runs in a row (graph replays). */
static void t_qkv_fused(int T, int D, int Hq, int Hk, int hd, int s1, int s2, int with_delta) {
    g_cases++;
    const int N = (Hq + 2 * Hk) * hd, half = hd / 2, n_slots = 3 * T + 5;
    const size_t pool = (size_t)n_slots * Hk * hd;
    const float eps = 1e-6f, theta = 1e6f;
    uint16_t *h_in = s_bf_rand((size_t)T * D, 2.0f, 0.0f);
    uint16_t *delta = with_delta ? s_bf_rand((size_t)T * D, 1.0f, 0.0f) : NULL;
    uint16_t *nw = s_bf_rand((size_t)D, 0.5f, 1.0f);
    uint16_t *w = s_bf_rand((size_t)N * D, 0.05f, 0.0f);
    uint16_t *qn = s_bf_rand((size_t)hd, 0.5f, 1.0f), *kn = s_bf_rand((size_t)hd, 0.5f, 1.0f);
    uint16_t *kp0 = s_bf_rand(pool, 1.0f, 0.0f), *vp0 = s_bf_rand(pool, 1.0f, 0.0f);
    int32_t pos[24], slots[8];
    for (int i = 0; i < 3 * T; i++)
        pos[i] = (int32_t)(s_rand() % 40000);
    for (int t = 0; t < T; t++) { /* distinct slots: a permutation prefix */
        int ok = 0;
        while (!ok) {
            slots[t] = (int32_t)(s_rand() % (uint64_t)n_slots);
            ok = 1;
            for (int u = 0; u < t; u++)
                ok &= slots[u] != slots[t];
        }
    }
    uint16_t *out[3][4]; /* [unfused, fused, unfused + table][qkv, h_out, kpool, vpool] */
    int nz[3];
    for (int f = 0; f < 3; f++) {
        out[f][0] = malloc((size_t)T * N * 2);
        out[f][1] = malloc((size_t)T * D * 2);
        out[f][2] = malloc(pool * 2);
        out[f][3] = malloc(pool * 2);
        eng_cuda_test_qkv_t a = {T, D, Hq, Hk, hd, s1, s2, n_slots, eps, theta, h_in, delta, nw,
                                 w, qn, kn, pos, slots, kp0, vp0, out[f][0], out[f][1],
                                 out[f][2], out[f][3]};
        nz[f] = eng_cuda_test_qkv_rope(f, f == 1 ? 3 : 1, &a);
        s_check(nz[f], f == 1 ? "eng_cuda_test_qkv_rope fused" : "eng_cuda_test_qkv_rope unfused");
    }
    /* CPU reference */
    float *rq = malloc((size_t)T * N * 4), *rh = malloc((size_t)T * D * 4);
    float *rk = malloc(pool * 4), *rv = malloc(pool * 4), *xs = malloc((size_t)D * 4);
    float *inv = malloc((size_t)half * 4), buf[256];
    for (size_t i = 0; i < pool; i++) {
        rk[i] = eng_bf16_to_f32(kp0[i]);
        rv[i] = eng_bf16_to_f32(vp0[i]);
    }
    for (int j = 0; j < half; j++)
        inv[j] = 1.0f / powf(theta, (float)(2 * j) / (float)hd);
    for (int t = 0; t < T; t++) {
        float ss = 0.0f;
        for (int d = 0; d < D; d++) {
            float h = eng_bf16_to_f32(h_in[(size_t)t * D + d]);
            if (delta)
                h = s_bfr(h + eng_bf16_to_f32(delta[(size_t)t * D + d]));
            rh[(size_t)t * D + d] = h;
            ss += h * h;
        }
        float rs = 1.0f / sqrtf(ss / (float)D + eps);
        for (int d = 0; d < D; d++)
            xs[d] = s_bfr(s_bfr(rh[(size_t)t * D + d] * rs) * eng_bf16_to_f32(nw[d]));
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int d = 0; d < D; d++)
                acc += (double)eng_bf16_to_f32(w[(size_t)n * D + d]) * xs[d];
            rq[(size_t)t * N + n] = s_bfr((float)acc);
        }
        for (int hh = 0; hh < Hq + Hk; hh++) {
            float *p = rq + (size_t)t * N + (size_t)hh * hd;
            const uint16_t *nv = hh < Hq ? qn : kn;
            float s2q = 0.0f;
            for (int d = 0; d < hd; d++)
                s2q += p[d] * p[d];
            float r2 = 1.0f / sqrtf(s2q / (float)hd + eps);
            for (int d = 0; d < hd; d++)
                buf[d] = s_bfr(s_bfr(p[d] * r2) * eng_bf16_to_f32(nv[d]));
            for (int d = 0; d < hd; d++) {
                int j = d < half ? d : d - half, pr = pos[t];
                if (j % 3 == 1 && j < 3 * s1)
                    pr = pos[T + t];
                else if (j % 3 == 2 && j < 3 * s2)
                    pr = pos[2 * T + t];
                float fr = (float)pr * inv[j];
                float cs = s_bfr(cosf(fr)), sn = s_bfr(sinf(fr));
                float rot = d < half ? -buf[d + half] : buf[d - half];
                p[d] = s_bfr(s_bfr(buf[d] * cs) + s_bfr(rot * sn));
            }
            if (hh >= Hq) {
                size_t o = ((size_t)slots[t] * Hk + (hh - Hq)) * hd;
                for (int d = 0; d < hd; d++) {
                    rk[o + d] = p[d];
                    rv[o + d] = rq[(size_t)t * N + (size_t)(Hq + Hk) * hd + (size_t)(hh - Hq) * hd + d];
                }
            }
        }
    }
    double num = 0, den = 0;
    s_acc_err(out[1][0], rq, (size_t)T * N, &num, &den);
    s_acc_err(out[1][1], rh, (size_t)T * D, &num, &den);
    s_acc_err(out[1][2], rk, pool, &num, &den);
    s_acc_err(out[1][3], rv, pool, &num, &den);
    double nmse = den > 0 ? num / den : num;
    long diff = s_bits_differ(out[0][0], out[1][0], (size_t)T * N) +
                s_bits_differ(out[0][1], out[1][1], (size_t)T * D) +
                s_bits_differ(out[0][2], out[1][2], pool) + s_bits_differ(out[0][3], out[1][3], pool);
    long dtab = s_bits_differ(out[0][0], out[2][0], (size_t)T * N) +
                s_bits_differ(out[0][2], out[2][2], pool) + s_bits_differ(out[0][3], out[2][3], pool);
    const double bound = 1e-4;
    int ok = diff == 0 && dtab == 0 && nmse <= bound && nz[1] == 0;
    printf("%-4s FUSED_QKV_ROPE T=%d D=%d Hq=%d Hk=%d hd=%d mrope=[%d,%d] delta=%d: values != "
           "unfused %ld (max 0), unfused with the rope table != unfused %ld (max 0), nmse vs cpu "
           "%.3e (max %.0e), counters left %d (max 0)\n",
           ok ? "ok" : "FAIL", T, D, Hq, Hk, hd, s1, s2, with_delta, diff, dtab, nmse, bound,
           nz[1]);
    if (!ok)
        g_fail++;
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < 4; i++)
            free(out[f][i]);
    free(h_in); free(delta); free(nw); free(w); free(qn); free(kn); free(kp0); free(vp0);
    free(rq); free(rh); free(rk); free(rv); free(xs); free(inv);
}

/* k_attn_dec with QK-norm + RoPE + KV write folded in (decode steps, OM_CUDA_ATTN_ROPE) against
 * (a) the kernels it replaces (k_qk_norm_rope + k_attn_dec): attention output and KV pools
 * bit-identical expected (same rounding points, same tile order); (b) a CPU reference of
 * qk-norm + rope (bf16 rounding points of k_qk_norm_rope) + paged attention in double (NMSE
 * bound over output and pools: cos/sin ulps may flip a bf16 rounding). S sequences, one new token
 * each, at position ctx[i] - 1; 2 fused runs in a row (the raw qkv must stay untouched, counters
 * must be left zero). hd != 128: the fused kernel must refuse (-EOPNOTSUPP; the model runner then
 * keeps k_qk_norm_rope). */
static void t_attn_rope(int S, const int *ctx, int Hq, int Hk, int hd, int s1, int s2, int bs,
                        int n_splits) {
    g_cases++;
    const int N = (Hq + 2 * Hk) * hd, half = hd / 2;
    const float eps = 1e-6f, theta = 1e6f;
    int max_blocks = 1, total = 0;
    for (int i = 0; i < S; i++) {
        int nb = (ctx[i] + bs - 1) / bs;
        max_blocks = nb > max_blocks ? nb : max_blocks;
        total += nb;
    }
    const int n_blocks = total + 3, n_slots = n_blocks * bs;
    const size_t pool = (size_t)n_slots * Hk * hd;
    int *perm = malloc((size_t)n_blocks * sizeof(int));
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(s_rand() % (uint64_t)(i + 1)), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    int32_t *bt = calloc((size_t)S * max_blocks, 4), *tpos = malloc((size_t)S * 4);
    int32_t *pos3 = malloc((size_t)3 * S * 4), *slot = malloc((size_t)S * 4);
    for (int i = 0, used = 0; i < S; i++) {
        for (int j = 0; j < (ctx[i] + bs - 1) / bs; j++)
            bt[(size_t)i * max_blocks + j] = perm[used++];
        tpos[i] = ctx[i] - 1;
        slot[i] = bt[(size_t)i * max_blocks + tpos[i] / bs] * bs + tpos[i] % bs;
        pos3[i] = tpos[i];
        pos3[S + i] = (int32_t)(s_rand() % 40000);
        pos3[2 * S + i] = (int32_t)(s_rand() % 40000);
    }
    uint16_t *qkv = s_bf_rand((size_t)S * N, 2.0f, 0.0f);
    uint16_t *qn = s_bf_rand((size_t)hd, 0.5f, 1.0f), *kn = s_bf_rand((size_t)hd, 0.5f, 1.0f);
    uint16_t *kp0 = s_bf_rand(pool, 1.0f, 0.0f), *vp0 = s_bf_rand(pool, 1.0f, 0.0f);
    uint16_t *out[2][3]; /* [unfused, fused][out, kpool, vpool] */
    int nz[2] = {0, 0}, unsupported = 0;
    for (int f = 0; f < 2; f++) {
        out[f][0] = malloc((size_t)S * Hq * hd * 2);
        out[f][1] = malloc(pool * 2);
        out[f][2] = malloc(pool * 2);
        eng_cuda_test_attn_t a = {S, Hq, Hk, hd, s1, s2, bs, max_blocks, n_slots, n_splits, eps,
                                  theta, qkv, qn, kn, pos3, tpos, bt, kp0, vp0, out[f][0],
                                  out[f][1], out[f][2]};
        nz[f] = eng_cuda_test_attn_rope(f, f ? 2 : 1, &a);
        if (f && hd != 128 && nz[f] == -EOPNOTSUPP) {
            unsupported = 1;
            break;
        }
        s_check(nz[f], f ? "eng_cuda_test_attn_rope fused" : "eng_cuda_test_attn_rope unfused");
    }
    char nm[160];
    snprintf(nm, sizeof nm, "ATTN_ROPE S=%d ctx=%d%s Hq=%d Hk=%d hd=%d mrope=[%d,%d] bs=%d splits=%d",
             S, ctx[0], S > 1 ? ",..." : "", Hq, Hk, hd, s1, s2, bs, n_splits);
    if (hd != 128) {
        int ok = unsupported;
        printf("%-4s %s: fused kernel refuses (-EOPNOTSUPP) %s (expected: yes)\n", ok ? "ok" : "FAIL",
               nm, ok ? "yes" : "no");
        if (!ok)
            g_fail++;
        for (int f = 0; f < 2; f++)
            for (int i = 0; i < 3; i++)
                free(out[f][i]);
        free(perm); free(bt); free(tpos); free(pos3); free(slot);
        free(qkv); free(qn); free(kn); free(kp0); free(vp0);
        return;
    }
    /* CPU reference: q/k norm + rope (k_qk_norm_rope's rounding points), KV write, attention */
    float *rk = malloc(pool * 4), *rv = malloc(pool * 4), *rq = malloc((size_t)S * Hq * hd * 4);
    float *ro = malloc((size_t)S * Hq * hd * 4), *inv = malloc((size_t)half * 4), buf[256], row[256];
    int maxctx = 0;
    for (int i = 0; i < S; i++)
        maxctx = ctx[i] > maxctx ? ctx[i] : maxctx;
    double *sc = malloc((size_t)maxctx * 8);
    for (size_t i = 0; i < pool; i++) {
        rk[i] = eng_bf16_to_f32(kp0[i]);
        rv[i] = eng_bf16_to_f32(vp0[i]);
    }
    for (int j = 0; j < half; j++)
        inv[j] = 1.0f / powf(theta, (float)(2 * j) / (float)hd);
    for (int t = 0; t < S; t++) {
        for (int hh = 0; hh < Hq + Hk; hh++) {
            const uint16_t *src = qkv + (size_t)t * N + (size_t)hh * hd;
            const uint16_t *nv = hh < Hq ? qn : kn;
            float s2q = 0.0f;
            for (int d = 0; d < hd; d++) {
                row[d] = eng_bf16_to_f32(src[d]);
                s2q += row[d] * row[d];
            }
            float r2 = 1.0f / sqrtf(s2q / (float)hd + eps);
            for (int d = 0; d < hd; d++)
                buf[d] = s_bfr(s_bfr(row[d] * r2) * eng_bf16_to_f32(nv[d]));
            for (int d = 0; d < hd; d++) {
                int j = d < half ? d : d - half, pr = pos3[t];
                if (j % 3 == 1 && j < 3 * s1)
                    pr = pos3[S + t];
                else if (j % 3 == 2 && j < 3 * s2)
                    pr = pos3[2 * S + t];
                float fr = (float)pr * inv[j];
                float cs = s_bfr(cosf(fr)), sn = s_bfr(sinf(fr));
                float rot = d < half ? -buf[d + half] : buf[d - half];
                row[d] = s_bfr(s_bfr(buf[d] * cs) + s_bfr(rot * sn));
            }
            if (hh < Hq) {
                memcpy(rq + ((size_t)t * Hq + hh) * hd, row, (size_t)hd * 4);
            } else {
                size_t o = ((size_t)slot[t] * Hk + (hh - Hq)) * hd;
                const uint16_t *vs = qkv + (size_t)t * N + (size_t)(Hq + Hk) * hd +
                                     (size_t)(hh - Hq) * hd;
                for (int d = 0; d < hd; d++) {
                    rk[o + d] = row[d];
                    rv[o + d] = eng_bf16_to_f32(vs[d]);
                }
            }
        }
    }
    const double scale = 1.0 / sqrt((double)hd);
    for (int t = 0; t < S; t++)
        for (int h = 0; h < Hq; h++) {
            const int kvh = h / (Hq / Hk);
            const float *q = rq + ((size_t)t * Hq + h) * hd;
            double mx = -1e300, l = 0.0;
            for (int p = 0; p < ctx[t]; p++) {
                size_t sl = (size_t)bt[(size_t)t * max_blocks + p / bs] * bs + p % bs;
                const float *k = rk + (sl * Hk + kvh) * hd;
                double dot = 0.0;
                for (int d = 0; d < hd; d++)
                    dot += (double)q[d] * k[d];
                sc[p] = dot * scale;
                mx = sc[p] > mx ? sc[p] : mx;
            }
            double acc[256] = {0};
            for (int p = 0; p < ctx[t]; p++) {
                size_t sl = (size_t)bt[(size_t)t * max_blocks + p / bs] * bs + p % bs;
                const float *v = rv + (sl * Hk + kvh) * hd;
                double w = exp(sc[p] - mx);
                l += w;
                for (int d = 0; d < hd; d++)
                    acc[d] += w * v[d];
            }
            for (int d = 0; d < hd; d++)
                ro[((size_t)t * Hq + h) * hd + d] = (float)(acc[d] / l);
        }
    /* the new rows alone for the KV error (the rest of the pools is copied through) */
    double num = 0, den = 0, numk = 0, denk = 0;
    s_acc_err(out[1][0], ro, (size_t)S * Hq * hd, &num, &den);
    for (int t = 0; t < S; t++) {
        const size_t o = (size_t)slot[t] * Hk * hd;
        s_acc_err(out[1][1] + o, rk + o, (size_t)Hk * hd, &numk, &denk);
        s_acc_err(out[1][2] + o, rv + o, (size_t)Hk * hd, &numk, &denk);
    }
    double nmse = den > 0 ? num / den : num, nmsek = denk > 0 ? numk / denk : numk;
    long dout = s_bits_differ(out[0][0], out[1][0], (size_t)S * Hq * hd);
    long dkv = s_bits_differ(out[0][1], out[1][1], pool) + s_bits_differ(out[0][2], out[1][2], pool);
    const double bound = 1e-4;
    int ok = dout == 0 && dkv == 0 && nmse <= bound && nmsek <= bound && nz[1] == 0;
    printf("%-4s %s: kv != unfused %ld (max 0), out != unfused %ld (max 0), nmse vs cpu out %.3e "
           "new kv %.3e (max %.0e), counters left %d (max 0)\n",
           ok ? "ok" : "FAIL", nm, dkv, dout, nmse, nmsek, bound, nz[1]);
    if (!ok)
        g_fail++;
    for (int f = 0; f < 2; f++)
        for (int i = 0; i < 3; i++)
            free(out[f][i]);
    free(perm); free(bt); free(tpos); free(pos3); free(slot);
    free(qkv); free(qn); free(kn); free(kp0); free(vp0);
    free(rk); free(rv); free(rq); free(ro); free(inv); free(sc);
}

/* The GEMV expert path's variants against k_moe_gu + k_moe_down (bit-identical expected):
 * k_moe_down_wk (the default down projection, a warp per expert slot, weights loaded before the
 * PDL wait) with one and two rows per warp, and k_moe_fused (gate/up + down in one persistent
 * kernel, atomic tickets; 3 runs in a row, counters must be left zero; max_blocks > 0 caps the
 * grid: 1 runs every tile in ticket order, few blocks loop over many tickets); and a CPU
 * reference with the same rounding points. */
static void t_moe_fused(int T, int D, int I, int E, int K, int max_blocks) {
    g_cases++;
    uint16_t *x = s_bf_rand((size_t)T * D, 1.0f, 0.0f);
    uint16_t *g = s_bf_rand((size_t)E * I * D, 0.05f, 0.0f);
    uint16_t *u = s_bf_rand((size_t)E * I * D, 0.05f, 0.0f);
    uint16_t *dn = s_bf_rand((size_t)E * D * I, 0.05f, 0.0f);
    int32_t *ids = malloc((size_t)T * K * 4);
    float *wts = malloc((size_t)T * K * 4);
    for (int t = 0; t < T; t++) {
        float sum = 0;
        for (int k = 0; k < K; k++) { /* K distinct experts per token, as top-k gives */
            int ok = 0;
            while (!ok) {
                ids[t * K + k] = (int32_t)(s_rand() % (uint64_t)E);
                ok = 1;
                for (int j = 0; j < k; j++)
                    ok &= ids[t * K + j] != ids[t * K + k];
            }
            wts[t * K + k] = 0.05f + fabsf(s_unif(1.0f));
            sum += wts[t * K + k];
        }
        for (int k = 0; k < K; k++) /* normalised, rounded to bf16 (the router's output) */
            wts[t * K + k] = s_bfr(wts[t * K + k] / sum);
    }
    /* out[f], f = the hook's mode: 0 k_moe_down_wk, 1 fused, 2 k_moe_down, 3 two rows a warp */
    uint16_t *out[4];
    int nz[4];
    for (int f = 0; f < 4; f++) {
        out[f] = malloc((size_t)T * D * 2);
        eng_cuda_test_moe_t a = {T, D, I, E, K, x, g, u, dn, ids, wts, out[f]};
        nz[f] = eng_cuda_test_moe_experts(f, f == 1 ? 3 : 1, max_blocks, &a);
        s_check(nz[f], "eng_cuda_test_moe_experts");
    }
    float *ref = malloc((size_t)T * D * 4), *h = malloc((size_t)K * I * 4);
    for (int t = 0; t < T; t++) {
        for (int k = 0; k < K; k++) {
            int e = ids[t * K + k];
            for (int i = 0; i < I; i++) {
                double ga = 0, ua = 0;
                const uint16_t *gr = g + ((size_t)e * I + i) * D, *ur = u + ((size_t)e * I + i) * D;
                for (int d = 0; d < D; d++) {
                    double xv = eng_bf16_to_f32(x[(size_t)t * D + d]);
                    ga += eng_bf16_to_f32(gr[d]) * xv;
                    ua += eng_bf16_to_f32(ur[d]) * xv;
                }
                float gv = s_bfr((float)ga), uv = s_bfr((float)ua);
                h[(size_t)k * I + i] = s_bfr(s_bfr(gv / (1.0f + expf(-gv))) * uv);
            }
        }
        for (int d = 0; d < D; d++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) {
                const uint16_t *wr = dn + ((size_t)ids[t * K + k] * D + d) * I;
                double y = 0;
                for (int i = 0; i < I; i++)
                    y += eng_bf16_to_f32(wr[i]) * (double)h[(size_t)k * I + i];
                acc += s_bfr(s_bfr((float)y) * wts[t * K + k]);
            }
            ref[(size_t)t * D + d] = s_bfr(acc); /* the kernel stores bf16(acc) */
        }
    }
    double num = 0, den = 0;
    s_acc_err(out[1], ref, (size_t)T * D, &num, &den);
    double nmse = den > 0 ? num / den : num;
    long diff = s_bits_differ(out[2], out[1], (size_t)T * D);
    long dwk1 = s_bits_differ(out[2], out[0], (size_t)T * D);
    long dwk2 = s_bits_differ(out[2], out[3], (size_t)T * D);
    const double bound = 1e-4;
    int ok = diff == 0 && dwk1 == 0 && dwk2 == 0 && nmse <= bound && nz[1] == 0;
    printf("%-4s FUSED_MOE T=%d D=%d I=%d E=%d K=%d blocks<=%d: values != k_moe_down: fused %ld, "
           "down_wk %ld, down_wk 2 rows %ld (max 0), nmse vs cpu %.3e (max %.0e), counters left "
           "%d (max 0)\n",
           ok ? "ok" : "FAIL", T, D, I, E, K, max_blocks, diff, dwk1, dwk2, nmse, bound, nz[1]);
    if (!ok)
        g_fail++;
    for (int f = 0; f < 4; f++)
        free(out[f]);
    free(x); free(g); free(u); free(dn); free(ids); free(wts);
    free(ref); free(h);
}

/* n bf16 values repeating a random pool of P (prime) values: large expert weights, cheaply. */
static uint16_t *s_bf_pool(size_t n, float a) {
    const size_t P = 1000003;
    uint16_t *pool = s_bf_rand(P, a, 0.0f), *v = malloc(n * 2 + 2);
    for (size_t i = 0; i < n; i += P)
        memcpy(v + i, pool, (n - i < P ? n - i : P) * 2);
    free(pool);
    return v;
}

/* OM_CUDA_ROUTER_LOCAL: a decode step's router + experts with the router's last-block top-k
 * (local 0) and with the router writing logits only and k_moe_gu / k_moe_down_wk routing
 * themselves (local 1: argmax rounds by redux.sync; 2: by the router's shuffles; 3 / 4: as 1 with
 * every k_moe_down_wk block reading k_moe_gu's ids after the wait / running the top-k before it;
 * shapes off that path take ek_moe_experts' k_moe_topk fallback), 3 runs in a row each. Expected:
 * every output of 1..4 bit-identical to 0 (expert output, new residual, normalised x, logits, ids, weights),
 * the router's counter left zero, and the routing (of 1) right against a CPU
 * top-k of the returned logits (bf16-rounded as the kernel: the chosen values are exactly the K
 * largest, ties to the lower id; weights within bf16 rounding of an f64 softmax). Router rows are
 * built so that token t (where 16t + 10 <= E) has exact ties (copied rows) inside its top K and
 * at the K-th place, and near ties (one element 1 bf16 ulp apart). */
static void t_router_local(int T, int D, int I, int E, int K, int norm, int e0, int ne, int down) {
    g_cases++;
    const int nl = ne ? ne : E;
    uint16_t *h_in = s_bf_rand((size_t)T * D, 1.0f, 0.0f), *dl = s_bf_rand((size_t)T * D, 1.0f, 0.0f);
    uint16_t *nw = s_bf_rand((size_t)D, 0.3f, 1.0f);
    uint16_t *rw = s_bf_rand((size_t)E * D, 0.05f, 0.0f);
    const float eps = 1e-6f;
    for (int t = 0; t < T && 16 * t + 10 <= E; t++) {
        /* x_t as the kernel computes it, approximately (alignment only needs the direction) */
        double ss = 0;
        float *xa = malloc((size_t)D * 4);
        for (int d = 0; d < D; d++) {
            float h = s_bfr(eng_bf16_to_f32(h_in[(size_t)t * D + d]) +
                            eng_bf16_to_f32(dl[(size_t)t * D + d]));
            xa[d] = h;
            ss += (double)h * h;
        }
        double rs = 1.0 / sqrt(ss / D + eps), n2 = 0;
        for (int d = 0; d < D; d++) {
            xa[d] = (float)(xa[d] * rs) * eng_bf16_to_f32(nw[d]);
            n2 += (double)xa[d] * xa[d];
        }
        /* logits about 8·scale; rows 3 and 8 are copies of rows 2 and 7 (7/8: places 8 and 9,
           across the K = 8 edge), row 5 is row 4 with one element 1 ulp off (a near tie) */
        static const float sc[10] = {1.0f, 0.97f, 0.94f, 0.94f, 0.91f, 0.91f, 0.88f, 0.85f,
                                     0.85f, 0.82f};
        for (int j = 0; j < 10; j++) {
            uint16_t *row = rw + (size_t)(16 * t + j) * D;
            int src = j == 3 ? 2 : (j == 8 ? 7 : -1);
            for (int d = 0; d < D; d++)
                row[d] = src >= 0 ? rw[(size_t)(16 * t + src) * D + d]
                                  : eng_f32_to_bf16((float)(8.0 * sc[j] * xa[d] / n2));
            if (j == 5)
                row[D / 2] = (uint16_t)(rw[(size_t)(16 * t + 4) * D + D / 2] + 1);
        }
        free(xa);
    }
    uint16_t *g = s_bf_pool((size_t)nl * I * D, 0.05f), *u = s_bf_pool((size_t)nl * I * D, 0.05f);
    uint16_t *dn = s_bf_pool((size_t)nl * D * I, 0.05f);
    uint16_t *out[5], *ho[5], *xn[5];
    float *lg[5], *wt[5];
    int32_t *id[5];
    int cnt[5];
    for (int f = 0; f < 5; f++) {
        out[f] = malloc((size_t)T * D * 2);
        ho[f] = malloc((size_t)T * D * 2);
        xn[f] = malloc((size_t)T * D * 2);
        lg[f] = malloc((size_t)T * E * 4);
        wt[f] = malloc((size_t)T * K * 4);
        id[f] = malloc((size_t)T * K * 4);
        eng_cuda_test_router_t a = {T, D, I, E, K, norm, e0, ne, down, eps, h_in, dl, nw, rw, g, u,
                                    dn, out[f], ho[f], xn[f], lg[f], id[f], wt[f]};
        cnt[f] = eng_cuda_test_router_moe(f, 3, &a);
        s_check(cnt[f], "eng_cuda_test_router_moe");
    }
    long d_out = 0, d_ho = 0, d_xn = 0, d_lg = 0, d_id = 0, d_wt = 0;
    for (int f = 1; f < 5; f++) {
        d_out += s_bits_differ(out[0], out[f], (size_t)T * D);
        d_ho += s_bits_differ(ho[0], ho[f], (size_t)T * D);
        d_xn += s_bits_differ(xn[0], xn[f], (size_t)T * D);
        for (size_t i = 0; i < (size_t)T * E; i++)
            d_lg += memcmp(&lg[0][i], &lg[f][i], 4) != 0;
        for (size_t i = 0; i < (size_t)T * K; i++) {
            d_id += id[0][i] != id[f][i];
            d_wt += memcmp(&wt[0][i], &wt[f][i], 4) != 0;
        }
    }
    /* routing (of the local run) against a CPU top-k of its logits */
    int bad_ids = 0;
    double wt_err = 0;
    float *v = malloc((size_t)E * 4);
    char *sel = malloc((size_t)E);
    for (int t = 0; t < T; t++) {
        float mx = -INFINITY;
        for (int e = 0; e < E; e++) {
            v[e] = s_bfr(lg[1][(size_t)t * E + e]);
            mx = v[e] > mx ? v[e] : mx;
        }
        memset(sel, 0, (size_t)E);
        double sum = 0, tsum = 0;
        for (int e = 0; e < E; e++)
            sum += exp((double)v[e] - mx);
        for (int k = 0; k < K; k++) {
            int e = id[1][t * K + k];
            if (e < 0 || e >= E || sel[e]) {
                bad_ids++;
                continue;
            }
            sel[e] = 1;
            tsum += exp((double)v[e] - mx) / sum;
            /* slot k holds the k-th largest value, ties in ascending id order */
            if (k > 0) {
                int p = id[1][t * K + k - 1];
                if (p >= 0 && p < E && (v[p] < v[e] || (v[p] == v[e] && p > e)))
                    bad_ids++;
            }
        }
        int last = id[1][t * K + K - 1];
        if (last >= 0 && last < E)
            for (int e = 0; e < E; e++)
                if (!sel[e] && (v[e] > v[last] || (v[e] == v[last] && e < last)))
                    bad_ids++; /* a better expert left out */
        for (int k = 0; k < K; k++) {
            int e = id[1][t * K + k];
            if (e < 0 || e >= E)
                continue;
            double w = exp((double)v[e] - mx) / sum;
            if (norm)
                w /= tsum;
            double err = fabs(wt[1][t * K + k] - w) / (w > 1e-30 ? w : 1e-30);
            if (err > wt_err || err != err)
                wt_err = err != err ? INFINITY : err;
        }
    }
    const double wt_bound = 8e-3; /* bf16 rounding of the weight (2^-8) plus f32 softmax */
    int ok = d_out == 0 && d_ho == 0 && d_xn == 0 && d_lg == 0 && d_id == 0 && d_wt == 0 &&
             bad_ids == 0 && wt_err <= wt_bound && cnt[0] == 0 && cnt[1] == 0 && cnt[2] == 0 &&
             cnt[3] == 0 && cnt[4] == 0;
    printf("%-4s ROUTER_LOCAL T=%d D=%d I=%d E=%d K=%d norm=%d e0=%d ne=%d down=%d: values != "
           "last-block top-k (local 1..4): out %ld h_out %ld xn %ld logits %ld ids %ld wts %ld (max "
           "0); vs cpu top-k: bad ids %d (max 0), wts rel err %.2e (max %.0e); counter left "
           "%d/%d/%d/%d/%d (max 0)\n",
           ok ? "ok" : "FAIL", T, D, I, E, K, norm, e0, ne, down, d_out, d_ho, d_xn, d_lg, d_id,
           d_wt, bad_ids, wt_err, wt_bound, cnt[0], cnt[1], cnt[2], cnt[3], cnt[4]);
    if (!ok)
        g_fail++;
    for (int f = 0; f < 5; f++) {
        free(out[f]); free(ho[f]); free(xn[f]); free(lg[f]); free(wt[f]); free(id[f]);
    }
    free(v); free(sel);
    free(h_in); free(dl); free(nw); free(rw); free(g); free(u); free(dn);
}

/* k_gemv_ks (the decode o_proj GEMV, rows split over ks warps) against a CPU reference (f64
 * sums of the bf16 inputs, rounded to bf16); the count of values that differ from k_gemv is
 * printed for information (another f32 summation order: a few 1-ulp bf16 flips are expected). */
static void t_gemv_ks(int T, int N, int K, int ks) {
    g_cases++;
    uint16_t *x = s_bf_rand((size_t)T * K, 1.0f, 0.0f), *w = s_bf_rand((size_t)N * K, 0.05f, 0.0f);
    uint16_t *y = malloc((size_t)T * N * 2), *y1 = malloc((size_t)T * N * 2);
    s_check(eng_cuda_test_gemv_ks(ks, T, N, K, x, w, y), "eng_cuda_test_gemv_ks");
    s_check(eng_cuda_test_gemv_ks(1, T, N, K, x, w, y1), "eng_cuda_test_gemv_ks k_gemv");
    float *ref = malloc((size_t)T * N * 4);
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int k = 0; k < K; k++)
                acc += (double)eng_bf16_to_f32(x[(size_t)t * K + k]) *
                       eng_bf16_to_f32(w[(size_t)n * K + k]);
            ref[(size_t)t * N + n] = s_bfr((float)acc);
        }
    double num = 0, den = 0, num1 = 0, den1 = 0;
    s_acc_err(y, ref, (size_t)T * N, &num, &den);
    s_acc_err(y1, ref, (size_t)T * N, &num1, &den1);
    double nmse = den > 0 ? num / den : num, nmse1 = den1 > 0 ? num1 / den1 : num1;
    const double bound = 1e-4;
    int ok = nmse <= bound;
    printf("%-4s GEMV_KSPLIT T=%d N=%d K=%d ks=%d: nmse vs cpu %.3e (max %.0e; k_gemv %.3e), "
           "values != k_gemv %ld (info)\n", ok ? "ok" : "FAIL", T, N, K, ks, nmse, bound, nmse1,
           s_bits_differ(y, y1, (size_t)T * N));
    if (!ok)
        g_fail++;
    free(x); free(w); free(y); free(y1); free(ref);
}

/* The decode tail (OM_CUDA_TAIL): ek_add_rmsnorm_rows + ek_lm_head_argmax against the old tail
 * (ek_add_rmsnorm + ek_get_rows + ek_matmul + ek_argmax): normalised rows, logits and ids bit
 * for bit; the ids also against a host argmax of the returned logits (largest non-NaN, lowest id
 * on ties, 0 when the row is all NaN) and, where the case plants one, the expected id.
 * kind: 0 random; 1 ties (a "big" lm_head row copied to later rows in the same 8-row block and
 * in other blocks; hidden rows positive so it is the maximum); 2 as 1 plus a NaN logit below the
 * maximum, a token whose hidden row is NaN (all logits NaN: id 0) and two +inf logits (tie);
 * 3 a logits row outside [0, T) (zero hidden row: every logit 0, id 0) and repeated rows.
 * The big rows include b0 + 8 and b0 + 56: in the same warp as b0 when the persistent lm_head
 * kernel (OM_CUDA_LMH_PERSIST) runs 1 or 7 blocks. TAIL_LMH lines: the fused tail with each
 * lm_head kernel (k_gemv_amax forced; k_gemv_amax_p with its resident-wave grid, 1 block and
 * 7 blocks) against the old tail, rows, logits and ids bit for bit. */
static int s_host_argmax(const float *x, int n) {
    int b = -1;
    for (int i = 0; i < n; i++)
        if (x[i] == x[i] && (b < 0 || x[i] > x[b]))
            b = i;
    return b < 0 ? 0 : b;
}

static void t_tail(const char *name, int T, int R, int D, int V, int kind) {
    g_cases++;
    const int pos = kind == 1 || kind == 2;
    uint16_t *resid = s_bf_rand((size_t)T * D, pos ? 0.5f : 1.0f, pos ? 1.0f : 0.0f);
    uint16_t *delta = s_bf_rand((size_t)T * D, pos ? 0.2f : 1.0f, pos ? 0.5f : 0.0f);
    uint16_t *nw = s_bf_rand((size_t)D, 0.2f, 1.0f);
    uint16_t *w = s_bf_rand((size_t)V * D, 0.05f, 0.0f);
    int32_t rows[8];
    for (int r = 0; r < R; r++)
        rows[r] = T - R + r; /* the last R rows, as decode with one logits row per token */
    int expect = -1;         /* planted argmax of every non-NaN row; -1 none */
    int nan_tok = -1;
    if (pos) {
        /* big rows: b0 < b1 in one 8-row block, b2 the last row (another block, partial when
           V % 8 != 0): expect b0 */
        const int b0 = (V / 2 / 8) * 8 + 1, b1 = b0 + 5, b2 = V - 1;
        const int big[5] = {b1, b0, b2, b0 + 8, b0 + 56};
        for (int k = 0; k < 5; k++)
            if (big[k] < V)
                for (int d = 0; d < D; d++)
                    w[(size_t)big[k] * D + d] = eng_f32_to_bf16(0.5f);
        expect = b0;
        if (kind == 2) {
            /* a NaN logit at 3 (never wins), +inf at inf0 < inf1 (one block): expect inf0 */
            const int nan_row = 3, inf0 = (V / 3 / 8) * 8 + 2, inf1 = inf0 + 3;
            w[(size_t)nan_row * D + D / 2] = 0x7fc0;
            for (int d = 0; d < D; d++) {
                w[(size_t)inf1 * D + d] = eng_f32_to_bf16(0.5f);
                w[(size_t)inf0 * D + d] = eng_f32_to_bf16(0.5f);
            }
            w[(size_t)inf1 * D + 1] = 0x7f80; /* +inf (the hidden rows are positive) */
            w[(size_t)inf0 * D + 7] = 0x7f80;
            expect = inf0;
            if (R > 1) {
                nan_tok = rows[R / 2];
                resid[(size_t)nan_tok * D + D - 1] = 0x7fc0;
            }
        }
    }
    if (kind == 3 && R >= 3) {
        rows[0] = T;         /* outside: zero row */
        rows[1] = -1;        /* outside */
        rows[2] = rows[R - 1]; /* repeated */
    }
    uint16_t *xl[2];
    float *lg[2];
    int32_t ids[2][8];
    int grid = -1;
    for (int f = 0; f < 2; f++) {
        xl[f] = malloc((size_t)R * D * 2);
        lg[f] = malloc((size_t)R * V * 4);
        eng_cuda_test_tail_t a = {T, R, D, V, resid, delta, nw, rows, w, 1e-6f,
                                  xl[f], lg[f], ids[f]};
        if (f) /* the default (environment's) lm_head kernel */
            s_check(eng_cuda_test_tail_lmh(-1, 3, &a, &grid), "eng_cuda_test_tail_lmh");
        else
            s_check(eng_cuda_test_tail(0, 1, &a), "eng_cuda_test_tail");
    }
    long dxl = s_bits_differ(xl[0], xl[1], (size_t)R * D), dlg = 0;
    for (size_t i = 0; i < (size_t)R * V; i++)
        dlg += memcmp(&lg[0][i], &lg[1][i], 4) != 0;
    int did = 0, dhost = 0, dexp = 0;
    for (int r = 0; r < R; r++) {
        did += ids[0][r] != ids[1][r];
        dhost += ids[1][r] != s_host_argmax(lg[1] + (size_t)r * V, V);
        const int tok = rows[r];
        const int want = tok == nan_tok || tok < 0 || tok >= T ? 0 : expect;
        if ((expect >= 0 || tok < 0 || tok >= T) && ids[1][r] != want)
            dexp++;
    }
    int ok = dxl == 0 && dlg == 0 && did == 0 && dhost == 0 && dexp == 0;
    printf("%-4s TAIL %s T=%d R=%d D=%d V=%d: != old tail: rows %ld, logits %ld, ids %d (max 0); "
           "ids != host argmax %d, != planted id %d (max 0); id[0] %d; lm_head grid %d (0: "
           "k_gemv_amax)\n",
           ok ? "ok" : "FAIL", name, T, R, D, V, dxl, dlg, did, dhost, dexp, ids[1][0], grid);
    if (!ok)
        g_fail++;
    /* each lm_head kernel of the fused tail against the old tail (f = 0) */
    static const int sel[4] = {0, -2, 1, 7};
    static const char *const seln[4] = {"k_gemv_amax", "persistent", "persistent", "persistent"};
    uint16_t *xp = malloc((size_t)R * D * 2);
    float *lp = malloc((size_t)R * V * 4);
    for (int k = 0; k < 4; k++) {
        g_cases++;
        int32_t idp[8];
        int gr = -1;
        eng_cuda_test_tail_t a = {T, R, D, V, resid, delta, nw, rows, w, 1e-6f, xp, lp, idp};
        s_check(eng_cuda_test_tail_lmh(sel[k], k == 2 ? 1 : 2, &a, &gr), "eng_cuda_test_tail_lmh");
        long pxl = s_bits_differ(xl[0], xp, (size_t)R * D), plg = 0;
        for (size_t i = 0; i < (size_t)R * V; i++)
            plg += memcmp(&lg[0][i], &lp[i], 4) != 0;
        int pid = 0;
        for (int r = 0; r < R; r++)
            pid += ids[0][r] != idp[r];
        /* the persistent kernel must run where the shape allows it (K % 8 == 0, K <= 2048) */
        const int want_p = sel[k] != 0 && D % 8 == 0 && D <= 2048;
        const int kern_ok = want_p ? gr > 0 : gr == 0;
        const int okp = pxl == 0 && plg == 0 && pid == 0 && kern_ok;
        printf("%-4s TAIL_LMH %s T=%d R=%d D=%d V=%d %s (sel %d, grid %d, expected %s): != old "
               "tail: rows %ld, logits %ld, ids %d (max 0); id[0] %d\n",
               okp ? "ok" : "FAIL", name, T, R, D, V, seln[k], sel[k], gr,
               want_p ? "persistent" : "k_gemv_amax", pxl, plg, pid, idp[0]);
        if (!okp)
            g_fail++;
    }
    free(xp);
    free(lp);
    for (int f = 0; f < 2; f++) {
        free(xl[f]);
        free(lg[f]);
    }
    free(resid); free(delta); free(nw); free(w);
}

/* EMBED_PDL: k_embed through ek_launch (OM_CUDA_EMBED_PDL) right after a PDL kernel that writes
 * its ids (the lm_head tail, whose last kernel triggers before it writes) and before a PDL GEMV
 * that reads its output: ids, rows and GEMV output with PDL bit for bit against plain launches;
 * rows against the host lookup embed[ids]; ids against the host argmax of the host logits
 * where the top two differ by more than 1e-3 (else not counted). */
static void t_embed_pdl(int T, int D, int V, int N) {
    g_cases++;
    uint16_t *x = s_bf_rand((size_t)T * D, 1.0f, 0.0f);
    uint16_t *lw = s_bf_rand((size_t)V * D, 0.05f, 0.0f);
    uint16_t *ew = s_bf_rand((size_t)V * D, 1.0f, 0.0f);
    uint16_t *qw = s_bf_rand((size_t)N * D, 0.05f, 0.0f);
    int32_t ids[2][8];
    uint16_t *out[2], *y[2];
    for (int p = 0; p < 2; p++) {
        out[p] = malloc((size_t)T * D * 2);
        y[p] = malloc((size_t)T * N * 2);
        s_check(eng_cuda_test_embed_pdl(p, T, D, V, N, x, lw, ew, qw, ids[p], out[p], y[p]),
                "eng_cuda_test_embed_pdl");
    }
    int did = 0, dhost = 0;
    long drow = 0;
    double *lg = malloc((size_t)V * sizeof(double));
    for (int t = 0; t < T; t++) {
        did += ids[0][t] != ids[1][t];
        for (int v = 0; v < V; v++) {
            double a = 0;
            for (int d = 0; d < D; d++)
                a += (double)eng_bf16_to_f32(x[(size_t)t * D + d]) *
                     eng_bf16_to_f32(lw[(size_t)v * D + d]);
            lg[v] = a;
        }
        int b = 0, b2 = -1;
        for (int v = 1; v < V; v++)
            if (lg[v] > lg[b])
                b = v;
        for (int v = 0; v < V; v++)
            if (v != b && (b2 < 0 || lg[v] > lg[b2]))
                b2 = v;
        if ((b2 < 0 || lg[b] - lg[b2] > 1e-3) && ids[1][t] != b)
            dhost++;
        const int id = ids[1][t];
        if (id < 0 || id >= V)
            drow += D;
        else
            drow += s_bits_differ(out[1] + (size_t)t * D, ew + (size_t)id * D, (size_t)D);
    }
    long dout = s_bits_differ(out[0], out[1], (size_t)T * D);
    long dy = s_bits_differ(y[0], y[1], (size_t)T * N);
    int ok = did == 0 && dhost == 0 && drow == 0 && dout == 0 && dy == 0;
    printf("%-4s EMBED_PDL T=%d D=%d V=%d N=%d: PDL != plain: ids %d, rows %ld, gemv %ld; rows != "
           "embed[ids] %ld, ids != host argmax %d (max 0)\n",
           ok ? "ok" : "FAIL", T, D, V, N, did, dout, dy, drow, dhost);
    if (!ok)
        g_fail++;
    for (int p = 0; p < 2; p++) {
        free(out[p]);
        free(y[p]);
    }
    free(lg); free(x); free(lw); free(ew); free(qw);
}

int main(int argc, char **argv) {
    const char *seed = getenv("OM_TEST_SEED");
    if (seed)
        g_rng = strtoull(seed, NULL, 0) | 1;
    printf("seed 0x%016llx\n", (unsigned long long)g_rng);
    int r = eng_backend_new("cuda", 0, 0, &g_gpu);
    if (r < 0) {
        printf("SKIP: no CUDA device (%d)\n", r);
        return 77;
    }
    s_check(eng_backend_new("cpu", 0, 0, &g_cpu), "cpu backend");
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;

    t_embed(1, 152064, 2048);
    t_embed(300, 5003, 24);
    t_norm(1, 2048, ENG_DTYPE_BF16, 0, 0);
    t_norm(300, 2048, ENG_DTYPE_BF16, 1, 1);
    t_norm(7, 24, ENG_DTYPE_F32, 1, 1);
    t_norm(5, 16, ENG_DTYPE_BF16, 0, 1);
    t_matmul(1, 2048, 5120);
    t_matmul(3, 4096, 2048);
    t_matmul(8, 2048, 128);
    t_matmul(9, 2048, 512);
    t_matmul(300, 2048, 1000);
    t_matmul(5, 24, 40);
    t_matmul(17, 12, 32);
    t_rope(1, 32, 4, 128, 24, 20, 20, ENG_DTYPE_BF16);
    t_rope(37, 32, 4, 128, 24, 20, 20, ENG_DTYPE_BF16);
    t_rope(9, 4, 2, 16, 4, 2, 2, ENG_DTYPE_F32);
    t_rope(5, 4, 2, 8, 0, 0, 0, ENG_DTYPE_BF16);
    t_rope(3, 6, 3, 12, 0, 0, 0, ENG_DTYPE_BF16);
    {
        int np1[] = {511}, nn1[] = {1};
        t_attention(1, np1, nn1, 32, 4, 128, 16, 0);
        t_attention(1, np1, nn1, 32, 4, 128, 16, 1);
        int np2[] = {4095}, nn2[] = {1};
        if (!quick) {
            t_attention(1, np2, nn2, 32, 4, 128, 16, 0);
            t_attention(1, np2, nn2, 32, 4, 128, 16, 1);
        }
        int np3[] = {50}, nn3[] = {100};
        t_attention(1, np3, nn3, 32, 4, 128, 16, 0);
        t_attention(1, np3, nn3, 32, 4, 128, 16, 1);
        int np4[] = {0, 33, 700, 5}, nn4[] = {20, 1, 1, 7};
        t_attention(4, np4, nn4, 32, 4, 128, 16, 0);
        t_attention(4, np4, nn4, 32, 4, 128, 16, 1);
        int np7[] = {511, 511, 511, 511, 511, 511, 511, 511, 511, 300};
        int nn7[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        t_attention(10, np7, nn7, 32, 4, 128, 16, 1);
        int np5[] = {3, 0}, nn5[] = {1, 36};
        t_attention(2, np5, nn5, 4, 2, 8, 4, 0);
        t_attention(2, np5, nn5, 4, 2, 8, 4, 1);
        int np6[] = {17}, nn6[] = {9};
        t_attention(1, np6, nn6, 6, 3, 12, 16, 0);
        /* bf16 KV, head_dim 128 (k_attn_dec: 64-key tiles, splits of whole tiles, last-block
           merge): one tile exactly (64), one key past it (65), a partial last tile (1001, not a
           multiple of the block size), 32 full splits (2001), several tiles per split (8192),
           GQA groups 1, 2 and 16, block sizes that straddle tiles (48) and exceed them (256),
           a mixed decode batch; then the same with the pre-PDL-wait load order (the model
           runner's decode path: the newest row loaded last) */
        for (int pw = 0; pw < 2; pw++) {
            if (pw)
                setenv("OM_CUDA_ATTN_PREWAIT_TEST", "1", 1);
            int a1[] = {63}, b1[] = {1};
            t_attention(1, a1, b1, 32, 4, 128, 16, 1);
            int a2[] = {64}, b2[] = {1};
            t_attention(1, a2, b2, 32, 4, 128, 16, 1);
            int a3[] = {1000}, b3[] = {1};
            t_attention(1, a3, b3, 32, 4, 128, 16, 1);
            int a4[] = {2000}, b4[] = {1};
            t_attention(1, a4, b4, 32, 4, 128, 16, 1);
            int a5[] = {8191}, b5[] = {1};
            if (!quick)
                t_attention(1, a5, b5, 32, 4, 128, 16, 1);
            int a6[] = {700, 129, 0, 64}, b6[] = {1, 1, 1, 1};
            t_attention(4, a6, b6, 8, 4, 128, 48, 1);
            t_attention(4, a6, b6, 32, 2, 128, 256, 1);
            t_attention(4, a6, b6, 4, 4, 128, 16, 1);
            int a7[] = {30, 200}, b7[] = {70, 3};
            t_attention(2, a7, b7, 32, 4, 128, 48, 1);
            t_attention(1, np1, nn1, 32, 4, 128, 16, 1);
            t_attention(10, np7, nn7, 32, 4, 128, 16, 1);
        }
        unsetenv("OM_CUDA_ATTN_PREWAIT_TEST");
    }
    t_attention_tc(quick);
    t_moe(1, 2048, 768, 128, 8, 1, 0);
    t_moe(1, 2048, 768, 128, 8, 2, 0);
    t_moe(5, 64, 64, 16, 4, 1, 0);
    t_moe(5, 64, 64, 16, 4, 2, 0);
    t_moe(3, 32, 12, 6, 3, 1, 0);
    t_moe(300, 256, 128, 8, 2, 2, 1);
    t_moe(1024, 256, 128, 16, 4, 2, 0); /* ~256 rows an expert: several 128-row tiles each */
    if (!quick) {
        t_moe(64, 2048, 768, 128, 8, 2, 0);
        t_moe(64, 2048, 768, 128, 8, 1, 0);
    }
    t_elementwise(1, 2048);
    t_elementwise(33, 24);
    /* fused decode kernels of the model runner (bf16): real shapes (Qwen3-Omni thinker: D 2048,
       32/4 heads x 128, M-RoPE [24,20,20]; experts I 768, K 8), T = 1..8, hd 64/72/128/256,
       odd D, GQA groups 1..8, plain RoPE, layer 0 (no delta) */
    t_qkv_fused(1, 2048, 32, 4, 128, 20, 20, 1);
    t_qkv_fused(1, 2048, 32, 4, 128, 20, 20, 0);
    t_qkv_fused(8, 2048, 32, 4, 128, 20, 20, 1);
    t_qkv_fused(7, 2048, 32, 4, 128, 20, 20, 1);
    t_qkv_fused(2, 2048, 32, 4, 128, 0, 0, 1);
    t_qkv_fused(3, 1032, 6, 2, 64, 8, 8, 1);
    t_qkv_fused(5, 512, 4, 4, 128, 0, 0, 1);
    t_qkv_fused(4, 256, 8, 1, 72, 12, 12, 1);
    t_qkv_fused(6, 128, 2, 1, 256, 42, 42, 0);
    /* decode attention with QK-norm + RoPE + KV write folded in (OM_CUDA_ATTN_ROPE): contexts
       around the 64-key tile and 512 boundaries, 1 split (new row in a later tile: staged in
       shared memory) and up to 32 (merge), GQA 8 (the thinker) and 1, M-RoPE on/off, block
       sizes 16/48/256, mixed batches; hd 64: refused (the model keeps k_qk_norm_rope) */
    {
        const int cx[] = {1, 2, 63, 64, 65, 511, 512, 513, 4096};
        const int ncx = (int)(sizeof cx / sizeof cx[0]);
        for (int gq = 0; gq < 2; gq++)
            for (int i = 0; i < ncx; i++)
                for (int sp = 0; sp < 2; sp++) {
                    if (quick && cx[i] == 4096 && gq)
                        continue;
                    t_attn_rope(1, &cx[i], gq ? 4 : 32, 4, 128, 20, 20, 16, sp ? 32 : 1);
                }
        const int c65[] = {65}, c513[] = {513}, c4k[] = {4096}, c130[] = {130};
        t_attn_rope(1, c65, 32, 4, 128, 0, 0, 16, 32);
        t_attn_rope(1, c513, 32, 4, 128, 0, 0, 16, 1);
        t_attn_rope(1, c4k, 32, 4, 128, 0, 0, 16, 32);
        t_attn_rope(1, c513, 32, 4, 128, 20, 20, 16, 2);  /* new row in tile 3 + merge */
        t_attn_rope(1, c4k, 32, 4, 128, 20, 20, 16, 4);   /* new row in tile 15 + merge */
        t_attn_rope(1, c130, 32, 4, 128, 20, 20, 48, 1);  /* block straddles tiles */
        t_attn_rope(1, c513, 16, 1, 128, 20, 20, 256, 8); /* GQA 16 */
        const int m4[] = {1, 64, 513, 4096};
        t_attn_rope(4, m4, 32, 4, 128, 20, 20, 16, 32);
        t_attn_rope(4, m4, 32, 4, 128, 0, 0, 16, 4);
        const int m8[] = {2, 63, 65, 511, 512, 130, 1000, 4096};
        t_attn_rope(8, m8, 4, 4, 128, 20, 20, 48, 16);
        t_attn_rope(8, m8, 32, 4, 128, 20, 20, 16, 16);
        const int c100[] = {100};
        t_attn_rope(1, c100, 16, 2, 64, 8, 8, 16, 32);
    }
    t_moe_fused(1, 2048, 768, 32, 8, 0);
    t_moe_fused(1, 2048, 768, 32, 8, 1);
    t_moe_fused(8, 2048, 768, 32, 8, 0);
    t_moe_fused(3, 2048, 768, 32, 8, 7);
    t_moe_fused(2, 2048, 768, 8, 8, 0);
    t_moe_fused(5, 264, 136, 10, 3, 0);
    t_moe_fused(5, 264, 136, 10, 3, 2);
    t_moe_fused(4, 64, 64, 4, 1, 0);
    t_moe_fused(7, 512, 256, 16, 4, 33);
    t_moe_fused(6, 128, 96, 12, 6, 0);
    /* OM_CUDA_ROUTER_LOCAL: the thinker's MoE shape at T = 1..8, both down projections, no
       renorm, expert ranges (expert parallelism), E = 512, and shapes that take the k_moe_topk
       fallback (I > 1024) */
    for (int t = 1; t <= 8; t++)
        t_router_local(t, 2048, 768, 128, 8, 1, 0, 0, 1);
    t_router_local(1, 2048, 768, 128, 8, 1, 0, 0, 2);
    t_router_local(8, 2048, 768, 128, 8, 1, 0, 0, 2);
    t_router_local(3, 2048, 768, 128, 8, 0, 0, 0, 1);
    t_router_local(2, 2048, 768, 128, 8, 1, 32, 64, 1);
    t_router_local(8, 2048, 768, 128, 8, 1, 64, 64, 2);
    t_router_local(5, 2048, 768, 128, 8, 1, 120, 8, 1);
    t_router_local(2, 256, 64, 512, 8, 1, 0, 0, 1);
    t_router_local(5, 264, 136, 10, 3, 1, 0, 0, 1);
    t_router_local(4, 64, 64, 4, 1, 0, 0, 0, 2);
    t_router_local(3, 512, 1032, 32, 4, 1, 0, 0, 1); /* I > 1024: k_moe_topk fallback */
    t_gemv_ks(1, 2048, 4096, 4); /* o_proj of the thinker */
    t_gemv_ks(8, 2048, 4096, 4);
    t_gemv_ks(3, 2048, 4096, 2);
    t_gemv_ks(5, 1001, 264, 8);   /* odd N (partial last block), K not a multiple of 256 */
    t_gemv_ks(2, 7, 8, 4);
    t_gemv_ks(7, 515, 1032, 2);
    /* decode tail (OM_CUDA_TAIL): the thinker's vocab and hidden, batch 1..8; ties, NaN, +inf,
       rows outside the step; vocab not a multiple of 8 (partial last block) on both argmax paths
       of the old tail (V >= 8192: 32-block split, else one block); D % 8 != 0 (scalar GEMV) */
    t_tail("random", 1, 1, 2048, 152064, 0);
    t_tail("random", 8, 8, 2048, 152064, 0);
    t_tail("ties", 1, 1, 2048, 152064, 1);
    t_tail("ties+nan+inf", 4, 4, 2048, 152064, 2);
    t_tail("ties+nan+inf", 8, 8, 2048, 151949, 2);
    t_tail("rows", 6, 5, 2048, 152064, 3);
    t_tail("chunk", 7, 1, 2048, 152064, 0); /* a prefill chunk: only its last row */
    t_tail("random", 3, 3, 264, 8193, 0);
    t_tail("ties+nan+inf", 5, 5, 264, 8193, 2);
    t_tail("ties+nan+inf", 2, 2, 100, 1001, 2);
    t_tail("rows", 8, 4, 36, 7, 3);
    t_tail("ties", 2, 2, 264, 8193, 1);
    t_tail("ties+nan+inf", 3, 3, 64, 23, 2);  /* K < 256: lanes 8..31 idle; 24 warps, 23 rows */
    t_tail("rows", 8, 8, 64, 7, 3);           /* one block, fewer rows than warps */
    t_tail("random", 1, 1, 3072, 5000, 0);    /* K > 2048: k_gemv_amax */
    t_embed_pdl(1, 2048, 152064, 4096);
    t_embed_pdl(8, 2048, 30011, 512);
    t_embed_pdl(3, 64, 23, 40);

    printf("%d cases, %d failed\n", g_cases, g_fail);
    eng_backend_free(g_gpu);
    eng_backend_free(g_cpu);
    return g_fail ? 1 : 0;
}
