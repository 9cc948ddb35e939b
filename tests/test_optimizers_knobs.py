"""The knobs optax users reach for, on the steepest-descent optimizers, against closed forms.

- ``weight_decay_mask`` (optax's convention: a pytree, a prefix of one, or a callable of bools):
  the decayed update minus the undecayed one is ``-lr · λ · w`` exactly where the mask is True;
  ``modular_descent``'s default mask is its matrix roles, and a given mask replaces it.
- ``mu_dtype``: the momentum buffer is stored in that dtype, and the update is the NumPy
  recursion with the buffer rounded to it every step.
- ``bias_correction`` of the momentum (``optax.contrib.muon``'s form): a float64 NumPy port.
- leaves labelled ``'frozen'``: a zero update, no momentum, and the other leaves' updates are
  those of the tree without them (also for the ``'dual_norm'`` step, whose η sums over leaves,
  and for escape velocity, whose η measures them).
- the documented ``step`` defaults: ``modular_norm_partition`` takes the Prop. 7 step, a closed
  form with the exact (SVD) polar factor; ``modular_descent`` the unit step.
- ``normtx.roles.optax_labels`` as ``optax.partition`` labels.
"""

from __future__ import annotations

import inspect
import zlib

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import normtx
from normtx import norms, optimizers
from normtx.optimizers._chains import ema_momentum


def _params():
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    return {
        "Dense_0": {"kernel": f(4, 6), "bias": f(6)},
        "head": {"kernel": f(6, 3), "bias": f(3)},
    }


def _grads(params, step):
    """Gradients drawn per leaf path: a leaf gets the same ones in any tree."""

    def draw(path, p):
        rng = np.random.default_rng([step, zlib.crc32(jax.tree_util.keystr(path).encode())])
        return jnp.asarray(rng.standard_normal(p.shape), p.dtype)

    return jax.tree_util.tree_map_with_path(draw, params)


def _run(tx, params, steps):
    """The updates of ``steps`` compiled steps at fixed weights, and the last state."""
    update = jax.jit(tx.update)
    state, out = tx.init(params), []
    for t in range(steps):
        u, state = update(_grads(params, t), state, params)
        out.append(u)
    return out, state


# ---- weight_decay_mask ---------------------------------------------------------------------------

_MASK = {"Dense_0": {"kernel": True, "bias": False}, "head": True}  # a prefix on head
_CALLABLE = lambda p: jax.tree.map(lambda x: x.ndim == 2, p)  # noqa: E731
_DEFAULT_MODULAR = {
    "Dense_0": {"kernel": True, "bias": False},
    "head": {"kernel": True, "bias": False},
}
_FULL = {"Dense_0": {"kernel": True, "bias": True}, "head": {"kernel": True, "bias": True}}
_POLAR = {"Dense_0": {"kernel": True, "bias": False}, "head": {"kernel": False, "bias": False}}
_NONE = {"Dense_0": {"kernel": False, "bias": False}, "head": {"kernel": False, "bias": False}}
_MASK_FULL = {"Dense_0": {"kernel": True, "bias": False}, "head": {"kernel": True, "bias": True}}


@pytest.mark.parametrize(
    ("name", "mask", "applied"),
    [
        ("sign_descent", None, _FULL),
        ("sign_descent", _MASK, _MASK_FULL),
        ("normalized_sgd", _CALLABLE, _DEFAULT_MODULAR),
        ("spectral_descent", _MASK, _MASK_FULL),
        ("modular_descent", None, _DEFAULT_MODULAR),  # its default: the matrix roles
        ("modular_descent", _MASK, _MASK_FULL),  # a given mask replaces the default
        # Muon's family: weight_decay is the orthogonalized leaves' (Dense_0/kernel; the head and
        # the biases take Adam's, adam_weight_decay = 0 here), masked as optax.contrib.muon masks.
        ("muon", None, _POLAR),
        ("muon", {"Dense_0": False, "head": True}, _NONE),
        ("normuon", _CALLABLE, _POLAR),
        ("adamuon", {"Dense_0": {"kernel": False, "bias": True}, "head": True}, _NONE),
    ],
)
def test_weight_decay_mask_decays_exactly_where_it_says(name, mask, applied):
    params, lr, lam = _params(), 0.1, 0.3
    factory = getattr(optimizers, name)
    kw = dict(weight_decay_mask=mask)
    kw[("beta" if "muon" in name else "momentum")] = 0.5
    decayed, _ = _run(factory(lr, weight_decay=lam, **kw), params, 2)
    plain, _ = _run(factory(lr, **kw), params, 2)
    for u_wd, u in zip(decayed, plain, strict=True):
        want = jax.tree.map(
            lambda on, w: -lr * lam * np.asarray(w, np.float64) * on, applied, params
        )
        got = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), u_wd, u)
        chex.assert_trees_all_close(got, want, atol=1e-6)


def test_prodigy_weight_decay_mask():
    """At fixed weights η stays η_0 (``<g, w_0 - w> = 0``), so the decayed update minus the
    undecayed one is ``-lr η_0 bc_t λ w`` where the mask is True, ``bc_t = √(1-β₂^t)/(1-β₁^t)``."""
    params, lr, lam, (b1, b2) = _params(), 0.5, 0.3, (0.9, 0.999)
    kw = dict(estim_lr0=1.0, betas=(b1, b2), weight_decay_mask=_MASK)
    decayed, _ = _run(optimizers.prodigy(lr, weight_decay=lam, **kw), params, 3)
    plain, _ = _run(optimizers.prodigy(lr, **kw), params, 3)
    for t, (u_wd, u) in enumerate(zip(decayed, plain, strict=True), start=1):
        bc = np.sqrt(1 - b2**t) / (1 - b1**t)
        want = jax.tree.map(
            lambda on, w, bc=bc: -lr * bc * lam * np.asarray(w, np.float64) * on, _MASK_FULL, params
        )
        got = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), u_wd, u)
        chex.assert_trees_all_close(got, want, atol=1e-6)


# ---- mu_dtype ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "sign_descent",
        "normalized_sgd",
        "spectral_descent",
        "modular_descent",
        "scion",
        "muon",
        "normuon",
        "adamuon",
    ],
)
def test_mu_dtype_stores_the_momentum_in_that_dtype(name):
    params = _params()
    beta = {("beta" if "muon" in name else "momentum"): 0.9}
    _, state = _run(getattr(optimizers, name)(0.1, mu_dtype=jnp.bfloat16, **beta), params, 1)
    # One momentum buffer for Dense_0/kernel (a hidden kernel: Muon's polar leaf in its family),
    # in bfloat16; second moments (AdaMuon's V, Adam's ν) keep their float32.
    buffers = [x.dtype for x in jax.tree.leaves(state) if jnp.shape(x) == (4, 6)]
    assert buffers.count(jnp.dtype(jnp.bfloat16)) == 1


def test_mu_dtype_update_is_the_recursion_rounded_to_that_dtype():
    """normalized_sgd, β = 0.9: the buffer is ``t_k = bf16(g_k + β t_{k-1})`` (optax.trace's) and
    the update ``-lr n/‖n‖₂`` per leaf with ``n = g_k + β t_{k-1}``, the buffer before rounding.
    ``β t`` multiplies a bfloat16 buffer by a weakly typed β: XLA takes ``bf16(β) · t`` in float32
    (excess precision) or rounds the product to bfloat16; the stored buffer must be one of the
    two, bit for bit, and the update that same one's."""
    params, lr, beta = _params(), 0.1, 0.9
    tx = optimizers.normalized_sgd(lr, momentum=beta, mu_dtype=jnp.bfloat16)
    update, state = jax.jit(tx.update), tx.init(params)
    trace = {
        k: {n: np.zeros(v.shape, ml_dtypes.bfloat16) for n, v in d.items()}
        for k, d in params.items()
    }
    b16 = ml_dtypes.bfloat16(beta)
    for t in range(4):
        g = _grads(params, t)
        u, state = update(g, state, params)
        stored = optax.tree_utils.tree_get(state, "trace")
        for k, d in params.items():
            for n in d:
                gk, tk = np.asarray(g[k][n], np.float32), trace[k][n]
                candidates = [
                    gk + np.float32(b16) * tk.astype(np.float32),
                    gk + (tk * b16).astype(np.float32),
                ]
                got = np.asarray(stored[k][n])
                assert got.dtype == ml_dtypes.bfloat16
                match = [c for c in candidates if np.array_equal(c.astype(ml_dtypes.bfloat16), got)]
                assert match, (t, k, n)
                np.testing.assert_allclose(
                    u[k][n], -lr * match[0] / np.linalg.norm(match[0]), rtol=1e-5, atol=1e-7
                )
                trace[k][n] = got


# ---- bias-corrected momentum ---------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
def test_bias_corrected_momentum_is_optax_contrib_muons_form(nesterov):
    """``m_t/(1-β^t)``; Nesterov ``β m_t/(1-β^{t+1}) + (1-β) g_t/(1-β^t)``, in float64 NumPy."""
    beta = 0.9
    tx = ema_momentum(beta, nesterov, bias_correction=True)
    g = [np.random.default_rng(t).standard_normal((3, 2)) for t in range(5)]
    state, m = tx.init(jnp.zeros((3, 2))), np.zeros((3, 2))
    for t, gt in enumerate(g, start=1):
        out, state = jax.jit(tx.update)(jnp.asarray(gt), state)
        m = beta * m + (1 - beta) * gt
        if nesterov:
            want = beta * m / (1 - beta ** (t + 1)) + (1 - beta) * gt / (1 - beta**t)
        else:
            want = m / (1 - beta**t)
        np.testing.assert_allclose(out, want, rtol=1e-12)


# ---- frozen leaves -------------------------------------------------------------------------------

_FROZEN = {"head/bias": "frozen", "Dense_0/kernel": "frozen"}


def _without_frozen(tree):
    return {
        "Dense_0": {"bias": tree["Dense_0"]["bias"]},
        "head": {"kernel": tree["head"]["kernel"]},
    }


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("modular_descent", dict(momentum=0.9, weight_decay=0.1)),
        ("modular_descent", dict(momentum=0.9, step="dual_norm", sharpness=2.0)),
        ("modular_descent", dict(escape_velocity=True)),
        ("scion", dict(momentum=0.9)),
    ],
)
def test_frozen_leaves_get_zero_updates_and_leave_the_others_alone(name, kw):
    params = _params()
    factory = getattr(optimizers, name)
    # The head is named: no leaf changes role when others freeze.
    lr = 1.0 if kw.get("escape_velocity") else 0.1
    updates, state = _run(factory(lr, labels=_FROZEN, **kw), params, 3)
    for u in updates:
        assert not np.any(np.asarray(u["head"]["bias"]))
        assert not np.any(np.asarray(u["Dense_0"]["kernel"]))
    if kw.get("momentum"):  # no momentum buffer for them (the escape-velocity anchor keeps w_0)
        floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
        shapes = {tuple(np.shape(x)) for x in floats}
        assert (4, 6) not in shapes
        assert (3,) not in shapes
    rest = _without_frozen(params)
    want, _ = _run(factory(lr, **kw), rest, 3)
    for u, w in zip(updates, want, strict=True):
        chex.assert_trees_all_close(_without_frozen(u), w, atol=1e-6, rtol=1e-5)


def test_frozen_takes_no_norm():
    with pytest.raises(ValueError, match=r"'frozen' role takes no norm"):
        optimizers.modular_descent(0.1, norms={"frozen": norms.rms()})


# ---- the step defaults ---------------------------------------------------------------------------


def test_documented_step_defaults():
    defaults = {
        f: inspect.signature(f).parameters["step"].default
        for f in (normtx.modular_norm_partition, optimizers.modular_descent)
    }
    assert defaults == {
        normtx.modular_norm_partition: "dual_norm",
        optimizers.modular_descent: "unit",
    }
    # modular_norm_partition(): the Prop. 7 step (η/s) U Vᵀ √(d_out/d_in) with
    # η = Σ_k N_k†(G_k)/(s_k λ); modular_descent(lr, momentum=0): -lr · dualize(g) (unit step).
    # Exact polar factors (SVD) so the closed forms hold to rounding.
    exact = {"hidden": norms.rms_to_rms(), "head": norms.rms_to_rms()}
    params = {
        "Dense_0": {"kernel": _params()["Dense_0"]["kernel"]},
        "head": {"kernel": _params()["head"]["kernel"]},
    }
    g = _grads(params, 0)
    leaves = {k: np.asarray(v["kernel"], np.float64) for k, v in g.items()}
    polar, duals = {}, {}
    for k, x in leaves.items():
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        d_in, d_out = x.shape
        polar[k] = np.sqrt(d_out / d_in) * (u @ vt)
        duals[k] = np.sqrt(d_out / d_in) * s.sum()
    lam = 2.0
    eta = sum(duals.values()) / lam
    tx = normtx.modular_norm_partition(norms=exact, sharpness=lam)
    u, _ = jax.jit(tx.update)(g, tx.init(params))
    for k in leaves:
        np.testing.assert_allclose(u[k]["kernel"], eta * polar[k], rtol=1e-5, atol=1e-6)
    tx = optimizers.modular_descent(0.1, momentum=0.0, norms=exact)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    for k in leaves:
        np.testing.assert_allclose(u[k]["kernel"], -0.1 * polar[k], rtol=1e-5, atol=1e-6)


# ---- optax_labels --------------------------------------------------------------------------------


def test_optax_labels_route_optax_partition_by_role():
    params = _params()
    labels = normtx.roles.optax_labels(params)
    assert labels == {
        "Dense_0": {"kernel": "hidden", "bias": "bias"},
        "head": {"kernel": "head", "bias": "bias"},
    }
    tx = optax.partition(
        {"hidden": optax.sgd(1.0), "head": optax.sgd(2.0), "bias": optax.set_to_zero()}, labels
    )
    g = _grads(params, 0)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    np.testing.assert_array_equal(u["Dense_0"]["kernel"], -g["Dense_0"]["kernel"])
    np.testing.assert_array_equal(u["head"]["kernel"], -2.0 * g["head"]["kernel"])
    for k in ("Dense_0", "head"):
        assert not np.any(np.asarray(u[k]["bias"]))
    frozen = normtx.roles.optax_labels(params, labels={"head/kernel": "frozen"})
    assert frozen["head"]["kernel"] == "frozen"
    assert frozen["Dense_0"]["kernel"] == "hidden"  # the frozen head keeps its place
