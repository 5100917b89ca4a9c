/* eng_config.h: a checkpoint's text-model configuration (config.json) and default generation settings
 * (generation_config.json), as plain data.
 *
 * Supported architectures: Qwen3OmniMoeForConditionalGeneration (the thinker's text model, read from
 * thinker_config.text_config; tensors under "thinker."), Qwen3MoeForCausalLM and Qwen3ForCausalLM.
 * Anything else is refused naming the architecture. A quantization_config is refused naming its
 * method (nothing else is read first, so this takes milliseconds). No shape is hard-coded: every
 * size comes from config.json. */
#ifndef ENG_CONFIG_H
#define ENG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENG_MAX_LAYERS 512
#define ENG_MAX_EOS 8

typedef enum eng_arch {
    ENG_ARCH_QWEN3 = 0,       /* Qwen3ForCausalLM: dense SwiGLU MLP */
    ENG_ARCH_QWEN3_MOE,       /* Qwen3MoeForCausalLM */
    ENG_ARCH_QWEN3_OMNI_MOE,  /* Qwen3OmniMoeForConditionalGeneration (thinker text model) */
    ENG_ARCH_COUNT_
} eng_arch_t;

/* Defaults for sampling, from generation_config.json; absent keys keep transformers' defaults
 * (do_sample false, temperature 1, top_p 1, top_k 50, repetition_penalty 1) and has_* = false. */
typedef struct eng_gen_config {
    bool do_sample;
    bool has_do_sample, has_temperature, has_top_p, has_top_k, has_repetition_penalty;
    float temperature;          /* > 0 */
    float top_p;                /* (0, 1] */
    int32_t top_k;              /* 0 = off */
    float repetition_penalty;   /* 1 = off */
    uint32_t max_new_tokens;    /* 0 = not set (omni: 1024, transformers' thinker_max_new_tokens) */
    int32_t eos_token_ids[ENG_MAX_EOS]; /* generation_config eos (int or list), else config.json's,
                                           else (omni) im_end_token_id */
    uint32_t n_eos;
    int32_t pad_token_id;       /* -1 = not set */
    int32_t bos_token_id;       /* -1 = not set */
} eng_gen_config_t;

typedef struct eng_config {
    eng_arch_t arch;
    char arch_name[64];            /* as in config.json "architectures"[0] */
    char tensor_prefix[32];        /* "thinker.model." or "model." */
    char lm_head_name[48];         /* "thinker.lm_head.weight" or "lm_head.weight" */
    uint32_t vocab_size;           /* V */
    uint32_t hidden_size;          /* D */
    uint32_t n_layers;             /* L <= ENG_MAX_LAYERS */
    uint32_t n_heads;              /* Hq */
    uint32_t n_kv_heads;           /* Hk, divides Hq */
    uint32_t head_dim;             /* hd (explicit head_dim, else D / Hq) */
    uint32_t intermediate_size;    /* dense MLP width (Qwen3, and mlp_only_layers of MoE models) */
    uint32_t moe_intermediate_size;/* expert width I */
    uint32_t n_experts;            /* E (0 for dense) */
    uint32_t n_experts_per_tok;    /* top-k */
    bool norm_topk_prob;           /* renormalise top-k router weights */
    uint32_t decoder_sparse_step;  /* MoE every N-th layer (1 = all) */
    bool layer_is_moe[ENG_MAX_LAYERS]; /* per layer: sparse MoE block (true) or dense MLP */
    float rms_norm_eps;            /* all RMSNorms, q_norm/k_norm included */
    float rope_theta;              /* rope base */
    int32_t mrope_section[3];      /* interleaved M-RoPE T,H,W sections; {0,0,0} = plain RoPE */
    bool tie_word_embeddings;      /* lm_head = embed_tokens (no lm_head tensor needed) */
    uint32_t max_position_embeddings; /* context limit */
    bool has_audio_tower;          /* omni: thinker.audio_tower.* tensors expected (not loaded here) */
    bool has_vision_tower;         /* omni: thinker.visual.* tensors expected (not loaded here) */
    eng_gen_config_t gen;          /* generation defaults */
} eng_config_t;

/* Parses config.json text (and optional generation_config.json text, NULL = absent). On failure:
 * -EINVAL (bad/missing field), -EOPNOTSUPP (unknown architecture, quantized checkpoint,
 * unsupported rope type) with a message naming the field/architecture/method in err. */
int eng_config_parse(const char *config_json, const char *gen_config_json, eng_config_t *ret,
                     char *err, size_t errlen);

/* Reads model_dir/config.json and model_dir/generation_config.json (optional) and parses them.
 * -ENOENT when config.json is missing. */
int eng_config_load(const char *model_dir, eng_config_t *ret, char *err, size_t errlen);

const char *eng_arch_name(eng_arch_t a); /* canonical architecture class name */

/* Reads a whole file into a NUL-terminated malloc'ed buffer (caller frees). -errno on failure. */
int eng_config_read_file(const char *path, char **ret, size_t *ret_len);

#endif
