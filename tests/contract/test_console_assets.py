"""The console's vendored chart library is the pinned npm release the manifest names, byte for
byte (scripts/vendor-console-assets.sh writes both), and the pages load nothing from elsewhere."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import otel_meter.console

CONSOLE = Path(otel_meter.console.__file__).parent
VENDOR = CONSOLE / "static" / "vendor"
SCRIPT = Path(__file__).parents[2] / "scripts" / "vendor-console-assets.sh"


def test_vendored_files_match_the_manifest_hashes() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    listed = {entry["file"] for entry in manifest["files"]}
    assert listed == {path.name for path in VENDOR.iterdir() if path.name != "manifest.json"}
    for entry in manifest["files"]:
        assert hashlib.sha256((VENDOR / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]


def test_manifest_pins_the_release_the_vendoring_script_fetches() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    script = SCRIPT.read_text()
    assert f"PACKAGE={manifest['package']}\n" in script
    assert f"VERSION={manifest['version']}\n" in script
    header = (VENDOR / "uPlot.iife.min.js").read_text()[:200]
    assert f"v{manifest['version']}" in header or manifest["version"] in header


def test_templates_and_static_files_load_nothing_from_another_host() -> None:
    for path in [*CONSOLE.glob("templates/*.html"), *CONSOLE.glob("static/*.css"), *CONSOLE.glob("static/*.js")]:
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path.name
        assert "@import" not in text and "fonts.googleapis" not in text, path.name
