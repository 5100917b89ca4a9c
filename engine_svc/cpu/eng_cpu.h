/* eng_cpu.h: internals of the CPU reference backend shared by its two files: the backend object
 * (eng_cpu_backend.c: memory, vtable) and the ops (eng_cpu_ops.c: plain loops, the spec). Not a
 * public header: everything else goes through eng_backend.h. */
#ifndef ENG_CPU_H
#define ENG_CPU_H

#include <stddef.h>

#include "eng_backend.h"

typedef struct eng_cpu {
    int n_threads;       /* OpenMP threads per op */
    float *scratch;      /* per-op workspace (attention scores, MoE per-thread rows); grown on demand */
    size_t scratch_n;    /* floats in scratch */
} eng_cpu_t;

/* Ensures at least n floats of scratch; the only allocation an op may do (amortised). */
int eng_cpu_scratch(eng_cpu_t *c, size_t n, float **ret);

int eng_cpu_embed(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *ids, const eng_tensor_t *w);
int eng_cpu_rmsnorm(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *w,
                    const struct eng_rmsnorm_params *p);
int eng_cpu_add_rmsnorm(eng_backend_t *b, eng_tensor_t *out, eng_tensor_t *residual,
                        const eng_tensor_t *x, const eng_tensor_t *w,
                        const struct eng_rmsnorm_params *p);
int eng_cpu_matmul(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *w);
int eng_cpu_qk_norm_rope(eng_backend_t *b, eng_tensor_t *q, eng_tensor_t *k,
                         const eng_tensor_t *q_norm, const eng_tensor_t *k_norm,
                         const eng_tensor_t *positions, const struct eng_rope_params *p);
int eng_cpu_kv_write(eng_backend_t *b, eng_tensor_t *k_pool, eng_tensor_t *v_pool,
                     const eng_tensor_t *k, const eng_tensor_t *v, const eng_tensor_t *slots);
int eng_cpu_attention(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *q,
                      const eng_tensor_t *k_pool, const eng_tensor_t *v_pool,
                      const struct eng_attn_meta *meta, const struct eng_attn_params *p);
int eng_cpu_moe(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                const struct eng_moe_weights *w, const struct eng_moe_params *p);
int eng_cpu_silu_mul(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *gate,
                     const eng_tensor_t *up);
int eng_cpu_add(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *y);
int eng_cpu_get_rows(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                     const eng_tensor_t *rows);

#endif
