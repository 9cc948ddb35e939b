"""Does the best learning rate transfer across width? AdamW against normtx modular descent.

For widths 64, 128, 256 and 512 of the char-LM transformer (depth, context, batch, steps and data
order fixed; ``width // 32`` heads), sweep the learning rate of ``optax.adamw`` and of normtx modular
descent (``benchmarks.tasks.optimizers``) on factor-2 grids and record the final validation loss.
The best LR per width is the grid minimum refined by a parabola through it and its two neighbours
in log-LR (kept within those neighbours; the grid point itself at an edge). The *drift* of an
optimizer is ``max_w lr*(w) / min_w lr*(w)`` over the widths; the target for normtx is a drift
<= 2, with AdamW's reported beside it.

Prints the table, writes ``benchmarks/results/lr_transfer.json`` and ``lr_transfer.png`` (loss
against LR, one curve per width, one panel per optimizer).

    python -m benchmarks.bench_lr_transfer [--quick] [--out DIR]
"""

from __future__ import annotations

import math
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
    "steps": 100,
    "eval_windows": 64,
    "lrs": {
        "optax.adamw": (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2),
        "normtx modular": (0.01, 0.02, 0.04, 0.08, 0.16),
    },
}
QUICK = {
    "widths": (32, 64),
    "depth": 1,
    "context": 16,
    "batch_size": 8,
    "steps": 10,
    "eval_windows": 16,
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


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = QUICK if args.quick else FULL
    makers = factories(s["steps"])
    kw = {"steps": s["steps"], "batch_size": s["batch_size"], "eval_every": s["steps"]}
    losses: dict[str, dict[int, list[float]]] = {name: {} for name in makers}
    for width in s["widths"]:
        cfg = charlm.Config(
            depth=s["depth"], width=width, heads=max(width // 32, 1), context=s["context"]
        )
        task = charlm.task(cfg, eval_windows=s["eval_windows"])
        for name, make in makers.items():
            runs = tr.sweep(task, make, s["lrs"][name], name=f"{name} w={width}", **kw)
            losses[name][width] = [r.final_val_loss for r in runs]

    rows, drift = [], {}
    for name in makers:
        best = {}
        for width in s["widths"]:
            ys = losses[name][width]
            best[width] = refined_best(s["lrs"][name], ys)
            rows.append(
                {
                    "optimizer": name,
                    "width": width,
                    "best_lr": best[width],
                    "grid_best_lr": s["lrs"][name][int(np.argmin(ys))],
                    "best_val_loss": min(ys),
                }
            )
        drift[name] = max(best.values()) / min(best.values())
    print(f"\nLR transfer: widths {s['widths']}, depth {s['depth']}, {s['steps']} steps\n")
    print(format_table(rows))
    print(
        "\n" + "\n".join(f"{n}: best LR moves by {d:.3g}x across widths" for n, d in drift.items())
    )
    payload = {
        "settings": s,
        "corpus_sha256": charlm.corpus()["sha256"],
        "rows": rows,
        "losses": {
            name: {
                str(w): [
                    {"lr": lr, "val_loss": tr.finite_or_none(y)}
                    for lr, y in zip(s["lrs"][name], ys)
                ]
                for w, ys in per_width.items()
            }
            for name, per_width in losses.items()
        },
        "drift": drift,
        "target": {"normtx_drift<=2": bool(drift["normtx modular"] <= 2.0)},
    }
    write_json(args.out, "lr_transfer", payload)
    _plot(s, losses, args.out / "lr_transfer.png")
    return payload


def _plot(s, losses, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 3.8), sharey=True)
    for ax, (name, per_width) in zip(axes, losses.items()):
        for width, ys in per_width.items():
            ys = [y if math.isfinite(y) else np.nan for y in ys]
            ax.plot(s["lrs"][name], ys, marker="o", label=f"width {width}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peak learning rate")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"val loss after {s['steps']} steps")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
