"""nmref: the reference implementation of N:M structured sparsity training (SR-STE, LBC)."""
from .backend import array_module, gpu_available, rng, to_device, to_host
from . import lbc, sad
from .groups import from_groups, to_groups
from .lbc import LBC
from .masks import (Pattern, check_nm, compress_nm, decompress_nm, is_nm, nm_mask, nm_mask_transposable,
                    nm_report, parse_pattern)
from .params import Param
from .sad import SADTracker
from .sparsity import SRSTE, STE, Dense, Fixed, make_method, masked_grad, srste_grad, ste_grad

__version__ = "0.1.0"
