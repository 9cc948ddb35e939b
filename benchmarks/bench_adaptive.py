"""The adaptive family's costs: Shampoo's step time against Adam, AdamNMF's memory against Adam
and Adafactor.

1. **Shampoo step time.** ``scale_by_shampoo`` (EMA statistics, Adam grafting) with roots every
   step and every 10 steps, for each root method, timed side by side with ``optax.adam`` in the
   same process on the same parameters: each timed call runs steps 11–20 (after 10 untimed steps)
   jitted in one ``lax.scan``, so ``precondition_every=10`` recomputes its roots exactly once per
   call; the median over repeats is divided by 10. Adam is timed again right before each
   configuration, and the ratio uses that adjacent timing. The 1-minute load average is recorded
   beside the timings.
2. **State memory.** Floats of optimizer state per parameter, from ``jax.eval_shape`` of ``init``
   on a transformer-block-shaped tree: AdamNMF at ranks 1, 2, 4, 8 (``(m + n) r`` per matrix),
   ``optax.adam`` (2 per parameter), ``optax.adafactor`` (``m + n`` per matrix) and Shampoo.

It prints both tables and writes ``benchmarks/results/adaptive.json`` with the environment (jax
and optax versions, device kind, CPU count) and ``adaptive.png`` (both as bar charts). ``--quick``
uses small matrices and few repeats (well under a minute on 2 cores).

    .venv/bin/python -m benchmarks.bench_adaptive [--quick] [--out DIR]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normtx.adaptive import scale_by_adam_nmf, scale_by_shampoo

from benchmarks.common import format_table, median_time, parse_args, write_json
from benchmarks.tasks import train as tr

STEPS_PER_CALL = 10


def _params(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {
        name: jax.random.normal(k, shape, jnp.float32) / math.sqrt(shape[0])
        for k, (name, shape) in zip(keys, shapes.items(), strict=True)
    }


def time_per_step(tx: optax.GradientTransformation, params, grads, repeats: int) -> float:
    """Median seconds per step of ``tx`` (``STEPS_PER_CALL`` jitted steps per timed call)."""

    @jax.jit
    def run(params, state):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (params, state), length=STEPS_PER_CALL)[0]

    # Start the timed calls from a state past its first steps, so that statistics have filled in
    # and each call of 10 steps recomputes the roots exactly 10 / precondition_every times.
    params, state = run(params, tx.init(params))
    return median_time(lambda: run(params, state), repeats=repeats) / STEPS_PER_CALL


def shampoo(every: int, inverse_root: str) -> optax.GradientTransformation:
    return optax.chain(
        scale_by_shampoo(
            accumulator="ema",
            beta2=0.99,
            graft="adam",
            precondition_every=every,
            inverse_root=inverse_root,
        ),
        optax.scale_by_learning_rate(1e-3),
    )


def timing_rows(shapes, repeats: int) -> list[dict]:
    """One row per Shampoo configuration, each timed right after its own ``optax.adam`` timing
    (the machines are shared: adjacent measurements see the same load), and a first row with the
    median of those Adam timings."""
    params = _params(shapes)
    grads = _params(shapes, seed=1)
    adam = optax.adam(1e-3)
    rows = []
    for inverse_root in ("eigh", "newton"):
        for every in (1, 10):
            t_adam = time_per_step(adam, params, grads, repeats)
            t = time_per_step(shampoo(every, inverse_root), params, grads, repeats)
            rows.append(
                {
                    "optimizer": "normtx.adaptive.scale_by_shampoo",
                    "precondition_every": every,
                    "inverse_root": inverse_root,
                    "ms_per_step": 1e3 * t,
                    "adam_ms_per_step": 1e3 * t_adam,
                    "ratio_to_adam": t / t_adam,
                }
            )
    adam_ms = float(np.median([r["adam_ms_per_step"] for r in rows]))
    first = {"optimizer": "optax.adam", "precondition_every": "", "inverse_root": "",
             "ms_per_step": adam_ms, "adam_ms_per_step": adam_ms, "ratio_to_adam": 1.0}  # fmt: skip
    return [first, *rows]


def memory_rows(shapes) -> list[dict]:
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    n = sum(math.prod(s) for s in shapes.values())
    candidates = {"optax.adam": optax.adam(1e-3), "optax.adafactor": optax.adafactor(1e-3)}
    for r in (1, 2, 4, 8):
        candidates[f"AdamNMF rank {r}"] = scale_by_adam_nmf(
            rank=r, key=jax.random.key(0), vectors="diagonal"
        )
    candidates["Shampoo (adam graft, block 512)"] = scale_by_shampoo(
        graft="adam", block_size=512, vectors="graft"
    )
    rows = []
    for name, tx in candidates.items():
        floats = tr.tree_size(jax.eval_shape(tx.init, params))
        rows.append({"optimizer": name, "state_floats": floats, "floats_per_param": floats / n})
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    if args.quick:
        time_shapes = {"w1": (64, 64), "w2": (64, 32)}
        repeats = 3
    else:
        time_shapes = {"w1": (128, 128), "w2": (128, 256), "w3": (256, 64)}
        repeats = 5
    d = 256 if args.quick else 1024
    mem_shapes = {
        "embed": (8 * d, d),
        "qkv": (d, 3 * d),
        "attn_out": (d, d),
        "mlp_in": (d, 4 * d),
        "mlp_out": (4 * d, d),
        "ln_scale": (d,),
        "mlp_bias": (4 * d,),
    }
    load_before = os.getloadavg()[0]
    timing = timing_rows(time_shapes, repeats)
    load_after = os.getloadavg()[0]
    memory = memory_rows(mem_shapes)
    print("Shampoo step time (EMA statistics, Adam grafting) against optax.adam, same process:")
    print(format_table(timing))
    print("\nOptimizer state floats per parameter (jax.eval_shape of init):")
    print(format_table(memory))
    payload = {
        "settings": {
            "quick": args.quick,
            "timing_shapes": {k: list(v) for k, v in time_shapes.items()},
            "memory_shapes": {k: list(v) for k, v in mem_shapes.items()},
            "steps_per_timed_call": STEPS_PER_CALL,
            "repeats": repeats,
            # The 1-minute load average around the timings: on a shared machine, a load above the
            # CPU count means the absolute times are inflated (the ratios less so).
            "load_average_1m": [load_before, load_after],
        },
        "timing": timing,
        "memory": memory,
    }
    path = write_json(args.out, "adaptive", payload)
    tr.bar_panels(
        [
            (
                [f"{r['optimizer'].split('.')[-1]} {r['precondition_every']} {r['inverse_root']}"
                 for r in timing],
                [r["ratio_to_adam"] for r in timing],
                "step time / Adam's",
                True,
            ),
            (
                [r["optimizer"] for r in memory],
                [r["floats_per_param"] for r in memory],
                "state floats / param",
                True,
            ),
        ],
        args.out / "adaptive.png",
    )  # fmt: skip
    print(f"\nwrote {path} and {args.out / 'adaptive.png'}")
    assert all(np.isfinite(r["ratio_to_adam"]) for r in timing)
    return payload


if __name__ == "__main__":
    main()
