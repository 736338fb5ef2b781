"""nmref vs the public SR-STE code's outputs (tests/data/official, README there): masks exactly, masked
weights, weight gradients and a 5-step SGD run to relative 1e-12 with the files' lam = float32(2e-4)."""
from pathlib import Path

import numpy as np
import pytest

from nmref import SRSTE, STE, Param

OFFICIAL = Path(__file__).parent / "data" / "official"
FILES = [f"srste_{kind}_{p}.npz" for kind in ("linear", "conv") for p in ("1to4", "2to4", "2to8", "4to8")]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def load(name):
    with np.load(OFFICIAL / name) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name", FILES)
def test_srste_mask_and_backward_match_official(name):
    d = load(name)
    n, m, lam = int(d["n"]), int(d["m"]), float(d["lam"])
    layout = "conv" if "conv" in name else "linear"
    method = SRSTE(n, m, lam=lam).bind(Param(d["weight"].copy(), "weight"), layout)
    w_tilde = method.masked(d["weight"])
    assert np.array_equal(method.mask, d["mask"])
    assert np.array_equal(w_tilde, d["masked_weight"])
    assert rel(method.weight_grad(d["grad_masked"], d["weight"]), d["weight_grad"]) < 1e-12
    ste = STE(n, m).bind(Param(d["weight"].copy()), layout)
    ste.masked(d["weight"])
    assert rel(ste.weight_grad(d["grad_masked"], d["weight"]), d["weight_grad"]) > 1e-9   # the term matters


def test_srste_conv_sgd_5_steps_match_official():
    """Conv2d(8 -> 4, 3x3, padding 1, no bias) + SR-STE 2:4 + mse + SGD(0.1, 0.9, 5e-5): losses and weights."""
    from nmref.layers import Conv2d
    from nmref.losses import mse_loss
    from nmref.optim import SGD
    d = load("srste_conv_sgd_5steps.npz")
    n, m, lam = int(d["n"]), int(d["m"]), float(d["lam"])
    cout, cin, kh, kw = d["weight0"].shape
    conv = Conv2d(cin, cout, (kh, kw), stride=1, padding=1, bias=False, method=lambda: SRSTE(n, m, lam=lam),
                  rng=0, dtype=np.float64)
    conv.weight.value = d["weight0"].copy()
    opt = SGD(conv.params(), lr=float(d["lr"]), momentum=float(d["momentum"]),
              weight_decay=float(d["weight_decay"]))
    losses = []
    for x, target in zip(d["inputs"], d["targets"]):
        loss, dy = mse_loss(conv.forward(x), target)
        losses.append(float(loss))
        conv.backward(dy)
        opt.step()
    assert rel(np.array(losses), d["losses"]) < 1e-12
    assert rel(conv.weight.value, d["weight_final"]) < 1e-12
    assert rel(d["weight_final"], d["weight0"]) > 1e-3                                    # it did train
