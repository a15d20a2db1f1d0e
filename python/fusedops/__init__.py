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
