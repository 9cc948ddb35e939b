r"""Newton–Schulz polynomial iterations for the polar factor ``U Vᵀ`` (anthology Appendix A, eq. 37).

Every step applies an odd quintic to each singular value of ``X``::

    A = X Xᵀ,   B = b A + c A²,   X <- a X + B X        (= a X + b (X Xᵀ) X + c (X Xᵀ)² X)

starting from ``X₀ = G / ‖G‖_F`` (all singular values in ``(0, 1]``) on the short side of ``G``
(a tall matrix is transposed, so ``A`` is the smaller Gram matrix). Schedules of ``(a, b, c)``:

- ``'cubic'``: ``(3/2, -1/2, 0)``, anthology eq. 36; converges to ``U Vᵀ`` for singular values in
  ``(0, √3)``, slowly at first (a small σ grows by 3/2 per step). With ``c = 0`` a step costs
  two matmuls instead of three.
- ``'muon'``: ``(3.4445, -4.7750, 2.0315)`` (Jordan et al. 2024): steep at 0, but it does not
  converge — singular values end in about ``[0.68, 1.2]``.
- ``'polar_express'``: the per-step optimal schedule of Amsel et al. (2025), computed here in
  float64 by ``polar_express_coefficients``: step ``t`` applies the odd quintic that best
  approximates 1 in the sup norm on the interval ``[l_t, u_t]`` known to hold the singular values,
  and the composition is the optimal polynomial of its degree (their Theorem 4.1). It converges
  to ``U Vᵀ`` in a third to a half of the steps ``'cubic'`` needs.
- an array of shape ``(k, 3)``: one row per step.

Steps beyond the length of a schedule repeat its last row (for ``'polar_express'`` the convergent
limit ``(15/8, -5/4, 3/8)``).

Numerics: ``G`` is first divided by its largest entry and then by its Frobenius norm, in float32 or
wider, so ``G · 2^k`` gives the same direction for any representable scale and the zero matrix maps
to zero (never NaN). ``compute_dtype=jnp.bfloat16`` runs the matmuls in bfloat16 with float32
accumulation (``preferred_element_type``) while ``X`` itself stays in float32.
``normalization='schatten4'`` divides ``X₀`` further by ``‖X₀X₀ᵀ‖_F^{1/2}`` (from the first Gram
matrix, no extra matmul): ``‖G‖_{S₄} >= σ_max`` is a tighter bound than ``‖G‖_F``, so small
singular values start larger. ``normalization='aol'`` scales the rows of ``X₀`` instead, by
``D = diag(Σ_j |X₀X₀ᵀ|_ij)^{-1/2}`` (almost-orthogonal-layer rescaling, Prach & Lampert 2022):
again from the first Gram matrix, with ``σ_max(D X₀) <= 1`` guaranteed, so the iteration may start
closer to 1. It then converges to the polar factor of ``D G``, not of ``G``: the same when the
rows of ``|GGᵀ|`` have equal sums, off by a few per cent for a random ``G`` and more when its rows
differ in scale (optax's ``'aol'`` preconditioning).

Cost: a step is three matmuls (``X Xᵀ``, ``A²``, ``B X``; two for a cubic). The two symmetric
products are formed from 4 × 4 row blocks once ``m >= 512`` (only the upper triangle of blocks is
multiplied: 3/8 fewer flops). For a wide ``m × n`` matrix (``n`` well above ``m``) the same
polynomials run on the ``m × m`` Gram matrix (Amsel et al., Algorithm 4, restarted every 3 steps),
which ``gram=None`` picks by flop count. On CPU a batch of matrices of 32 × 32 or more runs as a
loop of 2-D iterations (XLA:CPU's 2-D matmuls are faster than its batched ones); elsewhere, and
for tiny matrices, as batched matmuls.

References:
  Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology* (2024), Appendix A, eq. 36–37.
  Amsel, Persson, Musco & Gower, *The Polar Express: Optimal Matrix Sign Methods and Their
  Application to the Muon Algorithm*, arXiv:2505.16932 (2025), §4.2–4.4, Algorithm 1, App. G.
  Higham, *Functions of Matrices* (2008), §8.3 and eq. 5.22.
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike, DTypeLike

from normtx._numerics import compute_dtype as _compute_dtype
from normtx._numerics import div_by_max, safe_div
from normtx._validation import check_count
from normtx.linalg.ns_coefficients import (
    NsSchedule,
    newton_schulz_schedule,
    traced_schedule,
)

__all__ = ["NORMALIZATIONS", "Normalization", "newton_schulz"]

Normalization = Literal["frobenius", "schatten4", "aol"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)


def _normalised(g: jax.Array, eps: float) -> jax.Array:
    """``Ĝ / (‖Ĝ‖_F + eps)`` with ``Ĝ = G / max|G|`` (scale free; 0 for 0)."""
    x = div_by_max(g, jnp.max(jnp.abs(g), axis=(-2, -1), keepdims=True))
    fro = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
    return x / (fro + eps)


def _dot(x: jax.Array, y: jax.Array, *, transpose_y: bool = False) -> jax.Array:
    """Batched ``x @ y`` (or ``x @ yᵀ``) with accumulation in ``y``'s input dtype or float32."""
    nb = x.ndim - 2
    batch = tuple(range(nb))
    contract = ((nb + 1,), (nb + 1,) if transpose_y else (nb,))
    acc = _compute_dtype(x.dtype)
    return lax.dot_general(
        x,
        y,
        (contract, (batch, batch)),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=acc,
    )


def _gram_blocks(m: int) -> int:
    """Row blocks for ``X Xᵀ``: the product is symmetric, so of ``k²`` blocks only the
    ``k(k + 1)/2`` on and above the diagonal are multiplied — 3/8 fewer flops for ``k = 4``, in
    smaller matmuls. Below ``m = 512`` the smaller matmuls lose what the flops gain (a measured
    threshold)."""
    return 1 if m < 512 else 4


def _sym_gram(x: jax.Array, mm_dtype) -> jax.Array:
    """``x xᵀ`` for ``x`` of shape ``(..., m, n)`` (exactly symmetric), accumulated in float32+."""
    xm = x.astype(mm_dtype)
    k = _gram_blocks(x.shape[-2])
    if k == 1:
        return _dot(xm, xm, transpose_y=True)
    bounds = np.linspace(0, x.shape[-2], k + 1).astype(int)
    rows = [xm[..., lo:hi, :] for lo, hi in itertools.pairwise(bounds)]
    upper = {
        (i, j): _dot(rows[i], rows[j], transpose_y=True) for i in range(k) for j in range(i, k)
    }
    return jnp.concatenate(
        [
            jnp.concatenate(
                [upper[i, j] if i <= j else jnp.swapaxes(upper[j, i], -1, -2) for j in range(k)],
                axis=-1,
            )
            for i in range(k)
        ],
        axis=-2,
    )


def _iterate(x: jax.Array, schedule: np.ndarray, mm_dtype, normalization: str) -> jax.Array:
    """Applies the schedule to ``x`` (short side first, work dtype); matmul inputs in ``mm_dtype``.

    With ``normalization='schatten4'`` or ``'aol'`` the first Gram matrix ``A₀ = X₀X₀ᵀ`` also
    rescales ``X₀`` (``_precondition``), with no extra matmul.
    """
    cubic = bool(np.all(schedule[:, 2] == 0))
    work = x.dtype

    def apply(x, abc):
        return _step(x, _sym_gram(x, mm_dtype).astype(work), abc, mm_dtype, cubic)

    coeffs = jnp.asarray(schedule, work)
    if normalization != "frobenius":
        x, coeffs = _first_step(x, coeffs[0], mm_dtype, normalization, cubic), coeffs[1:]
    # A loop over the schedule's rows, not unrolled: the steps differ only in their coefficients,
    # so one compiled body serves them all (unrolled, every step's kernels are compiled anew).
    if coeffs.shape[0]:
        x, _ = lax.scan(lambda x, abc: (apply(x, abc), None), x, coeffs)
    return x


def _step(x: jax.Array, gram: jax.Array, abc: jax.Array, mm_dtype, cubic: bool) -> jax.Array:
    """``a X + (b A + c A²) X`` for ``A = X Xᵀ`` given as ``gram`` (``c A²`` left out if cubic)."""
    work = x.dtype
    a, b, c = abc[0].astype(work), abc[1].astype(work), abc[2].astype(work)
    poly = b * gram  # + c A², with A² = A Aᵀ for the symmetric A
    if not cubic:
        poly = poly + c * _sym_gram(gram, mm_dtype).astype(work)
    return a * x + _dot(poly.astype(mm_dtype), x.astype(mm_dtype)).astype(work)


def _first_step(x: jax.Array, abc: jax.Array, mm_dtype, normalization: str, cubic: bool):
    """The first step, whose Gram matrix ``A₀`` also gives the rescaling of ``normalization``."""
    gram = _sym_gram(x, mm_dtype).astype(x.dtype)
    return _step(*_precondition(x, gram, normalization), abc, mm_dtype, cubic)


def _precondition(x: jax.Array, gram: jax.Array, normalization: str):
    """``(X₀, A₀)`` rescaled from the Gram matrix ``A₀ = X₀X₀ᵀ`` (no matmul).

    ``'schatten4'``: ``X₀ / ‖A₀‖_F^{1/2}``. ``'aol'``: ``D X₀`` with
    ``D = diag(Σ_j |A₀|_ij)^{-1/2}``, whose ``D A₀ D`` has absolute row sums ``<= 1`` and hence
    ``σ_max(D X₀) <= 1`` (Prach & Lampert, 2022, Theorem 1); a zero row stays zero.
    ``'frobenius'``: unchanged.
    """
    if normalization == "schatten4":
        s4 = jnp.sqrt(jnp.sqrt(jnp.sum(jnp.square(gram), axis=(-2, -1), keepdims=True)))
        inv = safe_div(jnp.ones_like(s4), s4)
        return x * inv, gram * jnp.square(inv)
    if normalization == "aol":
        rows = jnp.sum(jnp.abs(gram), axis=-1, keepdims=True)
        d = safe_div(jnp.ones_like(rows), jnp.sqrt(rows))
        return x * d, gram * d * jnp.swapaxes(d, -1, -2)
    return x, gram


def _iterate_traced(
    x: jax.Array, table: jax.Array, steps: jax.Array, mm_dtype, normalization: str
) -> jax.Array:
    """``_iterate`` for a step count known only at run time: the first step, then a
    ``lax.fori_loop`` whose step ``i`` applies row ``min(i, k - 1)`` of ``table`` (every step
    quintic: the rows may be traced too). At least one step is taken."""
    work = x.dtype
    table = table.astype(work)
    last = table.shape[0] - 1
    x = _first_step(x, table[0], mm_dtype, normalization, cubic=False)

    def body(i, x):
        abc = table[jnp.minimum(i, last)]
        return _step(x, _sym_gram(x, mm_dtype).astype(work), abc, mm_dtype, cubic=False)

    return lax.fori_loop(1, steps, body, x)


# On CPU, batches of matrices with at least this many entries run as a loop of 2-D iterations:
# below it XLA:CPU's batched matmuls win, above it its 2-D kernels do.
_LOOP_MIN_SIZE = 32 * 32

# Gram-space iteration (Amsel et al. 2025, Appendix F, Algorithm 4): restart every 3 steps.
_RESTART = 3


def _costs(steps: int, alpha: float, quintic: bool) -> tuple[float, float]:
    """Matmul work (units of ``m³``, ``alpha = n/m >= 1``) of the direct and the Gram iteration."""
    q = 1 if quintic else 0
    blocks = -(-steps // _RESTART)
    direct = steps * (2 * alpha + q)
    gram = blocks * 2 * alpha + steps * q + (steps - blocks) * 3
    return direct, gram


def _iterate_gram(x: jax.Array, schedule: np.ndarray, mm_dtype, normalization: str) -> jax.Array:
    """The same polynomial iteration on the ``m × m`` Gram matrix of a wide ``x`` (``m < n``).

    Every iterate is ``X_t = Q_t X₀`` with ``Q_t`` a polynomial in ``Y = X₀X₀ᵀ``; hence
    ``X_tX_tᵀ = Q_t Y Q_t`` and ``Q_{t+1} = h_t(Q_t Y Q_t) Q_t`` with ``h(R) = aI + bR + cR²``: no
    ``n``-sized product inside a block. Each block of 3 steps starts from the true ``X`` (one
    ``X Xᵀ`` and one ``Q X``), which keeps ``Q`` well conditioned (their §F).
    """
    work = x.dtype
    quintic = not bool(np.all(schedule[:, 2] == 0))
    eye = jnp.eye(x.shape[-2], dtype=work)

    def mm(u, v):
        return _dot(u.astype(mm_dtype), v.astype(mm_dtype)).astype(work)

    for start in range(0, schedule.shape[0], _RESTART):
        y = _sym_gram(x, mm_dtype).astype(work)
        if start == 0:
            x, y = _precondition(x, y, normalization)
        q = None
        for a, b, c in schedule[start : start + _RESTART].tolist():  # Python floats: weak types
            r = y if q is None else mm(q, mm(y, q))
            h = a * eye + b * r + (c * _sym_gram(r, mm_dtype).astype(work) if quintic else 0.0)
            q = h if q is None else mm(h, q)
        x = mm(q, x)
    return x


def newton_schulz(
    g: ArrayLike,
    *,
    steps: int = 5,
    coefficients: NsSchedule | ArrayLike = "polar_express",
    eps: float = 1e-7,
    compute_dtype: DTypeLike | None = None,
    normalization: Normalization = "frobenius",
    gram: bool | None = None,
) -> jax.Array:
    r"""Approximates the polar factor ``U Vᵀ`` of each matrix in ``g`` by a Newton–Schulz iteration.

    .. math:: X_0 = \frac{G}{\|G\|_F},\qquad X_{t+1} = a_t X_t + b_t (X_t X_t^\top) X_t
              + c_t (X_t X_t^\top)^2 X_t

    Args:
      g: matrices of shape ``(..., m, n)``; leading axes are a batch.
      steps: the number of iterations (each costs three matmuls, two for ``'cubic'``): an int,
        or an integer scalar array known only at run time (``optax.inject_hyperparams`` traces
        it) — then the iteration is a ``lax.fori_loop`` and every step a quintic.
      coefficients: ``'polar_express'`` (default), ``'cubic'``, ``'muon'``, or an array of shape
        ``(k, 3)`` of per-step ``(a, b, c)``; steps past its end repeat its last row. The array
        may be traced (its rows are then read at run time, as for a traced ``steps``).
      eps: ``> 0``, added to the Frobenius norm of ``G / max|G|`` (which is ``>= 1`` unless
        ``G = 0``), so it changes a nonzero input's scale by at most a factor ``1 + eps`` and never
        its direction.
      compute_dtype: the dtype of the matmul inputs (e.g. ``jnp.bfloat16``); products accumulate
        in float32 or wider. Default: the work dtype (float32, or float64 for float64 input).
      normalization: ``'frobenius'`` (default): ``X₀ = G/‖G‖_F``. ``'schatten4'``: then also
        divide by ``‖X₀X₀ᵀ‖_F^{1/2}``, i.e. ``X₀ = G/‖G‖_{S₄}`` with ``‖G‖_{S₄} = (Σσ⁴)^{1/4}``,
        still ``>= σ_max`` but closer to it (``<= r^{1/4} σ_max`` against ``r^{1/2} σ_max``
        for rank r). It reuses the first step's Gram matrix — no extra matmul — and starts small
        singular values larger, so fewer steps reach a given accuracy (optax's ``'schatten'``
        preconditioning). ``'aol'``: ``X₀ = D X`` for ``X = G/‖G‖_F`` and
        ``D = diag(Σ_j |X Xᵀ|_ij)^{-1/2}``, so ``σ_max(X₀) <= 1``; the iteration then approximates
        the polar factor of ``D G`` (see above; optax's ``'aol'`` preconditioning).
      gram: run the iteration on the ``m × m`` Gram matrix of the short side (Amsel et al. 2025,
        Algorithm 4, restarted every 3 steps): each step then costs ``O(m³)`` instead of
        ``O(m²n)``, plus ``O(m²n)`` per restart. ``None`` (default) chooses it when it needs fewer
        flops — for aspect ratios ``n/m`` above 1.5 (never for square matrices) — and the
        matmuls run in float32 or wider.

    Returns:
      ``X_steps`` of shape ``(..., m, n)`` in float32 (float64 for float64 input).

    Raises:
      ValueError: for an input of rank < 2 or a non-float dtype, ``eps`` not in ``(0, ∞)``,
        ``steps < 1``, an unknown schedule or normalization, a badly shaped coefficient array, or
        ``gram=True`` with a compute dtype narrower than float32.

    Example:
      >>> g = jax.random.normal(jax.random.key(0), (6, 4), jnp.float32)
      >>> U, _, Vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
      >>> u = normtx.linalg.newton_schulz(g, steps=8)  # Polar Express: ≈ U Vᵀ to ~1e-3
      >>> bool(np.abs(np.asarray(u, np.float64) - U @ Vt).max() < 3e-3)
      True
      >>> u = normtx.linalg.newton_schulz(g, coefficients="muon")  # Muon's quintic: σ in ~[0.7, 1.2]
      >>> s = np.linalg.svd(np.asarray(u, np.float64), compute_uv=False)
      >>> bool(((0.6 < s) & (s < 1.25)).all())
      True

    References:
      Anthology Appendix A (eq. 36–37); Amsel et al. (2025), Algorithm 1.
    """
    g = jnp.asarray(g)
    if g.ndim < 2:
        raise ValueError(f"newton_schulz: expected matrices (..., m, n), got shape {g.shape}.")
    if not jnp.issubdtype(g.dtype, jnp.floating):
        raise ValueError(f"newton_schulz: expected a real floating array, got {g.dtype}.")
    if not 0 < float(eps) < np.inf:  # NaN fails too; eps = 0 would make 0/0 of the zero matrix
        raise ValueError(f"newton_schulz: eps must be a finite number > 0, got {eps!r}.")
    steps = check_count("steps", steps, "newton_schulz", minimum=1)
    traced = isinstance(steps, jax.core.Tracer) or isinstance(coefficients, jax.core.Tracer)
    schedule = None if traced else newton_schulz_schedule(coefficients, steps)
    work = _compute_dtype(g.dtype)
    mm_dtype = work if compute_dtype is None else jnp.dtype(compute_dtype)
    if not jnp.issubdtype(mm_dtype, jnp.floating):
        raise ValueError(f"newton_schulz: compute_dtype must be a float dtype, got {mm_dtype}.")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"newton_schulz: normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
        )
    low_precision = jnp.finfo(mm_dtype).bits < 32
    if gram and low_precision:
        raise ValueError(
            "newton_schulz: the Gram-space iteration (gram=True) needs compute_dtype float32 or "
            "wider: in low precision its Q factors lose definiteness and blow up (Amsel et al., "
            "App. F); use gram=False or None with a bfloat16 compute_dtype."
        )
    if traced:
        if gram:
            raise ValueError(
                "newton_schulz: the Gram-space iteration (gram=True) restarts every 3 steps, "
                "which needs steps and coefficients known at trace time (a Python int, a "
                "concrete array); use gram=None or False with a traced steps or coefficients."
            )
        table = traced_schedule(coefficients)
        return _newton_schulz_traced(
            g, table, jnp.asarray(steps), float(eps), mm_dtype, normalization
        )
    if gram is None:
        m, n = sorted(g.shape[-2:])
        direct, gram_cost = _costs(steps, n / m, not bool(np.all(schedule[:, 2] == 0)))
        gram = gram_cost < direct and not low_precision
    return _newton_schulz(
        g, schedule.tobytes(), steps, float(eps), mm_dtype, normalization, bool(gram)
    )


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _newton_schulz(
    g, schedule_bytes: bytes, steps: int, eps: float, mm_dtype, normalization: str, gram: bool
) -> jax.Array:
    schedule = np.frombuffer(schedule_bytes, np.float64).reshape(steps, 3)
    iterate = _iterate_gram if gram else _iterate
    return _short_side_first(
        g, lambda x: iterate(_normalised(x, eps), schedule, mm_dtype, normalization)
    )


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _newton_schulz_traced(
    g, table: jax.Array, steps: jax.Array, eps: float, mm_dtype, normalization: str
) -> jax.Array:
    return _short_side_first(
        g, lambda x: _iterate_traced(_normalised(x, eps), table, steps, mm_dtype, normalization)
    )


def _short_side_first(g: jax.Array, one) -> jax.Array:
    """``one`` (the iteration of one normalised matrix or batch) on ``g`` in the work dtype, each
    matrix laid out short side first; the result in ``g``'s layout."""
    x = g.astype(_compute_dtype(g.dtype))
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    # Materialise the short-side-first layout: XLA:CPU would otherwise fold the transpose into a
    # dot whose bfloat16 x bfloat16 -> float32 form its fallback kernel does not implement.
    x = lax.optimization_barrier(x)
    if (
        x.ndim > 2
        and x.shape[-2] * x.shape[-1] >= _LOOP_MIN_SIZE
        and jax.default_backend() == "cpu"
    ):
        # XLA:CPU's 2-D matmul kernels beat its batched ones from 64² up: on CPU a batch of all
        # but tiny matrices is one loop over them.
        batch = x.shape[:-2]
        x = lax.map(one, x.reshape(-1, *x.shape[-2:])).reshape(*batch, *x.shape[-2:])
    else:
        x = one(x)
    return jnp.swapaxes(x, -1, -2) if tall else x
