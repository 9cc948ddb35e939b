"""scikit-learn's bundled 8x8 digits: a fixed train/test split, an MLP and a small CNN (Flax nnx).

The data set (1,797 images, 10 classes) ships inside scikit-learn; nothing is downloaded. Pixels
are scaled to ``[0, 1]``; the split is a stratified 75/25 split with ``random_state=0``, the same
on every machine.

Parameter names are Flax's (``kernel``, ``bias``) under modules named ``fc1``, ``conv1``, ``head``,
so ``normtx.roles.infer`` classifies every leaf (``head`` is the output projection).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.tasks.train import Task

__all__ = ["CNN", "MLP", "load", "task"]

NUM_CLASSES = 10


@functools.cache
def load() -> dict[str, np.ndarray]:
    """``{'x_train', 'y_train', 'x_test', 'y_test'}``: images ``(n, 8, 8, 1)`` in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return {
        "x_train": x_tr,
        "y_train": y_tr.astype(np.int32),
        "x_test": x_te,
        "y_test": y_te.astype(np.int32),
    }


class MLP(nnx.Module):
    """64 -> hidden -> hidden -> 10 with ReLU."""

    def __init__(self, hidden: int = 128, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


class CNN(nnx.Module):
    """Two 3x3 convolutions (HWIO kernels), a 2x2 average pool, and a linear head."""

    def __init__(self, channels: int = 16, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, channels, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(channels, 2 * channels, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 2 * channels, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


def _loss(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _metrics(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> dict[str, jax.Array]:
    x, y = batch
    logits = model(x)
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
    }


def task(model: str = "mlp", *, width: int | None = None) -> Task:
    """The digits task with ``model='mlp'`` (hidden ``width``, default 128) or ``'cnn'``
    (``width`` channels, default 16); evaluation is on the whole test split."""
    data = load()
    if model == "mlp":
        make = lambda rngs: MLP(width or 128, rngs=rngs)  # noqa: E731
    elif model == "cnn":
        make = lambda rngs: CNN(width or 16, rngs=rngs)  # noqa: E731
    else:
        raise ValueError(f"digits.task: model must be 'mlp' or 'cnn', got {model!r}.")
    train = (jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"]))
    return Task(
        name=f"digits-{model}",
        make_model=make,
        loss=_loss,
        metrics=_metrics,
        train_data=train,
        eval_data=(jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])),
        num_positions=len(data["y_train"]),
        get_batch=lambda d, idx: (d[0][idx], d[1][idx]),
        info={
            "data": "sklearn.datasets.load_digits, stratified 75/25 split (random_state=0)",
            "model": model,
            "width": width or (128 if model == "mlp" else 16),
            "train_examples": len(data["y_train"]),
            "test_examples": len(data["y_test"]),
        },
    )
