"""Dimension numbers: which axes of a leaf are a matrix's fan-in and fan-out.

A 2-D leaf is a Flax kernel ``K`` of shape ``(fan_in, fan_out)``: the layer maps a row vector
``x -> x K``. A leaf of higher rank names its fan-in axes and its fan-out axes; every other axis is
a batch axis and each slice is its own matrix (a scanned stack ``(n_layers, d_in, d_out)`` is
``n_layers`` matrices, a conv kernel ``HWIO`` is one matrix ``(H*W*I, O)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from normtx.sharding._layout import replicate_except

__all__ = [
    "CONV_HWIO",
    "DENSE",
    "DimensionNumbers",
    "DimsSpec",
    "MatrixLayout",
    "as_matrices",
    "flatten_axes",
    "matrix_layout",
    "normalize_axes",
]


class DimensionNumbers(NamedTuple):
    """Fan-in and fan-out axes of a leaf; every other axis is a batch axis."""

    fan_in_axes: tuple[int, ...]
    fan_out_axes: tuple[int, ...]


DimsSpec = DimensionNumbers | Any | Callable[[str, jax.Array], DimensionNumbers | None] | None
"""Dimension numbers for every leaf, a pytree prefix of them (``None``: the leaf's default), or
``(path, leaf) -> DimensionNumbers | None``."""

DENSE = DimensionNumbers((0,), (1,))
CONV_HWIO = DimensionNumbers((0, 1, 2), (3,))


def normalize_axes(
    shape: Sequence[int],
    fan_in_axes: Sequence[int] | None,
    fan_out_axes: Sequence[int] | None,
    *,
    what: str,
    path: str = "<leaf>",
) -> DimensionNumbers:
    """Resolves dimension numbers against ``shape``; raises a ``ValueError`` naming ``path``.

    Without dimension numbers only a 2-D leaf is a matrix: anything else is an error, never a guess.
    """
    ndim = len(shape)
    if fan_in_axes is None and fan_out_axes is None:
        if ndim < 2:
            raise ValueError(
                f"{what}: leaf {path!r} has shape {tuple(shape)}, which is not a matrix. A rank-{ndim} "
                "leaf (a bias, a gain, a scalar) needs a vector norm such as normtx.norms.rms(), or no "
                "norm at all (None); mixed trees are what normtx.modular_norm_partition and "
                "optax.partition are for."
            )
        if ndim != 2:
            raise ValueError(
                f"{what}: leaf {path!r} has shape {tuple(shape)}, but without dimension numbers only a "
                "2-D kernel (fan_in, fan_out) is a matrix. Pass fan_in_axes/fan_out_axes (e.g. a conv "
                "kernel HWIO: fan_in_axes=(0, 1, 2), fan_out_axes=(3,); a stacked layer "
                "(n_layers, d_in, d_out): fan_in_axes=(1,), fan_out_axes=(2,)), or give this leaf a "
                "vector norm."
            )
        return DENSE
    if fan_in_axes is None or fan_out_axes is None:
        raise ValueError(
            f"{what}: give both fan_in_axes and fan_out_axes, got {fan_in_axes=}, "
            f"{fan_out_axes=} for leaf {path!r}."
        )
    try:
        fin = tuple(int(a) for a in fan_in_axes)
        fout = tuple(int(a) for a in fan_out_axes)
    except TypeError as e:
        raise ValueError(
            f"{what}: fan_in_axes/fan_out_axes must be sequences of ints, got "
            f"{fan_in_axes!r}, {fan_out_axes!r}."
        ) from e
    for a in fin + fout:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{what}: axis {a} is out of range for leaf {path!r} of shape "
                f"{tuple(shape)} (fan_in_axes={fin}, fan_out_axes={fout})."
            )
    fin = tuple(a % ndim for a in fin)
    fout = tuple(a % ndim for a in fout)
    if not fin or not fout:
        raise ValueError(
            f"{what}: fan_in_axes and fan_out_axes must be non-empty for leaf {path!r}."
        )
    if len(set(fin + fout)) != len(fin) + len(fout):
        raise ValueError(
            f"{what}: fan_in_axes {fin} and fan_out_axes {fout} overlap or repeat for "
            f"leaf {path!r} of shape {tuple(shape)}."
        )
    return DimensionNumbers(fin, fout)


class MatrixLayout(NamedTuple):
    """How a leaf becomes a batch of matrices: permute, then merge axis groups (and back)."""

    batch: tuple[int, ...]  # the batch axes, in order
    perm: tuple[int, ...]  # batch axes first, then each group's axes
    inv_perm: tuple[int, ...]  # the inverse permutation
    moved_shape: tuple[int, ...]  # the shape after ``perm``
    flat_shape: tuple[int, ...]  # ``(B, prod(groups[0]), prod(groups[1]), ...)``


def matrix_layout(shape: Sequence[int], groups: Sequence[Sequence[int]]) -> MatrixLayout:
    """The permutation and shapes that turn a leaf of ``shape`` into ``(B, *group sizes)``."""
    grouped = tuple(a for g in groups for a in g)
    batch = tuple(a for a in range(len(shape)) if a not in grouped)
    perm = batch + grouped
    inv_perm = tuple(sorted(range(len(shape)), key=perm.__getitem__))
    moved_shape = tuple(shape[a] for a in perm)
    sizes = [math.prod(shape[a] for a in g) for g in groups]
    flat_shape = (math.prod(shape[a] for a in batch), *sizes)
    return MatrixLayout(batch, perm, inv_perm, moved_shape, flat_shape)


def flatten_axes(
    x: jax.Array, groups: Sequence[Sequence[int]]
) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """Reshapes ``x`` to ``(B, prod(groups[0]), prod(groups[1]), ...)`` and returns the inverse.

    Every axis in no group is a batch axis; the batch axes come first, in order. Under explicit
    sharding every axis but the first batch axis is gathered first (``normtx.sharding``).
    """
    lay = matrix_layout(x.shape, groups)
    x = replicate_except(x, lay.batch[0] if lay.batch else None)

    def inverse(m: jax.Array) -> jax.Array:
        return m.reshape(lay.moved_shape).transpose(lay.inv_perm)

    return x.transpose(lay.perm).reshape(lay.flat_shape), inverse


def as_matrices(
    x: jax.Array, dims: DimensionNumbers
) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """Reshapes ``x`` to a batch of matrices ``(B, d_in, d_out)`` and returns the inverse map."""
    return flatten_axes(x, dims)
