"""What every benchmark shares: CLI flags, timing, the environment record, tables and JSON.

Benchmarks state results as ratios measured side by side in one process (these machines are shared
and noisy), print a table, and write ``benchmarks/results/<name>.json`` with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

import normtx

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

__all__ = [
    "RESULTS",
    "environment",
    "format_table",
    "median_time",
    "median_times",
    "parse_args",
    "timed",
    "write_json",
]


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    *,
    out: pathlib.Path = RESULTS,
    resumable: bool = False,
    options: Callable[[argparse.ArgumentParser], Any] | None = None,
) -> argparse.Namespace:
    """``--quick`` (small settings for CI smoke tests), ``--out`` (results folder, default
    ``out``), for ``resumable`` benchmarks ``--resume`` (keep what ``--out`` already holds), and
    the benchmark's own flags, which ``options(parser)`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small settings (CI smoke test)")
    parser.add_argument("--out", type=pathlib.Path, default=out, help="results folder")
    if resumable:
        parser.add_argument(
            "--resume",
            action="store_true",
            help="reuse the results already in --out that were run with the same settings",
        )
    if options is not None:
        options(parser)
    return parser.parse_args(argv)


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded beside every result."""
    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "optax": optax.__version__,
        "normtx": normtx.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, CPU seconds)``; CPU seconds (``time.process_time``: every thread of
    this process) do not count the time other processes of a shared machine hold the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def median_time(fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 2) -> float:
    """Median wall time in seconds of ``fn()`` (its outputs blocked on) after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_times(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 20, warmup: int = 2
) -> dict[str, float]:
    """``median_time`` of several functions, measured in interleaved rounds (one call of each per
    round), so that a shared machine's changing load weighs on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table (floats to 4 significant digits) for the terminal and the README."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v):
        if isinstance(v, float | np.floating):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    line = lambda cells: "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(b) for b in body)])


def write_json(out_dir: pathlib.Path, name: str, payload: dict[str, Any]) -> pathlib.Path:
    """Writes ``{environment, **payload}`` to ``out_dir/name.json`` and returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2, default=float))
    return path
