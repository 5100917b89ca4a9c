/* eng_backend.c: the backend-independent parts of eng_backend.h: tensor descriptors, dtype
 * conversions on the host, the backend factory and the op names of eng_ops.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "eng_sampler.h"
#ifdef OM_HAVE_CUDA
#include "eng_cuda.h"
#endif

size_t eng_dtype_size(eng_dtype_t dt) {
    switch (dt) {
    case ENG_DTYPE_F32: return 4;
    case ENG_DTYPE_BF16: return 2;
    case ENG_DTYPE_F16: return 2;
    case ENG_DTYPE_I32: return 4;
    default: return 0;
    }
}

const char *eng_dtype_name(eng_dtype_t dt) {
    switch (dt) {
    case ENG_DTYPE_F32: return "f32";
    case ENG_DTYPE_BF16: return "bf16";
    case ENG_DTYPE_F16: return "f16";
    case ENG_DTYPE_I32: return "i32";
    default: return "?";
    }
}

const char *eng_op_name(enum eng_op op) {
    static const char *const names[] = {
#define ENG_OP_NAME_(NAME, name) #NAME,
        ENG_OP_LIST(ENG_OP_NAME_)
#undef ENG_OP_NAME_
    };
    if ((int)op < 0 || op >= ENG_OP_COUNT_)
        return "?";
    return names[op];
}

int eng_tensor_init(eng_tensor_t *t, eng_dtype_t dt, int n_dims, const int64_t *shape) {
    if (!t || n_dims < 1 || n_dims > ENG_MAX_DIMS || eng_dtype_size(dt) == 0 || !shape)
        return -EINVAL;
    for (int i = 0; i < n_dims; i++)
        if (shape[i] < 0)
            return -EINVAL;
    memset(t, 0, sizeof(*t));
    t->dtype = dt;
    t->n_dims = n_dims;
    for (int i = 0; i < ENG_MAX_DIMS; i++)
        t->shape[i] = i < n_dims ? shape[i] : 1;
    return 0;
}

int64_t eng_tensor_nelem(const eng_tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++)
        n *= t->shape[i];
    return n;
}

size_t eng_tensor_nbytes(const eng_tensor_t *t) {
    return (size_t)eng_tensor_nelem(t) * eng_dtype_size(t->dtype);
}

int64_t eng_tensor_cols(const eng_tensor_t *t) {
    return t->shape[t->n_dims - 1];
}

int64_t eng_tensor_rows(const eng_tensor_t *t) {
    int64_t c = eng_tensor_cols(t);
    return c ? eng_tensor_nelem(t) / c : 0;
}

eng_tensor_t eng_tensor_rows_view(const eng_tensor_t *t, int64_t row0, int64_t n_rows) {
    eng_tensor_t v = *t;
    int64_t cols = eng_tensor_cols(t);
    v.n_dims = 2;
    v.shape[0] = n_rows;
    v.shape[1] = cols;
    v.shape[2] = v.shape[3] = 1;
    if (t->data)
        v.data = (char *)t->data + (size_t)(row0 * cols) * eng_dtype_size(t->dtype);
    return v;
}

float eng_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t eng_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float eng_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    float f;
    if (exp == 0) {
        f = ldexpf((float)mant, -24); /* zero and subnormals */
        return sign ? -f : f;
    }
    uint32_t u;
    if (exp == 31)
        u = sign | 0x7f800000u | (mant << 13);
    else
        u = sign | ((exp + 112u) << 23) | (mant << 13);
    memcpy(&f, &u, 4);
    return f;
}

uint16_t eng_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    float a = fabsf(f);
    if (isnan(f))
        return sign | 0x7e00u;
    if (a >= 65520.0f)
        return sign | 0x7c00u;
    if (a < 6.103515625e-05f) { /* subnormal: multiples of 2^-24, round to nearest even */
        float q = a * 16777216.0f;
        return sign | (uint16_t)nearbyintf(q);
    }
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    float q = nearbyintf((m * 2.0f - 1.0f) * 1024.0f);
    int exp = e - 1 + 15;
    if (q >= 1024.0f) {
        q = 0.0f;
        exp++;
    }
    if (exp >= 31)
        return sign | 0x7c00u;
    return sign | (uint16_t)(exp << 10) | (uint16_t)q;
}

void eng_backend_init(eng_backend_t *b, const eng_backend_ops_t *ops, void *ctx, const char *name) {
    b->ops_copy = *ops;
    b->ops = &b->ops_copy;
    b->ctx = ctx;
    snprintf(b->name, sizeof(b->name), "%s", name ? name : ops->name);
}

void eng_backend_set_sample(eng_backend_t *b,
                            int (*sample)(eng_backend_t *, const eng_tensor_t *,
                                          const struct eng_sample_batch *, int32_t *)) {
    b->ops_copy.sample = sample;
    b->ops = &b->ops_copy;
}

#ifdef OM_HAVE_CUDA
/* SAMPLE hook of the CUDA backend: every row's draw on the device (eng_cuda_sample_ex), on the
 * backend's stream, penalties and eos/stop suppression as logit edits applied to a device copy
 * of the row, logprobs from the raw row; only ids (and a few logprobs) come back. */
static int s_cuda_sample(eng_backend_t *b, const eng_tensor_t *logits,
                         const struct eng_sample_batch *req, int32_t *ret_ids) {
    if (!logits || !logits->data || logits->dtype != ENG_DTYPE_F32 || !req || !req->params ||
        !req->steps || !ret_ids || req->n_rows == 0 || eng_tensor_rows(logits) < req->n_rows)
        return -EINVAL;
    _Static_assert(sizeof(eng_sampler_edit_t) == sizeof(eng_cuda_sample_edit_t),
                   "edit layouts differ");
    _Static_assert(ENG_SAMPLER_MAX_LOGPROBS == ENG_CUDA_SAMPLE_MAX_LOGPROBS, "logprob caps differ");
    uint32_t n_edits = 0;
    const bool has_edits = req->edits && req->edit0 && req->n_edit;
    for (uint32_t i = 0; has_edits && i < req->n_rows; i++) {
        uint32_t end = req->edit0[i] + req->n_edit[i];
        n_edits = end > n_edits ? end : n_edits;
    }
    /* host staging, grown and kept (nothing mallocs per token; the sampler is single-threaded) */
    static eng_cuda_sample_row_t *rows;
    static eng_cuda_sample_out_t *outs;
    static uint32_t cap;
    if (req->n_rows > cap) {
        eng_cuda_sample_row_t *nr = realloc(rows, req->n_rows * sizeof *rows);
        if (nr)
            rows = nr;
        eng_cuda_sample_out_t *no = realloc(outs, req->n_rows * sizeof *outs);
        if (no)
            outs = no;
        if (!nr || !no)
            return -ENOMEM;
        cap = req->n_rows;
    }
    for (uint32_t i = 0; i < req->n_rows; i++) {
        const eng_sampler_params_t *p = &req->params[i];
        rows[i] = (eng_cuda_sample_row_t){
            .temperature = p->temperature, .top_k = p->top_k, .top_p = p->top_p,
            .min_p = p->min_p, .seed = p->seed, .step = req->steps[i],
            .edit0 = has_edits ? req->edit0[i] : 0, .n_edit = has_edits ? req->n_edit[i] : 0,
            .n_logprobs = req->results ? p->n_logprobs : 0};
    }
    /* the stream the logits come from (a fused step still in flight there), else the backend's */
    void *stream = req->stream ? req->stream : eng_backend_cuda_stream(b);
    int r = eng_cuda_sample_ex(stream, logits->data, req->n_rows,
                               (uint32_t)eng_tensor_cols(logits), rows,
                               (const eng_cuda_sample_edit_t *)req->edits, n_edits, outs);
    for (uint32_t i = 0; r == 0 && i < req->n_rows; i++) {
        ret_ids[i] = outs[i].token;
        if (!req->results)
            continue;
        eng_sampler_result_t *res = &req->results[i];
        memset(res, 0, sizeof *res);
        res->token = outs[i].token;
        res->logprob = outs[i].logprob;
        res->n_top = outs[i].n_top <= ENG_SAMPLER_MAX_LOGPROBS ? outs[i].n_top : 0;
        memcpy(res->top_ids, outs[i].top_ids, res->n_top * sizeof *res->top_ids);
        memcpy(res->top_logprobs, outs[i].top_logprobs, res->n_top * sizeof *res->top_logprobs);
    }
    return r;
}
#endif

int eng_backend_new(const char *name, int n_threads, int device, eng_backend_t **ret) {
    if (!name || !ret)
        return -EINVAL;
    if (strcmp(name, "cpu") == 0)
        return eng_backend_cpu_new(n_threads, ret);
    if (strcmp(name, "cuda") == 0 || strncmp(name, "cuda", 4) == 0) {
#ifdef OM_HAVE_CUDA
        int r = eng_backend_cuda_new(device, ret);
        /* OMNIPIPE_GPU_SAMPLE=0 keeps sampling on the host (debugging) */
        const char *gs = getenv("OMNIPIPE_GPU_SAMPLE");
        if (r == 0 && !(gs && strcmp(gs, "0") == 0))
            eng_backend_set_sample(*ret, s_cuda_sample);
        return r;
#else
        return -EOPNOTSUPP;
#endif
    }
    return -EINVAL;
}

eng_backend_t *eng_backend_free(eng_backend_t *b) {
    if (b && b->ops && b->ops->destroy)
        b->ops->destroy(b);
    return NULL;
}

int eng_backend_download(eng_backend_t *b, void *dst, const eng_tensor_t *t) {
    if (!b || !dst || !t || !t->data)
        return -EINVAL;
    return b->ops->download(b, dst, t, 0, eng_tensor_nbytes(t));
}
