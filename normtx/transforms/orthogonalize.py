"""``orthogonalize_newton_schulz``: the spectral direction ``U Vᵀ`` of every matrix leaf."""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike

from normtx._pytree import broadcast_to_leaves, describe_leaf, flatten_with_paths
from normtx._validation import check_choice, check_int, check_positive, check_static
from normtx.dims import DimensionNumbers, DimsSpec, normalize_axes
from normtx.linalg.newton_schulz import NORMALIZATIONS, Normalization, newton_schulz
from normtx.linalg.ns_coefficients import NsSchedule, newton_schulz_schedule
from normtx.sharding._layout import check_mesh
from normtx.sharding._owner import map_matrices

__all__ = ["orthogonalize_newton_schulz"]

Scale = Literal["spectral", "rms_to_rms", "muon"] | float
_WHAT = "orthogonalize_newton_schulz"
_SCALES = ("spectral", "rms_to_rms", "muon")
_ROUTE = (
    "For a tree that mixes matrices with other leaves, send those leaves to another transform with "
    "normtx.modular_norm_partition or optax.partition."
)


class _Leaf(NamedTuple):
    """How one leaf becomes a batch of short-side-first matrices."""

    dims: DimensionNumbers  # fan-in and fan-out axes of the leaf
    scale: float | jax.Array  # the factor applied to the polar factor of each slice


def _is_dims(x) -> bool:
    return isinstance(x, DimensionNumbers)


def _scale_factor(scale: Scale, d_in: int, d_out: int) -> float | jax.Array:
    if scale == "spectral":
        return 1.0
    if scale == "rms_to_rms":
        return math.sqrt(d_out / d_in)
    if scale == "muon":
        return math.sqrt(max(1.0, d_out / d_in))
    return scale  # a number, or an array under optax.inject_hyperparams


def check_scale(scale: Scale, what: str) -> None:
    """Raises ``ValueError`` unless ``scale`` is one of ``'spectral'``, ``'rms_to_rms'``,
    ``'muon'`` or a number > 0 (an array passes: ``optax.inject_hyperparams``)."""
    if isinstance(scale, str):
        check_choice("scale", scale, _SCALES, what)
    elif (isinstance(scale, numbers.Real) and not isinstance(scale, bool)) or hasattr(
        scale, "dtype"
    ):
        check_positive("scale", scale, what)
    else:
        raise ValueError(f"{what}: scale must be one of {_SCALES} or a number > 0, got {scale!r}.")


def _leaf_plan(path: str, leaf: Any, dims: DimensionNumbers | None, scale: Scale) -> _Leaf:
    desc = describe_leaf(path, leaf)
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{_WHAT}: leaf {desc} is not a floating-point array; only float matrices can be "
            f"orthogonalized. {_ROUTE}"
        )
    shape = tuple(np.shape(leaf))
    if 0 in shape:
        raise ValueError(f"{_WHAT}: leaf {desc} is empty. {_ROUTE}")
    if dims is None:
        if len(shape) < 2:
            raise ValueError(
                f"{_WHAT}: leaf {desc} is not a matrix (rank {len(shape)}): a bias, gain or "
                f"scalar has no polar factor. {_ROUTE}"
            )
        if len(shape) > 2:
            raise ValueError(
                f"{_WHAT}: leaf {desc} has rank {len(shape)}; say which axes form the matrix with "
                "dimension_numbers=DimensionNumbers(fan_in_axes, fan_out_axes) — e.g. normtx.dims.CONV_HWIO "
                "((0, 1, 2) -> (3,)) for a conv kernel, DimensionNumbers((1,), (2,)) for a stacked "
                "(n_layers, d_in, d_out) leaf — given for every leaf, as a pytree, or as a "
                f"callable (path, leaf) -> DimensionNumbers | None. {_ROUTE}"
            )
    try:
        dn = normalize_axes(
            shape,
            None if dims is None else dims.fan_in_axes,
            None if dims is None else dims.fan_out_axes,
            what=_WHAT,
            path=path,
        )
    except ValueError as e:
        raise ValueError(f"{e} Leaf: {desc}.") from None
    d_in = math.prod(shape[a] for a in dn.fan_in_axes)
    d_out = math.prod(shape[a] for a in dn.fan_out_axes)
    return _Leaf(dn, _scale_factor(scale, d_in, d_out))


def orthogonalize_newton_schulz(
    *,
    steps: int = 5,
    coefficients: NsSchedule | ArrayLike = "polar_express",
    scale: Scale = "rms_to_rms",
    dimension_numbers: DimsSpec = None,
    compute_dtype: DTypeLike | None = None,
    batch_same_shapes: bool = True,
    normalization: Normalization = "frobenius",
    mesh: Mesh | None = None,
) -> optax.GradientTransformation:
    r"""Maps every matrix of every leaf to ``scale · U Vᵀ`` by a Newton–Schulz iteration.

    For each matrix ``G = U Σ Vᵀ`` (a 2-D kernel ``(d_in, d_out)``, or each slice its ``dimension_numbers``
    pick out) the update is

    .. math:: G \mapsto s \cdot X_T,\qquad X_T \approx U V^\top
              \ (\text{``newton\_schulz``, anthology Appendix A, eq. 37})

    with ``s = 1`` (``'spectral'``: the dualization of the spectral norm, Prop. 5),
    ``s = √(d_out/d_in)`` (``'rms_to_rms'``: the dualization of the RMS→RMS norm),
    ``s = √max(1, d_out/d_in)`` (``'muon'``: Muon's width scaling), or a given number. A conv
    kernel or a scanned stack is a batch of matrices, each orthogonalized on its own.

    With ``batch_same_shapes`` all matrices of the tree with the same short-side-first shape and
    dtype are stacked and orthogonalized by one batched iteration (fewer, larger kernels inside
    ``jit``); the result is the same as leaf by leaf. With a ``mesh`` each stack is computed by the
    owner-device strategy of ``normtx.sharding``: padded to a multiple of the mesh size, its
    matrices spread over the devices, each device iterating on its own matrices, instead of every
    device gathering and iterating on every matrix.

    Args:
      steps: Newton–Schulz iterations (see ``normtx.linalg.newton_schulz``).
      coefficients: ``'polar_express'``, ``'cubic'``, ``'muon'``, or an array ``(k, 3)``.
      scale: ``'spectral'``, ``'rms_to_rms'``, ``'muon'``, or a positive number (a number works
        with ``optax.inject_hyperparams``).
      dimension_numbers: ``DimensionNumbers`` for every leaf, a pytree prefix of them (``None`` entries: the
        default), or a callable ``(path, leaf) -> DimensionNumbers | None``. Default: a 2-D leaf is
        ``(0,) -> (1,)``; any other rank is an error.
      compute_dtype: matmul input dtype of the iteration (e.g. ``jnp.bfloat16``; float32
        accumulation); default float32 (float64 for float64 leaves).
      batch_same_shapes: stack same-shape matrices into one batched iteration.
      normalization: ``'frobenius'``, ``'schatten4'`` or ``'aol'`` (see
        ``normtx.linalg.newton_schulz``).
      mesh: ``None`` (default: computed where XLA puts it — under explicit sharding every matrix
        is gathered whole on every device) or a ``jax.sharding.Mesh``: the owner-device strategy
        over its devices (``normtx.sharding``).

    Returns:
      An ``optax.GradientTransformation`` with empty state returning a descent direction (end
      the chain with ``optax.scale_by_learning_rate``). Each leaf keeps its dtype; a zero
      gradient gives a zero update.

    Raises:
      ValueError: for bad hyperparameters at construction, and at ``init`` for a leaf that is not
        a float matrix (rank 1, integer, rank > 2 without dimension numbers), naming its path,
        shape and dtype.

    Example:
      Muon's split: kernels (conv kernels by their dimension numbers) get ``√(d_out/d_in) U Vᵀ``,
      the rest Adam, whose first step is ``g / (|g| + ε)``.

      >>> tx = optax.chain(
      ...     optax.partition(
      ...         {"ns": normtx.orthogonalize_newton_schulz(
      ...             dimension_numbers=lambda p, x: normtx.dims.CONV_HWIO if x.ndim == 4 else None),
      ...          "adam": optax.scale_by_adam()},
      ...         lambda params: jax.tree.map(lambda x: "ns" if x.ndim >= 2 else "adam", params)),
      ...     optax.scale_by_learning_rate(0.02))
      >>> params = {"conv": jnp.zeros((3, 3, 2, 4), jnp.float32),
      ...           "kernel": jnp.zeros((8, 2), jnp.float32), "bias": jnp.zeros(2, jnp.float32)}
      >>> keys = jax.random.split(jax.random.key(0), 2)
      >>> grads = {"conv": jax.random.normal(keys[0], (3, 3, 2, 4), jnp.float32),
      ...          "kernel": jax.random.normal(keys[1], (8, 2), jnp.float32),
      ...          "bias": jnp.array([0.5, -3.0], jnp.float32)}
      >>> updates, _ = jax.jit(tx.update)(grads, tx.init(params))
      >>> print(np.round(updates["bias"], 6))
      [-0.02  0.02]
      >>> s = np.linalg.svd(np.asarray(updates["kernel"], np.float64), compute_uv=False)
      >>> bool(np.allclose(s, 0.02 * np.sqrt(2 / 8), rtol=0.15))  # 5 steps: σ(X_5) ≈ 1 ± 0.15
      True

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology* (2024), Prop. 5, Appendix A.
      Jordan et al., *Muon* (2024); Amsel et al., *The Polar Express*, arXiv:2505.16932 (2025).
    """
    check_int("steps", steps, _WHAT, minimum=1)
    check_static("coefficients", coefficients, _WHAT, arrays=True)
    schedule = newton_schulz_schedule(coefficients, steps)
    check_scale(scale, _WHAT)
    if compute_dtype is not None and not jnp.issubdtype(jnp.dtype(compute_dtype), jnp.floating):
        raise ValueError(f"{_WHAT}: compute_dtype must be a float dtype, got {compute_dtype!r}.")
    check_choice("normalization", normalization, NORMALIZATIONS, _WHAT)
    if not isinstance(batch_same_shapes, bool):
        raise ValueError(f"{_WHAT}: batch_same_shapes must be a bool, got {batch_same_shapes!r}.")
    check_mesh(mesh, _WHAT)

    def plan(tree) -> list[_Leaf]:
        triples = broadcast_to_leaves(
            dimension_numbers, tree, is_value=_is_dims, what=_WHAT, expected="DimensionNumbers"
        )
        return [_leaf_plan(p, x, d, scale) for p, x, d in triples]

    def orthogonalize(stacked: jax.Array) -> jax.Array:
        return newton_schulz(
            stacked,
            steps=steps,
            coefficients=schedule,
            compute_dtype=compute_dtype,
            normalization=normalization,
        )

    def init_fn(params):
        plan(params)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        flat, treedef = flatten_with_paths(updates)
        plans = plan(updates)
        items = [(p, g, lp.dims, orthogonalize) for (p, g), lp in zip(flat, plans, strict=True)]
        outs = map_matrices(items, batch=batch_same_shapes, mesh=mesh)
        new = [
            (lp.scale * x).astype(g.dtype) for (_, g), lp, x in zip(flat, plans, outs, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, new), state

    return optax.GradientTransformation(init_fn, update_fn)
