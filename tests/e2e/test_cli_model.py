"""test_cli_model.py — `tscaled init` (write a new model file) and `tscaled inspect`
(describe and validate one): outputs, exit codes and error messages."""
import json
import os
import subprocess
import tempfile
import unittest

import tsd

BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)
MINI = os.path.join(tsd.ROOT, "tests", "data", "mini.safetensors")
LAYERS = "rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x5/gs3"


def tscaled(*args):
    p = subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout, p.stderr


def read(path):
    with open(path, "rb") as f:
        return f.read()


class InitTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.out = os.path.join(self.dir.name, "m.safetensors")

    def tearDown(self):
        self.dir.cleanup()

    def test_init_then_inspect(self):
        rc, out, err = tscaled("init", "--layers", LAYERS, "--out", self.out, "--name", "small")
        self.assertEqual(rc, 0, err)
        self.assertIn("4 layers", out)
        self.assertEqual(os.stat(self.out).st_mode & 0o777, 0o600)
        rc, out, err = tscaled("inspect", "--json", self.out)
        self.assertEqual(rc, 0, err)
        d = json.loads(out)
        self.assertEqual(d["name"], "small")
        self.assertEqual((d["in_dim"], d["out_dim"], d["step"]), (12, 5, 0))
        self.assertEqual(d["params"], 12 + 12 * 7 + 7 * 5)
        self.assertEqual(d["groups"], 3 + 7 * 3 + 5 * 3)
        self.assertEqual(d["bytes_on_disk"], os.path.getsize(self.out))
        self.assertEqual([l["type"] for l in d["layers"]],
                         ["ternary_rmsnorm", "ternary_linear", "gelu", "ternary_linear"])
        self.assertEqual(d["layers"][1]["bias"], True)
        self.assertEqual(d["layers"][1]["group_size"], 4)

    def test_seed_decides_the_weights(self):
        paths = [os.path.join(self.dir.name, f"{k}.safetensors") for k in range(3)]
        for path, seed in zip(paths, ("5", "5", "6")):
            rc, _, err = tscaled("init", "--layers", LAYERS, "--out", path, "--seed", seed)
            self.assertEqual(rc, 0, err)
        data = [read(p) for p in paths]
        self.assertEqual(data[0], data[1])
        self.assertNotEqual(data[0], data[2])

    def test_refuses_to_overwrite_without_force(self):
        with open(self.out, "w") as f:
            f.write("keep me")
        rc, _, err = tscaled("init", "--layers", LAYERS, "--out", self.out)
        self.assertEqual(rc, 1)
        self.assertIn("already exists", err)
        self.assertEqual(read(self.out), b"keep me")
        rc, _, err = tscaled("init", "--layers", LAYERS, "--out", self.out, "--force")
        self.assertEqual(rc, 0, err)

    def test_usage_errors(self):
        cases = [
            (("init", "--layers", LAYERS), "--out is required"),
            (("init", "--out", self.out), "--layers is required"),
            (("init", "--layers", "linear:4x", "--out", self.out), "--layers: item 1"),
            (("init", "--layers", "relu", "--out", self.out), "needs a ternary_linear"),
            (("init", "--layers", LAYERS, "--out", self.out, "--seed", "x"), "--seed wants"),
            (("init", "--layers", LAYERS, "--out", self.out, "--bogus"), "unknown argument '--bogus'"),
            (("init", "--layers"), "--layers needs a value"),
        ]
        for args, want in cases:
            rc, _, err = tscaled(*args)
            self.assertEqual(rc, 2, args)
            self.assertIn(want, err, args)
        self.assertFalse(os.path.exists(self.out))

    def test_help(self):
        for cmd in ("init", "inspect"):
            rc, out, _ = tscaled(cmd, "--help")
            self.assertEqual(rc, 0)
            self.assertIn(f"usage: tscaled {cmd}", out)


class InspectTest(unittest.TestCase):
    def test_text(self):
        rc, out, err = tscaled("inspect", MINI)
        self.assertEqual(rc, 0, err)
        self.assertIn("name     mini", out)
        self.assertIn("step     8", out)
        self.assertIn("ternary_linear   12 -> 7 +bias", out)
        self.assertIn(f"bytes    {os.path.getsize(MINI)} on disk", out)

    def test_refuses_bad_files(self):
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "bad.safetensors")
            with open(bad, "wb") as f:
                f.write(read(MINI) + b"\0")
            rc, _, err = tscaled("inspect", bad)
            self.assertEqual(rc, 1)
            self.assertIn("1 bytes of trailing garbage", err)
            self.assertIn(bad, err)
        rc, _, err = tscaled("inspect", "/nonexistent.safetensors")
        self.assertEqual(rc, 1)
        self.assertIn("No such file", err)
        rc, _, err = tscaled("inspect")
        self.assertEqual(rc, 2)
        self.assertIn("FILE is required", err)


if __name__ == "__main__":
    unittest.main()
