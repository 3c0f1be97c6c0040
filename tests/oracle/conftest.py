"""The billing oracle's server and profiles.

The fast profile (default) plays a few histories per feature area through one server; the long
profile (``pytest tests/oracle --oracle-long`` or ``ORACLE_PROFILE=long``) plays many more, with
hypothesis shrinking a failure to a minimal history.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.oracle.player import OracleServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--oracle-long", action="store_true", default=False,
                     help="play the billing oracle's long profile (many more histories, shrinking on)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--oracle-long", default=False):
        os.environ["ORACLE_PROFILE"] = "long"


class ServerPool:
    """One running server at a time, replaced when its months for histories run out."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.server: OracleServer | None = None

    def get(self, recent: bool) -> tuple[OracleServer, int]:
        """A server and the base of a new history on it; ``recent``: the history exports to Stripe,
        whose windows must lie within the past 35 days."""
        base = self.server.allocate(recent) if self.server is not None else None
        if base is None:
            self.close()
            self.server = OracleServer(Path(self.factory.mktemp("oracle")))
            base = self.server.allocate(recent)
            assert base is not None
        return self.server, base

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


@pytest.fixture(scope="session")
def oracle_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(tmp_path_factory)
    yield pool
    pool.close()
