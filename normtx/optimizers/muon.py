"""Muon: momentum, then the polar factor of every hidden matrix (Jordan et al., 2024).

``muon`` finds the hidden, conv and attention kernels by role (``normtx.roles``), orthogonalizes
them by Newton–Schulz under a spectral norm scaled as Muon scales it, and sends every other leaf
to AdamW (or to the modular norm of its role).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, Literal

import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from normtx._validation import (
    check_choice,
    check_int,
    check_positive,
    check_probability,
    check_static,
)
from normtx.geometry import POLAR_ROLES, ROLE_NAMES, Geometry, HeadSpec, LabelSpec, RoleModular
from normtx.linalg import newton_schulz
from normtx.linalg.ns_coefficients import NsSchedule, newton_schulz_schedule
from normtx.norms import Norm, Schatten, rms_to_rms, spectral
from normtx.optimizers._chains import add_weight_decay, check_common, ema_momentum, role_mask
from normtx.transforms.modular import modular_step

__all__ = ["POLAR_ROLES", "muon"]

MuonScaling = Literal["muon", "rms_to_rms", "spectral"]


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
    head: HeadSpec = None,
    labels: LabelSpec = None,
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
    check_common(what, learning_rate, beta, nesterov, weight_decay)
    check_choice("scale", scale, tuple(_MUON_NORMS), what)
    check_choice("others", others, ("adamw", "modular"), what)
    polar = polar_function(ns_coefficients, ns_steps, what)
    geometry = polar_geometry(
        _MUON_NORMS[scale](polar=polar),
        adamw=others == "adamw",
        roles=roles,
        head=head,
        labels=labels,
        heads_as_batch=heads_as_batch,
        what=what,
    )
    partition = modular_step(RoleModular(geometry, mesh=mesh), step="unit")
    if others == "modular":
        return optax.chain(
            ema_momentum(beta, nesterov),
            partition,
            add_weight_decay(weight_decay, role_mask(geometry, lambda r: r.is_matrix)),
            optax.scale_by_learning_rate(learning_rate),
        )
    return adamw_split(
        geometry,
        what,
        momentum=ema_momentum(beta, nesterov),
        direction=partition,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        adam_learning_rate=adam_learning_rate,
        adam_b1=adam_b1,
        adam_b2=adam_b2,
        adam_eps=adam_eps,
        adam_weight_decay=adam_weight_decay,
    )


def polar_function(ns_coefficients: NsSchedule | ArrayLike, ns_steps: int, what: str):
    """``G ↦ NS(G)``: ``ns_steps`` Newton–Schulz steps with ``ns_coefficients``, validated here."""
    check_int("ns_steps", ns_steps, what, minimum=1)
    check_static("ns_coefficients", ns_coefficients, what, arrays=True)
    newton_schulz_schedule(ns_coefficients, ns_steps)  # fails here for a bad schedule
    return functools.partial(newton_schulz, steps=ns_steps, coefficients=ns_coefficients)


def polar_geometry(
    norm: Norm,
    *,
    adamw: bool,
    roles: Any,
    head: HeadSpec,
    labels: LabelSpec,
    heads_as_batch: bool,
    what: str,
) -> Geometry:
    """``norm`` on the ``POLAR_ROLES``; with ``adamw`` every other role is not normed, so the polar
    step passes its leaves unchanged (their AdamW step is made around it by ``adamw_split``)."""
    skip = dict.fromkeys(set(ROLE_NAMES) - set(POLAR_ROLES)) if adamw else {}
    return Geometry(
        roles,
        norms={**dict.fromkeys(POLAR_ROLES, norm), **skip},
        head=head,
        labels=labels,
        heads_as_batch=heads_as_batch,
        what=what,
    )


def adamw_split(
    geometry: Geometry,
    what: str,
    *,
    momentum: optax.GradientTransformation,
    direction: optax.GradientTransformation,
    learning_rate: ArrayLike | optax.Schedule,
    weight_decay: ArrayLike,
    adam_learning_rate: ArrayLike | optax.Schedule | None,
    adam_b1: ArrayLike,
    adam_b2: ArrayLike,
    adam_eps: ArrayLike,
    adam_weight_decay: ArrayLike,
) -> optax.GradientTransformation:
    """Muon's split: ``momentum`` on the ``POLAR_ROLES`` leaves and Adam's moments on the others,
    then ``direction`` on the whole tree (it must pass the other leaves unchanged), then each
    group's decoupled weight decay and learning rate (``adam_learning_rate`` defaults to
    ``learning_rate``). Validates the ``adam_*`` hyperparameters."""
    adam_learning_rate = learning_rate if adam_learning_rate is None else adam_learning_rate
    check_positive("adam_learning_rate", adam_learning_rate, what)
    check_positive("adam_eps", adam_eps, what, allow_zero=True)
    check_positive("adam_weight_decay", adam_weight_decay, what, allow_zero=True)
    for name, value in (("adam_b1", adam_b1), ("adam_b2", adam_b2)):
        check_probability(name, value, what)
    label = role_mask(geometry, lambda r: "muon" if r.name in POLAR_ROLES else "adam")
    return optax.chain(
        optax.partition(
            {"muon": momentum, "adam": optax.scale_by_adam(adam_b1, adam_b2, adam_eps)}, label
        ),
        direction,
        optax.partition(
            {
                "muon": optax.chain(
                    add_weight_decay(weight_decay), optax.scale_by_learning_rate(learning_rate)
                ),
                "adam": optax.chain(
                    add_weight_decay(adam_weight_decay),
                    optax.scale_by_learning_rate(adam_learning_rate),
                ),
            },
            label,
        ),
    )
