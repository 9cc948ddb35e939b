"""Cost of Dion's low-rank orthonormal update against the Newton–Schulz polar factor.

For each matrix shape ``(d_in, d_out)`` (a Flax kernel), with a fixed Gaussian gradient, the
median wall time of one jitted ``tx.update`` of

- ``normtx.orthogonalize_newton_schulz(steps=5)`` (the 5-step Polar Express polar factor, the
  direction Muon uses), and
- ``normtx.orthogonalize_dion(rank_fraction=f)`` for ``f = 1/4`` and ``1/16`` (one step of
  centralized Dion: momentum, ``B Q``, QR, ``Bᵀ P``, error feedback, column normalization,
  ``Q Pᵀ``),

measured in interleaved rounds in one process (``benchmarks.common.median_times``), and the ratio
``dion / newton_schulz``. Dion's cost is ``O(d_in d_out r)`` flops (four ``d_in × d_out × r``
products plus a QR of ``d_out × r``) against Newton–Schulz's ``O(d_in d_out min(d_in, d_out))``
per step, so the ratio falls with ``r / min(d_in, d_out)``.

    python -m benchmarks.bench_dion [--quick] [--out DIR]

writes ``DIR/dion.json`` and ``DIR/dion.png`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp

import normtx
from normtx.transforms.dion import dion_rank

from benchmarks.common import format_table, median_times, parse_args, write_json
from benchmarks.tasks import train as tr

FULL = {"shapes": [(512, 512), (1024, 1024), (1024, 4096)], "repeats": 7}
QUICK = {"shapes": [(64, 64), (128, 128), (64, 256)], "repeats": 3}
FRACTIONS = {"1/4": 0.25, "1/16": 1 / 16}


def _update(tx, g):
    """A jitted ``tx.update`` of ``g`` from ``tx.init(g)``, as a thunk for ``median_times``."""
    state = tx.init(g)
    update = jax.jit(lambda g, s: tx.update(g, s)[0])
    return lambda: update(g, state)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv)
    s = QUICK if args.quick else FULL
    rows = []
    for d_in, d_out in s["shapes"]:
        g = jax.random.normal(jax.random.key(0), (d_in, d_out), jnp.float32)
        fns = {"newton_schulz": _update(normtx.orthogonalize_newton_schulz(steps=5), g)}
        for name, f in FRACTIONS.items():
            tx = normtx.orthogonalize_dion(key=jax.random.key(1), rank_fraction=f)
            fns[f"dion {name}"] = _update(tx, g)
        times = median_times(fns, repeats=s["repeats"], warmup=2)
        base = times["newton_schulz"]
        for method, t in times.items():
            f = FRACTIONS.get(method.removeprefix("dion "))
            rows.append(
                {
                    "shape": f"{d_in}x{d_out}",
                    "method": method,
                    "rank": dion_rank(f, d_in, d_out) if f else min(d_in, d_out),
                    "time_ms": 1e3 * t,
                    "vs_newton_schulz": t / base,
                }
            )
    print(f"\n{jax.devices()[0].device_kind}, load average {os.getloadavg()}\n")
    print(format_table(rows))
    payload = {
        "quick": bool(args.quick),
        "settings": {"shapes": s["shapes"], "repeats": s["repeats"], "fractions": FRACTIONS},
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    write_json(args.out, "dion", payload)
    _plot(rows, args.out / "dion.png")
    return payload


def _plot(rows, path) -> None:
    names = [f"{r['shape']} {r['method']}" for r in rows]
    tr.bar_panels(
        [
            (names, [r["time_ms"] for r in rows], "update time (ms)", True),
            (names, [r["vs_newton_schulz"] for r in rows], "time / Newton-Schulz (5 steps)", False),
        ],
        path,
    )


if __name__ == "__main__":
    main()
