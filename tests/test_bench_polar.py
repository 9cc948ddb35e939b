"""Smoke test of ``benchmarks/bench_polar.py --quick``: it runs, and its JSON is complete and finite.

The targets themselves are measured, not asserted: timings on a shared CI machine are noise.
"""

import json
import math

import pytest

from benchmarks import bench_polar

ROW_KEYS = {"case", "family", "method", "schedule", "steps", "time_s", "rel_err", "sigma_min"}


@pytest.mark.slow
def test_quick_benchmark_writes_a_complete_finite_json(tmp_path, capsys):
    payload = bench_polar.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "polar_express" in printed
    assert (tmp_path / "polar.png").stat().st_size > 0
    data = json.loads((tmp_path / "polar.json").read_text())
    assert data["quick"] is True
    assert data["rows"] == json.loads(json.dumps(payload["rows"], default=float))
    for key in ("jax", "optax", "device_kind", "cpu_count"):
        assert key in data["environment"]
    methods = {r["method"] for r in data["rows"]}
    assert {"jnp.linalg.svd", "optax muon NS", "normtx polar_express"} <= methods
    assert {"normtx polar_express batched", "normtx polar_express per-leaf"} <= methods
    for row in data["rows"]:
        assert row.keys() >= ROW_KEYS
        for key in ("time_s", "rel_err", "sigma_min", "sigma_max"):
            assert math.isfinite(row[key]), (row["method"], key)
        assert row["time_s"] > 0
    assert len(data["targets"]) == 6
    assert all(math.isfinite(v) for v in data["load_average"])
    for target in data["targets"]:
        assert math.isfinite(target["value"]), target
        assert isinstance(target["met"], bool)
