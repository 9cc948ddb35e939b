"""The modular norm of a whole network with norms and scales chosen by role (anthology Prop. 7).

``modular_norm`` is the norm ``max_l s_l N_l(W_l)`` of a parameter tree whose ``N_l`` and ``s_l``
come from the role of each leaf (``normtx.roles``): a ``normtx.norms.Modular`` that reads every
leaf's norm and scale from one ``Geometry``, so the norm a step-size rule measures
(``escape_velocity_lr(norm=modular_norm(...))``) is the norm ``modular_norm_partition`` descends.
"""

from __future__ import annotations

from typing import Any

from jax.sharding import Mesh
from typing_extensions import Unpack

from normtx._keywords import keywords
from normtx.geometry.assign import GEOMETRY, Geometry, GeometryOptions, GeometryTable
from normtx.norms.base import Norm
from normtx.norms.tree import Modular

__all__ = ["RoleModular", "modular_norm"]


class RoleModular(Modular):
    """The modular norm ``max_l s_l N_l(W_l)`` whose ``N_l``, ``s_l`` follow the leaves' roles.

    A ``normtx.norms.Modular`` (``norm``, ``dual_norm``, ``dualize``, ``duals_and_directions``,
    ``resolve``) that works on any parameter tree: the roles are inferred from (or matched by
    path to) the tree it is given, so it needs no params at construction and accepts both an nnx
    ``State`` and the pure arrays ``nnx.Optimizer`` passes to ``update``. Build it with
    ``normtx.modular_norm``; ``geometry`` is its ``normtx.roles.Geometry``.
    """

    def __init__(self, geometry: Geometry, *, mesh: Mesh | None = None):
        super().__init__(norms=geometry.norms, scales=None, mesh=mesh)
        self.geometry = geometry

    def __repr__(self) -> str:
        return f"RoleModular({self.geometry!r})"

    def resolve(self, tree: Any, what: str = "") -> list[tuple[str, Any, Norm | None, Any]]:
        """``[(path, leaf, norm, scale), ...]`` for every leaf, validated.

        Errors are named after the function that built the geometry (``muon``,
        ``modular_descent``, ``modular_norm``: the one the user called), not ``what``, the name of
        the transform that asks.
        """
        del what
        return [(a.path, a.leaf, a.norm, a.scale) for a in self.geometry.assign(tree)]

    def describe(self, tree: Any) -> GeometryTable:
        """The table of ``normtx.roles.describe`` for ``tree``."""
        return self.geometry.describe(tree)


@keywords(GEOMETRY)
def modular_norm(
    roles: Any = None, *, mesh: Mesh | None = None, **kw: Unpack[GeometryOptions]
) -> RoleModular:
    r"""The modular norm ``max_l s_l N_l(W_l)`` of a network, each ``N_l`` and ``s_l`` by role.

    Takes the arguments of ``modular_norm_partition`` (minus the step options) and returns the
    norm that partition descends, as a ``normtx.norms.Modular``: use it wherever a tree norm is
    asked for, e.g. ``escape_velocity_lr(direction, norm=normtx.modular_norm(...))``.

    Args:
      roles: ``None`` (infer them from the tree with ``normtx.roles.infer``) or a pytree with the
        params' structure of role names / ``normtx.roles.Role`` (matched by path).
      norms: ``{role name: Norm or None}`` overriding ``normtx.roles.default_norms()``; ``None``
        leaves that role's leaves out of the norm (their updates pass through unchanged). The
        role supplies the dimension numbers (leave the norm's axes unset).
      scales: the ``s_l``: ``None`` (all 1), a number, ``{role name: s}`` (missing roles 1), or
        ``'mass'`` (modula's masses, ``s_l = M / m_l``; see ``normtx.roles.Geometry``).
      masses: ``{role name: mass per slice}`` for ``scales='mass'``.
      head, labels, heads_as_batch: passed to ``normtx.roles.infer``.
      mesh: ``None`` or a ``jax.sharding.Mesh``: compute the polar factors of the RMS -> RMS
        (spectral-family) leaves together by the owner-device strategy over its devices
        (``normtx.sharding``).

    Returns:
      A ``RoleModular`` (a ``normtx.norms.Modular``); ``.describe(params)`` is its table.

    Example:
      The head measured by ℓ∞ (``norms={'head': linf()}``: 5, dual ℓ1 = 7.4), the embedding by
      ℓ1 -> RMS (the largest RMS of a row: 2; dual ``Σ_i √d ‖g_i‖₂ = 1 + 4``), the bias by RMS
      (0.5; dual ``√2 ‖b‖₂ = 1``), every scale 1:

      >>> mod = normtx.modular_norm(norms={"head": norms.linf()})
      >>> grads = {"embed": {"embedding": jnp.array([[0.5, -0.5], [2.0, 2.0]], jnp.float32)},
      ...          "head": {"kernel": jnp.array([[0.3, -2.0], [5.0, -0.1]], jnp.float32),
      ...                   "bias": jnp.array([0.5, -0.5], jnp.float32)}}
      >>> print(f"{float(jax.jit(mod.dual_norm)(grads)):.4f}")  # Σ_l N_l†(G_l)/s_l
      13.4000
      >>> print(f"{float(jax.jit(mod.norm)(grads)):.4f}")  # max_l s_l N_l(G_l)
      5.0000

    References:
      Bernstein & Newhouse, *Old Optimizer, New Norm*, Prop. 7 and the epilogue (2024);
      Large et al., *Scalable Optimization in the Modular Norm* (2024).
    """
    return RoleModular(Geometry(roles, **kw, what="modular_norm"), mesh=mesh)
