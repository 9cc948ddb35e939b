"""Shampoo (notes §6, 6.1, Appendix G, I.1; anthology Prop. 4) against float64 NumPy and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adaptive_helpers import (
    assert_close_per_step,
    random_grads,
    run,
    run_through_an_overflow,
    train_digits_cnn,
)
from adaptive_oracles import psd_power, shampoo

from normtx.adaptive import scale_by_shampoo
from normtx.dims import CONV_HWIO, DimensionNumbers

EXACT = {"inverse_root": "eigh", "ridge": 0.0}  # pseudo-inverse roots, as the notes' powers
F32 = 1e-5  # float32 matrix functions (a few ulps times the condition)
NEWTON = 1e-4  # inverse_pth_root's Newton tolerance: relative error about tol/p = 1.2e-4/p
EPS32 = float(np.finfo(np.float32).eps)


def _zeros(shape):
    return jnp.zeros(shape, jnp.float32)


def _ups(tx, grads, jit=True, w0=None):
    w0 = _zeros(np.shape(grads[0])) if w0 is None else w0
    return np.stack(run(tx, w0, [jnp.asarray(g) for g in grads], jit=jit)[1])


def _leak_floor(p, ridge=1e-6):
    # While a statistic is rank-deficient, float32 eigenvectors leak about eps32 of G into its
    # null space, amplified by ridge^{-1/p} (see normtx.adaptive.full_adagrad).
    return max(NEWTON, 4 * EPS32 * ridge ** (-1 / p))


@pytest.mark.parametrize(
    ("kwargs", "oracle_kwargs", "tol"),
    [
        ({**EXACT}, {}, F32),
        ({}, {}, _leak_floor(4)),
        ({"inverse_root": "newton"}, {}, NEWTON),
        ({"accumulator": "ema", "beta2": 0.9, **EXACT}, {"beta2": 0.9}, F32),
        ({"exponent": -0.5, **EXACT}, {"exponent": -0.5}, F32),
        ({"idealized": True, **EXACT}, {"idealized": True}, F32),
        (
            {"idealized": True, "accumulator": "ema", "beta2": 0.9},
            {"idealized": True, "beta2": 0.9},
            _leak_floor(2),
        ),
    ],
)
def test_eq40_and_section_6_1_match_numpy_for_5_steps(kwargs, oracle_kwargs, tol):
    grads = random_grads(0, (6, 4), 5)
    assert_close_per_step(
        _ups(scale_by_shampoo(**kwargs), grads), shampoo(grads, **oracle_kwargs), tol
    )


def _well_conditioned(seed, n, steps):
    """Square gradients with singular values in [1, 2]: every statistic is well conditioned."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
        q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
        out.append((q1 * rng.uniform(1, 2, n)) @ q2)
    return [g.astype(np.float32) for g in out]


@pytest.mark.parametrize(("inverse_root", "tol"), [("eigh", F32), ("newton", NEWTON)])
def test_jit_equals_eager(inverse_root, tol):
    grads = _well_conditioned(1, 4, 4)
    tx = scale_by_shampoo(
        accumulator="ema", beta2=0.9, graft="adam", precondition_every=2, inverse_root=inverse_root
    )
    assert_close_per_step(_ups(tx, grads, jit=False), _ups(tx, grads), tol)


@pytest.mark.parametrize("shape", [(5, 5), (6, 4), (4, 6)])
@pytest.mark.parametrize("kwargs", [EXACT, {}])
def test_prop4_without_accumulation_shampoo_is_the_polar_factor(shape, kwargs):
    # Anthology eq. 15–16: (G Gᵀ)^{-1/4} G (Gᵀ G)^{-1/4} = U Vᵀ. One step of sums, then EMA with
    # beta2 = 0 (no accumulation at all) for three steps. Accuracy: float32 eigh resolves the
    # eigenvalues of G Gᵀ to about eps32 · κ(G Gᵀ); the default relative ridge moves the smallest
    # by ridge · κ(G Gᵀ), and leaks at the float32 floor into the null space of a non-square G.
    grads = random_grads(2, shape, 3)
    polar, kappa = [], 1.0
    for g in grads:
        u, sv, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
        polar.append(u @ vt)
        kappa = max(kappa, (sv[0] / sv[-1]) ** 2)
    tol = 4 * EPS32 * kappa if kwargs is EXACT else _leak_floor(4) + 1e-6 * kappa
    assert_close_per_step(_ups(scale_by_shampoo(**kwargs), grads[:1]), polar[:1], tol)
    tx = scale_by_shampoo(accumulator="ema", beta2=0.0, **kwargs)
    assert_close_per_step(_ups(tx, grads), polar, tol)


def _vec_row(x):  # the notes' vec (Appendix G): row-major, vec([[a, b], [c, d]]) = (a, b, c, d)
    return np.asarray(x).reshape(-1)


def _vec_col(x):  # the column-stacking vec of most linear-algebra texts
    return np.asarray(x).reshape(-1, order="F")


def test_appendix_g_vec_conventions():
    # Eq. 67 (row-major): vec(A X B) = (A ⊗ Bᵀ) vec(X); column-major: vec(A X B) = (Bᵀ ⊗ A) vec(X).
    rng = np.random.default_rng(3)
    A, X, B = rng.standard_normal((3, 3)), rng.standard_normal((3, 4)), rng.standard_normal((4, 4))
    np.testing.assert_allclose(_vec_row(A @ X @ B), np.kron(A, B.T) @ _vec_row(X), rtol=1e-12)
    np.testing.assert_allclose(_vec_col(A @ X @ B), np.kron(B.T, A) @ _vec_col(X), rtol=1e-12)


def test_eq41_kronecker_form_of_the_update():
    # (L ⊗ R)^{-1/4} vec(G) = vec(L^{-1/4} G R^{-1/4}) (row-major vec, eq. 67 + 73), checked on
    # the transform's output at step 3 against the explicit 12 × 12 Kronecker product; with the
    # column-major vec the factors swap: (R ⊗ L)^{-1/4}.
    grads = random_grads(4, (3, 4), 3)
    g64 = [g.astype(np.float64) for g in grads]
    L = sum(g @ g.T for g in g64)
    R = sum(g.T @ g for g in g64)
    update = _ups(scale_by_shampoo(inverse_root="newton"), grads)[-1]
    row = (psd_power(np.kron(L, R), -0.25) @ _vec_row(g64[-1])).reshape(3, 4)
    col = (psd_power(np.kron(R, L), -0.25) @ _vec_col(g64[-1])).reshape(3, 4, order="F")
    assert_close_per_step(update[None], row[None], NEWTON)
    assert_close_per_step(update[None], col[None], NEWTON)
    wrong = (psd_power(np.kron(R, L), -0.25) @ _vec_row(g64[-1])).reshape(3, 4)
    assert np.linalg.norm(update - wrong) > 0.1 * np.linalg.norm(wrong)


def test_lemma_i1_idealized_step_is_the_inverse_root_of_the_kronecker_fisher():
    # With I_emp = L ⊗ R / tr(L) (Lemma I.1, eq. 90) the Newton step I_emp^{-1/2} vec(G) is
    # tr(L)^{+1/2} L^{-1/2} G R^{-1/2}: the trace enters with power +1/2.
    grads = random_grads(5, (3, 4), 4)
    g64 = [g.astype(np.float64) for g in grads]
    L = sum(g @ g.T for g in g64)
    R = sum(g.T @ g for g in g64)
    fisher = np.kron(L, R) / np.trace(L)
    newton = (psd_power(fisher, -0.5) @ _vec_row(g64[-1])).reshape(3, 4)
    update = _ups(scale_by_shampoo(idealized=True), grads)[-1]
    assert_close_per_step(update[None], newton[None], NEWTON)


@pytest.mark.parametrize("kwargs", [{}, {"idealized": True}, {"accumulator": "ema", "beta2": 0.9}])
def test_updates_are_invariant_to_rescaling_the_gradients(kwargs):
    # L^{-1/4} G R^{-1/4} and tr(L)^{1/2} L^{-1/2} G R^{-1/2} are homogeneous of degree 0 in G
    # (the printed tr(L)^{-1/2} would scale the step by c^{-2}).
    grads = random_grads(6, (4, 3), 4)
    tx = scale_by_shampoo(**kwargs, **EXACT)
    assert_close_per_step(_ups(tx, [1e3 * g for g in grads]), _ups(tx, grads), F32)


def test_stale_roots_are_recomputed_every_k_steps_from_the_start_step():
    grads = random_grads(7, (5, 3), 9)
    tx = scale_by_shampoo(precondition_every=3, start_preconditioning_step=2, **EXACT)
    oracle = shampoo(grads, every=3, start=2)
    assert_close_per_step(_ups(tx, grads), oracle, F32)
    fresh = shampoo(grads)
    assert np.linalg.norm(oracle[3] - fresh[3]) > 1e-3 * np.linalg.norm(fresh[3])  # t=4: stale


def test_graft_step_before_start_is_optax_adam_without_momentum():
    # 'adam' grafting is Adam's debiased second moment without momentum: optax.scale_by_adam(b1=0).
    grads = random_grads(8, (4, 5), 3)
    tx = scale_by_shampoo(
        graft="adam", graft_beta2=0.9, graft_eps=1e-3, start_preconditioning_step=4
    )
    adam = optax.scale_by_adam(b1=0.0, b2=0.9, eps=1e-3)
    np.testing.assert_allclose(_ups(tx, grads), _ups(adam, grads), rtol=1e-6, atol=1e-7)
    tx = scale_by_shampoo(graft="adagrad", graft_eps=0.0, start_preconditioning_step=4)
    adagrad = optax.adagrad(-1.0, initial_accumulator_value=0.0, eps=0.0)
    np.testing.assert_allclose(_ups(tx, grads), _ups(adagrad, grads), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("graft", ["sgd", "adam", "adagrad"])
def test_grafting_rescales_each_layer_to_the_graft_norm(graft):
    # A stacked leaf (3 layers of 5 × 4): layer i gets Shampoo's direction with ‖graft step_i‖_F.
    grads = random_grads(9, (3, 5, 4), 3)
    dims = DimensionNumbers((1,), (2,))
    tx = scale_by_shampoo(graft=graft, graft_eps=0.0, dimension_numbers=dims, **EXACT)
    ups = _ups(tx, grads)
    ref = {
        "sgd": optax.identity(),
        "adam": optax.scale_by_adam(b1=0.0, b2=0.999, eps=0.0),
        "adagrad": optax.scale_by_rss(initial_accumulator_value=0.0, eps=0.0),
    }[graft]
    graft_steps = _ups(ref, grads)
    for i in range(3):
        direction = np.stack(shampoo([g[i] for g in grads]))
        norms = np.linalg.norm(graft_steps[:, i], axis=(1, 2), keepdims=True)
        expected = direction * norms / np.linalg.norm(direction, axis=(1, 2), keepdims=True)
        assert_close_per_step(ups[:, i], expected, F32)


def test_failed_root_keeps_the_previous_one():
    # A root function that fails (NaN) once the statistic grows past a threshold: the step-1
    # roots stay in the state and keep preconditioning; no NaN reaches the update.
    grads = random_grads(10, (4, 3), 3)
    g64 = [g.astype(np.float64) for g in grads]
    threshold = 1.5 * np.linalg.norm(g64[0]) ** 2  # tr(L_1) < threshold < tr(L_2), tr(L_3)

    def fragile_root(a, p):
        w, v = jnp.linalg.eigh(a)
        keep = w > 1e-5 * w[..., -1:]
        wp = jnp.where(keep, jnp.where(keep, w, 1.0) ** (-1.0 / p), 0.0)
        root = (v * wp[..., None, :]) @ jnp.swapaxes(v, -1, -2)
        tr = jnp.trace(a, axis1=-2, axis2=-1)[:, None, None]
        return jnp.where(tr < threshold, root, jnp.nan)

    tx = scale_by_shampoo(inverse_root=fragile_root)
    _, ups = run(tx, _zeros((4, 3)), [jnp.asarray(g) for g in grads])
    assert np.isfinite(np.stack(ups)).all()
    left, right = psd_power(g64[0] @ g64[0].T, -0.25), psd_power(g64[0].T @ g64[0], -0.25)
    assert_close_per_step(np.stack(ups[1:]), [left @ g @ right for g in g64[1:]], F32)


def test_roots_of_an_all_zero_statistic_keep_the_identity():
    # Roots computed at t=1 from zero gradients are not accepted: the identity stays until the
    # next recomputation, so t=2 steps along G_2 instead of stalling at 0.
    g = random_grads(11, (4, 3), 1)[0]
    tx = scale_by_shampoo(precondition_every=2)
    ups = _ups(tx, [np.zeros((4, 3), np.float32), g])
    np.testing.assert_array_equal(ups[0], 0)
    np.testing.assert_allclose(ups[1], g, rtol=1e-6)


def test_blocks_are_preconditioned_independently():
    # 7 × 5 with block_size 4: rows in blocks [0:4], [4:7] (one padded row), columns [0:3], [3:5].
    grads = random_grads(12, (7, 5), 4)
    tx = scale_by_shampoo(block_size=4, **EXACT)
    ups = _ups(tx, grads)
    state = tx.init(_zeros((7, 5)))
    assert state.stats_left.shape == (4, 4, 4)
    assert state.stats_right.shape == (4, 3, 3)
    for rows in (slice(0, 4), slice(4, 7)):
        for cols in (slice(0, 3), slice(3, 5)):
            oracle = shampoo([g[rows, cols] for g in grads])
            assert_close_per_step(ups[:, rows, cols], oracle, F32)


@pytest.mark.parametrize("inverse_root", ["eigh", "newton"])
def test_default_ridge_reaches_rows_1000x_smaller(inverse_root):
    """Rows of ``G`` 1000x smaller than the others give ``L`` eigenvalues about 1e-6 of the
    largest, the size of the default ridge and below the eigh cutoff ``16 eps₃₂ max λ``: the ridge
    was cut (a pseudo-inverse root) and those rows of ``L^{-1/4} G R^{-1/4}`` had norm 2.6e-3
    instead of 0.885. Tolerance: the first-order budget ``κ eps₃₂ / p`` of each root, κ the
    condition number of the ridged statistic (8e5 here)."""
    g = random_grads(14, (16, 16), 1)[0]
    g[8:] *= np.float32(1e-3)
    g64 = g.astype(np.float64)
    budget, roots = 0.0, []
    for a in (g64 @ g64.T, g64.T @ g64):
        a = a + 1e-6 * np.linalg.norm(a) * np.eye(16)
        lam = np.linalg.eigvalsh(a)
        budget += lam.max() / lam.min() * EPS32 / 4
        roots.append(psd_power(a, -0.25))
    expected = roots[0] @ g64 @ roots[1]
    u = _ups(scale_by_shampoo(inverse_root=inverse_root), [g])[0]
    for rows in (slice(None), slice(8, None)):  # the whole direction and the small rows
        assert_close_per_step([u[rows]], [expected[rows]], budget)


def test_an_overflowing_gradient_is_reported_and_skipped():
    """A finite entry of 1e20 overflows ``G Gᵀ`` in float32: its block's update is NaN (it was a
    finite step through the old roots, and ``diagnostics`` reported all finite), ``L`` and ``R``
    keep none of it, the other block is exact, and the next step is the run's without it."""
    tx = scale_by_shampoo(block_size=4, **EXACT)  # 4 x 8: blocks [:, 0:4] and [:, 4:8]
    grads, states, ups = run_through_an_overflow(tx, random_grads(15, (4, 8), 3))
    assert np.isnan(ups[1][:, :4]).all()
    for field in ("stats_left", "stats_right"):
        np.testing.assert_array_equal(getattr(states[1], field)[0], getattr(states[0], field)[0])
    assert_close_per_step([u[:, 4:] for u in ups], shampoo([g[:, 4:] for g in grads]), F32)
    kept = shampoo([grads[0][:, :4], grads[2][:, :4]])
    assert_close_per_step([ups[2][:, :4]], kept[1:], F32)


def test_conv_kernel_with_dimension_numbers_is_one_matrix():
    grads = random_grads(13, (3, 3, 2, 4), 3)
    tx = scale_by_shampoo(dimension_numbers=CONV_HWIO, **EXACT)
    oracle = shampoo([g.reshape(18, 4) for g in grads])
    assert_close_per_step(_ups(tx, grads).reshape(3, 18, 4), oracle, F32)


def test_vectors_take_the_graft_step_or_raise():
    params = {"dense": {"kernel": _zeros((4, 3)), "bias": _zeros((3,))}}
    with pytest.raises(
        ValueError, match=r"'dense/bias' \(shape \(3,\), float32\).*vectors='graft'"
    ):
        scale_by_shampoo().init(params)
    with pytest.raises(ValueError, match="set graft too"):
        scale_by_shampoo(vectors="graft")
    tx = scale_by_shampoo(vectors="graft", graft="adagrad", graft_eps=0.0)
    g = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.asarray([1.0, -2.0, 0.5], jnp.float32)}}
    u, _ = tx.update(g, tx.init(params))
    np.testing.assert_allclose(u["dense"]["bias"], [1.0, -1.0, 1.0], rtol=1e-6)


def test_state_memory_from_eval_shape():
    params = {"w": _zeros((64, 32)), "b": _zeros((32,))}

    def floats(**kwargs):
        tx = scale_by_shampoo(vectors="graft", **kwargs)
        shapes = jax.eval_shape(tx.init, params)
        return sum(x.size for x in jax.tree.leaves(shapes) if jnp.issubdtype(x.dtype, jnp.floating))

    mn = 64 * 32 + 32
    assert floats(graft="sgd") == 2 * (64**2 + 32**2)
    assert floats(graft="adam") == 2 * (64**2 + 32**2) + mn
    # block_size 32: 2 row blocks of 32 x 1 column block of 32 -> 2 blocks with 32² + 32² each.
    assert floats(graft="adam", block_size=32) == 2 * 2 * (32**2 + 32**2) + mn


@pytest.mark.parametrize("graft", [None, "adam", "adagrad"])
def test_zero_gradients_give_zero_updates(graft):
    tx = scale_by_shampoo(graft=graft, accumulator="ema", beta2=0.9, graft_eps=0.0)
    w = _zeros((5, 3))
    state = tx.init(w)
    for _ in range(2):
        u, state = jax.jit(tx.update)(jnp.zeros_like(w), state)
        np.testing.assert_array_equal(np.asarray(u), 0)
    u, _ = jax.jit(tx.update)(jnp.ones_like(w), state)
    assert np.isfinite(np.asarray(u)).all()


def test_bfloat16_leaf_keeps_its_dtype():
    w = jnp.zeros((4, 6), jnp.bfloat16)
    tx = scale_by_shampoo(graft="adam")
    u, state = tx.update(jnp.ones_like(w), tx.init(w))
    assert u.dtype == jnp.bfloat16
    assert state.stats_left.dtype == jnp.float32


def test_bad_hyperparameters_and_leaves():
    for kwargs, msg in [
        ({"accumulator": "max"}, "accumulator must be one of"),
        ({"beta2": 1.0}, "beta2"),
        ({"exponent": -0.3}, "exponent must be -1/p"),
        ({"exponent": 0.25}, "exponent must be -1/p"),
        ({"idealized": True, "exponent": -0.25}, "idealized=True uses exponent -1/2"),
        ({"precondition_every": 0}, "precondition_every"),
        ({"start_preconditioning_step": 0}, "start_preconditioning_step"),
        ({"block_size": 0}, "block_size"),
        ({"graft": "lion"}, "graft must be one of"),
        ({"inverse_root": "svd"}, "inverse_root must be one of"),
        ({"ridge": -1.0}, "ridge"),
    ]:
        with pytest.raises(ValueError, match=msg):
            scale_by_shampoo(**kwargs)
    with pytest.raises(ValueError, match=r"'scan/w' \(shape \(2, 3, 4\), float32\) has rank 3"):
        scale_by_shampoo().init({"scan": {"w": _zeros((2, 3, 4))}})
    with pytest.raises(ValueError, match=r"'w' \(shape \(2, 3\), int32\)"):
        scale_by_shampoo().init({"w": jnp.zeros((2, 3), jnp.int32)})


@pytest.mark.slow
def test_trains_a_small_cnn_on_digits():
    dims = lambda path, leaf: CONV_HWIO if leaf.ndim == 4 else None  # noqa: E731
    tx = optax.chain(
        scale_by_shampoo(
            accumulator="ema",
            beta2=0.95,
            graft="adam",
            precondition_every=5,
            dimension_numbers=dims,
            vectors="graft",
        ),
        optax.scale_by_learning_rate(1e-2),
    )
    losses = train_digits_cnn(tx)
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.5 * losses[:3].mean()
