/* eng_model.h: the Qwen3 / Qwen3-MoE / Qwen3-Omni-thinker text model, written once against the
 * backend vtable (eng_backend.h), and the one-step runner the scheduler calls with an eng_batch_t
 * (eng_batch.h: paged KV, chunked prefill, several sequences per step).
 *
 * Loading: weights come from a Hugging Face checkpoint directory (safetensors, single or sharded)
 * through eng_loader, with the dtype read from the tensors (bf16/f16/f32) and uploaded unchanged to
 * the backend; or, with load_format "dummy", random weights generated from config.json alone
 * (deterministic seed). The backend then owns weights, the KV pools and the scratch buffers;
 * all are allocated up front (eng_model_alloc_kv, eng_model_reserve) so a step never allocates
 * unless a batch is larger than anything reserved before.
 *
 * Ownership: eng_model_load() returns a caller-owned model bound to a caller-owned backend (the
 * backend must outlive the model). eng_model_free() accepts NULL and returns NULL. The logits
 * tensor returned by eng_model_forward() belongs to the model and is valid until the next forward
 * or free. One thread drives a model. */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_backend.h"
#include "eng_batch.h"
#include "eng_config.h"

typedef struct eng_model eng_model_t;

/* Progress of a load: bytes/tensors uploaded so far and in total, seconds since the load began. */
typedef void (*eng_model_progress_fn)(void *ud, uint64_t bytes_done, uint64_t bytes_total,
                                      uint32_t tensors_done, uint32_t tensors_total,
                                      double elapsed_s);

typedef struct eng_model_load_opts {
    const char *load_format;        /* "auto" (NULL = auto: safetensors) or "dummy" */
    uint64_t dummy_seed;            /* seed of the dummy weights; 0 = default */
    eng_model_progress_fn progress; /* optional; called every ~64 MiB / tensor batch and at the end */
    void *progress_ud;
    const char *cuda_runner;        /* cuda backend: "fast" (the bf16 runner eng_cuda_model, with
                                       bf16 KV and CUDA graphs) or "vtable" (this graph over the
                                       backend's f32 ops, for parity debugging); NULL = the
                                       environment's OMNIPIPE_CUDA_RUNNER, else "fast" */
    int tensor_parallel;            /* GPUs the fast CUDA runner splits the model over (the
                                       backend's device D and D+1 .. D+N-1; NCCL; eng_cuda_tp.h);
                                       0 = the environment's OMNIPIPE_TENSOR_PARALLEL, else 1.
                                       N > 1 needs the cuda backend and the fast runner */
    const char *moe_parallel;       /* with tensor_parallel N > 1, how MoE layers split:
                                       "expert" (whole experts, E/N per GPU; needs E % N == 0)
                                       or "column" (every expert's intermediate columns); NULL =
                                       the environment's OMNIPIPE_MOE_PARALLEL, else "expert".
                                       Dense MLPs are always column-split. */
} eng_model_load_opts_t;

/* Loads config and weights. o may be NULL (auto). On failure -errno and a message in err naming
 * the tensor and file, the field, the architecture or the quantization method:
 *   -ENOENT  missing config.json / shard / tensor
 *   -EINVAL  bad config field, wrong tensor shape, bad index, truncated or corrupt shard
 *   -EOPNOTSUPP unknown architecture, quantized checkpoint, dtype the backend cannot use */
int eng_model_load(const char *model_dir, const eng_model_load_opts_t *o, eng_backend_t *b,
                   eng_model_t **ret, char *err, size_t errlen);
eng_model_t *eng_model_free(eng_model_t *m);

const eng_config_t *eng_model_config(const eng_model_t *m);
eng_backend_t *eng_model_backend(const eng_model_t *m);
uint64_t eng_model_weight_bytes(const eng_model_t *m); /* bytes of weights held by the backend */
uint32_t eng_model_n_mm_tensors(const eng_model_t *m); /* audio/vision tensors seen, not loaded */

/* KV bytes per token (all layers, K and V) for the backend's KV dtype: sizing for the scheduler. */
uint64_t eng_model_kv_bytes_per_token(const eng_model_t *m);

/* Allocates the KV pools: per layer K and V, n_blocks x block_size x n_kv_heads x head_dim.
 * Replaces any previous pools (their contents are lost). -EINVAL for 0 sizes, -ENOMEM. */
int eng_model_alloc_kv(eng_model_t *m, uint32_t n_blocks, uint32_t block_size);

/* Sizes the scratch buffers for steps of up to max_tokens tokens and max_seqs sequences (with
 * block tables up to max_blocks_per_seq entries). Optional: forward grows them when needed. */
int eng_model_reserve(eng_model_t *m, uint32_t max_tokens, uint32_t max_seqs,
                      uint32_t max_blocks_per_seq);

/* Runs one step. Validates the batch first (-EINVAL: token id >= vocab, block id out of range,
 * block table too short, n_tokens/n_logits mismatch, no KV allocated; eng_model_last_error() names
 * the field). Writes the K/V of the new tokens, and on success *ret_logits is a (n_logits, V) f32
 * backend tensor: the logits of the last token of every want_logits sequence, in sequence order
 * (NULL when n_logits is 0). Other errors come from the backend (-ENOMEM, -EIO). */
int eng_model_forward(eng_model_t *m, const eng_batch_t *batch, eng_tensor_t **ret_logits);
/* eng_model_forward that may return before the step has run: on the fast one-GPU CUDA runner the
 * step is only queued, *ret_stream is the CUDA stream (cudaStream_t) it is in flight on and
 * *ret_logits is valid on the device once that stream reaches this point. The caller queues its
 * work on the logits there (the SAMPLE hook: eng_sample_batch.stream) and synchronises that
 * stream, then says so with eng_model_step_synced(), or calls eng_model_wait(). Other runners and
 * backends (and tensor parallel) complete the step as eng_model_forward does and set *ret_stream
 * = NULL. The next forward waits for a step still in flight first. Errors as eng_model_forward;
 * a device failure of the step itself shows up at the caller's synchronisation. */
int eng_model_forward_async(eng_model_t *m, const eng_batch_t *batch, eng_tensor_t **ret_logits,
                            void **ret_stream);
/* Waits for a step left in flight by eng_model_forward_async (no-op when none): 0 or -EIO. */
int eng_model_wait(eng_model_t *m);
/* The caller synchronised the stream eng_model_forward_async returned: the step is complete. */
void eng_model_step_synced(eng_model_t *m);
/* Why the last eng_model_forward failed validation ("" if it did not); valid until the next call. */
const char *eng_model_last_error(const eng_model_t *m);
/* Which runner executes the steps: "vtable" (this graph over the backend ops) or "cuda-fast" (the
 * fast CUDA runner: bf16 weights, activations and KV, weights and KV owned by the runner, logits
 * left on the GPU, no multimodal rows or capture yet: those return -EOPNOTSUPP). When the fast
 * runner refuses a checkpoint (-EOPNOTSUPP: dtype, mixed dense/MoE layers) the load falls back to
 * "vtable" and eng_model_last_error() says why. */
const char *eng_model_runner(const eng_model_t *m);

/* Multimodal rows for the NEXT eng_model_forward only (then cleared): the embeddings of the step
 * tokens rows[0..n_rows) (indices into the step's T tokens, batch order) are replaced by embeds
 * (n_rows, D) f32, and after layer l < n_deepstack those rows get deepstack[l] (n_rows, D) added
 * (Qwen3-Omni/VL deepstack visual features; NULL/0 for none). Host pointers, borrowed until that
 * forward returns. These are encoder outputs (audio/vision towers, the multimodal issue); positions
 * come with the batch (eng_batch_seq_t.positions, 3 rows). -EINVAL for NULL/0 embeds. */
int eng_model_set_mm_rows(eng_model_t *m, const int32_t *rows, uint32_t n_rows, const float *embeds,
                          const float *deepstack, uint32_t n_deepstack);

/* Debug capture of hidden states for layer-by-layer parity: while buf is non-NULL every forward
 * writes (n_layers + 1, T, D) f32 host values: row 0 the embeddings, row N (1..L-1) the output of
 * layer N-1, row L the final norm of layer L-1's output (the transformers output_hidden_states
 * layout; with deepstack rows, a layer's output is captured before its deepstack add), for the
 * step's T tokens in batch order. cap_tokens bounds T (-E2BIG if exceeded). */
int eng_model_set_capture(eng_model_t *m, float *buf, uint32_t cap_tokens);

#endif
