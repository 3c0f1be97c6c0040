#!/usr/bin/env bash
# Regenerate the Python code of the events API from proto/ into src/otel_meter/api/v1/.
#
# The generated files are committed, so users and CI need no codegen; run this after
# changing a .proto file, and commit what it writes.
#
#   scripts/generate-proto.sh
#
# Tool: grpcio-tools, at the exact version pinned in pyproject.toml's `dev` extra
# (GRPCIO_TOOLS_VERSION in the environment overrides it). It is
# installed into a throwaway virtual environment (build/proto-tools) rather than the
# project's: the pinned version is deliberately old, as the one opentelemetry-proto is
# generated with (gencode for protobuf 5.26, grpc 1.63), so the committed code runs on
# every protobuf >= 5.26 and grpcio the package accepts, and installing it into the
# project's environment would downgrade protobuf there.
#
# Layout: the .proto files live at proto/otel_meter/v1/ (proto package otel_meter.v1, its
# file name as other languages import it). protoc names Python modules after that path
# (otel_meter.v1.events_pb2), but the package is otel_meter.api.v1 so that it sits inside
# the installed `otel_meter` package without clashing with it. So protoc writes into a
# temporary directory with `-I proto`, and this script moves the files to
# src/otel_meter/api/v1/ and rewrites the two references to the module name: the grpc
# module's `from otel_meter.v1 import events_pb2` and the module name the _pb2 registers
# its classes under. The descriptor's file name stays otel_meter/v1/events.proto.
# The result is checked by importing it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${GRPCIO_TOOLS_VERSION:-$(python3 - <<'PY'
import re, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
pins = [re.fullmatch(r"grpcio-tools==([0-9.]+)", item) for item in extras["dev"]]
print(next(m.group(1) for m in pins if m))
PY
)}
tools=build/proto-tools
if ! "$tools/bin/python" -c "import grpc_tools, importlib.metadata as m, sys; sys.exit(m.version('grpcio-tools') != '$version')" 2>/dev/null; then
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "grpcio-tools==$version"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$tools/bin/python" -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/otel_meter/v1/*.proto

target=src/otel_meter/api/v1
mkdir -p "$target"
for generated in "$out"/otel_meter/v1/*.py "$out"/otel_meter/v1/*.pyi; do
  name=$(basename "$generated")
  sed -e 's/^from otel_meter\.v1 import \(.*_pb2\) as /from otel_meter.api.v1 import \1 as /' \
      -e "s/'otel_meter\.v1\.\([a-z_]*_pb2\)'/'otel_meter.api.v1.\1'/" \
      "$generated" > "$target/$name"
done
if grep -n "otel_meter\.v1\.[a-z_]*_pb2\|from otel_meter\.v1 import" "$target"/*_pb2*.py*; then
  echo "generate-proto.sh: module references left unrewritten (above)" >&2
  exit 1
fi

PYTHONPATH=src "$tools/bin/python" -c "
from otel_meter.api.v1 import events_pb2, events_pb2_grpc
assert events_pb2.IngestRequest.__module__ == 'otel_meter.api.v1.events_pb2'
assert events_pb2.DESCRIPTOR.name == 'otel_meter/v1/events.proto'
assert events_pb2_grpc.EventsServiceStub and events_pb2_grpc.EventsServiceServicer
"
echo "generated: $(cd "$target" && ls *_pb2*)"
