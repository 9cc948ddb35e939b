"""The geometry of a network: each leaf's role, the norm of that role, its scale, and the
modular norm they make (anthology Prop. 7 and the epilogue).

- ``role``: the vocabulary (``Role``, ``ROLE_NAMES``);
- ``infer``: the Flax rules that find every leaf's role from its path and shape;
- ``assign``: ``Geometry`` (roles + a norm and a scale per role), resolved once per tree
  structure into one ``Assignment`` per leaf, and the ``describe`` table;
- ``modular``: ``RoleModular``/``modular_norm``, the modular norm over those assignments;
- ``export``: the roles for optax (``optax_labels``, ``muon_dimension_numbers``).

The public names are re-exported by ``normtx.roles`` (and ``normtx.modular_norm``).
"""

from normtx.geometry.assign import (
    DEFAULT_MASSES,
    Assignment,
    Geometry,
    GeometryTable,
    NormsSpec,
    ScalesSpec,
    check_scales,
    default_norms,
    describe,
    merge_norms,
)
from normtx.geometry.export import muon_dimension_numbers, optax_labels
from normtx.geometry.infer import HeadSpec, LabelSpec, infer, resolve
from normtx.geometry.modular import RoleModular, modular_norm
from normtx.geometry.role import FROZEN, MATRIX_ROLES, POLAR_ROLES, ROLE_NAMES, VECTOR_ROLES, Role

__all__ = [
    "DEFAULT_MASSES",
    "FROZEN",
    "MATRIX_ROLES",
    "POLAR_ROLES",
    "ROLE_NAMES",
    "VECTOR_ROLES",
    "Assignment",
    "Geometry",
    "GeometryTable",
    "HeadSpec",
    "LabelSpec",
    "NormsSpec",
    "Role",
    "RoleModular",
    "ScalesSpec",
    "check_scales",
    "default_norms",
    "describe",
    "infer",
    "merge_norms",
    "modular_norm",
    "muon_dimension_numbers",
    "optax_labels",
    "resolve",
]
