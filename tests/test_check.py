"""nmref check: every reader, mask matching, skip reasons, layouts, exit codes and the JSON schema."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nmref.check import (SCHEMA_VERSION, CheckInputError, check_file, exit_code, format_report, main,
                         mask_candidates, match_masks, read_tensors)
from nmref.masks import nm_mask, parse_pattern


def _nm(rng, shape, n=2, m=4, layout=None):
    w = rng.standard_normal(shape).astype(np.float32)
    layout = layout or ("linear" if len(shape) == 2 else "conv")
    return w * nm_mask(w, n, m, layout)


def _run(capsys, *argv):
    code = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _by_name(report):
    return {t["name"]: t for t in report["tensors"]}, {s["name"]: s["reason"] for s in report["skipped"]}


@pytest.fixture
def state(rng):
    """A small conv + linear state dict that is 2:4, with a bias, a BN counter and a Cin=3 stem."""
    return {"stem.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "conv.weight": _nm(rng, (4, 8, 3, 3)),
            "conv.bias": rng.standard_normal(4).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64),
            "fc.weight": _nm(rng, (6, 16))}


def test_pt_written_by_torch_round_trip(tmp_path, state, capsys):
    path = tmp_path / "model.pt"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    report = check_file(path, "2:4")
    checked, skipped = _by_name(report)
    assert set(checked) == {"conv.weight", "fc.weight"}
    assert checked["conv.weight"]["layout"] == "conv" and checked["fc.weight"]["layout"] == "linear"
    assert all(t["compliant"] and t["density"] == 0.5 for t in checked.values())
    assert skipped["conv.bias"].startswith("1-D")
    assert skipped["bn.num_batches_tracked"].startswith("non-float")
    assert skipped["stem.weight"].startswith("too small")
    assert exit_code(report) == 0
    code, out, err = _run(capsys, path, "--pattern", "2:4")
    assert code == 0 and "conv.weight" in out and "NHWC" in out and err == ""


def test_violation_found_at_its_position(tmp_path, state, capsys):
    w = state["fc.weight"]
    row, group = 3, 2
    cols = slice(4 * group, 4 * group + 4)
    w[row, cols] = np.where(w[row, cols] == 0, 1.0, w[row, cols])                # 4 non-zeros in one group
    path = tmp_path / "model.pt"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    report = check_file(path, "2:4")
    fc = _by_name(report)[0]["fc.weight"]
    assert not fc["compliant"] and fc["violating_groups"] == 1
    assert fc["first_violations"] == [f"fc.weight[{row}, {4 * group}:{4 * group + 4}]"]
    assert _by_name(report)[0]["conv.weight"]["compliant"]
    code, out, _ = _run(capsys, path, "--pattern", "2:4")
    assert code == 1 and "VIOLATION" in out and f"fc.weight[{row}, 8:12]" in out


def test_conv_violation_names_the_input_channels(tmp_path, rng):
    w = _nm(rng, (4, 8, 3, 3))
    w[2, 4:8, 1, 0] = 1.0                                                         # Cin 4..7 at (cout 2, kh 1, kw 0)
    path = tmp_path / "w.npz"
    np.savez(path, conv=w)
    conv = check_file(path, "2:4")["tensors"][0]
    assert conv["violating_groups"] == 1 and conv["first_violations"][0].startswith("conv[2, 4:8, 1, 0]")


def test_safetensors_written_by_the_package(tmp_path, state, capsys):
    from safetensors.numpy import save_file
    path = tmp_path / "model.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    report = check_file(path, "2:4")
    assert report["format"] == "safetensors"
    assert {t["name"] for t in report["tensors"]} == {"conv.weight", "fc.weight"} and report["compliant"]
    state["fc.weight"][0, :4] = 1.0
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    code, out, _ = _run(capsys, path, "--pattern", "2:4")
    assert code == 1 and "fc.weight[0, 0:4]" in out


def test_bfloat16_tensors_read_exactly(tmp_path, rng):
    from safetensors.torch import save_file
    w = torch.from_numpy(_nm(rng, (6, 16))).to(torch.bfloat16)
    save_file({"fc.weight": w}, str(tmp_path / "bf16.safetensors"))
    torch.save({"fc.weight": w}, tmp_path / "bf16.pt")
    for name in ("bf16.safetensors", "bf16.pt"):
        read = read_tensors(tmp_path / name)
        assert read.dtypes["fc.weight"] == "bfloat16"
        np.testing.assert_array_equal(read.tensors["fc.weight"], w.float().numpy())
        assert check_file(tmp_path / name, "2:4")["compliant"]


def write_safetensors(path, entries):
    """A .safetensors file by hand: 8-byte little-endian header length, JSON header, raw bytes."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def test_float8_tensors_read_exactly_and_an_unknown_dtype_skips_only_its_tensor(tmp_path, rng):
    every_byte = bytes(range(256))
    fc = _nm(rng, (6, 16))
    write_safetensors(tmp_path / "f8.safetensors", {
        "e4m3": ("F8_E4M3", (16, 16), every_byte), "e5m2": ("F8_E5M2", (16, 16), every_byte),
        "e8m0": ("F8_E8M0", (4,), bytes(4)), "fc.weight": ("F32", fc.shape, fc.tobytes())})
    read = read_tensors(tmp_path / "f8.safetensors")
    assert read.dtypes["e4m3"] == "float8_e4m3fn" and read.dtypes["e5m2"] == "float8_e5m2"
    assert "F8_E8M0" in read.unreadable["e8m0"] and list(read.unreadable) == ["e8m0"]
    codes = torch.frombuffer(bytearray(every_byte), dtype=torch.uint8)
    for name, dtype in (("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)):
        expected = codes.view(dtype).float().numpy().reshape(16, 16)
        assert read.tensors[name].dtype == np.float32
        np.testing.assert_array_equal(read.tensors[name], expected)          # NaN where torch has NaN
    e4m3, e5m2 = read.tensors["e4m3"].ravel(), read.tensors["e5m2"].ravel()  # by hand, without torch
    assert (e4m3[0x38], e4m3[0x7E], e4m3[0x01], e4m3[0xB8]) == (1.0, 448.0, 2.0 ** -9, -1.0)
    assert np.isnan(e4m3[0x7F]) and np.isnan(e4m3[0xFF]) and np.signbit(e4m3[0x80]) and e4m3[0x80] == 0
    assert (e5m2[0x3C], e5m2[0x7B], e5m2[0x01], e5m2[0x7C]) == (1.0, 57344.0, 2.0 ** -16, np.inf)
    report = check_file(tmp_path / "f8.safetensors", "2:4")
    assert _by_name(report)[0]["fc.weight"]["compliant"] and _by_name(report)[0]["e4m3"]["compliant"] is False


def test_nmref_style_npz_checks_masked_weights_and_skips_state(tmp_path, rng, capsys):
    dense = rng.standard_normal((6, 16)).astype(np.float32)                       # stored dense, as nmref does
    mask = nm_mask(dense, 2, 4)
    path = tmp_path / "ckpt.npz"
    np.savez(path, **{"param/0.weight": dense, "mask/0.weight": mask, "param/0.bias": np.zeros(6, np.float32),
                      "param/2.weight": rng.standard_normal((4, 8)).astype(np.float32),
                      "param/0.weight.scores": np.full((24, 6), 1 / 3),
                      "optimizer/momentum/0.weight": dense, "method/0.weight/k": np.array(2),
                      "meta": np.array(json.dumps({"model": "mlp"}))})
    report = check_file(path, "2:4")
    checked, skipped = _by_name(report)
    assert report["format"] == "nmref-checkpoint"
    assert list(checked) == ["0.weight"] and checked["0.weight"]["source"] == "weight*mask"
    assert checked["0.weight"]["mask"] == "mask/0.weight" and checked["0.weight"]["compliant"]
    assert "no mask: a dense layer" in skipped["2.weight"] and "LBC scores" in skipped["0.weight.scores"]
    assert "2.weight" in _by_name(check_file(path, "2:4", all_weights=True))[0]
    assert "state" in skipped["optimizer/momentum/0.weight"] and "state" in skipped["meta"]
    np.savez(path, **{"param/0.weight": dense, "mask/0.weight": np.ones_like(mask)})
    code, _, _ = _run(capsys, path, "--pattern", "2:4")
    assert code == 1


def test_truncated_and_corrupt_files_exit_2_with_one_line(tmp_path, state, capsys):
    good = tmp_path / "model.pt"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, good)
    np.savez(tmp_path / "model.npz", **state)
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    for name in ("model.pt", "model.npz", "model.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        code, out, err = _run(capsys, tmp_path / f"cut_{name}", "--pattern", "2:4")
        assert code == 2 and out == "", name
        assert err.startswith("nmref check: error:") and err.count("\n") == 1 and f"cut_{name}" in err, err
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    assert _run(capsys, tmp_path / "junk.bin", "--pattern", "2:4")[0] == 2
    assert _run(capsys, tmp_path / "missing.pt", "--pattern", "2:4")[0] == 2


def test_corrupt_file_gives_no_traceback_from_the_command_line(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    run = subprocess.run([sys.executable, "-m", "nmref.check", "check", str(tmp_path / "bad.npz"), "--pattern",
                          "2:4"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1


def test_pickled_module_is_refused_with_a_hint(tmp_path, capsys):
    torch.save(torch.nn.Linear(8, 4), tmp_path / "module.pt")
    code, _, err = _run(capsys, tmp_path / "module.pt", "--pattern", "2:4")
    assert code == 2 and "state_dict()" in err and "torch.nn.modules.linear.Linear" in err


@pytest.mark.parametrize("text", ["garbage\n", "hello world\n", "{}\n"])
def test_text_file_named_pt_gets_no_state_dict_hint(tmp_path, capsys, text):
    (tmp_path / "garbage.pt").write_text(text)
    code, out, err = _run(capsys, tmp_path / "garbage.pt", "--pattern", "2:4")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "not readable by torch.load" in err and "state_dict" not in err


def test_unknown_format_lists_every_readable_extension(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    code, _, err = _run(capsys, tmp_path / "notes.txt", "--pattern", "2:4")
    assert code == 2 and "unknown file format" in err
    assert all(ext in err for ext in (".npz", ".npy", ".pt", ".pth", ".bin", ".ckpt", ".safetensors"))


def test_directory_is_named_as_such(tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path, "--pattern", "2:4")
    assert code == 2 and "is a directory" in err and "no such file" not in err


def test_non_weight_entries_are_reported_not_checked(tmp_path, rng):
    w = _nm(rng, (6, 16))
    torch.save({"state_dict": {"fc.weight": torch.from_numpy(w), "fc.scale": torch.tensor(2.0),
                               "step": 10, "ids": torch.arange(16).reshape(4, 4)}, "epoch": 3},
               tmp_path / "wrapped.pt")
    report = check_file(tmp_path / "wrapped.pt", "2:4")
    checked, skipped = _by_name(report)
    assert list(checked) == ["fc.weight"] and "state_dict" in report["notes"][0]
    assert skipped["step"] == "not a tensor (int)" and skipped["ids"].startswith("non-float")
    assert skipped["fc.scale"].startswith("0-D")
    np.savez(tmp_path / "mixed.npz", w=w, names=np.array(["a", "b"]), obj=np.array([{"a": 1}], dtype=object))
    _, skipped = _by_name(check_file(tmp_path / "mixed.npz", "2:4"))
    assert skipped["names"].startswith("non-float") and skipped["obj"].startswith("not loaded")


def test_conv_cin_not_divisible_is_skipped_with_the_reason(tmp_path, rng, capsys):
    np.savez(tmp_path / "w.npz", conv6=rng.standard_normal((4, 6, 3, 3)), conv8=_nm(rng, (4, 8, 3, 3)))
    _, skipped = _by_name(check_file(tmp_path / "w.npz", "2:4"))
    assert skipped["conv6"].startswith("not divisible") and "6" in skipped["conv6"]
    np.savez(tmp_path / "only.npz", conv6=rng.standard_normal((4, 6, 3, 3)))
    code, out, _ = _run(capsys, tmp_path / "only.npz", "--pattern", "2:4")
    assert code == 2 and "no tensor was checked" in out


def test_separate_masks_file_matched_by_name(tmp_path, rng, capsys):
    dense = {"a.weight": rng.standard_normal((6, 16)), "b.weight": rng.standard_normal((4, 8, 3, 3)),
             "c.weight": rng.standard_normal((6, 16))}
    masks = {"a.weight_mask": nm_mask(dense["a.weight"], 2, 4),
             "b.mask": nm_mask(dense["b.weight"], 2, 4, "conv").astype(np.float32),
             "c.weight": nm_mask(dense["c.weight"], 2, 4), "z.weight_mask": np.ones((2, 4), bool)}
    np.savez(tmp_path / "dense.npz", **dense)
    np.savez(tmp_path / "masks.npz", **masks)
    report = check_file(tmp_path / "dense.npz", "2:4", masks=tmp_path / "masks.npz")
    checked, _ = _by_name(report)
    assert {k: t["mask"].split(":")[-1] for k, t in checked.items()} == {
        "a.weight": "a.weight_mask", "b.weight": "b.mask", "c.weight": "c.weight"}
    assert report["compliant"] and report["unmatched_masks"] == ["z.weight_mask"]
    assert _run(capsys, tmp_path / "dense.npz", "--pattern", "2:4")[0] == 1           # dense without masks
    masks["a.weight_mask"] = np.ones((6, 16), bool)
    np.savez(tmp_path / "masks.npz", **masks)
    code, out, _ = _run(capsys, tmp_path / "dense.npz", "--pattern", "2:4", "--masks", tmp_path / "masks.npz")
    assert code == 1 and "a.weight[0, 0:4]" in out
    np.savez(tmp_path / "masks.npz", **{"a.weight_mask": np.ones((16, 6), bool)})
    code, _, err = _run(capsys, tmp_path / "dense.npz", "--pattern", "2:4", "--masks", tmp_path / "masks.npz")
    assert code == 2 and "shape" in err


def test_torch_prune_style_weight_orig_and_mask_in_one_file(tmp_path):
    import torch.nn.utils.prune
    layer = torch.nn.Linear(16, 6)
    mask = torch.from_numpy(nm_mask(layer.weight.detach().numpy(), 2, 4)).float()
    torch.nn.utils.prune.custom_from_mask(layer, "weight", mask)
    torch.save(layer.state_dict(), tmp_path / "pruned.pt")
    report = check_file(tmp_path / "pruned.pt", "2:4")
    checked, skipped = _by_name(report)
    assert list(checked) == ["weight_orig"] and checked["weight_orig"]["mask"] == "weight_mask"
    assert report["compliant"] and skipped["weight_mask"] == "mask of 'weight_orig'"


def test_mask_candidates_rule():
    assert mask_candidates("x.weight") == ["x.weight_mask", "x.mask", "mask/x.weight"]
    assert mask_candidates("x.weight_orig") == ["x.weight_mask", "x.weight_orig_mask", "x.mask", "mask/x.weight"]
    assert mask_candidates("x.bias", separate_file=True) == ["x.bias", "x.bias_mask", "mask/x.bias"]
    assert match_masks(["x.weight", "x.weight_mask"], ["x.weight", "x.weight_mask"]) == {"x.weight": "x.weight_mask"}


def test_include_layout_and_semantics(tmp_path, rng, capsys):
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    nhwc = w * nm_mask(w, 2, 4, "conv")                          # 2:4 along Cin, not along the NCHW flatten
    three_of_four = w * nm_mask(w, 3, 4, "conv")
    np.savez(tmp_path / "w.npz", **{"nhwc.weight": nhwc, "dense34.weight": three_of_four})
    path = tmp_path / "w.npz"
    assert _run(capsys, path, "--pattern", "2:4", "--include", "^nhwc")[0] == 0
    assert _run(capsys, path, "--pattern", "2:4", "--include", "^nhwc", "--layout", "nchw_flatten")[0] == 1
    assert _run(capsys, path, "--pattern", "2:4", "--include", "^nhwc", "--layout", "linear")[0] == 2
    report = check_file(path, "1:4", semantics="prune", include="dense34")
    assert report["pattern"] == {"spec": "1:4", "semantics": "prune", "n_keep": 3, "m": 4} and report["compliant"]
    assert _by_name(report)[1]["nhwc.weight"] == "excluded by --include"
    assert not check_file(path, "1:4", semantics="keep", include="dense34")["compliant"]
    for pattern in ((3, 4), parse_pattern("1:4", semantics="prune")):             # as docs/crosscheck.md builds it
        report = check_file(path, pattern, include="dense34")
        assert report["pattern"] == {"spec": "3:4", "semantics": "keep", "n_keep": 3, "m": 4} and report["compliant"]
    assert _run(capsys, path, "--pattern", "2:4", "--include", "(")[0] == 2
    assert _run(capsys, path, "--pattern", "5:4")[0] == 2


def test_json_schema(tmp_path, state, capsys):
    state["fc.weight"][0, :4] = 1.0
    path = tmp_path / "model.npz"
    np.savez(path, **state)
    code, out, _ = _run(capsys, path, "--pattern", "2:4", "--json")
    report = json.loads(out)
    assert code == 1 == exit_code(report)
    assert report["schema_version"] == SCHEMA_VERSION
    top = {"schema_version": int, "nmref_version": str, "file": str, "format": str, "masks_file": type(None),
           "pattern": dict, "layout": str, "layout_notes": dict, "include": type(None), "all_weights": bool,
           "tensors": list,
           "skipped": list, "unmatched_masks": list, "notes": list, "summary": dict, "compliant": bool}
    assert {k: type(v) for k, v in report.items()} == top
    tensor = {"name": str, "shape": list, "dtype": str, "layout": str, "source": str, "mask": type(None),
              "groups": int, "density": float, "violating_groups": int, "first_violations": list,
              "compliant": bool}
    for t in report["tensors"]:
        assert {k: type(v) for k, v in t.items()} == tensor
    assert all(set(s) == {"name", "shape", "dtype", "reason"} for s in report["skipped"])
    assert report["summary"] == {"checked": 2, "compliant": 1, "violating": 1, "skipped": 3}
    assert set(report["layout_notes"]) == {"conv", "linear"} and report["compliant"] is False


def test_missing_optional_packages_give_a_clear_message(tmp_path, state, monkeypatch):
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "model.pt")
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(CheckInputError, match="needs torch"):
        read_tensors(tmp_path / "model.pt")
    with pytest.raises(CheckInputError, match="needs the safetensors package"):
        read_tensors(tmp_path / "model.safetensors")


def test_format_is_sniffed_without_a_known_extension(tmp_path, state):
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "a.weights")
    np.savez(tmp_path / "b.npz", **state)
    (tmp_path / "b.weights").write_bytes((tmp_path / "b.npz").read_bytes())
    assert read_tensors(tmp_path / "a.weights").format == "torch"
    assert read_tensors(tmp_path / "b.weights").format == "npz"
    np.save(tmp_path / "fc.npy", state["fc.weight"])
    single = check_file(tmp_path / "fc.npy", "2:4")
    assert single["format"] == "npy" and [t["name"] for t in single["tensors"]] == ["fc"] and single["compliant"]


def test_human_report_summarises(tmp_path, state):
    np.savez(tmp_path / "model.npz", **state)
    text = format_report(check_file(tmp_path / "model.npz", "2:4"))
    assert "result: 2 of 2 checked tensors are 2:4" in text and "skipped 3:" in text


def test_nmref_checkpoint_supplies_its_pattern_and_conv_layout(tmp_path, rng, capsys):
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    meta = {"config": {"model": "cnn", "method": "srste", "pattern": "2:4", "layout": "nchw_flatten"},
            "epoch": 1, "step": 5}
    path = tmp_path / "ckpt.npz"
    np.savez(path, **{"param/0.weight": w, "mask/0.weight": nm_mask(w, 2, 4, "nchw_flatten"),
                      "meta": np.array(json.dumps(meta))})
    report = check_file(path)
    assert report["pattern"]["n_keep"] == 2 and report["tensors"][0]["layout"] == "nchw_flatten"
    assert report["compliant"] and any("training layout" in note for note in report["notes"])
    assert _run(capsys, path, "--layout", "conv")[0] == 1
    meta["config"]["method"] = "dense"
    np.savez(path, **{"param/0.weight": w, "meta": np.array(json.dumps(meta))})
    code, _, err = _run(capsys, path)
    assert code == 2 and "--pattern 2:4" in err


def test_report_text_counts_what_it_does_not_list(tmp_path):
    arrays = {"fc.weight": np.ones((4, 16), dtype=np.float32),                # all 16 groups of 4 violate 2:4
              "head.weight": np.eye(4, dtype=np.float32),                      # one group per row: checked
              **{f"layer{i}.bias": np.zeros(3, dtype=np.float32) for i in range(8)}}
    np.savez(tmp_path / "model.npz", **arrays)
    report = check_file(tmp_path / "model.npz", "2:4")
    assert len(report["tensors"][0]["first_violations"]) == 5 and report["tensors"][0]["violating_groups"] == 16
    text = format_report(report)
    assert "fc.weight: ... 11 more" in text
    assert "skipped 8:" in text and "layer5.bias and 2 more" in text
    assert "result: 1 of 2 checked tensors are 2:4; 1 violates" in text


def test_torch_float8_and_wrapped_state_dicts(tmp_path, rng):
    fc = torch.from_numpy(_nm(rng, (6, 16)))
    torch.save({"model_state_dict": {"fc.weight": fc.to(torch.float8_e4m3fn)}, "epoch": 3}, tmp_path / "f8.pt")
    read = read_tensors(tmp_path / "f8.pt")
    assert "state dict read from the 'model_state_dict' entry of the file" in read.notes
    assert read.dtypes["fc.weight"] == "float8_e4m3fn" and not read.unreadable
    np.testing.assert_array_equal(read.tensors["fc.weight"], fc.to(torch.float8_e4m3fn).float().numpy())
    assert check_file(tmp_path / "f8.pt", "2:4")["compliant"]
