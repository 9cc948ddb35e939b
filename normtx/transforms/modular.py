"""``modular_norm_partition``: steepest descent under the modular norm of a network (Prop. 7).

Every leaf gets the norm ``N_l`` and scale ``s_l`` of its role (``normtx.roles``), read from the
same ``Geometry`` as ``normtx.modular_norm``, so the norm a step-size rule measures is the norm
the partition descends.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike
from typing_extensions import Unpack

from normtx._keywords import keywords
from normtx._numerics import sum_widest, to_compute
from normtx._pytree import flatten_state_field
from normtx._validation import check_choice, check_positive, value_at
from normtx.geometry.assign import GEOMETRY, Geometry, GeometryOptions
from normtx.geometry.modular import RoleModular
from normtx.geometry.role import FROZEN, ROLE_NAMES
from normtx.transforms._step_size import Direction
from normtx.transforms.dualize import Step, _assemble

__all__ = [
    "ModularNormPartitionState",
    "Step",
    "modular_direction",
    "modular_norm_partition",
    "modular_step",
]

TargetRmsSpec = Literal["init"] | Mapping[str, float | Literal["init"]] | None
"""The RMS ``r_l`` each role's norm calls unit: ``None`` (1 for every leaf: the norms as they are),
``'init'`` (``INIT_RMS_ROLES`` measured at ``init``), or ``{role name: 'init' or r > 0}``."""

INIT_RMS_ROLES: tuple[str, ...] = ("embedding", "bias", "gain")
"""The roles ``target_rms='init'`` measures: those whose default norms (ℓ1 -> RMS rows, RMS
vectors) call an entry RMS of 1 unit, which their initialisation need not have (Flax's embedding
rows have RMS ``1/√width``). The RMS -> RMS kernels' norm is already relative to their fan-in."""


class ModularNormPartitionState(NamedTuple):
    """State of ``modular_norm_partition``: the diagnostics of the last update."""

    count: jax.Array  # int32 scalar: updates applied so far (the argument of a sharpness schedule)
    # pytree like the params: float32 dual norm r_l N_l†(G_l) of the last update (0: no norm)
    dual_norms: Any
    global_eta: jax.Array  # float32 scalar: η = (1/λ) Σ_k N_k†(G_k)/s_k of the last update (eq. 56)
    # pytree like the params: float32 r_l, the RMS the leaf's norm calls unit (1: unchanged);
    # None without target_rms
    target_rms: Any = None


@keywords(GEOMETRY)
def modular_norm_partition(
    roles: Any = None,
    *,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
    target_rms: TargetRmsSpec = None,
    mesh: Mesh | None = None,
    **kw: Unpack[GeometryOptions],
) -> optax.GradientTransformation:
    r"""Steepest descent under the modular norm of a network (anthology Prop. 7).

    Every leaf ``l`` gets the norm ``N_l`` of its role (``normtx.roles``) and a scale
    ``s_l > 0``. With ``step='dual_norm'`` this is the exact solution of eq. 32,

    .. math::
      \Delta_l = \frac{\eta}{s_l}\,\mathrm{dualize}_l(G_l), \qquad
      \eta = \frac{1}{\lambda}\sum_k \frac{\|G_k\|_k^\dagger}{s_k}            \quad (33, 56)

    (returned as a descent direction; ``optax.scale(-1.0)`` applies it as is). With
    ``step='unit'`` it is the direction ``dualize_l(G_l)/s_l`` alone — a step of modular norm 1,
    to be scaled by a learning rate or by ``normtx.escape_velocity_lr``.

    With ``target_rms`` each chosen leaf's norm is measured relative to an RMS ``r_l``: the
    partition descends ``Ñ_l(W) = N_l(W)/r_l`` instead of ``N_l``. Scaling a norm by ``1/r``
    scales its dual norm and its dualization by ``r``,

    .. math::
      \tilde N_l^\dagger(G) = r_l\,N_l^\dagger(G), \qquad
      \widetilde{\mathrm{dualize}}_l(G) = r_l\,\mathrm{dualize}_l(G),

    so the step above, with these in place of ``N_l†`` and ``dualize_l``, is again the exact
    solution of eq. 32 for the rescaled modular norm ``max_l s_l N_l(W_l)/r_l``. With
    ``target_rms='init'``, ``r_l`` is the RMS of the leaf at ``init`` (over all its entries, in
    float32) for the embedding, bias and gain roles: the ℓ1 -> RMS norm
    ``max_j ‖W[j, :]‖₂/√d`` assumes rows of unit RMS, and a unit step then moves every row by
    ``r_l`` in RMS — the same *fraction* of the row's initial RMS at any width, where with Flax's
    default embedding init (rows of RMS ``1/√width``) the unrescaled step moves it by a fraction
    ``√width``. A leaf that is identically zero at ``init`` (Flax's biases) has no scale to
    measure: it keeps ``r_l = 1``, the norm's own unit, so it is still trained. The RMS ->
    RMS kernels are not rescaled: their norm ``√(d_in/d_out) σ_max`` is already O(1) at a
    fan-in initialisation. ``r_l`` is recorded once, in the state (a float32 scalar per leaf),
    and is not re-measured as the weights move. A ``normtx.modular_norm`` built on its own
    measures the unrescaled ``N_l``; ``modular_descent(escape_velocity=True, target_rms=...)``
    measures ``Ñ_l`` in its step-size rule.

    Default norms per role (``normtx.roles.default_norms``): RMS -> RMS for hidden, attention,
    conv and head kernels (with the role's dimension numbers; stacked layers per slice), ℓ1 -> RMS
    for embeddings, RMS for biases and gains.

    Args:
      roles, norms, scales, masses, head, labels, heads_as_batch: as in ``normtx.modular_norm``
        (``norms={'head': normtx.norms.lp_to_linf(2)}``, ``scales='mass'``, …).
      sharpness: λ > 0 (a number or a schedule ``count -> λ``); only ``step='dual_norm'`` and the
        ``global_eta`` diagnostic use it. Works with ``optax.inject_hyperparams``.
      step: ``'dual_norm'`` (default: the Prop. 7 step, a complete method whose only step size
        is λ) or ``'unit'`` (the unit-norm direction, for a learning rate to scale:
        ``normtx.optimizers.modular_descent`` defaults to it, since its learning rate then sets
        the modular-norm length of each step).
      target_rms: ``None`` (default: every norm as it is, ``r_l = 1``), ``'init'`` (``r_l`` =
        the leaf's RMS at ``init`` for the embedding, bias and gain roles; 1 for a leaf that is
        zero there) or ``{role name: 'init' or a number r > 0}`` (those roles only; a number is
        the same ``r_l`` for every leaf of the role, equivalent to dividing its scale by ``r``).
      mesh: as in ``normtx.modular_norm``.

    Returns:
      An ``optax.GradientTransformation``. Its state ``ModularNormPartitionState`` holds the last
      update's per-leaf dual norms ``r_l N_l†(G_l)`` (a pytree like the params), ``global_eta``
      (η of eq. 56), for logging: ``optax.tree_utils.tree_get(opt_state, 'global_eta')``, and
      with ``target_rms`` the recorded ``r_l`` (a pytree like the params, else ``None``).
      Leaves whose norm is ``None`` pass through unchanged; a zero gradient gives a zero update;
      each leaf keeps its dtype.

    Raises:
      ValueError: at construction for bad hyperparameters (unknown role names, non-positive
        scales, an unknown ``step``, a bad ``target_rms``); at ``init`` for unclassifiable
        leaves, a roles tree that does not match the params, a norm that cannot measure its leaf
        (a matrix norm on a bias) — naming the path, shape and dtype.

    Example:
      The Prop. 7 step on the tree of ``normtx.modular_norm``'s example, whose dual norm is 13.4:
      with λ = 10 every leaf steps by ``η = 1.34`` in its own norm — ``sign(g)`` on the ℓ∞ head,
      ``g_i/rms(g_i)`` on the embedding's rows, ``b/rms(b)`` on the bias.
      ``normtx.roles.describe(params)`` with the same arguments shows the roles, norms and scales.

      >>> tx = optax.chain(
      ...     normtx.modular_norm_partition(norms={"head": norms.linf()}, sharpness=10.0),
      ...     optax.scale_by_learning_rate(1.0),
      ... )
      >>> grads = {"embed": {"embedding": jnp.array([[0.5, -0.5], [2.0, 2.0]], jnp.float32)},
      ...          "head": {"kernel": jnp.array([[0.3, -2.0], [5.0, -0.1]], jnp.float32),
      ...                   "bias": jnp.array([0.5, -0.5], jnp.float32)}}
      >>> params = jax.tree.map(jnp.zeros_like, grads)
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params))
      >>> print(np.round(np.asarray(updates["head"]["kernel"], np.float64), 4))
      [[-1.34  1.34]
       [-1.34  1.34]]
      >>> print(np.round(np.asarray(updates["embed"]["embedding"], np.float64), 4))
      [[-1.34  1.34]
       [-1.34 -1.34]]
      >>> print(np.round(np.asarray(updates["head"]["bias"], np.float64), 4))
      [-1.34  1.34]
      >>> # steps relative to the weights' RMS at init (e.g. Flax's 1/sqrt(width) embedding rows)
      >>> tx = normtx.modular_norm_partition(step="unit", target_rms="init")

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 7, 8 and the epilogue (2024);
      Large et al., *Scalable Optimization in the Modular Norm* (2024).
    """
    geometry = Geometry(roles, **kw, what="modular_norm_partition")
    return modular_step(
        RoleModular(geometry, mesh=mesh), sharpness=sharpness, step=step, target_rms=target_rms
    )


def modular_step(
    mod: RoleModular,
    *,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
    target_rms: TargetRmsSpec = None,
) -> optax.GradientTransformation:
    """``modular_norm_partition`` for a ready ``RoleModular`` (the optimizers' entry point).

    The roles, norms and scales are resolved once per tree structure (``Geometry.assign``); each
    update reads them as data.
    """
    init_fn, update = _partition(mod, sharpness, step, target_rms)
    return optax.GradientTransformation(init_fn, lambda u, s, p=None: update(u, s)[:2])


def modular_direction(
    mod: RoleModular,
    *,
    before: optax.GradientTransformation,
    after: optax.GradientTransformation,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
    target_rms: TargetRmsSpec = None,
) -> Direction:
    """``optax.chain(before, modular_step(mod), after)`` as an ``escape_velocity_lr`` direction that
    also measures: the dual norms the step-size rule needs (of the raw gradient) come out of the
    same stacked polar-factor programs as the partition's own directions (of the momentum), in
    the norm the partition descends (``r_l N_l†`` with ``target_rms``)."""
    part_init, part_update = _partition(mod, sharpness, step, target_rms)

    def init(params):
        return (before.init(params), part_init(params), after.init(params))

    def update(g, state, params, step_info, measure):
        del step_info
        u, s0 = before.update(g, state[0], params)
        u, s1, duals = part_update(u, state[1], measure)
        u, s2 = after.update(u, state[2], params)
        return u, (s0, s1, s2), duals

    return Direction(init, update, measures=True)


def check_target_rms(target_rms: TargetRmsSpec, what: str) -> dict[str, float | str] | None:
    """``target_rms`` as ``{role name: 'init' or r}`` (``None`` when off), validated at
    construction: errors name the bad entry."""
    if target_rms is None:
        return None
    if isinstance(target_rms, str):
        if target_rms != "init":
            raise ValueError(
                f"{what}: target_rms must be None, 'init' or a dict role name -> ('init' or a "
                f"number > 0), got {target_rms!r}."
            )
        return dict.fromkeys(INIT_RMS_ROLES, "init")
    if not isinstance(target_rms, Mapping):
        raise ValueError(
            f"{what}: target_rms must be None, 'init' or a dict role name -> ('init' or a "
            f"number > 0), got {target_rms!r}."
        )
    for key, value in target_rms.items():
        if key not in ROLE_NAMES or key == FROZEN:
            raise ValueError(
                f"{what}: target_rms names {key!r}, which is not a role with a norm; roles are "
                f"{tuple(r for r in ROLE_NAMES if r != FROZEN)}."
            )
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (value == "init" if isinstance(value, str) else number and 0 < value < math.inf):
            raise ValueError(
                f"{what}: target_rms[{key!r}] must be 'init' or a finite number > 0, got {value!r}."
            )
    return {k: v if isinstance(v, str) else float(v) for k, v in target_rms.items()}


def _init_rms(leaf: Any, spec: float | str | None) -> jax.Array:
    """``r_l`` of one leaf as a float32 scalar: ``spec`` (a number), or with ``'init'`` the leaf's
    RMS over all its entries (1 where that is 0: a zero-initialised leaf keeps its norm's unit)."""
    if spec is None:
        return jnp.ones([], jnp.float32)
    if spec != "init":
        return jnp.asarray(spec, jnp.float32)
    rms = jnp.sqrt(jnp.mean(jnp.square(to_compute(leaf))))
    return jnp.where(rms > 0, rms, 1).astype(jnp.float32)


def _partition(mod: RoleModular, sharpness, step: Step, target_rms: TargetRmsSpec = None):
    """``(init, update)`` of the partition; ``update(u, state, measure=())`` also returns the
    dual norms of the ``measure`` entries (those of the normed leaves, in order) in the norm the
    partition descends, computed with the partition's own."""
    what = "modular_norm_partition"
    check_positive("sharpness", sharpness, what)
    check_choice("step", step, ("dual_norm", "unit"), what)
    table = check_target_rms(target_rms, what)

    def init_fn(params):
        mod.resolve(params, what)
        rms = None
        if table is not None:
            treedef = jax.tree_util.tree_structure(params)
            rms = jax.tree_util.tree_unflatten(
                treedef,
                [
                    _init_rms(a.leaf, None if a.norm is None else table.get(a.role.name))
                    for a in mod.geometry.assign(params)
                ],
            )
        return ModularNormPartitionState(
            count=jnp.zeros([], jnp.int32),
            dual_norms=jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params),
            global_eta=jnp.zeros([], jnp.float32),
            target_rms=rms,
        )

    def update(updates, state, measure=()):
        # Roles are read off the updates' paths: updates of another tree would get roles of their
        # own and a state of their own, silently. They must be the params' tree.
        flatten_state_field(updates, state.dual_norms, what=what, name="dual_norms")
        resolved = mod.resolve(updates, what)
        normed = [(p, g, n) for p, g, n, _ in resolved if n is not None]
        duals, directions, measured = mod.leaf_duals_and_directions(normed, measure=measure)
        if table is not None:
            # The norm N_l/r_l: its dual norm and its dualization are r_l times N_l's.
            r_all = flatten_state_field(updates, state.target_rms, what=what, name="target_rms")
            rs = [r for r, (*_, n, _) in zip(r_all, resolved, strict=True) if n is not None]
            duals = [d * r.astype(d.dtype) for d, r in zip(duals, rs, strict=True)]
            directions = [t * r.astype(t.dtype) for t, r in zip(directions, rs, strict=True)]
            if measure:
                measured = [m * r.astype(m.dtype) for m, r in zip(measured, rs, strict=True)]
        scales = [s for _, _, n, s in resolved if n is not None]
        total = sum_widest(d / jnp.asarray(s, d.dtype) for d, s in zip(duals, scales, strict=True))
        eta = total / value_at(sharpness, state.count, total.dtype)
        pieces = iter(zip(duals, directions, scales, strict=True))
        full_directions, raw = [], []
        for *_, n, _ in resolved:
            d, t, s = (None, None, None) if n is None else next(pieces)
            full_directions.append(None if t is None else t / jnp.asarray(s, t.dtype))
            raw.append(jnp.zeros([], jnp.float32) if d is None else d.astype(jnp.float32))
        treedef = jax.tree_util.tree_structure(updates)
        etas = [eta] * len(raw) if step == "dual_norm" else None
        new_state = ModularNormPartitionState(
            count=optax.safe_increment(state.count),
            dual_norms=jax.tree_util.tree_unflatten(treedef, raw),
            global_eta=eta.astype(jnp.float32),
            target_rms=state.target_rms,
        )
        return _assemble(updates, full_directions, etas), new_state, measured

    return init_fn, update
