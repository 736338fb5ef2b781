"""nmref: the reference implementation of N:M structured sparsity training (SR-STE, LBC)."""
from .backend import array_module, gpu_available, rng, to_device, to_host
from . import lbc
from .groups import from_groups, to_groups
from .lbc import LBC
from .masks import nm_mask
from .params import Param
from .sad import SADTracker, sad
from .sparsity import SRSTE, STE, Dense, Fixed, make_method, masked_grad, srste_grad, ste_grad

__version__ = "0.1.0"
