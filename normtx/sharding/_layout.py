"""Sharding helpers: gather a leaf's matrix axes, or move whole matrices to owner devices.

Under a mesh with ``AxisType.Explicit`` axes (the default of ``jax.make_mesh`` in recent JAX),
reshapes that merge sharded axes, SVDs and matmuls over sharded contracting axes are type errors.
normtx measures each matrix whole, so before slicing a leaf into matrices it replicates every axis
except (optionally) one batch axis, which stays sharded: stacked layers sharded over their layer
axis are processed where they live (``replicate_except``). Under ``Auto`` axes (GSPMD) this is a
no-op and XLA decides.

The owner-device strategy (``normtx.sharding``) instead stacks whole matrices and shards the stack
axis over every device of a mesh. With explicit axes the layout of every leaf is known at trace
time, so the stack is moved there one mesh axis at a time (``to_owner``): each step is an
all-to-all over one mesh axis, and no device ever holds a matrix it does not own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "Entries",
    "check_mesh",
    "explicit_mesh",
    "explicit_spec",
    "matrix_entries",
    "pspec",
    "replicate_except",
    "reshard",
    "to_owner",
    "zeros_like_layout",
]

Entries = tuple[tuple[str, ...], ...]
"""A partition spec as one tuple of mesh axis names per array axis (``()``: not sharded)."""


def _mesh_of(x: jax.Array):
    return getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)


def explicit_mesh(x: jax.Array):
    """The (abstract) mesh ``x`` is sharded over if it has explicit axes, else ``None``."""
    mesh = _mesh_of(x)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return None
    return mesh


def explicit_spec(x: jax.Array) -> Entries | None:
    """``x``'s partition spec as ``Entries`` (padded to its rank) under explicit axes, else None."""
    if explicit_mesh(x) is None:
        return None
    spec = tuple(jax.typeof(x).sharding.spec)
    spec += (None,) * (x.ndim - len(spec))
    return tuple(() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in spec)


def pspec(entries: Sequence[Sequence[str]]) -> PartitionSpec:
    """``Entries`` -> ``PartitionSpec`` (``()`` -> ``None``, one name -> the name)."""
    return PartitionSpec(*(None if not e else e[0] if len(e) == 1 else tuple(e) for e in entries))


def reshard(x: jax.Array, entries: Sequence[Sequence[str]], mesh=None) -> jax.Array:
    """``x`` resharded to ``entries`` over ``mesh`` (default: its own explicit mesh); a no-op if
    it is already laid out so."""
    if explicit_spec(x) == tuple(tuple(e) for e in entries):
        return x
    return jax.sharding.reshard(x, NamedSharding(mesh or explicit_mesh(x), pspec(entries)))


def replicate_except(x: jax.Array, keep: int | None = None) -> jax.Array:
    """``x`` with every explicitly sharded axis but ``keep`` replicated (no-op otherwise)."""
    spec = explicit_spec(x)
    if spec is None:
        return x
    return reshard(x, tuple(e if i == keep else () for i, e in enumerate(spec)))


def check_mesh(mesh, what: str) -> None:
    """Raises ``TypeError`` unless ``mesh`` is ``None`` or a ``jax.sharding.Mesh``."""
    if mesh is not None and not isinstance(mesh, Mesh):
        hint = (
            " A function here is what optax.inject_hyperparams passes for a Mesh: it takes every "
            "callable hyperparameter for a schedule, and a Mesh is callable (a context "
            "decorator); list 'mesh' in its static_args."
            if callable(mesh)
            else ""
        )
        raise TypeError(
            f"{what}: mesh must be None or a jax.sharding.Mesh (e.g. jax.make_mesh((8,), "
            f"('data',))) whose devices share the polar factors, got {mesh!r}.{hint}"
        )


def matrix_entries(
    shape: Sequence[int],
    spec: Entries,
    batch: Sequence[int],
    fan_in: Sequence[int],
    fan_out: Sequence[int],
    axis_sizes: dict[str, int],
) -> tuple[Entries, Entries]:
    """Where a leaf's shards go when it becomes a batch of matrices ``(B, d_in, d_out)``.

    Returns ``(target, merged)``: the leaf is first resharded to ``target`` (per axis of the
    leaf), after which merging each group of axes is a local reshape with spec ``merged``
    ``(B, d_in, d_out)``. A merged dimension keeps the sharding of its group's first (major) axis
    only (the other axes of the group are gathered); the batch dimension is left unsharded: its
    mesh axes move to the fan-in or fan-out dimension where they divide it (an all-to-all), or
    are gathered.
    """
    target = [()] * len(shape)
    heads = [g[0] for g in (fan_in, fan_out)]
    for head in heads:
        target[head] = spec[head]
    for name in (a for axis in batch for a in spec[axis]):
        for head in heads:
            ways = math.prod(axis_sizes[a] for a in target[head]) * axis_sizes[name]
            if shape[head] % ways == 0:
                target[head] = target[head] + (name,)
                break
    target = tuple(target)
    return target, ((), target[heads[0]], target[heads[1]])


def to_owner(
    x: jax.Array, mesh_axes: Sequence[str]
) -> tuple[jax.Array, tuple[str, ...], Callable[[jax.Array], jax.Array]]:
    """Moves a stack ``(N, m, n)`` sharded ``(-, e_m, e_n)`` to ``(all mesh axes, -, -)``.

    ``N`` must be a multiple of the mesh size. Mesh axes that do not shard ``x`` go to the stack
    axis first (a local slice), then the axes of ``e_m`` and ``e_n``, minor first, one per step
    (each an all-to-all over that axis). Returns the moved stack, the stack axis' mesh axes in
    order (the ``in_specs`` of a ``shard_map`` over it), and the inverse map for a result of the
    same layout, which retraces the steps back to ``(-, e_m, e_n)``.
    """
    spec = explicit_spec(x)
    rows, cols = list(spec[1]), list(spec[2])
    stack = tuple(a for a in mesh_axes if a not in rows + cols)
    path = [spec]
    if stack:
        path.append((stack, tuple(rows), tuple(cols)))
    for dim in (rows, cols):
        while dim:
            stack += (dim.pop(),)
            path.append((stack, tuple(rows), tuple(cols)))
    for entries in path[1:]:
        x = reshard(x, entries)

    def back(y: jax.Array) -> jax.Array:
        for entries in reversed(path[:-1]):
            y = reshard(y, entries)
        return y

    return x, stack, back


def zeros_like_layout(x: jax.Array, n: int) -> jax.Array:
    """``n`` zero matrices laid out like the stack ``x`` (for padding it)."""
    zeros = jnp.zeros((n, *x.shape[1:]), x.dtype)
    spec = explicit_spec(x)
    return zeros if spec is None else reshard(zeros, spec, explicit_mesh(x))
