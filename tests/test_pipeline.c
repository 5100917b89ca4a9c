/* test_pipeline.c: the four real daemons on a temp runtime dir with the tiny-omni fixture (CPU
 * backend), driven through om_client. One scenario per ctest entry (argv[1]):
 *   routing     several clients, many concurrent requests, two engines: every reply reaches its own
 *               client, streamed text equals the Final text, greedy replies are identical for equal
 *               prompts, and mm_prep spreads requests over both engines
 *   abort       an Abort ends a running request at once (Final ABORT or Status CANCELLED)
 *   malformed   garbage, a wrong proto_version and bad frame counts on every socket: PROTOCOL replies
 *               or counted drops, every daemon still alive and serving
 *   fault_engine / fault_decoder / fault_mm_prep / fault_tokenizer
 *               kill one stage mid-request: the client gets a Status naming that stage within the
 *               deadline; after a restart new requests succeed
 *   stuck_engine / stuck_decoder / stuck_mm_prep / stuck_tokenizer
 *               the same with the stage stopped (SIGSTOP: alive, silent), then resumed (SIGCONT)
 *   replay      record a run (several clients, an abort, a refused request, a second conversation
 *               turn served from the prefix cache), then `omnipipe replay` every stage with zero
 *               differences
 *   e2e         (issue 4) three clients at once, multi-turn conversations: each gets exactly the tokens
 *               of the independent path `omnipipe render | omnipipe tokenize` + `omnipipe generate`
 *   abort_kv    an abort frees the request's KV blocks: kv_blocks_free (StatsReply through the
 *               tokenizer and mm_prep) drops while it runs and returns to kv_blocks_total after
 *   decoder_tick  a request past its deadline whose engine went silent is ended by the decoder's idle
 *               housekeeping (DEADLINE_EXCEEDED, stage "decoder") with no further batch arriving
 *   reasoning   a prompt ending inside an open <think> streams its output as reasoning (the tokenizer's
 *               reasoning_starts_open reaches the decoder); without <think> the output is content
 *   prefix      a conversation's second turn hits the prefix cache: Final.usage.cached_tokens covers the
 *               first turn's full blocks, and the engine's hit counter grows by as much
 *   notify      sd_notify READY / WATCHDOG (at half of WATCHDOG_USEC) / STOPPING from every daemon */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "om_arena.h"
#include "om_client.h"
#include "om_err.h"
#include "om_msg.h"
#include "testd.h"

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            s_fail = 1;                                                                            \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

static int s_fail;

static uint64_t s_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static om_client_t *s_client(testd_t *d) {
    om_client_opts_t o = {.runtime_dir = d->rt, .heartbeat_ms = 100, .liveness = 4};
    om_client_t *c = NULL;
    char err[256];
    if (om_client_new(&o, &c, err, sizeof err) < 0)
        fprintf(stderr, "client: %s\n", err);
    return c;
}

typedef struct msg_spec {
    const char *role;
    const char *text;
} msg_spec_t;

#define CONV_MAX 8

/* submits a conversation of n messages, greedy */
static int s_submit_conv(om_client_t *c, const msg_spec_t *msgs, size_t n, uint32_t max_tokens, bool ignore_eos,
                         bool stream, uint64_t deadline_ms, uint64_t *ret_id) {
    Omnipipe__Message m[CONV_MAX];
    Omnipipe__Message *mp[CONV_MAX];
    if (n > CONV_MAX)
        return -E2BIG;
    for (size_t i = 0; i < n; i++) {
        omnipipe__message__init(&m[i]);
        m[i].role = (char *)msgs[i].role;
        m[i].content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
        m[i].text = (char *)msgs[i].text;
        mp[i] = &m[i];
    }
    Omnipipe__Conversation conv = OMNIPIPE__CONVERSATION__INIT;
    conv.messages = mp;
    conv.n_messages = n;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_temperature = true;
    sp.temperature = 0;
    sp.has_max_tokens = true;
    sp.max_tokens = max_tokens;
    sp.has_ignore_eos = ignore_eos;
    sp.ignore_eos = ignore_eos;
    Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
    req.conversation = &conv;
    req.sampling = &sp;
    req.has_stream = true;
    req.stream = stream;
    return om_client_submit(c, &req, deadline_ms, ret_id);
}

/* submits a one-message conversation, greedy */
static int s_submit(om_client_t *c, const char *text, uint32_t max_tokens, bool ignore_eos, bool stream,
                    uint64_t deadline_ms, uint64_t *ret_id) {
    msg_spec_t m = {"user", text};
    return s_submit_conv(c, &m, 1, max_tokens, ignore_eos, stream, deadline_ms, ret_id);
}

typedef struct result {
    int kind;              /* OM_CLIENT_FINAL / OM_CLIENT_STATUS, 0 = none yet */
    char text[4096];       /* Final text (bytes; NUL-terminated for printing) */
    size_t text_len;
    char streamed[4096];   /* concatenated deltas */
    size_t streamed_len;
    char reasoning[4096];  /* Final reasoning_content */
    size_t reasoning_len;
    char streamed_reasoning[4096]; /* concatenated delta reasoning_text */
    size_t streamed_reasoning_len;
    int32_t ids[256];      /* Final token ids */
    size_t n_ids;
    int finish;
    int code;              /* Status */
    char stage[32];
    char message[512];
    char engine_id[64];
    bool client_ok;        /* header.client_id was this client's identity */
    uint64_t at_ms;        /* when it ended */
    size_t n_deltas;
    uint32_t prompt_tokens; /* Final.usage */
    uint32_t cached_tokens; /* Final.usage: prompt tokens served by the prefix cache */
} result_t;

/* the latest StatsReply seen by s_pump (engine 0's load) */
typedef struct stats {
    uint64_t n;              /* replies seen so far */
    size_t n_engines;
    uint32_t running, waiting;
    uint64_t kv_total, kv_free; /* blocks */
    uint64_t hits, queries;     /* prefix cache, tokens */
} stats_t;
static stats_t s_stats_last;

/* stores (or with append, appends) bytes b at dst, keeping a NUL after them; truncates at cap */
static void s_bytes(char *dst, size_t *len, size_t cap, const ProtobufCBinaryData *b, bool has, bool append) {
    if (!append)
        *len = 0;
    size_t n = has ? b->len : 0;
    if (n > cap - 1 - *len)
        n = cap - 1 - *len;
    if (n)
        memcpy(dst + *len, b->data, n);
    *len += n;
    dst[*len] = '\0';
}

/* streamed text equals the Final text, byte for byte */
static bool s_streamed_ok(const result_t *x) {
    return x->streamed_len == x->text_len && memcmp(x->streamed, x->text, x->text_len) == 0;
}

/* polls c once; records events for request ids [0, n) in res (indexed by id) */
static int s_pump(om_client_t *c, result_t *res, size_t n, long timeout_ms) {
    om_client_event_t ev;
    int r = om_client_poll(c, timeout_ms, &ev);
    if (r <= 0)
        return r;
    if (ev.kind == OM_CLIENT_STATS) {
        const Omnipipe__StatsReply *sr = ev.env->control->stats_reply;
        stats_t st = {.n = s_stats_last.n + 1, .n_engines = sr->n_engines};
        if (sr->n_engines > 0) {
            const Omnipipe__EngineLoad *l = sr->engines[0];
            st.running = l->running;
            st.waiting = l->waiting;
            st.kv_total = l->kv_blocks_total;
            st.kv_free = l->kv_blocks_free;
            st.hits = l->prefix_cache_hits;
            st.queries = l->prefix_cache_queries;
        }
        s_stats_last = st;
        return 1;
    }
    if (ev.request_id >= n)
        return 1;
    result_t *x = &res[ev.request_id];
    size_t idlen;
    const uint8_t *id = om_client_id(c, &idlen);
    const Omnipipe__Header *h = ev.env->header;
    if (ev.kind == OM_CLIENT_DELTA) {
        x->n_deltas++;
        s_bytes(x->streamed, &x->streamed_len, sizeof x->streamed, &ev.env->delta->text, ev.env->delta->has_text,
                true);
        s_bytes(x->streamed_reasoning, &x->streamed_reasoning_len, sizeof x->streamed_reasoning,
                &ev.env->delta->reasoning_text, ev.env->delta->has_reasoning_text, true);
        return 1;
    }
    x->kind = ev.kind;
    x->at_ms = s_ms();
    x->client_ok = h && h->has_client_id && h->client_id.len == idlen && memcmp(h->client_id.data, id, idlen) == 0;
    if (h && h->engine_id)
        snprintf(x->engine_id, sizeof x->engine_id, "%s", h->engine_id);
    if (ev.kind == OM_CLIENT_FINAL) {
        const Omnipipe__Final *f = ev.env->final;
        s_bytes(x->text, &x->text_len, sizeof x->text, &f->text, f->has_text, false);
        s_bytes(x->reasoning, &x->reasoning_len, sizeof x->reasoning, &f->reasoning_content,
                f->has_reasoning_content, false);
        x->n_ids = f->n_token_ids < 256 ? f->n_token_ids : 256;
        memcpy(x->ids, f->token_ids, x->n_ids * sizeof(int32_t));
        x->finish = f->finish;
        if (f->usage) {
            x->prompt_tokens = f->usage->prompt_tokens;
            x->cached_tokens = f->usage->cached_tokens;
        }
    } else {
        const Omnipipe__Status *st = ev.env->status;
        x->code = st->code;
        snprintf(x->stage, sizeof x->stage, "%s", st->stage ? st->stage : "");
        snprintf(x->message, sizeof x->message, "%s", st->message ? st->message : "");
    }
    return 1;
}

/* waits until request id has ended or timeout */
static bool s_wait(om_client_t *c, result_t *res, size_t n, uint64_t id, uint64_t timeout_ms) {
    uint64_t end = s_ms() + timeout_ms;
    while (res[id].kind == 0 && s_ms() < end)
        s_pump(c, res, n, 50);
    return res[id].kind != 0;
}

/* one short request end to end; true when it got a Final */
static bool s_roundtrip(om_client_t *c, const char *text, uint64_t timeout_ms) {
    static result_t res[64];
    memset(res, 0, sizeof res);
    uint64_t id;
    if (s_submit(c, text, 4, false, false, 0, &id) < 0 || id >= 64)
        return false;
    if (!s_wait(c, res, 64, id, timeout_ms)) {
        fprintf(stderr, "roundtrip: no answer within %" PRIu64 " ms\n", timeout_ms);
        return false;
    }
    if (res[id].kind != OM_CLIENT_FINAL)
        fprintf(stderr, "roundtrip: %s %s: %s\n", om_code_name(res[id].code), res[id].stage, res[id].message);
    return res[id].kind == OM_CLIENT_FINAL;
}

/* asks for stats and waits for the reply (pumping res meanwhile); false on timeout */
static bool s_stats(om_client_t *c, result_t *res, size_t n, uint64_t timeout_ms) {
    uint64_t seen = s_stats_last.n, end = s_ms() + timeout_ms, next = 0;
    /* fire and forget (and refused while the tokenizer is not connected yet): ask again every 200 ms */
    while (s_stats_last.n == seen && s_ms() < end) {
        if (s_ms() >= next) {
            om_client_stats(c);
            next = s_ms() + 200;
        }
        s_pump(c, res, n, 20);
    }
    return s_stats_last.n != seen;
}

// --- scenarios -----------------------------------------------------------------------------------

static int t_routing(testd_t *d) {
    enum { NC = 4, NR = 3 };
    static result_t res[NC][16];
    om_client_t *c[NC] = {0};
    static const char *prompts[] = {"Hello!", "Name three colors.", "What is the capital of France?"};
    CHECK(testd_start_all(d, 2) == 0, "pipeline did not start");
    for (int i = 0; i < NC; i++)
        CHECK((c[i] = s_client(d)) != NULL, "client %d", i);
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < NC; i++) {
            uint64_t id;
            CHECK(s_submit(c[i], prompts[r], 12, true, (i + r) % 2 == 0, 0, &id) == 0, "submit");
            CHECK(id == (uint64_t)r + 1, "ids are per client, got %" PRIu64, id);
        }
    uint64_t end = s_ms() + 60000;
    for (;;) {
        size_t done = 0;
        for (int i = 0; i < NC; i++) {
            s_pump(c[i], res[i], 16, 5);
            for (int r = 1; r <= NR; r++)
                done += res[i][r].kind != 0;
        }
        if (done == NC * NR)
            break;
        CHECK(s_ms() < end, "only %zu of %d requests ended within 60 s", done, NC * NR);
    }
    bool used[2] = {false, false};
    for (int i = 0; i < NC; i++)
        for (int r = 1; r <= NR; r++) {
            result_t *x = &res[i][r];
            CHECK(x->kind == OM_CLIENT_FINAL, "client %d request %d: %s (%s) %s", i, r, om_code_name(x->code),
                  x->stage, x->message);
            CHECK(x->client_ok, "client %d request %d: reply addressed to another client", i, r);
            CHECK(x->n_ids == 12, "client %d request %d: %zu tokens, max_tokens 12 with ignore_eos", i, r, x->n_ids);
            CHECK(x->finish == OMNIPIPE__FINISH_REASON__FINISH_LENGTH, "finish %d", x->finish);
            bool streamed = (i + r - 1) % 2 == 0;
            if (streamed)
                CHECK(s_streamed_ok(x) && x->n_deltas > 0,
                      "streamed text '%s' != final '%s'", x->streamed, x->text);
            else
                CHECK(x->n_deltas == 0, "non-streaming request got %zu deltas", x->n_deltas);
            /* greedy: the same prompt gives the same tokens whichever client and engine ran it */
            CHECK(memcmp(x->ids, res[0][r].ids, 12 * sizeof(int32_t)) == 0,
                  "client %d request %d differs from client 0's greedy output", i, r);
            used[0] |= strcmp(x->engine_id, "engine-0") == 0;
            used[1] |= strcmp(x->engine_id, "engine-1") == 0;
        }
    CHECK(used[0] && used[1], "requests were not spread over both engines (engine-0 %d, engine-1 %d)", used[0], used[1]);
    for (int i = 0; i < NC; i++)
        CHECK(om_client_inflight(c[i]) == 0, "client %d still has requests in flight", i);
out:
    for (int i = 0; i < NC; i++)
        om_client_free(c[i]);
    return s_fail;
}

static int t_abort(testd_t *d) {
    static result_t res[16];
    om_client_t *c = NULL;
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    CHECK((c = s_client(d)) != NULL, "client");
    uint64_t id;
    CHECK(s_submit(c, "Tell me a very long story.", 4000, true, true, 0, &id) == 0, "submit");
    uint64_t end = s_ms() + 30000;
    while (res[id].n_deltas == 0 && res[id].kind == 0 && s_ms() < end)
        s_pump(c, res, 16, 20);
    CHECK(res[id].n_deltas > 0 && res[id].kind == 0, "no streaming before the abort (kind %d)", res[id].kind);
    uint64_t t0 = s_ms();
    CHECK(om_client_abort(c, id) == 0, "abort");
    CHECK(s_wait(c, res, 16, id, 5000), "no answer within 5 s of the abort");
    bool ok = (res[id].kind == OM_CLIENT_FINAL && res[id].finish == OMNIPIPE__FINISH_REASON__FINISH_ABORT) ||
              (res[id].kind == OM_CLIENT_STATUS && res[id].code == OM_CODE_CANCELLED);
    CHECK(ok, "abort ended with kind %d finish %d code %s", res[id].kind, res[id].finish, om_code_name(res[id].code));
    fprintf(stderr, "abort answered in %" PRIu64 " ms\n", res[id].at_ms - t0);
    CHECK(s_roundtrip(c, "Hi", 20000), "a request after the abort failed");
out:
    om_client_free(c);
    return s_fail;
}

/* sends frames on a fresh zmq socket and waits for one reply; returns the Status code, -1 if none */
static int s_raw(void *ctx, int type, const char *ep, const void *const *frames, const size_t *lens, size_t n,
                 char *msg, size_t msglen) {
    void *s = zmq_socket(ctx, type);
    int zero = 0, code = -1;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(s, ep);
    for (size_t i = 0; i < n; i++)
        zmq_send(s, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0);
    if (type == ZMQ_DEALER) {
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 3000) == 1) {
            char buf[4096];
            int len = zmq_recv(s, buf, sizeof buf, 0);
            Omnipipe__Envelope *env = len > 0 ? omnipipe__envelope__unpack(NULL, (size_t)len, (uint8_t *)buf) : NULL;
            if (env && env->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS) {
                code = env->status->code;
                snprintf(msg, msglen, "%s", env->status->message ? env->status->message : "");
            }
            if (env)
                omnipipe__envelope__free_unpacked(env, NULL);
        }
    } else {
        usleep(200000);
    }
    zmq_close(s);
    return code;
}

static int t_malformed(testd_t *d) {
    om_client_t *c = NULL;
    void *ctx = zmq_ctx_new();
    om_arena_t *a = NULL;
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    CHECK(om_arena_new(0, &a) == 0, "arena");
    /* a well-formed chat envelope from a future protocol version */
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    Omnipipe__ChatRequest chat = OMNIPIPE__CHAT_REQUEST__INIT;
    chat.prompt_text = "hi";
    env.header = om_msg_header_new(a, 5, NULL, 0);
    env.header->proto_version = 99;
    env.body_case = OMNIPIPE__ENVELOPE__BODY_CHAT;
    env.chat = &chat;
    uint8_t *vbuf;
    size_t vlen;
    CHECK(om_msg_pack(a, &env, &vbuf, &vlen) == 0, "pack");
    static const char junk[] = "\xff\xfe this is not protobuf \x01\x02";
    const void *f_junk[] = {junk};
    size_t l_junk[] = {sizeof junk};
    const void *f_ver[] = {vbuf};
    size_t l_ver[] = {vlen};
    const void *f_three[] = {"a", "b", "c"};
    size_t l_three[] = {1, 1, 1};
    static const char *routers[] = {"tokenizer", "decoder", "mm_prep", "engines"};
    char ep[512], msg[512];
    for (size_t i = 0; i < 4; i++) {
        snprintf(ep, sizeof ep, "ipc://%s/%s.sock", d->rt, routers[i]);
        int code = s_raw(ctx, ZMQ_DEALER, ep, f_junk, l_junk, 1, msg, sizeof msg);
        CHECK(code == OM_CODE_PROTOCOL, "%s: garbage frame answered %d", routers[i], code);
        CHECK(strstr(msg, "not an omnipipe Envelope") != NULL, "%s: message '%s'", routers[i], msg);
        code = s_raw(ctx, ZMQ_DEALER, ep, f_ver, l_ver, 1, msg, sizeof msg);
        CHECK(code == OM_CODE_PROTOCOL, "%s: wrong proto_version answered %d", routers[i], code);
        CHECK(strstr(msg, "peer speaks proto_version 99, this build speaks 1") != NULL, "%s: message '%s'",
              routers[i], msg);
        code = s_raw(ctx, ZMQ_DEALER, ep, f_three, l_three, 3, msg, sizeof msg);
        CHECK(code == OM_CODE_PROTOCOL, "%s: 3-frame message answered %d", routers[i], code);
    }
    /* the decoder's PULL side cannot answer: a counted drop */
    snprintf(ep, sizeof ep, "ipc://%s/decoder_in.sock", d->rt);
    s_raw(ctx, ZMQ_PUSH, ep, f_junk, l_junk, 1, msg, sizeof msg);
    s_raw(ctx, ZMQ_PUSH, ep, f_ver, l_ver, 1, msg, sizeof msg);
    static const char *stages[] = {"tokenizer", "mm_prep", "engine-0", "decoder"};
    for (size_t i = 0; i < 4; i++)
        CHECK(testd_alive(d, stages[i]), "%s died on malformed input", stages[i]);
    CHECK((c = s_client(d)) != NULL, "client");
    CHECK(s_roundtrip(c, "Still there?", 20000), "the pipeline no longer serves after malformed input");
out:
    om_client_free(c);
    om_arena_free(a);
    zmq_ctx_term(ctx);
    return s_fail;
}

/* kill `victim` while a long request runs; expect a Status naming `stage`; restart; serve again */
static int t_fault(testd_t *d, const char *victim, const char *stage, bool stuck) {
    static result_t res[16];
    om_client_t *c = NULL;
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    CHECK((c = s_client(d)) != NULL, "client");
    CHECK(s_roundtrip(c, "warm up", 20000), "warm-up request failed");
    memset(res, 0, sizeof res);
    uint64_t id;
    const uint64_t deadline_ms = 15000;
    CHECK(s_submit(c, "Tell me a very long story.", 4000, true, true, deadline_ms, &id) == 0, "submit");
    uint64_t end = s_ms() + 20000;
    while (res[id].n_deltas == 0 && res[id].kind == 0 && s_ms() < end)
        s_pump(c, res, 16, 20);
    CHECK(res[id].n_deltas > 0 && res[id].kind == 0, "request not streaming before the kill");
    uint64_t t0 = s_ms();
    if (stuck)
        testd_signal(d, victim, SIGSTOP); /* alive but not answering: a hung stage */
    else
        testd_kill(d, victim, SIGKILL);
    if (strcmp(victim, "mm_prep") == 0 || strcmp(victim, "tokenizer") == 0) {
        /* the running request lives in the engine and may finish; a new one must fail fast */
        uint64_t id2;
        CHECK(s_submit(c, "Are you there?", 4, false, false, deadline_ms, &id2) == 0, "submit after kill");
        id = id2;
    }
    CHECK(s_wait(c, res, 16, id, deadline_ms + 2000), "no answer within the deadline after killing %s", victim);
    uint64_t took = res[id].at_ms - t0;
    CHECK(res[id].kind == OM_CLIENT_STATUS, "expected a Status after killing %s, got kind %d", victim, res[id].kind);
    CHECK(res[id].code == OM_CODE_UNAVAILABLE, "code %s: %s", om_code_name(res[id].code), res[id].message);
    CHECK(strcmp(res[id].stage, stage) == 0, "the Status names stage '%s' (%s), expected '%s'", res[id].stage,
          res[id].message, stage);
    CHECK(took < deadline_ms, "took %" PRIu64 " ms", took);
    fprintf(stderr, "%s %s: Status UNAVAILABLE stage '%s' after %" PRIu64 " ms: %s\n", stuck ? "stopped" : "killed",
            victim, stage, took, res[id].message);
    if (stuck)
        testd_signal(d, victim, SIGCONT);
    else
        CHECK(testd_start(d, victim) > 0, "restart %s", victim);
    /* reconnects are automatic; allow a few liveness windows for heartbeats to resume */
    bool ok = false;
    for (int tries = 0; tries < 30 && !ok; tries++) {
        uint64_t t1 = s_ms();
        ok = s_roundtrip(c, "And now?", 10000);
        fprintf(stderr, "request after %s %s: %s in %" PRIu64 " ms\n", stuck ? "resuming" : "restarting", victim,
                ok ? "ok" : "failed", s_ms() - t1);
        if (!ok)
            usleep(200000);
    }
    CHECK(ok, "no request succeeded after restarting %s", victim);
out:
    om_client_free(c);
    return s_fail;
}

/* sd_notify: READY=1 at start (testd waits for it), WATCHDOG=1 at half of WATCHDOG_USEC from every
 * daemon's main loop, STOPPING=1 on SIGTERM */
/* runs a shell command line; 0 when it exits 0 */
static int s_sh(const char *cmd) {
    int st = system(cmd);
    if (st != 0)
        fprintf(stderr, "command failed (status 0x%x): %s\n", st, cmd);
    return st == 0 ? 0 : -1;
}

/* reads a JSON int array (the file itself, or member `key` of the object in it) into out */
static int s_json_ids(const char *path, const char *key, int32_t *out, size_t cap, size_t *ret_n) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je), *arr = root;
    if (!root) {
        fprintf(stderr, "%s: %s (line %d)\n", path, je.text, je.line);
        return -1;
    }
    if (key)
        arr = json_object_get(root, key);
    int r = -1;
    if (json_is_array(arr) && json_array_size(arr) <= cap) {
        size_t i;
        json_t *v;
        r = 0;
        json_array_foreach(arr, i, v) {
            if (!json_is_integer(v))
                r = -1;
            out[i] = (int32_t)json_integer_value(v);
        }
        *ret_n = json_array_size(arr);
    }
    if (r < 0)
        fprintf(stderr, "%s: no int array%s%s\n", path, key ? " at " : "", key ? key : "");
    json_decref(root);
    return r;
}

/* The independent path for a conversation: `omnipipe render` (chat template) | `omnipipe tokenize`,
 * then `omnipipe generate --ids ... --ignore-eos --temperature 0` (the engine in process, no daemons).
 * prompt/n_prompt get the prompt ids, out/n_out the generated ones. */
static int s_reference(testd_t *d, const msg_spec_t *msgs, size_t n, uint32_t max_new, int32_t *prompt,
                       size_t *n_prompt, int32_t *out, size_t *n_out) {
    char conv[600], ids[600], gen[600], cmd[16384];
    snprintf(conv, sizeof conv, "%s/ref-conv.json", d->rt);
    snprintf(ids, sizeof ids, "%s/ref-ids.json", d->rt);
    snprintf(gen, sizeof gen, "%s/ref-gen.json", d->rt);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:s}", "role", msgs[i].role, "content", msgs[i].text));
    json_t *root = json_pack("{s:o, s:b}", "messages", arr, "add_generation_prompt", 1);
    int r = root ? json_dump_file(root, conv, 0) : -1;
    json_decref(root);
    if (r < 0)
        return -1;
    snprintf(cmd, sizeof cmd, "'%s/omnipipe' render --model '%s' < '%s' | '%s/omnipipe' tokenize --model '%s' > '%s'",
             d->bindir, d->model, conv, d->bindir, d->model, ids);
    if (s_sh(cmd) < 0 || s_json_ids(ids, NULL, prompt, 4096, n_prompt) < 0 || *n_prompt == 0)
        return -1;
    int k = snprintf(cmd, sizeof cmd, "'%s/omnipipe' generate --model '%s' --backend cpu --temperature 0 "
                     "--ignore-eos --max-new-tokens %u --ids ", d->bindir, d->model, max_new);
    for (size_t i = 0; i < *n_prompt && k < (int)sizeof cmd - 32; i++)
        k += snprintf(cmd + k, sizeof cmd - (size_t)k, "%s%d", i ? "," : "", (int)prompt[i]);
    snprintf(cmd + k, sizeof cmd - (size_t)k, " > '%s'", gen);
    if (s_sh(cmd) < 0 || s_json_ids(gen, "tokens", out, 256, n_out) < 0)
        return -1;
    return 0;
}

/* Issue-4 acceptance: conversations through the four daemons give exactly the tokens that the
 * independent render | tokenize | generate path gives, with several clients at once, each client
 * getting the reply to its own conversation. */
static int t_e2e(testd_t *d) {
    enum { NC = 3, NTOK = 16 };
    static const msg_spec_t convs[NC][4] = {
        {{"system", "Be brief."}, {"user", "Hello!"}, {"assistant", "Hi there."}, {"user", "Name three colors."}},
        {{"user", "What is the capital of France?"}},
        {{"user", "Count from one to five."}, {"assistant", "One, two, three, four, five."}, {"user", "Now backwards."}},
    };
    static const size_t nmsg[NC] = {4, 1, 3};
    static result_t res[NC][4];
    static int32_t prompt[NC][4096], ref[NC][256];
    size_t n_prompt[NC], n_ref[NC];
    om_client_t *c[NC] = {0};
    for (int i = 0; i < NC; i++)
        CHECK(s_reference(d, convs[i], nmsg[i], NTOK, prompt[i], &n_prompt[i], ref[i], &n_ref[i]) == 0,
              "reference for conversation %d", i);
    for (int i = 0; i < NC; i++)
        CHECK(n_ref[i] == NTOK, "generate gave %zu tokens for conversation %d, asked %d with --ignore-eos",
              n_ref[i], i, NTOK);
    /* the references differ, so a reply delivered to the wrong client cannot pass */
    CHECK(memcmp(ref[0], ref[1], sizeof ref[0]) != 0 || memcmp(ref[1], ref[2], sizeof ref[0]) != 0,
          "the three conversations give the same tokens; pick other prompts");
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    for (int i = 0; i < NC; i++)
        CHECK((c[i] = s_client(d)) != NULL, "client %d", i);
    for (int i = 0; i < NC; i++) {
        uint64_t id;
        CHECK(s_submit_conv(c[i], convs[i], nmsg[i], NTOK, true, i != 1, 0, &id) == 0 && id == 1, "submit %d", i);
    }
    uint64_t end = s_ms() + 60000;
    for (;;) {
        int done = 0;
        for (int i = 0; i < NC; i++) {
            s_pump(c[i], res[i], 4, 5);
            done += res[i][1].kind != 0;
        }
        if (done == NC)
            break;
        CHECK(s_ms() < end, "only %d of %d conversations ended within 60 s", done, NC);
    }
    for (int i = 0; i < NC; i++) {
        result_t *x = &res[i][1];
        CHECK(x->kind == OM_CLIENT_FINAL, "conversation %d: %s (%s) %s", i, om_code_name(x->code), x->stage,
              x->message);
        CHECK(x->client_ok, "conversation %d: reply addressed to another client", i);
        CHECK(x->prompt_tokens == n_prompt[i], "conversation %d: pipeline prompt has %u tokens, render|tokenize %zu",
              i, x->prompt_tokens, n_prompt[i]);
        CHECK(x->n_ids == NTOK, "conversation %d: %zu tokens, expected %d", i, x->n_ids, NTOK);
        for (size_t k = 0; k < NTOK; k++)
            CHECK(x->ids[k] == ref[i][k], "conversation %d: token %zu is %d through the daemons, %d from generate", i,
                  k, (int)x->ids[k], (int)ref[i][k]);
        if (i != 1)
            CHECK(s_streamed_ok(x), "conversation %d: streamed '%s' != final '%s'", i, x->streamed,
                  x->text);
        fprintf(stderr, "conversation %d: %zu prompt tokens, %d generated tokens equal generate's\n", i, n_prompt[i],
                NTOK);
    }
out:
    for (int i = 0; i < NC; i++)
        om_client_free(c[i]);
    return s_fail;
}

/* an abort frees the request's KV blocks: the engine's load report (through a stats request) shows
 * blocks in use while the request runs and kv_blocks_free == kv_blocks_total after the abort */
static int t_abort_kv(testd_t *d) {
    static result_t res[16];
    om_client_t *c = NULL;
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    CHECK((c = s_client(d)) != NULL, "client");
    CHECK(s_stats(c, res, 16, 5000), "no StatsReply within 5 s");
    CHECK(s_stats_last.n_engines == 1, "stats list %zu engines, 1 running", s_stats_last.n_engines);
    CHECK(s_stats_last.kv_total > 0 && s_stats_last.kv_free == s_stats_last.kv_total,
          "idle engine: %" PRIu64 " of %" PRIu64 " KV blocks free", s_stats_last.kv_free, s_stats_last.kv_total);
    uint64_t total = s_stats_last.kv_total, id;
    CHECK(s_submit(c, "Tell me a very long story.", 4000, true, true, 0, &id) == 0, "submit");
    uint64_t end = s_ms() + 30000;
    while (res[id].n_deltas < 20 && res[id].kind == 0 && s_ms() < end)
        s_pump(c, res, 16, 20);
    CHECK(res[id].kind == 0 && res[id].n_deltas >= 20, "the long request did not stream (kind %d)", res[id].kind);
    /* the load report comes with the engine's heartbeat: ask until it shows the request */
    end = s_ms() + 5000;
    do
        CHECK(s_stats(c, res, 16, 2000), "no StatsReply while running");
    while ((s_stats_last.running == 0 || s_stats_last.kv_free == total) && s_ms() < end);
    CHECK(s_stats_last.running == 1 && s_stats_last.kv_free < total,
          "while running: %u running, %" PRIu64 " of %" PRIu64 " KV blocks free", s_stats_last.running,
          s_stats_last.kv_free, total);
    fprintf(stderr, "running: %" PRIu64 " of %" PRIu64 " KV blocks free\n", s_stats_last.kv_free, total);
    CHECK(om_client_abort(c, id) == 0, "abort");
    CHECK(s_wait(c, res, 16, id, 5000), "no answer within 5 s of the abort");
    CHECK(res[id].kind == OM_CLIENT_FINAL && res[id].finish == OMNIPIPE__FINISH_REASON__FINISH_ABORT,
          "abort ended with kind %d finish %d", res[id].kind, res[id].finish);
    end = s_ms() + 5000;
    do
        CHECK(s_stats(c, res, 16, 2000), "no StatsReply after the abort");
    while ((s_stats_last.running != 0 || s_stats_last.kv_free != total) && s_ms() < end);
    CHECK(s_stats_last.running == 0 && s_stats_last.kv_total == total && s_stats_last.kv_free == total,
          "after the abort: %u running, %" PRIu64 " of %" PRIu64 " KV blocks free", s_stats_last.running,
          s_stats_last.kv_free, s_stats_last.kv_total);
    fprintf(stderr, "after the abort: %" PRIu64 " of %" PRIu64 " KV blocks free\n", s_stats_last.kv_free, total);
out:
    om_client_free(c);
    return s_fail;
}

/* the second turn of a conversation reuses the first turn's KV: Final.usage.cached_tokens covers at
 * least the first turn's full blocks (engine default block size), and the engine's prefix-cache hit
 * counter grows by as much */
static int t_prefix(testd_t *d) {
    enum { BLOCK = 16 }; /* eng_service default KV block size, tokens */
    static result_t res[8];
    om_client_t *c = NULL;
    msg_spec_t turn[4] = {
        {"system", "You are a helpful assistant. Answer briefly, precisely and politely."},
        {"user", "Please list the planets of the solar system in order from the sun, with one fact each."},
        {"assistant", NULL},
        {"user", "Which of them has the most moons?"},
    };
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    CHECK((c = s_client(d)) != NULL, "client");
    uint64_t id1, id2;
    CHECK(s_submit_conv(c, turn, 2, 8, true, false, 0, &id1) == 0, "submit turn 1");
    CHECK(s_wait(c, res, 8, id1, 30000) && res[id1].kind == OM_CLIENT_FINAL, "turn 1 failed: %s %s",
          om_code_name(res[id1].code), res[id1].message);
    uint32_t p1 = res[id1].prompt_tokens, full = p1 / BLOCK * BLOCK;
    CHECK(full >= BLOCK, "turn 1 prompt has %u tokens, less than one block", p1);
    CHECK(s_stats(c, res, 8, 5000), "no StatsReply");
    uint64_t hits0 = s_stats_last.hits;
    turn[2].text = res[id1].text;
    CHECK(s_submit_conv(c, turn, 4, 8, true, false, 0, &id2) == 0, "submit turn 2");
    CHECK(s_wait(c, res, 8, id2, 30000) && res[id2].kind == OM_CLIENT_FINAL, "turn 2 failed: %s %s",
          om_code_name(res[id2].code), res[id2].message);
    uint32_t c2 = res[id2].cached_tokens;
    fprintf(stderr, "turn 1: %u prompt tokens (%u cached); turn 2: %u prompt tokens, %u cached\n", p1,
            res[id1].cached_tokens, res[id2].prompt_tokens, c2);
    CHECK(res[id2].prompt_tokens > p1, "turn 2 prompt (%u tokens) is not longer than turn 1's (%u)",
          res[id2].prompt_tokens, p1);
    CHECK(c2 > 0 && c2 >= full, "turn 2: %u cached tokens, turn 1 left %u tokens in full blocks", c2, full);
    CHECK(c2 < res[id2].prompt_tokens, "turn 2: all %u prompt tokens reported cached", c2);
    uint64_t end = s_ms() + 5000;
    do
        CHECK(s_stats(c, res, 8, 2000), "no StatsReply");
    while (s_stats_last.hits < hits0 + c2 && s_ms() < end);
    CHECK(s_stats_last.hits >= hits0 + c2, "engine prefix-cache hits grew from %" PRIu64 " to %" PRIu64
          ", turn 2 reported %u cached", hits0, s_stats_last.hits, c2);
out:
    om_client_free(c);
    return s_fail;
}

/* a request whose engine went silent after its first step, well past its deadline, with no more
 * batches coming: only the decoder's idle housekeeping (dec_service_tick from the poll loop) can end
 * it; the client must get DEADLINE_EXCEEDED from stage "decoder" */
static int t_decoder_tick(testd_t *d) {
    void *ctx = zmq_ctx_new(), *cli = NULL, *push = NULL;
    om_arena_t *a = NULL;
    CHECK(testd_start(d, "decoder") > 0, "decoder did not start");
    CHECK(om_arena_new(0, &a) == 0, "arena");
    char ep[512];
    int zero = 0;
    static const char ident[] = "tick-client";
    cli = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(cli, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(cli, ZMQ_ROUTING_ID, ident, sizeof ident - 1);
    snprintf(ep, sizeof ep, "ipc://%s/decoder.sock", d->rt);
    CHECK(zmq_connect(cli, ep) == 0, "connect %s", ep);
    /* a heartbeat makes this client known to the decoder's ROUTER (and proves the connection) */
    uint8_t *buf;
    size_t len;
    Omnipipe__Envelope *hb = om_msg_heartbeat_env(a, "client", (uint32_t)getpid(), NULL);
    CHECK(hb && om_msg_pack(a, hb, &buf, &len) == 0, "pack heartbeat");
    CHECK(zmq_send(cli, buf, len, 0) == (int)len, "send heartbeat");
    zmq_pollitem_t it = {cli, 0, ZMQ_POLLIN, 0};
    char rbuf[8192];
    CHECK(zmq_poll(&it, 1, 5000) == 1 && zmq_recv(cli, rbuf, sizeof rbuf, 0) > 0, "no heartbeat answer");
    /* the first (and only) step of request 1, its deadline 20 s ago */
    int32_t tok = 9707;
    Omnipipe__SeqStep st = OMNIPIPE__SEQ_STEP__INIT, *pst = &st;
    Omnipipe__Header *h = om_msg_header_new(a, 1, ident, sizeof ident - 1);
    CHECK(h != NULL, "header");
    h->has_deadline_unix_ms = true;
    h->deadline_unix_ms = (uint64_t)time(NULL) * 1000 - 20000;
    st.has_request_id = st.has_client_id = true;
    st.request_id = 1;
    st.client_id = h->client_id;
    st.token_ids = &tok;
    st.n_token_ids = 1;
    st.header = h;
    st.has_prompt_tokens = true;
    st.prompt_tokens = 3;
    Omnipipe__TokenBatch b = OMNIPIPE__TOKEN_BATCH__INIT;
    b.engine_id = "engine-test";
    b.seqs = &pst;
    b.n_seqs = 1;
    Omnipipe__Envelope env = OMNIPIPE__ENVELOPE__INIT;
    env.header = om_msg_header_new(a, 0, NULL, 0);
    env.body_case = OMNIPIPE__ENVELOPE__BODY_BATCH;
    env.batch = &b;
    CHECK(env.header && om_msg_pack(a, &env, &buf, &len) == 0, "pack batch");
    push = zmq_socket(ctx, ZMQ_PUSH);
    zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    snprintf(ep, sizeof ep, "ipc://%s/decoder_in.sock", d->rt);
    CHECK(zmq_connect(push, ep) == 0 && zmq_send(push, buf, len, 0) == (int)len, "push batch");
    uint64_t t0 = s_ms(), end = t0 + 5000;
    int code = -1;
    char stage[32] = "";
    while (code < 0 && s_ms() < end) {
        if (zmq_poll(&it, 1, 100) != 1)
            continue;
        int n = zmq_recv(cli, rbuf, sizeof rbuf, 0);
        Omnipipe__Envelope *e = n > 0 ? omnipipe__envelope__unpack(NULL, (size_t)n, (uint8_t *)rbuf) : NULL;
        if (e && e->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS && e->header && e->header->request_id == 1) {
            code = e->status->code;
            snprintf(stage, sizeof stage, "%s", e->status->stage ? e->status->stage : "");
        }
        if (e)
            omnipipe__envelope__free_unpacked(e, NULL);
    }
    CHECK(code == OM_CODE_DEADLINE_EXCEEDED && strcmp(stage, "decoder") == 0,
          "expected DEADLINE_EXCEEDED from the decoder within 5 s, got code %d stage '%s'", code, stage);
    fprintf(stderr, "expired request ended by the decoder's housekeeping after %" PRIu64 " ms\n", s_ms() - t0);
out:
    if (cli)
        zmq_close(cli);
    if (push)
        zmq_close(push);
    om_arena_free(a);
    zmq_ctx_term(ctx);
    return s_fail;
}

/* reasoning_starts_open through the daemons: a prompt that ends inside an open <think> streams the
 * output as reasoning (the tokenizer sets the flag, mm_prep and the engine carry it, the decoder
 * splits); the same prompt without <think> streams it as content. The Final carries the whole text
 * as content in both cases (no </think> came: vLLM's Qwen3 rule). */
static int t_reasoning(testd_t *d) {
    static result_t res[8];
    om_client_t *c = NULL;
    static const char *prompts[2] = {
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    };
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    CHECK((c = s_client(d)) != NULL, "client");
    for (int k = 0; k < 2; k++) {
        Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
        sp.has_temperature = sp.has_max_tokens = sp.has_ignore_eos = true;
        sp.temperature = 0;
        sp.max_tokens = 10;
        sp.ignore_eos = true;
        Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
        req.prompt_text = (char *)prompts[k];
        req.sampling = &sp;
        req.has_stream = req.stream = true;
        req.has_split_reasoning = req.split_reasoning = true;
        uint64_t id;
        CHECK(om_client_submit(c, &req, 0, &id) == 0 && id == (uint64_t)k + 1, "submit");
        CHECK(s_wait(c, res, 8, id, 30000) && res[id].kind == OM_CLIENT_FINAL, "request %d failed: %s %s", k,
              om_code_name(res[id].code), res[id].message);
        result_t *x = &res[id];
        CHECK(x->text_len > 0 && !strstr(x->text, "think>"), "output '%s' is empty or has a think tag", x->text);
        CHECK(x->reasoning_len == 0, "no </think> came, yet Final.reasoning_content is '%s'", x->reasoning);
        if (k == 0)
            CHECK(x->streamed_reasoning_len == x->text_len && memcmp(x->streamed_reasoning, x->text, x->text_len) == 0 &&
                      x->streamed_len == 0,
                  "open <think>: streamed reasoning '%s', content '%s', final '%s'", x->streamed_reasoning,
                  x->streamed, x->text);
        else
            CHECK(s_streamed_ok(x) && x->streamed_reasoning_len == 0,
                  "no <think>: streamed reasoning '%s', content '%s', final '%s'", x->streamed_reasoning, x->streamed,
                  x->text);
    }
out:
    om_client_free(c);
    return s_fail;
}

static int t_notify(testd_t *d) {
    d->watchdog_usec = 200000; /* 200 ms: a ping about every 100 ms */
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    static const char *names[] = {"decoder", "mm_prep", "engine-0", "tokenizer"};
    static const char *want[] = {"WATCHDOG=1", "STOPPING=1"};
    for (size_t i = 0; i < 4; i++) {
        pid_t pid = d->pid[i];
        CHECK(strcmp(d->name[i], names[i]) == 0 && pid > 0, "daemon %zu", i);
        int counts[2];
        testd_notify_count(d, pid, 700, want, 2, counts);
        CHECK(counts[0] >= 3, "%s sent %d WATCHDOG=1 in 700 ms with WATCHDOG_USEC=200000", names[i], counts[0]);
        CHECK(counts[1] == 0, "%s sent STOPPING=1 while running", names[i]);
        kill(pid, SIGTERM);
        testd_notify_count(d, pid, 300, want, 2, counts);
        CHECK(counts[1] >= 1, "%s sent no STOPPING=1 on SIGTERM", names[i]);
        fprintf(stderr, "%s: READY, WATCHDOG, STOPPING seen\n", names[i]);
    }
out:
    return s_fail;
}

static int s_run(const char *const *argv, const char *expect_out) {
    char out[512];
    snprintf(out, sizeof out, "/tmp/omt-run-%d.txt", (int)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(out, "w", stdout))
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    FILE *f = fopen(out, "r");
    char buf[65536] = "";
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
    unlink(out);
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && (!expect_out || strstr(buf, expect_out));
    if (!ok)
        fprintf(stderr, "%s %s %s: status 0x%x, output:\n%s\n", argv[0], argv[1], argv[2] ? argv[2] : "", st, buf);
    return ok ? 0 : -1;
}

static int t_replay(testd_t *d) {
    static result_t res[3][16];
    om_client_t *c[3] = {0};
    snprintf(d->record, sizeof d->record, "%s/rec", d->rt);
    CHECK(testd_start_all(d, 1) == 0, "pipeline did not start");
    for (int i = 0; i < 2; i++)
        CHECK((c[i] = s_client(d)) != NULL, "client");
    uint64_t id;
    CHECK(s_submit(c[0], "Hello!", 10, true, true, 0, &id) == 0, "submit");
    CHECK(s_submit(c[1], "Name three colors.", 8, true, false, 0, &id) == 0, "submit");
    CHECK(s_submit(c[0], "What is 2+2?", 6, false, true, 0, &id) == 0, "submit");
    CHECK(s_submit(c[1], "Hello!", 10, true, true, 0, &id) == 0, "submit");
    /* a request the tokenizer refuses: token id outside the vocabulary */
    Omnipipe__ChatRequest bad = OMNIPIPE__CHAT_REQUEST__INIT;
    int32_t ids[2] = {1, 99999999};
    bad.prompt_ids = ids;
    bad.n_prompt_ids = 2;
    CHECK(om_client_submit(c[1], &bad, 0, &id) == 0, "submit");
    uint64_t end = s_ms() + 60000;
    for (;;) {
        s_pump(c[0], res[0], 16, 10);
        s_pump(c[1], res[1], 16, 10);
        if (res[0][1].kind && res[0][2].kind && res[1][1].kind && res[1][2].kind && res[1][3].kind)
            break;
        CHECK(s_ms() < end, "requests did not end within 60 s");
    }
    CHECK(res[0][1].kind == OM_CLIENT_FINAL && res[1][1].kind == OM_CLIENT_FINAL && res[0][2].kind == OM_CLIENT_FINAL &&
              res[1][2].kind == OM_CLIENT_FINAL, "a request failed");
    /* an aborted request: the abort travels every stage and the engine's step boundaries around it
     * must replay exactly too */
    CHECK(s_submit(c[0], "Tell me a very long story.", 4000, true, true, 0, &id) == 0 && id == 3, "submit");
    end = s_ms() + 30000;
    while (res[0][3].n_deltas < 3 && res[0][3].kind == 0 && s_ms() < end)
        s_pump(c[0], res[0], 16, 10);
    CHECK(om_client_abort(c[0], 3) == 0, "abort");
    CHECK(s_wait(c[0], res[0], 16, 3, 10000), "no answer to the abort");
    CHECK(res[0][3].kind == OM_CLIENT_FINAL && res[0][3].finish == OMNIPIPE__FINISH_REASON__FINISH_ABORT,
          "abort ended with kind %d finish %d", res[0][3].kind, res[0][3].finish);
    /* a second turn of c[0]'s first conversation: served partly from the prefix cache, which the
     * engine replay must reproduce too */
    {
        msg_spec_t turn2[3] = {{"user", "Hello!"}, {"assistant", res[0][1].text}, {"user", "And then?"}};
        CHECK(s_submit_conv(c[0], turn2, 3, 6, true, true, 0, &id) == 0 && id == 4, "submit");
        CHECK(s_wait(c[0], res[0], 16, 4, 30000) && res[0][4].kind == OM_CLIENT_FINAL, "second turn failed");
        CHECK(res[0][4].cached_tokens > 0, "second turn: no prompt tokens from the prefix cache");
    }
    CHECK(res[1][3].kind == OM_CLIENT_STATUS && res[1][3].code == OM_CODE_INVALID_ARGUMENT &&
              strcmp(res[1][3].stage, "tokenizer") == 0,
          "bad prompt_ids: %s '%s' %s", om_code_name(res[1][3].code), res[1][3].stage, res[1][3].message);
    testd_stop_all(d); /* graceful: captures are complete */
    char omnipipe[1200];
    snprintf(omnipipe, sizeof omnipipe, "%s/omnipipe", d->bindir);
    static const char *stages[] = {"tokenizer", "mm_prep", "engine", "decoder"};
    for (size_t i = 0; i < 4; i++) {
        const char *argv[] = {omnipipe, "replay", "--stage", stages[i], "--capture", d->record, NULL};
        CHECK(s_run(argv, " 0 differences") == 0, "replay of stage %s", stages[i]);
    }
    /* replay must notice when the handler behaves differently: the engine with another model */
    char other[1200];
    snprintf(other, sizeof other, "%s/../tiny-qwen3", d->model);
    {
        const char *argv[] = {omnipipe, "replay", "--stage", "engine", "--capture", d->record, "--model", other, NULL};
        CHECK(s_run(argv, NULL) != 0, "replay with another model reported no difference");
    }
    /* dump prints every capture as text */
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "%s dump %s/tokenizer-*.omcap | grep -q 'Envelope (chat)'", omnipipe, d->record);
    CHECK(system(cmd) == 0, "dump of the tokenizer capture shows no chat envelope");
    snprintf(cmd, sizeof cmd, "%s dump %s/engine-*.omcap | grep -q 'TICK step'", omnipipe, d->record);
    CHECK(system(cmd) == 0, "dump of the engine capture shows no step ticks");
out:
    om_client_free(c[0]);
    om_client_free(c[1]);
    return s_fail;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_pipeline routing|abort|malformed|fault_engine|fault_decoder|fault_mm_prep|"
                        "fault_tokenizer|stuck_engine|stuck_decoder|stuck_mm_prep|stuck_tokenizer|replay|notify|e2e|abort_kv|prefix|decoder_tick|reasoning\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    testd_t d;
    if (testd_init(&d, argv[1], NULL) < 0) {
        fprintf(stderr, "cannot set up the harness\n");
        return 1;
    }
    int r;
    const char *t = argv[1];
    if (strcmp(t, "routing") == 0)
        r = t_routing(&d);
    else if (strcmp(t, "abort") == 0)
        r = t_abort(&d);
    else if (strcmp(t, "malformed") == 0)
        r = t_malformed(&d);
    else if (strcmp(t, "fault_engine") == 0)
        r = t_fault(&d, "engine-0", "engine", false);
    else if (strcmp(t, "stuck_engine") == 0)
        r = t_fault(&d, "engine-0", "engine", true);
    else if (strcmp(t, "stuck_decoder") == 0)
        r = t_fault(&d, "decoder", "decoder", true);
    else if (strcmp(t, "stuck_mm_prep") == 0)
        r = t_fault(&d, "mm_prep", "mm_prep", true);
    else if (strcmp(t, "stuck_tokenizer") == 0)
        r = t_fault(&d, "tokenizer", "tokenizer", true);
    else if (strcmp(t, "fault_decoder") == 0)
        r = t_fault(&d, "decoder", "decoder", false);
    else if (strcmp(t, "fault_mm_prep") == 0)
        r = t_fault(&d, "mm_prep", "mm_prep", false);
    else if (strcmp(t, "fault_tokenizer") == 0)
        r = t_fault(&d, "tokenizer", "tokenizer", false);
    else if (strcmp(t, "replay") == 0)
        r = t_replay(&d);
    else if (strcmp(t, "reasoning") == 0)
        r = t_reasoning(&d);
    else if (strcmp(t, "decoder_tick") == 0)
        r = t_decoder_tick(&d);
    else if (strcmp(t, "e2e") == 0)
        r = t_e2e(&d);
    else if (strcmp(t, "abort_kv") == 0)
        r = t_abort_kv(&d);
    else if (strcmp(t, "prefix") == 0)
        r = t_prefix(&d);
    else if (strcmp(t, "notify") == 0)
        r = t_notify(&d);
    else {
        fprintf(stderr, "unknown scenario '%s'\n", t);
        r = 2;
    }
    testd_cleanup(&d);
    fprintf(stderr, "%s: %s\n", t, r ? "FAILED" : "passed");
    return r ? 1 : 0;
}
