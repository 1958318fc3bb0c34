"""Keeping secrets out of captures.

:class:`Redactor` knows which header names, query parameters and subprotocols carry
secrets. Redacting a handshake gives the values it removed; a :class:`Scrubber` built
from them removes those values again wherever they reappear in a message (servers echo
keys in error messages), and redacts the ``authorization`` and ``headers`` of every
tool definition, in either direction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "cookie",
        "set-cookie",
        "openai-organization",
        "openai-project",
        "openai-safety-identifier",
    }
)
SECRET_SUBPROTOCOL_PREFIXES = ("openai-insecure-api-key.", "openai-organization.", "openai-project.")
SECRET_QUERY = frozenset({"api-key", "key", "token", "access_token", "authorization"})

MIN_SCRUB_LENGTH = 8
"""Shorter values are redacted where they stand but not hunted for in every message,
where replacing them would destroy unrelated text."""


def env_names() -> list[str]:
    """Extra names from ``RTCAP_REDACT`` (comma-separated; headers and query parameters)."""
    return [n.strip() for n in os.environ.get("RTCAP_REDACT", "").split(",") if n.strip()]


class Redactor:
    """Redacts handshakes: headers, subprotocols and URLs."""

    def __init__(self, headers: Iterable[str] = (), query: Iterable[str] = ()) -> None:
        extra = env_names()
        self.headers = SECRET_HEADERS | {h.lower() for h in [*headers, *extra]}
        self.query = SECRET_QUERY | {q.lower() for q in [*query, *extra]}

    def is_secret_header(self, name: str) -> bool:
        """Whether a header's whole value is a secret."""
        name = name.lower()
        return name in self.headers or name.endswith("-auth")

    def redact_headers(self, items: Iterable[tuple[str, str]]) -> tuple[list[list[str]], set[str]]:
        """Redact a list of ``(name, value)`` pairs; returns them and the secrets removed."""
        out: list[list[str]] = []
        secrets: set[str] = set()
        for name, value in items:
            if self.is_secret_header(name):
                secrets.update(_secret_parts(value))
                value = REDACTED
            elif name.lower() == "sec-websocket-protocol":
                protocols, found = self.redact_subprotocols(p.strip() for p in value.split(","))
                secrets |= found
                value = ", ".join(protocols)
            out.append([name, value])
        return out, secrets

    def redact_subprotocols(self, protocols: Iterable[str]) -> tuple[list[str], set[str]]:
        """Redact key-bearing subprotocols (``openai-insecure-api-key.<KEY>`` and kin)."""
        out: list[str] = []
        secrets: set[str] = set()
        for protocol in protocols:
            for prefix in SECRET_SUBPROTOCOL_PREFIXES:
                if protocol.lower().startswith(prefix):
                    secrets.add(protocol[len(prefix) :])
                    secrets.add(protocol)
                    protocol = protocol[: len(prefix)] + REDACTED
                    break
            out.append(protocol)
        return out, secrets

    def redact_url(self, url: str) -> tuple[str, set[str]]:
        """Redact userinfo and secret query parameters, leaving the rest of the URL as written."""
        parts = urlsplit(url)
        secrets: set[str] = set()
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            secrets.update(_secret_parts(unquote_plus(userinfo)))
            secrets.update(unquote_plus(p) for p in userinfo.split(":"))
            netloc = f"{REDACTED}@{hostport}"
        items = []
        for item in parts.query.split("&") if parts.query else []:
            name, sep, value = item.partition("=")
            if sep and unquote_plus(name).lower() in self.query:
                secrets.update(_secret_parts(unquote_plus(value)))
                secrets.add(value)
                item = f"{name}={REDACTED}"
            items.append(item)
        query = "&".join(items)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), secrets


def _secret_parts(value: str) -> set[str]:
    """A secret value, plus its pieces that could reappear alone (the token of
    ``Bearer <token>``, each cookie value)."""
    parts = {value}
    scheme, _, token = value.partition(" ")
    if token and scheme.isalpha():
        parts.add(token.strip())
    for cookie in value.split(";"):
        _, _, cookie_value = cookie.partition("=")
        parts.add(cookie_value.strip())
    return {p for p in parts if p}


class Scrubber:
    """Removes known secret values and tool credentials from message payloads."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Hunt for these values too from now on (short ones are ignored)."""
        for secret in secrets:
            if len(secret) < MIN_SCRUB_LENGTH:
                continue
            forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}
            for form in forms:
                if form not in self._text:
                    self._text.append(form)
                    self._bytes.append(form.encode())
        # Longest first, so a value is not half-replaced through a shorter secret inside it.
        self._text.sort(key=len, reverse=True)
        self._bytes.sort(key=len, reverse=True)

    def scrub_text(self, text: str) -> tuple[str, bool]:
        """Replace every known secret value in ``text``; returns it and whether it changed."""
        redacted = False
        for secret in self._text:
            if secret in text:
                text = text.replace(secret, REDACTED)
                redacted = True
        return text, redacted

    def finds(self, data: bytes) -> bool:
        """Whether any known secret value occurs in ``data``."""
        return any(secret in data for secret in self._bytes)

    def scrub_bytes(self, data: bytes) -> tuple[bytes, bool]:
        """Redact known secret values from a binary message."""
        redacted = False
        for secret in self._bytes:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
                redacted = True
        return data, redacted


def redact_tools(obj: Any, scrubber: Scrubber) -> bool:
    """Redact, in place, the ``authorization`` and ``headers`` of every tool definition
    inside a parsed event; the values removed are scrubbed from later messages too.
    Returns whether anything was redacted."""
    found: set[str] = set()
    changed = _redact_tools(obj, found)
    scrubber.add(found)
    return changed


def _redact_tools(obj: Any, found: set[str]) -> bool:
    changed = False
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "tools" and isinstance(value, list):
                for tool in value:
                    if isinstance(tool, dict):
                        changed |= _redact_tool(tool, found)
            changed |= _redact_tools(value, found)
    elif isinstance(obj, list):
        for value in obj:
            changed |= _redact_tools(value, found)
    return changed


def _redact_tool(tool: dict[str, Any], found: set[str]) -> bool:
    changed = False
    if "authorization" in tool and tool["authorization"] not in (None, REDACTED):
        if isinstance(tool["authorization"], str):
            found |= _secret_parts(tool["authorization"])
        tool["authorization"] = REDACTED
        changed = True
    headers = tool.get("headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if value != REDACTED:
                if isinstance(value, str):
                    found |= _secret_parts(value)
                headers[name] = REDACTED
                changed = True
    elif headers not in (None, REDACTED):
        tool["headers"] = REDACTED
        changed = True
    return changed
