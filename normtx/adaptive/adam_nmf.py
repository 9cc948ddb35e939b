r"""AdamNMF: a rank-r nonnegative factorisation of the second moment (lecture notes K.2, §5.1).

Adam divides by ``sqrt(v)`` with ``v ∈ R^{m×n}`` per matrix; Adafactor keeps a rank-1 factorisation
``v ≈ a bᵀ``; AdamNMF keeps a rank-``r`` one, ``G_t² ≈ A_t B_t`` with ``A_t ∈ R^{m×r}_{≥0}`` and
``B_t ∈ R^{r×n}_{≥0}``, refined by one warm-started EM round per step on the I-divergence
``IDiv(G², AB)`` (notes eq. 91–96)::

    A_0 ~ Unif(0, ε)^{m×r},  B_0 ~ Unif(0, ε)^{r×n}
    C_t = G_t² (+ eps_sq)                     (the notes print G_t ∈ R^{m×r}: read R^{m×n})
    R   = C_t ⊘ A_{t-1} B_{t-1}               (E-step: the posterior of eq. 93, in ratio form)
    A_t = A_{t-1} ⊙ (R B_{t-1}ᵀ ⊘ 1_nᵀ B_{t-1}ᵀ)          (M-step for A, eq. 95/96)
    B_t = B_{t-1} ⊙ (A_{t-1}ᵀ R ⊘ A_tᵀ 1_m)               (M-step for B given A_t)
    update = G_t / sqrt(A_t B_t)

**Which EM round.** The two M-step blocks are applied one after the other, as footnote 11 of the
notes describes generalised EM ("breaking the M-step into sub-updates for blocks of parameters"):
the posterior ``R`` is the E-step's, and the ``B`` block is maximised *given the new* ``A_t``, so
its normaliser is ``A_tᵀ 1_m``. This is expectation–conditional maximisation (Meng & Rubin 1993):
each block raises the EM surrogate, so the I-divergence never increases. Read literally, the K.2
pseudocode normalises ``B`` by the *old* ``A_{t-1}ᵀ 1_m``; that simultaneous update is not an
M-step: at rank 1 it gives ``A_t B_t = (C1)(1ᵀC) / (ΣA_{t-1} ΣB_{t-1})``, whose scale follows
``p_t = S²/p_{t-1}`` (``S = 1ᵀC1``) and oscillates for ever unless the initial scale happens to be
right (tests show it). With the sequential blocks, rank 1 reaches the closed form
``(C1)(1ᵀC)/(1ᵀC1)`` of §5.1 in one round from any initialisation, i.e. Adafactor's factorisation;
the round is invariant to rescaling ``A`` or ``B`` (so ``ε`` only fixes the initial gauge).

**Numerics.** ``eps_sq > 0`` is added to ``G²`` (as ``optax.scale_by_factored_rms``'s
``epsilon``): with a zero row of ``G`` the multiplicative update would set a row of ``A`` to 0 for
ever and a later gradient in that row would be divided by 0. After each round every component is
rebalanced, ``A_k ← A_k c_k``, ``B_k ← B_k / c_k`` with ``c_k = sqrt(ΣB_k / ΣA_k)``: ``AB`` and the
next round are unchanged (the round is gauge invariant) but neither factor drifts out of float
range. Factors are kept in float32 (or the leaf's wider dtype).

**Options** (off by default, the notes' AdamNMF): ``b1`` adds a bias-corrected first moment
(``update = m̂_t / sqrt(A_t B_t)``, ``m`` stored in full: +1 float per parameter); ``b2 > 0`` makes
the EM target a bias-corrected EMA of ``G²`` held in factored form,
``C_t = (1 - w_t) A_{t-1} B_{t-1} + w_t (G_t² + eps_sq)`` with ``w_t = (1-b2)/(1-b2^t)`` — the
recursion of the debiased EMA with the previous estimate replaced by its factorisation. At rank 1
this is exactly ``optax.scale_by_factored_rms`` with the debiased decay schedule, since the rank-1
solution depends on ``C`` only through its row and column sums, which the factorisation preserves.

**Leaves.** A 2-D leaf is a matrix; conv kernels and stacked layers take ``dimension_numbers``
(each batch slice gets its own factors). Vectors (rank 0 or 1) are an error unless
``vectors='diagonal'``: a 1×n matrix's ``G²`` is rank 1 and factorises exactly, so the vector's
second moment is kept as it is, ``v_t = C_t`` and ``update = g/sqrt(v_t)`` (1 float per entry).

**Memory** (state floats): ``(m + n) r`` per matrix (``batch·(m + n) r`` for a stacked leaf), ``n``
per vector under ``'diagonal'``, plus the full first moment with ``b1``. Adam keeps ``2 m n``,
Adafactor ``m + n``.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normtx._numerics import compute_dtype, safe_div
from normtx._pytree import check_state_shape, describe_leaf, flatten_state_field
from normtx._validation import (
    check_choice,
    check_int,
    check_positive,
    check_prng_key,
    check_probability,
)
from normtx.adaptive._leaves import DimsSpec, matrix_shape, resolve_matrix_leaves
from normtx.dims import as_matrices

__all__ = ["ScaleByAdamNMFState", "em_round", "scale_by_adam_nmf"]

Vectors = Literal["error", "diagonal"]


class ScaleByAdamNMFState(NamedTuple):
    """State of ``scale_by_adam_nmf``; ``a``, ``b``, ``mu`` have the params' tree structure."""

    count: jax.Array  # int32 scalar: steps taken
    a: Any  # per leaf: A (batch, m, r) of a matrix leaf; the second moment v (leaf shape) of a vector
    b: Any  # per leaf: B (batch, r, n) of a matrix leaf; optax.MaskedNode() for a vector
    mu: Any  # per leaf: the first moment (leaf shape, float32+) when b1 is set; None otherwise


def em_round(c: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One EM round for ``C ≈ A B`` under the I-divergence (notes eq. 95–96, footnote 11).

    Args:
      c: ``(..., m, n)`` nonnegative target.
      a: ``(..., m, r)`` positive left factor.
      b: ``(..., r, n)`` positive right factor.

    Returns:
      ``(A', B')``: ``A' = A ⊙ (R Bᵀ ⊘ 1ᵀBᵀ)``, ``B' = B ⊙ (Aᵀ R ⊘ A'ᵀ1)`` with ``R = C ⊘ AB``,
      rebalanced so that every component has equal mass in both factors (``A'B'`` unchanged).
    """
    hi = jax.lax.Precision.HIGHEST
    r = safe_div(c, jnp.matmul(a, b, precision=hi))
    a_new = a * safe_div(
        jnp.matmul(r, jnp.swapaxes(b, -1, -2), precision=hi), jnp.sum(b, axis=-1)[..., None, :]
    )
    b_new = b * safe_div(
        jnp.matmul(jnp.swapaxes(a, -1, -2), r, precision=hi), jnp.sum(a_new, axis=-2)[..., :, None]
    )
    gauge = jnp.sqrt(safe_div(jnp.sum(b_new, axis=-1), jnp.sum(a_new, axis=-2)))
    gauge = jnp.where(gauge > 0, gauge, 1)
    return a_new * gauge[..., None, :], b_new / gauge[..., :, None]


def scale_by_adam_nmf(
    *,
    rank: int,
    key: jax.Array,
    eps: float = 1e-3,
    em_steps: int = 1,
    b1: float | None = None,
    b2: float = 0.0,
    eps_sq: float = 1e-30,
    dimension_numbers: DimsSpec = None,
    vectors: Vectors = "error",
) -> optax.GradientTransformation:
    r"""AdamNMF (lecture notes K.2): ``G_t / sqrt(A_t B_t)`` with ``G_t² ≈ A_t B_t`` of rank ``r``.

    .. math:: u_t = G_t \oslash \sqrt{A_t B_t}, \qquad (A_t, B_t) = \mathrm{EM}(G_t^2;\,
              A_{t-1}, B_{t-1})

    See the module docstring for the EM round (sequential blocks, footnote 11), the numerics, the
    options and the leaf policy. ``rank=1`` is Adafactor's factorisation.

    Args:
      rank: ``r >= 1``, the rank of the factorisation, at most ``min(m, n)`` of every matrix
        (a nonnegative ``m × n`` matrix has nonnegative rank ``<= min(m, n)``: that rank is exact).
      key: the PRNG key that draws ``A_0, B_0 ~ Unif(0, ε)`` (each leaf folds in its index).
      eps: ``ε > 0``, the initialisation range (it fixes only the initial gauge).
      em_steps: EM rounds per step (``>= 1``; the notes use 1).
      b1: ``None`` (no first moment, the notes' AdamNMF) or the decay ``0 <= b1 < 1`` of a
        bias-corrected first moment.
      b2: ``0`` (the notes: factorise ``G_t²`` itself) or the decay ``0 <= b2 < 1`` of a
        bias-corrected EMA of ``G²`` held in factored form.
      eps_sq: ``> 0``, added to ``G²`` (keeps the factors strictly positive).
      dimension_numbers: ``normtx.dims.DimensionNumbers`` for leaves of rank > 2 (one value, a
        pytree prefix of the params, or ``(path, leaf) -> DimensionNumbers | None``).
      vectors: ``'error'`` (default) or ``'diagonal'`` for leaves of rank 0 or 1.

    Returns:
      An ``optax.GradientTransformation`` returning a descent direction (end the chain with
      ``optax.scale_by_learning_rate``). State: ``ScaleByAdamNMFState``.

    Raises:
      ValueError: at construction for bad hyperparameters; at ``init`` for a vector leaf under
        ``vectors='error'``, a leaf of rank > 2 without dimension numbers, a non-float leaf, or
        a leaf whose matrices have a side shorter than ``rank``, naming the leaf's path, shape
        and dtype.

    Example:
      One EM round fits a rank-1 ``G²`` exactly (``A B`` = row sums × column sums / total), so
      the first step on ``G = u vᵀ`` is ``G / |G|``: sign descent.

      >>> tx = optax.chain(
      ...     normtx.adaptive.scale_by_adam_nmf(rank=1, key=jax.random.key(0), vectors="diagonal"),
      ...     optax.scale_by_learning_rate(1.0))
      >>> params = {"w": jnp.zeros((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
      >>> g = jnp.outer(jnp.array([1.0, -2.0]), jnp.array([3.0, 4.0, -5.0])).astype(jnp.float32)
      >>> grads = {"w": g, "b": jnp.array([2.0, -1.0, 4.0], jnp.float32)}
      >>> updates, _ = jax.jit(tx.update)(grads, tx.init(params))
      >>> print(np.round(updates["w"], 2))
      [[-1. -1.  1.]
       [ 1.  1. -1.]]

    References:
      Stratos, *Adaptive Learning Methods*, §5.1, Appendix K (eq. 91–96, footnote 11), K.2
      (the notes' shape erratum corrected). Lee & Seung, *Algorithms for non-negative matrix factorization*,
      NeurIPS 2001. Meng & Rubin, *Maximum likelihood estimation via the ECM algorithm*,
      Biometrika 1993. Shazeer & Stern, *Adafactor*, ICML 2018.
    """
    what = "scale_by_adam_nmf"
    check_int("rank", rank, what, minimum=1)
    check_int("em_steps", em_steps, what, minimum=1)
    check_prng_key("key", key, what)
    check_positive("eps", eps, what)
    check_positive("eps_sq", eps_sq, what)
    if b1 is not None:
        check_probability("b1", b1, what)
    check_probability("b2", b2, what)
    check_choice("vectors", vectors, ("error", "diagonal"), what)
    hint = (
        "AdamNMF factorises matrices; pass vectors='diagonal' to keep the exact second moment of "
        "vectors (1 float per entry), or give this leaf dimension numbers, or route it to another "
        "transform with optax.partition."
    )

    def _resolve(params):
        return resolve_matrix_leaves(
            params, dimension_numbers, what=what, vectors_ok=vectors == "diagonal", vector_hint=hint
        )

    def init_fn(params):
        triples = _resolve(params)
        treedef = jax.tree.structure(params)
        a_leaves, b_leaves = [], []
        for i, (path, leaf, dims) in enumerate(triples):
            dt = compute_dtype(leaf.dtype)
            if dims is None:
                a_leaves.append(jnp.zeros(jnp.shape(leaf), dt))
                b_leaves.append(optax.MaskedNode())  # no array: orbax saves no empty ones
                continue
            batch, m, n = matrix_shape(jnp.shape(leaf), dims)
            if rank > min(m, n):
                raise ValueError(
                    f"{what}: rank={rank} is more than leaf {describe_leaf(path, leaf)} allows: "
                    f"its matrices are {m} × {n}, whose G² has an exact nonnegative factorisation "
                    f"of rank min(m, n) = {min(m, n)}; a larger rank only adds state. Pass "
                    f"rank <= {min(m, n)}, or route this leaf to another transform with "
                    "optax.partition."
                )
            ka, kb = jax.random.split(jax.random.fold_in(key, i))
            # (0, ε]: 1 - Unif[0, 1) never hits 0, so every factor starts strictly positive.
            a_leaves.append(eps * (1 - jax.random.uniform(ka, (batch, m, rank), dt)))
            b_leaves.append(eps * (1 - jax.random.uniform(kb, (batch, rank, n), dt)))
        mu = None
        if b1 is not None:
            mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), compute_dtype(p.dtype)), params)
        return ScaleByAdamNMFState(
            count=jnp.zeros([], jnp.int32),
            a=jax.tree.unflatten(treedef, a_leaves),
            b=jax.tree.unflatten(treedef, b_leaves),
            mu=mu,
        )

    def update_fn(updates, state, params=None):
        del params
        triples = _resolve(updates)
        count = optax.safe_increment(state.count)
        # b2 = 0 as a Python number is the notes' AdamNMF (no EMA); an array b2 (traced under
        # optax.inject_hyperparams) always takes the EMA, which at b2 = 0 (w = 1) is the same target.
        ema = not (isinstance(b2, numbers.Real) and b2 == 0)
        treedef = jax.tree.structure(updates)
        field = lambda f, name: flatten_state_field(updates, f, what=what, name=name)  # noqa: E731
        mus = [None] * len(triples) if b1 is None else field(state.mu, "mu")
        out, a_out, b_out, mu_out = [], [], [], []
        for (path, g, dims), a, b, mu in zip(
            triples, field(state.a, "a"), field(state.b, "b"), mus, strict=True
        ):
            if dims is None:
                check_state_shape(what, path, g, a, jnp.shape(g), "second moment")
            else:
                batch, m, n = matrix_shape(jnp.shape(g), dims)
                check_state_shape(what, path, g, a, (batch, m, rank), "factor A")
                check_state_shape(what, path, g, b, (batch, rank, n), "factor B")
            g32 = g.astype(compute_dtype(g.dtype))
            t = count.astype(g32.dtype)  # bias corrections in the leaf's compute dtype
            # The weight of the new G² in the EM target; <= 1 in exact arithmetic, but 1 - b2**t
            # cancels in float32 (w = 1 + 1.3e-5 at t = 1 for b2 = 0.999), which made the target
            # (1 - w) A B + w C negative where C ~ 0: negative factors, NaN updates.
            w = jnp.minimum((1 - b2) / (1 - b2**t), 1) if ema else 1.0
            num = g32
            if b1 is not None:
                mu = b1 * mu + (1 - b1) * g32
                num = mu / (1 - b1**t)
                mu_out.append(mu)
            c = g32 * g32 + eps_sq
            if dims is None:
                a = (1 - w) * a + w * c if ema else c
                out.append(safe_div(num, jnp.sqrt(a)).astype(g.dtype))
            else:
                cm, _ = as_matrices(c, dims)
                if ema:
                    cm = (1 - w) * jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST) + w * cm
                for _ in range(em_steps):
                    a, b = em_round(cm, a, b)
                num_m, inverse = as_matrices(num, dims)
                denom = jnp.sqrt(jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
                out.append(inverse(safe_div(num_m, denom)).astype(g.dtype))
            a_out.append(a)
            b_out.append(b)
        new_state = ScaleByAdamNMFState(
            count=count,
            a=jax.tree.unflatten(treedef, a_out),
            b=jax.tree.unflatten(treedef, b_out),
            mu=None if b1 is None else jax.tree.unflatten(treedef, mu_out),
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)
