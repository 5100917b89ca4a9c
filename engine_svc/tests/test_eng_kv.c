/* test_eng_kv.c: unit tests of eng_kv: block accounting, refcounts, prefix reuse between two requests
 * sharing a prefix, LRU eviction of cached blocks, and no leak after finish/abort. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "eng_kv.h"

#include <errno.h>

static void s_fill(int32_t *t, uint32_t n, int32_t base) {
    for (uint32_t i = 0; i < n; i++)
        t[i] = base + (int32_t)i * 7;
}

static void test_accounting(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    assert_int_equal(eng_kv_new(10, 4, true, &kv), 0);
    assert_int_equal(eng_kv_n_free(kv), 10);
    assert_int_equal(eng_kv_blocks_for(kv, 0), 0);
    assert_int_equal(eng_kv_blocks_for(kv, 4), 1);
    assert_int_equal(eng_kv_blocks_for(kv, 5), 2);
    eng_kv_table_t a = {0}, b = {0};
    assert_int_equal(eng_kv_reserve(kv, &a, 9), 0); /* 3 blocks */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(eng_kv_n_free(kv), 7);
    assert_int_equal(eng_kv_reserve(kv, &a, 12), 0); /* still 3 */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(eng_kv_reserve(kv, &a, 13), 0);
    assert_int_equal(a.n_blocks, 4);
    /* distinct ids, each with one reference */
    for (uint32_t i = 0; i < a.n_blocks; i++) {
        assert_int_equal(eng_kv_refcount(kv, a.blocks[i]), 1);
        for (uint32_t j = 0; j < i; j++)
            assert_int_not_equal(a.blocks[i], a.blocks[j]);
    }
    /* all or nothing */
    assert_int_equal(eng_kv_reserve(kv, &b, 7 * 4 + 1), -ENOSPC);
    assert_int_equal(b.n_blocks, 0);
    assert_int_equal(eng_kv_n_free(kv), 6);
    assert_int_equal(eng_kv_reserve(kv, &b, 6 * 4), 0);
    assert_int_equal(eng_kv_n_free(kv), 0);
    eng_kv_table_t c = {0};
    assert_int_equal(eng_kv_reserve(kv, &c, 1), -ENOSPC);
    eng_kv_release(kv, &a); /* finish */
    assert_int_equal(eng_kv_n_free(kv), 4);
    eng_kv_release(kv, &b); /* abort */
    assert_int_equal(eng_kv_n_free(kv), 10);
    eng_kv_release(kv, &b); /* releasing an empty table is harmless */
    assert_int_equal(eng_kv_n_free(kv), 10);
    for (int32_t i = 0; i < 10; i++)
        assert_int_equal(eng_kv_refcount(kv, i), 0);
    eng_kv_table_fini(&a);
    eng_kv_table_fini(&b);
    eng_kv_table_fini(&c);
    assert_null(eng_kv_free(kv));
    assert_null(eng_kv_free(NULL));
}

static void test_prefix_reuse(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    assert_int_equal(eng_kv_new(16, 4, true, &kv), 0);
    int32_t p1[10], p2[14];
    s_fill(p1, 10, 100);
    memcpy(p2, p1, sizeof p1); /* second turn: first prompt + more */
    s_fill(p2 + 10, 4, 900);
    eng_kv_table_t a = {0}, b = {0};
    uint32_t cached = 99;
    assert_int_equal(eng_kv_match(kv, &a, p1, 10, &cached), 0);
    assert_int_equal(cached, 0); /* empty cache */
    assert_int_equal(eng_kv_reserve(kv, &a, 10 + 3), 0);
    /* K/V computed for the first 6 tokens: one full block registered */
    eng_kv_commit(kv, &a, p1, 6);
    assert_int_equal(a.n_keyed, 1);
    eng_kv_commit(kv, &a, p1, 10);
    assert_int_equal(a.n_keyed, 2);
    /* a concurrent request with the same prefix shares the two full blocks */
    assert_int_equal(eng_kv_match(kv, &b, p2, 14, &cached), 0);
    assert_int_equal(cached, 8);
    assert_int_equal(b.n_blocks, 2);
    assert_int_equal(b.blocks[0], a.blocks[0]);
    assert_int_equal(b.blocks[1], a.blocks[1]);
    assert_int_equal(eng_kv_refcount(kv, a.blocks[0]), 2);
    assert_int_equal(eng_kv_refcount(kv, a.blocks[2]), 1);
    uint32_t free_before = eng_kv_n_free(kv);
    assert_int_equal(eng_kv_reserve(kv, &b, 14), 0); /* 4 blocks, 2 new */
    assert_int_equal(eng_kv_n_free(kv), free_before - 2);
    eng_kv_release(kv, &a);
    /* shared blocks survive a's release */
    assert_int_equal(eng_kv_refcount(kv, b.blocks[0]), 1);
    eng_kv_commit(kv, &b, p2, 14);
    int32_t b0 = b.blocks[0], b1 = b.blocks[1], b2 = b.blocks[2];
    eng_kv_release(kv, &b);
    assert_int_equal(eng_kv_n_free(kv), 16);
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    assert_int_equal(st.n_cached, 3); /* 3 full keyed blocks of p2 */

    /* a later request finds them, but never matches the whole prompt (one token must run) */
    eng_kv_table_t c = {0};
    assert_int_equal(eng_kv_match(kv, &c, p2, 12, &cached), 0);
    assert_int_equal(cached, 8); /* 12 tokens: blocks 0,1 cached; block 2 would cover all */
    assert_int_equal(c.blocks[0], b0);
    assert_int_equal(c.blocks[1], b1);
    eng_kv_release(kv, &c);
    assert_int_equal(eng_kv_match(kv, &c, p2, 13, &cached), 0);
    assert_int_equal(cached, 12);
    assert_int_equal(c.blocks[2], b2);
    eng_kv_release(kv, &c);
    /* a diverging prompt matches only up to the divergence */
    int32_t p3[14];
    memcpy(p3, p2, sizeof p3);
    p3[5] = 4242;
    assert_int_equal(eng_kv_match(kv, &c, p3, 14, &cached), 0);
    assert_int_equal(cached, 4);
    eng_kv_release(kv, &c);
    /* the same block contents at another position do not match (keys chain the prefix) */
    int32_t p4[9];
    memcpy(p4, p2 + 4, 4 * sizeof *p4);
    memcpy(p4 + 4, p2 + 4, 5 * sizeof *p4);
    assert_int_equal(eng_kv_match(kv, &c, p4, 9, &cached), 0);
    assert_int_equal(cached, 0);
    eng_kv_release(kv, &c);
    eng_kv_note(kv, 14, 8);
    eng_kv_stats(kv, &st);
    assert_int_equal(st.hit_tokens, 8);
    assert_int_equal(st.query_tokens, 14);
    eng_kv_table_fini(&a);
    eng_kv_table_fini(&b);
    eng_kv_table_fini(&c);
    eng_kv_free(kv);
}

static void test_eviction(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    assert_int_equal(eng_kv_new(4, 2, true, &kv), 0);
    int32_t p[9], q[9];
    s_fill(p, 9, 1);
    s_fill(q, 9, 5000);
    eng_kv_table_t a = {0};
    uint32_t cached;
    assert_int_equal(eng_kv_match(kv, &a, p, 9, &cached), 0);
    assert_int_equal(eng_kv_reserve(kv, &a, 8), 0); /* all 4 blocks */
    eng_kv_commit(kv, &a, p, 8);
    eng_kv_release(kv, &a);
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    assert_int_equal(st.n_cached, 4);
    assert_int_equal(st.n_free, 4);
    /* a new request needing 2 blocks evicts the tail of p's prefix first (blocks 3, 2) */
    eng_kv_table_t b = {0};
    assert_int_equal(eng_kv_reserve(kv, &b, 4), 0);
    eng_kv_stats(kv, &st);
    assert_int_equal(st.n_cached, 2);
    assert_int_equal(eng_kv_match(kv, &a, p, 9, &cached), 0);
    assert_int_equal(cached, 4); /* blocks 0,1 of p still cached */
    eng_kv_release(kv, &a);
    /* overwriting: b's blocks carry q now; p's old keys must not match q's data */
    eng_kv_commit(kv, &b, q, 4);
    eng_kv_release(kv, &b);
    assert_int_equal(eng_kv_match(kv, &a, q, 5, &cached), 0);
    assert_int_equal(cached, 4);
    eng_kv_release(kv, &a);
    /* everything is allocatable again, nothing leaked */
    assert_int_equal(eng_kv_n_free(kv), 4);
    assert_int_equal(eng_kv_reserve(kv, &a, 8), 0);
    eng_kv_stats(kv, &st);
    assert_int_equal(st.n_cached, 0);
    assert_int_equal(eng_kv_match(kv, &b, p, 9, &cached), 0);
    assert_int_equal(cached, 0); /* all evicted */
    eng_kv_release(kv, &a);
    eng_kv_release(kv, &b);
    assert_int_equal(eng_kv_n_free(kv), 4);
    eng_kv_table_fini(&a);
    eng_kv_table_fini(&b);
    eng_kv_free(kv);
}

static void test_no_prefix_cache(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    assert_int_equal(eng_kv_new(8, 4, false, &kv), 0);
    int32_t p[12];
    s_fill(p, 12, 3);
    eng_kv_table_t a = {0}, b = {0};
    uint32_t cached;
    assert_int_equal(eng_kv_match(kv, &a, p, 12, &cached), 0);
    assert_int_equal(eng_kv_reserve(kv, &a, 12), 0);
    eng_kv_commit(kv, &a, p, 12);
    assert_int_equal(eng_kv_match(kv, &b, p, 12, &cached), 0);
    assert_int_equal(cached, 0);
    eng_kv_release(kv, &a);
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    assert_int_equal(st.n_cached, 0);
    assert_int_equal(st.n_free, 8);
    eng_kv_table_fini(&a);
    eng_kv_table_fini(&b);
    eng_kv_free(kv);
}

static void test_bad_args(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    assert_int_equal(eng_kv_new(0, 4, true, &kv), -EINVAL);
    assert_int_equal(eng_kv_new(4, 0, true, &kv), -EINVAL);
    assert_null(kv);
    assert_int_equal(eng_kv_new(4, 4, true, &kv), 0);
    eng_kv_table_t a = {0};
    uint32_t cached;
    int32_t p[4] = {1, 2, 3, 4};
    assert_int_equal(eng_kv_reserve(kv, &a, 4), 0);
    assert_int_equal(eng_kv_match(kv, &a, p, 4, &cached), -EINVAL); /* table not empty */
    eng_kv_release(kv, &a);
    eng_kv_table_fini(&a);
    eng_kv_free(kv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accounting),  cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_eviction),    cmocka_unit_test(test_no_prefix_cache),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
