"""Norms of whole parameter trees: the modular norm of anthology Prop. 7.

Leaves ``l`` with norms ``N_l`` and scales ``s_l > 0`` are measured by
``‖(W_l)‖ = max_l s_l N_l(W_l)`` (eq. 31). Its dual is ``Σ_l N_l†(G_l)/s_l`` and its
dualization is ``T_l = dualize_l(G_l)/s_l``, so the steepest-descent step (eq. 33, 56) is
``Δ_l = -(η/s_l) dualize_l(G_l)`` with the one global step size ``η = (1/λ) Σ_k N_k†(G_k)/s_k``.
With unit scales and ℓ∞ (= ℓ1 -> ℓ∞) on every leaf this is global sign descent (Prop. 3), with the
spectral norm on every leaf it is Prop. 5.

Leaves whose norm is ``None`` are outside the normed space: ``norm``/``dual_norm`` ignore them and
``dualize`` passes them through unchanged.
"""

from __future__ import annotations

import copy
import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from normtx._numerics import sum_widest, to_compute, widest_float
from normtx._pytree import broadcast_to_leaves, describe_leaf
from normtx.linalg import polar
from normtx.norms.base import Norm
from normtx.sharding._layout import check_mesh
from normtx.sharding._owner import map_matrices

__all__ = [
    "Entry",
    "Modular",
    "NormSpec",
    "ScaleSpec",
    "as_modular",
    "modular",
    "resolve_norms",
    "tree_dual_norm",
    "tree_norm",
]

NormSpec = Norm | Any | Callable[[str, jax.Array], Norm | None]
"""A ``Norm`` for every leaf, a pytree prefix of Norms (``None`` = no norm), or
``(path, leaf) -> Norm | None``."""

Entry = tuple[str, jax.Array, Norm]
"""``(path, array, norm)``: an array measured or dualized by the norm of the leaf at ``path``."""

ScaleSpec = float | Any | Callable[[str, jax.Array], float] | None
"""A positive scale for every leaf, a pytree prefix of scales, or ``(path, leaf) -> scale``."""


def _is_norm(x) -> bool:
    return isinstance(x, Norm)


def _is_scale(x) -> bool:
    return isinstance(x, numbers.Real) or (hasattr(x, "shape") and jnp.ndim(x) == 0)


def resolve_norms(
    spec: NormSpec, tree: Any, *, what: str = "normtx"
) -> list[tuple[str, Any, Norm | None]]:
    """``[(path, leaf, norm_or_None), ...]`` for every leaf of ``tree``, each checked on its leaf.

    Raises ``ValueError`` naming the path, shape and dtype of any leaf its norm cannot measure, and
    for a spec tree that does not match ``tree``.
    """
    triples = broadcast_to_leaves(
        spec, tree, is_value=_is_norm, what=what, expected="normtx Norm objects"
    )
    for path, leaf, norm in triples:
        if norm is not None:
            try:
                norm.check_leaf(leaf, path)
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None
    return triples


def _resolve_scales(scales: ScaleSpec, tree: Any, what: str) -> list[Any]:
    if scales is None:
        return [1.0] * len(jax.tree_util.tree_leaves(tree))
    triples = broadcast_to_leaves(
        scales, tree, is_value=_is_scale, what=what, expected="positive scales"
    )
    out = []
    for path, leaf, s in triples:
        if isinstance(s, numbers.Real) and not s > 0:
            raise ValueError(
                f"{what}: scale {s!r} for leaf {describe_leaf(path, leaf)} must be > 0."
            )
        out.append(1.0 if s is None else s)
    return out


class Modular:
    """The modular norm ``max_l s_l N_l(W_l)`` over a whole tree (anthology Prop. 7, eq. 31).

    Args:
      norms: a ``Norm`` for every leaf, a pytree prefix of Norms (``None``: the leaf is not normed),
        or a callable ``(path, leaf) -> Norm | None``; ``path`` is the ``/``-joined key path.
      scales: the ``s_l > 0``: one number, a pytree prefix, a callable, or ``None`` (all 1).
      mesh: ``None``, or a ``jax.sharding.Mesh`` over whose devices the polar factors of the
        spectral-family leaves (``Schatten`` at p = ∞: spectral, RMS -> RMS) are computed, all
        leaves together, by the owner-device strategy of ``normtx.sharding`` (``dual_norm``,
        ``dualize``, ``duals_and_directions``).

    ``norm``, ``dual_norm`` and ``dualize`` take whole trees.

    Example:
      ``W = diag(3, 1)`` under RMS -> RMS (square: the spectral norm 3, dual the nuclear norm
      ``tr Σ = 4``, ``dualize = U Vᵀ = I``) with scale 1, and ``b = (0.5, -0.5)`` under RMS
      (``rms(b) = 0.5``, dual ``√2 ‖b‖₂ = 1``, ``dualize = b/rms(b)``) with scale 2:

      >>> mod = norms.modular({"w": norms.rms_to_rms(), "b": norms.rms()},
      ...                     scales={"w": 1.0, "b": 2.0})
      >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]], jnp.float32),
      ...          "b": jnp.array([0.5, -0.5], jnp.float32)}
      >>> print(f"{float(jax.jit(mod.dual_norm)(grads)):.4f}")  # Σ_l N_l†(G_l)/s_l = 4 + 1/2
      4.5000
      >>> print(f"{float(jax.jit(mod.norm)(grads)):.4f}")  # max_l s_l N_l(G_l) = max(3, 2 · 0.5)
      3.0000
      >>> directions = jax.jit(mod.dualize)(grads)  # dualize_l(G_l)/s_l
      >>> print(np.round(np.asarray(directions["w"], np.float64), 4))
      [[1. 0.]
       [0. 1.]]
      >>> print(np.round(np.asarray(directions["b"], np.float64), 4))
      [ 0.5 -0.5]
    """

    def __init__(self, norms: NormSpec, scales: ScaleSpec = None, *, mesh: Mesh | None = None):
        if isinstance(scales, numbers.Real) and not scales > 0:
            raise ValueError(f"modular: scales must be > 0, got {scales!r}.")
        check_mesh(mesh, "modular")
        self.norms = norms
        self.scales = scales
        self.mesh = mesh

    def __repr__(self) -> str:
        mesh = "" if self.mesh is None else f", mesh={self.mesh!r}"
        return f"Modular(norms={self.norms!r}, scales={self.scales!r}{mesh})"

    def resolve(self, tree: Any, what: str = "modular") -> list[tuple[str, Any, Norm | None, Any]]:
        """``[(path, leaf, norm, scale), ...]`` for every leaf, validated."""
        triples = resolve_norms(self.norms, tree, what=what)
        scales = _resolve_scales(self.scales, tree, what)
        return [(p, x, n, s) for (p, x, n), s in zip(triples, scales, strict=True)]

    def norm(self, tree: Any) -> jax.Array:
        """``max_l s_l N_l(W_l)`` (eq. 31); 0 for a tree without normed leaves."""
        vals = [(n.norm(x), s) for _, x, n, s in self.resolve(tree) if n is not None]
        vals = [_like(s, v) * v for v, s in vals]
        dtype = widest_float(*(v.dtype for v in vals))
        return jnp.max(jnp.stack([v.astype(dtype) for v in vals])) if vals else jnp.zeros((), dtype)

    def dual_norm(self, tree: Any) -> jax.Array:
        """``Σ_l N_l†(G_l) / s_l`` (eq. 56 without the 1/λ)."""
        entries = [(p, x, n, s) for p, x, n, s in self.resolve(tree) if n is not None]
        duals = self.leaf_dual_norms([e[:3] for e in entries])
        return sum_widest(d / _like(e[3], d) for d, e in zip(duals, entries, strict=True))

    def leaf_dual_norms(self, entries: Sequence[Entry]) -> list[jax.Array]:
        """``N_l†(x_l)`` for ``(path, x, norm)`` entries (computed as ``measure`` of
        ``leaf_duals_and_directions``: polar factors stacked by shape)."""
        return self.leaf_duals_and_directions([], measure=entries)[2]

    def leaf_duals_and_directions(
        self, entries: Sequence[Entry], *, measure: Sequence[Entry] = ()
    ) -> tuple[list[jax.Array], list[jax.Array], list[jax.Array]]:
        """Per entry ``(N_l†(x_l), dualize_l(x_l))``, and ``N_k†(y_k)`` of the ``measure`` entries.

        Unscaled (no ``s_l``), in the compute dtype, directions in their leaf's shape. One
        decomposition serves both: a polar factor's dual is read off the direction,
        ``<x, dualize(x)> = ‖x‖†`` (Prop. 1), every other norm's is its closed form.
        The polar factors of the spectral family (``Norm._polar_plan``) of the entries and of the
        measured arrays are computed together, one Newton–Schulz program per matrix shape (on its
        owner devices under a mesh): a step-size rule that measures the raw gradient while the
        direction dualizes the momentum (``escape_velocity_lr`` over ``modular_descent``) thus
        runs one iteration per shape for both. Every other norm is elementwise work and a few
        reductions, computed leaf by leaf: stacking those leaves would save no program and make
        XLA compute every stack once for each of its leaves.
        """
        rows = [(p, x, n, True) for p, x, n in entries] + [(p, x, n, False) for p, x, n in measure]
        polars, polar_duals = self._polar_directions(rows)
        duals: list[Any] = [None] * len(rows)
        directions: list[Any] = [None] * len(rows)
        for i, (path, x, n, want) in enumerate(rows):
            x = to_compute(x)
            if i in polar_duals:
                directions[i], duals[i] = polars.get(i), polar_duals[i]
            else:
                # The norm's own closed-form dual: its reductions are the direction's (XLA computes
                # them once), where <x, dualize(x)> would be one more pass over the leaf.
                sl, inverse = n._slices(x, path)
                duals[i] = jnp.sum(n._duals(sl))
                if want:
                    directions[i] = inverse(n._directions(sl))
        k = len(entries)
        return duals[:k], directions[:k], duals[k:]

    def _polar_directions(self, rows: Sequence[tuple[str, Any, Norm | None, bool]]):
        """``({i: polar(x_i)/f_i}, {i: <x_i, polar(x_i)>/f_i})`` (compute dtype, leaf shape) for
        the rows ``(path, x, norm, want)`` whose norm dualizes by a polar factor
        (``Norm._polar_plan``), stacked by matrix shape; directions only where ``want``."""
        fns: dict[Any, Callable] = {}
        items, factors, keep = [], {}, []
        for i, (path, x, n, want) in enumerate(rows):
            plan = None if n is None else n._polar_plan(tuple(x.shape), path)
            if plan is not None:
                dims, method, factors[i] = plan
                fn = fns.setdefault(method, functools.partial(polar, method=method))
                items.append((path, to_compute(x), dims, fn))
                keep.append(want)
        outs, inners = map_matrices(
            items, turn=_turn_tall_matrices(self.mesh), mesh=self.mesh, inner=True, keep=keep
        )
        directions = {
            i: p / factors[i] for i, p in zip(factors, outs, strict=True) if p is not None
        }
        duals = {i: d / factors[i] for i, d in zip(factors, inners, strict=True)}
        return directions, duals

    def dualize(self, tree: Any) -> Any:
        """``T_l = dualize_l(G_l) / s_l``: the unit-modular-norm tree best aligned with ``tree``."""
        _, directions = self.duals_and_directions(tree)
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        out = [
            g if t is None else t.astype(g.dtype) for g, t in zip(leaves, directions, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    def duals_and_directions(
        self, tree: Any, what: str = "modular"
    ) -> tuple[list[jax.Array | None], list[jax.Array | None]]:
        """Per leaf ``N_l†(G_l)/s_l`` and ``dualize_l(G_l)/s_l`` (compute dtype); ``None``: no norm.

        ``leaf_duals_and_directions`` over the normed leaves, divided by their scales.
        """
        resolved = self.resolve(tree, what)
        normed = [(p, g, n) for p, g, n, _ in resolved if n is not None]
        pairs = iter(zip(*self.leaf_duals_and_directions(normed)[:2], strict=True))
        duals, directions = [], []
        for _, _, n, s in resolved:
            d, t = (None, None) if n is None else next(pairs)
            duals.append(None if d is None else d / _like(s, d))
            directions.append(None if t is None else t / _like(s, t))
        return duals, directions


def _turn_tall_matrices(mesh: Mesh | None) -> bool:
    """Whether tall matrices are turned to share a stack with wide ones (``(a, b)`` with
    ``(b, a)``: one program for a layer's up and down projections): on accelerators and over a
    mesh, where fewer, larger batched iterations pay. On CPU a stack runs as a loop over its
    matrices anyway (``normtx.linalg.newton_schulz``), so the stacks keep every matrix as it is
    and give, to the bit, what the leaves give one by one."""
    return mesh is not None or jax.default_backend() != "cpu"


def _like(s: Any, x: jax.Array) -> jax.Array:
    """The scale ``s`` in ``x``'s dtype: a float64 array scale does not promote ``x``."""
    return jnp.asarray(s).astype(x.dtype)


def as_modular(norm: NormSpec | Modular, mesh: Mesh | None = None) -> Modular:
    """``norm`` itself if it already is a ``Modular`` (with its scales), else ``Modular(norm)``;
    with ``mesh``, a copy that computes its polar factors over that mesh."""
    if not isinstance(norm, Modular):
        return Modular(norm, mesh=mesh)
    if mesh is None or mesh is norm.mesh:
        return norm
    if norm.mesh is not None:
        raise ValueError(
            f"the modular norm already distributes its polar factors over {norm.mesh!r}; "
            f"give the mesh once (got also {mesh!r})."
        )
    check_mesh(mesh, "modular")
    out = copy.copy(norm)
    out.mesh = mesh
    return out


def modular(norms: NormSpec, scales: ScaleSpec = None, *, mesh: Mesh | None = None) -> Modular:
    """The modular norm ``max_l s_l N_l(W_l)`` of anthology Prop. 7 (see ``Modular``)."""
    return Modular(norms, scales, mesh=mesh)


def tree_norm(norms: NormSpec, tree: Any) -> jax.Array:
    """``max_l N_l(W_l)``: the whole tree under the max-combined norm (Prop. 3 / Prop. 7, s_l = 1)."""
    return Modular(norms).norm(tree)


def tree_dual_norm(norms: NormSpec, grads: Any) -> jax.Array:
    """``Σ_l N_l†(G_l)``: the dual of the max-combined norm (Prop. 7 with unit scales)."""
    return Modular(norms).dual_norm(grads)
