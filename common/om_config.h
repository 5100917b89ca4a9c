/* om_config.h: configuration for daemons and the CLI, from three sources applied in order, later wins:
 *   1. the config file: --config FILE, else $OMNIPIPE_CONFIG, else /etc/omnipipe/omnipipe.conf
 *      (a missing default file is fine; a missing named file is an error). Format: one `key = value`
 *      per line, `#` starts a comment line, blank lines ignored, values are taken verbatim after
 *      trimming (no quoting). Keys before any `[section]` line apply to every daemon; keys under
 *      `[tokenizer]`, `[mm_prep]`, `[engine]`, `[decoder]` only to that one. Unknown keys (global or
 *      in the reader's own section) are an error naming file and line.
 *   2. the environment: OMNIPIPE_<KEY> with the key upper-cased (OMNIPIPE_RUNTIME_DIR=...).
 *   3. flags: --key value or --key=value, dashes for underscores (--runtime-dir D); boolean keys
 *      take no value (--verbose).
 * Keys are declared by the caller (om_config_key_t table), so each binary accepts exactly its own.
 *
 * Endpoints: om_config_endpoint() gives `endpoint_<name>` when set (e.g. tcp://10.0.0.2:5555), else
 * ipc://<runtime_dir>/<name>.sock. The runtime dir defaults to $RUNTIME_DIRECTORY (systemd), else
 * $XDG_RUNTIME_DIR/omnipipe, else /run/omnipipe when writable, else /tmp/omnipipe-<uid>.
 *
 * Ownership: caller-owned; om_config_free() accepts NULL and returns NULL. Returned strings are
 * borrowed until the config is freed. Not thread-safe; read it at start-up. */
#ifndef OM_CONFIG_H
#define OM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct om_config_key {
    const char *key;  /* snake_case name, e.g. "runtime_dir" */
    bool is_bool;     /* flag without a value; stored as "1" */
    const char *def;  /* default value or NULL */
    const char *help; /* one line for --help */
} om_config_key_t;

typedef struct om_config om_config_t;

/* Keys every daemon understands (runtime_dir, endpoint_*, record, log_level, heartbeat_ms, ...);
 * terminated by a {NULL} entry. */
extern const om_config_key_t om_config_common_keys[];

/* keys: the binary's own table ({NULL}-terminated), merged with om_config_common_keys.
 * Reads file, environment and argv; positional arguments are an error. */
int om_config_load(const om_config_key_t *keys, int argc, char **argv, om_config_t **ret, char *err,
                   size_t errlen);
/* The same for a daemon: also reads the file's [section] (e.g. "engine"), skipping the others. */
int om_config_load_section(const char *section, const om_config_key_t *keys, int argc, char **argv,
                           om_config_t **ret, char *err, size_t errlen);
om_config_t *om_config_free(om_config_t *c);
const char *om_config_get(const om_config_t *c, const char *key); /* NULL when unset, no default */
bool om_config_get_bool(const om_config_t *c, const char *key);
/* Parses an unsigned integer value; the default (or 0) when unset; -EINVAL with err naming the key. */
int om_config_get_u64(const om_config_t *c, const char *key, uint64_t *ret, char *err, size_t errlen);
/* Sets a value (tests, the CLI). */
int om_config_set(om_config_t *c, const char *key, const char *value);
/* Writes the usage text of all keys to stdout. */
void om_config_usage(const om_config_t *c, const char *prog);

/* The runtime dir (see above), created with mode 0750 if missing. */
int om_config_runtime_dir(const om_config_t *c, char *buf, size_t len);
/* ipc:// or the endpoint_<name> override. name: tokenizer, mm_prep, engines, decoder_in, decoder. */
int om_config_endpoint(const om_config_t *c, const char *name, char *buf, size_t len);

/* Same default-resolution for callers without a config object (the CLI): dir NULL = default. */
int om_config_default_runtime_dir(char *buf, size_t len);
int om_config_endpoint_in(const char *runtime_dir, const char *name, char *buf, size_t len);

#endif
