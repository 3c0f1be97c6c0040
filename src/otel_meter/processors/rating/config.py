from otel_meter.component import ComponentConfig, ConfigFile


class RatingConfig(ComponentConfig):
    rate_card: ConfigFile | None = None
    """Rate card file, relative to the config file's directory. Without one, all usage is unpriced."""
