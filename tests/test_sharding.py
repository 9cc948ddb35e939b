"""Sharded meshes (issue 10, *Scale*): ``normtx.sharding`` and the owner-device polar factor.

8 fake CPU devices (``tests/conftest.py``) in a ``(2, 4)`` mesh of both axis types: ``Explicit``
(``jax.make_mesh``'s default: a sharding is part of an array's type and normtx moves the data
itself) and ``Auto`` (XLA's partitioner decides). The oracle is always the same computation on one
device without any sharding.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import normtx
from normtx import norms, optimizers
from normtx.dims import DimensionNumbers

import registry

KINDS = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}
# These programs are tiny: XLA:CPU's LLVM optimizations cost 5x their compile time and buy
# nothing. The sharded runs and their one-device oracles are compiled alike.
FAST = {"xla_backend_optimization_level": 0}


def _jit(f, **kwargs):
    return jax.jit(f, compiler_options=FAST, **kwargs)


def _mesh(kind: str, shape=(2, 4), names=("a", "b")):
    return jax.make_mesh(shape, names, axis_types=(KINDS[kind],) * len(shape))


def _named(mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def _put(tree, shardings):
    """Fresh device buffers (from host copies: the training steps below donate them)."""
    return jax.device_put(jax.tree.map(np.asarray, tree), shardings)


def _assert_laid_out(tree, shardings):
    def check(x, s):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)

    jax.tree.map(check, tree, shardings)


# ---- every transform of the registry, sharded -------------------------------------------------

# Sharded on both matrix axes, on one, a vector sharded, a vector replicated.
REGISTRY_SPECS = {
    "Dense_0": {"kernel": P("a", "b"), "bias": P("b")},
    "Dense_1": {"kernel": P("b", None), "bias": P()},
}


def _float64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@pytest.mark.parametrize("name", list(registry.TRANSFORMS))
def test_registry_transform_runs_sharded_and_matches_one_device(name):
    """Params and state sharded on explicit and auto meshes, state shardings derived by
    ``state_shardings`` (from arrays and from ``ShapeDtypeStruct``s), ``init`` jitted with them as
    ``out_shardings``, two donated training steps that keep every layout: params and state equal
    the unsharded run. In float64, so that reduction order (the only thing sharding may change)
    is far below the tolerance, which is tighter than float32 could be held to."""
    tx = registry.TRANSFORMS[name]()
    params = _float64(registry.params())
    grads = [_float64(registry.grads(i)) for i in range(2)]

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    ref_p, ref_s = params, _jit(tx.init)(params)
    ref_step = _jit(step)
    for g in grads:
        ref_p, ref_s = ref_step(ref_p, ref_s, g)

    for kind in KINDS:
        param_shardings = _named(_mesh(kind), REGISTRY_SPECS)
        p = _put(params, param_shardings)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), p
        )
        shardings = normtx.sharding.state_shardings(tx, abstract)
        assert shardings == normtx.sharding.state_shardings(tx, p)
        expected = jax.eval_shape(tx.init, abstract)
        s = _jit(tx.init, out_shardings=shardings)(p)
        chex.assert_trees_all_equal_shapes_and_dtypes(s, expected)
        _assert_laid_out(s, shardings)
        train = _jit(step, donate_argnums=(0, 1), out_shardings=(param_shardings, shardings))
        for g in grads:
            p, s = train(p, s, _put(g, param_shardings))
        _assert_laid_out(p, param_shardings)
        _assert_laid_out(s, shardings)
        chex.assert_trees_all_close((p, s), (ref_p, ref_s), rtol=1e-8, atol=1e-10)


def test_state_shardings_rule_for_moments_scalars_and_factored_statistics():
    """Param-shaped state gets the param's sharding; scalars and factored statistics (blocks of
    Shampoo and full AdaGrad, computed from whole matrices) are replicated; blocked Shampoo
    trains with those layouts like on one device."""
    mesh = _mesh("explicit")
    specs = {"w": P("a", "b"), "v": P("b")}
    params = {
        "w": np.random.default_rng(0).standard_normal((8, 16)),
        "v": np.random.default_rng(1).standard_normal(16),
    }
    param_shardings = _named(mesh, specs)
    p = _put(params, param_shardings)
    rep = NamedSharding(mesh, P())

    adamw = normtx.adaptive.adamw_fully_decoupled(learning_rate=0.1, weight_decay=0.1)
    got = normtx.sharding.state_shardings(adamw, p)
    assert got[0].mu == param_shardings
    assert got[0].nu == param_shardings
    assert got[0].count == rep
    assert got[1].count == rep

    # (8, 16) in blocks of 4: 2 x 4 = 8 blocks (8, 4, 4), each with its L and R; the vector is
    # grafted (its graft moment has its shape).
    shampoo = normtx.adaptive.scale_by_shampoo(
        block_size=4, graft="adam", vectors="graft", precondition_every=1
    )
    got = normtx.sharding.state_shardings(shampoo, p)
    for field in ("stats_left", "stats_right", "root_left", "root_right"):
        assert getattr(got, field)["w"] == rep, field
        assert isinstance(getattr(got, field)["v"], optax.MaskedNode)
    assert got.graft == param_shardings

    # 128 entries in blocks of 16: 8 blocks; the vector's 16 entries are one block.
    adagrad = normtx.adaptive.scale_by_full_adagrad(block_size=16, eps=1e-8)
    got = normtx.sharding.state_shardings(adagrad, p)
    assert got.stats == {"w": rep, "v": rep}

    modular = normtx.modular_norm_partition(roles={"w": "hidden", "v": "bias"})
    got = normtx.sharding.state_shardings(modular, p)
    assert got.dual_norms == {"w": rep, "v": rep}
    assert got.global_eta == rep

    # Blocked Shampoo trains with replicated blocks beside sharded params (the registry test
    # covers every transform without blocks).
    shardings = normtx.sharding.state_shardings(shampoo, p)
    state = _jit(shampoo.init, out_shardings=shardings)(p)
    update = _jit(shampoo.update, out_shardings=(param_shardings, shardings))
    ref_update, ref_state = _jit(shampoo.update), _jit(shampoo.init)(params)
    for i in range(2):
        g = np.random.default_rng(10 + i).standard_normal((8, 16))
        grads = {"w": g, "v": g[0]}
        u, state = update(_put(grads, param_shardings), state)
        ref_u, ref_state = ref_update(grads, ref_state)
        _assert_laid_out(state, shardings)
        chex.assert_trees_all_close((u, state), (ref_u, ref_state), rtol=1e-8, atol=1e-10)


# ---- the owner-device polar factor ------------------------------------------------------------


def _tree():
    """Two hidden matrices of one shape (one stored tall, laid out transposed) with biases, and a
    head: a stack of 2 matrices padded to 8 on the mesh, and a stack of 1."""
    rng = np.random.default_rng(3)
    f = lambda *s: jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0]), jnp.float32)  # noqa: E731
    return {
        "Dense_0": {"kernel": f(16, 32), "bias": f(32)},
        "Dense_1": {"kernel": f(32, 16), "bias": f(16)},
        "Dense_2": {"kernel": f(16, 8)},
    }


TREE_SPECS = {
    "Dense_0": {"kernel": P("a", "b"), "bias": P("b")},
    "Dense_1": {"kernel": P("b", "a"), "bias": P()},
    "Dense_2": {"kernel": P(None, "b")},
}


def _kernels(tree):
    return {k: v["kernel"] for k, v in tree.items()}


# name -> (make(mesh) -> tx, applies to the kernels only)
OWNER_CASES = {
    "orthogonalize_newton_schulz": (
        lambda mesh: normtx.orthogonalize_newton_schulz(mesh=mesh),
        True,
    ),
    # scale_by_dual_norm: the dual norms (the step size) are read off the owner's polar factors.
    "spectral_descent(dual_norm)": (
        lambda mesh: optimizers.spectral_descent(0.1, step="dual_norm", mesh=mesh),
        False,
    ),
    # modular_norm_partition, and escape velocity's dual norms of the same modular norm.
    "modular_descent(escape_velocity)": (
        lambda mesh: optimizers.modular_descent(1.0, escape_velocity=True, mesh=mesh),
        False,
    ),
    "muon": (lambda mesh: optimizers.muon(0.1, mesh=mesh), False),
}


@pytest.mark.parametrize("name", list(OWNER_CASES))
def test_owner_strategy_equals_one_device(name):
    """With ``mesh=`` the polar factors are computed one stack slice per device: the update and
    the state equal the single-device computation without a mesh to 1e-5, on both mesh kinds;
    on the explicit mesh every kernel's update keeps the kernel's layout."""
    make, kernels_only = OWNER_CASES[name]
    params = _kernels(_tree()) if kernels_only else _tree()
    specs = _kernels(TREE_SPECS) if kernels_only else TREE_SPECS
    plain = make(None)
    ref = _jit(lambda p: plain.update(p, plain.init(p), p))(params)
    for kind in KINDS:
        mesh = _mesh(kind)
        tx = make(mesh)
        p = _put(params, _named(mesh, specs))
        out = _jit(lambda p, tx=tx: tx.update(p, tx.init(p), p))(p)
        chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-6)
        if kind == "explicit":  # the polar factors come back in their kernels' layout
            updates = out[0] if kernels_only else _kernels(out[0])
            _assert_laid_out(updates, _named(mesh, _kernels(TREE_SPECS)))


@pytest.mark.parametrize("name", list(OWNER_CASES))
def test_params_not_placed_on_the_explicit_mesh(name):
    """Issue 15, item 8: ``mesh=jax.make_mesh(...)`` (explicit axes) with params not placed on it
    (host arrays, one default device) failed inside ``with_sharding_constraint``, which takes Auto
    axes only. The stack is laid out over the mesh's Auto twin; the update and the state equal the
    single-device computation without a mesh, jitted with and without ``jax.set_mesh``."""
    make, kernels_only = OWNER_CASES[name]
    params = _kernels(_tree()) if kernels_only else _tree()
    plain = make(None)
    ref = _jit(lambda p: plain.update(p, plain.init(p), p))(params)
    mesh = _mesh("explicit")
    tx = make(mesh)
    step = _jit(lambda p: tx.update(p, tx.init(p), p))
    chex.assert_trees_all_close(step(params), ref, rtol=1e-5, atol=1e-6)
    with jax.set_mesh(mesh):
        chex.assert_trees_all_close(step(params), ref, rtol=1e-5, atol=1e-6)


def _all_gathers(hlo: str) -> list[tuple[int, ...]]:
    """Output shapes of every all-gather in compiled HLO text (async pairs counted once)."""
    shapes = []
    for line in hlo.splitlines():
        m = re.search(r"=\s*(.*?)\s+all-gather(-start)?\(", line)
        if m:
            for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1)):
                shapes.append(tuple(int(d) for d in dims.split(",") if d))
    return shapes


def test_owner_strategy_gathers_no_matrix_on_an_explicit_mesh():
    """Scion on an explicit mesh whose kernels are sharded over both mesh axes: the compiled
    owner path has no all-gather of a matrix (the biases are gathered for their RMS norm) and
    moves the stacks by all-to-alls, while the naive path (no mesh) gathers whole matrices — so
    the check tells the two apart. Both give the same update."""
    mesh = _mesh("explicit")
    specs = {**TREE_SPECS, "Dense_2": {"kernel": P("b", "a")}}
    p = _put(_tree(), _named(mesh, specs))
    matrices = {tuple(x.shape) for x in jax.tree.leaves(_kernels(_tree()))}
    runs = {}
    for mesh_arg in (mesh, None):
        tx = optimizers.scion(0.1, mesh=mesh_arg)
        compiled = _jit(lambda p, tx=tx: tx.update(p, tx.init(p), p)).lower(p).compile()
        runs[mesh_arg is None] = (compiled.as_text(), compiled(p))
    (owner, out), (naive, ref) = runs[False], runs[True]
    assert not [s for s in _all_gathers(owner) if len(s) >= 2], _all_gathers(owner)
    assert "all-to-all" in owner
    assert any(s[-2:] in matrices for s in _all_gathers(naive)), _all_gathers(naive)
    chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-6)


def test_scanned_layers_are_orthogonalized_per_layer_under_sharding():
    """Scanned stacks with their layer axis sharded (over one mesh axis, and over all devices):
    each layer's result equals the single-device result for that layer alone, on the naive path
    (explicit axes) and the owner path, through ``orthogonalize_newton_schulz`` (dims) and
    ``modular_norm_partition`` (``scanned/hidden`` roles). In float64: the per-layer oracle runs
    2-D matmuls where the stack runs batched ones."""
    rng = np.random.default_rng(5)
    tree = {"s1": rng.standard_normal((8, 16, 32)), "s2": rng.standard_normal((8, 32, 16))}
    specs = {"s1": P("a", None, "b"), "s2": P(("a", "b"), None, None)}
    ortho = lambda mesh: normtx.orthogonalize_newton_schulz(  # noqa: E731
        dimension_numbers=DimensionNumbers((1,), (2,)), mesh=mesh
    )
    modular = lambda mesh: normtx.modular_norm_partition(  # noqa: E731
        {"s1": "scanned/hidden", "s2": "scanned/hidden"}, step="unit", mesh=mesh
    )
    one = _jit(lambda x: normtx.orthogonalize_newton_schulz().update(x, None)[0])
    rms_to_rms = _jit(norms.rms_to_rms(polar="newton_schulz").dualize)
    expected = {
        "ortho": {k: np.stack([one(x) for x in v]) for k, v in tree.items()},
        "modular": {k: np.stack([rms_to_rms(x) for x in v]) for k, v in tree.items()},
    }
    for kind in KINDS:
        mesh = _mesh(kind)
        p = _put(tree, _named(mesh, specs))
        # The naive path keeps a sharded layer axis in place only under explicit axes (under
        # Auto axes it is XLA's choice, and the registry test covers it).
        for mesh_arg in (None, mesh) if kind == "explicit" else (mesh,):
            for name, make in (("ortho", ortho), ("modular", modular)):
                tx = make(mesh_arg)
                got = _jit(lambda p, tx=tx: tx.update(p, tx.init(p))[0])(p)
                chex.assert_trees_all_close(got, expected[name], rtol=1e-10, atol=1e-12)


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: normtx.orthogonalize_newton_schulz(mesh="data"),
        lambda: normtx.dualize(norms.spectral(), mesh=(2, 4)),
        lambda: optimizers.muon(0.1, mesh=jax.devices()),
        lambda: normtx.norms.modular(norms.spectral(), mesh=8),
    ],
)
def test_a_mesh_that_is_not_a_mesh_fails_at_construction(make):
    with pytest.raises(TypeError, match=r"mesh must be None or a jax.sharding.Mesh"):
        make()


def test_inject_hyperparams_with_a_mesh_says_to_make_it_static():
    """optax.inject_hyperparams calls a callable hyperparameter as a schedule, and a Mesh is
    callable: the error says so; with ``static_args=('mesh',)`` the injected Muon gives the plain
    one's update."""
    mesh, p = _mesh("auto"), _tree()
    g = jax.tree.map(lambda x: 0.5 * x + 1.0, p)
    injected = optax.inject_hyperparams(optimizers.muon)(learning_rate=0.02, mesh=mesh)
    with pytest.raises(TypeError, match=r"inject_hyperparams .* list 'mesh' in its static_args"):
        injected.init(p)
    tx = optax.inject_hyperparams(optimizers.muon, static_args=("mesh",))(
        learning_rate=0.02, mesh=mesh
    )
    plain = optimizers.muon(0.02, mesh=mesh)
    want, _ = plain.update(g, plain.init(p), p)
    got, _ = jax.jit(tx.update)(g, tx.init(p), p)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_params_on_another_mesh_than_the_polar_mesh_fail_naming_the_path():
    p = _put(_kernels(_tree()), _named(_mesh("explicit"), _kernels(TREE_SPECS)))
    tx = normtx.orthogonalize_newton_schulz(mesh=_mesh("explicit", (8,), ("d",)))
    with pytest.raises(ValueError, match=r"leaf 'Dense_0' is sharded over the mesh"):
        _jit(lambda p: tx.update(p, tx.init(p)))(p)


def test_one_modular_norm_takes_one_mesh():
    mod = normtx.norms.modular(norms.spectral(), mesh=_mesh("explicit"))
    with pytest.raises(ValueError, match="give the mesh once"):
        normtx.dualize(mod, mesh=_mesh("auto"))


def test_state_shardings_needs_named_shardings_on_one_mesh():
    tx = optax.adam(1e-3)
    params = _kernels(_tree())
    with pytest.raises(TypeError, match=r"params leaf 'Dense_0' has sharding"):
        normtx.sharding.state_shardings(tx, jax.tree.map(np.asarray, params))
    mixed = {
        "Dense_0": _put(params["Dense_0"], NamedSharding(_mesh("explicit"), P())),
        "Dense_1": _put(params["Dense_1"], NamedSharding(_mesh("explicit", (8,), ("d",)), P())),
    }
    with pytest.raises(ValueError, match="all params must share one mesh"):
        normtx.sharding.state_shardings(tx, mixed)
    with pytest.raises(ValueError, match="no leaves"):
        normtx.sharding.state_shardings(tx, {})
