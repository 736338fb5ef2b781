"""The benchmark scripts still run: each CPU benchmark in its smallest mode, nothing saved (no timing is
checked; speed is measured by running the scripts, see benchmarks/). GPU scripts: --help, and the table of
committed raw records."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

# (script, arguments, NMREF_FAST): smallest run of each, nothing written under benchmarks/results/.
CPU_RUNS = [
    ("bench_masks.py", ["--quick", "--no-save"], "1"),
    ("bench_train_step.py", ["--repeats", "1", "--warmup", "0", "--no-save"], "1"),
    ("bench_lbc.py", ["--quick", "--out", "{tmp}/bench_lbc.md"], "1"),
    ("bench_epoch.py", ["--repeats", "1", "--methods", "dense", "--no-save"], "0"),     # forces full data itself
    ("bench_accuracy_cnn1d.py", ["--epochs", "1", "--no-save"], "0"),
    ("accuracy_patterns.py", ["--seeds", "1", "--jobs", "1", "--cache", "{tmp}/cache", "--no-save"], "1"),
    ("lbc_claim.py", ["--quick", "--epochs", "2", "--patterns", "2:4", "--eval-samples", "100", "--no-save"], "1"),
]


def run_script(script, args, tmp_path, fast="1"):
    env = dict(os.environ, NMREF_FAST=fast, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(BENCH / script)] + [a.format(tmp=tmp_path) for a in args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def results_listing():
    return sorted(p.name for p in (BENCH / "results").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("script, args, fast", CPU_RUNS, ids=[r[0] for r in CPU_RUNS])
def test_cpu_benchmark_runs(script, args, fast, tmp_path):
    before = results_listing()
    out = run_script(script, args, tmp_path, fast)
    if script == "lbc_claim.py":                       # per-seed lines, no table without saving
        assert "best-scored lower loss in" in out
    else:
        assert "|---" in out or "| ---" in out, out[-2000:]   # a markdown table was printed
    assert results_listing() == before                 # --no-save / --out kept benchmarks/results/ as it was


GPU_SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name.startswith(("gpu_", "bench_cusparselt",
                                                                                 "bench_gpu_")))


@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_gpu_script_imports_without_a_gpu(script, tmp_path):
    assert "usage:" in run_script(script, ["--help"], tmp_path)


def test_timing_methods_table_from_committed_records(tmp_path):
    records = BENCH / "results" / "gpu_probe_timing_methods_2026-11-21.jsonl"     # gpu_notes.md, round 8
    out = run_script("gpu_probe_timing_methods.py", ["--summarize", str(records)], tmp_path)
    for method in ("queued_rotated", "queued_one", "synced_one", "flushed_one"):
        assert out.count(f"| {method} |") == 6             # 2 dtypes x 3 batch sizes


def test_cusparselt_table_merged_from_runs_split_by_dtype(tmp_path):
    """--merge: a run split into one file per dtype gives back the table of the whole run; runs of another
    software stack are refused."""
    import json
    whole = BENCH / "results" / "gpu_cusparselt_0.8.0_round6_2026-11-21.json"      # gpu_notes.md, round 6
    d = json.loads(whole.read_text())
    paths = []
    for dtype in ("float16", "bfloat16"):
        part = {"env": d["env"], "runs": [[r for r in run if r["dtype"] == dtype] for run in d["runs"]]}
        paths.append(tmp_path / f"{dtype}.json")
        paths[-1].write_text(json.dumps(part))
    merged = run_script("bench_cusparselt.py", ["--merge", *map(str, paths), "--markdown", "{tmp}/m.md"], tmp_path)
    original = run_script("bench_cusparselt.py", ["--merge", str(whole)], tmp_path)
    joined = "Joined from separate runs on one machine (`--merge`): float16.json"
    assert merged.count(joined) == 1 and joined not in original
    lines = merged.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Joined from"))
    assert lines[:at] + lines[at + 2:] == original.splitlines()        # the same table, the joined line aside
    assert "| float16 | 256x4096x4096 |" in merged
    assert "Joined from" in (tmp_path / "m.md").read_text()
    other = dict(d, env=dict(d["env"], cusparselt=1000))
    paths[1].write_text(json.dumps(other))
    cmd = [sys.executable, str(BENCH / "bench_cusparselt.py"), "--merge", *map(str, paths)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "another environment (cusparselt" in done.stderr


def test_cusparselt_table_of_record_rebuilds_from_its_raw_runs(tmp_path):
    """docs/gpu.md's table: benchmarks/results/gpu_cusparselt_record_2026-11-21.md is exactly --merge of the
    two committed runs (fp16, bf16) of that session."""
    results = BENCH / "results"
    runs = [str(results / f"gpu_cusparselt_record_{d}_2026-11-21.json") for d in ("fp16", "bf16")]
    run_script("bench_cusparselt.py", ["--merge", *runs, "--markdown", "{tmp}/record.md"], tmp_path)
    rebuilt = (tmp_path / "record.md").read_text()
    assert rebuilt == (results / "gpu_cusparselt_record_2026-11-21.md").read_text()
    assert rebuilt.count("| 3 |") == 2 * 2 * 7               # gpu and steady tables: 2 dtypes x 7 shapes, 3 repeats
