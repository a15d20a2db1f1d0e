# Type stubs of the native module, one section per area.
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Float = np.float32 | np.float64

def __getattr__(name: str) -> Any: ...  # areas without a section yet

# Batch norm

def batch_norm_forward(
    x: NDArray[_Float],
    weight: NDArray[_Float] | None = None,
    bias: NDArray[_Float] | None = None,
    running_mean: NDArray[_Float] | None = None,
    running_var: NDArray[_Float] | None = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    out: NDArray[_Float] | None = None,
) -> tuple[NDArray[_Float], NDArray[_Float], NDArray[_Float]]: ...
def batch_norm_backward(
    dy: NDArray[_Float],
    x: NDArray[_Float],
    weight: NDArray[_Float] | None,
    save_mean: NDArray[_Float],
    save_invstd: NDArray[_Float],
    *,
    training: bool = True,
    channel_axis: int = 1,
    out: NDArray[_Float] | None = None,
) -> tuple[NDArray[_Float], NDArray[_Float] | None, NDArray[_Float] | None]: ...
