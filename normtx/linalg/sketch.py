r"""Randomized rank-k polar factor ``U_k V_kᵀ`` (anthology Appendix A, route 2: sketching).

The randomized range finder of Halko, Martinsson & Tropp (2011), Algorithms 4.1/4.4 and 5.1: for
``G`` of shape ``(m, n)``, a Gaussian test matrix ``Ω`` of shape ``(n, k + p)`` (``p`` the
oversampling) and ``q`` power iterations::

    Y = G Ω,  Q = qr(Y);  repeat q times: Q = qr(G Qₙ) with Qₙ = qr(Gᵀ Q)
    B = Qᵀ G = Û Σ Vᵀ   (a small (k + p) × n SVD),   U = Q Û

and the rank-k polar factor is ``U[:, :k] V[:, :k]ᵀ``. When ``rank(G) <= k`` the range of ``G`` is
captured exactly (with probability 1) and the result is the polar factor of ``G``. Otherwise it is
the polar factor of the best rank-k approximation, up to an error that decays with the spectral gap
``σ_{k+1}/σ_k`` raised to ``2q + 1``. Cost: ``O(mn(k + p)(q + 1))`` plus QR/SVD of thin matrices —
much less than a full SVD when ``k ≪ min(m, n)``, as for low-rank gradients. Singular values of ``B``
below ``max(m, n) · eps · σ_max`` are treated as zero (the thresholded polar factor of
``normtx.linalg.svd_polar``).

References:
  Halko, Martinsson & Tropp, *Finding Structure with Randomness*, SIAM Review 53(2), 2011,
  Algorithms 4.1, 4.4, 5.1.
  Martinsson & Tropp, *Randomized numerical linear algebra*, Acta Numerica 2020.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp

from normtx._numerics import compute_dtype, div_by_max
from normtx.linalg.svd import thresholded_svd

__all__ = ["sketch_polar"]


def _check(g, key, rank, oversampling, power_iterations) -> tuple[int, int, int]:
    if g.ndim < 2:
        raise ValueError(f"sketch_polar: expected matrices (..., m, n), got shape {g.shape}.")
    if not jnp.issubdtype(g.dtype, jnp.floating):
        raise ValueError(f"sketch_polar: expected a real floating array, got {g.dtype}.")
    if key is None:
        raise ValueError(
            "sketch_polar: method 'sketch' needs an explicit PRNG key, e.g. "
            "polar(g, method='sketch', key=jax.random.key(0), rank=8)."
        )
    ints = []
    for name, value, low in (
        ("rank", rank, 1),
        ("oversampling", oversampling, 0),
        ("power_iterations", power_iterations, 0),
    ):
        try:
            v = operator.index(value)
        except TypeError:
            v = None
        if v is None or v < low:
            raise ValueError(f"sketch_polar: {name} must be an integer >= {low}, got {value!r}.")
        ints.append(v)
    if ints[0] > min(g.shape[-2:]):
        raise ValueError(
            f"sketch_polar: rank {ints[0]} exceeds min(m, n) = {min(g.shape[-2:])} for shape "
            f"{g.shape}; use method='svd' or 'newton_schulz' for a full-rank polar factor."
        )
    return ints[0], ints[1], ints[2]


def _orth(y: jax.Array) -> jax.Array:
    return jnp.linalg.qr(y, mode="reduced")[0]


def sketch_polar(
    g: jax.Array,
    *,
    key: jax.Array | None = None,
    rank: int | None = None,
    oversampling: int = 10,
    power_iterations: int = 2,
) -> jax.Array:
    """The rank-``rank`` polar factor ``U_k V_kᵀ`` of each matrix in ``g`` by a randomized sketch.

    Args:
      g: matrices of shape ``(..., m, n)``; leading axes are a batch (one key draws all sketches).
      key: a ``jax.random`` key (required): the result is a deterministic function of it.
      rank: ``k``, the number of singular directions kept (``1 <= k <= min(m, n)``).
      oversampling: extra sketch columns ``p`` (capped so that ``k + p <= min(m, n)``).
      power_iterations: ``q``, subspace iterations that sharpen a slowly decaying spectrum.

    Returns:
      ``U_k V_kᵀ`` of shape ``(..., m, n)`` in ``g``'s compute dtype (float32 or wider); zero for
      a zero matrix, and ``U_r V_rᵀ`` for a matrix of rank ``r < k``.

    Raises:
      ValueError: without a key, for a rank outside ``[1, min(m, n)]``, or bad integers.

    Example:
      A matrix of rank 2 is captured whole by a rank-2 sketch: the result is its ``U_2 V_2ᵀ``.

      >>> k1, k2 = jax.random.split(jax.random.key(1))
      >>> g = jax.random.normal(k1, (8, 2), jnp.float32) @ jax.random.normal(k2, (2, 6), jnp.float32)
      >>> u = normtx.linalg.polar(g, method="sketch", key=jax.random.key(0), rank=2)
      >>> U, _, Vt = np.linalg.svd(np.asarray(g, np.float64))
      >>> bool(np.allclose(np.asarray(u, np.float64), U[:, :2] @ Vt[:2], atol=1e-4))
      True

    References:
      Halko, Martinsson & Tropp (2011), Algorithms 4.4 and 5.1.
    """
    g = jnp.asarray(g)
    k, p, q = _check(g, key, rank, oversampling, power_iterations)
    return _sketch_polar(g, key, k, p, q)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _sketch_polar(g: jax.Array, key: jax.Array, k: int, p: int, q: int) -> jax.Array:
    x = g.astype(compute_dtype(g.dtype))
    x = div_by_max(x, jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True))  # scale free, 0 -> 0
    m, n = x.shape[-2:]
    width = min(k + p, m, n)
    omega = jax.random.normal(key, (*x.shape[:-2], n, width), x.dtype)
    xt = jnp.swapaxes(x, -1, -2)
    basis = _orth(x @ omega)
    for _ in range(q):
        basis = _orth(x @ _orth(xt @ basis))
    u, s, vh = thresholded_svd(jnp.swapaxes(basis, -1, -2) @ x)
    keep = (s[..., :k] > 0).astype(x.dtype)
    return ((basis @ u[..., :k]) * keep[..., None, :]) @ vh[..., :k, :]
