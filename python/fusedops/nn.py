"""Layers built on the fused kernels, for hand-written NumPy training loops."""

from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ._bfloat16 import as_dtype, is_bfloat16

from . import distributed
from ._batch_norm import batch_norm_backward, batch_norm_forward

__all__ = ["BatchNorm"]

_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.float16))  # and bfloat16


class BatchNorm:
    """Batch normalization over the channel axis, as ``torch.nn.BatchNorm{1,2,3}d``.

    ``x`` is ``(N, C, *spatial)`` with ``channel_axis=1`` or ``(N, *spatial, C)`` with
    ``channel_axis=-1``, of the layer's ``dtype``: float32, float64, or a 16-bit float
    (``fusedops.bfloat16``, ``numpy.float16``) with float32 parameters, running statistics
    and gradients and float32 math (``param_dtype``: float64 for float64, float32 otherwise).

    - ``forward(x, training=True)`` normalizes with the batch statistics and updates the
      running statistics (when tracked); ``training=False`` uses the running statistics,
      or the batch statistics when they are not tracked (as torch does).
    - ``backward(dy)`` returns ``dx`` for the last ``forward`` and writes the parameter
      gradients into ``grad_weight`` and ``grad_bias``.
    - ``comm=`` (a ``fusedops.distributed`` communicator or an mpi4py Comm; SyncBatchNorm):
      in training, the statistics are those of the global batch over the ranks (each
      rank's per-channel count, mean and M2, combined in rank order, so identically on
      every rank; a rank may hold 0 or 1 rows), the running variance is the global
      unbiased one, and ``backward`` sums the per-channel reductions over the ranks. The
      parameter gradients stay those of the rank's own rows, for a data-parallel optimizer
      to average like any other. Every rank must call ``forward``/``backward`` together.
      With one rank, a plain layer.

    Buffers: ``weight``, ``bias``, ``running_mean``, ``running_var``, ``grad_weight`` and
    ``grad_bias`` are allocated once and only ever updated in place, so an optimizer can
    hold ``parameters()`` and ``gradients()`` for the whole run. ``forward`` and
    ``backward`` return a new array on each call unless ``out=`` is given: a returned
    array is never overwritten behind the caller's back. A training loop that wants no
    per-step allocation passes its own ``out=`` buffers (C-contiguous, the shape and dtype
    of ``x``). ``forward`` keeps a reference to ``x`` (not a copy) for ``backward``: do not
    modify ``x`` in between. The batch statistics kept for ``backward`` are float64 (as
    ``batch_norm_forward`` returns them), so float32 inputs with a large mean and a small
    spread get gradients as accurate as float64 statistics allow.
    """

    num_features: int
    eps: float
    momentum: float
    affine: bool
    track_running_stats: bool
    channel_axis: int
    dtype: "np.dtype[Any]"
    param_dtype: "np.dtype[Any]"
    weight: Optional[npt.NDArray[Any]]
    bias: Optional[npt.NDArray[Any]]
    grad_weight: Optional[npt.NDArray[Any]]
    grad_bias: Optional[npt.NDArray[Any]]
    running_mean: Optional[npt.NDArray[Any]]
    running_var: Optional[npt.NDArray[Any]]
    _saved: Optional[Tuple[Any, ...]]

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 channel_axis: int = 1, dtype: npt.DTypeLike = np.float32,
                 comm: Any = None) -> None:
        if not isinstance(num_features, numbers.Integral) or isinstance(num_features, bool):
            raise TypeError(f"BatchNorm: num_features must be an int, got "
                            f"{type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"BatchNorm: num_features must be >= 1, got {num_features}")
        if channel_axis not in (1, -1):
            raise ValueError(f"BatchNorm: channel_axis must be 1 or -1, got {channel_axis!r}")
        dtype = as_dtype(dtype)
        if dtype not in _DTYPES and not is_bfloat16(dtype):
            raise TypeError(f"BatchNorm: dtype must be float32, float64, bfloat16 or float16, "
                            f"got {dtype}")
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"BatchNorm: eps must be finite and >= 0, got {eps!r}")
        if not (np.isfinite(momentum) and 0 <= momentum <= 1):
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {momentum!r}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.channel_axis = channel_axis
        self.dtype = dtype
        pdt = self.param_dtype = np.dtype(np.float64 if dtype == np.float64 else np.float32)
        c = self.num_features
        self.weight = np.ones(c, pdt) if affine else None
        self.bias = np.zeros(c, pdt) if affine else None
        self.grad_weight = np.zeros(c, pdt) if affine else None
        self.grad_bias = np.zeros(c, pdt) if affine else None
        self.running_mean = np.zeros(c, pdt) if track_running_stats else None
        self.running_var = np.ones(c, pdt) if track_running_stats else None
        self._saved = None  # (x, save_mean, save_invstd, batch statistics used, global count)
        # Set when training statistics are synchronized over more than one rank.
        self.comm: Optional[distributed.Communicator] = None
        if comm is not None:
            ranks = distributed.as_communicator(comm, "BatchNorm")
            self.comm = ranks if ranks.size > 1 else None

    def forward(self, x: np.ndarray, training: bool = True, *,
                out: np.ndarray | None = None) -> np.ndarray:
        """Normalizes ``x``; caches what ``backward`` needs."""
        if self.comm is not None and training:
            y, mean, invstd, count = distributed.sync_batch_norm_forward(self, self.comm, x, out)
            self._saved = (x, mean, invstd, True, count)
            return y
        self._check_dtype("x", x)
        self._check_channels(x)
        use_batch_stats = training or not self.track_running_stats
        y, save_mean, save_invstd = batch_norm_forward(
            x, self.weight, self.bias, self.running_mean, self.running_var,
            training=use_batch_stats, momentum=self.momentum, eps=self.eps,
            channel_axis=self.channel_axis, out=out)
        self._saved = (x, save_mean, save_invstd, use_batch_stats, None)
        return y

    def backward(self, dy: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """Returns ``dx`` for the last ``forward``; fills ``grad_weight`` and ``grad_bias``."""
        if self._saved is None:
            raise RuntimeError("BatchNorm.backward: call forward first")
        x, save_mean, save_invstd, use_batch_stats, global_count = self._saved
        dweight: Optional[np.ndarray]
        dbias: Optional[np.ndarray]
        if global_count is not None and self.comm is not None:
            dx, dweight, dbias = distributed.sync_batch_norm_backward(
                self, self.comm, dy, x, save_mean, save_invstd, global_count, out)
        else:
            self._check_dtype("dy", dy)
            dx, dweight, dbias = batch_norm_backward(
                dy, x, self.weight, save_mean, save_invstd, training=use_batch_stats,
                channel_axis=self.channel_axis, out=out)
        if self.grad_weight is not None and self.grad_bias is not None:
            self.grad_weight[...] = dweight
            self.grad_bias[...] = dbias
        return dx

    __call__ = forward

    def parameters(self) -> list[np.ndarray]:
        """``[weight, bias]`` (empty without affine), updated in place by optimizers."""
        if self.weight is None or self.bias is None:
            return []
        return [self.weight, self.bias]

    def gradients(self) -> list[np.ndarray]:
        """``[grad_weight, grad_bias]``, aligned with ``parameters()``."""
        if self.grad_weight is None or self.grad_bias is None:
            return []
        return [self.grad_weight, self.grad_bias]

    def _check_channels(self, x: np.ndarray) -> None:
        if not isinstance(x, np.ndarray) or x.ndim < 2:
            return  # the kernel's own check names the problem
        found = x.shape[self.channel_axis]
        if found == self.num_features:
            return
        hint = ""
        other = -1 if self.channel_axis == 1 else 1
        if x.shape[other] == self.num_features:
            layout = "(N, *spatial, C)" if other == -1 else "(N, C, *spatial)"
            hint = (f"; x looks like {layout}: build the layer with channel_axis={other}")
        raise ValueError(f"{self!r}: x has shape {x.shape}, with {found} channels on "
                         f"channel_axis={self.channel_axis}, but the layer has "
                         f"{self.num_features}{hint}")

    def _check_dtype(self, name: str, a: object) -> None:
        if isinstance(a, np.ndarray) and a.dtype != self.dtype:
            raise TypeError(f"BatchNorm: {name} has dtype {a.dtype} but the layer has dtype "
                            f"{self.dtype}")

    def __repr__(self) -> str:
        return (f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
                f"channel_axis={self.channel_axis}, dtype={self.dtype.name})")
