#!/usr/bin/env bash
# What the GPU machine runs (the device tool's `run`, with `.whl` carried): install the carried wheels,
# record the environment, run the GPU tests and benchmarks, leave logs and tables in $OUT.
#   bash benchmarks/gpu_run.sh mma      benchmarks/gpu_probe_mma_sp.py (nmref's own mma.sp kernel: check + timing sweep)
#   bash benchmarks/gpu_run.sh tiled    benchmarks/gpu_probe_mma_tiled.py (the tiled mma.sp experiment) at batch 64-4096
#   bash benchmarks/gpu_run.sh wgmma    benchmarks/gpu_probe_wgmma_sp.py (the wgmma.sp experiment, sm_90a; WGMMA_ARGS,
#                                       WGMMA_NCU), WGMMA_RATE=1: gpu_probe_wgmma_rate.py first
#   bash benchmarks/gpu_run.sh rate     mma.sp / mma issue rate from registers; SASS and ncu of one tiled launch
#   bash benchmarks/gpu_run.sh cslt     cuSPARSELt tests + the cuSPARSELt benchmark
#   bash benchmarks/gpu_run.sh full     every test file on both backends + both GPU benchmarks
#   bash benchmarks/gpu_run.sh tests    every test file only (test_notebooks left out: no nbformat in the image)
#   bash benchmarks/gpu_run.sh round2   every -m gpu test, bench_masks --gpu, the layout / split-K probe (round 3)
#   bash benchmarks/gpu_run.sh notebook NN   execute notebooks/NN_*.ipynb in full mode (wheels in .whl/nb)
#   bash benchmarks/gpu_run.sh final [NN]    every -m gpu test, notebook NN in full mode (if given), a 1-repeat
#                                            cuSPARSELt table at 4096x4096 (regression check), fp16 config sweeps
#   bash benchmarks/gpu_run.sh mma2 [NN]     the mma.sp and cuSPARSELt tests, every other -m gpu test, notebook NN,
#                                            the cuSPARSELt table at batch 16 and 256 (3 repeats)
#   bash benchmarks/gpu_run.sh versions  the image's cuSPARSELt (0.8.0) against a carried one (CSLT_PARTS: pieces of its
#                                       xz-compressed libcusparseLt.so.0, sent over several calls): both benches on
#                                       VERSION_SHAPES, the cuSPARSELt and mma tests on the carried one; CSLT_USE=new
#                                       leaves the carried one installed for the stages of later calls on that machine
#   bash benchmarks/gpu_run.sh splitk    cuSPARSELt config x split-K sweep at PROBE_BATCHES (default 256), both dtypes
#   bash benchmarks/gpu_run.sh streams   benchmarks/gpu_probe_split_streams.py: K split over concurrent cuSPARSELt calls
#   bash benchmarks/gpu_run.sh batched   benchmarks/gpu_probe_batched_splitk.py: split-K as a batched cuSPARSELt matmul
#   bash benchmarks/gpu_run.sh cutlass   benchmarks/gpu_probe_cutlass_sparse.py on the libraries in .cutlass_libs (carried;
#                                       built by its --build), CUTLASS_ARGS passed on
#   bash benchmarks/gpu_run.sh timing   benchmarks/gpu_probe_timing_methods.py: dense vs nmref timed four ways (TIMING_ARGS)
#   bash benchmarks/gpu_run.sh table [NN]    tests/test_cusparselt.py, notebook NN in full mode (if given), the
#                                            whole cuSPARSELt table over 3 repeats
#   bash benchmarks/gpu_run.sh record   the cuSPARSELt table over 3 repeats with BENCH_ARGS (e.g. --dtypes float16: one
#                                       call per dtype, joined by bench_cusparselt.py --merge); RECORD_TESTS=1: then every
#                                       test file (test_notebooks left out: no nbformat in the image) and the training step
# At most 8 files come back from $OUT: the round2 and notebook stages keep to that.
set -u
STAGE=${1:-cslt}
OUT=${OUT:-/tmp/nmref_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NMREF_FAST=1 PYTHONDONTWRITEBYTECODE=1
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 ))s: $*"; }

WHEELS=(.whl/*.whl)
[ "$STAGE" = notebook ] || [ "$STAGE" = final ] || [ "$STAGE" = table ] || [ "$STAGE" = mma2 ] && WHEELS+=(.whl/nb/*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${WHEELS[@]}" || exit 1
export PYTHONPATH=/tmp/site:$PWD
if ! python3 -c "import nvmath.bindings.cusparseLt" 2>/dev/null; then
    stamp "nvmath does not import with the image's cuda-core / cuda-pathfinder; adding the carried ones"
    python3 -c "import nvmath.bindings.cusparseLt" 2>&1 | tail -3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/fallback/*.whl || exit 1
fi

{
    stamp "environment"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
    python3 -m pip list 2>/dev/null | grep -i -E "^(cupy|cuda|nvmath|nvidia-cusparselt|torch |numpy|numba|ml.dtypes|pytest |mnist1d|tqdm|matplotlib|scipy)"
    python3 - <<'EOF'
import importlib.metadata as md
for name in ("cuda-pathfinder", "cuda-core", "cuda-bindings", "nvmath-python"):
    try:
        print(name, md.version(name))
    except Exception as exc:
        print(name, "?", exc)
import cupy, numpy as np
from nvmath.bindings import cusparseLt as lt
h = lt.init(); print("cuSPARSELt version", lt.get_version(h)); lt.destroy(h)
try:
    import ml_dtypes
    a = cupy.ones((16, 16), dtype=ml_dtypes.bfloat16)
    print("cupy bfloat16 matmul ok:", float((a @ a.T).astype(cupy.float32)[0, 0]))
except Exception as exc:
    print("cupy bfloat16:", type(exc).__name__, exc)
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cusparselt", torch.backends.cusparselt.is_available(),
      torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None)
EOF
} 2>&1 | tee "$OUT/env.log"

use_cusparselt() {   # old | new: which libcusparseLt.so.0 the image's site-packages hold (old kept in /tmp/cslt_old)
    local site lib
    site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    lib=$(find "$site" -name libcusparseLt.so.0 | head -1)
    [ -n "$lib" ] || { echo "no libcusparseLt.so.0 under $site"; return 1; }
    mkdir -p /tmp/cslt_old /tmp/cslt_new
    [ -f /tmp/cslt_old/libcusparseLt.so.0 ] || cp "$lib" /tmp/cslt_old/
    if [ "$1" = new ] && [ ! -f /tmp/cslt_new/libcusparseLt.so.0 ]; then
        cat ${CSLT_PARTS:?pieces of the xz-compressed library} | xz -d > /tmp/cslt_new/libcusparseLt.so.0 || return 1
        sha256sum /tmp/cslt_new/libcusparseLt.so.0
    fi
    cp "/tmp/cslt_$1/libcusparseLt.so.0" "$lib"
    python3 -c "from nvmath.bindings import cusparseLt as lt; h = lt.init(); print('cuSPARSELt in use:', lt.get_version(h), '($lib)'); lt.destroy(h)"
}

run_tests() {      # $1 = log name, rest = pytest args
    local log=$1; shift
    stamp "pytest $*"
    timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -rs -p no:cacheprovider -o addopts= --continue-on-collection-errors "$@" 2>&1 | tee -a "$OUT/$log"
}

# CSLT_USE=new (with CSLT_PARTS on the machine's first such call): the carried cuSPARSELt for every stage below
[ -n "${CSLT_USE:-}" ] && [ "$STAGE" != versions ] && { use_cusparselt "$CSLT_USE" || exit 1; }

case "$STAGE" in
tiled)
    stamp "probe the tiled mma.sp kernel (an experiment)"
    timeout "${PROBE_TIMEOUT:-480}" python3 benchmarks/gpu_probe_mma_tiled.py --jsonl "$OUT/gpu_probe_mma_tiled.jsonl" \
        --batches "${PROBE_BATCHES:-64,128,256,512,1024,4096}" 2>&1 | tail -c 200000 > "$OUT/probe_mma_tiled.log"
    grep -v "^{" "$OUT/probe_mma_tiled.log" | tail -20
    ;;
wgmma)
    if [ -n "${WGMMA_RATE:-}" ]; then
        stamp "wgmma / wgmma.sp issue rate (no global memory traffic)"
        timeout 200 python3 benchmarks/gpu_probe_wgmma_rate.py --json "$OUT/wgmma_rate.json" 2>&1 | grep -v "^{" | tail -30
    fi
    if [ -n "${WGMMA_SASS:-}" ]; then                 # the wgmma, barrier and shared-load lines of every cubin built
        for f in /tmp/nmref_wgmma/*.cubin; do
            echo "### $f $(head -c 300 "${f%.cubin}.cu" | tr '\n' ' ')"
            cuobjdump -sass "$f" | grep -E "HGMMA|WARPGROUP|DEPBAR|BAR|LDS|BRA|WARPSYNC" | sed 's/ *\/\* [0-9a-fx]* \*\/ *$//'
        done > "$OUT/wgmma_sass.txt" 2>&1
        grep -c HGMMA "$OUT/wgmma_sass.txt"
    fi
    [ -n "${WGMMA_ARGS:-}" ] || exit 0
    stamp "probe the wgmma.sp kernel (an experiment)"
    timeout "${PROBE_TIMEOUT:-480}" python3 benchmarks/gpu_probe_wgmma_sp.py --jsonl "$OUT/gpu_probe_wgmma_sp.jsonl" \
        ${WGMMA_ARGS:-} 2>&1 | tail -c 200000 > "$OUT/probe_wgmma_sp.log"
    grep -v "^{" "$OUT/probe_wgmma_sp.log" | tail -40
    for target in ${WGMMA_NCU:-}; do                 # CONFIG:BATCH:SIZE, e.g. 2,128,6,2,1,1:256:4096
        stamp "ncu $target"
        timeout 120 ncu --clock-control none --kernel-name nm24_wgmma_sp --launch-skip 2 --launch-count 1 \
            --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy \
            --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
            python3 benchmarks/gpu_probe_wgmma_sp.py --ncu-target "$target" > "$OUT/ncu_${target//[,:]/_}.txt" 2>&1
        grep -v "^==PROF==" "$OUT/ncu_${target//[,:]/_}.txt" | grep -E "Throughput|Duration|stalled|Issued|Eligible|Active Warps|Hit Rate|Bandwidth" | grep -v " 0$" | head -45
    done
    ;;
rate)
    stamp "mma.sp / mma issue rate from registers"
    [ -n "${SKIP_RATE:-}" ] || python3 benchmarks/gpu_probe_mma_rate.py --json "$OUT/mma_rate.json" 2>&1 | tee "$OUT/mma_rate.log"
    CFG=${TILED_CONFIG:-8,2,8,4,3,2}
    stamp "SASS of the tiled kernel $CFG"
    python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import gpu_probe_mma_tiled as t; open('/tmp/k.cu','w').write(t.kernel_source('float16', t.TiledConfig($CFG)))"
    nvcc -arch=sm_90 -cubin -Xptxas -v -o /tmp/k.cubin /tmp/k.cu && cuobjdump -sass /tmp/k.cubin > "$OUT/tiled.sass"
    grep -o -E "HMMA[.A-Z0-9_]*|LDS[.A-Z0-9_]*|SHFL[.A-Z0-9_]*|LDGSTS[.A-Z0-9_]*|BRA|BAR[.A-Z]*|DEPBAR" "$OUT/tiled.sass" | sort | uniq -c
    stamp "ncu, one launch at 256x4096x4096"
    timeout 200 ncu --clock-control none --kernel-name nm24_mma_sp_tiled --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
        --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
        --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
        python3 benchmarks/gpu_probe_mma_tiled.py --ncu-target "$CFG" > "$OUT/ncu.txt" 2>&1
    grep -v "^==PROF==" "$OUT/ncu.txt" | head -150
    ;;
mma)
    stamp "probe nmref's mma.sp kernel"
    timeout "${PROBE_TIMEOUT:-480}" python3 benchmarks/gpu_probe_mma_sp.py --jsonl "$OUT/gpu_probe_mma_sp.jsonl" ${PROBE_ARGS:---sweep} 2>&1 | tail -c 200000 > "$OUT/probe_mma_sp.log"
    tail -5 "$OUT/probe_mma_sp.log"
    ;;
probe)
    stamp "probe"
    timeout 300 python3 benchmarks/gpu_probe_cusparselt.py --json "$OUT/gpu_probe.json" 2>&1 | tee "$OUT/probe.log"
    NMREF_CUSPARSELT_SEARCH=0 run_tests test_cusparselt_nosearch.log tests/test_cusparselt.py
    stamp "bench_cusparselt --search 0 --repeats 1"
    timeout 300 python3 benchmarks/bench_cusparselt.py --search 0 --repeats 1 --json "$OUT/gpu_cusparselt_nosearch.json" \
        --markdown "$OUT/gpu_cusparselt_nosearch.md" 2>&1 | tee "$OUT/bench_cusparselt_nosearch.log"
    ;;
cslt)
    TEST_TIMEOUT=100 run_tests test_cusparselt.log tests/test_cusparselt.py
    TEST_TIMEOUT=60 run_tests test_cli_gpu.log tests/test_gpu_backend.py -k "cli or resume"
    stamp "bench_cusparselt"
    timeout 440 python3 benchmarks/bench_cusparselt.py --json "$OUT/gpu_cusparselt.json" \
        --markdown "$OUT/gpu_cusparselt.md" 2>&1 | tee "$OUT/bench_cusparselt.log"
    ;;
tests)
    run_tests tests.log tests --ignore=tests/test_notebooks.py      # the image has no nbformat
    ;;
full)
    stamp "probe round 2"
    timeout 120 python3 benchmarks/gpu_probe_cusparselt.py --only round2 --json "$OUT/gpu_probe2.json" 2>&1 | tee "$OUT/probe2.log"
    TEST_TIMEOUT=100 run_tests tests_cusparselt.log tests/test_cusparselt.py          # own process: a trap is sticky
    TEST_TIMEOUT=100 run_tests tests.log -m gpu tests --ignore=tests/test_cusparselt.py
    stamp "bench_cusparselt"
    timeout 270 python3 benchmarks/bench_cusparselt.py --json "$OUT/gpu_cusparselt.json" \
        --markdown "$OUT/gpu_cusparselt.md" 2>&1 | tee "$OUT/bench_cusparselt.log"
    stamp "bench_gpu_train_step"
    timeout 60 python3 benchmarks/bench_gpu_train_step.py --markdown "$OUT/gpu_train_step.md" 2>&1 | tee "$OUT/bench_train.log"
    ;;
round2)
    TEST_TIMEOUT=150 run_tests tests_cusparselt.log tests/test_cusparselt.py          # own process: a trap is sticky
    TEST_TIMEOUT=200 run_tests tests_gpu.log -m gpu tests --ignore=tests/test_cusparselt.py
    stamp "bench_masks --gpu"
    timeout 90 python3 benchmarks/bench_masks.py --gpu 2>&1 | tee "$OUT/masks_gpu.log"
    cp benchmarks/results/masks_gpu_*.md "$OUT/gpu_masks.md"
    stamp "layout / split-K probe"
    timeout 360 python3 benchmarks/gpu_probe_cusparselt.py --layouts --budget "${PROBE_BUDGET:-240}" \
        --jsonl "$OUT/probe_layouts.jsonl" 2>&1 | tee "$OUT/probe_layouts.log"
    ;;
notebook)
    NB=${2:?notebook prefix, e.g. 06}
    python3 -c "import nbclient, ipykernel, zmq; print('nbclient', nbclient.__version__, 'ipykernel', ipykernel.__version__)"
    stamp "execute notebooks/${NB}_* (NMREF_FAST=0)"
    NMREF_FAST=0 timeout "${NB_TIMEOUT:-420}" python3 notebooks/_build.py "$NB" 2>&1 | tee "$OUT/notebook.log"
    cp notebooks/${NB}_*.ipynb "$OUT/"
    ;;
final)
    TEST_TIMEOUT=150 run_tests tests.log tests/test_cusparselt.py
    TEST_TIMEOUT=200 run_tests tests.log -m gpu tests --ignore=tests/test_cusparselt.py
    if [ -n "${2:-}" ]; then
        stamp "execute notebooks/${2}_* (NMREF_FAST=0)"
        NMREF_FAST=0 timeout "${NB_TIMEOUT:-300}" python3 notebooks/_build.py "$2" 2>&1 | tee "$OUT/notebook.log"
        cp notebooks/${2}_*.ipynb "$OUT/"
    fi
    stamp "bench_cusparselt, 4096x4096 shapes, 1 repeat"
    timeout 150 python3 benchmarks/bench_cusparselt.py --shapes 16x4096x4096,256x4096x4096,4096x4096x4096 \
        --repeats 1 --json "$OUT/gpu_cusparselt_small.json" --markdown "$OUT/gpu_cusparselt_small.md" 2>&1 | tee -a "$OUT/runs.log"
    stamp "probe: fp16 config sweeps at batch 256 and 4096"
    PROBE_BATCHES=256,4096 PROBE_SWEEP=256,4096 PROBE_SPLIT=0 timeout 150 python3 benchmarks/gpu_probe_cusparselt.py \
        --layouts --budget 90 --dtypes float16 --layout-names wA_wrow_xrow,wB_wcol_xrow --no-nmref \
        --jsonl "$OUT/probe_sweep.jsonl" 2>&1 | tee -a "$OUT/runs.log"
    ;;
mma2)
    TEST_TIMEOUT=200 run_tests tests.log tests/test_sparse_mma.py tests/test_cusparselt.py
    TEST_TIMEOUT=200 run_tests tests.log -m gpu tests --ignore=tests/test_cusparselt.py --ignore=tests/test_sparse_mma.py
    if [ -n "${2:-}" ]; then
        stamp "execute notebooks/${2}_* (NMREF_FAST=0)"
        NMREF_FAST=0 timeout "${NB_TIMEOUT:-150}" python3 notebooks/_build.py "$2" 2>&1 | tee "$OUT/notebook.log"
        cp notebooks/${2}_*.ipynb "$OUT/"
    fi
    stamp "bench_cusparselt, batch 16 and 256 at 4096x4096, 3 repeats"
    timeout "${BENCH_TIMEOUT:-200}" python3 benchmarks/bench_cusparselt.py --shapes 16x4096x4096,256x4096x4096 \
        --json "$OUT/gpu_cusparselt_mma.json" --markdown "$OUT/gpu_cusparselt_mma.md" 2>&1 | tee -a "$OUT/runs.log"
    ;;
versions)
    SHAPES=${VERSION_SHAPES:-16x4096x4096,256x4096x4096,4096x4096x4096}
    for v in ${VERSION_ORDER:-old new}; do
        use_cusparselt "$v" || exit 1
        if [ "$v" = new ] && [ -z "${SKIP_TESTS:-}" ]; then
            TEST_TIMEOUT=200 run_tests "tests_$v.log" tests/test_sparse_mma.py tests/test_cusparselt.py
        fi
        stamp "bench_cusparselt with the $v cuSPARSELt: $SHAPES"
        timeout "${BENCH_TIMEOUT:-240}" python3 benchmarks/bench_cusparselt.py --shapes "$SHAPES" \
            --repeats "${VERSION_REPEATS:-3}" --json "$OUT/cslt_$v.json" --markdown "$OUT/cslt_$v.md" 2>&1 | tee -a "$OUT/runs.log"
    done
    use_cusparselt "${CSLT_USE:-old}"
    ;;
splitk)
    export PROBE_BATCHES=${PROBE_BATCHES:-256} PROBE_SWEEP=${PROBE_BATCHES:-256}
    stamp "cuSPARSELt: every config, then split-K x mode on the best 12, batch $PROBE_BATCHES, W as A row-major"
    timeout "${PROBE_TIMEOUT:-420}" python3 benchmarks/gpu_probe_cusparselt.py --layouts \
        --budget "${PROBE_BUDGET:-300}" --layout-names wA_wrow_xrow --no-nmref --jsonl "$OUT/probe_splitk.jsonl" \
        2>&1 | tee "$OUT/probe_splitk.log"
    ;;
streams)
    stamp "split-K over concurrent cuSPARSELt calls (an experiment)"
    timeout "${PROBE_TIMEOUT:-300}" python3 benchmarks/gpu_probe_split_streams.py ${STREAMS_ARGS:-} \
        --json "$OUT/gpu_probe_split_streams.json" 2>&1 | tee "$OUT/probe_split_streams.log"
    if [ -n "${STREAMS_NCU:-}" ]; then                # dense, nmref and nmref on half of K at batch 256, fp16
        stamp "ncu of the batch-256 kernels"
        timeout 200 ncu --clock-control none --profile-from-start off --section LaunchStats --section Occupancy \
            --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis \
            python3 benchmarks/gpu_probe_split_streams.py --profile > "$OUT/ncu_batch256.txt" 2>&1
        grep -v "^==PROF==" "$OUT/ncu_batch256.txt" | grep -E "^  [a-zA-Z_]|plans:|Grid Size|Block Size|Registers|Shared Memory Config|Waves|Duration|Throughput|Achieved Occupancy|Theoretical Occupancy|Cluster|Warp Cycles Per Issued|Issued Warp" | head -80
    fi
    ;;
batched)
    stamp "split-K through cuSPARSELt's batched matmul (an experiment)"
    timeout "${PROBE_TIMEOUT:-400}" python3 benchmarks/gpu_probe_batched_splitk.py ${BATCHED_ARGS:-} \
        --json "$OUT/gpu_probe_batched_splitk.json" 2>&1 | tee "$OUT/probe_batched_splitk.log"
    ;;
cutlass)
    stamp "CUTLASS 4.2's Hopper 2:4 sparse GEMM (libraries built on the dev machine, carried in .cutlass_libs)"
    timeout "${PROBE_TIMEOUT:-450}" python3 benchmarks/gpu_probe_cutlass_sparse.py --libs .cutlass_libs \
        --jsonl "$OUT/gpu_probe_cutlass_sparse.jsonl" ${CUTLASS_ARGS:-} 2>&1 | tee "$OUT/probe_cutlass_sparse.log"
    ;;
timing)
    stamp "the speed-up under four timing methods (issue 7's facts against bench_cusparselt's method)"
    timeout "${PROBE_TIMEOUT:-450}" python3 benchmarks/gpu_probe_timing_methods.py \
        --jsonl "$OUT/gpu_probe_timing_methods.jsonl" ${TIMING_ARGS:-} 2>&1 | tee "$OUT/probe_timing_methods.log"
    ;;
table)
    TEST_TIMEOUT=120 run_tests tests.log tests/test_cusparselt.py
    if [ -n "${2:-}" ]; then
        stamp "execute notebooks/${2}_* (NMREF_FAST=0)"
        NMREF_FAST=0 timeout "${NB_TIMEOUT:-120}" python3 notebooks/_build.py "$2" 2>&1 | tee "$OUT/notebook.log"
        cp notebooks/${2}_*.ipynb "$OUT/"
    fi
    stamp "bench_cusparselt, 3 repeats"
    timeout "${BENCH_TIMEOUT:-470}" python3 benchmarks/bench_cusparselt.py --json "$OUT/gpu_cusparselt.json" \
        --markdown "$OUT/gpu_cusparselt.md" 2>&1 | tee -a "$OUT/runs.log"
    ;;
record)
    stamp "bench_cusparselt ${BENCH_ARGS:-}, 3 repeats"
    timeout "${BENCH_TIMEOUT:-450}" python3 benchmarks/bench_cusparselt.py --json "$OUT/gpu_cusparselt.json" \
        --markdown "$OUT/gpu_cusparselt.md" ${BENCH_ARGS:-} 2>&1 | tee -a "$OUT/runs.log"
    if [ -n "${RECORD_TESTS:-}" ]; then
        TEST_TIMEOUT=300 run_tests tests.log tests --ignore=tests/test_notebooks.py
        stamp "bench_gpu_train_step"
        timeout 90 python3 benchmarks/bench_gpu_train_step.py --markdown "$OUT/gpu_train_step.md" 2>&1 | tee -a "$OUT/runs.log"
    fi
    ;;
*)
    echo "unknown stage $STAGE (see the list at the top of this file)"; exit 2 ;;
esac
stamp "done"
