r"""Sharded training with normtx: where polar factors are computed, and where the state lives.

Every normtx transform runs under ``jax.jit`` with params, gradients and optimizer state sharded
over a ``jax.sharding.Mesh`` (``NamedSharding``), with ``AxisType.Explicit`` axes (the default of
``jax.make_mesh``) or ``Auto`` axes, and gives the unsharded result.

**Polar factors: the owner-device strategy.** A matrix function such as the polar factor
``U Vᵀ`` needs each matrix whole. By default (``mesh=None``) normtx computes it where XLA puts it:
under explicit sharding every matrix is first gathered whole on every device, and every device
iterates on every matrix (the naive, replicate-then-compute path). The transforms that compute
polar factors take a ``mesh=`` argument instead — ``normtx.orthogonalize_newton_schulz``,
``normtx.dualize`` and ``normtx.scale_by_dual_norm`` (for the spectral family:
``norms.spectral``, ``norms.rms_to_rms``, ``norms.schatten(inf)``), ``normtx.modular_norm`` and
``normtx.modular_norm_partition``, and the optimizers ``spectral_descent``, ``modular_descent``
(escape velocity included), ``scion`` and ``muon``. With a mesh (as in dion and distributed Muon):

1. the matrices of all leaves with the same short-side-first shape and dtype (and, under explicit
   sharding, the same layout of their matrix axes) are stacked, tall ones transposed;
2. the stack is padded with zero matrices to a multiple of the number of devices and its stack
   axis is sharded over every axis of the mesh: each device *owns* ``N / devices`` whole matrices;
3. each device computes the polar factors of its own matrices (``jax.shard_map``);
4. every result is moved back to the layout of its leaf.

Under explicit axes the layouts are known at trace time and steps 2 and 4 move one mesh axis at a
time, each an all-to-all over that axis: no device receives a matrix it does not own, and the
bytes moved are about one copy of the stack, where the naive path gathers every matrix on every
device. Leaves whose matrix axes are sharded over all mesh axes need no all-gather at all (the
test suite checks the compiled HLO). Scanned layers ``(n_layers, d_in, d_out)`` are ``n_layers``
matrices of the stack, sharded layer axis or not. Axes sharded on a non-leading axis of a merged
group (the ``I`` of a conv kernel ``HWIO``) are gathered along that axis first, and a leaf
replicated over some mesh axis gets its result replicated there too (a gather of its own shard).
Under ``Auto`` axes the layouts are unknown at trace time: the stack is constrained to the owner
layout and XLA's partitioner moves the data as it sees fit (with jax 0.10 on CPU it gathered some
stacks whole on every device): prefer explicit axes. Params not placed
on the mesh (host arrays, or arrays on one device, with no ``jax.set_mesh``) take that path too,
the mesh's axes used as Auto axes; place them (``jax.device_put(params, shardings)``) for the
explicit path.

**Optimizer state.** ``state_shardings(tx, params)`` derives a ``NamedSharding`` for every leaf of
``tx.init(params)`` from the shardings of ``params``, for ``jax.jit(..., out_shardings=...)``::

    mesh = jax.make_mesh((2, 4), ('data', 'model'))
    params = jax.device_put(params, param_shardings)
    tx = normtx.optimizers.muon(0.02, mesh=mesh)
    opt_shardings = normtx.sharding.state_shardings(tx, params)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1),
                       out_shardings=(param_shardings, opt_shardings))
    def step(params, opt_state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

References:
  Ahn, Xu, Abreu & Langford, *Dion: Distributed Orthonormalized Updates*, arXiv:2504.05295 (2025).
  Jordan et al., *Muon* (2024), and its distributed implementation (one matrix per device).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec

from normtx._pytree import flatten_with_paths

__all__ = ["state_shardings"]


def _hole(x: Any) -> bool:
    return x is None or isinstance(x, optax.MaskedNode)


def state_shardings(tx: optax.GradientTransformation, params: Any) -> Any:
    r"""A ``NamedSharding`` for every leaf of ``tx.init(params)``, derived from the params'.

    Every subtree of the state with the structure of ``params`` (moments, anchors, per-leaf
    statistics; ``optax.masked``/``optax.partition`` holes included) is matched with the params
    leaf by leaf, and each state leaf gets:

    - the param's sharding if it has the param's shape (Adam moments, momentum, anchors,
      gradient sums);
    - replicated otherwise: scalars (per-leaf dual norms, counters) and factored statistics
      (Shampoo's ``L``/``R`` blocks and their roots, full AdaGrad's blocks, AdamNMF's factors).
      normtx updates those from whole matrices (gathered on every device under explicit
      sharding, or wherever XLA puts them), so replicated is the layout they are computed in:
      no resharding per step, at the memory cost of one copy per device (``Σ b²`` floats per
      block of side ``b``, ``(m + n) r`` for a rank-``r`` AdamNMF).

    Every other state leaf (counts, step sizes, hyperparameters) is replicated. The state's
    shape comes from ``jax.eval_shape``; nothing is computed. (``optax.tree_utils.tree_map_params``
    finds the params-like subtrees by calling ``init`` on a placeholder instead of the params,
    which the ``init`` functions of normtx reject: they infer roles and check every leaf.)

    Args:
      tx: the transformation whose state is laid out.
      params: the parameter tree: ``jax.Array`` leaves or ``jax.ShapeDtypeStruct`` leaves, each
        with a ``NamedSharding`` (``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``), all on
        one mesh.

    Returns:
      A pytree with the structure of ``tx.init(params)`` (``None``/``optax.MaskedNode`` holes
      kept) of ``NamedSharding``, for ``jax.jit(tx.init, out_shardings=...)`` and the
      ``out_shardings`` of a training step.

    Raises:
      TypeError: for a params leaf without a ``NamedSharding``, naming its path.
      ValueError: for params on more than one mesh, or an empty tree.

    Example:
      >>> mesh = jax.make_mesh((1,), ("data",))
      >>> row_sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
      >>> params = {"w": jax.device_put(jnp.zeros((4, 2), jnp.float32), row_sharded)}
      >>> tx = optax.adam(1e-3)
      >>> opt_shardings = normtx.sharding.state_shardings(tx, params)
      >>> opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
      >>> opt_state[0].mu["w"].sharding == row_sharded  # Adam's moments are sharded as w
      True
    """
    flat, _ = flatten_with_paths(params, is_leaf=_hole)
    flat = [(p, x) for p, x in flat if not _hole(x)]
    if not flat:
        raise ValueError("state_shardings: the parameter tree has no leaves.")
    for path, x in flat:
        if not isinstance(getattr(x, "sharding", None), NamedSharding):
            raise TypeError(
                f"state_shardings: params leaf {path!r} has sharding "
                f"{getattr(x, 'sharding', None)!r}; expected a jax.sharding.NamedSharding "
                "(jax.device_put(params, shardings), or jax.ShapeDtypeStruct(shape, dtype, "
                "sharding=NamedSharding(mesh, spec)))."
            )
    mesh = flat[0][1].sharding.mesh
    for path, x in flat:
        if x.sharding.mesh != mesh:
            raise ValueError(
                f"state_shardings: params leaf {path!r} is on mesh {dict(x.sharding.mesh.shape)}, "
                f"but {flat[0][0]!r} is on {dict(mesh.shape)}; all params must share one mesh."
            )
    replicated = NamedSharding(mesh, PartitionSpec())
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    state = jax.eval_shape(tx.init, shapes)
    params_def = jax.tree.structure(params, is_leaf=_hole)

    def like_params(node) -> bool:
        return not _hole(node) and jax.tree.structure(node, is_leaf=_hole) == params_def

    def leaf(s, p):
        if _hole(s):
            return s
        return p.sharding if tuple(s.shape) == tuple(p.shape) else replicated

    def node(x):
        if _hole(x):
            return x
        if like_params(x):
            return jax.tree.map(leaf, x, params, is_leaf=_hole)
        return replicated

    return jax.tree.map(node, state, is_leaf=lambda x: _hole(x) or like_params(x))
