"""Builds the running service from a validated config and owns its lifecycle."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Hashable, Mapping

from otel_meter.billing.config import BillingSection
from otel_meter.billing.scheduler import BillingScheduler
from otel_meter.component_model import EVENTS, BuildContext, Kind, factories
from otel_meter.config import ServiceConfig, component_type
from otel_meter.engine.feed import EngineTraceFeed
from otel_meter.engine.support import unsupported_reason
from otel_meter.extensions.budgets.monitor import BudgetMonitor
from otel_meter.meters.definitions import MeterDefinition
from otel_meter.pipeline import UsagePipeline
from otel_meter.processors.genai_usage.token_sources import TokenSources
from otel_meter.rating.registry import RateCardRegistry
from otel_meter.receivers.otlp.receiver import OtlpReceiver
from otel_meter.security import Authenticator
from otel_meter.storage.store import Store
from otel_meter.telemetry.registry import ServiceMetrics

logger = logging.getLogger(__name__)

QUEUE_FULL_FRACTION = 0.95
"""A local queue holding this share of ``sending_queue.max_size_mib`` counts as full for ``/readyz``."""


class ServiceHost:
    """The :class:`~otel_meter.component_model.Host` of one service: what its components share."""

    def __init__(self, config: ServiceConfig, extension: Callable[[str], Any], metrics: ServiceMetrics,
                 readiness: Callable[[], tuple[bool, str]], queued_records: Callable[[], int]) -> None:
        self._config = config
        self._extension = extension
        self._metrics = metrics
        self._readiness = readiness
        self._queued_records = queued_records
        self.stores: dict[Hashable, Store] = {}
        """By endpoint and database, in the order opened (exporters are built in id order)."""
        self._rate_cards: dict[str, RateCardRegistry] = {}
        self._budgets: BudgetMonitor | None = None
        self._billing_scheduler: BillingScheduler | None = None
        self._token_sources = TokenSources()

    def open_store(self, key: Hashable, opener: Callable[[], Store]) -> Store:
        if key not in self.stores:
            self.stores[key] = opener()
        return self.stores[key]

    def store(self) -> Store | None:
        return next(iter(self.stores.values()), None)

    def extension(self, extension_id: str) -> Any:
        return self._extension(extension_id)

    def authenticator(self, extension_id: str) -> Authenticator:
        authenticator: Authenticator = self._extension(extension_id)
        return authenticator

    def rate_cards(self) -> Mapping[str, RateCardRegistry]:
        return self._rate_cards

    def add_rate_cards(self, processor_id: str, registry: RateCardRegistry) -> None:
        self._rate_cards[processor_id] = registry

    def budgets(self) -> BudgetMonitor | None:
        return self._budgets

    def add_budgets(self, monitor: BudgetMonitor) -> None:
        self._budgets = monitor

    def billing_scheduler(self) -> BillingScheduler | None:
        return self._billing_scheduler

    def start_billing_scheduler(self) -> None:
        """Start the scheduler of ``billing.schedules`` (exports need a store to read from)."""
        store = self.store()
        if self._config.billing.schedules and store is not None:
            self._billing_scheduler = BillingScheduler(self._config.billing, store)
            self._billing_scheduler.start()

    def billing(self) -> BillingSection:
        return self._config.billing

    def meters(self) -> dict[str, MeterDefinition]:
        return self._config.meters

    def token_sources(self) -> TokenSources:
        return self._token_sources

    def metrics(self) -> ServiceMetrics:
        return self._metrics

    def readiness(self) -> tuple[bool, str]:
        return self._readiness()

    def queued_records(self) -> int:
        return self._queued_records()


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.receivers: dict[str, OtlpReceiver] = {}
        self.exporters: dict[str, Any] = {}
        self.extensions: dict[str, Any] = {}
        self.pipelines: list[UsagePipeline] = []
        self.feeds: list[EngineTraceFeed] = []
        """Pipelines whose extraction runs in the engine (``extraction: engine``)."""
        metrics = ServiceMetrics(self.pipelines, self.exporters, self.receivers, self.feeds)
        self.host = ServiceHost(config, self._extension, metrics, self.readiness, self.queued_records)
        self._stop_requested = threading.Event()
        self._shut_down = False
        self._started = False
        self._build()

    def _context(self, component_id: str) -> BuildContext:
        return BuildContext(config_dir=self.config.config_dir, component_id=component_id, host=self.host)

    @property
    def stores(self) -> Mapping[Hashable, Store]:
        """The stores the exporters write to, one per endpoint and database."""
        return self.host.stores

    @property
    def rate_cards(self) -> Mapping[str, RateCardRegistry]:
        """The rate card registries, by rating processor id."""
        return self.host.rate_cards()

    @property
    def billing_scheduler(self) -> BillingScheduler | None:
        return self.host.billing_scheduler()

    def _build(self) -> None:
        config = self.config
        used_exporters = {e for p in config.service.pipelines.values() for e in p.exporters}
        # Exporters first, in id order: each opens its store through the host, and the first
        # store opened is the one processors and extensions read (Host.store).
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

    def _engine_feed(self, name: str, extraction: str, usage: UsagePipeline, converter: Any,
                     exporters: list[Any]) -> EngineTraceFeed | None:
        """The engine feed of a pipeline with ``extraction: engine`` that the engine supports."""
        if extraction != "engine":
            return None
        reason = unsupported_reason(usage.signal, converter, exporters, self.config.meters)
        if reason is None and getattr(converter, "nested", None) is not None:
            reason = ("nested usage (genai_usage nested_usage.enabled) holds aggregate and framework-level spans, "
                      "which only the Python path does; set nested_usage.enabled: false to use the engine")
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
        self.host.start_billing_scheduler()
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
        for pipeline in self.pipelines:
            pipeline.shutdown()
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
