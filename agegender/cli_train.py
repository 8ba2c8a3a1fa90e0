"""``agegender train``: fine-tune or retrain a Caffe net from its train_val and solver files, per fold, with
Caffe's solver semantics. A thin layer over :mod:`agegender.training`; registered in cli.py."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Optional

import typer

from .cli import ZOO_HELP, _human, _stderr, _stdout, _usage, _warn, handle_errors
from .folds.adience import fold_path

_FOLD_FILE = re.compile(r"(fold_is_)(\d+)")
DEFAULT_OUT = Path("agegender-runs")


def _parse_folds(text: Optional[str]) -> list[Optional[int]]:
    """``--fold``: none (a train_val of no fold), ``K``, ``0,2`` or ``all``."""
    from .errors import AgegenderError
    from .evaluation.protocol import parse_folds
    from .folds.adience import NUM_FOLDS

    if text is None:
        return [None]
    try:
        folds = parse_folds(text)
    except AgegenderError as exc:
        raise typer.BadParameter(exc.message, param_hint="--fold") from None
    return list(range(NUM_FOLDS)) if folds is None else list(folds)


def _for_fold(path: Optional[Path], fold: Optional[int]) -> Optional[Path]:
    """``{fold}`` replaced, else a ``fold_is_N`` in the file name pointed at fold ``fold``."""
    if path is None or fold is None:
        return path
    if "{fold}" in str(path):
        return fold_path(path, fold)
    name = _FOLD_FILE.sub(lambda m: f"{m.group(1)}{fold}", path.name)
    return path.with_name(name)


def _default_solver(train_val: Path) -> Path:
    match = re.match(r"train_val(.*)\.prototxt$", train_val.name)
    candidates = [train_val.with_name(f"solver{match.group(1)}.prototxt")] if match else []
    candidates.append(train_val.with_name("solver.prototxt"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise _usage(f"no solver found beside {train_val} (looked for {', '.join(c.name for c in candidates)}): "
                 "give --solver")


def _parse_devices(text: Optional[str]) -> list[str] | None:
    if text is None:
        return None
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if not devices or any(not re.fullmatch(r"cpu|cuda(:\d+)?", d) for d in devices):
        raise typer.BadParameter(f"{text!r}: expected devices such as cuda:0,cuda:1 or cpu,cpu", param_hint="--devices")
    return devices


class _TrainProgress:
    """A rich progress bar per fold on stderr: iteration, loss (smoothed), accuracy, images/s, lr."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=_stderr(), transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "_TrainProgress":
        self.progress.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.progress.live.transient = True
        self.progress.stop()

    def callback(self, label: str) -> Any:
        from .training import TrainerCallback

        bars = self

        class Callback(TrainerCallback):
            def on_start(self, trainer, start_iteration):  # type: ignore[no-untyped-def]
                bars.tasks[label] = bars.progress.add_task(label, total=trainer.solver.max_iter,
                                                           completed=start_iteration, stats="")

            def on_records(self, trainer, records, images_per_second):  # type: ignore[no-untyped-def]
                last = records[-1]
                parts = [f"loss {last.smoothed_loss:.4f}"]
                parts += [f"{name} {value:.3f}" for name, value in last.outputs.items()]
                parts += [f"{images_per_second:,.0f} img/s", f"lr {last.lr:.3g}"]
                bars.progress.update(bars.tasks[label], completed=last.iteration + 1, stats="  ".join(parts))

            def on_validation(self, trainer, iteration, metrics):  # type: ignore[no-untyped-def]
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "iteration")
                bars.progress.console.print(f"{label} validation at iteration {iteration}: {shown}", soft_wrap=True)

        return Callback()


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _print_plan(plans: list[dict]) -> None:
    from rich.table import Table

    console = _stdout()
    for plan in plans:
        fold = "" if plan["fold"] is None else f"fold {plan['fold']}: "
        table = Table(title=f"{fold}{plan['name'] or plan['net']} (dry run, nothing trained)", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("plan")
        solver = plan["solver"]
        table.add_row("train_val", plan["train_val"])
        table.add_row("solver", f"{plan['solver_file']}: {solver['type']}, base_lr {solver['base_lr']:g}, "
                      f"lr_policy {solver['lr_policy']}, momentum {solver['momentum']:g}, weight_decay "
                      f"{solver['weight_decay']:g} ({solver['regularization_type']}), max_iter {solver['max_iter']}"
                      + (f", overrides {solver['overrides']}" if solver["overrides"] else ""))
        table.add_row("schedule", "; ".join(f"iter {it}: lr {lr:.6g}" for it, lr in plan["schedule"]))
        table.add_row("net", f"{plan['net']}, {plan['layers']} layers (TRAIN), {plan['parameters']:,} parameters "
                      f"({plan['trainable_parameters']:,} trainable), {_human(plan['flops_per_image'])}FLOPs/image "
                      f"forward, input {'x'.join(map(str, plan['input_shape']))}")
        table.add_row("lr_mult/decay_mult", ", ".join(f"{a:g}/{b:g}" for a, b in plan["lr_decay_multipliers"]))
        epochs = f", {plan['epochs']:.2f} epochs" if plan["epochs"] is not None else ""
        table.add_row("batch", f"{plan['batch_size']} x iter_size {plan['iter_size']} = {plan['images_per_iteration']} "
                      f"images/iteration{epochs}")
        for split, info in plan["data"].items():
            count = "[red]missing[/red]" if info["count"] is None else f"{info['count']:,} images"
            table.add_row(f"{split} data", f"{info['source']}: {count}")
        table.add_row("transforms", f"{plan['train_transform']} | {plan['test_transform']}")
        table.add_row("initialisation", plan["initialisation_summary"])
        checkpoints = plan["checkpoints"]
        its = checkpoints["iterations"]
        shown = ", ".join(map(str, its[:6])) + (f", ... {its[-1]}" if len(its) > 6 else "")
        table.add_row("checkpoints", f"{len(its)} at iterations {shown} (keep newest {checkpoints['keep'] or 'all'}) "
                      f"in {checkpoints['folder']}")
        validation = plan["validation"]
        table.add_row("validation", "none" if validation is None else (
            f"every {validation['every']} iterations, {validation['batches']} batches"
            + (", also at the start" if validation["at_start"] else "")))
        options = plan["options"]
        table.add_row("run", f"device {options['device'] or 'auto'}, {options['precision']}, channels_last "
                      f"{options['channels_last']}, compile {options['compile']}, seed {options['seed']}")
        table.add_row("output", plan["out_dir"])
        for note in plan["notes"]:
            table.add_row("note", f"[yellow]{note}[/yellow]")
        console.print(table)


def _print_results(summary: dict, out: Path) -> None:
    from rich.table import Table

    console = _stdout()
    table = Table(title=f"training summary ({out / 'summary.json'})")
    for column in ("fold", "status", "iterations", "time", "img/s", "loss start -> end", "exact", "1-off"):
        table.add_column(column, justify="right" if column not in ("status",) else "left")
    for fold in summary["folds"]:
        train = fold["train"] or {}
        after, before = fold.get("after") or {}, fold.get("before") or {}

        def change(key: str) -> str:
            if key not in after:
                return "-"
            return (f"{_pct(before.get(key))} -> " if key in before else "") + _pct(after.get(key))

        losses = "-"
        if train.get("smoothed_loss") is not None:
            losses = f"{train.get('first_smoothed_loss', float('nan')):.3f} -> {train['smoothed_loss']:.3f}"
        table.add_row("-" if fold["fold"] is None else str(fold["fold"]), fold["status"],
                      f"{train.get('iteration', '-')}", f"{train.get('seconds', 0):.1f}s",
                      f"{train.get('images_per_second', 0):,.0f}", losses, change("exact"), change("one_off"))
    mean = (summary.get("after") or {}).get("mean_std") or {}
    if len(summary["folds"]) > 1 and mean:
        def ms(key: str) -> str:
            entry = mean.get(key) or {}
            if entry.get("mean") is None:
                return "-"
            return f"{100 * entry['mean']:.1f} ± {100 * (entry.get('std') or 0):.1f}"

        table.add_section()
        table.add_row("mean", "", "", "", "", "", ms("exact"), ms("one_off"))
    console.print(table)


@handle_errors
def train(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-M", help="A zoo model (see `agegender zoo`): its "
                                        "train_val and solver of each fold (Lapuschkin's need --zoo)."),
    train_val: Optional[Path] = typer.Option(None, "--train-val", "-t", help="A train_val prototxt (V1 or V2); "
                                             "'{fold}' or a fold_is_N in its name follows --fold."),
    solver: Optional[Path] = typer.Option(None, "--solver", "-s", help="Solver prototxt (default: the solver beside "
                                          "the train_val, e.g. solver_test_fold_is_K.prototxt)."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Caffemodel to fine-tune from: layers "
                                           "copied by name, layers of another shape re-initialised from the "
                                           "prototxt's fillers. Default: Levi's released net for levi_*, else none "
                                           "(from scratch). '{fold}' allowed."),
    fold: Optional[str] = typer.Option(None, "--fold", "-f", help="Test fold K (0..4), a list such as 0,2, or "
                                       "'all' (a fresh model per fold, then a 5-fold summary)."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=ZOO_HELP),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Where the train_val's LMDBs are (e.g. "
                                             "the output of `agegender data build`): published paths are looked "
                                             "up under it by their trailing components."),
    mean_root: Optional[Path] = typer.Option(None, "--mean-root", help="The same for the mean images "
                                             "(default: --data-root), e.g. the zoo's mean_images/."),
    mean: Optional[Path] = typer.Option(None, "--mean", "-m", help="Mean image (.binaryproto) for every data layer, "
                                        "instead of the train_val's (default with --model: the model's mean image "
                                        "of the fold); '{fold}' allowed."),
    test_lmdb: Optional[Path] = typer.Option(None, "--test-lmdb", help="The fold's test LMDB (default: the train "
                                             "LMDB's sibling *_test_lmdb); '{fold}' allowed."),
    train_list: Optional[Path] = typer.Option(None, "--train-list", help="Train on a 'path label' list of new "
                                              "faces instead of the train_val's LMDB; '{fold}' allowed."),
    val_list: Optional[Path] = typer.Option(None, "--val-list", help="With --train-list: validation list."),
    test_list: Optional[Path] = typer.Option(None, "--test-list", help="With --train-list: the test list "
                                             "evaluated at the end."),
    images: Optional[Path] = typer.Option(None, "--images", help="With --train-list: the folder the list paths "
                                          "are relative to."),
    resize: int = typer.Option(256, "--resize", help="With --train-list: images resized to SIZE x SIZE, as "
                               "convert_imageset --resize_height/width does."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Leave out listed images that are missing."),
    target: Optional[str] = typer.Option(None, "--target", help="age or gender (default: from the model, or the "
                                         "number of classes: 8 age, 2 gender)."),
    max_iter: Optional[int] = typer.Option(None, "--max-iter", help="Override the solver's max_iter."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the data layers' batch_size "
                                             "(TRAIN and TEST; per process)."),
    iter_size: Optional[int] = typer.Option(None, "--iter-size", help="Override the solver's iter_size "
                                            "(gradient accumulation)."),
    base_lr: Optional[float] = typer.Option(None, "--base-lr", help="Override the solver's base_lr."),
    snapshot: Optional[int] = typer.Option(None, "--snapshot", help="Checkpoint every N iterations (override; 0: "
                                           "only at the end)."),
    test_interval: Optional[int] = typer.Option(None, "--test-interval", help="Validate every N iterations "
                                                "(override; 0: never)."),
    test_iter: Optional[int] = typer.Option(None, "--test-iter", help="Batches per validation (override)."),
    display: Optional[int] = typer.Option(None, "--display", help="Read back and log the losses every N iterations "
                                          "(override of the solver's display)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default ./agegender-runs/NAME); "
                                       "one sub-folder per fold: fold_K/."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fillers, the crops and mirrors, and dropout."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when available)."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Spread the folds over these devices, one "
                                          "process each, e.g. cuda:0,cuda:1 (no progress bars, no --resume)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (exact), tf32 (TF32 on CUDA) or bf16 "
                                  "(autocast; master weights and the update stay float32)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the net (slow to start; fast on GPUs)."),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="On CUDA, capture the whole "
                                     "step as a CUDA graph and replay it (removes per-step launch overhead)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="NHWC memory layout."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Keep the N newest checkpoints (0: all)."),
    snapshot_caffemodel: bool = typer.Option(False, "--snapshot-caffemodel", help="Also write iter_N.caffemodel "
                                             "with each checkpoint, as Caffe's snapshots."),
    resume: bool = typer.Option(False, "--resume", help="Continue each fold from its newest checkpoint (folds "
                                "already finished are kept)."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the test split at the end of each fold."),
    eval_before: bool = typer.Option(False, "--eval-before", help="Also evaluate the initial weights (before "
                                     "training) on the test split."),
    oversample: bool = typer.Option(False, "--oversample", help="Evaluation also over ten crops per face."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (net, schedule, data, checkpoints) and "
                                 "stop: nothing is loaded on a device, nothing is trained."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: the plan as JSON; otherwise the summary."),
) -> None:
    """Train (fine-tune or retrain) a Caffe net with Caffe's solver semantics, per cross-validation fold.

    The net is the TRAIN phase of the train_val prototxt (its losses, accuracy and dropout), initialised from
    --weights by layer name (layers whose shapes differ, e.g. a new fc8 head, are re-initialised from the
    prototxt's fillers with a warning) or from the fillers alone. The solver file gives the schedule:
    base_lr, lr_policy (fixed, step, multistep, inv, poly, exp, sigmoid), gamma, stepsize, momentum,
    weight_decay, max_iter, iter_size, test_interval/test_iter, snapshot, per-blob lr_mult/decay_mult
    (V1 blobs_lr/weight_decay too); the update is Caffe's SGD (the rate applied before the momentum) or
    Nesterov. Data is read as Caffe's Data layer reads it (sequentially in key order, wrapping around; random
    crop and mirror from the train_val's transform_param), from the train_val's LMDBs (remapped under
    --data-root) or from a 'path label' list of new faces (--train-list, --images).

    Per fold a fresh model is trained, then the fold's test split is evaluated (exact and, for age, 1-off
    accuracy); with several folds a summary with mean and std follows. Each fold's folder holds plan.json,
    checkpoints/iter_N.pt (every snapshot iterations; model, solver history, schedule, random generators and
    data position), train_log.csv (every iteration), val_log.csv, training_curve.png, final.caffemodel,
    final.safetensors, evaluation.json and summary.json. --resume continues bit for bit (on the CPU). Ctrl-C
    stops after the current step with a checkpoint; a NaN or infinite loss stops with exit code 8, naming the
    iteration and the last good checkpoint.

    On one GPU the step is captured as a CUDA graph and the fold's images live on the GPU (--precision bf16
    for speed). On several GPUs: torchrun --nproc_per_node=N -m agegender.cli train ... (DistributedDataParallel,
    --batch-size per GPU), or --devices cuda:0,cuda:1,... to train the folds side by side.

    Examples:

        agegender train --train-val ../shared/levi/age_net_definitions/train_val_test_fold_is_0.prototxt
      --weights ../shared/levi/models/age_net.caffemodel --data-root agegender-data --mean-root agegender-data
      --fold all --dry-run

        agegender train --model gender_imdbwiki_vgg16 --zoo ~/understanding-age-gender --weights vgg16_imdbwiki.caffemodel
      --data-root agegender-data --fold all --precision bf16

        agegender train --train-val age_train_val.prototxt --weights age_net.caffemodel --mean mean.binaryproto
      --train-list utk/train_{fold}.txt --test-list utk/test_{fold}.txt --images utkface/ --fold all --max-iter 300

        agegender train ... --fold 2 --resume                 (continue fold 2 from its newest checkpoint)
    """
    from .training import DataOptions, FoldJob, Overrides, TrainOptions, plan_fold, train_folds
    from .training.distributed import init_distributed, shutdown_distributed
    from .training.runs import prepare_fold

    if (model is None) == (train_val is None):
        raise _usage("give either --model NAME or --train-val P")
    if precision not in ("fp32", "tf32", "bf16"):
        raise typer.BadParameter(f"{precision!r}: expected fp32, tf32 or bf16", param_hint="--precision")
    if target is not None and target not in ("age", "gender"):
        raise typer.BadParameter(f"{target!r}: expected age or gender", param_hint="--target")
    if train_list is None and any(v is not None for v in (val_list, test_list, images)):
        raise _usage("--val-list, --test-list and --images go with --train-list")
    for name, value in (("--max-iter", max_iter), ("--batch-size", batch_size), ("--iter-size", iter_size)):
        if value is not None and value <= 0:
            raise typer.BadParameter(f"must be positive, not {value}", param_hint=name)
    device_list = _parse_devices(devices)
    folds = _parse_folds(fold)
    labels = None
    card = None
    if model is not None:
        from .zoo import get_card

        card = get_card(model, zoo)
        if folds == [None]:
            raise _usage("--model needs --fold K or --fold all (the model's files are per fold)")
        target = target or card.target
        labels = tuple(card.labels)
        if weights is None and card.family == "levi":
            from .zoo import resolve

            weights = resolve(model, zoo=zoo).caffemodel
    name = model or (train_val.parent.name if train_val is not None else "run")
    root = out if out is not None else DEFAULT_OUT / name
    data = DataOptions(data_root=data_root, mean_root=mean_root, mean_file=mean, test_lmdb=test_lmdb,
                       train_list=train_list, val_list=val_list, test_list=test_list, images=images, resize=resize,
                       skip_missing=skip_missing)
    overrides = Overrides(max_iter=max_iter, batch_size=batch_size, iter_size=iter_size, base_lr=base_lr,
                          snapshot=snapshot, test_interval=test_interval, test_iter=test_iter, display=display)
    options = TrainOptions(device=device, precision=precision, channels_last=channels_last, compile=compile_model,
                           cuda_graphs=cuda_graphs, seed=seed, keep_checkpoints=keep_checkpoints,
                           snapshot_caffemodel=snapshot_caffemodel)
    jobs = []
    for k in folds:
        if card is not None:
            assert k is not None
            fold_train_val, fold_solver = card.train_val(k), (_for_fold(solver, k) or card.solver(k))
        else:
            assert train_val is not None
            fold_train_val = _for_fold(train_val, k)
            assert fold_train_val is not None
            if not fold_train_val.is_file():
                from .errors import MissingFileError

                raise MissingFileError("train_val prototxt not found", path=fold_train_val)
            fold_solver = _for_fold(solver, k) if solver is not None else _default_solver(fold_train_val)
        fold_weights = weights if k is None else fold_path(weights, k)
        fold_data = data
        if card is not None and mean is None and mean_root is None and card.mean_file(k) is not None:
            fold_data = dataclasses.replace(data, mean_file=card.mean_file(k))  # the model's (fold's) mean image
        fold_out = root if k is None else root / f"fold_{k}"
        jobs.append(FoldJob(train_val=fold_train_val, solver=fold_solver, out_dir=fold_out,
                            fold=k, weights=fold_weights, target=target, labels=labels, name=name,
                            data=fold_data,
                            overrides=overrides, options=options, evaluate=evaluate, evaluate_before=eval_before,
                            oversample=oversample))
    if dry_run:
        plans = [plan_fold(job) for job in jobs]
        if as_json:
            typer.echo(json.dumps(plans if len(plans) > 1 else plans[0], indent=2, default=str))
        else:
            _print_plan(plans)
        return
    dist = init_distributed(device)
    if dist is not None and device_list:
        raise _usage("--devices spreads folds over processes; under torchrun every process trains the same fold")
    if device_list and resume:
        raise _usage("--resume is not available with --devices")
    try:
        is_main = dist is None or dist.rank == 0
        for job in jobs:  # fail before training on a bad file of any fold
            prepared = prepare_fold(job)
            if is_main:
                for note in prepared.notes:
                    _warn(_stderr(), f"fold {job.fold}: {note}")
        if device_list and len(device_list) > 1:
            with _stderr().status(f"training {len(jobs)} fold(s) on {', '.join(device_list)}"):
                summary = train_folds(jobs, root, devices=device_list)
        elif is_main:
            with _TrainProgress() as bars:
                summary = train_folds(jobs, root, callbacks_for=lambda job: [bars.callback(
                    "run" if job.fold is None else f"fold {job.fold}")], resume=resume, dist=dist,
                    devices=device_list)
        else:
            summary = train_folds(jobs, root, resume=resume, dist=dist)
    finally:
        shutdown_distributed(dist)
    if not is_main:
        return
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        _print_results(summary, root)
    interrupted = [f for f in summary["folds"] if f["status"] == "interrupted"]
    if interrupted:
        last = interrupted[0]
        typer.echo(f"agegender: interrupted at iteration {last['train'].get('iteration')} of fold {last['fold']}; "
                   f"checkpoint {last['train'].get('checkpoint')} (continue with --resume)", err=True)
        raise typer.Exit(130)
