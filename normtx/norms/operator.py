"""Induced operator norms of a Flax kernel ``K`` (``x -> x K``, shape ``(d_in, d_out)``).

=================  =========================  =====================  ==============================
norm               ‖K‖                        dual ‖G‖†              dualize(G)
=================  =========================  =====================  ==============================
``spectral()``     σ_max                      tr Σ (nuclear)         U Vᵀ
``rms_to_rms()``   √(d_in/d_out) σ_max        √(d_out/d_in) tr Σ     √(d_out/d_in) U Vᵀ
``schatten(p)``    ‖σ‖_p                      ‖σ‖_q                  U diag(lmo_p(σ)) Vᵀ
``l1_to_lp(p)``    max_j ‖K[j,:]‖_p           Σ_j ‖G[j,:]‖_q         row j -> lmo_p(G[j,:])
``l1_to_rms()``    max_j ‖K[j,:]‖₂/√d_out     √d_out Σ_j ‖G[j,:]‖₂   row j -> √d_out G[j,:]/‖G[j,:]‖₂
``lp_to_linf(p)``  max_i ‖K[:,i]‖_q           Σ_i ‖G[:,i]‖_p         column i -> lmo_q(G[:,i])
=================  =========================  =====================  ==============================

(``G = U Σ Vᵀ``; q is the dual exponent of p.) The row and column forms are anthology Prop. 8
written for ``K = Wᵀ``: a column of ``W`` is a row of ``K``. Each norm takes dimension numbers
``fan_in_axes``/``fan_out_axes``; without them only a 2-D leaf is accepted. Every other axis is a
batch axis: the leaf's norm is the max over its matrices and the dual the sum.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from normtx.dims import DimensionNumbers, as_matrices, normalize_axes
from normtx.linalg import PolarMethod, check_polar_method, polar, singular_values, thresholded_svd
from normtx.norms._kernels import dual_exponent, lmo, pnorm, validate_p
from normtx.norms.base import Inverse, Norm

__all__ = [
    "L1ToLp",
    "L1ToRms",
    "LpToLinf",
    "OperatorNorm",
    "RmsToRms",
    "Schatten",
    "Spectral",
    "l1_to_lp",
    "l1_to_rms",
    "lp_to_linf",
    "rms_to_rms",
    "schatten",
    "spectral",
]


def _axes(axes) -> tuple[int, ...] | None:
    if axes is None:
        return None
    if isinstance(axes, int):
        return (axes,)
    return tuple(int(a) for a in axes)


@dataclasses.dataclass(frozen=True)
class OperatorNorm(Norm):
    """A norm of each matrix ``(d_in, d_out)`` of a leaf, as picked out by its dimension numbers."""

    fan_in_axes: tuple[int, ...] | None = None
    fan_out_axes: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "fan_in_axes", _axes(self.fan_in_axes))
        object.__setattr__(self, "fan_out_axes", _axes(self.fan_out_axes))
        if (self.fan_in_axes is None) != (self.fan_out_axes is None):
            raise ValueError(
                f"norm {self.name}: give both fan_in_axes and fan_out_axes or neither, got "
                f"fan_in_axes={self.fan_in_axes}, fan_out_axes={self.fan_out_axes}."
            )

    def dims(self, shape: tuple[int, ...], path: str = "<leaf>") -> DimensionNumbers:
        """The resolved dimension numbers for a leaf of ``shape`` (a ``ValueError`` if none fit)."""
        return normalize_axes(
            shape, self.fan_in_axes, self.fan_out_axes, what=f"norm {self.name}", path=path
        )

    def _check_shape(self, shape, path):
        self.dims(shape, path)

    def _slices(self, x: jax.Array, path: str) -> tuple[jax.Array, Inverse]:
        return as_matrices(x, self.dims(x.shape, path))

    def _factor(self, d_in: int, d_out: int) -> float:
        """``‖K‖ = factor · base(K)``; the dual divides by it and so does ``dualize``."""
        del d_in, d_out
        return 1.0


@dataclasses.dataclass(frozen=True)
class _MaxOverGroups(OperatorNorm):
    """``factor · max_groups ‖group‖_r`` where the groups are the rows or the columns of ``K``."""

    # Axis of a (B, d_in, d_out) batch reduced *within* a group: -1 for rows K[j, :],
    # -2 for columns K[:, i].
    _within: ClassVar[int]

    @abc.abstractmethod
    def _r(self) -> float:
        """Exponent of the ℓr norm within each group."""

    def _norms(self, s):
        f = self._factor(s.shape[1], s.shape[2])
        return f * jnp.max(pnorm(s, self._r(), axis=self._within), axis=-1)

    def _duals(self, s):
        f = self._factor(s.shape[1], s.shape[2])
        return jnp.sum(pnorm(s, dual_exponent(self._r()), axis=self._within), axis=-1) / f

    def _directions(self, s):
        return lmo(s, self._r(), axis=self._within) / self._factor(s.shape[1], s.shape[2])


@dataclasses.dataclass(frozen=True)
class _MaxOverGroupsP(_MaxOverGroups):
    """A ``_MaxOverGroups`` norm with an exponent ``p``, named ``<factory>(p)``."""

    p: float = 2.0
    _factory: ClassVar[str]

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "p", validate_p(self.p, self._factory))

    @property
    def name(self) -> str:
        return f"{self._factory}({self.p:g})"


@dataclasses.dataclass(frozen=True)
class L1ToLp(_MaxOverGroupsP):
    """ℓ1 -> ℓp: the largest ℓp norm of a row of ``K`` (of a column of ``W = Kᵀ``), Prop. 8."""

    _factory: ClassVar[str] = "l1_to_lp"
    _within: ClassVar[int] = -1

    def _r(self) -> float:
        return self.p


@dataclasses.dataclass(frozen=True)
class L1ToRms(_MaxOverGroups):
    """ℓ1 -> RMS: ``max_j ‖K[j, :]‖₂ / √d_out``, the embedding norm (one-hot inputs)."""

    name: ClassVar[str] = "l1_to_rms"
    _within: ClassVar[int] = -1

    def _r(self) -> float:
        return 2.0

    def _factor(self, d_in, d_out):
        return 1.0 / math.sqrt(d_out)


@dataclasses.dataclass(frozen=True)
class LpToLinf(_MaxOverGroupsP):
    """ℓp -> ℓ∞: the largest ℓq norm of a column of ``K`` (of a row of ``W = Kᵀ``), Prop. 8."""

    _factory: ClassVar[str] = "lp_to_linf"
    _within: ClassVar[int] = -2

    def _r(self) -> float:
        return dual_exponent(self.p)


def _callable_name(fn) -> str:
    """``newton_schulz`` for ``functools.partial(newton_schulz, steps=8)`` and plain functions."""
    return getattr(getattr(fn, "func", fn), "__name__", type(fn).__name__)


@dataclasses.dataclass(frozen=True)
class Schatten(OperatorNorm):
    """Schatten-p: the ℓp norm of the singular values; ``dualize = U diag(lmo_p(σ)) Vᵀ``.

    ``p = 2`` is the Frobenius norm (computed entrywise, no SVD); ``p = inf`` is the spectral norm,
    whose ``dualize`` is the polar factor ``U Vᵀ`` computed by ``polar`` (exact SVD by default, or
    any method of ``normtx.linalg.polar``). ``norm`` uses exact singular values (float32 SVD:
    relative accuracy about 1e-6). ``dual_norm`` does too with ``polar='svd'``; with another polar
    backend at p = inf it is ``<G, polar(G)>`` — the nuclear norm up to that backend's accuracy
    (5 Polar Express steps: within a few per cent), at matmul cost instead of an SVD.
    """

    p: float = math.inf
    polar: PolarMethod = "svd"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "p", validate_p(self.p, type(self).__name__.lower()))
        check_polar_method(self.polar, f"norm {type(self).__name__.lower()}")

    _base_name: ClassVar[str] = ""

    @property
    def name(self) -> str:
        """``schatten(p)``, ``spectral`` or ``rms_to_rms``, with the polar backend if not SVD."""
        base = self._base_name or f"schatten({self.p:g})"
        if self.polar == "svd" or not math.isinf(self.p):
            return base
        method = self.polar if isinstance(self.polar, str) else _callable_name(self.polar)
        return f"{base}[{method}]"

    def _norms(self, s):
        f = self._factor(s.shape[1], s.shape[2])
        if self.p == 2:
            return f * pnorm(s.reshape(s.shape[0], -1), 2.0)
        return f * pnorm(singular_values(s), self.p)

    def _duals(self, s):
        f = self._factor(s.shape[1], s.shape[2])
        if self.p == 2:
            return pnorm(s.reshape(s.shape[0], -1), 2.0) / f
        if math.isinf(self.p) and self.polar != "svd":
            # tr Σ = <S, U Vᵀ>: with a fast polar backend the dual is read off the polar factor
            # (matmuls, no SVD) and is the linear decrease the step really makes.
            return jnp.sum(s * polar(s, method=self.polar), axis=(1, 2)) / f
        return pnorm(singular_values(s), dual_exponent(self.p)) / f

    def _polar_plan(self, shape, path):
        if not math.isinf(self.p):
            return None
        dims = self.dims(shape, path)
        d_in = math.prod(shape[a] for a in dims.fan_in_axes)
        d_out = math.prod(shape[a] for a in dims.fan_out_axes)
        return dims, self.polar, self._factor(d_in, d_out)

    def _directions(self, s):
        f = self._factor(s.shape[1], s.shape[2])
        if self.p == 2:
            return lmo(s.reshape(s.shape[0], -1), 2.0).reshape(s.shape) / f
        if math.isinf(self.p):
            return polar(s, method=self.polar).astype(s.dtype) / f
        u, sigma, vh = thresholded_svd(s)
        w = lmo(sigma, self.p, axis=-1)
        return (u * w[..., None, :]) @ vh / f


@dataclasses.dataclass(frozen=True)
class Spectral(Schatten):
    """Spectral ℓ2 -> ℓ2: σ_max; dual tr Σ; dualize ``U Vᵀ`` (Shampoo sans accumulation, Prop. 5)."""

    p: float = dataclasses.field(default=math.inf, init=False)
    _base_name: ClassVar[str] = "spectral"


@dataclasses.dataclass(frozen=True)
class RmsToRms(Schatten):
    """RMS -> RMS: ``√(d_in/d_out) σ_max``; dualize ``√(d_out/d_in) U Vᵀ`` (linear layers)."""

    p: float = dataclasses.field(default=math.inf, init=False)
    _base_name: ClassVar[str] = "rms_to_rms"

    def _factor(self, d_in, d_out):
        return math.sqrt(d_in / d_out)


AxesArg = tuple[int, ...] | int | None


def spectral(
    *, fan_in_axes: AxesArg = None, fan_out_axes: AxesArg = None, polar: PolarMethod = "svd"
) -> Spectral:
    """Spectral norm σ_max; dual tr Σ; dualize ``U Vᵀ`` (anthology Prop. 5)."""
    return Spectral(fan_in_axes=fan_in_axes, fan_out_axes=fan_out_axes, polar=polar)


def rms_to_rms(
    *, fan_in_axes: AxesArg = None, fan_out_axes: AxesArg = None, polar: PolarMethod = "svd"
) -> RmsToRms:
    """RMS -> RMS operator norm ``√(d_in/d_out) σ_max`` of linear layers (anthology epilogue)."""
    return RmsToRms(fan_in_axes=fan_in_axes, fan_out_axes=fan_out_axes, polar=polar)


def schatten(
    p: float,
    *,
    fan_in_axes: AxesArg = None,
    fan_out_axes: AxesArg = None,
    polar: PolarMethod = "svd",
) -> Schatten:
    """Schatten-p norm ``‖σ‖_p`` (Frobenius at p = 2, spectral at p = inf, nuclear at p = 1)."""
    return Schatten(p=p, fan_in_axes=fan_in_axes, fan_out_axes=fan_out_axes, polar=polar)


def l1_to_lp(p: float, *, fan_in_axes: AxesArg = None, fan_out_axes: AxesArg = None) -> L1ToLp:
    """ℓ1 -> ℓp operator norm ``max_j ‖K[j, :]‖_p`` (anthology Prop. 8)."""
    return L1ToLp(p=p, fan_in_axes=fan_in_axes, fan_out_axes=fan_out_axes)


def l1_to_rms(*, fan_in_axes: AxesArg = None, fan_out_axes: AxesArg = None) -> L1ToRms:
    """ℓ1 -> RMS operator norm ``max_j ‖K[j, :]‖₂/√d_out``: embeddings (anthology epilogue)."""
    return L1ToRms(fan_in_axes=fan_in_axes, fan_out_axes=fan_out_axes)


def lp_to_linf(p: float, *, fan_in_axes: AxesArg = None, fan_out_axes: AxesArg = None) -> LpToLinf:
    """ℓp -> ℓ∞ operator norm ``max_i ‖K[:, i]‖_q`` (anthology Prop. 8)."""
    return LpToLinf(p=p, fan_in_axes=fan_in_axes, fan_out_axes=fan_out_axes)
