"""Roles of the leaves of a Flax parameter tree, and the norm and scale each role gets.

The anthology's epilogue asks for a norm per layer chosen by the *role* the layer plays: a linear
layer maps RMS-normalised vectors to RMS-normalised vectors (RMS -> RMS), an embedding maps one-hot
vectors to RMS-normalised vectors (ℓ1 -> RMS, Prop. 8). ``infer`` reads the role of every leaf of a
linen param dict or an nnx ``State`` from its path and shape (never from Python objects):

============  ===========================================  ==============================
role          leaves                                       dimension numbers
============  ===========================================  ==============================
``hidden``    2-D Dense kernels ``(d_in, d_out)``          ``(0,) -> (1,)``
``head``      the output projection (a 2-D Dense kernel)   ``(0,) -> (1,)``
``embedding`` ``nn.Embed``/``nnx.Embed`` tables            ``(0,) -> (1,)`` (vocab -> d)
``conv``      conv kernels ``(*spatial, in, out)``         ``(0, …, n-2) -> (n-1,)``
``attention`` q/k/v kernels ``(d_model, heads, d_head)``   ``(0,) -> (1, 2)``
              out kernel ``(heads, d_head, d_model)``      ``(0, 1) -> (2,)``
``bias``      biases                                       a vector norm
``gain``      norm-layer scales (LayerNorm, RMSNorm, …)    a vector norm
============  ===========================================  ==============================

A leaf stacked by ``nn.scan``/``nnx.scan``/``nnx.vmap`` carries leading *layer axes*: its role is
the role of one slice, with the slice's dimension numbers shifted past the layer axes
(``Role.scanned``); each slice is its own matrix or vector (DESIGN §2).

The rules, from how Flax names parameters (``kernel``, ``bias``, ``embedding``, ``scale``):

- ``embedding`` leaves are embedding tables; ``scale`` leaves are gains; ``bias`` leaves are biases.
- A ``kernel`` under a module named ``query``/``key``/``value``/``out`` whose parent holds at least
  two of those names is an attention kernel (``MultiHeadDotProductAttention``,
  ``nnx.MultiHeadAttention``).
- Any other ``kernel`` of rank 2 is a Dense kernel. For higher ranks the number of layer axes is
  read off the module's bias (a bias of shape ``(*layers, d_out)``) or, without a bias, off the
  nearest enclosing subtree whose other leaves agree on one number of layer axes (the stacked
  LayerNorm scales of the same scanned block, say). What remains is a Dense kernel (rank 2) or a
  conv kernel (rank 4 = HWIO, or any rank >= 3 under a module whose name contains ``conv``).
- The head is the kernel the user names (``head=``), else every Dense kernel under a module called
  ``head``, ``lm_head``, ``*_head``, ``classifier``, ``logits``, ``readout``, ``unembed`` or
  ``output``, else the last Dense kernel (in path order, numbers compared as numbers) among the
  modules at the top level of the model — the shallowest modules of the tree. A model whose top
  level has no Dense layer (tied embeddings) has no head; ``head=False`` turns the rule off.

Anything else is an error that lists the paths and says how to label them: ``labels=`` maps path
regexes to role names (or ``Role`` objects), or is a callable ``(path, leaf) -> name | Role | None``.
A role name is one of ``ROLE_NAMES``, optionally prefixed ``'scanned/'`` (one leading layer axis).
Regexes (``labels`` keys and ``head``) match a whole path or its trailing components:
``'Dense_1'`` matches ``'params/Dense_1'`` but not ``'params/Dense_10'``.

``describe(params)`` prints the table of paths, shapes, roles, norms and scales that
``normtx.modular_norm_partition`` uses with the same arguments (``Geometry.assign`` computes
both).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import numpy as np

from normtx._pytree import describe_leaf, flatten_with_paths
from normtx.dims import DimensionNumbers
from normtx.norms.base import Norm
from normtx.norms.operator import OperatorNorm, l1_to_rms, rms_to_rms
from normtx.norms.vector import VectorNorm, rms

__all__ = [
    "DEFAULT_MASSES",
    "MATRIX_ROLES",
    "ROLE_NAMES",
    "VECTOR_ROLES",
    "Assignment",
    "Geometry",
    "Role",
    "check_scales",
    "default_norms",
    "describe",
    "infer",
    "merge_norms",
    "resolve",
]

MATRIX_ROLES: tuple[str, ...] = ("hidden", "head", "embedding", "conv", "attention")
VECTOR_ROLES: tuple[str, ...] = ("bias", "gain")
ROLE_NAMES: tuple[str, ...] = MATRIX_ROLES + VECTOR_ROLES

DEFAULT_MASSES: Mapping[str, float] = {name: 1.0 for name in ROLE_NAMES}
"""Per-slice masses for ``scales='mass'``: every matrix and vector is an atom of mass 1 (modula)."""

_ATTENTION_PARTS = frozenset({"query", "key", "value", "out"})
_HEAD_NAME = re.compile(r"(?:.*_)?(?:head|classifier|logits|readout|unembed|unembedding|output)")

LabelSpec = Mapping[str, "str | Role"] | Callable[[str, Any], "str | Role | None"] | None
HeadSpec = str | Literal[False] | None
ScalesSpec = float | Mapping[str, float] | Literal["mass"] | None
NormsSpec = Mapping[str, Norm | None] | None


def _axes(axes) -> tuple[int, ...]:
    return tuple(int(a) for a in axes)


@dataclasses.dataclass(frozen=True)
class Role:
    """The role of one leaf: a name and the axes that make its matrices or vectors.

    Attributes:
      name: one of ``ROLE_NAMES`` (the role of one slice for a scanned leaf).
      fan_in_axes, fan_out_axes: for matrix roles, the leaf's axes that form ``d_in`` and
        ``d_out`` of each matrix; ``None`` for vector roles.
      layer_axes: leading axes stacked by ``nn.scan``/``nnx.scan``/``vmap`` (one slice per layer).
      batch_axes: further axes along which each slice is its own matrix or vector (attention heads
        with ``heads_as_batch=True``).

    Every axis of a matrix role that is not fan-in or fan-out is a batch axis; a vector role's
    vectors are the slices along ``layer_axes + batch_axes``. A ``Role`` is a plain value (hashable,
    a pytree leaf), so a tree of roles has the structure of the params.
    """

    name: str
    fan_in_axes: tuple[int, ...] | None = None
    fan_out_axes: tuple[int, ...] | None = None
    layer_axes: tuple[int, ...] = ()
    batch_axes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.name not in ROLE_NAMES:
            raise ValueError(f"unknown role {self.name!r}; roles are {ROLE_NAMES}.")
        for field in ("fan_in_axes", "fan_out_axes"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, _axes(value))
        object.__setattr__(self, "layer_axes", _axes(self.layer_axes))
        object.__setattr__(self, "batch_axes", _axes(self.batch_axes))
        has_dims = self.fan_in_axes is not None or self.fan_out_axes is not None
        if self.is_matrix and not (self.fan_in_axes and self.fan_out_axes):
            raise ValueError(
                f"role {self.name!r} is a matrix role: give non-empty fan_in_axes and "
                f"fan_out_axes, got {self.fan_in_axes} and {self.fan_out_axes}."
            )
        if not self.is_matrix and has_dims:
            raise ValueError(
                f"role {self.name!r} is a vector role: it takes no fan_in_axes/fan_out_axes."
            )
        named = (self.fan_in_axes or ()) + (self.fan_out_axes or ()) + self.slice_axes
        if len(set(named)) != len(named):
            raise ValueError(f"role {self.name!r}: axes overlap or repeat in {self}.")

    @property
    def is_matrix(self) -> bool:
        """Whether the role's slices are matrices (else vectors)."""
        return self.name in MATRIX_ROLES

    @property
    def scanned(self) -> bool:
        """Whether the leaf stacks layers along leading ``layer_axes``."""
        return bool(self.layer_axes)

    @property
    def slice_axes(self) -> tuple[int, ...]:
        """``layer_axes + batch_axes``: the axes that index separate matrices/vectors."""
        return self.layer_axes + self.batch_axes

    @property
    def dims(self) -> DimensionNumbers | None:
        """The dimension numbers of a matrix role (``None`` for vector roles)."""
        if not self.is_matrix:
            return None
        return DimensionNumbers(self.fan_in_axes, self.fan_out_axes)

    @property
    def label(self) -> str:
        """``'hidden'``, or ``'scanned/hidden'`` for a stacked leaf."""
        return f"scanned/{self.name}" if self.scanned else self.name

    def describe_axes(self) -> str:
        """``'(0,)->(1,)'``, ``'(1,)->(2,) per (0,)'`` or ``'per (0,)'`` for tables."""
        per = f"per {self.slice_axes}" if self.slice_axes else ""
        if not self.is_matrix:
            return per or "whole leaf"
        return f"{self.fan_in_axes}->{self.fan_out_axes}" + (f" {per}" if per else "")

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ``ValueError`` (naming ``path``) if the role's axes do not fit ``shape``."""
        named = (self.fan_in_axes or ()) + (self.fan_out_axes or ()) + self.slice_axes
        bad = [a for a in named if not 0 <= a < len(shape)]
        if bad:
            raise ValueError(
                f"role {self.label!r} ({self.describe_axes()}) does not fit leaf {path!r} of "
                f"shape {tuple(shape)}: axes {bad} are out of range."
            )


# ---- role names -> Role ----------------------------------------------------------------------


def _attention_role(rank: int, out: bool, layers: int, heads_as_batch: bool, path: str) -> Role:
    if rank - layers != 3:
        raise ValueError(
            f"leaf {path!r}: an attention kernel has 3 axes per layer "
            f"((d_model, heads, d_head) or (heads, d_head, d_model)); this one has rank {rank} "
            f"with {layers} layer axes."
        )
    a, b, c = layers, layers + 1, layers + 2
    lay = tuple(range(layers))
    if out:  # (heads, d_head, d_model)
        if heads_as_batch:
            return Role("attention", (b,), (c,), lay, (a,))
        return Role("attention", (a, b), (c,), lay)
    if heads_as_batch:  # (d_model, heads, d_head)
        return Role("attention", (a,), (c,), lay, (b,))
    return Role("attention", (a,), (b, c), lay)


def _role_from_name(name: str, shape: tuple[int, ...], path: str, heads_as_batch: bool) -> Role:
    """A role name (``'hidden'``, ``'scanned/conv'``, …) -> the ``Role`` for a leaf of ``shape``."""
    layers = 0
    base = name
    if name.startswith("scanned/"):
        layers, base = 1, name[len("scanned/") :]
    if base not in ROLE_NAMES:
        raise ValueError(
            f"unknown role name {name!r} for leaf {path!r}; role names are {ROLE_NAMES}, "
            "optionally prefixed 'scanned/' (one leading layer axis), or pass a normtx.roles.Role."
        )
    rank = len(shape)
    lay = tuple(range(layers))
    if rank < layers:
        raise ValueError(f"leaf {path!r} of shape {shape} has no layer axis for role {name!r}.")
    if base in VECTOR_ROLES:
        return Role(base, layer_axes=lay)
    if base == "attention":
        out = path.split("/")[-2:-1] == ["out"]
        return _attention_role(rank, out, layers, heads_as_batch, path)
    if base == "conv":
        if rank - layers < 3:
            raise ValueError(
                f"leaf {path!r} of shape {shape} is labelled {name!r}, but a conv kernel has "
                "at least 3 axes per layer (*spatial, in, out)."
            )
        return Role("conv", tuple(range(layers, rank - 1)), (rank - 1,), lay)
    if rank - layers != 2:
        hint = f"'scanned/{base}' or a Role with layer_axes" if rank - layers > 2 else "bias/gain"
        raise ValueError(
            f"leaf {path!r} of shape {shape} is labelled {name!r}, a matrix role with 2 axes "
            f"per layer, but it has {rank - layers}; use {hint}."
        )
    return Role(base, (layers,), (layers + 1,), lay)


def _as_role(value, shape, path, heads_as_batch) -> Role:
    if isinstance(value, Role):
        value.check(tuple(shape), path)
        return value
    if isinstance(value, str):
        return _role_from_name(value, tuple(shape), path, heads_as_batch)
    raise ValueError(f"leaf {path!r}: expected a role name or a normtx.roles.Role, got {value!r}.")


# ---- inference -------------------------------------------------------------------------------


def _path_regex(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(rf"(?:.*/)?(?:{pattern})")
    except re.error as e:
        raise ValueError(f"{what}: {pattern!r} is not a valid regular expression: {e}") from e


def _natural_key(path: str):
    """Sort key that compares digit runs as numbers (``Dense_2`` < ``Dense_10``)."""
    return [
        (1, int(part), "") if part.isdigit() else (0, 0, part)
        for comp in path.split("/")
        for part in re.split(r"(\d+)", comp)
        if part
    ]


@dataclasses.dataclass
class _Leaf:
    path: str
    leaf: Any
    shape: tuple[int, ...]
    module: tuple[str, ...]
    name: str
    role: Role | None = None
    error: str | None = None


def _group_modules(leaves: list[_Leaf]) -> dict[tuple[str, ...], dict[str, _Leaf]]:
    modules: dict[tuple[str, ...], dict[str, _Leaf]] = {}
    for lf in leaves:
        modules.setdefault(lf.module, {})[lf.name] = lf
    return modules


def _is_attention(module: tuple[str, ...], children: Mapping[tuple[str, ...], set[str]]) -> bool:
    """A ``query``/``key``/``value``/``out`` module beside at least one other of those names."""
    if not module or module[-1] not in _ATTENTION_PARTS:
        return False
    return len(children.get(module[:-1], set()) & _ATTENTION_PARTS) >= 2


def _direct_layers(module, members, children) -> int | None:
    """Layer axes a module's own leaves prove, or ``None`` if they do not fix them."""
    if "kernel" in members and _is_attention(module, children):
        return len(members["kernel"].shape) - 3
    if "embedding" in members:
        return len(members["embedding"].shape) - 2
    if "scale" in members:
        return len(members["scale"].shape) - 1
    if "kernel" in members:
        k = members["kernel"].shape
        if len(k) == 2:
            return 0
        bias = members.get("bias")
        if bias is not None and len(bias.shape) >= 1:
            d = len(bias.shape) - 1
            if len(k) >= d + 2 and bias.shape == k[:d] + k[-1:]:
                return d
    return None


def _enclosing_layers(module, found_under: Mapping[tuple[str, ...], set[int]]) -> int | None:
    """Layer axes agreed on by the nearest enclosing subtree that has any evidence."""
    for k in range(len(module), -1, -1):
        found = found_under.get(module[:k])
        if found:
            return next(iter(found)) if len(found) == 1 else None
    return None


def _classify(leaves: list[_Leaf], heads_as_batch: bool) -> None:
    modules = _group_modules(leaves)
    children: dict[tuple[str, ...], set[str]] = {}
    for module in modules:
        if module:
            children.setdefault(module[:-1], set()).add(module[-1])
    evidence = {}
    found_under: dict[tuple[str, ...], set[int]] = {}  # prefix -> layer counts proven below it
    for module, members in modules.items():
        d = _direct_layers(module, members, children)
        if d is not None and d >= 0:
            evidence[module] = d
            for k in range(len(module) + 1):
                found_under.setdefault(module[:k], set()).add(d)
    for module, members in modules.items():
        attention = _is_attention(module, children)
        d = evidence.get(module)
        if d is None:
            d = _enclosing_layers(module, found_under)
        for name, lf in members.items():
            rank = len(lf.shape)
            if name == "kernel" and attention:
                if rank >= 3:
                    lf.role = _attention_role(
                        rank, module[-1] == "out", rank - 3, heads_as_batch, lf.path
                    )
                else:
                    lf.error = "an attention kernel needs 3 axes per layer"
            elif name == "kernel":
                lf.role, lf.error = _kernel_role(lf, module, d)
            elif name == "embedding":
                if rank >= 2:
                    lf.role = _shift(Role("embedding", (0,), (1,)), rank - 2)
                else:
                    lf.error = "an embedding table needs 2 axes (vocab, features)"
            elif name in ("bias", "scale"):
                role = "bias" if name == "bias" else "gain"
                natural = 2 if (attention and module[-1] != "out") else 1
                layers = d if d is not None else 0
                if attention:
                    layers = max(rank - natural, 0)
                heads = (layers,) if (attention and natural == 2 and heads_as_batch) else ()
                lf.role = Role(role, layer_axes=tuple(range(min(layers, rank))), batch_axes=heads)
            else:
                lf.error = f"no rule for a leaf named {name!r}"


def _shift(role: Role, layers: int) -> Role:
    if not layers:
        return role
    return Role(
        role.name,
        tuple(a + layers for a in role.fan_in_axes),
        tuple(a + layers for a in role.fan_out_axes),
        tuple(range(layers)),
        tuple(a + layers for a in role.batch_axes),
    )


def _kernel_role(lf: _Leaf, module, layers: int | None) -> tuple[Role | None, str | None]:
    rank = len(lf.shape)
    if rank < 2:
        return None, "a kernel needs at least 2 axes"
    if rank == 2:
        return Role("hidden", (0,), (1,)), None
    named_conv = bool(module) and "conv" in module[-1].lower()
    if layers is None:
        if rank == 4 or named_conv:
            layers = 0
        else:
            return None, (
                f"a rank-{rank} kernel whose layer axes cannot be told apart from conv axes "
                "(no bias of shape (*layers, d_out), no agreeing stacked siblings)"
            )
    rest = rank - layers
    if rest == 2:
        return _shift(Role("hidden", (0,), (1,)), layers), None
    if rest >= 3 and (rest == 4 or named_conv):
        return _shift(Role("conv", tuple(range(rest - 1)), (rest - 1,)), layers), None
    return None, (
        f"a rank-{rank} kernel with {layers} layer axes leaves {rest} axes: neither a Dense "
        "kernel (2) nor a conv kernel (HWIO, or a module named *conv*)"
    )


def _label_roles(leaves: list[_Leaf], labels: LabelSpec, heads_as_batch: bool) -> set[str]:
    """Applies ``labels``; returns the paths it labelled."""
    labelled: set[str] = set()
    if labels is None:
        return labelled
    if callable(labels) and not isinstance(labels, Mapping):
        for lf in leaves:
            value = labels(lf.path, lf.leaf)
            if value is not None:
                lf.role, lf.error = _as_role(value, lf.shape, lf.path, heads_as_batch), None
                labelled.add(lf.path)
        return labelled
    if not isinstance(labels, Mapping):
        raise ValueError(
            f"roles.infer: labels must be a dict of path regex -> role name, or a callable "
            f"(path, leaf) -> role name | Role | None; got {labels!r}."
        )
    for pattern, value in labels.items():
        rx = _path_regex(pattern, "roles.infer: labels")
        hits = [lf for lf in leaves if rx.fullmatch(lf.path)]
        if not hits:
            raise ValueError(
                f"roles.infer: the labels regex {pattern!r} matches no parameter path. A regex "
                "matches a whole path or its trailing components; paths are "
                f"{_some_paths(leaves)}."
            )
        for lf in hits:
            role = _as_role(value, lf.shape, lf.path, heads_as_batch)
            if lf.path in labelled and lf.role != role:
                raise ValueError(
                    f"roles.infer: leaf {lf.path!r} is labelled twice, as {lf.role.label!r} and "
                    f"{role.label!r} (regex {pattern!r}); make the labels regexes disjoint."
                )
            lf.role, lf.error = role, None
            labelled.add(lf.path)
    return labelled


def _some_paths(leaves: list[_Leaf], n: int = 16) -> str:
    paths = [lf.path for lf in leaves]
    return f"{paths[:n]}{' …' if len(paths) > n else ''}"


def _assign_head(leaves: list[_Leaf], head: HeadSpec, labelled: set[str]) -> None:
    if head is False:
        return
    dense = [
        lf
        for lf in leaves
        if lf.path not in labelled and lf.role is not None and lf.role == Role("hidden", (0,), (1,))
    ]
    if head is not None:
        if not isinstance(head, str):
            raise ValueError(
                f"roles.infer: head must be a path regex, False or None, got {head!r}."
            )
        rx = _path_regex(head, "roles.infer: head")
        hits = [lf for lf in leaves if rx.fullmatch("/".join(lf.module)) or rx.fullmatch(lf.path)]
        kernels = [lf for lf in hits if lf in dense]
        if not kernels:
            found = [f"{lf.path} ({lf.role.label if lf.role else 'unclassified'})" for lf in hits]
            raise ValueError(
                f"roles.infer: head={head!r} matches no 2-D Dense kernel (it matches {found}). "
                "The regex must match a module path or a kernel path (or their trailing "
                f"components); paths are {_some_paths(leaves)}."
            )
        for lf in kernels:
            lf.role = Role("head", (0,), (1,))
        return
    if any(lf.role is not None and lf.role.name == "head" for lf in leaves):
        return  # labelled explicitly
    named = [lf for lf in dense if lf.module and _HEAD_NAME.fullmatch(lf.module[-1].lower())]
    if not named:
        top = min(len(lf.module) for lf in leaves)
        candidates = [lf for lf in dense if len(lf.module) == top]
        named = [max(candidates, key=lambda lf: _natural_key(lf.path))] if candidates else []
    for lf in named:
        lf.role = Role("head", (0,), (1,))


def _resolve_roles(
    params: Any,
    roles: Any = None,
    *,
    head: HeadSpec = None,
    labels: LabelSpec = None,
    heads_as_batch: bool = False,
    what: str = "roles.infer",
) -> list[tuple[str, Any, Role]]:
    """``[(path, leaf, Role), ...]`` in flatten order: explicit ``roles`` or inferred ones."""
    flat, _ = flatten_with_paths(params)
    if not flat:
        raise ValueError(f"{what}: the parameter tree has no leaves.")
    if roles is not None:
        if head is not None or labels is not None:
            raise ValueError(
                f"{what}: give either an explicit roles tree or head=/labels= for inference, "
                "not both."
            )
        return _explicit_roles(flat, roles, heads_as_batch, what)
    leaves = []
    for path, leaf in flat:
        comps = path.split("/")
        leaves.append(_Leaf(path, leaf, tuple(np.shape(leaf)), tuple(comps[:-1]), comps[-1]))
    _classify(leaves, heads_as_batch)
    labelled = _label_roles(leaves, labels, heads_as_batch)
    _assign_head(leaves, head, labelled)
    bad = [lf for lf in leaves if lf.role is None]
    if bad:
        lines = "\n".join(f"  {describe_leaf(lf.path, lf.leaf)}: {lf.error}" for lf in bad)
        example = {0: "bias", 1: "bias", 2: "hidden"}.get(len(bad[0].shape), "conv")
        collections = sorted({lf.path.split("/")[0] for lf in leaves} - {"params"})
        hint = (
            f"If {collections} are Flax collections other than parameters, pass only "
            "variables['params'] (or nnx.state(model, nnx.Param)). "
            if any(lf.path.split("/")[0] == "params" for lf in leaves) and collections
            else ""
        )
        raise ValueError(
            f"{what}: cannot classify {len(bad)} leaf/leaves:\n{lines}\n{hint}"
            "Label them with labels={path_regex: role_name} (e.g. labels={"
            f"{bad[0].path.split('/')[-1]!r}: {example!r}}}) or a callable (path, leaf) -> role "
            f"name | Role | None. Role names: {ROLE_NAMES}, optionally prefixed 'scanned/'; "
            "normtx.roles.Role(name, fan_in_axes, fan_out_axes, layer_axes, batch_axes) gives "
            "any other layout."
        )
    for lf in leaves:
        lf.role.check(lf.shape, lf.path)
    return [(lf.path, lf.leaf, lf.role) for lf in leaves]


def _explicit_roles(flat, roles, heads_as_batch, what) -> list[tuple[str, Any, Role]]:
    is_role = lambda x: isinstance(x, (Role, str))  # noqa: E731
    given, _ = flatten_with_paths(roles, is_leaf=is_role)
    by_path = {}
    for path, value in given:
        if not is_role(value):
            raise ValueError(
                f"{what}: entry {path!r} of the roles tree is {value!r}; expected a role name "
                f"({ROLE_NAMES}) or a normtx.roles.Role."
            )
        by_path[path] = value
    paths = [p for p, _ in flat]
    missing = [p for p in paths if p not in by_path]
    extra = [p for p in by_path if p not in set(paths)]
    if missing or extra:
        raise ValueError(
            f"{what}: the roles tree does not match the parameter tree. Parameters without a "
            f"role: {missing[:12]}; roles without a parameter: {extra[:12]}. Build it with "
            "normtx.roles.infer(params) and edit it, or leave roles=None to infer them."
        )
    return [(p, leaf, _as_role(by_path[p], np.shape(leaf), p, heads_as_batch)) for p, leaf in flat]


def infer(
    params: Any,
    *,
    head: HeadSpec = None,
    labels: LabelSpec = None,
    heads_as_batch: bool = False,
) -> Any:
    """The role of every leaf of a Flax parameter tree (see the module docstring for the rules).

    Args:
      params: a linen param dict (``variables['params']`` or the whole ``{'params': …}``), an nnx
        ``State`` (``nnx.state(model, nnx.Param)``), or any pytree of arrays with Flax names.
      head: a regex naming the output projection (matched against module and kernel paths, or
        their trailing components); ``None`` finds it by name or position; ``False``: no head.
      labels: ``{path_regex: role}`` or ``(path, leaf) -> role | None``, applied before the head
        rule and taking precedence over inference; a role is a name or a ``Role``.
      heads_as_batch: treat each attention head as its own matrix (the heads axis of the q/k/v
        and out kernels becomes a batch axis) instead of one matrix per projection.

    Returns:
      A pytree of ``Role`` with the structure of ``params``.

    Raises:
      ValueError: for leaves no rule classifies (listing their paths and how to label them), a
        ``labels`` regex or ``head`` that matches nothing, or an unknown role name.

    Example::

      roles = normtx.roles.infer(nnx.state(model, nnx.Param))
      roles = normtx.roles.infer(variables['params'], head='Dense_3', labels={'pos_emb': 'embedding'})
    """
    return resolve(params, head=head, labels=labels, heads_as_batch=heads_as_batch)


def resolve(
    params: Any,
    roles: Any = None,
    *,
    head: HeadSpec = None,
    labels: LabelSpec = None,
    heads_as_batch: bool = False,
) -> Any:
    """A pytree of ``Role`` with the structure of ``params``: ``roles`` or, if ``None``, ``infer``.

    ``roles`` is a pytree of role names / ``Role`` whose leaf paths are those of ``params`` (an
    nnx ``State`` and its pure-array form have the same paths); it is checked against ``params``.
    """
    resolved = _resolve_roles(
        params, roles, head=head, labels=labels, heads_as_batch=heads_as_batch
    )
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [r for _, _, r in resolved])


# ---- norms and scales per role -----------------------------------------------------------------


def default_norms() -> dict[str, Norm]:
    """The norm of each role (anthology epilogue; DESIGN §3).

    - ``hidden``, ``attention``, ``conv``: RMS -> RMS (``√(d_in/d_out) σ_max``): these layers map
      RMS-normalised features to RMS-normalised features; ``dualize`` is ``√(d_out/d_in) U Vᵀ``,
      with ``U Vᵀ`` from 5 Newton–Schulz steps of the Polar Express schedule
      (``normtx.linalg.newton_schulz``: singular values within about ±13% of 1, at matmul cost;
      pass ``norms.rms_to_rms()`` for the exact SVD polar factor).
    - ``head``: RMS -> RMS as well (the logits are treated as features); ``lp_to_linf(p)`` (each
      logit's weights bounded) or ``linf()`` (sign, Scion's choice) are alternatives, pass them in
      ``norms={'head': …}``.
    - ``embedding``: ℓ1 -> RMS (``max_j ‖K[j, :]‖₂/√d``): inputs are one-hot, so each token's row
      is its own RMS-normalised vector (Prop. 8).
    - ``bias``, ``gain``: RMS (``‖b‖₂/√n``): vectors whose entries are each O(1).
    """
    polar = "newton_schulz"
    return {
        "hidden": rms_to_rms(polar=polar),
        "attention": rms_to_rms(polar=polar),
        "conv": rms_to_rms(polar=polar),
        "head": rms_to_rms(polar=polar),
        "embedding": l1_to_rms(),
        "bias": rms(),
        "gain": rms(),
    }


def _bind(norm: Norm | None, role: Role, path: str, leaf, what: str) -> Norm | None:
    """``norm`` with the role's dimension numbers (operator) or slice axes (vector)."""
    if norm is None:
        return None
    if isinstance(norm, OperatorNorm):
        if not role.is_matrix:
            raise ValueError(
                f"{what}: leaf {describe_leaf(path, leaf)} has role {role.label!r}, whose slices are "
                f"vectors, but its norm {norm.name} is a matrix (operator) norm. Give the "
                f"{role.name!r} role a vector norm (norms={{{role.name!r}: normtx.norms.rms()}}) "
                "or relabel the leaf."
            )
        if norm.fan_in_axes is not None and (norm.fan_in_axes, norm.fan_out_axes) != role.dims:
            raise ValueError(
                f"{what}: leaf {describe_leaf(path, leaf)}: norm {norm.name} has fan_in_axes="
                f"{norm.fan_in_axes}, fan_out_axes={norm.fan_out_axes}, but its role "
                f"{role.label!r} has {role.describe_axes()}. Leave the norm's axes unset (the "
                "role supplies them) or relabel the leaf with a Role of those axes."
            )
        return dataclasses.replace(
            norm, fan_in_axes=role.fan_in_axes, fan_out_axes=role.fan_out_axes
        )
    if isinstance(norm, VectorNorm):
        if norm.batch_axes and norm.batch_axes != role.slice_axes:
            raise ValueError(
                f"{what}: leaf {describe_leaf(path, leaf)}: norm {norm.name} has batch_axes="
                f"{norm.batch_axes}, but its role {role.label!r} slices along "
                f"{role.slice_axes}. Leave batch_axes unset (the role supplies them)."
            )
        return dataclasses.replace(norm, batch_axes=role.slice_axes)
    return norm


def merge_norms(norms: NormsSpec, what: str) -> dict[str, Norm | None]:
    table: dict[str, Norm | None] = dict(default_norms())
    if norms is None:
        return table
    if not isinstance(norms, Mapping):
        raise ValueError(
            f"{what}: norms must be a dict role name -> Norm (or None: leave those leaves "
            f"unnormed), got {norms!r}."
        )
    for key, value in norms.items():
        if key not in ROLE_NAMES:
            raise ValueError(f"{what}: unknown role {key!r} in norms; roles are {ROLE_NAMES}.")
        if value is not None and not isinstance(value, Norm):
            raise ValueError(
                f"{what}: norms[{key!r}] must be a normtx Norm or None, got {value!r}."
            )
        table[key] = value
    return table


def _check_positive_table(table: Mapping[str, Any], name: str, what: str) -> dict[str, float]:
    if not isinstance(table, Mapping):
        raise ValueError(f"{what}: {name} must be a dict role name -> number, got {table!r}.")
    out = {}
    for key, value in table.items():
        if key not in ROLE_NAMES:
            raise ValueError(f"{what}: unknown role {key!r} in {name}; roles are {ROLE_NAMES}.")
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{what}: {name}[{key!r}] must be a number > 0, got {value!r}.")
        out[key] = float(value)
    return out


def check_scales(scales: ScalesSpec, masses: Mapping[str, float] | None, what: str) -> None:
    """Validates ``scales``/``masses`` at construction (errors name the bad entry)."""
    is_mass = isinstance(scales, str) and scales == "mass"
    if masses is not None:
        if not is_mass:
            raise ValueError(f"{what}: masses= is only used with scales='mass'.")
        _check_positive_table(masses, "masses", what)
    if scales is None or is_mass:
        return
    if _is_scalar_array(scales):
        return  # an array (traced under optax.inject_hyperparams): checked where it is a number
    if isinstance(scales, numbers.Real) and not isinstance(scales, bool):
        if not scales > 0:
            raise ValueError(f"{what}: scales must be > 0, got {scales!r}.")
        return
    if isinstance(scales, str) or not isinstance(scales, Mapping):
        raise ValueError(
            f"{what}: scales must be None (all 1), a number, a dict role name -> number, or "
            f"'mass'; got {scales!r}."
        )
    _check_positive_table(scales, "scales", what)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One leaf's geometry: its role, its norm (``None``: not normed) and its scale ``s_l``."""

    path: str
    leaf: Any
    role: Role
    norm: Norm | None
    scale: Any  # a positive number (an array under optax.inject_hyperparams)


@dataclasses.dataclass(frozen=True, eq=False)
class Geometry:
    """Roles plus the norm and scale of each role: everything the modular norm of a network needs.

    ``normtx.modular_norm``, ``modular_norm_partition``, ``describe`` and the optimizers build one
    from their arguments and read every leaf's role, norm and scale from ``assign``, so they cannot
    disagree. Validated at construction.

    Attributes:
      roles: ``None`` (``infer`` them) or a pytree of role names / ``Role`` matched by path.
      norms: ``{role name: Norm or None}`` overriding ``default_norms()`` (``None``: not normed).
      scales: ``None`` (every ``s_l = 1``), one number, ``{role name: s}`` (missing roles 1), or
        ``'mass'``: modula's masses (Large et al., 2024). Each slice of a leaf with role ``r`` is
        an atom of mass ``m_r`` (``masses``, default ``DEFAULT_MASSES``: 1 for every role); the
        total mass is ``M = Σ_k m_{r(k)} · L_k`` over the normed leaves (``L_k`` the number of
        layers of a scanned leaf, else 1) and the scale is ``s_l = M / m_{r(l)}``. The unit step
        ``dualize_l(G_l)/s_l`` then moves each slice by its share ``m_l / M`` of the update, the
        rule modula's ``normalize`` applies to every atom of a network with unit sensitivities.
      masses: ``{role name: mass per slice}`` for ``scales='mass'``.
      head, labels, heads_as_batch: as in ``infer`` (only without explicit ``roles``).
      what: the name errors start with.
    """

    roles: Any = None
    norms: NormsSpec = None
    scales: ScalesSpec = None
    masses: Mapping[str, float] | None = None
    head: HeadSpec = None
    labels: LabelSpec = None
    heads_as_batch: bool = False
    what: str = "normtx.roles"

    def __post_init__(self):
        check_scales(self.scales, self.masses, self.what)
        merge_norms(self.norms, self.what)
        if self.roles is not None and (self.head is not None or self.labels is not None):
            raise ValueError(
                f"{self.what}: give either an explicit roles tree or head=/labels= for "
                "inference, not both."
            )

    @classmethod
    def of(cls, arguments: Mapping[str, Any], what: str) -> Geometry:
        """The geometry named by a function's arguments (its ``locals()``); other names ignored."""
        names = {f.name for f in dataclasses.fields(cls)} - {"what"}
        return cls(**{k: v for k, v in arguments.items() if k in names}, what=what)

    def resolve(self, params: Any) -> Any:
        """A pytree of ``Role`` with the structure of ``params`` (see ``normtx.roles.resolve``)."""
        return resolve(
            params,
            self.roles,
            head=self.head,
            labels=self.labels,
            heads_as_batch=self.heads_as_batch,
        )

    def assign(self, params: Any, what: str | None = None) -> list[Assignment]:
        """Role, norm and scale of every leaf, in flatten order (the one place this is computed)."""
        what = what or self.what
        resolved = _resolve_roles(
            params,
            self.roles,
            head=self.head,
            labels=self.labels,
            heads_as_batch=self.heads_as_batch,
            what=what,
        )
        table = merge_norms(self.norms, what)
        bound = [_bind(table[role.name], role, path, leaf, what) for path, leaf, role in resolved]
        for (path, leaf, _), norm in zip(resolved, bound, strict=True):
            if norm is not None:
                try:
                    norm.check_leaf(leaf, path)
                except ValueError as e:
                    raise ValueError(f"{what}: {e}") from None
        layer_counts = [
            math.prod(np.shape(leaf)[a] for a in role.layer_axes) for _, leaf, role in resolved
        ]
        roles = [r for _, _, r in resolved]
        s = _scale_values(self.scales, self.masses, roles, layer_counts, bound)
        return [
            Assignment(path, leaf, role, norm, scale)
            for (path, leaf, role), norm, scale in zip(resolved, bound, s, strict=True)
        ]

    def describe(self, params: Any, print_fn: Callable[[str], Any] | None = print) -> str:
        """Prints and returns the table of ``normtx.roles.describe``."""
        rows = [("path", "shape", "role", "axes", "norm", "scale")]
        for a in self.assign(params):
            rows.append(
                (
                    a.path,
                    str(tuple(np.shape(a.leaf))),
                    a.role.label,
                    a.role.describe_axes(),
                    "-" if a.norm is None else a.norm.name,
                    f"{float(a.scale):g}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        table = "\n".join(lines)
        if print_fn is not None:
            print_fn(table)
        return table


def _is_scalar_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and np.ndim(x) == 0


def _scale_values(scales, masses, roles, layer_counts, bound) -> list[Any]:
    if scales is None:
        return [1.0] * len(roles)
    if isinstance(scales, numbers.Real) or _is_scalar_array(scales):
        return [scales] * len(roles)
    if isinstance(scales, str) and scales == "mass":
        table = {**DEFAULT_MASSES, **(masses or {})}
        total = sum(
            table[r.name] * n
            for r, n, norm in zip(roles, layer_counts, bound, strict=True)
            if norm is not None
        )
        return [total / table[r.name] for r in roles]
    return [float(scales.get(r.name, 1.0)) for r in roles]


def describe(
    params: Any,
    roles: Any = None,
    *,
    norms: NormsSpec = None,
    scales: ScalesSpec = None,
    masses: Mapping[str, float] | None = None,
    head: HeadSpec = None,
    labels: LabelSpec = None,
    heads_as_batch: bool = False,
    print_fn: Callable[[str], Any] | None = print,
) -> str:
    """Prints and returns a table: path, shape, role, axes, norm, scale (as the partition uses).

    Takes the arguments of ``normtx.modular_norm_partition`` (``Geometry.assign`` computes both);
    ``print_fn=None`` only returns the table.
    """
    return Geometry.of(locals(), "roles.describe").describe(params, print_fn)
