"""Does the best learning rate transfer across width? AdamW against normtx modular descent.

For widths 64, 128, 256 and 512 of the char-LM transformer (depth, context, batch, steps and data
order fixed; ``width // 32`` heads), sweep the learning rate of ``optax.adamw`` and of normtx modular
descent (``benchmarks.tasks.optimizers``) on factor-2 grids and record the final validation loss.
Where the best loss lies on an edge of the grid, the grid grows by a factor 2 past that edge, up to
``extensions`` times. The best LR per width is the grid minimum refined by a parabola through it and
its two neighbours in log-LR (kept within those neighbours; the grid point itself at an edge, and
then the drift below is only a lower bound, flagged ``at_grid_edge``/``edge``). The *drift* of an
optimizer is ``max_w lr*(w) / min_w lr*(w)`` over the widths; the target for normtx is a drift
<= 2, with AdamW's reported beside it.

``embed_stds`` repeats everything per initialisation of the embedding tables: ``None`` is Flax's
default (rows of RMS ``1/sqrt(width)``), ``1.0`` gives rows of unit RMS, which is what the ℓ1 -> RMS
norm that normtx gives embeddings assumes (anthology Prop. 8 and epilogue).

Prints the table, writes ``benchmarks/results/lr_transfer.json`` and ``lr_transfer.png`` (loss
against LR, one curve per width, one panel per optimizer).

    python -m benchmarks.bench_lr_transfer [--quick] [--out DIR] [--resume]

``--resume`` keeps the sweeps already in ``DIR/lr_transfer.json`` whose settings (all but the
widths) match, and runs only the missing (optimizer, width) pairs: a long run that was stopped, or
one made before a width was added, is completed rather than repeated.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from benchmarks.common import format_table, parse_args, write_json
from benchmarks.tasks import charlm
from benchmarks.tasks import optimizers as opt
from benchmarks.tasks import train as tr

FULL = {
    "widths": (64, 128, 256, 512),
    "depth": 2,
    "context": 32,
    "batch_size": 16,
    "steps": 60,
    "eval_windows": 64,
    "extensions": 2,
    "embed_stds": (None, 1.0),
    "lrs": {
        "optax.adamw": (1e-3, 2e-3, 4e-3, 8e-3),
        "normtx modular": (0.005, 0.01, 0.02, 0.04),
    },
}
QUICK = {
    "widths": (32, 64),
    "depth": 1,
    "context": 16,
    "batch_size": 8,
    "steps": 10,
    "eval_windows": 16,
    "extensions": 1,
    "embed_stds": (None,),
    "lrs": {"optax.adamw": (1e-3, 4e-3, 1.6e-2), "normtx modular": (0.02, 0.08, 0.32)},
}


def factories(steps: int) -> dict:
    return {
        "optax.adamw": lambda lr: opt.adamw(lr, steps),
        "normtx modular": lambda lr: opt.modular(lr, steps),
    }


def refined_best(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The grid minimum of ``losses`` refined by a parabola in ``log2(lr)`` (see the docstring)."""
    x, y = np.log2(np.asarray(lrs)), np.asarray(losses, np.float64)
    i = int(np.argmin(y))
    if i in (0, len(y) - 1) or not np.all(np.isfinite(y[i - 1 : i + 2])):
        return float(lrs[i])
    a, b, _ = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    vertex = -b / (2 * a) if a > 0 else x[i]
    return float(2 ** np.clip(vertex, x[i - 1], x[i + 1]))


def sweep_to_interior(task, make, lrs, *, name: str, extensions: int, **kw):
    """``[(lr, final val loss), ...]`` sorted by lr: the grid ``lrs``, then up to ``extensions``
    more points, each a factor 2 past the edge where the best loss still lies."""
    lrs = list(lrs)
    losses = [r.final_val_loss for r in tr.sweep(task, make, lrs, name=name, **kw)]
    for _ in range(extensions):
        i = int(np.argmin(losses))
        if 0 < i < len(lrs) - 1:
            break
        lr = lrs[0] / 2 if i == 0 else lrs[-1] * 2
        (run,) = tr.sweep(task, make, [lr], name=name, **kw)
        at = 0 if i == 0 else len(lrs)
        lrs.insert(at, lr)
        losses.insert(at, run.final_val_loss)
    return list(zip(lrs, losses))


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, resumable=True)
    s = QUICK if args.quick else FULL
    makers = factories(s["steps"])
    kw = {"steps": s["steps"], "batch_size": s["batch_size"], "eval_every": s["steps"]}
    curves = _previous(args.out / "lr_transfer.json", s) if args.resume else {}
    for width in s["widths"]:
        for std in s["embed_stds"]:
            cfg = charlm.Config(
                depth=s["depth"],
                width=width,
                heads=max(width // 32, 1),
                context=s["context"],
                embed_std=std,
            )
            task = charlm.task(cfg, eval_windows=s["eval_windows"])
            for name, make in makers.items():
                key = name if std is None else f"{name}, embed std {std:g}"
                if width in curves.get(key, {}):
                    continue
                curves.setdefault(key, {})[width] = sweep_to_interior(
                    task,
                    make,
                    s["lrs"][name],
                    name=f"{key} w={width}",
                    extensions=s["extensions"],
                    **kw,
                )
                # Written after every sweep: a long run that is stopped leaves its evidence so
                # far, and --resume takes it up from there.
                payload = _report(s, curves)
                write_json(args.out, "lr_transfer", payload)
    payload = _report(s, curves)
    write_json(args.out, "lr_transfer", payload)
    _plot(s, curves, args.out / "lr_transfer.png")
    print(f"\nLR transfer: widths {s['widths']}, depth {s['depth']}, {s['steps']} steps\n")
    print(format_table(payload["rows"]))
    for name, d in payload["drift"].items():
        bound = " (at least: a best LR lies on its grid's edge)" if payload["edge"][name] else ""
        print(f"{name}: best LR moves by {d:.3g}x across widths{bound}")
    return payload


def _previous(path: pathlib.Path, s: dict) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """The sweeps recorded in ``path`` if its settings other than the widths equal ``s``'s."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    ours = json.loads(json.dumps(s))  # tuples -> lists, as stored
    if {k: v for k, v in old["settings"].items() if k != "widths"} != {
        k: v for k, v in ours.items() if k != "widths"
    }:
        print(f"--resume: the settings in {path} differ; starting afresh")
        return {}
    return {
        name: {
            int(w): [(p["lr"], math.inf if p["val_loss"] is None else p["val_loss"]) for p in pts]
            for w, pts in per_width.items()
            if int(w) in s["widths"]
        }
        for name, per_width in old["losses"].items()
    }


def _report(s: dict, curves: dict) -> dict:
    """Rows (best LR per optimizer and width), the drift, and the raw losses."""
    rows, drift, edge = [], {}, {}
    for name, per_width in curves.items():
        best = {}
        for width, points in per_width.items():
            lrs, ys = zip(*points)
            i = int(np.argmin(ys))
            best[width] = refined_best(lrs, ys)
            rows.append(
                {
                    "optimizer": name,
                    "width": width,
                    "best_lr": best[width],
                    "grid_best_lr": lrs[i],
                    "at_grid_edge": i in (0, len(lrs) - 1),
                    "best_val_loss": tr.finite_or_none(ys[i]),
                }
            )
        drift[name] = max(best.values()) / min(best.values())
        edge[name] = any(r["at_grid_edge"] for r in rows if r["optimizer"] == name)
    return {
        "settings": s,
        # every (optimizer, width) pair swept
        "complete": all(set(per_width) == set(s["widths"]) for per_width in curves.values())
        and len(curves) == len(s["embed_stds"]) * len(s["lrs"]),
        "corpus_sha256": charlm.corpus()["sha256"],
        "rows": rows,
        "losses": {
            name: {
                str(w): [{"lr": lr, "val_loss": tr.finite_or_none(y)} for lr, y in points]
                for w, points in per_width.items()
            }
            for name, per_width in curves.items()
        },
        "drift": drift,
        "edge": edge,
        "target": {f"{k}: drift<=2": bool(d <= 2.0) for k, d in drift.items() if "normtx" in k},
    }


def _plot(s, curves, path) -> None:
    fig, axes = tr.subplots(len(curves), width=4.5, sharey=True)
    for ax, (name, per_width) in zip(axes, curves.items()):
        for width, points in per_width.items():
            lrs, ys = zip(*points)
            ax.plot(
                lrs,
                [y if math.isfinite(y) else np.nan for y in ys],
                marker="o",
                label=f"width {width}",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peak learning rate")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"val loss after {s['steps']} steps")
    axes[-1].legend(fontsize=8)
    tr.save_figure(fig, path)


if __name__ == "__main__":
    main()
