"""test_torch_layers.py — the project's PyTorch modules (clients/python/tscale/torch_layers.py)
against SPEC §1, and tools/torch_export.py from a plain clone.

Run with Debian's python3-torch (`make test` installs it and runs this file):

    /usr/bin/python3 tests/torch/test_torch_layers.py

- tests/golden/gen.py computed with the project's modules gives every committed model file
  byte for byte and every committed golden case with the same integers (trits, E, bias,
  corr_accum and step after each feedback step, labels) and floats within SPEC §1's tolerance
  (the committed floats were computed on another CPU, whose summation order differs);
- with the reference (../shared/reference/tscale_mini.py) beside the repository, gen.py with
  either implementation writes byte-identical files (outputs, losses, state: all of it);
- torch_export.py exports a torch.save'd state_dict plus --layers byte-identically to the
  pickled nn.Sequential, and refuses what does not fit with a message naming it.
"""
import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GOLDEN = os.path.join(ROOT, "tests", "golden")
REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference", "tscale_mini.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import torch_export  # noqa: E402
from tscale import torch_layers as tl  # noqa: E402


def gen(out, *args):
    subprocess.run([sys.executable, os.path.join(GOLDEN, "gen.py"), "--out", out, *args],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cases():
    with open(os.path.join(GOLDEN, "cases.txt")) as f:
        return f.read().split()


def assert_same(tc, a, b, where):
    """Equal structure and integers; floats within |a−b| ≤ 1e-4 + 1e-4·|b| (SPEC §1)."""
    if isinstance(b, float) or isinstance(a, float):
        tc.assertTrue(abs(a - b) <= 1e-4 + 1e-4 * abs(b), f"{where}: {a} vs committed {b}")
    elif isinstance(b, dict):
        tc.assertEqual(sorted(a), sorted(b), where)
        for k in b:
            assert_same(tc, a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        tc.assertEqual(len(a), len(b), where)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(tc, x, y, f"{where}[{i}]")
    else:
        tc.assertEqual(a, b, where)


class GoldenWithProjectModules(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = cls.tmp.name
        gen(cls.out, "--project")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_model_files_byte_identical(self):
        for name in cases():
            for kind in ("model", "final"):
                f = f"{name}.{kind}.safetensors"
                with open(os.path.join(self.out, f), "rb") as a, open(os.path.join(GOLDEN, f), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f"{f} differs from the committed golden file")

    def test_cases_match(self):
        for name in cases():
            with open(os.path.join(self.out, name + ".json")) as a, open(os.path.join(GOLDEN, name + ".json")) as b:
                mine, committed = json.load(a), json.load(b)
            # the integer state of every step, exactly
            self.assertEqual(mine["state"], committed["state"], name)
            self.assertEqual([s["after"] for s in mine["feedback"]],
                             [s["after"] for s in committed["feedback"]], name)
            assert_same(self, mine, committed, name)

    @unittest.skipUnless(os.path.exists(REFERENCE), f"no reference at {REFERENCE}")
    def test_reference_writes_the_same_bytes(self):
        with tempfile.TemporaryDirectory() as d:
            gen(d, "--reference", REFERENCE)
            names = sorted(os.listdir(d))
            self.assertEqual(names, sorted(os.listdir(self.out)))
            for f in names:
                with open(os.path.join(d, f), "rb") as a, open(os.path.join(self.out, f), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f"{f}: reference and project modules differ")


class Modules(unittest.TestCase):
    def test_pack_unpack_all_bytes(self):
        # every valid byte (0..242) unpacks to its digits and packs back
        packed = torch.arange(243, dtype=torch.uint8)
        trits = tl.unpack_ternary(packed, (243 * 5,))
        self.assertEqual(trits.tolist()[:10], [-1, -1, -1, -1, -1, 0, -1, -1, -1, -1])
        again, _, pad = tl.pack_ternary(trits.float())
        self.assertEqual(pad, 0)
        self.assertTrue(torch.equal(again, packed))

    def test_state_dict_names_and_dtypes(self):
        seq = nn.Sequential(tl.TernaryRMSNorm(6, group_size=4), tl.TernaryScaleTensor(6, 3, group_size=4, bias=True))
        want = {"T_packed": torch.uint8, "_T_shape": torch.int64, "_T_pad": torch.int64, "E": torch.int8,
                "corr_accum": torch.int64, "step_counter": torch.int64}
        sd = seq.state_dict()
        self.assertEqual(list(sd), [f"0.{k}" for k in want] + [f"1.{k}" for k in want] + ["1.bias"])
        for k, t in sd.items():
            self.assertEqual(t.dtype, want.get(k.split(".", 1)[1], torch.int32), k)
        self.assertEqual(sd["1.E"].tolist(), [-2] * 6)   # 3 rows × 2 groups; round(log2(0.5/√6)) = -2

    def test_quantize_and_from_float(self):
        w = torch.tensor([[0.9, -1.1, 0.2, 0.0, 4.0], [0.25, -0.25, 0.1, 0.0, 0.0]])
        T, E = tl.quantize(w, 4)
        # row 0 group 0: mean |w| = 0.55 → E = -1 (0.5); |w| > 0.25 → sign; group 1: [4.0] → E = 2; all zeros → 0
        self.assertEqual(E.tolist(), [-1, 2, -3, 0])
        self.assertEqual(T.tolist(), [[1, -1, 0, 0, 1], [1, -1, 1, 0, 0]])   # row 1: S = 1/8, 0.1 > 1/16
        m = tl.TernaryScaleTensor.from_float(w, group_size=4, bias=torch.tensor([0.6, -2.4]))
        self.assertEqual(m.bias.tolist(), [1, -2])
        x = torch.eye(5)
        with torch.no_grad():
            y = m(x) - m.bias.float()
        self.assertTrue(torch.equal(y.t(), tl.ternary_weight(w, 4)))

    def test_ternary_weight_passes_the_gradient_through(self):
        w = torch.randn(3, 8, requires_grad=True)
        tl.ternary_weight(w, 4).sum().backward()
        self.assertTrue(torch.equal(w.grad, torch.ones(3, 8)))

    def test_update_corr_is_one_step(self):
        torch.manual_seed(3)
        m = tl.TernaryScaleTensor(10, 4, group_size=4)
        m(torch.randn(2, 10)).sum().backward()
        before = m.corr_accum.clone()
        m.update_corr()
        self.assertEqual(int(m.step_counter), 1)
        self.assertFalse(torch.equal(before, m.corr_accum))
        m.update_corr()     # no new backward: nothing to apply
        self.assertEqual(int(m.step_counter), 1)


def run_cli(*argv):
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = torch_export.main(list(argv))
    return rc, err.getvalue()


class ExportCli(unittest.TestCase):
    LAYERS = "rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x5/gs3,silu"

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        torch.manual_seed(5)
        self.seq = torch_export.build(torch_export.parse_layers(self.LAYERS), tl)
        torch_export.live_in(self.seq, 3, 2, torch.Generator().manual_seed(5))

    def tearDown(self):
        self.tmp.cleanup()

    def p(self, name):
        return os.path.join(self.d, name)

    def read(self, name):
        with open(self.p(name), "rb") as f:
            return f.read()

    def test_state_dict_with_layers_equals_sequential(self):
        torch.save(self.seq, self.p("seq.pt"))
        torch.save(self.seq.state_dict(), self.p("state.pt"))
        self.assertEqual(run_cli("to-tscale", self.p("seq.pt"), self.p("a.safetensors"), "--name", "m")[0], 0)
        self.assertEqual(run_cli("to-tscale", self.p("state.pt"), self.p("b.safetensors"), "--name", "m",
                                 "--layers", self.LAYERS)[0], 0)
        layers_json = torch_export.layers_json(torch_export.parse_layers(self.LAYERS))
        self.assertEqual(run_cli("to-tscale", self.p("state.pt"), self.p("c.safetensors"), "--name", "m",
                                 "--layers", layers_json)[0], 0)
        self.assertEqual(self.read("a.safetensors"), torch_export.to_bytes(self.seq, "m"))
        self.assertEqual(self.read("a.safetensors"), self.read("b.safetensors"))
        self.assertEqual(self.read("a.safetensors"), self.read("c.safetensors"))
        # and back: from-tscale → to-tscale is the same file
        self.assertEqual(run_cli("from-tscale", self.p("b.safetensors"), self.p("back.pt"))[0], 0)
        self.assertEqual(run_cli("to-tscale", self.p("back.pt"), self.p("d.safetensors"), "--name", "m")[0], 0)
        self.assertEqual(self.read("a.safetensors"), self.read("d.safetensors"))

    def test_state_dict_refusals(self):
        torch.save(self.seq.state_dict(), self.p("state.pt"))
        rc, err = run_cli("to-tscale", self.p("state.pt"), self.p("x.safetensors"))
        self.assertEqual(rc, 1)
        self.assertIn("--layers", err)
        rc, err = run_cli("to-tscale", self.p("state.pt"), self.p("x.safetensors"),
                          "--layers", "rmsnorm:12/gs5,linear:12x8/gs4+bias,gelu,linear:8x5/gs3,silu")
        self.assertEqual(rc, 1)
        self.assertIn("1.T_packed", err)
        sd = self.seq.state_dict()
        del sd["3.E"]
        torch.save(sd, self.p("short.pt"))
        rc, err = run_cli("to-tscale", self.p("short.pt"), self.p("x.safetensors"), "--layers", self.LAYERS)
        self.assertEqual(rc, 1)
        self.assertIn("'3.E': missing", err)
        self.assertFalse(os.path.exists(self.p("x.safetensors")))

    def test_example_command_writes_the_committed_mini_model(self):
        # tests/data/mini.safetensors was written with the reference (tests/unit/test_safetensors.c
        # gives the command): random state, then 8 feedback steps in torch
        rc, err = run_cli("example", self.p("mini.safetensors"), self.p("mini.io"), "--layers",
                          "rmsnorm:12/gs5,linear:12x7/gs4+bias,gelu,linear:7x9/gs3+bias,relu,linear:9x5/gs2,silu",
                          "--steps", "8", "--batch", "3", "--rows", "6", "--seed", "11", "--name", "mini")
        self.assertEqual(rc, 0, err)
        with open(os.path.join(ROOT, "tests", "data", "mini.safetensors"), "rb") as f:
            self.assertEqual(self.read("mini.safetensors"), f.read())

    def test_roundtrip_command(self):
        rc, err = run_cli("roundtrip")
        self.assertEqual(rc, 0, err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
