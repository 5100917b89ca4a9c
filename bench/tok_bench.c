/* tok_bench.c: encode throughput of tok_codec on a deterministic mixed corpus (English, code, CJK,
 * other scripts, emoji, the golden texts), single thread and N threads, plus an ids checksum that
 * bench/tok_hf.py prints too, so HF tokenizers' ids can be checked identical on the same file.
 *
 *   tok_bench --model DIR [--golden FILE] [--mb N] [--write-corpus OUT.jsonl] [--corpus IN.jsonl]
 *             [--threads N] [--reps N]
 *
 * The corpus is JSONL, one document per line: {"text": ...}. Documents are encoded one by one with
 * add_special_tokens=False semantics; the checksum is FNV-1a 64 over every id of every document in
 * order: h = (h ^ id) * 1099511628211 mod 2^64, from h = 14695981039346656037. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tok_codec.h"

typedef struct tok_bench_doc {
    char *text;
    size_t len; /* bytes */
} tok_bench_doc_t;

typedef struct tok_bench_corpus {
    tok_bench_doc_t *doc;
    size_t n, cap;
    size_t bytes; /* total */
} tok_bench_corpus_t;

static double tok_bench_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- deterministic generator ---- */

static uint64_t tok_bench_rng = 0x853C49E6748FEA9Bull;
static uint32_t tok_bench_rnd(void)
{
    tok_bench_rng = tok_bench_rng * 6364136223846793005ull + 1442695040888963407ull;
    uint32_t x = (uint32_t)(((tok_bench_rng >> 18) ^ tok_bench_rng) >> 27);
    uint32_t r = (uint32_t)(tok_bench_rng >> 59);
    return x >> r | x << ((-r) & 31);
}

typedef struct tok_bench_buf {
    char *p;
    size_t n, cap;
} tok_bench_buf_t;

static void tok_bench_put(tok_bench_buf_t *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            fprintf(stderr, "tok_bench: out of memory\n");
            exit(1);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void tok_bench_puts(tok_bench_buf_t *b, const char *s)
{
    tok_bench_put(b, s, strlen(s));
}

static void tok_bench_putcp(tok_bench_buf_t *b, uint32_t cp)
{
    char o[4];
    size_t n;
    if (cp < 0x80) {
        o[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        o[0] = (char)(0xF0 | cp >> 18);
        o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    tok_bench_put(b, o, n);
}

static const char *tok_bench_words[] = {
    "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you",
    "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will",
    "would", "who", "so", "no", "model", "token", "server", "request", "latency", "throughput", "memory",
    "language", "people", "government", "university", "information", "development", "international",
    "experience", "understanding", "responsibility", "characteristics", "unfortunately", "approximately",
    "environment", "performance", "significant", "particularly", "Wednesday", "London", "Python", "Linux",
    "GPU", "NVIDIA", "HTTP", "JSON", "tokenizer", "transformer", "attention", "gradient", "kilometres",
    "photosynthesis", "antidisestablishmentarianism", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
    "don't", "it's", "we're", "they've", "I'm", "you'll", "she'd", "isn't", "won't", "O'Brien", "naïve",
    "café", "résumé", "coördinate", "façade", "jalapeño", "Zürich", "São", "Paulo", "Ångström",
};

static void tok_bench_english(tok_bench_buf_t *b, size_t target)
{
    size_t nw = sizeof(tok_bench_words) / sizeof(tok_bench_words[0]);
    size_t end = b->n + target;
    while (b->n < end) {
        size_t sent = 5 + tok_bench_rnd() % 20;
        for (size_t i = 0; i < sent; i++) {
            const char *w = tok_bench_words[tok_bench_rnd() % 40 < 30 ? tok_bench_rnd() % 50 : tok_bench_rnd() % nw];
            if (i == 0) {
                char c = w[0];
                if (c >= 'a' && c <= 'z') {
                    c = (char)(c - 32);
                    tok_bench_put(b, &c, 1);
                    tok_bench_puts(b, w + 1);
                } else
                    tok_bench_puts(b, w);
            } else {
                tok_bench_puts(b, " ");
                if (tok_bench_rnd() % 23 == 0) {
                    char num[32];
                    snprintf(num, sizeof(num), "%u", tok_bench_rnd() % 100000);
                    tok_bench_puts(b, num);
                    tok_bench_puts(b, " ");
                }
                if (tok_bench_rnd() % 31 == 0)
                    tok_bench_puts(b, "\"");
                tok_bench_puts(b, w);
                if (tok_bench_rnd() % 9 == 0)
                    tok_bench_puts(b, ",");
            }
        }
        static const char *ends[] = {". ", ". ", ". ", "? ", "! ", ".\n", ".\n\n", "; ", ": "};
        tok_bench_puts(b, ends[tok_bench_rnd() % (sizeof(ends) / sizeof(ends[0]))]);
    }
}

static void tok_bench_code(tok_bench_buf_t *b, size_t target)
{
    static const char *ids[] = {"count", "buf", "len", "ctx", "node", "result", "idx", "value", "tmp",
                                "hidden_states", "attn_mask", "kv_cache", "num_tokens", "self", "config"};
    static const char *types[] = {"int", "size_t", "float", "uint32_t", "const char *", "double"};
    size_t ni = sizeof(ids) / sizeof(ids[0]);
    size_t end = b->n + target;
    char line[256];
    while (b->n < end) {
        if (tok_bench_rnd() % 2) {
            snprintf(line, sizeof(line), "static %s %s_%s(%s %s, %s %s)\n{\n", types[tok_bench_rnd() % 6],
                     ids[tok_bench_rnd() % ni], ids[tok_bench_rnd() % ni], types[tok_bench_rnd() % 6],
                     ids[tok_bench_rnd() % ni], types[tok_bench_rnd() % 6], ids[tok_bench_rnd() % ni]);
            tok_bench_puts(b, line);
            size_t k = 2 + tok_bench_rnd() % 8;
            for (size_t i = 0; i < k; i++) {
                snprintf(line, sizeof(line), "    for (int i = 0; i < %s; ++i) { %s[i] += %s * 0x%X; } // step %u\n",
                         ids[tok_bench_rnd() % ni], ids[tok_bench_rnd() % ni], ids[tok_bench_rnd() % ni],
                         tok_bench_rnd() % 4096, tok_bench_rnd() % 100);
                tok_bench_puts(b, line);
            }
            tok_bench_puts(b, "    return 0;\n}\n\n");
        } else {
            snprintf(line, sizeof(line), "def %s_%s(%s, %s=None):\n    \"\"\"Compute the %s.\"\"\"\n",
                     ids[tok_bench_rnd() % ni], ids[tok_bench_rnd() % ni], ids[tok_bench_rnd() % ni],
                     ids[tok_bench_rnd() % ni], ids[tok_bench_rnd() % ni]);
            tok_bench_puts(b, line);
            size_t k = 2 + tok_bench_rnd() % 6;
            for (size_t i = 0; i < k; i++) {
                snprintf(line, sizeof(line), "%s%s = [x ** 2 for x in range(%u) if x %% 3 == 0]  # %s\n",
                         i % 3 ? "        " : "    ", ids[tok_bench_rnd() % ni], tok_bench_rnd() % 1000,
                         ids[tok_bench_rnd() % ni]);
                tok_bench_puts(b, line);
            }
            tok_bench_puts(b, "    return {\"ok\": True, \"n\": len(result)}\n\n\n");
        }
    }
}

static void tok_bench_cjk(tok_bench_buf_t *b, size_t target)
{
    size_t end = b->n + target;
    while (b->n < end) {
        uint32_t r = tok_bench_rnd() % 10;
        size_t k = 4 + tok_bench_rnd() % 30;
        for (size_t i = 0; i < k; i++) {
            uint32_t cp;
            if (r < 6) /* Chinese: skewed towards the common block start */
                cp = 0x4E00 + (tok_bench_rnd() % 100 < 70 ? tok_bench_rnd() % 800 : tok_bench_rnd() % 20000);
            else if (r < 8) /* Japanese kana */
                cp = tok_bench_rnd() % 2 ? 0x3041 + tok_bench_rnd() % 86 : 0x30A1 + tok_bench_rnd() % 90;
            else /* Korean syllables */
                cp = 0xAC00 + tok_bench_rnd() % 2000;
            tok_bench_putcp(b, cp);
        }
        static const uint32_t punct[] = {0x3002, 0xFF0C, 0x3001, 0xFF01, 0xFF1F, ' ', '\n'};
        tok_bench_putcp(b, punct[tok_bench_rnd() % 7]);
    }
}

static void tok_bench_scripts(tok_bench_buf_t *b, size_t target)
{
    static const uint32_t base[][2] = {
        {0x430, 32}, /* Cyrillic */ {0x3B1, 25}, /* Greek */ {0x627, 26}, /* Arabic */
        {0x915, 37}, /* Devanagari */ {0xE01, 46}, /* Thai */ {0x5D0, 27}, /* Hebrew */
        {0x10D0, 33}, /* Georgian */ {0x1F600, 80}, /* emoji */
    };
    size_t end = b->n + target;
    uint32_t script = 0;
    while (b->n < end) {
        if (tok_bench_rnd() % 20 == 0)
            script = tok_bench_rnd() % 8;
        size_t k = 2 + tok_bench_rnd() % 9;
        for (size_t i = 0; i < k; i++)
            tok_bench_putcp(b, base[script][0] + tok_bench_rnd() % base[script][1]);
        if (script == 3 && tok_bench_rnd() % 2)
            tok_bench_putcp(b, 0x93F); /* a vowel sign */
        tok_bench_puts(b, tok_bench_rnd() % 12 ? " " : ".\n");
    }
}

static void tok_bench_add_doc(tok_bench_corpus_t *c, const char *s, size_t n)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->doc = realloc(c->doc, c->cap * sizeof(*c->doc));
        if (!c->doc) {
            fprintf(stderr, "tok_bench: out of memory\n");
            exit(1);
        }
    }
    char *t = malloc(n + 1);
    if (!t) {
        fprintf(stderr, "tok_bench: out of memory\n");
        exit(1);
    }
    memcpy(t, s, n);
    t[n] = 0;
    c->doc[c->n++] = (tok_bench_doc_t){t, n};
    c->bytes += n;
}

static int tok_bench_generate(tok_bench_corpus_t *c, const char *golden, size_t mb)
{
    json_error_t je;
    json_t *g = json_load_file(golden, 0, &je);
    if (!g) {
        fprintf(stderr, "tok_bench: %s: %s\n", golden, je.text);
        return -EINVAL;
    }
    json_t *enc = json_object_get(g, "encode");
    size_t ng = json_array_size(enc);
    size_t target = mb << 20;
    tok_bench_buf_t b = {0};
    for (size_t d = 0; c->bytes < target; d++) {
        b.n = 0;
        /* documents of 2-8 KiB mixing the kinds; every 4th starts with a golden text */
        if (ng && d % 4 == 0) {
            json_t *t = json_object_get(json_array_get(enc, (d / 4) % ng), "text");
            tok_bench_put(&b, json_string_value(t), json_string_length(t));
            tok_bench_puts(&b, "\n");
        }
        size_t size = 2048 + tok_bench_rnd() % 6144;
        uint32_t kind = tok_bench_rnd() % 100;
        if (kind < 45)
            tok_bench_english(&b, size);
        else if (kind < 65)
            tok_bench_code(&b, size);
        else if (kind < 85)
            tok_bench_cjk(&b, size);
        else if (kind < 95)
            tok_bench_scripts(&b, size);
        else { /* mixed */
            tok_bench_english(&b, size / 3);
            tok_bench_cjk(&b, size / 3);
            tok_bench_code(&b, size / 3);
        }
        tok_bench_add_doc(c, b.p, b.n);
    }
    free(b.p);
    json_decref(g);
    return 0;
}

static int tok_bench_read(tok_bench_corpus_t *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "tok_bench: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        json_error_t je;
        json_t *j = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &je);
        json_t *t = json_object_get(j, "text");
        if (!json_is_string(t)) {
            fprintf(stderr, "tok_bench: %s:%zu: expected {\"text\": ...}\n", path, lineno);
            json_decref(j);
            free(line);
            fclose(f);
            return -EINVAL;
        }
        tok_bench_add_doc(c, json_string_value(t), json_string_length(t));
        json_decref(j);
    }
    free(line);
    fclose(f);
    return 0;
}

static int tok_bench_write(const tok_bench_corpus_t *c, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "tok_bench: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    for (size_t i = 0; i < c->n; i++) {
        json_t *o = json_pack("{s:s%}", "text", c->doc[i].text, c->doc[i].len);
        char *s = json_dumps(o, JSON_COMPACT);
        fputs(s, f);
        fputc('\n', f);
        free(s);
        json_decref(o);
    }
    return fclose(f) ? -errno : 0;
}

/* ---- timing ---- */

typedef struct tok_bench_job {
    const tok_codec_t *codec;
    const tok_bench_corpus_t *corpus;
    atomic_size_t *next;   /* next document to take */
    size_t nids;           /* ids this worker produced */
    int rc;
} tok_bench_job_t;

static uint64_t tok_bench_fnv(uint64_t h, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint64_t)(uint32_t)ids[i]) * 1099511628211ull;
    return h;
}

static void *tok_bench_worker(void *p)
{
    tok_bench_job_t *j = p;
    for (;;) {
        size_t d = atomic_fetch_add(j->next, 1);
        if (d >= j->corpus->n)
            break;
        int32_t *ids;
        size_t n;
        int rc = tok_codec_encode(j->codec, j->corpus->doc[d].text, j->corpus->doc[d].len, &ids, &n);
        if (rc) {
            j->rc = rc;
            break;
        }
        j->nids += n;
        free(ids);
    }
    return NULL;
}

/* Encodes the corpus with nt threads taking documents in turn; returns seconds and the id count. */
static double tok_bench_run(const tok_codec_t *codec, const tok_bench_corpus_t *c, int nt, size_t *ret_ids,
                            int *ret_rc)
{
    atomic_size_t next = 0;
    tok_bench_job_t *jobs = calloc((size_t)nt, sizeof(*jobs));
    pthread_t *th = calloc((size_t)nt, sizeof(*th));
    double t0 = tok_bench_now();
    for (int i = 0; i < nt; i++) {
        jobs[i] = (tok_bench_job_t){codec, c, &next, 0, 0};
        if (nt == 1)
            tok_bench_worker(&jobs[i]);
        else
            pthread_create(&th[i], NULL, tok_bench_worker, &jobs[i]);
    }
    if (nt > 1)
        for (int i = 0; i < nt; i++)
            pthread_join(th[i], NULL);
    double dt = tok_bench_now() - t0;
    *ret_rc = 0;
    *ret_ids = 0;
    for (int i = 0; i < nt; i++) {
        if (jobs[i].rc)
            *ret_rc = jobs[i].rc;
        *ret_ids += jobs[i].nids;
    }
    free(jobs);
    free(th);
    return dt;
}

/* The checksum over all ids in document order (single thread, outside the timed region). */
static int tok_bench_checksum(const tok_codec_t *codec, const tok_bench_corpus_t *c, uint64_t *ret_sum,
                              size_t *ret_ids)
{
    uint64_t h = 14695981039346656037ull;
    size_t total = 0;
    for (size_t d = 0; d < c->n; d++) {
        int32_t *ids;
        size_t n;
        int rc = tok_codec_encode(codec, c->doc[d].text, c->doc[d].len, &ids, &n);
        if (rc)
            return rc;
        h = tok_bench_fnv(h, ids, n);
        total += n;
        free(ids);
    }
    *ret_sum = h;
    *ret_ids = total;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},  {"golden", required_argument, NULL, 'g'},
        {"mb", required_argument, NULL, 's'},     {"write-corpus", required_argument, NULL, 'w'},
        {"corpus", required_argument, NULL, 'c'}, {"threads", required_argument, NULL, 't'},
        {"reps", required_argument, NULL, 'r'},   {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *golden = NULL, *out = NULL, *in = NULL;
    size_t mb = 16;
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN), reps = 3, o;
    while ((o = getopt_long(argc, argv, "m:g:s:w:c:t:r:", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'g': golden = optarg; break;
        case 's': mb = (size_t)atol(optarg); break;
        case 'w': out = optarg; break;
        case 'c': in = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'r': reps = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: tok_bench --model DIR [--golden text_golden.json] [--mb N] "
                            "[--write-corpus OUT] [--corpus IN] [--threads N] [--reps N]\n");
            return 2;
        }
    }
    if (!model || (!golden && !in) || threads < 1 || reps < 1 || !mb) {
        fprintf(stderr, "tok_bench: --model and one of --golden / --corpus are required\n");
        return 2;
    }
    tok_bench_corpus_t c = {0};
    if ((in ? tok_bench_read(&c, in) : tok_bench_generate(&c, golden, mb)))
        return 1;
    if (out && tok_bench_write(&c, out))
        return 1;
    char err[1024];
    double t0 = tok_bench_now();
    tok_codec_t *codec;
    if (tok_codec_load(model, &codec, err, sizeof(err))) {
        fprintf(stderr, "tok_bench: %s\n", err);
        return 1;
    }
    double load_ms = (tok_bench_now() - t0) * 1e3;
    uint64_t sum;
    size_t nids;
    if (tok_bench_checksum(codec, &c, &sum, &nids)) {
        fprintf(stderr, "tok_bench: encoding failed\n");
        return 1;
    }
    printf("corpus: %zu documents, %.2f MB (%zu bytes), %zu ids\n", c.n, (double)c.bytes / 1e6, c.bytes, nids);
    printf("load: %.1f ms\n", load_ms);
    printf("checksum: %016llx\n", (unsigned long long)sum);
    int counts[2] = {1, threads};
    for (int k = 0; k < (threads > 1 ? 2 : 1); k++) {
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            size_t n2;
            int rc;
            double dt = tok_bench_run(codec, &c, counts[k], &n2, &rc);
            if (rc || n2 != nids) {
                fprintf(stderr, "tok_bench: encoding failed: %s\n", strerror(-rc));
                return 1;
            }
            if (dt < best)
                best = dt;
        }
        printf("encode %d thread%s: %.1f MB/s (best of %d, %.3f s)\n", counts[k], counts[k] > 1 ? "s" : "",
               (double)c.bytes / 1e6 / best, reps, best);
    }
    tok_codec_free(codec);
    for (size_t i = 0; i < c.n; i++)
        free(c.doc[i].text);
    free(c.doc);
    return 0;
}
