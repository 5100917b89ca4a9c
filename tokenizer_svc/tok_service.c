/* tok_service.c: ChatRequest -> TokenizedRequest; see tok_service.h. */
#include "tok_service.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "om_msg.h"
#include "tok_chat.h"
#include "tok_codec.h"

struct tok_service {
    tok_codec_t *codec;           /* BPE encoder */
    tok_chat_t *chat;             /* chat template; NULL when the checkpoint ships none */
    char chat_err[512];           /* why chat is NULL */
    uint64_t default_deadline_ms; /* relative */
    int32_t think_open, think_close; /* ids of <think> and </think>; -1 when the vocab has none */
};

int tok_service_new(const char *model_dir, uint64_t default_deadline_ms, tok_service_t **ret,
                    char *err, size_t errlen) {
    tok_service_t *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->default_deadline_ms = default_deadline_ms ? default_deadline_ms : TOK_SERVICE_DEFAULT_DEADLINE_MS;
    int r = tok_codec_load(model_dir, &s->codec, err, errlen);
    if (r < 0) {
        free(s);
        return r;
    }
    const om_vocab_t *v = tok_codec_vocab(s->codec);
    s->think_open = om_vocab_token_id(v, "<think>", 7);
    s->think_close = om_vocab_token_id(v, "</think>", 8);
    /* a checkpoint without a chat template still serves prompt_ids/prompt_text requests */
    if (tok_chat_new(model_dir, &s->chat, s->chat_err, sizeof s->chat_err) < 0)
        s->chat = NULL;
    *ret = s;
    return 0;
}

tok_service_t *tok_service_free(tok_service_t *s) {
    if (!s)
        return NULL;
    tok_codec_free(s->codec);
    tok_chat_free(s->chat);
    free(s);
    return NULL;
}

/* true when the prompt ends inside an open <think>: after its last <think> there is no </think>
 * (a template that opens the reasoning block for the model, e.g. thinking-only checkpoints) */
static bool s_reasoning_open(const tok_service_t *s, const int32_t *ids, size_t n) {
    if (s->think_open < 0)
        return false;
    for (size_t i = n; i-- > 0;) {
        if (ids[i] == s->think_close)
            return false;
        if (ids[i] == s->think_open)
            return true;
    }
    return false;
}

static int s_fail(om_arena_t *a, Omnipipe__Header *h, int neg_errno, const char *msg,
                  Omnipipe__Envelope **ret_out) {
    Omnipipe__Envelope *env =
        om_msg_status_env(a, h, om_msg_status(a, neg_errno, OM_STAGE_TOKENIZER, "%s", msg));
    if (!env)
        return -ENOMEM;
    *ret_out = env;
    return 0;
}

int tok_service_handle(const tok_service_t *s, const Omnipipe__Envelope *in, uint64_t now_ms,
                       om_arena_t *a, Omnipipe__Envelope **ret_out) {
    char msg[768];
    Omnipipe__Header *h = om_msg_header_copy(a, in->header);
    if (!h)
        return -ENOMEM;
    if (!h->has_deadline_unix_ms || h->deadline_unix_ms == 0) {
        h->has_deadline_unix_ms = true;
        h->deadline_unix_ms = now_ms + s->default_deadline_ms;
    }
    if (in->body_case != OMNIPIPE__ENVELOPE__BODY_CHAT)
        return s_fail(a, h, -EINVAL, "expected a ChatRequest body", ret_out);
    if (h->deadline_unix_ms <= now_ms)
        return s_fail(a, h, -ETIMEDOUT, "deadline passed before tokenization", ret_out);
    const Omnipipe__ChatRequest *req = in->chat;
    const om_vocab_t *vocab = tok_codec_vocab(s->codec);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    tok_chat_media_t *media = NULL;
    size_t n_media = 0;
    if (req->n_prompt_ids > 0) {
        size_t vsize = om_vocab_size(vocab);
        for (size_t i = 0; i < req->n_prompt_ids; i++)
            if (req->prompt_ids[i] < 0 || (size_t)req->prompt_ids[i] >= vsize) {
                snprintf(msg, sizeof msg, "prompt_ids[%zu]: %d is outside the vocabulary [0, %zu)", i,
                         req->prompt_ids[i], vsize);
                return s_fail(a, h, -EINVAL, msg, ret_out);
            }
        ids = om_arena_memdup(a, req->prompt_ids, req->n_prompt_ids * sizeof *ids);
        if (!ids)
            return -ENOMEM;
        n_ids = req->n_prompt_ids;
    } else {
        const char *text = NULL;
        size_t text_len = 0;
        char *rendered = NULL;
        if (req->prompt_text && !req->conversation) {
            text = req->prompt_text;
            text_len = strlen(text);
        } else if (req->conversation) {
            if (!s->chat) {
                snprintf(msg, sizeof msg, "conversation: this model has no chat template (%s)",
                         s->chat_err);
                return s_fail(a, h, -EINVAL, msg, ret_out);
            }
            tok_chat_error_t cerr = {{0}};
            int r = tok_chat_render(s->chat, req->conversation, &rendered, &text_len, &media, &n_media,
                                    &cerr);
            if (r < 0) {
                snprintf(msg, sizeof msg, "%s", cerr.message[0] ? cerr.message : strerror(-r));
                return s_fail(a, h, r == -ENOMEM ? -ENOMEM : -EINVAL, msg, ret_out);
            }
            text = rendered;
        } else {
            return s_fail(a, h, -EINVAL,
                          "request has no conversation, prompt_text or prompt_ids", ret_out);
        }
        int32_t *enc = NULL;
        int r = tok_codec_encode(s->codec, text, text_len, &enc, &n_ids);
        free(rendered);
        if (r < 0) {
            free(media);
            snprintf(msg, sizeof msg, "%s: cannot encode: %s",
                     req->conversation ? "conversation" : "prompt_text",
                     r == -EINVAL ? "not valid UTF-8" : strerror(-r));
            return s_fail(a, h, r, msg, ret_out);
        }
        ids = om_arena_memdup(a, enc, n_ids * sizeof *ids);
        free(enc);
        if (!ids) {
            free(media);
            return -ENOMEM;
        }
    }
    if (n_ids == 0) {
        free(media);
        return s_fail(a, h, -EINVAL, "prompt is empty (0 tokens)", ret_out);
    }
    Omnipipe__TokenizedRequest *t = om_arena_alloc(a, sizeof *t);
    Omnipipe__Envelope *out = om_arena_alloc(a, sizeof *out);
    if (!t || !out) {
        free(media);
        return -ENOMEM;
    }
    omnipipe__tokenized_request__init(t);
    t->ids = ids;
    t->n_ids = n_ids;
    t->sampling = req->sampling;
    t->has_split_reasoning = req->has_split_reasoning;
    t->split_reasoning = req->split_reasoning;
    t->has_stream = req->has_stream;
    t->stream = req->stream;
    if (s_reasoning_open(s, ids, n_ids)) {
        t->has_reasoning_starts_open = true;
        t->reasoning_starts_open = true;
    }
    if (n_media) {
        t->media = om_arena_alloc(a, n_media * sizeof *t->media);
        if (!t->media) {
            free(media);
            return -ENOMEM;
        }
        for (size_t i = 0; i < n_media; i++) {
            Omnipipe__MediaRef *m = om_arena_alloc(a, sizeof *m);
            if (!m) {
                free(media);
                return -ENOMEM;
            }
            omnipipe__media_ref__init(m);
            m->part = (Omnipipe__ContentPart *)media[i].part;
            m->has_message_index = m->has_part_index = true;
            m->message_index = media[i].message_index;
            m->part_index = media[i].part_index;
            t->media[i] = m;
        }
        t->n_media = n_media;
    }
    free(media);
    omnipipe__envelope__init(out);
    out->header = h;
    out->body_case = OMNIPIPE__ENVELOPE__BODY_TOKENIZED;
    out->tokenized = t;
    *ret_out = out;
    return 0;
}
