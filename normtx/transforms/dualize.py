"""``dualize`` and ``scale_by_dual_norm``: steepest descent under a norm (anthology Prop. 1)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike

from normtx._numerics import sum_widest
from normtx._validation import check_choice, check_positive, value_at
from normtx.norms.tree import Modular, NormSpec, as_modular

__all__ = ["ScaleByDualNormState", "Step", "dualize", "scale_by_dual_norm"]

Scope = Literal["tree", "leaf"]

Step = Literal["unit", "dual_norm"]
"""How far a steepest-descent step goes along the dualized direction: ``'unit'``, the direction
``dualize_l(G_l)/s_l`` alone (a step of norm 1, to be scaled by a learning rate or a step-size
rule); ``'dual_norm'``, the Prop. 1/7 step, that direction times ``Σ_k N_k†(G_k)/(s_k λ)``."""


def dualize(norm: NormSpec | Modular, *, mesh: Mesh | None = None) -> optax.GradientTransformation:
    r"""Maps each leaf ``g`` to its direction of steepest ascent ``argmax_{‖t‖<=1} <g, t>``.

    This is the *direction* half of anthology Prop. 1 (the step size is chosen elsewhere: a learning
    rate, ``scale_by_dual_norm``, or ``escape_velocity_lr``):

    .. math:: g \mapsto \arg\max_{\|t\| \le 1} \langle g, t \rangle

    ``dualize(norms.linf())`` is sign descent (Prop. 2), ``dualize(norms.spectral())`` is the
    orthogonalized update ``U Vᵀ`` of Shampoo without accumulation (Prop. 5).

    Args:
      norm: a ``normtx.norms.Norm`` for every leaf, a pytree prefix of the params with a Norm (or
        ``None``: leave the leaf unchanged) at each node, or a callable
        ``(path: str, leaf) -> Norm | None`` where ``path`` is the ``/``-joined key path, or a
        ``normtx.norms.Modular`` (then each leaf's direction is ``dualize_l(g_l)/s_l``).
      mesh: ``None`` (default) or a ``jax.sharding.Mesh``: the polar factors of the spectral
        family (``norms.spectral``, ``norms.rms_to_rms``) are computed for all leaves together by
        the owner-device strategy over its devices (``normtx.sharding``).

    Returns:
      An ``optax.GradientTransformation`` with empty state. Like optax's ``scale_by_*`` it returns
      a direction to be *descended*: end the chain with ``optax.scale_by_learning_rate``. Each leaf
      keeps its dtype; a zero gradient gives a zero update.

    Raises:
      ValueError: at ``init`` (or trace time) for a leaf its norm cannot measure — naming the path,
        shape and dtype — or a norm tree that does not match the params.

    Example:
      Sign descent (Prop. 2): ``dualize(linf)`` maps ``g`` to ``sign(g)``.

      >>> tx = optax.chain(normtx.dualize(normtx.norms.linf()), optax.scale_by_learning_rate(0.5))
      >>> params = {"w": jnp.zeros((2, 2), jnp.float32)}
      >>> grads = {"w": jnp.array([[0.3, -2.0], [5.0, -0.1]], jnp.float32)}
      >>> updates, state = jax.jit(tx.update)(grads, tx.init(params))
      >>> print(updates["w"])
      [[-0.5  0.5]
       [-0.5  0.5]]

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology*, Prop. 1, 2, 5 (2024).
    """
    mod = as_modular(norm, mesh)

    def init_fn(params):
        mod.resolve(params, "dualize")
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        _, directions = mod.duals_and_directions(updates, "dualize")
        return _assemble(updates, directions, None), state

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByDualNormState(NamedTuple):
    """State of ``scale_by_dual_norm``."""

    count: jax.Array  # int32 scalar: updates applied so far (the argument of a sharpness schedule)
    dual_norm: jax.Array  # float32 scalar: Σ_l N_l†(G_l)/s_l of the last update (a diagnostic)


def scale_by_dual_norm(
    norm: NormSpec | Modular,
    *,
    sharpness: ArrayLike | optax.Schedule = 1.0,
    scope: Scope = "tree",
    mesh: Mesh | None = None,
) -> optax.GradientTransformation:
    r"""The full steepest-descent step under ``norm`` (anthology Prop. 1 and Prop. 7).

    .. math:: \Delta = -\frac{\|g\|^\dagger}{\lambda}\,\arg\max_{\|t\|=1}\langle g, t\rangle

    With ``scope='tree'`` the whole tree is one problem under the max-combined norm
    ``max_l N_l(W_l)`` (Prop. 7 with unit scales): every leaf gets
    ``(Σ_k N_k†(G_k) / λ) · dualize_l(G_l)``. For ``norms.linf()`` on every leaf this is global sign
    descent with the global ℓ1 dual (Prop. 2/3); for ``norms.spectral()`` it is Prop. 5.
    With ``scope='leaf'`` each leaf is its own problem: ``(N_l†(G_l) / λ) · dualize_l(G_l)``.

    Args:
      norm: as in ``normtx.dualize``.
      sharpness: λ > 0 of Prop. 1: a number, or a schedule ``count -> λ``. Works with
        ``optax.inject_hyperparams``.
      scope: ``'tree'`` or ``'leaf'``.
      mesh: as in ``normtx.dualize``.

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction (end the chain with
      ``optax.scale_by_learning_rate``, or ``optax.scale(-1.0)`` for the pure Prop. 1 step). Its
      state ``ScaleByDualNormState`` keeps the last update's dual norm ``Σ_l N_l†(G_l)/s_l`` for
      logging (``normtx.diagnostics``).

    Example:
      The Prop. 5 step for ``G = diag(3, 1)``: ``‖G‖† = tr Σ = 4`` and ``dualize(G) = U Vᵀ = I``,
      so the update is ``-(4/10) I``.

      >>> tx = optax.chain(normtx.scale_by_dual_norm(normtx.norms.spectral(), sharpness=10.0),
      ...                  optax.scale(-1.0))
      >>> g = jnp.array([[3.0, 0.0], [0.0, 1.0]], jnp.float32)
      >>> updates, state = jax.jit(tx.update)(g, tx.init(g))
      >>> print(f"{float(state[0].dual_norm):.4f}")
      4.0000
      >>> bool(jnp.allclose(updates, -0.4 * jnp.eye(2), atol=1e-4))
      True

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology*, Prop. 1, 3, 5, 7 (2024).
    """
    check_positive("sharpness", sharpness, "scale_by_dual_norm")
    check_choice("scope", scope, ("tree", "leaf"), "scale_by_dual_norm")
    mod = as_modular(norm, mesh)

    def init_fn(params):
        mod.resolve(params, "scale_by_dual_norm")
        return ScaleByDualNormState(
            count=jnp.zeros([], jnp.int32), dual_norm=jnp.zeros([], jnp.float32)
        )

    def update_fn(updates, state, params=None):
        del params
        duals, directions = mod.duals_and_directions(updates, "scale_by_dual_norm")
        total = sum_widest(d for d in duals if d is not None)
        if scope == "tree":
            eta = total / value_at(sharpness, state.count, total.dtype)
            etas = [eta] * len(duals)
        else:
            etas = [
                None if d is None else d / value_at(sharpness, state.count, d.dtype) for d in duals
            ]
        new_updates = _assemble(updates, directions, etas)
        new_state = ScaleByDualNormState(
            count=optax.safe_increment(state.count), dual_norm=total.astype(jnp.float32)
        )
        return new_updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def _assemble(updates, directions, etas):
    """Leaf l -> ``eta_l · direction_l`` in the leaf's dtype (unchanged where direction is None)."""
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    etas = etas if etas is not None else [None] * len(leaves)
    out = []
    for g, t, eta in zip(leaves, directions, etas, strict=True):
        if t is None:
            out.append(g)
        else:
            out.append((t if eta is None else eta.astype(t.dtype) * t).astype(g.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
