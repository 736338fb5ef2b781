// Probe (issue 7): CUTLASS's Hopper 2:4 sparse GEMM (TMA + wgmma.sp, warp-specialized; CUTLASS 4.2 headers) as a
// shared library for benchmarks/gpu_probe_cutlass_sparse.py, which times it against dense cuBLAS and nmref's
// cuSPARSELt path in one process. An experiment, not part of nmref.
//
// y (batch, out) = x (batch, in) @ W.T, W (out, in) 2:4 along `in`: CUTLASS's D = A B with A = W (M = out, K = in,
// row-major, the structured operand), B = x seen column-major (K x N, N = batch), D = y seen column-major (M x N).
// fp32 accumulation, fp16 or bf16 in and out, no bias (C is not read: beta = 0).
//
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++17 --expt-relaxed-constexpr -shared -Xcompiler -fPIC
//        -I$CUTLASS/include -I$CUTLASS/tools/util/include -DTM=64 -DTN=128 ... -o lib.so gpu_probe_cutlass_sparse.cu
//
// One launch shape per library (the -D macros below), so that the builds run in parallel; the Python side
// (gpu_probe_cutlass_sparse.py --build) lists the shapes and loads every library it finds.
#include <cstdio>
#include <cstring>

#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

// The launch shape, set by the build (-D...): tile TM x TN x TK (M = W rows, N = batch rows, K logical), cluster
// CM x CN, PINGPONG (1: two consumer warpgroups on two tiles; 0: cooperative, both on one tile), STREAMK (1: the
// stream-K tile scheduler; 0: persistent), ELEM_BF16 (1: bf16; 0: fp16).
#if !defined(TM) || !defined(TN) || !defined(TK) || !defined(CM) || !defined(CN) || !defined(PINGPONG) || \
    !defined(STREAMK) || !defined(ELEM_BF16)
#error "build with -DTM= -DTN= -DTK= -DCM= -DCN= -DPINGPONG= -DSTREAMK= -DELEM_BF16="
#endif

#if ELEM_BF16
using Element = cutlass::bfloat16_t;
#else
using Element = cutlass::half_t;
#endif
using LayoutA = cutlass::layout::RowMajor;        // W (out, in)
using LayoutB = cutlass::layout::ColumnMajor;     // x (batch, in) as K x N
using LayoutD = cutlass::layout::ColumnMajor;     // y (batch, out) as M x N
constexpr int kAlign = 8;                         // 16 bytes
using Accumulator = float;
using ProbeTile = Shape<Int<TM>, Int<TN>, Int<TK>>;
using ProbeCluster = Shape<Int<CM>, Int<CN>, _1>;
using MainloopSchedule = cute::conditional_t<PINGPONG, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                             cutlass::gemm::KernelTmaWarpSpecializedCooperative>;
using EpilogueSchedule = cute::conditional_t<PINGPONG, cutlass::epilogue::TmaWarpSpecialized,
                                             cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Scheduler = cute::conditional_t<STREAMK, cutlass::gemm::StreamKScheduler, cutlass::gemm::PersistentScheduler>;
using Problem = Shape<int, int, int, int>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, ProbeTile, ProbeCluster,
    cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Accumulator,
    Element, LayoutD, kAlign, Element, LayoutD, kAlign, EpilogueSchedule>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, Element, LayoutA, kAlign, Element, LayoutB, kAlign,
    Accumulator, ProbeTile, ProbeCluster,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
    MainloopSchedule>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<Problem, Mainloop, Epilogue, Scheduler>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

using SparseConfig = typename Mainloop::SparseConfig;
using ElementE = typename Mainloop::ElementE;
using StrideA = cutlass::gemm::TagToStrideA_t<LayoutA>;
using StrideB = typename Kernel::StrideB;
using StrideD = typename Kernel::StrideD;
using Utility = cutlass::transform::kernel::StructuredSparseCompressorUtility<Problem, Element, LayoutA, SparseConfig>;
using CompressorKernel = cutlass::transform::kernel::StructuredSparseCompressor<Problem, Element, LayoutA,
                                                                                SparseConfig, cutlass::arch::Sm90>;
using Compressor = cutlass::transform::device::TransformUniversalAdapter<CompressorKernel>;

// One compressed weight: A's kept values and metadata in CUTLASS's layouts, and a workspace per batch size.
struct Handle {
    int M, K;
    Element* a = nullptr;
    ElementE* e = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
};

static int report(const char* what, cutlass::Status s) {
    if (s != cutlass::Status::kSuccess) {
        fprintf(stderr, "cutlass probe: %s: %s\n", what, cutlassGetStatusString(s));
        return 1;
    }
    return 0;
}

extern "C" {

const char* probe_config() {
    static char text[160];
    snprintf(text, sizeof text, "tile %dx%dx%d cluster %dx%d %s %s %s", TM, TN, TK, CM, CN,
             PINGPONG ? "pingpong" : "cooperative", STREAMK ? "stream-K" : "persistent", ELEM_BF16 ? "bf16" : "fp16");
    return text;
}

// Compress a dense 2:4 weight w (M x K row-major, device) on `stream`; returns a handle or null.
void* probe_compress(const void* w, int M, int K, cudaStream_t stream) {
    Problem problem{M, 1, K, 1};
    StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(M, K, 1));
    Utility utility(problem, stride_a);
    auto* h = new Handle{M, K};
    size_t a_bytes = size_t(utility.get_tensorA_m_physical()) * utility.get_tensorA_k_physical() * sizeof(Element);
    size_t e_bytes = utility.get_tensor_E_bytes();
    if (cudaMalloc(&h->a, a_bytes) != cudaSuccess || cudaMalloc(&h->e, e_bytes) != cudaSuccess) return nullptr;
    cutlass::KernelHardwareInfo hw;
    hw.device_id = 0;
    hw.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(0);
    typename Compressor::Arguments args{problem, {static_cast<const Element*>(w), stride_a, h->a, h->e}, {hw}};
    Compressor op;
    size_t ws = Compressor::get_workspace_size(args);
    void* workspace = nullptr;
    if (ws && cudaMalloc(&workspace, ws) != cudaSuccess) return nullptr;
    if (report("compressor can_implement", op.can_implement(args)) ||
        report("compressor initialize", op.initialize(args, workspace, stream)) ||
        report("compressor run", op.run(stream)))
        return nullptr;
    cudaStreamSynchronize(stream);
    cudaFree(workspace);
    return h;
}

// y (N x M row-major) = x (N x K row-major) @ W.T on `stream`; 0 on success.
int probe_run(void* handle, const void* x, void* y, int N, cudaStream_t stream) {
    auto* h = static_cast<Handle*>(handle);
    Problem problem{h->M, N, h->K, 1};
    auto layout_a = SparseConfig::fill_layoutA(problem);
    auto layout_e = SparseConfig::fill_layoutE(problem);
    StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(N, h->K, 1));
    StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(h->M, N, 1));
    cutlass::KernelHardwareInfo hw;
    hw.device_id = 0;
    hw.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(0);
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm, problem,
        {h->a, layout_a, static_cast<const Element*>(x), stride_b, h->e, layout_e},
        {{Accumulator(1), Accumulator(0)}, static_cast<const Element*>(y), stride_d, static_cast<Element*>(y),
         stride_d},
        hw};
    Gemm gemm;
    size_t ws = Gemm::get_workspace_size(args);
    if (ws > h->workspace_bytes) {
        cudaFree(h->workspace);
        if (cudaMalloc(&h->workspace, ws) != cudaSuccess) return 2;
        h->workspace_bytes = ws;
    }
    if (report("can_implement", gemm.can_implement(args)) ||
        report("initialize", gemm.initialize(args, h->workspace, stream)) || report("run", gemm.run(stream)))
        return 1;
    return 0;
}

void probe_free(void* handle) {
    auto* h = static_cast<Handle*>(handle);
    cudaFree(h->a);
    cudaFree(h->e);
    cudaFree(h->workspace);
    delete h;
}

}  // extern "C"
