"""The service's self-telemetry: what it received, accepted, refused, queued and stored.

``counts`` holds the plain counters the pipelines update once per request; ``registry``
exposes them, with the exporters' figures, as Prometheus metrics (``GET /metrics``).
"""
