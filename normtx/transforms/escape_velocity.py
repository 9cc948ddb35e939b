"""``escape_velocity_lr``: Prodigy's warm-up step size, for any norm and any direction.

Anthology Story III: Prodigy with its EMAs switched off (β₁ = β₂ = 0) is sign descent
``w_{t+1} = w_t - η_t sign(g_t)`` (eq. 29) whose step size follows

    η_{t+1} = max(η_t, <g_t, w_0 - w_t> / ‖g_t‖₁)                                    (eq. 28)

Written as ``max(η_t, (‖g‖₂/‖g‖₁) ‖w_t - w_0‖₂ cos θ_t)`` (eq. 30) the rule grows η geometrically
while the weights are still inside the initial linearisation (cos θ ≈ 1) and stops once they have
escaped it: the *escape velocity*. ℓ1 is the dual of ℓ∞, the norm whose dualization is ``sign``
(Prop. 2); replacing it by the dual of any norm, summed over the leaves of the tree (Prop. 3/7), and
``sign`` by any direction gives a step-size rule for every optimizer normtx builds. The variants the
anthology suggests after eq. 30 — the cosine rule, the most recent weight difference, letting η
decrease — and Prodigy's EMAs (eqs. 24–26) are options of the same rule; ``normtx.optimizers.prodigy``
is this rule with Prodigy's Adam direction (eqs. 22–27), and matches ``optax.contrib.prodigy``.
"""

from __future__ import annotations

from typing import Any, Literal

import optax
from jax.typing import ArrayLike

from normtx.norms.tree import Modular, NormSpec
from normtx.transforms._step_size import (
    Direction,
    EscapeVelocityState,
    check_betas,
    escape_velocity_transform,
)

__all__ = ["EscapeVelocityState", "escape_velocity_lr"]

Rule = Literal["prodigy", "cosine"]
Anchor = Literal["initial", "previous"]


def escape_velocity_lr(
    direction: optax.GradientTransformation,
    *,
    norm: NormSpec | Modular,
    init_lr: ArrayLike = 1e-6,
    rule: Rule = "prodigy",
    anchor: Anchor = "initial",
    monotone: bool | None = None,
    max_growth: ArrayLike | None = None,
    betas: tuple[float, float] | None = None,
    state_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Scales a direction by a step size that warms up to the escape velocity (Story III).

    The update is ``η_t · direction(g_t)``, and after it the step size moves to ``η_{t+1}``:

    - ``rule='prodigy'`` (eq. 28 for any norm):
      ``η_{t+1} = max(η_t, <g_t, a_t> / ‖g_t‖†)``, where ``‖·‖†`` is the dual of ``norm`` summed
      over the leaves (``Σ_l N_l†(g_l)/s_l``, Prop. 3/7). With ``norm=norms.linf()`` and
      ``direction=normtx.dualize(norms.linf())`` this is exactly eqs. 28–29.
    - ``rule='cosine'``: ``η_{t+1} = η_t (1 + cos θ_t)``, θ_t the (Euclidean) angle between
      ``g_t`` and ``a_t``: η doubles while the gradient still points along the path taken, and
      falls when it turns back (``cos θ_t < 0``).

    The anchor difference is ``a_t = w_0 - w_t`` (``anchor='initial'``) or the most recent step
    ``w_{t-1} - w_t`` (``anchor='previous'``, anthology after eq. 30; ``a_0 = 0``). The weights are
    the ``params`` passed to ``update``, so a schedule chained *after* this transform
    (``optax.scale_by_learning_rate(schedule)``) is seen by the rule through the weights it moves.

    ``monotone`` defaults to each rule as the anthology writes it: the prodigy rule never lets η
    decrease (``max`` in eq. 28), the cosine rule does. ``monotone=False`` lets η decrease: the
    prodigy rule takes the quotient itself and the cosine rule the factor itself, both floored at
    ``init_lr``; ``monotone=True`` keeps η from decreasing under either rule (the cosine rule then
    only grows η). ``max_growth`` caps ``η_{t+1}/η_t``.
    ``betas=(β₁, β₂)`` turns Prodigy's EMAs on (eqs. 24–26, rule ``'prodigy'`` only)::

        r_t = √β₂ r_{t-1} + (1-√β₂) η_t² <g_t, a_t>,   s_t = √β₂ s_{t-1} + (1-√β₂) η_t² g_t,
        η_{t+1} = max(η_t, r_t / ‖s_t‖†);

    β₁ is Prodigy's first-moment coefficient (eq. 22): it belongs to Prodigy's direction, not to
    the step-size rule, and is only validated here (``betas=(0, 0)`` is eq. 28 again).

    An update that carries no information — a zero gradient on every normed leaf, a zero or
    non-finite quotient denominator — leaves η unchanged; nothing here divides 0 by 0, so zero,
    1e-30 or 1e30 gradients never give NaN. Without EMAs the quotients are computed on
    ``g / max|g|`` (and the cosine on ``a / max|a|`` too), which leaves them unchanged and keeps
    extreme gradients in floating-point range. A non-finite gradient leaves η unchanged too, and
    with EMAs ``r_t`` and ``s_t`` skip it (else they would keep it for ever and freeze η); the
    state's ``numerator``/``denominator`` (or the update itself) still show it, so
    ``normtx.diagnostics`` reports the step.

    Leaves whose norm is ``None`` take the update ``η_t · direction(g_t)`` but are outside the
    normed space: they do not enter ``<g, a>``, the dual norm or the cosine.

    State (inspect it with ``optax.tree_utils.tree_get(state, 'eta')``): ``eta``; ``numerator`` and
    ``denominator`` of the last quotient — ``<ĝ, a>`` and ``‖ĝ‖†`` with ``ĝ = g/max|g|`` (prodigy),
    ``<ĝ, â>`` and ``‖ĝ‖₂‖â‖₂`` (cosine), ``r_t`` and ``‖s_t‖†`` (EMAs); the anchor; ``s_t``; the
    direction's state. Floats per parameter, besides the direction's own state and four scalars:

    ===============================================  ======================================
    configuration                                    floats per parameter in this state
    ===============================================  ======================================
    ``betas=None``, ``anchor='initial'``              1 (``w_0``)
    ``betas=None``, ``anchor='previous'``             1 (``w_{t-1}``)
    ``betas=(β₁, β₂)``                                2 (the anchor and ``s_t``)
    ``optimizers.prodigy`` (Adam direction)          4 (``w_0``, ``s_t``, ``m_t``, ``v_t``)
    ===============================================  ======================================

    Args:
      direction: the direction transform, e.g. ``normtx.dualize(norms.linf())`` (sign descent),
        ``normtx.dualize(norms.spectral())`` or a modular-norm step. It is called as
        ``direction.update(g, state, params)``.
      norm: the norm whose dual measures ``g`` in the prodigy rule (and whose normed leaves the
        rule reads): a ``Norm``, a pytree prefix of Norms, ``(path, leaf) -> Norm | None``, or a
        ``normtx.norms.Modular`` with scales. Use the norm the direction dualizes. Under
        ``optax.inject_hyperparams`` pass a callable ``norm`` in ``static_args``.
      init_lr: η_0 > 0, below any good step size (the rule grows it geometrically). Works with
        ``optax.inject_hyperparams``. With a unit-norm direction (``dualize``, a unit modular
        step) and a learning rate ≤ 1, Hölder's inequality bounds the quotient by the steps
        taken so far, ``Σ_{s<t} η_s``: η at most doubles per step, and a start ``k`` orders of
        magnitude below the useful step costs at least ``3.3 k`` steps of warm-up. Prodigy's
        ``1e-6`` suits long runs and directions whose useful step cannot be guessed; on a short
        run start within about two orders of magnitude of it (``modular_descent``, whose unit
        steps in the modular norm are useful around 0.01–0.2, starts at ``1e-3``).
      rule: ``'prodigy'`` (eq. 28) or ``'cosine'``.
      anchor: ``'initial'`` (``w_0``) or ``'previous'`` (``w_{t-1}``).
      monotone: ``None`` (default): the rule's own — ``True`` for ``'prodigy'``, ``False`` for
        ``'cosine'``; ``True``: η never decreases; ``False``: it may, down to ``init_lr``.
      max_growth: ``None`` or a cap ``> 1`` on ``η_{t+1}/η_t``.
      betas: ``None`` (no EMA, eq. 28) or ``(β₁, β₂)`` in ``[0, 1)`` (eqs. 24–26).
      state_dtype: dtype of the anchor and ``s_t``; default: each parameter's own dtype, except
        that ``s_t`` of a float16 parameter is float32 (its η²-weighted terms underflow float16).
        float16 itself is refused: bfloat16 has float32's range in the same 2 bytes.

    Returns:
      An ``optax.GradientTransformation`` returning the descent direction ``η_t · direction(g_t)``
      in each leaf's dtype; end the chain with ``optax.scale_by_learning_rate(lr)`` (``lr = 1`` or
      a schedule). ``update`` needs ``params``.

    Raises:
      ValueError: for a bad rule, anchor, ``init_lr <= 0``, ``max_growth <= 1``, betas outside
        ``[0, 1)`` or a float16 ``state_dtype`` (at construction); for a norm tree that does not
        match the params (at ``init``); for missing ``params`` or trees that do not match the
        state (at ``update``).

    Example:
      Sign descent from ``w_0 = 0`` with a constant gradient: after t steps
      ``w_0 - w_t = (η_0 + … + η_{t-1}) sign(g)``, so eq. 28 gives
      ``η_{t+1} = max(η_t, η_0 + … + η_{t-1})``: η grows as the Fibonacci numbers, and the
      weights move by their sum (``0.01 · 34``).

      >>> tx = optax.chain(
      ...     normtx.escape_velocity_lr(normtx.dualize(norms.linf()), norm=norms.linf(),
      ...                               init_lr=0.01),
      ...     optax.scale_by_learning_rate(1.0),
      ... )
      >>> params = {"w": jnp.zeros(3, jnp.float32)}
      >>> grads = {"w": jnp.array([0.5, -1.0, 2.0], jnp.float32)}
      >>> step, state, etas = jax.jit(tx.update), tx.init(params), []
      >>> for _ in range(8):
      ...     etas.append(float(optax.tree_utils.tree_get(state, "eta")))
      ...     updates, state = step(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> print(np.round(np.array(etas) / 0.01, 3))
      [ 1.  1.  1.  2.  3.  5.  8. 13.]
      >>> print(np.round(np.asarray(params["w"], np.float64), 4))
      [-0.34  0.34 -0.34]

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology*, Story III, eqs. 22–30,
      Prop. 1, 2, 3, 7 (2024). Mishchenko & Defazio, *Prodigy: An Expeditiously Adaptive
      Parameter-Free Learner*, Algorithm 3 (2023).
    """
    what = "escape_velocity_lr"
    if not isinstance(direction, (optax.GradientTransformation, Direction)):
        raise ValueError(
            f"{what}: direction must be an optax.GradientTransformation (e.g. "
            f"normtx.dualize(norms.linf())), got {direction!r}."
        )
    if monotone is None:
        monotone = rule == "prodigy"  # each rule as written: eq. 28's max; η_t (1 + cos θ_t)
    beta3 = None
    if betas is not None:
        if rule != "prodigy":
            raise ValueError(
                f"{what}: betas (Prodigy's EMAs, eqs. 24-26) needs rule='prodigy', got rule={rule!r}."
            )
        _, b2 = check_betas(betas, what)
        beta3 = b2**0.5

    def ema_weights(eta, count):
        del count
        w = (1.0 - beta3) * eta * eta  # eqs. 24-25: both terms weighted by (1 - √β₂) η_t²
        return w, w

    return escape_velocity_transform(
        direction
        if isinstance(direction, Direction)
        else Direction(direction.init, lambda g, s, p, step: direction.update(g, s, p)),
        norm=norm,
        init_lr=init_lr,
        rule=rule,
        anchor=anchor,
        monotone=monotone,
        max_growth=max_growth,
        beta3=beta3,
        ema_weights=ema_weights,
        state_dtype=state_dtype,
        what=what,
    )
