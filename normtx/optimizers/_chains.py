"""The pieces the ready optimizers chain: momentum, weight decay, masks by role, validation."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike
from typing_extensions import TypedDict, Unpack

from normtx._keywords import KeywordGroup
from normtx._pytree import describe_leaf, flatten_with_paths
from normtx._validation import check_bool, check_choice, check_positive, check_probability
from normtx.geometry import FROZEN, Geometry, Role
from normtx.norms import NormSpec
from normtx.transforms.dualize import Step, dualize, scale_by_dual_norm


class DescentOptions(TypedDict, total=False):
    """The momentum, step and weight decay of a steepest descent (``sign_descent``'s Args)."""

    momentum: ArrayLike
    nesterov: bool
    weight_decay: ArrayLike
    step: Step
    sharpness: ArrayLike | optax.Schedule | None
    weight_decay_mask: Any
    mu_dtype: DTypeLike | None


DESCENT = KeywordGroup(
    DescentOptions,
    momentum=0.0,
    nesterov=False,
    weight_decay=0.0,
    step="unit",
    sharpness=None,
    weight_decay_mask=None,
    mu_dtype=None,
)


class DebiasedMomentumState(NamedTuple):
    """State of ``ema_momentum(..., bias_correction=True)``."""

    count: jax.Array  # int32 scalar: updates applied so far (t - 1 during update t)
    mu: optax.Updates  # m_t = β m_{t-1} + (1-β) g_t, in mu_dtype (default: each leaf's dtype)


def ema_momentum(
    beta: ArrayLike,
    nesterov: bool,
    *,
    bias_correction: bool = False,
    mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
    """``m_t = β m_{t-1} + (1-β) g_t``; Nesterov: ``(1-β) g_t + β m_t`` (Muon's reference form).

    Without bias correction: ``optax.trace`` (its buffer ``m_t/(1-β)`` in ``mu_dtype``) followed by
    ``optax.scale(1 - β)``. With ``bias_correction`` (``optax.contrib.muon``'s form): ``m_t/(1-β^t)``,
    and with Nesterov ``β m_t/(1-β^{t+1}) + (1-β) g_t/(1-β^t)``. ``β = 0`` (a number) is the
    gradient itself, with no buffer: no state to keep, and a NaN gradient cannot stay in one
    (``0 · NaN = NaN`` would poison every later step).
    """
    if isinstance(beta, numbers.Real) and beta == 0:
        return optax.identity()
    if not bias_correction:
        return optax.chain(
            optax.trace(decay=beta, nesterov=nesterov, accumulator_dtype=mu_dtype),
            optax.scale(1.0 - beta),
        )

    def init_fn(params):
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)), params)
        return DebiasedMomentumState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, beta, 1)
        count = optax.safe_increment(state.count)
        if nesterov:
            out = jax.tree.map(
                lambda m, g: beta * m + (1 - beta) * g,
                optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
                optax.tree.bias_correction(updates, beta, count),
            )
        else:
            out = optax.tree.bias_correction(mu, beta, count)
        out = jax.tree.map(lambda o, g: o.astype(jnp.result_type(g)), out, updates)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu, state.mu)
        return out, DebiasedMomentumState(count=count, mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def add_weight_decay(weight_decay: ArrayLike, mask: Any = None) -> optax.GradientTransformation:
    """Decoupled weight decay ``+ λ w`` before the learning rate (AdamW); nothing for ``λ = 0``."""
    if isinstance(weight_decay, numbers.Real) and weight_decay == 0:
        return optax.identity()
    return optax.add_decayed_weights(weight_decay, mask)


def steepest(norm: NormSpec, step: Step, sharpness: ArrayLike, mesh: Mesh | None):
    """The unit step under ``norm``, or the Prop. 1 step ``(‖g‖†/λ) dualize(g)`` (validated λ)."""
    if step == "unit":
        return dualize(norm, mesh=mesh)
    return scale_by_dual_norm(norm, sharpness=sharpness, scope="tree", mesh=mesh)


def check_step(step: Step, sharpness: Any, what: str) -> Any:
    """Validates ``step`` and returns the sharpness λ (1.0 when not given).

    ``sharpness`` only enters the ``'dual_norm'`` step: given with ``step='unit'`` it would be
    silently ignored, so it is refused.
    """
    check_choice("step", step, ("unit", "dual_norm"), what)
    if sharpness is None:
        return 1.0
    if step == "unit":
        raise ValueError(
            f"{what}: sharpness={sharpness!r} has no effect with step='unit' (the step is the "
            "dualized direction alone, of norm 1). Pass step='dual_norm' for the Prop. 1/7 step "
            "that divides by it, or leave sharpness unset."
        )
    check_positive("sharpness", sharpness, what)
    return sharpness


class ShapeCheckState(NamedTuple):
    """State of ``check_shapes``: the tree and the leaf shapes of the params ``init`` saw."""

    shapes: Any  # like the params: per leaf a tuple of int8 zeros (d,), one per axis of length d


def check_shapes(what: str) -> optax.GradientTransformation:
    """First in every optimizer's chain: the updates (and params) must have the tree structure and
    the leaf shapes of the params ``init`` saw, else a ``ValueError`` naming the path, shape and
    dtype — not a raw pytree or broadcasting error from a transform further down the chain, nor a
    silent broadcast (a ``(4, 3)`` gradient for a ``(3,)`` bias would grow the bias).

    The record is the state, not this closure, so a state restored from a checkpoint (in another
    process) is checked too: a leaf of shape ``(d_1, …, d_k)`` is recorded as ``k`` int8 vectors
    of lengths ``d_1, …, d_k``, whose shapes are known when ``update`` is traced (``d_1 + … + d_k``
    bytes; orbax refuses empty arrays, which would have held the shape in none). The updates pass
    through unchanged.
    """

    def init_fn(params):
        record = lambda p: tuple(jnp.zeros((d,), jnp.int8) for d in jnp.shape(p))  # noqa: E731
        return ShapeCheckState(shapes=jax.tree.map(record, params))

    def update_fn(updates, state, params=None):
        _check_like_init(what, "gradient", updates, state.shapes)
        if params is not None:
            _check_like_init(what, "parameter", params, state.shapes)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def _is_record(x: Any) -> bool:
    """Whether ``x`` is one leaf's entry of ``ShapeCheckState.shapes``: a tuple of int8 vectors,
    or the mapping ``{0: …, 1: …}`` that ``nnx.Optimizer`` keeps it as."""
    if isinstance(x, Mapping):
        x = list(x.values())
    elif type(x) not in (tuple, list):
        return False
    return all(getattr(a, "dtype", None) == jnp.int8 and np.ndim(a) == 1 for a in x)


def _check_like_init(what: str, kind: str, tree: Any, shapes: Any) -> None:
    flat, treedef = flatten_with_paths(tree)
    try:
        entries = treedef.flatten_up_to(shapes)
    except (ValueError, TypeError):
        entries = None
    if entries is None or not all(_is_record(e) for e in entries):
        paths = [p for p, _ in flat]
        init_paths = [p for p, _ in flatten_with_paths(shapes, is_leaf=_is_record)[0]]
        extra = [p for p in paths if p not in set(init_paths)]
        missing = [p for p in init_paths if p not in set(paths)]
        detail = (
            f"{kind} paths the params lack: {extra[:8]}; param paths the {kind}s lack: "
            f"{missing[:8]}"
            if extra or missing
            else f"the same paths in other containers:\n  {kind}s: {treedef}"
        )
        raise ValueError(
            f"{what}: the {kind}s do not have the tree structure of the params the optimizer "
            f"state was initialised with ({detail}). Pass {kind}s of the params' structure, or "
            "initialise the state with the params they update."
        )
    for (path, leaf), entry in zip(flat, entries, strict=True):
        expected = tuple(int(np.shape(axis)[0]) for axis in jax.tree.leaves(entry))
        if tuple(np.shape(leaf)) != expected:
            raise ValueError(
                f"{what}: {kind} {describe_leaf(path, leaf)} does not match the parameter it "
                f"updates: the state was initialised with {path!r} of shape {expected}. A {kind} "
                "of another shape would be broadcast into the parameter (or fail further down "
                f"the chain); pass {kind}s of the params' shapes."
            )


def check_common(what: str, learning_rate, momentum, nesterov, weight_decay) -> None:
    """Validates the hyperparameters every momentum-based optimizer shares."""
    check_positive("learning_rate", learning_rate, what)
    check_probability("momentum", momentum, what)
    check_bool("nesterov", nesterov, what)
    check_positive("weight_decay", weight_decay, what, allow_zero=True)


def check_descent(
    what: str, learning_rate: ArrayLike | optax.Schedule, kw: DescentOptions
) -> ArrayLike | optax.Schedule:
    """Validates the learning rate and ``DESCENT``'s keywords; returns the sharpness λ."""
    check_common(what, learning_rate, kw["momentum"], kw["nesterov"], kw["weight_decay"])
    check_mu_dtype(kw["mu_dtype"], what)
    return check_step(kw["step"], kw["sharpness"], what)


def check_mu_dtype(mu_dtype: Any, what: str) -> None:
    """Raises ``ValueError`` unless ``mu_dtype`` is ``None`` or a floating dtype."""
    if mu_dtype is None:
        return
    try:
        ok = jnp.issubdtype(jnp.dtype(mu_dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{what}: mu_dtype must be None (each parameter's dtype) or a floating dtype such as "
            f"jnp.bfloat16, got {mu_dtype!r}."
        )


def descent(
    norm: NormSpec,
    what: str,
    *,
    learning_rate: ArrayLike | optax.Schedule,
    mesh: Mesh | None = None,
    **kw: Unpack[DescentOptions],
) -> optax.GradientTransformation:
    """The shape check, momentum, the steepest-descent step under ``norm``, weight decay, the
    learning rate (``kw``: every keyword of ``DESCENT``)."""
    sharpness = check_descent(what, learning_rate, kw)
    return optax.chain(
        check_shapes(what),
        ema_momentum(kw["momentum"], kw["nesterov"], mu_dtype=kw["mu_dtype"]),
        steepest(norm, kw["step"], sharpness, mesh),
        add_weight_decay(kw["weight_decay"], kw["weight_decay_mask"]),
        optax.scale_by_learning_rate(learning_rate),
    )


def role_mask(geometry: Geometry, keep: Callable[[Role], Any]) -> Any:
    """``params -> tree of keep(role)``, the roles resolved as the partition resolves them."""
    return lambda params: jax.tree.map(keep, geometry.resolve(params))


def skip_frozen(
    geometry: Geometry, tx: optax.GradientTransformation
) -> optax.GradientTransformation:
    """``tx`` on every leaf but those labelled ``'frozen'``, which pass it unchanged and keep no
    state in it (``optax.masked``)."""
    return optax.masked(tx, role_mask(geometry, lambda r: r.name != FROZEN))


def zero_frozen(geometry: Geometry) -> optax.GradientTransformation:
    """A zero update on the leaves labelled ``'frozen'``; every other leaf unchanged."""
    return optax.masked(optax.set_to_zero(), role_mask(geometry, lambda r: r.name == FROZEN))


def role_chain(
    what: str,
    geometry: Geometry,
    momentum: optax.GradientTransformation,
    *steps: optax.GradientTransformation,
) -> optax.GradientTransformation:
    """The frame of every role-based optimizer: ``check_shapes``, ``momentum`` on the leaves that
    are not ``'frozen'``, ``steps``, then a zero update on the frozen ones."""
    return optax.chain(
        check_shapes(what), skip_frozen(geometry, momentum), *steps, zero_frozen(geometry)
    )


def matrix_weight_decay(
    geometry: Geometry, weight_decay: ArrayLike, mask: Any
) -> optax.GradientTransformation:
    """``add_weight_decay`` on ``mask``, by default on the matrix roles (not biases or gains)."""
    if mask is None:
        mask = role_mask(geometry, lambda r: r.is_matrix)
    return add_weight_decay(weight_decay, mask)
