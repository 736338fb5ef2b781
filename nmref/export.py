"""Export an nmref checkpoint as a PyTorch-style state dict with the masks applied (``nmref export``).

Names and layouts already match PyTorch: a ``Sequential`` names its parameters "0.weight", "3.bias" like
``nn.Sequential``; Linear weights are (out, in), Conv2d (Cout, Cin, kh, kw), Conv1d (Cout, Cin, k); BatchNorm
has weight / bias and the buffers running_mean / running_var, and ``num_batches_tracked`` is added (the
checkpoint's step count when it records one, else 0; PyTorch reads it only when momentum=None). A sparse
layer's weight is exported as W * mask, its mask beside it as "<name>_mask" (bool). Method parameters
(LBC scores, "<layer>.weight.scores") and optimizer / method state are left out.
"""
import json
import os

import numpy as np

from .tensorfile import CheckInputError, one_line, parse_meta

FORMATS = (".safetensors", ".pt", ".npz")
STEP_KEYS = ("step", "global_step", "steps")


def read_checkpoint(path):
    """(params, masks, buffers, meta) of an nmref training checkpoint (.npz) as host arrays."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CheckInputError(f"{path}: not a readable nmref checkpoint (.npz) ({one_line(exc)})") from None
    params, masks, buffers, meta = {}, {}, {}, {}
    try:
        with archive:
            for key in archive.files:
                prefix, _, name = key.partition("/")
                if prefix == "param":
                    params[name] = archive[key]
                elif prefix == "mask":
                    masks[name] = archive[key].astype(bool)
                elif prefix in ("buffer", "buffers"):
                    buffers[name] = archive[key]
                elif key == "meta":
                    meta = parse_meta(archive[key]) or {}
    except Exception as exc:
        raise CheckInputError(f"{path}: corrupt nmref checkpoint ({one_line(exc)})") from None
    if not params:
        raise CheckInputError(f"{path}: not an nmref checkpoint (no 'param/<name>' entries); "
                              "nmref export reads the .npz checkpoints written by nmref train")
    return params, masks, buffers, meta


def state_dict_of(params, masks, buffers, meta=None):
    """PyTorch-named state dict: W * mask for sparse weights, "<name>_mask" masks, BN buffers + counter."""
    state = {}
    for name, value in params.items():
        if ".weight." in name:
            continue                                                  # method parameter (LBC scores)
        mask = masks.get(name)
        if mask is None:
            state[name] = value
            continue
        if mask.shape != value.shape:
            raise CheckInputError(f"mask/{name} has shape {mask.shape} but param/{name} has {value.shape}")
        state[name] = np.where(mask, value, np.zeros((), value.dtype))    # like value
        state[f"{name}_mask"] = mask
    step = next((int(meta[k]) for k in STEP_KEYS if isinstance((meta or {}).get(k), int)), 0)
    for name, value in buffers.items():
        state[name] = value
        layer, _, leaf = name.rpartition(".")
        if leaf == "running_var":
            state[f"{layer}.num_batches_tracked" if layer else "num_batches_tracked"] = np.array(step, np.int64)
    return state


def write_state_dict(state, out, metadata=None):
    """Write ``state`` (name -> array) as .safetensors, .pt or .npz, chosen by the extension of ``out``."""
    out = os.fspath(out)
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"output {out!r}: unknown extension {ext!r}; use one of {FORMATS}")
    arrays = {k: np.require(v, requirements="C") for k, v in state.items()}     # 0-d stays 0-d
    if ext == ".npz":
        np.savez(out, **arrays)
    elif ext == ".safetensors":
        try:
            from safetensors.numpy import save_file
        except ImportError:
            raise CheckInputError("writing .safetensors needs the safetensors package (pip install "
                                  "safetensors); or export to .npz") from None
        save_file(arrays, out, metadata={k: str(v) for k, v in (metadata or {}).items()})
    else:
        try:
            import torch
        except ImportError:
            raise CheckInputError("writing .pt needs torch (pip install torch); or export to .safetensors "
                                  "or .npz") from None
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, out)


def export_checkpoint(ckpt, out):
    """Export nmref checkpoint ``ckpt`` to ``out`` (.safetensors / .pt / .npz); returns the state dict."""
    ext = os.path.splitext(os.fspath(out))[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"output {os.fspath(out)!r}: unknown extension {ext!r}; use one of {FORMATS}")
    folder = os.path.dirname(os.fspath(out))
    if folder and not os.path.isdir(folder):
        raise ValueError(f"output {os.fspath(out)!r}: folder {folder!r} does not exist; create it first")
    params, masks, buffers, meta = read_checkpoint(ckpt)
    state = state_dict_of(params, masks, buffers, meta)
    from . import __version__
    write_state_dict(state, out, {"format": "pt", "exported_by": f"nmref {__version__}",
                                  "nmref_meta": json.dumps(meta, sort_keys=True)})
    return state
