"""rtcap's live path: the capture format, redaction, the recording proxy and the
in-process shim. Nothing here imports duckdb, pyarrow or numpy.

``install``, ``uninstall`` and ``recording`` record the websockets and aiohttp client connections of
this process (see :mod:`recorder.shim`)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def install(**settings: Any) -> None:
    """Record every websockets and aiohttp client connection of this process (see :func:`recorder.shim.install`)."""
    from .shim import install

    install(**settings)


def uninstall() -> None:
    """Stop recording and restore websockets and aiohttp (see :func:`recorder.shim.uninstall`)."""
    from .shim import uninstall

    uninstall()


def recording(**settings: Any) -> Any:
    """Context manager: record for the duration of a block (see :func:`recorder.shim.recording`)."""
    from .shim import recording

    return recording(**settings)
