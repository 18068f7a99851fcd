"""A label-only HTTP server for a classifier (``ipguard serve``), with injectable faults.

Protocol (docs/http.md): ``POST /predict`` with ``{"inputs": [...], "encoding": "array"}``
(nested lists ``(N, C, H, W)`` of floats in [0, 1]) or ``{"inputs": ["<base64 PNG>", ...],
"encoding": "png"}`` answers ``{"labels": [...]}`` (ints, or class names when the server has
them). ``GET /info`` answers ``{"input_shape": [C, H, W], "num_classes": K}`` and
``GET /stats`` the server's counters. Errors are ``{"error": "..."}`` with a 4xx/5xx status.

It is built on the standard library's :class:`http.server.ThreadingHTTPServer`: no
dependency, real sockets (so the client is tested against a real network stack, timeouts and
dropped connections included), and a thread per connection is enough for tests, demos and a
local suspect. It is not meant for production traffic: no TLS, no authentication, no
keep-alive tuning, and predictions are serialised behind one lock.

:class:`FaultSpec` makes the server misbehave on purpose, per ``/predict`` request and with
the given probabilities: a random delay, a dropped connection (closed without an answer),
``429 Too Many Requests`` (with ``Retry-After: 0``) or ``500``. It exists to test clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch

from ipguard.errors import InputError, first_line
from ipguard.models.owner import LabelOracle, as_labels

__all__ = ["FaultSpec", "ServerStats", "LabelServer", "make_server", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 64 * 1024**2
log = logging.getLogger("ipguard.suspects.serve")


@dataclass(frozen=True)
class FaultSpec:
    """Faults injected per ``/predict`` request: ``delay`` is the largest random delay in
    seconds (uniform in [0, delay]); ``drop``, ``http429`` and ``http500`` are probabilities
    (their sum at most 1) of closing the connection unanswered, answering 429, or 500."""

    delay: float = 0.0
    drop: float = 0.0
    http429: float = 0.0
    http500: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.delay) and 0.0 <= self.delay <= 60.0):
            raise InputError(f"fault delay must be in [0, 60] seconds, got {self.delay}")
        for name in ("drop", "http429", "http500"):
            p = getattr(self, name)
            if not (np.isfinite(p) and 0.0 <= p <= 1.0):
                raise InputError(f"fault probability {name} must be in [0, 1], got {p}")
        if self.drop + self.http429 + self.http500 > 1.0 + 1e-9:
            raise InputError("fault probabilities drop + 429 + 500 must sum to at most 1")


class ServerStats:
    """Thread-safe counters; ``point_counts`` maps SHA-256 of each answered point's float32
    bytes (as decoded by the server) to how often it was answered."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.answered_requests = 0
        self.answered_points = 0
        self.bad_requests = 0
        self.faults: Counter[str] = Counter()
        self.point_counts: Counter[str] = Counter()

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            distinct = len(self.point_counts)
            return {
                "requests": self.requests,
                "answered_requests": self.answered_requests,
                "answered_points": self.answered_points,
                "distinct_points": distinct,
                "repeated_points": self.answered_points - distinct,
                "bad_requests": self.bad_requests,
                "faults": dict(self.faults),
            }


class LabelServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the oracle, the fault spec and the counters."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        oracle: LabelOracle,
        input_shape: tuple[int, int, int],
        faults: FaultSpec,
        class_names: Sequence[str] | None,
    ) -> None:
        self.oracle = oracle
        self.input_shape = input_shape
        self.faults = faults
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.stats = ServerStats()
        self._rng = random.Random(faults.seed)
        self._rng_lock = threading.Lock()
        self._predict_lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def draw_fault(self) -> tuple[float, str | None]:
        f = self.faults
        with self._rng_lock:
            delay = self._rng.uniform(0.0, f.delay) if f.delay > 0 else 0.0
            u = self._rng.random()
        if u < f.drop:
            return delay, "drop"
        if u < f.drop + f.http429:
            return delay, "429"
        if u < f.drop + f.http429 + f.http500:
            return delay, "500"
        return delay, None

    def predict(self, x: torch.Tensor) -> list[int | str]:
        with self._predict_lock, torch.no_grad():
            labels = as_labels(self.oracle.predict(x), "the served model").tolist()
        if len(labels) != x.shape[0] or any(i < 0 for i in labels):
            raise ValueError("the served model returned a wrong number of labels or a negative one")
        if self.class_names is not None:
            if any(i >= len(self.class_names) for i in labels):
                raise ValueError("the served model returned a label beyond its class names")
            return [self.class_names[i] for i in labels]
        return [int(i) for i in labels]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out without a delayed-ACK stall
    wbufsize = 256 * 1024  # ... and in one write: flushed after each request by the base class
    server_version = "ipguard-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/info":
            self._send_json(
                200,
                {
                    "input_shape": list(self.server.input_shape),
                    "num_classes": getattr(self.server.oracle, "num_classes", None),
                },
            )
        elif self.path == "/stats":
            self._send_json(200, self.server.stats.to_dict())
        else:
            self._send_json(404, {"error": f"no such endpoint: GET {self.path[:100]}"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        stats = self.server.stats
        with stats.lock:
            stats.requests += 1
        if self.path != "/predict":
            self.close_connection = True
            self._send_json(404, {"error": f"no such endpoint: POST {self.path[:100]}"})
            return
        try:
            body = self._read_body()
        except _BadRequest as bad:
            self._refuse(bad)
            return
        delay, fault = self.server.draw_fault()
        if delay:
            time.sleep(delay)
        if fault is not None:
            with stats.lock:
                stats.faults[fault] += 1
            if fault == "drop":
                self.close_connection = True  # finish() closes the socket, nothing written
                return
            status = 429 if fault == "429" else 500
            extra = {"Retry-After": "0"} if status == 429 else None
            self._send_json(status, {"error": f"injected fault {status}"}, extra)
            return
        try:
            x = self._decode(body)
        except _BadRequest as bad:
            self._refuse(bad)
            return
        except (RecursionError, ValueError, OverflowError, TypeError, MemoryError) as err:
            # deeply nested JSON, 4300+ digit integers, numbers beyond float range...
            self._refuse(_BadRequest(400, f"the body cannot be decoded: {type(err).__name__}"))
            return
        try:
            labels = self.server.predict(x)
        except Exception as err:  # noqa: BLE001 - report the model's failure as a 500
            log.warning("prediction failed: %s", err)
            self._send_json(500, {"error": f"prediction failed: {type(err).__name__}"})
            return
        keys = [hashlib.sha256(p.numpy().tobytes()).hexdigest() for p in x]
        with stats.lock:
            stats.answered_requests += 1
            stats.answered_points += len(labels)
            stats.point_counts.update(keys)
        self._send_json(200, {"labels": labels})

    def _refuse(self, bad: _BadRequest) -> None:
        with self.server.stats.lock:
            self.server.stats.bad_requests += 1
        self.close_connection = True
        self._send_json(bad.status, {"error": str(bad)})

    def _read_body(self) -> bytes:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise _BadRequest(411, "a Content-Length header is required")
        try:
            length = int(length_text)
        except ValueError:
            raise _BadRequest(400, "Content-Length is not an integer") from None
        if length < 0 or length > MAX_BODY_BYTES:
            raise _BadRequest(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _decode(self, body: bytes) -> torch.Tensor:
        try:
            req = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _BadRequest(400, f"the body is not valid JSON: {first_line(err)}") from None
        if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
            raise _BadRequest(400, 'the body must be {"inputs": [...], "encoding": ...}')
        encoding = req.get("encoding", "array")
        inputs = req["inputs"]
        if not inputs:
            raise _BadRequest(400, "inputs is empty")
        shape = self.server.input_shape
        if encoding == "base64":
            arr = np.stack([_decode_f32(item, shape) for item in inputs])
        elif encoding == "array":
            try:
                arr = np.asarray(inputs, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise _BadRequest(400, "inputs must be a rectangular array of numbers") from None
        elif encoding == "png":
            arr = np.stack([_decode_png(item, shape) for item in inputs])
        else:
            raise _BadRequest(
                400, f"unknown encoding {str(encoding)[:40]!r}: use base64, array or png"
            )
        if arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
            raise _BadRequest(
                400,
                f"inputs have shape {tuple(arr.shape)}, expected (N, {', '.join(map(str, shape))})",
            )
        if not np.isfinite(arr).all():
            raise _BadRequest(400, "inputs contain NaN or inf")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise _BadRequest(400, "inputs must lie in [0, 1]")
        return torch.from_numpy(arr.astype(np.float32))


def _decode_f32(item: Any, shape: tuple[int, int, int]) -> np.ndarray:
    """One point sent as base64 of its little-endian float32 values."""
    if not isinstance(item, str):
        raise _BadRequest(400, "base64 inputs must be strings")
    try:
        raw = base64.b64decode(item, validate=True)
    except (ValueError, binascii.Error):
        raise _BadRequest(400, "a base64 input is not valid base64") from None
    expected = 4 * int(np.prod(shape))
    if len(raw) != expected:
        raise _BadRequest(
            400, f"a base64 input holds {len(raw)} bytes, expected {expected} (float32 {shape})"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)


def _decode_png(item: Any, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    if not isinstance(item, str):
        raise _BadRequest(400, "png inputs must be base64 strings")
    try:
        raw = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise _BadRequest(400, "a png input is not valid base64") from None
    c, h, w = shape
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as img:
            if img.size != (w, h) or img.mode != modes.get(c):
                raise _BadRequest(
                    400, f"a png input is {img.mode} {img.size[0]}x{img.size[1]}, expected "
                    f"{modes.get(c, '?')} {w}x{h}",
                )  # fmt: skip
            arr = np.asarray(img, dtype=np.float64) / 255.0
    except _BadRequest:
        raise
    except Exception:  # noqa: BLE001 - Pillow raises many types on bad data
        raise _BadRequest(400, "a png input cannot be decoded as an 8-bit PNG") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def make_server(
    oracle: LabelOracle,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    input_shape: Sequence[int],
    faults: FaultSpec = FaultSpec(),
    class_names: Sequence[str] | None = None,
) -> LabelServer:
    """A bound, not yet serving, server; call ``serve_forever()`` (e.g. in a thread) and
    ``shutdown()``/``server_close()``. ``port=0`` picks a free port (see ``server.url``)."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input shape must be C,H,W with positive sizes, got {shape}")
    if not 0 <= port <= 65535:
        raise InputError(f"port must be in 0..65535, got {port}")
    try:
        return LabelServer(
            (host, port), oracle, (shape[0], shape[1], shape[2]), faults, class_names
        )
    except OSError as err:
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
