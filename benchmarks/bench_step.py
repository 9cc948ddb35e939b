"""Optimizer cost on a 6-layer transformer: update time, compile time and state size.

For the parameter tree of a 6-layer char-LM transformer (``benchmarks.tasks.charlm``), with params
and gradients fixed:

- ``update_ms``: median wall time of one jitted ``tx.update(grads, state, params)`` over many calls
  after warm-up, the optimizers called in interleaved rounds (``benchmarks.common.median_times``),
  and its ratio to ``optax.contrib.muon`` and to ``optax.adamw``, all measured side by side in this
  process;
- ``compile_s``: the time to lower and compile the full jitted train step (forward, backward,
  update) with that optimizer (median of ``compile_repeats`` fresh compiles), and its ratio to
  AdamW's;
- ``state_floats_per_param``: floating-point entries of the non-scalar leaves of
  ``jax.eval_shape(tx.init, params)`` per parameter (scalars — counts, step sizes — are not per
  parameter): Muon-like 1; with escape velocity <= 2; Prodigy 4.

Targets: normtx modular / Muon update time <= 0.8; modular train-step compile time <= 1.5x AdamW's.

    python -m benchmarks.bench_step [--quick] [--out DIR]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from benchmarks.common import format_table, median_times, parse_args, write_json
from benchmarks.tasks import charlm
from benchmarks.tasks import optimizers as opt
from benchmarks.tasks import train as tr

FULL = {
    "model": charlm.Config(depth=6, width=256, heads=4, context=128),
    "batch_size": 16,
    "repeats": 15,
    "compile_repeats": 1,
}
QUICK = {
    "model": charlm.Config(depth=2, width=32, heads=2, context=16),
    "batch_size": 4,
    "repeats": 3,
    "compile_repeats": 1,
}
STEPS = 1000  # schedule length (irrelevant to cost)


def candidates() -> dict:
    return {
        "optax.adamw": lambda: opt.adamw(1e-3, STEPS),
        "optax.contrib.muon": lambda: opt.muon(0.02, STEPS, adam_lr=1e-3),
        "optax.contrib.prodigy": lambda: opt.prodigy(STEPS),
        "normtx modular": lambda: opt.modular(0.05, STEPS),
        "normtx modular + escape velocity": lambda: opt.modular_ev(STEPS),
    }


def random_like(params, seed: int = 1):
    """Standard normal gradients with the structure, shapes and dtypes of ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def update_times(candidates: dict, params, grads, repeats: int) -> dict[str, float]:
    """Median seconds of one jitted ``tx.update`` per optimizer, in interleaved rounds.

    The whole update is timed, the new state with the updates: XLA drops whatever only the state
    needs from a program that returns the updates alone (escape velocity's ``η_{t+1}`` and the
    dual norm it is computed from, since the step itself uses ``η_t``)."""
    fns = {}
    for name, make in candidates.items():
        tx = make()
        update = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p))
        state = tx.init(params)
        fns[name] = lambda update=update, state=state: update(grads, state, params)
    return median_times(fns, repeats=repeats, warmup=2)


def compile_time(task, graphdef, make_tx, params, order, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tx = make_tx()
        step = jax.jit(tr.make_train_step(task, graphdef, tx))
        start = time.perf_counter()
        step.lower(params, tx.init(params), task.train_data, order).compile()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = QUICK if args.quick else FULL
    task = charlm.task(s["model"], eval_windows=8)
    graphdef, params = tr.init_params(task, 0)
    grads = random_like(params)
    order = jnp.asarray(tr.batch_order(0, 1, s["batch_size"], task.num_positions)[0])
    n_params = tr.tree_size(params)

    update_s = update_times(candidates(), params, grads, s["repeats"])
    rows = []
    for name, make in candidates().items():
        state_shape = jax.eval_shape(make().init, params)
        rows.append(
            {
                "optimizer": name,
                "update_ms": 1e3 * update_s[name],
                "compile_s": compile_time(
                    task, graphdef, make, params, order, s["compile_repeats"]
                ),
                "state_floats_per_param": tr.tree_size(state_shape, min_size=2) / n_params,
            }
        )
    by = {r["optimizer"]: r for r in rows}
    for r in rows:
        r["update_vs_muon"] = r["update_ms"] / by["optax.contrib.muon"]["update_ms"]
        r["update_vs_adamw"] = r["update_ms"] / by["optax.adamw"]["update_ms"]
        r["compile_vs_adamw"] = r["compile_s"] / by["optax.adamw"]["compile_s"]
    mod = by["normtx modular"]
    targets = {
        "modular_update_vs_muon<=0.8": bool(mod["update_vs_muon"] <= 0.8),
        "modular_compile_vs_adamw<=1.5": bool(mod["compile_vs_adamw"] <= 1.5),
        "modular_ev_state_floats<=2": bool(
            by["normtx modular + escape velocity"]["state_floats_per_param"] <= 2
        ),
    }
    print(f"\n{s['model'].depth}-layer transformer {s['model']}: {n_params:,} parameters\n")
    print(format_table(rows))
    print("\n" + "\n".join(f"{k}: {v}" for k, v in targets.items()))
    payload = {
        "settings": {k: v for k, v in s.items() if k != "model"},  # model: in task
        "task": task.info,
        "num_params": n_params,
        "rows": rows,
        "targets": targets,
    }
    write_json(args.out, "step", payload)
    _plot(rows, args.out / "step.png")
    return payload


def _plot(rows, path) -> None:
    names = [r["optimizer"] for r in rows]
    tr.bar_panels(
        [
            (names, [r["update_ms"] for r in rows], "update time (ms)", True),
            (names, [r["compile_s"] for r in rows], "train-step compile (s)", False),
            (names, [r["state_floats_per_param"] for r in rows], "state floats / param", False),
        ],
        path,
    )


if __name__ == "__main__":
    main()
