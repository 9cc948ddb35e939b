"""``make demo``: train a real model with AdamW and with normtx, side by side, and show the evidence.

Trains scikit-learn's bundled digits (an MLP, a few hundred steps) with ``optax.adamw`` and with
normtx's geometry (RMS->RMS on kernels and RMS on biases, anthology epilogue) from the same initial
weights on the same batches, shows progress bars, prints a comparison table (final training loss,
test accuracy, training wall time, compile time) and writes ``demo_output/``: ``demo.json`` and
``demo.png`` (validation curves against steps and wall time).

    python -m examples.demo [--quick] [--out DIR]

``--quick`` runs a few steps only (the test suite's smoke test).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import optax

import normtx
from normtx import norms

from benchmarks.common import environment, format_table, parse_args
from benchmarks.tasks import digits, train


def geometry(path: str, leaf) -> norms.Norm:
    """RMS->RMS on kernels (a rescaled spectral norm), RMS on biases."""
    return norms.rms_to_rms() if leaf.ndim == 2 else norms.rms()


def optimizers() -> dict[str, optax.GradientTransformation]:
    return {
        "optax.adamw(1e-3)": optax.adamw(1e-3),
        "normtx rms_to_rms (lr 0.03)": optax.chain(
            normtx.dualize(geometry), optax.scale_by_learning_rate(0.03)
        ),
    }


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(__doc__.splitlines()[0], argv, out=train.pathlib.Path("demo_output"))
    steps, eval_every = (20, 10) if args.quick else (300, 50)
    task = digits.task("mlp")
    runs = [
        train.train(task, tx, steps=steps, batch_size=64, eval_every=eval_every, name=name)
        for name, tx in optimizers().items()
    ]
    rows = [
        {
            "optimizer": run.name,
            "final train loss": run.train_loss[-1] if run.train_loss else float("nan"),
            "test loss": run.val["loss"][-1],
            "test accuracy": run.val["accuracy"][-1],
            "train time (s)": run.wall_s[-1],
            "compile (s)": run.compile_s,
        }
        for run in runs
    ]
    print(f"\n{task.name}: {steps} steps, batch 64, seed 0\n")
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    train.plot_runs(runs, args.out / "demo.png", title=f"{task.name}, {steps} steps")
    payload = {
        "environment": environment(),
        "task": task.info,
        "steps": steps,
        "rows": rows,
        "runs": [run.to_json() for run in runs],
    }
    (args.out / "demo.json").write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out / 'demo.json'} and {args.out / 'demo.png'}")
    return rows


if __name__ == "__main__":
    main()
