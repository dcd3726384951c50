"""test_followups.py — follow-ups of the SPEC audit of the daemon:
  - 404 before 400: an unknown model or version is a 404 whatever the body (SPEC §4);
  - --model FILE without NAME=: the file's tscale.name, else its file name (SPEC §2);
  - -h and -V are --help and --version (SPEC §3: "do what users expect");
  - deploy/tscale.env.example lists every flag of the configuration table, with its default;
  - an activation as the first layer (valid PyTorch) loads and serves as the reference
    computes it (tests/data/relu_first.*, from tests/data/gen_relu_first.py).
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import modelstate
import oipc
import tsd


def tscaled(*args, env=None, cwd=None):
    """Run build/tscaled to completion: (returncode, stdout, stderr)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("TSCALE_")}
    e.update(env or {})
    binary = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)
    p = subprocess.run([binary, *args], capture_output=True, text=True, env=e, cwd=cwd, timeout=60)
    return p.returncode, p.stdout, p.stderr


def init_model(path, layers="linear:4x3/gs2", name=None):
    args = ["init", "--layers", layers, "--out", path] + (["--name", name] if name else [])
    rc, _, err = tscaled(*args)
    assert rc == 0, err
    return path


class NotFoundBeforeBadRequest(unittest.TestCase):
    """The body is parsed on the HTTP thread, but the answer to a body that does not parse
    waits for the model lookup on the loop: unknown model/version → 404, then 400."""

    @classmethod
    def setUpClass(cls):
        cls.d = tsd.Daemon()
        cls.version = cls.d.json("GET", "/v2/models/demo")["versions"][0]

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def status(self, method, path, body, headers=None):
        st, _, data = self.d.request(method, path, body, headers)
        return st, json.loads(data)["error"] if data else ""

    BAD_BODIES = (b"{}", b"not json", b"", b'{"inputs": [{"name": "input"}]}')

    def test_unknown_model_is_404_whatever_the_body(self):
        for ep in ("infer", "feedback"):
            for body in self.BAD_BODIES:
                st, err = self.status("POST", f"/v2/models/nope/{ep}", body)
                self.assertEqual(st, 404, (ep, body, err))
                self.assertIn("nope", err)
            # a binary-extension header that does not fit the body is a body error too
            st, _ = self.status("POST", f"/v2/models/nope/{ep}", b"{}",
                                {"Inference-Header-Content-Length": "999"})
            self.assertEqual(st, 404, ep)
        for body in self.BAD_BODIES:
            st, err = self.status("POST", "/admin/models/nope/restore", body)
            self.assertEqual(st, 404, (body, err))

    def test_unknown_version_is_404_whatever_the_body(self):
        for ep in ("infer", "feedback"):
            for body in self.BAD_BODIES:
                st, err = self.status("POST", f"/v2/models/demo/versions/999/{ep}", body)
                self.assertEqual(st, 404, (ep, body, err))
                self.assertIn("999", err)

    def test_known_model_with_a_bad_body_is_400_with_the_reason(self):
        for path in ("/v2/models/demo/infer", f"/v2/models/demo/versions/{self.version}/infer",
                     "/v2/models/demo/feedback", f"/v2/models/demo/versions/{self.version}/feedback"):
            for body in self.BAD_BODIES:
                st, err = self.status("POST", path, body)
                self.assertEqual(st, 400, (path, body, err))
                self.assertTrue(err, path)
        st, err = self.status("POST", "/v2/models/demo/infer", b"{}",
                              {"Inference-Header-Content-Length": "999"})
        self.assertEqual(st, 400)
        self.assertIn("Inference-Header-Content-Length", err)
        st, err = self.status("POST", "/admin/models/demo/restore", b"{}")
        self.assertEqual(st, 400)
        self.assertIn("snapshot_id", err)

    def test_put_of_a_bad_file_is_still_400(self):
        # PUT creates its model, so there is no 404 to give first.
        st, err = self.status("PUT", "/admin/models/fresh", b"not a model file")
        self.assertEqual(st, 400)
        self.assertIn("model file refused", err)

    def test_good_requests_still_served_after_the_errors(self):
        out = self.d.json("POST", "/v2/models/demo/infer",
                          {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                                       "data": [0.5] * 16}]})
        self.assertEqual(out["outputs"][0]["shape"], [1, 4])


class ModelFileWithoutName(unittest.TestCase):
    """--model FILE: the name is the file's tscale.name, else its file name without
    directory and .safetensors; an invalid one is an error naming the file."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tscale-followups-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def served(self, d):
        return sorted(m["name"] for m in d.json("GET", "/admin/models")["models"])

    def start_fails(self, *args, env=None):
        rc, _, err = tscaled("--listen", "127.0.0.1:0", "--db", self.path("x.db"), *args, env=env)
        self.assertEqual(rc, 1, err)
        return err

    def test_name_from_tscale_name_else_file_name(self):
        named = init_model(self.path("file-name.safetensors"), name="from_metadata")
        plain = init_model(self.path("plain.safetensors"))
        other = init_model(self.path("weights.v2"))   # no .safetensors: the whole file name
        with tsd.Daemon(args=["--model", named, "--model", plain, "--model", other]) as d:
            self.assertEqual(self.served(d), ["from_metadata", "plain", "weights.v2"])
            self.assertEqual(d.request("GET", "/v2/models/file-name")[0], 404)
            self.assertIn(f"loaded from {plain}", d.log())

    def test_environment_mixes_both_forms(self):
        a = init_model(self.path("a.safetensors"))
        c = init_model(self.path("c.safetensors"), name="ignored_under_an_explicit_name")
        with tsd.Daemon(env={"TSCALE_MODEL": f"{a},b={c}"}) as d:
            self.assertEqual(self.served(d), ["a", "b"])

    def test_same_file_restarts_with_its_state(self):
        f = init_model(self.path("keep.safetensors"), layers="linear:4x3/gs2")
        db_dir = tempfile.mkdtemp(prefix="tscale-followups-db-")
        try:
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                "data": [1.0, -2.0, 3.0, -4.0]},
                               {"name": "grad_output", "datatype": "FP32", "shape": [1, 3],
                                "data": [1.0, -1.0, 0.5]}]}
            with tsd.Daemon(args=["--model", f], db_dir=db_dir) as d:
                self.assertEqual(d.json("POST", "/v2/models/keep/feedback", body)["step"], 1)
                self.assertEqual(d.stop(), 0)
            with tsd.Daemon(args=["--model", f], db_dir=db_dir) as d:
                self.assertEqual(d.json("GET", "/admin/models")["models"][0]["step"], 1)
                self.assertIn("already held", d.log())
        finally:
            shutil.rmtree(db_dir, ignore_errors=True)

    def test_invalid_names_are_errors_naming_the_file(self):
        bad_file = init_model(self.path("bad name.safetensors"))
        err = self.start_fails("--model", bad_file)
        self.assertIn(bad_file, err)
        self.assertIn("file name", err)
        self.assertIn("NAME=", err)
        bad_meta = init_model(self.path("ok.safetensors"), name="bad name")
        err = self.start_fails("--model", bad_meta)
        self.assertIn(bad_meta, err)
        self.assertIn("tscale.name", err)
        hidden = init_model(self.path(".hidden.safetensors"))
        self.assertIn(hidden, self.start_fails("--model", hidden))
        # the explicit form still works for such files
        with tsd.Daemon(args=["--model", f"good={bad_file}"]) as d:
            self.assertEqual(self.served(d), ["good"])

    def test_two_files_with_one_name_refused(self):
        a = init_model(self.path("a.safetensors"), name="same")
        b = init_model(self.path("b.safetensors"))
        os.makedirs(self.path("sub"))
        b2 = init_model(self.path("sub/b.safetensors"))
        for args in ((a, "same=" + b), (b, b2)):
            err = self.start_fails(*[x for f in args for x in ("--model", f)])
            self.assertIn("both name model", err)

    def test_missing_file_and_malformed_flags(self):
        err = self.start_fails("--model", self.path("missing.safetensors"))
        self.assertIn("missing.safetensors", err)
        for v in ("=x", "x="):
            rc, _, err = tscaled("--model", v)
            self.assertEqual(rc, 2)
            self.assertIn("NAME=FILE", err)

    def test_help_documents_the_form(self):
        rc, out, _ = tscaled("--help")
        self.assertEqual(rc, 0)
        self.assertIn("--model [NAME=]FILE", out)
        self.assertIn("tscale.name", out)

    def test_put_uses_the_path_name_not_tscale_name(self):
        f = init_model(self.path("up.safetensors"), name="from_metadata")
        with open(f, "rb") as fh:
            blob = fh.read()
        with tsd.Daemon() as d:
            st, _, data = d.request("PUT", "/admin/models/by_path", blob)
            self.assertEqual(st, 201, data)
            self.assertEqual(json.loads(data)["model_name"], "by_path")
            self.assertIn("by_path", self.served(d))
            self.assertNotIn("from_metadata", self.served(d))


class ShortHelpAndVersion(unittest.TestCase):
    def test_short_forms_are_the_long_ones(self):
        for short, long in (("-h", "--help"), ("-V", "--version")):
            want = tscaled(long)
            self.assertEqual(want[0], 0)
            for args in ((short,), ("serve", short), ("--db", "x.db", short)):
                rc, out, err = tscaled(*args)
                self.assertEqual((rc, out), want[:2], (args, err))
        rc, out, _ = tscaled("-h")
        self.assertIn("-h, --help", out)
        self.assertIn("-V, --version", out)

    def test_other_short_flags_still_refused(self):
        for args in (("-x",), ("-hV",), ("-v",), ("-",)):
            rc, out, err = tscaled(*args)
            self.assertEqual(rc, 2, args)
            self.assertIn("--help", err)
            self.assertEqual(out, "")


def help_flags():
    """{flag: default or None} of every flag that takes a value, from --help (the config
    table itself prints it)."""
    rc, out, _ = tscaled("--help")
    assert rc == 0
    entries, text = [], out.split("\nflags:\n", 1)[1]
    for line in text.splitlines():
        if re.match(r"^  -", line):
            entries.append(line.strip())
        elif line.strip():
            entries[-1] += " " + line.strip()   # a wrapped help text
    flags = {}
    for e in entries:
        m = re.match(r"^(?:-\w, )?--([a-z-]+)(?: (\S+))?\s", e)
        assert m, e
        if m.group(2):   # action flags (--help, --version) have no value and no variable
            d = re.search(r"\[default ([^\]]*)\]", e)
            flags[m.group(1)] = d.group(1) if d else None
    return flags


class EnvExample(unittest.TestCase):
    """deploy/tscale.env.example and the configuration table cannot drift apart."""

    PATH = os.path.join(tsd.ROOT, "deploy", "tscale.env.example")
    # Shown with a deployment's value rather than the default (see the file's comments).
    NOT_DEFAULTS = {"TSCALE_DB"}

    def daemon_section(self):
        with open(self.PATH) as f:
            text = f.read()
        section = text.split("# --- the daemon", 1)[1].split("# --- compose only", 1)[0]
        return dict(re.findall(r"^#?(TSCALE_[A-Z0-9_]+)=(.*)$", section, re.M))

    def test_every_flag_is_listed_with_its_default(self):
        listed = self.daemon_section()
        flags = help_flags()
        self.assertIn("eager-batching", flags)
        for flag, default in flags.items():
            var = "TSCALE_" + flag.upper().replace("-", "_")
            self.assertIn(var, listed, f"{var} (--{flag}) is missing from {self.PATH}")
            if default is not None and var not in self.NOT_DEFAULTS:
                self.assertEqual(listed[var], default, f"{var}: the example is not the default")

    def test_compose_passes_every_flag_through(self):
        # The image fixes --listen and --db (its ENV); everything else reaches the daemon
        # only when docker-compose.yml names it.
        with open(os.path.join(tsd.ROOT, "deploy", "docker-compose.yml")) as f:
            passed = set(re.findall(r"^\s+(TSCALE_[A-Z0-9_]+):", f.read(), re.M))
        want = {"TSCALE_" + fl.upper().replace("-", "_") for fl in help_flags()}
        self.assertEqual(want - {"TSCALE_LISTEN", "TSCALE_DB"} - passed, set())

    def test_no_variable_without_a_flag(self):
        flags = help_flags()
        for var in self.daemon_section():
            flag = var[len("TSCALE_"):].lower().replace("_", "-")
            self.assertIn(flag, flags, f"{var} in {self.PATH} is no daemon flag")


class ActivationFirst(unittest.TestCase):
    """nn.Sequential(nn.ReLU(), TernaryScaleTensor(...), nn.SiLU(), TernaryScaleTensor(...))
    against the PyTorch reference's outputs, losses and corr_accum."""

    FILE = os.path.join(tsd.ROOT, "tests", "data", "relu_first.safetensors")
    NAME = "relu_first"   # the file's tscale.name: served by --model FILE under it

    @classmethod
    def setUpClass(cls):
        with open(os.path.join(tsd.ROOT, "tests", "data", "relu_first.json")) as f:
            cls.case = json.load(f)
        with open(cls.FILE, "rb") as f:
            cls.blob = f.read()

    def assert_forward(self, d, name, cases):
        for fw in cases:
            got = modelstate.infer(d, name, fw["input"])
            want = oipc.flat(fw["output"])
            self.assertEqual(len(got), len(want))
            for k, (a, b) in enumerate(zip(got, want)):
                self.assertTrue(oipc.close(a, b), f"{name} output {k}: {a} vs reference {b}")

    def assert_state(self, blob, after):
        want = tuple((i, self.case["layers"][i]["type"], a["step"], tuple(a["corr_accum"]))
                     for i, a in enumerate(after) if a is not None)
        self.assertEqual(modelstate.state(blob), want)

    def test_metadata_layers_and_round_trip(self):
        with tsd.Daemon(args=["--model", self.FILE]) as d:
            meta = d.json("GET", f"/v2/models/{self.NAME}")
            self.assertEqual(meta["inputs"][0]["shape"], [-1, 9])
            self.assertEqual(meta["outputs"][0]["shape"], [-1, 4])
            m = d.json("GET", "/admin/models")["models"][0]
            self.assertEqual(m["layers"], self.case["layers"])
            # export writes the same bytes PyTorch's side (tools/torch_export.py) wrote
            self.assertEqual(modelstate.export(d, self.NAME), self.blob)

    def test_forward_and_feedback_match_the_reference(self):
        with tsd.Daemon(args=["--model", self.FILE]) as d:
            self.assert_forward(d, self.NAME, self.case["forward"])
            for k, st in enumerate(self.case["feedback"]):
                signal = st[st["kind"]]
                _, _, out = modelstate.feedback(d, self.NAME, st["input"], st["kind"], signal)
                self.assertEqual(out["step"], st["after"][1]["step"], k)
                if st["loss"] is None:
                    self.assertNotIn("loss", out)
                else:
                    self.assertTrue(oipc.close(out["loss"], st["loss"]), (k, out["loss"], st["loss"]))
                self.assert_state(modelstate.export(d, self.NAME), st["after"])
            self.assert_forward(d, self.NAME, self.case["final_forward"])

    def test_put_and_restart_from_the_database(self):
        db_dir = tempfile.mkdtemp(prefix="tscale-followups-db-")
        try:
            st = self.case["feedback"][0]
            with tsd.Daemon(db_dir=db_dir) as d:
                modelstate.put(d, "put_name", self.blob)
                modelstate.feedback(d, "put_name", st["input"], st["kind"], st[st["kind"]])
                self.assertEqual(d.stop(), 0)
            with tsd.Daemon(db_dir=db_dir) as d:   # recovered from its snapshot
                self.assert_state(modelstate.export(d, "put_name"), st["after"])
                models = {m["name"]: m for m in d.json("GET", "/admin/models")["models"]}
                self.assertEqual(models["put_name"]["layers"], self.case["layers"])
        finally:
            shutil.rmtree(db_dir, ignore_errors=True)

    def test_activations_alone_refused(self):
        tensors_free = (b'{"__metadata__":{"tscale.format":"1","tscale.layers":'
                        b'"[{\\"type\\":\\"relu\\"}]"}}')
        blob = len(tensors_free).to_bytes(8, "little") + tensors_free
        with tsd.Daemon() as d:
            st, _, data = d.request("PUT", "/admin/models/acts", blob)
            self.assertEqual(st, 400, data)
            self.assertIn("ternary_linear or ternary_rmsnorm", json.loads(data)["error"])
        rc, _, err = tscaled("init", "--layers", "relu,gelu", "--out", os.path.join(tempfile.gettempdir(), "tscale-never-written"))
        self.assertEqual(rc, 2)
        self.assertIn("activations alone", err)


if __name__ == "__main__":
    unittest.main()
