"""The geometry of a network: every leaf's role, the norm of that role, and its scale.

``Geometry`` holds the choices (roles or how to infer them, a norm per role, scales) and
``Geometry.assign(params)`` applies them to a parameter tree: one ``Assignment`` per leaf, with the
role's dimension numbers bound into its norm. Everything that reads a leaf's norm — the modular
norm, ``modular_norm_partition``, escape velocity, ``describe``, the optimizers — reads it from
one ``assign`` call, so none can disagree, and the resolution is done once per tree structure.
"""

from __future__ import annotations

import dataclasses
import html
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import numpy as np
from typing_extensions import TypedDict, Unpack

from normtx._keywords import KeywordGroup, keywords
from normtx._pytree import describe_leaf, flatten_with_paths
from normtx.geometry.infer import (
    INFER,
    ROLES,
    HeadSpec,
    InferOptions,
    LabelSpec,
    RolesOption,
    resolve_roles,
)
from normtx.geometry.role import FROZEN, ROLE_NAMES, Role
from normtx.norms.base import Norm
from normtx.norms.operator import OperatorNorm, l1_to_rms, rms_to_rms
from normtx.norms.vector import VectorNorm, rms

__all__ = [
    "DEFAULT_MASSES",
    "GEOMETRY",
    "NORMS",
    "ROLE_GEOMETRY",
    "Assignment",
    "Geometry",
    "GeometryOptions",
    "GeometryTable",
    "NormOptions",
    "NormsSpec",
    "RoleGeometryOptions",
    "ScalesSpec",
    "check_scales",
    "default_norms",
    "describe",
    "merge_norms",
]

ScalesSpec = float | Mapping[str, float] | Literal["mass"] | None
NormsSpec = Mapping[str, Norm | None] | None

DEFAULT_MASSES: Mapping[str, float] = {name: 1.0 for name in ROLE_NAMES}
"""Per-slice masses for ``scales='mass'``: every matrix and vector is an atom of mass 1 (modula)."""


class NormOptions(TypedDict, total=False):
    """The norm and scale of each role: ``norms``, ``scales``, ``masses`` (see ``Geometry``)."""

    norms: NormsSpec
    scales: ScalesSpec
    masses: Mapping[str, float] | None


NORMS = KeywordGroup(NormOptions, norms=None, scales=None, masses=None)


class GeometryOptions(NormOptions, InferOptions, total=False):
    """A ``Geometry`` but its ``roles`` (a positional argument where these are keywords)."""


GEOMETRY = KeywordGroup(GeometryOptions, **NORMS.defaults, **INFER.defaults)


class RoleGeometryOptions(RolesOption, NormOptions, InferOptions, total=False):
    """A whole ``Geometry``, ``roles`` included, as keywords."""


ROLE_GEOMETRY = KeywordGroup(RoleGeometryOptions, **ROLES.defaults, **GEOMETRY.defaults)


def default_norms() -> dict[str, Norm]:
    """The norm of each role (anthology epilogue and its geometry table).

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
    """``default_norms()`` overridden by ``norms``; the ``'frozen'`` role has no norm."""
    table: dict[str, Norm | None] = {**default_norms(), FROZEN: None}
    if norms is None:
        return table
    for key, value in _by_role(norms, "norms", "Norm (or None: leave those leaves unnormed)", what):
        if value is not None and not isinstance(value, Norm):
            raise ValueError(
                f"{what}: norms[{key!r}] must be a normtx Norm or None, got {value!r}."
            )
        if key == FROZEN and value is not None:
            raise ValueError(
                f"{what}: the 'frozen' role takes no norm (its leaves are not trained), got "
                f"norms['frozen']={value!r}; give the leaves another role to train them."
            )
        table[key] = value
    return table


def _by_role(table: Any, name: str, values: str, what: str) -> list[tuple[str, Any]]:
    """The items of ``table``, a dict role name -> ``values`` (a ``ValueError`` otherwise)."""
    if not isinstance(table, Mapping):
        raise ValueError(f"{what}: {name} must be a dict role name -> {values}, got {table!r}.")
    for key in table:
        if key not in ROLE_NAMES:
            raise ValueError(f"{what}: unknown role {key!r} in {name}; roles are {ROLE_NAMES}.")
    return list(table.items())


def _check_positive_table(table: Mapping[str, Any], name: str, what: str) -> dict[str, float]:
    out = {}
    for key, value in _by_role(table, name, "number", what):
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
    _layouts: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        check_scales(self.scales, self.masses, self.what)
        merge_norms(self.norms, self.what)
        if self.roles is not None and (self.head is not None or self.labels is not None):
            raise ValueError(
                f"{self.what}: give either an explicit roles tree or head=/labels= for "
                "inference, not both."
            )

    def resolve(self, params: Any) -> Any:
        """A pytree of ``Role`` with the structure of ``params`` (from ``assign``)."""
        treedef = jax.tree_util.tree_structure(params)
        return jax.tree_util.tree_unflatten(treedef, [a.role for a in self.assign(params)])

    def assign(self, params: Any, what: str | None = None) -> list[Assignment]:
        """Role, norm and scale of every leaf, in flatten order (the one place this is computed).

        Roles and bound norms depend only on the tree's structure, paths, shapes and dtypes: they
        are computed once per structure and reused (every later ``update`` trace, every layer of
        a chain that reads the same geometry); the scales, which may be traced hyperparameters,
        and the leaves themselves are filled in on each call.
        """
        flat, _ = flatten_with_paths(params)
        layout, _ = self._resolved(params, what)
        roles = [r for _, r, _, _ in layout]
        s = _scale_values(
            self.scales, self.masses, roles, [n for *_, n in layout], [b for _, _, b, _ in layout]
        )
        return [
            Assignment(path, leaf, role, norm, scale)
            for (path, role, norm, _), (_, leaf), scale in zip(layout, flat, s, strict=True)
        ]

    def _resolved(self, params: Any, what: str | None = None) -> tuple[list, str | None]:
        """``_layout`` of this tree structure, computed once (then read from the cache)."""
        flat, treedef = flatten_with_paths(params)
        key = (treedef, tuple((tuple(np.shape(x)), _dtype_name(x)) for _, x in flat))
        entry = self._layouts.get(key)
        if entry is None:
            entry = self._layout(params, what or self.what)
            self._layouts[key] = entry
        return entry

    def _layout(self, params: Any, what: str) -> tuple[list, str | None]:
        """``(path, role, bound norm, layer count)`` per leaf, validated against the leaves, and
        the path of a head found by position (``None`` if none was)."""
        resolved, positional = resolve_roles(
            params,
            self.roles,
            head=self.head,
            labels=self.labels,
            heads_as_batch=self.heads_as_batch,
            what=what,
        )
        table = merge_norms(self.norms, what)
        out = []
        for path, leaf, role in resolved:
            norm = _bind(table[role.name], role, path, leaf, what)
            if norm is not None:
                try:
                    norm.check_leaf(leaf, path)
                except ValueError as e:
                    raise ValueError(f"{what}: {e}") from None
            layers = math.prod(np.shape(leaf)[a] for a in role.layer_axes)
            out.append((path, role, norm, layers))
        return out, positional

    def describe(
        self, params: Any, route: Callable[[Assignment], str] | None = None
    ) -> GeometryTable:
        """The table of ``normtx.roles.describe`` for ``params``: path, shape, role, axes, norm,
        scale, then (with ``route``) what the optimizer does with the leaf, and a note where the
        head was found by position."""
        _, positional = self._resolved(params)
        rows = [
            (
                a.path,
                str(tuple(np.shape(a.leaf))),
                a.role.label,
                a.role.describe_axes(),
                "-" if a.norm is None else a.norm.name,
                f"{float(a.scale):g}",
                *(() if route is None else (route(a),)),
                "head by position (pass head=)" if a.path == positional else "",
            )
            for a in self.assign(params)
        ]
        header = ("path", "shape", "role", "axes", "norm", "scale")
        header += ("route", "note") if route is not None else ("note",)
        return GeometryTable.of(header, rows)


class GeometryTable(str):
    """A table of one row per leaf: a ``str`` (the aligned text) that displays as itself.

    ``print(table)``, ``str(table)`` and the REPL show the aligned text; Jupyter shows an HTML
    table (``_repr_html_``). ``table.header`` and ``table.rows`` hold the cells.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> GeometryTable:
        """The aligned table of ``header`` and ``rows`` (tuples of cell strings)."""
        cells = [header, *rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        table = cls("\n".join(lines))
        table.header, table.rows = tuple(header), tuple(tuple(r) for r in rows)
        return table

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td><code>{esc(c)}</code></td>" for c in r) + "</tr>"
            for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _dtype_name(x: Any) -> str:
    return str(getattr(x, "dtype", type(x).__name__))


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


@keywords(GEOMETRY)
def describe(params: Any, roles: Any = None, **kw: Unpack[GeometryOptions]) -> GeometryTable:
    """The table of path, shape, role, axes, norm and scale that the modular norm uses.

    Takes the arguments of ``normtx.modular_norm_partition`` (one ``Geometry.assign`` computes
    both) and returns a ``GeometryTable``: a string that shows as the aligned table in a REPL
    and as an HTML table in Jupyter; ``print`` it in a script. A head found by position (no
    module named as the output layer) is noted in its row, and announced by a warning. The
    optimizers' own tables (with what each does with every leaf: Muon's polar factor or AdamW)
    come from ``normtx.optimizers.describe``.

    Example:
      The params of a small linen model (``model.init(key, x)['params']``; an nnx model's
      ``nnx.state(model, nnx.Param)`` works the same):

      >>> zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
      >>> params = {"Embed_0": {"embedding": zeros(10, 4)},
      ...           "Dense_0": {"kernel": zeros(4, 4), "bias": zeros(4)},
      ...           "LayerNorm_0": {"scale": zeros(4), "bias": zeros(4)},
      ...           "head": {"kernel": zeros(4, 10)}}
      >>> normtx.roles.describe(params)
      path               shape    role       axes        norm                       scale...
      -----------------  -------  ---------  ----------  -------------------------  -----...
      Dense_0/bias       (4,)     bias       whole leaf  rms                        1
      Dense_0/kernel     (4, 4)   hidden     (0,)->(1,)  rms_to_rms[newton_schulz]  1
      Embed_0/embedding  (10, 4)  embedding  (0,)->(1,)  l1_to_rms                  1
      LayerNorm_0/bias   (4,)     bias       whole leaf  rms                        1
      LayerNorm_0/scale  (4,)     gain       whole leaf  rms                        1
      head/kernel        (4, 10)  head       (0,)->(1,)  rms_to_rms[newton_schulz]  1
    """
    return Geometry(roles, **kw, what="roles.describe").describe(params)
