"""Steepest descent under the modular norm of a network (``modular_descent``) and Scion.

The norm of each leaf comes from its role (``normtx.roles``): one ``Geometry`` per optimizer,
resolved once per tree structure, read by the partition and, with escape velocity, by the
step-size rule that measures the same modular norm (anthology Prop. 7, Story III, epilogue).
"""

from __future__ import annotations

import numbers
from typing import Literal

import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike
from typing_extensions import Unpack

from normtx._keywords import keywords
from normtx._validation import check_bool, check_positive, check_probability
from normtx.geometry.assign import ROLE_GEOMETRY, Geometry, RoleGeometryOptions
from normtx.geometry.modular import RoleModular
from normtx.optimizers._chains import (
    DESCENT,
    DescentOptions,
    check_descent,
    check_mu_dtype,
    ema_momentum,
    matrix_weight_decay,
    role_chain,
    skip_frozen,
    zero_frozen,
)
from normtx.transforms.escape_velocity import escape_velocity_lr
from normtx.transforms.modular import TargetRmsSpec, modular_direction, modular_step

__all__ = ["modular_descent", "scion"]


class _ModularDescentOptions(DescentOptions, RoleGeometryOptions, total=False):
    """``modular_descent``'s keywords: a descent's and a whole geometry's."""


@keywords(DESCENT, ROLE_GEOMETRY, momentum=0.9)
def modular_descent(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    escape_velocity: bool = False,
    init_lr: ArrayLike | None = None,
    rule: Literal["prodigy", "cosine"] | None = None,
    target_rms: TargetRmsSpec = None,
    mesh: Mesh | None = None,
    **kw: Unpack[_ModularDescentOptions],
) -> optax.GradientTransformation:
    r"""Steepest descent under the modular norm of a network (anthology Prop. 7 and epilogue).

    Norm: ``max_l s_l N_l(W_l)`` with ``N_l`` and ``s_l`` by role (``normtx.roles``): RMS -> RMS
    for hidden, attention, conv and head kernels, ℓ1 -> RMS for embeddings, RMS for biases and
    gains (``normtx.roles.default_norms``; ``normtx.roles.describe(params)`` prints the table).
    The chain is momentum (EMA ``m_t = β m_{t-1} + (1-β) g_t``, Nesterov optional), then
    ``modular_norm_partition`` — ``step='unit'``: ``dualize_l(m_l)/s_l`` (a step of modular norm 1);
    ``step='dual_norm'``: the Prop. 7 step ``(η/s_l) dualize_l(m_l)``,
    ``η = Σ_k N_k†(m_k)/(s_k λ)`` — then decoupled weight decay ``+ λ_wd w`` on the matrix leaves,
    then the learning rate. Leaves labelled ``'frozen'`` (``labels={'embed': 'frozen'}``) get a
    zero update and no momentum. With ``escape_velocity=True`` the direction (weight decay included) is
    scaled by ``escape_velocity_lr``'s step size, measured in the same modular norm
    (``normtx.modular_norm`` with the same arguments), and ``learning_rate`` multiplies it (1.0, or
    a schedule peaking at 1).

    Args:
      learning_rate: a number or a schedule.
      momentum: β in ``[0, 1)``; 0 is plain steepest descent.
      nesterov: Nesterov momentum ``(1-β) g_t + β m_t``.
      weight_decay: decoupled weight decay ≥ 0 on matrix roles (not biases or gains).
      step: ``'unit'`` (default) or ``'dual_norm'``. The default differs from
        ``modular_norm_partition``'s (``'dual_norm'``) on purpose: that transform is the whole
        Prop. 7 method, λ its only step size; here a learning rate (and momentum) follows, and
        with ``'unit'`` the learning rate is the modular-norm length of every step (as in Muon
        and Scion), where ``'dual_norm'`` would multiply it by ``Σ_k N_k†(m_k)/(s_k λ)`` of the
        momentum, a factor that follows the gradients' scale through training.
      sharpness: λ > 0, default 1.0; ``step='dual_norm'`` only (with ``step='unit'`` it would
        have no effect, and giving it is an error).
      escape_velocity: scale the steps by ``normtx.escape_velocity_lr`` (``update`` then needs
        ``params``).
      init_lr: η_0 > 0 of the escape-velocity rule, default 1e-3 (``escape_velocity=True``
        only, as ``rule``: without it either is an error). η is the length of each step in the
        modular norm, whose useful values are about 0.01–0.2 whatever the width; the rule
        grows η at most ×2 per step, so from Prodigy's 1e-6 a short run spends its first 15–30
        steps warming up. Measured on a small character-level transformer and an MLP on the
        digits data: 1e-3 against 1e-6 reaches 90% of the best run's loss drop in 64
        steps instead of 94 (of 100) on the transformer, 46 instead of 74 on the MLP, and ends
        lower on every run; 1e-2 overshoots the MLP's best η for good (η never decreases).
      rule: ``'prodigy'`` (default: η never decreases, eq. 28) or ``'cosine'``
        (``η_{t+1} = η_t (1 + cos θ_t)``: η falls when the gradient turns back), each as the
        anthology writes it (see ``normtx.escape_velocity_lr``).
      weight_decay_mask: where ``weight_decay`` applies: ``None`` (the matrix roles) or, in
        optax's convention, a pytree of bools (or a prefix of one) or a callable
        ``params -> such a pytree``, which replaces the default.
      mu_dtype: dtype of the momentum buffer (e.g. ``jnp.bfloat16``); ``None``: each
        parameter's dtype.
      roles, norms, scales, masses, head, labels, heads_as_batch: the geometry, as in
        ``normtx.modular_norm_partition``.
      target_rms: ``None`` (default), ``'init'`` or ``{role name: 'init' or r > 0}``: measure
        each chosen leaf's norm relative to an RMS ``r_l`` (``'init'``: the embedding, bias and
        gain leaves' RMS at ``init``, so every unit step moves an embedding row by the same
        fraction of its initial RMS whatever the width, e.g. with Flax's ``1/√width`` rows), as
        in ``normtx.modular_norm_partition``; the escape-velocity rule measures the same
        rescaled norm.
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation``. Under ``optax.inject_hyperparams`` pass callables
      (``labels``, a ``sharpness`` that is not a schedule) in ``static_args``.

    Example:
      With ``step='unit'`` every leaf steps by ``lr`` in its role's norm: the embedding's rows
      by ``-lr · g_i/rms(g_i)`` (ℓ1 -> RMS), the bias by ``-lr · b/rms(b)`` (RMS), the head's
      kernel by ``-lr · √(d_out/d_in) U Vᵀ`` (RMS -> RMS; Newton–Schulz's ``U Vᵀ``, which keeps
      the singular vectors of ``G`` and puts its singular values near 1).

      >>> tx = normtx.optimizers.modular_descent(0.1)
      >>> zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
      >>> params = {"embed": {"embedding": zeros(2, 2)},
      ...           "head": {"kernel": zeros(2, 2), "bias": zeros(2)}}
      >>> grads = {"embed": {"embedding": jnp.array([[0.5, -0.5], [2.0, 2.0]], jnp.float32)},
      ...          "head": {"kernel": jnp.array([[1.2, 0.8], [-1.6, 0.6]], jnp.float32),
      ...                   "bias": jnp.array([0.5, -0.5], jnp.float32)}}
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(updates["embed"]["embedding"], np.float64), 4))
      [[-0.1  0.1]
       [-0.1 -0.1]]
      >>> print(np.round(np.asarray(updates["head"]["bias"], np.float64), 4))
      [-0.1  0.1]
      >>> u, _, vt = np.linalg.svd(np.asarray(grads["head"]["kernel"], np.float64))
      >>> step = np.asarray(updates["head"]["kernel"], np.float64) / -0.1  # ≈ U Vᵀ (d_in = d_out)
      >>> bool(np.abs(step - u @ vt).max() < 0.2)
      True

      With ``target_rms='init'`` the steps are relative to the weights' RMS at ``init``: an
      embedding table of RMS 0.3 moves each row by ``0.3 · lr`` in RMS; the bias, zero at
      ``init``, keeps its unit step.

      >>> tx = normtx.optimizers.modular_descent(0.1, target_rms="init")
      >>> params["embed"]["embedding"] = jnp.full((2, 2), 0.3, jnp.float32)
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(updates["embed"]["embedding"], np.float64), 4))
      [[-0.03  0.03]
       [-0.03 -0.03]]
      >>> round(float(jnp.sqrt(jnp.mean(updates["head"]["bias"] ** 2))), 6)  # RMS step: lr
      0.1

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 7, 8, Story III and the epilogue
      (2024); Large et al., *Scalable Optimization in the Modular Norm* (2024).
    """
    what = "modular_descent"
    sharpness = check_descent(what, learning_rate, kw)
    check_bool("escape_velocity", escape_velocity, what)
    if not escape_velocity:
        for name, value in (("init_lr", init_lr), ("rule", rule)):
            if value is not None:
                raise ValueError(
                    f"{what}: {name}={value!r} has no effect without escape_velocity=True (it is "
                    "a setting of the escape-velocity step size); pass escape_velocity=True to "
                    f"use it, or leave {name} unset."
                )
    geometry = Geometry(**ROLE_GEOMETRY.take(kw), what=what)
    mod = RoleModular(geometry, mesh=mesh)
    momentum = ema_momentum(kw["momentum"], kw["nesterov"], mu_dtype=kw["mu_dtype"])
    after = matrix_weight_decay(geometry, kw["weight_decay"], kw["weight_decay_mask"])
    if escape_velocity:
        # One geometry, one modular norm: the rule measures the gradient in the norm the partition
        # descends, and both run in the same stacked programs (``modular_direction``).
        direction = modular_direction(
            mod,
            before=skip_frozen(geometry, momentum),
            after=after,
            sharpness=sharpness,
            step=kw["step"],
            target_rms=target_rms,
        )
        scaled = escape_velocity_lr(
            direction,
            norm=mod,
            init_lr=1e-3 if init_lr is None else init_lr,
            rule="prodigy" if rule is None else rule,
        )
        return optax.chain(
            scaled, optax.scale_by_learning_rate(learning_rate), zero_frozen(geometry)
        )
    return role_chain(
        what,
        geometry,
        momentum,
        modular_step(mod, sharpness=sharpness, step=kw["step"], target_rms=target_rms),
        after,
        optax.scale_by_learning_rate(learning_rate),
    )


@keywords(ROLE_GEOMETRY)
def scion(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    radius: ArrayLike = 1.0,
    momentum: ArrayLike = 0.9,
    constrained: bool = True,
    mu_dtype: DTypeLike | None = None,
    target_rms: TargetRmsSpec = None,
    mesh: Mesh | None = None,
    **kw: Unpack[RoleGeometryOptions],
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

    Leaves labelled ``'frozen'`` get a zero update and no momentum. Scion's reference settings put
    the spectral RMS -> RMS norm on hidden layers (the default here) and ``sign`` on the head:
    ``norms={'head': normtx.norms.linf()}`` with a larger scale for the head's radius, e.g.
    ``scales={'head': 1/60}`` for Scion's ``radius·60``.

    Args:
      learning_rate: γ, a number (≤ 1 when constrained) or a schedule.
      radius: ρ > 0.
      momentum: β in ``[0, 1)``.
      constrained: the constrained (Frank–Wolfe) or the unconstrained variant.
      mu_dtype: dtype of the momentum buffer; ``None``: each parameter's dtype.
      roles, norms, scales, masses, target_rms, head, labels, heads_as_batch: as in
        ``normtx.modular_norm_partition`` (``target_rms='init'``: the ball's radius of an
        embedding, bias or gain leaf is ρ times its RMS at ``init``).
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation`` (``update`` needs ``params`` when constrained).

    Example:
      Sign on the head (``norms={'head': linf()}``): ``lmo(d) = -ρ · sign(g)``, so from
      ``w = 1`` the constrained step gives ``(1-γ) · 1 + γ · (-2 sign(g)) = 0.5 ∓ 1``.

      >>> tx = normtx.optimizers.scion(0.5, radius=2.0, norms={"head": norms.linf()})
      >>> params = {"head": {"kernel": jnp.ones((2, 2), jnp.float32)}}
      >>> grads = {"head": {"kernel": jnp.array([[0.3, -2.0], [5.0, -0.1]], jnp.float32)}}
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(optax.apply_updates(params, updates)["head"]["kernel"])
      [[-0.5  1.5]
       [-0.5  1.5]]

    References:
      Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls & Cevher, *Training Deep Learning Models
      with Norm-Constrained LMOs*, Algorithms 1–2 (2025).
    """
    what = "scion"
    check_positive("learning_rate", learning_rate, what)
    check_positive("radius", radius, what)
    check_probability("momentum", momentum, what)
    check_bool("constrained", constrained, what)
    check_mu_dtype(mu_dtype, what)
    if constrained and isinstance(learning_rate, numbers.Real) and learning_rate > 1:
        raise ValueError(
            f"{what}: the constrained variant mixes w <- (1-lr) w + lr·lmo, so learning_rate must "
            f"be <= 1, got {learning_rate!r}."
        )
    geometry = Geometry(**kw, what=what)
    return role_chain(
        what,
        geometry,
        ema_momentum(momentum, False, mu_dtype=mu_dtype),
        modular_step(RoleModular(geometry, mesh=mesh), step="unit", target_rms=target_rms),
        optax.scale(radius),
        optax.add_decayed_weights(1.0) if constrained else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
    )
