"""Validation loss against steps and wall time per optimizer on the stdlib char-LM.

Every run trains the same transformer (``benchmarks.tasks.charlm``) from the same initial weights on
the same batches for the same number of steps (``benchmarks.tasks.train``); learning rates follow
one shape (cosine decay to a tenth, ``benchmarks.tasks.optimizers.schedule``). Rows:

- best of sweep: ``optax.adamw`` (6-point LR sweep), ``optax.contrib.muon``, normtx ``muon`` and
  ``normuon`` (their Adam parts at AdamW's best LR), ``soap``, ``modular_descent``,
  ``sign_descent``, ``spectral_descent``, and the adaptive family's Shampoo and AdamNMF
  (``normtx.adaptive``);
- untuned: ``optax.contrib.prodigy`` (lr 1) and normtx ``modular_descent`` with
  ``escape_velocity=True`` (lr 1).

The untuned rows and the AdamW best are repeated over several seeds (``seeds``: mean and spread).

Besides the final validation loss, every row reports its *steps to target*: the target is the
AdamW best's final validation loss (seed 0), and a row's steps to target is the step at which its
seed-0 validation loss first falls to the target, linearly interpolated between the two evaluations
(every ``eval_every`` steps) around the crossing (``None``: not reached); ``steps_vs_adamw`` divides
it by AdamW's own (its last step, unless it got there earlier).

Targets: modular + escape velocity *untuned* ends at a validation loss <= the best of the AdamW
sweep; NorMuon and SOAP each reach the AdamW best's final loss in <= 0.8x AdamW's steps. Prints the
table, writes ``benchmarks/results/train.json`` and ``train.png``.

    python -m benchmarks.bench_train [--quick] [--out DIR]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from benchmarks.common import format_table, parse_args, write_json
from benchmarks.tasks import charlm
from benchmarks.tasks import optimizers as opt
from benchmarks.tasks import train as tr

ADAMW = "optax.adamw"
NORMTX_MUON = "normtx muon"
NORMUON = "normtx NorMuon"
SOAP = "normtx SOAP"
UNTUNED = "normtx modular_descent + escape velocity"
# Rows whose update is not linear in the swept ``lr`` (their Adam part keeps AdamW's best LR).
NONLINEAR = ("optax.contrib.muon", NORMTX_MUON, NORMUON)
STEPS_RATIO = 0.8  # NorMuon's and SOAP's target: steps to AdamW's final loss <= 0.8x AdamW's

FULL = {
    "model": charlm.Config(depth=2, width=64, heads=2, context=64),
    "steps": 300,
    "batch_size": 16,
    "eval_every": 25,
    "eval_windows": 128,
    "seeds": (0, 1),
    "lrs": {
        "optax.adamw": (5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2),
        "optax.contrib.muon": (0.01, 0.02, 0.04),
        NORMTX_MUON: (0.01, 0.02, 0.04),
        NORMUON: (0.005, 0.01, 0.02, 0.04),
        SOAP: (2e-3, 4e-3, 8e-3, 1.6e-2),
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
        NORMTX_MUON: (0.02,),
        NORMUON: (0.01,),
        SOAP: (4e-3,),
        "normtx modular_descent": (0.04,),
        "normtx sign_descent": (3e-3,),
        "normtx spectral_descent": (0.03,),
        "normtx.adaptive Shampoo": (3e-3,),
        "normtx.adaptive AdamNMF": (3e-3,),
    },
}


def swept(steps: int, adamw_lr: float) -> dict:
    """``name -> lr -> tx`` for the rows tuned by an LR sweep (Muon's Adam part at AdamW's best)."""
    return {
        ADAMW: lambda lr: opt.adamw(lr, steps),
        "optax.contrib.muon": lambda lr: opt.muon(lr, steps, adam_lr=adamw_lr),
        NORMTX_MUON: lambda lr: opt.normtx_muon(lr, steps, adam_lr=adamw_lr),
        NORMUON: lambda lr: opt.normuon(lr, steps, adam_lr=adamw_lr),
        SOAP: lambda lr: opt.soap(lr, steps),
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


def steps_to_target(run: tr.Run, target: float) -> tuple[float | None, int | None]:
    """``(interpolated, evaluated)``: the step at which ``run``'s validation loss first reaches
    ``target``, linearly interpolated between the evaluations around the crossing, and the first
    evaluated step at or below it; ``(None, None)`` if it never does."""
    losses = run.val["loss"][: len(run.steps)]
    for i, (t, y) in enumerate(zip(run.steps, losses)):
        if y <= target:
            if i == 0:
                return float(t), t
            t0, y0 = run.steps[i - 1], losses[i - 1]
            return t0 + (t - t0) * (y0 - target) / (y0 - y), t
    return None, None


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
        runs = tr.sweep(task, make, lrs, name=name, linear=name not in NONLINEAR, **kw)
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
    # Steps to the AdamW best's final loss (seed 0), for every row's seed-0 curve.
    adamw_steps = steps_to_target(curves[rows.index(adamw)], adamw["val_loss"])[0]
    for row, run in zip(rows, curves):
        row["steps_to_target"], row["eval_step_at_target"] = steps_to_target(run, adamw["val_loss"])
        row["steps_vs_adamw"] = (
            None if row["steps_to_target"] is None else row["steps_to_target"] / adamw_steps
        )
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
    targets = {
        f"{key}_steps_vs_adamw<={STEPS_RATIO}": {
            "optimizer": name,
            "steps_to_target": by[name]["steps_to_target"],
            "adamw_steps": adamw_steps,
            "steps_vs_adamw": by[name]["steps_vs_adamw"],
            "met": by[name]["steps_vs_adamw"] is not None
            and by[name]["steps_vs_adamw"] <= STEPS_RATIO,
        }
        for key, name in (("normuon", NORMUON), ("soap", SOAP))
    }
    print(f"\nchar-LM {s['model']}, {steps} steps, batch {s['batch_size']}\n")
    print(format_table(rows))
    print(f"\ntarget met: {target['met']} (seed 0), {target['met_on_mean']} (mean over seeds)")
    for key, t in targets.items():
        print(f"target {key}: {t['met']} (steps_vs_adamw {t['steps_vs_adamw']})")
    payload = {
        "settings": {k: v for k, v in s.items() if k != "model"},  # model: in task
        "task": task.info,
        "rows": rows,
        "sweeps": sweeps,
        "curves": [r.to_json() for r in curves],
        "target": target,
        "targets": targets,
    }
    write_json(args.out, "train", payload)
    tr.plot_runs(curves, args.out / "train.png", title=f"char-LM, {steps} steps (seed 0)")
    return payload


if __name__ == "__main__":
    main()
