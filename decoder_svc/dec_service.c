/* dec_service.c: the decoder_svc handler (see dec_service.h): TokenBatch in, TextDelta, Final or
 * Status out.
 *
 * State: an open-addressing hash map (linear probing, backward-shift deletion, power-of-two
 * capacity, at most half full) from (client_id, request_id) to a dec_req. A request owns its
 * dec_stream, the completion ids so far (for Final.token_ids and TextDelta.token_ids), and its
 * stop_token_ids. Outgoing envelopes are stack-built protobuf-c structs pointing at the batch or at
 * service scratch buffers, so steady-state steps allocate nothing (buffers grow geometrically and
 * are reused). What this file deliberately does not do: enforce deadlines and max_tokens (the
 * engine does and reports the finish reason, which is carried through; requests far past their
 * deadline are only dropped here so that state cannot leak), sockets, clocks, logging. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dec_service.h"
#include "dec_stream.h"
#include "om_err.h"

#define DEC_SERVICE_TOMBSTONE_MS 60000u /* how long late steps of an ended request are dropped */
#define DEC_SERVICE_SWEEP_MS     1000u  /* tombstone sweep period */
#define DEC_SERVICE_MAX_STOP_IDS 1024   /* sampling.stop_token_ids entries kept per request */
#define DEC_SERVICE_EXPIRE_GRACE_MS                                                                \
    10000u /* a live request this long past its deadline is dropped */

typedef struct dec_req {
    uint64_t request_id;
    uint64_t hash;         /* s_hash(client_id, request_id) */
    uint8_t *client_id;    /* [client_id_len] owned copy */
    size_t client_id_len;  /* bytes */
    dec_stream_t *stream;  /* NULL for a tombstone */
    int32_t *ids;          /* [n_ids] completion token ids so far */
    size_t n_ids, cap_ids; /* entries, capacity (entries) */
    size_t n_ids_sent;     /* ids already carried by a TextDelta */
    int32_t *stop_ids;     /* [n_stop_ids] sampling.stop_token_ids */
    size_t n_stop_ids;
    bool stream_deltas;         /* the client asked for TextDelta streaming */
    bool include_stop;          /* include_stop_str_in_output */
    bool split;                 /* split_reasoning */
    bool tombstone;             /* ended at the decoder or aborted: drop later steps */
    uint64_t tomb_until_ms;     /* wall-clock ms after which the tombstone may go */
    uint64_t deadline_ms;       /* Header.deadline_unix_ms of the first step, 0 = none */
    uint32_t prompt_tokens;     /* from the first step */
    uint32_t cached_tokens;     /* from the first step */
    uint32_t completion_tokens; /* the engine's latest count */
} dec_req_t;

struct dbuf {
    char *p;    /* NUL-terminated when cap > 0 */
    size_t len; /* bytes (excluding the NUL) */
    size_t cap; /* bytes allocated */
};

struct dec_service {
    om_vocab_t *owned_vocab; /* loaded by dec_service_new, NULL when borrowed */
    const om_vocab_t *vocab; /* the vocabulary in use */
    dec_req_t **slots;       /* [cap] NULL = empty */
    size_t cap;              /* slots, power of two */
    size_t n;                /* occupied slots (tombstones included) */
    size_t n_live;           /* requests with a stream */
    uint64_t last_sweep_ms;  /* wall clock of the last tombstone sweep */
    uint64_t last_now_ms;    /* the latest now_ms seen (0 before the first batch) */
    dec_stop_fn stop_fn;     /* optional */
    void *stop_ud;
    struct dbuf text; /* scratch: NUL-terminated copies for protobuf string fields */
    struct dbuf reasoning;
    const char **stop_ptrs; /* scratch: stop strings of the request being created */
    size_t cap_stop_ptrs;
};

// --- small helpers -------------------------------------------------------------------------------

static int s_dbuf_set(struct dbuf *b, const char *p, size_t n) {
    if (n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return -ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p, p, n);
    b->p[n] = '\0';
    b->len = n;
    return 0;
}

static uint64_t s_hash(const uint8_t *client_id, size_t len, uint64_t request_id) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the client id */
    for (size_t i = 0; i < len; i++) {
        h ^= client_id[i];
        h *= 1099511628211ull;
    }
    h ^= request_id + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h ^= h >> 33; /* splitmix-style finalizer */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

// --- hash map ------------------------------------------------------------------------------------

static size_t s_find_slot(const dec_service_t *s, const uint8_t *cid, size_t len, uint64_t rid,
                          uint64_t h) {
    size_t mask = s->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        dec_req_t *q = s->slots[i];
        if (!q)
            return i;
        if (q->hash == h && q->request_id == rid && q->client_id_len == len &&
            memcmp(q->client_id, cid, len) == 0)
            return i;
    }
}

static int s_grow(dec_service_t *s) {
    size_t cap = s->cap ? s->cap * 2 : 256;
    dec_req_t **slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (size_t i = 0; i < s->cap; i++) {
        dec_req_t *q = s->slots[i];
        if (!q)
            continue;
        size_t j = q->hash & (cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = q;
    }
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
    return 0;
}

static void s_req_free(dec_req_t *q) {
    if (!q)
        return;
    dec_stream_free(q->stream);
    free(q->client_id);
    free(q->ids);
    free(q->stop_ids);
    free(q);
}

/* Removes slot i (backward-shift deletion keeps every probe chain unbroken). */
static void s_remove_slot(dec_service_t *s, size_t i) {
    dec_req_t *q = s->slots[i];
    if (q->stream)
        s->n_live--;
    s_req_free(q);
    s->slots[i] = NULL;
    s->n--;
    size_t mask = s->cap - 1;
    for (size_t j = (i + 1) & mask; s->slots[j]; j = (j + 1) & mask) {
        size_t home = s->slots[j]->hash & mask;
        /* move j into the hole at i when its home is not in the cyclic range (i, j] */
        bool in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_range) {
            s->slots[i] = s->slots[j];
            s->slots[j] = NULL;
            i = j;
        }
    }
}

static dec_req_t *s_lookup(dec_service_t *s, const uint8_t *cid, size_t len, uint64_t rid,
                           size_t *ret_slot) {
    if (s->cap == 0)
        return NULL;
    size_t i = s_find_slot(s, cid, len, rid, s_hash(cid, len, rid));
    if (ret_slot)
        *ret_slot = i;
    return s->slots[i];
}

/* Inserts a fresh request (no stream yet). */
static int s_insert(dec_service_t *s, const uint8_t *cid, size_t len, uint64_t rid,
                    dec_req_t **ret) {
    if ((s->n + 1) * 2 > s->cap) {
        int r = s_grow(s);
        if (r < 0)
            return r;
    }
    dec_req_t *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->client_id = malloc(len ? len : 1);
    if (!q->client_id) {
        free(q);
        return -ENOMEM;
    }
    memcpy(q->client_id, cid, len);
    q->client_id_len = len;
    q->request_id = rid;
    q->hash = s_hash(cid, len, rid);
    size_t i = s_find_slot(s, cid, len, rid, q->hash);
    s->slots[i] = q;
    s->n++;
    *ret = q;
    return 0;
}

/* Turns a request into a tombstone: text state freed, key kept until the engine's last step. */
static void s_tombstone(dec_service_t *s, dec_req_t *q, uint64_t now_ms) {
    if (q->stream) {
        q->stream = dec_stream_free(q->stream);
        s->n_live--;
    }
    free(q->ids);
    q->ids = NULL;
    q->n_ids = q->cap_ids = 0;
    free(q->stop_ids);
    q->stop_ids = NULL;
    q->n_stop_ids = 0;
    q->tombstone = true;
    q->tomb_until_ms =
        now_ms ? now_ms + DEC_SERVICE_TOMBSTONE_MS : 0; /* 0: set by the next sweep */
}

static void s_header(Omnipipe__Header *h, const Omnipipe__Header *from, uint64_t request_id,
                     ProtobufCBinaryData client_id);
static int s_fail_here(dec_service_t *s, dec_req_t *q, Omnipipe__Header *h, int neg_errno,
                       char *msg, uint64_t now_ms, dec_emit_fn emit, void *ud);

/* Every DEC_SERVICE_SWEEP_MS: forgets expired tombstones, and ends live requests that are well past
 * their deadline without a last step (an engine that died or lost them) with DEADLINE_EXCEEDED, so
 * their state cannot leak. */
static int s_sweep(dec_service_t *s, uint64_t now_ms, dec_emit_fn emit, void *ud) {
    if (now_ms < s->last_sweep_ms + DEC_SERVICE_SWEEP_MS)
        return 0;
    s->last_sweep_ms = now_ms;
    int ret = 0;
    for (size_t i = 0; i < s->cap;) {
        dec_req_t *q = s->slots[i];
        if (q && !q->tombstone && q->deadline_ms &&
            now_ms > q->deadline_ms + DEC_SERVICE_EXPIRE_GRACE_MS) {
            Omnipipe__Header h;
            ProtobufCBinaryData cid = {.len = q->client_id_len, .data = q->client_id};
            s_header(&h, NULL, q->request_id, cid);
            char msg[] =
                "request passed its deadline without a last step from the engine, dropping";
            int r = s_fail_here(s, q, &h, -ETIMEDOUT, msg, now_ms, emit, ud);
            if (r < 0 && ret == 0)
                ret = r;
        }
        if (q && q->tombstone && q->tomb_until_ms == 0)
            q->tomb_until_ms = now_ms + DEC_SERVICE_TOMBSTONE_MS;
        if (q && q->tombstone && now_ms >= q->tomb_until_ms)
            s_remove_slot(s, i); /* slot i may now hold a shifted entry: look again */
        else
            i++;
    }
    return ret;
}

// --- envelopes -----------------------------------------------------------------------------------

/* The header of an outgoing envelope: the step's header when it carries one (stage times), with
 * version and addressing always set from the step. */
static void s_header(Omnipipe__Header *h, const Omnipipe__Header *from, uint64_t request_id,
                     ProtobufCBinaryData client_id) {
    if (from) {
        *h = *from; /* shallow: borrowed pointers, valid during emit */
    } else {
        Omnipipe__Header init = OMNIPIPE__HEADER__INIT;
        *h = init;
    }
    h->has_proto_version = true;
    h->proto_version = OM_PROTO_VERSION;
    h->has_request_id = true;
    h->request_id = request_id;
    h->has_client_id = true;
    h->client_id = client_id;
}

static int s_emit_status(dec_emit_fn emit, void *ud, Omnipipe__Header *h, Omnipipe__Status *st) {
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    env.header = h;
    env.body_case = OMNIPIPE__ENVELOPE__BODY_STATUS;
    env.status = st;
    return emit(ud, h, &env);
}

/* A Status originated here (stage "decoder"). msg is copied by the caller's emit if needed. */
static int s_emit_own_status(dec_emit_fn emit, void *ud, Omnipipe__Header *h, int neg_errno,
                             char *msg) {
    Omnipipe__Status st = OMNIPIPE__STATUS__INIT;
    st.has_code = true;
    st.code = (Omnipipe__Code)om_err_to_code(neg_errno);
    st.message = msg;
    st.stage = (char *)OM_STAGE_DECODER;
    st.has_retryable = true;
    st.retryable = om_err_retryable(neg_errno);
    return s_emit_status(emit, ud, h, &st);
}

// --- request handling ----------------------------------------------------------------------------

/* Creates the state of a request from its first step. On a bad field writes a message into err. */
static int s_req_start(dec_service_t *s, dec_req_t *q, const Omnipipe__SeqStep *st, char *err,
                       size_t errlen) {
    const Omnipipe__SamplingParams *sp = st->sampling;
    dec_stream_opts_t o = {.skip_special_tokens = true};
    if (sp) {
        if (sp->has_skip_special_tokens)
            o.skip_special_tokens = sp->skip_special_tokens;
        o.include_stop_str_in_output =
            sp->has_include_stop_str_in_output && sp->include_stop_str_in_output;
        if (sp->n_stop_token_ids > DEC_SERVICE_MAX_STOP_IDS) {
            snprintf(err, errlen, "sampling.stop_token_ids: %zu entries, at most %d",
                     sp->n_stop_token_ids, DEC_SERVICE_MAX_STOP_IDS);
            return -EINVAL;
        }
        if (sp->n_stop > s->cap_stop_ptrs) {
            const char **p = realloc(s->stop_ptrs, sp->n_stop * sizeof(*p));
            if (!p)
                return -ENOMEM;
            s->stop_ptrs = p;
            s->cap_stop_ptrs = sp->n_stop;
        }
        for (size_t i = 0; i < sp->n_stop; i++) {
            if (!sp->stop[i]) {
                snprintf(err, errlen, "sampling.stop[%zu]: missing", i);
                return -EINVAL;
            }
            s->stop_ptrs[i] = sp->stop[i];
        }
        o.stop = s->stop_ptrs;
        o.n_stop = sp->n_stop;
        if (sp->n_stop_token_ids > 0) {
            q->stop_ids = malloc(sp->n_stop_token_ids * sizeof(int32_t));
            if (!q->stop_ids)
                return -ENOMEM;
            memcpy(q->stop_ids, sp->stop_token_ids, sp->n_stop_token_ids * sizeof(int32_t));
            q->n_stop_ids = sp->n_stop_token_ids;
        }
    }
    o.split_reasoning = st->has_split_reasoning && st->split_reasoning;
    o.reasoning_starts_open = st->has_reasoning_starts_open && st->reasoning_starts_open;
    int r = dec_stream_new(s->vocab, &o, &q->stream);
    if (r == -E2BIG) {
        snprintf(err, errlen,
                 "sampling.stop: too many or too long stop strings (at most 64 of "
                 "at most 4096 bytes)");
        return -EINVAL;
    }
    if (r < 0) {
        snprintf(err, errlen, "sampling.stop: invalid stop strings");
        return r;
    }
    s->n_live++;
    q->include_stop = o.include_stop_str_in_output;
    q->split = o.split_reasoning;
    q->stream_deltas = st->has_stream && st->stream;
    if (st->header && st->header->has_deadline_unix_ms)
        q->deadline_ms = st->header->deadline_unix_ms;
    if (st->has_prompt_tokens)
        q->prompt_tokens = st->prompt_tokens;
    if (st->has_cached_tokens)
        q->cached_tokens = st->cached_tokens;
    return 0;
}

static int s_ids_append(dec_req_t *q, const int32_t *ids, size_t n) {
    if (q->n_ids + n > q->cap_ids) {
        size_t cap = q->cap_ids ? q->cap_ids : 64;
        while (cap < q->n_ids + n)
            cap *= 2;
        int32_t *p = realloc(q->ids, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        q->ids = p;
        q->cap_ids = cap;
    }
    if (n)
        memcpy(q->ids + q->n_ids, ids, n * sizeof(*ids));
    q->n_ids += n;
    return 0;
}

/* Ends a request at the decoder with a Status (our own error) and asks upstream to abort it. */
static int s_fail_here(dec_service_t *s, dec_req_t *q, Omnipipe__Header *h, int neg_errno,
                       char *msg, uint64_t now_ms, dec_emit_fn emit, void *ud) {
    int r = s_emit_own_status(emit, ud, h, neg_errno, msg);
    if (s->stop_fn)
        s->stop_fn(s->stop_ud, h);
    if (q)
        s_tombstone(s, q, now_ms);
    return r;
}

/* One request's share of a step. Returns emit's first error (state is kept consistent anyway). */
static int s_step(dec_service_t *s, const Omnipipe__SeqStep *st, uint64_t now_ms, dec_emit_fn emit,
                  void *ud) {
    const uint8_t *cid = st->client_id.data;
    size_t cid_len = st->client_id.len;
    uint64_t rid = st->request_id;
    Omnipipe__FinishReason finish =
        st->has_finish ? st->finish : OMNIPIPE__FINISH_REASON__FINISH_NONE;
    bool finishing = finish != OMNIPIPE__FINISH_REASON__FINISH_NONE;
    Omnipipe__Header h;
    s_header(&h, st->header, rid, st->client_id);

    size_t slot = 0;
    dec_req_t *q = s_lookup(s, cid, cid_len, rid, &slot);
    if (q && q->tombstone) {
        if (finishing)
            s_remove_slot(s, slot); /* the engine is done with it: forget the tombstone */
        return 0;
    }
    if (finish == OMNIPIPE__FINISH_REASON__FINISH_ERROR) {
        int r;
        if (st->error) {
            r = s_emit_status(emit, ud, &h, st->error); /* forwarded unchanged */
        } else {
            char msg[] = "engine reported FINISH_ERROR without a status";
            r = s_emit_own_status(emit, ud, &h, -EPROTO, msg);
        }
        if (q)
            s_remove_slot(s, slot);
        return r;
    }
    char err[160];
    if (!q) {
        int r = s_insert(s, cid, cid_len, rid, &q);
        if (r < 0) {
            snprintf(err, sizeof(err), "decoder out of memory for a new request");
            return s_fail_here(s, NULL, &h, r, err, now_ms, emit, ud);
        }
        err[0] = '\0';
        r = s_req_start(s, q, st, err, sizeof(err));
        if (r < 0) {
            if (!err[0])
                snprintf(err, sizeof(err), "decoder could not start the request");
            return s_fail_here(s, q, &h, r, err, now_ms, emit, ud);
        }
    }
    if (st->has_completion_tokens)
        q->completion_tokens = st->completion_tokens;

    int r = s_ids_append(q, st->token_ids, st->n_token_ids);
    dec_delta_t d = {0};
    if (r == 0) {
        size_t n_push = st->n_token_ids;
        /* eos / stop token ids end the request but are not part of the text (vLLM) */
        if (finish == OMNIPIPE__FINISH_REASON__FINISH_STOP && !q->include_stop && n_push > 0)
            n_push--;
        r = dec_stream_push(q->stream, st->token_ids, n_push, finishing, &d);
    }
    if (r < 0) {
        snprintf(err, sizeof(err), "detokenization failed: %s", strerror(-r));
        return s_fail_here(s, q, &h, r, err, now_ms, emit, ud);
    }
    bool stopped_here = d.stopped && !finishing;
    if (d.stopped)
        finish = OMNIPIPE__FINISH_REASON__FINISH_STOP_STRING;

    int ret = 0;
    if (q->stream_deltas && (d.text_len > 0 || d.reasoning_len > 0 || st->n_logprobs > 0)) {
        Omnipipe__TextDelta td = OMNIPIPE__TEXT_DELTA__INIT;
        Omnipipe__Header dh;
        s_header(&dh, NULL, rid, st->client_id);
        if (s_dbuf_set(&s->text, d.text, d.text_len) < 0 ||
            s_dbuf_set(&s->reasoning, d.reasoning, d.reasoning_len) < 0) {
            snprintf(err, sizeof(err), "decoder out of memory");
            return s_fail_here(s, q, &h, -ENOMEM, err, now_ms, emit, ud);
        }
        if (d.text_len > 0) {
            td.has_text = true;
            td.text.data = (uint8_t *)s->text.p;
            td.text.len = d.text_len;
        }
        if (d.reasoning_len > 0) {
            td.has_reasoning_text = true;
            td.reasoning_text.data = (uint8_t *)s->reasoning.p;
            td.reasoning_text.len = d.reasoning_len;
        }
        td.n_token_ids = q->n_ids - q->n_ids_sent;
        td.token_ids = q->ids + q->n_ids_sent;
        td.n_logprobs = st->n_logprobs;
        td.logprobs = st->logprobs;
        Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
        env.header = &dh;
        env.body_case = OMNIPIPE__ENVELOPE__BODY_DELTA;
        env.delta = &td;
        q->n_ids_sent = q->n_ids;
        ret = emit(ud, &dh, &env);
    }
    if (finish == OMNIPIPE__FINISH_REASON__FINISH_NONE)
        return ret;

    /* Final: the whole text (content part when split), usage, finish reason */
    size_t text_len = 0, reason_len = 0;
    const char *text = dec_stream_text(q->stream, &text_len);
    const char *reason = dec_stream_reasoning(q->stream, &reason_len);
    if (s_dbuf_set(&s->text, text, text_len) < 0 ||
        s_dbuf_set(&s->reasoning, reason, reason_len) < 0) {
        snprintf(err, sizeof(err), "decoder out of memory");
        return s_fail_here(s, q, &h, -ENOMEM, err, now_ms, emit, ud);
    }
    Omnipipe__Final fin = OMNIPIPE__FINAL__INIT;
    Omnipipe__Usage usage = OMNIPIPE__USAGE__INIT;
    char stop_id[16];
    fin.has_text = true;
    fin.text.data = (uint8_t *)s->text.p;
    fin.text.len = text_len;
    if (q->split && reason_len > 0) {
        fin.has_reasoning_content = true;
        fin.reasoning_content.data = (uint8_t *)s->reasoning.p;
        fin.reasoning_content.len = reason_len;
    }
    fin.n_token_ids = q->n_ids;
    fin.token_ids = q->ids;
    fin.has_finish = true;
    fin.finish = finish;
    if (d.stopped) {
        fin.stop_reason = (char *)d.stop_str;
    } else if (finish == OMNIPIPE__FINISH_REASON__FINISH_STOP && q->n_ids > 0) {
        int32_t last = q->ids[q->n_ids - 1];
        for (size_t i = 0; i < q->n_stop_ids; i++) {
            if (q->stop_ids[i] == last) {
                snprintf(stop_id, sizeof(stop_id), "%" PRId32, last);
                fin.stop_reason = stop_id;
                break;
            }
        }
    }
    usage.has_prompt_tokens = true;
    usage.prompt_tokens = q->prompt_tokens;
    usage.has_completion_tokens = true;
    usage.completion_tokens = q->completion_tokens ? q->completion_tokens : (uint32_t)q->n_ids;
    usage.has_cached_tokens = true;
    usage.cached_tokens = q->cached_tokens;
    fin.usage = &usage;
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    env.header = &h;
    env.body_case = OMNIPIPE__ENVELOPE__BODY_FINAL;
    env.final = &fin;
    int r2 = emit(ud, &h, &env);
    if (ret == 0)
        ret = r2;
    if (stopped_here) {
        if (s->stop_fn)
            s->stop_fn(s->stop_ud, &h);
        s_tombstone(s, q, now_ms);
    } else {
        s_lookup(s, cid, cid_len, rid, &slot);
        s_remove_slot(s, slot);
    }
    return ret;
}

// --- public API ----------------------------------------------------------------------------------

int dec_service_new_with_vocab(const om_vocab_t *vocab, dec_service_t **ret) {
    if (!vocab || !ret)
        return -EINVAL;
    dec_service_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->vocab = vocab;
    int r = s_grow(s);
    if (r < 0) {
        free(s);
        return r;
    }
    *ret = s;
    return 0;
}

int dec_service_new(const char *model_dir, dec_service_t **ret, char *err, size_t errlen) {
    if (!model_dir || !ret) {
        if (err && errlen)
            snprintf(err, errlen, "dec_service_new: model_dir missing");
        return -EINVAL;
    }
    om_vocab_t *v = NULL;
    int r = om_vocab_load(model_dir, &v, err, errlen);
    if (r < 0)
        return r;
    dec_service_t *s = NULL;
    r = dec_service_new_with_vocab(v, &s);
    if (r < 0) {
        om_vocab_free(v);
        if (err && errlen)
            snprintf(err, errlen, "dec_service_new: %s", strerror(-r));
        return r;
    }
    s->owned_vocab = v;
    *ret = s;
    return 0;
}

dec_service_t *dec_service_free(dec_service_t *s) {
    if (!s)
        return NULL;
    for (size_t i = 0; i < s->cap; i++)
        s_req_free(s->slots[i]);
    free(s->slots);
    free(s->text.p);
    free(s->reasoning.p);
    free(s->stop_ptrs);
    om_vocab_free(s->owned_vocab);
    free(s);
    return NULL;
}

int dec_service_handle_batch(dec_service_t *s, const Omnipipe__TokenBatch *b, uint64_t now_ms,
                             dec_emit_fn emit, void *ud) {
    if (!s || !b || !emit)
        return -EINVAL;
    if (now_ms > s->last_now_ms)
        s->last_now_ms = now_ms;
    int ret = s_sweep(s, now_ms, emit, ud);
    bool bad = false;
    for (size_t i = 0; i < b->n_seqs; i++) {
        const Omnipipe__SeqStep *st = b->seqs[i];
        if (!st || !st->has_request_id || !st->has_client_id || st->client_id.len == 0 ||
            (st->n_token_ids > 0 && !st->token_ids)) {
            bad = true;
            continue;
        }
        int r = s_step(s, st, now_ms, emit, ud);
        if (r < 0 && ret == 0)
            ret = r;
    }
    if (ret == 0 && bad)
        ret = -EBADMSG;
    return ret;
}

int dec_service_tick(dec_service_t *s, uint64_t now_ms, dec_emit_fn emit, void *ud) {
    if (!s || !emit)
        return -EINVAL;
    if (now_ms > s->last_now_ms)
        s->last_now_ms = now_ms;
    return s_sweep(s, now_ms, emit, ud);
}

int dec_service_abort(dec_service_t *s, const uint8_t *client_id, size_t len, uint64_t request_id) {
    if (!s || !client_id || len == 0)
        return -EINVAL;
    dec_req_t *q = s_lookup(s, client_id, len, request_id, NULL);
    if (q) {
        bool live = !q->tombstone;
        s_tombstone(s, q, s->last_now_ms);
        return live ? 0 : -ENOENT;
    }
    int r = s_insert(s, client_id, len, request_id, &q);
    if (r < 0)
        return r;
    s_tombstone(s, q, s->last_now_ms);
    return -ENOENT;
}

int dec_service_fail(dec_service_t *s, const Omnipipe__Header *hdr, const Omnipipe__Status *st,
                     dec_emit_fn emit, void *ud) {
    if (!s || !hdr || !st || !emit || !hdr->has_client_id || hdr->client_id.len == 0 ||
        !hdr->has_request_id)
        return -EINVAL;
    size_t slot = 0;
    dec_req_t *q = s_lookup(s, hdr->client_id.data, hdr->client_id.len, hdr->request_id, &slot);
    if (q)
        s_remove_slot(s, slot);
    Omnipipe__Header h;
    s_header(&h, hdr, hdr->request_id, hdr->client_id);
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    env.header = &h;
    env.body_case = OMNIPIPE__ENVELOPE__BODY_STATUS;
    env.status = (Omnipipe__Status *)st;
    return emit(ud, &h, &env);
}

void dec_service_set_stop_callback(dec_service_t *s, dec_stop_fn fn, void *ud) {
    if (!s)
        return;
    s->stop_fn = fn;
    s->stop_ud = ud;
}

size_t dec_service_n_requests(const dec_service_t *s) {
    return s ? s->n_live : 0;
}
