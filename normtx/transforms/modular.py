"""``modular_norm_partition``: steepest descent under the modular norm of a network (Prop. 7).

Every leaf gets the norm ``N_l`` and scale ``s_l`` of its role (``normtx.roles``), read from the
same ``Geometry`` as ``normtx.modular_norm``, so the norm a step-size rule measures is the norm
the partition descends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from normtx._numerics import sum_widest
from normtx._pytree import flatten_state_field
from normtx._validation import check_choice, check_positive, value_at
from normtx.geometry.assign import Geometry, NormsSpec, ScalesSpec
from normtx.geometry.infer import HeadSpec, LabelSpec
from normtx.geometry.modular import RoleModular
from normtx.transforms.dualize import _assemble
from normtx.transforms.escape_velocity import _Direction

__all__ = [
    "ModularNormPartitionState",
    "Step",
    "modular_direction",
    "modular_norm_partition",
    "modular_step",
]

Step = Literal["dual_norm", "unit"]
"""``'dual_norm'``: the Prop. 1/7 step ``(Σ_k N_k†(G_k)/(s_k λ)) dualize_l(G_l)/s_l``;
``'unit'``: the direction ``dualize_l(G_l)/s_l`` alone (a step of norm 1)."""


class ModularNormPartitionState(NamedTuple):
    """State of ``modular_norm_partition``: the diagnostics of the last update."""

    count: jax.Array  # int32 scalar: updates applied so far (the argument of a sharpness schedule)
    dual_norms: Any  # pytree like the params: float32 N_l†(G_l) of the last update (0: no norm)
    global_eta: jax.Array  # float32 scalar: η = (1/λ) Σ_k N_k†(G_k)/s_k of the last update (eq. 56)


def modular_norm_partition(
    roles: Any = None,
    *,
    norms: NormsSpec = None,
    scales: ScalesSpec = None,
    masses: Mapping[str, float] | None = None,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
    head: HeadSpec = None,
    labels: LabelSpec = None,
    heads_as_batch: bool = False,
    mesh: Mesh | None = None,
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
      mesh: as in ``normtx.modular_norm``.

    Returns:
      An ``optax.GradientTransformation``. Its state ``ModularNormPartitionState`` holds the last
      update's per-leaf dual norms ``N_l†(G_l)`` (a pytree like the params) and ``global_eta``
      (η of eq. 56), for logging: ``optax.tree_utils.tree_get(opt_state, 'global_eta')``.
      Leaves whose norm is ``None`` pass through unchanged; a zero gradient gives a zero update;
      each leaf keeps its dtype.

    Raises:
      ValueError: at construction for bad hyperparameters (unknown role names, non-positive
        scales, an unknown ``step``); at ``init`` for unclassifiable leaves, a roles tree that does
        not match the params, a norm that cannot measure its leaf (a matrix norm on a bias) —
        naming the path, shape and dtype.

    Example::

      tx = optax.chain(normtx.modular_norm_partition(step='unit'),
                       optax.scale_by_learning_rate(0.02))
      normtx.roles.describe(params)   # the table of roles, norms and scales it uses

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 7, 8 and the epilogue (2024);
      Large et al., *Scalable Optimization in the Modular Norm* (2024).
    """
    what = "modular_norm_partition"
    geometry = Geometry(
        roles,
        norms=norms,
        scales=scales,
        masses=masses,
        head=head,
        labels=labels,
        heads_as_batch=heads_as_batch,
        what=what,
    )
    return modular_step(RoleModular(geometry, mesh=mesh), sharpness=sharpness, step=step)


def modular_step(
    mod: RoleModular,
    *,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
) -> optax.GradientTransformation:
    """``modular_norm_partition`` for a ready ``RoleModular`` (the optimizers' entry point).

    The roles, norms and scales are resolved once per tree structure (``Geometry.assign``); each
    update reads them as data.
    """
    init_fn, update = _partition(mod, sharpness, step)
    return optax.GradientTransformation(init_fn, lambda u, s, p=None: update(u, s)[:2])


def modular_direction(
    mod: RoleModular,
    *,
    before: optax.GradientTransformation,
    after: optax.GradientTransformation,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
) -> _Direction:
    """``optax.chain(before, modular_step(mod), after)`` as an ``escape_velocity_lr`` direction that
    also measures: the dual norms the step-size rule needs (of the raw gradient) come out of the
    same stacked polar-factor programs as the partition's own directions (of the momentum)."""
    part_init, part_update = _partition(mod, sharpness, step)

    def init(params):
        return (before.init(params), part_init(params), after.init(params))

    def update(g, state, params, step_info, measure):
        del step_info
        u, s0 = before.update(g, state[0], params)
        u, s1, duals = part_update(u, state[1], measure)
        u, s2 = after.update(u, state[2], params)
        return u, (s0, s1, s2), duals

    return _Direction(init, update, measures=True)


def _partition(mod: RoleModular, sharpness, step: Step):
    """``(init, update)`` of the partition; ``update(u, state, measure=())`` also returns the
    unscaled dual norms of the ``measure`` entries, computed with the partition's own."""
    what = "modular_norm_partition"
    check_positive("sharpness", sharpness, what)
    check_choice("step", step, ("dual_norm", "unit"), what)

    def init_fn(params):
        mod.resolve(params, what)
        return ModularNormPartitionState(
            count=jnp.zeros([], jnp.int32),
            dual_norms=jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params),
            global_eta=jnp.zeros([], jnp.float32),
        )

    def update(updates, state, measure=()):
        # Roles are read off the updates' paths: updates of another tree would get roles of their
        # own and a state of their own, silently. They must be the params' tree.
        flatten_state_field(updates, state.dual_norms, what=what, name="dual_norms")
        resolved = mod.resolve(updates, what)
        normed = [(p, g, n) for p, g, n, _ in resolved if n is not None]
        duals, directions, measured = mod.leaf_duals_and_directions(normed, measure=measure)
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
        )
        return _assemble(updates, full_directions, etas), new_state, measured

    return init_fn, update
