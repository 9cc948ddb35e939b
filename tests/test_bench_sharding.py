"""Smoke test of ``benchmarks/bench_sharding.py --quick``: it runs, its JSON is complete and finite,
the two strategies give the same update, and the HLO counts show the owner path gathering nothing
on the explicit mesh. The timings themselves are what the full run reports, not tested."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import bench_sharding


@pytest.mark.slow
def test_quick_benchmark_writes_a_complete_finite_json(tmp_path):
    payload = bench_sharding.main(["--quick", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "sharding.json").read_text())
    assert (tmp_path / "sharding.png").stat().st_size > 1000
    assert data["quick"] is True
    assert data["rows"] == json.loads(json.dumps(payload["rows"], default=float))
    for key in ("jax", "optax", "device_kind", "cpu_count", "backend", "device_count"):
        assert key in data["environment"]
    assert data["environment"]["device_count"] == 8
    rows = {(r["transform"], r["mesh"]): r for r in data["rows"]}
    assert set(rows) == {(t, m) for t in bench_sharding.TRANSFORMS for m in ("explicit", "auto")}
    for row in data["rows"]:
        for key in ("naive_ms", "owner_ms", "owner_vs_naive", "max_abs_diff"):
            assert math.isfinite(row[key]), (row, key)
        assert row["owner_vs_naive"] == pytest.approx(row["owner_ms"] / row["naive_ms"])
        assert row["max_abs_diff"] < 1e-5
        if row["mesh"] == "explicit":
            assert row["owner_all_gathers"] == 0
            assert row["naive_all_gathers"] > 0
