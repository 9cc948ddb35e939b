"""Validation loss against steps and wall time per optimizer on the stdlib char-LM.

Every run trains the same transformer (``benchmarks.tasks.charlm``) from the same initial weights on
the same batches for the same number of steps (``benchmarks.tasks.train``); learning rates follow
one shape (cosine decay to a tenth, ``benchmarks.tasks.optimizers.schedule``). Rows:

- best of sweep: ``optax.adamw`` (6-point LR sweep), ``optax.contrib.muon`` (Adam part at AdamW's
  best LR), normtx ``modular_descent``, ``sign_descent``, ``spectral_descent``, and the adaptive
  family's Shampoo and AdamNMF (``normtx.adaptive``);
- untuned: ``optax.contrib.prodigy`` (lr 1) and normtx ``modular_descent`` with
  ``escape_velocity=True`` (lr 1).

The untuned rows and the AdamW best are repeated over several seeds (``seeds``: mean and spread).
The target: modular + escape velocity *untuned* ends at a validation loss <= the best of the AdamW
sweep. Prints the table, writes ``benchmarks/results/train.json`` and ``train.png``.

    python -m benchmarks.bench_train [--quick] [--out DIR]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from benchmarks.common import format_table, parse_args, write_json
from benchmarks.tasks import charlm
from benchmarks.tasks import optimizers as opt
from benchmarks.tasks import train as tr

FULL = {
    "model": charlm.Config(depth=2, width=64, heads=2, context=64),
    "steps": 300,
    "batch_size": 16,
    "eval_every": 50,
    "eval_windows": 128,
    "seeds": (0, 1),
    "lrs": {
        "optax.adamw": (5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2),
        "optax.contrib.muon": (0.01, 0.02, 0.04),
        "normtx modular_descent": (0.015, 0.03, 0.06),
        "normtx sign_descent": (1e-3, 3e-3),
        "normtx spectral_descent": (0.01, 0.03),
        "normtx.adaptive Shampoo": (1e-3, 3e-3),
        "normtx.adaptive AdamNMF": (1e-3, 3e-3),
    },
}
QUICK = {
    "model": charlm.Config(depth=1, width=32, heads=2, context=16),
    "steps": 20,
    "batch_size": 8,
    "eval_every": 10,
    "eval_windows": 16,
    "seeds": (0,),
    "lrs": {
        "optax.adamw": (4e-3,),
        "optax.contrib.muon": (0.02,),
        "normtx modular_descent": (0.04,),
        "normtx sign_descent": (3e-3,),
        "normtx spectral_descent": (0.03,),
        "normtx.adaptive Shampoo": (3e-3,),
        "normtx.adaptive AdamNMF": (3e-3,),
    },
}
ADAMW = "optax.adamw"
UNTUNED = "normtx modular_descent + escape velocity"


def swept(steps: int, adamw_lr: float) -> dict:
    """``name -> lr -> tx`` for the rows tuned by an LR sweep (Muon's Adam part at AdamW's best)."""
    return {
        ADAMW: lambda lr: opt.adamw(lr, steps),
        "optax.contrib.muon": lambda lr: opt.muon(lr, steps, adam_lr=adamw_lr),
        "normtx modular_descent": lambda lr: opt.modular(lr, steps),
        "normtx sign_descent": lambda lr: opt.sign(lr, steps),
        "normtx spectral_descent": lambda lr: opt.spectral(lr, steps),
        "normtx.adaptive Shampoo": lambda lr: opt.shampoo(lr, steps),
        "normtx.adaptive AdamNMF": lambda lr: opt.adam_nmf(lr, steps),
    }


def untuned(steps: int) -> dict:
    """``name -> tx`` for the rows with nothing tuned (learning-rate multiplier 1)."""
    return {
        "optax.contrib.prodigy": lambda: opt.prodigy(steps),
        UNTUNED: lambda: opt.modular_ev(steps),
    }


def _row(label: str, tuning: str, lr: float, runs: Sequence[tr.Run]) -> dict:
    """One table row from the runs of one configuration over seeds (``runs[0]`` is seed 0)."""
    finals = [r.final_val_loss for r in runs]
    first = runs[0]
    return {
        "optimizer": label,
        "tuning": tuning,
        "lr": lr,
        "val_loss": tr.finite_or_none(finals[0]),
        "val_loss_mean": tr.finite_or_none(statistics.fmean(finals)),
        "val_loss_std": tr.finite_or_none(statistics.pstdev(finals)),
        "seeds": len(runs),
        "ms_per_step": 1e3 * first.wall_s[-1] / max(first.steps[-1], 1),
        "compile_s": first.compile_s,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = QUICK if args.quick else FULL
    task = charlm.task(s["model"], eval_windows=s["eval_windows"])
    steps = s["steps"]
    kw = {"steps": steps, "batch_size": s["batch_size"], "eval_every": s["eval_every"]}

    rows, sweeps, curves = [], {}, []
    adamw_lr = None
    for name in s["lrs"]:
        lrs = s["lrs"][name]
        make = swept(steps, adamw_lr)[name]
        # Muon's Adam part keeps its own learning rate: its update is not linear in ``lr``.
        linear = name != "optax.contrib.muon"
        runs = tr.sweep(task, make, lrs, name=name, linear=linear, **kw)
        i = tr.best(runs)
        sweeps[name] = [
            {"lr": lr, "val_loss": tr.finite_or_none(r.final_val_loss), "diverged": r.diverged}
            for lr, r in zip(lrs, runs)
        ]
        best_runs = [runs[i]]
        if name == ADAMW:
            adamw_lr = lrs[i]
            for k in s["seeds"][1:]:
                best_runs += tr.sweep(task, make, [adamw_lr], name=f"{name} seed={k}", seed=k, **kw)
        rows.append(_row(name, f"best of {len(lrs)}-point sweep", lrs[i], best_runs))
        curves.append(best_runs[0])
    for name, make in untuned(steps).items():
        trainer = tr.Trainer(task, make(), **kw)
        runs = [trainer.run(seed=k, name=f"{name} seed={k}") for k in s["seeds"]]
        rows.append(_row(name, "untuned", 1.0, runs))
        curves.append(runs[0])

    by = {r["optimizer"]: r for r in rows}
    ev, adamw = by[UNTUNED], by[ADAMW]
    target = {
        "claim": f"{UNTUNED}, untuned: final val loss <= best of the AdamW sweep",
        "normtx_untuned": ev["val_loss"],
        "normtx_untuned_mean": ev["val_loss_mean"],
        "adamw_best": adamw["val_loss"],
        "adamw_best_mean": adamw["val_loss_mean"],
        "met": ev["val_loss"] is not None and ev["val_loss"] <= adamw["val_loss"],
        "met_on_mean": ev["val_loss_mean"] is not None
        and ev["val_loss_mean"] <= adamw["val_loss_mean"],
    }
    print(f"\nchar-LM {s['model']}, {steps} steps, batch {s['batch_size']}\n")
    print(format_table(rows))
    print(f"\ntarget met: {target['met']} (seed 0), {target['met_on_mean']} (mean over seeds)")
    payload = {
        "settings": {k: v for k, v in s.items() if k != "model"},  # model: in task
        "task": task.info,
        "rows": rows,
        "sweeps": sweeps,
        "curves": [r.to_json() for r in curves],
        "target": target,
    }
    write_json(args.out, "train", payload)
    tr.plot_runs(curves, args.out / "train.png", title=f"char-LM, {steps} steps (seed 0)")
    return payload


if __name__ == "__main__":
    main()
