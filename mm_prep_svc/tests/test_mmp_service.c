/* test_mmp_service.c: mm_prep's preparation and engine router, driven as the daemon drives them. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "mmp_service.h"
#include "om_err.h"
#include "om_msg.h"

typedef struct sent {
    enum mmp_dest dest;
    char ident[32];
    int body;         /* Envelope body case */
    uint64_t request_id;
    int code;         /* status code when body is status */
    char stage[32];
    char engine_id[32];
} sent_t;

typedef struct sink {
    sent_t v[64];
    size_t n;
} sink_t;

static int s_emit(void *ud, enum mmp_dest dest, const uint8_t *ident, size_t ident_len,
                  const Omnipipe__Envelope *env) {
    sink_t *k = ud;
    assert_true(k->n < 64);
    sent_t *s = &k->v[k->n++];
    memset(s, 0, sizeof *s);
    s->dest = dest;
    if (ident)
        memcpy(s->ident, ident, ident_len < 31 ? ident_len : 31);
    s->body = env->body_case;
    s->request_id = env->header->request_id;
    if (env->body_case == OMNIPIPE__ENVELOPE__BODY_STATUS) {
        s->code = env->status->code;
        snprintf(s->stage, sizeof s->stage, "%s", env->status->stage);
    }
    if (env->header->engine_id)
        snprintf(s->engine_id, sizeof s->engine_id, "%s", env->header->engine_id);
    return 0;
}

static Omnipipe__Envelope *s_tokenized(om_arena_t *a, uint64_t rid, size_t n_ids, bool media,
                                       uint64_t deadline) {
    Omnipipe__Envelope *e = om_arena_calloc(a, sizeof *e);
    omnipipe__envelope__init(e);
    e->header = om_msg_header_new(a, rid, "cli", 3);
    e->header->has_deadline_unix_ms = true;
    e->header->deadline_unix_ms = deadline;
    Omnipipe__TokenizedRequest *t = om_arena_calloc(a, sizeof *t);
    omnipipe__tokenized_request__init(t);
    t->ids = om_arena_alloc(a, n_ids * sizeof(int32_t));
    for (size_t i = 0; i < n_ids; i++)
        t->ids[i] = (int32_t)(100 + i);
    t->n_ids = n_ids;
    if (media) {
        t->media = om_arena_alloc(a, sizeof *t->media);
        t->media[0] = om_arena_calloc(a, sizeof **t->media);
        omnipipe__media_ref__init(t->media[0]);
        t->n_media = 1;
    }
    e->body_case = OMNIPIPE__ENVELOPE__BODY_TOKENIZED;
    e->tokenized = t;
    return e;
}

static Omnipipe__Envelope *s_heartbeat(om_arena_t *a, const char *id, uint32_t running,
                                       uint32_t credits, uint64_t done_rid) {
    Omnipipe__EngineLoad *l = om_arena_calloc(a, sizeof *l);
    omnipipe__engine_load__init(l);
    l->engine_id = (char *)id;
    l->has_running = l->has_credits = true;
    l->running = running;
    l->credits = credits;
    Omnipipe__Envelope *e = om_msg_heartbeat_env(a, "engine", 1, l);
    if (done_rid) {
        Omnipipe__RequestKey *k = om_arena_calloc(a, sizeof *k);
        omnipipe__request_key__init(k);
        k->has_client_id = k->has_request_id = true;
        k->client_id.data = (uint8_t *)"cli";
        k->client_id.len = 3;
        k->request_id = done_rid;
        e->control->heartbeat->done = om_arena_alloc(a, sizeof(void *));
        e->control->heartbeat->done[0] = k;
        e->control->heartbeat->n_done = 1;
    }
    return e;
}

static void test_prepare_text_positions(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__Envelope *out;
    assert_int_equal(mmp_service_prepare(s_tokenized(a, 1, 5, false, 2000), 1000, a, &out), 0);
    assert_int_equal(out->body_case, OMNIPIPE__ENVELOPE__BODY_PREPARED);
    const Omnipipe__PreparedRequest *p = out->prepared;
    assert_int_equal(p->n_ids, 5);
    assert_int_equal(p->ids[4], 104);
    assert_int_equal(p->positions->n_shape, 2);
    assert_int_equal(p->positions->shape[0], 3);
    assert_int_equal(p->positions->shape[1], 5);
    assert_int_equal(p->positions->data.len, 3 * 5 * 4);
    for (size_t row = 0; row < 3; row++)
        for (size_t i = 0; i < 5; i++) {
            int32_t v;
            memcpy(&v, p->positions->data.data + (row * 5 + i) * 4, 4);
            assert_int_equal(v, (int32_t)i);
        }
    om_arena_free(a);
}

static void test_prepare_media_unimplemented(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__Envelope *out;
    assert_int_equal(mmp_service_prepare(s_tokenized(a, 1, 3, true, 2000), 1000, a, &out), 0);
    assert_int_equal(out->body_case, OMNIPIPE__ENVELOPE__BODY_STATUS);
    assert_int_equal(out->status->code, OM_CODE_UNIMPLEMENTED);
    assert_string_equal(out->status->message, "multimodal input is not supported yet (stage mm_prep)");
    assert_string_equal(out->status->stage, "mm_prep");
    /* expired deadline */
    assert_int_equal(mmp_service_prepare(s_tokenized(a, 2, 3, false, 500), 1000, a, &out), 0);
    assert_int_equal(out->status->code, OM_CODE_DEADLINE_EXCEEDED);
    om_arena_free(a);
}

static void test_route_least_loaded(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    mmp_service_t *s;
    assert_int_equal(mmp_service_new(NULL, &s), 0);
    sink_t k = {0};
    /* e0 busy (running 5), e1 idle: both have credit */
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E0", 2, s_heartbeat(a, "gpu0", 5, 4, 0), 1000, s_emit, &k), 0);
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E1", 2, s_heartbeat(a, "gpu1", 0, 2, 0), 1000, s_emit, &k), 0);
    assert_int_equal(k.n, 0);
    /* first two go to gpu1 (load 0 then 1), it then has no credit: the next goes to gpu0 */
    for (uint64_t rid = 1; rid <= 3; rid++)
        assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, rid, 4, false, 60000), 1001, s_emit, &k), 0);
    assert_int_equal(k.n, 3);
    assert_string_equal(k.v[0].ident, "E1");
    assert_string_equal(k.v[0].engine_id, "gpu1");
    assert_int_equal(k.v[0].body, OMNIPIPE__ENVELOPE__BODY_PREPARED);
    assert_string_equal(k.v[1].ident, "E1");
    assert_string_equal(k.v[2].ident, "E0");
    assert_int_equal(mmp_service_n_inflight(s), 3);
    mmp_service_free(s);
    om_arena_free(a);
}

static void test_queue_until_credit(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    mmp_service_t *s;
    assert_int_equal(mmp_service_new(NULL, &s), 0);
    sink_t k = {0};
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E0", 2, s_heartbeat(a, "gpu0", 1, 1, 0), 1000, s_emit, &k), 0);
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 1, 4, false, 60000), 1000, s_emit, &k), 0);
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 2, 4, false, 60000), 1000, s_emit, &k), 0);
    assert_int_equal(k.n, 1);
    assert_int_equal(mmp_service_n_queued(s), 1);
    /* the engine finishes request 1 and reports credit: request 2 leaves the queue */
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E0", 2, s_heartbeat(a, "gpu0", 0, 1, 1), 1100, s_emit, &k), 0);
    assert_int_equal(k.n, 2);
    assert_int_equal(k.v[1].request_id, 2);
    assert_int_equal(mmp_service_n_queued(s), 0);
    assert_int_equal(mmp_service_n_inflight(s), 1);
    /* a queued request whose deadline passes fails DEADLINE_EXCEEDED */
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 3, 4, false, 1500), 1200, s_emit, &k), 0);
    assert_int_equal(mmp_service_tick(s, 1600, s_emit, &k), 0);
    assert_int_equal(k.n, 3);
    assert_int_equal(k.v[2].dest, MMP_TO_DECODER);
    assert_int_equal(k.v[2].code, OM_CODE_DEADLINE_EXCEEDED);
    mmp_service_free(s);
    om_arena_free(a);
}

static void test_engine_death_fails_inflight(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    mmp_service_opts_t o = {.heartbeat_ms = 100, .liveness = 3};
    mmp_service_t *s;
    assert_int_equal(mmp_service_new(&o, &s), 0);
    sink_t k = {0};
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E0", 2, s_heartbeat(a, "gpu0", 0, 8, 0), 1000, s_emit, &k), 0);
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 7, 4, false, 60000), 1000, s_emit, &k), 0);
    assert_int_equal(mmp_service_tick(s, 1200, s_emit, &k), 0); /* still alive */
    assert_int_equal(k.n, 1);
    assert_int_equal(mmp_service_tick(s, 1400, s_emit, &k), 0); /* 400 ms > 3 x 100 ms */
    assert_int_equal(k.n, 2);
    assert_int_equal(k.v[1].dest, MMP_TO_DECODER);
    assert_int_equal(k.v[1].request_id, 7);
    assert_int_equal(k.v[1].code, OM_CODE_UNAVAILABLE);
    assert_string_equal(k.v[1].stage, "engine");
    assert_int_equal(mmp_service_n_engines(s), 0);
    /* with no engine at all, a new request waits one liveness window, then fails naming the engine */
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 8, 4, false, 60000), 1500, s_emit, &k), 0);
    assert_int_equal(mmp_service_tick(s, 1600, s_emit, &k), 0);
    assert_int_equal(k.n, 2);
    assert_int_equal(mmp_service_tick(s, 1900, s_emit, &k), 0);
    assert_int_equal(k.n, 3);
    assert_int_equal(k.v[2].code, OM_CODE_UNAVAILABLE);
    assert_string_equal(k.v[2].stage, "engine");
    /* a disconnect message removes an engine at once */
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E1", 2, s_heartbeat(a, "gpu1", 0, 8, 0), 2000, s_emit, &k), 0);
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 9, 4, false, 60000), 2000, s_emit, &k), 0);
    Omnipipe__Envelope *bye = om_msg_heartbeat_env(a, "engine", 1, NULL);
    bye->control->kind_case = OMNIPIPE__CONTROL__KIND_DISCONNECT;
    bye->control->disconnect = true;
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E1", 2, bye, 2001, s_emit, &k), 0);
    assert_int_equal(k.n, 5);
    assert_int_equal(k.v[4].request_id, 9);
    assert_int_equal(k.v[4].code, OM_CODE_UNAVAILABLE);
    mmp_service_free(s);
    om_arena_free(a);
}

static void test_abort(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    mmp_service_t *s;
    assert_int_equal(mmp_service_new(NULL, &s), 0);
    sink_t k = {0};
    assert_int_equal(mmp_service_on_engine(s, (const uint8_t *)"E0", 2, s_heartbeat(a, "gpu0", 0, 1, 0), 1000, s_emit, &k), 0);
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 1, 4, false, 60000), 1000, s_emit, &k), 0);
    assert_int_equal(mmp_service_on_upstream(s, s_tokenized(a, 2, 4, false, 60000), 1000, s_emit, &k), 0);
    Omnipipe__Envelope ab = OMNIPIPE__ENVELOPE__INIT;
    Omnipipe__Abort abort_body = OMNIPIPE__ABORT__INIT;
    ab.body_case = OMNIPIPE__ENVELOPE__BODY_ABORT;
    ab.abort = &abort_body;
    ab.header = om_msg_header_new(a, 2, "cli", 3); /* queued */
    assert_int_equal(mmp_service_on_upstream(s, &ab, 1001, s_emit, &k), 0);
    assert_int_equal(k.n, 2);
    assert_int_equal(k.v[1].code, OM_CODE_CANCELLED);
    assert_int_equal(mmp_service_n_queued(s), 0);
    ab.header = om_msg_header_new(a, 1, "cli", 3); /* at the engine: forwarded */
    assert_int_equal(mmp_service_on_upstream(s, &ab, 1002, s_emit, &k), 0);
    assert_int_equal(k.n, 3);
    assert_int_equal(k.v[2].dest, MMP_TO_ENGINE);
    assert_int_equal(k.v[2].body, OMNIPIPE__ENVELOPE__BODY_ABORT);
    assert_string_equal(k.v[2].ident, "E0");
    mmp_service_free(s);
    om_arena_free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prepare_text_positions),
        cmocka_unit_test(test_prepare_media_unimplemented),
        cmocka_unit_test(test_route_least_loaded),
        cmocka_unit_test(test_queue_until_credit),
        cmocka_unit_test(test_engine_death_fails_inflight),
        cmocka_unit_test(test_abort),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
