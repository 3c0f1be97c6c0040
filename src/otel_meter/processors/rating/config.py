from typing import Literal

from otel_meter.component_model import ComponentConfig, ConfigFile, Duration


class RatingConfig(ComponentConfig):
    rate_card: ConfigFile | None = None
    """The default card's file, relative to the config file's directory; applied at start.
    Without it (and without ``default_card``) all usage is unpriced."""
    rate_cards: list[ConfigFile] = []
    """More card files applied at start: plan cards and the cost card."""
    default_card: str | None = None
    """Id of the default card when it is not given as ``rate_card`` (e.g. applied with ``otel-meter rates apply``)."""
    cost_card: str | None = None
    """Id of the cost card (``kind: cost``): rates usage a second time, at what it costs us."""
    cost_source: Literal["card", "provider"] = "card"
    """Where the cost side (``cost``, and so the margin) comes from. ``card``: the cost card prices
    all usage. ``provider``: a span that reports its cost with ``gen_ai.usage.cost.source =
    provider`` has that cost (in its currency) instead, on its first usage row; other usage is
    priced by the cost card. Reported costs are stored either way and never billed."""
    watch: Duration | None = None
    """Check the card files this often and apply a changed one without a restart (off when unset)."""
