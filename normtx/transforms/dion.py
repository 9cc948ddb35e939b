r"""``orthogonalize_dion``: low-rank orthonormal updates with error feedback (Dion, centralized).

Dion (Ahn, Xu, Abreu & Langford, 2025, Algorithm 1) replaces Muon's full polar factor by a rank-``r``
one computed from one warm-started power-iteration step, and keeps what the rank-``r`` part missed
in the momentum (error feedback). In the paper's layout ``X ∈ R^{m×n}`` (``m = d_out`` rows,
PyTorch's ``(out, in)``), with ``Q_0 ∈ R^{n×r}`` random and ``M_0 = 0``, each step is::

    B_t = M_{t-1} + G_t
    P_t = Orthogonalize(B_t Q_{t-1})            (PowerIter1: one power-iteration step, QR)
    R_t = B_tᵀ P_t                               (so that B_t ≈ P_t R_tᵀ)
    M_t = B_t - (1 - μ) P_t R_tᵀ                 (= μ B_t + (1 - μ)(B_t - P_t R_tᵀ))
    Q_t = ColumnNormalize(R_t)
    X_t = X_{t-1} - η √(m/n) P_t Q_tᵀ

A Flax kernel is ``K = Xᵀ`` (``(d_in, d_out)``), so here ``Q`` is ``(d_in, r)``, ``P`` is
``(d_out, r)`` and the direction is ``Q_t P_tᵀ`` (times the ``scale``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normtx._numerics import compute_dtype, div_by_max, safe_div
from normtx._pytree import check_state_shape, flatten_state_field
from normtx._validation import check_prng_key, check_probability, check_static
from normtx.adaptive._leaves import DimsSpec, matrix_shape
from normtx.dims import as_matrices
from normtx.transforms.neuron_norm import matrix_leaves
from normtx.transforms.orthogonalize import Scale, _scale_factor, check_scale

__all__ = ["OrthogonalizeDionState", "dion_rank", "orthogonalize_dion"]

_HI = jax.lax.Precision.HIGHEST


class OrthogonalizeDionState(NamedTuple):
    """State of ``orthogonalize_dion``; ``momentum`` and ``q`` have the params' tree structure."""

    momentum: Any  # per leaf: M, the momentum with error feedback (leaf shape, float32 or wider)
    q: Any  # per leaf: Q, the warm start of the power iteration, (batch, d_in, r), float32+


def dion_rank(rank_fraction: float, d_in: int, d_out: int) -> int:
    """``r = ceil(rank_fraction · min(d_in, d_out))``, at least 1.

    The product is rounded to 9 decimals first: in binary ``0.1 · 30`` is ``3.0000000000000004``,
    whose ceiling would be 4.
    """
    return max(1, math.ceil(round(rank_fraction * min(d_in, d_out), 9)))


def _dion_step(b, q, mu):
    """One step of Algorithm 1 on ``B`` (``(batch, d_in, d_out)``, Flax layout) from ``Q``.

    Returns ``(direction Q_t P_tᵀ, M_t, Q_t)``. ``B`` enters the power iteration divided by its
    largest entry (``P_t`` and ``Q_t`` do not depend on its scale), so huge gradients do not
    overflow the products.
    """
    s = jnp.max(jnp.abs(b), axis=(1, 2), keepdims=True)
    bs = div_by_max(b, s)
    p, _ = jnp.linalg.qr(jnp.matmul(jnp.swapaxes(bs, 1, 2), q, precision=_HI))  # (batch, d_out, r)
    r = jnp.matmul(bs, p, precision=_HI)  # R_t / s, (batch, d_in, r)
    norms = jnp.sqrt(jnp.sum(jnp.square(r), axis=1, keepdims=True))
    q_new = safe_div(r, norms)  # a zero column of R stays zero in the direction ...
    direction = jnp.matmul(q_new, jnp.swapaxes(p, 1, 2), precision=_HI)
    residual = bs - (1 - mu) * jnp.matmul(r, jnp.swapaxes(p, 1, 2), precision=_HI)
    # ... and keeps its previous column as the warm start (a zero gradient does not erase Q).
    return direction, s * residual, jnp.where(norms > 0, q_new, q)


def orthogonalize_dion(
    *,
    key: jax.Array,
    rank_fraction: float = 1.0,
    mu: float = 0.95,
    scale: Scale = "rms_to_rms",
    dimension_numbers: DimsSpec = None,
) -> optax.GradientTransformation:
    r"""Dion: a rank-``r`` orthonormal direction ``P_t Q_tᵀ`` per matrix, with error feedback.

    Takes the raw gradient (the momentum and its error feedback are part of the method) and
    returns, for every matrix of every leaf, ``s · Q_t P_tᵀ`` in the Flax layout — the transpose
    of the paper's ``√(m/n) P_t Q_tᵀ`` (module docstring; Ahn et al. 2025, Algorithm 1 and its
    PowerIter1). ``P_t`` has orthonormal columns (QR of ``B_t Q_{t-1}``) and ``Q_t`` unit
    columns, so the direction has rank ``r`` and spectral norm about 1; ``r = ceil(rank_fraction
    · min(d_in, d_out))``.

    **Full rank.** With ``rank_fraction=1`` and a generic ``Q_{t-1}``, ``P_t`` spans the column
    space of ``B_t`` in the paper's layout, so ``P_t R_tᵀ = P_t P_tᵀ B_t = B_t``: the error feedback
    is exact for every ``μ`` (``M_t = μ B_t``). The direction is ``P_t D_t^{-1} P_tᵀ B_t`` with
    ``D_t`` the column norms of ``R_t``; it is the polar factor ``U Vᵀ`` of ``B_t`` exactly when
    the columns of ``R_t`` are orthogonal, i.e. when ``P_t`` is made of left singular vectors —
    for instance when the warm start is ``Q_{t-1} = V`` (the right singular vectors of ``B_t``;
    any ``Q_{t-1}`` with ``Vᵀ Q_{t-1}`` upper triangular). With ``μ = 0`` and a fixed gradient,
    successive steps are the orthogonal (subspace) iteration on ``B Bᵀ``, and the direction
    converges to ``U Vᵀ`` (at the rate of the ratios of consecutive singular values).

    Zero gradients give zero directions (never NaN) and leave ``Q`` as it was.

    Args:
      key: the PRNG key that draws ``Q_0 ~ N(0, 1)`` (each leaf folds in its index).
      rank_fraction: in ``(0, 1]``; ``r = ceil(rank_fraction · min(d_in, d_out))``. Structural
        (it fixes ``Q``'s shape): under ``optax.inject_hyperparams`` list it in ``static_args``.
      mu: ``μ`` in ``[0, 1)``, the momentum decay (the error feedback keeps ``(1 - μ)`` of the
        captured part out of the momentum).
      scale: ``'rms_to_rms'`` (default, the paper's ``√(d_out/d_in)``), ``'spectral'`` (``1``),
        ``'muon'`` (``√max(1, d_out/d_in)``) or a positive number.
      dimension_numbers: ``normtx.dims.DimensionNumbers`` for leaves of rank > 2 (each batch
        slice of a conv kernel or a scanned stack is its own matrix, with its own ``Q``).

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction (end the chain with
      ``optax.scale_by_learning_rate``; decoupled weight decay goes between them). State:
      ``OrthogonalizeDionState``: ``M`` (``d_in·d_out`` floats per matrix) and ``Q``
      (``d_in·r``). Each leaf keeps its dtype.

    Raises:
      ValueError: at construction for bad hyperparameters; at ``init`` for a leaf that is not a
        non-empty float matrix (a bias, an integer leaf, rank > 2 without dimension numbers),
        naming its path, shape and dtype.

    Example:
      Dion on the kernels, the raw gradient elsewhere. An ``8 × 8`` kernel with
      ``rank_fraction=0.25`` gets a rank-2 direction ``Q Pᵀ`` (``s = 1``): ``‖Q Pᵀ‖_F² =
      tr(QᵀQ) = 2`` for unit columns ``Q`` and orthonormal ``P``.

      >>> tx = optax.chain(
      ...     optax.masked(normtx.orthogonalize_dion(rank_fraction=0.25, key=jax.random.key(0)),
      ...                  lambda p: jax.tree.map(lambda x: x.ndim == 2, p)),
      ...     optax.scale_by_learning_rate(0.01))
      >>> params = {"kernel": jnp.zeros((8, 8), jnp.float32), "bias": jnp.zeros(8, jnp.float32)}
      >>> grads = {"kernel": jax.random.normal(jax.random.key(1), (8, 8), jnp.float32),
      ...          "bias": jnp.ones(8, jnp.float32)}
      >>> u, _ = jax.jit(tx.update)(grads, tx.init(params))
      >>> int(np.linalg.matrix_rank(np.asarray(u["kernel"], np.float64), tol=1e-6))
      2
      >>> print(f"{float(jnp.linalg.norm(u['kernel'])):.5f}")  # 0.01 · √2
      0.01414

    References:
      Ahn, Xu, Abreu & Langford, *Dion: Distributed Orthonormalized Updates*, arXiv:2504.05295
      (2025), Algorithm 1 (centralized Dion) and PowerIter1; Vogels, Karimireddy & Jaggi,
      *PowerSGD*, NeurIPS 2019 (the warm-started power iteration and error feedback).
    """
    what = "orthogonalize_dion"
    check_prng_key("key", key, what)
    check_static("rank_fraction", rank_fraction, what)
    if (
        not isinstance(rank_fraction, numbers.Real)
        or isinstance(rank_fraction, bool)
        or not 0 < rank_fraction <= 1
    ):
        raise ValueError(f"{what}: rank_fraction must be in (0, 1], got {rank_fraction!r}.")
    check_probability("mu", mu, what)
    check_scale(scale, what)

    def init_fn(params):
        moms, qs = [], []
        for i, (_, leaf, dims) in enumerate(matrix_leaves(params, dimension_numbers, what)):
            dt = compute_dtype(leaf.dtype)
            batch, d_in, d_out = matrix_shape(jnp.shape(leaf), dims)
            rank = dion_rank(rank_fraction, d_in, d_out)
            qs.append(jax.random.normal(jax.random.fold_in(key, i), (batch, d_in, rank), dt))
            moms.append(jnp.zeros(jnp.shape(leaf), dt))
        treedef = jax.tree.structure(params)
        return OrthogonalizeDionState(
            momentum=jax.tree.unflatten(treedef, moms), q=jax.tree.unflatten(treedef, qs)
        )

    def update_fn(updates, state, params=None):
        del params
        triples = matrix_leaves(updates, dimension_numbers, what)
        field = lambda f, name: flatten_state_field(updates, f, what=what, name=name)  # noqa: E731
        out, moms, qs = [], [], []
        for (path, g, dims), m, q in zip(
            triples, field(state.momentum, "momentum"), field(state.q, "q"), strict=True
        ):
            batch, d_in, d_out = matrix_shape(jnp.shape(g), dims)
            check_state_shape(what, path, g, m, jnp.shape(g), "momentum")
            rank = dion_rank(rank_fraction, d_in, d_out)
            check_state_shape(what, path, g, q, (batch, d_in, rank), "right factor q")
            b, inverse = as_matrices(m + g.astype(m.dtype), dims)
            direction, m_new, q_new = _dion_step(b, q, jnp.asarray(mu).astype(m.dtype))
            factor = jnp.asarray(_scale_factor(scale, d_in, d_out)).astype(m.dtype)
            out.append(inverse(factor * direction).astype(g.dtype))
            moms.append(inverse(m_new))
            qs.append(q_new)
        treedef = jax.tree.structure(updates)
        new_state = OrthogonalizeDionState(
            momentum=jax.tree.unflatten(treedef, moms), q=jax.tree.unflatten(treedef, qs)
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
