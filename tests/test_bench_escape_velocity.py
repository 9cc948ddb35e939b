"""Smoke test of ``benchmarks/bench_escape_velocity.py --quick``: it runs, and its JSON is sound."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

QUADRATIC_KEYS = {
    "problem": str,
    "direction": str,
    "rule": str,
    "anchor": str,
    "monotone": bool,
    "final_eta": float,
    "best_constant_lr": float,
    "eta_ratio": float,
    "final_loss": float,
    "best_constant_loss": float,
    "loss_ratio": float,
    "initial_loss": float,
    "min_warmup_growth": float,
    "max_step_growth": float,
    "warmup_steps_aligned": int,
}
DIGITS_KEYS = {
    "direction": str,
    "rule": str,
    "anchor": str,
    "monotone": bool,
    "steps": int,
    "test_accuracy": float,
    "final_train_loss": float,
    "final_eta": float,
}


def _check_row(row: dict, keys: dict) -> None:
    assert set(row) == set(keys), row
    for key, kind in keys.items():
        if key == "min_warmup_growth" and row[key] is None:  # no aligned warm-up step
            continue
        assert isinstance(row[key], kind), (key, row[key])
        if kind is float:
            assert math.isfinite(row[key]), (key, row)


def test_quick_benchmark_writes_a_sound_report(tmp_path):
    out = tmp_path / "escape_velocity.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user would run it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_escape_velocity",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final_eta" in proc.stdout
    assert "test_accuracy" in proc.stdout
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert report["quick"] is True
    assert set(report["environment"]) >= {"jax", "optax", "normtx", "device_kind", "cpu_count"}
    assert report["settings"]["steps"] > 0
    assert len(report["quadratic"]) == 8  # every rule x anchor x monotone variant
    for row in report["quadratic"]:
        _check_row(row, QUADRATIC_KEYS)
        assert row["final_eta"] >= 1e-8 * (1 - 1e-6)  # never below init_lr
    assert report["digits"]
    for row in report["digits"]:
        _check_row(row, DIGITS_KEYS)
        assert 0 <= row["test_accuracy"] <= 1
    png = out.with_name(report["eta_plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert math.isfinite(report["seconds"])
