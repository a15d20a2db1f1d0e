"""Type stubs of the native module (the public names are re-exported by fusedops)."""

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[np.floating[Any]]
_Arrays = Union[_Array, Sequence[_Array]]
_F64 = npt.NDArray[np.float64]

__version__: str

# ---- runtime
def simd_isa() -> str: ...
def available_isas() -> list[str]: ...
def _set_isa(name: str) -> None: ...
def _isa_forced() -> bool: ...
def _reset_isa() -> None: ...
def _worker_start_ns() -> tuple[int, int]: ...
def _set_worker_start_ns(ns: int) -> None: ...
def _hold_worker_start_ns(held: bool) -> None: ...
def _min_parallel_elements() -> int: ...
def _fused_build() -> str: ...
def _allow_avx512_bf16(allowed: bool) -> None: ...
def _set_cache_bytes(l1d: int, l2: int, last_level: int) -> None: ...
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
    step: int = 1,
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

# ---- the optimizer family (return None unless stated)
def adagrad_step(params: _Arrays, grads: _Arrays, state_sums: _Arrays, *, step: int, lr: float = 1e-2,
                 lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10, l1: float = 0.0,
                 maximize: bool = False, grad_scale: float = 1.0,
                 param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0) -> None: ...
def rmsprop_step(params: _Arrays, grads: _Arrays, square_avgs: _Arrays, grad_avgs: Optional[_Arrays] = None,
                 momentum_buffers: Optional[_Arrays] = None, *, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 l1: float = 0.0, maximize: bool = False, grad_scale: float = 1.0, step: int = 1,
                 param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0) -> None: ...
def adamax_step(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_infs: _Arrays, *, step: int,
                lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0, l1: float = 0.0, maximize: bool = False,
                grad_scale: float = 1.0, param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0) -> None: ...
def nadam_step(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, *, step: int,
               mu_product: Optional[float] = None, lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
               decoupled_weight_decay: bool = False, l1: float = 0.0, maximize: bool = False,
               grad_scale: float = 1.0, param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0,
               ) -> float: ...  # the mu product including this step
def radam_step(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, *, step: int,
               lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.0, decoupled_weight_decay: bool = False, l1: float = 0.0,
               maximize: bool = False, grad_scale: float = 1.0, param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0,
               ) -> None: ...
def lion_step(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, *, lr: float = 1e-4,
              betas: Tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, l1: float = 0.0,
              maximize: bool = False, grad_scale: float = 1.0, step: int = 1,
              param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0) -> None: ...
def lamb_step(params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, *, step: int,
              lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
              weight_decay: float = 0.0, bias_correction: bool = True, trust_clip: Optional[float] = None,
              exclude: Optional[Sequence[bool]] = None, l1: float = 0.0, maximize: bool = False,
              grad_scale: float = 1.0, param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0,
              ) -> list[float]: ...  # the trust ratios
def lars_step(params: _Arrays, grads: _Arrays, momentum_buffers: Optional[_Arrays] = None, *, lr: float,
              momentum: float = 0.9, dampening: float = 0.0, weight_decay: float = 0.0, eta: float = 1e-3,
              eps: float = 1e-8, nesterov: bool = False, trust_clip: bool = False, first_step: bool = False,
              exclude: Optional[Sequence[bool]] = None, l1: float = 0.0, maximize: bool = False,
              grad_scale: float = 1.0, step: int = 1, param_copies: Optional[_Arrays] = None, stochastic_rounding: bool = False, seed: int = 0,
              ) -> list[float]: ...  # the trust ratios

# ---- gradient norms
def grad_norm(grads: _Arrays, norm_type: float = 2.0) -> float: ...
def clip_grad_norm(grads: _Arrays, max_norm: float, norm_type: float = 2.0) -> float: ...
def all_finite(grads: _Arrays) -> bool: ...
def _mean_of_rows(rows: _Arrays, out: _Array) -> None: ...
def _bandwidth_probe(a: _Array, b: _Array, factor: float) -> None: ...
def _read_probe(a: _Array) -> float: ...

# ---- optimizer classes (native side)
class _OptimizerPlan:
    def __init__(self, name: str, params: list[_Array], groups: Sequence[int],
                 states: Sequence[list[Optional[_Array]]],
                 copies: Optional[Sequence[Optional[_Array]]] = None,
                 remainders: Optional[Sequence[Optional[_Array]]] = None,
                 stochastic_rounding: bool = False, seed: int = 0,
                 origins: Optional[Sequence[Tuple[int, int]]] = None) -> None: ...
    def step_sgd(self, grads: Sequence[_Array], groups: Sequence[Tuple[Any, ...]], grad_scale: float,
                 max_grad_norm: Optional[float], skip_nonfinite: bool, step: int = 0) -> bool: ...
    def step_adam(self, grads: Sequence[_Array], groups: Sequence[Tuple[Any, ...]], step: int, decoupled: bool,
                  grad_scale: float, max_grad_norm: Optional[float], skip_nonfinite: bool) -> bool: ...
    def step_family(self, grads: Sequence[_Array], kind: int, groups: Sequence[dict[str, Any]], step: int,
                    grad_scale: float, max_grad_norm: Optional[float], skip_nonfinite: bool) -> bool: ...
    def step_lamb(self, grads: Sequence[_Array], groups: Sequence[dict[str, Any]], step: int, excluded: bytes,
                  grad_scale: float, max_grad_norm: Optional[float],
                  skip_nonfinite: bool) -> Optional[list[float]]: ...
    def step_lars(self, grads: Sequence[_Array], groups: Sequence[dict[str, Any]], first_step: Sequence[bool],
                  excluded: bytes, grad_scale: float, max_grad_norm: Optional[float],
                  skip_nonfinite: bool, step: int = 1) -> Optional[list[float]]: ...
    def __len__(self) -> int: ...

def _check_sgd_group(where: str, group: Tuple[Any, ...]) -> None: ...
def _check_adam_group(where: str, group: Tuple[Any, ...]) -> None: ...
def _check_family_group(where: str, kind: int, group: dict[str, Any]) -> None: ...
def _check_lamb_group(where: str, group: dict[str, Any]) -> None: ...
def _check_lars_group(where: str, group: dict[str, Any]) -> None: ...
_family_kinds: dict[str, int]

# ---- batch norm: positional natives; the public, documented signatures are in
# fusedops/_batch_norm.py. Statistics come back as float64 (C,) arrays.
def _batch_norm_forward(
    x: _Array,
    weight: Optional[_Array],
    bias: Optional[_Array],
    running_mean: Optional[_Array],
    running_var: Optional[_Array],
    training: bool,
    momentum: float,
    eps: float,
    channel_axis: int,
    out: Optional[_Array],
    /,
) -> Tuple[_Array, _F64, _F64]: ...
def _batch_norm_backward(
    dy: _Array,
    x: _Array,
    weight: Optional[_Array],
    save_mean: _Array,
    save_invstd: _Array,
    training: bool,
    channel_axis: int,
    out: Optional[_Array],
    /,
) -> Tuple[_Array, Optional[_Array], Optional[_Array]]: ...
def _batch_norm_stats(x: _Array, channel_axis: int, /) -> Tuple[_F64, _F64]: ...
def _batch_norm_combine_stats(
    means: Union[_F64, Sequence[_F64]],
    m2s: Union[_F64, Sequence[_F64]],
    counts: Union[npt.NDArray[Any], Sequence[float]],
    /,
) -> Tuple[_F64, _F64, _F64]: ...
def _batch_norm_elemt(
    x: _Array,
    weight: Optional[_Array],
    bias: Optional[_Array],
    mean: _Array,
    invstd: _Array,
    channel_axis: int,
    out: Optional[_Array],
    /,
) -> _Array: ...
def _batch_norm_backward_reduce(
    dy: _Array, x: _Array, mean: _Array, invstd: _Array, channel_axis: int, /
) -> Tuple[_F64, _F64]: ...
def _batch_norm_backward_elemt(
    dy: _Array,
    x: _Array,
    weight: Optional[_Array],
    mean: _Array,
    invstd: _Array,
    sum_dy: _Array,
    sum_dy_xhat: _Array,
    count: float,
    channel_axis: int,
    out: Optional[_Array],
    /,
) -> _Array: ...
