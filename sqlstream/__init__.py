"""sqlstream: streaming SQL on DuckDB with exactly-once checkpoints in Postgres."""

__version__ = "0.1.0"
