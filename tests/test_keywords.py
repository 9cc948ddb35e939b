"""Keyword groups (``normtx._keywords``): the public signatures they build are the ones the
functions had when each listed its keywords itself, calls bind to them, and the static
``**kw: Unpack[Options]`` annotation stays with the function.

The expected signatures are written out from the functions' definitions before the groups
(commit 1f5adc8: every keyword, its kind, default and annotation as written there).
Keyword-only parameters are compared as a set (their order is not part of a call), positional ones
in order.
"""

from __future__ import annotations

import inspect
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typing_extensions import TypedDict, Unpack

import normtx
from normtx import optimizers, roles
from normtx._keywords import KeywordGroup, keywords

P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
REQUIRED = inspect.Parameter.empty

# The keyword lists as the functions wrote them, before the groups.
INFER = [
    ("head", K, None, "HeadSpec"),
    ("labels", K, None, "LabelSpec"),
    ("heads_as_batch", K, False, "bool"),
]
ROLES_KW = [("roles", K, None, "Any")]
NORMS = [
    ("norms", K, None, "NormsSpec"),
    ("scales", K, None, "ScalesSpec"),
    ("masses", K, None, "Mapping[str, float] | None"),
]
MESH = [("mesh", K, None, "Mesh | None")]
LR = [("learning_rate", P, REQUIRED, "ArrayLike | optax.Schedule")]
PARAMS_ROLES = [("params", P, REQUIRED, "Any"), ("roles", P, None, "Any")]
TARGET_RMS = [("target_rms", K, None, "TargetRmsSpec")]


def descent(momentum: float) -> list:
    return [
        ("momentum", K, momentum, "ArrayLike"),
        ("nesterov", K, False, "bool"),
        ("weight_decay", K, 0.0, "ArrayLike"),
        ("step", K, "unit", "Step"),
        ("sharpness", K, None, "ArrayLike | optax.Schedule | None"),
        ("weight_decay_mask", K, None, "Any"),
        ("mu_dtype", K, None, "DTypeLike | None"),
    ]


def adaptive_muon(beta2: float) -> list:
    return [
        ("beta", K, 0.95, "ArrayLike"),
        ("beta2", K, beta2, "ArrayLike"),
        ("eps", K, 1e-8, "ArrayLike"),
        ("rms", K, 0.2, "ArrayLike"),
        ("nesterov", K, False, "bool"),
        ("ns_coefficients", K, "muon", "NsSchedule | ArrayLike"),
        ("ns_steps", K, 5, "int"),
        ("weight_decay", K, 0.0, "ArrayLike"),
        ("weight_decay_mask", K, None, "Any"),
        ("mu_dtype", K, None, "DTypeLike | None"),
        ("adam_learning_rate", K, None, "ArrayLike | optax.Schedule | None"),
        ("adam_b1", K, 0.9, "ArrayLike"),
        ("adam_b2", K, 0.999, "ArrayLike"),
        ("adam_eps", K, 1e-8, "ArrayLike"),
        ("adam_weight_decay", K, 0.0, "ArrayLike"),
        *ROLES_KW,
        *INFER,
        *MESH,
    ]


MUON = [
    ("beta", K, 0.95, "ArrayLike"),
    ("nesterov", K, True, "bool"),
    ("bias_correction", K, False, "bool"),
    ("ns_coefficients", K, "muon", "NsSchedule | ArrayLike"),
    ("ns_steps", K, 5, "int | ArrayLike"),
    ("normalization", K, "frobenius", "Normalization"),
    ("scale", K, "muon", "MuonScaling"),
    ("consistent_rms", K, None, "ArrayLike | None"),
    ("adaptive", K, False, "bool"),
    ("weight_decay", K, 0.0, "ArrayLike"),
    ("weight_decay_mask", K, None, "Any"),
    ("mu_dtype", K, None, "DTypeLike | None"),
    ("others", K, "adamw", "Literal['adamw', 'modular']"),
    ("adam_learning_rate", K, None, "ArrayLike | optax.Schedule | None"),
    ("adam_b1", K, None, "ArrayLike | None"),
    ("adam_b2", K, None, "ArrayLike | None"),
    ("adam_eps", K, None, "ArrayLike | None"),
    ("adam_eps_root", K, None, "ArrayLike | None"),
    ("adam_nesterov", K, None, "bool | None"),
    ("adam_weight_decay", K, None, "ArrayLike | None"),
    *ROLES_KW,
    *INFER,
    *MESH,
]

OPTIMIZER = "optax.GradientTransformation"
EXPECTED = {
    "roles.infer": (roles.infer, [("params", P, REQUIRED, "Any"), *INFER], "Any"),
    "roles.resolve": (roles.resolve, [*PARAMS_ROLES, *INFER], "Any"),
    "roles.optax_labels": (roles.optax_labels, [*PARAMS_ROLES, *INFER], "Any"),
    "roles.muon_dimension_numbers": (
        roles.muon_dimension_numbers,
        [*PARAMS_ROLES, *INFER],
        "Any",
    ),
    "roles.describe": (roles.describe, [*PARAMS_ROLES, *NORMS, *INFER], "GeometryTable"),
    "modular_norm": (
        normtx.modular_norm,
        [("roles", P, None, "Any"), *NORMS, *INFER, *MESH],
        "RoleModular",
    ),
    "modular_norm_partition": (
        normtx.modular_norm_partition,
        [
            ("roles", P, None, "Any"),
            *NORMS,
            ("sharpness", K, 1.0, "ArrayLike | optax.Schedule"),
            ("step", K, "dual_norm", "Step"),
            *TARGET_RMS,
            *INFER,
            *MESH,
        ],
        OPTIMIZER,
    ),
    "optimizers.sign_descent": (optimizers.sign_descent, [*LR, *descent(0.0)], OPTIMIZER),
    "optimizers.normalized_sgd": (optimizers.normalized_sgd, [*LR, *descent(0.0)], OPTIMIZER),
    "optimizers.spectral_descent": (
        optimizers.spectral_descent,
        [*LR, *descent(0.0), ("polar", K, "newton_schulz", "PolarMethod"), *MESH],
        OPTIMIZER,
    ),
    "optimizers.modular_descent": (
        optimizers.modular_descent,
        [
            *LR,
            *descent(0.9),
            ("escape_velocity", K, False, "bool"),
            ("init_lr", K, None, "ArrayLike | None"),
            ("rule", K, None, "Literal['prodigy', 'cosine'] | None"),
            *ROLES_KW,
            *NORMS,
            *TARGET_RMS,
            *INFER,
            *MESH,
        ],
        OPTIMIZER,
    ),
    "optimizers.scion": (
        optimizers.scion,
        [
            *LR,
            ("radius", K, 1.0, "ArrayLike"),
            ("momentum", K, 0.9, "ArrayLike"),
            ("constrained", K, True, "bool"),
            ("mu_dtype", K, None, "DTypeLike | None"),
            *ROLES_KW,
            *NORMS,
            *TARGET_RMS,
            *INFER,
            *MESH,
        ],
        OPTIMIZER,
    ),
    "optimizers.muon": (optimizers.muon, [*LR, *MUON], OPTIMIZER),
    "optimizers.normuon": (optimizers.normuon, [*LR, *adaptive_muon(0.95)], OPTIMIZER),
    "optimizers.adamuon": (optimizers.adamuon, [*LR, *adaptive_muon(0.999)], OPTIMIZER),
}


def _split(params) -> tuple[list, dict]:
    """Positional parameters in order; keyword-only ones by name."""
    positional = [p for p in params if p[1] is not K]
    keyword = {p[0]: p[1:] for p in params if p[1] is K}
    assert len(keyword) == len([p for p in params if p[1] is K]), "a keyword listed twice"
    return positional, keyword


@pytest.mark.parametrize("name", list(EXPECTED))
def test_signature_is_the_one_before_the_groups(name):
    f, expected, returns = EXPECTED[name]
    sig = inspect.signature(f)
    got = [(p.name, p.kind, p.default, p.annotation) for p in sig.parameters.values()]
    assert _split(got) == _split(expected)
    assert sig.return_annotation == returns
    # No **kw left in the signature: every keyword is explicit.
    assert all(p.kind in (P, K) for p in sig.parameters.values())
    # help() and Sphinx read the same signature, name, module and docstring.
    assert f.__name__ == name.rsplit(".", 1)[-1]
    assert f.__module__.startswith("normtx.")
    assert f.__doc__
    assert f.__globals__ is not vars(normtx._keywords)
    # Every annotation of the signature resolves where the function looks names up.
    assert set(sig.parameters) <= set(typing.get_type_hints(f))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_unknown_keyword_is_a_type_error_naming_it(name):
    f, expected, _ = EXPECTED[name]
    required = [None for _, kind, default, _ in expected if kind is P and default is REQUIRED]
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'heads_as_bach'"):
        f(*required, heads_as_bach=True)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_unpack_annotation_names_the_group_keywords(name):
    """The function keeps its static ``**kw: Unpack[Options]`` annotation (what a type checker
    reads), and ``Options`` holds keywords of the signature with their annotations."""
    f, _, _ = EXPECTED[name]
    sig = inspect.signature(f).parameters
    extra = {n: a for n, a in f.__annotations__.items() if n != "return" and n not in sig}
    (annotation,) = extra.values()  # **kw's, the one annotation the signature does not show
    assert annotation.startswith("Unpack["), annotation
    (options,) = typing.get_args(eval(annotation, f.__globals__))
    for key, annotation in options.__annotations__.items():
        assert sig[key].kind is K
        assert sig[key].annotation == annotation.__forward_arg__


def test_optax_inject_hyperparams_injects_a_group_keyword():
    """``inject_hyperparams`` binds ``inspect.signature``: ``momentum`` (a ``DESCENT`` keyword of
    ``modular_descent``) is injected, and the injected optimizer's steps are the plain one's."""
    params = {
        "Dense_0": {"kernel": jnp.ones((3, 4), jnp.float32)},
        "head": {"kernel": jnp.ones((4, 2), jnp.float32)},
    }
    grads = jax.tree.map(
        lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape) - 3, params
    )
    injected = optax.inject_hyperparams(optimizers.modular_descent)(learning_rate=0.1, momentum=0.8)
    plain = optimizers.modular_descent(0.1, momentum=0.8)
    s_inj, s_ref = injected.init(params), plain.init(params)
    assert float(s_inj.hyperparams["momentum"]) == pytest.approx(0.8)
    for _ in range(2):
        u_inj, s_inj = jax.jit(injected.update)(grads, s_inj, params)
        u_ref, s_ref = jax.jit(plain.update)(grads, s_ref, params)
        for a, b in zip(jax.tree.leaves(u_inj), jax.tree.leaves(u_ref), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("factory", "momentum"), [(optimizers.sign_descent, 0.0), (optimizers.modular_descent, 0.9)]
)
def test_per_function_default_is_applied(factory, momentum):
    """``DESCENT``'s momentum defaults to 0 and ``modular_descent`` overrides it to 0.9: injected
    with every keyword at its default, the state holds that default."""
    params = {
        "Dense_0": {"kernel": jnp.ones((3, 4), jnp.float32)},
        "head": {"kernel": jnp.ones((4, 2), jnp.float32)},
    }
    state = optax.inject_hyperparams(factory)(learning_rate=0.1).init(params)
    assert state.hyperparams["momentum"] == np.float32(momentum)  # injected as float32


# ---- the decorator on its own ---------------------------------------------------------------------


class _Colour(TypedDict, total=False):
    hue: float
    name: str | None


_COLOUR = KeywordGroup(_Colour, hue=0.5, name=None)


@keywords(_COLOUR, hue=0.25)
def _paint(canvas: int, coats: int = 1, *, dry: bool = True, **kw: Unpack[_Colour]) -> tuple:
    return canvas, coats, dry, kw


def test_call_passes_own_arguments_and_every_group_keyword():
    assert _paint(3) == (3, 1, True, {"hue": 0.25, "name": None})
    assert _paint(3, 2, dry=False, name="red") == (3, 2, False, {"hue": 0.25, "name": "red"})
    assert _paint(canvas=3, hue=1.0) == (3, 1, True, {"hue": 1.0, "name": None})
    sig = inspect.signature(_paint)
    assert [(p.name, p.kind, p.default) for p in sig.parameters.values()] == [
        ("canvas", P, REQUIRED),
        ("coats", P, 1),
        ("dry", K, True),
        ("hue", K, 0.25),
        ("name", K, None),
    ]
    assert sig.parameters["name"].annotation == "str | None"


def test_bad_calls_are_pythons_type_errors():
    with pytest.raises(TypeError, match=r"_paint\(\) got an unexpected keyword argument 'hues'"):
        _paint(3, hues=1.0)
    with pytest.raises(TypeError, match=r"_paint\(\) missing a required argument: 'canvas'"):
        _paint(hue=1.0)
    with pytest.raises(TypeError, match="too many positional arguments"):
        _paint(3, 2, False)


def test_groups_must_match_the_unpack_annotation_and_defaults():
    with pytest.raises(TypeError, match="defaults for"):
        KeywordGroup(_Colour, hue=0.5)
    with pytest.raises(TypeError, match="must take"):
        keywords(_COLOUR)(lambda canvas: canvas)

    def untyped(canvas, **kw):
        return canvas

    with pytest.raises(TypeError, match="Unpack"):
        keywords(_COLOUR)(untyped)

    def clash(hue: float, **kw: Unpack[_Colour]):
        return hue

    with pytest.raises(TypeError, match="own parameters"):
        keywords(_COLOUR)(clash)

    def plain(canvas: int, **kw: Unpack[_Colour]):
        return canvas

    assert keywords(_COLOUR)(plain)(1) == 1
    with pytest.raises(TypeError, match="in no group"):
        keywords(_COLOUR, shade=1)(plain)
