"""The ``rtcap`` command line: each command parses, calls one library function and renders.

The commands live in :mod:`analyzer.commands` (one module per part of the job) and share
the options and helpers of :mod:`analyzer.cliutil`; this module gathers them into one group.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import Any

import click

from analyzer.cliutil import _fail
from analyzer.commands import analysis, exploring, interchange, latency, recording, reproducing, store, ui
from recorder import __version__


class _Interrupted(BaseException):
    """Ctrl-C, on its way out: not a ``KeyboardInterrupt``, which click answers with a
    blank line of its own."""


class _StdoutClosed(BaseException):
    """The reader of stdout went away, on its way out: not an ``OSError``, which click
    answers with exit code 1."""


class _Interrupts:
    """rtcap's Ctrl-C handler. The first Ctrl-C raises ``KeyboardInterrupt``, which stops
    whatever runs (DuckDB included) and unwinds, closing what it opened; it is noted, so
    that whatever error the unwinding causes (DuckDB's "Query interrupted", say) is
    reported as the interruption it is. A Ctrl-C while rtcap is already on its way out
    ends it there."""

    def __init__(self) -> None:
        self.seen = False
        self.exiting = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.seen or self.exiting:
            if not self.seen:
                os.write(2, b"rtcap: error: interrupted\n")
            os._exit(130)
        self.seen = True
        raise KeyboardInterrupt


def _stdout_closed(error: BaseException | None) -> bool:
    """Whether ``error``, or what it was raised from, is a write to a closed pipe."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.EPIPE:
            return True
        error = error.__cause__ or error.__context__
    return False


class RtcapGroup(click.Group):
    """Reports every error as one ``rtcap: error: ...`` line, no traceback; Ctrl-C at any
    moment as ``rtcap: error: interrupted`` (exit 130); a closed stdout pipe (``| head``)
    as success, silently."""

    interrupts: _Interrupts | None = None

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kw: Any,
    ) -> Any:
        interrupts = _Interrupts()
        installed = threading.current_thread() is threading.main_thread()  # else Python allows no handler
        if installed:
            previous = signal.signal(signal.SIGINT, interrupts)
            self.interrupts = interrupts
        try:
            try:
                rv = super().main(args, prog_name or "rtcap", complete_var, standalone_mode=False, **kw)
            except BaseException as e:
                interrupts.exiting = True
                if interrupts.seen or isinstance(e, click.exceptions.Abort | KeyboardInterrupt | _Interrupted):
                    _fail("interrupted", 130)
                if isinstance(e, _StdoutClosed) or _stdout_closed(e):
                    _leave_quietly()
                if isinstance(e, click.UsageError):
                    _fail(e.format_message(), 2)
                if isinstance(e, click.ClickException):
                    _fail(e.format_message(), e.exit_code)
                raise
            interrupts.exiting = True
            if interrupts.seen:  # swallowed on the way, yet it happened
                _fail("interrupted", 130)
            if not standalone_mode:
                return rv
            sys.exit(rv if isinstance(rv, int) else 0)
        finally:
            self.interrupts = None
            # A process of its own (no args given) keeps the handler to the end, so that a
            # Ctrl-C during its exit is answered too; a caller's handler is given back.
            if installed and args is not None:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaseException as e:
            # A KeyboardInterrupt of its own: a server command's event loop took the Ctrl-C.
            if isinstance(e, KeyboardInterrupt) or (self.interrupts is not None and self.interrupts.seen):
                raise _Interrupted from None
            if _stdout_closed(e):
                raise _StdoutClosed from None
            raise


def _leave_quietly() -> None:
    """The reader of stdout went away: not an error. Output still buffered would fail
    again when Python flushes it on exit, so stdout is pointed at /dev/null first."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test runner's capture): nothing will flush into a pipe
    sys.exit(0)


@click.group(cls=RtcapGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rtcap")
def cli() -> None:
    """rtcap records every event a realtime AI WebSocket session exchanges (OpenAI Realtime,
    Azure OpenAI GPT Realtime, any JSON-over-WebSocket API), so that a failure such as
    `server_error` can be looked at, queried and reproduced.

    Record with `rtcap proxy`; read a recording back with `rtcap export`.
    """


for _module in (recording, exploring, analysis, latency, reproducing, interchange, ui, store):
    for _command in vars(_module).values():
        if isinstance(_command, click.Command):
            cli.add_command(_command)


def main() -> None:
    """Console script entry point."""
    cli(prog_name="rtcap")
