from pathlib import Path

from pydantic import ValidationInfo, field_validator

from otel_meter.component import ComponentConfig


class RatingConfig(ComponentConfig):
    rate_card: Path | None = None
    """Rate card file, relative to the config file's directory. Without one, all usage is unpriced."""

    @field_validator("rate_card")
    @classmethod
    def _exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        base = (info.context or {}).get("config_dir")
        path = value if value.is_absolute() or base is None else Path(base) / value
        if not path.is_file():
            raise ValueError(f"file {path} not found")
        return path
