"""Learning-rate schedules for the ``fusedops.optim`` classes (``fo.optim.lr_scheduler``).

Each scheduler gives the lr sequence of its torch.optim.lr_scheduler namesake for the
same arguments: the same recurrences, evaluated in the same order, so the floats agree.
A scheduler edits ``optimizer.param_groups[i]["lr"]`` (and, for OneCycleLR, the momentum
or beta1), which the optimizer reads at its next step; it works with any object that has
``param_groups`` (a list of dicts with an ``"lr"``) and, for OneCycleLR's momentum
cycling, ``defaults``. Call ``scheduler.step()`` after ``optimizer.step(...)``.

``state_dict()`` returns plain Python objects (picklable); ``load_state_dict()`` restores
them into a scheduler built on the same optimizer. ``LinearWarmupCosine`` (linear warmup,
then a cosine decay to a floor) has no torch namesake: its formula is in its docstring.
"""

from __future__ import annotations

import bisect
import math
import numbers
import types
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "StepLR",
    "MultiStepLR",
    "LinearLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "SequentialLR",
    "OneCycleLR",
    "LinearWarmupCosine",
    "SupportsParamGroups",
]


class SupportsParamGroups(Protocol):
    """What a scheduler needs of an optimizer: its param groups (dicts with an "lr")."""

    @property
    def param_groups(self) -> List[Dict[str, Any]]: ...


def _groups(optimizer: Any) -> List[Dict[str, Any]]:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "lr" in g for g in groups):
        raise TypeError(f"{type(optimizer).__name__} is not an optimizer: it needs param_groups, "
                        "a list of dicts with an 'lr'")
    return groups


def _per_group(name: str, optimizer: SupportsParamGroups, value: Any) -> List[Any]:
    groups = optimizer.param_groups
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(f"{name} must have the same length as optimizer.param_groups: "
                             f"{name} has {len(value)} values, param_groups has {len(groups)}")
        return list(value)
    return [value] * len(groups)


def _integer(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{where} must be an int >= {low}, got {value!r}")
    return int(value)


class LRScheduler:
    """Base class: ``step()``, ``get_last_lr()``, ``state_dict()``, ``load_state_dict()``.

    Subclasses define ``get_lr()``, the lrs for ``self.last_epoch`` (read from the groups'
    current lrs for recursive schedules); ``_initial`` is True during the step the
    constructor takes.
    """

    last_epoch: int
    base_lrs: List[float]
    _step_count: int
    _last_lr: List[float]
    _initial: bool = False
    _transient: Tuple[str, ...] = ("optimizer", "_initial")

    def __init__(self, optimizer: SupportsParamGroups, last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        self.optimizer = optimizer
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral) or last_epoch < -1:
            raise ValueError(f"last_epoch must be an int >= -1, got {last_epoch!r}")
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] when "
                                   "resuming a scheduler with last_epoch >= 0")
        self.base_lrs: List[float] = [group["initial_lr"] for group in groups]
        self.last_epoch = int(last_epoch)
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._initial = True
        try:
            self.step()
        finally:
            self._initial = False

    def get_lr(self) -> List[float]:
        raise NotImplementedError

    def get_last_lr(self) -> List[float]:
        """The lrs set by the last ``step()``, one per param group."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advances the schedule one step and writes the new lrs into the param groups."""
        self._step_count += 1
        self.last_epoch += 1
        self._set_lrs(self.get_lr())

    def _set_lrs(self, values: Sequence[float]) -> None:
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise ValueError(f"{type(self).__name__}: {len(values)} lrs for {len(groups)} param groups")
        for group, lr in zip(groups, values):
            # A schedule that ends at 0 (LinearLR with end_factor=0, say) can land a rounding
            # error below it, -5e-17 where torch's own sequence does too; the optimizers
            # reject a negative lr, so such a value is 0.
            if lr < 0 and lr > -1e-12 * abs(group.get("initial_lr", lr)):
                lr = 0.0
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in groups]

    def _restart(self) -> None:
        """Goes to step 0 (by the closed form where the schedule has one), as torch's
        SequentialLR does to a scheduler at its milestone."""
        self.last_epoch = 0
        closed = getattr(self, "_closed_form_lr", None)
        self._set_lrs(closed() if closed is not None else self.get_lr())

    def _current_lrs(self) -> List[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        """The schedule's position and settings as plain Python objects (not the optimizer)."""
        return {k: _plain_copy(v) for k, v in self.__dict__.items() if k not in self._transient}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a ``state_dict()`` taken from the same kind of scheduler."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(self).__name__}: state_dict must be a dict, got "
                            f"{type(state_dict).__name__}")
        missing = {"last_epoch", "base_lrs", "_step_count", "_last_lr"} - state_dict.keys()
        if missing:
            raise ValueError(f"{type(self).__name__}: state_dict lacks {sorted(missing)}")
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{type(self).__name__}: state_dict has {len(state_dict['base_lrs'])} "
                             f"base lrs, the optimizer has {len(self.optimizer.param_groups)} param groups")
        self.__dict__.update({k: _plain_copy(v) for k, v in state_dict.items()
                              if k not in self._transient})


def _plain_copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    if isinstance(value, Counter):
        return Counter(value)
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    return value


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(step), one lambda or one per param group (torch's LambdaLR).

    ``state_dict()`` holds None for plain functions and the ``__dict__`` of callable objects,
    as torch does.
    """

    def __init__(self, optimizer: SupportsParamGroups,
                 lr_lambda: Union[Callable[[int], float], Sequence[Callable[[int], float]]],
                 last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != len(groups):
                raise ValueError(f"Expected {len(groups)} lr_lambdas, but got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * len(groups)
        for i, fn in enumerate(self.lr_lambdas):
            if not callable(fn):
                raise TypeError(f"lr_lambda[{i}] must be callable, got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    _transient = ("optimizer", "_initial", "lr_lambdas")

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else dict(fn.__dict__)
                            for fn in self.lr_lambdas]
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = state_dict.get("lr_lambdas", [None] * len(self.lr_lambdas))
        if len(saved) != len(self.lr_lambdas):
            raise ValueError(f"LambdaLR: state_dict has {len(saved)} lr_lambdas, the scheduler "
                             f"has {len(self.lr_lambdas)}")
        super().load_state_dict(state_dict)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)

    def get_lr(self) -> List[float]:
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]


class StepLR(LRScheduler):
    """lr multiplied by gamma every step_size steps (torch's StepLR)."""

    def __init__(self, optimizer: SupportsParamGroups, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _integer(step_size, "StepLR: step_size", 1)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> List[float]:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr multiplied by gamma at each milestone (repeated milestones count twice), as torch."""

    def __init__(self, optimizer: SupportsParamGroups, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.milestones = Counter(_integer(m, "MultiStepLR: milestones[...]", 0) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [lr * factor for lr in self._current_lrs()]

    def _closed_form_lr(self) -> List[float]:
        marks = sorted(self.milestones.elements())
        return [base * self.gamma ** bisect.bisect_right(marks, self.last_epoch) for base in self.base_lrs]


class LinearLR(LRScheduler):
    """lr factor moving linearly from start_factor to end_factor over total_iters steps."""

    def __init__(self, optimizer: SupportsParamGroups, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError("LinearLR: start_factor must be in (0, 1], got " + repr(start_factor))
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("LinearLR: end_factor must be in [0, 1], got " + repr(end_factor))
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = _integer(total_iters, "LinearLR: total_iters", 1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        lrs = self._current_lrs()
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in lrs]
        if self._initial or self.last_epoch > self.total_iters:
            return lrs
        delta = self.end_factor - self.start_factor
        factor = 1.0 + delta / (self.total_iters * self.start_factor + (self.last_epoch - 1) * delta)
        return [lr * factor for lr in lrs]

    def _closed_form_lr(self) -> List[float]:
        frac = min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * (self.start_factor + (self.end_factor - self.start_factor) * frac)
                for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """lr multiplied by gamma every step (torch's ExponentialLR)."""

    def __init__(self, optimizer: SupportsParamGroups, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        if self._initial:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self) -> List[float]:
        return [base * self.gamma ** self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """torch's CosineAnnealingLR: the recursive cosine between base_lr and eta_min with
    period 2 * T_max (it rises again after T_max steps, as torch's does)."""

    def __init__(self, optimizer: SupportsParamGroups, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _integer(T_max, "CosineAnnealingLR: T_max", 1)
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        lrs = self._current_lrs()
        t, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return lrs
        if self._step_count == 1 and t > 0:
            return [lo + (base - lo) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (base - lo) * (1 - math.cos(math.pi / T)) / 2
                    for base, lr in zip(self.base_lrs, lrs)]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - lo) + lo for lr in lrs]

    def _closed_form_lr(self) -> List[float]:
        lo = self.eta_min
        return [lo + (base - lo) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """Runs schedulers one after another, switching at the milestones (torch's SequentialLR):
    at a milestone the next scheduler restarts from its own step 0."""

    def __init__(self, optimizer: SupportsParamGroups, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int],
                 last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("SequentialLR expects at least one scheduler")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise TypeError(f"SequentialLR: schedulers[{i}] must be an LRScheduler, got "
                                f"{type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: schedulers[{i}] belongs to another optimizer")
        milestones = [_integer(m, "SequentialLR: milestones[...]", 0) for m in milestones]
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR expects one milestone fewer than schedulers, got "
                             f"{len(schedulers)} schedulers and {len(milestones)} milestones")
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = int(last_epoch) + 1
        self.optimizer = optimizer
        self.base_lrs = [group["initial_lr"] for group in groups]
        self._step_count = 0
        for group in groups:
            group["lr"] = group["initial_lr"]
        # The schedulers each took their initial step when built: undo those, then let
        # the first one take its initial step again.
        for s in schedulers:
            _rewind(s)
        first = schedulers[bisect.bisect_right(milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def step(self) -> None:
        self._step_count += 1
        self.last_epoch += 1
        idx = bisect.bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._restart()
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    _transient = ("optimizer", "_initial", "_schedulers")

    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = state_dict.get("_schedulers")
        if not isinstance(saved, list) or len(saved) != len(self._schedulers):
            raise ValueError(f"SequentialLR: state_dict must hold {len(self._schedulers)} "
                             "scheduler states under '_schedulers'")
        super().load_state_dict(state_dict)
        for s, sd in zip(self._schedulers, saved):
            s.load_state_dict(sd)


def _rewind(scheduler: LRScheduler) -> None:
    if isinstance(scheduler, SequentialLR):
        for s in scheduler._schedulers:
            _rewind(s)
    scheduler.last_epoch -= 1


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin), as torch's OneCycleLR: lr from max_lr/div_factor up
    to max_lr over pct_start of total_steps, then down to initial_lr/final_div_factor
    (three_phase: up, back down to initial_lr, then to the minimum); with cycle_momentum the
    group's momentum (or betas[0]) moves the opposite way between base_momentum and
    max_momentum. Stepping past total_steps raises ValueError."""

    def __init__(self, optimizer: SupportsParamGroups, max_lr: Union[float, Sequence[float]],
                 total_steps: Optional[int] = None,
                 epochs: Optional[int] = None, steps_per_epoch: Optional[int] = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: Union[float, Sequence[float]] = 0.85,
                 max_momentum: Union[float, Sequence[float]] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        self.optimizer = optimizer
        if total_steps is not None:
            self.total_steps = _integer(total_steps, "OneCycleLR: total_steps", 1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_integer(epochs, "OneCycleLR: epochs", 1)
                                * _integer(steps_per_epoch, "OneCycleLR: steps_per_epoch", 1))
        else:
            raise ValueError("OneCycleLR: define either total_steps or (epochs and steps_per_epoch)")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: pct_start must be a float in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', "
                             f"got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        up_end = float(pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        if three_phase:
            self._phases = [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * pct_start * self.total_steps) - 2, "max_lr", "initial_lr", "base_momentum",
                 "max_momentum"),
                (last, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._phases = [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (last, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for group, top in zip(groups, max_lrs):
                group["initial_lr"] = top / div_factor
                group["max_lr"] = top
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            defaults = getattr(optimizer, "defaults", {})
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError("OneCycleLR: the optimizer must have momentum or betas for "
                                 "cycle_momentum=True")
            self.use_beta1 = "betas" in defaults
            tops = _per_group("max_momentum", optimizer, max_momentum)
            bases = _per_group("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                for top, base, group in zip(tops, bases, groups):
                    self._set_momentum(group, top)
                    group["max_momentum"] = top
                    group["base_momentum"] = base
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: Dict[str, Any], value: float) -> None:
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> List[float]:
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {t} times; total_steps is {self.total_steps}")
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for i, (end, lr_from, lr_to, mom_from, mom_to) in enumerate(self._phases):
                if t <= end or i == len(self._phases) - 1:
                    pct = (t - start) / (end - start)
                    lrs.append(self._anneal(group[lr_from], group[lr_to], pct))
                    if self.cycle_momentum:
                        self._set_momentum(group, self._anneal(group[mom_from], group[mom_to], pct))
                    break
                start = end
        return lrs


class LinearWarmupCosine(LRScheduler):
    """Linear warmup, then a half cosine down to a floor (no torch namesake).

    At step t (0-based), for each group's base lr b and floor eta_min:

    - t < warmup_steps: ``b * (start_factor + (1 - start_factor) * t / warmup_steps)``
    - warmup_steps <= t <= total_steps:
      ``eta_min + (b - eta_min) * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2``
    - t > total_steps: eta_min.

    With start_factor=0 and eta_min=0 this is the usual "cosine schedule with warmup"
    (transformers' get_cosine_schedule_with_warmup).
    """

    start_factor: float
    eta_min: float

    def __init__(self, optimizer: SupportsParamGroups, warmup_steps: int, total_steps: int, *,
                 start_factor: float = 0.0,
                 eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.warmup_steps = _integer(warmup_steps, "LinearWarmupCosine: warmup_steps", 0)
        self.total_steps = _integer(total_steps, "LinearWarmupCosine: total_steps", 1)
        if self.total_steps <= self.warmup_steps:
            raise ValueError(f"LinearWarmupCosine: total_steps ({total_steps}) must exceed "
                             f"warmup_steps ({warmup_steps})")
        if not (isinstance(start_factor, numbers.Real) and 0 <= start_factor <= 1):
            raise ValueError(f"LinearWarmupCosine: start_factor must be in [0, 1], got {start_factor!r}")
        if not (isinstance(eta_min, numbers.Real) and math.isfinite(eta_min) and eta_min >= 0):
            raise ValueError(f"LinearWarmupCosine: eta_min must be finite and >= 0, got {eta_min!r}")
        self.start_factor = float(start_factor)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        t, warm, total, lo = self.last_epoch, self.warmup_steps, self.total_steps, self.eta_min
        if t < warm:
            factor = self.start_factor + (1.0 - self.start_factor) * t / warm
            return [base * factor for base in self.base_lrs]
        if t > total:
            return [lo for _ in self.base_lrs]
        cos = (1 + math.cos(math.pi * (t - warm) / (total - warm))) / 2
        return [lo + (base - lo) * cos for base in self.base_lrs]
