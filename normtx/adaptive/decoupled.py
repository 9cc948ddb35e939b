r"""Fully decoupled weight decay (lecture notes §4.3–4.4; Wortsman et al. 2024).

Coupled AdamW (Loshchilov & Hutter; ``optax.adamw``) multiplies the decay by the learning rate:

.. math:: w_{t+1} = w_t - \eta_t\,\bigl(\hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda w_t\bigr).

The fully decoupled form keeps the peak learning rate ``η_max`` and the peak decay ``λ_max`` apart
and shares only the schedule multiplier ``s_t ∈ [0, 1]``:

.. math:: w_{t+1} = w_t - s_t\,\bigl(\eta_{\max}\,\hat m_t / (\sqrt{\hat v_t} + \epsilon)
          + \lambda_{\max} w_t\bigr),

so the per-step decay ``s_t λ_max`` does not change when ``η_max`` is tuned. The notes print the
decay as ``- λ_max w_t`` inside the bracket, which would grow the weights: an erratum, and this
module implements the decaying sign above.

The two forms are the same optimizer under the reparametrisation ``η_t = s_t η_max`` and
``λ = λ_max / η_max``: ``adamw_fully_decoupled(learning_rate=η_max, weight_decay=λ_max,
schedule=s)`` equals ``optax.adamw(learning_rate=lambda c: η_max s(c), weight_decay=λ_max/η_max)``
step for step (normtx's test suite checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from normtx._numerics import compute_dtype
from normtx._pytree import broadcast_to_leaves
from normtx._validation import check_positive, check_probability, value_at
from normtx.adaptive._leaves import NEEDS_PARAMS, check_float_leaves

__all__ = ["DecoupledWeightDecayState", "adamw_fully_decoupled", "add_decoupled_weight_decay"]

MaskSpec = Any | Callable[[Any], Any] | None


class DecoupledWeightDecayState(NamedTuple):
    """State of ``add_decoupled_weight_decay``."""

    count: jax.Array  # int32 scalar: steps taken; step t = count + 1 uses s_t = schedule(count)


def _check_peak(name: str, value: Any, what: str, *, allow_zero: bool) -> None:
    if callable(value) and not hasattr(value, "dtype"):
        raise ValueError(
            f"{what}: {name} is the peak value ({'η_max' if name == 'learning_rate' else 'λ_max'}) "
            "and must be a number; the decay is decoupled only if both peaks share one schedule, "
            "so pass the time dependence as schedule=s (a multiplier in [0, 1])."
        )
    check_positive(name, value, what, allow_zero=allow_zero)


def add_decoupled_weight_decay(
    *,
    learning_rate: ArrayLike,
    weight_decay: ArrayLike,
    schedule: optax.Schedule | None = None,
    mask: MaskSpec = None,
) -> optax.GradientTransformation:
    r"""Turns a direction ``d`` into the fully decoupled step ``-s_t (η_max d + λ_max w)``.

    .. math:: u_t = -s_t\,(\eta_{\max}\, d_t + \lambda_{\max}\, w_t)

    This is the last element of a chain (it flips the sign, like
    ``optax.scale_by_learning_rate``): ``optax.chain(optax.scale_by_adam(), add_decoupled_weight_
    decay(...))`` is ``adamw_fully_decoupled``, and any other direction (Shampoo, a dualized
    gradient) gets fully decoupled decay the same way. The decay term ``-s_t λ_max w`` does not
    depend on ``η_max`` (lecture notes §4.3, with its sign erratum fixed).

    Args:
      learning_rate: ``η_max > 0``, the peak learning rate (a number; not a schedule).
      weight_decay: ``λ_max >= 0``, the peak decay factor per step (a number; not a schedule).
      schedule: ``s_t``: a callable ``count -> multiplier`` shared by both peaks (``count`` is
        the number of steps already taken, as for every optax schedule); ``None`` for ``s_t = 1``.
      mask: which leaves decay: ``None`` (all), a pytree prefix of the params with booleans, or a
        callable ``params -> such a pytree`` (as ``optax.adamw``'s ``mask``).

    Returns:
      An ``optax.GradientTransformation`` returning the final update (add it to the params with
      ``optax.apply_updates``). It needs ``params``.

    Raises:
      ValueError: at construction for a non-positive ``learning_rate``, a negative
        ``weight_decay`` or a schedule passed as a peak; at ``init`` for non-float leaves; at
        ``update`` when ``params`` is missing.

    Example:
      Adam's first direction is ``g / |g|``; ``s_1 = schedule(0) = 1``.

      >>> tx = optax.chain(optax.scale_by_adam(),
      ...                  normtx.adaptive.add_decoupled_weight_decay(
      ...                      learning_rate=1e-3, weight_decay=1e-4,
      ...                      schedule=optax.cosine_decay_schedule(1.0, 10_000)))
      >>> w = jnp.array([1.0, -2.0], jnp.float32)
      >>> u, _ = jax.jit(tx.update)(jnp.array([0.5, 0.5], jnp.float32), tx.init(w), w)
      >>> print(np.round(u, 6))  # -(1e-3 · (1, 1) + 1e-4 · (1, -2))
      [-0.0011 -0.0008]

    References:
      Stratos, *Adaptive Learning Methods*, §4.3–4.4. Wortsman et al., *Small-scale proxies for
      large-scale Transformer training instabilities*, ICLR 2024. Loshchilov & Hutter,
      *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    what = "add_decoupled_weight_decay"
    _check_peak("learning_rate", learning_rate, what, allow_zero=False)
    _check_peak("weight_decay", weight_decay, what, allow_zero=True)
    if schedule is not None and not callable(schedule):
        raise ValueError(
            f"{what}: schedule must be a callable count -> s_t or None, got {schedule!r}."
        )

    def init_fn(params):
        check_float_leaves(params, what)
        return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{what}: {NEEDS_PARAMS}")
        mask_tree = mask(params) if callable(mask) else mask
        decays = broadcast_to_leaves(
            mask_tree, params, is_value=lambda x: isinstance(x, bool), what=what, expected="a bool"
        )
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        out = []
        for d, (_, w, on) in zip(leaves, decays, strict=True):
            dt = compute_dtype(d.dtype)
            s = jnp.ones([], dt) if schedule is None else value_at(schedule, state.count, dt)
            step = value_at(learning_rate, state.count, dt) * d.astype(dt)
            if on is not False:
                step = step + value_at(weight_decay, state.count, dt) * w.astype(dt)
            out.append((-s * step).astype(d.dtype))
        new_state = DecoupledWeightDecayState(count=optax.safe_increment(state.count))
        return jax.tree_util.tree_unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def adamw_fully_decoupled(
    *,
    learning_rate: ArrayLike,
    weight_decay: ArrayLike,
    schedule: optax.Schedule | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    amsgrad: bool = False,
    mask: MaskSpec = None,
) -> optax.GradientTransformation:
    r"""AdamW with fully decoupled weight decay: the algorithm of lecture notes §4.4.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,
        \quad \bar m_t = m_t/(1-\beta_1^t), \quad \bar v_t = v_t/(1-\beta_2^t),

        \hat v_t = \max(\hat v_{t-1}, \bar v_t) \text{ (AMSGrad) or } \bar v_t, \qquad
        w_{t+1} = w_t - s_t\bigl(\eta_{\max}\,\bar m_t/(\sqrt{\hat v_t}+\epsilon)
        + \lambda_{\max} w_t\bigr).

    It is ``optax.chain(optax.scale_by_adam(b1, b2, eps), add_decoupled_weight_decay(...))``
    (``optax.scale_by_amsgrad`` with ``amsgrad=True``, which bias-corrects before the maximum as in
    step (c) of the notes). State: Adam's ``mu`` and ``nu`` (2 floats per parameter; 3 with
    AMSGrad) and two step counters.

    Args:
      learning_rate: ``η_max > 0`` (a number).
      weight_decay: ``λ_max >= 0`` (a number).
      schedule: ``s_t`` shared by both, a callable ``count -> multiplier``; ``None`` for 1.
      b1: first-moment decay, ``0 <= b1 < 1``.
      b2: second-moment decay, ``0 <= b2 < 1``.
      eps: ``ε >= 0`` added to ``sqrt(v̂)``.
      amsgrad: use ``max(v̂_{t-1}, v̄_t)`` (notes §4.2, step (c) of §4.4).
      mask: leaves that decay, as in ``add_decoupled_weight_decay``.

    Returns:
      An ``optax.GradientTransformation`` returning the final update; it needs ``params``.

    Example:
      A warm-up from ``s = 0`` makes the first step zero, decay included.

      >>> tx = normtx.adaptive.adamw_fully_decoupled(
      ...     learning_rate=3e-3, weight_decay=1e-4,
      ...     schedule=optax.warmup_cosine_decay_schedule(0.0, 1.0, 100, 10_000))
      >>> w = jnp.array([1.0, -2.0], jnp.float32)
      >>> u, state = jax.jit(tx.update)(jnp.array([0.5, 0.5], jnp.float32), tx.init(w), w)
      >>> bool(jnp.all(u == 0))
      True
      >>> u, state = jax.jit(tx.update)(jnp.array([0.5, 0.5], jnp.float32), state, w)  # s_2 = 0.01
      >>> bool(jnp.all(u < 0))
      True

    References:
      Stratos, *Adaptive Learning Methods*, §4.3–4.4 (sign erratum fixed). Wortsman et al., ICLR
      2024, §3.2.
    """
    what = "adamw_fully_decoupled"
    check_probability("b1", b1, what)
    check_probability("b2", b2, what)
    check_positive("eps", eps, what, allow_zero=True)
    moments = (optax.scale_by_amsgrad if amsgrad else optax.scale_by_adam)(b1=b1, b2=b2, eps=eps)
    return optax.chain(
        moments,
        add_decoupled_weight_decay(
            learning_rate=learning_rate, weight_decay=weight_decay, schedule=schedule, mask=mask
        ),
    )
