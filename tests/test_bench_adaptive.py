"""``benchmarks.bench_adaptive --quick`` writes its JSON with the expected schema, all finite.

The numbers themselves (ratios, memory) are what the full run reports; they are not targets here.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import bench_adaptive

pytestmark = pytest.mark.slow


def test_bench_adaptive_quick(tmp_path):
    bench_adaptive.main(["--quick", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "adaptive.json").read_text())
    assert (tmp_path / "adaptive.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    env = payload["environment"]
    for key in ("jax", "optax", "device_kind", "cpu_count", "backend"):
        assert key in env
    assert payload["settings"]["quick"] is True

    timing = payload["timing"]
    assert timing[0]["optimizer"] == "optax.adam"
    assert timing[0]["ratio_to_adam"] == 1.0
    configs = {(r["precondition_every"], r["inverse_root"]) for r in timing[1:]}
    assert configs == {(e, m) for e in (1, 10) for m in ("eigh", "newton")}
    for row in timing:
        assert math.isfinite(row["ms_per_step"])
        assert row["ms_per_step"] > 0
        assert math.isfinite(row["ratio_to_adam"])
        assert row["ratio_to_adam"] > 0

    memory = {r["optimizer"]: r for r in payload["memory"]}
    assert {"optax.adam", "optax.adafactor", "AdamNMF rank 1", "AdamNMF rank 8"} <= set(memory)
    for row in memory.values():
        assert isinstance(row["state_floats"], int)
        assert math.isfinite(row["floats_per_param"])
    # Exact counts, not targets: Adam keeps two floats per parameter, AdamNMF (m + n) r per matrix.
    assert memory["optax.adam"]["floats_per_param"] == 2.0
    nmf = [memory[f"AdamNMF rank {r}"]["state_floats"] for r in (1, 2, 4, 8)]
    assert nmf == sorted(nmf)
