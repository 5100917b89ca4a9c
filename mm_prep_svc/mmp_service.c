/* mmp_service.c: text-only preparation and the least-loaded engine router; see mmp_service.h. */
#include "mmp_service.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_msg.h"

#define MMP_ID_MAX 64 /* bytes of a routing identity we keep */

typedef struct mmp_key {
    uint8_t client_id[MMP_ID_MAX]; /* client routing identity */
    size_t client_id_len;          /* bytes */
    uint64_t request_id;
} mmp_key_t;

typedef struct mmp_engine {
    uint8_t ident[MMP_ID_MAX]; /* zmq routing identity of the engine's DEALER */
    size_t ident_len;          /* bytes */
    char engine_id[64];        /* EngineLoad.engine_id */
    uint64_t last_seen_ms;     /* now_ms of the last frame */
    uint32_t running, waiting; /* last report */
    uint32_t credits;          /* last report */
    uint32_t assigned_since;   /* requests sent since the last report */
    double kv_free_frac;       /* kv_blocks_free / total at the last report, 1 if unknown */
    size_t n_inflight;         /* assigned, not done */
    uint32_t max_running;      /* last report */
    uint64_t kv_blocks_total;  /* last report, blocks */
    uint64_t kv_blocks_free;   /* last report, blocks (free + evictable cached) */
    uint64_t prefix_hits;      /* last report, tokens served from the prefix cache (cumulative) */
    uint64_t prefix_queries;   /* last report, prompt tokens looked up (cumulative) */
} mmp_engine_t;

typedef struct mmp_inflight {
    mmp_key_t key;
    size_t engine;         /* index into engines */
    uint64_t deadline_ms;  /* wall ms */
} mmp_inflight_t;

typedef struct mmp_queued {
    mmp_key_t key;
    uint64_t deadline_ms;  /* wall ms */
    uint64_t queued_ms;    /* now_ms when queued */
    uint8_t *frame;        /* packed prepared envelope (malloc'd) */
    size_t frame_len;      /* bytes */
} mmp_queued_t;

struct mmp_service {
    mmp_service_opts_t o;
    mmp_engine_t *engines;
    size_t n_engines, cap_engines;
    mmp_inflight_t *inflight;
    size_t n_inflight, cap_inflight;
    mmp_queued_t *queue; /* FIFO: index 0 is the oldest */
    size_t n_queued, cap_queued;
    om_arena_t *scratch; /* per event */
};

int mmp_service_new(const mmp_service_opts_t *opts, mmp_service_t **ret) {
    mmp_service_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    if (opts)
        s->o = *opts;
    if (!s->o.heartbeat_ms)
        s->o.heartbeat_ms = 500;
    if (!s->o.liveness)
        s->o.liveness = 4;
    if (!s->o.max_queued)
        s->o.max_queued = 4096;
    int r = om_arena_new(0, &s->scratch);
    if (r < 0) {
        free(s);
        return r;
    }
    *ret = s;
    return 0;
}

mmp_service_t *mmp_service_free(mmp_service_t *s) {
    if (!s)
        return NULL;
    for (size_t i = 0; i < s->n_queued; i++)
        free(s->queue[i].frame);
    free(s->queue);
    free(s->engines);
    free(s->inflight);
    om_arena_free(s->scratch);
    free(s);
    return NULL;
}

static int s_grow(void **v, size_t *cap, size_t n, size_t elem) {
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*v, c * elem);
    if (!p)
        return -ENOMEM;
    *v = p;
    *cap = c;
    return 0;
}

static bool s_key_from_header(const Omnipipe__Header *h, mmp_key_t *k) {
    if (!h || !h->has_client_id || !h->has_request_id || h->client_id.len > MMP_ID_MAX)
        return false;
    memcpy(k->client_id, h->client_id.data, h->client_id.len);
    k->client_id_len = h->client_id.len;
    k->request_id = h->request_id;
    return true;
}

static bool s_key_eq(const mmp_key_t *a, const uint8_t *cid, size_t len, uint64_t rid) {
    return a->request_id == rid && a->client_id_len == len && memcmp(a->client_id, cid, len) == 0;
}

// --- preparation -------------------------------------------------------------------------------

int mmp_service_prepare(const Omnipipe__Envelope *in, uint64_t now_ms, om_arena_t *a,
                        Omnipipe__Envelope **ret_out) {
    Omnipipe__Header *h = om_msg_header_copy(a, in->header);
    if (!h)
        return -ENOMEM;
    int err = 0;
    const char *msg = NULL;
    char buf[256];
    if (in->body_case != OMNIPIPE__ENVELOPE__BODY_TOKENIZED) {
        err = -EINVAL;
        msg = "expected a TokenizedRequest body";
    } else if (in->tokenized->n_media > 0) {
        err = -EOPNOTSUPP;
        msg = "multimodal input is not supported yet (stage mm_prep)";
    } else if (in->tokenized->n_ids == 0) {
        err = -EINVAL;
        msg = "tokenized.ids: empty prompt";
    } else if (h->has_deadline_unix_ms && h->deadline_unix_ms && h->deadline_unix_ms <= now_ms) {
        err = -ETIMEDOUT;
        snprintf(buf, sizeof buf, "deadline passed %" PRIu64 " ms before mm_prep",
                 now_ms - h->deadline_unix_ms);
        msg = buf;
    }
    if (err) {
        Omnipipe__Envelope *env =
            om_msg_status_env(a, h, om_msg_status(a, err, OM_STAGE_MM_PREP, "%s", msg));
        if (!env)
            return -ENOMEM;
        *ret_out = env;
        return 0;
    }
    const Omnipipe__TokenizedRequest *t = in->tokenized;
    size_t n = t->n_ids;
    Omnipipe__PreparedRequest *p = om_arena_alloc(a, sizeof *p);
    Omnipipe__Tensor *pos = om_arena_alloc(a, sizeof *pos);
    int64_t *shape = om_arena_alloc(a, 2 * sizeof *shape);
    uint8_t *data = om_arena_alloc(a, 3 * n * sizeof(int32_t));
    Omnipipe__Envelope *out = om_arena_alloc(a, sizeof *out);
    if (!p || !pos || !shape || !data || !out)
        return -ENOMEM;
    omnipipe__prepared_request__init(p);
    omnipipe__tensor__init(pos);
    shape[0] = 3;
    shape[1] = (int64_t)n;
    for (size_t row = 0; row < 3; row++)
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)i; /* little endian int32 */
            uint8_t *q = data + (row * n + i) * 4;
            q[0] = (uint8_t)v;
            q[1] = (uint8_t)(v >> 8);
            q[2] = (uint8_t)(v >> 16);
            q[3] = (uint8_t)(v >> 24);
        }
    pos->has_dtype = true;
    pos->dtype = OMNIPIPE__TENSOR__DTYPE__I32;
    pos->shape = shape;
    pos->n_shape = 2;
    pos->has_data = true;
    pos->data.data = data;
    pos->data.len = 3 * n * sizeof(int32_t);
    pos->name = "positions";
    p->ids = t->ids;
    p->n_ids = n;
    p->positions = pos;
    p->sampling = t->sampling;
    p->has_rope_delta = true;
    p->rope_delta = 0;
    p->has_split_reasoning = t->has_split_reasoning;
    p->split_reasoning = t->split_reasoning;
    p->has_reasoning_starts_open = t->has_reasoning_starts_open;
    p->reasoning_starts_open = t->reasoning_starts_open;
    p->has_stream = t->has_stream;
    p->stream = t->stream;
    omnipipe__envelope__init(out);
    out->header = h;
    out->body_case = OMNIPIPE__ENVELOPE__BODY_PREPARED;
    out->prepared = p;
    *ret_out = out;
    return 0;
}

// --- routing -----------------------------------------------------------------------------------

static bool s_alive(const mmp_service_t *s, const mmp_engine_t *e, uint64_t now_ms) {
    return now_ms <= e->last_seen_ms + s->o.heartbeat_ms * s->o.liveness;
}

static int64_t s_credit(const mmp_engine_t *e) {
    return (int64_t)e->credits - (int64_t)e->assigned_since;
}

/* least loaded live engine with credit; -1 if none */
static long s_pick(const mmp_service_t *s, uint64_t now_ms) {
    long best = -1;
    for (size_t i = 0; i < s->n_engines; i++) {
        const mmp_engine_t *e = &s->engines[i];
        if (!s_alive(s, e, now_ms) || s_credit(e) <= 0)
            continue;
        if (best < 0) {
            best = (long)i;
            continue;
        }
        const mmp_engine_t *b = &s->engines[best];
        uint64_t le = (uint64_t)e->running + e->waiting + e->assigned_since;
        uint64_t lb = (uint64_t)b->running + b->waiting + b->assigned_since;
        if (le < lb || (le == lb && e->kv_free_frac > b->kv_free_frac))
            best = (long)i;
    }
    return best;
}

static bool s_any_alive(const mmp_service_t *s, uint64_t now_ms) {
    for (size_t i = 0; i < s->n_engines; i++)
        if (s_alive(s, &s->engines[i], now_ms))
            return true;
    return false;
}

static int s_fail_key(mmp_service_t *s, const mmp_key_t *k, uint64_t deadline_ms, int err,
                      const char *stage, const char *msg, mmp_emit_fn emit, void *ud) {
    om_arena_reset(s->scratch);
    Omnipipe__Header *h = om_msg_header_new(s->scratch, k->request_id, k->client_id, k->client_id_len);
    if (!h)
        return -ENOMEM;
    if (deadline_ms) {
        h->has_deadline_unix_ms = true;
        h->deadline_unix_ms = deadline_ms;
    }
    Omnipipe__Envelope *env = om_msg_status_env(s->scratch, h, om_msg_status(s->scratch, err, stage, "%s", msg));
    if (!env)
        return -ENOMEM;
    return emit(ud, MMP_TO_DECODER, NULL, 0, env);
}

/* sends queue[qi] to engine ei and records it in flight; removes it from the queue */
static int s_dispatch(mmp_service_t *s, size_t qi, size_t ei, mmp_emit_fn emit, void *ud) {
    mmp_queued_t q = s->queue[qi];
    memmove(&s->queue[qi], &s->queue[qi + 1], (s->n_queued - qi - 1) * sizeof *s->queue);
    s->n_queued--;
    mmp_engine_t *e = &s->engines[ei];
    om_arena_reset(s->scratch);
    Omnipipe__Envelope *env;
    int r = om_msg_unpack(s->scratch, q.frame, q.frame_len, &env);
    free(q.frame);
    if (r < 0)
        return r;
    env->header->engine_id = e->engine_id;
    if ((r = s_grow((void **)&s->inflight, &s->cap_inflight, s->n_inflight, sizeof *s->inflight)) < 0)
        return r;
    s->inflight[s->n_inflight++] = (mmp_inflight_t){.key = q.key, .engine = ei, .deadline_ms = q.deadline_ms};
    e->assigned_since++;
    e->n_inflight++;
    return emit(ud, MMP_TO_ENGINE, e->ident, e->ident_len, env);
}

/* moves queued requests to engines with credit, oldest first */
static int s_drain_queue(mmp_service_t *s, uint64_t now_ms, mmp_emit_fn emit, void *ud) {
    int first = 0;
    while (s->n_queued) {
        long ei = s_pick(s, now_ms);
        if (ei < 0)
            break;
        int r = s_dispatch(s, 0, (size_t)ei, emit, ud);
        if (r < 0 && !first)
            first = r;
    }
    return first;
}

static int s_enqueue(mmp_service_t *s, const Omnipipe__Envelope *prepared, uint64_t now_ms,
                     mmp_emit_fn emit, void *ud) {
    mmp_key_t k;
    if (!s_key_from_header(prepared->header, &k))
        return -EBADMSG;
    uint64_t deadline = prepared->header->has_deadline_unix_ms ? prepared->header->deadline_unix_ms : 0;
    if (s->n_queued >= s->o.max_queued)
        return s_fail_key(s, &k, deadline, -EBUSY, OM_STAGE_MM_PREP,
                          "too many requests waiting for an engine with free capacity", emit, ud);
    size_t len = omnipipe__envelope__get_packed_size(prepared);
    uint8_t *frame = malloc(len);
    if (!frame)
        return -ENOMEM;
    omnipipe__envelope__pack(prepared, frame);
    int r = s_grow((void **)&s->queue, &s->cap_queued, s->n_queued, sizeof *s->queue);
    if (r < 0) {
        free(frame);
        return r;
    }
    s->queue[s->n_queued++] = (mmp_queued_t){.key = k, .deadline_ms = deadline, .queued_ms = now_ms,
                                             .frame = frame, .frame_len = len};
    return s_drain_queue(s, now_ms, emit, ud);
}

static int s_abort(mmp_service_t *s, const Omnipipe__Envelope *in, mmp_emit_fn emit, void *ud) {
    mmp_key_t k;
    if (!s_key_from_header(in->header, &k))
        return -EBADMSG;
    for (size_t i = 0; i < s->n_queued; i++)
        if (s_key_eq(&s->queue[i].key, k.client_id, k.client_id_len, k.request_id)) {
            uint64_t deadline = s->queue[i].deadline_ms;
            free(s->queue[i].frame);
            memmove(&s->queue[i], &s->queue[i + 1], (s->n_queued - i - 1) * sizeof *s->queue);
            s->n_queued--;
            return s_fail_key(s, &k, deadline, -ECANCELED, OM_STAGE_MM_PREP,
                              "aborted before an engine took it", emit, ud);
        }
    for (size_t i = 0; i < s->n_inflight; i++)
        if (s_key_eq(&s->inflight[i].key, k.client_id, k.client_id_len, k.request_id)) {
            mmp_engine_t *e = &s->engines[s->inflight[i].engine];
            return emit(ud, MMP_TO_ENGINE, e->ident, e->ident_len, in);
        }
    return 0; /* unknown: already finished or failed */
}

int mmp_service_on_upstream(mmp_service_t *s, const Omnipipe__Envelope *in, uint64_t now_ms,
                            mmp_emit_fn emit, void *ud) {
    if (in->body_case == OMNIPIPE__ENVELOPE__BODY_ABORT)
        return s_abort(s, in, emit, ud);
    if (in->body_case == OMNIPIPE__ENVELOPE__BODY_CONTROL)
        return 0;
    if (in->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS) /* an upstream error: forward unchanged */
        return emit(ud, MMP_TO_DECODER, NULL, 0, in);
    om_arena_t *a;
    int r = om_arena_new(0, &a);
    if (r < 0)
        return r;
    Omnipipe__Envelope *out;
    r = mmp_service_prepare(in, now_ms, a, &out);
    if (r == 0) {
        if (out->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS)
            r = emit(ud, MMP_TO_DECODER, NULL, 0, out);
        else
            r = s_enqueue(s, out, now_ms, emit, ud);
    }
    om_arena_free(a);
    return r;
}

static void s_done(mmp_service_t *s, const uint8_t *cid, size_t len, uint64_t rid) {
    for (size_t i = 0; i < s->n_inflight; i++)
        if (s_key_eq(&s->inflight[i].key, cid, len, rid)) {
            mmp_engine_t *e = &s->engines[s->inflight[i].engine];
            if (e->n_inflight)
                e->n_inflight--;
            s->inflight[i] = s->inflight[--s->n_inflight];
            return;
        }
}

/* removes engine ei, failing its in-flight requests */
static int s_remove_engine(mmp_service_t *s, size_t ei, const char *why, mmp_emit_fn emit, void *ud) {
    int first = 0;
    char msg[256];
    snprintf(msg, sizeof msg, "engine '%s' %s; the request was lost with it, retry",
             s->engines[ei].engine_id, why);
    for (size_t i = 0; i < s->n_inflight;) {
        if (s->inflight[i].engine != ei) {
            i++;
            continue;
        }
        mmp_inflight_t f = s->inflight[i];
        s->inflight[i] = s->inflight[--s->n_inflight];
        int r = s_fail_key(s, &f.key, f.deadline_ms, -EHOSTDOWN, OM_STAGE_ENGINE, msg, emit, ud);
        if (r < 0 && !first)
            first = r;
    }
    size_t last = s->n_engines - 1;
    if (ei != last) {
        s->engines[ei] = s->engines[last];
        for (size_t i = 0; i < s->n_inflight; i++)
            if (s->inflight[i].engine == last)
                s->inflight[i].engine = ei;
    }
    s->n_engines--;
    return first;
}

int mmp_service_on_engine(mmp_service_t *s, const uint8_t *ident, size_t ident_len,
                          const Omnipipe__Envelope *in, uint64_t now_ms, mmp_emit_fn emit, void *ud) {
    if (ident_len == 0 || ident_len > MMP_ID_MAX || in->body_case != OMNIPIPE__ENVELOPE__BODY_CONTROL)
        return -EBADMSG;
    long ei = -1;
    for (size_t i = 0; i < s->n_engines; i++)
        if (s->engines[i].ident_len == ident_len && memcmp(s->engines[i].ident, ident, ident_len) == 0)
            ei = (long)i;
    const Omnipipe__Control *c = in->control;
    if (c->kind_case == OMNIPIPE__CONTROL__KIND_DISCONNECT)
        return ei < 0 ? 0 : s_remove_engine(s, (size_t)ei, "disconnected", emit, ud);
    if (c->kind_case != OMNIPIPE__CONTROL__KIND_HEARTBEAT)
        return 0;
    if (ei < 0) {
        int r = s_grow((void **)&s->engines, &s->cap_engines, s->n_engines, sizeof *s->engines);
        if (r < 0)
            return r;
        ei = (long)s->n_engines++;
        mmp_engine_t *e = &s->engines[ei];
        memset(e, 0, sizeof *e);
        memcpy(e->ident, ident, ident_len);
        e->ident_len = ident_len;
        e->kv_free_frac = 1.0;
        snprintf(e->engine_id, sizeof e->engine_id, "engine-%ld", ei);
    }
    mmp_engine_t *e = &s->engines[ei];
    e->last_seen_ms = now_ms;
    const Omnipipe__Heartbeat *hb = c->heartbeat;
    for (size_t i = 0; i < hb->n_done; i++)
        if (hb->done[i]->has_request_id)
            s_done(s, hb->done[i]->client_id.data, hb->done[i]->client_id.len, hb->done[i]->request_id);
    if (hb->load) {
        const Omnipipe__EngineLoad *l = hb->load;
        if (l->engine_id)
            snprintf(e->engine_id, sizeof e->engine_id, "%s", l->engine_id);
        e->running = l->running;
        e->waiting = l->waiting;
        e->credits = l->credits;
        e->assigned_since = 0;
        e->kv_free_frac = l->kv_blocks_total ? (double)l->kv_blocks_free / (double)l->kv_blocks_total : 1.0;
        e->max_running = l->max_running;
        e->kv_blocks_total = l->kv_blocks_total;
        e->kv_blocks_free = l->kv_blocks_free;
        e->prefix_hits = l->prefix_cache_hits;
        e->prefix_queries = l->prefix_cache_queries;
    }
    return s_drain_queue(s, now_ms, emit, ud);
}

int mmp_service_tick(mmp_service_t *s, uint64_t now_ms, mmp_emit_fn emit, void *ud) {
    int first = 0, r;
    char msg[256];
    for (size_t i = 0; i < s->n_engines;) {
        if (s_alive(s, &s->engines[i], now_ms)) {
            i++;
            continue;
        }
        snprintf(msg, sizeof msg, "stopped sending heartbeats (%" PRIu64 " ms)",
                 now_ms - s->engines[i].last_seen_ms);
        if ((r = s_remove_engine(s, i, msg, emit, ud)) < 0 && !first)
            first = r;
    }
    if ((r = s_drain_queue(s, now_ms, emit, ud)) < 0 && !first)
        first = r;
    bool any = s_any_alive(s, now_ms);
    uint64_t window = s->o.heartbeat_ms * s->o.liveness;
    for (size_t i = 0; i < s->n_queued;) {
        mmp_queued_t *q = &s->queue[i];
        int err = 0;
        const char *stage = OM_STAGE_MM_PREP;
        if (q->deadline_ms && now_ms >= q->deadline_ms) {
            err = -ETIMEDOUT;
            snprintf(msg, sizeof msg, "deadline passed while waiting %" PRIu64 " ms for engine capacity",
                     now_ms - q->queued_ms);
        } else if (!any && now_ms >= q->queued_ms + window) {
            err = -EHOSTDOWN;
            stage = OM_STAGE_ENGINE;
            snprintf(msg, sizeof msg, "no engine attached to mm_prep (waited %" PRIu64 " ms)",
                     now_ms - q->queued_ms);
        }
        if (!err) {
            i++;
            continue;
        }
        mmp_queued_t dead = *q;
        memmove(&s->queue[i], &s->queue[i + 1], (s->n_queued - i - 1) * sizeof *s->queue);
        s->n_queued--;
        free(dead.frame);
        if ((r = s_fail_key(s, &dead.key, dead.deadline_ms, err, stage, msg, emit, ud)) < 0 && !first)
            first = r;
    }
    /* in-flight entries far past their deadline were lost by a live engine: forget them */
    for (size_t i = 0; i < s->n_inflight;) {
        if (s->inflight[i].deadline_ms && now_ms > s->inflight[i].deadline_ms + 60000) {
            s_done(s, s->inflight[i].key.client_id, s->inflight[i].key.client_id_len,
                   s->inflight[i].key.request_id);
            continue;
        }
        i++;
    }
    return first;
}

size_t mmp_service_n_engines(const mmp_service_t *s) { return s->n_engines; }
size_t mmp_service_n_queued(const mmp_service_t *s) { return s->n_queued; }
size_t mmp_service_n_inflight(const mmp_service_t *s) { return s->n_inflight; }

int mmp_service_engine(const mmp_service_t *s, size_t i, mmp_engine_info_t *ret) {
    if (i >= s->n_engines)
        return -ENOENT;
    const mmp_engine_t *e = &s->engines[i];
    ret->engine_id = e->engine_id;
    ret->running = e->running;
    ret->waiting = e->waiting;
    ret->credit = s_credit(e);
    ret->n_inflight = e->n_inflight;
    ret->credits = e->credits;
    ret->max_running = e->max_running;
    ret->kv_blocks_total = e->kv_blocks_total;
    ret->kv_blocks_free = e->kv_blocks_free;
    ret->prefix_hits = e->prefix_hits;
    ret->prefix_queries = e->prefix_queries;
    return 0;
}
