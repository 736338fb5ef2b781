"""Tensors from files: .npz / .npy (nmref checkpoints too), PyTorch .pt / .pth / .bin / .ckpt and .safetensors,
read into NumPy arrays for ``nmref check`` (``nmref export`` shares its error type). torch and safetensors are
imported only when such a file is read; bfloat16 and float8 entries are widened exactly to float32 (zeros stay zeros).
"""
import json
import os
import re
import struct
import zipfile

import numpy as np

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


class CheckInputError(Exception):
    """Unreadable or unusable input: the command line prints the message on one line and exits with 2."""


def one_line(exc, limit=200):
    """The message of ``exc`` on one line, cut at ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class TensorFile:
    """Arrays read from a file: ``tensors`` name -> host array, ``dtypes`` name -> stored dtype name,
    ``unreadable`` name -> why an entry was not read, ``masks`` (nmref checkpoints) name -> mask array."""

    def __init__(self, path, fmt):
        self.path, self.format = path, fmt
        self.tensors, self.dtypes, self.unreadable, self.masks = {}, {}, {}, {}
        self.state_names = []            # nmref checkpoint entries that are optimizer / method / meta state
        self.meta = None
        self.notes = []

    def add(self, name, array, dtype=None):
        self.tensors[name] = array
        self.dtypes[name] = dtype or str(array.dtype)


def sniff_format(path):
    """"npz", "torch" or "safetensors", from the extension or, failing that, from the first bytes."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".npz", ".npy"):
        return "npz"
    if ext in (".pt", ".pth", ".bin", ".ckpt"):
        return "torch"
    if ext == ".safetensors":
        return "safetensors"
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x93NUMPY"):
        return "npz"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckInputError(f"{path}: corrupt zip archive ({one_line(exc)})") from None
        return "torch" if any(n.endswith("data.pkl") for n in names) else "npz"
    if head[:1] == b"\x80":
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    raise CheckInputError(f"{path}: unknown file format; expected .npz / .npy, .pt / .pth / .bin / .ckpt "
                         "(torch.save) or .safetensors")


def read_tensors(path):
    """A ``TensorFile`` from ``path`` (.npz / .npy, .pt / .pth / .bin / .ckpt, .safetensors)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckInputError(f"{path}: is a directory; give a weight file in it (.npz, .pt, .safetensors, ...)")
    if not os.path.isfile(path):
        raise CheckInputError(f"{path}: no such file")
    fmt = sniff_format(path)
    return {"npz": _read_npz, "torch": _read_torch, "safetensors": _read_safetensors}[fmt](path)


def _read_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise CheckInputError(f"{path}: not a readable .npz/.npy file ({one_line(exc)})") from None
    if isinstance(archive, np.ndarray):
        out = TensorFile(path, "npy")
        out.add(os.path.splitext(os.path.basename(path))[0], archive)
        return out
    with archive:
        names = list(archive.files)
        nmref = any(n.startswith("param/") for n in names)
        out = TensorFile(path, "nmref-checkpoint" if nmref else "npz")
        for name in names:
            try:
                array = archive[name]
            except ValueError as exc:
                out.unreadable[name] = f"not loaded ({one_line(exc, 80)})"
                continue
            except Exception as exc:
                raise CheckInputError(f"{path}: entry {name!r} is corrupt ({one_line(exc)})") from None
            if not nmref:
                out.add(name, array)
            elif name.startswith("param/"):
                out.add(name[len("param/"):], array)
            elif name.startswith("mask/"):
                out.masks[name[len("mask/"):]] = array
            else:
                out.state_names.append(name)
                if name == "meta":
                    out.meta = parse_meta(array)
                    out.notes += _describe_meta(out.meta)
    return out


def parse_meta(array):
    """The JSON ``meta`` entry of an nmref checkpoint as a dict, or None."""
    try:
        return json.loads(str(array))
    except ValueError:
        return None


def _describe_meta(meta):
    config = (meta or {}).get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        return []
    method = config.get("method", "?") + ("" if config.get("method") == "dense" else f" {config.get('pattern')}")
    return [f"nmref checkpoint of model {config.get('model')}, method {method}, layout {config.get('layout')}, "
            f"after epoch {meta.get('epoch')} (step {meta.get('step')})"]


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise CheckInputError(f"{path}: reading PyTorch files needs torch (pip install torch), or convert the "
                              "state dict to .safetensors or .npz") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckInputError(f"{path}: not readable by torch.load(weights_only=True) ({_torch_load_reason(exc)})"
                              ) from None
    out = TensorFile(path, "torch")
    if not isinstance(obj, dict):
        raise CheckInputError(f"{path}: holds a {type(obj).__name__}, expected a state dict (name -> tensor)")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            out.notes.append(f"state dict read from the {key!r} entry of the file")
            obj = obj[key]
            break
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            out.unreadable[str(name)] = f"not a tensor ({type(value).__name__})"
            continue
        try:
            array, dtype = _torch_to_numpy(value, torch)
        except Exception as exc:
            out.unreadable[str(name)] = f"tensor not convertible to NumPy ({one_line(exc, 80)})"
            continue
        out.add(str(name), array, dtype)
    return out


def _torch_load_reason(exc):
    """Why torch.load(weights_only=True) failed, on one line; the state_dict hint only for a pickled object
    (torch names the class it refused: "Unsupported global: GLOBAL torch.nn.modules.linear.Linear ...")."""
    text = " ".join(str(exc).split())
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"it pickles a {refused.group(1)} object, which weights_only refuses; "
                "save model.state_dict() instead of the model object")
    detail = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    text = detail.group(1) if detail else text
    if not re.search("[A-Za-z]", text):                                  # KeyError: 101 from a text file
        text = f"{type(exc).__name__} {text}"
    return one_line(text, 120)


def _torch_to_numpy(t, torch):
    t = t.detach().cpu()
    if t.is_sparse:
        t = t.to_dense()
    if t.is_quantized:
        t = t.dequantize()
    dtype = str(t.dtype).replace("torch.", "")
    if t.dtype == torch.bfloat16 or "float8" in dtype:
        return t.float().numpy(), dtype        # exact widening: zeros stay zeros
    return t.numpy(), dtype


def _read_safetensors(path):
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckInputError(f"{path}: reading .safetensors needs the safetensors package "
                              "(pip install safetensors)") from None
    out = TensorFile(path, "safetensors")
    try:
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype in WIDENED:
                    out.add(name, _read_widened(path, name, dtype), WIDENED[dtype][0])
                    continue
                try:
                    out.add(name, f.get_tensor(name))
                except Exception as exc:
                    out.unreadable[name] = f"dtype {dtype} has no NumPy equivalent ({one_line(exc, 80)})"
    except CheckInputError:
        raise
    except Exception as exc:
        raise CheckInputError(f"{path}: not a readable .safetensors file ({one_line(exc)})") from None
    return out


def _bf16_to_f32(raw):
    """bfloat16 bits (uint8 pairs, little-endian) -> float32: the upper half of a float32."""
    return (raw.view("<u2").astype("<u4") << 16).view("<f4")


def _f8_e5m2_to_f32(raw):
    """float8 e5m2 bits -> float32: the upper byte of an IEEE float16 (inf and NaN included)."""
    return (raw.astype("<u2") << 8).view("<f2").astype(np.float32)


def _f8_e4m3fn_table():
    """float8 e4m3fn (OCP FP8, torch.float8_e4m3fn): bias 7, subnormals, no inf, S.1111.111 = NaN; all 256
    values as float32."""
    bits = np.arange(256)
    sign = np.where(bits & 0x80, -1.0, 1.0)
    exponent, mantissa = (bits >> 3) & 0xF, bits & 0x7
    value = np.where(exponent == 0, np.ldexp(mantissa / 8, -6), np.ldexp(1 + mantissa / 8, exponent - 7))
    value = np.where((bits & 0x7F) == 0x7F, np.nan, sign * value)
    return value.astype(np.float32)


_F8_E4M3FN = _f8_e4m3fn_table()


def _f8_e4m3fn_to_f32(raw):
    return _F8_E4M3FN[raw]


# safetensors dtypes NumPy lacks, widened exactly to float32: (the stored dtype's name, decoder of raw bytes)
WIDENED = {"BF16": ("bfloat16", _bf16_to_f32), "F8_E4M3": ("float8_e4m3fn", _f8_e4m3fn_to_f32),
           "F8_E5M2": ("float8_e5m2", _f8_e5m2_to_f32)}


def _read_widened(path, name, dtype):
    """A safetensors entry of a dtype in ``WIDENED``, decoded from its raw bytes to float32."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(header_len))[name]
        start, end = entry["data_offsets"]
        f.seek(8 + header_len + start)
        raw = np.frombuffer(f.read(end - start), dtype=np.uint8)
    return WIDENED[dtype][1](raw).reshape(entry["shape"])
