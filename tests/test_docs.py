"""docs/api.md stays true to the code, and every relative link in the docs and README resolves."""
import ast
import dataclasses
import importlib
import inspect
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest

import nmref
import nmref.train

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"
MODULES = ("backend", "params", "groups", "masks", "transposable", "sparsity", "lbc", "sad", "layers", "losses",
           "optim", "data", "models", "train", "check", "golden", "export", "cusparselt")
SIGNATURE = re.compile(r"`(nmref(?:\.\w+)+)\(([^`]*)\)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
ELIDED = "..."
DEFAULT_NAMESPACE = {"np": np, "numpy": np, "math": math}


def api_text():
    return API.read_text(encoding="utf-8")


def documented_signatures(text):
    """(dotted name, argument text) for every `nmref.x.y(args)` on the page."""
    return SIGNATURE.findall(text)


def resolve(dotted):
    """The object behind "nmref.module.Name[.attr]": the longest importable module prefix, then getattr."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = inspect.getattr_static(obj, attr) if isinstance(obj, type) else getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def real_parameters(obj):
    """Parameters of a function, method (self / cls dropped) or class constructor."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
        params = list(inspect.signature(obj).parameters.values())
        return params[1:] if params and params[0].name == "cls" else params
    params = list(inspect.signature(obj).parameters.values())
    if not isinstance(obj, type) and params and params[0].name == "self":
        params = params[1:]
    return params


def written_parameters(args):
    """Parameters as written on the page: (name, kind, default source or None)."""
    node = ast.parse(f"def f({args}): pass").body[0].args
    out = []
    positional = node.posonlyargs + node.args
    defaults = [None] * (len(positional) - len(node.defaults)) + node.defaults
    for arg, default in zip(positional, defaults):
        out.append((arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default))
    if node.vararg:
        out.append((node.vararg.arg, inspect.Parameter.VAR_POSITIONAL, None))
    for arg, default in zip(node.kwonlyargs, node.kw_defaults):
        out.append((arg.arg, inspect.Parameter.KEYWORD_ONLY, default))
    if node.kwarg:
        out.append((node.kwarg.arg, inspect.Parameter.VAR_KEYWORD, None))
    return out


def same_default(source_node, value):
    written = eval(compile(ast.Expression(source_node), "<api.md>", "eval"), dict(DEFAULT_NAMESPACE))
    if isinstance(value, type) or isinstance(written, type):
        return written is value
    return type(written) is type(value) and written == value


def signature_problems(dotted, args):
    """Differences between a signature written on the page and the code ([] when they agree)."""
    try:
        obj = resolve(dotted)
    except (ImportError, AttributeError) as exc:
        return [f"{dotted}: no such object in nmref ({exc})"]
    if args.strip() == ELIDED:
        return [] if dataclasses.is_dataclass(obj) else [f"{dotted}(...): only dataclasses may elide arguments"]
    try:
        written = written_parameters(args)
    except SyntaxError:
        return [f"{dotted}({args}): not a parameter list"]
    real = real_parameters(obj)
    names_w = [(n, k) for n, k, _ in written]
    names_r = [(p.name, p.kind if p.kind != p.POSITIONAL_ONLY else p.POSITIONAL_OR_KEYWORD) for p in real]
    if names_w != names_r:
        return [f"{dotted}({args}): parameters {[n for n, _ in names_w]} (kinds {[str(k) for _, k in names_w]}) "
                f"but the code has {inspect.signature(obj)}"]
    problems = []
    for (name, _, default), p in zip(written, real):
        if (default is None) != (p.default is p.empty):
            problems.append(f"{dotted}: parameter {name!r} default written "
                            f"{'none' if default is None else ast.unparse(default)}, code has "
                            f"{'none' if p.default is p.empty else repr(p.default)}")
        elif default is not None and not same_default(default, p.default):
            problems.append(f"{dotted}: parameter {name!r} default {ast.unparse(default)} != code's {p.default!r}")
    return problems


def exported_names():
    return sorted(n for n in dir(nmref) if not n.startswith("_")
                  and not isinstance(getattr(nmref, n), types.ModuleType))


# ---------------------------------------------------------------- (1) every exported name is documented
def test_every_exported_name_is_documented():
    text = api_text()
    missing = [n for n in exported_names()
               if f"`{n}`" not in text and not re.search(rf"(?<![\w]){re.escape(n)}\(", text)]
    assert not missing, f"docs/api.md does not mention nmref's exports {missing}"


def test_exported_names_are_the_stable_list():
    section = api_text().split("## Stable public names", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([A-Za-z_]\w*)`", section))
    missing = sorted(set(exported_names()) - listed)
    assert not missing, f"'Stable public names' in docs/api.md lacks {missing}"
    stale = sorted(n for n in listed if not n.startswith("_") and not hasattr(nmref, n))
    assert not stale, f"'Stable public names' lists {stale}, which `import nmref` does not export"


# ---------------------------------------------------------------- (2) written signatures match the code
def test_page_has_signatures_of_every_module():
    found = {name.split(".")[1] for name, _ in documented_signatures(api_text())}
    assert set(MODULES) <= found, f"no signatures for modules {sorted(set(MODULES) - found)}"


def test_written_signatures_match_the_code():
    problems = [p for name, args in documented_signatures(api_text()) for p in signature_problems(name, args)]
    assert not problems, "docs/api.md signatures differ from the code:\n" + "\n".join(problems)


def test_every_public_function_and_class_is_documented():
    written = {name for name, _ in documented_signatures(api_text())}
    text = api_text()
    missing = []
    for module_name in MODULES:
        module = importlib.import_module(f"nmref.{module_name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            dotted = f"nmref.{module_name}.{name}"
            if dotted not in written and f"`{dotted}`" not in text:
                missing.append(dotted)
    assert not missing, f"add these to docs/api.md (signature as in the code): {missing}"


def test_trainconfig_table_matches_the_dataclass():
    rows = re.findall(r"^\s*\|\s*`(\w+)`\s*\|\s*`([^`]*)`\s*\|", api_text(), flags=re.MULTILINE)
    fields = dataclasses.fields(nmref.train.TrainConfig)
    assert [name for name, _ in rows] == [f.name for f in fields], "TrainConfig table: fields differ or misordered"
    for (name, default), field in zip(rows, fields):
        value = eval(default, dict(DEFAULT_NAMESPACE))
        assert value == field.default and type(value) is type(field.default), \
            f"TrainConfig.{name}: table says {default}, the code {field.default!r}"


# the checker itself: a drifted signature is caught
@pytest.mark.parametrize("args", ["w, m, n, layout='linear', straddle=False, backend='auto'",
                                  "w, n, m, layout='conv', straddle=False, backend='auto'",
                                  "w, n, m, layout='linear', straddle=False",
                                  "w, n, m, layout='linear', straddle=False, backend='auto', extra=1"])
def test_checker_catches_drift(args):
    assert signature_problems("nmref.masks.nm_mask", args)
    assert not signature_problems("nmref.masks.nm_mask",
                                  "w, n, m, layout=\"linear\", straddle=False, backend=\"auto\"")


def test_checker_handles_keyword_only_and_methods():
    assert not signature_problems("nmref.layers.Linear", "in_features, out_features, bias=True, method=None, "
                                  "layout=\"linear\", *, rng, dtype=np.float32")
    assert signature_problems("nmref.layers.Linear", "in_features, out_features, bias=True, method=None, "
                              "layout=\"linear\", rng, dtype=np.float32")
    assert signature_problems("nmref.layers.Linear", "in_features, out_features, bias=True, method=None, "
                              "layout=\"linear\", *, rng, dtype=np.float64")
    assert not signature_problems("nmref.sparsity.Fixed.from_weights", "w, n, m, layout=\"linear\", straddle=False")
    assert signature_problems("nmref.sparsity.Fixed.nonexistent", "w")


# ---------------------------------------------------------------- (3) relative links resolve
def markdown_files():
    return sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def broken_links(file):
    text = re.sub(r"```.*?```", "", file.read_text(encoding="utf-8"), flags=re.DOTALL)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue                                                     # http:, mailto:, in-page anchors
        path = target.split("#", 1)[0]
        if not (file.parent / path).exists():
            broken.append(target)
    return broken


@pytest.mark.parametrize("file", markdown_files(), ids=lambda f: f.relative_to(ROOT).as_posix())
def test_relative_links_resolve(file):
    assert not broken_links(file), f"{file.relative_to(ROOT)}: links to missing files {broken_links(file)}"


def test_link_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [web](https://example.org) [gone](missing.md#x) ![img](nope.png)\n")
    assert broken_links(page) == ["missing.md#x", "nope.png"]
