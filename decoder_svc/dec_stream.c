/* dec_stream.c: per-request incremental detokenization (see dec_stream.h for the contract).
 *
 * Pipeline of one push, all on one growing byte buffer `text` (no per-token allocation once grown):
 *   ids -> token bytes (om_vocab_token_bytes; specials dropped when skip_special_tokens)
 *       -> streaming lossy UTF-8 decoder: complete characters are appended to `text`; an invalid
 *          sequence becomes one U+FFFD per maximal invalid subpart, exactly like Rust's
 *          String::from_utf8_lossy (what tokenizers' ByteLevel decoder ends with), and an
 *          incomplete tail becomes one U+FFFD on the final push
 *       -> stop-string filter: `n_released` bytes of `text` can no longer begin a stop string; a
 *          match truncates `text` (before or after the stop string) and ends the stream
 *       -> reasoning splitter (optional): `n_split` bytes of the released text are classified as
 *          content or reasoning; a suffix that could still become a <think>/</think> tag is held.
 * Stop matching is chunking-independent: the match that ends earliest in the text wins (the point
 * where a char-by-char generation would have stopped); at equal end, the longest stop string.
 *
 * Reasoning split follows vLLM's Qwen3 reasoning parser. Final text (what Final carries): the text
 * after the first <think> (or all of it when absent); if </think> follows, reasoning is before it
 * and content after it; without </think> the whole text is content. Streaming deltas: reasoning
 * while inside <think> (from the start when reasoning_starts_open), content before <think> and
 * after </think>. The two agree whenever </think> appears; when it never does, the deltas were
 * sent as reasoning and the final text calls it content, as vLLM's streaming and non-streaming
 * paths do.
 * Invariants: text is valid UTF-8; n_split <= n_released <= text.len; every boundary handed out
 * sits on a character boundary (stop strings and tags start with a non-continuation byte). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dec_stream.h"

#define DEC_STREAM_MAX_STOP       64   /* stop strings per request */
#define DEC_STREAM_MAX_STOP_BYTES 4096 /* bytes per stop string */

static const char s_think_open[] = "<think>";
static const char s_think_close[] = "</think>";

enum dec_stream_phase {
    DEC_STREAM_PHASE_BEFORE, /* no <think> seen: content */
    DEC_STREAM_PHASE_THINK,  /* inside <think>: reasoning */
    DEC_STREAM_PHASE_AFTER,  /* after </think>: content */
};

struct sbuf {
    char *p;    /* bytes, NUL-terminated when cap > 0 */
    size_t len; /* bytes used (excluding the NUL) */
    size_t cap; /* bytes allocated */
};

struct dec_stream {
    const om_vocab_t *vocab; /* borrowed */
    bool skip_special;
    bool include_stop;
    bool split;
    bool starts_open;

    char **stop;      /* [n_stop] owned copies, non-empty, one allocation with stop_len */
    size_t *stop_len; /* [n_stop] bytes */
    size_t n_stop;

    uint8_t utf8_pend[4]; /* bytes of an incomplete UTF-8 sequence */
    uint8_t utf8_n;       /* bytes in utf8_pend */
    uint8_t utf8_need;    /* total bytes of the sequence being collected */

    struct sbuf text;  /* all decoded text: complete UTF-8, truncated at a stop match */
    size_t n_released; /* bytes of text that cannot begin a stop string any more */
    size_t n_split;    /* bytes of text handed to the client (as content or reasoning) */
    int phase;         /* enum dec_stream_phase */

    struct sbuf content;     /* split mode: content so far (final classification once finished) */
    struct sbuf reasoning;   /* split mode: reasoning so far (likewise) */
    struct sbuf d_content;   /* split mode: this push's content delta */
    struct sbuf d_reasoning; /* split mode: this push's reasoning delta */

    bool finished;   /* final push done or stop string matched: no more text */
    bool stopped;    /* a stop string matched */
    size_t stop_idx; /* index into stop of the match, when stopped */
};

// --- byte buffers --------------------------------------------------------------------------------

static int s_reserve(struct sbuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int s_append(struct sbuf *b, const char *p, size_t n) {
    if (n == 0)
        return 0;
    int r = s_reserve(b, n);
    if (r < 0)
        return r;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static const char *s_str(const struct sbuf *b) {
    return b->p ? b->p : "";
}

// --- lossy UTF-8 (Rust from_utf8_lossy, streaming) -----------------------------------------------

/* Appends U+FFFD. Capacity was reserved by the caller. */
static void s_put_fffd(struct sbuf *b) {
    b->p[b->len++] = (char)0xEF;
    b->p[b->len++] = (char)0xBF;
    b->p[b->len++] = (char)0xBD;
}

/* Whether c may follow the n_have bytes collected so far (lead = first byte). */
static bool s_utf8_cont_ok(uint8_t lead, uint8_t n_have, uint8_t c) {
    if (n_have == 1) {
        switch (lead) {
        case 0xE0: return c >= 0xA0 && c <= 0xBF;
        case 0xED: return c >= 0x80 && c <= 0x9F;
        case 0xF0: return c >= 0x90 && c <= 0xBF;
        case 0xF4: return c >= 0x80 && c <= 0x8F;
        default: break;
        }
    }
    return c >= 0x80 && c <= 0xBF;
}

/* Feeds one byte; writes at most 4 + 3 bytes into text (capacity reserved by the caller). */
static void s_utf8_feed(dec_stream_t *s, uint8_t c) {
    struct sbuf *t = &s->text;
    if (s->utf8_n > 0) {
        if (s_utf8_cont_ok(s->utf8_pend[0], s->utf8_n, c)) {
            s->utf8_pend[s->utf8_n++] = c;
            if (s->utf8_n == s->utf8_need) {
                memcpy(t->p + t->len, s->utf8_pend, s->utf8_n);
                t->len += s->utf8_n;
                s->utf8_n = 0;
            }
            return;
        }
        /* the collected prefix is a maximal invalid subpart: one U+FFFD, then c starts afresh */
        s_put_fffd(t);
        s->utf8_n = 0;
    }
    if (c < 0x80) {
        t->p[t->len++] = (char)c;
    } else if (c >= 0xC2 && c <= 0xDF) {
        s->utf8_pend[0] = c, s->utf8_n = 1, s->utf8_need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        s->utf8_pend[0] = c, s->utf8_n = 1, s->utf8_need = 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
        s->utf8_pend[0] = c, s->utf8_n = 1, s->utf8_need = 4;
    } else {
        s_put_fffd(t); /* continuation byte without a lead, C0, C1, F5..FF */
    }
}

static void s_utf8_flush(dec_stream_t *s) {
    if (s->utf8_n > 0) {
        s_put_fffd(&s->text);
        s->utf8_n = 0;
    }
}

// --- stop strings --------------------------------------------------------------------------------

/* Length of the longest suffix of p[0..n) that is a proper prefix of pat[0..m) (0 if none). */
static size_t s_suffix_prefix(const char *p, size_t n, const char *pat, size_t m) {
    size_t k = m - 1 < n ? m - 1 : n;
    for (; k > 0; k--)
        if (p[n - k] == pat[0] && memcmp(p + n - k, pat, k) == 0)
            return k;
    return 0;
}

/* Looks for a stop string ending in text[old_len+1 .. text.len]. Returns true and the earliest end
 * (longest stop string at equal end) in *ret_end / *ret_idx. */
static bool s_stop_find(const dec_stream_t *s, size_t old_len, size_t *ret_end, size_t *ret_idx) {
    bool found = false;
    size_t best_end = 0, best_idx = 0;
    const char *t = s->text.p;
    size_t len = s->text.len;
    for (size_t i = 0; i < s->n_stop; i++) {
        size_t m = s->stop_len[i];
        if (m > len)
            continue;
        /* the window is short (new bytes + m - 1): a first-byte scan beats memmem's setup */
        size_t from = old_len + 1 > m ? old_len + 1 - m : 0;
        const char *pat = s->stop[i];
        size_t pos = from;
        for (; pos + m <= len; pos++)
            if (t[pos] == pat[0] && memcmp(t + pos, pat, m) == 0)
                break;
        if (pos + m > len)
            continue;
        size_t end = pos + m;
        if (!found || end < best_end || (end == best_end && m > s->stop_len[best_idx])) {
            found = true;
            best_end = end;
            best_idx = i;
        }
    }
    if (found) {
        *ret_end = best_end;
        *ret_idx = best_idx;
    }
    return found;
}

/* Bytes at the end of text that could still begin a stop string. */
static size_t s_stop_held(const dec_stream_t *s) {
    size_t held = 0;
    const char *t = s->text.p + s->n_released;
    size_t n = s->text.len - s->n_released;
    for (size_t i = 0; i < s->n_stop; i++) {
        size_t k = s_suffix_prefix(t, n, s->stop[i], s->stop_len[i]);
        if (k > held)
            held = k;
    }
    return held;
}

// --- reasoning split -----------------------------------------------------------------------------

/* Classifies text[n_split .. n_released) into d_content / d_reasoning (and the accumulators).
 * Unless flush, a suffix that could still become the awaited tag is held back. */
static int s_split(dec_stream_t *s, bool flush) {
    const char *t = s->text.p;
    size_t p = s->n_split, end = s->n_released;
    int r = 0;
    while (p < end) {
        if (s->phase == DEC_STREAM_PHASE_AFTER) {
            r = s_append(&s->d_content, t + p, end - p);
            p = end;
            break;
        }
        bool in_think = s->phase == DEC_STREAM_PHASE_THINK;
        const char *tag = in_think ? s_think_close : s_think_open;
        size_t tag_len = in_think ? sizeof(s_think_close) - 1 : sizeof(s_think_open) - 1;
        struct sbuf *dst = in_think ? &s->d_reasoning : &s->d_content;
        const char *hit = memmem(t + p, end - p, tag, tag_len);
        if (hit) {
            size_t q = (size_t)(hit - t);
            r = s_append(dst, t + p, q - p);
            if (r < 0)
                break;
            p = q + tag_len;
            s->phase = in_think ? DEC_STREAM_PHASE_AFTER : DEC_STREAM_PHASE_THINK;
            continue;
        }
        size_t hold = flush ? 0 : s_suffix_prefix(t + p, end - p, tag, tag_len);
        r = s_append(dst, t + p, end - p - hold);
        p = end - hold;
        break;
    }
    if (r < 0)
        return r;
    s->n_split = p;
    r = s_append(&s->content, s_str(&s->d_content), s->d_content.len);
    if (r < 0)
        return r;
    return s_append(&s->reasoning, s_str(&s->d_reasoning), s->d_reasoning.len);
}

/* The final classification of the whole text (vLLM Qwen3 parser, non-streaming). */
static int s_split_final(dec_stream_t *s) {
    const char *t = s_str(&s->text);
    size_t len = s->text.len;
    size_t base = 0;
    const char *open = len ? memmem(t, len, s_think_open, sizeof(s_think_open) - 1) : NULL;
    if (open)
        base = (size_t)(open - t) + sizeof(s_think_open) - 1;
    const char *close = memmem(t + base, len - base, s_think_close, sizeof(s_think_close) - 1);
    s->content.len = 0;
    s->reasoning.len = 0;
    if (s->content.p)
        s->content.p[0] = '\0';
    if (s->reasoning.p)
        s->reasoning.p[0] = '\0';
    int r;
    if (close) {
        size_t c = (size_t)(close - t);
        size_t after = c + sizeof(s_think_close) - 1;
        r = s_append(&s->reasoning, t + base, c - base);
        if (r == 0)
            r = s_append(&s->content, t + after, len - after);
    } else {
        r = s_append(&s->content, t + base, len - base);
    }
    return r;
}

// --- public API ----------------------------------------------------------------------------------

int dec_stream_new(const om_vocab_t *vocab, const dec_stream_opts_t *opts, dec_stream_t **ret) {
    if (!vocab || !opts || !ret)
        return -EINVAL;
    if (opts->n_stop > 0 && !opts->stop)
        return -EINVAL;
    if (opts->n_stop > DEC_STREAM_MAX_STOP)
        return -E2BIG;
    size_t n_stop = 0, stop_bytes = 0;
    for (size_t i = 0; i < opts->n_stop; i++) {
        if (!opts->stop[i])
            return -EINVAL;
        size_t m = strlen(opts->stop[i]);
        if (m > DEC_STREAM_MAX_STOP_BYTES)
            return -E2BIG;
        if (m == 0)
            continue; /* an empty stop string never ends anything */
        n_stop++;
        stop_bytes += m + 1;
    }
    dec_stream_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    if (n_stop > 0) {
        /* one block: [n_stop] char *, [n_stop] size_t, then the strings */
        size_t head = n_stop * (sizeof(char *) + sizeof(size_t));
        char *blk = malloc(head + stop_bytes);
        if (!blk) {
            free(s);
            return -ENOMEM;
        }
        s->stop = (char **)(void *)blk;
        s->stop_len = (size_t *)(void *)(blk + n_stop * sizeof(char *));
        char *str = blk + head;
        for (size_t i = 0; i < opts->n_stop; i++) {
            size_t m = strlen(opts->stop[i]);
            if (m == 0)
                continue;
            memcpy(str, opts->stop[i], m + 1);
            s->stop[s->n_stop] = str;
            s->stop_len[s->n_stop] = m;
            s->n_stop++;
            str += m + 1;
        }
    }
    s->vocab = vocab;
    s->skip_special = opts->skip_special_tokens;
    s->include_stop = opts->include_stop_str_in_output;
    s->split = opts->split_reasoning;
    s->starts_open = opts->reasoning_starts_open;
    s->phase = s->starts_open ? DEC_STREAM_PHASE_THINK : DEC_STREAM_PHASE_BEFORE;
    *ret = s;
    return 0;
}

dec_stream_t *dec_stream_free(dec_stream_t *s) {
    if (!s)
        return NULL;
    free(s->stop); /* the block also holds stop_len and the strings */
    free(s->text.p);
    free(s->content.p);
    free(s->reasoning.p);
    free(s->d_content.p);
    free(s->d_reasoning.p);
    free(s);
    return NULL;
}

int dec_stream_push(dec_stream_t *s, const int32_t *ids, size_t n, bool final, dec_delta_t *ret) {
    if (!s || (n > 0 && !ids) || !ret)
        return -EINVAL;
    if (s->finished) {
        *ret = (dec_delta_t){.text = "", .reasoning = ""};
        return 0;
    }
    int r;
    size_t old_len = s->text.len;
    for (size_t i = 0; i < n; i++) {
        if (s->skip_special && om_vocab_is_special(s->vocab, ids[i]))
            continue;
        size_t blen = 0;
        const uint8_t *b = om_vocab_token_bytes(s->vocab, ids[i], &blen);
        if (!b)
            continue; /* an id with no token decodes to nothing, as in decode() */
        if (blen > (SIZE_MAX - 8) / 3)
            return -E2BIG;
        /* worst case: every byte ends an invalid subpart (3 bytes of U+FFFD each), plus a
         * completed pending sequence */
        r = s_reserve(&s->text, blen * 3 + 8);
        if (r < 0)
            return r;
        for (size_t j = 0; j < blen; j++)
            s_utf8_feed(s, b[j]);
    }
    if (final) {
        r = s_reserve(&s->text, 4);
        if (r < 0)
            return r;
        s_utf8_flush(s);
    }
    if (s->text.p)
        s->text.p[s->text.len] = '\0';

    if (s->n_stop > 0 && s->text.len > old_len) {
        size_t end, idx;
        if (s_stop_find(s, old_len, &end, &idx)) {
            s->text.len = s->include_stop ? end : end - s->stop_len[idx];
            s->text.p[s->text.len] = '\0';
            s->stopped = true;
            s->stop_idx = idx;
            s->utf8_n = 0; /* bytes after the stop string are dropped */
        }
    }
    bool ending = final || s->stopped;
    /* With include_stop_str_in_output a match cuts the text after the stop string, past every byte
     * already released, so nothing needs holding back (vLLM does the same). */
    if (ending || s->n_stop == 0 || s->include_stop) {
        s->n_released = s->text.len;
    } else {
        size_t rel = s->text.len - s_stop_held(s);
        if (rel > s->n_released)
            s->n_released = rel;
    }

    dec_delta_t d = {.text = "", .reasoning = ""};
    if (s->split) {
        s->d_content.len = 0;
        s->d_reasoning.len = 0;
        r = s_split(s, ending);
        if (r < 0)
            return r;
        d.text = s_str(&s->d_content);
        d.text_len = s->d_content.len;
        d.reasoning = s_str(&s->d_reasoning);
        d.reasoning_len = s->d_reasoning.len;
        if (ending) {
            r = s_split_final(s);
            if (r < 0)
                return r;
        }
    } else {
        d.text = s->text.p ? s->text.p + s->n_split : "";
        d.text_len = s->n_released - s->n_split;
        s->n_split = s->n_released;
    }
    if (ending)
        s->finished = true;
    if (s->stopped) {
        d.stopped = true;
        d.stop_str = s->stop[s->stop_idx];
    }
    *ret = d;
    return 0;
}

const char *dec_stream_text(const dec_stream_t *s, size_t *ret_len) {
    if (!s) {
        if (ret_len)
            *ret_len = 0;
        return "";
    }
    if (s->split) {
        if (ret_len)
            *ret_len = s->content.len;
        return s_str(&s->content);
    }
    if (ret_len)
        *ret_len = s->n_split;
    return s_str(&s->text);
}

const char *dec_stream_reasoning(const dec_stream_t *s, size_t *ret_len) {
    if (!s || !s->split) {
        if (ret_len)
            *ret_len = 0;
        return "";
    }
    if (ret_len)
        *ret_len = s->reasoning.len;
    return s_str(&s->reasoning);
}
