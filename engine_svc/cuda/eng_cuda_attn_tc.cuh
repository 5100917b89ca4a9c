/* eng_cuda_attn_tc.cuh: launchers of the mma.sync (m16n8k16 bf16, f32 accumulate) attention
 * kernels in eng_cuda_attn_tc.cu, head_dim 128, bf16 paged KV (eng_batch.h layout: pools
 * (n_slots, Hk·128), block tables (S, max_blocks)). C++ only; callers are the model runner
 * (large-batch decode, prefill) and the vtable's test mode (eng_backend_cuda_set_attn_mode). */
#pragma once

#include "cuda_common.cuh"

/* Decode / any-token attention for many sequences: token t (sequence tok_seq[t]) attends to
 * positions 0..tok_pos[t]. One block per (key split, KV head, token); the G = Hq/Hk query heads
 * of a KV head are the rows of a 16-row MMA tile (G <= 16). n_splits > 1 needs partial
 * (T·Hq·n_splits·130 floats) and counters (T·Hk ints, zero; left zero). Q = float or bf16,
 * O = float or bf16; q rows q_stride elements apart. Returns -EOPNOTSUPP for unsupported shapes. */
template <typename Q, typename O>
int ek_attention_tc(cudaStream_t s, O *out, const Q *q, const bf16 *kpool, const bf16 *vpool,
                    const int32_t *tok_seq, const int32_t *tok_pos, const int32_t *block_tables,
                    int T, int Hq, int Hk, int hd, int max_blocks, int block_size, float scale,
                    int n_splits, float *partial, int q_stride, int *counters);

/* Whether ek_attention_tc serves this shape. */
bool ek_attention_tc_supported(int Hq, int Hk, int hd);

/* Key splits for ek_attention_tc: enough (split, KV head, token) blocks to fill the GPU several
 * times, >= 128 keys a split (max_len < 0: unknown, e.g. a captured graph), at most max_splits,
 * and T·splits <= max_tok_splits (the caller's partial buffer). */
int ek_attention_tc_splits(int T, int Hk, int max_len, int max_splits, int max_tok_splits);

/* Causal prefill on mma.sync tensor cores, hd 128: same tiles (n_tiles, 3: first token, count
 * <= 64, sequence; the tile's tokens are consecutive positions of that sequence) and meaning as
 * ek_attention_prefill. Q, O = float or bf16. */
template <typename Q, typename O>
int ek_attention_prefill_tc(cudaStream_t s, O *out, const Q *q, const bf16 *kpool,
                            const bf16 *vpool, const int32_t *tok_pos,
                            const int32_t *block_tables, const int32_t *tiles, int n_tiles,
                            int Hq, int Hk, int hd, int max_blocks, int block_size, float scale,
                            int q_stride);
