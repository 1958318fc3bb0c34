"""The ``rtcap`` command line: each command parses, calls one library function and renders.

The commands live in :mod:`analyzer.commands` (one module per part of the job) and share
the options and helpers of :mod:`analyzer.cliutil`; this module gathers them into one group.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from analyzer.cliutil import _fail
from analyzer.commands import analysis, exploring, recording, reproducing
from recorder import __version__


class RtcapGroup(click.Group):
    """Reports every error as one ``rtcap: error: ...`` line, no traceback."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kw: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name or "rtcap", complete_var, standalone_mode=False, **kw)
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except click.UsageError as e:
            _fail(e.format_message(), 2)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except BrokenPipeError:
            sys.stderr.close()  # the reader went away (`| head`); not an error
            sys.exit(0)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=RtcapGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rtcap")
def cli() -> None:
    """rtcap records every event a realtime AI WebSocket session exchanges (OpenAI Realtime,
    Azure OpenAI GPT Realtime, any JSON-over-WebSocket API), so that a failure such as
    `server_error` can be looked at, queried and reproduced.

    Record with `rtcap proxy`; read a recording back with `rtcap export`.
    """


for _module in (recording, exploring, analysis, reproducing):
    for _command in vars(_module).values():
        if isinstance(_command, click.Command):
            cli.add_command(_command)


def main() -> None:
    """Console script entry point."""
    cli(prog_name="rtcap")
