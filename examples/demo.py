"""``make demo``: train a character-level language model with AdamW and with normtx, side by side.

The model is a small transformer (``benchmarks.tasks.charlm``, with the configuration, step budget
and batch of ``benchmarks/bench_train.py``: 2 layers, width 64, context 64, 300 steps of 16
windows) trained on the Python standard library's own source code — a fixed list of files on every
CPython 3.10+ install, nothing downloaded. Both optimizers start from the same weights, see the
same batches, and run the same number of steps with the same learning-rate shape (cosine decay):

- ``optax.adamw`` at peak LR 8e-3 (the best of ``benchmarks/bench_train.py``'s 6-point sweep);
- ``normtx.optimizers.modular_descent(escape_velocity=True)``: steepest descent under the
  role-based modular norm (anthology Prop. 7) with the escape-velocity step size (Story III) —
  its learning rate is a multiplier fixed at 1: *nothing tuned*.

It shows progress bars, prints a comparison table (final validation loss in nats per character,
next-character accuracy, training time, compile time in wall and in CPU seconds — on a shared
machine the CPU seconds are the comparable ones), samples a few lines of generated Python from
each model, and writes ``demo_output/demo.json`` and ``demo_output/demo.png`` (validation loss
against steps and against wall time).

    python -m examples.demo [--quick] [--out DIR]

``--quick`` trains a tiny model for a few steps (the test suite's smoke test).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from benchmarks import bench_train
from benchmarks.common import environment, format_table, parse_args
from benchmarks.tasks import charlm, train
from benchmarks.tasks import optimizers as opt

SHARED = ("model", "steps", "batch_size", "eval_every", "eval_windows")
# The model, budget and batch of ``benchmarks/bench_train.py``, whose rows this demo repeats.
FULL = {**{k: bench_train.FULL[k] for k in SHARED}, "sample_chars": 160}
QUICK = {
    **{k: bench_train.QUICK[k] for k in SHARED},
    "steps": 10,
    "eval_every": 5,
    "sample_chars": 20,
}
ADAMW_LR = 8e-3
PROMPTS = ("def ", "class ", "    if ")


def optimizers(steps: int) -> dict:
    return {
        f"optax.adamw (lr {ADAMW_LR:g})": opt.adamw(ADAMW_LR, steps),
        "normtx modular + escape velocity (untuned)": opt.modular_ev(steps),
    }


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(__doc__.splitlines()[0], argv, out=pathlib.Path("demo_output"))
    s = QUICK if args.quick else FULL
    task = charlm.task(s["model"], eval_windows=s["eval_windows"])
    steps = s["steps"]
    print(f"char-LM on {task.info['train_chars']:,} characters of the Python standard library")
    print(f"(corpus sha256 {task.info['corpus_sha256'][:16]}…), {s['model']}\n")
    runs = [
        train.train(
            task, tx, steps=steps, batch_size=s["batch_size"], eval_every=s["eval_every"], name=name
        )
        for name, tx in optimizers(steps).items()
    ]
    rows = [
        {
            "optimizer": run.name,
            "val loss": train.finite_or_none(run.final_val_loss),
            "val accuracy": run.val["accuracy"][-1],
            "train time (s)": run.wall_s[-1],
            "compile (s)": run.compile_s,
            "compile CPU (s)": run.compile_cpu_s,
        }
        for run in runs
    ]
    samples = {
        run.name: [
            charlm.sample(run.model(), prompt, s["sample_chars"], seed=i)
            for i, prompt in enumerate(PROMPTS)
        ]
        for run in runs
    }
    print(f"\n{steps} steps, batch {s['batch_size']}, seed 0\n")
    print(format_table(rows))
    for name, texts in samples.items():
        print(f"\n--- samples: {name} ---")
        for text in texts:
            print(text.split("\n")[0] if args.quick else text)
    args.out.mkdir(parents=True, exist_ok=True)
    train.plot_runs(runs, args.out / "demo.png", title=f"char-LM (stdlib), {steps} steps")
    payload = {
        "environment": environment(),
        "task": task.info,
        "settings": {k: v for k, v in s.items() if k != "model"},
        "rows": rows,
        "samples": samples,
        "runs": [run.to_json() for run in runs],
    }
    (args.out / "demo.json").write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out / 'demo.json'} and {args.out / 'demo.png'}")
    return rows


if __name__ == "__main__":
    main()
