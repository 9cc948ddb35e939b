"""An independent Flax linen GPT, written as a new user would, for ``bench_step``'s cost rows.

A decoder-only transformer in plain ``flax.linen``: ``nn.Embed`` token and learned position
embeddings, ``depth`` pre-LayerNorm blocks (causal ``nn.MultiHeadDotProductAttention``, a GELU MLP
of two ``nn.Dense``), a final LayerNorm and a ``head`` ``nn.Dense``. With ``scan=True`` the blocks
are one ``nn.scan``-stacked module (``variable_axes={'params': 0}``: every block parameter gains a
leading layer axis). The parameter tree is ``model.init``'s ``{'params': ...}`` dict, untouched;
``normtx.roles.infer`` classifies it, scanned or not, with no labels (``tests/test_benchmarks.py``
checks).

Only cost is measured on it, so the data is a fixed random integer batch and the loss the
next-token cross-entropy on it (``loss_fn``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

__all__ = ["GPT", "Config", "init", "loss_fn"]


@dataclasses.dataclass(frozen=True)
class Config:
    """``depth`` blocks of ``width`` with ``heads`` heads over ``context`` tokens of ``vocab``;
    ``scan``: the blocks stacked with ``nn.scan``."""

    depth: int = 4
    width: int = 128
    heads: int = 4
    context: int = 128
    vocab: int = 128
    batch: int = 8
    scan: bool = False


class Block(nn.Module):
    """Pre-LayerNorm residual block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    cfg: Config

    @nn.compact
    def __call__(self, x, _=None):
        cfg = self.cfg
        y = nn.LayerNorm()(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
        x = x + nn.MultiHeadDotProductAttention(num_heads=cfg.heads)(y, y, mask=mask)
        y = nn.Dense(4 * cfg.width)(nn.LayerNorm()(x))
        x = x + nn.Dense(cfg.width)(nn.gelu(y))
        return (x, None) if cfg.scan else x


class GPT(nn.Module):
    """``(batch, time)`` token ids -> ``(batch, time, vocab)`` logits."""

    cfg: Config

    @nn.compact
    def __call__(self, ids):
        cfg = self.cfg
        x = nn.Embed(cfg.vocab, cfg.width)(ids)
        x = x + nn.Embed(cfg.context, cfg.width)(jnp.arange(ids.shape[-1]))
        if cfg.scan:
            blocks = nn.scan(
                Block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=cfg.depth,
            )
            x, _ = blocks(cfg, name="blocks")(x, None)
        else:
            for _ in range(cfg.depth):
                x = Block(cfg)(x)
        return nn.Dense(cfg.vocab, name="head")(nn.LayerNorm()(x))


def init(cfg: Config, seed: int = 0) -> tuple[dict, jax.Array]:
    """``(params, batch)``: ``GPT(cfg).init``'s variables and a fixed random ``(batch, context +
    1)`` int32 token batch."""
    k_init, k_data = jax.random.split(jax.random.key(seed))
    batch = jax.random.randint(k_data, (cfg.batch, cfg.context + 1), 0, cfg.vocab, jnp.int32)
    return GPT(cfg).init(k_init, batch[:, :-1]), batch


def loss_fn(cfg: Config):
    """``(params, batch) -> `` the mean next-token cross-entropy of ``GPT(cfg)``."""
    model = GPT(cfg)

    def loss(params, batch):
        logits = model.apply(params, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    return loss
