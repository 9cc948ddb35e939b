"""The optimizers the demo and the benchmarks compare, each built from its library's public API.

Every optimizer gets the same learning-rate *shape*: a cosine decay from its peak to a tenth of it
over the run (``schedule``); only the peak differs. Anchors are optax's own implementations;
normtx rows use normtx's parts and ready-made optimizers, never copies. Untuned rows use a fixed
peak (1 for the step-size estimators, whose peak is a multiplier).

- ``adamw``: ``optax.adamw`` (weight decay 1e-4, optax's default).
- ``muon``: ``optax.contrib.muon`` on the hidden kernels (``MuonDimensionNumbers`` from
  ``normtx.roles.infer``), Adam at ``adam_lr`` on everything else — the Muon recipe of
  Jordan et al. (embeddings, head, gains and biases are not orthogonalised).
- ``normtx_muon``: ``normtx.optimizers.muon``, the same recipe from normtx's parts.
- ``normuon``: ``normtx.optimizers.normuon`` (Muon with a per-neuron second moment of its polar
  factor, Li et al. 2025), AdamW at ``adam_lr`` on the other leaves.
- ``soap``: ``normtx.optimizers.soap`` (Adam in Shampoo's eigenbasis, Vyas et al. 2024) with its
  reference code's defaults.
- ``prodigy``: ``optax.contrib.prodigy`` with learning rate 1 (no tuning).
- ``modular``: ``normtx.optimizers.modular_descent`` — steepest descent under the role-based
  modular norm (anthology Prop. 7) with momentum, at a global learning rate; Newton–Schulz
  (``normtx.linalg.newton_schulz``) for the RMS->RMS polar factors.
- ``modular_ev``: the same with ``escape_velocity=True``: the step size is
  ``normtx.escape_velocity_lr``'s, nothing tuned (Story III).
- ``sign``, ``spectral``: ``normtx.optimizers.sign_descent`` / ``spectral_descent`` with momentum.
- ``shampoo``, ``adam_nmf``: ``normtx.adaptive.scale_by_shampoo`` / ``scale_by_adam_nmf``.
"""

from __future__ import annotations

import jax
import optax
import optax.contrib

import normtx
import normtx.adaptive
from normtx import norms
from normtx._pytree import path_str

__all__ = [
    "adam_nmf",
    "adamw",
    "modular",
    "modular_ev",
    "modular_norms",
    "muon",
    "muon_dimension_numbers",
    "normtx_muon",
    "normuon",
    "prodigy",
    "schedule",
    "shampoo",
    "sign",
    "soap",
    "spectral",
]


def schedule(peak: float, steps: int) -> optax.Schedule:
    """The shared learning-rate shape: cosine decay from ``peak`` to ``peak/10`` over ``steps``."""
    return optax.cosine_decay_schedule(peak, steps, alpha=0.1)


def adamw(lr: float, steps: int) -> optax.GradientTransformation:
    return optax.adamw(schedule(lr, steps))


def muon_dimension_numbers(params) -> dict:
    """Muon on the hidden kernels — 2-D ``kernel`` leaves outside a ``*head`` module, the leaves
    ``normtx.roles.infer`` calls ``hidden`` in these models (``tests/test_benchmarks.py`` checks)
    — and Adam elsewhere.

    A rule on paths, not ``roles.infer`` itself: optax calls it again on the tree with the Adam
    leaves masked out, where the whole model is no longer visible.
    """
    dims = optax.contrib.MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1,))

    def rule(path, x):
        keys = path_str(path).split("/")
        hidden = keys[-1] == "kernel" and x.ndim == 2 and not any(k.endswith("head") for k in keys)
        return dims if hidden else None

    return jax.tree_util.tree_map_with_path(rule, params)


def muon(
    lr: float, steps: int, *, adam_lr: float, dimension_numbers=None
) -> optax.GradientTransformation:
    """``optax.contrib.muon`` with ``dimension_numbers`` (a tree, e.g.
    ``normtx.roles.muon_dimension_numbers(params)``), by default the path rule
    ``muon_dimension_numbers``."""
    if dimension_numbers is None:
        dimension_numbers = muon_dimension_numbers
    return optax.contrib.muon(
        schedule(lr, steps),
        adam_learning_rate=schedule(adam_lr, steps),
        muon_weight_dimension_numbers=dimension_numbers,
    )


def normtx_muon(lr: float, steps: int, *, adam_lr: float) -> optax.GradientTransformation:
    """``normtx.optimizers.muon``: Muon on the hidden kernels (found by ``normtx.roles``), AdamW
    at ``adam_lr`` on the other leaves."""
    return normtx.optimizers.muon(schedule(lr, steps), adam_learning_rate=schedule(adam_lr, steps))


def normuon(lr: float, steps: int, *, adam_lr: float) -> optax.GradientTransformation:
    """``normtx.optimizers.normuon``: NorMuon on the hidden kernels (found by ``normtx.roles``;
    its step has RMS ``0.2 lr``, as AdamW's roughly), AdamW at ``adam_lr`` on the other leaves."""
    return normtx.optimizers.normuon(
        schedule(lr, steps), adam_learning_rate=schedule(adam_lr, steps)
    )


def soap(lr: float, steps: int) -> optax.GradientTransformation:
    """``normtx.optimizers.soap`` on every leaf, its defaults (β 0.95/0.95, weight decay 0.01,
    eigenbases refreshed every 10 steps)."""
    return normtx.optimizers.soap(schedule(lr, steps))


def prodigy(steps: int) -> optax.GradientTransformation:
    return optax.contrib.prodigy(schedule(1.0, steps))


def modular_norms() -> dict[str, norms.Norm]:
    """The default role norms, with Newton–Schulz polar factors for the RMS->RMS roles.

    ``normtx.roles.default_norms`` computes ``U Vᵀ`` by SVD, which on CPU costs tens of ms per
    128x512 matrix (``bench_step``); Newton–Schulz (``polar='newton_schulz'``) is matmuls only.
    """
    ns = norms.rms_to_rms(polar="newton_schulz")
    return {"hidden": ns, "attention": ns, "conv": ns, "head": ns}


def modular(lr: float, steps: int, **geometry) -> optax.GradientTransformation:
    """``normtx.optimizers.modular_descent`` (its default momentum 0.9) at peak ``lr``;
    ``geometry`` goes to it (e.g. ``scales='mass'``)."""
    return normtx.optimizers.modular_descent(schedule(lr, steps), norms=modular_norms(), **geometry)


def modular_ev(steps: int) -> optax.GradientTransformation:
    """``modular_descent(escape_velocity=True)``: the step size warms up by itself, lr 1."""
    return normtx.optimizers.modular_descent(
        schedule(1.0, steps), escape_velocity=True, norms=modular_norms()
    )


def sign(lr: float, steps: int) -> optax.GradientTransformation:
    """``normtx.optimizers.sign_descent`` with momentum 0.9 (signum)."""
    return normtx.optimizers.sign_descent(schedule(lr, steps), momentum=0.9)


def spectral(lr: float, steps: int) -> optax.GradientTransformation:
    """``normtx.optimizers.spectral_descent`` with momentum 0.9."""
    return normtx.optimizers.spectral_descent(schedule(lr, steps), momentum=0.9)


def shampoo(lr: float, steps: int) -> optax.GradientTransformation:
    """``normtx.adaptive.scale_by_shampoo`` in its practical setting: EMA statistics, Adam
    grafting (vectors too), roots every 10 steps."""
    return optax.chain(
        normtx.adaptive.scale_by_shampoo(
            accumulator="ema", graft="adam", precondition_every=10, vectors="graft"
        ),
        optax.scale_by_learning_rate(schedule(lr, steps)),
    )


def adam_nmf(lr: float, steps: int) -> optax.GradientTransformation:
    """``normtx.adaptive.scale_by_adam_nmf``: rank-1 factored second moment (β₂ 0.999) with a
    first moment (β₁ 0.9), vectors diagonal."""
    return optax.chain(
        normtx.adaptive.scale_by_adam_nmf(
            rank=1, key=jax.random.key(0), b1=0.9, b2=0.999, vectors="diagonal"
        ),
        optax.scale_by_learning_rate(schedule(lr, steps)),
    )
