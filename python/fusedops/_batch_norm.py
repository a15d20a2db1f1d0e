"""Batch norm: the fused forward and backward, and the split pieces they are made of.

The statistics (mean, invstd, the gradient sums) are float64 (C,) arrays whatever the
dtype of ``x``: a float32 mean of 1e4 with a spread of 1e-2 rounded to float32 would be off
by 5% of the spread, and the backward would carry that into dweight. Calls that read
statistics also accept arrays of the parameter dtype.

Dtypes: ``x`` is float32, float64, bfloat16 (``fusedops.bfloat16``) or float16; ``dy``, ``y``,
``dx`` and ``out`` have ``x``'s dtype. Per-channel arrays (weight, bias, running statistics,
and the returned dweight and dbias) have the parameter dtype: ``x``'s for float32 and
float64, float32 for 16-bit ``x``, whose math then runs in float32 (sums: float32 runs of
at most 32 values per lane, around a value of each channel, then float64; about 1e-7 of
the spread) and whose results are rounded to nearest even, as torch's mixed-precision
batch norm takes bfloat16 input with float32 parameters.

These are thin wrappers: each passes its arguments positionally to a native call, which
validates them all (TypeError/ValueError naming the argument, nothing written on error)
and runs the kernels with the GIL released.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _core

__all__ = [
    "batch_norm_backward",
    "batch_norm_backward_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_combine_stats",
    "batch_norm_elemt",
    "batch_norm_forward",
    "batch_norm_stats",
]

Array = npt.NDArray[Any]
Float64 = npt.NDArray[np.float64]

_forward = _core._batch_norm_forward
_backward = _core._batch_norm_backward
_stats = _core._batch_norm_stats
_combine_stats = _core._batch_norm_combine_stats
_elemt = _core._batch_norm_elemt
_backward_reduce = _core._batch_norm_backward_reduce
_backward_elemt = _core._batch_norm_backward_elemt


def batch_norm_forward(x: Array, weight: Optional[Array] = None, bias: Optional[Array] = None,
                       running_mean: Optional[Array] = None,
                       running_var: Optional[Array] = None, *, training: bool = True,
                       momentum: float = 0.1, eps: float = 1e-5, channel_axis: int = 1,
                       out: Optional[Array] = None) -> Tuple[Array, Float64, Float64]:
    """Batch norm forward: returns ``(y, save_mean, save_invstd)``.

    ``x`` is ``(N, C, *spatial)`` (``channel_axis=1``) or ``(N, *spatial, C)``
    (``channel_axis=-1``), float32, float64, bfloat16 or float16; ``weight``, ``bias`` and
    the running statistics are ``(C,)`` arrays of the parameter dtype (``x``'s, float32
    for 16-bit ``x``). ``y = (x - mean) * invstd * weight + bias``.
    In training, mean and the biased variance are the batch's and the running statistics
    (when given) are updated in place with the unbiased variance; with
    ``training=False`` the running statistics are used. ``save_mean`` and
    ``save_invstd = 1 / sqrt(var + eps)`` are float64 ``(C,)`` arrays: pass them to
    :func:`batch_norm_backward`. ``out`` (the shape and dtype of ``x``) receives ``y``.
    """
    return _forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                    channel_axis, out)


def batch_norm_backward(dy: Array, x: Array, weight: Optional[Array], save_mean: Array,
                        save_invstd: Array, *, training: bool = True, channel_axis: int = 1,
                        out: Optional[Array] = None
                        ) -> Tuple[Array, Optional[Array], Optional[Array]]:
    """Batch norm backward: returns ``(dx, dweight, dbias)``.

    ``save_mean`` and ``save_invstd`` are what :func:`batch_norm_forward` returned (float64;
    arrays of the parameter dtype are accepted too). ``dbias = sum(dy)``,
    ``dweight = sum(dy * xhat)`` with ``xhat = (x - mean) * invstd`` (the parameter dtype, None
    when ``weight`` is None); ``dx = weight * invstd * (dy - dbias / M - xhat * dweight / M)``
    in training (M values per channel), ``dy * weight * invstd`` otherwise.
    """
    return _backward(dy, x, weight, save_mean, save_invstd, training, channel_axis, out)


def batch_norm_stats(x: Array, *, channel_axis: int = 1) -> Tuple[Float64, Float64]:
    """Per-channel ``(mean, m2)`` of ``x``, float64 ``(C,)`` arrays,
    ``m2 = sum((x - mean)**2)``. A channel without values gives 0 and 0."""
    return _stats(x, channel_axis)


def batch_norm_combine_stats(means: Union[Float64, Sequence[Float64]],
                             m2s: Union[Float64, Sequence[Float64]],
                             counts: Union[Array, Sequence[float]]
                             ) -> Tuple[Float64, Float64, Float64]:
    """Chan's parallel combine of per-piece statistics: returns ``(mean, var, m2)``.

    ``means`` and ``m2s`` are float64 ``(pieces, C)`` arrays or lists of float64 ``(C,)``
    arrays (what :func:`batch_norm_stats` returns per piece); ``counts`` gives each
    piece's values per channel (numbers >= 0, not all 0; an int or float array or a
    list). The pieces are folded in the given order (the result does not depend on
    anything else), pieces with count 0 are skipped, and one piece comes back as it is.
    ``var = m2 / sum(counts)`` is the biased variance.
    """
    return _combine_stats(means, m2s, counts)


def batch_norm_elemt(x: Array, weight: Optional[Array], bias: Optional[Array], mean: Array,
                     invstd: Array, *, channel_axis: int = 1,
                     out: Optional[Array] = None) -> Array:
    """``y = (x - mean) * invstd * weight + bias`` per channel (``weight``/``bias`` may be
    None); ``mean`` and ``invstd`` are float64 ``(C,)`` arrays (or of the parameter dtype)."""
    return _elemt(x, weight, bias, mean, invstd, channel_axis, out)


def batch_norm_backward_reduce(dy: Array, x: Array, mean: Array, invstd: Array, *,
                               channel_axis: int = 1) -> Tuple[Float64, Float64]:
    """Per-channel ``(sum_dy, sum_dy_xhat)``, float64 ``(C,)`` arrays,
    ``xhat = (x - mean) * invstd``: dbias and dweight of an affine layer. Summed over the
    pieces of a batch, they feed :func:`batch_norm_backward_elemt`."""
    return _backward_reduce(dy, x, mean, invstd, channel_axis)


def batch_norm_backward_elemt(dy: Array, x: Array, weight: Optional[Array], mean: Array,
                              invstd: Array, sum_dy: Array, sum_dy_xhat: Array,
                              count: float, *, channel_axis: int = 1,
                              out: Optional[Array] = None) -> Array:
    """Training-mode ``dx = weight * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat /
    count)`` with ``xhat = (x - mean) * invstd``; ``count`` is the number of values per
    channel the sums were taken over (every rank's, for a synchronized batch norm)."""
    return _backward_elemt(dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat, count,
                           channel_axis, out)
