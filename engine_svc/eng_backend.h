/* eng_backend.h: the backend contract (ggml style, C only): tensors as views into backend memory and
 * a vtable of memory functions and ops (the op list and its parameters live in eng_ops.h).
 *
 * The model graph (eng_model.c) is written once against this vtable; the CPU backend (cpu/) is the
 * executable spec and the CUDA backend (cuda/) implements the same ops one for one.
 *
 * Tensors: eng_tensor_t is a plain descriptor. `data` points into backend memory (host memory for
 * "cpu", device memory for "cuda"): only the backend dereferences it. Tensors are dense and row-major
 * with the innermost dimension last, as in PyTorch: a (T, D) tensor has T rows of D values.
 * Dimension letters used in comments project-wide: T tokens of a step, S sequences of a step,
 * D hidden size, V vocab, Hq/Hk query/KV heads, hd head dim, I (MoE) intermediate size, E experts,
 * R logits rows.
 *
 * Ownership: a backend is created by eng_backend_new()/eng_backend_cpu_new()/eng_backend_cuda_new()
 * and freed by eng_backend_free() (NULL-safe). Memory from ops->alloc() is released by
 * ops->release() before the backend is freed. A backend is driven by one thread; ops run in issue
 * order (the CUDA backend on one stream), and ops->sync() / ops->download() make results visible to
 * the host. All functions return 0 or -errno (-EINVAL bad shape/dtype, -EOPNOTSUPP unsupported
 * dtype/op, -ENOMEM, -EIO device failure). */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_ops.h"

/* --- tensors ------------------------------------------------------------------------------ */

typedef enum eng_dtype {
    ENG_DTYPE_F32 = 0,
    ENG_DTYPE_BF16,
    ENG_DTYPE_F16,
    ENG_DTYPE_I32,
    ENG_DTYPE_COUNT_
} eng_dtype_t;

#define ENG_MAX_DIMS 4

typedef struct eng_tensor {
    void *data;                    /* backend memory; NULL until allocated */
    eng_dtype_t dtype;             /* element type */
    int n_dims;                    /* 1..ENG_MAX_DIMS */
    int64_t shape[ENG_MAX_DIMS];   /* elements per dimension, innermost last; unused dims are 1 */
} eng_tensor_t;

size_t eng_dtype_size(eng_dtype_t dt);          /* bytes per element; 0 for an invalid dtype */
const char *eng_dtype_name(eng_dtype_t dt);     /* "f32", "bf16", "f16", "i32" */
/* Fills a descriptor (data = NULL). n_dims 1..4; returns 0 or -EINVAL. */
int eng_tensor_init(eng_tensor_t *t, eng_dtype_t dt, int n_dims, const int64_t *shape);
int64_t eng_tensor_nelem(const eng_tensor_t *t); /* product of the shape */
size_t eng_tensor_nbytes(const eng_tensor_t *t); /* nelem * dtype size */
int64_t eng_tensor_rows(const eng_tensor_t *t);  /* product of all but the innermost dimension */
int64_t eng_tensor_cols(const eng_tensor_t *t);  /* innermost dimension */
/* A view of rows [row0, row0+n_rows) of a tensor, seen as (rows, cols). */
eng_tensor_t eng_tensor_rows_view(const eng_tensor_t *t, int64_t row0, int64_t n_rows);

/* bf16/f16 <-> f32 on the host (round to nearest even; used by loaders, tests and the CPU backend). */
float eng_bf16_to_f32(uint16_t h);
uint16_t eng_f32_to_bf16(float f);
float eng_f16_to_f32(uint16_t h);
uint16_t eng_f32_to_f16(float f);

/* --- the backend vtable ------------------------------------------------------------------- */

typedef struct eng_backend eng_backend_t;
struct eng_sample_batch; /* defined by eng_sampler.h (scheduler); opaque here */

typedef struct eng_backend_ops {
    const char *name; /* "cpu", "cuda" */

    /* Frees the backend object itself (eng_backend_free() calls it). */
    void (*destroy)(eng_backend_t *b);

    /* Whether op `op` is implemented for weights/tensors of dtype `dt` (matmul, embed, moe: weight dtype). */
    bool (*supports)(const eng_backend_t *b, enum eng_op op, eng_dtype_t dt);

    /* --- memory --- */
    /* Allocates t->data for t's dtype and shape (t->data must be NULL). Contents undefined. */
    int (*alloc)(eng_backend_t *b, eng_tensor_t *t);
    /* Releases t->data (NULL-safe) and sets it to NULL. */
    void (*release)(eng_backend_t *b, eng_tensor_t *t);
    /* Copies n_bytes from host src to the tensor's memory at byte offset dst_offset. */
    int (*upload)(eng_backend_t *b, eng_tensor_t *dst, size_t dst_offset, const void *src,
                  size_t n_bytes);
    /* Copies n_bytes at byte offset src_offset of the tensor to host dst (waits for pending ops). */
    int (*download)(eng_backend_t *b, void *dst, const eng_tensor_t *src, size_t src_offset,
                    size_t n_bytes);
    /* Sets the tensor's bytes to zero. */
    int (*zero)(eng_backend_t *b, eng_tensor_t *t);
    /* Waits for all issued work; returns the first deferred error. */
    int (*sync)(eng_backend_t *b);
    /* Free and total memory the backend can allocate, bytes (cpu: physical RAM). */
    int (*mem_info)(eng_backend_t *b, uint64_t *ret_free, uint64_t *ret_total);

    /* --- ops (eng_ops.h documents each one; all return 0 or -errno) --- */
    int (*embed)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *ids, const eng_tensor_t *w);
    int (*rmsnorm)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *w,
                   const struct eng_rmsnorm_params *p);
    int (*add_rmsnorm)(eng_backend_t *b, eng_tensor_t *out, eng_tensor_t *residual,
                       const eng_tensor_t *x, const eng_tensor_t *w,
                       const struct eng_rmsnorm_params *p);
    int (*matmul)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *w);
    int (*qk_norm_rope)(eng_backend_t *b, eng_tensor_t *q, eng_tensor_t *k, const eng_tensor_t *q_norm,
                        const eng_tensor_t *k_norm, const eng_tensor_t *positions,
                        const struct eng_rope_params *p);
    int (*kv_write)(eng_backend_t *b, eng_tensor_t *k_pool, eng_tensor_t *v_pool,
                    const eng_tensor_t *k, const eng_tensor_t *v, const eng_tensor_t *slots);
    int (*attention)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *q,
                     const eng_tensor_t *k_pool, const eng_tensor_t *v_pool,
                     const struct eng_attn_meta *meta, const struct eng_attn_params *p);
    int (*moe)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
               const struct eng_moe_weights *w, const struct eng_moe_params *p);
    int (*silu_mul)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *gate,
                    const eng_tensor_t *up);
    int (*add)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *y);
    int (*get_rows)(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                    const eng_tensor_t *rows);

    /* SAMPLE hook: the scheduler engineer fills it (eng_backend_set_sample) for backends that sample
     * on the device; NULL = download the logits and sample on the host. logits (R, V) f32;
     * ret_ids (R) host memory. */
    int (*sample)(eng_backend_t *b, const eng_tensor_t *logits, const struct eng_sample_batch *req,
                  int32_t *ret_ids);
} eng_backend_ops_t;

struct eng_backend {
    const eng_backend_ops_t *ops; /* the vtable; ops->sample may be replaced per backend object */
    eng_backend_ops_t ops_copy;   /* per-object copy of the vtable (so a hook can be set per object) */
    void *ctx;                    /* backend-private state */
    char name[32];                /* "cpu", "cuda0" */
};

/* Creates a backend by name: "cpu" (n_threads: 0 = all cores) or "cuda" (device index in
 * `device`). -EOPNOTSUPP for "cuda" when built without CUDA (OM_HAVE_CUDA unset), -EINVAL for an
 * unknown name. */
int eng_backend_new(const char *name, int n_threads, int device, eng_backend_t **ret);
/* Frees the backend (NULL-safe). Returns NULL. */
eng_backend_t *eng_backend_free(eng_backend_t *b);

/* Called by backend constructors: sets b->ops to a per-object copy of `ops`. */
void eng_backend_init(eng_backend_t *b, const eng_backend_ops_t *ops, void *ctx, const char *name);
/* Replaces the SAMPLE hook of this backend object (NULL restores host sampling). */
void eng_backend_set_sample(eng_backend_t *b,
                            int (*sample)(eng_backend_t *, const eng_tensor_t *,
                                          const struct eng_sample_batch *, int32_t *));

/* Convenience: downloads a whole tensor into host memory of eng_tensor_nbytes(t) bytes. */
int eng_backend_download(eng_backend_t *b, void *dst, const eng_tensor_t *t);

/* The CPU reference backend (cpu/eng_cpu_backend.c). n_threads 0 = omp_get_max_threads(). */
int eng_backend_cpu_new(int n_threads, eng_backend_t **ret);
#ifdef OM_HAVE_CUDA
/* The CUDA backend (cuda/), written by the CUDA engineer. */
int eng_backend_cuda_new(int device, eng_backend_t **ret);
#endif

#endif
