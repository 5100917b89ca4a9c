/* eng_cuda_ar.h: the one-shot all-reduce of a tensor-parallel group over peer memory (internal
 * to engine_svc/cuda; C++ only).
 *
 * Why: a decode step of the split engine sums two partials per layer (after o_proj, after the
 * MLP/MoE): 96 all-reduces of T x 2048 f32 for the 30B thinker. NCCL's small-message all-reduce
 * in a graph costs ~6.3 us each on NVLink plus a separate f32 -> bf16 kernel, ~0.8 ms a batch-1
 * step, and its kernels keep the graph off PDL. Here one kernel per all-reduce does it all:
 *
 *   wait for the producer (PDL), let the next kernel start its prologue,
 *   block b of rank r stores epoch v into flags[b][r] of every peer (st.release.sys over NVLink)
 *   and waits until every peer's flags[b][p] in its own memory reaches v (ld.acquire.sys),
 *   then sums the partials of ranks 0..N-1 in that order (f32, every rank the same bits: the
 *   replicated residual stream stays identical across ranks), rounds once to bf16, writes out.
 *
 * With 2 ranks the sum a + b is the one NCCL's f32 all-reduce computes, so the result is
 * bit-identical to NCCL + ek_f32_to_bf16 (test_cuda_tp "custom all-reduce" lines).
 *
 * Buffers: each rank has two partial buffers (parity 0: the o_proj partial, 1: the MLP/MoE one),
 * written by the producer kernel on its own GPU and read by every rank. Why no end barrier: a
 * rank writes buffer p again only for all-reduce k + 2; it got there past the barrier of k + 1,
 * which every peer entered only after finishing all-reduce k (stream order; under PDL each kernel
 * waits for its predecessor before it triggers), so no peer still reads buffer p. The per-block
 * epochs live in device memory and advance inside the kernel, so captured graphs replay them.
 *
 * Abort: a waiting block polls a host-mapped word; eng_cuda_tp's abort callback sets it when the
 * group fails (a rank that never issues its step), so waiting kernels return and the streams
 * drain instead of spinning for ever. The outputs of an aborted all-reduce are garbage; the
 * group is dead by then.
 *
 * Limits: N <= EK_AR_MAX_RANKS, n % 4 == 0, n <= the capacity given at init. Needs peer access
 * between every pair of GPUs (ek_ar_peer_ok); the group falls back to NCCL otherwise. */
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda_common.cuh"

#define EK_AR_MAX_RANKS 8
#define EK_AR_MAX_BLOCKS 128

struct ek_ar {
    int rank, n;
    size_t cap;                                 /* floats per partial buffer */
    float *buf[2];                              /* this rank's partial buffers (peers read them) */
    uint32_t *flags;                            /* (EK_AR_MAX_BLOCKS, EK_AR_MAX_RANKS), peers write */
    uint32_t *cnt;                              /* (EK_AR_MAX_BLOCKS) epochs of this rank's blocks */
    const float *peer_buf[2][EK_AR_MAX_RANKS];  /* every rank's buf (own included), rank order */
    uint32_t *peer_flags[EK_AR_MAX_RANKS];      /* every rank's flags */
    const volatile int *abort_flag;             /* host-mapped; nonzero: return at once */
};

/* Whether every pair of `devices` can access each other's memory (cudaDeviceCanAccessPeer). */
bool ek_ar_peer_ok(const int *devices, int n);
/* On the calling thread's current device: enables peer access to every other device of the
 * group (already enabled is fine). -EIO with err. */
int ek_ar_enable_peers(const int *devices, int n, int self, char *err, size_t errlen);
/* Allocates rank `rank`'s buffers (cap floats each) on the current device, epochs and flags
 * zeroed (synchronously). -ENOMEM / -EIO with err. */
int ek_ar_init(ek_ar *a, int rank, int n, size_t cap, char *err, size_t errlen);
/* Fills every rank's peer pointers and the abort word (all ranks initialised). */
void ek_ar_connect(ek_ar *const *all, int n, const volatile int *abort_flag);
/* Frees what ek_ar_init allocated (on the current device, which must be a's). */
void ek_ar_free(ek_ar *a);
/* out (n) bf16 = round(sum over ranks of their buf[parity][0..n)), on stream s; a PDL launch when
 * ek_pdl is set. -EINVAL when n is not a multiple of 4 or exceeds the capacity. */
int ek_ar_sum(cudaStream_t s, const ek_ar *a, int parity, bf16 *out, size_t n);
