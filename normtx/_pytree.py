"""Pytree paths as readable strings, and leaf descriptions for error messages.

Every error that concerns one parameter names it the same way: its path
(``'params/Dense_0/kernel'``, the keys joined by ``/``), its shape and its dtype. Flax nnx wraps
arrays in variables whose path ends in ``.value``; that last key carries no information and is
dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "broadcast_to_leaves",
    "check_state_shape",
    "describe_leaf",
    "flatten_state_field",
    "flatten_with_paths",
    "path_str",
]


def _key_str(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """``(DictKey('params'), DictKey('kernel'))`` -> ``'params/kernel'``."""
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys) or "<root>"


def describe_leaf(path: str, leaf: Any) -> str:
    """``"'params/Dense_0/kernel' (shape (3, 4), float32)"`` for error messages."""
    shape = tuple(np.shape(leaf))
    dtype = getattr(leaf, "dtype", type(leaf).__name__)
    return f"{path!r} (shape {shape}, {dtype})"


def flatten_with_paths(tree: Any, is_leaf=None) -> tuple[list[tuple[str, Any]], Any]:
    """Flattens ``tree`` into ``[(path_str, leaf), ...]`` and its treedef."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(p), leaf) for p, leaf in pairs], treedef


def flatten_state_field(updates: Any, field: Any, *, what: str, name: str) -> list[Any]:
    """The entries of ``field`` (a state tree built with the params' structure) for each leaf of
    ``updates``, in flatten order (an entry may be a subtree such as ``optax.MaskedNode()``).

    Raises ``ValueError`` naming the update paths when ``updates`` does not have the structure of
    the params the state was initialised with.
    """
    treedef = jax.tree_util.tree_structure(updates)
    try:
        return treedef.flatten_up_to(field)
    except (ValueError, TypeError) as e:
        paths = [p for p, _ in flatten_with_paths(updates)[0]]
        raise ValueError(
            f"{what}: the updates do not have the tree structure of the params the state was "
            f"initialised with (state field {name!r}). Update paths: {paths[:12]}"
            f"{' ...' if len(paths) > 12 else ''}. JAX says: {e}"
        ) from None


def check_state_shape(
    what: str, path: str, leaf: Any, entry: Any, expected: tuple[int, ...], name: str
) -> None:
    """Raises ``ValueError`` unless the state array ``entry`` for ``leaf`` has shape ``expected``.

    The shape the state needs follows from the leaf's shape; a mismatch means the state was
    initialised for other params (a transposed kernel, another width).
    """
    if tuple(np.shape(entry)) != tuple(expected):
        raise ValueError(
            f"{what}: update {describe_leaf(path, leaf)} does not match the state: its {name} "
            f"has shape {tuple(np.shape(entry))}, and a leaf of this shape needs {tuple(expected)}."
            " Initialise the state with params of the shapes the updates have."
        )


def broadcast_to_leaves(
    spec: Any,
    tree: Any,
    *,
    is_value: Callable[[Any], bool],
    what: str,
    expected: str,
) -> list[tuple[str, Any, Any]]:
    """Gives every leaf of ``tree`` its entry of ``spec``: ``[(path, leaf, value_or_None), ...]``.

    ``spec`` is one value for every leaf, ``None`` (no value anywhere), a callable
    ``(path_str, leaf) -> value | None``, or a pytree prefix of ``tree`` whose leaves are values or
    ``None`` (a ``None`` covers its whole subtree). The order is ``jax.tree_util`` flatten order.
    Anything else is a ``ValueError`` that names the offending path.
    """
    flat, _ = flatten_with_paths(tree)
    if spec is None or is_value(spec):
        return [(p, leaf, spec) for p, leaf in flat]
    if callable(spec) and not isinstance(spec, (dict, list, tuple)):
        out = []
        for p, leaf in flat:
            value = spec(p, leaf)
            if value is not None and not is_value(value):
                raise ValueError(
                    f"{what}: the callable returned {value!r} for leaf "
                    f"{describe_leaf(p, leaf)}; expected {expected} or None."
                )
            out.append((p, leaf, value))
        return out
    is_entry = lambda x: x is None or is_value(x)  # noqa: E731
    spec_leaves, _ = flatten_with_paths(spec, is_leaf=is_entry)
    for p, value in spec_leaves:
        if not is_entry(value):
            raise ValueError(
                f"{what}: entry {p!r} of the spec tree is {value!r}; expected {expected} or None."
            )
    try:
        full = jax.tree.broadcast(spec, tree, is_leaf=is_entry)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{what}: the tree of {expected} does not match the parameter tree (it must have the "
            f"same structure, or be a prefix of it). Parameter paths: "
            f"{[p for p, _ in flat][:12]}{' ...' if len(flat) > 12 else ''}. JAX says: {e}"
        ) from e
    values, _ = jax.tree_util.tree_flatten(full, is_leaf=is_entry)
    return [(p, leaf, v) for (p, leaf), v in zip(flat, values, strict=True)]
