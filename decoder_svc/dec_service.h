/* dec_service.h: the decoder_svc request handler. Takes the engine's TokenBatch messages (one per
 * engine step, every live request), keeps per-request detokenization state (dec_stream) in a hash
 * map keyed by (client_id, request_id), and produces the client-facing envelopes: TextDelta while a
 * streaming request runs, then one Final (or a Status when the request failed).
 *
 * Pure handler: no sockets, no clock (now_ms, wall-clock ms since the epoch, is an argument), no
 * logging above debug. Envelopes are handed to the caller's emit callback; their memory (header,
 * body, strings) is borrowed for the duration of the callback only, and may point into the batch.
 *
 * Request life: the first SeqStep of a request (carrying sampling: stop strings,
 * skip_special_tokens, include_stop_str_in_output; split_reasoning; stream) creates its state; a
 * step with finish != NONE ends it with a Final (FINISH_ERROR: its Status is forwarded unchanged
 * instead). A stop string matched here also ends it (FINISH_STOP_STRING): the Final goes out, the
 * stop callback asks the caller to abort the request upstream, and steps the engine still sends for
 * it are dropped. Aborted and decoder-ended requests leave a small tombstone (no text state) until
 * the engine's last step or 60 s (now_ms) pass, so late steps never reach the client. When finish
 * is FINISH_STOP (eos or a stop token id) the last token is not detokenized unless
 * include_stop_str_in_output (as vLLM); it stays in Final.token_ids. Final.stop_reason is the
 * matched stop string, or the decimal id of a matched stop_token_ids entry.
 *
 * Ownership: dec_service_new() returns a caller-owned service; dec_service_free() accepts NULL and
 * returns NULL. Not thread-safe: one thread drives a service. No allocation per token once a
 * request's buffers have grown (allocation happens per request and on geometric growth). */
#ifndef DEC_SERVICE_H
#define DEC_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_proto.h" /* Omnipipe__* (generated), OM_PROTO_VERSION */
#include "om_vocab.h"

typedef struct dec_service dec_service_t;

/* Loads the vocabulary of model_dir (tokenizer.json or vocab.json + merges.txt). On failure returns
 * -errno and writes a message naming the file and field into err (errlen bytes) when err != NULL.
 */
int dec_service_new(const char *model_dir, dec_service_t **ret, char *err, size_t errlen);

/* Same, with an already loaded vocabulary, which the service borrows (it must outlive the service).
 */
int dec_service_new_with_vocab(const om_vocab_t *vocab, dec_service_t **ret);

dec_service_t *dec_service_free(dec_service_t *s);

/* Receives one outgoing envelope. hdr == env->header. Returns 0 or a negative errno (the first
 * error is reported by the dec_service_* call that emitted; the other requests still run). */
typedef int (*dec_emit_fn)(void *ud, const Omnipipe__Header *hdr, const Omnipipe__Envelope *env);

/* Handles one TokenBatch: per-request incremental detokenization; emits TextDelta envelopes (when
 * the request streams and the step produced text, reasoning or logprobs) and a Final (or Status
 * error) when a request finishes, addressed by hdr->client_id/request_id, through emit. Returns 0;
 * the first error emit returned; or -EBADMSG when a step lacked request_id/client_id (such steps
 * are skipped, every other step is still handled). -EINVAL for NULL arguments. */
int dec_service_handle_batch(dec_service_t *s, const Omnipipe__TokenBatch *b, uint64_t now_ms,
                             dec_emit_fn emit, void *ud);

/* Housekeeping, for idle periods (dec_service_handle_batch does the same on every batch): at most
 * once a second, forgets expired tombstones and ends every live request more than 10 s past its
 * Header.deadline_unix_ms (taken from the first step) with a Status DEADLINE_EXCEEDED (stage
 * "decoder") and the stop callback, so a request whose engine died cannot leak. Returns 0 or the
 * first error emit returned. */
int dec_service_tick(dec_service_t *s, uint64_t now_ms, dec_emit_fn emit, void *ud);

/* The client aborted: drops the request's state and drops its later steps (tombstone). Returns 0,
 * or -ENOENT when no live state existed (a tombstone is still left for steps still in flight). */
int dec_service_abort(dec_service_t *s, const uint8_t *client_id, size_t len, uint64_t request_id);

/* Forwards an upstream error Status to the client unchanged and drops any state of that request.
 * hdr must carry client_id and request_id (-EINVAL otherwise). Returns 0 or emit's error. */
int dec_service_fail(dec_service_t *s, const Omnipipe__Header *hdr, const Omnipipe__Status *st,
                     dec_emit_fn emit, void *ud);

/* A request may end at the decoder (stop string matched, or the decoder failed it): the caller must
 * then abort it upstream; dec_service_handle_batch reports such ends through this optional callback
 * (hdr borrowed for the call). */
typedef void (*dec_stop_fn)(void *ud, const Omnipipe__Header *hdr);
void dec_service_set_stop_callback(dec_service_t *s, dec_stop_fn fn, void *ud);

/* Requests with live text state (tombstones not counted). */
size_t dec_service_n_requests(const dec_service_t *s);

#endif
