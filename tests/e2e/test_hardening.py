"""test_hardening.py — issue 13: careless operators and hostile clients. Request framing
(request smuggling), one daemon per database, slow clients and connection budgets, memory
budgets for bodies and responses. Every test ends by checking that the daemon still serves
when it has one."""
import json
import os
import socket
import subprocess
import tempfile
import time
import unittest

import tsd
from test_security import BINARY, raw

ROW = [0.25] * 16


def infer_body(rows):
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 16],
                                   "data": [v for r in rows for v in r]}]}).encode()


class Framing(unittest.TestCase):
    """Ambiguous framing is refused with a JSON 400/501 and the connection is closed."""

    @classmethod
    def setUpClass(cls):
        cls.d = tsd.Daemon()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def tearDown(self):
        self.assertIsNone(self.d.proc.poll(), "the daemon died:\n" + self.d.log()[-3000:])
        self.assertEqual(self.d.request("GET", "/v2/health/live")[0], 200)

    def refused(self, head, body, want):
        """Send head + body; the answer must be `want` with a JSON error and Connection: close,
        and nothing after it on the connection may be answered (it cannot be framed)."""
        smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        try:
            s.sendall(head + b"\r\n" + body + smuggled)
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        head_out, _, rest = buf.partition(b"\r\n\r\n")
        self.assertTrue(head_out.startswith(b"HTTP/1.1 %d" % want), buf[:300])
        self.assertIn(b"connection: close", head_out.lower())
        self.assertIsInstance(json.loads(rest)["error"], str)
        self.assertNotIn(b"HTTP/1.1", rest, "a second response: the smuggled request was served")

    def test_two_content_lengths(self):
        body = infer_body([ROW])
        n = len(body)
        for a, b in ((n, n + 5), (n, n)):
            self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nContent-Length: %d\r\n" % (a, b), body, 400)

    def test_content_length_with_chunked(self):
        body = infer_body([ROW])
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", chunked, 400)
        self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(chunked), chunked, 400)

    def test_unknown_transfer_coding(self):
        self.refused(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n",
                     b"0\r\n\r\n", 501)

    def test_two_hosts(self):
        self.refused(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nHost: y\r\n", b"", 400)

    def test_plain_chunked_still_works(self):
        body = infer_body([ROW])
        st, _, data = raw(self.d.port, b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                          b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        self.assertEqual(st, 200, data[:300])
        self.assertEqual(json.loads(data)["outputs"][0]["shape"], [1, 4])


if __name__ == "__main__":
    unittest.main()
