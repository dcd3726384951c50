"""SPEC §2 conformance: model files as PyTorch users write them are accepted (any tensor
order in the header and in the data, metadata in any order, padded or not, pretty JSON,
escapes), and every malformed class is refused with a 400 whose message names what is
wrong (PUT /admin/models/{m}) or a failed start (--model)."""
import json
import os
import struct
import unittest

import oipc
import tsd

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec_data")
MODEL = os.path.join(DATA, "odd_shapes.safetensors")   # linear+bias, relu, linear, silu, linear+bias


def parse(blob):
    """(ordered [(name, dtype, shape, raw bytes)], metadata dict) of a safetensors file."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors = []
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = t["data_offsets"]
        tensors.append((name, t["dtype"], t["shape"], blob[8 + n + a:8 + n + b]))
    return tensors, meta


def build(tensors, meta, header_order=None, meta_first=True, pad=True, indent=None,
          ensure_ascii=False, trailing=b""):
    """safetensors bytes; the data in the order of `tensors`, the header's tensor entries in
    header_order (default: the same)."""
    entries, off = {}, 0
    for name, dt, shape, raw in tensors:
        entries[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    header = {}
    names = header_order or [t[0] for t in tensors]
    if meta is not None and meta_first:
        header["__metadata__"] = meta
    for name in names:
        header[name] = entries[name]
    if meta is not None and not meta_first:
        header["__metadata__"] = meta
    sep = (",", ": ") if indent else (",", ":")
    text = json.dumps(header, indent=indent, separators=sep, ensure_ascii=ensure_ascii).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors) + trailing


def base():
    with open(MODEL, "rb") as f:
        return f.read()


def replace(tensors, name, dtype=None, shape=None, raw=None):
    out = []
    for n, dt, sh, r in tensors:
        if n == name:
            dt, sh, r = dtype or dt, shape if shape is not None else sh, raw if raw is not None else r
        out.append((n, dt, sh, r))
    return out


class SpecModelFile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = tsd.Daemon(args=["--snapshot-interval", "0"])
        cls.blob = base()
        cls.tensors, cls.meta = parse(cls.blob)
        x = [0.1 * i - 0.6 for i in range(13)]
        cls.x = x
        cls.d.json("PUT", "/admin/models/ref", None, expect=None)
        st, _, data = cls.d.request("PUT", "/admin/models/ref", cls.blob,
                                    {"Content-Type": "application/octet-stream"})
        assert st in (200, 201), data
        cls.want = cls.infer("ref")

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    @classmethod
    def infer(cls, name):
        out = cls.d.json("POST", f"/v2/models/{name}/infer", oipc.infer_body([cls.x]))
        return out["outputs"][0]["data"]

    def put(self, name, blob):
        return self.d.request("PUT", f"/admin/models/{name}", blob,
                              {"Content-Type": "application/octet-stream"})

    def accepted(self, blob, what):
        st, _, data = self.put("v", blob)
        self.assertIn(st, (200, 201), f"{what}: {st} {data[:300]!r}")
        got = self.infer("v")
        self.assertEqual(len(got), len(self.want))
        for g, w in zip(got, self.want):
            self.assertTrue(oipc.close(g, w), (what, got, self.want))

    def refused(self, blob, *words):
        st, _, data = self.put("bad", blob)
        self.assertEqual(st, 400, f"{words}: {st} {data[:300]!r}")
        msg = json.loads(data)["error"]
        self.assertIsInstance(msg, str)
        for w in words:
            self.assertIn(w.lower(), msg.lower(), f"message {msg!r} does not name {w!r}")
        # a refused PUT never creates the model
        self.assertEqual(self.d.request("GET", "/v2/models/bad")[0], 404)
        return msg

    # ── accepted variants ──

    def test_canonical_file_round_trips(self):
        self.accepted(self.blob, "canonical")

    def test_header_orders_and_padding(self):
        t, m = self.tensors, self.meta
        rev = [x[0] for x in reversed(t)]
        self.accepted(build(t, m, header_order=sorted(x[0] for x in t)), "alphabetical header")
        self.accepted(build(t, m, header_order=rev), "reversed header")
        self.accepted(build(t, m, meta_first=False), "metadata last")
        self.accepted(build(t, {k: m[k] for k in reversed(sorted(m))}), "metadata keys reversed")
        self.accepted(build(t, m, pad=False), "header not padded")
        self.accepted(build(t, m, indent=2), "pretty-printed header")
        self.accepted(build(t, m, ensure_ascii=True), "ascii-escaped header")

    def test_data_in_any_order(self):
        t, m = self.tensors, self.meta
        self.accepted(build(list(reversed(t)), m), "data reversed")
        self.accepted(build(sorted(t, key=lambda x: x[0]), m), "data by name (state_dict order)")
        # the order state_dict() gives: by layer, then registration order
        order = ["T_packed", "_T_shape", "_T_pad", "E", "corr_accum", "step_counter", "bias"]
        sd = sorted(t, key=lambda x: (int(x[0].split(".")[0]), order.index(x[0].split(".", 1)[1])))
        self.accepted(build(sd, m), "state_dict order")

    def test_layers_json_variants(self):
        layers = json.loads(self.meta["tscale.layers"])
        meta = dict(self.meta)
        meta["tscale.layers"] = json.dumps(layers, indent=1)
        self.accepted(build(self.tensors, meta), "layers pretty-printed")
        meta["tscale.layers"] = json.dumps([dict(reversed(list(s.items()))) for s in layers])
        self.accepted(build(self.tensors, meta), "layer keys in another order")
        meta = {k: v for k, v in self.meta.items() if k != "tscale.name"}
        self.accepted(build(self.tensors, meta), "no tscale.name")
        meta = dict(self.meta, **{"tscale.name": "modèle ✓"})
        self.accepted(build(self.tensors, meta, ensure_ascii=True), "non-ASCII name")

    # ── refused classes ──

    def test_refuses_trailing_garbage_and_truncation(self):
        self.refused(self.blob + b"\0\0\0\0")
        self.refused(self.blob[:-1])
        self.refused(self.blob[:5])
        self.refused(b"")
        self.refused(struct.pack("<Q", 1 << 40) + self.blob[8:])
        self.refused(self.blob[:8] + b"[" + self.blob[9:])

    def test_refuses_bad_offsets(self):
        t, m = self.tensors, self.meta
        (n,) = struct.unpack("<Q", self.blob[:8])
        header = json.loads(self.blob[8:8 + n])
        for name, delta in (("0.T_packed", (0, 1)), ("2.E", (1, 1)), ("4.bias", (0, 4))):
            h = json.loads(json.dumps(header))
            a, b = h[name]["data_offsets"]
            h[name]["data_offsets"] = [a + delta[0], b + delta[1]]
            text = json.dumps(h, separators=(",", ":")).encode()
            text += b" " * ((8 - len(text) % 8) % 8)
            blob = struct.pack("<Q", len(text)) + text + self.blob[8 + n:]
            with self.subTest(tensor=name):
                self.refused(blob)

    def test_refuses_wrong_dtype_shape_each_tensor(self):
        t, m = self.tensors, self.meta
        cases = [
            ("0.E", dict(dtype="U8"), "0.E"),
            ("0.corr_accum", dict(dtype="I32", raw=None), "0.corr_accum"),
            ("0.step_counter", dict(shape=[]), "0.step_counter"),
            ("0._T_pad", dict(shape=[1]), "0._T_pad"),
            ("0.bias", dict(dtype="F32"), "0.bias"),
            ("2.T_packed", dict(dtype="I8"), "2.T_packed"),
        ]
        for name, change, word in cases:
            tt = [list(x) for x in t]
            for x in tt:
                if x[0] == name:
                    if "dtype" in change:
                        x[1] = change["dtype"]
                    if "shape" in change:
                        x[2] = change["shape"]
            raw_ok = [tuple(x) for x in tt]
            # keep the byte counts consistent with the declared dtype/shape where possible
            fixed = []
            for n, dt, sh, r in raw_ok:
                size = {"U8": 1, "I8": 1, "I32": 4, "I64": 8, "F32": 4}[dt]
                cnt = 1
                for v in sh:
                    cnt *= v
                if len(r) != size * cnt:
                    r = (r * (size * cnt // max(len(r), 1) + 1))[:size * cnt]
                fixed.append((n, dt, sh, r))
            with self.subTest(tensor=name, change=change):
                self.refused(build(fixed, m), word)

    def test_refuses_missing_extra_tensor(self):
        t, m = self.tensors, self.meta
        self.refused(build([x for x in t if x[0] != "2.corr_accum"], m), "2.corr_accum")
        self.refused(build([x for x in t if x[0] != "0.bias"], m), "0.bias")
        self.refused(build(t + [("1.bias", "I32", [7], b"\0" * 28)], m), "1.bias")
        self.refused(build(t + [("2.bias", "I32", [5], b"\0" * 20)], m), "2.bias")

    def test_refuses_bad_trits_shape_pad(self):
        t, m = self.tensors, self.meta
        raw = dict((x[0], x[3]) for x in t)
        self.refused(build(replace(t, "0.T_packed", raw=b"\xf3" + raw["0.T_packed"][1:]), m), "0.T_packed")
        self.refused(build(replace(t, "0._T_shape", raw=struct.pack("<2q", 13, 7)), m), "0._T_shape")
        self.refused(build(replace(t, "0._T_pad", raw=struct.pack("<q", 0)), m), "0._T_pad")

    def test_refuses_bad_metadata(self):
        t = self.tensors
        layers = json.loads(self.meta["tscale.layers"])

        def meta(**kw):
            m = dict(self.meta)
            for k, v in kw.items():
                key = "tscale." + k
                if v is None:
                    m.pop(key, None)
                else:
                    m[key] = v
            return m
        self.refused(build(t, None), "metadata")
        self.refused(build(t, meta(format="2")), "tscale.format")
        self.refused(build(t, meta(format=None)), "tscale.format")
        self.refused(build(t, meta(layers=None)), "tscale.layers")
        self.refused(build(t, meta(layers="[")), "tscale.layers")
        bad = json.loads(json.dumps(layers)); bad[1] = {"type": "tanh"}
        self.refused(build(t, meta(layers=json.dumps(bad))), "tanh")
        bad = json.loads(json.dumps(layers)); bad[2]["in_dim"] = 6
        self.refused(build(t, meta(layers=json.dumps(bad))))
        bad = json.loads(json.dumps(layers)); bad[0]["group_size"] = 0
        self.refused(build(t, meta(layers=json.dumps(bad))), "group_size")
        bad = json.loads(json.dumps(layers)); bad[0]["bias"] = False
        self.refused(build(t, meta(layers=json.dumps(bad))), "0.bias")

    def test_refuses_layers_that_disagree(self):
        """linear 13x7 then linear 5x... (relu between): 7 != the next in_dim."""
        t = self.tensors
        layers = json.loads(self.meta["tscale.layers"])
        # drop the middle linear (index 2) and its tensors; the next linear's in_dim (5) != 7
        layers2 = layers[:2] + layers[3:]
        ren = {"3": "2", "4": "3"}
        t2 = []
        for n, dt, sh, r in t:
            i, rest = n.split(".", 1)
            if i == "2":
                continue
            t2.append((ren.get(i, i) + "." + rest, dt, sh, r))
        m = dict(self.meta, **{"tscale.layers": json.dumps(layers2)})
        self.refused(build(t2, m))

    def test_start_refuses_a_bad_file(self):
        import subprocess, tempfile
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "bad.safetensors")
            with open(p, "wb") as f:
                f.write(self.blob + b"junk")
            cmd = [os.path.join(tsd.ROOT, tsd.BINARY) if not os.path.isabs(tsd.BINARY) else tsd.BINARY,
                   "--listen", "127.0.0.1:0", "--db", os.path.join(d, "db"), "--model", f"m={p}"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("bad.safetensors", r.stderr)
