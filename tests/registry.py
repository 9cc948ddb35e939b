"""Every public normtx transform and optimizer, built on one small Flax-like tree.

Shared by the tests that must hold for *all* of them (ecosystem, reliability, sharding): a new
factory gets one line here and is covered everywhere.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import normtx
from normtx import adaptive, norms, optimizers

# Compile options for tests whose claims do not depend on code generation (bitwise equal runs of one
# program, NaN/Inf/overflow, untouched state): XLA:CPU's older fusion emitters without LLVM
# optimisation compile our small programs 3-4x faster. IEEE semantics are the same (XLA:CPU never
# enables fast-math unless asked).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def params():
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s) / math.sqrt(s[0]), jnp.float32)  # noqa: E731
    return {
        "Dense_0": {"kernel": f(6, 8), "bias": f(8)},
        "Dense_1": {"kernel": f(8, 3), "bias": f(3)},
    }


def grads(step):
    rng = np.random.default_rng(100 + step)
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params())


def geometry(path, leaf):
    return norms.rms() if leaf.ndim == 1 else norms.rms_to_rms()


def kernels(params):
    return jax.tree_util.tree_map_with_path(lambda p, x: x.ndim == 2, params)


TRANSFORMS = {
    "dualize": lambda: normtx.dualize(geometry),
    "scale_by_dual_norm": lambda: normtx.scale_by_dual_norm(geometry, sharpness=2.0),
    "orthogonalize_newton_schulz(masked)": lambda: optax.masked(
        normtx.orthogonalize_newton_schulz(), kernels
    ),
    "orthogonalize_dion(masked)": lambda: optax.masked(
        normtx.orthogonalize_dion(key=jax.random.key(0), rank_fraction=0.5), kernels
    ),
    "scale_by_neuron_rms(masked)": lambda: optax.masked(normtx.scale_by_neuron_rms(), kernels),
    "scale_to_rms(masked)": lambda: optax.masked(normtx.scale_to_rms(), kernels),
    "escape_velocity_lr": lambda: normtx.escape_velocity_lr(
        normtx.dualize(norms.linf()), norm=norms.linf(), init_lr=1e-3
    ),
    "escape_velocity_lr(beta)": lambda: normtx.escape_velocity_lr(
        normtx.dualize(norms.linf()), norm=norms.linf(), init_lr=1e-3, betas=(0.9, 0.99)
    ),
    "escape_velocity_lr(cosine, previous)": lambda: normtx.escape_velocity_lr(
        normtx.dualize(geometry), norm=geometry, rule="cosine", anchor="previous", monotone=False
    ),
    "modular_norm_partition": lambda: normtx.modular_norm_partition(),
    "modular_norm_partition(target_rms)": lambda: normtx.modular_norm_partition(target_rms="init"),
    "cautious(trace)": lambda: normtx.cautious(optax.trace(decay=0.9)),
    "add_cautious_weight_decay(masked)": lambda: normtx.add_cautious_weight_decay(
        0.1, mask=kernels
    ),
    "sign_descent": lambda: optimizers.sign_descent(0.01, momentum=0.9),
    "normalized_sgd": lambda: optimizers.normalized_sgd(0.01),
    "spectral_descent": lambda: optimizers.spectral_descent(0.01),
    "modular_descent": lambda: optimizers.modular_descent(
        0.1, nesterov=True, step="dual_norm", weight_decay=0.01
    ),
    "modular_descent(escape_velocity)": lambda: optimizers.modular_descent(
        1.0, escape_velocity=True, weight_decay=0.01
    ),
    "scion": lambda: optimizers.scion(0.01),
    "muon": lambda: optimizers.muon(0.01),
    "muon(others=modular)": lambda: optimizers.muon(0.01, others="modular", weight_decay=0.01),
    "normuon": lambda: optimizers.normuon(0.01, nesterov=True, weight_decay=0.01),
    "adamuon": lambda: optimizers.adamuon(0.01, weight_decay=0.01),
    "prodigy": lambda: optimizers.prodigy(),
    "full_adagrad": lambda: adaptive.scale_by_full_adagrad(eps=1e-8),
    "adamw_fully_decoupled": lambda: adaptive.adamw_fully_decoupled(
        learning_rate=0.01, weight_decay=0.1
    ),
    "adam_nmf": lambda: adaptive.scale_by_adam_nmf(
        rank=1, key=jax.random.key(0), vectors="diagonal"
    ),
    "shampoo": lambda: adaptive.scale_by_shampoo(
        graft="adam", vectors="graft", precondition_every=2
    ),
    # EMA statistics, 4 x 4 blocks, roots every 3 steps: a checkpoint after step 2 resumes with
    # the stale roots of step 1 in the restored state.
    "shampoo(ema, blocks, every=3)": lambda: adaptive.scale_by_shampoo(
        accumulator="ema",
        beta2=0.9,
        block_size=4,
        graft="sgd",
        vectors="graft",
        precondition_every=3,
    ),
    # Bases refreshed every 2 Adam steps: a checkpoint after step 2 resumes before the first
    # refresh (step 3). max_precond_dim 6: Dense_0 (6, 8) has L only, Dense_1 (8, 3) R only, each
    # of full rank from the first gradient (the null-space basis of a rank-deficient statistic is
    # set by rounding, and so are SOAP's steps: sharded and unsharded runs would differ).
    "soap": lambda: adaptive.scale_by_soap(precondition_frequency=2, max_precond_dim=6),
}
