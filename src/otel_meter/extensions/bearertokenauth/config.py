from pathlib import Path

from pydantic import Field, field_validator, model_validator

from otel_meter.component_model import ComponentConfig, ConfigFile


class TokenConfig(ComponentConfig):
    """One accepted token, given by value (use ``${env:NAME}``) or read from a file."""

    token: str | None = Field(default=None, min_length=16)
    token_file: ConfigFile | None = None
    customer: str | None = Field(default=None, min_length=1)
    """Bind the token to a customer: usage sent with it is that customer's, whatever the
    attributes say, and a read token sees only that customer's usage."""
    name: str | None = None
    """A label for logs; the token itself is never logged."""

    @field_validator("token_file")
    @classmethod
    def _holds_a_token(cls, path: Path | None) -> Path | None:
        if path is not None and len(path.read_text().strip()) < 16:
            raise ValueError(f"file {path} holds no token of at least 16 characters")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> "TokenConfig":
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token and token_file")
        return self

    def secret(self) -> str:
        if self.token is not None:
            return self.token
        assert self.token_file is not None  # the validator above requires one of the two
        return self.token_file.read_text().strip()


class BearerTokenAuthConfig(ComponentConfig):
    """Bearer tokens, as the Collector's ``bearertokenauth`` extension: clients send
    ``Authorization: <scheme> <token>`` (HTTP) or the same as gRPC metadata."""

    scheme: str = "Bearer"
    tokens: list[TokenConfig] = Field(min_length=1)
