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


    def test_feedback_ids_do_not_fragment_the_heap(self):
        """Exactly-once records used to be malloc'd between a step's freeing of its work buffers
        and the next step's allocation of them, each pinning a hole the size of those buffers
        for the whole id window: 13.5 KB of heap per feedback step with an id (2.16 GB for 27 MB
        of records under wrk). With glibc this needs the sizes of a real request, so the body
        is exactly what bench/journal_bench.py sends (ids of its shape, inputs as %.3f)."""
        x = ",".join("%.3f" % (((k * 37) % 101) / 50.0 - 1.0) for k in range(16))
        steps = 3000
        with tsd.Daemon(args=["--journal", "no"]) as d:
            c = d.conn()

            def feedback(i):
                body = ('{"id":"t1-482934823-%d","inputs":[{"name":"input","datatype":"FP32","shape":[1,16],'
                        '"data":[%s]},{"name":"label","datatype":"INT64","shape":[1],"data":[3]}]}' % (i, x))
                c.request("POST", "/v2/models/demo/feedback", body, {"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 200)

            for i in range(200):   # warm: the heap, the tables, the connection
                feedback(i)
            before = rss_anon(d.proc.pid)
            for i in range(200, 200 + steps):
                feedback(i)
            grown = rss_anon(d.proc.pid) - before
            # Measured: +0.6 MB with the arena, +40.7 MB without (the records themselves take
            # about 290 bytes each: tscale_feedback_ids_bytes).
            self.assertLess(grown, 8 << 20, "RssAnon grew %d bytes over %d feedback steps with ids" % (grown, steps))
            self.assertEqual(d.metric("tscale_feedback_ids"), steps + 200)
            held = d.metric("tscale_feedback_ids_bytes")
            self.assertTrue(held is not None and 150 * steps < held < 1000 * (steps + 200), held)
            self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
