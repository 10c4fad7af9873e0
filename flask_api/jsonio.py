"""Flask's JSON through orjson: request bodies parsed and responses written 3-5x faster.

A 1000-applicant request is ~0.5 MB of JSON each way; with the standard library
parsing and serialising it cost more than scoring it. orjson is also stricter,
which is what an API wants: NaN/Infinity literals and integers beyond 64 bits are
malformed JSON (400), and non-finite floats are written as null, never as the
invalid ``NaN`` token.
"""

from __future__ import annotations

import decimal
import json
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    """What orjson does not know natively, as Flask's own provider would write it."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps_bytes(obj: Any) -> bytes:
    """A JSON response body, exactly as the app's provider writes it."""
    return orjson.dumps(obj, default=_default, option=OPTIONS)


class OrjsonProvider(JSONProvider):
    """Drop-in JSON provider for ``app.json`` (keys keep their insertion order)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps_bytes(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if isinstance(s, bytes | bytearray):
            encoding = json.detect_encoding(s)  # RFC 8259 wants UTF-8; accept UTF-16/32 as the stdlib does
            if encoding != "utf-8":
                s = s.decode(encoding)
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(dumps_bytes(obj), mimetype="application/json")
