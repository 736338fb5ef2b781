"""Sparsity methods: how a layer's dense weight W becomes the forward weight W~ and how
g = dL/dW~ becomes the gradient handed to the optimizer.

One small interface, one instance per weight (a layer calls ``method.bind(weight_param, layout)``):
  masked(w) -> w_tilde       forward weight; stores the mask it used in ``self.mask``
  weight_grad(g, w) -> dw    the rule of the method (below), using the mask of the last forward
  params() -> [Param]        the method's own trainable parameters (LBC scores), [] otherwise
  on_epoch(epoch, epochs)    called by the training loop at the start of each epoch
  before_step()              called before every optimizer step's forward (LBC removal)
  state_dict() / load_state_dict(d)   host arrays and scalars, for checkpoints
"""
from .masks import nm_mask


# The three weight-gradient rules, side by side (g = dL/dW~):
def ste_grad(g, w, mask):
    """STE: dW = g, pruned weights included (Zhou et al. 2021, Eq. 2)."""
    return g


def srste_grad(g, w, mask, lam=2e-4):
    """SR-STE: dW = g + lam * (1 - E) * W (Zhou et al. 2021, Eq. 5)."""
    return g + lam * (~mask) * w


def masked_grad(g, w, mask):
    """Masked: dW = E * g (fixed-mask fine-tuning; LBC's weight rule, Zhang et al. 2022)."""
    return mask * g


class Method:
    """Base: dense behaviour, no state. Subclasses override ``masked`` and ``weight_grad``."""

    n = m = None
    mask = None

    def bind(self, weight, layout):
        self.weight, self.layout = weight, layout
        return self

    def masked(self, w):
        return w

    def weight_grad(self, g, w):
        return g

    def params(self):
        return []

    def on_epoch(self, epoch, epochs):
        pass

    def before_step(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f"{type(self).__name__}()" if self.n is None else f"{type(self).__name__}({self.n}, {self.m})"


class Dense(Method):
    """No sparsity: W~ = W, dW = g."""


class STE(Method):
    """N:M magnitude mask recomputed at every forward; straight-through gradient (ALGORITHMS.md section 2)."""

    def __init__(self, n, m):
        self.n, self.m = n, m

    def masked(self, w):
        self.mask = nm_mask(w, self.n, self.m, self.layout)
        return w * self.mask

    def weight_grad(self, g, w):
        return ste_grad(g, w, self.mask)


class SRSTE(STE):
    """STE plus the sparse-refined term lam * (1 - E) * W, before the optimizer (section 3)."""

    def __init__(self, n, m, lam=2e-4):
        super().__init__(n, m)
        self.lam = lam

    def weight_grad(self, g, w):
        return srste_grad(g, w, self.mask, self.lam)

    def __repr__(self):
        return f"SRSTE({self.n}, {self.m}, lam={self.lam:g})"
