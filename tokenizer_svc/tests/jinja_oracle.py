#!/usr/bin/python3
"""jinja_oracle.py: oracle test of the C chat-template renderer against Debian's python3-jinja2.

jinja2 is configured exactly as transformers' apply_chat_template configures it
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, the `generation` tag,
tojson = json.dumps(x, ensure_ascii=False, indent=, separators=, sort_keys=), raise_exception,
strftime_now; special tokens and tools=None/documents=None as variables). A suite of conversations is
rendered with both fixture templates (tiny-omni's chat_template.jinja, qwen3-tokenizer's inline
template) plus hand-written templates that exercise every supported construct. Each case goes to the
C side (jinja_render_tool, JSON lines on stdin/stdout); any byte difference, or an error on one side
only, fails the test and prints the first difference.

With --cli OMNIPIPE the same conversation suite goes end to end through `omnipipe render --jsonl
--model DIR` for both fixture checkpoints (template loading, special tokens, the JSON request form),
plus every chat_template case of text_golden.json against its transformers rendering.

Usage: jinja_oracle.py RENDER_TOOL [SHARED_DIR]
       jinja_oracle.py --cli OMNIPIPE [SHARED_DIR]          (standard library + jinja2 only)
"""
import json
import os
import subprocess
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(Extension):
    """transformers' AssistantTracker, reduced to rendering {% generation %} bodies as-is."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


SPECIAL = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}


def chat_vars(conv, **kw):
    """The variables apply_chat_template passes: messages, tools, documents, add_generation_prompt,
    special tokens, then the caller's kwargs."""
    v = dict(SPECIAL)
    v.update(messages=conv["messages"], tools=conv.get("tools"), documents=None)
    v.update(kw)
    v.setdefault("add_generation_prompt", False)
    return v


# ---- the conversation suite ---------------------------------------------------------------------

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}
TRICKY_TOOL = {"type": "function", "function": {
    "name": "search_docs", "description": "Search \"quoted\" docs \\ with backslash, café — 日本語 😀\nnewline\ttab",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": "it's a 'query'"},
        "limit": {"type": "integer", "default": 10, "minimum": 1.5},
        "filters": {"type": "object", "properties": {}, "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string"}, "default": []},
        "weight": {"type": "number", "default": 0.1},
        "opt": {"type": ["string", "null"], "default": None}}, "required": []}}}
NO_FN_TOOL = {"name": "calc", "description": "calculator", "parameters": {"type": "object", "properties": {"expr": {"type": "string"}}}}


def tc(name, args, with_fn=True):
    f = {"name": name, "arguments": args}
    return {"type": "function", "function": f} if with_fn else f


def conversations(multimodal):
    C = []
    u = lambda t: {"role": "user", "content": t}
    a = lambda t, **k: dict({"role": "assistant", "content": t}, **k)
    s = lambda t: {"role": "system", "content": t}
    tool = lambda t, **k: dict({"role": "tool", "content": t}, **k)
    C.append([u("Hi")])
    C.append([s("Be brief."), u("Hi")])
    C.append([u("Q1"), a("A1"), u("Q2")])
    C.append([u("Q1"), a("A1"), u("Q2"), a("A2")])
    C.append([u("Q1"), a("<think>\nr1\n</think>\n\nA1"), u("Q2")])
    C.append([u("Q1"), a("<think>\nr1\n</think>\n\nA1")])
    C.append([u("Q1"), a("<think>r1</think>A1")])
    C.append([u("Q1"), a("\n\n<think>\n\nr1\n\n</think>\n\n\nA1\n")])
    C.append([u("Q1"), a("no open tag</think>tail")])
    C.append([u("Q1"), a("A1", reasoning_content="because")])
    C.append([u("Q1"), a("A1", reasoning_content="\nbecause\n\n")])
    C.append([u("Q1"), a("A1", reasoning_content=None)])
    C.append([u("Q1"), a("A1", reasoning_content="")])
    C.append([u("Q1"), a("A1", reasoning_content="r1"), u("Q2"), a("A2", reasoning_content="r2")])
    C.append([s("sys"), u("Q1"), a("A1", reasoning_content="r1"), u("Q2")])
    C.append([u("")])
    C.append([s(""), u("x")])
    C.append([u("  leading and trailing  \n\n")])
    C.append([u("\n")])
    C.append([u("unicode: café naïve 日本語 中文 한국어 العربية עברית 😀👍🏽 e\u0301 \u200b zero-width \u2028 sep")])
    C.append([u("quotes ' \" and backslashes \\ \\\\ \\n literal")])
    C.append([u("tags <|im_start|> and <|im_end|> inside text")])
    C.append([u("nul \u0000 byte and \u0085 next-line"), a("ok \u0000")])
    C.append([u("Q"), s("late system"), u("Q2")])
    C.append([s("s1"), s("s2"), u("Q")])
    C.append([u("Weather in Paris?"), a("", tool_calls=[tc("get_weather", {"city": "Paris"})]), tool('{"temp": 21}')])
    C.append([u("Weather?"), a("Let me check.", tool_calls=[tc("get_weather", {"city": "Paris", "unit": "c"})]),
              tool("sunny"), a("It is sunny.")])
    C.append([u("Two cities"), a("", tool_calls=[tc("get_weather", {"city": "Paris"}), tc("get_weather", {"city": "Oslo"})]),
              tool("sunny"), tool("rain"), u("thanks")])
    C.append([u("Two cities"), a("Checking both.", tool_calls=[tc("get_weather", {"city": "Paris"}), tc("get_weather", {"city": "Oslo"})]),
              tool("sunny"), tool("rain")])
    C.append([u("args as string"), a("", tool_calls=[tc("get_weather", '{"city": "Paris"}')]), tool("ok")])
    C.append([u("no function wrapper"), a("", tool_calls=[tc("calc", {"expr": "1+1"}, with_fn=False)]), tool("2")])
    C.append([u("tricky args"), a("", tool_calls=[tc("search_docs", {
        "query": "it's \"quoted\" \\ back\\slash\nnewline\ttab 日本 😀", "limit": 5, "weight": 0.5, "big": 1e20,
        "small": 1e-07, "neg": -3, "flag": True, "off": False, "nothing": None, "nested": {"a": [1, 2.0, {"b": []}], "c": {}},
        "ctrl": "\u0001\u001f\u007f", "empty": ""})]), tool("[]")])
    C.append([u("think then tool"), a("<think>\nplan\n</think>\n\n", tool_calls=[tc("get_weather", {"city": "Rome"})]),
              tool("hot")])
    C.append([u("reasoning and tool"), a("", reasoning_content="need weather", tool_calls=[tc("get_weather", {"city": "Rome"})]),
              tool("hot"), a("Hot in Rome.", reasoning_content="summarize")])
    C.append([u("<tool_response>\nfake\n</tool_response>"), a("A")])
    C.append([u("real Q"), a("", tool_calls=[tc("get_weather", {"city": "X"})]), tool("r1"), a("", tool_calls=[tc("get_weather", {"city": "Y"})]),
              tool("r2"), a("done", reasoning_content="final thoughts")])
    C.append([u("tool first?"), tool("orphan tool result")])
    C.append([tool("only tool")])
    C.append([a("assistant first")])
    C.append([u("tool with name"), a("", tool_calls=[dict(tc("get_weather", {"city": "Z"}), id="call_1")]),
              tool("42", tool_call_id="call_1", name="get_weather")])
    C.append([u("numbers"), a("", tool_calls=[tc("calc", {"x": 1.0, "y": 0.1, "z": 123456789012, "w": 1.5e300, "v": -0.0})])])
    C.append([u("long " * 50)])
    C.append([u("multi\nline\n\nuser\n"), a("multi\nline\nanswer")])
    out = []
    for i, msgs in enumerate(C):
        out.append({"messages": msgs})
        if i % 3 == 0:
            out.append({"messages": msgs, "tools": [WEATHER_TOOL]})
        if i % 5 == 1:
            out.append({"messages": msgs, "tools": [WEATHER_TOOL, TRICKY_TOOL, NO_FN_TOOL]})
    if multimodal:
        p = lambda *parts: list(parts)
        T = lambda t: {"type": "text", "text": t}
        out += [
            {"messages": [u(p({"type": "audio", "audio": "a.wav"}, T("Transcribe.")))]},
            {"messages": [s(p(T("You see and hear."))), u(p({"type": "image", "image": "x.png"}, {"type": "video", "video": "v.mp4"},
                                                          T("Compare them, 比较一下。")))]},
            {"messages": [u(p({"type": "image_url", "image_url": {"url": "http://x/y.png"}}, T("what?"))), a("A cat."),
                          u(p(T("and this"), {"type": "audio_url", "audio_url": "http://a"}, {"type": "video_url", "video_url": "v"}))]},
            {"messages": [u(p()), a(p(T("list-form assistant")))]},
            {"messages": [s(p(T("sys "), T("parts"))), u(p(T("<tool_response>x</tool_response>")))], "tools": [WEATHER_TOOL]},
            {"messages": [u(p(T("a"), T("b"), {"type": "image", "image": "1"}, {"type": "image", "image": "2"}))]},
            {"messages": [u(p(T("bad part"), {"type": "hologram", "hologram": "h"}))]},
            {"messages": [u(p(T("Q"))), a("<think>\nx\n</think>\n\nA"), u(p(T("Q2")))]},
            {"messages": [u("q"), a("", tool_calls=[tc("get_weather", {"city": "P"})]), tool(p(T("tool list content")))]},
        ]
    return out


# ---- hand-written templates ---------------------------------------------------------------------

V = {
    "xs": [1, 2, 3, 4, 5], "s": "héllo wörld", "e": "", "f": 1.0, "g": 0.1, "big": 1e20, "neg": -2.5, "n": None,
    "t": True, "d": {"b": 2, "a": 1, "c": [1, {"z": None}]}, "words": ["b", "A", "c", "a"],
    "msgs": [{"role": "user", "content": "hi", "n": 1}, {"role": "assistant", "content": "yo", "n": 2},
             {"role": "user", "content": "bye", "n": 3}],
    "q": "it's \"q\" \\ \n\t", "uni": "日本語😀é", "nested": {"a": {"b": {"c": "deep"}}},
    "mixed": [1, 2.5, "x", None, True, [1], {"k": "v"}], "ws": "  \t pad \n ", "csv": "a,b,,c", "num_s": "42",
    "flt_s": "3.5", "c": {"type": "image", "audio": "a.wav"},
    "parts": [{"type": "image", "image": "x"}, {"type": "text", "text": "t"}, {"image_url": "u", "type": "image_url"}],
}

H = [
    # printing of Python values
    "{{ 1 }}|{{ 1.0 }}|{{ 1.5 }}|{{ 0.1 + 0.2 }}|{{ 1/3 }}|{{ 10/2 }}|{{ 7//2 }}|{{ -7//2 }}|{{ -7 % 3 }}|{{ 7 % -3 }}|{{ 2**10 }}|{{ 2**-1 }}",
    "{{ f }}|{{ g }}|{{ big }}|{{ neg }}|{{ 1e16 }}|{{ 1e15 }}|{{ 1e-4 }}|{{ 1e-5 }}|{{ 123456789.123 }}|{{ 1.5e300 * 10 }}|{{ -0.0 }}",
    "{{ n }}|{{ t }}|{{ none }}|{{ false }}|{{ True }}|{{ [1, 'a', none, true, 1.0] }}|{{ {'a': 1, 'b': [1, 2]} }}|{{ ('x',) }}|{{ (1, 2) }}|{{ () }}",
    "{{ \"it's\" }}|{{ ['it\\'s', 'say \"hi\"', 'both \\' \"', 'back\\\\slash', 'nl\\n', 'tab\\t', 'ctl\\x01', 'uni é 日本 😀', 'zw\\u200b'] }}",
    "{{ mixed }}|{{ d }}|{{ msgs[0] }}|{{ q }}|{{ [q] }}",
    "{{ undefined_var }}|{{ d.missing }}|{{ msgs[10] }}|{{ 'x' if false }}|[{{ e }}]|{{ [undefined_var, 1] }}|{{ {'k': d.missing} }}",
    # strings and slicing
    "{{ xs[1:] }}|{{ xs[::-1] }}|{{ xs[-2:] }}|{{ xs[:-1] }}|{{ xs[::2] }}|{{ xs[1:4:2] }}|{{ xs[10:] }}|{{ xs[-100:2] }}|{{ xs[3:1:-1] }}",
    "{{ s[::-1] }}|{{ s[1:3] }}|{{ s[0] }}|{{ s[-1] }}|{{ uni[1] }}|{{ uni[::-1] }}|{{ uni|length }}|{{ s|length }}|{{ uni[-2:] }}",
    "{{ 'a' ~ 1 ~ none ~ true ~ 1.0 ~ [1] }}|{{ 'ab' * 3 }}|{{ [1] * 2 }}|{{ 'x' + 'y' }}|{{ [1] + [2, 3] }}",
    "{{ s.startswith('hé') }}|{{ s.endswith(('x', 'rld')) }}|{{ s.upper() }}|{{ s.title() }}|{{ 'ÉCOLE'.lower() }}|{{ s.capitalize() }}",
    "{{ csv.split(',') }}|{{ csv.split(',', 1) }}|{{ ' a  b\tc\n'.split() }}|{{ csv.rsplit(',', 1) }}|{{ ' a b '.split(' ') }}|{{ 'a b c'.split(None, 1) }}",
    "[{{ ws.strip() }}]|[{{ ws.lstrip() }}]|[{{ ws.rstrip() }}]|[{{ 'xxhixx'.strip('x') }}]|[{{ '\\n\\nA\\n'.lstrip('\\n') }}]|[{{ 'abcba'.rstrip('ab') }}]",
    "{{ s.replace('l', 'L') }}|{{ s.replace('l', 'L', 1) }}|{{ s.find('w') }}|{{ s.count('l') }}|{{ '-'.join(words) }}|{{ s.rfind('l') }}",
    "{{ '{} and {}'.format('a', 1) }}|{{ 'x\\ny\\r\\nz'.splitlines() }}|{{ 'abc'.removeprefix('a') }}|{{ '12'.isdigit() }}|{{ 'Ab'.isupper() }}",
    # comparisons, logic, membership
    "{{ 1 < 2 < 3 }}|{{ 1 < 2 > 3 }}|{{ 1 == 1.0 }}|{{ 'a' < 'b' }}|{{ [1, 2] < [1, 3] }}|{{ 1 != 2 }}|{{ 3 >= 3 }}|{{ true == 1 }}",
    "{{ 'ell' in s }}|{{ 'x' not in s }}|{{ 2 in xs }}|{{ 'a' in d }}|{{ 'zz' in d }}|{{ none in mixed }}|{{ [1] in mixed }}",
    "{{ 0 or 'x' }}|{{ 1 and 'y' }}|{{ '' or none }}|{{ not xs }}|{{ not e }}|{{ xs and e }}|{{ (1 if t else 2) }}|{{ 'a' if n else 'b' if f else 'c' }}",
    "{{ -xs[0] }}|{{ +f }}|{{ -(1 + 2) * 3 }}|{{ 2 ** 3 ** 2 }}|{{ 10 - 2 - 3 }}|{{ 2 * 3 + 4 }}|{{ -2 ** 2 }}|{{ 1 + 2 ~ 3 }}",
    # tests
    "{% for v in [1, 1.0, 's', none, true, [1], {'a': 1}, undefined_x] %}{{ v is defined }},{{ v is none }},{{ v is string }},{{ v is mapping }},{{ v is number }},{{ v is integer }},{{ v is float }},{{ v is boolean }},{{ v is iterable }},{{ v is sequence }};{% endfor %}",
    "{{ 3 is odd }}|{{ 4 is even }}|{{ 9 is divisibleby 3 }}|{{ 9 is divisibleby(2) }}|{{ 2 is in xs }}|{{ 1 is eq 1 }}|{{ t is true }}|{{ 1 is true }}|{{ false is false }}|{{ n is sameas none }}|{{ 'ab' is lower }}|{{ 1 is lt 2 }}|{{ 1 is ne 1 }}|{{ x is not defined }}",
    # filters
    "{{ xs|length }}|{{ d|length }}|{{ [' a ', 'b ']|map('trim')|join(',') }}|{{ msgs|map(attribute='role')|join(' ') }}|{{ msgs|map(attribute='nope', default='-')|list }}|{{ xs|select('odd')|list }}|{{ xs|reject('even')|list }}|{{ xs|select|list }}",
    "{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')|list }}|{{ msgs|rejectattr('role', 'eq', 'user')|list }}|{{ msgs|selectattr('n')|list|length }}|{{ msgs|selectattr('n', 'gt', 1)|map(attribute='n')|list }}",
    "{{ d|items|list }}|{{ d.items()|list }}|{{ d|list }}|{{ d.keys()|list }}|{{ d.values()|list }}|{{ 'abc'|list }}|{{ d|dictsort }}|{{ d.get('a') }}|{{ d.get('zz', 'dflt') }}|{{ d.get('zz') }}",
    "{{ missing|default('dv') }}|{{ e|default('dv') }}|{{ e|default('dv', true) }}|{{ none|default('x') }}|{{ missing|d('y') }}|{{ s|upper }}|{{ 'ABC'|lower }}|{{ s|replace('l', '_') }}|{{ ' x '|trim }}|{{ 'xxyxx'|trim('x') }}",
    "{{ xs|first }}|{{ xs|last }}|{{ xs|reverse|list }}|{{ s|reverse }}|{{ words|sort }}|{{ words|sort(case_sensitive=true) }}|{{ words|sort(reverse=true) }}|{{ [3, 1, 3, 2]|unique|list }}|{{ xs|sum }}|{{ xs|min }}|{{ xs|max }}|{{ msgs|sum(attribute='n') }}",
    "{{ num_s|int }}|{{ flt_s|float }}|{{ 'x'|int }}|{{ 3.9|int }}|{{ -3|abs }}|{{ 2.567|round(2) }}|{{ 2.5|round }}|{{ 42|string }}|{{ 'hello world'|capitalize }}|{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent(2, true) }}|{{ 'one two  three'|wordcount }}|{{ xs|count }}",
    "{{ msgs|sort(attribute='content')|map(attribute='content')|join(',') }}|{{ [1, 2]|join }}|{{ msgs|join(',', attribute='role') }}|{{ xs|map('string')|join('+') }}|{{ [1.0, 2]|map('int')|list }}",
    # tojson
    "{{ d|tojson }}|{{ mixed|tojson }}|{{ q|tojson }}|{{ uni|tojson }}|{{ uni|tojson(ensure_ascii=true) }}|{{ msgs[0]|tojson(sort_keys=true) }}|{{ d|tojson(separators=(',', ':')) }}",
    "{{ d|tojson(indent=2) }}\n{{ mixed|tojson(indent=4, sort_keys=true) }}\n{{ [[], {}]|tojson(indent=2) }}\n{{ d|tojson(indent='\\t') }}\n{{ {'b': 1, 'a': {'d': 1, 'c': 2}}|tojson(indent=0, sort_keys=true) }}",
    "{{ f|tojson }}|{{ big|tojson }}|{{ 1e-7|tojson }}|{{ none|tojson }}|{{ t|tojson }}|{{ 'ctl\\x01\\x1f\\x7f\\u2028'|tojson }}|{{ ('a', 1)|tojson }}|{{ {1: 'int key', none: 'n', true: 't'}|tojson }}",
    # loops
    "{% for m in msgs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.previtem.n if loop.previtem is defined else '-' }}/{{ loop.nextitem.n if loop.nextitem is defined else '-' }}/{{ loop.cycle('a', 'b') }};{% endfor %}",
    "{% for x in xs if x is odd %}{{ x }}:{{ loop.index }}:{{ loop.last }},{% else %}none{% endfor %}|{% for x in [] %}{{ x }}{% else %}empty{% endfor %}|{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}|{% for c in 'héj' %}[{{ c }}]{% endfor %}",
    "{% for i in range(3) %}{% for j in range(i) %}{{ i }}{{ j }}{{ loop.length }} {% endfor %}|{% endfor %}{{ range(2, 10, 3)|list }}{{ range(5, 0, -2)|list }}",
    "{% for m in msgs[::-1] %}{{ m.role }}{% if not loop.last %},{% endif %}{% endfor %}|{% for x in xs|reverse if x > 2 %}{{ x }}{% endfor %}",
    # set and scoping
    "{% set x = 1 %}{% for i in xs %}{% set x = i %}{% endfor %}{{ x }}|{% set ns = namespace(x=1, found=false) %}{% for i in xs %}{% set ns.x = ns.x + i %}{% if i == 3 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.x }} {{ ns.found }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% set t = (1, 2) %}{{ t }}|{% set blk %}inner {{ s }}{% endset %}[{{ blk }}]|{% set up | upper %}shout {{ 1 }}{% endset %}{{ up }}|{% if true %}{% set leaked = 'yes' %}{% endif %}{{ leaked }}",
    "{% set ns = namespace(items=[]) %}{% for i in xs %}{% set ns.items = ns.items + [i * 2] %}{% endfor %}{{ ns.items }}|{% set d2 = dict(a=1, b='x') %}{{ d2 }}|{% with y = 5 %}{{ y }}{% endwith %}{{ y }}",
    # macros and call blocks
    "{% macro greet(name, greeting='Hello', punct='!') %}{{ greeting }}, {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }}|{{ greet('Bob', 'Hi') }}|{{ greet('Cy', punct='?') }}|{{ greet(name='Di', greeting='Yo') }}",
    "{% macro show(x) %}{{ x }}:{{ varargs }}:{{ kwargs }}{% endmacro %}{{ show(1, 2, 3, k='v') }}|{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ s }}{% endcall %}|{% macro rec(n) %}{% if n > 0 %}{{ n }}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}",
    "{% macro li(x) %}[{{ x }}{{ caller('i') }}]{% endmacro %}{% call(item) li('o') %}{{ item }}{% endcall %}|{% macro lst(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(v) lst(xs) %}<{{ v }}>{% endcall %}|{% macro m() %}{{ s }}{% endmacro %}{{ m()|upper }}|{{ m() ~ '!' }}",
    # whitespace control
    "a\n  {% if true %}\n    b\n  {% endif %}\nc\n",
    "a  {%- if true -%}  b  {%- endif -%}  c\n{{- ' d ' -}}\n  e  {#- comment -#}  f",
    "line1\n    {% for x in [1, 2] %}\n    item {{ x }}\n    {% endfor %}\nend\n\n",
    "x {%+ if true %} kept-left {% endif +%}\nnext\n\t{% if true %}tab-stripped{% endif %}\n  {{ 'var not lstripped' }}\n  {# comment lstripped #}\ntail",
    "{% raw %}{{ not rendered }} {% if %}{% endraw %}|  {%- raw -%}  x  {%- endraw -%}  |\n{# multi\nline\ncomment #}\nafter",
    "{%- for m in msgs -%}\n  {{- m.role -}}\n  {%- if not loop.last %}, {% endif -%}\n{%- endfor %}\n\n  trailing  \n",
    "  {% if true %}a{% endif %}  \n  {% if false %}b{% else %}c{% endif %}\r\nwin\r\nlines\r\n{{ 'x' }}\n",
    "trailing comment opener {#",
    "{% generation %}gen {{ s }}{% endgeneration %}|{% filter upper %}filtered {{ s }}{% endfilter %}|{{ bos_token }}{{ eos_token }}{{ pad_token }}",
    "{{ 'abc' }}{{ \"d\\\"e\" }}{{ 'f' 'g' }}{{ '\\u00e9\\x41\\101\\q' }}{{ 1_000 }}{{ 1.5e3 }}{{ 0.5 }}",
    "{{ msgs[0]['role'] }}{{ msgs[0].role }}{{ nested.a.b.c }}{{ nested['a']['b'] }}{{ msgs.0.content }}{{ d['c'][1]['z'] }}",
    "{{ strftime_now('%Y') | length }}|{{ raise_exception is defined }}",
    # scoping: loop bodies start afresh each iteration; macros see the caller-time globals
    "{% set c = 0 %}{% for i in [1, 2, 3] %}{% set c = c + 1 %}{{ c }}{% endfor %}|{{ c }}|{% for i in [1, 2, 3] %}{% if i > 1 %}{{ prev }}{% endif %}{% set prev = i %}{% endfor %}",
    "{% macro m() %}{{ x }}{% endmacro %}{% set x = 1 %}{{ m() }}|{% for i in [1, 2] %}{% set outer = loop %}{% for j in [1, 2] %}{{ outer.index }}{{ loop.index }} {% endfor %}{% endfor %}|{% for i in [1] %}{% endfor %}{{ i }}",
    "{% set x = 1 %}{% for i in [1] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}|{% for i in [1] %}{% set x = 3 %}{% for j in [1] %}{{ x }}{% set x = 4 %}{{ x }}{% endfor %}{{ x }}{% endfor %}|{% set l = [1, 2] %}{% for l in l %}{{ l }}{% endfor %}{{ l }}",
    "{% macro m(a, b=a) %}{{ b }}{{ caller is defined }}{% endmacro %}{{ m(1) }}|{% set ns = namespace(x=0) %}{% set ns2 = ns %}{% set ns2.x = 9 %}{{ ns.x }}|{% macro s() %}{% set y = 2 %}{{ y }}{% endmacro %}{% set y = 1 %}{{ s() }}{{ y }}",
    "{{ 'a' in {'a': 1} }}|{{ c.type == 'audio' or ('audio' in c) }}|{% set ns = namespace(t='') %}{% for p in parts %}{% if 'image' in p %}{% set ns.t = ns.t + '<img>' %}{% endif %}{% endfor %}{{ ns.t }}",
    # Python numerics and Unicode case mapping
    "{{ 0.1|round(1) }}|{{ 2.675|round(2) }}|{{ -0.5|round }}|{{ 1.5|round }}|{{ 3.14159|round(2, 'floor') }}|{{ 2 ** 0.5 }}|{{ 1e300 * 1e10 }}|{{ [1, 2]|sum(start=10) }}",
    "{{ 'ß'.upper() }}|{{ 'ǅ'.lower() }}|{{ 'İ'.lower()|length }}|{{ 'ﬁ'.upper() }}|{{ 'Straße'|upper }}|{{ 'ÀÉÎ'|lower }}",
    "{{ \"they're bill's-friends (x) [y] <z>\"|title }}|{{ \"they're\".title() }}|{{ 'ǆemal'|capitalize }}|{{ 'hELLO wORLD'.capitalize() }}|{{ '<a href=\"x\">&\\'</a>'|e }}|{{ 'AbC'.swapcase() }}",
    "[{{ 'x'.center(5) }}]|[{{ 'abc'|center(8) }}]|[{{ 'ab'.ljust(4, '*') }}]|[{{ 'ab'.rjust(4) }}]|[{{ '-7'.zfill(4) }}]",
    "{{ '%s-%d' % ('a', 3) }}|{{ 'x' ~ '%s' % 1 }}|{{ '%r' % 'q' }}|{{ '%s and %s'|format('a', 1.0) }}|{{ '100%%'|format }}",
    # errors (both sides must fail)
    "{{ raise_exception('custom failure: ' ~ s) }}",
    "{% if xs|length > 2 %}{{ raise_exception('too many') }}{% endif %}",
    "{{ undefined_var.attr }}",
    "{{ xs.append(6) }}",
    "{{ 1 + 'a' }}",
    "{% for %}",
    "{{ 1 / 0 }}",
    "{% endif %}",
    "{{ d.a.b.c }}x",
]

# Real-world-style chat templates (structures seen in other checkpoints).
LLAMA_LIKE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ (message['content'] if message['content'] is string else '') | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL_LIKE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

CHATML_MIN = """{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + (message['content'] if message['content'] is string else message['content']|map(attribute='text')|select('defined')|join('')) + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""


def whitespace_fuzz(n, seed=1234):
    """Random templates mixing text, newlines and indentation with every tag kind and -/+ modifier:
    the lexer's trim_blocks/lstrip_blocks handling must match jinja2's byte for byte."""
    import random
    rng = random.Random(seed)
    texts = ["", " ", "  ", "\t", "\n", " \n", "\n  ", "a", "b c", "\n\n", "x\n\t ", "\u3000\n"]
    mods = ["", "", "-", "+"]

    def tag(body, kind="%"):
        left = rng.choice(mods if kind != "{" else ["", "", "-"])
        right = rng.choice(mods if kind != "{" else ["", "", "-"])
        if kind == "{":
            return "{{" + left + " " + body + " " + right + "}}"
        if kind == "#":
            return "{#" + left + " " + body + " " + right + "#}"
        return "{%" + left + " " + body + " " + right + "%}"

    def block(depth):
        out = []
        for _ in range(rng.randint(1, 4)):
            out.append(rng.choice(texts))
            r = rng.random()
            if r < 0.2:
                out.append(tag("'v'", "{"))
            elif r < 0.3:
                out.append(tag("comment", "#"))
            elif r < 0.4:
                out.append(tag("set x = 1"))
            elif r < 0.45:
                raw_begin = "{%" + rng.choice(["", "-", "+"]) + " raw " + rng.choice(["", "-"]) + "%}"  # no "raw +%}"
                out.append(raw_begin + rng.choice(texts) + "{{ raw }}" + rng.choice(texts) + tag("endraw"))
            elif depth < 3 and r < 0.75:
                out.append(tag("if true") + block(depth + 1) + tag("else") + "no" + tag("endif"))
            elif depth < 3:
                out.append(tag("for i in [1, 2]") + block(depth + 1) + tag("endfor"))
            out.append(rng.choice(texts))
        return "".join(out)

    return [block(0) + rng.choice(["", "\n", "\n\n", " \n"]) for _ in range(n)]


EXPR_VARS = {"i0": 0, "i1": 1, "im": -3, "fl": 2.5, "ft": 0.1, "fb": 1e15, "fn": -0.5, "sa": "ab", "sq": "q'",
             "su": "é😀", "se": "", "sp": " pad ", "sh": "Hello World", "la": [1, "a"], "le": [], "lx": [3, 1, 2],
             "tu": [1, 2], "da": {"k": 1}, "dd": {"b": 2, "a": 1.5}, "nn": None, "bt": True, "bf": False}


def expr_fuzz(n, seed=99):
    """Random expressions over variables (never all-literal, so jinja2's constant folding stays out of
    the way): operators, filters, tests, methods, slices and inline ifs on every value type."""
    import random
    rng = random.Random(seed)
    atoms = list(EXPR_VARS)
    bins = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "in", "not in", "and", "or"]
    posts = ["[0]", "[1:]", "[::-1]", "[-1]", ".upper()", ".strip()", ".split()", "|length", "|string", "|tojson",
             "|list", "|first", "|last", "|join(',')", "|sort", "|reverse|list", "|unique|list", "|default('D')",
             "|trim", "|int", "|float", "|abs", "|round", "|lower", "|items|list", "|sum", "|min", "|max",
             "|dictsort", " is string", " is none", " is number", " is mapping", " is defined", " is iterable",
             " is sequence", " is odd", ".keys()|list", ".get('k')", "|map('string')|list", "|select|list", "|count",
             "|capitalize", "|title", ".startswith('a')", "|wordcount", "|center(6)", "|tojson(indent=1)"]

    def expr(d):
        r = rng.random()
        if d <= 0 or r < 0.3:
            return rng.choice(atoms)
        if r < 0.6:
            return "(" + expr(d - 1) + " " + rng.choice(bins) + " " + expr(d - 1) + ")"
        if r < 0.7:
            return "(not " + expr(d - 1) + ")"
        if r < 0.75:
            return "(" + expr(d - 1) + " if " + expr(d - 1) + " else " + expr(d - 1) + ")"
        return "(" + expr(d - 1) + rng.choice(posts) + ")"

    return ["{{ " + expr(3) + " }}" for _ in range(n)]


def load_templates(shared):
    omni = open(os.path.join(shared, "fixtures/tiny-omni/chat_template.jinja"), encoding="utf-8").read()
    cfg = json.load(open(os.path.join(shared, "fixtures/qwen3-tokenizer/tokenizer_config.json"), encoding="utf-8"))
    return omni, cfg["chat_template"]


def build_cases(shared):
    omni, qwen3 = load_templates(shared)
    cases = []
    kwsets = [dict(add_generation_prompt=True), dict(add_generation_prompt=False),
              dict(add_generation_prompt=True, enable_thinking=False),
              dict(add_generation_prompt=True, enable_thinking=True)]
    for name, tpl, mm in (("omni", omni, True), ("qwen3", qwen3, False)):
        for i, conv in enumerate(conversations(mm)):
            for j, kw in enumerate(kwsets):
                if (i + j) % 2 and j > 1:
                    continue
                cases.append((f"{name}/conv{i}/kw{j}", tpl, chat_vars(conv, **kw)))
    for name, tpl in (("llama", LLAMA_LIKE), ("mistral", MISTRAL_LIKE), ("chatml", CHATML_MIN)):
        for i, conv in enumerate(conversations(name == "chatml")):
            cases.append((f"{name}/conv{i}", tpl, chat_vars(conv, add_generation_prompt=bool(i % 2), bos_token="<s>")))
    for i, tpl in enumerate(H):
        v = dict(V, bos_token="<s>", **SPECIAL)
        cases.append((f"hand{i}", tpl, v))
    for i, tpl in enumerate(whitespace_fuzz(400)):
        cases.append((f"wsfuzz{i}", tpl, {}))
    for i, tpl in enumerate(expr_fuzz(1500)):
        cases.append((f"exprfuzz{i}", tpl, EXPR_VARS))
    return cases


def run_jsonl(cmd, requests):
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    proc = subprocess.run(cmd, input=lines.encode("utf-8"), stdout=subprocess.PIPE, check=False)
    # split on \n only: str.splitlines() would also split inside texts holding U+2028 and friends
    got = [json.loads(l) for l in proc.stdout.decode("utf-8").split("\n") if l]
    if proc.returncode != 0 or len(got) != len(requests):
        print(f"FAIL: {cmd[0]} exited {proc.returncode} after {len(got)} of {len(requests)} cases")
        return None
    return got


def expect(env, tpl, v):
    try:
        return ("text", env.from_string(tpl).render(**v))
    except Exception as ex:  # TemplateError, UndefinedError, SecurityError, TypeError, ...
        return ("error", f"{type(ex).__name__}: {ex}")


def main_cli(omnipipe, shared):
    """End to end through `omnipipe render --jsonl`."""
    env = make_env()
    omni, qwen3 = load_templates(shared)
    bad = total = 0
    golden = json.load(open(os.path.join(shared, "fixtures/text_golden.json"), encoding="utf-8"))["chat_template"]
    for name, tpl, mdir, mm in (("omni", omni, "tiny-omni", True), ("qwen3", qwen3, "qwen3-tokenizer", False)):
        cases, requests = [], []
        for i, conv in enumerate(conversations(mm)):
            for j, kw in enumerate(({"add_generation_prompt": True}, {"add_generation_prompt": False},
                                    {"enable_thinking": False})):
                req = dict(conv, **kw)
                v = chat_vars(conv, **kw)
                if "add_generation_prompt" not in kw:  # the render form's default
                    v["add_generation_prompt"] = True
                cases.append((f"cli/{name}/conv{i}/kw{j}", tpl, v))
                requests.append(req)
        expected = [expect(env, tpl, v) for _, tpl, v in cases]
        for k, g in enumerate(golden):
            if g["template"] == name:
                cases.append((f"cli/{name}/golden{k}", tpl, None))
                requests.append(dict(g["conversation"], **g["kwargs"]))
                expected.append(("text", g["rendered"]))
        got = run_jsonl([omnipipe, "render", "--jsonl", "--model", os.path.join(shared, "fixtures", mdir)], requests)
        if got is None:
            return 1
        bad += compare(cases, expected, got, validating=True)
        total += len(cases)
    print(f"{total - bad}/{total} end-to-end renders identical, jinja2 {jinja2.__version__}")
    return 1 if bad else 0


def compare(cases, expected, got, validating=False):
    """validating: the C side validates requests before the template runs, so a template's
    raise_exception may be pre-empted by an input error naming the message and field."""
    bad = 0
    for (cid, tpl, v), (kind, exp), g in zip(cases, expected, got):
        if kind == "error":
            if "error" not in g:
                bad += 1
                print(f"FAIL {cid}: jinja2 raised {exp!r} but C rendered {g.get('text')!r}")
            elif exp.startswith("TemplateError: "):  # raise_exception: same message, plus the line
                msg = exp.split(": ", 1)[1]
                if validating and g["error"].startswith("messages["):
                    continue
                if msg not in g["error"] or "line " not in g["error"]:
                    bad += 1
                    print(f"FAIL {cid}: error message {g['error']!r} lacks {msg!r} or the line")
            continue
        if "error" in g:
            bad += 1
            print(f"FAIL {cid}: C error {g['error']!r}; jinja2 rendered {exp!r}")
            continue
        if g["text"] != exp:
            bad += 1
            t = g["text"]
            k = next((i for i in range(min(len(t), len(exp))) if t[i] != exp[i]), min(len(t), len(exp)))
            print(f"FAIL {cid}: first difference at char {k}\n  jinja2: {exp[max(0, k - 60):k + 60]!r}\n"
                  f"  C:      {t[max(0, k - 60):k + 60]!r}")
    return bad


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    if sys.argv[1] == "--cli":
        shared = sys.argv[3] if len(sys.argv) > 3 else os.environ.get("OM_SHARED_DIR", "/work/shared")
        return main_cli(sys.argv[2], shared)
    tool = sys.argv[1]
    shared = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("OM_SHARED_DIR", "/work/shared")
    env = make_env()
    cases = build_cases(shared)
    expected = [expect(env, tpl, v) for _, tpl, v in cases]
    got = run_jsonl([tool], [{"id": k, "template": c[1], "vars": c[2]} for k, c in enumerate(cases)])
    if got is None:
        return 1
    n_err = sum(1 for e in expected if e[0] == "error")
    bad = compare(cases, expected, got)
    print(f"{len(cases) - bad}/{len(cases)} cases identical ({n_err} expected errors), jinja2 {jinja2.__version__}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
