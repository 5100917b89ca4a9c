/* eng_cpu_backend.c: the CPU reference backend object: host memory for tensors, the vtable wiring
 * the ops of eng_cpu_ops.c, and the per-op scratch. Tensors live in ordinary 64-byte aligned host
 * memory, so upload/download are memcpy. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <omp.h>

#include "eng_cpu.h"

int eng_cpu_scratch(eng_cpu_t *c, size_t n, float **ret) {
    if (n > c->scratch_n) {
        /* grow geometrically: attention needs one more float per step as a context grows */
        if (n < 2 * c->scratch_n)
            n = 2 * c->scratch_n;
        float *p = NULL;
        if (posix_memalign((void **)&p, 64, n * sizeof(float)) != 0)
            return -ENOMEM;
        free(c->scratch);
        c->scratch = p;
        c->scratch_n = n;
    }
    *ret = c->scratch;
    return 0;
}

static void s_destroy(eng_backend_t *b) {
    eng_cpu_t *c = b->ctx;
    if (c)
        free(c->scratch);
    free(c);
    free(b);
}

static bool s_supports(const eng_backend_t *b, enum eng_op op, eng_dtype_t dt) {
    (void)b;
    if (op >= ENG_OP_COUNT_)
        return false;
    return dt == ENG_DTYPE_F32 || dt == ENG_DTYPE_BF16 || dt == ENG_DTYPE_F16;
}

static int s_alloc(eng_backend_t *b, eng_tensor_t *t) {
    (void)b;
    if (!t || t->data || eng_dtype_size(t->dtype) == 0)
        return -EINVAL;
    size_t n = eng_tensor_nbytes(t);
    size_t padded = (n + 63) & ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, padded ? padded : 64) != 0)
        return -ENOMEM;
    memset(p, 0, padded ? padded : 64);
    t->data = p;
    return 0;
}

static void s_release(eng_backend_t *b, eng_tensor_t *t) {
    (void)b;
    if (!t)
        return;
    free(t->data);
    t->data = NULL;
}

static int s_upload(eng_backend_t *b, eng_tensor_t *dst, size_t dst_offset, const void *src,
                    size_t n_bytes) {
    (void)b;
    if (!dst || !dst->data || (!src && n_bytes) || dst_offset > eng_tensor_nbytes(dst) ||
        n_bytes > eng_tensor_nbytes(dst) - dst_offset)
        return -EINVAL;
    memcpy((char *)dst->data + dst_offset, src, n_bytes);
    return 0;
}

static int s_download(eng_backend_t *b, void *dst, const eng_tensor_t *src, size_t src_offset,
                      size_t n_bytes) {
    (void)b;
    if (!src || !src->data || (!dst && n_bytes) || src_offset > eng_tensor_nbytes(src) ||
        n_bytes > eng_tensor_nbytes(src) - src_offset)
        return -EINVAL;
    memcpy(dst, (const char *)src->data + src_offset, n_bytes);
    return 0;
}

static int s_zero(eng_backend_t *b, eng_tensor_t *t) {
    (void)b;
    if (!t || !t->data)
        return -EINVAL;
    memset(t->data, 0, eng_tensor_nbytes(t));
    return 0;
}

static int s_sync(eng_backend_t *b) {
    (void)b;
    return 0;
}

static int s_mem_info(eng_backend_t *b, uint64_t *ret_free, uint64_t *ret_total) {
    (void)b;
    long page = sysconf(_SC_PAGESIZE), avail = sysconf(_SC_AVPHYS_PAGES),
         total = sysconf(_SC_PHYS_PAGES);
    if (page <= 0 || avail < 0 || total <= 0)
        return -EIO;
    *ret_free = (uint64_t)avail * (uint64_t)page;
    *ret_total = (uint64_t)total * (uint64_t)page;
    return 0;
}

static const eng_backend_ops_t s_cpu_ops = {
    .name = "cpu",
    .destroy = s_destroy,
    .supports = s_supports,
    .alloc = s_alloc,
    .release = s_release,
    .upload = s_upload,
    .download = s_download,
    .zero = s_zero,
    .sync = s_sync,
    .mem_info = s_mem_info,
    .embed = eng_cpu_embed,
    .rmsnorm = eng_cpu_rmsnorm,
    .add_rmsnorm = eng_cpu_add_rmsnorm,
    .matmul = eng_cpu_matmul,
    .qk_norm_rope = eng_cpu_qk_norm_rope,
    .kv_write = eng_cpu_kv_write,
    .attention = eng_cpu_attention,
    .moe = eng_cpu_moe,
    .silu_mul = eng_cpu_silu_mul,
    .add = eng_cpu_add,
    .get_rows = eng_cpu_get_rows,
    .sample = NULL,
};

int eng_backend_cpu_new(int n_threads, eng_backend_t **ret) {
    if (!ret || n_threads < 0)
        return -EINVAL;
    eng_backend_t *b = calloc(1, sizeof(*b));
    eng_cpu_t *c = calloc(1, sizeof(*c));
    if (!b || !c) {
        free(b);
        free(c);
        return -ENOMEM;
    }
    c->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
    eng_backend_init(b, &s_cpu_ops, c, "cpu");
    *ret = b;
    return 0;
}
