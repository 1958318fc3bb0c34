"""The realtime-API simulator: a server to test against, its fault rules, seeded traffic.

- :mod:`analyzer.sim.simsession`: one simulated session as plain code (client events in,
  server steps out);
- :mod:`analyzer.sim.faults`: the rules that make it fail the way real servers do;
- :mod:`analyzer.sim.simulator`: the WebSocket server around it (``rtcap simulate``);
- :mod:`analyzer.sim.traffic`: seeded voice-agent traffic for the demo and the tests.
"""
