"""test_followups.py — follow-ups of the SPEC audit of the daemon:
  - 404 before 400: an unknown model or version is a 404 whatever the body (SPEC §4);
"""
import json
import unittest

import tsd


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


if __name__ == "__main__":
    unittest.main()
