/* cmd_replay.c: `omnipipe replay --stage NAME --capture DIR|FILE` feeds a stage's recorded inputs to
 * that stage's own handler (the same _core code the daemon ran), in recorded order and with the
 * recorded now_ms, and compares what the handler produces with the recorded outputs. Envelopes are
 * compared byte for byte after clearing stage timestamps (monotonic clock readings, the only field
 * that cannot replay). Differences are printed as text (om_pbtext) with -recorded/+replayed lines;
 * the exit status is 1 on any difference.
 *
 *   tokenizer  frontend IN -> tok_service_handle; outputs matched per request (workers reorder)
 *   mm_prep    upstream/engines IN and ticks -> mmp_service; outputs compared in order per socket
 *   engine     mm_prep IN -> eng_service_submit/abort; each recorded step TICK -> eng_service_step at
 *              its now_ms, so step boundaries and deadlines replay exactly; batches in order
 *   decoder    in IN -> dec_service_handle_batch / dec_service_fail, ticks -> dec_service_tick;
 *              outputs in order per socket
 * Heartbeats and other Control traffic are not compared (they carry pids and timer-driven loads).
 * Replies the daemon shell itself produced when a peer was down (UNAVAILABLE) are left out, with the
 * requests they answered. The model and options come from the capture's config entry (--model
 * overrides the model directory). */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "mmp_service.h"
#include "om_arena.h"
#include "om_capture.h"
#include "om_err.h"
#include "om_msg.h"
#include "om_pbtext.h"
#ifdef OM_HAVE_TOK_SERVICE
#include "tok_service.h"
#endif
#ifdef OM_HAVE_ENG_SERVICE
#include "eng_service.h"
#endif
#ifdef OM_HAVE_DEC_SERVICE
#include "dec_service.h"
#endif

// --- outputs -------------------------------------------------------------------------------------

typedef struct rp_out {
    char socket[32];   /* logical socket */
    uint8_t *ident;    /* routing identity frame or NULL (malloc'd) */
    size_t ident_len;
    uint8_t *data;     /* normalized envelope bytes (malloc'd) */
    size_t len;
    char key[160];     /* request key (client id / request id) for matching */
    bool used;
} rp_out_t;

typedef struct rp_outs {
    rp_out_t *v;
    size_t n, cap;
} rp_outs_t;

typedef struct rp {
    const char *stage;
    rp_outs_t produced, recorded;
    om_arena_t *a;      /* scratch */
    size_t n_inputs;    /* inputs fed */
    size_t n_diff;      /* differences found */
    bool verbose;
} rp_t;

static void s_clear_stages(Omnipipe__Header *h) {
    if (h) {
        h->n_stages = 0;
        h->stages = NULL;
    }
}

/* Unpacks, clears stage timestamps, repacks. Control envelopes give 1 (skip). */
static int s_normalize(om_arena_t *a, const uint8_t *data, size_t len, uint8_t **ret, size_t *ret_len,
                       Omnipipe__Envelope **ret_env) {
    Omnipipe__Envelope *env;
    if (om_msg_unpack(a, data, len, &env) < 0)
        return -EBADMSG;
    if (om_msg_is_control(env))
        return 1;
    s_clear_stages(env->header);
    if (env->body_case == OMNIPIPE__ENVELOPE__BODY_BATCH)
        for (size_t i = 0; i < env->batch->n_seqs; i++)
            s_clear_stages(env->batch->seqs[i]->header);
    int r = om_msg_pack(a, env, ret, ret_len);
    if (r == 0)
        *ret_env = env;
    return r;
}

static void s_key(const Omnipipe__Envelope *env, char *buf, size_t len) {
    const Omnipipe__Header *h = env->header;
    size_t n = 0;
    buf[0] = '\0';
    if (h && h->has_client_id)
        for (size_t i = 0; i < h->client_id.len && n + 3 < len; i++)
            n += (size_t)snprintf(buf + n, len - n, "%02x", h->client_id.data[i]);
    snprintf(buf + n, len - n, "/%" PRIu64, h ? h->request_id : 0);
}

static int s_add(rp_outs_t *o, const char *socket, const uint8_t *ident, size_t ident_len,
                 const uint8_t *data, size_t len, om_arena_t *a, bool *ret_skipped,
                 Omnipipe__Envelope **ret_env) {
    uint8_t *norm;
    size_t nlen;
    Omnipipe__Envelope *env = NULL;
    int r = s_normalize(a, data, len, &norm, &nlen, &env);
    *ret_skipped = r != 0;
    if (r != 0)
        return r < 0 ? r : 0;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        rp_out_t *v = realloc(o->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        o->v = v;
        o->cap = cap;
    }
    rp_out_t *x = &o->v[o->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->socket, sizeof x->socket, "%s", socket);
    if (ident) {
        x->ident = malloc(ident_len ? ident_len : 1);
        memcpy(x->ident, ident, ident_len);
        x->ident_len = ident_len;
    }
    x->data = malloc(nlen ? nlen : 1);
    memcpy(x->data, norm, nlen);
    x->len = nlen;
    s_key(env, x->key, sizeof x->key);
    if (ret_env)
        *ret_env = env;
    return 0;
}

/* A produced envelope (from a handler). */
static int s_produce(rp_t *p, const char *socket, const uint8_t *ident, size_t ident_len,
                     const Omnipipe__Envelope *env) {
    om_arena_t *a;
    int r = om_arena_new(0, &a);
    if (r < 0)
        return r;
    uint8_t *buf;
    size_t len;
    bool skipped;
    r = om_msg_pack(a, env, &buf, &len);
    if (r == 0)
        r = s_add(&p->produced, socket, ident, ident_len, buf, len, a, &skipped, NULL);
    om_arena_free(a);
    return r;
}

static void s_free_outs(rp_outs_t *o) {
    for (size_t i = 0; i < o->n; i++) {
        free(o->v[i].ident);
        free(o->v[i].data);
    }
    free(o->v);
    memset(o, 0, sizeof *o);
}

static void s_text(const rp_out_t *x, om_pbtext_t *t) {
    om_arena_t *a;
    if (om_arena_new(0, &a) < 0)
        return;
    Omnipipe__Envelope *env;
    if (x->ident) {
        om_pbtext_printf(t, "routing_id: \"");
        for (size_t i = 0; i < x->ident_len; i++)
            om_pbtext_printf(t, x->ident[i] >= 0x20 && x->ident[i] < 0x7f ? "%c" : "\\x%02x", x->ident[i]);
        om_pbtext_printf(t, "\"\n");
    }
    if (om_msg_unpack(a, x->data, x->len, &env) == 0)
        om_pbtext_message(t, &env->base, 0);
    om_arena_free(a);
}

static void s_report(rp_t *p, const char *what, const rp_out_t *rec, const rp_out_t *got) {
    p->n_diff++;
    printf("difference %zu (%s): %s\n", p->n_diff, rec ? rec->socket : got->socket, what);
    om_pbtext_t tr = {0}, tg = {0};
    if (rec)
        s_text(rec, &tr);
    if (got)
        s_text(got, &tg);
    /* line diff: lines equal at the same position print once, others as -/+ */
    char *lr = tr.buf, *lg = tg.buf;
    while ((lr && *lr) || (lg && *lg)) {
        char *er = lr ? strchr(lr, '\n') : NULL, *eg = lg ? strchr(lg, '\n') : NULL;
        size_t nr = lr ? (er ? (size_t)(er - lr) : strlen(lr)) : 0;
        size_t ng = lg ? (eg ? (size_t)(eg - lg) : strlen(lg)) : 0;
        bool have_r = lr && *lr, have_g = lg && *lg;
        if (have_r && have_g && nr == ng && memcmp(lr, lg, nr) == 0) {
            if (p->verbose)
                printf("   %.*s\n", (int)nr, lr);
        } else {
            if (have_r)
                printf(" - %.*s\n", (int)nr, lr);
            if (have_g)
                printf(" + %.*s\n", (int)ng, lg);
        }
        lr = have_r ? (er ? er + 1 : lr + nr) : lr;
        lg = have_g ? (eg ? eg + 1 : lg + ng) : lg;
    }
    om_pbtext_done(&tr);
    om_pbtext_done(&tg);
}

static bool s_same(const rp_out_t *a, const rp_out_t *b) {
    return strcmp(a->socket, b->socket) == 0 && a->len == b->len && memcmp(a->data, b->data, a->len) == 0 &&
           a->ident_len == b->ident_len && (!a->ident_len || memcmp(a->ident, b->ident, a->ident_len) == 0);
}

/* Pairs each recorded output with the first unused produced one on the same socket (in order) or,
 * keyed, with the same request key (tokenizer: worker threads reorder requests), and reports what
 * differs or has no partner. */
static void s_compare(rp_t *p, bool keyed) {
    for (size_t i = 0; i < p->recorded.n; i++) {
        rp_out_t *rec = &p->recorded.v[i];
        rp_out_t *got = NULL;
        for (size_t k = 0; k < p->produced.n && !got; k++)
            if (!p->produced.v[k].used && strcmp(keyed ? p->produced.v[k].key : p->produced.v[k].socket,
                                                 keyed ? rec->key : rec->socket) == 0)
                got = &p->produced.v[k];
        rec->used = true;
        if (!got) {
            s_report(p, "recorded output not produced by the replay", rec, NULL);
            continue;
        }
        got->used = true;
        if (!s_same(rec, got))
            s_report(p, "output differs", rec, got);
    }
    for (size_t k = 0; k < p->produced.n; k++)
        if (!p->produced.v[k].used)
            s_report(p, "replay produced an output that was not recorded", NULL, &p->produced.v[k]);
}

/* A stage replay's end: compares when the replay ran through, returns 0 or its error. */
static int s_finish(rp_t *p, int r, bool keyed) {
    if (r >= 0)
        s_compare(p, keyed);
    return r < 0 ? r : 0;
}

// --- capture loading ---------------------------------------------------------------------------

typedef struct rp_cap {
    Omnipipe__RecordEntry **e; /* entries, in file order */
    size_t n, cap;
    om_arena_t *a;             /* owns the entries */
    char config[16][512];      /* "key=value" from the config entry */
    size_t n_config;
} rp_cap_t;

static int s_load(const char *path, rp_cap_t *c) {
    char err[512];
    om_capture_reader_t *rd;
    int r = om_capture_reader_new(path, &rd, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "omnipipe replay: %s\n", err);
        return r;
    }
    if ((r = om_arena_new(1 << 20, &c->a)) < 0) {
        om_capture_reader_free(rd);
        return r;
    }
    Omnipipe__RecordEntry *e;
    while ((r = om_capture_reader_next(rd, c->a, &e, err, sizeof err)) == 1) {
        if (e->dir == OMNIPIPE__RECORD_ENTRY__DIR__TICK && e->socket && strcmp(e->socket, "config") == 0) {
            for (size_t i = 0; i < e->n_frames && c->n_config < 16; i++)
                snprintf(c->config[c->n_config++], sizeof c->config[0], "%.*s", (int)e->frames[i].len,
                         (const char *)e->frames[i].data);
            continue;
        }
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 256;
            Omnipipe__RecordEntry **v = realloc(c->e, cap * sizeof *v);
            if (!v) {
                r = -ENOMEM;
                break;
            }
            c->e = v;
            c->cap = cap;
        }
        c->e[c->n++] = e;
    }
    if (r < 0 && r != -ENOMEM)
        fprintf(stderr, "omnipipe replay: %s: %s\n", path, err);
    om_capture_reader_free(rd);
    return r < 0 ? r : 0;
}

static const char *s_config(const rp_cap_t *c, const char *key) {
    size_t kl = strlen(key);
    for (size_t i = 0; i < c->n_config; i++)
        if (strncmp(c->config[i], key, kl) == 0 && c->config[i][kl] == '=')
            return c->config[i] + kl + 1;
    return NULL;
}

static bool s_is(const Omnipipe__RecordEntry *e, int dir, const char *socket) {
    return e->dir == (Omnipipe__RecordEntry__Dir)dir && e->socket && strcmp(e->socket, socket) == 0;
}

/* Collects the recorded outputs (non-control). shell_unavailable: leave out UNAVAILABLE and CANCELLED
 * statuses (produced by the tokenizer's shell when a peer was down or an abort overtook the request
 * in a worker) and remember their keys in skip (NULL, with n_skip, when !shell_unavailable). */
static int s_collect(rp_t *p, const rp_cap_t *c, bool routed_socket(const char *), bool shell_unavailable,
                     char (*skip)[160], size_t *n_skip, size_t max_skip) {
    for (size_t i = 0; i < c->n; i++) {
        const Omnipipe__RecordEntry *e = c->e[i];
        if (e->dir != OMNIPIPE__RECORD_ENTRY__DIR__OUT || e->n_frames == 0)
            continue;
        bool routed = routed_socket(e->socket);
        const ProtobufCBinaryData *f = &e->frames[e->n_frames - 1];
        bool skipped;
        Omnipipe__Envelope *env = NULL;
        om_arena_reset(p->a);
        int r = s_add(&p->recorded, e->socket, routed ? e->frames[0].data : NULL, routed ? e->frames[0].len : 0,
                      f->data, f->len, p->a, &skipped, &env);
        if (r < 0)
            return r;
        if (!skipped && shell_unavailable && env->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS &&
            (env->status->code == OMNIPIPE__CODE__UNAVAILABLE || env->status->code == OMNIPIPE__CODE__CANCELLED)) {
            if (*n_skip < max_skip)
                snprintf(skip[(*n_skip)++], 160, "%s", p->recorded.v[p->recorded.n - 1].key);
            p->recorded.n--;
            free(p->recorded.v[p->recorded.n].ident);
            free(p->recorded.v[p->recorded.n].data);
        }
    }
    return 0;
}

// --- stages --------------------------------------------------------------------------------------

static bool s_routed_tok(const char *s) { return strcmp(s, "frontend") == 0; }
static bool s_routed_mmp(const char *s) { return strcmp(s, "upstream") == 0 || strcmp(s, "engines") == 0; }
static bool s_routed_none(const char *s) { (void)s; return false; }
static bool s_routed_dec(const char *s) { return strcmp(s, "clients") == 0; }

/* the PROTOCOL answer a daemon shell gives to a malformed frame on a ROUTER */
static int s_protocol_reply(rp_t *p, const char *socket, const char *stage, om_msg_in_t *in, bool with_client) {
    uint64_t rid = in->env && in->env->header ? in->env->header->request_id : 0;
    Omnipipe__Header *h;
    if (with_client)
        h = om_msg_header_new(p->a, rid, in->ident, in->ident_len);
    else {
        h = om_msg_header_new(p->a, rid, NULL, 0);
        if (h && in->env && in->env->header && in->env->header->has_client_id) {
            h->has_client_id = true;
            h->client_id = in->env->header->client_id;
        }
    }
    Omnipipe__Envelope *env = om_msg_status_env(p->a, h, om_msg_status(p->a, -EPROTO, stage, "%s", in->errmsg));
    return env ? s_produce(p, socket, in->ident, in->ident_len, env) : -ENOMEM;
}

static int s_replay_tokenizer(rp_t *p, rp_cap_t *c, const char *model) {
#ifdef OM_HAVE_TOK_SERVICE
    char skip[256][160];
    size_t n_skip = 0;
    int r = s_collect(p, c, s_routed_tok, true, skip, &n_skip, 256);
    if (r < 0)
        return r;
    const char *dl = s_config(c, "deadline_ms");
    char err[512];
    tok_service_t *svc;
    if ((r = tok_service_new(model, dl ? strtoull(dl, NULL, 10) : 0, &svc, err, sizeof err)) < 0) {
        fprintf(stderr, "omnipipe replay: cannot load the tokenizer of '%s': %s\n", model, err);
        return r;
    }
    for (size_t i = 0; i < c->n && r >= 0; i++) {
        const Omnipipe__RecordEntry *e = c->e[i];
        if (!s_is(e, OMNIPIPE__RECORD_ENTRY__DIR__IN, "frontend"))
            continue;
        om_arena_reset(p->a);
        om_msg_in_t in;
        om_msg_decode(p->a, e->frames, e->n_frames, true, &in);
        if (!in.ident)
            continue;
        p->n_inputs++;
        if (in.err < 0) {
            r = s_protocol_reply(p, "frontend", OM_STAGE_TOKENIZER, &in, true);
            continue;
        }
        if (om_msg_is_control(in.env))
            continue;
        in.env->header->has_client_id = true;
        in.env->header->client_id.data = (uint8_t *)in.ident;
        in.env->header->client_id.len = in.ident_len;
        char key[160];
        s_key(in.env, key, sizeof key);
        bool skipped = false;
        for (size_t k = 0; k < n_skip; k++)
            skipped |= strcmp(skip[k], key) == 0;
        if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_ABORT) {
            if (!skipped) /* an abort that overtook its request ended at the tokenizer's shell */
                r = s_produce(p, "downstream", NULL, 0, in.env);
            continue;
        }
        if (skipped)
            continue;
        Omnipipe__Envelope *out;
        if ((r = tok_service_handle(svc, in.env, e->now_ms, p->a, &out)) < 0)
            break;
        if (out->body_case == OMNIPIPE__ENVELOPE__BODY_TOKENIZED)
            r = s_produce(p, "downstream", NULL, 0, out);
        else
            r = s_produce(p, "frontend", in.ident, in.ident_len, out);
    }
    tok_service_free(svc);
    return s_finish(p, r, true);
#else
    (void)p; (void)c; (void)model;
    fprintf(stderr, "omnipipe replay: the tokenizer core is not in this build\n");
    return -EOPNOTSUPP;
#endif
}

static int s_mmp_emit(void *ud, enum mmp_dest dest, const uint8_t *ident, size_t ident_len,
                      const Omnipipe__Envelope *env) {
    return s_produce(ud, dest == MMP_TO_ENGINE ? "engines" : "decoder", ident, ident_len, env);
}

static int s_replay_mm_prep(rp_t *p, rp_cap_t *c, const char *model) {
    (void)model; /* mm_prep loads no model */
    int r = s_collect(p, c, s_routed_mmp, false, NULL, NULL, 0);
    if (r < 0)
        return r;
    const char *hb = s_config(c, "heartbeat_ms"), *lv = s_config(c, "liveness");
    mmp_service_opts_t o = {.heartbeat_ms = hb ? strtoull(hb, NULL, 10) : 0,
                            .liveness = lv ? (uint32_t)strtoul(lv, NULL, 10) : 0};
    mmp_service_t *svc;
    if ((r = mmp_service_new(&o, &svc)) < 0)
        return r;
    for (size_t i = 0; i < c->n && r >= 0; i++) {
        const Omnipipe__RecordEntry *e = c->e[i];
        om_arena_reset(p->a);
        if (s_is(e, OMNIPIPE__RECORD_ENTRY__DIR__TICK, "tick")) {
            r = mmp_service_tick(svc, e->now_ms, s_mmp_emit, p);
            continue;
        }
        if (e->dir != OMNIPIPE__RECORD_ENTRY__DIR__IN)
            continue;
        bool up = strcmp(e->socket, "upstream") == 0, eng = strcmp(e->socket, "engines") == 0;
        if (!up && !eng)
            continue;
        om_msg_in_t in;
        om_msg_decode(p->a, e->frames, e->n_frames, true, &in);
        p->n_inputs++;
        if (in.err < 0) {
            if (in.ident)
                r = s_protocol_reply(p, e->socket, OM_STAGE_MM_PREP, &in, false);
            continue;
        }
        if (up && !om_msg_is_control(in.env))
            r = mmp_service_on_upstream(svc, in.env, e->now_ms, s_mmp_emit, p);
        else if (eng)
            r = mmp_service_on_engine(svc, in.ident, in.ident_len, in.env, e->now_ms, s_mmp_emit, p);
    }
    mmp_service_free(svc);
    return s_finish(p, r, false);
}

static int s_replay_engine(rp_t *p, rp_cap_t *c, const char *model) {
#ifdef OM_HAVE_ENG_SERVICE
    int r = s_collect(p, c, s_routed_none, false, NULL, NULL, 0);
    if (r < 0)
        return r;
    const char *v;
    eng_service_opts_t o = {
        .model_dir = model,
        .backend = s_config(c, "backend") ? s_config(c, "backend") : "cpu",
        .device = (v = s_config(c, "device")) ? atoi(v) : 0,
        .load_format = s_config(c, "load_format") ? s_config(c, "load_format") : "auto",
        .engine_id = s_config(c, "engine_id") ? s_config(c, "engine_id") : "engine",
        .kv_blocks = (v = s_config(c, "kv_blocks")) ? strtoull(v, NULL, 10) : 0,
        .max_batch_tokens = (v = s_config(c, "max_batch_tokens")) ? (uint32_t)strtoul(v, NULL, 10) : 0,
        .n_threads = (v = s_config(c, "threads")) ? atoi(v) : 0,
    };
    char err[512];
    eng_service_t *svc;
    if ((r = eng_service_new(&o, NULL, NULL, &svc, err, sizeof err)) < 0) {
        fprintf(stderr, "omnipipe replay: cannot load the engine for '%s': %s\n", model, err);
        return r;
    }
    for (size_t i = 0; i < c->n && r >= 0; i++) {
        const Omnipipe__RecordEntry *e = c->e[i];
        om_arena_reset(p->a);
        if (s_is(e, OMNIPIPE__RECORD_ENTRY__DIR__TICK, "step")) {
            const Omnipipe__TokenBatch *b = NULL;
            if ((r = eng_service_step(svc, e->now_ms, &b)) < 0)
                break;
            if (b && b->n_seqs) {
                Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
                env.header = om_msg_header_new(p->a, 0, NULL, 0);
                env.body_case = OMNIPIPE__ENVELOPE__BODY_BATCH;
                env.batch = (Omnipipe__TokenBatch *)b;
                r = s_produce(p, "decoder", NULL, 0, &env);
            }
            continue;
        }
        if (s_is(e, OMNIPIPE__RECORD_ENTRY__DIR__TICK, "fail_all")) {
            eng_service_fail_all(svc, -EHOSTDOWN, "engine shut down before the request finished");
            continue;
        }
        if (!s_is(e, OMNIPIPE__RECORD_ENTRY__DIR__IN, "mm_prep"))
            continue;
        om_msg_in_t in;
        om_msg_decode(p->a, e->frames, e->n_frames, false, &in);
        if (in.err < 0)
            continue;
        p->n_inputs++;
        if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_PREPARED) {
            int sr = eng_service_submit(svc, in.env->header, in.env->prepared, e->now_ms);
            if (sr < 0) {
                Omnipipe__Envelope *st = om_msg_status_env(
                    p->a, in.env->header,
                    om_msg_status(p->a, sr, OM_STAGE_ENGINE, "%s", sr == -EINVAL ? "invalid request" : strerror(-sr)));
                r = st ? s_produce(p, "decoder", NULL, 0, st) : -ENOMEM;
            }
        } else if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_ABORT && in.env->header->has_client_id) {
            eng_service_abort(svc, in.env->header->client_id.data, in.env->header->client_id.len,
                              in.env->header->request_id);
        }
    }
    eng_service_free(svc);
    return s_finish(p, r, false);
#else
    (void)p; (void)c; (void)model;
    fprintf(stderr, "omnipipe replay: the engine core is not in this build\n");
    return -EOPNOTSUPP;
#endif
}

#ifdef OM_HAVE_DEC_SERVICE
static int s_dec_emit(void *ud, const Omnipipe__Header *hdr, const Omnipipe__Envelope *env) {
    return s_produce(ud, "clients", hdr->client_id.data, hdr->client_id.len, env);
}

static void s_dec_stop(void *ud, const Omnipipe__Header *hdr) {
    rp_t *p = ud;
    om_arena_t *a;
    if (om_arena_new(4096, &a) < 0)
        return;
    Omnipipe__Envelope *e =
        om_msg_abort_env(a, hdr->request_id, hdr->client_id.data, hdr->client_id.len, "ended by the decoder");
    if (e)
        s_produce(p, "upstream", NULL, 0, e);
    om_arena_free(a);
}
#endif

static int s_replay_decoder(rp_t *p, rp_cap_t *c, const char *model) {
#ifdef OM_HAVE_DEC_SERVICE
    int r = s_collect(p, c, s_routed_dec, false, NULL, NULL, 0);
    if (r < 0)
        return r;
    char err[512];
    dec_service_t *svc;
    if ((r = dec_service_new(model, &svc, err, sizeof err)) < 0) {
        fprintf(stderr, "omnipipe replay: cannot load the decoder for '%s': %s\n", model, err);
        return r;
    }
    dec_service_set_stop_callback(svc, s_dec_stop, p);
    for (size_t i = 0; i < c->n && r >= 0; i++) {
        const Omnipipe__RecordEntry *e = c->e[i];
        om_arena_reset(p->a);
        if (s_is(e, OMNIPIPE__RECORD_ENTRY__DIR__TICK, "tick")) {
            dec_service_tick(svc, e->now_ms, s_dec_emit, p); /* the daemon's idle housekeeping */
            continue;
        }
        if (e->dir != OMNIPIPE__RECORD_ENTRY__DIR__IN)
            continue;
        bool clients = strcmp(e->socket, "clients") == 0;
        om_msg_in_t in;
        om_msg_decode(p->a, e->frames, e->n_frames, clients, &in);
        if (clients) {
            /* the shell's answers to clients: heartbeats (not compared) and PROTOCOL errors */
            if (in.err < 0 && in.ident) {
                r = s_protocol_reply(p, "clients", OM_STAGE_DECODER, &in, true);
            } else if (in.err == 0 && !om_msg_is_control(in.env)) {
                Omnipipe__Header *h = om_msg_header_new(p->a, in.env->header->request_id, in.ident, in.ident_len);
                Omnipipe__Envelope *st = om_msg_status_env(
                    p->a, h, om_msg_status(p->a, -EPROTO, OM_STAGE_DECODER,
                                           "the decoder endpoint takes only heartbeats, got '%s'",
                                           om_msg_body_name(in.env)));
                r = st ? s_produce(p, "clients", in.ident, in.ident_len, st) : -ENOMEM;
            }
            continue;
        }
        if (strcmp(e->socket, "in") != 0 || in.err < 0)
            continue;
        p->n_inputs++;
        if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_BATCH)
            dec_service_handle_batch(svc, in.env->batch, e->now_ms, s_dec_emit, p);
        else if (in.env->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS)
            dec_service_fail(svc, in.env->header, in.env->status, s_dec_emit, p);
    }
    dec_service_free(svc);
    return s_finish(p, r, false);
#else
    (void)p; (void)c; (void)model;
    fprintf(stderr, "omnipipe replay: the decoder core is not in this build\n");
    return -EOPNOTSUPP;
#endif
}

// --- command -------------------------------------------------------------------------------------

typedef struct s_stage {
    const char *name;                                       /* --stage NAME */
    int (*replay)(rp_t *p, rp_cap_t *c, const char *model); /* model: may be NULL where !needs_model */
    bool needs_model;
} s_stage_t;

static const s_stage_t s_stages[] = {
    {"tokenizer", s_replay_tokenizer, true},
    {"mm_prep", s_replay_mm_prep, false},
    {"engine", s_replay_engine, true},
    {"decoder", s_replay_decoder, true},
};

static int s_replay_file(const s_stage_t *stage, const char *path, const char *model_override, bool verbose,
                         size_t *ret_diff, size_t *ret_outputs) {
    rp_cap_t c = {0};
    rp_t p = {.stage = stage->name, .verbose = verbose};
    int r = s_load(path, &c);
    if (r == 0)
        r = om_arena_new(0, &p.a);
    const char *model = model_override ? model_override : s_config(&c, "model");
    if (r == 0 && !model && stage->needs_model) {
        fprintf(stderr, "omnipipe replay: %s has no recorded model directory; pass --model DIR\n", path);
        r = -EINVAL;
    }
    if (r == 0) {
        printf("replaying %s (%zu entries)\n", path, c.n);
        r = stage->replay(&p, &c, model);
    }
    if (r == 0) {
        printf("%s: %zu inputs, %zu recorded outputs, %zu replayed outputs, %zu differences\n", path,
               p.n_inputs, p.recorded.n, p.produced.n, p.n_diff);
        *ret_diff += p.n_diff;
        *ret_outputs += p.recorded.n;
    }
    s_free_outs(&p.produced);
    s_free_outs(&p.recorded);
    om_arena_free(p.a);
    free(c.e);
    om_arena_free(c.a);
    return r;
}

static void s_usage(void) {
    printf("usage: omnipipe replay --stage tokenizer|mm_prep|engine|decoder --capture DIR|FILE\n"
           "                       [--model DIR] [--verbose]\n");
}

int cmd_replay(int argc, char **argv) {
    enum { O_STAGE = 1000, O_CAPTURE, O_MODEL, O_VERBOSE, O_HELP };
    static const struct option longopts[] = {
        {"stage", required_argument, NULL, O_STAGE}, {"capture", required_argument, NULL, O_CAPTURE},
        {"model", required_argument, NULL, O_MODEL}, {"verbose", no_argument, NULL, O_VERBOSE},
        {"help", no_argument, NULL, O_HELP},         {NULL, 0, NULL, 0},
    };
    const char *stage = NULL, *capture = NULL, *model = NULL;
    bool verbose = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case O_STAGE: stage = optarg; break;
        case O_CAPTURE: capture = optarg; break;
        case O_MODEL: model = optarg; break;
        case O_VERBOSE: verbose = true; break;
        case O_HELP: s_usage(); return 0;
        default: s_usage(); return 2;
        }
    }
    const s_stage_t *known = NULL;
    for (size_t i = 0; stage && i < sizeof s_stages / sizeof s_stages[0]; i++)
        if (strcmp(stage, s_stages[i].name) == 0)
            known = &s_stages[i];
    if (!known || !capture || optind < argc) {
        if (stage && !known)
            fprintf(stderr, "omnipipe replay: unknown stage '%s'\n", stage);
        s_usage();
        return 2;
    }
    struct stat st;
    if (stat(capture, &st) < 0) {
        fprintf(stderr, "omnipipe replay: '%s': %s\n", capture, strerror(errno));
        return 1;
    }
    size_t n_diff = 0, n_out = 0, n_files = 0;
    int r = 0;
    if (S_ISDIR(st.st_mode)) {
        struct dirent **names;
        int n = scandir(capture, &names, NULL, alphasort);
        if (n < 0) {
            fprintf(stderr, "omnipipe replay: cannot list '%s': %s\n", capture, strerror(errno));
            return 1;
        }
        size_t sl = strlen(stage);
        for (int i = 0; i < n; i++) {
            const char *f = names[i]->d_name;
            size_t fl = strlen(f);
            if (r == 0 && strncmp(f, stage, sl) == 0 && f[sl] == '-' && fl > 6 && strcmp(f + fl - 6, ".omcap") == 0) {
                char path[8192];
                snprintf(path, sizeof path, "%s/%s", capture, f);
                r = s_replay_file(known, path, model, verbose, &n_diff, &n_out);
                n_files++;
            }
            free(names[i]);
        }
        free(names);
    } else {
        r = s_replay_file(known, capture, model, verbose, &n_diff, &n_out);
        n_files++;
    }
    if (r < 0)
        return 1;
    if (n_files == 0) {
        fprintf(stderr, "omnipipe replay: no %s-*.omcap capture in '%s'\n", stage, capture);
        return 1;
    }
    printf("%s: %zu capture file%s, %zu recorded outputs, %zu differences\n", stage, n_files,
           n_files == 1 ? "" : "s", n_out, n_diff);
    return n_diff ? 1 : 0;
}
