"""Keeping secrets out of captures, and out of what rtcap prints.

:class:`Redactor` knows which header names, query parameters and subprotocols carry
secrets: the names listed below, the user's additions, and any name that contains a
word of :data:`SECRET_WORDS`. Redacting a handshake gives the values it removed; a
:class:`Scrubber` built from them removes those values again wherever they reappear in a
message (servers echo keys in error messages), in the forms a server could write them.
:func:`redact_tools` redacts the ``authorization`` and ``headers`` of every tool
definition, in either direction, reading the JSON as a parser does (escaped keys
included) at any depth, and leaving every other byte of the message as it came.
"""

from __future__ import annotations

import binascii
import json
import os
import re
from base64 import b64decode, b64encode, urlsafe_b64encode
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

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
SECRET_QUERY = frozenset({"api-key", "key", "token", "access_token", "authorization", "sig"})
"""Query parameters that are secrets by name (``sig``: an Azure SAS signature)."""

SECRET_WORDS = ("key", "token", "secret", "auth", "password", "signature", "credential")
"""A header or query parameter whose name contains one of these (case-insensitive) is a
secret: ``Ocp-Apim-Subscription-Key``, ``x-goog-api-key``, ``X-My-Token``, ``api_key``..."""

NOT_SECRET_HEADERS = frozenset({"sec-websocket-key", "www-authenticate", "proxy-authenticate"})
"""Headers whose names hold a secret word but whose values are not secrets, kept readable:
``Sec-WebSocket-Key`` is a random nonce made afresh for each connection (RFC 6455), and
the ``*-Authenticate`` headers are a server's challenge, which says why it refused."""
NOT_SECRET_HEADER_PREFIXES = ("x-ratelimit-",)
"""Rate-limit counters (``x-ratelimit-remaining-tokens``): numbers, not credentials."""

MIN_SCRUB_LENGTH = 8
"""Shorter values are redacted where they stand but not hunted for in every message,
where replacing them would destroy unrelated text."""


def env_names() -> list[str]:
    """Extra names from ``RTCAP_REDACT`` (comma-separated; headers and query parameters)."""
    return [n.strip() for n in os.environ.get("RTCAP_REDACT", "").split(",") if n.strip()]


def has_secret_word(name: str) -> bool:
    """Whether a (lower-case) name contains a word of :data:`SECRET_WORDS`."""
    return any(word in name for word in SECRET_WORDS)


class Redactor:
    """Redacts handshakes: headers, subprotocols and URLs."""

    def __init__(self, headers: Iterable[str] = (), query: Iterable[str] = ()) -> None:
        extra = env_names()
        self.headers = SECRET_HEADERS | {h.lower() for h in [*headers, *extra]}
        self.query = SECRET_QUERY | {q.lower() for q in [*query, *extra]}

    def is_secret_header(self, name: str) -> bool:
        """Whether a header's whole value is a secret (named ones always are, even those
        the user adds from :data:`NOT_SECRET_HEADERS`)."""
        name = name.lower()
        if name in self.headers:
            return True
        if name in NOT_SECRET_HEADERS or name.startswith(NOT_SECRET_HEADER_PREFIXES):
            return False
        return has_secret_word(name)

    def is_secret_query(self, name: str) -> bool:
        """Whether a query parameter (its name as written, percent-encoded or not) is a secret."""
        name = unquote_plus(name).lower()
        return name in self.query or has_secret_word(name)

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
        """Redact userinfo and secret query parameters, leaving the rest of the URL as
        written (a path with a query, without scheme and host, works too)."""
        parts = urlsplit(url)
        secrets: set[str] = set()
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            # websockets sends the userinfo as written in an Authorization: Basic header.
            secrets.update({userinfo, unquote(userinfo), unquote_plus(userinfo)})
            secrets.update(unquote(p) for p in userinfo.split(":"))
            secrets |= _secret_parts("Basic " + b64encode(userinfo.encode()).decode())
            netloc = f"{REDACTED}@{hostport}"
        items = []
        for item in parts.query.split("&") if parts.query else []:
            name, sep, value = item.partition("=")
            if sep and self.is_secret_query(name):
                secrets.update(_secret_parts(unquote_plus(value)))
                secrets.add(value)
                item = f"{name}={REDACTED}"
            items.append(item)
        query = "&".join(items)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)), {s for s in secrets if s}

    def redact_mentions(self, text: str, url: str) -> str:
        """``text`` (an error, a line to print) with ``url`` in it redacted."""
        if not url:
            return text
        try:
            shown = self.redact_url(url)[0]
        except ValueError:  # a URL urllib cannot split is not shown at all
            shown = "(a URL that cannot be parsed)"
        return text.replace(url, shown)


def _secret_parts(value: str) -> set[str]:
    """A secret value, plus its pieces that could reappear alone (the token of
    ``Bearer <token>``, the ``user:password`` of ``Basic <base64>``, each cookie value)."""
    parts = {value}
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if token and scheme.isalpha():
        parts.add(token)
        if scheme.lower() == "basic":
            try:
                userpass = b64decode(token, validate=True).decode()
            except (binascii.Error, ValueError):
                userpass = ""
            parts.add(userpass)
            parts.update(userpass.split(":", 1))
    for cookie in value.split(";"):
        _, _, cookie_value = cookie.partition("=")
        parts.add(cookie_value.strip())
    return {p for p in parts if p}


def secret_forms(secret: str) -> set[bytes]:
    """The ways a secret can be written in a message: raw, JSON-escaped (either way, and
    with ``\\/``), URL-quoted, and base64 (standard and URL-safe). Base64 forms include the
    three alignments at which the secret can sit inside a longer encoded text (``user:``
    before a password, ``Bearer `` before a token, a header block echoed in base64): each is
    the run of characters that depend on the secret's bytes alone."""
    text = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }
    raw = secret.encode("utf-8", "surrogatepass")
    for encode in (b64encode, urlsafe_b64encode):
        text.add(encode(raw).decode())
        for shift, skip in ((0, 0), (1, 2), (2, 3)):
            encoded = encode(bytes(shift) + raw).decode()
            text.add(encoded[skip : (shift + len(raw)) * 8 // 6])
    text |= {form.replace("/", "\\/") for form in text if "/" in form}
    return {form.encode("utf-8", "surrogatepass") for form in text if len(form) >= MIN_SCRUB_LENGTH}


def _alternation(needles: list[bytes]) -> bytes:
    """One regex for ``needles`` (sorted, distinct, none empty), shaped as a trie so the
    engine tests a byte or two at each position rather than every needle; a longer needle
    wins over one it starts with."""
    if len(needles) == 1:
        return re.escape(needles[0])
    prefix = os.path.commonprefix(needles)
    if prefix:
        rest = [n[len(prefix) :] for n in needles]
        tail = _alternation([r for r in rest if r])
        return re.escape(prefix) + (b"(?:" + tail + b")?" if b"" in rest else tail)
    groups: dict[bytes, list[bytes]] = {}
    for needle in needles:
        groups.setdefault(needle[:1], []).append(needle)
    return b"(?:" + b"|".join(_alternation(group) for group in groups.values()) + b")"


class Scrubber:
    """Removes known secret values, in all their :func:`secret_forms`, from messages.

    All forms of all secrets are one compiled pattern: a message without a secret costs
    one search, however many secrets there are, and none when there are none."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[bytes] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Hunt for these values too from now on (short ones are ignored)."""
        new = {s for s in secrets if len(s) >= MIN_SCRUB_LENGTH} - self._secrets
        if not new:
            return
        self._secrets |= new
        # A secret holding another (``Bearer <token>``) is found through it, in every form
        # (each encoding maps characters one by one, and base64 has all three alignments):
        # fewer needles, and the part of it that was not secret stays readable.
        hunted = [s for s in self._secrets if not any(o in s for o in self._secrets if o != s)]
        needles = sorted({form for secret in hunted for form in secret_forms(secret)})
        self._pattern = re.compile(_alternation(needles))

    def finds(self, data: bytes) -> bool:
        """Whether any known secret value occurs in ``data``."""
        return self._pattern is not None and self._pattern.search(data) is not None

    def scrub_bytes(self, data: bytes) -> tuple[bytes, bool]:
        """Redact known secret values from a message; returns it and whether it changed."""
        if self._pattern is None or self._pattern.search(data) is None:
            return data, False
        return self._pattern.sub(REDACTED.encode(), data), True

    def scrub_text(self, text: str) -> tuple[str, bool]:
        """Replace every known secret value in ``text``; returns it and whether it changed."""
        data, changed = self.scrub_bytes(text.encode("utf-8", "surrogatepass"))
        return (data.decode("utf-8", "surrogatepass") if changed else text), changed


# -- tool definitions ---------------------------------------------------------------------

# A JSON string, or a structural character. Numbers, literals and anything else are what
# lies between two tokens; a stray quote is skipped, so any input can be scanned.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[][{}:,]', re.S)
_ESCAPED_TOOLS_LETTER = re.compile(rb"\\u00(?:7[34]|6[cCfF])")  # t, s, l, o


def may_hold_tools(data: bytes) -> bool:
    """Whether ``data`` can hold a ``"tools"`` key, written plainly or with escapes. A
    cheap test on the recording's hot path: when false, :func:`redact_tools` finds nothing."""
    # ``find``, not ``in``: ``in`` first tries its operand as an integer, which costs an
    # exception on every call.
    return data.find(b'"tools"') >= 0 or (data.find(b"\\u00") >= 0 and _ESCAPED_TOOLS_LETTER.search(data) is not None)


_TOOLS, _TOOL, _HEADERS = 1, 2, 3  # what a container is, for the scan
_REDACTED_JSON = json.dumps(REDACTED).encode()


class _Container:
    __slots__ = ("is_object", "role", "key", "expect_key", "value_at")

    def __init__(self, is_object: bool, role: int) -> None:
        self.is_object = is_object
        self.role = role
        self.key: str | None = None
        self.expect_key = is_object
        self.value_at = -1  # after an object's ':', until its value starts


def _string(token: bytes) -> str:
    if b"\\" not in token:
        return token[1:-1].decode("utf-8", "replace")
    try:
        value = json.loads(token)
    except ValueError:
        return token[1:-1].decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _wanted(container: _Container, opens_object: bool) -> bool:
    """Whether the value starting in ``container`` is a credential."""
    if container.role == _HEADERS:
        return True
    if container.role != _TOOL:
        return False
    return container.key == "authorization" or (container.key == "headers" and not opens_object)


def redact_tools(data: bytes, scrubber: Scrubber, redactor: Redactor | None = None) -> tuple[bytes, bool]:
    """Redact the ``authorization`` and ``headers`` values of every tool definition (an
    object inside a ``tools`` array, anywhere) in a JSON text, and the secret query
    parameters and userinfo of a tool's ``server_url``. Keys are compared decoded, so escapes do not hide
    them; the text is scanned, not parsed, so nesting depth does not matter and every other
    byte stays as it came. The values removed are scrubbed from later messages too. Returns
    the text and whether anything was redacted."""
    redactor = redactor or Redactor()
    spans: list[tuple[int, int, bytes]] = []
    found: set[str] = set()
    stack: list[_Container] = []
    open_at, open_depth = -1, -1  # the credential being read: its start, its container's depth
    strings: list[str] = []  # the string values inside it

    def credential(start: int, end: int) -> None:
        value = data[start:end]
        if value not in (b"null", _REDACTED_JSON):
            spans.append((start, end, _REDACTED_JSON))
            found.update(strings)

    for match in _TOKEN.finditer(data):
        token, start, end = match.group(), match.start(), match.end()
        top = stack[-1] if stack else None
        kind = token[:1]
        if top is not None and top.expect_key and kind == b'"':
            top.key = _string(token)
            continue
        if top is not None and top.value_at >= 0:
            if kind in (b",", b"}") and open_at < 0 and _wanted(top, False):
                # A number or literal: the value is what lies between ':' and here.
                scalar = data[top.value_at : start]
                first = top.value_at + len(scalar) - len(scalar.lstrip())
                strings.clear()
                if scalar.strip():
                    credential(first, first + len(scalar.strip()))
            elif kind in (b'"', b"{", b"[") and open_at < 0 and _wanted(top, kind == b"{"):
                open_at, open_depth = start, len(stack)
                strings.clear()
            top.value_at = -1
        if kind == b'"':
            if open_at >= 0:
                strings.append(_string(token))
                if len(stack) == open_depth:
                    credential(open_at, end)
                    open_at = -1
            elif top is not None and top.role == _TOOL and top.key == "server_url":
                try:
                    redacted, secrets = redactor.redact_url(_string(token))
                except ValueError:  # not a URL urllib can split: nothing to redact in it
                    secrets = set()
                if secrets:
                    found.update(secrets)
                    spans.append((start, end, json.dumps(redacted, ensure_ascii=False).encode()))
        elif kind in (b"{", b"["):
            role = 0
            if top is not None and open_at < 0:
                if kind == b"[" and top.key == "tools" and top.is_object:
                    role = _TOOLS
                elif kind == b"{" and top.role == _TOOLS:
                    role = _TOOL
                elif kind == b"{" and top.role == _TOOL and top.key == "headers":
                    role = _HEADERS
            stack.append(_Container(kind == b"{", role))
        elif kind in (b"}", b"]"):
            if stack:
                stack.pop()
            if open_at >= 0 and len(stack) == open_depth:
                credential(open_at, end)
                open_at = -1
        elif top is not None and top.is_object:
            if kind == b":":
                top.expect_key, top.value_at = False, end
            else:  # ','
                top.expect_key, top.key = True, None
    if not spans:
        return data, False
    found.discard(REDACTED)
    scrubber.add(secret for value in found for secret in _secret_parts(value))
    pieces, position = [], 0
    for start, end, replacement in sorted(spans):
        pieces += [data[position:start], replacement]
        position = end
    return b"".join(pieces) + data[position:], True
