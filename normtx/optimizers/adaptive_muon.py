r"""NorMuon and AdaMuon: Muon with an adaptive second moment of its orthogonalized update.

Both keep Muon's split (``normtx.optimizers.muon``): the hidden, conv and attention kernels
(``POLAR_ROLES``, found by ``normtx.roles``) are orthogonalized, every other leaf (embeddings, the
head, biases, gains) takes AdamW's step. On the orthogonalized leaves, with ``O_t`` the polar factor
(``ns_steps`` Newton–Schulz steps with ``ns_coefficients``, Muon's quintic by default), they divide
``O_t`` by a running RMS and rescale each matrix to the RMS ``ρ`` of an Adam update:

- ``normuon`` (Li et al. 2025, Algorithm 1): ``O_t = NS(M_t)``, one second moment per *neuron*
  (``normtx.scale_by_neuron_rms``: the fan-out columns of a kernel, averaged over their fan-in);
- ``adamuon`` (Si et al. 2025, Algorithm 1): ``O_t = NS(sign(M_t))`` (sign-stabilized), one second
  moment per *entry* (``optax.scale_by_rms(eps_in_sqrt=False)``: ``O ⊘ (√V + ε)``);

then ``normtx.scale_to_rms(ρ)`` (``ρ √(mn) Ô/‖Ô‖_F``), decoupled weight decay and the learning rate.

**Why two factories and not an option of ``muon``.** The two methods change what Muon computes
after the polar factor and bring hyperparameters of their own (``beta2``, ``eps``, ``rms``, and
AdaMuon's sign), whose meaning and defaults differ between them and do not exist for Muon; one
``muon(variant=...)`` would accept combinations that mean nothing (``scale='muon'`` with an RMS
alignment that overrides it). The factories share Muon's roles, momentum, polar step and AdamW
split (``normtx.optimizers.muon``'s helpers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Mesh
from jax.typing import ArrayLike, DTypeLike
from typing_extensions import TypedDict, Unpack

from normtx._keywords import KeywordGroup, keywords
from normtx._validation import check_positive, check_probability
from normtx.geometry import Geometry
from normtx.geometry.infer import LABELLING, LabellingOptions
from normtx.geometry.modular import RoleModular
from normtx.linalg.ns_coefficients import NsSchedule
from normtx.norms import spectral
from normtx.optimizers._chains import check_common, check_mu_dtype, ema_momentum, role_mask
from normtx.optimizers._muon_parts import adamw_split, polar_function, polar_geometry
from normtx.optimizers.muon import POLAR_ROLES
from normtx.transforms.modular import modular_step
from normtx.transforms.neuron_norm import scale_by_neuron_rms, scale_to_rms

__all__ = ["adamuon", "normuon"]


class _AdaptiveMuonOptions(TypedDict, total=False):
    """The hyperparameters ``normuon`` and ``adamuon`` share (``normuon``'s Args)."""

    beta: ArrayLike
    beta2: ArrayLike
    eps: ArrayLike
    rms: ArrayLike
    nesterov: bool
    ns_coefficients: NsSchedule | ArrayLike
    ns_steps: int
    weight_decay: ArrayLike
    weight_decay_mask: Any
    mu_dtype: DTypeLike | None
    adam_learning_rate: ArrayLike | optax.Schedule | None
    adam_b1: ArrayLike
    adam_b2: ArrayLike
    adam_eps: ArrayLike
    adam_weight_decay: ArrayLike


_ADAPTIVE_MUON = KeywordGroup(
    _AdaptiveMuonOptions,
    beta=0.95,
    beta2=0.95,
    eps=1e-8,
    rms=0.2,
    nesterov=False,
    ns_coefficients="muon",
    ns_steps=5,
    weight_decay=0.0,
    weight_decay_mask=None,
    mu_dtype=None,
    adam_learning_rate=None,
    adam_b1=0.9,
    adam_b2=0.999,
    adam_eps=1e-8,
    adam_weight_decay=0.0,
)


class _Options(_AdaptiveMuonOptions, LabellingOptions, total=False):
    """``normuon``'s and ``adamuon``'s keywords: their hyperparameters and the roles."""


def _on_polar_leaves(
    geometry: Geometry, make: Callable[[Any], optax.GradientTransformation]
) -> optax.GradientTransformation:
    """``make(dims)`` on the leaves Muon orthogonalizes; every other leaf passes unchanged.

    ``dims`` is the tree of those leaves' dimension numbers from their roles (``None`` elsewhere):
    a conv kernel or an attention projection is normalized per matrix as it was orthogonalized.
    The roles are resolved on the whole tree (as Muon's partition resolves them), outside
    ``optax.masked``.
    """
    mask = role_mask(geometry, lambda r: r.name in POLAR_ROLES)

    def build(tree) -> optax.GradientTransformation:
        roles = geometry.resolve(tree)
        dims = jax.tree.map(lambda r: r.dims if r.name in POLAR_ROLES else None, roles)
        return optax.masked(make(dims), mask)

    def init_fn(params):
        return build(params).init(params)

    def update_fn(updates, state, params=None):
        return build(updates).update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def _adaptive_muon(
    what: str,
    adaptive: Callable[[Any], optax.GradientTransformation],
    *,
    sign: bool,
    learning_rate: ArrayLike | optax.Schedule,
    mesh: Mesh | None,
    **kw: Unpack[_Options],
) -> optax.GradientTransformation:
    """Muon's chain with ``adaptive(dims)`` and the RMS alignment after the polar factor (``kw``:
    every keyword of ``_ADAPTIVE_MUON`` and ``LABELLING``)."""
    beta, nesterov, rms, mu_dtype = kw["beta"], kw["nesterov"], kw["rms"], kw["mu_dtype"]
    check_common(what, learning_rate, beta, nesterov, kw["weight_decay"])
    check_probability("beta2", kw["beta2"], what)
    # AdaMuon's optax.scale_by_rms divides by √V + ε: 0/0 for a zero entry without ε.
    check_positive("eps", kw["eps"], what, allow_zero=not sign)
    check_positive("rms", rms, what)
    check_mu_dtype(mu_dtype, what)
    # U Vᵀ itself on the polar roles ('spectral'): the RMS alignment sets the scale.
    polar = polar_function(kw["ns_coefficients"], kw["ns_steps"], what)
    geometry = polar_geometry(spectral(polar=polar), adamw=True, what=what, **LABELLING.take(kw))
    momentum = ema_momentum(beta, nesterov, mu_dtype=mu_dtype)
    return adamw_split(
        geometry,
        what,
        momentum=optax.chain(momentum, optax.scale_by_sign()) if sign else momentum,
        direction=optax.chain(
            modular_step(RoleModular(geometry, mesh=mesh), step="unit"),
            _on_polar_leaves(
                geometry,
                lambda dims: optax.chain(
                    adaptive(dims), scale_to_rms(rms=rms, dimension_numbers=dims)
                ),
            ),
        ),
        learning_rate=learning_rate,
        weight_decay=kw["weight_decay"],
        weight_decay_mask=kw["weight_decay_mask"],
        mu_dtype=mu_dtype,
        **{k: kw[k] for k in _ADAPTIVE_MUON.names if k.startswith("adam_")},
    )


@keywords(_ADAPTIVE_MUON, LABELLING)
def normuon(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    mesh: Mesh | None = None,
    **kw: Unpack[_Options],
) -> optax.GradientTransformation:
    r"""NorMuon: Muon with neuron-wise normalization of the polar factor (Li et al., 2025).

    On the hidden, conv and attention kernels (``normtx.roles``; each matrix of a conv kernel,
    scanned stack or attention projection on its own), with ``W = Kᵀ`` and ``m × n`` its shape:

    .. math:: M_t = \beta M_{t-1} + (1-\beta) G_t,\quad O_t = \mathrm{NS}(M_t),\quad
              v_t = \beta_2 v_{t-1} + (1-\beta_2)\,\mathrm{mean_{cols}}(O_t \odot O_t),

    .. math:: \hat O_t = O_t \oslash (\sqrt{v_t} + \epsilon),\qquad
              W_t = W_{t-1} - \eta\lambda W_{t-1} - \eta\,\frac{\rho\sqrt{mn}}{\|\hat O_t\|_F}
              \hat O_t

    (Algorithm 1 of the paper with ``ρ = 0.2``; ``v_t ∈ R^m`` has one entry per output neuron —
    per fan-out column of a Flax kernel, ``normtx.scale_by_neuron_rms``). With ``nesterov`` the
    orthogonalized matrix is ``(1-β) G_t + β M_t``, as in the official code. Every other leaf
    (embeddings, the head, biases, gains) takes AdamW's step with the ``adam_*``
    hyperparameters, as in the paper's ``NorMuonWithAuxAdam``.

    Args:
      learning_rate: ``η``, a number or a schedule.
      beta: the momentum ``β₁`` in ``[0, 1)``.
      beta2: ``β₂`` in ``[0, 1)``, the EMA decay of each neuron's mean square.
      eps: ``ε >= 0`` added to ``√v``.
      rms: ``ρ > 0``, the RMS of each matrix's direction (the paper's 0.2: Adam's update RMS,
        so that AdamW's learning rate and weight decay carry over).
      nesterov: Nesterov momentum (off in the paper's Algorithm 1, on in its code).
      ns_coefficients: ``'muon'`` (default, the paper's NS5), ``'polar_express'``, ``'cubic'``
        or an array ``(k, 3)``.
      ns_steps: Newton–Schulz steps; under ``optax.inject_hyperparams`` it and
        ``ns_coefficients`` are read at run time, as in ``muon``.
      weight_decay: ``λ >= 0``, decoupled weight decay of the orthogonalized leaves.
      weight_decay_mask, mu_dtype: as in ``muon`` (where ``weight_decay`` applies, in optax's
        convention; the dtype of the momentum buffers and of Adam's first moment).
      adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: AdamW's
        hyperparameters for the other leaves (``adam_learning_rate`` defaults to
        ``learning_rate``).
      roles, head, labels, heads_as_batch: the roles, as in ``normtx.roles.infer``.
      mesh: ``None`` or a ``jax.sharding.Mesh`` for the polar factors (as in ``muon``).

    Returns:
      An ``optax.GradientTransformation``. State: Muon's momentum and AdamW's moments, plus
      ``d_out`` floats per orthogonalized matrix (the neurons' second moments).

    Example:
      At the first step ``v_1 = (1-β₂) mean(O²)``: every neuron of a hidden kernel is divided by
      its own RMS, so all of them move by the same RMS ``η ρ``; the head (a kernel Muon leaves
      to AdamW) moves by ``η`` per entry (Adam's first step is ``g / (|g| + ε)``):

      >>> params = {"Dense_0": {"kernel": jnp.zeros((4, 6), jnp.float32)},
      ...           "Dense_1": {"kernel": jnp.zeros((6, 2), jnp.float32)}}  # hidden, head
      >>> grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape), params)
      >>> tx = normtx.optimizers.normuon(0.03)
      >>> u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.round(np.sqrt(np.mean(np.square(u["Dense_0"]["kernel"]), axis=0)), 4))
      [0.006 0.006 0.006 0.006 0.006 0.006]
      >>> print(np.round(np.abs(u["Dense_1"]["kernel"]).max(), 4))
      0.03

    References:
      Li, Liu, Liang, Chen & Zhao, *NorMuon: Making Muon more efficient and scalable*,
      arXiv:2510.05491 (2025), Algorithm 1; Jordan et al., *Muon* (2024).
    """

    def adaptive(dims):  # one second moment per neuron
        return scale_by_neuron_rms(decay=kw["beta2"], eps=kw["eps"], dimension_numbers=dims)

    return _adaptive_muon(
        "normuon", adaptive, sign=False, learning_rate=learning_rate, mesh=mesh, **kw
    )


@keywords(_ADAPTIVE_MUON, LABELLING, beta2=0.999)
def adamuon(
    learning_rate: ArrayLike | optax.Schedule,
    *,
    mesh: Mesh | None = None,
    **kw: Unpack[_Options],
) -> optax.GradientTransformation:
    r"""AdaMuon: sign-stabilized polar factor with an element-wise second moment (Si et al., 2025).

    On the hidden, conv and attention kernels (as ``normuon``), with ``m × n`` each matrix's shape:

    .. math:: M_t = \beta M_{t-1} + (1-\beta) G_t,\quad O_t = \mathrm{NS}(\mathrm{sign}(M_t)),\quad
              V_t = \beta_2 V_{t-1} + (1-\beta_2)\, O_t \odot O_t,

    .. math:: \hat O_t = O_t \oslash (\sqrt{V_t} + \epsilon),\qquad
              W_t = W_{t-1} - \eta\Big(\frac{\rho\sqrt{mn}}{\|\hat O_t\|_F}\hat O_t
              + \lambda W_{t-1}\Big)

    (Algorithm 1 of the paper with ``ρ = 0.2``: the RMS-aligned rescaling ``γ_t``). The sign is
    taken of the momentum *before* Newton–Schulz: ``O_t`` depends on the momentum only through its
    signs, so its scale (an EMA here, a sum ``M_t = βM_{t-1} + G_t`` in the paper) does not matter;
    with ``nesterov`` the sign is of ``(1-β) G_t + β M_t``. ``V_0 = 0`` without bias correction (a
    common factor, which the RMS alignment removes up to ``ε``). Every other leaf takes AdamW's
    step with the ``adam_*`` hyperparameters.

    With ``beta2 = 0`` and ``eps = 0`` the direction is ``ρ · sign(O_t)``: sign descent on the
    polar factor of the sign of the momentum.

    Args:
      learning_rate: ``η``, a number or a schedule (Adam-like: the update has Adam's RMS).
      beta: the momentum ``β`` in ``[0, 1)``.
      beta2: ``β₂`` in ``[0, 1)``, the EMA decay of ``O_t ⊙ O_t`` (0.999: the official code's).
      eps: ``ε > 0`` added to ``√V``.
      rms: ``ρ > 0``, the RMS of each matrix's direction (the paper's 0.2).
      nesterov: Nesterov momentum (the official code's default).
      ns_coefficients, ns_steps, weight_decay, weight_decay_mask, mu_dtype: as in ``normuon``.
      adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: as in ``normuon``.
      roles, head, labels, heads_as_batch, mesh: as in ``normuon``.

    Returns:
      An ``optax.GradientTransformation``. State: Muon's momentum and AdamW's moments, plus one
      float per entry of each orthogonalized matrix (``V``).

    Example:
      At the first step ``V_1 = (1-β₂) O ⊙ O``, so ``Ô_1 = sign(O_1)/√(1-β₂)`` (up to ``ε``) and
      every entry of a hidden kernel moves by ``η ρ``:

      >>> params = {"Dense_0": {"kernel": jnp.zeros((4, 6), jnp.float32)},
      ...           "Dense_1": {"kernel": jnp.zeros((6, 2), jnp.float32)}}  # hidden, head
      >>> grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape), params)
      >>> tx = normtx.optimizers.adamuon(0.03)
      >>> u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
      >>> print(np.unique(np.round(np.abs(u["Dense_0"]["kernel"]), 4)))
      [0.006]

    References:
      Si, Zhang & Shen, *AdaMuon: Adaptive Muon Optimizer*, arXiv:2507.11005 (2025), Algorithm 1;
      Jordan et al., *Muon* (2024).
    """

    def adaptive(dims):  # one second moment per entry: O ⊘ (√V + ε)
        del dims
        return optax.scale_by_rms(decay=kw["beta2"], eps=kw["eps"], eps_in_sqrt=False)

    return _adaptive_muon(
        "adamuon", adaptive, sign=True, learning_rate=learning_rate, mesh=mesh, **kw
    )
