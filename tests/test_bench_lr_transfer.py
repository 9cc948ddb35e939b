"""``bench_lr_transfer --resume``: which recorded sweeps are kept (no training here)."""

from __future__ import annotations

import json

from benchmarks import bench_lr_transfer as blt


def _recorded(settings: dict) -> dict:
    """A results JSON with one sweep per (optimizer, init, width) of ``settings``."""
    losses = {
        blt.curve_key(o, std): {
            str(w): [{"lr": lr, "val_loss": 2.0 + lr} for lr in grid] for w in settings["widths"]
        }
        for o, grid in settings["lrs"].items()
        for std in settings["embed_stds"]
    }
    return {"settings": json.loads(json.dumps(settings)), "losses": losses}


def test_resume_keeps_the_sweeps_of_optimizers_whose_grid_is_unchanged(tmp_path):
    old = {**blt.QUICK, "lrs": {"optax.adamw": (1e-3, 4e-3), "normtx modular": (0.02, 0.08)}}
    path = tmp_path / "lr_transfer.json"
    path.write_text(json.dumps(_recorded(old)))
    # one optimizer added, one grid changed: only the unchanged optimizer's sweeps are kept
    new = {**old, "lrs": {"optax.adamw": (1e-3, 4e-3), "normtx modular": (0.01, 0.02), "x": (1,)}}
    kept = blt._previous(path, new, "widths")
    assert set(kept) == {blt.curve_key("optax.adamw", std) for std in new["embed_stds"]}
    for key, per_width in kept.items():
        assert per_width == {w: [(1e-3, 2.001), (4e-3, 2.004)] for w in new["widths"]}, key
    # a width dropped from the settings is dropped from the kept sweeps
    fewer = {**new, "widths": new["widths"][:1]}
    assert all(set(v) == {new["widths"][0]} for v in blt._previous(path, fewer, "widths").values())
    # any other setting changed: nothing is kept
    assert blt._previous(path, {**new, "steps": new["steps"] + 1}, "widths") == {}
