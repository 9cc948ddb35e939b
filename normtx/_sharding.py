"""Explicit-sharding support: gather a leaf's matrix axes before matrix functions.

Under a mesh with ``AxisType.Explicit`` axes (the default of ``jax.make_mesh`` in recent JAX),
reshapes that merge sharded axes, SVDs and matmuls over sharded contracting axes are type errors.
normtx measures each matrix whole, so before slicing a leaf into matrices it replicates every axis
except (optionally) one batch axis, which stays sharded: stacked layers sharded over their layer
axis are processed where they live. Under ``Auto`` axes (GSPMD) this is a no-op and XLA decides.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = ["replicate_except"]


def replicate_except(x: jax.Array, keep: int | None = None) -> jax.Array:
    """``x`` with every explicitly sharded axis but ``keep`` replicated (no-op otherwise)."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or AxisType.Explicit not in tuple(getattr(mesh, "axis_types", ())):
        return x
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    new = tuple(s if i == keep else None for i, s in enumerate(spec))
    if new == spec:
        return x
    return jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec(*new)))
