"""SIGTERM under load: the request being uploaded is still answered, what is queued is flushed
into the store before the process exits with status 0, so the store alone (no replay at the
next start) holds every acknowledged span exactly once."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.integration.fault_harness import (
    WHOLE,
    Answer,
    Ledger,
    Server,
    assert_stored_exactly_once,
    encode,
    make_batches,
    post_http,
    store_totals,
)


def keep_sending(server: Server, batches: dict[str, list], ledger: Ledger, use_sdk: bool,
                 stop: threading.Event) -> None:
    """Send the batches one after another until the server stops answering."""
    exporter = OTLPSpanExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=2) if use_sdk else None
    try:
        for key, spans in batches.items():
            if stop.is_set():
                return
            if exporter is not None:
                success = exporter.export(spans) == SpanExportResult.SUCCESS
                answer = Answer(success, "sdk-ok" if success else "sdk-failed")
            else:
                answer = post_http(server, encode(spans), timeout=10)
            ledger.record(key, answer)
            if not answer.acknowledged:
                return
    finally:
        if exporter is not None:
            exporter.shutdown()


def test_sigterm_answers_requests_in_flight_and_flushes_the_queue_into_the_store_before_exit(tmp_path: Path) -> None:
    server = Server(workdir=tmp_path)
    # Nothing reaches the store on its own before the shutdown: it all waits for the flush.
    server.configure(exporter_settings="flush_interval: 1h\nbatch_size: 10000000")
    server.start()
    assert server.process is not None
    ledger = Ledger()
    stop = threading.Event()
    senders = [threading.Thread(target=keep_sending, args=(server, make_batches(f"load{n}", 150), ledger, n % 2 == 0,
                                                           stop)) for n in range(6)]
    try:
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 30
        while len(ledger.acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        # A request whose body is half uploaded when the signal comes.
        slow_key, slow_spans = next(iter(make_batches("slow", 1).items()))
        body = encode(slow_spans)
        upload = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        upload.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: meter\r\nContent-Type: application/x-protobuf\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        time.sleep(0.2)
        assert server.healthz()["queued_records"] > 0, "nothing queued: the test would prove nothing"

        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the servers have stopped taking requests; this one is in flight
        upload.sendall(body[len(body) // 2:])
        answer = upload.recv(65536).decode(errors="replace")
        upload.close()
        assert answer.startswith("HTTP/1.1 200 "), answer

        assert server.exit_code(timeout=60) == 0
        stop.set()
        for sender in senders:
            sender.join()
    finally:
        stop.set()
        server.kill()
    log = server.log()
    assert "otel-meter stopped" in log
    assert "stay queued" not in log, log
    assert len(ledger.acknowledged) > 20, ledger.outcomes
    # Read with the server stopped and never restarted: no replay has helped.
    acknowledged = ledger.acknowledged | {slow_key}
    stored_keys = acknowledged | (ledger.attempted - ledger.acknowledged)
    totals = store_totals(tmp_path / "data")
    for table, by_customer in totals.items():
        assert acknowledged <= set(by_customer), f"{table}: acknowledged but not stored: {acknowledged - set(by_customer)}"
        assert set(by_customer) <= stored_keys, f"{table}: stored but never sent"
        assert all(quantity == WHOLE for quantity, _ in by_customer.values()), table
    assert_stored_exactly_once(tmp_path / "data", set(totals["usage_events"]))
