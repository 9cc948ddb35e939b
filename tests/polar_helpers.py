"""Test matrices with a prescribed spectrum, and float64 polar-factor oracles (NumPy only)."""

from __future__ import annotations

import numpy as np

import oracles as orc

# Two float32 evaluations of the same Newton–Schulz iteration that differ only in kernel order
# (batched vs single matmuls, transposed layouts) agree to rounding amplified by the first Polar
# Express step, |a| + |b| + |c| ≈ 47: below 50 eps₃₂ ≈ 6e-6.
ROUNDING_ATOL = 50 * float(np.finfo(np.float32).eps)


def with_singular_values(rng: np.random.Generator, m: int, n: int, sigma) -> np.ndarray:
    """``U diag(σ) Vᵀ`` (float64, ``m × n``) with Haar-random orthonormal ``U``, ``V``."""
    sigma = np.asarray(sigma, np.float64)
    k = sigma.size
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (u * sigma) @ v.T


def spread(rng: np.random.Generator, m: int, n: int, low: float = 1e-3) -> np.ndarray:
    """Singular values log-spaced over ``[low, 1]`` (condition number ``1/low``)."""
    return with_singular_values(rng, m, n, np.geomspace(1.0, low, min(m, n)))


def polar64(g) -> np.ndarray:
    """``U Vᵀ`` in float64 for one matrix or a batch ``(..., m, n)``."""
    g = np.asarray(g, np.float64)
    flat = g.reshape(-1, *g.shape[-2:])
    return np.stack([orc.polar(x) for x in flat]).reshape(g.shape)


def rel_error(x, ref) -> float:
    """``‖X - ref‖_F / ‖ref‖_F`` in float64."""
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))


def compose(schedule, x):
    """The scalar map ``p_T ∘ … ∘ p_1`` of a Newton–Schulz schedule ``(T, 3)``, in float64."""
    x = np.asarray(x, np.float64)
    for a, b, c in np.asarray(schedule, np.float64):
        x = a * x + b * x**3 + c * x**5
    return x


def iteration_oracle(g, schedule, schatten: int = 2) -> np.ndarray:
    """``U f(Σ / ‖σ‖_p) Vᵀ`` for each matrix of ``g`` (p = 2: Frobenius, p = 4: Schatten-4): what
    the matrix iteration computes exactly (an odd polynomial acts on each singular value,
    anthology Appendix A)."""
    g = np.asarray(g, np.float64)
    u, s, vh = np.linalg.svd(g, full_matrices=False)
    fro = np.linalg.norm(s, ord=schatten, axis=-1, keepdims=True)
    f = compose(schedule, np.divide(s, fro, out=np.zeros_like(s), where=fro > 0))
    return (u * f[..., None, :]) @ vh
