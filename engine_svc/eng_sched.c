/* eng_sched.c: continuous batching with chunked prefill, admission control and recompute
 * preemption over eng_kv. See eng_sched.h. */
#include "eng_sched.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct eng_sched {
    eng_sched_opts_t o;
    eng_kv_t *kv;                 /* borrowed */
    eng_sched_seq_t **running;    /* (max_running) in admission order */
    uint32_t n_running;
    eng_sched_seq_t **waiting;    /* (cap_waiting) queue, front first */
    uint32_t n_waiting;
    uint32_t cap_waiting;         /* max_waiting + max_running (preempted sequences re-queue) */
    uint64_t next_order;          /* arrival counter */
    uint64_t stamp;               /* schedule() call counter, marks planned sequences */
};

int eng_sched_new(const eng_sched_opts_t *o, eng_kv_t *kv, eng_sched_t **ret) {
    if (!o || !kv || !ret || o->max_batch_tokens == 0 || o->max_running == 0 || o->max_waiting == 0)
        return -EINVAL;
    eng_sched_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->o = *o;
    s->kv = kv;
    s->cap_waiting = o->max_waiting + o->max_running;
    s->running = calloc(o->max_running, sizeof *s->running);
    s->waiting = calloc(s->cap_waiting, sizeof *s->waiting);
    if (!s->running || !s->waiting) {
        eng_sched_free(s);
        return -ENOMEM;
    }
    *ret = s;
    return 0;
}

eng_sched_t *eng_sched_free(eng_sched_t *s) {
    if (!s)
        return NULL;
    free(s->running);
    free(s->waiting);
    free(s);
    return NULL;
}

uint32_t eng_sched_n_running(const eng_sched_t *s) { return s->n_running; }
uint32_t eng_sched_n_waiting(const eng_sched_t *s) { return s->n_waiting; }
const eng_sched_opts_t *eng_sched_opts(const eng_sched_t *s) { return &s->o; }

eng_sched_seq_t *eng_sched_running_at(const eng_sched_t *s, uint32_t i) {
    return i < s->n_running ? s->running[i] : NULL;
}

eng_sched_seq_t *eng_sched_waiting_at(const eng_sched_t *s, uint32_t i) {
    return i < s->n_waiting ? s->waiting[i] : NULL;
}

int eng_sched_add(eng_sched_t *s, eng_sched_seq_t *seq) {
    if (!seq || seq->state != ENG_SCHED_NEW || seq->n_tokens == 0 || seq->n_tokens > seq->cap ||
        seq->table.n_blocks != 0)
        return -EINVAL;
    if (s->n_waiting >= s->o.max_waiting)
        return -EBUSY;
    seq->n_computed = 0;
    seq->order = s->next_order++;
    seq->state = ENG_SCHED_WAITING;
    s->waiting[s->n_waiting++] = seq;
    return 0;
}

static void s_list_del(eng_sched_seq_t **list, uint32_t *n, eng_sched_seq_t *seq) {
    for (uint32_t i = 0; i < *n; i++) {
        if (list[i] == seq) {
            memmove(list + i, list + i + 1, (*n - i - 1) * sizeof *list);
            (*n)--;
            return;
        }
    }
}

void eng_sched_remove(eng_sched_t *s, eng_sched_seq_t *seq) {
    if (seq->state == ENG_SCHED_WAITING)
        s_list_del(s->waiting, &s->n_waiting, seq);
    else if (seq->state == ENG_SCHED_RUNNING)
        s_list_del(s->running, &s->n_running, seq);
    else
        return;
    eng_kv_release(s->kv, &seq->table);
    seq->state = ENG_SCHED_DONE;
}

/* running[idx] goes back to the front of the queue, its KV released (recomputed when readmitted) */
static void s_preempt(eng_sched_t *s, uint32_t idx) {
    eng_sched_seq_t *seq = s->running[idx];
    memmove(s->running + idx, s->running + idx + 1, (s->n_running - idx - 1) * sizeof *s->running);
    s->n_running--;
    eng_kv_release(s->kv, &seq->table);
    seq->n_computed = 0;
    seq->n_preempted++;
    seq->state = ENG_SCHED_WAITING;
    /* cap_waiting = max_waiting + max_running leaves room for every preempted sequence */
    memmove(s->waiting + 1, s->waiting, s->n_waiting * sizeof *s->waiting);
    s->waiting[0] = seq;
    s->n_waiting++;
}

/* Plans running[i] for up to *budget tokens. When its blocks do not fit, the newest running
 * sequence after it that is not planned this step is preempted, repeatedly; with none left it is
 * preempted itself. Returns 1 (planned), 0 (it was preempted) or -errno. */
static int s_plan(eng_sched_t *s, uint32_t i, uint32_t *budget, eng_sched_item_t *items, uint32_t *n,
                  bool *preempted) {
    eng_sched_seq_t *seq = s->running[i];
    uint32_t take = seq->n_tokens - seq->n_computed;
    if (take > *budget)
        take = *budget;
    for (;;) {
        int r = eng_kv_reserve(s->kv, &seq->table, (uint64_t)seq->n_computed + take);
        if (r == 0)
            break;
        if (r != -ENOSPC)
            return r;
        *preempted = true;
        uint32_t v = s->n_running;
        while (v > i + 1 && s->running[v - 1]->plan_stamp == s->stamp)
            v--;
        if (v > i + 1) {
            s_preempt(s, v - 1); /* a newer sequence yields its blocks */
            continue;
        }
        s_preempt(s, i); /* nothing newer to take from: this one waits */
        return 0;
    }
    seq->plan_stamp = s->stamp;
    items[(*n)++] = (eng_sched_item_t){.seq = seq,
                                       .n_past = seq->n_computed,
                                       .n_tokens = take,
                                       .want_logits = seq->n_computed + take == seq->n_tokens};
    *budget -= take;
    return 1;
}

int eng_sched_schedule(eng_sched_t *s, eng_sched_item_t *items, uint32_t *ret_n,
                       uint32_t *ret_n_tokens) {
    uint32_t budget = s->o.max_batch_tokens, n = 0;
    bool preempted = false;
    s->stamp++;

    /* 1. running sequences, in admission order: first every decode (one token each), so a long
     * prefill never stalls them, then the continuing prefill chunks */
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t i = 0; i < s->n_running && budget > 0;) {
            eng_sched_seq_t *seq = s->running[i];
            bool decode = seq->n_tokens - seq->n_computed == 1;
            if (decode != (pass == 0) || seq->plan_stamp == s->stamp) {
                i++;
                continue;
            }
            int r = s_plan(s, i, &budget, items, &n, &preempted);
            if (r < 0)
                return r;
            if (r > 0)
                i++; /* else running[i] is the next sequence now */
        }
    }

    /* 2. admissions, FIFO; none in a step that had to preempt */
    while (!preempted && budget > 0 && s->n_waiting > 0 && s->n_running < s->o.max_running) {
        eng_sched_seq_t *seq = s->waiting[0];
        uint32_t cached = 0;
        int r = 0;
        if (!seq->no_prefix_cache)
            r = eng_kv_match(s->kv, &seq->table, seq->tokens, seq->n_tokens, &cached);
        if (r < 0)
            return r;
        r = eng_kv_reserve(s->kv, &seq->table, seq->n_tokens);
        if (r == -ENOSPC) {
            eng_kv_release(s->kv, &seq->table); /* head of line waits for memory */
            break;
        }
        if (r < 0) {
            eng_kv_release(s->kv, &seq->table);
            return r;
        }
        seq->n_computed = cached;
        if (!seq->admitted_once) {
            seq->admitted_once = true;
            seq->cached_tokens = cached < seq->n_prompt ? cached : seq->n_prompt;
            eng_kv_note(s->kv, seq->n_prompt, seq->cached_tokens);
        }
        memmove(s->waiting, s->waiting + 1, (s->n_waiting - 1) * sizeof *s->waiting);
        s->n_waiting--;
        seq->state = ENG_SCHED_RUNNING;
        s->running[s->n_running++] = seq;
        uint32_t take = seq->n_tokens - seq->n_computed;
        if (take > budget)
            take = budget;
        items[n++] = (eng_sched_item_t){.seq = seq,
                                        .n_past = seq->n_computed,
                                        .n_tokens = take,
                                        .want_logits = seq->n_computed + take == seq->n_tokens};
        budget -= take;
    }
    *ret_n = n;
    *ret_n_tokens = s->o.max_batch_tokens - budget;
    return 0;
}

void eng_sched_advance(eng_sched_t *s, const eng_sched_item_t *item) {
    eng_sched_seq_t *seq = item->seq;
    if (seq->state != ENG_SCHED_RUNNING || seq->n_computed != item->n_past)
        return;
    seq->n_computed = item->n_past + item->n_tokens;
    if (!seq->no_prefix_cache)
        eng_kv_commit(s->kv, &seq->table, seq->tokens, seq->n_computed);
}

void eng_sched_append(eng_sched_seq_t *seq, int32_t token) {
    if (seq->n_tokens < seq->cap)
        seq->tokens[seq->n_tokens++] = token;
}
