"""The web console: server-rendered pages (Jinja2) of usage, spend, customers, rate cards,
billing and ingest health, and a portal page for one customer, served by the usage API's ASGI
app. Every number comes from the application layer's documents (otel_meter.app), the same the
API returns; static files (the chart library included) ship in the package, so the console
works offline."""
