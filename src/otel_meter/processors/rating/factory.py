import logging

from otel_meter.component import BuildContext, Factory, Kind, register
from otel_meter.processors.rating.config import RatingConfig
from otel_meter.processors.rating.processor import RatingProcessor
from otel_meter.rating.rate_card import load_rate_card

TYPE = "rating"
logger = logging.getLogger(__name__)


def create(config: RatingConfig, context: BuildContext) -> RatingProcessor:
    if config.rate_card is None:
        logger.warning("processors.%s has no rate_card: all usage is stored unpriced", context.component_id)
        return RatingProcessor(None)
    card = load_rate_card(config.rate_card)
    logger.info("rate card %s version %s loaded with %d model rules", card.id, card.version, len(card.model.models))
    return RatingProcessor(card)


FACTORY = register(Factory(type=TYPE, kind=Kind.PROCESSOR, config_model=RatingConfig, create=create))
