"""What the Muon family shares: the geometry it routes by, the polar step and the AdamW split.

``muon``, ``normuon`` and ``adamuon`` orthogonalize the momentum of the hidden, conv and attention
kernels (``POLAR_ROLES``) and send every other leaf to AdamW; these are the pieces they build
their chains from, and ``normtx.optimizers.describe`` reads their routing from ``muon_route``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike
from typing_extensions import Unpack

from normtx._keywords import keywords
from normtx._numerics import to_compute
from normtx._validation import (
    check_choice,
    check_count,
    check_positive,
    check_probability,
)
from normtx.geometry import FROZEN, POLAR_ROLES, ROLE_NAMES, Geometry, Role
from normtx.geometry.infer import LABELLING, LabellingOptions
from normtx.geometry.modular import RoleModular
from normtx.linalg import NORMALIZATIONS, newton_schulz
from normtx.linalg.newton_schulz import Normalization
from normtx.linalg.ns_coefficients import NsSchedule, newton_schulz_schedule
from normtx.norms import Norm, Schatten, rms_to_rms, spectral
from normtx.optimizers._chains import (
    add_weight_decay,
    check_shapes,
    role_mask,
)
from normtx.transforms.modular import modular_step

__all__ = [
    "MuonScaling",
    "adamw_split",
    "muon_geometry",
    "muon_route",
    "polar_function",
    "polar_geometry",
    "polar_step",
]


MuonScaling = Literal["muon", "rms_to_rms", "spectral"]


@dataclasses.dataclass(frozen=True)
class _MuonSpectral(Schatten):
    """``σ_max / √max(1, d_out/d_in)``: its dualization is Muon's ``√max(1, d_out/d_in) U Vᵀ``."""

    p: float = dataclasses.field(default=math.inf, init=False)
    name: ClassVar[str] = "muon_spectral"

    def _factor(self, d_in, d_out):
        return 1.0 / math.sqrt(max(1.0, d_out / d_in))


@dataclasses.dataclass(frozen=True)
class _ConsistentRms(Schatten):
    """``σ_max / √max(d_in, d_out)``: its dualization is ``√max(d_in, d_out) U Vᵀ`` (Moonlight's
    RMS matching before its factor ρ)."""

    p: float = dataclasses.field(default=math.inf, init=False)
    name: ClassVar[str] = "consistent_rms_spectral"

    def _factor(self, d_in, d_out):
        return 1.0 / math.sqrt(max(d_in, d_out))


_MUON_NORMS = {
    "spectral": spectral,
    "rms_to_rms": rms_to_rms,
    "muon": _MuonSpectral,
    "consistent_rms": _ConsistentRms,
}


@keywords(LABELLING)
def muon_geometry(
    *,
    ns_coefficients: NsSchedule | ArrayLike = "muon",
    ns_steps: int | ArrayLike = 5,
    normalization: Normalization = "frobenius",
    scale: MuonScaling = "muon",
    consistent_rms: ArrayLike | None = None,
    others: Literal["adamw", "modular"] = "adamw",
    **labelling: Unpack[LabellingOptions],
) -> Geometry:
    """The ``Geometry`` ``muon`` builds from these arguments (validated as ``muon`` validates
    them): its scaled spectral norm on the ``POLAR_ROLES``; with ``others='adamw'`` every other
    role unnormed (AdamW's leaves), with ``'modular'`` their default norms."""
    what = "muon"
    check_choice("scale", scale, ("muon", "rms_to_rms", "spectral"), what)
    check_choice("others", others, ("adamw", "modular"), what)
    if consistent_rms is not None:
        check_positive("consistent_rms", consistent_rms, what)
        if scale != "muon":
            raise ValueError(
                f"{what}: consistent_rms sets the shape factor √max(d_in, d_out) itself; it "
                f"replaces scale, which must stay 'muon', got scale={scale!r}."
            )
    polar = polar_function(ns_coefficients, ns_steps, what, normalization=normalization)
    norm = _MUON_NORMS["consistent_rms" if consistent_rms is not None else scale](polar=polar)
    return polar_geometry(norm, adamw=others == "adamw", what=what, **labelling)


def muon_route(role: Role, others: str = "adamw") -> str:
    """Where Muon sends a leaf of this role: ``'muon'`` (momentum and the polar factor),
    ``'frozen'`` (a zero update), else ``'adam'`` (``others='adamw'``) or ``'modular'``."""
    if role.name in POLAR_ROLES:
        return "muon"
    if role.name == FROZEN:
        return FROZEN
    return "adam" if others == "adamw" else "modular"


def polar_step(
    geometry: Geometry, mesh: Mesh | None, *, adaptive: bool, rms: ArrayLike | None
) -> optax.GradientTransformation:
    """The unit step of the polar leaves' norm (``c U Vᵀ``, other leaves as their norm says),
    then, on the ``POLAR_ROLES`` leaves, times ``<M, U Vᵀ>`` (``adaptive``) and ``rms``."""
    partition = modular_step(RoleModular(geometry, mesh=mesh), step="unit")
    if not adaptive and rms is None:
        return partition

    def update_fn(updates, state, params=None):
        del params
        directions, state = partition.update(updates, state)
        m_leaves, treedef = jax.tree_util.tree_flatten(updates)
        out = []
        for a, m, d in zip(
            geometry.assign(updates), m_leaves, treedef.flatten_up_to(directions), strict=True
        ):
            if a.role.name not in POLAR_ROLES or a.norm is None:
                out.append(d)
                continue
            dc = to_compute(d)
            factor = jnp.ones([], dc.dtype)
            if adaptive:
                # d = U Vᵀ / f (f the norm's factor): <M, U Vᵀ> = f <M, d>.
                f = a.norm._polar_plan(tuple(jnp.shape(m)), a.path)[2]
                factor = f * jnp.sum(to_compute(m).astype(dc.dtype) * dc)
            if rms is not None:
                factor = factor * jnp.asarray(rms, dc.dtype)
            out.append((factor * dc).astype(d.dtype))
        return jax.tree_util.tree_unflatten(treedef, out), state

    return optax.GradientTransformation(partition.init, update_fn)


def polar_function(
    ns_coefficients: NsSchedule | ArrayLike,
    ns_steps: int | ArrayLike,
    what: str,
    *,
    normalization: Normalization = "frobenius",
):
    """``G ↦ NS(G)``: ``ns_steps`` Newton–Schulz steps with ``ns_coefficients``, validated here.

    Both may be arrays traced by ``optax.inject_hyperparams`` (``newton_schulz`` then iterates a
    step count and coefficients known at run time); concrete values are checked at once.
    """
    ns_steps = check_count("ns_steps", ns_steps, what, minimum=1)
    check_choice("normalization", normalization, NORMALIZATIONS, what)
    if not isinstance(ns_steps, jax.core.Tracer) and not isinstance(
        ns_coefficients, jax.core.Tracer
    ):
        newton_schulz_schedule(ns_coefficients, ns_steps)  # fails here for a bad schedule
    return functools.partial(
        newton_schulz, steps=ns_steps, coefficients=ns_coefficients, normalization=normalization
    )


def polar_geometry(
    norm: Norm, *, adamw: bool, what: str, **labelling: Unpack[LabellingOptions]
) -> Geometry:
    """``norm`` on the ``POLAR_ROLES``; with ``adamw`` every other role is not normed, so the polar
    step passes its leaves unchanged (their AdamW step is made around it by ``adamw_split``).
    ``labelling``: every keyword of ``LABELLING``."""
    skip = dict.fromkeys(set(ROLE_NAMES) - set(POLAR_ROLES)) if adamw else {}
    norms = {**dict.fromkeys(POLAR_ROLES, norm), **skip}
    return Geometry(norms=norms, what=what, **labelling)


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
    weight_decay_mask: Any = None,
    adam_eps_root: ArrayLike = 0.0,
    adam_nesterov: bool = False,
    mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    """Muon's split: ``momentum`` on the ``POLAR_ROLES`` leaves and Adam's moments on the others,
    then ``direction`` on the whole tree (it must pass the other leaves unchanged), then each
    group's decoupled weight decay (``weight_decay_mask`` masks the polar group's) and learning
    rate (``adam_learning_rate`` defaults to ``learning_rate``). Leaves labelled ``'frozen'`` get
    a zero update and no state. Validates the ``adam_*`` hyperparameters."""
    adam_learning_rate = learning_rate if adam_learning_rate is None else adam_learning_rate
    check_positive("adam_learning_rate", adam_learning_rate, what)
    check_positive("adam_eps", adam_eps, what, allow_zero=True)
    check_positive("adam_eps_root", adam_eps_root, what, allow_zero=True)
    check_positive("adam_weight_decay", adam_weight_decay, what, allow_zero=True)
    for name, value in (("adam_b1", adam_b1), ("adam_b2", adam_b2)):
        check_probability(name, value, what)
    label = role_mask(geometry, muon_route)
    adam = optax.scale_by_adam(
        adam_b1, adam_b2, adam_eps, adam_eps_root, mu_dtype=mu_dtype, nesterov=adam_nesterov
    )
    return optax.chain(
        check_shapes(what),
        optax.partition({"muon": momentum, "adam": adam, FROZEN: optax.set_to_zero()}, label),
        direction,
        optax.partition(
            {
                "muon": optax.chain(
                    add_weight_decay(weight_decay, weight_decay_mask),
                    optax.scale_by_learning_rate(learning_rate),
                ),
                "adam": optax.chain(
                    add_weight_decay(adam_weight_decay),
                    optax.scale_by_learning_rate(adam_learning_rate),
                ),
                FROZEN: optax.set_to_zero(),
            },
            label,
        ),
    )
