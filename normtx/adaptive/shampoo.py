r"""Shampoo (lecture notes §6, 6.1, Appendix I.1) with blocking, grafting and stale roots.

For a matrix leaf with gradient ``G ∈ R^{m×n}`` (a Flax kernel ``(fan_in, fan_out)``; the notes'
``W`` is its transpose, which swaps ``L`` and ``R`` and transposes the update, so nothing changes)::

    L_t = L_{t-1} + G_t G_tᵀ,   R_t = R_{t-1} + G_tᵀ G_t       accumulator='sum'  (eq. 40)
    L_t = β L_{t-1} + (1-β) G_t G_tᵀ, same for R, debiased     accumulator='ema'  (§6.1)
    direction = L_t^{-1/4} G_t R_t^{-1/4}  =  unvec((L_t ⊗ R_t)^{-1/4} vec(G_t))    (eq. 41, (73))

(``vec`` row-major as in Appendix G: ``vec(A X B) = (A ⊗ Bᵀ) vec(X)``). With accumulation off —
one step, or ``accumulator='ema', beta2=0`` — ``L = G Gᵀ`` and ``R = Gᵀ G`` and the direction is
``U Vᵀ`` (anthology eq. 15–16, Prop. 4/5): spectral descent. ``idealized=True`` is the iteration
of Appendix I.1 (Morwani et al. 2024): ``tr(L)^{1/2} L^{-1/2} G R^{-1/2} = I_emp^{-1/2} vec(G)``
when ``I_emp = L ⊗ R / tr(L)`` (Lemma I.1, eq. 90). The notes print the trace factor as
``tr(L)^{-1/2}``; the Newton step ``I_emp^{-1/2} g`` of the lemma has ``tr(L)^{+1/2}`` — the only
power for which the step is invariant to rescaling ``G`` — and that is what is implemented.

**Stale roots** (as Meta's distributed Shampoo, Shi et al. 2023). The statistics are updated every
step; the inverse roots are kept in the state and recomputed by ``normtx.linalg.inverse_pth_root``
only at steps ``t = start, start + k, start + 2k, …`` (``k = precondition_every``) inside one
``lax.cond``; in between the last roots are reused. A recomputed root is *accepted* per block only
if it is finite and its statistic is nonzero; otherwise the previous root is kept (initially the
identity), so a failed root never turns into NaN updates and a statistic that has seen no gradient
yet does not zero the step. Before ``start_preconditioning_step`` the update is the graft method's
step (the raw gradient without grafting).

**Grafting** (Agarwal et al. 2020): the Shampoo direction ``D`` of each layer (each matrix: a
stacked leaf has several) is rescaled to the Frobenius norm of the graft method's step ``P``,
``D ‖P‖_F / ‖D‖_F`` — Shampoo's direction with the step size of ``'adam'`` (RMSProp with a
debiased second moment, ``g/(sqrt(v̂)+ε)``, as Meta's ``AdamGraftingConfig``), ``'adagrad'``
(``g/(sqrt(Σg²)+ε)``) or ``'sgd'`` (``g``). Meta grafts per block; this grafts per layer.

**Blocking.** With ``block_size=b`` each side of size ``> b`` is cut into the fewest equal blocks
of at most ``b`` (zero padding at the end) and every block gets its own ``L``, ``R``: the
preconditioner is block-diagonal. Zero padding is exact: padded rows of ``G`` are zero, so they
decouple from the rest of ``L`` (and padded columns from ``R``).

**Numerics.** Roots are ``inverse_pth_root(A, p, method=inverse_root, ridge=ridge)``: the relative
ridge ``ridge·‖A‖_F`` (Meta uses an absolute ``ε = 1e-12``) keeps rank-deficient statistics
invertible. A rank-deficient statistic (the first steps, before ``L`` has seen ``m`` independent
directions) gives a root that is ``(ridge·‖L‖)^{-1/p}`` on its null space; fresh roots meet no
gradient there, but a *stale* root applied to a later gradient does, and in float32 that null-space
scale is only determined to about ``m·eps₃₂/ridge``. ``start_preconditioning_step`` (the graft's
step until the statistics have filled in) and grafting are the usual remedies, or a larger ridge.
``inverse_root`` may also be a callable ``(A, p) -> A^{-1/p}`` on a batch of blocks.

**Non-finite steps.** A block whose ``L`` or ``R`` would not be finite — a NaN/Inf gradient, or a
finite one whose ``G Gᵀ``, ``Gᵀ G`` or their sum with the statistics overflows (in float32 from an
entry of about ``1.8e19``, or a row of ``b`` entries of ``1.8e19 / √b``) — is skipped by ``L``
and ``R``: kept, it would stay in them for ever and freeze the roots, silently. That block's
update is NaN, also before ``start_preconditioning_step``: the exact statistics are out of range,
so the step is reported, never replaced by a finite one (``normtx.diagnostics(state,
updates)['finite']`` is False), and the next finite step uses statistics without it. The graft's
moments, like Adam's, keep such a step. (``optax.apply_if_finite`` checks the incoming gradient:
it skips NaN/Inf gradients, not a finite one whose statistics overflow.)

**Leaves.** 2-D leaves are matrices; conv kernels and stacked layers need ``dimension_numbers``.
Vectors (rank 0 or 1) are an error unless ``vectors='graft'``, which gives them the graft method's
step (so it needs a ``graft``).

**Memory** (state floats per leaf): ``2·Σ_blocks (b_m² + b_n²)`` for the statistics and their roots
(``2(m² + n²)`` unblocked), plus ``m·n`` for the ``'adam'``/``'adagrad'`` graft.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from normtx._numerics import compute_dtype, finite_matrices, safe_div
from normtx._pytree import check_state_shape, flatten_state_field, flatten_with_paths
from normtx._validation import (
    check_choice,
    check_int,
    check_positive,
    check_probability,
    check_static,
)
from normtx.adaptive._leaves import (
    DimsSpec,
    balanced_blocks,
    eye_batch,
    field_trees,
    matrix_shape,
    resolve_matrix_leaves,
)
from normtx.dims import as_matrices
from normtx.linalg import inverse_pth_root
from normtx.linalg.roots import INVERSE_ROOT_METHODS

__all__ = ["ScaleByShampooState", "scale_by_shampoo"]

Accumulator = Literal["sum", "ema"]
Graft = Literal["adam", "adagrad", "sgd"] | None
_HI = lax.Precision.HIGHEST


class ScaleByShampooState(NamedTuple):
    """State of ``scale_by_shampoo``; every field but ``count`` has the params' tree structure.

    A vector leaf (``vectors='graft'``) holds ``optax.MaskedNode()`` in the four matrix fields (no
    arrays: orbax cannot save empty ones).
    """

    count: jax.Array  # int32 scalar: steps taken
    stats_left: Any  # per leaf: L of each block, (blocks, b_m, b_m)
    stats_right: Any  # per leaf: R of each block, (blocks, b_n, b_n)
    root_left: Any  # per leaf: the current (possibly stale) left root L^{-1/p}, like stats_left
    root_right: Any  # per leaf: the current right root R^{-1/p}, like stats_right
    graft: Any  # per leaf: the graft's second moment for 'adam'/'adagrad'; else optax.MaskedNode()


class _Layout(NamedTuple):
    dims: Any  # DimensionNumbers, or None for a vector leaf
    batch: int  # matrices in the leaf
    m: int
    n: int
    cm: int  # blocks along m, each of size bm
    bm: int
    cn: int
    bn: int


def _to_blocks(x: jax.Array, lay: _Layout) -> jax.Array:
    """``(batch, m, n)`` -> ``(batch·cm·cn, bm, bn)`` (zero padded)."""
    x = jnp.pad(x, ((0, 0), (0, lay.cm * lay.bm - lay.m), (0, lay.cn * lay.bn - lay.n)))
    x = x.reshape(lay.batch, lay.cm, lay.bm, lay.cn, lay.bn).transpose(0, 1, 3, 2, 4)
    return x.reshape(-1, lay.bm, lay.bn)


def _from_blocks(x: jax.Array, lay: _Layout) -> jax.Array:
    """Inverse of ``_to_blocks``: ``(batch·cm·cn, bm, bn)`` -> ``(batch, m, n)``."""
    x = x.reshape(lay.batch, lay.cm, lay.cn, lay.bm, lay.bn).transpose(0, 1, 3, 2, 4)
    return x.reshape(lay.batch, lay.cm * lay.bm, lay.cn * lay.bn)[:, : lay.m, : lay.n]


def _frobenius(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))


def scale_by_shampoo(
    *,
    accumulator: Accumulator = "sum",
    beta2: float = 0.999,
    bias_correction: bool = True,
    exponent: float | None = None,
    idealized: bool = False,
    precondition_every: int = 1,
    start_preconditioning_step: int = 1,
    block_size: int | None = None,
    graft: Graft = None,
    graft_beta2: float = 0.999,
    graft_eps: float = 1e-8,
    inverse_root: str | Callable[[jax.Array, int], jax.Array] = "eigh",
    ridge: float = 1e-6,
    dimension_numbers: DimsSpec = None,
    vectors: Literal["error", "graft"] = "error",
) -> optax.GradientTransformation:
    r"""Shampoo: ``L_t^{-1/4} G_t R_t^{-1/4}`` per matrix (notes eq. 40, §6.1, Appendix I.1).

    .. math:: D_t = L_t^{-1/p}\, G_t\, R_t^{-1/p}, \qquad L_t = \textstyle\sum_l G_l G_l^\top
              \text{ (or its EMA)}, \quad R_t = \sum_l G_l^\top G_l

    The defaults are the notes' eq. 40 (sums, ``p = 4``, roots every step, no grafting). The usual
    practical setting is ``accumulator='ema', graft='adam', precondition_every=10`` or more. See
    the module docstring for stale roots, grafting, blocking, numerics and memory.

    Args:
      accumulator: ``'sum'`` (eq. 40) or ``'ema'`` (§6.1).
      beta2: the EMA decay of ``'ema'`` statistics, ``0 <= beta2 < 1`` (0: no accumulation).
      bias_correction: divide ``'ema'`` statistics by ``1 - beta2^t`` (§6.1's bias-corrected EMA).
      exponent: ``-1/p`` for a positive integer ``p``; ``None`` for ``-1/4`` (``-1/2`` with
        ``idealized``).
      idealized: Appendix I.1: ``tr(L)^{1/2} L^{-1/2} G R^{-1/2}``.
      precondition_every: recompute the roots every this many steps (``>= 1``).
      start_preconditioning_step: the first step (1-based) that uses Shampoo's direction; earlier
        steps take the graft's step. The roots are first computed at this step.
      block_size: ``None`` or the largest block side ``b >= 1``.
      graft: ``'adam'``, ``'adagrad'``, ``'sgd'`` or ``None`` (no rescaling).
      graft_beta2: the ``'adam'`` graft's second-moment decay, ``0 <= graft_beta2 < 1``.
      graft_eps: ``>= 0``, added to the graft's ``sqrt(v)``.
      inverse_root: ``'eigh'`` (default, as Meta's distributed Shampoo), ``'newton'`` (coupled
        Newton iteration with an eigh fallback, faster on accelerators), or a callable
        ``(A, p) -> A^{-1/p}`` on a batch of blocks.
      ridge: relative ridge for the roots (``>= 0``), see ``normtx.linalg.inverse_pth_root``.
      dimension_numbers: ``DimensionNumbers`` for leaves of rank > 2 (one value, a pytree prefix
        of the params, or ``(path, leaf) -> DimensionNumbers | None``).
      vectors: ``'error'`` or ``'graft'`` for leaves of rank 0 or 1.

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction (end the chain with
      ``optax.scale_by_learning_rate``). State: ``ScaleByShampooState``.

    Raises:
      ValueError: at construction for bad hyperparameters (an exponent that is not ``-1/p``,
        ``vectors='graft'`` without a graft, …); at ``init`` (naming the leaf's path, shape and
        dtype) for a vector leaf under ``vectors='error'``, a leaf of rank > 2 without dimension
        numbers, or a non-float leaf.

    Example:
      The notes' eq. 40: at the first step ``L = G Gᵀ``, ``R = Gᵀ G`` and
      ``L^{-1/4} G R^{-1/4} = U Vᵀ``, the polar factor of ``G``.

      >>> tx = normtx.adaptive.scale_by_shampoo()
      >>> g = jax.random.normal(jax.random.key(0), (4, 3), jnp.float32)
      >>> d, _ = jax.jit(tx.update)(g, tx.init(g))
      >>> U, _, Vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
      >>> bool(np.allclose(np.asarray(d, np.float64), U @ Vt, atol=1e-4))
      True

      The practical setting, with conv kernels: each matrix's step gets the Frobenius norm of
      Adam's, whose first step is ``g / |g|`` (norm ``√72`` for a ``3×3×2×4`` kernel); the bias
      takes Adam's step itself.

      >>> dims = lambda path, leaf: normtx.dims.CONV_HWIO if leaf.ndim == 4 else None
      >>> tx = optax.chain(
      ...     normtx.adaptive.scale_by_shampoo(accumulator="ema", beta2=0.99, graft="adam",
      ...                                      precondition_every=10, block_size=512,
      ...                                      dimension_numbers=dims, vectors="graft"),
      ...     optax.scale_by_learning_rate(1e-3))
      >>> params = {"conv": jnp.zeros((3, 3, 2, 4), jnp.float32), "bias": jnp.zeros(4, jnp.float32)}
      >>> grads = {"conv": jax.random.normal(jax.random.key(1), (3, 3, 2, 4), jnp.float32),
      ...          "bias": jnp.array([0.5, -1.0, 2.0, -3.0], jnp.float32)}
      >>> u, _ = jax.jit(tx.update)(grads, tx.init(params))
      >>> print(f"{float(jnp.linalg.norm(u['conv'])) / 1e-3:.3f} {np.sqrt(72):.3f}")
      8.485 8.485
      >>> print(np.round(np.asarray(u["bias"], np.float64) / 1e-3, 3))
      [-1.  1. -1.  1.]

    References:
      Stratos, *Adaptive Learning Methods*, §6 (eq. 40–43), §6.1, Appendix G (eq. 67, 73), I.1
      (Lemma I.1). Gupta, Koren & Singer, *Shampoo*, ICML 2018. Shi et al., *A Distributed
      Data-Parallel PyTorch Implementation of the Distributed Shampoo Optimizer*, 2023. Morwani et
      al., *A New Perspective on Shampoo's Preconditioner*, 2024. Bernstein & Newhouse, *Old
      Optimizer, New Norm*, Prop. 4–5.
    """
    what = "scale_by_shampoo"
    check_choice("accumulator", accumulator, ("sum", "ema"), what)
    check_probability("beta2", beta2, what)
    if exponent is None:
        exponent = -0.5 if idealized else -0.25
    check_static("exponent", exponent, what)  # p is a Python int of the root iteration
    if idealized and exponent != -0.5:
        raise ValueError(f"{what}: idealized=True uses exponent -1/2, got exponent={exponent!r}.")
    p_float = -1.0 / exponent if exponent < 0 else math.inf
    p = round(p_float) if math.isfinite(p_float) else 0
    if p < 1 or abs(p_float - p) > 1e-9:
        raise ValueError(
            f"{what}: exponent must be -1/p for a positive integer p (e.g. -0.25, -0.5), "
            f"got {exponent!r}."
        )
    check_int("precondition_every", precondition_every, what, minimum=1)
    check_int("start_preconditioning_step", start_preconditioning_step, what, minimum=1)
    check_int("block_size", block_size, what, minimum=1, optional=True)
    check_choice("graft", graft, ("adam", "adagrad", "sgd", None), what)
    check_probability("graft_beta2", graft_beta2, what)
    check_positive("graft_eps", graft_eps, what, allow_zero=True)
    if not callable(inverse_root):
        check_choice("inverse_root", inverse_root, INVERSE_ROOT_METHODS, what)
    check_positive("ridge", ridge, what, allow_zero=True)
    check_choice("vectors", vectors, ("error", "graft"), what)
    if vectors == "graft" and graft is None:
        raise ValueError(f"{what}: vectors='graft' gives vectors the graft's step; set graft too.")
    hint = (
        "Shampoo preconditions matrices; pass vectors='graft' (with graft='adam', 'adagrad' or "
        "'sgd') to give vectors the graft's step, give this leaf dimension numbers, or route it "
        "to another transform with optax.partition."
    )
    start, every = start_preconditioning_step, precondition_every

    def root_fn(a: jax.Array) -> jax.Array:
        if callable(inverse_root):
            return inverse_root(a, p)
        return inverse_pth_root(a, p, method=inverse_root, ridge=ridge)

    def _layouts(tree) -> list[_Layout]:
        triples = resolve_matrix_leaves(
            tree, dimension_numbers, what=what, vectors_ok=vectors == "graft", vector_hint=hint
        )
        out = []
        for _, leaf, dims in triples:
            if dims is None:
                out.append(_Layout(None, 0, 0, 0, 0, 0, 0, 0))
                continue
            batch, m, n = matrix_shape(jnp.shape(leaf), dims)
            rows, cols = balanced_blocks(m, block_size), balanced_blocks(n, block_size)
            out.append(_Layout(dims, batch, m, n, *rows, *cols))
        return out

    def init_fn(params):
        rows = []
        for lay, leaf in zip(_layouts(params), jax.tree.leaves(params), strict=True):
            dt = compute_dtype(leaf.dtype)
            if lay.dims is None:
                mats = [optax.MaskedNode()] * 4
            else:
                k = lay.batch * lay.cm * lay.cn
                eye_m, eye_n = eye_batch(k, lay.bm, dt), eye_batch(k, lay.bn, dt)
                mats = [jnp.zeros_like(eye_m), jnp.zeros_like(eye_n), eye_m, eye_n]
            has_v = graft in ("adam", "adagrad")
            mats.append(jnp.zeros(jnp.shape(leaf), dt) if has_v else optax.MaskedNode())
            rows.append(mats)
        fields = field_trees(jax.tree.structure(params), rows, 5)
        return ScaleByShampooState(jnp.zeros([], jnp.int32), *fields)

    def graft_step(g: jax.Array, v: jax.Array, tf: jax.Array):
        if graft == "adam":
            v = graft_beta2 * v + (1 - graft_beta2) * g * g
            return safe_div(g, jnp.sqrt(v / (1 - graft_beta2**tf)) + graft_eps), v
        if graft == "adagrad":
            v = v + g * g
            return safe_div(g, jnp.sqrt(v) + graft_eps), v
        return g, v

    def accepted(new: jax.Array, old: jax.Array, stat: jax.Array) -> jax.Array:
        ok = jnp.all(jnp.isfinite(new), axis=(-2, -1)) & (jnp.max(jnp.abs(stat), axis=(-2, -1)) > 0)
        return jnp.where(ok[:, None, None], new, old)

    def compute_roots(operands):
        stats, old = operands
        out = []
        for (lh, rh), (pl, pr) in zip(stats, old, strict=True):
            new_l = root_fn(lh)
            if idealized:  # fold tr(L)^{1/2} into the left root: stale roots keep it consistent
                new_l = jnp.sqrt(jnp.trace(lh, axis1=-2, axis2=-1))[:, None, None] * new_l
            new_r = root_fn(rh)
            out.append(
                (accepted(new_l.astype(pl.dtype), pl, lh), accepted(new_r.astype(pr.dtype), pr, rh))
            )
        return out

    def keep_roots(operands):
        return list(operands[1])

    def update_fn(updates, state, params=None):
        del params
        lays = _layouts(updates)
        count = optax.safe_increment(state.count)
        leaves, treedef = jax.tree.flatten(updates)
        fields = (
            state.stats_left,
            state.stats_right,
            state.root_left,
            state.root_right,
            state.graft,
        )
        names = ("stats_left", "stats_right", "root_left", "root_right", "graft")
        old = [flatten_state_field(updates, f, what=what, name=n) for f, n in zip(fields, names)]
        paths = [p for p, _ in flatten_with_paths(updates)[0]]
        new_stats, debiased, old_roots, grafted, blocks, new_v = [], [], [], [], [], []
        for i, (g, lay) in enumerate(zip(leaves, lays, strict=True)):
            l_old, r_old, pl, pr, v = (f[i] for f in old)
            if lay.dims is not None:
                k = lay.batch * lay.cm * lay.cn
                check_state_shape(what, paths[i], g, l_old, (k, lay.bm, lay.bm), "statistic L")
                check_state_shape(what, paths[i], g, r_old, (k, lay.bn, lay.bn), "statistic R")
            if graft in ("adam", "adagrad"):
                check_state_shape(what, paths[i], g, v, jnp.shape(g), "graft moment")
            g32 = g.astype(compute_dtype(g.dtype))
            tf = count.astype(g32.dtype)
            gd, v_new = graft_step(g32, v, tf)
            grafted.append(gd)
            new_v.append(v_new.astype(v.dtype) if graft in ("adam", "adagrad") else v)
            if lay.dims is None:
                new_stats.append((l_old, r_old))
                blocks.append(None)
                continue
            x = _to_blocks(as_matrices(g32, lay.dims)[0], lay)
            xxt = jnp.matmul(x, jnp.swapaxes(x, -1, -2), precision=_HI)
            xtx = jnp.matmul(jnp.swapaxes(x, -1, -2), x, precision=_HI)
            if accumulator == "sum":
                lt, rt = l_old + xxt, r_old + xtx
            else:
                lt = beta2 * l_old + (1 - beta2) * xxt
                rt = beta2 * r_old + (1 - beta2) * xtx
            # A block whose L or R would not be finite (a NaN/Inf gradient, G Gᵀ or the sum
            # overflowing) would stay in them for ever and freeze the roots (a non-finite root is
            # never accepted): the statistics skip it, and its update is NaN (below).
            ok = finite_matrices(lt) & finite_matrices(rt)
            lt, rt = jnp.where(ok, lt, l_old), jnp.where(ok, rt, r_old)
            lh, rh = lt, rt
            if accumulator == "ema":
                corr = 1 - beta2**tf if bias_correction else 1.0  # beta2 = 0: 1 - 0**t = 1
                lh, rh = lt / corr, rt / corr
            new_stats.append((lt.astype(l_old.dtype), rt.astype(r_old.dtype)))
            debiased.append((lh, rh))
            old_roots.append((pl, pr))
            blocks.append((x, _from_blocks(jnp.broadcast_to(~ok, x.shape), lay)))

        do_roots = (count >= start) & ((count - start) % every == 0)
        # Branches defined once per transform and operands passed explicitly: the cond is traced
        # once, also in eager mode.
        roots = lax.cond(do_roots, compute_roots, keep_roots, (debiased, old_roots))

        out, roots_iter, all_roots = [], iter(roots), []
        for i, (g, lay, xb, gd) in enumerate(zip(leaves, lays, blocks, grafted, strict=True)):
            if xb is None:
                out.append(gd.astype(g.dtype))
                all_roots.append((old[2][i], old[3][i]))
                continue
            x, skipped = xb
            pl, pr = next(roots_iter)
            all_roots.append((pl, pr))
            d = jnp.matmul(jnp.matmul(pl, x, precision=_HI), pr, precision=_HI)
            d = _from_blocks(d, lay)
            gm, inverse = as_matrices(gd, lay.dims)
            if graft is not None:
                d = d * safe_div(_frobenius(gm), _frobenius(d))
            step = jnp.where(skipped, jnp.nan, jnp.where(count >= start, d, gm))
            out.append(inverse(step).astype(g.dtype))

        def tree(xs):
            return jax.tree.unflatten(treedef, xs)

        new_state = ScaleByShampooState(
            count,
            tree([s[0] for s in new_stats]),
            tree([s[1] for s in new_stats]),
            tree([r[0] for r in all_roots]),
            tree([r[1] for r in all_roots]),
            tree(new_v),
        )
        return tree(out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
