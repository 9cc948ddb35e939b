"""Full-matrix AdaGrad (notes §3.2): NumPy oracle, the diagonal case, blocking, regret (18)/(36)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adaptive_helpers import assert_close_per_step, random_grads, run, run_through_an_overflow
from adaptive_oracles import full_adagrad, psd_power

from normtx.adaptive import online_regret, scale_by_full_adagrad

EXACT = {"ridge": 0.0, "inverse_root": "eigh"}  # the pseudo-inverse root: the notes' O_t^{-1/2}
F32 = 1e-5  # float32 matrix functions on well-conditioned inputs (a few ulps times the condition)
NEWTON = 1e-4  # inverse_pth_root's Newton tolerance: relative error about tol/p = 1.2e-4/p


def _zeros(shape):
    return jnp.zeros(shape, jnp.float32)


def _ups(tx, grads, jit=True):
    return np.stack(run(tx, _zeros(grads[0].shape), [jnp.asarray(g) for g in grads], jit=jit)[1])


@pytest.mark.parametrize(
    ("kwargs", "tol"),
    [
        (EXACT, F32),  # rank-deficient O_t (t < 12): pseudo-inverse root on its range
        ({"eps": 0.1, **EXACT}, F32),
        ({"eps": 0.1}, NEWTON),  # Newton iteration on a well-conditioned O_t + εI
    ],
)
def test_section_3_2_1_matches_numpy_for_5_steps(kwargs, tol):
    grads = random_grads(0, (3, 4), 5)
    oracle = full_adagrad(grads, eps=kwargs.get("eps", 0.0))
    assert_close_per_step(_ups(scale_by_full_adagrad(**kwargs), grads), oracle, tol)


def test_default_settings_match_numpy_with_the_same_ridge():
    # Default: Newton, relative ridge 1e-6. Once O_t has full rank (t >= 6) the update is accurate
    # to float32; before, g_t lies in range(O_t) but float32 eigenvectors leak about eps32 of it
    # into the null space, where the ridge amplifies it by ridge^{-1/2}: an error floor of order
    # eps32 · ridge^{-1/2} = 1.2e-4, documented in the module.
    grads = random_grads(1, (6,), 12)
    ups = _ups(scale_by_full_adagrad(), grads)
    oracle = np.stack(full_adagrad(grads, eps=0.0, ridge=1e-6))
    assert_close_per_step(ups[6:], oracle[6:], NEWTON)
    leak_floor = 4 * np.finfo(np.float32).eps / np.sqrt(1e-6)
    assert_close_per_step(ups[:6], oracle[:6], leak_floor)


def test_jit_equals_eager():
    grads = random_grads(2, (5,), 4)
    tx = scale_by_full_adagrad(eps=0.01)
    assert_close_per_step(_ups(tx, grads, jit=False), _ups(tx, grads), F32)


def test_diagonal_statistics_reduce_to_optax_adagrad():
    # Lemma C.4's equality case: gradients on one coordinate at a time keep O_t diagonal, and
    # full AdaGrad is diagonal AdaGrad (optax.adagrad with the same eps inside the root).
    rng = np.random.default_rng(3)
    grads = []
    for _ in range(8):
        g = np.zeros(5, np.float32)
        g[rng.integers(5)] = rng.standard_normal()
        grads.append(g)
    ours = _ups(scale_by_full_adagrad(eps=1e-3, **EXACT), grads)
    tx = optax.adagrad(1.0, initial_accumulator_value=0.0, eps=1e-3)
    theirs = -np.stack(run(tx, _zeros((5,)), [jnp.asarray(g) for g in grads])[1])
    assert_close_per_step(ours, theirs, F32)


def test_blocks_precondition_contiguous_pieces_independently():
    grads = random_grads(4, (2, 5), 4)  # 10 entries, block_size 4 -> 3 blocks of 4 (2 padded)
    tx = scale_by_full_adagrad(block_size=4, eps=0.05, **EXACT)
    ups = _ups(tx, grads).reshape(4, 10)
    flat = [g.reshape(-1) for g in grads]
    for lo, hi in [(0, 4), (4, 8), (8, 10)]:
        oracle = full_adagrad([f[lo:hi] for f in flat], eps=0.05)
        assert_close_per_step(ups[:, lo:hi], oracle, F32)
    assert tx.init(_zeros((2, 5))).stats.shape == (3, 4, 4)


def test_regret_bound_18_with_a_t_the_root_of_o_t():
    # (18) with A_t = (O_t + εI)^{1/2} ⪰ A_{t-1} and a fixed η, then Fact 2.1 on the second term:
    #   Regret_T(u) <= D² tr(A_T)/(2η) + (η/2) Σ_t g_tᵀ A_t^{-1} g_t
    #              <= D² tr(A_T)/(2η) + η tr(O_T^{1/2}),      D = max_t ‖w_t - u‖₂.
    d, T, eps = 4, 300, 1e-4
    rng = np.random.default_rng(5)
    mix = rng.standard_normal((d, d))
    grads = rng.uniform(-1, 1, (T, d)) @ mix + 0.3 * rng.standard_normal(d)
    u = -mix.sum(axis=0) / np.linalg.norm(mix.sum(axis=0))
    for eta in (0.1, 1.0):
        tx = optax.chain(scale_by_full_adagrad(eps=eps, **EXACT), optax.scale_by_learning_rate(eta))
        res = online_regret(tx, _zeros((d,)), jnp.asarray(grads, jnp.float32), jnp.asarray(u))
        ws = np.asarray(res.iterates, np.float64)
        regret = float(np.sum(grads * ws) - np.sum(grads @ u))
        D2 = float(np.max(np.sum((ws - u) ** 2, axis=1)))
        o_T = grads.T @ grads
        tr_A = np.trace(psd_power(o_T + eps * np.eye(d), 0.5))
        second, o = 0.0, np.eye(d) * eps
        for g in grads:
            o = o + np.outer(g, g)
            second += g @ psd_power(o, -0.5) @ g
        bound_18 = D2 * tr_A / (2 * eta) + eta / 2 * second
        assert regret <= bound_18 * (1 + 1e-4)
        assert bound_18 <= D2 * tr_A / (2 * eta) + eta * np.trace(psd_power(o_T, 0.5))


def test_zero_gradients_give_zero_updates():
    tx = scale_by_full_adagrad()
    w = {"a": _zeros((3, 2)), "b": _zeros(())}
    u, state = jax.jit(tx.update)(w, tx.init(w))
    for leaf in jax.tree.leaves(u):
        np.testing.assert_array_equal(np.asarray(leaf), 0)
    g = {"a": jnp.ones((3, 2)), "b": jnp.asarray(2.0)}
    u, _ = jax.jit(tx.update)(g, state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(u))


@pytest.mark.parametrize(("inverse_root", "tol"), [("eigh", F32), ("newton", NEWTON)])
def test_default_ridge_reaches_a_weakly_seen_coordinate(inverse_root, tol):
    """``g₁ = e₀``, ``g₂ = w e₁`` (``w = 1e-3``) on a leaf of 64 entries: ``O₂ = diag(1, w², 0, …)``
    and ``ε = 1e-6 ‖O₂‖_F``, so coordinate 1 moves by ``w / √(w² + ε) = 0.707`` (eq. 33 with the
    ridge). With the ridge below the eigh cutoff ``64 eps₃₂ max λ`` the update there was 0.
    Diagonal statistics: float32 roots are exact up to rounding (Newton: its tolerance)."""
    w = np.float32(1e-3)
    grads = [np.zeros((8, 8), np.float32) for _ in range(2)]
    grads[0][0, 0], grads[1][0, 1] = 1.0, w
    ups = _ups(scale_by_full_adagrad(inverse_root=inverse_root), grads)
    assert_close_per_step(ups, full_adagrad(grads, eps=0.0, ridge=1e-6), tol)
    w = float(w)
    np.testing.assert_allclose(ups[1][0, 1], w / np.sqrt(w**2 + 1e-6 * np.hypot(1, w**2)), rtol=tol)


def test_an_overflowing_gradient_is_reported_and_skipped():
    """A finite entry of 1e20 overflows ``g gᵀ`` in float32: its block's update is NaN (it was a
    finite step of about 1e20 through the old statistic, and ``diagnostics`` reported all finite),
    ``O_t`` keeps none of it, the other block is exact, and the next step is the run's without it."""
    tx = scale_by_full_adagrad(eps=0.1, block_size=8, **EXACT)  # blocks [0:8] and [8:16]
    grads, states, ups = run_through_an_overflow(tx, random_grads(5, (4, 4), 3))
    flat, ups = [g.reshape(-1) for g in grads], [u.reshape(-1) for u in ups]
    assert np.isnan(ups[1][:8]).all()
    np.testing.assert_array_equal(states[1].stats[0], states[0].stats[0])
    kept = full_adagrad([g[8:] for g in flat], eps=0.1)
    assert_close_per_step([u[8:] for u in ups], kept, F32)
    assert_close_per_step([ups[2][:8]], full_adagrad([flat[0][:8], flat[2][:8]], eps=0.1)[1:], F32)


def test_state_memory_from_eval_shape():
    params = {"w": _zeros((20, 10)), "b": _zeros((10,))}
    floats = lambda tx: sum(x.size for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))  # noqa: E731
    assert floats(scale_by_full_adagrad(max_size=200)) == 200**2 + 10**2 + 1
    # block_size 64: 200 entries -> 4 blocks of 50; 10 entries -> one block of 10.
    assert floats(scale_by_full_adagrad(block_size=64)) == 4 * 50**2 + 10**2 + 1


def test_large_leaf_is_refused_with_a_hint():
    tx = scale_by_full_adagrad(max_size=1000)
    with pytest.raises(
        ValueError,
        match=r"'dense/kernel' \(shape \(64, 32\), float32\) has 2048 entries.*O\(n²\).*block_size",
    ):
        tx.init({"dense": {"kernel": _zeros((64, 32))}})
    tx = scale_by_full_adagrad(max_size=1000, block_size=512)
    assert tx.init({"dense": {"kernel": _zeros((64, 32))}}).stats["dense"]["kernel"].shape == (
        4,
        512,
        512,
    )


def test_bad_hyperparameters_and_leaves():
    for kwargs, msg in [
        ({"eps": -1.0}, "eps must be >= 0"),
        ({"block_size": 0}, "block_size must be an int >= 1 or None"),
        ({"block_size": 10, "max_size": 5}, "exceeds max_size"),
        ({"inverse_root": "svd"}, "inverse_root must be one of"),
        ({"ridge": -1.0}, "ridge must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            scale_by_full_adagrad(**kwargs)
    with pytest.raises(ValueError, match=r"'step' \(shape \(\), int32\)"):
        scale_by_full_adagrad().init({"step": jnp.zeros((), jnp.int32)})
