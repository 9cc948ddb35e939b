"""``optax.inject_hyperparams`` works for every numeric hyperparameter of every public factory.

The factories are every function of ``normtx`` listed in ``TRANSFORMS``, ``normtx.optimizers`` and
``normtx.adaptive`` that returns a ``GradientTransformation``; their numeric hyperparameters are
found by signature inspection (an annotation that admits ``int``, ``float`` or ``jax.Array``), so
a new one is covered — or fails ``test_every_numeric_hyperparameter_is_listed`` until it is given a
value below. For each factory, with every numeric hyperparameter injected at once (one compiled
update per factory), the tests check:

- the injected transform's updates and states equal the plain factory's with the same values
  (float64 trees, so the only difference is rounding of Python floats versus float64 arrays);
- new values set in ``state.hyperparams`` give the next step of the plain factory built with
  them (all changed at once: one plain instance per factory, each a new compilation); each value
  changed alone does change the step (it is read from the state, not baked in at construction),
  and where the math gives a closed form (learning rate linear, sharpness inverse) the step
  follows it; the few values only ``init`` reads are checked at ``init``;
- a structural argument (a count that sets a shape or a loop length) given as an array raises a
  ``ValueError`` that says to list it in ``static_args``.
"""

from __future__ import annotations

import inspect
import types
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normtx
from normtx import adaptive, norms, optimizers

import registry

TRANSFORMS = (
    "dualize",
    "scale_by_dual_norm",
    "orthogonalize_newton_schulz",
    "escape_velocity_lr",
    "orthogonalize_dion",
    "scale_by_neuron_rms",
    "scale_to_rms",
    "modular_norm_partition",
    "cautious",
    "add_cautious_weight_decay",
)


def _factories() -> dict[str, typing.Callable]:
    """Every public factory of a ``GradientTransformation`` (by its return annotation)."""
    out = {name: getattr(normtx, name) for name in TRANSFORMS}
    for module in (optimizers, adaptive):
        for name in module.__all__:
            f = getattr(module, name)
            ret = inspect.signature(f).return_annotation if inspect.isfunction(f) else None
            if ret is not None and "GradientTransformation" in str(ret):
                out[name] = f
    return out


FACTORIES = _factories()


def _union_members(hint) -> list:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(hint) for m in _union_members(a)]
    return [hint]


def numeric_hyperparameters(factory) -> list[str]:
    """Parameters whose annotation admits a number or an array (what inject_hyperparams injects)."""
    out = []
    for p in inspect.signature(factory).parameters.values():
        # The modules use ``from __future__ import annotations``: evaluate the string in the
        # factory's module (``typing.get_type_hints`` would also evaluate aliases we do not need).
        hint = eval(p.annotation, factory.__globals__)
        if any(m in (int, float, jax.Array) for m in _union_members(hint)):
            out.append(p.name)
    return out


# Structural arguments: they fix shapes, Python loop lengths or the traced code, so they cannot be
# traced values; under inject_hyperparams they go in static_args, and given as arrays they raise.
STRUCTURAL = {
    "orthogonalize_newton_schulz": {
        "steps": "Newton-Schulz loop length",
        "coefficients": "the polynomial schedule, a float64 table unrolled into the iteration",
    },
    "orthogonalize_dion": {"rank_fraction": "the shape of the right factor Q"},
    "exponentiated_gradient": {"axis": "the reduction axis of each distribution"},
    "scale_by_adam_nmf": {"rank": "factor shapes", "em_steps": "EM loop length"},
    "scale_by_full_adagrad": {"block_size": "preconditioner shapes", "max_size": "shape limit"},
    "scale_by_shampoo": {
        "exponent": "p of the inverse p-th root iteration, a Python int",
        "block_size": "preconditioner shapes",
        "precondition_every": "root schedule, validated as a Python int at construction",
        "start_preconditioning_step": "as precondition_every",
    },
}
# (The optimizers' step counts are not structural: muon's, normuon's and adamuon's ns_steps and
# ns_coefficients are read at run time when injected (a lax.fori_loop), SOAP's
# precondition_frequency too, and its max_precond_dim only at init (below), so that
# optax.inject_hyperparams(f)(learning_rate=...) needs no static_args, as for optax's optimizers.)

# Hyperparameters that only ``init`` reads (initial values of the state): changing them in
# ``state.hyperparams`` later changes nothing; their injected value is checked at ``init``.
INIT_ONLY = {
    ("modular_descent", "init_lr"): "η_0 of escape_velocity_lr (monotone: never read again)",
    ("scale_by_adam_nmf", "eps"): "range of the initial factors",
    ("scale_by_adam_nmf", "key"): "draws the initial factors",
    ("orthogonalize_dion", "key"): "draws the initial right factor Q_0",
    ("scale_by_soap", "max_precond_dim"): "which sides have a statistic: the state's shapes",
    ("soap", "max_precond_dim"): "as in scale_by_soap",
}

_MUON_NS = np.array([[3.4445, -4.7750, 2.0315]] * 5)

# The hyperparameters the Muon family shares (each optimizer's own are added to them).
_MUON_FAMILY = dict(
    learning_rate=0.1,
    beta=0.9,
    ns_coefficients=_MUON_NS,
    ns_steps=5,
    weight_decay=0.1,
    adam_learning_rate=0.01,
    adam_b1=0.8,
    adam_b2=0.9,
    adam_eps=1e-3,
    adam_weight_decay=0.1,
)

# A refresh at every Adam step; max_precond_dim 6: Dense_0 (6, 8) has only L, Dense_1 (8, 3) only
# R, each of full rank. b2 != shampoo_beta: each is read on its own.
_SOAP = dict(
    b1=0.8, b2=0.9, shampoo_beta=0.7, eps=1e-3, precondition_frequency=1, max_precond_dim=6
)

# Every numeric hyperparameter gets a value (the first of the pair) that makes it active: options
# that switch it on are set here too (step='dual_norm' for sharpness, monotone=False for init_lr).
BASE = {
    "dualize": dict(norm=registry.geometry),
    "scale_by_dual_norm": dict(norm=registry.geometry, sharpness=2.0),
    "orthogonalize_newton_schulz": dict(
        steps=5, coefficients=np.array([[1.5, -0.5, 0.0]]), scale=0.5
    ),
    "escape_velocity_lr": dict(
        direction=normtx.dualize(norms.linf()),
        norm=norms.linf(),
        init_lr=1e-3,
        rule="cosine",  # η_{t+1} = η_t (1 + cos θ): growth a cap can bind from the second step
        monotone=False,
        max_growth=1e3,  # a cap that does not bind; its second value (1.01) does
    ),
    "modular_norm_partition": dict(scales=2.0, sharpness=2.0, step="dual_norm"),
    "orthogonalize_dion": dict(key=jax.random.key(0), rank_fraction=0.5, mu=0.9, scale=0.5),
    "scale_by_neuron_rms": dict(decay=0.9, eps=1e-3),
    "scale_to_rms": dict(rms=0.3),
    # δ = 1 divides by 1 (no rescaling); δ = 1/2 rescales by n/Σφ a leaf with a disagreeing sign.
    "cautious": dict(inner=optax.scale_by_adam(b1=0.9), mean_floor=1.0),
    "add_cautious_weight_decay": dict(weight_decay=0.1),
    "modular_descent": dict(
        learning_rate=0.1,
        momentum=0.5,
        weight_decay=0.1,
        step="dual_norm",
        sharpness=2.0,
        escape_velocity=True,
        init_lr=1e-3,
        scales=2.0,
    ),
    "muon": dict(_MUON_FAMILY, adam_eps_root=1e-3, consistent_rms=0.3),
    "normuon": dict(_MUON_FAMILY, beta2=0.8, eps=1e-3, rms=0.3),
    "normalized_sgd": dict(
        learning_rate=0.1, momentum=0.5, weight_decay=0.1, step="dual_norm", sharpness=2.0
    ),
    "prodigy": dict(
        learning_rate=0.5,
        beta3=0.9,
        eps=1e-3,
        estim_lr0=1e-3,
        estim_lr_coef=10.0,  # η grows from the second step
        weight_decay=0.1,
        max_growth=4.0,
    ),
    "scion": dict(learning_rate=0.1, radius=2.0, momentum=0.5, scales=2.0),
    "sign_descent": dict(
        learning_rate=0.1, momentum=0.5, weight_decay=0.1, step="dual_norm", sharpness=2.0
    ),
    "spectral_descent": dict(
        learning_rate=0.1, momentum=0.5, weight_decay=0.1, step="dual_norm", sharpness=2.0
    ),
    "adamw_fully_decoupled": dict(learning_rate=0.01, weight_decay=0.1, b1=0.8, b2=0.9, eps=1e-3),
    "add_decoupled_weight_decay": dict(learning_rate=0.1, weight_decay=0.1),
    "exponentiated_gradient": dict(learning_rate=0.5, axis=-1),
    "scale_by_adam_nmf": dict(
        rank=1,
        key=jax.random.key(0),
        eps=1e-2,
        em_steps=2,
        b1=0.5,
        b2=0.5,
        eps_sq=1e-2,
        vectors="diagonal",
    ),
    "scale_by_full_adagrad": dict(eps=0.1, block_size=4, max_size=64, ridge=1e-3),
    "scale_by_shampoo": dict(
        accumulator="ema",
        beta2=0.9,
        exponent=-0.25,
        precondition_every=1,
        start_preconditioning_step=1,
        block_size=8,
        graft="adam",
        graft_beta2=0.9,
        graft_eps=1e-3,
        ridge=1e-3,
        vectors="graft",
    ),
    "scale_by_soap": _SOAP,
    "soap": dict(_SOAP, learning_rate=0.1, weight_decay=0.1),
}
BASE["adamuon"] = BASE["normuon"]  # the same hyperparameters (AdaMuon, NorMuon)

# The second value of each pair: half the first, unless that is invalid or not visible in one step.
SECOND = {
    ("escape_velocity_lr", "init_lr"): 1.0,  # a floor above the quotient: η_{t+1} = init_lr
    ("escape_velocity_lr", "max_growth"): 1.01,  # a cap that binds
    ("prodigy", "max_growth"): 1.01,
    ("scale_by_adam_nmf", "key"): jax.random.key(1),
    ("orthogonalize_dion", "key"): jax.random.key(1),
    **{(name, "ns_steps"): 3 for name in ("muon", "normuon", "adamuon")},  # counts stay ints
    **{(name, "precondition_frequency"): 2 for name in ("scale_by_soap", "soap")},
    **{(name, "max_precond_dim"): 3 for name in ("scale_by_soap", "soap")},
}

# Closed forms in the changed value v (from v1 to v2) of the next update u. (Prodigy's update is not
# linear in its learning rate: lr_t weighs s_t, which moves η_{t+1}, which scales its ε.)
LINEAR, INVERSE = "linear", "inverse"
MATH = {
    ("scale_by_dual_norm", "sharpness"): INVERSE,  # Prop. 1: Δ = (‖g‖†/λ) dualize(g)
    ("modular_norm_partition", "sharpness"): INVERSE,  # eq. 56: η = Σ N†/(s λ)
    ("orthogonalize_newton_schulz", "scale"): LINEAR,
    ("orthogonalize_dion", "scale"): LINEAR,
    ("scale_to_rms", "rms"): LINEAR,
    **{
        (name, "learning_rate"): LINEAR
        for name in (
            "sign_descent",
            "normalized_sgd",
            "spectral_descent",
            "modular_descent",
            "scion",
            "soap",  # -η (D + λ w)
        )
    },
}


MATRICES_ONLY = (
    "orthogonalize_newton_schulz",
    "orthogonalize_dion",
    "scale_by_neuron_rms",
    "scale_to_rms",
)


def _params(name):
    p = jax.tree.map(lambda x: x.astype(jnp.float64), registry.params())
    if name in MATRICES_ONLY:
        return {"a": p["Dense_0"]["kernel"], "b": p["Dense_1"]["kernel"]}
    if name == "exponentiated_gradient":  # rows on the simplex (axis=-1)
        return {"w": jnp.full((3, 4), 0.25, jnp.float64)}
    return p


def _grads(params, step):
    """A common direction plus noise: consecutive gradients correlate, as in training."""
    common, noise = np.random.default_rng(200), np.random.default_rng(201 + step)
    return jax.tree.map(
        lambda p: jnp.asarray(
            common.standard_normal(p.shape) + 0.5 * noise.standard_normal(p.shape), p.dtype
        ),
        params,
    )


def _static(name, kwargs):
    callables = [k for k, v in kwargs.items() if callable(v) and not hasattr(v, "dtype")]
    return [*callables, *STRUCTURAL.get(name, {})]


def _injectable(name):
    factory = FACTORIES[name]
    return [h for h in numeric_hyperparameters(factory) if h not in STRUCTURAL.get(name, {})]


def _second(name, h):
    return SECOND[name, h] if (name, h) in SECOND else BASE[name][h] / 2


def _close(a, b):
    chex.assert_trees_all_close(a, b, rtol=1e-10, atol=1e-12)


def _differs(a, b) -> bool:
    if jax.tree.structure(a) != jax.tree.structure(b):  # e.g. SOAP's sides with a statistic
        return True
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return any(
        np.shape(x) != np.shape(y) or not np.allclose(x, y, rtol=1e-8, atol=1e-12) for x, y in pairs
    )


# Factories whose updates are final (added to the params); the others return a direction to be
# descended (DESIGN §2: ``optax.scale_by_learning_rate`` would flip its sign).
FINAL = {
    *optimizers.__all__,
    "adamw_fully_decoupled",
    "add_decoupled_weight_decay",
    "exponentiated_gradient",
    "soap",
}


def _step(name, tx, state, params, step, update=None):
    u, state = (update or tx.update)(_grads(params, step), state, params)
    sign = 1.0 if name in FINAL else -1.0
    return jax.tree.map(lambda p, d: p + sign * d, params, u), u, state


def test_every_numeric_hyperparameter_is_listed():
    assert set(FACTORIES) == set(BASE), "give every public factory a row in BASE"
    for name, factory in FACTORIES.items():
        numeric = numeric_hyperparameters(factory)
        missing = [h for h in numeric if h not in BASE[name]]
        assert not missing, f"{name}: give {missing} a value in BASE (or list them as STRUCTURAL)"
        assert set(STRUCTURAL.get(name, {})) <= set(numeric), name
        tx = optax.inject_hyperparams(factory, static_args=_static(name, BASE[name]))(**BASE[name])
        state = tx.init(_params(name))
        assert sorted(state.hyperparams) == sorted(_injectable(name)), name


@pytest.mark.parametrize("name", list(FACTORIES))
def test_injected_values_equal_the_plain_factory_and_stay_live_in_the_state(name):
    factory, kwargs, params = FACTORIES[name], BASE[name], _params(name)
    static = _static(name, kwargs)
    injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
    plain = factory(**kwargs)
    update = jax.jit(injected.update)  # compiled once: changed values are new inputs, not code

    # Two steps: the injected (jitted, traced values) and the plain (eager, Python values) agree.
    p_inj, _, s_inj = _step(name, injected, injected.init(params), params, 0, update)
    p_ref, _, s_ref = _step(name, plain, plain.init(params), params, 0)
    _close((p_inj, s_inj.inner_state), (p_ref, s_ref))
    _, u_base, s_base = _step(name, injected, s_inj, p_inj, 1, update)
    _, u_ref, s_ref = _step(name, plain, s_ref, p_ref, 1)
    _close((u_base, s_base.inner_state), (u_ref, s_ref))

    def with_values(values):
        hyper = {**s_inj.hyperparams}
        hyper.update({h: jnp.asarray(v, hyper[h].dtype) for h, v in values.items()})
        _, u, state = _step(name, injected, s_inj._replace(hyperparams=hyper), p_inj, 1, update)
        return u, state.inner_state

    live = [h for h in _injectable(name) if (name, h) not in INIT_ONLY]
    second = {h: _second(name, h) for h in _injectable(name)}
    # Every value changed in the state: the next step is the plain factory's with those values.
    _, u_want, s_want = _step(name, factory(**{**kwargs, **second}), s_inj.inner_state, p_inj, 1)
    _close(with_values({h: second[h] for h in live}), (u_want, s_want))
    # Each value alone changes the step (it is read from the state), as the math says.
    for h in live:
        u2, s2 = with_values({h: second[h]})
        assert _differs((u2, s2), (u_base, s_base.inner_state)), f"{name}: {h} is not live"
        if (name, h) in MATH:
            v1, v2 = kwargs[h], second[h]
            ratio = v2 / v1 if MATH[name, h] == LINEAR else v1 / v2
            _close(u2, jax.tree.map(lambda u: ratio * u, u_base))  # noqa: B023
    # An init-only value is the plain factory's at init.
    for h in _injectable(name):
        if (name, h) in INIT_ONLY:
            changed = {**kwargs, h: second[h]}
            init2 = optax.inject_hyperparams(factory, static_args=static)(**changed).init(params)
            _close(init2.inner_state, factory(**changed).init(params))
            assert _differs(init2.inner_state, injected.init(params).inner_state), h


_STRUCTURAL_CASES = [(n, h) for n, hs in STRUCTURAL.items() for h in hs]


@pytest.mark.parametrize(
    ("name", "h"), _STRUCTURAL_CASES, ids=[f"{n}-{h}" for n, h in _STRUCTURAL_CASES]
)
def test_structural_arguments_given_as_arrays_say_static_args(name, h):
    factory, kwargs = FACTORIES[name], BASE[name]
    static = [s for s in _static(name, kwargs) if s != h]
    params = _params(name)
    tx = optax.inject_hyperparams(factory, static_args=static)(**kwargs)

    def init_and_trace():
        # A concrete array passes init where an array is a valid value (coefficients); tracing
        # the update is where it cannot be unrolled.
        jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)

    with pytest.raises(ValueError, match=rf"{h} is structural.*static_args=\('{h}',\)"):
        init_and_trace()


_OPTIMIZERS = [name for name in optimizers.__all__ if name in FACTORIES]


@pytest.mark.parametrize("name", _OPTIMIZERS)
def test_optimizers_inject_without_static_args(name):
    """``optax.inject_hyperparams(f)(learning_rate=...)`` with every other argument at its default
    works as for optax's own optimizers — no ``static_args`` — and its compiled updates are the
    plain optimizer's. (The states may differ in structure: a hyperparameter known to be 0, such
    as the default weight decay, builds no transform; injected, it is an array.)"""
    factory, params = FACTORIES[name], _params(name)
    required = {
        p.name: BASE[name][p.name]
        for p in inspect.signature(factory).parameters.values()
        if p.default is inspect.Parameter.empty
    }
    injected = optax.inject_hyperparams(factory)(**required)
    plain = factory(**required)
    update = jax.jit(injected.update)
    s_inj, s_ref, p_inj, p_ref = injected.init(params), plain.init(params), params, params
    for step in range(2):
        p_inj, u_inj, s_inj = _step(name, injected, s_inj, p_inj, step, update)
        p_ref, u_ref, s_ref = _step(name, plain, s_ref, p_ref, step)
        _close(u_inj, u_ref)
