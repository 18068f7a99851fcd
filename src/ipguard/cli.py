"""The ``ipguard`` command: a thin layer that parses, calls the library and prints.

Results go to stdout (a table, or JSON with ``--json``); progress and diagnostics go to
stderr. Every error a user can cause is printed as one line, ``error: ...``, with a non-zero
exit and no traceback (``ipguard --debug ...`` shows it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ipguard.errors import InputError, IPGuardError
from ipguard.methods.base import GenerationProgress
from ipguard.methods.ipguard import DEFAULT_K, DEFAULT_LR
from ipguard.verify import DEFAULT_THRESHOLD

app = typer.Typer(
    name="ipguard",
    help=(
        "Prove that a suspect classifier is a copy of yours. ipguard fingerprints your "
        "PyTorch model with inputs just beside its decision boundary (IPGuard, AsiaCCS 2021), "
        "then checks whether a suspect model gives the same labels on them.\n\n"
        "Start with: ipguard demo"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (files, CI logs) gets 120 columns instead of Rich's 80, so tables do not wrap.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> typer.Exit:
    # control characters (from file names) are shown escaped: one line, no terminal codes
    message = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in message
    )
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Map library errors to one line on stderr and exit 1; unexpected ones to exit 3."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except IPGuardError as e:
            if _state["debug"]:
                raise
            raise _fail(str(e)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except Exception as e:  # noqa: BLE001 - last resort: still one line
            if _state["debug"]:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise _fail(
                f"internal error: {type(e).__name__}: {first[:200]} "
                "(rerun with ipguard --debug for the traceback, and please report it)",
                3,
            ) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    _state["debug"] = debug


# -- shared option parsing ---------------------------------------------------------------------
def _numbers(text: str | None, what: str, count: int | None = None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or (count is not None and len(values) != count):
        need = f"{count} " if count else ""
        raise InputError(f"{what} must be {need}comma-separated numbers, got {text!r}")
    return values


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--input-shape must be C,H,W integers, got {text!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise InputError(f"--input-shape must be three positive integers C,H,W, got {text!r}")
    return (dims[0], dims[1], dims[2])


def _bounds(text: str) -> tuple[float, float]:
    values = _numbers(text, "--bounds", 2)
    assert values is not None
    return (values[0], values[1])


class _Bar:
    """A progress bar on stderr: ``bar(done, note)``; ``bar.total(n)`` changes the total."""

    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress, self._task = progress, task

    def __call__(self, done: int, note: str = "") -> None:
        self._progress.update(self._task, completed=done, note=escape(note))

    def total(self, total: int) -> None:
        self._progress.update(self._task, total=total)


@contextmanager
def _progress(description: str, total: int) -> Iterator[_Bar]:
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(description, total=total, note="")
    with bar:
        yield _Bar(bar, task)


DEFAULT_SWEEP_KS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
DEFAULT_SWEEP_NS = (10, 20, 50, 100, 200)


class StartPoints(str, Enum):
    noise = "noise"
    data = "data"


class TargetRule(str, Enum):
    random = "random"
    least_likely = "least-likely"


ModelArg = Annotated[
    str,
    typer.Argument(
        help="The owner model: a TorchScript archive (.pt), package.module:factory with "
        "--weights, or arch:NAME with --weights (a built-in architecture such as "
        "arch:resnet20 or arch:resnet18; see `ipguard archs`).",
        show_default=False,
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights", help="Weights for a package.module:factory or arch:NAME model: "
        ".safetensors, or a .pt/.pth state dict (read with weights_only=True).",
    ),
]  # fmt: skip
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
MeanOpt = Annotated[
    str | None,
    typer.Option(
        "--mean", help="Per-channel mean applied inside the model, e.g. 0.49,0.48,0.45. "
        "verify: defaults to the owner's, recorded in the fingerprint.",
    ),
]  # fmt: skip
StdOpt = Annotated[
    str | None,
    typer.Option(
        "--std", help="Per-channel std applied inside the model. verify: defaults to the "
        "owner's, recorded in the fingerprint.",
    ),
]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow .pt/.pth files holding pickled Python objects (a whole saved module): "
        "unpickling can run arbitrary code, so only for files you trust.",
    ),
]


def _check_output(path: Path) -> None:
    """Fail before any work if the output cannot be written there."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder", "give a file name")


def _generation_note(p: GenerationProgress) -> str:
    if p.round == 0:  # methods that train surrogate models first report them as round 0
        return f"surrogate model {p.iteration + 1}/{p.max_iter}"
    return f"round {p.round} step {p.iteration}"


def _method_params(items: Sequence[str]) -> dict[str, Any]:
    """``--param KEY=VALUE`` options as a dict; VALUE is JSON where it parses, else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InputError(f"--param must be KEY=VALUE, got {item!r}", "e.g. --param eps=0.05")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _kv_table(title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    return table


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False) + "\n")
    sys.stdout.flush()


# -- commands ----------------------------------------------------------------------------------
@app.command()
@handle_errors
def fingerprint(
    model: ModelArg,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Where to write the fingerprint (.safetensors).",
            show_default=False,
        ),
    ],
    weights: WeightsOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Data spec: digits, npz:PATH, cifar10:PATH, cifar100:PATH or "
            "imagefolder:PATH, optionally followed by ?split=all|train|test, ?size=N, "
            "?labels=fine|coarse (cifar100), ?cache=0|1 (join several with &). Gives the "
            "input shape, and the start points with --start data.",
        ),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="C,H,W of one input, if no --data.")
    ] = None,
    method: Annotated[str, typer.Option("--method", help="Fingerprinting method.")] = "ipguard",
    n: Annotated[int, typer.Option("--n", "-n", help="Number of fingerprinting points.")] = 100,
    k: Annotated[
        float | None,
        typer.Option(
            "--k", help=f"Logit margin of each point past the boundary (default {DEFAULT_K:g})."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help=f"Adam learning rate on the input (default {DEFAULT_LR:g})."),
    ] = None,
    max_iter: Annotated[
        int | None,
        typer.Option("--max-iter", help="Adam steps per point at most (default 1000)."),
    ] = None,
    start: Annotated[
        StartPoints | None,
        typer.Option(
            "--start", help="Start points: uniform noise or --data images (default noise)."
        ),
    ] = None,
    target: Annotated[
        TargetRule | None, typer.Option("--target", help="Target label rule (default random).")
    ] = None,
    max_rounds: Annotated[
        int | None,
        typer.Option("--max-rounds", help="Rounds of new start points for failures (default 5)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="KEY=VALUE hyper-parameter of the method (VALUE parsed as JSON where it can "
            "be, e.g. eps=0.05, targeted=true); repeatable, overrides the options above.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of all randomness.")] = 0,
    bounds: Annotated[str, typer.Option("--bounds", help="Valid input range low,high.")] = "0,1",
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
) -> None:
    """Fingerprint an owner model and write the fingerprint file.

    Example: ipguard fingerprint ipguard.nets:digits_cnn --weights owner.safetensors
    --data digits -o owner.fp.safetensors
    """
    from ipguard.data import load_data
    from ipguard.methods import METHODS, make_method
    from ipguard.models import OwnerModel, load_module

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}", f"choose one of: {', '.join(METHODS)}")
    _check_output(output)
    if data is None and input_shape is None:
        raise InputError("give --data SPEC or --input-shape C,H,W")
    dataset = load_data(data) if data is not None else None
    shape = _shape(input_shape) if input_shape is not None else None
    if dataset is not None:
        if shape is not None and shape != dataset.input_shape:
            raise InputError(
                f"--input-shape {input_shape} disagrees with the data's shape "
                f"{','.join(map(str, dataset.input_shape))}"
            )
        shape = dataset.input_shape
    assert shape is not None
    given = {
        "k": k, "lr": lr, "max_iter": max_iter, "start": start.value if start else None,
        "target": target.value if target else None, "max_rounds": max_rounds,
    }  # fmt: skip
    params: dict[str, Any] = {key: v for key, v in given.items() if v is not None}
    params.update(_method_params(param or []))
    known = [f.name for f in dataclasses.fields(METHODS[method])]  # type: ignore[arg-type]
    if unknown := sorted(set(params) - set(known)):
        raise InputError(
            f"method {method!r} has no parameter {', '.join(unknown)}",
            f"its parameters: {', '.join(known)}" if known else "it takes no parameters",
        )
    fp_method = make_method(method, **params)
    if fp_method.needs_data and dataset is None:
        raise InputError(
            "--start data needs --data SPEC"
            if params.get("start") == "data"
            else f"method {method!r} needs --data SPEC"
        )
    if fp_method.needs_labels and (dataset is None or dataset.y is None):
        raise InputError(
            f"method {method!r} needs the true labels of the data", "give a data spec with labels"
        )
    module = load_module(model, weights, input_shape=shape, trust_pickle=trust_pickle)
    owner = OwnerModel(
        module, input_shape=shape, bounds=_bounds(bounds), mean=_numbers(mean, "--mean"),
        std=_numbers(std, "--std"), device=device,
    )  # fmt: skip
    with _progress("fingerprinting", n) as update:
        fp = fp_method.generate(
            owner, n, data=dataset.x if dataset is not None else None,
            labels=dataset.y if dataset is not None else None, seed=seed,
            progress=lambda p: update(p.converged, _generation_note(p)),
        )  # fmt: skip
        update(n, "done")
    fp.save(output)
    summary = {"file": str(output), **fp.summary()}
    if as_json:
        _print_json(summary)
        return
    stats = fp.stats
    table = _kv_table("fingerprint written")
    table.add_row("file", escape(str(output)))
    table.add_row("method", escape(f"{fp.method} " + json.dumps(fp.params, sort_keys=True)))
    table.add_row("points", f"{fp.n} of shape {fp.input_shape}, {fp.num_classes} classes")
    if "convergence_rate" in stats:
        table.add_row(
            "converged",
            f"{stats['converged']} of {stats['attempted']} start points "
            f"({100 * stats['convergence_rate']:.1f}%), mean {stats['mean_iterations']} steps",
        )
    if "success_rate" in stats:
        table.add_row(
            "success",
            f"{stats['successes']} of {fp.n} points ({100 * stats['success_rate']:.1f}%)",
        )
    table.add_row("time", f"{stats.get('seconds', 0):.2f} s")
    table.add_row("owner weights sha256", fp.owner_sha256)
    table.add_row("digest", fp.digest)
    out.print(table)


_PRE = "Suspect input preprocessing (every suspect)"
_HTTP = "HTTP suspects (http:// and https:// URLs)"


class ChannelOrderOpt(str, Enum):
    rgb = "rgb"
    bgr = "bgr"


class LayoutOpt(str, Enum):
    nchw = "nchw"
    nhwc = "nhwc"


class InputDTypeOpt(str, Enum):
    float32 = "float32"
    uint8 = "uint8"


class EncodingOpt(str, Enum):
    base64 = "base64"
    array = "array"
    png = "png"


def _read_class_names(path: Path) -> tuple[str, ...]:
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


def _http_options(given: dict[str, Any]) -> Any:
    """Build ``ipguard.http_client.HTTPOptions`` from the flags given (imported only here)."""
    import importlib

    try:
        http = importlib.import_module("ipguard.http_client")
    except ImportError as e:
        raise InputError(f"HTTP suspects are not available: {e}") from None
    try:
        return http.HTTPOptions(**given)
    except TypeError as e:
        raise InputError(f"bad HTTP options: {e}") from None


SizeOpt = Annotated[
    int | None,
    typer.Option(
        "--size", metavar="PIXELS", help="Resize the points (bilinear) to PIXELS x PIXELS "
        "for suspects that take another input size.", rich_help_panel=_PRE,
    ),
]  # fmt: skip

ChannelOrderArg = Annotated[
    ChannelOrderOpt,
    typer.Option(
        "--channel-order", help="Channel order the suspects expect: bgr reverses the "
        "fingerprint's RGB channels.", rich_help_panel=_PRE,
    ),
]  # fmt: skip

ScaleOpt = Annotated[
    float,
    typer.Option(
        "--scale", help="Multiply the points by this before the suspects see them, e.g. "
        "255 for suspects that take 0..255 pixels. --mean/--std apply after it; with a "
        "--scale, local models no longer get the owner's mean/std by default.",
        rich_help_panel=_PRE,
    ),
]  # fmt: skip

LayoutArg = Annotated[
    LayoutOpt,
    typer.Option(
        "--layout", help="Tensor layout the suspects take: nchw (channels first) or nhwc "
        "(channels last).", rich_help_panel=_PRE,
    ),
]  # fmt: skip

InputDtypeArg = Annotated[
    InputDTypeOpt,
    typer.Option(
        "--input-dtype", help="Element type sent to the suspects: float32, or uint8 "
        "(rounded and clipped to 0..255; use with --scale 255).", rich_help_panel=_PRE,
    ),
]  # fmt: skip

HttpBatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--http-batch-size", help="Points per HTTP request (URL suspects).",
        rich_help_panel=_HTTP,
    ),
]  # fmt: skip

ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        "--concurrency", help="HTTP requests in flight at once (URL suspects).",
        rich_help_panel=_HTTP,
    ),
]  # fmt: skip

TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", metavar="SECONDS", help="Timeout of one HTTP request (URL suspects).",
        rich_help_panel=_HTTP,
    ),
]  # fmt: skip

RetriesOpt = Annotated[
    int | None,
    typer.Option(
        "--retries", help="Retries of a failed or rate-limited HTTP request, with backoff "
        "(URL suspects).", rich_help_panel=_HTTP,
    ),
]  # fmt: skip

RateLimitOpt = Annotated[
    float | None,
    typer.Option(
        "--rate-limit", metavar="PER_SECOND", help="Most HTTP requests per second "
        "(URL suspects).", rich_help_panel=_HTTP,
    ),
]  # fmt: skip

BudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--budget", metavar="QUERIES", help="Most points to send to a URL suspect; stop "
        "with an error rather than exceed it.", rich_help_panel=_HTTP,
    ),
]  # fmt: skip

AuthEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--auth-env", metavar="NAME", help="Environment variable holding the value of the "
        "Authorization header, e.g. 'Bearer TOKEN' (never on the command line, never logged).",
        rich_help_panel=_HTTP,
    ),
]  # fmt: skip

EncodingArg = Annotated[
    EncodingOpt | None,
    typer.Option(
        "--encoding", help="How points are sent to URL suspects: base64 (float32 bytes, "
        "exact; the default), array (JSON numbers, exact) or png (8-bit images, rounded to "
        "1/255).", rich_help_panel=_HTTP,
    ),
]  # fmt: skip

ClassNamesOpt = Annotated[
    Path | None,
    typer.Option(
        "--class-names", metavar="FILE", help="Class names, one per line in label order, "
        "for URL suspects that answer names instead of indices.", rich_help_panel=_HTTP,
    ),
]  # fmt: skip

JournalOpt = Annotated[
    Path | None,
    typer.Option(
        "--journal", metavar="FILE", help="Record the answers of URL suspects here, so an "
        "interrupted verification resumes without re-sending queries.",
        rich_help_panel=_HTTP,
    ),
]  # fmt: skip


PubkeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--pubkey", metavar="NAME.pub", help="Require a valid signature (FILE.sig, from "
        "ipguard sign) by this public key.",
    ),
]  # fmt: skip
PassphraseEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--passphrase-env", metavar="NAME", help="Environment variable holding the private "
        "key's passphrase (never on the command line).",
    ),
]  # fmt: skip


def _signature_status(fingerprint_file: Path, pubkey: Path | None) -> Any:
    """check_signature's result when FILE.sig exists or --pubkey is given, else None."""
    from ipguard.signing import check_signature, load_public_key, signature_path

    if pubkey is None and not signature_path(fingerprint_file).exists():
        return None
    key = load_public_key(pubkey) if pubkey is not None else None
    return check_signature(fingerprint_file, public_key=key)


def _evidence_caption(evidence: dict[str, Any]) -> str:
    lines = [f"fingerprint digest {evidence['fingerprint_digest']}"]
    if "signature" in evidence:
        s = evidence["signature"]
        lines.append(f"signature: valid, key {s['key_id']}, signed {s['signed_at']}")
    if "commitment" in evidence:
        c = evidence["commitment"]
        by = f"signed by key {c['key_id']}" if c["signed"] else "unsigned"
        lines.append(f"commitment: matches, committed {c['committed_at']}, {by}")
    return "\n".join(lines)


@app.command()
@handle_errors
def verify(
    fingerprint_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A fingerprint file.", show_default=False)
    ],
    suspects: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SUSPECT...",
            help="Suspects, each picked by its form: an http(s):// label API, a model.onnx "
            "file (run with ONNX Runtime), a TorchScript archive (.pt, .pts, .torchscript), "
            "package.module:factory or arch:NAME (each takes the next --weights), or "
            "package.module:function called as function(x) -> labels.",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        list[Path] | None,
        typer.Option(
            "--weights",
            metavar="FILE",
            help="Weights for each package.module:factory or arch:NAME suspect, in order.",
        ),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            metavar="MODULE:FUNCTION",
            help="A label-only suspect: package.module:function, called as "
            "function(x) -> labels with x (N,C,H,W) in the fingerprint's bounds.",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Matching rate at or above which a suspect is judged pirated "
            f"(default {DEFAULT_THRESHOLD:g}; see docs/defaults.md)",
        ),
    ] = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Points per query.")] = 256,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            metavar="FILE",
            help="A calibration file from ipguard evaluate: decide with its threshold (for a "
            "target false-positive rate) and give each suspect a p-value.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per suspect.")
    ] = False,
    size: SizeOpt = None,
    channel_order: ChannelOrderArg = ChannelOrderOpt.rgb,
    scale: ScaleOpt = 1.0,
    layout: LayoutArg = LayoutOpt.nchw,
    input_dtype: InputDtypeArg = InputDTypeOpt.float32,
    http_batch_size: HttpBatchSizeOpt = None,
    concurrency: ConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    rate_limit: RateLimitOpt = None,
    budget: BudgetOpt = None,
    auth_env: AuthEnvOpt = None,
    encoding: EncodingArg = None,
    class_names: ClassNamesOpt = None,
    journal: JournalOpt = None,
    trust_pickle: TrustPickleOpt = False,
    pubkey: PubkeyOpt = None,
    commitment: Annotated[
        Path | None,
        typer.Option(
            "--commitment",
            metavar="FILE",
            help="A commitment from ipguard commit: the fingerprint must match it (digest "
            "and owner weights), else exit 1.",
        ),
    ] = None,
) -> None:
    """Query suspects with the fingerprint and judge each one: pirated or not.

    Only the suspects' top-1 labels are used. The exit status is 0 whatever the verdicts;
    read them from the table or the JSON. With --pubkey the fingerprint must carry a valid
    signature (FILE.sig) by that key, and with --commitment it must match the commitment;
    otherwise the exit status is 1 and no suspect is queried.
    """
    from ipguard.adapters import Preprocess, needs_weights, open_suspect, suspect_kind
    from ipguard.fingerprint import load_fingerprint
    from ipguard.models import LabelOracle
    from ipguard.verify import check_threshold
    from ipguard.verify import verify as run_verify

    sig = _signature_status(fingerprint_file, pubkey) if pubkey is not None else None
    if sig is not None and not sig.valid:
        raise InputError(
            f"signature check failed: {'; '.join(sig.problems)}",
            "verify only a fingerprint signed by the key you trust",
        )
    fp = load_fingerprint(fingerprint_file)
    evidence: dict[str, Any] = {"fingerprint_digest": fp.digest}
    if sig is not None:
        evidence["signature"] = sig.to_dict()
    if commitment is not None:
        from ipguard.signing import check_commitment

        committed = check_commitment(fp, commitment)
        if not committed.matches:
            raise InputError(
                f"fingerprint does not match commitment {commitment}: "
                + "; ".join(committed.problems)
            )
        evidence["commitment"] = committed.to_dict()
    cal = None
    if calibration is not None:
        from ipguard.calibration import load_calibration

        if threshold is not None:
            raise InputError("give --threshold or --calibration, not both")
        cal = load_calibration(calibration)
        if cal.n != fp.n or (
            cal.fingerprint_digest is not None and cal.fingerprint_digest != fp.digest
        ):
            raise InputError(
                f"calibration {calibration} was made for another fingerprint",
                "use the fingerprint that ipguard evaluate wrote beside it",
            )
    tau = check_threshold(
        cal.threshold if cal is not None else DEFAULT_THRESHOLD if threshold is None else threshold
    )
    specs = list(suspects or [])
    weight_list = list(weights or [])
    if not specs and not adapter:
        raise InputError(
            "no suspect given", "name a model file, package.module:factory or --adapter"
        )
    kinds = [suspect_kind(s) for s in specs]
    n_factories = sum(needs_weights(k) for k in kinds)
    if len(weight_list) != n_factories:
        raise InputError(
            f"{n_factories} package.module:factory suspect(s) but {len(weight_list)} --weights",
            "give one --weights per factory suspect, in order",
        )
    http_given = {
        "batch_size": http_batch_size, "concurrency": concurrency, "timeout": timeout,
        "retries": retries, "rate_limit": rate_limit, "budget": budget, "auth_env": auth_env,
        "encoding": None if encoding is None else encoding.value,
        "class_names": None if class_names is None else _read_class_names(class_names),
        "journal": journal,
    }  # fmt: skip
    http_given = {k: v for k, v in http_given.items() if v is not None}
    http_options = None
    if "http" in kinds:
        http_options = _http_options(http_given)
    elif http_given:
        flags = ", ".join("--" + k.replace("_", "-") for k in http_given)
        raise InputError(f"{flags} only apply to http(s):// suspects, and none was given")
    preprocess = Preprocess(
        size=size, channel_order=channel_order.value, scale=scale,
        mean=None if mean is None else tuple(_numbers(mean, "--mean") or ()),
        std=None if std is None else tuple(_numbers(std, "--std") or ()),
        layout=layout.value, dtype=input_dtype.value,
    )  # fmt: skip
    oracles: list[tuple[str, LabelOracle]] = []
    w_iter = iter(weight_list)
    # Local models get the owner's normalisation unless --mean/--std say otherwise.
    for spec, kind in zip(specs, kinds, strict=True):
        oracles.append(
            open_suspect(
                spec, weights=next(w_iter) if needs_weights(kind) else None,
                preprocess=None if preprocess.is_identity else preprocess,
                input_shape=fp.input_shape, bounds=fp.bounds, device=device,
                http_options=http_options if kind == "http" else None,
                default_mean=fp.preprocessing["mean"], default_std=fp.preprocessing["std"],
                kind=kind, trust_pickle=trust_pickle,
            )
        )  # fmt: skip
    for spec in adapter or []:  # --adapter: an explicit package.module:function suspect
        oracles.append(
            open_suspect(
                spec, preprocess=None if preprocess.is_identity else preprocess,
                input_shape=fp.input_shape, bounds=fp.bounds, kind="function",
            )
        )  # fmt: skip
    results = [
        run_verify(fp, oracle, threshold=tau, name=name, batch_size=batch_size)
        for name, oracle in oracles
    ]
    rows: list[dict[str, Any]] = []
    for r in results:
        row = r.to_dict()
        if cal is not None:
            from ipguard.calibration import decide

            decision = decide(cal, r.matches, r.n, fingerprint_digest=fp.digest)
            assert decision.verdict == r.verdict  # same threshold, same rule
            row |= {
                "p_value": decision.p_value,
                "matching_rate_ci": list(decision.matching_rate_ci),
                "threshold_basis": decision.threshold_basis,
                "target_fpr": decision.target_fpr,
                "assumption_ok": decision.assumption_ok,
            }
        rows.append(row)
    if as_json:
        for row in rows:
            _print_json({**row, **evidence})
        return
    table = Table(
        title=escape(f"fingerprint {fingerprint_file} (digest {fp.digest[:16]}...)"),
        caption=escape(_evidence_caption(evidence)),
    )
    cols = ["suspect", "matches", "matching rate", "threshold", "verdict"]
    if cal is not None:
        cols.insert(4, "p-value")
    for col in cols:
        table.add_column(col, justify="left" if col in ("suspect", "verdict") else "right")
    for row in rows:
        style = "bold red" if row["verdict"] == "pirated" else "green"
        cells = [
            escape(row["suspect"]), f"{row['matches']}/{row['n']}",
            f"{row['matching_rate']:.3f}", f"{row['threshold']:.3f}",
        ]  # fmt: skip
        if cal is not None:
            cells.append(f"{row['p_value']:.2g}")
        table.add_row(*cells, f"[{style}]{row['verdict']}[/]")
    out.print(table)
    if cal is not None:
        basis = "binomial null model" if cal.assumption_ok else "empirical quantile"
        err.print(
            f"threshold {cal.threshold:.3f} for a false-positive rate <= {cal.target_fpr:g} "
            f"({basis}, from {cal.n_negatives} independent models)"
            + ("" if cal.assumption_ok else "; p-values assume independent points and are "
               "too small here (overdispersion)")
        )  # fmt: skip


@app.command()
@handle_errors
def inspect(
    fingerprint_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A fingerprint file.", show_default=False)
    ],
    as_json: JsonOpt = False,
    pubkey: PubkeyOpt = None,
) -> None:
    """Check a fingerprint file and show what it holds and how it was made.

    When FILE.sig exists (or --pubkey is given) the signature is checked too; an invalid
    signature, or one by another key than --pubkey, is an error (exit 1).
    """
    from ipguard.fingerprint import load_fingerprint

    sig = _signature_status(fingerprint_file, pubkey)
    try:
        fp = load_fingerprint(fingerprint_file)
    except IPGuardError as e:
        if sig is None or sig.valid:
            raise
        raise InputError(f"{e}; signature check: {'; '.join(sig.problems)}") from None
    summary = fp.summary()
    if sig is not None:
        summary["signature"] = sig.to_dict()
    if as_json:
        _print_json(summary)
    else:
        table = _kv_table(escape(f"{fingerprint_file}: valid fingerprint"))
        for key, value in summary.items():
            if key == "signature" and sig is not None:
                value = sig.describe()
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            table.add_row(key, escape(text))
        out.print(table)
    if sig is not None and not sig.valid:
        raise _fail(f"signature check failed: {'; '.join(sig.problems)}")


@app.command()
@handle_errors
def archs(as_json: JsonOpt = False) -> None:
    """List the built-in architectures (for suite configs, and arch:NAME with --weights).

    Example: ipguard fingerprint arch:resnet20 --weights owner.safetensors --data
    cifar10:cifar-10-python.tar.gz -o owner.fp.safetensors
    """
    from ipguard.nets import describe_architectures, native_input_shape

    described = describe_architectures()
    if as_json:
        _print_json([
            {"name": name, "input": list(native_input_shape(name)), "description": text}
            for name, text in described.items()
        ])  # fmt: skip
        return
    table = Table(title="Built-in architectures (ipguard.nets.ARCHITECTURES)")
    for column in ("name", "native input C,H,W", "description"):
        table.add_column(column)
    for name, text in described.items():
        table.add_row(name, ",".join(map(str, native_input_shape(name))), escape(text))
    out.print(table)


@app.command()
@handle_errors
def evaluate(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="A suite config (TOML; see docs/evaluation.md). Without one: the digits suite.",
            show_default=False,
        ),
    ] = None,
    zoo: Annotated[
        Path, typer.Option("--zoo", help="Model cache: finished models are never retrained.")
    ] = Path("runs/zoo"),
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where to write the report, plots and calibration.")
    ] = Path("runs/eval"),
    threads: Annotated[
        int, typer.Option("--threads", help="torch CPU threads (0: torch's default).")
    ] = 1,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Also run the paper's studies of k and n (values from the config's [sweep] "
            "table, or k in 0.5,1,2,3,5,10 and n in 10,20,50,100,200): a table and a plot of "
            "ARUC against k and n.",
        ),
    ] = False,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Replace the config's [data] spec (e.g. cifar10:PATH, imagefolder:PATH), "
            "to point a published config at your copy of the data.",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="Replace the config's fingerprint method; a different method drops the "
            "config's params (give new ones with --param). The digits suite uses "
            "ipguard-select; --method ipguard is the paper's IPGuard (k = 3).",
            show_default=False,
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="KEY=VALUE parameter of the fingerprint method (JSON value); repeatable.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure the fingerprint on a suite of pirated copies and independent models.

    Builds (or loads from the zoo) the owner, every attacked copy and every independent
    model, fingerprints the owner, verifies them all, and reports robustness, uniqueness,
    ARUC, ROC-AUC and TPR at 1% FPR per attack family. Writes results.json, suspects.csv,
    plots (PNG and SVG), the fingerprint and a calibration file for verify --calibration.
    An interrupted run resumes where it stopped.
    """
    import torch

    from ipguard.evaluate import run_suite
    from ipguard.suite import default_suite, suite_from_dict
    from ipguard.sweep import SweepConfig, check_k_sweep, load_suite_and_sweep, run_sweep

    suite, sweep_config = load_suite_and_sweep(config) if config else (default_suite(), None)
    if data is not None:
        suite = dataclasses.replace(suite, data=dataclasses.replace(suite.data, spec=data))
    if method is not None or param:
        f = suite.fingerprint
        params = {} if method is not None and method != f.method else dict(f.params)
        f = dataclasses.replace(
            f, method=method or f.method, params={**params, **_method_params(param or [])}
        )
        # re-validated: the method's parameters, and surrogates apart from the suspects
        suite = suite_from_dict({**suite.to_dict(), "fingerprint": f.to_dict()}, where="suite")
    if sweep and sweep_config is None:
        sweep_config = SweepConfig(ks=DEFAULT_SWEEP_KS, ns=DEFAULT_SWEEP_NS)
    if sweep and sweep_config is not None and sweep_config.ks:
        check_k_sweep(suite)  # before any training
    if threads < 0:
        raise InputError(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress("evaluating", 1) as bar:

        def progress(what: str, done: int, total: int) -> None:
            bar.total(total)
            bar(done, what)

        result = run_suite(suite, zoo, progress=progress)
    result.write_json(out_dir / "results.json")
    result.write_csv(out_dir / "suspects.csv")
    plots = result.plot(out_dir / "eval")
    result.fingerprint.save(out_dir / "fingerprint.safetensors")
    if result.calibration is not None:
        result.calibration.save(out_dir / "calibration.json")
    sweep_result = None
    if sweep and sweep_config is not None:
        with _progress("sweeping k and n", 1) as bar:

            def sweep_progress(what: str, done: int, total: int) -> None:
                bar.total(total)
                bar(done, what)

            sweep_result = run_sweep(
                suite, zoo, ks=sweep_config.ks, ns=sweep_config.ns, progress=sweep_progress
            )
        sweep_result.write_csv(out_dir / "sweep.csv")
        sweep_result.write_json(out_dir / "sweep.json")
        sweep_result.plot(out_dir / "sweep")
    if as_json:
        report = result.to_dict()
        if sweep_result is not None:
            report["sweep"] = sweep_result.to_dict()
        _print_json(report)
        return
    _print_evaluation(result)
    if (sel := result.selection()) is not None:
        copies = sum(1 for m in sel["surrogates"] if m["pirated"])
        out.print(
            f"Fingerprint selected against {copies} surrogate copies and "
            f"{len(sel['surrogates']) - copies} surrogate independents built from the owner's "
            "split; no suspect has a surrogate's weights (checked)."
        )
    if sweep_result is not None:
        out.print("Effect of k and n (ARUC overall and per family):")
        out.print(escape(sweep_result.markdown_table()))
    err.print(
        f"wrote {out_dir}/results.json, suspects.csv, fingerprint.safetensors"
        + (", calibration.json" if result.calibration is not None else "")
        + f" and {len(plots)} plot files; {result.models_built} models trained, "
        f"{result.models_loaded} loaded from {zoo}, {result.seconds:.0f} s"
    )


def _print_evaluation(result: Any) -> None:
    summary = result.summary
    table = Table(
        title=f"ARUC, ROC-AUC and TPR at 1% FPR per family (threshold {result.threshold:.3f})"
    )
    for col in ("family", "suspects", "MR min", "MR mean", "ARUC", "ROC-AUC", "TPR@1%FPR",
                "caught"):  # fmt: skip
        table.add_column(col, justify="left" if col == "family" else "right")
    for family, m in summary.pirated_families.items():
        caught = f"{m.robustness:.0%}" if m.robustness is not None else "-"
        table.add_row(
            escape(family), str(m.n_pos), f"{m.pos.min:.2f}", f"{m.pos.mean:.2f}",
            f"{m.aruc:.3f}", f"{m.roc_auc:.3f}", f"{m.tpr_at_1pct_fpr:.2f}", caught,
        )  # fmt: skip
    o = summary.overall
    table.add_row(
        "[bold]all copies[/]", str(o.n_pos), f"{o.pos.min:.2f}", f"{o.pos.mean:.2f}",
        f"[bold]{o.aruc:.3f}[/]", f"[bold]{o.roc_auc:.3f}[/]", f"{o.tpr_at_1pct_fpr:.2f}",
        f"{o.robustness:.0%}" if o.robustness is not None else "-",
    )  # fmt: skip
    out.print(table)
    neg = Table(title="independent models (should not match)")
    for col in ("family", "models", "MR mean", "MR max", "cleared"):
        neg.add_column(col, justify="left" if col == "family" else "right")
    for family, stats in summary.independent_families.items():
        cleared = sum(
            1 for s in result.suspects
            if s.family == family and s.matching_rate < result.threshold
        )  # fmt: skip
        neg.add_row(
            escape(family), str(stats.n), f"{stats.mean:.2f}", f"{stats.max:.2f}",
            f"{cleared}/{stats.n}",
        )  # fmt: skip
    out.print(neg)
    interval = o.separating_interval
    out.print(
        f"Owner accuracy {result.owner_accuracy:.1%}. "
        + (
            f"Thresholds in ({interval.low:.2f}, {interval.high:.2f}] separate every copy from "
            "every independent model."
            if interval is not None
            else "No threshold separates every copy from every independent model."
        )
    )


@app.command()
@handle_errors
def demo(
    seed: Annotated[int, typer.Option("--seed", help="Seed for data split, training, points.")] = 0,
    n: Annotated[int, typer.Option("--n", "-n", help="Number of fingerprinting points.")] = 100,
    k: Annotated[
        float | None, typer.Option("--k", help=f"IPGuard margin (default {DEFAULT_K:g}).")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help=f"Verdict threshold (default {DEFAULT_THRESHOLD:g})."),
    ] = None,
    save: Annotated[
        Path | None, typer.Option("--save", help="Also write the owner's fingerprint here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the whole idea on scikit-learn's 8x8 digits in well under a minute.

    Trains an owner CNN, a pirated copy (fine-tuned on other data) and two independent
    models (an MLP on other data, and a twin: the same CNN on the same data with another
    seed, the hardest negative); fingerprints the owner with IPGuard and verifies them all.
    """
    from ipguard.demo import run_demo
    from ipguard.methods.ipguard import IPGuard
    from ipguard.verify import check_threshold

    tau = check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)
    method = IPGuard() if k is None else IPGuard(k=k)
    if save is not None:
        _check_output(save)
    with _progress("demo", 5) as update:
        stages = iter(range(1, 6))

        def on_stage(message: str) -> None:
            update(next(stages) - 1, message)

        result = run_demo(seed, method=method, n=n, threshold=tau, on_stage=on_stage)
        update(5, "done")
    if save is not None:
        result.fingerprint.save(save)
    if as_json:
        _print_json(
            {
                "owner_accuracy": result.owner_accuracy,
                "fingerprint": result.fingerprint.summary(),
                "suspects": [
                    {
                        **r.result.to_dict(),
                        "how": r.how,
                        "accuracy": r.accuracy,
                        "truly_pirated": r.pirated,
                        "correct": r.correct,
                    }
                    for r in result.rows
                ],  # fmt: skip
                "all_correct": result.all_correct,
                "claim_holds": result.claim_holds,
            }
        )
        return
    fp = result.fingerprint
    out.print(
        f"Owner: CNN on 900 digits, test accuracy {result.owner_accuracy:.1%}. Fingerprint: "
        f"{fp.n} IPGuard points (k={fp.params['k']}), {fp.stats['seconds']:.1f} s, "
        f"{fp.stats['convergence_rate']:.0%} of start points converged."
    )
    table = Table(title=f"Verification at threshold {tau:.2f}")
    for col in ("suspect", "how it was made", "test acc.", "matches", "verdict", "truth"):
        table.add_column(col, justify="right" if col in ("test acc.", "matches") else "left")
    for r in result.rows:
        style = "bold red" if r.result.verdict == "pirated" else "green"
        truth = "copy" if r.pirated else "indep."
        mark = "[green]ok[/]" if r.correct else "[bold red]WRONG[/]"
        table.add_row(
            r.name, r.how, f"{r.accuracy:.1%}", f"{r.result.matches}/{r.result.n}",
            f"[{style}]{r.result.verdict}[/]", f"{truth} {mark}",
        )  # fmt: skip
    out.print(table)
    twin = next((r for r in result.rows if r.hard_case), None)
    if result.claim_holds:
        out.print("The copies were caught and the independent MLP was cleared.")
    else:
        out.print("[bold red]A copy was missed or the independent MLP was flagged on this seed.[/]")
    if twin is not None:
        out.print(
            f"The twin (same architecture and data as the owner, other seed) matched "
            f"{twin.result.matching_rate:.0%}: IPGuard's boundary points partly transfer "
            f"between models trained on the same data"
            + ("." if twin.correct else ", and on this seed that crossed the threshold.")
            + " See docs/defaults.md."
        )


@app.command()
@handle_errors
def serve(
    model: ModelArg,
    input_shape: Annotated[
        str, typer.Option("--input-shape", help="C,H,W of one input, e.g. 1,8,8.")
    ],
    weights: WeightsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port; 0 picks a free one.")] = 0,
    class_names: Annotated[
        str | None,
        typer.Option("--class-names", help="Answer these comma-separated names, not indices."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Torch CPU threads (default: torch's).")
    ] = None,
    fault_delay: Annotated[
        float, typer.Option("--fault-delay", help="Testing: random delay up to S seconds.")
    ] = 0.0,
    fault_drop: Annotated[
        float, typer.Option("--fault-drop", help="Testing: drop a request with probability P.")
    ] = 0.0,
    fault_429: Annotated[
        float, typer.Option("--fault-429", help="Testing: answer 429 with probability P.")
    ] = 0.0,
    fault_500: Annotated[
        float, typer.Option("--fault-500", help="Testing: answer 500 with probability P.")
    ] = 0.0,
    fault_seed: Annotated[int, typer.Option("--fault-seed", help="Seed of the faults.")] = 0,
    trust_pickle: TrustPickleOpt = False,
) -> None:
    """Serve a model's top-1 labels over HTTP (label-only protocol, docs/http.md).

    Prints `serving MODEL on http://HOST:PORT` and serves until interrupted. For tests and
    demos, not production traffic; the --fault-* options make it misbehave on purpose.
    """
    import torch

    from ipguard.models import OwnerModel, load_module
    from ipguard.serve import FaultSpec, make_server

    shape = _shape(input_shape)
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    faults = FaultSpec(
        delay=fault_delay, drop=fault_drop, http429=fault_429, http500=fault_500, seed=fault_seed
    )
    module = load_module(model, weights, input_shape=shape, trust_pickle=trust_pickle)
    owner = OwnerModel(
        module, input_shape=shape, mean=_numbers(mean, "--mean"), std=_numbers(std, "--std")
    )
    names = None
    if class_names is not None:
        names = [c.strip() for c in class_names.split(",")]
        if len(names) != owner.num_classes or not all(names):
            raise InputError(
                f"--class-names has {len(names)} names, the model has {owner.num_classes} classes"
            )
    server = make_server(
        owner, host=host, port=port, input_shape=shape, faults=faults, class_names=names
    )
    try:
        sys.stdout.write(f"serving {model} on {server.url}\n")
        sys.stdout.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
@handle_errors
def keygen(
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            metavar="NAME",
            help="Writes NAME.key (private, mode 0600) and NAME.pub (public).",
            show_default=False,
        ),
    ],
    passphrase_env: PassphraseEnvOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing NAME.key and NAME.pub.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make an Ed25519 key pair for signing fingerprints and commitments.

    Keep NAME.key secret (encrypt it with --passphrase-env); publish NAME.pub.
    Example: ipguard keygen -o owner
    """  # fmt: skip
    from ipguard.signing import key_paths, passphrase_from_env, write_keypair

    key_path, _ = key_paths(output)
    _check_output(key_path)
    key_file, pub_file, kid = write_keypair(
        output, passphrase=passphrase_from_env(passphrase_env), force=force
    )
    info = {"private_key": str(key_file), "public_key": str(pub_file), "key_id": kid,
            "encrypted": passphrase_env is not None}  # fmt: skip
    if as_json:
        _print_json(info)
        return
    table = _kv_table("key pair written")
    table.add_row("private key", escape(f"{key_file} (mode 0600: keep it secret)"))
    table.add_row("public key", escape(f"{pub_file} (publish it)"))
    table.add_row("key id", kid)
    table.add_row("encrypted", "yes" if passphrase_env is not None else "no")
    out.print(table)


@app.command()
@handle_errors
def sign(
    fingerprint_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A fingerprint file.", show_default=False)
    ],
    key: Annotated[
        Path, typer.Option("--key", metavar="NAME.key", help="Private key from ipguard keygen.")
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write the signature (default FILE.sig)."),
    ] = None,
    passphrase_env: PassphraseEnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a detached, dated signature FILE.sig of a fingerprint file (left unchanged).

    ipguard inspect FILE and ipguard verify FILE --pubkey NAME.pub check it.
    """
    from ipguard.signing import load_private_key, passphrase_from_env, sign_fingerprint

    if output is not None:
        _check_output(output)
    private = load_private_key(key, passphrase_from_env(passphrase_env))
    sig_file, record = sign_fingerprint(fingerprint_file, private, output)
    info = {"signature_file": str(sig_file)}
    info |= {k: v for k, v in record.items() if k != "signature"}
    if as_json:
        _print_json(info)
        return
    table = _kv_table("signature written")
    for name in ("signature_file", "fingerprint_digest", "key_id", "signed_at"):
        table.add_row(name.replace("_", " "), escape(str(info[name])))
    out.print(table)


@app.command()
@handle_errors
def commit(
    fingerprint_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A fingerprint file.", show_default=False)
    ],
    weights: Annotated[
        Path,
        typer.Option(
            "--weights",
            metavar="FILE",
            help="The owner's weights the fingerprint was made from (.safetensors or a .pt "
            "state dict; any file is hashed).",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write it (default FILE.commit.json)."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", metavar="NAME.key", help="Sign the commitment with this key."),
    ] = None,
    passphrase_env: PassphraseEnvOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a dated commitment tying the fingerprint to your weights, to publish or timestamp.

    It records the fingerprint's digest, the SHA-256 of the weights file and of their state
    dict (checked against the fingerprint's owner_sha256), the method and its parameters.
    ipguard verify FILE --commitment C.json checks a fingerprint against it.
    """  # fmt: skip
    from ipguard.signing import load_private_key, make_commitment, passphrase_from_env

    target = output if output is not None else Path(f"{fingerprint_file}.commit.json")
    _check_output(target)
    private = load_private_key(key, passphrase_from_env(passphrase_env)) if key else None
    record = make_commitment(fingerprint_file, weights, target, private_key=private)
    if as_json:
        _print_json({"file": str(target), **record})
        return
    table = _kv_table("commitment written")
    table.add_row("file", escape(str(target)))
    for name in ("fingerprint_digest", "owner_sha256", "weights_file_sha256",
                 "weights_state_sha256", "weights_note", "committed_at"):  # fmt: skip
        table.add_row(name.replace("_", " "), escape(str(record[name])))
    table.add_row("signed", f"key {record['key_id']}" if "key_id" in record else "no")
    out.print(table)
    err.print("publish or timestamp it now (docs/evidence.md)")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="ipguard")


if __name__ == "__main__":
    main()
