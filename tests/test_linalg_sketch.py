"""``normtx.linalg.sketch_polar``: the randomized rank-k polar factor (Halko et al. 2011).

Oracle: the float64 SVD. For a matrix of rank ``<= k`` the sketch captures the range exactly, so
the result is the polar factor itself; otherwise it is ``U_k V_kᵀ`` of the best rank-k
approximation up to an error that the power iterations shrink.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from polar_helpers import polar64, rel_error, with_singular_values

from normtx import norms
from normtx.linalg import check_polar_method, polar, sketch_polar

KEY = jax.random.key(0)


def _low_rank(rng, m, n, r, low=1e-2):
    return with_singular_values(rng, m, n, np.geomspace(1.0, low, r))


@pytest.mark.parametrize(("m", "n", "r"), [(40, 30, 5), (30, 60, 8), (25, 25, 25), (50, 20, 1)])
def test_recovers_the_polar_factor_of_an_exactly_rank_k_matrix(m, n, r):
    g = _low_rank(np.random.default_rng(m + n), m, n, r)
    x = sketch_polar(jnp.asarray(g, jnp.float32), key=KEY, rank=r)
    assert x.dtype == jnp.float32
    assert rel_error(x, polar64(g)) < 1e-4
    # U_k V_kᵀ has exactly k unit singular values
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    np.testing.assert_allclose(s[:r], 1.0, atol=1e-5)
    np.testing.assert_allclose(s[r:], 0.0, atol=1e-5)


def test_rank_above_the_true_rank_keeps_only_the_true_directions():
    g = _low_rank(np.random.default_rng(1), 30, 40, 3)
    x = sketch_polar(jnp.asarray(g, jnp.float32), key=KEY, rank=6, oversampling=0)
    assert rel_error(x, polar64(g)) < 1e-4


def test_truncation_of_a_full_rank_matrix_and_power_iterations():
    """With a gap after σ_k the result is ``U_k V_kᵀ``; more power iterations, less error."""
    rng = np.random.default_rng(2)
    sigma = np.concatenate([np.geomspace(1.0, 0.5, 6), np.full(34, 0.05)])
    g = with_singular_values(rng, 40, 50, sigma)
    u, _, vh = np.linalg.svd(g, full_matrices=False)
    target = u[:, :6] @ vh[:6]
    errs = [
        rel_error(
            sketch_polar(
                jnp.asarray(g, jnp.float32), key=KEY, rank=6, oversampling=4, power_iterations=q
            ),
            target,
        )
        for q in (0, 2)
    ]
    assert errs[1] < errs[0]
    assert errs[1] < 1e-3


def test_deterministic_in_the_key_and_batched():
    rng = np.random.default_rng(3)
    g64 = np.stack([_low_rank(rng, 20, 16, 4) for _ in range(3)])
    g = jnp.asarray(g64, jnp.float32)
    a = sketch_polar(g, key=KEY, rank=4)
    chex.assert_trees_all_equal(a, sketch_polar(g, key=KEY, rank=4))
    # an exactly rank-4 matrix gives its polar factor for any key, under an outer jit too
    jitted = jax.jit(lambda x, k: sketch_polar(x, key=k, rank=4))
    for key in (KEY, jax.random.key(9)):
        chex.assert_trees_all_close(jitted(g, key), a, atol=2e-5)
    assert rel_error(a, polar64(g64)) < 1e-4


@pytest.mark.parametrize("k", [-60, 0, 20])
def test_scale_invariance_and_zero(k):
    g = jnp.asarray(_low_rank(np.random.default_rng(4), 12, 18, 3), jnp.float32)
    chex.assert_trees_all_close(
        sketch_polar(g * jnp.float32(2.0**k), key=KEY, rank=3),
        sketch_polar(g, key=KEY, rank=3),
        atol=1e-6,
    )
    z = sketch_polar(jnp.zeros((12, 18), jnp.float32), key=KEY, rank=3)
    chex.assert_trees_all_equal(z, jnp.zeros((12, 18), jnp.float32))


def test_polar_dispatch_and_norms_refuse_sketch():
    g = _low_rank(np.random.default_rng(5), 16, 24, 4)
    x = polar(jnp.asarray(g, jnp.float32), method="sketch", key=KEY, rank=4, power_iterations=1)
    assert rel_error(x, polar64(g)) < 1e-4
    with pytest.raises(ValueError, match="needs an explicit PRNG key and a rank"):
        check_polar_method("sketch", "norm spectral")
    with pytest.raises(ValueError, match=r"needs an explicit PRNG key.*functools.partial"):
        norms.spectral(polar="sketch")
    check_polar_method("sketch", allow_sketch=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 2}, "PRNG key"),
        ({"key": KEY}, "rank must be an integer"),
        ({"key": KEY, "rank": 0}, "rank must be"),
        ({"key": KEY, "rank": 9}, "exceeds min"),
        ({"key": KEY, "rank": 2, "oversampling": -1}, "oversampling"),
        ({"key": KEY, "rank": 2, "power_iterations": 1.5}, "power_iterations"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sketch_polar(jnp.ones((8, 10), jnp.float32), **kwargs)
    with pytest.raises(ValueError, match="floating"):
        sketch_polar(jnp.ones((8, 10), jnp.int32), key=KEY, rank=2)
