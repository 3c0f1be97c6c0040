import logging

from otel_meter.component_model import BuildContext, Factory, Kind, register
from otel_meter.processors.rating.config import RatingConfig
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.registry import RateCardRegistry

TYPE = "rating"
logger = logging.getLogger(__name__)


def create(config: RatingConfig, context: BuildContext) -> RatingProcessor:
    """One registry per rating component: pipelines that share ``rating`` share its cards, and
    the usage API applies cards through it (``Host.rate_cards``)."""
    registry = context.host.rate_cards().get(context.component_id)
    if registry is None:
        registry = RateCardRegistry.from_config(config, context.host.store(), f"processors.{context.component_id}")
        context.host.add_rate_cards(context.component_id, registry)
    if registry.book.default_card is None:
        logger.warning("processors.%s has no rate card: all usage is stored unpriced", context.component_id)
    return RatingProcessor(registry, config.cost_source)


FACTORY = register(Factory(type=TYPE, kind=Kind.PROCESSOR, config_model=RatingConfig, create=create))
