"""A trainable tensor: value, gradient and the optimizer group it belongs to."""
from .backend import array_module, check_array


class Param:
    """``value`` and ``grad`` share shape, dtype and array module; ``group`` picks the optimizer param group;
    ``state`` is the optimizer's per-parameter state (``state["momentum"]``), reachable by sparsity methods."""

    def __init__(self, value, name="", group="weights"):
        check_array(value, "value")
        if not isinstance(group, str) or not isinstance(name, str):
            raise TypeError(f"Param name={name!r} and group={group!r} must be strings (group picks the optimizer "
                            "param group, e.g. 'weights' or 'scores')")
        self.value = value
        self.grad = array_module(value).zeros_like(value)
        self.name = name
        self.group = group
        self.state = {}

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Param({self.name!r}, shape={tuple(self.value.shape)}, dtype={self.value.dtype}, group={self.group!r})"
