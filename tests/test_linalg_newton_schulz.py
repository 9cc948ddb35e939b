"""``normtx.linalg.newton_schulz`` and its schedules (anthology Appendix A; Amsel et al. 2025).

Oracles: float64 NumPy SVD (the polar factor), the scalar polynomial composition applied to the
float64 singular values (an odd matrix polynomial acts on each singular value, anthology App. A),
a linear program for the minimax quintic, and the coefficients printed in Amsel et al.'s paper.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from polar_helpers import (
    ROUNDING_ATOL,
    compose,
    iteration_oracle,
    polar64,
    rel_error,
    spread,
    with_singular_values,
)

import normtx
from normtx import norms
from normtx.linalg import (
    newton_schulz,
    newton_schulz_schedule,
    optimal_odd_quintic,
    polar,
    polar_express_coefficients,
)
from normtx.linalg.newton_schulz import _sym_gram

PE_LOWER, PE_CUSHION, PE_SAFETY = 1e-3, 0.02407327424182761, 1.01
EPS32 = float(np.finfo(np.float32).eps)

# Amsel, Persson, Musco & Gower (2025), Algorithm 1, before the safety factor (which is applied
# to every row but the last).
PUBLISHED = np.array(
    [
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
        (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
        (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
        (1.875, -1.25, 0.375),
    ]
)
SAFETY_POWERS = np.array([PE_SAFETY, PE_SAFETY**3, PE_SAFETY**5])


def _poly(abc, x):
    a, b, c = abc
    return a * x + b * x**3 + c * x**5


def _f32(x):
    return jnp.asarray(x, jnp.float32)


# ---- the schedules -------------------------------------------------------------------------


def test_polar_express_matches_the_published_coefficients():
    expected = PUBLISHED.copy()
    expected[:-1] /= SAFETY_POWERS
    np.testing.assert_allclose(polar_express_coefficients(), expected, rtol=1e-9, atol=0)


def _minimax_lp(lo, hi, n=4001):
    """``argmin_{a,b,c} max_{x in grid} |1 - p(x)|`` by linear programming (Chebyshev nodes)."""
    x = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.linspace(np.pi, 0.0, n))
    basis = np.stack([x, x**3, x**5], axis=1)
    ones = np.ones((n, 1))
    # variables (a, b, c, E): 1 - p(x) <= E and p(x) - 1 <= E.
    a_ub = np.vstack([np.hstack([-basis, -ones]), np.hstack([basis, -ones])])
    b_ub = np.concatenate([-np.ones(n), np.ones(n)])
    res = scipy.optimize.linprog(
        [0, 0, 0, 1], A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * 4, method="highs"
    )
    assert res.success
    return res.x[:3], res.x[3]


@pytest.mark.parametrize(("lo", "hi"), [(0.024, 1.0), (0.1, 1.0), (0.3, 1.7), (0.9, 1.1)])
def test_optimal_odd_quintic_is_the_minimax_polynomial(lo, hi):
    abc = np.array(optimal_odd_quintic(lo, hi))
    lp_abc, lp_err = _minimax_lp(lo, hi)
    grid = np.linspace(lo, hi, 20001)
    err = np.abs(1 - _poly(abc, grid)).max()
    np.testing.assert_allclose(err, lp_err, rtol=1e-6)
    np.testing.assert_allclose(abc, lp_abc, rtol=1e-4, atol=1e-6)


def test_polar_express_steps_equioscillate_and_the_intervals_recurse():
    """Step t is (a multiple of) the best quintic on [max(l_t, cushion u_t), u_t]: its error
    equioscillates at lo, q, r, hi with q, r the roots of p' (Chebyshev); it maps [l_t, u_t] into
    [l_{t+1}, u_{t+1}] = [p_t(l_t), 2 - p_t(l_t)], and the last row is the limit (15/8, -5/4, 3/8)."""
    schedule = polar_express_coefficients()
    lo, hi = PE_LOWER, 1.0
    for t, row in enumerate(schedule[:-1]):
        p = row * SAFETY_POWERS  # undo x -> p(x / 1.01)
        left = max(lo, PE_CUSHION * hi)
        crit = np.sort(np.roots([5 * p[2], 3 * p[1], p[0]]).real)  # p' as a quadratic in x²
        q, r = np.sqrt(crit)
        assert left < q < r < hi, t
        vals = _poly(p, np.array([left, q, r, hi]))
        centre = vals.mean()
        dev = (vals - centre) * np.array([-1, 1, -1, 1])
        np.testing.assert_allclose(dev, dev[0], rtol=1e-7, atol=1e-14)
        assert dev[0] > 0
        # recentred so that p(l) + p(u) = 2, and the next interval is [p(l), 2 - p(l)].
        np.testing.assert_allclose(_poly(p, lo) + _poly(p, hi), 2.0, rtol=1e-12)
        new_lo = _poly(p, lo)
        image = _poly(p, np.linspace(lo, hi, 200001))
        assert image.min() >= new_lo - 1e-12
        assert image.max() <= 2 - new_lo + 1e-12
        assert new_lo > lo
        lo, hi = new_lo, 2 - new_lo
    assert lo / hi >= 1 - 5e-6
    np.testing.assert_array_equal(schedule[-1], [15 / 8, -10 / 8, 3 / 8])


@pytest.mark.parametrize(
    ("name", "first"),
    [("cubic", [1.5, -0.5, 0.0]), ("muon", [3.4445, -4.7750, 2.0315])],
)
def test_named_fixed_schedules(name, first):
    np.testing.assert_array_equal(newton_schulz_schedule(name, 3), [first] * 3)


def test_schedule_past_its_end_repeats_the_last_row():
    table = np.array([[3.0, -3.2, 1.2], [1.5, -0.5, 0.0]])
    np.testing.assert_array_equal(newton_schulz_schedule(table, 4), table[[0, 1, 1, 1]])
    np.testing.assert_array_equal(newton_schulz_schedule(table, 1), table[:1])
    pe = polar_express_coefficients()
    np.testing.assert_array_equal(newton_schulz_schedule("polar_express", 10)[8:], pe[[-1, -1]])
    g = _f32(np.random.default_rng(0).standard_normal((6, 9)))
    chex.assert_trees_all_close(
        newton_schulz(g, steps=4, coefficients=table),
        newton_schulz(g, steps=4, coefficients=table[[0, 1, 1, 1]]),
    )


# ---- accuracy against the float64 SVD --------------------------------------------------------

CASES = {
    "gauss_wide": lambda rng: rng.standard_normal((24, 40)),
    "spread_square": lambda rng: spread(rng, 32, 32),
    "spread_tall": lambda rng: spread(rng, 48, 20),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("coefficients", "steps"), [("cubic", 40), ("polar_express", 10)])
def test_converges_to_the_polar_factor(case, coefficients, steps):
    g = CASES[case](np.random.default_rng(1))
    x = newton_schulz(_f32(g), steps=steps, coefficients=coefficients)
    assert x.dtype == jnp.float32
    assert x.shape == g.shape
    assert rel_error(x, polar64(g)) < 1e-3


@pytest.mark.parametrize("coefficients", ["cubic", "muon", "polar_express"])
def test_acts_on_each_singular_value(coefficients):
    """``X_T = U f(Σ₀) Vᵀ`` with f the composed scalar polynomial and Σ₀ = Σ/‖G‖_F."""
    rng = np.random.default_rng(2)
    g = spread(rng, 30, 20, low=1e-2)
    x = np.asarray(newton_schulz(_f32(g), steps=5, coefficients=coefficients), np.float64)
    np.testing.assert_allclose(
        x, iteration_oracle(g, newton_schulz_schedule(coefficients, 5)), atol=2e-5
    )


def test_schatten4_normalization_divides_by_the_schatten4_norm():
    """``normalization='schatten4'`` starts from ``G/‖σ‖₄`` (``‖σ‖₄ = ‖GGᵀ‖_F^{1/2} >= σ_max``),
    which lifts small singular values: on a flat spectrum with a small tail (‖σ‖₂/‖σ‖₄ ≈ 2.7)
    it reaches 1e-2 in one step fewer (9 -> 8 by the scalar oracle)."""
    sigma = np.concatenate([np.ones(56), np.geomspace(1e-2, 1e-3, 8)])
    g = with_singular_values(np.random.default_rng(14), 64, 64, sigma)
    schedule = newton_schulz_schedule("polar_express", 5)
    x = newton_schulz(_f32(g), steps=5, normalization="schatten4")
    np.testing.assert_allclose(
        np.asarray(x, np.float64), iteration_oracle(g, schedule, schatten=4), atol=2e-5
    )
    eight = {
        norm: rel_error(newton_schulz(_f32(g), steps=8, normalization=norm), polar64(g))
        for norm in ("frobenius", "schatten4")
    }
    assert eight["schatten4"] < 1e-2 < eight["frobenius"]
    for k in (-60, 20):
        chex.assert_trees_all_close(
            newton_schulz(_f32(g) * jnp.float32(2.0**k), normalization="schatten4"),
            x,
            atol=1e-6,
        )
    z = newton_schulz(jnp.zeros((4, 6), jnp.float32), normalization="schatten4")
    chex.assert_trees_all_equal(z, jnp.zeros((4, 6), jnp.float32))


def test_singular_value_range_after_five_steps(capsys):
    """After 5 steps on σ/‖G‖_F in [1e-3, 1]-ish inputs Polar Express is tighter than Muon's
    quintic; the ranges are printed for the report."""
    rng = np.random.default_rng(3)
    g = np.stack([spread(rng, 48, 48, low=1e-2), rng.standard_normal((48, 80))[:, :48]])
    ranges = {}
    for name in ("cubic", "muon", "polar_express"):
        x = np.asarray(newton_schulz(_f32(g), steps=5, coefficients=name), np.float64)
        s = np.linalg.svd(x, compute_uv=False)
        ranges[name] = (s.min(), s.max())
        # the oracle: the composed scalar map on the float64 normalised singular values.
        s0 = np.linalg.svd(g, compute_uv=False)
        f = compose(newton_schulz_schedule(name, 5), s0 / np.linalg.norm(s0, axis=1, keepdims=True))
        np.testing.assert_allclose([s.min(), s.max()], [f.min(), f.max()], atol=1e-4)
    with capsys.disabled():
        for name, (lo, hi) in ranges.items():
            print(f"\n  5 steps {name:>13}: singular values in [{lo:.3f}, {hi:.3f}]", end="")
    dev = {k: max(1 - lo, hi - 1) for k, (lo, hi) in ranges.items()}
    assert dev["polar_express"] < dev["muon"]
    assert ranges["muon"][1] > 1.1  # Muon's quintic overshoots and does not converge


def test_the_muon_quintic_does_not_converge():
    g = _f32(np.random.default_rng(4).standard_normal((16, 24)))
    s = np.linalg.svd(np.asarray(newton_schulz(g, steps=30, coefficients="muon")), compute_uv=False)
    assert s.max() > 1.1
    assert s.min() < 0.9


# ---- the Gram-space iteration for rectangular matrices (Amsel et al., Algorithm 4) -------------


def _aol_oracle(g, schedule) -> np.ndarray:
    """Float64: ``X = G/‖G‖_F`` (short side first), ``X₀ = D X`` with
    ``D = diag(Σ_j |X Xᵀ|_ij)^{-1/2}``, then the schedule's polynomial on ``X₀``'s singular values
    (``U₀ f(Σ₀) V₀ᵀ``, exactly what the iteration computes from ``X₀``)."""
    g = np.asarray(g, np.float64)
    tall = g.shape[0] > g.shape[1]
    x = (g.T if tall else g) / np.linalg.norm(g)
    d = 1 / np.sqrt(np.abs(x @ x.T).sum(axis=1))
    u, s, vh = np.linalg.svd(d[:, None] * x, full_matrices=False)
    assert s.max() <= 1 + 1e-12  # the AOL bound (Prach & Lampert 2022, Theorem 1)
    out = (u * compose(schedule, s)) @ vh
    return out.T if tall else out


@pytest.mark.parametrize("shape", [(12, 40), (40, 12), (64, 64)])
def test_aol_normalization_against_a_float64_oracle_and_optax(shape):
    """``normalization='aol'``: the polynomial iteration from ``D G/‖G‖_F`` (rows rescaled by the
    Gram matrix's absolute row sums), by the float64 SVD oracle and by optax's
    ``preconditioning='aol'`` (same quintic, same steps), in both the direct and the Gram-space
    iteration; scale free; the zero matrix and a zero row stay finite."""
    from optax.contrib import _muon

    rng = np.random.default_rng(21)
    g = spread(rng, *shape, low=1e-2) * np.exp(rng.standard_normal((shape[0], 1)))  # uneven rows
    schedule = newton_schulz_schedule("muon", 5)
    oracle = _aol_oracle(g, schedule)
    ref = _muon.orthogonalize_via_newton_schulz(
        _f32(g), jnp.asarray(schedule[0], jnp.float32), 5, preconditioning="aol"
    )
    np.testing.assert_allclose(np.asarray(ref, np.float64), oracle, atol=2e-5)
    for gram in (True, False):
        x = newton_schulz(_f32(g), steps=5, coefficients="muon", normalization="aol", gram=gram)
        np.testing.assert_allclose(np.asarray(x, np.float64), oracle, atol=2e-5)
    # Not the polar factor of G itself: the rows' scales moved the target.
    assert rel_error(np.asarray(x, np.float64), polar64(g)) > 0.05
    for k in (-60, 20):
        chex.assert_trees_all_close(
            newton_schulz(
                _f32(g) * jnp.float32(2.0**k), coefficients="muon", normalization="aol", gram=False
            ),
            x,
            atol=1e-6,
        )
    z = newton_schulz(jnp.zeros(shape, jnp.float32), normalization="aol")
    chex.assert_trees_all_equal(z, jnp.zeros(shape, jnp.float32))
    row0 = _f32(g).at[0].set(0.0) if shape[0] <= shape[1] else _f32(g).at[:, 0].set(0.0)
    assert np.isfinite(np.asarray(newton_schulz(row0, normalization="aol"))).all()


@pytest.mark.parametrize(
    ("shape", "coefficients", "steps", "normalization"),
    [
        ((20, 70), "polar_express", 5, "frobenius"),
        ((70, 20), "polar_express", 8, "schatten4"),
        ((16, 48), "cubic", 7, "frobenius"),
    ],
)
def test_gram_iteration_computes_the_same_polynomial(shape, coefficients, steps, normalization):
    g = spread(np.random.default_rng(15), *shape, low=1e-2)
    schedule = newton_schulz_schedule(coefficients, steps)
    schatten = 4 if normalization == "schatten4" else 2
    oracle = iteration_oracle(g, schedule, schatten=schatten)
    for gram in (True, False):
        x = newton_schulz(
            _f32(g), steps=steps, coefficients=coefficients, normalization=normalization, gram=gram
        )
        np.testing.assert_allclose(np.asarray(x, np.float64), oracle, atol=2e-5)


@pytest.mark.parametrize("gram", [True, False])
def test_rank_deficient_input(gram):
    """Float32 rounding leaves singular values of about eps₃₂ where G has none; the iteration
    multiplies them by its slope at 0, ``Π a_t`` (≈ 6.4e3 after 8 Polar Express steps). Against the
    exact ``U_r V_rᵀ`` the error is then at most ``√(#null) · Π a_t · eps₃₂ / √r``."""
    sigma = np.concatenate([np.geomspace(1.0, 1e-2, 10), np.zeros(6)])
    g = with_singular_values(np.random.default_rng(16), 16, 64, sigma)
    x = newton_schulz(_f32(g), steps=8, gram=gram)
    slope = np.prod(newton_schulz_schedule("polar_express", 8)[:, 0])
    assert rel_error(x, polar64(g)) < np.sqrt(6) * slope * EPS32 / np.sqrt(10)


def test_gram_iteration_of_zero_is_zero():
    z = newton_schulz(jnp.zeros((2, 4, 16), jnp.float32), gram=True)
    chex.assert_trees_all_equal(z, jnp.zeros((2, 4, 16), jnp.float32))


def test_gram_is_chosen_for_wide_matrices_only():
    rng = np.random.default_rng(17)
    wide, square = _f32(rng.standard_normal((8, 40))), _f32(rng.standard_normal((12, 12)))
    chex.assert_trees_all_equal(newton_schulz(wide), newton_schulz(wide, gram=True))
    chex.assert_trees_all_equal(newton_schulz(square), newton_schulz(square, gram=False))
    bf16 = functools.partial(newton_schulz, compute_dtype=jnp.bfloat16)
    chex.assert_trees_all_equal(bf16(wide), bf16(wide, gram=False))
    with pytest.raises(ValueError, match="gram=True"):
        bf16(wide, gram=True)


@pytest.mark.parametrize("shape", [(512, 520), (1100, 512)])
def test_large_matrices_use_blocked_symmetric_products(shape):
    """From m = 512 on, X Xᵀ and A² are formed from row blocks (only the upper triangle of blocks
    is multiplied); the iteration is unchanged: same polynomial on each singular value, and A is
    exactly symmetric. (1100 x 512 is tall and wide enough for the Gram iteration too.)"""
    g = spread(np.random.default_rng(19), *shape, low=1e-2)
    x = newton_schulz(_f32(g), steps=5)
    oracle = iteration_oracle(g, newton_schulz_schedule("polar_express", 5))
    np.testing.assert_allclose(np.asarray(x, np.float64), oracle, atol=1e-5)
    a = _sym_gram(_f32(g[:512]), jnp.float32)
    chex.assert_trees_all_equal(a, a.T)


# ---- numerics --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [-60, -40, -10, 0, 10, 20])
def test_scale_invariance(k):
    g = _f32(np.random.default_rng(5).standard_normal((12, 20)))
    chex.assert_trees_all_close(
        newton_schulz(g * jnp.float32(2.0**k)), newton_schulz(g), rtol=1e-6, atol=1e-7
    )


def test_zero_maps_to_zero_also_inside_a_batch():
    g = np.random.default_rng(6).standard_normal((3, 5, 7))
    g[1] = 0
    x = newton_schulz(_f32(g))
    chex.assert_trees_all_equal(x[1], jnp.zeros((5, 7), jnp.float32))
    assert np.isfinite(np.asarray(x)).all()
    chex.assert_trees_all_close(x[0], newton_schulz(_f32(g[0])), atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "out"),
    [
        (jnp.float16, jnp.float32),
        (jnp.bfloat16, jnp.float32),
        (jnp.float32, jnp.float32),
        (jnp.float64, jnp.float64),
    ],
)
def test_input_dtypes(dtype, out):
    g = np.random.default_rng(7).standard_normal((16, 24)) * 3e3  # f16 would overflow in ‖G‖²
    x = newton_schulz(jnp.asarray(g, dtype), steps=10)
    assert x.dtype == out
    assert np.isfinite(np.asarray(x, np.float64)).all()
    rounded = np.asarray(jnp.asarray(g, dtype).astype(jnp.float64))
    assert rel_error(x, polar64(rounded)) < 1e-3


def test_float64_input_reaches_float64_accuracy():
    g = np.random.default_rng(8).standard_normal((16, 24))
    x = newton_schulz(jnp.asarray(g, jnp.float64), steps=12)
    assert rel_error(x, polar64(g)) < 1e-10


@pytest.mark.parametrize("shape", [(40, 16), (2, 40, 16)])
def test_bfloat16_compute_on_tall_matrices(shape):
    """Regression: the transposed (tall) layout must not reach XLA:CPU's generic dot kernel, which
    has no bfloat16 x bfloat16 -> float32 form."""
    g = np.random.default_rng(18).standard_normal(shape)
    x = newton_schulz(_f32(g), steps=10, compute_dtype=jnp.bfloat16)
    assert rel_error(x, polar64(g)) < 3e-2


def test_bfloat16_compute_runs_bf16_matmuls_with_f32_accumulation():
    g = _f32(np.random.default_rng(9).standard_normal((32, 48)))
    fn = functools.partial(newton_schulz, steps=10, compute_dtype=jnp.bfloat16)
    text = jax.jit(fn).lower(g).as_text()
    dots = [ln for ln in text.splitlines() if "dot_general" in ln]
    assert len(dots) >= 3  # X Xᵀ, A², B X (the scan body may be shared by the steps)
    for ln in dots:
        operands, result = ln.split("->")
        assert "bf16" in operands
        assert "xf32>" in result
    x = fn(g)
    assert x.dtype == jnp.float32
    # bf16 has 8 bits of mantissa: the result is U Vᵀ to about 1e-2.
    assert rel_error(x, polar64(np.asarray(g))) < 3e-2


@pytest.mark.parametrize("gram", [False, True])
def test_tall_is_the_transpose_of_wide(gram):
    # The two programs lay the same matrix out differently, so their float32 rounding differs; the
    # Gram iteration amplifies it to its float32 accuracy (2e-5, as against the float64 oracle in
    # test_gram_iteration_computes_the_same_polynomial).
    g = _f32(np.random.default_rng(10).standard_normal((30, 12)))
    atol = 2e-5 if gram else ROUNDING_ATOL
    x, y = newton_schulz(g, gram=gram), newton_schulz(g.T, gram=gram).T
    chex.assert_trees_all_close(x, y, atol=atol)


@pytest.mark.parametrize("shape", [(4, 10, 14), (2, 2, 24, 48)], ids=["batched_dots", "cpu_loop"])
def test_batch_jit_vmap_agree(shape):
    """Small matrices run as batched matmuls, larger ones (on CPU) as a loop: both equal the
    matrix-by-matrix result, under jit and vmap too."""
    g = _f32(np.random.default_rng(11).standard_normal(shape))
    flat = g.reshape(-1, *shape[-2:])
    looped = jnp.stack([newton_schulz(x) for x in flat]).reshape(shape)
    for other in (
        newton_schulz(g),
        jax.jit(newton_schulz)(g),
        jax.vmap(newton_schulz)(g),
        jax.vmap(jax.vmap(newton_schulz))(g.reshape(2, -1, *shape[-2:])).reshape(shape),
    ):
        chex.assert_trees_all_close(other, looped, atol=ROUNDING_ATOL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"coefficients": "quartic"}, "unknown coefficients"),
        ({"coefficients": np.ones((2, 4))}, r"shape \(k, 3\)"),
        ({"coefficients": np.array([[1.5, -0.5, np.nan]])}, "finite"),
        ({"compute_dtype": jnp.int32}, "compute_dtype"),
        ({"normalization": "spectral"}, "normalization"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        newton_schulz(jnp.ones((3, 4)), **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="matrices"):
        newton_schulz(jnp.ones(4))
    with pytest.raises(ValueError, match="floating"):
        newton_schulz(jnp.ones((3, 4), jnp.int32))
    with pytest.raises(ValueError, match="lower"):
        polar_express_coefficients(lower=0.0)
    with pytest.raises(ValueError, match="lo <= hi"):
        optimal_odd_quintic(0.5, 0.1)


# ---- polar(method='newton_schulz') and the spectral norms -------------------------------------


def test_polar_dispatches_with_options():
    g = _f32(np.random.default_rng(12).standard_normal((2, 9, 6)))
    chex.assert_trees_all_close(
        polar(g, method="newton_schulz", steps=7, coefficients="cubic"),
        newton_schulz(g, steps=7, coefficients="cubic"),
    )
    assert rel_error(polar(g, method="newton_schulz", steps=10), polar64(g)) < 1e-3
    with pytest.raises(ValueError, match="unknown polar method"):
        polar(g, method="qr")


@pytest.mark.parametrize(
    "method",
    ["newton_schulz", functools.partial(normtx.linalg.newton_schulz, steps=8)],
    ids=["name", "partial"],
)
@pytest.mark.parametrize("factory", [norms.spectral, norms.rms_to_rms])
def test_spectral_norms_take_newton_schulz(factory, method):
    """``dualize`` of ``spectral``/``rms_to_rms`` with a Newton–Schulz polar factor is
    ``factor · U f(Σ/‖G‖_F) Vᵀ`` (f the composed schedule), ``factor = √(d_out/d_in)`` for
    ``rms_to_rms`` (DESIGN §3)."""
    g = spread(np.random.default_rng(13), 12, 20, low=0.1)
    t = factory(polar=method).dualize(_f32(g))
    factor = 1.0 if factory is norms.spectral else np.sqrt(20 / 12)
    steps = 5 if method == "newton_schulz" else 8
    oracle = iteration_oracle(g, newton_schulz_schedule("polar_express", steps))
    np.testing.assert_allclose(np.asarray(t, np.float64), factor * oracle, atol=3e-5)
    if steps == 8:
        assert rel_error(t, factor * polar64(g)) < 1e-3
