/* eng_cuda.h: the C face of the CUDA backend (extern "C", opaque types; C files never include
 * cuda_runtime.h).
 *
 * Two parts:
 *  - the vtable backend, eng_backend_cuda_new() (declared in eng_backend.h): f32 activations, bf16
 *    weights, one CUDA stream, the ops of eng_ops.h one for one (eng_cuda_backend.cu);
 *  - the fast model runner eng_cuda_model_*: the Qwen3 / Qwen3-MoE / Qwen3-Omni thinker text
 *    decoder with bf16 activations, fused kernels, paged KV in device memory, greedy argmax on the
 *    GPU and CUDA graphs for decode steps by batch-size bucket (eng_cuda_model.cu). It consumes the
 *    scheduler's eng_batch_t directly; eng_model drives it for a cuda backend (eng_model.h);
 *  - sampling on the device, eng_cuda_sample (eng_cuda_sample.cu): the cuda backend's SAMPLE hook.
 *
 * Errors: 0 or -errno (-EINVAL bad argument, -ENOMEM device memory, -EOPNOTSUPP unsupported
 * model/dtype, -EIO device failure). After -EIO the CUDA context may be poisoned:
 * eng_cuda_error_is_sticky() tells, and the caller must end the process (DESIGN.md). Not
 * thread-safe: one thread drives one backend or model. */
#ifndef ENG_CUDA_H
#define ENG_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_batch.h"

#ifdef __cplusplus
extern "C" {
#endif

/* "file:line: message (code)" of the last CUDA/cuBLAS failure seen by this process (borrowed,
 * valid until the next failure). */
const char *eng_cuda_last_error(void);
/* True when the device reported an error that poisons the context (illegal address, ...). */
bool eng_cuda_error_is_sticky(void);
/* CUDA devices visible to this process (0 when none or no driver). */
int eng_cuda_device_count(void);

/* MoE expert path of the vtable backend: 0 auto, 1 GEMV (routed rows only), 2 grouped GEMM. */
struct eng_backend;
int eng_backend_cuda_set_moe_mode(struct eng_backend *b, int mode);

/* Test hook: attention kernel of the vtable backend. 0: the generic split kernels (default);
 * where the tensor-core kernels of eng_cuda_attn_tc.cu apply (bf16 KV, head_dim 128,
 * Hq/Hk <= 16): 1 the many-sequence decode kernel, 2 the causal prefill kernel (the call then
 * synchronises: it builds the prefill tiles from the downloaded positions). -EINVAL otherwise. */
int eng_backend_cuda_set_attn_mode(struct eng_backend *b, int mode);

/* The CUDA stream (cudaStream_t) the vtable backend issues its work on. */
void *eng_backend_cuda_stream(struct eng_backend *b);

/* --- model runner ------------------------------------------------------------------------- */

typedef struct eng_cuda_model eng_cuda_model_t;

typedef struct eng_cuda_model_opts {
    int device;                 /* CUDA device index */
    bool dummy;                 /* random weights from config.json alone, generated on the GPU */
    uint64_t seed;              /* dummy weights seed */
    double kv_fraction;         /* fraction of device memory left after weights+scratch that
                                   becomes KV blocks; 0 = 0.90 */
    uint32_t block_size;        /* tokens per KV block; 0 = 16 */
    uint32_t max_batch_tokens;  /* tokens per step; 0 = 4096 */
    uint32_t max_seqs;          /* sequences per step; 0 = 256 */
    uint32_t max_ctx;           /* longest sequence, tokens; 0 = 32768 */
    bool no_graphs;             /* disable CUDA graphs for decode steps */
    int moe_mode;               /* 0 auto, 1 GEMV, 2 grouped */
    bool weights_only;          /* load weights only; the caller then sizes the step buffers
                                   (eng_cuda_model_reserve) and the KV pools
                                   (eng_cuda_model_alloc_kv) before the first forward */
    int tensor_parallel;        /* GPUs the model is split over (devices device ..
                                   device+N-1, one host thread each, NCCL all-reduce; see
                                   eng_cuda_tp.h); 0 or 1 = one GPU */
    int moe_parallel;           /* how tensor_parallel N > 1 splits MoE layers:
                                   ENG_CUDA_MOE_PAR_EXPERT (whole experts [r·E/N, (r+1)·E/N) on
                                   rank r; needs E % N == 0) or ENG_CUDA_MOE_PAR_COLUMN (every
                                   expert's intermediate columns split); 0 = expert. Dense MLPs
                                   are always column-split. */
    const int *devices;         /* tensor_parallel > 1: (tensor_parallel) CUDA device of each
                                   rank (--devices), read during the load only; NULL = device,
                                   device+1, ... Each must exist and appear once (-ENODEV /
                                   -EINVAL naming devices[i]). A one-GPU model uses device. */
    unsigned profile_skip;      /* profiling only (eng_bench_cuda --skip): decode steps of the
                                   fused path leave out these kernels (ENG_CUDA_SKIP_*), so a
                                   timed step shows their marginal cost inside the graph. The
                                   results are wrong; engine_svc never sets it. 0 = none. */
} eng_cuda_model_opts_t;

enum {
    ENG_CUDA_SKIP_QKV = 1,     /* add + RMSNorm + QKV GEMV */
    ENG_CUDA_SKIP_ROPE = 2,    /* QK-norm + RoPE + KV write */
    ENG_CUDA_SKIP_ATTN = 4,    /* decode attention */
    ENG_CUDA_SKIP_OPROJ = 8,   /* o_proj */
    ENG_CUDA_SKIP_ROUTER = 16, /* add + RMSNorm + router + top-k (the experts keep fixed ids) */
    ENG_CUDA_SKIP_MOE = 32,    /* the routed experts */
};

enum { ENG_CUDA_MOE_PAR_DEFAULT = 0, ENG_CUDA_MOE_PAR_EXPERT = 1, ENG_CUDA_MOE_PAR_COLUMN = 2 };

typedef struct eng_cuda_model_info {
    uint32_t vocab;             /* V */
    uint32_t hidden;            /* D */
    uint32_t n_layers;
    uint32_t n_heads, n_kv_heads, head_dim;
    uint32_t n_experts, top_k, moe_inter; /* dense models: 1, 1, intermediate_size */
    uint32_t n_blocks;          /* usable KV blocks (ids 0 .. n_blocks-1) */
    uint32_t block_size;        /* tokens per block */
    uint64_t weight_bytes;      /* device bytes of weights */
    uint64_t active_bytes;      /* weight bytes one batch-1 decode step reads (top-k experts) */
    uint64_t kv_bytes;          /* device bytes of the KV pools */
    double load_seconds;        /* weight load/generation wall time */
    double load_gbps;           /* weight bytes / load_seconds / 1e9 */
    uint32_t tensor_parallel;   /* GPUs (1 = unsplit); with N > 1 weight_bytes, active_bytes and
                                   kv_bytes are per GPU (rank 0), the shapes above the full model's */
    uint32_t expert_parallel;   /* 1: MoE experts split whole over the tensor_parallel ranks
                                   (moe_parallel expert), 0: unsplit or column-split */
    uint32_t tp_reduce_f32;     /* 1: tensor-parallel partial sums all-reduced in f32 and rounded
                                   to bf16 once (OM_CUDA_TP_REDUCE=fp32), 0: bf16 all-reduce */
    uint32_t tp_ar_rows;        /* > 0: steps of up to this many tokens sum their f32 partials
                                   with the one-shot all-reduce over peer memory (eng_cuda_ar.h;
                                   OM_CUDA_TP_AR=nccl: 0, OM_CUDA_TP_AR_ROWS), larger ones with
                                   NCCL; 0: NCCL always */
} eng_cuda_model_info_t;

/* Loads DIR/config.json and, unless opts->dummy, the safetensors in DIR straight to the GPU
 * (bf16 only). On failure err holds a message naming the field, tensor or allocation
 * ("KV cache: 0 blocks fit ..."). Caller owns *ret; free with eng_cuda_model_free(). */
int eng_cuda_model_load(const char *dir, const eng_cuda_model_opts_t *opts, eng_cuda_model_t **ret,
                        char *err, size_t errlen);
eng_cuda_model_t *eng_cuda_model_free(eng_cuda_model_t *m);
void eng_cuda_model_get_info(const eng_cuda_model_t *m, eng_cuda_model_info_t *ret);

/* (Re)sizes the step buffers for steps of up to max_batch_tokens tokens and max_seqs sequences
 * of up to max_ctx tokens; never shrinks below an earlier reserve. Drops captured graphs. On
 * failure err names the buffer that did not fit. */
int eng_cuda_model_reserve(eng_cuda_model_t *m, uint32_t max_batch_tokens, uint32_t max_seqs,
                           uint32_t max_ctx, char *err, size_t errlen);
/* Replaces the KV pools (contents lost) with n_blocks usable blocks of block_size tokens (plus
 * one trash block); n_blocks 0 = kv_fraction of the free device memory. -ENOMEM with err saying
 * how much the KV cache needed and how much was free. */
int eng_cuda_model_alloc_kv(eng_cuda_model_t *m, uint32_t n_blocks, uint32_t block_size, char *err,
                            size_t errlen);
/* bf16 KV bytes per token, all layers, K and V. */
uint64_t eng_cuda_model_kv_bytes_per_token(const eng_cuda_model_t *m);
/* Device pointer of the last forward's logits (n_logits, V) f32 (row stride V); valid until the
 * next forward, reserve or free. NULL before the step buffers exist. */
float *eng_cuda_model_logits(eng_cuda_model_t *m);

/* Runs one step. Writes the KV of every token of the batch into its slots and, for each sequence
 * with want_logits (in sequence order), the logits of its last token: ret_logits (n_logits, V)
 * f32 host memory (NULL: logits stay on the GPU) and ret_ids (n_logits) greedy argmax (lowest id
 * on ties; NULL: not copied). Block ids must be < info.n_blocks. -EINVAL (err says which field)
 * for a batch that breaks eng_batch.h's contract or the limits in opts. */
int eng_cuda_model_forward(eng_cuda_model_t *m, const eng_batch_t *b, float *ret_logits,
                           int32_t *ret_ids, char *err, size_t errlen);

/* eng_cuda_model_forward without the final host synchronisation (logits stay on the GPU): on one
 * GPU it returns as soon as the step is queued, with *ret_stream = the runner's stream (a
 * cudaStream_t): the caller queues its work on the logits (eng_cuda_model_logits) behind the step
 * there and synchronises that stream (or calls eng_cuda_model_sync) before the next forward and
 * before reading anything the step wrote. A failure of the step itself shows up at that
 * synchronisation. Tensor parallel: the step is complete on return and *ret_stream = NULL.
 * Errors as eng_cuda_model_forward (-EINVAL also for ret_stream NULL). */
int eng_cuda_model_forward_async(eng_cuda_model_t *m, const eng_batch_t *b, void **ret_stream,
                                 char *err, size_t errlen);

/* Debug/test hook: while ret_hidden is set, every eager forward writes the final-norm output
 * (T, D) f32 to ret_hidden (layer must be n_layers; other layers are not captured yet). NULL
 * disables. Capture turns CUDA graphs off. */
int eng_cuda_model_capture_hidden(eng_cuda_model_t *m, int layer, float *ret_hidden);

/* Debug/test hook (parity diagnostics): while ret_resid is set, every eager forward of at most
 * max_tokens tokens writes, for each layer l, the residual stream after layer l (bf16 values as
 * f32) to ret_resid (n_layers, T, hidden) and that layer's routed experts (global ids) to ret_ids
 * (n_layers, T, top_k; may be NULL). Tensor parallel: rank 0's (replicated) stream. NULL
 * disables; tracing turns CUDA graphs off and synchronises after every layer. */
int eng_cuda_model_trace(eng_cuda_model_t *m, uint32_t max_tokens, float *ret_resid,
                         int32_t *ret_ids);

/* Test hook for the MoE expert-range kernels (tensor parallel expert mode) on one GPU: random
 * x (T, D), router, E experts; the full MoE block (ek_moe, mode 0 auto / 1 GEMV / 2 grouped) vs
 * the sum over n_ranks of the block restricted to experts [r·E/n, (r+1)·E/n) (f32 partial
 * outputs when f32_out, else bf16). ret_nmse / ret_max_abs: of the summed partials (rounded to
 * bf16 when f32_out) vs the full block's bf16 output; ret_max_ref: max |full|; ret_zero_bad:
 * rows of a rank with no pair routed to it that are not exactly zero; ret_idle: such
 * (rank, token) rows seen. 0 or -errno. */
int eng_cuda_moe_range_check(int device, int T, int D, int I, int E, int K, int n_ranks, int mode,
                             bool f32_out, double *ret_nmse, double *ret_max_abs,
                             double *ret_max_ref, int *ret_zero_bad, int *ret_idle, char *err,
                             size_t errlen);

/* Communication cost of a tensor-parallel decode step: a CUDA graph of the 2·n_layers in-place
 * sum all-reduces of (rows, hidden) that a step of `rows` tokens makes (f32 or bf16, as the steps
 * reduce: info.tp_reduce_f32; NCCL's f32 -> bf16 rounding kernel is not included; with
 * rows <= info.tp_ar_rows the one-shot all-reduce kernels, rounding included), replayed alone on all
 * ranks; ret_step_ms = median ms per replay (per step), ret_allreduce_us = that / (2·n_layers).
 * rows <= the reserved max_batch_tokens. A one-GPU model reports 0 and 0. */
int eng_cuda_model_measure_comm(eng_cuda_model_t *m, uint32_t rows, double *ret_step_ms,
                                double *ret_allreduce_us, char *err, size_t errlen);

/* Switches the MoE expert path (0 auto, 1 GEMV, 2 grouped); drops captured graphs. */
int eng_cuda_model_set_moe_mode(eng_cuda_model_t *m, int mode);

/* Device-to-device copy bandwidth of `bytes` (read + written bytes counted), GB/s, median of 10. */
int eng_cuda_measure_d2d_gbps(int device, size_t bytes, double *ret_gbps);

/* Starts/stops the profiler range (ncu --profile-from-start off); bench use. */
int eng_cuda_profiler(bool on);

/* --- sampling on the device -------------------------------------------------------------- */

#define ENG_CUDA_SAMPLE_MAX_LOGPROBS 20

/* Per-row parameters of eng_cuda_sample (a subset of eng_sampler_params_t). */
typedef struct eng_cuda_sample_row {
    float temperature;          /* <= 0: greedy argmax (lowest id on ties) */
    int32_t top_k;              /* <= 0 or >= V: off */
    float top_p;                /* (0, 1]; 1 = off */
    float min_p;                /* [0, 1]; 0 = off */
    uint64_t seed;              /* request RNG seed */
    uint32_t step;              /* RNG counter: tokens generated so far */
    uint32_t edit0;             /* the row's logit edits: edits[edit0 .. edit0 + n_edit) */
    uint32_t n_edit;            /* 0: none (eng_cuda_sample_ex only) */
    uint32_t n_logprobs;        /* top logprobs wanted, <= ENG_CUDA_SAMPLE_MAX_LOGPROBS */
    uint32_t slot;              /* internal: the row's edited copy (set by eng_cuda_sample_ex) */
} eng_cuda_sample_row_t;

/* One token's logit edit (eng_sampler_edit_t's layout and meaning): l = rp != 1 ? (l > 0 ? l / rp
 * : l * rp) : l; l -= sub; suppress: l = -inf. Ids unique within a row. */
typedef struct eng_cuda_sample_edit {
    int32_t id;
    float rp;
    float sub;
    uint32_t suppress;
} eng_cuda_sample_edit_t;

/* One row's result (eng_sampler_result_t's meaning): logprobs of the raw (unedited) row. */
typedef struct eng_cuda_sample_out {
    int32_t token;
    float logprob;                                      /* raw logprob of token (n_logprobs > 0) */
    uint32_t n_top;                                     /* = n_logprobs */
    int32_t top_ids[ENG_CUDA_SAMPLE_MAX_LOGPROBS];      /* (n_top) highest raw logits, descending */
    float top_logprobs[ENG_CUDA_SAMPLE_MAX_LOGPROBS];   /* (n_top) */
} eng_cuda_sample_out_t;

/* Samples one token per row of logits (n_rows, V) f32 in device memory (row stride V) on the
 * CUDA stream `stream` (NULL: the legacy default stream) with the semantics of eng_sampler.h's
 * draw: temperature scaling, top-k, top-p, min-p, then an inverse-CDF draw over the survivors in
 * descending-probability order (ties by lower id) at u = eng_sampler_uniform(seed, step),
 * computed on the device with the same counter-based hash. The logits are not modified.
 * ret_ids: (n_rows) host memory; returns after the ids are on the host. 0, -EINVAL or -EIO. */
int eng_cuda_sample(void *stream, const float *logits, uint32_t n_rows, uint32_t V,
                    const eng_cuda_sample_row_t *rows, int32_t *ret_ids);

/* eng_cuda_sample with logit edits and logprobs: a row with n_edit > 0 is copied on the device,
 * its edits (host memory, n_edits in all) applied to the copy, and drawn from it (the logits stay
 * unmodified); with n_logprobs > 0 the raw row's log-softmax gives the token's logprob and the
 * n_logprobs best. ret: (n_rows) host memory. 0, -EINVAL (bad row, edit id >= V, edit range
 * outside the array) or -EIO. */
int eng_cuda_sample_ex(void *stream, const float *logits, uint32_t n_rows, uint32_t V,
                       const eng_cuda_sample_row_t *rows, const eng_cuda_sample_edit_t *edits,
                       uint32_t n_edits, eng_cuda_sample_out_t *ret);

/* The same algorithm on the host, one row of host logits (V), for tests without a GPU: the kernel's
 * template code instantiated for one thread. Not thread-safe. */
int eng_cuda_sample_host(const float *logits, uint32_t V, const eng_cuda_sample_row_t *row,
                         int32_t *ret_id);

/* Test hook: the split path's choices for one row at batch 1 run on the host (the kernels'
 * template code, one thread): the prefix compacted into the candidate list (*ret_path 1), else,
 * with sparse, the sparse bin lists (2: rows without top-k and min-p whose bins fit; 3: the same,
 * but the draw ended in a bin outside the lists and read the whole row, not expected), else the
 * whole row (0; greedy also 0). bcap: slots of a select's bin list (0: none, the radix rounds read
 * their source). The token is the same whichever path runs. 0, -EINVAL or -ENOMEM. */
int eng_cuda_sample_host_split(const float *logits, uint32_t V, const eng_cuda_sample_row_t *row,
                               int sparse, int bcap, int32_t *ret_id, int *ret_path);

/* Test hook: rows the split path has drawn from sparse bin lists in this process so far (a device
 * counter; synchronises). 0 or -EIO. */
int eng_cuda_sample_sparse_rows(uint64_t *ret);

/* Blocks until the device is idle; 0 or -EIO. */
int eng_cuda_model_sync(eng_cuda_model_t *m);

/* --- test hooks (test_cuda_ops; eng_cuda_testhook.cu) ----------------------------------------
 * Run a fused decode kernel of the model runner, or the unfused kernels it replaces, on host
 * data (bf16 as uint16_t bit patterns), `reps` times in a row on one stream with PDL launches.
 * Return: < 0 error; else the number of the fused kernel's device counters left non-zero
 * (0 expected: replays in a CUDA graph rely on it). */

typedef struct eng_cuda_test_qkv {
    int T, D, Hq, Hk, hd;          /* T <= 8 tokens; qkv rows N = (Hq + 2·Hk)·hd */
    int sec1, sec2;                /* M-RoPE H/W sections (0: plain RoPE) */
    int n_slots;                   /* KV pool rows */
    float eps, theta;              /* inv_freq = 1 / theta^(2j/hd) as the model runner */
    const uint16_t *h_in, *delta;  /* (T, D); delta may be NULL (layer 0) */
    const uint16_t *attn_norm;     /* (D) */
    const uint16_t *wqkv;          /* (N, D) */
    const uint16_t *q_norm, *k_norm; /* (hd) */
    const int32_t *pos3;           /* (3, T) */
    const int32_t *slots;          /* (T), < n_slots */
    const uint16_t *kpool, *vpool; /* (n_slots, Hk·hd) initial contents */
    uint16_t *ret_qkv;             /* (T, N): q, k normalised + rotated, v */
    uint16_t *ret_h_out;           /* (T, D) new residual */
    uint16_t *ret_kpool, *ret_vpool; /* (n_slots, Hk·hd) */
} eng_cuda_test_qkv_t;
/* fused 1: k_gemv_norm_rope; 0: k_gemv_norm + k_qk_norm_rope; 2: as 0 with the cos/sin from
 * ek_rope_table (the unfused path's table). */
int eng_cuda_test_qkv_rope(int fused, int reps, const eng_cuda_test_qkv_t *a);

typedef struct eng_cuda_test_attn {
    int T, Hq, Hk, hd;             /* T sequences (tok_seq[t] = t), one new token each */
    int sec1, sec2;                /* M-RoPE H/W sections (0: plain RoPE) */
    int bs, max_blocks, n_slots;   /* paged KV: block size, block-table width, pool rows */
    int n_splits;                  /* key splits (upper bound, as the model runner's st.splits) */
    float eps, theta;              /* inv_freq = 1 / theta^(2j/hd) as the model runner */
    const uint16_t *qkv;           /* (T, (Hq + 2·Hk)·hd) raw QKV GEMV output */
    const uint16_t *q_norm, *k_norm; /* (hd) */
    const int32_t *pos3;           /* (3, T) rope positions */
    const int32_t *tok_pos;        /* (T) the new token's position (context length - 1) */
    const int32_t *bt;             /* (T, max_blocks) block tables; slot = bt·bs + pos % bs */
    const uint16_t *kpool, *vpool; /* (n_slots, Hk·hd) initial contents */
    uint16_t *ret_out;             /* (T, Hq·hd) attention output */
    uint16_t *ret_kpool, *ret_vpool; /* (n_slots, Hk·hd) after the step */
} eng_cuda_test_attn_t;
/* A decode step's attention: fused: k_attn_dec with QK-norm + RoPE + KV write folded in
 * (ek_attention_decode_rope; -EOPNOTSUPP where it does not apply, e.g. hd != 128); else
 * k_qk_norm_rope + k_attn_dec (ek_attention_decode). Counters: the split merge's. */
int eng_cuda_test_attn_rope(int fused, int reps, const eng_cuda_test_attn_t *a);

typedef struct eng_cuda_test_moe {
    int T, D, I, E, K;             /* T <= 8 */
    const uint16_t *x;             /* (T, D) */
    const uint16_t *gate, *up;     /* (E, I, D) */
    const uint16_t *down;          /* (E, D, I) */
    const int32_t *ids;            /* (T, K) experts */
    const float *wts;              /* (T, K) routing weights */
    uint16_t *ret_out;             /* (T, D) */
} eng_cuda_test_moe_t;
/* The GEMV expert path: fused 1: k_moe_fused (at most max_blocks blocks when > 0); else
 * k_moe_gu and the down projection: 0 k_moe_down_wk (the default), 2 k_moe_down, 3
 * k_moe_down_wk with two rows per warp. */
int eng_cuda_test_moe_experts(int fused, int reps, int max_blocks, const eng_cuda_test_moe_t *a);

typedef struct eng_cuda_test_router {
    int T, D, I, E, K;             /* T <= 8, E <= 512, K <= 8 */
    int norm;                      /* renormalise the top-k weights (norm_topk_prob) */
    int e0, ne;                    /* experts held by gate/up/down: [e0, e0+ne) (ne 0: all E) */
    int down;                      /* down projection: 1 k_moe_down_wk, 2 two rows per warp */
    float eps;                     /* RMSNorm epsilon */
    const uint16_t *h_in, *delta;  /* (T, D) residual and attention output (bf16) */
    const uint16_t *nw;            /* (D) post-attention RMSNorm weight */
    const uint16_t *router;        /* (E, D) */
    const uint16_t *gate, *up;     /* (ne, I, D) */
    const uint16_t *down_w;        /* (ne, D, I) */
    uint16_t *ret_out;             /* (T, D) expert output */
    uint16_t *ret_h_out, *ret_xn;  /* (T, D) new residual, normalised x */
    float *ret_logits;             /* (T, E) */
    int32_t *ret_ids;              /* (T, K) routing ids as left in the scratch */
    float *ret_wts;                /* (T, K) routing weights as left in the scratch */
} eng_cuda_test_router_t;
/* A decode step's router + experts (PDL launches, as the model runner): local 0: ek_router_fused
 * with its last-block top-k, then k_moe_gu + k_moe_down_wk; local 1 (OM_CUDA_ROUTER_LOCAL=1; 2:
 * =2, the router's shuffle argmax; 3 / 4: as 1 with every k_moe_down_wk block reading k_moe_gu's
 * ids after the PDL wait / running the top-k before it, instead of the first resident wave
 * only): the router writes logits only and the expert kernels route themselves (where the shape does not
 * take that path, ek_moe_experts' k_moe_topk fallback does). ids / wts start as 0xff
 * bytes, so a path that does not write them shows. reps runs in a row. Returns the router's
 * counter after the runs (0 expected) or < 0. */
int eng_cuda_test_router_moe(int local, int reps, const eng_cuda_test_router_t *a);

/* y (T, N) = x (T, K) · wᵀ, bf16, T <= 8: ks 2, 4, 8: the K-split GEMV k_gemv_ks (decode o_proj);
 * ks <= 1: ek_matmul's k_gemv. Returns 0 or < 0. */
int eng_cuda_test_gemv_ks(int ks, int T, int N, int K, const uint16_t *x, const uint16_t *w,
                          uint16_t *ret_y);

typedef struct eng_cuda_test_tail {
    int T, R, D, V;                /* T hidden rows, R <= 8 logits rows, hidden D, vocab V */
    const uint16_t *resid, *delta; /* (T, D): the final norm's input is resid + delta */
    const uint16_t *norm_w;        /* (D) final norm weight */
    const int32_t *rows;           /* (R) logits rows (outside [0, T): zero hidden row) */
    const uint16_t *lm_head;       /* (V, D) */
    float eps;
    uint16_t *ret_xl;              /* (R, D) normalised logits rows */
    float *ret_logits;             /* (R, V) */
    int32_t *ret_ids;              /* (R) greedy ids */
} eng_cuda_test_tail_t;
/* The model runner's decode tail: fused 1: ek_add_rmsnorm_rows + ek_lm_head_argmax (the
 * OM_CUDA_TAIL path); 0: ek_add_rmsnorm + ek_get_rows + ek_matmul + ek_argmax (64 x 32
 * partials, as the runner). PDL launches, reps times in a row. */
int eng_cuda_test_tail(int fused, int reps, const eng_cuda_test_tail_t *a);
/* The fused tail with a chosen lm_head kernel (OM_CUDA_LMH_PERSIST): lmh 0 k_gemv_amax; -2 the
 * persistent k_gemv_amax_p with its resident-wave grid; n > 0 k_gemv_amax_p with n blocks (at
 * most ceil(V/8)); -1 the environment's choice. *ret_grid: the persistent grid used (0: the old
 * kernel ran). Returns 0 or < 0. */
int eng_cuda_test_tail_lmh(int lmh, int reps, const eng_cuda_test_tail_t *a, int *ret_grid);

/* A step boundary under PDL (pdl 1; 0: plain launches): ek_lm_head_argmax writes ids (T <= 8) of
 * x (T, D) · lm_headᵀ (V, D), ek_embed reads them (out (T, D) = embed[ids]; k_embed waits before
 * it reads ids, then triggers at once), ek_matmul's k_gemv reads out (y (T, N) = out · wqᵀ).
 * ids / out / y start as 0xff bytes. Returns 0 or < 0. */
int eng_cuda_test_embed_pdl(int pdl, int T, int D, int V, int N, const uint16_t *x,
                            const uint16_t *lm_head, const uint16_t *embed, const uint16_t *wq,
                            int32_t *ret_ids, uint16_t *ret_out, uint16_t *ret_y);

/* The grouped MoE path on the calling thread (tests): the GEMM's tile height bm (32, 64, 128; 0:
 * OM_CUDA_MOE_BM or the mean rows per expert) and the permute / un-permute with 16-byte rows
 * (vec 1, 0 scalar; -1: OM_CUDA_MOE_VEC). -EINVAL for another value. */
int eng_cuda_test_set_moe_bm(int bm, int vec);

#ifdef __cplusplus
}
#endif

#endif
