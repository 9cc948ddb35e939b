r"""Second moments and RMS alignment of orthogonalized updates (NorMuon, AdaMuon).

Muon's polar factor ``O = U Vᵀ`` has unit singular values, but its *neurons* — the rows of the
weight matrix ``W = Kᵀ``, i.e. the fan-out columns of a Flax kernel ``K`` of shape
``(fan_in, fan_out)`` — can have very different norms. NorMuon keeps an EMA of each neuron's mean
square and divides it out; NorMuon and AdaMuon then rescale each matrix to a fixed RMS so that the
learning rate of Adam carries over. Two composable transforms, to chain after the polar factor:

- ``scale_by_neuron_rms``: ``v_t = β v_{t-1} + (1-β) mean_fan_in(O_t ⊙ O_t)`` (one entry per
  neuron), ``Ô_t = O_t ⊘ (√v_t + ε)`` (NorMuon, Algorithm 1, the steps after Newton–Schulz);
- ``scale_to_rms``: ``X ↦ ρ √(mn) X / ‖X‖_F`` per ``m × n`` matrix, so ``RMS = ρ`` (NorMuon's
  ``η̂ = 0.2 η √(mn)/‖Ô_t‖_F``; AdaMuon's RMS-aligned rescaling ``γ_t = 0.2 √(mn)/‖Ô_t‖_F``).

AdaMuon's element-wise second moment of ``O`` is ``optax.scale_by_rms(decay=β, eps=ε,
eps_in_sqrt=False)``: see ``normtx.optimizers.adamuon``.

**Layout.** The second moment is per *output* neuron: one entry per fan-out index (per batch
slice of a conv kernel or a scanned stack), averaged over the neuron's fan-in. In PyTorch's layout
(``W`` of shape ``(out, in)``, as in the paper's code) that is the mean over the last axis.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normtx._numerics import compute_dtype, div_by_max, safe_div
from normtx._pytree import check_state_shape, describe_leaf, flatten_state_field
from normtx._validation import check_positive, check_probability
from normtx.adaptive._leaves import DimsSpec, matrix_shape, resolve_matrix_leaves
from normtx.dims import DimensionNumbers, as_matrices

__all__ = ["ScaleByNeuronRmsState", "matrix_leaves", "scale_by_neuron_rms", "scale_to_rms"]

_ROUTE = (
    "These transforms act on matrices (a polar factor's neurons); route biases, gains and "
    "embeddings to another transform with optax.partition or optax.masked, or give this leaf "
    "dimension numbers."
)


def matrix_leaves(
    tree: Any, dimension_numbers: DimsSpec, what: str
) -> list[tuple[str, jax.Array, DimensionNumbers]]:
    """``[(path, leaf, dims), ...]`` for a tree of non-empty float matrices (2-D kernels, or leaves
    with dimension numbers); raises ``ValueError`` naming the path, shape and dtype otherwise."""
    triples = resolve_matrix_leaves(
        tree, dimension_numbers, what=what, vectors_ok=False, vector_hint=_ROUTE
    )
    for path, leaf, _ in triples:
        if 0 in jnp.shape(leaf):
            raise ValueError(f"{what}: leaf {describe_leaf(path, leaf)} is empty. {_ROUTE}")
    return triples


class ScaleByNeuronRmsState(NamedTuple):
    """State of ``scale_by_neuron_rms``; ``nu`` has the params' tree structure."""

    nu: Any  # per leaf: v, each neuron's EMA mean square, (batch, fan_out) in float32 (f64 leaves: f64)


def scale_by_neuron_rms(
    *,
    decay: float = 0.95,
    eps: float = 1e-8,
    dimension_numbers: DimsSpec = None,
) -> optax.GradientTransformation:
    r"""NorMuon's neuron-wise normalization: each neuron divided by its RMS, averaged over time.

    For each matrix ``O`` of shape ``(fan_in, fan_out)`` (the polar factor of the momentum, in
    NorMuon) and each neuron ``j`` (column ``j`` of the kernel, row ``j`` of ``W = Kᵀ``):

    .. math:: v_{t,j} = \beta\, v_{t-1,j} + (1-\beta)\,\frac{1}{d_{in}}\sum_i O_{t,ij}^2,
              \qquad \hat O_{t,ij} = \frac{O_{t,ij}}{\sqrt{v_{t,j}} + \epsilon}

    with ``v_0 = 0`` and no bias correction (the paper's Algorithm 1; the RMS alignment that
    follows, ``scale_to_rms``, removes any common factor). With ``β = 0`` every neuron of ``Ô`` has
    RMS ``1`` (for ``ε = 0``): the update is row-normalized, and ``scale_to_rms`` gives each neuron
    the same RMS ``ρ``.

    A conv kernel or a scanned stack is a batch of matrices (``dimension_numbers``): every slice
    has its own neurons. A zero neuron gives a zero output, never NaN.

    Args:
      decay: ``β`` in ``[0, 1)``, the EMA decay of the second moment (the paper's ``β₂``).
      eps: ``ε > 0`` (or ``0``) added to ``√v``.
      dimension_numbers: ``normtx.dims.DimensionNumbers`` for leaves of rank > 2 (one value, a
        pytree prefix of the params, or ``(path, leaf) -> DimensionNumbers | None``); a 2-D leaf
        is ``(fan_in, fan_out)``.

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction (chain it after the polar
      factor and before ``scale_to_rms``). State: ``ScaleByNeuronRmsState``, one float32 entry per
      neuron (``fan_out`` per matrix). Each leaf keeps its dtype.

    Raises:
      ValueError: at construction for bad hyperparameters; at ``init`` for a leaf that is not a
        non-empty float matrix (a bias, an integer leaf, rank > 2 without dimension numbers),
        naming its path, shape and dtype.

    Example:
      NorMuon's direction (end the chain with ``optax.scale_by_learning_rate``). At the first
      step every neuron is divided by ``√(1-β)`` times its RMS, so all neurons have the same RMS
      and ``scale_to_rms`` makes it ``ρ``:

      >>> tx = optax.chain(
      ...     normtx.orthogonalize_newton_schulz(scale="spectral", coefficients="muon"),
      ...     normtx.scale_by_neuron_rms(decay=0.95),
      ...     normtx.scale_to_rms(rms=0.2))
      >>> g = jax.random.normal(jax.random.key(0), (8, 4), jnp.float32)
      >>> u, _ = jax.jit(tx.update)(g, tx.init(g))
      >>> print(np.round(np.sqrt(np.mean(np.square(u), axis=0)), 4))  # RMS of each neuron
      [0.2 0.2 0.2 0.2]

    References:
      Li, Liu, Liang, Chen & Zhao, *NorMuon: Making Muon more efficient and scalable*,
      arXiv:2510.05491 (2025), Algorithm 1 (the second-moment and normalization steps after
      ``O_t = NS5(M_t)``).
    """
    what = "scale_by_neuron_rms"
    check_probability("decay", decay, what)
    check_positive("eps", eps, what, allow_zero=True)

    def init_fn(params):
        nus = []
        for _, leaf, dims in matrix_leaves(params, dimension_numbers, what):
            batch, _, fan_out = matrix_shape(jnp.shape(leaf), dims)
            nus.append(jnp.zeros((batch, fan_out), compute_dtype(leaf.dtype)))
        return ScaleByNeuronRmsState(nu=jax.tree.unflatten(jax.tree.structure(params), nus))

    def update_fn(updates, state, params=None):
        del params
        triples = matrix_leaves(updates, dimension_numbers, what)
        nus = flatten_state_field(updates, state.nu, what=what, name="nu")
        out, nu_out = [], []
        for (path, g, dims), nu in zip(triples, nus, strict=True):
            batch, _, fan_out = matrix_shape(jnp.shape(g), dims)
            check_state_shape(what, path, g, nu, (batch, fan_out), "second moment nu")
            x, inverse = as_matrices(g.astype(nu.dtype), dims)  # (batch, fan_in, fan_out)
            b = jnp.asarray(decay).astype(nu.dtype)
            nu = b * nu + (1 - b) * jnp.mean(jnp.square(x), axis=1)
            den = jnp.sqrt(nu) + jnp.asarray(eps).astype(nu.dtype)
            out.append(inverse(safe_div(x, den[:, None, :])).astype(g.dtype))
            nu_out.append(nu)
        treedef = jax.tree.structure(updates)
        return jax.tree.unflatten(treedef, out), ScaleByNeuronRmsState(
            nu=jax.tree.unflatten(treedef, nu_out)
        )

    return optax.GradientTransformation(init_fn, update_fn)


def scale_to_rms(
    *, rms: float = 0.2, dimension_numbers: DimsSpec = None
) -> optax.GradientTransformation:
    r"""RMS alignment: every matrix rescaled to root-mean-square ``ρ`` (NorMuon, AdaMuon).

    .. math:: X \mapsto \rho\,\frac{\sqrt{mn}}{\|X\|_F}\,X,\qquad
              \mathrm{RMS} = \frac{\|X\|_F}{\sqrt{mn}} = \rho

    for each ``m × n`` matrix of a leaf (a 2-D kernel, or each slice its ``dimension_numbers``
    pick out). ``ρ = 0.2`` is the paper's choice, the typical RMS of an Adam update, so that Adam's
    learning rates and weight decay carry over. The norm is computed from ``X / max|X|`` (no
    overflow for huge entries); a zero matrix stays zero.

    Args:
      rms: ``ρ > 0``, the target RMS.
      dimension_numbers: as in ``scale_by_neuron_rms``.

    Returns:
      An ``optax.GradientTransformation`` with empty state returning a descent direction. Each
      leaf keeps its dtype.

    Raises:
      ValueError: at construction for ``rms <= 0``; at ``init`` for a leaf that is not a
        non-empty float matrix, naming its path, shape and dtype.

    Example:
      ``X = diag(3, 4)`` has RMS ``‖X‖_F/√4 = 5/2``, so it is multiplied by ``0.2 / 2.5``:

      >>> tx = normtx.scale_to_rms(rms=0.2)
      >>> x = jnp.array([[3.0, 0.0], [0.0, 4.0]], jnp.float32)
      >>> u, _ = jax.jit(tx.update)(x, tx.init(x))
      >>> print(np.round(u, 4))
      [[0.24 0.  ]
       [0.   0.32]]

      AdaMuon's alignment after the polar factor: ``optax.chain(normtx.orthogonalize_newton_schulz(
      scale="spectral"), normtx.scale_to_rms(rms=0.2), optax.scale_by_learning_rate(3e-4))``.

    References:
      Li et al., *NorMuon*, arXiv:2510.05491 (2025), Algorithm 1 (``η̂ = 0.2 η √(mn)/‖Ô_t‖_F``);
      Si, Zhang & Shen, *AdaMuon: Adaptive Muon Optimizer*, arXiv:2507.11005 (2025), Algorithm 1
      (RMS-aligned rescaling); Liu et al., *Muon is Scalable for LLM Training* (2025) (the 0.2
      RMS matching of Adam).
    """
    what = "scale_to_rms"
    check_positive("rms", rms, what)

    def init_fn(params):
        matrix_leaves(params, dimension_numbers, what)
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        out = []
        for _, g, dims in matrix_leaves(updates, dimension_numbers, what):
            x, inverse = as_matrices(g.astype(compute_dtype(g.dtype)), dims)
            y = div_by_max(x, jnp.max(jnp.abs(x), axis=(1, 2), keepdims=True))
            norm = jnp.sqrt(jnp.sum(jnp.square(y), axis=(1, 2), keepdims=True))
            size = math.sqrt(x.shape[1] * x.shape[2])
            scale = jnp.asarray(rms).astype(x.dtype) * size
            out.append(inverse(scale * safe_div(y, norm)).astype(g.dtype))
        return jax.tree.unflatten(jax.tree.structure(updates), out), state

    return optax.GradientTransformation(init_fn, update_fn)
