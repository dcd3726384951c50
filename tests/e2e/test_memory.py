"""test_memory.py — the daemon's resident memory stays near its model's own size (issue 14):
glibc's dynamic mmap threshold used to keep the freed model file and load buffers in the heap
(1.46 B/weight anon after load for a model of 0.656). bench/rss.py measures the full-size case."""
import json
import os
import subprocess
import tempfile
import time
import unittest

import tsd

BINARY = tsd.BINARY if os.path.isabs(tsd.BINARY) else os.path.join(tsd.ROOT, tsd.BINARY)
LAYERS = "linear:2048x2048,relu,linear:2048x2048"   # 8.4M weights, 5.5 MB of model state
# What the process holds besides the model: libraries' data, thread stacks, MHD, SQLite's
# page cache, the compute scratch (measured 1.0-1.7 MB; the old daemon: +7 MB at this size).
SLACK = 3 << 20


def rss_anon(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/%d/status" % pid)


@unittest.skipIf("asan" in BINARY, "the sanitizers' allocator has its own memory layout")
class ResidentMemory(unittest.TestCase):
    def test_anon_memory_near_model_size_after_load_and_recovery(self):
        tmp = tempfile.mkdtemp(prefix="tscale-e2e-mem-")
        path = os.path.join(tmp, "m.safetensors")
        subprocess.run([BINARY, "init", "--layers", LAYERS, "--out", path], check=True,
                       stdout=subprocess.DEVNULL)
        info = json.loads(subprocess.run([BINARY, "inspect", "--json", path], check=True,
                                         capture_output=True, text=True).stdout)
        own = info["bytes_in_memory"]
        try:
            for args in (["--model", "m=" + path], []):   # load the file, then recover it
                with tsd.Daemon(args=args + ["--threads", "2"], db_dir=tmp) as d:
                    self.assertEqual(d.json("GET", "/v2/models/m")["name"], "m")
                    time.sleep(0.2)
                    anon = rss_anon(d.proc.pid)
                    self.assertLess(anon, own + SLACK, "RssAnon %d for a model of %d bytes (%s)"
                                    % (anon, own, "recovered" if not args else "loaded"))
                    self.assertEqual(d.stop(), 0)
        finally:
            subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    unittest.main()
