"""Ready-made optimizers: each one line, each a thin ``optax.chain`` of normtx parts.

Every optimizer here is documented with the norm it descends (anthology Prop. 1: a norm and a step
size), takes keyword-only typed hyperparameters validated at construction, and works with
``optax.inject_hyperparams``.

- ``steepest``: ``sign_descent``, ``normalized_sgd``, ``spectral_descent`` (one norm everywhere);
- ``modular``: ``modular_descent``, ``scion`` (the modular norm of a network, a norm per role);
- ``muon``: ``muon``;
- ``adaptive_muon``: ``normuon``, ``adamuon`` (Muon with a second moment of its polar factor);
- ``prodigy``: ``prodigy`` (and ``prodigy_step``, its step before the learning rate);
- ``soap``: SOAP with decoupled weight decay (``normtx.adaptive.soap``, re-exported);
- ``describe``: the table of what ``muon``, ``modular_descent`` or ``scion`` does with each leaf.
"""

from normtx.adaptive.soap import soap
from normtx.optimizers._describe import describe
from normtx.optimizers.adaptive_muon import adamuon, normuon
from normtx.optimizers.modular import modular_descent, scion
from normtx.optimizers.muon import POLAR_ROLES, muon
from normtx.optimizers.prodigy import ProdigyMomentsState, prodigy
from normtx.optimizers.steepest import normalized_sgd, sign_descent, spectral_descent

__all__ = [
    "POLAR_ROLES",
    "ProdigyMomentsState",
    "adamuon",
    "describe",
    "modular_descent",
    "muon",
    "normalized_sgd",
    "normuon",
    "prodigy",
    "scion",
    "sign_descent",
    "soap",
    "spectral_descent",
]
