import logging
import time

from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.errors import StoreUnavailableError
from otel_meter.processors.dedup.config import DedupConfig
from otel_meter.processors.dedup.index import DedupIndex
from otel_meter.processors.dedup.processor import DedupProcessor

TYPE = "dedup"
logger = logging.getLogger(__name__)


def create(config: DedupConfig, context: BuildContext) -> DedupProcessor:
    store = context.host.store()
    now = time.time_ns()
    horizon = now - int(config.preload.total_seconds() * 1e9)
    index = DedupIndex(
        window_ns=int(config.window.total_seconds() * 1e9),
        max_cached_keys=config.max_cached_keys,
        lookup=store.stored_event_ids if store is not None else None,
        horizon_ns=horizon if store is not None else 0,
        shared_store=config.shared_store,
    )
    if store is not None:
        try:
            loaded = store.recent_event_ids(horizon)
        except StoreUnavailableError as error:
            # Nothing stored is known: every event older than now is checked against the
            # store (refused retryably until it answers); the queued ones are known here.
            index.horizon_ns = now
            loaded = store.queued_event_ids()
            logger.warning("dedup index: %s; loaded the %d queued event ids only, older events are checked "
                           "against the store once it answers", error, len(loaded))
        index.load(loaded)
        logger.info("dedup index loaded %d event ids newer than the preload horizon", len(index))
    return DedupProcessor(index)


FACTORY = register(Factory(type=TYPE, kind=Kind.PROCESSOR, config_model=DedupConfig, create=create))
