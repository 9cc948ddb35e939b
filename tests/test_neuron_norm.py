"""``normtx.scale_by_neuron_rms`` and ``normtx.scale_to_rms`` (NorMuon's and AdaMuon's steps after
the polar factor).

Oracles: the float64 NumPy port of NorMuon's Algorithm 1 (``muon_family_oracles.normuon``, written
in the paper's ``(d_out, d_in)`` layout, so it checks which axis is a neuron), the closed form of
the ``β = 0`` limit (every neuron at the same RMS), and the definition of the RMS.
"""

import chex
import jax
import jax.numpy as jnp
import muon_family_oracles as ref
import numpy as np
import optax
import pytest

import normtx
from normtx.dims import CONV_HWIO, DimensionNumbers

import registry

STACKED = DimensionNumbers((1,), (2,))


def _chain(decay=0.95, eps=1e-8, rms=0.2, dims=None):
    return optax.chain(
        normtx.scale_by_neuron_rms(decay=decay, eps=eps, dimension_numbers=dims),
        normtx.scale_to_rms(rms=rms, dimension_numbers=dims),
    )


def _run(tx, grads, jit=True):
    update = jax.jit(tx.update, compiler_options=registry.FAST_COMPILE) if jit else tx.update
    state = tx.init(grads[0])
    out = []
    for g in grads:
        u, state = update(g, state)
        out.append(u)
    return out, state


def _grads(shape, steps, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(steps)]


@pytest.mark.parametrize("shape", [(6, 4), (3, 5)])
@pytest.mark.parametrize(("dtype", "rtol"), [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_normuon_steps_after_the_polar_factor_match_the_float64_port(shape, dtype, rtol):
    """Ten steps of lines ``v_t``, ``Ô_t``, ``η̂`` of Algorithm 1 on given matrices ``O_t`` (the
    port with ``β₁ = 0`` and no orthogonalization sees the same ``O_t``)."""
    os = _grads(shape, 10, dtype)
    got, _ = _run(_chain(decay=0.9, eps=1e-3, rms=0.3), os)
    want = ref.normuon(os, beta1=0.0, beta2=0.9, eps=1e-3, rms=0.3, orthogonalize=lambda m: m)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=rtol * 1e-2)


def _per_slice(x, dims):
    """(batch, d_in, d_out) float64 slices of a leaf, as the dimension numbers say."""
    x = np.asarray(x, np.float64)
    fin, fout = dims
    batch = [a for a in range(x.ndim) if a not in fin + fout]
    perm = batch + list(fin) + list(fout)
    d_in = int(np.prod([x.shape[a] for a in fin]))
    d_out = int(np.prod([x.shape[a] for a in fout]))
    moved = x.transpose(perm)
    return moved.reshape(-1, d_in, d_out), lambda m: m.reshape(moved.shape).transpose(
        np.argsort(perm)
    )


@pytest.mark.parametrize(
    ("shape", "dims"), [((3, 3, 2, 4), CONV_HWIO), ((2, 4, 6), STACKED)], ids=["conv", "stack"]
)
def test_conv_kernels_and_stacks_are_matrices_with_their_own_neurons(shape, dims):
    """A conv kernel HWIO has one neuron per output channel (its fan-in is H·W·I); each layer of a
    stack has its own neurons and its own RMS."""
    xs = _grads(shape, 4, jnp.float64, seed=1)
    got, state = _run(_chain(decay=0.5, dims=dims), xs)
    slices = [_per_slice(x, dims) for x in xs]
    inverse = slices[0][1]
    batch, _, d_out = slices[0][0].shape
    assert state[0].nu.shape == (batch, d_out)
    per_matrix = [
        ref.normuon([s[0][b] for s in slices], beta1=0.0, beta2=0.5, orthogonalize=lambda m: m)
        for b in range(batch)
    ]
    for t, g in enumerate(got):
        want = inverse(np.stack([per_matrix[b][t] for b in range(batch)]))
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(6, 4), (4, 7)])
def test_beta_zero_gives_every_neuron_the_same_rms(shape):
    """With ``β = 0`` and ``ε = 0``, ``v = mean_fan_in(O²)``: each fan-out column ``j`` (neuron
    ``j``, row ``j`` of ``W = Kᵀ``) becomes ``ρ √d_in O[:, j]/‖O[:, j]‖`` — whatever the column
    norms were, and whatever happened before."""
    rng = np.random.default_rng(2)
    history = jnp.asarray(rng.standard_normal(shape))
    o = rng.standard_normal(shape) * np.geomspace(1e-3, 1e3, shape[1])  # unbalanced neurons
    tx = _chain(decay=0.0, eps=0.0, rms=0.25)
    (_, got), _ = _run(tx, [history, jnp.asarray(o)])
    want = 0.25 * np.sqrt(shape[0]) * o / np.linalg.norm(o, axis=0, keepdims=True)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(np.mean(np.asarray(got) ** 2, axis=0)), 0.25, rtol=1e-12)


@pytest.mark.parametrize("rms", [0.2, 1.5])
@pytest.mark.parametrize("scale", [1.0, 1e38, 1e-30])
def test_scale_to_rms_sets_the_rms_of_each_matrix(rms, scale):
    """``RMS = ‖X‖_F/√(mn) = ρ`` for every slice of a stack, also for entries near the float32
    maximum (the norm is taken of ``X / max|X|``), and the direction is ``X``'s."""
    x = scale * np.random.default_rng(3).standard_normal((2, 5, 3))
    tx = normtx.scale_to_rms(rms=rms, dimension_numbers=STACKED)
    u, _ = jax.jit(tx.update)(jnp.asarray(x, jnp.float32), tx.init(jnp.asarray(x, jnp.float32)))
    u = np.asarray(u, np.float64)
    np.testing.assert_allclose(np.sqrt(np.mean(u**2, axis=(1, 2))), rms, rtol=1e-6)
    for b in range(2):
        want = rms * np.sqrt(15) * x[b] / np.linalg.norm(x[b])
        np.testing.assert_allclose(u[b], want, rtol=1e-5, atol=1e-6 * rms)


def test_zero_gradients_and_zero_neurons_give_zeros_never_nan():
    tx = _chain(eps=0.0)
    z = jnp.zeros((5, 3), jnp.float32)
    (u0,), state = _run(tx, [z])
    chex.assert_trees_all_equal(u0, z)
    chex.assert_tree_all_finite(state)
    o = np.random.default_rng(4).standard_normal((5, 3)).astype(np.float32)
    o[:, 1] = 0.0  # a dead neuron
    (u1,), state = _run(tx, [jnp.asarray(o)])
    chex.assert_tree_all_finite((u1, state))
    np.testing.assert_array_equal(np.asarray(u1)[:, 1], 0.0)
    assert np.all(np.asarray(u1)[:, [0, 2]] != 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_second_moment_is_float32_per_neuron_and_updates_keep_the_dtype(dtype):
    params = {"a": jnp.ones((6, 4), dtype), "conv": jnp.ones((3, 3, 2, 5), dtype)}
    dims = {"a": None, "conv": CONV_HWIO}
    tx = _chain(dims=dims)
    state = tx.init(params)
    assert state[0].nu["a"].shape == (1, 4)
    assert state[0].nu["conv"].shape == (1, 5)
    assert {x.dtype for x in jax.tree.leaves(state[0].nu)} == {jnp.dtype(jnp.float32)}
    u, _ = jax.jit(tx.update)(params, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, params)


def test_jit_equals_eager():
    xs = _grads((4, 6), 3, jnp.float32, seed=5)
    jitted, _ = _run(_chain(), xs, jit=True)
    eager, _ = _run(_chain(), xs, jit=False)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6)
