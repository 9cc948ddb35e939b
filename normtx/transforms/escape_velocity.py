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

import functools
import numbers
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from normtx._numerics import compute_dtype, max_scaler, safe_div, to_compute, widest_float
from normtx._pytree import describe_leaf, flatten_with_paths
from normtx._validation import check_choice, check_positive
from normtx.norms.tree import Modular, NormSpec, as_modular

__all__ = ["EscapeVelocityState", "escape_velocity_lr"]

Rule = Literal["prodigy", "cosine"]
Anchor = Literal["initial", "previous"]


class EscapeVelocityState(NamedTuple):
    """State of ``escape_velocity_lr`` (and the step-size part of ``optimizers.prodigy``)."""

    count: jax.Array  # int32 scalar: updates applied so far
    eta: jax.Array  # scalar η_t (float32 or wider): the step size the next update applies
    numerator: jax.Array  # scalar: numerator of the last update's quotient (see the docstring)
    denominator: jax.Array  # scalar: its denominator; 0 when that update carried no information
    anchor: optax.Params  # w_0 (anchor='initial') or w_{t-1} (anchor='previous'), state dtype
    grad_sum: optax.Updates | None  # s_t of eq. 25 when the EMAs are on (state dtype); else None
    direction: optax.OptState  # the wrapped direction's own state


class _Step(NamedTuple):
    """What a direction may read of the step size: η_t (applied now), η_{t+1} and the count."""

    eta: jax.Array
    next_eta: jax.Array
    count: jax.Array


class _Direction(NamedTuple):
    """A direction for the step-size rule.

    ``update(g, state, params, step: _Step)`` returns ``(direction, state)``. A direction that
    ``measures`` is called before the rule, as ``update(g, state, params, step, measure)`` with
    ``measure`` a list of ``(path, array, norm)`` entries, and returns ``(direction, state,
    duals)`` with ``duals[k] = N_k†(array_k)`` (unscaled): it computes those dual norms in the
    same programs as its own direction (one Newton–Schulz iteration per matrix shape for the
    gradient's nuclear norms and the momentum's polar factors), and ``step.next_eta`` is then
    not known to it (``None``).
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, ...]]
    measures: bool = False


# (eta, count) -> (w_r, w_s): r_t = β₃ r_{t-1} + w_r <g_t, a_t>, s_t = β₃ s_{t-1} + w_s g_t.
EmaWeights = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def escape_velocity_lr(
    direction: optax.GradientTransformation,
    *,
    norm: NormSpec | Modular,
    init_lr: ArrayLike = 1e-6,
    rule: Rule = "prodigy",
    anchor: Anchor = "initial",
    monotone: bool | None = None,
    max_growth: ArrayLike | None = None,
    beta: tuple[float, float] | None = None,
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
    ``beta=(β₁, β₂)`` turns Prodigy's EMAs on (eqs. 24–26, rule ``'prodigy'`` only)::

        r_t = √β₂ r_{t-1} + (1-√β₂) η_t² <g_t, a_t>,   s_t = √β₂ s_{t-1} + (1-√β₂) η_t² g_t,
        η_{t+1} = max(η_t, r_t / ‖s_t‖†);

    β₁ is Prodigy's first-moment coefficient (eq. 22): it belongs to Prodigy's direction, not to
    the step-size rule, and is only validated here (``beta=(0, 0)`` is eq. 28 again).

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
    ``beta=None``, ``anchor='initial'``              1 (``w_0``)
    ``beta=None``, ``anchor='previous'``             1 (``w_{t-1}``)
    ``beta=(β₁, β₂)``                                2 (the anchor and ``s_t``)
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
      beta: ``None`` (no EMA, eq. 28) or ``(β₁, β₂)`` in ``[0, 1)`` (eqs. 24–26).
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
    if not isinstance(direction, (optax.GradientTransformation, _Direction)):
        raise ValueError(
            f"{what}: direction must be an optax.GradientTransformation (e.g. "
            f"normtx.dualize(norms.linf())), got {direction!r}."
        )
    if monotone is None:
        monotone = rule == "prodigy"  # each rule as written: eq. 28's max; η_t (1 + cos θ_t)
    beta3 = None
    if beta is not None:
        if rule != "prodigy":
            raise ValueError(
                f"{what}: beta (Prodigy's EMAs, eqs. 24-26) needs rule='prodigy', got rule={rule!r}."
            )
        _, b2 = check_betas(beta, what)
        beta3 = b2**0.5

    def ema_weights(eta, count):
        del count
        w = (1.0 - beta3) * eta * eta  # eqs. 24-25: both terms weighted by (1 - √β₂) η_t²
        return w, w

    return _escape_velocity(
        direction
        if isinstance(direction, _Direction)
        else _Direction(direction.init, lambda g, s, p, step: direction.update(g, s, p)),
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


def check_betas(beta: Any, what: str, name: str = "beta") -> tuple[float, float]:
    """``(β₁, β₂)`` with both in ``[0, 1)``, or a ``ValueError``."""
    try:
        b1, b2 = beta
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {name} must be a pair (b1, b2), got {beta!r}.") from None
    for b in (b1, b2):
        if not isinstance(b, numbers.Real) or not 0 <= b < 1:
            raise ValueError(f"{what}: {name} must be numbers in [0, 1), got {beta!r}.")
    return float(b1), float(b2)


def _escape_velocity(
    direction: _Direction,
    *,
    norm: NormSpec | Modular,
    init_lr: ArrayLike,
    rule: str,
    anchor: str,
    monotone: bool,
    max_growth: ArrayLike | None,
    beta3: float | None,
    ema_weights: EmaWeights,
    state_dtype: Any,
    what: str,
    coef: ArrayLike = 1.0,
) -> optax.GradientTransformation:
    """The one step-size mechanism behind ``escape_velocity_lr`` and ``optimizers.prodigy``.

    ``beta3`` is the EMA factor of ``r_t`` and ``s_t`` (``None``: no EMA, eq. 28), ``ema_weights``
    their per-step weights, ``coef`` multiplies the prodigy quotient (Prodigy's ``d_coef``).
    """
    check_positive("init_lr", init_lr, what)
    check_choice("rule", rule, ("prodigy", "cosine"), what)
    check_choice("anchor", anchor, ("initial", "previous"), what)
    check_positive("coef", coef, what)
    if not isinstance(monotone, bool):
        raise ValueError(
            f"{what}: monotone must be True or False (or None: the rule's own), got {monotone!r}."
        )
    if max_growth is not None:
        check_positive("max_growth", max_growth, what)
        if isinstance(max_growth, numbers.Real) and not max_growth > 1:
            raise ValueError(
                f"{what}: max_growth must be > 1 (a cap on η_(t+1)/η_t), got {max_growth!r}."
            )
    check_state_dtype(state_dtype, what)
    mod = as_modular(norm)

    def init_fn(params):
        resolved = mod.resolve(params, what)
        if all(n is None for _, _, n, _ in resolved):
            raise ValueError(
                f"{what}: no leaf of the parameter tree is measured by the norm (the tree is empty, "
                "or every leaf's norm is None), so the step size could never move. Expected at "
                f"least one normed leaf; parameter paths: {[p for p, *_ in resolved]}."
            )
        sdt = _scalar_dtype(params)
        zero = jnp.zeros([], sdt)
        grad_sum = None
        if beta3 is not None:
            grad_sum = jax.tree.map(lambda p: jnp.zeros(p.shape, sum_dtype(p, state_dtype)), params)
        return EscapeVelocityState(
            count=jnp.zeros([], jnp.int32),
            eta=jnp.asarray(init_lr, sdt),
            numerator=zero,
            denominator=zero,
            anchor=jax.tree.map(lambda p: _copy(p, state_dtype), params),
            grad_sum=grad_sum,
            direction=direction.init(params),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                f"{what}: update needs the current params — call tx.update(grads, state, params): "
                "the step size measures how far the weights moved from the anchor."
            )
        _check_trees(updates, params, state.anchor, what)
        eta, count = state.eta, state.count
        resolved = mod.resolve(updates, what)
        g_leaves = jax.tree_util.tree_leaves(updates)
        p_leaves, treedef = jax.tree_util.tree_flatten(params)
        a_leaves = jax.tree_util.tree_leaves(state.anchor)
        normed = [i for i, (_, _, n, _) in enumerate(resolved) if n is not None]
        entries = [resolved[i] for i in normed]
        gs = [to_compute(g_leaves[i]) for i in normed]
        diffs = [to_compute(a_leaves[i]) - to_compute(p_leaves[i]) for i in normed]

        grad_sum = state.grad_sum
        # The arrays whose dual norms the rule divides by: ĝ = g/max|g| (eq. 28), or s_t (EMAs).
        measured = None
        if rule == "cosine":
            num, den = _cosine_terms(gs, diffs)
        elif beta3 is None:
            gh = _unit_scaled(gs)
            num = _vdot(gh, diffs, eta.dtype)
            measured = gh
        else:
            w_r, w_s = (jnp.asarray(w, eta.dtype) for w in ema_weights(eta, count))
            num = beta3 * state.numerator + w_r * _vdot(gs, diffs, eta.dtype)
            old_s = jax.tree_util.tree_leaves(grad_sum)
            s_leaves = [
                (beta3 * to_compute(s) + w_s * to_compute(g)).astype(s.dtype)
                for s, g in zip(old_s, g_leaves, strict=True)
            ]
            measured = [to_compute(s_leaves[i]) for i in normed]
        measure = (
            []
            if measured is None
            else [(p, x, n) for (p, _, n, _), x in zip(entries, measured, strict=True)]
        )
        if direction.measures:
            step = _Step(eta=eta, next_eta=None, count=count)
            dirs, dir_state, duals = direction.update(
                updates, state.direction, params, step, measure
            )
        elif measure:
            duals = mod.leaf_dual_norms(measure)
        if measure:
            den = sum(
                (d.astype(eta.dtype) / s for d, (*_, s) in zip(duals, entries, strict=True)),
                jnp.zeros([], eta.dtype),
            )
        cand = (
            eta * (1 + safe_div(num, den))
            if rule == "cosine"
            else coef * num / jnp.where(den > 0, den, 1)
        )
        if beta3 is not None:
            # A non-finite step would stay in r_t and s_t for ever (and freeze η): the EMAs skip it,
            # and the state's denominator records it.
            ok = jnp.isfinite(num) & jnp.isfinite(den)
            s_leaves = [jnp.where(ok, s, s0) for s, s0 in zip(s_leaves, old_s, strict=True)]
            grad_sum = jax.tree_util.tree_unflatten(treedef, s_leaves)
            num = jnp.where(ok, num, state.numerator)

        new_eta = _next_eta(eta, cand, den, init_lr, monotone, max_growth)
        if not direction.measures:
            # The rule reads only g and the weights, so the direction may also see η_{t+1}.
            step = _Step(eta=eta, next_eta=new_eta, count=count)
            dirs, dir_state = direction.update(updates, state.direction, params, step)
        new_updates = jax.tree.map(
            lambda d, g: (eta.astype(compute_dtype(d.dtype)) * to_compute(d)).astype(g.dtype),
            dirs,
            updates,
        )
        new_anchor = state.anchor
        if anchor == "previous":
            new_anchor = jax.tree.map(lambda p: _copy(p, state_dtype), params)
        new_state = EscapeVelocityState(
            count=optax.safe_increment(count),
            eta=new_eta,
            numerator=jnp.asarray(num, eta.dtype),
            denominator=jnp.asarray(den, eta.dtype),
            anchor=new_anchor,
            grad_sum=grad_sum,
            direction=dir_state,
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _next_eta(eta, cand, den, init_lr, monotone, max_growth):
    """η_{t+1} from the candidate: unchanged without information, then max/floor, then the cap."""
    informative = (den > 0) & jnp.isfinite(den) & jnp.isfinite(cand)
    cand = jnp.where(informative, cand, eta).astype(eta.dtype)
    floor = eta if monotone else jnp.asarray(init_lr, eta.dtype)
    new_eta = jnp.maximum(floor, cand)
    if max_growth is not None:
        new_eta = jnp.minimum(new_eta, jnp.asarray(max_growth, eta.dtype) * eta)
    return new_eta.astype(eta.dtype)


def leaf_dtype(p: Any, state_dtype: Any) -> jnp.dtype:
    """A state buffer's dtype: ``state_dtype`` for floating leaves when given, else the leaf's."""
    dtype = jnp.result_type(p)
    if state_dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(state_dtype)
    return dtype


def _narrow(dtype: jnp.dtype) -> bool:
    """Whether a float dtype has a narrower exponent range than float32 (float16, float8)."""
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).maxexp < 128


def sum_dtype(p: Any, state_dtype: Any) -> jnp.dtype:
    """The dtype of a buffer that sums η-weighted gradients (``s_t``; Prodigy's ``m_t``, ``v_t``):
    ``leaf_dtype``, with float32 for a float16 (or float8) leaf. Their terms ``η_t g``, ``η_t² g``,
    ``η_t² g²`` start near ``1e-6 g`` and ``1e-12 g²`` (``η_0 = 1e-6``): below float16's smallest
    number (6e-8), they would be stored as 0 and freeze η (or divide by a zero ``√v_t``)."""
    dtype = leaf_dtype(p, state_dtype)
    return jnp.dtype(jnp.float32) if _narrow(dtype) else dtype


def check_state_dtype(state_dtype: Any, what: str) -> None:
    """``None`` or a float dtype with float32's exponent range, else a ``ValueError``."""
    if state_dtype is None:
        return
    if not jnp.issubdtype(jnp.dtype(state_dtype), jnp.floating):
        raise ValueError(f"{what}: state_dtype must be a floating dtype, got {state_dtype!r}.")
    if _narrow(jnp.dtype(state_dtype)):
        raise ValueError(
            f"{what}: state_dtype={jnp.dtype(state_dtype).name} cannot hold the step-size rule's "
            "sums: their η-weighted terms (η_0² g² ≈ 1e-12 g² at η_0 = 1e-6) are below its "
            "smallest number and would be stored as 0, freezing η. Use bfloat16 (float32's range "
            "in 2 bytes), float32 or float64."
        )


def _copy(p: Any, state_dtype: Any) -> jax.Array:
    """A copy of ``p`` in its state dtype, never the params' own buffer (``jnp.asarray`` may return
    it): a step that donates both the params and the state (``jax.jit(step, donate_argnums=(0,
    1))``) would otherwise donate one buffer twice."""
    return jnp.array(p, leaf_dtype(p, state_dtype), copy=True)


def _scalar_dtype(params) -> jnp.dtype:
    """Scalars (η, quotients) in the widest floating parameter dtype, at least float32."""
    dtypes = [jnp.result_type(p) for p in jax.tree_util.tree_leaves(params)]
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return widest_float(*floats)


def _absmax(xs: list[jax.Array]) -> jax.Array:
    return functools.reduce(jnp.maximum, [jnp.max(jnp.abs(x)) for x in xs])


def _unit_scaled(xs: list[jax.Array]) -> list[jax.Array]:
    """``x / max|x|`` over the whole list (zeros stay zero): quotients unchanged, no overflow."""
    if not xs:
        return xs
    m = _absmax(xs)
    scalers = {d: max_scaler(m, d) for d in {x.dtype for x in xs}}  # the exponent work once
    return [scalers[x.dtype](x) for x in xs]


def _vdot(xs: list[jax.Array], ys: list[jax.Array], dtype) -> jax.Array:
    return sum(
        (jnp.sum(x * y).astype(dtype) for x, y in zip(xs, ys, strict=True)), jnp.zeros([], dtype)
    )


def _cosine_terms(gs: list[jax.Array], diffs: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``(<ĝ, â>, ‖ĝ‖₂‖â‖₂)`` with ``ĝ = g/max|g|`` and ``â = a/max|a|``: cos θ is their ratio."""
    dtype = widest_float(*(g.dtype for g in gs))
    gh, ah = _unit_scaled(gs), _unit_scaled(diffs)
    num = _vdot(gh, ah, dtype)
    den = jnp.sqrt(_vdot(gh, gh, dtype)) * jnp.sqrt(_vdot(ah, ah, dtype))
    return num, den


def _check_trees(updates, params, anchor, what: str) -> None:
    """Updates, params and the state's anchor must have one structure and matching shapes."""
    t_u, t_p, t_a = (jax.tree_util.tree_structure(t) for t in (updates, params, anchor))
    if t_u != t_p:
        raise ValueError(
            f"{what}: the updates and the params have different tree structures:\n  updates: "
            f"{t_u}\n  params:  {t_p}"
        )
    if t_p != t_a:
        raise ValueError(
            f"{what}: the params do not have the structure of the params the state was "
            f"initialised with:\n  params: {t_p}\n  init:   {t_a}"
        )
    flat_u, _ = flatten_with_paths(updates)
    for (path, g), p, a in zip(
        flat_u, jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(anchor), strict=True
    ):
        if jnp.shape(g) != jnp.shape(p) or jnp.shape(p) != jnp.shape(a):
            raise ValueError(
                f"{what}: gradient {describe_leaf(path, g)}, parameter {describe_leaf(path, p)} "
                f"and the parameter at init {describe_leaf(path, a)} must have one shape."
            )
