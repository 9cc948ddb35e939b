r"""Inverse p-th roots ``A^{-1/p}`` of symmetric positive semi-definite matrices (batched).

Shampoo's preconditioners ``L^{-1/4} G R^{-1/4}`` and the polar factor
``(G Gᵀ)^{-1/2} G`` (anthology Appendix A, route 3) both need ``A^{-1/p}``. Two methods:

- ``'newton'``: the coupled Newton iteration of Iannazzo (Higham 2008, eq. 7.21; Anil et al. 2020,
  Algorithm 2), run in float32 or wider with full-precision matmuls::

      z = (1 + p) / (2 ‖A‖_F),   M₀ = z A,   X₀ = z^{1/p} I
      T = ((p + 1) I - M_k) / p,   X_{k+1} = X_k T,   M_{k+1} = T^p M_k

  The invariant ``M_k = X_k^p A`` holds throughout, every eigenvalue of ``M₀`` lies in
  ``(0, (1 + p)/2]``, and each moves monotonically to 1 (quadratically once near it), so
  ``X_k -> A^{-1/p}``. Cost: ``p + 1`` (about ``log₂ p + 2`` for large p) ``n × n`` matmuls per
  iteration; a condition number κ takes about ``log(κ) / log((1 + 1/p)^p) + 5`` iterations.
- ``'eigh'``: ``V diag(λ^{-1/p}) Vᵀ`` from a symmetric eigendecomposition (one ``eigh`` per matrix;
  on accelerators several times slower than the Newton iteration, and the fallback of it).

**Convergence.** The Newton residual is ``r_k = ‖M_k - I‖_F``. Since ``A^{-1/p} = X_k M_k^{-1/p}``
(all iterates are polynomials in ``A`` and commute), ``r_k`` bounds the relative error of ``X_k``
to first order by ``r_k / p``. Each matrix iterates until its residual reaches the rounding floor
``√n · eps``, stops improving once below 1/2 (rounding has taken over), grows beyond twice its
start (an indefinite input: the iteration diverges), or ``max_iters`` is reached; its best iterate
is kept. It has **converged** when its best residual is ``<= tol``. Matrices that did not converge
are recomputed by ``'eigh'``: the whole batch's ``eigh`` runs inside a ``lax.cond`` that is skipped
when every matrix converged, so under ``jit`` the fallback costs nothing unless it is needed.
Under ``jax.vmap`` of this function, ``lax.cond`` becomes a ``select`` and *both* branches run:
the eigh is then paid on every call (call the function on the batch instead of vmapping it).

**Ridge and scale.** Each matrix is symmetrised and divided by its largest entry ``s``
(the root is ``s^{-1/p}`` times the root of the scaled matrix), so inputs of any magnitude neither
overflow nor underflow. Then ``ε = ridge · ‖Â‖_F`` is added to the diagonal: since
``λ_max <= ‖Â‖_F``, ``cond(Â + εI) <= 1 + 1/ridge`` for every PSD input, rank-deficient ones
included. ``ridge = 0`` keeps the input as it is: a singular matrix then does not converge under
Newton, and ``'eigh'`` returns the pseudo-inverse root (eigenvalues ``<= n · eps · max|λ|`` — and
negative ones from rounding — contribute zero). The zero matrix maps to the zero matrix.

References:
  Higham, *Functions of Matrices*, SIAM 2008, ch. 7 (eq. 7.21).
  Iannazzo, *On the Newton method for the matrix p-th root*, SIAM J. Matrix Anal. Appl. 2006.
  Anil, Gupta, Koren, Regan, Singer, *Scalable Second Order Optimization for Deep Learning*,
  arXiv:2002.09018 (2020), Algorithm 2.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from normtx._numerics import compute_dtype, div_by_max, safe_div

__all__ = ["INVERSE_ROOT_METHODS", "InversePthRootInfo", "inverse_pth_root", "inverse_root_polar"]

InverseRootMethod = Literal["newton", "eigh"]
INVERSE_ROOT_METHODS: tuple[str, ...] = ("newton", "eigh")

_HIGHEST = lax.Precision.HIGHEST


class InversePthRootInfo(NamedTuple):
    """Diagnostics of ``inverse_pth_root(..., return_info=True)`` (leading axes as the batch)."""

    residual: jax.Array  # (...): best Newton residual ‖M - I‖_F (0 for method='eigh')
    newton_converged: jax.Array  # (...) bool: residual <= tol (False for method='eigh')
    iterations: jax.Array  # int32 scalar: Newton iterations run on the batch (0 for 'eigh')


def _check_args(a, p, method, ridge, max_iters, tol) -> int:
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"inverse_pth_root: expected square matrices of shape (..., n, n), got {a.shape}."
        )
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"inverse_pth_root: expected a real floating array, got {a.dtype}.")
    try:
        p_int = operator.index(p)
    except TypeError:
        p_int = int(p) if isinstance(p, float) and float(p).is_integer() else 0
    if p_int < 1:
        raise ValueError(f"inverse_pth_root: p must be a positive integer, got {p!r}.")
    if method not in INVERSE_ROOT_METHODS:
        raise ValueError(
            f"inverse_pth_root: unknown method {method!r}; expected one of {INVERSE_ROOT_METHODS}."
        )
    if hasattr(ridge, "dtype") and not isinstance(ridge, (int, float)):
        if jnp.ndim(ridge) != 0:  # a scalar array (traced under optax.inject_hyperparams) passes
            raise ValueError(f"inverse_pth_root: ridge must be a scalar, got shape {ridge.shape}.")
    elif not (isinstance(ridge, (int, float)) and ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"inverse_pth_root: ridge must be a finite number >= 0, got {ridge!r}.")
    if operator.index(max_iters) < 1:
        raise ValueError(f"inverse_pth_root: max_iters must be >= 1, got {max_iters!r}.")
    if tol is not None and not 0 <= float(tol) < math.inf:  # NaN fails too
        raise ValueError(f"inverse_pth_root: tol must be a finite number >= 0, got {tol!r}.")
    return p_int


def _matmul(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.matmul(x, y, precision=_HIGHEST)


def _matrix_power(x: jax.Array, p: int) -> jax.Array:
    """``x^p`` for a static integer ``p >= 1`` by repeated squaring."""
    result, base = None, x
    while True:
        if p & 1:
            result = base if result is None else _matmul(result, base)
        p >>= 1
        if not p:
            return result
        base = _matmul(base, base)


def _fro(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1)))


def _newton(a: jax.Array, p: int, max_iters: int, tol: float):
    """Coupled Newton on ``a`` (``(..., n, n)``, symmetric positive definite, ``max|a| <= 1``)."""
    n = a.shape[-1]
    eye = jnp.eye(n, dtype=a.dtype)
    z = safe_div(jnp.asarray(1.0 + p, a.dtype), 2.0 * _fro(a))[..., None, None]
    m0 = z * a
    x0 = jnp.broadcast_to(z ** (1.0 / p) * eye, a.shape)
    r0 = _fro(m0 - eye)
    floor = math.sqrt(n) * float(jnp.finfo(a.dtype).eps)

    def cond(state):
        k, _, _, _, _, active = state
        return (k < max_iters) & jnp.any(active)

    def body(state):
        k, m, x, best_x, best_r, active = state
        t = ((p + 1.0) * eye - m) / p
        x_new = _matmul(x, t)
        m_new = _matmul(_matrix_power(t, p), m)
        r_new = _fro(m_new - eye)
        ok = jnp.isfinite(r_new)
        better = active & ok & (r_new < best_r)
        stalled = (r_new >= best_r) & (best_r < 0.5)
        diverged = ~ok | (r_new > 2.0 * jnp.maximum(r0, 1.0))
        still = active & ~stalled & ~diverged & (r_new > floor)
        keep = active[..., None, None] & ok[..., None, None]
        return (
            k + 1,
            jnp.where(keep, m_new, m),
            jnp.where(keep, x_new, x),
            jnp.where(better[..., None, None], x_new, best_x),
            jnp.where(better, r_new, best_r),
            still,
        )

    nonzero = jnp.any(a != 0, axis=(-2, -1))  # the zero matrix needs no iteration
    init = (jnp.zeros((), jnp.int32), m0, x0, x0, r0, nonzero)
    k, _, _, best_x, best_r, _ = lax.while_loop(cond, body, init)
    return best_x, best_r, best_r <= tol, k


def _eigh_root(a: jax.Array, p: int, eps_ridge: jax.Array) -> jax.Array:
    """``V diag((max(λ, 0) + ε)^{-1/p}) Vᵀ`` of ``a`` (PSD, no ridge in ``a``).

    With ``ε > 0`` every eigenvalue is kept: the cutoff must not see the ridge, which is below
    ``n · eps · max|λ|`` whenever ``ridge < n · eps`` (the default ``1e-6`` from ``n = 9`` in
    float32). With ``ε = 0`` eigenvalues ``<= n · eps · max|λ|`` map to 0 (pseudo-inverse root).
    """
    w, v = jnp.linalg.eigh(a, symmetrize_input=False)
    cut = a.shape[-1] * jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(w), axis=-1, keepdims=True)
    eps_ridge = eps_ridge[..., None]
    ok = (w > cut) | (eps_ridge > 0)
    w = jnp.maximum(w, 0.0) + eps_ridge  # negative eigenvalues of a PSD input are rounding
    inv_root = jnp.where(ok, jnp.where(ok, w, 1.0) ** (-1.0 / p), 0.0)
    return _matmul(v * inv_root[..., None, :], jnp.swapaxes(v, -1, -2))


def inverse_pth_root(
    a: jax.Array,
    p: int,
    *,
    method: InverseRootMethod = "newton",
    ridge: float | jax.Array = 1e-6,
    max_iters: int = 100,
    tol: float | None = None,
    return_info: bool = False,
) -> jax.Array | tuple[jax.Array, InversePthRootInfo]:
    r"""``(A + εI)^{-1/p}`` of each symmetric PSD matrix in ``a`` (shape ``(..., n, n)``).

    See the module docstring for the iteration, how convergence is judged, and the fallback.

    Args:
      a: symmetric positive semi-definite matrices; leading axes are a batch. Only the symmetric
        part ``(A + Aᵀ)/2`` is used.
      p: a positive integer (Shampoo uses 4 for each side, 2 for one side; 1 is the inverse).
      method: ``'newton'`` (coupled Newton with an ``eigh`` fallback) or ``'eigh'``.
      ridge: relative ridge: ``ε = ridge · ‖Â‖_F`` for ``Â = A / max|A|``, so that
        ``cond(Â + εI) <= 1 + 1/ridge``; ``0`` for none (then ``'eigh'`` gives the pseudo-inverse
        root of a singular matrix). A scalar array (e.g. traced) is taken as it is.
      max_iters: the most Newton iterations (the loop stops earlier, see above).
      tol: a matrix's Newton result is accepted when ``‖M - I‖_F <= tol`` (relative error about
        ``tol / p``); default ``1000 · eps`` of the compute dtype (1.2e-4 in float32).
      return_info: also return an ``InversePthRootInfo``.

    Returns:
      ``A^{-1/p}`` in the compute dtype of ``a`` (float32 or wider); with ``return_info``, the pair
      ``(root, info)``.

    Raises:
      ValueError: for non-square input, a ``p`` that is not a positive integer, an unknown method,
        a negative ridge, ``max_iters < 1``, or a negative or non-finite ``tol``.

    Example:
      Shampoo's left preconditioner ``L^{-1/4}`` (``L = G Gᵀ``); for a diagonal matrix, the
      entries' roots:

      >>> a = jnp.array([[4.0, 0.0], [0.0, 16.0]], jnp.float32)
      >>> print(np.round(normtx.linalg.inverse_pth_root(a, 4), 4))  # 4^{-1/4}, 16^{-1/4}
      [[0.7071 0.    ]
       [0.     0.5   ]]

    References:
      Higham (2008) eq. 7.21; Anil et al. (2020), Algorithm 2; anthology Appendix A.
    """
    a = jnp.asarray(a)
    p = _check_args(a, p, method, ridge, max_iters, tol)
    if tol is None:
        tol = 1000.0 * float(jnp.finfo(compute_dtype(a.dtype)).eps)
    root, info = _inverse_pth_root(a, ridge, p, method, int(max_iters), float(tol))
    return (root, info) if return_info else root


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _inverse_pth_root(
    a: jax.Array, ridge: jax.Array, p: int, method: str, max_iters: int, tol: float
) -> tuple[jax.Array, InversePthRootInfo]:
    a = a.astype(compute_dtype(a.dtype))
    ridge = jnp.asarray(ridge).astype(a.dtype)
    a = 0.5 * (a + jnp.swapaxes(a, -1, -2))
    scale = jnp.max(jnp.abs(a), axis=(-2, -1))
    a_hat = safe_div(a, scale[..., None, None])
    eps_ridge = ridge * _fro(a_hat)
    batch = a.shape[:-2]
    positive = scale > 0

    if method == "eigh":
        root = _eigh_root(a_hat, p, eps_ridge)
        info = InversePthRootInfo(
            residual=jnp.zeros(batch, a.dtype),
            newton_converged=jnp.zeros(batch, bool),
            iterations=jnp.zeros((), jnp.int32),
        )
    else:
        a_ridge = a_hat + eps_ridge[..., None, None] * jnp.eye(a.shape[-1], dtype=a.dtype)
        root, residual, converged, iterations = _newton(a_ridge, p, max_iters, tol)
        converged = converged | ~positive  # the zero matrix's root is zero either way
        root = lax.cond(
            jnp.all(converged),
            lambda: root,
            lambda: jnp.where(converged[..., None, None], root, _eigh_root(a_hat, p, eps_ridge)),
        )
        info = InversePthRootInfo(residual, converged, iterations)

    factor = jnp.where(positive, jnp.where(positive, scale, 1.0) ** (-1.0 / p), 0.0)
    root = root * factor[..., None, None]
    return root, info


def inverse_root_polar(g: jax.Array, *, ridge: float = 1e-6, max_iters: int = 100) -> jax.Array:
    r"""The polar factor by an inverse square root: ``(G Gᵀ + εI)^{-1/2} G`` on the short side.

    Anthology Appendix A, route 3: ``(G Gᵀ)^{-1/4} G (Gᵀ G)^{-1/4} = (G Gᵀ)^{-1/2} G = U Vᵀ``.
    The Gram matrix of the short side is formed from ``G / max|G|`` and rooted by
    ``inverse_pth_root(·, 2, ridge=ridge)``, so singular value σ of the scaled ``G`` maps to
    ``σ / √(σ² + ε)`` with ``ε = ridge · ‖Ĝ Ĝᵀ‖_F``: exact ``U Vᵀ`` up to that ridge for
    well-conditioned ``G``, and 0 on its null space. Forming ``G Gᵀ`` squares the condition number,
    so in float32 the result is accurate only while ``σ_min/σ_max`` is well above ``√eps ≈ 3e-4``.

    Args:
      g: matrices of shape ``(..., m, n)``.
      ridge: relative ridge of ``inverse_pth_root``.
      max_iters: Newton iterations of ``inverse_pth_root``.

    Returns:
      ``(G Gᵀ + εI)^{-1/2} G`` in ``g``'s compute dtype; zero for the zero matrix.
    """
    g = jnp.asarray(g)
    if g.ndim < 2 or not jnp.issubdtype(g.dtype, jnp.floating):
        raise ValueError(
            f"inverse_root_polar: expected float matrices (..., m, n), got {g.shape} {g.dtype}."
        )
    x = g.astype(compute_dtype(g.dtype))
    x = div_by_max(x, jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True))
    xt = jnp.swapaxes(x, -1, -2)
    if x.shape[-2] <= x.shape[-1]:
        return _matmul(inverse_pth_root(_matmul(x, xt), 2, ridge=ridge, max_iters=max_iters), x)
    return _matmul(x, inverse_pth_root(_matmul(xt, x), 2, ridge=ridge, max_iters=max_iters))
