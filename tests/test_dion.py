"""``normtx.orthogonalize_dion``: centralized Dion (Ahn et al. 2025, Algorithm 1).

Oracles: the float64 NumPy port of Algorithm 1 in the paper's ``(d_out, d_in)`` layout
(``muon_family_oracles.dion``, from the same ``Q_0``), the float64 SVD's polar factor ``U Vᵀ``, and
the exact identities of full rank derived in the transform's docstring:

- ``r = min(d_in, d_out)`` and a generic ``Q_{t-1}``: ``P_t`` spans the column space of ``B_t``, so
  ``P_t R_tᵀ = B_t`` and the error feedback is exact for every ``μ``: ``M_t = μ B_t``;
- the direction ``P_t D_t^{-1} P_tᵀ B_t`` is ``U Vᵀ`` exactly when ``R_t``'s columns are orthogonal,
  e.g. from the warm start ``Q_{t-1} = V``;
- with ``μ = 0`` and one fixed gradient, the steps are the orthogonal iteration on ``B Bᵀ``: the
  direction converges to ``U Vᵀ``.
"""

import chex
import jax
import jax.numpy as jnp
import muon_family_oracles as ref
import numpy as np
import pytest

import normtx
from normtx.dims import CONV_HWIO, DimensionNumbers
from normtx.transforms.dion import dion_rank

import registry

STACKED = DimensionNumbers((1,), (2,))
KEY = jax.random.key(0)


def _grads(shape, steps, dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(steps)]


def _run(tx, grads, state=None):
    update = jax.jit(tx.update, compiler_options=registry.FAST_COMPILE)
    state = tx.init(grads[0]) if state is None else state
    dirs, states = [], []
    for g in grads:
        u, state = update(g, state)
        dirs.append(u)
        states.append(state)
    return dirs, states


SHAPES = {"tall": (6, 4), "wide": (4, 7), "square": (5, 5), "thin": (3, 8)}


def _tree(steps, dtype=jnp.float64, seed=0):
    """``steps`` gradient trees with a tall, a wide, a square and a thin kernel."""
    per_leaf = {k: _grads(s, steps, dtype, seed + i) for i, (k, s) in enumerate(SHAPES.items())}
    return [{k: v[t] for k, v in per_leaf.items()} for t in range(steps)]


@pytest.mark.parametrize("fraction", [0.5, 1.0])
@pytest.mark.parametrize(("dtype", "rtol"), [(jnp.float64, 1e-10), (jnp.float32, 2e-4)])
def test_ten_steps_match_the_float64_port_of_algorithm_1(fraction, dtype, rtol):
    """Directions and momenta (error feedback included) of 10 steps, from the same ``Q_0``."""
    grads = _tree(10, dtype)
    tx = normtx.orthogonalize_dion(key=KEY, rank_fraction=fraction, mu=0.9)
    state0 = tx.init(grads[0])
    dirs, states = _run(tx, grads, state0)
    for name, shape in SHAPES.items():
        q0 = np.asarray(state0.q[name][0], np.float64)
        assert q0.shape == (shape[0], dion_rank(fraction, *shape))  # (d_in, r)
        want_dirs, want_moms, want_qs = ref.dion([g[name] for g in grads], q0, mu=0.9)
        for t in range(10):
            d = dirs[t][name]
            assert d.dtype == dtype
            np.testing.assert_allclose(
                np.asarray(d, np.float64), want_dirs[t], rtol=rtol, atol=rtol
            )
            m = np.asarray(states[t].momentum[name], np.float64)
            np.testing.assert_allclose(m, want_moms[t], rtol=rtol, atol=rtol)
            # Q up to the sign of each column (QR's sign convention is not part of the method).
            q = np.abs(np.asarray(states[t].q[name][0], np.float64))
            np.testing.assert_allclose(q, np.abs(want_qs[t]), rtol=rtol, atol=rtol)


@pytest.mark.parametrize(
    ("shape", "dims"), [((3, 3, 2, 4), CONV_HWIO), ((2, 4, 6), STACKED)], ids=["conv", "stack"]
)
def test_conv_kernels_and_stacks_are_matrices_with_their_own_q(shape, dims):
    grads = _grads(shape, 4, seed=1)
    tx = normtx.orthogonalize_dion(key=KEY, rank_fraction=0.5, dimension_numbers=dims)
    state0 = tx.init(grads[0])
    dirs, _ = _run(tx, grads, state0)
    fin, fout = dims
    batch = [a for a in range(len(shape)) if a not in fin + fout]
    perm = batch + list(fin) + list(fout)
    moved = tuple(shape[a] for a in perm)
    d_in = int(np.prod([shape[a] for a in fin]))
    mats = [np.asarray(g).transpose(perm).reshape(-1, d_in, shape[fout[0]]) for g in grads]
    for b in range(mats[0].shape[0]):
        want, _, _ = ref.dion([m[b] for m in mats], np.asarray(state0.q[b]), mu=0.95)
        for t, d in enumerate(dirs):
            got = np.asarray(d).transpose(perm).reshape(moved).reshape(-1, d_in, shape[fout[0]])
            np.testing.assert_allclose(got[b], want[t], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mu", [0.0, 0.95])
def test_full_rank_error_feedback_is_exact_for_every_mu(mu):
    """``M_t = μ B_t = μ (M_{t-1} + G_t)`` at every step from a random ``Q_0``."""
    grads = _tree(5, seed=2)
    _, states = _run(normtx.orthogonalize_dion(key=KEY, mu=mu), grads)
    previous = jax.tree.map(np.zeros_like, grads[0])
    for g, s in zip(grads, states, strict=True):
        want = jax.tree.map(lambda p, x: mu * (p + np.asarray(x)), previous, g)
        chex.assert_trees_all_close(s.momentum, want, rtol=1e-10, atol=1e-12)
        previous = want


@pytest.mark.parametrize("mu", [0.0, 0.9])
def test_full_rank_from_the_right_singular_vectors_gives_the_polar_factor(mu):
    """Warm start ``Q_{t-1} = V`` of ``B_t``: one power-iteration step lands on the singular
    vectors, the columns of ``R_t`` are orthogonal, and the direction is ``√(d_out/d_in) U Vᵀ``
    (Flax layout: ``V`` is the left factor of the kernel ``B_t``)."""
    (g,) = _tree(1, seed=3)
    tx = normtx.orthogonalize_dion(key=KEY, mu=mu)
    # The kernel is Wᵀ: its left singular vectors are W's right ones.
    left = jax.tree.map(lambda x: np.linalg.svd(np.asarray(x), full_matrices=False)[0], g)
    state = tx.init(g)._replace(q=jax.tree.map(lambda v: jnp.asarray(v[None]), left))
    (d,), _ = _run(tx, [g], state)
    for name, (d_in, d_out) in SHAPES.items():
        want = np.sqrt(d_out / d_in) * ref.polar(np.asarray(g[name]))
        np.testing.assert_allclose(np.asarray(d[name]), want, rtol=1e-10, atol=1e-12)


def test_full_rank_generic_warm_start_is_not_the_polar_factor_in_one_step():
    """The equality above needs the singular vectors: from a random ``Q_0`` the first direction
    differs from ``U Vᵀ`` (columns of ``R_1`` not orthogonal)."""
    g = _grads((5, 5), 1, seed=4)[0]
    (d,), _ = _run(normtx.orthogonalize_dion(key=KEY, scale="spectral"), [g])
    assert np.linalg.norm(np.asarray(d) - ref.polar(np.asarray(g))) > 1e-2


@pytest.mark.parametrize("shape", [(6, 4), (4, 7)])
def test_full_rank_orthogonal_iteration_converges_to_the_polar_factor(shape):
    """``μ = 0`` (``M_t = 0``) and one gradient with singular values 1, 1/2, 1/4, ...: step ``k``
    is ``k`` steps of orthogonal iteration on ``B Bᵀ`` (error ``~ 4^{-k}``)."""
    rng = np.random.default_rng(5)
    k = min(shape)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], k)))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], k)))
    g = jnp.asarray((u * 2.0 ** -np.arange(k)) @ v.T)
    dirs, _ = _run(normtx.orthogonalize_dion(key=KEY, mu=0.0, scale="spectral"), [g] * 30)
    errors = [np.linalg.norm(np.asarray(d) - u @ v.T) for d in dirs]
    assert errors[-1] < 1e-10
    assert errors[-1] < errors[4] < errors[0]


def test_zero_gradients_give_zero_directions_and_keep_q():
    tx = normtx.orthogonalize_dion(key=KEY, rank_fraction=0.5)
    z = jnp.zeros((6, 4), jnp.float32)
    state0 = tx.init(z)
    (d,), (state,) = _run(tx, [z], state0)
    chex.assert_trees_all_equal(d, z)
    chex.assert_trees_all_equal(state.q, state0.q)
    chex.assert_trees_all_equal(state.momentum, z)
    g = _grads((6, 4), 1, jnp.float32, seed=6)
    (d,), (state,) = _run(tx, g, state)
    chex.assert_tree_all_finite((d, state))
    assert float(jnp.linalg.norm(d)) > 0


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_the_direction_does_not_depend_on_the_gradient_scale(scale):
    """``P_t`` and ``Q_t`` are invariant to scaling ``B_t``; the momentum scales with it (also for
    float32 entries near the maximum: the power iteration runs on ``B / max|B|``)."""
    g = _grads((6, 4), 3, jnp.float32, seed=7)
    tx = normtx.orthogonalize_dion(key=KEY, rank_fraction=0.5, mu=0.5)
    dirs, states = _run(tx, g)
    big_dirs, big_states = _run(tx, [scale * x for x in g])
    chex.assert_tree_all_finite((big_dirs, big_states))
    chex.assert_trees_all_close(big_dirs, dirs, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(
        np.asarray(big_states[-1].momentum, np.float64) / scale,
        np.asarray(states[-1].momentum, np.float64),
        rtol=2e-4,
        atol=2e-5,
    )


@pytest.mark.parametrize(
    ("fraction", "d", "want"),
    [(0.25, (512, 512), 128), (1 / 16, (1024, 4096), 64), (0.1, (30, 40), 3), (1e-3, (8, 8), 1)],
)
def test_rank_is_the_ceiling_of_the_fraction_of_the_short_side(fraction, d, want):
    assert dion_rank(fraction, *d) == want


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_state_is_float32_and_updates_keep_the_dtype(dtype):
    params = {"a": jnp.ones((6, 4), dtype), "b": jnp.ones((3, 9), dtype)}
    tx = normtx.orthogonalize_dion(key=KEY, rank_fraction=0.5)
    state = tx.init(params)
    assert state.q["a"].shape == (1, 6, 2)
    assert state.q["b"].shape == (1, 3, 2)
    assert {x.dtype for x in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}
    u, _ = jax.eval_shape(tx.update, params, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
