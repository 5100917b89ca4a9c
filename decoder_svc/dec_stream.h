/* dec_stream.h: per-request incremental detokenization for decoder_svc.
 *
 * A stream takes the token ids of one request as the engine produces them and returns text deltas
 * that never split a UTF-8 character. Its final text is byte-identical to transformers'
 * tokenizer.decode(all_ids, skip_special_tokens=...), U+FFFD for bytes that never complete
 * included. Stop strings: text that could still begin a stop string is held back (not needed, so
 * not done, with include_stop_str_in_output); a matched stop string ends the stream
 * (FINISH_STOP_STRING) and is trimmed unless include_stop_str_in_output. Reasoning split (Qwen3
 * <think>...</think>, as vLLM's Qwen3 reasoning parser) sends reasoning and content apart.
 *
 * Stop-string matching does not depend on how the ids are chunked: the match that ends earliest in
 * the text wins (at equal end, the longest stop string); stop strings apply to the whole output,
 * <think> part included (as vLLM). Empty stop strings are ignored; more than 64, or one longer than
 * 4096 bytes, is -E2BIG.
 * Reasoning: the final split (dec_stream_text/_reasoning after the final push or a stop) is vLLM's
 * Qwen3 rule on the whole text: drop up to the first <think>; with a </think> after it, reasoning
 * is before and content after; without one, everything is content. Deltas are streamed as reasoning
 * inside <think> (from the start when reasoning_starts_open) and as content before <think> and
 * after
 * </think>; a suffix that could still become the awaited tag is held back. The two agree whenever
 * </think> appears; when it never does, text streamed as reasoning ends up as content in the final
 * split (as in vLLM, whose streaming and non-streaming parsers differ the same way).
 *
 * Ownership: dec_stream_new() returns a caller-owned stream; dec_stream_free() accepts NULL. The
 * vocab is borrowed and must outlive the stream. Returned const char * are borrowed until the next
 * call on the same stream. A stream is used by one thread at a time. No allocation happens per
 * token once the stream's buffers have grown to the request's size. */
#ifndef DEC_STREAM_H
#define DEC_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "om_vocab.h"

typedef struct dec_stream dec_stream_t;

typedef struct dec_stream_opts {
    bool skip_special_tokens; /* as transformers' decode(skip_special_tokens=) */
    const char *const *stop;  /* stop strings (borrowed until dec_stream_new returns) */
    size_t n_stop;
    bool include_stop_str_in_output;
    bool split_reasoning;       /* <think>...</think> -> reasoning_content */
    bool reasoning_starts_open; /* prompt ended inside <think> (template opened it) */
} dec_stream_opts_t;

typedef struct dec_delta {
    const char *text; /* new content bytes (complete UTF-8 only); borrowed */
    size_t text_len;
    const char *reasoning; /* new reasoning bytes; borrowed */
    size_t reasoning_len;
    bool stopped;         /* a stop string matched: the request must end */
    const char *stop_str; /* the matched stop string, when stopped */
} dec_delta_t;

int dec_stream_new(const om_vocab_t *vocab, const dec_stream_opts_t *opts, dec_stream_t **ret);
dec_stream_t *dec_stream_free(dec_stream_t *s);

/* Appends n ids. With final=true, flushes everything held back (incomplete UTF-8 becomes U+FFFD as
 * decode() would, held-back stop-string prefixes are released). */
int dec_stream_push(dec_stream_t *s, const int32_t *ids, size_t n, bool final, dec_delta_t *ret);

/* The whole output so far: content and reasoning (borrowed until the next call). */
const char *dec_stream_text(const dec_stream_t *s, size_t *ret_len);
const char *dec_stream_reasoning(const dec_stream_t *s, size_t *ret_len);

#endif
