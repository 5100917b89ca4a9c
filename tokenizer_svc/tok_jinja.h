/* tok_jinja.h: a Jinja2 interpreter for Hugging Face chat templates.
 *
 * Parses a template once and renders it any number of times, configured exactly as transformers
 * configures jinja2 for apply_chat_template: ImmutableSandboxedEnvironment, trim_blocks=True,
 * lstrip_blocks=True, the loopcontrols extension ({% break %}/{% continue %}), the `generation` block
 * tag (rendered as plain content), no autoescaping, keep_trailing_newline=False, the globals
 * raise_exception(msg) and strftime_now(fmt), and tojson = json.dumps(x, ensure_ascii=False,
 * indent=, separators=, sort_keys=). Values print as Python prints them (None, True, 1.0, repr of
 * lists and dicts); dicts keep insertion order.
 *
 * Template variables come as a jansson object; JSON integers stay Python ints and JSON reals stay
 * Python floats.
 *
 * Supported: {{ }}, {% %}, {# #}, raw; if/elif/else; for (tuple targets, `if` filter, else, loop.index,
 * index0, revindex(0), first, last, length, previtem, nextitem, cycle, depth); set (names, tuples,
 * namespace attributes, block set with filters); macro (defaults, varargs, kwargs, caller) and call
 * blocks; break/continue; filter and with blocks; generation. Expressions: literals, lists, tuples,
 * dicts, attribute/item access, slices, calls with keyword arguments, filters, tests, not/and/or,
 * comparisons (chained), in/not in, + - * / // % ** ~, unary -/+, inline if/else, printf-style %.
 * Filters: abs attr capitalize center count d default dictsort e escape first float format indent int
 * items join last length list lower map max min reject rejectattr replace reverse round safe select
 * selectattr sort string sum title tojson trim unique upper wordcount. Tests: boolean callable defined
 * divisibleby eq/equalto/== even false float ge/>= gt/> in integer iterable le/<= lower lt/< mapping
 * ne/!= none number odd sameas sequence string true undefined upper. Globals: dict namespace range
 * raise_exception strftime_now. Methods: str (startswith endswith split rsplit strip lstrip rstrip
 * lower upper title capitalize swapcase replace find rfind index count join splitlines removeprefix
 * removesuffix format center ljust rjust zfill is*), dict (items keys values get copy), list (index
 * count copy); mutating methods fail as the immutable sandbox does.
 * Not supported (a clear error): extends/include/import/block, recursive loops, loop.changed,
 * star-args (*a, **kw) in calls. Integers are 64-bit (overflow is an error; Python's are unbounded).
 *
 * Ownership: tok_jinja_new() returns a caller-owned template, freed by tok_jinja_free() (accepts
 * NULL, returns NULL). A template is immutable after parsing: renders may run concurrently. */
#ifndef TOK_JINJA_H
#define TOK_JINJA_H

#include <stddef.h>

#include <jansson.h>

typedef struct tok_jinja tok_jinja_t;

/* Parses src (len bytes, UTF-8). On a syntax error returns -EINVAL and writes
 * "chat template line N: <reason>" into err (errlen bytes, may be NULL/0). -ENOMEM on allocation
 * failure. */
int tok_jinja_new(const char *src, size_t len, tok_jinja_t **ret, char *err, size_t errlen);
tok_jinja_t *tok_jinja_free(tok_jinja_t *t);

/* Renders with the variables of vars (a JSON object; NULL = none). Returns 0 with a malloc'd
 * NUL-terminated text in *ret (caller frees; may contain NUL bytes, *ret_len is exact), or -EINVAL
 * with "chat template line N: <message>" in err for a render error (raise_exception's message
 * included), or -ENOMEM. */
int tok_jinja_render(const tok_jinja_t *t, const json_t *vars, char **ret, size_t *ret_len, char *err,
                     size_t errlen);

#endif
