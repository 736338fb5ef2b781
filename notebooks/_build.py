"""Build the teaching notebooks from their single source, notebooks/_src/NN_name.py (percent format).

    python notebooks/_build.py                 build every .ipynb and execute it in full mode (NMREF_FAST=0):
                                               the outputs that are committed
    python notebooks/_build.py 03 04           only the notebooks whose name starts with 03 or 04
    python notebooks/_build.py --fast          execute in fast mode (NMREF_FAST=1), e.g. to try a change
    python notebooks/_build.py --no-execute    cells only, no outputs
    python notebooks/_build.py --check         exit 1 when an .ipynb's cells differ from its source
    python notebooks/_build.py --markdown-only 06   rewrite only the markdown cells, keeping the committed
                                               outputs (e.g. GPU ones); refused when a code cell changed

Source format: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are written
as ``# text``. The .ipynb files are generated: edit the source, never the notebook.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "_src"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
CELL_TIMEOUT_S = 900


def parse_cells(text):
    """[(kind, source)] from percent-format text; kind is "code" or "markdown"."""
    cells, kind, lines = [], None, []

    def flush():
        if kind is not None:
            body = "\n".join(lines).strip("\n")
            if body:
                cells.append((kind, body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind == "markdown":
            if line and not line.startswith("#"):
                raise ValueError(f"markdown line without '# ': {line!r}")
            lines.append(line[2:] if line.startswith("# ") else line[1:])
        elif kind == "code":
            lines.append(line)
    flush()
    return cells


def build(source):
    """A fresh nbformat v4 notebook (no outputs) from one source file."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for kind, body in parse_cells(source.read_text(encoding="utf-8")):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(body))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem[:2]}-{i:03d}"
    return nb


def execute(nb, fast):
    """Run every cell top to bottom in a fresh kernel, in notebooks/, with NMREF_FAST set; the mode is
    recorded in the notebook's metadata (``nmref.executed_with``)."""
    mode = "NMREF_FAST=1" if fast else "NMREF_FAST=0"
    os.environ["NMREF_FAST"] = mode[-1]
    nb.metadata["nmref"] = {"executed_with": mode + " (fast: CI sizes)" if fast else mode + " (full run)"}
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    coalesce_streams(nb)
    return nb


def coalesce_streams(nb):
    """Merge consecutive stdout / stderr outputs of a cell, so that a rebuild gives the same file however
    the kernel happened to flush its output."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.outputs:
            last = merged[-1] if merged else None
            if last is not None and out.output_type == last.output_type == "stream" and out.name == last.name:
                last.text += out.text
            else:
                merged.append(out)
        cell.outputs = merged


def sources(prefixes):
    found = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if prefixes:
        found = [s for s in found if any(s.stem.startswith(p) for p in prefixes)]
        if not found:
            raise SystemExit(f"no source in {SOURCES} starts with {prefixes}")
    return found


def stale(source):
    """Why the committed .ipynb does not match its source ("" when it does)."""
    target = HERE / f"{source.stem}.ipynb"
    if not target.exists():
        return f"{target.name} is missing"
    committed = nbformat.read(target, as_version=4)
    want = [(c.cell_type, c.source) for c in build(source).cells]
    have = [(c.cell_type, c.source) for c in committed.cells]
    if want != have:
        first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
        return f"{target.name} differs from {source.name} from cell {first} on; run python notebooks/_build.py"
    return ""


def refresh_markdown(source):
    """Copy the source's markdown cells into the committed .ipynb, its code cells and outputs untouched;
    returns how many changed. SystemExit when the cells do not line up or a code cell differs (rebuild it)."""
    target = HERE / f"{source.stem}.ipynb"
    committed = nbformat.read(target, as_version=4)
    cells = build(source).cells
    kinds = [c.cell_type for c in cells] == [c.cell_type for c in committed.cells]
    if not kinds or any(w.source != h.source for w, h in zip(cells, committed.cells) if w.cell_type == "code"):
        raise SystemExit(f"{target.name}: code cells differ from {source.name}; rebuild it (python "
                         f"notebooks/_build.py {source.stem[:2]})")
    changed = 0
    for want, have in zip(cells, committed.cells):
        if want.cell_type == "markdown" and want.source != have.source:
            have.source, changed = want.source, changed + 1
    nbformat.write(committed, target)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    parser.add_argument("--fast", action="store_true", help="execute with NMREF_FAST=1")
    parser.add_argument("--no-execute", action="store_true", help="write cells without outputs")
    parser.add_argument("--check", action="store_true", help="only compare the .ipynb cells with the sources")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite only the markdown cells of the committed .ipynb, keeping its outputs")
    args = parser.parse_args(argv)
    if args.markdown_only:
        for source in sources(args.names):
            print(f"{source.stem}.ipynb: {refresh_markdown(source)} markdown cells rewritten")
        return 0
    if args.check:
        problems = [why for why in map(stale, sources(args.names)) if why]
        print("\n".join(problems) or "notebooks match their sources")
        return 1 if problems else 0
    for source in sources(args.names):
        nb = build(source)
        start = time.perf_counter()
        target = HERE / f"{source.stem}.ipynb"
        if not args.no_execute:
            try:
                execute(nb, args.fast)
            except Exception:
                nbformat.write(nb, target)                  # keep the outputs up to the failing cell
                print(f"{target.name}: execution failed, partial outputs written", flush=True)
                raise
        nbformat.write(nb, target)
        mode = "no execution" if args.no_execute else ("fast" if args.fast else "full") + " run"
        print(f"{target.name}: {len(nb.cells)} cells, {mode}, {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
