"""Every benchmark runs in ``--quick`` mode, writes its JSON (schema checked) and PNG, and every
number it records is finite. The targets themselves are what the full runs report, not tested."""

from __future__ import annotations

import json
import math
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normtx
from normtx._pytree import path_str

from benchmarks import (
    bench_accelerator,
    bench_dion,
    bench_lr_transfer,
    bench_step,
    bench_train,
    bench_warmup,
)
from benchmarks.tasks import charlm, linen_gpt, train
from benchmarks.tasks import optimizers as opt


def _numbers(x):
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return
    if isinstance(x, int | float):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)


def _load(tmp_path, name: str) -> dict:
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    env = payload["environment"]
    for key in ("jax", "optax", "device_kind", "cpu_count", "backend"):
        assert key in env
    assert all(math.isfinite(v) for v in _numbers(payload))
    return payload


@pytest.mark.slow
def test_bench_train_quick(tmp_path):
    bench_train.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path, "train")
    rows = {r["optimizer"]: r for r in payload["rows"]}
    assert {"optax.adamw", "optax.contrib.muon", "optax.contrib.prodigy"} <= set(rows)
    assert {bench_train.NORMTX_MUON, bench_train.NORMUON, bench_train.SOAP} <= set(rows)
    assert any("escape velocity" in name for name in rows)
    # Steps to the AdamW best's final loss: AdamW reaches it by its last step, its ratio is 1.
    adamw = rows["optax.adamw"]
    assert 0 < adamw["steps_to_target"] <= payload["settings"]["steps"]
    assert adamw["steps_vs_adamw"] == pytest.approx(1.0)
    for r in rows.values():
        if r["steps_to_target"] is None:
            assert r["steps_vs_adamw"] is None
            assert r["eval_step_at_target"] is None
        else:
            assert r["steps_to_target"] <= r["eval_step_at_target"]
            assert r["steps_vs_adamw"] == pytest.approx(
                r["steps_to_target"] / adamw["steps_to_target"]
            )
    assert set(payload["targets"]) == {"normuon_steps_vs_adamw<=0.8", "soap_steps_vs_adamw<=0.8"}
    assert payload["task"]["corpus_sha256"] == payload["task"]["corpus_sha256"].lower()
    assert len(payload["task"]["corpus_sha256"]) == 64
    assert set(payload["target"]) >= {"met", "adamw_best", "normtx_untuned"}
    for curve in payload["curves"]:
        assert len(curve["steps"]) == len(curve["val"]["loss"]) == len(curve["wall_s"])


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (2.5, (37.5, 50)),  # between the evaluations at 25 (3.0) and 50 (2.0): 25 + 25 * 0.5
        (2.0, (50.0, 50)),  # reached exactly at an evaluation
        (1.5, (75.0, 75)),  # the last evaluation
        (4.0, (0.0, 0)),  # the initial loss already meets it
        (1.0, (None, None)),  # never reached
    ],
)
def test_steps_to_target_interpolates_the_first_crossing(target, expected):
    run = types.SimpleNamespace(steps=[0, 25, 50, 75], val={"loss": [4.0, 3.0, 2.0, 1.5]})
    assert bench_train.steps_to_target(run, target) == expected


@pytest.mark.slow
def test_bench_lr_transfer_quick(tmp_path, monkeypatch):
    bench_lr_transfer.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path, "lr_transfer")
    assert payload["complete"]
    widths = payload["settings"]["widths"]
    assert {(r["optimizer"], r["width"]) for r in payload["rows"]} == {
        (name, w) for name in payload["drift"] for w in widths
    }
    assert all(d >= 1.0 for d in payload["drift"].values())

    # --resume keeps every recorded sweep and runs only what is missing: here one (optimizer,
    # width) pair, deleted from the JSON, is all that a recording stand-in for tr.sweep sees.
    dropped = ("normtx modular", widths[-1])
    stored = json.loads((tmp_path / "lr_transfer.json").read_text())
    del stored["losses"][dropped[0]][str(dropped[1])]
    (tmp_path / "lr_transfer.json").write_text(json.dumps(stored))
    asked = []

    def recording_sweep(task, make, lrs, *, name, **kw):
        asked.append(name)
        return [types.SimpleNamespace(final_val_loss=float(lr)) for lr in lrs]

    monkeypatch.setattr(train, "sweep", recording_sweep)
    resumed = bench_lr_transfer.main(["--quick", "--out", str(tmp_path), "--resume"])
    assert asked
    assert set(asked) == {f"{dropped[0]} w={dropped[1]}"}
    assert resumed["complete"]
    for name, per_width in payload["losses"].items():
        for width, points in per_width.items():
            if (name, int(width)) != dropped:
                assert resumed["losses"][name][width] == points


@pytest.mark.slow
def test_bench_lr_transfer_depth_quick(tmp_path):
    payload = bench_lr_transfer.main(["--quick", "--axis", "depth", "--out", str(tmp_path)])
    data = _load(tmp_path, "lr_transfer_depth")
    assert data["axis"] == "depth"
    assert data["complete"]
    depths = data["settings"]["depths"]
    assert {(r["optimizer"], r["depth"]) for r in data["rows"]} == {
        (name, d) for name in data["drift"] for d in depths
    }
    assert any("mass scales" in name for name in data["drift"])
    assert all(d >= 1.0 for d in payload["drift"].values())


@pytest.mark.parametrize("axis", ["width", "depth"])
def test_lr_transfer_model_config_varies_one_axis(axis):
    full = bench_lr_transfer.AXES[axis][0]
    for value in full[f"{axis}s"]:
        cfg = bench_lr_transfer.model_config(full, axis, value, 1.0)
        assert getattr(cfg, axis) == value
        fixed = "depth" if axis == "width" else "width"
        assert getattr(cfg, fixed) == full[fixed]
        assert cfg.heads == max(cfg.width // 32, 1)
        assert cfg.embed_std == 1.0


@pytest.mark.slow
def test_bench_dion_quick(tmp_path):
    payload = bench_dion.main(["--quick", "--out", str(tmp_path)])
    data = _load(tmp_path, "dion")
    assert data["rows"] == json.loads(json.dumps(payload["rows"]))
    rows = {(r["shape"], r["method"]): r for r in data["rows"]}
    shapes = {f"{a}x{b}" for a, b in bench_dion.QUICK["shapes"]}
    assert set(rows) == {(s, m) for s in shapes for m in ("newton_schulz", "dion 1/4", "dion 1/16")}
    assert rows["64x64", "dion 1/4"]["rank"] == 16
    assert rows["64x256", "dion 1/16"]["rank"] == 4
    for (shape, _), r in rows.items():
        assert r["time_ms"] > 0
        base = rows[shape, "newton_schulz"]["time_ms"]
        assert r["vs_newton_schulz"] == pytest.approx(r["time_ms"] / base)


@pytest.mark.slow
def test_bench_warmup_quick(tmp_path):
    rows = bench_warmup.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path, "warmup")
    assert payload["rows"] == rows
    assert [r["init_lr"] for r in rows] == list(bench_warmup.QUICK["init_lrs"])
    for r in rows:
        # η starts at init_lr and never decreases (the monotone prodigy rule).
        assert r["init_lr"] <= r["eta_10"] <= r["eta_30"] <= r["eta_final"]
        assert all(math.isfinite(r[k]) for k in ("final_train_loss", "val_loss"))
        steps = r["steps_to_threshold"]
        assert steps is None or 1 <= steps <= r["steps"]
    # The best run makes 90% of its own improvement within the budget.
    best = min(rows, key=lambda r: r["final_train_loss"])
    assert best["steps_to_threshold"] is not None


@pytest.mark.parametrize(
    ("losses", "threshold", "expected"), [([3.0, 2.0, 1.0], 2.5, 2), ([3.0, 2.0], 0.5, None)]
)
def test_warmup_steps_to_threshold_is_the_first_crossing(losses, threshold, expected):
    assert bench_warmup.steps_to(np.asarray(losses), threshold) == expected


def test_warmup_running_mean_is_the_mean_of_the_last_window():
    x = np.arange(1.0, 13.0)
    want = [np.mean(x[max(0, t + 1 - bench_warmup.WINDOW) : t + 1]) for t in range(12)]
    np.testing.assert_allclose(bench_warmup.running_mean(x), want)


@pytest.mark.slow
def test_bench_step_quick(tmp_path):
    # One model (linen, nn.scan) keeps the smoke test short: every optimizer's update and train
    # step are compiled, and each compile takes seconds even for a tiny model.
    bench_step.main(["--quick", "--models", "gpt-scan", "--out", str(tmp_path)])
    payload = _load(tmp_path, "step")
    model = bench_step.MODELS["gpt-scan"]
    assert set(payload["models"]) == {model}
    rows = {r["optimizer"]: r for r in payload["rows"]}
    assert set(rows) == {
        "optax.adamw",
        "optax.contrib.muon",
        "normtx muon",
        "normtx modular",
        "normtx modular + escape velocity",
    }
    adamw = rows["optax.adamw"]
    for key in ("update_vs_adamw", "step_vs_adamw", "compile_vs_adamw"):
        assert adamw[key] == pytest.approx(1.0)
    # AdamW keeps two moments per parameter: an exact count from jax.eval_shape.
    assert adamw["state_floats_per_param"] == pytest.approx(2.0, abs=1e-6)
    for r in rows.values():
        assert r["model"] == model
        assert min(r["update_ms"], r["train_step_ms"], r["step_trace_s"], r["compile_s"]) > 0
        assert r["compile_cpu_s"] > r["step_trace_s"]
        assert r["compile_vs_adamw"] == pytest.approx(r["compile_cpu_s"] / adamw["compile_cpu_s"])
        assert isinstance(r["update_hlo_lines"], int)
        assert r["update_hlo_lines"] > 100
    goals = payload["targets"][model]
    ev, mod = rows["normtx modular + escape velocity"], rows["normtx modular"]
    assert goals["modular_ev_hlo_vs_modular<=1.3"] == (
        ev["update_hlo_lines"] <= 1.3 * mod["update_hlo_lines"]
    )
    assert goals["modular_ev_step_vs_adamw<=1.1"] == (ev["step_vs_adamw"] <= 1.1)
    assert set(goals) >= {"modular_compile_vs_adamw<=1.3", "modular_ev_compile_vs_adamw<=1.5"}


@pytest.mark.parametrize("scan", [False, True])
def test_linen_gpt_roles_without_labels(scan):
    # normtx.roles.infer classifies the independent linen GPT, scanned or not, with no labels.
    depth = 3
    cfg = linen_gpt.Config(depth=depth, width=16, heads=2, context=8, vocab=32, batch=2, scan=scan)
    params, batch = linen_gpt.init(cfg)
    assert batch.shape == (2, 9)
    assert batch.dtype == jnp.int32
    assert np.isfinite(float(jax.jit(linen_gpt.loss_fn(cfg))(params, batch)))
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    roles = dict(zip(paths, (r.name for r in jax.tree.leaves(normtx.roles.infer(params)))))
    expected = {
        "params/Embed_0/embedding": "embedding",
        "params/Embed_1/embedding": "embedding",
        "params/LayerNorm_0/scale": "gain",
        "params/LayerNorm_0/bias": "bias",
        "params/head/kernel": "head",
        "params/head/bias": "bias",
    }
    for block in ["params/blocks"] if scan else [f"params/Block_{i}" for i in range(depth)]:
        for part in ("query", "key", "value", "out"):
            expected[f"{block}/MultiHeadDotProductAttention_0/{part}/kernel"] = "attention"
            expected[f"{block}/MultiHeadDotProductAttention_0/{part}/bias"] = "bias"
        for name in ("Dense_0", "Dense_1"):
            expected[f"{block}/{name}/kernel"] = "hidden"
            expected[f"{block}/{name}/bias"] = "bias"
        for name in ("LayerNorm_0", "LayerNorm_1"):
            expected[f"{block}/{name}/scale"] = "gain"
            expected[f"{block}/{name}/bias"] = "bias"
    assert roles == expected
    if scan:  # every block parameter carries the layer axis first
        assert params["params"]["blocks"]["Dense_0"]["kernel"].shape == (depth, 16, 64)


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ([3.0, 2.0, 3.0], 2.0),  # symmetric parabola: the middle point
        ([2.0, 3.0, 4.0], 1.0),  # minimum at the edge: the grid point itself
        ([4.0, 2.0, math.inf], 2.0),  # a diverged neighbour: no refinement
    ],
)
def test_refined_best_lr(losses, expected):
    assert bench_lr_transfer.refined_best([1.0, 2.0, 4.0], losses) == pytest.approx(expected)


def test_refined_best_lr_parabola_vertex():
    # y = (log2 lr - 1.5)^2 sampled at lr = 1, 2, 4: the vertex is at lr = 2^1.5.
    lrs = [1.0, 2.0, 4.0]
    losses = [(math.log2(x) - 1.5) ** 2 for x in lrs]
    assert bench_lr_transfer.refined_best(lrs, losses) == pytest.approx(2**1.5)


@pytest.mark.parametrize("tied", [False, True])
def test_muon_rule_is_roles_hidden(tied):
    # The Muon anchor orthogonalises exactly the leaves normtx.roles.infer calls "hidden".
    cfg = charlm.Config(depth=2, width=32, heads=2, context=8, tied=tied)
    _, params = train.init_params(charlm.task(cfg, eval_windows=2), 0)
    dims = opt.muon_dimension_numbers(params)
    hidden = jax.tree.map(lambda r: r.name == "hidden", normtx.roles.infer(params))
    got = jax.tree.map(
        lambda d: d is not None, dims, is_leaf=lambda x: x is None or hasattr(x, "reduction_axis")
    )
    assert got == hidden
    assert sum(jax.tree.leaves(hidden)) == 2 * 6  # q, k, v, o, fc_in, fc_out per block


def test_run_all_runs_every_benchmark_in_its_own_process_and_stops_at_a_failure(monkeypatch):
    """``make bench``: every ``benchmarks/bench_*.py``, arguments passed on, first failure wins."""
    from benchmarks import run_all

    on_disk = {p.stem for p in pathlib.Path(run_all.__file__).parent.glob("bench_*.py")}
    assert set(run_all.BENCHMARKS) == on_disk
    calls = []

    def fake_call(cmd):
        calls.append(cmd)
        return 3 if cmd[2] == "benchmarks.bench_sharding" else 0

    monkeypatch.setattr(run_all.subprocess, "call", fake_call)
    assert run_all.main(["--quick"]) == 3
    assert [c[2] for c in calls] == [f"benchmarks.{n}" for n in run_all.BENCHMARKS[:3]]
    assert all(c[1] == "-m" and c[3:] == ["--quick"] for c in calls)


@pytest.mark.slow
def test_bench_accelerator_quick(tmp_path, monkeypatch):
    """Every part runs on CPU; a case that raises is recorded in its row and the others go on."""
    full = bench_accelerator.step_candidates()

    def broken():
        raise RuntimeError("this optimizer fails to build")

    kept = (bench_accelerator.BASELINE, "optax.adamw", "normtx modular")
    monkeypatch.setattr(
        bench_accelerator,
        "step_candidates",
        lambda: {**{k: full[k] for k in kept}, "broken": broken},
    )
    bench_accelerator.main(["--quick", "--out", str(tmp_path)])
    data = _load(tmp_path, "accelerator")
    assert data["settings"]["layers"] == 1
    assert not data["complete"]  # the broken optimizer
    polar = {(r["method"], r["dtype"]): r for r in data["polar"]}
    assert set(polar) == {
        (m, d) for m in bench_accelerator.polar_methods("float32") for d in bench_accelerator.DTYPES
    }
    for r in polar.values():
        assert r["status"] == "ok"
        assert min(r["time_ms"], r["compile_s"]) > 0
        assert 0 <= r["max_abs_sigma_minus_1"] < 1
    # Stacked and leaf by leaf compute the same polar factors.
    for dtype in bench_accelerator.DTYPES:
        assert polar["normtx stacked (polar_express)", dtype]["max_abs_sigma_minus_1"] == (
            pytest.approx(polar["normtx per-leaf (polar_express)", dtype]["max_abs_sigma_minus_1"])
        )
    step = {r["optimizer"]: r for r in data["step"]}
    assert set(step) == {*kept, "broken"}
    assert step["broken"]["status"].startswith("error: RuntimeError")
    assert step["broken"]["update_status"].startswith("error: RuntimeError")
    assert "step_ms" not in step["broken"]
    for name in kept:
        r = step[name]
        assert r["status"] == r["update_status"] == "ok"
        assert min(r["step_ms"], r["compile_s"], r["update_ms"]) > 0
        assert r["share"] == pytest.approx(1 - step[kept[0]]["step_ms"] / r["step_ms"])
    assert step[kept[0]]["share"] == 0
    assert data["tokens_per_step"] == 2 * 16
    assert data["model"]["depth"] == 1


def test_bench_accelerator_out_of_budget_still_writes_its_table(tmp_path):
    payload = bench_accelerator.main(["--quick", "--budget", "0", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "accelerator.json").read_text())
    assert not data["complete"]
    assert data["polar_tree"]["status"] == "skipped: time budget"
    assert all(r["status"].startswith("not run") for r in data["polar"] + data["step"])
    assert len(data["polar"]) == 4 * len(bench_accelerator.DTYPES)
    assert payload["parts"] == list(bench_accelerator.PARTS)


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (6, 6)])
def test_max_abs_sigma_minus_1_closed_form(shape):
    # X = U diag(s) Vᵀ with prescribed singular values: the answer is max|s - 1|.
    rng = np.random.default_rng(0)
    m, n = shape
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.linspace(0.7, 1.2, k)
    x = (u * s) @ v.T
    tree = {"a": np.asarray(x, np.float32), "b": np.eye(3, dtype=np.float32)}
    assert float(bench_accelerator.max_abs_sigma_minus_1(tree)) == pytest.approx(0.3, abs=1e-5)
