/* eng_loader.c: safetensors checkpoints (single file or sharded with model.safetensors.index.json),
 * memory-mapped and validated. See eng_loader.h. The format: an 8-byte little-endian header length
 * N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data section; offsets are relative to the data section. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "eng_config.h"
#include "eng_loader.h"

typedef struct s_entry {
    char *name;          /* owned */
    int32_t shard;       /* index into shards */
    bool have;           /* t is filled (the shard was opened and listed this tensor) */
    eng_st_tensor_t t;
} s_entry_t;

typedef struct s_shard {
    char *file;          /* owned, relative name */
    uint64_t size;       /* file size, bytes */
    void *map;           /* whole file mapping, NULL until opened */
    bool opened;         /* header parsed successfully */
} s_shard_t;

struct eng_loader {
    char *dir;            /* model directory */
    s_entry_t *entries;   /* (n_entries) */
    uint32_t n_entries, cap_entries;
    uint32_t *hash;       /* (hash_cap) entry index + 1, 0 = empty */
    uint32_t hash_cap;
    s_shard_t *shards;    /* (n_shards) */
    uint32_t n_shards;
    bool indexed;         /* names came from model.safetensors.index.json */
    uint64_t total_bytes; /* sum of shard sizes */
};

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

static uint32_t s_fnv(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int s_find_entry(const eng_loader_t *l, const char *name) {
    if (!l->hash_cap)
        return -1;
    uint32_t m = l->hash_cap - 1;
    for (uint32_t i = s_fnv(name) & m;; i = (i + 1) & m) {
        uint32_t e = l->hash[i];
        if (!e)
            return -1;
        if (strcmp(l->entries[e - 1].name, name) == 0)
            return (int)(e - 1);
    }
}

static int s_rehash(eng_loader_t *l, uint32_t cap) {
    uint32_t *h = calloc(cap, sizeof(*h));
    if (!h)
        return -ENOMEM;
    for (uint32_t e = 0; e < l->n_entries; e++) {
        uint32_t i = s_fnv(l->entries[e].name) & (cap - 1);
        while (h[i])
            i = (i + 1) & (cap - 1);
        h[i] = e + 1;
    }
    free(l->hash);
    l->hash = h;
    l->hash_cap = cap;
    return 0;
}

/* Adds a name (duplicates return the existing entry). */
static int s_add_entry(eng_loader_t *l, const char *name, int32_t shard) {
    int e = s_find_entry(l, name);
    if (e >= 0)
        return e;
    if (l->n_entries == l->cap_entries) {
        uint32_t cap = l->cap_entries ? l->cap_entries * 2 : 256;
        s_entry_t *n = realloc(l->entries, cap * sizeof(*n));
        if (!n)
            return -ENOMEM;
        l->entries = n;
        l->cap_entries = cap;
    }
    s_entry_t *en = &l->entries[l->n_entries];
    memset(en, 0, sizeof(*en));
    en->name = strdup(name);
    if (!en->name)
        return -ENOMEM;
    en->shard = shard;
    l->n_entries++;
    if (l->n_entries * 2 > l->hash_cap) {
        int r = s_rehash(l, l->hash_cap ? l->hash_cap * 2 : 512);
        if (r < 0)
            return r;
    } else {
        uint32_t i = s_fnv(name) & (l->hash_cap - 1);
        while (l->hash[i])
            i = (i + 1) & (l->hash_cap - 1);
        l->hash[i] = l->n_entries;
    }
    return (int)(l->n_entries - 1);
}

static int s_add_shard(eng_loader_t *l, const char *file, char *err, size_t errlen) {
    for (uint32_t i = 0; i < l->n_shards; i++)
        if (strcmp(l->shards[i].file, file) == 0)
            return (int)i;
    if (strchr(file, '/') || strcmp(file, "..") == 0)
        return s_err(err, errlen, -EINVAL,
                     "model.safetensors.index.json: shard name '%s' must be a plain file name", file);
    s_shard_t *n = realloc(l->shards, (l->n_shards + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    l->shards = n;
    s_shard_t *s = &l->shards[l->n_shards];
    memset(s, 0, sizeof(*s));
    s->file = strdup(file);
    if (!s->file)
        return -ENOMEM;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", l->dir, file);
    struct stat st;
    if (stat(path, &st) < 0) {
        int r = -errno;
        free(s->file);
        return s_err(err, errlen, r, "%s: shard missing: %s", path, strerror(-r));
    }
    s->size = (uint64_t)st.st_size;
    l->total_bytes += s->size;
    return (int)l->n_shards++;
}

static int s_dtype(const char *s, eng_dtype_t *dt, size_t *elt) {
    static const struct { const char *s; eng_dtype_t dt; size_t sz; } tab[] = {
        {"F32", ENG_DTYPE_F32, 4}, {"BF16", ENG_DTYPE_BF16, 2}, {"F16", ENG_DTYPE_F16, 2},
        {"I32", ENG_DTYPE_I32, 4}, {"F64", ENG_DTYPE_COUNT_, 8}, {"I64", ENG_DTYPE_COUNT_, 8},
        {"U64", ENG_DTYPE_COUNT_, 8}, {"I16", ENG_DTYPE_COUNT_, 2}, {"U16", ENG_DTYPE_COUNT_, 2},
        {"U32", ENG_DTYPE_COUNT_, 4}, {"I8", ENG_DTYPE_COUNT_, 1}, {"U8", ENG_DTYPE_COUNT_, 1},
        {"BOOL", ENG_DTYPE_COUNT_, 1}, {"F8_E4M3", ENG_DTYPE_COUNT_, 1},
        {"F8_E5M2", ENG_DTYPE_COUNT_, 1},
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (strcmp(tab[i].s, s) == 0) {
            *dt = tab[i].dt;
            *elt = tab[i].sz;
            return 0;
        }
    return -EINVAL;
}

/* Maps a shard and parses its header; fills the entries it lists. */
static int s_open_shard(eng_loader_t *l, uint32_t si, char *err, size_t errlen) {
    s_shard_t *s = &l->shards[si];
    if (s->opened)
        return 0;
    if (s->map) { /* an earlier attempt failed after mapping */
        munmap(s->map, s->size);
        s->map = NULL;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", l->dir, s->file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        return s_err(err, errlen, r, "%s: cannot open: %s", path, strerror(-r));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = -errno;
        close(fd);
        return s_err(err, errlen, r, "%s: cannot stat: %s", path, strerror(-r));
    }
    s->size = (uint64_t)st.st_size;
    if (s->size < 8) {
        close(fd);
        return s_err(err, errlen, -EINVAL, "%s: truncated safetensors file (%llu bytes)", path,
                     (unsigned long long)s->size);
    }
    void *map = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int merr = errno;
    close(fd);
    if (map == MAP_FAILED)
        return s_err(err, errlen, -merr, "%s: mmap failed: %s", path, strerror(merr));
    s->map = map;
    const uint8_t *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > s->size - 8 || hlen > (100u << 20))
        return s_err(err, errlen, -EINVAL,
                     "%s: truncated or corrupt safetensors file (header of %llu bytes, file %llu "
                     "bytes)",
                     path, (unsigned long long)hlen, (unsigned long long)s->size);
    json_error_t je;
    json_t *h = json_loadb((const char *)p + 8, hlen, 0, &je);
    if (!h || !json_is_object(h)) {
        json_decref(h);
        return s_err(err, errlen, -EINVAL, "%s: corrupt safetensors header (%s)", path, je.text);
    }
    const uint8_t *data = p + 8 + hlen;
    uint64_t data_size = s->size - 8 - hlen;
    int r = 0;
    const char *name;
    json_t *v;
    json_object_foreach(h, name, v) {
        if (strcmp(name, "__metadata__") == 0)
            continue;
        int e = s_find_entry(l, name);
        if (e < 0) {
            if (l->indexed)
                continue; /* in the shard but not in the index: not addressable, ignore */
            if ((e = s_add_entry(l, name, (int32_t)si)) < 0) {
                r = e;
                goto out;
            }
        }
        if (l->entries[e].shard != (int32_t)si)
            continue; /* the index points elsewhere; that shard's copy wins */
        eng_st_tensor_t t = {0};
        t.name = l->entries[e].name;
        t.file = s->file;
        const char *ds = json_string_value(json_object_get(v, "dtype"));
        size_t elt = 0;
        if (!ds || s_dtype(ds, &t.dtype, &elt) < 0) {
            r = s_err(err, errlen, -EINVAL, "%s: tensor '%s': unknown dtype '%s'", path, name,
                      ds ? ds : "(missing)");
            goto out;
        }
        snprintf(t.dtype_str, sizeof(t.dtype_str), "%s", ds);
        const json_t *shape = json_object_get(v, "shape");
        if (!json_is_array(shape) || json_array_size(shape) > ENG_ST_MAX_DIMS) {
            r = s_err(err, errlen, -EINVAL, "%s: tensor '%s': bad shape (at most %d dims)", path,
                      name, ENG_ST_MAX_DIMS);
            goto out;
        }
        uint64_t nelem = 1;
        t.n_dims = (int)json_array_size(shape);
        for (int d = 0; d < ENG_ST_MAX_DIMS; d++)
            t.shape[d] = 1;
        for (int d = 0; d < t.n_dims; d++) {
            const json_t *x = json_array_get(shape, (size_t)d);
            if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                json_integer_value(x) > ((int64_t)1 << 40)) {
                r = s_err(err, errlen, -EINVAL, "%s: tensor '%s': bad shape[%d]", path, name, d);
                goto out;
            }
            t.shape[d] = json_integer_value(x);
            nelem *= (uint64_t)t.shape[d];
        }
        const json_t *off = json_object_get(v, "data_offsets");
        if (!json_is_array(off) || json_array_size(off) != 2 ||
            !json_is_integer(json_array_get(off, 0)) || !json_is_integer(json_array_get(off, 1))) {
            r = s_err(err, errlen, -EINVAL, "%s: tensor '%s': bad data_offsets", path, name);
            goto out;
        }
        int64_t b = json_integer_value(json_array_get(off, 0));
        int64_t en = json_integer_value(json_array_get(off, 1));
        if (b < 0 || en < b || (uint64_t)(en - b) != nelem * elt) {
            r = s_err(err, errlen, -EINVAL,
                      "%s: tensor '%s': data_offsets [%lld, %lld] do not match shape x dtype "
                      "(%llu bytes)",
                      path, name, (long long)b, (long long)en, (unsigned long long)(nelem * elt));
            goto out;
        }
        if ((uint64_t)en > data_size) {
            r = s_err(err, errlen, -EINVAL,
                      "%s: truncated shard: tensor '%s' ends at byte %llu of the data section but "
                      "the file holds only %llu",
                      path, name, (unsigned long long)en, (unsigned long long)data_size);
            goto out;
        }
        t.data = data + b;
        t.n_bytes = (uint64_t)(en - b);
        l->entries[e].t = t;
        l->entries[e].have = true;
    }
    s->opened = true;
out:
    json_decref(h);
    return r;
}

static int s_open_index(eng_loader_t *l, const char *path, char *err, size_t errlen) {
    char *text = NULL;
    int r = eng_config_read_file(path, &text, NULL);
    if (r < 0)
        return s_err(err, errlen, r, "%s: cannot read: %s", path, strerror(-r));
    json_error_t je;
    json_t *root = json_loads(text, 0, &je);
    free(text);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return s_err(err, errlen, -EINVAL, "%s: bad index: invalid JSON (line %d: %s)", path,
                     je.line, je.text);
    }
    const json_t *wm = json_object_get(root, "weight_map");
    if (!wm || !json_is_object(wm) || json_object_size(wm) == 0) {
        json_decref(root);
        return s_err(err, errlen, -EINVAL, "%s: bad index: missing or empty 'weight_map'", path);
    }
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)wm, name, v) {
        const char *file = json_string_value(v);
        if (!file || !*file) {
            r = s_err(err, errlen, -EINVAL, "%s: bad index: weight_map['%s'] is not a file name",
                      path, name);
            goto out;
        }
        int si = s_add_shard(l, file, err, errlen);
        if (si < 0) {
            size_t n = err ? strlen(err) : 0;
            if (err && n + 1 < errlen)
                snprintf(err + n, errlen - n, " (bad index %s: listed for tensor '%s')", path,
                         name);
            r = si;
            goto out;
        }
        int e = s_add_entry(l, name, si);
        if (e < 0) {
            r = e;
            goto out;
        }
    }
    r = 0;
out:
    json_decref(root);
    return r;
}

int eng_loader_open(const char *model_dir, eng_loader_t **ret, char *err, size_t errlen) {
    if (!model_dir || !ret)
        return -EINVAL;
    eng_loader_t *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->dir = strdup(model_dir);
    if (!l->dir) {
        free(l);
        return -ENOMEM;
    }
    char path[4096];
    struct stat st;
    int r;
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", model_dir);
    if (stat(path, &st) == 0) {
        l->indexed = true;
        r = s_open_index(l, path, err, errlen);
    } else {
        snprintf(path, sizeof(path), "%s/model.safetensors", model_dir);
        if (stat(path, &st) < 0) {
            r = s_err(err, errlen, -ENOENT,
                      "%s: no model.safetensors or model.safetensors.index.json", model_dir);
        } else {
            r = s_add_shard(l, "model.safetensors", err, errlen);
            if (r >= 0)
                r = s_open_shard(l, 0, err, errlen);
        }
    }
    if (r < 0) {
        eng_loader_free(l);
        return r;
    }
    *ret = l;
    return 0;
}

int eng_loader_open_file(const char *path, eng_loader_t **ret, char *err, size_t errlen) {
    if (!path || !ret)
        return -EINVAL;
    const char *slash = strrchr(path, '/');
    eng_loader_t *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
    if (!l->dir) {
        free(l);
        return -ENOMEM;
    }
    int r = s_add_shard(l, slash ? slash + 1 : path, err, errlen);
    if (r >= 0)
        r = s_open_shard(l, 0, err, errlen);
    if (r < 0) {
        eng_loader_free(l);
        return r;
    }
    *ret = l;
    return 0;
}

eng_loader_t *eng_loader_free(eng_loader_t *l) {
    if (!l)
        return NULL;
    for (uint32_t i = 0; i < l->n_shards; i++) {
        if (l->shards[i].map)
            munmap(l->shards[i].map, l->shards[i].size);
        free(l->shards[i].file);
    }
    for (uint32_t i = 0; i < l->n_entries; i++)
        free(l->entries[i].name);
    free(l->shards);
    free(l->entries);
    free(l->hash);
    free(l->dir);
    free(l);
    return NULL;
}

int eng_loader_find(eng_loader_t *l, const char *name, const eng_st_tensor_t **ret, char *err,
                    size_t errlen) {
    int e = s_find_entry(l, name);
    if (e < 0)
        return s_err(err, errlen, -ENOENT, "%s: missing tensor '%s' (not in %s)", l->dir, name,
                     l->indexed ? "model.safetensors.index.json" : "model.safetensors");
    s_entry_t *en = &l->entries[e];
    if (!en->have) {
        int r = s_open_shard(l, (uint32_t)en->shard, err, errlen);
        if (r < 0)
            return r;
        if (!en->have)
            return s_err(err, errlen, -ENOENT,
                         "%s/%s: missing tensor '%s' (the index lists it in this shard)", l->dir,
                         l->shards[en->shard].file, name);
    }
    *ret = &en->t;
    return 0;
}

uint32_t eng_loader_n_names(const eng_loader_t *l) {
    return l->n_entries;
}

const char *eng_loader_name(const eng_loader_t *l, uint32_t i) {
    return i < l->n_entries ? l->entries[i].name : NULL;
}

uint64_t eng_loader_total_bytes(const eng_loader_t *l) {
    return l->total_bytes;
}
