"""One per-matrix function over the matrices of many leaves: stacked, and optionally distributed.

``map_matrices`` slices every leaf into its matrices (``normtx.dims.as_matrices``), turns tall
matrices to put the short side first, stacks the matrices that share a function, a shape and a
dtype, calls the function once per stack and puts each result back in its leaf's shape. With a
``mesh`` it uses the owner-device strategy of ``normtx.sharding``: the stack is padded to a
multiple of the mesh size, its stack axis is sharded over every device, each device applies the
function to its own matrices (``jax.shard_map``), and every result goes back to its leaf's layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from normtx.dims import DimensionNumbers, as_matrices, matrix_layout
from normtx.sharding import _layout as _sharding

__all__ = ["map_matrices"]

Item = tuple[str, jax.Array, DimensionNumbers, Callable[[jax.Array], jax.Array]]
"""``(path, leaf, dims, fn)``: apply ``fn`` to every matrix of ``leaf`` as ``dims`` slices it."""


def map_matrices(
    items: Sequence[Item],
    *,
    batch: bool = True,
    turn: bool = True,
    mesh: Mesh | None = None,
    inner: bool = False,
    keep: Sequence[bool] | None = None,
) -> Any:
    """``fn`` applied to every matrix of every leaf; each result has its leaf's shape.

    ``fn`` maps a stack ``(N, m, n)`` to a stack of the same shape, one matrix at a time, and
    commutes with transposition (``fn(Gᵀ) = fn(G)ᵀ``, as polar factors do): tall matrices are
    transposed first (``m <= n`` in every stack) so that ``(a, b)`` and ``(b, a)`` kernels share a
    stack. Items are stacked when they have the same ``fn`` object, matrix shape and dtype (and,
    under explicit sharding, layout); ``batch=False`` calls ``fn`` once per leaf, on its matrices as
    they are; ``turn=False`` stacks without turning tall matrices (each matrix is computed as it
    is, so a stack gives what its leaves give one by one). With ``mesh`` every stack is computed
    by the owner strategy (module docstring); results are then laid out like their leaves under
    explicit sharding, and wherever XLA puts them under ``Auto`` axes.

    ``inner=True`` also returns, per item, ``Σ <M, fn(M)>`` over its matrices (a polar factor's
    dual norm), computed on each stack at once: ``(results, inners)``. ``keep[i] = False`` skips
    item ``i``'s results (``None``): no part of the stack is cut out for it and put back in its
    leaf's shape, work XLA compiles once per leaf.
    """
    slices, groups = [], {}
    for i, (path, x, dims, fn) in enumerate(items):
        owner_mesh = _check_mesh(path, x, mesh) if mesh is not None else None
        m, inverse = _as_matrices(x, dims, owner_mesh)
        tall = batch and turn and m.shape[1] > m.shape[2]  # turned to share a stack with wide ones
        m = jnp.swapaxes(m, 1, 2) if tall else m
        slices.append((m, inverse, tall))
        key = (fn, m.shape[1:], m.dtype, _sharding.explicit_spec(m)) if batch else i
        groups.setdefault(key, []).append(i)
    outs: list[Any] = [None] * len(items)
    inners: list[Any] = [None] * len(items)
    for members in groups.values():
        fn = items[members[0]][3]
        stack = jnp.concatenate([slices[i][0] for i in members], axis=0)
        result = fn(stack) if mesh is None else _owner(fn, stack, mesh)
        bounds = np.cumsum([0] + [slices[i][0].shape[0] for i in members])
        if inner:
            sums = jnp.sum(stack.astype(result.dtype) * result, axis=(1, 2))
        for i, lo, hi in zip(members, bounds[:-1], bounds[1:], strict=True):
            if inner:
                inners[i] = jnp.sum(sums[lo:hi])
            if keep is None or keep[i]:
                _, inverse, tall = slices[i]
                part = result[lo:hi]
                outs[i] = inverse(jnp.swapaxes(part, 1, 2) if tall else part)
    return (outs, inners) if inner else outs


def _check_mesh(path: str, x: jax.Array, mesh: Mesh):
    """The mesh to compute on: ``x``'s own (abstract) mesh under explicit axes, else ``mesh``."""
    own = _sharding.explicit_mesh(x)
    if own is None:
        return None
    if tuple(own.axis_names) != tuple(mesh.axis_names) or tuple(own.axis_sizes) != tuple(
        mesh.axis_sizes
    ):
        raise ValueError(
            f"leaf {path!r} is sharded over the mesh {dict(zip(own.axis_names, own.axis_sizes))}, "
            f"but the polar factors were asked to be distributed over "
            f"{dict(zip(mesh.axis_names, mesh.axis_sizes))}; pass the mesh the params live on."
        )
    return own


def _as_matrices(x: jax.Array, dims: DimensionNumbers, owner_mesh):
    """``as_matrices``; under explicit axes (``owner_mesh``) without gathering whole matrices."""
    if owner_mesh is None:
        return as_matrices(x, dims)
    fan_in, fan_out = tuple(dims.fan_in_axes), tuple(dims.fan_out_axes)
    lay = matrix_layout(x.shape, (fan_in, fan_out))
    spec = _sharding.explicit_spec(x)
    sizes = dict(zip(owner_mesh.axis_names, owner_mesh.axis_sizes, strict=True))
    target, merged = _sharding.matrix_entries(x.shape, spec, lay.batch, fan_in, fan_out, sizes)

    def layout(entries):
        return NamedSharding(owner_mesh, _sharding.pspec(entries))

    m = _sharding.reshard(x, target).transpose(lay.perm)
    m = m.reshape(lay.flat_shape, out_sharding=layout(merged))

    def inverse(r: jax.Array) -> jax.Array:
        r = r.reshape(lay.moved_shape, out_sharding=layout([target[a] for a in lay.perm]))
        return _sharding.reshard(r.transpose(lay.inv_perm), spec)

    return m, inverse


def _owner(fn: Callable[[jax.Array], jax.Array], stack: jax.Array, mesh: Mesh) -> jax.Array:
    """``fn`` on a stack padded to a multiple of the mesh size, each device on its own slice."""
    n = stack.shape[0]
    pad = -n % mesh.size
    if pad:
        stack = jnp.concatenate([stack, _sharding.zeros_like_layout(stack, pad)], axis=0)
    own = _sharding.explicit_mesh(stack)
    if own is None:
        # Leaves without an explicit layout (Auto axes, or not placed on any mesh): the stack is
        # constrained to the owner layout and XLA moves the data. A constraint may only name Auto
        # axes, so an explicit-axes mesh (``jax.make_mesh``'s default) is used as its Auto twin:
        # the same devices and names.
        mesh = _auto(mesh)
        axes = tuple(mesh.axis_names)
        spec = PartitionSpec(axes)
        stack = jax.lax.with_sharding_constraint(stack, NamedSharding(mesh, spec))
        return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec)(stack)[:n]
    stack, axes, back = _sharding.to_owner(stack, own.axis_names)
    spec = PartitionSpec(axes)
    return back(jax.shard_map(fn, mesh=own, in_specs=spec, out_specs=spec)(stack))[:n]


def _auto(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis ``AxisType.Auto`` (itself if they all are)."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
