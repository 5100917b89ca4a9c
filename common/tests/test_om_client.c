/* test_om_client.c: the client library's guarantees without a real pipeline: with no stage at all a
 * request fails UNAVAILABLE naming the stage it cannot reach; with stages that answer heartbeats but
 * never the request, the fallback timer answers DEADLINE_EXCEEDED (stage "client") one grace second
 * after the deadline and sends an Abort upstream; an abort before sending ends it locally. The fake
 * stages are two ROUTER sockets served by a thread. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "om_arena.h"
#include "om_client.h"
#include "om_err.h"
#include "om_msg.h"
#include "om_time.h"

static char s_tmp[256];

typedef struct fake {
    void *ctx;
    char tok_ep[512], dec_ep[512];
    atomic_int stop;
    atomic_int n_chat;     /* chat envelopes the fake tokenizer swallowed */
    atomic_int n_abort;    /* aborts it received */
    uint64_t deadline_ms;  /* header.deadline_unix_ms of the last chat */
    void *tok, *dec;       /* the fake stages' ROUTERs (bound before the client exists) */
    pthread_t thread;
} fake_t;

static void *s_fake(void *arg) {
    fake_t *f = arg;
    void *tok = f->tok, *dec = f->dec;
    om_arena_t *a;
    om_arena_new(0, &a);
    while (!atomic_load(&f->stop)) {
        zmq_pollitem_t it[2] = {{tok, 0, ZMQ_POLLIN, 0}, {dec, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, 2, 20) <= 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (!(it[i].revents & ZMQ_POLLIN))
                continue;
            void *s = i ? dec : tok;
            char id[64], buf[8192];
            int idn = zmq_recv(s, id, sizeof id, 0);
            int n = zmq_recv(s, buf, sizeof buf, 0);
            Omnipipe__Envelope *env;
            om_arena_reset(a);
            if (idn <= 0 || n <= 0 || om_msg_unpack(a, buf, (size_t)n, &env) < 0)
                continue;
            if (om_msg_is_control(env)) {
                Omnipipe__Envelope *hb = om_msg_heartbeat_env(a, i ? "decoder" : "tokenizer", 1, NULL);
                uint8_t *out;
                size_t out_len;
                om_msg_pack(a, hb, &out, &out_len);
                zmq_send(s, id, (size_t)idn, ZMQ_SNDMORE);
                zmq_send(s, out, out_len, 0);
            } else if (env->body_case == OMNIPIPE__ENVELOPE__BODY_CHAT) {
                f->deadline_ms = env->header->deadline_unix_ms;
                atomic_fetch_add(&f->n_chat, 1);
            } else if (env->body_case == OMNIPIPE__ENVELOPE__BODY_ABORT) {
                atomic_fetch_add(&f->n_abort, 1);
            }
        }
    }
    om_arena_free(a);
    int zero = 0;
    zmq_setsockopt(tok, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(dec, ZMQ_LINGER, &zero, sizeof zero);
    zmq_close(tok);
    zmq_close(dec);
    return NULL;
}

static int s_setup(void **state) {
    (void)state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/om-test-client-XXXXXX");
    return mkdtemp(s_tmp) ? 0 : -1;
}

static int s_teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static Omnipipe__ChatRequest s_req(void) {
    Omnipipe__ChatRequest r = OMNIPIPE__CHAT_REQUEST__INIT;
    r.prompt_text = "hello";
    return r;
}

static om_client_t *s_client(const char *tok, const char *dec) {
    om_client_opts_t o = {.tokenizer_ep = tok, .decoder_ep = dec, .heartbeat_ms = 50, .liveness = 4};
    om_client_t *c = NULL;
    char err[256];
    assert_int_equal(om_client_new(&o, &c, err, sizeof err), 0);
    return c;
}

static void test_no_stage_unavailable(void **state) {
    (void)state;
    char tok[512], dec[512];
    snprintf(tok, sizeof tok, "ipc://%s/none-tok.sock", s_tmp);
    snprintf(dec, sizeof dec, "ipc://%s/none-dec.sock", s_tmp);
    om_client_t *c = s_client(tok, dec);
    Omnipipe__ChatRequest r = s_req();
    uint64_t id, t0 = om_time_mono_ms();
    assert_int_equal(om_client_submit(c, &r, 60000, &id), 0);
    om_client_event_t ev;
    assert_int_equal(om_client_poll(c, 2000, &ev), 1);
    uint64_t took = om_time_mono_ms() - t0;
    assert_int_equal(ev.kind, OM_CLIENT_STATUS);
    assert_int_equal(ev.request_id, id);
    assert_int_equal(ev.env->status->code, OM_CODE_UNAVAILABLE);
    assert_true(ev.env->status->retryable);
    assert_string_equal(ev.env->status->stage, "decoder");
    assert_non_null(strstr(ev.env->status->message, "cannot reach the decoder stage"));
    assert_true(took >= 200 && took < 1500);
    assert_int_equal(om_client_inflight(c), 0);
    om_client_free(c);
}

static void test_deadline_fallback_and_abort(void **state) {
    (void)state;
    fake_t f = {0};
    f.ctx = zmq_ctx_new();
    snprintf(f.tok_ep, sizeof f.tok_ep, "ipc://%s/tok.sock", s_tmp);
    snprintf(f.dec_ep, sizeof f.dec_ep, "ipc://%s/dec.sock", s_tmp);
    f.tok = zmq_socket(f.ctx, ZMQ_ROUTER);
    f.dec = zmq_socket(f.ctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(f.tok, f.tok_ep), 0);
    assert_int_equal(zmq_bind(f.dec, f.dec_ep), 0);
    assert_int_equal(pthread_create(&f.thread, NULL, s_fake, &f), 0);
    om_client_t *c = s_client(f.tok_ep, f.dec_ep);
    Omnipipe__ChatRequest r = s_req();
    uint64_t id, t0 = om_time_mono_ms(), wall0 = om_time_wall_ms();
    assert_int_equal(om_client_submit(c, &r, 300, &id), 0);
    om_client_event_t ev;
    int got = 0;
    while (om_time_mono_ms() - t0 < 5000 && (got = om_client_poll(c, 100, &ev)) == 0) {
    }
    uint64_t took = om_time_mono_ms() - t0;
    assert_int_equal(got, 1);
    assert_int_equal(ev.kind, OM_CLIENT_STATUS);
    if ((int)ev.env->status->code != OM_CODE_DEADLINE_EXCEEDED)
        fail_msg("got %s from %s: %s", om_code_name((int)ev.env->status->code), ev.env->status->stage, ev.env->status->message);
    assert_string_equal(ev.env->status->stage, "client");
    /* deadline 300 ms + 1 s grace, never a hang */
    assert_true(took >= 1250 && took < 3000);
    assert_int_equal(atomic_load(&f.n_chat), 1);
    assert_true(f.deadline_ms >= wall0 + 300 && f.deadline_ms < wall0 + 1000);
    /* giving up sends an Abort so the pipeline frees the request */
    for (int i = 0; i < 100 && atomic_load(&f.n_abort) == 0; i++)
        om_client_poll(c, 20, &ev);
    assert_int_equal(atomic_load(&f.n_abort), 1);
    /* an abort before the request was sent ends it locally */
    om_client_free(c);
    char nodec[512];
    snprintf(nodec, sizeof nodec, "ipc://%s/nobody.sock", s_tmp);
    c = s_client(f.tok_ep, nodec);
    assert_int_equal(om_client_submit(c, &r, 0, &id), 0);
    assert_int_equal(om_client_abort(c, id), 0);
    assert_int_equal(om_client_poll(c, 1000, &ev), 1);
    assert_int_equal(ev.kind, OM_CLIENT_STATUS);
    assert_int_equal(ev.env->status->code, OM_CODE_CANCELLED);
    assert_int_equal(om_client_abort(c, id), -ENOENT);
    om_client_free(c);
    atomic_store(&f.stop, 1);
    pthread_join(f.thread, NULL);
    zmq_ctx_term(f.ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_stage_unavailable),
        cmocka_unit_test(test_deadline_fallback_and_abort),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
