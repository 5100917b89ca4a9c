/* cuda_common.cuh: shared device helpers of the CUDA backend (C++ only, never included from C):
 * the CUDA_CHECK/CUBLAS_CHECK macros that turn a CUDA error into -EIO/-ENOMEM (recording file:line
 * and the CUDA string), the sticky-error test, and load/store/rounding helpers that let one kernel
 * template serve f32 activations (the vtable path) and bf16 activations (the fast model path).
 *
 * Invariants: every launch is followed by CUDA_CHECK(cudaGetLastError()); no helper allocates. */
#pragma once

#include <cerrno>
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

typedef __nv_bfloat16 bf16;

/* Records the last CUDA failure (file:line: message) for the log; defined in eng_cuda_kern.cu. */
void eng_cuda_note_error(const char *file, int line, const char *what, int code);
/* -EIO for a sticky error (the context is unusable; also sets eng_cuda_sticky), else the mapped
 * errno. */
int eng_cuda_errno(cudaError_t e);

#define CUDA_CHECK(expr)                                                                           \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            eng_cuda_note_error(__FILE__, __LINE__, cudaGetErrorString(e_), (int)e_);              \
            return eng_cuda_errno(e_);                                                             \
        }                                                                                          \
    } while (0)

#define CUBLAS_CHECK(expr)                                                                         \
    do {                                                                                           \
        cublasStatus_t s_ = (expr);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            eng_cuda_note_error(__FILE__, __LINE__, cublasGetStatusString(s_), (int)s_);           \
            return s_ == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO;                              \
        }                                                                                          \
    } while (0)

#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

/* --- element helpers ---------------------------------------------------------------------- */

__device__ __forceinline__ float ld(const float *p) { return *p; }
__device__ __forceinline__ float ld(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float *p, float v) { *p = v; }
__device__ __forceinline__ void st(bf16 *p, float v) { *p = __float2bfloat16(v); }

/* Rounds v to the storage precision of T: identity for f32, round-to-nearest-even for bf16. This is
 * how the bf16 path reproduces PyTorch's per-op rounding points. */
template <typename T> __device__ __forceinline__ float rnd(float v);
template <> __device__ __forceinline__ float rnd<float>(float v) { return v; }
template <> __device__ __forceinline__ float rnd<bf16>(float v) {
    return __bfloat162float(__float2bfloat16(v));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Warp-wide (best, bi) = the largest value, ties to the lowest index, on every lane. */
__device__ __forceinline__ void warp_argmax_lo(float &best, int &bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ob > best || (ob == best && oi < bi)) {
            best = ob;
            bi = oi;
        }
    }
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* 8 bf16 packed in 16 bytes, widened to f32 (exact). */
__device__ __forceinline__ void bf16x8_f32(const uint4 &u, float *f) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}
/* 8 bf16 in one 16-byte load, widened to f32. */
__device__ __forceinline__ void ld8(const bf16 *p, float *f) {
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    bf16x8_f32(u, f);
}
/* One 16-byte global load through the read-only path, not kept in L1 (weights read once). */
__device__ __forceinline__ uint4 ld_nc_na16(const void *p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}
__device__ __forceinline__ void ld8(const float *p, float *f) {
    float4 a = *reinterpret_cast<const float4 *>(p);
    float4 b = *reinterpret_cast<const float4 *>(p + 4);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}

/* --- programmatic dependent launch (PDL) --------------------------------------------------- */

/* Waits until the previous kernel in the stream has completed and its memory is visible; a no-op
 * when the kernel was launched without the PDL attribute. Code before it may only read data
 * written two or more kernels back (every PDL kernel triggers only after its own wait). */
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
/* Lets the next kernel in the stream start its pre-wait prologue. */
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" :::); }
/* Prefetches [p, p + bytes) into L2 from one warp (128-byte lines). */
__device__ __forceinline__ void l2_prefetch_warp(const void *p, size_t bytes, int lane) {
    const char *c = (const char *)p;
    for (size_t o = (size_t)lane * 128; o < bytes; o += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + o));
}

/* Whether launches through ek_launch carry the PDL attribute (set by the model runner around a
 * decode step). Per host thread: tensor-parallel ranks run their steps on one thread each. */
extern thread_local bool ek_pdl;

template <typename... KArgs, typename... Args>
static inline cudaError_t ek_launch(void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                    cudaStream_t s, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = ek_pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, static_cast<KArgs>(args)...);
}
