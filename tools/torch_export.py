#!/usr/bin/python3
"""torch_export — tscale model files (SPEC §2) from and to PyTorch.

A tscale model file is what `safetensors.torch.save_file(seq.state_dict(), path,
metadata={...})` writes for an nn.Sequential of the ternary modules
(TernaryScaleTensor, TernaryRMSNorm, nn.ReLU, nn.SiLU, nn.GELU), with metadata
`tscale.format` = "1", `tscale.layers` (the architecture, JSON) and optionally
`tscale.name`.

Library use (the golden generator imports this):

    import torch_export
    torch_export.save(seq, "model.safetensors", name="mini")
    seq, name = torch_export.load("model.safetensors")

Command line (run with /usr/bin/python3, Debian's python3-torch):

    torch_export.py to-tscale MODULE.pt OUT.safetensors [--name NAME]
    torch_export.py to-tscale STATE.pt OUT.safetensors --layers SPEC [--name NAME]
    torch_export.py from-tscale IN.safetensors OUT.pt
    torch_export.py roundtrip            # self-check: save → load → save is byte-identical
    torch_export.py example OUT.safetensors OUT.io --layers ... [--steps N] [--seed N]
    torch_export.py forward IN.safetensors IN.io OUT.io

The modules are the project's own, clients/python/tscale/torch_layers.py (this
repository's copy of the `tscale` package, else an installed one), which match the
reference exactly (SPEC §1; tests/torch/ proves it). Every
command takes `--reference PATH` to use another implementation of the same classes
instead, e.g. ../shared/reference/tscale_mini.py.

to-tscale reads what torch.save wrote: a pickled nn.Sequential, or a state_dict (the
usual way to save a model), which needs `--layers`: the architecture, either in the
short syntax of `tscaled init` ("linear:64x32/gs8+bias,relu,linear:32x10/gs8") or as
the tscale.layers JSON array. The state_dict's keys must be exactly the model's.

Byte layout. The writer here is the canonical tscale form, byte-identical to what
the C writer (proto/safetensors.c) produces, and to safetensors' own serializer:
  - u64 little-endian header length, then the JSON header, padded with spaces to a
    multiple of 8 bytes, then the tensor bytes;
  - the header is compact JSON (no spaces), "__metadata__" first, then the tensors
    in data order: by dtype alignment descending (I64, I32, I8, U8), then by name
    (byte order); each as {"dtype":…,"shape":[…],"data_offsets":[begin,end]};
  - strings are escaped as serde_json does (\\" \\\\ \\b \\f \\n \\r \\t, other control
    characters as \\u00xx, everything else raw UTF-8).
safetensors keeps metadata in a Rust HashMap, so the order of the metadata keys
in its output varies from run to run; tscale's canonical order is sorted by key.
For that reason `save` always uses the serializer below (so the output does not
depend on what is installed); `load` uses the safetensors package when it is
importable, and the reader below otherwise (Debian 12 has no python3-safetensors).

`tscale.layers` canonical form: compact JSON, one object per layer, keys in this
order: {"type":"ternary_linear","in_dim":I,"out_dim":O,"group_size":GS,"bias":B},
{"type":"ternary_rmsnorm","dim":D,"group_size":GS}, {"type":"relu"}, ...
"""
import argparse
import importlib.util
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn

FORMAT = "1"
MAX_HEADER = 100_000_000

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_DIR = os.path.join(REPO_ROOT, "clients", "python")

# safetensors dtype name → (torch dtype, alignment rank in safetensors' Dtype enum).
# The rank orders the data section: higher first (the Rust enum's declaration order).
DTYPES = {
    "BOOL": (torch.bool, 0), "U8": (torch.uint8, 1), "I8": (torch.int8, 2),
    "I16": (torch.int16, 5), "F16": (torch.float16, 7), "BF16": (torch.bfloat16, 8),
    "I32": (torch.int32, 9), "F32": (torch.float32, 11), "F64": (torch.float64, 12),
    "I64": (torch.int64, 13),
}
TORCH_TO_ST = {td: name for name, (td, _) in DTYPES.items()}

# Per-layer tensors of a ternary layer: suffix → safetensors dtype.
TERNARY_TENSORS = {"T_packed": "U8", "_T_shape": "I64", "_T_pad": "I64", "E": "I8",
                   "corr_accum": "I64", "step_counter": "I64", "bias": "I32"}
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


class FormatError(ValueError):
    """The file is not a valid tscale model file."""


# ─── The modules ───

def reference(path=None):
    """The module that defines TernaryScaleTensor and TernaryRMSNorm: the project's own
    (tscale.torch_layers) when path is None, else the file at path (e.g. the reference
    tscale_mini.py), imported as `tscale_mini` so that torch.save'd Sequentials of the
    reference unpickle. A module already imported for the same path is reused, so that
    modules built by the caller and by load() share their classes."""
    if path is None:
        if CLIENT_DIR not in sys.path:   # this repository's copy first, then an installed one
            sys.path.insert(0, CLIENT_DIR)
        from tscale import torch_layers
        return torch_layers
    path = os.path.abspath(path)
    mod = sys.modules.get("tscale_mini")
    if mod is not None and os.path.abspath(getattr(mod, "__file__", "")) == path:
        return mod
    if not os.path.exists(path):
        raise FileNotFoundError(f"--reference {path}: no such file")
    spec = importlib.util.spec_from_file_location("tscale_mini", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tscale_mini"] = mod
    spec.loader.exec_module(mod)
    return mod


# ─── Architecture: nn.Sequential ↔ tscale.layers ───

def layer_spec(m, i):
    """The tscale.layers entry of module m (index i, for messages)."""
    kind = type(m).__name__
    if kind == "TernaryScaleTensor":
        return {"type": "ternary_linear", "in_dim": int(m.in_dim), "out_dim": int(m.out_dim),
                "group_size": int(m.group_size), "bias": m.bias is not None}
    if kind == "TernaryRMSNorm":
        return {"type": "ternary_rmsnorm", "dim": int(m.dim), "group_size": int(m.group_size)}
    if isinstance(m, nn.GELU) and m.approximate != "none":
        raise ValueError(f"layer {i}: GELU(approximate={m.approximate!r}) is not supported "
                         "(tscale's gelu is the exact erf form)")
    for name, cls in ACTIVATIONS.items():
        if type(m) is cls:
            return {"type": name}
    raise ValueError(f"layer {i}: module {kind} has no tscale layer type "
                     "(TernaryScaleTensor, TernaryRMSNorm, ReLU, SiLU, GELU)")


def layers_json(specs):
    """The canonical text of tscale.layers."""
    return json.dumps(specs, separators=(",", ":"))


def build(specs, ref):
    """An nn.Sequential of reference modules for the specs (state is then loaded)."""
    mods = []
    for i, s in enumerate(specs):
        t = s.get("type") if isinstance(s, dict) else None
        if t == "ternary_linear":
            mods.append(ref.TernaryScaleTensor(s["in_dim"], s["out_dim"],
                                               group_size=s["group_size"], bias=s["bias"]))
        elif t == "ternary_rmsnorm":
            mods.append(ref.TernaryRMSNorm(s["dim"], group_size=s["group_size"]))
        elif t in ACTIVATIONS:
            mods.append(ACTIVATIONS[t]())
        else:
            raise FormatError(f"tscale.layers[{i}]: unknown layer type {t!r}")
    return nn.Sequential(*mods)


# ─── safetensors bytes ───

def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    try:
        return t.numpy().tobytes()
    except (RuntimeError, TypeError):  # torch without numpy
        return bytes(t.reshape(-1).view(torch.uint8).tolist())


def _data_order(item):
    name, t = item
    return (-DTYPES[TORCH_TO_ST[t.dtype]][1], name.encode())


def serialize(tensors, metadata=None):
    """safetensors bytes of a {name: tensor} dict and a {str: str} metadata dict,
    laid out as safetensors' serializer does (metadata keys sorted)."""
    header = {}
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    blobs, offset = [], 0
    for name, t in sorted(tensors.items(), key=_data_order):
        if t.dtype not in TORCH_TO_ST:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} not supported")
        data = _tensor_bytes(t)
        header[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise FormatError(f"header: duplicate key {sorted(dup)[0]!r}")
    return dict(pairs)


def deserialize(buf):
    """({name: tensor}, metadata) from safetensors bytes. Checks lengths and offsets
    (no overlap, no hole, no trailing bytes) as safetensors does."""
    if len(buf) < 8:
        raise FormatError(f"file is {len(buf)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", buf)
    if n > MAX_HEADER or n + 8 > len(buf):
        raise FormatError(f"header length {n} does not fit the file ({len(buf)} bytes)")
    try:
        header = json.loads(bytes(buf[8:8 + n]).decode(), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data = memoryview(buf)[8 + n:]
    tensors, end = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: _offsets(kv[0], kv[1])):
        dtype, shape = _dtype_shape(name, info)
        begin, stop = _offsets(name, info)
        if begin != end:
            raise FormatError(f"tensor {name!r}: data_offsets begin at {begin}, expected {end} "
                              "(overlap or hole)")
        need = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        if stop - begin != need:
            raise FormatError(f"tensor {name!r}: data_offsets span {stop - begin} bytes, "
                              f"shape {shape} needs {need}")
        if stop > len(data):
            raise FormatError(f"tensor {name!r}: data_offsets end {stop} past the data ({len(data)} bytes)")
        raw = bytearray(data[begin:stop])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape).clone()
        end = stop
    if end != len(data):
        raise FormatError(f"{len(data) - end} bytes after the last tensor")
    return tensors, metadata


def _offsets(name, info):
    off = info.get("data_offsets") if isinstance(info, dict) else None
    if (not isinstance(off, list) or len(off) != 2
            or not all(type(v) is int and v >= 0 for v in off) or off[1] < off[0]):
        raise FormatError(f"tensor {name!r}: data_offsets must be [begin, end], got {off!r}")
    return tuple(off)


def _dtype_shape(name, info):
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"tensor {name!r}: expected keys dtype, shape, data_offsets")
    if info["dtype"] not in DTYPES:
        raise FormatError(f"tensor {name!r}: unknown dtype {info['dtype']!r}")
    shape = info["shape"]
    if not isinstance(shape, list) or not all(type(v) is int and v >= 0 for v in shape):
        raise FormatError(f"tensor {name!r}: shape must be a list of sizes, got {shape!r}")
    return DTYPES[info["dtype"]][0], shape


def _read_with_package(path):
    from safetensors import safe_open  # noqa: the package, when installed
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


# ─── The model file ───

def save(seq, path, name=None):
    """Write seq (an nn.Sequential of reference modules) as a tscale model file."""
    with open(path + ".tmp", "wb") as f:
        f.write(to_bytes(seq, name))
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def to_bytes(seq, name=None):
    """The model file's bytes (see save)."""
    if not isinstance(seq, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential, got {type(seq).__name__}")
    specs = [layer_spec(m, i) for i, m in enumerate(seq)]
    metadata = {"tscale.format": FORMAT, "tscale.layers": layers_json(specs)}
    if name is not None:
        metadata["tscale.name"] = str(name)
    return serialize(dict(seq.state_dict()), metadata)


def load(path, reference_path=None):
    """(seq, name) from a tscale model file: reference modules with the file's state."""
    try:
        tensors, metadata = _read_with_package(path)
    except ImportError:
        with open(path, "rb") as f:
            tensors, metadata = deserialize(f.read())
    return from_tensors(tensors, metadata, reference(reference_path))


def from_tensors(tensors, metadata, ref):
    unknown = set(metadata) - {"tscale.format", "tscale.layers", "tscale.name"}
    if unknown:
        raise FormatError(f"metadata: unknown key {sorted(unknown)[0]!r}")
    if metadata.get("tscale.format") != FORMAT:
        raise FormatError(f"metadata: tscale.format is {metadata.get('tscale.format')!r}, expected '1'")
    try:
        specs = json.loads(metadata.get("tscale.layers", ""))
    except json.JSONDecodeError as e:
        raise FormatError(f"metadata: tscale.layers is not valid JSON: {e}") from None
    if not isinstance(specs, list) or not specs:
        raise FormatError("metadata: tscale.layers must be a non-empty JSON array")
    _check_sizes(specs, tensors)
    seq = build(specs, ref)
    expected = seq.state_dict()
    for key, t in tensors.items():
        if key not in expected:
            raise FormatError(f"tensor {key!r}: not part of the model described by tscale.layers")
        want = expected[key]
        if t.dtype != want.dtype or tuple(t.shape) != tuple(want.shape):
            raise FormatError(f"tensor {key!r}: {TORCH_TO_ST.get(t.dtype, t.dtype)}{list(t.shape)}, "
                              f"expected {TORCH_TO_ST[want.dtype]}{list(want.shape)}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise FormatError(f"tensor {missing[0]!r}: missing")
    seq.load_state_dict(tensors, strict=True)
    for i, m in enumerate(seq):
        if hasattr(m, "T_packed"):
            _check_ternary(m, i)
    return seq, metadata.get("tscale.name")


def _check_sizes(specs, tensors):
    """Before building modules (whose constructors allocate float weights): every ternary
    layer's T_packed in the file has the size its dims imply, so a small file cannot make
    us allocate a huge model."""
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or s.get("type") not in ("ternary_linear", "ternary_rmsnorm"):
            continue
        dims = [s.get(k) for k in (("out_dim", "in_dim") if s["type"] == "ternary_linear" else ("dim",))]
        if not all(type(d) is int and d >= 1 for d in dims + [s.get("group_size")]):
            raise FormatError(f"tscale.layers[{i}]: dims and group_size must be positive integers")
        packed = tensors.get(f"{i}.T_packed")
        if packed is None or packed.numel() != -(-math.prod(dims) // 5):
            raise FormatError(f"tensor '{i}.T_packed': missing or not the size tscale.layers[{i}] needs")


def _check_ternary(m, i):
    rows, cols = (m.out_dim, m.in_dim) if hasattr(m, "out_dim") else (1, m.dim)
    if m._T_shape.tolist() != [rows, cols]:
        raise FormatError(f"tensor '{i}._T_shape': {m._T_shape.tolist()}, expected {[rows, cols]}")
    if int(m._T_pad) != (-(rows * cols)) % 5:
        raise FormatError(f"tensor '{i}._T_pad': {int(m._T_pad)}, expected {(-(rows * cols)) % 5}")
    if m.T_packed.numel() and int(m.T_packed.max()) >= 243:
        raise FormatError(f"tensor '{i}.T_packed': byte {int(m.T_packed.max())} >= 243 (corrupt)")


# ─── Lived-in example models and their forward outputs (test data) ───

def parse_layers(text):
    """"rmsnorm:8,linear:8x16/gs4+bias,relu" → specs (the same syntax as tscaled init)."""
    specs, dim = [], None
    for part in text.split(","):
        kind, _, rest = part.partition(":")
        gs, bias = 32, False
        if "+bias" in rest:
            rest, bias = rest.replace("+bias", ""), True
        if "/gs" in rest:
            rest, g = rest.split("/gs")
            gs = int(g)
        if kind == "linear":
            i, o = (int(v) for v in rest.split("x"))
            specs.append({"type": "ternary_linear", "in_dim": i, "out_dim": o,
                          "group_size": gs, "bias": bias})
            dim = o
        elif kind == "rmsnorm":
            dim = int(rest)
            specs.append({"type": "ternary_rmsnorm", "dim": dim, "group_size": gs})
        elif kind in ACTIVATIONS:
            specs.append({"type": kind})
        else:
            raise ValueError(f"unknown layer kind {kind!r} in {text!r}")
    return specs


def live_in(seq, steps, batch, gen):
    """Give seq a lived-in state: random trits, varied E and bias, then `steps` feedback
    steps (mse against random targets, update_corr on every ternary_linear) as the
    daemon does."""
    ref = sys.modules[type(next(m for m in seq if hasattr(m, "T_packed"))).__module__]
    with torch.no_grad():
        for m in seq:
            if hasattr(m, "T_packed"):
                rows, cols = m._T_shape.tolist()
                trits = torch.randint(-1, 2, (rows, cols), generator=gen).float()
                m.T_packed.copy_(ref.pack_ternary(trits)[0])
                m.E.copy_(torch.randint(-4, 0, m.E.shape, generator=gen, dtype=torch.int8))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(torch.randint(-1, 2, m.bias.shape, generator=gen, dtype=torch.int32))
    in_dim = _in_dim(seq)
    for _ in range(steps):
        x = torch.randn(batch, in_dim, generator=gen)
        y = seq(x)
        target = torch.randn(y.shape, generator=gen)
        torch.nn.functional.mse_loss(y, target).backward()
        for m in seq:
            if hasattr(m, "update_corr"):
                m.update_corr()


def _in_dim(seq):
    """The model's input width: its first ternary layer's (activations before it, as in
    nn.Sequential(nn.ReLU(), ...), keep the width)."""
    m = next(m for m in seq if hasattr(m, "T_packed"))
    return m.in_dim if hasattr(m, "in_dim") else m.dim


# An .io file: "TSIO" magic, u32 rows, u32 in_dim, u32 out_dim, then x and y as
# float32 little-endian row-major. Small and trivial to read from a C test.
def write_io(path, x, y):
    with open(path, "wb") as f:
        f.write(b"TSIO" + struct.pack("<III", x.shape[0], x.shape[1], y.shape[1]))
        f.write(_tensor_bytes(x.float()) + _tensor_bytes(y.float()))


def read_io(path):
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:4] != b"TSIO":
        raise ValueError(f"{path}: not an .io file")
    b, i, o = struct.unpack_from("<III", buf, 4)
    x = torch.frombuffer(bytearray(buf[16:16 + 4 * b * i]), dtype=torch.float32).reshape(b, i)
    y = torch.frombuffer(bytearray(buf[16 + 4 * b * i:]), dtype=torch.float32).reshape(b, o)
    return x, y


# ─── Command line ───

def cmd_to_tscale(a):
    ref = reference(a.reference)
    obj = torch.load(a.module)
    if isinstance(obj, dict):
        if not a.layers:
            raise ValueError(f"{a.module} holds a state_dict: give the architecture with --layers "
                             "(e.g. linear:64x32/gs8,relu,linear:32x10/gs8)")
        seq = from_state_dict(obj, a.layers, ref)
    elif isinstance(obj, nn.Sequential):
        if a.layers and layers_json(specs_of_text(a.layers)) != layers_json(
                [layer_spec(m, i) for i, m in enumerate(obj)]):
            raise ValueError(f"{a.module} holds an nn.Sequential whose layers differ from --layers")
        seq = obj
    else:
        raise ValueError(f"{a.module} holds a {type(obj).__name__}: expected an nn.Sequential "
                         "or a state_dict (torch.save(model.state_dict(), path))")
    save(seq, a.out, a.name)
    print(f"wrote {a.out}: {len(seq)} layers")


def specs_of_text(text):
    """Layer specs from --layers: a JSON array (tscale.layers) or the short syntax."""
    if text.lstrip().startswith("["):
        try:
            specs = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--layers is not valid JSON: {e}") from None
        if not isinstance(specs, list) or not specs:
            raise ValueError("--layers: expected a non-empty JSON array of layer objects")
        return specs
    return parse_layers(text)


def from_state_dict(state, layers, ref):
    """An nn.Sequential of the `layers` (text, see specs_of_text) holding `state`: the same
    checks as a model file's tensors (names, dtypes, shapes, trits), with messages that
    name the tensor."""
    tensors = {k: v for k, v in state.items()}
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"state_dict entry {bad[0]!r} is not a tensor")
    specs = specs_of_text(layers)
    metadata = {"tscale.format": FORMAT, "tscale.layers": layers_json(specs)}
    return from_tensors(tensors, metadata, ref)[0]


def cmd_from_tscale(a):
    seq, name = load(a.file, a.reference)
    torch.save(seq, a.out)
    print(f"wrote {a.out}: {len(seq)} layers" + (f", name {name!r}" if name else ""))


def cmd_example(a):
    ref = reference(a.reference)
    torch.manual_seed(a.seed)
    seq = build(parse_layers(a.layers), ref)
    gen = torch.Generator().manual_seed(a.seed)
    live_in(seq, a.steps, a.batch, gen)
    save(seq, a.out, a.name)
    x = torch.randn(a.rows, _in_dim(seq), generator=gen)
    with torch.no_grad():
        write_io(a.io, x, seq(x))
    print(f"wrote {a.out} and {a.io}")


def cmd_forward(a):
    seq, _ = load(a.file, a.reference)
    x, _ = read_io(a.io_in)
    with torch.no_grad():
        write_io(a.io_out, x, seq(x))


def cmd_roundtrip(a):
    """Self-check: a lived-in model survives save → load → save byte-identically and
    computes the same outputs; the reader refuses a few corruptions."""
    import tempfile
    ref = reference(a.reference)
    torch.manual_seed(1)
    specs = parse_layers("rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x5/gs3,silu,relu")
    seq = build(specs, ref)
    live_in(seq, 5, 3, torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as d:
        p1, p2 = os.path.join(d, "a.safetensors"), os.path.join(d, "b.safetensors")
        save(seq, p1, name="mini")
        back, name = load(p1, a.reference)
        save(back, p2, name=name)
        b1, b2 = open(p1, "rb").read(), open(p2, "rb").read()
    assert b1 == b2, "save → load → save changed the bytes"
    assert name == "mini", name
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert torch.equal(seq(x), back(x)), "forward differs after the round trip"
    for bad in (b1[:-1], b1 + b"\0", b1[:8] + b"[" + b1[9:]):
        try:
            from_tensors(*deserialize(bad), ref)
        except FormatError:
            continue
        raise AssertionError("a corrupt file was accepted")
    print(f"roundtrip ok ({len(b1)} bytes)")


def _with_parents(add_parser, parents):
    return lambda *a, **k: add_parser(*a, parents=parents, **k)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default=None,
                   help="a file defining TernaryScaleTensor/TernaryRMSNorm to use instead of the "
                        "project's (clients/python/tscale/torch_layers.py)")
    # --reference also after the subcommand; SUPPRESS keeps one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--reference", default=argparse.SUPPRESS, help="path of tscale_mini.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser = _with_parents(sub.add_parser, [common])
    s = sub.add_parser("to-tscale", help="torch.save'd nn.Sequential or state_dict → model file")
    s.add_argument("module"); s.add_argument("out"); s.add_argument("--name")
    s.add_argument("--layers", help="architecture of a state_dict: short syntax or JSON array")
    s.set_defaults(run=cmd_to_tscale)
    s = sub.add_parser("from-tscale", help="model file → torch.save'd nn.Sequential")
    s.add_argument("file"); s.add_argument("out")
    s.set_defaults(run=cmd_from_tscale)
    s = sub.add_parser("roundtrip", help="self-check of save/load")
    s.set_defaults(run=cmd_roundtrip)
    s = sub.add_parser("example", help="a lived-in model file and its forward on random inputs")
    s.add_argument("out"); s.add_argument("io")
    s.add_argument("--layers", default="rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x5/gs3,silu")
    s.add_argument("--steps", type=int, default=6); s.add_argument("--batch", type=int, default=3)
    s.add_argument("--rows", type=int, default=4); s.add_argument("--seed", type=int, default=7)
    s.add_argument("--name", default=None)
    s.set_defaults(run=cmd_example)
    s = sub.add_parser("forward", help="run a model file on an .io file's inputs")
    s.add_argument("file"); s.add_argument("io_in"); s.add_argument("io_out")
    s.set_defaults(run=cmd_forward)
    a = p.parse_args(argv)
    try:
        a.run(a)
    except (FormatError, FileNotFoundError, ValueError) as e:
        print(f"torch_export: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
