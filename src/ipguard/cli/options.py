"""The CLI's shared option types and the parsing of option strings into library arguments.

Every option that more than one command takes is defined here once, with its help text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ipguard.errors import InputError


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
