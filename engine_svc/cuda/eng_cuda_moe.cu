/* eng_cuda_moe.cu: the sparse MoE block on the GPU: router GEMM, softmax + top-k (+ renorm)
 * fused, and two expert paths, both free of host-side sizes (so they run inside CUDA graphs):
 *
 *  - GEMV (few tokens, decode): one warp per (token, top-k slot, output row) reads only the routed
 *    experts' rows; gate and up are read together and SwiGLU is fused; the down projection sums
 *    the K weighted expert outputs in the same kernel (weighted un-permute fused). Opt-in
 *    (OM_CUDA_FUSE_MOE=1, measured slower at batch 1): both halves as one persistent kernel,
 *    k_moe_fused (atomic tickets, per-token completion counters).
 *  - grouped (many tokens): assignments counted per expert, offsets and a tile list built on the
 *    device, inputs permuted into expert order, then grouped tensor-core GEMMs (WMMA bf16, f32
 *    accumulate, cp.async 3-stage pipeline): gate+up in one kernel with SwiGLU in its epilogue,
 *    then down; a final kernel un-permutes and sums with the routing weights. Row tiles of 32,
 *    64 or 128 rows (32 x 32 per warp, 1, 2 or 4 warps down; 32 for decode-sized groups, else
 *    64, see s_moe_bm); every output element is the same MMA chain whatever the tile height,
 *    so the result does not depend on it. The grid is sized
 *    for the worst case and blocks without a tile exit at once, so zero-size groups cost nothing.
 *
 * Rounding (bf16 path) follows transformers: router logits bf16, softmax/top-k f32, weights bf16,
 * gate/up/silu/product rounded to bf16, each expert output rounded to bf16 and weighted.
 *
 * Expert range (tensor parallel, expert mode): with (e0, ne) the weights hold experts
 * [e0, e0+ne) only ((ne, I, D) gate/up, (ne, D, I) down) while the router and the routing ids
 * stay global; (token, k) pairs routed elsewhere are skipped (GEMV: no work; grouped: not counted
 * or permuted, pos = -1), so out is the weighted sum of the local experts' outputs only (exactly
 * zero for a token with none). ne = 0 means all E. Output type O: A, or float for the f32
 * tensor-parallel reduction (the weighted sum is then not rounded). */
#include <cstdlib>
#include <cstring>
#include <mma.h>

#include "eng_cuda_kern.cuh"

using namespace nvcuda;

static size_t s_al(size_t n) { return (n + 255) & ~(size_t)255; }

/* row tiles of the grouped GEMM with tiles of bm rows (the scratch holds them for bm = 32) */
static int s_max_tiles(int TK, int E, int bm = 32) { return TK / bm + 1 + E; }

size_t ek_moe_scratch_bytes(int max_T, int D, int I, int E, int K) {
    size_t TK = (size_t)max_T * K;
    return s_al((size_t)max_T * E * 4) + 2 * s_al(TK * 4) + s_al(TK * I * 4) + 3 * s_al((E + 1) * 4) +
           s_al((size_t)s_max_tiles((int)TK, E) * 2 * 4) + s_al(4) + s_al(TK * 4) +
           2 * s_al(TK * D * 2);
}

void ek_moe_scratch_carve(ek_moe_scratch *m, void *base, int max_T, int D, int I, int E, int K) {
    size_t TK = (size_t)max_T * K;
    char *p = (char *)base;
    m->logits = (float *)p; p += s_al((size_t)max_T * E * 4);
    m->ids = (int32_t *)p; p += s_al(TK * 4);
    m->wts = (float *)p; p += s_al(TK * 4);
    m->h = p; p += s_al(TK * I * 4);
    m->counts = (int32_t *)p; p += s_al((E + 1) * 4);
    m->offsets = (int32_t *)p; p += s_al((E + 1) * 4);
    m->cursor = (int32_t *)p; p += s_al((E + 1) * 4);
    m->tiles = (int32_t *)p; p += s_al((size_t)s_max_tiles((int)TK, E) * 2 * 4);
    m->n_tiles = (int32_t *)p; p += s_al(4);
    m->pos = (int32_t *)p; p += s_al(TK * 4);
    m->xp = (bf16 *)p; p += s_al(TK * D * 2);
    m->y = (bf16 *)p;
}

/* --- router softmax + top-k --------------------------------------------------------------- */

/* Softmax + top-k (+ renorm) of one token's router logits by one warp (all 32 lanes); p: E floats
 * of shared memory for this warp. Ties go to the lower expert id. Lane k < K returns slot k's
 * expert id in *ret_id and its (rounded) weight in *ret_w. The one copy of this math: the router's
 * last block (s_topk_token) and the local routing of k_moe_gu / k_moe_down_wk
 * (OM_CUDA_ROUTER_LOCAL) both call it, so their ids and weights are bit-identical.
 * REDUX: each round's warp argmax by two redux.sync instructions instead of 5 x 2 dependent
 * shuffles: the maximum of key = bits(best) + 1 (best >= 0: the exp values are >= +0, so their
 * bit patterns order as the values; removed/absent entries key 0), then the minimum id over the
 * lanes holding that key. The same (value, lowest id) as the shuffle reduction, so the same ids
 * and weights; used by the local routing only (OM_CUDA_ROUTER_LOCAL=1; =2 keeps the shuffles). */
template <typename A, bool REDUX = false>
__device__ __forceinline__ void s_topk_core(const float *l, float *p, int E, int K, bool norm,
                                            int32_t *ret_id, float *ret_w) {
    int lane = threadIdx.x & 31;
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        float v = rnd<A>(__ldcg(&l[e]));
        p[e] = v;
        mx = fmaxf(mx, v);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) {
        float v = expf(p[e] - mx);
        p[e] = v;
        sum += v;
    }
    sum = warp_sum(sum);
    __syncwarp();
    float wsum = 0.0f, my_w = 0.0f;
    int my_i = 0;
    for (int k = 0; k < K; k++) {
        float best = -1.0f;
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
            float v = p[e];
            if (v > best || (v == best && e < bi)) {
                best = v;
                bi = e;
            }
        }
        if constexpr (REDUX) {
            const unsigned key = best >= 0.0f ? __float_as_uint(best) + 1u : 0u;
            const unsigned mk = __reduce_max_sync(0xffffffffu, key);
            bi = __reduce_min_sync(0xffffffffu, key == mk ? bi : 0x7fffffff);
            best = __uint_as_float(mk - 1u);
        } else {
            for (int o = 16; o > 0; o >>= 1) {
                float v2 = __shfl_xor_sync(0xffffffffu, best, o);
                int i2 = __shfl_xor_sync(0xffffffffu, bi, o);
                if (v2 > best || (v2 == best && i2 < bi)) {
                    best = v2;
                    bi = i2;
                }
            }
        }
        float w = best / sum;
        if (lane == k) {
            my_w = w;
            my_i = bi;
        }
        wsum += w;
        __syncwarp();
        if (lane == 0)
            p[bi] = -2.0f;
        __syncwarp();
    }
    *ret_id = my_i;
    *ret_w = lane < K ? rnd<A>(norm ? my_w / wsum : my_w) : 0.0f;
}

/* s_topk_core, written to ids[0..K) / wts[0..K). */
template <typename A>
__device__ void s_topk_token(int32_t *ids, float *wts, const float *l, float *p, int E, int K,
                             bool norm) {
    int lane = threadIdx.x & 31;
    int32_t id;
    float w;
    s_topk_core<A>(l, p, E, K, norm, &id, &w);
    if (lane < K) {
        ids[lane] = id;
        wts[lane] = w;
    }
}

/* One warp per token (E <= 512, K <= 32). */
template <typename A>
__global__ void k_moe_topk(int32_t *ids, float *wts, const float *logits, int T, int E, int K,
                           bool norm) {
    __shared__ float sp[4][512];
    int warp = threadIdx.x >> 5;
    int t = blockIdx.x * 4 + warp;
    if (t >= T)
        return;
    s_topk_token<A>(ids + (int64_t)t * K, wts + (int64_t)t * K, logits + (int64_t)t * E, sp[warp],
                    E, K, norm);
}

/* Decode-path router, fused: add + RMSNorm prologue (each block normalises the NT token rows into
 * shared memory; block 0 also writes the new residual h_out and the normalised x for the
 * experts), one warp per router row, then the last block to finish runs softmax + top-k for all
 * tokens (a self-resetting counter, so it is graph-safe). !TOPK (OM_CUDA_ROUTER_LOCAL): the
 * logits only; no counter, no last block (k_moe_gu / k_moe_down_wk route from the logits). */
template <int NT, bool TOPK>
__global__ void __launch_bounds__(256)
    k_router_fused(int32_t *ids, float *wts, float *logits, int *counter, const bf16 *router,
                   int E, int D, int K, bool norm, const bf16 *h_in, const bf16 *delta,
                   bf16 *h_out, const bf16 *nw, float eps, bf16 *xn_out) {
    extern __shared__ __align__(16) unsigned char smem_r[];
    bf16 *xs = (bf16 *)smem_r;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int e = blockIdx.x * 8 + warp;
    if (e < E)
        l2_prefetch_warp(router + (int64_t)e * D, (size_t)D * 2, lane);
    pdl_wait();
    pdl_trigger();
    ek_norm_prologue<NT>(xs, h_in, delta, h_out, nw, eps, xn_out, D, blockIdx.x == 0);
    if (e < E) {
        const bf16 *wr = router + (int64_t)e * D;
        float acc[NT];
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[t] = 0.0f;
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
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float v = warp_sum(acc[t]);
            if (lane == 0)
                logits[(int64_t)t * E + e] = v;
        }
    }
    if (!TOPK)
        return;
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) {
        int prev = atomicAdd(counter, 1);
        last = prev == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    float *p = (float *)smem_r; /* xs no longer needed: 8 warps x 512 floats fit in NT*D*2 bytes? */
    __syncthreads();
    for (int t = warp; t < NT; t += 8)
        s_topk_token<bf16>(ids + (int64_t)t * K, wts + (int64_t)t * K, logits + (int64_t)t * E,
                           p + warp * E, E, K, norm);
    if (threadIdx.x == 0)
        *counter = 0;
}

/* --- GEMV path ---------------------------------------------------------------------------- */

/* One warp: h[a][i] = bf16(silu(bf16(gate_e[i]·x_t)) rounded) · bf16(up_e[i]·x_t), e = eg (the
 * global expert id of pair a, ids[a]), t = a / K; nothing for a pair routed outside [e0, e0+ne).
 * Shared by k_moe_gu and k_moe_fused. */
template <typename A, bool VEC>
__device__ __forceinline__ void s_gu_row(A *h, const A *x, const bf16 *gate, const bf16 *up,
                                         int eg, int a, int i, int K, int I, int D, int e0,
                                         int ne, int lane) {
    int t = a / K, e = eg - e0;
    if ((unsigned)e >= (unsigned)ne) /* routed to another rank's expert */
        return;
    const bf16 *gr = gate + ((int64_t)e * I + i) * D;
    const bf16 *ur = up + ((int64_t)e * I + i) * D;
    const A *xr = x + (int64_t)t * D;
    float g = 0.0f, u = 0.0f;
    if (VEC) {
#pragma unroll 4
        for (int c = lane * 8; c < D; c += 256) {
            float gf[8], uf[8], xf[8];
            ld8(gr + c, gf);
            ld8(ur + c, uf);
            ld8(xr + c, xf);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                g = fmaf(gf[j], xf[j], g);
                u = fmaf(uf[j], xf[j], u);
            }
        }
    } else {
        for (int c = lane; c < D; c += 32) {
            float xv = ld(&xr[c]);
            g = fmaf(ld(&gr[c]), xv, g);
            u = fmaf(ld(&ur[c]), xv, u);
        }
    }
    g = rnd<A>(warp_sum(g));
    u = rnd<A>(warp_sum(u));
    if (lane == 0) {
        float si = rnd<A>(g / (1.0f + expf(-g)));
        st(&h[(int64_t)a * I + i], si * u);
    }
}

/* Block (row group, pair a = t·K + k): gate/up rows of pair a. LOCAL (OM_CUDA_ROUTER_LOCAL; the
 * router wrote only the f32 logits (T, E)): after the PDL wait, warp 0 runs the router's softmax +
 * top-k (s_topk_core, bf16 rounding as k_router_fused) on token t's logits and takes slot k;
 * block (0, t·K) also writes token t's ids / wts (T, K) for later readers (trace). */
template <typename A, bool VEC, int LOCAL>
__global__ void __launch_bounds__(256)
    k_moe_gu(A *h, const A *x, const bf16 *gate, const bf16 *up, int32_t *ids, int K, int I,
             int D, int e0, int ne, const float *logits, float *wts, int E, bool norm) {
    int i = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    int a = blockIdx.y; /* t*K + k */
    pdl_wait();
    pdl_trigger();
    int eg;
    if constexpr (LOCAL != 0) {
        __shared__ float sp[512]; /* E <= 512 (ek_router_fused) */
        __shared__ int32_t sid;
        if (threadIdx.x < 32) {
            const int t = a / K, k = a - t * K;
            int32_t id;
            float w;
            s_topk_core<bf16, LOCAL == 1>(logits + (int64_t)t * E, sp, E, K, norm, &id, &w);
            const int32_t idk = __shfl_sync(0xffffffffu, id, k);
            if (lane == 0)
                sid = idk;
            if (blockIdx.x == 0 && k == 0 && lane < K) {
                ids[(int64_t)t * K + lane] = id;
                wts[(int64_t)t * K + lane] = w;
            }
        }
        __syncthreads();
        eg = sid;
    } else {
        if (i >= I)
            return;
        eg = ids[a];
    }
    if (i >= I)
        return;
    s_gu_row<A, VEC>(h, x, gate, up, eg, a, i, K, I, D, e0, ne, lane);
}

/* 8 activations; CG: through L2 (h written by other blocks of the same kernel). */
template <bool CG> __device__ __forceinline__ void s_ld8h(const bf16 *p, float *f) {
    if (!CG) {
        ld8(p, f);
        return;
    }
    uint4 u = __ldcg(reinterpret_cast<const uint4 *>(p));
    const __nv_bfloat162 *hh = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(hh[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
template <bool CG> __device__ __forceinline__ void s_ld8h(const float *p, float *f) {
    if (!CG) {
        ld8(p, f);
        return;
    }
    float4 a = __ldcg(reinterpret_cast<const float4 *>(p));
    float4 b = __ldcg(reinterpret_cast<const float4 *>(p + 4));
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

/* One warp, K <= 8, I % 8 == 0: out[t][d] = Σ_k bf16(bf16(down_e[d]·h[t·K+k]) · w[t·K+k]) with
 * all K expert rows in flight at once, reductions at the end. Shared by k_moe_down and
 * k_moe_fused. RANGE: skip pairs routed outside [e0, e0+ne) (expert parallelism); without it the
 * slot tests are k < K only, which keeps all K rows' loads unconditional (62 registers against
 * 48: one GPU's batch-1 decode was 1.7 % slower with the range test compiled in). */
template <typename A, typename O, bool CG, bool RANGE = true>
__device__ __forceinline__ void s_down_vec8(O *out, const A *h, const bf16 *down,
                                            const int32_t *ids, const float *wts, int t, int d,
                                            int K, int D, int I, int e0, int ne, int lane) {
    float acc = 0.0f;
    float part[8];
    const bf16 *wr[8];
    bool loc[8]; /* slot k routed to a local expert */
#pragma unroll
    for (int k = 0; k < 8; k++) {
        part[k] = 0.0f;
        int e = ids[t * K + (k < K ? k : 0)] - e0;
        loc[k] = k < K && (!RANGE || (unsigned)e < (unsigned)ne);
        wr[k] = down + ((int64_t)(!RANGE || loc[k] ? e : 0) * D + d) * I;
    }
    for (int c = lane * 8; c < I; c += 256) {
#pragma unroll
        for (int k = 0; k < 8; k++) {
            if (loc[k]) {
                float wf[8], hf[8];
                ld8(wr[k] + c, wf);
                s_ld8h<CG>(h + (int64_t)(t * K + k) * I + c, hf);
#pragma unroll
                for (int j = 0; j < 8; j++)
                    part[k] = fmaf(wf[j], hf[j], part[k]);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 8; k++)
        if (loc[k]) {
            float y = rnd<A>(warp_sum(part[k]));
            acc += rnd<A>(y * wts[t * K + k]);
        }
    if (lane == 0)
        st(&out[(int64_t)t * D + d], acc);
}

template <typename A, typename O, bool VEC, bool RANGE>
__global__ void __launch_bounds__(256)
    k_moe_down(O *out, const A *h, const bf16 *down, const int32_t *ids, const float *wts, int K,
               int D, int I, int e0, int ne) {
    int d = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    int t = blockIdx.y;
    if (d < D)
        for (int k = 0; k < K; k++) {
            int e = ids[t * K + k] - e0;
            if ((unsigned)e < (unsigned)ne)
                l2_prefetch_warp(down + ((int64_t)e * D + d) * I, (size_t)I * 2, lane);
        }
    pdl_wait();
    pdl_trigger();
    if (d >= D)
        return;
    if (VEC && K <= 8) {
        s_down_vec8<A, O, false, RANGE>(out, h, down, ids, wts, t, d, K, D, I, e0, ne, lane);
        return;
    }
    float acc = 0.0f;
    for (int k = 0; k < K; k++) {
        int a = t * K + k;
        int e = ids[a] - e0;
        if ((unsigned)e >= (unsigned)ne)
            continue;
        const bf16 *wr = down + ((int64_t)e * D + d) * I;
        const A *hr = h + (int64_t)a * I;
        float y = 0.0f;
        if (VEC) {
            for (int c = lane * 8; c < I; c += 256) {
                float wf[8], hf[8];
                ld8(wr + c, wf);
                ld8(hr + c, hf);
#pragma unroll
                for (int j = 0; j < 8; j++)
                    y = fmaf(wf[j], hf[j], y);
            }
        } else {
            for (int c = lane; c < I; c += 32)
                y = fmaf(ld(&wr[c]), ld(&hr[c]), y);
        }
        y = rnd<A>(warp_sum(y));
        acc += rnd<A>(y * wts[a]);
    }
    if (lane == 0)
        st(&out[(int64_t)t * D + d], acc);
}

/* k_moe_down with one warp per (slot k, R rows): block (row group, token t) has K warps; warp k
 * loads its R down rows of expert ids[t·K + k] into registers before the PDL wait (ids are two
 * kernels back), so the weights are on chip when k_moe_gu ends, then reads h and reduces; the K
 * slot results are added in slot order through shared memory. Per lane the same f32 order as
 * s_down_vec8 (chunks c ascending, 8 products each, then warp_sum), so bit-identical to
 * k_moe_down. Needs K <= 8, I % 8 == 0, I <= 1024. The default decode down projection:
 * 263 -> 286 tok/s at batch 1 on an H100 (docs/engine.md); OM_CUDA_MOE_DOWN=0 gives k_moe_down.
 * LOCAL (OM_CUDA_ROUTER_LOCAL; the router wrote only the f32 logits (T, E)): a block of the first
 * n_early (linear block index; about one resident wave, set by the launcher) runs, before the PDL
 * wait (the logits are two kernels back), the router's softmax + top-k (s_topk_core) on token t's
 * logits in warp 0, and each warp takes its slot's id and weight from shared memory; the weight
 * loads stay before the wait. A later block (it starts when k_moe_gu's blocks leave, mostly
 * after k_moe_gu ended) waits first and reads ids / wts that k_moe_gu wrote, which is cheaper
 * than the top-k. Either way the same ids and weights. */
#define DWK_MAXC 4 /* 16-byte chunks per lane: I <= 32 · 8 · DWK_MAXC */
template <typename A, typename O, bool RANGE, int R, int LOCAL>
__global__ void __launch_bounds__(256)
    k_moe_down_wk(O *out, const A *h, const bf16 *down, const int32_t *ids, const float *wts,
                  int K, int D, int I, int e0, int ne, const float *logits, int E, bool norm,
                  int n_early) {
    __shared__ float ys[R][8];
    __shared__ bool ok[8];
    const int t = blockIdx.y, k = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int d0 = blockIdx.x * R;
    int eg;
    float wk = 0.0f; /* LOCAL: slot k's weight */
    bool waited = false;
    if constexpr (LOCAL != 0) {
        if ((int)(blockIdx.y * gridDim.x + blockIdx.x) < n_early) {
            __shared__ float sp[512]; /* E <= 512 (ek_router_fused) */
            __shared__ int32_t sid[8];
            __shared__ float swt[8];
            if (k == 0) {
                int32_t id;
                float w;
                s_topk_core<bf16, LOCAL == 1>(logits + (int64_t)t * E, sp, E, K, norm, &id, &w);
                if (lane < K) {
                    sid[lane] = id;
                    swt[lane] = w;
                }
            }
            __syncthreads();
            eg = sid[k];
            wk = swt[k];
        } else { /* written by k_moe_gu (block (0, t·K)): readable after the wait */
            pdl_wait();
            waited = true;
            eg = ids[t * K + k];
            wk = wts[t * K + k];
        }
    } else {
        eg = ids[t * K + k];
    }
    const int e = eg - e0;
    const bool loc = !RANGE || (unsigned)e < (unsigned)ne;
    uint4 w[R][DWK_MAXC];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const bf16 *wr = down + ((int64_t)(loc ? e : 0) * D + (d0 + r < D ? d0 + r : 0)) * I;
#pragma unroll
        for (int j = 0; j < DWK_MAXC; j++) {
            const int c = lane * 8 + j * 256;
            if (loc && c < I)
                w[r][j] = __ldg(reinterpret_cast<const uint4 *>(wr + c));
        }
    }
    if (!waited)
        pdl_wait();
    pdl_trigger();
    float part[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        part[r] = 0.0f;
    if (loc) {
        const A *hr = h + (int64_t)(t * K + k) * I;
#pragma unroll
        for (int j = 0; j < DWK_MAXC; j++) {
            const int c = lane * 8 + j * 256;
            if (c < I) {
                float hf[8];
                ld8(hr + c, hf);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const __nv_bfloat162 *b2 = reinterpret_cast<const __nv_bfloat162 *>(&w[r][j]);
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        float2 f = __bfloat1622float2(b2[q]);
                        part[r] = fmaf(f.x, hf[2 * q], part[r]);
                        part[r] = fmaf(f.y, hf[2 * q + 1], part[r]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float y = rnd<A>(warp_sum(part[r]));
        if (lane == 0)
            ys[r][k] = rnd<A>(y * (LOCAL != 0 ? wk : wts[t * K + k]));
    }
    if (lane == 0)
        ok[k] = loc;
    __syncthreads();
    if (threadIdx.x < R && d0 + (int)threadIdx.x < D) {
        float acc = 0.0f;
        for (int kk = 0; kk < K; kk++)
            if (ok[kk])
                acc += ys[threadIdx.x][kk];
        st(&out[(int64_t)t * D + d0 + threadIdx.x], acc);
    }
}

/* --- GEMV path, fused: gate/up and down in one persistent kernel (decode) ------------------ */

__device__ __forceinline__ int s_ld_acquire(const int *p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* Work tiles of 8 rows (one per warp), handed out by an atomic ticket: tickets [0, n_gu) are the
 * gate/up tiles (token-major: assignment a = t·K + k, then rows i), [n_gu, n_all) the down tiles
 * (token t, rows d). A gate/up tile counts itself into done[t] (release: fence, then atomic); a
 * down tile of token t first prefetches its K expert rows into L2, then spins (acquire) until
 * done[t] = K·ceil(I/8), then reads h through L2. Every gate/up ticket is handed out before any
 * down ticket and a block holds at most its current ticket and the next (a larger one), so a
 * spinning block never holds an unfinished gate/up tile: no deadlock, whatever the residency.
 * cnt: [0] ticket, [1] exited blocks, [2 + t] done[t]; the last block to exit zeroes them all
 * (graph-replayable). Same code and rounding as k_moe_gu + k_moe_down (s_gu_row, s_down_vec8). */
template <typename A, typename O>
__global__ void __launch_bounds__(256)
    k_moe_fused(O *out, A *h, const A *x, const bf16 *gate, const bf16 *up, const bf16 *down,
                const int32_t *ids, const float *wts, int T, int K, int D, int I, int e0, int ne,
                int *cnt) {
    __shared__ int tk[2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gu_per_a = (I + 7) / 8, dn_per_t = (D + 7) / 8;
    const int n_gu = T * K * gu_per_a, n_all = n_gu + T * dn_per_t;
    pdl_wait();
    pdl_trigger();
    if (threadIdx.x == 0)
        tk[0] = atomicAdd(&cnt[0], 1);
    __syncthreads();
    int b = 0, cur = tk[0];
    while (cur < n_all) {
        if (threadIdx.x == 0)
            tk[b ^ 1] = atomicAdd(&cnt[0], 1); /* the next ticket, in flight during this tile */
        if (cur < n_gu) {
            const int a = cur / gu_per_a, i = (cur % gu_per_a) * 8 + warp;
            if (i < I)
                s_gu_row<A, true>(h, x, gate, up, ids[a], a, i, K, I, D, e0, ne, lane);
            __threadfence();
            __syncthreads();
            if (threadIdx.x == 0)
                atomicAdd(&cnt[2 + a / K], 1);
        } else {
            const int r = cur - n_gu, t = r / dn_per_t, d = (r % dn_per_t) * 8 + warp;
            if (d < D)
                for (int k = 0; k < K; k++) {
                    const int e = ids[t * K + k] - e0;
                    if ((unsigned)e < (unsigned)ne)
                        l2_prefetch_warp(down + ((int64_t)e * D + d) * I, (size_t)I * 2, lane);
                }
            if (threadIdx.x == 0) {
                const int need = K * gu_per_a;
                while (s_ld_acquire(&cnt[2 + t]) < need)
                    ;
            }
            __syncthreads();
            __threadfence();
            if (d < D)
                s_down_vec8<A, O, true>(out, h, down, ids, wts, t, d, K, D, I, e0, ne, lane);
        }
        __syncthreads();
        b ^= 1;
        cur = tk[b];
    }
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(&cnt[1], 1) == (int)gridDim.x - 1) {
            /* every block has taken its last ticket and finished its tiles */
            cnt[0] = 0;
            for (int t = 0; t < T; t++)
                cnt[2 + t] = 0;
            cnt[1] = 0;
        }
    }
}

thread_local int ek_moe_fused_cap = 0;
thread_local int ek_moe_down_sel = -1;

template <typename A, typename O> static int s_moe_fused_blocks(int n_all) {
    /* resident blocks the device holds (cached per host thread = per device, TP ranks) */
    static thread_local int per_sm = 0, sms = 0;
    if (!per_sm) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_moe_fused<A, O>, 256, 0));
        if (per_sm < 1)
            per_sm = 1;
    }
    int g = per_sm * sms;
    /* a cap on the grid: the test hook's (ek_moe_fused_cap), else OM_CUDA_MOE_BLOCKS=n (tuning) */
    static const char *cap_s = getenv("OM_CUDA_MOE_BLOCKS");
    int cap = ek_moe_fused_cap > 0 ? ek_moe_fused_cap : (cap_s ? atoi(cap_s) : 0);
    if (cap > 0 && cap < g)
        g = cap;
    return n_all < g ? n_all : g;
}

/* --- grouped path: routing bookkeeping ---------------------------------------------------- */

__global__ void k_moe_count(int32_t *counts, const int32_t *ids, int TK, int e0, int ne) {
    for (int a = blockIdx.x * blockDim.x + threadIdx.x; a < TK; a += gridDim.x * blockDim.x) {
        int e = ids[a] - e0;
        if ((unsigned)e < (unsigned)ne)
            atomicAdd(&counts[e], 1);
    }
}

__global__ void k_moe_scan(const int32_t *counts, int32_t *offsets, int32_t *cursor,
                           int32_t *tiles, int32_t *n_tiles, int E, int bm) {
    __shared__ int sc[512], so[513], st[513];
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        sc[e] = counts[e];
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, nt = 0;
        for (int e = 0; e < E; e++) {
            so[e] = off;
            st[e] = nt;
            off += sc[e];
            nt += (sc[e] + bm - 1) / bm;
        }
        so[E] = off;
        st[E] = nt;
        *n_tiles = nt;
    }
    __syncthreads();
    for (int e = threadIdx.x; e <= E; e += blockDim.x) {
        offsets[e] = so[e];
        if (e < E) {
            cursor[e] = so[e];
            for (int i = 0, m0 = 0; m0 < sc[e]; m0 += bm, i++) {
                tiles[2 * (st[e] + i)] = e;
                tiles[2 * (st[e] + i) + 1] = m0;
            }
        }
    }
}

/* VEC (bf16 x, D % 8 == 0): 16-byte copies; a bf16 -> f32 -> bf16 round trip is the identity, so
 * the rows are the same bits as the scalar loop's (4096-token prefill: 138 us a layer scalar) */
template <typename A, bool VEC>
__global__ void k_moe_permute(bf16 *xp, int32_t *pos, int32_t *cursor, const A *x,
                              const int32_t *ids, int K, int D, int e0, int ne) {
    __shared__ int sp;
    int a = blockIdx.x;
    int e = ids[a] - e0; /* the same in every thread: the early return is block-uniform */
    if ((unsigned)e >= (unsigned)ne) {
        if (threadIdx.x == 0)
            pos[a] = -1; /* another rank's expert */
        return;
    }
    if (threadIdx.x == 0) {
        sp = atomicAdd(&cursor[e], 1);
        pos[a] = sp;
    }
    __syncthreads();
    int t = a / K;
    if constexpr (VEC) {
        const uint4 *src = reinterpret_cast<const uint4 *>(x + (int64_t)t * D);
        uint4 *dst = reinterpret_cast<uint4 *>(xp + (int64_t)sp * D);
        for (int d8 = threadIdx.x; d8 < D / 8; d8 += blockDim.x)
            dst[d8] = src[d8];
    } else {
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            xp[(int64_t)sp * D + d] = __float2bfloat16(ld(&x[(int64_t)t * D + d]));
    }
}

/* VEC (D % 8 == 0): each thread sums 8 consecutive elements from 16-byte loads of the K rows, in
 * the same k order and with the same roundings per element as the scalar loop: the same bits */
template <typename A, typename O, bool VEC>
__global__ void k_moe_unpermute(O *out, const bf16 *y, const int32_t *pos, const float *wts, int K,
                                int D) {
    int t = blockIdx.x;
    if constexpr (VEC) {
        for (int d8 = threadIdx.x; d8 < D / 8; d8 += blockDim.x) {
            float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            for (int k = 0; k < K; k++) {
                const int a = t * K + k;
                const int p = pos[a];
                if (p < 0) /* another rank's expert */
                    continue;
                const float w = wts[a];
                float f[8];
                ld8(y + (int64_t)p * D + 8 * d8, f);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[i] += rnd<A>(f[i] * w);
            }
#pragma unroll
            for (int i = 0; i < 8; i++)
                st(&out[(int64_t)t * D + 8 * d8 + i], acc[i]);
        }
    } else {
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) {
                int a = t * K + k;
                int p = pos[a];
                if (p < 0) /* another rank's expert */
                    continue;
                acc += rnd<A>(__bfloat162float(y[(int64_t)p * D + d]) * wts[a]);
            }
            st(&out[(int64_t)t * D + d], acc);
        }
    }
}

/* --- grouped path: tensor-core GEMM ------------------------------------------------------- */

#define GB_N 64
#define GB_K 64
#define GB_ST 3
#define GB_LD (GB_K + 8)
#define GB_LDC (GB_N + 4)

__device__ __forceinline__ void s_cp16(void *dst, const void *src, int src_bytes) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void s_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void s_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* stages of X (BM rows) and W0 (and W1) tiles; the epilogue's f32 C tiles reuse them */
template <bool DUAL, int BM> static constexpr size_t s_gemm_smem() {
    return (size_t)GB_ST * (BM + GB_N * (DUAL ? 2 : 1)) * GB_LD * 2;
}
static_assert((size_t)2 * 32 * GB_LDC * 4 <= s_gemm_smem<true, 32>() &&
                  (size_t)2 * 128 * GB_LDC * 4 <= s_gemm_smem<true, 128>() &&
                  (size_t)128 * GB_LDC * 4 <= s_gemm_smem<false, 128>() &&
                  (size_t)32 * GB_LDC * 4 <= s_gemm_smem<false, 32>(),
              "the epilogue's C tiles fit in the stage buffers");

/* Y[rows of expert e] (ldy) = X[rows] · W0[e]ᵀ (N,K); DUAL: Y = silu(X·W0ᵀ) * (X·W1ᵀ).
 * Tiles of BM rows (32, 64, 128) x GB_N columns; BM / 32 x 2 warps of 32 x 32 each. */
template <bool DUAL, int BM>
__global__ void __launch_bounds__(BM * 2)
    k_moe_gemm(bf16 *Y, const bf16 *X, const bf16 *W0, const bf16 *W1, const int32_t *offsets,
               const int32_t *tiles, const int32_t *n_tiles, int N, int K) {
    constexpr int NT = BM * 2; /* threads */
    int tile = blockIdx.y;
    if (tile >= *n_tiles)
        return;
    extern __shared__ __align__(128) unsigned char smem[];
    const int e = tiles[2 * tile], m0 = tiles[2 * tile + 1];
    const int row0 = offsets[e] + m0;
    const int rows = min(BM, offsets[e + 1] - row0);
    const int n0 = blockIdx.x * GB_N;
    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    bf16 *Xs = (bf16 *)smem;
    bf16 *W0s = Xs + GB_ST * BM * GB_LD;
    bf16 *W1s = W0s + GB_ST * GB_N * GB_LD;
    const bf16 *w0 = W0 + ((int64_t)e * N + n0) * K;
    const bf16 *w1 = DUAL ? W1 + ((int64_t)e * N + n0) * K : nullptr;
    const int nk = K / GB_K;

    /* one loop over the taller of the X and W tiles, X row r and W row r in the same iteration
       (for BM = GB_N exactly the loop of the 64-row kernel before: splitting it into an X loop
       and a W loop cost ~4 % of TTFT on an H100) */
    constexpr int LR = BM > GB_N ? BM : GB_N;
    auto load = [&](int kt, int stg) {
        for (int idx = tid; idx < LR * (GB_K / 8); idx += NT) {
            int r = idx >> 3, c = (idx & 7) * 8;
            if (BM >= GB_N || r < BM) {
                int rr = r < rows ? r : rows - 1;
                s_cp16(Xs + (stg * BM + r) * GB_LD + c,
                       X + (int64_t)(row0 + rr) * K + kt * GB_K + c, r < rows ? 16 : 0);
            }
            if (GB_N >= BM || r < GB_N) {
                s_cp16(W0s + (stg * GB_N + r) * GB_LD + c, w0 + (int64_t)r * K + kt * GB_K + c, 16);
                if (DUAL)
                    s_cp16(W1s + (stg * GB_N + r) * GB_LD + c, w1 + (int64_t)r * K + kt * GB_K + c,
                           16);
            }
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0[2][2], acc1[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::fill_fragment(acc0[i][j], 0.0f);
            wmma::fill_fragment(acc1[i][j], 0.0f);
        }
#pragma unroll
    for (int s = 0; s < GB_ST - 1; s++) {
        if (s < nk)
            load(s, s);
        s_cp_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        s_cp_wait<GB_ST - 2>();
        __syncthreads();
        int nxt = kt + GB_ST - 1;
        if (nxt < nk)
            load(nxt, nxt % GB_ST);
        s_cp_commit();
        int stg = kt % GB_ST;
        const bf16 *xs = Xs + stg * BM * GB_LD;
        const bf16 *ws0 = W0s + stg * GB_N * GB_LD;
        const bf16 *ws1 = W1s + stg * GB_N * GB_LD;
#pragma unroll
        for (int kk = 0; kk < GB_K / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(a[i], xs + (wm * 32 + i * 16) * GB_LD + kk * 16, GB_LD);
#pragma unroll
            for (int j = 0; j < 2; j++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
                wmma::load_matrix_sync(b, ws0 + (wn * 32 + j * 16) * GB_LD + kk * 16, GB_LD);
#pragma unroll
                for (int i = 0; i < 2; i++)
                    wmma::mma_sync(acc0[i][j], a[i], b, acc0[i][j]);
                if (DUAL) {
                    wmma::load_matrix_sync(b, ws1 + (wn * 32 + j * 16) * GB_LD + kk * 16, GB_LD);
#pragma unroll
                    for (int i = 0; i < 2; i++)
                        wmma::mma_sync(acc1[i][j], a[i], b, acc1[i][j]);
                }
            }
        }
    }
    s_cp_wait<0>();
    __syncthreads();
    float *C0 = (float *)smem;
    float *C1 = C0 + BM * GB_LDC;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            wmma::store_matrix_sync(C0 + (wm * 32 + i * 16) * GB_LDC + wn * 32 + j * 16,
                                    acc0[i][j], GB_LDC, wmma::mem_row_major);
            if (DUAL)
                wmma::store_matrix_sync(C1 + (wm * 32 + i * 16) * GB_LDC + wn * 32 + j * 16,
                                        acc1[i][j], GB_LDC, wmma::mem_row_major);
        }
    __syncthreads();
    for (int idx = tid; idx < BM * GB_N; idx += NT) {
        int r = idx / GB_N, c = idx % GB_N;
        if (r >= rows)
            continue;
        float v;
        if (DUAL) {
            float g = rnd<bf16>(C0[r * GB_LDC + c]);
            float u = rnd<bf16>(C1[r * GB_LDC + c]);
            v = rnd<bf16>(g / (1.0f + expf(-g))) * u;
        } else {
            v = C0[r * GB_LDC + c];
        }
        Y[(int64_t)(row0 + r) * N + n0 + c] = __float2bfloat16(v);
    }
}

template <bool DUAL, int BM>
static int s_moe_gemm_bm(cudaStream_t s, bf16 *Y, const bf16 *X, const bf16 *W0, const bf16 *W1,
                         const int32_t *offsets, const int32_t *tiles, const int32_t *n_tiles,
                         int max_tiles, int N, int K) {
    static thread_local bool attr_set = false; /* per thread = per device (TP ranks) */
    size_t bytes = s_gemm_smem<DUAL, BM>();
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(k_moe_gemm<DUAL, BM>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        attr_set = true;
    }
    k_moe_gemm<DUAL, BM><<<dim3(N / GB_N, max_tiles), BM * 2, bytes, s>>>(Y, X, W0, W1, offsets,
                                                                          tiles, n_tiles, N, K);
    CUDA_LAUNCH_CHECK();
    return 0;
}

template <bool DUAL>
static int s_moe_gemm(cudaStream_t s, int bm, bf16 *Y, const bf16 *X, const bf16 *W0,
                      const bf16 *W1, const int32_t *offsets, const int32_t *tiles,
                      const int32_t *n_tiles, int max_tiles, int N, int K) {
    switch (bm) {
    case 32: return s_moe_gemm_bm<DUAL, 32>(s, Y, X, W0, W1, offsets, tiles, n_tiles, max_tiles, N, K);
    case 128: return s_moe_gemm_bm<DUAL, 128>(s, Y, X, W0, W1, offsets, tiles, n_tiles, max_tiles, N, K);
    default: return s_moe_gemm_bm<DUAL, 64>(s, Y, X, W0, W1, offsets, tiles, n_tiles, max_tiles, N, K);
    }
}

thread_local int ek_moe_bm_sel = 0;
thread_local int ek_moe_vec_sel = -1;

/* The grouped GEMM's tile height for TK routed pairs over ne local experts: ek_moe_bm_sel
 * (tests), else OM_CUDA_MOE_BM (32, 64, 128), else from the mean rows per expert: <= 16 (decode
 * batches up to 256 on the thinker) -> 32, else 64. Measured on an H100: 32-row tiles made
 * decode steps of 16-256 sequences faster, but a 512-token prefill (32 rows an expert) slower
 * (TTFT 27.7 against 25.4 ms), and 128-row tiles made a 4096-token prefill slower (183.8
 * against 175.2 ms): more warps per tile do not raise the WMMA kernel's compute rate. */
static int s_moe_bm(int TK, int ne) {
    static const int env = getenv("OM_CUDA_MOE_BM") ? atoi(getenv("OM_CUDA_MOE_BM")) : 0;
    const int sel = ek_moe_bm_sel ? ek_moe_bm_sel : env;
    if (sel == 32 || sel == 64 || sel == 128)
        return sel;
    const int mean = (TK + ne - 1) / (ne > 0 ? ne : 1);
    return mean <= 16 ? 32 : 64;
}

/* --- the block ---------------------------------------------------------------------------- */

template <typename A, typename O>
int ek_moe(const ek_ctx *c, O *out, const A *x, const bf16 *router, const bf16 *gate,
           const bf16 *up, const bf16 *down, int T, int D, int I, int E, int K, bool norm_topk,
           int mode, const ek_moe_scratch *m, int e0, int ne) {
    if (T == 0)
        return 0;
    if (E <= 0 || E > 512 || K <= 0 || K > E || K > 32)
        return -EINVAL;
    cudaStream_t s = c->stream;
    int r = 0;
    if (sizeof(A) == 4) {
        /* f32 activations (vtable parity path): f32 GEMV in chunks of 8 tokens, so the routing
           sees the same logits as the CPU reference (a bf16-rounded x could flip near-ties) */
        ek_ctx c8 = *c;
        c8.gemv_max_rows = 8;
        for (int t0 = 0; t0 < T && r >= 0; t0 += 8)
            r = ek_matmul<A, float>(&c8, m->logits + (int64_t)t0 * E, x + (int64_t)t0 * D, router,
                                    T - t0 < 8 ? T - t0 : 8, E, D);
    } else {
        r = ek_matmul<A, float>(c, m->logits, x, router, T, E, D);
    }
    if (r < 0)
        return r;
    k_moe_topk<A><<<(T + 3) / 4, 128, 0, s>>>(m->ids, m->wts, m->logits, T, E, K, norm_topk);
    CUDA_LAUNCH_CHECK();
    return ek_moe_experts<A, O>(c, out, x, gate, up, down, T, D, I, E, K, mode, m, e0, ne, nullptr,
                                0, false);
}

/* The unfused decode down projection: ek_moe_down_sel (tests), else OM_CUDA_MOE_DOWN (0
 * k_moe_down, 1 k_moe_down_wk (default), 2 two rows per warp). */
static int s_dwk() {
    static const int dwk_env = getenv("OM_CUDA_MOE_DOWN") && *getenv("OM_CUDA_MOE_DOWN")
                                   ? atoi(getenv("OM_CUDA_MOE_DOWN"))
                                   : 1;
    return ek_moe_down_sel >= 0 ? ek_moe_down_sel : dwk_env;
}

static bool s_grouped(int T, int D, int I, int K, int mode) {
    return D % 64 == 0 && I % 64 == 0 &&
           (mode == EK_MOE_GROUPED || (mode == EK_MOE_AUTO && T * K > 64));
}

bool ek_moe_route_local_ok(int T, int D, int I, int E, int K, int mode, bool fused) {
    const int dwk = s_dwk();
    return T >= 1 && T <= 8 && E <= 512 && K >= 1 && K <= 8 && K <= E && !fused &&
           !s_grouped(T, D, I, K, mode) && (dwk == 1 || dwk == 2) && I % 8 == 0 &&
           I <= 32 * 8 * DWK_MAXC;
}

/* k_moe_down_wk (LOCAL): its first n_early blocks run the top-k before the PDL wait, the rest read
 * k_moe_gu's ids after it: ek_moe_local_early (tests) if >= 0, else OM_CUDA_ROUTER_LOCAL_EARLY=n,
 * else two blocks per SM (at most one resident wave: occupancy x SMs; cached per host thread = per
 * device, and per K). One H100, batch 1, ctx 512, two rounds in one call: 2 per SM (264) 301.6 /
 * 301.7 tok/s, a resident wave 300.8 / 298.6 / 301.2, 500 blocks 300.6 / 300.8, 0 blocks 297.4. */
thread_local int ek_moe_local_early = -1;
template <typename KF> static int s_dwk_early(KF kern, int K) {
    if (ek_moe_local_early >= 0)
        return ek_moe_local_early;
    static const char *env = getenv("OM_CUDA_ROUTER_LOCAL_EARLY");
    if (env && *env)
        return atoi(env) > 0 ? atoi(env) : 0;
    static thread_local int per_sm = 0, sms = 0, k_of = 0;
    static thread_local const void *kern_of = nullptr;
    if (!per_sm || k_of != K || kern_of != (const void *)kern) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, 32 * K, 0));
        if (per_sm < 1)
            per_sm = 1;
        k_of = K;
        kern_of = (const void *)kern;
    }
    return (per_sm < 2 ? per_sm : 2) * sms;
}

/* k_moe_gu + k_moe_down_wk routing from m->logits themselves (L: 1 redux argmax, 2 shuffles). */
template <typename A, typename O, int L>
static int s_moe_local(cudaStream_t s, O *out, const A *x, const bf16 *gate, const bf16 *up,
                       const bf16 *down, int T, int D, int I, int E, int K,
                       const ek_moe_scratch *m, int e0, int ne, bool vec_d, bool norm_topk) {
    A *h = (A *)m->h;
    dim3 g1((I + 7) / 8, T * K);
    if (vec_d)
        CUDA_CHECK(ek_launch(k_moe_gu<A, true, L>, g1, dim3(256), 0, s, h, x, gate, up, m->ids, K,
                             I, D, e0, ne, m->logits, m->wts, E, norm_topk));
    else
        CUDA_CHECK(ek_launch(k_moe_gu<A, false, L>, g1, dim3(256), 0, s, h, x, gate, up, m->ids, K,
                             I, D, e0, ne, m->logits, m->wts, E, norm_topk));
    const int dwk = s_dwk();
    dim3 gw((D + dwk - 1) / dwk, T);
    int ne_;
#define DWK_L(RG, RR)                                                                              \
    do {                                                                                           \
        ne_ = s_dwk_early(k_moe_down_wk<A, O, RG, RR, L>, K);                                     \
        if (ne_ < 0)                                                                               \
            return ne_;                                                                            \
        CUDA_CHECK(ek_launch(k_moe_down_wk<A, O, RG, RR, L>, gw, dim3(32 * K), 0, s, out, h, down, \
                             m->ids, m->wts, K, D, I, e0, ne, m->logits, E, norm_topk, ne_));     \
    } while (0)
    if (dwk == 1 && ne == E)
        DWK_L(false, 1);
    else if (dwk == 1)
        DWK_L(true, 1);
    else if (ne == E)
        DWK_L(false, 2);
    else
        DWK_L(true, 2);
#undef DWK_L
    return 0;
}

template <typename A, typename O>
int ek_moe_experts(const ek_ctx *c, O *out, const A *x, const bf16 *gate, const bf16 *up,
                   const bf16 *down, int T, int D, int I, int E, int K, int mode,
                   const ek_moe_scratch *m, int e0, int ne, int *fused_cnt, int route_local,
                   bool norm_topk) {
    if (T == 0)
        return 0;
    if (ne == 0)
        ne = E;
    if (e0 < 0 || ne < 0 || e0 + ne > E)
        return -EINVAL;
    cudaStream_t s = c->stream;
    int r;
    int TK = T * K;
    bool grouped = s_grouped(T, D, I, K, mode);
    if (route_local) {
        if (E > 512 || K > 32)
            return -EINVAL;
        const bool fused = fused_cnt && D % 8 == 0 && ((uintptr_t)x % 16) == 0 && I % 8 == 0 &&
                           T <= EK_MOE_FUSED_MAX_T && K <= 8;
        if (!ek_moe_route_local_ok(T, D, I, E, K, mode, fused) || sizeof(A) != 2) {
            /* not the k_moe_gu + k_moe_down_wk path: the top-k as its own kernel (the same
               s_topk_core math as the router's last block), then the path as usual */
            k_moe_topk<bf16><<<(T + 3) / 4, 128, 0, s>>>(m->ids, m->wts, m->logits, T, E, K,
                                                         norm_topk);
            CUDA_LAUNCH_CHECK();
            route_local = 0;
        }
    }
    if (!grouped) {
        A *h = (A *)m->h;
        bool vec_d = D % 8 == 0 && ((uintptr_t)x % 16) == 0;
        bool vec_i = I % 8 == 0;
        if (route_local) /* ek_moe_route_local_ok: k_moe_gu + k_moe_down_wk, routing local */
            return route_local == 2
                       ? s_moe_local<A, O, 2>(s, out, x, gate, up, down, T, D, I, E, K, m, e0, ne,
                                              vec_d, norm_topk)
                       : s_moe_local<A, O, 1>(s, out, x, gate, up, down, T, D, I, E, K, m, e0, ne,
                                              vec_d, norm_topk);
        if (fused_cnt && vec_d && vec_i && T <= EK_MOE_FUSED_MAX_T && K <= 8) {
            int nb = s_moe_fused_blocks<A, O>(TK * ((I + 7) / 8) + T * ((D + 7) / 8));
            if (nb < 0)
                return nb;
            CUDA_CHECK(ek_launch(k_moe_fused<A, O>, dim3(nb), dim3(256), 0, s, out, h, x, gate, up,
                                 down, m->ids, m->wts, T, K, D, I, e0, ne, fused_cnt));
            return 0;
        }
        dim3 g1((I + 7) / 8, TK);
        const float *nl = nullptr; /* no logits: the routing is in m->ids / m->wts */
        if (vec_d)
            CUDA_CHECK(ek_launch(k_moe_gu<A, true, 0>, g1, dim3(256), 0, s, h, x, gate, up,
                                 m->ids, K, I, D, e0, ne, nl, m->wts, E, false));
        else
            CUDA_CHECK(ek_launch(k_moe_gu<A, false, 0>, g1, dim3(256), 0, s, h, x, gate, up,
                                 m->ids, K, I, D, e0, ne, nl, m->wts, E, false));
        /* k_moe_down_wk (default; OM_CUDA_MOE_DOWN: 0 k_moe_down, 2 two rows per warp) */
        const int dwk = s_dwk();
        if ((dwk == 1 || dwk == 2) && K <= 8 && vec_i && I <= 32 * 8 * DWK_MAXC) {
            dim3 gw((D + dwk - 1) / dwk, T);
            if (dwk == 1 && ne == E) /* one GPU (or column split): no expert-range test */
                CUDA_CHECK(ek_launch(k_moe_down_wk<A, O, false, 1, 0>, gw, dim3(32 * K), 0, s,
                                     out, h, down, m->ids, m->wts, K, D, I, e0, ne, nl, E, false,
                                     0));
            else if (dwk == 1)
                CUDA_CHECK(ek_launch(k_moe_down_wk<A, O, true, 1, 0>, gw, dim3(32 * K), 0, s,
                                     out, h, down, m->ids, m->wts, K, D, I, e0, ne, nl, E, false,
                                     0));
            else if (ne == E)
                CUDA_CHECK(ek_launch(k_moe_down_wk<A, O, false, 2, 0>, gw, dim3(32 * K), 0, s,
                                     out, h, down, m->ids, m->wts, K, D, I, e0, ne, nl, E, false,
                                     0));
            else
                CUDA_CHECK(ek_launch(k_moe_down_wk<A, O, true, 2, 0>, gw, dim3(32 * K), 0, s,
                                     out, h, down, m->ids, m->wts, K, D, I, e0, ne, nl, E, false,
                                     0));
            return 0;
        }
        dim3 g2((D + 7) / 8, T);
        if (vec_i && ne == E) /* one GPU (or column split): no expert-range test */
            CUDA_CHECK(ek_launch(k_moe_down<A, O, true, false>, g2, dim3(256), 0, s, out, h, down,
                                 m->ids, m->wts, K, D, I, e0, ne));
        else if (vec_i)
            CUDA_CHECK(ek_launch(k_moe_down<A, O, true, true>, g2, dim3(256), 0, s, out, h, down,
                                 m->ids, m->wts, K, D, I, e0, ne));
        else
            CUDA_CHECK(ek_launch(k_moe_down<A, O, false, true>, g2, dim3(256), 0, s, out, h,
                                 down, m->ids, m->wts, K, D, I, e0, ne));
        return 0;
    }
    const int bm = s_moe_bm(TK, ne);
    int max_tiles = s_max_tiles(TK, E, bm);
    CUDA_CHECK(cudaMemsetAsync(m->counts, 0, (size_t)E * 4, s));
    k_moe_count<<<(TK + 255) / 256, 256, 0, s>>>(m->counts, m->ids, TK, e0, ne);
    CUDA_LAUNCH_CHECK();
    k_moe_scan<<<1, 128, 0, s>>>(m->counts, m->offsets, m->cursor, m->tiles, m->n_tiles, ne, bm);
    CUDA_LAUNCH_CHECK();
    /* 16-byte rows (OM_CUDA_MOE_VEC=0: the scalar loops, for A/B) */
    static const bool vec_env = !(getenv("OM_CUDA_MOE_VEC") && !strcmp(getenv("OM_CUDA_MOE_VEC"), "0"));
    const bool vec = (ek_moe_vec_sel >= 0 ? ek_moe_vec_sel != 0 : vec_env) && D % 8 == 0;
    if (vec && sizeof(A) == 2)
        k_moe_permute<A, true><<<TK, 256, 0, s>>>(m->xp, m->pos, m->cursor, x, m->ids, K, D, e0, ne);
    else
        k_moe_permute<A, false><<<TK, 256, 0, s>>>(m->xp, m->pos, m->cursor, x, m->ids, K, D, e0,
                                                   ne);
    CUDA_LAUNCH_CHECK();
    bf16 *h = (bf16 *)m->h;
    r = s_moe_gemm<true>(s, bm, h, m->xp, gate, up, m->offsets, m->tiles, m->n_tiles, max_tiles,
                         I, D);
    if (r < 0)
        return r;
    r = s_moe_gemm<false>(s, bm, m->y, h, down, nullptr, m->offsets, m->tiles, m->n_tiles,
                          max_tiles, D, I);
    if (r < 0)
        return r;
    if (vec)
        k_moe_unpermute<A, O, true><<<T, 256, 0, s>>>(out, m->y, m->pos, m->wts, K, D);
    else
        k_moe_unpermute<A, O, false><<<T, 256, 0, s>>>(out, m->y, m->pos, m->wts, K, D);
    CUDA_LAUNCH_CHECK();
    return 0;
}

#define EK_INST_MOE(A, O)                                                                          \
    template int ek_moe<A, O>(const ek_ctx *, O *, const A *, const bf16 *, const bf16 *,         \
                              const bf16 *, const bf16 *, int, int, int, int, int, bool, int,     \
                              const ek_moe_scratch *, int, int);                                  \
    template int ek_moe_experts<A, O>(const ek_ctx *, O *, const A *, const bf16 *, const bf16 *, \
                                      const bf16 *, int, int, int, int, int, int,                 \
                                      const ek_moe_scratch *, int, int, int *, int, bool);
EK_INST_MOE(float, float)
EK_INST_MOE(bf16, bf16)
EK_INST_MOE(bf16, float)
#undef EK_INST_MOE

int ek_router_fused(cudaStream_t s, const ek_moe_scratch *m, int *counter, const bf16 *router,
                    int T, int E, int D, int K, bool norm, const bf16 *h_in, const bf16 *delta,
                    bf16 *h_out, const bf16 *nw, float eps, bf16 *xn_out, bool topk) {
    if (!ek_gemv_norm_supported(T, D) || E > 512 || K > 32)
        return -EINVAL;
    size_t sm = (size_t)T * D * 2;
    if (sm < (size_t)8 * E * 4)
        sm = (size_t)8 * E * 4;
    int blocks = (E + 7) / 8;
    cudaError_t e = cudaSuccess;
#define RF_CASE(NT_)                                                                               \
    case NT_:                                                                                      \
        e = topk ? ek_launch(k_router_fused<NT_, true>, dim3(blocks), dim3(256), sm, s, m->ids,    \
                             m->wts, m->logits, counter, router, E, D, K, norm, h_in, delta,       \
                             h_out, nw, eps, xn_out)                                               \
                 : ek_launch(k_router_fused<NT_, false>, dim3(blocks), dim3(256), sm, s, m->ids,   \
                             m->wts, m->logits, counter, router, E, D, K, norm, h_in, delta,       \
                             h_out, nw, eps, xn_out);                                              \
        break;
    switch (T) {
        RF_CASE(1) RF_CASE(2) RF_CASE(3) RF_CASE(4) RF_CASE(5) RF_CASE(6) RF_CASE(7) RF_CASE(8)
    }
#undef RF_CASE
    CUDA_CHECK(e);
    return 0;
}

/* --- test hook: expert ranges vs the full block (eng_cuda.h) ------------------------------- */

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "eng_cuda.h"

static float s_h_bf16(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float s_h_round_bf16(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) != 0x7f800000u)
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&v, &u, 4);
    return v;
}

extern "C" int eng_cuda_moe_range_check(int device, int T, int D, int I, int E, int K,
                                        int n_ranks, int mode, bool f32_out, double *ret_nmse,
                                        double *ret_max_abs, double *ret_max_ref,
                                        int *ret_zero_bad, int *ret_idle, char *err,
                                        size_t errlen) {
    if (T < 1 || D < 8 || D % 8 || I < 1 || E < 1 || E > 512 || K < 1 || K > E || K > 32 ||
        n_ranks < 1 || E % n_ranks || mode < 0 || mode > 2) {
        snprintf(err, errlen, "moe range check: bad shape T %d D %d I %d E %d K %d ranks %d mode %d",
                 T, D, I, E, K, n_ranks, mode);
        return -EINVAL;
    }
    int rc = 0;
    cudaStream_t s = nullptr;
    cublasHandle_t blas = nullptr;
    std::vector<void *> mem;
    const size_t xd = (size_t)T * D, ei = (size_t)I * D;
    bf16 *x = nullptr, *router = nullptr, *gate = nullptr, *up = nullptr, *down = nullptr;
    bf16 *full = nullptr, *p16 = nullptr;
    float *p32 = nullptr;
    void *msb = nullptr;
    ek_moe_scratch ms;
    std::vector<uint16_t> hfull(xd), h16(xd);
    std::vector<float> h32(xd), sum(xd, 0.0f);
    std::vector<int32_t> ids((size_t)T * K);
    int zero_bad = 0, idle = 0;
#define RC_CUDA(expr)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            snprintf(err, errlen, "moe range check: %s: %s", #expr, cudaGetErrorString(e_));       \
            rc = -EIO;                                                                             \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)
#define RC_K(expr)                                                                                 \
    do {                                                                                           \
        int r_ = (expr);                                                                           \
        if (r_ < 0) {                                                                              \
            snprintf(err, errlen, "moe range check: %s: %d", #expr, r_);                           \
            rc = r_;                                                                               \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)
    {
        RC_CUDA(cudaSetDevice(device));
        RC_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
        if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS || cublasSetStream(blas, s) !=
                                                                CUBLAS_STATUS_SUCCESS) {
            snprintf(err, errlen, "moe range check: cuBLAS setup failed");
            rc = -EIO;
            goto out;
        }
        auto alloc = [&](void **p, size_t bytes) {
            cudaError_t e = cudaMalloc(p, bytes ? bytes : 16);
            if (e == cudaSuccess)
                mem.push_back(*p);
            return e;
        };
        RC_CUDA(alloc((void **)&x, xd * 2));
        RC_CUDA(alloc((void **)&router, (size_t)E * D * 2));
        RC_CUDA(alloc((void **)&gate, E * ei * 2));
        RC_CUDA(alloc((void **)&up, E * ei * 2));
        RC_CUDA(alloc((void **)&down, E * ei * 2));
        RC_CUDA(alloc((void **)&full, xd * 2));
        RC_CUDA(alloc((void **)&p16, xd * 2));
        RC_CUDA(alloc((void **)&p32, xd * 4));
        RC_CUDA(alloc(&msb, ek_moe_scratch_bytes(T, D, I, E, K)));
        ek_moe_scratch_carve(&ms, msb, T, D, I, E, K);
        RC_K(ek_fill_random(s, x, xd, 11, 1.0f, 0.0f));
        RC_K(ek_fill_random(s, router, (size_t)E * D, 12, 0.5f, 0.0f));
        RC_K(ek_fill_random(s, gate, E * ei, 13, 0.05f, 0.0f));
        RC_K(ek_fill_random(s, up, E * ei, 14, 0.05f, 0.0f));
        RC_K(ek_fill_random(s, down, E * ei, 15, 0.05f, 0.0f));
        ek_ctx kc = {s, blas, nullptr, 0, 8};
        RC_K(ek_moe<bf16>(&kc, full, x, router, gate, up, down, T, D, I, E, K, true, mode, &ms));
        RC_CUDA(cudaMemcpyAsync(hfull.data(), full, xd * 2, cudaMemcpyDeviceToHost, s));
        RC_CUDA(cudaMemcpyAsync(ids.data(), ms.ids, ids.size() * 4, cudaMemcpyDeviceToHost, s));
        const int ne = E / n_ranks;
        for (int r = 0; r < n_ranks; r++) {
            const int e0 = r * ne;
            const size_t wo = (size_t)e0 * ei;
            /* NaN fill: a row the kernels leave unwritten shows */
            RC_CUDA(cudaMemsetAsync(p32, 0xff, xd * 4, s));
            RC_CUDA(cudaMemsetAsync(p16, 0xff, xd * 2, s));
            if (f32_out) {
                RC_K((ek_moe<bf16, float>(&kc, p32, x, router, gate + wo, up + wo, down + wo, T, D,
                                          I, E, K, true, mode, &ms, e0, ne)));
                RC_CUDA(cudaMemcpyAsync(h32.data(), p32, xd * 4, cudaMemcpyDeviceToHost, s));
            } else {
                RC_K((ek_moe<bf16, bf16>(&kc, p16, x, router, gate + wo, up + wo, down + wo, T, D,
                                         I, E, K, true, mode, &ms, e0, ne)));
                RC_CUDA(cudaMemcpyAsync(h16.data(), p16, xd * 2, cudaMemcpyDeviceToHost, s));
            }
            RC_CUDA(cudaStreamSynchronize(s));
            for (int t = 0; t < T; t++) {
                bool any = false;
                for (int k = 0; k < K; k++)
                    any |= ids[(size_t)t * K + k] >= e0 && ids[(size_t)t * K + k] < e0 + ne;
                for (int d = 0; d < D; d++) {
                    size_t i = (size_t)t * D + d;
                    float v = f32_out ? h32[i] : s_h_bf16(h16[i]);
                    if (!any && v != 0.0f) /* also NaN: unwritten */
                        zero_bad++;
                    sum[i] += v;
                }
                idle += !any;
            }
        }
        double num = 0, den = 0, mx = 0, mref = 0;
        for (size_t i = 0; i < xd; i++) {
            double a = f32_out ? s_h_round_bf16(sum[i]) : sum[i], b = s_h_bf16(hfull[i]);
            double d = a - b;
            if (!(fabs(d) <= mx)) /* NaN propagates into max */
                mx = fabs(d);
            num += d * d;
            den += b * b;
            mref = fmax(mref, fabs(b));
        }
        *ret_nmse = den > 0 ? num / den : num;
        *ret_max_abs = mx;
        *ret_max_ref = mref;
        *ret_zero_bad = zero_bad;
        *ret_idle = idle;
    }
out:
#undef RC_CUDA
#undef RC_K
    if (s)
        cudaStreamSynchronize(s);
    for (void *p : mem)
        cudaFree(p);
    if (blas)
        cublasDestroy(blas);
    if (s)
        cudaStreamDestroy(s);
    return rc;
}
