r"""``qk_clip``: MuonClip's per-head rescaling of query and key weights (Kimi K2, §2.1).

A head whose pre-softmax logits ``S = q·k/√d`` grow past a threshold ``τ`` gets its query and key
weights scaled by ``√(τ/S_max)`` each, so that its largest logit (bilinear in the two) becomes
``τ``. The transform sits at the end of a chain and changes the final updates so that
``params + updates' = clip(params + updates)``; the per-head maxima come from the forward pass as
an extra argument of ``update``.

The maxima come from ``sow_max_logits`` and ``collect_max_logits`` (``normtx.transforms.max_logits``);
``flax_mha_heads`` (the default ``heads``) finds the query and key ``DenseGeneral`` leaves of Flax's
attention modules in the parameter tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normtx._numerics import compute_dtype
from normtx._pytree import broadcast_to_leaves, describe_leaf, flatten_with_paths
from normtx._validation import check_positive, value_at

__all__ = ["QKClipState", "QKLeaf", "flax_mha_heads", "qk_clip"]

_WHAT = "qk_clip"
_ROLES = ("query", "key")


class QKLeaf(NamedTuple):
    """Where one parameter leaf sits among the heads of an attention module."""

    module: str  # the module's key in max_logits: the '/'-joined path of its max-logit array
    role: Literal["query", "key"]  # the side of the logit q·k the leaf feeds
    head_axes: tuple[int, ...]  # the leaf's axes matched, in order, to the axes of the max logits


class QKClipState(NamedTuple):
    """State of ``qk_clip``."""

    count: jax.Array  # int32 scalar: steps taken (the argument of a threshold schedule)
    num_clipped: jax.Array  # int32 scalar: heads rescaled at the last step, over all modules
    factors: dict[str, jax.Array]  # module -> float32 √min(1, τ/S_max) per head at the last step


HeadsSpec = QKLeaf | Any | Callable[[str, jax.Array], QKLeaf | None] | None


def flax_mha_heads(path: str, leaf: Any) -> QKLeaf | None:
    """The query and key leaves of Flax's multi-head attention, by their paths.

    ``nnx.MultiHeadAttention`` and ``linen.MultiHeadDotProductAttention`` project with
    ``DenseGeneral`` layers named ``query`` and ``key``: a kernel ``(in_features, num_heads,
    head_dim)`` and a bias ``(num_heads, head_dim)``. A leaf whose path ends in
    ``query/kernel``, ``query/bias``, ``key/kernel`` or ``key/bias`` belongs to the module at the
    rest of the path (``'<root>'`` when nothing is left), with the head axis third from the end of
    a kernel and second from the end of a bias. Leading axes (scanned or stacked layers:
    ``(n_layers, in_features, num_heads, head_dim)``) are matched with leading axes of the
    module's max logits, which then have shape ``(n_layers, num_heads)``. Any other leaf: ``None``.

    Raises:
      ValueError: for a leaf named like one of these whose rank does not fit (e.g. a fused
        ``(in_features, num_heads * head_dim)`` kernel: its heads are not an axis).
    """
    keys = path.split("/")
    if len(keys) < 2 or keys[-2] not in _ROLES or keys[-1] not in ("kernel", "bias"):
        return None
    ndim = np.ndim(leaf)
    feature_axes = 1 if keys[-1] == "kernel" else 0  # a kernel's in_features axis
    if ndim < 2 + feature_axes:
        layout = "(in_features, num_heads, head_dim)" if feature_axes else "(num_heads, head_dim)"
        raise ValueError(
            f"{_WHAT}: leaf {describe_leaf(path, leaf)} is named like a Flax attention "
            f"{keys[-2]} {keys[-1]}, whose layout is {layout}, but its heads are not an axis of "
            "its own. Pass heads= (a callable (path, leaf) -> QKLeaf | None, or a tree of QKLeaf) "
            "that says where the heads are, or returns None for this leaf."
        )
    head = ndim - 2
    return QKLeaf("/".join(keys[:-2]) or "<root>", keys[-2], (*range(head - feature_axes), head))


class _Leaf(NamedTuple):
    """A query or key leaf, resolved against its shape."""

    module: str  # key of the module's max logits
    head_axes: tuple[int, ...]  # non-negative leaf axes, one per axis of the max logits


def _resolve(path: str, leaf: Any, spec: QKLeaf) -> tuple[_Leaf, tuple[int, ...]]:
    desc = describe_leaf(path, leaf)
    dtype = getattr(leaf, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{_WHAT}: leaf {desc} is not a floating-point array.")
    if spec.role not in _ROLES:
        raise ValueError(f"{_WHAT}: leaf {desc}: role must be one of {_ROLES}, got {spec.role!r}.")
    if not isinstance(spec.module, str):
        raise ValueError(f"{_WHAT}: leaf {desc}: module must be a str, got {spec.module!r}.")
    ndim = np.ndim(leaf)
    axes = tuple(spec.head_axes) if isinstance(spec.head_axes, (tuple, list)) else ()
    if not axes or not all(
        isinstance(a, int) and not isinstance(a, bool) and -ndim <= a < ndim for a in axes
    ):
        raise ValueError(
            f"{_WHAT}: leaf {desc}: head_axes must be a non-empty tuple of axes of the leaf, got "
            f"{spec.head_axes!r}."
        )
    axes = tuple(a % ndim for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{_WHAT}: leaf {desc}: head_axes {spec.head_axes!r} repeat an axis.")
    return _Leaf(spec.module, axes), tuple(np.shape(leaf)[a] for a in axes)


def _plan(heads: HeadsSpec, params: Any) -> tuple[list[_Leaf | None], dict[str, tuple[int, ...]]]:
    """Each leaf's ``_Leaf`` (``None``: not a query or key), and each module's head shape."""
    triples = broadcast_to_leaves(
        flax_mha_heads if heads is None else heads,
        params,
        is_value=lambda x: isinstance(x, QKLeaf),
        what=_WHAT,
        expected="QKLeaf",
    )
    plan: list[_Leaf | None] = []
    shapes: dict[str, tuple[int, ...]] = {}
    first: dict[str, str] = {}
    roles: dict[str, set[str]] = {}
    for path, leaf, spec in triples:
        if spec is None:
            plan.append(None)
            continue
        entry, shape = _resolve(path, leaf, spec)
        if shapes.setdefault(entry.module, shape) != shape:
            raise ValueError(
                f"{_WHAT}: leaf {describe_leaf(path, leaf)} has heads of shape {shape} (axes "
                f"{entry.head_axes}), but {first[entry.module]} of the same module "
                f"{entry.module!r} has {shapes[entry.module]}. Every query and key leaf of a "
                "module must have the same heads (grouped-query attention, where one key head "
                "serves several query heads, is not supported)."
            )
        first.setdefault(entry.module, describe_leaf(path, leaf))
        roles.setdefault(entry.module, set()).add(spec.role)
        plan.append(entry)
    if not shapes:
        paths = [p for p, _, _ in triples]
        raise ValueError(
            f"{_WHAT}: no leaf of the parameter tree is a query or key of an attention module. "
            f"Parameter paths: {paths[:12]}{' ...' if len(paths) > 12 else ''}. For other names "
            "or layouts than Flax's MultiHeadAttention, pass heads=."
        )
    for module, seen in roles.items():
        if seen != set(_ROLES):
            (missing,) = set(_ROLES) - seen
            raise ValueError(
                f"{_WHAT}: attention module {module!r} has no {missing} leaf (found "
                f"{first[module]}): scaling one side of q·k alone by √γ scales the logits by √γ, "
                "not γ. Map both the query and the key leaves of every module."
            )
    return plan, shapes


def _logits_by_module(max_logits: Any, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    flat, _ = flatten_with_paths(max_logits)
    given = dict(flat)
    missing = [m for m in shapes if m not in given]
    extra = [m for m in given if m not in shapes]
    if missing or extra:
        raise ValueError(
            f"{_WHAT}: max_logits must have one entry per attention module, keyed by the module's "
            f"path: expected {sorted(shapes)}, got {sorted(given)} (missing {missing}, unknown "
            f"{extra}). collect_max_logits builds this dictionary from sown intermediates."
        )
    for module, s in given.items():
        dtype = getattr(s, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{_WHAT}: max_logits {describe_leaf(module, s)} is not a floating-point array."
            )
        if tuple(np.shape(s)) != shapes[module]:
            raise ValueError(
                f"{_WHAT}: max_logits {describe_leaf(module, s)} does not match the module's heads: "
                f"its query and key leaves have heads of shape {shapes[module]}."
            )
    return given


def _head_factor(s: jax.Array, tau: jax.Array) -> jax.Array:
    """``√(τ/s)`` where ``s > τ``, else 1; a NaN maximum gives NaN (visible, never hidden)."""
    return jnp.where(s <= tau, jnp.ones((), s.dtype), jnp.sqrt(tau / s))


def _along(factor: jax.Array, axes: tuple[int, ...], shape: tuple[int, ...]) -> jax.Array:
    """``factor`` (one entry per head) laid along the leaf's ``axes``, broadcastable to ``shape``."""
    order = np.argsort(axes)
    target = [1] * len(shape)
    for a in axes:
        target[a] = shape[a]
    return jnp.transpose(factor, order).reshape(target)


def qk_clip(
    *,
    threshold: float | jax.Array | optax.Schedule = 100.0,
    heads: HeadsSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""QK-clip (MuonClip): rescales the query and key weights of every head whose logits pass τ.

    For each attention head ``h`` with largest pre-softmax logit ``S_max^h`` (over the batch and
    all query/key positions) above the threshold ``τ``:

    .. math:: \gamma_h = \tau / S^h_{\max}, \qquad
              W_q^h \leftarrow \sqrt{\gamma_h}\, W_q^h, \qquad W_k^h \leftarrow \sqrt{\gamma_h}\,W_k^h

    and heads with ``S_max^h <= τ`` are untouched. The logit ``q·k/√d`` is bilinear in the two
    projections, so the clipped head's logits are the old ones times ``γ_h``: its largest becomes
    ``τ``. Put it *last* in the chain (after ``optax.scale_by_learning_rate``): it returns
    ``updates'`` with ``params + updates' = clip(params + updates)``, and exactly ``updates``
    (bit for bit) on every leaf and head it does not clip.

    ``max_logits`` (an extra argument of ``update``) says where the maxima come from:

    - arrays: the maxima of this step's forward pass (on the params *before* the update), as in
      the K2 report. Free, and one step behind: the update itself may raise the logits past τ
      until the next step clips them;
    - a callable ``new_params -> max logits``: the maxima of the params *after* the update,
      ``params + updates`` (an extra forward pass on the batch): every head's largest logit on
      that batch is then at most τ after the step.

    Either way a tree whose leaves are keyed (by their ``/``-joined paths) by the modules'
    ``QKLeaf.module`` names, one array per module with one entry per head (``(num_heads,)``;
    ``(n_layers, num_heads)`` for stacked layers). Flax recipe (nnx; linen is the same with
    ``"intermediates"`` for the collection and ``mutable=["intermediates"]``)::

      attention = nnx.MultiHeadAttention(
          num_heads=8, in_features=512, decode=False, rngs=rngs,
          attention_fn=normtx.transforms.sow_max_logits(nnx.dot_product_attention,
                                                        nnx.Intermediate))
      # in the model: y = self.attention(x, sow_weights=True)   (passes the module to sow into)

      def loss_fn(model, x, y):
          out, sown = nnx.capture(model, nnx.Intermediate)(x)  # or model(x), nnx.pop(...)
          return ...(out, y), normtx.transforms.collect_max_logits(sown)

      (loss, max_logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
      optimizer.update(model, grads, max_logits=max_logits)  # nnx.Optimizer passes it on

    Supported: multi-head attention where every head has its own query and key slices (MHA),
    with or without biases (map the biases too: the logit is bilinear in ``(W_q, b_q)`` and
    ``(W_k, b_k)``), rotary embeddings (a rotation of q and k: the logits still scale by γ).
    Not supported: grouped-query/multi-query attention and MLA's shared rotary key (a key head
    serving several query heads; for MLA the K2 report scales the head-specific rotary query by
    γ and leaves the shared rotary key alone), and QK-norm (a normalisation after the projection
    undoes the scaling). An additive attention bias is not part of the ``q·k`` logit clipped.

    Args:
      threshold: ``τ > 0`` (the K2 report uses 100): a number, an array (e.g. under
        ``optax.inject_hyperparams``) or a schedule ``count -> τ_t``.
      heads: which leaves are queries and keys of which module, along which axes:
        ``None`` (``flax_mha_heads``: Flax's ``MultiHeadAttention`` layout), a callable
        ``(path, leaf) -> QKLeaf | None``, or a pytree prefix of the params with ``QKLeaf`` (or
        ``None``) entries. Every module needs at least one query and one key leaf, all with the
        same head shape. (A callable goes in ``static_args`` under ``optax.inject_hyperparams``.)

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params, *,
      max_logits)`` returns final updates (add them with ``optax.apply_updates``). The state
      keeps each head's factor ``√min(1, τ/S_max)`` and the number of heads clipped at the last
      step, for logging.

    Raises:
      ValueError: at construction for a non-positive threshold; at ``init`` for a tree without
        query/key leaves, a module without both, head shapes that differ within a module, or bad
        ``QKLeaf`` entries (naming the leaf's path, shape and dtype); when ``update`` is traced,
        without ``params`` or ``max_logits``, or for max logits that miss a module or do not have
        its head shape.

    Example:
      In a chain: ``optax.chain(normtx.optimizers.muon(0.02), normtx.qk_clip(threshold=100.0))``.
      Alone, on a Flax attention module ``attn`` of 2 heads whose largest logits were 400 and 50:
      head 0 is scaled by ``√(100/400)``, head 1 is left alone.

      >>> tx = normtx.qk_clip(threshold=100.0)
      >>> params = {"attn": {"query": {"kernel": jnp.ones((4, 2, 3), jnp.float32)},
      ...                    "key": {"kernel": jnp.ones((4, 2, 3), jnp.float32)}}}
      >>> zero = jax.tree.map(jnp.zeros_like, params)
      >>> max_logits = {"attn": jnp.array([400.0, 50.0], jnp.float32)}
      >>> u, state = jax.jit(tx.update)(zero, tx.init(params), params, max_logits=max_logits)
      >>> print(optax.apply_updates(params, u)["attn"]["query"]["kernel"][0])  # (heads, d_head)
      [[0.5 0.5 0.5]
       [1.  1.  1. ]]
      >>> int(state.num_clipped)
      1

    References:
      Kimi Team, *Kimi K2: Open Agentic Intelligence*, arXiv:2507.20534 (2025), §2.1 (MuonClip,
      Algorithm 1).
    """
    check_positive("threshold", threshold, _WHAT)

    def init_fn(params):
        _, shapes = _plan(heads, params)
        return QKClipState(
            count=jnp.zeros([], jnp.int32),
            num_clipped=jnp.zeros([], jnp.int32),
            factors={m: jnp.ones(shape, jnp.float32) for m, shape in shapes.items()},
        )

    def update_fn(updates, state, params=None, *, max_logits=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(f"{_WHAT}: update needs the current params (the weights it rescales).")
        if max_logits is None:
            raise ValueError(
                f"{_WHAT}: update needs max_logits= (each attention module's per-head largest "
                "pre-softmax logit, or a callable new_params -> those): tx.update(updates, state, "
                "params, max_logits=...)."
            )
        t_u, t_p = jax.tree_util.tree_structure(updates), jax.tree_util.tree_structure(params)
        if t_u != t_p:
            raise ValueError(
                f"{_WHAT}: the updates and the params have different tree structures:\n  "
                f"updates: {t_u}\n  params:  {t_p}"
            )
        plan, shapes = _plan(heads, params)
        known = {m: tuple(np.shape(f)) for m, f in state.factors.items()}
        if known != shapes:
            raise ValueError(
                f"{_WHAT}: the params' attention modules {shapes} are not those the state was "
                f"initialised with {known}."
            )
        if callable(max_logits):
            max_logits = max_logits(optax.apply_updates(params, updates))
        logits = _logits_by_module(max_logits, shapes)
        taus = {
            m: value_at(threshold, state.count, compute_dtype(s.dtype)) for m, s in logits.items()
        }

        out = []
        flat_u, treedef = jax.tree_util.tree_flatten(updates)
        for u, p, entry in zip(flat_u, treedef.flatten_up_to(params), plan, strict=True):
            if entry is None:
                out.append(u)
                continue
            dt = compute_dtype(u.dtype)
            s = logits[entry.module]
            f = _head_factor(s.astype(dt), taus[entry.module].astype(dt))
            f = _along(f, entry.head_axes, u.shape)
            clipped = (p.astype(dt) + u.astype(dt)) * f - p.astype(dt)
            out.append(jnp.where(f == 1, u, clipped.astype(u.dtype)))

        factors, num_clipped = {}, jnp.zeros([], jnp.int32)
        for m, s in logits.items():
            s = s.astype(compute_dtype(s.dtype))
            factors[m] = _head_factor(s, taus[m]).astype(jnp.float32)
            num_clipped = num_clipped + jnp.sum(~(s <= taus[m]), dtype=jnp.int32)
        new_state = QKClipState(
            count=optax.safe_increment(state.count), num_clipped=num_clipped, factors=factors
        )
        return jax.tree_util.tree_unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
