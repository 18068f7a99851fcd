"""The ``ipguard`` command: a thin layer that parses, calls the library and prints.

Each command parses its options (:mod:`ipguard.cli.options`), calls one library operation
(:mod:`ipguard.operations`, or :mod:`ipguard.fingerprint.signing` and
:mod:`ipguard.evaluation.demo`) and prints
the result (:mod:`ipguard.cli.render`). Results go to stdout (a table, or JSON with
``--json``); progress and diagnostics go to stderr. Every error a user can cause is printed
as one line, ``error: ...``, with a non-zero exit and no traceback (``ipguard --debug ...``
shows it).
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from ipguard._version import __version__
from ipguard.cli.options import (
    AdapterOpt,
    AuthEnvOpt,
    BudgetOpt,
    CalibrationFileOpt,
    CalibrationModelsOpt,
    ChannelOrderArg,
    ChannelOrderOpt,
    ClassNamesOpt,
    CommitmentOpt,
    ConcurrencyOpt,
    CopyRateOpt,
    DeviceOpt,
    EncodingArg,
    EvalConfigOpt,
    EvalDataOpt,
    EvalMethodOpt,
    EvalOutDirOpt,
    EvalParamOpt,
    EvalSweepOpt,
    EvalThreadsOpt,
    EvalWorkersOpt,
    EvalZooOpt,
    FingerprintFileArg,
    FnrOpt,
    FpBoundsOpt,
    FpDataOpt,
    FpInputShapeOpt,
    FpKOpt,
    FpLrOpt,
    FpMaxIterOpt,
    FpMaxRoundsOpt,
    FpMethodOpt,
    FpNOpt,
    FpOutputOpt,
    FpParamOpt,
    FpRecipeOpt,
    FprOpt,
    FpSeedOpt,
    FpStartOpt,
    FpTargetOpt,
    HttpBatchSizeOpt,
    InputDtypeArg,
    InputDTypeOpt,
    JournalOpt,
    JsonOpt,
    LayoutArg,
    LayoutOpt,
    MeanOpt,
    ModelArg,
    OrderSeedOpt,
    PassphraseEnvOpt,
    PubkeyOpt,
    QueryBatchOpt,
    RateLimitOpt,
    RayOpt,
    RetriesOpt,
    ScaleOpt,
    SequentialOpt,
    SizeOpt,
    StdOpt,
    SuspectsArg,
    SuspectWeightsOpt,
    ThresholdOpt,
    TimeoutOpt,
    TrustPickleOpt,
    VerifyJsonOpt,
    WeightsOpt,
    http_fields,
    parse_bounds,
    parse_channels,
    parse_params,
    parse_shape,
    preprocess_of,
    sequential_of,
)
from ipguard.cli.render import (
    err,
    fail,
    generation_note,
    kv_table,
    out,
    print_demo,
    print_evaluation_run,
    print_fingerprint,
    print_inspection,
    print_json,
    print_scan,
    print_verification,
    progress,
)
from ipguard.errors import IPGuardError
from ipguard.fingerprint.methods.base import GenerationProgress
from ipguard.fingerprint.methods.ipguard import DEFAULT_K
from ipguard.io import check_output
from ipguard.verdict.decision import DEFAULT_THRESHOLD

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
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Map library errors to one line on stderr and exit 1; unexpected ones to exit 3."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except IPGuardError as e:
            if _state["debug"]:
                raise
            raise fail(as_flags(str(e), fn.__name__)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as e:  # noqa: BLE001 - last resort: still one line
            if _state["debug"]:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise fail(
                f"internal error: {type(e).__name__}: {first[:200]} "
                "(rerun with ipguard --debug for the traceback, and please report it)",
                3,
            ) from None

    return wrapper  # type: ignore[return-value]


_PARAM = re.compile(r"`([a-z][a-z0-9_]*)`")
#: library parameters whose flag is not their name with hyphens
_FLAG_OF = {"params": "--param", "adapters": "--adapter"}


def as_flags(message: str, command: str) -> str:
    """The library names its parameters in backquotes (`` `fpr` ``); on the command line
    they are the ``command``'s flags (``--fpr``), or plain words where it has none."""
    commands: dict[str, Any] = getattr(typer.main.get_command(app), "commands", {})
    sub = commands.get(command.replace("_", "-"))
    flags = {o for p in getattr(sub, "params", []) for o in p.opts if o.startswith("--")}

    def flag(m: re.Match[str]) -> str:
        name = m.group(1)
        option = _FLAG_OF.get(name, "--" + name.replace("_", "-"))
        return option if option in flags else name.replace("_", " ")

    return _PARAM.sub(flag, message)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ipguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _state["debug"] = debug


@app.command()
@handle_errors
def fingerprint(
    model: ModelArg,
    output: FpOutputOpt,
    weights: WeightsOpt = None,
    data: FpDataOpt = None,
    input_shape: FpInputShapeOpt = None,
    method: FpMethodOpt = None,
    n: FpNOpt = 100,
    k: FpKOpt = None,
    lr: FpLrOpt = None,
    max_iter: FpMaxIterOpt = None,
    start: FpStartOpt = None,
    target: FpTargetOpt = None,
    max_rounds: FpMaxRoundsOpt = None,
    param: FpParamOpt = None,
    recipe: FpRecipeOpt = None,
    seed: FpSeedOpt = 0,
    calibration_models: CalibrationModelsOpt = None,
    bounds: FpBoundsOpt = "0,1",
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
) -> None:
    """Fingerprint an owner model and write the fingerprint file.

    Example: ipguard fingerprint ipguard.models.nets:digits_cnn --weights owner.safetensors
    --data digits -o owner.fp.safetensors
    """
    from ipguard.operations import make_fingerprint

    given = {
        "k": k, "lr": lr, "max_iter": max_iter, "start": start.value if start else None,
        "target": target.value if target else None, "max_rounds": max_rounds,
    }  # fmt: skip
    params = {key: v for key, v in given.items() if v is not None} | parse_params(param or [])
    shape = parse_shape(input_shape) if input_shape is not None else None
    notes: list[str] = []  # printed once the fingerprint is made
    with progress("fingerprinting", n) as bar:

        def report(p: GenerationProgress) -> None:
            if p.round == 0 and p.stage:  # training surrogates: the bar counts their work
                bar.total(p.max_iter)
                bar(p.iteration, p.stage)
            else:
                bar.total(n)
                bar(p.converged, generation_note(p))

        fp = make_fingerprint(
            model, weights=weights, data=data, input_shape=shape, method=method, n=n,
            params=params, seed=seed, bounds=parse_bounds(bounds),
            mean=parse_channels(mean, "--mean"), std=parse_channels(std, "--std"),
            device=device, trust_pickle=trust_pickle, output=output, progress=report,
            calibration_models=calibration_models, recipe=recipe,
            note=lambda text: bar(n, text), warn=notes.append,
        )  # fmt: skip
        bar.total(n)
        bar(n, "done")
    for text in notes:
        err.print(f"note: {text}", markup=False, highlight=False, soft_wrap=True)
    print_fingerprint(fp, output, as_json)


@app.command()
@handle_errors
def verify(
    fingerprint_file: FingerprintFileArg,
    suspects: SuspectsArg = None,
    weights: SuspectWeightsOpt = None,
    adapter: AdapterOpt = None,
    threshold: ThresholdOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    device: DeviceOpt = "cpu",
    batch_size: QueryBatchOpt = None,
    calibration: CalibrationFileOpt = None,
    fpr: FprOpt = None,
    sequential: SequentialOpt = False,
    fnr: FnrOpt = None,
    copy_rate: CopyRateOpt = None,
    seed: OrderSeedOpt = None,
    as_json: VerifyJsonOpt = False,
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
    commitment: CommitmentOpt = None,
) -> None:
    """Query suspects with the fingerprint and judge each one: pirated or not.

    Only the suspects' top-1 labels are used. The exit status is 0 whatever the verdicts;
    read them from the table or the JSON. With --pubkey the fingerprint must carry a valid
    signature (FILE.sig) by that key, and with --commitment it must match the commitment;
    otherwise the exit status is 1 and no suspect is queried.
    """
    from ipguard.fingerprint.signing import EvidenceOptions
    from ipguard.operations import verify_suspects
    from ipguard.suspects.adapters import QueryOptions
    from ipguard.verdict.decision import DecisionOptions

    http = http_fields(
        http_batch_size, concurrency, timeout, retries, rate_limit, budget, auth_env, encoding,
        class_names, journal,
    )  # fmt: skip
    pre = preprocess_of(size, channel_order, scale, mean, std, layout, input_dtype)
    report = verify_suspects(
        fingerprint_file, suspects or [], weights=weights or [], adapters=adapter or [],
        decision=DecisionOptions(threshold, calibration, fpr),
        query=QueryOptions(pre, http, device, batch_size, trust_pickle),
        evidence=EvidenceOptions(pubkey, commitment),
        sequential=sequential_of(sequential, fnr, copy_rate, seed),
    )  # fmt: skip
    print_verification(report, fingerprint_file, as_json, fpr_asked=fpr is not None)


@app.command()
@handle_errors
def calibrate(
    fingerprint_file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A fingerprint file.", show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Where to write the calibrated fingerprint.", show_default=False
        ),
    ],
    models: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="INDEPENDENT...",
            help="Models you trust to be independent of yours, in any suspect form (a file, "
            "package.module:factory or arch:NAME with --weights, hf:FOLDER, a URL); at "
            "least 3, 16 or more to state 1%.",
            show_default=False,
        ),
    ] = None,
    independents: Annotated[
        list[str] | None,
        typer.Option("--independents", metavar="MODEL", help="The same as INDEPENDENT..."),
    ] = None,
    weights: Annotated[
        list[Path] | None,
        typer.Option("--weights", metavar="FILE", help="Weights of each factory independent."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="Instead of independents: your labelled training data; surrogate "
            "independents of your model are trained on it (needs --model).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="With --data: your model (package.module:factory or "
            "arch:NAME with --model-weights).",
        ),
    ] = None,
    model_weights: Annotated[
        Path | None, typer.Option("--model-weights", help="With --data: your model's weights.")
    ] = None,
    calibration_models: CalibrationModelsOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
    trust_pickle: TrustPickleOpt = False,
) -> None:
    """Calibrate a fingerprint: store how often independent models match it, so that verify
    states the false-positive rate of its verdicts. The points are unchanged; the new file
    has a new digest (sign it again).

    Example: ipguard calibrate owner.fp.safetensors other1.onnx other2.onnx other3.onnx
    -o owner.calibrated.fp.safetensors
    """
    from ipguard.operations import calibrate_fingerprint
    from ipguard.suspects.adapters import QueryOptions

    with progress("calibrating", 1) as bar:
        fp = calibrate_fingerprint(
            fingerprint_file, independents=[*(models or []), *(independents or [])],
            weights=weights or [], data=data, model=model, model_weights=model_weights,
            models=calibration_models,
            query=QueryOptions(device=device, trust_pickle=trust_pickle), output=output,
            note=lambda text: bar(0, text),
        )  # fmt: skip
    print_fingerprint(fp, output, as_json)


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
    from ipguard.operations import inspect_fingerprint

    found = inspect_fingerprint(fingerprint_file, pubkey=pubkey)
    print_inspection(found, fingerprint_file, as_json)
    if not found.valid:
        assert found.signature is not None
        raise fail(f"signature check failed: {'; '.join(found.signature.problems)}")


@app.command()
@handle_errors
def archs(as_json: JsonOpt = False) -> None:
    """List the built-in architectures (for suite configs, and arch:NAME with --weights).

    Example: ipguard fingerprint arch:resnet20 --weights owner.safetensors --data
    cifar10:cifar-10-python.tar.gz -o owner.fp.safetensors
    """
    from ipguard.models.nets import describe_architectures, native_input_shape

    described = describe_architectures()
    if as_json:
        print_json([
            {"name": name, "input": list(native_input_shape(name)), "description": text}
            for name, text in described.items()
        ])  # fmt: skip
        return
    table = Table(title="Built-in architectures (ipguard.models.nets.ARCHITECTURES)")
    for column in ("name", "native input C,H,W", "description"):
        table.add_column(column)
    for name, text in described.items():
        table.add_row(name, ",".join(map(str, native_input_shape(name))), escape(text))
    out.print(table)


@app.command()
@handle_errors
def evaluate(
    config: EvalConfigOpt = None,
    zoo: EvalZooOpt = Path("runs/zoo"),
    out_dir: EvalOutDirOpt = Path("runs/eval"),
    threads: EvalThreadsOpt = 1,
    sweep: EvalSweepOpt = False,
    data: EvalDataOpt = None,
    method: EvalMethodOpt = None,
    param: EvalParamOpt = None,
    ray: RayOpt = None,
    workers: EvalWorkersOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Measure the fingerprint on a suite of pirated copies and independent models.

    Builds (or loads from the zoo) the owner, every attacked copy and every independent
    model, fingerprints the owner, verifies them all, and reports robustness, uniqueness,
    ARUC, ROC-AUC and TPR at 1% FPR per attack family. Writes results.json, suspects.csv,
    plots (PNG and SVG), the fingerprint and a calibration file for verify --calibration.
    An interrupted run resumes where it stopped.
    """
    from ipguard.operations import evaluate_suite

    with progress("evaluating", 1) as bar:
        run = evaluate_suite(
            config, zoo=zoo, out=out_dir, data=data, method=method,
            params=parse_params(param or []) or None, sweep=sweep, threads=threads,
            progress=bar.stage_of("evaluating"), sweep_progress=bar.stage_of("sweeping k and n"),
            ray=ray, workers=workers, device=device,
            task_progress=bar.tasks_of(
                f"building on Ray ({ray})" if ray else f"building with {workers} workers"
            ),
        )  # fmt: skip
    print_evaluation_run(run, zoo, as_json)


@app.command()
@handle_errors
def scan(
    fingerprints: Annotated[
        Path,
        typer.Option(
            "--fingerprints",
            metavar="DIR",
            help="A folder of fingerprint files (*.safetensors).",
            show_default=False,
        ),
    ],
    suspects: Annotated[
        Path,
        typer.Option(
            "--suspects",
            metavar="LIST_FILE",
            help="One suspect per line: SPEC, or SPEC WEIGHTS for package.module:factory and "
            "arch:NAME; a field that starts with # starts a comment.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="RESULTS",
            help="Results folder: matrix.csv, pairs.csv, scan.json, and the journal "
            "pairs.jsonl that resumes a stopped scan.",
            show_default=False,
        ),
    ],
    fpr: Annotated[
        float | None,
        typer.Option(
            "--fpr",
            help="Target false-positive rate of calibrated fingerprints [default: for each, "
            "the smallest of 1/2/5/10% its calibration can state, as verify].",
            show_default=False,
        ),
    ] = None,
    ray: RayOpt = None,
    threads: Annotated[
        int, typer.Option("--threads", help="Torch threads per suspect (CPUs per Ray task).")
    ] = 1,
    device: DeviceOpt = "cpu",
    trust_pickle: TrustPickleOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Judge many suspects against many fingerprints: a suspects x fingerprints matrix.

    Each suspect is loaded once and answers the points of every fingerprint in batched
    passes; each pair is judged as verify judges it (the fingerprint's calibration for
    --fpr, or without it the smallest of 1/2/5/10% the calibration can state; else the
    uncalibrated default) and says so. Finished pairs are journaled, so a
    stopped scan resumes without querying them again.
    """
    from ipguard.scale.scan import scan as run_scan

    with progress("scanning", 1) as bar:
        result = run_scan(
            fingerprints, suspects, out_dir, fpr=fpr, ray=ray, threads=threads, device=device,
            trust_pickle=trust_pickle, progress=bar.stage,
        )  # fmt: skip
    print_scan(result, as_json)


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
    from ipguard.evaluation.demo import run_demo
    from ipguard.fingerprint.methods.ipguard import IPGuard
    from ipguard.verdict.decision import check_threshold

    tau = check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)
    method = IPGuard() if k is None else IPGuard(k=k)
    if save is not None:
        check_output(save)
    with progress("demo", 5) as bar:
        stages = iter(range(1, 6))
        result = run_demo(
            seed, method=method, n=n, threshold=tau,
            on_stage=lambda message: bar(next(stages) - 1, message),
        )  # fmt: skip
        bar(5, "done")
    if save is not None:
        result.fingerprint.save(save)
    print_demo(result, tau, as_json)


@app.command()
@handle_errors
def serve(
    model: ModelArg,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="C,H,W of one input, e.g. 1,8,8 (hf: models: from their processor config).",
        ),
    ] = None,
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
    from ipguard.operations import open_server
    from ipguard.suspects.serve import FaultSpec

    if input_shape is None and not model.startswith("hf:"):
        raise typer.BadParameter("required unless MODEL is hf:FOLDER", param_hint="--input-shape")
    faults = FaultSpec(
        delay=fault_delay, drop=fault_drop, http429=fault_429, http500=fault_500, seed=fault_seed
    )
    server = open_server(
        model, input_shape=None if input_shape is None else parse_shape(input_shape),
        weights=weights,
        mean=parse_channels(mean, "--mean"), std=parse_channels(std, "--std"), host=host,
        port=port, class_names=None if class_names is None else class_names.split(","),
        threads=threads, faults=faults, trust_pickle=trust_pickle,
    )  # fmt: skip
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
    from ipguard.fingerprint.signing import key_paths, passphrase_from_env, write_keypair

    key_path, _ = key_paths(output)
    check_output(key_path)
    key_file, pub_file, kid = write_keypair(
        output, passphrase=passphrase_from_env(passphrase_env), force=force
    )
    info = {"private_key": str(key_file), "public_key": str(pub_file), "key_id": kid,
            "encrypted": passphrase_env is not None}  # fmt: skip
    if as_json:
        print_json(info)
        return
    table = kv_table("key pair written")
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
    from ipguard.fingerprint.signing import load_private_key, passphrase_from_env, sign_fingerprint

    if output is not None:
        check_output(output)
    private = load_private_key(key, passphrase_from_env(passphrase_env))
    sig_file, record = sign_fingerprint(fingerprint_file, private, output)
    info = {"signature_file": str(sig_file)}
    info |= {k: v for k, v in record.items() if k != "signature"}
    if as_json:
        print_json(info)
        return
    table = kv_table("signature written")
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
    from ipguard.fingerprint.signing import load_private_key, make_commitment, passphrase_from_env

    target = output if output is not None else Path(f"{fingerprint_file}.commit.json")
    check_output(target)
    private = load_private_key(key, passphrase_from_env(passphrase_env)) if key else None
    record = make_commitment(fingerprint_file, weights, target, private_key=private)
    if as_json:
        print_json({"file": str(target), **record})
        return
    table = kv_table("commitment written")
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
