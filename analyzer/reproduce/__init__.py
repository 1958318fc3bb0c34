"""Reproducing recorded sessions: ``rtcap replay`` sends the client side to a server again,
``rtcap serve`` plays the server side to a client, and the ``rtcap_serve`` pytest fixture
serves a capture to code under test. :mod:`.pacing` decides what to send when, for both."""
