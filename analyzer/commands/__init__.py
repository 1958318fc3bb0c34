"""The ``rtcap`` commands, one module per part of the job; ``analyzer.cli`` gathers them."""
