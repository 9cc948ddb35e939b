"""Coefficient schedules of the Newton–Schulz iteration: fixed quintics and Polar Express.

Each step of ``normtx.linalg.newton_schulz`` applies an odd polynomial ``p(x) = a x + b x³ + c x⁵``
to every singular value. This module designs the ``(a, b, c)`` rows, in float64 NumPy at
construction time (nothing here is traced):

- ``'cubic'``: ``(3/2, -1/2, 0)``, anthology eq. 36;
- ``'muon'``: ``(3.4445, -4.7750, 2.0315)`` (Jordan et al. 2024);
- ``'polar_express'``: the per-step optimal schedule of Amsel et al. (2025), each step the odd
  quintic that best approximates 1 in the sup norm on the interval known to hold the singular
  values (``optimal_odd_quintic``, a Remez exchange), their Algorithm 1 with its cushion and
  safety factor.

References:
  Amsel, Persson, Musco & Gower, *The Polar Express: Optimal Matrix Sign Methods and Their
  Application to the Muon Algorithm*, arXiv:2505.16932 (2025), §4.2–4.4, Algorithm 1, App. G.
  Jordan et al., *Muon: An optimizer for hidden layers* (2024).
"""

from __future__ import annotations

import functools
import math
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "NS_SCHEDULES",
    "NsSchedule",
    "newton_schulz_schedule",
    "optimal_odd_quintic",
    "polar_express_coefficients",
]

NsSchedule = Literal["cubic", "muon", "polar_express"]
NS_SCHEDULES: tuple[str, ...] = get_args(NsSchedule)

# Amsel et al. (2025), §4.3–4.4 and Appendix G: the lower bound ℓ = 1e-3 assumed for the
# smallest normalised singular value, the cushion that keeps every step's polynomial from mapping
# large singular values close to zero, and the safety factor x -> p(x / 1.01) against round-off.
PE_LOWER = 1e-3
PE_CUSHION = 0.02407327424182761
PE_SAFETY = 1.01
# Above this ratio l/u the optimal quintic is numerically its limit (15x - 10x³ + 3x⁵)/8 at u = 1.
_LIMIT_RATIO = 1.0 - 5e-6
_LIMIT = (15.0 / 8.0, -10.0 / 8.0, 3.0 / 8.0)


def _odd_quintic(coeffs, x):
    a, b, c = coeffs
    return a * x + b * x**3 + c * x**5


def optimal_odd_quintic(lo: float, hi: float) -> tuple[float, float, float]:
    """The odd quintic ``p(x) = a x + b x³ + c x⁵`` minimising ``max_{[lo, hi]} |1 - p(x)|``.

    A Remez exchange in float64: for reference points ``lo < q < r < hi`` solve the 4 × 4 system
    ``p(x_i) = 1 ∓ E`` (signs alternating, ``p(lo) = 1 - E``) for ``(a, b, c, E)``, then move
    ``q, r`` to the roots of ``p'`` (a quadratic in ``x²``), until they stop moving. The result
    equioscillates on four points, which by Chebyshev's theorem (the span of ``x, x³, x⁵`` is a
    Haar space on ``(0, ∞)``) makes it the unique best approximation.
    """
    if not 0 < lo <= hi:
        raise ValueError(f"optimal_odd_quintic: need 0 < lo <= hi, got lo={lo!r}, hi={hi!r}.")
    if lo / hi >= _LIMIT_RATIO:
        return (_LIMIT[0] / hi, _LIMIT[1] / hi**3, _LIMIT[2] / hi**5)
    q, r = lo + (hi - lo) / 4.0, lo + 3.0 * (hi - lo) / 4.0
    signs = np.array([-1.0, 1.0, -1.0, 1.0])
    for _ in range(100):
        pts = np.array([lo, q, r, hi])
        system = np.stack([pts, pts**3, pts**5, -signs], axis=1)
        a, b, c, _ = np.linalg.solve(system, np.ones(4))
        disc = math.sqrt(max(9.0 * b * b - 20.0 * a * c, 0.0))
        q_new = math.sqrt((-3.0 * b - disc) / (10.0 * c))
        r_new = math.sqrt((-3.0 * b + disc) / (10.0 * c))
        moved = max(abs(q_new - q), abs(r_new - r))
        q, r = q_new, r_new
        if moved <= 1e-15 * hi:
            break
    return float(a), float(b), float(c)


@functools.lru_cache(maxsize=32)
def _polar_express(lower: float, cushion: float, safety: float) -> tuple[tuple[float, ...], ...]:
    lo, hi = lower, 1.0
    steps = []
    while lo / hi < _LIMIT_RATIO:
        coeffs = optimal_odd_quintic(max(lo, cushion * hi), hi)
        # With a cushion the polynomial is centred on [cushion·u, u]; rescale it so that the true
        # interval [l, u] maps symmetrically around 1: p(l) + p(u) = 2.
        k = 2.0 / (_odd_quintic(coeffs, lo) + _odd_quintic(coeffs, hi))
        coeffs = tuple(k * v for v in coeffs)
        lo = _odd_quintic(coeffs, lo)
        hi = 2.0 - lo
        steps.append((coeffs[0] / safety, coeffs[1] / safety**3, coeffs[2] / safety**5))
    steps.append(_LIMIT)
    return tuple(steps)


def polar_express_coefficients(
    *, lower: float = PE_LOWER, cushion: float = PE_CUSHION, safety: float = PE_SAFETY
) -> np.ndarray:
    """The Polar Express schedule as a float64 array ``(k, 3)`` of ``(a, b, c)`` per step.

    Starting from ``[l₁, u₁] = [lower, 1]``, step ``t`` takes the optimal odd quintic on
    ``[max(l_t, cushion · u_t), u_t]`` (``optimal_odd_quintic``), rescales it so that
    ``p_t(l_t) + p_t(u_t) = 2``, and sets ``l_{t+1} = p_t(l_t)``, ``u_{t+1} = 2 - l_{t+1}``: every
    singular value in ``[l_t, u_t]`` lands in ``[l_{t+1}, u_{t+1}]``. Each step is stored as
    ``x -> p_t(x / safety)``; the schedule ends, once ``l/u`` is within ``5e-6`` of 1, with the
    convergent limit ``(15/8, -5/4, 3/8)`` (no safety factor), which later steps repeat.
    The defaults reproduce Algorithm 1 of Amsel et al. (2025).

    Args:
      lower: the assumed lower bound ``l₁`` on ``σ_min(G) / ‖G‖_F`` (in ``(0, 1)``).
      cushion: the smallest ratio ``l/u`` a step is designed for (their §4.4; 0 for none).
      safety: the safety factor ``>= 1`` (1 for none).

    Returns:
      A new float64 NumPy array of shape ``(k, 3)`` (``k = 8`` for the defaults).
    """
    if not 0 < lower < 1:
        raise ValueError(f"polar_express_coefficients: lower must be in (0, 1), got {lower!r}.")
    if not 0 <= cushion < 1:
        raise ValueError(f"polar_express_coefficients: cushion must be in [0, 1), got {cushion!r}.")
    if not safety >= 1:
        raise ValueError(f"polar_express_coefficients: safety must be >= 1, got {safety!r}.")
    return np.array(_polar_express(float(lower), float(cushion), float(safety)), np.float64)


_FIXED = {
    "cubic": np.array([[1.5, -0.5, 0.0]]),
    "muon": np.array([[3.4445, -4.7750, 2.0315]]),
}


def newton_schulz_schedule(coefficients: NsSchedule | ArrayLike, steps: int) -> np.ndarray:
    """The ``(steps, 3)`` float64 schedule: a named one or an array, its last row repeated."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(
            f"newton_schulz: steps must be a positive Python integer, got {steps!r} (it sets the "
            "loop length: under optax.inject_hyperparams list it in static_args)."
        )
    table = _table(coefficients)
    if steps <= table.shape[0]:
        return table[:steps].copy()
    return np.concatenate([table, np.repeat(table[-1:], steps - table.shape[0], axis=0)])


def _table(coefficients: NsSchedule | ArrayLike) -> np.ndarray:
    """The ``(k, 3)`` float64 rows of a named schedule or of a concrete array, validated."""
    if isinstance(coefficients, str):
        if coefficients not in NS_SCHEDULES:
            raise ValueError(
                f"newton_schulz: unknown coefficients {coefficients!r}; expected one of "
                f"{NS_SCHEDULES} or an array of shape (k, 3)."
            )
        return (
            polar_express_coefficients()
            if coefficients == "polar_express"
            else _FIXED[coefficients]
        )
    try:
        table = np.asarray(coefficients, np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError) as e:
        raise ValueError(
            "newton_schulz: coefficients must be a schedule name or a concrete array of shape "
            f"(k, 3) (not a traced value), got {coefficients!r}. Under "
            "optax.inject_hyperparams list it in static_args."
        ) from e
    table = _check_shape(table)
    if not np.all(np.isfinite(table)):
        raise ValueError("newton_schulz: coefficients must be finite.")
    return table


def _check_shape(table):
    """A ``(3,)`` row as ``(1, 3)``; anything but ``(k, 3)`` with ``k >= 1`` is a ``ValueError``."""
    if table.ndim == 1 and table.shape == (3,):
        table = table[None]
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 1:
        raise ValueError(f"newton_schulz: coefficients must have shape (k, 3), got {table.shape}.")
    return table


def traced_schedule(coefficients: NsSchedule | ArrayLike) -> jax.Array:
    """The ``(k, 3)`` rows of a schedule as an array, for a step count known only at run time
    (a traced ``steps``): step ``i`` applies row ``min(i, k - 1)``. ``coefficients`` may itself be
    traced (``optax.inject_hyperparams``); its shape is checked, its values cannot be."""
    if isinstance(coefficients, jax.core.Tracer):
        return _check_shape(coefficients)
    return jnp.asarray(_table(coefficients))
