"""SPEC §4 admin endpoints and §6 persistence, as a user of the admin API sees them: snapshot
fields and order, restore, export (a model file PyTorch reads back), PUT (new and replace),
DELETE (snapshots stay)."""
import json
import os
import unittest

import oipc
import tsd

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec_data")
MODEL = os.path.join(DATA, "step0_corr.safetensors")   # in 20, out 4, step 0
OTHER = os.path.join(DATA, "one_class.safetensors")    # in 6, out 1, step 4
ROWS = [[0.05 * i - 0.4 for i in range(20)], [0.3 - 0.02 * i for i in range(20)]]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def same_model_file(test, blob, path, name):
    """blob is the file at path, byte for byte, but for tscale.name: export names the model as
    it is served (the daemon's reading of "round-trips unchanged")."""
    import struct
    want = read(path)
    n_b, n_w = struct.unpack("<Q", blob[:8])[0], struct.unpack("<Q", want[:8])[0]
    hb, hw = json.loads(blob[8:8 + n_b]), json.loads(want[8:8 + n_w])
    test.assertEqual(hb["__metadata__"].pop("tscale.name"), name)
    hw["__metadata__"].pop("tscale.name", None)
    test.assertEqual(hb, hw)
    test.assertEqual(blob[8 + n_b:], want[8 + n_w:])


class SpecAdmin(unittest.TestCase):
    def setUp(self):
        self.d = tsd.Daemon(args=["--model", f"m={MODEL}", "--snapshot-interval", "0"])
        self.addCleanup(self.d.close)

    def feedback(self, name="m"):
        return self.d.json("POST", f"/v2/models/{name}/feedback",
                           oipc.feedback_body(ROWS, "label", [1, 3]))["step"]

    def export(self, name="m"):
        st, h, blob = self.d.request("GET", f"/admin/models/{name}/export")
        self.assertEqual(st, 200)
        return blob

    def outputs(self, name="m"):
        return self.d.json("POST", f"/v2/models/{name}/infer", oipc.infer_body(ROWS))["outputs"][0]["data"]

    def snapshots(self, name="m"):
        return self.d.json("GET", f"/admin/models/{name}/snapshots")["snapshots"]

    def test_admin_models_lists_name_layers_step_snapshot(self):
        self.feedback()
        (m,) = self.d.json("GET", "/admin/models")["models"]
        self.assertEqual(m["name"], "m")
        self.assertEqual([l["type"] for l in m["layers"]], ["ternary_linear", "relu", "ternary_linear"])
        self.assertEqual(m["step"], 1)
        snap = m.get("snapshot", m.get("newest_snapshot"))
        self.assertIsNotNone(snap)
        self.assertEqual(snap["snapshot_id"], self.snapshots()[0]["snapshot_id"])

    def test_snapshot_fields_and_order(self):
        s1 = self.d.json("POST", "/admin/models/m/snapshots", expect=201)
        for k, t in (("snapshot_id", int), ("step", int), ("created_at", str)):
            self.assertIsInstance(s1[k], t, k)
        self.assertEqual(s1["step"], 0)
        self.feedback()
        self.feedback()
        s2 = self.d.json("POST", "/admin/models/m/snapshots", expect=201)
        self.assertEqual(s2["step"], 2)
        self.assertGreater(s2["snapshot_id"], s1["snapshot_id"])
        snaps = self.snapshots()
        self.assertGreaterEqual(len(snaps), 3)          # the --model import, s1, s2
        for s in snaps:
            self.assertEqual(set(s) >= {"snapshot_id", "step", "created_at", "reason", "bytes"}, True, s)
            self.assertIsInstance(s["bytes"], int)
            self.assertGreater(s["bytes"], 0)
            self.assertIsInstance(s["reason"], str)
        ids = [s["snapshot_id"] for s in snaps]
        self.assertEqual(ids, sorted(ids, reverse=True), "newest first")
        self.assertEqual(ids[0], s2["snapshot_id"])
        self.assertEqual([s["step"] for s in snaps[:2]], [2, 0])
        times = [s["created_at"] for s in snaps]
        self.assertEqual(times, sorted(times, reverse=True))

    def test_restore_brings_back_state_exactly(self):
        self.feedback()
        s = self.d.json("POST", "/admin/models/m/snapshots", expect=201)
        blob, out = self.export(), self.outputs()
        for _ in range(3):
            self.feedback()
        self.assertNotEqual(self.export(), blob)
        st, _, data = self.d.request("POST", "/admin/models/m/restore", {"snapshot_id": s["snapshot_id"]})
        self.assertEqual(st, 200, data)
        self.assertEqual(self.export(), blob)
        self.assertEqual(self.outputs(), out)
        self.assertEqual(self.d.json("GET", "/admin/models")["models"][0]["step"], 1)
        self.assertEqual(self.feedback(), 2)            # steps go on from the restored state

    def test_restore_refusals(self):
        for body in ({"snapshot_id": 987654}, {"snapshot_id": "1"}, {}, b"", b"{", {"snapshot_id": -1}):
            st, _, data = self.d.request("POST", "/admin/models/m/restore", body)
            self.assertIn(st, (400, 404), (body, data))
            self.assertIn("error", json.loads(data))
        self.assertEqual(self.d.request("POST", "/admin/models/nope/restore", {"snapshot_id": 1})[0], 404)

    def test_export_is_the_model_file(self):
        blob = self.export()
        same_model_file(self, blob, MODEL, "m")          # nothing changed yet: the same file
        self.feedback()
        tensors, meta = oipc.read_safetensors(self.export())
        self.assertEqual(meta["tscale.format"], "1")
        self.assertEqual(json.loads(meta["tscale.layers"])[1], {"type": "relu"})
        self.assertEqual(tensors["0.step_counter"][2], [1])
        self.assertEqual(tensors["2.step_counter"][2], [1])

    def test_put_new_and_replace(self):
        st, _, data = self.d.request("PUT", "/admin/models/n", read(OTHER))
        self.assertIn(st, (200, 201), data)
        self.assertEqual(self.d.json("GET", "/v2/models/n")["inputs"][0]["shape"], [-1, 6])
        same_model_file(self, self.export("n"), OTHER, "n")
        self.assertEqual(self.snapshots("n")[0]["step"], 4)     # PUT takes a snapshot
        # replace m (a different architecture): the new file's state, a new version
        v1 = self.d.json("GET", "/v2/models/m")["versions"]
        self.feedback()
        st, _, data = self.d.request("PUT", "/admin/models/m", read(OTHER))
        self.assertIn(st, (200, 201), data)
        meta = self.d.json("GET", "/v2/models/m")
        self.assertEqual(meta["inputs"][0]["shape"], [-1, 6])
        self.assertNotEqual(meta["versions"], v1)
        same_model_file(self, self.export("m"), OTHER, "m")
        self.assertEqual(self.snapshots("m")[0]["step"], 4)
        # PUT of the file m already runs: the state becomes the file's again
        self.d.json("POST", "/v2/models/m/feedback", oipc.feedback_body([[0.1] * 6], "target", [[1.0]]))
        self.assertEqual(self.d.request("PUT", "/admin/models/m", read(OTHER))[0], 200)
        same_model_file(self, self.export("m"), OTHER, "m")

    def test_delete_keeps_snapshots(self):
        self.feedback()
        before = self.snapshots()
        st, _, _ = self.d.request("DELETE", "/admin/models/m")
        self.assertIn(st, (200, 204))
        self.assertEqual(self.d.request("GET", "/v2/models/m")[0], 404)
        self.assertEqual(self.d.request("POST", "/v2/models/m/infer", oipc.infer_body(ROWS))[0], 404)
        self.assertEqual(self.d.request("DELETE", "/admin/models/m")[0], 404)
        st, _, data = self.d.request("GET", "/admin/models/m/snapshots")
        self.assertEqual(st, 200, data)
        self.assertEqual([s["snapshot_id"] for s in json.loads(data)["snapshots"]][-len(before):],
                         [s["snapshot_id"] for s in before])
        self.assertEqual(self.d.request("GET", "/v2/health/ready")[0], 200)
