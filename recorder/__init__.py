"""rtcap's live path: the capture format, redaction, the recording proxy and the
in-process shim. Nothing here imports duckdb, pyarrow or numpy."""

__version__ = "0.1.0"
