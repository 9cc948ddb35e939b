"""The per-head maximum pre-softmax logits that ``qk_clip`` reads, collected from Flax attention.

``sow_max_logits`` wraps an attention function (``attention_fn=`` of ``nnx.MultiHeadAttention`` /
``linen.MultiHeadDotProductAttention``) so that it sows each head's largest logit ``q·k/√d``, and
``collect_max_logits`` turns the sown tree into the ``{module path: (num_heads,)}`` dictionary
``normtx.transforms.qk_clip`` takes as its ``max_logits`` argument.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from normtx._numerics import compute_dtype
from normtx._pytree import flatten_with_paths

__all__ = ["collect_max_logits", "sow_max_logits"]


def _max_logits(query: jax.Array, key: jax.Array, mask: Any, is_causal: bool) -> jax.Array:
    """Each head's largest ``q·k/√d`` over the batch and positions, for ``(..., length, heads,
    head_dim)`` queries and keys (Flax's layout), masked positions excluded; float32 or wider."""
    if query.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"sow_max_logits: query heads {query.shape[-2]} != key heads {key.shape[-2]}: "
            "grouped-query attention is not supported by qk_clip."
        )
    dt = compute_dtype(jnp.result_type(query.dtype, key.dtype))
    q = query.astype(dt) / jnp.sqrt(jnp.asarray(query.shape[-1], dt))
    logits = jnp.einsum("...qhd,...khd->...hqk", q, key.astype(dt))
    valid = jnp.ones(logits.shape, bool)
    if mask is not None:
        valid = valid & jnp.broadcast_to(jnp.asarray(mask, bool), logits.shape)
    if is_causal:
        valid = valid & jnp.tril(jnp.ones(logits.shape[-2:], bool))
    logits = jnp.where(valid, logits, -jnp.inf)
    heads_last = jnp.moveaxis(logits, -3, -1)
    return jnp.max(heads_last.reshape(-1, logits.shape[-3]), axis=0)


def sow_max_logits(
    attention_fn: Callable[..., jax.Array], collection: Any, *, name: str = "max_logits"
) -> Callable[..., jax.Array]:
    """Wraps a Flax attention function so that it sows each head's largest pre-softmax logit.

    The wrapper computes ``max q·k/√d`` per head (over the batch, the query and the key
    positions, excluding masked ones; float32; shape ``(num_heads,)``), sows it with
    ``module.sow(collection, name, value)`` and returns ``attention_fn``'s output. Flax passes the
    attention module as ``module=`` only when the layer is called with ``sow_weights=True``; the
    wrapped function then gets ``module=None`` (it does not sow the attention weights). Its
    signature is ``attention_fn``'s, so linen's keyword filtering passes the mask through.

    Args:
      attention_fn: ``nnx.dot_product_attention`` or ``linen.dot_product_attention`` (or a
        function with their signature).
      collection: ``nnx.Intermediate`` (nnx) or ``"intermediates"`` (linen).
      name: the name to sow under (``collect_max_logits``'s ``name``).

    Returns:
      An attention function for ``attention_fn=`` of ``nnx.MultiHeadAttention`` /
      ``linen.MultiHeadDotProductAttention``.

    Example::

      nnx.MultiHeadAttention(..., attention_fn=sow_max_logits(nnx.dot_product_attention,
                                                              nnx.Intermediate))
    """
    signature = inspect.signature(attention_fn)

    @functools.wraps(attention_fn)
    def wrapped(query, key, value, *args, module=None, **kwargs):
        if module is not None:
            bound = signature.bind_partial(query, key, value, *args, **kwargs).arguments
            peak = _max_logits(query, key, bound.get("mask"), bool(bound.get("is_causal", False)))
            module.sow(collection, name, peak)
        if "module" in signature.parameters:
            kwargs["module"] = None
        return attention_fn(query, key, value, *args, **kwargs)

    return wrapped


def collect_max_logits(sown: Any, *, name: str = "max_logits") -> dict[str, jax.Array]:
    """``{module path: per-head max logits}`` from the intermediates ``sow_max_logits`` sowed.

    Every leaf whose path has a component ``name`` belongs to the module at the path before it
    (``'<root>'`` when nothing is); several values of one module (a layer called more than once)
    are combined by their elementwise maximum. Pass the collection itself: what
    ``nnx.capture(model, nnx.Intermediate)`` returns (or ``nnx.pop(model, nnx.Intermediate)``) in
    nnx, ``mutated["intermediates"]`` in linen, so that the module paths are those of the
    parameter tree given to the optimizer.

    Raises:
      ValueError: when no leaf has a component ``name``.
    """
    out: dict[str, jax.Array] = {}
    flat, _ = flatten_with_paths(sown)
    for path, leaf in flat:
        keys = path.split("/")
        if name not in keys:
            continue
        module = "/".join(keys[: keys.index(name)]) or "<root>"
        out[module] = leaf if module not in out else jnp.maximum(out[module], leaf)
    if not out:
        raise ValueError(
            f"collect_max_logits: no entry named {name!r} in the sown tree (paths: "
            f"{[p for p, _ in flat][:12]}). Was the attention layer called with sow_weights=True?"
        )
    return out
