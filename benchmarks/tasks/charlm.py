"""A character-level language model on the Python standard library's own sources.

The corpus is built locally, with no download: a fixed list of pure-Python modules read from
``sysconfig.get_paths()['stdlib']``, every one of which exists in CPython 3.10 to 3.13 (no module
removed by PEP 594 or turned into a package since 3.10). Files are split, whole, into a training
and a validation set, so validation text is never seen in training. Their contents differ a little
between Python versions, so ``corpus()`` records a SHA-256 of the text: two runs are comparable when
their hashes agree.

Characters are tab, newline and printable ASCII (``' '``..``'~'``); anything else (on CPython
3.11.7: 2 non-ASCII characters in training, 68 in validation, most in ``shlex.py``) maps to one
unknown token. The vocabulary is fixed, 98
symbols, whatever the corpus.

The model is a small decoder-only transformer (Flax nnx): token and learned position embeddings,
``depth`` pre-norm blocks (LayerNorm or RMSNorm; causal multi-head attention with separate
``q_proj``/``k_proj``/``v_proj``/``o_proj``; a GELU MLP ``fc_in``/``fc_out``), a final norm and an
output head ``lm_head`` (or tied to the token embedding). Every parameter keeps Flax's names, so
``normtx.roles.infer`` classifies the tree with no labels: embeddings (``token_embed``,
``pos_embed``), hidden kernels, gains/biases and the head.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.tasks.train import Task

__all__ = [
    "TRAIN_FILES",
    "VAL_FILES",
    "VOCAB",
    "Config",
    "Transformer",
    "corpus",
    "decode",
    "encode",
    "sample",
    "task",
]

# Pure-Python modules present in CPython 3.10, 3.11, 3.12 and 3.13 (paths under the stdlib root).
TRAIN_FILES: tuple[str, ...] = (
    "argparse.py", "ast.py", "bdb.py", "calendar.py", "cmd.py", "codecs.py",
    "collections/__init__.py", "configparser.py", "contextlib.py", "copy.py", "csv.py",
    "dataclasses.py", "difflib.py", "dis.py", "enum.py", "filecmp.py", "fileinput.py",
    "fnmatch.py", "functools.py", "gettext.py", "glob.py", "gzip.py", "http/client.py",
    "imaplib.py", "inspect.py", "ipaddress.py", "logging/__init__.py", "logging/handlers.py",
    "mailbox.py", "mimetypes.py", "ntpath.py", "numbers.py", "operator.py", "optparse.py",
    "os.py", "pdb.py", "pickle.py", "platform.py", "posixpath.py", "pprint.py", "random.py",
    "shutil.py", "smtplib.py", "socket.py", "statistics.py", "string.py", "subprocess.py",
    "tarfile.py", "tempfile.py", "threading.py", "timeit.py", "tokenize.py", "traceback.py",
    "typing.py", "unittest/case.py", "urllib/request.py", "uuid.py", "weakref.py",
)  # fmt: skip
VAL_FILES: tuple[str, ...] = (
    "fractions.py", "heapq.py", "json/decoder.py", "queue.py", "shlex.py", "textwrap.py",
)  # fmt: skip

UNKNOWN = "\ufffd"
VOCAB: str = UNKNOWN + "\t\n" + "".join(chr(c) for c in range(32, 127))
_INDEX = np.zeros(0x110000, np.uint8)  # code point -> token id (0 = unknown)
_INDEX[[ord(c) for c in VOCAB[1:]]] = np.arange(1, len(VOCAB), dtype=np.uint8)


def encode(text: str) -> np.ndarray:
    """Token ids (int32) of ``text``."""
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    return _INDEX[codes].astype(np.int32)


def decode(ids) -> str:
    """The text of token ids."""
    return "".join(VOCAB[i] for i in np.asarray(ids).tolist())


def _read(files: tuple[str, ...]) -> str:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"charlm: the standard library at {root} lacks {missing}; the corpus needs CPython "
            "3.10-3.13 with its pure-Python sources installed."
        )
    return "".join((root / f).read_text(encoding="utf-8") for f in files)


@functools.cache
def corpus() -> dict:
    """``{'train', 'val'}`` token arrays, ``sha256`` of the text, sizes and the file lists."""
    train, val = _read(TRAIN_FILES), _read(VAL_FILES)
    digest = hashlib.sha256()
    for text in (train, "\0", val):
        digest.update(text.encode("utf-8"))
    return {
        "train": encode(train),
        "val": encode(val),
        "sha256": digest.hexdigest(),
        "train_chars": len(train),
        "val_chars": len(val),
        "train_files": list(TRAIN_FILES),
        "val_files": list(VAL_FILES),
    }


@dataclasses.dataclass(frozen=True)
class Config:
    """Transformer size: ``depth`` blocks of ``width`` with ``heads`` heads, ``context`` chars."""

    depth: int = 2
    width: int = 128
    heads: int = 4
    context: int = 64
    mlp_ratio: int = 4
    norm: str = "layernorm"  # 'layernorm' or 'rmsnorm'
    tied: bool = False  # tie the output head to the token embedding
    # Init std of the embedding tables: None is Flax's default (1/sqrt(width), rows of RMS
    # 1/sqrt(width)); 1.0 gives rows of unit RMS, the premise of the l1 -> RMS embedding norm.
    embed_std: float | None = None

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"Config: width {self.width} is not a multiple of heads {self.heads}.")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"Config: norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}.")


def _norm(cfg: Config, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.norm == "layernorm":
        return nnx.LayerNorm(cfg.width, rngs=rngs)
    return nnx.RMSNorm(cfg.width, rngs=rngs)


class Attention(nnx.Module):
    """Causal multi-head self-attention with separate query/key/value/output projections."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        linear = lambda: nnx.Linear(cfg.width, cfg.width, use_bias=False, rngs=rngs)  # noqa: E731
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = linear(), linear(), linear(), linear()
        self.heads = cfg.heads

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.reshape(b, t, d))


class MLP(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.fc_in = nnx.Linear(cfg.width, cfg.mlp_ratio * cfg.width, rngs=rngs)
        self.fc_out = nnx.Linear(cfg.mlp_ratio * cfg.width, cfg.width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc_out(nnx.gelu(self.fc_in(x)))


class Block(nnx.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.ln_1, self.attn = _norm(cfg, rngs), Attention(cfg, rngs=rngs)
        self.ln_2, self.mlp = _norm(cfg, rngs), MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """Decoder-only character transformer: ``(batch, time)`` ids -> ``(batch, time, vocab)``."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = (
            {}
            if cfg.embed_std is None
            else {"embedding_init": nnx.initializers.normal(cfg.embed_std)}
        )
        self.token_embed = nnx.Embed(len(VOCAB), cfg.width, rngs=rngs, **init)
        self.pos_embed = nnx.Embed(cfg.context, cfg.width, rngs=rngs, **init)
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.ln_f = _norm(cfg, rngs)
        if not cfg.tied:
            self.lm_head = nnx.Linear(cfg.width, len(VOCAB), use_bias=False, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.token_embed(ids) + self.pos_embed(jnp.arange(ids.shape[-1]))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.token_embed.attend(x) if self.cfg.tied else self.lm_head(x)


def _windows(tokens: jax.Array, starts: jax.Array, length: int) -> jax.Array:
    return tokens[starts[:, None] + jnp.arange(length)]


def _loss(model: Transformer, batch: jax.Array) -> jax.Array:
    logits = model(batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def _metrics(model: Transformer, batch: jax.Array) -> dict[str, jax.Array]:
    logits = model(batch[:, :-1])
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch[:, 1:]),
    }


def task(cfg: Config = Config(), *, eval_windows: int = 128) -> Task:
    """The char-LM task: random training windows of ``context + 1`` characters, and a fixed
    validation batch of ``eval_windows`` windows spread evenly over the validation files."""
    data = corpus()
    length = cfg.context + 1
    starts = np.linspace(0, len(data["val"]) - length, eval_windows).astype(np.int32)
    train_tokens = jnp.asarray(data["train"])
    return Task(
        name="charlm",
        make_model=lambda rngs: Transformer(cfg, rngs=rngs),
        loss=_loss,
        metrics=_metrics,
        train_data=train_tokens,
        eval_data=_windows(jnp.asarray(data["val"]), jnp.asarray(starts), length),
        num_positions=len(data["train"]) - length,
        get_batch=lambda tokens, pos: _windows(tokens, pos, length),
        info={
            "data": "CPython stdlib sources (charlm.TRAIN_FILES / VAL_FILES)",
            "corpus_sha256": data["sha256"],
            "train_chars": data["train_chars"],
            "val_chars": data["val_chars"],
            "vocab": len(VOCAB),
            "eval_windows": eval_windows,
            **dataclasses.asdict(cfg),
        },
    )


def sample(
    model: Transformer, prompt: str, length: int, *, temperature: float = 0.8, seed: int = 0
) -> str:
    """``prompt`` followed by ``length`` sampled characters (a sliding window of ``context``)."""
    ids = encode(prompt)[-model.cfg.context :]
    n = len(ids)
    buf = np.zeros(n + length, np.int32)
    buf[:n] = ids
    graphdef, state = nnx.split(model)
    out = _generate(graphdef, float(temperature), state, jnp.asarray(buf), n, jax.random.key(seed))
    return prompt + decode(np.asarray(out)[n:])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generate(graphdef, temperature: float, state, buf: jax.Array, n, key: jax.Array) -> jax.Array:
    """Fills ``buf[n:]`` token by token; compiled once per model and buffer length."""
    model = nnx.merge(graphdef, state)
    ctx = model.cfg.context

    def body(t, carry):
        buf, key = carry
        start = jnp.maximum(t - ctx, 0)
        window = jax.lax.dynamic_slice(jnp.pad(buf, (0, ctx)), (start,), (ctx,))
        logits = model(window[None])[0, t - 1 - start]
        key, sub = jax.random.split(key)
        nxt = jax.random.categorical(sub, logits / temperature).astype(buf.dtype)
        return buf.at[t].set(nxt), key

    return jax.lax.fori_loop(n, buf.shape[0], body, (buf, key))[0]
