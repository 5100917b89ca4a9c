/* eng_sampler.h: CPU token sampling, per sequence, from one row of logits.
 *
 * Parameters live in a plain struct (eng_sampler_params_t), one per sequence, so a backend can take an
 * array of them and sample on the device later (greedy, temperature, top-k, top-p). Randomness is
 * counter-based: the uniform for a sequence's n-th generated token is a pure function of (seed, n), so
 * the same seed gives the same tokens on every run, whatever else shares the batch.
 *
 * Processing order (as transformers' logits processors): repetition penalty (over prompt and output,
 * HF/vLLM: positive logit / p, negative logit * p), presence and frequency penalties (over output,
 * OpenAI/vLLM: logit -= presence * (count > 0) + frequency * count), suppression of eos/stop ids
 * before min_tokens (and of eos under ignore_eos), then temperature (0 = greedy argmax, lowest id
 * wins ties), top-k, top-p (smallest set of highest-probability tokens whose mass reaches top_p), min-p
 * (drop tokens with p < min_p * p_max), and an inverse-CDF draw over the survivors sorted by
 * probability (descending, ties by lower id). Logprobs are of the raw model distribution
 * (log_softmax of the unprocessed logits), as vLLM reports them. */
#ifndef ENG_SAMPLER_H
#define ENG_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "omnipipe.pb-c.h"

#define ENG_SAMPLER_MAX_EOS 8
#define ENG_SAMPLER_MAX_LOGPROBS 20

/* Defaults from generation_config.json (applied to fields a request leaves unset). */
typedef struct eng_sampler_defaults {
    bool do_sample;               /* false: greedy unless the request sets temperature */
    float temperature;            /* used when do_sample */
    float top_p;                  /* (0, 1] */
    int32_t top_k;                /* 0 or -1 = off */
    float min_p;                  /* [0, 1] */
    float repetition_penalty;     /* > 0, 1 = off */
    uint32_t max_new_tokens;      /* 0 = up to the model length */
    int32_t eos_ids[ENG_SAMPLER_MAX_EOS]; /* (n_eos) */
    uint32_t n_eos;
} eng_sampler_defaults_t;

typedef struct eng_sampler_params {
    float temperature;            /* 0 = greedy */
    int32_t top_k;                /* <= 0 = off */
    float top_p;                  /* (0, 1], 1 = off */
    float min_p;                  /* [0, 1], 0 = off */
    float repetition_penalty;     /* > 0, 1 = off */
    float presence_penalty;       /* [-2, 2] */
    float frequency_penalty;      /* [-2, 2] */
    uint64_t seed;                /* per-request RNG seed */
    uint32_t max_tokens;          /* >= 1, new tokens */
    uint32_t min_tokens;          /* eos/stop suppressed before this many new tokens */
    bool ignore_eos;              /* eos never ends (nor is sampled for) this request */
    uint32_t n_logprobs;          /* top logprobs per token, <= ENG_SAMPLER_MAX_LOGPROBS */
} eng_sampler_params_t;

/* One sequence's state: what penalties and suppression need. Borrowed arrays. */
typedef struct eng_sampler_seq {
    const int32_t *prompt;        /* (n_prompt) */
    uint32_t n_prompt;
    const int32_t *output;        /* (n_output) generated so far */
    uint32_t n_output;
    const int32_t *eos_ids;       /* (n_eos) model eos ids */
    uint32_t n_eos;
    const int32_t *stop_ids;      /* (n_stop) request stop token ids */
    uint32_t n_stop;
} eng_sampler_seq_t;

typedef struct eng_sampler_result {
    int32_t token;                                 /* sampled id */
    float logprob;                                 /* raw logprob of token */
    uint32_t n_top;                                /* <= n_logprobs */
    int32_t top_ids[ENG_SAMPLER_MAX_LOGPROBS];     /* (n_top) highest raw logprobs, descending */
    float top_logprobs[ENG_SAMPLER_MAX_LOGPROBS];  /* (n_top) */
} eng_sampler_result_t;

/* One token's logit edit, what penalties and suppression do to it (eng_sampler_edits), in the
 * sampler's order: l = rp != 1 ? (l > 0 ? l / rp : l * rp) : l; then l -= sub; then, if
 * suppress, l = -inf. A device applies these to a copy of the row and gets the CPU sampler's
 * processed logits bit for bit. */
typedef struct eng_sampler_edit {
    int32_t id;        /* token id, < n_vocab; unique within a row */
    float rp;          /* repetition penalty applied to it, 1 = none */
    float sub;         /* presence + frequency x count, 0 = none */
    uint32_t suppress; /* 1: eos/stop suppressed (-inf) */
} eng_sampler_edit_t;

/* What a backend's SAMPLE hook (eng_backend_ops.sample) gets: per logits row, the parameters, the
 * RNG step (tokens generated so far) and the row's logit edits (penalties, eos/stop suppression);
 * it draws with eng_sampler_uniform(seed, step) so device and host pick the same token, and fills
 * results (token, and logprobs of the raw row when params.n_logprobs > 0) when given. */
struct eng_sample_batch {
    const eng_sampler_params_t *params; /* (n_rows) */
    const uint32_t *steps;              /* (n_rows) RNG counters */
    uint32_t n_rows;
    const eng_sampler_edit_t *edits;    /* all rows' edits, NULL: none */
    const uint32_t *edit0;              /* (n_rows) row i's edits: edits[edit0[i] ..) or NULL */
    const uint32_t *n_edit;             /* (n_rows) how many, or NULL */
    eng_sampler_result_t *results;      /* (n_rows) or NULL: ids only */
    void *stream;                       /* SAMPLE hook on a GPU: the CUDA stream the logits are
                                           produced on, where the draw is queued (the step may
                                           still be in flight there; eng_model_forward_async);
                                           NULL: the backend's own stream. Host sampling ignores
                                           it */
};

typedef struct eng_sampler eng_sampler_t; /* scratch for one vocab size; one thread */

int eng_sampler_new(uint32_t n_vocab, eng_sampler_t **ret);
eng_sampler_t *eng_sampler_free(eng_sampler_t *s);

/* Reads the defaults from DIR/generation_config.json (missing file or keys: transformers defaults,
 * greedy). -errno and err on a malformed file. */
int eng_sampler_defaults_load(const char *model_dir, eng_sampler_defaults_t *ret, char *err,
                              size_t errlen);

/* Validates a request's SamplingParams (sp may be NULL) and fills in defaults. n_prompt and
 * max_model_len bound max_tokens (unset max_tokens = min(default, max_model_len - n_prompt)).
 * -EINVAL with err "sampling.top_p: must be in (0, 1], got 1.5" naming the field; -E2BIG when the
 * prompt leaves no room to generate. */
int eng_sampler_params_from_proto(const Omnipipe__SamplingParams *sp, const eng_sampler_defaults_t *d,
                                  uint32_t n_prompt, uint32_t max_model_len,
                                  eng_sampler_params_t *ret, char *err, size_t errlen);

/* Uniform in [0, 1) for (seed, step): the request RNG. */
double eng_sampler_uniform(uint64_t seed, uint64_t step);

/* The logit edits of one sequence's next token (see eng_sampler_edit_t): repetition penalty over
 * the unique ids of prompt and output, presence/frequency over the output, suppression of eos
 * (ignore_eos or before min_tokens) and stop ids (before min_tokens). Out-of-range ids are
 * skipped. Writes at most cap edits to out; returns how many, or -ENOSPC (cap >= n_prompt +
 * n_output + n_eos + n_stop always suffices). Uses s's scratch (one thread). */
int eng_sampler_edits(eng_sampler_t *s, const eng_sampler_params_t *p, const eng_sampler_seq_t *seq,
                      eng_sampler_edit_t *out, uint32_t cap);

/* Samples one token from logits (n_vocab, modified in place: processed logits on return). */
int eng_sampler_sample(eng_sampler_t *s, const eng_sampler_params_t *p, const eng_sampler_seq_t *seq,
                       float *logits, eng_sampler_result_t *ret);

#endif
