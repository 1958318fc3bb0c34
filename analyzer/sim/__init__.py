"""The realtime-API simulator: a server to test against, its fault rules, seeded traffic.

- :mod:`analyzer.sim.simsession`: one simulated session as plain code (client events in,
  server steps out), made of :mod:`~analyzer.sim.config` (the session object in its
  dialect), :mod:`~analyzer.sim.conversation` (items, the input audio buffer, server VAD),
  :mod:`~analyzer.sim.responses` (streaming, faults striking) and
  :mod:`~analyzer.sim.voice` (the tone it speaks with), all answering in
  :mod:`~analyzer.sim.steps`;
- :mod:`analyzer.sim.faults`: the rules that make it fail the way real servers do;
- :mod:`analyzer.sim.simulator`: the WebSocket server around it (``rtcap simulate``);
- :mod:`analyzer.sim.direct`: the same session with no socket, on a fake clock;
- :mod:`analyzer.sim.traffic`: seeded voice-agent traffic for the demo and the tests, over
  sockets or without them.
"""
