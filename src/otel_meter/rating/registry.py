"""The rate cards a running server rates with: their history in the store, applied atomically.

Cards live in ClickHouse (``rate_cards``), one row per version with its content, so any past
rating can be explained. Card files named in the config are applied at start and, with
``watch``, whenever they change; ``otel-meter rates apply`` and ``POST /v1/rate-cards`` apply
through the running server. Applying builds and checks the whole new book first: a bad card
changes nothing. A version is immutable: the same name with other content is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from otel_meter.errors import RateCardError
from otel_meter.rating.rate_book import RateBook
from otel_meter.rating.rate_card import CardVersion, RateCard, load_rate_card

if TYPE_CHECKING:
    from otel_meter.processors.rating.config import RatingConfig
    from otel_meter.storage.store import Store

logger = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL = 60.0
"""Seconds between two log lines of the same lasting failure of a watched card file."""


@dataclass(frozen=True)
class ApplyResult:
    card_id: str
    added: tuple[str, ...]
    """Versions new to the store."""
    unchanged: tuple[str, ...]
    """Versions already applied with the same content."""

    def describe(self) -> str:
        if not self.added:
            return f"card {self.card_id}: unchanged ({', '.join(self.unchanged)} already applied)"
        return f"card {self.card_id}: applied version(s) {', '.join(self.added)}"


class RateCardRegistry:
    def __init__(self, store: Store | None, default_card: str | None = None, cost_card: str | None = None,
                 files: tuple[Path, ...] = (), watch_seconds: float | None = None) -> None:
        self.store = store
        self.files = files
        self.watch_seconds = watch_seconds
        self._lock = threading.Lock()
        self._versions: list[CardVersion] = []
        self._file_texts: dict[Path, str] = {}
        self._failures: dict[Path, tuple[str, float]] = {}
        """The last failure logged per watched file, and when (monotonic)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._default_card, self._cost_card = default_card, cost_card
        if store is not None:
            self._versions = store.rate_card_versions()
        for file in files:
            card = load_rate_card(file)
            self._file_texts[file] = card.text
            self._apply(card, str(file))
        self.book = RateBook(self._versions, default_card, cost_card)
        for card in self.book.missing:
            logger.warning("rate card %r is configured but has not been applied: usage it would price is stored "
                           "unpriced until it is (otel-meter rates apply FILE)", card)

    @classmethod
    def from_config(cls, config: RatingConfig, store: Store | None, where: str) -> "RateCardRegistry":
        files = tuple(([config.rate_card] if config.rate_card else []) + list(config.rate_cards))
        default_card = config.default_card
        if default_card is None and config.rate_card is not None:
            default_card = load_rate_card(config.rate_card).id
        try:
            return cls(store, default_card, config.cost_card, files,
                       config.watch.total_seconds() if config.watch else None)
        except RateCardError as error:
            raise RateCardError(f"{where}: {error}") from None

    def versions(self) -> list[CardVersion]:
        with self._lock:
            return list(self._versions)

    def apply(self, card: RateCard, source: str, dry_run: bool = False) -> ApplyResult:
        with self._lock:
            return self._apply(card, source, dry_run)

    def _apply(self, card: RateCard, source: str, dry_run: bool = False) -> ApplyResult:
        stored = {(v.card_id, v.version): v for v in self._versions}
        added, unchanged = [], []
        for version in card.versions:
            existing = stored.get((version.card_id, version.version))
            if existing is None:
                added.append(version)
            elif existing.content == version.content and existing.effective_from_ns == version.effective_from_ns:
                unchanged.append(version.version)
            else:
                raise RateCardError(f"{source}: card {card.id} version {version.version} was already applied with "
                                    f"other prices; versions are immutable, so give the change a new version")
        if added:
            candidate = self._versions + added
            book = RateBook(candidate, self._default_card, self._cost_card)  # raises before anything changes
            if not dry_run:
                if self.store is not None:
                    self.store.insert_rate_card_versions(added, card.text, source)
                self._versions = candidate
                self.book = book
                logger.info("rate card %s: applied version(s) %s from %s", card.id,
                            ", ".join(v.version for v in added), source)
        return ApplyResult(card.id, tuple(v.version for v in added), tuple(unchanged))

    def start(self) -> None:
        if self.watch_seconds and self.files and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="rate-card-watch", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        """Until shutdown, whatever a check meets: a watcher that died would leave the cards
        in force unchanged without a word."""
        while not self._stop.wait(self.watch_seconds):
            try:
                self.reload_changed_files()
            except Exception:  # noqa: BLE001 - logged; the next check runs as usual
                logger.exception("checking the rate card files failed; the cards in force are unchanged and the "
                                 "files are checked again in %gs", self.watch_seconds)

    def reload_changed_files(self) -> list[ApplyResult]:
        """Apply every watched file whose text changed. A bad edit is logged once and changes
        nothing; any other failure (an unreadable file, the store refusing the insert, a full
        disk) is logged and the file is tried again at the next check."""
        results = []
        for file in self.files:
            try:
                text = file.read_text()
            except (OSError, ValueError) as error:
                self._report_failure(file, f"cannot be read: {getattr(error, 'strerror', None) or error}")
                continue
            if text == self._file_texts.get(file):
                continue
            try:
                results.append(self.apply(load_rate_card(file), str(file)))
                self._file_texts[file] = text
            except RateCardError as error:
                logger.error("rate card %s not applied, the cards in force are unchanged: %s", file, error)
                self._file_texts[file] = text  # report a bad edit once, not at every check
            except Exception as error:  # noqa: BLE001 - e.g. the store's disk is full: try again
                self._report_failure(file, f"not applied ({type(error).__name__}: {error})")
                continue
            self._failures.pop(file, None)
        return results

    def _report_failure(self, file: Path, problem: str) -> None:
        """Log at ERROR when the problem is new or once a minute while it lasts."""
        now = time.monotonic()
        last = self._failures.get(file)
        if last is None or last[0] != problem or now - last[1] >= FAILURE_LOG_INTERVAL:
            logger.error("rate card %s %s; the cards in force are unchanged, checking again every %gs", file,
                         problem, self.watch_seconds or 0)
            self._failures[file] = (problem, now)
