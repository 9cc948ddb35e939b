"""Validation shared by the transforms: hyperparameters fail at construction, not at step 1000."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_positive",
    "check_probability",
    "value_at",
]


def check_choice(name: str, value: Any, choices: tuple[str, ...], what: str) -> str:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{what}: {name} must be one of {choices}, got {value!r}.")
    return value


def check_positive(name: str, value: Any, what: str, *, allow_zero: bool = False) -> None:
    """Raises ``ValueError`` for a Python number that is not > 0 (>= 0 with ``allow_zero``).

    Arrays and schedules pass: under ``optax.inject_hyperparams`` the factory is called with traced
    values, which cannot be tested in Python.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = value >= 0 if allow_zero else value > 0
        if not ok:
            raise ValueError(
                f"{what}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}."
            )
    elif not (callable(value) or hasattr(value, "dtype")):
        raise ValueError(f"{what}: {name} must be a number, an array or a schedule, got {value!r}.")


def value_at(value: float | jax.Array | optax.Schedule | Callable, count: jax.Array) -> jax.Array:
    """A hyperparameter's value at step ``count`` (calls it if it is a schedule), as float32+."""
    v = value(count) if callable(value) else value
    return jnp.asarray(v, jnp.promote_types(jnp.result_type(v), jnp.float32))


def check_int(name: str, value: Any, what: str, *, minimum: int, optional: bool = False) -> None:
    """Raises ``ValueError`` unless ``value`` is an int ``>= minimum`` (or ``None`` if optional)."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"{what}: {name} must be an int >= {minimum}{' or None' if optional else ''}, "
            f"got {value!r}."
        )


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


def check_bool(name: str, value: Any, what: str) -> None:
    """Raises ``ValueError`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{what}: {name} must be True or False, got {value!r}.")
