/* tok_chat.h: conversation validation and chat-template rendering (the checkpoint's own Jinja template,
 * byte-identical to transformers' apply_chat_template(..., tokenize=False)).
 *
 * The template comes from chat_template.jinja, chat_template.json or tokenizer_config.json, in the
 * order transformers uses. bos/eos/pad/unk tokens from tokenizer_config.json are template variables.
 *
 * Ownership: tok_chat_new() returns a caller-owned object (tok_chat_free() accepts NULL); it is
 * immutable after loading, so renders may run concurrently from many threads. */
#ifndef TOK_CHAT_H
#define TOK_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "omnipipe.pb-c.h"

typedef struct tok_chat tok_chat_t;

/* Error detail of a failed render or validation: message names the message index and field
 * ("messages[2].content[0].type: unknown part type 'foo'") or the template line
 * ("chat template line 12: <raise_exception message>"). */
typedef struct tok_chat_error {
    char message[512];
} tok_chat_error_t;

/* A media part found in the conversation, in order of appearance. */
typedef struct tok_chat_media {
    uint32_t message_index;
    uint32_t part_index;
    const Omnipipe__ContentPart *part; /* borrowed from the conversation */
} tok_chat_media_t;

int tok_chat_new(const char *model_dir, tok_chat_t **ret, char *err, size_t errlen);
tok_chat_t *tok_chat_free(tok_chat_t *c);

/* Validates and normalizes conv, then renders it. Returns 0 with a malloc'd NUL-terminated text
 * (caller frees) and, if ret_media is non-NULL, a malloc'd array of the media parts (caller frees)
 * with its count. Returns -EINVAL with err filled for bad input or a template error
 * (raise_exception included). */
int tok_chat_render(const tok_chat_t *c, const Omnipipe__Conversation *conv, char **ret_text,
                    size_t *ret_len, tok_chat_media_t **ret_media, size_t *ret_n_media,
                    tok_chat_error_t *err);

/* The `omnipipe render` form: json is an object {"messages": [...], "tools": [...]?,
 * "add_generation_prompt": bool (default true), ...other template variables}. Same return contract. */
int tok_chat_render_json(const tok_chat_t *c, const char *json, size_t json_len, char **ret_text,
                         size_t *ret_len, tok_chat_error_t *err);

#endif
