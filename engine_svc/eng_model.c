/* eng_model.c: the Qwen3 / Qwen3-MoE / Qwen3-Omni-thinker text model: weight loading (safetensors
 * or dummy), KV pools, scratch, and the one-step forward over an eng_batch_t, written once against
 * the backend vtable (eng_backend.h, eng_ops.h). See eng_model.h.
 *
 * Graph per step (T tokens of S sequences):
 *   h = EMBED(ids)
 *   for each layer: xn = RMSNORM(h) (layer 0) or ADD_RMSNORM(h += mlp_out) (later layers)
 *                   q,k,v = MATMUL(xn, wq/wk/wv); QK_NORM_ROPE(q, k); KV_WRITE(k, v)
 *                   a = ATTENTION(q, pools); o = MATMUL(a, wo); xn = ADD_RMSNORM(h += o)
 *                   mlp_out = MOE(xn) or MATMUL(SILU_MUL(MATMUL(xn,wg), MATMUL(xn,wu)), wd)
 *   xn = ADD_RMSNORM(h += mlp_out, final norm); logits = MATMUL(GET_ROWS(xn, last rows), lm_head)
 * Multimodal steps (eng_model_set_mm_rows): after EMBED the placeholder rows of h are replaced by the
 * encoder embeddings, and after each deepstack layer the add is done unfused (ADD) and the visual
 * features are added to those rows; both edits go through host memory (prefill steps only).
 * Shapes come from config.json only; weight dtypes from the checkpoint's tensors.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_devices.h"
#include "eng_loader.h"
#include "eng_model.h"
#ifdef OM_HAVE_CUDA
#include "eng_cuda.h"
#endif

typedef struct s_layer {
    eng_tensor_t in_norm;   /* (D) */
    eng_tensor_t post_norm; /* (D) */
    eng_tensor_t wq;        /* (Hq*hd, D) */
    eng_tensor_t wk;        /* (Hk*hd, D) */
    eng_tensor_t wv;        /* (Hk*hd, D) */
    eng_tensor_t wo;        /* (D, Hq*hd) */
    eng_tensor_t q_norm;    /* (hd) */
    eng_tensor_t k_norm;    /* (hd) */
    bool moe;               /* sparse MoE block (else dense SwiGLU MLP) */
    eng_tensor_t router;    /* (E, D) */
    eng_tensor_t gate_exps; /* (E, I, D) */
    eng_tensor_t up_exps;   /* (E, I, D) */
    eng_tensor_t down_exps; /* (E, D, I) */
    eng_tensor_t w_gate;    /* (Id, D) dense */
    eng_tensor_t w_up;      /* (Id, D) dense */
    eng_tensor_t w_down;    /* (D, Id) dense */
    eng_tensor_t k_pool;    /* (n_blocks*block_size, Hk*hd) f32 */
    eng_tensor_t v_pool;    /* (n_blocks*block_size, Hk*hd) f32 */
} s_layer_t;

/* Backend scratch: capacity rows, viewed with the step's T rows. */
typedef struct s_scratch {
    uint32_t cap_tokens, cap_seqs, cap_blocks; /* capacities */
    eng_tensor_t h;       /* (T, D) residual stream */
    eng_tensor_t xn;      /* (T, D) normed */
    eng_tensor_t q;       /* (T, Hq*hd) */
    eng_tensor_t k;       /* (T, Hk*hd) */
    eng_tensor_t v;       /* (T, Hk*hd) */
    eng_tensor_t attn;    /* (T, Hq*hd) */
    eng_tensor_t o;       /* (T, D) attention output / MLP output */
    eng_tensor_t g;       /* (T, Imax) */
    eng_tensor_t u;       /* (T, Imax) */
    eng_tensor_t rows_x;  /* (S, D) */
    eng_tensor_t logits;  /* (S, V) */
    eng_tensor_t ids;     /* (T) i32 */
    eng_tensor_t pos;     /* (3, T) i32 */
    eng_tensor_t tok_seq; /* (T) i32 */
    eng_tensor_t tok_pos; /* (T) i32 */
    eng_tensor_t slots;   /* (T) i32 */
    eng_tensor_t btab;    /* (S, max_blocks) i32 */
    eng_tensor_t lrows;   /* (S) i32 */
    int32_t *h_ids, *h_pos, *h_seq, *h_tpos, *h_slots, *h_btab, *h_lrows; /* host staging */
} s_scratch_t;

struct eng_model {
    eng_config_t cfg;
    eng_backend_t *b;         /* borrowed */
    eng_tensor_t embed;       /* (V, D) */
    eng_tensor_t norm;        /* (D) */
    eng_tensor_t lm_head;     /* (V, D); aliases embed when tied */
    bool tied;                /* lm_head aliases embed */
    s_layer_t *layers;        /* (L) */
    uint64_t weight_bytes;    /* bytes of weights in the backend */
    uint32_t n_mm_tensors;    /* audio/vision tensors present (left for the multimodal path) */
    uint32_t n_blocks;        /* KV blocks (0 = none allocated) */
    uint32_t block_size;      /* tokens per block */
    s_scratch_t s;
    eng_tensor_t logits_view; /* (n_logits, V) view returned by forward */
    const int32_t *mm_rows;   /* (n_mm) step-token rows replaced by mm_embeds (next forward) */
    uint32_t n_mm;            /* 0 = no multimodal rows */
    const float *mm_embeds;   /* (n_mm, D) host */
    const float *mm_ds;       /* (n_mm_ds, n_mm, D) host deepstack features */
    uint32_t n_mm_ds;         /* deepstack layers */
    float *h_hidden;          /* (cap_tokens, D) host staging for the multimodal row edits */
    float *cap;               /* capture buffer (L+1, T, D) or NULL */
    char last_err[256];       /* why the last forward failed validation ("" = none) */
#ifdef OM_HAVE_CUDA
    eng_cuda_model_t *fast;   /* the fast bf16 runner (cuda backend); NULL = the vtable graph */
#endif
    eng_tensor_t fast_logits; /* (n_logits, V) f32 view of the runner's device logits */
    bool in_flight;           /* a fast-runner step was queued without a host synchronisation
                                 (eng_model_forward_async) and not yet waited for here */
    const char *runner;       /* "vtable" or "cuda-fast" */
    uint32_t cap_tokens;      /* capacity of cap in tokens */
};

static int s_err(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int s_err(char *err, size_t errlen, int r, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

static double s_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* --- weight jobs ------------------------------------------------------------------------------ */

enum s_kind { S_KIND_LINEAR, S_KIND_NORM, S_KIND_EMBED };

typedef struct s_job {
    char name[192];             /* checkpoint tensor name */
    eng_tensor_t *dst;          /* destination (stacked for experts) */
    int64_t index;              /* expert index inside dst, -1 = whole tensor */
    int n_dims;                 /* expected dims of the checkpoint tensor */
    int64_t shape[2];           /* expected shape of the checkpoint tensor */
    enum s_kind kind;           /* for dummy init */
    const eng_st_tensor_t *st;  /* found tensor (auto) */
} s_job_t;

typedef struct s_jobs {
    s_job_t *v;
    size_t n, cap;
} s_jobs_t;

static int s_job_add(s_jobs_t *j, eng_tensor_t *dst, int64_t index, enum s_kind kind, int n_dims,
                     int64_t s0, int64_t s1, const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static int s_job_add(s_jobs_t *j, eng_tensor_t *dst, int64_t index, enum s_kind kind, int n_dims,
                     int64_t s0, int64_t s1, const char *fmt, ...) {
    if (j->n == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 256;
        s_job_t *v = realloc(j->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        j->v = v;
        j->cap = cap;
    }
    s_job_t *x = &j->v[j->n++];
    memset(x, 0, sizeof(*x));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof(x->name), fmt, ap);
    va_end(ap);
    x->dst = dst;
    x->index = index;
    x->kind = kind;
    x->n_dims = n_dims;
    x->shape[0] = s0;
    x->shape[1] = s1;
    return 0;
}

/* Lists every tensor the text model needs, with its expected shape, and sets the destination
 * shapes (dtype is decided later, from the checkpoint). */
static int s_plan(eng_model_t *m, s_jobs_t *j) {
    const eng_config_t *c = &m->cfg;
    const char *p = c->tensor_prefix;
    int64_t d = c->hidden_size, v = c->vocab_size, hd = c->head_dim;
    int64_t qo = (int64_t)c->n_heads * hd, kvo = (int64_t)c->n_kv_heads * hd;
    int64_t e_n = c->n_experts, in = c->moe_intermediate_size, id = c->intermediate_size;
    int r = 0;
#define SHAPE1(t, a) ((t)->n_dims = 1, (t)->shape[0] = (a), (t)->shape[1] = (t)->shape[2] = (t)->shape[3] = 1)
#define SHAPE2(t, a, b_) ((t)->n_dims = 2, (t)->shape[0] = (a), (t)->shape[1] = (b_), (t)->shape[2] = (t)->shape[3] = 1)
#define SHAPE3(t, a, b_, c_) ((t)->n_dims = 3, (t)->shape[0] = (a), (t)->shape[1] = (b_), (t)->shape[2] = (c_), (t)->shape[3] = 1)
#define ADD(...) do { if ((r = s_job_add(j, __VA_ARGS__)) < 0) return r; } while (0)
    SHAPE2(&m->embed, v, d);
    ADD(&m->embed, -1, S_KIND_EMBED, 2, v, d, "%sembed_tokens.weight", p);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        s_layer_t *L = &m->layers[l];
        SHAPE1(&L->in_norm, d);
        SHAPE1(&L->post_norm, d);
        SHAPE2(&L->wq, qo, d);
        SHAPE2(&L->wk, kvo, d);
        SHAPE2(&L->wv, kvo, d);
        SHAPE2(&L->wo, d, qo);
        SHAPE1(&L->q_norm, hd);
        SHAPE1(&L->k_norm, hd);
        ADD(&L->in_norm, -1, S_KIND_NORM, 1, d, 0, "%slayers.%u.input_layernorm.weight", p, l);
        ADD(&L->wq, -1, S_KIND_LINEAR, 2, qo, d, "%slayers.%u.self_attn.q_proj.weight", p, l);
        ADD(&L->wk, -1, S_KIND_LINEAR, 2, kvo, d, "%slayers.%u.self_attn.k_proj.weight", p, l);
        ADD(&L->wv, -1, S_KIND_LINEAR, 2, kvo, d, "%slayers.%u.self_attn.v_proj.weight", p, l);
        ADD(&L->wo, -1, S_KIND_LINEAR, 2, d, qo, "%slayers.%u.self_attn.o_proj.weight", p, l);
        ADD(&L->q_norm, -1, S_KIND_NORM, 1, hd, 0, "%slayers.%u.self_attn.q_norm.weight", p, l);
        ADD(&L->k_norm, -1, S_KIND_NORM, 1, hd, 0, "%slayers.%u.self_attn.k_norm.weight", p, l);
        ADD(&L->post_norm, -1, S_KIND_NORM, 1, d, 0, "%slayers.%u.post_attention_layernorm.weight",
            p, l);
        L->moe = c->layer_is_moe[l];
        if (L->moe) {
            SHAPE2(&L->router, e_n, d);
            SHAPE3(&L->gate_exps, e_n, in, d);
            SHAPE3(&L->up_exps, e_n, in, d);
            SHAPE3(&L->down_exps, e_n, d, in);
            ADD(&L->router, -1, S_KIND_LINEAR, 2, e_n, d, "%slayers.%u.mlp.gate.weight", p, l);
            for (int64_t e = 0; e < e_n; e++) {
                ADD(&L->gate_exps, e, S_KIND_LINEAR, 2, in, d,
                    "%slayers.%u.mlp.experts.%lld.gate_proj.weight", p, l, (long long)e);
                ADD(&L->up_exps, e, S_KIND_LINEAR, 2, in, d,
                    "%slayers.%u.mlp.experts.%lld.up_proj.weight", p, l, (long long)e);
                ADD(&L->down_exps, e, S_KIND_LINEAR, 2, d, in,
                    "%slayers.%u.mlp.experts.%lld.down_proj.weight", p, l, (long long)e);
            }
        } else {
            SHAPE2(&L->w_gate, id, d);
            SHAPE2(&L->w_up, id, d);
            SHAPE2(&L->w_down, d, id);
            ADD(&L->w_gate, -1, S_KIND_LINEAR, 2, id, d, "%slayers.%u.mlp.gate_proj.weight", p, l);
            ADD(&L->w_up, -1, S_KIND_LINEAR, 2, id, d, "%slayers.%u.mlp.up_proj.weight", p, l);
            ADD(&L->w_down, -1, S_KIND_LINEAR, 2, d, id, "%slayers.%u.mlp.down_proj.weight", p, l);
        }
    }
    SHAPE1(&m->norm, d);
    ADD(&m->norm, -1, S_KIND_NORM, 1, d, 0, "%snorm.weight", p);
    if (!c->tie_word_embeddings) {
        SHAPE2(&m->lm_head, v, d);
        ADD(&m->lm_head, -1, S_KIND_LINEAR, 2, v, d, "%s", c->lm_head_name);
    }
#undef ADD
#undef SHAPE1
#undef SHAPE2
#undef SHAPE3
    return 0;
}

/* xorshift64* stream seeded from the tensor name and the load seed: deterministic dummy weights */
static uint64_t s_seed(const char *name, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *name; name++)
        h = (h ^ (uint8_t)*name) * 1099511628211ull;
    return h ? h : 0x9e3779b97f4a7c15ull;
}

static float s_uniform(uint64_t *st) { /* in [-1, 1) */
    uint64_t x = *st;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return (float)((double)((x * 2685821657736338717ull) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static int s_fill_dummy(const s_job_t *jb, eng_dtype_t dt, uint64_t seed, void *buf, int64_t n) {
    uint64_t st = s_seed(jb->name, seed);
    /* uniform with std 1/sqrt(fan_in) for linears (activations stay O(1) through the layers),
     * 1 +- 0.1 for norms, std 1 for the embedding */
    float scale;
    if (jb->kind == S_KIND_NORM)
        scale = 0.1f;
    else if (jb->kind == S_KIND_EMBED)
        scale = 1.7320508f;
    else
        scale = 1.7320508f / sqrtf((float)jb->shape[jb->n_dims - 1]);
    for (int64_t i = 0; i < n; i++) {
        float x = s_uniform(&st) * scale;
        if (jb->kind == S_KIND_NORM)
            x += 1.0f;
        if (dt == ENG_DTYPE_BF16)
            ((uint16_t *)buf)[i] = eng_f32_to_bf16(x);
        else if (dt == ENG_DTYPE_F16)
            ((uint16_t *)buf)[i] = eng_f32_to_f16(x);
        else
            ((float *)buf)[i] = x;
    }
    return 0;
}

static void s_free_weights(eng_model_t *m) {
    eng_backend_t *b = m->b;
    b->ops->release(b, &m->embed);
    b->ops->release(b, &m->norm);
    if (!m->tied)
        b->ops->release(b, &m->lm_head);
    m->lm_head.data = NULL;
    if (m->layers)
        for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
            s_layer_t *L = &m->layers[l];
            eng_tensor_t *ts[] = {&L->in_norm, &L->post_norm, &L->wq, &L->wk, &L->wv, &L->wo,
                                  &L->q_norm, &L->k_norm, &L->router, &L->gate_exps, &L->up_exps,
                                  &L->down_exps, &L->w_gate, &L->w_up, &L->w_down, &L->k_pool,
                                  &L->v_pool};
            for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++)
                b->ops->release(b, ts[i]);
        }
}

static int s_load_weights(eng_model_t *m, const char *model_dir, const eng_model_load_opts_t *o,
                          char *err, size_t errlen) {
    bool dummy = o && o->load_format && strcmp(o->load_format, "dummy") == 0;
    if (o && o->load_format && !dummy && strcmp(o->load_format, "auto") != 0 &&
        strcmp(o->load_format, "safetensors") != 0)
        return s_err(err, errlen, -EINVAL,
                     "load_format '%s' is not supported (auto, safetensors or dummy)",
                     o->load_format);
    eng_backend_t *b = m->b;
    eng_loader_t *ld = NULL;
    s_jobs_t jobs = {0};
    void *buf = NULL;
    int r = s_plan(m, &jobs);
    if (r < 0)
        goto out;
    if (!dummy) {
        if ((r = eng_loader_open(model_dir, &ld, err, errlen)) < 0)
            goto out;
        for (uint32_t i = 0; i < eng_loader_n_names(ld); i++) {
            const char *n = eng_loader_name(ld, i);
            if (strncmp(n, "thinker.audio_tower.", 20) == 0 || strncmp(n, "thinker.visual.", 15) == 0)
                m->n_mm_tensors++;
        }
    }
    /* pass 1: find and check every tensor; decide the dtypes */
    uint64_t total = 0;
    eng_dtype_t dummy_dt = ENG_DTYPE_BF16;
    for (size_t i = 0; i < jobs.n; i++) {
        s_job_t *jb = &jobs.v[i];
        eng_dtype_t dt = dummy_dt;
        if (!dummy) {
            if ((r = eng_loader_find(ld, jb->name, &jb->st, err, errlen)) < 0)
                goto out;
            const eng_st_tensor_t *st = jb->st;
            bool ok = st->n_dims == jb->n_dims;
            for (int d = 0; ok && d < jb->n_dims; d++)
                ok = st->shape[d] == jb->shape[d];
            if (!ok) {
                char got[64] = "", want[64] = "";
                for (int d = 0; d < st->n_dims; d++)
                    snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%lld", d ? ", " : "",
                             (long long)st->shape[d]);
                for (int d = 0; d < jb->n_dims; d++)
                    snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%lld",
                             d ? ", " : "", (long long)jb->shape[d]);
                r = s_err(err, errlen, -EINVAL,
                          "%s/%s: tensor '%s' has shape [%s], config.json implies [%s]", model_dir,
                          st->file, jb->name, got, want);
                goto out;
            }
            dt = st->dtype;
            if (dt != ENG_DTYPE_F32 && dt != ENG_DTYPE_BF16 && dt != ENG_DTYPE_F16) {
                r = s_err(err, errlen, -EOPNOTSUPP,
                          "%s/%s: tensor '%s' has dtype %s; only BF16, F16 and F32 weights are "
                          "supported (quantized checkpoint?)",
                          model_dir, st->file, jb->name, st->dtype_str);
                goto out;
            }
            if (!b->ops->supports(b, ENG_OP_MATMUL, dt)) {
                r = s_err(err, errlen, -EOPNOTSUPP, "%s: tensor '%s': backend %s cannot use %s",
                          st->file, jb->name, b->name, eng_dtype_name(dt));
                goto out;
            }
        }
        if (jb->index <= 0) {
            jb->dst->dtype = dt;
        } else if (jb->dst->dtype != dt) {
            r = s_err(err, errlen, -EINVAL,
                      "%s: tensor '%s' has dtype %s but expert 0 of the same layer has %s",
                      jb->st ? jb->st->file : "dummy", jb->name, eng_dtype_name(dt),
                      eng_dtype_name(jb->dst->dtype));
            goto out;
        }
        total += (uint64_t)jb->shape[0] * (uint64_t)(jb->n_dims > 1 ? jb->shape[1] : 1) *
                 eng_dtype_size(dt);
    }
    /* pass 2: allocate and upload */
    uint64_t done = 0, last_report = 0;
    double t0 = s_now();
    for (size_t i = 0; i < jobs.n; i++) {
        s_job_t *jb = &jobs.v[i];
        if (jb->index <= 0) {
            if ((r = b->ops->alloc(b, jb->dst)) < 0) {
                r = s_err(err, errlen, r, "%s: cannot allocate %zu bytes on backend %s", jb->name,
                          eng_tensor_nbytes(jb->dst), b->name);
                goto out;
            }
            m->weight_bytes += eng_tensor_nbytes(jb->dst);
        }
        int64_t n = jb->shape[0] * (jb->n_dims > 1 ? jb->shape[1] : 1);
        size_t nbytes = (size_t)n * eng_dtype_size(jb->dst->dtype);
        size_t off = jb->index > 0 ? (size_t)jb->index * nbytes : 0;
        const void *src;
        if (dummy) {
            void *nb = realloc(buf, nbytes ? nbytes : 1);
            if (!nb) {
                r = -ENOMEM;
                goto out;
            }
            buf = nb;
            s_fill_dummy(jb, jb->dst->dtype, o->dummy_seed ? o->dummy_seed : 0x5eed, buf, n);
            src = buf;
        } else {
            src = jb->st->data;
        }
        if ((r = b->ops->upload(b, jb->dst, off, src, nbytes)) < 0) {
            r = s_err(err, errlen, r, "%s: upload to backend %s failed", jb->name, b->name);
            goto out;
        }
        done += nbytes;
        if (o && o->progress && (done - last_report >= (64u << 20) || i + 1 == jobs.n)) {
            o->progress(o->progress_ud, done, total, (uint32_t)(i + 1), (uint32_t)jobs.n,
                        s_now() - t0);
            last_report = done;
        }
    }
    if (m->cfg.tie_word_embeddings) {
        m->lm_head = m->embed;
        m->tied = true;
    }
    r = b->ops->sync(b);
out:
    free(buf);
    free(jobs.v);
    eng_loader_free(ld);
    return r;
}

/* --- scratch ---------------------------------------------------------------------------------- */

static void s_scratch_free(eng_model_t *m) {
    s_scratch_t *s = &m->s;
    eng_tensor_t *ts[] = {&s->h, &s->xn, &s->q, &s->k, &s->v, &s->attn, &s->o, &s->g, &s->u,
                          &s->rows_x, &s->logits, &s->ids, &s->pos, &s->tok_seq, &s->tok_pos,
                          &s->slots, &s->btab, &s->lrows};
    for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++)
        m->b->ops->release(m->b, ts[i]);
    free(s->h_ids);
    free(s->h_pos);
    free(s->h_seq);
    free(s->h_tpos);
    free(s->h_slots);
    free(s->h_btab);
    free(s->h_lrows);
    memset(s, 0, sizeof(*s));
}

static int s_alloc2(eng_backend_t *b, eng_tensor_t *t, eng_dtype_t dt, int64_t rows, int64_t cols) {
    int64_t shape[2] = {rows, cols};
    int r = eng_tensor_init(t, dt, 2, shape);
    return r < 0 ? r : b->ops->alloc(b, t);
}

int eng_model_reserve(eng_model_t *m, uint32_t max_tokens, uint32_t max_seqs,
                      uint32_t max_blocks_per_seq) {
    if (!m || !max_tokens || !max_seqs || !max_blocks_per_seq)
        return -EINVAL;
#ifdef OM_HAVE_CUDA
    if (m->fast) {
        uint64_t ctx = (uint64_t)max_blocks_per_seq * (m->block_size ? m->block_size : 16);
        return eng_cuda_model_reserve(m->fast, max_tokens, max_seqs,
                                      ctx > UINT32_MAX ? UINT32_MAX : (uint32_t)ctx, m->last_err,
                                      sizeof(m->last_err));
    }
#endif
    s_scratch_t *s = &m->s;
    if (max_tokens <= s->cap_tokens && max_seqs <= s->cap_seqs && max_blocks_per_seq <= s->cap_blocks)
        return 0;
    max_tokens = max_tokens > s->cap_tokens ? max_tokens : s->cap_tokens;
    max_seqs = max_seqs > s->cap_seqs ? max_seqs : s->cap_seqs;
    max_blocks_per_seq = max_blocks_per_seq > s->cap_blocks ? max_blocks_per_seq : s->cap_blocks;
    s_scratch_free(m);
    const eng_config_t *c = &m->cfg;
    eng_backend_t *b = m->b;
    int64_t t = max_tokens, sq = max_seqs, d = c->hidden_size;
    int64_t qo = (int64_t)c->n_heads * c->head_dim, kvo = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t imax = c->intermediate_size > 0 ? c->intermediate_size : 1;
    int r;
    if ((r = s_alloc2(b, &s->h, ENG_DTYPE_F32, t, d)) < 0 ||
        (r = s_alloc2(b, &s->xn, ENG_DTYPE_F32, t, d)) < 0 ||
        (r = s_alloc2(b, &s->q, ENG_DTYPE_F32, t, qo)) < 0 ||
        (r = s_alloc2(b, &s->k, ENG_DTYPE_F32, t, kvo)) < 0 ||
        (r = s_alloc2(b, &s->v, ENG_DTYPE_F32, t, kvo)) < 0 ||
        (r = s_alloc2(b, &s->attn, ENG_DTYPE_F32, t, qo)) < 0 ||
        (r = s_alloc2(b, &s->o, ENG_DTYPE_F32, t, d)) < 0 ||
        (r = s_alloc2(b, &s->g, ENG_DTYPE_F32, t, imax)) < 0 ||
        (r = s_alloc2(b, &s->u, ENG_DTYPE_F32, t, imax)) < 0 ||
        (r = s_alloc2(b, &s->rows_x, ENG_DTYPE_F32, sq, d)) < 0 ||
        (r = s_alloc2(b, &s->logits, ENG_DTYPE_F32, sq, c->vocab_size)) < 0 ||
        (r = s_alloc2(b, &s->ids, ENG_DTYPE_I32, 1, t)) < 0 ||
        (r = s_alloc2(b, &s->pos, ENG_DTYPE_I32, 3, t)) < 0 ||
        (r = s_alloc2(b, &s->tok_seq, ENG_DTYPE_I32, 1, t)) < 0 ||
        (r = s_alloc2(b, &s->tok_pos, ENG_DTYPE_I32, 1, t)) < 0 ||
        (r = s_alloc2(b, &s->slots, ENG_DTYPE_I32, 1, t)) < 0 ||
        (r = s_alloc2(b, &s->btab, ENG_DTYPE_I32, sq, max_blocks_per_seq)) < 0 ||
        (r = s_alloc2(b, &s->lrows, ENG_DTYPE_I32, 1, sq)) < 0)
        goto fail;
    s->h_ids = calloc((size_t)t, sizeof(int32_t));
    s->h_pos = calloc((size_t)t * 3, sizeof(int32_t));
    s->h_seq = calloc((size_t)t, sizeof(int32_t));
    s->h_tpos = calloc((size_t)t, sizeof(int32_t));
    s->h_slots = calloc((size_t)t, sizeof(int32_t));
    s->h_btab = calloc((size_t)sq * max_blocks_per_seq, sizeof(int32_t));
    s->h_lrows = calloc((size_t)sq, sizeof(int32_t));
    if (!s->h_ids || !s->h_pos || !s->h_seq || !s->h_tpos || !s->h_slots || !s->h_btab ||
        !s->h_lrows) {
        r = -ENOMEM;
        goto fail;
    }
    s->cap_tokens = max_tokens;
    s->cap_seqs = max_seqs;
    s->cap_blocks = max_blocks_per_seq;
    return 0;
fail:
    s_scratch_free(m);
    return r;
}

/* --- public API ------------------------------------------------------------------------------- */

/* Tensor-parallel degree: o->tensor_parallel, else OMNIPIPE_TENSOR_PARALLEL, else 1. */
static int s_tensor_parallel(const eng_model_load_opts_t *o, int *ret, char *err, size_t errlen) {
    if (o && o->tensor_parallel < 0)
        return s_err(err, errlen, -EINVAL, "tensor_parallel: %d, must be >= 1", o->tensor_parallel);
    if (o && o->tensor_parallel > 0) {
        *ret = o->tensor_parallel;
        return 0;
    }
    const char *e = getenv("OMNIPIPE_TENSOR_PARALLEL");
    if (!e || !*e) {
        *ret = 1;
        return 0;
    }
    char *end = NULL;
    long v = strtol(e, &end, 10);
    if (*end || v < 1 || v > 64)
        return s_err(err, errlen, -EINVAL,
                     "OMNIPIPE_TENSOR_PARALLEL: '%s' is not a GPU count in [1, 64]", e);
    *ret = (int)v;
    return 0;
}

/* MoE split of a tensor-parallel model: o->moe_parallel, else OMNIPIPE_MOE_PARALLEL, else
 * "expert". *ret: 1 expert, 2 column (eng_cuda.h's ENG_CUDA_MOE_PAR_*). With tp > 1 and an MoE
 * config, expert mode needs n_experts % tp == 0. */
static int s_moe_parallel(const eng_model_load_opts_t *o, const eng_config_t *cfg, int tp,
                          int *ret, char *err, size_t errlen) {
    const char *v = o && o->moe_parallel ? o->moe_parallel : getenv("OMNIPIPE_MOE_PARALLEL");
    const char *field = o && o->moe_parallel ? "moe_parallel" : "OMNIPIPE_MOE_PARALLEL";
    if (!v || !*v || strcmp(v, "expert") == 0)
        *ret = 1;
    else if (strcmp(v, "column") == 0)
        *ret = 2;
    else
        return s_err(err, errlen, -EINVAL, "%s: '%s' is not expert or column", field, v);
    if (*ret == 1 && tp > 1 && cfg->n_experts > 0 && cfg->n_experts % (uint32_t)tp != 0)
        return s_err(err, errlen, -EINVAL,
                     "moe_parallel expert: num_experts %u is not divisible by tensor_parallel %d "
                     "(each GPU holds E/N whole experts; use moe_parallel column)",
                     cfg->n_experts, tp);
    return 0;
}

#ifdef OM_HAVE_CUDA
/* The GPUs of a split model from OMNIPIPE_DEVICES (engine_svc's `devices`, eng_devices.h), if set:
 * exactly tensor_parallel of them, the first the backend's device. *ret_n = 0 when unset. */
static int s_devices(int device, int tp, int *ret, int *ret_n, char *err, size_t errlen) {
    const char *e = getenv("OMNIPIPE_DEVICES");
    *ret_n = 0;
    if (!e || !*e)
        return 0;
    int n = 0;
    int r = eng_devices_parse(e, "OMNIPIPE_DEVICES", ret, ENG_DEVICES_MAX, &n, err, errlen);
    if (r < 0)
        return r;
    if (n != (tp > 1 ? tp : 1))
        return s_err(err, errlen, -EINVAL, "OMNIPIPE_DEVICES: '%s' lists %d GPUs, tensor_parallel "
                     "is %d", e, n, tp > 1 ? tp : 1);
    if (ret[0] != device)
        return s_err(err, errlen, -EINVAL, "OMNIPIPE_DEVICES: '%s' starts with GPU %d, the backend "
                     "is on GPU %d", e, ret[0], device);
    *ret_n = n;
    return 0;
}

/* Whether the fast runner drives this model: a cuda backend, unless the options or
 * $OMNIPIPE_CUDA_RUNNER say "vtable". */
static bool s_want_fast(const eng_backend_t *b, const eng_model_load_opts_t *o) {
    if (strcmp(b->ops->name, "cuda") != 0)
        return false;
    const char *want = o && o->cuda_runner ? o->cuda_runner : getenv("OMNIPIPE_CUDA_RUNNER");
    return !(want && strcmp(want, "vtable") == 0);
}

/* Loads the weights into the fast runner (straight to the GPU, or generated there for "dummy");
 * step buffers and KV pools come later (eng_model_reserve, eng_model_alloc_kv). */
static int s_fast_load(eng_model_t *m, const char *model_dir, const eng_model_load_opts_t *o,
                       char *err, size_t errlen) {
    eng_cuda_model_opts_t co;
    memset(&co, 0, sizeof(co));
    if (sscanf(m->b->name, "cuda%d", &co.device) != 1)
        co.device = 0;
    const char *fmt = o && o->load_format ? o->load_format : "auto";
    if (strcmp(fmt, "dummy") == 0)
        co.dummy = true;
    else if (strcmp(fmt, "auto") != 0 && strcmp(fmt, "safetensors") != 0)
        return s_err(err, errlen, -EINVAL, "load_format: '%s' is not auto, safetensors or dummy",
                     fmt);
    co.seed = o && o->dummy_seed ? o->dummy_seed : 0x5eed;
    co.weights_only = true;
    co.no_graphs = getenv("OMNIPIPE_CUDA_NO_GRAPHS") != NULL;
    int r0 = s_tensor_parallel(o, &co.tensor_parallel, err, errlen);
    if (r0 < 0)
        return r0;
    if ((r0 = s_moe_parallel(o, &m->cfg, co.tensor_parallel, &co.moe_parallel, err, errlen)) < 0)
        return r0;
    int devs[ENG_DEVICES_MAX], n_devs = 0;
    if ((r0 = s_devices(co.device, co.tensor_parallel, devs, &n_devs, err, errlen)) < 0)
        return r0;
    if (n_devs > 0)
        co.devices = devs;
    eng_cuda_model_t *fm = NULL;
    int r = eng_cuda_model_load(model_dir, &co, &fm, err, errlen);
    if (r < 0)
        return r;
    eng_cuda_model_info_t info;
    eng_cuda_model_get_info(fm, &info);
    if (info.vocab != m->cfg.vocab_size || info.hidden != m->cfg.hidden_size ||
        info.n_layers != m->cfg.n_layers) {
        eng_cuda_model_free(fm);
        return s_err(err, errlen, -EINVAL,
                     "%s/config.json: the fast CUDA runner read vocab %u, hidden %u, %u layers; "
                     "the model config %u, %u, %u", model_dir, info.vocab, info.hidden,
                     info.n_layers, m->cfg.vocab_size, m->cfg.hidden_size, m->cfg.n_layers);
    }
    m->fast = fm;
    m->runner = "cuda-fast";
    m->weight_bytes = info.weight_bytes;
    if (o && o->progress)
        o->progress(o->progress_ud, info.weight_bytes, info.weight_bytes, 1, 1, info.load_seconds);
    return 0;
}
#endif

int eng_model_load(const char *model_dir, const eng_model_load_opts_t *o, eng_backend_t *b,
                   eng_model_t **ret, char *err, size_t errlen) {
    if (!model_dir || !b || !ret)
        return -EINVAL;
    if (err && errlen)
        err[0] = 0;
    eng_model_t *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->b = b;
    int r = eng_config_load(model_dir, &m->cfg, err, errlen);
    if (r < 0) {
        free(m);
        return r;
    }
    m->layers = calloc(m->cfg.n_layers, sizeof(*m->layers));
    if (!m->layers) {
        free(m);
        return -ENOMEM;
    }
    m->runner = "vtable";
    int tp = 1, mp = 0;
    if ((r = s_tensor_parallel(o, &tp, err, errlen)) < 0 ||
        (r = s_moe_parallel(o, &m->cfg, tp, &mp, err, errlen)) < 0) {
        eng_model_free(m);
        return r;
    }
#ifdef OM_HAVE_CUDA
    if (tp > 1 && !s_want_fast(b, o)) {
        eng_model_free(m);
        return s_err(err, errlen, -EOPNOTSUPP, "tensor_parallel %d: needs the cuda backend's fast "
                     "runner (backend '%s')", tp, b->ops->name);
    }
    if (s_want_fast(b, o)) {
        r = s_fast_load(m, model_dir, o, err, errlen);
        if (r == 0) {
            *ret = m;
            return 0;
        }
        if (r != -EOPNOTSUPP || tp > 1) { /* no vtable fallback for a split model */
            eng_model_free(m);
            return r;
        }
        /* a checkpoint the runner cannot take (dtype, mixed layers): the vtable graph can */
        snprintf(m->last_err, sizeof(m->last_err), "fast CUDA runner: %s; using the vtable graph",
                 err ? err : "unsupported");
        if (err && errlen)
            err[0] = 0;
    }
#else
    if (tp > 1) {
        eng_model_free(m);
        return s_err(err, errlen, -EOPNOTSUPP,
                     "tensor_parallel %d: this build has no CUDA backend", tp);
    }
#endif
    if ((r = s_load_weights(m, model_dir, o, err, errlen)) < 0) {
        eng_model_free(m);
        return r;
    }
    *ret = m;
    return 0;
}

const char *eng_model_runner(const eng_model_t *m) {
    return m->runner;
}

eng_model_t *eng_model_free(eng_model_t *m) {
    if (!m)
        return NULL;
#ifdef OM_HAVE_CUDA
    m->fast = eng_cuda_model_free(m->fast);
#endif
    s_scratch_free(m);
    s_free_weights(m);
    free(m->h_hidden);
    free(m->layers);
    free(m);
    return NULL;
}

const eng_config_t *eng_model_config(const eng_model_t *m) {
    return &m->cfg;
}

eng_backend_t *eng_model_backend(const eng_model_t *m) {
    return m->b;
}

uint64_t eng_model_weight_bytes(const eng_model_t *m) {
    return m->weight_bytes;
}

uint32_t eng_model_n_mm_tensors(const eng_model_t *m) {
    return m->n_mm_tensors;
}

uint64_t eng_model_kv_bytes_per_token(const eng_model_t *m) {
#ifdef OM_HAVE_CUDA
    if (m->fast)
        return eng_cuda_model_kv_bytes_per_token(m->fast);
#endif
    return (uint64_t)m->cfg.n_layers * 2u * m->cfg.n_kv_heads * m->cfg.head_dim * sizeof(float);
}

int eng_model_alloc_kv(eng_model_t *m, uint32_t n_blocks, uint32_t block_size) {
    if (!m || !n_blocks || !block_size)
        return -EINVAL;
#ifdef OM_HAVE_CUDA
    if (m->fast) {
        m->n_blocks = 0;
        int r = eng_cuda_model_alloc_kv(m->fast, n_blocks, block_size, m->last_err,
                                        sizeof(m->last_err));
        if (r < 0)
            return r;
        m->n_blocks = n_blocks;
        m->block_size = block_size;
        return 0;
    }
#endif
    eng_backend_t *b = m->b;
    int64_t slots = (int64_t)n_blocks * block_size;
    int64_t kvo = (int64_t)m->cfg.n_kv_heads * m->cfg.head_dim;
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
        b->ops->release(b, &m->layers[l].k_pool);
        b->ops->release(b, &m->layers[l].v_pool);
    }
    m->n_blocks = 0;
    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
        s_layer_t *L = &m->layers[l];
        int r;
        if ((r = s_alloc2(b, &L->k_pool, ENG_DTYPE_F32, slots, kvo)) < 0 ||
            (r = s_alloc2(b, &L->v_pool, ENG_DTYPE_F32, slots, kvo)) < 0) {
            for (uint32_t k = 0; k <= l; k++) {
                b->ops->release(b, &m->layers[k].k_pool);
                b->ops->release(b, &m->layers[k].v_pool);
            }
            return r;
        }
    }
    m->n_blocks = n_blocks;
    m->block_size = block_size;
    return 0;
}

int eng_model_set_mm_rows(eng_model_t *m, const int32_t *rows, uint32_t n_rows, const float *embeds,
                          const float *deepstack, uint32_t n_deepstack) {
    if (!m || !rows || !n_rows || !embeds || (n_deepstack && !deepstack) ||
        n_deepstack > m->cfg.n_layers)
        return -EINVAL;
#ifdef OM_HAVE_CUDA
    if (m->fast)
        return s_err(m->last_err, sizeof(m->last_err), -EOPNOTSUPP,
                     "multimodal rows: not supported by the fast CUDA runner "
                     "(OMNIPIPE_CUDA_RUNNER=vtable)");
#endif
    m->mm_rows = rows;
    m->n_mm = n_rows;
    m->mm_embeds = embeds;
    m->mm_ds = deepstack;
    m->n_mm_ds = n_deepstack;
    return 0;
}

/* h[rows] = src (replace) or h[rows] += src, through host memory: multimodal prefill steps only. */
static int s_mm_rows(eng_model_t *m, eng_tensor_t *h, uint32_t t_n, const int32_t *rows,
                     uint32_t n_rows, const float *src, bool add) {
    size_t d = m->cfg.hidden_size, nb = (size_t)t_n * d * sizeof(float);
    float *buf = realloc(m->h_hidden, nb ? nb : 1);
    if (!buf)
        return -ENOMEM;
    m->h_hidden = buf;
    int r = m->b->ops->download(m->b, buf, h, 0, nb);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < n_rows; i++) {
        float *row = buf + (size_t)rows[i] * d;
        const float *x = src + (size_t)i * d;
        for (size_t k = 0; k < d; k++)
            row[k] = add ? row[k] + x[k] : x[k];
    }
    return m->b->ops->upload(m->b, h, 0, buf, nb);
}

int eng_model_set_capture(eng_model_t *m, float *buf, uint32_t cap_tokens) {
    if (!m || (buf && !cap_tokens))
        return -EINVAL;
#ifdef OM_HAVE_CUDA
    if (m->fast && buf)
        return s_err(m->last_err, sizeof(m->last_err), -EOPNOTSUPP,
                     "hidden-state capture: not supported by the fast CUDA runner "
                     "(OMNIPIPE_CUDA_RUNNER=vtable)");
#endif
    m->cap = buf;
    m->cap_tokens = buf ? cap_tokens : 0;
    return 0;
}

static int s_capture(eng_model_t *m, uint32_t row, const eng_tensor_t *x, uint32_t t_n) {
    if (!m->cap)
        return 0;
    size_t d = m->cfg.hidden_size;
    return m->b->ops->download(m->b, m->cap + (size_t)row * t_n * d, x, 0,
                               (size_t)t_n * d * sizeof(float));
}

static int s_validate(eng_model_t *m, const eng_batch_t *batch, uint32_t *ret_max_blocks) {
    char *e = m->last_err;
    size_t el = sizeof(m->last_err);
    if (!batch || !batch->seqs || batch->n_seqs == 0 || batch->n_tokens == 0)
        return s_err(e, el, -EINVAL, "batch: no sequences or no tokens");
    if (m->n_blocks == 0)
        return s_err(e, el, -EINVAL, "batch: no KV cache (eng_model_alloc_kv first)");
    uint32_t tokens = 0, logits = 0, max_blocks = 1;
    for (uint32_t i = 0; i < batch->n_seqs; i++) {
        const eng_batch_seq_t *s = &batch->seqs[i];
        if (!s->tokens || s->n_tokens == 0 || !s->block_table)
            return s_err(e, el, -EINVAL, "batch seq %u: tokens, n_tokens or block_table missing", i);
        uint64_t end = (uint64_t)s->n_past + s->n_tokens;
        if ((uint64_t)s->n_blocks * m->block_size < end)
            return s_err(e, el, -EINVAL,
                         "batch seq %u: block_table of %u blocks does not cover %llu positions", i,
                         s->n_blocks, (unsigned long long)end);
        for (uint32_t k = 0; k < s->n_tokens; k++)
            if (s->tokens[k] < 0 || (uint32_t)s->tokens[k] >= m->cfg.vocab_size)
                return s_err(e, el, -EINVAL, "batch seq %u: token id %d outside vocab (%u)", i,
                             s->tokens[k], m->cfg.vocab_size);
        uint32_t need = (uint32_t)((end + m->block_size - 1) / m->block_size);
        for (uint32_t k = 0; k < need; k++)
            if (s->block_table[k] < 0 || (uint32_t)s->block_table[k] >= m->n_blocks)
                return s_err(e, el, -EINVAL, "batch seq %u: block_table[%u] = %d outside 0..%u", i,
                             k, s->block_table[k], m->n_blocks - 1);
        if (s->positions)
            for (uint32_t k = 0; k < 3 * s->n_tokens; k++)
                if (s->positions[k] < 0)
                    return s_err(e, el, -EINVAL, "batch seq %u: negative position", i);
        if (need > max_blocks)
            max_blocks = need;
        tokens += s->n_tokens;
        logits += s->want_logits;
    }
    if (tokens != batch->n_tokens || logits != batch->n_logits)
        return s_err(e, el, -EINVAL,
                     "batch: n_tokens %u / n_logits %u do not match the sequences (%u / %u)",
                     batch->n_tokens, batch->n_logits, tokens, logits);
    *ret_max_blocks = max_blocks;
    return 0;
}

const char *eng_model_last_error(const eng_model_t *m) {
    return m->last_err;
}

#ifdef OM_HAVE_CUDA
/* One step on the fast runner; the logits stay on the GPU behind m->fast_logits. ret_stream
 * non-NULL: no host synchronisation, *ret_stream = the stream the step is in flight on (NULL:
 * complete). */
static int s_fast_forward(eng_model_t *m, const eng_batch_t *batch, uint32_t max_blocks,
                          eng_tensor_t **ret_logits, void **ret_stream) {
    /* a step left in flight by the caller ends before this one touches the runner's buffers */
    int r = eng_model_wait(m);
    if (r < 0)
        return r;
    /* grows the step buffers if the batch is larger than anything reserved (no-op otherwise) */
    r = eng_model_reserve(m, batch->n_tokens, batch->n_seqs, max_blocks);
    if (r < 0)
        return r;
    if (ret_stream) {
        *ret_stream = NULL;
        r = eng_cuda_model_forward_async(m->fast, batch, ret_stream, m->last_err,
                                         sizeof(m->last_err));
        m->in_flight = r == 0 && *ret_stream != NULL;
    } else {
        r = eng_cuda_model_forward(m->fast, batch, NULL, NULL, m->last_err, sizeof(m->last_err));
    }
    if (r < 0)
        return r;
    if (batch->n_logits == 0) {
        *ret_logits = NULL;
        return 0;
    }
    int64_t shape[2] = {batch->n_logits, m->cfg.vocab_size};
    if ((r = eng_tensor_init(&m->fast_logits, ENG_DTYPE_F32, 2, shape)) < 0)
        return r;
    m->fast_logits.data = eng_cuda_model_logits(m->fast);
    *ret_logits = &m->fast_logits;
    return 0;
}
#endif

int eng_model_wait(eng_model_t *m) {
    if (!m)
        return -EINVAL;
#ifdef OM_HAVE_CUDA
    if (m->in_flight) {
        m->in_flight = false;
        return eng_cuda_model_sync(m->fast);
    }
#endif
    return 0;
}

void eng_model_step_synced(eng_model_t *m) {
    if (m)
        m->in_flight = false;
}

static int s_forward(eng_model_t *m, const eng_batch_t *batch, eng_tensor_t **ret_logits,
                     void **ret_stream);

int eng_model_forward(eng_model_t *m, const eng_batch_t *batch, eng_tensor_t **ret_logits) {
    return s_forward(m, batch, ret_logits, NULL);
}

int eng_model_forward_async(eng_model_t *m, const eng_batch_t *batch, eng_tensor_t **ret_logits,
                            void **ret_stream) {
    if (!ret_stream)
        return -EINVAL;
    *ret_stream = NULL;
    return s_forward(m, batch, ret_logits, ret_stream);
}

static int s_forward(eng_model_t *m, const eng_batch_t *batch, eng_tensor_t **ret_logits,
                     void **ret_stream) {
    if (!m || !ret_logits)
        return -EINVAL;
    /* multimodal rows apply to this forward only, whatever its outcome */
    uint32_t n_mm = m->n_mm, n_ds = n_mm ? m->n_mm_ds : 0;
    m->n_mm = 0;
    m->n_mm_ds = 0;
    m->last_err[0] = 0;
    uint32_t max_blocks = 1;
    int r = s_validate(m, batch, &max_blocks);
    if (r < 0)
        return r;
#ifdef OM_HAVE_CUDA
    if (m->fast)
        return n_mm ? s_err(m->last_err, sizeof(m->last_err), -EOPNOTSUPP,
                            "multimodal rows: not supported by the fast CUDA runner")
                    : s_fast_forward(m, batch, max_blocks, ret_logits, ret_stream);
#endif
    (void)ret_stream; /* the vtable graph: its ops are ordered on the backend's stream */
    uint32_t t_n = batch->n_tokens, s_n = batch->n_seqs, r_n = batch->n_logits;
    for (uint32_t i = 0; i < n_mm; i++)
        if (m->mm_rows[i] < 0 || (uint32_t)m->mm_rows[i] >= t_n)
            return s_err(m->last_err, sizeof(m->last_err), -EINVAL,
                         "multimodal row %d outside the step's %u tokens", m->mm_rows[i], t_n);
    if (m->cap && t_n > m->cap_tokens)
        return s_err(m->last_err, sizeof(m->last_err), -E2BIG,
                     "capture buffer holds %u tokens, step has %u", m->cap_tokens, t_n);
    if ((r = eng_model_reserve(m, t_n, s_n, max_blocks)) < 0)
        return r;
    const eng_config_t *c = &m->cfg;
    eng_backend_t *b = m->b;
    const eng_backend_ops_t *ops = b->ops;
    s_scratch_t *s = &m->s;
    /* block tables go up packed with the step's longest table as row length (not the capacity) */
    uint32_t bs = m->block_size, mb = max_blocks;

    /* host staging of the step's metadata */
    uint32_t off = 0, lr = 0;
    for (uint32_t i = 0; i < s_n; i++) {
        const eng_batch_seq_t *q = &batch->seqs[i];
        uint32_t need = (q->n_past + q->n_tokens + bs - 1) / bs;
        for (uint32_t k = 0; k < mb; k++)
            s->h_btab[i * mb + k] = k < need ? q->block_table[k] : 0;
        for (uint32_t k = 0; k < q->n_tokens; k++) {
            uint32_t t = off + k, p = q->n_past + k;
            s->h_ids[t] = q->tokens[k];
            for (int row = 0; row < 3; row++)
                s->h_pos[row * t_n + t] = q->positions ? q->positions[row * q->n_tokens + k]
                                                       : (int32_t)p;
            s->h_seq[t] = (int32_t)i;
            s->h_tpos[t] = (int32_t)p;
            s->h_slots[t] = q->block_table[p / bs] * (int32_t)bs + (int32_t)(p % bs);
        }
        off += q->n_tokens;
        if (q->want_logits)
            s->h_lrows[lr++] = (int32_t)(off - 1);
    }
    eng_tensor_t ids = eng_tensor_rows_view(&s->ids, 0, 1), tok_seq = s->tok_seq,
                 tok_pos = s->tok_pos, slots = s->slots;
    ids.shape[1] = tok_seq.shape[1] = tok_pos.shape[1] = slots.shape[1] = t_n;
    tok_seq.n_dims = tok_pos.n_dims = slots.n_dims = 2;
    eng_tensor_t pos = s->pos;
    pos.shape[0] = 3;
    pos.shape[1] = t_n;
    eng_tensor_t btab = s->btab;
    btab.shape[0] = s_n;
    btab.shape[1] = mb;
    eng_tensor_t lrows = s->lrows;
    lrows.shape[1] = r_n;
    size_t i4 = sizeof(int32_t);
    if ((r = ops->upload(b, &ids, 0, s->h_ids, t_n * i4)) < 0 ||
        (r = ops->upload(b, &pos, 0, s->h_pos, 3 * t_n * i4)) < 0 ||
        (r = ops->upload(b, &tok_seq, 0, s->h_seq, t_n * i4)) < 0 ||
        (r = ops->upload(b, &tok_pos, 0, s->h_tpos, t_n * i4)) < 0 ||
        (r = ops->upload(b, &slots, 0, s->h_slots, t_n * i4)) < 0 ||
        (r = ops->upload(b, &btab, 0, s->h_btab, (size_t)s_n * mb * i4)) < 0 ||
        (r_n && (r = ops->upload(b, &lrows, 0, s->h_lrows, r_n * i4)) < 0))
        return r;

    eng_tensor_t h = eng_tensor_rows_view(&s->h, 0, t_n), xn = eng_tensor_rows_view(&s->xn, 0, t_n),
                 q = eng_tensor_rows_view(&s->q, 0, t_n), k = eng_tensor_rows_view(&s->k, 0, t_n),
                 v = eng_tensor_rows_view(&s->v, 0, t_n),
                 attn = eng_tensor_rows_view(&s->attn, 0, t_n),
                 o = eng_tensor_rows_view(&s->o, 0, t_n);
    struct eng_rmsnorm_params np = {.eps = c->rms_norm_eps};
    struct eng_rope_params rp = {
        .eps = c->rms_norm_eps,
        .theta = c->rope_theta,
        .n_heads = (int32_t)c->n_heads,
        .n_kv_heads = (int32_t)c->n_kv_heads,
        .head_dim = (int32_t)c->head_dim,
        .mrope_section = {c->mrope_section[0], c->mrope_section[1], c->mrope_section[2]},
    };
    int32_t max_kv = 0;
    for (uint32_t t = 0; t < t_n; t++)
        if (s->h_tpos[t] + 1 > max_kv)
            max_kv = s->h_tpos[t] + 1;
    struct eng_attn_meta meta = {
        .tok_seq = &tok_seq, .tok_pos = &tok_pos, .block_tables = &btab,
        .n_seqs = (int32_t)s_n, .max_blocks = (int32_t)mb, .block_size = (int32_t)bs,
        .max_kv_len = max_kv,
    };
    struct eng_attn_params ap = {
        .scale = 1.0f / sqrtf((float)c->head_dim),
        .n_heads = (int32_t)c->n_heads,
        .n_kv_heads = (int32_t)c->n_kv_heads,
        .head_dim = (int32_t)c->head_dim,
    };
    struct eng_moe_params mp = {
        .n_experts = (int32_t)c->n_experts,
        .top_k = (int32_t)c->n_experts_per_tok,
        .norm_topk_prob = c->norm_topk_prob,
    };

    if ((r = ops->embed(b, &h, &ids, &m->embed)) < 0 ||
        (n_mm && (r = s_mm_rows(m, &h, t_n, m->mm_rows, n_mm, m->mm_embeds, false)) < 0) ||
        (r = s_capture(m, 0, &h, t_n)) < 0)
        return r;
    bool h_done = true; /* h already holds the previous layer's output (no pending mlp add) */
    for (uint32_t l = 0; l < c->n_layers; l++) {
        s_layer_t *L = &m->layers[l];
        if (h_done)
            r = ops->rmsnorm(b, &xn, &h, &L->in_norm, &np);
        else if ((r = ops->add_rmsnorm(b, &xn, &h, &o, &L->in_norm, &np)) == 0)
            r = s_capture(m, l, &h, t_n);
        h_done = false;
        if (r < 0 || (r = ops->matmul(b, &q, &xn, &L->wq)) < 0 ||
            (r = ops->matmul(b, &k, &xn, &L->wk)) < 0 || (r = ops->matmul(b, &v, &xn, &L->wv)) < 0 ||
            (r = ops->qk_norm_rope(b, &q, &k, &L->q_norm, &L->k_norm, &pos, &rp)) < 0 ||
            (r = ops->kv_write(b, &L->k_pool, &L->v_pool, &k, &v, &slots)) < 0 ||
            (r = ops->attention(b, &attn, &q, &L->k_pool, &L->v_pool, &meta, &ap)) < 0 ||
            (r = ops->matmul(b, &o, &attn, &L->wo)) < 0 ||
            (r = ops->add_rmsnorm(b, &xn, &h, &o, &L->post_norm, &np)) < 0)
            return r;
        if (L->moe) {
            struct eng_moe_weights mw = {.router = &L->router, .gate = &L->gate_exps,
                                         .up = &L->up_exps, .down = &L->down_exps};
            if ((r = ops->moe(b, &o, &xn, &mw, &mp)) < 0)
                return r;
        } else {
            eng_tensor_t g = s->g, u = s->u;
            g.shape[0] = u.shape[0] = t_n;
            g.shape[1] = u.shape[1] = c->intermediate_size;
            if ((r = ops->matmul(b, &g, &xn, &L->w_gate)) < 0 ||
                (r = ops->matmul(b, &u, &xn, &L->w_up)) < 0 ||
                (r = ops->silu_mul(b, &g, &g, &u)) < 0 || (r = ops->matmul(b, &o, &g, &L->w_down)) < 0)
                return r;
        }
        if (l < n_ds) { /* deepstack: finish h, add the visual features to the mm rows */
            /* captured before the deepstack add: transformers records the layer's output */
            if ((r = ops->add(b, &h, &h, &o)) < 0 ||
                (l + 1 < c->n_layers && (r = s_capture(m, l + 1, &h, t_n)) < 0) ||
                (r = s_mm_rows(m, &h, t_n, m->mm_rows, n_mm,
                               m->mm_ds + (size_t)l * n_mm * c->hidden_size, true)) < 0)
                return r;
            h_done = true;
        }
    }
    if (h_done) {
        if ((r = ops->rmsnorm(b, &xn, &h, &m->norm, &np)) < 0)
            return r;
    } else if ((r = ops->add_rmsnorm(b, &xn, &h, &o, &m->norm, &np)) < 0) {
        return r;
    }
    if ((r = s_capture(m, c->n_layers, &xn, t_n)) < 0)
        return r;
    if (r_n == 0) {
        *ret_logits = NULL;
        return 0;
    }
    eng_tensor_t rows_x = eng_tensor_rows_view(&s->rows_x, 0, r_n);
    m->logits_view = eng_tensor_rows_view(&s->logits, 0, r_n);
    if ((r = ops->get_rows(b, &rows_x, &xn, &lrows)) < 0 ||
        (r = ops->matmul(b, &m->logits_view, &rows_x, &m->lm_head)) < 0)
        return r;
    *ret_logits = &m->logits_view;
    return 0;
}
