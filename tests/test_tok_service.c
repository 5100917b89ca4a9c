/* test_tok_service.c: the tokenizer stage's protobuf handler against transformers. Every "omni"
 * conversation of fixtures/text_golden.json (rendered and tokenized by transformers'
 * apply_chat_template with tiny-omni's tokenizer) is converted to a ChatRequest exactly as a client
 * would send it, run through tok_service_handle(), and the ids must equal transformers' ids; media
 * parts must come out as MediaRef in order (and mm_prep must refuse them as not supported yet).
 * Also: prompt_ids pass through and are range-checked, prompt_text is encoded as-is, the default
 * deadline is applied and an expired one refused, errors carry stage "tokenizer"; reasoning_starts_open
 * follows the prompt's last <think> (oracle: the rendered text) and mm_prep carries it on. */
#include <errno.h>
#include <stdbool.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "mmp_service.h"
#include "om_arena.h"
#include "om_err.h"
#include "om_msg.h"
#include "tok_service.h"

static tok_service_t *s_svc;
static char s_model[1024];

static int s_setup(void **state) {
    (void)state;
    const char *shared = getenv("OM_SHARED_DIR");
    snprintf(s_model, sizeof s_model, "%s/fixtures/tiny-omni", shared ? shared : OM_SHARED_DIR);
    char err[512];
    int r = tok_service_new(s_model, 0, &s_svc, err, sizeof err);
    if (r < 0)
        fprintf(stderr, "tok_service_new: %s\n", err);
    return r;
}

static int s_teardown(void **state) {
    (void)state;
    s_svc = tok_service_free(s_svc);
    return 0;
}

static char *s_dup(om_arena_t *a, const char *s) { return om_arena_strdup(a, s); }

/* a transformers-style content part -> ContentPart */
static Omnipipe__ContentPart *s_part(om_arena_t *a, json_t *p) {
    Omnipipe__ContentPart *cp = om_arena_calloc(a, sizeof *cp);
    omnipipe__content_part__init(cp);
    const char *type = json_string_value(json_object_get(p, "type"));
    assert_non_null(type);
    cp->has_type = true;
    if (strcmp(type, "text") == 0) {
        cp->type = OMNIPIPE__CONTENT_PART__TYPE__TEXT;
        cp->text = s_dup(a, json_string_value(json_object_get(p, "text")));
        return cp;
    }
    cp->type = strcmp(type, "image") == 0   ? OMNIPIPE__CONTENT_PART__TYPE__IMAGE
               : strcmp(type, "audio") == 0 ? OMNIPIPE__CONTENT_PART__TYPE__AUDIO
                                            : OMNIPIPE__CONTENT_PART__TYPE__VIDEO;
    Omnipipe__MediaSource *src = om_arena_calloc(a, sizeof *src);
    omnipipe__media_source__init(src);
    src->src_case = OMNIPIPE__MEDIA_SOURCE__SRC_PATH;
    src->path = s_dup(a, json_string_value(json_object_get(p, type)));
    cp->media = src;
    return cp;
}

static size_t s_conversation(om_arena_t *a, json_t *conv, json_t *kwargs, Omnipipe__Conversation *c) {
    omnipipe__conversation__init(c);
    size_t n_media = 0;
    json_t *msgs = json_object_get(conv, "messages");
    c->n_messages = json_array_size(msgs);
    c->messages = om_arena_calloc(a, c->n_messages * sizeof *c->messages);
    for (size_t i = 0; i < c->n_messages; i++) {
        json_t *m = json_array_get(msgs, i);
        Omnipipe__Message *pm = om_arena_calloc(a, sizeof *pm);
        omnipipe__message__init(pm);
        pm->role = s_dup(a, json_string_value(json_object_get(m, "role")));
        json_t *content = json_object_get(m, "content");
        if (json_is_string(content)) {
            pm->content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
            pm->text = s_dup(a, json_string_value(content));
        } else if (json_is_array(content)) {
            Omnipipe__PartList *pl = om_arena_calloc(a, sizeof *pl);
            omnipipe__part_list__init(pl);
            pl->n_parts = json_array_size(content);
            pl->parts = om_arena_calloc(a, pl->n_parts * sizeof *pl->parts);
            for (size_t k = 0; k < pl->n_parts; k++) {
                pl->parts[k] = s_part(a, json_array_get(content, k));
                n_media += pl->parts[k]->type != OMNIPIPE__CONTENT_PART__TYPE__TEXT;
            }
            pm->content_case = OMNIPIPE__MESSAGE__CONTENT_PARTS;
            pm->parts = pl;
        }
        json_t *rc = json_object_get(m, "reasoning_content");
        if (json_is_string(rc))
            pm->reasoning_content = s_dup(a, json_string_value(rc));
        json_t *tcs = json_object_get(m, "tool_calls");
        if (json_is_array(tcs)) {
            pm->n_tool_calls = json_array_size(tcs);
            pm->tool_calls = om_arena_calloc(a, pm->n_tool_calls * sizeof *pm->tool_calls);
            for (size_t k = 0; k < pm->n_tool_calls; k++) {
                json_t *fn = json_object_get(json_array_get(tcs, k), "function");
                Omnipipe__ToolCall *tc = om_arena_calloc(a, sizeof *tc);
                omnipipe__tool_call__init(tc);
                tc->name = s_dup(a, json_string_value(json_object_get(fn, "name")));
                char *args = json_dumps(json_object_get(fn, "arguments"), JSON_COMPACT | JSON_PRESERVE_ORDER);
                tc->arguments_json = s_dup(a, args);
                free(args);
                pm->tool_calls[k] = tc;
            }
        }
        c->messages[i] = pm;
    }
    json_t *tools = json_object_get(conv, "tools");
    if (json_is_array(tools)) {
        c->n_tools_json = json_array_size(tools);
        c->tools_json = om_arena_calloc(a, c->n_tools_json * sizeof *c->tools_json);
        for (size_t k = 0; k < c->n_tools_json; k++) {
            char *t = json_dumps(json_array_get(tools, k), JSON_COMPACT | JSON_PRESERVE_ORDER);
            c->tools_json[k] = s_dup(a, t);
            free(t);
        }
    }
    json_t *agp = json_object_get(kwargs, "add_generation_prompt");
    if (agp) {
        c->has_add_generation_prompt = true;
        c->add_generation_prompt = json_is_true(agp);
    }
    json_t *et = json_object_get(kwargs, "enable_thinking");
    if (et) {
        c->has_enable_thinking = true;
        c->enable_thinking = json_is_true(et);
    }
    return n_media;
}

static Omnipipe__Envelope *s_env(om_arena_t *a, Omnipipe__ChatRequest *req, uint64_t deadline) {
    Omnipipe__Envelope *e = om_arena_calloc(a, sizeof *e);
    omnipipe__envelope__init(e);
    e->header = om_msg_header_new(a, 7, "client-x", 8);
    if (deadline) {
        e->header->has_deadline_unix_ms = true;
        e->header->deadline_unix_ms = deadline;
    }
    e->body_case = OMNIPIPE__ENVELOPE__BODY_CHAT;
    e->chat = req;
    return e;
}

/* the oracle for reasoning_starts_open, on text: after the last "<think>" there is no "</think>" */
static bool s_text_think_open(const char *text) {
    const char *last = NULL;
    for (const char *p = text; (p = strstr(p, "<think>")) != NULL; p++)
        last = p;
    return last && !strstr(last, "</think>");
}

static void test_chat_template_parity(void **state) {
    (void)state;
    const char *shared = getenv("OM_SHARED_DIR");
    char path[1200];
    snprintf(path, sizeof path, "%s/fixtures/text_golden.json", shared ? shared : OM_SHARED_DIR);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    assert_non_null(root);
    json_t *cases = json_object_get(root, "chat_template");
    size_t n_checked = 0, idx;
    json_t *c;
    json_array_foreach(cases, idx, c) {
        if (strcmp(json_string_value(json_object_get(c, "template")), "omni") != 0)
            continue;
        om_arena_t *a;
        assert_int_equal(om_arena_new(0, &a), 0);
        Omnipipe__Conversation conv;
        size_t n_media = s_conversation(a, json_object_get(c, "conversation"), json_object_get(c, "kwargs"), &conv);
        Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
        req.conversation = &conv;
        Omnipipe__Envelope *out;
        assert_int_equal(tok_service_handle(s_svc, s_env(a, &req, 0), 1000, a, &out), 0);
        if (out->body_case != OMNIPIPE__ENVELOPE__BODY_TOKENIZED)
            fail_msg("case %zu: %s", idx, out->status->message);
        json_t *ids = json_object_get(c, "ids");
        const Omnipipe__TokenizedRequest *t = out->tokenized;
        if (t->n_ids != json_array_size(ids))
            fail_msg("case %zu: %zu ids, transformers has %zu", idx, t->n_ids, json_array_size(ids));
        for (size_t i = 0; i < t->n_ids; i++)
            if (t->ids[i] != json_integer_value(json_array_get(ids, i)))
                fail_msg("case %zu: id %zu is %d, transformers has %lld", idx, i, t->ids[i],
                         (long long)json_integer_value(json_array_get(ids, i)));
        assert_int_equal(t->n_media, n_media);
        /* reasoning_starts_open: the rendered text (transformers') ends inside an open <think> */
        const char *text = json_string_value(json_object_get(c, "rendered"));
        bool open = s_text_think_open(text);
        if ((t->has_reasoning_starts_open && t->reasoning_starts_open) != open)
            fail_msg("case %zu: reasoning_starts_open %d, rendered text says %d", idx, t->reasoning_starts_open, open);
        /* the header survives, with the default deadline applied */
        assert_int_equal(out->header->request_id, 7);
        assert_int_equal(out->header->deadline_unix_ms, 1000 + TOK_SERVICE_DEFAULT_DEADLINE_MS);
        if (n_media) {
            /* media refs point at the parts in order; mm_prep refuses them for now */
            assert_non_null(t->media[0]->part->media);
            Omnipipe__Envelope *p;
            assert_int_equal(mmp_service_prepare(out, 1000, a, &p), 0);
            assert_int_equal(p->body_case, OMNIPIPE__ENVELOPE__BODY_STATUS);
            assert_int_equal(p->status->code, OM_CODE_UNIMPLEMENTED);
        }
        n_checked++;
        om_arena_free(a);
    }
    assert_true(n_checked >= 8);
    json_decref(root);
}

static void test_prompt_ids_text_and_errors(void **state) {
    (void)state;
    om_arena_t *a;
    assert_int_equal(om_arena_new(0, &a), 0);
    Omnipipe__Envelope *out;
    /* prompt_ids pass through */
    int32_t ids[3] = {151644, 872, 198};
    Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
    req.prompt_ids = ids;
    req.n_prompt_ids = 3;
    assert_int_equal(tok_service_handle(s_svc, s_env(a, &req, 5000), 1000, a, &out), 0);
    assert_int_equal(out->body_case, OMNIPIPE__ENVELOPE__BODY_TOKENIZED);
    assert_int_equal(out->tokenized->n_ids, 3);
    assert_memory_equal(out->tokenized->ids, ids, sizeof ids);
    assert_int_equal(out->header->deadline_unix_ms, 5000);
    /* out of the vocabulary: INVALID_ARGUMENT naming the field */
    ids[1] = 999999;
    assert_int_equal(tok_service_handle(s_svc, s_env(a, &req, 5000), 1000, a, &out), 0);
    assert_int_equal(out->body_case, OMNIPIPE__ENVELOPE__BODY_STATUS);
    assert_int_equal(out->status->code, OM_CODE_INVALID_ARGUMENT);
    assert_string_equal(out->status->stage, "tokenizer");
    assert_non_null(strstr(out->status->message, "prompt_ids[1]: 999999 is outside the vocabulary"));
    /* prompt_text is encoded as-is (transformers: tokenizer("Hi", add_special_tokens=False) = [13048]) */
    Omnipipe__ChatRequest t = OMNIPIPE__CHAT_REQUEST__INIT;
    t.prompt_text = "Hi";
    assert_int_equal(tok_service_handle(s_svc, s_env(a, &t, 0), 1000, a, &out), 0);
    assert_int_equal(out->body_case, OMNIPIPE__ENVELOPE__BODY_TOKENIZED);
    assert_int_equal(out->tokenized->n_ids, 1);
    assert_int_equal(out->tokenized->ids[0], 13048);
    /* expired deadline */
    assert_int_equal(tok_service_handle(s_svc, s_env(a, &t, 900), 1000, a, &out), 0);
    assert_int_equal(out->status->code, OM_CODE_DEADLINE_EXCEEDED);
    /* nothing to tokenize */
    Omnipipe__ChatRequest empty = OMNIPIPE__CHAT_REQUEST__INIT;
    assert_int_equal(tok_service_handle(s_svc, s_env(a, &empty, 0), 1000, a, &out), 0);
    assert_int_equal(out->status->code, OM_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(out->status->message, "no conversation, prompt_text or prompt_ids"));
    /* invalid UTF-8 */
    t.prompt_text = "bad \xff\xfe";
    assert_int_equal(tok_service_handle(s_svc, s_env(a, &t, 0), 1000, a, &out), 0);
    assert_int_equal(out->status->code, OM_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(out->status->message, "prompt_text"));
    /* a bad conversation: the template validator's message comes through */
    Omnipipe__Message m = OMNIPIPE__MESSAGE__INIT;
    Omnipipe__Message *mp = &m;
    m.role = "wizard";
    m.content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
    m.text = "x";
    Omnipipe__Conversation conv = OMNIPIPE__CONVERSATION__INIT;
    conv.messages = &mp;
    conv.n_messages = 1;
    Omnipipe__ChatRequest bad = OMNIPIPE__CHAT_REQUEST__INIT;
    bad.conversation = &conv;
    assert_int_equal(tok_service_handle(s_svc, s_env(a, &bad, 0), 1000, a, &out), 0);
    assert_int_equal(out->body_case, OMNIPIPE__ENVELOPE__BODY_STATUS);
    assert_int_equal(out->status->code, OM_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(out->status->message, "messages[0]"));
    om_arena_free(a);
}

/* reasoning_starts_open is set when the prompt ends inside an open <think>, whichever way the prompt
 * came (text, ids), and mm_prep carries it into the PreparedRequest */
static void test_reasoning_starts_open(void **state) {
    (void)state;
    static const char *texts[] = {
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nfirst, the greeting",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "<think>a</think> then <think>b",
        "no tags at all",
    };
    size_t n_open = 0;
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        om_arena_t *a;
        assert_int_equal(om_arena_new(0, &a), 0);
        Omnipipe__ChatRequest req = OMNIPIPE__CHAT_REQUEST__INIT;
        req.prompt_text = (char *)texts[i];
        Omnipipe__Envelope *out, *prep;
        assert_int_equal(tok_service_handle(s_svc, s_env(a, &req, 0), 1000, a, &out), 0);
        assert_int_equal(out->body_case, OMNIPIPE__ENVELOPE__BODY_TOKENIZED);
        bool want = s_text_think_open(texts[i]);
        n_open += want;
        bool got = out->tokenized->has_reasoning_starts_open && out->tokenized->reasoning_starts_open;
        if (got != want)
            fail_msg("text %zu: reasoning_starts_open %d, expected %d", i, got, want);
        assert_int_equal(mmp_service_prepare(out, 1000, a, &prep), 0);
        assert_int_equal(prep->body_case, OMNIPIPE__ENVELOPE__BODY_PREPARED);
        assert_int_equal(prep->prepared->has_reasoning_starts_open && prep->prepared->reasoning_starts_open, want);
        /* the same prompt as ids */
        Omnipipe__ChatRequest byid = OMNIPIPE__CHAT_REQUEST__INIT;
        byid.prompt_ids = out->tokenized->ids;
        byid.n_prompt_ids = out->tokenized->n_ids;
        Omnipipe__Envelope *out2;
        assert_int_equal(tok_service_handle(s_svc, s_env(a, &byid, 0), 1000, a, &out2), 0);
        assert_int_equal(out2->tokenized->has_reasoning_starts_open && out2->tokenized->reasoning_starts_open, want);
        om_arena_free(a);
    }
    assert_int_equal(n_open, 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_template_parity),
        cmocka_unit_test(test_prompt_ids_text_and_errors),
        cmocka_unit_test(test_reasoning_starts_open),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
