"""Keyword groups: one definition of keyword arguments that several public functions take.

Many factories take the same keywords (the roles of a tree: ``head``, ``labels``,
``heads_as_batch``; its norms: ``norms``, ``scales``, ``masses``; a descent's ``momentum``,
``weight_decay``, …). Each such list is written once, as a ``KeywordGroup``: a ``TypedDict``
(``total=False``) of the keywords and their types, and their defaults. A function takes them as
``**kw: Unpack[Options]`` (PEP 692: what static type checkers read) and ``@keywords(GROUP, ...)``
gives it the explicit signature ``inspect.signature``, ``help()``, Sphinx and
``optax.inject_hyperparams`` read: every keyword of the groups keyword-only, typed, with its
default.

    class InferOptions(TypedDict, total=False):
        head: HeadSpec
        labels: LabelSpec

    INFER = KeywordGroup(InferOptions, head=None, labels=None)

    @keywords(INFER)
    def optax_labels(params: Any, roles: Any = None, **kw: Unpack[InferOptions]) -> Any:
        return resolve(params, roles, **kw)  # kw holds head and labels, given or default
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any, ForwardRef, ParamSpec, TypeVar, get_args

__all__ = ["KeywordGroup", "keywords"]

P = ParamSpec("P")
R = TypeVar("R")


class KeywordGroup:
    """Keyword arguments shared by several functions: their ``TypedDict`` and their defaults.

    Args:
      fields: a ``TypedDict`` (``total=False``) naming the keywords and their types, in the order
        signatures list them.
      **defaults: the default of every keyword of ``fields`` (no more, no fewer).
    """

    def __init__(self, fields: type, /, **defaults: Any):
        names = tuple(fields.__annotations__)
        if set(defaults) != set(names):
            raise TypeError(
                f"KeywordGroup({fields.__name__}): defaults for {sorted(defaults)}, but its "
                f"keywords are {sorted(names)}."
            )
        self.fields = fields
        self.names = names
        self.defaults: Mapping[str, Any] = types.MappingProxyType(defaults)

    def __repr__(self) -> str:
        return f"KeywordGroup({self.fields.__name__}: {', '.join(self.names)})"

    def take(self, kw: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``kw`` that belong to this group."""
        return {name: kw[name] for name in self.names}

    def parameters(self, overrides: Mapping[str, Any]) -> list[inspect.Parameter]:
        """The group's keywords as keyword-only parameters (``overrides`` replace defaults)."""
        return [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=overrides.get(name, self.defaults[name]),
                annotation=_source(self.fields.__annotations__[name]),
            )
            for name in self.names
        ]

    def namespace(self) -> dict[str, Any]:
        """The names of the modules that wrote the group's annotations (to evaluate them in)."""
        out: dict[str, Any] = {}
        for annotation in self.fields.__annotations__.values():
            module = getattr(annotation, "__forward_module__", None) or self.fields.__module__
            out.update(vars(sys.modules[module]))
        return out


def _source(annotation: Any) -> Any:
    """An annotation as written: ``'HeadSpec'``, not ``ForwardRef('HeadSpec')``."""
    return annotation.__forward_arg__ if isinstance(annotation, ForwardRef) else annotation


def keywords(*groups: KeywordGroup, **overrides: Any) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Gives a function ``f(..., **kw: Unpack[Options])`` the keywords of ``groups`` explicitly.

    The decorated function's signature (``__signature__``) is ``f``'s own parameters followed by
    every keyword of ``groups``, keyword-only, with its type and its default (``overrides``: per
    function defaults, e.g. ``momentum=0.9``). A call is bound to that signature — an unknown
    keyword is the usual ``TypeError`` naming it, a missing one takes its default — and ``f``
    receives its own arguments and every group keyword in ``**kw``. ``Options`` (the
    ``TypedDict`` of ``**kw``'s annotation) must hold exactly the groups' keywords.

    The wrapper keeps ``f``'s name, docstring, module and annotations (``**kw``'s ``Unpack``
    included), and annotates the groups' keywords too, so ``typing.get_type_hints`` sees every
    parameter of the signature; its globals resolve those annotations (``f``'s module's names
    over those of the modules that wrote the groups'). It has no ``__wrapped__``: tools that pair
    ``f``'s source with the signature (Sphinx's ``autodoc_preserve_defaults``) would pair the
    source's defaults with the wrong parameters.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        own = inspect.signature(fn)
        kinds = [p.kind for p in own.parameters.values()]
        if kinds.count(inspect.Parameter.VAR_KEYWORD) != 1:
            raise TypeError(f"@keywords: {fn.__qualname__} must take **kw: Unpack[...].")
        names = [n for g in groups for n in g.names]
        _check_unpack(fn, own, names)
        clash = set(names) & set(own.parameters) | set(overrides) - set(names)
        if clash or len(set(names)) != len(names):
            raise TypeError(
                f"@keywords: {fn.__qualname__}: keywords {sorted(clash)} are its own parameters "
                f"or in no group, or the groups repeat a keyword ({names})."
            )
        signature = own.replace(
            parameters=[
                *(p for p in own.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD),
                *(p for g in groups for p in g.parameters(overrides)),
            ]
        )

        def call(*args, **kwargs):
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{fn.__qualname__}() {e}") from None
            bound.apply_defaults()
            return fn(*bound.args, **bound.kwargs)

        namespace: dict[str, Any] = {}
        for g in groups:
            namespace.update(g.namespace())
        namespace.update(fn.__globals__)
        wrapper = types.FunctionType(call.__code__, namespace, fn.__name__, None, call.__closure__)
        functools.update_wrapper(wrapper, fn)
        del wrapper.__wrapped__
        wrapper.__signature__ = signature
        # f's annotations (**kw's Unpack included) and every group keyword's, as the signature's.
        wrapper.__annotations__ = {
            **{k: v for k, v in fn.__annotations__.items() if k != "return"},
            **{n: p.annotation for n, p in signature.parameters.items() if n not in own.parameters},
            **({"return": own.return_annotation} if "return" in fn.__annotations__ else {}),
        }
        return wrapper

    return decorate


def _check_unpack(fn: Callable, own: inspect.Signature, names: list[str]) -> None:
    """``fn``'s ``**kw`` is annotated ``Unpack[Options]`` with ``Options`` the groups' keywords."""
    var = next(p for p in own.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD)
    annotation = var.annotation
    if isinstance(annotation, str):
        annotation = eval(annotation, fn.__globals__)
    options = get_args(annotation)[0] if get_args(annotation) else None
    if options is None or set(getattr(options, "__annotations__", ())) != set(names):
        raise TypeError(
            f"@keywords: {fn.__qualname__}'s **{var.name} must be annotated Unpack[Options] with "
            f"a TypedDict Options of the groups' keywords {names}, got {var.annotation!r}."
        )
