"""The roles of a parameter tree in the optax world: partition labels and Muon's dimension numbers.

``optax_labels`` gives every leaf its role name, for ``optax.partition``; ``muon_dimension_numbers``
gives ``optax.contrib.muon`` the leaves ``normtx.optimizers.muon`` orthogonalizes, each with the
``MuonDimensionNumbers`` of its role (conv kernels, attention projections and scanned stacks as
normtx reshapes them), and ``None`` for every other leaf (Adam's).

Both read the roles once, from the whole tree: pass their *results* to optax, not a function that
calls them. optax calls a callable ``param_labels``/``muon_weight_dimension_numbers`` again inside
its partition, on a tree whose other leaves are ``optax.MaskedNode``, where some roles cannot be
read any more: a scanned kernel's layer axes are read off its bias, which Muon's partition masks
(Adam's leaf), and the kernel is then refused.
"""

from __future__ import annotations

from typing import Any

import jax
import optax.contrib
from typing_extensions import Unpack

from normtx._keywords import keywords
from normtx.geometry.infer import INFER, InferOptions, resolve
from normtx.geometry.role import POLAR_ROLES, Role

__all__ = ["muon_dimension_numbers", "optax_labels"]


@keywords(INFER)
def optax_labels(params: Any, roles: Any = None, **kw: Unpack[InferOptions]) -> Any:
    """The role name of every leaf (``'hidden'``, ``'embedding'``, …, ``'frozen'``), as a pytree with
    the structure of ``params``: labels for ``optax.partition``.

    Args:
      params: the parameter tree (a linen param dict or an nnx ``State``).
      roles, head, labels, heads_as_batch: as in ``normtx.roles.resolve`` / ``infer``.

    Returns:
      A pytree of ``str``, one of ``normtx.roles.ROLE_NAMES`` per leaf (a scanned leaf gets its
      slice's role: ``'hidden'``, not ``'scanned/hidden'``).

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
      ...           "head": {"kernel": jnp.zeros((8, 2))}}
      >>> normtx.roles.optax_labels(params)
      {'Dense_0': {'bias': 'bias', 'kernel': 'hidden'}, 'head': {'kernel': 'head'}}
      >>> tx = optax.partition(
      ...     {"hidden": optax.sgd(0.1), "head": optax.adam(1e-3), "bias": optax.set_to_zero()},
      ...     normtx.roles.optax_labels(params))
    """
    resolved = resolve(params, roles, **kw)
    return jax.tree.map(lambda r: r.name, resolved)


def _dimension_numbers(role: Role) -> optax.contrib.MuonDimensionNumbers | None:
    if role.name not in POLAR_ROLES:
        return None
    return optax.contrib.MuonDimensionNumbers(
        reduction_axis=role.fan_in_axes, output_axis=role.fan_out_axes
    )


@keywords(INFER)
def muon_dimension_numbers(params: Any, roles: Any = None, **kw: Unpack[InferOptions]) -> Any:
    """``optax.contrib.muon``'s ``muon_weight_dimension_numbers`` for the leaves normtx's Muon
    orthogonalizes: the ``POLAR_ROLES`` (hidden, conv and attention kernels).

    Each such leaf gets ``MuonDimensionNumbers(reduction_axis=fan_in_axes,
    output_axis=fan_out_axes)`` of its role; optax treats every other axis (scanned layers,
    heads with ``heads_as_batch``) as a batch of matrices, as normtx does. Every other leaf
    (embeddings, the head, biases, gains, frozen leaves) gets ``None``: optax sends it to Adam.
    With these, ``optax.contrib.muon`` orthogonalizes the same matrices as
    ``normtx.optimizers.muon`` with the same roles (``optax.contrib.muon``'s own default sends
    every 2-D leaf — embeddings and the head too — through Muon and every other rank to Adam).

    Args:
      params: the parameter tree (a linen param dict or an nnx ``State``).
      roles, head, labels, heads_as_batch: as in ``normtx.roles.resolve`` / ``infer``.

    Returns:
      A pytree with the structure of ``params`` whose leaves are
      ``optax.contrib.MuonDimensionNumbers`` or ``None``. Pass the tree itself to optax (see the
      module docstring), not a function that computes it.

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
      ...           "head": {"kernel": jnp.zeros((8, 2))}}
      >>> dims = normtx.roles.muon_dimension_numbers(params)
      >>> dims["Dense_0"]["kernel"]
      MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1,))
      >>> print(dims["Dense_0"]["bias"], dims["head"]["kernel"])
      None None
      >>> tx = optax.contrib.muon(0.02, muon_weight_dimension_numbers=dims)
    """
    resolved = resolve(params, roles, **kw)
    return jax.tree.map(_dimension_numbers, resolved)
