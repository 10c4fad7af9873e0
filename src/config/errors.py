"""One-line configuration errors: the key path, the value, and what is allowed.

pydantic validates every section strictly; :func:`config_error` turns its first error
into one ``ConfigError`` line, with the closest valid key for a misspelt one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

SOURCE = "params.yaml"


class ConfigError(ValueError):
    """params.yaml is missing a key or holds a value the pipeline cannot use."""


class KeyProblem(ValueError):
    """Raised inside a validator: ``key`` (relative to the model being checked, may be '') is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


# What pydantic puts in an error's location besides keys: the union member or validator it tried.
_SCHEMA_TAG = re.compile(r"^(?:function-[a-z-]+\[.*\]|(?:union|dict|list|tuple|literal|nullable|lax-or-strict|"
                         r"json-or-python|chain|constrained-\w+)\[.*|int|float|str|bool|none|is-instance\[.*)$")


def key_path(*parts: Any) -> str:
    return ".".join(str(p) for p in parts if p not in ("", None))


def _allowed(error: dict[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    simple = {
        "bool_type": "true or false", "int_type": "a whole number", "float_type": "a number",
        "string_type": "text", "dict_type": "a mapping (key: value)", "list_type": "a list",
        "finite_number": "a finite number", "none_required": "null",
    }
    if kind in simple:
        return simple[kind]
    bounds = {"greater_than": "above", "greater_than_equal": "at least", "less_than": "below",
              "less_than_equal": "at most"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"a number {bounds[kind]} {limit}"
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}".replace("'", "")
    if kind == "string_too_short":
        return "non-empty text"
    return error["msg"][0].lower() + error["msg"][1:]


def _fields(model: type[BaseModel] | None, loc: Iterable[Any]) -> list[str]:
    """The valid keys at the place ``loc`` points into (for 'did you mean')."""
    current: Any = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
        while True:  # unwrap Optional[...] and dict[str, Model] (whose next loc part is a key)
            args = [a for a in getattr(current, "__args__", ()) if a is not type(None)]
            if getattr(current, "__origin__", None) is dict and parts:
                parts.pop(0)
                current = args[-1]
            elif args and not (isinstance(current, type) and issubclass(current, BaseModel)):
                current = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0])
                if getattr(current, "__origin__", None) is not dict:
                    break
            else:
                break
    return list(getattr(current, "model_fields", {}))


def config_error(exc: ValidationError, prefix: tuple[Any, ...] = (), model: type[BaseModel] | None = None,
                 source: str = SOURCE) -> ConfigError:
    """The first of pydantic's errors as one line naming the key path (``prefix`` + the error's location)."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and _SCHEMA_TAG.match(p)))
    where = key_path(*prefix, *loc)
    kind = error["type"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, KeyProblem):
        return ConfigError(f"{source}: '{key_path(where, cause.key)}' {cause.message}")
    if kind == "missing":
        return ConfigError(f"{source}: missing key '{where}'")
    if kind == "extra_forbidden":
        known = _fields(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{key_path(*prefix, *loc[:-1], close[0])}'?)" if close else (
            f" (known: {', '.join(known)})" if known else "")
        return ConfigError(f"{source}: unknown key '{where}'{hint}")
    return ConfigError(f"{source}: '{where}' is {error['input']!r}; it must be {_allowed(error)}")
