/* tok_chat.c: conversation validation and normalization, and chat-template rendering through the
 * checkpoint's own template (tok_jinja.c). See tok_chat.h.
 *
 * Template source, first found wins (transformers: a standalone template file clobbers the config's):
 *   1. chat_template.jinja
 *   2. chat_template.json      {"chat_template": "..."}
 *   3. tokenizer_config.json   "chat_template": "..." or [{"name": "default", "template": "..."}, ...]
 * Special tokens (bos/eos/pad/unk, string or {"content": ...}) come from tokenizer_config.json.
 *
 * Both input forms are normalized to the message dicts Hugging Face templates expect, then rendered
 * with the variables apply_chat_template passes: messages, tools (None when absent), documents (None),
 * add_generation_prompt, the special tokens, and the caller's extra variables. */
#include "tok_chat.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <utf8proc.h>

#include "tok_jinja.h"

#define TOK_CHAT_N_SPECIAL 4

static const char *const s_special_names[TOK_CHAT_N_SPECIAL] = {"bos_token", "eos_token", "pad_token", "unk_token"};

struct tok_chat {
    tok_jinja_t *tpl;                        /* parsed chat template */
    char *special[TOK_CHAT_N_SPECIAL];       /* special token strings (NULL: not set), s_special_names order */
    char template_source[64];                /* file the template came from */
};

static void s_err(tok_chat_error_t *err, const char *fmt, ...) {
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

static void s_errbuf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Reads a whole file; -ENOENT when it does not exist. */
static int s_read_file(const char *dir, const char *name, char **ret, size_t *ret_len) {
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return -ENOMEM;
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return -ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return -EIO;
    }
    buf[n] = 0;
    *ret = buf;
    *ret_len = n;
    return 0;
}

/* The template text of a chat_template value: a string, or a list of {name, template} (picks
 * "default"). Returns NULL when absent or malformed. */
static const char *s_template_of(json_t *v) {
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            const char *nm = json_string_value(json_object_get(e, "name"));
            if (nm && !strcmp(nm, "default"))
                return json_string_value(json_object_get(e, "template"));
        }
    }
    return NULL;
}

int tok_chat_new(const char *model_dir, tok_chat_t **ret, char *err, size_t errlen) {
    if (!model_dir || !ret)
        return -EINVAL;
    tok_chat_t *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    char *text = NULL, *cfg_text = NULL;
    size_t text_len = 0, cfg_len = 0;
    json_t *cfg = NULL, *tj = NULL;
    int r = s_read_file(model_dir, "tokenizer_config.json", &cfg_text, &cfg_len);
    if (r == 0) {
        json_error_t je;
        /* only strings are read; INT_AS_REAL accepts model_max_length values beyond int64 */
        cfg = json_loadb(cfg_text, cfg_len, JSON_DECODE_INT_AS_REAL, &je);
        if (!json_is_object(cfg)) {
            s_errbuf(err, errlen, "%s/tokenizer_config.json: line %d: %s", model_dir, je.line, cfg ? "expected a JSON object" : je.text);
            r = -EINVAL;
            goto fail;
        }
        for (int i = 0; i < TOK_CHAT_N_SPECIAL; i++) {
            json_t *v = json_object_get(cfg, s_special_names[i]);
            if (json_is_object(v))
                v = json_object_get(v, "content");
            if (json_is_string(v) && !(c->special[i] = strdup(json_string_value(v)))) {
                r = -ENOMEM;
                goto fail;
            }
        }
    } else if (r != -ENOENT) {
        s_errbuf(err, errlen, "%s/tokenizer_config.json: %s", model_dir, strerror(-r));
        goto fail;
    }

    const char *src = NULL;
    size_t src_len = 0;
    r = s_read_file(model_dir, "chat_template.jinja", &text, &text_len);
    if (r == 0) {
        src = text;
        src_len = text_len;
        snprintf(c->template_source, sizeof(c->template_source), "chat_template.jinja");
    } else if (r != -ENOENT) {
        s_errbuf(err, errlen, "%s/chat_template.jinja: %s", model_dir, strerror(-r));
        goto fail;
    } else {
        r = s_read_file(model_dir, "chat_template.json", &text, &text_len);
        if (r == 0) {
            json_error_t je;
            tj = json_loadb(text, text_len, JSON_DECODE_INT_AS_REAL, &je);
            src = tj ? s_template_of(json_object_get(tj, "chat_template")) : NULL;
            if (!src) {
                s_errbuf(err, errlen, "%s/chat_template.json: chat_template: %s", model_dir, tj ? "expected a string" : je.text);
                r = -EINVAL;
                goto fail;
            }
            src_len = strlen(src);
            snprintf(c->template_source, sizeof(c->template_source), "chat_template.json");
        } else if (r != -ENOENT) {
            s_errbuf(err, errlen, "%s/chat_template.json: %s", model_dir, strerror(-r));
            goto fail;
        } else if (cfg && (src = s_template_of(json_object_get(cfg, "chat_template")))) {
            src_len = strlen(src);
            snprintf(c->template_source, sizeof(c->template_source), "tokenizer_config.json");
        } else {
            s_errbuf(err, errlen, "%s: no chat template (looked for chat_template.jinja, chat_template.json and "
                          "tokenizer_config.json chat_template)", model_dir);
            r = -ENOENT;
            goto fail;
        }
    }
    char jerr[512] = "";
    r = tok_jinja_new(src, src_len, &c->tpl, jerr, sizeof(jerr));
    if (r < 0) {
        s_errbuf(err, errlen, "%s/%s: %s", model_dir, c->template_source, r == -EINVAL ? jerr : strerror(-r));
        goto fail;
    }
    free(text);
    free(cfg_text);
    json_decref(tj);
    json_decref(cfg);
    *ret = c;
    return 0;
fail:
    free(text);
    free(cfg_text);
    json_decref(tj);
    json_decref(cfg);
    tok_chat_free(c);
    return r;
}

tok_chat_t *tok_chat_free(tok_chat_t *c) {
    if (!c)
        return NULL;
    tok_jinja_free(c->tpl);
    for (int i = 0; i < TOK_CHAT_N_SPECIAL; i++)
        free(c->special[i]);
    free(c);
    return NULL;
}

/* ---- validation helpers ------------------------------------------------------------------------ */

static bool s_utf8_ok(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0)
            return false;
        i += (size_t)k;
    }
    return true;
}

static bool s_role_ok(const char *role) {
    return !strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant") || !strcmp(role, "tool");
}

/* a JSON string from a proto string field, checking UTF-8; path names the field for the error */
static int s_jstr(const char *s, const char *path, json_t **ret, tok_chat_error_t *err) {
    size_t n = strlen(s);
    if (!s_utf8_ok(s, n)) {
        s_err(err, "%s: not valid UTF-8", path);
        return -EINVAL;
    }
    json_t *j = json_stringn(s, n);
    if (!j)
        return -ENOMEM;
    *ret = j;
    return 0;
}

static int s_set_str(json_t *obj, const char *key, const char *s, const char *path, tok_chat_error_t *err) {
    json_t *j;
    int r = s_jstr(s, path, &j, err);
    if (r < 0)
        return r;
    return json_object_set_new(obj, key, j) ? -ENOMEM : 0;
}

static const char s_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* "data:<mime>;base64,<data>" for inline media bytes */
static json_t *s_data_url(const char *mime, const uint8_t *d, size_t n) {
    size_t mlen = strlen(mime);
    size_t len = 5 + mlen + 8 + 4 * ((n + 2) / 3);
    char *buf = malloc(len + 1), *o = buf;
    if (!buf)
        return NULL;
    o += sprintf(o, "data:%s;base64,", mime);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        *o++ = s_b64[v >> 18 & 63];
        *o++ = s_b64[v >> 12 & 63];
        *o++ = i + 1 < n ? s_b64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? s_b64[v & 63] : '=';
    }
    json_t *j = json_stringn(buf, (size_t)(o - buf));
    free(buf);
    return j;
}

typedef struct media_acc {
    tok_chat_media_t *v;
    size_t n, cap;
} media_acc;

static int s_media_push(media_acc *m, uint32_t mi, uint32_t pi, const Omnipipe__ContentPart *part) {
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 8;
        tok_chat_media_t *nv = realloc(m->v, cap * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        m->v = nv;
        m->cap = cap;
    }
    m->v[m->n++] = (tok_chat_media_t){.message_index = mi, .part_index = pi, .part = part};
    return 0;
}

/* One content part -> {"type": "text", "text": ...} / {"type": "image", "image": <path|url|data URL>} */
static int s_part_json(const Omnipipe__ContentPart *p, size_t mi, size_t pi, json_t **ret, bool *ret_media,
                       tok_chat_error_t *err) {
    char path[96];
    static const char *const kinds[] = {NULL, "text", "image", "audio", "video"};
    if (!p->has_type || p->type <= OMNIPIPE__CONTENT_PART__TYPE__TYPE_UNSPECIFIED ||
        p->type > OMNIPIPE__CONTENT_PART__TYPE__VIDEO) {
        s_err(err, "messages[%zu].content[%zu].type: unknown part type %d", mi, pi, p->has_type ? (int)p->type : 0);
        return -EINVAL;
    }
    const char *kind = kinds[p->type];
    json_t *o = json_object();
    if (!o)
        return -ENOMEM;
    json_object_set_new(o, "type", json_string(kind));
    int r = 0;
    if (p->type == OMNIPIPE__CONTENT_PART__TYPE__TEXT) {
        snprintf(path, sizeof(path), "messages[%zu].content[%zu].text", mi, pi);
        if (!p->text) {
            s_err(err, "%s: missing", path);
            r = -EINVAL;
        } else
            r = s_set_str(o, "text", p->text, path, err);
        *ret_media = false;
    } else {
        const Omnipipe__MediaSource *m = p->media;
        snprintf(path, sizeof(path), "messages[%zu].content[%zu].media", mi, pi);
        if (!m || m->src_case == OMNIPIPE__MEDIA_SOURCE__SRC__NOT_SET) {
            s_err(err, "%s: missing (a %s part needs a path, url or data)", path, kind);
            r = -EINVAL;
        } else if (m->src_case == OMNIPIPE__MEDIA_SOURCE__SRC_PATH) {
            strncat(path, ".path", sizeof(path) - strlen(path) - 1);
            r = s_set_str(o, kind, m->path, path, err);
        } else if (m->src_case == OMNIPIPE__MEDIA_SOURCE__SRC_URL) {
            strncat(path, ".url", sizeof(path) - strlen(path) - 1);
            r = s_set_str(o, kind, m->url, path, err);
        } else {
            const char *mime = m->mime_type ? m->mime_type : "application/octet-stream";
            if (!s_utf8_ok(mime, strlen(mime))) {
                s_err(err, "%s.mime_type: not valid UTF-8", path);
                r = -EINVAL;
            } else {
                json_t *u = s_data_url(mime, m->data.data, m->data.len);
                r = !u || json_object_set_new(o, kind, u) ? -ENOMEM : 0;
            }
        }
        *ret_media = true;
    }
    if (r < 0) {
        json_decref(o);
        return r;
    }
    *ret = o;
    return 0;
}

static int s_message_json(const Omnipipe__Message *m, size_t mi, media_acc *media, json_t **ret, tok_chat_error_t *err) {
    char path[96];
    if (!m) {
        s_err(err, "messages[%zu]: missing", mi);
        return -EINVAL;
    }
    if (!m->role || !m->role[0]) {
        s_err(err, "messages[%zu].role: missing", mi);
        return -EINVAL;
    }
    snprintf(path, sizeof(path), "messages[%zu].role", mi);
    if (!s_utf8_ok(m->role, strlen(m->role))) {
        s_err(err, "%s: not valid UTF-8", path);
        return -EINVAL;
    }
    if (!s_role_ok(m->role)) {
        s_err(err, "%s: unknown role '%s' (expected system, user, assistant or tool)", path, m->role);
        return -EINVAL;
    }
    json_t *o = json_object();
    if (!o)
        return -ENOMEM;
    int r = 0;
    json_object_set_new(o, "role", json_string(m->role));
    if (m->content_case == OMNIPIPE__MESSAGE__CONTENT_TEXT) {
        snprintf(path, sizeof(path), "messages[%zu].content", mi);
        r = s_set_str(o, "content", m->text ? m->text : "", path, err);
    } else if (m->content_case == OMNIPIPE__MESSAGE__CONTENT_PARTS) {
        json_t *arr = json_array();
        if (!arr)
            r = -ENOMEM;
        size_t np = m->parts ? m->parts->n_parts : 0;
        for (size_t pi = 0; r == 0 && pi < np; pi++) {
            json_t *pj = NULL;
            bool is_media = false;
            const Omnipipe__ContentPart *p = m->parts->parts[pi];
            if (!p) {
                s_err(err, "messages[%zu].content[%zu]: missing", mi, pi);
                r = -EINVAL;
                break;
            }
            r = s_part_json(p, mi, pi, &pj, &is_media, err);
            if (r == 0 && json_array_append_new(arr, pj))
                r = -ENOMEM;
            if (r == 0 && is_media && media)
                r = s_media_push(media, (uint32_t)mi, (uint32_t)pi, p);
        }
        if (arr)
            json_object_set_new(o, "content", arr);
    } else if (!strcmp(m->role, "assistant") && m->n_tool_calls > 0) {
        json_object_set_new(o, "content", json_string(""));
    } else {
        s_err(err, "messages[%zu].content: missing", mi);
        r = -EINVAL;
    }
    if (r == 0 && m->reasoning_content) {
        snprintf(path, sizeof(path), "messages[%zu].reasoning_content", mi);
        r = s_set_str(o, "reasoning_content", m->reasoning_content, path, err);
    }
    if (r == 0 && m->n_tool_calls > 0) {
        json_t *calls = json_array();
        if (!calls)
            r = -ENOMEM;
        for (size_t k = 0; r == 0 && k < m->n_tool_calls; k++) {
            const Omnipipe__ToolCall *tc = m->tool_calls[k];
            if (!tc || !tc->name || !tc->name[0]) {
                s_err(err, "messages[%zu].tool_calls[%zu].name: missing", mi, k);
                r = -EINVAL;
                break;
            }
            json_t *call = json_object(), *fn = json_object(), *args = NULL;
            if (!call || !fn) {
                json_decref(call);
                json_decref(fn);
                r = -ENOMEM;
                break;
            }
            json_array_append_new(calls, call);
            if (tc->id) {
                snprintf(path, sizeof(path), "messages[%zu].tool_calls[%zu].id", mi, k);
                if ((r = s_set_str(call, "id", tc->id, path, err)) < 0) {
                    json_decref(fn);
                    break;
                }
            }
            json_object_set_new(call, "type", json_string("function"));
            json_object_set_new(call, "function", fn);
            snprintf(path, sizeof(path), "messages[%zu].tool_calls[%zu].name", mi, k);
            if ((r = s_set_str(fn, "name", tc->name, path, err)) < 0)
                break;
            if (tc->arguments_json && tc->arguments_json[0]) {
                json_error_t je;
                args = json_loads(tc->arguments_json, JSON_ALLOW_NUL, &je);
                if (!json_is_object(args)) {
                    s_err(err, "messages[%zu].tool_calls[%zu].arguments_json: %s", mi, k,
                          args ? "expected a JSON object" : je.text);
                    json_decref(args);
                    r = -EINVAL;
                    break;
                }
            } else
                args = json_object();
            json_object_set_new(fn, "arguments", args);
        }
        if (calls)
            json_object_set_new(o, "tool_calls", calls);
    }
    if (r == 0 && m->name) {
        snprintf(path, sizeof(path), "messages[%zu].name", mi);
        r = s_set_str(o, "name", m->name, path, err);
    }
    if (r == 0 && m->tool_call_id) {
        snprintf(path, sizeof(path), "messages[%zu].tool_call_id", mi);
        r = s_set_str(o, "tool_call_id", m->tool_call_id, path, err);
    }
    if (r < 0) {
        if (r == -ENOMEM)
            s_err(err, "out of memory");
        json_decref(o);
        return r;
    }
    *ret = o;
    return 0;
}

/* Adds the special tokens and renders vars (consumed). */
static int s_render(const tok_chat_t *c, json_t *vars, char **ret_text, size_t *ret_len, tok_chat_error_t *err) {
    for (int i = 0; i < TOK_CHAT_N_SPECIAL; i++)
        if (c->special[i] && !json_object_get(vars, s_special_names[i]))
            json_object_set_new(vars, s_special_names[i], json_string(c->special[i]));
    if (!json_object_get(vars, "tools"))
        json_object_set_new(vars, "tools", json_null());
    if (!json_object_get(vars, "documents"))
        json_object_set_new(vars, "documents", json_null());
    char jerr[sizeof(err->message)] = "";
    char *text = NULL;
    size_t len = 0;
    int r = tok_jinja_render(c->tpl, vars, &text, &len, jerr, sizeof(jerr));
    json_decref(vars);
    if (r < 0) {
        s_err(err, "%s", r == -EINVAL ? jerr : strerror(-r));
        return r;
    }
    *ret_text = text;
    if (ret_len)
        *ret_len = len;
    return 0;
}

int tok_chat_render(const tok_chat_t *c, const Omnipipe__Conversation *conv, char **ret_text, size_t *ret_len,
                    tok_chat_media_t **ret_media, size_t *ret_n_media, tok_chat_error_t *err) {
    if (!c || !conv || !ret_text)
        return -EINVAL;
    if (conv->n_messages == 0) {
        s_err(err, "messages: empty conversation");
        return -EINVAL;
    }
    media_acc media = {0};
    json_t *vars = json_object(), *msgs = json_array();
    int r = (!vars || !msgs) ? -ENOMEM : 0;
    if (r == 0)
        json_object_set(vars, "messages", msgs);
    for (size_t i = 0; r == 0 && i < conv->n_messages; i++) {
        json_t *mj = NULL;
        r = s_message_json(conv->messages[i], i, ret_media ? &media : NULL, &mj, err);
        if (r == 0 && json_array_append_new(msgs, mj))
            r = -ENOMEM;
    }
    if (r == 0 && conv->n_tools_json > 0) {
        json_t *tools = json_array();
        if (!tools)
            r = -ENOMEM;
        for (size_t k = 0; r == 0 && k < conv->n_tools_json; k++) {
            json_error_t je;
            json_t *t = conv->tools_json[k] ? json_loads(conv->tools_json[k], JSON_ALLOW_NUL, &je) : NULL;
            if (!json_is_object(t)) {
                s_err(err, "tools_json[%zu]: %s", k, t ? "expected a JSON object" : conv->tools_json[k] ? je.text : "missing");
                json_decref(t);
                r = -EINVAL;
                break;
            }
            json_array_append_new(tools, t);
        }
        if (tools)
            json_object_set_new(vars, "tools", tools);
    }
    if (r == 0 && conv->extra_template_vars_json && conv->extra_template_vars_json[0]) {
        json_error_t je;
        json_t *extra = json_loads(conv->extra_template_vars_json, JSON_ALLOW_NUL, &je);
        if (!json_is_object(extra)) {
            s_err(err, "extra_template_vars_json: %s", extra ? "expected a JSON object" : je.text);
            r = -EINVAL;
        } else if (json_object_get(extra, "messages")) {
            s_err(err, "extra_template_vars_json: may not set 'messages'");
            r = -EINVAL;
        } else
            json_object_update(vars, extra);
        json_decref(extra);
    }
    if (r == 0) {
        json_object_set_new(vars, "add_generation_prompt",
                            json_boolean(conv->has_add_generation_prompt ? conv->add_generation_prompt : true));
        if (conv->has_enable_thinking)
            json_object_set_new(vars, "enable_thinking", json_boolean(conv->enable_thinking));
    }
    json_decref(msgs);
    if (r < 0) {
        if (r == -ENOMEM)
            s_err(err, "out of memory");
        json_decref(vars);
        free(media.v);
        return r;
    }
    char *text = NULL;
    size_t len = 0;
    r = s_render(c, vars, &text, &len, err);
    if (r < 0) {
        free(media.v);
        return r;
    }
    *ret_text = text;
    if (ret_len)
        *ret_len = len;
    if (ret_media) {
        *ret_media = media.v;
        if (ret_n_media)
            *ret_n_media = media.n;
    } else
        free(media.v);
    return 0;
}

/* Validates a Hugging Face message dict of the render JSON form. */
static int s_check_message_json(json_t *m, size_t mi, tok_chat_error_t *err) {
    if (!json_is_object(m)) {
        s_err(err, "messages[%zu]: expected a JSON object", mi);
        return -EINVAL;
    }
    json_t *role = json_object_get(m, "role");
    if (!role) {
        s_err(err, "messages[%zu].role: missing", mi);
        return -EINVAL;
    }
    if (!json_is_string(role) || !s_role_ok(json_string_value(role))) {
        s_err(err, "messages[%zu].role: unknown role %s%s%s (expected system, user, assistant or tool)", mi,
              json_is_string(role) ? "'" : "", json_is_string(role) ? json_string_value(role) : "(not a string)",
              json_is_string(role) ? "'" : "");
        return -EINVAL;
    }
    json_t *content = json_object_get(m, "content");
    json_t *calls = json_object_get(m, "tool_calls");
    if (!content || json_is_null(content)) {
        if (!(json_is_array(calls) && json_array_size(calls) > 0)) {
            s_err(err, "messages[%zu].content: missing", mi);
            return -EINVAL;
        }
    } else if (json_is_array(content)) {
        size_t pi;
        json_t *p;
        json_array_foreach(content, pi, p) {
            const char *type = json_string_value(json_object_get(p, "type"));
            if (!json_is_object(p) || !type) {
                s_err(err, "messages[%zu].content[%zu].type: missing", mi, pi);
                return -EINVAL;
            }
            static const char *const known[] = {"text", "image", "image_url", "audio", "audio_url", "video", "video_url", NULL};
            bool ok = false;
            for (size_t k = 0; known[k]; k++)
                ok = ok || !strcmp(type, known[k]);
            if (!ok) {
                s_err(err, "messages[%zu].content[%zu].type: unknown part type '%s'", mi, pi, type);
                return -EINVAL;
            }
            json_t *payload = json_object_get(p, type);
            if (!payload || (!strcmp(type, "text") && !json_is_string(payload))) {
                s_err(err, "messages[%zu].content[%zu].%s: missing", mi, pi, type);
                return -EINVAL;
            }
        }
    } else if (!json_is_string(content)) {
        s_err(err, "messages[%zu].content: expected a string or a list of parts", mi);
        return -EINVAL;
    }
    if (calls && !json_is_array(calls) && !json_is_null(calls)) {
        s_err(err, "messages[%zu].tool_calls: expected a list", mi);
        return -EINVAL;
    }
    size_t k;
    json_t *tc;
    json_array_foreach(calls, k, tc) {
        json_t *fn = json_object_get(tc, "function");
        if (!json_is_object(tc) || !json_is_string(json_object_get(json_is_object(fn) ? fn : tc, "name"))) {
            s_err(err, "messages[%zu].tool_calls[%zu].function.name: missing", mi, k);
            return -EINVAL;
        }
    }
    return 0;
}

int tok_chat_render_json(const tok_chat_t *c, const char *json, size_t json_len, char **ret_text, size_t *ret_len,
                         tok_chat_error_t *err) {
    if (!c || !json || !ret_text)
        return -EINVAL;
    json_error_t je;
    json_t *vars = json_loadb(json, json_len, JSON_ALLOW_NUL, &je);
    if (!json_is_object(vars)) {
        s_err(err, "request: %s%s", vars ? "expected a JSON object" : "invalid JSON: ", vars ? "" : je.text);
        json_decref(vars);
        return -EINVAL;
    }
    json_t *msgs = json_object_get(vars, "messages");
    int r = 0;
    if (!json_is_array(msgs)) {
        s_err(err, "messages: %s", msgs ? "expected a list" : "missing");
        r = -EINVAL;
    } else if (json_array_size(msgs) == 0) {
        s_err(err, "messages: empty conversation");
        r = -EINVAL;
    }
    for (size_t i = 0; r == 0 && i < json_array_size(msgs); i++)
        r = s_check_message_json(json_array_get(msgs, i), i, err);
    json_t *tools = json_object_get(vars, "tools");
    if (r == 0 && tools && !json_is_array(tools) && !json_is_null(tools)) {
        s_err(err, "tools: expected a list");
        r = -EINVAL;
    }
    json_t *agp = json_object_get(vars, "add_generation_prompt");
    if (r == 0 && agp && !json_is_boolean(agp)) {
        s_err(err, "add_generation_prompt: expected true or false");
        r = -EINVAL;
    }
    if (r < 0) {
        json_decref(vars);
        return r;
    }
    if (!agp)
        json_object_set_new(vars, "add_generation_prompt", json_true());
    return s_render(c, vars, ret_text, ret_len, err);
}
