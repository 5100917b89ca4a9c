/* eng_cuda_attn_tc.cu: attention on mma.sync tensor cores (m16n8k16 bf16 -> f32) for head_dim 128
 * and bf16 paged KV: the many-sequence decode kernel and the causal prefill kernel.
 *
 * Both stage 64-key chunks of K and V (gathered through the block table) in shared memory with
 * cp.async, two stages (64 KB per block), rows XOR-swizzled by 16-byte chunk so that ldmatrix
 * reads are conflict-free; scores and P·V are m16n8k16 MMAs with the FlashAttention-2 register
 * layout (the S accumulator becomes the A operand of P·V without a round trip through shared
 * memory); online softmax in f32 in the log2 domain; P rounded to bf16 for the MMA (l sums the
 * rounded values).
 *  - k_attn_dec_tc: one block (4 warps) per (key split, KV head, token). The G = Hq/Hk query heads
 *    of the KV head are the rows of the 16-row A tile (rows >= G are zero), so the cache is read
 *    once per KV head; warp w takes keys 16w..16w+15 of each chunk; the 4 warps' (m, l, O) are
 *    merged through shared memory; with n_splits > 1 the last block of a (token, KV head)
 *    merges the splits' partials (self-resetting counter, graph-safe). The splits a token uses
 *    are set in the kernel from its own length: min(n_splits, ceil(len / min_keys)); the launch's
 *    other split blocks return at once. So a captured graph, launched with the splits for an
 *    unknown length, no longer spreads a 512-key context over 17 splits of which 9 are empty
 *    (batch 16: 46 us a layer, most of it block overhead and the 17-way merge); eager steps
 *    (launched with the splits for their longest sequence) and graphs get the same split of each
 *    sequence, so the same bits.
 *  - k_attn_prefill_tc: one block per (query head, 64-query tile); warp w owns 16 query rows and
 *    skips key chunks past its last position (causal). */
#include <cmath>
#include <cstdlib>

#include "eng_cuda_attn_tc.cuh"

#define TC_HD 128             /* head_dim */
#define TC_CH 64              /* keys per chunk */
#define TC_TILE (TC_CH * TC_HD) /* bf16 elements of one K (or V) chunk */
#define TC_SMEM (2 * 2 * TC_TILE * 2) /* 2 stages x (K, V), bytes: 64 KB */
#define TC_OS_LD (TC_HD + 4)  /* f32 row stride of the warp-merge buffer */

/* --- PTX helpers -------------------------------------------------------------------------- */

__device__ __forceinline__ uint32_t s_pack(float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b); /* a in the low half */
    return *reinterpret_cast<uint32_t *>(&h);
}
__device__ __forceinline__ float s_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float s_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

/* c (16x8 f32) += a (16x16 bf16, row) · b (16x8 bf16, col) */
__device__ __forceinline__ void s_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void s_ldsm4(uint32_t *r, const bf16 *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}
__device__ __forceinline__ void s_ldsm4t(uint32_t *r, const bf16 *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}
/* 16-byte async copy; zero-fills the destination when !valid (src is then not read). */
__device__ __forceinline__ void s_cp16(bf16 *dst, const bf16 *src, bool valid) {
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void s_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void s_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/* element offset of (row r, 16-byte chunk c) in a swizzled [rows][128] bf16 tile */
__device__ __forceinline__ int s_sw(int r, int c) { return r * TC_HD + ((c ^ (r & 7)) << 3); }

/* Gathers keys kb..kb+63 (those < kend; the rest zero) of KV head kvh into Ks/Vs. */
__device__ __forceinline__ void s_load_chunk(bf16 *Ks, bf16 *Vs, const bf16 *kpool,
                                             const bf16 *vpool, const int32_t *tab, int bs,
                                             int Hk, int kvh, int kb, int kend) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < TC_CH * (TC_HD / 8) / 128; i++) {
        const int idx = tid + 128 * i, r = idx >> 4, c = idx & 15;
        const int p = kb + r;
        const bool v = p < kend;
        const int64_t slot = v ? (int64_t)tab[p / bs] * bs + p % bs : 0;
        const int64_t go = (slot * Hk + kvh) * TC_HD + c * 8;
        const int so = s_sw(r, c);
        s_cp16(Ks + so, kpool + go, v);
        s_cp16(Vs + so, vpool + go, v);
    }
}

__device__ __forceinline__ uint32_t s_q2(const float *p) { return s_pack(p[0], p[1]); }
__device__ __forceinline__ uint32_t s_q2(const bf16 *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}

/* One warp's 16 key columns (two n8 tiles) of S = Q·Kᵀ; Ks rows kr..kr+15. */
__device__ __forceinline__ void s_scores16(float (*sc)[4], const uint32_t (*qa)[4], const bf16 *Ks,
                                           int kr, int lane) {
#pragma unroll
    for (int j = 0; j < 2; j++) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            sc[j][e] = 0.0f;
#pragma unroll
        for (int kk2 = 0; kk2 < 4; kk2++) {
            const int r = kr + 8 * j + (lane & 7), c = 4 * kk2 + (lane >> 3);
            uint32_t b[4];
            s_ldsm4(b, Ks + s_sw(r, c));
            s_mma(sc[j], qa[2 * kk2], b[0], b[1]);
            s_mma(sc[j], qa[2 * kk2 + 1], b[2], b[3]);
        }
    }
}

/* o (16 rows x 128) += P (16 x 16 keys, A fragment pa) · V rows vr..vr+15. */
__device__ __forceinline__ void s_pv16(float (*o)[4], const uint32_t *pa, const bf16 *Vs, int vr,
                                       int lane) {
#pragma unroll
    for (int np = 0; np < 8; np++) {
        const int r = vr + (lane & 7) + ((lane >> 3) & 1) * 8, c = 2 * np + (lane >> 4);
        uint32_t b[4];
        s_ldsm4t(b, Vs + s_sw(r, c));
        s_mma(o[2 * np], pa, b[0], b[1]);
        s_mma(o[2 * np + 1], pa, b[2], b[3]);
    }
}

__device__ __forceinline__ float s_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float s_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* --- decode: many sequences --------------------------------------------------------------- */

template <typename Q, typename O>
__global__ void __launch_bounds__(128, 3)
    k_attn_dec_tc(O *out, const Q *q, const bf16 *kpool, const bf16 *vpool,
                  const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *bt, int Hq,
                  int Hk, int max_blocks, int bs, float scale_log2, int n_launch, float *partial,
                  int q_stride, int *counters, int min_keys) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *sb = reinterpret_cast<bf16 *>(smem);
    const int split = blockIdx.x, kvh = blockIdx.y, t = blockIdx.z;
    const int G = Hq / Hk;
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    pdl_wait();
    pdl_trigger();
    const int len = tok_pos[t] + 1, sq = tok_seq[t];
    /* this token's splits (min_keys 0: all of the launch's); partials keep the launch's stride */
    const int n_splits =
        min_keys > 0 ? max(1, min(n_launch, (len + min_keys - 1) / min_keys)) : n_launch;
    if (split >= n_splits)
        return;
    int chunk = (len + n_splits - 1) / n_splits;
    chunk = (chunk + TC_CH - 1) / TC_CH * TC_CH;
    const int k0 = split * chunk;
    const int k1 = min(len, k0 + chunk);
    const int nch = k1 > k0 ? (k1 - k0 + TC_CH - 1) / TC_CH : 0;
    const int32_t *tab = bt + (int64_t)sq * max_blocks;

    if (nch > 0)
        s_load_chunk(sb, sb + TC_TILE, kpool, vpool, tab, bs, Hk, kvh, k0, k1);
    s_cp_commit();

    /* A fragments of Q: rows = the G heads of this KV head (row >= G: zero) */
    uint32_t qa[8][4];
    {
        const Q *qb = q + (int64_t)t * q_stride + (int64_t)kvh * G * TC_HD;
#pragma unroll
        for (int kk = 0; kk < 8; kk++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int row = g + 8 * hf;
                const bool v = row < G;
                const Q *p = qb + (int64_t)(v ? row : 0) * TC_HD + 16 * kk + 2 * tq;
                qa[kk][hf] = v ? s_q2(p) : 0u;
                qa[kk][2 + hf] = v ? s_q2(p + 8) : 0u;
            }
    }
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[16][4];
#pragma unroll
    for (int n = 0; n < 16; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    for (int ci = 0; ci < nch; ci++) {
        if (ci + 1 < nch) {
            bf16 *Kn = sb + ((ci + 1) & 1) * 2 * TC_TILE;
            s_load_chunk(Kn, Kn + TC_TILE, kpool, vpool, tab, bs, Hk, kvh, k0 + (ci + 1) * TC_CH,
                         k1);
        }
        s_cp_commit();
        s_cp_wait<1>();
        __syncthreads();
        const bf16 *Ks = sb + (ci & 1) * 2 * TC_TILE, *Vs = Ks + TC_TILE;
        const int kbase = k0 + ci * TC_CH + 16 * w;
        if (kbase < k1) { /* warp-uniform */
            float sc[2][4];
            s_scores16(sc, qa, Ks, 16 * w, lane);
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kbase + 8 * j + 2 * tq + (e & 1);
                    sc[j][e] = key < k1 ? sc[j][e] * scale_log2 : -INFINITY;
                    mx[e >> 1] = fmaxf(mx[e >> 1], sc[j][e]);
                }
            float al[2], mu[2];
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const float mn = fmaxf(m[hf], s_quad_max(mx[hf]));
                mu[hf] = mn == -INFINITY ? 0.0f : mn;
                al[hf] = exp2f(m[hf] - mu[hf]);
                m[hf] = mn;
            }
            uint32_t pa[4];
            pa[0] = s_pack(exp2f(sc[0][0] - mu[0]), exp2f(sc[0][1] - mu[0]));
            pa[1] = s_pack(exp2f(sc[0][2] - mu[1]), exp2f(sc[0][3] - mu[1]));
            pa[2] = s_pack(exp2f(sc[1][0] - mu[0]), exp2f(sc[1][1] - mu[0]));
            pa[3] = s_pack(exp2f(sc[1][2] - mu[1]), exp2f(sc[1][3] - mu[1]));
            l[0] = l[0] * al[0] + s_lo(pa[0]) + s_hi(pa[0]) + s_lo(pa[2]) + s_hi(pa[2]);
            l[1] = l[1] * al[1] + s_lo(pa[1]) + s_hi(pa[1]) + s_lo(pa[3]) + s_hi(pa[3]);
#pragma unroll
            for (int n = 0; n < 16; n++) {
                o[n][0] *= al[0];
                o[n][1] *= al[0];
                o[n][2] *= al[1];
                o[n][3] *= al[1];
            }
            s_pv16(o, pa, Vs, 16 * w, lane);
        }
        __syncthreads(); /* the next iteration's prefetch overwrites this stage */
    }
    s_cp_wait<0>();
    __syncthreads();

    /* merge the 4 warps through shared memory (the stage buffers are free now) */
    float *Os = reinterpret_cast<float *>(smem);          /* [4][16][TC_OS_LD] */
    float *Mw = Os + 4 * 16 * TC_OS_LD, *Lw = Mw + 4 * 16; /* [4][16] each */
    l[0] = s_quad_sum(l[0]);
    l[1] = s_quad_sum(l[1]);
#pragma unroll
    for (int n = 0; n < 16; n++) {
        float *r0 = Os + (w * 16 + g) * TC_OS_LD + 8 * n + 2 * tq;
        *reinterpret_cast<float2 *>(r0) = make_float2(o[n][0], o[n][1]);
        *reinterpret_cast<float2 *>(r0 + 8 * TC_OS_LD) = make_float2(o[n][2], o[n][3]);
    }
    if (tq == 0) {
        Mw[w * 16 + g] = m[0];
        Mw[w * 16 + g + 8] = m[1];
        Lw[w * 16 + g] = l[0];
        Lw[w * 16 + g + 8] = l[1];
    }
    __syncthreads();
    for (int idx = tid; idx < G * TC_HD; idx += 128) {
        const int row = idx >> 7, d = idx & (TC_HD - 1), h = kvh * G + row;
        float M = -INFINITY;
#pragma unroll
        for (int ww = 0; ww < 4; ww++)
            M = fmaxf(M, Mw[ww * 16 + row]);
        float acc = 0.0f, L = 0.0f;
#pragma unroll
        for (int ww = 0; ww < 4; ww++) {
            const float mw = Mw[ww * 16 + row];
            const float f = mw == -INFINITY ? 0.0f : exp2f(mw - M);
            acc = fmaf(f, Os[(ww * 16 + row) * TC_OS_LD + d], acc);
            L = fmaf(f, Lw[ww * 16 + row], L);
        }
        if (n_splits == 1) {
            st(&out[((int64_t)t * Hq + h) * TC_HD + d], L > 0.0f ? acc / L : 0.0f);
        } else {
            float *pp = partial + (((int64_t)t * Hq + h) * n_launch + split) * (TC_HD + 2);
            pp[d] = acc;
            if (d == 0) {
                pp[TC_HD] = M;
                pp[TC_HD + 1] = L;
            }
        }
    }
    if (n_splits == 1)
        return;
    /* the last split block of this (token, KV head) merges the partials of its G heads */
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (tid == 0)
        last = atomicAdd(&counters[(int64_t)t * Hk + kvh], 1) == n_splits - 1;
    __syncthreads();
    if (!last)
        return;
    __threadfence();
    for (int idx = tid; idx < G * TC_HD; idx += 128) {
        const int row = idx >> 7, d = idx & (TC_HD - 1), h = kvh * G + row;
        const float *pb = partial + ((int64_t)t * Hq + h) * n_launch * (TC_HD + 2);
        float M = -INFINITY;
        for (int sp = 0; sp < n_splits; sp++)
            M = fmaxf(M, __ldcg(&pb[sp * (TC_HD + 2) + TC_HD]));
        float acc = 0.0f, L = 0.0f;
        for (int sp = 0; sp < n_splits; sp++) {
            const float *pp = pb + sp * (TC_HD + 2);
            const float ms = __ldcg(&pp[TC_HD]);
            const float f = ms == -INFINITY ? 0.0f : exp2f(ms - M);
            acc = fmaf(f, __ldcg(&pp[d]), acc);
            L = fmaf(f, __ldcg(&pp[TC_HD + 1]), L);
        }
        st(&out[((int64_t)t * Hq + h) * TC_HD + d], L > 0.0f ? acc / L : 0.0f);
    }
    if (tid == 0)
        counters[(int64_t)t * Hk + kvh] = 0;
}

bool ek_attention_tc_supported(int Hq, int Hk, int hd) {
    return hd == TC_HD && Hk > 0 && Hq % Hk == 0 && Hq / Hk <= 16;
}

int ek_attention_tc_splits(int T, int Hk, int max_len, int max_splits, int max_tok_splits) {
    static int n_sm = 0;
    if (n_sm == 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            n_sm <= 0)
            n_sm = 132;
    }
    if (T <= 0 || Hk <= 0)
        return 1;
    /* ~8 blocks per SM (3 resident at a time) keep the tail short */
    const int64_t want_blocks = (int64_t)8 * n_sm;
    int64_t sp = (want_blocks + (int64_t)T * Hk - 1) / ((int64_t)T * Hk);
    if (max_len >= 0) {
        const int by_len = (max_len + 127) / 128; /* >= 128 keys a split */
        sp = sp > by_len ? by_len : sp;
    }
    if (sp > max_splits)
        sp = max_splits;
    if (sp > 32)
        sp = 32;
    if (sp * T > max_tok_splits)
        sp = max_tok_splits / T;
    return sp < 1 ? 1 : (int)sp;
}

template <typename K> static int s_smem_attr(K k) {
    CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, TC_SMEM));
    return 0;
}

template <typename Q, typename O>
int ek_attention_tc(cudaStream_t s, O *out, const Q *q, const bf16 *kpool, const bf16 *vpool,
                    const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *block_tables,
                    int T, int Hq, int Hk, int hd, int max_blocks, int block_size, float scale,
                    int n_splits, float *partial, int q_stride, int *counters) {
    if (T == 0)
        return 0;
    if (!ek_attention_tc_supported(Hq, Hk, hd) || T > 65535 || Hk > 65535)
        return -EOPNOTSUPP;
    if (n_splits < 1 || n_splits > 32 || (n_splits > 1 && (!partial || !counters)) ||
        block_size <= 0 || max_blocks <= 0)
        return -EINVAL;
    static thread_local int attr = 1; /* per thread = per device (TP ranks) */
    if (attr > 0)
        attr = s_smem_attr(k_attn_dec_tc<Q, O>);
    if (attr < 0)
        return attr;
    const float scale_log2 = scale * 1.4426950408889634f;
    /* OM_CUDA_ATTN_TC_MINKEYS: keys per split at least (default 128, the eager split rule of
       ek_attention_tc_splits); 0 = every launched split works (the kernel before) */
    static const int min_keys = [] {
        const char *e = getenv("OM_CUDA_ATTN_TC_MINKEYS");
        const int v = e && *e ? atoi(e) : 128;
        return v < 0 ? 0 : v;
    }();
    CUDA_CHECK(ek_launch(k_attn_dec_tc<Q, O>, dim3(n_splits, Hk, T), dim3(128), TC_SMEM, s, out,
                         q, kpool, vpool, tok_seq, tok_pos, block_tables, Hq, Hk, max_blocks,
                         block_size, scale_log2, n_splits, partial, q_stride, counters,
                         min_keys));
    CUDA_LAUNCH_CHECK();
    return 0;
}

template int ek_attention_tc<float, float>(cudaStream_t, float *, const float *, const bf16 *,
                                           const bf16 *, const int32_t *, const int32_t *,
                                           const int32_t *, int, int, int, int, int, int, float,
                                           int, float *, int, int *);
template int ek_attention_tc<bf16, bf16>(cudaStream_t, bf16 *, const bf16 *, const bf16 *,
                                         const bf16 *, const int32_t *, const int32_t *,
                                         const int32_t *, int, int, int, int, int, int, float, int,
                                         float *, int, int *);

/* --- causal prefill ----------------------------------------------------------------------- */

__device__ __forceinline__ void s_st2(float *p, float a, float b) {
    *reinterpret_cast<float2 *>(p) = make_float2(a, b);
}
__device__ __forceinline__ void s_st2(bf16 *p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

template <typename Q, typename O>
__global__ void __launch_bounds__(128)
    k_attn_prefill_tc(O *out, const Q *q, const bf16 *kpool, const bf16 *vpool,
                      const int32_t *tok_pos, const int32_t *bt, const int32_t *tiles, int n_tiles,
                      int Hq, int Hk, int max_blocks, int bs, float scale_log2, int q_stride) {
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *sb = reinterpret_cast<bf16 *>(smem);
    /* heads vary fastest (the G heads of a KV head share its K/V in L2) and the last tiles of a
       sequence, which see the most keys, start first */
    const int tile = n_tiles - 1 - (int)blockIdx.y, h = blockIdx.x;
    const int t0 = tiles[3 * tile], nq = tiles[3 * tile + 1], sq = tiles[3 * tile + 2];
    const int kvh = h / (Hq / Hk);
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int32_t *tab = bt + (int64_t)sq * max_blocks;
    const int posmax = tok_pos[t0 + nq - 1];
    const int kend = posmax + 1;
    const int nch = (kend + TC_CH - 1) / TC_CH;

    s_load_chunk(sb, sb + TC_TILE, kpool, vpool, tab, bs, Hk, kvh, 0, kend);
    s_cp_commit();

    /* this warp's rows: tile rows 16w + g and 16w + g + 8 (invalid rows: position -1) */
    int qp[2];
    uint32_t qa[8][4];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int row = 16 * w + g + 8 * hf;
        const bool v = row < nq;
        qp[hf] = v ? tok_pos[t0 + row] : -1;
        const Q *p = q + (int64_t)(t0 + (v ? row : 0)) * q_stride + (int64_t)h * TC_HD + 2 * tq;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            qa[kk][hf] = v ? s_q2(p + 16 * kk) : 0u;
            qa[kk][2 + hf] = v ? s_q2(p + 16 * kk + 8) : 0u;
        }
    }
    const int wlast = min(16 * w + 15, nq - 1);
    const int wmax = 16 * w < nq ? tok_pos[t0 + wlast] : -1; /* last key this warp needs */

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[16][4];
#pragma unroll
    for (int n = 0; n < 16; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    for (int ci = 0; ci < nch; ci++) {
        if (ci + 1 < nch) {
            bf16 *Kn = sb + ((ci + 1) & 1) * 2 * TC_TILE;
            s_load_chunk(Kn, Kn + TC_TILE, kpool, vpool, tab, bs, Hk, kvh, (ci + 1) * TC_CH,
                         kend);
        }
        s_cp_commit();
        s_cp_wait<1>();
        __syncthreads();
        const bf16 *Ks = sb + (ci & 1) * 2 * TC_TILE, *Vs = Ks + TC_TILE;
        const int kb = ci * TC_CH;
        if (kb <= wmax) { /* warp-uniform */
            float sc[8][4];
#pragma unroll
            for (int jj = 0; jj < 4; jj++)
                s_scores16(sc + 2 * jj, qa, Ks, 16 * jj, lane);
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = kb + 8 * j + 2 * tq + (e & 1);
                    sc[j][e] = key <= qp[e >> 1] ? sc[j][e] * scale_log2 : -INFINITY;
                    mx[e >> 1] = fmaxf(mx[e >> 1], sc[j][e]);
                }
            float al[2], mu[2];
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const float mn = fmaxf(m[hf], s_quad_max(mx[hf]));
                mu[hf] = mn == -INFINITY ? 0.0f : mn;
                al[hf] = exp2f(m[hf] - mu[hf]);
                m[hf] = mn;
                l[hf] *= al[hf];
            }
#pragma unroll
            for (int n = 0; n < 16; n++) {
                o[n][0] *= al[0];
                o[n][1] *= al[0];
                o[n][2] *= al[1];
                o[n][3] *= al[1];
            }
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                uint32_t pa[4];
                pa[0] = s_pack(exp2f(sc[2 * kk][0] - mu[0]), exp2f(sc[2 * kk][1] - mu[0]));
                pa[1] = s_pack(exp2f(sc[2 * kk][2] - mu[1]), exp2f(sc[2 * kk][3] - mu[1]));
                pa[2] = s_pack(exp2f(sc[2 * kk + 1][0] - mu[0]), exp2f(sc[2 * kk + 1][1] - mu[0]));
                pa[3] = s_pack(exp2f(sc[2 * kk + 1][2] - mu[1]), exp2f(sc[2 * kk + 1][3] - mu[1]));
                l[0] += s_lo(pa[0]) + s_hi(pa[0]) + s_lo(pa[2]) + s_hi(pa[2]);
                l[1] += s_lo(pa[1]) + s_hi(pa[1]) + s_lo(pa[3]) + s_hi(pa[3]);
                s_pv16(o, pa, Vs, 16 * kk, lane);
            }
        }
        __syncthreads();
    }
    s_cp_wait<0>();
    l[0] = s_quad_sum(l[0]);
    l[1] = s_quad_sum(l[1]);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int row = 16 * w + g + 8 * hf;
        if (row >= nq)
            continue;
        const float inv = l[hf] > 0.0f ? 1.0f / l[hf] : 0.0f;
        O *op = out + ((int64_t)(t0 + row) * Hq + h) * TC_HD + 2 * tq;
#pragma unroll
        for (int n = 0; n < 16; n++)
            s_st2(op + 8 * n, o[n][2 * hf] * inv, o[n][2 * hf + 1] * inv);
    }
}

template <typename Q, typename O>
int ek_attention_prefill_tc(cudaStream_t s, O *out, const Q *q, const bf16 *kpool,
                            const bf16 *vpool, const int32_t *tok_pos,
                            const int32_t *block_tables, const int32_t *tiles, int n_tiles,
                            int Hq, int Hk, int hd, int max_blocks, int block_size, float scale,
                            int q_stride) {
    if (n_tiles == 0)
        return 0;
    if (hd != TC_HD || Hk <= 0 || Hq % Hk || n_tiles > 65535)
        return -EOPNOTSUPP;
    if (block_size <= 0 || max_blocks <= 0)
        return -EINVAL;
    static thread_local int attr = 1; /* per thread = per device (TP ranks) */
    if (attr > 0)
        attr = s_smem_attr(k_attn_prefill_tc<Q, O>);
    if (attr < 0)
        return attr;
    const float scale_log2 = scale * 1.4426950408889634f;
    k_attn_prefill_tc<Q, O><<<dim3(Hq, n_tiles), 128, TC_SMEM, s>>>(
        out, q, kpool, vpool, tok_pos, block_tables, tiles, n_tiles, Hq, Hk, max_blocks,
        block_size, scale_log2, q_stride);
    CUDA_LAUNCH_CHECK();
    return 0;
}

template int ek_attention_prefill_tc<float, float>(cudaStream_t, float *, const float *,
                                                   const bf16 *, const bf16 *, const int32_t *,
                                                   const int32_t *, const int32_t *, int, int, int,
                                                   int, int, int, float, int);
template int ek_attention_prefill_tc<bf16, bf16>(cudaStream_t, bf16 *, const bf16 *, const bf16 *,
                                                 const bf16 *, const int32_t *, const int32_t *,
                                                 const int32_t *, int, int, int, int, int, int,
                                                 float, int);
