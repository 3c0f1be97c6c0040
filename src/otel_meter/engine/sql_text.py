"""SQL literals for generated statements: every value written into generated SQL goes through here."""

from __future__ import annotations

from collections.abc import Sequence


def quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_array(texts: Sequence[str]) -> str:
    return "[" + ", ".join(quoted(text) for text in texts) + "]::Array(String)"

