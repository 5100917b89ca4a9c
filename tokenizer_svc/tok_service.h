/* tok_service.h: the tokenizer stage's pure handler: one client Envelope (ChatRequest) in, one
 * Envelope out, either a TokenizedRequest for mm_prep or a Status (stage "tokenizer") for the client.
 *
 * What it does: applies the default deadline (header.deadline_unix_ms unset/0 -> now_ms + default)
 * and refuses an expired one; uses prompt_ids as they are (checked against the vocab), or encodes
 * prompt_text as-is, or validates and renders the conversation with the checkpoint's chat template
 * and encodes it; sets reasoning_starts_open when the ids end inside an open <think> (no </think>
 * after the last <think>); lists media parts as MediaRef for mm_prep. No sockets, no clock (now_ms is an
 * argument), so tokenizer_svc's workers, `omnipipe replay` and the tests run exactly this code.
 *
 * Ownership: tok_service_new() returns a caller-owned service; tok_service_free() accepts NULL and
 * returns NULL. After loading it is immutable: any number of threads may call tok_service_handle()
 * at once, each with its own arena. The output lives in that arena and references the input. */
#ifndef TOK_SERVICE_H
#define TOK_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "om_arena.h"
#include "om_proto.h"

typedef struct tok_service tok_service_t;

#define TOK_SERVICE_DEFAULT_DEADLINE_MS 60000u

/* default_deadline_ms: 0 = TOK_SERVICE_DEFAULT_DEADLINE_MS. */
int tok_service_new(const char *model_dir, uint64_t default_deadline_ms, tok_service_t **ret,
                    char *err, size_t errlen);
tok_service_t *tok_service_free(tok_service_t *s);

/* in must have passed om_msg_check() and carry the client's identity in header.client_id.
 * Returns 0 with *ret_out (tokenized or status body); -ENOMEM only when the arena is exhausted. */
int tok_service_handle(const tok_service_t *s, const Omnipipe__Envelope *in, uint64_t now_ms,
                       om_arena_t *a, Omnipipe__Envelope **ret_out);

#endif
