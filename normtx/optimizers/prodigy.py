"""Prodigy: Adam whose step size warms up to the escape velocity (anthology eqs. 22–27).

``prodigy`` is the ready optimizer; ``prodigy_step`` is its step before the learning rate: the
escape-velocity rule of ``normtx.escape_velocity_lr`` with Prodigy's EMAs, around Prodigy's Adam
direction with the step size inside both moments (``ProdigyMomentsState``).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from normtx._numerics import safe_div, to_compute
from normtx._pytree import broadcast_to_leaves
from normtx._validation import check_positive, value_at
from normtx.norms.vector import linf
from normtx.transforms._step_size import (
    Direction,
    check_betas,
    escape_velocity_transform,
    sum_dtype,
)

__all__ = ["ProdigyMomentsState", "prodigy", "prodigy_step"]


class ProdigyMomentsState(NamedTuple):
    """State of Prodigy's direction inside ``optimizers.prodigy`` (eqs. 22–23)."""

    mu: optax.Updates  # m_t = β₁ m_{t-1} + (1-β₁) η_t g_t (eq. 22), state dtype
    nu: optax.Updates  # v_t = β₂ v_{t-1} + (1-β₂) η_t² g_t² (eq. 23), state dtype


def prodigy(
    learning_rate: ArrayLike | optax.Schedule = 1.0,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: ArrayLike = 1e-8,
    estim_lr0: ArrayLike = 1e-6,
    estim_lr_coef: ArrayLike = 1.0,
    weight_decay: ArrayLike = 0.0,
    safeguard_warmup: bool = False,
    bias_correction: bool = True,
    max_growth: ArrayLike | None = None,
    state_dtype: Any = None,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
    r"""Prodigy: Adam whose step size warms up to the escape velocity (anthology eqs. 22–27).

    Norm: ℓ∞ (Adam with its EMAs off is sign descent, Prop. 2). Step size: ``escape_velocity_lr``'s
    prodigy rule with EMAs on. With ``η_t`` the step size, ``lr_t`` the learning rate and
    ``bc_t = √(1-β₂^k)/(1-β₁^k)`` (1 when ``bias_correction=False``):

    .. math::
       m_t = β_1 m_{t-1} + (1-β_1) η_t g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) η_t^2 g_t^2,\\
       r_t = β_3 r_{t-1} + η_t^2 lr_t bc_t \langle g_t, w_0 - w_t\rangle,\quad
       s_t = β_3 s_{t-1} + η_t^2 lr_t bc_t\, g_t,\\
       η_{t+1} = \max(η_t, c\, r_t / \|s_t\|_1),\quad
       w_{t+1} = w_t - lr_t η_t bc_t \big(m_t / (\sqrt{v_t} + η_{t+1} ε) + λ w_t\big),

    with ``β₃ = √β₂`` by default and ``c = estim_lr_coef``; ``safeguard_warmup`` drops
    ``lr_t bc_t`` from the weight of ``s_t``; ε is scaled by the updated ``η_{t+1}``, as in
    Prodigy's code. The signature and the semantics are those of ``optax.contrib.prodigy`` (same
    names; ``estim_lr_coef`` is PyTorch Prodigy's ``d_coef``) and the updates match it to
    rounding; the differences are additions: ``bias_correction``
    (PyTorch's ``use_bias_correction``), ``max_growth`` (a cap on ``η_{t+1}/η_t``, like PyTorch's
    ``growth_rate`` but without its memory of the largest estimate), ``state_dtype``, and no NaN:
    zero gradients (where optax divides 0 by 0) leave ``η`` unchanged and give zero Adam steps.

    State: ``EscapeVelocityState`` (``eta`` = Prodigy's ``d``, ``numerator`` = ``r_t``,
    ``denominator`` = ``‖s_t‖₁``, anchor ``w_0``, ``grad_sum`` = ``s_t``) whose ``direction`` holds
    ``ProdigyMomentsState(mu, nu)``: 4 floats per parameter, like optax's. Read the step size with
    ``optax.tree_utils.tree_get(state, 'eta')``.

    Args:
      learning_rate: ``lr_t``, a number or a schedule; keep its peak at 1 (Prodigy estimates the
        scale) and decay it, e.g. ``optax.cosine_decay_schedule(1.0, steps)``.
      betas: ``(β₁, β₂)`` in ``[0, 1)`` of the moments (eqs. 22–23).
      beta3: the EMA factor of ``r_t`` and ``s_t`` in ``[0, 1)``; default ``√β₂`` (eqs. 24–25).
      eps: ε ≥ 0 of the Adam direction (scaled by ``η_{t+1}``, as in Prodigy).
      estim_lr0: η_0 > 0, the initial under-estimate of the step size.
      estim_lr_coef: ``c > 0`` multiplying the estimate ``r_t/‖s_t‖₁``.
      weight_decay: decoupled weight decay λ ≥ 0 (AdamW style).
      safeguard_warmup: drop ``lr_t bc_t`` from the weight of ``s_t`` (helps under lr warm-up).
      bias_correction: apply ``bc_t`` (optax: always; PyTorch: off by default).
      max_growth: ``None`` or a cap ``> 1`` on ``η_{t+1}/η_t``.
      state_dtype: dtype of ``w_0``, ``s_t``, ``m_t`` and ``v_t``; default each parameter's,
        except that ``s_t``, ``m_t``, ``v_t`` of a float16 parameter are float32: their terms
        ``η_t g``, ``η_t² g²`` underflow float16 (``η_0² = 1e-12``). float16 itself is refused.
      weight_decay_mask: where ``weight_decay`` applies, optax's convention: ``None`` (every
        leaf), a pytree of bools (or a prefix of one) or a callable ``params -> such a pytree``.

    Returns:
      An ``optax.GradientTransformation``: ``update`` needs ``params``.

    Example:
      The first step is ``-lr · η_0 · sign(g)`` (``bc_1 m_1/√v_1 = sign(g)``, η_0 =
      ``estim_lr0`` = 1e-6), and the updates are ``optax.contrib.prodigy``'s (here over ten steps
      on the quadratic ``½‖w - (1, -2, 3)‖²``):

      >>> tx = normtx.optimizers.prodigy(1.0)
      >>> params = {"w": jnp.zeros(3, jnp.float32)}
      >>> grads = {"w": jnp.array([0.5, -1.0, 2.0], jnp.float32)}
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(updates["w"], np.float64) / 1e-6, 4))
      [-1.  1. -1.]
      >>> def train(tx, steps=10):
      ...     w, target = jnp.zeros(3, jnp.float32), jnp.array([1.0, -2.0, 3.0], jnp.float32)
      ...     state, step = tx.init(w), jax.jit(tx.update)
      ...     for _ in range(steps):
      ...         updates, state = step(w - target, state, w)
      ...         w = optax.apply_updates(w, updates)
      ...     return w
      >>> ours = train(normtx.optimizers.prodigy(1.0, estim_lr0=1e-3, weight_decay=0.01))
      >>> ref = train(optax.contrib.prodigy(1.0, estim_lr0=1e-3, weight_decay=0.01))
      >>> bool(jnp.allclose(ours, ref, rtol=1e-5))
      True

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology*, Story III, eqs. 22–29 (2024).
      Mishchenko & Defazio, *Prodigy: An Expeditiously Adaptive Parameter-Free Learner*,
      Algorithm 3 (2023).
    """
    return optax.chain(
        prodigy_step(
            learning_rate,
            betas=betas,
            beta3=beta3,
            eps=eps,
            estim_lr0=estim_lr0,
            estim_lr_coef=estim_lr_coef,
            weight_decay=weight_decay,
            safeguard_warmup=safeguard_warmup,
            bias_correction=bias_correction,
            max_growth=max_growth,
            state_dtype=state_dtype,
            weight_decay_mask=weight_decay_mask,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )


def prodigy_step(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    betas: tuple[float, float],
    beta3: float | None,
    eps: ArrayLike,
    estim_lr0: ArrayLike,
    estim_lr_coef: ArrayLike,
    weight_decay: ArrayLike,
    safeguard_warmup: bool,
    bias_correction: bool,
    max_growth: ArrayLike | None,
    state_dtype: Any,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
    """Prodigy's step before the learning rate (eqs. 22–27); ``optimizers.prodigy`` documents it.

    The direction is ``bc_t (m_t / (√v_t + η_{t+1} ε) + λ w_t)`` with η inside the moments (eqs.
    22–23) and ``bc_t = √(1-β₂^k)/(1-β₁^k)`` (or 1); the step size is the prodigy rule with EMAs
    whose weights follow Prodigy's code: ``dlr_t = η_t lr_t bc_t`` and, divided by ``η_0``,
    ``w_r = η_t dlr_t``, ``w_s = η_t dlr_t`` (``η_t²`` with ``safeguard_warmup``).
    """
    what = "prodigy"
    b1, b2 = check_betas(betas, what, "betas")
    if beta3 is None:
        beta3 = b2**0.5
    elif (isinstance(beta3, numbers.Real) or not hasattr(beta3, "dtype")) and not (
        isinstance(beta3, numbers.Real) and 0 <= beta3 < 1
    ):  # an array (traced under optax.inject_hyperparams) is not checked
        raise ValueError(f"{what}: beta3 must be None or a number in [0, 1), got {beta3!r}.")
    check_positive("estim_lr0", estim_lr0, what)
    check_positive("estim_lr_coef", estim_lr_coef, what)
    check_positive("learning_rate", learning_rate, what, allow_zero=True)
    check_positive("eps", eps, what, allow_zero=True)
    check_positive("weight_decay", weight_decay, what, allow_zero=True)
    for name, flag in (
        ("safeguard_warmup", safeguard_warmup),
        ("bias_correction", bias_correction),
    ):
        if not isinstance(flag, bool):
            raise ValueError(f"{what}: {name} must be True or False, got {flag!r}.")

    def correction(count, dtype):
        if not bias_correction:
            return jnp.ones([], dtype)
        # In the default float dtype (float64 under x64), as optax's ``decay**count``: float32
        # cancellation in 1 - b2**k would move the trajectory away from optax.contrib.prodigy's.
        k = (count + 1).astype(jnp.result_type(float))
        return (jnp.sqrt(1 - b2**k) / (1 - b1**k)).astype(dtype)

    def ema_weights(eta, count):
        dlr = jnp.asarray(
            eta * value_at(learning_rate, count, eta.dtype) * correction(count, eta.dtype),
            eta.dtype,
        )
        ratio = eta / jnp.asarray(estim_lr0, eta.dtype)
        return ratio * dlr, ratio * (eta if safeguard_warmup else dlr)

    def init(params):
        zeros = lambda p: jnp.zeros(jnp.shape(p), sum_dtype(p, state_dtype))  # noqa: E731
        return ProdigyMomentsState(mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

    def update(updates, state, params, step):
        eta = step.eta
        bc = correction(step.count, eta.dtype)

        def leaf(g, m, v, p, decay):
            dg = eta * to_compute(g)  # η_t g_t: η sits inside both moments (eqs. 22-23)
            m = b1 * to_compute(m) + (1 - b1) * dg
            v = b2 * to_compute(v) + (1 - b2) * dg * dg
            # ε is scaled by the *updated* estimate η_{t+1}, as in Prodigy's code (PyTorch, optax).
            d = safe_div(m, jnp.sqrt(v) + step.next_eta * eps)
            if decay:
                d = d + weight_decay * to_compute(p)
            return bc * d, m, v

        # Leaf by leaf over flat lists: the params' own tuples (and optax.MaskedNode, an empty
        # tuple) are tree nodes, never confused with this function's (d, m, v) results.
        flat_u, treedef = jax.tree_util.tree_flatten(updates)
        fields = [treedef.flatten_up_to(t) for t in (state.mu, state.nu, params)]
        mask = weight_decay_mask(params) if callable(weight_decay_mask) else weight_decay_mask
        decays = [
            True if on is None else bool(on)
            for _, _, on in broadcast_to_leaves(
                mask,
                params,
                is_value=lambda x: isinstance(x, (bool, np.bool_)),
                what=what,
                expected="True or False",
            )
        ]
        out = [leaf(*xs) for xs in zip(flat_u, *fields, decays, strict=True)]

        def part(i, like):
            return treedef.unflatten([o[i].astype(x.dtype) for o, x in zip(out, like, strict=True)])

        return part(0, flat_u), ProdigyMomentsState(mu=part(1, fields[0]), nu=part(2, fields[1]))

    return escape_velocity_transform(
        Direction(init, update),
        norm=linf(),
        init_lr=estim_lr0,
        rule="prodigy",
        anchor="initial",
        monotone=True,
        max_growth=max_growth,
        beta3=beta3,
        ema_weights=ema_weights,
        state_dtype=state_dtype,
        what=what,
        coef=estim_lr_coef,
    )
