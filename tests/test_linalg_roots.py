"""``normtx.linalg.inverse_pth_root`` against float64 NumPy eigendecompositions.

Error budget: a float32 computation of ``A^{-1/p}`` is exact for a nearby matrix ``A + δA`` with
``‖δA‖ ≈ eps₃₂ ‖A‖``, which moves the root by about ``κ · eps₃₂ / p`` relatively (κ the condition
number). The tolerances below are that first-order bound times a small constant, stated per test.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from polar_helpers import polar64, with_singular_values

from normtx.linalg import inverse_pth_root, inverse_root_polar, polar

EPS32 = float(np.finfo(np.float32).eps)


def _spd(rng, n, eigenvalues):
    """``Q diag(w) Qᵀ`` with a random orthogonal ``Q`` (float64) and its factors."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = np.asarray(eigenvalues, np.float64)
    return (q * w) @ q.T, q, w


def _root_oracle(a, p, ridge_abs=0.0):
    """``(A + ridge_abs I)^{-1/p}`` by float64 eigh; eigenvalues <= 1e-12 · max contribute 0."""
    w, v = np.linalg.eigh(np.asarray(a, np.float64))
    w = w + ridge_abs
    keep = w > 1e-12 * np.abs(w).max()
    inv = np.where(keep, np.abs(w) ** (-1.0 / p), 0.0)
    return (v * inv) @ v.T


def _rel(x, ref):
    return np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("cond", [1e1, 1e4])
def test_matches_float64_eigh(method, p, cond):
    rng = np.random.default_rng(p)
    a, _, _ = _spd(rng, 24, np.geomspace(1.0, 1.0 / cond, 24))
    a32 = np.asarray(a, np.float32)
    root = inverse_pth_root(jnp.asarray(a32), p, method=method, ridge=0.0)
    assert root.dtype == jnp.float32
    # first-order bound κ eps / p, times 40 for the dimension and the iteration's rounding.
    np.testing.assert_array_less(_rel(root, _root_oracle(a32, p)), 40 * cond * EPS32 / p + 1e-6)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_float64_input_runs_in_float64(p):
    rng = np.random.default_rng(7)
    a, _, _ = _spd(rng, 16, np.geomspace(1.0, 1e-6, 16))
    root = inverse_pth_root(jnp.asarray(a, jnp.float64), p, ridge=0.0)
    assert root.dtype == jnp.float64
    assert _rel(root, _root_oracle(a, p)) < 1e-8


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [2, 4])
def test_rank_deficient_with_documented_ridge(method, p):
    """``ε = ridge · ‖A‖_F`` (relative to the scaled matrix, hence to A): the oracle is
    ``(A + ridge ‖A‖_F I)^{-1/p}``, whose condition number is at most ``1 + 1/ridge``."""
    rng = np.random.default_rng(3)
    b = rng.standard_normal((20, 5))
    a = b @ b.T  # rank 5 of 20
    ridge = 1e-3
    ridge_abs = ridge * np.linalg.norm(a)
    w = np.linalg.eigvalsh(a) + ridge_abs
    assert w.max() / w.min() <= 1 + 1 / ridge
    root = inverse_pth_root(jnp.asarray(a, jnp.float32), p, method=method, ridge=ridge)
    assert _rel(root, _root_oracle(a, p, ridge_abs)) < 40 * (1 + 1 / ridge) * EPS32 / p


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("n", [16, 64])
def test_default_ridge_is_not_cut_off_in_float32(method, p, n):
    """``(Â + εI)^{-1/p}`` with ``ε = 1e-6 ‖Â‖_F`` below ``n · eps₃₂ · max λ`` (n >= 9): the ridge
    is kept, not cut to a pseudo-inverse root (``e₀e₀ᵀ`` at n = 16 gave ``[1, 1] = 0`` under eigh
    instead of ``ε^{-1/2} = 1000``). A batch of diagonal inputs in random order, rank one and
    ``cond = 1e12``: float32 ``eigh`` is exact on them, so the error is the root's rounding (or
    Newton's ``tol / p``), and the oracle is the closed form ``diag((w + ε)^{-1/p})`` in float64.
    """
    rng = np.random.default_rng(n + p)
    spectra = np.stack([np.eye(n)[0], np.geomspace(1.0, 1e-12, n)])  # max|A| = 1: Â = A
    spectra = np.stack([rng.permutation(w) for w in spectra.astype(np.float32)]).astype(np.float64)
    roots = inverse_pth_root(
        jnp.asarray(np.stack(list(map(np.diag, spectra))), jnp.float32), p, method=method
    )
    for w, root in zip(spectra, roots, strict=True):
        expected = np.diag((w + 1e-6 * np.linalg.norm(w)) ** (-1.0 / p))
        assert _rel(root, expected) < 1000 * EPS32 / p  # Newton's default tol: error about tol / p


@pytest.mark.parametrize("method", ["newton", "eigh"])
@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("n", [16, 64])
def test_default_ridge_matches_float64_eigh_up_to_cond_1e12(method, p, n):
    """The documented ``(Â + ridge ‖Â‖_F I)^{-1/p} · s^{-1/p}`` (``Â = A / s``, ``s = max|A|``) for
    a batch of rotated spectra down to 1e-3, 1e-6 and 1e-12, in float64: within the budget
    ``40 κ eps₆₄ / p``, κ the condition number of ``Â + εI`` (at most ``1 + 1/ridge``)."""
    rng = np.random.default_rng(n + p)
    mats = [_spd(rng, n, np.geomspace(1.0, 1.0 / cond, n))[0] for cond in (1e3, 1e6, 1e12)]
    roots = inverse_pth_root(jnp.asarray(np.stack(mats), jnp.float64), p, method=method)
    assert roots.dtype == jnp.float64
    for a, root in zip(mats, roots, strict=True):
        s = np.abs(a).max()
        eps = 1e-6 * np.linalg.norm(a / s)
        lam = np.linalg.eigvalsh(a / s) + eps
        expected = _root_oracle(a / s, p, eps) * s ** (-1.0 / p)
        assert _rel(root, expected) < 40 * (lam.max() / lam.min()) * np.finfo(np.float64).eps / p


def test_rank_deficient_without_ridge_is_the_pseudo_inverse_root():
    rng = np.random.default_rng(4)
    b = rng.standard_normal((12, 4))
    a = b @ b.T
    root, info = inverse_pth_root(
        jnp.asarray(a, jnp.float32), 2, ridge=0.0, max_iters=30, return_info=True
    )
    # Newton cannot converge on a singular matrix: the eigh fallback gives the pseudo-inverse root.
    assert not bool(info.newton_converged)
    cond_on_range = np.linalg.eigvalsh(a)[-4:]
    kappa = cond_on_range.max() / cond_on_range.min()
    assert _rel(root, _root_oracle(a, 2)) < 40 * kappa * EPS32 * 12


def test_fallback_taken_on_an_indefinite_input():
    """Rounding can make a Gram matrix slightly indefinite; Newton then diverges, and the eigh
    fallback returns the root over the eigenvalues ``λ + ε`` that are positive."""
    rng = np.random.default_rng(5)
    w = np.concatenate([np.geomspace(1.0, 1e-2, 15), [-1e-2]])
    a, q, _ = _spd(rng, 16, w)
    root, info = inverse_pth_root(jnp.asarray(a, jnp.float32), 2, ridge=0.0, return_info=True)
    assert not bool(info.newton_converged)
    keep = w > 0
    expected = (q[:, keep] * w[keep] ** -0.5) @ q[:, keep].T
    assert np.isfinite(np.asarray(root)).all()
    assert _rel(root, expected) < 40 * 1e2 * EPS32


def test_fallback_taken_when_the_iteration_budget_is_too_small():
    rng = np.random.default_rng(6)
    a, _, _ = _spd(rng, 16, np.geomspace(1.0, 1e-4, 16))
    root, info = inverse_pth_root(
        jnp.asarray(a, jnp.float32), 4, ridge=0.0, max_iters=3, return_info=True
    )
    assert not bool(info.newton_converged)
    assert int(info.iterations) == 3
    assert _rel(root, _root_oracle(a, 4)) < 40 * 1e4 * EPS32 / 4


def test_newton_converges_without_fallback_on_a_well_posed_batch():
    rng = np.random.default_rng(8)
    mats = np.stack([_spd(rng, 16, np.geomspace(1.0, 10.0**-k, 16))[0] for k in range(1, 6)])
    root, info = inverse_pth_root(jnp.asarray(mats, jnp.float32), 2, ridge=0.0, return_info=True)
    assert bool(jnp.all(info.newton_converged))
    assert np.all(np.asarray(info.residual) <= 1000 * EPS32)
    # about log(κ)/log(9/4) + 5 iterations for the worst matrix (κ = 1e5).
    assert int(info.iterations) <= np.log(1e5) / np.log(2.25) + 8
    for m, r in zip(mats, root):
        assert _rel(r, _root_oracle(m.astype(np.float32), 2)) < 40 * 1e5 * EPS32 / 2


@pytest.mark.parametrize("k", [-60, -20, 0, 20])
def test_scale_equivariance(k):
    """``(c A)^{-1/p} = c^{-1/p} A^{-1/p}``: magnitudes far from 1 neither overflow nor underflow."""
    rng = np.random.default_rng(9)
    a, _, _ = _spd(rng, 10, np.geomspace(1.0, 1e-2, 10))
    a32 = jnp.asarray(a, jnp.float32)
    base = inverse_pth_root(a32, 4)
    scaled = inverse_pth_root(a32 * jnp.float32(2.0**k), 4)
    chex.assert_trees_all_close(scaled * 2.0 ** (k / 4), base, rtol=1e-5, atol=0)


def test_zero_matrix_maps_to_zero():
    for method in ("newton", "eigh"):
        root, info = inverse_pth_root(
            jnp.zeros((2, 5, 5), jnp.float32), 2, method=method, return_info=True
        )
        chex.assert_trees_all_equal(root, jnp.zeros((2, 5, 5), jnp.float32))
    assert int(info.iterations) == 0


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_low_precision_inputs_compute_in_float32(dtype):
    rng = np.random.default_rng(10)
    a, _, _ = _spd(rng, 8, np.geomspace(1.0, 1e-2, 8))
    x = jnp.asarray(a, dtype)
    root = inverse_pth_root(x, 2)
    assert root.dtype == jnp.float32
    assert _rel(root, _root_oracle(np.asarray(x.astype(jnp.float32), np.float64), 2)) < 1e-4


def test_batch_jit_vmap_agree():
    rng = np.random.default_rng(11)
    mats = jnp.asarray(
        np.stack([_spd(rng, 8, np.geomspace(1.0, 1e-3, 8))[0] for _ in range(3)]), jnp.float32
    )
    batched = inverse_pth_root(mats, 4)  # jitted inside: jit == eager by construction
    looped = jnp.stack([inverse_pth_root(m, 4) for m in mats])
    # under vmap the fallback's lax.cond becomes a select: still the same values
    vmapped = jax.vmap(lambda m: inverse_pth_root(m, 4))(mats)
    # Batched and single matmuls round differently; agreement is to rounding in norm.
    ref = np.asarray(looped, np.float64)
    for other in (batched, vmapped):
        assert _rel(other, ref) < 1e-5


def test_only_the_symmetric_part_is_used():
    rng = np.random.default_rng(12)
    a, _, _ = _spd(rng, 6, np.geomspace(1.0, 1e-1, 6))
    skew = rng.standard_normal((6, 6))
    skew = 0.1 * (skew - skew.T)
    chex.assert_trees_all_close(
        inverse_pth_root(jnp.asarray(a + skew, jnp.float32), 2),
        inverse_pth_root(jnp.asarray(a, jnp.float32), 2),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((jnp.ones((3, 4)), 2), {}, "square"),
        ((jnp.eye(3), 0), {}, "positive integer"),
        ((jnp.eye(3), 1.5), {}, "positive integer"),
        ((jnp.eye(3), 2), {"method": "qr"}, "unknown method"),
        ((jnp.eye(3), 2), {"ridge": -1.0}, "ridge"),
        ((jnp.eye(3), 2), {"max_iters": 0}, "max_iters"),
        ((jnp.eye(3, dtype=jnp.int32), 2), {}, "floating"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        inverse_pth_root(*args, **kwargs)


# ---- the polar factor by an inverse square root (anthology Appendix A, route 3) ---------------


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_inverse_root_polar_is_the_ridged_polar_factor(shape):
    """``(Ĝ Ĝᵀ + εI)^{-1/2} Ĝ = U diag(σ/√(σ² + ε)) Vᵀ`` for ``Ĝ = G/max|G|`` and
    ``ε = ridge ‖Ĝ Ĝᵀ‖_F``; with a small ridge and a well-conditioned G it is ``U Vᵀ``."""
    rng = np.random.default_rng(13)
    g = with_singular_values(rng, *shape, np.geomspace(1.0, 0.1, min(shape)))
    ridge = 1e-3
    x = inverse_root_polar(jnp.asarray(g, jnp.float32), ridge=ridge)
    g_hat = g / np.abs(g).max()
    u, s, vh = np.linalg.svd(g_hat, full_matrices=False)
    eps = ridge * np.linalg.norm(s**2)
    expected = (u * (s / np.sqrt(s**2 + eps))) @ vh
    assert x.dtype == jnp.float32
    # κ(Ĝ Ĝᵀ + εI) <= 100 / (1 + ...): f32 error about κ eps₃₂.
    assert _rel(x, expected) < 40 * 100 * EPS32
    chex.assert_trees_all_close(
        polar(jnp.asarray(g, jnp.float32), method="inverse_root", ridge=ridge), x
    )
    # default ridge 1e-6: forming G Gᵀ squares κ(G) = 10, so the float32 error is about
    # κ(G)² eps₃₂ ≈ 1.2e-5 per unit of the Newton/eigh constant; allow 100 of them.
    assert _rel(polar(jnp.asarray(g, jnp.float32), method="inverse_root"), polar64(g)) < 2e-3


def test_inverse_root_polar_of_rank_deficient_and_zero_matrices():
    """On the null space of G the ridged root is ε^{-1/2}, which multiplies G's float32 rounding
    there: the error is about eps₃₂ / √ridge (10× allowed); the range maps as above."""
    rng = np.random.default_rng(14)
    g = with_singular_values(rng, 10, 14, [1.0, 0.5, 0.2])
    ridge = 1e-4
    x = inverse_root_polar(jnp.asarray(g, jnp.float32), ridge=ridge)
    u, s, vh = np.linalg.svd(g / np.abs(g).max(), full_matrices=False)
    s = s[:3]
    expected = (u[:, :3] * (s / np.sqrt(s**2 + ridge * np.linalg.norm(s**2)))) @ vh[:3]
    assert _rel(x, expected) < 10 * EPS32 / np.sqrt(ridge)
    z = inverse_root_polar(jnp.zeros((2, 4, 6), jnp.float32))
    chex.assert_trees_all_equal(z, jnp.zeros((2, 4, 6), jnp.float32))
    with pytest.raises(ValueError, match="float matrices"):
        inverse_root_polar(jnp.ones(3, jnp.float32))
