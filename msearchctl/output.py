"""How answers are printed: JSON for scripts, or a view of `render` for people."""

from __future__ import annotations

import json
from typing import Any


def _bytes_as_text(value: Any) -> str:
    """Task data sent as bytes (from the Python API) has no JSON form: show it as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=_bytes_as_text))


def output(value: Any, as_json: bool, view: str) -> None:
    """Print an answer as JSON, or through the named view of `render` (imported only then: rich is slow)."""
    if as_json:
        print_json(value)
        return
    from msearchctl import render

    getattr(render, view)(value)
