/* eng_cuda_sample.cu: token sampling on the GPU (eng_cuda_sample, eng_cuda_sample_ex, eng_cuda.h),
 * the cuda backend's SAMPLE hook, so that logits never leave the device, whatever the request's
 * sampling parameters.
 *
 * Semantics are eng_sampler.c's (eng_sampler.h), row by row: the row's logit edits (penalties,
 * eos/stop suppression, built on the host by eng_sampler_edits) applied to a device copy with the
 * same float operations; greedy (temperature <= 0) = the argmax, lowest id on ties; else logits
 * scaled by 1/temperature (f32), candidates in the strict order "higher scaled logit first, then
 * lower id", top-k keeps the first k, top-p the shortest prefix whose mass reaches top_p x (mass of
 * the top-k set), min-p the tokens with p >= min_p x p_max (p = expf(l - max)), then an
 * inverse-CDF draw over the survivors at u = eng_sampler_uniform(seed, step) (the same
 * counter-based hash, computed here). Logprobs: log-softmax of the raw row in double, the n best by
 * raw logit (ties by lower id).
 *
 * How: one 1024-thread block per row, no sort. Every truncation and the draw is a "prefix
 * select": find the shortest prefix (in the candidate order) whose weight (count, or mass)
 * reaches a goal. Masses are fixed point (p x 2^32 rounded, u64): every sum is exact and
 * order-independent, so the passes agree with each other and the same seed gives the same token
 * on every run. After the maximum, one pass bins the row by (max - l) in linear bins (ss_lbin,
 * 64 per unit; a bin is a contiguous piece of the candidate order) and bounds where the
 * truncation or the draw ends; the elements before that bound are compacted into a per-row
 * candidate list (up to SS_CAP; more: the selects read the whole row). A select finds the linear
 * bin that crosses its goal, then radix-selects inside that bin over the 32-bit order-preserving
 * key (11 + 11 + 10 bits, histogram in shared memory), then, for a run of equal logits, over the
 * ids (2 x 11 bits). A prefix is kept as its last element (key, id): element (k, v) is inside iff
 * k > key or (k == key and v <= id).
 *
 * Limits: V < 2^22. Not thread-safe (one static device workspace); the engine drives it from one
 * thread. eng_cuda_sample_host runs the same template code with one thread on the host (tests). */
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"
#include "eng_cuda.h"

#define SS_THREADS 1024
#define SS_BINS 2048
#define SS_Q 4294967296.0 /* fixed-point scale of a probability */

/* the last element of a prefix in candidate order */
struct ss_bnd {
    uint32_t key;
    int32_t id;
};

/* one prefix select: eligible elements are those inside B (and with p >= thr when minp);
 * weight 1 (count) or the fixed-point p (mass); goal G; strict: weight > G, else >= G */
struct ss_sel {
    ss_bnd B;
    bool minp;
    float thr;
    bool mass;
    bool strict;
    double G;
    bool reuse; /* the linear-bin histogram in shared memory is already this select's (ss_lhist) */
};

struct ss_smem {
    unsigned long long wbin[SS_BINS]; /* weight per digit */
    uint32_t cbin[SS_BINS];           /* elements per digit */
    int32_t minid[SS_BINS];           /* lowest id per digit */
    unsigned long long warp[32];      /* scan / reduction partials */
    float fwarp[32];
    double dwarp[32];
    int32_t iwarp[32];
    int pick;                         /* chosen scan position */
    int ncand;                        /* candidates compacted so far */
    unsigned long long before;        /* weight before the chosen digit */
};

/* The algorithm is written once for a block of NT threads: on the device NT = SS_THREADS (the
 * kernel), on the host NT = 1 (eng_cuda_sample_host: the same code, one "thread", for tests that
 * run without a GPU). The primitives below are the only place the two differ. */
#define SS_HD __host__ __device__
#ifdef __CUDA_ARCH__
#define SS_TID ((int)threadIdx.x)
#define SS_SYNC() __syncthreads()
#else
#define SS_TID 0
#define SS_SYNC() ((void)0)
#endif

SS_HD inline void ss_add(unsigned long long *p, unsigned long long v) {
#ifdef __CUDA_ARCH__
    atomicAdd(p, v);
#else
    *p += v;
#endif
}
SS_HD inline void ss_addu(uint32_t *p, uint32_t v) {
#ifdef __CUDA_ARCH__
    atomicAdd(p, v);
#else
    *p += v;
#endif
}
SS_HD inline void ss_min(int *p, int v) {
#ifdef __CUDA_ARCH__
    atomicMin(p, v);
#else
    *p = v < *p ? v : *p;
#endif
}
SS_HD inline void ss_max_i(int *p, int v) {
#ifdef __CUDA_ARCH__
    atomicMax(p, v);
#else
    *p = v > *p ? v : *p;
#endif
}

SS_HD inline uint64_t ss_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* eng_sampler_uniform (eng_sampler.c), bit for bit */
SS_HD inline double ss_uniform(uint64_t seed, uint64_t step) {
    uint64_t x = ss_mix(ss_mix(seed) ^ ss_mix(step ^ 0x632be59bd9b4e019ull));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

SS_HD inline uint32_t ss_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
#endif
}
SS_HD inline float ss_float(uint32_t b) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(b);
#else
    float f;
    memcpy(&f, &b, 4);
    return f;
#endif
}
/* order-preserving key of a float (-0 is folded into +0 by the caller) */
SS_HD inline uint32_t ss_key(float f) {
    uint32_t b = ss_bits(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
SS_HD inline float ss_unkey(uint32_t k) {
    return ss_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
SS_HD inline bool ss_in(uint32_t k, int v, ss_bnd b) {
    return k > b.key || (k == b.key && v <= b.id);
}
SS_HD inline unsigned long long ss_q(float p) {
    return (unsigned long long)((double)p * SS_Q + 0.5);
}
SS_HD inline bool ss_cross(double c, double G, bool strict) {
    return strict ? c > G : c >= G;
}
SS_HD inline float ss_l(const float *row, int v, float inv_t) {
    return row[v] * inv_t + 0.0f; /* the host's `logits[v] *= inv_t`; -0 -> +0 */
}

/* The elements a select looks at: the whole row (ids = indices, logits scaled on the fly) or a
 * compacted candidate list (scaled logits with their ids; inv_t unused). */
struct ss_src {
    const float *l;    /* (n) raw row, or scaled candidate logits */
    const int32_t *id; /* (n) candidate ids; NULL: the whole row, id = index */
    int n;
    float inv_t;       /* 1 / temperature for the whole row */
};
SS_HD inline float ss_val(const ss_src &s, int i) {
    return s.id ? s.l[i] : ss_l(s.l, i, s.inv_t);
}
SS_HD inline int ss_id(const ss_src &s, int i) {
    return s.id ? s.id[i] : i;
}

/* Linear bin of a scaled logit below the row maximum: SS_LBIN bins per unit of (mx - l), the last
 * bin takes the rest (and NaN). Non-decreasing along the candidate order, so "bins <= D" is
 * always a prefix of that order (a tie run never straddles two bins). */
#define SS_LBIN 64.0f
SS_HD inline int ss_lbin(float l, float mx) {
    float x = (mx - l) * SS_LBIN;
    return x < (float)(SS_BINS - 1) ? (int)x : SS_BINS - 1;
}

/* block-wide sum of u64 (every thread gets it) */
template <int NT> SS_HD unsigned long long ss_sum(unsigned long long v, ss_smem &sm) {
#ifdef __CUDA_ARCH__
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0)
        sm.warp[w] = v;
    __syncthreads();
    unsigned long long t = 0;
    for (int i = 0; i < NT / 32; i++)
        t += sm.warp[i];
    __syncthreads();
    return t;
#else
    (void)sm;
    return v;
#endif
}

/* block-wide exclusive scan of u64 in thread order */
template <int NT> SS_HD unsigned long long ss_excl(unsigned long long v, ss_smem &sm) {
#ifdef __CUDA_ARCH__
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    unsigned long long x = v;
    for (int o = 1; o < 32; o <<= 1) {
        unsigned long long y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o)
            x += y;
    }
    if (lane == 31)
        sm.warp[w] = x;
    __syncthreads();
    if (w == 0) {
        unsigned long long t = lane < NT / 32 ? sm.warp[lane] : 0ull;
        for (int o = 1; o < 32; o <<= 1) {
            unsigned long long y = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o)
                t += y;
        }
        sm.warp[lane] = t;
    }
    __syncthreads();
    unsigned long long r = (w > 0 ? sm.warp[w - 1] : 0ull) + x - v;
    __syncthreads();
    return r;
#else
    (void)v;
    (void)sm;
    return 0;
#endif
}

/* block max of the scaled logits (every thread gets it) */
template <int NT> SS_HD float ss_max(const float *row, int V, float inv_t, ss_smem &sm) {
    float m = -INFINITY;
    for (int v = SS_TID; v < V; v += NT)
        m = fmaxf(m, ss_l(row, v, inv_t));
#ifdef __CUDA_ARCH__
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0)
        sm.fwarp[threadIdx.x >> 5] = m;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < NT / 32; i++)
        r = fmaxf(r, sm.fwarp[i]);
    __syncthreads();
    return r;
#else
    (void)sm;
    return m;
#endif
}

/* Picks the first scan position (SS_BINS / NT consecutive positions per thread) where the running
 * weight crosses G; take_all (or no crossing): the last non-empty position. Returns its digit
 * (-1: nothing non-empty) and sets *ret_before to the weight before it. dig(pos) maps a scan
 * position to a digit (-1: none). */
template <int NT, typename F>
SS_HD int ss_pick(ss_smem &sm, F dig, double G, bool strict, bool take_all,
                  unsigned long long *ret_before, bool *ret_crossed) {
    constexpr int P = SS_BINS / NT;
    const int t = SS_TID;
    unsigned long long mine_w = 0;
    for (int k = 0; k < P; k++) {
        int d = dig(P * t + k);
        mine_w += d >= 0 ? sm.wbin[d] : 0ull;
    }
    const unsigned long long ex = ss_excl<NT>(mine_w, sm);
    if (t == 0)
        sm.pick = INT_MAX;
    SS_SYNC();
    if (!take_all) {
        unsigned long long c = ex;
        for (int k = 0; k < P; k++) {
            int d = dig(P * t + k);
            if (d < 0)
                break;
            unsigned long long c2 = c + sm.wbin[d];
            if (!ss_cross((double)c, G, strict) && ss_cross((double)c2, G, strict)) {
                ss_min(&sm.pick, P * t + k);
                break;
            }
            c = c2;
        }
    }
    SS_SYNC();
    const bool crossed = sm.pick != INT_MAX;
    SS_SYNC();
    if (!crossed) {
        int last = -1;
        for (int k = 0; k < P; k++) {
            int d = dig(P * t + k);
            if (d >= 0 && sm.cbin[d] > 0)
                last = P * t + k;
        }
        if (t == 0)
            sm.pick = -1;
        SS_SYNC();
        if (last >= 0)
            ss_max_i(&sm.pick, last);
    }
    SS_SYNC();
    const int pos = sm.pick;
    if (pos >= 0 && pos / P == t) {
        unsigned long long c = ex;
        for (int k = P * t; k < pos; k++) {
            int d = dig(k);
            c += d >= 0 ? sm.wbin[d] : 0ull;
        }
        sm.before = c;
    }
    SS_SYNC();
    *ret_before = sm.before;
    *ret_crossed = crossed;
    const int d = pos >= 0 ? dig(pos) : -1;
    SS_SYNC();
    return d;
}

/* scan orders: keys from the highest digit down, ids from the lowest up */
template <int NB> struct ss_desc {
    SS_HD int operator()(int pos) const { return pos < NB ? NB - 1 - pos : -1; }
};
struct ss_asc {
    SS_HD int operator()(int pos) const { return pos < SS_BINS ? pos : -1; }
};

/* Writes the elements of src with pred(l, id) (scaled logit, id; any order) to ol/oid; returns
 * how many. The caller knows they fit. */
template <int NT, typename P>
SS_HD int ss_gather(const ss_src &src, P pred, float *ol, int32_t *oid, ss_smem &sm) {
#ifdef __CUDA_ARCH__
    const int lane = threadIdx.x & 31;
    if (threadIdx.x == 0)
        sm.ncand = 0;
    __syncthreads();
    for (int base = 0; base < src.n; base += NT) { /* every lane runs every iteration */
        const int i = base + (int)threadIdx.x;
        float l = 0.0f;
        int v = 0;
        bool take = false;
        if (i < src.n) {
            l = ss_val(src, i);
            v = ss_id(src, i);
            take = pred(l, v);
        }
        const unsigned m = __ballot_sync(0xffffffffu, take);
        int at = 0;
        if (lane == 0 && m)
            at = atomicAdd(&sm.ncand, __popc(m));
        at = __shfl_sync(0xffffffffu, at, 0);
        if (take) {
            at += __popc(m & ((1u << lane) - 1u));
            ol[at] = l;
            oid[at] = v;
        }
    }
    __syncthreads(); /* the list (global memory) is visible to the whole block */
    const int n = sm.ncand;
    __syncthreads();
    return n;
#else
    (void)sm;
    int n = 0;
    for (int i = 0; i < src.n; i++) {
        float l = ss_val(src, i);
        int v = ss_id(src, i);
        if (pred(l, v)) {
            ol[n] = l;
            oid[n] = v;
            n++;
        }
    }
    return n;
#endif
}

/* candidates: non-zero fixed-point mass, linear bin <= D */
struct ss_pred_prefix {
    float mx;
    int D;
    SS_HD bool operator()(float l, int) const {
        return ss_q(expf(l - mx)) > 0 && ss_lbin(l, mx) <= D;
    }
};
/* a select's eligible elements in its linear bin lb */
struct ss_pred_bin {
    ss_bnd B;
    bool minp;
    float thr;
    float mx;
    int lb;
    SS_HD bool operator()(float l, int v) const {
        return ss_lbin(l, mx) == lb && ss_in(ss_key(l), v, B) && (!minp || expf(l - mx) >= thr);
    }
};

/* per-row scratch for a select's bin list */
struct ss_scr {
    float *l;
    int32_t *id;
    int cap;
};

/* the shortest prefix of the eligible elements whose weight reaches s.G (see the file comment) */
template <int NT>
SS_HD ss_bnd ss_select(const ss_src &src, float mx, const ss_sel &s, const ss_scr &scr,
                       ss_smem &sm) {
    const int t = SS_TID;
    const int shifts[3] = {21, 10, 0}, bits[3] = {11, 11, 10};
    uint32_t pre = 0;
    double G = s.G;
    bool all = false;
    uint32_t cnt = 0;
    int32_t minid = 0;
    /* stage 0: the linear bin (ss_lbin, a coarse prefix of the order) where the goal is crossed;
     * the radix rounds then look at that bin's elements only, which spreads the histogram
     * atomics (the float key's top bits put a whole row into a handful of digits) */
    if (!s.reuse) {
        for (int i = t; i < SS_BINS; i += NT) {
            sm.wbin[i] = 0;
            sm.cbin[i] = 0;
        }
        SS_SYNC();
        for (int i = t; i < src.n; i += NT) {
            float l = ss_val(src, i);
            if (!ss_in(ss_key(l), ss_id(src, i), s.B))
                continue;
            float p = expf(l - mx);
            if (s.minp && !(p >= s.thr))
                continue;
            int d = ss_lbin(l, mx);
            ss_add(&sm.wbin[d], s.mass ? ss_q(p) : 1ull);
            ss_addu(&sm.cbin[d], 1u);
        }
        SS_SYNC();
    }
    int lb;
    {
        unsigned long long before = 0;
        bool crossed = false;
        lb = ss_pick<NT>(sm, ss_asc(), G, s.strict, false, &before, &crossed);
        if (lb < 0) /* nothing eligible: cannot happen for a non-empty set; keep B */
            return s.B;
        all = !crossed;
        G -= (double)before;
        SS_SYNC();
    }
    /* the bin's elements into the scratch list when they fit: the rounds below then read a few
     * hundred elements instead of the whole source */
    ss_src in = src;
    const int n_lb = (int)sm.cbin[lb];
    SS_SYNC();
    if (scr.cap > 0 && n_lb <= scr.cap)
        in = ss_src{scr.l, scr.id,
                    ss_gather<NT>(src, ss_pred_bin{s.B, s.minp, s.thr, mx, lb}, scr.l, scr.id, sm),
                    1.0f};
    for (int r = 0; r < 3; r++) {
        const int nb = 1 << bits[r], sh = shifts[r], psh = sh + bits[r];
        for (int i = t; i < nb; i += NT) {
            sm.wbin[i] = 0;
            sm.cbin[i] = 0;
            sm.minid[i] = INT_MAX;
        }
        SS_SYNC();
        for (int i = t; i < in.n; i += NT) {
            float l = ss_val(in, i);
            int v = ss_id(in, i);
            uint32_t k = ss_key(l);
            if ((r > 0 && (k >> psh) != pre) || !ss_in(k, v, s.B) || ss_lbin(l, mx) != lb)
                continue;
            float p = expf(l - mx);
            if (s.minp && !(p >= s.thr))
                continue;
            int d = (int)((k >> sh) & (uint32_t)(nb - 1));
            ss_add(&sm.wbin[d], s.mass ? ss_q(p) : 1ull);
            ss_addu(&sm.cbin[d], 1u);
            ss_min(&sm.minid[d], v);
        }
        SS_SYNC();
        unsigned long long before = 0;
        bool crossed = false;
        int d = nb == SS_BINS
                    ? ss_pick<NT>(sm, ss_desc<SS_BINS>(), G, s.strict, all, &before, &crossed)
                    : ss_pick<NT>(sm, ss_desc<SS_BINS / 2>(), G, s.strict, all, &before, &crossed);
        if (d < 0) /* nothing eligible: cannot happen for a non-empty set; keep B */
            return s.B;
        if (!crossed)
            all = true;
        G -= (double)before;
        pre = r == 0 ? (uint32_t)d : (pre << bits[r]) | (uint32_t)d;
        cnt = sm.cbin[d];
        minid = sm.minid[d];
        SS_SYNC();
    }
    /* pre is the key of the boundary; among its cnt equal logits take the n-th lowest id */
    uint32_t n = cnt;
    if (!all && cnt > 1) {
        double w = s.mass ? (double)ss_q(expf(ss_unkey(pre) - mx)) : 1.0;
        if (w > 0) {
            double q = s.strict ? floor(G / w) + 1.0 : ceil(G / w);
            n = q < 1.0 ? 1u : (q > (double)cnt ? cnt : (uint32_t)q);
        }
    }
    if (n <= 1)
        return ss_bnd{pre, minid};
    uint32_t ipre = 0;
    double need = n;
    for (int r = 0; r < 2; r++) {
        const int sh = r == 0 ? 11 : 0;
        for (int i = t; i < SS_BINS; i += NT) {
            sm.wbin[i] = 0;
            sm.cbin[i] = 0;
        }
        SS_SYNC();
        for (int i = t; i < in.n; i += NT) {
            int v = ss_id(in, i);
            if (r > 0 && ((uint32_t)v >> 11) != ipre)
                continue;
            float l = ss_val(in, i);
            uint32_t k = ss_key(l);
            if (k != pre || !ss_in(k, v, s.B))
                continue;
            if (s.minp && !(expf(l - mx) >= s.thr))
                continue;
            int d = (int)(((uint32_t)v >> sh) & (SS_BINS - 1));
            ss_add(&sm.wbin[d], 1ull);
            ss_addu(&sm.cbin[d], 1u);
        }
        SS_SYNC();
        unsigned long long before = 0;
        bool crossed = false;
        int d = ss_pick<NT>(sm, ss_asc(), need, false, false, &before, &crossed);
        if (d < 0)
            return ss_bnd{pre, minid};
        need -= (double)before;
        ipre = r == 0 ? (uint32_t)d : (ipre << 11) | (uint32_t)d;
        SS_SYNC();
    }
    return ss_bnd{pre, (int32_t)ipre};
}

/* fixed-point mass of the eligible elements */
template <int NT>
SS_HD unsigned long long ss_mass(const ss_src &src, float mx, ss_bnd B, bool minp, float thr,
                                 ss_smem &sm) {
    unsigned long long acc = 0;
    for (int i = SS_TID; i < src.n; i += NT) {
        float l = ss_val(src, i);
        if (!ss_in(ss_key(l), ss_id(src, i), B))
            continue;
        float p = expf(l - mx);
        if (minp && !(p >= thr))
            continue;
        acc += ss_q(p);
    }
    return ss_sum<NT>(acc, sm);
}

/* One pass over the row: per linear bin (ss_lbin) the count and the fixed-point mass of the
 * elements with a non-zero fixed-point mass (the others weigh nothing in any mass select and
 * are never drawn). Returns the row's total fixed-point mass. */
template <int NT>
SS_HD unsigned long long ss_lhist(const float *row, int V, float inv_t, float mx, ss_smem &sm) {
    const int t = SS_TID;
    for (int i = t; i < SS_BINS; i += NT) {
        sm.wbin[i] = 0;
        sm.cbin[i] = 0;
    }
    SS_SYNC();
    unsigned long long acc = 0;
    for (int v = t; v < V; v += NT) {
        float l = ss_l(row, v, inv_t);
        unsigned long long q = ss_q(expf(l - mx));
        if (q == 0)
            continue;
        int d = ss_lbin(l, mx);
        ss_add(&sm.wbin[d], q);
        ss_addu(&sm.cbin[d], 1u);
        acc += q;
    }
    SS_SYNC();
    return ss_sum<NT>(acc, sm);
}

/* The first linear bin where the running count (or mass) through it exceeds G: the prefix
 * select for G then ends inside bins <= the result. SS_BINS - 1 when none does. */
template <int NT> SS_HD int ss_cut(ss_smem &sm, bool count, double G) {
    constexpr int P = SS_BINS / NT;
    const int t = SS_TID;
    unsigned long long w = 0;
    for (int k = 0; k < P; k++)
        w += count ? (unsigned long long)sm.cbin[P * t + k] : sm.wbin[P * t + k];
    unsigned long long c = ss_excl<NT>(w, sm);
    if (t == 0)
        sm.pick = SS_BINS - 1;
    SS_SYNC();
    for (int k = 0; k < P; k++) {
        c += count ? (unsigned long long)sm.cbin[P * t + k] : sm.wbin[P * t + k];
        if ((double)c > G) {
            ss_min(&sm.pick, P * t + k);
            break;
        }
    }
    SS_SYNC();
    const int d = sm.pick;
    SS_SYNC();
    return d;
}

/* elements in linear bins <= D (per the histogram) */
template <int NT> SS_HD int ss_count_to(ss_smem &sm, int D) {
    constexpr int P = SS_BINS / NT;
    unsigned long long c = 0;
    for (int k = 0; k < P; k++)
        c += P * SS_TID + k <= D ? sm.cbin[P * SS_TID + k] : 0u;
    return (int)ss_sum<NT>(c, sm);
}

/* The linear bin bound of ss_row (after ss_lhist's histogram in sm): the truncation (top-k by
 * count, else top-p by mass, min-p by its threshold) or, without truncation, the draw ends in
 * linear bins <= the result. */
template <int NT>
SS_HD int ss_bound(ss_smem &sm, const eng_cuda_sample_row_t &rw, int V,
                   unsigned long long total_all, double u) {
    const bool topk = rw.top_k > 0 && rw.top_k < V;
    const bool minp = rw.min_p > 0.0f;
    int D = SS_BINS - 1;
    if (topk)
        D = ss_cut<NT>(sm, true, (double)rw.top_k);
    else if (rw.top_p < 1.0f)
        D = ss_cut<NT>(sm, false, (double)rw.top_p * (double)total_all);
    if (minp && !topk) { /* p >= min_p: mx - l <= -log(min_p) (one bin of slack for rounding);
                          * top-k needs its whole set for the top-p mass */
        const float x = -logf(rw.min_p) * SS_LBIN;
        const int dm = x < (float)(SS_BINS - 2) ? (int)x + 1 : SS_BINS - 1;
        D = dm < D ? dm : D;
    }
    if (!topk && !minp && !(rw.top_p < 1.0f))
        D = ss_cut<NT>(sm, false, u * (double)total_all);
    return D;
}

/* The selects of ss_row over src (the compacted prefix or the whole row), with ss_lhist's
 * histogram still in sm: returns the sampled id. */
template <int NT>
SS_HD int32_t ss_row_sel(const ss_src &src, int V, float mx, unsigned long long total_all,
                         const eng_cuda_sample_row_t &rw, double u, const ss_scr &scr,
                         ss_smem &sm) {
    const bool topk = rw.top_k > 0 && rw.top_k < V;
    const bool minp = rw.min_p > 0.0f;
    const ss_bnd all = {0u, INT_MAX};
    ss_bnd B = all;
    if (topk) {
        ss_sel s = {all, false, 0.0f, false, false, (double)rw.top_k};
        B = ss_select<NT>(src, mx, s, scr, sm);
    }
    const unsigned long long total =
        topk ? ss_mass<NT>(src, mx, B, false, 0.0f, sm) : total_all;
    if (rw.top_p < 1.0f) {
        /* without top-k, ss_lhist's histogram is this select's stage 0: the same weights on
         * every bin up to the crossing (it leaves out only zero-mass elements, and a top-p goal
         * <= the total always crosses at a bin with mass) */
        ss_sel s = {B, false, 0.0f, true, false, (double)rw.top_p * (double)total, !topk};
        ss_bnd P = ss_select<NT>(src, mx, s, scr, sm);
        if (P.key > B.key || (P.key == B.key && P.id < B.id))
            B = P; /* the shorter prefix */
    }
    const float thr = rw.min_p * 1.0f; /* p_max = expf(0) = 1 */
    unsigned long long mass = total;
    if (minp || rw.top_p < 1.0f)
        mass = ss_mass<NT>(src, mx, B, minp, thr, sm);
    ss_sel s = {B, minp, thr, true, true, u * (double)mass};
    return ss_select<NT>(src, mx, s, scr, sm).id;
}

/* whether the prefix of n_pre elements goes into the candidate list (a list of most of the row
 * saves nothing) */
SS_HD inline bool ss_compact(int n_pre, int cap, int V) {
    return n_pre <= cap && n_pre <= V / 2;
}

/* The temperature path of one row (temperature > 0): returns the sampled id. A histogram over
 * linear bins below the maximum bounds where the truncation (top-k by count, else top-p by mass,
 * min-p by its threshold) or, without truncation, the draw ends; the elements before that bound
 * (a prefix of the candidate order: usually a few hundred) are compacted into cl/cid (cap
 * elements; more, or cap 0: the selects run over the whole row as before) and the exact
 * selects run over them only. The answer is the same as over the whole row. */
template <int NT>
SS_HD int32_t ss_row(const float *row, int V, const eng_cuda_sample_row_t &rw, float *cl,
                     int32_t *cid, int cap, const ss_scr &scr, ss_smem &sm) {
    const float inv_t = 1.0f / rw.temperature;
    const float mx = ss_max<NT>(row, V, inv_t, sm);
    const unsigned long long total_all = ss_lhist<NT>(row, V, inv_t, mx, sm);
    const double u = ss_uniform(rw.seed, rw.step);
    const int D = ss_bound<NT>(sm, rw, V, total_all, u);
    ss_src src = {row, nullptr, V, inv_t};
    const int n_pre = cap > 0 ? ss_count_to<NT>(sm, D) : V;
    if (ss_compact(n_pre, cap, V))
        src = ss_src{cl, cid, ss_gather<NT>(src, ss_pred_prefix{mx, D}, cl, cid, sm), 1.0f};
    return ss_row_sel<NT>(src, V, mx, total_all, rw, u, scr, sm);
}

/* ---- sparse bin lists: a prefix too long to compact (split path) ---------------------------
 *
 * When the truncation keeps most of the row (a flat row under top-p, or a late draw without any
 * truncation), the compacted prefix would be most of the row and the selects read the whole row
 * from one block, pass after pass. Without top-k and min-p the selects only ever look at the
 * elements of a few linear bins, and the row histogram (ss_lhist's) gives everything else:
 *  - top-p (mass, non-strict) reuses the row histogram as its stage 0 already; its crossing bin
 *    lb_p follows from the histogram, and its radix rounds read lb_p's elements only;
 *  - the mass of the top-p set B is the row's mass before lb_p (histogram) plus that of lb_p's
 *    elements inside B (B ends inside lb_p: every element of an earlier bin has a larger logit,
 *    every element of a later one a smaller one);
 *  - the draw's stage 0 over B is the row histogram before lb_p, lb_p's part inside B, zero after;
 *    the draw's goal u x mass lies between u x (mass before lb_p) and u x (mass through lb_p), so
 *    its crossing bin lies in [ss_cut(u x lo), ss_cut(u x hi)] or is lb_p;
 *  - without truncation the draw over the whole row (mass = the row's) crosses at ss_cut(u x
 *    total), with the row histogram as its stage 0.
 * So the split path gathers only those bins' elements (sp_k3, all blocks) and sp_k4 runs the same
 * ss_select calls on them with those histograms: the same sets, the same exact integer sums, the
 * same token. The row histogram counts only elements with a non-zero fixed-point mass; a select's
 * own stage 0 counts every eligible element. They agree in bins <= SS_SPARSE_MAXBIN (a zero mass
 * needs mx - l > 22.8, bin >= 1459), so the plan requires every bin it uses to lie there; a draw
 * bin outside the gathered ones (not expected) falls back to the whole row, still exact.
 * OM_CUDA_SAMPLE_SPARSE=0 turns it off (A/B). */
#define SS_SPARSE_MAXBIN 1400

struct ss_plan {
    int lb_p;                 /* top-p's crossing bin; -1: no top-p (the draw only) */
    int lo, hi;               /* the bins the draw can cross in (besides lb_p) */
    unsigned long long m_lo;  /* fixed-point mass of the bins before lb_p */
};

/* elements with a non-zero fixed-point mass in bins [lo, hi] or lb */
struct ss_pred_sparse {
    float mx;
    int lo, hi, lb;
    SS_HD bool operator()(float l, int) const {
        if (ss_q(expf(l - mx)) == 0)
            return false;
        const int d = ss_lbin(l, mx);
        return (d >= lo && d <= hi) || d == lb;
    }
};

/* With ss_lhist's row histogram in sm (left as it is): whether the selects of a row whose prefix
 * does not compact can run over a few bins' elements (the plan), which must fit cap. Every block
 * computes the same plan. */
template <int NT>
SS_HD bool ss_sparse_plan(ss_smem &sm, const eng_cuda_sample_row_t &rw, int V,
                          unsigned long long total_all, double u, int cap, ss_plan *pl) {
    const bool topk = rw.top_k > 0 && rw.top_k < V;
    if (topk || rw.min_p > 0.0f || cap <= 0)
        return false;
    ss_plan p;
    if (rw.top_p < 1.0f) {
        unsigned long long before = 0;
        bool crossed = false;
        const int lb = ss_pick<NT>(sm, ss_asc(), (double)rw.top_p * (double)total_all, false,
                                   false, &before, &crossed);
        if (!crossed || lb < 0 || lb > SS_SPARSE_MAXBIN)
            return false;
        const unsigned long long m_hi = before + sm.wbin[lb];
        const int lo = ss_cut<NT>(sm, false, u * (double)before);
        const int hi = ss_cut<NT>(sm, false, u * (double)m_hi);
        p = ss_plan{lb, lo < lb ? lo : lb, hi < lb ? hi : lb, before};
    } else {
        const int d = ss_cut<NT>(sm, false, u * (double)total_all);
        if (d > SS_SPARSE_MAXBIN)
            return false;
        p = ss_plan{-1, d, d, 0ull};
    }
    constexpr int P = SS_BINS / NT;
    unsigned long long c = 0;
    for (int k = 0; k < P; k++) {
        const int d = P * SS_TID + k;
        c += (d >= p.lo && d <= p.hi) || d == p.lb_p ? sm.cbin[d] : 0u;
    }
    const unsigned long long n = ss_sum<NT>(c, sm);
    *pl = p;
    return n <= (unsigned long long)cap;
}

/* fixed-point mass and count of src's elements in bin lb inside B */
template <int NT>
SS_HD void ss_bin_part(const ss_src &src, float mx, ss_bnd B, int lb, ss_smem &sm,
                       unsigned long long *ret_w, unsigned long long *ret_c) {
    unsigned long long w = 0, c = 0;
    for (int i = SS_TID; i < src.n; i += NT) {
        const float l = ss_val(src, i);
        if (ss_lbin(l, mx) != lb || !ss_in(ss_key(l), ss_id(src, i), B))
            continue;
        w += ss_q(expf(l - mx));
        c++;
    }
    *ret_w = ss_sum<NT>(w, sm);
    *ret_c = ss_sum<NT>(c, sm);
}

/* ss_row_sel for a row without top-k and min-p whose prefix did not compact, over list (the
 * elements of pl's bins) and the row histogram (in sm on entry; also at hw / hc, SS_BINS each, to
 * build the draw's stage 0): the same id as ss_row_sel over the whole row (whole). */
template <int NT>
__noinline__ /* keeps sp_k4's other paths' registers (and spills) as they were */
SS_HD int32_t ss_row_sel_sparse(const ss_src &list, const ss_src &whole, float mx,
                                unsigned long long total_all, const eng_cuda_sample_row_t &rw,
                                double u, const ss_scr &scr, ss_smem &sm, const ss_plan &pl,
                                const unsigned long long *hw, const uint32_t *hc,
                                bool *ret_listed) {
    const ss_bnd all = {0u, INT_MAX};
    ss_bnd B = all;
    unsigned long long mass = total_all;
    if (pl.lb_p >= 0) {
        /* top-p: ss_row_sel's select, stage 0 the row histogram; lb_p's elements are in list */
        ss_sel s = {B, false, 0.0f, true, false, (double)rw.top_p * (double)total_all, true};
        ss_bnd P = ss_select<NT>(list, mx, s, scr, sm);
        if (P.key > B.key || (P.key == B.key && P.id < B.id))
            B = P;
        unsigned long long wq = 0, wc = 0;
        ss_bin_part<NT>(list, mx, B, pl.lb_p, sm, &wq, &wc);
        mass = pl.m_lo + wq; /* ss_mass over the whole row */
        /* the draw's stage 0 over B: the row before lb_p, lb_p's part inside B, nothing after */
        for (int i = SS_TID; i < SS_BINS; i += NT) {
            sm.wbin[i] = i < pl.lb_p ? hw[i] : (i == pl.lb_p ? wq : 0ull);
            sm.cbin[i] = i < pl.lb_p ? hc[i] : (i == pl.lb_p ? (uint32_t)wc : 0u);
        }
        SS_SYNC();
    }
    /* the draw (mass, strict), stage 0 in sm; without top-p it is the row histogram itself */
    ss_sel s = {B, false, 0.0f, true, true, u * (double)mass, true};
    unsigned long long before = 0;
    bool crossed = false;
    const int ld = ss_pick<NT>(sm, ss_asc(), s.G, true, false, &before, &crossed);
    const bool listed = ld >= 0 && ((ld >= pl.lo && ld <= pl.hi) || ld == pl.lb_p);
    if (ret_listed)
        *ret_listed = listed;
    return ss_select<NT>(listed ? list : whole, mx, s, scr, sm).id;
}

/* The best element (higher logit, then lower id) strictly after (pl, pid) in that order: the
 * greedy argmax from (+inf, -1), the next top logprob from the previous one. Returns its id
 * (INT_MAX: none; NaN never qualifies) and, in every thread, its logit in *ret_l. */
__device__ int32_t ss_best(const float *row, int V, float pl, int pid, ss_smem &sm, float *ret_l) {
    const int t = threadIdx.x;
    float best = -INFINITY;
    int bi = INT_MAX;
    for (int v = t; v < V; v += SS_THREADS) {
        float x = row[v];
        if (!(x < pl || (x == pl && v > pid)))
            continue;
        if (x > best || (x == best && v < bi)) {
            best = x;
            bi = v;
        }
    }
    warp_argmax_lo(best, bi);
    if ((t & 31) == 0) {
        sm.fwarp[t >> 5] = best;
        sm.iwarp[t >> 5] = bi;
    }
    __syncthreads();
    float b = sm.fwarp[0];
    int id = sm.iwarp[0];
    for (int i = 1; i < SS_THREADS / 32; i++)
        if (sm.fwarp[i] > b || (sm.fwarp[i] == b && sm.iwarp[i] < id)) {
            b = sm.fwarp[i];
            id = sm.iwarp[i];
        }
    __syncthreads();
    *ret_l = b;
    return id;
}

/* greedy: the first maximum of the (edited) logits */
__device__ int32_t ss_argmax(const float *row, int V, ss_smem &sm) {
    float b;
    int32_t id = ss_best(row, V, INFINITY, -1, sm, &b);
    return id == INT_MAX ? 0 : id;
}

/* logprobs of the raw row (eng_sampler_sample's: log_softmax in double, n best by logit, ties by
 * lower id): the token's and the n best, into o (thread 0 writes) */
__device__ void ss_logprobs(const float *raw, int V, uint32_t n, int32_t tok,
                            eng_cuda_sample_out_t *o, ss_smem &sm) {
    const int t = threadIdx.x;
    const float mx = ss_max<SS_THREADS>(raw, V, 1.0f, sm);
    double acc = 0;
    for (int v = t; v < V; v += SS_THREADS)
        acc += exp((double)raw[v] - (double)mx);
    for (int off = 16; off > 0; off >>= 1)
        acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if ((t & 31) == 0)
        sm.dwarp[t >> 5] = acc;
    __syncthreads();
    double sum = 0;
    for (int i = 0; i < SS_THREADS / 32; i++)
        sum += sm.dwarp[i];
    __syncthreads();
    const double lse = (double)mx + log(sum);
    float pl = INFINITY;
    int pid = -1;
    uint32_t k = 0;
    for (; k < n; k++) {
        float b;
        int32_t id = ss_best(raw, V, pl, pid, sm, &b);
        if (id == INT_MAX)
            break;
        if (t == 0) {
            o->top_ids[k] = id;
            o->top_logprobs[k] = (float)((double)b - lse);
        }
        pl = b;
        pid = id;
    }
    if (t == 0) {
        o->n_top = k;
        o->logprob = (float)((double)raw[tok] - lse);
    }
}

/* candidate slots per row (scaled logit + id, 8 bytes each) in the device workspace: at least
 * SS_CAP, up to the whole row while rows x slots stays within SS_CAND_BUDGET */
#define SS_CAP 16384
#define SS_CAND_BUDGET (8u << 20)
/* slots per row for a select's bin list */
#define SS_BCAP 8192

__global__ void __launch_bounds__(SS_THREADS, 1)
    k_sample(const float *logits, int V, const eng_cuda_sample_row_t *rows,
             eng_cuda_sample_out_t *out, float *cand_l, int32_t *cand_id, int cap,
             const eng_cuda_sample_edit_t *edits, float *proc, float *bin_l, int32_t *bin_id) {
    __shared__ ss_smem sm;
    const eng_cuda_sample_row_t rw = rows[blockIdx.x];
    const float *raw = logits + (size_t)blockIdx.x * V;
    const float *row = raw;
    if (rw.n_edit > 0) { /* the edited copy (eng_sampler_sample's processed logits) */
        float *pr = proc + (size_t)rw.slot * V;
        for (int v = threadIdx.x; v < V; v += SS_THREADS)
            pr[v] = raw[v];
        __syncthreads();
        for (uint32_t j = threadIdx.x; j < rw.n_edit; j += SS_THREADS) {
            const eng_cuda_sample_edit_t e = edits[rw.edit0 + j];
            float l = raw[e.id];
            if (e.rp != 1.0f)
                l = l > 0 ? l / e.rp : l * e.rp;
            l -= e.sub;
            if (e.suppress)
                l = -INFINITY;
            pr[e.id] = l;
        }
        __syncthreads(); /* the copy (global memory) is visible to the whole block */
        row = pr;
    }
    int32_t id = rw.temperature > 0.0f
                     ? ss_row<SS_THREADS>(row, V, rw, cand_l + (size_t)blockIdx.x * cap,
                                          cand_id + (size_t)blockIdx.x * cap, cap,
                                          ss_scr{bin_l + (size_t)blockIdx.x * SS_BCAP,
                                                 bin_id + (size_t)blockIdx.x * SS_BCAP, SS_BCAP},
                                          sm)
                     : ss_argmax(row, V, sm);
    __syncthreads();
    eng_cuda_sample_out_t *o = &out[blockIdx.x];
    if (rw.n_logprobs > 0)
        ss_logprobs(raw, V, rw.n_logprobs, id, o, sm);
    if (threadIdx.x == 0) {
        o->token = id;
        if (rw.n_logprobs == 0) {
            o->logprob = 0.0f;
            o->n_top = 0;
        }
    }
}

/* ---- the split path: one row over many blocks (small batches) -------------------------------
 *
 * At batch 1 k_sample's single block reads the row several times alone (the maximum, the linear
 * histogram, the compaction, logprobs' sum and top-n). The split path spreads those whole-row
 * passes over nb blocks per row (a chunk of the row each) in four launches, and leaves only the
 * selects over the compacted candidates (short) to one block per row:
 *   sp_k1 (nb x rows): the edited copy of the chunk; the chunk's maximum of the scaled logits
 *         (greedy: its best (logit, id)); logprobs: the chunk's raw maximum and its n best; block
 *         0 zeroes the row's histogram and counters (each call, so graph replays start clean);
 *   sp_k2 (nb [+ 32] x rows): the row maximum from the chunk maxima, the chunk's linear histogram
 *         (ss_lhist's) added into the row's (integer atomics: exact, order-free); logprobs: 32
 *         more blocks (one warp each) compute k_sample's 32 per-warp sums of exp(raw - max) with
 *         the same lanes, element order and shuffles (so the double sum and the logprobs are
 *         bit-identical);
 *   sp_k3 (nb x rows): every block derives ss_row's bound D from the row histogram and gathers
 *         its chunk's share of the prefix into the candidate list (a global counter per row);
 *   sp_k4 (rows, SS_THREADS): ss_row_sel over the list (or the whole row when it does not
 *         compact, as k_sample), the greedy and top-n merges, the logprobs.
 * Every step computes the same sets and exact sums as k_sample, so the token and the logprobs
 * are the same bits. Sizes come from the launch (nb, V, cap), never from device results. */
#define SP_THREADS 256
#define SP_MAXNB 256
#define SP_MIN_CHUNK 1024   /* elements per block at least */
#define SP_TARGET_BLOCKS 264 /* ~2 blocks per SM on an H100 (132 SMs), over all rows */
#define SP_LP_BLOCKS (SS_THREADS / 32) /* sp_k2's extra blocks: one per k_sample warp */
#define SP_MAXLP ENG_CUDA_SAMPLE_MAX_LOGPROBS

/* per-row partials and counters (device; rows x nb, rows x 32, rows x SS_BINS, rows) */
struct sp_ws {
    float *bmax;               /* (rows, nb) chunk max of scaled logits / greedy best logit */
    int32_t *bid;              /* (rows, nb) greedy best id (INT_MAX: none) */
    float *rmax;               /* (rows, nb) chunk max of raw logits (logprobs) */
    float *topl;               /* (rows, nb, SP_MAXLP) chunk n best raw logits */
    int32_t *topi;             /* (rows, nb, SP_MAXLP) their ids (INT_MAX: none) */
    double *dsum;              /* (rows, 32) k_sample's per-warp sums of exp(raw - max) */
    unsigned long long *wbin;  /* (rows, SS_BINS) linear histogram: fixed-point mass */
    uint32_t *cbin;            /* (rows, SS_BINS) linear histogram: counts */
    unsigned long long *total; /* (rows) fixed-point mass of the row */
    int32_t *ncand;            /* (rows) candidates gathered */
};

struct sp_red {
    float f[32];
    int32_t i[32];
};

__device__ inline void sp_chunk(int V, int nb, int b, int *lo, int *hi) {
    const int c = (V + nb - 1) / nb;
    const long long l = (long long)b * c;
    *lo = l < V ? (int)l : V;
    *hi = *lo + c < V ? *lo + c : V;
}

/* block max over p[0..n) (every thread gets it) */
template <int NT> __device__ float sp_fmax(float m, sp_red &rd) {
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0)
        rd.f[threadIdx.x >> 5] = m;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < NT / 32; i++)
        r = fmaxf(r, rd.f[i]);
    __syncthreads();
    return r;
}
template <int NT> __device__ float sp_pmax(const float *p, int n, sp_red &rd) {
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += NT)
        m = fmaxf(m, p[i]);
    return sp_fmax<NT>(m, rd);
}

/* ss_best over elements lo..hi of l (ids: the element's id, NULL: its index; INT_MAX: skipped):
 * the best (higher logit, then lower id) strictly after (pl, pid); INT_MAX: none */
template <int NT>
__device__ int32_t sp_best(const float *l, const int32_t *ids, int lo, int hi, float pl, int pid,
                           sp_red &rd, float *ret_l) {
    float best = -INFINITY;
    int bi = INT_MAX;
    for (int i = lo + (int)threadIdx.x; i < hi; i += NT) {
        const float x = l[i];
        const int v = ids ? ids[i] : i;
        if (v == INT_MAX || !(x < pl || (x == pl && v > pid)))
            continue;
        if (x > best || (x == best && v < bi)) {
            best = x;
            bi = v;
        }
    }
    warp_argmax_lo(best, bi);
    if ((threadIdx.x & 31) == 0) {
        rd.f[threadIdx.x >> 5] = best;
        rd.i[threadIdx.x >> 5] = bi;
    }
    __syncthreads();
    float b = rd.f[0];
    int id = rd.i[0];
    for (int i = 1; i < NT / 32; i++)
        if (rd.f[i] > b || (rd.f[i] == b && rd.i[i] < id)) {
            b = rd.f[i];
            id = rd.i[i];
        }
    __syncthreads();
    *ret_l = b;
    return id;
}

__device__ inline const float *sp_row(const float *logits, int V, const eng_cuda_sample_row_t &rw,
                                      const float *proc, int r) {
    return rw.n_edit > 0 ? proc + (size_t)rw.slot * V : logits + (size_t)r * V;
}

__global__ void __launch_bounds__(SP_THREADS)
    sp_k1(const float *logits, int V, int nb, const eng_cuda_sample_row_t *rows,
          const eng_cuda_sample_edit_t *edits, float *proc, sp_ws ws) {
    __shared__ sp_red rd;
    const int r = blockIdx.y, b = blockIdx.x, t = threadIdx.x;
    const eng_cuda_sample_row_t rw = rows[r];
    int lo, hi;
    sp_chunk(V, nb, b, &lo, &hi);
    const float *raw = logits + (size_t)r * V;
    const float *row = raw;
    if (rw.n_edit > 0) { /* k_sample's edited copy, this chunk of it */
        float *pr = proc + (size_t)rw.slot * V;
        for (int v = lo + t; v < hi; v += SP_THREADS)
            pr[v] = raw[v];
        __syncthreads();
        for (uint32_t j = t; j < rw.n_edit; j += SP_THREADS) {
            const eng_cuda_sample_edit_t e = edits[rw.edit0 + j];
            if (e.id < lo || e.id >= hi)
                continue;
            float l = raw[e.id];
            if (e.rp != 1.0f)
                l = l > 0 ? l / e.rp : l * e.rp;
            l -= e.sub;
            if (e.suppress)
                l = -INFINITY;
            pr[e.id] = l;
        }
        __syncthreads(); /* the chunk (global memory) is visible to the whole block */
        row = pr;
    }
    if (b == 0) {
        for (int i = t; i < SS_BINS; i += SP_THREADS) {
            ws.wbin[(size_t)r * SS_BINS + i] = 0;
            ws.cbin[(size_t)r * SS_BINS + i] = 0;
        }
        if (t == 0) {
            ws.total[r] = 0;
            ws.ncand[r] = 0;
        }
    }
    const size_t pb = (size_t)r * nb + b;
    if (rw.temperature > 0.0f) {
        const float inv_t = 1.0f / rw.temperature;
        float m = -INFINITY;
        for (int v = lo + t; v < hi; v += SP_THREADS)
            m = fmaxf(m, ss_l(row, v, inv_t));
        m = sp_fmax<SP_THREADS>(m, rd);
        if (t == 0)
            ws.bmax[pb] = m;
    } else {
        float bl;
        const int32_t id = sp_best<SP_THREADS>(row, nullptr, lo, hi, INFINITY, -1, rd, &bl);
        if (t == 0) {
            ws.bmax[pb] = bl;
            ws.bid[pb] = id;
        }
    }
    if (rw.n_logprobs > 0) {
        float m = -INFINITY;
        for (int v = lo + t; v < hi; v += SP_THREADS)
            m = fmaxf(m, ss_l(raw, v, 1.0f));
        m = sp_fmax<SP_THREADS>(m, rd);
        if (t == 0)
            ws.rmax[pb] = m;
        float pl = INFINITY;
        int pid = -1;
        for (uint32_t k = 0; k < SP_MAXLP; k++) {
            float bl = -INFINITY;
            int32_t id = INT_MAX;
            if (k < rw.n_logprobs)
                id = sp_best<SP_THREADS>(raw, nullptr, lo, hi, pl, pid, rd, &bl);
            if (t == 0) {
                ws.topl[pb * SP_MAXLP + k] = bl;
                ws.topi[pb * SP_MAXLP + k] = id;
            }
            pl = bl;
            pid = id;
        }
    }
}

__global__ void __launch_bounds__(SP_THREADS)
    sp_k2(const float *logits, int V, int nb, const eng_cuda_sample_row_t *rows,
          const float *proc, sp_ws ws) {
    __shared__ unsigned long long wbin[SS_BINS];
    __shared__ uint32_t cbin[SS_BINS];
    __shared__ sp_red rd;
    const int r = blockIdx.y, b = blockIdx.x, t = threadIdx.x;
    const eng_cuda_sample_row_t rw = rows[r];
    if (b >= nb) { /* logprobs: block nb + w is k_sample's warp w, lane for lane (warp 0 only:
                    * one warp per SM, the double exps spread over 32 SMs) */
        if (rw.n_logprobs == 0 || t >= 32)
            return;
        const float *raw = logits + (size_t)r * V;
        float m = -INFINITY;
        for (int i = t; i < nb; i += 32)
            m = fmaxf(m, ws.rmax[(size_t)r * nb + i]);
        const float mx = warp_max(m);
        const int w = b - nb;
        const int vt = w * 32 + t; /* the k_sample thread */
        double acc = 0;
        for (int v = vt; v < V; v += SS_THREADS)
            acc += exp((double)raw[v] - (double)mx);
        for (int off = 16; off > 0; off >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, off);
        if (t == 0)
            ws.dsum[(size_t)r * 32 + w] = acc;
        return;
    }
    if (!(rw.temperature > 0.0f))
        return;
    const float *row = sp_row(logits, V, rw, proc, r);
    const float inv_t = 1.0f / rw.temperature;
    const float mx = sp_pmax<SP_THREADS>(ws.bmax + (size_t)r * nb, nb, rd);
    for (int i = t; i < SS_BINS; i += SP_THREADS) {
        wbin[i] = 0;
        cbin[i] = 0;
    }
    __syncthreads();
    int lo, hi;
    sp_chunk(V, nb, b, &lo, &hi);
    unsigned long long acc = 0;
    for (int v = lo + t; v < hi; v += SP_THREADS) { /* ss_lhist's loop body */
        const float l = ss_l(row, v, inv_t);
        const unsigned long long q = ss_q(expf(l - mx));
        if (q == 0)
            continue;
        const int d = ss_lbin(l, mx);
        atomicAdd(&wbin[d], q);
        atomicAdd(&cbin[d], 1u);
        acc += q;
    }
    __syncthreads();
    for (int i = t; i < SS_BINS; i += SP_THREADS)
        if (cbin[i] > 0) {
            atomicAdd(&ws.wbin[(size_t)r * SS_BINS + i], wbin[i]);
            atomicAdd(&ws.cbin[(size_t)r * SS_BINS + i], cbin[i]);
        }
    for (int o = 16; o > 0; o >>= 1)
        acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((t & 31) == 0 && acc > 0)
        atomicAdd(&ws.total[r], acc);
}

/* the row histogram into sm (k_sample's state after ss_lhist); returns the row's mass */
template <int NT>
__device__ unsigned long long sp_load_hist(const sp_ws &ws, int r, ss_smem &sm) {
    for (int i = threadIdx.x; i < SS_BINS; i += NT) {
        sm.wbin[i] = ws.wbin[(size_t)r * SS_BINS + i];
        sm.cbin[i] = ws.cbin[(size_t)r * SS_BINS + i];
    }
    __syncthreads();
    return ws.total[r];
}

/* the chunk [lo, hi) of row's scaled logits with pred into the row's candidate list */
template <typename P>
__device__ void sp_gather(const float *row, float inv_t, int lo, int hi, P pred, float *ol,
                          int32_t *oid, int *ncand) {
    const int t = threadIdx.x, lane = t & 31;
    for (int base = lo; base < hi; base += SP_THREADS) { /* every lane runs every iteration */
        const int v = base + t;
        float l = 0.0f;
        bool take = false;
        if (v < hi) {
            l = ss_l(row, v, inv_t);
            take = pred(l, v);
        }
        const unsigned m = __ballot_sync(0xffffffffu, take);
        int at = 0;
        if (lane == 0 && m)
            at = atomicAdd(ncand, __popc(m));
        at = __shfl_sync(0xffffffffu, at, 0);
        if (take) {
            at += __popc(m & ((1u << lane) - 1u));
            ol[at] = l;
            oid[at] = v;
        }
    }
}

__global__ void __launch_bounds__(SP_THREADS)
    sp_k3(const float *logits, int V, int nb, const eng_cuda_sample_row_t *rows,
          const float *proc, sp_ws ws, float *cand_l, int32_t *cand_id, int cap, bool sparse) {
    __shared__ ss_smem sm;
    __shared__ sp_red rd;
    const int r = blockIdx.y, b = blockIdx.x;
    const eng_cuda_sample_row_t rw = rows[r];
    if (!(rw.temperature > 0.0f))
        return;
    const unsigned long long total_all = sp_load_hist<SP_THREADS>(ws, r, sm);
    const double u = ss_uniform(rw.seed, rw.step);
    const int D = ss_bound<SP_THREADS>(sm, rw, V, total_all, u);
    const int n_pre = cap > 0 ? ss_count_to<SP_THREADS>(sm, D) : V;
    ss_plan pl = {-1, 0, -1, 0ull};
    const bool compact = ss_compact(n_pre, cap, V);
    if (!compact && !(sparse && ss_sparse_plan<SP_THREADS>(sm, rw, V, total_all, u, cap, &pl)))
        return; /* sp_k4 reads the whole row */
    const float *row = sp_row(logits, V, rw, proc, r);
    const float inv_t = 1.0f / rw.temperature;
    const float mx = sp_pmax<SP_THREADS>(ws.bmax + (size_t)r * nb, nb, rd);
    float *ol = cand_l + (size_t)r * cap;
    int32_t *oid = cand_id + (size_t)r * cap;
    int lo, hi;
    sp_chunk(V, nb, b, &lo, &hi);
    if (compact)
        sp_gather(row, inv_t, lo, hi, ss_pred_prefix{mx, D}, ol, oid, &ws.ncand[r]);
    else /* sparse bin lists: the plan's bins only (they fit cap) */
        sp_gather(row, inv_t, lo, hi, ss_pred_sparse{mx, pl.lo, pl.hi, pl.lb_p}, ol, oid,
                  &ws.ncand[r]);
}

/* rows sp_k4 drew from sparse bin lists (test hook eng_cuda_sample_sparse_rows) */
__device__ unsigned long long g_sp_sparse_rows;

__global__ void __launch_bounds__(SS_THREADS, 1)
    sp_k4(const float *logits, int V, int nb, const eng_cuda_sample_row_t *rows,
          eng_cuda_sample_out_t *out, const float *proc, sp_ws ws, float *cand_l,
          int32_t *cand_id, int cap, float *bin_l, int32_t *bin_id, bool sparse) {
    __shared__ ss_smem sm;
    __shared__ sp_red rd;
    const int r = blockIdx.x, t = threadIdx.x;
    const eng_cuda_sample_row_t rw = rows[r];
    const float *raw = logits + (size_t)r * V;
    int32_t id;
    if (rw.temperature > 0.0f) {
        const float *row = sp_row(logits, V, rw, proc, r);
        const float inv_t = 1.0f / rw.temperature;
        const float mx = sp_pmax<SS_THREADS>(ws.bmax + (size_t)r * nb, nb, rd);
        const unsigned long long total_all = sp_load_hist<SS_THREADS>(ws, r, sm);
        const double u = ss_uniform(rw.seed, rw.step);
        const int D = ss_bound<SS_THREADS>(sm, rw, V, total_all, u);
        const int n_pre = cap > 0 ? ss_count_to<SS_THREADS>(sm, D) : V;
        const ss_src whole = {row, nullptr, V, inv_t};
        const ss_src list = {cand_l + (size_t)r * cap, cand_id + (size_t)r * cap, ws.ncand[r],
                             1.0f};
        const ss_scr scr = {bin_l + (size_t)r * SS_BCAP, bin_id + (size_t)r * SS_BCAP, SS_BCAP};
        ss_plan pl;
        const bool compact = ss_compact(n_pre, cap, V);
        if (!compact && sparse && ss_sparse_plan<SS_THREADS>(sm, rw, V, total_all, u, cap, &pl)) {
            id = ss_row_sel_sparse<SS_THREADS>(list, whole, mx, total_all, rw, u, scr, sm, pl,
                                               ws.wbin + (size_t)r * SS_BINS,
                                               ws.cbin + (size_t)r * SS_BINS, nullptr);
            if (t == 0)
                atomicAdd(&g_sp_sparse_rows, 1ull);
        } else {
            id = ss_row_sel<SS_THREADS>(compact ? list : whole, V, mx, total_all, rw, u, scr, sm);
        }
    } else {
        float bl;
        id = sp_best<SS_THREADS>(ws.bmax + (size_t)r * nb, ws.bid + (size_t)r * nb, 0, nb,
                                 INFINITY, -1, rd, &bl);
        id = id == INT_MAX ? 0 : id;
    }
    __syncthreads();
    eng_cuda_sample_out_t *o = &out[r];
    if (rw.n_logprobs > 0) { /* ss_logprobs from the partials */
        const float mx = sp_pmax<SS_THREADS>(ws.rmax + (size_t)r * nb, nb, rd);
        double sum = 0;
        for (int i = 0; i < SS_THREADS / 32; i++)
            sum += ws.dsum[(size_t)r * 32 + i];
        const double lse = (double)mx + log(sum);
        const float *tl = ws.topl + (size_t)r * nb * SP_MAXLP;
        const int32_t *ti = ws.topi + (size_t)r * nb * SP_MAXLP;
        float pl = INFINITY;
        int pid = -1;
        uint32_t k = 0;
        for (; k < rw.n_logprobs; k++) {
            float b;
            int32_t bid = sp_best<SS_THREADS>(tl, ti, 0, nb * SP_MAXLP, pl, pid, rd, &b);
            if (bid == INT_MAX)
                break;
            if (t == 0) {
                o->top_ids[k] = bid;
                o->top_logprobs[k] = (float)((double)b - lse);
            }
            pl = b;
            pid = bid;
        }
        if (t == 0) {
            o->n_top = k;
            o->logprob = (float)((double)raw[id] - lse);
        }
    }
    if (t == 0) {
        o->token = id;
        if (rw.n_logprobs == 0) {
            o->logprob = 0.0f;
            o->n_top = 0;
        }
    }
}

extern "C" int eng_cuda_sample_host(const float *logits, uint32_t V,
                                    const eng_cuda_sample_row_t *row, int32_t *ret_id) {
    if (!logits || !row || !ret_id || V == 0 || V >= (1u << 22))
        return -EINVAL;
    if (!(row->temperature > 0.0f)) {
        uint32_t b = 0;
        for (uint32_t v = 1; v < V; v++)
            if (logits[v] > logits[b])
                b = v;
        *ret_id = (int32_t)b;
        return 0;
    }
    static ss_smem sm; /* one thread; see the file comment */
    float *cl = (float *)malloc((size_t)V * sizeof *cl);
    int32_t *cid = (int32_t *)malloc((size_t)V * sizeof *cid);
    if (!cl || !cid) {
        free(cl);
        free(cid);
        return -ENOMEM;
    }
    /* cap V/2: both the compacted path and (for flat rows) the whole-row path get exercised */
    float *bl = (float *)malloc((size_t)V * sizeof *bl);
    int32_t *bid = (int32_t *)malloc((size_t)V * sizeof *bid);
    if (!bl || !bid) {
        free(cl);
        free(cid);
        free(bl);
        free(bid);
        return -ENOMEM;
    }
    /* caps V/2 and 64: the compacted and whole-row paths, the bin lists and the filtered rounds
     * all get exercised */
    *ret_id = ss_row<1>(logits, (int)V, *row, cl, cid, (int)(V / 2), ss_scr{bl, bid, 64}, sm);
    free(cl);
    free(cid);
    free(bl);
    free(bid);
    return 0;
}

extern "C" int eng_cuda_sample_host_split(const float *logits, uint32_t V,
                                          const eng_cuda_sample_row_t *row, int sparse, int bcap,
                                          int32_t *ret_id, int *ret_path) {
    if (!logits || !row || !ret_id || !ret_path || V == 0 || V >= (1u << 22) || bcap < 0)
        return -EINVAL;
    if (!(row->temperature > 0.0f)) {
        *ret_path = 0;
        return eng_cuda_sample_host(logits, V, row, ret_id);
    }
    static ss_smem sm; /* one thread; see the file comment */
    static unsigned long long hw[SS_BINS];
    static uint32_t hc[SS_BINS];
    float *cl = (float *)malloc((size_t)V * sizeof *cl);
    int32_t *cid = (int32_t *)malloc((size_t)V * sizeof *cid);
    float *bl = (float *)malloc((size_t)(bcap > 0 ? bcap : 1) * sizeof *bl);
    int32_t *bid = (int32_t *)malloc((size_t)(bcap > 0 ? bcap : 1) * sizeof *bid);
    if (!cl || !cid || !bl || !bid) {
        free(cl);
        free(cid);
        free(bl);
        free(bid);
        return -ENOMEM;
    }
    const eng_cuda_sample_row_t &rw = *row;
    const int cap = (int)V; /* the split path's list at batch 1 holds the whole row */
    const float inv_t = 1.0f / rw.temperature;
    const float mx = ss_max<1>(logits, (int)V, inv_t, sm);
    const unsigned long long total_all = ss_lhist<1>(logits, (int)V, inv_t, mx, sm);
    const double u = ss_uniform(rw.seed, rw.step);
    const int D = ss_bound<1>(sm, rw, (int)V, total_all, u);
    const int n_pre = ss_count_to<1>(sm, D);
    const ss_src whole = {logits, nullptr, (int)V, inv_t};
    const ss_scr scr = {bl, bid, bcap};
    ss_plan pl;
    if (ss_compact(n_pre, cap, (int)V)) {
        const int n = ss_gather<1>(whole, ss_pred_prefix{mx, D}, cl, cid, sm);
        *ret_id = ss_row_sel<1>(ss_src{cl, cid, n, 1.0f}, (int)V, mx, total_all, rw, u, scr, sm);
        *ret_path = 1;
    } else if (sparse && ss_sparse_plan<1>(sm, rw, (int)V, total_all, u, cap, &pl)) {
        memcpy(hw, sm.wbin, sizeof hw);
        memcpy(hc, sm.cbin, sizeof hc);
        const int n = ss_gather<1>(whole, ss_pred_sparse{mx, pl.lo, pl.hi, pl.lb_p}, cl, cid, sm);
        bool listed = false;
        *ret_id = ss_row_sel_sparse<1>(ss_src{cl, cid, n, 1.0f}, whole, mx, total_all, rw, u, scr,
                                       sm, pl, hw, hc, &listed);
        *ret_path = listed ? 2 : 3;
    } else {
        *ret_id = ss_row_sel<1>(whole, (int)V, mx, total_all, rw, u, scr, sm);
        *ret_path = 0;
    }
    free(cl);
    free(cid);
    free(bl);
    free(bid);
    return 0;
}

extern "C" int eng_cuda_sample_sparse_rows(uint64_t *ret) {
    if (!ret)
        return -EINVAL;
    unsigned long long v = 0;
    cudaError_t e = cudaMemcpyFromSymbol(&v, g_sp_sparse_rows, sizeof v);
    if (e != cudaSuccess)
        return -EIO;
    *ret = v;
    return 0;
}

/* static workspace (grown, never shrunk): rows + edits packed in one buffer (device and pinned
 * host: one upload), results (device and pinned host), candidates and edited row copies (device) */
static eng_cuda_sample_row_t *s_rows_dev, *s_rows_host;   /* (s_cap) at the start of the pack */
static eng_cuda_sample_out_t *s_out_dev, *s_out_host;
static eng_cuda_sample_edit_t *s_edits_dev, *s_edits_host; /* (s_edit_cap) after the rows */
static char *s_pack_dev, *s_pack_host;                     /* rows then edits */
static float *s_cand_l;    /* (s_cand) */
static int32_t *s_cand_id; /* (s_cand) */
static float *s_proc;      /* (s_proc_n) edited row copies */
static float *s_bin_l;     /* (s_cap, SS_BCAP) select bin lists */
static int32_t *s_bin_id;  /* (s_cap, SS_BCAP) */
static uint32_t s_cap;     /* rows */
static size_t s_cand, s_edit_cap, s_proc_n;

/* bytes of the packed rows in front of the edits (16-byte aligned) */
static size_t s_rows_bytes(uint32_t cap) {
    return ((size_t)cap * sizeof(eng_cuda_sample_row_t) + 15) & ~(size_t)15;
}

static int s_reserve(uint32_t n, size_t cand, size_t n_edits, size_t proc) {
    if (n > s_cap || n_edits > s_edit_cap || !s_pack_dev) {
        /* the pack (rows + edits): rows and edit capacities only grow */
        uint32_t cap = n > s_cap ? (n < 64 ? 64 : n) : s_cap;
        size_t ecap = n_edits > s_edit_cap
                          ? (n_edits < 4096 ? 4096 : n_edits + n_edits / 2)
                          : (s_edit_cap ? s_edit_cap : 4096);
        cudaFree(s_pack_dev);
        cudaFreeHost(s_pack_host);
        s_pack_dev = s_pack_host = nullptr;
        s_rows_dev = s_rows_host = nullptr;
        s_edits_dev = s_edits_host = nullptr;
        s_edit_cap = 0;
        const size_t bytes = s_rows_bytes(cap) + ecap * sizeof(eng_cuda_sample_edit_t);
        CUDA_CHECK(cudaMalloc(&s_pack_dev, bytes));
        CUDA_CHECK(cudaMallocHost(&s_pack_host, bytes));
        s_rows_dev = (eng_cuda_sample_row_t *)s_pack_dev;
        s_rows_host = (eng_cuda_sample_row_t *)s_pack_host;
        s_edits_dev = (eng_cuda_sample_edit_t *)(s_pack_dev + s_rows_bytes(cap));
        s_edits_host = (eng_cuda_sample_edit_t *)(s_pack_host + s_rows_bytes(cap));
        s_edit_cap = ecap;
    }
    if (n > s_cap) {
        cudaFree(s_out_dev);
        cudaFreeHost(s_out_host);
        cudaFree(s_bin_l);
        cudaFree(s_bin_id);
        s_out_dev = s_out_host = nullptr;
        s_bin_l = nullptr;
        s_bin_id = nullptr;
        s_cap = 0;
        uint32_t cap = n < 64 ? 64 : n;
        CUDA_CHECK(cudaMalloc(&s_bin_l, (size_t)cap * SS_BCAP * sizeof *s_bin_l));
        CUDA_CHECK(cudaMalloc(&s_bin_id, (size_t)cap * SS_BCAP * sizeof *s_bin_id));
        CUDA_CHECK(cudaMalloc(&s_out_dev, cap * sizeof *s_out_dev));
        CUDA_CHECK(cudaMallocHost(&s_out_host, cap * sizeof *s_out_host));
        s_cap = cap;
    }
    if (cand > s_cand) {
        cudaFree(s_cand_l);
        cudaFree(s_cand_id);
        s_cand_l = nullptr;
        s_cand_id = nullptr;
        s_cand = 0;
        CUDA_CHECK(cudaMalloc(&s_cand_l, cand * sizeof *s_cand_l));
        CUDA_CHECK(cudaMalloc(&s_cand_id, cand * sizeof *s_cand_id));
        s_cand = cand;
    }
    if (proc > s_proc_n) {
        cudaFree(s_proc);
        s_proc = nullptr;
        s_proc_n = 0;
        CUDA_CHECK(cudaMalloc(&s_proc, proc * sizeof *s_proc));
        s_proc_n = proc;
    }
    return 0;
}

/* the split path's workspace (grown, never shrunk) */
static sp_ws s_sp;
static size_t s_sp_rows, s_sp_parts; /* rows; rows x nb */

static int s_sp_reserve(uint32_t n_rows, uint32_t nb) {
    const size_t parts = (size_t)n_rows * nb;
    if (parts > s_sp_parts) {
        cudaFree(s_sp.bmax);
        cudaFree(s_sp.bid);
        cudaFree(s_sp.rmax);
        cudaFree(s_sp.topl);
        cudaFree(s_sp.topi);
        s_sp.bmax = s_sp.rmax = s_sp.topl = nullptr;
        s_sp.bid = s_sp.topi = nullptr;
        s_sp_parts = 0;
        CUDA_CHECK(cudaMalloc(&s_sp.bmax, parts * sizeof *s_sp.bmax));
        CUDA_CHECK(cudaMalloc(&s_sp.bid, parts * sizeof *s_sp.bid));
        CUDA_CHECK(cudaMalloc(&s_sp.rmax, parts * sizeof *s_sp.rmax));
        CUDA_CHECK(cudaMalloc(&s_sp.topl, parts * SP_MAXLP * sizeof *s_sp.topl));
        CUDA_CHECK(cudaMalloc(&s_sp.topi, parts * SP_MAXLP * sizeof *s_sp.topi));
        s_sp_parts = parts;
    }
    if (n_rows > s_sp_rows) {
        cudaFree(s_sp.dsum);
        cudaFree(s_sp.wbin);
        cudaFree(s_sp.cbin);
        cudaFree(s_sp.total);
        cudaFree(s_sp.ncand);
        s_sp.dsum = nullptr;
        s_sp.wbin = s_sp.total = nullptr;
        s_sp.cbin = nullptr;
        s_sp.ncand = nullptr;
        s_sp_rows = 0;
        CUDA_CHECK(cudaMalloc(&s_sp.dsum, (size_t)n_rows * 32 * sizeof *s_sp.dsum));
        CUDA_CHECK(cudaMalloc(&s_sp.wbin, (size_t)n_rows * SS_BINS * sizeof *s_sp.wbin));
        CUDA_CHECK(cudaMalloc(&s_sp.cbin, (size_t)n_rows * SS_BINS * sizeof *s_sp.cbin));
        CUDA_CHECK(cudaMalloc(&s_sp.total, (size_t)n_rows * sizeof *s_sp.total));
        CUDA_CHECK(cudaMalloc(&s_sp.ncand, (size_t)n_rows * sizeof *s_sp.ncand));
        s_sp_rows = n_rows;
    }
    return 0;
}

/* OM_CUDA_SAMPLE_SPLIT: 0 = k_sample always, 1 = the split path always, unset / other = the
 * split path below SP_AUTO_ROWS rows. Read on every call (A/B within one process). */
#define SP_AUTO_ROWS 16
static bool s_use_split(uint32_t n_rows) {
    const char *e = getenv("OM_CUDA_SAMPLE_SPLIT");
    if (e && strcmp(e, "0") == 0)
        return false;
    if (e && strcmp(e, "1") == 0)
        return true;
    return n_rows < SP_AUTO_ROWS;
}

/* OM_CUDA_SAMPLE_SPARSE=0: the split path reads the whole row when the prefix does not compact,
 * as before the sparse bin lists (A/B; read on every call). */
static bool s_use_sparse(void) {
    const char *e = getenv("OM_CUDA_SAMPLE_SPARSE");
    return !(e && strcmp(e, "0") == 0);
}

/* blocks per row: chunks of >= SP_MIN_CHUNK elements, ~SP_TARGET_BLOCKS over all rows */
static uint32_t s_sp_nb(uint32_t n_rows, uint32_t V) {
    uint32_t nb = (V + SP_MIN_CHUNK - 1) / SP_MIN_CHUNK;
    const uint32_t by_rows = SP_TARGET_BLOCKS / n_rows;
    nb = by_rows < nb ? by_rows : nb;
    nb = nb < SP_MAXNB ? nb : SP_MAXNB;
    return nb > 0 ? nb : 1;
}

/* OMNIPIPE_SAMPLE_FUSED=0: rows and edits go up in two copies, as before the packed upload (A/B;
 * read on every call). The bytes on the device are the same either way. */
static bool s_packed_upload(void) {
    const char *e = getenv("OMNIPIPE_SAMPLE_FUSED");
    return !(e && strcmp(e, "0") == 0);
}

/* both entry points; plain: ids only, the rows' edit and logprob fields ignored */
static int s_sample(void *stream, const float *logits, uint32_t n_rows, uint32_t V,
                    const eng_cuda_sample_row_t *rows, const eng_cuda_sample_edit_t *edits,
                    uint32_t n_edits, bool plain, eng_cuda_sample_out_t *ret,
                    int32_t *ret_ids) {
    if (!logits || !rows || n_rows == 0 || V == 0 || V >= (1u << 22) || n_rows > 65535 ||
        (n_edits > 0 && !edits))
        return -EINVAL;
    if (eng_cuda_error_is_sticky())
        return -EIO;
    uint32_t n_slots = 0;
    for (uint32_t i = 0; i < n_rows; i++) {
        const eng_cuda_sample_row_t *r = &rows[i];
        if (r->temperature > 0.0f &&
            (!(r->top_p > 0.0f && r->top_p <= 1.0f) || !(r->min_p >= 0.0f && r->min_p <= 1.0f)))
            return -EINVAL;
        if (plain)
            continue;
        if (r->n_logprobs > ENG_CUDA_SAMPLE_MAX_LOGPROBS ||
            (r->n_edit > 0 && ((uint64_t)r->edit0 + r->n_edit > n_edits)))
            return -EINVAL;
        n_slots += r->n_edit > 0;
    }
    for (uint32_t j = 0; j < n_edits; j++)
        if (edits[j].id < 0 || (uint32_t)edits[j].id >= V)
            return -EINVAL;
    uint32_t cap_u = SS_CAND_BUDGET / n_rows;
    cap_u = cap_u < SS_CAP ? SS_CAP : cap_u;
    const int cap = V < cap_u ? (int)V : (int)cap_u;
    int r = s_reserve(n_rows, (size_t)n_rows * cap, plain ? 0 : n_edits, (size_t)n_slots * V);
    if (r < 0)
        return r;
    cudaStream_t s = (cudaStream_t)stream;
    memcpy(s_rows_host, rows, n_rows * sizeof *rows);
    uint32_t slot = 0;
    for (uint32_t i = 0; i < n_rows; i++) {
        eng_cuda_sample_row_t *h = &s_rows_host[i];
        if (plain) {
            h->n_edit = 0;
            h->n_logprobs = 0;
        }
        h->slot = h->n_edit > 0 ? slot++ : 0;
    }
    const bool upload_edits = !plain && n_edits > 0;
    if (upload_edits)
        memcpy(s_edits_host, edits, n_edits * sizeof *edits);
    if (s_packed_upload()) { /* rows and edits in one copy (the gap between them is not read) */
        const size_t bytes = upload_edits ? s_rows_bytes(s_cap) + n_edits * sizeof *edits
                                          : n_rows * sizeof *rows;
        CUDA_CHECK(cudaMemcpyAsync(s_pack_dev, s_pack_host, bytes, cudaMemcpyHostToDevice, s));
    } else {
        CUDA_CHECK(cudaMemcpyAsync(s_rows_dev, s_rows_host, n_rows * sizeof *rows,
                                   cudaMemcpyHostToDevice, s));
        if (upload_edits)
            CUDA_CHECK(cudaMemcpyAsync(s_edits_dev, s_edits_host, n_edits * sizeof *edits,
                                       cudaMemcpyHostToDevice, s));
    }
    if (s_use_split(n_rows)) {
        const bool sparse = s_use_sparse();
        const uint32_t nb = s_sp_nb(n_rows, V);
        r = s_sp_reserve(n_rows, nb);
        if (r < 0)
            return r;
        bool any_t = false, any_lp = false;
        for (uint32_t i = 0; i < n_rows; i++) {
            any_t = any_t || s_rows_host[i].temperature > 0.0f;
            any_lp = any_lp || s_rows_host[i].n_logprobs > 0;
        }
        sp_k1<<<dim3(nb, n_rows), SP_THREADS, 0, s>>>(logits, (int)V, (int)nb, s_rows_dev,
                                                      s_edits_dev, s_proc, s_sp);
        CUDA_LAUNCH_CHECK();
        if (any_t || any_lp) {
            sp_k2<<<dim3(nb + (any_lp ? SP_LP_BLOCKS : 0), n_rows), SP_THREADS, 0, s>>>(
                logits, (int)V, (int)nb, s_rows_dev, s_proc, s_sp);
            CUDA_LAUNCH_CHECK();
        }
        if (any_t) {
            sp_k3<<<dim3(nb, n_rows), SP_THREADS, 0, s>>>(logits, (int)V, (int)nb, s_rows_dev,
                                                          s_proc, s_sp, s_cand_l, s_cand_id, cap,
                                                          sparse);
            CUDA_LAUNCH_CHECK();
        }
        sp_k4<<<n_rows, SS_THREADS, 0, s>>>(logits, (int)V, (int)nb, s_rows_dev, s_out_dev,
                                            s_proc, s_sp, s_cand_l, s_cand_id, cap, s_bin_l,
                                            s_bin_id, sparse);
        CUDA_LAUNCH_CHECK();
    } else {
        k_sample<<<n_rows, SS_THREADS, 0, s>>>(logits, (int)V, s_rows_dev, s_out_dev, s_cand_l,
                                               s_cand_id, cap, s_edits_dev, s_proc, s_bin_l,
                                               s_bin_id);
        CUDA_LAUNCH_CHECK();
    }
    CUDA_CHECK(cudaMemcpyAsync(s_out_host, s_out_dev, n_rows * sizeof *s_out_host,
                               cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (ret)
        memcpy(ret, s_out_host, n_rows * sizeof *ret);
    if (ret_ids)
        for (uint32_t i = 0; i < n_rows; i++)
            ret_ids[i] = s_out_host[i].token;
    return 0;
}

extern "C" int eng_cuda_sample(void *stream, const float *logits, uint32_t n_rows, uint32_t V,
                               const eng_cuda_sample_row_t *rows, int32_t *ret_ids) {
    if (!ret_ids)
        return -EINVAL;
    return s_sample(stream, logits, n_rows, V, rows, nullptr, 0, true, nullptr, ret_ids);
}

extern "C" int eng_cuda_sample_ex(void *stream, const float *logits, uint32_t n_rows, uint32_t V,
                                  const eng_cuda_sample_row_t *rows,
                                  const eng_cuda_sample_edit_t *edits, uint32_t n_edits,
                                  eng_cuda_sample_out_t *ret) {
    if (!ret)
        return -EINVAL;
    return s_sample(stream, logits, n_rows, V, rows, edits, n_edits, false, ret, nullptr);
}
