import numpy as np
import pytest

from nmref import Param, SADTracker, gpu_available, nm_mask
from nmref.sad import flips, pack, sad, unpack

SHAPES = {"fc1.weight": (6, 8), "conv.weight": (4, 8, 3, 3)}


def test_nmref_sad_is_the_module():
    import nmref
    import nmref.sad as module
    assert nmref.sad is module and module.sad is sad and nmref.sad.SADTracker is SADTracker is nmref.SADTracker


def test_sad_hand_count():
    a = np.array([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=bool)
    b = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    assert sad(a, b) == (2, 2 / 8)


def test_flips_is_a_python_int_on_numpy():
    a = np.array([[1, 0, 1, 0], [0, 0, 1, 1]], dtype=bool)
    count = flips(a, ~a)
    assert type(count) is int and count == 8                   # as documented (was np.int64)


def test_sad_zero_for_identical_and_symmetric(rng):
    a = rng.random((5, 12)) < 0.5
    b = rng.random((5, 12)) < 0.5
    assert sad(a, a.copy()) == (0, 0.0)
    assert sad(a, b) == sad(b, a)
    assert sad(a, b)[0] == sum(int(x != y) for x, y in zip(a.ravel().tolist(), b.ravel().tolist()))
    assert sad(a, ~a) == (a.size, 1.0)


def test_sad_of_nm_masks_counts_pairs(rng):
    """Two 2:4 masks differ in an even number of positions per group (a kept weight swaps with a pruned)."""
    w = rng.standard_normal((8, 16))
    a, b = nm_mask(w, 2, 4), nm_mask(w + 0.5 * rng.standard_normal(w.shape), 2, 4)
    per_group = (a != b).reshape(-1, 4).sum(1)
    assert sad(a, b)[0] == per_group.sum() and np.all(per_group % 2 == 0)


def test_sad_bad_inputs(rng):
    a = rng.random((4, 8)) < 0.5
    with pytest.raises(ValueError, match="different shapes"):
        sad(a, a.reshape(8, 4))
    with pytest.raises(TypeError, match="boolean"):
        sad(a.astype(np.float64), a)
    with pytest.raises(TypeError, match="boolean"):
        sad(a, [[True]])
    with pytest.raises(ValueError, match="empty"):
        sad(np.zeros((0, 4), bool), np.zeros((0, 4), bool))


def test_pack_roundtrip(rng):
    mask = rng.random((3, 5, 7)) < 0.3
    assert np.array_equal(unpack(pack(mask), mask.shape), mask)


def fake_run(rng, steps_per_epoch=(4, 1, 0, 3), p_flip=0.05):
    """Initial masks and, per epoch, the list of per-step forward masks (random flips)."""
    current = {k: rng.random(s) < 0.5 for k, s in SHAPES.items()}
    init = {k: v.copy() for k, v in current.items()}
    epochs = []
    for steps in steps_per_epoch:
        epoch = []
        for _ in range(steps):
            current = {k: v ^ (rng.random(v.shape) < p_flip) for k, v in current.items()}
            epoch.append(current)
        epochs.append(epoch)
    return init, epochs


def expected_metrics(init, epochs):
    """Direct recomputation from all saved masks with sad()."""
    rows, previous, last_end = [], init, init
    for epoch in epochs:
        row = {}
        step = {k: sum(sad(a[k], b[k])[0] for a, b in zip([previous] + epoch[:-1], epoch)) for k in SHAPES}
        end = epoch[-1] if epoch else previous
        for metric, per_layer, factor in (
                ("sad_step", step, max(len(epoch), 1)),
                ("sad_epoch", {k: sad(end[k], last_end[k])[0] for k in SHAPES}, 1),
                ("sad_init", {k: sad(end[k], init[k])[0] for k in SHAPES}, 1)):
            size = sum(int(np.prod(s)) for s in SHAPES.values())
            row[metric] = sum(per_layer.values())
            row[f"{metric}_frac"] = row[metric] / (size * factor)
            for k, count in per_layer.items():
                row[f"{metric}/{k}"] = count
                row[f"{metric}_frac/{k}"] = count / (int(np.prod(SHAPES[k])) * factor)
        rows.append(row)
        previous, last_end = end, end
    return rows, last_end


def run_tracker(tracker, init, epochs):
    tracker.start(init)
    rows = []
    for epoch in epochs:
        for masks in epoch:
            tracker.step(masks)
        rows.append(tracker.end_epoch())
    return rows


def test_tracker_matches_direct_recomputation(rng):
    init, epochs = fake_run(rng)
    tracker = SADTracker()
    rows = run_tracker(tracker, init, epochs)
    expected, final = expected_metrics(init, epochs)
    assert rows == expected
    assert rows[0]["sad_step"] > 0 and rows[2]["sad_step"] == 0          # the empty epoch changes nothing
    ends = [epoch[-1] if epoch else None for epoch in epochs]
    ends[2] = ends[1]
    for e, end in enumerate(ends):
        assert all(np.array_equal(tracker.epoch_masks(e)[k], end[k]) for k in SHAPES)
    other = {k: rng.random(s) < 0.5 for k, s in SHAPES.items()}
    for final_masks, target in ((None, final), (other, other)):
        for e, row in enumerate(tracker.vs_final(final_masks)):
            counts = {k: sad(ends[e][k], target[k])[0] for k in SHAPES}
            assert row["epoch"] == e and row["sad_final"] == sum(counts.values())
            assert all(row[f"sad_final/{k}"] == counts[k] for k in SHAPES)
            assert row["sad_final_frac"] == sum(counts.values()) / sum(int(np.prod(s)) for s in SHAPES.values())
    assert tracker.vs_final()[-1]["sad_final"] == 0


@pytest.mark.parametrize("stop_after", [2, 5, 6])
def test_tracker_resume_continues_identically(rng, tmp_path, stop_after):
    """Save the state mid-run (mid-epoch too), reload through an .npz, continue: same metrics as one run."""
    init, epochs = fake_run(rng)
    full = SADTracker()
    rows_full = run_tracker(full, init, epochs)
    flat = [(e, masks) for e, epoch in enumerate(epochs) for masks in epoch]
    first = SADTracker()
    first.start(init)
    rows, done_epochs = [], 0

    def close_epochs(tracker, up_to):
        nonlocal done_epochs
        while done_epochs < up_to:
            rows.append(tracker.end_epoch())
            done_epochs += 1

    for e, masks in flat[:stop_after]:
        close_epochs(first, e)
        first.step(masks)
    np.savez(tmp_path / "sad.npz", **first.state_dict())
    second = SADTracker()
    with np.load(tmp_path / "sad.npz") as f:
        second.load_state_dict(dict(f))
    for e, masks in flat[stop_after:]:
        close_epochs(second, e)
        second.step(masks)
    close_epochs(second, len(epochs))
    assert rows == rows_full
    assert second.vs_final() == full.vs_final()


def test_tracker_on_real_training_steps(rng):
    """Masks of an STE weight trained a few steps: tracker == recomputation from the saved masks."""
    from nmref import STE
    from nmref.optim import SGD
    param = Param(rng.standard_normal((6, 8)), "w")
    method = STE(2, 4).bind(param, "linear")
    target = rng.standard_normal((6, 8))
    opt = SGD([param], lr=0.3, momentum=0.9)
    tracker = SADTracker()
    tracker.start({"w": method.nm_mask(param.value)})
    init, epochs = {"w": method.nm_mask(param.value)}, []
    rows = []
    for _ in range(3):
        epoch = []
        for _ in range(4):
            w_tilde = method.masked(param.value)
            param.grad = method.weight_grad(w_tilde - target, param.value)     # L = |W~ - T|^2 / 2
            opt.step()
            tracker.step({"w": method.mask})
            epoch.append({"w": method.mask.copy()})
        rows.append(tracker.end_epoch())
        epochs.append(epoch)
    starts = [init] + [ep[-1] for ep in epochs[:-1]]
    step = [sum(sad(a["w"], b["w"])[0] for a, b in zip([s] + ep[:-1], ep)) for s, ep in zip(starts, epochs)]
    assert [r["sad_step"] for r in rows] == step and sum(step) > 0
    assert [r["sad_init"] for r in rows] == [sad(ep[-1]["w"], init["w"])[0] for ep in epochs]


def test_tracker_bad_use(rng):
    tracker = SADTracker()
    masks = {k: rng.random(s) < 0.5 for k, s in SHAPES.items()}
    with pytest.raises(RuntimeError, match="start"):
        tracker.step(masks)
    with pytest.raises(RuntimeError, match="start"):
        tracker.end_epoch()
    tracker.start(masks)
    with pytest.raises(ValueError, match="differ"):
        tracker.step({"fc1.weight": masks["fc1.weight"]})
    with pytest.raises(ValueError, match=r"has shape \(8, 6\), start had \(6, 8\)"):
        tracker.step({**masks, "fc1.weight": masks["fc1.weight"].T.copy()})
    with pytest.raises(TypeError, match="boolean"):
        tracker.step({k: v.astype(np.float32) for k, v in masks.items()})
    with pytest.raises(RuntimeError, match="end_epoch"):
        tracker.vs_final()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_sad_and_tracker_on_cupy(rng):
    import cupy
    init, epochs = fake_run(rng)
    on_gpu = lambda masks: {k: cupy.asarray(v) for k, v in masks.items()}    # noqa: E731
    a, b = init["fc1.weight"], epochs[0][0]["fc1.weight"]
    assert sad(cupy.asarray(a), cupy.asarray(b)) == sad(a, b)
    rows = run_tracker(SADTracker(), on_gpu(init), [[on_gpu(m) for m in ep] for ep in epochs])
    assert rows == expected_metrics(init, epochs)[0]


def test_unpack_refuses_a_shape_the_packed_bytes_do_not_hold():
    mask = np.arange(32).reshape(4, 8) % 3 == 0
    packed = pack(mask)
    assert (unpack(packed, mask.shape) == mask).all()
    for shape in ((100, 100), (8,)):
        with pytest.raises(ValueError, match="does not hold a mask of shape"):
            unpack(packed, shape)
    with pytest.raises(ValueError, match="negative size"):
        unpack(packed, (-1,))
    with pytest.raises(TypeError, match="mask must be a boolean mask"):
        pack(np.array([2, 0, 3]))


def test_tracker_misuse_raises_clearly():
    mask = np.ones((4, 8), bool)
    with pytest.raises(RuntimeError, match="call SADTracker.start"):
        SADTracker().initial_masks()
    with pytest.raises(RuntimeError, match="call SADTracker.start"):
        SADTracker().epoch_masks(0)
    with pytest.raises(ValueError, match="is empty"):
        SADTracker().start({"a": np.zeros(0, bool)})
    tracker = SADTracker()
    tracker.start({"a": mask})
    tracker.step({"a": mask})
    tracker.end_epoch()
    with pytest.raises(ValueError, match=r"epoch=1 must be an ended epoch, an int in \[0, 1\)"):
        tracker.epoch_masks(1)
    with pytest.raises(ValueError, match=r"mask of layer 'a' has shape \(2, 8\), start had \(4, 8\)"):
        tracker.vs_final({"a": mask[:2]})


def test_tracker_load_state_dict_names_what_is_missing():
    tracker = SADTracker()
    with pytest.raises(KeyError, match=r"SADTracker.load_state_dict: missing \['started'\]"):
        tracker.load_state_dict({})
    with pytest.raises(KeyError, match=r"missing \['names', 'n_epochs', 'steps'\]"):
        tracker.load_state_dict({"started": np.asarray(True)})
    with pytest.raises(TypeError, match="takes the dict SADTracker.state_dict"):
        tracker.load_state_dict([("started", False)])
