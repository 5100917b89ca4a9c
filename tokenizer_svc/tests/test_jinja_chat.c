/* test_jinja_chat.c: tests of tok_chat.c: every chat_template case of the transformers fixtures
 * (text_golden.json) rendered byte-identically through both input forms (the `omnipipe render` JSON
 * form and the protobuf Conversation), media parts returned in order, the template loading order,
 * special tokens, and the validation errors naming the message index and field. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "omnipipe.pb-c.h"
#include "tok_chat.h"
#include "tok_codec.h"

static const char *shared_dir(void)
{
    const char *d = getenv("OM_SHARED_DIR");
    return d && d[0] ? d : OM_SHARED_DIR;
}

static json_t *load_golden(void)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/fixtures/text_golden.json", shared_dir());
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    if (!g)
        fail_msg("%s: %s", path, je.text);
    return g;
}

static tok_chat_t *load_chat(const char *model_subdir)
{
    char path[1024], err[512] = "";
    snprintf(path, sizeof(path), "%s/fixtures/%s", shared_dir(), model_subdir);
    tok_chat_t *c = NULL;
    int r = tok_chat_new(path, &c, err, sizeof(err));
    if (r)
        fail_msg("tok_chat_new(%s): %d %s", path, r, err);
    return c;
}

static tok_chat_t *chat_for(const char *tpl, tok_chat_t *omni, tok_chat_t *qwen3)
{
    if (!strcmp(tpl, "omni"))
        return omni;
    if (!strcmp(tpl, "qwen3"))
        return qwen3;
    fail_msg("unknown template kind %s", tpl);
    return NULL;
}

/* JSON form: {"messages", "tools"?, kwargs...}; the rendering, encoded by tiny-omni's tokenizer (as
 * the fixture's ids were), also gives the fixture's ids: what tokenizer_svc sends on. */
static void test_fixture_json_form(void **state)
{
    (void)state;
    json_t *g = load_golden();
    tok_chat_t *omni = load_chat("tiny-omni"), *qwen3 = load_chat("qwen3-tokenizer");
    char path[1024], cerr[512] = "";
    snprintf(path, sizeof(path), "%s/fixtures/tiny-omni", shared_dir());
    tok_codec_t *codec = NULL;
    int lr = tok_codec_load(path, &codec, cerr, sizeof(cerr));
    if (lr)
        fail_msg("tok_codec_load(%s): %d %s", path, lr, cerr);
    json_t *cases = json_object_get(g, "chat_template");
    assert_true(json_array_size(cases) > 0);
    size_t i;
    json_t *cs;
    json_array_foreach(cases, i, cs) {
        json_t *req = json_deep_copy(json_object_get(cs, "conversation"));
        json_object_update(req, json_object_get(cs, "kwargs"));
        char *s = json_dumps(req, JSON_COMPACT);
        char *text = NULL;
        size_t len = 0;
        tok_chat_error_t err = {{0}};
        int r = tok_chat_render_json(chat_for(json_string_value(json_object_get(cs, "template")), omni, qwen3), s,
                                     strlen(s), &text, &len, &err);
        if (r)
            fail_msg("case %zu: %d %s", i, r, err.message);
        const char *want = json_string_value(json_object_get(cs, "rendered"));
        if (len != strlen(want) || memcmp(text, want, len))
            fail_msg("case %zu differs:\n  want [%s]\n  got  [%s]", i, want, text);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        assert_int_equal(tok_codec_encode(codec, text, len, &ids, &n_ids), 0);
        json_t *want_ids = json_object_get(cs, "ids");
        assert_int_equal(n_ids, json_array_size(want_ids));
        for (size_t k = 0; k < n_ids; k++)
            if (ids[k] != json_integer_value(json_array_get(want_ids, k)))
                fail_msg("case %zu: id %zu is %d, want %lld", i, k, ids[k],
                         (long long)json_integer_value(json_array_get(want_ids, k)));
        free(ids);
        free(text);
        free(s);
        json_decref(req);
    }
    tok_codec_free(codec);
    tok_chat_free(omni);
    tok_chat_free(qwen3);
    json_decref(g);
}

/* ---- protobuf form, built from the fixture's JSON conversation ---- */

typedef struct pool { /* everything the proto conversation points to, freed at once */
    void *p[4096];
    size_t n;
} pool;

static void *pool_add(pool *pl, void *x)
{
    assert_true(pl->n < sizeof(pl->p) / sizeof(pl->p[0]));
    pl->p[pl->n++] = x;
    return x;
}

static void *pool_zalloc(pool *pl, size_t n) { return pool_add(pl, calloc(1, n)); }
static char *pool_str(pool *pl, const char *s) { return pool_add(pl, strdup(s)); }

static void pool_free(pool *pl)
{
    for (size_t i = 0; i < pl->n; i++)
        free(pl->p[i]);
    pl->n = 0;
}

static Omnipipe__ContentPart *part_from_json(pool *pl, json_t *pj)
{
    Omnipipe__ContentPart *p = pool_zalloc(pl, sizeof(*p));
    omnipipe__content_part__init(p);
    const char *type = json_string_value(json_object_get(pj, "type"));
    p->has_type = 1;
    if (!strcmp(type, "text")) {
        p->type = OMNIPIPE__CONTENT_PART__TYPE__TEXT;
        p->text = pool_str(pl, json_string_value(json_object_get(pj, "text")));
        return p;
    }
    p->type = !strcmp(type, "image") ? OMNIPIPE__CONTENT_PART__TYPE__IMAGE
              : !strcmp(type, "audio") ? OMNIPIPE__CONTENT_PART__TYPE__AUDIO
                                       : OMNIPIPE__CONTENT_PART__TYPE__VIDEO;
    Omnipipe__MediaSource *m = pool_zalloc(pl, sizeof(*m));
    omnipipe__media_source__init(m);
    m->src_case = OMNIPIPE__MEDIA_SOURCE__SRC_PATH;
    m->path = pool_str(pl, json_string_value(json_object_get(pj, type)));
    p->media = m;
    return p;
}

static Omnipipe__Conversation *conv_from_json(pool *pl, json_t *conv, json_t *kwargs, size_t *ret_n_media)
{
    Omnipipe__Conversation *c = pool_zalloc(pl, sizeof(*c));
    omnipipe__conversation__init(c);
    json_t *msgs = json_object_get(conv, "messages");
    c->n_messages = json_array_size(msgs);
    c->messages = pool_zalloc(pl, c->n_messages * sizeof(*c->messages));
    size_t n_media = 0;
    for (size_t i = 0; i < c->n_messages; i++) {
        json_t *mj = json_array_get(msgs, i);
        Omnipipe__Message *m = pool_zalloc(pl, sizeof(*m));
        omnipipe__message__init(m);
        m->role = pool_str(pl, json_string_value(json_object_get(mj, "role")));
        json_t *content = json_object_get(mj, "content");
        if (json_is_string(content)) {
            m->content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
            m->text = pool_str(pl, json_string_value(content));
        } else {
            m->content_case = OMNIPIPE__MESSAGE__CONTENT_PARTS;
            m->parts = pool_zalloc(pl, sizeof(*m->parts));
            omnipipe__part_list__init(m->parts);
            m->parts->n_parts = json_array_size(content);
            m->parts->parts = pool_zalloc(pl, m->parts->n_parts * sizeof(*m->parts->parts));
            for (size_t k = 0; k < m->parts->n_parts; k++) {
                m->parts->parts[k] = part_from_json(pl, json_array_get(content, k));
                n_media += m->parts->parts[k]->type != OMNIPIPE__CONTENT_PART__TYPE__TEXT;
            }
        }
        if (json_is_string(json_object_get(mj, "reasoning_content")))
            m->reasoning_content = pool_str(pl, json_string_value(json_object_get(mj, "reasoning_content")));
        json_t *calls = json_object_get(mj, "tool_calls");
        m->n_tool_calls = json_array_size(calls);
        m->tool_calls = pool_zalloc(pl, (m->n_tool_calls + 1) * sizeof(*m->tool_calls));
        for (size_t k = 0; k < m->n_tool_calls; k++) {
            json_t *fn = json_object_get(json_array_get(calls, k), "function");
            Omnipipe__ToolCall *tc = pool_zalloc(pl, sizeof(*tc));
            omnipipe__tool_call__init(tc);
            tc->name = pool_str(pl, json_string_value(json_object_get(fn, "name")));
            tc->arguments_json = pool_add(pl, json_dumps(json_object_get(fn, "arguments"), JSON_COMPACT));
            m->tool_calls[k] = tc;
        }
        c->messages[i] = m;
    }
    json_t *tools = json_object_get(conv, "tools");
    c->n_tools_json = json_array_size(tools);
    c->tools_json = pool_zalloc(pl, (c->n_tools_json + 1) * sizeof(char *));
    for (size_t k = 0; k < c->n_tools_json; k++)
        c->tools_json[k] = pool_add(pl, json_dumps(json_array_get(tools, k), JSON_COMPACT));
    json_t *agp = json_object_get(kwargs, "add_generation_prompt");
    if (agp) {
        c->has_add_generation_prompt = 1;
        c->add_generation_prompt = json_is_true(agp);
    }
    json_t *et = json_object_get(kwargs, "enable_thinking");
    if (et) {
        c->has_enable_thinking = 1;
        c->enable_thinking = json_is_true(et);
    }
    *ret_n_media = n_media;
    return c;
}

static void test_fixture_proto_form(void **state)
{
    (void)state;
    json_t *g = load_golden();
    tok_chat_t *omni = load_chat("tiny-omni"), *qwen3 = load_chat("qwen3-tokenizer");
    size_t i, n_media_total = 0;
    json_t *cs;
    json_array_foreach(json_object_get(g, "chat_template"), i, cs) {
        pool pl = {{0}, 0};
        size_t want_media = 0;
        Omnipipe__Conversation *conv =
            conv_from_json(&pl, json_object_get(cs, "conversation"), json_object_get(cs, "kwargs"), &want_media);
        char *text = NULL;
        size_t len = 0, n_media = 99;
        tok_chat_media_t *media = NULL;
        tok_chat_error_t err = {{0}};
        int r = tok_chat_render(chat_for(json_string_value(json_object_get(cs, "template")), omni, qwen3), conv, &text,
                                &len, &media, &n_media, &err);
        if (r)
            fail_msg("case %zu: %d %s", i, r, err.message);
        const char *want = json_string_value(json_object_get(cs, "rendered"));
        if (len != strlen(want) || memcmp(text, want, len))
            fail_msg("case %zu differs:\n  want [%s]\n  got  [%s]", i, want, text);
        assert_int_equal(n_media, want_media);
        for (size_t k = 0; k < n_media; k++) {
            const Omnipipe__Message *m = conv->messages[media[k].message_index];
            assert_int_equal(m->content_case, OMNIPIPE__MESSAGE__CONTENT_PARTS);
            assert_ptr_equal(media[k].part, m->parts->parts[media[k].part_index]);
            assert_int_not_equal(media[k].part->type, OMNIPIPE__CONTENT_PART__TYPE__TEXT);
            if (k)
                assert_true(media[k].message_index > media[k - 1].message_index ||
                            (media[k].message_index == media[k - 1].message_index &&
                             media[k].part_index > media[k - 1].part_index));
        }
        n_media_total += n_media;
        free(text);
        free(media);
        pool_free(&pl);
    }
    assert_true(n_media_total >= 3); /* the fixtures carry audio, image and video parts */
    tok_chat_free(omni);
    tok_chat_free(qwen3);
    json_decref(g);
}

/* ---- loading order and special tokens ---- */

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *render_dir(const char *dir, const char *req)
{
    char err[512] = "";
    tok_chat_t *c = NULL;
    int r = tok_chat_new(dir, &c, err, sizeof(err));
    if (r)
        fail_msg("tok_chat_new(%s): %d %s", dir, r, err);
    char *text = NULL;
    tok_chat_error_t cerr = {{0}};
    r = tok_chat_render_json(c, req, strlen(req), &text, NULL, &cerr);
    if (r)
        fail_msg("render: %d %s", r, cerr.message);
    tok_chat_free(c);
    return text;
}

static void rm_dir(const char *dir)
{
    static const char *const names[] = {"tokenizer_config.json", "chat_template.json", "chat_template.jinja"};
    char path[1024];
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_loading_order(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_jinja_chat_XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *req = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}";
    char err[512] = "";
    tok_chat_t *c = NULL;
    assert_int_equal(tok_chat_new(dir, &c, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "no chat template"));
    assert_null(c);

    write_file(dir, "tokenizer_config.json",
               "{\"bos_token\": {\"content\": \"<s>\", \"special\": true}, \"eos_token\": \"</s>\", \"unk_token\": null,"
               " \"chat_template\": \"cfg {{ bos_token }}{{ eos_token }}{{ unk_token is defined }}{{ tools }}"
               "{{ documents }}{{ add_generation_prompt }}\"}");
    char *t = render_dir(dir, req);
    assert_string_equal(t, "cfg <s></s>FalseNoneNoneTrue");
    free(t);

    write_file(dir, "tokenizer_config.json",
               "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"tool\"}, {\"name\": \"default\", \"template\": \"dflt\"}]}");
    t = render_dir(dir, req);
    assert_string_equal(t, "dflt");
    free(t);

    write_file(dir, "chat_template.json", "{\"chat_template\": \"json {{ messages[0].content }}\"}");
    t = render_dir(dir, req);
    assert_string_equal(t, "json x");
    free(t);

    write_file(dir, "chat_template.jinja", "jinja {{ messages|length }}{{ add_generation_prompt }}\n");
    t = render_dir(dir, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"add_generation_prompt\": false}");
    assert_string_equal(t, "jinja 1False");
    free(t);

    /* a template syntax error names the file and line */
    write_file(dir, "chat_template.jinja", "ok\n{% if %}");
    assert_int_equal(tok_chat_new(dir, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "chat_template.jinja: chat template line 2"));

    /* raise_exception reaches the caller with the template's message and line */
    write_file(dir, "chat_template.jinja", "{% for m in messages %}\n{% if m.role == 'user' %}"
                                           "{{ raise_exception('no users allowed: ' ~ m.content) }}{% endif %}{% endfor %}");
    assert_int_equal(tok_chat_new(dir, &c, err, sizeof(err)), 0);
    char *text = (char *)0x1;
    tok_chat_error_t cerr = {{0}};
    assert_int_equal(tok_chat_render_json(c, req, strlen(req), &text, NULL, &cerr), -EINVAL);
    assert_string_equal(cerr.message, "chat template line 2: no users allowed: x");
    assert_ptr_equal(text, (char *)0x1);
    tok_chat_free(c);
    rm_dir(dir);
}

/* ---- validation ---- */

static void expect_json_error(const tok_chat_t *c, const char *req, const char *want)
{
    char *text = NULL;
    tok_chat_error_t err = {{0}};
    int r = tok_chat_render_json(c, req, strlen(req), &text, NULL, &err);
    if (r != -EINVAL)
        fail_msg("request %s: got %d [%s], want -EINVAL", req, r, text ? text : "");
    if (!strstr(err.message, want))
        fail_msg("request %s: error [%s] lacks [%s]", req, err.message, want);
}

static void test_validation_json(void **state)
{
    (void)state;
    tok_chat_t *c = load_chat("tiny-omni");
    expect_json_error(c, "[1]", "request: expected a JSON object");
    expect_json_error(c, "{", "request: invalid JSON");
    expect_json_error(c, "{}", "messages: missing");
    expect_json_error(c, "{\"messages\": []}", "messages: empty conversation");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"robot\", \"content\": \"b\"}]}",
                      "messages[1].role: unknown role 'robot'");
    expect_json_error(c, "{\"messages\": [{\"content\": \"a\"}]}", "messages[0].role: missing");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content: missing");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"smell\"}]}]}",
                      "messages[0].content[1].type: unknown part type 'smell'");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
                      "messages[0].content[0].text: missing");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image\"}]}]}",
                      "messages[0].content[0].image: missing");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages[0].content: expected a string");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"add_generation_prompt\": 1}",
                      "add_generation_prompt: expected true or false");
    expect_json_error(c, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"tools\": {}}", "tools: expected a list");
    expect_json_error(c, "{\"messages\": [{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"function\": {}}]}]}",
                      "messages[0].tool_calls[0].function.name: missing");
    /* an assistant message with tool calls may omit content */
    const char *ok = "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"\","
                     " \"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1.0}}}]}]}";
    char *text = NULL;
    tok_chat_error_t err = {{0}};
    assert_int_equal(tok_chat_render_json(c, ok, strlen(ok), &text, NULL, &err), 0);
    assert_non_null(strstr(text, "{\"name\": \"f\", \"arguments\": {\"a\": 1.0}}"));
    free(text);
    tok_chat_free(c);
}

static void expect_proto_error(const tok_chat_t *c, const Omnipipe__Conversation *conv, const char *want)
{
    char *text = NULL;
    tok_chat_media_t *media = NULL;
    size_t n_media = 0;
    tok_chat_error_t err = {{0}};
    int r = tok_chat_render(c, conv, &text, NULL, &media, &n_media, &err);
    if (r != -EINVAL)
        fail_msg("got %d [%s], want -EINVAL with [%s]", r, text ? text : "", want);
    if (!strstr(err.message, want))
        fail_msg("error [%s] lacks [%s]", err.message, want);
    assert_null(text);
    assert_null(media);
}

static void test_validation_proto(void **state)
{
    (void)state;
    tok_chat_t *c = load_chat("tiny-omni");
    Omnipipe__Conversation conv = OMNIPIPE__CONVERSATION__INIT;
    expect_proto_error(c, &conv, "messages: empty conversation");

    Omnipipe__Message m0 = OMNIPIPE__MESSAGE__INIT, m1 = OMNIPIPE__MESSAGE__INIT;
    Omnipipe__Message *msgs[2] = {&m0, &m1};
    conv.messages = msgs;
    conv.n_messages = 2;
    m0.role = "user";
    m0.content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
    m0.text = "hi";
    m1.role = "wizard";
    m1.content_case = OMNIPIPE__MESSAGE__CONTENT_TEXT;
    m1.text = "x";
    expect_proto_error(c, &conv, "messages[1].role: unknown role 'wizard'");
    m1.role = NULL;
    expect_proto_error(c, &conv, "messages[1].role: missing");
    m1.role = "assistant";
    m1.text = "bad \xff utf8";
    expect_proto_error(c, &conv, "messages[1].content: not valid UTF-8");
    m1.content_case = OMNIPIPE__MESSAGE__CONTENT__NOT_SET;
    expect_proto_error(c, &conv, "messages[1].content: missing");

    /* parts */
    Omnipipe__ContentPart p0 = OMNIPIPE__CONTENT_PART__INIT, p1 = OMNIPIPE__CONTENT_PART__INIT;
    Omnipipe__ContentPart *parts[2] = {&p0, &p1};
    Omnipipe__PartList pl = OMNIPIPE__PART_LIST__INIT;
    pl.parts = parts;
    pl.n_parts = 2;
    m1.content_case = OMNIPIPE__MESSAGE__CONTENT_PARTS;
    m1.parts = &pl;
    p0.has_type = 1;
    p0.type = OMNIPIPE__CONTENT_PART__TYPE__TEXT;
    p0.text = "look";
    p1.has_type = 0;
    expect_proto_error(c, &conv, "messages[1].content[1].type: unknown part type");
    p1.has_type = 1;
    p1.type = (Omnipipe__ContentPart__Type)42;
    expect_proto_error(c, &conv, "messages[1].content[1].type: unknown part type 42");
    p1.type = OMNIPIPE__CONTENT_PART__TYPE__IMAGE;
    expect_proto_error(c, &conv, "messages[1].content[1].media: missing");
    Omnipipe__MediaSource src = OMNIPIPE__MEDIA_SOURCE__INIT;
    p1.media = &src;
    src.src_case = OMNIPIPE__MEDIA_SOURCE__SRC_DATA;
    src.data.data = (uint8_t *)"abcd";
    src.data.len = 4;
    src.mime_type = "image/png";
    p0.text = NULL;
    expect_proto_error(c, &conv, "messages[1].content[0].text: missing");
    p0.text = "look";

    /* tool calls */
    Omnipipe__ToolCall tc = OMNIPIPE__TOOL_CALL__INIT;
    Omnipipe__ToolCall *tcs[1] = {&tc};
    m1.tool_calls = tcs;
    m1.n_tool_calls = 1;
    expect_proto_error(c, &conv, "messages[1].tool_calls[0].name: missing");
    tc.name = "f";
    tc.arguments_json = "[1]";
    expect_proto_error(c, &conv, "messages[1].tool_calls[0].arguments_json: expected a JSON object");
    tc.arguments_json = "{\"city\": \"Paris\", \"n\": 2.0}";
    char *tools[1] = {"{not json"};
    conv.tools_json = tools;
    conv.n_tools_json = 1;
    expect_proto_error(c, &conv, "tools_json[0]:");
    conv.n_tools_json = 0;
    conv.extra_template_vars_json = "{\"messages\": []}";
    expect_proto_error(c, &conv, "extra_template_vars_json: may not set 'messages'");
    conv.extra_template_vars_json = "{\"enable_thinking\": false}";

    /* now valid: the media part comes back, the data URL renders through the template's placeholder */
    char *text = NULL;
    size_t len = 0, n_media = 0;
    tok_chat_media_t *media = NULL;
    tok_chat_error_t err = {{0}};
    assert_int_equal(tok_chat_render(c, &conv, &text, &len, &media, &n_media, &err), 0);
    /* expected: jinja2 rendering of the equivalent message dicts (the data URL as "image") */
    assert_string_equal(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
                              "look<|vision_start|><|image_pad|><|vision_end|>\n<tool_call>\n"
                              "{\"name\": \"f\", \"arguments\": {\"city\": \"Paris\", \"n\": 2.0}}\n</tool_call><|im_end|>\n"
                              "<|im_start|>assistant\n<think>\n\n</think>\n\n");
    assert_int_equal(n_media, 1);
    assert_int_equal(media[0].message_index, 1);
    assert_int_equal(media[0].part_index, 1);
    assert_ptr_equal(media[0].part, &p1);
    free(text);
    free(media);
    tok_chat_free(c);
}

/* ---- concurrency: one tok_chat_t, renders from several threads at once ---- */

typedef struct race_arg {
    const tok_chat_t *c; /* shared */
    const char *req;     /* request JSON */
    const char *want;    /* the single-threaded rendering */
    int mismatches;      /* out */
} race_arg;

static void *race_thread(void *p)
{
    race_arg *ra = p;
    for (int i = 0; i < 200; i++) {
        char *text = NULL;
        tok_chat_error_t err = {{0}};
        if (tok_chat_render_json(ra->c, ra->req, strlen(ra->req), &text, NULL, &err) != 0 || strcmp(text, ra->want))
            ra->mismatches++;
        free(text);
    }
    return NULL;
}

static void test_concurrent_renders(void **state)
{
    (void)state;
    tok_chat_t *c = load_chat("tiny-omni");
    const char *req = "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"q1\"},"
                      " {\"role\": \"assistant\", \"content\": \"<think>\\nr\\n</think>\\n\\na1\"}, {\"role\": \"user\", \"content\":"
                      " [{\"type\": \"image\", \"image\": \"x.png\"}, {\"type\": \"text\", \"text\": \"q2\"}]}],"
                      " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}]}";
    char *want = NULL;
    tok_chat_error_t err = {{0}};
    assert_int_equal(tok_chat_render_json(c, req, strlen(req), &want, NULL, &err), 0);
    pthread_t th[4];
    race_arg ra[4];
    for (int i = 0; i < 4; i++) {
        ra[i] = (race_arg){.c = c, .req = req, .want = want, .mismatches = 0};
        assert_int_equal(pthread_create(&th[i], NULL, race_thread, &ra[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ra[i].mismatches, 0);
    }
    free(want);
    tok_chat_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_json_form), cmocka_unit_test(test_fixture_proto_form),
        cmocka_unit_test(test_loading_order),     cmocka_unit_test(test_validation_json),
        cmocka_unit_test(test_validation_proto),  cmocka_unit_test(test_concurrent_renders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
