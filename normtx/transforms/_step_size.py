"""The step-size mechanism behind ``escape_velocity_lr``, ``modular_descent(escape_velocity=True)``
and ``optimizers.prodigy``: one rule (anthology eqs. 24–30), any norm, any direction.

A ``Direction`` is the direction the rule scales; it may read the step size (Prodigy's ε is scaled
by ``η_{t+1}``) or *measure*: compute the dual norms the rule divides by in its own programs
(``modular_direction``). ``escape_velocity_transform`` is the ``GradientTransformation`` around
it; ``escape_velocity_lr`` documents it.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from normtx._numerics import compute_dtype, div_by_max, safe_div, to_compute, widest_float
from normtx._pytree import describe_leaf, flatten_with_paths
from normtx._validation import check_choice, check_positive
from normtx.norms.tree import Modular, NormSpec, as_modular

__all__ = [
    "Direction",
    "EmaWeights",
    "EscapeVelocityState",
    "StepInfo",
    "check_betas",
    "check_state_dtype",
    "escape_velocity_transform",
    "leaf_dtype",
    "sum_dtype",
]


class EscapeVelocityState(NamedTuple):
    """State of ``escape_velocity_lr`` (and the step-size part of ``optimizers.prodigy``)."""

    count: jax.Array  # int32 scalar: updates applied so far
    eta: jax.Array  # scalar η_t (float32 or wider): the step size the next update applies
    numerator: jax.Array  # scalar: numerator of the last update's quotient (see the docstring)
    denominator: jax.Array  # scalar: its denominator; 0 when that update carried no information
    anchor: optax.Params  # w_0 (anchor='initial') or w_{t-1} (anchor='previous'), state dtype
    grad_sum: optax.Updates | None  # s_t of eq. 25 when the EMAs are on (state dtype); else None
    direction: optax.OptState  # the wrapped direction's own state


class StepInfo(NamedTuple):
    """What a direction may read of the step size: η_t (applied now), η_{t+1} and the count."""

    eta: jax.Array
    next_eta: jax.Array
    count: jax.Array


class Direction(NamedTuple):
    """A direction for the step-size rule.

    ``update(g, state, params, step: StepInfo)`` returns ``(direction, state)``. A direction that
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


def check_betas(betas: Any, what: str, name: str = "betas") -> tuple[float, float]:
    """``(β₁, β₂)`` with both in ``[0, 1)``, or a ``ValueError``."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {name} must be a pair (b1, b2), got {betas!r}.") from None
    for b in (b1, b2):
        if not isinstance(b, numbers.Real) or not 0 <= b < 1:
            raise ValueError(f"{what}: {name} must be numbers in [0, 1), got {betas!r}.")
    return float(b1), float(b2)


def escape_velocity_transform(
    direction: Direction,
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
            measured, ratios = _unit_scaled(gs)
            num = _vdot(measured, diffs, eta.dtype, ratios)
        else:
            w_r, w_s = (jnp.asarray(w, eta.dtype) for w in ema_weights(eta, count))
            num = beta3 * state.numerator + w_r * _vdot(gs, diffs, eta.dtype)
            old_s = jax.tree_util.tree_leaves(grad_sum)
            s_leaves = [
                (beta3 * to_compute(s) + w_s * to_compute(g)).astype(s.dtype)
                for s, g in zip(old_s, g_leaves, strict=True)
            ]
            measured = [to_compute(s_leaves[i]) for i in normed]
            ratios = None
        measure = (
            []
            if measured is None
            else [(p, x, n) for (p, _, n, _), x in zip(entries, measured, strict=True)]
        )
        if direction.measures:
            step = StepInfo(eta=eta, next_eta=None, count=count)
            dirs, dir_state, duals = direction.update(
                updates, state.direction, params, step, measure
            )
        elif measure:
            duals = mod.leaf_dual_norms(measure)
        if measure:
            den = _weighted_sum(
                [d.astype(eta.dtype) / s for d, (*_, s) in zip(duals, entries, strict=True)],
                ratios,
                eta.dtype,
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
            step = StepInfo(eta=eta, next_eta=new_eta, count=count)
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


def _unit_scaled(xs: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    """``x / max|x|`` over the whole list, as ``(x_l / m_l, m_l / M)`` per leaf.

    ``m_l = max|x_l|`` and ``M = max_l m_l``: each leaf is scaled by its own largest entry (zeros
    stay zero, nothing overflows) and the factor ``r_l = m_l / M`` in ``[0, 1]`` that makes it
    ``x_l / M`` is returned apart, to be applied to the scalars (inner products, dual norms are
    homogeneous) instead of to every entry: the elementwise work of a leaf then reads no scalar
    computed from the other leaves, which XLA would copy into every leaf's kernel.
    """
    if not xs:
        return [], []
    ms = [jnp.max(jnp.abs(x)) for x in xs]
    dtype = widest_float(*(m.dtype for m in ms))
    stacked = jnp.stack([m.astype(dtype) for m in ms])
    top = jnp.max(stacked)
    # The largest leaf's factor is 1 exactly (the division may round it to 1 - ulp): a tree with
    # one more leaf of zeros measures the same as the tree without it.
    ratios = jnp.where(stacked == top, 1, div_by_max(stacked, top))
    return [div_by_max(x, m) for x, m in zip(xs, ms, strict=True)], list(ratios)


def _weighted_sum(terms: list[jax.Array], weights: list[jax.Array] | None, dtype) -> jax.Array:
    """``Σ_l w_l t_l`` in ``dtype`` (``w_l = 1`` without ``weights``), 0 for no terms."""
    if weights is not None:
        terms = [w.astype(dtype) * t for w, t in zip(weights, terms, strict=True)]
    return sum((t.astype(dtype) for t in terms), jnp.zeros([], dtype))


def _vdot(xs: list[jax.Array], ys: list[jax.Array], dtype, weights=None) -> jax.Array:
    """``Σ_l w_l Σ x_l y_l`` in ``dtype`` (``w_l = 1`` without ``weights``)."""
    sums = [jnp.sum(x * y).astype(dtype) for x, y in zip(xs, ys, strict=True)]
    return _weighted_sum(sums, weights, dtype)


def _cosine_terms(gs: list[jax.Array], diffs: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``(<ĝ, â>, ‖ĝ‖₂‖â‖₂)`` with ``ĝ = g/max|g|`` and ``â = a/max|a|``: cos θ is their ratio."""
    dtype = widest_float(*(g.dtype for g in gs))
    (gh, rg), (ah, ra) = _unit_scaled(gs), _unit_scaled(diffs)
    num = _vdot(gh, ah, dtype, [r * q for r, q in zip(rg, ra, strict=True)])
    den = jnp.sqrt(_vdot(gh, gh, dtype, [r * r for r in rg])) * jnp.sqrt(
        _vdot(ah, ah, dtype, [r * r for r in ra])
    )
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
