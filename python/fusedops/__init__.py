"""fusedops: fused SIMD/OpenMP CPU kernels for the training inner loop, from NumPy.

Functional, in-place optimizer steps (``sgd_step``, ``adam_step``, ``adamw_step``),
global gradient norms and clipping, batch norm, and the runtime controls. See
``fusedops.optim`` for optimizer classes and ``fusedops.nn`` for the BatchNorm layer.
"""

from ._core import (
    __version__,
    adam_step,
    adamw_step,
    all_finite,
    available_isas,
    batch_norm_backward,
    batch_norm_forward,
    build_info,
    clip_grad_norm,
    get_num_threads,
    grad_norm,
    set_num_threads,
    sgd_step,
    simd_isa,
)

from . import nn  # noqa: E402
from . import optim  # noqa: E402

__all__ = [
    "__version__",
    "adam_step",
    "adamw_step",
    "all_finite",
    "available_isas",
    "batch_norm_backward",
    "batch_norm_forward",
    "build_info",
    "clip_grad_norm",
    "get_num_threads",
    "grad_norm",
    "nn",
    "optim",
    "set_num_threads",
    "sgd_step",
    "simd_isa",
]
