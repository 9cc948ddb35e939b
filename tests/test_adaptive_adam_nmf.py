"""AdamNMF (notes Appendix K.2, eq. 95–96, DESIGN §6 shape erratum) against NumPy and optax."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from adaptive_helpers import random_grads, run, train_digits_cnn
from adaptive_oracles import (
    adam_nmf,
    em_round_sequential,
    em_round_simultaneous,
    idiv,
    nmf_rank1_closed_form,
)

from normtx.adaptive import em_round, scale_by_adam_nmf
from normtx.dims import CONV_HWIO, DimensionNumbers

EPS_SQ = 1e-30
KEY = jax.random.key(0)


def _zeros(shape):
    return jnp.zeros(shape, jnp.float32)


def _updates(tx, grads, params=None):
    params = jnp.zeros_like(grads[0]) if params is None else params
    _, ups = run(tx, params, grads)
    return ups


def _factors(state, leaf=None):
    a, b = (state.a, state.b) if leaf is None else (state.a[leaf], state.b[leaf])
    return np.asarray(a, np.float64), np.asarray(b, np.float64)


@pytest.mark.parametrize(
    ("rank", "em_steps", "b1", "b2"),
    [(2, 1, None, 0.0), (3, 3, None, 0.0), (2, 1, 0.9, 0.0), (2, 2, None, 0.9), (1, 1, 0.8, 0.5)],
)
def test_k2_matches_numpy_for_5_steps(rank, em_steps, b1, b2):
    grads = random_grads(0, (6, 4), 5)
    tx = scale_by_adam_nmf(rank=rank, key=KEY, em_steps=em_steps, b1=b1, b2=b2, eps_sq=EPS_SQ)
    a0, b0 = _factors(tx.init(_zeros((6, 4))))
    oracle_ups, _ = adam_nmf(grads, a0[0], b0[0], eps_sq=EPS_SQ, em_steps=em_steps, b1=b1, b2=b2)
    ups = _updates(tx, [jnp.asarray(g) for g in grads])
    np.testing.assert_allclose(np.stack(ups), np.stack(oracle_ups), rtol=2e-5, atol=1e-6)


def test_jit_equals_eager():
    grads = [jnp.asarray(g) for g in random_grads(1, (5, 7), 4)]
    tx = scale_by_adam_nmf(rank=2, key=KEY, b1=0.9, b2=0.9)
    w0 = _zeros((5, 7))
    eager, jitted = run(tx, w0, grads, jit=False)[1], run(tx, w0, grads)[1]
    np.testing.assert_allclose(np.stack(eager), np.stack(jitted), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("seed", "eps"), [(0, 1e-3), (1, 1.0), (2, 1e-8)])
def test_rank1_one_round_is_the_closed_form_from_any_init(seed, eps):
    # §5.1 / Appendix K: the rank-1 solution is C 1 1ᵀ C / 1ᵀ C 1; one sequential round reaches it.
    g = random_grads(seed + 10, (7, 5), 1)[0]
    tx = scale_by_adam_nmf(rank=1, key=jax.random.key(seed), eps=eps, eps_sq=EPS_SQ)
    u, state = tx.update(jnp.asarray(g), tx.init(_zeros((7, 5))))
    a, b = _factors(state)
    closed = nmf_rank1_closed_form(g.astype(np.float64) ** 2 + EPS_SQ)
    np.testing.assert_allclose(a[0] @ b[0], closed, rtol=2e-6)
    np.testing.assert_allclose(np.asarray(u), g / np.sqrt(closed), rtol=2e-6)


def _debiased_decay(count, beta):
    t = count + 1
    return beta * (1 - beta ** (t - 1)) / (1 - beta**t)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
@pytest.mark.parametrize("b2", [0.0, 0.9])
def test_rank1_is_optax_factored_rms(shape, b2):
    # Rank 1 depends on the EM target only through its row and column sums, which the
    # factorisation preserves: the factored EMA is Adafactor's, step for step.
    grads = [jnp.asarray(g) for g in random_grads(2, shape, 5)]
    ours = scale_by_adam_nmf(rank=1, key=KEY, b2=b2, eps_sq=EPS_SQ)
    factored = optax.scale_by_factored_rms(
        min_dim_size_to_factor=1,
        epsilon=EPS_SQ,
        decay_rate=b2,
        decay_rate_fn=(lambda c, r: 0.0) if b2 == 0 else _debiased_decay,
    )
    w0 = jnp.zeros(shape)
    np.testing.assert_allclose(
        np.stack(run(ours, w0, grads)[1]), np.stack(run(factored, w0, grads)[1]), rtol=1e-5
    )


def test_em_rounds_never_increase_the_i_divergence():
    # Each block of the sequential round maximises the EM surrogate (footnote 11): IDiv(C, AB)
    # is nonincreasing in the number of rounds, and falls well below its value after one round.
    g = random_grads(3, (8, 6), 1)[0]
    c = g.astype(np.float64) ** 2 + EPS_SQ
    state = scale_by_adam_nmf(rank=3, key=KEY).init(_zeros((8, 6)))

    @jax.jit
    def rounds(c, a, b):
        def body(ab, _):
            ab = em_round(c, *ab)
            return ab, jnp.matmul(*ab, precision=jax.lax.Precision.HIGHEST)

        return jax.lax.scan(body, (a, b), length=8)[1]

    products = np.asarray(rounds(jnp.asarray(c, jnp.float32), state.a, state.b), np.float64)
    values = [idiv(c, p[0]) for p in products]
    assert all(later <= earlier * (1 + 1e-5) for earlier, later in itertools.pairwise(values))
    assert values[-1] < 0.9 * values[0]
    # and the transform's em_steps=k is k of these rounds
    tx = scale_by_adam_nmf(rank=3, key=KEY, em_steps=3, eps_sq=EPS_SQ)
    _, state = jax.jit(tx.update)(jnp.asarray(g), tx.init(_zeros((8, 6))))
    a, b = _factors(state)
    np.testing.assert_allclose(a[0] @ b[0], products[2, 0], rtol=1e-5)


def test_the_literal_simultaneous_round_oscillates_in_scale():
    # Why the sequential round (module docstring): the K.2 pseudocode read literally normalises B
    # by the *old* A. At rank 1 its product is (C1)(1ᵀC)/(ΣA ΣB), and p = ΣA ΣB obeys
    # p_t = S²/p_{t-1}: the scale alternates between two wrong values for ever.
    rng = np.random.default_rng(4)
    c = rng.standard_normal((5, 4)) ** 2
    closed = nmf_rank1_closed_form(c)
    a, b = rng.uniform(0, 1e-3, (5, 1)), rng.uniform(0, 1e-3, (1, 4))
    sa, sb = a, b
    ratios = []
    for _ in range(6):
        a, b = em_round_simultaneous(c, a, b)
        sa, sb = em_round_sequential(c, sa, sb)
        ratios.append((a @ b).sum() / c.sum())
        np.testing.assert_allclose(sa @ sb, closed, rtol=1e-12)
    np.testing.assert_allclose(ratios[0::2], ratios[0], rtol=1e-9)
    np.testing.assert_allclose(ratios[1::2], ratios[1], rtol=1e-9)
    np.testing.assert_allclose(ratios[0] * ratios[1], 1.0, rtol=1e-9)
    assert ratios[0] > 1e3


def test_em_round_is_gauge_invariant_and_rebalances():
    # Rescaling the components of (A, B) changes neither the next product nor the next state.
    rng = np.random.default_rng(5)
    c = jnp.asarray(rng.standard_normal((6, 5)) ** 2, jnp.float32)
    a = jnp.asarray(rng.uniform(0.1, 1, (6, 3)), jnp.float32)
    b = jnp.asarray(rng.uniform(0.1, 1, (3, 5)), jnp.float32)
    d = jnp.asarray([1e-3, 1.0, 1e3], jnp.float32)
    a1, b1 = em_round(c, a, b)
    a2, b2 = em_round(c, a * d, b / d[:, None])
    np.testing.assert_allclose(a1 @ b1, a2 @ b2, rtol=1e-5)
    np.testing.assert_allclose(a1, a2, rtol=1e-5)
    np.testing.assert_allclose(a1.sum(axis=0), b1.sum(axis=1), rtol=1e-5)


def test_conv_and_stacked_leaves_get_factors_per_matrix():
    params = {"conv": _zeros((3, 3, 2, 4)), "stack": _zeros((3, 5, 4))}
    dims = {"conv": CONV_HWIO, "stack": DimensionNumbers((1,), (2,))}
    tx = scale_by_adam_nmf(rank=2, key=KEY, dimension_numbers=dims, eps_sq=EPS_SQ)
    state = tx.init(params)
    assert state.a["conv"].shape == (1, 18, 2)
    assert state.b["conv"].shape == (1, 2, 4)
    assert state.a["stack"].shape == (3, 5, 2)
    grads = {k: jnp.asarray(random_grads(6, v.shape, 1)[0]) for k, v in params.items()}
    u, _ = jax.jit(tx.update)(grads, state)
    a0, b0 = _factors(state, "stack")
    for i in range(3):
        oracle, _ = adam_nmf([grads["stack"][i]], a0[i], b0[i], eps_sq=EPS_SQ)
        np.testing.assert_allclose(u["stack"][i], oracle[0], rtol=2e-5)
    a0, b0 = _factors(state, "conv")
    oracle, _ = adam_nmf([grads["conv"].reshape(18, 4)], a0[0], b0[0], eps_sq=EPS_SQ)
    np.testing.assert_allclose(u["conv"], oracle[0].reshape(3, 3, 2, 4), rtol=2e-5)


def test_vectors_are_an_error_by_default_and_exact_under_diagonal():
    params = {"dense": {"kernel": _zeros((4, 3)), "bias": _zeros((3,))}}
    with pytest.raises(
        ValueError, match=r"'dense/bias' \(shape \(3,\), float32\).*vectors='diagonal'"
    ):
        scale_by_adam_nmf(rank=1, key=KEY).init(params)
    b2 = 0.9
    tx = scale_by_adam_nmf(rank=1, key=KEY, vectors="diagonal", b2=b2, eps_sq=EPS_SQ)
    gs = random_grads(7, (3,), 3, np.float64)
    v, state = 0.0, tx.init(params)
    for t, g in enumerate(gs, start=1):
        grads = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.asarray(g, jnp.float32)}}
        u, state = tx.update(grads, state)
        v = b2 * v + (1 - b2) * (g**2 + EPS_SQ)
        np.testing.assert_allclose(u["dense"]["bias"], g / np.sqrt(v / (1 - b2**t)), rtol=1e-5)


def test_state_memory_from_eval_shape():
    # (m + n) r floats per matrix, n per vector under 'diagonal', + the full first moment with b1.
    params = {
        "conv": _zeros((3, 3, 8, 16)),
        "stack": _zeros((4, 32, 16)),
        "dense": _zeros((64, 10)),
        "bias": _zeros((10,)),
    }
    dims = {"conv": CONV_HWIO, "stack": DimensionNumbers((1,), (2,)), "dense": None, "bias": None}
    r = 3
    n_params = sum(x.size for x in params.values())
    expected = (72 + 16) * r + 4 * (32 + 16) * r + (64 + 10) * r + 10
    for b1, extra in [(None, 0), (0.9, n_params)]:
        tx = scale_by_adam_nmf(rank=r, key=KEY, b1=b1, dimension_numbers=dims, vectors="diagonal")
        shapes = jax.eval_shape(tx.init, params)
        floats = sum(
            x.size for x in jax.tree.leaves(shapes) if jnp.issubdtype(x.dtype, jnp.floating)
        )
        assert floats == expected + extra


def test_zero_gradients_give_zero_updates_and_finite_factors():
    tx = scale_by_adam_nmf(rank=2, key=KEY, b1=0.9, b2=0.9)
    w = _zeros((6, 5))
    state = tx.init(w)
    g = _zeros((6, 5)).at[0].set(1.0)  # zero rows and columns: multiplicative updates' weak spot
    for grads in [_zeros((6, 5)), g, _zeros((6, 5)), -g]:
        u, state = jax.jit(tx.update)(grads, state)
        assert np.isfinite(np.asarray(u)).all()
        assert (np.asarray(state.a) > 0).all()
        assert (np.asarray(state.b) > 0).all()
    u, _ = tx.update(_zeros((6, 5)), tx.init(w))
    np.testing.assert_array_equal(np.asarray(u), 0)


def test_bfloat16_leaf_keeps_dtype_with_float32_factors():
    w = jnp.zeros((4, 6), jnp.bfloat16)
    tx = scale_by_adam_nmf(rank=2, key=KEY)
    state = tx.init(w)
    assert state.a.dtype == jnp.float32
    u, _ = tx.update(jnp.ones_like(w), state)
    assert u.dtype == jnp.bfloat16


def test_bad_hyperparameters_and_leaves():
    for kwargs, msg in [
        ({"rank": 0}, "rank must be an int >= 1"),
        ({"rank": 2.0}, "rank must be an int >= 1"),
        ({"rank": 1, "em_steps": 0}, "em_steps"),
        ({"rank": 1, "key": None}, "PRNG key"),
        ({"rank": 1, "eps": 0.0}, "eps must be > 0"),
        ({"rank": 1, "eps_sq": 0.0}, "eps_sq must be > 0"),
        ({"rank": 1, "b2": 1.0}, "b2"),
        ({"rank": 1, "b1": -0.1}, "b1"),
        ({"rank": 1, "vectors": "adam"}, "vectors must be one of"),
    ]:
        with pytest.raises(ValueError, match=msg):
            scale_by_adam_nmf(**{"key": KEY, **kwargs})
    tx = scale_by_adam_nmf(rank=1, key=KEY)
    with pytest.raises(
        ValueError, match=r"'blocks/w' \(shape \(2, 3, 4\), float32\) has rank 3.*CONV_HWIO"
    ):
        tx.init({"blocks": {"w": _zeros((2, 3, 4))}})
    with pytest.raises(ValueError, match=r"'w' \(shape \(2, 3\), int32\)"):
        tx.init({"w": jnp.zeros((2, 3), jnp.int32)})
    bad = scale_by_adam_nmf(rank=1, key=KEY, dimension_numbers=DimensionNumbers((0,), (5,)))
    with pytest.raises(ValueError, match="out of range"):
        bad.init({"w": _zeros((2, 3))})


@pytest.mark.slow
def test_trains_a_small_cnn_on_digits():
    dims = lambda path, leaf: CONV_HWIO if leaf.ndim == 4 else None  # noqa: E731
    tx = optax.chain(
        scale_by_adam_nmf(rank=2, key=KEY, dimension_numbers=dims, vectors="diagonal"),
        optax.scale_by_learning_rate(1e-2),
    )
    losses = train_digits_cnn(tx)
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.5 * losses[:3].mean()
