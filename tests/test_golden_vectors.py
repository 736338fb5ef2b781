"""nmref golden: byte-identical regeneration, a truthful manifest, and the vectors re-derived independently
(PyTorch autograd / torch.optim.SGD / itertools / plain NumPy), not by calling the functions that wrote them."""
import hashlib
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nmref.check import main
from nmref.golden import FILES, write_golden


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden")
    write_golden(directory)
    return directory


def load(golden, name):
    with np.load(golden / name) as data:
        return {k: data[k] for k in data.files}


def torch_mask(w, n, m, layout):
    """Independent N:M mask in torch: stable ascending sort of |w| per group, the first m - n pruned."""
    w = torch.as_tensor(w)
    view = w.permute(0, *range(2, w.ndim), 1) if layout == "conv" else w       # grouped axis last
    groups = view.reshape(-1, m)
    order = torch.sort(groups.abs(), dim=1, stable=True).indices
    keep = torch.ones_like(groups, dtype=torch.bool).scatter(1, order[:, : m - n], False)
    keep = keep.reshape(view.shape)
    return (keep.permute(0, w.ndim - 1, *range(1, w.ndim - 1)) if layout == "conv" else keep).numpy()


def test_regenerated_byte_identical(golden, tmp_path, capsys):
    assert main(["golden", str(tmp_path)]) == 0
    assert "masks.npz" in capsys.readouterr().out
    other = tmp_path / "other_process"
    run = subprocess.run([sys.executable, "-m", "nmref.check", "golden", str(other)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert run.returncode == 0, run.stderr
    names = sorted(p.name for p in golden.iterdir())
    assert names == sorted([name for name, _ in FILES] + ["manifest.json"])
    for name in names:
        assert (golden / name).read_bytes() == (tmp_path / name).read_bytes(), name
        assert (golden / name).read_bytes() == (other / name).read_bytes(), name


def test_golden_into_a_file_says_to_give_a_directory(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"not a directory")
    assert main(["golden", str(tmp_path / "model.pt")]) == 2
    assert capsys.readouterr().err.strip().endswith("model.pt: is a file; give a directory for the golden files "
                                                    "(created if missing), e.g. nmref golden golden/")


def test_manifest_describes_every_file(golden):
    from nmref import __version__
    manifest = json.loads((golden / "manifest.json").read_text())
    assert manifest["nmref_version"] == __version__ and manifest["format_version"] >= 1
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((golden / name).read_bytes()).hexdigest() == entry["sha256"]
        arrays = load(golden, name)
        assert set(arrays) == set(entry["arrays"]), name
        for key, info in entry["arrays"].items():
            assert info["shape"] == list(arrays[key].shape) and info["dtype"] == str(arrays[key].dtype)
            assert info["meaning"]
        assert len(entry["definition"]) > 80


def test_masks_have_real_ties_and_match_an_independent_torch_mask(golden):
    d = load(golden, "masks.npz")
    weights = {"linear": d["linear_weight"], "conv": d["conv_weight"], "nchw_flatten": d["conv_weight"]}
    for layout, w in weights.items():
        assert np.all(w == np.round(w))
        for n, m in ((1, 4), (2, 4), (2, 8), (4, 8)):
            mask = d[f"{layout}_mask_{n}to{m}"]
            flat = w if layout != "nchw_flatten" else w.reshape(w.shape[0], -1)
            expected = torch_mask(flat, n, m, layout if layout != "nchw_flatten" else "linear")
            np.testing.assert_array_equal(mask, expected.reshape(mask.shape))
    groups = np.abs(d["linear_weight"]).reshape(-1, 4)
    assert sum(len(set(g)) < 4 for g in groups) > len(groups) // 2                # ties decide most groups
    stem = torch_mask(d["stem_weight"].transpose(0, 2, 3, 1).reshape(-1, 4), 2, 4, "linear")
    np.testing.assert_array_equal(d["stem_straddle_mask_2to4"].transpose(0, 2, 3, 1).reshape(-1, 4), stem)


def srste_by_autograd(w, g, mask, lam):
    """SR-STE as STE plus the penalty lam/2 ||(1 - E) W||^2 with E held fixed, differentiated by autograd."""
    w = torch.tensor(w, requires_grad=True)
    e = torch.tensor(mask, dtype=torch.float64)
    w_tilde = w * e + (w - w.detach()) * (1 - e)                 # value W * E, gradient passes to every W
    loss = (w_tilde * torch.tensor(g)).sum() + lam / 2 * ((1 - e) * w).pow(2).sum()
    loss.backward()
    return w.grad.numpy()


def test_ste_and_srste_grads_against_torch_autograd(golden):
    d = load(golden, "ste_srste_grads.npz")
    for layout in ("linear", "conv"):
        w, g, mask = d[f"{layout}_weight"], d[f"{layout}_grad_masked"], d[f"{layout}_mask"]
        np.testing.assert_array_equal(mask, torch_mask(w, 2, 4, layout))
        assert rel(d[f"{layout}_srste_grad"], srste_by_autograd(w, g, mask, float(d["lam"]))) < 1e-12
        assert rel(d[f"{layout}_ste_grad"], srste_by_autograd(w, g, mask, 0.0)) < 1e-12
        np.testing.assert_array_equal(d[f"{layout}_masked_grad"], g * mask)
        assert rel(d[f"{layout}_srste_grad"], d[f"{layout}_ste_grad"]) > 1e-6      # the term is not negligible


def test_srste_sgd_step_against_torch_optim(golden):
    d = load(golden, "srste_sgd_step.npz")
    grad = srste_by_autograd(d["weight0"], d["grad_masked"], d["mask"], float(d["lam"]))
    assert rel(d["srste_grad"], grad) < 1e-12
    for tag, buffer in (("", d["momentum0"]), ("_fresh", None)):
        p = torch.nn.Parameter(torch.tensor(d["weight0"]))
        opt = torch.optim.SGD([p], lr=float(d["lr"]), momentum=float(d["momentum"]),
                              weight_decay=float(d["weight_decay"]))
        if buffer is not None:
            opt.state[p]["momentum_buffer"] = torch.tensor(buffer)
        p.grad = torch.tensor(grad)
        opt.step()
        assert rel(d[f"weight1{tag}"], p.detach().numpy()) < 1e-12
        assert rel(d[f"momentum1{tag}"], opt.state[p]["momentum_buffer"].numpy()) < 1e-12
    assert rel(d["weight1"], d["weight1_fresh"]) > 1e-3                           # the buffer matters


def test_sad_vectors_by_plain_xor(golden):
    d = load(golden, "sad.npz")
    masks, s = d["masks"], int(d["steps_per_epoch"])
    xor = lambda a, b: int(np.logical_xor(a, b).sum())                              # noqa: E731
    np.testing.assert_array_equal(d["pair_sad"], [xor(a, b) for a, b in zip(masks[:-1], masks[1:])])
    np.testing.assert_array_equal(d["vs_initial"], [xor(masks[0], x) for x in masks])
    np.testing.assert_array_equal(d["vs_final"], [xor(x, masks[-1]) for x in masks])
    ends = [masks[0]] + [masks[s * (e + 1)] for e in range(2)]
    np.testing.assert_array_equal(d["epoch_sad_step"], [d["pair_sad"][s * e: s * (e + 1)].sum() for e in range(2)])
    np.testing.assert_array_equal(d["epoch_sad_epoch"], [xor(ends[e], ends[e + 1]) for e in range(2)])
    np.testing.assert_array_equal(d["epoch_sad_init"], [xor(masks[0], ends[e + 1]) for e in range(2)])
    np.testing.assert_array_equal(d["epoch_sad_final"], [xor(ends[e + 1], ends[-1]) for e in range(2)])
    np.testing.assert_allclose(d["epoch_sad_step_frac"], d["epoch_sad_step"] / (masks[0].size * s), rtol=1e-15)
    assert d["pair_sad"].min() > 0


def test_lbc_tables_and_schedules_from_the_formula(golden):
    d = load(golden, "lbc_tables.npz")
    for n, m in ((1, 4), (2, 4), (2, 8), (4, 8)):
        rows = [[int(j in kept) for j in range(m)] for kept in itertools.combinations(range(m), n)]
        np.testing.assert_array_equal(d[f"combinations_{n}to{m}"], rows)
    for key in (k for k in d if k.startswith("removed_")):
        tag, ti, tf, p = key.split("_")[1:]
        n, m = map(int, tag.split("to"))
        c, t_i, t_f, power = math.comb(m, n), int(ti[2:]), int(tf[2:]), int(p[1:])
        expected = [c - 1 if e >= t_f else 0 if e <= t_i else
                    c - (1 + math.ceil((c - 1) * (1 - (e - t_i) / (t_f - t_i)) ** power)) for e in d["epochs"]]
        np.testing.assert_array_equal(d[key], expected, err_msg=key)
    np.testing.assert_array_equal(np.flatnonzero(np.diff(d["removed_2to4_ti0_tf60_p3"])) + 1, [5, 10, 16, 25, 60])


def nhwc_groups(x, m, layout):
    t = torch.as_tensor(x)
    return (t.permute(0, 2, 3, 1) if layout == "conv" else t).reshape(-1, m)


def lbc_by_autograd(w, g, alpha, table, layout, m):
    """Mask, dL/dW and dL/dalpha by autograd: W~ = W * (E + s - s.detach()), s = (alpha * alive) @ I."""
    alpha_t = torch.tensor(alpha, requires_grad=True)
    w_t = torch.tensor(w, requires_grad=True)
    alive = (alpha_t != 0).double()
    soft = (alpha_t * alive) @ torch.tensor(table, dtype=torch.float64)          # (G, M)
    e = (soft != 0).double().detach()
    w_groups = nhwc_groups(w_t, m, layout)
    w_tilde = w_groups * (e + soft - soft.detach())
    (w_tilde * nhwc_groups(g, m, layout)).sum().backward()
    return e.bool().numpy(), w_t.grad.numpy(), alpha_t.grad.numpy()


def test_lbc_grads_against_torch_autograd(golden):
    d = load(golden, "lbc_grads.npz")
    for key, layout, (n, m) in (("linear_2to4", "linear", (2, 4)), ("conv_2to4", "conv", (2, 4)),
                                ("linear_4to8", "linear", (4, 8)), ("linear_2to4_cancel", "linear", (2, 4))):
        table = [[int(j in kept) for j in range(m)] for kept in itertools.combinations(range(m), n)]
        w, g, alpha = d[f"{key}_weight"], d[f"{key}_grad_masked"], d[f"{key}_alpha"]
        mask, w_grad, alpha_grad = lbc_by_autograd(w, g, alpha, table, layout, m)
        np.testing.assert_array_equal(nhwc_groups(d[f"{key}_mask"], m, layout).numpy(), mask)
        assert rel(d[f"{key}_weight_grad"], w_grad) < 1e-12
        assert rel(d[f"{key}_score_grad"], alpha_grad) < 1e-12
        assert (alpha == 0).any() and not mask.all() and mask.any()
    covered = (d["linear_2to4_cancel_alpha"] != 0) @ np.array(table) > 0          # (G, M) some alive covers j
    cancelled = covered & ~d["linear_2to4_cancel_mask"].reshape(-1, 4)
    assert cancelled[::2].any(axis=1).all()              # a port using "any alive covers j" fails this file


def test_lbc_removal_ties_against_torch(golden):
    d = load(golden, "lbc_step.npz")
    alpha0, k = torch.tensor(d["ties_alpha0"]), int(d["ties_k"])
    key = torch.where(alpha0 != 0, alpha0, torch.tensor(-math.inf))                   # dead first, then by score
    removed = torch.zeros_like(alpha0, dtype=torch.bool).scatter(
        1, torch.sort(key, dim=1, stable=True).indices[:, :k], True)
    np.testing.assert_array_equal(d["ties_alpha_removed"], torch.where(removed, 0.0, alpha0).numpy())
    np.testing.assert_array_equal(d["ties_alive_removed"], (~removed & (alpha0 != 0)).numpy())
    kth = torch.sort(key, dim=1).values[:, k - 1:k]                                   # (G, 1) k-th lowest
    split_ties = ((key == kth) & removed).any(1) & ((key == kth) & ~removed).any(1)
    assert bool((split_ties & torch.isfinite(kth[:, 0])).any())    # equal alive scores on both sides of the cut


def test_lbc_step_against_torch(golden):
    d = load(golden, "lbc_step.npz")
    m, k = 4, int(d["k"])
    table = [[int(j in kept) for j in range(m)] for kept in itertools.combinations(range(m), 2)]
    alpha0 = torch.tensor(d["alpha0"])
    key = torch.where(alpha0 != 0, alpha0, torch.tensor(-math.inf))                   # dead first, then by score
    removed = torch.zeros_like(alpha0, dtype=torch.bool).scatter(
        1, torch.sort(key, dim=1, stable=True).indices[:, :k], True)
    alpha_removed = torch.where(removed, torch.zeros_like(alpha0), alpha0)
    np.testing.assert_array_equal(d["alpha_removed"], alpha_removed.numpy())
    np.testing.assert_array_equal(d["alive_removed"], (alpha_removed != 0).numpy())
    mask, w_grad, alpha_grad = lbc_by_autograd(d["weight0"], d["grad_masked"], alpha_removed.numpy(), table,
                                               "linear", m)
    np.testing.assert_array_equal(d["mask"].reshape(-1, m), mask)
    assert rel(d["weight_grad"], w_grad) < 1e-12 and rel(d["score_grad"], alpha_grad) < 1e-12
    w = torch.nn.Parameter(torch.tensor(d["weight0"]))
    a = torch.nn.Parameter(alpha_removed.clone())
    opt = torch.optim.SGD([{"params": [w], "weight_decay": float(d["weight_decay"])},
                           {"params": [a], "weight_decay": float(d["score_weight_decay"])}],
                          lr=float(d["lr"]), momentum=float(d["momentum"]))
    opt.state[w]["momentum_buffer"] = torch.tensor(d["momentum_weight0"])
    opt.state[a]["momentum_buffer"] = torch.where(removed, 0.0, torch.tensor(d["momentum_alpha0"]))
    w.grad, a.grad = torch.tensor(w_grad), torch.tensor(alpha_grad)
    opt.step()
    assert rel(d["weight1"], w.detach().numpy()) < 1e-12 and rel(d["alpha1"], a.detach().numpy()) < 1e-12
    assert rel(d["momentum_weight1"], opt.state[w]["momentum_buffer"].numpy()) < 1e-12
    assert rel(d["momentum_alpha1"], opt.state[a]["momentum_buffer"].numpy()) < 1e-12
    np.testing.assert_array_equal(d["alpha1"][removed.numpy()], 0.0)


def test_crosscheck_doc_snippets_run(tmp_path, monkeypatch, capsys):
    import pathlib
    import re
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "crosscheck.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/crosscheck.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "masks match, ties included" in out and "3.weight[1, 4:8]: more than 2 non-zeros" in out
    assert "LBC masks, gradients and removal match" in out
