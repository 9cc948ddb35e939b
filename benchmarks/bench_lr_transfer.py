"""Does the best learning rate transfer across width or depth? AdamW against normtx modular descent.

``--axis width`` (default): for widths 64, 128, 256 and 512 of the char-LM transformer (depth,
context, batch, steps and data order fixed; ``width // 32`` heads), sweep the learning rate of
``optax.adamw`` and of normtx modular descent (``benchmarks.tasks.optimizers``) on factor-2 grids
and record the final validation loss. Where the best loss lies on an edge of the grid, the grid
grows by a factor 2 past that edge, up to ``extensions`` times. The best LR per width is the grid
minimum refined by a parabola through it and its two neighbours in log-LR (kept within those
neighbours; the grid point itself at an edge, and then the drift below is only a lower bound,
flagged ``at_grid_edge``/``edge``). The *drift* of an optimizer is ``max_w lr*(w) / min_w lr*(w)``
over the widths; the target for normtx is a drift <= 2, with AdamW's reported beside it.

``embed_stds`` repeats everything per initialisation of the embedding tables: ``None`` is Flax's
default (rows of RMS ``1/sqrt(width)``), ``1.0`` gives rows of unit RMS, which is what the ℓ1 -> RMS
norm that normtx gives embeddings assumes (anthology Prop. 8 and epilogue). ``normtx modular,
target_rms=init`` measures the embedding (bias, gain) norms relative to the leaves' RMS at init
instead (``modular_descent(target_rms='init')``), for the init the model actually has.

``--axis depth``: the same at depths 2, 4 and 8 (width 64, 2 heads, unit-RMS embedding rows;
everything else as above), for AdamW, normtx modular descent with every scale ``s_l = 1``, and
with modula's masses (``scales='mass'``: ``s_l = M``, the number of normed leaves, so every leaf
moves by ``lr / M`` and the global LR is expected to grow with depth). The drift is now across
depths; the target for normtx is again <= 2.

Prints the table, writes ``benchmarks/results/lr_transfer.json`` (``lr_transfer_depth.json`` for
``--axis depth``) and a PNG of the same name (loss against LR, one curve per width or depth, one
panel per optimizer).

    python -m benchmarks.bench_lr_transfer [--axis width|depth] [--quick] [--out DIR] [--resume]

``--resume`` keeps the sweeps already in that JSON whose settings (all but the widths or depths)
match, and runs only the missing (optimizer, width or depth) pairs: a long run that was stopped,
or one made before a width or an optimizer was added, is completed rather than repeated (an
optimizer whose LR grid changed is run afresh).
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
        "normtx modular, target_rms=init": (0.01, 0.02, 0.04, 0.08),
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
FULL_DEPTH = {
    "depths": (2, 4, 8),
    "width": 64,
    "context": 32,
    "batch_size": 16,
    "steps": 60,
    "eval_windows": 64,
    "extensions": 2,
    "embed_stds": (1.0,),
    "lrs": {
        "optax.adamw": (2e-3, 4e-3, 8e-3, 1.6e-2),
        "normtx modular": (0.01, 0.02, 0.04, 0.08),
        "normtx modular, mass scales": (0.5, 1.0, 2.0, 4.0),
    },
}
QUICK_DEPTH = {
    "depths": (1, 2),
    "width": 32,
    "context": 16,
    "batch_size": 8,
    "steps": 10,
    "eval_windows": 16,
    "extensions": 1,
    "embed_stds": (1.0,),
    "lrs": {
        "optax.adamw": (1e-3, 4e-3, 1.6e-2),
        "normtx modular": (0.02, 0.08, 0.32),
        "normtx modular, mass scales": (0.5, 2.0, 8.0),
    },
}
# --axis: (full settings, quick settings, results name)
AXES = {
    "width": (FULL, QUICK, "lr_transfer"),
    "depth": (FULL_DEPTH, QUICK_DEPTH, "lr_transfer_depth"),
}


def factories(steps: int) -> dict:
    return {
        "optax.adamw": lambda lr: opt.adamw(lr, steps),
        "normtx modular": lambda lr: opt.modular(lr, steps),
        "normtx modular, mass scales": lambda lr: opt.modular(lr, steps, scales="mass"),
        "normtx modular, target_rms=init": lambda lr: opt.modular(lr, steps, target_rms="init"),
    }


def curve_key(opt_name: str, embed_std: float | None) -> str:
    """The name of one optimizer's curves at one embedding init (rows, JSON, plot)."""
    return opt_name if embed_std is None else f"{opt_name}, embed std {embed_std:g}"


def model_config(s: dict, axis: str, value: int, embed_std: float | None) -> charlm.Config:
    """The transformer at ``value`` of ``axis`` (``width // 32`` heads), the rest from ``s``."""
    width = value if axis == "width" else s["width"]
    return charlm.Config(
        depth=value if axis == "depth" else s["depth"],
        width=width,
        heads=max(width // 32, 1),
        context=s["context"],
        embed_std=embed_std,
    )


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
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        resumable=True,
        options=lambda p: p.add_argument(
            "--axis", choices=tuple(AXES), default="width", help="what varies (default: width)"
        ),
    )
    full, quick, name = AXES[args.axis]
    s = quick if args.quick else full
    values = f"{args.axis}s"  # the settings key of the varied sizes
    makers = factories(s["steps"])
    kw = {"steps": s["steps"], "batch_size": s["batch_size"], "eval_every": s["steps"]}
    path = args.out / f"{name}.json"
    curves = _previous(path, s, values) if args.resume else {}
    for value in s[values]:
        for std in s["embed_stds"]:
            cfg = model_config(s, args.axis, value, std)
            task = charlm.task(cfg, eval_windows=s["eval_windows"])
            for opt_name in s["lrs"]:
                key = curve_key(opt_name, std)
                if value in curves.get(key, {}):
                    continue
                curves.setdefault(key, {})[value] = sweep_to_interior(
                    task,
                    makers[opt_name],
                    s["lrs"][opt_name],
                    name=f"{key} {args.axis[0]}={value}",
                    extensions=s["extensions"],
                    **kw,
                )
                # Written after every sweep: a long run that is stopped leaves its evidence so
                # far, and --resume takes it up from there.
                write_json(args.out, name, _report(s, args.axis, curves))
    payload = _report(s, args.axis, curves)
    write_json(args.out, name, payload)
    _plot(s, args.axis, curves, args.out / f"{name}.png")
    fixed = {"width": f"depth {s.get('depth')}", "depth": f"width {s.get('width')}"}[args.axis]
    print(f"\nLR transfer: {values} {s[values]}, {fixed}, {s['steps']} steps\n")
    print(format_table(payload["rows"]))
    for key, d in payload["drift"].items():
        bound = " (at least: a best LR lies on its grid's edge)" if payload["edge"][key] else ""
        print(f"{key}: best LR moves by {d:.3g}x across {values}{bound}")
    return payload


def _previous(
    path: pathlib.Path, s: dict, values: str
) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """The sweeps recorded in ``path`` if its settings other than ``s[values]`` and the LR grids
    equal ``s``'s, for the optimizers and embedding inits of ``s`` whose LR grid is unchanged."""
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    ours = json.loads(json.dumps(s))  # tuples -> lists, as stored
    if {k: v for k, v in old["settings"].items() if k not in (values, "lrs")} != {
        k: v for k, v in ours.items() if k not in (values, "lrs")
    }:
        print(f"--resume: the settings in {path} differ; starting afresh")
        return {}
    same_grid = {
        curve_key(o, std)
        for o, grid in ours["lrs"].items()
        if old["settings"]["lrs"].get(o) == grid
        for std in s["embed_stds"]
    }
    return {
        name: {
            int(v): [(p["lr"], math.inf if p["val_loss"] is None else p["val_loss"]) for p in pts]
            for v, pts in per_value.items()
            if int(v) in s[values]
        }
        for name, per_value in old["losses"].items()
        if name in same_grid
    }


def _report(s: dict, axis: str, curves: dict) -> dict:
    """Rows (best LR per optimizer and width or depth), the drift, and the raw losses."""
    rows, drift, edge = [], {}, {}
    for name, per_value in curves.items():
        best = {}
        for value, points in per_value.items():
            lrs, ys = zip(*points)
            i = int(np.argmin(ys))
            best[value] = refined_best(lrs, ys)
            rows.append(
                {
                    "optimizer": name,
                    axis: value,
                    "best_lr": best[value],
                    "grid_best_lr": lrs[i],
                    "at_grid_edge": i in (0, len(lrs) - 1),
                    "best_val_loss": tr.finite_or_none(ys[i]),
                }
            )
        drift[name] = max(best.values()) / min(best.values())
        edge[name] = any(r["at_grid_edge"] for r in rows if r["optimizer"] == name)
    return {
        "axis": axis,
        "settings": s,
        # every (optimizer, width or depth) pair swept
        "complete": all(set(per_value) == set(s[f"{axis}s"]) for per_value in curves.values())
        and len(curves) == len(s["embed_stds"]) * len(s["lrs"]),
        "corpus_sha256": charlm.corpus()["sha256"],
        "rows": rows,
        "losses": {
            name: {
                str(v): [{"lr": lr, "val_loss": tr.finite_or_none(y)} for lr, y in points]
                for v, points in per_value.items()
            }
            for name, per_value in curves.items()
        },
        "drift": drift,
        "edge": edge,
        "target": {f"{k}: drift<=2": bool(d <= 2.0) for k, d in drift.items() if "normtx" in k},
    }


def _plot(s, axis, curves, path) -> None:
    fig, axes = tr.subplots(len(curves), width=4.5, sharey=True)
    for ax, (name, per_value) in zip(axes, curves.items()):
        for value, points in per_value.items():
            lrs, ys = zip(*points)
            ax.plot(
                lrs,
                [y if math.isfinite(y) else np.nan for y in ys],
                marker="o",
                label=f"{axis} {value}",
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
