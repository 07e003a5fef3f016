"""Does memory stay flat over a Nexmark run whose state the watermarks bound?

    python benchmarks/nexmark/memory.py --queries q7,q8,q5 --events 20000000 [--catalog DSN]

Each query (``queries/qN.sql``; default q7) runs as a sink into ``blackhole`` over bounded,
unpaced ``nexmark`` sources of ``--events`` events (all types), with checkpoints every
``--checkpoint-interval`` seconds (default 1), set up as ``run.py``'s ``run_stream`` does, in a
fresh (spawned) process so that its RSS is the run's own. The epochs are run here rather than
by ``run_engine`` (the same loop: ``freeze``, then ``run_epoch`` and a checkpoint when due until
every source has finished, then one more epoch and a final checkpoint), and after an epoch, at
most every ``--sample`` seconds (default 0.5), the process records its RSS (``VmRSS`` of
``/proc/self/status``), the events consumed (the smallest next event number over the readers'
offsets; ``rows in`` is ``engine.rows_in``, rows of the table types the query reads), the
memory DuckDB reports (``duckdb_memory()``), the state rows of every operator
(``engine.metrics()``) and how far apart the readers' watermarks are (``wm skew``: a pipeline's
operators close windows at the smallest). Rows per poll default to about 1/50 of the largest
table the query reads, so that the run has ~50 epochs to sample (``--batch-rows 1000000`` is
the engine's default, which ``run.py`` uses); ``--time-limit`` stops reading after that many
seconds and reports the events read so far as the run.

Printed per query: the samples nearest 10 evenly spaced points of the run (and the final one,
after the last epoch has closed every window), then a verdict: RSS from the 25 % point to the
end of the input (MB and %; more than +10 % and +50 MB counts as growing), the state rows at
those points and their peak after 25 %. State the watermarks bound stays level, however many
events are read; it counts as growing when it ends above ``--growth`` times its size at 25 %
or when at its peak it holds more than ``--share`` of all the rows read by then. Then the
state rows per operator id, growing ones marked. Exits 1 when some query's memory grows.
Without --catalog a throwaway embedded Postgres is started in a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _runner() -> ModuleType:
    """``run.py`` (Query, sources_sql, _reset_catalog), imported by path as the tests do."""
    if "nexmark_run" in sys.modules:
        return sys.modules["nexmark_run"]
    spec = importlib.util.spec_from_file_location("nexmark_run", HERE / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["nexmark_run"] = module
    spec.loader.exec_module(module)
    return module


def rss_mb() -> float:
    """This process's resident set size (VmRSS) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    return float("nan")


def _events_consumed(engine: Any) -> int:  # noqa: ANN401 - an Engine
    """The smallest next event number over the readers (nexmark offsets count events of all
    types), i.e. every source has read at least this many events; rows_in if none has one."""
    seen = []
    for r in engine.readers():
        values = [
            int(v) for v in r.offsets.values() if isinstance(v, int | str) and str(v).isdigit()
        ]
        seen.append(max(values) if values else 0)
    return min(seen) if seen else engine.rows_in


def _watermark_skew_s(engine: Any) -> float:  # noqa: ANN401 - an Engine
    """How far apart in event time the readers' watermarks are (seconds): the operators of a
    pipeline see the smallest, so state behind a faster reader waits for the slowest."""
    marks = [
        r.watermark_us
        for r in engine.readers()
        if r.watermark_us is not None and r.watermark_us != sys.maxsize  # not yet / ended
    ]
    return (max(marks) - min(marks)) / 1e6 if len(marks) > 1 else 0.0


def _sample(engine: Any, started: float) -> dict[str, Any]:  # noqa: ANN401 - an Engine
    state: dict[str, int] = {}
    for p in engine.metrics()["pipelines"]:
        state.update(p["state_rows"])
    ((duck,),) = engine.con.sql(
        "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()"
    ).fetchall()
    return {
        "t": time.perf_counter() - started,
        "events": _events_consumed(engine),
        "rows_in": engine.rows_in,
        "rss_mb": rss_mb(),
        "duckdb_mb": duck / 2**20,
        "state": state,
        "epoch": engine.last_epoch,
        "skew_s": _watermark_skew_s(engine),
    }


#: rows of each table type per block of 50 events (Nexmark's default proportions); a reader
#: of one type has consumed all the events once it is within a block of the end
PER_50 = {"person": 1, "auction": 3, "bid": 46}
BLOCK = 50


def auto_batch_rows(engine: Any, events: int) -> int:  # noqa: ANN401 - an Engine
    """Rows per poll such that the reader of the most frequent table type the query reads
    takes about ``POLLS`` polls over the run (at least 10,000 rows)."""
    share = max(PER_50.get(r.source_name, 50) for r in engine.readers())
    return max(10_000, events * share // 50 // POLLS)


POLLS = 50


def run_sampled(
    name: str, events: int, dsn: str, data_dir: Path, interval: float, every: float,
    batch_rows: int | None = None, time_limit: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The query as a blackhole sink over ``events`` events, sampled after epochs; with
    ``time_limit``, the input stops after that many seconds (the run is what was read)."""
    from sqlstream.config import Settings
    from sqlstream.engine.engine import Engine

    run = _runner()
    q = run.Query(name)
    run._reset_catalog(dsn)  # noqa: SLF001
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o711)
    engine = Engine(Settings(data_dir=data_dir, checkpoint_interval=interval), dsn)
    try:
        engine.con.execute("SET enable_progress_bar = false")
        engine.execute_script(run.sources_sql(events) + ";\n" + q.script("blackhole"))
        engine.settings.batch_rows = batch_rows or auto_batch_rows(engine, events)
        kinds = {
            t.operator_id: kind for p in engine.pipelines.values() for kind, t in p.state_kinds()
        }
        started = time.perf_counter()
        samples = [_sample(engine, started)]
        last = time.perf_counter()
        engine.freeze()
        stopped = False
        while True:  # run_engine's loop (once=True), sampling between epochs
            rows = engine.run_epoch()
            if engine.checkpoint_due():
                engine.checkpoint()
            # the epoch that reads the last events is always sampled: the next one moves the
            # watermarks to the end, which closes every window
            at_end = rows > 0 and _events_consumed(engine) >= events - BLOCK
            stopped = time_limit is not None and time.perf_counter() - started > time_limit
            if at_end or stopped or time.perf_counter() - last >= every:
                last = time.perf_counter()
                samples.append(_sample(engine, started))
            if stopped:
                break
            if rows == 0:
                if engine.finished():
                    break
                time.sleep(engine.settings.idle_sleep)
        if not stopped:
            engine.run_epoch()
            engine.checkpoint()
        elapsed = time.perf_counter() - started
        final = _sample(engine, started)
        return {
            "samples": samples, "final": final, "elapsed": elapsed, "kinds": kinds,
            "batch_rows": engine.settings.batch_rows, "stopped": stopped,
            "events": final["events"] if stopped else events,
        }  # fmt: skip
    finally:
        engine.close()


def _child(args: tuple) -> dict[str, Any]:  # type: ignore[type-arg]
    name, events, dsn, data_dir, interval, every, batch_rows, limit = args
    return run_sampled(name, events, dsn, Path(data_dir), interval, every, batch_rows, limit)


def run_isolated(
    name: str, events: int, dsn: str, data_dir: Path, interval: float, every: float,
    timeout: float, batch_rows: int | None = None, time_limit: float | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """``run_sampled`` in a fresh process; None when it takes longer than ``timeout`` s."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        job = pool.apply_async(
            _child, ((name, events, dsn, str(data_dir), interval, every, batch_rows, time_limit),)
        )
        try:
            return job.get(timeout)
        except multiprocessing.TimeoutError:
            return None


# -- report ----------------------------------------------------------------------------------


def _at(samples: list[dict[str, Any]], events: float) -> dict[str, Any]:
    """The sample whose events consumed are nearest ``events``."""
    return min(samples, key=lambda s: abs(s["events"] - events))


def _state_total(s: dict[str, Any]) -> int:
    return sum(s["state"].values())


def report(
    name: str, events: int, result: dict[str, Any], points: int, growth: float, share: float
) -> bool:
    """Print the table and the verdict; True when RSS and state look bounded."""
    samples, final = result["samples"], result["final"]
    if result["stopped"]:
        print(f"\n{name}: stopped by --time-limit after {result['events']:,} of {events:,} events:")
        events = result["events"]
    print(
        f"{'' if result['stopped'] else chr(10)}{name}: {events:,} events in {result['elapsed']:.1f} s "
        f"({events / result['elapsed']:,.0f} events/s), {result['batch_rows']:,} rows per poll, "
        f"{len(samples)} samples"
    )
    print(
        f"{'point':>6} {'events':>12} {'rows in':>11} {'t s':>6} {'RSS MB':>7} {'DuckDB MB':>9} "
        f"{'state rows':>11} {'wm skew s':>9}"
    )

    def row(label: str, s: dict[str, Any], note: str = "") -> None:
        print(
            f"{label:>6} {s['events']:12,} {s['rows_in']:11,} {s['t']:6.1f} {s['rss_mb']:7.0f} "
            f"{s['duckdb_mb']:9.0f} {_state_total(s):11,} {s['skew_s']:9.1f}{note}"
        )

    for i in range(points + 1):
        row(f"{100 * i // points}%", samples[0] if i == 0 else _at(samples, events * i / points))
    if not result["stopped"]:
        row("final", final, "  (after the last windows close)")

    q25, q50 = _at(samples, events / 4), _at(samples, events / 2)
    end = next((s for s in samples if s["events"] >= events - BLOCK), samples[-1])
    later = [s for s in samples if s["events"] >= q25["events"]]
    d_rss = end["rss_mb"] - q25["rss_mb"]
    rss_ok = d_rss <= max(0.10 * q25["rss_mb"], 50.0)
    peak_rss = max(s["rss_mb"] for s in samples + [final])

    def peak(key: Any) -> tuple[int, float, dict[str, Any]]:  # noqa: ANN401 - a function
        """The largest state (by ``key``) from 25 % on: rows, share of rows read, sample."""
        s = max(later, key=key)
        return key(s), key(s) / max(s["rows_in"], 1), s

    st25, st_end = _state_total(q25), _state_total(end)
    st_peak, st_share, at = peak(_state_total)
    state_ok = st_end <= growth * max(st25, 1) + 1000 and st_share <= share
    print(
        f"verdict: RSS {q25['rss_mb']:.0f} MB at 25 % -> {end['rss_mb']:.0f} MB at the end of "
        f"the input ({d_rss:+.0f} MB, {100 * d_rss / q25['rss_mb']:+.1f} %; peak "
        f"{peak_rss:.0f} MB); state rows {st25:,} at 25 % -> {st_end:,} at the end; peak "
        f"{st_peak:,} at {at['events']:,} events = {100 * st_share:.1f} % of the rows read by "
        f"then -> {'flat' if rss_ok and state_ok else 'GROWS'}"
        f"{'' if rss_ok else ' (RSS)'}{'' if state_ok else ' (state)'}"
    )
    ops = sorted(set().union(*(s["state"] for s in samples)))
    width = max((len(op) for op in ops), default=8)
    print(
        f"  {'state rows per operator':{width}} {'operator':18} {'at 25 %':>10} {'at 50 %':>10} "
        f"{'at end':>10} {'peak':>10} {'% read':>6} {'final':>8}"
    )
    for op in ops:
        a, m, b = (s["state"].get(op, 0) for s in (q25, q50, end))
        p, ps, _ = peak(lambda s, op=op: s["state"].get(op, 0))
        grows = b > growth * max(a, 1) + 1000 or ps > share
        print(
            f"  {op:{width}} {result['kinds'].get(op, '?'):18} {a:>10,} {m:>10,} {b:>10,} "
            f"{p:>10,} {100 * ps:5.1f}% {final['state'].get(op, 0):>8,}"
            f"{'  <- grows' if grows else ''}"
        )
    return rss_ok and state_ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", default="q7", help="comma-separated query names (default q7)")
    ap.add_argument("--events", type=int, default=20_000_000, help="default 20,000,000")
    ap.add_argument("--catalog", help="Postgres DSN (default: a throwaway embedded Postgres)")
    ap.add_argument("--checkpoint-interval", type=float, default=1.0, help="seconds (default 1)")
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between samples (0.5)")
    ap.add_argument(
        "--batch-rows",
        type=int,
        help="rows per poll (default: about 1/50 of the largest table the query reads, so\n"
        "that the run has ~50 epochs to sample; run.py uses the engine's 1,000,000)",
    )
    ap.add_argument("--points", type=int, default=10, help="rows of the table (default 10)")
    ap.add_argument(
        "--growth", type=float, default=2.0,
        help="state at the end above this many times that at 25 %% counts as growing (2)",
    )  # fmt: skip
    ap.add_argument(
        "--share", type=float, default=0.10,
        help="state holding more than this share of the rows read counts as growing (0.10)",
    )  # fmt: skip
    ap.add_argument(
        "--time-limit", type=float,
        help="stop reading after this many seconds and report the events read so far",
    )  # fmt: skip
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run (default 600)")
    args = ap.parse_args(argv)
    names = args.queries.split(",")

    from sqlstream.checkpoint.embedded import scratch_catalog

    bounded = True
    with scratch_catalog(args.catalog, "sqlstream-nexmark-memory-") as (dsn, tmp):
        for name in names:
            q = _runner().Query(name)
            if q.view is None:
                print(f"{name}: does not run ({q.reason})")
                continue
            result = run_isolated(
                name, args.events, dsn, tmp / "data", args.checkpoint_interval, args.sample,
                max(args.timeout, (args.time_limit or 0) + 120), args.batch_rows, args.time_limit,
            )  # fmt: skip
            if result is None:
                print(f"{name}: timed out after {args.timeout:.0f} s", flush=True)
                bounded = False
                continue
            bounded &= report(name, args.events, result, args.points, args.growth, args.share)
            sys.stdout.flush()
        return 0 if bounded else 1


if __name__ == "__main__":
    sys.exit(main())
