"""SQL literals for generated statements: every value written into generated SQL goes through here."""

from __future__ import annotations

from collections.abc import Sequence


def quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_array(texts: Sequence[str]) -> str:
    return "[" + ", ".join(quoted(text) for text in texts) + "]::Array(String)"


def literal(value: object) -> str:
    """An int, a bool, or anything else as its text (decimals too: the engine parses a quoted
    decimal exactly into a Decimal column, where a bare one would go through Float64)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return quoted(str(value))
