/* eng_cuda_attn.cu: paged causal GQA attention for the CUDA backend.
 *
 *  - k_attn128 (bf16 KV, head_dim 128: the model runner's decode path): one block per (key
 *    split, KV head, token), warp g = query head kvh·G + g; lanes over head_dim for K and V, so
 *    each cache row is one coalesced 256-byte warp read, 16 rows in flight; few registers.
 *  - k_attn (any head_dim <= 256, f32 or bf16 KV): same grid; each lane scores one key per
 *    32-key chunk, V accumulated with lanes over head_dim. Used by the vtable and tiny models.
 *  Both split the keys over blocks (flash-decoding, >= 64 keys per split) when n_splits > 1; the
 *  last block of each (token, KV head) merges the partial (o, m, l) itself (self-resetting
 *  counter, graph-safe), or k_attn_combine does when no counters are given.
 *  - k_attn_prefill: tiled flash-style prefill on tensor cores (WMMA bf16, f32 accumulate):
 *    64 queries of one sequence per block, 64-key tiles gathered through the block table, online
 *    softmax in f32, O kept in shared memory in f32.
 * All read K/V from the paged pools (n_slots, Hk·hd) through block tables (eng_batch.h). */
#include <cstdlib>
#include <mma.h>

#include "eng_cuda_kern.cuh"

using namespace nvcuda;

/* --- split-K decode / generic attention --------------------------------------------------- */

/* NI values per lane; contiguous (lane*NI .. +NI) when hd == 32*NI, else strided (lane + 32*i). */
template <int NI, typename KV>
__device__ __forceinline__ void s_ldv(const KV *row, int hd, int lane, float *v) {
    if (hd == 32 * NI) {
        const KV *p = row + lane * NI;
        if (sizeof(KV) == 2) {
            const bf16 *b = reinterpret_cast<const bf16 *>(p);
            if (NI == 8) {
                ld8(b, v);
            } else if (NI == 4) {
                uint2 u = *reinterpret_cast<const uint2 *>(b);
                const __nv_bfloat162 *h2 = reinterpret_cast<const __nv_bfloat162 *>(&u);
                float2 a0 = __bfloat1622float2(h2[0]), a1 = __bfloat1622float2(h2[1]);
                v[0] = a0.x; v[1] = a0.y; v[2 % NI] = a1.x; v[3 % NI] = a1.y;
            } else if (NI == 2) {
                float2 a0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(b));
                v[0] = a0.x; v[1 % NI] = a0.y;
            } else {
                v[0] = __bfloat162float(b[0]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < NI; i++)
                v[i] = ld(&p[i]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < NI; i++) {
            int d = lane + 32 * i;
            v[i] = d < hd ? ld(&row[d]) : 0.0f;
        }
    }
}

/* Writes a warp's (head h) result: the normalised output when n_splits == 1, else its partial
 * (o, m, l); with counters, the last split block of (t, kvh) merges the partials of its heads.
 * o: NI values per lane, contiguous (lane*NI + i) when contig, else strided (lane + 32*i). */
template <int NI>
__device__ __forceinline__ void s_attn_finish(const float *o, float m, float l, bool contig,
                                              float *out_f, bf16 *out_b, float *partial,
                                              int *counters, int t, int h, int kvh, int g,
                                              int Hq, int Hk, int hd, int split, int n_splits) {
    const int lane = threadIdx.x & 31;
    if (n_splits == 1) {
#pragma unroll
        for (int i = 0; i < NI; i++) {
            int d = contig ? lane * NI + i : lane + 32 * i;
            if (d < hd) {
                float v = l > 0.0f ? o[i] / l : 0.0f;
                int64_t oi = ((int64_t)t * Hq + h) * hd + d;
                if (out_f)
                    out_f[oi] = v;
                else
                    out_b[oi] = __float2bfloat16(v);
            }
        }
        return;
    }
    float *pp = partial + (((int64_t)t * Hq + h) * n_splits + split) * (hd + 2);
#pragma unroll
    for (int i = 0; i < NI; i++) {
        int d = contig ? lane * NI + i : lane + 32 * i;
        if (d < hd)
            pp[d] = o[i];
    }
    if (lane == 0) {
        pp[hd] = m;
        pp[hd + 1] = l;
    }
    if (!counters)
        return;
    /* the last split block of this (token, KV head) merges the partials of its G heads */
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0)
        last = atomicAdd(&counters[(int64_t)t * Hk + kvh], 1) == n_splits - 1;
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    /* warp g merges head g: per-split weights once (lane = split, n_splits <= 32), then lanes
       over head_dim with the split loop unrolled so the partial loads are in flight together */
    __shared__ float wsh[16][32];
    const float *pb = partial + ((int64_t)t * Hq + h) * n_splits * (hd + 2);
    float mm = lane < n_splits ? __ldcg(&pb[lane * (hd + 2) + hd]) : -INFINITY;
    float ll = lane < n_splits ? __ldcg(&pb[lane * (hd + 2) + hd + 1]) : 0.0f;
    float MM = warp_max(mm);
    float w = (MM == -INFINITY || mm == -INFINITY) ? 0.0f : __expf(mm - MM);
    float LL = warp_sum(ll * w);
    wsh[g][lane] = w;
    __syncwarp();
    for (int d = lane; d < hd; d += 32) {
        float acc = 0.0f;
#pragma unroll 8
        for (int sp = 0; sp < n_splits; sp++)
            acc = fmaf(wsh[g][sp], __ldcg(&pb[sp * (hd + 2) + d]), acc);
        float v = LL > 0.0f ? acc / LL : 0.0f;
        int64_t oi = ((int64_t)t * Hq + h) * hd + d;
        if (out_f)
            out_f[oi] = v;
        else
            out_b[oi] = __float2bfloat16(v);
    }
    if (threadIdx.x == 0)
        counters[(int64_t)t * Hk + kvh] = 0;
}


/* One block per (key split, KV head, token); warp g serves query head kvh·G + g, so the G warps of
 * a block read the same K/V rows (L1 hits) and the cache is read once per KV head. Each lane
 * scores one key per 32-key chunk (whole row, 16-byte loads); V is accumulated with lanes over
 * head_dim and 8 keys in flight. Splits hold at least 64 keys. */
template <int NI, typename Q, typename KV>
__global__ void __launch_bounds__(512)
    k_attn(float *out_f, bf16 *out_b, const Q *q, const KV *kpool, const KV *vpool,
           const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *bt, int Hq, int Hk,
           int hd, int max_blocks, int bs, float scale, int n_splits, float *partial,
           int q_stride, int *counters) {
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
    const int G = Hq / Hk;
    const int g = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = kvh * G + g;
    pdl_wait();
    pdl_trigger();
    const int len = tok_pos[t] + 1, s = tok_seq[t];
    int chunk = (len + n_splits - 1) / n_splits;
    chunk = chunk < 64 ? 64 : chunk;
    chunk = (chunk + 31) & ~31;
    const int k0 = split * chunk;
    const int k1 = min(len, k0 + chunk);
    extern __shared__ float qs_all[];
    float *qs = qs_all + g * hd;
    for (int d = lane; d < hd; d += 32)
        qs[d] = ld(&q[(int64_t)t * q_stride + (int64_t)h * hd + d]);
    __syncwarp();
    float m = -INFINITY, l = 0.0f, o[NI];
#pragma unroll
    for (int i = 0; i < NI; i++)
        o[i] = 0.0f;
    const int32_t *tab = bt + (int64_t)s * max_blocks;
    const bool vec = (hd % 8) == 0 && sizeof(KV) == 2;
    for (int base = k0; base < k1; base += 32) {
        int p = base + lane;
        bool valid = p < k1;
        float score = -INFINITY;
        int64_t slot = 0;
        if (valid) {
            slot = (int64_t)tab[p / bs] * bs + p % bs;
            const KV *kr = kpool + (slot * Hk + kvh) * hd;
            float dot = 0.0f;
            if (vec && hd == 32 * NI) {
                /* compile-time row length: all 16-byte loads of the row issued up front */
                float kf[32 * NI];
#pragma unroll
                for (int d = 0; d < 32 * NI; d += 8)
                    ld8(reinterpret_cast<const bf16 *>(kr) + d, kf + d);
#pragma unroll
                for (int d = 0; d < 32 * NI; d++)
                    dot = fmaf(qs[d], kf[d], dot);
            } else if (vec) {
#pragma unroll 4
                for (int d = 0; d < hd; d += 8) {
                    float kf[8];
                    ld8(reinterpret_cast<const bf16 *>(kr) + d, kf);
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        dot = fmaf(qs[d + i], kf[i], dot);
                }
            } else {
                for (int d = 0; d < hd; d++)
                    dot = fmaf(qs[d], ld(&kr[d]), dot);
            }
            score = dot * scale;
        }
        float cmax = warp_max(score);
        float m_new = fmaxf(m, cmax);
        float alpha, pj;
        if (m_new == -INFINITY) {
            alpha = 1.0f;
            pj = 0.0f;
        } else {
            alpha = __expf(m - m_new);
            pj = valid ? __expf(score - m_new) : 0.0f;
        }
        l = l * alpha + warp_sum(pj);
#pragma unroll
        for (int i = 0; i < NI; i++)
            o[i] *= alpha;
        const int nvalid = min(32, k1 - base);
        for (int j0 = 0; j0 < nvalid; j0 += 8) {
            /* 8 V rows in flight: loads are unconditional (invalid keys reuse key j0, weight 0) */
            float v[8][NI], pw[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                int j = j0 + u < nvalid ? j0 + u : j0;
                float pjj = __shfl_sync(0xffffffffu, pj, j);
                int64_t sj = __shfl_sync(0xffffffffu, slot, j);
                pw[u] = j0 + u < nvalid ? pjj : 0.0f;
                s_ldv<NI, KV>(vpool + (sj * Hk + kvh) * hd, hd, lane, v[u]);
            }
#pragma unroll
            for (int u = 0; u < 8; u++)
#pragma unroll
                for (int i = 0; i < NI; i++)
                    o[i] = fmaf(pw[u], v[u][i], o[i]);
        }
        m = m_new;
    }
    s_attn_finish<NI>(o, m, l, hd == 32 * NI, out_f, out_b, partial, counters, t, h, kvh, g, Hq,
                      Hk, hd, split, n_splits);
}

/* Decode-oriented variant for bf16 KV and head_dim 128: lanes over head_dim for K as well as V,
 * so every K/V row is one coalesced 256-byte warp access; 16 rows in flight per batch, scores
 * reduced with warp sums; few registers, so many warps per SM hide the memory latency. Same
 * grid, partials and merge as k_attn. */
__device__ __forceinline__ void s_bf4(uint2 u, float *f) {
    const __nv_bfloat162 *h2 = reinterpret_cast<const __nv_bfloat162 *>(&u);
    float2 a = __bfloat1622float2(h2[0]), b = __bfloat1622float2(h2[1]);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
}

template <typename Q>
__global__ void __launch_bounds__(512)
    k_attn128(float *out_f, bf16 *out_b, const Q *q, const bf16 *kpool, const bf16 *vpool,
              const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *bt, int Hq, int Hk,
              int max_blocks, int bs, float scale, int n_splits, float *partial, int q_stride,
              int *counters) {
    constexpr int HD = 128;
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
    const int G = Hq / Hk;
    const int g = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = kvh * G + g;
    pdl_wait();
    pdl_trigger();
    const int len = tok_pos[t] + 1, sq = tok_seq[t];
    int chunk = (len + n_splits - 1) / n_splits;
    chunk = chunk < 64 ? 64 : chunk;
    chunk = (chunk + 31) & ~31;
    const int k0 = split * chunk;
    const int k1 = min(len, k0 + chunk);
    float qv[4];
#pragma unroll
    for (int i = 0; i < 4; i++)
        qv[i] = ld(&q[(int64_t)t * q_stride + (int64_t)h * HD + lane * 4 + i]) * scale;
    float m = -INFINITY, l = 0.0f, o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int32_t *tab = bt + (int64_t)sq * max_blocks;
    for (int base = k0; base < k1; base += 32) {
        const int p = base + lane;
        const bool valid = p < k1;
        const int64_t slot = valid ? (int64_t)tab[p / bs] * bs + p % bs : 0;
        const int nvalid = min(32, k1 - base);
        float sc = -INFINITY;
        for (int j0 = 0; j0 < nvalid; j0 += 16) {
            uint2 raw[16];
#pragma unroll
            for (int u = 0; u < 16; u++) {
                int j = j0 + u < nvalid ? j0 + u : j0;
                int64_t sj = __shfl_sync(0xffffffffu, slot, j);
                raw[u] = *reinterpret_cast<const uint2 *>(kpool + (sj * Hk + kvh) * HD + lane * 4);
            }
#pragma unroll
            for (int u = 0; u < 16; u++) {
                float kf[4];
                s_bf4(raw[u], kf);
                float part = qv[0] * kf[0] + qv[1] * kf[1] + qv[2] * kf[2] + qv[3] * kf[3];
                part = warp_sum(part);
                if (lane == j0 + u && j0 + u < nvalid)
                    sc = part;
            }
        }
        float cmax = warp_max(sc);
        float m_new = fmaxf(m, cmax);
        float alpha, pj;
        if (m_new == -INFINITY) {
            alpha = 1.0f;
            pj = 0.0f;
        } else {
            alpha = __expf(m - m_new);
            pj = valid ? __expf(sc - m_new) : 0.0f;
        }
        l = l * alpha + warp_sum(pj);
#pragma unroll
        for (int i = 0; i < 4; i++)
            o[i] *= alpha;
        for (int j0 = 0; j0 < nvalid; j0 += 16) {
            uint2 raw[16];
            float pw[16];
#pragma unroll
            for (int u = 0; u < 16; u++) {
                int j = j0 + u < nvalid ? j0 + u : j0;
                int64_t sj = __shfl_sync(0xffffffffu, slot, j);
                float pjj = __shfl_sync(0xffffffffu, pj, j);
                pw[u] = j0 + u < nvalid ? pjj : 0.0f;
                raw[u] = *reinterpret_cast<const uint2 *>(vpool + (sj * Hk + kvh) * HD + lane * 4);
            }
#pragma unroll
            for (int u = 0; u < 16; u++) {
                float vf[4];
                s_bf4(raw[u], vf);
#pragma unroll
                for (int i = 0; i < 4; i++)
                    o[i] = fmaf(pw[u], vf[i], o[i]);
            }
        }
        m = m_new;
    }
    s_attn_finish<4>(o, m, l, true, out_f, out_b, partial, counters, t, h, kvh, g, Hq, Hk, HD,
                     split, n_splits);
}

__global__ void k_attn_combine(float *out_f, bf16 *out_b, const float *partial, int Hq, int hd,
                               int n_splits) {
    int h = blockIdx.x, t = blockIdx.y;
    const float *pp = partial + ((int64_t)t * Hq + h) * n_splits * (hd + 2);
    float M = -INFINITY;
    for (int sp = 0; sp < n_splits; sp++)
        M = fmaxf(M, pp[sp * (hd + 2) + hd]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float acc = 0.0f, L = 0.0f;
        for (int sp = 0; sp < n_splits; sp++) {
            const float *q = pp + sp * (hd + 2);
            float w = (M == -INFINITY || q[hd] == -INFINITY) ? 0.0f : __expf(q[hd] - M);
            acc += q[d] * w;
            L += q[hd + 1] * w;
        }
        float v = L > 0.0f ? acc / L : 0.0f;
        int64_t oi = ((int64_t)t * Hq + h) * hd + d;
        if (out_f)
            out_f[oi] = v;
        else
            out_b[oi] = __float2bfloat16(v);
    }
}

/* --- decode attention, bf16 KV, head_dim 128 (k_attn_dec) ---------------------------------- */

/* One block per (key split, KV head, token) with G warps (warp g = query head kvh·G + g). The
 * split's keys are processed in tiles of DEC_TILE positions: the K and V rows of a tile are copied
 * into shared memory with cp.async (all rows of a tile in flight at once, two tiles in flight),
 * so a block makes a handful of dependent memory round trips instead of one per 16 keys: metadata
 * -> block-table entries -> K/V tile -> compute -> partial -> merge. Scores: lane = key (two keys
 * per lane, whole 128-dim dot product from shared memory, no shuffles); P·V: lanes over head_dim.
 * Splits hold a multiple of DEC_TILE keys (chunk = ceil(len / n_splits) rounded up), so short
 * contexts use few blocks and few partials; splits past the end of the context return at once.
 * More than one active split: partials (o, m, l) are written and the last block of (token, KV
 * head) merges them (counter, self-resetting, graph-safe).
 * prewait (the model runner's decode steps only, where every sequence has exactly one new token):
 * the metadata and the K/V rows of positions < tok_pos (written by earlier steps) are loaded
 * before the PDL wait, overlapping the previous kernels; the new token's row and q after it.
 * ROPE (ek_attention_decode_rope, decode steps, OM_CUDA_ATTN_ROPE): q is the raw QKV output; each
 * block applies k_qk_norm_rope's row math (cos/sin before the PDL wait: ek_qk_cossin; then
 * ek_qk_rot) to the q rows of its G heads, and warp 0 of the last active split (the one holding
 * position len - 1) to the new token's k: it writes k and v to the paged pools at slots[t] and
 * into the shared-memory tile itself (tile 0/1 directly, a later tile through kst/vst when that
 * tile is issued), so the new row is never read from the cache and k_qk_norm_rope is not
 * launched. */
#define DEC_TILE 64
#define DEC_HD 128
#define DEC_KS (DEC_HD + 8) /* K row stride in shared memory (bf16): conflict-free row reads */

__device__ __forceinline__ void dec_cp16(void *sm, const void *g) {
    unsigned s = (unsigned)__cvta_generic_to_shared(sm);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(g));
}
__device__ __forceinline__ void dec_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void dec_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }

/* rope: + the new token's K and V rows (bf16) staged for a tile past the first two */
static size_t dec_smem_bytes(int G, bool rope) {
    return (size_t)2 * DEC_TILE * DEC_KS * 2 + (size_t)2 * DEC_TILE * DEC_HD * 2 +
           (size_t)G * DEC_HD * 4 + (size_t)G * DEC_TILE * 4 + (size_t)G * 32 * 4 +
           (rope ? (size_t)2 * DEC_HD * 2 : 0);
}

/* Issues the cp.async copies of positions [p0, p1) (at most DEC_TILE) into Ks/Vs, skipping
 * position skip; if kst: row skip is copied from the shared-memory rows kst/vst instead (plain
 * stores, visible after the consumer's __syncthreads). Thread mapping: warp w copies rows w,
 * w + nw, ...; lanes 0-15 the K chunks, 16-31 the V chunks of a row (16 bytes each). */
__device__ __forceinline__ void dec_issue(bf16 *Ks, bf16 *Vs, const bf16 *kpool, const bf16 *vpool,
                                          const int32_t *tab, int bs, int Hk, int kvh, int p0,
                                          int p1, int skip, const bf16 *kst = nullptr,
                                          const bf16 *vst = nullptr) {
    const int nw = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int c = (lane & 15) * 8;
    for (int r = w; r < p1 - p0; r += nw) {
        const int p = p0 + r;
        if (p == skip) {
            if (kst) {
                if (lane < 16)
                    *reinterpret_cast<uint4 *>(Ks + r * DEC_KS + c) =
                        *reinterpret_cast<const uint4 *>(kst + c);
                else
                    *reinterpret_cast<uint4 *>(Vs + r * DEC_HD + c) =
                        *reinterpret_cast<const uint4 *>(vst + c);
            }
            continue;
        }
        const int64_t slot = (int64_t)tab[p / bs] * bs + p % bs;
        const int64_t off = (slot * Hk + kvh) * DEC_HD + c;
        if (lane < 16)
            dec_cp16(Ks + r * DEC_KS + c, kpool + off);
        else
            dec_cp16(Vs + r * DEC_HD + c, vpool + off);
    }
}

template <typename Q, typename O, bool ROPE>
__global__ void __launch_bounds__(512)
    k_attn_dec(O *out, const Q *q, const bf16 *kpool, const bf16 *vpool, const int32_t *tok_seq,
               const int32_t *tok_pos, const int32_t *bt, int Hq, int Hk, int max_blocks, int bs,
               float scale, int n_splits, float *partial, int q_stride, int *counters,
               int prewait, ek_dec_rope rp) {
    extern __shared__ __align__(16) unsigned char dsm[];
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z, T = gridDim.z;
    const int G = Hq / Hk;
    const int g = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = kvh * G + g;
    bf16 *Kb = reinterpret_cast<bf16 *>(dsm);                 /* [2][DEC_TILE][DEC_KS] */
    bf16 *Vb = Kb + 2 * DEC_TILE * DEC_KS;                     /* [2][DEC_TILE][DEC_HD] */
    float *qs = reinterpret_cast<float *>(Vb + 2 * DEC_TILE * DEC_HD); /* [G][DEC_HD] */
    float *ps = qs + G * DEC_HD;                               /* [G][DEC_TILE] */
    float *wsh = ps + G * DEC_TILE;                            /* [G][32] */
    bf16 *kst = reinterpret_cast<bf16 *>(wsh + G * 32);        /* ROPE: [DEC_HD] new K row */
    bf16 *vst = kst + DEC_HD;                                  /* ROPE: [DEC_HD] new V row */
    if (!prewait) {
        pdl_wait();
        pdl_trigger();
    }
    const int len = tok_pos[t] + 1, sq = tok_seq[t];
    int chunk = (len + n_splits - 1) / n_splits;
    chunk = (chunk + DEC_TILE - 1) / DEC_TILE * DEC_TILE;
    const int n_active = (len + chunk - 1) / chunk;
    const int k0 = split * chunk, k1 = min(len, k0 + chunk);
    if (split >= n_active) {
        if (prewait) {
            pdl_wait();
            pdl_trigger();
        }
        return;
    }
    const int32_t *tab = bt + (int64_t)sq * max_blocks;
    const int n_tiles = (k1 - k0 + DEC_TILE - 1) / DEC_TILE;
    /* ROPE: the new token's row (position len - 1, in the last active split) is computed here,
       never read from the cache; else with prewait it is loaded after the wait */
    const bool owner = ROPE && split == n_active - 1; /* writes the new K/V row */
    const int late = (prewait || ROPE) ? len - 1 : -1;
    /* ROPE, before the wait: step metadata and weights only */
    float nwq[8], nwk[8], csv[8], snv[8];
    if (ROPE) {
        float ifv[8];
        ek_qk_pre<bf16>(nwq, ifv, rp.q_norm, rp.inv_freq, DEC_HD, lane);
        if (owner && g == 0)
            ek_qk_pre<bf16>(nwk, ifv, rp.k_norm, rp.inv_freq, DEC_HD, lane);
        /* q and the new k share the token's positions: cos/sin once, before the wait */
        ek_qk_cossin<bf16>(csv, snv, ifv, rp.pos3[t], rp.pos3[T + t], rp.pos3[2 * T + t],
                           DEC_HD, rp.sec1, rp.sec2, lane);
    }
    /* tiles 0 and 1 in flight, without row late */
    dec_issue(Kb, Vb, kpool, vpool, tab, bs, Hk, kvh, k0, min(k1, k0 + DEC_TILE), late);
    dec_commit();
    if (n_tiles > 1)
        dec_issue(Kb + DEC_TILE * DEC_KS, Vb + DEC_TILE * DEC_HD, kpool, vpool, tab, bs, Hk, kvh,
                  k0 + DEC_TILE, min(k1, k0 + 2 * DEC_TILE), late);
    dec_commit();
    if (prewait) {
        pdl_wait();
        pdl_trigger();
    }
    if (ROPE) {
        /* q rows of the raw QKV output (q_stride apart): q (Hq·128), k (Hk·128), v (Hk·128) */
        const Q *qrow = q + (int64_t)t * q_stride;
        float *buf = qs + g * DEC_HD; /* this warp's scratch, then its scaled q */
        float xv[8], outv[8];
        if (owner && g == 0) {
            /* the new key: k_qk_norm_rope's math; k and v to the cache slot and to the tile row
               (tiles 0/1, visible after the loop's first __syncthreads) or to kst/vst (a later
               tile: dec_issue copies it in) */
            const Q *kr = qrow + (int64_t)(Hq + kvh) * DEC_HD;
            const Q *vr = qrow + (int64_t)(Hq + Hk + kvh) * DEC_HD;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const int d = lane + 32 * i;
                xv[i] = d < DEC_HD ? ld(&kr[d]) : 0.0f;
            }
            ek_qk_rot<bf16>(xv, outv, nwk, csv, snv, DEC_HD, rp.eps, buf, lane);
            const int r = late - k0;
            bf16 *kd = kst, *vd = vst;
            if (r < 2 * DEC_TILE) {
                kd = Kb + r * DEC_KS; /* (r / 64) · 64 · DEC_KS + (r % 64) · DEC_KS */
                vd = Vb + r * DEC_HD;
            }
            const int64_t o = ((int64_t)rp.slots[t] * Hk + kvh) * DEC_HD;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int d = lane + 32 * i;
                const bf16 kb = __float2bfloat16(outv[i]);
                const bf16 vb = __float2bfloat16(ld(&vr[d]));
                rp.kw[o + d] = kb;
                rp.vw[o + d] = vb;
                kd[d] = kb;
                vd[d] = vb;
            }
            __syncwarp(); /* buf is reused for q */
        }
        /* q of head h: norm + rope (bf16 values, as k_qk_norm_rope stores them), scaled */
        const Q *qr = qrow + (int64_t)h * DEC_HD;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int d = lane + 32 * i;
            xv[i] = d < DEC_HD ? ld(&qr[d]) : 0.0f;
        }
        ek_qk_rot<bf16>(xv, outv, nwq, csv, snv, DEC_HD, rp.eps, buf, lane);
        __syncwarp(); /* every lane has read buf */
#pragma unroll
        for (int i = 0; i < 4; i++)
            buf[lane + 32 * i] = outv[i] * scale;
    } else {
        if (prewait) {
            /* the new token's row, written by the previous kernel, if it is in tile 0 or 1 */
            const int r = late - k0;
            if (late < k1 && r < 2 * DEC_TILE && threadIdx.x < 32) {
                const int64_t slot = (int64_t)tab[late / bs] * bs + late % bs;
                const int64_t off = (slot * Hk + kvh) * DEC_HD + (lane & 15) * 8;
                const int b = r / DEC_TILE, rr = r % DEC_TILE;
                if (lane < 16)
                    *reinterpret_cast<uint4 *>(Kb + (b * DEC_TILE + rr) * DEC_KS +
                                               (lane & 15) * 8) =
                        __ldcg(reinterpret_cast<const uint4 *>(kpool + off));
                else
                    *reinterpret_cast<uint4 *>(Vb + (b * DEC_TILE + rr) * DEC_HD +
                                               (lane & 15) * 8) =
                        __ldcg(reinterpret_cast<const uint4 *>(vpool + off));
            }
        }
        /* q (scaled) of the G heads */
        for (int i = threadIdx.x; i < G * DEC_HD; i += blockDim.x)
            qs[i] = ld(&q[(int64_t)t * q_stride + (int64_t)kvh * G * DEC_HD + i]) * scale;
    }
    float m = -INFINITY, l = 0.0f, o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float *qg = qs + g * DEC_HD;
    for (int it = 0; it < n_tiles; it++) {
        dec_wait1();
        __syncthreads();
        const bf16 *Ks = Kb + (it & 1) * DEC_TILE * DEC_KS;
        const bf16 *Vs = Vb + (it & 1) * DEC_TILE * DEC_HD;
        const int p0 = k0 + it * DEC_TILE;
        const int n = min(DEC_TILE, k1 - p0);
        /* scores: keys lane and lane + 32 */
        float s0 = 0.0f, s1 = 0.0f;
        const bf16 *r0 = Ks + lane * DEC_KS, *r1 = Ks + (lane + 32) * DEC_KS;
#pragma unroll 4
        for (int c = 0; c < DEC_HD; c += 8) {
            float4 qa = *reinterpret_cast<const float4 *>(qg + c);
            float4 qb = *reinterpret_cast<const float4 *>(qg + c + 4);
            float ka[8], kb[8];
            ld8(r0 + c, ka);
            ld8(r1 + c, kb);
            s0 = fmaf(qa.x, ka[0], s0); s0 = fmaf(qa.y, ka[1], s0);
            s0 = fmaf(qa.z, ka[2], s0); s0 = fmaf(qa.w, ka[3], s0);
            s0 = fmaf(qb.x, ka[4], s0); s0 = fmaf(qb.y, ka[5], s0);
            s0 = fmaf(qb.z, ka[6], s0); s0 = fmaf(qb.w, ka[7], s0);
            s1 = fmaf(qa.x, kb[0], s1); s1 = fmaf(qa.y, kb[1], s1);
            s1 = fmaf(qa.z, kb[2], s1); s1 = fmaf(qa.w, kb[3], s1);
            s1 = fmaf(qb.x, kb[4], s1); s1 = fmaf(qb.y, kb[5], s1);
            s1 = fmaf(qb.z, kb[6], s1); s1 = fmaf(qb.w, kb[7], s1);
        }
        if (lane >= n)
            s0 = -INFINITY;
        if (lane + 32 >= n)
            s1 = -INFINITY;
        /* online softmax (n >= 1, so the tile max is finite) */
        const float m_new = fmaxf(m, warp_max(fmaxf(s0, s1)));
        const float alpha = __expf(m - m_new); /* 0 on the first tile (m = -inf) */
        const float e0 = __expf(s0 - m_new), e1 = __expf(s1 - m_new);
        l = l * alpha + warp_sum(e0 + e1);
        m = m_new;
        ps[g * DEC_TILE + lane] = e0;
        ps[g * DEC_TILE + lane + 32] = e1;
        __syncwarp();
#pragma unroll
        for (int i = 0; i < 4; i++)
            o[i] *= alpha;
        const float *pg = ps + g * DEC_TILE;
        const bf16 *vl = Vs + lane * 4;
#pragma unroll 8
        for (int k = 0; k < n; k++) {
            const float pk = pg[k];
            float vf[4];
            s_bf4(*reinterpret_cast<const uint2 *>(vl + k * DEC_HD), vf);
#pragma unroll
            for (int i = 0; i < 4; i++)
                o[i] = fmaf(pk, vf[i], o[i]);
        }
        __syncthreads(); /* every warp is done with this buffer and its ps row */
        if (it + 2 < n_tiles)
            dec_issue(Kb + (it & 1) * DEC_TILE * DEC_KS, Vb + (it & 1) * DEC_TILE * DEC_HD, kpool,
                      vpool, tab, bs, Hk, kvh, p0 + 2 * DEC_TILE,
                      min(k1, p0 + 3 * DEC_TILE), owner ? late : -1, kst, vst);
        dec_commit();
    }
    const int64_t oi = ((int64_t)t * Hq + h) * DEC_HD + lane * 4;
    if (n_active == 1) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++)
            st(&out[oi + i], o[i] * inv);
        return;
    }
    /* partials: o (T, Hq, n_splits, 128) then (m, l) (T, Hq, n_splits, 2) */
    const int64_t row = ((int64_t)t * Hq + h) * n_splits;
    float *po = partial;
    float *pml = partial + (int64_t)T * Hq * n_splits * DEC_HD;
    *reinterpret_cast<float4 *>(po + (row + split) * DEC_HD + lane * 4) =
        make_float4(o[0], o[1], o[2], o[3]);
    if (lane == 0)
        *reinterpret_cast<float2 *>(pml + (row + split) * 2) = make_float2(m, l);
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0)
        last = atomicAdd(&counters[(int64_t)t * Hk + kvh], 1) == n_active - 1;
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    /* warp g merges head g: weights per split (lane = split, n_active <= 32), then 4 dims per
       lane with the split loop unrolled so the partial loads are in flight together */
    const float *pr = po + row * DEC_HD + lane * 4;
    /* the first 8 partials are loaded together with (m, l): one round trip up to 8 splits */
    float4 pre[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        pre[i] = i < n_active ? __ldcg(reinterpret_cast<const float4 *>(pr + i * DEC_HD))
                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float2 ml = lane < n_active ? __ldcg(reinterpret_cast<const float2 *>(pml + (row + lane) * 2))
                                : make_float2(-INFINITY, 0.0f);
    const float MM = warp_max(ml.x);
    const float w = ml.x == -INFINITY ? 0.0f : __expf(ml.x - MM);
    const float LL = warp_sum(ml.y * w);
    wsh[g * 32 + lane] = w;
    __syncwarp();
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float ws = i < n_active ? wsh[g * 32 + i] : 0.0f;
        acc[0] = fmaf(ws, pre[i].x, acc[0]);
        acc[1] = fmaf(ws, pre[i].y, acc[1]);
        acc[2] = fmaf(ws, pre[i].z, acc[2]);
        acc[3] = fmaf(ws, pre[i].w, acc[3]);
    }
#pragma unroll 8
    for (int sp = 8; sp < n_active; sp++) {
        const float ws = wsh[g * 32 + sp];
        const float4 v = __ldcg(reinterpret_cast<const float4 *>(pr + (int64_t)sp * DEC_HD));
        acc[0] = fmaf(ws, v.x, acc[0]);
        acc[1] = fmaf(ws, v.y, acc[1]);
        acc[2] = fmaf(ws, v.z, acc[2]);
        acc[3] = fmaf(ws, v.w, acc[3]);
    }
    const float inv = LL > 0.0f ? 1.0f / LL : 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++)
        st(&out[oi + i], acc[i] * inv);
    if (threadIdx.x == 0)
        counters[(int64_t)t * Hk + kvh] = 0;
}

/* Launches k_attn_dec; -EOPNOTSUPP where it does not apply (the caller falls back). rope: the
 * decode-step variant that also does k_qk_norm_rope's work (ROPE; q is the raw QKV output). */
static bool s_attn_dec_off() {
    static const bool off = getenv("OM_CUDA_ATTN_OLD") != nullptr;
    return off;
}
template <typename Q, typename O, bool ROPE>
static int s_attn_dec(cudaStream_t s, O *out, const Q *q, const bf16 *kpool, const bf16 *vpool,
                      const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *bt, int T,
                      int Hq, int Hk, int max_blocks, int bs, float scale, int n_splits,
                      float *partial, int q_stride, int *counters, bool prewait,
                      const ek_dec_rope &rp) {
    const int G = Hq / Hk;
    if (s_attn_dec_off() || G > 16 || (n_splits > 1 && (!partial || !counters)))
        return -EOPNOTSUPP;
    if (n_splits > 32)
        n_splits = 32; /* the merge handles up to 32 partials (lane = split) */
    static thread_local int attr_bytes = 0; /* per instantiation and thread (= device, TP ranks) */
    const size_t bytes = dec_smem_bytes(G, ROPE);
    if ((int)bytes > attr_bytes) {
        CUDA_CHECK(cudaFuncSetAttribute(k_attn_dec<Q, O, ROPE>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        attr_bytes = (int)bytes;
    }
    CUDA_CHECK(ek_launch(k_attn_dec<Q, O, ROPE>, dim3(n_splits, Hk, T), dim3(32 * G), bytes, s,
                         out, q, kpool, vpool, tok_seq, tok_pos, bt, Hq, Hk, max_blocks, bs,
                         scale, n_splits, partial, q_stride, counters, prewait ? 1 : 0, rp));
    CUDA_LAUNCH_CHECK();
    return 0;
}

template <typename O> static float *s_of(O *p);
template <> float *s_of<float>(float *p) { return p; }
template <> float *s_of<bf16>(bf16 *) { return nullptr; }
template <typename O> static bf16 *s_ob(O *p);
template <> bf16 *s_ob<float>(float *) { return nullptr; }
template <> bf16 *s_ob<bf16>(bf16 *p) { return p; }

template <typename Q, typename KV, typename O>
static int s_attention(cudaStream_t s, O *out, const Q *q, const KV *kpool, const KV *vpool,
                       const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *block_tables,
                       int T, int Hq, int Hk, int hd, int max_blocks, int block_size, float scale,
                       int n_splits, float *partial, int q_stride, int *counters, bool prewait) {
    if (T == 0)
        return 0;
    if (hd > 256 || Hk <= 0 || Hq % Hk || n_splits < 1 || (n_splits > 1 && !partial))
        return -EINVAL;
    const int G = Hq / Hk;
    if (G > 16)
        return -EOPNOTSUPP;
    static const bool generic_only = getenv("OM_CUDA_ATTN_GENERIC") != nullptr;
    if (sizeof(KV) == 2 && hd == 128 && !generic_only) {
        const ek_dec_rope none = {};
        int r = s_attn_dec<Q, O, false>(s, out, q, reinterpret_cast<const bf16 *>(kpool),
                                        reinterpret_cast<const bf16 *>(vpool), tok_seq, tok_pos,
                                        block_tables, T, Hq, Hk, max_blocks, block_size, scale,
                                        n_splits, partial, q_stride, counters, prewait, none);
        if (r != -EOPNOTSUPP)
            return r;
    }
    if (n_splits > 32)
        n_splits = 32; /* the in-kernel merge handles up to 32 splits */
    dim3 grid(n_splits, Hk, T);
    float *of = s_of<O>(out);
    bf16 *ob = s_ob<O>(out);
    size_t sm = (size_t)G * hd * sizeof(float);
    cudaError_t e;
    if (sizeof(KV) == 2 && hd == 128 && !generic_only)
        e = ek_launch(k_attn128<Q>, grid, dim3(32 * G), 0, s, of, ob, q,
                      reinterpret_cast<const bf16 *>(kpool), reinterpret_cast<const bf16 *>(vpool),
                      tok_seq, tok_pos, block_tables, Hq, Hk, max_blocks, block_size, scale,
                      n_splits, partial, q_stride, counters);
    else if (hd <= 32)
        e = ek_launch(k_attn<1, Q, KV>, grid, dim3(32 * G), sm, s, of, ob, q, kpool, vpool,
                      tok_seq, tok_pos, block_tables, Hq, Hk, hd, max_blocks, block_size, scale,
                      n_splits, partial, q_stride, counters);
    else if (hd <= 64)
        e = ek_launch(k_attn<2, Q, KV>, grid, dim3(32 * G), sm, s, of, ob, q, kpool, vpool,
                      tok_seq, tok_pos, block_tables, Hq, Hk, hd, max_blocks, block_size, scale,
                      n_splits, partial, q_stride, counters);
    else if (hd <= 128)
        e = ek_launch(k_attn<4, Q, KV>, grid, dim3(32 * G), sm, s, of, ob, q, kpool, vpool,
                      tok_seq, tok_pos, block_tables, Hq, Hk, hd, max_blocks, block_size, scale,
                      n_splits, partial, q_stride, counters);
    else
        e = ek_launch(k_attn<8, Q, KV>, grid, dim3(32 * G), sm, s, of, ob, q, kpool, vpool,
                      tok_seq, tok_pos, block_tables, Hq, Hk, hd, max_blocks, block_size, scale,
                      n_splits, partial, q_stride, counters);
    CUDA_CHECK(e);
    CUDA_LAUNCH_CHECK();
    if (n_splits > 1 && !counters) {
        k_attn_combine<<<dim3(Hq, T), hd <= 128 ? 128 : 256, 0, s>>>(of, ob, partial, Hq, hd,
                                                                     n_splits);
        CUDA_LAUNCH_CHECK();
    }
    return 0;
}

template <typename Q, typename KV, typename O>
int ek_attention(cudaStream_t s, O *out, const Q *q, const KV *kpool, const KV *vpool,
                 const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *block_tables,
                 int T, int Hq, int Hk, int hd, int max_blocks, int block_size, float scale,
                 int n_splits, float *partial, int q_stride, int *counters) {
    /* test hook: without PDL every kernel starts after the previous one has finished, so the
       prewait load order is valid for any input; test_cuda_ops runs its cases both ways */
    const bool prewait = !ek_pdl && getenv("OM_CUDA_ATTN_PREWAIT_TEST") != nullptr;
    return s_attention<Q, KV, O>(s, out, q, kpool, vpool, tok_seq, tok_pos, block_tables, T, Hq,
                                 Hk, hd, max_blocks, block_size, scale, n_splits, partial,
                                 q_stride, counters, prewait);
}

int ek_attention_decode(cudaStream_t s, bf16 *out, const bf16 *q, const bf16 *kpool,
                        const bf16 *vpool, const int32_t *tok_seq, const int32_t *tok_pos,
                        const int32_t *block_tables, int T, int Hq, int Hk, int hd,
                        int max_blocks, int block_size, float scale, int n_splits,
                        float *partial, int q_stride, int *counters) {
    static const bool no_prewait = getenv("OM_CUDA_ATTN_NOPREWAIT") != nullptr;
    return s_attention<bf16, bf16, bf16>(s, out, q, kpool, vpool, tok_seq, tok_pos, block_tables,
                                         T, Hq, Hk, hd, max_blocks, block_size, scale, n_splits,
                                         partial, q_stride, counters, !no_prewait);
}

bool ek_attention_decode_rope_supported(int Hq, int Hk, int hd, int n_splits,
                                        const float *partial, const int *counters) {
    static const bool generic_only = getenv("OM_CUDA_ATTN_GENERIC") != nullptr;
    return hd == 128 && Hk > 0 && Hq % Hk == 0 && Hq / Hk <= 16 && n_splits >= 1 &&
           !generic_only && !s_attn_dec_off() && (n_splits == 1 || (partial && counters));
}

int ek_attention_decode_rope(cudaStream_t s, bf16 *out, const bf16 *qkv, bf16 *kpool,
                             bf16 *vpool, const int32_t *tok_seq, const int32_t *tok_pos,
                             const int32_t *block_tables, int T, int Hq, int Hk, int hd,
                             int max_blocks, int block_size, float scale, int n_splits,
                             float *partial, int q_stride, int *counters,
                             const ek_dec_rope *rope) {
    if (T == 0)
        return 0;
    if (!rope || !rope->q_norm || !rope->k_norm || !rope->pos3 || !rope->inv_freq ||
        !rope->slots || q_stride < (Hq + 2 * Hk) * hd)
        return -EINVAL;
    if (!ek_attention_decode_rope_supported(Hq, Hk, hd, n_splits, partial, counters))
        return -EOPNOTSUPP;
    static const bool no_prewait = getenv("OM_CUDA_ATTN_NOPREWAIT") != nullptr;
    ek_dec_rope rp = *rope;
    rp.kw = kpool;
    rp.vw = vpool;
    return s_attn_dec<bf16, bf16, true>(s, out, qkv, kpool, vpool, tok_seq, tok_pos,
                                        block_tables, T, Hq, Hk, max_blocks, block_size, scale,
                                        n_splits, partial, q_stride, counters, !no_prewait, rp);
}

template int ek_attention<float, float, float>(cudaStream_t, float *, const float *, const float *,
                                               const float *, const int32_t *, const int32_t *,
                                               const int32_t *, int, int, int, int, int, int,
                                               float, int, float *, int, int *);
template int ek_attention<float, bf16, float>(cudaStream_t, float *, const float *, const bf16 *,
                                              const bf16 *, const int32_t *, const int32_t *,
                                              const int32_t *, int, int, int, int, int, int, float,
                                              int, float *, int, int *);
template int ek_attention<bf16, bf16, bf16>(cudaStream_t, bf16 *, const bf16 *, const bf16 *,
                                            const bf16 *, const int32_t *, const int32_t *,
                                            const int32_t *, int, int, int, int, int, int, float,
                                            int, float *, int, int *);

/* --- flash-style prefill on tensor cores -------------------------------------------------- */

#define PF_BM 64 /* queries per block */
#define PF_BN 64 /* keys per tile */

template <int HD> struct pf_layout {
    static constexpr int LDQ = HD + 8;      /* bf16 */
    static constexpr int LDS = PF_BN + 4;   /* f32 */
    static constexpr int LDP = PF_BN + 8;   /* bf16 */
    static constexpr int LDO = HD + 4;      /* f32 */
    static constexpr size_t q_off = 0;
    static constexpr size_t k_off = q_off + (size_t)PF_BM * LDQ * 2;
    static constexpr size_t v_off = k_off + (size_t)PF_BN * LDQ * 2;
    static constexpr size_t s_off = v_off + (size_t)PF_BN * LDQ * 2;
    static constexpr size_t p_off = s_off + (size_t)PF_BM * LDS * 4;
    static constexpr size_t o_off = p_off + (size_t)PF_BM * LDP * 2;
    static constexpr size_t r_off = o_off + (size_t)PF_BM * LDO * 4;
    static constexpr size_t bytes = r_off + (size_t)PF_BM * 3 * 4;
};

template <int HD>
__global__ void __launch_bounds__(128)
    k_attn_prefill(bf16 *out, const bf16 *q, const bf16 *kpool, const bf16 *vpool,
                   const int32_t *tok_pos, const int32_t *bt, const int32_t *tiles, int Hq, int Hk,
                   int max_blocks, int bs, float scale, int q_stride) {
    typedef pf_layout<HD> LY;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *Qs = (bf16 *)(smem + LY::q_off);
    bf16 *Ks = (bf16 *)(smem + LY::k_off);
    bf16 *Vs = (bf16 *)(smem + LY::v_off);
    float *S = (float *)(smem + LY::s_off);
    bf16 *P = (bf16 *)(smem + LY::p_off);
    float *O = (float *)(smem + LY::o_off);
    float *Mr = (float *)(smem + LY::r_off);
    float *Lr = Mr + PF_BM;
    float *Ar = Lr + PF_BM;

    const int tile = blockIdx.x, h = blockIdx.y;
    const int t0 = tiles[3 * tile], nq = tiles[3 * tile + 1], sq = tiles[3 * tile + 2];
    const int kvh = h / (Hq / Hk);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int32_t *tab = bt + (int64_t)sq * max_blocks;
    constexpr int CPR = HD / 8; /* 16-byte chunks per row */

    for (int idx = tid; idx < PF_BM * CPR; idx += 128) {
        int r = idx / CPR, c = (idx % CPR) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < nq)
            v = *reinterpret_cast<const uint4 *>(q + (int64_t)(t0 + r) * q_stride + h * HD + c);
        *reinterpret_cast<uint4 *>(Qs + r * LY::LDQ + c) = v;
    }
    for (int idx = tid; idx < PF_BM * HD; idx += 128)
        O[(idx / HD) * LY::LDO + idx % HD] = 0.0f;
    if (tid < PF_BM) {
        Mr[tid] = -INFINITY;
        Lr[tid] = 0.0f;
    }
    const int posmax = tok_pos[t0 + nq - 1];

    for (int kb = 0; kb <= posmax; kb += PF_BN) {
        __syncthreads();
        for (int idx = tid; idx < PF_BN * CPR; idx += 128) {
            int r = idx / CPR, c = (idx % CPR) * 8;
            int p = kb + r;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (p <= posmax) {
                int64_t slot = (int64_t)tab[p / bs] * bs + p % bs;
                int64_t o = (slot * Hk + kvh) * HD + c;
                kv = *reinterpret_cast<const uint4 *>(kpool + o);
                vv = *reinterpret_cast<const uint4 *>(vpool + o);
            }
            *reinterpret_cast<uint4 *>(Ks + r * LY::LDQ + c) = kv;
            *reinterpret_cast<uint4 *>(Vs + r * LY::LDQ + c) = vv;
        }
        __syncthreads();
        /* S (16 rows of this warp, 64 keys) = Q Kᵀ */
#pragma unroll
        for (int cc = 0; cc < PF_BN / 16; cc++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
                wmma::load_matrix_sync(a, Qs + warp * 16 * LY::LDQ + kk * 16, LY::LDQ);
                wmma::load_matrix_sync(b, Ks + cc * 16 * LY::LDQ + kk * 16, LY::LDQ);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(S + warp * 16 * LY::LDS + cc * 16, acc, LY::LDS,
                                    wmma::mem_row_major);
        }
        __syncwarp();
        /* online softmax over this warp's 16 rows */
        for (int r = 0; r < 16; r++) {
            int row = warp * 16 + r;
            int qp = row < nq ? tok_pos[t0 + row] : -1;
            int p0 = kb + lane, p1 = kb + lane + 32;
            float v0 = p0 <= qp ? S[row * LY::LDS + lane] * scale : -INFINITY;
            float v1 = p1 <= qp ? S[row * LY::LDS + lane + 32] * scale : -INFINITY;
            float mx = warp_max(fmaxf(v0, v1));
            float m_old = Mr[row];
            float m_new = fmaxf(m_old, mx);
            float alpha, e0, e1;
            if (m_new == -INFINITY) {
                alpha = 1.0f;
                e0 = e1 = 0.0f;
            } else {
                alpha = __expf(m_old - m_new);
                e0 = __expf(v0 - m_new);
                e1 = __expf(v1 - m_new);
            }
            bf16 b0 = __float2bfloat16(e0), b1 = __float2bfloat16(e1);
            P[row * LY::LDP + lane] = b0;
            P[row * LY::LDP + lane + 32] = b1;
            float sum = warp_sum(__bfloat162float(b0) + __bfloat162float(b1));
            __syncwarp();
            if (lane == 0) {
                Mr[row] = m_new;
                Lr[row] = Lr[row] * alpha + sum;
                Ar[row] = alpha;
            }
        }
        __syncwarp();
        for (int idx = lane; idx < 16 * HD; idx += 32) {
            int r = warp * 16 + idx / HD;
            O[r * LY::LDO + idx % HD] *= Ar[r];
        }
        __syncwarp();
        /* O (16 rows) += P V */
#pragma unroll
        for (int cc = 0; cc < HD / 16; cc++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            float *op = O + warp * 16 * LY::LDO + cc * 16;
            wmma::load_matrix_sync(acc, op, LY::LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < PF_BN / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
                wmma::load_matrix_sync(a, P + warp * 16 * LY::LDP + kk * 16, LY::LDP);
                wmma::load_matrix_sync(b, Vs + kk * 16 * LY::LDQ + cc * 16, LY::LDQ);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(op, acc, LY::LDO, wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int idx = tid; idx < nq * HD; idx += 128) {
        int r = idx / HD, d = idx % HD;
        float L = Lr[r];
        float v = L > 0.0f ? O[r * LY::LDO + d] / L : 0.0f;
        out[((int64_t)(t0 + r) * Hq + h) * HD + d] = __float2bfloat16(v);
    }
}

bool ek_attention_prefill_supported(int hd) { return hd == 16 || hd == 32 || hd == 64 || hd == 128; }

template <int HD>
static int s_prefill(cudaStream_t s, bf16 *out, const bf16 *q, const bf16 *kpool,
                     const bf16 *vpool, const int32_t *tok_pos, const int32_t *bt,
                     const int32_t *tiles, int n_tiles, int Hq, int Hk, int max_blocks, int bs,
                     float scale, int q_stride) {
    static thread_local bool attr_set = false; /* per thread = per device (TP ranks) */
    size_t bytes = pf_layout<HD>::bytes;
    if (!attr_set) {
        CUDA_CHECK(cudaFuncSetAttribute(k_attn_prefill<HD>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        attr_set = true;
    }
    k_attn_prefill<HD><<<dim3(n_tiles, Hq), 128, bytes, s>>>(out, q, kpool, vpool, tok_pos, bt,
                                                              tiles, Hq, Hk, max_blocks, bs, scale, q_stride);
    CUDA_LAUNCH_CHECK();
    return 0;
}

int ek_attention_prefill(cudaStream_t s, bf16 *out, const bf16 *q, const bf16 *kpool,
                         const bf16 *vpool, const int32_t *tok_pos, const int32_t *block_tables,
                         const int32_t *tiles, int n_tiles, int Hq, int Hk, int hd,
                         int max_blocks, int block_size, float scale, int q_stride) {
    if (n_tiles == 0)
        return 0;
    if (Hk <= 0 || Hq % Hk)
        return -EINVAL;
    switch (hd) {
    case 16: return s_prefill<16>(s, out, q, kpool, vpool, tok_pos, block_tables, tiles, n_tiles, Hq, Hk, max_blocks, block_size, scale, q_stride);
    case 32: return s_prefill<32>(s, out, q, kpool, vpool, tok_pos, block_tables, tiles, n_tiles, Hq, Hk, max_blocks, block_size, scale, q_stride);
    case 64: return s_prefill<64>(s, out, q, kpool, vpool, tok_pos, block_tables, tiles, n_tiles, Hq, Hk, max_blocks, block_size, scale, q_stride);
    case 128: return s_prefill<128>(s, out, q, kpool, vpool, tok_pos, block_tables, tiles, n_tiles, Hq, Hk, max_blocks, block_size, scale, q_stride);
    default: return -EOPNOTSUPP;
    }
}
