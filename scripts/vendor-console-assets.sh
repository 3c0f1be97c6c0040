#!/usr/bin/env bash
# Copy the console's chart library from the npm registry into the package (committed), and
# record its name, version and each file's sha256 in static/vendor/manifest.json
# (tests/contract/test_console_assets.py checks the files against it). Needs npm only here:
# installing or running otel-meter needs no Node.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE=uplot
VERSION=1.6.31
FILES=(dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE)
DEST=src/otel_meter/console/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null && tar xzf "$PACKAGE-$VERSION.tgz")
mkdir -p "$DEST"
entries=()
for file in "${FILES[@]}"; do
  name=$(basename "$file")
  [ "$name" = LICENSE ] && name=uPlot.LICENSE
  cp "$work/package/$file" "$DEST/$name"
  entries+=("{\"file\": \"$name\", \"from\": \"$file\", \"sha256\": \"$(sha256sum "$DEST/$name" | cut -d' ' -f1)\"}")
done
{
  printf '{\n  "package": "%s",\n  "version": "%s",\n  "registry": "https://registry.npmjs.org/",\n  "files": [\n' "$PACKAGE" "$VERSION"
  for index in "${!entries[@]}"; do
    separator=","; [ "$index" -eq $((${#entries[@]} - 1)) ] && separator=""
    printf '    %s%s\n' "${entries[$index]}" "$separator"
  done
  printf '  ]\n}\n'
} > "$DEST/manifest.json"
echo "vendored $PACKAGE@$VERSION into $DEST"
