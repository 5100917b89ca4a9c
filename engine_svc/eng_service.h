/* eng_service.h: the engine's pure handler, shared by engine_svc, `omnipipe generate`, replay and tests.
 *
 * The service owns the model, one backend (cpu or cuda), the scheduler (continuous batching, chunked
 * prefill under a token budget, paged KV with prefix caching, admission control) and the sampler. It
 * does no I/O and reads no clock: the caller passes now_ms (wall clock, ms since the epoch, the same
 * clock as Header.deadline_unix_ms). Every request-level failure (bad sampling field, deadline,
 * RESOURCE_EXHAUSTED, abort) comes out of eng_service_step() as a SeqStep with finish=FINISH_ERROR
 * (or FINISH_ABORT) and a Status, so the decoder and the client see it.
 *
 * Ownership: eng_service_new() returns a caller-owned object; eng_service_free() accepts NULL. A
 * TokenBatch returned by eng_service_step() is owned by the service and valid until the next call on
 * it. One thread drives a service. */
#ifndef ENG_SERVICE_H
#define ENG_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "omnipipe.pb-c.h"

typedef struct eng_service eng_service_t;

typedef struct eng_service_opts {
    const char *model_dir;        /* Hugging Face checkpoint directory */
    const char *backend;          /* "cpu" or "cuda" */
    int device;                   /* CUDA device index */
    const char *load_format;      /* "auto" (safetensors) or "dummy" (random weights from config.json) */
    const char *engine_id;        /* reported in TokenBatch.engine_id; borrowed */
    uint32_t max_batch_tokens;    /* token budget per step (prefill chunks + decodes); 0 = default */
    uint32_t max_running;         /* max concurrent sequences; 0 = default */
    uint32_t max_waiting;         /* queue length before RESOURCE_EXHAUSTED; 0 = default */
    uint32_t block_size;          /* KV block size in tokens; 0 = default 16 */
    uint64_t kv_blocks;           /* KV blocks; 0 = sized from kv_fraction (cuda) or a default (cpu) */
    double kv_fraction;           /* fraction of free device memory for KV after weights; 0 = 0.9 */
    bool no_prefix_cache;         /* disable prefix caching */
    int n_threads;                /* CPU backend threads; 0 = all cores */
    uint32_t max_model_len;       /* 0 = from config.json */
} eng_service_opts_t;

/* Loads the model and sizes memory. On failure: -errno and a message naming what failed. Large
 * loads call progress(ud, bytes_done, bytes_total, tensors_done, tensors_total) now and then. */
typedef void (*eng_progress_fn)(void *ud, uint64_t bytes_done, uint64_t bytes_total,
                                uint32_t tensors_done, uint32_t tensors_total);
int eng_service_new(const eng_service_opts_t *opts, eng_progress_fn progress, void *progress_ud,
                    eng_service_t **ret, char *err, size_t errlen);
eng_service_t *eng_service_free(eng_service_t *s);

/* Queues a request. hdr carries request_id, client_id and the deadline. Copies what it keeps. */
int eng_service_submit(eng_service_t *s, const Omnipipe__Header *hdr,
                       const Omnipipe__PreparedRequest *req, uint64_t now_ms);

/* Cancels a request wherever it is; its blocks are freed and the next step reports FINISH_ABORT.
 * -ENOENT if unknown. */
int eng_service_abort(eng_service_t *s, const uint8_t *client_id, size_t client_id_len,
                      uint64_t request_id);

/* Ends every live request with an error Status (engine shutting down, sticky device error). They are
 * reported by the next eng_service_step(). */
void eng_service_fail_all(eng_service_t *s, int neg_errno, const char *message);

bool eng_service_has_work(const eng_service_t *s); /* running or waiting requests, or reports due */

/* Runs one engine step: expires deadlines, admits, schedules, runs the model, samples. *ret_batch
 * receives the step's TokenBatch (NULL when nothing happened). */
int eng_service_step(eng_service_t *s, uint64_t now_ms, const Omnipipe__TokenBatch **ret_batch);

/* Load report for routing (credits = new requests it can take now). */
void eng_service_load(const eng_service_t *s, Omnipipe__EngineLoad *ret);

#endif
