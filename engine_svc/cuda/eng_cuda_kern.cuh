/* eng_cuda_kern.cuh: the raw-pointer launchers of the CUDA backend (ggml style: static __global__
 * kernel -> launcher taking raw device pointers and a stream -> eng_cuda_* / vtable entry that
 * validates shapes). C++ only; the vtable (eng_cuda_backend.cu) and the fast model runner
 * (eng_cuda_model.cu) are the two callers.
 *
 * Activation type A is float (the vtable's f32 activations) or bf16 (the model runner: PyTorch's
 * rounding points are reproduced with rnd<A>()). Weights are bf16 (norm weights: W = bf16 or f32).
 * Linear weights are (out, in), row-major: y = x·Wᵀ. All launchers return 0 or -errno and never
 * synchronise, so they can be captured into CUDA graphs (except where noted). */
#pragma once

#include "cuda_common.cuh"

/* --- QK-norm + RoPE / M-RoPE row math (device) ---------------------------------------------
 * Shared by k_qk_norm_rope, the fused QKV kernel k_gemv_norm_rope and the decode attention kernel
 * k_attn_dec (OM_CUDA_ATTN_ROPE), so all round at the same points. One warp per row; lane owns
 * d = lane + 32·i (i < 8, d < hd); unrolled so the per-lane values stay in registers.
 * Part 1 (weights and inv_freq only, may run before the PDL wait): */
template <typename W>
__device__ __forceinline__ void ek_qk_pre(float *nwv, float *ifv, const W *nw,
                                          const float *inv_freq, int hd, int lane) {
    const int half = hd / 2;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        nwv[i] = d < hd ? ld(&nw[d]) : 0.0f;
        ifv[i] = d < hd ? inv_freq[d < half ? d : d - half] : 0.0f;
    }
}

/* Part 2 (positions only, may also run before the PDL wait): the rounded cos/sin of lane's
 * dims with M-RoPE sections (rotate_half: dims d and d + hd/2 share frequency j). */
template <typename A>
__device__ __forceinline__ void ek_qk_cossin(float *csv, float *snv, const float *ifv, int pt,
                                             int ph, int pw, int hd, int sec1, int sec2,
                                             int lane) {
    const int half = hd / 2;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        csv[i] = snv[i] = 0.0f;
        if (d < hd) {
            int j = d < half ? d : d - half;
            int pr = pt;
            if (j % 3 == 1 && j < 3 * sec1)
                pr = ph;
            else if (j % 3 == 2 && j < 3 * sec2)
                pr = pw;
            float f = (float)pr * ifv[i];
            csv[i] = rnd<A>(cosf(f));
            snv[i] = rnd<A>(sinf(f));
        }
    }
}

/* Part 3: x[i] (the raw row, d = lane + 32·i; 0 where d >= hd) -> outv[i]: RMSNorm (rounded to
 * A, times the norm weight, rounded) then rotate_half RoPE (products and sum rounded). buf: hd
 * floats of shared memory for this warp (clobbered; the caller may reuse it after a __syncwarp). */
template <typename A>
__device__ __forceinline__ void ek_qk_rot(const float *xv, float *outv, const float *nwv,
                                          const float *csv, const float *snv, int hd, float eps,
                                          float *buf, int lane) {
    const int half = hd / 2;
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        if (d < hd)
            ss += xv[i] * xv[i];
    }
    ss = warp_sum(ss);
    float rs = rsqrtf(ss / (float)hd + eps);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        if (d < hd)
            buf[d] = rnd<A>(rnd<A>(xv[i] * rs) * nwv[i]);
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        outv[i] = 0.0f;
        if (d < hd) {
            float x = buf[d];
            float rot = d < half ? -buf[d + half] : buf[d - half];
            outv[i] = rnd<A>(rnd<A>(x * csv[i]) + rnd<A>(rot * snv[i]));
        }
    }
}

/* Parts 2 + 3. */
template <typename A>
__device__ __forceinline__ void ek_qk_row(const float *xv, float *outv, const float *nwv,
                                          const float *ifv, int pt, int ph, int pw, int hd,
                                          float eps, int sec1, int sec2, float *buf, int lane) {
    float csv[8], snv[8];
    ek_qk_cossin<A>(csv, snv, ifv, pt, ph, pw, hd, sec1, sec2, lane);
    ek_qk_rot<A>(xv, outv, nwv, csv, snv, hd, eps, buf, lane);
}

/* Per-call context: stream, cuBLAS handle (its workspace set by the owner), and a conversion
 * scratch buffer used when f32 activations must be rounded to bf16 for a tensor-core GEMM. */
struct ek_ctx {
    cudaStream_t stream;
    cublasHandle_t blas;
    void *conv;          /* device scratch for x (T,K) as bf16 */
    size_t conv_bytes;   /* its size */
    int gemv_max_rows;   /* T at or below which matmul uses the GEMV kernel (<= 8) */
};

/* out (T,D) = w[ids[t]]; ids outside [0,V) give a zero row. */
template <typename A> int ek_embed(cudaStream_t s, A *out, const int32_t *ids, const bf16 *w, int T,
                                   int D, int V);

/* If resid != NULL: h = rnd(resid + x), resid = h; else h = x. out = rmsnorm(h) * w.
 * rows x D; for A = bf16 the normalised value is rounded before the weight multiply (HF). */
template <typename A, typename W>
int ek_add_rmsnorm(cudaStream_t s, A *out, A *resid, const A *x, const W *w, int rows, int D,
                   float eps);

/* y (T,N) = x (T,K) · wᵀ, w (N,K) bf16. O = float or bf16. Uses the GEMV kernel for
 * T <= c->gemv_max_rows, else cuBLAS (f32 x is rounded to bf16 first, into c->conv). */
template <typename A, typename O>
int ek_matmul(const ek_ctx *c, O *y, const A *x, const bf16 *w, int T, int N, int K);

/* y (T,N) bf16 = x (T,K) · wᵀ for T <= 8 with each row split over ks (2, 4, 8) warps (more warps
 * and loads in flight than ek_matmul's GEMV for small N; another f32 summation order). -EINVAL
 * unless ek_gemv_ks_supported (K % 8 == 0, 16-byte aligned x and w). */
int ek_gemv_ks(cudaStream_t s, bf16 *y, const bf16 *x, const bf16 *w, int T, int N, int K, int ks);
bool ek_gemv_ks_supported(int T, int K, int ks, const void *x, const void *w);

/* QK-norm + RoPE/M-RoPE, in place on q (row stride q_stride elements) and k (k_stride); per
 * (token, head) row of hd values. pos (3,T) i32 rows T,H,W; inv_freq (hd/2) f32.
 * sec1/sec2: M-RoPE H/W section sizes (0 = plain RoPE). If kpool != NULL, the rotated k and the
 * v rows (v, v_stride) are also written to the paged pools (n_slots, Hk·hd) at slots[t]. */
/* tab != NULL: the step's cos/sin table of ek_rope_table (same T, pos, hd, sections) instead of
 * computing them per (token, head) row: the same values, once per step instead of per layer. */
template <typename A, typename W, typename KV>
int ek_qk_norm_rope(cudaStream_t s, A *q, int q_stride, A *k, int k_stride, const W *qn,
                    const W *kn, const int32_t *pos, const float *inv_freq, int T, int Hq, int Hk,
                    int hd, float eps, int sec1, int sec2, KV *kpool, KV *vpool, const A *v,
                    int v_stride, const int32_t *slots, const float *tab = nullptr);

/* The rounded RoPE / M-RoPE cos and sin of every (token, dim) of a step, as ek_qk_cossin<A>
 * computes them: tab (2, T, hd) f32, cos then sin. hd <= 256, even. */
template <typename A>
int ek_rope_table(cudaStream_t s, float *tab, const int32_t *pos, const float *inv_freq, int T,
                  int hd, int sec1, int sec2);

/* k_pool/v_pool (n_slots, Hk·hd)[slots[t]] = k/v (T, Hk·hd). */
template <typename A, typename KV>
int ek_kv_write(cudaStream_t s, KV *kpool, KV *vpool, const A *k, const A *v,
                const int32_t *slots, int T, int row);

/* Paged causal GQA attention, any hd <= 256: token t (sequence tok_seq[t]) attends to positions
 * 0..tok_pos[t]. n_splits > 1 splits the keys over blocks (flash-decoding; n_splits is an upper
 * bound: bf16 KV with hd 128 uses ceil(len / (64·k)) splits of whole 64-key tiles); partial must
 * then hold T·Hq·n_splits·(hd+2) floats. q rows are q_stride elements apart (Hq·hd when dense).
 * counters (T·Hq ints, zero; left zero) != NULL: the last split block of each (token, head) merges
 * the partials itself (no combine launch). */
template <typename Q, typename KV, typename O>
int ek_attention(cudaStream_t s, O *out, const Q *q, const KV *kpool, const KV *vpool,
                 const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *block_tables,
                 int T, int Hq, int Hk, int hd, int max_blocks, int block_size, float scale,
                 int n_splits, float *partial, int q_stride, int *counters);

/* ek_attention for the model runner's decode steps (bf16), where every sequence of the step has
 * exactly one new token (at tok_pos) and all its earlier K/V rows were written by earlier steps:
 * the bf16 head_dim-128 kernel then loads metadata and those rows before its PDL wait, overlapping
 * the preceding kernels (OM_CUDA_ATTN_NOPREWAIT=1: after it). Same arguments and partial/counter
 * requirements as ek_attention. */
int ek_attention_decode(cudaStream_t s, bf16 *out, const bf16 *q, const bf16 *kpool,
                        const bf16 *vpool, const int32_t *tok_seq, const int32_t *tok_pos,
                        const int32_t *block_tables, int T, int Hq, int Hk, int hd,
                        int max_blocks, int block_size, float scale, int n_splits,
                        float *partial, int q_stride, int *counters);

/* ek_attention_decode with k_qk_norm_rope's work folded in (decode steps only; OM_CUDA_ATTN_ROPE):
 * qkv is the raw QKV output (T, q_stride >= (Hq + 2·Hk)·hd: q, k, v rows), left unchanged. Each
 * block normalises and rotates the q rows of its heads itself; the block whose key range holds
 * the new token (position tok_pos[t]) normalises and rotates that token's k, writes k and v to
 * kpool/vpool at slots[t] (the same bf16 values as k_qk_norm_rope) and uses them directly. The
 * new row is never read from the cache in the step. Needs ek_attention_decode_rope_supported
 * (bf16 KV, hd 128, Hq/Hk <= 16, n_splits > 1 with partial and counters); else -EOPNOTSUPP. */
struct ek_dec_rope {
    const bf16 *q_norm, *k_norm; /* (hd) */
    const int32_t *pos3;         /* (3, T) rope positions */
    const float *inv_freq;       /* (hd / 2) */
    const int32_t *slots;        /* (T) KV slot of each token */
    float eps;
    int sec1, sec2;              /* M-RoPE H/W sections (0: plain RoPE) */
    bf16 *kw, *vw;               /* set by the launcher (the pools) */
};
bool ek_attention_decode_rope_supported(int Hq, int Hk, int hd, int n_splits,
                                        const float *partial, const int *counters);
int ek_attention_decode_rope(cudaStream_t s, bf16 *out, const bf16 *qkv, bf16 *kpool,
                             bf16 *vpool, const int32_t *tok_seq, const int32_t *tok_pos,
                             const int32_t *block_tables, int T, int Hq, int Hk, int hd,
                             int max_blocks, int block_size, float scale, int n_splits,
                             float *partial, int q_stride, int *counters,
                             const ek_dec_rope *rope);

/* Tiled (flash-style) causal prefill attention on tensor cores, bf16, hd = 128 or 64 or 16·k<=128.
 * tiles (n_tiles, 3) i32: first token, token count (<= 64), sequence; the tile's tokens are
 * consecutive tokens of one sequence. */
int ek_attention_prefill(cudaStream_t s, bf16 *out, const bf16 *q, const bf16 *kpool,
                         const bf16 *vpool, const int32_t *tok_pos, const int32_t *block_tables,
                         const int32_t *tiles, int n_tiles, int Hq, int Hk, int hd,
                         int max_blocks, int block_size, float scale, int q_stride);
bool ek_attention_prefill_supported(int hd);

/* MoE scratch (device), sized for up to max_T tokens by ek_moe_scratch_bytes(). */
struct ek_moe_scratch {
    float *logits;      /* (T,E) router logits */
    int32_t *ids;       /* (T,K) chosen experts */
    float *wts;         /* (T,K) routing weights */
    void *h;            /* (T·K, I) activations after SwiGLU (A or bf16) */
    int32_t *counts;    /* (E) assignments per expert */
    int32_t *offsets;   /* (E+1) */
    int32_t *cursor;    /* (E) */
    int32_t *tiles;     /* (max_tiles, 2) expert, row offset */
    int32_t *n_tiles;   /* (1) */
    int32_t *pos;       /* (T·K) row of each assignment in expert order */
    bf16 *xp;           /* (T·K, D) permuted inputs */
    bf16 *y;            /* (T·K, D) expert outputs */
};
size_t ek_moe_scratch_bytes(int max_T, int D, int I, int E, int K);
void ek_moe_scratch_carve(ek_moe_scratch *m, void *base, int max_T, int D, int I, int E, int K);

enum ek_moe_mode { EK_MOE_AUTO = 0, EK_MOE_GEMV = 1, EK_MOE_GROUPED = 2 };

/* out (T,D) = Σ_k w_k · down_e(silu(gate_e(x)) · up_e(x)) over the top-K experts of
 * softmax(x·routerᵀ). router (E,D), gate/up (E,I,D), down (E,D,I), bf16. AUTO: the fused GEMV
 * path (reads only the routed experts' rows) for T·K <= 64, the grouped tensor-core path
 * otherwise (when D and I are multiples of 64; else GEMV). Zero-size expert groups are normal.
 * Expert range (tensor parallel, expert mode): gate/up/down hold experts [e0, e0+ne) only
 * (ne = 0: all E); the router is global; out sums the local experts' weighted outputs (zero for
 * a token routed to none of them). O = A, or float (unrounded sum, for an f32 all-reduce). */
template <typename A, typename O = A>
int ek_moe(const ek_ctx *c, O *out, const A *x, const bf16 *router, const bf16 *gate,
           const bf16 *up, const bf16 *down, int T, int D, int I, int E, int K, bool norm_topk,
           int mode, const ek_moe_scratch *m, int e0 = 0, int ne = 0);

/* out (T,I) = silu(gate) * up. */
template <typename A>
int ek_silu_mul(cudaStream_t s, A *out, const A *gate, const A *up, int64_t n);
/* out = x + y. */
template <typename A> int ek_add(cudaStream_t s, A *out, const A *x, const A *y, int64_t n);
/* out (R,D) = x[rows[r]]. */
template <typename A>
int ek_get_rows(cudaStream_t s, A *out, const A *x, const int32_t *rows, int R, int D, int n_rows_x);
/* ids (R) = argmax of each row of logits (R,V), lowest id on ties, NaN never wins. With scratch
 * pv/pi (64·32 each) and R <= 64, each row is split over 32 blocks. */
int ek_argmax(cudaStream_t s, int32_t *ids, const float *logits, int R, int V, float *pv, int *pi);
/* The decode tail (model runner, OM_CUDA_TAIL, default on; PDL launches through ek_launch):
 * ek_add_rmsnorm_rows: out (R, D) row r = the final add + RMSNorm of row rows[r] of resid + x
 * (zero row when rows[r] is outside [0, n_rows_x)): bit for bit ek_add_rmsnorm<bf16, bf16> +
 * ek_get_rows, one kernel; resid is not updated (nothing reads it after the final norm).
 * ek_lm_head_argmax: logits (R, V) f32 = x (R, K) · wᵀ as ek_matmul's GEMV (the same bits) and
 * ids (R) = ek_argmax of them (same ties and NaN rule), from per-block partials pv/pi (each
 * ek_lm_head_argmax_partials(R, V) per row, row-major) reduced by one more kernel. R <= 8. */
int ek_add_rmsnorm_rows(cudaStream_t s, bf16 *out, const bf16 *resid, const bf16 *x,
                        const bf16 *w, const int32_t *rows, int R, int D, int n_rows_x, float eps);
int ek_lm_head_argmax_partials(int R, int V); /* partials per row; 0: R outside 1..8 */
int ek_lm_head_argmax(cudaStream_t s, float *logits, int32_t *ids, const bf16 *x, const bf16 *w,
                      int R, int V, int K, float *pv, int *pi);
/* ek_lm_head_argmax's lm_head kernel (the same logits and ids either way): by default
 * (OM_CUDA_LMH_PERSIST unset or not "0") the persistent k_gemv_amax_p where the shape allows
 * (K % 8 == 0, K <= 2048, 16-byte aligned x and w): one resident wave of blocks (SM count x
 * resident blocks per SM, OM_CUDA_LMH_BLOCKS=n instead for tuning, at most ceil(V/8)), each
 * writing one partial per token; else k_gemv_amax (8 rows per block, ceil(V/8) partials).
 * ek_lmh_blocks (tests, per host thread): -1 the environment; 0 k_gemv_amax; EK_LMH_OCC the
 * persistent kernel with its resident-wave grid; n > 0 the persistent kernel with n blocks
 * (at most ceil(V/8)). ek_lm_head_argmax_grid: the persistent grid the next call would use
 * (0: k_gemv_amax; < 0: a CUDA error). */
#define EK_LMH_OCC 0x40000000
extern thread_local int ek_lmh_blocks;
int ek_lm_head_argmax_grid(int R, int V, int K, const void *x, const void *w);
/* Fills n bf16 values with uniform(-scale, scale) + offset from a counter hash (dummy weights). */
int ek_fill_random(cudaStream_t s, bf16 *p, size_t n, uint64_t seed, float scale, float offset);
/* out (n) bf16 = round(in (n) f32): the one rounding after an f32 tensor-parallel all-reduce. */
int ek_f32_to_bf16(cudaStream_t s, bf16 *out, const float *in, size_t n);

/* --- fused add + RMSNorm prologue (decode path) ------------------------------------------- */

/* For a block of 256 threads: xs (NT, D) bf16 (shared) = bf16(w * bf16(hn * rsqrt(mean(hn²) +
 * eps))) with hn = bf16(h_in + delta) (delta may be NULL: hn = h_in). If write: h_out = hn and
 * xn_out = xs (each when non-NULL). D % 8 == 0. Ends with __syncthreads(). Every block of a
 * kernel recomputes the (small) norm, so the next GEMV needs no separate norm launch; h_out must
 * not alias h_in (other blocks still read h_in). */
template <int NT>
__device__ __forceinline__ void ek_norm_prologue(bf16 *xs, const bf16 *h_in, const bf16 *delta,
                                                 bf16 *h_out, const bf16 *nw, float eps,
                                                 bf16 *xn_out, int D, bool write) {
    __shared__ float red[NT][8];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    /* this thread's first chunk of the norm weight, loaded together with the h rows (not one
       dependent round trip after the reduction) */
    float w0[8];
    if (tid * 8 < D)
        ld8(nw + tid * 8, w0);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float ss = 0.0f;
        for (int c = tid * 8; c < D; c += 256 * 8) {
            float hf[8];
            ld8(h_in + (int64_t)t * D + c, hf);
            if (delta) {
                float df[8];
                ld8(delta + (int64_t)t * D + c, df);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    hf[i] = rnd<bf16>(hf[i] + df[i]);
            }
            __align__(16) __nv_bfloat162 pk[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                pk[i] = __floats2bfloat162_rn(hf[2 * i], hf[2 * i + 1]);
            *reinterpret_cast<uint4 *>(xs + t * D + c) = *reinterpret_cast<uint4 *>(pk);
            if (write && h_out)
                *reinterpret_cast<uint4 *>(h_out + (int64_t)t * D + c) =
                    *reinterpret_cast<uint4 *>(pk);
#pragma unroll
            for (int i = 0; i < 8; i++)
                ss += hf[i] * hf[i];
        }
        ss = warp_sum(ss);
        if (lane == 0)
            red[t][warp] = ss;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float tot = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++)
            tot += red[t][w];
        float rs = rsqrtf(tot / (float)D + eps);
        for (int c = tid * 8; c < D; c += 256 * 8) {
            float xf[8], wf[8];
            ld8(xs + t * D + c, xf);
            if (c == tid * 8) {
#pragma unroll
                for (int i = 0; i < 8; i++)
                    wf[i] = w0[i];
            } else {
                ld8(nw + c, wf);
            }
            __align__(16) __nv_bfloat162 pk[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                pk[i] = __floats2bfloat162_rn(rnd<bf16>(xf[2 * i] * rs) * wf[2 * i],
                                              rnd<bf16>(xf[2 * i + 1] * rs) * wf[2 * i + 1]);
            *reinterpret_cast<uint4 *>(xs + t * D + c) = *reinterpret_cast<uint4 *>(pk);
            if (write && xn_out)
                *reinterpret_cast<uint4 *>(xn_out + (int64_t)t * D + c) =
                    *reinterpret_cast<uint4 *>(pk);
        }
    }
    __syncthreads();
}

/* acc[t] = Σ_c wr[c] · xs[t·D + c] for one warp (lane 0..31), D % 8 == 0, 16-byte loads: the row
 * dot product of the decode GEMVs that read their activations from shared memory (k_gemv_norm,
 * k_gemv_norm_rope); the caller reduces acc over the warp. */
template <int NT>
__device__ __forceinline__ void ek_dot_row_smem(const bf16 *wr, const bf16 *xs, int D, int lane,
                                                float *acc) {
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
#pragma unroll 4
    for (int c = lane * 8; c < D; c += 256) {
        float wf[8];
        ld8(wr + c, wf);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float xf[8];
            ld8(xs + t * D + c, xf);
#pragma unroll
            for (int i = 0; i < 8; i++)
                acc[t] = fmaf(wf[i], xf[i], acc[t]);
        }
    }
}

/* y (T,N) bf16 = norm(h_in + delta) · wᵀ for T <= 8 (decode): add + RMSNorm fused into the GEMV
 * prologue; block 0 writes the new residual to h_out. Needs D % 8 == 0 and T·D·2 <= 48 KiB. */
int ek_gemv_norm(cudaStream_t s, bf16 *y, const bf16 *w, int T, int N, int D, const bf16 *h_in,
                 const bf16 *delta, bf16 *h_out, const bf16 *nw, float eps);
bool ek_gemv_norm_supported(int T, int D);

/* ek_gemv_norm into qkv (T, (Hq+2·Hk)·hd) with ek_qk_norm_rope (bf16, kpool/vpool set) fused
 * into its epilogue: q and k rows normalised and rotated in place, k and v written to the paged
 * pools at slots[t]; the same rounding points as the two kernels. pos (3,T). counters: Hq + Hk
 * ints, zero, left zero. Needs ek_gemv_norm_rope_supported (hd % 8 == 0, hd <= 256). */
int ek_gemv_norm_rope(cudaStream_t s, bf16 *qkv, const bf16 *w, int T, int D, const bf16 *h_in,
                      const bf16 *delta, bf16 *h_out, const bf16 *nw, float eps, int Hq, int Hk,
                      int hd, const bf16 *qn, const bf16 *kn, const int32_t *pos,
                      const float *inv_freq, int sec1, int sec2, bf16 *kpool, bf16 *vpool,
                      const int32_t *slots, int *counters);
bool ek_gemv_norm_rope_supported(int T, int D, int hd);

/* Decode-path router: add + RMSNorm prologue, router GEMV (f32 logits into m->logits) and, in the
 * last block to finish, softmax + top-k into m->ids / m->wts. Writes the new residual h_out and
 * the normalised x xn_out (for the experts). counter: one int, zero, left zero. T <= 8.
 * topk false (OM_CUDA_ROUTER_LOCAL): the logits only (counter untouched); the experts must then
 * be called with route_local (ek_moe_experts), which routes from the logits. */
struct ek_moe_scratch;
int ek_router_fused(cudaStream_t s, const ek_moe_scratch *m, int *counter, const bf16 *router,
                    int T, int E, int D, int K, bool norm, const bf16 *h_in, const bf16 *delta,
                    bf16 *h_out, const bf16 *nw, float eps, bf16 *xn_out, bool topk = true);
/* The expert half of ek_moe, with m->ids / m->wts already filled (after ek_router_fused);
 * same expert range (e0, ne) and output type O. fused_cnt (EK_MOE_FUSED_CNT ints, zero, left
 * zero) != NULL: on the GEMV path with T <= EK_MOE_FUSED_MAX_T, K <= 8, D % 8 == I % 8 == 0,
 * gate/up and down run as one persistent kernel (k_moe_fused; same rounding); otherwise (or
 * NULL) k_moe_gu + k_moe_down_wk (k_moe_down where that does not apply). */
#define EK_MOE_FUSED_CNT 16
extern thread_local int ek_moe_fused_cap; /* > 0: at most this many k_moe_fused blocks (tests) */
/* The unfused decode down projection (tests; -1: OM_CUDA_MOE_DOWN, default 1): 0 k_moe_down,
 * 1 k_moe_down_wk, 2 k_moe_down_wk with two rows per warp. */
extern thread_local int ek_moe_down_sel;
/* The grouped expert GEMM's tile height (tests; 0: OM_CUDA_MOE_BM, else from the mean rows per
 * expert): 32, 64 or 128 rows. */
extern thread_local int ek_moe_bm_sel;
/* The grouped path's permute / un-permute with 16-byte rows (tests; -1: OM_CUDA_MOE_VEC, default
 * on; 0 off, 1 on). */
extern thread_local int ek_moe_vec_sel;
/* Local routing (route_local): how many k_moe_down_wk blocks run the top-k before the PDL wait
 * (tests; -1: OM_CUDA_ROUTER_LOCAL_EARLY, default one resident wave); the rest read k_moe_gu's
 * ids / wts after it. */
extern thread_local int ek_moe_local_early;
#define EK_MOE_FUSED_MAX_T 8
/* route_local (OM_CUDA_ROUTER_LOCAL) 1 or 2: m->ids / m->wts are not filled; m->logits (T, E) f32
 * are (ek_router_fused with topk false). Where ek_moe_route_local_ok, k_moe_gu and k_moe_down_wk
 * run the router's softmax + top-k (norm_topk: renormalise) themselves, the same function as the
 * router's last block (bit-identical ids / weights; 1: its argmax rounds by redux.sync, same
 * result; 2: the router's shuffles); k_moe_gu also writes m->ids / m->wts. Elsewhere a
 * k_moe_topk launch fills them first. */
template <typename A, typename O = A>
int ek_moe_experts(const ek_ctx *c, O *out, const A *x, const bf16 *gate, const bf16 *up,
                   const bf16 *down, int T, int D, int I, int E, int K, int mode,
                   const ek_moe_scratch *m, int e0 = 0, int ne = 0, int *fused_cnt = nullptr,
                   int route_local = 0, bool norm_topk = false);
/* Whether ek_moe_experts routes locally in k_moe_gu + k_moe_down_wk for this shape (GEMV path,
 * T <= 8, K <= 8, E <= 512, I % 8 == 0, I <= 1024, not k_moe_fused (fused: fused_cnt given and
 * applicable), down projection k_moe_down_wk). */
bool ek_moe_route_local_ok(int T, int D, int I, int E, int K, int mode, bool fused);
