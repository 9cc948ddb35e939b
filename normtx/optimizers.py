"""Ready-made optimizers: each one line, each a thin ``optax.chain`` of normtx parts.

Every optimizer here is documented with the norm it descends (anthology Prop. 1: a norm and a step
size), takes keyword-only typed hyperparameters validated at construction, and works with
``optax.inject_hyperparams``.
"""

from __future__ import annotations

__all__: list[str] = []
