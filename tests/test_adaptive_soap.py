"""SOAP (Vyas et al. 2024) against a float64 NumPy port of the paper's algorithm, optax's Adam and
closed forms (anthology eq. 7, Prop. 2, 4–5)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adaptive_helpers import assert_close_per_step, random_grads, run
from adaptive_oracles import soap as soap_oracle

from normtx.adaptive import scale_by_soap, soap
from normtx.dims import CONV_HWIO, DimensionNumbers

from registry import FAST_COMPILE

STACK = DimensionNumbers((1,), (2,))  # (n_layers, d_in, d_out): each layer its own matrix
HYPER = {"b1": 0.9, "b2": 0.95, "eps": 1e-8}
# 'wide' has no R (10 > MAX_DIM: Adam along its fan-out side); 'b' is a vector (Adam).
SHAPES = {"w": (4, 4), "wide": (3, 10), "b": (5,), "stack": (2, 3, 3)}
MAX_DIM = 8


def _dims(path, leaf):
    return STACK if path == "stack" else None


def _tree_grads(seed, shapes, steps, dtype):
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()} for _ in range(steps)
    ]


def _ups(tx, grads, jit=True):
    """The updates, ``(steps, *shape)`` float64 arrays (a tree like each gradient)."""
    update = jax.jit(tx.update, compiler_options=FAST_COMPILE) if jit else tx.update
    state, ups = tx.init(jax.tree.map(jnp.asarray, grads[0])), []
    for g in grads:
        u, state = update(jax.tree.map(jnp.asarray, g), state)
        ups.append(jax.tree.map(lambda x: np.asarray(x, np.float64), u))
    return jax.tree.map(lambda *xs: np.stack(xs), *ups)


def _oracle(grads, spectra, **kw):
    """``soap_oracle`` leaf by leaf (each layer of 'stack' on its own); ``(steps, *shape)``."""
    out = {}
    for k, shape in SHAPES.items():
        gs = [g[k] for g in grads]
        if len(shape) == 1:
            out[k] = soap_oracle([g[None] for g in gs], left=False, right=False, **kw)
        elif len(shape) == 3:
            layers = [soap_oracle([g[i] for g in gs], spectra=spectra, **kw) for i in range(2)]
            out[k] = [np.stack(per_step) for per_step in zip(*layers)]
        else:
            right = shape[1] <= MAX_DIM
            out[k] = soap_oracle(gs, right=right, spectra=spectra, **kw)
        out[k] = np.stack(out[k]).reshape(len(gs), *shape)
    return out


def _kappa(spectra):
    """``max k λ_max / min(λ_min, smallest eigengap)`` over the k × k statistics a basis was
    computed from: a backward-stable eigh or QR moves the matrix by ``k eps λ_max``, which moves
    eigenvectors by that over the gap, and the power step's ``qr(L Q)`` by that over ``λ_min``."""
    return max(len(w) * w[-1] / min(w[0], np.min(np.diff(w))) for w in spectra)


@pytest.mark.parametrize(
    ("dtype", "shampoo_beta"), [(np.float64, 0.9), (np.float32, None)], ids=["f64", "f32"]
)
def test_ten_steps_match_the_papers_algorithm(dtype, shampoo_beta):
    # A matrix, a matrix with one side above max_precond_dim, a vector and a stack of two layers,
    # refreshed every 3 steps (3 refreshes after the first eigh). The float64 run is the paper's
    # algorithm to rounding; either dtype resolves the bases to eps · κ (``_kappa``).
    grads = _tree_grads(0, SHAPES, 10, dtype)
    tx = scale_by_soap(
        **HYPER,
        shampoo_beta=shampoo_beta,
        precondition_frequency=3,
        max_precond_dim=MAX_DIM,
        dimension_numbers=_dims,
    )
    spectra = []
    want = _oracle(grads, spectra, **HYPER, shampoo_beta=shampoo_beta, frequency=3)
    tol = float(np.finfo(dtype).eps) * _kappa(spectra)
    got = _ups(tx, grads)
    for k in SHAPES:
        assert_close_per_step(got[k], want[k], tol)
        np.testing.assert_array_equal(got[k][0], 0.0)  # the first update only fills L and R


def _sign_like(x, eps):
    return x / (np.abs(x) + eps)


@pytest.mark.parametrize(("b1", "b2"), [(0.0, 0.0), (0.9, 0.95)])
def test_first_preconditioned_step_is_sign_descent_in_the_first_gradients_singular_basis(b1, b2):
    # The first update computes Q_L, Q_R = eigenvectors of G₁G₁ᵀ, G₁ᵀG₁: the singular vectors of
    # G₁. The second is Adam's first step, where the bias corrections give m̂ = G', v̂ = G'² for
    # any β₁, β₂: Q_L φ(Q_Lᵀ G₂ Q_R) Q_Rᵀ with φ(x) = x/(|x|+ε) → sign(x) (Adam without EMA is
    # sign descent, anthology eq. 7, Prop. 2), in the rotated coordinates. (3, 10): R is above
    # max_precond_dim, Q_R = I. Float64 SVD oracle; eigenvector signs cancel in Q φ(Qᵀ G Q) Qᵀ.
    eps, shapes = 1e-8, {"a": (4, 4), "b": (5, 5), "c": (3, 10)}
    g1, g2 = _tree_grads(1, shapes, 2, np.float64)
    tx = scale_by_soap(b1=b1, b2=b2, eps=eps, max_precond_dim=MAX_DIM)
    got = _ups(tx, [g1, g2])
    for k, (_, n) in shapes.items():
        u, sv, vt = np.linalg.svd(g1[k])
        q_right = vt.T if n <= MAX_DIM else np.eye(n)
        want = u @ _sign_like(u.T @ g2[k] @ q_right, eps) @ q_right.T
        tol = float(np.finfo(np.float64).eps) * _kappa([np.sort(sv**2)])
        assert_close_per_step(got[k][1:], want[None], tol)


def test_without_ema_and_a_fixed_singular_basis_soap_is_spectral_descent():
    # G_t = U diag(s_t) Vᵀ: L and R keep the eigenvectors U, V, a fixed point of the refresh
    # (qr(L U) = U up to signs), so with β₁ = β₂ = 0 and a refresh every step the rotated
    # gradient is diag(s_t) and the step is U diag(s/(s+ε)) Vᵀ → U Vᵀ: Shampoo without
    # accumulation, steepest descent under the spectral norm (anthology Prop. 4–5). Rounding puts
    # ~eps64·s_max off the diagonal of Qᵀ G Q, which φ divides by ε: tol = 16 n eps64 s_max / ε.
    n, eps, steps = 4, 1e-6, 6
    rng = np.random.default_rng(2)
    u, v = (np.linalg.qr(rng.standard_normal((n, n)))[0] for _ in range(2))
    s = rng.uniform(1, 2, (steps, n))
    grads = [u @ np.diag(st) @ v.T for st in s]
    tx = scale_by_soap(b1=0.0, b2=0.0, eps=eps, precondition_frequency=1)
    want = [np.zeros((n, n))] + [u @ np.diag(st / (st + eps)) @ v.T for st in s[1:]]
    tol = 16 * n * float(np.finfo(np.float64).eps) * s.max() / eps
    assert_close_per_step(_ups(tx, grads), want, tol)
    polar = u @ v.T
    assert np.linalg.norm(want[-1] - polar) <= eps * np.linalg.norm(polar)


def test_bases_stay_orthogonal_after_refreshes():
    # 6 refreshes (every 2 of 13 steps) by power iteration + QR, float32, including a
    # rank-deficient statistic (the 8 × 3 kernel's L) and a stack: Householder QR is orthogonal
    # to a small multiple of k · eps32 (k the side).
    shapes = {"w": (6, 6), "tall": (8, 3), "stack": (2, 4, 5)}
    grads = _tree_grads(3, shapes, 13, np.float32)
    tx = scale_by_soap(precondition_frequency=2, dimension_numbers=_dims)
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    update = jax.jit(tx.update, compiler_options=FAST_COMPILE)
    for g in grads:
        _, state = update(jax.tree.map(jnp.asarray, g), state)
    assert int(state.count) == 13
    for q in jax.tree.leaves((state.basis_left, state.basis_right)):
        q = np.asarray(q, np.float64)
        k = q.shape[-1]
        err = np.abs(np.swapaxes(q, -1, -2) @ q - np.eye(k)).max()
        assert err <= 4 * k * np.finfo(np.float32).eps, (q.shape, err)


def _adam_after_first(grads, b1, b2, eps):
    """0 and then ``optax.scale_by_adam`` on ``grads[1:]`` (SOAP's first update takes no step)."""
    ups = run(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), grads[0], grads[1:])[1]
    return np.stack([np.zeros_like(np.asarray(grads[0], np.float64)), *ups])


@pytest.mark.parametrize(
    ("shapes", "kwargs", "adam"),
    [
        ({"b": (7,), "s": (), "w": (3, 4)}, {}, ("b", "s")),  # vectors beside a matrix
        ({"w": (10, 12)}, {"max_precond_dim": MAX_DIM}, ("w",)),  # both sides too large
        ({"k": (3, 3, 2, 4)}, {"max_precond_dim": 3, "dimension_numbers": CONV_HWIO}, ("k",)),
    ],
    ids=["vectors", "both_sides_too_large", "conv_both_sides_too_large"],
)
def test_leaves_without_a_basis_are_optax_adam(shapes, kwargs, adam):
    # Adam's count starts at SOAP's second update, for every leaf.
    grads = _tree_grads(4, shapes, 6, np.float32)
    tx = scale_by_soap(**HYPER, **kwargs)
    got = _ups(tx, grads)
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    for k in adam:
        want = _adam_after_first([jnp.asarray(g[k]) for g in grads], **HYPER)
        np.testing.assert_allclose(got[k], want, rtol=2e-6, atol=1e-7)
        for field in ("stats_left", "stats_right", "basis_left", "basis_right"):
            assert isinstance(getattr(state, field)[k], optax.MaskedNode), (k, field)


def test_conv_kernel_with_dimension_numbers_is_one_matrix():
    # HWIO (1, 2, 2, 4) with CONV_HWIO is the (H·W·I, O) = (4, 4) matrix: the oracle on it.
    grads = random_grads(5, (1, 2, 2, 4), 5)
    tx = scale_by_soap(**HYPER, precondition_frequency=2, dimension_numbers=CONV_HWIO)
    spectra = []
    want = soap_oracle([g.reshape(4, 4) for g in grads], **HYPER, frequency=2, spectra=spectra)
    got = _ups(tx, [{"k": g} for g in grads])["k"]
    tol = float(np.finfo(np.float32).eps) * _kappa(spectra)
    assert_close_per_step(got.reshape(5, 4, 4), want, tol)


@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_zero_gradients_give_zero_updates_and_a_finite_state(eps):
    shapes = {"w": (4, 4), "wide": (3, 10), "b": (5,)}
    zeros = [{k: np.zeros(s, np.float32) for k, s in shapes.items()} for _ in range(5)]
    tx = scale_by_soap(eps=eps, precondition_frequency=2, max_precond_dim=MAX_DIM)
    state = tx.init(jax.tree.map(jnp.asarray, zeros[0]))
    update = jax.jit(tx.update, compiler_options=FAST_COMPILE)
    for g in zeros:
        u, state = update(jax.tree.map(jnp.asarray, g), state)
        chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
    chex.assert_tree_all_finite(state)


def test_jit_equals_eager():
    # A two-sided, a one-sided and a vector leaf through the first eigh and one refresh.
    shapes = {"w": (4, 4), "wide": (3, 10), "b": (5,)}
    grads = _tree_grads(6, shapes, 3, np.float32)
    tx = scale_by_soap(**HYPER, precondition_frequency=2, max_precond_dim=MAX_DIM)
    spectra = []
    soap_oracle([g["w"] for g in grads], **HYPER, frequency=2, spectra=spectra)
    soap_oracle([g["wide"] for g in grads], **HYPER, frequency=2, right=False, spectra=spectra)
    tol = float(np.finfo(np.float32).eps) * _kappa(spectra)
    eager, jitted = _ups(tx, grads, jit=False), _ups(tx, grads)
    for k in shapes:
        assert_close_per_step(eager[k], jitted[k], tol)


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e20])
def test_a_statistic_that_would_not_be_finite_is_kept_and_the_step_reported(value):
    # L and R skip a NaN/Inf gradient, and a finite one whose G Gᵀ overflows float32 (kept, it
    # would freeze the basis for ever); that matrix's update is NaN, at the first step (its
    # direction 0 · G) as at a later one. The basis is not refreshed at that step (f = 10).
    params = {"w": jnp.zeros((4, 4), jnp.float32)}
    tx = scale_by_soap(precondition_frequency=10)
    update = jax.jit(tx.update, compiler_options=FAST_COMPILE)
    state = tx.init(params)
    bad = {"w": jnp.full((4, 4), value, jnp.float32)}
    u, after = update(bad, state)
    assert np.isnan(np.asarray(u["w"])).all()
    chex.assert_trees_all_equal(after.stats_left, state.stats_left)  # still zero
    for g in _tree_grads(7, {"w": (4, 4)}, 3, np.float32):
        _, state = update(jax.tree.map(jnp.asarray, g), state)
    u, after = update({"w": bad["w"].at[1:].set(1.0)}, state)
    assert np.isnan(np.asarray(u["w"])).all()
    for field in ("stats_left", "stats_right", "basis_left", "basis_right"):
        chex.assert_trees_all_equal(getattr(after, field), getattr(state, field))


def test_soap_chain_is_the_direction_plus_decoupled_weight_decay_times_the_learning_rate():
    # -η (D_t + λ w_t) with D_t of scale_by_soap, λ only on the masked leaves (AdamW's form).
    lr, lam = 0.1, 0.01
    grads = _tree_grads(8, {"w": (4, 4), "b": (5,)}, 4, np.float64)
    mask = {"w": True, "b": False}
    w0 = jax.tree.map(lambda x: jnp.asarray(np.ones_like(x)), grads[0])
    directions = _ups(scale_by_soap(**HYPER, precondition_frequency=2), grads)
    ws, ups = run(
        soap(lr, **HYPER, weight_decay=lam, mask=mask, precondition_frequency=2),
        w0,
        [jax.tree.map(jnp.asarray, g) for g in grads],
    )
    for t, u in enumerate(ups):
        for k in mask:
            want = -lr * (directions[k][t] + (lam * ws[t][k] if mask[k] else 0.0))
            np.testing.assert_allclose(u[k], want, rtol=1e-12, atol=1e-15)


def test_bfloat16_leaves_keep_their_dtype_and_float32_state():
    params = {"w": jnp.ones((4, 4), jnp.bfloat16), "b": jnp.ones(3, jnp.bfloat16)}
    tx = scale_by_soap()
    u, state = jax.eval_shape(tx.update, params, jax.eval_shape(tx.init, params))
    assert {x.dtype for x in jax.tree.leaves(u)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state)[1:]} == {jnp.dtype(jnp.float32)}


def test_bad_hyperparameters_fail_at_construction():
    with pytest.raises(ValueError, match=r"scale_by_soap: b1 must be in \[0, 1\), got 1\.0"):
        scale_by_soap(b1=1.0)
    with pytest.raises(ValueError, match=r"shampoo_beta must be in \[0, 1\), got -0\.1"):
        scale_by_soap(shampoo_beta=-0.1)
    with pytest.raises(ValueError, match=r"precondition_frequency must be an int >= 1, got 0"):
        scale_by_soap(precondition_frequency=0)
    with pytest.raises(ValueError, match=r"max_precond_dim must be an int >= 0, got -1"):
        scale_by_soap(max_precond_dim=-1)
    with pytest.raises(ValueError, match=r"soap: weight_decay must be >= 0, got -0\.1"):
        soap(1e-3, weight_decay=-0.1)
