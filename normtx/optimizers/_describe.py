"""``describe``: what a role-based optimizer does with every leaf of a parameter tree."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from normtx._validation import check_choice
from normtx.geometry import FROZEN, Assignment, Geometry, GeometryTable
from normtx.geometry.assign import ROLE_GEOMETRY
from normtx.optimizers._muon_parts import muon_geometry, muon_route
from normtx.optimizers.modular import modular_descent, scion
from normtx.optimizers.muon import muon

__all__ = ["describe"]

_FACTORIES = {"muon": muon, "modular_descent": modular_descent, "scion": scion}
_ROUTES = {
    "muon": "polar factor",
    "adam": "adamw",
    "modular": "modular step",
    FROZEN: "zero (frozen)",
}


def describe(
    params: Any,
    optimizer: Literal["muon", "modular_descent", "scion"] = "muon",
    **kwargs: Any,
) -> GeometryTable:
    """The table of what ``optimizer`` does with each leaf: role, norm and route.

    The optimizer's own arguments (``roles``, ``head``, ``labels``, ``heads_as_batch``, ``norms``,
    ``scales``, ``masses``; for ``muon`` also ``others``, ``scale``, ``consistent_rms``, …) give
    the same geometry the optimizer builds; the others (``learning_rate``, …) may be passed too
    and are ignored. Columns: path, shape, role, axes, norm, scale (as ``normtx.roles.describe``),
    then the route —

    - ``muon``: ``'polar factor'`` (momentum, then Newton–Schulz: the ``POLAR_ROLES``),
      ``'adamw'`` (``others='adamw'``) or ``'modular step'`` (``others='modular'``);
    - ``modular_descent`` and ``scion``: ``'modular step'`` for the normed leaves, ``'momentum'``
      for a role whose norm is ``None``;
    - ``'zero (frozen)'`` for leaves labelled ``'frozen'`` —

    and a note where the head was found by position (no module named as the output layer).

    Args:
      params: the parameter tree, as passed to the optimizer's ``init``.
      optimizer: ``'muon'``, ``'modular_descent'`` or ``'scion'``.
      **kwargs: the optimizer's keyword arguments.

    Returns:
      A ``normtx.roles.GeometryTable`` (a string; an HTML table in Jupyter).

    Raises:
      ValueError: for another optimizer, an argument the optimizer does not take, or what the
        optimizer itself refuses in its geometry (unclassifiable leaves, a bad ``head``).

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.zeros((4, 8))}, "head": {"kernel": jnp.zeros((8, 2))}}
      >>> table = normtx.optimizers.describe(params, "muon")
      >>> [(row[0], row[2], row[6]) for row in table.rows]
      [('Dense_0/kernel', 'hidden', 'polar factor'), ('head/kernel', 'head', 'adamw')]
    """
    what = "optimizers.describe"
    check_choice("optimizer", optimizer, tuple(_FACTORIES), what)
    parameters = inspect.signature(_FACTORIES[optimizer]).parameters
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ValueError(
            f"{what}: {optimizer} takes no argument {unknown}; its arguments are "
            f"{list(parameters)}."
        )
    args = {n: p.default for n, p in parameters.items() if p.default is not p.empty} | kwargs
    if optimizer == "muon":
        spec = inspect.signature(muon_geometry).parameters
        geometry = muon_geometry(**{n: args[n] for n in spec})
        return geometry.describe(params, lambda a: _ROUTES[muon_route(a.role, args["others"])])
    geometry = Geometry(**ROLE_GEOMETRY.take(args), what=optimizer)
    return geometry.describe(params, _modular_route)


def _modular_route(a: Assignment) -> str:
    if a.role.name == FROZEN:
        return _ROUTES[FROZEN]
    return "momentum" if a.norm is None else _ROUTES["modular"]
