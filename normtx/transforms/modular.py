"""The modular norm of a whole network (anthology Prop. 7) with norms and scales chosen by role.

``modular_norm`` is the norm ``max_l s_l N_l(W_l)`` of a parameter tree whose ``N_l`` and ``s_l``
come from the role of each leaf (``normtx.roles``); ``modular_norm_partition`` takes its
steepest-descent step. Both read each leaf's norm and scale from one ``normtx.roles.Geometry``, so
the norm a step-size rule measures (``escape_velocity_lr(norm=modular_norm(...))``) is the norm
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

from normtx import roles as roles_lib
from normtx._numerics import sum_widest
from normtx._pytree import flatten_state_field
from normtx._validation import check_choice, check_positive, value_at
from normtx.norms.base import Norm
from normtx.norms.tree import Modular
from normtx.transforms.dualize import _assemble

__all__ = [
    "ModularNormPartitionState",
    "RoleModular",
    "modular_norm",
    "modular_norm_partition",
    "modular_step",
]

Step = Literal["dual_norm", "unit"]


class RoleModular(Modular):
    """The modular norm ``max_l s_l N_l(W_l)`` whose ``N_l``, ``s_l`` follow the leaves' roles.

    A ``normtx.norms.Modular`` (``norm``, ``dual_norm``, ``dualize``, ``duals_and_directions``,
    ``resolve``) that works on any parameter tree: the roles are inferred from (or matched by
    path to) the tree it is given, so it needs no params at construction and accepts both an nnx
    ``State`` and the pure arrays ``nnx.Optimizer`` passes to ``update``. Build it with
    ``normtx.modular_norm``; ``geometry`` is its ``normtx.roles.Geometry``.
    """

    def __init__(self, geometry: roles_lib.Geometry, *, mesh: Mesh | None = None):
        super().__init__(norms=geometry.norms, scales=None, mesh=mesh)
        self.geometry = geometry

    def __repr__(self) -> str:
        return f"RoleModular({self.geometry!r})"

    def resolve(
        self, tree: Any, what: str = "modular_norm"
    ) -> list[tuple[str, Any, Norm | None, Any]]:
        """``[(path, leaf, norm, scale), ...]`` for every leaf, validated."""
        return [(a.path, a.leaf, a.norm, a.scale) for a in self.geometry.assign(tree, what)]

    def describe(self, tree: Any, print_fn=print) -> str:
        """The table of ``normtx.roles.describe`` for ``tree``."""
        return self.geometry.describe(tree, print_fn)


def modular_norm(
    roles: Any = None,
    *,
    norms: roles_lib.NormsSpec = None,
    scales: roles_lib.ScalesSpec = None,
    masses: Mapping[str, float] | None = None,
    head: roles_lib.HeadSpec = None,
    labels: roles_lib.LabelSpec = None,
    heads_as_batch: bool = False,
    mesh: Mesh | None = None,
) -> RoleModular:
    r"""The modular norm ``max_l s_l N_l(W_l)`` of a network, each ``N_l`` and ``s_l`` by role.

    Takes the arguments of ``modular_norm_partition`` (minus the step options) and returns the
    norm that partition descends, as a ``normtx.norms.Modular``: use it wherever a tree norm is
    asked for, e.g. ``escape_velocity_lr(direction, norm=normtx.modular_norm(...))``.

    Args:
      roles: ``None`` (infer them from the tree with ``normtx.roles.infer``) or a pytree with the
        params' structure of role names / ``normtx.roles.Role`` (matched by path).
      norms: ``{role name: Norm or None}`` overriding ``normtx.roles.default_norms()``; ``None``
        leaves that role's leaves out of the norm (their updates pass through unchanged). The
        role supplies the dimension numbers (leave the norm's axes unset).
      scales: the ``s_l``: ``None`` (all 1), a number, ``{role name: s}`` (missing roles 1), or
        ``'mass'`` (modula's masses, ``s_l = M / m_l``; see ``normtx.roles.Geometry``).
      masses: ``{role name: mass per slice}`` for ``scales='mass'``.
      head, labels, heads_as_batch: passed to ``normtx.roles.infer``.
      mesh: ``None`` or a ``jax.sharding.Mesh``: compute the polar factors of the RMS -> RMS
        (spectral-family) leaves together by the owner-device strategy over its devices
        (``normtx.sharding``).

    Returns:
      A ``RoleModular`` (a ``normtx.norms.Modular``); ``.describe(params)`` prints its table.

    Example::

      mod = normtx.modular_norm(norms={'head': normtx.norms.linf()})
      mod.dual_norm(grads)   # Σ_l N_l†(G_l) / s_l

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 7 and the epilogue (2024);
      Large et al., *Scalable Optimization in the Modular Norm* (2024).
    """
    return RoleModular(roles_lib.Geometry.of(locals(), "modular_norm"), mesh=mesh)


class ModularNormPartitionState(NamedTuple):
    """State of ``modular_norm_partition``: the diagnostics of the last update."""

    count: jax.Array  # int32 scalar: updates applied so far (the argument of a sharpness schedule)
    dual_norms: Any  # pytree like the params: float32 N_l†(G_l) of the last update (0: no norm)
    global_eta: jax.Array  # float32 scalar: η = (1/λ) Σ_k N_k†(G_k)/s_k of the last update (eq. 56)


def modular_norm_partition(
    roles: Any = None,
    *,
    norms: roles_lib.NormsSpec = None,
    scales: roles_lib.ScalesSpec = None,
    masses: Mapping[str, float] | None = None,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
    head: roles_lib.HeadSpec = None,
    labels: roles_lib.LabelSpec = None,
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
      step: ``'dual_norm'`` (the Prop. 7 step) or ``'unit'`` (the unit-norm direction).
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
    geometry = roles_lib.Geometry.of(locals(), "modular_norm_partition")
    return modular_step(geometry, sharpness=sharpness, step=step, mesh=mesh)


def modular_step(
    geometry: roles_lib.Geometry,
    *,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    step: Step = "dual_norm",
    mesh: Mesh | None = None,
) -> optax.GradientTransformation:
    """``modular_norm_partition`` for a ready ``normtx.roles.Geometry`` (the optimizers' entry)."""
    what = "modular_norm_partition"
    check_positive("sharpness", sharpness, what)
    check_choice("step", step, ("dual_norm", "unit"), what)
    mod = RoleModular(geometry, mesh=mesh)

    def init_fn(params):
        mod.resolve(params, what)
        return ModularNormPartitionState(
            count=jnp.zeros([], jnp.int32),
            dual_norms=jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params),
            global_eta=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        # Roles are read off the updates' paths: updates of another tree would get roles of their
        # own and a state of their own, silently. They must be the params' tree.
        flatten_state_field(updates, state.dual_norms, what=what, name="dual_norms")
        scales_l = [s for _, _, _, s in mod.resolve(updates, what)]
        duals, directions = mod.duals_and_directions(updates, what)
        total = sum_widest(d for d in duals if d is not None)
        eta = total / value_at(sharpness, state.count, total.dtype)
        etas = [eta] * len(duals) if step == "dual_norm" else None
        raw = [
            jnp.zeros([], jnp.float32) if d is None else (d * s).astype(jnp.float32)
            for d, s in zip(duals, scales_l, strict=True)
        ]
        treedef = jax.tree_util.tree_structure(updates)
        new_state = ModularNormPartitionState(
            count=optax.safe_increment(state.count),
            dual_norms=jax.tree_util.tree_unflatten(treedef, raw),
            global_eta=eta.astype(jnp.float32),
        )
        return _assemble(updates, directions, etas), new_state

    return optax.GradientTransformation(init_fn, update_fn)
