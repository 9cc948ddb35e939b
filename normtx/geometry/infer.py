"""The Flax rules that give every leaf of a parameter tree its role (read from paths and shapes).

``infer`` applies them to a linen param dict or an nnx ``State``; ``resolve`` takes an explicit
roles tree instead. The rules (names Flax gives parameters, layer axes of scanned stacks, the
attention projections, how the head is found, ``labels=`` overrides) are listed in the
``normtx.roles`` module documentation.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from typing_extensions import TypedDict, Unpack

from normtx._keywords import KeywordGroup, keywords
from normtx._pytree import describe_leaf, flatten_with_paths
from normtx.geometry.classify import Leaf, classify
from normtx.geometry.role import FROZEN, ROLE_NAMES, Role, as_role

__all__ = [
    "INFER",
    "LABELLING",
    "ROLES",
    "HeadSpec",
    "InferOptions",
    "LabelSpec",
    "LabellingOptions",
    "RolesOption",
    "infer",
    "resolve",
    "resolve_roles",
]

_HEAD_NAME = re.compile(r"(?:.*_)?(?:head|classifier|logits|readout|unembed|unembedding|output)")
LabelSpec = Mapping[str, "str | Role"] | Callable[[str, Any], "str | Role | None"] | None
HeadSpec = str | Literal[False] | None


class InferOptions(TypedDict, total=False):
    """How ``infer`` reads the roles: ``head``, ``labels``, ``heads_as_batch`` (see ``infer``)."""

    head: HeadSpec
    labels: LabelSpec
    heads_as_batch: bool


INFER = KeywordGroup(InferOptions, head=None, labels=None, heads_as_batch=False)


class RolesOption(TypedDict, total=False):
    """``roles``: ``None`` (infer them) or a pytree of role names / ``Role`` (see ``resolve``)."""

    roles: Any


ROLES = KeywordGroup(RolesOption, roles=None)


class LabellingOptions(RolesOption, InferOptions, total=False):
    """The roles of a tree, given or inferred: ``roles`` and ``InferOptions``."""


LABELLING = KeywordGroup(LabellingOptions, **ROLES.defaults, **INFER.defaults)


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


def _label_roles(
    leaves: list[Leaf], labels: LabelSpec, heads_as_batch: bool, masked: list[str], what: str
) -> set[str]:
    """Applies ``labels``; returns the paths it labelled. A regex that matches only leaves masked
    out (``optax.MaskedNode``) is not an error: it labels the whole tree."""
    labelled: set[str] = set()
    if labels is None:
        return labelled
    if callable(labels) and not isinstance(labels, Mapping):
        for lf in leaves:
            value = labels(lf.path, lf.leaf)
            if value is not None:
                lf.role, lf.error = as_role(value, lf.shape, lf.path, heads_as_batch), None
                labelled.add(lf.path)
        return labelled
    if not isinstance(labels, Mapping):
        raise ValueError(
            f"{what}: labels must be a dict of path regex -> role name, or a callable "
            f"(path, leaf) -> role name | Role | None; got {labels!r}."
        )
    for pattern, value in labels.items():
        rx = _path_regex(pattern, f"{what}: labels")
        hits = [lf for lf in leaves if rx.fullmatch(lf.path)]
        if not hits and not any(rx.fullmatch(p) for p in masked):
            raise ValueError(
                f"{what}: the labels regex {pattern!r} matches no parameter path. A regex "
                "matches a whole path or its trailing components; paths are "
                f"{_some_paths(leaves)}."
            )
        for lf in hits:
            role = as_role(value, lf.shape, lf.path, heads_as_batch)
            if lf.path in labelled and lf.role != role:
                raise ValueError(
                    f"{what}: leaf {lf.path!r} is labelled twice, as {lf.role.label!r} and "
                    f"{role.label!r} (regex {pattern!r}); make the labels regexes disjoint."
                )
            lf.role, lf.error = role, None
            labelled.add(lf.path)
    return labelled


def _some_paths(leaves: list[Leaf], n: int = 16) -> str:
    paths = [lf.path for lf in leaves]
    return f"{paths[:n]}{' …' if len(paths) > n else ''}"


def _module(path: str) -> tuple[str, ...]:
    return tuple(path.split("/")[:-1])


def _assign_head(
    leaves: list[Leaf], head: HeadSpec, labelled: set[str], masked: list[str], what: str
) -> str | None:
    """Gives the head its role; returns the path of a head found by position (else ``None``).

    ``masked`` are the paths of leaves masked out (``optax.MaskedNode``: ``optax.masked`` and
    ``optax.partition`` pass the other leaves so). A masked kernel keeps its place, so the head is
    the whole tree's, and when it is masked no leaf of this tree becomes the head.
    """
    if head is False:
        return None
    dense = [
        lf
        for lf in leaves
        if lf.path not in labelled and lf.role is not None and lf.role == Role("hidden", (0,), (1,))
    ]
    masked_kernels = [p for p in masked if p.rsplit("/", 1)[-1] == "kernel"]
    if head is not None:
        if not isinstance(head, str):
            raise ValueError(f"{what}: head must be a path regex, False or None, got {head!r}.")
        rx = _path_regex(head, f"{what}: head")
        hits = [lf for lf in leaves if rx.fullmatch("/".join(lf.module)) or rx.fullmatch(lf.path)]
        kernels = [lf for lf in hits if lf in dense]
        if not kernels:
            if any(rx.fullmatch("/".join(_module(p))) or rx.fullmatch(p) for p in masked_kernels):
                return None  # the head is masked out here
            found = [f"{lf.path} ({lf.role.label if lf.role else 'unclassified'})" for lf in hits]
            raise ValueError(
                f"{what}: head={head!r} matches no 2-D Dense kernel (it matches {found}). "
                "The regex must match a module path or a kernel path (or their trailing "
                f"components); paths are {_some_paths(leaves)}."
            )
        for lf in kernels:
            lf.role = Role("head", (0,), (1,))
        return None
    if any(lf.role is not None and lf.role.name == "head" for lf in leaves):
        return None  # labelled explicitly
    # A Dense kernel labelled 'frozen' keeps its place among the candidates (and its label):
    # freezing the head must not make the layer below it the head. Nor must masking it.
    pool = [
        lf
        for lf in leaves
        if lf in dense or (lf.role is not None and lf.role.name == FROZEN and _is_dense_kernel(lf))
    ]
    named = [lf for lf in pool if lf.module and _HEAD_NAME.fullmatch(lf.module[-1].lower())]
    if named or any(
        _module(p) and _HEAD_NAME.fullmatch(_module(p)[-1].lower()) for p in masked_kernels
    ):
        for lf in named:
            if lf in dense:
                lf.role = Role("head", (0,), (1,))
        return None
    top = min(len(m) for m in [lf.module for lf in leaves] + [_module(p) for p in masked])
    candidates = [(lf.path, lf) for lf in pool if len(lf.module) == top]
    candidates += [(p, None) for p in masked_kernels if len(_module(p)) == top]
    if not candidates:
        return None
    path, lf = max(candidates, key=lambda c: _natural_key(c[0]))
    if lf is not None and lf in dense:
        lf.role = Role("head", (0,), (1,))
    return path


def _warn_head_by_position(path: str, masked: bool, what: str) -> None:
    module = _module(path)
    name = module[-1] if module else path
    where = (
        " It is masked out here (optax.MaskedNode), so no leaf of this tree is the head."
        if masked
        else ""
    )
    warnings.warn(
        f"{what}: no module is named as the output layer (head, lm_head, *_head, classifier, "
        f"logits, readout, unembed, output), so {path!r}, the last Dense kernel among the "
        f"top-level modules, is taken as the head by position.{where} Pass head={name!r} to "
        "confirm it (this silences the warning), head=False for no head, or head=<regex> to name "
        "another kernel; normtx.roles.describe and normtx.optimizers.describe show every role.",
        UserWarning,
        stacklevel=4,
    )


def _is_dense_kernel(lf: Leaf) -> bool:
    return lf.name == "kernel" and len(lf.shape) == 2


@keywords(INFER)
def resolve_roles(
    params: Any, roles: Any = None, *, what: str = "roles.infer", **kw: Unpack[InferOptions]
) -> tuple[list[tuple[str, Any, Role]], str | None]:
    """``([(path, leaf, Role), ...], head_by_position)``: every leaf in flatten order with its
    explicit or inferred role, and the path of the head when it was found by position (the last
    Dense kernel among the top-level modules, announced by a warning), else ``None``.

    Leaves masked out (``optax.MaskedNode``) get no role, but keep their place in the head rule
    and may be named by ``labels``, ``head`` and ``roles``, so the roles of the other leaves are
    the ones they have in the whole tree.
    """
    pairs, _ = flatten_with_paths(params, is_leaf=_is_masked)
    flat = [(p, x) for p, x in pairs if not _is_masked(x)]
    masked = [p for p, x in pairs if _is_masked(x)]
    head, labels, heads_as_batch = kw["head"], kw["labels"], kw["heads_as_batch"]
    if not flat:
        raise ValueError(f"{what}: the parameter tree has no leaves.")
    if roles is not None:
        if head is not None or labels is not None:
            raise ValueError(
                f"{what}: give either an explicit roles tree or head=/labels= for inference, "
                "not both."
            )
        return _explicit_roles(flat, masked, roles, heads_as_batch, what), None
    leaves = []
    for path, leaf in flat:
        comps = path.split("/")
        leaves.append(Leaf(path, leaf, tuple(np.shape(leaf)), tuple(comps[:-1]), comps[-1]))
    classify(leaves, heads_as_batch)
    labelled = _label_roles(leaves, labels, heads_as_batch, masked, what)
    positional = _assign_head(leaves, head, labelled, masked, what)
    bad = [lf for lf in leaves if lf.role is None]
    if bad:
        raise ValueError(_unclassified(leaves, bad, what))
    for lf in leaves:
        lf.role.check(lf.shape, lf.path)
    if positional is not None:
        _warn_head_by_position(positional, positional in masked, what)
    return [(lf.path, lf.leaf, lf.role) for lf in leaves], positional


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


# Leaves a model keeps besides its parameters: BatchNorm's running statistics (Flax names them
# 'mean' and 'var', nnx.BatchStat) and what integer or key arrays hold (step counters, RNG keys
# and their counts: nnx.RngKey/RngCount, an optimizer's count).
_STATISTICS = frozenset({"mean", "var"})


def _not_a_parameter(lf: Leaf) -> str | None:
    """What the leaf is, if it is evidently not a trainable parameter."""
    dtype = getattr(lf.leaf, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return "not a parameter (a PRNG key, such as nnx.RngKey's)"
        return (
            f"not a parameter ({dtype}: a counter or an index, such as nnx.RngCount or a step "
            "count; only floating leaves are trained)"
        )
    if lf.name in _STATISTICS or "batch_stats" in lf.path.split("/"):
        return "not a parameter (a normalization layer's running statistic, nnx.BatchStat)"
    return None


def _unclassified(leaves: list[Leaf], bad: list[Leaf], what: str) -> str:
    """The error for leaves no rule classifies: what they are, and how to exclude or label them."""
    states = {lf.path: _not_a_parameter(lf) for lf in bad}
    lines = "\n".join(
        f"  {describe_leaf(lf.path, lf.leaf)}: {states[lf.path] or lf.error}" for lf in bad
    )
    advice = []
    collections = sorted({lf.path.split("/")[0] for lf in leaves} - {"params"})
    if any(lf.path.split("/")[0] == "params" for lf in leaves) and collections:
        advice.append(
            f"If {collections} are Flax collections other than parameters, pass only "
            "variables['params'] (or nnx.state(model, nnx.Param))."
        )
    elif any(states.values()):
        advice.append(
            f"{what} trains parameters only: pass nnx.state(model, nnx.Param) (not "
            "nnx.state(model), which holds batch statistics and RNG state too) or linen's "
            "variables['params'], and keep other state out of the optimizer (optax.masked, "
            "optax.partition with optax.set_to_zero)."
        )
    unknown = [lf for lf in bad if states[lf.path] is None]
    if unknown:
        example = {0: "bias", 1: "bias", 2: "hidden"}.get(len(unknown[0].shape), "conv")
        advice.append(
            "Label the parameters with labels={path_regex: role_name} (e.g. labels={"
            f"{unknown[0].path.split('/')[-1]!r}: {example!r}}}) or a callable (path, leaf) -> "
            f"role name | Role | None. Role names: {ROLE_NAMES}, optionally prefixed "
            "'scanned/'; normtx.roles.Role(name, fan_in_axes, fan_out_axes, layer_axes, "
            "batch_axes) gives any other layout."
        )
    return f"{what}: cannot classify {len(bad)} leaf/leaves:\n{lines}\n" + " ".join(advice)


def _explicit_roles(flat, masked, roles, heads_as_batch, what) -> list[tuple[str, Any, Role]]:
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
    extra = [p for p in by_path if p not in set(paths) | set(masked)]
    if missing or extra:
        raise ValueError(
            f"{what}: the roles tree does not match the parameter tree. Parameters without a "
            f"role: {missing[:12]}; roles without a parameter: {extra[:12]}. Build it with "
            "normtx.roles.infer(params) and edit it, or leave roles=None to infer them."
        )
    return [(p, leaf, as_role(by_path[p], np.shape(leaf), p, heads_as_batch)) for p, leaf in flat]


@keywords(INFER)
def infer(params: Any, **kw: Unpack[InferOptions]) -> Any:
    """The role of every leaf of a Flax parameter tree (see the module docstring for the rules).

    Args:
      params: a linen param dict (``variables['params']`` or the whole ``{'params': …}``), an nnx
        ``State`` (``nnx.state(model, nnx.Param)``), or any pytree of arrays with Flax names.
      head: a regex naming the output projection (matched against module and kernel paths, or
        their trailing components); ``None`` finds it by name or position; ``False``: no head.
      labels: ``{path_regex: role}`` or ``(path, leaf) -> role | None``, applied before the head
        rule and taking precedence over inference; a role is a name or a ``Role``. ``path`` is
        the leaf's key path joined by ``'/'`` (``'blocks/0/attn/q_proj/kernel'``).
      heads_as_batch: treat each attention head as its own matrix (the heads axis of the q/k/v
        and out kernels becomes a batch axis) instead of one matrix per projection.

    Returns:
      A pytree of ``Role`` with the structure of ``params``.

    Raises:
      ValueError: for leaves no rule classifies (listing their paths and how to label them), a
        ``labels`` regex or ``head`` that matches nothing, or an unknown role name.

    Example:
      An attention block (``nn.MultiHeadDotProductAttention``'s kernels: q/k/v
      ``(d_model, heads, d_head)``, out ``(heads, d_head, d_model)``), a learned position table
      labelled by hand, and a head found by its module's name:

      >>> zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
      >>> attention = {name: {"kernel": zeros(8, 2, 4)} for name in ("query", "key", "value")}
      >>> params = {"attn": {**attention, "out": {"kernel": zeros(2, 4, 8)}},
      ...           "pos_emb": zeros(16, 8),
      ...           "head": {"kernel": zeros(8, 10), "bias": zeros(10)}}
      >>> roles = normtx.roles.infer(params, labels={"pos_emb": "embedding"})
      >>> jax.tree.map(lambda role: role.label, roles)
      {'attn': {'key': {'kernel': 'attention'}, 'out': {'kernel': 'attention'},
                'query': {'kernel': 'attention'}, 'value': {'kernel': 'attention'}},
       'head': {'bias': 'bias', 'kernel': 'head'}, 'pos_emb': 'embedding'}
      >>> roles["attn"]["query"]["kernel"]
      Role(name='attention', fan_in_axes=(0,), fan_out_axes=(1, 2), layer_axes=(), batch_axes=())
      >>> roles["attn"]["out"]["kernel"]
      Role(name='attention', fan_in_axes=(0, 1), fan_out_axes=(2,), layer_axes=(), batch_axes=())

      For an nnx model pass ``nnx.state(model, nnx.Param)``: the roles come back as a ``State``.
    """
    return resolve(params, **kw)


@keywords(INFER)
def resolve(params: Any, roles: Any = None, **kw: Unpack[InferOptions]) -> Any:
    """A pytree of ``Role`` with the structure of ``params``: ``roles`` or, if ``None``, ``infer``.

    ``roles`` is a pytree of role names / ``Role`` whose leaf paths are those of ``params`` (an
    nnx ``State`` and its pure-array form have the same paths); it is checked against ``params``.
    """
    resolved, _ = resolve_roles(params, roles, **kw)
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [r for _, _, r in resolved])
