"""Validation shared by the transforms: hyperparameters fail at construction, not at step 1000."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "check_bool",
    "check_choice",
    "check_count",
    "check_int",
    "check_positive",
    "check_prng_key",
    "check_probability",
    "check_static",
    "value_at",
]


def check_choice(name: str, value: Any, choices: tuple[str, ...], what: str) -> str:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{what}: {name} must be one of {choices}, got {value!r}.")
    return value


def check_positive(name: str, value: Any, what: str, *, allow_zero: bool = False) -> None:
    """Raises ``ValueError`` for a Python number that is not > 0 (>= 0 with ``allow_zero``) or not
    finite (an infinite step size or decay turns the first update into inf/NaN).

    Arrays and schedules pass: under ``optax.inject_hyperparams`` the factory is called with traced
    values, which cannot be tested in Python.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = value >= 0 if allow_zero else value > 0
        if not ok:
            raise ValueError(
                f"{what}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}."
            )
        if not math.isfinite(value):
            raise ValueError(f"{what}: {name} must be finite, got {value!r}.")
    elif not (callable(value) or hasattr(value, "dtype")):
        raise ValueError(f"{what}: {name} must be a number, an array or a schedule, got {value!r}.")


def value_at(
    value: float | jax.Array | optax.Schedule | Callable, count: jax.Array, dtype: Any
) -> jax.Array:
    """A hyperparameter's value at step ``count`` (calls it if it is a schedule) in ``dtype``.

    The caller names the dtype of the computation the value enters (an explicit cast, not an
    implicit promotion: a float64 schedule does not turn float32 arithmetic into float64).
    """
    v = value(count) if callable(value) else value
    return jnp.asarray(v).astype(dtype)


def check_static(name: str, value: Any, what: str, *, arrays: bool = False) -> None:
    """Raises ``ValueError`` for an array (concrete or traced) given to a structural argument.

    A structural argument fixes shapes, Python loop lengths or the code that is traced (an integer
    count, an axis, a root's exponent), so it must be a Python value. ``optax.inject_hyperparams``
    turns every number it is given into an array; the error says to list the argument in its
    ``static_args``. With ``arrays=True`` a concrete array is a valid value (a coefficient table
    unrolled into the iteration) and only a traced one is refused.
    """
    is_array = hasattr(value, "dtype") and not isinstance(value, numbers.Number)
    if is_array and (not arrays or isinstance(value, jax.core.Tracer)):
        raise ValueError(
            f"{what}: {name} is structural (it fixes shapes, loop lengths or the traced code) and "
            f"must be a Python value{' or a concrete array' if arrays else ''}, got "
            f"{'a traced' if isinstance(value, jax.core.Tracer) else 'the'} array {value!r}. "
            f"Under optax.inject_hyperparams list it in static_args=({name!r},)."
        )


def check_int(name: str, value: Any, what: str, *, minimum: int, optional: bool = False) -> None:
    """Raises ``ValueError`` unless ``value`` is an int ``>= minimum`` (or ``None`` if optional).

    An array (e.g. under ``optax.inject_hyperparams``) is refused by ``check_static``.
    """
    if optional and value is None:
        return
    check_static(name, value, what)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"{what}: {name} must be an int >= {minimum}{' or None' if optional else ''}, "
            f"got {value!r}."
        )


def check_count(name: str, value: Any, what: str, *, minimum: int) -> int | jax.Array:
    """An integer read at run time (a loop length, a period): a Python int ``>= minimum``, or an
    integer scalar array — ``optax.inject_hyperparams`` passes every number as one. A concrete
    array is checked and returned as an int; a traced one (its value unknown) is returned as it
    is. Anything else raises ``ValueError``."""
    if isinstance(value, jax.core.Tracer):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
            raise ValueError(
                f"{what}: {name} must be an integer scalar, got a traced array of shape "
                f"{value.shape} and dtype {value.dtype}."
            )
        return value
    if (
        hasattr(value, "dtype")
        and jnp.ndim(value) == 0
        and jnp.issubdtype(value.dtype, jnp.integer)
    ):
        value = int(value)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what}: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_probability(name: str, value: Any, what: str, *, allow_one: bool = False) -> None:
    """Raises ``ValueError`` unless ``0 <= value < 1`` (``<= 1`` with ``allow_one``).

    Arrays pass unchecked (``optax.inject_hyperparams`` calls factories with traced values).
    """
    if hasattr(value, "dtype") and not isinstance(value, numbers.Real):
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{what}: {name} must be a number, got {value!r}.")
    ok = 0 <= value <= 1 if allow_one else 0 <= value < 1
    if not ok:
        raise ValueError(
            f"{what}: {name} must be in [0, {'1]' if allow_one else '1)'}, got {value!r}."
        )


def check_prng_key(name: str, value: Any, what: str) -> None:
    """Raises ``ValueError`` unless ``value`` is one PRNG key: a typed key (``jax.random.key``) of
    shape ``()``, or a raw ``uint32`` key of shape ``(2,)`` (``jax.random.PRNGKey``)."""
    dtype, shape = getattr(value, "dtype", None), tuple(getattr(value, "shape", ()))
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    if not ((typed and shape == ()) or (dtype == jnp.uint32 and shape == (2,))):
        got = f"an array of shape {shape} and dtype {dtype}" if dtype is not None else repr(value)
        raise ValueError(
            f"{what}: {name} must be one PRNG key (jax.random.key(seed): shape (), or a raw "
            f"uint32 key of shape (2,)), got {got}."
        )


def check_bool(name: str, value: Any, what: str) -> None:
    """Raises ``ValueError`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{what}: {name} must be True or False, got {value!r}.")
