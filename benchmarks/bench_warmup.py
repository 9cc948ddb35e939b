"""How long ``modular_descent(escape_velocity=True)`` spends warming up, against ``init_lr``.

The escape-velocity rule (anthology Story III) grows η geometrically from ``init_lr`` until the
weights leave the initial linearisation; every step spent below a useful η is wasted on a short
run. For each ``init_lr`` (the former default ``1e-6``, and larger ones) it trains the same model
from the same weights on the same batches with ``normtx.optimizers.modular_descent(
cosine schedule peaking at 1, escape_velocity=True, init_lr=...)`` and reports

- η after 10 and 30 steps and at the end,
- ``steps_to_threshold``: the first step at which the 10-step running mean of the training loss
  has made 90% of the best run's improvement (``L_0 - 0.9 (L_0 - L_best)``, ``L_0`` the first
  step's loss, ``L_best`` the lowest final running mean over the ``init_lr``; ``None``: never
  within the budget),
- the final training loss (mean of the last 10 steps) and the validation loss.

Tasks: the character-level transformer of ``bench_train`` (100 and 300 steps) and the digits MLP
(100 steps). It prints the table and writes ``benchmarks/results/warmup.json`` and a PNG of η_t
and of the running-mean training loss per run. ``--quick`` runs the digits MLP for 30 steps with
two values.

    .venv/bin/python -m benchmarks.bench_warmup [--quick] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
import optax
from flax import nnx

import normtx

from benchmarks import bench_train
from benchmarks.common import format_table, parse_args, write_json
from benchmarks.tasks import charlm, digits
from benchmarks.tasks import optimizers as opt
from benchmarks.tasks import train as tr

OLD = 1e-6
FULL = {
    "init_lrs": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
    "runs": (("charlm", 100), ("charlm", 300), ("digits-mlp", 100)),
    "batch_size": {"charlm": bench_train.FULL["batch_size"], "digits-mlp": 64},
    "model": bench_train.FULL["model"],
    "eval_windows": 128,
}
QUICK = {
    "init_lrs": (1e-6, 1e-3),
    "runs": (("digits-mlp", 30),),
    "batch_size": {"digits-mlp": 32},
    "model": bench_train.QUICK["model"],
    "eval_windows": 16,
}
WINDOW = 10  # steps in the running mean of the training loss


def _task(name: str, settings: dict) -> tr.Task:
    if name == "charlm":
        return charlm.task(settings["model"], eval_windows=settings["eval_windows"])
    return digits.task("mlp")


def run(task: tr.Task, init_lr: float, steps: int, batch_size: int, seed: int = 0) -> dict:
    """Trains ``steps`` steps; returns the training losses, η before each step and the final
    validation loss."""
    tx = normtx.optimizers.modular_descent(
        opt.schedule(1.0, steps), escape_velocity=True, init_lr=init_lr, norms=opt.modular_norms()
    )
    graphdef, params = tr.init_params(task, seed)
    order = tr.batch_order(seed, steps, batch_size, task.num_positions)
    step = tr.make_train_step(task, graphdef, tx)

    @jax.jit
    def go(params, positions):
        def body(carry, pos):
            params, state = carry
            eta = optax.tree_utils.tree_get(state, "eta")
            params, state, loss = step(params, state, task.train_data, pos)
            return (params, state), (loss, eta)

        (params, _), (losses, etas) = jax.lax.scan(body, (params, tx.init(params)), positions)
        return params, losses, etas

    params, losses, etas = jax.device_get(go(params, order))
    val = float(task.metrics(nnx.merge(graphdef, params), task.eval_data)["loss"])
    return {"losses": np.asarray(losses, np.float64), "etas": np.asarray(etas), "val": val}


def running_mean(x: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Mean of the last ``window`` values at each step (of the first ``t + 1`` before that)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    t = np.arange(1, len(x) + 1)
    lo = np.maximum(t - window, 0)
    return (c[t] - c[lo]) / (t - lo)


def steps_to(curve: np.ndarray, threshold: float) -> int | None:
    """First step (1-based) at which ``curve <= threshold``, ``None`` if never."""
    hits = np.flatnonzero(curve <= threshold)
    return int(hits[0]) + 1 if hits.size else None


def _plot(axes, title: str, results: dict) -> None:
    """η_t (log scale) and the running-mean training loss against the step, one line per
    ``init_lr``."""
    for lr, r in results.items():
        t = np.arange(1, len(r["losses"]) + 1)
        axes[0].semilogy(t, r["etas"], label=f"init_lr {lr:g}")
        axes[1].plot(t, running_mean(r["losses"]), label=f"init_lr {lr:g}")
    axes[0].set(title=title, xlabel="step", ylabel="η_t")
    axes[1].set(title=title, xlabel="step", ylabel=f"training loss ({WINDOW}-step mean)")
    axes[0].legend(fontsize=7)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = QUICK if args.quick else FULL
    rows = []
    tasks = {name: _task(name, s) for name in {name for name, _ in s["runs"]}}
    fig, axes = tr.subplots(2 * len(s["runs"]), width=4.0, squeeze=False)
    for col, (name, steps) in enumerate(s["runs"]):
        results = {lr: run(tasks[name], lr, steps, s["batch_size"][name]) for lr in s["init_lrs"]}
        _plot(axes[0, 2 * col : 2 * col + 2], f"{name}, {steps} steps", results)
        first = float(results[OLD]["losses"][0])  # the same weights and batch for every run
        best = min(float(running_mean(r["losses"])[-1]) for r in results.values())
        threshold = first - 0.9 * (first - best)
        for lr, r in results.items():
            curve = running_mean(r["losses"])
            rows.append(
                {
                    "task": name,
                    "steps": steps,
                    "init_lr": lr,
                    "eta_10": float(r["etas"][min(10, steps - 1)]),
                    "eta_30": float(r["etas"][min(30, steps - 1)]),
                    "eta_final": float(r["etas"][-1]),
                    "steps_to_threshold": steps_to(curve, threshold),
                    "final_train_loss": float(curve[-1]),
                    "val_loss": r["val"],
                }
            )
            print(format_table([rows[-1]]).splitlines()[-1], flush=True)
    print(format_table(rows))
    tr.save_figure(fig, args.out / "warmup.png")
    write_json(
        args.out,
        "warmup",
        {
            "quick": args.quick,
            "settings": {
                "init_lrs": list(s["init_lrs"]),
                "runs": [list(r) for r in s["runs"]],
                "window": WINDOW,
                "threshold": "L_0 - 0.9 (L_0 - L_best): 90% of the best run's improvement",
            },
            "rows": rows,
        },
    )
    return rows


if __name__ == "__main__":
    main()
