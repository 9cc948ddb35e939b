"""``normtx.optimizers.muon`` against ``optax.contrib.muon``, its knobs, and the export of its routing.

The oracle is optax's own implementation, given normtx's routing by
``normtx.roles.muon_dimension_numbers`` (the same leaves to Muon and to Adam on both sides):

- a Flax nnx transformer trained 50 steps by each optimizer from the same weights on the same
  batches ends at the same weights (1e-5), with the settings the muon docstring names
  (``bias_correction=True, adam_nesterov=True``);
- every knob that has an optax counterpart (``nesterov``, ``consistent_rms``, ``adaptive``,
  ``normalization='schatten4'`` = optax's ``preconditioning='schatten'``, ``weight_decay_mask``,
  ``mu_dtype``, ``ns_steps``, ``beta``, the Adam hyperparameters) gives optax's updates when both
  optimizers are fed the same gradients at the same weights;
- conv kernels and scanned stacks are exported with their dimension numbers (per matrix, as normtx
  orthogonalizes them);
- leaves labelled ``'frozen'`` get a zero update and no state.
"""

from __future__ import annotations

import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import normtx
from normtx.optimizers import muon

# The settings that make normtx's Muon optax's (see the muon docstring).
AS_OPTAX = dict(bias_correction=True, adam_nesterov=True)


class _Block(nnx.Module):
    def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        # No q/k/v biases: a key bias has a zero gradient (softmax is shift invariant), whose
        # rounding noise Adam would amplify into O(1) steps that differ between any two programs.
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=d, qkv_features=d, decode=False, use_bias=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = nnx.Linear(d, 2 * d, rngs=rngs)
        self.down = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class _LM(nnx.Module):
    def __init__(self, vocab: int, d: int, heads: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.block = _Block(d, heads, rngs)
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        mask = nnx.make_causal_mask(tokens)
        return self.head(self.ln(self.block(self.embed(tokens), mask)))


def test_matches_optax_contrib_muon_over_50_steps_of_a_flax_transformer():
    model = _LM(vocab=17, d=12, heads=2, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batches = jax.random.randint(jax.random.key(1), (50, 4, 7), 0, 17)

    def loss(params, batch):
        logits = nnx.merge(graphdef, params, rest)(batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    def train(params, tx):
        def step(carry, batch):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p, batch), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), batches)[0][0])(params)

    dims = normtx.roles.muon_dimension_numbers(params)
    # Muon on the hidden and attention kernels; Adam on the embedding, the head, biases and gains.
    routed = {
        path: d is not None
        for path, d in normtx._pytree.flatten_with_paths(
            dims, is_leaf=lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers)
        )[0]
    }
    assert {p for p, on in routed.items() if on} == {
        "block/attn/query/kernel",
        "block/attn/key/kernel",
        "block/attn/value/kernel",
        "block/attn/out/kernel",
        "block/up/kernel",
        "block/down/kernel",
    }
    hyper = dict(adam_learning_rate=3e-3, weight_decay=0.1, adam_weight_decay=0.01)
    want = train(params, optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims, **hyper))
    got = train(params, muon(0.02, **AS_OPTAX, **hyper))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), want, params)
    assert min(jax.tree.leaves(moved)) > 1e-2  # every leaf trained
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=0)


# ---- every knob against optax, on the same gradients at the same weights ------------------------


def _tree():
    """A conv kernel, a scanned stack of Dense layers (with its bias), a head and vectors."""
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s) / np.sqrt(s[-2]), jnp.float32)  # noqa: E731
    return {
        "Conv_0": {"kernel": f(3, 3, 2, 4), "bias": jnp.zeros(4, jnp.float32)},
        "ScanBlock": {
            "Dense_0": {"kernel": f(3, 4, 6), "bias": jnp.zeros((3, 6), jnp.float32)},
            "LayerNorm_0": {"scale": jnp.ones((3, 6), jnp.float32)},
        },
        "Dense_1": {"kernel": f(6, 9)},
        "head": {"kernel": f(9, 5)},
    }


def _updates(tx, params, steps):
    """Updates of ``tx`` fed fixed gradients at fixed weights: per leaf a common direction plus
    noise, drawn from the leaf's path (a leaf gets the same gradients in any tree)."""

    def draws(path, p):
        rng = np.random.default_rng(zlib.crc32(jax.tree_util.keystr(path).encode()))
        common = rng.standard_normal(p.shape)
        noise = rng.standard_normal((steps, *p.shape))
        return jnp.asarray(common + 0.5 * noise, p.dtype)

    grads = jax.tree_util.tree_map_with_path(draws, params)

    @jax.jit
    def run(params):
        def step(state, g):
            u, state = tx.update(g, state, params)
            return state, u

        return jax.lax.scan(step, tx.init(params), grads)

    return run(params)


def test_dimension_numbers_of_conv_kernels_and_scanned_stacks():
    dims = normtx.roles.muon_dimension_numbers(_tree())
    mdn = optax.contrib.MuonDimensionNumbers
    assert dims["Conv_0"]["kernel"] == mdn(reduction_axis=(0, 1, 2), output_axis=(3,))
    assert dims["ScanBlock"]["Dense_0"]["kernel"] == mdn(reduction_axis=(1,), output_axis=(2,))
    assert dims["Dense_1"]["kernel"] == mdn(reduction_axis=(0,), output_axis=(1,))
    for leaf in (
        dims["head"]["kernel"],
        dims["Conv_0"]["bias"],
        dims["ScanBlock"]["Dense_0"]["bias"],
        dims["ScanBlock"]["LayerNorm_0"]["scale"],
    ):
        assert leaf is None


_MASK = {
    "Conv_0": {"kernel": True, "bias": False},
    "ScanBlock": {"Dense_0": {"kernel": False, "bias": False}, "LayerNorm_0": False},
    "Dense_1": True,
    "head": False,
}
# (optax's keyword, normtx's keyword) pairs: one optax setting each, all active together.
KNOBS = {
    "plain": {},
    "no_nesterov_rms_mask_counts": dict(
        nesterov=(False, False),
        consistent_rms=(0.2, 0.2),
        weight_decay_mask=(_MASK, _MASK),
        ns_steps=(3, 3),
        beta=(0.9, 0.9),
        eps=(1e-6, None),
        adam_eps=(None, 1e-6),
        adam_b1=(0.8, 0.8),
        adam_b2=(0.99, 0.99),
        adam_eps_root=(1e-6, 1e-6),
    ),
    "adaptive_schatten_bfloat16": dict(
        adaptive=(True, True),
        preconditioning=("schatten", None),
        normalization=(None, "schatten4"),
        mu_dtype=(jnp.bfloat16, jnp.bfloat16),
    ),
    "aol": dict(preconditioning=("aol", None), normalization=(None, "aol")),
}


@pytest.mark.parametrize("knobs", list(KNOBS))
def test_each_knob_gives_optax_contrib_muons_updates(knobs):
    params = _tree()
    ref_kw = {k: v[0] for k, v in KNOBS[knobs].items() if v[0] is not None}
    our_kw = {k: v[1] for k, v in KNOBS[knobs].items() if v[1] is not None}
    hyper = dict(adam_learning_rate=3e-3, weight_decay=0.1, adam_weight_decay=0.01)
    dims = normtx.roles.muon_dimension_numbers(params)
    ref = optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims, **hyper, **ref_kw)
    nesterov = ref_kw.get("nesterov", True)
    ours = muon(0.02, bias_correction=True, adam_nesterov=nesterov, **hyper, **our_kw)
    want_state, want = _updates(ref, params, steps=6)
    got_state, got = _updates(ours, params, steps=6)
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-5)
    if "mu_dtype" in our_kw:  # the momentum buffers (and Adam's first moments) in bfloat16
        for state in (got_state, want_state):
            assert jnp.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(state)}


def test_consistent_rms_replaces_the_shape_factor_only():
    with pytest.raises(ValueError, match=r"muon: consistent_rms .* scale, which must stay 'muon'"):
        muon(0.02, consistent_rms=0.2, scale="spectral")
    with pytest.raises(ValueError, match=r"muon: consistent_rms must be > 0"):
        muon(0.02, consistent_rms=0.0)
    with pytest.raises(ValueError, match=r"muon: mu_dtype must be None .* got 'int8'"):
        muon(0.02, mu_dtype="int8")


def test_the_first_step_is_optaxs_without_bias_correction_but_not_the_second():
    """Bias correction only reweighs Nesterov's two terms: step 1 is the same polar factor."""
    params = {"Dense_0": {"kernel": _tree()["Dense_1"]["kernel"]}}
    dims = normtx.roles.muon_dimension_numbers(params, head=False)  # one hidden kernel
    ref = optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims)
    _, want = _updates(ref, params, steps=2)
    _, got = _updates(muon(0.02, head=False), params, steps=2)
    first = lambda t: jax.tree.map(lambda x: x[0], t)  # noqa: E731
    second = lambda t: jax.tree.map(lambda x: x[1], t)  # noqa: E731
    chex.assert_trees_all_close(first(got), first(want), atol=1e-6)
    diff = float(
        jnp.max(jnp.abs(second(got)["Dense_0"]["kernel"] - second(want)["Dense_0"]["kernel"]))
    )
    assert diff > 1e-4


# ---- frozen leaves -----------------------------------------------------------------------------


@pytest.mark.parametrize("others", ["adamw", "modular"])
def test_frozen_leaves_get_zero_updates_and_no_state(others):
    params = _tree()
    frozen = {"head/kernel": "frozen", "Dense_1/kernel": "frozen"}
    tx = muon(0.02, labels=frozen, others=others, weight_decay=0.1)
    state, updates = _updates(tx, params, steps=3)
    for path in ("head", "Dense_1"):
        assert not np.any(np.asarray(updates[path]["kernel"]))
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    shapes = {tuple(np.shape(x)) for x in floats}
    assert (6, 9) not in shapes  # no momentum or moments for them
    assert (9, 5) not in shapes
    # The other leaves get what they get without the frozen ones.
    rest = {k: v for k, v in params.items() if k not in ("head", "Dense_1")}
    _, want = _updates(muon(0.02, others=others, weight_decay=0.1), rest, steps=3)
    chex.assert_trees_all_close({k: updates[k] for k in rest}, want, atol=1e-6)
    table = normtx.roles.describe(params, labels=frozen)
    assert [r[2] for r in table.rows if r[0] in ("head/kernel", "Dense_1/kernel")] == [
        "frozen",
        "frozen",
    ]
