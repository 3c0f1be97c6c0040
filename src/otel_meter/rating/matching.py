"""Model patterns of rate card rules, and which matching rule is the most specific.

A rule names its models with ``exact`` (the whole name), ``match`` (a shell glob) or
``regex`` (a regular expression that must match the whole name), optionally qualified by
``provider``. Of the rules that match a model, the most specific wins:

1. an ``exact`` rule beats a pattern (``match`` or ``regex``);
2. then a rule with ``provider`` beats one without;
3. then the pattern with more literal characters (``gpt-4o-mini*`` beats ``gpt-4o*``);
4. then the rule written first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol, Sequence

REGEX_SYNTAX = re.compile(r"\\.|\[(?:\\.|[^\]])*\]|\{\d*,?\d*\}|[.^$*+?()|]")
"""What in a regular expression is not a literal character (escapes of letters, classes, operators)."""
GLOB_SYNTAX = re.compile(r"\[[^\]]*\]|[*?]")


@dataclass(frozen=True)
class ModelPattern:
    kind: str  # "exact", "glob" or "regex"
    text: str
    compiled: re.Pattern[str] | None = None

    def matches(self, model: str) -> bool:
        if self.kind == "exact":
            return model == self.text
        if self.kind == "glob":
            return fnmatchcase(model, self.text)
        return self.compiled.fullmatch(model) is not None  # type: ignore[union-attr]

    def literal_characters(self) -> int:
        if self.kind == "exact":
            return len(self.text)
        if self.kind == "glob":
            return len(GLOB_SYNTAX.sub("", self.text))
        escaped_literals = len(re.findall(r"\\[^A-Za-z0-9]", self.text))
        return len(REGEX_SYNTAX.sub("", self.text)) + escaped_literals

    def describe(self) -> str:
        return f"{self.kind}:{self.text}"


class PatternRule(Protocol):
    match: str | None
    exact: str | None
    regex: str | None
    provider: str | None


def pattern_of(rule: PatternRule) -> ModelPattern:
    if rule.exact is not None:
        return ModelPattern("exact", rule.exact)
    if rule.match is not None:
        return ModelPattern("glob", rule.match)
    try:
        return ModelPattern("regex", rule.regex or "", re.compile(rule.regex or ""))
    except re.error as error:
        raise ValueError(f"regex {rule.regex!r} is not a valid regular expression: {error}") from None


def specificity(rule: PatternRule, index: int) -> tuple[int, int, int, int]:
    """Sort key: the greatest is the most specific rule (see the module docstring)."""
    pattern = pattern_of(rule)
    return (pattern.kind == "exact", rule.provider is not None, pattern.literal_characters(), -index)


def provider_matches(rule: PatternRule, provider: str) -> bool:
    return rule.provider is None or rule.provider.lower() == provider.lower()


def matching_rules(rules: Sequence[Any], model: str, provider: str) -> list[int]:
    """Indexes of the rules that match, most specific first."""
    found = [index for index, rule in enumerate(rules)
             if provider_matches(rule, provider) and pattern_of(rule).matches(model)]
    return sorted(found, key=lambda index: specificity(rules[index], index), reverse=True)
