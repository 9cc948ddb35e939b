"""The vocabulary of roles: what part a parameter leaf plays, and which of its axes make matrices.

A ``Role`` names one of ``ROLE_NAMES`` and the leaf's fan-in, fan-out, layer and batch axes. It is
a plain frozen value (hashable, a pytree leaf), so a tree of roles has the structure of the params.
Role *names* (``'hidden'``, ``'scanned/conv'``) become ``Role`` objects for a leaf's shape here;
the Flax rules that find them live in ``normtx.geometry.infer``.
"""

from __future__ import annotations

import dataclasses

from normtx.dims import DimensionNumbers

__all__ = [
    "FROZEN",
    "MATRIX_ROLES",
    "POLAR_ROLES",
    "ROLE_NAMES",
    "VECTOR_ROLES",
    "Role",
    "as_role",
]

MATRIX_ROLES: tuple[str, ...] = ("hidden", "head", "embedding", "conv", "attention")
VECTOR_ROLES: tuple[str, ...] = ("bias", "gain")
FROZEN: str = "frozen"
"""The role of a leaf that is not trained: it has no norm (it is outside the modular norm and its
masses), and the optimizers (``modular_descent``, ``scion``, ``muon``) give it a zero update and
no momentum. Only ``labels=``/``roles=`` assign it (``labels={'embed': 'frozen'}``)."""
ROLE_NAMES: tuple[str, ...] = MATRIX_ROLES + VECTOR_ROLES + (FROZEN,)
POLAR_ROLES: tuple[str, ...] = ("hidden", "conv", "attention")
"""Roles whose leaves Muon orthogonalizes (every other role is Muon's 'other' parameters)."""


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
    if base in VECTOR_ROLES or base == FROZEN:
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


def as_role(value, shape, path, heads_as_batch) -> Role:
    if isinstance(value, Role):
        value.check(tuple(shape), path)
        return value
    if isinstance(value, str):
        return _role_from_name(value, tuple(shape), path, heads_as_batch)
    raise ValueError(f"leaf {path!r}: expected a role name or a normtx.roles.Role, got {value!r}.")
