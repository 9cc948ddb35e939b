"""The one training loop behind the demo and every benchmark.

A ``Task`` bundles a model factory, a loss, evaluation metrics, the training data (device arrays)
and a fixed evaluation batch. ``train(task, tx, ...)`` then

- initialises the model from ``seed`` (the same initial weights for every optimizer),
- draws the data order from ``seed`` alone (``batch_order``: the same batches, in the same order,
  for every optimizer given the seed),
- runs ``eval_every`` steps at a time inside one jitted ``lax.scan`` (one compile per run, timed
  apart from training), evaluates after each chunk, and logs validation metrics against steps and
  against training wall time (compile and evaluation excluded),
- shows a tqdm bar, and stops early when the training loss stops being finite (``diverged``).

Parameters are the model's ``nnx.Param`` state as a plain nested dict (``nnx.to_pure_dict``), so
optimizers and ``normtx.roles.infer`` see paths such as ``blocks/0/attn/q_proj/kernel``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from benchmarks.common import timed

__all__ = [
    "Run",
    "Task",
    "Trainer",
    "bar_panels",
    "batch_order",
    "best",
    "finite_or_none",
    "init_params",
    "loss_step",
    "make_train_step",
    "plot_runs",
    "save_figure",
    "subplots",
    "sweep",
    "train",
    "tree_size",
]


@dataclasses.dataclass(frozen=True)
class Task:
    """A training problem.

    Attributes:
      name: short name recorded in results (``'charlm'``, ``'digits-mlp'``).
      make_model: ``rngs -> nnx.Module``.
      loss: ``(model, batch) -> scalar`` mean training loss.
      metrics: ``(model, batch) -> {'loss': …, …}`` evaluation metrics (scalars).
      train_data: a pytree of device arrays holding the whole training set.
      eval_data: one fixed evaluation batch (a pytree of arrays).
      num_positions: batches are drawn as integer positions in ``[0, num_positions)``.
      get_batch: ``(train_data, positions) -> batch``, pure ``jnp`` (runs inside jit).
      info: a JSON-able description (data, model size) recorded beside results.
    """

    name: str
    make_model: Callable[[nnx.Rngs], nnx.Module]
    loss: Callable[[nnx.Module, Any], jax.Array]
    metrics: Callable[[nnx.Module, Any], dict[str, jax.Array]]
    train_data: Any
    eval_data: Any
    num_positions: int
    get_batch: Callable[[Any, jax.Array], Any]
    info: dict[str, Any]


@dataclasses.dataclass
class Run:
    """The log of one training run (``to_json`` drops the weights)."""

    name: str
    steps: list[int]  # steps at which the model was evaluated (0 = initial weights)
    val: dict[str, list[float]]  # evaluation metrics at those steps
    train_loss: list[float]  # mean training loss over the chunk that ended at each step (>0)
    wall_s: list[float]  # cumulative training time at each step (compile, evaluation excluded)
    compile_s: float  # time to compile the training chunk
    compile_cpu_s: float  # the same in CPU seconds (not counting other processes' time)
    diverged: bool  # the training loss stopped being finite (the run stopped there)
    graphdef: Any = dataclasses.field(repr=False)
    params: Any = dataclasses.field(repr=False)

    @property
    def final_val_loss(self) -> float:
        """Validation loss after the last step, ``inf`` if the run diverged."""
        return math.inf if self.diverged else self.val["loss"][-1]

    def model(self) -> nnx.Module:
        """The trained model."""
        return nnx.merge(self.graphdef, self.params)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "diverged": self.diverged,
            "compile_s": self.compile_s,
            "compile_cpu_s": self.compile_cpu_s,
            "steps": self.steps,
            "wall_s": self.wall_s,
            "train_loss": self.train_loss,
            "val": self.val,
        }


def init_params(task: Task, seed: int) -> tuple[Any, dict]:
    """``(graphdef, params)`` of the task's model initialised from ``seed``."""
    graphdef, state = nnx.split(task.make_model(nnx.Rngs(seed)), nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def batch_order(seed: int, steps: int, batch_size: int, num_positions: int) -> np.ndarray:
    """``(steps, batch_size)`` int32 positions: the data order, a function of the seed only."""
    rng = np.random.default_rng([seed, 0x5EED])
    return rng.integers(0, num_positions, size=(steps, batch_size), dtype=np.int32)


def loss_step(loss: Callable[[Any, Any], jax.Array], tx: optax.GradientTransformation) -> Callable:
    """The pure step ``(params, opt_state, batch) -> (params, opt_state, loss)`` of a loss
    ``(params, batch) -> scalar`` (any model library): one gradient, one optimizer update."""

    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def make_train_step(task: Task, graphdef: Any, tx: optax.GradientTransformation) -> Callable:
    """The pure train step ``(params, opt_state, train_data, positions) -> (params, opt_state,
    loss)`` of ``task``'s nnx model: ``loss_step`` on the batch at ``positions``."""
    step = loss_step(lambda p, batch: task.loss(nnx.merge(graphdef, p), batch), tx)

    def train_step(params, opt_state, data, positions):
        return step(params, opt_state, task.get_batch(data, positions))

    return train_step


def _make_chunk(task: Task, graphdef: Any, tx: optax.GradientTransformation):
    step = make_train_step(task, graphdef, tx)

    def chunk(params, opt_state, data, positions):
        def body(carry, pos):
            params, opt_state, loss = step(*carry, data, pos)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), positions)
        return params, opt_state, losses

    return jax.jit(chunk, donate_argnums=(0, 1))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(metrics: Callable, graphdef: Any, params: Any, batch: Any) -> dict[str, jax.Array]:
    """Evaluation metrics; compiled once per model and metric, shared by every run."""
    return metrics(nnx.merge(graphdef, params), batch)


class Trainer:
    """Trains ``task``'s model with ``tx`` for ``steps`` steps (see the module docstring).

    The training chunk is compiled once, at the first ``run``, and reused by every later run —
    other seeds, or other values of an ``optax.inject_hyperparams`` hyperparameter set with
    ``run(hyperparams=...)`` — since they differ in array values only.
    """

    def __init__(
        self,
        task: Task,
        tx: optax.GradientTransformation,
        *,
        steps: int,
        batch_size: int,
        eval_every: int = 50,
    ):
        if steps <= 0 or eval_every <= 0 or steps % eval_every:
            raise ValueError(
                f"train: steps ({steps}) must be a positive multiple of eval_every ({eval_every})."
            )
        self.task, self.tx = task, tx
        self.steps, self.batch_size, self.eval_every = steps, batch_size, eval_every
        self._chunk, self.compile_s, self.compile_cpu_s = None, 0.0, 0.0

    def run(
        self,
        *,
        seed: int = 0,
        name: str = "",
        progress: bool = True,
        hyperparams: dict[str, float] | None = None,
    ) -> Run:
        """One run from the weights and data order of ``seed``; ``hyperparams`` overwrite the
        named ``inject_hyperparams`` entries of the initial optimizer state."""
        task, steps, eval_every = self.task, self.steps, self.eval_every
        graphdef, params = init_params(task, seed)
        order = batch_order(seed, steps, self.batch_size, task.num_positions)
        # Own buffers for every state leaf: donation fails if a leaf aliases the params (an anchor
        # w_0) or another leaf.
        opt_state = jax.tree.map(jnp.copy, self.tx.init(params))
        for key, value in (hyperparams or {}).items():
            old = optax.tree_utils.tree_get(opt_state, key)
            opt_state = optax.tree_utils.tree_set(opt_state, **{key: jnp.asarray(value, old.dtype)})
        if self._chunk is None:
            self._chunk, self.compile_s, self.compile_cpu_s = timed(
                lambda: (
                    _make_chunk(task, graphdef, self.tx)
                    .lower(params, opt_state, task.train_data, order[:eval_every])
                    .compile()
                )
            )

        def record(metrics):
            for k, v in jax.device_get(metrics).items():
                val.setdefault(k, []).append(float(v))

        val: dict[str, list[float]] = {}
        record(_evaluate(task.metrics, graphdef, params, task.eval_data))
        logged_steps, train_loss, wall_s, elapsed, diverged = [0], [], [0.0], 0.0, False
        bar = tqdm(total=steps, desc=name or task.name, disable=not progress, leave=True)
        for t in range(eval_every, steps + 1, eval_every):
            start = time.perf_counter()
            params, opt_state, losses = self._chunk(
                params, opt_state, task.train_data, order[t - eval_every : t]
            )
            losses = np.asarray(losses)  # blocks until the chunk is done
            elapsed += time.perf_counter() - start
            bar.update(eval_every)
            if not np.all(np.isfinite(losses)):
                diverged = True
                bar.set_postfix_str("diverged")
                break
            record(_evaluate(task.metrics, graphdef, params, task.eval_data))
            logged_steps.append(t)
            train_loss.append(float(losses.mean()))
            wall_s.append(elapsed)
            bar.set_postfix(train=f"{train_loss[-1]:.3f}", val=f"{val['loss'][-1]:.3f}")
        bar.close()
        return Run(
            name=name or task.name,
            steps=logged_steps,
            val=val,
            train_loss=train_loss,
            wall_s=wall_s,
            compile_s=self.compile_s,
            compile_cpu_s=self.compile_cpu_s,
            diverged=diverged,
            graphdef=graphdef,
            params=params,
        )


def train(
    task: Task,
    tx: optax.GradientTransformation,
    *,
    steps: int,
    batch_size: int,
    seed: int = 0,
    eval_every: int = 50,
    name: str = "",
    progress: bool = True,
) -> Run:
    """One run of ``Trainer(task, tx, ...)``: every run with the same ``seed`` starts from the
    same weights and sees the same batches; ``steps`` must be a multiple of ``eval_every``."""
    trainer = Trainer(task, tx, steps=steps, batch_size=batch_size, eval_every=eval_every)
    return trainer.run(seed=seed, name=name, progress=progress)


def subplots(ncols: int, *, width: float = 5.0, height: float = 3.8, **kwargs):
    """``(fig, axes)``: one row of ``ncols`` panels, drawn with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), **kwargs)


def save_figure(fig, path: pathlib.Path) -> None:
    """Writes ``fig`` as a PNG at ``path`` (folders created) and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def bar_panels(
    panels: Sequence[tuple[Sequence[str], Sequence[float], str, bool]], path: pathlib.Path
) -> None:
    """Horizontal bar charts side by side, one per ``(names, values, x label, log x)``; a PNG."""
    fig, axes = subplots(len(panels), width=4.5, height=0.9 + 0.35 * max(len(p[0]) for p in panels))
    for ax, (names, values, label, log) in zip(np.atleast_1d(axes), panels):
        y = np.arange(len(names))
        ax.barh(y, values)
        ax.set_yticks(y, names, fontsize=7)
        ax.set_xlabel(label)
        if log:
            ax.set_xscale("log")
        ax.invert_yaxis()
    save_figure(fig, path)


def plot_runs(runs: Sequence[Run], path: pathlib.Path, *, title: str, metric: str = "loss") -> None:
    """Two panels, validation ``metric`` against steps and against training wall time; a PNG."""
    fig, axes = subplots(2, sharey=True)
    for run in runs:
        ys = run.val[metric][: len(run.steps)]
        axes[0].plot(run.steps, ys, label=run.name)
        axes[1].plot(run.wall_s, ys, label=run.name)
    # Zoom past the first evaluation (the initial loss would flatten every curve).
    later = [y for run in runs for y in run.val[metric][1 : len(run.steps)]]
    if later:
        axes[0].set_ylim(min(later) - 0.05 * (max(later) - min(later)), max(later))
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training wall time (s)")
    axes[0].set_ylabel(f"validation {metric}")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def tree_size(tree: Any, *, min_size: int = 1) -> int:
    """Floating-point entries of a pytree of arrays or ``ShapeDtypeStruct``s, counting only leaves
    of at least ``min_size`` entries (``min_size=2`` leaves out scalars)."""
    sizes = (
        math.prod(x.shape) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
    )
    return sum(n for n in sizes if n >= min_size)


def sweep(
    task: Task,
    make_tx: Callable[[float], optax.GradientTransformation],
    lrs: Sequence[float],
    *,
    name: str,
    linear: bool = True,
    seed: int = 0,
    steps: int,
    batch_size: int,
    eval_every: int = 50,
    progress: bool = True,
) -> list[Run]:
    """One run per learning rate (same seed, data order and budget); names ``'<name> lr=<lr>'``.

    ``linear=True`` says that ``make_tx(lr)``'s update is ``lr`` times ``make_tx(1)``'s (a chain
    ending in ``scale_by_learning_rate(lr · schedule)`` whose other parts do not read the step
    taken): the sweep then trains ``make_tx(1)`` followed by an injected ``optax.scale(lr)`` and
    compiles once for all learning rates. ``linear=False`` builds and compiles one optimizer per
    learning rate.
    """
    kw = {"steps": steps, "batch_size": batch_size, "eval_every": eval_every}
    if not linear:
        return [
            train(task, make_tx(lr), seed=seed, name=f"{name} lr={lr:g}", progress=progress, **kw)
            for lr in lrs
        ]
    tx = optax.chain(make_tx(1.0), optax.inject_hyperparams(optax.scale)(step_size=1.0))
    trainer = Trainer(task, tx, **kw)
    return [
        trainer.run(
            seed=seed, name=f"{name} lr={lr:g}", progress=progress, hyperparams={"step_size": lr}
        )
        for lr in lrs
    ]


def best(runs: Sequence[Run]) -> int:
    """Index of the run with the lowest final validation loss (diverged runs count as ``inf``)."""
    return min(range(len(runs)), key=lambda i: runs[i].final_val_loss)


def finite_or_none(x: float) -> float | None:
    """``x``, or ``None`` (JSON ``null``) where it is not finite (a diverged run)."""
    return x if math.isfinite(x) else None
