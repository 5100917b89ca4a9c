/* test_jinja.c: unit tests of the Jinja interpreter (tok_jinja.c), one group per construct. Expected
 * strings are what jinja2 3.1 (configured as transformers configures it) renders; the oracle test
 * (jinja_oracle.py) checks the same constructs against jinja2 itself. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "tok_jinja.h"

/* Renders tpl with vars (JSON object text, or NULL); returns a malloc'd string, or NULL with the error
 * in err (when err is non-NULL). */
static char *render_err(const char *tpl, const char *vars, int *ret_rc, char *err, size_t errlen)
{
    json_error_t je;
    json_t *v = vars ? json_loads(vars, 0, &je) : NULL;
    if (vars && !v)
        fail_msg("bad test vars: %s", je.text);
    tok_jinja_t *t = NULL;
    char buf[512] = "";
    int rc = tok_jinja_new(tpl, strlen(tpl), &t, buf, sizeof(buf));
    char *out = NULL;
    size_t len = 0;
    if (rc == 0)
        rc = tok_jinja_render(t, v, &out, &len, buf, sizeof(buf));
    if (rc == 0)
        assert_int_equal(strlen(out), len);
    tok_jinja_free(t);
    json_decref(v);
    if (ret_rc)
        *ret_rc = rc;
    if (err)
        snprintf(err, errlen, "%s", buf);
    return out;
}

static void check(const char *tpl, const char *vars, const char *expected)
{
    char err[512];
    int rc;
    char *out = render_err(tpl, vars, &rc, err, sizeof(err));
    if (rc != 0)
        fail_msg("template %s failed: %s", tpl, err);
    if (strcmp(out, expected) != 0)
        fail_msg("template %s\n  expected [%s]\n  got      [%s]", tpl, expected, out);
    free(out);
}

/* expects a render or parse error whose message contains want (and names the line) */
static void check_error(const char *tpl, const char *vars, const char *want)
{
    char err[512];
    int rc;
    char *out = render_err(tpl, vars, &rc, err, sizeof(err));
    if (rc == 0)
        fail_msg("template %s rendered [%s], expected an error", tpl, out);
    assert_int_equal(rc, -EINVAL);
    if (!strstr(err, want))
        fail_msg("template %s: error [%s] lacks [%s]", tpl, err, want);
    assert_non_null(strstr(err, "chat template line "));
}

static void test_text_and_output(void **state)
{
    (void)state;
    check("plain text", NULL, "plain text");
    check("", NULL, "");
    check("a{{ 'b' }}c", NULL, "abc");
    check("{{ x }}", "{\"x\": \"v\"}", "v");
    check("{# comment #}x", NULL, "x");
    check("trailing newline dropped\n", NULL, "trailing newline dropped");
    check("only one dropped\n\n", NULL, "only one dropped\n");
    check("crlf\r\nlines\r\n", NULL, "crlf\nlines");
    check("{% raw %}{{ x }}{% endraw %}", NULL, "{{ x }}");
}

static void test_python_values(void **state)
{
    (void)state;
    check("{{ 1 }} {{ 1.0 }} {{ 2.5 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 1e-5 }} {{ 0.1 + 0.2 }}", NULL,
          "1 1.0 2.5 1e+16 1000000000000000.0 0.0001 1e-05 0.30000000000000004");
    check("{{ none }} {{ true }} {{ False }} {{ [1, 'a', none] }} {{ {'k': 'v', 'n': 1.0} }} {{ (1,) }}", NULL,
          "None True False [1, 'a', None] {'k': 'v', 'n': 1.0} (1,)");
    check("{{ [\"it's\", 'q\"', 'b\\\\s', 'n\\n'] }}", NULL, "[\"it's\", 'q\"', 'b\\\\s', 'n\\n']");
    /* JSON ints stay ints, reals stay floats, insertion order kept */
    check("{{ x }} {{ y }} {{ d }}", "{\"x\": 3, \"y\": 3.0, \"d\": {\"z\": 1, \"a\": [true, null]}}",
          "3 3.0 {'z': 1, 'a': [True, None]}");
    check("{{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 8 }} {{ 10 / 5 }}", NULL, "3.5 3 -4 2 256 2.0");
    check("[{{ missing }}]", NULL, "[]");
}

static void test_whitespace_control(void **state)
{
    (void)state;
    /* trim_blocks removes the newline after a block tag, lstrip_blocks the indent before it */
    check("a\n  {% if true %}\n  b\n  {% endif %}\nc", NULL, "a\n  b\nc");
    check("a  {%- if true -%}  b  {%- endif -%}  c", NULL, "abc");
    check("x\n  {{- 'y' -}}\n  z", NULL, "xyz");
    check("  {{ 'var tags keep indent' }}", NULL, "  var tags keep indent");
    check("a {%+ if true %}b{% endif +%}\nc", NULL, "a b\nc");
    check("  {# c #}\nx", NULL, "x");
    check("{% for i in [1, 2] %}\n{{ i }}\n{% endfor %}\n", NULL, "1\n2\n");
}

static void test_if(void **state)
{
    (void)state;
    const char *t = "{% if x == 1 %}one{% elif x == 2 %}two{% elif x is string %}str{% else %}other{% endif %}";
    check(t, "{\"x\": 1}", "one");
    check(t, "{\"x\": 2}", "two");
    check(t, "{\"x\": \"s\"}", "str");
    check(t, "{\"x\": 3.5}", "other");
    check("{% if [] %}t{% else %}f{% endif %}{% if {} %}t{% else %}f{% endif %}{% if '' %}t{% else %}f{% endif %}"
          "{% if 0.0 %}t{% else %}f{% endif %}{% if none %}t{% else %}f{% endif %}{% if [0] %}t{% endif %}",
          NULL, "ffffft");
}

static void test_for_loop(void **state)
{
    (void)state;
    check("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
          "{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}",
          "{\"xs\": [\"a\", \"b\"]}", "1021TrueFalse2;2110FalseTrue2;");
    check("{% for x in xs if x > 1 %}{{ x }}/{{ loop.length }} {% endfor %}", "{\"xs\": [1, 2, 3]}", "2/2 3/2 ");
    check("{% for x in [] %}x{% else %}empty{% endfor %}", NULL, "empty");
    check("{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}", "{\"d\": {\"b\": 1, \"a\": 2}}", "b=1,a=2,");
    check("{% for k in d %}{{ k }}{% endfor %}", "{\"d\": {\"b\": 1, \"a\": 2}}", "ba");
    check("{% for x in xs %}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }}{{ loop.cycle('o', 'e') }} {% endfor %}",
          "{\"xs\": [1, 2, 3]}", "-2o 13e 2-o ");
    check("{% for x in xs | reverse %}{{ x }}{% endfor %}", "{\"xs\": [1, 2, 3]}", "321");
    check("{% for c in 'hé' %}[{{ c }}]{% endfor %}", NULL, "[h][é]");
    /* loop scope: a set inside a loop does not leak out */
    check("{% set x = 0 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}", NULL, "0");
}

static void test_break_continue(void **state)
{
    (void)state;
    check("{% for i in range(10) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 6 %}{% break %}{% endif %}{{ i }}{% endfor %}",
          NULL, "0246");
    check("{% for i in [1, 2] %}{% for j in [1, 2, 3] %}{% if j == 2 %}{% break %}{% endif %}{{ i }}{{ j }} {% endfor %}{% endfor %}",
          NULL, "11 21 ");
}

static void test_set_namespace(void **state)
{
    (void)state;
    check("{% set a = 1 %}{% set b, c = 2, 'x' %}{{ a }}{{ b }}{{ c }}", NULL, "12x");
    check("{% set ns = namespace(n=0, seen=false) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}"
          "{% if i == 2 %}{% set ns.seen = true %}{% endif %}{% endfor %}{{ ns.n }} {{ ns.seen }}",
          NULL, "6 True");
    check("{% set blk %}in {{ 1 + 1 }}{% endset %}[{{ blk }}]", NULL, "[in 2]");
    check("{% set up | upper %}loud{% endset %}{{ up }}", NULL, "LOUD");
    check("{% if true %}{% set leak = 'y' %}{% endif %}{{ leak }}", NULL, "y");
    check_error("{% set x = 1 %}{% set x.attr = 2 %}", NULL, "non-namespace");
}

static void test_macro_call(void **state)
{
    (void)state;
    const char *m = "{% macro g(name, greet='Hi', p='!') %}{{ greet }} {{ name }}{{ p }}{% endmacro %}";
    char buf[512];
    snprintf(buf, sizeof(buf), "%s{{ g('A') }}|{{ g('B', 'Yo') }}|{{ g('C', p='?') }}|{{ g(name='D') }}", m);
    check(buf, NULL, "Hi A!|Yo B!|Hi C?|Hi D!");
    check("{% macro w(t) %}<{{ t }}>{{ caller() }}</{{ t }}>{% endmacro %}{% call w('b') %}x{% endcall %}", NULL,
          "<b>x</b>");
    check("{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}"
          "{% call(v) each([1, 2]) %}({{ v }}){% endcall %}",
          NULL, "(1)(2)");
    check("{% macro f(a) %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ f(1, 2, k=3) }}", NULL, "(2,){'k': 3}");
    check("{% macro r(n) %}{% if n %}{{ n }}{{ r(n - 1) }}{% endif %}{% endmacro %}{{ r(3) }}", NULL, "321");
    check("{% macro t() %}abc{% endmacro %}{{ t()|upper }}{{ t().startswith('ab') }}", NULL, "ABCTrue");
}

static void test_expressions(void **state)
{
    (void)state;
    check("{{ xs[1:] }}{{ xs[::-1] }}{{ xs[-2:] }}{{ xs[:1] }}{{ xs[::2] }}", "{\"xs\": [1, 2, 3]}",
          "[2, 3][3, 2, 1][2, 3][1][1, 3]");
    check("{{ s[::-1] }}|{{ s[1:3] }}|{{ s[-1] }}|{{ s|length }}", "{\"s\": \"héllo😀\"}", "😀olléh|él|😀|6");
    check("{{ 'a' ~ 1 ~ none ~ 2.0 }}", NULL, "a1None2.0");
    check("{{ 'b' in 'abc' }}{{ 'z' not in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in d }}{{ 'q' in d }}", "{\"d\": {\"k\": 1}}",
          "TrueTrueTrueTrueFalse");
    check("{{ 'y' if t else 'n' }}{{ 'y' if f else 'n' }}[{{ 'y' if f }}]", "{\"t\": true, \"f\": false}", "yn[]");
    check("{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 1 == 1.0 }}{{ [1, 2] == [1, 2] }}", NULL, "TrueFalseTrueTrue");
    check("{{ 0 or 'x' }}{{ 1 and 'y' }}{{ not 0 }}", NULL, "xyTrue");
    check("{{ -2 ** 2 }} {{ 2 * 3 + 4 }} {{ 'ab' * 2 }} {{ [1] + [2] }} {{ (1 + 2) ~ 3 }}", NULL, "4 10 abab [1, 2] 33");
    check("{{ d.a.b }}{{ d['a']['b'] }}{{ xs.0 }}{{ xs[5] }}", "{\"d\": {\"a\": {\"b\": \"v\"}}, \"xs\": [7]}", "vv7");
}

static void test_tests(void **state)
{
    (void)state;
    check("{{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ n is none }}{{ s is string }}{{ d is mapping }}"
          "{{ l is mapping }}{{ 1 is number }}{{ 1 is integer }}{{ 1.0 is float }}{{ t is boolean }}{{ l is iterable }}"
          "{{ s is sequence }}{{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}{{ 2 is in l }}{{ t is true }}"
          "{{ t is false }}{{ n is not none }}{{ 'a' is eq 'a' }}{{ 1 is lt 2 }}",
          "{\"x\": 1, \"n\": null, \"s\": \"s\", \"d\": {}, \"l\": [2], \"t\": true}",
          "TrueFalseTrueTrueTrueTrueFalseTrueTrueTrueTrueTrueTrueTrueFalseTrueTrueTrueFalseFalseTrueTrue");
    check("{% if enable_thinking is defined and enable_thinking is false %}off{% endif %}", "{\"enable_thinking\": false}",
          "off");
}

static void test_filters(void **state)
{
    (void)state;
    const char *v = "{\"m\": [{\"r\": \"u\", \"n\": 1}, {\"r\": \"a\", \"n\": 2}, {\"r\": \"u\", \"n\": 3}],"
                    " \"xs\": [3, 1, 2], \"d\": {\"b\": 1, \"a\": 2}}";
    check("{{ xs|length }}{{ 'hé'|length }}{{ d|length }}{{ missing|length }}", v, "3220");
    check("[{{ '  a b  '|trim }}]{{ xs|join(',') }}{{ m|map(attribute='r')|join }}{{ ['a', 'b']|map('upper')|list }}", v,
          "[a b]3,1,2uau['A', 'B']");
    check("{{ xs|select('odd')|list }}{{ xs|reject('odd')|list }}{{ m|selectattr('r', 'equalto', 'u')|map(attribute='n')|list }}"
          "{{ m|rejectattr('n', 'lt', 3)|list|length }}",
          v, "[3, 1][2][1, 3]1");
    check("{{ d|items|list }}{{ d|list }}{{ 'ab'|list }}", v, "[('b', 1), ('a', 2)]['b', 'a']['a', 'b']");
    check("{{ missing|default('dv') }}{{ ''|default('dv') }}{{ ''|default('dv', true) }}{{ none|default('x') }}", v, "dvdvNone");
    check("{{ 'AbC'|lower }}{{ 'AbC'|upper }}{{ 'aXa'|replace('a', 'b') }}{{ 'x'|replace('x', 'y', 1) }}", v, "abcABCbXby");
    check("{{ xs|first }}{{ xs|last }}{{ xs|sort }}{{ xs|sort(reverse=true) }}{{ xs|sum }}{{ xs|min }}{{ xs|max }}", v,
          "32[1, 2, 3][3, 2, 1]613");
    check("{{ [1, 1, 2]|unique|list }}{{ '42'|int + 1 }}{{ '2.5'|float }}{{ -3|abs }}{{ 2.5|round }}{{ 1|string ~ 'x' }}", v,
          "[1, 2]432.532.01x");
    check("{{ m|sort(attribute='r')|map(attribute='n')|list }}{{ d|dictsort }}", v, "[2, 1, 3][('a', 2), ('b', 1)]");
    check("{{ 'a\nb'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}", v, "a\n  b|  a\n  b");
    /* Python/jinja2 details: round keeps ints, case-insensitive unique/min/max, \w+ word counts */
    check("{{ 7|round }} {{ 2.5|round }} {{ 2.675|round(2) }} {{ ['A', 'a', 'b']|unique|list }} {{ 'Hello World'|max }}"
          " {{ ['b', 'A']|min }} {{ \"[('k', 1)]\"|wordcount }} {{ -1.0 is odd }} {{ ' 42 '|int }}",
          v, "7 2.0 2.67 ['A', 'b'] W A 2 True 42");
    check_error("{{ x|nosuchfilter }}", "{\"x\": 1}", "No filter named 'nosuchfilter'");
}

static void test_tojson(void **state)
{
    (void)state;
    const char *v = "{\"d\": {\"b\": 1.0, \"a\": [1, null, true], \"s\": \"é\\\"\\\\\\n\\u0001😀\"}}";
    check("{{ d|tojson }}", v, "{\"b\": 1.0, \"a\": [1, null, true], \"s\": \"é\\\"\\\\\\n\\u0001😀\"}");
    check("{{ d|tojson(sort_keys=true) }}", v, "{\"a\": [1, null, true], \"b\": 1.0, \"s\": \"é\\\"\\\\\\n\\u0001😀\"}");
    check("{{ d.a|tojson(indent=2) }}", v, "[\n  1,\n  null,\n  true\n]");
    check("{{ d.a|tojson(separators=(',', ':')) }}{{ {}|tojson(indent=2) }}{{ []|tojson }}", v, "[1,null,true]{}[]");
    check("{{ 'é😀'|tojson(ensure_ascii=true) }}", NULL, "\"\\u00e9\\ud83d\\ude00\"");
    check("{{ {'k': (1, 2)}|tojson }}", NULL, "{\"k\": [1, 2]}");
}

static void test_string_methods(void **state)
{
    (void)state;
    check("{{ s.startswith('he') }}{{ s.endswith(('x', 'lo')) }}{{ s.upper() }}{{ s.split('l') }}{{ s.split('l', 1) }}",
          "{\"s\": \"hello\"}", "TrueTrueHELLO['he', '', 'o']['he', 'lo']");
    check("{{ ' a  b '.split() }}{{ 'a,b'.rsplit(',', 1) }}[{{ ' x '.strip() }}][{{ ' x '.lstrip() }}][{{ ' x '.rstrip() }}]"
          "[{{ 'xxaxx'.strip('x') }}][{{ '\\n\\nq\\n'.lstrip('\\n') }}]",
          NULL, "['a', 'b']['a', 'b'][x][x ][ x][a][q\n]");
    check("{{ 'a-b'.replace('-', '+') }}{{ '-'.join(['x', 'y']) }}{{ 'abc'.find('c') }}{{ 'aaa'.count('a') }}{{ 'ab'.title() }}",
          NULL, "a+bx-y23Ab");
    check("{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}",
          "{\"c\": \"<think>\\nr\\n</think>\\n\\nA\"}", "r");
}

static void test_globals(void **state)
{
    (void)state;
    check("{{ range(3)|list }}{{ range(1, 7, 2)|list }}{{ dict(a=1) }}", NULL, "[0, 1, 2][1, 3, 5]{'a': 1}");
    char *out = render_err("{{ strftime_now('%Y') }}", NULL, NULL, NULL, 0);
    assert_non_null(out);
    assert_int_equal(strlen(out), 4);
    assert_true(atoi(out) >= 2024);
    free(out);
    check("{% generation %}g{% endgeneration %}", NULL, "g");
    check("{% filter upper %}f{{ 1 }}{% endfilter %}", NULL, "F1");
    check("{% with a = 2 %}{{ a }}{% endwith %}[{{ a }}]", NULL, "2[]");
}

static void test_errors(void **state)
{
    (void)state;
    check_error("line1\n{{ raise_exception('bad input: ' ~ x) }}", "{\"x\": 5}", "line 2: bad input: 5");
    check_error("{% for x in xs %}\n\n{{ x.a.b }}{% endfor %}", "{\"xs\": [{}]}", "line 3: 'dict object' has no attribute 'a'");
    check_error("{{ undefined_name.attr }}", NULL, "'undefined_name' is undefined");
    check_error("{{ xs.append(1) }}", "{\"xs\": []}", "unsafe");
    check_error("{{ 1 + 'a' }}", NULL, "unsupported operand");
    check_error("{% for x in y %}", NULL, "endfor");
    check_error("a\n{% if %}", NULL, "line 2");
    check_error("{% endif %}", NULL, "unknown tag 'endif'");
    check_error("{{ 'unterminated }}", NULL, "string");
    check_error("{# open comment", NULL, "comment");
    check_error("{{ 1 / 0 }}", NULL, "division by zero");
    /* resource limits: nesting depth, recursion, huge repetitions */
    char deep[8192] = "{{ ";
    for (int i = 0; i < 1000; i++)
        strcat(deep, "not ");
    strcat(deep, "x }}");
    check_error(deep, NULL, "nested too deeply");
    check_error("{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}", NULL, "recursion");
    check_error("{{ 'xy' * 100000000 }}", NULL, "too large");
    check_error("{{ range(1000000)|length }}", NULL, "range too big");
    /* parse errors leave nothing allocated and render nothing */
    tok_jinja_t *t = (tok_jinja_t *)0x1;
    char err[128];
    assert_int_equal(tok_jinja_new("{% if x %}", 10, &t, err, sizeof(err)), -EINVAL);
    assert_ptr_equal(t, (tok_jinja_t *)0x1);
    assert_null(tok_jinja_free(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_and_output), cmocka_unit_test(test_python_values),
        cmocka_unit_test(test_whitespace_control), cmocka_unit_test(test_if),
        cmocka_unit_test(test_for_loop), cmocka_unit_test(test_break_continue),
        cmocka_unit_test(test_set_namespace), cmocka_unit_test(test_macro_call),
        cmocka_unit_test(test_expressions), cmocka_unit_test(test_tests),
        cmocka_unit_test(test_filters), cmocka_unit_test(test_tojson),
        cmocka_unit_test(test_string_methods), cmocka_unit_test(test_globals),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
