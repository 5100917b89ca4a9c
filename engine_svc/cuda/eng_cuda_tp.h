/* eng_cuda_tp.h: tensor parallelism for the fast runner (internal to engine_svc/cuda).
 *
 * eng_cuda_model_load() with opts.tensor_parallel = N > 1 returns a facade eng_cuda_model_t whose
 * calls land here: a group of N shard runners (eng_cuda_model_load_shard), shard r on GPU
 * device + r, each driven by its own host thread (rank 0 = the caller's thread), joined by one
 * NCCL communicator per GPU (eng_nccl.h, ncclCommInitAll in this process).
 *
 * Split (Megatron style, docs/engine.md "Tensor parallelism"): shard r holds query heads
 * [r·Hq/N, (r+1)·Hq/N), KV heads [r·Hk/N, ...) (its KV pools store only those: KV bytes per token
 * per GPU / N), o_proj columns of its heads, and intermediate rows [r·I/N, ...) of every expert's
 * gate/up with the matching down columns (dense MLP: the one "expert"); with moe_parallel expert
 * (the default) an MoE shard instead holds whole experts [r·E/N, (r+1)·E/N) and computes only the
 * (token, k) pairs routed to them. The two partial sums of a layer (after o_proj, after the
 * MLP/MoE) are summed on the shard's stream, inside the decode CUDA graphs: in f32, rounded to bf16
 * once, by the one-shot kernel over peer memory (eng_cuda_ar.h) for steps of up to
 * OM_CUDA_TP_AR_ROWS tokens, else by ncclAllReduce ((T, D); or in bf16 with OM_CUDA_TP_REDUCE=bf16). Embedding, norms, router and lm_head are
 * replicated; every rank computes the same logits and argmax; rank 0's are returned.
 *
 * Every call runs on all ranks at once (one step descriptor, the same eng_batch_t, handed to the
 * N threads) and returns the first failure in rank order, err prefixed "rank r (GPU d): ". Block
 * tables are shared: all ranks hold the same block count. Not thread-safe (one caller). */
#ifndef ENG_CUDA_TP_H
#define ENG_CUDA_TP_H

#include "eng_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eng_cuda_tp eng_cuda_tp_t;

/* One shard of a tensor-parallel model (eng_cuda_model.cu): like eng_cuda_model_load on
 * opts->device with the slices of rank `rank` of `n`; `comm` is its ncclComm_t. -EINVAL naming
 * num_key_value_heads / intermediate size when they do not divide by n. */
int eng_cuda_model_load_shard(const char *dir, const eng_cuda_model_opts_t *opts, int rank, int n,
                              void *comm, eng_cuda_model_t **ret, char *err, size_t errlen);
/* The shard's CUDA stream (cudaStream_t), its hidden size and layer count (for measure_comm). */
void *eng_cuda_model_stream(eng_cuda_model_t *m);
/* on: the shard's forward returns once its work is issued, without synchronising its stream (the
 * group then waits with a watchdog); host copies (ret_ids, ret_logits) complete when the stream
 * does. Off (default): the forward returns after cudaStreamSynchronize. */
void eng_cuda_model_set_tp_async(eng_cuda_model_t *m, bool on);
/* Hands the shard its rank's one-shot all-reduce state (ek_ar *, eng_cuda_ar.h; owned by the
 * group, NULL: NCCL only) and turns PDL on for its decode graphs unless OM_CUDA_TP_PDL=0. Before
 * the first forward. No-op unless the shard reduces in f32. */
void eng_cuda_model_set_tp_ar(eng_cuda_model_t *m, void *ar);

int eng_cuda_tp_load(const char *dir, const eng_cuda_model_opts_t *opts, eng_cuda_tp_t **ret,
                     char *err, size_t errlen);
void eng_cuda_tp_free(eng_cuda_tp_t *g);
void eng_cuda_tp_get_info(const eng_cuda_tp_t *g, eng_cuda_model_info_t *ret);
int eng_cuda_tp_reserve(eng_cuda_tp_t *g, uint32_t max_batch_tokens, uint32_t max_seqs,
                        uint32_t max_ctx, char *err, size_t errlen);
int eng_cuda_tp_alloc_kv(eng_cuda_tp_t *g, uint32_t n_blocks, uint32_t block_size, char *err,
                         size_t errlen);
uint64_t eng_cuda_tp_kv_bytes_per_token(const eng_cuda_tp_t *g);
float *eng_cuda_tp_logits(eng_cuda_tp_t *g);
int eng_cuda_tp_sync(eng_cuda_tp_t *g);
int eng_cuda_tp_capture_hidden(eng_cuda_tp_t *g, int layer, float *ret_hidden);
int eng_cuda_tp_trace(eng_cuda_tp_t *g, uint32_t max_tokens, float *ret_resid, int32_t *ret_ids);
int eng_cuda_tp_forward(eng_cuda_tp_t *g, const eng_batch_t *b, float *ret_logits,
                        int32_t *ret_ids, char *err, size_t errlen);
int eng_cuda_tp_set_moe_mode(eng_cuda_tp_t *g, int mode);
int eng_cuda_tp_measure_comm(eng_cuda_tp_t *g, uint32_t rows, double *ret_step_ms,
                             double *ret_allreduce_us, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
