"""Roles of the leaves of a Flax parameter tree, and the norm and scale each role gets.

The anthology's epilogue asks for a norm per layer chosen by the *role* the layer plays: a linear
layer maps RMS-normalised vectors to RMS-normalised vectors (RMS -> RMS), an embedding maps one-hot
vectors to RMS-normalised vectors (ℓ1 -> RMS, Prop. 8). ``infer`` reads the role of every leaf of a
linen param dict or an nnx ``State`` from its path and shape (never from Python objects):

=============  ===========================================  ==============================
role           leaves                                       dimension numbers
=============  ===========================================  ==============================
``hidden``     2-D Dense kernels ``(d_in, d_out)``          ``(0,) -> (1,)``
``head``       the output projection (a 2-D Dense kernel)   ``(0,) -> (1,)``
``embedding``  ``nn.Embed``/``nnx.Embed`` tables            ``(0,) -> (1,)`` (vocab -> d)
``conv``       conv kernels ``(*spatial, in, out)``         ``(0, …, n-2) -> (n-1,)``
``attention``  q/k/v kernels ``(d_model, heads, d_head)``   ``(0,) -> (1, 2)``
               out kernel ``(heads, d_head, d_model)``      ``(0, 1) -> (2,)``
``bias``       biases                                       a vector norm
``gain``       norm-layer scales (LayerNorm, RMSNorm, …)    a vector norm
``frozen``     leaves not trained (only by ``labels=``)     no norm; the optimizers give
                                                            them a zero update
=============  ===========================================  ==============================

A leaf stacked by ``nn.scan``/``nnx.scan``/``nnx.vmap`` carries leading *layer axes*: its role is
the role of one slice, with the slice's dimension numbers shifted past the layer axes
(``Role.scanned``); each slice is its own matrix or vector.

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
  modules at the top level of the model — the shallowest modules of the tree. A head found by
  position is reported: a ``UserWarning`` names it (``head='<module>'`` confirms it and silences
  the warning) and the ``describe`` tables note it. Leaves an ``optax.masked``/``optax.partition``
  hides (``optax.MaskedNode``) keep their place in this rule, so masking the real head never turns
  the layer below it into the head. A model whose top level has no Dense layer (tied embeddings)
  has no head; ``head=False`` turns the rule off.

Anything else is an error that lists the paths and says how to label them: ``labels=`` maps path
regexes to role names (or ``Role`` objects), or is a callable ``(path, leaf) -> name | Role | None``.
A role name is one of ``ROLE_NAMES``, optionally prefixed ``'scanned/'`` (one leading layer axis).
Regexes (``labels`` keys and ``head``) match a whole path or its trailing components:
``'Dense_1'`` matches ``'params/Dense_1'`` but not ``'params/Dense_10'``. A path is the leaf's JAX
key path as one string, its keys joined by ``'/'`` (dict keys and nnx ``State`` names as they
are, sequence indices as numbers): ``'params/Dense_0/kernel'``, ``'blocks/0/attn/q_proj/kernel'``;
a callable receives the same string and the leaf.

``describe(params)`` returns the table of paths, shapes, roles, norms and scales that
``normtx.modular_norm_partition`` uses with the same arguments (``Geometry.assign`` computes
both). ``optax_labels(params)`` and ``muon_dimension_numbers(params)`` export the roles to optax
(``optax.partition`` labels, ``optax.contrib.muon``'s dimension numbers). The code lives in
``normtx.geometry``; this module is its public face.
"""

from normtx import geometry as _geometry
from normtx.geometry import *  # noqa: F403 (normtx.geometry.__all__, the one list of names)

__all__ = _geometry.__all__
