"""Render a model's Jinja chat template the way transformers does, without transformers.

Backends that do not carry a tokenizer with a template engine (llama.cpp) render prompts
here. The environment matches transformers' `apply_chat_template` (sandboxed, trim/lstrip
blocks, loop controls, `tojson` that keeps non-ASCII text, `raise_exception`,
`strftime_now`), so a template renders to the same string in every backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any


class TemplateError(ValueError):
    """The template itself refused the conversation (`raise_exception` in the template)."""


def render(template: str, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
           tools: Sequence[dict[str, Any]] | None = None, **kwargs: Any) -> str:
    return _compile(template).render(messages=list(messages), tools=list(tools) if tools else None,
                                     add_generation_prompt=add_generation_prompt, **kwargs)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
