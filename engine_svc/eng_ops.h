/* eng_ops.h: the single list of engine ops (X-macro) with each op's exact semantics and parameters.
 * Every backend implements each op (eng_backend.h vtable), the model graph calls them, and the
 * per-op parity tests iterate this list. The CPU backend (cpu/eng_cpu_ops.c) is the executable spec.
 *
 * Conventions: activations are f32, dense, row-major (innermost last). Weights are bf16, f16 or f32
 * as stored in the checkpoint (never converted at load); ops compute in f32 (statistics and
 * softmax in f32 or better). Linear weights are (out, in): y = x·Wᵀ. Index tensors are i32.
 * Letters: T tokens, S sequences, D hidden, V vocab, Hq/Hk heads, hd head dim, I intermediate,
 * E experts, K top-k, R rows.
 *
 *  EMBED        out (T,D) f32 = w[ids[t]]; ids (T) i32, w (V,D). An id outside [0,V) gives -EINVAL
 *               on the CPU backend (ids are validated by the model before the step anyway).
 *  RMSNORM      out (T,D) = x * rsqrt(mean(x²) + eps) * w; x (T,D) f32, w (D) any float dtype.
 *               Applied per row; rows may be heads: x (T·H, hd) with w (hd).
 *  ADD_RMSNORM  residual (T,D) += x (T,D); out (T,D) = RMSNORM(residual) (residual add fused).
 *  MATMUL       out (T,N) f32 = x (T,K) f32 · wᵀ, w (N,K) bf16/f16/f32.
 *  QK_NORM_ROPE per head, in place: q (T, Hq·hd) and k (T, Hk·hd) get RMSNorm over hd with
 *               q_norm (hd) / k_norm (hd), then rotary embedding (NeoX rotate_half: dims j and
 *               j+hd/2 rotate together). inv_freq[j] = theta^(-2j/hd), j < hd/2. positions (3,T)
 *               i32 rows T,H,W. Interleaved M-RoPE: frequency j uses row H when j%3==1 and
 *               j < 3·section[1], row W when j%3==2 and j < 3·section[2], else row T. With
 *               mrope off (section all 0) every j uses row T (plain 1-D RoPE).
 *  KV_WRITE     k_pool/v_pool (n_slots, Hk·hd) [slots[t]] = k/v (T, Hk·hd); slots (T) i32.
 *               n_slots = n_blocks · block_size; the pools have the dtype of the KV cache (f32 on
 *               the CPU backend; a backend may store bf16 and convert on write).
 *  ATTENTION    out (T, Hq·hd) = causal GQA attention of q (T, Hq·hd) over the paged pools:
 *               token t of sequence s = meta->tok_seq[t] attends to cache positions
 *               0..meta->tok_pos[t]; position p lives in slot
 *               block_tables[s][p / block_size] · block_size + p % block_size. Query head h uses KV
 *               head h / (Hq/Hk). scores scaled by p->scale, softmax in f32.
 *  MOE          out (T,D) = Σ_k wk · down_e(silu(gate_e(x)) · up_e(x)) over the top-k experts e of
 *               softmax_f32(x · routerᵀ) (ties: lowest expert index first); wk renormalised to sum
 *               1 when norm_topk_prob. Expert weights stacked: gate/up (E,I,D), down (E,D,I).
 *  SILU_MUL     out (T,I) = silu(gate) · up, silu(x) = x / (1 + exp(-x)).
 *  ADD          out = x + y (same shapes; out may alias x).
 *  GET_ROWS     out (R,D) = x[rows[r]]; rows (R) i32 (selects the logits rows; the final norm is
 *               RMSNORM/ADD_RMSNORM and lm_head is MATMUL, so LOGITS = GET_ROWS + MATMUL).
 *  SAMPLE       a hook, not an op: see eng_backend_ops.sample.
 */
#ifndef ENG_OPS_H
#define ENG_OPS_H

#include <stdbool.h>
#include <stdint.h>

#define ENG_OP_LIST(X)                                                                             \
    X(EMBED, embed)                                                                                \
    X(RMSNORM, rmsnorm)                                                                            \
    X(ADD_RMSNORM, add_rmsnorm)                                                                    \
    X(MATMUL, matmul)                                                                              \
    X(QK_NORM_ROPE, qk_norm_rope)                                                                  \
    X(KV_WRITE, kv_write)                                                                          \
    X(ATTENTION, attention)                                                                        \
    X(MOE, moe)                                                                                    \
    X(SILU_MUL, silu_mul)                                                                          \
    X(ADD, add)                                                                                    \
    X(GET_ROWS, get_rows)

enum eng_op {
#define ENG_OP_ENUM_(NAME, name) ENG_OP_##NAME,
    ENG_OP_LIST(ENG_OP_ENUM_)
#undef ENG_OP_ENUM_
    ENG_OP_COUNT_
};

const char *eng_op_name(enum eng_op op); /* "EMBED", ... ; "?" when out of range */

struct eng_tensor; /* eng_backend.h */

struct eng_rmsnorm_params {
    float eps; /* added to mean(x²) */
};

struct eng_rope_params {
    float eps;                 /* q_norm/k_norm epsilon */
    float theta;               /* rope base (rope_theta) */
    int32_t n_heads;           /* Hq */
    int32_t n_kv_heads;        /* Hk */
    int32_t head_dim;          /* hd (even) */
    int32_t mrope_section[3];  /* T,H,W frequency counts; all 0 = plain RoPE on row T */
};

/* Paged-attention metadata of one step, in backend memory (the model uploads it each step). */
struct eng_attn_meta {
    const struct eng_tensor *tok_seq;      /* (T) i32: sequence index of each token, 0..S-1 */
    const struct eng_tensor *tok_pos;      /* (T) i32: cache position of each token (n_past + i) */
    const struct eng_tensor *block_tables; /* (S, max_blocks) i32: KV block ids per sequence */
    int32_t n_seqs;                        /* S */
    int32_t max_blocks;                    /* row length of block_tables */
    int32_t block_size;                    /* tokens per KV block */
    int32_t max_kv_len;                    /* max over tokens of tok_pos + 1 (host-side hint) */
};

struct eng_attn_params {
    float scale;        /* 1/sqrt(hd) */
    int32_t n_heads;    /* Hq */
    int32_t n_kv_heads; /* Hk; Hq % Hk == 0 */
    int32_t head_dim;   /* hd */
};

struct eng_moe_weights {
    const struct eng_tensor *router; /* (E, D) */
    const struct eng_tensor *gate;   /* (E, I, D) */
    const struct eng_tensor *up;     /* (E, I, D) */
    const struct eng_tensor *down;   /* (E, D, I) */
};

struct eng_moe_params {
    int32_t n_experts;   /* E */
    int32_t top_k;       /* K <= E */
    bool norm_topk_prob; /* renormalise the top-k weights to sum 1 */
};

#endif
