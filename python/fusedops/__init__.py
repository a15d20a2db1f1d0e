"""fusedops: fused SIMD/OpenMP CPU kernels for the training inner loop, from NumPy.

Functional, in-place optimizer steps (``sgd_step``, ``adam_step``, ``adamw_step``, and
the family: ``adagrad_step``, ``rmsprop_step``, ``adamax_step``, ``nadam_step``,
``radam_step``, ``lion_step``, ``lamb_step``, ``lars_step``), global gradient norms and
clipping, batch norm (fused, and split into statistics and elementwise pieces), and the
runtime controls. See ``fusedops.optim`` for optimizer classes (and
``fusedops.optim.lr_scheduler``) and ``fusedops.nn`` for the BatchNorm layer.
"""

import os as _os


def _load_native() -> object:
    """Imports the native module with a short OpenMP spin-wait.

    libgomp's default lets idle workers busy-wait for milliseconds after each parallel
    region; in a training loop those spinning threads take the cores NumPy (and its BLAS)
    needs next, and a step can run 10x slower on a small machine. Unless the user chose a
    policy (OMP_WAIT_POLICY or GOMP_SPINCOUNT), workers spin briefly, then sleep. libgomp
    reads this once, when it is loaded, so it applies only if fusedops loads it first;
    the variable is removed again so child processes are unaffected.
    """
    chosen = "OMP_WAIT_POLICY" in _os.environ or "GOMP_SPINCOUNT" in _os.environ
    if not chosen:
        _os.environ["GOMP_SPINCOUNT"] = "1000"
    try:
        from . import _core
    finally:
        if not chosen:
            del _os.environ["GOMP_SPINCOUNT"]
    return _core


_load_native()

from ._core import (  # noqa: E402
    __version__,
    adagrad_step,
    adam_step,
    adamax_step,
    adamw_step,
    all_finite,
    available_isas,
    build_info,
    clip_grad_norm,
    get_num_threads,
    grad_norm,
    lamb_step,
    lars_step,
    lion_step,
    nadam_step,
    radam_step,
    rmsprop_step,
    set_num_threads,
    sgd_step,
    simd_isa,
)

from typing import TYPE_CHECKING as _TYPE_CHECKING  # noqa: E402

if _TYPE_CHECKING:
    from ml_dtypes import bfloat16 as bfloat16  # the NumPy bfloat16 of JAX and TensorFlow

from ._batch_norm import (  # noqa: E402
    batch_norm_backward,
    batch_norm_backward_elemt,
    batch_norm_backward_reduce,
    batch_norm_combine_stats,
    batch_norm_elemt,
    batch_norm_forward,
    batch_norm_stats,
)

from . import distributed
from . import nn
from . import optim

__all__ = [
    "__version__",
    "adagrad_step",
    "adam_step",
    "adamax_step",
    "adamw_step",
    "all_finite",
    "available_isas",
    "batch_norm_backward",
    "batch_norm_backward_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_combine_stats",
    "batch_norm_elemt",
    "batch_norm_forward",
    "batch_norm_stats",
    "bfloat16",
    "build_info",
    "clip_grad_norm",
    "distributed",
    "get_num_threads",
    "grad_norm",
    "lamb_step",
    "lars_step",
    "lion_step",
    "nadam_step",
    "nn",
    "optim",
    "radam_step",
    "rmsprop_step",
    "set_num_threads",
    "sgd_step",
    "simd_isa",
]


if not _TYPE_CHECKING:  # type checkers see the import above, and no module __getattr__
    # (one would type every misspelt attribute of fusedops as object instead of an error)
    def __getattr__(name: str) -> object:
        """``fusedops.bfloat16`` is ``ml_dtypes.bfloat16``, imported on first use: importing
        ml_dtypes takes about a second (see ``_bfloat16``), which users of float32 and float64
        need not pay."""
        if name == "bfloat16":
            from ._bfloat16 import scalar_type

            value = globals()["bfloat16"] = scalar_type()
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> "list[str]":
        return sorted(set(globals()) | {"bfloat16"})
