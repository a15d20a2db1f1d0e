"""Optimizer classes for custom training loops: SGD, Adam and AdamW over NumPy arrays
(the rest of the family, Adagrad to LARS, lives in ``_optim_family`` and is re-exported
here; the learning-rate schedules in ``lr_scheduler``).

The optimizer owns its state arrays; params are updated in place. ``step(grads)`` takes a
flat list of gradients aligned with the params in param-group order and updates every
tensor of every group in one native call (one parallel region, GIL released). Gradients
can also be bound once, per group (``{"params": [...], "grads": [...]}``): then
``step()`` takes no argument and a list in the wrong order cannot be passed. A sequence
of steps is bitwise identical to the same sequence of functional calls
(:func:`fusedops.sgd_step`, :func:`fusedops.adam_step`, :func:`fusedops.adamw_step`).

One optimizer is stepped from one thread at a time: a ``step`` that starts while another
thread's ``step`` of the same optimizer runs raises ``RuntimeError``.
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._bfloat16 import as_dtype, is_bfloat16, is_half

from . import _core, distributed
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam",
           "Lion", "LAMB", "LARS", "LossScaler", "ParamGroup", "Params", "lr_scheduler"]

Array = npt.NDArray[Any]
#: A param group: ``{"params": [arrays], "grads": [arrays] (optional), **hyperparameters}``.
ParamGroup = Dict[str, Any]
#: What the optimizers take: arrays, or param-group dicts.
Params = Union[Iterable[Array], Iterable[ParamGroup]]

_COMMON_OPTIONS_DOC = """
    Options every optimizer class shares:

    - ``params``: a list of arrays (one group), or a list of param-group dicts
      ``{"params": [...], **overrides}``; a group may also carry ``"grads": [...]``, its
      gradient buffers (same shapes, same order): when every group has them,
      ``step()`` takes no argument.
    - ``max_grad_norm``: if given, the global L2 norm of all grads (after dividing by
      ``grad_scale``) is computed inside the step and the update uses the grads scaled by
      ``min(1, max_grad_norm / (norm + 1e-6))``, as ``clip_grad_norm`` followed by
      ``step``; the grad arrays are not modified.
    - ``skip_nonfinite``: if any grad holds NaN or Inf, nothing changes (params, state,
      step count) and ``step`` returns False, as AMP's GradScaler skips a step.
    - ``l1``: an L1 penalty, ``l1 * sign(p)`` added to the gradient (after weight decay).
    - ``step(grads, grad_scale=s)``: the grads are divided by ``s`` first (the loss scale of
      mixed-precision training).
    - ``grads`` passed to ``step`` are a flat list aligned with the params in param-group
      order: group 0's params first, then group 1's, and so on.
    - ``comm``: a ``fusedops.distributed`` communicator (or an mpi4py Comm) for data
      parallelism: ``step`` averages the grads over the ranks in place, then clips with the
      global norm; ``skip_nonfinite`` decides the same on every rank. ``shard_state=True``
      (ZeRO-1): each rank keeps and updates 1/N of the state; the grads are only read.
      With one rank both are no-ops. See ``fusedops.distributed``.

    Mixed precision (params float32, float64, bfloat16 or float16, per param):

    - ``state_dtype``: None (float32 state, float64 for float64 params), ``np.float32`` or
      ``fo.bfloat16`` (halves the state traffic; not for float16 or float64 params).
    - ``master_weights=True``: the optimizer keeps a float32 master of each 16-bit param
      (state ``"master"``, in the state_dict) and writes it, rounded, into the param in the
      same pass. ``"remainder"`` (bfloat16 params): the optimizer keeps only the low 16
      bits of each float32 master (state ``"remainder"``, uint16); the param holds the
      high 16 bits, i.e. the param is the master *truncated*, not rounded. Both give the
      same masters, bit for bit; the remainder costs 2 bytes per param instead of 4.
    - ``stochastic_rounding``, ``seed``: 16-bit values the step writes are rounded
      stochastically, with random bits from (seed, step count, param index, element).
    - grads may be bfloat16 or float16 where the params (or masters) are float32.
"""


# The checks of a step's hyperparameters run at every step: exact floats, ints and bools
# take a fast path (an isinstance check against the numbers.Real ABC costs about half a
# microsecond), and the argument's label is joined from its parts (`where`: a string or a
# tuple of strings) only for an error message.
Label = Union[str, Tuple[str, ...]]


def _label(where: Label) -> str:
    return where if isinstance(where, str) else "".join(where)


def _real(value: Any, where: Label) -> float:
    if isinstance(value, (float, int)) and not isinstance(value, bool):  # numpy.float64 too
        return float(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_label(where)} must be a real number, got {type(value).__name__}")
    return float(value)


def _flag(value: Any, where: Label) -> bool:
    if value is True or value is False:
        return bool(value)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{_label(where)} must be a bool, got {type(value).__name__}")
    return bool(value)


def _array_list(value: Any, where: str) -> Tuple[Array, ...]:
    """A tuple snapshot of one array or a list/tuple of arrays; TypeError otherwise."""
    if isinstance(value, np.ndarray):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where} must be a list of numpy.ndarray, got {type(value).__name__}")
    items = tuple(value)
    for i, a in enumerate(items):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{where}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
    return items


class _Precision:
    """The mixed-precision options of an optimizer, checked once."""

    def __init__(self, name: str, state_dtype: Any, master_weights: Union[bool, str],
                 stochastic_rounding: bool, seed: int) -> None:
        self.name = name
        if state_dtype is not None:
            try:
                state_dtype = as_dtype(state_dtype)
            except TypeError:
                raise TypeError(f"{name}: state_dtype must be None, np.float32 or fo.bfloat16, "
                                f"got {state_dtype!r}") from None
            if state_dtype != np.float32 and not is_bfloat16(state_dtype):
                raise TypeError(f"{name}: state_dtype must be None, np.float32 or fo.bfloat16, "
                                f"got {state_dtype}")
        if master_weights not in (False, True, "remainder") or isinstance(master_weights, np.bool_):
            raise ValueError(f"{name}: master_weights must be False, True or 'remainder', "
                             f"got {master_weights!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise TypeError(f"{name}: seed must be an int >= 0, got {seed!r}")
        self.state_dtype: Optional[np.dtype[Any]] = state_dtype
        self.master_weights: Union[bool, str] = master_weights
        self.stochastic_rounding: bool = _flag(stochastic_rounding, f"{name}: stochastic_rounding")
        self.seed: int = int(seed)

    def state_dtype_for(self, p: Array) -> Any:
        if p.dtype == np.float64:
            return np.float64
        return self.state_dtype if self.state_dtype is not None else np.float32

    def initial_state(self, p: Array, where: str) -> Dict[str, Array]:
        """The master (or remainder) a new param needs."""
        half = is_half(p.dtype)
        bf16_state = self.state_dtype is not None and is_bfloat16(self.state_dtype)
        if bf16_state and p.dtype == np.float16 and not self.master_weights:
            raise TypeError(f"{where} has dtype float16, whose state is float32; "
                            "state_dtype=fo.bfloat16 needs float32 or bfloat16 params "
                            "(or master_weights=True)")
        if self.master_weights == "remainder" and p.dtype == np.float16:
            raise TypeError(f"{where} has dtype float16; master_weights='remainder' needs "
                            "bfloat16 params (use master_weights=True)")
        if self.master_weights is True and half:
            return {"master": p.astype(np.float32)}
        if self.master_weights == "remainder" and is_bfloat16(p.dtype):
            return {"remainder": np.zeros(p.shape, np.uint16)}
        return {}


class Optimizer:
    """Shared machinery: param groups, owned state, the native plan, state_dict."""

    _state_names: Tuple[str, ...] = ()
    def _check_native(self, where: str, args: Tuple[Any, ...]) -> None:
        """Range checks of one group's hyperparameters (the native step's own checks)."""
        raise NotImplementedError

    def _native_step(self, plan: Any, grads: Sequence[Array], groups: List[Tuple[Any, ...]],
                     grad_scale: float) -> bool:
        raise NotImplementedError

    def __init__(self, params: Params, defaults: Dict[str, Any], *,
                 max_grad_norm: Optional[float] = None, skip_nonfinite: bool = False,
                 comm: Any = None, shard_state: bool = False,
                 state_dtype: Any = None, master_weights: Union[bool, str] = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        self._precision = _Precision(type(self).__name__, state_dtype, master_weights,
                                     stochastic_rounding, seed)
        self._dist: Optional[distributed.DataParallel] = None  # steps with comm= (> 1 rank)
        if comm is None and shard_state is False:
            self._setup(params, defaults, max_grad_norm, skip_nonfinite)
        else:
            self._dist = distributed.attach(
                self, comm, shard_state,
                lambda: self._setup(params, defaults, max_grad_norm, skip_nonfinite))

    def _setup(self, params: Params, defaults: Dict[str, Any], max_grad_norm: Optional[float],
               skip_nonfinite: bool) -> None:
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
        self._allocated: List[Tuple[Any, ...]] = []  # per group: the state names its params hold
        self._step = 0
        self._plan: Any = None
        self._plan_key: Tuple[Any, ...] = ()
        self._stepping = threading.Lock()
        if isinstance(params, np.ndarray):
            raise TypeError(f"{name}: params must be a list of arrays or of param-group dicts, "
                            "not a single array (wrap it in a list)")
        items: List[Any] = list(params)
        if not items:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = items if all(isinstance(p, dict) for p in items) else [{"params": items}]
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------ groups and state

    def add_param_group(self, group: ParamGroup) -> None:
        """Adds a group ``{"params": [...], "grads": [...] (optional), **overrides}``.

        Unset hyperparameters take the optimizer's defaults. ``"grads"``, when given, binds
        the group's gradient buffers: one array per param, same shapes, same order.
        """
        name = type(self).__name__
        if self._dist is not None:
            self._dist.check_add_param_group()
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{name}: a param group must be a dict with a 'params' key")
        index = len(self.param_groups)
        params = _array_list(group["params"], f"{name}: param_groups[{index}]['params']")
        new = {**self.defaults, **group, "params": params}
        if "grads" in group:
            grads = _array_list(group["grads"], f"{name}: param_groups[{index}]['grads']")
            if len(grads) != len(params):
                raise ValueError(f"{name}: param_groups[{index}] has {len(params)} params but "
                                 f"{len(grads)} grads; bind one gradient buffer per param")
            for i, (p, g) in enumerate(zip(params, grads)):
                if g.shape != p.shape:
                    raise ValueError(f"{name}: param_groups[{index}]['grads'][{i}] has shape "
                                     f"{g.shape} but its param has shape {p.shape}")
                if g.dtype != p.dtype and not (
                        p.dtype == np.float32 and is_half(g.dtype)):
                    raise TypeError(f"{name}: param_groups[{index}]['grads'][{i}] has dtype "
                                    f"{g.dtype} but its param has dtype {p.dtype}")
            new["grads"] = grads
        self._check_group(new, index)
        existing = [p for g in self.param_groups for p in g["params"]]
        fresh = [self._precision.initial_state(p, f"{name}: param_groups[{index}]['params'][{i}]")
                 for i, p in enumerate(params)]
        self._build_plan([*existing, *params], [*self.param_groups, new],
                         [*self.state, *fresh])  # validates the arrays
        self.param_groups.append(new)
        self.state.extend(fresh)
        self._started.append(False)
        self._allocated.append(())
        self._plan = None

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        raise NotImplementedError

    def _ensure_state(self) -> None:
        """Allocates state a group needs (e.g. after momentum was switched on): O(groups)."""
        offset = 0
        for gi, group in enumerate(self.param_groups):
            needed = self._needed_state(group)
            n = len(group["params"])
            if needed != self._allocated[gi] and not set(needed) <= set(self._allocated[gi]):
                for p, st in zip(group["params"], self.state[offset:offset + n]):
                    for key in needed:
                        if key not in st:
                            st[key] = np.zeros(p.shape, self._precision.state_dtype_for(p))
                self._allocated[gi] = tuple(dict.fromkeys((*self._allocated[gi], *needed)))
                self._plan = None
            offset += n

    def _build_plan(self, params: Sequence[Array], groups: Sequence[ParamGroup],
                    states: Sequence[Dict[str, Array]]) -> Any:
        group_of = [gi for gi, g in enumerate(groups) for _ in g["params"]]
        columns = [[st.get(key) for st in states] for key in self._state_names]
        # master weights: the plan steps the float32 master and writes the param as its copy
        stepped = [st.get("master", p) for p, st in zip(params, states)]
        copies = [p if "master" in st else None for p, st in zip(params, states)]
        remainders = [st.get("remainder") for st in states]
        pr = self._precision
        return _core._OptimizerPlan(type(self).__name__, stepped, group_of, columns,
                                    copies if any(c is not None for c in copies) else None,
                                    remainders if any(r is not None for r in remainders) else None,
                                    pr.stochastic_rounding, pr.seed)

    def _current_plan(self) -> Any:
        if self._plan is not None and len(self.param_groups) == len(self._plan_key):
            for group, params in zip(self.param_groups, self._plan_key):
                if group["params"] is not params:
                    break
            else:
                return self._plan
        key = tuple(g["params"] for g in self.param_groups)
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

    def _group_args(self, group: ParamGroup, index: int) -> Tuple[Any, ...]:
        raise NotImplementedError

    def _check_group(self, group: ParamGroup, index: int) -> None:
        """Type and range checks of a group's hyperparameters (steps re-check them natively)."""
        self._check_native(f"{type(self).__name__}: param_groups[{index}]", self._group_args(group, index))

    def _bound_grads(self) -> List[Array]:
        name = type(self).__name__
        grads: List[Array] = []
        for gi, group in enumerate(self.param_groups):
            if "grads" not in group:
                raise ValueError(f"{name}: step() without grads needs every param group to bind "
                                 f"its gradient buffers, and param_groups[{gi}] has no 'grads'; "
                                 "pass step(grads) or add 'grads' to every group")
            bound = group["grads"]
            if not isinstance(bound, tuple) or len(bound) != len(group["params"]):
                raise ValueError(f"{name}: param_groups[{gi}]['grads'] was replaced by something "
                                 "other than the bound tuple of one array per param")
            grads.extend(bound)
        return grads

    def step(self, grads: Optional[Sequence[Array]] = None, *, grad_scale: float = 1.0) -> bool:
        """Updates every param in place; returns True if the update was applied.

        ``grads``: a flat list of arrays aligned with the params in param-group order;
        omit it when every param group binds its ``"grads"``. ``grad_scale``: the grads are
        divided by it first (a loss scale). Returns False, changing nothing, when
        ``skip_nonfinite`` is set and a grad holds NaN/Inf.

        With ``comm=``, the grads are first averaged over the ranks, in place (the arrays
        receive the average); with ``shard_state=True`` they are only read.
        """
        # The update runs with the GIL released: a second thread's step would race on the
        # same params, state and step count. It is refused rather than queued, so that the
        # mistake shows.
        if not self._stepping.acquire(blocking=False):
            raise RuntimeError(f"{type(self).__name__}: step() called while another thread is "
                               "running step() on the same optimizer; step one optimizer from "
                               "one thread at a time (or guard it with a lock)")
        try:
            if self._dist is not None:  # it checks the input on every rank before any collective
                return self._dist.step(grads, grad_scale)
            return self._step_local(self._bound_grads() if grads is None else grads, grad_scale)
        finally:
            self._stepping.release()

    def _step_local(self, grads: Sequence[Array], grad_scale: float) -> bool:
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
        if isinstance(self._dist, distributed.ShardedDataParallel):
            return self._dist.state_dict()
        groups = []
        offset = 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k not in ("params", "grads")},
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

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores hyperparameters and state (validated first; copies into owned arrays).

        A malformed ``state_dict`` raises TypeError (wrong types) or ValueError (wrong
        keys, counts or shapes) and changes nothing. With ``shard_state=True``: the rank's
        shard (``state_dict()``) or the whole state (``consolidated_state_dict()``).
        """
        if isinstance(self._dist, distributed.ShardedDataParallel):
            self._dist.load_state_dict(state_dict)
        else:
            self._load_state_dict_local(state_dict)

    def _load_state_dict_local(self, state_dict: Mapping[str, Any]) -> None:
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}: state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"state", "param_groups", "step"} - set(state_dict.keys())
        if missing:
            raise ValueError(f"{name}: state_dict is missing {sorted(missing)}; it must have "
                             "'state', 'param_groups' and 'step' (as state_dict() returns)")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)):
            raise TypeError(f"{name}: state_dict['param_groups'] must be a list of dicts, got "
                            f"{type(groups).__name__}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{name}: state_dict has {len(groups)} param groups, the optimizer "
                             f"has {len(self.param_groups)}")
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, Mapping):
                raise TypeError(f"{name}: state_dict['param_groups'][{gi}] must be a dict, got "
                                f"{type(saved).__name__}")
            if not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"{name}: state_dict['param_groups'][{gi}] needs a 'params' list "
                                 "of param indices")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}: param_groups[{gi}] has {len(saved['params'])} params in "
                                 f"state_dict but {len(group['params'])} in the optimizer")
            self._check_group({**group, **{k: v for k, v in saved.items() if k != "params"}}, gi)
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"{name}: state_dict['step'] must be an int >= 0, got {step!r}")
        if step < 0:
            raise ValueError(f"{name}: state_dict['step'] must be an int >= 0, got {step!r}")
        params = [p for g in self.param_groups for p in g["params"]]
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError(f"{name}: state_dict['state'] must be a dict {{param index: "
                            f"{{name: array}}}}, got {type(saved_state).__name__}")
        for i, entry in saved_state.items():
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(params):
                raise ValueError(f"{name}: state_dict['state'] has an entry for param {i!r}, "
                                 f"the optimizer has {len(params)} params")
            if not isinstance(entry, Mapping):
                raise TypeError(f"{name}: state_dict['state'][{i}] must be a dict of arrays, got "
                                f"{type(entry).__name__}")
            for key, value in entry.items():
                if key not in self._state_names and key not in self.state[i]:
                    raise ValueError(f"{name}: unknown state {key!r} for param {i}")
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"{name}: state {key!r} of param {i} must be a numpy.ndarray")
                want = (self.state[i][key].dtype if key in self.state[i]
                        else self._precision.state_dtype_for(params[i]))
                if value.dtype != want:
                    raise TypeError(f"{name}: state {key!r} of param {i} has dtype {value.dtype}, "
                                    f"expected {np.dtype(want)}")
                if value.shape != params[i].shape:
                    raise ValueError(f"{name}: state {key!r} of param {i} has shape {value.shape}, "
                                     f"the param has {params[i].shape}")
        started = []
        offset = 0
        for gi, group in enumerate(self.param_groups):
            indices = range(offset, offset + len(group["params"]))
            started.append(bool(indices) and all(
                "momentum_buffer" in saved_state.get(i, {}) for i in indices))
            offset += len(group["params"])
        # Everything checked: apply.
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k not in ("params", "grads")})
        for i, st in enumerate(self.state):
            entry = saved_state.get(i, {})
            for key in list(st):
                if key == "master" and key not in entry:
                    np.copyto(st[key], params[i], casting="unsafe")
                elif key not in entry:
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
    """SGD with momentum, dampening, Nesterov and maximize: torch.optim.SGD's update.

    Per element, with ``g = grad / grad_scale`` (negated when ``maximize``)::

        g = g + weight_decay * p + l1 * sign(p)
        if momentum != 0:
            buf = g on the first step, else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g

    Args:
        params: arrays or param-group dicts (see below).
        lr: learning rate (default 1e-3, as torch).
        momentum: momentum factor (0 disables the buffer).
        dampening: dampening of the momentum (0 <= dampening <= 1).
        weight_decay: L2 penalty added to the gradient.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening == 0).
        maximize: maximize the objective instead of minimizing it.
        l1: L1 penalty (keyword-only, as every option after it), ``l1 * sign(p)`` added to the gradient.
        max_grad_norm: clip by the global L2 norm of all grads, inside the step.
        skip_nonfinite: skip the step (return False) when a grad holds NaN/Inf.
"""
    _state_names = ("momentum_buffer",)

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False, comm: Any = None, shard_state: bool = False,
                 state_dtype: Any = None, master_weights: Union[bool, str] = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        l1=l1, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _group_args(self, group: ParamGroup, index: int) -> Tuple[Any, ...]:
        where = f"SGD: param_groups[{index}]"
        return (_real(group["lr"], (where, "['lr']")), _real(group["momentum"], (where, "['momentum']")),
                _real(group["dampening"], (where, "['dampening']")),
                _real(group["weight_decay"], (where, "['weight_decay']")), _real(group["l1"], (where, "['l1']")),
                _flag(group["nesterov"], (where, "['nesterov']")), _flag(group["maximize"], (where, "['maximize']")),
                not self._started[index] if index < len(self._started) else True)

    def _check_native(self, where: str, args: Tuple[Any, ...]) -> None:
        _core._check_sgd_group(where, args)

    def _native_step(self, plan: Any, grads: Sequence[Array], groups: List[Tuple[Any, ...]],
                     grad_scale: float) -> bool:
        return bool(plan.step_sgd(grads, groups, grad_scale, self.max_grad_norm, self.skip_nonfinite,
                                  self._step + 1))


class Adam(Optimizer):
    """Adam with L2 weight decay, AMSGrad and maximize: torch.optim.Adam's update.

    Per element, with ``g = grad / grad_scale`` (negated when ``maximize``) and ``t`` the
    step count::

        g = g + weight_decay * p + l1 * sign(p)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v) if amsgrad
        p = p - lr / (1 - beta1**t) * m / (sqrt(v or vmax) / sqrt(1 - beta2**t) + eps)

    Args:
        params: arrays or param-group dicts (see below).
        lr: learning rate.
        betas: (beta1, beta2), each in [0, 1).
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient (AdamW decouples it instead).
        amsgrad: keep the running maximum of v and divide by it.
        maximize: maximize the objective instead of minimizing it.
        l1: L1 penalty (keyword-only, as every option after it), ``l1 * sign(p)`` added to the gradient.
        max_grad_norm: clip by the global L2 norm of all grads, inside the step.
        skip_nonfinite: skip the step (return False) when a grad holds NaN/Inf.
"""
    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False, comm: Any = None, shard_state: bool = False,
                 state_dtype: Any = None, master_weights: Union[bool, str] = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        if not isinstance(betas, (tuple, list)):
            raise TypeError(f"{type(self).__name__}: betas must be a pair of numbers, got {betas!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, l1=l1,
                        amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, skip_nonfinite=skip_nonfinite,
                         comm=comm, shard_state=shard_state, state_dtype=state_dtype, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, seed=seed)

    def _needed_state(self, group: ParamGroup) -> Tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _group_args(self, group: ParamGroup, index: int) -> Tuple[Any, ...]:
        name = type(self).__name__
        where = f"{name}: param_groups[{index}]"
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}['betas'] must be a pair of numbers, got {betas!r}")
        return (_real(group["lr"], (where, "['lr']")), _real(betas[0], (where, "['betas'][0]")),
                _real(betas[1], (where, "['betas'][1]")), _real(group["eps"], (where, "['eps']")),
                _real(group["weight_decay"], (where, "['weight_decay']")), _real(group["l1"], (where, "['l1']")),
                _flag(group["amsgrad"], (where, "['amsgrad']")), _flag(group["maximize"], (where, "['maximize']")))

    def _check_native(self, where: str, args: Tuple[Any, ...]) -> None:
        _core._check_adam_group(where, args)

    def _native_step(self, plan: Any, grads: Sequence[Array], groups: List[Tuple[Any, ...]],
                     grad_scale: float) -> bool:
        return bool(plan.step_adam(grads, groups, self._step + 1, self._decoupled, grad_scale,
                                   self.max_grad_norm, self.skip_nonfinite))


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (default 1e-2), torch.optim.AdamW's update.

    As :class:`Adam`, except that weight decay is applied to the param, not the gradient:
    ``p = p * (1 - lr * weight_decay)`` before the Adam update.
"""
    _decoupled = True

    def __init__(self, params: Params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, l1: float = 0.0, max_grad_norm: Optional[float] = None,
                 skip_nonfinite: bool = False, comm: Any = None, shard_state: bool = False,
                 state_dtype: Any = None, master_weights: Union[bool, str] = False,
                 stochastic_rounding: bool = False, seed: int = 0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1,
                         amsgrad=amsgrad, maximize=maximize, max_grad_norm=max_grad_norm,
                         skip_nonfinite=skip_nonfinite, comm=comm, shard_state=shard_state,
                         state_dtype=state_dtype, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, seed=seed)


for _cls in (SGD, Adam, AdamW):
    _cls.__doc__ = (_cls.__doc__ or "") + _COMMON_OPTIONS_DOC
del _cls


from ._optim_family import LAMB, LARS, Adagrad, Adamax, Lion, NAdam, RAdam, RMSprop  # noqa: E402


class LossScaler:
    """Dynamic loss scaling for float16 training: torch.amp.GradScaler's schedule.

    Multiply the loss by ``scale`` before the backward pass, step with
    ``opt.step(grads, grad_scale=scaler.scale)`` on an optimizer built with
    ``skip_nonfinite=True``, then call ``scaler.update(applied)`` with what the step
    returned: a skipped (non-finite) step multiplies the scale by ``backoff_factor``;
    ``growth_interval`` applied steps in a row multiply it by ``growth_factor``.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        init_scale = _real(init_scale, "LossScaler: init_scale")
        growth_factor = _real(growth_factor, "LossScaler: growth_factor")
        backoff_factor = _real(backoff_factor, "LossScaler: backoff_factor")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"LossScaler: init_scale must be finite and > 0, got {init_scale}")
        if not (math.isfinite(growth_factor) and growth_factor > 1):
            raise ValueError(f"LossScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"LossScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
                or growth_interval < 1:
            raise ValueError(f"LossScaler: growth_interval must be an int >= 1, got {growth_interval!r}")
        self.scale: float = init_scale
        self.growth_factor: float = growth_factor
        self.backoff_factor: float = backoff_factor
        self.growth_interval: int = int(growth_interval)
        self._growth_tracker: int = 0

    def update(self, applied: bool) -> None:
        """Adjusts the scale after a step; ``applied`` is what ``step`` returned."""
        if not _flag(applied, "LossScaler.update: applied"):
            self.scale *= self.backoff_factor
            self._growth_tracker = 0
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            self.scale *= self.growth_factor
            self._growth_tracker = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"scale": self.scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"LossScaler: state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"scale", "growth_factor", "backoff_factor", "growth_interval",
                   "_growth_tracker"} - set(state_dict)
        if missing:
            raise ValueError(f"LossScaler: state_dict is missing {sorted(missing)}")
        restored = LossScaler(state_dict["scale"], state_dict["growth_factor"],
                              state_dict["backoff_factor"], state_dict["growth_interval"])
        tracker: Any = state_dict["_growth_tracker"]
        if isinstance(tracker, bool) or not isinstance(tracker, numbers.Integral) or \
                not 0 <= int(tracker) < restored.growth_interval:
            raise ValueError(f"LossScaler: state_dict['_growth_tracker'] must be an int in "
                             f"[0, growth_interval), got {tracker!r}")
        self.__dict__.update(restored.__dict__)
        self._growth_tracker = int(tracker)
