"""Ready-made optimizers: each one line, each a thin ``optax.chain`` of normtx parts.

Every optimizer here is documented with the norm it descends (anthology Prop. 1: a norm and a step
size), takes keyword-only typed hyperparameters validated at construction, and works with
``optax.inject_hyperparams``.
"""

from __future__ import annotations

from typing import Any

import optax
from jax.typing import ArrayLike

from normtx.transforms.escape_velocity import prodigy_step

__all__: list[str] = ["prodigy"]


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
       w_{t+1} = w_t - lr_t η_t bc_t \big(m_t / (\sqrt{v_t} + η_t ε) + λ w_t\big),

    with ``β₃ = √β₂`` by default and ``c = estim_lr_coef``; ``safeguard_warmup`` drops
    ``lr_t bc_t`` from the weight of ``s_t``. The signature and the semantics are those of
    ``optax.contrib.prodigy`` (same names; ``estim_lr_coef`` is PyTorch Prodigy's ``d_coef``) and the
    updates match it to float32 rounding; the differences are additions: ``bias_correction``
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
      eps: ε ≥ 0 of the Adam direction (scaled by ``η_t``, as in Prodigy).
      estim_lr0: η_0 > 0, the initial under-estimate of the step size.
      estim_lr_coef: ``c > 0`` multiplying the estimate ``r_t/‖s_t‖₁``.
      weight_decay: decoupled weight decay λ ≥ 0 (AdamW style).
      safeguard_warmup: drop ``lr_t bc_t`` from the weight of ``s_t`` (helps under lr warm-up).
      bias_correction: apply ``bc_t`` (optax: always; PyTorch: off by default).
      max_growth: ``None`` or a cap ``> 1`` on ``η_{t+1}/η_t``.
      state_dtype: dtype of ``w_0``, ``s_t``, ``m_t`` and ``v_t``; default each parameter's.

    Returns:
      An ``optax.GradientTransformation``: ``update`` needs ``params``.

    Example::

      tx = normtx.optimizers.prodigy(optax.cosine_decay_schedule(1.0, 1000), weight_decay=1e-4)

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
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
