"""The optimizer family beyond SGD and Adam (re-exported by :mod:`fusedops.optim`).

Adagrad, RMSprop, Adamax, NAdam and RAdam follow torch.optim 2.13: the same update, the
same positional parameters in the same order with the same defaults (torch's
implementation switches ``foreach``/``fused``/``capturable``/``differentiable`` have no
counterpart). Lion follows Chen et al. 2023 ("Symbolic Discovery of Optimization
Algorithms", Algorithm 2). Every class adds the keyword-only extras the other fusedops
optimizers have: ``l1``, ``max_grad_norm``, ``skip_nonfinite``, and ``step(grads,
grad_scale=...)``; all tensors of all groups update in one native call. The
mixed-precision options (``state_dtype``, ``master_weights``, ``stochastic_rounding``,
``seed``; per param, API.md's dtype table) are those of SGD/Adam/AdamW: 16-bit rows run
the float32 kernels over widened L1 blocks inside the same call.

LAMB (You et al. 2019) and LARS (You et al. 2017) scale each tensor's update by a trust
ratio computed from norms of that tensor; the norms are reduced inside the same native
call (a reduction pass, then the update pass, in one parallel region, with a blocking
that does not depend on the thread count).

A sequence of steps is bitwise identical to the functional calls (``fo.adagrad_step``,
``fo.rmsprop_step``, ``fo.adamax_step``, ``fo.nadam_step``, ``fo.radam_step``,
``fo.lion_step``, ``fo.lamb_step``, ``fo.lars_step``) with the same arguments.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .optim import _COMMON_OPTIONS_DOC, Array, Optimizer, ParamGroup, Params, _flag, _real

__all__ = ["Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam", "Lion", "LAMB", "LARS"]

_KINDS: Dict[str, int] = _core._family_kinds


def _betas(group: Dict[str, Any], where: str) -> Tuple[float, float]:
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{where}['betas'] must be a pair of numbers, got {betas!r}")
    return _real(betas[0], (where, "['betas'][0]")), _real(betas[1], (where, "['betas'][1]"))


class _FamilyOptimizer(Optimizer):
    """An optimizer whose update is one of the native family kernels.

    Subclasses name the kernel (``_kind``), their real-valued and boolean group keys, and
    the state each group needs.
    """

    _kind = ""
    _reals: Tuple[str, ...] = ()
    _flags: Tuple[str, ...] = ("maximize",)
    _has_betas = False

    def _group_args(self, group: ParamGroup, index: int) -> Any:
        where = f"{type(self).__name__}: param_groups[{index}]"
        args: Dict[str, Any] = {key: _real(group[key], (where, "['", key, "']")) for key in self._reals}
        for key in self._flags:
            args[key] = _flag(group[key], (where, "['", key, "']"))
        if self._has_betas:
            args["beta1"], args["beta2"] = _betas(group, where)
        return args

    def _check_group(self, group: ParamGroup, index: int) -> None:
        _core._check_family_group(f"{type(self).__name__}: param_groups[{index}]",
                                  _KINDS[self._kind], self._group_args(group, index))

    def _native_step(self, plan: Any, grads: Sequence[Array], groups: List[Any],
                     grad_scale: float) -> bool:
        return bool(plan.step_family(grads, _KINDS[self._kind], groups, self._step + 1, grad_scale,
                                     self.max_grad_norm, self.skip_nonfinite))


class Adagrad(_FamilyOptimizer):
    """torch.optim.Adagrad: ``sum += g^2``, ``p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)``
    (L2 weight decay added to g; the accumulator starts at initial_accumulator_value)."""

    _kind = "adagrad"
    _state_names = ("sum",)
    _reals = ("lr", "lr_decay", "weight_decay", "eps", "l1")

    def __init__(self, params: Params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: Optional[float] = None, skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        maximize=maximize, l1=l1)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _check_group(self, group: ParamGroup, index: int) -> None:
        where = f"Adagrad: param_groups[{index}]['initial_accumulator_value']"
        value = _real(group["initial_accumulator_value"], where)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where} must be finite and >= 0, got {value}")
        super()._check_group(group, index)

    def add_param_group(self, group: Dict[str, Any]) -> None:
        """As Optimizer.add_param_group; the group's accumulators start at its
        initial_accumulator_value."""
        super().add_param_group(group)
        new = self.param_groups[-1]
        n = len(new["params"])
        for p, st in zip(new["params"], self.state[len(self.state) - n:]):
            st["sum"] = np.full(p.shape, new["initial_accumulator_value"],
                                self._precision.state_dtype_for(p))
        self._allocated[-1] = ("sum",)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("sum",)


class RMSprop(_FamilyOptimizer):
    """torch.optim.RMSprop: ``sq = alpha sq + (1 - alpha) g^2``; centered subtracts the
    square of the running mean of g; with momentum ``buf = momentum buf + g / avg``,
    ``p -= lr buf``, else ``p -= lr g / avg`` where ``avg = sqrt(...) + eps``."""

    _kind = "rmsprop"
    _state_names = ("square_avg", "grad_avg", "momentum_buffer")
    _reals = ("lr", "alpha", "eps", "weight_decay", "momentum", "l1")
    _flags = ("centered", "maximize")

    def __init__(self, params: Params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False, l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize, l1=l1)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return (("square_avg",) + (("grad_avg",) if group["centered"] else ())
                + (("momentum_buffer",) if group["momentum"] > 0 else ()))


class Adamax(_FamilyOptimizer):
    """torch.optim.Adamax: ``m = b1 m + (1 - b1) g``, ``u = max(b2 u, |g| + eps)``,
    ``p -= lr / (1 - b1^t) * m / u`` (L2 weight decay added to g)."""

    _kind = "adamax"
    _state_names = ("exp_avg", "exp_inf")
    _reals = ("lr", "eps", "weight_decay", "l1")
    _has_betas = True

    def __init__(self, params: Params, lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        maximize=maximize, l1=l1)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("exp_avg", "exp_inf")


class NAdam(_FamilyOptimizer):
    """torch.optim.NAdam (Dozat 2016 with torch's momentum schedule
    ``mu_t = b1 (1 - 0.5 * 0.96^(t momentum_decay))``); decoupled_weight_decay=True gives
    NAdamW. The running product of mu_t is kept per group and saved in state_dict()."""

    _kind = "nadam"
    _state_names = ("exp_avg", "exp_avg_sq")
    _reals = ("lr", "eps", "weight_decay", "momentum_decay", "l1")
    _flags = ("decoupled_weight_decay", "maximize")
    _has_betas = True

    def __init__(self, params: Params, lr: float = 2e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: Optional[float] = None, skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, l1=l1)
        self._mu_products: List[float] = []
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def add_param_group(self, group: Dict[str, Any]) -> None:
        super().add_param_group(group)
        self._mu_products.append(1.0)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _group_args(self, group: ParamGroup, index: int) -> Any:
        args = super()._group_args(group, index)
        if index < len(self._mu_products):
            args["mu_product"] = self._mu_products[index]
        return args

    def step(self, grads: Optional[Sequence[Array]] = None, *, grad_scale: float = 1.0) -> bool:
        """As Optimizer.step; then advances each group's product of mu_t."""
        applied = super().step(grads, grad_scale=grad_scale)
        if applied:
            for i, group in enumerate(self.param_groups):
                beta1 = _betas(group, "NAdam")[0]
                mu = beta1 * (1.0 - 0.5 * 0.96 ** (self._step * float(group["momentum_decay"])))
                self._mu_products[i] *= mu
        return applied

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd["mu_products"] = list(self._mu_products)
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        mu = state_dict.get("mu_products") if isinstance(state_dict, dict) else None
        if (not isinstance(mu, list) or len(mu) != len(self.param_groups)
                or not all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in mu)):
            raise ValueError(f"NAdam: state_dict['mu_products'] must be a list of "
                             f"{len(self.param_groups)} floats in [0, 1]")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "mu_products"})
        self._mu_products = list(mu)


class RAdam(_FamilyOptimizer):
    """torch.optim.RAdam (Liu et al. 2020): the Adam step scaled by the variance
    rectification term while rho_t > 5, plain bias-corrected momentum before;
    decoupled_weight_decay=True gives RAdamW."""

    _kind = "radam"
    _state_names = ("exp_avg", "exp_avg_sq")
    _reals = ("lr", "eps", "weight_decay", "l1")
    _flags = ("decoupled_weight_decay", "maximize")
    _has_betas = True

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                 *, maximize: bool = False, l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, l1=l1)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")


class Lion(_FamilyOptimizer):
    """Lion, Chen et al. 2023 (Algorithm 2): ``p = p (1 - lr wd) - lr sign(b1 m + (1 - b1) g)``,
    then ``m = b2 m + (1 - b2) g``; one state buffer, decoupled weight decay. sign(0) = 0.
    The variant of the paper's pseudocode and of the lion-pytorch/optax implementations."""

    _kind = "lion"
    _state_names = ("exp_avg",)
    _reals = ("lr", "weight_decay", "l1")
    _has_betas = True

    def __init__(self, params: Params, lr: float = 1e-4, betas: Tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: Optional[float] = None, skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize, l1=l1)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("exp_avg",)


Exclude = Union[bool, Callable[[np.ndarray], bool], None]


class _TrustRatioOptimizer(Optimizer):
    """LAMB/LARS: per-tensor exclusion from weight decay and adaptation, and the trust
    ratios of the last applied step (``trust_ratios``, one float per param)."""

    _reals: Tuple[str, ...] = ()
    _flags: Tuple[str, ...] = ()

    def __init__(self, params: Params, defaults: Dict[str, Any], *, max_grad_norm: Optional[float],
                 skip_nonfinite: bool,
                 comm: Any, shard_state: bool, state_dtype: Any, master_weights: Union[bool, str],
                 stochastic_rounding: bool, seed: int) -> None:
        if shard_state:  # the trust ratios need norms of whole tensors, which shards cut
            raise ValueError(f"{type(self).__name__}: shard_state=True is not supported (per-tensor "
                             "trust ratios need whole tensors); use comm= alone")
        self.trust_ratios: Optional[List[float]] = None
        self._mask_key: Tuple[Any, ...] = ()
        self._mask = b""
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _group_args(self, group: ParamGroup, index: int) -> Any:
        where = f"{type(self).__name__}: param_groups[{index}]"
        args: Dict[str, Any] = {key: _real(group[key], (where, "['", key, "']")) for key in self._reals}
        for key in self._flags:
            args[key] = _flag(group[key], (where, "['", key, "']"))
        exclude = group.get("exclude")
        if exclude is not None and not isinstance(exclude, bool) and not callable(exclude):
            raise TypeError(f"{where}['exclude'] must be None, a bool or a callable, got "
                            f"{type(exclude).__name__}")
        return args

    def _exclusion_mask(self) -> bytes:
        """One byte per param: 1 where the group's ``exclude`` (a bool, or a callable
        called with the param) says so. Recomputed only when the groups change."""
        key = tuple((id(g["params"]), id(g.get("exclude"))) for g in self.param_groups)
        if key != self._mask_key:
            flags = []
            for group in self.param_groups:
                rule = group.get("exclude")
                for p in group["params"]:
                    flags.append(bool(rule(p)) if callable(rule) else bool(rule))
            self._mask, self._mask_key = bytes(flags), key
        return self._mask

    def state_dict(self) -> Dict[str, Any]:
        """As Optimizer.state_dict; a callable ``exclude`` is left out (it may not pickle):
        the loading optimizer keeps its own."""
        sd = super().state_dict()
        for group in sd["param_groups"]:
            if callable(group.get("exclude")):
                del group["exclude"]
        return sd

    def _trust_step(self, plan: Any, grads: Sequence[Array], groups: List[Any],
                    grad_scale: float) -> Optional[List[float]]:
        raise NotImplementedError

    def _native_step(self, plan: Any, grads: Sequence[Array], groups: List[Any],
                     grad_scale: float) -> bool:
        ratios = self._trust_step(plan, grads, groups, grad_scale)
        if ratios is None:
            return False
        self.trust_ratios = ratios
        return True


class LAMB(_TrustRatioOptimizer):
    """LAMB, You et al. 2019 ("Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", Algorithm 2), per tensor:

    - ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``
    - ``u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * p``
      (bias_correction=False drops both corrections)
    - ``ratio = ||p|| / ||u||`` (1 if either norm is 0), at most ``trust_clip`` when given
    - ``p = p - lr * ratio * u``

    The weight decay is inside the ratio (the paper's and NVIDIA's/timm's LAMB); phi is the
    identity, clamped by trust_clip. ``exclude`` (a bool, or a callable called with each
    param, e.g. ``lambda p: p.ndim <= 1`` for biases and norm weights; a group may set its
    own) marks tensors updated without weight decay and with ratio 1. ``l1`` and
    ``grad_scale``/``maximize`` act on g before the moments. ``trust_ratios`` holds the
    ratios of the last applied step.
    """

    _state_names = ("exp_avg", "exp_avg_sq")
    _reals = ("lr", "eps", "weight_decay", "l1")
    _flags = ("bias_correction", "maximize")

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, bias_correction: bool = True,
                 trust_clip: Optional[float] = None, exclude: Exclude = None, maximize: bool = False,
                 l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, trust_clip=trust_clip, exclude=exclude,
                        maximize=maximize, l1=l1)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _group_args(self, group: ParamGroup, index: int) -> Any:
        args = super()._group_args(group, index)
        where = f"LAMB: param_groups[{index}]"
        args["beta1"], args["beta2"] = _betas(group, where)
        clip = group["trust_clip"]
        if clip is not None:
            clip = _real(clip, (where, "['trust_clip']"))
            if not clip > 0:
                raise ValueError(f"{where}['trust_clip'] must be None or > 0, got {clip}")
            args["trust_clip"] = clip
        return args

    def _check_group(self, group: ParamGroup, index: int) -> None:
        _core._check_lamb_group(f"LAMB: param_groups[{index}]", self._group_args(group, index))

    def _trust_step(self, plan: Any, grads: Sequence[Array], groups: List[Any],
                    grad_scale: float) -> Optional[List[float]]:
        ratios: Optional[List[float]] = plan.step_lamb(
            grads, groups, self._step + 1, self._exclusion_mask(), grad_scale, self.max_grad_norm,
            self.skip_nonfinite)
        return ratios


class LARS(_TrustRatioOptimizer):
    """LARS, You et al. 2017 ("Large Batch Training of Convolutional Networks", Algorithm 1),
    per tensor, with torch.optim.SGD's momentum:

    - ``ratio = eta * ||p|| / (||g|| + weight_decay * ||p|| + eps)`` (1 if either norm is 0;
      with trust_clip, LARC's clipping ``min(ratio / lr, 1)``)
    - ``d = ratio * (g + weight_decay * p)``
    - ``buf = momentum * buf + (1 - dampening) * d`` (``buf = d`` at the first step),
      ``d = d + momentum * buf`` with nesterov else ``buf``;  ``p = p - lr * d``

    This is the formulation of timm's Lars and NVIDIA's LARS (lr outside the momentum
    buffer; the paper's Algorithm 1 keeps lr inside it, which only differs while lr
    changes). ``exclude`` (a bool, or a callable called with each param; a group may set
    its own) marks tensors updated as plain SGD with momentum: no weight decay, ratio 1.
    ``l1`` adds ``l1 * sign(p)`` to d before the ratio is applied; ||g|| is the norm of
    the unscaled gradient. ``trust_ratios`` holds the ratios of the last applied step.
    """

    _state_names = ("momentum_buffer",)
    _reals = ("lr", "momentum", "dampening", "weight_decay", "eta", "eps", "l1")
    _flags = ("nesterov", "trust_clip", "maximize")

    def __init__(self, params: Params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, *, dampening: float = 0.0, nesterov: bool = False,
                 eps: float = 1e-8, trust_clip: bool = False, exclude: Exclude = None,
                 maximize: bool = False, l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False, state_dtype: Any = None,
                 master_weights: Union[bool, str] = False, stochastic_rounding: bool = False,
                 seed: int = 0) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                        dampening=dampening, nesterov=nesterov, eps=eps, trust_clip=trust_clip,
                        exclude=exclude, maximize=maximize, l1=l1)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _check_group(self, group: ParamGroup, index: int) -> None:
        _core._check_lars_group(f"LARS: param_groups[{index}]", self._group_args(group, index))

    def _trust_step(self, plan: Any, grads: Sequence[Array], groups: List[Any],
                    grad_scale: float) -> Optional[List[float]]:
        first = [not s for s in self._started]
        ratios: Optional[List[float]] = plan.step_lars(
            grads, groups, first, self._exclusion_mask(), grad_scale, self.max_grad_norm,
            self.skip_nonfinite, self._step + 1)
        return ratios


for _cls in (Adagrad, RMSprop, Adamax, NAdam, RAdam, Lion, LAMB, LARS):
    _cls.__doc__ = (_cls.__doc__ or "") + _COMMON_OPTIONS_DOC
del _cls
