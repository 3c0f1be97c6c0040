"""Bearer token checks: every refusal names the problem and never echoes a token."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from otel_meter.extensions.bearertokenauth.authenticator import (
    AuthenticationError,
    BearerTokenAuthenticator,
    Principal,
)
from otel_meter.extensions.bearertokenauth.config import BearerTokenAuthConfig

ACME = "acme-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"


def authenticator(tmp_path: Path) -> BearerTokenAuthenticator:
    (tmp_path / "admin.token").write_text(ADMIN + "\n")
    config = BearerTokenAuthConfig.model_validate(
        {"tokens": [{"token": ACME, "customer": "acme", "name": "acme ingest"}, {"token_file": "admin.token"}]},
        context={"config_dir": tmp_path})
    return BearerTokenAuthenticator(config)


def test_known_tokens_give_their_principal_and_customer_binding(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    assert auth.authenticate(f"Bearer {ACME}") == Principal("acme ingest", "acme")
    assert auth.authenticate(f"bearer {ADMIN}") == Principal("token 2", None)


@pytest.mark.parametrize("header, message", [
    (None, "missing credentials"), ("", "missing credentials"), ("Basic abc", "malformed credentials"),
    ("Bearer", "malformed credentials"), ("Bearer wrong-token-0123456789", "unknown token"),
])
def test_refusals_say_why_without_the_token(tmp_path: Path, header: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError) as refused:
        authenticator(tmp_path).authenticate(header)
    assert message in str(refused.value)
    assert "wrong-token" not in str(refused.value)


@pytest.mark.parametrize("tokens, message", [
    ([], "at least 1 item"),
    ([{"token": "short"}], "at least 16 characters"),
    ([{"token": ACME, "token_file": "admin.token"}], "give exactly one of token and token_file"),
    ([{"token_file": "missing.token"}], "not found"),
])
def test_bad_token_config_is_refused(tmp_path: Path, tokens: list, message: str) -> None:
    (tmp_path / "admin.token").write_text(ADMIN)
    with pytest.raises(ValidationError) as refused:
        BearerTokenAuthConfig.model_validate({"tokens": tokens}, context={"config_dir": tmp_path})
    assert message in str(refused.value)
