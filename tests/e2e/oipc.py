"""oipc.py — small client-side helpers for the end-to-end tests: OIP request bodies (JSON
and the binary tensor data extension), response decoding, golden cases, and reading a
safetensors model file (stdlib only)."""
import json
import math
import os
import struct

import tsd

GOLDEN_DIR = os.path.join(tsd.ROOT, "tests", "golden")


def golden_cases():
    with open(os.path.join(GOLDEN_DIR, "cases.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def golden(name):
    with open(os.path.join(GOLDEN_DIR, name + ".json")) as f:
        return json.load(f)


def golden_model(name):
    return os.path.join(GOLDEN_DIR, name + ".model.safetensors")


def close(a, b):
    """SPEC §1's forward tolerance."""
    return abs(a - b) <= 1e-4 + 1e-4 * abs(b)


def flat(rows):
    return [v for r in rows for v in r]


def tensor(name, rows, datatype="FP32"):
    """A JSON input tensor from a list of rows (2-D) or a flat list (1-D)."""
    if rows and isinstance(rows[0], list):
        return {"name": name, "datatype": datatype, "shape": [len(rows), len(rows[0])],
                "data": flat(rows)}
    return {"name": name, "datatype": datatype, "shape": [len(rows)], "data": list(rows)}


def infer_body(rows, id=None, **extra):
    body = {"inputs": [tensor("input", rows)]}
    if id is not None:
        body["id"] = id
    body.update(extra)
    return body


def feedback_body(rows, kind, signal, id=None):
    """kind: grad_output | target | label."""
    dt = "INT64" if kind == "label" else "FP32"
    body = {"inputs": [tensor("input", rows), tensor(kind, signal, dt)]}
    if id is not None:
        body["id"] = id
    return body


def pack(datatype, values):
    fmt = {"FP32": "f", "FP64": "d", "INT32": "i", "INT64": "q"}[datatype]
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def binary_request(inputs, outputs=None, id=None, parameters=None):
    """inputs: [(name, datatype, shape, flat values)] all sent as binary data.
    Returns (body bytes, headers)."""
    header = {"inputs": []}
    blobs = []
    for name, dt, shape, values in inputs:
        blob = pack(dt, values)
        header["inputs"].append({"name": name, "datatype": dt, "shape": shape,
                                 "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    if outputs is not None:
        header["outputs"] = outputs
    if id is not None:
        header["id"] = id
    if parameters is not None:
        header["parameters"] = parameters
    js = json.dumps(header).encode()
    return js + b"".join(blobs), {"Inference-Header-Content-Length": str(len(js)),
                                  "Content-Type": "application/octet-stream"}


def decode_response(headers, body):
    """(json header, {output name: list of floats}) for JSON or binary responses."""
    n = headers.get("inference-header-content-length")
    if n is None:
        j = json.loads(body)
        return j, {o["name"]: o["data"] for o in j.get("outputs", [])}
    n = int(n)
    j = json.loads(body[:n])
    data, off = {}, n
    for o in j["outputs"]:
        size = o["parameters"]["binary_data_size"]
        chunk = body[off:off + size]
        off += size
        data[o["name"]] = list(struct.unpack("<%df" % (size // 4), chunk))
    assert off == len(body), "binary response has %d trailing bytes" % (len(body) - off)
    return j, data


def read_safetensors(blob):
    """{name: (dtype, shape, list of values)} and the metadata dict."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    fmt = {"U8": "B", "I8": "b", "I32": "i", "I64": "q", "F32": "f"}
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        raw = blob[8 + n + a:8 + n + b]
        f = fmt[t["dtype"]]
        out[name] = (t["dtype"], t["shape"], list(struct.unpack("<%d%s" % (len(raw) // struct.calcsize(f), f), raw)))
    return out, meta


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)
