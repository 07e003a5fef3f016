"""The progress line a terminal shows."""

from __future__ import annotations

import time

from sqlstream.config import Settings
from sqlstream.engine.engine import Engine
from sqlstream.engine.loop import JobOptions, _progress_line, run_engine


def test_progress_line_reports_rates_and_last_checkpoint(catalog_dsn, tmp_data_dir):
    e = Engine(Settings(data_dir=tmp_data_dir, checkpoint_interval=0.0), catalog_dsn)
    try:
        assert "no checkpoint yet" in _progress_line(e, time.monotonic(), (0, 0))
        e.execute_script(
            "CREATE SOURCE g (id BIGINT) WITH (connector = 'datagen', datagen.rows.total = '2000',"
            " datagen.rows.per.second = '0'); CREATE MATERIALIZED VIEW m AS SELECT id FROM g;"
        )
        started = time.monotonic()
        run_engine(e, JobOptions(once=True))
        line = _progress_line(e, started, (0, 0))
        assert "rows in 2,000 (" in line and "rows out 2,000 (" in line
        assert f"checkpoint {e.last_epoch} (" in line
    finally:
        e.close()
