"""The simulator's fault rules: a small language for making a realtime server fail.

A rule is an effect, then ``key=value`` options, space separated::

    fail p=0.05                                   # 5% of responses fail (server_error)
    fail sent=conversation.item.truncate          # after the client truncated an item
    fail field=response.create:response.tool_choice.type=function
    fail audio_ms>400 message=none code=none      # after an append longer than 400 ms
    error rate>50                                 # after more than 50 client events in 1 s
    drop nth=3                                    # the 3rd response: connection dropped
    close code=1011 age>600                       # sessions older than 10 minutes
    stall seconds=5 tokens>8000                   # input tokens above 8,000
    ratelimit nth=2

Effects, each striking in the middle of a response (after ``at=K`` of its deltas, half of
them by default):

- ``fail``: ``response.done`` with status ``failed`` and a ``server_error`` (``message=``
  and ``code=`` set them; ``none`` leaves them out; ``error_type=`` changes the type);
- ``error``: a top-level ``error`` event (``server_error``), then the server closes (1000);
- ``drop``: the connection is cut without a close frame;
- ``close``: the server closes with ``code=`` (default 1011) and ``reason=``;
- ``stall``: the server sends nothing for ``seconds=`` (default 5), then carries on;
- ``ratelimit``: ``rate_limits.updated`` shows nothing left and the response fails with
  ``inference_rate_limit_exceeded``.

Triggers, all of which must hold (a rule with none fires on every response):

- ``p=P``: with probability P, drawn from the session's seeded random generator;
- ``nth=N``: the Nth response of the session (1-based);
- conditions on what the client sent since the previous response began (the window that
  led to this response): ``sent=TYPE``; ``field=TYPE:PATH=VALUE`` (a JSON field of a client
  event, dotted path); ``audio_ms>N`` (an audio append longer than N ms); ``rate>N`` (more
  than N client events within one second); and on the session: ``age>S`` (seconds since it
  opened), ``tokens>N`` (the response's input tokens), ``turn>N`` (the response comes after
  the Nth), ``failed>N`` (more than N of the session's earlier responses failed: a server
  that keeps failing once it has failed).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

from analyzer.stats import busiest_second

EFFECTS = ("fail", "error", "drop", "close", "stall", "ratelimit")
_NUMERIC = re.compile(r"^(audio_ms|rate|age|tokens|turn|failed)>(\d+(?:\.\d+)?)$")


class RuleError(ValueError):
    """A fault rule that cannot be parsed; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class ClientEvent:
    """What a rule may look at in one client event."""

    t: float
    type: str | None
    event: dict[str, Any] | None
    audio_ms: float


@dataclasses.dataclass(frozen=True)
class Context:
    """What is known when a response begins."""

    nth: int
    age: float
    input_tokens: int
    window: Sequence[ClientEvent]
    failed: int = 0
    """How many of the session's earlier responses failed."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parsed fault rule."""

    text: str
    effect: str
    options: dict[str, str]
    probability: float | None = None
    nth: int | None = None
    sent: str | None = None
    field: tuple[str, str, str] | None = None
    thresholds: tuple[tuple[str, float], ...] = ()

    def holds(self, context: Context) -> bool:
        """Whether every condition of the rule holds (the probability is drawn apart)."""
        if self.nth is not None and context.nth != self.nth:
            return False
        if self.sent is not None and not any(e.type == self.sent for e in context.window):
            return False
        if self.field is not None:
            kind, path, value = self.field
            if not any(e.type == kind and _field(e.event, path) == value for e in context.window):
                return False
        for name, limit in self.thresholds:
            if name == "age" and not context.age > limit:
                return False
            if name == "tokens" and not context.input_tokens > limit:
                return False
            if name == "turn" and not context.nth > limit:
                return False
            if name == "failed" and not context.failed > limit:
                return False
            if name == "audio_ms" and not any(e.audio_ms > limit for e in context.window):
                return False
            if name == "rate" and not busiest_second([e.t for e in context.window]) > limit:
                return False
        return True

    def fires(self, context: Context, rng: random.Random) -> bool:
        """Whether the rule strikes this response. The generator is drawn from only when
        the conditions hold, so a rule's draws do not depend on unrelated traffic."""
        if not self.holds(context):
            return False
        return self.probability is None or rng.random() < self.probability


def parse_rule(text: str) -> Rule:
    """Parse one rule; raises :class:`RuleError` with a one-line reason."""
    words = text.split()
    if not words or words[0] not in EFFECTS:
        raise RuleError(f"fault rule {text!r} must start with one of: {', '.join(EFFECTS)}")
    effect, options = words[0], {}
    fields: dict[str, Any] = {"thresholds": []}
    for word in words[1:]:
        numeric = _NUMERIC.match(word)
        if numeric:
            fields["thresholds"].append((numeric.group(1), float(numeric.group(2))))
            continue
        key, sep, value = word.partition("=")
        if not sep or not value:
            raise RuleError(f"fault rule {text!r}: {word!r} is not key=value or NAME>NUMBER")
        try:
            if key == "p":
                fields["probability"] = float(value)
                if not 0 <= fields["probability"] <= 1:
                    raise ValueError
            elif key == "nth":
                fields["nth"] = int(value)
            elif key == "sent":
                fields["sent"] = value
            elif key == "field":
                kind, _, rest = value.partition(":")
                path, sep, expected = rest.partition("=")
                if not (kind and path and sep):
                    raise ValueError
                fields["field"] = (kind, path, expected)
            elif key in ("message", "code", "error_type", "reason", "seconds", "at"):
                if key in ("seconds", "at"):
                    float(value)
                options[key] = value
            else:
                raise RuleError(f"fault rule {text!r}: unknown option {key!r}")
        except ValueError:
            raise RuleError(f"fault rule {text!r}: bad value in {word!r}") from None
    if effect == "close":
        options.setdefault("code", "1011")
        if not options["code"].isdigit():
            raise RuleError(f"fault rule {text!r}: close code must be a number")
    fields["thresholds"] = tuple(fields["thresholds"])
    return Rule(text=text, effect=effect, options=options, **fields)


def parse_rules(texts: Iterable[str]) -> list[Rule]:
    """Parse several rules (the order is the order they are tried in)."""
    return [parse_rule(text) for text in texts]


def _field(event: dict[str, Any] | None, path: str) -> str | None:
    value: Any = event
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
