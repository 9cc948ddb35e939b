"""Roles of real Flax parameter trees (linen and nnx), role -> norm binding, and bad input."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import normtx
from normtx import norms, roles
from normtx.roles import Role

HIDDEN = Role("hidden", (0,), (1,))
HEAD = Role("head", (0,), (1,))
EMBEDDING = Role("embedding", (0,), (1,))
CONV = Role("conv", (0, 1, 2), (3,))
QKV = Role("attention", (0,), (1, 2))
OUT = Role("attention", (0, 1), (2,))
BIAS = Role("bias")
GAIN = Role("gain")


def _by_path(tree) -> dict[str, Role]:
    from normtx._pytree import flatten_with_paths

    flat, _ = flatten_with_paths(tree)
    return dict(flat)


# ---- the models ---------------------------------------------------------------------------------


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 16, rngs=rngs)
        self.fc3 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


class NnxBlock(nnx.Module):
    def __init__(self, vocab, d, heads, rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=d, qkv_features=d, decode=False, rngs=rngs
        )
        self.ln = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.embed(tokens)
        x = x + self.attn(self.ln(x))
        return self.head(x)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.LayerNorm()(x)
        x = nn.relu(nn.Conv(8, (3, 3), use_bias=False)(x))
        x = x.mean((1, 2))
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(10)(x)


class _Layer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(num_heads=2)(h, h)
        x = x + h
        return x + nn.Dense(16, use_bias=False)(nn.RMSNorm()(x)), None


class LinenScanned(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(12, 16)(tokens)
        stack = nn.scan(_Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        x, _ = stack(name="layers")(x, None)
        return nn.Dense(12)(x)


def _nnx_params(model):
    return nnx.state(model, nnx.Param)


def _linen_shapes(model, *args):
    """The variables' shapes and dtypes (roles read nothing else; no compilation needed)."""
    return jax.eval_shape(model.init, jax.random.key(0), *args)


def test_nnx_mlp_roles():
    got = _by_path(roles.infer(_nnx_params(NnxMLP(nnx.Rngs(0)))))
    assert got == {
        "fc1/bias": BIAS,
        "fc1/kernel": HIDDEN,
        "fc2/bias": BIAS,
        "fc2/kernel": HIDDEN,
        "fc3/bias": BIAS,
        "fc3/kernel": HEAD,
    }


@pytest.mark.parametrize("heads_as_batch", [False, True])
def test_nnx_transformer_block_roles(heads_as_batch):
    params = _nnx_params(NnxBlock(50, 16, 4, nnx.Rngs(0)))
    got = _by_path(roles.infer(params, heads_as_batch=heads_as_batch))
    qkv = Role("attention", (0,), (2,), batch_axes=(1,)) if heads_as_batch else QKV
    out = Role("attention", (1,), (2,), batch_axes=(0,)) if heads_as_batch else OUT
    head_bias = Role("bias", batch_axes=(0,)) if heads_as_batch else BIAS
    assert got == {
        "attn/key/bias": head_bias,
        "attn/key/kernel": qkv,
        "attn/out/bias": BIAS,
        "attn/out/kernel": out,
        "attn/query/bias": head_bias,
        "attn/query/kernel": qkv,
        "attn/value/bias": head_bias,
        "attn/value/kernel": qkv,
        "embed/embedding": EMBEDDING,
        "head/bias": BIAS,
        "head/kernel": HEAD,
        "ln/bias": BIAS,
        "ln/scale": GAIN,
    }
    # The roles tree has the structure of the nnx State (Param variables holding Roles).
    tree = roles.infer(params)
    assert jax.tree.structure(tree) == jax.tree.structure(params)


def test_linen_cnn_roles():
    variables = _linen_shapes(LinenCNN(), jnp.ones((1, 8, 8, 3)))
    got = _by_path(roles.infer(variables["params"]))
    assert got == {
        "Conv_0/bias": BIAS,
        "Conv_0/kernel": CONV,
        "Conv_1/kernel": CONV,
        "Dense_0/bias": BIAS,
        "Dense_0/kernel": HIDDEN,
        "Dense_1/bias": BIAS,
        "Dense_1/kernel": HEAD,
        "LayerNorm_0/bias": BIAS,
        "LayerNorm_0/scale": GAIN,
    }
    # The whole variables dict works too: paths keep their 'params/' prefix.
    assert set(_by_path(roles.infer(variables))) == {f"params/{p}" for p in got}


def test_linen_scan_stack_roles():
    variables = _linen_shapes(LinenScanned(), jnp.ones((2, 5), jnp.int32))
    got = _by_path(roles.infer(variables["params"]))
    lay = (0,)
    s_bias = Role("bias", layer_axes=lay)
    s_gain = Role("gain", layer_axes=lay)
    s_qkv = Role("attention", (1,), (2, 3), lay)
    mha = "layers/MultiHeadDotProductAttention_0"
    assert got == {
        "Dense_0/bias": BIAS,
        "Dense_0/kernel": HEAD,
        "Embed_0/embedding": EMBEDDING,
        # No bias here: the layer axis is read off the stacked siblings (LayerNorm, RMSNorm).
        "layers/Dense_0/kernel": Role("hidden", (1,), (2,), lay),
        "layers/LayerNorm_0/bias": s_bias,
        "layers/LayerNorm_0/scale": s_gain,
        "layers/RMSNorm_0/scale": s_gain,
        f"{mha}/key/bias": s_bias,
        f"{mha}/key/kernel": s_qkv,
        f"{mha}/out/bias": s_bias,
        f"{mha}/out/kernel": Role("attention", (1, 2), (3,), lay),
        f"{mha}/query/bias": s_bias,
        f"{mha}/query/kernel": s_qkv,
        f"{mha}/value/bias": s_bias,
        f"{mha}/value/kernel": s_qkv,
    }
    assert got["layers/Dense_0/kernel"].scanned
    assert got["layers/Dense_0/kernel"].label == "scanned/hidden"


def test_nnx_vmap_stack_with_tied_embedding_has_no_head():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(8, 8, rngs=rngs)
            self.norm = nnx.RMSNorm(8, rngs=rngs)

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
        return Block(nnx.Rngs(key))

    class Model(nnx.Module):
        def __init__(self):
            self.embed = nnx.Embed(20, 8, rngs=nnx.Rngs(0))
            self.blocks = make(jax.random.split(jax.random.key(0), 3))

    got = _by_path(roles.infer(_nnx_params(Model())))
    assert got == {
        "blocks/lin/bias": Role("bias", layer_axes=(0,)),
        "blocks/lin/kernel": Role("hidden", (1,), (2,), (0,)),
        "blocks/norm/scale": Role("gain", layer_axes=(0,)),
        "embed/embedding": EMBEDDING,
    }


def test_head_by_name_by_regex_and_off():
    params = _nnx_params(NnxMLP(nnx.Rngs(0)))
    got = _by_path(roles.infer(params, head="fc2"))
    assert (got["fc2/kernel"], got["fc3/kernel"]) == (HEAD, HIDDEN)
    got = _by_path(roles.infer(params, head=False))
    assert {got[f"fc{i}/kernel"] for i in (1, 2, 3)} == {HIDDEN}
    # linen numbering compares numbers as numbers: Dense_10 is after Dense_2.
    flat = {f"Dense_{i}": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)} for i in (0, 2, 10)}
    got = _by_path(roles.infer(flat))
    assert got["Dense_10/kernel"] == HEAD
    assert got["Dense_2/kernel"] == HIDDEN
    # 'Dense_1' matches a whole trailing component: not Dense_10.
    flat["Dense_1"] = {"kernel": jnp.ones((3, 3))}
    got = _by_path(roles.infer(flat, head="Dense_1"))
    assert (got["Dense_1/kernel"], got["Dense_10/kernel"]) == (HEAD, HIDDEN)


def _three_dense(*, head_name="Dense_2"):
    names = ("Dense_0", "Dense_1", head_name)
    shapes = ((3, 4), (4, 4), (4, 2))
    return {n: {"kernel": jnp.ones(k), "bias": jnp.ones(k[1])} for n, k in zip(names, shapes)}


def test_head_by_position_warns_and_is_noted_in_the_table():
    """Issue 15, item 4: the last top-level Dense kernel became the head silently. It is reported:
    a warning naming it and how to confirm it, and a note in its row of the table; a head named
    by the user or by its module's name gives neither."""
    params = _three_dense()
    with pytest.warns(UserWarning, match=r"'Dense_2/kernel'.*head by position.*head='Dense_2'"):
        table = roles.describe(params)
    notes = {row[0]: row[-1] for row in table.rows}
    assert table.header[-1] == "note"
    assert notes.pop("Dense_2/kernel") == "head by position (pass head=)"
    assert set(notes.values()) == {""}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for confirmed in (
            roles.describe(params, head="Dense_2"),
            roles.describe(_three_dense(head_name="head")),
            roles.describe(params, head=False),
        ):
            assert {row[-1] for row in confirmed.rows} == {""}
        assert _by_path(roles.infer(params, head="Dense_2"))["Dense_2/kernel"] == HEAD


def _masked(tree, *paths):
    """``tree`` with the leaves at ``paths`` replaced by ``optax.MaskedNode()`` (as optax.masked
    and optax.partition pass them to the inner transform)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (
            optax.MaskedNode()
            if jax.tree_util.keystr(p, simple=True, separator="/") in paths
            else x
        ),
        tree,
    )


MASKED = {  # (tree, masked paths, the whole tree's head or None)
    "head_by_position": (_three_dense(), ("Dense_2/kernel", "Dense_2/bias"), "Dense_2/kernel"),
    "a_hidden_layer": (_three_dense(), ("Dense_0/kernel",), "Dense_2/kernel"),
    "head_by_name": (_three_dense(head_name="head"), ("head/kernel",), None),
}


@pytest.mark.parametrize("case", list(MASKED))
def test_masked_leaves_keep_their_place_in_the_head_rule(case):
    """Issue 15, item 4: under ``optax.partition(..., set_to_zero)`` on the head (or
    ``optax.masked``) the inner transform sees the head as ``optax.MaskedNode``; the rule then made
    the last hidden layer the head. Each visible leaf now gets its role in the whole tree."""
    full, paths, head = MASKED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _by_path(roles.infer(full))
    tree = _masked(full, *paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _by_path(roles.infer(tree))
    assert got == {p: r for p, r in want.items() if p not in paths}
    if head is None:
        assert not caught
    else:
        (w,) = caught
        assert f"{head!r}, the last Dense kernel" in str(w.message)
        assert ("masked out here" in str(w.message)) == (head in paths)
    # Naming the masked head, labelling masked leaves or giving their roles is no error.
    named = head or "head/kernel"
    got = _by_path(roles.infer(tree, head=named.rsplit("/", 1)[0]))
    assert got == {p: r for p, r in want.items() if p not in paths}
    assert _by_path(roles.infer(tree, labels={paths[0]: "frozen"})) == got
    explicit = roles.infer(full, head=named.rsplit("/", 1)[0])
    assert _by_path(roles.Geometry(explicit).resolve(tree)) == got


def test_labels_regex_callable_role_and_scanned_names():
    params = {
        "pos_embedding": jnp.ones((10, 4)),
        "w": jnp.ones((3, 4, 5)),
        "mix": {"kernel": jnp.ones((4, 2, 3)), "bias": jnp.ones((2, 3))},
    }
    got = _by_path(
        roles.infer(
            params,
            labels={
                "pos_embedding": "embedding",
                "w": "scanned/hidden",
                "mix/kernel": Role("hidden", (0,), (1, 2)),
                "mix/bias": "bias",
            },
        )
    )
    assert got == {
        "pos_embedding": EMBEDDING,
        "w": Role("hidden", (1,), (2,), (0,)),
        "mix/kernel": Role("hidden", (0,), (1, 2)),
        "mix/bias": BIAS,
    }
    by_callable = roles.infer(
        params,
        labels=lambda path, leaf: {"pos_embedding": "embedding", "w": "conv"}.get(
            path, "bias" if leaf.ndim < 3 else Role("hidden", (0,), (1, 2))
        ),
    )
    assert _by_path(by_callable)["w"] == Role("conv", (0, 1), (2,))


def test_describe_returns_the_table_and_prints_nothing(capsys):
    """One display in Jupyter: the table is returned (as itself in a REPL, HTML in a notebook)."""
    params = _nnx_params(NnxBlock(50, 16, 4, nnx.Rngs(0)))
    table = roles.describe(params, norms={"head": norms.lp_to_linf(2.0)}, scales={"embedding": 4})
    assert capsys.readouterr().out == ""
    assert repr(table) == str(table)
    html = table._repr_html_()
    assert html.count("<tr>") == len(table.splitlines()) - 1  # header + one row per leaf
    assert "<code>embed/embedding</code>" in html
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert rows["embed/embedding"][3:] == ["embedding", "(0,)->(1,)", "l1_to_rms", "4"]
    assert rows["head/kernel"][3:] == ["head", "(0,)->(1,)", "lp_to_linf(2)", "1"]
    assert rows["attn/out/kernel"][-2:] == ["rms_to_rms[newton_schulz]", "1"]
    assert rows["ln/scale"][-2:] == ["rms", "1"]
    assert roles.describe(params) == roles.describe(params)


def test_geometry_binds_role_axes_to_the_norms():
    variables = _linen_shapes(LinenScanned(), jnp.ones((2, 5), jnp.int32))
    got = {a.path: a for a in roles.Geometry().assign(variables["params"])}
    kernel = got["layers/Dense_0/kernel"].norm
    assert (kernel.fan_in_axes, kernel.fan_out_axes) == ((1,), (2,))
    out = got["layers/MultiHeadDotProductAttention_0/out/kernel"].norm
    assert (out.fan_in_axes, out.fan_out_axes) == ((1, 2), (3,))
    assert got["layers/LayerNorm_0/scale"].norm.batch_axes == (0,)
    assert got["Embed_0/embedding"].norm.name == "l1_to_rms"


def test_mass_scales_follow_the_formula():
    """s_l = M / m_l with M = Σ_k m_k · (layers of k), modula's masses (Large et al., 2024)."""
    variables = _linen_shapes(LinenScanned(), jnp.ones((2, 5), jnp.int32))
    params = variables["params"]
    masses = {"embedding": 2.0, "head": 3.0, "bias": 0.25, "gain": 0.5}
    got = roles.Geometry(scales="mass", masses=masses).assign(params)
    table = {**roles.DEFAULT_MASSES, **masses}
    # Counted by hand: embedding 2 + head 3 + head bias 0.25, and per layer (3 layers) four
    # attention kernels and one hidden kernel (mass 1), five biases (q, k, v, out, LayerNorm; 0.25)
    # and two gains (LayerNorm, RMSNorm; 0.5).
    per_layer = 4 * 1.0 + 1.0 + 5 * 0.25 + 2 * 0.5
    total = 2.0 + 3.0 + 0.25 + 3 * per_layer
    for a in got:
        assert a.scale == pytest.approx(total / table[a.role.name])


# ---- bad input ----------------------------------------------------------------------------------


def _ones(*shape):
    return jnp.ones(shape, jnp.float32)


def _mlp_params():
    return {
        "Dense_0": {"kernel": _ones(3, 4), "bias": _ones(4)},
        "Dense_1": {"kernel": _ones(4, 2), "bias": _ones(2)},
    }


def test_unknown_role_name_is_an_error_naming_the_path():
    with pytest.raises(ValueError, match=r"unknown role name 'hiden' for leaf 'Dense_0/kernel'"):
        roles.infer(_mlp_params(), labels={"Dense_0/kernel": "hiden"})
    with pytest.raises(ValueError, match=r"unknown role 'hiden' in norms"):
        roles.Geometry(norms={"hiden": norms.rms()})
    with pytest.raises(ValueError, match=r"unknown role 'heads' in scales"):
        roles.Geometry(scales={"heads": 2.0})
    with pytest.raises(ValueError, match=r"unknown role 'bogus'"):
        Role("bogus")


def test_vector_leaf_given_a_matrix_norm_is_an_error_naming_the_path():
    with pytest.raises(
        ValueError, match=r"'Dense_0/bias' \(shape \(4,\), float32\) has role 'bias'"
    ):
        roles.Geometry(norms={"bias": norms.spectral()}).assign(_mlp_params())
    with pytest.raises(
        ValueError, match=r"leaf 'Dense_0/bias' of shape \(4,\) is labelled 'hidden'"
    ):
        roles.infer(_mlp_params(), labels={"Dense_0/bias": "hidden"})


def test_norm_with_other_axes_than_its_role_is_an_error():
    with pytest.raises(ValueError, match=r"'Dense_0/kernel'.*fan_in_axes=\(1,\)"):
        roles.Geometry(norms={"hidden": norms.rms_to_rms(fan_in_axes=1, fan_out_axes=0)}).assign(
            _mlp_params()
        )


def test_regex_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"labels regex 'Dense_7' matches no parameter path"):
        roles.infer(_mlp_params(), labels={"Dense_7": "hidden"})
    with pytest.raises(ValueError, match=r"head='Dense_7' matches no 2-D Dense kernel"):
        roles.infer(_mlp_params(), head="Dense_7")
    with pytest.raises(ValueError, match=r"head='Dense_0/bias' matches no 2-D Dense kernel"):
        roles.infer(_mlp_params(), head="Dense_0/bias")


def test_conflicting_labels_are_an_error():
    with pytest.raises(ValueError, match=r"'Dense_0/kernel' is labelled twice"):
        roles.infer(_mlp_params(), labels={"Dense_0/kernel": "hidden", "kernel": "head"})


def test_mismatched_explicit_roles_tree_is_an_error():
    explicit = {"Dense_0": {"kernel": "hidden", "bias": "bias"}, "Dense_2": {"kernel": "head"}}
    with pytest.raises(
        ValueError,
        match=r"Parameters without a role: \['Dense_1/bias', 'Dense_1/kernel'\]; "
        r"roles without a parameter: \['Dense_2/kernel'\]",
    ):
        roles.Geometry(explicit).assign(_mlp_params())
    with pytest.raises(ValueError, match=r"entry 'Dense_0/kernel' of the roles tree is 3"):
        roles.Geometry({"Dense_0": {"kernel": 3, "bias": "bias"}}).assign(_mlp_params())


def test_unclassifiable_leaf_is_an_error_listing_paths_and_the_fix():
    params = {**_mlp_params(), "pos": _ones(7, 4), "Mix_0": {"kernel": _ones(4, 2, 3)}}
    with pytest.raises(ValueError) as info:
        roles.infer(params)
    msg = str(info.value)
    assert "cannot classify 2 leaf/leaves" in msg
    assert "'Mix_0/kernel' (shape (4, 2, 3), float32)" in msg
    assert "'pos' (shape (7, 4), float32): no rule for a leaf named 'pos'" in msg
    assert "labels={path_regex: role_name}" in msg
    # Labelling them fixes it.
    fixed = roles.infer(
        params, labels={"pos": "embedding", "Mix_0/kernel": Role("hidden", (0,), (1, 2))}
    )
    assert _by_path(fixed)["pos"] == EMBEDDING


def test_non_parameters_are_named_and_excluded_not_labelled():
    """Issue 15, item 10: an int32 step count got 'label it bias' (which then failed on its dtype)
    and ``nnx.state(model)``'s batch statistics and RNG state got advice that would train them.
    The error says what they are and to pass the parameters only, and names the optimizer."""
    params = {**_mlp_params(), "step_count": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError) as info:
        normtx.optimizers.muon(0.1, head="Dense_1").init(params)
    msg = str(info.value)
    assert msg.startswith("muon: cannot classify 1 leaf/leaves")
    assert "'step_count' (shape (), int32): not a parameter (int32: a counter" in msg
    assert "pass nnx.state(model, nnx.Param)" in msg
    assert "labels=" not in msg

    class WithState(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)
            self.head = nnx.Linear(4, 2, rngs=rngs)

    model = WithState(nnx.Rngs(0))
    # The escape velocity's init resolves the roles first: the error still names modular_descent.
    tx = normtx.optimizers.modular_descent(1.0, escape_velocity=True)
    with pytest.raises(ValueError) as info:
        tx.init(nnx.state(model))
    msg = str(info.value)
    assert msg.startswith("modular_descent: cannot classify 4 leaf/leaves")
    assert "'bn/mean' (shape (4,), float32): not a parameter (a normalization layer's" in msg
    assert "'drop/rngs/key' (shape (), key<fry>): not a parameter (a PRNG key" in msg
    assert "'drop/rngs/count' (shape (), uint32): not a parameter (uint32" in msg
    assert "labels=" not in msg
    tx.init(nnx.state(model, nnx.Param))  # the advice works
    # A leaf that may be a parameter still gets the labelling advice, after the others'.
    with pytest.raises(ValueError, match=r"(?s)'pos'.*nnx.Param.*labels=\{'pos': 'hidden'\}"):
        roles.infer({**params, "pos": _ones(3, 4)})


def test_batch_stats_collection_gets_a_hint():
    class WithBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.BatchNorm(use_running_average=True)(x))

    variables = _linen_shapes(WithBN(), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match=r"\['batch_stats'\].*pass only variables\['params'\]"):
        roles.infer(variables)


def test_role_validation():
    with pytest.raises(ValueError, match="matrix role"):
        Role("hidden")
    with pytest.raises(ValueError, match="vector role"):
        Role("bias", (0,), (1,))
    with pytest.raises(ValueError, match="overlap"):
        Role("hidden", (0,), (0,))
    with pytest.raises(ValueError, match=r"does not fit leaf 'w' of shape \(3, 4\)"):
        roles.infer({"w": jnp.ones((3, 4))}, labels={"w": Role("hidden", (1,), (2,))})


def test_labels_callable_receives_slash_joined_key_paths():
    """The documented path strings: dict keys and sequence indices joined by '/'."""
    seen = []

    def label(path, leaf):
        seen.append(path)
        return "hidden" if leaf.ndim == 2 else "bias"

    params = {"blocks": [{"proj": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}]}
    roles.infer(params, labels=label, head=False)
    assert sorted(seen) == ["blocks/0/proj/bias", "blocks/0/proj/kernel"]
