/* test_eng_loader.c: checkpoint loading and its errors. Broken checkpoints are built in a temp dir
 * by copying and patching the fixture files (fixtures/tiny-qwen3: single file, tied embeddings;
 * fixtures/tiny-omni: two shards and an index). Each error must name what is wrong: the tensor and
 * file, the field, the architecture or the quantization method. Also: dtype read from the tensors
 * (an f32 and an f16 copy of tiny-qwen3 load as such), progress reports, config.json variants
 * (4.x rope_scaling, mlp_only_layers, decoder_sparse_step, eos int or list). */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "eng_config.h"
#include "eng_loader.h"
#include "eng_model.h"

static char s_tmp[256];

static const char *s_shared(void) {
    const char *s = getenv("OM_SHARED_DIR");
    return s && *s ? s : OM_SHARED_DIR;
}

static char *s_read(const char *path, size_t *len) {
    char *buf = NULL;
    if (eng_config_read_file(path, &buf, len) < 0)
        fail_msg("cannot read %s", path);
    return buf;
}

static void s_write(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void s_copy(const char *model, const char *file, const char *dst_dir) {
    char src[1024], dst[1024];
    size_t len;
    snprintf(src, sizeof(src), "%s/fixtures/%s/%s", s_shared(), model, file);
    snprintf(dst, sizeof(dst), "%s/%s", dst_dir, file);
    char *b = s_read(src, &len);
    s_write(dst, b, len);
    free(b);
}

/* Makes a fresh checkpoint dir (a copy of the fixture's config/generation_config and weights). */
static void s_make(const char *sub, const char *model, char *dir, size_t dirlen) {
    snprintf(dir, dirlen, "%s/%s", s_tmp, sub);
    assert_int_equal(mkdir(dir, 0755), 0);
    s_copy(model, "config.json", dir);
    s_copy(model, "generation_config.json", dir);
    if (strcmp(model, "tiny-omni") == 0) {
        s_copy(model, "model.safetensors.index.json", dir);
        s_copy(model, "model-00001-of-00002.safetensors", dir);
        s_copy(model, "model-00002-of-00002.safetensors", dir);
    } else {
        s_copy(model, "model.safetensors", dir);
    }
}

/* Loads dir; expects failure r_expect with every needle in the message. */
static void s_expect_fail(const char *dir, int r_expect, const char *n1, const char *n2,
                          const char *n3) {
    eng_backend_t *b = NULL;
    eng_model_t *m = NULL;
    char err[1024] = "";
    assert_int_equal(eng_backend_cpu_new(1, &b), 0);
    int r = eng_model_load(dir, NULL, b, &m, err, sizeof(err));
    printf("  %s -> %d: %s\n", dir + strlen(s_tmp) + 1, r, err);
    assert_null(m);
    assert_int_equal(r, r_expect);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && !strstr(err, needles[i]))
            fail_msg("error '%s' does not name '%s'", err, needles[i]);
    eng_backend_free(b);
}

/* Rewrites a safetensors file: edit(header) may change the header JSON; the data section is kept
 * (optionally converted by conv). */
typedef void (*s_edit_fn)(json_t *hdr, void *ud);
static void s_rewrite_st(const char *path, s_edit_fn edit, void *ud) {
    size_t len;
    char *b = s_read(path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | (uint8_t)b[i];
    json_t *h = json_loadb(b + 8, hlen, 0, NULL);
    assert_non_null(h);
    edit(h, ud);
    char *nh = json_dumps(h, JSON_COMPACT);
    size_t nl = strlen(nh);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint8_t l8[8];
    for (int i = 0; i < 8; i++)
        l8[i] = (uint8_t)(nl >> (8 * i));
    fwrite(l8, 1, 8, f);
    fwrite(nh, 1, nl, f);
    fwrite(b + 8 + hlen, 1, len - 8 - hlen, f);
    fclose(f);
    free(nh);
    json_decref(h);
    free(b);
}

static void s_edit_del(json_t *h, void *ud) {
    assert_int_equal(json_object_del(h, ud), 0);
}

static void s_edit_patch_config(const char *dir, const char *json_path_key, json_t *value,
                                bool thinker_text) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    json_t *c = json_load_file(path, 0, NULL);
    assert_non_null(c);
    json_t *o = c;
    if (thinker_text)
        o = json_object_get(json_object_get(c, "thinker_config"), "text_config");
    json_object_set_new(o, json_path_key, value);
    assert_int_equal(json_dump_file(c, path, JSON_INDENT(1)), 0);
    json_decref(c);
}

static int s_setup(void **state) {
    (void)state;
    snprintf(s_tmp, sizeof(s_tmp), "/tmp/test_eng_loader.XXXXXX");
    assert_non_null(mkdtemp(s_tmp));
    return 0;
}

static int s_teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_missing_tensor(void **state) {
    (void)state;
    char dir[512], p[1024];
    /* single file: a tensor dropped from the header */
    s_make("missing1", "tiny-qwen3", dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);
    s_rewrite_st(p, s_edit_del, "model.layers.1.mlp.up_proj.weight");
    s_expect_fail(dir, -ENOENT, "model.layers.1.mlp.up_proj.weight", "model.safetensors", NULL);
    /* sharded: listed by the index, absent from its shard */
    s_make("missing2", "tiny-omni", dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/model-00001-of-00002.safetensors", dir);
    char idx[1024];
    snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", dir);
    json_t *ix = json_load_file(idx, 0, NULL);
    const char *victim = "thinker.model.layers.0.self_attn.k_norm.weight";
    const char *shard = json_string_value(json_object_get(json_object_get(ix, "weight_map"), victim));
    assert_non_null(shard);
    snprintf(p, sizeof(p), "%s/%s", dir, shard);
    s_rewrite_st(p, s_edit_del, (void *)victim);
    s_expect_fail(dir, -ENOENT, victim, shard, NULL);
    /* sharded: dropped from the index */
    s_make("missing3", "tiny-omni", dir, sizeof(dir));
    json_object_del(json_object_get(ix, "weight_map"), "thinker.lm_head.weight");
    snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", dir);
    assert_int_equal(json_dump_file(ix, idx, 0), 0);
    s_expect_fail(dir, -ENOENT, "thinker.lm_head.weight", "model.safetensors.index.json", NULL);
    json_decref(ix);
}

static void test_wrong_shape(void **state) {
    (void)state;
    char dir[512];
    s_make("shape", "tiny-qwen3", dir, sizeof(dir));
    s_edit_patch_config(dir, "intermediate_size", json_integer(48), false);
    s_expect_fail(dir, -EINVAL, "model.layers.0.mlp.gate_proj.weight", "model.safetensors",
                  "[40, 24]");
    s_make("shape2", "tiny-omni", dir, sizeof(dir));
    s_edit_patch_config(dir, "moe_intermediate_size", json_integer(20), true);
    s_expect_fail(dir, -EINVAL, "thinker.model.layers.0.mlp.experts.0.gate_proj.weight",
                  "model-0000", "[20, 16]");
}

static void test_truncated_shard(void **state) {
    (void)state;
    char dir[512], p[1024];
    s_make("trunc", "tiny-omni", dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/model-00002-of-00002.safetensors", dir);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(truncate(p, st.st_size / 2), 0);
    s_expect_fail(dir, -EINVAL, "model-00002-of-00002.safetensors", "truncated", "tensor '");
    /* cut inside the header */
    s_make("trunc2", "tiny-qwen3", dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);
    assert_int_equal(truncate(p, 100), 0);
    s_expect_fail(dir, -EINVAL, "model.safetensors", "truncated", NULL);
}

static void test_bad_index(void **state) {
    (void)state;
    char dir[512], p[1024];
    s_make("index1", "tiny-omni", dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
    s_write(p, "{\"weight_map\": {\"a\": ", 21);
    s_expect_fail(dir, -EINVAL, "model.safetensors.index.json", "invalid JSON", NULL);
    s_make("index2", "tiny-omni", dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
    json_t *ix = json_load_file(p, 0, NULL);
    json_object_set_new(json_object_get(ix, "weight_map"), "thinker.model.norm.weight",
                        json_string("model-00003-of-00002.safetensors"));
    assert_int_equal(json_dump_file(ix, p, 0), 0);
    json_decref(ix);
    s_expect_fail(dir, -ENOENT, "model-00003-of-00002.safetensors", "thinker.model.norm.weight",
                  "index");
    s_make("index3", "tiny-omni", dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
    s_write(p, "{\"metadata\": {}}", 16);
    s_expect_fail(dir, -EINVAL, "model.safetensors.index.json", "weight_map", NULL);
}

/* A quantized checkpoint is refused from config.json alone: the directory has no weights at all,
 * so the refusal cannot have read (or waited on) any tensor. */
static void test_quantized(void **state) {
    (void)state;
    const char *methods[] = {"awq", "gptq", "fp8", "compressed-tensors"};
    for (int i = 0; i < 4; i++) {
        char dir[512], sub[32], p[1024];
        snprintf(sub, sizeof(sub), "quant%d", i);
        s_make(sub, "tiny-qwen3", dir, sizeof(dir));
        snprintf(p, sizeof(p), "%s/model.safetensors", dir);
        assert_int_equal(unlink(p), 0);
        json_t *q = json_pack("{s:s, s:i, s:i}", "quant_method", methods[i], "bits", 4,
                              "group_size", 128);
        s_edit_patch_config(dir, "quantization_config", q, false);
        s_expect_fail(dir, -EOPNOTSUPP, methods[i], "quantization_config", NULL);
    }
}

static void test_unknown_arch(void **state) {
    (void)state;
    char dir[512];
    s_make("arch", "tiny-qwen3", dir, sizeof(dir));
    s_edit_patch_config(dir, "architectures", json_pack("[s]", "LlamaForCausalLM"), false);
    s_expect_fail(dir, -EOPNOTSUPP, "LlamaForCausalLM", "not supported", NULL);
}

/* The dtype comes from the tensors: an f32 and an f16 copy of tiny-qwen3 load unconverted (weight
 * bytes double for f32), and the f32 copy reproduces the bf16 model's logits exactly (bf16 -> f32
 * is exact). */
typedef struct { eng_dtype_t to; char *data; size_t data_len; } s_conv_t;
static void s_edit_convert(json_t *h, void *ud) {
    s_conv_t *c = ud;
    /* new data section: every tensor converted from BF16, laid out in header order */
    size_t cap = 0, total = 0;
    const char *name;
    json_t *v;
    json_object_foreach(h, name, v) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        json_t *off = json_object_get(v, "data_offsets");
        cap += (size_t)(json_integer_value(json_array_get(off, 1)) -
                        json_integer_value(json_array_get(off, 0))) * 2;
    }
    c->data = malloc(cap);
    assert_non_null(c->data);
    json_object_foreach(h, name, v) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        json_t *off = json_object_get(v, "data_offsets");
        size_t b = (size_t)json_integer_value(json_array_get(off, 0));
        size_t e = (size_t)json_integer_value(json_array_get(off, 1));
        assert_string_equal(json_string_value(json_object_get(v, "dtype")), "BF16");
        size_t n = (e - b) / 2, esz = c->to == ENG_DTYPE_F32 ? 4 : 2;
        json_object_set_new(v, "dtype", json_string(c->to == ENG_DTYPE_F32 ? "F32" : "F16"));
        json_object_set_new(v, "data_offsets", json_pack("[I, I]", (json_int_t)total,
                                                         (json_int_t)(total + n * esz)));
        json_object_set_new(v, "_src", json_integer((json_int_t)b)); /* removed below */
        total += n * esz;
    }
    c->data_len = total;
}

static void s_write_converted(const char *src_path, const char *dst_path, eng_dtype_t to) {
    size_t len;
    char *b = s_read(src_path, &len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | (uint8_t)b[i];
    json_t *h = json_loadb(b + 8, hlen, 0, NULL);
    s_conv_t c = {.to = to};
    s_edit_convert(h, &c);
    const char *name;
    json_t *v;
    const char *src_data = b + 8 + hlen;
    json_object_foreach(h, name, v) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        size_t sb = (size_t)json_integer_value(json_object_get(v, "_src"));
        json_t *off = json_object_get(v, "data_offsets");
        size_t db = (size_t)json_integer_value(json_array_get(off, 0));
        size_t de = (size_t)json_integer_value(json_array_get(off, 1));
        size_t esz = to == ENG_DTYPE_F32 ? 4 : 2, n = (de - db) / esz;
        for (size_t i = 0; i < n; i++) {
            uint16_t x;
            memcpy(&x, src_data + sb + 2 * i, 2);
            float f = eng_bf16_to_f32(x);
            if (to == ENG_DTYPE_F32) {
                memcpy(c.data + db + 4 * i, &f, 4);
            } else {
                uint16_t hf = eng_f32_to_f16(f);
                memcpy(c.data + db + 2 * i, &hf, 2);
            }
        }
        json_object_del(v, "_src");
    }
    char *nh = json_dumps(h, JSON_COMPACT);
    size_t nl = strlen(nh);
    FILE *f = fopen(dst_path, "wb");
    assert_non_null(f);
    uint8_t l8[8];
    for (int i = 0; i < 8; i++)
        l8[i] = (uint8_t)(nl >> (8 * i));
    fwrite(l8, 1, 8, f);
    fwrite(nh, 1, nl, f);
    fwrite(c.data, 1, c.data_len, f);
    fclose(f);
    free(nh);
    free(c.data);
    json_decref(h);
    free(b);
}

static void s_logits(const char *dir, eng_backend_t *b, float *out, uint64_t *ret_bytes) {
    char err[512] = "";
    eng_model_t *m = NULL;
    if (eng_model_load(dir, NULL, b, &m, err, sizeof(err)) < 0)
        fail_msg("%s: %s", dir, err);
    *ret_bytes = eng_model_weight_bytes(m);
    assert_int_equal(eng_model_alloc_kv(m, 4, 16), 0);
    int32_t tok[5] = {11, 22, 33, 44, 55}, btab[1] = {2};
    eng_batch_seq_t s = {.tokens = tok, .n_tokens = 5, .block_table = btab, .n_blocks = 1,
                         .want_logits = true};
    eng_batch_t bt = {.seqs = &s, .n_seqs = 1, .n_tokens = 5, .n_logits = 1};
    eng_tensor_t *lt = NULL;
    assert_int_equal(eng_model_forward(m, &bt, &lt), 0);
    assert_int_equal(eng_backend_download(b, out, lt), 0);
    eng_model_free(m);
}

static void test_dtype_from_tensors(void **state) {
    (void)state;
    char d32[512], d16[512], src[1024], dst[1024], orig[1024];
    s_make("f32", "tiny-qwen3", d32, sizeof(d32));
    s_make("f16", "tiny-qwen3", d16, sizeof(d16));
    snprintf(src, sizeof(src), "%s/fixtures/tiny-qwen3/model.safetensors", s_shared());
    snprintf(dst, sizeof(dst), "%s/model.safetensors", d32);
    s_write_converted(src, dst, ENG_DTYPE_F32);
    snprintf(dst, sizeof(dst), "%s/model.safetensors", d16);
    s_write_converted(src, dst, ENG_DTYPE_F16);
    snprintf(orig, sizeof(orig), "%s/fixtures/tiny-qwen3", s_shared());
    eng_backend_t *b = NULL;
    assert_int_equal(eng_backend_cpu_new(1, &b), 0);
    enum { V = 6007 };
    static float lb[V], l32[V], l16[V];
    uint64_t bb, b32, b16;
    s_logits(orig, b, lb, &bb);
    s_logits(d32, b, l32, &b32);
    s_logits(d16, b, l16, &b16);
    assert_int_equal(b32, 2 * bb); /* stored as f32, not converted to bf16 */
    assert_int_equal(b16, bb);
    assert_memory_equal(lb, l32, sizeof(lb));
    double worst = 0;
    for (int v = 0; v < V; v++)
        worst = fmax(worst, fabs((double)l16[v] - lb[v]));
    printf("  f16 copy: max |logit diff| vs bf16 = %.3g\n", worst);
    assert_true(worst < 0.05); /* bf16 -> f16 rounding of random weights only */
    eng_backend_free(b);
}

typedef struct { uint64_t bytes, total; uint32_t tensors, tensors_total, calls; } s_prog_t;
static void s_progress(void *ud, uint64_t bytes, uint64_t total, uint32_t tensors,
                       uint32_t tensors_total, double elapsed) {
    s_prog_t *p = ud;
    assert_true(bytes >= p->bytes && bytes <= total && tensors <= tensors_total && elapsed >= 0);
    p->bytes = bytes;
    p->total = total;
    p->tensors = tensors;
    p->tensors_total = tensors_total;
    p->calls++;
}

static void test_progress_and_mm(void **state) {
    (void)state;
    char dir[1024], err[512] = "";
    snprintf(dir, sizeof(dir), "%s/fixtures/tiny-omni", s_shared());
    eng_backend_t *b = NULL;
    eng_model_t *m = NULL;
    s_prog_t p = {0};
    eng_model_load_opts_t o = {.load_format = "auto", .progress = s_progress, .progress_ud = &p};
    assert_int_equal(eng_backend_cpu_new(1, &b), 0);
    if (eng_model_load(dir, &o, b, &m, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const eng_config_t *c = eng_model_config(m);
    assert_true(p.calls >= 1);
    assert_int_equal(p.bytes, p.total);
    assert_int_equal(p.bytes, eng_model_weight_bytes(m));
    assert_int_equal(p.tensors, p.tensors_total);
    /* embed, norm, lm_head + per layer 8 attention/norm tensors + router + 3 per expert */
    assert_int_equal(p.tensors_total, 3 + c->n_layers * (8 + 1 + 3 * c->n_experts));
    assert_true(eng_model_n_mm_tensors(m) > 0); /* audio/vision towers recognised, not loaded */
    assert_true(c->has_audio_tower && c->has_vision_tower);
    eng_model_free(m);
    eng_backend_free(b);
}

static void test_config_variants(void **state) {
    (void)state;
    char err[512];
    eng_config_t c;
    /* 4.x style: rope_scaling with mrope_section, rope_theta at top level; head_dim implicit;
     * decoder_sparse_step 2 and mlp_only_layers; eos as an int */
    const char *cfg =
        "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
        "\"num_hidden_layers\":4,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
        "\"intermediate_size\":96,\"num_experts\":8,\"num_experts_per_tok\":2,"
        "\"moe_intermediate_size\":32,\"decoder_sparse_step\":2,\"mlp_only_layers\":[3],"
        "\"rope_theta\":5000.0,\"rope_scaling\":{\"type\":\"mrope\",\"mrope_section\":[2,1,1]},"
        "\"eos_token_id\":7,\"rms_norm_eps\":1e-5}";
    assert_int_equal(eng_config_parse(cfg, "{\"temperature\":0.6,\"top_p\":0.95,\"top_k\":20,"
                                           "\"eos_token_id\":[5,6],\"max_new_tokens\":99}",
                                      &c, err, sizeof(err)),
                     0);
    assert_int_equal(c.head_dim, 16);
    assert_true(fabsf(c.rope_theta - 5000.0f) < 1e-3f);
    assert_int_equal(c.mrope_section[0], 2);
    assert_int_equal(c.mrope_section[1], 1);
    assert_false(c.layer_is_moe[0]);
    assert_true(c.layer_is_moe[1]);
    assert_false(c.layer_is_moe[2]);
    assert_false(c.layer_is_moe[3]); /* sparse step would make it MoE; mlp_only_layers wins */
    assert_int_equal(c.gen.n_eos, 2);
    assert_int_equal(c.gen.eos_token_ids[1], 6);
    assert_true(c.gen.has_temperature && fabsf(c.gen.temperature - 0.6f) < 1e-6f);
    assert_int_equal(c.gen.top_k, 20);
    assert_int_equal(c.gen.max_new_tokens, 99);
    assert_false(c.gen.has_repetition_penalty);
    assert_true(c.gen.repetition_penalty == 1.0f);
    /* no generation_config: eos from config.json (an int), transformers defaults */
    assert_int_equal(eng_config_parse(cfg, NULL, &c, err, sizeof(err)), 0);
    assert_int_equal(c.gen.n_eos, 1);
    assert_int_equal(c.gen.eos_token_ids[0], 7);
    assert_false(c.gen.do_sample);
    /* omni with a talker-only generation_config (as the released Instruct checkpoint): the
     * thinker stops on im_end_token_id after at most 1024 tokens; 4.x rope_scaling + rope_theta */
    const char *omni =
        "{\"architectures\":[\"Qwen3OmniMoeForConditionalGeneration\"],\"im_end_token_id\":151645,"
        "\"thinker_config\":{\"text_config\":{\"vocab_size\":152064,\"hidden_size\":2048,"
        "\"num_hidden_layers\":48,\"num_attention_heads\":32,\"num_key_value_heads\":4,"
        "\"head_dim\":128,\"num_experts\":128,\"num_experts_per_tok\":8,"
        "\"moe_intermediate_size\":768,\"intermediate_size\":768,\"norm_topk_prob\":true,"
        "\"decoder_sparse_step\":1,\"mlp_only_layers\":[],\"rope_theta\":1000000,"
        "\"rope_scaling\":{\"rope_type\":\"default\",\"mrope_section\":[24,20,20],"
        "\"interleaved\":true,\"mrope_interleaved\":true},\"rms_norm_eps\":1e-6,"
        "\"tie_word_embeddings\":false},\"audio_config\":{},\"vision_config\":{}},"
        "\"talker_config\":{\"text_config\":{\"hidden_size\":1024}}}";
    assert_int_equal(eng_config_parse(omni, "{\"talker_max_new_tokens\":4096,"
                                            "\"talker_temperature\":0.9}",
                                      &c, err, sizeof(err)),
                     0);
    assert_int_equal(c.arch, ENG_ARCH_QWEN3_OMNI_MOE);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.n_experts, 128);
    assert_int_equal(c.mrope_section[0], 24);
    assert_int_equal(c.mrope_section[2], 20);
    assert_true(c.rope_theta == 1e6f);
    assert_true(c.layer_is_moe[0] && c.layer_is_moe[47]);
    assert_int_equal(c.gen.n_eos, 1);
    assert_int_equal(c.gen.eos_token_ids[0], 151645);
    assert_int_equal(c.gen.max_new_tokens, 1024);
    assert_false(c.gen.has_temperature); /* talker_temperature is not the thinker's */
    assert_string_equal(c.tensor_prefix, "thinker.model.");
    assert_true(c.has_audio_tower && c.has_vision_tower);
    /* bad fields are named */
    assert_int_equal(eng_config_parse("{\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":10}",
                                      NULL, &c, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "hidden_size"));
    assert_int_equal(eng_config_parse("{\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":10,"
                                      "\"hidden_size\":8,\"num_hidden_layers\":1,"
                                      "\"num_attention_heads\":3,\"num_key_value_heads\":2,"
                                      "\"intermediate_size\":4}",
                                      NULL, &c, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "num_key_value_heads"));
    /* features the model code does not implement are refused by name */
    static const struct { const char *key_value; const char *needle; } refused[] = {
        {"\"attention_bias\":true", "attention_bias"},
        {"\"use_sliding_window\":true", "use_sliding_window"},
        {"\"hidden_act\":\"gelu\"", "gelu"},
        {"\"rope_parameters\":{\"rope_type\":\"yarn\",\"rope_theta\":1e6}", "yarn"},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        char buf[512];
        snprintf(buf, sizeof(buf),
                 "{\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
                 "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"num_key_value_heads\":2,"
                 "\"intermediate_size\":4,%s}",
                 refused[i].key_value);
        assert_int_equal(eng_config_parse(buf, NULL, &c, err, sizeof(err)), -EOPNOTSUPP);
        if (!strstr(err, refused[i].needle))
            fail_msg("error '%s' does not name '%s'", err, refused[i].needle);
    }
    assert_int_equal(eng_config_parse("not json", NULL, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "config.json"));
}

/* Shapes the fixtures do not cover, through dummy weights: a MoE model with a dense layer
 * (mlp_only_layers), head_dim != hidden/heads, tied embeddings, GQA 8:1, odd sizes. The logits of a
 * sequence must not depend on what else is in its batch or on how its prompt is chunked. */
static void test_dummy_shapes(void **state) {
    (void)state;
    char dir[512], path[1024];
    snprintf(dir, sizeof(dir), "%s/shapes", s_tmp);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    const char *cfg =
        "{\"architectures\":[\"Qwen3MoeForCausalLM\"],\"vocab_size\":301,\"hidden_size\":40,"
        "\"num_hidden_layers\":3,\"num_attention_heads\":8,\"num_key_value_heads\":1,"
        "\"head_dim\":6,\"intermediate_size\":28,\"num_experts\":5,\"num_experts_per_tok\":3,"
        "\"moe_intermediate_size\":12,\"norm_topk_prob\":false,\"mlp_only_layers\":[1],"
        "\"tie_word_embeddings\":true,\"rope_theta\":10000.0,\"rms_norm_eps\":1e-6}";
    s_write(path, cfg, strlen(cfg));
    eng_backend_t *b = NULL;
    eng_model_t *m = NULL;
    char err[512] = "";
    assert_int_equal(eng_backend_cpu_new(1, &b), 0);
    eng_model_load_opts_t o = {.load_format = "dummy", .dummy_seed = 11};
    if (eng_model_load(dir, &o, b, &m, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    const eng_config_t *c = eng_model_config(m);
    assert_true(c->layer_is_moe[0] && !c->layer_is_moe[1] && c->layer_is_moe[2]);
    assert_true(c->tie_word_embeddings);
    enum { BS = 4, V = 301, N = 11 };
    assert_int_equal(eng_model_alloc_kv(m, 32, BS), 0);
    int32_t a[N], bq[5] = {7, 8, 9, 10, 300};
    for (int i = 0; i < N; i++)
        a[i] = (i * 37 + 5) % V;
    int32_t bt_a[4] = {3, 9, 1, 20}, bt_b[2] = {4, 5}, bt_c[4] = {11, 12, 13, 14};
    static float alone[V], batched[V], chunked[V];
    eng_tensor_t *lt = NULL;
    /* a alone, one step */
    eng_batch_seq_t s1 = {.tokens = a, .n_tokens = N, .block_table = bt_a, .n_blocks = 4,
                          .want_logits = true};
    eng_batch_t b1 = {.seqs = &s1, .n_seqs = 1, .n_tokens = N, .n_logits = 1};
    assert_int_equal(eng_model_forward(m, &b1, &lt), 0);
    assert_int_equal(eng_backend_download(b, alone, lt), 0);
    for (int v = 0; v < V; v++)
        assert_true(isfinite(alone[v]));
    /* a behind another sequence in the same step */
    eng_batch_seq_t s2[2] = {
        {.tokens = bq, .n_tokens = 5, .block_table = bt_b, .n_blocks = 2, .want_logits = true},
        {.tokens = a, .n_tokens = N, .block_table = bt_c, .n_blocks = 4, .want_logits = true},
    };
    eng_batch_t b2 = {.seqs = s2, .n_seqs = 2, .n_tokens = 5 + N, .n_logits = 2};
    assert_int_equal(eng_model_forward(m, &b2, &lt), 0);
    static float two[2 * V];
    assert_int_equal(eng_backend_download(b, two, lt), 0);
    memcpy(batched, two + V, sizeof(batched));
    /* a in chunks of 4, 4, 3 */
    for (uint32_t done = 0; done < N;) {
        uint32_t k = N - done < 4 ? N - done : 4;
        eng_batch_seq_t s3 = {.tokens = a + done, .n_tokens = k, .n_past = done,
                              .block_table = bt_a, .n_blocks = 4, .want_logits = done + k == N};
        eng_batch_t b3 = {.seqs = &s3, .n_seqs = 1, .n_tokens = k, .n_logits = s3.want_logits};
        assert_int_equal(eng_model_forward(m, &b3, &lt), 0);
        done += k;
    }
    assert_int_equal(eng_backend_download(b, chunked, lt), 0);
    double w1 = 0, w2 = 0;
    for (int v = 0; v < V; v++) {
        w1 = fmax(w1, fabs((double)alone[v] - batched[v]));
        w2 = fmax(w2, fabs((double)alone[v] - chunked[v]));
    }
    printf("  dummy shapes: max |diff| batched %.3g, chunked %.3g\n", w1, w2);
    assert_true(w1 <= 1e-5 && w2 <= 1e-5);
    eng_model_free(m);
    eng_backend_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing_tensor),   cmocka_unit_test(test_wrong_shape),
        cmocka_unit_test(test_truncated_shard),  cmocka_unit_test(test_bad_index),
        cmocka_unit_test(test_quantized),        cmocka_unit_test(test_unknown_arch),
        cmocka_unit_test(test_dtype_from_tensors), cmocka_unit_test(test_progress_and_mm),
        cmocka_unit_test(test_config_variants),  cmocka_unit_test(test_dummy_shapes),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
