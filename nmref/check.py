"""Is this checkpoint really N:M? Reads .npz (nmref checkpoints too), PyTorch .pt/.pth and .safetensors files
(tensorfile.py) and reports, per weight tensor, the layout used, density and the groups holding more than n
non-zeros.

A tensor complies with n:m (n = kept) when every group of m consecutive weights along the grouped axis has at
most n non-zeros (docs/algorithms.md section 0). Layout "auto": 2-D -> "linear" (groups along axis 1 of (out, in)),
3-D / 4-D -> "conv" (groups along Cin of the OIHW weight at fixed (cout, kh, kw), i.e. NHWC grouping).
Masks stored beside dense weights are applied first (``mask_candidates`` gives the matching rule).
The JSON report (``SCHEMA_VERSION``) is documented in docs/crosscheck.md.
"""
import json
import os
import re

import numpy as np

from .groups import check_divisible, divisors, grouped_axis_length
from .masks import Pattern, nm_report, parse_pattern
from .tensorfile import CheckInputError, one_line, read_tensors

SCHEMA_VERSION = 1
LAYOUT_CHOICES = ("auto", "conv", "linear", "nchw_flatten")
FIRST_VIOLATIONS = 5
LAYOUT_NOTES = {
    "linear": "groups of m consecutive input features (axis 1) of each output row of the (out, in) weight",
    "conv": "groups of m consecutive input channels (axis 1 of the OIHW weight) at each fixed (cout, kh, kw): "
            "the weight regrouped as NHWC (Cout, kh, kw, Cin), as NVIDIA ASP and cuSPARSELt group it",
    "nchw_flatten": "groups of m consecutive entries of each output's C-order flatten (Cin*kh*kw), "
                    "the SR-STE paper-era grouping",
}


# ---- matching masks to weights ----------------------------------------------------------------------------------
def mask_candidates(name, separate_file=False):
    """Names the mask of weight ``name`` may have, in the order tried: in a separate --masks file ``name``
    itself first; then "<name>_mask" (torch.nn.utils.prune stores "x.weight_orig" + "x.weight_mask", so a
    trailing "_orig" is dropped first), "<module>.mask" for "<module>.weight", and nmref's "mask/<name>"."""
    base = name[: -len("_orig")] if name.endswith("_orig") else name
    names = [name] if separate_file else []
    names += [f"{base}_mask", f"{name}_mask"]
    module, _, leaf = base.rpartition(".")
    if module and leaf == "weight":
        names.append(f"{module}.mask")
    names.append(f"mask/{base}")
    return list(dict.fromkeys(names))


def match_masks(names, mask_names, separate_file=False):
    """weight name -> mask name: for each of ``names`` the first of ``mask_candidates`` in ``mask_names``."""
    pool = set(mask_names)
    matched = {}
    for name in names:
        for candidate in mask_candidates(name, separate_file):
            if candidate in pool and (separate_file or candidate != name):
                matched[name] = candidate
                break
    if not separate_file:
        used = set(matched.values())
        matched = {w: k for w, k in matched.items() if w not in used}
    return matched


# ---- checking ---------------------------------------------------------------------------------------------------
def resolve_pattern(pattern, semantics="keep"):
    """(n_keep, m) from "n:m" / (n, m) read with ``semantics`` ("keep": n kept, "prune": n zeroed)."""
    parsed = parse_pattern(pattern, semantics=semantics)
    return int(parsed.n_keep), int(parsed.m)


def layout_for(shape, layout, auto_conv="conv"):
    """(layout used, None) for a weight of ``shape`` under the --layout choice, or (None, why it is skipped);
    "auto" gives 2-D weights "linear" and others ``auto_conv``."""
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUT_CHOICES}")
    if len(shape) == 2:
        return "linear", None
    if layout == "linear":
        return None, f"{len(shape)}-D: layout 'linear' groups only 2-D (out, in) weights; use --layout auto"
    return (auto_conv if layout == "auto" else layout), None


def skip_reason(name, w, n_keep, m, layout, include, auto_conv="conv"):
    """(layout used, None) when tensor ``name`` is checked, else (None, the reason it is skipped)."""
    if include is not None and not include.search(name):
        return None, "excluded by --include"
    if w.dtype.kind != "f":
        return None, f"non-float (dtype {w.dtype})"
    if w.ndim < 2:
        return None, f"{w.ndim}-D (bias, norm or scalar): N:M groups weight matrices and conv kernels"
    used, why = layout_for(w.shape, layout, auto_conv)
    if used is None:
        return None, why
    k = grouped_axis_length(w.shape, used)
    if k < m:
        return None, f"too small: the grouped axis has {k} < m={m} weights"
    try:
        check_divisible(w.shape, m, used)
    except ValueError:
        return None, f"not divisible: grouped axis length {k} % m={m} != 0 (m could be one of {divisors(k)})"
    return used, None


def check_tensor(name, w, n_keep, m, layout, mask=None, mask_name=None, dtype=None):
    """Report of one tensor (``masks.nm_report``): at most ``n_keep`` non-zeros of W*mask in every group of m."""
    if mask is not None and tuple(mask.shape) != tuple(w.shape):
        raise CheckInputError(f"mask {mask_name!r} has shape {tuple(mask.shape)} but weight {name!r} has shape "
                              f"{tuple(w.shape)}; a mask must have its weight's shape")
    effective = w if mask is None else np.where(np.asarray(mask) != 0, w, np.zeros((), w.dtype))   # like w
    rep = nm_report({name: effective}, n_keep, m, layout, max_positions=FIRST_VIOLATIONS)[name]
    return {"name": name, "shape": list(w.shape), "dtype": dtype or str(w.dtype), "layout": layout,
            "source": "weight" if mask is None else "weight*mask", "mask": mask_name, "groups": rep["groups"],
            "density": rep["density"], "violating_groups": rep["violating_groups"],
            "first_violations": rep["first_violations"], "compliant": bool(rep["compliant"])}


def collect_masks(source, masks_path=None):
    """(weight -> mask array, weight -> mask label, mask entry -> its weight, unmatched masks, notes)."""
    arrays, labels = dict(source.masks), {name: f"mask/{name}" for name in source.masks}
    in_file = match_masks(source.tensors, source.tensors)
    for weight, key in in_file.items():
        arrays.setdefault(weight, source.tensors[key])
        labels.setdefault(weight, key)
    consumed = {key: weight for weight, key in in_file.items()}
    if masks_path is None:
        return arrays, labels, consumed, [], []
    extra = read_tensors(masks_path)
    pool = extra.masks if extra.format == "nmref-checkpoint" else extra.tensors
    outside = match_masks(source.tensors, pool, separate_file=True)
    for weight, key in outside.items():
        arrays[weight], labels[weight] = pool[key], f"{os.fspath(masks_path)}:{key}"
    return arrays, labels, consumed, sorted(set(pool) - set(outside.values())), extra.notes


def check_file(path, pattern=None, layout="auto", semantics="keep", include=None, masks=None,
               all_weights=False):
    """Per-tensor N:M report (a JSON-ready dict, docs/crosscheck.md) of the weights in ``path``.

    pattern "n:m", (n, m) or a Pattern, n kept (``semantics="prune"``: n zeroed); None only for an nmref
    checkpoint of a sparse run (its config's pattern). layout one of LAYOUT_CHOICES ("auto" on an nmref checkpoint: its
    config's conv layout); include a regular expression a tensor name must contain (re.search); masks a file
    of masks for the dense weights in ``path``, matched by name (``mask_candidates``). When masks are present
    (in ``path``, an nmref checkpoint's mask/<name>, or ``masks``) they mark the sparse layers: weights
    without one are skipped as dense unless ``all_weights``."""
    if layout not in LAYOUT_CHOICES:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUT_CHOICES}")
    regex = _compile(include)
    source = read_tensors(path)
    config = (source.meta or {}).get("config") or {}
    if pattern is None:
        if config.get("method", "dense") == "dense" or not config.get("pattern"):
            raise ValueError("pattern is required (e.g. --pattern 2:4): only an nmref checkpoint of a sparse run "
                             "records its own")
        pattern, semantics = config["pattern"], "keep"
        source.notes.append(f"pattern {pattern} from the checkpoint's config (method {config['method']})")
    n_keep, m = resolve_pattern(pattern, semantics)
    auto_conv = config.get("layout") if config.get("layout") in ("conv", "nchw_flatten") else "conv"
    if auto_conv != "conv" and layout == "auto":
        source.notes.append(f"conv weights use layout {auto_conv!r}, the checkpoint's training layout")
    mask_arrays, labels, consumed, unmatched, mask_notes = collect_masks(source, masks)
    checked, skipped = [], []
    for name, w in source.tensors.items():
        used, why = skip_reason(name, w, n_keep, m, layout, regex, auto_conv)
        if name in consumed:
            used, why = None, f"mask of {consumed[name]!r}"
        elif source.format == "nmref-checkpoint" and ".weight." in name and why != "excluded by --include":
            used, why = None, "method parameter (e.g. LBC scores), not a layer weight"
        elif used is not None and mask_arrays and name not in mask_arrays and not all_weights:
            used, why = None, "no mask: a dense layer (the file's masks mark the sparse layers; --all-weights " \
                              "checks it too)"
        if used is None:
            skipped.append(_skipped(name, w, source, why))
            continue
        checked.append(check_tensor(name, w, n_keep, m, used, mask_arrays.get(name), labels.get(name),
                                    source.dtypes[name]))
    for name, why in source.unreadable.items():
        skipped.append({"name": name, "shape": None, "dtype": None, "reason": why})
    for name in source.state_names:
        skipped.append({"name": name, "shape": None, "dtype": None,
                        "reason": "nmref checkpoint state (buffers, optimizer, method, SAD, meta), not a weight"})
    violating = sum(not t["compliant"] for t in checked)
    return {
        "schema_version": SCHEMA_VERSION, "nmref_version": _version(), "file": os.fspath(path),
        "format": source.format, "masks_file": None if masks is None else os.fspath(masks),
        "pattern": {"spec": _spec(pattern), "semantics": semantics, "n_keep": n_keep, "m": m},
        "layout": layout, "layout_notes": {k: LAYOUT_NOTES[k] for k in sorted({t["layout"] for t in checked})},
        "include": include, "all_weights": bool(all_weights), "tensors": checked, "skipped": skipped,
        "unmatched_masks": unmatched, "notes": source.notes + mask_notes,
        "summary": {"checked": len(checked), "compliant": len(checked) - violating, "violating": violating,
                    "skipped": len(skipped)},
        "compliant": bool(checked) and violating == 0,
    }


def _compile(include):
    if include is None:
        return None
    try:
        return re.compile(include)
    except re.error as exc:
        raise ValueError(f"include={include!r} is not a regular expression ({exc})") from None


def _skipped(name, w, source, reason):
    return {"name": name, "shape": list(w.shape), "dtype": source.dtypes.get(name, str(w.dtype)), "reason": reason}


def _spec(pattern):
    if isinstance(pattern, Pattern):
        return f"{pattern.n_keep}:{pattern.m}"
    return pattern if isinstance(pattern, str) else ":".join(str(int(v)) for v in pattern)


def _version():
    from . import __version__
    return __version__


def exit_code(report):
    """0 when every checked tensor complies, 1 on a violation, 2 when nothing could be checked."""
    if report["summary"]["violating"]:
        return 1
    return 0 if report["summary"]["checked"] else 2


# ---- output -----------------------------------------------------------------------------------------------------
def format_report(report):
    """The human-readable table of a ``check_file`` report."""
    p = report["pattern"]
    lines = [f"{report['file']} ({report['format']}): pattern {p['spec']} read as n_keep={p['n_keep']} kept of "
             f"every m={p['m']} (--semantics {p['semantics']}), layout {report['layout']}"]
    lines += [f"note: {note}" for note in report["notes"]]
    rows = [("tensor", "shape", "layout", "checked", "density", "groups", "violating", "status")]
    for t in report["tensors"]:
        rows.append((t["name"], _shape(t["shape"]), t["layout"], t["source"], f"{t['density']:.4f}",
                     str(t["groups"]), str(t["violating_groups"]), "ok" if t["compliant"] else "VIOLATION"))
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for t in report["tensors"]:
        for position in t["first_violations"]:
            lines.append(f"  {position}: more than {p['n_keep']} non-zeros")
        if t["violating_groups"] > len(t["first_violations"]):
            lines.append(f"  {t['name']}: ... {t['violating_groups'] - len(t['first_violations'])} more")
    for layout, note in report["layout_notes"].items():
        lines.append(f"layout {layout}: {note}")
    by_reason = {}
    for s in report["skipped"]:
        by_reason.setdefault(s["reason"], []).append(s["name"])
    if by_reason:
        lines.append(f"skipped {len(report['skipped'])}:")
    for reason, names in by_reason.items():
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        lines.append(f"  {reason}: {shown}")
    if report["unmatched_masks"]:
        lines.append(f"masks matching no weight: {', '.join(report['unmatched_masks'])}")
    s = report["summary"]
    if not s["checked"]:
        lines.append("result: no tensor was checked (see skipped); check --pattern, --layout and --include")
    else:
        lines.append(f"result: {s['compliant']} of {s['checked']} checked tensors are {p['n_keep']}:{p['m']}"
                     + (f"; {s['violating']} violate{'s' * (s['violating'] == 1)}" if s["violating"] else ""))
    return "\n".join(lines)


def _shape(shape):
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# ---- command line -----------------------------------------------------------------------------------------------
def register_cli(subparsers):
    """Add the ``check``, ``golden`` and ``export`` subcommands; each sets ``func`` (args -> exit code)."""
    check = subparsers.add_parser(
        "check", help="is this checkpoint really N:M? per-tensor report; exit 1 on a violation",
        description="Check that every weight tensor in FILE (.npz incl. nmref checkpoints, .pt/.pth, "
                    ".safetensors) has at most n non-zeros in every group of m. Exit 0: all checked tensors "
                    "comply; 1: a violation; 2: unreadable input or nothing to check.")
    check.add_argument("file", help="checkpoint or state dict: .npz, .pt/.pth or .safetensors")
    check.add_argument("--pattern", help="n:m, e.g. 2:4 (n kept of every m; see --semantics); optional for "
                                         "nmref checkpoints of sparse runs, which record theirs")
    check.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                       help="auto (default): 2-D linear, 3-D/4-D conv (groups along Cin, NHWC)")
    check.add_argument("--semantics", choices=("keep", "prune"), default="keep",
                       help="keep (default): n counts kept weights; prune: n counts zeroed weights")
    check.add_argument("--include", metavar="REGEX", help="check only tensors whose name matches (re.search)")
    check.add_argument("--masks", metavar="FILE", help="masks for the dense weights in FILE, matched by name")
    check.add_argument("--all-weights", action="store_true",
                       help="also check weights that have no mask when the file has masks for others")
    check.add_argument("--json", action="store_true", help="print the JSON report (docs/crosscheck.md)")
    check.set_defaults(func=run_check)
    golden = subparsers.add_parser("golden", help="write versioned reference vectors for other implementations",
                                   description="Write golden .npz files and manifest.json into DIR.")
    golden.add_argument("dir", help="output directory (created if missing)")
    golden.set_defaults(func=run_golden)
    export = subparsers.add_parser(
        "export", help="export an nmref checkpoint as a PyTorch-style state dict with the masks applied",
        description="Write the masked weights (and '<name>_mask' masks) with PyTorch names and layouts.")
    export.add_argument("checkpoint", help="an nmref training checkpoint (.npz)")
    export.add_argument("out", help="output file: .safetensors, .pt or .npz")
    export.set_defaults(func=run_export)


def _fail(command, exc):
    import sys
    print(f"nmref {command}: error: {one_line(exc, 400)}", file=sys.stderr)
    return 2


def run_check(args):
    """``nmref check``: print the report, return the exit code."""
    try:
        report = check_file(args.file, args.pattern, args.layout, args.semantics, args.include, args.masks,
                            args.all_weights)
    except (CheckInputError, ValueError, TypeError, OSError) as exc:
        return _fail("check", exc)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return exit_code(report)


def run_golden(args):
    """``nmref golden``: write the reference vectors, list them."""
    from .golden import write_golden
    try:
        manifest = write_golden(args.dir)
    except OSError as exc:
        return _fail("golden", exc)
    for name, entry in manifest["files"].items():
        print(f"{os.path.join(args.dir, name)}: {entry['description']}")
    return 0


def run_export(args):
    """``nmref export``: write the state dict, say what was written."""
    from .export import export_checkpoint
    try:
        written = export_checkpoint(args.checkpoint, args.out)
    except (CheckInputError, ValueError, OSError) as exc:
        return _fail("export", exc)
    print(f"{args.out}: {len(written)} tensors ({sum(k.endswith('_mask') for k in written)} masks)")
    return 0


def main(argv=None):
    """``python -m nmref.check check FILE ...`` without the nmref console script."""
    import argparse
    parser = argparse.ArgumentParser(prog="nmref")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
