"""The CLI's shared option types and the parsing of option strings into library arguments.

Every option that more than one command takes is defined here once, with its help text;
so are ``verify``'s, grouped by the library option object they build
(:func:`preprocess_of`, :func:`http_fields`, :func:`sequential_of`; the decision's and the
evidence's map one to one onto :class:`~ipguard.verdict.decision.DecisionOptions` and
:class:`~ipguard.fingerprint.signing.EvidenceOptions`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ipguard.errors import InputError
from ipguard.fingerprint.methods.ipguard import DEFAULT_K, DEFAULT_LR
from ipguard.verdict.decision import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from ipguard.suspects.adapters import Preprocess
    from ipguard.verdict.sequential import SequentialOptions


# -- parsing -----------------------------------------------------------------------------------
def parse_numbers(text: str | None, what: str, count: int | None = None) -> list[float] | None:
    """``1,2,3`` as floats (``count`` of them, if given); None stays None."""
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


def parse_shape(text: str) -> tuple[int, int, int]:
    """``--input-shape C,H,W``."""
    parts = text.split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"--input-shape must be C,H,W integers, got {text!r}") from None
    if len(dims) != 3 or min(dims) < 1:
        raise InputError(f"--input-shape must be three positive integers C,H,W, got {text!r}")
    return (dims[0], dims[1], dims[2])


def parse_bounds(text: str) -> tuple[float, float]:
    """``--bounds low,high``."""
    values = parse_numbers(text, "--bounds", 2)
    assert values is not None
    return (values[0], values[1])


def parse_channels(text: str | None, what: str) -> tuple[float, ...] | None:
    """``--mean`` / ``--std``: one number per channel, or None."""
    values = parse_numbers(text, what)
    return None if values is None else tuple(values)


def parse_params(items: Sequence[str]) -> dict[str, Any]:
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


# -- options ---------------------------------------------------------------------------------
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
        "--weights, arch:NAME with --weights (a built-in architecture such as "
        "arch:resnet20 or arch:resnet18; see `ipguard archs`), or hf:FOLDER (a Hugging Face "
        "image classifier saved with save_pretrained; input size and normalisation from its "
        "preprocessor_config.json; needs the [hf] extra).",
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
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Run on a Ray cluster (auto, HOST:PORT, ray://HOST:PORT, or local for one started "
        "here): one task per model to build or suspect to scan, with --threads CPUs each; the "
        "same results as a local run. Needs the ray extra (docs/scaling.md).",
        show_default=False,
    ),
]
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


CalibrationModelsOpt = Annotated[
    int | None,
    typer.Option(
        "--calibration-models", metavar="K", help="Train K surrogate independents (the "
        "owner's architecture on --data, other seeds; cached) and store their matches as the "
        "fingerprint's calibration, so verify states its false-positive rate. Default: 16 "
        "when --data has labels and the owner is a factory or arch:NAME; 0: none.",
    ),
]  # fmt: skip


# -- verify: suspects, decision, sequential test, evidence --------------------------------------
FingerprintFileArg = Annotated[
    Path, typer.Argument(metavar="FILE", help="A fingerprint file.", show_default=False)
]
SuspectsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="SUSPECT...",
        help="Suspects, each picked by its form: an http(s):// label API, a model.onnx "
        "file (run with ONNX Runtime), a TorchScript archive (.pt, .pts, .torchscript), "
        "package.module:factory or arch:NAME (each takes the next --weights), hf:FOLDER "
        "(a Hugging Face image classifier, fed as its own processor config says), or "
        "package.module:function called as function(x) -> labels.",
        show_default=False,
    ),
]
SuspectWeightsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--weights", metavar="FILE",
        help="Weights for each package.module:factory or arch:NAME suspect, in order.",
    ),
]  # fmt: skip
AdapterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--adapter", metavar="MODULE:FUNCTION",
        help="A label-only suspect: package.module:function, called as "
        "function(x) -> labels with x (N,C,H,W) in the fingerprint's bounds.",
    ),
]  # fmt: skip
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="Matching rate at or above which a suspect is judged pirated. Default: the "
        "fingerprint's calibration for --fpr, or "
        f"{DEFAULT_THRESHOLD:g} for an uncalibrated fingerprint (no error rate; "
        "docs/defaults.md).",
    ),
]
QueryBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help="Points per query (default 256), or per step with --sequential (default 10).",
        show_default=False,
    ),
]
CalibrationFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration", metavar="FILE",
        help="A calibration file from ipguard evaluate: decide with its threshold (for a "
        "target false-positive rate) and give each suspect a p-value. Wins over the "
        "fingerprint's own calibration.",
    ),
]  # fmt: skip
FprOpt = Annotated[
    float | None,
    typer.Option(
        "--fpr",
        help="Target false-positive rate of the fingerprint's own calibration: the "
        "threshold is the lowest matching rate an independent model reaches with at most "
        "this probability (docs/evaluation.md). Default: 0.01, or the smallest of 0.02, "
        "0.05, 0.1 that the calibration can state (the verdict says which).",
    ),
]
SequentialOpt = Annotated[
    bool,
    typer.Option(
        "--sequential",
        help="Ask the points in a random order, --batch-size at a time, and stop as soon "
        "as the answers decide at --fpr and --fnr (fewer queries to a paid API). Needs a "
        "calibrated fingerprint or --calibration (docs/evaluation.md).",
    ),
]
FnrOpt = Annotated[
    float | None,
    typer.Option(
        "--fnr",
        help="With --sequential: the chance that a copy matching at least --copy-rate is "
        "cleared by evidence before the end (default 0.05); the test adds at most this "
        "to the fixed-n miss rate of such a copy.",
        show_default=False,
    ),
]
CopyRateOpt = Annotated[
    float | None,
    typer.Option(
        "--copy-rate",
        help="With --sequential: the matching rate copies are assumed to reach at least "
        "(default: the threshold).",
        show_default=False,
    ),
]
OrderSeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="With --sequential: fixes the order of the points (default 0); rerun with "
        "the same seed and --journal to resume without re-asking any point.",
        show_default=False,
    ),
]
VerifyJsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object per suspect.")]
CommitmentOpt = Annotated[
    Path | None,
    typer.Option(
        "--commitment", metavar="FILE",
        help="A commitment from ipguard commit: the fingerprint must match it (digest "
        "and owner weights), else exit 1.",
    ),
]  # fmt: skip


def preprocess_of(
    size: int | None, channel_order: ChannelOrderOpt, scale: float, mean: str | None,
    std: str | None, layout: LayoutOpt, dtype: InputDTypeOpt,
) -> Preprocess:  # fmt: skip
    """The suspects' preprocessing from its options."""
    from ipguard.suspects.adapters import Preprocess

    return Preprocess(
        size=size, channel_order=channel_order.value, scale=scale,
        mean=parse_channels(mean, "--mean"), std=parse_channels(std, "--std"),
        layout=layout.value, dtype=dtype.value,
    )  # fmt: skip


def http_fields(
    batch_size: int | None, concurrency: int | None, timeout: float | None,
    retries: int | None, rate_limit: float | None, budget: int | None, auth_env: str | None,
    encoding: EncodingOpt | None, class_names: Path | None, journal: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """The HTTP options given (None: not given), as fields of
    :class:`~ipguard.suspects.http_client.HTTPOptions`."""
    from ipguard.suspects.http_client import read_class_names

    return {
        "batch_size": batch_size, "concurrency": concurrency, "timeout": timeout,
        "retries": retries, "rate_limit": rate_limit, "budget": budget, "auth_env": auth_env,
        "encoding": None if encoding is None else encoding.value,
        "class_names": None if class_names is None else read_class_names(class_names),
        "journal": journal,
    }  # fmt: skip


def sequential_of(
    sequential: bool, fnr: float | None, copy_rate: float | None, seed: int | None
) -> SequentialOptions | None:
    """The sequential test's options with ``--sequential``, else None (its options refused)."""
    from ipguard.verdict.sequential import SequentialOptions

    if not sequential:
        given = [f for f, v in (("--fnr", fnr), ("--copy-rate", copy_rate), ("--seed", seed))
                 if v is not None]  # fmt: skip
        if given:
            raise InputError(f"{', '.join(given)} only apply with --sequential")
        return None
    return SequentialOptions(fnr, copy_rate, seed)


# -- fingerprint's options ---------------------------------------------------------------------
FpOutputOpt = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="Where to write the fingerprint (.safetensors).",
        show_default=False,
    ),
]
FpDataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Data spec: digits, npz:PATH, cifar10:PATH, cifar100:PATH or "
        "imagefolder:PATH, optionally followed by ?split=all|train|test, ?size=N, "
        "?labels=fine|coarse (cifar100), ?cache=0|1 (join several with &). Gives the "
        "input shape, and the start points with --start data.",
    ),
]
FpInputShapeOpt = Annotated[
    str | None, typer.Option("--input-shape", help="C,H,W of one input, if no --data.")
]
FpMethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        help="Fingerprinting method (docs/methods.md). Default: 'combined' when --data "
        "has labels and the owner is package.module:factory or arch:NAME: n IPGuard "
        "boundary points (post-processed copies) and n bridges (students), each judged at "
        "half the stated rate; it trains surrogates of the owner, cached. Else 'ipguard', "
        "and the command says so.",
        show_default=False,
    ),
]
FpNOpt = Annotated[
    int,
    typer.Option(
        "--n", "-n", help="Number of fingerprinting points (of each kind, for 'combined')."
    ),
]
FpRecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe", metavar="FILE|TABLE",
        help="How the owner was trained: a TOML or JSON file, or inline, e.g. "
        '\'{"epochs": 20, "optimizer": "sgd", "lr": 0.05, "schedule": "cosine", '
        '"augment": true}\'. Every surrogate and calibrator is trained this way, so that '
        "they stand for models trained as yours was; kept in the fingerprint. Give it: "
        "without it the bridges' surrogates fit their epochs to your model, with a generic "
        "Adam recipe.",
        show_default=False,
    ),
]  # fmt: skip
FpKOpt = Annotated[
    float | None,
    typer.Option(
        "--k", help=f"Logit margin of each point past the boundary (default {DEFAULT_K:g})."
    ),
]
FpLrOpt = Annotated[
    float | None,
    typer.Option("--lr", help=f"Adam learning rate on the input (default {DEFAULT_LR:g})."),
]
FpMaxIterOpt = Annotated[
    int | None,
    typer.Option("--max-iter", help="Adam steps per point at most (default 1000)."),
]
FpStartOpt = Annotated[
    StartPoints | None,
    typer.Option("--start", help="Start points: uniform noise or --data images (default noise)."),
]
FpTargetOpt = Annotated[
    TargetRule | None, typer.Option("--target", help="Target label rule (default random).")
]
FpMaxRoundsOpt = Annotated[
    int | None,
    typer.Option("--max-rounds", help="Rounds of new start points for failures (default 5)."),
]
FpParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="KEY=VALUE hyper-parameter of the method (VALUE parsed as JSON where it can "
        "be, e.g. eps=0.05, targeted=true); repeatable, overrides the options above.",
    ),
]
FpSeedOpt = Annotated[int, typer.Option("--seed", help="Seed of all randomness.")]
FpBoundsOpt = Annotated[str, typer.Option("--bounds", help="Valid input range low,high.")]


# -- evaluate's options ------------------------------------------------------------------------
EvalConfigOpt = Annotated[
    Path | None,
    typer.Argument(
        help="A suite config (TOML; see docs/evaluation.md). Without one: the digits suite.",
        show_default=False,
    ),
]
EvalZooOpt = Annotated[
    Path, typer.Option("--zoo", help="Model cache: finished models are never retrained.")
]
EvalOutDirOpt = Annotated[
    Path, typer.Option("--out", help="Where to write the report, plots and calibration.")
]
EvalThreadsOpt = Annotated[
    int,
    typer.Option(
        "--threads",
        help="torch CPU threads (0: torch's default); with --ray or --workers, the threads "
        "(and Ray CPUs) of each task or worker (0 means 1).",
    ),
]
EvalSweepOpt = Annotated[
    bool,
    typer.Option(
        "--sweep",
        help="Also run the paper's studies of k and n (values from the config's [sweep] "
        "table, or k in 0.5,1,2,3,5,10 and n in 10,20,50,100,200): a table and a plot of "
        "ARUC against k and n.",
    ),
]
EvalDataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Replace the config's [data] spec (e.g. cifar10:PATH, imagefolder:PATH), "
        "to point a published config at your copy of the data.",
        show_default=False,
    ),
]
EvalMethodOpt = Annotated[
    str | None,
    typer.Option(
        "--method",
        help="Replace the config's fingerprint method; a different method drops the "
        "config's params (give new ones with --param). The digits suite uses "
        "ipguard-select; --method ipguard is the paper's IPGuard (k = 3).",
        show_default=False,
    ),
]
EvalParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="KEY=VALUE parameter of the fingerprint method (JSON value); repeatable.",
    ),
]
EvalWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Build the models the zoo lacks with N local processes first (--threads "
        "each, on --device, sharing one GPU); the same models as without.",
        show_default=False,
    ),
]
