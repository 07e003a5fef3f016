"""Blackhole connector: a sink that discards its rows (``connector = 'blackhole'``)."""
