"""Accelerator benchmark: polar factors of a GPT-2-small tree, the optimizer's share of a GPT train
step, and compile times, in one command under one time budget.

    python -m benchmarks.bench_accelerator [--quick] [--out DIR] [--budget S] [--parts P,...]
        [--layers 12] [--width 768] [--heads 12] [--context 512] [--batch 32] [--repeats 10]

Sized for one GPU (the defaults: a 12-layer width-768 model, ``--budget 270`` seconds); it runs
wherever JAX runs (a CPU-sized run: ``--layers 2 --width 384 --heads 6 --context 128 --batch 8``).
It prints the device and the versions first, and rewrites ``benchmarks/results/accelerator.json``
after every case (and ``accelerator.png`` at the end), so a run that is stopped keeps its table
so far. Every case — one polar method in one dtype, one optimizer's train step, one optimizer's
update — runs guarded: an exception is recorded in its row (``status: 'error: ...'``) and the
other cases go on; a case starts only while the budget lasts (the time left must exceed the
longest case of its part so far), else its row says ``'skipped: time budget'``.

``polar`` (a): the polar factors of a tree with GPT-2 small's matrix shapes, ``layers`` x {fused
qkv ``d x 3d``, attention out ``d x d``, MLP in ``d x 4d``, MLP out ``4d x d``}, ``d = width``
(48 matrices, 85M entries at the defaults), each matrix with singular values log-spaced over
``[1e-2, 1]`` (``bench_polar.make_matrix``, "spread"), 5 Newton–Schulz steps by

- ``normtx stacked``: ``normtx.orthogonalize_newton_schulz(scale='spectral')`` on the tree, which
  stacks same-shape (short side first) matrices: one batched iteration per shape, 3 here;
- ``normtx per-leaf``: ``normtx.linalg.newton_schulz`` on each leaf, all inside one ``jit``;
- ``optax muon NS per-leaf``: what ``optax.contrib.muon`` runs on each leaf
  (``optax.contrib._muon.orthogonalize_via_newton_schulz``, Jordan's quintic);

normtx with its default Polar Express schedule, and stacked with Jordan's coefficients too (the
same polynomial as optax: the implementations compared alone). ``float32``; ``bfloat16``: the
matmuls in bfloat16 — normtx's ``compute_dtype=jnp.bfloat16`` (float32 accumulation, ``X`` kept
in float32), optax's iteration run on the tree cast to bfloat16 (its whole iteration is in the
input's dtype) and cast back. Per case: ``time_ms`` (median of ``repeats`` calls after one),
``compile_s`` (lower and compile) and ``max_abs_sigma_minus_1``, ``max |σ_i - 1|`` over every
singular value of every output matrix (eigenvalues of its short-side Gram matrix in float32,
``eigvalsh`` on the device: its error, ~1e-6, is far below the 1e-2 to 0.3 measured).

``step`` (b): the char-LM transformer of ``benchmarks.tasks.charlm`` at depth ``layers``, width
``width`` (GPT-2 small's blocks; a 98-symbol vocabulary instead of 50,257, so 85M parameters at
the defaults instead of 124M), ``batch`` windows of ``context`` characters, float32 (XLA's default
matmul precision, TF32 on recent NVIDIA GPUs). For each optimizer, ``step_ms`` is the median wall
time of the whole jitted train step — forward, backward, update, ``apply_updates`` — with the
parameters and the optimizer state donated as in training. The optimizer's **share** of the step
is ``(step_ms - step_ms[SGD]) / step_ms``, SGD being ``optax.sgd`` (the update ``-lr g``, the
least an update can cost), so ``step_ms[SGD]`` is the forward and backward pass plus that least
update. ``share_at_anchor_tokens`` puts the same optimizer cost in a step of ``ANCHOR_TOKENS``
tokens (2^19, the batch of llm.c's and modded-nanogpt's GPT-2-small runs; the issue's anchor is
Muon at "< 2% of the step" there), scaling the forward and backward time by tokens:
``extra / (extra + step_ms[SGD] · ANCHOR_TOKENS / tokens)``, ``extra = step_ms - step_ms[SGD]``.
The optimizer's cost is the same at any batch size, the forward and backward pass grows with it,
so the share at this run's batch is larger. ``flop_model`` gives the same comparison in flops: the
plain Newton–Schulz iteration on the hidden kernels (``4 m² n + 2 m³`` per step on an ``m x n``
matrix, ``m <= n``) against ``6 N`` flops per token for the ``N`` matmul parameters and the
attention scores. Optimizers: SGD, ``optax.adamw``, ``optax.contrib.muon``, ``normtx muon``,
``normtx modular`` and ``normtx modular + escape velocity`` (``benchmarks.tasks.optimizers``).

``update``: ``update_ms``, a jitted ``tx.update`` alone on fixed random gradients
(``bench_step.update_times``), and ``update_share = update_ms / (update_ms + step_ms[SGD])``.

(c) compile times: ``compile_s`` in every row of ``polar`` (lowering and compiling the tree
function) and of ``step`` (the whole train step).

``--quick`` (the test suite, on CPU): 1 layer of width 32, every part.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import normtx

from benchmarks import bench_polar, bench_step
from benchmarks.common import (
    environment,
    format_table,
    median_time,
    median_times,
    parse_args,
    write_json,
)
from benchmarks.tasks import charlm
from benchmarks.tasks import optimizers as opt
from benchmarks.tasks import train as tr

FULL = {
    "layers": 12,
    "width": 768,
    "heads": 12,
    "context": 512,
    "batch": 32,
    "repeats": 10,
    "budget": 270.0,
}
QUICK = {
    "layers": 1,
    "width": 32,
    "heads": 2,
    "context": 16,
    "batch": 2,
    "repeats": 2,
    "budget": 300.0,
}
PARTS = ("polar", "step", "update")
DTYPES = ("float32", "bfloat16")
NS_STEPS = 5
ANCHOR_TOKENS = 2**19
SCHEDULE_STEPS = 1000  # the optimizers' schedule length (irrelevant to cost)
BASELINE = "optax.sgd (baseline)"


class Budget:
    """The global time budget, and the guard that every case runs under."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.longest: dict[str, float] = {}  # part -> the longest case run so far (s)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, part: str, fn: Callable[[], Any]) -> tuple[str, Any]:
        """``('ok', fn())``; ``('error: ...', None)`` if it raised (the traceback printed);
        ``('skipped: time budget', None)`` without running it if the time left is shorter than
        the longest case of ``part`` so far."""
        if self.left() <= self.longest.get(part, 0.0):
            return "skipped: time budget", None
        start = time.perf_counter()
        try:
            out, status = fn(), "ok"
        except Exception as e:  # one failing case must not lose the others
            traceback.print_exc()
            out, status = None, f"error: {type(e).__name__}: {e}"[:400]
        self.longest[part] = max(self.longest.get(part, 0.0), time.perf_counter() - start)
        return status, out


# ---- (a) polar factors of the GPT-2-small tree --------------------------------------------------


def gpt2_shapes(width: int) -> dict[str, tuple[int, int]]:
    """One layer's matrices in GPT-2 small's layout (``(fan_in, fan_out)``)."""
    return {
        "attn_qkv": (width, 3 * width),
        "attn_out": (width, width),
        "mlp_in": (width, 4 * width),
        "mlp_out": (4 * width, width),
    }


def gpt2_tree(layers: int, width: int, seed: int = 0) -> dict[str, dict[str, jax.Array]]:
    """``{'h00': {'attn_qkv': G, ...}, ...}``: float32 "spread" matrices (``bench_polar``)."""
    rng = np.random.default_rng(seed)
    return {
        f"h{i:02d}": {
            name: jnp.asarray(bench_polar.make_matrix(rng, m, n, "spread"), jnp.float32)
            for name, (m, n) in gpt2_shapes(width).items()
        }
        for i in range(layers)
    }


@jax.jit
def max_abs_sigma_minus_1(tree: Any) -> jax.Array:
    """``max |σ_i - 1|`` over every singular value of every matrix of ``tree``: the square roots of
    the eigenvalues (``jnp.linalg.eigvalsh``) of each short-side Gram matrix, formed in float32 at
    full matmul precision (no TF32), on the device."""

    def one(x):
        x = x.astype(jnp.float32)
        x = x.T if x.shape[0] > x.shape[1] else x
        gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
        return jnp.max(jnp.abs(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh(gram), 0.0)) - 1.0))

    return jnp.max(jnp.stack([one(x) for x in jax.tree.leaves(tree)]))


def polar_methods(dtype: str) -> dict[str, Callable[[], Callable]]:
    """Method name -> a builder of its (not yet compiled) ``jit``-ted tree -> tree function."""
    low = dtype == "bfloat16"
    compute = jnp.bfloat16 if low else None

    def stacked(coefficients):
        tx = normtx.orthogonalize_newton_schulz(
            steps=NS_STEPS, coefficients=coefficients, scale="spectral", compute_dtype=compute
        )
        return jax.jit(lambda t: tx.update(t, tx.init(t))[0])

    def per_leaf():
        ns = lambda g: normtx.linalg.newton_schulz(g, steps=NS_STEPS, compute_dtype=compute)  # noqa: E731
        return jax.jit(lambda t: jax.tree.map(ns, t))

    def optax_ns(g):
        return bench_polar.OPTAX_NS(g.astype(jnp.bfloat16) if low else g).astype(g.dtype)

    return {
        "normtx stacked (polar_express)": lambda: stacked("polar_express"),
        "normtx per-leaf (polar_express)": per_leaf,
        "normtx stacked (muon coefficients)": lambda: stacked("muon"),
        "optax muon NS per-leaf": lambda: jax.jit(lambda t: jax.tree.map(optax_ns, t)),
    }


def polar_case(build: Callable[[], Callable], tree: Any, repeats: int) -> dict[str, float]:
    fn = build()
    start = time.perf_counter()
    compiled = fn.lower(tree).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(tree))
    return {
        "time_ms": 1e3 * median_time(lambda: compiled(tree), repeats=repeats, warmup=1),
        "compile_s": compile_s,
        "max_abs_sigma_minus_1": float(max_abs_sigma_minus_1(out)),
    }


# ---- (b) the optimizer's share of a train step --------------------------------------------------


def step_candidates() -> dict[str, Callable[[], optax.GradientTransformation]]:
    n = SCHEDULE_STEPS
    return {
        BASELINE: lambda: optax.sgd(1e-3),
        "optax.adamw": lambda: opt.adamw(1e-3, n),
        "optax.contrib.muon": lambda: opt.muon(0.02, n, adam_lr=1e-3),
        "normtx muon": lambda: opt.normtx_muon(0.02, n, adam_lr=1e-3),
        "normtx modular": lambda: opt.modular(0.05, n),
        "normtx modular + escape velocity": lambda: opt.modular_ev(n),
    }


def compiled_step(task, graphdef, params, make_tx, positions) -> tuple[Callable[[], Any], float]:
    """``(call, compile_s)``: ``call()`` runs one train step in place (donated buffers) and
    returns its loss; it has run once, so a failure at run time (memory) belongs to this case."""
    tx = make_tx()
    step = jax.jit(tr.make_train_step(task, graphdef, tx), donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.copy, params)]
    # Own buffers for every state leaf: donation fails where a leaf aliases the params.
    carry.append(jax.tree.map(jnp.copy, tx.init(carry[0])))
    start = time.perf_counter()
    compiled = step.lower(carry[0], carry[1], task.train_data, positions).compile()
    compile_s = time.perf_counter() - start

    def call():
        carry[0], carry[1], loss = compiled(carry[0], carry[1], task.train_data, positions)
        return loss

    jax.block_until_ready(call())
    return call, compile_s


def flop_model(cfg: charlm.Config, tokens: int) -> dict[str, float]:
    """Newton–Schulz flops on the hidden kernels (the plain iteration, ``4 m² n + 2 m³`` per step,
    ``m <= n``) against a train step's ``6 N`` flops per token (``N`` matmul parameters, the
    attention scores ``Q Kᵀ`` and ``A V`` counted as ``2 · context · width`` each per layer)."""
    d, h = cfg.width, cfg.mlp_ratio * cfg.width
    per_layer = [(d, d)] * 4 + [(d, h), (d, h)]  # q, k, v, o; fc_in, fc_out (short side first)
    ns = cfg.depth * NS_STEPS * sum(4 * m * m * n + 2 * m**3 for m, n in per_layer)
    matmul_params = cfg.depth * (4 * d * d + 2 * d * h) + d * len(charlm.VOCAB)
    per_token = 6 * matmul_params + 3 * cfg.depth * 2 * (2 * cfg.context * d)
    share = lambda t: ns / (ns + per_token * t)  # noqa: E731
    return {
        "newton_schulz_gflop": ns / 1e9,
        "step_gflop_per_token": per_token / 1e9,
        "muon_share": share(tokens),
        "muon_share_at_anchor_tokens": share(ANCHOR_TOKENS),
    }


# ---- driver -------------------------------------------------------------------------------------


def _options(parser) -> None:
    for key, default in FULL.items():
        parser.add_argument(
            f"--{key}",
            type=type(default),
            default=None,
            help=f"default {default} ({QUICK[key]} with --quick)",
        )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(__doc__.splitlines()[0], argv, options=_options)
    s = {
        k: v if getattr(args, k) is None else getattr(args, k)
        for k, v in (QUICK if args.quick else FULL).items()
    }
    parts = [p for p in args.parts.split(",") if p]
    if not set(parts) <= set(PARTS):
        raise SystemExit(f"--parts: unknown {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    budget = Budget(s["budget"])
    env = environment()
    print(f"devices: {jax.devices()}")
    print(
        f"jax {env['jax']}, optax {env['optax']}, normtx {env['normtx']}, backend {env['backend']}"
    )
    print(f"settings: {s}, parts: {parts}\n", flush=True)
    cfg = charlm.Config(depth=s["layers"], width=s["width"], heads=s["heads"], context=s["context"])
    tokens = s["batch"] * s["context"]
    payload: dict[str, Any] = {
        "quick": bool(args.quick),
        "settings": s,
        "parts": parts,
        "anchor_tokens": ANCHOR_TOKENS,
        "tokens_per_step": tokens,
        "flop_model": flop_model(cfg, tokens),
        "polar": [],
        "step": [],
    }

    def save() -> None:
        payload["elapsed_s"] = s["budget"] - budget.left()
        # 1-, 5- and 15-minute load averages: the machine may be shared.
        payload["load_average"] = list(os.getloadavg())
        rows = payload["polar"] + payload["step"]
        payload["complete"] = bool(rows) and all(
            r.get(k, "ok") == "ok" for r in rows for k in ("status", "update_status")
        )
        write_json(args.out, "accelerator", payload)

    if "polar" in parts:
        _polar_part(s, budget, payload, save)
    if "step" in parts or "update" in parts:
        _step_part(s, cfg, parts, budget, payload, save)
    save()
    _print(payload)
    _plot(payload, args.out / "accelerator.png")
    print(f"\nwrote {args.out / 'accelerator.json'} in {payload['elapsed_s']:.0f} s")
    return payload


def _polar_part(s, budget: Budget, payload: dict, save: Callable[[], None]) -> None:
    status, tree = budget.run("polar", lambda: gpt2_tree(s["layers"], s["width"]))
    payload["polar_tree"] = {
        "status": status,
        "layers": s["layers"],
        "shapes": {k: list(v) for k, v in gpt2_shapes(s["width"]).items()},
        "matrices": 4 * s["layers"],
        "entries": s["layers"] * sum(m * n for m, n in gpt2_shapes(s["width"]).values()),
    }
    for dtype in DTYPES:
        for method, build in polar_methods(dtype).items():
            row = {"method": method, "dtype": dtype}
            if tree is None:
                row["status"] = f"not run: tree {status}"
            else:
                row["status"], out = budget.run(
                    "polar", lambda build=build: polar_case(build, tree, s["repeats"])
                )
                row.update(out or {})
            payload["polar"].append(row)
            save()
            print(f"polar {method} {dtype}: {row['status']} {row.get('time_ms', '')}", flush=True)
    optax_ms = {
        r["dtype"]: r["time_ms"]
        for r in payload["polar"]
        if r["method"] == "optax muon NS per-leaf" and r["status"] == "ok"
    }
    for r in payload["polar"]:
        if r["status"] == "ok" and r["dtype"] in optax_ms:
            r["vs_optax"] = r["time_ms"] / optax_ms[r["dtype"]]


def _setup(s, cfg):
    task = charlm.task(cfg, eval_windows=2)
    graphdef, params = tr.init_params(task, 0)
    order = tr.batch_order(0, 1, s["batch"], task.num_positions)
    return task, graphdef, params, jnp.asarray(order[0])


def _step_part(s, cfg, parts, budget: Budget, payload: dict, save: Callable[[], None]) -> None:
    status, setup = budget.run("step", lambda: _setup(s, cfg))
    if setup is None:
        payload["step"] = [
            {"optimizer": name, "status": f"not run: setup {status}"} for name in step_candidates()
        ]
        return
    task, graphdef, params, positions = setup
    tokens = s["batch"] * s["context"]
    payload["model"] = {**task.info, "num_params": tr.tree_size(params)}
    rows = {name: {"optimizer": name} for name in step_candidates()}
    payload["step"] = list(rows.values())
    if "step" in parts:
        calls = {}
        for name, make in step_candidates().items():
            status, out = budget.run(
                "step", lambda make=make: compiled_step(task, graphdef, params, make, positions)
            )
            rows[name]["status"] = status
            if out is not None:
                calls[name], rows[name]["compile_s"] = out
            save()
            print(f"step {name}: {status}", flush=True)
        # One interleaved timing of every compiled step (the load of a shared machine falls on
        # all alike); guarded as one case.
        status, times = budget.run(
            "step timing", lambda: median_times(calls, repeats=s["repeats"], warmup=1)
        )
        for name in calls:
            rows[name]["status"] = status
            if times is not None:
                rows[name]["step_ms"] = 1e3 * times[name]
        del calls
        base = rows[BASELINE].get("step_ms")
        for r in rows.values():
            if base is not None and "step_ms" in r:
                extra = r["step_ms"] - base
                r["share"] = extra / r["step_ms"]
                r["share_at_anchor_tokens"] = extra / (extra + base * ANCHOR_TOKENS / tokens)
        save()
    if "update" in parts:
        grads = bench_step.random_like(params)
        for name, make in step_candidates().items():
            status, out = budget.run(
                "update",
                lambda name=name, make=make: bench_step.update_times(
                    {name: make}, params, grads, s["repeats"]
                ),
            )
            rows[name]["update_status"] = status
            if out is not None:
                rows[name]["update_ms"] = 1e3 * out[name]
                base = rows[BASELINE].get("step_ms")
                if base is not None:
                    rows[name]["update_share"] = rows[name]["update_ms"] / (
                        rows[name]["update_ms"] + base
                    )
            save()
            print(f"update {name}: {status}", flush=True)


def _print(payload: dict) -> None:
    if payload["polar"]:
        print("\n(a) polar factors of the GPT-2-small tree\n")
        print(
            format_table(
                payload["polar"],
                [
                    "method",
                    "dtype",
                    "status",
                    "time_ms",
                    "vs_optax",
                    "max_abs_sigma_minus_1",
                    "compile_s",
                ],
            )
        )
    if payload["step"]:
        print(
            f"\n(b) train step, {payload['tokens_per_step']} tokens; share = (step - SGD step) / step\n"
        )
        print(
            format_table(
                payload["step"],
                [
                    "optimizer",
                    "status",
                    "step_ms",
                    "share",
                    "share_at_anchor_tokens",
                    "compile_s",
                    "update_ms",
                    "update_share",
                ],
            )
        )
    f = payload["flop_model"]
    print(
        f"\nflop model: Muon's Newton–Schulz {100 * f['muon_share']:.2g}% of the step's flops at "
        f"{payload['tokens_per_step']} tokens, {100 * f['muon_share_at_anchor_tokens']:.2g}% at "
        f"{payload['anchor_tokens']}"
    )


def _plot(payload: dict, path) -> None:
    panels = []
    polar = [r for r in payload["polar"] if "time_ms" in r]
    if polar:
        panels.append(
            (
                [f"{r['method']} {r['dtype']}" for r in polar],
                [r["time_ms"] for r in polar],
                "polar factors of the tree (ms)",
                False,
            )
        )
    step = [r for r in payload["step"] if "step_ms" in r]
    if step:
        names = [r["optimizer"] for r in step]
        panels.append((names, [r["step_ms"] for r in step], "train step (ms)", False))
        panels.append(
            (names, [100 * r["share"] for r in step], "optimizer share of the step (%)", False)
        )
    compiled = [r for r in payload["step"] if "compile_s" in r]
    if compiled:
        panels.append(
            (
                [r["optimizer"] for r in compiled],
                [r["compile_s"] for r in compiled],
                "train-step compile (s)",
                False,
            )
        )
    if panels:
        tr.bar_panels(panels, path)


if __name__ == "__main__":
    main()
