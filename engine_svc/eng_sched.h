/* eng_sched.h: the continuous-batching scheduler shared by every backend: a waiting queue and a
 * running set of sequences, a per-step token budget that mixes decodes and (chunked) prefills, paged
 * KV through eng_kv (prefix cache included), admission control and recompute preemption.
 *
 * One step: eng_sched_schedule() picks the work (running sequences first, in admission order: every
 * decode token, then the next prefill chunk of each sequence still prefilling; then waiting
 * sequences in FIFO order while the budget, max_running and KV memory allow; a waiting sequence is
 * admitted only if the blocks for its whole known token list fit). When a running sequence needs a
 * block and none is free, the most recently admitted running sequence after it that is not yet
 * planned is preempted (or, with none, the sequence itself): its blocks are released (its computed
 * full blocks usually stay in the prefix cache) and it goes back to the front of the queue, to be
 * recomputed from its prompt plus the tokens generated so far. The caller runs the model on the
 * plan, then calls eng_sched_advance() per planned sequence and eng_sched_append() for each
 * sampled token.
 *
 * Sequence memory (eng_sched_seq_t) belongs to the caller (the service): the scheduler only links
 * it into its lists and owns nothing but those lists. No clock, no I/O. One thread. */
#ifndef ENG_SCHED_H
#define ENG_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_kv.h"

typedef enum eng_sched_state {
    ENG_SCHED_NEW = 0,    /* not queued */
    ENG_SCHED_WAITING,    /* in the queue (never admitted, or preempted) */
    ENG_SCHED_RUNNING,    /* holds KV blocks */
    ENG_SCHED_DONE,       /* removed (finished, aborted, failed) */
} eng_sched_state_t;

typedef struct eng_sched_seq {
    int32_t *tokens;          /* (cap) prompt then generated ids; caller-owned */
    uint32_t n_tokens;        /* known tokens: prompt + generated */
    uint32_t n_prompt;        /* prompt tokens */
    uint32_t cap;             /* capacity of tokens (prompt + max new tokens) */
    uint32_t n_computed;      /* leading tokens whose K/V are in the cache */
    uint32_t cached_tokens;   /* prompt tokens served by the prefix cache at first admission */
    bool admitted_once;       /* first admission happened (cached_tokens valid) */
    bool no_prefix_cache;     /* neither reuse nor publish KV blocks (K/V not a function of the ids
                                 alone, e.g. M-RoPE positions or media features) */
    uint32_t n_preempted;     /* times preempted */
    eng_kv_table_t table;     /* its KV blocks */
    eng_sched_state_t state;
    uint64_t order;           /* arrival number, FIFO order */
    uint64_t plan_stamp;      /* scheduler-private: the step that last planned it */
    void *ud;                 /* the caller's request object */
} eng_sched_seq_t;

typedef struct eng_sched_item {
    eng_sched_seq_t *seq;     /* sequence to run */
    uint32_t n_past;          /* its n_computed when scheduled */
    uint32_t n_tokens;        /* tokens to run: tokens[n_past .. n_past + n_tokens) */
    bool want_logits;         /* n_past + n_tokens == seq->n_tokens: sample after this step */
} eng_sched_item_t;

typedef struct eng_sched_opts {
    uint32_t max_batch_tokens; /* tokens per step, >= 1 */
    uint32_t max_running;      /* sequences holding KV at once, >= 1 */
    uint32_t max_waiting;      /* queue length, >= 1 */
} eng_sched_opts_t;

typedef struct eng_sched eng_sched_t;

/* kv is borrowed and must outlive the scheduler. */
int eng_sched_new(const eng_sched_opts_t *o, eng_kv_t *kv, eng_sched_t **ret);
eng_sched_t *eng_sched_free(eng_sched_t *s);

/* Queues a NEW sequence (n_tokens >= 1, n_tokens <= cap). -EBUSY when the queue is full,
 * -EINVAL for a bad sequence, -ENOMEM. */
int eng_sched_add(eng_sched_t *s, eng_sched_seq_t *seq);

/* Removes a waiting or running sequence (finish, abort, deadline, error): releases its blocks and
 * marks it DONE. No-op for a NEW or DONE sequence. */
void eng_sched_remove(eng_sched_t *s, eng_sched_seq_t *seq);

/* Plans one step into items (capacity max_running entries); *ret_n gets the count (0 = nothing
 * runnable now). *ret_n_tokens gets the step's total tokens. */
int eng_sched_schedule(eng_sched_t *s, eng_sched_item_t *items, uint32_t *ret_n,
                       uint32_t *ret_n_tokens);

/* After the model ran an item: n_computed advances and its full blocks enter the prefix cache. */
void eng_sched_advance(eng_sched_t *s, const eng_sched_item_t *item);

/* Appends a sampled token (the caller checked the capacity). Its K/V is computed next step. */
void eng_sched_append(eng_sched_seq_t *seq, int32_t token);

uint32_t eng_sched_n_running(const eng_sched_t *s);
uint32_t eng_sched_n_waiting(const eng_sched_t *s);
const eng_sched_opts_t *eng_sched_opts(const eng_sched_t *s);

/* The n-th sequence of the running (i < n_running) or waiting (queue order) list, for iteration. */
eng_sched_seq_t *eng_sched_running_at(const eng_sched_t *s, uint32_t i);
eng_sched_seq_t *eng_sched_waiting_at(const eng_sched_t *s, uint32_t i);

#endif
