"""tscale.client — a Python client for the tscale daemon (standard library only).

    from tscale import Client
    c = Client("http://127.0.0.1:8080", token="…")        # token: feedback (and admin) bearer
    r = c.infer("digits", [[0.0] * 64])                    # r.outputs: rows (or a numpy array)
    c.feedback_by_id("digits", r.id, label=[3])            # the label arrives later, by id
    c.feedback("digits", [[0.0] * 64], label=[3])          # or with the input again

What it does for you:
- Inference in JSON or in the binary tensor data extension (`binary=True`), numpy arrays in
  and out when numpy is installed (a numpy input gives numpy outputs), plain lists otherwise.
- Feedback never applies twice. Every feedback request carries an OIP `id` (yours, or a
  fresh uuid4 when you give none) and every retry resends the same id: the daemon applies an id
  at most once per model and answers a repeat with the first answer (SPEC §6), so a timeout or a
  dropped connection followed by a retry is safe.
- Retries with back-off on 503 (honouring `Retry-After`, capped by `max_retry_wait`) and on
  connection failures, for requests that are safe to repeat: inference, feedback (by the rule
  above), reads, restore, PUT and DELETE. Taking a snapshot is retried only when the daemon said
  503 or the connection could not be made (a retry after a timeout could take two).
- Timeouts per request (`timeout` seconds for connecting and for each read).
- Errors raise TscaleError with the HTTP status and the daemon's message (`{"error": …}`);
  404 / 409 / 410 of feedback by id raise its subclasses UnknownId, IdConflict, IdExpired.
"""
from __future__ import annotations

import http.client
import json
import struct
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

try:  # optional: numpy in, numpy out
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None  # type: ignore[assignment]

Rows = Any  # a list of rows of floats, or a numpy array
Json = Dict[str, Any]
# One OIP tensor to send: (name, datatype, shape, flat values).
Tensor = Tuple[str, str, List[int], Sequence[float]]
__all__ = ["Client", "InferResult", "FeedbackResult", "TscaleError", "UnknownId", "IdExpired",
           "IdConflict"]

# OIP datatype → (struct code, bytes per element)
_DTYPES = {"FP32": ("f", 4), "FP64": ("d", 8), "INT32": ("i", 4), "INT64": ("q", 8)}


class TscaleError(Exception):
    """A request the daemon refused (status ≥ 400), or one that could not be made at all
    (status 0: connection failed or timed out after every retry). `message` is the daemon's
    own reason (its `{"error": …}` body) or the network error's."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "",
                 retry_after: Optional[float] = None):
        super().__init__(f"{method} {path}: {status} {message}" if status else f"{method} {path}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class UnknownId(TscaleError):
    """Feedback by id: 404 — the daemon holds no inference with that id (or, as for any
    request, no such model: the message says which)."""


class IdExpired(TscaleError):
    """Feedback by id: the inference left the daemon's window of recent inputs (410)."""


class IdConflict(TscaleError):
    """Feedback: this id was already used with a different body (409)."""


@dataclass
class InferResult:
    """One inference answer. `outputs` is the `output` tensor as rows ([B][out] lists) or, when
    the input was a numpy array (or `numpy=True`), a float32 numpy array [B, out]. `id` is the
    answer's id (yours, or the daemon's): give it to feedback_by_id when the label arrives."""
    id: Optional[str]
    model_name: str
    model_version: str
    outputs: Rows
    raw: Dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class FeedbackResult:
    """One feedback answer: the model's `step` after it and the `loss` the daemon computed
    (None for grad_output). A repeat of an id answers the first answer, same step and loss."""
    id: str
    model_name: str
    model_version: str
    step: int
    loss: Optional[float]
    raw: Dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class _Response:
    status: int
    headers: Dict[str, str]
    body: bytes


class Client:
    """A connection to one daemon. Thread-safe: every request opens its own HTTP connection.

    url            the daemon's base URL (http://host:port; https:// works through a proxy)
    token          bearer token sent with feedback (and with admin requests when admin_token
                   is not given): the daemon's --feedback-token-file
    admin_token    bearer token for /admin/*: the daemon's --admin-token-file
    timeout        seconds for connecting and for each read of a request
    retries        how many times a failed request is retried (0: never)
    backoff        first wait between retries in seconds, doubled each time, used when the daemon
                   gives no Retry-After
    max_retry_wait the longest single wait (a longer Retry-After is cut to this)
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", token: Optional[str] = None,
                 admin_token: Optional[str] = None, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.2, max_retry_wait: float = 30.0):
        u = urllib.parse.urlsplit(url if "//" in url else "http://" + url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"url {url!r}: expected http://host:port")
        self.url = url
        self._https = u.scheme == "https"
        self._host, self._port = u.hostname, u.port or (443 if self._https else 80)
        self._prefix = u.path.rstrip("/")
        self.token, self.admin_token = token, admin_token
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.max_retry_wait = max_retry_wait

    # ─── HTTP ───

    def _once(self, method: str, path: str, body: Optional[bytes], headers: Mapping[str, str]) -> _Response:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        try:
            conn.request(method, self._prefix + path, body=body, headers=dict(headers))
            r = conn.getresponse()
            return _Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def _request(self, method: str, path: str, body: Optional[bytes] = None,
                 headers: Optional[Mapping[str, str]] = None, token: Optional[str] = None,
                 retry_timeouts: bool = True) -> _Response:
        """One request with retries: on 503 (after Retry-After), on a connection that could not
        be made, and — when retry_timeouts — on a timeout or a connection lost mid-request
        (only for requests that are safe to repeat). Raises TscaleError for status ≥ 400."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        wait = self.backoff
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self._once(method, path, body, h)
            except ConnectionRefusedError as e:
                if last:
                    raise TscaleError(0, f"cannot connect to {self.url}: {e}", method, path) from None
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, bad answers
                if last or not retry_timeouts:
                    raise TscaleError(0, f"{type(e).__name__}: {e} (after {attempt + 1} attempts)",
                                      method, path) from None
            else:
                if r.status < 400:
                    return r
                ra = _retry_after(r.headers.get("retry-after"))
                if r.status != 503 or last:
                    raise _error(r, method, path, ra)
                if ra is not None:
                    wait = ra
            time.sleep(min(wait, self.max_retry_wait))
            wait *= 2
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, payload: Any = None, token: Optional[str] = None,
              retry_timeouts: bool = True) -> Json:
        """The daemon's JSON answer (always an object; {} when the body is empty)."""
        body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        return _object(self._request(method, path, body, headers, token, retry_timeouts))

    def _admin_token(self) -> Optional[str]:
        return self.admin_token or self.token

    # ─── Health, server, metrics ───

    def live(self) -> bool:
        """GET /v2/health/live: True when the daemon answers 200."""
        return self._probe("/v2/health/live")

    def ready(self) -> bool:
        """GET /v2/health/ready: True when every model is ready."""
        return self._probe("/v2/health/ready")

    def _probe(self, path: str) -> bool:
        try:
            return self._request("GET", path).status == 200
        except TscaleError:
            return False

    def server_metadata(self) -> Dict[str, Any]:
        """GET /v2: {"name", "version", "extensions"}."""
        return self._json("GET", "/v2")

    def supports(self, extension: str) -> bool:
        """Whether GET /v2 lists `extension` (e.g. "feedback_by_id", "binary_tensor_data")."""
        return extension in self.server_metadata().get("extensions", [])

    def model_metadata(self, model: str) -> Dict[str, Any]:
        """GET /v2/models/{m}: inputs and outputs with their shapes."""
        return self._json("GET", f"/v2/models/{_q(model)}")

    def model_ready(self, model: str) -> bool:
        """GET /v2/models/{m}/ready."""
        return self._probe(f"/v2/models/{_q(model)}/ready")

    def metrics_text(self) -> str:
        """GET /metrics: the Prometheus text exposition."""
        return self._request("GET", "/metrics").body.decode()

    def metrics(self) -> Dict[str, float]:
        """GET /metrics parsed: {'name{labels}': value} for every sample (comments skipped)."""
        out: Dict[str, float] = {}
        for line in self.metrics_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    # ─── Inference ───

    def infer(self, model: str, inputs: Rows, id: Optional[str] = None, binary: bool = False,
              version: Optional[str] = None, numpy: Optional[bool] = None) -> InferResult:
        """POST /v2/models/{m}[/versions/{v}]/infer with the `input` tensor [B, in_dim].

        inputs  rows of floats or a numpy array ([in_dim] is taken as one row)
        id      the request's OIP id (echoed; the daemon makes one when absent)
        binary  send and receive the tensors as binary data (smaller and faster than JSON)
        numpy   outputs as a numpy array (default: when `inputs` is one)"""
        want_np = _is_np(inputs) if numpy is None else numpy
        shape, flat = _matrix(inputs, "inputs")
        header: Dict[str, Any] = {}
        if id is not None:
            header["id"] = id
        path = f"/v2/models/{_q(model)}" + (f"/versions/{_q(version)}" if version else "") + "/infer"
        if binary:  # and the output as binary data too
            header["outputs"] = [{"name": "output", "parameters": {"binary_data": True}}]
        body, headers = _encode(header, [("input", "FP32", shape, flat)], binary)
        r = self._request("POST", path, body, headers)
        j, data = _decode(r)
        out = j["outputs"][0]
        values = data.get(out["name"], out.get("data"))
        return InferResult(j.get("id"), j.get("model_name", model), str(j.get("model_version", "")),
                           _shape_rows(values, out["shape"], want_np), j)

    # ─── Feedback ───

    def feedback(self, model: str, inputs: Rows, label: Optional[Sequence[int]] = None,
                 target: Optional[Rows] = None, grad_output: Optional[Rows] = None,
                 id: Optional[str] = None, binary: bool = False) -> FeedbackResult:
        """POST /v2/models/{m}/feedback with the input: one adaptation step on these rows.

        Exactly one of label ([B] ints: cross_entropy), target ([B, out]: mse) or grad_output
        ([B, out]: dL/dy). `id` defaults to a fresh uuid4; retries resend it, so the step is
        applied at most once."""
        shape, flat = _matrix(inputs, "inputs")
        signal = _signal(label, target, grad_output, shape[0])
        return self._feedback(model, id, [("input", "FP32", shape, flat), signal], None, binary)

    def feedback_by_id(self, model: str, inference_id: str, label: Optional[Sequence[int]] = None,
                       target: Optional[Rows] = None, grad_output: Optional[Rows] = None,
                       rows: Optional[Sequence[int]] = None, binary: bool = False) -> FeedbackResult:
        """POST /v2/models/{m}/feedback for an earlier inference, by its id (the daemon keeps
        its input for a while; needs the "feedback_by_id" extension, see supports()).

        The signal has one row per row of that inference, or per entry of `rows` (a subset of
        its rows, by index) when given. A repeat of the same id answers the first answer.
        Raises UnknownId (404: never seen), IdExpired (410: left the window), IdConflict (409:
        this id got feedback with another body)."""
        n = len(rows) if rows is not None else None
        signal = _signal(label, target, grad_output, n)
        params = {"rows": [int(i) for i in rows]} if rows is not None else None
        return self._feedback(model, inference_id, [signal], params, binary, by_id=True)

    def _feedback(self, model: str, id: Optional[str], tensors: List[Tensor], params: Optional[Json],
                  binary: bool, by_id: bool = False) -> FeedbackResult:
        header: Dict[str, Any] = {"id": id or str(uuid.uuid4())}
        if params:
            header["parameters"] = params
        body, headers = _encode(header, tensors, binary)
        try:
            r = self._request("POST", f"/v2/models/{_q(model)}/feedback", body, headers, self.token)
        except TscaleError as e:
            raise _id_error(e) if by_id or e.status == 409 else e
        j = json.loads(r.body)
        return FeedbackResult(j.get("id", header["id"]), j.get("model_name", model),
                              str(j.get("model_version", "")), int(j["step"]), j.get("loss"), j)

    # ─── Model administration (/admin: the admin token) ───

    def list_models(self) -> List[Dict[str, Any]]:
        """GET /admin/models: each model's name, layers, step and newest snapshot."""
        return cast(List[Json], self._json("GET", "/admin/models", token=self._admin_token())["models"])

    def snapshot(self, model: str) -> Dict[str, Any]:
        """POST /admin/models/{m}/snapshots: snapshot now → {"snapshot_id", "step", …}."""
        return self._json("POST", f"/admin/models/{_q(model)}/snapshots", token=self._admin_token(),
                          retry_timeouts=False)

    def snapshots(self, model: str) -> List[Dict[str, Any]]:
        """GET /admin/models/{m}/snapshots, newest first."""
        return cast(List[Json], self._json("GET", f"/admin/models/{_q(model)}/snapshots",
                                           token=self._admin_token())["snapshots"])

    def restore(self, model: str, snapshot_id: int) -> Dict[str, Any]:
        """POST /admin/models/{m}/restore: the model's state becomes that snapshot's."""
        return self._json("POST", f"/admin/models/{_q(model)}/restore", {"snapshot_id": int(snapshot_id)},
                          token=self._admin_token())

    def export(self, model: str, path: Optional[str] = None) -> bytes:
        """GET /admin/models/{m}/export: the current state as a model file (bytes; also
        written to `path` when given)."""
        data = self._request("GET", f"/admin/models/{_q(model)}/export", token=self._admin_token()).body
        if path is not None:
            with open(path, "wb") as f:
                f.write(data)
        return data

    def put_model(self, model: str, model_file: Union[bytes, str]) -> Dict[str, Any]:
        """PUT /admin/models/{m}: load or replace model m from a model file (bytes, or a path)."""
        if isinstance(model_file, str):
            with open(model_file, "rb") as f:
                model_file = f.read()
        return _object(self._request("PUT", f"/admin/models/{_q(model)}", bytes(model_file),
                                     {"Content-Type": "application/octet-stream"}, self._admin_token()))

    import_model = put_model

    def delete_model(self, model: str) -> Dict[str, Any]:
        """DELETE /admin/models/{m}: unload it (its snapshots stay)."""
        return _object(self._request("DELETE", f"/admin/models/{_q(model)}", token=self._admin_token()))


# ─── Encoding ───

def _q(name: str) -> str:
    return urllib.parse.quote(str(name), safe="")


def _is_np(x: Any) -> bool:
    return _np is not None and isinstance(x, _np.ndarray)


def _matrix(x: Rows, what: str) -> Tuple[List[int], List[float]]:
    """([B, n], flat float list) of rows or a numpy array; a flat list is one row."""
    if _is_np(x):
        a = _np.asarray(x, dtype=_np.float32)
        a = a.reshape(1, -1) if a.ndim == 1 else a
        if a.ndim != 2:
            raise ValueError(f"{what}: expected a 2-D array [rows, features], got shape {a.shape}")
        return list(a.shape), a.ravel().tolist()
    rows = list(x)
    if rows and not isinstance(rows[0], (list, tuple)) and not _is_np(rows[0]):
        rows = [rows]
    if not rows:
        raise ValueError(f"{what}: no rows")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError(f"{what}: rows of different lengths")
    return [len(rows), width], [float(v) for r in rows for v in r]


def _signal(label: Optional[Sequence[int]], target: Optional[Rows], grad_output: Optional[Rows],
            n_rows: Optional[int]) -> Tensor:
    """The feedback signal tensor (name, datatype, shape, flat values) of the one given."""
    given = [(k, v) for k, v in (("label", label), ("target", target), ("grad_output", grad_output))
             if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of label, target or grad_output")
    kind, value = given[0]
    flat: Sequence[float]
    if kind == "label":
        labels = [int(v) for v in (value.ravel().tolist() if _is_np(value) else value)]  # type: ignore[union-attr]
        shape, flat, dt = [len(labels)], labels, "INT64"
    else:
        shape, flat = _matrix(value, kind)
        dt = "FP32"
    if n_rows is not None and shape[0] != n_rows:
        raise ValueError(f"{kind}: {shape[0]} rows, expected {n_rows}")
    return kind, dt, shape, flat


def _encode(header: Json, tensors: List[Tensor], binary: bool) -> Tuple[bytes, Dict[str, str]]:
    """The OIP body of `header` plus tensors [(name, datatype, shape, flat values)]: JSON, or the
    binary tensor data extension (JSON header, then each tensor's little-endian bytes)."""
    header = dict(header, inputs=[])
    blobs = []
    for name, dt, shape, flat in tensors:
        t: Dict[str, Any] = {"name": name, "datatype": dt, "shape": shape}
        if binary:
            code, _ = _DTYPES[dt]
            blob = struct.pack(f"<{len(flat)}{code}", *flat)
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            t["data"] = flat
        header["inputs"].append(t)
    js = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not binary:
        return js, {"Content-Type": "application/json"}
    return js + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(js))}


def _decode(r: _Response) -> Tuple[Dict[str, Any], Dict[str, List[float]]]:
    """(the JSON header, {output name: values} of the binary outputs) of an answer."""
    n = r.headers.get("inference-header-content-length")
    if n is None:
        return json.loads(r.body), {}
    j = json.loads(r.body[:int(n)])
    data, off = {}, int(n)
    for o in j.get("outputs", []):
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        code, width = _DTYPES[o["datatype"]]
        data[o["name"]] = list(struct.unpack(f"<{size // width}{code}", r.body[off:off + size]))
        off += size
    return j, data


def _shape_rows(values: List[float], shape: List[int], want_np: bool) -> Rows:
    if want_np:
        if _np is None:
            raise RuntimeError("numpy=True needs numpy installed")
        return _np.asarray(values, dtype=_np.float32).reshape(shape)
    b, n = shape
    return [values[i * n:(i + 1) * n] for i in range(b)]


def _object(r: _Response) -> Json:
    return cast(Json, json.loads(r.body)) if r.body else {}


def _retry_after(v: Optional[str]) -> Optional[float]:
    """Retry-After in seconds (its delta-seconds form; an HTTP date counts as absent)."""
    try:
        return max(0.0, float(v)) if v is not None else None
    except ValueError:
        return None


def _error(r: _Response, method: str, path: str, retry_after: Optional[float]) -> TscaleError:
    try:
        message = json.loads(r.body)["error"]
    except (ValueError, KeyError, TypeError):
        message = r.body[:200].decode(errors="replace") or http.client.responses.get(r.status, "")
    return TscaleError(r.status, message, method, path, retry_after)


def _id_error(e: TscaleError) -> TscaleError:
    cls = {404: UnknownId, 409: IdConflict, 410: IdExpired}.get(e.status)
    if cls is None:
        return e
    err = cls(e.status, e.message, retry_after=e.retry_after)
    err.args = e.args
    return err
