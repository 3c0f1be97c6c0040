"""``otel-meter rates validate``: card files checked together without a store or a server, one
line per valid file, or one JSON document with ``--format json``."""

from __future__ import annotations

import json
from pathlib import Path

from otel_meter import cli

LIST_CARD = """id: list
currency: USD
versions:
  - version: "2026-01"
    effective_from: 2026-01-01T00:00:00Z
    models: [{match: 'gpt-4o*', prices: {input_tokens: '2.50', output_tokens: '10.00'}}]
  - version: "2026-06"
    effective_from: 2026-06-01T00:00:00Z
    models: [{match: 'gpt-4o*', prices: {input_tokens: '2.00', output_tokens: '8.00'}}]
"""


def test_rates_validate_prints_one_line_per_valid_file(tmp_path: Path, capsys) -> None:
    card = tmp_path / "list.yaml"
    card.write_text(LIST_CARD)
    assert cli.main(["rates", "validate", str(card)]) == 0
    assert capsys.readouterr().out == f"{card}: valid: card list, 2 version(s): 2026-01, 2026-06\n"


def test_rates_validate_format_json_names_each_file_its_card_and_versions(tmp_path: Path, capsys) -> None:
    card = tmp_path / "list.yaml"
    card.write_text(LIST_CARD)
    assert cli.main(["rates", "validate", str(card), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "files": [{"file": str(card), "card": "list", "versions": ["2026-01", "2026-06"]}]}


def test_rates_validate_refuses_a_bad_card_with_exit_status_2(tmp_path: Path, capsys) -> None:
    card = tmp_path / "bad.yaml"
    card.write_text("currency: USD\nmodels:\n  - match: 'x'\n    prices: {input_tokens: 'abc'}\n")
    assert cli.main(["rates", "validate", str(card), "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "input_tokens" in captured.err
