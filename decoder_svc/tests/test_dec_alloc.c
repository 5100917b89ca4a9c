/* test_dec_alloc.c: "no malloc per token in steady state" for dec_stream and dec_service.
 *
 * Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc so every allocation dec_core makes is
 * counted (protobuf-c's own unpack allocations happen inside its shared library and are not: the
 * daemon unpacks into an arena). 64 streaming requests run 1000 engine steps of one token each;
 * buffers grow geometrically, so the allocations of the steady-state steps must stay logarithmic
 * in the output size, far below one per token. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "dec_service.h"
#include "dec_stream.h"
#include "dec_test_util.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);

static bool s_counting;
static size_t s_n_alloc;

void *__wrap_malloc(size_t n) {
    if (s_counting)
        s_n_alloc++;
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m) {
    if (s_counting)
        s_n_alloc++;
    return __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n) {
    if (s_counting)
        s_n_alloc++;
    return __real_realloc(p, n);
}

static int s_emit(void *ud, const Omnipipe__Header *hdr, const Omnipipe__Envelope *env) {
    (void)hdr;
    size_t *n_env = ud;
    (*n_env)++;
    assert_non_null(env->header);
    return 0;
}

enum { N_REQ = 64, N_STEPS = 1000 };

static void test_stream_allocs(void **state) {
    (void)state;
    const char *stop[] = {"\n\nUser:", "<|im_start|>"};
    dec_stream_opts_t o = {.skip_special_tokens = true,
                           .stop = stop,
                           .n_stop = 2,
                           .split_reasoning = true,
                           .reasoning_starts_open = true};
    dec_stream_t *s[N_REQ];
    for (int i = 0; i < N_REQ; i++)
        assert_int_equal(dec_stream_new(dt_vocab, &o, &s[i]), 0);
    size_t n_tokens = 0;
    s_n_alloc = 0;
    s_counting = true;
    for (int t = 0; t < N_STEPS; t++) {
        for (int i = 0; i < N_REQ; i++) {
            int32_t id = (int32_t)(dt_rand() % 151643);
            dec_delta_t d;
            assert_int_equal(dec_stream_push(s[i], &id, 1, false, &d), 0);
            n_tokens++;
        }
    }
    s_counting = false;
    fprintf(stderr, "dec_stream: %zu allocations for %zu tokens\n", s_n_alloc, n_tokens);
    assert_true(s_n_alloc * 50 < n_tokens);
    for (int i = 0; i < N_REQ; i++)
        dec_stream_free(s[i]);
}

static void test_service_allocs(void **state) {
    (void)state;
    dec_service_t *svc = NULL;
    assert_int_equal(dec_service_new_with_vocab(dt_vocab, &svc), 0);
    static int32_t ids[N_REQ];
    static Omnipipe__SeqStep st[N_REQ];
    static Omnipipe__SeqStep *pst[N_REQ];
    char cid[N_REQ][8];
    Omnipipe__TokenBatch b = OMNIPIPE__TOKEN_BATCH__INIT;
    b.n_seqs = N_REQ;
    b.seqs = pst;
    size_t n_env = 0, n_tokens = 0, n_first = 0, total = 0;
    for (int t = 0; t < N_STEPS; t++) {
        for (int i = 0; i < N_REQ; i++) {
            Omnipipe__SeqStep init = OMNIPIPE__SEQ_STEP__INIT;
            st[i] = init;
            snprintf(cid[i], sizeof(cid[i]), "c%d", i % 5);
            st[i].has_client_id = true;
            st[i].client_id.data = (uint8_t *)cid[i];
            st[i].client_id.len = strlen(cid[i]);
            st[i].has_request_id = true;
            st[i].request_id = (uint64_t)i;
            ids[i] = (int32_t)(dt_rand() % 151643);
            st[i].n_token_ids = 1;
            st[i].token_ids = &ids[i];
            st[i].has_stream = true;
            st[i].stream = true;
            pst[i] = &st[i];
        }
        s_n_alloc = 0;
        s_counting = true;
        assert_int_equal(dec_service_handle_batch(svc, &b, 1000 + (uint64_t)t, s_emit, &n_env), 0);
        s_counting = false;
        if (t == 0)
            n_first = s_n_alloc; /* request creation: allocations are expected here */
        else
            n_tokens += N_REQ;
        if (t > 0)
            total += s_n_alloc;
        if (t == N_STEPS - 1) {
            fprintf(stderr,
                    "dec_service: %zu allocations creating %d requests, %zu for the next "
                    "%zu tokens\n",
                    n_first, N_REQ, total, n_tokens);
            assert_true(total * 50 < n_tokens);
        }
    }
    assert_true(n_env > 0);
    assert_int_equal(dec_service_n_requests(svc), N_REQ);
    dec_service_free(svc);
}

static int setup(void **state) {
    (void)state;
    return dt_load_vocab();
}

static int teardown(void **state) {
    (void)state;
    dt_vocab = om_vocab_free(dt_vocab);
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_allocs),
        cmocka_unit_test(test_service_allocs),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, setup, teardown);
}
