"""Muon: momentum, then the polar factor of every hidden matrix (Jordan et al., 2024).

``muon`` finds the hidden, conv and attention kernels by role (``normtx.roles``), orthogonalizes
them by Newton–Schulz under a spectral norm scaled as Muon scales it, and sends every other leaf
to AdamW (or to the modular norm of its role).
"""

from __future__ import annotations

from typing import Any, Literal

import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike
from typing_extensions import Unpack

from normtx._keywords import keywords
from normtx._validation import check_bool
from normtx.geometry import POLAR_ROLES
from normtx.geometry.infer import LABELLING, LabellingOptions
from normtx.linalg.newton_schulz import Normalization
from normtx.linalg.ns_coefficients import NsSchedule
from normtx.optimizers._chains import (
    check_common,
    check_mu_dtype,
    ema_momentum,
    matrix_weight_decay,
    role_chain,
)
from normtx.optimizers._muon_parts import MuonScaling, adamw_split, muon_geometry, polar_step

__all__ = ["POLAR_ROLES", "muon"]


@keywords(LABELLING)
def muon(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    beta: ArrayLike = 0.95,
    nesterov: bool = True,
    bias_correction: bool = False,
    ns_coefficients: NsSchedule | ArrayLike = "muon",
    ns_steps: int | ArrayLike = 5,
    normalization: Normalization = "frobenius",
    scale: MuonScaling = "muon",
    consistent_rms: ArrayLike | None = None,
    adaptive: bool = False,
    weight_decay: ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: DTypeLike | None = None,
    others: Literal["adamw", "modular"] = "adamw",
    adam_learning_rate: ArrayLike | optax.Schedule | None = None,
    adam_b1: ArrayLike | None = None,
    adam_b2: ArrayLike | None = None,
    adam_eps: ArrayLike | None = None,
    adam_eps_root: ArrayLike | None = None,
    adam_nesterov: bool | None = None,
    adam_weight_decay: ArrayLike | None = None,
    mesh: Mesh | None = None,
    **labelling: Unpack[LabellingOptions],
) -> optax.GradientTransformation:
    r"""Muon: momentum, then the polar factor of every hidden matrix (Jordan et al., 2024).

    Norm on hidden, conv and attention kernels (``POLAR_ROLES``, found by ``normtx.roles``; conv
    kernels, scanned stacks and attention projections are orthogonalized per matrix with their
    dimension numbers): the spectral norm scaled by ``scale`` — ``'muon'`` (default):
    ``σ_max/√max(1, d_out/d_in)``, whose dualization is Muon's ``√max(1, d_out/d_in) U Vᵀ``;
    ``'rms_to_rms'``: ``√(d_in/d_out) σ_max`` (``√(d_out/d_in) U Vᵀ``, the modular choice);
    ``'spectral'``: ``U Vᵀ``. ``consistent_rms=ρ`` (Moonlight's AdamW-RMS matching, Liu et al.
    2025, eq. 4; ``optax.contrib.muon``'s ``consistent_rms``) takes ``ρ √max(d_in, d_out) U Vᵀ``
    instead (the unit step of ``σ_max / (ρ √max(d_in, d_out))``): an update of RMS about ρ for
    every shape, 0.2 matching AdamW's. ``U Vᵀ`` is ``ns_steps`` Newton–Schulz steps with
    ``ns_coefficients`` (``normtx.linalg.newton_schulz``; ``'muon'`` is Jordan's quintic, as in
    ``optax.contrib.muon``) from ``G`` normalised by ``normalization``.
    ``adaptive=True`` multiplies each leaf's step by ``<M, U Vᵀ>``, the dual (nuclear) norm of
    its momentum ``M`` read off the polar factor — the Prop. 1 step size of the spectral norm,
    per leaf (anthology Prop. 5; ``optax.contrib.muon``'s ``adaptive``).

    The momentum is ``m_t = β m_{t-1} + (1-β) g_t`` (its buffer in ``mu_dtype``); with Nesterov
    the orthogonalized matrix is ``(1-β) g_t + β m_t`` (Jordan's reference). With
    ``bias_correction=True`` (``optax.contrib.muon``'s form) it is ``m_t/(1-β^t)``, with Nesterov
    ``β m_t/(1-β^{t+1}) + (1-β) g_t/(1-β^t)``: the first step is the same polar factor, but
    Nesterov's two terms get different corrections, which changes the direction of the next
    steps.
    Then decoupled weight decay ``weight_decay`` (where ``weight_decay_mask`` says) and the
    learning rate. Leaves labelled ``'frozen'`` get a zero update and no state.

    The other leaves (embeddings, the head, biases, gains) are a declared choice:

    - ``others='adamw'`` (default): ``optax.adamw``'s pieces with the ``adam_*``
      hyperparameters (``adam_learning_rate`` defaults to ``learning_rate``; ``mu_dtype`` is
      Adam's too). ``optax.contrib.muon`` also sends the other leaves to AdamW, but by rank: by
      default *every* 2-D leaf, embeddings and the head included, is orthogonalized there, and
      conv and attention kernels go to Adam. ``normtx.roles.muon_dimension_numbers(params)``
      gives it normtx's routing.
    - ``others='modular'``: the same momentum and the unit modular-norm step of their roles
      (ℓ1 -> RMS for embeddings, RMS -> RMS for the head, RMS for vectors; ``modular_descent``).

    **Reproducing optax.contrib.muon.** With the same routing, ``muon(lr, bias_correction=True,
    adam_nesterov=True)`` is ``optax.contrib.muon(lr, muon_weight_dimension_numbers=
    normtx.roles.muon_dimension_numbers(params))``, and optax's ``consistent_rms``,
    ``adaptive``, ``weight_decay``/``weight_decay_mask``, ``mu_dtype``, ``adam_*``, ``ns_steps``
    and ``preconditioning='schatten'``/``'aol'`` (``normalization='schatten4'``/``'aol'``) map to
    the arguments of the same names; optax's ``eps`` is ``adam_eps`` here (normtx's normalisation before
    Newton–Schulz, ``G/max|G|`` then ``/(‖·‖_F + 1e-7)``, is scale free, where optax divides by
    ``‖G‖_F + eps``: the two agree to ``eps/‖G‖_F`` relative). The updates then agree to
    float32 rounding (tested over 50 steps of a Flax transformer).

    Args:
      learning_rate: a number or a schedule.
      beta: momentum β in ``[0, 1)``.
      nesterov: Nesterov momentum.
      bias_correction: divide the momentum by ``1 - β^t`` (``optax.contrib.muon``'s form).
      ns_coefficients: ``'muon'``, ``'polar_express'``, ``'cubic'`` or an array ``(k, 3)``.
      ns_steps: Newton–Schulz steps, an int ``>= 1``. Works with ``optax.inject_hyperparams``
        (no ``static_args`` needed): injected, the step count and the coefficients are read at
        run time (a ``lax.fori_loop``).
      normalization: the scaling of ``G`` before Newton–Schulz: ``'frobenius'`` (default),
        ``'schatten4'`` (``‖G‖_{S₄}``, closer to σ_max) or ``'aol'`` (rows rescaled so that
        σ_max <= 1; the polar factor of the rescaled ``G``); ``normtx.linalg.newton_schulz``.
      scale: ``'muon'``, ``'rms_to_rms'`` or ``'spectral'``.
      consistent_rms: ``None`` or ρ > 0: the step ``ρ √max(d_in, d_out) U Vᵀ`` (``scale`` must
        then be ``'muon'``).
      adaptive: multiply each orthogonalized leaf's step by ``<M, U Vᵀ>``.
      weight_decay: decoupled weight decay ≥ 0 of the orthogonalized leaves (and of the matrix
        leaves with ``others='modular'``).
      weight_decay_mask: where ``weight_decay`` applies, optax's convention: ``None`` (those
        leaves), or a pytree of bools (or a prefix of one) or a callable ``params -> such a
        pytree``. As in ``optax.contrib.muon`` it does not touch ``adam_weight_decay``.
      mu_dtype: dtype of the momentum buffers (and of Adam's first moment); ``None``: each
        parameter's dtype.
      others: ``'adamw'`` or ``'modular'``.
      adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_eps_root, adam_weight_decay: AdamW's
        hyperparameters for the other leaves, by default ``learning_rate``, 0.9, 0.999, 1e-8, 0
        and 0. ``others='adamw'`` only: with ``others='modular'`` they would have no effect, and
        giving any of them is an error.
      adam_nesterov: Nesterov momentum in Adam (NAdam; ``optax.contrib.muon`` passes its own
        ``nesterov`` to Adam); default ``False``, ``others='adamw'`` only.
      roles, head, labels, heads_as_batch: the roles, as in ``normtx.roles.infer``.
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors are computed for all
        leaves together by the owner-device strategy over its devices (``normtx.sharding``)
        instead of every device computing every one.

    Returns:
      An ``optax.GradientTransformation``. ``normtx.optimizers.describe(params, 'muon', **same
      arguments)`` lists each leaf's role and route (polar factor, AdamW or the modular step).

    Example:
      The hidden kernel steps by ``-lr`` times Newton–Schulz's ``U Vᵀ`` (it keeps the singular
      vectors of ``G``; Jordan's quintic leaves the singular values in about [0.7, 1.2]); the
      head and the bias take AdamW's first step, ``-adam_learning_rate · sign(g)``.

      >>> tx = normtx.optimizers.muon(0.1, adam_learning_rate=0.01)
      >>> zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
      >>> params = {"hidden": {"kernel": zeros(2, 2), "bias": zeros(2)},
      ...           "head": {"kernel": zeros(2, 2)}}
      >>> grads = {"hidden": {"kernel": jnp.array([[1.2, 0.8], [-1.6, 0.6]], jnp.float32),
      ...                     "bias": jnp.array([3.0, -4.0], jnp.float32)},
      ...          "head": {"kernel": jnp.array([[0.3, -2.0], [5.0, -0.1]], jnp.float32)}}
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(updates["head"]["kernel"], np.float64), 6))
      [[-0.01  0.01]
       [-0.01  0.01]]
      >>> print(np.round(np.asarray(updates["hidden"]["bias"], np.float64), 6))
      [-0.01  0.01]
      >>> def polar(a):  # U Vᵀ and the singular values of a, by a float64 SVD
      ...     u, s, vt = np.linalg.svd(np.asarray(a, np.float64))
      ...     return u @ vt, s
      >>> q, s = polar(updates["hidden"]["kernel"] / -0.1)
      >>> bool(np.allclose(q, polar(grads["hidden"]["kernel"])[0], atol=1e-5))
      True
      >>> bool(((0.6 < s) & (s < 1.25)).all())
      True

      Moonlight's settings: ``muon(lr, consistent_rms=0.2, weight_decay=0.1)``.

    References:
      Jordan et al., *Muon: An optimizer for hidden layers* (2024); Bernstein & Newhouse,
      *Old Optimizer, New Norm*, Prop. 1, 5 and the epilogue (2024); Liu et al., *Muon is
      Scalable for LLM Training*, eq. 4 (2025).
    """
    what = "muon"
    check_common(what, learning_rate, beta, nesterov, weight_decay)
    check_bool("bias_correction", bias_correction, what)
    check_bool("adaptive", adaptive, what)
    check_mu_dtype(mu_dtype, what)
    adam = {
        "adam_learning_rate": adam_learning_rate,
        "adam_b1": adam_b1,
        "adam_b2": adam_b2,
        "adam_eps": adam_eps,
        "adam_eps_root": adam_eps_root,
        "adam_nesterov": adam_nesterov,
        "adam_weight_decay": adam_weight_decay,
    }
    geometry = muon_geometry(
        ns_coefficients=ns_coefficients,
        ns_steps=ns_steps,
        normalization=normalization,
        scale=scale,
        consistent_rms=consistent_rms,
        others=others,
        **labelling,
    )
    if others == "modular":
        given = [f"{k}={v!r}" for k, v in adam.items() if v is not None]
        if given:
            raise ValueError(
                f"{what}: {', '.join(given)} would have no effect with others='modular' (the "
                "leaves Muon does not orthogonalize take the modular step of their roles, not "
                "AdamW); pass others='adamw' to use them, or leave them unset."
            )
    adam = {k: _ADAM_DEFAULTS.get(k) if v is None else v for k, v in adam.items()}
    check_bool("adam_nesterov", adam["adam_nesterov"], what)
    direction = polar_step(geometry, mesh, adaptive=adaptive, rms=consistent_rms)
    momentum = ema_momentum(beta, nesterov, bias_correction=bias_correction, mu_dtype=mu_dtype)
    if others == "modular":
        return role_chain(
            what,
            geometry,
            momentum,
            direction,
            matrix_weight_decay(geometry, weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        )
    return adamw_split(
        geometry,
        what,
        momentum=momentum,
        direction=direction,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        mu_dtype=mu_dtype,
        **adam,
    )


_ADAM_DEFAULTS = {
    "adam_b1": 0.9,
    "adam_b2": 0.999,
    "adam_eps": 1e-8,
    "adam_eps_root": 0.0,
    "adam_nesterov": False,
    "adam_weight_decay": 0.0,
}  # adam_learning_rate: None is learning_rate (adamw_split)
