/* eng_cpu_ops.c: the CPU reference ops, the executable spec of eng_ops.h. Plain loops, f32 storage,
 * double accumulation for dot products and statistics, OpenMP over rows. Never "optimised": a
 * faster CPU path would be a separate backend. Every op checks dtypes and shapes and returns
 * -EINVAL on a mismatch. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "eng_cpu.h"

#define NT(b) (((eng_cpu_t *)(b)->ctx)->n_threads)
/* Threads only pay off above some work (multiply-adds); tiny decode-step ops run on one thread. */
#define S_PAR(work) ((int64_t)(work) >= (int64_t)1 << 15)

/* Element i of a float tensor of any float dtype. */
static inline float s_ld(const void *p, eng_dtype_t dt, size_t i) {
    switch (dt) {
    case ENG_DTYPE_F32: return ((const float *)p)[i];
    case ENG_DTYPE_BF16: return eng_bf16_to_f32(((const uint16_t *)p)[i]);
    case ENG_DTYPE_F16: return eng_f16_to_f32(((const uint16_t *)p)[i]);
    default: return NAN;
    }
}

static bool s_is_float(const eng_tensor_t *t) {
    return t && t->data &&
           (t->dtype == ENG_DTYPE_F32 || t->dtype == ENG_DTYPE_BF16 || t->dtype == ENG_DTYPE_F16);
}

static bool s_is_f32(const eng_tensor_t *t) {
    return t && t->data && t->dtype == ENG_DTYPE_F32;
}

static bool s_is_i32(const eng_tensor_t *t) {
    return t && t->data && t->dtype == ENG_DTYPE_I32;
}

/* dot(x (n) f32, w row (n) any float dtype), double accumulation */
static inline float s_dot(const float *x, const void *w, eng_dtype_t dt, size_t off, int64_t n) {
    double acc = 0.0;
    switch (dt) {
    case ENG_DTYPE_F32: {
        const float *wf = (const float *)w + off;
        for (int64_t k = 0; k < n; k++)
            acc += (double)x[k] * wf[k];
        break;
    }
    case ENG_DTYPE_BF16: {
        const uint16_t *wb = (const uint16_t *)w + off;
        for (int64_t k = 0; k < n; k++)
            acc += (double)x[k] * eng_bf16_to_f32(wb[k]);
        break;
    }
    default:
        for (int64_t k = 0; k < n; k++)
            acc += (double)x[k] * s_ld(w, dt, off + (size_t)k);
        break;
    }
    return (float)acc;
}

/* out (D) = x (D) * rsqrt(mean(x²) + eps) * w (D) */
static void s_rmsnorm_row(float *out, const float *x, const void *w, eng_dtype_t wdt, int64_t d,
                          float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++)
        ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
    for (int64_t i = 0; i < d; i++)
        out[i] = s_ld(w, wdt, (size_t)i) * (x[i] * inv);
}

int eng_cpu_embed(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *ids, const eng_tensor_t *w) {
    if (!s_is_f32(out) || !s_is_i32(ids) || !s_is_float(w) || w->n_dims != 2)
        return -EINVAL;
    int64_t t_n = eng_tensor_nelem(ids), d = w->shape[1], v = w->shape[0];
    if (eng_tensor_rows(out) != t_n || eng_tensor_cols(out) != d)
        return -EINVAL;
    const int32_t *id = ids->data;
    for (int64_t t = 0; t < t_n; t++)
        if (id[t] < 0 || id[t] >= v)
            return -EINVAL;
    float *o = out->data;
#pragma omp parallel for num_threads(NT(b)) if (S_PAR(t_n * d))
    for (int64_t t = 0; t < t_n; t++)
        for (int64_t i = 0; i < d; i++)
            o[t * d + i] = s_ld(w->data, w->dtype, (size_t)(id[t] * d + i));
    return 0;
}

int eng_cpu_rmsnorm(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *w,
                    const struct eng_rmsnorm_params *p) {
    if (!s_is_f32(out) || !s_is_f32(x) || !s_is_float(w) || !p)
        return -EINVAL;
    int64_t d = eng_tensor_cols(x), n = eng_tensor_rows(x);
    if (eng_tensor_nelem(w) != d || eng_tensor_nelem(out) != eng_tensor_nelem(x))
        return -EINVAL;
    float *o = out->data;
    const float *xi = x->data;
#pragma omp parallel for num_threads(NT(b)) if (S_PAR(n * d))
    for (int64_t r = 0; r < n; r++)
        s_rmsnorm_row(o + r * d, xi + r * d, w->data, w->dtype, d, p->eps);
    return 0;
}

int eng_cpu_add_rmsnorm(eng_backend_t *b, eng_tensor_t *out, eng_tensor_t *residual,
                        const eng_tensor_t *x, const eng_tensor_t *w,
                        const struct eng_rmsnorm_params *p) {
    if (!s_is_f32(out) || !s_is_f32(residual) || !s_is_f32(x) || !s_is_float(w) || !p)
        return -EINVAL;
    int64_t d = eng_tensor_cols(residual), n = eng_tensor_rows(residual);
    if (eng_tensor_nelem(w) != d || eng_tensor_nelem(out) != n * d || eng_tensor_nelem(x) != n * d)
        return -EINVAL;
    float *o = out->data, *h = residual->data;
    const float *xi = x->data;
#pragma omp parallel for num_threads(NT(b)) if (S_PAR(n * d))
    for (int64_t r = 0; r < n; r++) {
        for (int64_t i = 0; i < d; i++)
            h[r * d + i] += xi[r * d + i];
        s_rmsnorm_row(o + r * d, h + r * d, w->data, w->dtype, d, p->eps);
    }
    return 0;
}

int eng_cpu_matmul(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *w) {
    if (!s_is_f32(out) || !s_is_f32(x) || !s_is_float(w) || w->n_dims != 2)
        return -EINVAL;
    int64_t n_out = w->shape[0], k = w->shape[1], t_n = eng_tensor_rows(x);
    if (eng_tensor_cols(x) != k || eng_tensor_rows(out) != t_n || eng_tensor_cols(out) != n_out)
        return -EINVAL;
    float *o = out->data;
    const float *xi = x->data;
    /* parallel over output features: each weight row is read once for all tokens */
#pragma omp parallel for num_threads(NT(b)) if (S_PAR(n_out * k * t_n))
    for (int64_t n = 0; n < n_out; n++)
        for (int64_t t = 0; t < t_n; t++)
            o[t * n_out + n] = s_dot(xi + t * k, w->data, w->dtype, (size_t)(n * k), k);
    return 0;
}

/* Rotates one head vector v (hd) in place by the angles of token t. */
static void s_rope_head(float *v, int32_t hd, const float *inv_freq, const int32_t *pos, int64_t t,
                        int64_t t_n, const int32_t *sec) {
    int32_t half = hd / 2;
    for (int32_t j = 0; j < half; j++) {
        int row = 0; /* T */
        if (j % 3 == 1 && j < 3 * sec[1])
            row = 1; /* H */
        else if (j % 3 == 2 && j < 3 * sec[2])
            row = 2; /* W */
        float angle = (float)pos[row * t_n + t] * inv_freq[j]; /* fp32, as transformers */
        float c = cosf(angle), s = sinf(angle);
        float x1 = v[j], x2 = v[j + half];
        v[j] = x1 * c - x2 * s;
        v[j + half] = x2 * c + x1 * s;
    }
}

int eng_cpu_qk_norm_rope(eng_backend_t *b, eng_tensor_t *q, eng_tensor_t *k,
                         const eng_tensor_t *q_norm, const eng_tensor_t *k_norm,
                         const eng_tensor_t *positions, const struct eng_rope_params *p) {
    if (!s_is_f32(q) || !s_is_f32(k) || !s_is_float(q_norm) || !s_is_float(k_norm) ||
        !s_is_i32(positions) || !p)
        return -EINVAL;
    int32_t hd = p->head_dim, hq = p->n_heads, hk = p->n_kv_heads;
    int64_t t_n = eng_tensor_rows(q);
    if (hd <= 0 || hd % 2 || hd / 2 > 1024 || eng_tensor_cols(q) != (int64_t)hq * hd ||
        eng_tensor_cols(k) != (int64_t)hk * hd || eng_tensor_rows(k) != t_n ||
        eng_tensor_nelem(q_norm) != hd || eng_tensor_nelem(k_norm) != hd ||
        eng_tensor_nelem(positions) != 3 * t_n)
        return -EINVAL;
    int32_t sec[3] = {p->mrope_section[0], p->mrope_section[1], p->mrope_section[2]};
    float inv_freq[1024];
    for (int32_t j = 0; j < hd / 2; j++) /* torch: 1 / base ** (arange(0, hd, 2).float() / hd) */
        inv_freq[j] = 1.0f / powf(p->theta, (float)(2 * j) / (float)hd);
    const int32_t *pos = positions->data;
    float *qd = q->data, *kd = k->data;
#pragma omp parallel for num_threads(NT(b)) if (S_PAR(t_n * (hq + hk) * hd))
    for (int64_t t = 0; t < t_n; t++) {
        float tmp[2048];
        for (int32_t h = 0; h < hq + hk; h++) {
            bool is_q = h < hq;
            float *v = is_q ? qd + (t * hq + h) * hd : kd + (t * hk + (h - hq)) * hd;
            const eng_tensor_t *w = is_q ? q_norm : k_norm;
            s_rmsnorm_row(tmp, v, w->data, w->dtype, hd, p->eps);
            memcpy(v, tmp, (size_t)hd * sizeof(float));
            s_rope_head(v, hd, inv_freq, pos, t, t_n, sec);
        }
    }
    return 0;
}

int eng_cpu_kv_write(eng_backend_t *b, eng_tensor_t *k_pool, eng_tensor_t *v_pool,
                     const eng_tensor_t *k, const eng_tensor_t *v, const eng_tensor_t *slots) {
    (void)b;
    if (!s_is_f32(k_pool) || !s_is_f32(v_pool) || !s_is_f32(k) || !s_is_f32(v) || !s_is_i32(slots))
        return -EINVAL;
    int64_t width = eng_tensor_cols(k), t_n = eng_tensor_rows(k), n_slots = eng_tensor_rows(k_pool);
    if (eng_tensor_cols(k_pool) != width || eng_tensor_cols(v_pool) != width ||
        eng_tensor_rows(v_pool) != n_slots || eng_tensor_nelem(v) != t_n * width ||
        eng_tensor_nelem(slots) != t_n)
        return -EINVAL;
    const int32_t *sl = slots->data;
    for (int64_t t = 0; t < t_n; t++)
        if (sl[t] < 0 || sl[t] >= n_slots)
            return -EINVAL;
    for (int64_t t = 0; t < t_n; t++) {
        memcpy((float *)k_pool->data + sl[t] * width, (const float *)k->data + t * width,
               (size_t)width * sizeof(float));
        memcpy((float *)v_pool->data + sl[t] * width, (const float *)v->data + t * width,
               (size_t)width * sizeof(float));
    }
    return 0;
}

int eng_cpu_attention(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *q,
                      const eng_tensor_t *k_pool, const eng_tensor_t *v_pool,
                      const struct eng_attn_meta *meta, const struct eng_attn_params *p) {
    if (!s_is_f32(out) || !s_is_f32(q) || !s_is_f32(k_pool) || !s_is_f32(v_pool) || !meta || !p ||
        !s_is_i32(meta->tok_seq) || !s_is_i32(meta->tok_pos) || !s_is_i32(meta->block_tables))
        return -EINVAL;
    int32_t hq = p->n_heads, hk = p->n_kv_heads, hd = p->head_dim, bs = meta->block_size;
    int64_t t_n = eng_tensor_rows(q), n_slots = eng_tensor_rows(k_pool);
    if (hq <= 0 || hk <= 0 || hq % hk || hd <= 0 || bs <= 0 || meta->n_seqs <= 0 ||
        meta->max_blocks <= 0 || eng_tensor_cols(q) != (int64_t)hq * hd ||
        eng_tensor_nelem(out) != eng_tensor_nelem(q) || eng_tensor_cols(k_pool) != (int64_t)hk * hd ||
        eng_tensor_nelem(meta->tok_seq) < t_n || eng_tensor_nelem(meta->tok_pos) < t_n ||
        eng_tensor_nelem(meta->block_tables) < (int64_t)meta->n_seqs * meta->max_blocks)
        return -EINVAL;
    const int32_t *seq = meta->tok_seq->data, *tpos = meta->tok_pos->data,
                  *bt = meta->block_tables->data;
    int64_t max_len = 0;
    for (int64_t t = 0; t < t_n; t++) {
        if (seq[t] < 0 || seq[t] >= meta->n_seqs || tpos[t] < 0 ||
            tpos[t] / bs >= meta->max_blocks)
            return -EINVAL;
        if (tpos[t] + 1 > max_len)
            max_len = tpos[t] + 1;
        for (int32_t blk = 0; blk <= tpos[t] / bs; blk++) {
            int32_t id = bt[seq[t] * meta->max_blocks + blk];
            if (id < 0 || (int64_t)id * bs + bs > n_slots)
                return -EINVAL;
        }
    }
    int nt = NT(b);
    float *scratch;
    int r = eng_cpu_scratch(b->ctx, (size_t)nt * (size_t)max_len, &scratch);
    if (r < 0)
        return r;
    int32_t group = hq / hk;
    int64_t kw = (int64_t)hk * hd;
    const float *qd = q->data, *kd = k_pool->data, *vd = v_pool->data;
    float *o = out->data;
#pragma omp parallel for collapse(2) num_threads(nt) if (S_PAR(t_n * hq * max_len * hd))
    for (int64_t t = 0; t < t_n; t++)
        for (int32_t h = 0; h < hq; h++) {
            float *sc = scratch + (size_t)omp_get_thread_num() * (size_t)max_len;
            const float *qv = qd + (t * hq + h) * hd;
            int32_t kvh = h / group, s = seq[t];
            int64_t len = tpos[t] + 1;
            float mx = -INFINITY;
            for (int64_t pp = 0; pp < len; pp++) {
                int64_t slot = (int64_t)bt[s * meta->max_blocks + pp / bs] * bs + pp % bs;
                const float *kv = kd + slot * kw + kvh * hd;
                double acc = 0.0;
                for (int32_t i = 0; i < hd; i++)
                    acc += (double)qv[i] * kv[i];
                sc[pp] = (float)acc * p->scale;
                if (sc[pp] > mx)
                    mx = sc[pp];
            }
            double sum = 0.0;
            for (int64_t pp = 0; pp < len; pp++) {
                sc[pp] = expf(sc[pp] - mx);
                sum += sc[pp];
            }
            float *ov = o + (t * hq + h) * hd;
            for (int32_t i = 0; i < hd; i++) {
                double acc = 0.0;
                for (int64_t pp = 0; pp < len; pp++) {
                    int64_t slot = (int64_t)bt[s * meta->max_blocks + pp / bs] * bs + pp % bs;
                    acc += (double)sc[pp] * vd[slot * kw + kvh * hd + i];
                }
                ov[i] = (float)(acc / sum);
            }
        }
    return 0;
}

int eng_cpu_moe(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                const struct eng_moe_weights *w, const struct eng_moe_params *p) {
    if (!s_is_f32(out) || !s_is_f32(x) || !w || !p || !s_is_float(w->router) ||
        !s_is_float(w->gate) || !s_is_float(w->up) || !s_is_float(w->down))
        return -EINVAL;
    int64_t d = eng_tensor_cols(x), t_n = eng_tensor_rows(x), e_n = p->n_experts;
    int64_t in = w->gate->n_dims == 3 ? w->gate->shape[1] : 0;
    int32_t top_k = p->top_k;
    if (e_n <= 0 || e_n > 1024 || top_k <= 0 || top_k > e_n || top_k > 64 || eng_tensor_nelem(out) != t_n * d ||
        w->router->shape[0] != e_n || eng_tensor_cols(w->router) != d || w->gate->n_dims != 3 ||
        w->gate->shape[0] != e_n || w->gate->shape[2] != d || w->up->n_dims != 3 ||
        w->up->shape[0] != e_n || w->up->shape[1] != in || w->up->shape[2] != d ||
        w->down->n_dims != 3 || w->down->shape[0] != e_n || w->down->shape[1] != d ||
        w->down->shape[2] != in)
        return -EINVAL;
    int nt = NT(b);
    size_t per = (size_t)(e_n + 2 * in + d);
    float *scratch;
    int r = eng_cpu_scratch(b->ctx, (size_t)nt * per, &scratch);
    if (r < 0)
        return r;
    const float *xd = x->data;
    float *o = out->data;
#pragma omp parallel for num_threads(nt) if (S_PAR(t_n * e_n * d))
    for (int64_t t = 0; t < t_n; t++) {
        float *probs = scratch + (size_t)omp_get_thread_num() * per;
        float *g = probs + e_n, *u = g + in, *y = u + in;
        const float *xv = xd + t * d;
        /* router: logits, softmax in f32 */
        float mx = -INFINITY;
        for (int64_t e = 0; e < e_n; e++) {
            probs[e] = s_dot(xv, w->router->data, w->router->dtype, (size_t)(e * d), d);
            if (probs[e] > mx)
                mx = probs[e];
        }
        double sum = 0.0;
        for (int64_t e = 0; e < e_n; e++) {
            probs[e] = expf(probs[e] - mx);
            sum += probs[e];
        }
        for (int64_t e = 0; e < e_n; e++)
            probs[e] = (float)(probs[e] / sum);
        /* top-k, descending, ties to the lowest expert index */
        int32_t sel[64];
        float wsel[64];
        bool used[1024] = {false};
        double wsum = 0.0;
        for (int32_t kk = 0; kk < top_k; kk++) {
            int32_t best = -1;
            for (int64_t e = 0; e < e_n; e++)
                if (!used[e] && (best < 0 || probs[e] > probs[best]))
                    best = (int32_t)e;
            used[best] = true;
            sel[kk] = best;
            wsel[kk] = probs[best];
            wsum += probs[best];
        }
        if (p->norm_topk_prob)
            for (int32_t kk = 0; kk < top_k; kk++)
                wsel[kk] = (float)(wsel[kk] / wsum);
        float *ov = o + t * d;
        for (int64_t i = 0; i < d; i++)
            ov[i] = 0.0f;
        /* experts in ascending id order (the transformers eager loop) */
        for (int64_t e = 0; e < e_n; e++) {
            if (!used[e])
                continue;
            float we = 0.0f;
            for (int32_t kk = 0; kk < top_k; kk++)
                if (sel[kk] == e)
                    we = wsel[kk];
            for (int64_t i = 0; i < in; i++) {
                g[i] = s_dot(xv, w->gate->data, w->gate->dtype, (size_t)((e * in + i) * d), d);
                u[i] = s_dot(xv, w->up->data, w->up->dtype, (size_t)((e * in + i) * d), d);
                g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
            }
            for (int64_t i = 0; i < d; i++) {
                y[i] = s_dot(g, w->down->data, w->down->dtype, (size_t)((e * d + i) * in), in);
                ov[i] += y[i] * we;
            }
        }
    }
    return 0;
}

int eng_cpu_silu_mul(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *gate,
                     const eng_tensor_t *up) {
    if (!s_is_f32(out) || !s_is_f32(gate) || !s_is_f32(up))
        return -EINVAL;
    int64_t n = eng_tensor_nelem(gate);
    if (eng_tensor_nelem(up) != n || eng_tensor_nelem(out) != n)
        return -EINVAL;
    float *o = out->data;
    const float *g = gate->data, *u = up->data;
#pragma omp parallel for num_threads(NT(b)) if (S_PAR(n))
    for (int64_t i = 0; i < n; i++)
        o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    return 0;
}

int eng_cpu_add(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x, const eng_tensor_t *y) {
    if (!s_is_f32(out) || !s_is_f32(x) || !s_is_f32(y))
        return -EINVAL;
    int64_t n = eng_tensor_nelem(x);
    if (eng_tensor_nelem(y) != n || eng_tensor_nelem(out) != n)
        return -EINVAL;
    float *o = out->data;
    const float *a = x->data, *c = y->data;
#pragma omp parallel for num_threads(NT(b)) if (S_PAR(n))
    for (int64_t i = 0; i < n; i++)
        o[i] = a[i] + c[i];
    return 0;
}

int eng_cpu_get_rows(eng_backend_t *b, eng_tensor_t *out, const eng_tensor_t *x,
                     const eng_tensor_t *rows) {
    (void)b;
    if (!s_is_f32(out) || !s_is_f32(x) || !s_is_i32(rows))
        return -EINVAL;
    int64_t d = eng_tensor_cols(x), n = eng_tensor_rows(x), r_n = eng_tensor_nelem(rows);
    if (eng_tensor_cols(out) != d || eng_tensor_rows(out) != r_n)
        return -EINVAL;
    const int32_t *ri = rows->data;
    for (int64_t r = 0; r < r_n; r++) {
        if (ri[r] < 0 || ri[r] >= n)
            return -EINVAL;
        memcpy((float *)out->data + r * d, (const float *)x->data + ri[r] * d,
               (size_t)d * sizeof(float));
    }
    return 0;
}
