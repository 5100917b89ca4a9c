/* eng_service.c: the engine's pure handler (see eng_service.h): request validation, the scheduler
 * loop (eng_sched over eng_kv), one model step per call, sampling (eng_sampler, or the backend's
 * SAMPLE hook) and the TokenBatch report. No I/O, no clock: the caller passes now_ms.
 *
 * Request lifetime: a request object (s_req) is created by eng_service_submit(). It is live while
 * queued or running; when it ends (finish, abort, deadline, error) it is reported once in a
 * TokenBatch and freed at the start of the following eng_service_step(), so the borrowed pointers
 * of a returned TokenBatch (token ids, header, client id) stay valid until the next call.
 *
 * A failed model step (eng_model_forward, logits download, SAMPLE hook) ends the step's requests
 * with an error Status carried in the returned batch, and eng_service_step() returns that -errno so
 * the daemon can decide whether the device is lost (it still sends *ret_batch first). */
#include "eng_service.h"

#include <errno.h>
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_backend.h"
#include "eng_kv.h"
#include "eng_model.h"
#include "eng_sampler.h"
#include "eng_sched.h"
#include "om_err.h"

#define S_DEFAULT_MAX_BATCH_TOKENS 2048
#define S_DEFAULT_MAX_RUNNING 64       /* cpu backend */
#define S_DEFAULT_MAX_RUNNING_GPU 256  /* cuda: the decode graphs go to 512 rows; vLLM's max_num_seqs */
#define S_DEFAULT_MAX_WAITING 1024
#define S_DEFAULT_BLOCK_SIZE 16
#define S_CPU_KV_BYTES (1ull << 30) /* default CPU KV budget */
#define S_CPU_KV_MAX_BLOCKS 4096  /* 64k tokens of 16 */
#define S_LOGIT_ROWS 16               /* logits rows downloaded at once */

typedef enum s_where { S_LIVE = 0, S_PENDING, S_REPORTED } s_where_t;

typedef struct s_req {
    eng_sched_seq_t seq;           /* scheduler view: tokens, KV table, state */
    uint64_t request_id;
    uint8_t *client_id;            /* (client_id_len) */
    size_t client_id_len;
    Omnipipe__Header *hdr;         /* owned copy (unpacked), NULL if none came */
    Omnipipe__SamplingParams *sampling; /* owned copy, NULL if none came */
    bool split_reasoning, stream;
    bool reasoning_starts_open;    /* PreparedRequest: the output starts inside <think> */
    eng_sampler_params_t params;   /* validated, defaults applied */
    int32_t *stop_ids;             /* (n_stop) */
    uint32_t n_stop;
    int32_t *pos;                  /* (3, n_prompt) M-RoPE positions, NULL = text-only */
    int32_t rope_delta;            /* decode position offset with pos */
    uint64_t deadline_ms;          /* wall clock ms, 0 = none */
    s_where_t where;
    bool first_sent;               /* the first SeqStep went out */
    uint32_t step_tok0;            /* index in seq.tokens of this step's first new token */
    uint32_t step_n_new;           /* new tokens this step */
    Omnipipe__FinishReason finish; /* FINISH_NONE while running */
    /* report storage (valid until the request is freed) */
    Omnipipe__SeqStep out;
    Omnipipe__Status status;
    char errmsg[256];
    Omnipipe__TokenLogprobs lp;
    Omnipipe__TokenLogprobs *lp_ptr;
    Omnipipe__TopLogprob top[ENG_SAMPLER_MAX_LOGPROBS];
    Omnipipe__TopLogprob *top_ptrs[ENG_SAMPLER_MAX_LOGPROBS];
    struct s_req *next;            /* in its list (live, pending or reported) */
} s_req_t;

struct eng_service {
    eng_backend_t *backend;
    eng_model_t *model;
    const eng_config_t *cfg;       /* borrowed from model */
    eng_kv_t *kv;
    eng_sched_t *sched;
    eng_sampler_t *samplers[S_LOGIT_ROWS]; /* (n_samplers) scratch per sampling thread */
    int n_samplers;                /* threads sampling rows in parallel, <= S_LOGIT_ROWS */
    eng_sampler_result_t results[S_LOGIT_ROWS]; /* per row of a chunk */
    eng_sampler_defaults_t defaults;
    char engine_id[128];
    uint32_t n_vocab;              /* V */
    uint32_t max_model_len;        /* effective: min(model, KV capacity) */
    uint32_t block_size;
    uint64_t n_blocks;
    uint64_t step_no;
    s_req_t *live;                 /* queued or running */
    s_req_t *pending;              /* ended out of band, report due */
    s_req_t *reported;             /* reported in the last batch, freed next call */
    /* step scratch, sized at creation */
    eng_sched_item_t *items;       /* (max_running) */
    eng_batch_seq_t *bseqs;        /* (max_running) */
    int32_t *pos_scratch;          /* (3 * max_batch_tokens) */
    float *logits;                 /* (S_LOGIT_ROWS, V) */
    eng_sampler_params_t *dev_params; /* (max_running) rows for the SAMPLE hook */
    uint32_t *dev_steps;           /* (max_running) */
    int32_t *dev_ids;              /* (max_running) */
    uint32_t *dev_edit0;           /* (max_running) first logit edit of each row */
    uint32_t *dev_nedit;           /* (max_running) its number of edits */
    eng_sampler_result_t *dev_results; /* (max_running) */
    eng_sampler_edit_t *edits;     /* (cap_edits) this step's logit edits, all rows */
    size_t cap_edits;
    s_req_t **logit_reqs;          /* (max_running) request of each logits row */
    bool fused;                    /* SAMPLE hook steps: the forward is not synchronised, the draw
                                      is queued behind it (OMNIPIPE_SAMPLE_FUSED=0: off) */
    /* the returned batch */
    Omnipipe__TokenBatch batch;
    Omnipipe__SeqStep **out_ptrs;  /* (cap_out) */
    size_t cap_out;
};

/* ---- request objects ---- */

static s_req_t *s_req_free(s_req_t *q) {
    if (!q)
        return NULL;
    eng_kv_table_fini(&q->seq.table);
    free(q->seq.tokens);
    free(q->client_id);
    free(q->stop_ids);
    free(q->pos);
    if (q->hdr)
        omnipipe__header__free_unpacked(q->hdr, NULL);
    if (q->sampling)
        omnipipe__sampling_params__free_unpacked(q->sampling, NULL);
    free(q);
    return NULL;
}

static void s_list_unlink(s_req_t **head, s_req_t *q) {
    for (s_req_t **pp = head; *pp; pp = &(*pp)->next) {
        if (*pp == q) {
            *pp = q->next;
            q->next = NULL;
            return;
        }
    }
}

static void s_list_push(s_req_t **head, s_req_t *q) {
    /* append, so reports come out in arrival order */
    s_req_t **pp = head;
    while (*pp)
        pp = &(*pp)->next;
    q->next = NULL;
    *pp = q;
}

/* ends a request out of band: releases its KV, queues its report */
static void s_end(eng_service_t *s, s_req_t *q, Omnipipe__FinishReason why, int neg_errno,
                  const char *msg) {
    eng_sched_remove(s->sched, &q->seq);
    q->finish = why;
    q->step_n_new = 0; /* tokens of an earlier step were reported then */
    q->lp_ptr = NULL;
    if (why == OMNIPIPE__FINISH_REASON__FINISH_ERROR) {
        snprintf(q->errmsg, sizeof q->errmsg, "%s", msg ? msg : "engine error");
        q->status.has_code = true;
        q->status.code = (Omnipipe__Code)om_err_to_code(neg_errno);
        q->status.message = q->errmsg;
        q->status.stage = (char *)"engine";
        q->status.has_retryable = true;
        q->status.retryable = om_err_retryable(neg_errno);
    }
    if (q->where == S_LIVE)
        s_list_unlink(&s->live, q);
    q->where = S_PENDING;
    s_list_push(&s->pending, q);
}

static int s_copy_header(const Omnipipe__Header *hdr, Omnipipe__Header **ret) {
    size_t n = omnipipe__header__get_packed_size(hdr);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return -ENOMEM;
    omnipipe__header__pack(hdr, buf);
    Omnipipe__Header *h = omnipipe__header__unpack(NULL, n, buf);
    free(buf);
    if (!h)
        return -ENOMEM;
    *ret = h;
    return 0;
}

static int s_copy_sampling(const Omnipipe__SamplingParams *sp, Omnipipe__SamplingParams **ret) {
    size_t n = omnipipe__sampling_params__get_packed_size(sp);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return -ENOMEM;
    omnipipe__sampling_params__pack(sp, buf);
    Omnipipe__SamplingParams *c = omnipipe__sampling_params__unpack(NULL, n, buf);
    free(buf);
    if (!c)
        return -ENOMEM;
    *ret = c;
    return 0;
}

/* ---- construction ---- */

typedef struct s_progress_ctx {
    eng_progress_fn fn;
    void *ud;
} s_progress_ctx_t;

static void s_progress(void *ud, uint64_t bytes_done, uint64_t bytes_total, uint32_t tensors_done,
                       uint32_t tensors_total, double elapsed_s) {
    (void)elapsed_s;
    const s_progress_ctx_t *c = ud;
    c->fn(c->ud, bytes_done, bytes_total, tensors_done, tensors_total);
}

int eng_service_new(const eng_service_opts_t *opts, eng_progress_fn progress, void *progress_ud,
                    eng_service_t **ret, char *err, size_t errlen) {
    if (!opts || !opts->model_dir || !ret) {
        snprintf(err, errlen, "engine options: model_dir missing");
        return -EINVAL;
    }
    eng_service_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int r;
    const char *backend = opts->backend ? opts->backend : "cpu";
    snprintf(s->engine_id, sizeof s->engine_id, "%s", opts->engine_id ? opts->engine_id : "engine0");
    r = eng_backend_new(backend, opts->n_threads, opts->device, &s->backend);
    if (r < 0) {
        snprintf(err, errlen, "backend '%s': %s", backend,
                 r == -EOPNOTSUPP ? "not built into this binary" : strerror(-r));
        goto fail;
    }
    s_progress_ctx_t pctx = {progress, progress_ud};
    eng_model_load_opts_t lo = {
        .load_format = opts->load_format,
        .progress = progress ? s_progress : NULL,
        .progress_ud = &pctx,
    };
    r = eng_model_load(opts->model_dir, &lo, s->backend, &s->model, err, errlen);
    if (r < 0)
        goto fail;
    s->cfg = eng_model_config(s->model);
    s->n_vocab = s->cfg->vocab_size;

    r = eng_sampler_defaults_load(opts->model_dir, &s->defaults, err, errlen);
    if (r < 0)
        goto fail;
    if (s->defaults.n_eos == 0) { /* generation_config lacked eos: config.json's */
        for (uint32_t i = 0; i < s->cfg->gen.n_eos && i < ENG_SAMPLER_MAX_EOS; i++)
            s->defaults.eos_ids[s->defaults.n_eos++] = s->cfg->gen.eos_token_ids[i];
    }

    uint32_t max_batch_tokens = opts->max_batch_tokens ? opts->max_batch_tokens : S_DEFAULT_MAX_BATCH_TOKENS;
    uint32_t max_running = opts->max_running ? opts->max_running
                          : strcmp(backend, "cpu") == 0 ? S_DEFAULT_MAX_RUNNING
                                                        : S_DEFAULT_MAX_RUNNING_GPU;
    uint32_t max_waiting = opts->max_waiting ? opts->max_waiting : S_DEFAULT_MAX_WAITING;
    s->block_size = opts->block_size ? opts->block_size : S_DEFAULT_BLOCK_SIZE;
    uint64_t per_block = eng_model_kv_bytes_per_token(s->model) * s->block_size;
    if (per_block == 0)
        per_block = 1;
    if (opts->kv_blocks) {
        s->n_blocks = opts->kv_blocks;
    } else if (strcmp(backend, "cpu") == 0) {
        s->n_blocks = S_CPU_KV_BYTES / per_block;
        if (s->n_blocks > S_CPU_KV_MAX_BLOCKS)
            s->n_blocks = S_CPU_KV_MAX_BLOCKS;
    } else {
        uint64_t mem_free = 0, mem_total = 0;
        r = s->backend->ops->mem_info(s->backend, &mem_free, &mem_total);
        if (r < 0) {
            snprintf(err, errlen, "backend memory info: %s", strerror(-r));
            goto fail;
        }
        double frac = opts->kv_fraction > 0 ? opts->kv_fraction : 0.9;
        /* leave room for the step scratch: 1 GiB */
        uint64_t avail = mem_free > (1ull << 30) ? mem_free - (1ull << 30) : 0;
        s->n_blocks = (uint64_t)((double)avail * frac) / per_block;
    }
    if (s->n_blocks < 2) {
        snprintf(err, errlen, "KV cache: %" PRIu64 " blocks of %u tokens is too small", s->n_blocks,
                 s->block_size);
        r = -ENOMEM;
        goto fail;
    }
    if (s->n_blocks > INT32_MAX / 2)
        s->n_blocks = INT32_MAX / 2;
    uint64_t kv_tokens = s->n_blocks * s->block_size;
    uint32_t model_len = opts->max_model_len ? opts->max_model_len : s->cfg->max_position_embeddings;
    if (model_len == 0)
        model_len = 4096;
    s->max_model_len = kv_tokens < model_len ? (uint32_t)kv_tokens : model_len;

    r = eng_model_alloc_kv(s->model, (uint32_t)s->n_blocks, s->block_size);
    if (r < 0) {
        const char *why = eng_model_last_error(s->model);
        snprintf(err, errlen, "KV cache: allocating %" PRIu64 " blocks of %u tokens: %s%s%s", s->n_blocks,
                 s->block_size, strerror(-r), why && *why ? ": " : "", why ? why : "");
        goto fail;
    }
    uint32_t max_blocks_per_seq = (s->max_model_len + s->block_size - 1) / s->block_size;
    r = eng_model_reserve(s->model, max_batch_tokens, max_running, max_blocks_per_seq);
    if (r < 0) {
        const char *why = eng_model_last_error(s->model);
        snprintf(err, errlen, "step buffers for %u tokens: %s%s%s", max_batch_tokens, strerror(-r),
                 why && *why ? ": " : "", why ? why : "");
        goto fail;
    }
    r = eng_kv_new((uint32_t)s->n_blocks, s->block_size, !opts->no_prefix_cache, &s->kv);
    if (r < 0) {
        snprintf(err, errlen, "KV block table: %s", strerror(-r));
        goto fail;
    }
    eng_sched_opts_t so = {max_batch_tokens, max_running, max_waiting};
    r = eng_sched_new(&so, s->kv, &s->sched);
    if (r < 0) {
        snprintf(err, errlen, "scheduler: %s", strerror(-r));
        goto fail;
    }
    s->n_samplers = opts->n_threads > 0 ? opts->n_threads : omp_get_max_threads();
    if (s->n_samplers > S_LOGIT_ROWS)
        s->n_samplers = S_LOGIT_ROWS;
    if (s->n_samplers < 1)
        s->n_samplers = 1;
    for (int i = 0; i < s->n_samplers; i++) {
        r = eng_sampler_new(s->n_vocab, &s->samplers[i]);
        if (r < 0) {
            snprintf(err, errlen, "sampler: %s", strerror(-r));
            goto fail;
        }
    }
    s->items = calloc(max_running, sizeof *s->items);
    s->bseqs = calloc(max_running, sizeof *s->bseqs);
    s->pos_scratch = calloc((size_t)3 * max_batch_tokens, sizeof *s->pos_scratch);
    s->logits = malloc((size_t)S_LOGIT_ROWS * s->n_vocab * sizeof *s->logits);
    s->dev_params = calloc(max_running, sizeof *s->dev_params);
    s->dev_steps = calloc(max_running, sizeof *s->dev_steps);
    s->dev_ids = calloc(max_running, sizeof *s->dev_ids);
    s->dev_edit0 = calloc(max_running, sizeof *s->dev_edit0);
    s->dev_nedit = calloc(max_running, sizeof *s->dev_nedit);
    s->dev_results = calloc(max_running, sizeof *s->dev_results);
    s->logit_reqs = calloc(max_running, sizeof *s->logit_reqs);
    if (!s->items || !s->bseqs || !s->pos_scratch || !s->logits || !s->dev_params || !s->dev_steps ||
        !s->dev_ids || !s->logit_reqs || !s->dev_edit0 || !s->dev_nedit || !s->dev_results) {
        snprintf(err, errlen, "out of memory");
        r = -ENOMEM;
        goto fail;
    }
    const char *fu = getenv("OMNIPIPE_SAMPLE_FUSED");
    s->fused = !(fu && strcmp(fu, "0") == 0);
    omnipipe__token_batch__init(&s->batch);
    *ret = s;
    return 0;
fail:
    eng_service_free(s);
    return r;
}

eng_service_t *eng_service_free(eng_service_t *s) {
    if (!s)
        return NULL;
    s_req_t *lists[3] = {s->live, s->pending, s->reported};
    for (int i = 0; i < 3; i++) {
        for (s_req_t *q = lists[i], *n; q; q = n) {
            n = q->next;
            if (s->kv)
                eng_kv_release(s->kv, &q->seq.table);
            s_req_free(q);
        }
    }
    for (int i = 0; i < S_LOGIT_ROWS; i++)
        eng_sampler_free(s->samplers[i]);
    eng_sched_free(s->sched);
    eng_kv_free(s->kv);
    eng_model_free(s->model);
    eng_backend_free(s->backend);
    free(s->items);
    free(s->bseqs);
    free(s->pos_scratch);
    free(s->logits);
    free(s->dev_params);
    free(s->dev_steps);
    free(s->dev_ids);
    free(s->dev_edit0);
    free(s->dev_nedit);
    free(s->dev_results);
    free(s->edits);
    free(s->logit_reqs);
    free(s->out_ptrs);
    free(s);
    return NULL;
}

/* ---- submit / abort ---- */

static s_req_t *s_find_live(const eng_service_t *s, const uint8_t *cid, size_t cid_len, uint64_t id) {
    for (s_req_t *q = s->live; q; q = q->next)
        if (q->request_id == id && q->client_id_len == cid_len &&
            (cid_len == 0 || memcmp(q->client_id, cid, cid_len) == 0))
            return q;
    return NULL;
}

/* validates the request into q; -errno and q->errmsg on a request error */
static int s_prepare(eng_service_t *s, s_req_t *q, const Omnipipe__PreparedRequest *req) {
    char *msg = q->errmsg;
    const size_t ml = sizeof q->errmsg;
    if (req->n_features > 0) {
        snprintf(msg, ml, "features: multimodal feature tensors are not supported by this engine yet");
        return -EOPNOTSUPP;
    }
    if (req->n_ids == 0) {
        snprintf(msg, ml, "ids: empty prompt");
        return -EINVAL;
    }
    if (req->n_ids > UINT32_MAX / 2) {
        snprintf(msg, ml, "ids: %zu tokens", req->n_ids);
        return -E2BIG;
    }
    const uint32_t n_prompt = (uint32_t)req->n_ids;
    for (uint32_t i = 0; i < n_prompt; i++) {
        if (req->ids[i] < 0 || (uint32_t)req->ids[i] >= s->n_vocab) {
            snprintf(msg, ml, "ids[%u]: token id %d out of range [0, %u)", i, req->ids[i], s->n_vocab);
            return -EINVAL;
        }
    }
    int r = eng_sampler_params_from_proto(req->sampling, &s->defaults, n_prompt, s->max_model_len,
                                          &q->params, msg, ml);
    if (r < 0)
        return r;
    const Omnipipe__SamplingParams *sp = req->sampling;
    if (sp && sp->n_stop_token_ids > 0) {
        q->stop_ids = malloc(sp->n_stop_token_ids * sizeof *q->stop_ids);
        if (!q->stop_ids)
            return -ENOMEM;
        memcpy(q->stop_ids, sp->stop_token_ids, sp->n_stop_token_ids * sizeof *q->stop_ids);
        q->n_stop = (uint32_t)sp->n_stop_token_ids;
    }
    const Omnipipe__Tensor *pt = req->positions;
    if (pt && (pt->n_shape > 0 || pt->data.len > 0)) {
        if (!pt->has_dtype || pt->dtype != OMNIPIPE__TENSOR__DTYPE__I32 || pt->n_shape != 2 ||
            pt->shape[0] != 3 || pt->shape[1] != (int64_t)n_prompt ||
            pt->data.len != (size_t)3 * n_prompt * sizeof(int32_t)) {
            snprintf(msg, ml, "positions: must be an i32 tensor of shape [3, %u] (the prompt length)",
                     n_prompt);
            return -EINVAL;
        }
        q->pos = malloc((size_t)3 * n_prompt * sizeof *q->pos);
        if (!q->pos)
            return -ENOMEM;
        memcpy(q->pos, pt->data.data, pt->data.len);
        q->rope_delta = req->has_rope_delta ? req->rope_delta : 0;
        /* positions other than the text-only default (0..n-1 on every row) come with media: the K/V
         * of the placeholder ids depend on more than the ids, so the block keys would lie. mm_prep
         * sends the default explicitly for text; that keeps the prefix cache. */
        bool plain = q->rope_delta == 0;
        for (uint32_t row = 0; plain && row < 3; row++)
            for (uint32_t i = 0; plain && i < n_prompt; i++)
                plain = q->pos[(size_t)row * n_prompt + i] == (int32_t)i;
        q->seq.no_prefix_cache = !plain;
    }
    q->seq.cap = n_prompt + q->params.max_tokens;
    q->seq.tokens = malloc((size_t)q->seq.cap * sizeof *q->seq.tokens);
    if (!q->seq.tokens)
        return -ENOMEM;
    memcpy(q->seq.tokens, req->ids, n_prompt * sizeof *q->seq.tokens);
    q->seq.n_prompt = q->seq.n_tokens = n_prompt;
    q->seq.ud = q;
    return 0;
}

int eng_service_submit(eng_service_t *s, const Omnipipe__Header *hdr,
                       const Omnipipe__PreparedRequest *req, uint64_t now_ms) {
    (void)now_ms;
    if (!s || !req)
        return -EINVAL;
    s_req_t *q = calloc(1, sizeof *q);
    if (!q)
        return -ENOMEM;
    omnipipe__seq_step__init(&q->out);
    omnipipe__status__init(&q->status);
    omnipipe__token_logprobs__init(&q->lp);
    q->finish = OMNIPIPE__FINISH_REASON__FINISH_NONE;
    int r = 0;
    if (hdr) {
        q->request_id = hdr->request_id;
        q->deadline_ms = hdr->deadline_unix_ms;
        if (hdr->has_client_id && hdr->client_id.len > 0) {
            q->client_id = malloc(hdr->client_id.len);
            if (!q->client_id) {
                s_req_free(q);
                return -ENOMEM;
            }
            memcpy(q->client_id, hdr->client_id.data, hdr->client_id.len);
            q->client_id_len = hdr->client_id.len;
        }
        r = s_copy_header(hdr, &q->hdr);
    }
    if (r == 0 && req->sampling)
        r = s_copy_sampling(req->sampling, &q->sampling);
    if (r < 0) {
        s_req_free(q);
        return r;
    }
    q->split_reasoning = req->has_split_reasoning && req->split_reasoning;
    q->reasoning_starts_open = req->has_reasoning_starts_open && req->reasoning_starts_open;
    q->stream = req->has_stream && req->stream;
    q->where = S_LIVE;
    s_list_push(&s->live, q);

    if (s_find_live(s, q->client_id, q->client_id_len, q->request_id) != q) {
        char m[96];
        snprintf(m, sizeof m, "request_id: %" PRIu64 " is already live for this client", q->request_id);
        s_end(s, q, OMNIPIPE__FINISH_REASON__FINISH_ERROR, -EINVAL, m);
        return 0;
    }
    r = s_prepare(s, q, req);
    if (r == -ENOMEM) {
        s_list_unlink(&s->live, q);
        s_req_free(q);
        return r;
    }
    if (r < 0) {
        char m[256];
        snprintf(m, sizeof m, "%s", q->errmsg);
        s_end(s, q, OMNIPIPE__FINISH_REASON__FINISH_ERROR, r, m);
        return 0;
    }
    r = eng_sched_add(s->sched, &q->seq);
    if (r == -EBUSY) {
        char m[128];
        snprintf(m, sizeof m, "engine queue full (%u waiting)", eng_sched_n_waiting(s->sched));
        s_end(s, q, OMNIPIPE__FINISH_REASON__FINISH_ERROR, -EBUSY, m);
        return 0;
    }
    if (r < 0) {
        s_list_unlink(&s->live, q);
        s_req_free(q);
        return r;
    }
    return 0;
}

int eng_service_abort(eng_service_t *s, const uint8_t *client_id, size_t client_id_len,
                      uint64_t request_id) {
    s_req_t *q = s_find_live(s, client_id, client_id_len, request_id);
    if (!q)
        return -ENOENT;
    s_end(s, q, OMNIPIPE__FINISH_REASON__FINISH_ABORT, 0, NULL);
    return 0;
}

void eng_service_fail_all(eng_service_t *s, int neg_errno, const char *message) {
    while (s->live)
        s_end(s, s->live, OMNIPIPE__FINISH_REASON__FINISH_ERROR, neg_errno, message);
}

bool eng_service_has_work(const eng_service_t *s) { return s->live || s->pending; }

void eng_service_load(const eng_service_t *s, Omnipipe__EngineLoad *ret) {
    const eng_sched_opts_t *o = eng_sched_opts(s->sched);
    eng_kv_stats_t st;
    eng_kv_stats(s->kv, &st);
    uint32_t running = eng_sched_n_running(s->sched), waiting = eng_sched_n_waiting(s->sched);
    uint64_t room = (uint64_t)o->max_running + o->max_waiting;
    uint64_t used = (uint64_t)running + waiting;
    ret->engine_id = (char *)s->engine_id;
    ret->has_running = ret->has_waiting = ret->has_max_running = true;
    ret->running = running;
    ret->waiting = waiting;
    ret->max_running = o->max_running;
    ret->has_kv_blocks_total = ret->has_kv_blocks_free = true;
    ret->kv_blocks_total = st.n_blocks;
    ret->kv_blocks_free = st.n_free;
    ret->has_credits = true;
    ret->credits = used < room ? (uint32_t)(room - used) : 0;
    ret->has_prefix_cache_hits = ret->has_prefix_cache_queries = true;
    ret->prefix_cache_hits = st.hit_tokens;
    ret->prefix_cache_queries = st.query_tokens;
}

/* ---- one step ---- */

static bool s_in(const int32_t *ids, uint32_t n, int32_t t) {
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == t)
            return true;
    return false;
}

/* the sampler's view of q's sequence (prompt, output, eos and stop ids) */
static eng_sampler_seq_t s_seq_of(const eng_service_t *s, const s_req_t *q) {
    return (eng_sampler_seq_t){
        .prompt = q->seq.tokens,
        .n_prompt = q->seq.n_prompt,
        .output = q->seq.tokens + q->seq.n_prompt,
        .n_output = q->seq.n_tokens - q->seq.n_prompt,
        .eos_ids = s->defaults.eos_ids,
        .n_eos = s->defaults.n_eos,
        .stop_ids = q->stop_ids,
        .n_stop = q->n_stop,
    };
}

/* appends row q's logit edits (penalties, suppression) for the SAMPLE hook at s->edits[*n..) */
static int s_add_edits(eng_service_t *s, const s_req_t *q, uint32_t row, size_t *n) {
    eng_sampler_seq_t sq = s_seq_of(s, q);
    const eng_sampler_params_t *p = &q->params;
    s->dev_edit0[row] = (uint32_t)*n;
    s->dev_nedit[row] = 0;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
        p->frequency_penalty == 0.0f && !p->ignore_eos && sq.n_output >= p->min_tokens)
        return 0; /* nothing to edit */
    size_t need = *n + (size_t)sq.n_prompt + sq.n_output + sq.n_eos + sq.n_stop;
    if (need > UINT32_MAX)
        return -E2BIG;
    if (need > s->cap_edits) {
        size_t cap = need < 4096 ? 4096 : need + need / 2;
        eng_sampler_edit_t *e = realloc(s->edits, cap * sizeof *e);
        if (!e)
            return -ENOMEM;
        s->edits = e;
        s->cap_edits = cap;
    }
    int r = eng_sampler_edits(s->samplers[0], &q->params, &sq, s->edits + *n,
                              (uint32_t)(s->cap_edits - *n));
    if (r < 0)
        return r;
    s->dev_edit0[row] = (uint32_t)*n;
    s->dev_nedit[row] = (uint32_t)r;
    *n += (size_t)r;
    return 0;
}

/* appends token t to q, checks the stop conditions */
static void s_accept(eng_service_t *s, s_req_t *q, const eng_sampler_result_t *res) {
    if (q->step_n_new == 0)
        q->step_tok0 = q->seq.n_tokens;
    eng_sched_append(&q->seq, res->token);
    q->step_n_new++;
    if (q->params.n_logprobs > 0) {
        q->lp.has_logprob = true;
        q->lp.logprob = res->logprob;
        for (uint32_t i = 0; i < res->n_top; i++) {
            omnipipe__top_logprob__init(&q->top[i]);
            q->top[i].has_token_id = q->top[i].has_logprob = true;
            q->top[i].token_id = res->top_ids[i];
            q->top[i].logprob = res->top_logprobs[i];
            q->top_ptrs[i] = &q->top[i];
        }
        q->lp.n_top = res->n_top;
        q->lp.top = q->top_ptrs;
        q->lp_ptr = &q->lp;
    }
    uint32_t n_out = q->seq.n_tokens - q->seq.n_prompt;
    if (s_in(q->stop_ids, q->n_stop, res->token) ||
        (!q->params.ignore_eos && s_in(s->defaults.eos_ids, s->defaults.n_eos, res->token)))
        q->finish = OMNIPIPE__FINISH_REASON__FINISH_STOP;
    else if (n_out >= q->params.max_tokens || q->seq.n_tokens >= s->max_model_len ||
             q->seq.n_tokens >= q->seq.cap)
        q->finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
}

/* fills q->out for this step's report */
static void s_fill_out(eng_service_t *s, s_req_t *q) {
    Omnipipe__SeqStep *o = &q->out;
    omnipipe__seq_step__init(o);
    o->has_request_id = true;
    o->request_id = q->request_id;
    if (q->client_id_len) {
        o->has_client_id = true;
        o->client_id.data = q->client_id;
        o->client_id.len = q->client_id_len;
    }
    if (q->step_n_new > 0) {
        o->n_token_ids = q->step_n_new;
        o->token_ids = q->seq.tokens + q->step_tok0;
        if (q->lp_ptr) {
            o->n_logprobs = 1;
            o->logprobs = &q->lp_ptr;
        }
    }
    bool first = !q->first_sent, last = q->finish != OMNIPIPE__FINISH_REASON__FINISH_NONE;
    if (first) {
        o->has_prompt_tokens = true;
        o->prompt_tokens = q->seq.n_prompt;
        o->has_cached_tokens = true;
        o->cached_tokens = q->seq.cached_tokens;
        o->sampling = q->sampling;
        o->has_split_reasoning = true;
        o->split_reasoning = q->split_reasoning;
        o->has_reasoning_starts_open = q->reasoning_starts_open;
        o->reasoning_starts_open = q->reasoning_starts_open;
        o->has_stream = true;
        o->stream = q->stream;
        q->first_sent = true;
    }
    if (first || last)
        o->header = q->hdr;
    o->has_completion_tokens = true;
    o->completion_tokens = q->seq.n_tokens >= q->seq.n_prompt && q->seq.n_prompt > 0
                               ? q->seq.n_tokens - q->seq.n_prompt
                               : 0;
    if (last) {
        o->has_finish = true;
        o->finish = q->finish;
        if (q->finish == OMNIPIPE__FINISH_REASON__FINISH_ERROR)
            o->error = &q->status;
    }
    (void)s;
}

static int s_out_push(eng_service_t *s, Omnipipe__SeqStep *o) {
    if (s->batch.n_seqs == s->cap_out) {
        size_t cap = s->cap_out ? s->cap_out * 2 : 64;
        Omnipipe__SeqStep **p = realloc(s->out_ptrs, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        s->out_ptrs = p;
        s->cap_out = cap;
        s->batch.seqs = p;
    }
    s->out_ptrs[s->batch.n_seqs++] = o;
    return 0;
}

/* runs the model on the plan and samples; fills q->step_n_new / q->finish */
static int s_run(eng_service_t *s, uint32_t n_items, uint32_t n_step_tokens) {
    uint32_t n_logits = 0, pos_used = 0;
    for (uint32_t i = 0; i < n_items; i++) {
        const eng_sched_item_t *it = &s->items[i];
        s_req_t *q = it->seq->ud;
        eng_batch_seq_t *b = &s->bseqs[i];
        b->tokens = it->seq->tokens + it->n_past;
        b->n_tokens = it->n_tokens;
        b->n_past = it->n_past;
        b->block_table = it->seq->table.blocks;
        b->n_blocks = eng_kv_blocks_for(s->kv, (uint64_t)it->n_past + it->n_tokens);
        b->want_logits = it->want_logits;
        b->positions = NULL;
        if (q->pos) {
            int32_t *p = s->pos_scratch + 3 * pos_used;
            for (uint32_t r = 0; r < 3; r++) {
                for (uint32_t j = 0; j < it->n_tokens; j++) {
                    uint32_t at = it->n_past + j;
                    p[r * it->n_tokens + j] = at < q->seq.n_prompt
                                                  ? q->pos[r * q->seq.n_prompt + at]
                                                  : (int32_t)at + q->rope_delta;
                }
            }
            b->positions = p;
            pos_used += it->n_tokens;
        }
        if (it->want_logits)
            s->logit_reqs[n_logits++] = q;
    }
    eng_batch_t batch = {.seqs = s->bseqs, .n_seqs = n_items, .n_tokens = n_step_tokens,
                         .n_logits = n_logits};
    eng_tensor_t *logits = NULL;
    eng_backend_t *be = s->backend;
    /* fused: with a SAMPLE hook the step is only queued (no host synchronisation); the edits are
     * built and the draw queued behind it on the same stream while the GPU runs the step, and
     * the hook's one synchronisation brings back the ids */
    void *stream = NULL;
    int r = be->ops->sample && s->fused && n_logits > 0
                ? eng_model_forward_async(s->model, &batch, &logits, &stream)
                : eng_model_forward(s->model, &batch, &logits);
    if (r < 0) {
        eng_model_wait(s->model); /* nothing of a failed step stays in flight */
        return r;
    }
    for (uint32_t i = 0; i < n_items; i++)
        eng_sched_advance(s->sched, &s->items[i]);
    if (n_logits == 0)
        return 0;
    if (!logits) {
        eng_model_wait(s->model);
        return -EIO;
    }

    const size_t row_bytes = (size_t)s->n_vocab * sizeof(float);
    /* a backend with a SAMPLE hook samples every row on the device: penalties and suppression
     * go as per-row logit edits, logprobs come back with the ids; the logits stay there */
    if (be->ops->sample) {
        size_t n_edits = 0;
        for (uint32_t i = 0; i < n_logits; i++) {
            const s_req_t *q = s->logit_reqs[i];
            s->dev_params[i] = q->params;
            s->dev_steps[i] = q->seq.n_tokens - q->seq.n_prompt;
            if ((r = s_add_edits(s, q, i, &n_edits)) < 0) {
                eng_model_wait(s->model);
                return r;
            }
        }
        struct eng_sample_batch sb = {.params = s->dev_params, .steps = s->dev_steps,
                                      .n_rows = n_logits, .edits = s->edits,
                                      .edit0 = s->dev_edit0, .n_edit = s->dev_nedit,
                                      .results = s->dev_results, .stream = stream};
        r = be->ops->sample(be, logits, &sb, s->dev_ids);
        if (r < 0) { /* the hook may have failed before its synchronisation */
            int w = eng_model_wait(s->model);
            return w < 0 ? w : r;
        }
        eng_model_step_synced(s->model); /* the hook synchronised the step's stream */
        for (uint32_t i = 0; i < n_logits; i++)
            s_accept(s, s->logit_reqs[i], &s->dev_results[i]);
        return 0;
    }
    for (uint32_t row0 = 0; row0 < n_logits; row0 += S_LOGIT_ROWS) {
        uint32_t nr = n_logits - row0 < S_LOGIT_ROWS ? n_logits - row0 : S_LOGIT_ROWS;
        r = be->ops->download(be, s->logits, logits, (size_t)row0 * row_bytes, nr * row_bytes);
        if (r < 0)
            return r;
        int rr = 0;
        /* rows are independent (own scratch, own RNG counter): sample them in parallel */
#pragma omp parallel for num_threads(s->n_samplers) schedule(dynamic, 1) reduction(min : rr)
        for (uint32_t k = 0; k < nr; k++) {
            const s_req_t *q = s->logit_reqs[row0 + k];
            eng_sampler_seq_t sq = s_seq_of(s, q);
            int e = eng_sampler_sample(s->samplers[omp_get_thread_num()], &q->params, &sq,
                                       s->logits + (size_t)k * s->n_vocab, &s->results[k]);
            rr = e < rr ? e : rr;
        }
        if (rr < 0)
            return rr;
        for (uint32_t k = 0; k < nr; k++)
            s_accept(s, s->logit_reqs[row0 + k], &s->results[k]);
    }
    return 0;
}

int eng_service_step(eng_service_t *s, uint64_t now_ms, const Omnipipe__TokenBatch **ret_batch) {
    /* requests reported last time are gone now */
    for (s_req_t *q = s->reported, *n; q; q = n) {
        n = q->next;
        s_req_free(q);
    }
    s->reported = NULL;
    s->batch.n_seqs = 0;
    s->batch.seqs = s->out_ptrs;
    for (s_req_t *q = s->live; q; q = q->next) {
        q->step_n_new = 0;
        q->lp_ptr = NULL;
    }

    /* deadlines */
    for (s_req_t *q = s->live, *n; q; q = n) {
        n = q->next;
        if (q->deadline_ms == 0 || now_ms < q->deadline_ms)
            continue;
        if (q->seq.state == ENG_SCHED_WAITING && !q->seq.admitted_once)
            s_end(s, q, OMNIPIPE__FINISH_REASON__FINISH_ERROR, -EBUSY,
                  "engine busy: no KV memory or slot freed up before the deadline");
        else
            s_end(s, q, OMNIPIPE__FINISH_REASON__FINISH_ERROR, -ETIMEDOUT,
                  "deadline exceeded while generating");
    }

    int rc = 0;
    uint32_t n_items = 0, n_step_tokens = 0;
    int r = eng_sched_schedule(s->sched, s->items, &n_items, &n_step_tokens);
    if (r < 0) {
        rc = r;
        n_items = 0;
    }
    if (n_items > 0) {
        r = s_run(s, n_items, n_step_tokens);
        if (r < 0) { /* a failed step fails its requests; the caller decides about the engine */
            rc = r;
            char m[128];
            snprintf(m, sizeof m, "model step failed: %s", strerror(-r));
            for (uint32_t i = 0; i < n_items; i++) {
                s_req_t *q = s->items[i].seq->ud;
                if (q->where == S_LIVE)
                    s_end(s, q, OMNIPIPE__FINISH_REASON__FINISH_ERROR, r, m);
            }
        }
    }
    s->step_no++;

    /* report: out-of-band endings first, then this step's tokens and finishes */
    for (s_req_t *q = s->pending, *n; q; q = n) {
        n = q->next;
        s_fill_out(s, q);
        if (s_out_push(s, &q->out) < 0)
            return -ENOMEM;
        q->where = S_REPORTED;
        s_list_unlink(&s->pending, q);
        s_list_push(&s->reported, q);
    }
    for (s_req_t *q = s->live, *n; q; q = n) {
        n = q->next;
        if (q->step_n_new == 0)
            continue;
        bool done = q->finish != OMNIPIPE__FINISH_REASON__FINISH_NONE;
        s_fill_out(s, q);
        if (s_out_push(s, &q->out) < 0)
            return -ENOMEM;
        if (done) {
            eng_sched_remove(s->sched, &q->seq);
            s_list_unlink(&s->live, q);
            q->where = S_REPORTED;
            s_list_push(&s->reported, q);
        }
    }
    s->batch.engine_id = s->engine_id;
    s->batch.has_step = true;
    s->batch.step = s->step_no;
    *ret_batch = s->batch.n_seqs > 0 ? &s->batch : NULL;
    return rc;
}
