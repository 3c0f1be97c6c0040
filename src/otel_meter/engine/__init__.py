"""The engine-side hot path: raw OTLP requests inserted into ClickHouse, extracted there."""
