"""rtcap's analyzer: everything that works over captures after the fact (export, index,
SQL views, precursors, doctor, report, replay, serve, simulator) and the CLI."""
