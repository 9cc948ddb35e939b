"""The Flax naming rules that classify a parameter leaf: kernel, bias, scale, embedding.

``classify`` gives every leaf the role Flax's names and shapes imply (``normtx.roles`` lists the
rules): Dense and conv kernels, the ``query``/``key``/``value``/``out`` kernels of attention,
biases, gains and embedding tables, and the layer axes of ``nn.scan``/``nnx.scan`` stacks read
off a module's bias or its stacked siblings. The head and ``labels=`` come after it
(``normtx.geometry.infer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from normtx.geometry.role import Role, _attention_role

__all__ = ["Leaf", "classify"]

_ATTENTION_PARTS = frozenset({"query", "key", "value", "out"})


@dataclasses.dataclass
class Leaf:
    path: str
    leaf: Any
    shape: tuple[int, ...]
    module: tuple[str, ...]
    name: str
    role: Role | None = None
    error: str | None = None


def _group_modules(leaves: list[Leaf]) -> dict[tuple[str, ...], dict[str, Leaf]]:
    modules: dict[tuple[str, ...], dict[str, Leaf]] = {}
    for lf in leaves:
        modules.setdefault(lf.module, {})[lf.name] = lf
    return modules


def _is_attention(module: tuple[str, ...], children: Mapping[tuple[str, ...], set[str]]) -> bool:
    """A ``query``/``key``/``value``/``out`` module beside at least one other of those names."""
    if not module or module[-1] not in _ATTENTION_PARTS:
        return False
    return len(children.get(module[:-1], set()) & _ATTENTION_PARTS) >= 2


def _direct_layers(module, members, children) -> int | None:
    """Layer axes a module's own leaves prove, or ``None`` if they do not fix them."""
    if "kernel" in members and _is_attention(module, children):
        return len(members["kernel"].shape) - 3
    if "embedding" in members:
        return len(members["embedding"].shape) - 2
    if "scale" in members:
        return len(members["scale"].shape) - 1
    if "kernel" in members:
        k = members["kernel"].shape
        if len(k) == 2:
            return 0
        bias = members.get("bias")
        if bias is not None and len(bias.shape) >= 1:
            d = len(bias.shape) - 1
            if len(k) >= d + 2 and bias.shape == k[:d] + k[-1:]:
                return d
    return None


def _enclosing_layers(module, found_under: Mapping[tuple[str, ...], set[int]]) -> int | None:
    """Layer axes agreed on by the nearest enclosing subtree that has any evidence."""
    for k in range(len(module), -1, -1):
        found = found_under.get(module[:k])
        if found:
            return next(iter(found)) if len(found) == 1 else None
    return None


def classify(leaves: list[Leaf], heads_as_batch: bool) -> None:
    modules = _group_modules(leaves)
    children: dict[tuple[str, ...], set[str]] = {}
    for module in modules:
        if module:
            children.setdefault(module[:-1], set()).add(module[-1])
    evidence = {}
    found_under: dict[tuple[str, ...], set[int]] = {}  # prefix -> layer counts proven below it
    for module, members in modules.items():
        d = _direct_layers(module, members, children)
        if d is not None and d >= 0:
            evidence[module] = d
            for k in range(len(module) + 1):
                found_under.setdefault(module[:k], set()).add(d)
    for module, members in modules.items():
        attention = _is_attention(module, children)
        d = evidence.get(module)
        if d is None:
            d = _enclosing_layers(module, found_under)
        for name, lf in members.items():
            rank = len(lf.shape)
            if name == "kernel" and attention:
                if rank >= 3:
                    lf.role = _attention_role(
                        rank, module[-1] == "out", rank - 3, heads_as_batch, lf.path
                    )
                else:
                    lf.error = "an attention kernel needs 3 axes per layer"
            elif name == "kernel":
                lf.role, lf.error = _kernel_role(lf, module, d)
            elif name == "embedding":
                if rank >= 2:
                    lf.role = _shift(Role("embedding", (0,), (1,)), rank - 2)
                else:
                    lf.error = "an embedding table needs 2 axes (vocab, features)"
            elif name in ("bias", "scale"):
                role = "bias" if name == "bias" else "gain"
                natural = 2 if (attention and module[-1] != "out") else 1
                layers = d if d is not None else 0
                if attention:
                    layers = max(rank - natural, 0)
                heads = (layers,) if (attention and natural == 2 and heads_as_batch) else ()
                lf.role = Role(role, layer_axes=tuple(range(min(layers, rank))), batch_axes=heads)
            else:
                lf.error = f"no rule for a leaf named {name!r}"


def _shift(role: Role, layers: int) -> Role:
    if not layers:
        return role
    return Role(
        role.name,
        tuple(a + layers for a in role.fan_in_axes),
        tuple(a + layers for a in role.fan_out_axes),
        tuple(range(layers)),
        tuple(a + layers for a in role.batch_axes),
    )


def _kernel_role(lf: Leaf, module, layers: int | None) -> tuple[Role | None, str | None]:
    rank = len(lf.shape)
    if rank < 2:
        return None, "a kernel needs at least 2 axes"
    if rank == 2:
        return Role("hidden", (0,), (1,)), None
    named_conv = bool(module) and "conv" in module[-1].lower()
    if layers is None:
        if rank == 4 or named_conv:
            layers = 0
        else:
            return None, (
                f"a rank-{rank} kernel whose layer axes cannot be told apart from conv axes "
                "(no bias of shape (*layers, d_out), no agreeing stacked siblings)"
            )
    rest = rank - layers
    if rest == 2:
        return _shift(Role("hidden", (0,), (1,)), layers), None
    if rest >= 3 and (rest == 4 or named_conv):
        return _shift(Role("conv", tuple(range(rest - 1)), (rest - 1,)), layers), None
    return None, (
        f"a rank-{rank} kernel with {layers} layer axes leaves {rest} axes: neither a Dense "
        "kernel (2) nor a conv kernel (HWIO, or a module named *conv*)"
    )
