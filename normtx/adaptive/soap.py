r"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al. 2024).

For a matrix leaf with gradient ``G ∈ R^{m×n}`` (a Flax kernel ``(fan_in, fan_out)``: ``L`` is
the fan-in side, ``R`` the fan-out side) SOAP keeps Shampoo's two statistics and an orthogonal
basis of eigenvectors for each, and runs Adam on the gradient rotated into that basis::

    G'  = Q_Lᵀ G_t Q_R                                  the rotated gradient
    M_t = β₁ M_{t-1} + (1-β₁) G_t                       first moment, in the original space
    V_t = β₂ V_{t-1} + (1-β₂) G' ⊙ G'                   second moment, in the rotated space
    N'  = (Q_Lᵀ M_t Q_R / (1-β₁ᵗ)) / (√(V_t/(1-β₂ᵗ)) + ε)
    direction = Q_L N' Q_Rᵀ
    L ← β_s L + (1-β_s) G_t G_tᵀ,   R ← β_s R + (1-β_s) G_tᵀ G_t
    every f steps: Q_L ← QR(L Q_L), Q_R ← QR(R Q_R)

**Order of a step**, as the paper's algorithm and its reference code: the direction uses the
basis of the previous steps; then ``L`` and ``R`` take ``G_t``; then, when Adam's step count ``t``
is a multiple of ``f = precondition_frequency``, the basis is refreshed. A gradient is never
rotated by a basis computed from itself. The *first* update only fills ``L``, ``R`` and computes
the first basis by ``eigh`` (columns by decreasing eigenvalue); its direction is ``0·G`` (zero,
and NaN where ``G`` is not finite: a bad first gradient is reported like any later one), and
Adam's count ``t`` (bias correction, refresh schedule) starts at the second update. Vectors and
identity-side leaves share that count, so every leaf skips the first update.

**First moment**: kept in the original space and rotated at every step (the paper's algorithm;
the reference code keeps it rotated and re-rotates it whenever the basis changes, which is the
same thing for orthogonal bases). **Second moment**: it cannot be rotated (it is a diagonal
estimate), so at a refresh it is only *permuted*: the refresh sorts the columns of ``Q`` by the
Rayleigh quotients ``diag(Qᵀ L Q)`` (decreasing) before the power step, and ``V``'s rows (left)
and columns (right) follow their eigenvectors — the reference code's behaviour.

**Refresh** (the paper's eigenvector routine): one power iteration and a QR decomposition,
``Q ← qr(L Q)``, from the previous basis; the exact eigenbasis of ``L`` is a fixed point. It is
computed from ``L / max|L|`` (eigenvectors and ``qr``'s ``Q`` do not change with a positive
scale, and ``L Q`` cannot overflow).

**Leaves.** A side larger than ``max_precond_dim`` has no statistic: its basis is the identity
(Adam along that side), as in the reference code. Leaves of rank 0 or 1 (biases, gains) get
Adam, as do leaves whose two sides are both too large. Conv kernels and stacked layers need
``dimension_numbers`` (each batch index is its own matrix, with its own ``L``, ``R`` and bases;
the reference code instead gives every tensor axis a statistic).

**Numerics.** ``ε`` is added to ``√v̂`` as in ``optax.scale_by_adam`` (the reference code adds it
to ``√v`` before the debiasing, an ``ε`` larger by ``1/√(1-β₂ᵗ)``; the two agree for ``ε = 0``).
Statistics, bases and moments are kept in the leaf's compute dtype (float32 for
bfloat16/float16 leaves), matrix products at the highest precision. The statistics are not
debiased: a scalar factor changes neither the eigenvectors nor the refresh. A statistic that is
rank-deficient when its first basis is computed (a non-square matrix at the first step) has an
arbitrary basis of its null space, set by rounding, and SOAP's steps depend on it (Adam is not
rotation invariant), as in the reference code: runs that round differently (sharded, or on
another device) can take different steps on such a matrix until its statistic has full rank and
the refreshes have converged.

**Non-finite steps.** A matrix whose ``L`` or ``R`` would not be finite — a NaN/Inf gradient, or a
finite one whose ``G Gᵀ`` overflows (entries above about ``1.8e19`` in float32) — keeps its
previous ``L`` and ``R`` (kept, it would freeze the basis for ever) and its update is NaN: the step
is reported (``normtx.diagnostics``), never replaced by a finite one. The moments take it, as
Adam's do (``optax.apply_if_finite`` keeps NaN/Inf gradients out of both).

**Limits.** With ``β₁ = β₂ = 0`` the step is ``Q_L φ(Q_Lᵀ G Q_R) Q_Rᵀ`` with ``φ(x) = x/(|x|+ε)``:
sign descent in the rotated coordinates (Adam without EMA is sign descent, anthology eq. 7 and
Prop. 2). The first preconditioned step of any ``β₁, β₂`` is this step (the bias corrections make
``m̂ = G'`` and ``v̂ = G'²``). When ``Q_L, Q_R`` are the singular vectors of ``G`` itself,
``Q_Lᵀ G Q_R`` is diagonal and the step is ``U diag(σ/(σ+ε)) Vᵀ → U Vᵀ``: Shampoo without
accumulation, the spectral-descent direction (Prop. 4–5).

**Memory** (state floats per matrix): ``2·m·n`` for the moments, ``2(m² + n²)`` for the
statistics and their bases (a side above ``max_precond_dim`` has none).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.typing import ArrayLike

from normtx._numerics import compute_dtype, div_by_max, finite_matrices, safe_div
from normtx._pytree import check_state_shape, flatten_state_field, flatten_with_paths
from normtx._validation import check_count, check_positive, check_probability
from normtx.adaptive._leaves import eye_batch, field_trees, matrix_shape, resolve_matrix_leaves
from normtx.dims import DimensionNumbers, DimsSpec, as_matrices

__all__ = ["ScaleBySoapState", "scale_by_soap", "soap"]

_HI = lax.Precision.HIGHEST


class ScaleBySoapState(NamedTuple):
    """State of ``scale_by_soap``; every field but ``count`` has the params' tree structure.

    A side without a statistic (a vector leaf, or a side above ``max_precond_dim``) holds
    ``optax.MaskedNode()`` in its ``stats_*`` and ``basis_*`` fields.
    """

    count: jax.Array  # int32 scalar: updates made (the first only fills L, R and the basis)
    mu: Any  # per leaf: first moment M in the original space, the leaf's shape
    nu: Any  # per leaf: second moment V in the rotated coordinates, laid out like the leaf
    stats_left: Any  # per leaf: L = EMA of G Gᵀ for each matrix, (batch, m, m)
    stats_right: Any  # per leaf: R = EMA of Gᵀ G for each matrix, (batch, n, n)
    basis_left: Any  # per leaf: Q_L, the (approximate) eigenvectors of L, like stats_left
    basis_right: Any  # per leaf: Q_R, like stats_right


class _Layout(NamedTuple):
    dims: DimensionNumbers | None  # None: elementwise Adam (a vector, or no side preconditioned)
    batch: int  # matrices in the leaf
    m: int
    n: int
    left: bool  # m <= max_precond_dim: the fan-in side has L and Q_L
    right: bool  # n <= max_precond_dim: the fan-out side has R and Q_R


def _t(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _rotate(x: jax.Array, ql, qr, *, back: bool = False) -> jax.Array:
    """``Q_Lᵀ X Q_R`` (``back``: ``Q_L X Q_Rᵀ``); a side without a basis is the identity."""
    if ql is not None:
        x = jnp.matmul(ql if back else _t(ql), x, precision=_HI)
    if qr is not None:
        x = jnp.matmul(x, _t(qr) if back else qr, precision=_HI)
    return x


def _unit(stat: jax.Array) -> jax.Array:
    """``L / max|L|`` per matrix (0 for ``L = 0``): the same eigenvectors, no overflow in ``L Q``."""
    return div_by_max(stat, jnp.max(jnp.abs(stat), axis=(-2, -1), keepdims=True))


def _eigenbasis(stat: jax.Array) -> jax.Array:
    """Eigenvectors of each symmetric ``L``, columns by decreasing eigenvalue."""
    return jnp.linalg.eigh(_unit(stat))[1][..., ::-1]


def _power_qr(stat: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power iteration and QR from ``Q`` sorted by ``diag(Qᵀ L Q)``; returns the new ``Q`` and
    the sort order of the old columns, ``(batch, k)``."""
    lq = jnp.matmul(_unit(stat), q, precision=_HI)
    rayleigh = jnp.sum(q * lq, axis=-2)
    order = jnp.argsort(-rayleigh, axis=-1, stable=True)
    return jnp.linalg.qr(jnp.take_along_axis(lq, order[:, None, :], axis=-1))[0], order


def _first_basis(operands):
    return [
        (None if sl is None else _eigenbasis(sl), None if sr is None else _eigenbasis(sr), v)
        for sl, sr, _, _, v in operands
    ]


def _refresh_basis(operands):
    out = []
    for sl, sr, ql, qr, v in operands:
        if sl is not None:
            ql, order = _power_qr(sl, ql)
            v = jnp.take_along_axis(v, order[:, :, None], axis=1)  # V's rows follow Q_L's columns
        if sr is not None:
            qr, order = _power_qr(sr, qr)
            v = jnp.take_along_axis(v, order[:, None, :], axis=2)
        out.append((ql, qr, v))
    return out


def _keep_basis(operands):
    return [(ql, qr, v) for _, _, ql, qr, v in operands]


def _ema(beta: jax.Array, old: jax.Array, new: jax.Array) -> jax.Array:
    return beta * old + (1 - beta) * new


def scale_by_soap(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    dimension_numbers: DimsSpec = None,
) -> optax.GradientTransformation:
    r"""SOAP: Adam run in the eigenbasis of Shampoo's statistics ``L``, ``R`` (Vyas et al. 2024).

    .. math::
       G' = Q_L^\top G Q_R,\quad M_t = \beta_1 M_{t-1} + (1-\beta_1) G,\quad
       V_t = \beta_2 V_{t-1} + (1-\beta_2)\, G' \odot G',\\
       D_t = Q_L \Big(\frac{Q_L^\top M_t Q_R / (1-\beta_1^t)}
             {\sqrt{V_t / (1-\beta_2^t)} + \epsilon}\Big) Q_R^\top,

    with ``L``, ``R`` EMAs of ``G Gᵀ``, ``Gᵀ G`` (decay ``shampoo_beta``) and ``Q_L``, ``Q_R``
    their eigenvectors: by ``eigh`` at the first update, then refreshed every
    ``precondition_frequency`` steps by one power iteration and QR. The first update returns zeros
    (it only fills the statistics). See the module docstring for the order of a step, how the
    moments follow a refreshed basis, the leaves, the numerics, the limits ``β₁ = β₂ = 0`` (sign
    descent in the rotated basis) and the memory.

    Args:
      b1: Adam's first-moment decay, ``0 <= b1 < 1``.
      b2: Adam's second-moment decay, ``0 <= b2 < 1``.
      shampoo_beta: the decay of ``L`` and ``R``, ``0 <= shampoo_beta < 1``; ``None`` for ``b2``
        (the reference code's default).
      eps: ``ε >= 0`` added to ``√v̂`` (as ``optax.scale_by_adam``).
      precondition_frequency: refresh the bases every this many Adam steps (``>= 1``); read at
        run time (``optax.inject_hyperparams`` may change it).
      max_precond_dim: a side larger than this has no statistic (identity basis) (``>= 0``); it
        fixes the state's shapes, so only ``init`` reads it.
      dimension_numbers: ``DimensionNumbers`` for leaves of rank > 2 (one value, a pytree prefix
        of the params, or ``(path, leaf) -> DimensionNumbers | None``).

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction (end the chain with
      ``optax.scale_by_learning_rate``; ``soap`` is the ready chain). State:
      ``ScaleBySoapState``.

    Raises:
      ValueError: at construction for bad hyperparameters; at ``init`` (naming the leaf's path,
        shape and dtype) for a non-float leaf or a leaf of rank > 2 without dimension numbers.

    Example:
      With conv kernels: ``optax.chain(normtx.adaptive.scale_by_soap(dimension_numbers=lambda
      path, leaf: normtx.dims.CONV_HWIO if leaf.ndim == 4 else None),
      optax.scale_by_learning_rate(3e-3))``. For a diagonal ``G`` the statistics are diagonal,
      their eigenbases the standard one, and the second step is Adam's first: ``G / |G|``.

      >>> tx = normtx.adaptive.scale_by_soap(precondition_frequency=10)
      >>> g = jnp.array([[3.0, 0.0], [0.0, -1.0]], jnp.float32)
      >>> step = jax.jit(tx.update)
      >>> d, state = step(g, tx.init(g))
      >>> bool(jnp.all(d == 0))  # the first step only fills L and R
      True
      >>> d, state = step(g, state)
      >>> bool(jnp.allclose(d, jnp.array([[1.0, 0.0], [0.0, -1.0]]), atol=1e-5))
      True

    References:
      Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade, *SOAP: Improving and
      Stabilizing Shampoo using Adam*, arXiv:2409.11321 (2024), Algorithm 3 (one SOAP step) and
      Algorithm 4 (eigenvectors by power iteration and QR), and its reference implementation.
      Stratos, *Adaptive Learning Methods*, §4 (Adam, eq. 39), §6.1 (Shampoo with EMA).
      Bernstein & Newhouse, *Old Optimizer, New Norm*, eq. 7, Prop. 2, 4–5.
    """
    what = "scale_by_soap"
    check_probability("b1", b1, what)
    check_probability("b2", b2, what)
    if shampoo_beta is not None:
        check_probability("shampoo_beta", shampoo_beta, what)
    check_positive("eps", eps, what, allow_zero=True)
    # Both may be arrays traced by optax.inject_hyperparams: the period is read at run time; the
    # sides that have a statistic are fixed at init (state shapes) and read off the state later.
    every = check_count("precondition_frequency", precondition_frequency, what, minimum=1)
    check_count("max_precond_dim", max_precond_dim, what, minimum=0)
    beta_s = b2 if shampoo_beta is None else shampoo_beta

    def _layouts(tree, sides) -> list[_Layout]:
        """Each leaf's layout; ``sides(m, n, i)`` says which sides of leaf ``i`` have statistics."""
        out = []
        for i, (_, leaf, dims) in enumerate(
            resolve_matrix_leaves(
                tree, dimension_numbers, what=what, vectors_ok=True, vector_hint=""
            )
        ):
            if dims is None:
                out.append(_Layout(None, 0, 0, 0, False, False))
                continue
            batch, m, n = matrix_shape(jnp.shape(leaf), dims)
            left, right = sides(m, n, i)
            out.append(_Layout(dims if left or right else None, batch, m, n, left, right))
        return out

    def init_fn(params):
        if isinstance(max_precond_dim, jax.core.Tracer):
            raise ValueError(
                f"{what}: max_precond_dim decides the shapes of the state, so init needs its "
                "value: call init outside jax.jit, or list it in inject_hyperparams' static_args."
            )
        dim = int(max_precond_dim)
        rows = []
        lays = _layouts(params, lambda m, n, i: (m <= dim, n <= dim))
        for lay, leaf in zip(lays, jax.tree.leaves(params), strict=True):
            dt = compute_dtype(leaf.dtype)
            eyes = [
                eye_batch(lay.batch, k, dt) if on else optax.MaskedNode()
                for on, k in ((lay.left, lay.m), (lay.right, lay.n))
            ]
            stats = [jnp.zeros_like(e) if on else e for on, e in zip((lay.left, lay.right), eyes)]
            zeros = jnp.zeros(jnp.shape(leaf), dt)
            rows.append((zeros, zeros, *stats, *eyes))
        fields = field_trees(jax.tree.structure(params), rows, 6)
        return ScaleBySoapState(jnp.zeros([], jnp.int32), *fields)

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        first = count == 1
        step = jnp.maximum(count - 1, 1)  # Adam's t; the first update (t = 0) takes no step
        refresh = (count > 1) & ((count - 1) % every == 0)
        leaves, treedef = jax.tree.flatten(updates)
        paths = [p for p, _ in flatten_with_paths(updates)[0]]
        names = ScaleBySoapState._fields[1:]
        old = [
            flatten_state_field(updates, getattr(state, name), what=what, name=name)
            for name in names
        ]
        has = lambda s: not isinstance(s, optax.MaskedNode)  # noqa: E731
        lays = _layouts(updates, lambda m, n, i: (has(old[2][i]), has(old[3][i])))
        out, mus, nus, lefts, rights, operands, rotated = [], [], [], [], [], [], []
        for i, (g, lay) in enumerate(zip(leaves, lays, strict=True)):
            mu, nu, l_old, r_old, ql, qr = (f[i] for f in old)
            check_state_shape(what, paths[i], g, mu, jnp.shape(g), "first moment")
            for on, s, k, name in ((lay.left, l_old, lay.m, "L"), (lay.right, r_old, lay.n, "R")):
                if on:
                    check_state_shape(what, paths[i], g, s, (lay.batch, k, k), f"statistic {name}")
            dt = mu.dtype
            b1_, b2_, bs_, eps_ = (jnp.asarray(h).astype(dt) for h in (b1, b2, beta_s, eps))
            tf = step.astype(dt)
            g32 = g.astype(dt)
            mu_new = _ema(b1_, mu, g32)
            if lay.dims is None:  # elementwise Adam
                x, mu_v, nu_v, inverse, ql, qr = g32, mu_new, nu, None, None, None
            else:
                x, inverse = as_matrices(g32, lay.dims)
                mu_v, nu_v = as_matrices(mu_new, lay.dims)[0], as_matrices(nu, lay.dims)[0]
                ql, qr = (ql if lay.left else None), (qr if lay.right else None)
            gp = _rotate(x, ql, qr)
            nu_new = _ema(b2_, nu_v, gp * gp)
            m_hat = _rotate(mu_v, ql, qr) / (1 - b1_**tf)
            n_rot = safe_div(m_hat, jnp.sqrt(nu_new / (1 - b2_**tf)) + eps_)
            # The first update's direction is 0 · G: zero, and NaN where G is not finite.
            d = jnp.where(first, x * 0, _rotate(n_rot, ql, qr, back=True))
            mus.append(jnp.where(first, mu, mu_new))
            nus.append(jnp.where(first, nu_v, nu_new))
            if lay.dims is None:
                out.append(d.astype(g.dtype))
                lefts.append(l_old)
                rights.append(r_old)
                continue
            new_stats, ok = [], True
            for on, s_old, prod in ((lay.left, l_old, (x, _t(x))), (lay.right, r_old, (_t(x), x))):
                if not on:
                    new_stats.append(s_old)
                    continue
                s_new = _ema(bs_, s_old, jnp.matmul(*prod, precision=_HI))
                # A statistic that is not finite (a NaN/Inf gradient, or G Gᵀ overflowing) would
                # stay in it for ever and freeze the basis: that matrix keeps its statistics, and
                # its update is NaN (the step is reported, never replaced by a finite one).
                finite = finite_matrices(s_new)
                new_stats.append(jnp.where(finite, s_new, s_old))
                ok = ok & finite
            out.append(inverse(jnp.where(ok, d, jnp.nan)).astype(g.dtype))
            lefts.append(new_stats[0])
            rights.append(new_stats[1])
            left, right = (s if on else None for on, s in zip((lay.left, lay.right), new_stats))
            operands.append((left, right, ql, qr, nus[-1]))
            rotated.append((i, inverse))

        # Branches defined once per transform and operands passed explicitly: traced once.
        branch = jnp.where(first, 1, jnp.where(refresh, 2, 0))
        bases = lax.switch(branch, (_keep_basis, _first_basis, _refresh_basis), operands)
        basis_left, basis_right = list(old[4]), list(old[5])
        for (i, inverse), (ql, qr, v) in zip(rotated, bases, strict=True):
            nus[i] = inverse(v)
            basis_left[i] = basis_left[i] if ql is None else ql
            basis_right[i] = basis_right[i] if qr is None else qr
        rows = list(zip(mus, nus, lefts, rights, basis_left, basis_right, strict=True))
        new_state = ScaleBySoapState(count, *field_trees(treedef, rows, 6))
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def soap(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: ArrayLike = 0.01,
    mask: Any = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    dimension_numbers: DimsSpec = None,
) -> optax.GradientTransformation:
    r"""SOAP with decoupled weight decay: ``-η_t (D_t + λ w_t)``, ``D_t`` of ``scale_by_soap``.

    ``optax.chain(scale_by_soap(...), optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate))``, as ``optax.adamw`` is built around
    ``optax.scale_by_adam``. The defaults are the paper's reference code's (learning rate 3e-3 in
    its examples, ``betas=(0.95, 0.95)``, ``weight_decay=0.01``, ``precondition_frequency=10``).
    The first update is the weight decay alone (SOAP's first update only fills its statistics).

    Args:
      learning_rate: ``η_t``, a number or a schedule.
      b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, dimension_numbers: as
        in ``scale_by_soap``.
      weight_decay: ``λ >= 0``, decoupled (AdamW style: multiplied by the learning rate).
      mask: the leaves that decay, as in ``optax.add_decayed_weights`` (a pytree of bools or a
        callable on the params); ``None`` for all.

    Returns:
      An ``optax.GradientTransformation`` returning the final update; it needs ``params``.

    Example:
      Decay on the matrices only. The first step is the decay alone (``D_1 = 0``); the second
      adds ``D_2 = G / |G|`` for the diagonal ``G`` of ``scale_by_soap``'s example.

      >>> tx = normtx.adaptive.soap(3e-3, weight_decay=0.01,
      ...                           mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
      >>> params = {"w": jnp.ones((2, 2), jnp.float32), "b": jnp.ones(2, jnp.float32)}
      >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, -1.0]], jnp.float32),
      ...          "b": jnp.array([1.0, -2.0], jnp.float32)}
      >>> step = jax.jit(tx.update)
      >>> u, state = step(grads, tx.init(params), params)
      >>> print(np.round(np.asarray(u["w"], np.float64) / 3e-3, 4))  # -0.01 w
      [[-0.01 -0.01]
       [-0.01 -0.01]]
      >>> u, state = step(grads, state, params)
      >>> print(np.round(np.asarray(u["w"], np.float64) / 3e-3, 4))  # -(G / |G| + 0.01 w)
      [[-1.01 -0.01]
       [-0.01  0.99]]

    References:
      Vyas et al., *SOAP: Improving and Stabilizing Shampoo using Adam*, arXiv:2409.11321
      (2024). Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    what = "soap"
    check_positive("learning_rate", learning_rate, what)
    check_positive("weight_decay", weight_decay, what, allow_zero=True)
    return optax.chain(
        scale_by_soap(
            b1=b1,
            b2=b2,
            shampoo_beta=shampoo_beta,
            eps=eps,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            dimension_numbers=dimension_numbers,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
