/* eng_loader.h: read-only access to a Hugging Face safetensors checkpoint: one model.safetensors, or
 * shards listed by model.safetensors.index.json. Shards are memory-mapped on first use; every header
 * is validated (JSON, dtype, shape × dtype = byte span, spans inside the data section, file long
 * enough), so a truncated shard or a bad index is an error naming the file (and the tensor).
 *
 * Ownership: eng_loader_open() returns a caller-owned loader; eng_loader_free() accepts NULL and
 * returns NULL. Tensor records and their data pointers are borrowed and stay valid until the
 * loader is freed. Not thread-safe. */
#ifndef ENG_LOADER_H
#define ENG_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "eng_backend.h"

typedef struct eng_loader eng_loader_t;

#define ENG_ST_MAX_DIMS 8

typedef struct eng_st_tensor {
    const char *name;        /* tensor name as in the checkpoint */
    const char *file;        /* shard file name (relative to the model dir) */
    eng_dtype_t dtype;       /* f32, bf16, f16 or i32 (other safetensors dtypes are rejected on use) */
    char dtype_str[8];       /* the safetensors dtype string, e.g. "BF16", "I8" */
    int n_dims;              /* 0..ENG_ST_MAX_DIMS */
    int64_t shape[ENG_ST_MAX_DIMS]; /* innermost last (conv weights have 5 dims) */
    const void *data;        /* mapped bytes (valid until eng_loader_free) */
    uint64_t n_bytes;        /* byte length of data */
} eng_st_tensor_t;

/* Opens model_dir: model.safetensors.index.json if present (weight_map name -> shard), else
 * model.safetensors. Sharded: every listed shard must exist (checked now); shard headers are
 * read lazily by eng_loader_find. -ENOENT: no safetensors / missing shard; -EINVAL: bad index. */
int eng_loader_open(const char *model_dir, eng_loader_t **ret, char *err, size_t errlen);
/* Opens one .safetensors file by path (fixtures, golden files), validated at once. */
int eng_loader_open_file(const char *path, eng_loader_t **ret, char *err, size_t errlen);
eng_loader_t *eng_loader_free(eng_loader_t *l);

/* Looks up a tensor, opening and validating its shard. -ENOENT (message names the tensor and the
 * file it was expected in), -EINVAL (corrupt/truncated shard, names the file and tensor). */
int eng_loader_find(eng_loader_t *l, const char *name, const eng_st_tensor_t **ret, char *err,
                    size_t errlen);

/* Number of tensor names known (from the index, or the single file's header) and the i-th name. */
uint32_t eng_loader_n_names(const eng_loader_t *l);
const char *eng_loader_name(const eng_loader_t *l, uint32_t i);

/* Total bytes of the shard files (for progress). */
uint64_t eng_loader_total_bytes(const eng_loader_t *l);

#endif
