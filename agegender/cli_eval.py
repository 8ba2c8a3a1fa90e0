"""``agegender eval`` (the papers' Adience protocol, per fold and across folds) and ``agegender predict``
(face crops -> age group / gender). A thin layer over :mod:`agegender.evaluation`; registered in cli.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .cli import ZOO_HELP, ProgressBars, _stderr, _stdout, _usage, _warn, handle_errors

DEFAULT_MODEL = "levi_age"
ENGINE_HELP = "torch (our module, CPU or --device cuda) or onnx (ONNX Runtime on the verified ONNX export)."


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _mean_std(entry: dict | None, percent: bool = True) -> str:
    if not entry or entry.get("mean") is None:
        return "-"
    scale = 100.0 if percent else 1.0
    std = entry["std"] or 0.0
    return f"{scale * entry['mean']:.1f} ± {scale * std:.1f}"


def _parse_mean_values(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers, e.g. 104,117,123",
                                 param_hint="--mean-values")
    return values


def _model_name(name: Optional[str], model: Optional[str], prototxt: Optional[Path]) -> Optional[str]:
    if name is not None and model is not None and name != model:
        raise _usage("give the model once: as NAME or with --model")
    chosen = name or model
    if chosen is not None and prototxt is not None:
        raise _usage("give a zoo model NAME or --prototxt, not both")
    if chosen is None and prototxt is None:
        return DEFAULT_MODEL
    return chosen


# --- eval ---------------------------------------------------------------------------------------------
@handle_errors
def eval_command(
    ctx: typer.Context,
    name: Optional[str] = typer.Argument(None, help=f"A zoo model (see `agegender zoo`); default {DEFAULT_MODEL}."),
    model: Optional[str] = typer.Option(None, "--model", "-M", help="The same as NAME."),
    prototxt: Optional[Path] = typer.Option(None, "--prototxt", "-p", help="Deploy prototxt (instead of a zoo NAME)."),
    weights: Optional[str] = typer.Option(
        None, "--weights", "-w", help="Caffemodel; '{fold}' in the path stands for the fold (one model per fold)."),
    mean: Optional[str] = typer.Option(
        None, "--mean", "-m", help="Mean image (.binaryproto); '{fold}' allowed. Default: the model's own."),
    mean_values: Optional[str] = typer.Option(None, "--mean-values", help="Per-channel means B,G,R instead of --mean."),
    fold: str = typer.Option("0", "--fold", "-f", help="Test fold K (0..4), a list such as 0,2, or 'all'."),
    adience_root: Optional[Path] = typer.Option(
        None, "--adience-root", help="Folder of the Adience faces at the fold lists' paths (with the lists of --zoo)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Output folder of `agegender data build`: its TARGET_test_lmdb per fold."),
    data: Optional[str] = typer.Option(
        None, "--data", help="Test LMDB or 'path label' list ('{fold}' allowed), instead of the fold lists."),
    images: Optional[Path] = typer.Option(None, "--images", help="With a --data list: the folder its paths are in."),
    ages: Optional[Path] = typer.Option(
        None, "--ages", help="Tab-separated file with 'file' and 'age' columns (e.g. UTKFace labels.tsv): MAE in years."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=ZOO_HELP + " Holds the fold lists and mean images."),
    variant: Optional[str] = typer.Option(None, "--variant", help="aligned, mixed or unaligned (default: the model's)."),
    target: Optional[str] = typer.Option(None, "--target", help="age or gender (default: the model's)."),
    oversample: bool = typer.Option(False, "--oversample/--center", help="Also score ten crops (4 corners + center, "
                                    "mirrored) per face, averaged, as the papers' over-sampled figures."),
    engine: str = typer.Option("torch", "--engine", help=ENGINE_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="torch engine: cpu or cuda[:N] (default cpu)."),
    precision: str = typer.Option("fp32", "--precision", help="torch engine: fp32 (exact), tf32 (GPU matmuls and convolutions in TF32), bf16 or fp16 autocast."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Net inputs per forward pass (crops)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Threads decoding image files."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Leave out listed images that are missing."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Folder for eval.json and confusion.png (default ./agegender-out/eval/NAME/)."),
    json_path: Optional[Path] = typer.Option(
        None, "--json", help="Write the JSON here (every figure, per-image predictions and probabilities)."),
) -> None:
    """Evaluate a model on the Adience folds as the papers did: exact and 1-off accuracy, center crop and
    ten-crop over-sampling, confusion matrix, expected-age MAE; per fold and mean ± std across folds.

    The test images come from the fold lists of the Lapuschkin repository (--zoo) with the Adience faces
    (--adience-root), or from LMDBs built by `agegender data build` (--data-dir), or from any LMDB or list
    (--data). Each fold's model uses that fold's mean image. Prints the table, writes every figure and
    every image's prediction and probabilities (in input order) as JSON, and the confusion matrix as PNG.

    Examples:

        agegender eval --fold 0 --adience-root ~/adience/faces --zoo ~/lapuschkin

        agegender eval gender_imdbwiki_vgg16 -w 'vgg16_fold{fold}.caffemodel' --fold all --data-dir data --oversample

        agegender eval -p deploy.prototxt -w w.caffemodel -m mean.binaryproto --data test_lmdb --json out.json
    """
    from .evaluation.protocol import evaluate_plan, parse_folds, plan_evaluation

    chosen = _model_name(name, model, prototxt)
    if target is not None and target not in ("age", "gender"):
        raise typer.BadParameter(f"{target!r}: must be age or gender", param_hint="--target")
    if engine not in ("torch", "onnx"):
        raise typer.BadParameter(f"{engine!r}: must be torch or onnx", param_hint="--engine")
    if engine == "onnx" and (device is not None or precision != "fp32"):
        raise _usage("--device and --precision belong to the torch engine")
    try:
        folds = parse_folds(fold)
    except Exception as exc:  # an AgegenderError from parsing: a usage mistake here
        raise typer.BadParameter(str(exc), param_hint="--fold") from None
    err = _stderr()
    with err.status("resolving the model and the test data"):
        plan = plan_evaluation(model=chosen, prototxt=prototxt, weights=weights, mean=mean,
                               mean_values=_parse_mean_values(mean_values), zoo=zoo, folds=folds, target=target,
                               variant=variant, data=data, images=images, data_dir=data_dir,
                               adience_root=adience_root, ages_file=ages,
                               on_missing="skip" if skip_missing else "fail")
    for warning in plan.warnings:
        _warn(err, warning)
    with ProgressBars() as bars:
        report = evaluate_plan(plan, engine=engine, device=device, precision=precision, oversample=oversample,
                               batch_size=batch_size, workers=workers,
                               progress=lambda k, done, total: bars.update(f"fold {k}", done, total))
    _print_eval_table(report, oversample)

    from ._atomic import atomic_write_text
    from .evaluation.plots import plot_confusion

    folder = out if out is not None else (json_path.parent if json_path is not None
                                          else Path("agegender-out") / "eval" / plan.model)
    json_file = json_path if json_path is not None else folder / "eval.json"
    plot_file = folder / (f"{json_path.stem}.confusion.png" if json_path is not None and out is None
                          else "confusion.png")
    atomic_write_text(json_file, json.dumps(report.as_dict(), indent=1) + "\n")
    key = "confusion_oversampled" if oversample else "confusion"
    folds_text = ", ".join(map(str, report.summary["folds"]))
    plot_confusion(report.summary[key], plan.label_names, plot_file,
                   f"{plan.model}: fold{'s' if len(report.results) > 1 else ''} {folds_text}"
                   + (" (10 crops)" if oversample else ""))
    _stdout().print(f"wrote {json_file}, {plot_file}", soft_wrap=True)


def _print_eval_table(report, oversample: bool) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    plan = report.plan
    age = plan.target == "age"
    table = Table(title=f"{plan.model}: {plan.target}, {plan.variant} ({report.engine})")
    columns = ["fold", "images", "exact %"] + (["1-off %"] if age else [])
    if oversample:
        columns += ["exact % (10 crops)"] + (["1-off % (10 crops)"] if age else [])
    if age:
        columns += ["MAE years" + (" (10 crops)" if oversample else "")]
    for column in columns:
        table.add_column(column, justify="right")
    for fold, result in report.results.items():
        row = [str(fold), str(result.n), _percent(result.metrics["exact"])]
        if age:
            row.append(_percent(result.metrics["one_off"]))
        if oversample:
            ten = result.metrics["oversampled"]
            row.append(_percent(ten["exact"]))
            if age:
                row.append(_percent(ten["one_off"]))
        if age:
            mae = (result.metrics["oversampled"] if oversample else result.metrics)["mae_years"]
            row.append("-" if mae is None else f"{mae:.2f}")
        table.add_row(*row)
    if len(report.results) > 1:
        summary = report.summary
        table.add_section()
        row = ["mean ± std", str(summary["n"]), _mean_std(summary["mean_std"].get("exact"))]
        if age:
            row.append(_mean_std(summary["mean_std"].get("one_off")))
        if oversample:
            row.append(_mean_std(summary["mean_std_oversampled"].get("exact")))
            if age:
                row.append(_mean_std(summary["mean_std_oversampled"].get("one_off")))
        if age:
            key = "mean_std_oversampled" if oversample else "mean_std"
            row.append(_mean_std(summary[key].get("mae_years"), percent=False))
        table.add_row(*row)
    console = _stdout()
    console.print(table)
    if age:
        reference = next(iter(report.results.values())).metrics.get("mae_reference")
        console.print(f"MAE: expected age (softmax over the group midpoints) against the {reference}; "
                      "std across folds: population (ddof=0)", soft_wrap=True)


# --- predict ------------------------------------------------------------------------------------------
@handle_errors
def predict_command(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(..., help="Face crops (JPEG, PNG, ...)."),
    models: Optional[list[str]] = typer.Option(
        None, "--model", "-M", help="Zoo model(s), repeatable (default: levi_age and levi_gender)."),
    prototxt: Optional[Path] = typer.Option(None, "--prototxt", "-p", help="Deploy prototxt (instead of --model)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Caffemodel (with --prototxt or a "
                                           "Lapuschkin --model)."),
    mean: Optional[Path] = typer.Option(None, "--mean", "-m", help="Mean image (.binaryproto); default: the model's."),
    target: Optional[str] = typer.Option(None, "--target", help="With --prototxt: age or gender (default: by classes)."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=ZOO_HELP),
    fold: int = typer.Option(0, "--fold", help="Which fold's mean image a Lapuschkin model uses."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, help="How many classes to list per image."),
    oversample: bool = typer.Option(False, "--oversample", help="Average ten crops (corners + center, mirrored)."),
    resize: bool = typer.Option(True, "--resize/--no-resize", help="Resize to 256 x 256 first, as the training data."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
) -> None:
    """Predict the age group and/or gender of face crops with the zoo's models (or your own files).

    Each image is resized to 256 x 256 as the training LMDBs were, center-cropped minus the mean image (or
    over-sampled with --oversample) and classified. Age models also give the expected age in years.

    Examples:

        agegender predict face1.jpg face2.jpg

        agegender predict face.jpg --model levi_gender --top-k 1 --json

        agegender predict face.jpg --prototxt deploy.prototxt --weights w.caffemodel --mean mean.binaryproto
    """
    from .caffe2torch.api import load
    from .evaluation.predict import predict_faces
    from .evaluation.protocol import infer_target
    from .folds.transforms import CaffeTransform
    from .zoo import get_card, resolve
    from .zoo.cards import GENDER_LABELS, LEVI_AGE_LABELS

    if prototxt is not None and models:
        raise _usage("give --model or --prototxt, not both")
    if prototxt is not None and weights is None:
        raise _usage("--prototxt needs --weights")
    jobs = []  # (name, prototxt, caffemodel, mean file, mean values, target, labels)
    err = _stderr()
    if prototxt is not None:
        if mean is None:
            raise _usage("--prototxt needs --mean (the mean image the net was trained with)")
        chosen_target = target or infer_target(prototxt)
        labels = LEVI_AGE_LABELS if chosen_target == "age" else GENDER_LABELS
        jobs.append((prototxt.parent.name or prototxt.stem, prototxt, weights, mean, None, chosen_target, labels))
    else:
        names = models or ["levi_age", "levi_gender"]
        if weights is not None and len(names) > 1:
            raise _usage("--weights fits one --model")
        for model_name in names:
            card = get_card(model_name, zoo)
            with err.status(f"resolving {model_name}"):
                resolved = resolve(model_name, weights=weights, zoo=zoo, fold=fold, progress=True)
            for warning in resolved.warnings:
                _warn(err, warning)
            mean_file = mean or resolved.mean_file
            values = None if mean_file is not None else resolved.preprocessing.mean_values
            jobs.append((model_name, resolved.prototxt, resolved.caffemodel, mean_file, values, card.target,
                         tuple(card.labels)))
    results = []
    for model_name, deploy, caffemodel, mean_file, values, job_target, labels in jobs:
        with err.status(f"{model_name}: {len(images)} image(s)"):
            net = load(deploy, caffemodel)
            crop = int(net.blob_shapes[net.input_names[0]][-1])
            transform = CaffeTransform.from_values(crop_size=crop, mean_file=mean_file, mean_value=values)
            results += predict_faces(net, [str(p) for p in images], transform, target=job_target, label_names=labels,
                                     model=model_name, top_k=top_k, oversample=oversample,
                                     resize=(256, 256) if resize else None)
    if as_json:
        typer.echo(json.dumps([p.as_dict() for p in results], indent=2))
        return
    from rich.table import Table

    table = Table(title="predictions" + (" (10 crops)" if oversample else ""))
    for column in ("image", "model", "prediction", "probability", f"top {top_k}", "expected age"):
        table.add_column(column, justify="right" if column in ("probability", "expected age") else "left")
    for p in sorted(results, key=lambda p: (p.path, p.model)):
        table.add_row(p.path, p.model, p.label, f"{p.probability:.3f}",
                      ", ".join(f"{name} {prob:.2f}" for name, prob in p.top_k),
                      "" if p.expected_age is None else f"{p.expected_age:.1f}")
    _stdout().print(table)
