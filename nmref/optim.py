"""SGD with momentum, Nesterov, coupled weight decay and parameter groups (torch.optim.SGD exactly), and
learning-rate schedules as pure functions of the step that return a factor for ``SGD.set_lr_scale``.

Per parameter, with g its gradient (PyTorch's rule, docs/algorithms.md section 6b):
  g = g + weight_decay * w
  v = g at the first step, then v = momentum * v + g          (dampening 0)
  d = g + momentum * v if nesterov else v                     (d = g without momentum)
  w = w - lr * d
"""
import math
import numbers

import numpy as np

from .backend import array_module, check_state, device_of, to_device, to_host
from .params import Param

GROUP_KEYS = ("lr", "momentum", "nesterov", "weight_decay")


def _check_real(name, value, where=""):
    """A hyper-parameter: a real, finite number (TypeError / ValueError naming it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"SGD {name}={value!r} must be a number{where}")
    if not math.isfinite(value):
        raise ValueError(f"SGD {name}={value} must be finite{where}")


def _check_hyper(lr, momentum, nesterov, weight_decay, where):
    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        _check_real(name, value, where)
    if not lr >= 0:
        raise ValueError(f"SGD lr={lr} must be >= 0{where}")
    if not 0 <= momentum < 1:
        raise ValueError(f"SGD momentum={momentum} must be in [0, 1){where}")
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"SGD nesterov={nesterov!r} must be True or False{where}")
    if nesterov and momentum <= 0:
        raise ValueError(f"SGD nesterov=True needs momentum > 0, got momentum={momentum}{where}")
    if not weight_decay >= 0:
        raise ValueError(f"SGD weight_decay={weight_decay} must be >= 0{where}")


class SGD:
    """torch.optim.SGD semantics; ``groups`` is a list of Params or of dicts {"params": [...], "lr": ...,
    "momentum": ..., "nesterov": ..., "weight_decay": ...} overriding the defaults given here."""

    def __init__(self, groups, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        if isinstance(groups, (Param, dict)):
            raise TypeError(f"SGD groups must be a list of Params or of dicts, got one {type(groups).__name__}; "
                            "wrap it in a list, e.g. SGD([param], lr=0.1) or SGD(model.params(), lr=0.1)")
        groups = list(groups)
        if not groups:
            raise ValueError("SGD got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        self.groups, seen = [], set()
        for i, given in enumerate(groups):
            if not isinstance(given, dict):
                raise TypeError(f"SGD groups must be all Params or all dicts, group {i} is a {type(given).__name__}")
            if isinstance(given.get("params"), Param):
                raise TypeError(f"SGD group {i}'s params is one Param; give a list: {{'params': [param], ...}}")
            unknown = set(given) - {"params", *GROUP_KEYS}
            if unknown:
                raise ValueError(f"SGD group {i} has unknown keys {sorted(unknown)}; allowed: params, {GROUP_KEYS}")
            group = {**defaults, **given, "params": list(given.get("params", []))}
            _check_hyper(group["lr"], group["momentum"], group["nesterov"], group["weight_decay"], f" (group {i})")
            for p in group["params"]:
                if not isinstance(p, Param):
                    raise TypeError(f"SGD group {i} holds a {type(p).__name__}, not a Param; pass model.params() "
                                    "(or wrap an array: Param(array, name))")
                if p.value.dtype.kind != "f":
                    raise TypeError(f"Param {p.name!r} has dtype {p.value.dtype}; SGD updates floating-point "
                                    "parameters: Param(value.astype(np.float32), name)")
                if id(p) in seen:
                    raise ValueError(f"Param {p.name!r} appears in more than one SGD group")
                seen.add(id(p))
            group["base_lr"] = group["lr"]
            self.groups.append(group)
        self.lr_scale = 1.0

    def params(self):
        return [p for group in self.groups for p in group["params"]]

    def set_lr_scale(self, factor):
        """Every group's lr = its base lr * factor (the schedules below return the factor)."""
        _check_real("lr scale factor", factor)
        if not factor >= 0:
            raise ValueError(f"lr scale factor={factor} must be >= 0")
        self.lr_scale = float(factor)
        for group in self.groups:
            group["lr"] = group["base_lr"] * self.lr_scale

    def zero_grad(self):
        for p in self.params():
            p.zero_grad()

    def step(self):
        for group in self.groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                g = p.grad
                if wd:
                    g = g + wd * p.value
                if mu:
                    velocity = p.state.get("momentum")
                    if velocity is None:
                        velocity = p.state["momentum"] = g.copy()
                    else:
                        velocity *= mu
                        velocity += g
                    g = g + mu * velocity if group["nesterov"] else velocity
                p.value -= lr * g

    def state_dict(self):
        """Host arrays: "lr_scale" and "momentum/<param name>" for every parameter that has a buffer."""
        state = {"lr_scale": np.asarray(self.lr_scale)}
        for p in self._named_params():
            if "momentum" in p.state:
                state[f"momentum/{p.name}"] = to_host(p.state["momentum"]).copy()
        return state

    def load_state_dict(self, state):
        check_state(state, "SGD")
        by_name = {p.name: p for p in self._named_params()}
        unknown = [k for k in state if k != "lr_scale" and not (k.startswith("momentum/") and k[9:] in by_name)]
        if unknown:
            raise KeyError(f"SGD.load_state_dict: keys {unknown} match no parameter of this optimizer")
        for p in by_name.values():
            p.state.pop("momentum", None)
            key = f"momentum/{p.name}"
            if key in state:
                if tuple(state[key].shape) != tuple(p.value.shape):
                    raise ValueError(f"momentum for {p.name!r} has shape {tuple(state[key].shape)}, "
                                     f"the parameter {tuple(p.value.shape)}")
                value = to_device(np.asarray(state[key]), device_of(p.value))
                p.state["momentum"] = array_module(p.value).asarray(value, dtype=p.value.dtype).copy()
        self.set_lr_scale(float(state.get("lr_scale", 1.0)))

    def _named_params(self):
        params = self.params()
        names = [p.name for p in params]
        if "" in names or len(set(names)) != len(names):
            raise ValueError("SGD.state_dict needs unique, non-empty Param names; build the model with "
                             "Sequential (which names them) or set Param.name")
        return params


def param_groups(params, overrides=None):
    """Split Params by ``Param.group`` into SGD groups; ``overrides`` maps a group name to its settings,
    e.g. {"scores": {"weight_decay": 1e-4}}."""
    overrides = overrides or {}
    names = list(dict.fromkeys(p.group for p in params))
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"param_groups overrides name groups {sorted(unknown)} that no Param has; groups: {names}")
    return [{"params": [p for p in params if p.group == name], **overrides.get(name, {})} for name in names]


# ---------------------------------------------------------------- schedules: factor(step) in [0, 1]
def _check_step(step, total_steps=None):
    for name, value in (("step", step), ("total_steps", total_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not math.isfinite(value)):
            raise TypeError(f"{name}={value!r} must be a finite number (an iteration count)")
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")


def warmup_cosine(step, total_steps, warmup_steps):
    """step / warmup for step < warmup, then (1 + cos(pi (step - warmup) / (total - warmup))) / 2, 0 from
    total on: the per-iteration schedule of the SR-STE code (linear warm-up from 0, cosine to 0)."""
    _check_step(step, total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def step_decay(step, milestones, gamma=0.1):
    """gamma ** (number of milestones <= step), as torch's MultiStepLR."""
    _check_step(step)
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma={gamma} must be in [0, 1]")
    return gamma ** sum(1 for m in milestones if m <= step)


def constant(step):
    """1 at every step."""
    _check_step(step)
    return 1.0
