"""otel_meter.v1: the custom events API (proto/otel_meter/v1/events.proto). Generated, committed; do not edit."""
