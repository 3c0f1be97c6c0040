"""Versioned APIs of otel-meter; generated code under each version (see scripts/generate-proto.sh)."""
