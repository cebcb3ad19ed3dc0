"""Chat templates of HF tokenizer folders, rendered with jinja2 as transformers renders them.

    template = load_chat_template("path/to/checkpoint")     # chat_template.jinja or tokenizer_config.json
    text = render(template, messages, add_generation_prompt=True, special_tokens=special_tokens("..."))

Behaviour follows `transformers==5.24` `tokenizer.apply_chat_template(..., tokenize=False)`: the
same sandboxed environment (trim_blocks, lstrip_blocks, loop controls), the same globals
(`raise_exception`, `strftime_now`, `dict`, `namespace`), `tojson` as transformers defines it
(json.dumps without HTML escaping, non-ASCII kept), `messages`, `tools=None`, `documents=None`,
`add_generation_prompt` and the named special tokens (`bos_token`, `eos_token`, ...) passed
as variables. Token ids: encode the rendered text without adding special tokens, as
transformers does (the template writes them).
"""
from __future__ import annotations

import datetime
import functools
import json
import pathlib
from typing import Any, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
import jinja2.utils

NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format: str) -> str:  # noqa: A002  (the name templates call it with)
    return datetime.datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` in templates without attribute access to the real type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace refusing underscore-prefixed attributes (as transformers' does)."""

    def __init__(*args, **kwargs):  # jinja's signature trick: `namespace(self=...)` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes, got {name!r}")


@functools.lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    """The template compiled in transformers' environment (cached per template text)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_TemplateDict(), namespace=_Namespace)
    return env.from_string(template)


def render(template: str, messages: Sequence[dict], *, add_generation_prompt: bool = False,
           special_tokens: dict[str, str] | None = None, **kwargs: Any) -> str:
    """The conversation `messages` ([{"role", "content"}, ...]) as the model's prompt text.

    `special_tokens`: the tokenizer's named special tokens (`special_tokens(folder)`);
    `kwargs` become template variables too (they override special tokens, as in transformers).
    A template's `raise_exception` raises jinja2.exceptions.TemplateError."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(f"messages[{i}] is {type(message).__name__}, not a dict")
    variables = {**(special_tokens or {}), **kwargs}
    return compile_template(template).render(
        messages=[dict(m) for m in messages], tools=None, documents=None,
        add_generation_prompt=add_generation_prompt, **variables)


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_chat_template(folder: str | pathlib.Path, name: str = "default") -> str:
    """The chat template of a tokenizer folder: chat_template.jinja (transformers 5 saves it
    there) or tokenizer_config.json's `chat_template` (a string, or a list of named ones)."""
    folder = pathlib.Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = _read_json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {t["name"]: t["template"] for t in template}
        if name not in named:
            raise ValueError(f"{folder}/tokenizer_config.json: no chat template named {name!r} "
                             f"(it has {sorted(named)})")
        template = named[name]
    if not template:
        raise ValueError(f"{folder} has no chat template (looked for chat_template.jinja and "
                         "tokenizer_config.json's chat_template)")
    return template


def special_tokens(folder: str | pathlib.Path) -> dict[str, str]:
    """The named special tokens of a tokenizer folder ({"bos_token": "<s>", ...}), from
    special_tokens_map.json overridden by tokenizer_config.json (as transformers merges them)."""
    folder = pathlib.Path(folder)
    config = {**_read_json(folder / "special_tokens_map.json"),
              **_read_json(folder / "tokenizer_config.json")}
    out = {}
    for name in NAMED_SPECIAL_TOKENS:
        token = config.get(name)
        token = token["content"] if isinstance(token, dict) else token
        if token is not None:
            out[name] = token
    return out
