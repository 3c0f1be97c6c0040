"""Builds the running service from a validated config and owns its lifecycle."""

from __future__ import annotations

import logging
import threading

from otel_meter.billing.scheduler import BillingScheduler
from otel_meter.component_model import EVENTS, BuildContext, Kind, factories
from otel_meter.config import ServiceConfig, component_type
from otel_meter.engine.feed import EngineTraceFeed
from otel_meter.engine.support import unsupported_reason
from otel_meter.exporters.clickhouse.config import ClickHouseExporterConfig
from otel_meter.exporters.clickhouse.factory import queue_directory
from otel_meter.pipeline import UsagePipeline
from otel_meter.receivers.otlp.receiver import OtlpReceiver
from otel_meter.storage.store import Store, resolve_location
from otel_meter.telemetry.registry import ServiceMetrics

logger = logging.getLogger(__name__)

QUEUE_FULL_FRACTION = 0.95
"""A local queue holding this share of ``sending_queue.max_size_mib`` counts as full for ``/readyz``."""


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.stores: dict[tuple[str, str], Store] = {}
        self.receivers: dict[str, OtlpReceiver] = {}
        self.exporters: dict[str, object] = {}
        self.extensions: dict[str, object] = {}
        self.pipelines: list[UsagePipeline] = []
        self.feeds: list[EngineTraceFeed] = []
        """Pipelines whose extraction runs in the engine (``extraction: engine``)."""
        self.shared: dict[str, object] = {"stores": self.stores, "store": None, "queued": self.queued_records,
                                          "meters": config.meters, "extension": self._extension, "rate_cards": {},
                                          "metrics": ServiceMetrics(self.pipelines, self.exporters, self.receivers),
                                          "billing": config.billing, "readiness": self.readiness}
        self.billing_scheduler: BillingScheduler | None = None
        self._stop_requested = threading.Event()
        self._shut_down = False
        self._started = False
        self._build()

    def _context(self, component_id: str) -> BuildContext:
        self.shared["store"] = next(iter(self.stores.values()), None)
        return BuildContext(config_dir=self.config.config_dir, component_id=component_id, shared=self.shared)

    @property
    def rate_cards(self) -> dict:
        """The rate card registries, by rating processor id."""
        return self.shared["rate_cards"]  # type: ignore[return-value]

    def _build(self) -> None:
        config = self.config
        used_exporters = {e for p in config.service.pipelines.values() for e in p.exporters}
        for exporter_id in sorted(used_exporters):
            exporter_config = config.component(Kind.EXPORTER, exporter_id)
            if isinstance(exporter_config, ClickHouseExporterConfig):
                key = exporter_config.store_key
                if key not in self.stores:
                    # A server that cannot be reached yet does not stop the start: the store
                    # connects and migrates on first use; the local copy of the rate cards
                    # lives next to the first exporter's queue.
                    location = resolve_location(exporter_config.endpoint, exporter_config.database)
                    state = None if location.embedded_path else queue_directory(exporter_config, location)
                    store = Store.open(location, migrate=exporter_config.create_schema, state_directory=state,
                                       send_receive_timeout=exporter_config.timeout.total_seconds())
                    logger.info("usage store: %s", store.location.describe())
                    self.stores[key] = store
        for exporter_id in sorted(used_exporters):
            exporter = self._create(Kind.EXPORTER, exporter_id)
            exporter.recover()
            self.exporters[exporter_id] = exporter

        # Extensions before receivers: an authenticator must exist when a server that uses it
        # is built (and the usage API may use one too; _extension builds those it names first).
        for extension_id in config.service.extensions:
            self._extension(extension_id)

        for name, pipeline in config.service.pipelines.items():
            signal = name.split("/", 1)[0]
            processors = [self._create(Kind.PROCESSOR, pid) for pid in pipeline.processors]
            converter = processors.pop(0) if signal != EVENTS else None
            exporters = [self.exporters[e] for e in pipeline.exporters]
            usage = UsagePipeline(name, signal, converter, processors, exporters)
            self.pipelines.append(usage)
            feed = self._engine_feed(name, pipeline.extraction, usage, converter, exporters)
            for receiver_id in pipeline.receivers:
                if receiver_id not in self.receivers:
                    self.receivers[receiver_id] = self._create(Kind.RECEIVER, receiver_id)
                if feed is None:
                    self.receivers[receiver_id].add_consumer(signal, usage.consume)
                else:
                    self.receivers[receiver_id].add_consumer(signal, feed.consume, takes_body=True)

    def _engine_feed(self, name: str, extraction: str, usage: UsagePipeline, converter: object,
                     exporters: list) -> EngineTraceFeed | None:
        """The engine feed of a pipeline with ``extraction: engine`` that the engine supports."""
        if extraction != "engine":
            return None
        reason = unsupported_reason(usage.signal, converter, exporters, self.config.meters)
        if reason is not None:
            logger.warning("service.pipelines.%s.extraction: engine is not used, spans are extracted in Python: %s",
                           name, reason)
            return None
        first = exporters[0]
        directory = first.journal.directory.parent / f"engine-{name.replace('/', '-')}"
        feed = EngineTraceFeed(usage, converter, first.store, directory, first.journal.max_bytes)
        self.feeds.append(feed)
        logger.info("pipeline %s: spans are extracted in the embedded ClickHouse engine (journal %s)", name, directory)
        return feed

    def _extension(self, extension_id: str):
        """The extension, built on first use (the config check made sure it is listed in
        ``service.extensions``)."""
        if extension_id not in self.extensions:
            self.extensions[extension_id] = self._create(Kind.EXTENSION, extension_id)
        return self.extensions[extension_id]

    def _create(self, kind: Kind, component_id: str):
        factory = factories(kind)[component_type(component_id)]
        return factory.create(self.config.component(kind, component_id), self._context(component_id))

    def queued_records(self) -> int:
        """Acknowledged usage records not yet in the store, over all exporters."""
        return (sum(getattr(exporter, "queued_records", 0) for exporter in self.exporters.values())
                + sum(feed.queued_records for feed in self.feeds))

    def queue_room(self) -> list[tuple[str, int, int]]:
        """(exporter id, bytes queued, ``sending_queue.max_size_mib`` in bytes) of each local queue."""
        room = []
        for exporter_id, exporter in self.exporters.items():
            journal = getattr(exporter, "journal", None)
            if journal is not None:
                room.append((exporter_id, journal.pending_bytes, journal.max_bytes))
        return room

    def readiness(self) -> tuple[bool, str]:
        """Whether the service takes data now, and why not (read by ``GET /readyz``).

        Not ready while starting (receivers not listening yet), once shutdown began, and while a
        local queue is at least ``QUEUE_FULL_FRACTION`` full (new requests would be refused with
        429). The store being down alone does not make it unready: the queue takes the data."""
        if self._shut_down:
            return False, "shutting down"
        if not self._started:
            return False, "starting"
        for exporter_id, queued, limit in self.queue_room():
            if queued >= limit * QUEUE_FULL_FRACTION:
                return False, (f"exporters.{exporter_id}: local queue full ({queued} of {limit} bytes); the store "
                               f"is not taking usage fast enough")
        return True, "ready"

    def start(self) -> None:
        for exporter in self.exporters.values():
            exporter.start()
        for feed in self.feeds:
            feed.start()
        for registry in self.rate_cards.values():
            registry.start()
        if self.config.billing.schedules and self.shared["store"] is not None:
            self.billing_scheduler = BillingScheduler(self.config.billing, self.shared["store"])
            self.shared["billing_scheduler"] = self.billing_scheduler
            self.billing_scheduler.start()
        for extension in self.extensions.values():
            extension.start()
        for receiver in self.receivers.values():
            receiver.start()
        self._started = True
        logger.info("otel-meter started", extra={"pipelines": [p.name for p in self.pipelines]})

    def shutdown(self) -> None:
        """Stop receiving, let in-flight requests finish and be stored, flush, close."""
        if self._shut_down:
            return
        self._shut_down = True
        logger.info("shutting down: draining requests and flushing usage")
        for receiver in self.receivers.values():
            receiver.shutdown()
        for feed in self.feeds:
            feed.shutdown()
        for exporter in self.exporters.values():
            exporter.shutdown()
        if self.billing_scheduler is not None:
            self.billing_scheduler.shutdown()
        for extension in self.extensions.values():
            extension.shutdown()
        for registry in self.rate_cards.values():
            registry.shutdown()
        for store in self.stores.values():
            store.close()
        logger.info("otel-meter stopped")

    def request_stop(self) -> None:
        """Safe from a signal handler: the main thread then runs :meth:`shutdown`."""
        self._stop_requested.set()

    def wait(self) -> None:
        # Wake up now and then: a signal delivered to another thread (gRPC's or ClickHouse's)
        # only runs its Python handler when the main thread gets to run bytecode.
        while not self._stop_requested.wait(0.2):
            pass
