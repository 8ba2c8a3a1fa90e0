"""``agegender data ...``: build Caffe Datum LMDBs (per Adience fold, or from a list), mean images, and
describe an LMDB. A thin layer over :mod:`agegender.folds.build`; registered on the main app in cli.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(
    name="data",
    help="Adience data: build Caffe LMDBs and mean images, describe an LMDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# imported after data_app exists: cli.py imports data_app from here, whichever module is loaded first
from .cli import ProgressBars, _stderr, _stdout, _usage, _warn, handle_errors  # noqa: E402

FOLD_ROOT_HELP = "Clone of the Lapuschkin repository or its folds/ folder (default: env AGEGENDER_ZOO)."


# --- build ----------------------------------------------------------------------------------------
def _folds_to_build(fold: str) -> list[int]:
    from .folds.adience import NUM_FOLDS

    if fold.strip().lower() == "all":
        return list(range(NUM_FOLDS))
    try:
        value = int(fold)
    except ValueError:
        value = -1
    if not 0 <= value < NUM_FOLDS:
        raise typer.BadParameter(f"{fold!r}: expected a fold 0..{NUM_FOLDS - 1} or 'all'", param_hint="--fold")
    return [value]


@data_app.command("build")
@handle_errors
def build(
    ctx: typer.Context,
    adience_root: Optional[Path] = typer.Option(
        None, "--adience-root", help="Folder holding the Adience images at the lists' paths (USER/landmark_...jpg)."),
    fold: Optional[str] = typer.Option(None, "--fold", help="Test fold K (0..4) or 'all'."),
    target: Optional[str] = typer.Option(None, "--target", help="age or gender."),
    variant: Optional[str] = typer.Option(None, "--variant", help="aligned (default), mixed or unaligned."),
    zoo: Optional[Path] = typer.Option(None, "--zoo", help=FOLD_ROOT_HELP),
    list_path: Optional[Path] = typer.Option(None, "--list", help="A 'relative/path label' list file."),
    images: Optional[Path] = typer.Option(None, "--images", help="With --list: the folder the paths are relative to."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder (fold mode, default ./agegender-data) or LMDB (list mode)."),
    resize: Optional[int] = typer.Option(
        None, "--resize", help="Resize to SIZE x SIZE (default: 256 for Adience folds, none for a list)."),
    no_resize: bool = typer.Option(False, "--no-resize", help="Keep the images' own size."),
    encoded: bool = typer.Option(False, "--encoded", help="Store the image files (JPEG/PNG), not raw pixels."),
    encode_type: Optional[str] = typer.Option(
        None, "--encode-type", help="With --list: store encoded as this type (jpg, png, ...; implies --encoded): "
        "files of that extension that need no resize keep their bytes, others are re-encoded, as convert_imageset."),
    gray: bool = typer.Option(False, "--gray", help="Read the images as grey (one-channel Datums), as convert_imageset --gray."),
    shuffle: bool = typer.Option(False, "--shuffle", help="With --list: shuffle the records (seeded)."),
    seed: int = typer.Option(0, "--seed", help="With --shuffle: the shuffle's seed."),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Leave out missing and undecodable images (listed) instead of failing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --list: replace an existing output LMDB."),
) -> None:
    """Build Caffe Datum LMDBs, as convert_imageset does, with a progress bar.

    Adience fold mode writes `OUT/lmdb{,_mixed,_unaligned}/Test_fold_is_K/TARGET_{train,val,test}_lmdb` and
    `OUT/mean_image{,_mixed,_unaligned}/Test_fold_is_K/mean.binaryproto` (computed from the train LMDB; one
    per fold, shared by age and gender), the layout of Lapuschkin's train_val files. Interrupted builds
    resume when run again; finished LMDBs are kept. Missing images fail the build (listed, with a count)
    unless --skip-missing.

    Examples:

        agegender data build --adience-root ~/adience/aligned --fold 0 --target age --variant aligned

        agegender data build --adience-root ~/adience/aligned --fold all --target gender --zoo ~/lapuschkin --out data

        agegender data build --list train.txt --images ~/faces --out train_lmdb --resize 256 --shuffle

        agegender data build --list test.txt --images ~/faces --out test_lmdb --encoded

        agegender data build --list test.txt --images ~/faces --out grey_lmdb --gray --encode-type png
    """
    if no_resize and resize is not None:
        raise _usage("give --resize or --no-resize, not both")
    on_missing = "skip" if skip_missing else "fail"
    if list_path is not None:
        given = [name for name, value in (("--adience-root", adience_root), ("--fold", fold), ("--target", target),
                                          ("--variant", variant), ("--zoo", zoo)) if value is not None]
        if given:
            raise _usage(f"--list builds one LMDB; {', '.join(given)} belong to the Adience fold mode")
        if images is None or out is None:
            raise _usage("--list needs --images DIR and --out LMDB")
        _build_list(list_path, images, out, None if no_resize else resize, encoded, shuffle, seed, on_missing,
                    overwrite, gray, encode_type)
        return
    missing = [name for name, value in (("--adience-root", adience_root), ("--fold", fold), ("--target", target))
               if value is None]
    if missing:
        raise _usage(f"give --list L --images DIR --out LMDB, or the Adience fold mode: missing {', '.join(missing)}")
    if images is not None or shuffle or overwrite or encode_type is not None:
        raise _usage("--images, --shuffle, --overwrite and --encode-type belong to the --list mode")
    assert adience_root is not None and fold is not None and target is not None
    _build_folds(adience_root, _folds_to_build(fold), target, variant or "aligned", zoo,
                 out if out is not None else Path("agegender-data"), None if no_resize else (resize or 256),
                 encoded, on_missing, gray)


def _build_folds(adience_root: Path, folds: list[int], target: str, variant: str, zoo: Optional[Path], out: Path,
                 resize: Optional[int], encoded: bool, on_missing: str, gray: bool) -> None:
    from rich.table import Table

    from .folds.build import build_fold, open_folds

    fold_lists = open_folds(zoo)
    reports = []
    for fold in folds:
        with ProgressBars(prefix=f"fold {fold} ") as bars:
            reports.append(build_fold(adience_root, fold, target, variant, out, resize, encoded, on_missing,  # type: ignore[arg-type]
                                      bars.update, folds=fold_lists, gray=gray))
    table = Table(title=f"{variant} {target} LMDBs in {out}")
    for column in ("fold", "LMDB", "records", "status", "skipped"):
        table.add_column(column, justify="right" if column in ("fold", "records") else "left")
    for report in reports:
        for result in report.lmdbs.values():
            table.add_row(str(report.fold), str(result.path.relative_to(out) if result.path.is_relative_to(out)
                                                else result.path),
                          str(result.records), result.status, _skipped(result))
        table.add_row(str(report.fold), str(report.mean_file.relative_to(out) if report.mean_file.is_relative_to(out)
                                            else report.mean_file), "", report.mean_status, "")
    console = _stdout()
    console.print(table)
    err = _stderr()
    for report in reports:
        for result in report.lmdbs.values():
            _warn_skipped(err, result)


def _build_list(list_path: Path, images: Path, out: Path, resize: Optional[int], encoded: bool, shuffle: bool,
                seed: int, on_missing: str, overwrite: bool, gray: bool, encode_type: Optional[str]) -> None:
    from .folds.build import build_from_list

    with ProgressBars() as bars:
        result = build_from_list(list_path, images, out, resize, encoded, shuffle, on_missing,  # type: ignore[arg-type]
                                 seed=seed, overwrite=overwrite, progress=bars.update, gray=gray,
                                 encode_type=encode_type)
    _stdout().print(f"wrote {result.path}: {result.records} records ({result.status})"
                    + (f"; skipped {_skipped(result)}" if _skipped(result) else ""), soft_wrap=True)
    _warn_skipped(_stderr(), result)


def _skipped(result) -> str:  # type: ignore[no-untyped-def]
    parts = []
    if result.missing is not None and not result.missing.ok:
        parts.append(f"{result.missing.missing} missing")
    if result.unreadable:
        parts.append(f"{len(result.unreadable)} unreadable")
    return ", ".join(parts)


def _warn_skipped(console, result) -> None:  # type: ignore[no-untyped-def]
    if result.missing is not None and not result.missing.ok:
        _warn(console, f"{result.path.name}: skipped {result.missing.describe()}")
    if result.unreadable:
        _warn(console, f"{result.path.name}: skipped {len(result.unreadable)} image(s) OpenCV cannot decode: "
              + ", ".join(result.unreadable[:5]) + (", ..." if len(result.unreadable) > 5 else ""))


# --- mean and info --------------------------------------------------------------------------------
@data_app.command("mean")
@handle_errors
def mean(
    ctx: typer.Context,
    lmdb_path: Path = typer.Argument(..., help="A Datum LMDB folder (holding data.mdb)."),
    out: Path = typer.Option(..., "--out", "-o", help="The mean image to write (.binaryproto)."),
) -> None:
    """Compute an LMDB's mean image as Caffe's compute_image_mean does and write it as a .binaryproto.

    Example:

        agegender data mean data/lmdb/Test_fold_is_0/age_train_lmdb --out mean.binaryproto
    """
    from .folds.lmdb_io import compute_image_mean

    with ProgressBars() as bars:
        values = compute_image_mean(lmdb_path, out, progress=lambda done, total: bars.update("mean", done, total))
    channel_means = values[0].mean(axis=(1, 2), dtype="float64")
    _stdout().print(f"wrote {out}: {' x '.join(map(str, values.shape))} mean image, channel means "
                    + ", ".join(f"{v:.3f}" for v in channel_means), soft_wrap=True)


@data_app.command("info")
@handle_errors
def info(
    ctx: typer.Context,
    lmdb_path: Path = typer.Argument(..., help="A Datum LMDB folder (holding data.mdb)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Show a Datum LMDB's record count, image shapes, encoding and label histogram.

    Examples:

        agegender data info data/lmdb/Test_fold_is_0/age_test_lmdb

        agegender data info train_lmdb --json
    """
    from rich.table import Table

    from .folds.build import lmdb_info

    with ProgressBars() as bars:
        found = lmdb_info(lmdb_path, progress=bars.update)
    if as_json:
        typer.echo(json.dumps({
            "path": str(found.path), "records": found.records, "encoded": found.encoded,
            "float_data": found.float_data, "first_key": found.first_key, "last_key": found.last_key,
            "shapes": [{"shape": list(shape), "records": count} for shape, count in found.shapes.items()],
            "labels": {str(label): count for label, count in found.labels.items()},
        }, indent=2))
        return
    console = _stdout()
    raw = found.records - found.encoded - found.float_data
    kinds = ", ".join(f"{n} {kind}" for n, kind in ((raw, "raw"), (found.encoded, "encoded"),
                                                     (found.float_data, "float_data")) if n)
    console.print(f"{found.path}: {found.records} records ({kinds})", soft_wrap=True)
    console.print("shapes (C x H x W): " + ", ".join(f"{' x '.join(map(str, s))} ({n})"
                                                      for s, n in found.shapes.items()), soft_wrap=True)
    console.print(f"keys: {found.first_key} .. {found.last_key}", soft_wrap=True)
    table = Table(title="labels")
    for column in ("label", "records", "share"):
        table.add_column(column, justify="right")
    table.add_column("")
    largest = max(found.labels.values())
    for label, count in found.labels.items():
        table.add_row(str(label), str(count), f"{100 * count / found.records:.1f}%", "#" * round(30 * count / largest))
    console.print(table)

