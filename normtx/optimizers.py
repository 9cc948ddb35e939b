"""Ready-made optimizers: each one line, each a thin ``optax.chain`` of normtx parts.

Every optimizer here is documented with the norm it descends (anthology Prop. 1: a norm and a step
size), takes keyword-only typed hyperparameters validated at construction, and works with
``optax.inject_hyperparams``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import jax
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from normtx import roles as roles_lib
from normtx._pytree import describe_leaf
from normtx._validation import (
    check_bool,
    check_choice,
    check_int,
    check_positive,
    check_probability,
    check_static,
)
from normtx.linalg import PolarMethod, check_polar_method, newton_schulz
from normtx.linalg.newton_schulz import NsSchedule, newton_schulz_schedule
from normtx.norms import Norm, NormSpec, Schatten, l2, linf, rms_to_rms, spectral
from normtx.transforms.dualize import dualize, scale_by_dual_norm
from normtx.transforms.escape_velocity import escape_velocity_lr, prodigy_step
from normtx.transforms.modular import RoleModular, modular_step

__all__: list[str] = [
    "modular_descent",
    "muon",
    "normalized_sgd",
    "prodigy",
    "scion",
    "sign_descent",
    "spectral_descent",
]


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


# ---- steepest descent under one norm, the modular norm, Muon, Scion ----------------------------

Step = Literal["unit", "dual_norm"]
MuonScaling = Literal["muon", "rms_to_rms", "spectral"]
POLAR_ROLES: tuple[str, ...] = ("hidden", "conv", "attention")
"""Roles whose leaves Muon orthogonalizes (every other role is Muon's 'other' parameters)."""


def _momentum(beta: ArrayLike, nesterov: bool) -> optax.GradientTransformation:
    """``m_t = β m_{t-1} + (1-β) g_t``; Nesterov: ``(1-β) g_t + β m_t`` (Muon's reference form).

    ``optax.trace`` followed by ``optax.scale(1 - β)``: an EMA of the gradient without bias
    correction (``β = 0`` is the gradient itself).
    """
    return optax.chain(optax.trace(decay=beta, nesterov=nesterov), optax.scale(1.0 - beta))


def _weight_decay(weight_decay: ArrayLike, mask: Any = None) -> optax.GradientTransformation:
    """Decoupled weight decay ``+ λ w`` before the learning rate (AdamW); nothing for ``λ = 0``."""
    if isinstance(weight_decay, numbers.Real) and weight_decay == 0:
        return optax.identity()
    return optax.add_decayed_weights(weight_decay, mask)


def _steepest(norm: NormSpec, step: Step, sharpness: ArrayLike, what: str, mesh: Mesh | None):
    check_choice("step", step, ("unit", "dual_norm"), what)
    if step == "unit":
        return dualize(norm, mesh=mesh)
    return scale_by_dual_norm(norm, sharpness=sharpness, scope="tree", mesh=mesh)


def _check_common(what: str, learning_rate, momentum, nesterov, weight_decay) -> None:
    check_positive("learning_rate", learning_rate, what)
    check_probability("momentum", momentum, what)
    check_bool("nesterov", nesterov, what)
    check_positive("weight_decay", weight_decay, what, allow_zero=True)


def _descent(
    norm: NormSpec,
    what: str,
    *,
    learning_rate,
    momentum,
    nesterov,
    weight_decay,
    step: Step,
    sharpness,
    mesh: Mesh | None = None,
) -> optax.GradientTransformation:
    """Momentum, the steepest-descent step under ``norm``, weight decay, the learning rate."""
    _check_common(what, learning_rate, momentum, nesterov, weight_decay)
    return optax.chain(
        _momentum(momentum, nesterov),
        _steepest(norm, step, sharpness, what, mesh),
        _weight_decay(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def sign_descent(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    momentum: ArrayLike = 0.0,
    nesterov: bool = False,
    weight_decay: ArrayLike = 0.0,
    step: Step = "unit",
    sharpness: ArrayLike | optax.Schedule = 1.0,
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
      sharpness: λ > 0 of Prop. 1 (``step='dual_norm'`` only).

    Returns:
      An ``optax.GradientTransformation``.

    Example::

      tx = normtx.optimizers.sign_descent(1e-3, momentum=0.9)

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 1–3 (2024).
    """
    return _descent(linf(), "sign_descent", **locals())


def normalized_sgd(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    momentum: ArrayLike = 0.0,
    nesterov: bool = False,
    weight_decay: ArrayLike = 0.0,
    step: Step = "unit",
    sharpness: ArrayLike | optax.Schedule = 1.0,
) -> optax.GradientTransformation:
    r"""Layer-wise normalized SGD: steepest descent under ``max_l ‖W_l‖₂`` (Prop. 1, 7).

    Norm: the ℓ2 (Frobenius) norm of each leaf, combined by the max over leaves (Prop. 7 with unit
    scales). ``step='unit'``: ``w_l ← w_l - lr · m_l/‖m_l‖₂``; ``step='dual_norm'``: times
    ``Σ_k ‖m_k‖₂/λ``. Momentum, Nesterov and weight decay as in ``sign_descent``.

    Returns:
      An ``optax.GradientTransformation``.

    Example::

      tx = normtx.optimizers.normalized_sgd(0.05, momentum=0.9)

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 1 and 7 (2024).
    """
    return _descent(l2(), "normalized_sgd", **locals())


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


def spectral_descent(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    momentum: ArrayLike = 0.0,
    nesterov: bool = False,
    weight_decay: ArrayLike = 0.0,
    step: Step = "unit",
    sharpness: ArrayLike | optax.Schedule = 1.0,
    polar: PolarMethod = "newton_schulz",
    mesh: Mesh | None = None,
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
      polar: the polar-factor method (``normtx.linalg.polar``).
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation``.

    Example::

      tx = normtx.optimizers.spectral_descent(0.02, momentum=0.9)

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 4 and 5 (2024).
    """
    hyper = dict(locals())
    polar = hyper.pop("polar")
    check_polar_method(polar, "spectral_descent")
    return _descent(_spectral_or_l2(polar), "spectral_descent", **hyper)


def modular_descent(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    momentum: ArrayLike = 0.9,
    nesterov: bool = False,
    weight_decay: ArrayLike = 0.0,
    step: Step = "unit",
    sharpness: ArrayLike | optax.Schedule = 1.0,
    escape_velocity: bool = False,
    init_lr: ArrayLike = 1e-6,
    rule: Literal["prodigy", "cosine"] = "prodigy",
    roles: Any = None,
    norms: roles_lib.NormsSpec = None,
    scales: roles_lib.ScalesSpec = None,
    masses: Mapping[str, float] | None = None,
    head: roles_lib.HeadSpec = None,
    labels: roles_lib.LabelSpec = None,
    heads_as_batch: bool = False,
    mesh: Mesh | None = None,
) -> optax.GradientTransformation:
    r"""Steepest descent under the modular norm of a network (anthology Prop. 7 and epilogue).

    Norm: ``max_l s_l N_l(W_l)`` with ``N_l`` and ``s_l`` by role (``normtx.roles``): RMS -> RMS
    for hidden, attention, conv and head kernels, ℓ1 -> RMS for embeddings, RMS for biases and
    gains (``normtx.roles.default_norms``; ``normtx.roles.describe(params)`` prints the table).
    The chain is momentum (EMA ``m_t = β m_{t-1} + (1-β) g_t``, Nesterov optional), then
    ``modular_norm_partition`` — ``step='unit'``: ``dualize_l(m_l)/s_l`` (a step of modular norm 1);
    ``step='dual_norm'``: the Prop. 7 step ``(η/s_l) dualize_l(m_l)``,
    ``η = Σ_k N_k†(m_k)/(s_k λ)`` — then decoupled weight decay ``+ λ_wd w`` on the matrix leaves,
    then the learning rate. With ``escape_velocity=True`` the direction (weight decay included) is
    scaled by ``escape_velocity_lr``'s step size, measured in the same modular norm
    (``normtx.modular_norm`` with the same arguments), and ``learning_rate`` multiplies it (1.0, or
    a schedule peaking at 1).

    Args:
      learning_rate: a number or a schedule.
      momentum: β in ``[0, 1)``; 0 is plain steepest descent.
      nesterov: Nesterov momentum ``(1-β) g_t + β m_t``.
      weight_decay: decoupled weight decay ≥ 0 on matrix roles (not biases or gains).
      step: ``'unit'`` or ``'dual_norm'``.
      sharpness: λ > 0 (``step='dual_norm'`` only).
      escape_velocity: scale the steps by ``normtx.escape_velocity_lr`` (``update`` then needs
        ``params``).
      init_lr: η_0 > 0 of the escape-velocity rule.
      rule: ``'prodigy'`` or ``'cosine'`` (see ``normtx.escape_velocity_lr``).
      roles, norms, scales, masses, head, labels, heads_as_batch: the geometry, as in
        ``normtx.modular_norm_partition``.
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation``. Under ``optax.inject_hyperparams`` pass callables
      (``labels``, a ``sharpness`` that is not a schedule) in ``static_args``.

    Example::

      tx = normtx.optimizers.modular_descent(0.05, momentum=0.9, weight_decay=1e-4)
      tx = normtx.optimizers.modular_descent(1.0, escape_velocity=True)

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 7, 8, Story III and the epilogue
      (2024); Large et al., *Scalable Optimization in the Modular Norm* (2024).
    """
    what = "modular_descent"
    _check_common(what, learning_rate, momentum, nesterov, weight_decay)
    check_bool("escape_velocity", escape_velocity, what)
    geometry = roles_lib.Geometry.of(locals(), what)
    direction = optax.chain(
        _momentum(momentum, nesterov),
        modular_step(geometry, sharpness=sharpness, step=step, mesh=mesh),
        _weight_decay(weight_decay, _role_mask(geometry, lambda r: r.is_matrix)),
    )
    if escape_velocity:
        norm = RoleModular(geometry, mesh=mesh)
        direction = escape_velocity_lr(direction, norm=norm, init_lr=init_lr, rule=rule)
    return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))


def _role_mask(geometry: roles_lib.Geometry, keep: Callable[[roles_lib.Role], Any]) -> Any:
    """``params -> tree of keep(role)``, the roles resolved as the partition resolves them."""
    return lambda params: jax.tree.map(keep, geometry.resolve(params))


def scion(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    radius: ArrayLike = 1.0,
    momentum: ArrayLike = 0.9,
    constrained: bool = True,
    roles: Any = None,
    norms: roles_lib.NormsSpec = None,
    scales: roles_lib.ScalesSpec = None,
    masses: Mapping[str, float] | None = None,
    head: roles_lib.HeadSpec = None,
    labels: roles_lib.LabelSpec = None,
    heads_as_batch: bool = False,
    mesh: Mesh | None = None,
) -> optax.GradientTransformation:
    r"""Scion: conditional gradient over a ball of the modular norm (Pethick et al., 2025).

    Norm: the modular norm ``max_l s_l N_l(W_l)`` by role (as ``modular_descent``); its ball of
    radius ρ is ``{N_l(W_l) ≤ ρ/s_l for every l}``, and its linear minimization oracle is
    ``lmo(d) = -ρ · dualize_l(d_l)/s_l``. With the momentum ``d_t = β d_{t-1} + (1-β) g_t`` (Scion's
    ``momentum`` parameter is ``α = 1 - β``):

    - ``constrained=True`` (Scion): ``w ← (1-γ) w + γ lmo(d)`` — the iterates stay in the ball;
      here ``optax.add_decayed_weights(1.0)`` before the learning rate γ (≤ 1).
    - ``constrained=False`` (unconstrained Scion): ``w ← w + γ lmo(d)``, steepest descent with unit
      steps in the modular norm scaled by ρ.

    Scion's reference settings put the spectral RMS -> RMS norm on hidden layers (the default
    here) and ``sign`` on the head: ``norms={'head': normtx.norms.linf()}`` with a larger scale
    for the head's radius, e.g. ``scales={'head': 1/60}`` for Scion's ``radius·60``.

    Args:
      learning_rate: γ, a number (≤ 1 when constrained) or a schedule.
      radius: ρ > 0.
      momentum: β in ``[0, 1)``.
      constrained: the constrained (Frank–Wolfe) or the unconstrained variant.
      roles, norms, scales, masses, head, labels, heads_as_batch: as in
        ``normtx.modular_norm_partition``.
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation`` (``update`` needs ``params`` when constrained).

    Example::

      tx = normtx.optimizers.scion(0.05, radius=20.0, norms={'head': normtx.norms.linf()})

    References:
      Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls & Cevher, *Training Deep Learning Models
      with Norm-Constrained LMOs*, Algorithms 1–2 (2025).
    """
    what = "scion"
    check_positive("learning_rate", learning_rate, what)
    check_positive("radius", radius, what)
    check_probability("momentum", momentum, what)
    check_bool("constrained", constrained, what)
    if constrained and isinstance(learning_rate, numbers.Real) and learning_rate > 1:
        raise ValueError(
            f"{what}: the constrained variant mixes w <- (1-lr) w + lr·lmo, so learning_rate must "
            f"be <= 1, got {learning_rate!r}."
        )
    return optax.chain(
        _momentum(momentum, False),
        modular_step(roles_lib.Geometry.of(locals(), what), step="unit", mesh=mesh),
        optax.scale(radius),
        optax.add_decayed_weights(1.0) if constrained else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
    )


@dataclasses.dataclass(frozen=True)
class _MuonSpectral(Schatten):
    """``σ_max / √max(1, d_out/d_in)``: its dualization is Muon's ``√max(1, d_out/d_in) U Vᵀ``."""

    p: float = dataclasses.field(default=math.inf, init=False)
    name: ClassVar[str] = "muon_spectral"

    def _factor(self, d_in, d_out):
        return 1.0 / math.sqrt(max(1.0, d_out / d_in))


_MUON_NORMS = {"spectral": spectral, "rms_to_rms": rms_to_rms, "muon": _MuonSpectral}


def muon(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    beta: ArrayLike = 0.95,
    nesterov: bool = True,
    ns_coefficients: NsSchedule | ArrayLike = "muon",
    ns_steps: int = 5,
    scale: MuonScaling = "muon",
    weight_decay: ArrayLike = 0.0,
    others: Literal["adamw", "modular"] = "adamw",
    adam_learning_rate: ArrayLike | optax.Schedule | None = None,
    adam_b1: ArrayLike = 0.9,
    adam_b2: ArrayLike = 0.999,
    adam_eps: ArrayLike = 1e-8,
    adam_weight_decay: ArrayLike = 0.0,
    roles: Any = None,
    head: roles_lib.HeadSpec = None,
    labels: roles_lib.LabelSpec = None,
    heads_as_batch: bool = False,
    mesh: Mesh | None = None,
) -> optax.GradientTransformation:
    r"""Muon: momentum, then the polar factor of every hidden matrix (Jordan et al., 2024).

    Norm on hidden, conv and attention kernels (``POLAR_ROLES``, found by ``normtx.roles``; conv
    kernels, scanned stacks and attention projections are orthogonalized per matrix with their
    dimension numbers): the spectral norm scaled by ``scale`` — ``'muon'`` (default):
    ``σ_max/√max(1, d_out/d_in)``, whose dualization is Muon's ``√max(1, d_out/d_in) U Vᵀ``;
    ``'rms_to_rms'``: ``√(d_in/d_out) σ_max`` (``√(d_out/d_in) U Vᵀ``, the modular choice);
    ``'spectral'``: ``U Vᵀ``. ``U Vᵀ`` is ``ns_steps`` Newton–Schulz steps with
    ``ns_coefficients`` (``normtx.linalg.newton_schulz``; ``'muon'`` is Jordan's quintic, as in
    ``optax.contrib.muon``). The momentum is ``m_t = β m_{t-1} + (1-β) g_t``, with Nesterov the
    orthogonalized matrix is ``(1-β) g_t + β m_t`` (Jordan's reference; ``optax.contrib.muon``
    bias-corrects both terms, which only changes the first steps); decoupled weight decay
    ``weight_decay`` then the learning rate.

    The other leaves (embeddings, the head, biases, gains) are a declared choice:

    - ``others='adamw'`` (default, as in practice and ``optax.contrib.muon``): ``optax.adamw``'s
      pieces with ``adam_*`` hyperparameters (``adam_learning_rate`` defaults to
      ``learning_rate``);
    - ``others='modular'``: the same momentum and the unit modular-norm step of their roles
      (ℓ1 -> RMS for embeddings, RMS -> RMS for the head, RMS for vectors; ``modular_descent``).

    Args:
      learning_rate: a number or a schedule.
      beta: momentum β in ``[0, 1)``.
      nesterov: Nesterov momentum.
      ns_coefficients: ``'muon'``, ``'polar_express'``, ``'cubic'`` or an array ``(k, 3)``.
      ns_steps: Newton–Schulz steps (under ``optax.inject_hyperparams`` list it in
        ``static_args``).
      scale: ``'muon'``, ``'rms_to_rms'`` or ``'spectral'``.
      weight_decay: decoupled weight decay ≥ 0 of the orthogonalized leaves (and of the matrix
        leaves with ``others='modular'``).
      others: ``'adamw'`` or ``'modular'``.
      adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: AdamW's
        hyperparameters for the other leaves (``others='adamw'``).
      roles, head, labels, heads_as_batch: the roles, as in ``normtx.roles.infer``.
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation``.

    Example::

      tx = normtx.optimizers.muon(0.02, adam_learning_rate=3e-4)

    References:
      Jordan et al., *Muon: An optimizer for hidden layers* (2024); Bernstein & Newhouse,
      *Old Optimizer, New Norm*, Prop. 5 and the epilogue (2024).
    """
    what = "muon"
    _check_common(what, learning_rate, beta, nesterov, weight_decay)
    check_choice("scale", scale, tuple(_MUON_NORMS), what)
    check_choice("others", others, ("adamw", "modular"), what)
    check_int("ns_steps", ns_steps, what, minimum=1)
    check_static("ns_coefficients", ns_coefficients, what, arrays=True)
    newton_schulz_schedule(ns_coefficients, ns_steps)  # fails here for a bad schedule
    polar = functools.partial(newton_schulz, steps=ns_steps, coefficients=ns_coefficients)
    matrix = _MUON_NORMS[scale](polar=polar)
    # 'adamw': the other roles pass the partition unchanged (their AdamW step is made around it).
    skip = dict.fromkeys(set(roles_lib.ROLE_NAMES) - set(POLAR_ROLES)) if others == "adamw" else {}
    norms = {**dict.fromkeys(POLAR_ROLES, matrix), **skip}
    geometry = roles_lib.Geometry.of(locals(), what)
    if others == "modular":
        return optax.chain(
            _momentum(beta, nesterov),
            modular_step(geometry, step="unit", mesh=mesh),
            _weight_decay(weight_decay, _role_mask(geometry, lambda r: r.is_matrix)),
            optax.scale_by_learning_rate(learning_rate),
        )
    adam_learning_rate = learning_rate if adam_learning_rate is None else adam_learning_rate
    check_positive("adam_learning_rate", adam_learning_rate, what)
    check_positive("adam_eps", adam_eps, what, allow_zero=True)
    check_positive("adam_weight_decay", adam_weight_decay, what, allow_zero=True)
    for name, value in (("adam_b1", adam_b1), ("adam_b2", adam_b2)):
        check_probability(name, value, what)
    label = _role_mask(geometry, lambda r: "muon" if r.name in POLAR_ROLES else "adam")
    return optax.chain(
        optax.partition(
            {
                "muon": _momentum(beta, nesterov),
                "adam": optax.scale_by_adam(adam_b1, adam_b2, adam_eps),
            },
            label,
        ),
        modular_step(geometry, step="unit", mesh=mesh),
        optax.partition(
            {
                "muon": optax.chain(
                    _weight_decay(weight_decay), optax.scale_by_learning_rate(learning_rate)
                ),
                "adam": optax.chain(
                    _weight_decay(adam_weight_decay),
                    optax.scale_by_learning_rate(adam_learning_rate),
                ),
            },
            label,
        ),
    )
