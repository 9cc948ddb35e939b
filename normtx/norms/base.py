"""The ``Norm`` interface: ``norm``, ``dual_norm`` and ``dualize`` on one array leaf.

A norm acts on *slices* of a leaf: a vector norm on the whole leaf (or on each slice along its
``batch_axes``), an operator norm on each matrix ``(d_in, d_out)`` picked out by its dimension
numbers. The leaf's norm is the max over slices and its dual the sum: a stack of
matrices is measured like a small modular norm with unit scales (anthology Prop. 7).

Subclasses implement three per-slice kernels on an array ``S`` of shape ``(B, ...)`` in the compute
dtype (float32 or wider): ``_norms(S)`` and ``_duals(S)`` of shape ``(B,)``, and ``_directions(S)``
of the shape of ``S`` with ``_directions(S) = argmax_{‖T‖<=1} <S, T>`` slice by slice.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from normtx._numerics import compute_dtype
from normtx._pytree import describe_leaf

__all__ = ["Norm"]

Inverse = Callable[[jax.Array], jax.Array]
PolarPlan = tuple[Any, Any, float]
"""``(DimensionNumbers, polar method, factor)``: see ``Norm._polar_plan``."""


@dataclasses.dataclass(frozen=True)
class Norm(abc.ABC):
    """A norm on one array leaf, with its dual norm and its dualization map.

    For a leaf ``x`` and a gradient ``g`` of the same shape:

    - ``norm(x)``: ``‖x‖``;
    - ``dual_norm(g)``: ``‖g‖† = max_{‖t‖<=1} <g, t>``;
    - ``dualize(g)``: ``argmax_{‖t‖<=1} <g, t>``, so that ``<g, dualize(g)> = ‖g‖†`` and
      ``‖dualize(g)‖ = 1`` for ``g != 0``; ``dualize(0) = 0`` and never NaN.

    Steepest descent under the norm with sharpness λ steps by ``-(‖g‖†/λ) dualize(g)``
    (anthology Prop. 1). Norms are frozen dataclasses: hashable, usable as static arguments of
    ``jax.jit``, and safe to close over in transforms.
    """

    # ---- what subclasses provide -------------------------------------------------------------
    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short name for tables (``'rms_to_rms'``, ``'lp(3)'``)."""

    @abc.abstractmethod
    def _slices(self, x: jax.Array, path: str) -> tuple[jax.Array, Inverse]:
        """Reshapes ``x`` to ``(B, ...)`` slices; returns them and the inverse reshape."""

    @abc.abstractmethod
    def _norms(self, s: jax.Array) -> jax.Array:
        """Per-slice norms, shape ``(B,)``."""

    @abc.abstractmethod
    def _duals(self, s: jax.Array) -> jax.Array:
        """Per-slice dual norms, shape ``(B,)``."""

    @abc.abstractmethod
    def _directions(self, s: jax.Array) -> jax.Array:
        """Per-slice dualization ``argmax_{‖t‖<=1} <s, t>``, same shape as ``s``."""

    # ---- the public surface ------------------------------------------------------------------
    def check_leaf(self, leaf, path: str = "<leaf>") -> None:
        """Raises ``ValueError`` (naming path, shape, dtype) if this norm cannot measure ``leaf``."""
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"norm {self.name}: leaf {describe_leaf(path, leaf)} is not a real "
                "floating-point array; normtx norms measure float16/bfloat16/float32/"
                "float64 leaves."
            )
        if 0 in tuple(leaf.shape):
            raise ValueError(f"norm {self.name}: leaf {describe_leaf(path, leaf)} is empty.")
        self._check_shape(tuple(leaf.shape), path)

    def _check_shape(self, shape: tuple[int, ...], path: str) -> None:  # noqa: B027
        """Shape-specific validation; subclasses override (the default accepts every shape)."""

    def _polar_plan(self, shape: tuple[int, ...], path: str) -> PolarPlan | None:
        """``(dims, method, factor)`` if ``dualize`` maps each matrix ``S`` (as ``dims`` slice the
        leaf) to ``polar(S, method=method) / factor``; ``None`` for every other norm.

        A ``normtx.norms.Modular`` with a mesh computes these polar factors for all its leaves
        together, by the owner-device strategy of ``normtx.sharding``.
        """
        del shape, path
        return None

    def _prepare(self, x: jax.Array, path: str) -> tuple[jax.Array, Inverse]:
        x = jnp.asarray(x)
        self.check_leaf(x, path)
        return self._slices(x.astype(compute_dtype(x.dtype)), path)

    def norm(self, x: jax.Array) -> jax.Array:
        """``‖x‖``: the max over slices (a scalar in float32 or wider)."""
        s, _ = self._prepare(x, "<leaf>")
        return jnp.max(self._norms(s))

    def dual_norm(self, g: jax.Array) -> jax.Array:
        """``‖g‖† = max_{‖t‖<=1} <g, t>``: the sum over slices."""
        s, _ = self._prepare(g, "<leaf>")
        return jnp.sum(self._duals(s))

    def dualize(self, g: jax.Array) -> jax.Array:
        """``argmax_{‖t‖<=1} <g, t>`` in ``g``'s dtype (0 for ``g = 0``)."""
        g = jnp.asarray(g)
        s, inverse = self._prepare(g, "<leaf>")
        return inverse(self._directions(s)).astype(g.dtype)

    def dual_and_dualize(self, g: jax.Array, path: str = "<leaf>") -> tuple[jax.Array, jax.Array]:
        """``(<g, t>, t)`` with ``t = dualize(g)`` from one decomposition.

        ``<g, dualize(g)> = ‖g‖†`` (Prop. 1), so the transforms take the dual norm from the direction
        they already computed instead of decomposing ``g`` twice. When ``dualize`` is approximate
        (a Newton–Schulz polar factor) this is the linear decrease the step actually makes. ``t`` is
        returned in the compute dtype (float32 or wider); callers cast after scaling.
        """
        s, inverse = self._prepare(g, path)
        t = self._directions(s)
        return jnp.sum(s * t), inverse(t)
