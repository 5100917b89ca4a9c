/* eng_config.c: parses config.json / generation_config.json into eng_config_t (eng_config.h).
 * Every size is read from the file; errors name the field (or the architecture / quantization
 * method) so a user can tell what to fix. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "eng_config.h"

static int s_err(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int s_err(char *err, size_t errlen, int r, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

const char *eng_arch_name(eng_arch_t a) {
    switch (a) {
    case ENG_ARCH_QWEN3: return "Qwen3ForCausalLM";
    case ENG_ARCH_QWEN3_MOE: return "Qwen3MoeForCausalLM";
    case ENG_ARCH_QWEN3_OMNI_MOE: return "Qwen3OmniMoeForConditionalGeneration";
    default: return "?";
    }
}

int eng_config_read_file(const char *path, char **ret, size_t *ret_len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    if (st.st_size > (off_t)256 << 20) { /* a config file is never this large */
        close(fd);
        return -EFBIG;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int r = n < 0 ? -errno : -EIO;
            free(buf);
            close(fd);
            return r;
        }
        got += (size_t)n;
    }
    close(fd);
    buf[got] = 0;
    *ret = buf;
    if (ret_len)
        *ret_len = got;
    return 0;
}

/* Reads a non-negative integer field; `required` fields give -EINVAL when absent. */
static int s_get_uint(const json_t *o, const char *key, bool required, uint32_t def, uint32_t *out,
                      char *err, size_t errlen) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required)
            return s_err(err, errlen, -EINVAL, "config.json: missing field '%s'", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX)
        return s_err(err, errlen, -EINVAL, "config.json: field '%s' must be a non-negative integer",
                     key);
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

static int s_get_float(const json_t *o, const char *key, bool *present, float *out, char *err,
                       size_t errlen, const char *file) {
    const json_t *v = json_object_get(o, key);
    if (present)
        *present = false;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return s_err(err, errlen, -EINVAL, "%s: field '%s' must be a number", file, key);
    *out = (float)json_number_value(v);
    if (present)
        *present = true;
    return 0;
}

static int s_get_bool(const json_t *o, const char *key, bool def, bool *out, char *err,
                      size_t errlen) {
    const json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return s_err(err, errlen, -EINVAL, "config.json: field '%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* eos_token_id: an int or a list of ints. */
static int s_get_eos(const json_t *v, int32_t *ids, uint32_t *n, char *err, size_t errlen,
                     const char *file) {
    *n = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        ids[0] = (int32_t)json_integer_value(v);
        *n = 1;
        return 0;
    }
    if (!json_is_array(v))
        return s_err(err, errlen, -EINVAL, "%s: field 'eos_token_id' must be an int or a list",
                     file);
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return s_err(err, errlen, -EINVAL, "%s: field 'eos_token_id[%zu]' must be an int >= 0",
                         file, i);
        if (*n < ENG_MAX_EOS)
            ids[(*n)++] = (int32_t)json_integer_value(e);
    }
    return 0;
}

static int s_quant_check(const json_t *o, char *err, size_t errlen) {
    const json_t *q = json_object_get(o, "quantization_config");
    if (!q || json_is_null(q))
        return 0;
    const char *method = NULL;
    if (json_is_object(q)) {
        method = json_string_value(json_object_get(q, "quant_method"));
        if (!method)
            method = json_string_value(json_object_get(q, "format"));
    }
    return s_err(err, errlen, -EOPNOTSUPP,
                 "config.json: quantized checkpoint (quantization_config.quant_method '%s') is not "
                 "supported; use the bf16/fp16/fp32 checkpoint",
                 method ? method : "unknown");
}

/* Features this model code does not implement are refused by name instead of silently ignored. */
static int s_refuse_unsupported(const json_t *tc, char *err, size_t errlen) {
    const json_t *v;
    if ((v = json_object_get(tc, "attention_bias")) && json_is_true(v))
        return s_err(err, errlen, -EOPNOTSUPP,
                     "config.json: attention_bias true is not supported (Qwen3 has no q/k/v/o bias)");
    if ((v = json_object_get(tc, "use_sliding_window")) && json_is_true(v))
        return s_err(err, errlen, -EOPNOTSUPP,
                     "config.json: use_sliding_window true is not supported");
    const char *act = json_string_value(json_object_get(tc, "hidden_act"));
    if (act && strcmp(act, "silu") != 0)
        return s_err(err, errlen, -EOPNOTSUPP,
                     "config.json: hidden_act '%s' is not supported (only silu)", act);
    if ((v = json_object_get(tc, "shared_expert_intermediate_size")) && json_is_integer(v) &&
        json_integer_value(v) > 0)
        return s_err(err, errlen, -EOPNOTSUPP,
                     "config.json: shared_expert_intermediate_size %lld is not supported (no shared "
                     "expert in Qwen3-MoE / Qwen3-Omni)",
                     (long long)json_integer_value(v));
    return 0;
}

static int s_parse_text(const json_t *tc, eng_config_t *c, char *err, size_t errlen) {
    int r;
    if ((r = s_refuse_unsupported(tc, err, errlen)) < 0)
        return r;
    if ((r = s_get_uint(tc, "vocab_size", true, 0, &c->vocab_size, err, errlen)) < 0 ||
        (r = s_get_uint(tc, "hidden_size", true, 0, &c->hidden_size, err, errlen)) < 0 ||
        (r = s_get_uint(tc, "num_hidden_layers", true, 0, &c->n_layers, err, errlen)) < 0 ||
        (r = s_get_uint(tc, "num_attention_heads", true, 0, &c->n_heads, err, errlen)) < 0 ||
        (r = s_get_uint(tc, "num_key_value_heads", false, c->n_heads, &c->n_kv_heads, err,
                        errlen)) < 0 ||
        (r = s_get_uint(tc, "intermediate_size", c->arch == ENG_ARCH_QWEN3, 0,
                        &c->intermediate_size, err, errlen)) < 0 ||
        (r = s_get_uint(tc, "max_position_embeddings", false, 32768, &c->max_position_embeddings,
                        err, errlen)) < 0)
        return r;
    if (c->vocab_size == 0 || c->hidden_size == 0 || c->n_layers == 0 || c->n_heads == 0 ||
        c->n_kv_heads == 0)
        return s_err(err, errlen, -EINVAL,
                     "config.json: vocab_size, hidden_size, num_hidden_layers, num_attention_heads "
                     "and num_key_value_heads must be > 0");
    if (c->n_layers > ENG_MAX_LAYERS)
        return s_err(err, errlen, -EINVAL, "config.json: num_hidden_layers %u exceeds %d",
                     c->n_layers, ENG_MAX_LAYERS);
    if (c->n_heads % c->n_kv_heads)
        return s_err(err, errlen, -EINVAL,
                     "config.json: num_attention_heads %u is not a multiple of num_key_value_heads %u",
                     c->n_heads, c->n_kv_heads);
    if ((r = s_get_uint(tc, "head_dim", false, c->hidden_size / c->n_heads, &c->head_dim, err,
                        errlen)) < 0)
        return r;
    if (c->head_dim == 0 || c->head_dim % 2)
        return s_err(err, errlen, -EINVAL, "config.json: head_dim %u must be even and > 0",
                     c->head_dim);

    bool present;
    c->rms_norm_eps = 1e-6f;
    if ((r = s_get_float(tc, "rms_norm_eps", &present, &c->rms_norm_eps, err, errlen,
                         "config.json")) < 0)
        return r;
    if ((r = s_get_bool(tc, "tie_word_embeddings", false, &c->tie_word_embeddings, err, errlen)) < 0)
        return r;

    /* rope: rope_parameters (transformers 5) or rope_scaling + rope_theta (4.x) */
    c->rope_theta = 10000.0f;
    if ((r = s_get_float(tc, "rope_theta", &present, &c->rope_theta, err, errlen, "config.json")) < 0)
        return r;
    const json_t *rp = json_object_get(tc, "rope_parameters");
    if (!rp || !json_is_object(rp))
        rp = json_object_get(tc, "rope_scaling");
    if (rp && json_is_object(rp)) {
        if ((r = s_get_float(rp, "rope_theta", &present, &c->rope_theta, err, errlen,
                             "config.json")) < 0)
            return r;
        const char *type = json_string_value(json_object_get(rp, "rope_type"));
        if (!type)
            type = json_string_value(json_object_get(rp, "type"));
        if (type && strcmp(type, "default") != 0 && strcmp(type, "mrope") != 0)
            return s_err(err, errlen, -EOPNOTSUPP,
                         "config.json: rope_type '%s' is not supported (only default)", type);
        const json_t *ms = json_object_get(rp, "mrope_section");
        if (ms && !json_is_null(ms)) {
            if (!json_is_array(ms) || json_array_size(ms) != 3)
                return s_err(err, errlen, -EINVAL,
                             "config.json: rope mrope_section must be a list of 3 integers");
            int sum = 0;
            for (int i = 0; i < 3; i++) {
                const json_t *e = json_array_get(ms, (size_t)i);
                if (!json_is_integer(e) || json_integer_value(e) < 0)
                    return s_err(err, errlen, -EINVAL,
                                 "config.json: rope mrope_section[%d] must be an integer >= 0", i);
                c->mrope_section[i] = (int32_t)json_integer_value(e);
                sum += c->mrope_section[i];
            }
            if ((uint32_t)sum > c->head_dim / 2 || 3u * (uint32_t)c->mrope_section[1] > c->head_dim / 2 ||
                3u * (uint32_t)c->mrope_section[2] > c->head_dim / 2)
                return s_err(err, errlen, -EINVAL,
                             "config.json: rope mrope_section [%d,%d,%d] does not fit head_dim %u",
                             c->mrope_section[0], c->mrope_section[1], c->mrope_section[2],
                             c->head_dim);
        }
    }
    if (!(c->rope_theta > 0))
        return s_err(err, errlen, -EINVAL, "config.json: rope_theta must be > 0");

    /* MoE */
    if (c->arch != ENG_ARCH_QWEN3) {
        if ((r = s_get_uint(tc, "num_experts", false, 0, &c->n_experts, err, errlen)) < 0)
            return r;
        if (c->n_experts == 0 &&
            (r = s_get_uint(tc, "num_local_experts", false, 0, &c->n_experts, err, errlen)) < 0)
            return r;
        if ((r = s_get_uint(tc, "num_experts_per_tok", c->n_experts > 0, 0, &c->n_experts_per_tok,
                            err, errlen)) < 0 ||
            (r = s_get_uint(tc, "moe_intermediate_size", c->n_experts > 0, 0,
                            &c->moe_intermediate_size, err, errlen)) < 0 ||
            (r = s_get_uint(tc, "decoder_sparse_step", false, 1, &c->decoder_sparse_step, err,
                            errlen)) < 0 ||
            (r = s_get_bool(tc, "norm_topk_prob", false, &c->norm_topk_prob, err, errlen)) < 0)
            return r;
        if (c->n_experts > 0 && (c->n_experts_per_tok == 0 || c->n_experts_per_tok > c->n_experts))
            return s_err(err, errlen, -EINVAL,
                         "config.json: num_experts_per_tok %u must be in 1..num_experts (%u)",
                         c->n_experts_per_tok, c->n_experts);
        if (c->n_experts > 0 && c->moe_intermediate_size == 0)
            return s_err(err, errlen, -EINVAL, "config.json: moe_intermediate_size must be > 0");
        if (c->decoder_sparse_step == 0)
            c->decoder_sparse_step = 1;
        for (uint32_t l = 0; l < c->n_layers; l++)
            c->layer_is_moe[l] = c->n_experts > 0 && (l + 1) % c->decoder_sparse_step == 0;
        const json_t *mo = json_object_get(tc, "mlp_only_layers");
        if (mo && !json_is_null(mo)) {
            if (!json_is_array(mo))
                return s_err(err, errlen, -EINVAL,
                             "config.json: mlp_only_layers must be a list of layer indices");
            size_t i;
            const json_t *e;
            json_array_foreach(mo, i, e) {
                if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                    json_integer_value(e) >= c->n_layers)
                    return s_err(err, errlen, -EINVAL,
                                 "config.json: mlp_only_layers[%zu] is not a layer index", i);
                c->layer_is_moe[json_integer_value(e)] = false;
            }
        }
        for (uint32_t l = 0; l < c->n_layers; l++)
            if (!c->layer_is_moe[l] && c->intermediate_size == 0)
                return s_err(err, errlen, -EINVAL,
                             "config.json: layer %u is dense but intermediate_size is missing", l);
    }
    int32_t eos[ENG_MAX_EOS];
    uint32_t n_eos = 0;
    if ((r = s_get_eos(json_object_get(tc, "eos_token_id"), eos, &n_eos, err, errlen,
                       "config.json")) < 0)
        return r;
    if (n_eos) {
        memcpy(c->gen.eos_token_ids, eos, sizeof(eos));
        c->gen.n_eos = n_eos;
    }
    return 0;
}

static int s_parse_gen(const char *text, eng_gen_config_t *g, char *err, size_t errlen) {
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return s_err(err, errlen, -EINVAL, "generation_config.json: invalid JSON (line %d: %s)",
                     je.line, je.text);
    }
    int r = 0;
    const char *f = "generation_config.json";
    const json_t *v;
    if ((v = json_object_get(o, "do_sample")) && json_is_boolean(v)) {
        g->do_sample = json_is_true(v);
        g->has_do_sample = true;
    }
    if ((r = s_get_float(o, "temperature", &g->has_temperature, &g->temperature, err, errlen, f)) < 0 ||
        (r = s_get_float(o, "top_p", &g->has_top_p, &g->top_p, err, errlen, f)) < 0 ||
        (r = s_get_float(o, "repetition_penalty", &g->has_repetition_penalty,
                         &g->repetition_penalty, err, errlen, f)) < 0)
        goto out;
    if ((v = json_object_get(o, "top_k")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            r = s_err(err, errlen, -EINVAL, "%s: field 'top_k' must be an integer >= 0", f);
            goto out;
        }
        g->top_k = (int32_t)json_integer_value(v);
        g->has_top_k = true;
    }
    if ((v = json_object_get(o, "max_new_tokens")) && json_is_integer(v) &&
        json_integer_value(v) > 0)
        g->max_new_tokens = (uint32_t)json_integer_value(v);
    if ((v = json_object_get(o, "pad_token_id")) && json_is_integer(v))
        g->pad_token_id = (int32_t)json_integer_value(v);
    if ((v = json_object_get(o, "bos_token_id")) && json_is_integer(v))
        g->bos_token_id = (int32_t)json_integer_value(v);
    int32_t eos[ENG_MAX_EOS];
    uint32_t n_eos = 0;
    if ((r = s_get_eos(json_object_get(o, "eos_token_id"), eos, &n_eos, err, errlen, f)) < 0)
        goto out;
    if (n_eos) {
        memcpy(g->eos_token_ids, eos, sizeof(eos));
        g->n_eos = n_eos;
    }
out:
    json_decref(o);
    return r;
}

int eng_config_parse(const char *config_json, const char *gen_config_json, eng_config_t *ret,
                     char *err, size_t errlen) {
    if (!config_json || !ret)
        return -EINVAL;
    json_error_t je;
    json_t *root = json_loads(config_json, 0, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return s_err(err, errlen, -EINVAL, "config.json: invalid JSON (line %d: %s)", je.line,
                     je.text);
    }
    eng_config_t *c = calloc(1, sizeof(*c));
    int r;
    if (!c) {
        r = -ENOMEM;
        goto out;
    }
    /* quantization first: refused at once, naming the method */
    if ((r = s_quant_check(root, err, errlen)) < 0)
        goto out;
    const json_t *tc_probe = json_object_get(json_object_get(root, "thinker_config"), "text_config");
    if (tc_probe && (r = s_quant_check(tc_probe, err, errlen)) < 0)
        goto out;

    const json_t *archs = json_object_get(root, "architectures");
    const char *arch = json_string_value(json_array_get(archs, 0));
    if (!arch) {
        r = s_err(err, errlen, -EINVAL, "config.json: missing field 'architectures'");
        goto out;
    }
    snprintf(c->arch_name, sizeof(c->arch_name), "%s", arch);
    const json_t *tc = root;
    if (strcmp(arch, "Qwen3OmniMoeForConditionalGeneration") == 0) {
        c->arch = ENG_ARCH_QWEN3_OMNI_MOE;
        const json_t *th = json_object_get(root, "thinker_config");
        tc = json_object_get(th, "text_config");
        if (!tc || !json_is_object(tc)) {
            r = s_err(err, errlen, -EINVAL, "config.json: missing field 'thinker_config.text_config'");
            goto out;
        }
        snprintf(c->tensor_prefix, sizeof(c->tensor_prefix), "thinker.model.");
        snprintf(c->lm_head_name, sizeof(c->lm_head_name), "thinker.lm_head.weight");
        c->has_audio_tower = json_is_object(json_object_get(th, "audio_config"));
        c->has_vision_tower = json_is_object(json_object_get(th, "vision_config"));
    } else if (strcmp(arch, "Qwen3MoeForCausalLM") == 0) {
        c->arch = ENG_ARCH_QWEN3_MOE;
    } else if (strcmp(arch, "Qwen3ForCausalLM") == 0) {
        c->arch = ENG_ARCH_QWEN3;
    } else {
        r = s_err(err, errlen, -EOPNOTSUPP,
                  "config.json: architecture '%s' is not supported (supported: "
                  "Qwen3OmniMoeForConditionalGeneration, Qwen3MoeForCausalLM, Qwen3ForCausalLM)",
                  arch);
        goto out;
    }
    if (c->arch != ENG_ARCH_QWEN3_OMNI_MOE) {
        snprintf(c->tensor_prefix, sizeof(c->tensor_prefix), "model.");
        snprintf(c->lm_head_name, sizeof(c->lm_head_name), "lm_head.weight");
    }
    c->gen.temperature = 1.0f;
    c->gen.top_p = 1.0f;
    c->gen.top_k = 50;
    c->gen.repetition_penalty = 1.0f;
    c->gen.pad_token_id = -1;
    c->gen.bos_token_id = -1;
    if ((r = s_parse_text(tc, c, err, errlen)) < 0)
        goto out;
    if (c->arch == ENG_ARCH_QWEN3_OMNI_MOE) {
        /* the thinker-level flag wins for the omni model; text_config's copy is the fallback */
        const json_t *th = json_object_get(root, "thinker_config");
        if ((r = s_get_bool(th, "tie_word_embeddings", c->tie_word_embeddings,
                            &c->tie_word_embeddings, err, errlen)) < 0)
            goto out;
    }
    if (c->gen.n_eos == 0) {
        int32_t eos[ENG_MAX_EOS];
        uint32_t n = 0;
        if ((r = s_get_eos(json_object_get(root, "eos_token_id"), eos, &n, err, errlen,
                           "config.json")) < 0)
            goto out;
        memcpy(c->gen.eos_token_ids, eos, sizeof(eos));
        c->gen.n_eos = n;
    }
    if (gen_config_json && (r = s_parse_gen(gen_config_json, &c->gen, err, errlen)) < 0)
        goto out;
    if (c->arch == ENG_ARCH_QWEN3_OMNI_MOE) {
        /* The released Instruct generation_config.json holds only talker_* keys; transformers'
         * full-model generate() stops the thinker on <|im_end|> (thinker_eos_token_id 151645, read
         * here from im_end_token_id) after at most 1024 new tokens (thinker_max_new_tokens). */
        const json_t *im_end = json_object_get(root, "im_end_token_id");
        if (c->gen.n_eos == 0 && json_is_integer(im_end)) {
            c->gen.eos_token_ids[0] = (int32_t)json_integer_value(im_end);
            c->gen.n_eos = 1;
        }
        if (c->gen.max_new_tokens == 0)
            c->gen.max_new_tokens = 1024;
    }
    *ret = *c;
    r = 0;
out:
    free(c);
    json_decref(root);
    return r;
}

int eng_config_load(const char *model_dir, eng_config_t *ret, char *err, size_t errlen) {
    char path[4096];
    char *cfg = NULL, *gen = NULL;
    snprintf(path, sizeof(path), "%s/config.json", model_dir);
    int r = eng_config_read_file(path, &cfg, NULL);
    if (r < 0)
        return s_err(err, errlen, r, "%s: cannot read: %s", path, strerror(-r));
    snprintf(path, sizeof(path), "%s/generation_config.json", model_dir);
    r = eng_config_read_file(path, &gen, NULL);
    if (r < 0 && r != -ENOENT) {
        free(cfg);
        return s_err(err, errlen, r, "%s: cannot read: %s", path, strerror(-r));
    }
    r = eng_config_parse(cfg, gen, ret, err, errlen);
    free(cfg);
    free(gen);
    return r;
}
