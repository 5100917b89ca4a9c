/* eng_cuda_testhook.cu: test hooks (eng_cuda.h, "test hooks") that run one fused decode kernel or
 * the unfused kernels it replaces on host data, so test_cuda_ops can check the fused kernels of
 * the model runner against a CPU reference and against the path they replace. Not used by the
 * engine. Each call allocates, runs (PDL launches, as in a decode step) and frees. */
#include <cmath>
#include <cstring>
#include <vector>

#include "eng_cuda.h"
#include "eng_cuda_kern.cuh"

namespace {
struct dbuf {
    std::vector<void *> p;
    ~dbuf() {
        for (void *x : p)
            cudaFree(x);
    }
    template <typename X> int get(X **out, size_t n, const void *src = nullptr, int fill = -1) {
        void *d = nullptr;
        const size_t bytes = n > 0 ? n * sizeof(X) : 16;
        CUDA_CHECK(cudaMalloc(&d, bytes));
        p.push_back(d);
        if (src)
            CUDA_CHECK(cudaMemcpy(d, src, n * sizeof(X), cudaMemcpyHostToDevice));
        else if (fill >= 0)
            CUDA_CHECK(cudaMemset(d, fill, bytes));
        *out = (X *)d;
        return 0;
    }
};
struct pdl_on {
    pdl_on() { ek_pdl = true; }
    ~pdl_on() { ek_pdl = false; }
};
} // namespace

#define HCHECK(expr)                                                                               \
    do {                                                                                           \
        int r_ = (expr);                                                                           \
        if (r_ < 0)                                                                                \
            return r_;                                                                             \
    } while (0)

extern "C" int eng_cuda_test_qkv_rope(int fused, int reps, const eng_cuda_test_qkv_t *a) {
    if (!a || a->T < 1 || a->T > 8 || a->D <= 0 || a->Hq <= 0 || a->Hk <= 0 || a->hd <= 0 ||
        a->n_slots <= 0 || reps < 1)
        return -EINVAL;
    const int T = a->T, D = a->D, hd = a->hd, Hk = a->Hk;
    const int N = (a->Hq + 2 * Hk) * hd;
    const size_t pool = (size_t)a->n_slots * Hk * hd;
    dbuf b;
    bf16 *h_in = nullptr, *delta = nullptr, *h_out = nullptr, *nw = nullptr, *w = nullptr;
    bf16 *qn = nullptr, *kn = nullptr, *qkv = nullptr, *kp = nullptr, *vp = nullptr;
    int32_t *pos = nullptr, *slots = nullptr;
    float *inv = nullptr;
    int *cnt = nullptr;
    std::vector<float> invh(hd / 2);
    for (int j = 0; j < hd / 2; j++) /* as the model runner computes it */
        invh[j] = 1.0f / powf(a->theta, (float)(2 * j) / (float)hd);
    HCHECK(b.get(&h_in, (size_t)T * D, a->h_in));
    if (a->delta)
        HCHECK(b.get(&delta, (size_t)T * D, a->delta));
    HCHECK(b.get(&h_out, (size_t)T * D, nullptr, 0));
    HCHECK(b.get(&nw, (size_t)D, a->attn_norm));
    HCHECK(b.get(&w, (size_t)N * D, a->wqkv));
    HCHECK(b.get(&qn, (size_t)hd, a->q_norm));
    HCHECK(b.get(&kn, (size_t)hd, a->k_norm));
    HCHECK(b.get(&qkv, (size_t)T * N, nullptr, 0));
    HCHECK(b.get(&kp, pool, a->kpool));
    HCHECK(b.get(&vp, pool, a->vpool));
    HCHECK(b.get(&pos, (size_t)3 * T, a->pos3));
    HCHECK(b.get(&slots, (size_t)T, a->slots));
    HCHECK(b.get(&inv, invh.size(), invh.data()));
    HCHECK(b.get(&cnt, (size_t)a->Hq + Hk + 16, nullptr, 0));
    float *tab = nullptr;
    if (fused == 2)
        HCHECK(b.get(&tab, (size_t)2 * T * hd, nullptr, 0));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int r = 0;
    {
        pdl_on pg;
        for (int i = 0; i < reps && r >= 0; i++) {
            if (fused == 1) {
                r = ek_gemv_norm_rope(s, qkv, w, T, D, h_in, delta, h_out, nw, a->eps, a->Hq, Hk,
                                      hd, qn, kn, pos, inv, a->sec1, a->sec2, kp, vp, slots, cnt);
            } else {
                r = ek_gemv_norm(s, qkv, w, T, N, D, h_in, delta, h_out, nw, a->eps);
                if (r >= 0 && tab) /* the step's cos/sin table (the unfused path at T > 8) */
                    r = ek_rope_table<bf16>(s, tab, pos, inv, T, hd, a->sec1, a->sec2);
                if (r >= 0)
                    r = ek_qk_norm_rope<bf16, bf16, bf16>(
                        s, qkv, N, qkv + a->Hq * hd, N, qn, kn, pos, inv, T, a->Hq, Hk, hd, a->eps,
                        a->sec1, a->sec2, kp, vp, qkv + (a->Hq + Hk) * hd, N, slots, tab);
            }
        }
    }
    cudaError_t e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r < 0)
        return r;
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemcpy(a->ret_qkv, qkv, (size_t)T * N * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_h_out, h_out, (size_t)T * D * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_kpool, kp, pool * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_vpool, vp, pool * 2, cudaMemcpyDeviceToHost));
    std::vector<int> ch((size_t)a->Hq + Hk + 16);
    CUDA_CHECK(cudaMemcpy(ch.data(), cnt, ch.size() * 4, cudaMemcpyDeviceToHost));
    int nz = 0;
    for (int v : ch)
        nz += v != 0;
    return nz; /* counters left non-zero (0 expected) */
}

extern "C" int eng_cuda_test_attn_rope(int fused, int reps, const eng_cuda_test_attn_t *a) {
    if (!a || a->T < 1 || a->Hq <= 0 || a->Hk <= 0 || a->Hq % a->Hk || a->hd <= 0 || a->hd % 2 ||
        a->bs <= 0 || a->max_blocks <= 0 || a->n_slots <= 0 || a->n_splits < 1 || reps < 1)
        return -EINVAL;
    const int T = a->T, hd = a->hd, Hq = a->Hq, Hk = a->Hk, bs = a->bs;
    const int N = (Hq + 2 * Hk) * hd;
    const size_t pool = (size_t)a->n_slots * Hk * hd;
    std::vector<int32_t> tseq(T), slots(T);
    for (int t = 0; t < T; t++) {
        const int p = a->tok_pos[t];
        if (p < 0 || p / bs >= a->max_blocks)
            return -EINVAL;
        tseq[t] = t;
        slots[t] = a->bt[(size_t)t * a->max_blocks + p / bs] * bs + p % bs;
        if (slots[t] < 0 || slots[t] >= a->n_slots)
            return -EINVAL;
    }
    std::vector<float> invh(hd / 2);
    for (int j = 0; j < hd / 2; j++) /* as the model runner computes it */
        invh[j] = 1.0f / powf(a->theta, (float)(2 * j) / (float)hd);
    dbuf b;
    bf16 *qkv = nullptr, *qn = nullptr, *kn = nullptr, *kp = nullptr, *vp = nullptr, *out = nullptr;
    int32_t *pos = nullptr, *sl = nullptr, *tp = nullptr, *ts = nullptr, *bt = nullptr;
    float *inv = nullptr, *partial = nullptr;
    int *cnt = nullptr;
    HCHECK(b.get(&qkv, (size_t)T * N, a->qkv));
    HCHECK(b.get(&qn, (size_t)hd, a->q_norm));
    HCHECK(b.get(&kn, (size_t)hd, a->k_norm));
    HCHECK(b.get(&kp, pool, a->kpool));
    HCHECK(b.get(&vp, pool, a->vpool));
    HCHECK(b.get(&out, (size_t)T * Hq * hd, nullptr, 0));
    HCHECK(b.get(&pos, (size_t)3 * T, a->pos3));
    HCHECK(b.get(&sl, (size_t)T, slots.data()));
    HCHECK(b.get(&tp, (size_t)T, a->tok_pos));
    HCHECK(b.get(&ts, (size_t)T, tseq.data()));
    HCHECK(b.get(&bt, (size_t)T * a->max_blocks, a->bt));
    HCHECK(b.get(&inv, invh.size(), invh.data()));
    HCHECK(b.get(&partial, (size_t)T * Hq * 32 * (hd + 2), nullptr, 0));
    HCHECK(b.get(&cnt, (size_t)T * Hq, nullptr, 0));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const float scale = 1.0f / sqrtf((float)hd);
    int r = 0;
    {
        pdl_on pg;
        for (int i = 0; i < reps && r >= 0; i++) {
            if (fused) {
                const ek_dec_rope rp = {qn, kn, pos, inv, sl, a->eps, a->sec1, a->sec2,
                                        nullptr, nullptr};
                r = ek_attention_decode_rope(s, out, qkv, kp, vp, ts, tp, bt, T, Hq, Hk, hd,
                                             a->max_blocks, bs, scale, a->n_splits, partial, N,
                                             cnt, &rp);
            } else {
                r = ek_qk_norm_rope<bf16, bf16, bf16>(s, qkv, N, qkv + Hq * hd, N, qn, kn, pos,
                                                      inv, T, Hq, Hk, hd, a->eps, a->sec1,
                                                      a->sec2, kp, vp, qkv + (Hq + Hk) * hd, N,
                                                      sl);
                if (r >= 0)
                    r = ek_attention_decode(s, out, qkv, kp, vp, ts, tp, bt, T, Hq, Hk, hd,
                                            a->max_blocks, bs, scale, a->n_splits, partial, N,
                                            cnt);
            }
        }
    }
    cudaError_t e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r < 0)
        return r;
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemcpy(a->ret_out, out, (size_t)T * Hq * hd * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_kpool, kp, pool * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_vpool, vp, pool * 2, cudaMemcpyDeviceToHost));
    std::vector<int> ch((size_t)T * Hq);
    CUDA_CHECK(cudaMemcpy(ch.data(), cnt, ch.size() * 4, cudaMemcpyDeviceToHost));
    int nz = 0;
    for (int v : ch)
        nz += v != 0;
    return nz;
}

extern "C" int eng_cuda_test_moe_experts(int fused, int reps, int max_blocks,
                                         const eng_cuda_test_moe_t *a) {
    if (!a || a->T < 1 || a->T > 8 || a->D <= 0 || a->I <= 0 || a->E <= 0 || a->K <= 0 ||
        a->K > a->E || reps < 1)
        return -EINVAL;
    const int T = a->T, D = a->D, I = a->I, E = a->E, K = a->K;
    dbuf b;
    bf16 *x = nullptr, *g = nullptr, *u = nullptr, *dn = nullptr, *out = nullptr;
    int *cnt = nullptr;
    char *msb = nullptr;
    HCHECK(b.get(&x, (size_t)T * D, a->x));
    HCHECK(b.get(&g, (size_t)E * I * D, a->gate));
    HCHECK(b.get(&u, (size_t)E * I * D, a->up));
    HCHECK(b.get(&dn, (size_t)E * D * I, a->down));
    HCHECK(b.get(&out, (size_t)T * D, nullptr, 0));
    HCHECK(b.get(&cnt, (size_t)EK_MOE_FUSED_CNT, nullptr, 0));
    HCHECK(b.get(&msb, ek_moe_scratch_bytes(T, D, I, E, K), nullptr, 0));
    ek_moe_scratch ms;
    ek_moe_scratch_carve(&ms, msb, T, D, I, E, K);
    CUDA_CHECK(cudaMemcpy(ms.ids, a->ids, (size_t)T * K * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(ms.wts, a->wts, (size_t)T * K * 4, cudaMemcpyHostToDevice));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ek_ctx c = {};
    c.stream = s;
    c.gemv_max_rows = 8;
    int r = 0;
    {
        pdl_on pg;
        ek_moe_fused_cap = max_blocks;
        ek_moe_down_sel = fused == 2 ? 0 : (fused == 3 ? 2 : 1);
        for (int i = 0; i < reps && r >= 0; i++)
            r = ek_moe_experts<bf16>(&c, out, x, g, u, dn, T, D, I, E, K, EK_MOE_GEMV, &ms, 0, 0,
                                     fused == 1 ? cnt : nullptr);
        ek_moe_fused_cap = 0;
        ek_moe_down_sel = -1;
    }
    cudaError_t e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r < 0)
        return r;
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemcpy(a->ret_out, out, (size_t)T * D * 2, cudaMemcpyDeviceToHost));
    int ch[EK_MOE_FUSED_CNT];
    CUDA_CHECK(cudaMemcpy(ch, cnt, sizeof ch, cudaMemcpyDeviceToHost));
    int nz = 0;
    for (int v : ch)
        nz += v != 0;
    return nz;
}

extern "C" int eng_cuda_test_router_moe(int local, int reps, const eng_cuda_test_router_t *a) {
    if (!a || local < 0 || local > 4 || a->T < 1 || a->T > 8 || a->D <= 0 || a->I <= 0 ||
        a->E <= 0 || a->E > 512 ||
        a->K <= 0 || a->K > 8 || a->K > a->E || a->e0 < 0 || a->ne < 0 ||
        a->e0 + a->ne > a->E || (a->down != 1 && a->down != 2) || reps < 1)
        return -EINVAL;
    const int T = a->T, D = a->D, I = a->I, E = a->E, K = a->K;
    const int nl = a->ne ? a->ne : E;
    dbuf b;
    bf16 *h_in = nullptr, *delta = nullptr, *h_out = nullptr, *nw = nullptr, *rw = nullptr;
    bf16 *g = nullptr, *u = nullptr, *dn = nullptr, *xn = nullptr, *out = nullptr;
    int *cnt = nullptr;
    char *msb = nullptr;
    HCHECK(b.get(&h_in, (size_t)T * D, a->h_in));
    HCHECK(b.get(&delta, (size_t)T * D, a->delta));
    HCHECK(b.get(&h_out, (size_t)T * D, nullptr, 0));
    HCHECK(b.get(&nw, (size_t)D, a->nw));
    HCHECK(b.get(&rw, (size_t)E * D, a->router));
    HCHECK(b.get(&g, (size_t)nl * I * D, a->gate));
    HCHECK(b.get(&u, (size_t)nl * I * D, a->up));
    HCHECK(b.get(&dn, (size_t)nl * D * I, a->down_w));
    HCHECK(b.get(&xn, (size_t)T * D, nullptr, 0));
    HCHECK(b.get(&out, (size_t)T * D, nullptr, 0));
    HCHECK(b.get(&cnt, 1, nullptr, 0));
    HCHECK(b.get(&msb, ek_moe_scratch_bytes(T, D, I, E, K), nullptr, 0));
    ek_moe_scratch ms;
    ek_moe_scratch_carve(&ms, msb, T, D, I, E, K);
    CUDA_CHECK(cudaMemset(ms.ids, 0xff, (size_t)T * K * 4));
    CUDA_CHECK(cudaMemset(ms.wts, 0xff, (size_t)T * K * 4));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ek_ctx c = {};
    c.stream = s;
    c.gemv_max_rows = 8;
    /* ek_moe_experts falls back to k_moe_topk where !route_local_ok; 3, 4: every k_moe_down_wk
       block reads k_moe_gu's ids after the wait / runs the top-k before it */
    const int rl = local > 2 ? 1 : local;
    int r = 0;
    {
        pdl_on pg;
        ek_moe_down_sel = a->down;
        ek_moe_local_early = local == 3 ? 0 : (local == 4 ? 1 << 30 : -1);
        for (int i = 0; i < reps && r >= 0; i++) {
            r = ek_router_fused(s, &ms, cnt, rw, T, E, D, K, a->norm != 0, h_in, delta, h_out, nw,
                                a->eps, xn, rl == 0);
            if (r >= 0)
                r = ek_moe_experts<bf16>(&c, out, xn, g, u, dn, T, D, I, E, K, EK_MOE_GEMV, &ms,
                                         a->e0, a->ne, nullptr, rl, a->norm != 0);
        }
        ek_moe_down_sel = -1;
        ek_moe_local_early = -1;
    }
    cudaError_t e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r < 0)
        return r;
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemcpy(a->ret_out, out, (size_t)T * D * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_h_out, h_out, (size_t)T * D * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_xn, xn, (size_t)T * D * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_logits, ms.logits, (size_t)T * E * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_ids, ms.ids, (size_t)T * K * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_wts, ms.wts, (size_t)T * K * 4, cudaMemcpyDeviceToHost));
    int ch = 0;
    CUDA_CHECK(cudaMemcpy(&ch, cnt, sizeof ch, cudaMemcpyDeviceToHost));
    return ch;
}

extern "C" int eng_cuda_test_gemv_ks(int ks, int T, int N, int K, const uint16_t *x,
                                     const uint16_t *w, uint16_t *ret_y) {
    if (T < 1 || T > 8 || N <= 0 || K <= 0 || !x || !w || !ret_y)
        return -EINVAL;
    dbuf b;
    bf16 *xd = nullptr, *wd = nullptr, *yd = nullptr;
    HCHECK(b.get(&xd, (size_t)T * K, x));
    HCHECK(b.get(&wd, (size_t)N * K, w));
    HCHECK(b.get(&yd, (size_t)T * N, nullptr, 0));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ek_ctx c = {};
    c.stream = s;
    c.gemv_max_rows = 8;
    int r;
    {
        pdl_on pg;
        r = ks > 1 ? ek_gemv_ks(s, yd, xd, wd, T, N, K, ks)
                   : ek_matmul<bf16, bf16>(&c, yd, xd, wd, T, N, K);
    }
    cudaError_t e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r < 0)
        return r;
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemcpy(ret_y, yd, (size_t)T * N * 2, cudaMemcpyDeviceToHost));
    return 0;
}

/* lmh: ek_lmh_blocks for the fused tail's lm_head kernel (-1: the environment). */
static int s_test_tail(int fused, int lmh, int reps, const eng_cuda_test_tail_t *a,
                       int *ret_grid) {
    if (!a || a->T < 1 || a->R < 1 || a->R > 8 || a->D <= 0 || a->V <= 0 || reps < 1 ||
        !a->resid || !a->delta || !a->norm_w || !a->rows || !a->lm_head || !a->ret_xl ||
        !a->ret_logits || !a->ret_ids)
        return -EINVAL;
    const int T = a->T, R = a->R, D = a->D, V = a->V;
    const size_t np = (size_t)R * ek_lm_head_argmax_partials(R, V);
    dbuf b;
    bf16 *resid = nullptr, *delta = nullptr, *nw = nullptr, *w = nullptr, *xn = nullptr,
         *xl = nullptr;
    int32_t *rows = nullptr, *ids = nullptr;
    float *logits = nullptr, *pv = nullptr;
    int *pi = nullptr;
    HCHECK(b.get(&resid, (size_t)T * D, a->resid));
    HCHECK(b.get(&delta, (size_t)T * D, a->delta));
    HCHECK(b.get(&nw, (size_t)D, a->norm_w));
    HCHECK(b.get(&w, (size_t)V * D, a->lm_head));
    HCHECK(b.get(&rows, (size_t)R, a->rows));
    HCHECK(b.get(&xn, (size_t)T * D, nullptr, 0));
    HCHECK(b.get(&xl, (size_t)R * D, nullptr, 0xff));     /* poisoned: every row must be written */
    HCHECK(b.get(&logits, (size_t)R * V, nullptr, 0xff));
    HCHECK(b.get(&ids, (size_t)R, nullptr, 0xff));
    HCHECK(b.get(&pv, fused ? np : (size_t)64 * 32, nullptr, 0xff));
    HCHECK(b.get(&pi, fused ? np : (size_t)64 * 32, nullptr, 0xff));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ek_ctx c = {};
    c.stream = s;
    c.gemv_max_rows = 8;
    int r = 0;
    {
        pdl_on pg;
        struct lmh_sel { /* restored on every exit */
            explicit lmh_sel(int v) { ek_lmh_blocks = v; }
            ~lmh_sel() { ek_lmh_blocks = -1; }
        } ls(lmh);
        if (ret_grid)
            *ret_grid = fused ? ek_lm_head_argmax_grid(R, V, D, xl, w) : 0;
        for (int i = 0; i < reps && r >= 0; i++) {
            if (i > 0) /* the old path adds delta into resid in place: start each rep afresh */
                r = cudaMemcpyAsync(resid, a->resid, (size_t)T * D * 2, cudaMemcpyHostToDevice,
                                    s) == cudaSuccess ? 0 : -EIO;
            if (r < 0)
                break;
            if (fused) {
                r = ek_add_rmsnorm_rows(s, xl, resid, delta, nw, rows, R, D, T, a->eps);
                if (r >= 0)
                    r = ek_lm_head_argmax(s, logits, ids, xl, w, R, V, D, pv, pi);
            } else {
                r = ek_add_rmsnorm<bf16, bf16>(s, xn, resid, delta, nw, T, D, a->eps);
                if (r >= 0)
                    r = ek_get_rows<bf16>(s, xl, xn, rows, R, D, T);
                if (r >= 0)
                    r = ek_matmul<bf16, float>(&c, logits, xl, w, R, V, D);
                if (r >= 0)
                    r = ek_argmax(s, ids, logits, R, V, pv, pi);
            }
        }
    }
    cudaError_t e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r < 0)
        return r;
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemcpy(a->ret_xl, xl, (size_t)R * D * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_logits, logits, (size_t)R * V * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(a->ret_ids, ids, (size_t)R * 4, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int eng_cuda_test_tail(int fused, int reps, const eng_cuda_test_tail_t *a) {
    return s_test_tail(fused, -1, reps, a, nullptr);
}

extern "C" int eng_cuda_test_tail_lmh(int lmh, int reps, const eng_cuda_test_tail_t *a,
                                      int *ret_grid) {
    if (lmh < -2 || !ret_grid)
        return -EINVAL;
    return s_test_tail(1, lmh == -2 ? EK_LMH_OCC : lmh, reps, a, ret_grid);
}

extern "C" int eng_cuda_test_embed_pdl(int pdl, int T, int D, int V, int N, const uint16_t *x,
                                       const uint16_t *lm_head, const uint16_t *embed,
                                       const uint16_t *wq, int32_t *ret_ids, uint16_t *ret_out,
                                       uint16_t *ret_y) {
    if (T < 1 || T > 8 || D <= 0 || V <= 0 || N <= 0 || !x || !lm_head || !embed || !wq ||
        !ret_ids || !ret_out || !ret_y)
        return -EINVAL;
    const size_t np = (size_t)T * ek_lm_head_argmax_partials(T, V);
    dbuf b;
    bf16 *xd = nullptr, *lw = nullptr, *ew = nullptr, *qw = nullptr, *out = nullptr, *y = nullptr;
    float *logits = nullptr, *pv = nullptr;
    int32_t *ids = nullptr;
    int *pi = nullptr;
    HCHECK(b.get(&xd, (size_t)T * D, x));
    HCHECK(b.get(&lw, (size_t)V * D, lm_head));
    HCHECK(b.get(&ew, (size_t)V * D, embed));
    HCHECK(b.get(&qw, (size_t)N * D, wq));
    HCHECK(b.get(&logits, (size_t)T * V, nullptr, 0));
    HCHECK(b.get(&pv, np, nullptr, 0));
    HCHECK(b.get(&pi, np, nullptr, 0));
    HCHECK(b.get(&ids, (size_t)T, nullptr, 0xff)); /* -1: a zero row if read before written */
    HCHECK(b.get(&out, (size_t)T * D, nullptr, 0xff));
    HCHECK(b.get(&y, (size_t)T * N, nullptr, 0xff));
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    ek_ctx c = {};
    c.stream = s;
    c.gemv_max_rows = 8;
    int r;
    {
        ek_pdl = pdl != 0;
        r = ek_lm_head_argmax(s, logits, ids, xd, lw, T, V, D, pv, pi);
        if (r >= 0)
            r = ek_embed<bf16>(s, out, ids, ew, T, D, V);
        if (r >= 0)
            r = ek_matmul<bf16, bf16>(&c, y, out, qw, T, N, D);
        ek_pdl = false;
    }
    cudaError_t e = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (r < 0)
        return r;
    CUDA_CHECK(e);
    CUDA_CHECK(cudaMemcpy(ret_ids, ids, (size_t)T * 4, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(ret_out, out, (size_t)T * D * 2, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(ret_y, y, (size_t)T * N * 2, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int eng_cuda_test_set_moe_bm(int bm, int vec) {
    if ((bm != 0 && bm != 32 && bm != 64 && bm != 128) || vec < -1 || vec > 1)
        return -EINVAL;
    ek_moe_bm_sel = bm;
    ek_moe_vec_sel = vec;
    return 0;
}
