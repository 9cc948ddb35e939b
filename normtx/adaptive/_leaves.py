"""Which leaves the adaptive transforms see as matrices, and the checks they share.

A 2-D leaf is a kernel ``(fan_in, fan_out)``. A leaf of higher rank is a batch of matrices once it
has dimension numbers (``normtx.dims``: a conv kernel ``HWIO`` is ``CONV_HWIO``, a stacked layer
``(n_layers, d_in, d_out)`` is ``DimensionNumbers((1,), (2,))``); without them it is an error,
never a guess. A leaf of rank 0 or 1 (a bias, a gain) is a *vector*: each transform states what it
does with vectors through an explicit ``vectors=`` policy, and the default is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from normtx._numerics import compute_dtype
from normtx._pytree import broadcast_to_leaves, describe_leaf, flatten_with_paths
from normtx._validation import value_at
from normtx.dims import DENSE, DimensionNumbers, DimsSpec, normalize_axes

__all__ = [
    "NEEDS_PARAMS",
    "DimsSpec",
    "balanced_blocks",
    "check_float_leaves",
    "eye_batch",
    "field_trees",
    "map_with_params",
    "matrix_shape",
    "resolve_matrix_leaves",
]


NEEDS_PARAMS = "this transform needs the params: call tx.update(updates, state, params)."


def map_with_params(
    fn: Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array],
    value: Any,
    count: jax.Array,
    updates: Any,
    params: Any,
    what: str,
) -> Any:
    """``fn(u, x, v, dt)`` on every leaf ``u`` of ``updates`` and ``x`` of ``params``: ``dt`` is
    the compute dtype of the parameter (>= float32) and ``v`` the hyperparameter ``value`` at
    step ``count`` in it (``value_at``: a schedule is called). Without ``params``, a
    ``ValueError`` naming ``what``."""
    if params is None:
        raise ValueError(f"{what}: {NEEDS_PARAMS}")

    def leaf(u, x):
        dt = compute_dtype(x.dtype)
        return fn(u, x, value_at(value, count, dt), dt)

    return jax.tree.map(leaf, updates, params)


def check_float_leaves(tree: Any, what: str) -> list[tuple[str, Any]]:
    """``[(path, leaf), ...]``; raises ``ValueError`` naming any leaf that is not real floating."""
    flat, _ = flatten_with_paths(tree)
    for path, leaf in flat:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"{what}: leaf {describe_leaf(path, leaf)} is not a real floating array; "
                "optimizer statistics are defined for float parameters only."
            )
    return flat


def balanced_blocks(size: int, block_size: int | None) -> tuple[int, int]:
    """``(count, block)``: the fewest blocks of at most ``block_size`` that cover ``size``.

    The blocks are as equal as possible (``block = ceil(size / count)``), so the zero padding of
    the last one is less than ``count`` entries. ``None`` (or a large block) is one block.
    """
    if block_size is None or size <= block_size:
        return 1, max(size, 1)
    count = -(-size // block_size)
    return count, -(-size // count)


def eye_batch(batch: int, size: int, dtype) -> jax.Array:
    """``batch`` identity matrices of side ``size``: ``(batch, size, size)``."""
    return jnp.broadcast_to(jnp.eye(size, dtype=dtype), (batch, size, size))


def field_trees(treedef: Any, rows: list, fields: int) -> list:
    """State trees from per-leaf rows: ``rows[i]`` holds leaf ``i``'s entry of each of the
    ``fields`` fields (flatten order); the ``f``-th tree, of ``treedef``'s structure, holds
    every leaf's ``f``-th entry."""
    return [jax.tree.unflatten(treedef, [row[f] for row in rows]) for f in range(fields)]


def matrix_shape(shape: tuple[int, ...], dims: DimensionNumbers) -> tuple[int, int, int]:
    """``(batch, d_in, d_out)``: the shape ``normtx.dims.as_matrices`` gives a leaf of ``shape``."""
    fin, fout = dims
    batch = [s for a, s in enumerate(shape) if a not in fin and a not in fout]
    return (
        math.prod(batch),
        math.prod(shape[a] for a in fin),
        math.prod(shape[a] for a in fout),
    )


def resolve_matrix_leaves(
    params: Any,
    dimension_numbers: DimsSpec,
    *,
    what: str,
    vectors_ok: bool,
    vector_hint: str,
) -> list[tuple[str, Any, DimensionNumbers | None]]:
    """``[(path, leaf, dims_or_None), ...]``: dims for a matrix leaf, ``None`` for a vector leaf.

    Raises ``ValueError`` naming the leaf's path, shape and dtype for a non-float leaf, for a vector
    leaf when ``vectors_ok`` is false (the message ends with ``vector_hint``), and for a leaf of rank
    > 2 without dimension numbers.
    """
    check_float_leaves(params, what)
    triples = broadcast_to_leaves(
        dimension_numbers,
        params,
        is_value=lambda x: isinstance(x, DimensionNumbers),
        what=what,
        expected="normtx.dims.DimensionNumbers",
    )
    out = []
    for path, leaf, dims in triples:
        shape = tuple(jnp.shape(leaf))
        if dims is not None:
            out.append((path, leaf, normalize_axes(shape, dims[0], dims[1], what=what, path=path)))
        elif len(shape) < 2:
            if not vectors_ok:
                raise ValueError(
                    f"{what}: leaf {describe_leaf(path, leaf)} is not a matrix. {vector_hint}"
                )
            out.append((path, leaf, None))
        elif len(shape) == 2:
            out.append((path, leaf, DENSE))
        else:
            raise ValueError(
                f"{what}: leaf {describe_leaf(path, leaf)} has rank {len(shape)}; only a 2-D "
                "kernel (fan_in, fan_out) is a matrix without dimension numbers. Pass "
                "dimension_numbers (e.g. normtx.dims.CONV_HWIO for a conv kernel HWIO, "
                "normtx.dims.DimensionNumbers((1,), (2,)) for a stacked (n_layers, d_in, d_out) "
                "leaf), as one value, a pytree prefix of the params, or a callable "
                "(path, leaf) -> DimensionNumbers | None."
            )
    return out
