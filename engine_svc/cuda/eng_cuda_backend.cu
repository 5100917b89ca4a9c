/* eng_cuda_backend.cu: the CUDA implementation of the backend vtable (eng_backend.h), op for op
 * with the CPU reference (eng_ops.h): f32 activations, bf16 weights (norm weights bf16 or f32),
 * KV pools f32 or bf16, everything on one stream. Entries validate dtypes and shapes (-EINVAL /
 * -EOPNOTSUPP) and call the raw launchers of eng_cuda_kern.cuh.
 *
 * Scratch (cuBLAS conversion buffer, attention partials, MoE bookkeeping) grows on demand, after a
 * stream sync; the model's reserve pass sizes it before the first real step. The fast path with
 * bf16 activations and CUDA graphs is eng_cuda_model.cu; this file is the parity path.
 * A sticky CUDA error makes every later call return -EIO (eng_cuda_error_is_sticky()). */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "eng_backend.h"
}
#include "eng_cuda.h"
#include "eng_cuda_kern.cuh"
#include "eng_cuda_attn_tc.cuh"

struct cuda_be {
    int device;
    cudaStream_t s;
    cublasHandle_t blas;
    void *blas_ws;
    ek_ctx kc;
    void *conv;          size_t conv_bytes;
    float *partial;      size_t partial_bytes;
    int *cnt;            size_t cnt_bytes; /* split-attention counters, kept zero */
    void *moe;           size_t moe_bytes;
    float *inv_freq;     int inv_hd; float inv_theta;
    int moe_mode;
    int attn_mode;       /* 0 generic split kernels; tensor-core kernels where supported:
                            1 the decode kernel, 2 the prefill kernel (test hook) */
    int32_t *tiles;      size_t tiles_bytes; /* prefill tiles of attn_mode 2 */
};

static cuda_be *s_be(eng_backend_t *b) { return (cuda_be *)b->ctx; }

static int s_fail(int r) {
    return r;
}

#define BCHECK(expr)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            eng_cuda_note_error(__FILE__, __LINE__, cudaGetErrorString(e_), (int)e_);              \
            return s_fail(eng_cuda_errno(e_));                                                     \
        }                                                                                          \
    } while (0)

static int64_t s_nelem(const eng_tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++)
        n *= t->shape[i];
    return n;
}
static int64_t s_cols(const eng_tensor_t *t) { return t->shape[t->n_dims - 1]; }
static int64_t s_rows(const eng_tensor_t *t) { return s_nelem(t) / (s_cols(t) ? s_cols(t) : 1); }
static size_t s_dsize(eng_dtype_t dt) {
    switch (dt) {
    case ENG_DTYPE_F32: case ENG_DTYPE_I32: return 4;
    case ENG_DTYPE_BF16: case ENG_DTYPE_F16: return 2;
    default: return 0;
    }
}
static bool s_ok(const eng_tensor_t *t, eng_dtype_t dt) {
    return t && t->data && t->dtype == dt && t->n_dims >= 1 && t->n_dims <= ENG_MAX_DIMS;
}

/* Grows a scratch buffer to at least `need` bytes (syncs first: it may be in use). */
static int s_grow(cuda_be *c, void **p, size_t *have, size_t need) {
    if (*have >= need)
        return 0;
    BCHECK(cudaStreamSynchronize(c->s));
    if (*p)
        cudaFree(*p);
    *p = nullptr;
    *have = 0;
    BCHECK(cudaMalloc(p, need));
    *have = need;
    return 0;
}

/* --- memory ------------------------------------------------------------------------------- */

static void s_destroy(eng_backend_t *b) {
    cuda_be *c = s_be(b);
    if (c) {
        cudaStreamSynchronize(c->s);
        cudaFree(c->conv);
        cudaFree(c->partial);
        cudaFree(c->cnt);
        cudaFree(c->tiles);
        cudaFree(c->moe);
        cudaFree(c->inv_freq);
        cudaFree(c->blas_ws);
        if (c->blas)
            cublasDestroy(c->blas);
        if (c->s)
            cudaStreamDestroy(c->s);
        free(c);
    }
    free(b);
}

static bool s_supports(const eng_backend_t *b, enum eng_op op, eng_dtype_t dt) {
    switch (op) {
    case ENG_OP_MATMUL: case ENG_OP_EMBED: case ENG_OP_MOE:
        return dt == ENG_DTYPE_BF16;
    case ENG_OP_RMSNORM: case ENG_OP_ADD_RMSNORM: case ENG_OP_QK_NORM_ROPE:
        return dt == ENG_DTYPE_BF16 || dt == ENG_DTYPE_F32;
    case ENG_OP_KV_WRITE: case ENG_OP_ATTENTION:
        return dt == ENG_DTYPE_BF16 || dt == ENG_DTYPE_F32;
    default:
        return dt == ENG_DTYPE_F32 || dt == ENG_DTYPE_I32;
    }
}

static int s_alloc(eng_backend_t *b, eng_tensor_t *t) {
    if (!t || t->data)
        return -EINVAL;
    size_t n = (size_t)s_nelem(t) * s_dsize(t->dtype);
    if (!s_dsize(t->dtype))
        return -EINVAL;
    void *p = nullptr;
    cudaError_t e = cudaMalloc(&p, n ? n : 16);
    if (e != cudaSuccess) {
        cudaGetLastError();
        eng_cuda_note_error(__FILE__, __LINE__, cudaGetErrorString(e), (int)e);
        return -ENOMEM;
    }
    t->data = p;
    return 0;
}

static void s_release(eng_backend_t *b, eng_tensor_t *t) {
    if (t && t->data) {
        cudaStreamSynchronize(s_be(b)->s);
        cudaFree(t->data);
        t->data = nullptr;
    }
}

static int s_upload(eng_backend_t *b, eng_tensor_t *dst, size_t off, const void *src, size_t n) {
    if (!dst || !dst->data || !src || off + n > (size_t)s_nelem(dst) * s_dsize(dst->dtype))
        return -EINVAL;
    BCHECK(cudaMemcpyAsync((char *)dst->data + off, src, n, cudaMemcpyHostToDevice, s_be(b)->s));
    BCHECK(cudaStreamSynchronize(s_be(b)->s)); /* src is pageable and may be reused at once */
    return 0;
}

static int s_download(eng_backend_t *b, void *dst, const eng_tensor_t *src, size_t off, size_t n) {
    if (!src || !src->data || !dst || off + n > (size_t)s_nelem(src) * s_dsize(src->dtype))
        return -EINVAL;
    BCHECK(cudaMemcpyAsync(dst, (const char *)src->data + off, n, cudaMemcpyDeviceToHost,
                           s_be(b)->s));
    BCHECK(cudaStreamSynchronize(s_be(b)->s));
    return 0;
}

static int s_zero(eng_backend_t *b, eng_tensor_t *t) {
    if (!t || !t->data)
        return -EINVAL;
    BCHECK(cudaMemsetAsync(t->data, 0, (size_t)s_nelem(t) * s_dsize(t->dtype), s_be(b)->s));
    return 0;
}

static int s_sync(eng_backend_t *b) {
    BCHECK(cudaStreamSynchronize(s_be(b)->s));
    return 0;
}

static int s_mem_info(eng_backend_t *b, uint64_t *ret_free, uint64_t *ret_total) {
    size_t f = 0, t = 0;
    BCHECK(cudaMemGetInfo(&f, &t));
    *ret_free = f;
    *ret_total = t;
    return 0;
}

/* --- ops ---------------------------------------------------------------------------------- */

static int s_embed(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *ids,
                   const eng_tensor_t *w) {
    if (!s_ok(out, ENG_DTYPE_F32) || !s_ok(ids, ENG_DTYPE_I32) || !w || !w->data)
        return -EINVAL;
    if (w->dtype != ENG_DTYPE_BF16)
        return -EOPNOTSUPP;
    int64_t T = s_nelem(ids), D = s_cols(w), V = s_rows(w);
    if (s_rows(out) != T || s_cols(out) != D)
        return -EINVAL;
    return ek_embed<float>(s_be(b)->s, (float *)out->data, (const int32_t *)ids->data,
                           (const bf16 *)w->data, (int)T, (int)D, (int)V);
}

static int s_norm(eng_backend_t *b, eng_tensor_t *out, eng_tensor_t *res, const eng_tensor_t *x,
                  const eng_tensor_t *w, float eps) {
    if (!s_ok(out, ENG_DTYPE_F32) || !s_ok(x, ENG_DTYPE_F32) || !w || !w->data)
        return -EINVAL;
    int64_t D = s_cols(x), rows = s_rows(x);
    if (s_nelem(w) != D || s_nelem(out) != s_nelem(x) || (res && s_nelem(res) != s_nelem(x)))
        return -EINVAL;
    if (res && !s_ok(res, ENG_DTYPE_F32))
        return -EINVAL;
    float *rp = res ? (float *)res->data : nullptr;
    if (w->dtype == ENG_DTYPE_BF16)
        return ek_add_rmsnorm<float, bf16>(s_be(b)->s, (float *)out->data, rp,
                                           (const float *)x->data, (const bf16 *)w->data,
                                           (int)rows, (int)D, eps);
    if (w->dtype == ENG_DTYPE_F32)
        return ek_add_rmsnorm<float, float>(s_be(b)->s, (float *)out->data, rp,
                                            (const float *)x->data, (const float *)w->data,
                                            (int)rows, (int)D, eps);
    return -EOPNOTSUPP;
}

static int s_rmsnorm(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                     const eng_tensor_t *w, const struct eng_rmsnorm_params *p) {
    return s_norm(b, out, nullptr, x, w, p ? p->eps : 1e-6f);
}

static int s_add_rmsnorm(eng_backend_t *b, eng_tensor_t *out, eng_tensor_t *residual,
                         const eng_tensor_t *x, const eng_tensor_t *w,
                         const struct eng_rmsnorm_params *p) {
    if (!residual)
        return -EINVAL;
    return s_norm(b, out, residual, x, w, p ? p->eps : 1e-6f);
}

static int s_matmul(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                    const eng_tensor_t *w) {
    if (!s_ok(out, ENG_DTYPE_F32) || !s_ok(x, ENG_DTYPE_F32) || !w || !w->data)
        return -EINVAL;
    if (w->dtype != ENG_DTYPE_BF16)
        return -EOPNOTSUPP;
    int64_t T = s_rows(x), K = s_cols(x), N = s_rows(w);
    if (s_cols(w) != K || s_rows(out) != T || s_cols(out) != N)
        return -EINVAL;
    cuda_be *c = s_be(b);
    if (T > c->kc.gemv_max_rows) {
        int r = s_grow(c, &c->conv, &c->conv_bytes, (size_t)T * K * 2);
        if (r < 0)
            return r;
        c->kc.conv = c->conv;
        c->kc.conv_bytes = c->conv_bytes;
    }
    return ek_matmul<float, float>(&c->kc, (float *)out->data, (const float *)x->data,
                                   (const bf16 *)w->data, (int)T, (int)N, (int)K);
}

static int s_qk_norm_rope(eng_backend_t *b, eng_tensor_t *q, eng_tensor_t *k,
                          const eng_tensor_t *qn, const eng_tensor_t *kn,
                          const eng_tensor_t *pos, const struct eng_rope_params *p) {
    if (!p || !s_ok(q, ENG_DTYPE_F32) || !s_ok(k, ENG_DTYPE_F32) || !s_ok(pos, ENG_DTYPE_I32) ||
        !qn || !kn || !qn->data || !kn->data || qn->dtype != kn->dtype)
        return -EINVAL;
    int hd = p->head_dim, Hq = p->n_heads, Hk = p->n_kv_heads;
    if (hd <= 0 || hd % 2 || hd > 256 || Hq <= 0 || Hk <= 0)
        return -EINVAL;
    int64_t T = s_rows(q);
    if (s_cols(q) != (int64_t)Hq * hd || s_cols(k) != (int64_t)Hk * hd || s_rows(k) != T ||
        s_nelem(pos) != 3 * T || s_nelem(qn) != hd || s_nelem(kn) != hd)
        return -EINVAL;
    cuda_be *c = s_be(b);
    if (!c->inv_freq || c->inv_hd != hd || c->inv_theta != p->theta) {
        std::vector<float> inv(hd / 2);
        for (int j = 0; j < hd / 2; j++)
            inv[j] = 1.0f / powf(p->theta, (float)(2 * j) / (float)hd);
        BCHECK(cudaStreamSynchronize(c->s));
        cudaFree(c->inv_freq);
        c->inv_freq = nullptr;
        BCHECK(cudaMalloc(&c->inv_freq, 256 * sizeof(float)));
        BCHECK(cudaMemcpy(c->inv_freq, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
        c->inv_hd = hd;
        c->inv_theta = p->theta;
    }
    int s1 = p->mrope_section[1], s2 = p->mrope_section[2];
    if (qn->dtype == ENG_DTYPE_BF16)
        return ek_qk_norm_rope<float, bf16, float>(
            c->s, (float *)q->data, Hq * hd, (float *)k->data, Hk * hd, (const bf16 *)qn->data,
            (const bf16 *)kn->data, (const int32_t *)pos->data, c->inv_freq, (int)T, Hq, Hk, hd,
            p->eps, s1, s2, nullptr, nullptr, nullptr, 0, nullptr);
    if (qn->dtype == ENG_DTYPE_F32)
        return ek_qk_norm_rope<float, float, float>(
            c->s, (float *)q->data, Hq * hd, (float *)k->data, Hk * hd, (const float *)qn->data,
            (const float *)kn->data, (const int32_t *)pos->data, c->inv_freq, (int)T, Hq, Hk, hd,
            p->eps, s1, s2, nullptr, nullptr, nullptr, 0, nullptr);
    return -EOPNOTSUPP;
}

static int s_kv_write(eng_backend_t *b, eng_tensor_t *kp, eng_tensor_t *vp, const eng_tensor_t *k,
                      const eng_tensor_t *v, const eng_tensor_t *slots) {
    if (!kp || !vp || !kp->data || !vp->data || kp->dtype != vp->dtype ||
        !s_ok(k, ENG_DTYPE_F32) || !s_ok(v, ENG_DTYPE_F32) || !s_ok(slots, ENG_DTYPE_I32))
        return -EINVAL;
    int64_t T = s_rows(k), row = s_cols(k);
    if (s_cols(kp) != row || s_nelem(v) != s_nelem(k) || s_nelem(slots) != T ||
        s_nelem(kp) != s_nelem(vp))
        return -EINVAL;
    cudaStream_t s = s_be(b)->s;
    if (kp->dtype == ENG_DTYPE_F32)
        return ek_kv_write<float, float>(s, (float *)kp->data, (float *)vp->data,
                                         (const float *)k->data, (const float *)v->data,
                                         (const int32_t *)slots->data, (int)T, (int)row);
    if (kp->dtype == ENG_DTYPE_BF16)
        return ek_kv_write<float, bf16>(s, (bf16 *)kp->data, (bf16 *)vp->data,
                                        (const float *)k->data, (const float *)v->data,
                                        (const int32_t *)slots->data, (int)T, (int)row);
    return -EOPNOTSUPP;
}

/* attn_mode 2 (test hook, synchronous): runs of consecutive positions of one sequence become
 * <= 64-token tiles (downloaded positions), then the tensor-core prefill kernel. */
static int s_attention_prefill_tc(cuda_be *c, eng_tensor_t *out, const eng_tensor_t *q,
                                  const eng_tensor_t *kp, const eng_tensor_t *vp,
                                  const struct eng_attn_meta *mt,
                                  const struct eng_attn_params *p, int T) {
    std::vector<int32_t> ts(T), tp(T), tl;
    BCHECK(cudaMemcpyAsync(ts.data(), mt->tok_seq->data, (size_t)T * 4, cudaMemcpyDeviceToHost,
                           c->s));
    BCHECK(cudaMemcpyAsync(tp.data(), mt->tok_pos->data, (size_t)T * 4, cudaMemcpyDeviceToHost,
                           c->s));
    BCHECK(cudaStreamSynchronize(c->s));
    for (int t = 0; t < T; t++) {
        size_t n = tl.size();
        if (n > 0 && tl[n - 2] < 64 && tl[n - 1] == ts[t] && tp[t] == tp[t - 1] + 1)
            tl[n - 2]++;
        else
            tl.insert(tl.end(), {t, 1, ts[t]});
    }
    int r = s_grow(c, (void **)&c->tiles, &c->tiles_bytes, tl.size() * 4);
    if (r < 0)
        return r;
    BCHECK(cudaMemcpyAsync(c->tiles, tl.data(), tl.size() * 4, cudaMemcpyHostToDevice, c->s));
    r = ek_attention_prefill_tc<float, float>(
        c->s, (float *)out->data, (const float *)q->data, (const bf16 *)kp->data,
        (const bf16 *)vp->data, (const int32_t *)mt->tok_pos->data,
        (const int32_t *)mt->block_tables->data, c->tiles, (int)(tl.size() / 3), p->n_heads,
        p->n_kv_heads, p->head_dim, mt->max_blocks, mt->block_size, p->scale,
        p->n_heads * p->head_dim);
    if (r < 0)
        return r;
    BCHECK(cudaStreamSynchronize(c->s)); /* tl is freed on return */
    return 0;
}

static int s_attention(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *q,
                       const eng_tensor_t *kp, const eng_tensor_t *vp,
                       const struct eng_attn_meta *mt, const struct eng_attn_params *p) {
    if (!mt || !p || !s_ok(out, ENG_DTYPE_F32) || !s_ok(q, ENG_DTYPE_F32) || !kp || !vp ||
        !kp->data || !vp->data || kp->dtype != vp->dtype || !mt->tok_seq || !mt->tok_pos ||
        !mt->block_tables)
        return -EINVAL;
    int hd = p->head_dim, Hq = p->n_heads, Hk = p->n_kv_heads;
    if (hd <= 0 || hd > 256 || Hq <= 0 || Hk <= 0 || Hq % Hk || mt->block_size <= 0 ||
        mt->max_blocks <= 0)
        return -EINVAL;
    int64_t T = s_rows(q);
    if (s_cols(q) != (int64_t)Hq * hd || s_nelem(out) != s_nelem(q) ||
        s_cols(kp) != (int64_t)Hk * hd || s_nelem(mt->tok_seq) != T || s_nelem(mt->tok_pos) != T)
        return -EINVAL;
    cuda_be *c = s_be(b);
    const bool tc = c->attn_mode != 0 && kp->dtype == ENG_DTYPE_BF16 &&
                    ek_attention_tc_supported(Hq, Hk, hd);
    if (tc && c->attn_mode == 2)
        return s_attention_prefill_tc(c, out, q, kp, vp, mt, p, (int)T);
    int splits = (mt->max_kv_len + 63) / 64;
    int cap = T <= 4 ? 32 : (T <= 64 ? 16 : 8);
    splits = splits < 1 ? 1 : (splits > cap ? cap : splits);
    if (tc)
        splits = ek_attention_tc_splits((int)T, Hk, mt->max_kv_len, 32, 1 << 30);
    if (splits > 1) {
        int r = s_grow(c, (void **)&c->partial, &c->partial_bytes,
                       (size_t)T * Hq * splits * (hd + 2) * 4);
        if (r < 0)
            return r;
        size_t cb = (size_t)T * Hq * 4;
        if (c->cnt_bytes < cb) {
            r = s_grow(c, (void **)&c->cnt, &c->cnt_bytes, cb);
            if (r < 0)
                return r;
            BCHECK(cudaMemsetAsync(c->cnt, 0, c->cnt_bytes, c->s));
        }
    }
    const int32_t *ts = (const int32_t *)mt->tok_seq->data, *tp = (const int32_t *)mt->tok_pos->data,
                  *bt = (const int32_t *)mt->block_tables->data;
    if (kp->dtype == ENG_DTYPE_F32)
        return ek_attention<float, float, float>(c->s, (float *)out->data, (const float *)q->data,
                                                 (const float *)kp->data, (const float *)vp->data,
                                                 ts, tp, bt, (int)T, Hq, Hk, hd, mt->max_blocks,
                                                 mt->block_size, p->scale, splits, c->partial,
                                                 Hq * hd, c->cnt);
    if (tc)
        return ek_attention_tc<float, float>(c->s, (float *)out->data, (const float *)q->data,
                                             (const bf16 *)kp->data, (const bf16 *)vp->data, ts,
                                             tp, bt, (int)T, Hq, Hk, hd, mt->max_blocks,
                                             mt->block_size, p->scale, splits, c->partial,
                                             Hq * hd, c->cnt);
    if (kp->dtype == ENG_DTYPE_BF16)
        return ek_attention<float, bf16, float>(c->s, (float *)out->data, (const float *)q->data,
                                                (const bf16 *)kp->data, (const bf16 *)vp->data, ts,
                                                tp, bt, (int)T, Hq, Hk, hd, mt->max_blocks,
                                                mt->block_size, p->scale, splits, c->partial,
                                                Hq * hd, c->cnt);
    return -EOPNOTSUPP;
}

static int s_moe(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                 const struct eng_moe_weights *w, const struct eng_moe_params *p) {
    if (!w || !p || !s_ok(out, ENG_DTYPE_F32) || !s_ok(x, ENG_DTYPE_F32) || !w->router ||
        !w->gate || !w->up || !w->down)
        return -EINVAL;
    const eng_tensor_t *ts[4] = {w->router, w->gate, w->up, w->down};
    for (const eng_tensor_t *t : ts) {
        if (!t->data)
            return -EINVAL;
        if (t->dtype != ENG_DTYPE_BF16)
            return -EOPNOTSUPP;
    }
    int64_t T = s_rows(x), D = s_cols(x), E = p->n_experts, K = p->top_k;
    int64_t I = s_nelem(w->gate) / (E ? E : 1) / (D ? D : 1);
    if (E <= 0 || E > 512 || K <= 0 || K > E || K > 32 || s_nelem(w->router) != E * D ||
        s_nelem(w->gate) != E * I * D || s_nelem(w->up) != E * I * D ||
        s_nelem(w->down) != E * D * I || s_nelem(out) != T * D || I <= 0)
        return -EINVAL;
    cuda_be *c = s_be(b);
    int r = s_grow(c, &c->moe, &c->moe_bytes, ek_moe_scratch_bytes((int)T, (int)D, (int)I, (int)E, (int)K));
    if (r < 0)
        return r;
    if (T > c->kc.gemv_max_rows) {
        r = s_grow(c, &c->conv, &c->conv_bytes, (size_t)T * D * 2);
        if (r < 0)
            return r;
        c->kc.conv = c->conv;
        c->kc.conv_bytes = c->conv_bytes;
    }
    ek_moe_scratch ms;
    ek_moe_scratch_carve(&ms, c->moe, (int)T, (int)D, (int)I, (int)E, (int)K);
    return ek_moe<float>(&c->kc, (float *)out->data, (const float *)x->data,
                         (const bf16 *)w->router->data, (const bf16 *)w->gate->data,
                         (const bf16 *)w->up->data, (const bf16 *)w->down->data, (int)T, (int)D,
                         (int)I, (int)E, (int)K, p->norm_topk_prob, c->moe_mode, &ms);
}

static int s_silu_mul(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *g,
                      const eng_tensor_t *u) {
    if (!s_ok(out, ENG_DTYPE_F32) || !s_ok(g, ENG_DTYPE_F32) || !s_ok(u, ENG_DTYPE_F32) ||
        s_nelem(g) != s_nelem(u) || s_nelem(out) != s_nelem(g))
        return -EINVAL;
    return ek_silu_mul<float>(s_be(b)->s, (float *)out->data, (const float *)g->data,
                              (const float *)u->data, s_nelem(g));
}

static int s_add(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *y) {
    if (!s_ok(out, ENG_DTYPE_F32) || !s_ok(x, ENG_DTYPE_F32) || !s_ok(y, ENG_DTYPE_F32) ||
        s_nelem(x) != s_nelem(y) || s_nelem(out) != s_nelem(x))
        return -EINVAL;
    return ek_add<float>(s_be(b)->s, (float *)out->data, (const float *)x->data,
                         (const float *)y->data, s_nelem(x));
}

static int s_get_rows(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                      const eng_tensor_t *rows) {
    if (!s_ok(out, ENG_DTYPE_F32) || !s_ok(x, ENG_DTYPE_F32) || !s_ok(rows, ENG_DTYPE_I32))
        return -EINVAL;
    int64_t R = s_nelem(rows), D = s_cols(x);
    if (s_cols(out) != D || s_rows(out) != R)
        return -EINVAL;
    return ek_get_rows<float>(s_be(b)->s, (float *)out->data, (const float *)x->data,
                              (const int32_t *)rows->data, (int)R, (int)D, (int)s_rows(x));
}

static const eng_backend_ops_t s_ops = {
    "cuda",       s_destroy,   s_supports,     s_alloc,    s_release, s_upload,
    s_download,   s_zero,      s_sync,         s_mem_info, s_embed,   s_rmsnorm,
    s_add_rmsnorm, s_matmul,   s_qk_norm_rope, s_kv_write, s_attention, s_moe,
    s_silu_mul,   s_add,       s_get_rows,     nullptr,
};

extern "C" int eng_backend_cuda_new(int device, eng_backend_t **ret) {
    if (!ret)
        return -EINVAL;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || device < 0 || device >= n) {
        cudaGetLastError();
        return -ENODEV;
    }
    BCHECK(cudaSetDevice(device));
    cuda_be *c = (cuda_be *)calloc(1, sizeof *c);
    eng_backend_t *b = (eng_backend_t *)calloc(1, sizeof *b);
    if (!c || !b) {
        free(c);
        free(b);
        return -ENOMEM;
    }
    c->device = device;
    b->ctx = c;
    b->ops_copy = s_ops;
    b->ops = &b->ops_copy;
    snprintf(b->name, sizeof b->name, "cuda%d", device);
    int r = 0;
    if (cudaStreamCreateWithFlags(&c->s, cudaStreamNonBlocking) != cudaSuccess ||
        cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc(&c->blas_ws, 32u << 20) != cudaSuccess ||
        cublasSetWorkspace(c->blas, c->blas_ws, 32u << 20) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(c->blas, c->s) != CUBLAS_STATUS_SUCCESS)
        r = -EIO;
    if (r < 0) {
        s_destroy(b);
        return r;
    }
    c->kc.stream = c->s;
    c->kc.blas = c->blas;
    c->kc.gemv_max_rows = 8;
    *ret = b;
    return 0;
}

extern "C" int eng_backend_cuda_set_moe_mode(struct eng_backend *b, int mode) {
    if (!b || mode < 0 || mode > 2 || strcmp(b->ops->name, "cuda") != 0)
        return -EINVAL;
    s_be(b)->moe_mode = mode;
    return 0;
}

extern "C" int eng_backend_cuda_set_attn_mode(struct eng_backend *b, int mode) {
    if (!b || mode < 0 || mode > 2 || strcmp(b->ops->name, "cuda") != 0)
        return -EINVAL;
    s_be(b)->attn_mode = mode;
    return 0;
}

extern "C" void *eng_backend_cuda_stream(struct eng_backend *b) {
    return b && b->ctx && strcmp(b->ops->name, "cuda") == 0 ? (void *)s_be(b)->s : nullptr;
}
