"""The server: Postgres wire protocol, sessions, introspection, HTTP health and metrics.

Entry point: :class:`sqlstream.server.app.ServerApp` (``sqlstream serve``). See docs/server.md.
"""
