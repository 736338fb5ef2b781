"""Sparsity methods: how a layer's dense weight W becomes the forward weight W~ and how
g = dL/dW~ becomes the gradient handed to the optimizer.

One small interface, one instance per weight (a layer calls ``method.bind(weight_param, layout)``):
  masked(w) -> w_tilde       forward weight; stores the mask it used in ``self.mask`` (None when dense)
  weight_grad(g, w) -> dw    the rule of the method (below), using the mask of the last forward
  params() -> [Param]        the method's own trainable parameters (LBC scores), [] otherwise
  on_epoch(epoch, epochs)    called by the training loop at the start of each epoch
  before_step()              called before every optimizer step's forward (LBC removal)
  density()                  kept fraction of the last forward mask (1.0 when dense), for metrics
  state_dict() / load_state_dict(d)   host arrays and scalars, for checkpoints

Layers take a factory, a zero-arg callable returning a fresh method: ``make_method("srste", "2:4")``.
"""
import functools
import inspect
import math
import numbers

from .backend import array_module, check_array, to_host
from .groups import check_straddle, to_groups
from .masks import check_float, check_pattern, nm_mask, parse_pattern


# The three weight-gradient rules, side by side (g = dL/dW~; results in w's dtype):
def ste_grad(g, w, mask):
    """STE: dW = g, pruned weights included (Zhou et al. 2021, Eq. 2)."""
    check_grad_args(g, w, mask)
    return g.astype(w.dtype, copy=False)


def srste_grad(g, w, mask, lam=2e-4):
    """SR-STE: dW = g + lam * (1 - E) * W (Zhou et al. 2021, Eq. 5)."""
    lam = check_lam(lam)
    check_grad_args(g, w, mask)
    return g.astype(w.dtype, copy=False) + (~mask * w.dtype.type(lam)) * w     # a Python float would promote


def masked_grad(g, w, mask):
    """Masked: dW = E * g (fixed-mask fine-tuning; LBC's weight rule, Zhang et al. 2022)."""
    check_grad_args(g, w, mask)
    return mask * g.astype(w.dtype, copy=False)


def check_grad_args(g, w, mask):
    """g (dL/dW~) a float array of w's shape; mask a bool array of w's shape (True = kept); no broadcasting."""
    check_float(w, "w")
    check_float(g, "g")
    check_array(mask, "mask")
    if tuple(g.shape) != tuple(w.shape):
        raise ValueError(f"g has shape {tuple(g.shape)} but w has {tuple(w.shape)}; g = dL/dW~ must have w's shape")
    if mask.dtype != bool:
        raise TypeError(f"mask must be a bool array (True = kept), got dtype {mask.dtype}; for a 0/1 mask pass "
                        "mask != 0")
    if tuple(mask.shape) != tuple(w.shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but w has {tuple(w.shape)}; pass the mask of this "
                         "weight (same shape, no broadcasting)")


class Method:
    """Base: dense behaviour, no state. Subclasses override ``masked`` and ``weight_grad``."""

    n = m = None
    mask = None
    weight = layout = None

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

    def density(self):
        """Kept fraction of the last forward mask; 1.0 when the forward is dense."""
        if self.mask is None:
            return 1.0
        return float(array_module(self.mask).count_nonzero(self.mask)) / self.mask.size

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f"{type(self).__name__}()" if self.n is None else f"{type(self).__name__}({self.n}, {self.m})"


class Dense(Method):
    """No sparsity: W~ = W, dW = g."""


class STE(Method):
    """N:M magnitude mask recomputed at every forward; straight-through gradient (docs/algorithms.md section 2).

    ``straddle=True`` lets groups cross rows / kernel positions like the public SR-STE code (groups.py)."""

    def __init__(self, n, m, straddle=False):
        check_pattern(n, m)
        check_straddle(straddle)
        self.n, self.m, self.straddle = int(n), int(m), straddle

    def bind(self, weight, layout):
        to_groups(weight.value, self.m, layout, self.straddle)     # raises now, not at the first forward
        return super().bind(weight, layout)

    def nm_mask(self, w):
        """The N:M magnitude mask of ``w`` in this method's layout (True = kept)."""
        if self.layout is None:
            raise RuntimeError(f"{self!r} is not bound to a weight: call bind(param, layout) first "
                               "(layers do this when they create their method)")
        return nm_mask(w, self.n, self.m, self.layout, self.straddle)

    def masked(self, w):
        self.mask = self.nm_mask(w)                                  # like w, bool
        return w * self.mask

    def weight_grad(self, g, w):
        self._require_forward()
        return ste_grad(g, w, self.mask)

    def _require_forward(self):
        if self.mask is None:
            raise RuntimeError(f"{self!r}.weight_grad needs the mask of a forward: call masked(w) first")

    def density(self):
        return self.n / self.m if self.mask is None else super().density()


def check_lam(lam):
    """lam (SR-STE's lambda_W) as a float; TypeError unless real, ValueError unless finite. A negative lam is
    allowed: the SR-STE paper's ablation (notebook 03, figure 3) uses one to show that it raises SAD."""
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a real number (the SR-STE decay lambda_W, default 2e-4), got {lam!r}")
    if not math.isfinite(lam):
        raise ValueError(f"lam={lam} is not finite; use a finite lambda_W such as 2e-4 (0 gives plain STE)")
    return float(lam)


class SRSTE(STE):
    """STE plus the sparse-refined term lam * (1 - E) * W, before the optimizer (section 3)."""

    def __init__(self, n, m, lam=2e-4, straddle=False):
        super().__init__(n, m, straddle)
        self.lam = check_lam(lam)

    def weight_grad(self, g, w):
        self._require_forward()
        return srste_grad(g, w, self.mask, self.lam)

    def __repr__(self):
        return f"SRSTE({self.n}, {self.m}, lam={self.lam:g})"


class Fixed(STE):
    """Dense until epoch ``fix_at`` starts, then the N:M mask of the weights at that moment, kept for good;
    dW = E * g (ASP-style fine-tuning). With fix_at=0 the mask comes from the weights the run starts from
    (e.g. a dense checkpoint loaded into the model before training). The mask is taken at ``on_epoch(fix_at)``
    or at the first forward from that epoch on, whichever comes first; ``fix()`` retakes it on demand."""

    def __init__(self, n, m, fix_at=0, straddle=False):
        super().__init__(n, m, straddle)
        if isinstance(fix_at, bool) or not isinstance(fix_at, numbers.Integral) or fix_at < 0:
            raise ValueError(f"fix_at={fix_at!r} must be an epoch index >= 0 (0 fixes the mask at the start)")
        self.fix_at = int(fix_at)
        self.epoch = 0
        self.fixed_mask = None
        self._dense_mask = None

    @classmethod
    def from_weights(cls, w, n, m, layout="linear", straddle=False):
        """A Fixed method whose mask is already taken from ``w`` (a dense checkpoint's weight)."""
        method = cls(n, m, straddle=straddle)
        method.layout = layout
        method.fix(w)
        return method

    @property
    def fixed(self):
        return self.fixed_mask is not None

    def bind(self, weight, layout):
        if self.fixed:
            if tuple(self.fixed_mask.shape) != tuple(weight.value.shape) or layout != self.layout:
                raise ValueError(f"the fixed mask was made for shape {tuple(self.fixed_mask.shape)}, layout "
                                 f"{self.layout!r}; this weight has shape {tuple(weight.value.shape)}, layout "
                                 f"{layout!r}: build the mask from this layer's weight")
            self.fixed_mask = array_module(weight.value).asarray(self.fixed_mask)
        return super().bind(weight, layout)

    def fix(self, w=None):
        """Compute the mask once from ``w`` (default: the bound weight's current value) and keep it."""
        if w is None and self.weight is None:
            raise RuntimeError(f"{self!r}.fix() without w needs a bound weight: call bind(param, layout) first "
                               "or pass the weight, fix(w)")
        w = self.weight.value if w is None else w
        self.fixed_mask = self.nm_mask(w)                            # like w, bool
        return self

    def on_epoch(self, epoch, epochs):
        self.epoch = epoch
        if not self.fixed and epoch >= self.fix_at and self.weight is not None:
            self.fix()

    def masked(self, w):
        if not self.fixed and self.epoch >= self.fix_at:
            self.fix(w)
        if self.fixed:
            self.mask = self.fixed_mask
            return w * self.mask
        if self._dense_mask is None or self._dense_mask.shape != w.shape:
            self._dense_mask = array_module(w).ones(w.shape, dtype=bool)
        self.mask = self._dense_mask                                 # all kept before fixing
        return w

    def weight_grad(self, g, w):
        return masked_grad(g, w, self.mask) if self.fixed else g

    def state_dict(self):
        state = {"fixed": self.fixed, "epoch": self.epoch}
        if self.fixed:
            state["mask"] = to_host(self.fixed_mask)
        return state

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self.fixed_mask = None
        if bool(state["fixed"]):
            like = self.weight.value if self.weight is not None else state["mask"]
            self.fixed_mask = array_module(like).asarray(state["mask"], dtype=bool)

    def __repr__(self):
        return f"Fixed({self.n}, {self.m}, fix_at={self.fix_at})"


METHODS = ("dense", "ste", "srste", "fixed", "lbc")


def method_class(name):
    """The class behind a method name ("dense", "ste", "srste", "fixed", "lbc"; case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"method name must be a string, one of {METHODS}, got {name!r}")
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key == "lbc":
        from .lbc import LBC
        return LBC
    classes = {"dense": Dense, "ste": STE, "srste": SRSTE, "fixed": Fixed}
    if key not in classes:
        raise ValueError(f"unknown sparsity method {name!r}; choose one of {METHODS}")
    return classes[key]


def make_method(name, pattern=None, **options):
    """Zero-arg factory of fresh method instances, e.g. ``make_method("srste", "2:4", lam=2e-4)``.

    ``pattern`` ("n:m" or (n, m)) is required for every method but "dense" (where it is ignored); options are
    the method's keyword arguments (SRSTE: lam, straddle; Fixed: fix_at, straddle; LBC: t_i, t_f, ...)."""
    cls = method_class(name)
    if cls is Dense:
        if options:
            raise TypeError(f"method 'dense' takes no options, got {sorted(options)}")
        if pattern is not None:
            parse_pattern(pattern)
        return Dense
    if pattern is None:
        raise ValueError(f"method {name!r} needs a pattern: make_method({name!r}, '2:4', ...)")
    parsed = parse_pattern(pattern)
    n, m = parsed.n_keep, parsed.m
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("n", "m")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method {name!r}; it accepts {accepted}")
    cls(n, m, **options)                                             # bad values raise here, once
    return functools.partial(cls, n, m, **options)
