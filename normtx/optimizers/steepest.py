"""Steepest descent under one norm for every leaf: sign descent, normalized SGD, spectral descent.

Each optimizer is a thin ``optax.chain``: momentum, the dualized step under its norm (anthology
Prop. 1), decoupled weight decay, the learning rate. The modular norm of a network (a norm per
role) is ``normtx.optimizers.modular``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike
from typing_extensions import Unpack

from normtx._keywords import keywords
from normtx._pytree import describe_leaf
from normtx.linalg import PolarMethod, check_polar_method
from normtx.norms import Norm, l2, linf, spectral
from normtx.optimizers._chains import DESCENT, DescentOptions, descent

__all__ = ["normalized_sgd", "sign_descent", "spectral_descent"]


@keywords(DESCENT)
def sign_descent(
    learning_rate: ArrayLike | optax.Schedule, **kw: Unpack[DescentOptions]
) -> optax.GradientTransformation:
    r"""Sign descent: steepest descent under ℓ∞ (max-of-max) norm (anthology Prop. 2, 3).

    Norm: ``max_l max|W_l|`` (ℓ∞ of the flattened weights = the largest ℓ1 -> ℓ∞ operator norm of
    the layers, Prop. 3). ``step='unit'``: ``w ← w - lr · sign(m)``; ``step='dual_norm'``: the
    Prop. 2 step ``w ← w - lr · (‖m‖₁/λ) sign(m)``. ``m`` is the gradient, or with ``momentum = β``
    its EMA ``m_t = β m_{t-1} + (1-β) g_t`` (signum), Nesterov optional; ``weight_decay`` adds
    ``λ_wd · w`` before the learning rate (decoupled, AdamW style).

    Args:
      learning_rate: a number or a schedule.
      momentum: β in ``[0, 1)``.
      nesterov: Nesterov momentum ``(1-β) g_t + β m_t``.
      weight_decay: decoupled weight decay ≥ 0.
      step: ``'unit'`` or ``'dual_norm'``.
      sharpness: λ > 0 of Prop. 1, default 1.0; ``step='dual_norm'`` only (with
        ``step='unit'`` it would have no effect, and giving it is an error).
      weight_decay_mask: where ``weight_decay`` applies, optax's convention
        (``optax.add_decayed_weights``): ``None`` (every leaf), a pytree of bools with the
        structure of the params (or a prefix of it), or a callable ``params -> such a pytree``.
      mu_dtype: dtype of the momentum buffer (optax's ``accumulator_dtype``, e.g.
        ``jnp.bfloat16``); ``None``: each parameter's dtype.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      The first step is ``-lr · sign(g)`` (the momentum ``0.1 g`` has the signs of ``g``); with
      ``step='dual_norm'`` (λ = 1) it is ``-lr · ‖g‖₁ · sign(g)``, ``‖g‖₁ = 7.4``.

      >>> tx = normtx.optimizers.sign_descent(0.1, momentum=0.9)
      >>> params = {"w": jnp.zeros((2, 2), jnp.float32)}
      >>> grads = {"w": jnp.array([[0.3, -2.0], [5.0, -0.1]], jnp.float32)}
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(updates["w"])
      [[-0.1  0.1]
       [-0.1  0.1]]
      >>> tx = normtx.optimizers.sign_descent(0.1, step="dual_norm")
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(updates["w"], np.float64), 4))
      [[-0.74  0.74]
       [-0.74  0.74]]

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 1–3 (2024).
    """
    return descent(linf(), "sign_descent", learning_rate=learning_rate, **kw)


@keywords(DESCENT)
def normalized_sgd(
    learning_rate: ArrayLike | optax.Schedule, **kw: Unpack[DescentOptions]
) -> optax.GradientTransformation:
    r"""Layer-wise normalized SGD: steepest descent under ``max_l ‖W_l‖₂`` (Prop. 1, 7).

    Norm: the ℓ2 (Frobenius) norm of each leaf, combined by the max over leaves (Prop. 7 with unit
    scales). ``step='unit'``: ``w_l ← w_l - lr · m_l/‖m_l‖₂``; ``step='dual_norm'``: times
    ``Σ_k ‖m_k‖₂/λ``. Momentum, Nesterov, weight decay (and its mask) and ``mu_dtype`` as in
    ``sign_descent``.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      Each leaf steps by ``lr`` along ``-g_l/‖g_l‖₂``: ``‖w‖₂ = 2``, ``‖b‖₂ = 5``.

      >>> tx = normtx.optimizers.normalized_sgd(0.1, momentum=0.9)
      >>> params = {"w": jnp.zeros((2, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
      >>> grads = {"w": jnp.array([[1.0, 1.0], [-1.0, 1.0]], jnp.float32),
      ...          "b": jnp.array([3.0, -4.0], jnp.float32)}
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(updates["w"], np.float64), 4))
      [[-0.05 -0.05]
       [ 0.05 -0.05]]
      >>> print(np.round(np.asarray(updates["b"], np.float64), 4))
      [-0.06  0.08]

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 1 and 7 (2024).
    """
    return descent(l2(), "normalized_sgd", learning_rate=learning_rate, **kw)


def _spectral_or_l2(polar: PolarMethod) -> Callable[[str, Any], Norm]:
    """Spectral norm of a 2-D kernel; ℓ2 (the spectral norm of a 1 × n matrix) of a vector."""
    matrix = spectral(polar=polar)

    def norm(path: str, leaf) -> Norm:
        if leaf.ndim == 2:
            return matrix
        if leaf.ndim < 2:
            return l2()
        raise _rank_error(path, leaf)

    return norm


def _rank_error(path: str, leaf) -> ValueError:
    return ValueError(
        f"spectral_descent: leaf {describe_leaf(path, leaf)} has rank {leaf.ndim}; only 2-D "
        "kernels and vectors have an unambiguous spectral norm. Use "
        "normtx.optimizers.modular_descent (roles give conv, scanned and attention kernels "
        "their dimension numbers) or normtx.dualize with norms.spectral(fan_in_axes=…, "
        "fan_out_axes=…)."
    )


@keywords(DESCENT)
def spectral_descent(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    polar: PolarMethod = "newton_schulz",
    mesh: Mesh | None = None,
    **kw: Unpack[DescentOptions],
) -> optax.GradientTransformation:
    r"""Spectral descent: Shampoo with its accumulators off (anthology Prop. 5).

    Norm: ``max_l ‖W_l‖_{ℓ2->ℓ2}`` (σ_max of each 2-D kernel; a vector's spectral norm is its ℓ2
    norm). ``step='unit'``: ``W_l ← W_l - lr · U_l V_lᵀ`` (the polar factor of ``m_l``);
    ``step='dual_norm'``: times ``Σ_k tr Σ_k / λ``, the Prop. 5 step. Momentum, Nesterov and
    weight decay as in ``sign_descent``. ``polar`` picks how ``U Vᵀ`` is computed
    (``normtx.linalg.polar``: ``'newton_schulz'``, 5 Polar Express steps, by default; ``'svd'``
    exact). Leaves of rank > 2 are rejected at ``init``.

    Args:
      learning_rate, momentum, nesterov, weight_decay, step, sharpness: as in ``sign_descent``.
      weight_decay_mask, mu_dtype: as in ``sign_descent``.
      polar: the polar-factor method (``normtx.linalg.polar``).
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      ``G = Q diag(2, 1)`` with ``Q = [[0.6, 0.8], [-0.8, 0.6]]`` orthogonal, so ``U Vᵀ = Q`` and
      the kernel's step is ``-lr · Q``; the bias's is ``-lr · b/‖b‖₂``. ``polar='svd'`` makes the
      polar factor exact (the default Newton–Schulz approximates it).

      >>> tx = normtx.optimizers.spectral_descent(0.1, momentum=0.9, polar="svd")
      >>> params = (jnp.zeros((2, 2), jnp.float32), jnp.zeros(2, jnp.float32))  # (w, b)
      >>> grads = (jnp.array([[1.2, 0.8], [-1.6, 0.6]], jnp.float32),
      ...          jnp.array([3.0, -4.0], jnp.float32))
      >>> (w, b), state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(w, np.float64), 4))  # -lr Q
      [[-0.06 -0.08]
       [ 0.08 -0.06]]
      >>> print(np.round(np.asarray(b, np.float64), 4))
      [-0.06  0.08]

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 4 and 5 (2024).
    """
    check_polar_method(polar, "spectral_descent")
    return descent(
        _spectral_or_l2(polar), "spectral_descent", learning_rate=learning_rate, mesh=mesh, **kw
    )
