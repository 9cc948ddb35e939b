"""Optimizer cost per model: update and train-step time, trace and compile time, program size.

Three models (``models``), params and one batch fixed:

- ``charlm``: the 6-layer nnx char-LM transformer of ``benchmarks.tasks.charlm`` (batch 16);
- ``linen GPT``: the independent 4-layer, width-128 linen GPT of ``benchmarks.tasks.linen_gpt``
  (0.84M parameters, batch 8 x 128), written as a new user would;
- ``linen GPT (nn.scan)``: the same with its blocks stacked by ``nn.scan`` (kernels ``(4, ...)``).

For each model and optimizer (``candidates``: AdamW, ``optax.contrib.muon``, normtx's Muon,
modular descent, modular descent with escape velocity; Prodigy on the char-LM):

- ``update_ms``: median wall time of one compiled ``jax.jit(tx.update)`` returning the updates and
  the new state, the optimizers called in interleaved rounds (``benchmarks.common.median_times``);
- ``train_step_ms``: the same for the whole jitted train step (forward, backward, update; params
  and state donated);
- ``compile_cpu_s`` — **the compile metric**: CPU seconds (``time.process_time``, every thread of
  this process) to lower and compile the train step; ``compile_s`` the same in wall time. These
  machines are shared, and wall time also counts the time other processes held the cores. Each is
  the median of ``compile_repeats`` fresh compiles, each after ``jax.clear_caches()`` and a
  warm-up lowering of the model's SGD step: every optimizer starts from the same caches, the
  model's traces warm and its own cold, as at its first compile in a user's process;
- ``step_trace_s``, ``update_trace_s``: CPU seconds of Python tracing and lowering,
  ``jax.jit(step).lower(...)`` (part of ``compile_cpu_s``) and ``jax.jit(tx.update).lower(...)``;
- ``update_hlo_lines``: lines of ``jax.jit(tx.update).lower(...).as_text()`` (StableHLO);
- ``state_floats_per_param``: floating-point entries of the non-scalar leaves of
  ``jax.eval_shape(tx.init, params)`` per parameter (scalars — counts, step sizes — are not per
  parameter): Muon-like 1; with escape velocity <= 2; Prodigy 4;
- ratios to AdamW's row of the same model (``update_vs_adamw``, ``step_vs_adamw``,
  ``compile_vs_adamw`` in CPU seconds) and ``update_vs_muon`` (``optax.contrib.muon``'s).

Targets, per model: modular descent's train-step compile <= 1.3x AdamW's, with escape velocity
<= 1.5x; escape velocity's train step <= 1.1x AdamW's; its update StableHLO <= 1.3x modular's;
modular / Muon update time <= 0.8; escape velocity's state <= 2 floats per parameter.

    python -m benchmarks.bench_step [--quick] [--models charlm gpt gpt-scan] [--out DIR]
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import normtx

from benchmarks.common import format_table, median_times, parse_args, timed, write_json
from benchmarks.tasks import charlm, linen_gpt
from benchmarks.tasks import optimizers as opt
from benchmarks.tasks import train as tr

FULL = {
    "charlm": charlm.Config(depth=6, width=256, heads=4, context=128),
    "charlm_batch": 16,
    "gpt": linen_gpt.Config(depth=4, width=128, heads=4, context=128, vocab=128, batch=8),
    "repeats": 15,
    "compile_repeats": 3,
    "prodigy": True,  # on the char-LM
}
QUICK = {
    "charlm": charlm.Config(depth=1, width=32, heads=2, context=16),
    "charlm_batch": 4,
    "gpt": linen_gpt.Config(depth=1, width=32, heads=2, context=16, vocab=64, batch=2),
    "repeats": 3,
    "compile_repeats": 1,
    "prodigy": False,
}
STEPS = 1000  # schedule length (irrelevant to cost)
ADAMW, MUON = "optax.adamw", "optax.contrib.muon"
MODULAR, MODULAR_EV = "normtx modular", "normtx modular + escape velocity"


@dataclasses.dataclass(frozen=True)
class Model:
    """A parameter tree, a fixed batch and the loss ``(params, batch) -> scalar``."""

    name: str
    params: Any
    batch: Any
    loss: Callable[[Any, Any], jax.Array]
    info: dict[str, Any]


MODELS = {"charlm": "charlm", "gpt": "linen GPT", "gpt-scan": "linen GPT (nn.scan)"}


def models(s: dict, keys: Sequence[str] = tuple(MODELS)) -> list[Model]:
    """The models of settings ``s`` named by ``keys`` (``MODELS``): the char-LM (nnx), the linen
    GPT unscanned and ``nn.scan``-stacked."""
    return [_charlm(s) if key == "charlm" else _gpt(s, scan=key == "gpt-scan") for key in keys]


def _charlm(s: dict) -> Model:
    task = charlm.task(s["charlm"], eval_windows=2)
    graphdef, params = tr.init_params(task, 0)
    order = tr.batch_order(0, 1, s["charlm_batch"], task.num_positions)[0]

    def loss(p, batch):
        return task.loss(nnx.merge(graphdef, p), batch)

    batch = task.get_batch(task.train_data, jnp.asarray(order))
    return Model(MODELS["charlm"], params, batch, loss, {**task.info, "batch": len(order)})


def _gpt(s: dict, *, scan: bool) -> Model:
    cfg = dataclasses.replace(s["gpt"], scan=scan)
    params, batch = linen_gpt.init(cfg)
    name = MODELS["gpt-scan" if scan else "gpt"]
    return Model(name, params, batch, linen_gpt.loss_fn(cfg), dataclasses.asdict(cfg))


def candidates(params, *, prodigy: bool = False) -> dict[str, Callable[[], Any]]:
    """Builders of every optimizer compared on ``params``; ``optax.contrib.muon`` orthogonalises
    the leaves normtx's Muon does (``normtx.roles.muon_dimension_numbers``)."""
    dims = normtx.roles.muon_dimension_numbers(params)
    out = {
        ADAMW: lambda: opt.adamw(1e-3, STEPS),
        MUON: lambda: opt.muon(0.02, STEPS, adam_lr=1e-3, dimension_numbers=dims),
        "normtx muon": lambda: opt.normtx_muon(0.02, STEPS, adam_lr=1e-3),
        MODULAR: lambda: opt.modular(0.05, STEPS),
        MODULAR_EV: lambda: opt.modular_ev(STEPS),
    }
    if prodigy:
        out["optax.contrib.prodigy"] = lambda: opt.prodigy(STEPS)
    return out


def random_like(params, seed: int = 1):
    """Standard normal gradients with the structure, shapes and dtypes of ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def update_program(make_tx, params, grads) -> tuple[Callable[[], Any], float, int]:
    """``(call, trace CPU seconds, StableHLO lines)`` of ``jax.jit(tx.update)``, lowered from cold
    caches; ``call()`` runs the compiled update (updates and new state)."""
    tx = make_tx()
    state = tx.init(params)
    jax.clear_caches()
    lowered, _, trace_s = timed(lambda: jax.jit(tx.update).lower(grads, state, params))
    compiled = lowered.compile()
    return lambda: compiled(grads, state, params), trace_s, len(lowered.as_text().splitlines())


def update_times(candidates: dict, params, grads, repeats: int) -> dict[str, float]:
    """Median seconds of one jitted ``tx.update`` per optimizer, in interleaved rounds.

    The whole update is timed, the new state with the updates: XLA drops whatever only the state
    needs from a program that returns the updates alone (escape velocity's ``η_{t+1}`` and the
    dual norm it is computed from, since the step itself uses ``η_t``)."""
    calls = {name: update_program(make, params, grads)[0] for name, make in candidates.items()}
    return median_times(calls, repeats=repeats, warmup=2)


def compiled_step(model: Model, make_tx) -> tuple[Callable[[], Any], dict[str, float]]:
    """``(call, times)``: ``call()`` runs one train step in place (params and state donated);
    ``times`` holds ``compile_s``/``compile_cpu_s`` (lower + compile, wall/CPU seconds) and
    ``step_trace_s`` (CPU seconds of the lowering), measured after ``jax.clear_caches()`` and a
    warm-up lowering of the model's SGD step (its traces; XLA keeps no cache across programs)."""
    sgd = optax.sgd(1e-3)
    warm = jax.jit(tr.loss_step(model.loss, sgd))
    tx = make_tx()
    carry = [jax.tree.map(jnp.copy, model.params)]
    # Own buffers for every state leaf: donation fails where a leaf aliases the params.
    carry.append(jax.tree.map(jnp.copy, tx.init(carry[0])))
    jax.clear_caches()
    warm.lower(model.params, sgd.init(model.params), model.batch)
    step = jax.jit(tr.loss_step(model.loss, tx), donate_argnums=(0, 1))
    lowered, trace_wall, trace_cpu = timed(lambda: step.lower(carry[0], carry[1], model.batch))
    compiled, compile_wall, compile_cpu = timed(lowered.compile)

    def call():
        carry[0], carry[1], loss = compiled(carry[0], carry[1], model.batch)
        return loss

    jax.block_until_ready(call())
    return call, {
        "compile_s": trace_wall + compile_wall,
        "compile_cpu_s": trace_cpu + compile_cpu,
        "step_trace_s": trace_cpu,
    }


def measure(model: Model, makers: dict[str, Callable[[], Any]], s: dict) -> list[dict]:
    """Every metric of the module docstring for one model, one row per optimizer."""
    grads = random_like(model.params)
    n_params = tr.tree_size(model.params)
    rows = {name: {"model": model.name, "optimizer": name} for name in makers}
    updates = {}
    for name, make in makers.items():
        updates[name], rows[name]["update_trace_s"], rows[name]["update_hlo_lines"] = (
            update_program(make, model.params, grads)
        )
    for name, t in median_times(updates, repeats=s["repeats"], warmup=2).items():
        rows[name]["update_ms"] = 1e3 * t
    del updates
    # Compiles in interleaved rounds; the last round's programs are the ones timed.
    compiles: dict[str, list[dict[str, float]]] = {name: [] for name in makers}
    steps = {}
    for _ in range(s["compile_repeats"]):
        for name, make in makers.items():
            steps[name], times = compiled_step(model, make)
            compiles[name].append(times)
    for name, t in median_times(steps, repeats=s["repeats"], warmup=1).items():
        rows[name]["train_step_ms"] = 1e3 * t
        for key in ("compile_cpu_s", "compile_s", "step_trace_s"):
            rows[name][key] = statistics.median(c[key] for c in compiles[name])
        state_shape = jax.eval_shape(makers[name]().init, model.params)
        rows[name]["state_floats_per_param"] = tr.tree_size(state_shape, min_size=2) / n_params
    del steps
    adamw, muon = rows[ADAMW], rows[MUON]
    for r in rows.values():
        r["update_vs_adamw"] = r["update_ms"] / adamw["update_ms"]
        r["step_vs_adamw"] = r["train_step_ms"] / adamw["train_step_ms"]
        r["compile_vs_adamw"] = r["compile_cpu_s"] / adamw["compile_cpu_s"]
        r["update_vs_muon"] = r["update_ms"] / muon["update_ms"]
    return list(rows.values())


def targets(rows: list[dict]) -> dict[str, bool]:
    """Issue 14's targets (and the earlier ones) on one model's rows."""
    by = {r["optimizer"]: r for r in rows}
    mod, ev = by[MODULAR], by[MODULAR_EV]
    return {
        "modular_compile_vs_adamw<=1.3": bool(mod["compile_vs_adamw"] <= 1.3),
        "modular_ev_compile_vs_adamw<=1.5": bool(ev["compile_vs_adamw"] <= 1.5),
        "modular_ev_step_vs_adamw<=1.1": bool(ev["step_vs_adamw"] <= 1.1),
        "modular_ev_hlo_vs_modular<=1.3": bool(
            ev["update_hlo_lines"] <= 1.3 * mod["update_hlo_lines"]
        ),
        "modular_update_vs_muon<=0.8": bool(mod["update_vs_muon"] <= 0.8),
        "modular_ev_state_floats<=2": bool(ev["state_floats_per_param"] <= 2),
    }


COLUMNS = (
    "optimizer",
    "update_ms",
    "train_step_ms",
    "compile_cpu_s",
    "compile_s",
    "step_trace_s",
    "update_trace_s",
    "update_hlo_lines",
    "state_floats_per_param",
    "update_vs_adamw",
    "step_vs_adamw",
    "compile_vs_adamw",
    "update_vs_muon",
)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, options=_options)
    s = QUICK if args.quick else FULL
    rows, goals, info = [], {}, {}
    for model in models(s, args.models):
        n_params = tr.tree_size(model.params)
        info[model.name] = {**model.info, "num_params": n_params}
        model_rows = measure(
            model, candidates(model.params, prodigy=s["prodigy"] and model.name == "charlm"), s
        )
        goals[model.name] = targets(model_rows)
        rows += model_rows
        print(f"\n{model.name}: {n_params:,} parameters\n", flush=True)
        print(format_table(model_rows, COLUMNS))
        print("\n".join(f"{k}: {v}" for k, v in goals[model.name].items()), flush=True)
    payload = {
        "settings": {k: v for k, v in s.items() if k not in ("charlm", "gpt")},  # in "models"
        "models": info,
        "rows": rows,
        "targets": goals,
    }
    write_json(args.out, "step", payload)
    _plot(rows, args.out / "step.png")
    return payload


def _options(parser) -> None:
    parser.add_argument(
        "--models",
        nargs="+",
        choices=tuple(MODELS),
        default=tuple(MODELS),
        help="the models to measure (default: all)",
    )


def _plot(rows, path) -> None:
    names = [f"{r['model']}: {r['optimizer']}" for r in rows]
    tr.bar_panels(
        [
            (names, [r["step_vs_adamw"] for r in rows], "train step / AdamW's", False),
            (names, [r["compile_vs_adamw"] for r in rows], "compile CPU s / AdamW's", False),
            (names, [r["update_hlo_lines"] for r in rows], "update StableHLO lines", False),
            (names, [r["update_ms"] for r in rows], "update time (ms)", True),
        ],
        path,
    )


if __name__ == "__main__":
    main()
