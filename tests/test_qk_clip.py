"""``qk_clip`` (MuonClip, Kimi K2 §2.1) against NumPy float64 closed forms and recomputed logits.

- Closed form: ``params + updates' = clip(params + updates)``, the query and key slices of each
  head with ``S_max > τ`` scaled by ``√(τ/S_max)``, recomputed in NumPy on hand-built trees (Flax
  layout, stacked layers, explicit ``QKLeaf`` trees for other layouts). Heads at or below τ and
  every other leaf: the updates bit for bit.
- Acceptance: a one-layer ``nnx.MultiHeadAttention`` trained by Muon at a large learning rate. Its
  largest logit (recomputed from the parameters by a NumPy float64 attention, independent of Flax
  and of the sown values) passes τ several times over without the clip; with the clip, after every
  step it is at most τ on the batch.
- The Flax recipe: ``sow_max_logits`` + ``collect_max_logits`` give the NumPy oracle's per-head
  maxima (masks included) in nnx and linen, keyed by the paths ``flax_mha_heads`` finds.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import normtx
from normtx.transforms import QKLeaf, collect_max_logits, sow_max_logits

TAU = 100.0


def _normal(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _flax_tree(seed=0):
    """Two attention modules in Flax's layout (one with biases) and leaves that are neither."""
    rng = np.random.default_rng(seed)
    return {
        "block0": {
            "attn": {
                "query": {"kernel": _normal(rng, 6, 3, 4), "bias": _normal(rng, 3, 4)},
                "key": {"kernel": _normal(rng, 6, 3, 4), "bias": _normal(rng, 3, 4)},
                "value": {"kernel": _normal(rng, 6, 3, 4)},
                "out": {"kernel": _normal(rng, 3, 4, 6)},
            }
        },
        "block1": {
            "attn": {
                "query": {"kernel": _normal(rng, 6, 3, 4)},
                "key": {"kernel": _normal(rng, 6, 3, 4)},
            }
        },
        "head": {"kernel": _normal(rng, 6, 2)},
    }


# Heads above τ (clipped), exactly at τ and below (untouched).
LOGITS = {
    "block0/attn": np.array([120.0, 50.0, TAU], np.float32),
    "block1/attn": np.array([300.0, 99.9, 1e3], np.float32),
}


def _along(values, axes, shape):
    """One value per head laid along the leaf's head ``axes``, broadcastable to ``shape``."""
    target = [1] * len(shape)
    for a in axes:
        target[a] = shape[a]
    return np.transpose(values, np.argsort(axes)).reshape(target)


def _oracle(params, updates, axes_of, logits, tau=TAU):
    """NumPy float64 ``clip(params + updates)`` and the boolean trees of clipped entries;
    ``axes_of(path) -> (module, head_axes) | None``."""
    flat_p, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, clipped = [], []
    for (path, p), u in zip(flat_p, jax.tree.leaves(updates)):
        new = np.asarray(p, np.float64) + np.asarray(u, np.float64)
        mask = np.zeros(new.shape, bool)
        where = axes_of("/".join(str(k.key) for k in path))
        if where is not None:
            module, axes = where
            s = np.asarray(logits[module], np.float64)
            new = new * _along(np.where(s > tau, np.sqrt(tau / s), 1.0), axes, new.shape)
            mask = np.broadcast_to(_along(s > tau, axes, new.shape), new.shape)
        out.append(new)
        clipped.append(mask)
    return jax.tree_util.tree_unflatten(treedef, out), jax.tree_util.tree_unflatten(
        treedef, clipped
    )


def _flax_axes(path):
    keys = path.split("/")
    if keys[-2] not in ("query", "key"):
        return None
    return "/".join(keys[:-2]), (1,) if keys[-1] == "kernel" else (0,)


def _check_clip(params, updates, new_updates, oracle):
    """Clipped entries: ``params + updates'`` is the oracle; the others: ``updates`` bitwise."""
    want, clipped = oracle
    for p, u, v, w, m in zip(*map(jax.tree.leaves, (params, updates, new_updates, want, clipped))):
        assert v.dtype == u.dtype
        np.testing.assert_allclose(np.asarray(p + v, np.float64), w, rtol=2e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(v)[~m], np.asarray(u)[~m])  # bit for bit
    assert any(m.any() for m in jax.tree.leaves(clipped))


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_clipped_heads_are_scaled_by_sqrt_tau_over_s_and_the_rest_is_untouched(jit):
    params, updates = _flax_tree(0), _flax_tree(1)
    tx = normtx.qk_clip(threshold=TAU)
    update = jax.jit(tx.update) if jit else tx.update
    nested = {"block0": {"attn": LOGITS["block0/attn"]}, "block1/attn": LOGITS["block1/attn"]}
    new, state = update(updates, tx.init(params), params, max_logits=nested)
    _check_clip(params, updates, new, _oracle(params, updates, _flax_axes, LOGITS))
    for module, s in LOGITS.items():
        s64 = s.astype(np.float64)
        np.testing.assert_allclose(
            state.factors[module], np.where(s64 > TAU, np.sqrt(TAU / s64), 1.0), rtol=2e-7
        )
    assert int(state.num_clipped) == 3
    assert int(state.count) == 1
    chex.assert_trees_all_equal(new["head"], updates["head"])
    chex.assert_trees_all_equal(new["block0"]["attn"]["value"], updates["block0"]["attn"]["value"])


def test_heads_at_or_below_the_threshold_are_untouched_bit_for_bit():
    params, updates = _flax_tree(0), _flax_tree(1)
    tx = normtx.qk_clip(threshold=TAU)
    below = {
        "block0/attn": np.array([TAU, -5.0, 0.0], np.float32),
        "block1/attn": np.array([99.0, 1.0, TAU], np.float32),
    }
    new, state = jax.jit(tx.update)(updates, tx.init(params), params, max_logits=below)
    chex.assert_trees_all_equal(new, updates)
    assert int(state.num_clipped) == 0
    chex.assert_trees_all_equal(state.factors, jax.tree.map(lambda s: np.ones_like(s), below))


def test_stacked_layers_and_explicit_head_axes():
    """Flax's layout with a leading layer axis (max logits ``(n_layers, heads)``), and a custom
    layout given as a ``QKLeaf`` tree: a query ``(heads, d, head_dim)`` and a key
    ``(d, head_dim, heads)`` with their head axes in different places."""
    rng = np.random.default_rng(2)
    params = {
        "layers": {
            "attn": {
                "query": {"kernel": _normal(rng, 2, 6, 3, 4)},
                "key": {"kernel": _normal(rng, 2, 6, 3, 4)},
            }
        },
        "custom": {
            "wq": _normal(rng, 3, 6, 4),
            "wk": _normal(rng, 6, 4, 3),
            "wo": _normal(rng, 12, 6),
        },
    }
    updates = jax.tree.map(lambda x: 0.1 * x[::-1], params)
    logits = {
        "layers/attn": np.array([[150.0, 1.0, 101.0], [2.0, 400.0, 3.0]], np.float32),
        "mine": np.array([1.0, 250.0, 7.0], np.float32),
    }

    def heads(path, leaf):
        if path.startswith("layers/"):
            return normtx.transforms.flax_mha_heads(path, leaf)
        return {
            "custom/wq": QKLeaf("mine", "query", (0,)),
            "custom/wk": QKLeaf("mine", "key", (-1,)),
        }.get(path)

    def axes_of(path):
        return {
            "layers/attn/query/kernel": ("layers/attn", (0, 2)),
            "layers/attn/key/kernel": ("layers/attn", (0, 2)),
            "custom/wq": ("mine", (0,)),
            "custom/wk": ("mine", (2,)),
        }.get(path)

    tree_spec = {
        "layers": {
            "attn": {
                "query": {"kernel": QKLeaf("layers/attn", "query", (0, 2))},
                "key": {"kernel": QKLeaf("layers/attn", "key", (0, 2))},
            }
        },
        "custom": {
            "wq": QKLeaf("mine", "query", (0,)),
            "wk": QKLeaf("mine", "key", (2,)),
            "wo": None,
        },
    }
    oracle = _oracle(params, updates, axes_of, logits)
    for spec in (heads, tree_spec):
        tx = normtx.qk_clip(threshold=TAU, heads=spec)
        new, state = jax.jit(tx.update)(updates, tx.init(params), params, max_logits=logits)
        _check_clip(params, updates, new, oracle)
        assert int(state.num_clipped) == 4


def test_nan_max_logits_are_visible_not_hidden():
    params, updates = _flax_tree(0), _flax_tree(1)
    tx = normtx.qk_clip(threshold=TAU)
    logits = {**LOGITS, "block0/attn": np.array([np.nan, 1.0, 1.0], np.float32)}
    new, _ = jax.jit(tx.update)(updates, tx.init(params), params, max_logits=logits)
    q = np.asarray(new["block0"]["attn"]["query"]["kernel"])
    assert np.isnan(q[:, 0]).all()
    assert np.isfinite(q[:, 1:]).all()
    assert not bool(normtx.diagnostics(None, new)["finite"])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64])
def test_updates_keep_their_dtype_under_strict_promotion(dtype):
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), _flax_tree(0))
    logits = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32), LOGITS)
    tx = normtx.qk_clip(threshold=TAU)
    with jax.numpy_dtype_promotion("strict"):
        state = jax.eval_shape(tx.init, params)
        new, new_state = jax.eval_shape(
            lambda u, s, p, m: tx.update(u, s, p, max_logits=m), params, state, params, logits
        )
    chex.assert_trees_all_equal_shapes_and_dtypes(new, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)


def test_inject_hyperparams_schedule_jit_and_orbax_checkpoint(tmp_path):
    """The threshold injected (changed in the state: the plain factory with the new value), as a
    schedule (``τ_t`` at step ``t``), and a checkpoint after one step resumes bit for bit."""
    params, updates = _flax_tree(0), _flax_tree(1)
    run = lambda tx, state, p=params: jax.jit(tx.update)(updates, state, p, max_logits=LOGITS)  # noqa: E731
    injected = optax.inject_hyperparams(normtx.qk_clip)(threshold=TAU)
    u_inj, s_inj = run(injected, injected.init(params))
    u_ref, s_ref = run(normtx.qk_clip(threshold=TAU), normtx.qk_clip(threshold=TAU).init(params))
    chex.assert_trees_all_equal((u_inj, s_inj.inner_state), (u_ref, s_ref))
    s_half = s_inj._replace(hyperparams={"threshold": jnp.asarray(TAU / 2, jnp.float32)})
    u_half, _ = run(injected, s_half)
    plain = normtx.qk_clip(threshold=TAU / 2)
    chex.assert_trees_all_equal(u_half, run(plain, plain.init(params))[0])
    assert not np.array_equal(
        u_half["block0"]["attn"]["query"]["kernel"], u_inj["block0"]["attn"]["query"]["kernel"]
    )

    scheduled = normtx.qk_clip(threshold=lambda count: TAU / (1 + count))
    _, s1 = run(scheduled, scheduled.init(params))
    _, s2 = run(scheduled, s1)
    s64 = LOGITS["block1/attn"].astype(np.float64)
    np.testing.assert_allclose(
        s2.factors["block1/attn"], np.where(s64 > TAU / 2, np.sqrt(TAU / 2 / s64), 1), rtol=2e-7
    )

    ckpt = ocp.StandardCheckpointer()
    item = {"params": params, "opt_state": s_inj}
    ckpt.save(tmp_path / "state", item)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "state", jax.tree.map(ocp.utils.to_shape_dtype_struct, item))
    chex.assert_trees_all_equal(restored, item)
    chex.assert_trees_all_equal(run(injected, restored["opt_state"]), run(injected, s_inj))


# ---- the Flax recipe and the acceptance test ------------------------------------------------------


def _attention_max_logits(query, key, x, causal=False):
    """NumPy float64: each head's largest ``q·k/√d`` for ``DenseGeneral`` params ``{kernel, bias}``."""
    x = np.asarray(x, np.float64)

    def project(p):
        return np.einsum("bti,ihd->bthd", x, np.asarray(p["kernel"], np.float64)) + np.asarray(
            p.get("bias", 0.0), np.float64
        )

    q, k = project(query), project(key)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    return logits.max(axis=(0, 2, 3))


class _Attention(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(
            num_heads=4,
            in_features=16,
            decode=False,
            rngs=rngs,
            attention_fn=sow_max_logits(nnx.dot_product_attention, nnx.Intermediate),
        )

    def __call__(self, x, mask=None):
        return self.attn(x, mask=mask, sow_weights=True)


def test_sown_max_logits_are_the_attention_logits_in_nnx_and_linen():
    """Causal masks excluded, a layer called twice gives the larger of its two maxima, and the
    module keys are those ``flax_mha_heads`` finds in the parameter tree."""
    rng = np.random.default_rng(3)
    x1, x2 = _normal(rng, 2, 8, 16), 3 * _normal(rng, 2, 8, 16)

    model = _Attention(nnx.Rngs(0))
    causal = nnx.make_causal_mask(x1[..., 0])
    _, sown = nnx.capture(lambda m: (m(x1, mask=causal), m(x2)), nnx.Intermediate)(model)
    got = collect_max_logits(sown)
    p = nnx.to_pure_dict(nnx.state(model, nnx.Param))["attn"]
    want = np.maximum(
        _attention_max_logits(p["query"], p["key"], x1, causal=True),
        _attention_max_logits(p["query"], p["key"], x2),
    )
    assert set(got) == {"attn"}
    np.testing.assert_allclose(got["attn"], want, rtol=1e-5)
    normtx.qk_clip().init(nnx.state(model, nnx.Param))  # the same modules: init accepts them

    layer = nn.MultiHeadDotProductAttention(
        num_heads=4, attention_fn=sow_max_logits(nn.dot_product_attention, "intermediates")
    )
    variables = layer.init(jax.random.key(0), x1)
    _, mutated = layer.apply(
        variables,
        x1,
        mask=nn.make_causal_mask(x1[..., 0]),
        sow_weights=True,
        mutable=["intermediates"],
    )
    got = collect_max_logits(mutated["intermediates"])
    lp = variables["params"]
    np.testing.assert_allclose(
        got["<root>"], _attention_max_logits(lp["query"], lp["key"], x1, causal=True), rtol=1e-5
    )
    tx = normtx.qk_clip()
    tx.update(lp, tx.init(lp), lp, max_logits=got)  # keys and shapes match the params


def test_acceptance_muon_at_a_large_learning_rate_keeps_the_logits_at_most_tau():
    """Muon (lr 0.5) trains a 4-head attention layer (d = 16, sequence 8) to copy the first token.
    Without the clip the largest logit, recomputed from the parameters in NumPy float64, grows
    past 4τ; with ``qk_clip`` (post-update maxima: ``max_logits`` a callable) every head's largest
    logit on the batch is at most τ after every step, and the clip is active. The two runs are one
    compiled program: the threshold is injected, and τ = ∞ never clips (bit for bit the updates
    without the clip, as tested above)."""
    tau, steps = 8.0, 12
    model = _Attention(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(0)
    x = _normal(rng, 4, 8, 16)
    y = jnp.broadcast_to(x[:, :1], x.shape)

    def loss_fn(params):
        out, sown = nnx.capture(nnx.merge(graphdef, params), nnx.Intermediate)(x)
        return jnp.mean((out - y) ** 2), collect_max_logits(sown)

    tx = optax.chain(
        normtx.optimizers.muon(0.5), optax.inject_hyperparams(normtx.qk_clip)(threshold=tau)
    )

    @jax.jit
    def step(params, state):
        (_, sown), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = tx.update(grads, state, params, max_logits=lambda p: loss_fn(p)[1])
        return optax.apply_updates(params, updates), state, sown

    def oracle(params):
        p = nnx.to_pure_dict(params)["attn"]
        return _attention_max_logits(p["query"], p["key"], x)

    peaks = {}
    for threshold in (np.inf, tau):
        state = tx.init(params)
        state = (
            state[0],
            state[1]._replace(hyperparams={"threshold": jnp.asarray(threshold, jnp.float32)}),
        )
        p, history, clipped = params, [], 0
        for t in range(steps):
            p, state, sown = step(p, state)
            if t == 0:  # the sown maxima are the logits of the params before the step
                np.testing.assert_allclose(sown["attn"], oracle(params), rtol=1e-5)
            history.append(oracle(p))
            clipped += int(state[1].inner_state.num_clipped)
        peaks[threshold] = np.max(history)
        if threshold == tau:
            assert np.max(history) <= tau * (1 + 1e-5), np.max(history, axis=1)
            assert clipped >= steps  # clipped heads sit at τ: the bound is the clip's doing
            assert np.isclose(np.max(history[-1]), tau, rtol=1e-5)
    assert peaks[np.inf] > 4 * tau, peaks
