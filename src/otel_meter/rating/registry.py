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
from otel_meter.rating.rate_card import CardVersion, RateCard, applied_versions, load_rate_card

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
                 files: tuple[Path, ...] = (), watch_seconds: float | None = None,
                 configured_cards: tuple[str, ...] = ()) -> None:
        """``configured_cards``: ids of the card files the config names, when ``files`` are not
        given (a registry over the store for the command line): they count as in use."""
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
            self._versions = applied_versions(store.applied_rate_card_rows())
        cards = [load_rate_card(file) for file in files]
        self._file_texts = {file: card.text for file, card in zip(files, cards)}
        self._configured_cards = tuple(dict.fromkeys([*configured_cards, *(card.id for card in cards)]))
        # One set, checked together: a default card may name a plan card listed after it.
        self._apply(cards, [str(file) for file in files])
        self.book = RateBook(self._versions, default_card, cost_card)
        for card in self.book.missing:
            logger.warning("rate card %r is configured but has not been applied: usage it would price is stored "
                           "unpriced until it is (otel-meter rates apply FILE)", card)

    @classmethod
    def from_config(cls, config: RatingConfig, store: Store | None, where: str) -> RateCardRegistry:
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

    def cards_in_use(self, also: RateCard | None = None) -> list[str]:
        """Card ids something prices with: the default and cost card, the config's card files,
        and every plan a customer of the default card names (in any applied version, or in
        ``also``, a card about to be applied)."""
        in_use = [card for card in (self._default_card, self._cost_card) if card] + list(self._configured_cards)
        default_versions = [v for v in self._versions if v.card_id == self._default_card]
        if also is not None and also.id == self._default_card:
            default_versions += list(also.versions)
        in_use += [terms.plan for version in default_versions for terms in version.body.customers.values()
                   if terms.plan]
        return sorted(set(in_use))

    def apply(self, card: RateCard, source: str, dry_run: bool = False, require_in_use: bool = False) -> ApplyResult:
        """``require_in_use``: refuse a card that nothing prices with (``cards_in_use``), as a
        file applied without its ``id:`` would be."""
        with self._lock:
            if require_in_use:
                in_use = self.cards_in_use()
                if card.id not in in_use:
                    raise RateCardError(
                        f"{source}: card {card.id} is used by nothing: no rating processor names it (default_card, "
                        f"cost_card, rate_card or rate_cards) and no customer's plan does; cards in use: "
                        f"{', '.join(in_use) or 'none'}. Give the file the id of the card it changes (id: ...), "
                        f"or apply it anyway with --force (API: force=true), e.g. a plan card before a customer "
                        f"names it")
            return self._apply([card], [source], dry_run)[0]

    def apply_set(self, cards: list[RateCard], sources: list[str]) -> list[ApplyResult]:
        """Apply several cards at once, checked together (a plan and the card that names it)."""
        with self._lock:
            return self._apply(cards, sources)

    def _apply(self, cards: list[RateCard], sources: list[str], dry_run: bool = False) -> list[ApplyResult]:
        stored = {(v.card_id, v.version): v for v in self._versions}
        results, added_by_card = [], []
        for card, source in zip(cards, sources):
            added, unchanged = [], []
            for version in card.versions:
                existing = stored.get((version.card_id, version.version))
                if existing is None:
                    added.append(version)
                elif existing.content == version.content and existing.effective_from_ns == version.effective_from_ns:
                    unchanged.append(version.version)
                else:
                    raise RateCardError(f"{source}: card {card.id} version {version.version} was already applied "
                                        f"with other prices; versions are immutable, so give the change a new version")
            stored.update(((v.card_id, v.version), v) for v in added)
            added_by_card.append(added)
            results.append(ApplyResult(card.id, tuple(v.version for v in added), tuple(unchanged)))
        new_versions = [version for added in added_by_card for version in added]
        if new_versions:
            candidate = self._versions + new_versions
            book = RateBook(candidate, self._default_card, self._cost_card)  # raises before anything changes
            if not dry_run:
                for card, source, added in zip(cards, sources, added_by_card):
                    if added and self.store is not None:
                        self.store.insert_rate_card_versions(added, card.text, source)
                self._versions = candidate
                self.book = book
                for card, source, added in zip(cards, sources, added_by_card):
                    if added:
                        logger.info("rate card %s: applied version(s) %s from %s", card.id,
                                    ", ".join(v.version for v in added), source)
        return results

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
        """Apply the watched files whose text changed, together (a plan and the card that names
        it may change at once). A bad edit is logged once and changes nothing, the other
        changed files are still applied; any other failure (an unreadable file, the store
        refusing the insert, a full disk) is logged and the file is tried again at the next check."""
        changed: dict[Path, tuple[str, RateCard]] = {}
        for file in self.files:
            try:
                text = file.read_text()
            except (OSError, ValueError) as error:
                self._report_failure(file, f"cannot be read: {getattr(error, 'strerror', None) or error}")
                continue
            if text == self._file_texts.get(file):
                continue
            try:
                changed[file] = (text, load_rate_card(file))
            except RateCardError as error:
                logger.error("rate card %s not applied, the cards in force are unchanged: %s", file, error)
                self._file_texts[file] = text  # report a bad edit once, not at every check
        loaded = {file: card for file, (_, card) in changed.items()}
        if len(loaded) > 1:
            try:
                results = self.apply_set(list(loaded.values()), [str(file) for file in loaded])
            except RateCardError:
                pass  # one of them is wrong: apply each alone, so the others still go in
            except Exception as error:  # noqa: BLE001 - e.g. the store's disk is full: try again
                for file in loaded:
                    self._report_failure(file, f"not applied ({type(error).__name__}: {error})")
                return []
            else:
                for file in loaded:
                    self._file_texts[file] = changed[file][0]
                    self._failures.pop(file, None)
                return results
        results = []
        for file, card in loaded.items():
            try:
                results.append(self.apply(card, str(file)))
            except RateCardError as error:
                logger.error("rate card %s not applied, the cards in force are unchanged: %s", file, error)
            except Exception as error:  # noqa: BLE001 - e.g. the store's disk is full: try again
                self._report_failure(file, f"not applied ({type(error).__name__}: {error})")
                continue
            self._file_texts[file] = changed[file][0]  # a bad edit is reported once, not at every check
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
