"""2:4 sparse matmul on the GPU through cuSPARSELt: y = x @ W.T (+ bias) (docs/algorithms.md section 6).

W (out, in) is 2:4 along ``in``; x (batch, in) and y (batch, out) are row-major CuPy arrays, read and written in
place (no copies). cuSPARSELt computes D = op(A) op(B); a *layout* says how these arrays are described to it:
``wA_*``: W is the structured A and D = W x^T is y seen column-major (out, batch); ``wB_*``: x is A, W the
structured B and D = x W^T is y row-major. ``_wrow``/``_wcol``: W described as row-major (out, in) or as
column-major (in, out), with the matching op; ``_xrow``/``_xcol`` likewise for x. The weight is checked with the
library's prune check; a plan, its algorithm search and the weight compressed through it are cached per batch
size; every call runs on the current CuPy stream.

Needs CuPy, nvmath-python (``nvmath.bindings.cusparseLt``; CuPy's wheels ship no cuSPARSELt module) and
libcusparseLt (``nvidia-cusparselt-cu13``). Imported lazily: ``import nmref`` never loads it.
"""
import os
import weakref

import numpy as np

SPARSE_MULTIPLE = {"float16": 16, "bfloat16": 16, "int8": 32}      # W rows, cols and ld
DENSE_MULTIPLE = {"float16": 8, "bfloat16": 8, "int8": 16}         # batch: rows of x, columns of y^T
OUT_DTYPES = {"float16": ("float16",), "bfloat16": ("bfloat16",),
              "int8": ("int32", "int8", "float16", "bfloat16")}
ALIGNMENT = 16                                                     # bytes, every operand pointer
_CUDA_DTYPE = {"float16": 2, "bfloat16": 14, "int8": 3, "int32": 10, "float32": 0}   # cudaDataType
_ORDER_COL, _ORDER_ROW = 1, 2                                      # cusparseOrder_t
_OP_N, _OP_T = 0, 1                                                # cusparseOperation_t
_COMPUTE_32I, _COMPUTE_32F = 0, 2                                  # cusparseComputeType
_SPARSITY_50 = 0
_BIAS_POINTER = 8                                                  # CUSPARSELT_MATMUL_BIAS_POINTER
_ALG_DEFAULT = 0
_ALG_CONFIG_ID = 0                                                 # CUSPARSELT_MATMUL_ALG_CONFIG_ID
LAYOUTS = {      # name: (operand that holds W, W's descriptor order, x's descriptor order)
    "wA_wrow_xrow": ("A", "row", "row"), "wA_wrow_xcol": ("A", "row", "col"),
    "wA_wcol_xrow": ("A", "col", "row"), "wA_wcol_xcol": ("A", "col", "col"),
    "wB_wrow_xrow": ("B", "row", "row"), "wB_wrow_xcol": ("B", "row", "col"),
    "wB_wcol_xrow": ("B", "col", "row"), "wB_wcol_xcol": ("B", "col", "col"),
}
DEFAULT_LAYOUTS = ("wA_wrow_xrow",)          # candidates when layout=None; several: the fastest per batch size
ENGINES = ("cusparselt", "mma_sp")           # cuSPARSELt's kernels; nmref's own (nmref/kernels/sparse_mma.py)


def _bindings():
    """(cupy, nvmath.bindings.cusparseLt), or a RuntimeError that says what to install."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("nmref.cusparselt needs CuPy and a CUDA GPU: pip install -e '.[gpu]'") from exc
    try:
        from nvmath.bindings import cusparseLt
    except Exception as exc:
        raise RuntimeError("nmref.cusparselt needs nvmath-python for its cuSPARSELt bindings (CuPy's wheels "
                           "ship none): pip install nvmath-python nvidia-cusparselt-cu13") from exc
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise RuntimeError(f"nmref.cusparselt needs a CUDA GPU, and CUDA reports none ({exc})") from exc
    if n_devices == 0:
        raise RuntimeError("nmref.cusparselt needs a CUDA GPU, and CUDA reports none")
    return cupy, cusparseLt


def dtype_name(a):
    """'float16', 'bfloat16' (ml_dtypes), 'int8', ... for a NumPy or CuPy array."""
    return np.dtype(a.dtype).name


def np_dtype(name):
    """np.dtype for a name, 'bfloat16' included (from ml_dtypes, which CuPy 14 uses for bfloat16)."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def check_weight_shape(shape, dtype):
    """Raise unless W (out, in) meets cuSPARSELt's rules for a structured operand of this dtype."""
    if dtype not in SPARSE_MULTIPLE:
        raise TypeError(f"weight dtype {dtype} is not supported by the 2:4 path; use one of "
                        f"{tuple(SPARSE_MULTIPLE)} (cast with w.astype('float16'))")
    if len(shape) != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(shape)}")
    if not all(isinstance(size, (int, np.integer)) and not isinstance(size, bool) for size in shape):
        raise TypeError(f"weight shape {tuple(shape)} must hold ints (out_features, in_features)")
    mult = SPARSE_MULTIPLE[dtype]
    for name, size in (("out_features", shape[0]), ("in_features", shape[1])):
        if size <= 0 or size % mult:
            padded = max(mult, -(-size // mult) * mult)
            raise ValueError(f"{name}={size} is not a positive multiple of {mult} (cuSPARSELt's rule for the "
                             f"sparse operand in {dtype}); pad the weight's {name} with zeros to {padded}")


def check_batch(batch, dtype):
    """Raise unless the batch (rows of x) meets cuSPARSELt's rule for the dense operand."""
    if dtype not in DENSE_MULTIPLE:
        raise TypeError(f"dtype {dtype} is not supported by the 2:4 path; use one of {tuple(DENSE_MULTIPLE)}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
        raise TypeError(f"batch={batch!r} must be an int (the rows of x)")
    mult = DENSE_MULTIPLE[dtype]
    if batch <= 0 or batch % mult:
        padded = max(mult, -(-batch // mult) * mult)
        raise ValueError(f"batch={batch} is not a positive multiple of {mult} (cuSPARSELt's rule for the dense "
                         f"operand in {dtype}); pad x with zero rows to {padded} and drop them from y")


def _check_operand(a, name, cupy, device_id=None):
    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name} must be a CuPy array on the GPU, got {type(a).__name__}; "
                        "move it with nmref.to_device(a, 'gpu')")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (row-major); pass cupy.ascontiguousarray({name})")
    if a.data.ptr % ALIGNMENT:
        raise ValueError(f"{name} must start on a {ALIGNMENT}-byte boundary (its pointer is "
                         f"{a.data.ptr:#x}); pass a fresh copy: {name}.copy()")
    if device_id is not None and a.data.device_id != device_id:
        raise ValueError(f"{name} is on GPU {a.data.device_id}, the weight on GPU {device_id}")


def _first_bad_group(weight):
    """(row, col) of the first group of 4 along in_features with more than 2 non-zeros, or None."""
    out_features, in_features = weight.shape
    nonzero = (weight != 0).reshape(out_features, in_features // 4, 4).sum(axis=2)   # (out, in/4)
    bad = (nonzero > 2).ravel()
    if not bool(bad.any()):
        return None
    flat = int(bad.argmax())
    return flat // (in_features // 4), 4 * (flat % (in_features // 4)), int(nonzero.ravel()[flat])


class _Plan:
    """One batch size's plan in one layout, with the native objects and buffers that only it uses."""
    __slots__ = ("layout", "w_is_a", "config", "pinned", "descs", "matmul_desc", "alg_sel", "plan", "workspace",
                 "workspace_ptr", "compressed", "compressed_ptr")

    def __init__(self, layout):
        self.layout, self.w_is_a = layout, LAYOUTS[layout][0] == "A"
        self.config, self.pinned = None, False
        self.descs, self.matmul_desc, self.alg_sel, self.plan = [], None, None, None
        self.workspace = self.workspace_ptr = self.compressed = self.compressed_ptr = None

    def destroy(self, lt):
        steps = [(lt.matmul_plan_destroy, self.plan), (lt.matmul_alg_selection_destroy, self.alg_sel),
                 (lt.matmul_descriptor_destroy, self.matmul_desc)]
        steps += [(lt.mat_descriptor_destroy, d) for d in self.descs]
        for destroy, obj in steps:
            if obj is not None:
                try:
                    destroy(obj)
                except Exception:
                    pass           # at interpreter exit the CUDA context may already be gone
        self.plan = self.alg_sel = self.matmul_desc = None
        self.descs, self.workspace, self.compressed = [], None, None


class _KernelPlan:
    """One batch size's plan on nmref's own mma.sp kernel: a launch shape (TB, R, SK, U, PIPE)."""
    layout, pinned = None, False

    def __init__(self, config):
        self.config = tuple(config)


class _Resources:
    """The native objects of one SparseMatmul, released in reverse order; safe to release twice."""

    def __init__(self, lt):
        self.lt = lt
        self.handle = None
        self.weight_descs = {}     # W's descriptor order -> structured descriptor
        self.plans = []            # every live _Plan
        self.released = False

    def drop(self, entry):
        entry.destroy(self.lt)
        self.plans = [p for p in self.plans if p is not entry]

    def release(self):
        if self.released:
            return
        self.released = True
        for entry in reversed(self.plans):
            entry.destroy(self.lt)
        for desc in self.weight_descs.values():
            try:
                self.lt.mat_descriptor_destroy(desc)
            except Exception:
                pass
        if self.handle is not None:
            try:
                self.lt.destroy(self.handle)
            except Exception:
                pass
        self.plans, self.weight_descs, self.handle = [], {}, None


class SparseMatmul:
    """y = x @ W.T (+ bias) for a 2:4 weight W (out, in) on the GPU, through cuSPARSELt (or nmref's own
    sparse-tensor-core kernel where that is faster: small batches).

    weight: CuPy array (out, in), float16, bfloat16 (ml_dtypes) or int8, C-contiguous, at most 2 non-zeros
    in every group of 4 along ``in``. bias: (out,) or None; it is cast to the output dtype (float32 for int8
    inputs, cuSPARSELt's bias type there). out_dtype: the input dtype for float16/bfloat16; int32 (default),
    int8, float16 or bfloat16 for int8 inputs. search: run cuSPARSELt's algorithm search once per batch size
    (default: on unless the environment sets NMREF_CUSPARSELT_SEARCH=0). pin_config: with the search on, also
    plan the config id the search chose on its own, without the search's other settings (on cuSPARSELt 0.8.0 /
    H200 the search can pick a split-K mode whose factor cannot be read back, and the bare config ran up to 9%
    faster at 4096^3: gpu_notes.md). layout: a name from LAYOUTS, a tuple of names, or "auto" (all of them);
    None = DEFAULT_LAYOUTS. When a batch size has several candidate plans (layouts, pinned configs), each is
    timed on the first call's operands (L2 flushed, CUDA events) and the fastest is kept; with the search off,
    the first layout's default plan. The bias rides in cuSPARSELt's epilogue, which adds it along D's rows, so
    a bias limits the candidates to ``wA_*`` layouts. engines: which kernels may serve a batch size, from
    ENGINES; None = both where they apply: "cusparselt", and for float16/bfloat16 with in_features a multiple
    of 32 and batch <= sparse_mma.MAX_BATCH, "mma_sp", nmref's own kernel on the sparse tensor cores
    (nmref/kernels/sparse_mma.py), whose launch shapes join the timed candidates; ``plan_info`` says which won.

    The weight is compressed through each plan into that plan's own buffer. Seen with cuSPARSELt 0.8.0 on an
    H200 (benchmarks/results/gpu_notes.md): the compressed bytes are the same for every plan, yet the algorithm
    search traps (illegal instruction) on a plan that did not compress the weight itself, and a plan run on
    another plan's identical copy gives wrong results. batch_sizes=None keeps a reference to ``weight`` and
    builds a plan at the first call of each new batch size; a tuple builds those plans now and keeps no dense
    weight, and other batch sizes are refused. ``close()`` (or ``with``) frees everything early.
    """

    def __init__(self, weight, bias=None, out_dtype=None, search=None, batch_sizes=None, layout=None,
                 pin_config=True, engines=None):
        cupy, lt = _bindings()
        self._cupy, self._lt = cupy, lt
        _check_operand(weight, "weight", cupy)
        self.dtype = dtype_name(weight)
        check_weight_shape(weight.shape, self.dtype)
        self.out_features, self.in_features = weight.shape
        self.out_dtype = out_dtype_name = self._out_dtype(out_dtype)
        for batch in batch_sizes or ():
            check_batch(batch, self.dtype)
        self.layouts = _candidate_layouts(layout, bias is not None)
        self.engines = _candidate_engines(engines, self.dtype, self.in_features, out_dtype_name)
        self.kernel_errors = {}                       # launch shape -> why it could not run (compile, launch)
        self.search = os.environ.get("NMREF_CUSPARSELT_SEARCH", "1") != "0" if search is None else bool(search)
        self.pin_config = bool(pin_config)
        self.device_id = weight.device.id
        major = int(cupy.cuda.Device(self.device_id).compute_capability[:-1])
        if major < 8:
            raise RuntimeError("cuSPARSELt needs a GPU of compute capability 8.0 or newer (Ampere, Hopper, ...); "
                               f"GPU {self.device_id} is {cupy.cuda.Device(self.device_id).compute_capability}")
        self._res = _Resources(lt)
        self._finalizer = weakref.finalize(self, self._res.release)
        self._plans, self._streams, self._weight = {}, {}, None
        self._in_np_dtype, self._out_np_dtype = np_dtype(self.dtype), np_dtype(out_dtype_name)
        bias_dtype = "float32" if self.dtype == "int8" else out_dtype_name
        self.bias = None if bias is None else self._prepare_bias(bias, bias_dtype)
        self._bias_ptr = np.array([0 if self.bias is None else self.bias.data.ptr], dtype=np.uint64)
        self._alpha, self._beta = np.ones(1, np.float32), np.zeros(1, np.float32)
        try:
            self._res.handle = lt.init()
        except Exception as exc:
            self.close()
            raise RuntimeError(f"cuSPARSELt did not start ({type(exc).__name__}: {exc}); it needs libcusparseLt.so.0 "
                               "(pip install nvidia-cusparselt-cu13) and a working CUDA driver") from exc
        self._weight = weight
        self._prune_check(weight)
        self._packed = None
        if "mma_sp" in self.engines:
            from .kernels import sparse_mma
            self._packed = sparse_mma.PackedWeight(weight, self.bias)
        if batch_sizes is not None:
            for batch in sorted(set(batch_sizes)):
                self._new_plan(batch)
            self._weight = None

    def _out_dtype(self, out_dtype):
        allowed = OUT_DTYPES[self.dtype]
        if out_dtype is None:
            name = allowed[0]
        else:
            name = out_dtype if isinstance(out_dtype, str) else np.dtype(out_dtype).name
        if name not in allowed:
            raise TypeError(f"out_dtype={name} is not available for {self.dtype} inputs; choose one of {allowed}")
        return name

    def _prepare_bias(self, bias, dtype):
        cupy = self._cupy
        if not isinstance(bias, cupy.ndarray):
            raise TypeError(f"bias must be a CuPy array on the GPU, got {type(bias).__name__}")
        if bias.shape != (self.out_features,):
            raise ValueError(f"bias has shape {bias.shape}; it must be (out_features,) = ({self.out_features},)")
        return cupy.ascontiguousarray(bias.astype(np_dtype(dtype)))

    def _stream_ptr(self):
        return self._cupy.cuda.get_current_stream().ptr

    def _report_invalid(self, weight):
        bad = _first_bad_group(weight)
        where = "" if bad is None else (f": row {bad[0]}, columns {bad[1]}..{bad[1] + 3} hold {bad[2]} non-zeros")
        self.close()
        raise ValueError(f"weight is not 2:4 sparse along in_features (cuSPARSELt's prune check refused it{where}); "
                         "mask it first, e.g. w * nmref.nm_mask(w, 2, 4) (at most 2 non-zeros in every 4)")

    def _prune_check(self, weight):
        """cuSPARSELt's own check that W is 2:4 along in_features, in every candidate layout (it writes 1 to
        ``invalid`` only on failure)."""
        cupy, lt, h = self._cupy, self._lt, self._res.handle
        invalid = cupy.zeros(len(self.layouts), dtype=cupy.int32)
        for i, layout in enumerate(self.layouts):
            entry = self._describe(4 * DENSE_MULTIPLE[self.dtype], layout)
            lt.sp_mma_prune_check(h, entry.matmul_desc, weight.data.ptr, invalid[i:].data.ptr, self._stream_ptr())
            self._res.drop(entry)
        if bool(invalid.any()):
            self._report_invalid(weight)

    def _weight_desc(self, order):
        descs = self._res.weight_descs
        if order not in descs:
            n, k = self.out_features, self.in_features
            rows, cols, order_id = (n, k, _ORDER_ROW) if order == "row" else (k, n, _ORDER_COL)  # (N, K) = (K, N) col
            descs[order] = self._lt.structured_descriptor_init(self._res.handle, rows, cols, k, ALIGNMENT,
                                                               _CUDA_DTYPE[self.dtype], order_id, _SPARSITY_50)
        return descs[order]

    def _dense_desc(self, entry, rows, cols, ld, dtype, order):
        desc = self._lt.dense_descriptor_init(self._res.handle, rows, cols, ld, ALIGNMENT, _CUDA_DTYPE[dtype], order)
        entry.descs.append(desc)
        return desc

    def _describe(self, batch, layout):
        """A _Plan holding the matmul descriptor of y (batch, out) = x @ W.T in ``layout`` (no plan yet)."""
        lt, h = self._lt, self._res.handle
        entry = _Plan(layout)
        self._res.plans.append(entry)
        _, w_order, x_order = LAYOUTS[layout]
        m, k, n = batch, self.in_features, self.out_features
        w_desc = self._weight_desc(w_order)
        x_desc = (self._dense_desc(entry, m, k, k, self.dtype, _ORDER_ROW) if x_order == "row"
                  else self._dense_desc(entry, k, m, k, self.dtype, _ORDER_COL))            # x (M, K) = (K, M) col
        compute = _COMPUTE_32I if self.dtype == "int8" else _COMPUTE_32F
        if entry.w_is_a:                                                                    # D = W x^T: (N, M) col
            y_desc = self._dense_desc(entry, n, m, n, self.out_dtype, _ORDER_COL)
            op_w, op_x = (_OP_N if w_order == "row" else _OP_T), (_OP_T if x_order == "row" else _OP_N)
            entry.matmul_desc = lt.matmul_descriptor_init(h, op_w, op_x, w_desc, x_desc, y_desc, y_desc, compute)
        else:                                                                               # D = x W^T: (M, N) row
            y_desc = self._dense_desc(entry, m, n, n, self.out_dtype, _ORDER_ROW)
            op_x, op_w = (_OP_N if x_order == "row" else _OP_T), (_OP_T if w_order == "row" else _OP_N)
            entry.matmul_desc = lt.matmul_descriptor_init(h, op_x, op_w, x_desc, w_desc, y_desc, y_desc, compute)
        if self.bias is not None:
            lt.matmul_desc_set_attribute(h, entry.matmul_desc, _BIAS_POINTER, self._bias_ptr.ctypes.data, 8)
        return entry

    def _compress(self, plan):
        """W compressed through ``plan``, into a buffer that only this plan may use (notes above)."""
        cupy, lt, h = self._cupy, self._lt, self._res.handle
        size, buffer_size = lt.sp_mma_compressed_size(h, plan)
        compressed = cupy.empty(size, dtype=cupy.uint8)
        buffer = cupy.empty(max(buffer_size, 1), dtype=cupy.uint8)
        lt.sp_mma_compress(h, plan, self._weight.data.ptr, compressed.data.ptr, buffer.data.ptr, self._stream_ptr())
        cupy.cuda.get_current_stream().synchronize()
        return compressed

    def _workspace(self, entry):
        size = self._lt.matmul_get_workspace(self._res.handle, entry.plan)
        if entry.workspace is None or entry.workspace.size < size:
            entry.workspace = self._cupy.empty(max(size, 1), dtype=self._cupy.uint8)
            entry.workspace_ptr = entry.workspace.data.ptr

    def _scratch(self, shape, dtype):
        """Random operands for the algorithm search when no call's data are at hand (never zeros: METHOD.md)."""
        cupy = self._cupy
        values = cupy.random.default_rng(0).standard_normal(shape, dtype=cupy.float32)
        return cupy.rint(values * 8).astype(np_dtype(dtype)) if dtype == "int8" else values.astype(np_dtype(dtype))

    def _planned(self, batch, layout, x, y, config=None):
        """A plan for ``batch`` in ``layout`` with the weight compressed through it: pinned to ``config``, else
        searched (if the search is on)."""
        lt, h = self._lt, self._res.handle
        entry = self._describe(batch, layout)
        entry.alg_sel = lt.matmul_alg_selection_init(h, entry.matmul_desc, _ALG_DEFAULT)
        if config is not None:
            value = np.array([config], dtype=np.int32)
            lt.matmul_alg_set_attribute(h, entry.alg_sel, _ALG_CONFIG_ID, value.ctypes.data, 4)
            entry.pinned = True
        entry.plan = lt.matmul_plan_init(h, entry.matmul_desc, entry.alg_sel)
        entry.compressed = self._compress(entry.plan)
        entry.compressed_ptr = entry.compressed.data.ptr
        self._workspace(entry)
        if self.search and config is None:
            a, b = self._operands(entry, x)
            lt.matmul_search(h, entry.plan, self._alpha.ctypes.data, a, b, self._beta.ctypes.data, y.data.ptr,
                             y.data.ptr, entry.workspace_ptr, self._stream_array().ctypes.data, 1)
            self._workspace(entry)
        value = np.zeros(1, dtype=np.int32)
        lt.matmul_alg_get_attribute(h, entry.alg_sel, _ALG_CONFIG_ID, value.ctypes.data, 4)
        entry.config = int(value[0])
        return entry

    def _new_plan(self, batch, x=None, y=None):
        x = self._scratch((batch, self.in_features), self.dtype) if x is None else x
        y = self._cupy.empty((batch, self.out_features), dtype=self._out_np_dtype) if y is None else y
        entries = []
        if "cusparselt" in self.engines:
            for layout in self.layouts if self.search else self.layouts[:1]:
                entries.append(self._planned(batch, layout, x, y))
                if self.search and self.pin_config:
                    entries.append(self._planned(batch, layout, x, y, config=entries[-1].config))
        if self._packed is not None:
            from .kernels import sparse_mma
            if batch <= sparse_mma.MAX_BATCH or "cusparselt" not in self.engines:
                entries += [_KernelPlan(config) for config in sparse_mma.configs_for(batch)]
        if len(entries) > 1:
            times = [self._time(entry, x, y) for entry in entries]
            best = entries[int(np.argmin(times))]
            if not np.isfinite(min(times)):
                raise RuntimeError(f"no kernel could run batch={batch}: {self.kernel_errors}")
            for entry in entries:
                if entry is not best and not isinstance(entry, _KernelPlan):
                    self._res.drop(entry)
            entries = [best]
        self._plans[batch] = entries[0]
        return entries[0]

    def _time(self, entry, x, y, repeats=9):
        """Median GPU time of one call (ms), the L2 flushed before each (the weight comes from memory)."""
        cupy = self._cupy
        stream = cupy.cuda.get_current_stream()
        flush = cupy.cuda.memory.Memory(2 * _l2_bytes(cupy, self.device_id))   # raw cudaMalloc, not the pool
        if isinstance(entry, _KernelPlan):
            try:
                self._run(entry, x, y)
                stream.synchronize()
            except Exception as exc:                 # e.g. an NVRTC too old for mma.sp::ordered_metadata
                self.kernel_errors[entry.config] = f"{type(exc).__name__}: {exc}"
                return float("inf")
        else:
            self._run(entry, x, y)
        start, end, times = cupy.cuda.Event(), cupy.cuda.Event(), []
        for _ in range(repeats):
            cupy.cuda.runtime.memsetAsync(flush.ptr, 0, flush.size, stream.ptr)
            start.record(stream)
            self._run(entry, x, y)
            end.record(stream)
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end))
        return float(np.median(times))

    def _operands(self, entry, x):
        """(A, B) device pointers: (compressed W, x) when W is A, else (x, compressed W)."""
        return (entry.compressed_ptr, x.data.ptr) if entry.w_is_a else (x.data.ptr, entry.compressed_ptr)

    def _run(self, entry, x, out):
        if isinstance(entry, _KernelPlan):
            self._packed.launch(x, out, entry.config)
            return
        a, b = self._operands(entry, x)
        self._lt.matmul(self._res.handle, entry.plan, self._alpha.ctypes.data, a, b, self._beta.ctypes.data,
                        out.data.ptr, out.data.ptr, entry.workspace_ptr, self._stream_array().ctypes.data, 1)

    def _stream_array(self):
        stream = self._cupy.cuda.get_current_stream().ptr
        streams = self._streams.get(stream)
        if streams is None:
            streams = self._streams[stream] = np.array([stream], dtype=np.uint64)
        return streams

    @property
    def batch_sizes(self):
        """Batch sizes with a cached plan."""
        return sorted(self._plans)

    def layout_for(self, batch):
        """The cuSPARSELt layout of the cached plan for ``batch`` (None if there is none yet, or if nmref's own
        kernel serves it)."""
        entry = self._plans.get(batch)
        return None if entry is None else entry.layout

    def plan_info(self, batch):
        """{"engine", "layout", "config", "pinned"} of the cached plan for ``batch`` (None if there is none yet):
        engine "cusparselt" (config: cuSPARSELt's config id) or "mma_sp" (config: the launch shape, layout None)."""
        entry = self._plans.get(batch)
        if entry is None:
            return None
        engine = "mma_sp" if isinstance(entry, _KernelPlan) else "cusparselt"
        return {"engine": engine, "layout": entry.layout, "config": entry.config, "pinned": entry.pinned}

    def __call__(self, x, out=None):
        """y (batch, out) = x (batch, in) @ W.T (+ bias), on the current CuPy stream."""
        if self._res.released:
            raise RuntimeError("this SparseMatmul was closed; build a new one from the weight")
        cupy = self._cupy
        _check_operand(x, "x", cupy, self.device_id)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x has shape {x.shape}; it must be (batch, in_features={self.in_features})")
        if x.dtype != self._in_np_dtype:
            raise TypeError(f"x is {dtype_name(x)} but the weight is {self.dtype}; cast x with x.astype(...)")
        batch = x.shape[0]
        entry = self._plans.get(batch)
        if entry is None:
            check_batch(batch, self.dtype)
            if self._weight is None:
                raise ValueError(f"batch={batch} has no plan: this SparseMatmul was built for batch_sizes "
                                 f"{self.batch_sizes} without keeping the weight; pad x to one of them or build it "
                                 "with batch_sizes=None")
        if out is None:
            out = cupy.empty((batch, self.out_features), dtype=self._out_np_dtype)
        else:
            _check_operand(out, "out", cupy, self.device_id)
            if out.shape != (batch, self.out_features) or out.dtype != self._out_np_dtype:
                raise ValueError(f"out must be ({batch}, {self.out_features}) {self.out_dtype}, "
                                 f"got {out.shape} {dtype_name(out)}")
        if entry is None:
            entry = self._new_plan(batch, x, out)
        self._run(entry, x, out)
        return out

    matmul = __call__

    def close(self):
        """Release the plans, descriptors, handle and device buffers now (also done when the object goes)."""
        self._finalizer()
        self._plans = {}
        self._weight = self.bias = self._packed = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._res.released else f"plans for batch {self.batch_sizes}"
        return (f"SparseMatmul(({self.out_features}, {self.in_features}) {self.dtype} 2:4 -> {self.out_dtype}, "
                f"bias={self.bias is not None}, {state})")


def _l2_bytes(cupy, device_id):
    try:
        return int(cupy.cuda.Device(device_id).attributes["L2CacheSize"])
    except Exception:
        return 64 << 20


def _candidate_layouts(layout, has_bias):
    """The layouts to try, as a tuple of LAYOUTS names, checked (a bias needs W as operand A)."""
    if layout is None:
        names = DEFAULT_LAYOUTS
    elif layout == "auto":
        names = tuple(LAYOUTS)
    else:
        names = (layout,) if isinstance(layout, str) else tuple(layout)
    unknown = [name for name in names if name not in LAYOUTS]
    if unknown or not names:
        raise ValueError(f"layout {layout!r} is not known; use None, 'auto', or names from {tuple(LAYOUTS)}")
    if has_bias:
        names = tuple(name for name in names if LAYOUTS[name][0] == "A")
        if not names:
            raise ValueError(f"layout {layout!r} puts W in operand B, where cuSPARSELt's epilogue would add the bias "
                             "along the batch; use a 'wA_*' layout with a bias, or add the bias yourself")
    return names


def _candidate_engines(engines, dtype, in_features, out_dtype):
    """The engines to try, checked: nmref's mma.sp kernel needs float16/bfloat16 in and out and in % 32 == 0."""
    from .kernels import sparse_mma
    why = (f"{dtype} inputs" if dtype not in sparse_mma.PTX_TYPES else
           f"{out_dtype} output from {dtype}" if out_dtype != dtype else
           sparse_mma.check_shape(None, in_features))
    if engines is None:
        return ENGINES if why is None else ("cusparselt",)
    names = (engines,) if isinstance(engines, str) else tuple(engines)
    if not names or any(name not in ENGINES for name in names):
        raise ValueError(f"engines={engines!r} is not known; use None or names from {ENGINES}")
    if "mma_sp" in names and why is not None:
        raise ValueError(f"engine 'mma_sp' cannot serve this weight ({why}); use engines=('cusparselt',)")
    return names


class SparseLinear:
    """Inference stand-in for a trained nmref Linear: forward(x) = x @ W~.T + b with W~ 2:4 on cuSPARSELt."""

    def __init__(self, layer, dtype="float16"):
        cupy, _ = _bindings()
        w = layer.weight.value
        w_tilde = layer.method.masked(w)                                    # (out, in)
        w_gpu = cupy.ascontiguousarray(cupy.asarray(w_tilde).astype(np_dtype(dtype)))
        bias = None if layer.bias is None else cupy.asarray(layer.bias.value)
        self.dtype, self.in_features = dtype_name(w_gpu), w_gpu.shape[1]
        self.matmul = SparseMatmul(w_gpu, bias)

    def forward(self, x, train=False):
        if train:
            raise RuntimeError("SparseLinear is for inference; train with nmref.layers.Linear")
        cupy = self.matmul._cupy
        batch = x.shape[0]
        padded = -(-batch // DENSE_MULTIPLE[self.dtype]) * DENSE_MULTIPLE[self.dtype]
        x_in = cupy.zeros((padded, self.in_features), dtype=np_dtype(self.dtype))   # (padded, in)
        x_in[:batch] = cupy.asarray(x)
        y = self.matmul(x_in)[:batch]                                       # (batch, out)
        return y.astype(x.dtype)

    __call__ = forward

    def params(self):
        return []

    def close(self):
        self.matmul.close()


def to_cusparselt(layer, dtype="float16"):
    """A SparseLinear for inference from a trained Linear whose forward weight is 2:4 (SR-STE/STE/LBC 2:4)."""
    return SparseLinear(layer, dtype)
