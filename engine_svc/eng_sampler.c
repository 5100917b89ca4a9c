/* eng_sampler.c: CPU sampling (penalties, suppression, greedy/temperature/top-k/top-p/min-p, seeded
 * draw, logprobs), request validation and generation_config.json defaults. See eng_sampler.h. */
#include "eng_sampler.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_BINS 2048  /* linear bins of (max - logit) */
#define S_LBIN 64.0f /* bins per unit of scaled logit; the last bin takes the rest */

struct eng_sampler {
    uint32_t n_vocab;     /* logits row length */
    uint8_t *mark;        /* (n_vocab) seen flags, all 0 between calls */
    uint32_t *count;      /* (n_vocab) output counts, all 0 between calls */
    int32_t *idx;         /* (n_vocab) candidate ids */
    int32_t *tmp;         /* (n_vocab) radix sort buffer */
    float *raw;           /* (n_vocab) copy of the raw logits for logprobs */
    float *prob;          /* (n_vocab) candidate probabilities */
    uint32_t *hcnt;       /* (S_BINS) elements per linear bin below the max */
    double *hmass;        /* (S_BINS) probability mass per linear bin */
};

int eng_sampler_new(uint32_t n_vocab, eng_sampler_t **ret) {
    if (!ret || n_vocab == 0)
        return -EINVAL;
    eng_sampler_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->n_vocab = n_vocab;
    s->mark = calloc(n_vocab, sizeof *s->mark);
    s->count = calloc(n_vocab, sizeof *s->count);
    s->idx = malloc(n_vocab * sizeof *s->idx);
    s->tmp = malloc(n_vocab * sizeof *s->tmp);
    s->raw = malloc(n_vocab * sizeof *s->raw);
    s->prob = malloc(n_vocab * sizeof *s->prob);
    s->hcnt = malloc(S_BINS * sizeof *s->hcnt);
    s->hmass = malloc(S_BINS * sizeof *s->hmass);
    if (!s->mark || !s->count || !s->idx || !s->tmp || !s->raw || !s->prob || !s->hcnt ||
        !s->hmass) {
        eng_sampler_free(s);
        return -ENOMEM;
    }
    *ret = s;
    return 0;
}

eng_sampler_t *eng_sampler_free(eng_sampler_t *s) {
    if (!s)
        return NULL;
    free(s->mark);
    free(s->count);
    free(s->idx);
    free(s->tmp);
    free(s->raw);
    free(s->prob);
    free(s->hcnt);
    free(s->hmass);
    free(s);
    return NULL;
}

/* ---- defaults ---- */

static void s_defaults_init(eng_sampler_defaults_t *d) {
    memset(d, 0, sizeof *d);
    d->do_sample = false;
    d->temperature = 1.0f;
    d->top_p = 1.0f;
    d->top_k = 0;
    d->min_p = 0.0f;
    d->repetition_penalty = 1.0f;
}

int eng_sampler_defaults_load(const char *model_dir, eng_sampler_defaults_t *ret, char *err,
                              size_t errlen) {
    eng_sampler_defaults_t d;
    s_defaults_init(&d);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/generation_config.json", model_dir) >= (int)sizeof path) {
        snprintf(err, errlen, "model directory path too long");
        return -ENAMETOOLONG;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        *ret = d; /* no generation_config.json: transformers defaults */
        return 0;
    }
    json_error_t jerr;
    json_t *root = json_loadf(f, 0, &jerr);
    fclose(f);
    if (!root || !json_is_object(root)) {
        snprintf(err, errlen, "%s: line %d: %s", path, jerr.line, root ? "not an object" : jerr.text);
        json_decref(root);
        return -EINVAL;
    }
    json_t *v;
    if ((v = json_object_get(root, "do_sample")) && json_is_boolean(v))
        d.do_sample = json_is_true(v);
    if ((v = json_object_get(root, "temperature")) && json_is_number(v))
        d.temperature = (float)json_number_value(v);
    if ((v = json_object_get(root, "top_p")) && json_is_number(v))
        d.top_p = (float)json_number_value(v);
    if ((v = json_object_get(root, "top_k")) && json_is_integer(v))
        d.top_k = (int32_t)json_integer_value(v);
    if ((v = json_object_get(root, "min_p")) && json_is_number(v))
        d.min_p = (float)json_number_value(v);
    if ((v = json_object_get(root, "repetition_penalty")) && json_is_number(v))
        d.repetition_penalty = (float)json_number_value(v);
    if ((v = json_object_get(root, "max_new_tokens")) && json_is_integer(v) && json_integer_value(v) > 0)
        d.max_new_tokens = (uint32_t)json_integer_value(v);
    if ((v = json_object_get(root, "eos_token_id"))) {
        if (json_is_integer(v)) {
            d.eos_ids[d.n_eos++] = (int32_t)json_integer_value(v);
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                if (json_is_integer(e) && d.n_eos < ENG_SAMPLER_MAX_EOS)
                    d.eos_ids[d.n_eos++] = (int32_t)json_integer_value(e);
            }
        }
    }
    json_decref(root);
    if (!(d.temperature >= 0) || !(d.top_p > 0 && d.top_p <= 1) || d.top_k < -1 ||
        !(d.min_p >= 0 && d.min_p <= 1) || !(d.repetition_penalty > 0)) {
        snprintf(err, errlen, "%s: sampling defaults out of range", path);
        return -EINVAL;
    }
    *ret = d;
    return 0;
}

/* ---- validation ---- */

#define S_BAD(...)                                                                                 \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -EINVAL;                                                                            \
    } while (0)

int eng_sampler_params_from_proto(const Omnipipe__SamplingParams *sp, const eng_sampler_defaults_t *d,
                                  uint32_t n_prompt, uint32_t max_model_len,
                                  eng_sampler_params_t *ret, char *err, size_t errlen) {
    static const Omnipipe__SamplingParams s_empty = OMNIPIPE__SAMPLING_PARAMS__INIT;
    if (!sp)
        sp = &s_empty;
    eng_sampler_params_t p = {0};
    bool sample = d->do_sample;
    p.temperature = d->do_sample ? d->temperature : 0.0f;
    p.top_k = d->top_k;
    p.top_p = d->top_p;
    p.min_p = d->min_p;
    p.repetition_penalty = d->repetition_penalty;

    if (sp->has_temperature) {
        if (!(sp->temperature >= 0) || isinf(sp->temperature))
            S_BAD("sampling.temperature: must be >= 0, got %g", (double)sp->temperature);
        p.temperature = sp->temperature;
        sample = sp->temperature > 0;
    }
    if (sp->has_top_p) {
        if (!(sp->top_p > 0 && sp->top_p <= 1))
            S_BAD("sampling.top_p: must be in (0, 1], got %g", (double)sp->top_p);
        p.top_p = sp->top_p;
    }
    if (sp->has_top_k) {
        if (sp->top_k < -1)
            S_BAD("sampling.top_k: must be -1, 0 (off) or positive, got %d", sp->top_k);
        p.top_k = sp->top_k;
    }
    if (sp->has_min_p) {
        if (!(sp->min_p >= 0 && sp->min_p <= 1))
            S_BAD("sampling.min_p: must be in [0, 1], got %g", (double)sp->min_p);
        p.min_p = sp->min_p;
    }
    if (sp->has_repetition_penalty) {
        if (!(sp->repetition_penalty > 0) || isinf(sp->repetition_penalty))
            S_BAD("sampling.repetition_penalty: must be > 0, got %g", (double)sp->repetition_penalty);
        p.repetition_penalty = sp->repetition_penalty;
    }
    if (sp->has_presence_penalty) {
        if (!(sp->presence_penalty >= -2 && sp->presence_penalty <= 2))
            S_BAD("sampling.presence_penalty: must be in [-2, 2], got %g", (double)sp->presence_penalty);
        p.presence_penalty = sp->presence_penalty;
    }
    if (sp->has_frequency_penalty) {
        if (!(sp->frequency_penalty >= -2 && sp->frequency_penalty <= 2))
            S_BAD("sampling.frequency_penalty: must be in [-2, 2], got %g",
                  (double)sp->frequency_penalty);
        p.frequency_penalty = sp->frequency_penalty;
    }
    if (sp->has_logprobs) {
        if (sp->logprobs > ENG_SAMPLER_MAX_LOGPROBS)
            S_BAD("sampling.logprobs: must be <= %d, got %u", ENG_SAMPLER_MAX_LOGPROBS, sp->logprobs);
        p.n_logprobs = sp->logprobs;
    }
    if (sp->has_greedy && sp->greedy)
        sample = false;
    if (!sample)
        p.temperature = 0.0f;
    if (sp->has_seed)
        p.seed = sp->seed;
    p.ignore_eos = sp->has_ignore_eos && sp->ignore_eos;

    if (max_model_len > 0 && n_prompt >= max_model_len) {
        snprintf(err, errlen, "prompt: %u tokens leave no room in the model length %u", n_prompt,
                 max_model_len);
        return -E2BIG;
    }
    uint32_t room = max_model_len > 0 ? max_model_len - n_prompt : UINT32_MAX;
    if (sp->has_max_tokens) {
        if (sp->max_tokens == 0)
            S_BAD("sampling.max_tokens: must be >= 1, got 0");
        if (max_model_len > 0 && sp->max_tokens > max_model_len)
            S_BAD("sampling.max_tokens: must be <= the model length %u, got %u", max_model_len,
                  sp->max_tokens);
        if (sp->max_tokens > room) {
            snprintf(err, errlen,
                     "sampling.max_tokens: prompt (%u tokens) + max_tokens (%u) exceeds the model "
                     "length %u",
                     n_prompt, sp->max_tokens, max_model_len);
            return -E2BIG;
        }
        p.max_tokens = sp->max_tokens;
    } else {
        p.max_tokens = d->max_new_tokens > 0 && d->max_new_tokens < room ? d->max_new_tokens : room;
        if (p.max_tokens == UINT32_MAX)
            p.max_tokens = 16; /* no model length known: a bounded default */
    }
    if (sp->has_min_tokens) {
        if (sp->min_tokens > p.max_tokens)
            S_BAD("sampling.min_tokens: must be <= max_tokens (%u), got %u", p.max_tokens,
                  sp->min_tokens);
        p.min_tokens = sp->min_tokens;
    }
    *ret = p;
    return 0;
}

/* ---- RNG ---- */

static uint64_t s_mix(uint64_t x) {
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

double eng_sampler_uniform(uint64_t seed, uint64_t step) {
    uint64_t x = s_mix(s_mix(seed) ^ s_mix(step ^ UINT64_C(0x632be59bd9b4e019)));
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- sampling ---- */

static int s_cmp_desc(const void *a, const void *b, void *ctx) {
    const float *l = ctx;
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    if (l[ia] > l[ib])
        return -1;
    if (l[ia] < l[ib])
        return 1;
    return ia < ib ? -1 : ia > ib;
}

/* the strict order of candidates: higher logit first, then lower id */
static bool s_before(const float *l, int32_t a, int32_t b) {
    return l[a] > l[b] || (l[a] == l[b] && a < b);
}

static void s_sift(const float *l, int32_t *h, uint32_t k, uint32_t i) {
    for (;;) { /* heap with the worst candidate (last in order) on top */
        uint32_t c = 2 * i + 1, w = i;
        if (c < k && s_before(l, h[w], h[c]))
            w = c;
        if (c + 1 < k && s_before(l, h[w], h[c + 1]))
            w = c + 1;
        if (w == i)
            return;
        int32_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Moves the k best of idx[0..n) into idx[0..k) (any order). */
static void s_select(const float *l, int32_t *idx, uint32_t n, uint32_t k) {
    for (uint32_t i = k / 2; i-- > 0;)
        s_sift(l, idx, k, i);
    for (uint32_t i = k; i < n; i++) {
        if (s_before(l, idx[i], idx[0])) {
            idx[0] = idx[i];
            s_sift(l, idx, k, 0);
        }
    }
}

static void s_suppress(float *logits, uint32_t n_vocab, const int32_t *ids, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] >= 0 && (uint32_t)ids[i] < n_vocab)
            logits[ids[i]] = -INFINITY;
}

/* a key whose ascending order is descending logit (-0 folded into +0, so they tie as in s_before) */
static uint32_t s_key_desc(float f) {
    if (f == 0.0f)
        f = 0.0f;
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return (b & 0x80000000u) ? b : ~(b | 0x80000000u);
}

/* Sorts idx[0..n) (ascending ids on entry) best first: LSD radix over s_key_desc, 3 x 11 bits;
 * stable, so equal logits keep the lower id first -- s_cmp_desc's order. */
static void s_sort_desc(const float *l, int32_t *idx, int32_t *tmp, uint32_t n) {
    static const int sh[3] = {0, 11, 22};
    uint32_t cnt[2048];
    int32_t *a = idx, *b = tmp;
    for (int r = 0; r < 3; r++) {
        memset(cnt, 0, sizeof cnt);
        for (uint32_t i = 0; i < n; i++)
            cnt[(s_key_desc(l[a[i]]) >> sh[r]) & 2047u]++;
        uint32_t sum = 0;
        for (int d = 0; d < 2048; d++) {
            uint32_t c = cnt[d];
            cnt[d] = sum;
            sum += c;
        }
        for (uint32_t i = 0; i < n; i++)
            b[cnt[(s_key_desc(l[a[i]]) >> sh[r]) & 2047u]++] = a[i];
        int32_t *t = a;
        a = b;
        b = t;
    }
    if (a != idx)
        memcpy(idx, a, n * sizeof *idx);
}

/* linear bin of l below the maximum mx: non-decreasing along the candidate order */
static int s_lbin(float l, float mx) {
    float x = (mx - l) * S_LBIN;
    return x < (float)(S_BINS - 1) ? (int)x : S_BINS - 1;
}

/* the first bin where the running count (mass when w) through it exceeds G; S_BINS - 1 if none */
static int s_cut(const uint32_t *cnt, const double *w, double G) {
    double c = 0;
    for (int d = 0; d < S_BINS; d++) {
        c += w ? w[d] : (double)cnt[d];
        if (c > G)
            return d;
    }
    return S_BINS - 1;
}

/* The draw over temperature-scaled logits: candidates sorted best first (higher logit, then lower
 * id), truncated by top-k, top-p and min-p, then inverse CDF at u. Only a sorted prefix of K
 * candidates is materialised: a histogram of (max - logit) in linear bins (one pass) bounds where
 * the truncation (or, without one, the draw) ends, the elements of the bins up to there (a prefix
 * of the order) are gathered and only they are selected and sorted. Should the cut or the draw
 * still fall beyond K (rounding at a bin edge), K grows (x8) over the whole vocabulary. The
 * result does not depend on K: every sum runs in the same order as a full sort would. */
static int32_t s_draw(eng_sampler_t *s, const eng_sampler_params_t *p, const float *l, double u) {
    const uint32_t V = s->n_vocab;
    const uint32_t limit = p->top_k > 0 && (uint32_t)p->top_k < V ? (uint32_t)p->top_k : V;
    const bool cutting = p->top_p < 1.0f || p->min_p > 0.0f;
    float mx = -INFINITY;
    for (uint32_t v = 0; v < V; v++)
        mx = l[v] > mx ? l[v] : mx;
    double total = 0; /* mass of the top-k set (all of V without top-k) */
    memset(s->hcnt, 0, S_BINS * sizeof *s->hcnt);
    memset(s->hmass, 0, S_BINS * sizeof *s->hmass);
    if (limit == V) {
        for (uint32_t v = 0; v < V; v++) {
            float e = expf(l[v] - mx);
            int d = s_lbin(l[v], mx);
            total += e;
            s->hcnt[d]++;
            s->hmass[d] += e;
        }
    } else {
        for (uint32_t v = 0; v < V; v++)
            s->hcnt[s_lbin(l[v], mx)]++;
    }
    /* the last bin the kept set (or the draw) can reach; one bin of slack for rounding */
    int D = S_BINS - 1;
    if (limit < V)
        D = s_cut(s->hcnt, NULL, (double)limit);
    else if (p->top_p < 1.0f)
        D = s_cut(s->hcnt, s->hmass, (double)p->top_p * total) + 1;
    if (p->min_p > 0.0f && limit == V) { /* (top-k needs its whole set for its mass) */
        float x = -logf(p->min_p) * S_LBIN;
        int dm = x < (float)(S_BINS - 2) ? (int)x + 1 : S_BINS - 1;
        D = dm < D ? dm : D;
    }
    if (limit == V && !cutting)
        D = s_cut(s->hcnt, s->hmass, u * total) + 1;
    D = D < S_BINS - 1 ? D : S_BINS - 1;
    uint32_t n_pre = 0; /* elements in bins <= D */
    for (int d = 0; d <= D; d++)
        n_pre += s->hcnt[d];
    uint32_t K = limit < V ? limit : n_pre;
    bool first = true;
    for (;;) {
        uint32_t n = V;
        if (first && n_pre < V) { /* gather the prefix bins */
            n = 0;
            for (uint32_t v = 0; v < V; v++)
                if (s_lbin(l[v], mx) <= D)
                    s->idx[n++] = (int32_t)v;
        } else {
            for (uint32_t v = 0; v < V; v++)
                s->idx[v] = (int32_t)v;
            if (!first && K < V && K >= V / 8)
                K = limit == V ? V : K; /* a selection this large costs more than a sort */
        }
        first = false;
        K = K < n ? K : n;
        if (K == 0)
            K = 1;
        if (K < n) {
            s_select(l, s->idx, n, K);
            qsort_r(s->idx, K, sizeof *s->idx, s_cmp_desc, (void *)l);
        } else if (K >= 1024) { /* idx in ascending id order: a stable radix sort */
            s_sort_desc(l, s->idx, s->tmp, K);
        } else {
            qsort_r(s->idx, K, sizeof *s->idx, s_cmp_desc, (void *)l);
        }
        double in_k = 0;
        for (uint32_t i = 0; i < K; i++) {
            s->prob[i] = expf(l[s->idx[i]] - mx);
            in_k += s->prob[i];
        }
        if (limit < V)
            total = in_k; /* K == limit */
        uint32_t keep = K;
        bool cut = K == limit; /* the kept set is known to end within K */
        if (p->top_p < 1.0f) {
            double before = 0, lim = (double)p->top_p * total;
            uint32_t i = 0;
            while (i < K && before < lim)
                before += s->prob[i++];
            if (before >= lim) {
                keep = i > 0 ? i : 1;
                cut = true;
            }
        }
        if (p->min_p > 0.0f) {
            const float thr = p->min_p * s->prob[0]; /* relative to p_max */
            uint32_t i = 1;
            while (i < keep && s->prob[i] >= thr)
                i++;
            if (i < keep) {
                keep = i;
                cut = true;
            }
        }
        if (cutting && !cut) { /* the cut lies beyond K */
            K = K * 8 < limit ? K * 8 : limit;
            continue;
        }
        double mass = total;
        if (cut) {
            mass = 0;
            for (uint32_t i = 0; i < keep; i++)
                mass += s->prob[i];
        }
        const double target = u * mass;
        double c = 0;
        for (uint32_t i = 0; i < keep; i++) {
            c += s->prob[i];
            if (target < c)
                return s->idx[i];
        }
        if (!cut) { /* no truncation and the draw lies beyond K */
            K = K * 8 < limit ? K * 8 : limit;
            continue;
        }
        return s->idx[keep - 1]; /* rounding at the very end of the CDF */
    }
}

/* ---- logit edits (for samplers on a device) ---- */

/* the edit of token t, appended on first use (s->mark set, s->idx[t] = its slot) */
static eng_sampler_edit_t *s_edit(eng_sampler_t *s, eng_sampler_edit_t *out, uint32_t *n, int32_t t) {
    if (!s->mark[t]) {
        s->mark[t] = 1;
        s->idx[t] = (int32_t)*n;
        out[*n] = (eng_sampler_edit_t){.id = t, .rp = 1.0f, .sub = 0.0f, .suppress = 0};
        (*n)++;
    }
    return &out[s->idx[t]];
}

int eng_sampler_edits(eng_sampler_t *s, const eng_sampler_params_t *p, const eng_sampler_seq_t *seq,
                      eng_sampler_edit_t *out, uint32_t cap) {
    if (!s || !p || !seq || (!out && cap > 0))
        return -EINVAL;
    const uint32_t V = s->n_vocab;
    const bool rep = p->repetition_penalty != 1.0f;
    const bool pf = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    const bool sup_eos = p->ignore_eos || seq->n_output < p->min_tokens;
    const bool sup_stop = seq->n_output < p->min_tokens;
    uint64_t need = (rep ? (uint64_t)seq->n_prompt + seq->n_output : pf ? seq->n_output : 0) +
                    (sup_eos ? seq->n_eos : 0) + (sup_stop ? seq->n_stop : 0);
    if (need > cap) { /* an upper bound; count exactly before refusing */
        uint32_t u = 0;
        for (int pass = 0; pass < 4; pass++) {
            const int32_t *ids = pass == 0 ? seq->prompt : pass == 1 ? seq->output
                                 : pass == 2 ? seq->eos_ids : seq->stop_ids;
            uint32_t n = pass == 0 ? (rep ? seq->n_prompt : 0)
                         : pass == 1 ? (rep || pf ? seq->n_output : 0)
                         : pass == 2 ? (sup_eos ? seq->n_eos : 0) : (sup_stop ? seq->n_stop : 0);
            for (uint32_t i = 0; i < n; i++)
                if (ids[i] >= 0 && (uint32_t)ids[i] < V && !s->mark[ids[i]]) {
                    s->mark[ids[i]] = 1;
                    u++;
                }
        }
        for (int pass = 0; pass < 4; pass++) {
            const int32_t *ids = pass == 0 ? seq->prompt : pass == 1 ? seq->output
                                 : pass == 2 ? seq->eos_ids : seq->stop_ids;
            uint32_t n = pass == 0 ? seq->n_prompt : pass == 1 ? seq->n_output
                         : pass == 2 ? seq->n_eos : seq->n_stop;
            for (uint32_t i = 0; i < n; i++)
                if (ids[i] >= 0 && (uint32_t)ids[i] < V)
                    s->mark[ids[i]] = 0;
        }
        if (u > cap)
            return -ENOSPC;
    }
    uint32_t n = 0;
    if (rep) {
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *ids = pass ? seq->output : seq->prompt;
            uint32_t m = pass ? seq->n_output : seq->n_prompt;
            for (uint32_t i = 0; i < m; i++)
                if (ids[i] >= 0 && (uint32_t)ids[i] < V)
                    s_edit(s, out, &n, ids[i])->rp = p->repetition_penalty;
        }
    }
    if (pf) {
        for (uint32_t i = 0; i < seq->n_output; i++)
            if (seq->output[i] >= 0 && (uint32_t)seq->output[i] < V)
                s->count[seq->output[i]]++;
        for (uint32_t i = 0; i < seq->n_output; i++) {
            int32_t t = seq->output[i];
            if (t < 0 || (uint32_t)t >= V || s->count[t] == 0)
                continue;
            s_edit(s, out, &n, t)->sub = p->presence_penalty + p->frequency_penalty * (float)s->count[t];
            s->count[t] = 0;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        if (!(pass ? sup_stop : sup_eos))
            continue;
        const int32_t *ids = pass ? seq->stop_ids : seq->eos_ids;
        uint32_t m = pass ? seq->n_stop : seq->n_eos;
        for (uint32_t i = 0; i < m; i++)
            if (ids[i] >= 0 && (uint32_t)ids[i] < V)
                s_edit(s, out, &n, ids[i])->suppress = 1;
    }
    for (uint32_t i = 0; i < n; i++)
        s->mark[out[i].id] = 0;
    return (int)n;
}

int eng_sampler_sample(eng_sampler_t *s, const eng_sampler_params_t *p, const eng_sampler_seq_t *seq,
                       float *logits, eng_sampler_result_t *ret) {
    const uint32_t V = s->n_vocab;
    eng_sampler_result_t r;
    memset(&r, 0, sizeof r);
    uint32_t n_lp = p->n_logprobs < ENG_SAMPLER_MAX_LOGPROBS ? p->n_logprobs : ENG_SAMPLER_MAX_LOGPROBS;
    double raw_lse = 0;
    if (n_lp > 0) {
        memcpy(s->raw, logits, V * sizeof *logits);
        float mx = -INFINITY;
        for (uint32_t v = 0; v < V; v++)
            mx = logits[v] > mx ? logits[v] : mx;
        double sum = 0;
        for (uint32_t v = 0; v < V; v++)
            sum += exp((double)logits[v] - mx);
        raw_lse = mx + log(sum);
        /* n-best by insertion into a short sorted list */
        for (uint32_t v = 0; v < V; v++) {
            if (r.n_top == n_lp && !s_before(logits, (int32_t)v, r.top_ids[n_lp - 1]))
                continue;
            uint32_t pos = r.n_top < n_lp ? r.n_top++ : n_lp - 1;
            while (pos > 0 && s_before(logits, (int32_t)v, r.top_ids[pos - 1])) {
                r.top_ids[pos] = r.top_ids[pos - 1];
                pos--;
            }
            r.top_ids[pos] = (int32_t)v;
        }
        for (uint32_t i = 0; i < r.n_top; i++)
            r.top_logprobs[i] = (float)(logits[r.top_ids[i]] - raw_lse);
    }

    /* repetition penalty over the unique tokens of prompt and output */
    if (p->repetition_penalty != 1.0f) {
        const float rp = p->repetition_penalty;
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *ids = pass ? seq->output : seq->prompt;
            uint32_t n = pass ? seq->n_output : seq->n_prompt;
            for (uint32_t i = 0; i < n; i++) {
                int32_t t = ids[i];
                if (t < 0 || (uint32_t)t >= V || s->mark[t])
                    continue;
                s->mark[t] = 1;
                logits[t] = logits[t] > 0 ? logits[t] / rp : logits[t] * rp;
            }
        }
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *ids = pass ? seq->output : seq->prompt;
            uint32_t n = pass ? seq->n_output : seq->n_prompt;
            for (uint32_t i = 0; i < n; i++)
                if (ids[i] >= 0 && (uint32_t)ids[i] < V)
                    s->mark[ids[i]] = 0;
        }
    }
    /* presence and frequency penalties over the output */
    if (p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f) {
        for (uint32_t i = 0; i < seq->n_output; i++)
            if (seq->output[i] >= 0 && (uint32_t)seq->output[i] < V)
                s->count[seq->output[i]]++;
        for (uint32_t i = 0; i < seq->n_output; i++) {
            int32_t t = seq->output[i];
            if (t < 0 || (uint32_t)t >= V || s->count[t] == 0)
                continue;
            logits[t] -= p->presence_penalty + p->frequency_penalty * (float)s->count[t];
            s->count[t] = 0;
        }
    }
    /* suppression */
    if (p->ignore_eos || seq->n_output < p->min_tokens)
        s_suppress(logits, V, seq->eos_ids, seq->n_eos);
    if (seq->n_output < p->min_tokens)
        s_suppress(logits, V, seq->stop_ids, seq->n_stop);

    int32_t tok = 0;
    if (!(p->temperature > 0)) {
        for (uint32_t v = 1; v < V; v++)
            if (logits[v] > logits[tok])
                tok = (int32_t)v;
    } else {
        const float inv_t = 1.0f / p->temperature;
        for (uint32_t v = 0; v < V; v++)
            logits[v] *= inv_t;
        tok = s_draw(s, p, logits, eng_sampler_uniform(p->seed, seq->n_output));
    }
    r.token = tok;
    if (n_lp > 0)
        r.logprob = (float)(s->raw[tok] - raw_lse);
    *ret = r;
    return 0;
}
