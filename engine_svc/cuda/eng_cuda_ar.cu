/* eng_cuda_ar.cu: the one-shot all-reduce over peer memory (eng_cuda_ar.h). */
#include <cstdio>
#include <cstring>

#include "eng_cuda_ar.h"

#define AR_THREADS 256

/* What one launch needs, by value: pointers of this parity in rank order. */
struct ar_args {
    const float *src[EK_AR_MAX_RANKS];
    uint32_t *peer_flags[EK_AR_MAX_RANKS];
    uint32_t *flags;
    uint32_t *cnt;
    const volatile int *abort_flag;
    int n_ranks, rank;
};

__device__ __forceinline__ void ar_st_release(uint32_t *p, uint32_t v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t ar_ld_acquire(const uint32_t *p) {
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
/* peer data: read through L2 (never a stale L1 line from an earlier all-reduce) */
__device__ __forceinline__ float4 ar_ld4(const float *p) {
    float4 v;
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "l"(p));
    return v;
}

__global__ void __launch_bounds__(AR_THREADS) k_ar_oneshot(bf16 *out, ar_args a, int64_t n4) {
    __shared__ int s_abort;
    const int b = blockIdx.x, t = threadIdx.x;
    pdl_wait(); /* the producer's partials are complete and visible */
    pdl_trigger();
    const uint32_t v = a.cnt[b] + 1; /* this block's epoch for this all-reduce */
    if (t == 0)
        s_abort = 0;
    __syncthreads();
    if (t < a.n_ranks && t != a.rank) {
        ar_st_release(a.peer_flags[t] + b * EK_AR_MAX_RANKS + a.rank, v);
        const uint32_t *f = a.flags + b * EK_AR_MAX_RANKS + t;
        for (unsigned spin = 1; (int32_t)(ar_ld_acquire(f) - v) < 0; spin++)
            if ((spin & 1023) == 0 && *a.abort_flag) {
                s_abort = 1;
                break;
            }
    }
    __syncthreads(); /* every peer's block b has arrived: their partials are readable */
    if (t == 0)
        a.cnt[b] = v;
    if (s_abort)
        return;
    for (int64_t i = (int64_t)b * AR_THREADS + t; i < n4; i += (int64_t)gridDim.x * AR_THREADS) {
        float4 s = ar_ld4(a.src[0] + 4 * i);
        for (int r = 1; r < a.n_ranks; r++) {
            const float4 x = ar_ld4(a.src[r] + 4 * i);
            s.x += x.x;
            s.y += x.y;
            s.z += x.z;
            s.w += x.w;
        }
        __nv_bfloat162 lo = __floats2bfloat162_rn(s.x, s.y), hi = __floats2bfloat162_rn(s.z, s.w);
        uint2 u;
        memcpy(&u.x, &lo, 4);
        memcpy(&u.y, &hi, 4);
        *reinterpret_cast<uint2 *>(out + 4 * i) = u;
    }
}

bool ek_ar_peer_ok(const int *devices, int n) {
    if (n < 2 || n > EK_AR_MAX_RANKS)
        return false;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            int ok = 0;
            if (i != j && (cudaDeviceCanAccessPeer(&ok, devices[i], devices[j]) != cudaSuccess ||
                           !ok))
                return false;
        }
    return true;
}

int ek_ar_enable_peers(const int *devices, int n, int self, char *err, size_t errlen) {
    for (int j = 0; j < n; j++) {
        if (j == self)
            continue;
        cudaError_t e = cudaDeviceEnablePeerAccess(devices[j], 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) {
            cudaGetLastError(); /* not an error here; clear it */
            continue;
        }
        if (e != cudaSuccess) {
            snprintf(err, errlen, "peer access GPU %d -> GPU %d: %s", devices[self], devices[j],
                     cudaGetErrorString(e));
            return -EIO;
        }
    }
    return 0;
}

int ek_ar_init(ek_ar *a, int rank, int n, size_t cap, char *err, size_t errlen) {
    memset(a, 0, sizeof *a);
    if (n < 2 || n > EK_AR_MAX_RANKS || rank < 0 || rank >= n || cap == 0 || cap % 4) {
        snprintf(err, errlen, "custom all-reduce: bad rank %d of %d or capacity %zu", rank, n, cap);
        return -EINVAL;
    }
    a->rank = rank;
    a->n = n;
    a->cap = cap;
    const size_t fb = (size_t)EK_AR_MAX_BLOCKS * EK_AR_MAX_RANKS * 4, cb = EK_AR_MAX_BLOCKS * 4;
    cudaError_t e = cudaSuccess;
    for (int p = 0; p < 2 && e == cudaSuccess; p++)
        e = cudaMalloc((void **)&a->buf[p], cap * 4);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&a->flags, fb);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&a->cnt, cb);
    for (int p = 0; p < 2 && e == cudaSuccess; p++)
        e = cudaMemset(a->buf[p], 0, cap * 4);
    if (e == cudaSuccess)
        e = cudaMemset(a->flags, 0, fb);
    if (e == cudaSuccess)
        e = cudaMemset(a->cnt, 0, cb);
    if (e == cudaSuccess)
        e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        snprintf(err, errlen, "custom all-reduce: %zu MB of buffers on rank %d: %s",
                 2 * cap * 4 >> 20, rank, cudaGetErrorString(e));
        ek_ar_free(a);
        return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
    }
    return 0;
}

void ek_ar_connect(ek_ar *const *all, int n, const volatile int *abort_flag) {
    for (int i = 0; i < n; i++) {
        for (int r = 0; r < n; r++) {
            all[i]->peer_buf[0][r] = all[r]->buf[0];
            all[i]->peer_buf[1][r] = all[r]->buf[1];
            all[i]->peer_flags[r] = all[r]->flags;
        }
        all[i]->abort_flag = abort_flag;
    }
}

void ek_ar_free(ek_ar *a) {
    if (!a)
        return;
    cudaFree(a->buf[0]);
    cudaFree(a->buf[1]);
    cudaFree(a->flags);
    cudaFree(a->cnt);
    a->buf[0] = a->buf[1] = nullptr;
    a->flags = a->cnt = nullptr;
}

int ek_ar_sum(cudaStream_t s, const ek_ar *a, int parity, bf16 *out, size_t n) {
    if (!a || !a->abort_flag || (parity & ~1) || n % 4 || n > a->cap ||
        ((uintptr_t)out & 7))
        return -EINVAL;
    if (n == 0)
        return 0;
    ar_args g = {};
    for (int r = 0; r < a->n; r++) {
        g.src[r] = a->peer_buf[parity][r];
        g.peer_flags[r] = a->peer_flags[r];
    }
    g.flags = a->flags;
    g.cnt = a->cnt;
    g.abort_flag = a->abort_flag;
    g.n_ranks = a->n;
    g.rank = a->rank;
    const int64_t n4 = (int64_t)(n / 4);
    int64_t blocks = (n4 + AR_THREADS - 1) / AR_THREADS;
    if (blocks > EK_AR_MAX_BLOCKS)
        blocks = EK_AR_MAX_BLOCKS;
    CUDA_CHECK(ek_launch(k_ar_oneshot, dim3((unsigned)blocks), dim3(AR_THREADS), 0, s, out, g, n4));
    return 0;
}
