"""modelstate.py — helpers of the persistence tests (test_persist.py, test_crash.py): start a
daemon (or skip while `tscaled serve` is not built), read the mutable state out of an
exported model file, and the few admin and OIP calls those tests make (stdlib only)."""
import json
import os
import unittest

import tsd

try:
    import oipc  # lands with the daemon
except ImportError:
    oipc = None


def start(args=(), db_dir=None):
    """A running daemon, or SkipTest while the daemon or its admin API is not there yet."""
    if oipc is None:
        raise unittest.SkipTest("tests/e2e/oipc.py (lands with the daemon) is missing")
    try:
        d = tsd.Daemon(args=list(args), db_dir=db_dir)
    except RuntimeError as e:
        if "not built yet" in str(e):
            raise unittest.SkipTest("tscaled serve is not built yet")
        raise
    status = d.request("GET", "/admin/models")[0]
    if status in (404, 501):
        d.close()
        raise unittest.SkipTest("the admin API answers %d" % status)
    return d


def in_dim(case):
    first = oipc.golden(case)["layers"][0]
    return first.get("in_dim", first.get("dim"))


def state(blob):
    """The mutable state of an exported model file: a tuple of (layer index, type,
    step_counter, corr_accum) for each ternary layer, comparable with ==."""
    tensors, meta = oipc.read_safetensors(blob)
    out = []
    for i, layer in enumerate(json.loads(meta["tscale.layers"])):
        if layer["type"].startswith("ternary_"):
            out.append((i, layer["type"], tensors["%d.step_counter" % i][2][0],
                        tuple(tensors["%d.corr_accum" % i][2])))
    return tuple(out)


def step_of(st):
    """A model's step (SPEC §4): the step_counter of its first ternary_linear layer."""
    return next((s for _, kind, s, _ in st if kind == "ternary_linear"), 0)


def export(d, name):
    status, _, blob = d.request("GET", "/admin/models/%s/export" % name)
    if status != 200:
        raise AssertionError("export of %s: status %d: %r" % (name, status, blob[:300]))
    return blob


def put(d, name, blob, expect=(200, 201)):
    status, _, data = d.request("PUT", "/admin/models/%s" % name, blob,
                                {"Content-Type": "application/octet-stream"})
    if status not in expect:
        raise AssertionError("PUT %s: status %d: %r" % (name, status, data[:300]))
    return json.loads(data)


def feedback(d, name, rows, kind, signal, expect=200):
    """One feedback step; returns (status, headers, parsed body)."""
    status, headers, data = d.request("POST", "/v2/models/%s/feedback" % name,
                                      oipc.feedback_body(rows, kind, signal))
    if expect is not None and status != expect:
        raise AssertionError("feedback %s: status %d, expected %d: %r" % (name, status, expect, data[:300]))
    return status, headers, json.loads(data) if data else None


def infer(d, name, rows):
    status, _, data = d.request("POST", "/v2/models/%s/infer" % name, oipc.infer_body(rows))
    if status != 200:
        raise AssertionError("infer %s: status %d: %r" % (name, status, data[:300]))
    return json.loads(data)["outputs"][0]["data"]


def snapshots(d, name):
    return d.json("GET", "/admin/models/%s/snapshots" % name)["snapshots"]


def snapshot_now(d, name):
    return d.json("POST", "/admin/models/%s/snapshots" % name, expect=201)


def state_len(blob):
    """int64 values of a snapshot of this model: per ternary layer its step and G groups."""
    tensors, meta = oipc.read_safetensors(blob)
    n = 0
    for i, layer in enumerate(json.loads(meta["tscale.layers"])):
        if layer["type"].startswith("ternary_"):
            n += 1 + len(tensors["%d.corr_accum" % i][2])
    return n


def golden_file(case, which="model"):
    return os.path.join(tsd.ROOT, "tests", "golden", "%s.%s.safetensors" % (case, which))
