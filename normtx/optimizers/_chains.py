"""The pieces the ready optimizers chain: momentum, weight decay, masks by role, validation."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, Literal

import jax
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from normtx._validation import check_bool, check_choice, check_positive, check_probability
from normtx.geometry import Geometry, Role
from normtx.norms import NormSpec
from normtx.transforms.dualize import dualize, scale_by_dual_norm

Step = Literal["unit", "dual_norm"]
"""``'unit'``: the dualized direction alone (a step of norm 1, times the learning rate);
``'dual_norm'``: the Prop. 1/7 step, the direction times ``Σ_k N_k†(m_k)/λ``."""


def ema_momentum(beta: ArrayLike, nesterov: bool) -> optax.GradientTransformation:
    """``m_t = β m_{t-1} + (1-β) g_t``; Nesterov: ``(1-β) g_t + β m_t`` (Muon's reference form).

    ``optax.trace`` followed by ``optax.scale(1 - β)``: an EMA of the gradient without bias
    correction. ``β = 0`` (a number) is the gradient itself, with no buffer: no state to keep,
    and a NaN gradient cannot stay in one (``0 · NaN = NaN`` would poison every later step).
    """
    if isinstance(beta, numbers.Real) and beta == 0:
        return optax.identity()
    return optax.chain(optax.trace(decay=beta, nesterov=nesterov), optax.scale(1.0 - beta))


def add_weight_decay(weight_decay: ArrayLike, mask: Any = None) -> optax.GradientTransformation:
    """Decoupled weight decay ``+ λ w`` before the learning rate (AdamW); nothing for ``λ = 0``."""
    if isinstance(weight_decay, numbers.Real) and weight_decay == 0:
        return optax.identity()
    return optax.add_decayed_weights(weight_decay, mask)


def steepest(norm: NormSpec, step: Step, sharpness: ArrayLike, what: str, mesh: Mesh | None):
    check_choice("step", step, ("unit", "dual_norm"), what)
    if step == "unit":
        return dualize(norm, mesh=mesh)
    return scale_by_dual_norm(norm, sharpness=sharpness, scope="tree", mesh=mesh)


def check_common(what: str, learning_rate, momentum, nesterov, weight_decay) -> None:
    """Validates the hyperparameters every momentum-based optimizer shares."""
    check_positive("learning_rate", learning_rate, what)
    check_probability("momentum", momentum, what)
    check_bool("nesterov", nesterov, what)
    check_positive("weight_decay", weight_decay, what, allow_zero=True)


def descent(
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
    check_common(what, learning_rate, momentum, nesterov, weight_decay)
    return optax.chain(
        ema_momentum(momentum, nesterov),
        steepest(norm, step, sharpness, what, mesh),
        add_weight_decay(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def role_mask(geometry: Geometry, keep: Callable[[Role], Any]) -> Any:
    """``params -> tree of keep(role)``, the roles resolved as the partition resolves them."""
    return lambda params: jax.tree.map(keep, geometry.resolve(params))
