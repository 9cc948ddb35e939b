"""Every row of the geometry table (DESIGN §3) against independent float64 NumPy oracles.

Per norm: the closed forms, ``<G, dualize(G)> = ‖G‖†``, ``‖dualize(G)‖ = 1``, Hölder, anthology
Prop. 1 optimality against feasible points, Definition 1 for the operator norms, zeros, scaling,
dtypes, jit, slices, and clear errors.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normtx import norms

import oracles as orc

INF = math.inf

# name -> (factory, oracle triple (norm, dual, dualize) on one vector/matrix, is_operator)
CASES = {
    "l1": (norms.l1, orc.vector_oracles(1.0), False),
    "l2": (norms.l2, orc.vector_oracles(2.0), False),
    "linf": (norms.linf, orc.vector_oracles(INF), False),
    "lp(1.5)": (lambda: norms.lp(1.5), orc.vector_oracles(1.5), False),
    "lp(3)": (lambda: norms.lp(3), orc.vector_oracles(3.0), False),
    "lp(7)": (lambda: norms.lp(7), orc.vector_oracles(7.0), False),
    "rms": (norms.rms, orc.vector_oracles(2.0, lambda n: 1 / math.sqrt(n)), False),
    "frobenius": (norms.frobenius, orc.vector_oracles(2.0), False),
    "spectral": (norms.spectral, orc.schatten_oracles(INF), True),
    "rms_to_rms": (
        norms.rms_to_rms,
        orc.schatten_oracles(INF, lambda d_in, d_out: math.sqrt(d_in / d_out)),
        True,
    ),
    "schatten(1)": (lambda: norms.schatten(1), orc.schatten_oracles(1.0), True),
    "schatten(1.5)": (lambda: norms.schatten(1.5), orc.schatten_oracles(1.5), True),
    "schatten(2)": (lambda: norms.schatten(2), orc.schatten_oracles(2.0), True),
    "schatten(4)": (lambda: norms.schatten(4), orc.schatten_oracles(4.0), True),
    "l1_to_lp(1)": (lambda: norms.l1_to_lp(1), orc.rows_oracles(1.0), True),
    "l1_to_lp(2)": (lambda: norms.l1_to_lp(2), orc.rows_oracles(2.0), True),
    "l1_to_lp(3)": (lambda: norms.l1_to_lp(3), orc.rows_oracles(3.0), True),
    "l1_to_lp(inf)": (lambda: norms.l1_to_lp(INF), orc.rows_oracles(INF), True),
    "l1_to_rms": (
        norms.l1_to_rms,
        orc.rows_oracles(2.0, lambda d_in, d_out: 1 / math.sqrt(d_out)),
        True,
    ),
    "lp_to_linf(1)": (lambda: norms.lp_to_linf(1), orc.cols_oracles(INF), True),
    "lp_to_linf(2)": (lambda: norms.lp_to_linf(2), orc.cols_oracles(2.0), True),
    "lp_to_linf(3)": (lambda: norms.lp_to_linf(3), orc.cols_oracles(1.5), True),
    "lp_to_linf(inf)": (lambda: norms.lp_to_linf(INF), orc.cols_oracles(1.0), True),
}
NAMES = list(CASES)
SHAPES = [(5, 3), (3, 5), (4, 4)]


def _g(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_closed_forms_match_float64_oracle(name, shape):
    factory, (o_norm, o_dual, o_dualize), _ = CASES[name]
    n = factory()
    g = _g(shape)
    np.testing.assert_allclose(n.norm(_f32(g)), o_norm(g), rtol=2e-5)
    np.testing.assert_allclose(n.dual_norm(_f32(g)), o_dual(g), rtol=2e-5)
    np.testing.assert_allclose(n.dualize(_f32(g)), o_dualize(g), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_dualize_attains_the_dual_norm_on_the_unit_sphere(name):
    """``<G, dualize(G)> = ‖G‖†`` and ``‖dualize(G)‖ = 1`` (Prop. 1; measured by the oracle)."""
    factory, (o_norm, o_dual, _), _ = CASES[name]
    n = factory()
    for seed in range(3):
        g = _g((6, 4), seed)
        t, gt = n.dualize(_f32(g)), np.asarray(n.dualize(_f32(g)), np.float64)
        np.testing.assert_allclose(np.vdot(g, gt), o_dual(g), rtol=2e-5)
        np.testing.assert_allclose(o_norm(gt), 1.0, rtol=2e-5)
        dual, t2 = n.dual_and_dualize(_f32(g))
        np.testing.assert_allclose(dual, o_dual(g), rtol=2e-5)
        np.testing.assert_allclose(t2, t, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_holder_inequality_over_random_directions(name):
    factory, (o_norm, _, _), _ = CASES[name]
    n = factory()
    rng = np.random.default_rng(1)
    g = rng.standard_normal((5, 4))
    dual = float(n.dual_norm(_f32(g)))
    for _ in range(300):
        t = rng.standard_normal((5, 4)) * rng.exponential(size=(5, 4)) ** 2
        assert np.vdot(g, t) <= dual * o_norm(t) * (1 + 1e-5)


@pytest.mark.parametrize("lam", [0.3, 4.0])
@pytest.mark.parametrize("name", NAMES)
def test_prop1_step_beats_feasible_points(name, lam):
    """Δ* = -(‖g‖†/λ) dualize(g) minimises <g, Δ> + (λ/2)‖Δ‖² (anthology Prop. 1)."""
    factory, (o_norm, _, _), _ = CASES[name]
    n = factory()
    rng = np.random.default_rng(2)
    g = rng.standard_normal((4, 3))
    dual = float(n.dual_norm(_f32(g)))
    step = -(dual / lam) * np.asarray(n.dualize(_f32(g)), np.float64)

    def objective(d):
        return np.vdot(g, d) + 0.5 * lam * o_norm(d) ** 2

    best = objective(step)
    np.testing.assert_allclose(best, -(dual**2) / (2 * lam), rtol=1e-4)
    for _ in range(400):  # random directions at their own best magnitude, and local perturbations
        t = rng.standard_normal(g.shape) * rng.exponential(size=g.shape)
        c = max(0.0, -np.vdot(g, t)) / (lam * o_norm(t) ** 2)
        assert best <= objective(c * t) + 1e-6 * abs(best)
        assert best <= objective(step + 1e-2 * rng.standard_normal(g.shape)) + 1e-6 * abs(best)


def test_linf_dual_norm_is_the_max_over_all_vertices():
    """Exact LP check of Prop. 2: the ℓ∞ unit ball's vertices are all 2^n sign vectors."""
    g = _g((10,), 3)
    vertices = np.array(np.meshgrid(*[[-1.0, 1.0]] * 10)).reshape(10, -1).T
    np.testing.assert_allclose(norms.linf().dual_norm(_f32(g)), (vertices @ g).max(), rtol=1e-6)
    np.testing.assert_array_equal(norms.linf().dualize(_f32(g)), vertices[(vertices @ g).argmax()])


def test_prop3_max_of_max_norm_is_the_linf_norm():
    """‖w‖_∞ = max_l ‖W_l‖_{ℓ1→ℓ∞} (eq. 9): l1_to_lp(inf) and linf agree on every map."""
    g = _f32(_g((6, 5), 4))
    a, b = norms.l1_to_lp(INF), norms.linf()
    np.testing.assert_allclose(a.norm(g), b.norm(g), rtol=1e-7)
    np.testing.assert_allclose(a.dual_norm(g), b.dual_norm(g), rtol=1e-6)
    np.testing.assert_array_equal(a.dualize(g), b.dualize(g))


def test_prop5_spectral_dualize_is_the_polar_factor():
    g = _g((7, 4), 5)
    u, _, vh = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(norms.spectral().dualize(_f32(g)), u @ vh, atol=2e-6)


# (factory, alpha, beta, factor) for Definition 1: ‖K‖ = max_x ‖x K‖_β / ‖x‖_α · factor
INDUCED = {
    "spectral": (norms.spectral, 2.0, 2.0),
    "l1_to_lp(1.5)": (lambda: norms.l1_to_lp(1.5), 1.0, 1.5),
    "l1_to_lp(inf)": (lambda: norms.l1_to_lp(INF), 1.0, INF),
    "lp_to_linf(1.5)": (lambda: norms.lp_to_linf(1.5), 1.5, INF),
    "lp_to_linf(3)": (lambda: norms.lp_to_linf(3), 3.0, INF),
}


@pytest.mark.parametrize("name", list(INDUCED))
def test_definition1_induced_operator_norm(name):
    """The closed forms equal max_x ‖x K‖_β/‖x‖_α: samples stay below, an attaining x reaches it."""
    factory, alpha, beta = INDUCED[name]
    rng = np.random.default_rng(6)
    k = rng.standard_normal((5, 4))
    closed = float(factory().norm(_f32(k)))
    sampled = orc.induced_norm_lower_bound(k, alpha, beta, rng)
    assert sampled <= closed * (1 + 1e-5)
    if name == "spectral":
        x = np.linalg.svd(k)[0][:, 0]  # top left singular vector of K = top input direction of x K
    elif name.startswith("lp_to_linf"):
        qnorms = orc.lp(k, orc.dual_exp(alpha), axis=0)
        x = orc.lmo(k[:, qnorms.argmax()], alpha)  # Hölder's equality case for the best column
    else:
        x = np.eye(5)[orc.lp(k, beta, axis=1).argmax()]  # a vertex of the ℓ1 ball (Prop. 8)
    np.testing.assert_allclose(orc.lp(x @ k, beta) / orc.lp(x, alpha), closed, rtol=1e-5)


def test_rms_norms_are_rescaled_induced_norms():
    """RMS→RMS = √(d_in/d_out)·spectral and ℓ1→RMS = ℓ1→ℓ2 / √d_out (DESIGN §3)."""
    k = _f32(_g((8, 2), 7))
    np.testing.assert_allclose(norms.rms_to_rms().norm(k), 2 * norms.spectral().norm(k), rtol=1e-6)
    np.testing.assert_allclose(
        norms.l1_to_rms().norm(k), norms.l1_to_lp(2).norm(k) / math.sqrt(2), rtol=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
def test_zero_gives_zero_and_no_nan(name):
    n = CASES[name][0]()
    z = jnp.zeros((4, 3), jnp.float32)
    chex.assert_trees_all_equal(n.dualize(z), z)
    assert float(n.norm(z)) == 0.0
    assert float(n.dual_norm(z)) == 0.0
    dual, t = n.dual_and_dualize(z)
    assert float(dual) == 0.0
    chex.assert_tree_all_finite(t)


@pytest.mark.parametrize("name", ["l1_to_lp(1)", "l1_to_lp(2)", "l1_to_lp(3)", "l1_to_rms"])
def test_zero_row_under_a_rowwise_norm(name):
    factory, (_, _, o_dualize), _ = CASES[name]
    g = _g((5, 4), 8)
    g[2] = 0.0
    t = np.asarray(factory().dualize(_f32(g)))
    np.testing.assert_array_equal(t[2], 0.0)
    np.testing.assert_allclose(t, o_dualize(g), rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("name", ["lp_to_linf(1)", "lp_to_linf(2)", "lp_to_linf(3)"])
def test_zero_column_under_a_columnwise_norm(name):
    factory, (_, _, o_dualize), _ = CASES[name]
    g = _g((5, 4), 9)
    g[:, 1] = 0.0
    t = np.asarray(factory().dualize(_f32(g)))
    np.testing.assert_array_equal(t[:, 1], 0.0)
    np.testing.assert_allclose(t, o_dualize(g), rtol=1e-4, atol=2e-6)


def test_spectral_of_a_rank_deficient_matrix_drops_the_null_space():
    rng = np.random.default_rng(10)
    g = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 5))  # rank 2
    u, s, vh = np.linalg.svd(g, full_matrices=False)
    t = norms.spectral().dualize(_f32(g))
    np.testing.assert_allclose(t, u[:, :2] @ vh[:2], atol=1e-5)
    np.testing.assert_allclose(norms.spectral().norm(t), 1.0, rtol=1e-5)
    np.testing.assert_allclose(norms.spectral().dual_norm(_f32(g)), s.sum(), rtol=1e-5)


@pytest.mark.parametrize("k", [-100, -60, 20, 60, 100])
@pytest.mark.parametrize("name", NAMES)
def test_float32_scale_invariance_from_1e_minus_30_to_1e30(name, k):
    n = CASES[name][0]()
    g = _g((5, 4), 11)
    scaled = _f32(g * 2.0**k)
    np.testing.assert_allclose(n.dualize(scaled), n.dualize(_f32(g)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(n.dual_norm(scaled) / 2.0**k, n.dual_norm(_f32(g)), rtol=1e-5)
    np.testing.assert_allclose(n.norm(scaled) / 2.0**k, n.norm(_f32(g)), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dualize_keeps_the_dtype(name, dtype):
    factory, (_, _, o_dualize), _ = CASES[name]
    g = _g((5, 4), 12)
    x = jnp.asarray(g, dtype)
    t = factory().dualize(x)
    assert t.dtype == dtype
    assert factory().norm(x).dtype == jnp.promote_types(dtype, jnp.float32)
    tol = 2e-2 if dtype in (jnp.bfloat16, jnp.float16) else 1e-4
    np.testing.assert_allclose(
        np.asarray(t, np.float64), o_dualize(np.asarray(x, np.float64)), rtol=tol, atol=tol
    )


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager_and_norms_are_static_arguments(name):
    n = CASES[name][0]()
    g = _f32(_g((5, 4), 13))
    f = jax.jit(
        lambda norm, x: (norm.norm(x), norm.dual_norm(x), norm.dualize(x)), static_argnums=0
    )
    chex.assert_trees_all_close(f(n, g), (n.norm(g), n.dual_norm(g), n.dualize(g)), rtol=1e-6)
    assert hash(n) == hash(CASES[name][0]())


@pytest.mark.parametrize(
    "name", ["spectral", "rms_to_rms", "schatten(1.5)", "l1_to_lp(3)", "l1_to_rms", "lp_to_linf(3)"]
)
def test_stacked_layers_are_separate_matrices(name):
    """A (L, d_in, d_out) leaf is L matrices: norm = max, dual = sum, dualize per slice."""
    factory, (o_norm, o_dual, o_dualize), _ = CASES[name]
    g = _g((3, 5, 4), 14)
    n = dataclasses.replace(factory(), fan_in_axes=(1,), fan_out_axes=(2,))
    np.testing.assert_allclose(n.norm(_f32(g)), max(o_norm(s) for s in g), rtol=2e-5)
    np.testing.assert_allclose(n.dual_norm(_f32(g)), sum(o_dual(s) for s in g), rtol=2e-5)
    np.testing.assert_allclose(
        n.dualize(_f32(g)), np.stack([o_dualize(s) for s in g]), rtol=1e-4, atol=2e-5
    )


def test_conv_kernel_is_one_matrix_of_its_flattened_fan_in():
    g = _g((3, 3, 2, 4), 15)  # HWIO
    n = norms.rms_to_rms(fan_in_axes=(0, 1, 2), fan_out_axes=(3,))
    o_norm, o_dual, o_dualize = orc.schatten_oracles(INF, lambda a, b: math.sqrt(a / b))
    m = g.reshape(18, 4)
    np.testing.assert_allclose(n.norm(_f32(g)), o_norm(m), rtol=2e-5)
    np.testing.assert_allclose(n.dual_norm(_f32(g)), o_dual(m), rtol=2e-5)
    np.testing.assert_allclose(n.dualize(_f32(g)), o_dualize(m).reshape(g.shape), atol=2e-5)


def test_fan_out_first_layout_is_transposed_consistently():
    """Dimension numbers (1,)→(0,) read a (d_out, d_in) array as Kᵀ: same norm as K."""
    k = _g((5, 3), 16)
    a = norms.l1_to_rms()
    b = norms.l1_to_rms(fan_in_axes=(1,), fan_out_axes=(0,))
    np.testing.assert_allclose(a.norm(_f32(k)), b.norm(_f32(k.T)), rtol=1e-7)
    np.testing.assert_allclose(a.dualize(_f32(k)), b.dualize(_f32(k.T)).T, rtol=1e-7)


def test_vector_norm_batch_axes_measure_each_slice():
    g = _g((3, 7), 17)
    n = norms.rms(batch_axes=(0,))
    o_norm, o_dual, o_dualize = orc.vector_oracles(2.0, lambda m: 1 / math.sqrt(m))
    np.testing.assert_allclose(n.norm(_f32(g)), max(o_norm(r) for r in g), rtol=1e-6)
    np.testing.assert_allclose(n.dual_norm(_f32(g)), sum(o_dual(r) for r in g), rtol=1e-6)
    np.testing.assert_allclose(n.dualize(_f32(g)), np.stack([o_dualize(r) for r in g]), rtol=1e-5)


def test_vector_norms_accept_any_rank():
    g = _g((2, 3, 4), 18)
    np.testing.assert_allclose(norms.linf().dual_norm(_f32(g)), np.abs(g).sum(), rtol=1e-6)
    np.testing.assert_allclose(norms.l2().norm(_f32(3.0)), 3.0)


# ---- bad input ------------------------------------------------------------------------------


def test_rank3_leaf_without_dimension_numbers_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\).*fan_in_axes"):
        norms.spectral().norm(jnp.ones((2, 3, 4)))


def test_vector_leaf_under_a_matrix_norm_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shape \(3,\).*vector norm"):
        norms.l1_to_rms().dualize(jnp.ones(3))


@pytest.mark.parametrize("p", [0.5, 0.0, -1.0, float("nan"), "two"])
@pytest.mark.parametrize("factory", [norms.lp, norms.l1_to_lp, norms.lp_to_linf, norms.schatten])
def test_p_below_one_is_rejected_at_construction(factory, p):
    with pytest.raises(ValueError, match="p must be"):
        factory(p)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fan_in_axes": (0,)}, "both fan_in_axes and fan_out_axes"),
        ({"fan_in_axes": (0, 1), "fan_out_axes": (1,)}, "overlap"),
        ({"fan_in_axes": (0,), "fan_out_axes": (5,)}, "out of range"),
        ({"fan_in_axes": (), "fan_out_axes": (1,)}, "non-empty"),
    ],
)
def test_bad_dimension_numbers(kwargs, match):
    with pytest.raises(ValueError, match=match):
        norms.spectral(**kwargs).norm(jnp.ones((2, 3, 4)))


def test_integer_leaf_is_rejected_with_its_dtype():
    with pytest.raises(ValueError, match=r"int32.*floating-point"):
        norms.linf().dualize(jnp.ones((3, 2), jnp.int32))


def test_unknown_polar_method_is_rejected():
    with pytest.raises(ValueError, match="unknown polar method"):
        norms.spectral(polar="qr")


@pytest.mark.parametrize("factory", [norms.spectral, norms.rms_to_rms])
def test_fast_polar_backend_reads_the_dual_off_the_polar_factor(factory):
    """With Newton–Schulz, dual_norm = <G, dualize(G)> (no SVD). The iteration is a polynomial in
    G, so dualize(G) = c U f(Σ) Vᵀ and the dual is Σ σ_i f(σ_i) (times c's reciprocal scale):
    its error against the exact tr Σ is Σ σ_i (f_i - 1), checked with a float64 SVD of G."""
    g = _g((16, 24), 19)
    fast, exact = factory(polar="newton_schulz"), factory()
    t = np.asarray(fast.dualize(_f32(g)), np.float64)
    np.testing.assert_allclose(fast.dual_norm(_f32(g)), np.vdot(g, t), rtol=1e-5)
    u, sigma, vh = np.linalg.svd(g, full_matrices=False)
    c = np.asarray(exact.dualize(_f32(g)), np.float64)[None] @ vh.T  # c U: the exact scale c
    c = np.mean(np.einsum("ij,ij->j", u, c[0]))
    f = np.einsum("ij,ik,jk->k", t, u, vh.T) / c  # f_i = u_iᵀ T v_i / c
    relative_error = float(fast.dual_norm(_f32(g)) / exact.dual_norm(_f32(g))) - 1
    np.testing.assert_allclose(relative_error, np.sum(sigma * (f - 1)) / sigma.sum(), atol=1e-4)
    assert abs(relative_error) <= np.abs(f - 1).max()
    np.testing.assert_allclose(fast.norm(_f32(g)), exact.norm(_f32(g)), rtol=1e-6)


def test_names_show_a_non_default_polar_backend():
    import functools

    from normtx import linalg

    assert norms.rms_to_rms().name == "rms_to_rms"
    assert norms.rms_to_rms(polar="newton_schulz").name == "rms_to_rms[newton_schulz]"
    ns8 = functools.partial(linalg.newton_schulz, steps=8)
    assert norms.spectral(polar=ns8).name == "spectral[newton_schulz]"
    assert norms.schatten(3).name == "schatten(3)"
