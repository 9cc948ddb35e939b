"""The bad-input catalogue: every misuse fails early, with a message that says what to fix.

Each row is one misuse and the ``ValueError`` it must raise — at construction, at ``init``, or
when ``update`` is traced (under ``jax.jit``) — before any array is computed, so none reaches a
NaN. The ``match`` pattern checks that the message names the parameter (its pytree path, shape and
dtype where there is a leaf) and what was expected.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normtx
from normtx import adaptive, linalg, norms, optimizers
from normtx.dims import DimensionNumbers

import registry


def _f32(*shape):
    return jnp.ones(shape, jnp.float32)


def _init(tx, params):
    return lambda: tx.init(params)


def _update(tx, params, grads, *, with_params=True):
    """Traces ``update`` under ``jax.jit`` from a state made for ``params``."""

    def thunk():
        state = tx.init(params)
        return jax.jit(tx.update)(grads, state, *([params] if with_params else []))

    return thunk


def _with_leaf(tree, module, name, leaf):
    """``tree`` with ``tree[module][name]`` replaced by ``leaf``."""
    return {**tree, module: {**tree[module], name: leaf}}


def _qk_update(max_logits, params=None):
    """Traces ``qk_clip``'s update under ``jax.jit`` with the extra argument ``max_logits``."""
    params = ATTN if params is None else params
    tx = normtx.qk_clip()
    update = functools.partial(tx.update, max_logits=max_logits)
    return lambda: jax.jit(update)(params, tx.init(params), params)


P = registry.params()
G = registry.grads(0)
ATTN = {"attn": {"query": {"kernel": _f32(4, 2, 3)}, "key": {"kernel": _f32(4, 2, 3)}}}
EV = dict(direction=normtx.dualize(norms.linf()), norm=norms.linf())
NMF = dict(rank=1, key=jax.random.key(0))

# (id, thunk, the pattern its ValueError must match)
CASES = [
    # ---- construction: hyperparameters -----------------------------------------------------
    ("lp_p_below_one", lambda: norms.lp(0.5), r"lp: p must be >= 1 .*got p=0\.5"),
    ("schatten_p_nan", lambda: norms.schatten(math.nan), r"schatten: p must be >= 1.*got p=nan"),
    ("l1_to_lp_p_below_one", lambda: norms.l1_to_lp(0.2), r"l1_to_lp: p must be >= 1.*p=0\.2"),
    (
        "negative_sharpness",
        lambda: normtx.scale_by_dual_norm(norms.l2(), sharpness=-1.0),
        r"scale_by_dual_norm: sharpness must be > 0, got -1\.0",
    ),
    (
        "negative_learning_rate",
        lambda: optimizers.sign_descent(-0.1),
        r"sign_descent: learning_rate must be > 0, got -0\.1",
    ),
    (
        "infinite_learning_rate",
        lambda: optimizers.normalized_sgd(math.inf),
        r"normalized_sgd: learning_rate must be finite, got inf",
    ),
    (
        "momentum_of_one",
        lambda: optimizers.spectral_descent(0.1, momentum=1.0),
        r"spectral_descent: momentum must be in \[0, 1\), got 1\.0",
    ),
    (
        "negative_role_scale",
        lambda: normtx.modular_norm_partition(scales={"hidden": -1.0}),
        r"scales\['hidden'\] must be a number > 0, got -1\.0",
    ),
    (
        "unknown_role_name_in_norms",
        lambda: normtx.modular_norm_partition(norms={"hiden": norms.rms()}),
        r"unknown role 'hiden' in norms; roles are \('hidden',",
    ),
    (
        "scion_constrained_learning_rate_above_one",
        lambda: optimizers.scion(2.0),
        r"scion: .*learning_rate must be <= 1, got 2\.0",
    ),
    (
        "normuon_beta2_of_one",
        lambda: optimizers.normuon(0.1, beta2=1.0),
        r"normuon: beta2 must be in \[0, 1\), got 1\.0",
    ),
    (
        "adamuon_eps_of_zero",
        lambda: optimizers.adamuon(0.1, eps=0.0),
        r"adamuon: eps must be > 0, got 0\.0",
    ),
    (
        "adamuon_negative_rms",
        lambda: optimizers.adamuon(0.1, rms=-0.2),
        r"adamuon: rms must be > 0, got -0\.2",
    ),
    (
        "unknown_muon_others",
        lambda: optimizers.muon(0.1, others="adam"),
        r"muon: others must be one of \('adamw', 'modular'\), got 'adam'",
    ),
    (
        "ns_coefficients_of_wrong_shape",
        lambda: normtx.orthogonalize_newton_schulz(coefficients=np.ones((2, 2))),
        r"coefficients must have shape \(k, 3\), got \(2, 2\)",
    ),
    (
        "unknown_ns_schedule",
        lambda: normtx.orthogonalize_newton_schulz(coefficients="quintic"),
        r"unknown coefficients 'quintic'; expected one of \('cubic', 'muon', 'polar_express'\)",
    ),
    (
        "zero_ns_steps",
        lambda: normtx.orthogonalize_newton_schulz(steps=0),
        r"orthogonalize_newton_schulz: steps must be an int >= 1, got 0",
    ),
    (
        "structural_count_as_array",
        lambda: normtx.orthogonalize_newton_schulz(steps=jnp.asarray(5)),
        r"steps is structural .*static_args=\('steps',\)",
    ),
    (
        "negative_orthogonalize_scale",
        lambda: normtx.orthogonalize_newton_schulz(scale=-1.0),
        r"orthogonalize_newton_schulz: scale must be > 0, got -1\.0",
    ),
    (
        "integer_compute_dtype",
        lambda: normtx.orthogonalize_newton_schulz(compute_dtype=jnp.int32),
        r"compute_dtype must be a float dtype",
    ),
    (
        "prng_key_an_int",
        lambda: adaptive.scale_by_adam_nmf(rank=1, key=0),
        r"key must be one PRNG key \(jax\.random\.key\(seed\).*got 0",
    ),
    (
        "prng_key_a_float_array",
        lambda: adaptive.scale_by_adam_nmf(rank=1, key=jnp.ones(3)),
        r"key must be one PRNG key .*got an array of shape \(3,\) and dtype float",
    ),
    (
        "shampoo_exponent_not_minus_one_over_p",
        lambda: adaptive.scale_by_shampoo(exponent=-0.3),
        r"exponent must be -1/p for a positive integer p .*got -0\.3",
    ),
    (
        "soap_b2_of_one",
        lambda: adaptive.scale_by_soap(b2=1.0),
        r"scale_by_soap: b2 must be in \[0, 1\), got 1\.0",
    ),
    (
        "soap_precondition_frequency_zero",
        lambda: adaptive.scale_by_soap(precondition_frequency=0),
        r"scale_by_soap: precondition_frequency must be an int >= 1, got 0",
    ),
    (
        "soap_negative_learning_rate",
        lambda: adaptive.soap(-1e-3),
        r"soap: learning_rate must be > 0, got -0\.001",
    ),
    (
        "escape_velocity_direction_not_a_transform",
        lambda: normtx.escape_velocity_lr(norms.linf(), norm=norms.linf()),
        r"direction must be an optax\.GradientTransformation .*got Lp\(",
    ),
    (
        "escape_velocity_beta_of_one",
        lambda: normtx.escape_velocity_lr(**EV, betas=(0.9, 1.0)),
        r"betas must be numbers in \[0, 1\), got \(0\.9, 1\.0\)",
    ),
    (
        "escape_velocity_max_growth_below_one",
        lambda: normtx.escape_velocity_lr(**EV, max_growth=0.5),
        r"max_growth must be > 1 .*got 0\.5",
    ),
    (
        "escape_velocity_float16_state_dtype",
        lambda: normtx.escape_velocity_lr(**EV, betas=(0.9, 0.99), state_dtype=jnp.float16),
        r"escape_velocity_lr: state_dtype=float16 cannot hold the step-size rule's sums.*bfloat16",
    ),
    (
        "sharpness_without_the_dual_norm_step",
        lambda: optimizers.sign_descent(0.1, sharpness=2.0),
        r"sign_descent: sharpness=2\.0 has no effect with step='unit' .*step='dual_norm'",
    ),
    (
        "modular_sharpness_without_the_dual_norm_step",
        lambda: optimizers.modular_descent(1.0, escape_velocity=True, sharpness=0.5),
        r"modular_descent: sharpness=0\.5 has no effect with step='unit'",
    ),
    (
        "modular_init_lr_without_escape_velocity",
        lambda: optimizers.modular_descent(0.1, init_lr=1e-3),
        r"modular_descent: init_lr=0\.001 has no effect without escape_velocity=True",
    ),
    (
        "muon_adam_hyperparameters_with_modular_others",
        lambda: optimizers.muon(0.1, others="modular", adam_b2=0.99, adam_learning_rate=1e-3),
        r"muon: adam_learning_rate=0\.001, adam_b2=0\.99 would have no effect with "
        r"others='modular' .*pass others='adamw'",
    ),
    (
        "describe_an_optimizer_without_roles",
        lambda: optimizers.describe(P, "sign_descent"),
        r"optimizers\.describe: optimizer must be one of \('muon', 'modular_descent', 'scion'\)",
    ),
    (
        "describe_with_an_argument_the_optimizer_lacks",
        lambda: optimizers.describe(P, "scion", others="adamw"),
        r"optimizers\.describe: scion takes no argument \['others'\]",
    ),
    (
        "modular_rule_without_escape_velocity",
        lambda: optimizers.modular_descent(0.1, rule="cosine"),
        r"modular_descent: rule='cosine' has no effect without escape_velocity=True",
    ),
    (
        "dion_rank_fraction_above_one",
        lambda: normtx.orthogonalize_dion(key=jax.random.key(0), rank_fraction=1.5),
        r"orthogonalize_dion: rank_fraction must be in \(0, 1\], got 1\.5",
    ),
    (
        "dion_mu_of_one",
        lambda: normtx.orthogonalize_dion(key=jax.random.key(0), mu=1.0),
        r"orthogonalize_dion: mu must be in \[0, 1\), got 1\.0",
    ),
    (
        "dion_unknown_scale",
        lambda: normtx.orthogonalize_dion(key=jax.random.key(0), scale="rms"),
        r"orthogonalize_dion: scale must be one of \('spectral', 'rms_to_rms', 'muon'\), got 'rms'",
    ),
    (
        "neuron_rms_negative_decay",
        lambda: normtx.scale_by_neuron_rms(decay=-0.1),
        r"scale_by_neuron_rms: decay must be in \[0, 1\), got -0\.1",
    ),
    (
        "scale_to_rms_of_zero",
        lambda: normtx.scale_to_rms(rms=0.0),
        r"scale_to_rms: rms must be > 0, got 0\.0",
    ),
    (
        "qk_clip_negative_threshold",
        lambda: normtx.qk_clip(threshold=-1.0),
        r"qk_clip: threshold must be > 0, got -1\.0",
    ),
    (
        "cautious_inner_an_optax_factory",
        lambda: normtx.cautious(optax.adam),
        r"cautious: inner must be an optax\.GradientTransformation .*got <function adam",
    ),
    (
        "cautious_mean_floor_above_one",
        lambda: normtx.cautious(optax.scale_by_adam(), mean_floor=2.0),
        r"cautious: mean_floor must be in \(0, 1\], got 2\.0",
    ),
    (
        "cautious_weight_decay_negative",
        lambda: normtx.add_cautious_weight_decay(-0.1),
        r"add_cautious_weight_decay: weight_decay must be >= 0, got -0\.1",
    ),
    # ---- init: leaves (path, shape, dtype) -------------------------------------------------------
    (
        "matrix_norm_on_a_bias",
        _init(normtx.dualize(norms.spectral()), P),
        r"leaf 'Dense_0/bias' has shape \(8,\), which is not a matrix.*vector norm",
    ),
    (
        "rank_three_leaf_without_dims",
        _init(normtx.dualize(norms.spectral()), {"w": _f32(2, 3, 4)}),
        r"leaf 'w' has shape \(2, 3, 4\), but without dimension numbers .*fan_in_axes",
    ),
    (
        "integer_leaf",
        _init(normtx.dualize(norms.linf()), {"w": jnp.arange(3)}),
        r"leaf 'w' \(shape \(3,\), int\d+\) is not a real floating-point array",
    ),
    (
        "complex_leaf",
        _init(normtx.dualize(norms.l2()), {"w": jnp.ones(3, jnp.complex64)}),
        r"leaf 'w' \(shape \(3,\), complex64\) is not a real floating-point array",
    ),
    (
        "integer_leaf_for_shampoo",
        _init(adaptive.scale_by_shampoo(), {"w": jnp.ones((3, 3), jnp.int32)}),
        r"leaf 'w' \(shape \(3, 3\), int32\) is not a real floating array",
    ),
    (
        "integer_leaf_for_soap",
        _init(adaptive.scale_by_soap(), {"w": jnp.ones((3, 3), jnp.int32)}),
        r"scale_by_soap: leaf 'w' \(shape \(3, 3\), int32\) is not a real floating array",
    ),
    (
        "rank_three_leaf_without_dims_for_soap",
        _init(adaptive.scale_by_soap(), {"w": _f32(2, 3, 4)}),
        r"scale_by_soap: leaf 'w' \(shape \(2, 3, 4\), float32\) has rank 3; .*dimension_numbers",
    ),
    (
        "unknown_role_name_in_roles_tree",
        _init(
            normtx.modular_norm_partition(
                roles={
                    "Dense_0": {"kernel": "hiddn", "bias": "bias"},
                    "Dense_1": {"kernel": "head", "bias": "bias"},
                }
            ),
            P,
        ),
        r"unknown role name 'hiddn' for leaf 'Dense_0/kernel'; role names are \('hidden',",
    ),
    (
        "roles_tree_missing_leaves",
        _init(normtx.modular_norm_partition(roles={"Dense_0": {"kernel": "hidden"}}), P),
        r"roles tree does not match .*Parameters without a role: \['Dense_0/bias',",
    ),
    (
        "norm_tree_entry_not_a_norm",
        _init(normtx.dualize({"Dense_0": "spectral", "Dense_1": None}), P),
        r"entry 'Dense_0' of the spec tree is 'spectral'; expected normtx Norm objects",
    ),
    (
        "norm_tree_not_matching_params",
        _init(normtx.dualize({"a": norms.l2()}), {"b": _f32(3)}),
        r"does not match the parameter tree .*Parameter paths: \['b'\]",
    ),
    (
        "dims_axis_out_of_range",
        _init(
            normtx.orthogonalize_newton_schulz(dimension_numbers=DimensionNumbers((0,), (5,))),
            {"w": _f32(3, 4)},
        ),
        r"axis 5 is out of range for leaf 'w' of shape \(3, 4\)",
    ),
    (
        "dims_overlapping_axes",
        _init(
            normtx.orthogonalize_newton_schulz(dimension_numbers=DimensionNumbers((0,), (0,))),
            {"w": _f32(3, 4)},
        ),
        r"fan_in_axes \(0,\) and fan_out_axes \(0,\) overlap .*leaf 'w' of shape \(3, 4\)",
    ),
    (
        "dims_callable_returning_a_tuple",
        _init(
            normtx.orthogonalize_newton_schulz(dimension_numbers=lambda p, x: (0, 1)),
            {"w": _f32(3, 4)},
        ),
        r"callable returned \(0, 1\) for leaf 'w' \(shape \(3, 4\), float32\); expected Dimensi",
    ),
    (
        "empty_leaf",
        _init(normtx.orthogonalize_newton_schulz(), {"w": _f32(0, 4)}),
        r"leaf 'w' \(shape \(0, 4\), float32\) is empty",
    ),
    (
        "empty_tree_for_the_modular_norm",
        _init(normtx.modular_norm_partition(), {}),
        r"modular_norm_partition: the parameter tree has no leaves",
    ),
    (
        "empty_tree_for_escape_velocity",
        _init(normtx.escape_velocity_lr(**EV), {}),
        r"no leaf of the parameter tree is measured by the norm .*paths: \[\]",
    ),
    (
        "full_adagrad_leaf_above_max_size",
        _init(adaptive.scale_by_full_adagrad(max_size=16), {"w": _f32(5, 5)}),
        r"leaf 'w' \(shape \(5, 5\), float32\) has 25 entries.*max_size=16\). Pass block_size",
    ),
    (
        "adam_nmf_vector_leaf",
        _init(adaptive.scale_by_adam_nmf(**NMF), P),
        r"leaf 'Dense_0/bias' \(shape \(8,\), float32\) is not a matrix.*vectors='diagonal'",
    ),
    (
        "adam_nmf_rank_above_the_short_side",
        _init(adaptive.scale_by_adam_nmf(rank=4, key=jax.random.key(0)), {"w": _f32(3, 5)}),
        r"rank=4 is more than leaf 'w' \(shape \(3, 5\), float32\) allows: its matrices are "
        r"3 × 5.*Pass rank <= 3",
    ),
    (
        "spectral_descent_rank_three_leaf",
        _init(optimizers.spectral_descent(0.1), {"w": _f32(2, 3, 4)}),
        r"leaf 'w' \(shape \(2, 3, 4\), float32\) has rank 3; only 2-D kernels and vectors",
    ),
    (
        "exponentiated_gradient_axis_out_of_range",
        _init(adaptive.exponentiated_gradient(learning_rate=0.1, axis=3), {"w": _f32(3)}),
        r"axis=3 is out of range for leaf 'w' \(shape \(3,\), float32\)",
    ),
    (
        "exponentiated_gradient_empty_leaf",
        _init(adaptive.exponentiated_gradient(learning_rate=0.1), {"p": {"w": _f32(0)}}),
        r"exponentiated_gradient: leaf 'p/w' \(shape \(0,\), float32\) is empty: a point of",
    ),
    (
        "exponentiated_gradient_empty_distributions",
        _init(adaptive.exponentiated_gradient(learning_rate=0.1, axis=-1), {"w": _f32(3, 0)}),
        r"leaf 'w' \(shape \(3, 0\), float32\) is empty along axis=-1",
    ),
    (
        "neuron_rms_on_a_bias",
        _init(normtx.scale_by_neuron_rms(), P),
        r"scale_by_neuron_rms: leaf 'Dense_0/bias' \(shape \(8,\), float32\) is not a matrix\. "
        r"These transforms act on matrices",
    ),
    (
        "dion_empty_leaf",
        _init(normtx.orthogonalize_dion(key=jax.random.key(0)), {"w": _f32(0, 4)}),
        r"orthogonalize_dion: leaf 'w' \(shape \(0, 4\), float32\) is empty",
    ),
    (
        "dion_rank_three_leaf_without_dims",
        _init(normtx.orthogonalize_dion(key=jax.random.key(0)), {"w": _f32(2, 3, 4)}),
        r"orthogonalize_dion: leaf 'w' \(shape \(2, 3, 4\), float32\) has rank 3; .*dimension_n",
    ),
    (
        "qk_clip_tree_without_attention",
        _init(normtx.qk_clip(), P),
        r"qk_clip: no leaf of the parameter tree is a query or key .*paths: \['Dense_0/bias'",
    ),
    (
        "qk_clip_module_without_key",
        _init(normtx.qk_clip(), {"attn": {"query": ATTN["attn"]["query"]}}),
        r"qk_clip: attention module 'attn' has no key leaf \(found 'attn/query/kernel' \(shape "
        r"\(4, 2, 3\), float32\)\)",
    ),
    (
        "qk_clip_fused_heads_kernel",
        _init(normtx.qk_clip(), {"attn": {"query": {"kernel": _f32(4, 6)}}}),
        r"leaf 'attn/query/kernel' \(shape \(4, 6\), float32\) is named like a Flax attention "
        r"query kernel.*its heads are not an axis",
    ),
    (
        "qk_clip_grouped_query_heads",
        _init(
            normtx.qk_clip(),
            {"attn": {"query": {"kernel": _f32(4, 4, 3)}, "key": {"kernel": _f32(4, 2, 3)}}},
        ),
        r"leaf 'attn/query/kernel' \(shape \(4, 4, 3\), float32\) has heads of shape \(4,\).*"
        r"'attn/key/kernel' \(shape \(4, 2, 3\), float32\) of the same module 'attn' has "
        r"\(2,\).*grouped-query",
    ),
    (
        "qk_clip_head_axis_out_of_range",
        _init(
            normtx.qk_clip(
                heads={"q": normtx.QKLeaf("m", "query", (2,)), "k": normtx.QKLeaf("m", "key", (0,))}
            ),
            {"q": _f32(2, 3), "k": _f32(2, 3)},
        ),
        r"qk_clip: leaf 'q' \(shape \(2, 3\), float32\): head_axes must be a non-empty tuple of "
        r"axes of the leaf, got \(2,\)",
    ),
    # ---- update, when traced: missing params, trees that do not match the state ------------------
    (
        "qk_clip_without_max_logits",
        _qk_update(None),
        r"qk_clip: update needs max_logits= \(each attention module's per-head largest",
    ),
    (
        "qk_clip_max_logits_of_an_unknown_module",
        _qk_update({"atn": _f32(2)}),
        r"max_logits must have one entry per attention module, keyed by the module's path: "
        r"expected \['attn'\], got \['atn'\]",
    ),
    (
        "qk_clip_max_logits_of_the_wrong_shape",
        _qk_update({"attn": _f32(3)}),
        r"qk_clip: max_logits 'attn' \(shape \(3,\), float32\) does not match the module's heads: "
        r"its query and key leaves have heads of shape \(2,\)",
    ),
    (
        "cautious_weight_decay_without_params",
        _update(normtx.add_cautious_weight_decay(0.1), P, G, with_params=False),
        r"add_cautious_weight_decay: this transform needs the params",
    ),
    (
        "escape_velocity_without_params",
        _update(normtx.escape_velocity_lr(**EV), P, G, with_params=False),
        r"escape_velocity_lr: update needs the current params",
    ),
    (
        "decoupled_weight_decay_without_params",
        _update(
            adaptive.adamw_fully_decoupled(learning_rate=0.1, weight_decay=0.1),
            P,
            G,
            with_params=False,
        ),
        r"add_decoupled_weight_decay: this transform needs the params",
    ),
    (
        "modular_weight_decay_without_params",
        _update(optimizers.modular_descent(0.1, weight_decay=0.1), P, G, with_params=False),
        r"requires the current value of parameters",
    ),
    (
        "grads_and_params_of_different_trees",
        lambda: jax.jit(normtx.escape_velocity_lr(**EV).update)(
            {"a": _f32(3)}, normtx.escape_velocity_lr(**EV).init(P), P
        ),
        r"the updates and the params have different tree structures",
    ),
    (
        "grads_transposed_against_shampoo_state",
        _update(adaptive.scale_by_shampoo(), {"w": _f32(3, 4)}, {"w": _f32(4, 3)}),
        r"update 'w' \(shape \(4, 3\), float32\) does not match the state: its statistic L has "
        r"shape \(1, 3, 3\), and a leaf of this shape needs \(1, 4, 4\)",
    ),
    (
        "grads_transposed_against_soap_state",
        _update(adaptive.scale_by_soap(), {"w": _f32(3, 4)}, {"w": _f32(4, 3)}),
        r"scale_by_soap: update 'w' \(shape \(4, 3\), float32\) does not match the state: its "
        r"first moment has shape \(3, 4\), and a leaf of this shape needs \(4, 3\)",
    ),
    (
        "grads_transposed_against_adam_nmf_state",
        _update(adaptive.scale_by_adam_nmf(**NMF), {"w": _f32(3, 4)}, {"w": _f32(4, 3)}),
        r"update 'w' \(shape \(4, 3\), float32\) does not match the state: its factor A",
    ),
    (
        "grads_tree_against_full_adagrad_state",
        _update(adaptive.scale_by_full_adagrad(), {"w": _f32(3, 4)}, {"v": _f32(3, 4)}),
        r"do not have the tree structure of the params the state was initialised with "
        r"\(state field 'stats'\). Update paths: \['v'\]",
    ),
    (
        "grads_tree_against_modular_partition_state",
        _update(normtx.modular_norm_partition(), P, {"Dense_0": G["Dense_0"]}),
        r"modular_norm_partition: the updates do not have the tree structure of the params the "
        r"state was initialised with \(state field 'dual_norms'\). Update paths: "
        r"\['Dense_0/bias', 'Dense_0/kernel'\]",
    ),
    (
        "grads_transposed_against_dion_state",
        _update(
            normtx.orthogonalize_dion(key=jax.random.key(0), rank_fraction=0.5),
            {"w": _f32(3, 4)},
            {"w": _f32(4, 3)},
        ),
        r"orthogonalize_dion: update 'w' \(shape \(4, 3\), float32\) does not match the state: "
        r"its momentum has shape \(3, 4\), and a leaf of this shape needs \(4, 3\)",
    ),
    (
        "grads_transposed_against_neuron_rms_state",
        _update(normtx.scale_by_neuron_rms(), {"w": _f32(3, 4)}, {"w": _f32(4, 3)}),
        r"update 'w' \(shape \(4, 3\), float32\) does not match the state: its second moment "
        r"nu has shape \(1, 4\), and a leaf of this shape needs \(1, 3\)",
    ),
    # The optimizers check the updates against the params init saw before any transform runs: a
    # (4, 3) gradient for a (3,) bias was broadcast into it, or failed inside optax.trace.
    (
        "gradient_broadcast_into_a_bias_by_sign_descent",
        _update(optimizers.sign_descent(0.1), P, _with_leaf(G, "Dense_1", "bias", _f32(4, 3))),
        r"sign_descent: gradient 'Dense_1/bias' \(shape \(4, 3\), float32\) does not match the "
        r"parameter it updates: the state was initialised with 'Dense_1/bias' of shape \(3,\)",
    ),
    (
        "gradient_of_another_shape_against_momentum",
        _update(
            optimizers.normalized_sgd(0.1, momentum=0.9),
            P,
            _with_leaf(G, "Dense_0", "kernel", _f32(8, 6)),
        ),
        r"normalized_sgd: gradient 'Dense_0/kernel' \(shape \(8, 6\), float32\) does not match "
        r"the parameter it updates: .* of shape \(6, 8\)",
    ),
    (
        "gradient_tree_against_spectral_descent",
        _update(optimizers.spectral_descent(0.1, momentum=0.9), P, {"Dense_0": G["Dense_0"]}),
        r"spectral_descent: the gradients do not have the tree structure of the params the "
        r"optimizer state was initialised with \(.*param paths the gradients lack: "
        r"\['Dense_1/bias', 'Dense_1/kernel'\]\)",
    ),
    (
        "params_of_another_shape_against_modular_descent",
        lambda: jax.jit(optimizers.modular_descent(0.1).update)(
            G, optimizers.modular_descent(0.1).init(P), _with_leaf(P, "Dense_0", "bias", _f32(2, 8))
        ),
        r"modular_descent: parameter 'Dense_0/bias' \(shape \(2, 8\), float32\) does not match",
    ),
    (
        "gradient_of_another_shape_against_muon",
        _update(optimizers.muon(0.1), P, _with_leaf(G, "Dense_0", "kernel", _f32(8, 6))),
        r"muon: gradient 'Dense_0/kernel' \(shape \(8, 6\), float32\) does not match the "
        r"parameter it updates: .* of shape \(6, 8\)",
    ),
    (
        "gradient_tree_against_muon_modular",
        _update(optimizers.muon(0.1, others="modular"), P, {"Dense_1": G["Dense_1"]}),
        r"muon: the gradients do not have the tree structure .*param paths the gradients lack: "
        r"\['Dense_0/bias', 'Dense_0/kernel'\]",
    ),
    (
        "gradient_broadcast_into_a_bias_by_normuon",
        _update(optimizers.normuon(0.1), P, _with_leaf(G, "Dense_1", "bias", _f32(4, 3))),
        r"normuon: gradient 'Dense_1/bias' \(shape \(4, 3\), float32\) does not match",
    ),
    (
        "gradient_broadcast_into_a_bias_by_prodigy",
        _update(optimizers.prodigy(), P, _with_leaf(G, "Dense_1", "bias", _f32(4, 3))),
        r"prodigy: gradient 'Dense_1/bias' \(shape \(4, 3\), float32\), parameter "
        r"'Dense_1/bias' \(shape \(3,\), float32\) and the parameter at init",
    ),
    (
        "gradient_broadcast_into_a_bias_by_scion",
        _update(optimizers.scion(0.1), P, _with_leaf(G, "Dense_0", "bias", _f32(4, 8))),
        r"scion: gradient 'Dense_0/bias' \(shape \(4, 8\), float32\) does not match",
    ),
    # ---- linear algebra entry points ---------------------------------------------------------
    (
        "non_square_inverse_root",
        lambda: linalg.inverse_pth_root(_f32(3, 4), 2),
        r"inverse_pth_root: expected square matrices of shape \(\.\.\., n, n\), got \(3, 4\)",
    ),
    (
        "inverse_root_p_of_zero",
        lambda: linalg.inverse_pth_root(_f32(3, 3), 0),
        r"inverse_pth_root: p must be a positive integer, got 0",
    ),
    (
        "inverse_root_negative_tol",
        lambda: linalg.inverse_pth_root(_f32(3, 3), 2, tol=-1e-4),
        r"inverse_pth_root: tol must be a finite number >= 0, got -0\.0001",
    ),
    (
        "inverse_root_nan_tol",
        lambda: linalg.inverse_pth_root(_f32(3, 3), 2, tol=math.nan),
        r"inverse_pth_root: tol must be a finite number >= 0, got nan",
    ),
    (
        "newton_schulz_of_a_vector",
        lambda: linalg.newton_schulz(_f32(3)),
        r"newton_schulz: expected matrices \(\.\.\., m, n\), got shape \(3,\)",
    ),
    (
        "newton_schulz_negative_eps",
        lambda: linalg.newton_schulz(_f32(3, 4), eps=-1e-7),
        r"newton_schulz: eps must be a finite number > 0, got -1e-07",
    ),
    (
        "newton_schulz_nan_eps",
        lambda: linalg.newton_schulz(_f32(3, 4), eps=math.nan),
        r"newton_schulz: eps must be a finite number > 0, got nan",
    ),
]


def test_the_catalogue_has_at_least_25_distinct_cases():
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)
    assert len({c[2] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("thunk", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_value_error(thunk, pattern):
    with pytest.raises(ValueError, match=pattern):
        thunk()
