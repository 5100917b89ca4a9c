/* test_om_common.c: unit tests of common/: wire schema round-trips and the version check, the arena,
 * capture files (round-trip; truncated and corrupted files refused with a clear error), the
 * transport (send/receive, ROUTER routing, high-water mark backpressure, recording at the choke
 * point) and config precedence (file < environment < flags). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "om_arena.h"
#include "om_capture.h"
#include "om_config.h"
#include "om_err.h"
#include "om_msg.h"
#include "om_transport.h"

static char s_tmp[256];

static int s_setup(void **state) {
    (void)state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/om-test-common-XXXXXX");
    return mkdtemp(s_tmp) ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* a ChatRequest with every hop-relevant part set */
static Omnipipe__Envelope *s_chat(om_arena_t *a, uint64_t rid) {
    Omnipipe__Envelope *e = om_arena_calloc(a, sizeof *e);
    omnipipe__envelope__init(e);
    e->header = om_msg_header_new(a, rid, "client-1", 8);
    e->header->has_deadline_unix_ms = true;
    e->header->deadline_unix_ms = 1234567;
    om_msg_stamp(a, e->header, "client", 0, 99, 0);
    Omnipipe__ChatRequest *c = om_arena_calloc(a, sizeof *c);
    omnipipe__chat_request__init(c);
    Omnipipe__Conversation *conv = om_arena_calloc(a, sizeof *conv);
    omnipipe__conversation__init(conv);
    Omnipipe__Message *m = om_arena_calloc(a, sizeof *m);
    omnipipe__message__init(m);
    m->role = "user";
    m->content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
    m->text = "héllo";
    conv->messages = om_arena_alloc(a, sizeof(void *));
    conv->messages[0] = m;
    conv->n_messages = 1;
    Omnipipe__SamplingParams *sp = om_arena_calloc(a, sizeof *sp);
    omnipipe__sampling_params__init(sp);
    sp->has_temperature = true;
    sp->temperature = 0.5f;
    sp->has_max_tokens = true;
    sp->max_tokens = 7;
    c->conversation = conv;
    c->sampling = sp;
    c->has_stream = true;
    c->stream = true;
    e->body_case = OMNIPIPE__ENVELOPE__BODY_CHAT;
    e->chat = c;
    return e;
}

static void test_schema_roundtrip(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__Envelope *e = s_chat(a, 42);
    uint8_t *buf;
    size_t len;
    assert_int_equal(om_msg_pack(a, e, &buf, &len), 0);
    Omnipipe__Envelope *d;
    assert_int_equal(om_msg_unpack(a, buf, len, &d), 0);
    char err[160];
    assert_int_equal(om_msg_check(d, err, sizeof err), 0);
    assert_int_equal(d->header->request_id, 42);
    assert_int_equal(d->header->client_id.len, 8);
    assert_memory_equal(d->header->client_id.data, "client-1", 8);
    assert_int_equal(d->header->deadline_unix_ms, 1234567);
    assert_int_equal(d->header->n_stages, 1);
    assert_string_equal(d->header->stages[0]->stage, "client");
    assert_int_equal(d->header->stages[0]->send_mono_ns, 99);
    assert_int_equal(d->body_case, OMNIPIPE__ENVELOPE__BODY_CHAT);
    assert_string_equal(d->chat->conversation->messages[0]->text, "héllo");
    assert_true(d->chat->sampling->has_temperature);
    assert_true(d->chat->sampling->temperature == 0.5f);
    assert_int_equal(d->chat->sampling->max_tokens, 7);
    assert_false(d->chat->sampling->has_top_p);
    /* re-encoding the decoded message gives the same bytes */
    uint8_t *buf2;
    size_t len2;
    assert_int_equal(om_msg_pack(a, d, &buf2, &len2), 0);
    assert_int_equal(len, len2);
    assert_memory_equal(buf, buf2, len);
    /* every hop message survives a round trip: PreparedRequest with a tensor, TokenBatch, Final */
    Omnipipe__Envelope b = OMNIPIPE__ENVELOPE__INIT;
    Omnipipe__TokenBatch tb = OMNIPIPE__TOKEN_BATCH__INIT;
    Omnipipe__SeqStep ss = OMNIPIPE__SEQ_STEP__INIT;
    Omnipipe__SeqStep *ssp = &ss;
    int32_t toks[2] = {5, 151643};
    ss.has_request_id = true;
    ss.request_id = 3;
    ss.token_ids = toks;
    ss.n_token_ids = 2;
    ss.has_finish = true;
    ss.finish = OMNIPIPE__FINISH_REASON__FINISH_STOP;
    tb.engine_id = "gpu0";
    tb.seqs = &ssp;
    tb.n_seqs = 1;
    b.header = om_msg_header_new(a, 0, NULL, 0);
    b.body_case = OMNIPIPE__ENVELOPE__BODY_BATCH;
    b.batch = &tb;
    assert_int_equal(om_msg_pack(a, &b, &buf, &len), 0);
    assert_int_equal(om_msg_unpack(a, buf, len, &d), 0);
    assert_int_equal(d->batch->n_seqs, 1);
    assert_int_equal(d->batch->seqs[0]->token_ids[1], 151643);
    assert_int_equal(d->batch->seqs[0]->finish, OMNIPIPE__FINISH_REASON__FINISH_STOP);
    assert_string_equal(d->batch->engine_id, "gpu0");
    om_arena_free(a);
}

static void test_version_and_malformed(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__Envelope *e = s_chat(a, 1);
    e->header->proto_version = OM_PROTO_VERSION + 6;
    uint8_t *buf;
    size_t len;
    assert_int_equal(om_msg_pack(a, e, &buf, &len), 0);
    Omnipipe__Envelope *d;
    assert_int_equal(om_msg_unpack(a, buf, len, &d), 0);
    char err[160];
    assert_int_equal(om_msg_check(d, err, sizeof err), -EPROTO);
    assert_non_null(strstr(err, "peer speaks proto_version 7, this build speaks 1"));
    /* no header at all */
    e->header = NULL;
    assert_int_equal(om_msg_pack(a, e, &buf, &len), 0);
    assert_int_equal(om_msg_unpack(a, buf, len, &d), 0);
    assert_int_equal(om_msg_check(d, err, sizeof err), -EPROTO);
    /* garbage bytes */
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01, 0x02};
    assert_int_equal(om_msg_unpack(a, junk, sizeof junk, &d), -EBADMSG);
    /* the Status helper maps through om_err */
    Omnipipe__Status *st = om_msg_status(a, -EHOSTDOWN, "engine", "engine '%s' died", "gpu1");
    assert_int_equal(st->code, OM_CODE_UNAVAILABLE);
    assert_true(st->retryable);
    assert_string_equal(st->stage, "engine");
    assert_string_equal(st->message, "engine 'gpu1' died");
    om_arena_free(a);
}

static void test_arena(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(128, &a), 0);
    char *p = om_arena_alloc(a, 100);
    char *q = om_arena_alloc(a, 1000); /* bigger than a chunk */
    assert_non_null(p);
    assert_non_null(q);
    assert_int_equal((uintptr_t)q % 16, 0);
    memset(q, 1, 1000);
    assert_string_equal(om_arena_printf(a, "%d-%s", 7, "x"), "7-x");
    assert_true(om_arena_used(a) >= 1100);
    om_arena_reset(a);
    assert_int_equal(om_arena_used(a), 0);
    assert_null(om_arena_free(a));
    assert_null(om_arena_free(NULL));
}

static void s_write_entries(const char *dir, char *path, size_t n) {
    char err[256];
    om_capture_writer_t *w;
    assert_int_equal(om_capture_writer_new(dir, "tokenizer", 77, &w, err, sizeof err), 0);
    snprintf(path, 512, "%s", om_capture_writer_path(w));
    for (size_t i = 0; i < n; i++) {
        Omnipipe__RecordEntry e = OMNIPIPE__RECORD_ENTRY__INIT;
        char payload[32];
        snprintf(payload, sizeof payload, "frame-%zu", i);
        ProtobufCBinaryData f[2] = {{3, (uint8_t *)"id1"}, {strlen(payload), (uint8_t *)payload}};
        e.has_dir = true;
        e.dir = i % 2 ? OMNIPIPE__RECORD_ENTRY__DIR__OUT : OMNIPIPE__RECORD_ENTRY__DIR__IN;
        e.socket = "frontend";
        e.frames = f;
        e.n_frames = 2;
        e.has_now_ms = true;
        e.now_ms = 1000 + i;
        e.has_t_mono_ns = true;
        e.t_mono_ns = 50 + i;
        assert_int_equal(om_capture_writer_append(w, &e), 0);
    }
    om_capture_writer_free(w);
}

static void test_capture_roundtrip(void **state) {
    (void)state;
    char path[512], err[256];
    s_write_entries(s_tmp, path, 5);
    char expect[512];
    snprintf(expect, sizeof expect, "%s/tokenizer-77.omcap", s_tmp);
    assert_string_equal(path, expect);
    om_capture_reader_t *r;
    assert_int_equal(om_capture_reader_new(path, &r, err, sizeof err), 0);
    assert_string_equal(om_capture_reader_stage(r), "tokenizer");
    assert_int_equal(om_capture_reader_proto_version(r), OM_PROTO_VERSION);
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__RecordEntry *e;
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(om_capture_reader_next(r, a, &e, err, sizeof err), 1);
        assert_int_equal(e->seq, i);
        assert_int_equal(e->now_ms, 1000 + i);
        assert_int_equal(e->t_mono_ns, 50 + i);
        assert_int_equal(e->dir, i % 2 ? OMNIPIPE__RECORD_ENTRY__DIR__OUT : OMNIPIPE__RECORD_ENTRY__DIR__IN);
        assert_string_equal(e->socket, "frontend");
        assert_int_equal(e->n_frames, 2);
        char payload[32];
        snprintf(payload, sizeof payload, "frame-%zu", i);
        assert_int_equal(e->frames[1].len, strlen(payload));
        assert_memory_equal(e->frames[1].data, payload, strlen(payload));
    }
    assert_int_equal(om_capture_reader_next(r, a, &e, err, sizeof err), 0);
    om_capture_reader_free(r);
    om_arena_free(a);
}

static void s_read_all_expect_error(const char *path, int want_r, const char *want_msg) {
    char err[256] = "";
    om_capture_reader_t *r;
    int rr = om_capture_reader_new(path, &r, err, sizeof err);
    if (rr < 0) {
        assert_int_equal(rr, want_r);
        assert_non_null(strstr(err, want_msg));
        return;
    }
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__RecordEntry *e;
    while ((rr = om_capture_reader_next(r, a, &e, err, sizeof err)) == 1) {
    }
    om_capture_reader_free(r);
    om_arena_free(a);
    assert_int_equal(rr, want_r);
    if (!strstr(err, want_msg))
        fail_msg("error '%s' does not contain '%s'", err, want_msg);
}

static void test_capture_corrupt_truncated(void **state) {
    (void)state;
    char path[512];
    s_write_entries(s_tmp, path, 3);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    /* truncated in the middle of the last record */
    assert_int_equal(truncate(path, size - 5), 0);
    s_read_all_expect_error(path, -EBADMSG, "record 2 at offset");
    s_read_all_expect_error(path, -EBADMSG, "truncated");
    /* one flipped byte inside the first record's payload */
    s_write_entries(s_tmp, path, 3);
    f = fopen(path, "r+b");
    fseek(f, OM_CAPTURE_HEADER_BYTES + 10, SEEK_SET);
    int c = fgetc(f);
    fseek(f, OM_CAPTURE_HEADER_BYTES + 10, SEEK_SET);
    fputc(c ^ 0x40, f);
    fclose(f);
    s_read_all_expect_error(path, -EBADMSG, "record 0 at offset 32: checksum mismatch");
    /* bad magic and a short header */
    f = fopen(path, "r+b");
    fputc('X', f);
    fclose(f);
    s_read_all_expect_error(path, -EBADMSG, "bad magic");
    assert_int_equal(truncate(path, 10), 0);
    s_read_all_expect_error(path, -EBADMSG, "truncated header");
    /* another proto version in the header */
    s_write_entries(s_tmp, path, 1);
    f = fopen(path, "r+b");
    fseek(f, 12, SEEK_SET);
    fputc(9, f);
    fclose(f);
    s_read_all_expect_error(path, -EPROTO, "recorded with proto_version 9");
}

static void test_transport_send_recv_record(void **state) {
    (void)state;
    char err[256], ep[512], recdir[512];
    snprintf(ep, sizeof ep, "ipc://%s/t1.sock", s_tmp);
    snprintf(recdir, sizeof recdir, "%s/rec", s_tmp);
    om_transport_t *t;
    assert_int_equal(om_transport_new("mm_prep", recdir, &t, err, sizeof err), 0);
    om_sock_t *router, *dealer;
    om_sock_opts_t dopt = {.routing_id = "dealer-A", .routing_id_len = 8};
    assert_int_equal(om_sock_new(t, ZMQ_ROUTER, "upstream", NULL, &router), 0);
    assert_int_equal(om_sock_new(t, ZMQ_DEALER, "downstream", &dopt, &dealer), 0);
    assert_int_equal(om_sock_bind(router, ep), 0);
    assert_int_equal(om_sock_connect(dealer, ep), 0);
    /* IMMEDIATE: the send may need the connection to come up first */
    om_frame_t f = {"hello", 5};
    int r = -EAGAIN;
    for (int i = 0; i < 200 && r == -EAGAIN; i++) {
        r = om_sock_send(dealer, &f, 1);
        if (r == -EAGAIN)
            usleep(5000);
    }
    assert_int_equal(r, 0);
    om_rmsg_t m;
    zmq_pollitem_t it = {om_sock_zmq(router), 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 2000), 1);
    assert_int_equal(om_sock_recv(router, &m), 0);
    assert_int_equal(m.n, 2);
    assert_int_equal(om_rmsg_len(&m, 0), 8);
    assert_memory_equal(om_rmsg_data(&m, 0), "dealer-A", 8);
    assert_memory_equal(om_rmsg_data(&m, 1), "hello", 5);
    assert_true(m.now_ms > 1600000000000ull);
    /* reply through the ROUTER by identity; an unknown identity is refused, not silently lost */
    om_frame_t reply[2] = {{"dealer-A", 8}, {"world", 5}};
    assert_int_equal(om_sock_send(router, reply, 2), 0);
    om_frame_t lost[2] = {{"nobody", 6}, {"x", 1}};
    assert_int_equal(om_sock_send(router, lost, 2), -EHOSTUNREACH);
    om_rmsg_close(&m);
    om_rmsg_t m2;
    zmq_pollitem_t it2 = {om_sock_zmq(dealer), 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it2, 1, 2000), 1);
    assert_int_equal(om_sock_recv(dealer, &m2), 0);
    assert_int_equal(m2.n, 1);
    assert_memory_equal(om_rmsg_data(&m2, 0), "world", 5);
    om_rmsg_close(&m2);
    assert_int_equal(om_sock_recv(dealer, &m2), -EAGAIN);
    om_transport_tick(t, "tick", 777);
    om_transport_stats_t st;
    om_transport_get_stats(t, &st);
    assert_int_equal(st.n_sent, 2);
    assert_int_equal(st.n_received, 2);
    assert_int_equal(st.n_send_unroutable, 1);
    char cap[512];
    snprintf(cap, sizeof cap, "%s", om_transport_capture_path(t));
    om_sock_free(router);
    om_sock_free(dealer);
    om_transport_free(t);
    /* the choke point recorded all four messages and the tick, in order */
    om_capture_reader_t *rd;
    assert_int_equal(om_capture_reader_new(cap, &rd, err, sizeof err), 0);
    assert_string_equal(om_capture_reader_stage(rd), "mm_prep");
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__RecordEntry *e;
    static const struct { int dir; const char *sock; const char *last; } want[] = {
        {OMNIPIPE__RECORD_ENTRY__DIR__OUT, "downstream", "hello"},
        {OMNIPIPE__RECORD_ENTRY__DIR__IN, "upstream", "hello"},
        {OMNIPIPE__RECORD_ENTRY__DIR__OUT, "upstream", "world"},
        {OMNIPIPE__RECORD_ENTRY__DIR__IN, "downstream", "world"},
        {OMNIPIPE__RECORD_ENTRY__DIR__TICK, "tick", NULL},
    };
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(om_capture_reader_next(rd, a, &e, err, sizeof err), 1);
        assert_int_equal(e->dir, want[i].dir);
        assert_string_equal(e->socket, want[i].sock);
        if (want[i].last) {
            assert_memory_equal(e->frames[e->n_frames - 1].data, want[i].last, 5);
            if (e->dir == OMNIPIPE__RECORD_ENTRY__DIR__IN)
                assert_true(e->has_now_ms && e->now_ms > 0);
        } else {
            assert_int_equal(e->now_ms, 777);
        }
    }
    assert_int_equal(om_capture_reader_next(rd, a, &e, err, sizeof err), 0);
    om_capture_reader_free(rd);
    om_arena_free(a);
}

static void test_transport_hwm_backpressure(void **state) {
    (void)state;
    char err[256], ep[512];
    snprintf(ep, sizeof ep, "ipc://%s/t2.sock", s_tmp);
    om_transport_t *t;
    assert_int_equal(om_transport_new("engine", NULL, &t, err, sizeof err), 0);
    om_sock_t *push, *pull;
    om_sock_opts_t o = {.hwm = 10};
    assert_int_equal(om_sock_new(t, ZMQ_PUSH, "decoder", &o, &push), 0);
    /* no peer yet: with ZMQ_IMMEDIATE nothing is queued, the send fails at once */
    assert_int_equal(om_sock_connect(push, ep), 0);
    om_frame_t f = {"x", 1};
    assert_int_equal(om_sock_send(push, &f, 1), -EAGAIN);
    /* a peer that never reads: sends succeed until the high-water marks fill, then -EAGAIN */
    assert_int_equal(om_sock_new(t, ZMQ_PULL, "in", &o, &pull), 0);
    assert_int_equal(om_sock_bind(pull, ep), 0);
    int r = -EAGAIN;
    for (int i = 0; i < 400 && r == -EAGAIN; i++) {
        r = om_sock_send(push, &f, 1);
        if (r == -EAGAIN)
            usleep(5000);
    }
    assert_int_equal(r, 0);
    size_t sent = 1;
    uint8_t big[4096] = {0};
    om_frame_t fb = {big, sizeof big};
    while ((r = om_sock_send(push, &fb, 1)) == 0 && sent < 100000)
        sent++;
    assert_int_equal(r, -EAGAIN);
    /* bounded by send + receive HWM (plus the kernel socket buffer for ipc): never unbounded */
    assert_true(sent >= 10);
    assert_true(sent < 100000);
    om_transport_stats_t st;
    om_transport_get_stats(t, &st);
    assert_true(st.n_send_eagain >= 2);
    /* draining the receiver makes room again */
    om_rmsg_t m;
    size_t got = 0;
    for (int i = 0; i < 2000 && got < sent; i++) {
        while (om_sock_recv(pull, &m) == 0) {
            om_rmsg_close(&m);
            got++;
        }
        usleep(1000);
    }
    assert_int_equal(got, sent);
    assert_int_equal(om_sock_send(push, &f, 1), 0);
    om_sock_free(push);
    om_sock_free(pull);
    om_transport_free(t);
}

static void test_config_precedence(void **state) {
    (void)state;
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/omnipipe.conf", s_tmp);
    FILE *f = fopen(path, "w");
    fprintf(f, "# comment\n\nruntime_dir = /from/file\nheartbeat_ms=250\nlog_level = debug\n"
               "[engine]\nthreads = 3\nbackend = cuda\n[tokenizer]\nthreads = 9\n");
    fclose(f);
    static const om_config_key_t keys[] = {{"threads", false, "2", "workers"}, {"verbose", true, NULL, "x"}, {NULL, false, NULL, NULL}};
    setenv("OMNIPIPE_HEARTBEAT_MS", "300", 1);
    setenv("OMNIPIPE_THREADS", "4", 1);
    char *argv[] = {"prog", "--config", path, "--threads=5", "--verbose", "--hwm", "77", NULL};
    om_config_t *c;
    /* the [engine] section (with a key this binary does not know) is skipped; [tokenizer] is read */
    unsetenv("OMNIPIPE_THREADS");
    char *argv0[] = {"prog", "--config", path, NULL};
    assert_int_equal(om_config_load_section("tokenizer", keys, 3, argv0, &c, err, sizeof err), 0);
    assert_string_equal(om_config_get(c, "threads"), "9");
    om_config_free(c);
    setenv("OMNIPIPE_THREADS", "4", 1);
    assert_int_equal(om_config_load_section("tokenizer", keys, 7, argv, &c, err, sizeof err), 0);
    assert_string_equal(om_config_get(c, "runtime_dir"), "/from/file"); /* file only */
    assert_string_equal(om_config_get(c, "log_level"), "debug");        /* file over default */
    assert_string_equal(om_config_get(c, "heartbeat_ms"), "300");       /* env over file */
    assert_string_equal(om_config_get(c, "threads"), "5");              /* flag over env */
    assert_true(om_config_get_bool(c, "verbose"));
    uint64_t v;
    assert_int_equal(om_config_get_u64(c, "hwm", &v, err, sizeof err), 0);
    assert_int_equal(v, 77);
    char ep[512];
    assert_int_equal(om_config_set(c, "runtime_dir", s_tmp), 0);
    assert_int_equal(om_config_endpoint(c, "decoder", ep, sizeof ep), 0);
    char want[512];
    snprintf(want, sizeof want, "ipc://%s/decoder.sock", s_tmp);
    assert_string_equal(ep, want);
    assert_int_equal(om_config_set(c, "endpoint_decoder", "tcp://10.0.0.2:5555"), 0);
    assert_int_equal(om_config_endpoint(c, "decoder", ep, sizeof ep), 0);
    assert_string_equal(ep, "tcp://10.0.0.2:5555");
    om_config_free(c);
    unsetenv("OMNIPIPE_HEARTBEAT_MS");
    unsetenv("OMNIPIPE_THREADS");
    /* errors name the problem */
    char *bad1[] = {"prog", "--config", path, "--nope", NULL};
    assert_int_equal(om_config_load(keys, 4, bad1, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "unknown option '--nope'"));
    f = fopen(path, "a");
    fprintf(f, "bogus = 1\n");
    fclose(f);
    char *bad2[] = {"prog", "--config", path, NULL};
    assert_int_equal(om_config_load_section("tokenizer", keys, 3, bad2, &c, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, ":11: unknown key 'bogus'"));
    /* in the [engine] section it belongs to another daemon: skipped */
    assert_int_equal(om_config_load_section("decoder", keys, 3, bad2, &c, err, sizeof err), 0);
    om_config_free(c);
    char *bad3[] = {"prog", "--config", "/nonexistent/omnipipe.conf", NULL};
    assert_int_equal(om_config_load(keys, 3, bad3, &c, err, sizeof err), -ENOENT);
    char *bad4[] = {"prog", "--config", "/dev/null", "--hwm", "12x", NULL};
    assert_int_equal(om_config_load(keys, 5, bad4, &c, err, sizeof err), 0);
    assert_int_equal(om_config_get_u64(c, "hwm", &v, err, sizeof err), -EINVAL);
    assert_non_null(strstr(err, "hwm: '12x' is not a non-negative integer"));
    om_config_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_roundtrip),
        cmocka_unit_test(test_version_and_malformed),
        cmocka_unit_test(test_arena),
        cmocka_unit_test(test_capture_roundtrip),
        cmocka_unit_test(test_capture_corrupt_truncated),
        cmocka_unit_test(test_transport_send_recv_record),
        cmocka_unit_test(test_transport_hwm_backpressure),
        cmocka_unit_test(test_config_precedence),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
