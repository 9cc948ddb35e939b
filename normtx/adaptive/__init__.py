"""The adaptive family of the lecture notes (Stratos, *Adaptive Learning Methods*) as transforms.

Where optax already has a method, normtx does not write it again; normtx's test suite checks that
the notes' equations, recomputed in NumPy float64, give optax's iterates:

============================  ==================================================================
notes                         optax
============================  ==================================================================
SGD, eq. 21                   ``optax.sgd(lr)``
AdaGrad (diagonal), eq. 37    ``optax.adagrad(lr, initial_accumulator_value=0, eps=0)``
RMSProp, eq. 38 (β1 = 0)      ``optax.rmsprop(lr, decay=β2, eps=0)``
RMSProp with momentum, (38)   ``optax.scale_by_adam(eps=0)`` with step ``η(1-β1^t)/sqrt(1-β2^t)``
Adam, eq. 39 / §4.4           ``optax.adam(lr, b1, b2, eps)``
AMSGrad, §4.2 / §4.4 (c)      ``optax.amsgrad(lr, b1, b2, eps)``
coupled AdamW, §4.3           ``optax.adamw(lr, weight_decay=λ)``
Adafactor, §5.1               ``optax.scale_by_factored_rms(decay_rate_fn=<debiased EMA>)``
============================  ==================================================================

What optax does not have lives here, each an ``optax.GradientTransformation``:

- ``scale_by_full_adagrad`` — full-matrix AdaGrad ``(Σ g gᵀ)^{-1/2} g`` (§3.2), per leaf or block;
- ``add_decoupled_weight_decay`` / ``adamw_fully_decoupled`` — the fully decoupled AdamW of
  §4.3–4.4 (Wortsman et al.; the notes' sign erratum fixed);
- ``scale_by_adam_nmf`` — AdamNMF, a rank-r NMF of the second moment by EM (Appendix K.2);
- ``scale_by_shampoo`` — Shampoo ``L^{-1/4} G R^{-1/4}`` with sum or EMA statistics (§6, 6.1),
  blocking, grafting, stale roots, and the idealized ``-1/2`` iteration (Appendix I.1);
- ``scale_by_soap`` / ``soap`` — SOAP, Adam in the eigenbasis of Shampoo's statistics (Vyas et al.
  2024), with the bases refreshed by power iteration and QR; ``soap`` adds decoupled weight decay;
- ``exponentiated_gradient`` — mirror descent with the negative entropy on the simplex (App. E);
- ``online_regret`` — the online-convex-optimisation harness of §1 for checking regret bounds.
"""

from normtx.adaptive.adam_nmf import ScaleByAdamNMFState, em_round, scale_by_adam_nmf
from normtx.adaptive.decoupled import (
    DecoupledWeightDecayState,
    adamw_fully_decoupled,
    add_decoupled_weight_decay,
)
from normtx.adaptive.exponentiated import ExponentiatedGradientState, exponentiated_gradient
from normtx.adaptive.full_adagrad import ScaleByFullAdagradState, scale_by_full_adagrad
from normtx.adaptive.regret import OnlineRegret, online_regret
from normtx.adaptive.shampoo import ScaleByShampooState, scale_by_shampoo
from normtx.adaptive.soap import ScaleBySoapState, scale_by_soap, soap

__all__ = [
    "DecoupledWeightDecayState",
    "ExponentiatedGradientState",
    "OnlineRegret",
    "ScaleByAdamNMFState",
    "ScaleByFullAdagradState",
    "ScaleByShampooState",
    "ScaleBySoapState",
    "adamw_fully_decoupled",
    "add_decoupled_weight_decay",
    "em_round",
    "exponentiated_gradient",
    "online_regret",
    "scale_by_adam_nmf",
    "scale_by_full_adagrad",
    "scale_by_shampoo",
    "scale_by_soap",
    "soap",
]
