r"""Full-matrix AdaGrad (lecture notes §3.2): ``(Σ_l g_l g_lᵀ)^{-1/2} g_t`` per leaf or block.

The regret-optimal preconditioner under a trace budget is ``A ∝ O_T^{1/2}`` with
``O_T = Σ_t g_t g_tᵀ`` (eq. 33); its per-step version ``A_t = O_t^{1/2}`` gives the bound
``Regret_T <= (3D/2) tr(O_T^{1/2})`` (eq. 36), never worse than diagonal AdaGrad's (Lemma C.4).
The update is

.. math:: u_t = (O_t + \epsilon I)^{-1/2} g_t, \qquad O_t = O_{t-1} + g_t g_t^\top,

with ``g_t`` the leaf flattened (row-major). ``ε`` plays the role of ``optax.adagrad``'s ``eps``
(inside the root); when every ``O_t`` is diagonal the two coincide.

**Memory is O(n²) per leaf**: ``n²`` floats for a leaf of ``n`` entries (a 512×512 kernel would need
6.9e10). Leaves above ``max_size`` entries are refused with an error that names them;
``block_size=b`` instead splits each flattened leaf into ``ceil(n/b)`` contiguous blocks of equal
size ``<= b`` (zero padding at the end is exact: padded coordinates never see a gradient) and
preconditions each block on its own — the block-diagonal restriction of ``O_t`` — for about ``n·b``
floats per leaf.

**Roots.** ``normtx.linalg.inverse_pth_root(O_t + εI, 2, method=inverse_root, ridge=ridge)``, every
step (``ridge`` is relative: ``ridge·‖O_t + εI‖_F`` is added to the diagonal). ``O_t`` has rank
at most ``t``: while ``t < n`` the ridge (or ``ε``) is what makes the root finite on the rest of the
space, where ``g_t`` has no component. In float32 the eigenvectors leak about ``eps₃₂`` of ``g_t``
into that space, which the ridge amplifies by ``ridge^{-1/2}``: while ``O_t`` is rank-deficient the
update is accurate to about ``eps₃₂ · ridge^{-1/2} ≈ 1e-4`` (float32 accuracy once it has full
rank, or with ``ε`` large enough). The zero matrix's root is zero, so zero gradients give zero
updates.

**Non-finite steps.** A block whose ``O_t`` would not be finite — a NaN/Inf gradient, or a finite
one whose ``g gᵀ`` (or its sum with ``O_{t-1}``) overflows: an entry above about ``1.8e19`` in
float32 — is skipped by ``O_t``, which would otherwise keep it for ever, and that block's update
is NaN. The exact ``O_t`` is out of range, so the step is reported, never replaced by a finite
one: ``normtx.diagnostics(state, updates)['finite']`` is False, while the state stays finite and
later steps are those of a run without that gradient. (``optax.apply_if_finite`` checks the
incoming gradient: it skips NaN/Inf gradients, not a finite one whose statistics overflow.)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normtx._numerics import compute_dtype, finite_matrices
from normtx._pytree import (
    check_state_shape,
    describe_leaf,
    flatten_state_field,
    flatten_with_paths,
)
from normtx._validation import check_choice, check_int, check_positive
from normtx.adaptive._leaves import balanced_blocks, check_float_leaves
from normtx.linalg import inverse_pth_root
from normtx.linalg.roots import INVERSE_ROOT_METHODS, InverseRootMethod
from normtx.sharding._layout import replicate_except

__all__ = ["ScaleByFullAdagradState", "scale_by_full_adagrad"]


class ScaleByFullAdagradState(NamedTuple):
    """State of ``scale_by_full_adagrad``; ``stats`` has the params' tree structure."""

    count: jax.Array  # int32 scalar: steps taken
    stats: Any  # per leaf: O_t = Σ g gᵀ of each block, shape (blocks, b, b), float32 or wider


def scale_by_full_adagrad(
    *,
    eps: float = 0.0,
    block_size: int | None = None,
    max_size: int = 4096,
    inverse_root: InverseRootMethod = "eigh",
    ridge: float = 1e-6,
) -> optax.GradientTransformation:
    r"""Full-matrix AdaGrad, ``u_t = (Σ_{l<=t} g_l g_lᵀ + εI)^{-1/2} g_t`` (notes §3.2.1).

    .. math:: u_t = \Bigl(\sum_{l=1}^t g_l g_l^\top + \epsilon I\Bigr)^{-1/2} g_t

    Args:
      eps: ``ε >= 0`` added to the diagonal of ``O_t`` before the root (``optax.adagrad``'s eps).
      block_size: ``None`` (one ``n × n`` preconditioner per leaf) or ``b >= 1``: precondition
        contiguous blocks of at most ``b`` entries of the flattened leaf.
      max_size: the largest preconditioner side allowed (a leaf's size without blocking, the block
        size with it); bigger leaves raise at ``init``.
      inverse_root: ``'eigh'`` (default: one symmetric eigendecomposition, the most accurate) or
        ``'newton'`` (the coupled Newton iteration with an eigh fallback, faster on accelerators);
        see ``normtx.linalg.inverse_pth_root``.
      ridge: relative ridge for the root, ``>= 0``.

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction (end the chain with
      ``optax.scale_by_learning_rate``). State: ``n_blocks · b²`` floats per leaf (``n²`` unblocked).

    Raises:
      ValueError: at construction for bad hyperparameters; at ``init`` for a non-float leaf or a
        leaf whose preconditioner would exceed ``max_size`` (naming its path, shape and dtype); at
        ``update`` for updates of another tree or another size than the params. The state holds
        the flattened leaf's statistics only, so an update of the same size but another shape (a
        transposed kernel) cannot be told apart: pass updates shaped like the params.

    Example:
      At the first step ``Σ = g gᵀ`` and its pseudo-inverse root maps ``g`` to ``g / ‖g‖₂``.

      >>> tx = optax.chain(normtx.adaptive.scale_by_full_adagrad(block_size=256),
      ...                  optax.scale_by_learning_rate(0.1))
      >>> w = {"w": jnp.zeros(2, jnp.float32)}
      >>> updates, _ = jax.jit(tx.update)({"w": jnp.array([3.0, 4.0], jnp.float32)}, tx.init(w))
      >>> print(np.round(updates["w"], 4))  # -0.1 · (3, 4) / 5
      [-0.06 -0.08]

    References:
      Stratos, *Adaptive Learning Methods*, §3.2 (eq. 33–36), Fact 2.1, Lemma C.4. Duchi, Hazan &
      Singer, *Adaptive subgradient methods*, JMLR 2011.
    """
    what = "scale_by_full_adagrad"
    check_positive("eps", eps, what, allow_zero=True)
    check_int("block_size", block_size, what, minimum=1, optional=True)
    check_int("max_size", max_size, what, minimum=1)
    check_choice("inverse_root", inverse_root, INVERSE_ROOT_METHODS, what)
    check_positive("ridge", ridge, what, allow_zero=True)
    if block_size is not None and block_size > max_size:
        raise ValueError(f"{what}: block_size={block_size} exceeds max_size={max_size}.")

    def _layout(params):
        layout = []
        for path, leaf in check_float_leaves(params, what):
            n = math.prod(jnp.shape(leaf))
            count, b = balanced_blocks(n, block_size)
            if b > max_size:
                raise ValueError(
                    f"{what}: leaf {describe_leaf(path, leaf)} has {n} entries; its full-matrix "
                    f"preconditioner would hold {n}² = {float(n) ** 2:.3g} floats (O(n²) memory, "
                    f"max_size={max_size}). Pass block_size=b (e.g. block_size={min(max_size, 1024)})"
                    " to precondition blocks of at most b entries (about n·b floats), raise "
                    "max_size, or route this leaf to diagonal AdaGrad (optax.adagrad) with "
                    "optax.partition."
                )
            layout.append((count, b))
        return layout

    def init_fn(params):
        layout = _layout(params)
        stats = [
            jnp.zeros((count, b, b), compute_dtype(leaf.dtype))
            for (count, b), leaf in zip(layout, jax.tree.leaves(params), strict=True)
        ]
        return ScaleByFullAdagradState(
            count=jnp.zeros([], jnp.int32),
            stats=jax.tree.unflatten(jax.tree.structure(params), stats),
        )

    def update_fn(updates, state, params=None):
        del params
        layout = _layout(updates)
        flat, treedef = flatten_with_paths(updates)
        old = flatten_state_field(updates, state.stats, what=what, name="stats")
        out, stats = [], []
        for (path, g), o, (count, b) in zip(flat, old, layout, strict=True):
            check_state_shape(what, path, g, o, (count, b, b), "statistic O_t")
            # The whole flattened leaf is one vector: gathered first under explicit sharding.
            x = replicate_except(g).astype(o.dtype).reshape(-1)
            x = jnp.pad(x, (0, count * b - x.size)).reshape(count, b)
            # A block whose O_t would not be finite (a NaN/Inf gradient, g gᵀ or the sum
            # overflowing) would stay in it for ever: O_t skips it, and the block's update is NaN
            # (the step is reported, not replaced by a finite one).
            new = o + x[:, :, None] * x[:, None, :]
            ok = finite_matrices(new)
            o = jnp.where(ok, new, o)
            damped = o + eps * jnp.eye(b, dtype=o.dtype)  # no Python branch: eps may be traced
            root = inverse_pth_root(damped, 2, method=inverse_root, ridge=ridge)
            u = jnp.einsum("kij,kj->ki", root, x, precision=jax.lax.Precision.HIGHEST)
            u = jnp.where(ok[:, 0], u, jnp.nan)
            out.append(u.reshape(-1)[: g.size].reshape(g.shape).astype(g.dtype))
            stats.append(o)
        new_state = ScaleByFullAdagradState(
            count=optax.safe_increment(state.count), stats=jax.tree.unflatten(treedef, stats)
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
