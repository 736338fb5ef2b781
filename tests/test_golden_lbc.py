"""nmref's LBC against the golden outputs of the public LBC code (zyxxmu/LBC NMConv, float64)."""
from pathlib import Path

import numpy as np
import pytest

from nmref.groups import to_groups
from nmref.layers import Conv2d
from nmref.lbc import LBC, combinations, mask_from_scores

DATA = Path(__file__).parent / "data" / "official"
PATTERNS = ("1to4", "2to4", "2to8", "4to8")


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


def load(pattern):
    d = np.load(DATA / f"lbc_conv_{pattern}.npz")
    return {k: d[k] for k in d.files}


def golden_layer(d):
    """nmref Conv2d (padding 1, no bias) with LBC whose weight and scores are the file's."""
    n, m = int(d["n"]), int(d["m"])
    cout, cin, kh, kw = d["weight"].shape
    layer = Conv2d(cin, cout, (kh, kw), padding=1, bias=False, method=lambda: LBC(n, m), rng=0,
                   dtype=np.float64)
    layer.weight.value[...] = d["weight"]
    layer.method.scores.value[...] = d["alpha"]
    return layer


@pytest.mark.parametrize("pattern", PATTERNS)
def test_table_matches_public_code(pattern):
    d = load(pattern)
    np.testing.assert_array_equal(combinations(int(d["n"]), int(d["m"])), d["table"])


@pytest.mark.parametrize("pattern", PATTERNS)
def test_mask_from_scores_with_removed_combinations(pattern):
    d = load(pattern)
    n, m = int(d["n"]), int(d["m"])
    alpha = d["alpha"]
    assert (alpha == 0).any() and not (alpha == 0).all(axis=1).any()
    groups_mask = mask_from_scores(alpha, alpha != 0, combinations(n, m))         # (G, M)
    np.testing.assert_array_equal(groups_mask, to_groups(d["mask"], m, "conv"))
    assert not groups_mask.all(), "the files' masks are genuinely sparse"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_conv_forward_and_gradients(pattern):
    d = load(pattern)
    layer = golden_layer(d)
    out = layer.forward(d["x"])
    np.testing.assert_array_equal(layer.method.mask, d["mask"])
    assert rel(out, d["out"]) < 1e-10
    layer.backward(d["grad_out"])
    assert rel(layer.weight.grad, d["weight_grad"]) < 1e-10
    assert rel(layer.method.scores.grad, d["alpha_grad"]) < 1e-10
    np.testing.assert_array_equal(layer.method.scores.grad[d["alpha"] == 0], 0)
    assert [p.group for p in layer.params()] == ["weights", "scores"]
