"""A label-only suspect behind HTTP (protocol: docs/http.md), robust to a flaky service.

:class:`HTTPSuspect` implements :class:`~ipguard.models.owner.LabelOracle`: ``predict(x)`` sends the
points in batches to ``POST <url>/predict`` and returns their labels. It uses
``urllib.request`` only. Requests run ``concurrency`` at a time; 429, 5xx, dropped
connections and timeouts are retried with exponential backoff and jitter; any other answer
that cannot be a list of labels (another 4xx, malformed JSON, an HTML page, a wrong count,
an unknown class name) raises :class:`~ipguard.errors.SuspectError` and is never counted.

The journal (optional) is an append-only JSONL file with one line per answered point,
``{"key": SHA-256 of the point's float32 bytes, "label": int, "encoding": ...}``, written as
each batch's answer arrives, then flushed and fsynced. A new run reads it first and does not
send points already answered with the same encoding, so an interrupted verification resumes
where it stopped; a torn last line (a crash mid-write) is ignored.

The ``Authorization`` header value (read from the environment variable ``auth_env``) is
never logged nor put in an error message; if a server echoes it back, it is masked.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ipguard import limits
from ipguard.errors import InputError, SuspectError

__all__ = [
    "HTTPOptions",
    "HTTPSuspect",
    "HTTPStats",
    "point_key",
    "read_class_names",
    "MAX_RESPONSE_BYTES",
]

MAX_RESPONSE_BYTES = limits.MAX_HTTP_ANSWER_BYTES
MAX_BACKOFF = 30.0
log = logging.getLogger("ipguard.http")


ENCODINGS = ("base64", "array", "png")


def _exactness(encoding: object) -> str:
    """base64 and array send the exact points, so their journal answers are interchangeable;
    png sends rounded points, whose answers may differ."""
    return "rounded" if encoding == "png" else "exact"


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file, one per line in label order (blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read class names from {path}: {e}") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise InputError(f"class names file {path} is empty", "give one name per line")
    if len(set(names)) != len(names):
        raise InputError(f"class names file {path} repeats a name")
    return names


@dataclass(frozen=True)
class HTTPOptions:
    """How :class:`HTTPSuspect` talks to the service.

    Attributes:
        batch_size: points per request.
        concurrency: requests in flight at once (threads).
        timeout: seconds per request (connect and each read).
        retries: extra attempts of a request after a 429, a 5xx, a connection error or a
            timeout; then the verification fails with SuspectError.
        backoff: seconds before the first retry, doubled on each further retry (capped at 30
            s), times a random jitter in [0.5, 1.5]; a 429's ``Retry-After`` is honoured if
            longer (capped at 30 s).
        rate_limit: at most this many request attempts per second (all threads together).
        budget: a hard limit on the points sent by this object, every attempt counted
            (retries included): a batch is only sent if the points already sent (answered,
            failed or in flight) plus its own stay within the budget, so points answered plus
            points in flight never exceed it. Points taken from the journal cost nothing.
            When the next batch would exceed it, SuspectError is raised (answers so far are
            kept in the journal).
        auth_env: name of an environment variable holding the ``Authorization`` header value
            (e.g. ``Bearer ...``); the value itself is never logged or shown.
        encoding: ``"base64"`` (default: each point's float32 values, little-endian, as
            base64: exact and compact), ``"array"`` (exact float values as JSON numbers,
            readable but slow to encode and parse) or ``"png"`` (one 8-bit PNG per point:
            values are rounded to multiples of 1/255; for 1, 3 or 4 channels).
        class_names: maps class-name answers to indices (their position); without it only
            integer answers are accepted.
        journal: path of the JSONL journal (created if missing), or None.
    """

    batch_size: int = 64
    concurrency: int = 4
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.2
    rate_limit: float | None = None
    budget: int | None = None
    auth_env: str | None = None
    encoding: str = "base64"
    class_names: tuple[str, ...] | None = None
    journal: Path | None = None

    def __post_init__(self) -> None:
        def pos_int(name: str, value: Any, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"HTTP option {name} must be an integer >= {low}, got {value!r}")

        def pos_real(name: str, value: Any, low_ok: bool) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not np.isfinite(value) or value < 0 or (value == 0 and not low_ok):
                bound = ">= 0" if low_ok else "> 0"
                raise InputError(
                    f"HTTP option {name} must be a finite number {bound}, got {value!r}"
                )

        pos_int("batch_size", self.batch_size, 1)
        pos_int("concurrency", self.concurrency, 1)
        pos_int("retries", self.retries, 0)
        pos_real("timeout", self.timeout, False)
        pos_real("backoff", self.backoff, True)
        if self.rate_limit is not None:
            pos_real("rate_limit", self.rate_limit, False)
        if self.budget is not None:
            pos_int("budget", self.budget, 1)
        if self.encoding not in ENCODINGS:
            raise InputError(
                f"HTTP option encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}"
            )
        if self.auth_env is not None and (not isinstance(self.auth_env, str) or not self.auth_env):
            raise InputError("HTTP option auth_env must name an environment variable")
        if self.class_names is not None:
            names = self.class_names
            if not names or not all(isinstance(n, str) and n for n in names):
                raise InputError("HTTP option class_names must be non-empty strings")
            if len(set(names)) != len(names):
                raise InputError("HTTP option class_names has duplicates")
        if self.journal is not None and not isinstance(self.journal, Path):
            object.__setattr__(self, "journal", Path(self.journal))


@dataclass
class HTTPStats:
    """Counters of one :class:`HTTPSuspect` (all runs of ``predict`` together)."""

    requests: int = 0  # request attempts, retries included
    retries: int = 0
    points_sent: int = 0  # points in all attempts, retries included
    points_answered: int = 0
    points_from_journal: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


def point_key(point: Tensor) -> str:
    """SHA-256 of one point's shape and float32 bytes (C order): the journal key."""
    arr = point.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()


class _Retryable(Exception):
    def __init__(self, message: str, wait: float = 0.0) -> None:
        super().__init__(message)
        self.wait = wait


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: the Authorization header must not travel to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HTTPSuspect:
    """A label-only suspect served over HTTP (see the module docstring and docs/http.md)."""

    def __init__(self, url: str, options: HTTPOptions = HTTPOptions()) -> None:
        parsed = urllib.parse.urlsplit(url)
        try:
            port_ok = parsed.port is None or 0 < parsed.port
        except ValueError:  # a port outside 0..65535 or not a number
            port_ok = False
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
            raise InputError(
                f"suspect URL must be http(s)://HOST[:PORT][/PATH], got {_redact(url)!r}"
            )
        self.options = options
        # the base address or the endpoint itself (as services' docs often show it); a
        # query (an API key, say) stays on both, a fragment is never sent
        path = parsed.path.rstrip("/").removesuffix("/predict")
        parts = (parsed.scheme, parsed.netloc)
        self.base_url = urllib.parse.urlunsplit((*parts, path, parsed.query, ""))
        self.endpoint = urllib.parse.urlunsplit((*parts, path + "/predict", parsed.query, ""))
        self.name = _redact(self.base_url)
        self.stats = HTTPStats()
        self._auth: str | None = None
        if options.auth_env is not None:
            value = os.environ.get(options.auth_env, "")
            if not value.strip():
                raise InputError(
                    f"environment variable {options.auth_env} (the Authorization header) is "
                    "unset or empty"
                )
            self._auth = value.strip()
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._journal_lock = threading.Lock()
        self._rate_lock = threading.Lock()
        self._next_slot = 0.0
        self._known: dict[str, int] = {}
        if options.journal is not None:
            self._known = self._read_journal(options.journal)

    def __repr__(self) -> str:
        return f"HTTPSuspect({self.name!r})"

    @property
    def num_classes(self) -> int | None:
        return None

    # -- journal ----------------------------------------------------------------------------
    def _read_journal(self, path: Path) -> dict[str, int]:
        return read_journal(path, self.options.encoding, suspect=self.name)

    def _journal_append(self, keys: list[str], labels: list[int]) -> None:
        path = self.options.journal
        with self._journal_lock:
            for k, lab in zip(keys, labels, strict=True):
                self._known[k] = lab
            if path is None:
                return
            text = "".join(
                json.dumps(
                    {
                        "key": k,
                        "label": lab,
                        "encoding": self.options.encoding,
                        "suspect": self.name,
                    }
                )
                + "\n"
                for k, lab in zip(keys, labels, strict=True)
            )
            try:
                with path.open("ab") as fh:
                    fh.write(text.encode())
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as err:
                raise InputError(f"cannot write journal {path}: {err.strerror or err}") from err

    # -- the oracle -------------------------------------------------------------------------
    def predict(self, x: Tensor) -> Tensor:
        """Labels ``(N,)`` int64 for ``x`` ``(N, C, H, W)``; journaled points are not resent."""
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise InputError("HTTPSuspect.predict takes a float tensor (N, C, H, W)")
        x = x.detach().to("cpu", torch.float32).contiguous()
        keys = [point_key(p) for p in x]
        todo: dict[str, int] = {}  # key -> index of its first occurrence
        from_journal = 0
        with self._journal_lock:
            for i, k in enumerate(keys):
                if k in self._known:
                    from_journal += 1
                elif k not in todo:
                    todo[k] = i
        with self.stats.lock:
            self.stats.points_from_journal += from_journal
        order = list(todo.items())
        bs = self.options.batch_size
        batches = [order[s : s + bs] for s in range(0, len(order), bs)]
        if batches:
            self._run(x, batches)
        with self._journal_lock:
            return torch.tensor([self._known[k] for k in keys], dtype=torch.int64)

    def _run(self, x: Tensor, batches: list[list[tuple[str, int]]]) -> None:
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.options.concurrency)
        futures: list[Future[None]] = []
        try:
            for batch in batches:
                futures.append(pool.submit(self._one_batch, x, batch, stop))
            wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                if fut.done() and fut.exception() is not None:
                    stop.set()
                    raise fut.exception()  # type: ignore[misc]
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _one_batch(self, x: Tensor, batch: list[tuple[str, int]], stop: threading.Event) -> None:
        if stop.is_set():
            return
        keys = [k for k, _ in batch]
        points = x[[i for _, i in batch]]
        body = self._encode(points)
        opts = self.options
        attempt = 0
        while True:
            if stop.is_set():
                return
            self._reserve(len(batch))
            self._wait_rate()
            with self.stats.lock:
                self.stats.requests += 1
                if attempt:
                    self.stats.retries += 1
            try:
                labels = self._post(body, len(batch))
                break
            except _Retryable as err:
                attempt += 1
                if attempt > opts.retries:
                    raise SuspectError(
                        f"suspect {self.name} failed {attempt} times in a row, last: {err}",
                        "check that the service is up; raise retries or timeout",
                    ) from None
                delay = min(MAX_BACKOFF, opts.backoff * 2 ** (attempt - 1))
                delay = max(delay * random.uniform(0.5, 1.5), min(err.wait, MAX_BACKOFF))
                log.info("suspect %s: %s; retry %d in %.2f s", self.name, err, attempt, delay)
                if stop.wait(delay):
                    return
        with self.stats.lock:
            self.stats.points_answered += len(batch)
        self._journal_append(keys, labels)

    def _reserve(self, n: int) -> None:
        budget = self.options.budget
        with self.stats.lock:
            if budget is not None and self.stats.points_sent + n > budget:
                raise SuspectError(
                    f"the query budget of {budget} points is spent ({self.stats.points_sent} "
                    f"sent, {self.stats.points_answered} answered)",
                    "raise the budget; answers so far are kept in the journal",
                )
            self.stats.points_sent += n

    def _wait_rate(self) -> None:
        rate = self.options.rate_limit
        if rate is None:
            return
        with self._rate_lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / rate
        if slot > now:
            time.sleep(slot - now)

    def _encode(self, points: Tensor) -> bytes:
        inputs: list[Any]
        if self.options.encoding == "base64":
            raw = points.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
            inputs = [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
        elif self.options.encoding == "array":
            inputs = points.tolist()
        else:
            inputs = [_png_base64(p) for p in points]
        return json.dumps({"inputs": inputs, "encoding": self.options.encoding}).encode()

    # -- one HTTP exchange ------------------------------------------------------------------
    def _post(self, body: bytes, count: int) -> list[int]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._auth is not None:
            headers["Authorization"] = self._auth
        req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.options.timeout) as resp:
                status = int(resp.status)
                ctype = resp.headers.get("Content-Type", "")
                raw = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as err:
            status = err.code
            retry_after = _retry_after(err.headers.get("Retry-After") if err.headers else None)
            try:
                detail = self._detail(err.read(64 * 1024))
            except (OSError, http.client.HTTPException):
                detail = ""
            finally:
                err.close()
            text = f"HTTP {status}{': ' + detail if detail else ''}"
            if status == 429 or status >= 500:
                raise _Retryable(text, retry_after) from None
            hint = {
                401: "check the credentials in the auth environment variable",
                403: "check the credentials in the auth environment variable",
                413: "lower the batch size",
            }.get(status, "the service refused the request; check the protocol (docs/http.md)")
            raise SuspectError(f"suspect {self.name} answered {text}", hint) from None
        except TimeoutError:
            raise _Retryable(f"no answer within {self.options.timeout:g} s") from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"no answer within {self.options.timeout:g} s") from None
            raise _Retryable(f"connection failed: {self._mask(str(reason))[:160]}") from None
        except (http.client.HTTPException, ConnectionError, OSError) as err:
            raise _Retryable(
                f"connection failed: {type(err).__name__} {self._mask(str(err))[:120]}".strip()
            ) from None
        if status != 200:
            raise SuspectError(
                f"suspect {self.name} answered HTTP {status}, expected 200 with labels"
            )
        return self._parse(raw, ctype, count)

    def _parse(self, raw: bytes, ctype: str, count: int) -> list[int]:
        return parse_answer(
            raw, ctype, count, where=f"suspect {self.name}",
            class_names=self.options.class_names, mask=self._mask,
        )  # fmt: skip

    def _detail(self, raw: bytes) -> str:
        """A short, masked description of an error body."""
        text = raw.decode("utf-8", "replace").strip()
        try:
            obj = json.loads(text)
            if isinstance(obj, dict) and isinstance(obj.get("error"), str):
                text = obj["error"]
        except ValueError:
            if text.lstrip()[:1] == "<":
                text = "an HTML page"
        return self._mask(" ".join(text.split()))[:200]

    def _mask(self, text: str) -> str:
        if self._auth:
            text = text.replace(self._auth, "***")
            token = self._auth.split()[-1]
            if len(token) >= 4:
                text = text.replace(token, "***")
        return text


def read_journal(path: Path, encoding: object, *, suspect: str | None = None) -> dict[str, int]:
    """Labels by point key from a journal file, for answers as exact as ``encoding`` and,
    when ``suspect`` is given, answered by that suspect (records name their suspect, so one
    journal shared by several suspects never gives one suspect another's answers).

    A torn last line (no final newline) is cut off the file; any other bad line is an
    InputError.
    """
    known: dict[str, int] = {}
    if not path.exists():
        return known
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read journal {path}: {err.strerror or err}") from err
    lines = data.split(b"\n")
    complete, torn = lines[:-1], lines[-1]  # no final newline: a torn last line
    if torn:
        log.warning("journal %s: ignoring a torn last line (%d bytes)", path, len(torn))
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key, label, enc = rec["key"], rec["label"], rec["encoding"]
        except (ValueError, KeyError, TypeError):
            raise InputError(
                f"journal {path} line {number} is not a journal record",
                "give another --journal file, or delete this one to start over",
            ) from None
        if not isinstance(key, str) or not _is_int(label):
            raise InputError(f"journal {path} line {number} is not a journal record")
        if _exactness(enc) == _exactness(encoding) and (
            suspect is None or rec.get("suspect") == suspect
        ):
            known[key] = int(label)
    if torn:  # cut the torn bytes so new records start on a line of their own
        try:
            with path.open("r+b") as fh:
                fh.truncate(len(data) - len(torn))
        except OSError as err:
            raise InputError(f"cannot repair journal {path}: {err.strerror or err}") from err
    return known


def parse_answer(
    raw: bytes,
    ctype: str,
    count: int,
    *,
    where: str = "suspect",
    class_names: Sequence[str] | None = None,
    mask: Callable[[str], str] = str,
) -> list[int]:
    """The ``count`` labels of an HTTP answer body, or a SuspectError saying what is wrong.

    ``class_names`` map answered names to indices; ``mask`` hides credentials in messages.
    """
    if len(raw) > MAX_RESPONSE_BYTES:
        raise SuspectError(f"{where} answered more than {MAX_RESPONSE_BYTES} bytes")
    head = raw.lstrip()[:15].lower()
    if "html" in ctype.lower() or head.startswith((b"<!doctype", b"<html", b"<")):
        raise SuspectError(
            f"{where} answered an HTML page, not JSON labels",
            "is the URL the service's base address (POST /predict)?",
        )
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SuspectError(
            f"{where} answered malformed JSON ({err.msg} at byte {err.pos})"
            if isinstance(err, json.JSONDecodeError)
            else f"{where} answered bytes that are not UTF-8 JSON"
        ) from None
    except (ValueError, RecursionError) as err:  # a number of 4300+ digits, deep nesting
        raise SuspectError(f"{where} answered JSON that cannot be read ({str(err)[:80]})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("labels"), list):
        raise SuspectError(f'{where} answered JSON without a "labels" list')
    answers = obj["labels"]
    if len(answers) != count:
        raise SuspectError(
            f"{where} answered {len(answers)} labels for {count} inputs",
            "it must return one top-1 label per input",
        )
    names = class_names
    index = {n: i for i, n in enumerate(names)} if names is not None else None
    labels = []
    for a in answers:
        if _is_int(a):
            if not -(2**63) <= a < 2**63:
                raise SuspectError(f"{where} answered a label outside the int64 range")
            labels.append(int(a))
        elif isinstance(a, str):
            if index is None:
                raise SuspectError(
                    f"{where} answered the class name {mask(a)[:60]!r}",
                    "give the class names (class_names) to map names to indices",
                )
            if a not in index:
                raise SuspectError(
                    f"{where} answered an unknown class name {mask(a)[:60]!r}",
                    f"known: {', '.join(names[:5]) if names else ''}"
                    + (", ..." if names and len(names) > 5 else ""),
                )
            labels.append(index[a])
        else:
            raise SuspectError(
                f"{where} answered a {type(a).__name__} label, expected an integer or a class name"
            )
    return labels


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _retry_after(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return seconds if np.isfinite(seconds) and seconds > 0 else 0.0


def _redact(url: str) -> str:
    """The URL without user info, query or fragment (they may carry credentials)."""
    try:
        p = urllib.parse.urlsplit(url)
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "<unparsable URL>"
    return urllib.parse.urlunsplit((p.scheme, host + port, p.path, "", ""))


def _png_base64(point: Tensor) -> str:
    """One (C, H, W) point in [0, 1] as a base64 8-bit PNG (values rounded to k/255)."""
    from PIL import Image

    c = int(point.shape[0])
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if c not in modes:
        raise InputError(f"png encoding needs 1, 3 or 4 channels, the points have {c}")
    arr = quantise_png(point).mul(255).round().to(torch.uint8).numpy()
    img = Image.fromarray(arr[0] if c == 1 else arr.transpose(1, 2, 0), modes[c])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def quantise_png(x: Tensor) -> Tensor:
    """What the PNG encoding sends: values clamped to [0, 1] and rounded to multiples of 1/255."""
    return (x.detach().to(torch.float32).clamp(0, 1) * 255).round() / 255
