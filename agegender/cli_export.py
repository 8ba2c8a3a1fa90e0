"""``agegender export``: a converted net as a verified ONNX file or as standalone PyTorch source.

Registered on the app in :mod:`agegender.cli`; ``convert`` calls :func:`convert_onnx` to write its ONNX file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .caffe2torch.export_onnx import DEFAULT_OPSET, OPSET_RANGE
from .cli import ZOO_HELP, _prototxt_or_name, _stderr, _stdout, _usage, handle_errors
from .errors import AgegenderError, ParityError

FORMATS = ("onnx", "python")


def _report_path(model_path: Path) -> Path:
    """The JSON report written beside an exported file: ``<stem>.export.json``."""
    return model_path.with_name(model_path.stem + ".export.json")


@handle_errors
def export(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help="A zoo model (see `agegender zoo`), e.g. levi_age."),
    prototxt: Optional[Path] = typer.Option(None, "--prototxt", "-p", help="Deploy prototxt (V1 or V2)."),
    weights: Optional[Path] = typer.Option(
        None, "--weights", "-w", help="Caffemodel. Required with --prototxt and for Lapuschkin's zoo models."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (a verified .onnx file) or python "
                            "(a standalone .py importing only torch, plus its .pt weights)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output file (.onnx / .py) or folder (default: ./agegender-out/NAME/)."),
    fp16: bool = typer.Option(False, "--fp16", help="ONNX only: float16 weights and activations (float32 I/O)."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help=f"ONNX opset ({OPSET_RANGE[0]}..{OPSET_RANGE[1]})."),
    mean: Optional[Path] = typer.Option(None, "--mean", "-m", help="Mean image (.binaryproto) to record."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=ZOO_HELP),
    fold: int = typer.Option(0, "--fold", help="Cross-validation fold whose mean image a Lapuschkin model uses."),
    reference: bool = typer.Option(True, "--reference/--no-reference",
                                   help="ONNX: also compare ONNX Runtime with OpenCV dnn reading the Caffe files."),
) -> None:
    """Export a Caffe net as a verified ONNX file, or as standalone PyTorch source.

    ONNX: opset 17 by default, dynamic batch axis, Caffe's blob names as input/output names, preprocessing
    and labels in metadata_props. The file is run in ONNX Runtime on seeded inputs (batch 1 and 7) and
    compared with the PyTorch module and OpenCV dnn before it is written; a mismatch exits with code 6 and
    writes nothing. Python: NAME.py (an nn.Module with Caffe's layer names, importing only torch) and
    NAME.pt (its state_dict), checked against the PyTorch module the same way. A report
    (NAME.export.json) is written beside the file, last, with the sha256 of the files it describes
    (an existing one is removed first: without a report, the export is unfinished).

    Examples:

        agegender export levi_age                                  (agegender-out/levi_age/levi_age.onnx)

        agegender export levi_gender --format python --out models/levi_gender.py

        agegender export --prototxt deploy.prototxt --weights age.caffemodel --out age.onnx --fp16

        agegender export age_fromscratch_googlenet --zoo ~/understanding-age-gender --weights fold0.caffemodel
    """
    from .caffe2torch.api import load
    from .card import build_model_card, write_json
    from .zoo import resolve
    from .zoo.fetch import sha256_file

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r}: must be one of {', '.join(FORMATS)}", param_hint="--format")
    if fp16 and fmt != "onnx":
        raise _usage("--fp16 applies to --format onnx only")
    _prototxt_or_name(name, prototxt)
    err = _stderr()
    zoo_card, preprocessing, warnings = None, None, []
    if name is not None:
        resolved = resolve(name, weights=weights, zoo=zoo, fold=fold, progress=True)
        zoo_card, prototxt, caffemodel = resolved.card, resolved.prototxt, resolved.caffemodel
        mean_file = mean if mean is not None else resolved.mean_file
        preprocessing = resolved.preprocessing if mean is None else None
        warnings = list(resolved.warnings)
        model_name = name
    else:
        if weights is None:
            raise _usage("--prototxt needs --weights")
        caffemodel, mean_file = weights, mean
        model_name = Path(weights).name.rsplit(".", 1)[0] or "model"
    assert prototxt is not None
    suffix = ".onnx" if fmt == "onnx" else ".py"
    if out is None:
        target = Path("agegender-out") / model_name / f"{model_name}{suffix}"
    elif out.suffix.lower() in (".onnx", ".py"):
        if out.suffix.lower() != suffix:
            raise _usage(f"--out {out} does not end in {suffix}, the extension of --format {fmt}")
        target = out
    else:
        target = out / f"{model_name}{suffix}"
    for warning in warnings:
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)

    with err.status(f"loading {prototxt} and {caffemodel}"):
        net = load(prototxt, caffemodel)
    card = build_model_card(net, name=model_name, prototxt=prototxt, caffemodel=caffemodel, mean_file=mean_file,
                            preprocessing=preprocessing, zoo_card=zoo_card, fold=fold, warnings=warnings)
    # the report goes first and comes back last, with the sha256 of the files it describes: an export
    # killed between writing its files leaves no report beside a file of another export
    report_file = _report_path(target)
    try:
        report_file.unlink(missing_ok=True)
    except OSError as exc:
        raise AgegenderError(f"cannot write here: {exc.strerror}", path=report_file) from None
    if fmt == "onnx":
        from .caffe2torch.export_onnx import export_onnx, opencv_reference

        engine = opencv_reference(prototxt, caffemodel) if reference else None
        with err.status(f"exporting {target} and verifying it in ONNX Runtime"):
            report = export_onnx(net, target, opset=opset, fp16=fp16, card=card, reference=engine)
        lines = [f"wrote {target}: {report.summary()}"]
        lines += [f"  {r.summary()}" for r in report.verification]
        files = [target]
    else:
        from .caffe2torch.export_python import export_python

        with err.status(f"writing {target} and checking it against the PyTorch module"):
            report = export_python(net, target, name=target.stem)  # type: ignore[assignment]
        written = f"{report.source_path} and {report.weights_path.name}"  # type: ignore[attr-defined]
        lines = [f"wrote {written}: {report.summary()}"]
        lines += [f"  {r.summary()}" for r in report.verification]
        files = [report.source_path, report.weights_path]  # type: ignore[attr-defined]
    write_json({"model": model_name, "prototxt": str(prototxt), "caffemodel": str(caffemodel), **report.as_dict(),
                "files": {Path(f).name: sha256_file(f) for f in files}}, report_file)
    console = _stdout()
    for line in lines + [f"report: {report_file}"]:
        console.print(line, soft_wrap=True, markup=False)


def convert_onnx(net, out_dir: Path, card: dict, prototxt: Path, caffemodel: Path,
                 reference: bool) -> tuple[dict, Optional[ParityError]]:
    """``convert``'s ONNX step: OUT/model.onnx and OUT/model.export.json. Returns the card's artefact
    entry and the ParityError of a failed verification (nothing written then), for convert to raise
    after it has written its other reports."""
    from .caffe2torch.export_onnx import export_onnx, opencv_reference
    from .card import write_json

    target = out_dir / "model.onnx"
    engine = opencv_reference(prototxt, caffemodel) if reference else None
    with _stderr().status(f"exporting {target} and verifying it in ONNX Runtime"):
        try:
            report = export_onnx(net, target, card=card, reference=engine)
        except ParityError as exc:
            return {"file": None, "passed": False, "error": exc.one_line()}, exc
    write_json(report.as_dict(), _report_path(target))
    _stdout().print(f"onnx: {report.summary()}", soft_wrap=True, markup=False)
    return {"file": target.name, "sha256": report.sha256, "opset": report.opset, "passed": report.passed,
            "summary": report.summary(), "report": _report_path(target).name}, None


__all__ = ["FORMATS", "convert_onnx", "export"]
