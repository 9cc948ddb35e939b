"""Polar factors of a sharded model: the owner-device strategy against replicate-then-compute.

The hidden matrices of a 6-layer transformer (per layer ``q, k, v, o`` of ``d × d``, ``fc_in``
``d × 4d``, ``fc_out`` ``4d × d``) live on a ``(2, 4)`` mesh of 8 fake CPU devices
(``--xla_force_host_platform_device_count=8``), every kernel sharded over both mesh axes
(``P('fsdp', 'tp')``). For each transform and mesh type two strategies compute the same update:

- ``naive`` (``mesh=None``): under explicit axes every matrix is gathered whole on every device
  and every device iterates on every matrix; under ``Auto`` axes XLA partitions the iteration's
  matmuls itself;
- ``owner`` (``mesh=mesh``, ``normtx.sharding``): same-shape matrices are stacked, padded to a
  multiple of 8 and spread one slice per device; each device iterates on its own matrices.

Rows: the median wall time of one jitted update (interleaved rounds,
``benchmarks.common.median_times``) per strategy and their ratio ``owner / naive``, the largest
difference between the two updates, and from the compiled HLO the number of all-gathers and the
floats they produce per device. The 8 "devices" share this machine's CPU cores, so the timing
measures total work (the naive path's 8 redundant copies of every iteration against one), not
the parallel speed-up or the network of a real mesh.

    python -m benchmarks.bench_sharding [--quick] [--out DIR]
"""

from __future__ import annotations

import os

# Eight fake devices; must be set before JAX initialises its backends (a no-op when it already
# has, e.g. under the test suite, whose conftest sets the same flag).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import normtx

from benchmarks.common import format_table, median_times, parse_args, write_json
from benchmarks.tasks.train import save_figure, subplots

FULL = {"layers": 6, "width": 128, "repeats": 15}
QUICK = {"layers": 2, "width": 16, "repeats": 2}
MESH = ((2, 4), ("fsdp", "tp"))
# name -> (mesh, params) -> transformation
TRANSFORMS = {
    "orthogonalize_newton_schulz": lambda mesh, _: normtx.orthogonalize_newton_schulz(mesh=mesh),
    "muon": lambda mesh, params: normtx.optimizers.muon(
        0.02, roles=jax.tree.map(lambda _: "hidden", params), mesh=mesh
    ),
}


def transformer_kernels(layers: int, width: int) -> dict[str, dict[str, np.ndarray]]:
    """The hidden kernels of a ``layers``-layer transformer of width ``width`` (float32)."""
    rng = np.random.default_rng(0)
    shapes = {k: (width, width) for k in ("q", "k", "v", "o")}
    shapes |= {"fc_in": (width, 4 * width), "fc_out": (4 * width, width)}
    return {
        f"layer_{i}": {
            k: (rng.standard_normal(s) / math.sqrt(s[0])).astype(np.float32)
            for k, s in shapes.items()
        }
        for i in range(layers)
    }


def all_gathers(hlo: str) -> tuple[int, int]:
    """``(count, floats per device)`` of the all-gathers in compiled HLO text."""
    count, floats = 0, 0
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.*?)\s+all-gather(-start)?\(", line)
        if m:
            count += 1
            shapes = re.findall(r"\w+\[([\d,]*)\]", m.group(1))
            floats += sum(math.prod(int(d) for d in s.split(",") if d) for s in shapes)
    return count, floats


def bench(transform: str, kind: str, params: dict, repeats: int) -> dict[str, Any]:
    axis_type = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}[kind]
    mesh = jax.make_mesh(*MESH, axis_types=(axis_type,) * 2)
    sharded = jax.device_put(params, NamedSharding(mesh, P(*MESH[1])))
    fns, hlo, outs = {}, {}, {}
    for strategy, mesh_arg in (("naive", None), ("owner", mesh)):
        tx = TRANSFORMS[transform](mesh_arg, params)
        state = tx.init(sharded)
        update = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p)[0])
        compiled = update.lower(sharded, state, sharded).compile()
        hlo[strategy] = all_gathers(compiled.as_text())
        fns[strategy] = lambda c=compiled, s=state: c(sharded, s, sharded)
        outs[strategy] = fns[strategy]()
    times = median_times(fns, repeats=repeats, warmup=1)
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(outs["owner"]), jax.tree.leaves(outs["naive"]))
    )
    return {
        "transform": transform,
        "mesh": kind,
        "naive_ms": 1e3 * times["naive"],
        "owner_ms": 1e3 * times["owner"],
        "owner_vs_naive": times["owner"] / times["naive"],
        "max_abs_diff": diff,
        "naive_all_gathers": hlo["naive"][0],
        "owner_all_gathers": hlo["owner"][0],
        "naive_gathered_floats": hlo["naive"][1],
        "owner_gathered_floats": hlo["owner"][1],
    }


def plot(rows: Sequence[dict], path) -> None:
    fig, axes = subplots(2, width=4.8, height=3.4)
    labels = [f"{r['transform'].split('_')[0]}\n{r['mesh']}" for r in rows]
    x = np.arange(len(rows))
    for i, strategy in enumerate(("naive", "owner")):
        axes[0].bar(x + 0.4 * (i - 0.5), [r[f"{strategy}_ms"] for r in rows], 0.4, label=strategy)
    axes[0].set_xticks(x, labels, fontsize=8)
    axes[0].set_ylabel("update time (ms), 8 fake CPU devices")
    axes[0].legend()
    axes[1].bar(x, [r["owner_vs_naive"] for r in rows])
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_xticks(x, labels, fontsize=8)
    axes[1].set_ylabel("owner / naive time")
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(__doc__.splitlines()[0], argv)
    cfg = QUICK if args.quick else FULL
    if jax.device_count() < 8:
        raise RuntimeError(
            f"bench_sharding needs 8 devices, found {jax.device_count()}: run it in a fresh "
            "process (it sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX "
            "starts) or set that flag yourself."
        )
    params = jax.tree.map(jnp.asarray, transformer_kernels(cfg["layers"], cfg["width"]))
    rows = [
        bench(transform, kind, params, cfg["repeats"])
        for transform in TRANSFORMS
        for kind in ("explicit", "auto")
    ]
    n = sum(x.size for x in jax.tree.leaves(params))
    print(f"\n{cfg['layers']}-layer transformer, width {cfg['width']}: {n:,} hidden parameters")
    print(format_table(rows))
    payload = {
        "quick": bool(args.quick),
        "settings": {**cfg, "mesh": MESH[0], "mesh_axes": MESH[1]},
        "num_params": n,
        # 1-, 5- and 15-minute load averages when the run ended: the machine is shared.
        "load_average": list(os.getloadavg()),
        "rows": rows,
    }
    path = write_json(args.out, "sharding", payload)
    plot(rows, args.out / "sharding.png")
    print(f"\nwrote {path} and {args.out / 'sharding.png'}")
    return payload


if __name__ == "__main__":
    main()
