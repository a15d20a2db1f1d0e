"""Type stubs of the native module (the public names are re-exported by fusedops)."""

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[np.floating[Any]]
_Arrays = Union[_Array, Sequence[_Array]]

__version__: str

# ---- runtime
def simd_isa() -> str: ...
def available_isas() -> list[str]: ...
def _set_isa(name: str) -> None: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def build_info() -> dict[str, Any]: ...

# ---- optimizer steps
def sgd_step(
    params: _Arrays,
    grads: _Arrays,
    momentum_buffers: Optional[_Arrays] = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    l1: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    first_step: bool = False,
    grad_scale: float = 1.0,
    param_copies: Optional[_Arrays] = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None: ...
def adam_step(
    params: _Arrays,
    grads: _Arrays,
    exp_avgs: _Arrays,
    exp_avg_sqs: _Arrays,
    *,
    step: int,
    lr: float = 1e-3,
    betas: Tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    l1: float = 0.0,
    decoupled_weight_decay: bool = False,
    amsgrad: bool = False,
    max_exp_avg_sqs: Optional[_Arrays] = None,
    maximize: bool = False,
    grad_scale: float = 1.0,
    param_copies: Optional[_Arrays] = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None: ...
def adamw_step(
    params: _Arrays,
    grads: _Arrays,
    exp_avgs: _Arrays,
    exp_avg_sqs: _Arrays,
    *,
    step: int,
    lr: float = 1e-3,
    betas: Tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    l1: float = 0.0,
    amsgrad: bool = False,
    max_exp_avg_sqs: Optional[_Arrays] = None,
    maximize: bool = False,
    grad_scale: float = 1.0,
    param_copies: Optional[_Arrays] = None,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> None: ...

# ---- gradient norms
def grad_norm(grads: _Arrays, norm_type: float = 2.0) -> float: ...
def clip_grad_norm(grads: _Arrays, max_norm: float, norm_type: float = 2.0) -> float: ...
def all_finite(grads: _Arrays) -> bool: ...
def _bandwidth_probe(a: _Array, b: _Array, factor: float) -> None: ...

# ---- optimizer classes (native side)
class _OptimizerPlan:
    def __init__(self, name: str, params: list[_Array], groups: Sequence[int],
                 states: Sequence[list[Optional[_Array]]],
                 copies: Optional[Sequence[Optional[_Array]]] = None,
                 remainders: Optional[Sequence[Optional[_Array]]] = None,
                 stochastic_rounding: bool = False, seed: int = 0) -> None: ...
    def step_sgd(self, grads: Sequence[_Array], groups: Sequence[Tuple[Any, ...]], grad_scale: float,
                 max_grad_norm: Optional[float], skip_nonfinite: bool, step: int = 0) -> bool: ...
    def step_adam(self, grads: Sequence[_Array], groups: Sequence[Tuple[Any, ...]], step: int, decoupled: bool,
                  grad_scale: float, max_grad_norm: Optional[float], skip_nonfinite: bool) -> bool: ...
    def __len__(self) -> int: ...

def _check_sgd_group(where: str, group: Tuple[Any, ...]) -> None: ...
def _check_adam_group(where: str, group: Tuple[Any, ...]) -> None: ...

# ---- batch norm
def batch_norm_forward(
    x: _Array,
    weight: Optional[_Array] = None,
    bias: Optional[_Array] = None,
    running_mean: Optional[_Array] = None,
    running_var: Optional[_Array] = None,
    *,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    out: Optional[_Array] = None,
) -> Tuple[_Array, _Array, _Array]: ...
def batch_norm_backward(
    dy: _Array,
    x: _Array,
    weight: Optional[_Array],
    save_mean: _Array,
    save_invstd: _Array,
    *,
    training: bool = True,
    channel_axis: int = 1,
    out: Optional[_Array] = None,
) -> Tuple[_Array, Optional[_Array], Optional[_Array]]: ...
