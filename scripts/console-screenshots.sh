#!/usr/bin/env bash
# Regenerate the console's screenshots (docs/images/console-*.png): the browser tests take them
# against a real server on chDB with usage sent over OTLP. Needs Debian's chromium
# (apt-get install -y chromium) and the test extra (pip install -e '.[test]').
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pytest tests/integration/test_console_browser.py -q -p no:cacheprovider
ls docs/images/console-*.png
