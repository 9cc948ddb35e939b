"""The geometry of a network: each leaf's role, the norm of that role, its scale, and the
modular norm they make (anthology Prop. 7 and the epilogue).

- ``role``: the vocabulary (``Role``, ``ROLE_NAMES``);
- ``infer``: the Flax rules that find every leaf's role from its path and shape;
- ``assign``: ``Geometry`` (roles + a norm and a scale per role), resolved once per tree
  structure into one ``Assignment`` per leaf, and the ``describe`` table;
- ``modular``: ``RoleModular``/``modular_norm``, the modular norm over those assignments;
- ``export``: the roles for optax (``optax_labels``, ``muon_dimension_numbers``).

``__all__`` lists the public names, which ``normtx.roles`` re-exports (``modular_norm`` is
``normtx.modular_norm``). The keyword groups of the functions that take a geometry (``INFER``,
``LABELLING`` in ``infer``; ``NORMS``, ``GEOMETRY``, ``ROLE_GEOMETRY`` in ``assign``: see
``normtx._keywords``) and the types are imported from their modules.
"""

from normtx.geometry.assign import (
    DEFAULT_MASSES,
    Assignment,
    Geometry,
    GeometryTable,
    check_scales,
    default_norms,
    describe,
    merge_norms,
)
from normtx.geometry.export import muon_dimension_numbers, optax_labels
from normtx.geometry.infer import infer, resolve
from normtx.geometry.role import FROZEN, MATRIX_ROLES, POLAR_ROLES, ROLE_NAMES, VECTOR_ROLES, Role

# The public names: ``normtx.roles`` re-exports this list as it is.
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
    "Role",
    "check_scales",
    "default_norms",
    "describe",
    "infer",
    "merge_norms",
    "muon_dimension_numbers",
    "optax_labels",
    "resolve",
]
