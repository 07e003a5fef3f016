"""Postgres connector: the exactly-once Postgres sink (``connector = 'postgres'``)."""
