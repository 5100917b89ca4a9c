/* om_config.c: file, then environment, then flags; see om_config.h. */
#include "om_config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OM_CONFIG_MAX_KEYS 96

const om_config_key_t om_config_common_keys[] = {
    {"config", false, NULL, "config file (default /etc/omnipipe/omnipipe.conf)"},
    {"runtime_dir", false, NULL, "directory for ipc:// sockets"},
    {"endpoint_tokenizer", false, NULL, "client-facing tokenizer endpoint (ROUTER)"},
    {"endpoint_mm_prep", false, NULL, "tokenizer-facing mm_prep endpoint (ROUTER)"},
    {"endpoint_engines", false, NULL, "engine-facing mm_prep endpoint (ROUTER)"},
    {"endpoint_decoder_in", false, NULL, "decoder input endpoint (PULL)"},
    {"endpoint_decoder", false, NULL, "client-facing decoder endpoint (ROUTER)"},
    {"record", false, NULL, "append every frame in and out to DIR/<stage>-<pid>.omcap"},
    {"log_level", false, "info", "err|warning|notice|info|debug"},
    {"heartbeat_ms", false, "500", "heartbeat interval between stages, ms"},
    {"liveness", false, "4", "missed heartbeats before a peer is declared dead"},
    {"hwm", false, "1000", "ZeroMQ high-water mark per socket, messages"},
    {"model", false, NULL, "model directory (Hugging Face layout)"},
    {"help", true, NULL, "print this help"},
    {NULL, false, NULL, NULL},
};

struct om_config {
    const om_config_key_t *keys[OM_CONFIG_MAX_KEYS]; /* known keys */
    char *values[OM_CONFIG_MAX_KEYS];                /* malloc'd value or NULL */
    size_t n_keys;
};

static int s_find(const om_config_t *c, const char *key) {
    for (size_t i = 0; i < c->n_keys; i++)
        if (strcmp(c->keys[i]->key, key) == 0)
            return (int)i;
    return -1;
}

int om_config_set(om_config_t *c, const char *key, const char *value) {
    int i = s_find(c, key);
    if (i < 0)
        return -ENOENT;
    char *v = strdup(value);
    if (!v)
        return -ENOMEM;
    free(c->values[i]);
    c->values[i] = v;
    return 0;
}

static char *s_trim(char *s) {
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static int s_load_file(om_config_t *c, const char *path, bool must_exist, const char *section,
                       char *err, size_t errlen) {
    FILE *f = fopen(path, "re");
    if (!f) {
        if (!must_exist && errno == ENOENT)
            return 0;
        int r = -errno;
        snprintf(err, errlen, "cannot open config '%s': %s", path, strerror(errno));
        return r;
    }
    char line[4096];
    int lineno = 0, r = 0;
    bool in_other = false; /* inside another daemon's [section] */
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *s = s_trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        if (*s == '[') {
            char *end = strchr(s, ']');
            if (!end || end[1] != '\0') {
                snprintf(err, errlen, "%s:%d: expected '[section]'", path, lineno);
                r = -EINVAL;
                break;
            }
            *end = '\0';
            in_other = !section || strcmp(s + 1, section) != 0;
            continue;
        }
        if (in_other)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s:%d: expected 'key = value'", path, lineno);
            r = -EINVAL;
            break;
        }
        *eq = '\0';
        char *k = s_trim(s), *v = s_trim(eq + 1);
        if (om_config_set(c, k, v) < 0) {
            snprintf(err, errlen, "%s:%d: unknown key '%s'", path, lineno, k);
            r = -EINVAL;
            break;
        }
    }
    fclose(f);
    return r;
}

int om_config_load(const om_config_key_t *keys, int argc, char **argv, om_config_t **ret, char *err,
                   size_t errlen) {
    return om_config_load_section(NULL, keys, argc, argv, ret, err, errlen);
}

int om_config_load_section(const char *section, const om_config_key_t *keys, int argc, char **argv,
                           om_config_t **ret, char *err, size_t errlen) {
    om_config_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    const om_config_key_t *tables[2] = {om_config_common_keys, keys};
    for (int t = 0; t < 2; t++)
        for (const om_config_key_t *k = tables[t]; k && k->key; k++) {
            if (s_find(c, k->key) >= 0 || c->n_keys == OM_CONFIG_MAX_KEYS)
                continue;
            c->keys[c->n_keys] = k;
            c->values[c->n_keys] = k->def ? strdup(k->def) : NULL;
            c->n_keys++;
        }
    /* the config file named by a flag, the environment or the default path */
    const char *path = NULL;
    bool must = true;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            path = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            path = argv[i] + 9;
    }
    if (!path)
        path = getenv("OMNIPIPE_CONFIG");
    if (!path) {
        path = "/etc/omnipipe/omnipipe.conf";
        must = false;
    }
    int r = s_load_file(c, path, must, section, err, errlen);
    if (r < 0)
        goto fail;
    for (size_t i = 0; i < c->n_keys; i++) {
        char env[128] = "OMNIPIPE_";
        size_t n = strlen(env);
        for (const char *p = c->keys[i]->key; *p && n + 1 < sizeof env; p++)
            env[n++] = (char)toupper((unsigned char)*p);
        env[n] = '\0';
        const char *v = getenv(env);
        if (v && strcmp(env, "OMNIPIPE_CONFIG") != 0)
            om_config_set(c, c->keys[i]->key, v);
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s'", a);
            r = -EINVAL;
            goto fail;
        }
        char key[128];
        snprintf(key, sizeof key, "%s", a + 2);
        char *eq = strchr(key, '=');
        const char *val = NULL;
        if (eq) {
            *eq = '\0';
            val = a + 2 + (eq - key) + 1;
        }
        for (char *p = key; *p; p++)
            if (*p == '-')
                *p = '_';
        int k = s_find(c, key);
        if (k < 0) {
            snprintf(err, errlen, "unknown option '%s'", a);
            r = -EINVAL;
            goto fail;
        }
        if (c->keys[k]->is_bool) {
            val = val ? val : "1";
        } else if (!val) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "option '--%s' needs a value", c->keys[k]->key);
                r = -EINVAL;
                goto fail;
            }
            val = argv[++i];
        }
        om_config_set(c, key, val);
    }
    *ret = c;
    return 0;
fail:
    om_config_free(c);
    return r;
}

om_config_t *om_config_free(om_config_t *c) {
    if (!c)
        return NULL;
    for (size_t i = 0; i < c->n_keys; i++)
        free(c->values[i]);
    free(c);
    return NULL;
}

const char *om_config_get(const om_config_t *c, const char *key) {
    int i = s_find(c, key);
    return i < 0 ? NULL : c->values[i];
}

bool om_config_get_bool(const om_config_t *c, const char *key) {
    const char *v = om_config_get(c, key);
    return v && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0);
}

int om_config_get_u64(const om_config_t *c, const char *key, uint64_t *ret, char *err, size_t errlen) {
    const char *v = om_config_get(c, key);
    if (!v || !*v) {
        *ret = 0;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || v[0] == '-') {
        snprintf(err, errlen, "%s: '%s' is not a non-negative integer", key, v);
        return -EINVAL;
    }
    *ret = x;
    return 0;
}

void om_config_usage(const om_config_t *c, const char *prog) {
    printf("usage: %s [options]\n", prog);
    for (size_t i = 0; i < c->n_keys; i++) {
        char flag[128];
        snprintf(flag, sizeof flag, "--%s%s", c->keys[i]->key, c->keys[i]->is_bool ? "" : " V");
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        printf("  %-28s %s%s%s%s\n", flag, c->keys[i]->help ? c->keys[i]->help : "",
               c->keys[i]->def ? " (default " : "", c->keys[i]->def ? c->keys[i]->def : "",
               c->keys[i]->def ? ")" : "");
    }
}

static int s_mkdir_p(const char *dir) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0750) < 0 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    if (mkdir(tmp, 0750) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int om_config_default_runtime_dir(char *buf, size_t len) {
    const char *v = getenv("RUNTIME_DIRECTORY");
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (v && *v)
        snprintf(buf, len, "%s", v);
    else if (xdg && *xdg)
        snprintf(buf, len, "%s/omnipipe", xdg);
    else if (access("/run/omnipipe", W_OK) == 0)
        snprintf(buf, len, "/run/omnipipe");
    else
        snprintf(buf, len, "/tmp/omnipipe-%u", (unsigned)getuid());
    return s_mkdir_p(buf);
}

int om_config_runtime_dir(const om_config_t *c, char *buf, size_t len) {
    const char *v = om_config_get(c, "runtime_dir");
    if (!v || !*v)
        return om_config_default_runtime_dir(buf, len);
    snprintf(buf, len, "%s", v);
    return s_mkdir_p(buf);
}

int om_config_endpoint_in(const char *runtime_dir, const char *name, char *buf, size_t len) {
    char dir[3072];
    if (!runtime_dir) {
        int r = om_config_default_runtime_dir(dir, sizeof dir);
        if (r < 0)
            return r;
        runtime_dir = dir;
    }
    int n = snprintf(buf, len, "ipc://%s/%s.sock", runtime_dir, name);
    /* sun_path holds 107 bytes */
    if (n < 0 || (size_t)n >= len || strlen(runtime_dir) + strlen(name) + 6 > 107)
        return -ENAMETOOLONG;
    return 0;
}

int om_config_endpoint(const om_config_t *c, const char *name, char *buf, size_t len) {
    char key[128];
    snprintf(key, sizeof key, "endpoint_%s", name);
    const char *v = om_config_get(c, key);
    if (v && *v) {
        snprintf(buf, len, "%s", v);
        return 0;
    }
    char dir[3072];
    int r = om_config_runtime_dir(c, dir, sizeof dir);
    if (r < 0)
        return r;
    return om_config_endpoint_in(dir, name, buf, len);
}
