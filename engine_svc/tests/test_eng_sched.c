/* test_eng_sched.c: unit tests of eng_sched without a model: chunked prefill under the token budget,
 * decodes and prefills mixed in one step, admission waiting for KV memory and for max_running, the
 * queue limit, recompute preemption and prefix-cache reuse on readmission, no leak on removal. The
 * "model" here just marks the planned tokens computed and appends a fake sampled token. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "eng_kv.h"
#include "eng_sched.h"

typedef struct t_seq {
    eng_sched_seq_t seq;
    int32_t buf[256];
} t_seq_t;

static void s_seq(t_seq_t *t, uint32_t n_prompt, int32_t base, uint32_t max_new) {
    memset(t, 0, sizeof *t);
    for (uint32_t i = 0; i < n_prompt; i++)
        t->buf[i] = base + (int32_t)i;
    t->seq.tokens = t->buf;
    t->seq.n_prompt = t->seq.n_tokens = n_prompt;
    t->seq.cap = n_prompt + max_new;
}

/* runs the plan: advance every item, append token 1000+n for want_logits items */
static void s_fake_run(eng_sched_t *s, eng_sched_item_t *items, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        eng_sched_advance(s, &items[i]);
        if (items[i].want_logits)
            eng_sched_append(items[i].seq, 1000 + (int32_t)items[i].seq->n_tokens);
    }
}

static void test_chunked_prefill(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    eng_sched_t *s = NULL;
    assert_int_equal(eng_kv_new(32, 4, true, &kv), 0);
    eng_sched_opts_t o = {.max_batch_tokens = 4, .max_running = 4, .max_waiting = 4};
    assert_int_equal(eng_sched_new(&o, kv, &s), 0);
    t_seq_t a;
    s_seq(&a, 10, 1, 5);
    assert_int_equal(eng_sched_add(s, &a.seq), 0);
    eng_sched_item_t items[4];
    uint32_t n, nt;
    const uint32_t want_past[3] = {0, 4, 8}, want_n[3] = {4, 4, 2};
    for (int step = 0; step < 3; step++) {
        assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
        assert_int_equal(n, 1);
        assert_int_equal(items[0].n_past, want_past[step]);
        assert_int_equal(items[0].n_tokens, want_n[step]);
        assert_int_equal(nt, want_n[step]);
        assert_int_equal(items[0].want_logits, step == 2);
        s_fake_run(s, items, n);
    }
    assert_int_equal(a.seq.n_tokens, 11);
    /* decode: one token at n_past 10 */
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 1);
    assert_int_equal(items[0].n_past, 10);
    assert_int_equal(items[0].n_tokens, 1);
    assert_true(items[0].want_logits);
    /* the block table covers the positions computed */
    assert_true(a.seq.table.n_blocks >= eng_kv_blocks_for(kv, 11));
    eng_sched_remove(s, &a.seq);
    assert_int_equal(a.seq.state, ENG_SCHED_DONE);
    assert_int_equal(eng_kv_n_free(kv), 32);
    eng_kv_table_fini(&a.seq.table);
    eng_sched_free(s);
    eng_kv_free(kv);
}

static void test_mixed_step(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    eng_sched_t *s = NULL;
    assert_int_equal(eng_kv_new(32, 4, true, &kv), 0);
    eng_sched_opts_t o = {.max_batch_tokens = 6, .max_running = 4, .max_waiting = 4};
    assert_int_equal(eng_sched_new(&o, kv, &s), 0);
    t_seq_t a, b;
    s_seq(&a, 3, 1, 10);
    s_seq(&b, 12, 100, 10);
    assert_int_equal(eng_sched_add(s, &a.seq), 0);
    eng_sched_item_t items[4];
    uint32_t n, nt;
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    s_fake_run(s, items, n); /* a prefilled, one token sampled */
    assert_int_equal(eng_sched_add(s, &b.seq), 0);
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    /* a's decode first, then b's first chunk with the rest of the budget */
    assert_int_equal(n, 2);
    assert_ptr_equal(items[0].seq, &a.seq);
    assert_int_equal(items[0].n_tokens, 1);
    assert_ptr_equal(items[1].seq, &b.seq);
    assert_int_equal(items[1].n_tokens, 5);
    assert_false(items[1].want_logits);
    assert_int_equal(nt, 6);
    assert_int_equal(eng_sched_n_running(s), 2);
    eng_sched_remove(s, &a.seq);
    eng_sched_remove(s, &b.seq);
    assert_int_equal(eng_kv_n_free(kv), 32);
    eng_kv_table_fini(&a.seq.table);
    eng_kv_table_fini(&b.seq.table);
    eng_sched_free(s);
    eng_kv_free(kv);
}

static void test_admission(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    eng_sched_t *s = NULL;
    assert_int_equal(eng_kv_new(4, 4, false, &kv), 0); /* 16 token slots */
    eng_sched_opts_t o = {.max_batch_tokens = 64, .max_running = 2, .max_waiting = 2};
    assert_int_equal(eng_sched_new(&o, kv, &s), 0);
    t_seq_t a, b, c, d;
    s_seq(&a, 10, 1, 2);  /* 3 blocks */
    s_seq(&b, 6, 50, 2);  /* 2 blocks: does not fit next to a */
    s_seq(&c, 2, 90, 2);
    s_seq(&d, 2, 95, 2);
    assert_int_equal(eng_sched_add(s, &a.seq), 0);
    assert_int_equal(eng_sched_add(s, &b.seq), 0);
    assert_int_equal(eng_sched_add(s, &c.seq), -EBUSY); /* queue of 2 is full */
    eng_sched_item_t items[2];
    uint32_t n, nt;
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 1); /* b waits for memory (FIFO: nothing overtakes it) */
    assert_int_equal(eng_sched_n_waiting(s), 1);
    assert_int_equal(b.seq.table.n_blocks, 0); /* nothing held while waiting */
    s_fake_run(s, items, n);
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 1);
    s_fake_run(s, items, n);
    eng_sched_remove(s, &a.seq); /* finished: b gets in */
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 1);
    assert_ptr_equal(items[0].seq, &b.seq);
    assert_int_equal(eng_sched_add(s, &c.seq), 0);
    assert_int_equal(eng_sched_add(s, &d.seq), 0);
    s_fake_run(s, items, n);
    /* max_running 2: b and c run, d waits although memory is free */
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 2);
    assert_int_equal(eng_sched_n_running(s), 2);
    assert_int_equal(eng_sched_n_waiting(s), 1);
    assert_ptr_equal(eng_sched_waiting_at(s, 0), &d.seq);
    eng_sched_remove(s, &d.seq); /* abort while waiting */
    eng_sched_remove(s, &b.seq);
    eng_sched_remove(s, &c.seq);
    assert_int_equal(eng_kv_n_free(kv), 4);
    assert_int_equal(eng_sched_n_running(s) + eng_sched_n_waiting(s), 0);
    eng_kv_table_fini(&a.seq.table);
    eng_kv_table_fini(&b.seq.table);
    eng_kv_table_fini(&c.seq.table);
    eng_kv_table_fini(&d.seq.table);
    eng_sched_free(s);
    eng_kv_free(kv);
}

static void test_preemption(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    eng_sched_t *s = NULL;
    assert_int_equal(eng_kv_new(4, 4, true, &kv), 0);
    eng_sched_opts_t o = {.max_batch_tokens = 64, .max_running = 4, .max_waiting = 4};
    assert_int_equal(eng_sched_new(&o, kv, &s), 0);
    t_seq_t a, b;
    s_seq(&a, 7, 1, 9);  /* 2 blocks now, grows to 4 */
    s_seq(&b, 7, 200, 9);
    assert_int_equal(eng_sched_add(s, &a.seq), 0);
    assert_int_equal(eng_sched_add(s, &b.seq), 0);
    eng_sched_item_t items[4];
    uint32_t n, nt;
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 2);
    s_fake_run(s, items, n); /* both at 8 tokens, 7 computed, all 4 blocks used */
    assert_int_equal(eng_kv_n_free(kv), 0);
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 2); /* position 7 still fits in block 1 */
    s_fake_run(s, items, n);
    /* a needs a third block: b (newest) is preempted and requeued at the front */
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 1);
    assert_ptr_equal(items[0].seq, &a.seq);
    assert_int_equal(b.seq.state, ENG_SCHED_WAITING);
    assert_int_equal(b.seq.n_computed, 0);
    assert_int_equal(b.seq.n_preempted, 1);
    assert_int_equal(b.seq.n_tokens, 9); /* its generated tokens are kept */
    assert_ptr_equal(eng_sched_waiting_at(s, 0), &b.seq);
    s_fake_run(s, items, n);
    eng_sched_remove(s, &a.seq);
    /* readmitted: b's block 1 was evicted (tail first) to give a its third block, block 0 is
     * still in the prefix cache, so only tokens 4..8 are recomputed */
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 1);
    assert_ptr_equal(items[0].seq, &b.seq);
    assert_int_equal(items[0].n_past, 4);
    assert_int_equal(items[0].n_tokens, 5);
    assert_true(items[0].want_logits);
    assert_int_equal(b.seq.cached_tokens, 0); /* reported at first admission only */
    eng_sched_remove(s, &b.seq);
    assert_int_equal(eng_kv_n_free(kv), 4);
    eng_kv_table_fini(&a.seq.table);
    eng_kv_table_fini(&b.seq.table);
    eng_sched_free(s);
    eng_kv_free(kv);
}

static void test_prefix_admission(void **state) {
    (void)state;
    eng_kv_t *kv = NULL;
    eng_sched_t *s = NULL;
    assert_int_equal(eng_kv_new(16, 4, true, &kv), 0);
    eng_sched_opts_t o = {.max_batch_tokens = 64, .max_running = 4, .max_waiting = 4};
    assert_int_equal(eng_sched_new(&o, kv, &s), 0);
    t_seq_t a, b;
    s_seq(&a, 9, 1, 4);
    assert_int_equal(eng_sched_add(s, &a.seq), 0);
    eng_sched_item_t items[4];
    uint32_t n, nt;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
        s_fake_run(s, items, n);
    }
    assert_int_equal(a.seq.n_tokens, 13);
    eng_sched_remove(s, &a.seq);
    /* second turn: first prompt + reply + 3 new tokens */
    s_seq(&b, 0, 0, 4);
    memcpy(b.buf, a.buf, 13 * sizeof *b.buf);
    b.buf[13] = 7;
    b.buf[14] = 8;
    b.buf[15] = 9;
    b.seq.n_prompt = b.seq.n_tokens = 16;
    b.seq.cap = 20;
    assert_int_equal(eng_sched_add(s, &b.seq), 0);
    assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
    assert_int_equal(n, 1);
    /* a computed 12 tokens (its last sample never ran): 3 full blocks */
    assert_int_equal(b.seq.cached_tokens, 12);
    assert_int_equal(items[0].n_past, 12);
    assert_int_equal(items[0].n_tokens, 4);
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    assert_int_equal(st.query_tokens, 9 + 16);
    assert_int_equal(st.hit_tokens, 12);
    eng_sched_remove(s, &b.seq);
    eng_kv_table_fini(&a.seq.table);
    eng_kv_table_fini(&b.seq.table);
    eng_sched_free(s);
    eng_kv_free(kv);
}

/* Randomised: many sequences sharing prefixes, a small KV pool (preemption, eviction), aborts. A
 * simulated KV pool records, per slot, a hash of the token prefix whose K/V it holds; every step
 * checks that each planned sequence's block table maps every position it attends to onto a slot
 * holding exactly its own prefix (shared prefix blocks included), and that the blocks it writes
 * are its alone. At the end every block is free again. */
#define R_SEQS 40
#define R_CAP 96

typedef struct r_seq {
    eng_sched_seq_t seq;
    int32_t buf[R_CAP];
    uint64_t ph[R_CAP];        /* ph[p] = hash of tokens[0..p] */
    uint32_t max_new;
    bool live, done;
} r_seq_t;

static uint64_t s_h(uint64_t h, int32_t t) {
    h ^= (uint64_t)(uint32_t)t + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static void test_random_kv_integrity(void **state) {
    (void)state;
    const uint32_t bs = 4, n_blocks = 40;
    eng_kv_t *kv = NULL;
    eng_sched_t *s = NULL;
    assert_int_equal(eng_kv_new(n_blocks, bs, true, &kv), 0);
    eng_sched_opts_t o = {.max_batch_tokens = 24, .max_running = 6, .max_waiting = 64};
    assert_int_equal(eng_sched_new(&o, kv, &s), 0);
    static r_seq_t seqs[R_SEQS];
    memset(seqs, 0, sizeof seqs);
    uint64_t *sim = calloc((size_t)n_blocks * bs, sizeof *sim);
    assert_non_null(sim);
    uint64_t rng = 42;
#define RND() (rng = rng * 6364136223846793005ull + 1442695040888963407ull, (uint32_t)(rng >> 33))
    uint32_t added = 0, finished = 0, aborted = 0, preemptions = 0;
    eng_sched_item_t items[6];
    for (int step = 0; step < 3000 && (added < R_SEQS || eng_sched_n_running(s) + eng_sched_n_waiting(s));
         step++) {
        if (added < R_SEQS && RND() % 3 == 0) { /* a new request: one of 3 shared prefixes + tail */
            r_seq_t *q = &seqs[added++];
            uint32_t base = RND() % 3, n_pre = 4 + base * 5, n_tail = RND() % 6;
            uint32_t n = 0;
            for (uint32_t i = 0; i < n_pre; i++)
                q->buf[n++] = (int32_t)(base * 100 + i);
            for (uint32_t i = 0; i < n_tail; i++)
                q->buf[n++] = (int32_t)(RND() % 7);
            if (n == 0)
                q->buf[n++] = 1;
            q->max_new = 1 + RND() % 30;
            q->seq.tokens = q->buf;
            q->seq.n_prompt = q->seq.n_tokens = n;
            q->seq.cap = n + q->max_new;
            uint64_t h = 0;
            for (uint32_t i = 0; i < n; i++)
                q->ph[i] = h = s_h(h, q->buf[i]);
            assert_int_equal(eng_sched_add(s, &q->seq), 0);
            q->live = true;
        }
        if (RND() % 40 == 0 && added > 0) { /* abort someone */
            r_seq_t *q = &seqs[RND() % added];
            if (q->live) {
                eng_sched_remove(s, &q->seq);
                q->live = false;
                aborted++;
            }
        }
        uint32_t n = 0, nt = 0;
        assert_int_equal(eng_sched_schedule(s, items, &n, &nt), 0);
        assert_true(nt <= o.max_batch_tokens);
        for (uint32_t k = 0; k < n; k++) { /* "run the model" on the simulated pool */
            const eng_sched_item_t *it = &items[k];
            r_seq_t *q = (r_seq_t *)it->seq;
            const eng_kv_table_t *t = &q->seq.table;
            uint32_t end = it->n_past + it->n_tokens;
            assert_true(t->n_blocks >= eng_kv_blocks_for(kv, end));
            for (uint32_t p = it->n_past; p < end; p++) {
                int32_t b = t->blocks[p / bs];
                assert_int_equal(eng_kv_refcount(kv, b), 1); /* written blocks are private */
                sim[(size_t)b * bs + p % bs] = q->ph[p];
            }
            for (uint32_t p = 0; p < end; p++) /* attention reads exactly its own prefix */
                assert_true(sim[(size_t)t->blocks[p / bs] * bs + p % bs] == q->ph[p]);
        }
        for (uint32_t k = 0; k < n; k++) {
            r_seq_t *q = (r_seq_t *)items[k].seq;
            eng_sched_advance(s, &items[k]);
            if (!items[k].want_logits)
                continue;
            uint32_t at = q->seq.n_tokens;
            int32_t tok = (int32_t)(q->ph[at - 1] % 5); /* small vocab: generated prefixes repeat */
            eng_sched_append(&q->seq, tok);
            q->ph[at] = s_h(q->ph[at - 1], tok);
            if (q->seq.n_tokens - q->seq.n_prompt >= q->max_new) {
                eng_sched_remove(s, &q->seq);
                q->live = false;
                q->done = true;
                finished++;
            }
        }
    }
    for (uint32_t i = 0; i < added; i++) {
        preemptions += seqs[i].seq.n_preempted;
        assert_false(seqs[i].live);
        if (seqs[i].done) /* the tokens a sequence got are those of its own history alone */
            for (uint32_t p = seqs[i].seq.n_prompt; p < seqs[i].seq.n_tokens; p++)
                assert_int_equal(seqs[i].buf[p], (int32_t)(seqs[i].ph[p - 1] % 5));
        eng_kv_table_fini(&seqs[i].seq.table);
    }
    assert_int_equal(added, R_SEQS);
    assert_int_equal(finished + aborted, R_SEQS);
    assert_int_equal(eng_kv_n_free(kv), n_blocks);
    eng_kv_stats_t st;
    eng_kv_stats(kv, &st);
    assert_true(st.hit_tokens > 0); /* shared prefixes were reused */
    assert_true(preemptions > 0);   /* the pool was tight enough to preempt */
    free(sim);
    eng_sched_free(s);
    eng_kv_free(kv);
#undef RND
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunked_prefill), cmocka_unit_test(test_mixed_step),
        cmocka_unit_test(test_admission),       cmocka_unit_test(test_preemption),
        cmocka_unit_test(test_prefix_admission), cmocka_unit_test(test_random_kv_integrity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
