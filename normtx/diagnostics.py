"""``diagnostics``: the scalars an optimizer state holds, by path, and one ``finite`` flag."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from normtx._pytree import flatten_with_paths

__all__ = ["diagnostics"]


def diagnostics(opt_state: Any, updates: Any = None) -> dict[str, jax.Array]:
    r"""The scalars of an optimizer state by their paths, and whether everything is finite.

    normtx states keep what a training loop wants to log as scalar fields:
    ``escape_velocity_lr``'s step size ``eta`` and the ``numerator`` / ``denominator`` of its last
    quotient, ``modular_norm_partition``'s ``global_eta`` and per-leaf ``dual_norms``,
    ``scale_by_dual_norm``'s ``dual_norm``, step counts, and optax's own scalars (e.g.
    ``optax.apply_if_finite``'s ``notfinite_count``). This collects every 0-d leaf of the state,
    whatever transform or chain it comes from, keyed by its path (``'0/eta'``,
    ``'inner_state/1/dual_norms/Dense_0/kernel'``), and adds

    - ``'finite'``: a bool scalar, ``True`` when every floating-point leaf of the state — arrays
      included (momenta, statistics) — and of ``updates`` (if given) is finite.

    normtx never raises on a non-finite gradient (inside ``jit`` it cannot) and never hides one:
    a NaN or an infinity in the gradient reaches the updates, or the scalars of the last step
    (``numerator``, ``denominator``, ``dual_norms``, ``global_eta``, ``dual_norm``), or both, so
    ``diagnostics(state, updates)['finite']`` is ``False`` after such a step. The statistics
    normtx accumulates over many steps skip a non-finite contribution instead of keeping it for
    ever: the escape-velocity step size and its EMAs (``escape_velocity_lr``), Shampoo's ``L``,
    ``R`` and full-matrix AdaGrad's ``Σ g gᵀ``; momenta and Adam moments (optax's, Prodigy's)
    follow optax and keep it. Wrap the chain in ``optax.apply_if_finite`` to skip such steps
    altogether (it leaves the whole state untouched).

    Works under ``jax.jit`` (it returns arrays; nothing is synchronised with the host).

    Args:
      opt_state: any optimizer state (a pytree of arrays).
      updates: optionally the updates of the same step, included in ``'finite'``.

    Returns:
      ``{path: scalar}`` for every 0-d float, int or bool leaf of ``opt_state``, plus
      ``'finite'``.

    Example:
      >>> tx = optax.chain(
      ...     normtx.escape_velocity_lr(normtx.dualize(norms.linf()), norm=norms.linf()),
      ...     optax.scale_by_learning_rate(1.0))
      >>> params = {"w": jnp.ones(3, jnp.float32)}
      >>> state = tx.init(params)
      >>> updates, state = jax.jit(tx.update)({"w": jnp.ones(3, jnp.float32)}, state, params)
      >>> logs = normtx.diagnostics(state, updates)
      >>> sorted(logs)
      ['0/count', '0/denominator', '0/eta', '0/numerator', 'finite']
      >>> bool(logs["finite"]), int(logs["0/count"])
      (True, 1)
    """
    out: dict[str, jax.Array] = {}
    flags = []
    for tree in (opt_state, updates):
        for path, leaf in flatten_with_paths(tree)[0]:
            leaf = jnp.asarray(leaf)
            if jnp.issubdtype(leaf.dtype, jnp.inexact):
                flags.append(jnp.all(jnp.isfinite(leaf)))
            numeric = jnp.issubdtype(leaf.dtype, jnp.number) or leaf.dtype == jnp.bool_
            if tree is opt_state and leaf.ndim == 0 and numeric:
                out[path] = leaf
    out["finite"] = jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)
    return out
