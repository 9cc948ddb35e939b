"""Vector norms: the whole leaf (or each slice along ``batch_axes``) is one vector.

======================  ===============  ===========  =======================  ==================
norm                    ‖x‖              dual ‖g‖†    dualize(g)               optimizer
======================  ===============  ===========  =======================  ==================
``l2()``/``frobenius``  ‖x‖₂             ‖g‖₂         g/‖g‖₂                   normalized SGD
``linf()``              max|x|           ‖g‖₁         sign(g)                  sign descent, Adam
``l1()``                Σ|x|             max|g|       signed one-hot           coordinate descent
``lp(p)``               ‖x‖_p            ‖g‖_q        lmo_p(g)
``rms()``               ‖x‖₂/√n          √n‖g‖₂       √n g/‖g‖₂                biases, gains
======================  ===============  ===========  =======================  ==================
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax

from normtx.dims import flatten_axes
from normtx.norms._kernels import dual_exponent, lmo, pnorm, validate_p
from normtx.norms.base import Inverse, Norm

__all__ = ["Frobenius", "Lp", "Rms", "VectorNorm", "frobenius", "l1", "l2", "linf", "lp", "rms"]


@dataclasses.dataclass(frozen=True)
class VectorNorm(Norm):
    """A scaled ℓp norm ``factor(n) · ‖x‖_p`` of each slice along ``batch_axes`` (max over slices)."""

    batch_axes: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "batch_axes", tuple(int(a) for a in self.batch_axes))

    # Subclasses define ``p``: a field (``Lp``) or a class constant (``Rms``, ``Frobenius``).
    p: ClassVar[float]

    def _factor(self, n: int) -> float:
        del n
        return 1.0

    def _check_shape(self, shape, path):
        for a in self.batch_axes:
            if not -len(shape) <= a < len(shape):
                raise ValueError(
                    f"norm {self.name}: batch axis {a} is out of range for leaf {path!r} of "
                    f"shape {shape}."
                )

    def _slices(self, x: jax.Array, path: str) -> tuple[jax.Array, Inverse]:
        del path
        batch = {a % x.ndim for a in self.batch_axes} if x.ndim else set()
        return flatten_axes(x, [tuple(a for a in range(x.ndim) if a not in batch)])

    def _norms(self, s):
        return self._factor(s.shape[-1]) * pnorm(s, self.p)

    def _duals(self, s):
        return pnorm(s, dual_exponent(self.p)) / self._factor(s.shape[-1])

    def _directions(self, s):
        return lmo(s, self.p) / self._factor(s.shape[-1])


@dataclasses.dataclass(frozen=True)
class Lp(VectorNorm):
    """The ℓp norm of the whole leaf (or of each slice along ``batch_axes``)."""

    p: float = 2.0  # type: ignore[misc]

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "p", validate_p(self.p, "lp"))

    @property
    def name(self) -> str:
        if self.p == 1:
            return "l1"
        if self.p == 2:
            return "l2"
        if math.isinf(self.p):
            return "linf"
        return f"lp({self.p:g})"


@dataclasses.dataclass(frozen=True)
class Frobenius(VectorNorm):
    """The Frobenius norm ‖x‖_F = ‖vec x‖₂ (Schatten-2); per matrix slice with ``batch_axes``."""

    p: ClassVar[float] = 2.0
    name: ClassVar[str] = "frobenius"


@dataclasses.dataclass(frozen=True)
class Rms(VectorNorm):
    """The RMS norm ‖x‖₂/√n (n entries per slice): the natural norm of biases and gains."""

    p: ClassVar[float] = 2.0
    name: ClassVar[str] = "rms"

    def _factor(self, n: int) -> float:
        return 1.0 / math.sqrt(n)


def l1(*, batch_axes: tuple[int, ...] = ()) -> Lp:
    """ℓ1: ``Σ|x|``; dual ``max|g|``; dualize = signed one-hot at the largest ``|g|``."""
    return Lp(p=1.0, batch_axes=batch_axes)


def l2(*, batch_axes: tuple[int, ...] = ()) -> Lp:
    """ℓ2: ``‖x‖₂``; self-dual; dualize = ``g/‖g‖₂`` (normalized gradient descent)."""
    return Lp(p=2.0, batch_axes=batch_axes)


def linf(*, batch_axes: tuple[int, ...] = ()) -> Lp:
    """ℓ∞: ``max|x|``; dual ``‖g‖₁``; dualize = ``sign(g)`` (sign descent, anthology Prop. 2)."""
    return Lp(p=math.inf, batch_axes=batch_axes)


def lp(p: float, *, batch_axes: tuple[int, ...] = ()) -> Lp:
    """ℓp for ``p >= 1``: dual ℓq (1/p + 1/q = 1); dualize = ``sign(g)|g|^{q-1}/‖g‖_q^{q-1}``."""
    return Lp(p=p, batch_axes=batch_axes)


def frobenius(*, batch_axes: tuple[int, ...] = ()) -> Frobenius:
    """Frobenius (Schatten-2): ``‖x‖_F``; self-dual; dualize = ``g/‖g‖_F`` (SGD, Table 1)."""
    return Frobenius(batch_axes=batch_axes)


def rms(*, batch_axes: tuple[int, ...] = ()) -> Rms:
    """RMS: ``‖x‖₂/√n``; dual ``√n‖g‖₂``; dualize = ``√n g/‖g‖₂`` (biases and gains)."""
    return Rms(batch_axes=batch_axes)
