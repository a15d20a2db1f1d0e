"""Optimizer classes for custom training loops: SGD, Adam and AdamW over NumPy arrays.

The optimizer owns its state arrays; params are updated in place. ``step(grads)`` takes a
flat list of gradients aligned with the params in param-group order and updates every
tensor of every group in one native call (one parallel region, GIL released). A sequence
of steps is bitwise identical to the same sequence of functional calls
(:func:`fusedops.sgd_step`, :func:`fusedops.adam_step`, :func:`fusedops.adamw_step`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional

import numpy as np

from . import _core

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _real(value: Any, where: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a real number, got {type(value).__name__}")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where} must be a bool, got {type(value).__name__}")
    return bool(value)


class Optimizer:
    """Shared machinery: param groups, owned state, the native plan, state_dict."""

    _state_names: tuple = ()

    def __init__(self, params, defaults: Dict[str, Any], *, max_grad_norm=None,
                 skip_nonfinite=False, comm=None, shard_state=False):
        self._dist = None  # runs the steps when comm= spans more than one rank
        if comm is None and shard_state is False:
            self._setup(params, defaults, max_grad_norm, skip_nonfinite)
        else:
            from . import distributed
            self._dist = distributed.attach(
                self, comm, shard_state,
                lambda: self._setup(params, defaults, max_grad_norm, skip_nonfinite))

    def _setup(self, params, defaults, max_grad_norm, skip_nonfinite) -> None:
        name = type(self).__name__
        if max_grad_norm is not None:
            max_grad_norm = _real(max_grad_norm, f"{name}: max_grad_norm")
            if not (math.isfinite(max_grad_norm) and max_grad_norm >= 0):
                raise ValueError(f"{name}: max_grad_norm must be finite and >= 0, got {max_grad_norm}")
        self.defaults = dict(defaults)
        self.max_grad_norm = max_grad_norm
        self.skip_nonfinite = _flag(skip_nonfinite, f"{name}: skip_nonfinite")
        self.param_groups: List[Dict[str, Any]] = []
        self.state: List[Dict[str, np.ndarray]] = []  # one dict per param, in group order
        self._started: List[bool] = []  # per group: has an update been applied (SGD momentum)
        self._allocated: List[tuple] = []  # per group: the state names its params hold
        self._step = 0
        self._plan = None
        self._plan_key: tuple = ()
        if isinstance(params, np.ndarray):
            raise TypeError(f"{name}: params must be a list of arrays or of param-group dicts, "
                            "not a single array (wrap it in a list)")
        params = list(params)
        if not params:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = params if all(isinstance(p, dict) for p in params) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------ groups and state

    def add_param_group(self, group: Dict[str, Any]) -> None:
        """Adds a group ``{"params": [...], **overrides}``; unset keys take the defaults."""
        name = type(self).__name__
        if self._dist is not None:
            self._dist.check_add_param_group()
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a param group must be a dict with a 'params' key")
        params = group["params"]
        params = (params,) if isinstance(params, np.ndarray) else tuple(params)
        index = len(self.param_groups)
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{name}: param_groups[{index}]['params'][{i}] must be a "
                                f"numpy.ndarray, got {type(p).__name__}")
        new = {**self.defaults, **group, "params": params}
        self._check_group(new, index)
        existing = [p for g in self.param_groups for p in g["params"]]
        self._build_plan([*existing, *params], [*self.param_groups, new],
                         [*self.state, *({} for _ in params)])  # validates the arrays
        self.param_groups.append(new)
        self.state.extend({} for _ in params)
        self._started.append(False)
        self._allocated.append(())
        self._plan = None

    def _needed_state(self, group) -> tuple:
        raise NotImplementedError

    def _ensure_state(self) -> None:
        """Allocates state a group needs (e.g. after momentum was switched on): O(groups)."""
        offset = 0
        for gi, group in enumerate(self.param_groups):
            needed = self._needed_state(group)
            n = len(group["params"])
            if not set(needed) <= set(self._allocated[gi]):
                for p, st in zip(group["params"], self.state[offset:offset + n]):
                    for key in needed:
                        if key not in st:
                            st[key] = np.zeros_like(p)
                self._allocated[gi] = tuple(dict.fromkeys((*self._allocated[gi], *needed)))
                self._plan = None
            offset += n

    def _build_plan(self, params, groups, states):
        group_of = [gi for gi, g in enumerate(groups) for _ in g["params"]]
        columns = [[st.get(key) for st in states] for key in self._state_names]
        return _core._OptimizerPlan(type(self).__name__, list(params), group_of, columns)

    def _current_plan(self):
        key = tuple(g["params"] for g in self.param_groups)
        if self._plan is not None and len(key) == len(self._plan_key) and all(
                a is b for a, b in zip(key, self._plan_key)):
            return self._plan
        for gi, (params, old) in enumerate(zip(key, self._plan_key)):
            if params is not old and tuple(params) != tuple(old):
                raise ValueError(f"{type(self).__name__}: param_groups[{gi}]['params'] was replaced; "
                                 "use add_param_group or a new optimizer")
        for group in self.param_groups:
            group["params"] = tuple(group["params"])
        self._ensure_state()
        params = [p for g in self.param_groups for p in g["params"]]
        self._plan = self._build_plan(params, self.param_groups, self.state)
        self._plan_key = tuple(g["params"] for g in self.param_groups)
        return self._plan

    # ------------------------------------------------------------ stepping

    def _group_args(self, group, index) -> tuple:
        raise NotImplementedError

    def _check_group(self, group, index) -> None:
        """Type and range checks of a group's hyperparameters (steps re-check them natively)."""
        self._check_native(f"{type(self).__name__}: param_groups[{index}]", self._group_args(group, index))

    def step(self, grads, *, grad_scale: float = 1.0) -> bool:
        """Updates every param from ``grads`` (flat, in group order). True if applied.

        With ``comm=``, the grads are first averaged over the ranks, in place (the arrays
        receive the average); with ``shard_state=True`` they are only read.
        """
        if self._dist is not None:
            return self._dist.step(grads, grad_scale)
        return self._step_local(grads, grad_scale)

    def _step_local(self, grads, grad_scale: float) -> bool:
        if self._plan is not None:
            self._ensure_state()
        plan = self._current_plan()
        groups = [self._group_args(g, i) for i, g in enumerate(self.param_groups)]
        applied = self._native_step(plan, grads, groups, grad_scale)
        if applied:
            self._record_applied()
        return applied

    def _record_applied(self) -> None:
        self._step += 1
        self._started = [s or bool(g.get("momentum", 0)) for s, g in zip(self._started, self.param_groups)]

    # ------------------------------------------------------------ state_dict

    def state_dict(self) -> Dict[str, Any]:
        """Plain Python/NumPy objects (picklable): state arrays are copies. With
        ``shard_state=True``, the rank's shard (see ``consolidated_state_dict``)."""
        if self._dist is not None and self._dist.sharded:
            return self._dist.state_dict()
        groups = []
        offset = 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(offset, offset + n))})
            offset += n
        state = {}
        for i, st in enumerate(self.state):
            gi = self._group_of(i)
            kept = {k: v.copy() for k, v in st.items() if self._started[gi] or k != "momentum_buffer"}
            if kept:
                state[i] = kept
        return {"state": state, "param_groups": groups, "step": self._step}

    def _group_of(self, index: int) -> int:
        offset = 0
        for gi, g in enumerate(self.param_groups):
            offset += len(g["params"])
            if index < offset:
                return gi
        raise IndexError(index)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores hyperparameters and state (validated first; copies into owned arrays)."""
        if self._dist is not None and self._dist.sharded:
            return self._dist.load_state_dict(state_dict)
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups", "step"} <= state_dict.keys():
            raise ValueError(f"{name}: state_dict must have 'state', 'param_groups' and 'step'")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{name}: state_dict has {len(groups)} param groups, the optimizer "
                             f"has {len(self.param_groups)}")
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}: param_groups[{gi}] has {len(saved['params'])} params in "
                                 f"state_dict but {len(group['params'])} in the optimizer")
            self._check_group({**group, **{k: v for k, v in saved.items() if k != "params"}}, gi)
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"{name}: state_dict['step'] must be an int >= 0, got {step!r}")
        params = [p for g in self.param_groups for p in g["params"]]
        saved_state = state_dict["state"]
        started = []
        offset = 0
        for gi, group in enumerate(self.param_groups):
            indices = range(offset, offset + len(group["params"]))
            started.append(bool(indices) and all(
                "momentum_buffer" in saved_state.get(i, {}) for i in indices))
            offset += len(group["params"])
        for i, entry in saved_state.items():
            if not isinstance(i, numbers.Integral) or not 0 <= i < len(params):
                raise ValueError(f"{name}: state_dict['state'] has an entry for param {i!r}, "
                                 f"the optimizer has {len(params)} params")
            for key, value in entry.items():
                if key not in self._state_names:
                    raise ValueError(f"{name}: unknown state {key!r} for param {i}")
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"{name}: state {key!r} of param {i} must be a numpy.ndarray")
                if value.dtype != params[i].dtype:
                    raise TypeError(f"{name}: state {key!r} of param {i} has dtype {value.dtype}, "
                                    f"the param has {params[i].dtype}")
                if value.shape != params[i].shape:
                    raise ValueError(f"{name}: state {key!r} of param {i} has shape {value.shape}, "
                                     f"the param has {params[i].shape}")
        # Everything checked: apply.
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        for i, st in enumerate(self.state):
            entry = saved_state.get(i, {})
            for key in list(st):
                if key not in entry:
                    st[key][...] = 0
            for key, value in entry.items():
                if key in st:
                    np.copyto(st[key], value)
                else:
                    st[key] = np.array(value, copy=True, order="C")
                    self._plan = None
        for gi in range(len(self.param_groups)):
            self._allocated[gi] = ()  # recomputed (and completed) at the next step
        self._started = started
        self._step = int(step)

    def consolidated_state_dict(self, root: int = 0) -> Optional[Dict[str, Any]]:
        """Collective with ``comm=``: the whole state (the unsharded format) on rank
        ``root``, None on the other ranks. Without ``comm=``: ``state_dict()``."""
        if self._dist is not None:
            return self._dist.consolidated_state_dict(root)
        return self.state_dict()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """torch.optim.SGD semantics (momentum, dampening, Nesterov, maximize), plus l1."""

    _state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, l1=0.0,
                 nesterov=False, maximize=False, max_grad_norm=None, skip_nonfinite=False,
                 comm=None, shard_state=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        l1=l1, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state)

    def _needed_state(self, group) -> tuple:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _group_args(self, group, index) -> tuple:
        where = f"SGD: param_groups[{index}]"
        return (_real(group["lr"], f"{where}['lr']"), _real(group["momentum"], f"{where}['momentum']"),
                _real(group["dampening"], f"{where}['dampening']"),
                _real(group["weight_decay"], f"{where}['weight_decay']"), _real(group["l1"], f"{where}['l1']"),
                _flag(group["nesterov"], f"{where}['nesterov']"), _flag(group["maximize"], f"{where}['maximize']"),
                not self._started[index] if index < len(self._started) else True)

    _check_native = staticmethod(_core._check_sgd_group)

    def _native_step(self, plan, grads, groups, grad_scale) -> bool:
        return plan.step_sgd(grads, groups, grad_scale, self.max_grad_norm, self.skip_nonfinite)


class Adam(Optimizer):
    """torch.optim.Adam semantics (L2 weight decay, AMSGrad, maximize), plus l1."""

    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0,
                 amsgrad=False, maximize=False, max_grad_norm=None, skip_nonfinite=False,
                 comm=None, shard_state=False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, l1=l1,
                        amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state)

    def _needed_state(self, group) -> tuple:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _group_args(self, group, index) -> tuple:
        name = type(self).__name__
        where = f"{name}: param_groups[{index}]"
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}['betas'] must be a pair of numbers, got {betas!r}")
        return (_real(group["lr"], f"{where}['lr']"), _real(betas[0], f"{where}['betas'][0]"),
                _real(betas[1], f"{where}['betas'][1]"), _real(group["eps"], f"{where}['eps']"),
                _real(group["weight_decay"], f"{where}['weight_decay']"), _real(group["l1"], f"{where}['l1']"),
                _flag(group["amsgrad"], f"{where}['amsgrad']"), _flag(group["maximize"], f"{where}['maximize']"))

    _check_native = staticmethod(_core._check_adam_group)

    def _native_step(self, plan, grads, groups, grad_scale) -> bool:
        return plan.step_adam(grads, groups, self._step + 1, self._decoupled, grad_scale,
                              self.max_grad_norm, self.skip_nonfinite)


class AdamW(Adam):
    """torch.optim.AdamW semantics: decoupled weight decay (default 1e-2)."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0.0,
                 amsgrad=False, maximize=False, max_grad_norm=None, skip_nonfinite=False,
                 comm=None, shard_state=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1,
                         amsgrad=amsgrad, maximize=maximize, max_grad_norm=max_grad_norm,
                         skip_nonfinite=skip_nonfinite, comm=comm, shard_state=shard_state)
