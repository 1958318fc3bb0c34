"""What realtime events mean for telemetry: the session's id and model, a response's token
usage, the rate limits a server reports, and the vendor a URL belongs to.

This is :mod:`recorder.events`' section on telemetry, kept in a module of its own because
``events.py`` is at its size limit (as :mod:`recorder.turns` is). ``rtcap otel`` reads its
span attributes here. Standard library only, like :mod:`recorder.events`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from recorder import events
from recorder.turns import AZURE_HOST_SUFFIX

USAGE_PATH = ("response", "usage")
"""Where a ``response.done`` reports its token usage."""
USAGE_FIELDS = {
    "input_tokens": ("input_tokens",),
    "output_tokens": ("output_tokens",),
    "input_audio_tokens": ("input_token_details", "audio_tokens"),
    "output_audio_tokens": ("output_token_details", "audio_tokens"),
    "input_cached_tokens": ("input_token_details", "cached_tokens"),
}
"""Each count of a response's usage, and where the usage object keeps it."""

SESSION_ID_PATH = ("session", "id")
SESSION_MODEL_PATH = ("session", "model")
SESSION_EXPIRES_PATH = ("session", "expires_at")
"""Where ``session.created`` names the server's session id (``sess_...``), the model, and
when the session expires (epoch seconds)."""

RATE_LIMITS_UPDATED = "rate_limits.updated"
RATE_LIMIT_FIELDS = ("limit", "remaining", "reset_seconds")
"""What a server says of each named limit (``requests``, ``tokens``) at a response's start."""

VENDORS = {"azure": "azure.ai.openai", "openai": "openai"}
"""Each vendor's name as OpenTelemetry's ``gen_ai.provider.name`` spells it."""


def usage(event: Mapping[str, Any]) -> dict[str, int]:
    """The token counts a ``response.done`` reports, by the names of :data:`USAGE_FIELDS`;
    a count the server left out is not in it."""
    found = events.dig(event, USAGE_PATH) if events.event_type(event) == events.RESPONSE_DONE else None
    if not isinstance(found, dict):
        return {}
    counts = {name: events.dig(found, path) for name, path in USAGE_FIELDS.items()}
    return {name: n for name, n in counts.items() if isinstance(n, int) and not isinstance(n, bool)}


def rate_limits(event: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The limits a ``rate_limits.updated`` reports: ``{name: {field: value}}``."""
    if events.event_type(event) != RATE_LIMITS_UPDATED:
        return {}
    limits: dict[str, dict[str, float]] = {}
    for limit in event.get("rate_limits") or ():
        if not isinstance(limit, dict) or not isinstance(limit.get("name"), str):
            continue
        values = {key: limit[key] for key in RATE_LIMIT_FIELDS if isinstance(limit.get(key), int | float)}
        limits[limit["name"]] = {key: value for key, value in values.items() if not isinstance(value, bool)}
    return limits


def vendor(url: str | None) -> str:
    """``azure`` for a URL on an Azure host (``*.azure.com``), else ``openai``; also for a
    URL that no longer parses (a redacted ``[REDACTED]@`` userinfo, see :func:`events.url_path`)."""
    try:
        host = urlsplit(url or "").hostname or ""
    except ValueError:
        authority = (url or "").partition("://")[2].partition("/")[0]
        host = authority.rpartition("@")[2].rpartition(":")[0] or authority.rpartition("@")[2]
    return "azure" if host.lower().endswith(AZURE_HOST_SUFFIX) else "openai"
