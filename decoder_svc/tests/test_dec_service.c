/* test_dec_service.c: unit tests of dec_service, the TokenBatch handler.
 *
 * Every batch goes through protobuf-c pack + unpack before the handler sees it, and every emitted
 * envelope is packed inside the emit callback (its memory is only borrowed there) and unpacked for
 * the checks, so the tests see exactly what crosses the wire. Expected texts come from
 * om_vocab_decode (transformers-exact decode, checked against the fixtures by the vocab's tests) or
 * from the strings the ids were built from.
 *
 *   several_requests   two clients, three requests, streaming and not, split reasoning: per-client
 *                      deltas, UTF-8 never split across steps, Finals with text/ids/usage/finish
 *   error_step         a FINISH_ERROR step: its Status is forwarded unchanged, state dropped
 *   abort              abort drops state; late steps of the request produce nothing
 *   stop_string        a stop string ends the request here: Final FINISH_STOP_STRING, stop
 * callback, later steps dropped stop_token         stop_token_ids / eos: token kept in ids, not in
 * text (unless include_stop_str_in_output), stop_reason = the id bad_step           a step without
 * client_id: -EBADMSG, the rest of the batch still handled fail               dec_service_fail
 * forwards an upstream Status unchanged and drops state bad_sampling       too many stop strings:
 * Status INVALID_ARGUMENT naming sampling.stop deadline_expiry    a request far past its deadline
 * with a silent engine: DEADLINE_EXCEEDED, dropped many_requests      700 requests over 7 clients,
 * some aborted (hash map growth and deletion)
 *   nul_byte           a token decoding to U+0000 survives in Final.text and the deltas (bytes fields)
 *   reasoning_starts_open  the SeqStep flag makes the streamed output start as reasoning */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "dec_service.h"
#include "dec_test_util.h"

// --- captured output -----------------------------------------------------------------------------

#define MAX_OUT 8192

typedef struct capture {
    Omnipipe__Envelope *env[MAX_OUT]; /* unpacked copies of what was emitted */
    size_t n;
    size_t n_stop_calls;
    uint64_t stop_rid[64];
    char stop_cid[64][16];
} capture_t;

static capture_t cap;

static int s_emit(void *ud, const Omnipipe__Header *hdr, const Omnipipe__Envelope *env) {
    capture_t *c = ud;
    assert_ptr_equal(hdr, env->header);
    size_t len = omnipipe__envelope__get_packed_size(env);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    omnipipe__envelope__pack(env, buf);
    assert_true(c->n < MAX_OUT);
    c->env[c->n] = omnipipe__envelope__unpack(NULL, len, buf);
    assert_non_null(c->env[c->n]);
    c->n++;
    free(buf);
    return 0;
}

static void s_on_stop(void *ud, const Omnipipe__Header *hdr) {
    capture_t *c = ud;
    if (c->n_stop_calls < 64) {
        c->stop_rid[c->n_stop_calls] = hdr->request_id;
        snprintf(c->stop_cid[c->n_stop_calls], 16, "%.*s", (int)hdr->client_id.len,
                 (const char *)hdr->client_id.data);
    }
    c->n_stop_calls++;
}

static void cap_reset(void) {
    for (size_t i = 0; i < cap.n; i++)
        omnipipe__envelope__free_unpacked(cap.env[i], NULL);
    memset(&cap, 0, sizeof(cap));
}

static bool s_is(const Omnipipe__Envelope *e, const char *cid, uint64_t rid) {
    return e->header && e->header->has_request_id && e->header->request_id == rid &&
           e->header->client_id.len == strlen(cid) &&
           memcmp(e->header->client_id.data, cid, strlen(cid)) == 0 &&
           e->header->proto_version == OM_PROTO_VERSION;
}

static size_t s_count(const char *cid, uint64_t rid, Omnipipe__Envelope__BodyCase body) {
    size_t n = 0;
    for (size_t i = 0; i < cap.n; i++)
        if (s_is(cap.env[i], cid, rid) && cap.env[i]->body_case == body)
            n++;
    return n;
}

/* Concatenated delta text (or reasoning) of one request; checks each piece is valid UTF-8. */
static void s_deltas(const char *cid, uint64_t rid, bool reasoning, dt_str_t *out) {
    dt_str_clear(out);
    dt_str_add(out, "", 0);
    for (size_t i = 0; i < cap.n; i++) {
        const Omnipipe__Envelope *e = cap.env[i];
        if (!s_is(e, cid, rid) || e->body_case != OMNIPIPE__ENVELOPE__BODY_DELTA)
            continue;
        bool has = reasoning ? e->delta->has_reasoning_text : e->delta->has_text;
        ProtobufCBinaryData t = reasoning ? e->delta->reasoning_text : e->delta->text;
        if (!has)
            continue;
        assert_true(dt_utf8_valid((const char *)t.data, t.len));
        dt_str_add(out, (const char *)t.data, t.len);
    }
}

/* a bytes field (Final.text, ...) equals the C string want */
#define assert_bytes_string(b, want)                                                               \
    do {                                                                                           \
        const char *w_ = (want);                                                                   \
        assert_int_equal((b).len, strlen(w_));                                                     \
        if ((b).len)                                                                               \
            assert_memory_equal((b).data, w_, (b).len);                                            \
    } while (0)

static const Omnipipe__Envelope *s_find(const char *cid, uint64_t rid,
                                        Omnipipe__Envelope__BodyCase body) {
    for (size_t i = 0; i < cap.n; i++)
        if (s_is(cap.env[i], cid, rid) && cap.env[i]->body_case == body)
            return cap.env[i];
    return NULL;
}

// --- batch construction --------------------------------------------------------------------------

static void s_step(Omnipipe__SeqStep *st, const char *cid, uint64_t rid, int32_t *ids, size_t n) {
    Omnipipe__SeqStep init = OMNIPIPE__SEQ_STEP__INIT;
    *st = init;
    st->has_request_id = true;
    st->request_id = rid;
    st->has_client_id = true;
    st->client_id.data = (uint8_t *)cid;
    st->client_id.len = strlen(cid);
    st->n_token_ids = n;
    st->token_ids = ids;
}

/* Packs, unpacks and hands one batch to the service. */
static int s_run(dec_service_t *svc, Omnipipe__SeqStep **steps, size_t n, uint64_t now_ms) {
    Omnipipe__TokenBatch b = OMNIPIPE__TOKEN_BATCH__INIT;
    b.engine_id = "engine0";
    b.n_seqs = n;
    b.seqs = steps;
    size_t len = omnipipe__token_batch__get_packed_size(&b);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    omnipipe__token_batch__pack(&b, buf);
    Omnipipe__TokenBatch *u = omnipipe__token_batch__unpack(NULL, len, buf);
    assert_non_null(u);
    int r = dec_service_handle_batch(svc, u, now_ms, s_emit, &cap);
    omnipipe__token_batch__free_unpacked(u, NULL);
    free(buf);
    return r;
}

static dec_service_t *s_svc(void) {
    dec_service_t *svc = NULL;
    assert_int_equal(dec_service_new_with_vocab(dt_vocab, &svc), 0);
    dec_service_set_stop_callback(svc, s_on_stop, &cap);
    cap_reset();
    return svc;
}

static char *s_decode(const int32_t *ids, size_t n, bool skip) {
    char *t = NULL;
    size_t len = 0;
    assert_int_equal(om_vocab_decode(dt_vocab, ids, n, skip, &t, &len), 0);
    return t;
}

static const int32_t s_eos = 151645; /* <|im_end|> */

// --- tests ---------------------------------------------------------------------------------------

static void test_several_requests(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    /* A/1 streams; A/2 does not; B/1 streams with the reasoning split */
    int32_t a1[64], a2[64], b1[64];
    size_t na1 = 0, na2 = 0, nb1 = 0;
    na1 = dt_bytes(a1, na1,
                   "Hi \xe4\xbd\xa0\xe5\xa5\xbd!"); /* 你好 byte by byte: one byte per step */
    na2 = dt_bytes(a2, na2, "second request");
    b1[nb1++] = dt_token("<think>");
    nb1 = dt_bytes(b1, nb1, "hmm");
    b1[nb1++] = dt_token("</think>");
    nb1 = dt_bytes(b1, nb1, "ok \xf0\x9f\x98\x80");
    size_t steps = na1 > na2 ? na1 : na2;
    if (nb1 > steps)
        steps = nb1;
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.has_skip_special_tokens = true;
    sp.skip_special_tokens = true;
    Omnipipe__Header hdr_a1 = OMNIPIPE__HEADER__INIT;
    hdr_a1.trace_id = "trace-a1";
    int32_t eos = s_eos;
    for (size_t k = 0; k <= steps; k++) { /* step `steps` carries eos + FINISH_STOP for everyone */
        Omnipipe__SeqStep st[3], *pst[3];
        size_t n = 0;
        struct {
            const char *cid;
            uint64_t rid;
            int32_t *ids;
            size_t n;
            bool stream, split;
        } r[3] = {{"A", 1, a1, na1, true, false},
                  {"A", 2, a2, na2, false, false},
                  {"B", 1, b1, nb1, true, true}};
        for (int j = 0; j < 3; j++) {
            if (k < r[j].n) {
                s_step(&st[n], r[j].cid, r[j].rid, r[j].ids + k, 1);
            } else if (k == steps) {
                s_step(&st[n], r[j].cid, r[j].rid, &eos, 1);
                st[n].has_finish = true;
                st[n].finish = OMNIPIPE__FINISH_REASON__FINISH_STOP;
                st[n].has_completion_tokens = true;
                st[n].completion_tokens = (uint32_t)r[j].n + 1;
                if (j == 0)
                    st[n].header = &hdr_a1;
            } else {
                continue; /* this request produced nothing in this step */
            }
            if (k == 0) {
                st[n].sampling = &sp;
                st[n].has_stream = true;
                st[n].stream = r[j].stream;
                st[n].has_split_reasoning = true;
                st[n].split_reasoning = r[j].split;
                st[n].has_prompt_tokens = true;
                st[n].prompt_tokens = 10 + (uint32_t)j;
                st[n].has_cached_tokens = true;
                st[n].cached_tokens = (uint32_t)j;
            }
            pst[n] = &st[n];
            n++;
        }
        assert_int_equal(s_run(svc, pst, n, 1000 + k), 0);
        if (k < steps)
            assert_int_equal(dec_service_n_requests(svc), 3);
    }
    assert_int_equal(dec_service_n_requests(svc), 0);
    assert_int_equal(cap.n_stop_calls, 0);

    dt_str_t got = {0};
    /* A/1: deltas and final equal decode(ids) (eos not in the text), 你好 never split */
    char *want = s_decode(a1, na1, true);
    assert_string_equal(want, "Hi \xe4\xbd\xa0\xe5\xa5\xbd!");
    s_deltas("A", 1, false, &got);
    assert_string_equal(got.p, want);
    const Omnipipe__Envelope *f = s_find("A", 1, OMNIPIPE__ENVELOPE__BODY_FINAL);
    assert_non_null(f);
    assert_bytes_string(f->final->text, want);
    assert_int_equal(f->final->n_token_ids, na1 + 1);
    assert_memory_equal(f->final->token_ids, a1, na1 * sizeof(int32_t));
    assert_int_equal(f->final->token_ids[na1], s_eos);
    assert_int_equal(f->final->finish, OMNIPIPE__FINISH_REASON__FINISH_STOP);
    assert_null(f->final->stop_reason);
    assert_non_null(f->final->usage);
    assert_int_equal(f->final->usage->prompt_tokens, 10);
    assert_int_equal(f->final->usage->cached_tokens, 0);
    assert_int_equal(f->final->usage->completion_tokens, na1 + 1);
    assert_string_equal(f->header->trace_id, "trace-a1"); /* the last step's header travels on */
    /* delta token ids cover every completion id exactly once */
    size_t n_delta_ids = 0;
    for (size_t i = 0; i < cap.n; i++)
        if (s_is(cap.env[i], "A", 1) && cap.env[i]->body_case == OMNIPIPE__ENVELOPE__BODY_DELTA)
            for (size_t j = 0; j < cap.env[i]->delta->n_token_ids; j++, n_delta_ids++)
                assert_int_equal(cap.env[i]->delta->token_ids[j], a1[n_delta_ids]);
    assert_int_equal(n_delta_ids, na1); /* eos: in Final.token_ids only (no text, no delta) */
    free(want);

    /* A/2: no deltas, one Final */
    assert_int_equal(s_count("A", 2, OMNIPIPE__ENVELOPE__BODY_DELTA), 0);
    assert_int_equal(s_count("A", 2, OMNIPIPE__ENVELOPE__BODY_FINAL), 1);
    f = s_find("A", 2, OMNIPIPE__ENVELOPE__BODY_FINAL);
    assert_bytes_string(f->final->text, "second request");
    assert_int_equal(f->final->usage->prompt_tokens, 11);

    /* B/1: reasoning split */
    s_deltas("B", 1, true, &got);
    assert_string_equal(got.p, "hmm");
    s_deltas("B", 1, false, &got);
    assert_string_equal(got.p, "ok \xf0\x9f\x98\x80");
    f = s_find("B", 1, OMNIPIPE__ENVELOPE__BODY_FINAL);
    assert_bytes_string(f->final->text, "ok \xf0\x9f\x98\x80");
    assert_bytes_string(f->final->reasoning_content, "hmm");
    assert_int_equal(s_count("B", 1, OMNIPIPE__ENVELOPE__BODY_FINAL), 1);
    /* nothing else went out */
    assert_int_equal(s_count("A", 1, OMNIPIPE__ENVELOPE__BODY_STATUS) +
                         s_count("B", 1, OMNIPIPE__ENVELOPE__BODY_STATUS),
                     0);
    free(got.p);
    cap_reset();
    dec_service_free(svc);
}

static void test_error_step(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[8];
    size_t n = dt_bytes(ids, 0, "ab");
    Omnipipe__SeqStep st, *pst = &st;
    s_step(&st, "C", 7, ids, n);
    st.has_stream = true;
    st.stream = true;
    assert_int_equal(s_run(svc, &pst, 1, 5), 0);
    assert_int_equal(dec_service_n_requests(svc), 1);
    Omnipipe__Status err = OMNIPIPE__STATUS__INIT;
    err.has_code = true;
    err.code = OMNIPIPE__CODE__RESOURCE_EXHAUSTED;
    err.message = "engine0: kv cache exhausted, request 7 preempted";
    err.stage = "engine";
    err.has_retryable = true;
    err.retryable = true;
    s_step(&st, "C", 7, NULL, 0);
    st.has_finish = true;
    st.finish = OMNIPIPE__FINISH_REASON__FINISH_ERROR;
    st.error = &err;
    assert_int_equal(s_run(svc, &pst, 1, 6), 0);
    assert_int_equal(dec_service_n_requests(svc), 0);
    const Omnipipe__Envelope *e = s_find("C", 7, OMNIPIPE__ENVELOPE__BODY_STATUS);
    assert_non_null(e);
    assert_int_equal(e->status->code, OMNIPIPE__CODE__RESOURCE_EXHAUSTED);
    assert_string_equal(e->status->message, err.message);
    assert_string_equal(e->status->stage, "engine");
    assert_true(e->status->retryable);
    assert_int_equal(s_count("C", 7, OMNIPIPE__ENVELOPE__BODY_FINAL), 0);
    cap_reset();
    dec_service_free(svc);
}

static void test_abort(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[8];
    size_t n = dt_bytes(ids, 0, "xyz");
    Omnipipe__SeqStep st, *pst = &st;
    s_step(&st, "D", 1, ids, 1);
    st.has_stream = true;
    st.stream = true;
    assert_int_equal(s_run(svc, &pst, 1, 10), 0);
    assert_int_equal(s_count("D", 1, OMNIPIPE__ENVELOPE__BODY_DELTA), 1);
    assert_int_equal(dec_service_n_requests(svc), 1);
    assert_int_equal(dec_service_abort(svc, (const uint8_t *)"D", 1, 1), 0);
    assert_int_equal(dec_service_n_requests(svc), 0);
    cap_reset();
    /* steps still in flight from the engine: dropped, including the last one */
    s_step(&st, "D", 1, ids + 1, 1);
    assert_int_equal(s_run(svc, &pst, 1, 11), 0);
    s_step(&st, "D", 1, ids + 2, n - 2);
    st.has_finish = true;
    st.finish = OMNIPIPE__FINISH_REASON__FINISH_ABORT;
    assert_int_equal(s_run(svc, &pst, 1, 12), 0);
    assert_int_equal(cap.n, 0);
    assert_int_equal(dec_service_n_requests(svc), 0);
    /* an abort that overtakes the first step: the request never starts here */
    assert_int_equal(dec_service_abort(svc, (const uint8_t *)"D", 1, 2), -ENOENT);
    s_step(&st, "D", 2, ids, n);
    st.has_stream = true;
    st.stream = true;
    assert_int_equal(s_run(svc, &pst, 1, 13), 0);
    assert_int_equal(cap.n, 0);
    assert_int_equal(dec_service_n_requests(svc), 0);
    assert_int_equal(dec_service_abort(svc, NULL, 0, 1), -EINVAL);
    /* tombstones expire after 60 s: the key is then free (a late step starts afresh) */
    s_step(&st, "D", 2, ids, n);
    st.has_finish = true;
    st.finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
    assert_int_equal(s_run(svc, &pst, 1, 13 + 30000), 0);
    assert_int_equal(cap.n, 0);
    s_step(&st, "D", 3, ids, n); /* a tombstone that the engine never closes */
    assert_int_equal(dec_service_abort(svc, (const uint8_t *)"D", 1, 3), -ENOENT);
    assert_int_equal(s_run(svc, &pst, 1, 13 + 30000), 0);
    assert_int_equal(cap.n, 0);
    s_step(&st, "D", 3, ids, n);
    st.has_finish = true;
    st.finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
    assert_int_equal(s_run(svc, &pst, 1, 13 + 30000 + 61000), 0);
    const Omnipipe__Envelope *f = s_find("D", 3, OMNIPIPE__ENVELOPE__BODY_FINAL);
    assert_non_null(f);
    assert_bytes_string(f->final->text, "xyz");
    cap_reset();
    dec_service_free(svc);
}

static void test_stop_string(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[32];
    size_t n = dt_bytes(ids, 0, "abc STOP def");
    char *stops[] = {"STOP", "zzz"};
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.n_stop = 2;
    sp.stop = stops;
    Omnipipe__SeqStep st, *pst = &st;
    s_step(&st, "E", 3, ids, 6); /* "abc ST": "ST" held back */
    st.sampling = &sp;
    st.has_stream = true;
    st.stream = true;
    assert_int_equal(s_run(svc, &pst, 1, 20), 0);
    dt_str_t got = {0};
    s_deltas("E", 3, false, &got);
    assert_string_equal(got.p, "abc ");
    s_step(&st, "E", 3, ids + 6, 4); /* "OP d" */
    assert_int_equal(s_run(svc, &pst, 1, 21), 0);
    s_deltas("E", 3, false, &got);
    assert_string_equal(got.p, "abc ");
    const Omnipipe__Envelope *f = s_find("E", 3, OMNIPIPE__ENVELOPE__BODY_FINAL);
    assert_non_null(f);
    assert_int_equal(f->final->finish, OMNIPIPE__FINISH_REASON__FINISH_STOP_STRING);
    assert_string_equal(f->final->stop_reason, "STOP");
    assert_bytes_string(f->final->text, "abc ");
    assert_int_equal(f->final->n_token_ids, 10);
    assert_int_equal(cap.n_stop_calls, 1);
    assert_int_equal(cap.stop_rid[0], 3);
    assert_string_equal(cap.stop_cid[0], "E");
    assert_int_equal(dec_service_n_requests(svc), 0);
    size_t n_out = cap.n;
    /* the engine has not seen the abort yet: its next steps are dropped */
    s_step(&st, "E", 3, ids + 10, n - 10);
    assert_int_equal(s_run(svc, &pst, 1, 22), 0);
    s_step(&st, "E", 3, NULL, 0);
    st.has_finish = true;
    st.finish = OMNIPIPE__FINISH_REASON__FINISH_ABORT;
    assert_int_equal(s_run(svc, &pst, 1, 23), 0);
    assert_int_equal(cap.n, n_out);
    free(got.p);
    cap_reset();
    dec_service_free(svc);
}

static void test_stop_token(void **state) {
    (void)state;
    for (int include = 0; include < 2; include++) {
        dec_service_t *svc = s_svc();
        int32_t ids[32];
        size_t n = dt_bytes(ids, 0, "done");
        int32_t stop_tok = dt_token("<|endoftext|>");
        assert_true(stop_tok >= 0);
        ids[n++] = stop_tok;
        int32_t stop_ids[] = {stop_tok};
        Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
        sp.n_stop_token_ids = 1;
        sp.stop_token_ids = stop_ids;
        sp.has_skip_special_tokens = true;
        sp.skip_special_tokens = false; /* the token would show, were it detokenized */
        sp.has_include_stop_str_in_output = true;
        sp.include_stop_str_in_output = include;
        Omnipipe__SeqStep st, *pst = &st;
        s_step(&st, "F", 9, ids, n);
        st.sampling = &sp;
        st.has_finish = true;
        st.finish = OMNIPIPE__FINISH_REASON__FINISH_STOP;
        assert_int_equal(s_run(svc, &pst, 1, 30), 0);
        const Omnipipe__Envelope *f = s_find("F", 9, OMNIPIPE__ENVELOPE__BODY_FINAL);
        assert_non_null(f);
        char *want = s_decode(ids, include ? n : n - 1, false);
        assert_bytes_string(f->final->text, want);
        assert_bytes_string(f->final->text, include ? "done<|endoftext|>" : "done");
        free(want);
        char id[16];
        snprintf(id, sizeof(id), "%d", stop_tok);
        assert_string_equal(f->final->stop_reason, id);
        assert_int_equal(f->final->n_token_ids, n);
        assert_int_equal(f->final->finish, OMNIPIPE__FINISH_REASON__FINISH_STOP);
        /* max_tokens: finish LENGTH carried through, every token detokenized */
        cap_reset();
        s_step(&st, "F", 10, ids, n);
        st.sampling = &sp;
        st.has_finish = true;
        st.finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
        assert_int_equal(s_run(svc, &pst, 1, 31), 0);
        f = s_find("F", 10, OMNIPIPE__ENVELOPE__BODY_FINAL);
        assert_int_equal(f->final->finish, OMNIPIPE__FINISH_REASON__FINISH_LENGTH);
        assert_bytes_string(f->final->text, "done<|endoftext|>");
        assert_null(f->final->stop_reason);
        cap_reset();
        dec_service_free(svc);
    }
}

static void test_bad_step(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[8];
    size_t n = dt_bytes(ids, 0, "ok");
    Omnipipe__SeqStep st[2], *pst[2] = {&st[0], &st[1]};
    s_step(&st[0], "G", 1, ids, n);
    st[0].has_client_id = false;
    st[0].client_id.len = 0;
    s_step(&st[1], "G", 2, ids, n);
    st[1].has_finish = true;
    st[1].finish = OMNIPIPE__FINISH_REASON__FINISH_STOP;
    assert_int_equal(s_run(svc, pst, 2, 40), -EBADMSG);
    const Omnipipe__Envelope *f = s_find("G", 2, OMNIPIPE__ENVELOPE__BODY_FINAL);
    assert_non_null(f);
    assert_bytes_string(f->final->text, "o"); /* FINISH_STOP: the last token is the stop token */
    assert_int_equal(cap.n, 1);
    assert_int_equal(dec_service_handle_batch(svc, NULL, 0, s_emit, &cap), -EINVAL);
    cap_reset();
    dec_service_free(svc);
}

static void test_fail(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[8];
    size_t n = dt_bytes(ids, 0, "ab");
    Omnipipe__SeqStep st, *pst = &st;
    s_step(&st, "H", 4, ids, n);
    assert_int_equal(s_run(svc, &pst, 1, 50), 0);
    assert_int_equal(dec_service_n_requests(svc), 1);
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_request_id = true;
    h.request_id = 4;
    h.has_client_id = true;
    h.client_id.data = (uint8_t *)"H";
    h.client_id.len = 1;
    h.trace_id = "t-h";
    Omnipipe__Status err = OMNIPIPE__STATUS__INIT;
    err.has_code = true;
    err.code = OMNIPIPE__CODE__UNAVAILABLE;
    err.message = "engine0 stopped responding";
    err.stage = "mm_prep";
    assert_int_equal(dec_service_fail(svc, &h, &err, s_emit, &cap), 0);
    assert_int_equal(dec_service_n_requests(svc), 0);
    const Omnipipe__Envelope *e = s_find("H", 4, OMNIPIPE__ENVELOPE__BODY_STATUS);
    assert_non_null(e);
    assert_int_equal(e->status->code, OMNIPIPE__CODE__UNAVAILABLE);
    assert_string_equal(e->status->message, "engine0 stopped responding");
    assert_string_equal(e->status->stage, "mm_prep");
    assert_false(e->status->has_retryable);
    assert_string_equal(e->header->trace_id, "t-h");
    h.has_client_id = false;
    assert_int_equal(dec_service_fail(svc, &h, &err, s_emit, &cap), -EINVAL);
    cap_reset();
    dec_service_free(svc);
}

static void test_bad_sampling(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    char *stops[70];
    for (int i = 0; i < 70; i++)
        stops[i] = "x";
    Omnipipe__SamplingParams sp = OMNIPIPE__SAMPLING_PARAMS__INIT;
    sp.n_stop = 70;
    sp.stop = stops;
    int32_t ids[8];
    size_t n = dt_bytes(ids, 0, "ab");
    Omnipipe__SeqStep st, *pst = &st;
    s_step(&st, "I", 1, ids, n);
    st.sampling = &sp;
    assert_int_equal(s_run(svc, &pst, 1, 60), 0);
    const Omnipipe__Envelope *e = s_find("I", 1, OMNIPIPE__ENVELOPE__BODY_STATUS);
    assert_non_null(e);
    assert_int_equal(e->status->code, OMNIPIPE__CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(e->status->message, "sampling.stop"));
    assert_string_equal(e->status->stage, "decoder");
    assert_int_equal(cap.n_stop_calls, 1);
    assert_int_equal(dec_service_n_requests(svc), 0);
    cap_reset();
    dec_service_free(svc);
}

static void test_deadline_expiry(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[8];
    size_t n = dt_bytes(ids, 0, "ab");
    Omnipipe__Header h = OMNIPIPE__HEADER__INIT;
    h.has_deadline_unix_ms = true;
    h.deadline_unix_ms = 50000;
    Omnipipe__SeqStep st[2], *pst[2] = {&st[0], &st[1]};
    s_step(&st[0], "J", 1, ids, n);
    st[0].header = &h;
    s_step(&st[1], "J", 2, ids, n); /* no deadline: never expired here */
    assert_int_equal(s_run(svc, pst, 2, 40000), 0);
    assert_int_equal(dec_service_n_requests(svc), 2);
    /* the engine goes silent; within the grace period nothing happens */
    assert_int_equal(dec_service_tick(svc, 59000, s_emit, &cap), 0);
    assert_int_equal(dec_service_n_requests(svc), 2);
    assert_int_equal(cap.n, 0);
    assert_int_equal(dec_service_tick(svc, 60001, s_emit, &cap), 0);
    assert_int_equal(dec_service_n_requests(svc), 1);
    const Omnipipe__Envelope *e = s_find("J", 1, OMNIPIPE__ENVELOPE__BODY_STATUS);
    assert_non_null(e);
    assert_int_equal(e->status->code, OMNIPIPE__CODE__DEADLINE_EXCEEDED);
    assert_string_equal(e->status->stage, "decoder");
    assert_int_equal(cap.n_stop_calls, 1);
    assert_int_equal(cap.stop_rid[0], 1);
    assert_int_equal(cap.n, 1);
    /* a late step of the expired request is dropped */
    s_step(&st[0], "J", 1, ids, n);
    st[0].has_finish = true;
    st[0].finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
    assert_int_equal(s_run(svc, pst, 1, 60002), 0);
    assert_int_equal(cap.n, 1);
    assert_int_equal(dec_service_tick(NULL, 0, s_emit, &cap), -EINVAL);
    cap_reset();
    dec_service_free(svc);
}

/* Random traffic: requests of random length, chunking, finish reason and streaming, some aborted by
 * their client. Each request that is not aborted gets exactly one terminal envelope; a Final's text
 * is decode(ids) (less the stop token for FINISH_STOP) and equals its concatenated deltas. */
static void test_random_traffic(void **state) {
    (void)state;
    enum { N = 60, MAX_LEN = 30 };
    static const Omnipipe__FinishReason fins[] = {
        OMNIPIPE__FINISH_REASON__FINISH_LENGTH, OMNIPIPE__FINISH_REASON__FINISH_STOP,
        OMNIPIPE__FINISH_REASON__FINISH_ERROR, OMNIPIPE__FINISH_REASON__FINISH_ABORT};
    static const char *cids[] = {"alpha", "beta", "gamma"};
    for (int round = 0; round < 5; round++) {
        dec_service_t *svc = s_svc();
        struct {
            int32_t ids[MAX_LEN];
            size_t len, sent;
            Omnipipe__FinishReason fin;
            bool stream, skip, aborted;
        } rq[N];
        for (int i = 0; i < N; i++) {
            rq[i].len = 1 + dt_rand() % MAX_LEN;
            for (size_t k = 0; k < rq[i].len; k++) {
                uint64_t c = dt_rand() % 5;
                rq[i].ids[k] = c == 0   ? dt_byte_id[0x80 + dt_rand() % 0x80]
                               : c == 1 ? (int32_t)(151643 + dt_rand() % 33)
                                        : (int32_t)(dt_rand() % 151643);
            }
            rq[i].sent = 0;
            rq[i].fin = fins[dt_rand() % 4];
            rq[i].stream = dt_rand() % 2;
            rq[i].skip = dt_rand() % 2;
            rq[i].aborted = false;
        }
        Omnipipe__SamplingParams sp[2] = {OMNIPIPE__SAMPLING_PARAMS__INIT,
                                          OMNIPIPE__SAMPLING_PARAMS__INIT};
        for (int j = 0; j < 2; j++) {
            sp[j].has_skip_special_tokens = true;
            sp[j].skip_special_tokens = j;
        }
        Omnipipe__Status err = OMNIPIPE__STATUS__INIT;
        err.has_code = true;
        err.code = OMNIPIPE__CODE__INTERNAL;
        err.message = "engine0: step failed";
        err.stage = "engine";
        static Omnipipe__SeqStep st[N];
        static Omnipipe__SeqStep *pst[N];
        for (uint64_t now = 1000;; now++) {
            size_t n = 0;
            for (int i = 0; i < N; i++) {
                if (rq[i].sent == rq[i].len || rq[i].aborted || dt_rand() % 3 == 0)
                    continue;
                if (rq[i].sent > 0 && dt_rand() % 40 == 0) {
                    rq[i].aborted = true;
                    dec_service_abort(svc, (const uint8_t *)cids[i % 3], strlen(cids[i % 3]),
                                      (uint64_t)i);
                    continue;
                }
                size_t k = 1 + dt_rand() % 3;
                if (k > rq[i].len - rq[i].sent)
                    k = rq[i].len - rq[i].sent;
                s_step(&st[n], cids[i % 3], (uint64_t)i, rq[i].ids + rq[i].sent, k);
                if (rq[i].sent == 0) {
                    st[n].sampling = &sp[rq[i].skip];
                    st[n].has_stream = true;
                    st[n].stream = rq[i].stream;
                }
                rq[i].sent += k;
                if (rq[i].sent == rq[i].len) {
                    st[n].has_finish = true;
                    st[n].finish = rq[i].fin;
                    if (rq[i].fin == OMNIPIPE__FINISH_REASON__FINISH_ERROR)
                        st[n].error = &err;
                }
                pst[n] = &st[n];
                n++;
            }
            bool done = true;
            for (int i = 0; i < N; i++)
                if (rq[i].sent < rq[i].len && !rq[i].aborted)
                    done = false;
            if (n > 0)
                assert_int_equal(s_run(svc, pst, n, now), 0);
            if (done && n == 0)
                break;
        }
        assert_int_equal(dec_service_n_requests(svc), 0);
        dt_str_t got = {0};
        for (int i = 0; i < N; i++) {
            const char *cid = cids[i % 3];
            size_t n_fin = s_count(cid, (uint64_t)i, OMNIPIPE__ENVELOPE__BODY_FINAL);
            size_t n_st = s_count(cid, (uint64_t)i, OMNIPIPE__ENVELOPE__BODY_STATUS);
            if (rq[i].aborted) {
                assert_int_equal(n_fin + n_st, 0);
                continue;
            }
            if (rq[i].fin == OMNIPIPE__FINISH_REASON__FINISH_ERROR) {
                assert_int_equal(n_fin, 0);
                assert_int_equal(n_st, 1);
                const Omnipipe__Envelope *e =
                    s_find(cid, (uint64_t)i, OMNIPIPE__ENVELOPE__BODY_STATUS);
                assert_string_equal(e->status->message, err.message);
                continue;
            }
            assert_int_equal(n_fin, 1);
            assert_int_equal(n_st, 0);
            const Omnipipe__Final *f =
                s_find(cid, (uint64_t)i, OMNIPIPE__ENVELOPE__BODY_FINAL)->final;
            size_t n_text = rq[i].len;
            if (rq[i].fin == OMNIPIPE__FINISH_REASON__FINISH_STOP)
                n_text--;
            size_t want_len = 0;
            char *want = NULL;
            assert_int_equal(
                om_vocab_decode(dt_vocab, rq[i].ids, n_text, rq[i].skip, &want, &want_len), 0);
            /* text is bytes on the wire: exact, NUL bytes included */
            assert_int_equal(f->text.len, want_len);
            if (want_len)
                assert_memory_equal(f->text.data, want, want_len);
            assert_int_equal(f->finish, rq[i].fin);
            assert_int_equal(f->n_token_ids, rq[i].len);
            assert_memory_equal(f->token_ids, rq[i].ids, rq[i].len * sizeof(int32_t));
            s_deltas(cid, (uint64_t)i, false, &got);
            if (rq[i].stream) {
                assert_int_equal(got.len, want_len);
                if (want_len)
                    assert_memory_equal(got.p, want, want_len);
            } else {
                assert_int_equal(got.len, 0);
            }
            free(want);
        }
        free(got.p);
        cap_reset();
        dec_service_free(svc);
    }
}

static void test_many_requests(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    enum { N_REQ = 700, N_TOK = 6 };
    static int32_t ids[N_REQ][N_TOK];
    static char cids[7][8];
    for (int c = 0; c < 7; c++)
        snprintf(cids[c], sizeof(cids[c]), "cl%d", c);
    for (int i = 0; i < N_REQ; i++)
        for (int k = 0; k < N_TOK; k++)
            ids[i][k] = (int32_t)(dt_rand() % 151643);
    static Omnipipe__SeqStep st[N_REQ];
    static Omnipipe__SeqStep *pst[N_REQ];
    /* request i finishes (FINISH_LENGTH) after 3 + i % 4 tokens; every step carries one token;
     * every 11th request is aborted by its client after the second step */
    size_t live = 0;
    for (int k = 0; k < N_TOK; k++) {
        size_t n = 0;
        if (k == 2) {
            for (int i = 0; i < N_REQ; i += 11) {
                assert_int_equal(dec_service_abort(svc, (const uint8_t *)cids[i % 7],
                                                   strlen(cids[i % 7]), (uint64_t)(i / 7)),
                                 0);
                live--;
            }
            assert_int_equal(dec_service_n_requests(svc), live);
        }
        for (int i = 0; i < N_REQ; i++) {
            int len = 3 + i % 4;
            if (k >= len)
                continue;
            if (k == 0)
                live++;
            else if (k == len - 1 && i % 11 != 0)
                live--;
            s_step(&st[n], cids[i % 7], (uint64_t)(i / 7), &ids[i][k], 1);
            if (k == len - 1) {
                st[n].has_finish = true;
                st[n].finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
            }
            pst[n] = &st[n];
            n++;
        }
        assert_int_equal(s_run(svc, pst, n, 100 + k), 0);
        assert_int_equal(dec_service_n_requests(svc), live);
    }
    assert_int_equal(dec_service_n_requests(svc), 0);
    assert_int_equal(cap.n, N_REQ - (N_REQ + 10) / 11);
    for (int i = 0; i < N_REQ; i++) {
        const Omnipipe__Envelope *f =
            s_find(cids[i % 7], (uint64_t)(i / 7), OMNIPIPE__ENVELOPE__BODY_FINAL);
        if (i % 11 == 0) {
            assert_null(f);
            continue;
        }
        assert_non_null(f);
        char *want = s_decode(ids[i], (size_t)(3 + i % 4), true);
        assert_bytes_string(f->final->text, want);
        free(want);
    }
    cap_reset();
    dec_service_free(svc);
}

static int setup(void **state) {
    (void)state;
    return dt_load_vocab();
}

static int teardown(void **state) {
    (void)state;
    cap_reset();
    dt_vocab = om_vocab_free(dt_vocab);
    return 0;
}

/* a token that decodes to U+0000: Final.text and the streamed deltas keep it and what follows */
static void test_nul_byte(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[16];
    size_t n = dt_bytes(ids, 0, "ab");
    assert_true(dt_byte_id[0] >= 0);
    ids[n++] = dt_byte_id[0];
    n = dt_bytes(ids, n, "cd");
    static const char want[] = "ab\0cd";
    Omnipipe__SeqStep st, *pst = &st;
    for (size_t i = 0; i < n; i++) {
        s_step(&st, "N", 1, ids + i, 1);
        st.has_stream = true;
        st.stream = true;
        if (i + 1 == n) {
            st.has_finish = true;
            st.finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
        }
        assert_int_equal(s_run(svc, &pst, 1, 10 + i), 0);
    }
    const Omnipipe__Envelope *f = s_find("N", 1, OMNIPIPE__ENVELOPE__BODY_FINAL);
    assert_non_null(f);
    assert_int_equal(f->final->text.len, sizeof want - 1);
    assert_memory_equal(f->final->text.data, want, sizeof want - 1);
    dt_str_t got = {0};
    s_deltas("N", 1, false, &got);
    assert_int_equal(got.len, sizeof want - 1);
    assert_memory_equal(got.p, want, sizeof want - 1);
    free(got.p);
    cap_reset();
    dec_service_free(svc);
}

/* SeqStep.reasoning_starts_open (the prompt ended inside <think>): with split_reasoning the streamed
 * output is reasoning until </think>; without the flag the same tokens stream as content until a
 * <think> that never comes. The Final splits at </think> either way (vLLM's Qwen3 parser). */
static void test_reasoning_starts_open(void **state) {
    (void)state;
    dec_service_t *svc = s_svc();
    int32_t ids[64];
    size_t n = dt_bytes(ids, 0, "plan it");
    int32_t close = dt_token("</think>");
    assert_true(close >= 0);
    ids[n++] = close;
    n = dt_bytes(ids, n, "answer");
    for (int open = 0; open < 2; open++) {
        Omnipipe__SeqStep st, *pst = &st;
        for (size_t i = 0; i < n; i++) {
            s_step(&st, "R", 1, ids + i, 1);
            st.has_split_reasoning = st.split_reasoning = true;
            st.has_stream = st.stream = true;
            if (i == 0) {
                st.has_reasoning_starts_open = true;
                st.reasoning_starts_open = open;
            }
            if (i + 1 == n) {
                st.has_finish = true;
                st.finish = OMNIPIPE__FINISH_REASON__FINISH_LENGTH;
            }
            assert_int_equal(s_run(svc, &pst, 1, 10 + i), 0);
        }
        dt_str_t reason = {0}, content = {0};
        s_deltas("R", 1, true, &reason);
        s_deltas("R", 1, false, &content);
        if (open) {
            assert_string_equal(reason.p, "plan it");
            assert_string_equal(content.p, "answer");
        } else {
            assert_int_equal(reason.len, 0);
            assert_true(strncmp(content.p, "plan it", 7) == 0);
        }
        const Omnipipe__Envelope *f = s_find("R", 1, OMNIPIPE__ENVELOPE__BODY_FINAL);
        assert_non_null(f);
        assert_bytes_string(f->final->reasoning_content, "plan it");
        assert_bytes_string(f->final->text, "answer");
        free(reason.p);
        free(content.p);
        cap_reset();
    }
    dec_service_free(svc);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_several_requests),
        cmocka_unit_test(test_error_step),
        cmocka_unit_test(test_abort),
        cmocka_unit_test(test_stop_string),
        cmocka_unit_test(test_stop_token),
        cmocka_unit_test(test_bad_step),
        cmocka_unit_test(test_fail),
        cmocka_unit_test(test_bad_sampling),
        cmocka_unit_test(test_deadline_expiry),
        cmocka_unit_test(test_random_traffic),
        cmocka_unit_test(test_many_requests),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_reasoning_starts_open),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, setup, teardown);
}
