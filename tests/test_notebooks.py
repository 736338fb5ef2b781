"""The teaching notebooks: generated from notebooks/_src, committed with the outputs of a full run, and
following the arc of STYLE.md. Executing them is nbmake's job (pytest collects notebooks/*.ipynb)."""
import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ["01_nm_sparsity", "02_ste_and_srste", "03_sad", "04_lbc", "05_patterns_and_accuracy",
            "06_cusparselt_2to4", "07_crosscheck_your_implementation"]


def load_builder():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_notebook_has_a_source_and_a_committed_ipynb():
    assert sorted(p.stem for p in (NOTEBOOKS / "_src").glob("[0-9][0-9]_*.py")) == EXPECTED
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_cells_match_the_source(name):
    builder = load_builder()
    assert builder.stale(NOTEBOOKS / "_src" / f"{name}.py") == ""


def test_markdown_only_refresh_keeps_the_outputs_and_refuses_code_changes(tmp_path):
    builder = load_builder()
    builder.HERE = tmp_path
    name = "06_cusparselt_2to4"                                       # its outputs come from a GPU run
    (tmp_path / f"{name}.ipynb").write_bytes((NOTEBOOKS / f"{name}.ipynb").read_bytes())
    source = tmp_path / f"{name}.py"
    text = (NOTEBOOKS / "_src" / f"{name}.py").read_text(encoding="utf-8")
    source.write_text(text.replace("# %% [markdown]\n", "# %% [markdown]\n# Edited.\n", 1), encoding="utf-8")
    assert builder.refresh_markdown(source) == 1
    before = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    after = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
    assert builder.stale(source) == ""
    assert [c.outputs for c in after.cells if c.cell_type == "code"] == \
        [c.outputs for c in before.cells if c.cell_type == "code"]
    source.write_text(text.replace("\nimport ", "\nimport os  # edited\nimport ", 1), encoding="utf-8")
    with pytest.raises(SystemExit, match="code cells differ"):
        builder.refresh_markdown(source)


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_outputs_are_from_a_full_run(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata.get("nmref", {}).get("executed_with", "").startswith("NMREF_FAST=0")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum(bool(c.outputs) for c in nb.cells if c.cell_type == "code") >= 5
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the outputs"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_follows_the_arc(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for heading in ("**Goal.**", "## Summary", "## Exercises", "## Solutions"):
        assert heading in markdown, heading
    assert markdown.index("## Exercises") < markdown.index("## Solutions")
    assert "import nmref" in code or "from nmref" in code
    assert "plt.show()" in code
    assert "os.environ" not in code, "read NMREF_FAST through nmref.data.fast_mode()"
