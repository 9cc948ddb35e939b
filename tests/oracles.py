"""Independent float64 NumPy oracles for the geometry table (DESIGN §3).

Written from the closed forms of the anthology (Prop. 2, 5, 8) with NumPy's SVD; nothing here
imports normtx. Matrices are Flax kernels ``K`` of shape ``(d_in, d_out)`` (the map ``x -> x K``):
rows of ``K`` are columns of the anthology's ``W = Kᵀ``.
"""

from __future__ import annotations

import math

import numpy as np


def dual_exp(p: float) -> float:
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1)


def lp(v: np.ndarray, p: float, axis=None) -> np.ndarray:
    a = np.abs(np.asarray(v, np.float64))
    if math.isinf(p):
        return a.max(axis=axis)
    return (a**p).sum(axis=axis) ** (1 / p)


def lmo(v: np.ndarray, p: float, axis: int = -1) -> np.ndarray:
    """argmax_{‖t‖_p <= 1} <v, t> along ``axis`` (first index on ties for p = 1)."""
    v = np.asarray(v, np.float64)
    if math.isinf(p):
        return np.sign(v)
    if p == 1:
        out = np.zeros_like(v)
        idx = np.expand_dims(np.abs(v).argmax(axis=axis), axis)
        np.put_along_axis(out, idx, np.take_along_axis(np.sign(v), idx, axis), axis)
        return out
    q = dual_exp(p)
    nq = np.expand_dims(lp(v, q, axis=axis), axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.sign(v) * np.abs(v) ** (q - 1) / nq ** (q - 1)
    return np.where(nq > 0, t, 0.0)


def svd(k: np.ndarray):
    return np.linalg.svd(np.asarray(k, np.float64), full_matrices=False)


def polar(k: np.ndarray) -> np.ndarray:
    u, s, vh = svd(k)
    return (u * (s > s[0] * max(k.shape) * 1e-12)) @ vh if s[0] > 0 else np.zeros_like(u @ vh)


# Each entry: name -> (norm(K), dual(G), dualize(G)) for one vector or one matrix.
def vector_oracles(p: float, factor=lambda n: 1.0):
    return (
        lambda x: factor(x.size) * lp(x.ravel(), p),
        lambda g: lp(g.ravel(), dual_exp(p)) / factor(g.size),
        lambda g: lmo(g.ravel(), p).reshape(g.shape) / factor(g.size),
    )


def schatten_oracles(p: float, factor=lambda d_in, d_out: 1.0):
    def direction(g):
        u, s, vh = svd(g)
        s = np.where(s > s[0] * max(g.shape) * 1e-12, s, 0.0)
        return (u * lmo(s, p)) @ vh / factor(*g.shape)

    return (
        lambda k: factor(*k.shape) * lp(svd(k)[1], p),
        lambda g: lp(svd(g)[1], dual_exp(p)) / factor(*g.shape),
        direction,
    )


def rows_oracles(r: float, factor=lambda d_in, d_out: 1.0):
    """max_j ‖K[j, :]‖_r (ℓ1 -> ℓr with a factor)."""
    return (
        lambda k: factor(*k.shape) * lp(k, r, axis=1).max(),
        lambda g: lp(g, dual_exp(r), axis=1).sum() / factor(*g.shape),
        lambda g: lmo(g, r, axis=1) / factor(*g.shape),
    )


def cols_oracles(r: float):
    """max_i ‖K[:, i]‖_r (ℓp -> ℓ∞ has r = q)."""
    return (
        lambda k: lp(k, r, axis=0).max(),
        lambda g: lp(g, dual_exp(r), axis=0).sum(),
        lambda g: lmo(g, r, axis=0),
    )


def induced_norm_lower_bound(k: np.ndarray, alpha: float, beta: float, rng, n: int = 4000):
    """max over random x of ‖x K‖_β / ‖x‖_α (Definition 1), with vertices for α = 1."""
    xs = rng.standard_normal((n, k.shape[0]))
    xs = np.concatenate([xs, np.eye(k.shape[0]), np.sign(xs[:200])])
    return (lp(xs @ k, beta, axis=1) / lp(xs, alpha, axis=1)).max()


def assert_solves_eq32(g: dict, step: dict, norm, lam: float, eta: float, *, seed: int) -> None:
    """``step`` minimises ``<g, d> + (λ/2) norm(d)²`` over trees ``d`` (anthology eq. 32): its
    value is ``-λη²/2`` (eq. 33), and neither the best multiple of 300 random directions nor a
    point near ``step`` does better."""

    def objective(d):
        return sum(np.vdot(g[k], d[k]) for k in g) + 0.5 * lam * norm(d) ** 2

    best = objective(step)
    np.testing.assert_allclose(best, -lam * eta**2 / 2, rtol=1e-4)
    rng = np.random.default_rng(seed)
    for _ in range(300):
        d = {k: rng.standard_normal(v.shape) * rng.exponential(size=v.shape) for k, v in g.items()}
        c = max(0.0, -sum(np.vdot(g[k], d[k]) for k in g)) / (lam * norm(d) ** 2)
        assert best <= objective({k: c * v for k, v in d.items()}) + 1e-6 * abs(best)
        near = {k: step[k] + 1e-2 * rng.standard_normal(v.shape) for k, v in g.items()}
        assert best <= objective(near) + 1e-6 * abs(best)
