"""What the shim cannot record, said once rather than recording nothing in silence.

Python WebSocket clients other than websockets and aiohttp get a warning the first time the
program opens a connection with one (the shim wraps their connect functions, then calls
them as they were); programs that are not Python at all (Node, a browser) cannot load the
shim, so ``rtcap run`` says so before it starts them (:func:`foreign_runtime`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .session import warn

USE_PROXY = "put `rtcap proxy` in front of the app instead"

UNRECORDED = {
    "websocket": (("create_connection", "WebSocket.connect"), "websocket-client"),
    "tornado.websocket": (("websocket_connect",), "tornado"),
    "trio_websocket": (("connect_websocket_url", "open_websocket_url"), "trio-websocket"),
    "httpx_ws": (("connect_ws", "aconnect_ws"), "httpx-ws"),
}
"""Python WebSocket clients the shim does not record: module -> (the functions or methods
that open a connection, the library's name as pip knows it)."""

# Programs whose WebSockets the shim, a Python module, can never see.
_RUNTIMES = {
    "node": "Node",
    "nodejs": "Node",
    "npm": "Node",
    "npx": "Node",
    "yarn": "Node",
    "pnpm": "Node",
    "bun": "Bun",
    "deno": "Deno",
    "chromium": "a browser",
    "chromium-browser": "a browser",
    "google-chrome": "a browser",
    "firefox": "a browser",
    "java": "Java",
    "go": "Go",
    "dotnet": ".NET",
    "ruby": "Ruby",
}


def hooks(module: str) -> list[tuple[Any, str, Any]]:
    """The shim's patches for a loaded module of ``UNRECORDED``: (owner, name, wrapper maker)."""
    names, library = UNRECORDED[module]
    found = []
    for dotted in names:
        owner: Any = sys.modules[module]
        *path, name = dotted.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        if owner is not None and name in getattr(owner, "__dict__", {}):
            found.append((owner, name, lambda f: _warning_first(f, library)))
    return found


def _warning_first(original: Any, library: str) -> Any:
    def opening(*args: Any, **kwargs: Any) -> Any:
        warn(f"this program opens a WebSocket with {library}, which `rtcap run` does not record; {USE_PROXY}")
        return original(*args, **kwargs)

    return opening


def foreign_runtime(program: str) -> str | None:
    """The runtime ``program`` names when the shim cannot load in it (``"Node"`` for
    ``node``), else None: Python, or a program rtcap cannot tell (a shell script, say)."""
    return _RUNTIMES.get(os.path.basename(program))
