/* eng_cuda_kern.cu: the element-wise, normalisation, RoPE, GEMV/GEMM and argmax kernels of the CUDA
 * backend, each as static __global__ kernel + launcher (declared in eng_cuda_kern.cuh).
 *
 * Not here: attention (eng_cuda_attn.cu), the MoE block (eng_cuda_moe.cu), the vtable
 * (eng_cuda_backend.cu), the model runner (eng_cuda_model.cu).
 * Invariants: no launcher synchronises or allocates; every launch is checked. */
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "eng_cuda_kern.cuh"

/* --- error bookkeeping ------------------------------------------------------------------- */

static char s_last_error[256];

thread_local bool ek_pdl = false;

void eng_cuda_note_error(const char *file, int line, const char *what, int code) {
    snprintf(s_last_error, sizeof s_last_error, "%s:%d: %s (%d)", file, line, what, code);
}

extern "C" const char *eng_cuda_last_error(void) { return s_last_error; }

bool eng_cuda_sticky = false;

int eng_cuda_errno(cudaError_t e) {
    switch (e) {
    case cudaErrorMemoryAllocation: return -ENOMEM;
    case cudaErrorInvalidValue: return -EINVAL;
    case cudaErrorNotSupported: return -EOPNOTSUPP;
    default:
        /* anything off the short recoverable list poisons the context (DESIGN.md) */
        eng_cuda_sticky = true;
        return -EIO;
    }
}

extern "C" bool eng_cuda_error_is_sticky(void) { return eng_cuda_sticky; }

/* --- embed -------------------------------------------------------------------------------- */

/* The step's first kernel. Launched through ek_launch (PDL in the model runner's decode steps,
 * unless OM_CUDA_EMBED_PDL=0): it waits (a no-op without a PDL predecessor, as the first kernel
 * of a graph) and then at once lets layer 0's QKV GEMV start its pre-wait weight loads while the
 * rows are copied (that kernel reads out only after its own wait). */
template <typename A>
__global__ void k_embed(A *out, const int32_t *ids, const bf16 *w, int D, int V) {
    pdl_wait();
    pdl_trigger();
    int t = blockIdx.x;
    int id = ids[t];
    bool ok = id >= 0 && id < V;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        st(&out[(int64_t)t * D + d], ok ? ld(&w[(int64_t)id * D + d]) : 0.0f);
}

template <typename A>
int ek_embed(cudaStream_t s, A *out, const int32_t *ids, const bf16 *w, int T, int D, int V) {
    if (T == 0)
        return 0;
    static const char *env = getenv("OM_CUDA_EMBED_PDL");
    if (env && !strcmp(env, "0")) { /* the old plain launch (A/B) */
        k_embed<A><<<T, 256, 0, s>>>(out, ids, w, D, V);
        CUDA_LAUNCH_CHECK();
        return 0;
    }
    CUDA_CHECK(ek_launch(k_embed<A>, dim3(T), dim3(256), 0, s, out, ids, w, D, V));
    return 0;
}

/* --- add + rmsnorm ------------------------------------------------------------------------ */

/* GATHER (the decode tail, ek_add_rmsnorm_rows): block r computes row rows[r] of the plain
 * kernel's output into out row r (a zero row when rows[r] is outside [0, n_rows_x)), with the
 * same thread count, element order and rounding, so out equals ek_add_rmsnorm + ek_get_rows bit
 * for bit; resid is read, never written (rows may repeat). PDL: waits before reading resid/x. */
template <typename A, typename W, bool GATHER>
__global__ void k_add_rmsnorm(A *out, A *resid, const A *x, const W *w, int D, float eps,
                              const int32_t *rows, int n_rows_x) {
    int64_t row = blockIdx.x;
    int64_t orow = blockIdx.x;
    if (GATHER) {
        const int src = rows[blockIdx.x]; /* step metadata: uploaded before the step's first kernel */
        pdl_wait();
        pdl_trigger();
        if (src < 0 || src >= n_rows_x) {
            for (int d = threadIdx.x; d < D; d += blockDim.x)
                out[orow * D + d] = (A)0.0f;
            return;
        }
        row = src;
    }
    const A *xr = x + row * D;
    A *rr = resid ? resid + row * D : nullptr;
    float ss = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float h = ld(&xr[d]);
        if (rr) {
            h = rnd<A>(ld(&rr[d]) + h);
            if (!GATHER)
                st(&rr[d], h);
        }
        ss += h * h;
    }
    __shared__ float red[32];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
        v = warp_sum(v);
        if (threadIdx.x == 0)
            red[0] = v;
    }
    __syncthreads();
    float rs = rsqrtf(red[0] / (float)D + eps);
    const A *hr = rr ? rr : xr;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        /* GATHER: resid was not updated; h is recomputed (the same rounded sum) */
        float h = GATHER && rr ? rnd<A>(ld(&rr[d]) + ld(&xr[d])) : ld(&hr[d]);
        float y = rnd<A>(h * rs);
        st(&out[orow * D + d], y * ld(&w[d]));
    }
}

/* threads per row of k_add_rmsnorm: shared by both launchers (the reduction order depends on it) */
static int s_norm_threads(int D) {
    int th = D >= 1024 ? 1024 : ((D + 31) / 32) * 32;
    if (th > 256 && D <= 2048)
        th = 256;
    return th;
}

template <typename A, typename W>
int ek_add_rmsnorm(cudaStream_t s, A *out, A *resid, const A *x, const W *w, int rows, int D,
                   float eps) {
    if (rows == 0)
        return 0;
    k_add_rmsnorm<A, W, false><<<rows, s_norm_threads(D), 0, s>>>(out, resid, x, w, D, eps,
                                                                  nullptr, 0);
    CUDA_LAUNCH_CHECK();
    return 0;
}

int ek_add_rmsnorm_rows(cudaStream_t s, bf16 *out, const bf16 *resid, const bf16 *x,
                        const bf16 *w, const int32_t *rows, int R, int D, int n_rows_x,
                        float eps) {
    if (R == 0)
        return 0;
    CUDA_CHECK(ek_launch(k_add_rmsnorm<bf16, bf16, true>, dim3(R), dim3(s_norm_threads(D)), 0, s,
                         out, (bf16 *)resid, x, w, D, eps, rows, n_rows_x));
    return 0;
}

/* --- GEMV (small T) and cuBLAS GEMM ------------------------------------------------------- */

/* acc[t] = sum over k of w[k]·x[t][k] for one weight row wr, one warp (lane = 0..31), in
 * k_gemv's f32 order (per lane: chunks lane·8 + 256·i, fmaf per element; the caller sums the
 * lanes with warp_sum). Shared by k_gemv and k_gemv_amax so their logits are the same bits. */
template <int NT, typename A, bool VEC>
__device__ __forceinline__ void s_gemv_dot(float (&acc)[NT], const bf16 *wr, const A *x, int K,
                                           int lane) {
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    if (VEC) {
#pragma unroll 8
        for (int c = lane * 8; c < K; c += 256) {
            float wf[8];
            ld8(wr + c, wf);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float xf[8];
                ld8(x + (int64_t)t * K + c, xf);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[t] = fmaf(wf[i], xf[i], acc[t]);
            }
        }
    } else {
        for (int c = lane; c < K; c += 32) {
            float wf = ld(&wr[c]);
#pragma unroll
            for (int t = 0; t < NT; t++)
                acc[t] = fmaf(wf, ld(&x[(int64_t)t * K + c]), acc[t]);
        }
    }
}

/* One warp per output row n, all NT tokens at once: the weight row is read once, 16 bytes per
 * lane per step. Vector path needs K % 8 == 0 (checked by the launcher); else scalar. */
template <int NT, typename A, typename O, bool VEC>
__global__ void __launch_bounds__(256) k_gemv(O *y, const A *x, const bf16 *w, int N, int K) {
    int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= N) {
        pdl_trigger();
        return;
    }
    const bf16 *wr = w + (int64_t)n * K;
    l2_prefetch_warp(wr, (size_t)K * 2, lane);
    pdl_wait();
    pdl_trigger();
    float acc[NT];
    s_gemv_dot<NT, A, VEC>(acc, wr, x, K, lane);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0)
            st(&y[(int64_t)t * N + n], v);
    }
}

template <int NT, typename A, typename O>
static int s_gemv(cudaStream_t s, O *y, const A *x, const bf16 *w, int N, int K) {
    bool vec = (K % 8) == 0 && ((uintptr_t)x % 16) == 0 && ((uintptr_t)w % 16) == 0;
    int blocks = (N + 7) / 8;
    if (vec)
        CUDA_CHECK(ek_launch(k_gemv<NT, A, O, true>, dim3(blocks), dim3(256), 0, s, y, x, w, N, K));
    else
        CUDA_CHECK(ek_launch(k_gemv<NT, A, O, false>, dim3(blocks), dim3(256), 0, s, y, x, w, N, K));
    return 0;
}

/* k_gemv with each row split over KS warps of the block (8 / KS rows per block): warp j of a
 * row takes the 16-byte chunks c = (j·32 + lane)·8 + 256·KS·i, the KS warp sums are added in j
 * order through shared memory. KS times the blocks and warps of k_gemv for the same N (o_proj:
 * N = 2048 gives k_gemv 256 blocks, 2 per SM; KS = 4 gives 1024), so more loads are in flight.
 * Not bit-identical to k_gemv (another f32 summation order). Vector path only (K % 8 == 0,
 * 16-byte aligned x and w). */
template <int NT, int KS>
__global__ void __launch_bounds__(256) k_gemv_ks(bf16 *y, const bf16 *x, const bf16 *w, int N, int K) {
    __shared__ float red[8][NT];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * (8 / KS) + warp / KS, j = warp % KS;
    const bool ok = n < N;
    const bf16 *wr = w + (int64_t)(ok ? n : 0) * K;
    if (ok && j == 0)
        l2_prefetch_warp(wr, (size_t)K * 2, lane);
    pdl_wait();
    pdl_trigger();
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    if (ok) {
#pragma unroll 4
        for (int c = (j * 32 + lane) * 8; c < K; c += 256 * KS) {
            float wf[8];
            ld8(wr + c, wf);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float xf[8];
                ld8(x + (int64_t)t * K + c, xf);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[t] = fmaf(wf[i], xf[i], acc[t]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0)
            red[warp][t] = v;
    }
    __syncthreads();
    if (ok && j == 0 && lane < NT) {
        float v = 0.0f;
#pragma unroll
        for (int q = 0; q < KS; q++)
            v += red[warp + q][lane];
        y[(int64_t)lane * N + n] = __float2bfloat16(v);
    }
}

bool ek_gemv_ks_supported(int T, int K, int ks, const void *x, const void *w) {
    return T >= 1 && T <= 8 && K % 8 == 0 && (ks == 2 || ks == 4 || ks == 8) &&
           ((uintptr_t)x % 16) == 0 && ((uintptr_t)w % 16) == 0;
}

int ek_gemv_ks(cudaStream_t s, bf16 *y, const bf16 *x, const bf16 *w, int T, int N, int K,
               int ks) {
    if (!ek_gemv_ks_supported(T, K, ks, x, w))
        return -EINVAL;
    if (N == 0)
        return 0;
    const int rows = 8 / ks, blocks = (N + rows - 1) / rows;
    cudaError_t e = cudaSuccess;
#define KS_CASE(NT_)                                                                               \
    case NT_:                                                                                      \
        e = ks == 2   ? ek_launch(k_gemv_ks<NT_, 2>, dim3(blocks), dim3(256), 0, s, y, x, w, N, K) \
            : ks == 4 ? ek_launch(k_gemv_ks<NT_, 4>, dim3(blocks), dim3(256), 0, s, y, x, w, N, K) \
                      : ek_launch(k_gemv_ks<NT_, 8>, dim3(blocks), dim3(256), 0, s, y, x, w, N, K); \
        break;
    switch (T) {
        KS_CASE(1) KS_CASE(2) KS_CASE(3) KS_CASE(4) KS_CASE(5) KS_CASE(6) KS_CASE(7) KS_CASE(8)
    }
#undef KS_CASE
    CUDA_CHECK(e);
    return 0;
}

__global__ void k_f32_to_bf16(bf16 *out, const float *in, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(in[i]);
}

template <typename O> static cudaDataType s_cuda_type();
template <> cudaDataType s_cuda_type<float>() { return CUDA_R_32F; }
template <> cudaDataType s_cuda_type<bf16>() { return CUDA_R_16BF; }

template <typename A, typename O>
int ek_matmul(const ek_ctx *c, O *y, const A *x, const bf16 *w, int T, int N, int K) {
    if (T == 0 || N == 0)
        return 0;
    if (T <= c->gemv_max_rows && T <= 8) {
        switch (T) {
        case 1: return s_gemv<1>(c->stream, y, x, w, N, K);
        case 2: return s_gemv<2>(c->stream, y, x, w, N, K);
        case 3: return s_gemv<3>(c->stream, y, x, w, N, K);
        case 4: return s_gemv<4>(c->stream, y, x, w, N, K);
        case 5: return s_gemv<5>(c->stream, y, x, w, N, K);
        case 6: return s_gemv<6>(c->stream, y, x, w, N, K);
        case 7: return s_gemv<7>(c->stream, y, x, w, N, K);
        default: return s_gemv<8>(c->stream, y, x, w, N, K);
        }
    }
    const bf16 *xb;
    if (sizeof(A) == 4) {
        size_t need = (size_t)T * K * sizeof(bf16);
        if (!c->conv || c->conv_bytes < need)
            return -ENOMEM;
        int64_t n = (int64_t)T * K;
        int blocks = (int)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
        k_f32_to_bf16<<<blocks, 256, 0, c->stream>>>((bf16 *)c->conv, (const float *)x, n);
        CUDA_LAUNCH_CHECK();
        xb = (const bf16 *)c->conv;
    } else {
        xb = (const bf16 *)x;
    }
    /* Row-major y (T,N) is column-major (N,T) = W (col-major (K,N))ᵀ · x (col-major (K,T)). */
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, T, K, &alpha, w, CUDA_R_16BF, K,
                              xb, CUDA_R_16BF, K, &beta, y, s_cuda_type<O>(), N,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

template <int NT>
__global__ void __launch_bounds__(256)
    k_gemv_norm(bf16 *y, const bf16 *w, int N, int D, const bf16 *h_in, const bf16 *delta,
                bf16 *h_out, const bf16 *nw, float eps) {
    extern __shared__ __align__(16) unsigned char smem_g[];
    bf16 *xs = (bf16 *)smem_g;
    int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    const bf16 *wr = w + (int64_t)(n < N ? n : 0) * D;
    if (n < N)
        l2_prefetch_warp(wr, (size_t)D * 2, lane);
    pdl_wait();
    pdl_trigger();
    ek_norm_prologue<NT>(xs, h_in, delta, h_out, nw, eps, nullptr, D, blockIdx.x == 0);
    if (n >= N)
        return;
    float acc[NT];
    ek_dot_row_smem<NT>(wr, xs, D, lane, acc);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0)
            y[(int64_t)t * N + n] = __float2bfloat16(v);
    }
}

bool ek_gemv_norm_supported(int T, int D) {
    return T >= 1 && T <= 8 && D % 8 == 0 && (size_t)T * D * 2 <= 48 * 1024;
}

int ek_gemv_norm(cudaStream_t s, bf16 *y, const bf16 *w, int T, int N, int D, const bf16 *h_in,
                 const bf16 *delta, bf16 *h_out, const bf16 *nw, float eps) {
    if (!ek_gemv_norm_supported(T, D))
        return -EINVAL;
    size_t sm = (size_t)T * D * 2;
    int blocks = (N + 7) / 8;
    cudaError_t e = cudaSuccess;
#define GN_CASE(NT_)                                                                               \
    case NT_:                                                                                      \
        e = ek_launch(k_gemv_norm<NT_>, dim3(blocks), dim3(256), sm, s, y, w, N, D, h_in, delta,   \
                      h_out, nw, eps);                                                             \
        break;
    switch (T) {
        GN_CASE(1) GN_CASE(2) GN_CASE(3) GN_CASE(4) GN_CASE(5) GN_CASE(6) GN_CASE(7) GN_CASE(8)
    }
#undef GN_CASE
    CUDA_CHECK(e);
    return 0;
}

/* --- QK-norm + RoPE / M-RoPE (+ KV write) ------------------------------------------------- */

/* bf16 load through L2 (rows written by other blocks of the same kernel) */
__device__ __forceinline__ float s_ld_cg(const bf16 *p) { return __bfloat162float(__ldcg(p)); }
__device__ __forceinline__ float s_ld_cg(const float *p) { return __ldcg(p); }

/* The row math (ek_qk_pre / ek_qk_row, eng_cuda_kern.cuh) applied in place on p[0..hd); if kdst:
 * also kdst[d] = result; if vdst: vdst[d] = vsrc[d]. buf: hd floats of shared memory for this warp.
 * CG: p (and vsrc) were written by other blocks of this kernel: load them through L2. */
template <bool CG, typename A, typename KV>
__device__ __forceinline__ void s_qk_apply(A *p, const float *nwv, const float *ifv, int pt,
                                           int ph, int pw, int hd, float eps, int sec1, int sec2,
                                           float *buf, KV *kdst, KV *vdst, const A *vsrc,
                                           int lane, const float *tcs = nullptr,
                                           const float *tsn = nullptr) {
    float xv[8], outv[8], csv[8], snv[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        xv[i] = d < hd ? (CG ? s_ld_cg(&p[d]) : ld(&p[d])) : 0.0f;
    }
    if (tcs) { /* this token's row of the step's table (ek_rope_table): the same values */
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int d = lane + 32 * i;
            csv[i] = d < hd ? tcs[d] : 0.0f;
            snv[i] = d < hd ? tsn[d] : 0.0f;
        }
    } else {
        ek_qk_cossin<A>(csv, snv, ifv, pt, ph, pw, hd, sec1, sec2, lane);
    }
    ek_qk_rot<A>(xv, outv, nwv, csv, snv, hd, eps, buf, lane);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        if (d < hd) {
            st(&p[d], outv[i]);
            if (kdst)
                st(&kdst[d], outv[i]);
            if (vdst)
                st(&vdst[d], CG ? s_ld_cg(&vsrc[d]) : ld(&vsrc[d]));
        }
    }
}

/* One warp per (token, head) row; heads 0..Hq-1 are q, Hq..Hq+Hk-1 are k. The normalised row is
 * staged in shared memory so the rotate_half partner (j + hd/2) is at hand for any hd. */
template <typename A, typename W, typename KV>
__global__ void k_qk_norm_rope(A *q, int q_stride, A *k, int k_stride, const W *qn, const W *kn,
                               const int32_t *pos, const float *inv_freq, int T, int Hq, int Hk,
                               int hd, float eps, int sec1, int sec2, KV *kpool, KV *vpool,
                               const A *v, int v_stride, const int32_t *slots, const float *tab) {
    extern __shared__ float sh[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + warp;
    int nh = Hq + Hk;
    if (row >= (int64_t)T * nh) {
        pdl_wait();
        pdl_trigger();
        return;
    }
    int t = (int)(row / nh), h = (int)(row % nh);
    bool is_q = h < Hq;
    A *p = is_q ? q + (int64_t)t * q_stride + (int64_t)h * hd
                : k + (int64_t)t * k_stride + (int64_t)(h - Hq) * hd;
    const W *nw = is_q ? qn : kn;
    /* before the PDL wait: step metadata (uploaded before the step) and weights only */
    const int pt = pos[t], ph = pos[T + t], pw = pos[2 * T + t];
    float nwv[8], ifv[8];
    ek_qk_pre<W>(nwv, ifv, nw, inv_freq, hd, lane);
    pdl_wait();
    pdl_trigger();
    KV *kd = nullptr, *vd = nullptr;
    const A *vs = nullptr;
    if (kpool && !is_q) {
        int64_t o = ((int64_t)slots[t] * Hk + (h - Hq)) * hd;
        kd = kpool + o;
        vd = vpool + o;
        vs = v + (int64_t)t * v_stride + (int64_t)(h - Hq) * hd;
    }
    s_qk_apply<false, A, KV>(p, nwv, ifv, pt, ph, pw, hd, eps, sec1, sec2, sh + warp * hd, kd, vd,
                             vs, lane, tab ? tab + (int64_t)t * hd : nullptr,
                             tab ? tab + ((int64_t)T + t) * hd : nullptr);
}

template <typename A, typename W, typename KV>
int ek_qk_norm_rope(cudaStream_t s, A *q, int q_stride, A *k, int k_stride, const W *qn,
                    const W *kn, const int32_t *pos, const float *inv_freq, int T, int Hq, int Hk,
                    int hd, float eps, int sec1, int sec2, KV *kpool, KV *vpool, const A *v,
                    int v_stride, const int32_t *slots, const float *tab) {
    if (T == 0)
        return 0;
    if (hd > 256 || hd % 2)
        return -EINVAL;
    int64_t rows = (int64_t)T * (Hq + Hk);
    int wpb = 8;
    int blocks = (int)((rows + wpb - 1) / wpb);
    CUDA_CHECK(ek_launch(k_qk_norm_rope<A, W, KV>, dim3(blocks), dim3(wpb * 32),
                         wpb * hd * sizeof(float), s, q, q_stride, k, k_stride, qn, kn, pos,
                         inv_freq, T, Hq, Hk, hd, eps, sec1, sec2, kpool, vpool, v, v_stride,
                         slots, tab));
    return 0;
}

template <typename A>
__global__ void k_rope_table(float *tab, const int32_t *pos, const float *inv_freq, int T, int hd,
                             int sec1, int sec2) {
    const int64_t n = (int64_t)T * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int t = (int)(i / hd), d = (int)(i % hd), half = hd / 2;
        const int j = d < half ? d : d - half;
        /* ek_qk_cossin's position choice and arithmetic, element for element */
        int pr = pos[t];
        if (j % 3 == 1 && j < 3 * sec1)
            pr = pos[T + t];
        else if (j % 3 == 2 && j < 3 * sec2)
            pr = pos[2 * T + t];
        const float f = (float)pr * inv_freq[j];
        tab[i] = rnd<A>(cosf(f));
        tab[n + i] = rnd<A>(sinf(f));
    }
}

template <typename A>
int ek_rope_table(cudaStream_t s, float *tab, const int32_t *pos, const float *inv_freq, int T,
                  int hd, int sec1, int sec2) {
    if (T == 0)
        return 0;
    if (hd > 256 || hd % 2 || !tab)
        return -EINVAL;
    const int64_t n = (int64_t)T * hd;
    const int blocks = (int)((n + 255) / 256 < 2048 ? (n + 255) / 256 : 2048);
    k_rope_table<A><<<blocks, 256, 0, s>>>(tab, pos, inv_freq, T, hd, sec1, sec2);
    CUDA_LAUNCH_CHECK();
    return 0;
}
template int ek_rope_table<bf16>(cudaStream_t, float *, const int32_t *, const float *, int, int,
                                 int, int);
template int ek_rope_table<float>(cudaStream_t, float *, const int32_t *, const float *, int, int,
                                  int, int);

/* --- QKV GEMV + QK-norm + RoPE + KV write, fused (decode path) ---------------------------- */

/* k_gemv_norm's add + RMSNorm prologue and QKV GEMV (8 rows per block, one per warp, the same
 * code), then: v rows go straight to the paged V pool as well; for q and k heads (hd / 8 blocks
 * each) the last block of the head to finish (a per-head counter, reset by that block) applies
 * k_qk_norm_rope's row math (s_qk_apply) to the head's rows of every token, in place in y, and
 * writes k to the paged K pool. Saves the separate k_qk_norm_rope launch per layer. */
/* min blocks per SM: k_gemv_norm's occupancy (its register counts: 40 for NT = 1, <= 64 else),
 * which the rope tail alone would lower */
template <int NT>
__global__ void __launch_bounds__(256, NT == 1 ? 6 : 4)
    k_gemv_norm_rope(bf16 *y, const bf16 *w, int N, int D, const bf16 *h_in, const bf16 *delta,
                     bf16 *h_out, const bf16 *nw, float eps, int Hq, int Hk, int hd,
                     const bf16 *qn, const bf16 *kn, const int32_t *pos, const float *inv_freq,
                     int sec1, int sec2, bf16 *kpool, bf16 *vpool, const int32_t *slots,
                     int *cnt) {
    extern __shared__ __align__(16) unsigned char smem_g[];
    __shared__ int last;
    bf16 *xs = (bf16 *)smem_g;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = blockIdx.x * 8, n = n0 + warp;
    const int head = n0 / hd; /* all 8 rows of the block lie in this head (hd % 8 == 0) */
    const bool is_v = head >= Hq + Hk;
    const bf16 *wr = w + (int64_t)(n < N ? n : 0) * D;
    if (n < N)
        l2_prefetch_warp(wr, (size_t)D * 2, lane);
    pdl_wait();
    pdl_trigger();
    ek_norm_prologue<NT>(xs, h_in, delta, h_out, nw, eps, nullptr, D, blockIdx.x == 0);
    if (n < N) {
        float acc[NT];
        ek_dot_row_smem<NT>(wr, xs, D, lane, acc);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float v = warp_sum(acc[t]);
            if (lane == 0) {
                y[(int64_t)t * N + n] = __float2bfloat16(v);
                if (is_v)
                    vpool[((int64_t)slots[t] * Hk + (head - Hq - Hk)) * hd + (n - head * hd)] =
                        __float2bfloat16(v);
            }
        }
    }
    if (is_v)
        return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int prev = atomicAdd(&cnt[head], 1);
        last = prev == hd / 8 - 1;
        if (last)
            cnt[head] = 0; /* all hd / 8 blocks of the head have counted: graph-replayable */
    }
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    float *buf = (float *)smem_g; /* xs is done with (the __syncthreads above) */
    const bool is_q = head < Hq;
    /* loaded here, not before the GEMV: held across it they cost registers (occupancy) */
    float nwv[8], ifv[8];
    ek_qk_pre<bf16>(nwv, ifv, is_q ? qn : kn, inv_freq, hd, lane);
    for (int t = warp; t < NT; t += 8) {
        bf16 *p = y + (int64_t)t * N + (int64_t)head * hd;
        bf16 *kd = nullptr;
        if (!is_q)
            kd = kpool + ((int64_t)slots[t] * Hk + (head - Hq)) * hd;
        s_qk_apply<true, bf16, bf16>(p, nwv, ifv, pos[t], pos[NT + t], pos[2 * NT + t], hd, eps,
                                     sec1, sec2, buf + warp * hd, kd, (bf16 *)nullptr,
                                     (const bf16 *)nullptr, lane);
    }
}

bool ek_gemv_norm_rope_supported(int T, int D, int hd) {
    return ek_gemv_norm_supported(T, D) && hd >= 8 && hd <= 256 && hd % 8 == 0;
}

int ek_gemv_norm_rope(cudaStream_t s, bf16 *qkv, const bf16 *w, int T, int D, const bf16 *h_in,
                      const bf16 *delta, bf16 *h_out, const bf16 *nw, float eps, int Hq, int Hk,
                      int hd, const bf16 *qn, const bf16 *kn, const int32_t *pos,
                      const float *inv_freq, int sec1, int sec2, bf16 *kpool, bf16 *vpool,
                      const int32_t *slots, int *counters) {
    if (!ek_gemv_norm_rope_supported(T, D, hd) || Hq <= 0 || Hk <= 0)
        return -EINVAL;
    const int N = (Hq + 2 * Hk) * hd;
    size_t sm = (size_t)T * D * 2;
    if (sm < (size_t)T * hd * 4)
        sm = (size_t)T * hd * 4;
    if (sm > 48 * 1024)
        return -EINVAL;
    const int blocks = N / 8;
    cudaError_t e = cudaSuccess;
#define GR_CASE(NT_)                                                                               \
    case NT_:                                                                                      \
        e = ek_launch(k_gemv_norm_rope<NT_>, dim3(blocks), dim3(256), sm, s, qkv, w, N, D, h_in,   \
                      delta, h_out, nw, eps, Hq, Hk, hd, qn, kn, pos, inv_freq, sec1, sec2, kpool, \
                      vpool, slots, counters);                                                     \
        break;
    switch (T) {
        GR_CASE(1) GR_CASE(2) GR_CASE(3) GR_CASE(4) GR_CASE(5) GR_CASE(6) GR_CASE(7) GR_CASE(8)
    }
#undef GR_CASE
    CUDA_CHECK(e);
    return 0;
}

template <typename A, typename KV>
__global__ void k_kv_write(KV *kpool, KV *vpool, const A *k, const A *v, const int32_t *slots,
                           int row) {
    int t = blockIdx.x;
    int64_t slot = slots[t];
    for (int d = threadIdx.x; d < row; d += blockDim.x) {
        st(&kpool[slot * row + d], ld(&k[(int64_t)t * row + d]));
        st(&vpool[slot * row + d], ld(&v[(int64_t)t * row + d]));
    }
}

template <typename A, typename KV>
int ek_kv_write(cudaStream_t s, KV *kpool, KV *vpool, const A *k, const A *v,
                const int32_t *slots, int T, int row) {
    if (T == 0)
        return 0;
    k_kv_write<A, KV><<<T, 256, 0, s>>>(kpool, vpool, k, v, slots, row);
    CUDA_LAUNCH_CHECK();
    return 0;
}

/* --- element-wise ------------------------------------------------------------------------- */

template <typename A>
__global__ void k_silu_mul(A *out, const A *g, const A *u, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float a = ld(&g[i]);
        float si = rnd<A>(a / (1.0f + expf(-a)));
        st(&out[i], si * ld(&u[i]));
    }
}

template <typename A> int ek_silu_mul(cudaStream_t s, A *out, const A *g, const A *u, int64_t n) {
    if (n == 0)
        return 0;
    int blocks = (int)((n + 255) / 256 < 8192 ? (n + 255) / 256 : 8192);
    k_silu_mul<A><<<blocks, 256, 0, s>>>(out, g, u, n);
    CUDA_LAUNCH_CHECK();
    return 0;
}

template <typename A> __global__ void k_add(A *out, const A *x, const A *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        st(&out[i], ld(&x[i]) + ld(&y[i]));
}

template <typename A> int ek_add(cudaStream_t s, A *out, const A *x, const A *y, int64_t n) {
    if (n == 0)
        return 0;
    int blocks = (int)((n + 255) / 256 < 8192 ? (n + 255) / 256 : 8192);
    k_add<A><<<blocks, 256, 0, s>>>(out, x, y, n);
    CUDA_LAUNCH_CHECK();
    return 0;
}

template <typename A>
__global__ void k_get_rows(A *out, const A *x, const int32_t *rows, int D, int n_rows_x) {
    int r = blockIdx.x;
    int src = rows[r];
    bool ok = src >= 0 && src < n_rows_x;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        out[(int64_t)r * D + d] = ok ? x[(int64_t)src * D + d] : (A)0.0f;
}

template <typename A>
int ek_get_rows(cudaStream_t s, A *out, const A *x, const int32_t *rows, int R, int D,
                int n_rows_x) {
    if (R == 0)
        return 0;
    k_get_rows<A><<<R, 256, 0, s>>>(out, x, rows, D, n_rows_x);
    CUDA_LAUNCH_CHECK();
    return 0;
}

/* --- argmax ------------------------------------------------------------------------------- */

__device__ __forceinline__ void s_amax_merge(float &v, int &i, float v2, int i2) {
    /* NaN never wins; ties go to the lower index. */
    if (v2 > v || (v2 == v && i2 < i) || (v != v && v2 == v2)) {
        v = v2;
        i = i2;
    }
}

/* The block's warps' (best, bi) merged (after each warp has merged its lanes); thread 0 stores
 * the winner to *id, 0 when every value was NaN (no index won). Shared by k_argmax and
 * k_argmax_partials. */
__device__ __forceinline__ void s_amax_block_store(int32_t *id, float best, int bi) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sv[w] = best;
        si[w] = bi;
    }
    __syncthreads();
    if (w == 0) {
        best = lane < (int)(blockDim.x >> 5) ? sv[lane] : -INFINITY;
        bi = lane < (int)(blockDim.x >> 5) ? si[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float v2 = __shfl_xor_sync(0xffffffffu, best, o);
            int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            s_amax_merge(best, bi, v2, i2);
        }
        if (lane == 0)
            *id = bi == 0x7fffffff ? 0 : bi;
    }
}

__global__ void k_argmax(int32_t *ids, const float *logits, int V) {
    const float *r = logits + (int64_t)blockIdx.x * V;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        s_amax_merge(best, bi, r[i], i);
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, best, o);
        int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        s_amax_merge(best, bi, v2, i2);
    }
    s_amax_block_store(ids + blockIdx.x, best, bi);
}

/* Stage 1 of a wide argmax: block b of row r reduces a slice into part[r][b]. */
__global__ void k_argmax_part(float *pv, int *pi, const float *logits, int V, int nb) {
    const float *row = logits + (int64_t)blockIdx.y * V;
    int per = (V + nb - 1) / nb;
    int lo = blockIdx.x * per, hi = min(V, lo + per);
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x)
        s_amax_merge(best, bi, row[i], i);
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, best, o);
        int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        s_amax_merge(best, bi, v2, i2);
    }
    __shared__ float sv[32];
    __shared__ int si[32];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sv[w] = best;
        si[w] = bi;
    }
    __syncthreads();
    if (w == 0) {
        best = lane < (int)(blockDim.x >> 5) ? sv[lane] : -INFINITY;
        bi = lane < (int)(blockDim.x >> 5) ? si[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float v2 = __shfl_xor_sync(0xffffffffu, best, o);
            int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
            s_amax_merge(best, bi, v2, i2);
        }
        if (lane == 0) {
            pv[blockIdx.y * nb + blockIdx.x] = best;
            pi[blockIdx.y * nb + blockIdx.x] = bi;
        }
    }
}

/* Stage 2: one warp per row over the nb partials (nb <= 32). */
__global__ void k_argmax_final(int32_t *ids, const float *pv, const int *pi, int nb) {
    int r = blockIdx.x, lane = threadIdx.x;
    float best = lane < nb ? pv[r * nb + lane] : -INFINITY;
    int bi = lane < nb ? pi[r * nb + lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, best, o);
        int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        s_amax_merge(best, bi, v2, i2);
    }
    if (lane == 0)
        ids[r] = bi == 0x7fffffff ? 0 : bi;
}

int ek_argmax(cudaStream_t s, int32_t *ids, const float *logits, int R, int V, float *pv,
              int *pi) {
    if (R == 0)
        return 0;
    /* small batches: split each row over 32 blocks so the 600 KB row is read by many SMs */
    const int nb = 32;
    if (pv && pi && R <= 64 && V >= 8192) {
        k_argmax_part<<<dim3(nb, R), 256, 0, s>>>(pv, pi, logits, V, nb);
        CUDA_LAUNCH_CHECK();
        k_argmax_final<<<R, 32, 0, s>>>(ids, pv, pi, nb);
        CUDA_LAUNCH_CHECK();
        return 0;
    }
    k_argmax<<<R, 1024, 0, s>>>(ids, logits, V);
    CUDA_LAUNCH_CHECK();
    return 0;
}

/* --- lm_head GEMV with the greedy argmax folded in (decode tail) ------------------------- */

/* The 8 warps' (value, index) per token, sv/si[warp][t], merged after a block barrier into
 * token t's partial pv/pi[t · stride + blockIdx.x]. Shared by k_gemv_amax and k_gemv_amax_p. */
template <int NT>
__device__ __forceinline__ void s_amax_block_partial(const float (&sv)[8][NT], const int (&si)[8][NT],
                                                     float *pv, int *pi, int stride) {
    __syncthreads();
    if (threadIdx.x < NT) {
        const int t = threadIdx.x;
        float best = -INFINITY;
        int bi = 0x7fffffff;
#pragma unroll
        for (int q = 0; q < 8; q++)
            s_amax_merge(best, bi, sv[q][t], si[q][t]);
        pv[(int64_t)t * stride + blockIdx.x] = best;
        pi[(int64_t)t * stride + blockIdx.x] = bi;
    }
}


/* k_gemv (f32 logits, 8 rows per 256-thread block) that also writes, per token t, the block's
 * (largest logit, lowest row on ties, NaN never wins) to pv/pi[t·nbp + block]: the same values
 * the logits hold, merged with s_amax_merge, so the argmax over all partials equals ek_argmax's
 * over the stored row (s_amax_merge is the order-free "largest non-NaN value, then lowest index";
 * (-inf, INT_MAX) is the empty element). */
template <int NT, typename A, bool VEC>
__global__ void __launch_bounds__(256)
    k_gemv_amax(float *y, const A *x, const bf16 *w, int N, int K, float *pv, int *pi, int nbp) {
    __shared__ float sv[8][NT];
    __shared__ int si[8][NT];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * 8 + warp;
    const bool ok = n < N;
    const bf16 *wr = w + (int64_t)(ok ? n : 0) * K;
    if (ok)
        l2_prefetch_warp(wr, (size_t)K * 2, lane);
    pdl_wait();
    pdl_trigger();
    float acc[NT];
    if (ok)
        s_gemv_dot<NT, A, VEC>(acc, wr, x, K, lane);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = ok ? warp_sum(acc[t]) : -INFINITY;
        if (lane == 0) {
            if (ok)
                y[(int64_t)t * N + n] = v;
            sv[warp][t] = v;
            si[warp][t] = ok ? n : 0x7fffffff;
        }
    }
    s_amax_block_partial<NT>(sv, si, pv, pi, nbp);
}

/* The persistent lm_head GEMV (OM_CUDA_LMH_PERSIST, default on): a grid of about one resident
 * wave (SM count x resident blocks per SM, at most ceil(N/8) blocks), warp gw of W = 8·gridDim.x
 * walks rows n = gw, gw + W, ... with the next row's 16-byte weight chunks already in registers
 * (two rows in flight per warp: double buffer wa / wb) while it reduces the current one. Rows 0
 * and 1 of each warp are loaded before the PDL wait (weights are constant; x is read only after
 * it, staged once per block in shared memory). Each row's logit is k_gemv's: per lane the chunks
 * c = lane·8 + 256·i (c < K) in increasing i, fmaf per element in element order, then warp_sum,
 * so y holds the same bits as k_gemv / k_gemv_amax. Each warp keeps a running s_amax_merge
 * (best, lowest row) per token, the block merges its 8 warps and writes ONE partial per token:
 * pv/pi[t·gridDim.x + block]. s_amax_merge is order-free, so k_argmax_partials over gridDim.x
 * partials gives k_gemv_amax's ids. Needs K % 8 == 0, K <= 256·EK_LMH_MAXC, 16-byte aligned
 * x / w, dynamic shared memory NT·K bf16 (checked by the launcher). */
#define EK_LMH_MAXC 8 /* 16-byte chunks per lane per row: K <= 2048 */

__device__ __forceinline__ void s_lmh_load(uint4 (&r)[EK_LMH_MAXC], const bf16 *wr, int K,
                                           int lane) {
#pragma unroll
    for (int i = 0; i < EK_LMH_MAXC; i++) {
        const int c = lane * 8 + 256 * i;
        if (c < K)
            r[i] = ld_nc_na16(wr + c);
    }
}

template <int NT>
__device__ __forceinline__ void s_lmh_row(float *y, int N, int n, const uint4 (&r)[EK_LMH_MAXC],
                                          const bf16 *xs, int K, int lane, float (&best)[NT],
                                          int (&bi)[NT]) {
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
#pragma unroll
    for (int i = 0; i < EK_LMH_MAXC; i++) {
        const int c = lane * 8 + 256 * i; /* s_gemv_dot's chunk order */
        if (c < K) {
            float wf[8];
            bf16x8_f32(r[i], wf);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float xf[8];
                ld8(xs + t * K + c, xf);
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc[t] = fmaf(wf[e], xf[e], acc[t]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float v = warp_sum(acc[t]); /* the same bits on every lane */
        if (lane == 0)
            y[(int64_t)t * N + n] = v;
        s_amax_merge(best[t], bi[t], v, n);
    }
}

template <int NT>
__global__ void __launch_bounds__(256, 2)
    k_gemv_amax_p(float *y, const bf16 *x, const bf16 *w, int N, int K, float *pv, int *pi) {
    extern __shared__ uint4 s_lmh_x[]; /* (NT, K) bf16: x */
    __shared__ float sv[8][NT];
    __shared__ int si[8][NT];
    bf16 *xs = reinterpret_cast<bf16 *>(s_lmh_x);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int W = (int)gridDim.x * 8;
    int n = blockIdx.x * 8 + warp;
    uint4 wa[EK_LMH_MAXC], wb[EK_LMH_MAXC];
#pragma unroll
    for (int i = 0; i < EK_LMH_MAXC; i++)
        wa[i] = wb[i] = make_uint4(0u, 0u, 0u, 0u);
    /* before the wait: weights only (constant) */
    if (n < N)
        s_lmh_load(wa, w + (int64_t)n * K, K, lane);
    if (n + W < N)
        s_lmh_load(wb, w + (int64_t)(n + W) * K, K, lane);
    pdl_wait();
    pdl_trigger();
    for (int i = threadIdx.x * 8; i < NT * K; i += (int)blockDim.x * 8)
        *reinterpret_cast<uint4 *>(xs + i) = *reinterpret_cast<const uint4 *>(x + i);
    __syncthreads();
    float best[NT];
    int bi[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        best[t] = -INFINITY;
        bi[t] = 0x7fffffff;
    }
    /* invariant at the top: wa holds row n, wb row n + W (loaded or in flight) */
    while (n < N) {
        s_lmh_row<NT>(y, N, n, wa, xs, K, lane, best, bi);
        if (n + 2 * W < N)
            s_lmh_load(wa, w + (int64_t)(n + 2 * W) * K, K, lane);
        n += W;
        if (n >= N)
            break;
        s_lmh_row<NT>(y, N, n, wb, xs, K, lane, best, bi);
        if (n + 2 * W < N)
            s_lmh_load(wb, w + (int64_t)(n + 2 * W) * K, K, lane);
        n += W;
    }
    if (lane == 0) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            sv[warp][t] = best[t];
            si[warp][t] = bi[t];
        }
    }
    s_amax_block_partial<NT>(sv, si, pv, pi, gridDim.x);
}

/* One 1024-thread block per row: the argmax over the row's nbp partials (k_argmax's reduction);
 * ids[r] = 0 when every logit of the row is NaN (as ek_argmax). */
__global__ void __launch_bounds__(1024)
    k_argmax_partials(int32_t *ids, const float *pv, const int *pi, int nbp) {
    const float *rv = pv + (int64_t)blockIdx.x * nbp;
    const int *ri = pi + (int64_t)blockIdx.x * nbp;
    pdl_wait();
    pdl_trigger();
    float best = -INFINITY;
    int bi = 0x7fffffff;
    /* four loads in flight per thread before the merges */
    for (int i0 = threadIdx.x; i0 < nbp; i0 += 4 * (int)blockDim.x) {
        float v[4];
        int ix[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int i = i0 + k * (int)blockDim.x;
            v[k] = i < nbp ? rv[i] : -INFINITY;
            ix[k] = i < nbp ? ri[i] : 0x7fffffff;
        }
#pragma unroll
        for (int k = 0; k < 4; k++)
            s_amax_merge(best, bi, v[k], ix[k]);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float v2 = __shfl_xor_sync(0xffffffffu, best, o);
        int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
        s_amax_merge(best, bi, v2, i2);
    }
    s_amax_block_store(ids + blockIdx.x, best, bi);
}

int ek_lm_head_argmax_partials(int R, int V) { return R >= 1 && R <= 8 ? (V + 7) / 8 : 0; }

thread_local int ek_lmh_blocks = -1;

/* Resident k_gemv_amax_p blocks per SM with its largest shared memory (K = 2048), cached per
 * host thread (= per device: TP ranks run one thread each). */
template <int NT> static int s_lmh_per_sm() {
    static thread_local int per_sm = 0;
    if (!per_sm) {
        int ps = 0;
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &ps, k_gemv_amax_p<NT>, 256, (size_t)NT * 256 * EK_LMH_MAXC * 2));
        per_sm = ps < 1 ? 1 : ps;
    }
    return per_sm;
}

/* Grid of k_gemv_amax_p for R tokens and N rows: 0 when the old k_gemv_amax runs (switched off,
 * or the shape does not fit the persistent kernel); else at most ceil(N/8) blocks (so the
 * partials fit ek_lm_head_argmax_partials). Negative: a CUDA error. */
static int s_lmh_grid(int R, int N, int K, const void *x, const void *w) {
    static const char *env = getenv("OM_CUDA_LMH_PERSIST");
    static const char *cap_s = getenv("OM_CUDA_LMH_BLOCKS");
    const bool on = ek_lmh_blocks >= 0 ? ek_lmh_blocks > 0 : !(env && !strcmp(env, "0"));
    if (!on || R < 1 || R > 8 || K <= 0 || K % 8 || K > 256 * EK_LMH_MAXC ||
        ((uintptr_t)x % 16) || ((uintptr_t)w % 16))
        return 0;
    static thread_local int sms = 0;
    if (!sms) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    }
    int per_sm = 0;
    switch (R) {
    case 1: per_sm = s_lmh_per_sm<1>(); break;
    case 2: per_sm = s_lmh_per_sm<2>(); break;
    case 3: per_sm = s_lmh_per_sm<3>(); break;
    case 4: per_sm = s_lmh_per_sm<4>(); break;
    case 5: per_sm = s_lmh_per_sm<5>(); break;
    case 6: per_sm = s_lmh_per_sm<6>(); break;
    case 7: per_sm = s_lmh_per_sm<7>(); break;
    default: per_sm = s_lmh_per_sm<8>(); break;
    }
    if (per_sm < 0)
        return per_sm;
    int g = sms * per_sm;
    /* a fixed grid: the test hook's (ek_lmh_blocks), else OM_CUDA_LMH_BLOCKS=n (tuning) */
    int cap = 0;
    if (ek_lmh_blocks > 0 && ek_lmh_blocks != EK_LMH_OCC)
        cap = ek_lmh_blocks;
    else if (ek_lmh_blocks < 0 && cap_s)
        cap = atoi(cap_s);
    if (cap > 0)
        g = cap;
    const int nbp = (N + 7) / 8;
    return g < nbp ? g : nbp;
}

int ek_lm_head_argmax_grid(int R, int V, int K, const void *x, const void *w) {
    return s_lmh_grid(R, V, K, x, w);
}

int ek_lm_head_argmax(cudaStream_t s, float *logits, int32_t *ids, const bf16 *x, const bf16 *w,
                      int R, int V, int K, float *pv, int *pi) {
    if (R == 0 || V == 0)
        return 0;
    if (R < 0 || R > 8 || V < 0 || K <= 0 || !pv || !pi)
        return -EINVAL;
    const int grid = s_lmh_grid(R, V, K, x, w);
    if (grid < 0)
        return grid;
    cudaError_t e = cudaSuccess;
    int nbp = (V + 7) / 8;
    if (grid > 0) {
        nbp = grid;
        const size_t sm = (size_t)R * K * 2;
#define AMP_CASE(NT_)                                                                              \
    case NT_:                                                                                      \
        e = ek_launch(k_gemv_amax_p<NT_>, dim3(grid), dim3(256), sm, s, logits, x, w, V, K, pv,   \
                      pi);                                                                         \
        break;
        switch (R) {
            AMP_CASE(1) AMP_CASE(2) AMP_CASE(3) AMP_CASE(4) AMP_CASE(5) AMP_CASE(6) AMP_CASE(7)
            AMP_CASE(8)
        }
#undef AMP_CASE
    } else {
        const bool vec = (K % 8) == 0 && ((uintptr_t)x % 16) == 0 && ((uintptr_t)w % 16) == 0;
#define AM_CASE(NT_)                                                                               \
    case NT_:                                                                                      \
        e = vec ? ek_launch(k_gemv_amax<NT_, bf16, true>, dim3(nbp), dim3(256), 0, s, logits, x, w, \
                            V, K, pv, pi, nbp)                                                     \
                : ek_launch(k_gemv_amax<NT_, bf16, false>, dim3(nbp), dim3(256), 0, s, logits, x,  \
                            w, V, K, pv, pi, nbp);                                                 \
        break;
        switch (R) {
            AM_CASE(1) AM_CASE(2) AM_CASE(3) AM_CASE(4) AM_CASE(5) AM_CASE(6) AM_CASE(7) AM_CASE(8)
        }
#undef AM_CASE
    }
    CUDA_CHECK(e);
    CUDA_CHECK(ek_launch(k_argmax_partials, dim3(R), dim3(1024), 0, s, ids, (const float *)pv,
                         (const int *)pi, nbp));
    return 0;
}

/* --- dummy weights ------------------------------------------------------------------------ */

__device__ __forceinline__ uint64_t s_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__global__ void k_fill_random(bf16 *p, size_t n, uint64_t seed, float scale, float offset) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t r = s_mix(seed * 0x100000001b3ull + i);
        float u = (float)(r >> 40) * (1.0f / 16777216.0f); /* [0,1) */
        p[i] = __float2bfloat16(offset + scale * (2.0f * u - 1.0f));
    }
}

int ek_fill_random(cudaStream_t s, bf16 *p, size_t n, uint64_t seed, float scale, float offset) {
    if (n == 0)
        return 0;
    k_fill_random<<<1024, 256, 0, s>>>(p, n, seed, scale, offset);
    CUDA_LAUNCH_CHECK();
    return 0;
}

__global__ void k_f32_to_bf16(bf16 *out, const float *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(in[i]);
}

int ek_f32_to_bf16(cudaStream_t s, bf16 *out, const float *in, size_t n) {
    if (n == 0)
        return 0;
    size_t blocks = (n + 255) / 256;
    k_f32_to_bf16<<<(unsigned)(blocks < 1024 ? blocks : 1024), 256, 0, s>>>(out, in, n);
    CUDA_LAUNCH_CHECK();
    return 0;
}

/* --- explicit instantiations -------------------------------------------------------------- */

#define EK_INST_A(A)                                                                               \
    template int ek_embed<A>(cudaStream_t, A *, const int32_t *, const bf16 *, int, int, int);    \
    template int ek_add_rmsnorm<A, bf16>(cudaStream_t, A *, A *, const A *, const bf16 *, int,    \
                                         int, float);                                             \
    template int ek_add_rmsnorm<A, float>(cudaStream_t, A *, A *, const A *, const float *, int,  \
                                          int, float);                                            \
    template int ek_matmul<A, float>(const ek_ctx *, float *, const A *, const bf16 *, int, int,  \
                                     int);                                                        \
    template int ek_matmul<A, bf16>(const ek_ctx *, bf16 *, const A *, const bf16 *, int, int,    \
                                    int);                                                         \
    template int ek_silu_mul<A>(cudaStream_t, A *, const A *, const A *, int64_t);                \
    template int ek_add<A>(cudaStream_t, A *, const A *, const A *, int64_t);                     \
    template int ek_get_rows<A>(cudaStream_t, A *, const A *, const int32_t *, int, int, int);    \
    template int ek_kv_write<A, float>(cudaStream_t, float *, float *, const A *, const A *,      \
                                       const int32_t *, int, int);                                \
    template int ek_kv_write<A, bf16>(cudaStream_t, bf16 *, bf16 *, const A *, const A *,         \
                                      const int32_t *, int, int);

EK_INST_A(float)
EK_INST_A(bf16)

#define EK_INST_ROPE(A, W, KV)                                                                     \
    template int ek_qk_norm_rope<A, W, KV>(cudaStream_t, A *, int, A *, int, const W *, const W *, \
                                           const int32_t *, const float *, int, int, int, int,    \
                                           float, int, int, KV *, KV *, const A *, int,           \
                                           const int32_t *, const float *);
EK_INST_ROPE(float, bf16, float)
EK_INST_ROPE(float, float, float)
EK_INST_ROPE(bf16, bf16, bf16)
