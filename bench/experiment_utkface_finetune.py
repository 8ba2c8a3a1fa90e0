"""Experiment: Levi & Hassner's released age net fine-tuned on UTKFace, 5-fold cross-validation.

The faces of ``faces/utkface_full`` (3000 UTKFace chips, 200 x 200) whose age lies inside one of the
Adience groups (2400 of them; label = that group's index, Levi's groups) are split into ``--folds`` folds by
a seeded permutation (fold k = every k-th face of it). For each fold, a fresh copy of Levi's age net
(``levi/models/age_net.caffemodel``, its train_val and solver of fold 0, Levi's mean image) is
evaluated on the fold's faces (before), fine-tuned on the other folds' faces, in a seeded random order (as a
shuffled ``convert_imageset`` LMDB would hold them), with Caffe's solver semantics and the train_val's
random 227 crops and mirrors, and evaluated again (after): exact and 1-off accuracy, centre crop (the
eval protocol of :func:`agegender.evaluation.evaluate`). The per-fold table and the mean +- std are printed
and everything is written to ``OUT/experiment.json`` (and each fold's run under ``OUT/fold_K/``).

    python bench/experiment_utkface_finetune.py                             # the full experiment
    python bench/experiment_utkface_finetune.py --folds 2 --faces 120 --max-iter 3 --batch-size 8   # a smoke run
    python bench/experiment_utkface_finetune.py --device cuda --precision bf16
    python bench/experiment_utkface_finetune.py --devices cuda:0,cuda:1,cuda:2,cuda:3,cuda:4   # folds side by side
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import common


def fold_lists(out: Path, folds: int, faces: int | None, seed: int) -> tuple[Path, int]:
    """Write ``train_K.txt`` / ``test_K.txt`` for every fold under ``out``; returns the image folder and
    the number of faces used."""
    import numpy as np

    from agegender.folds import ImageList
    from agegender.training import age_group_list
    from agegender.zoo.cards import LEVI_AGE_LABELS

    images = common.shared_root() / "faces" / "utkface_full"
    with open(common.require_file(images / "labels.tsv")) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    listed = age_group_list([r["file"] for r in rows], [float(r["age"]) for r in rows], LEVI_AGE_LABELS)
    order = np.random.default_rng(seed).permutation(len(listed))
    if faces is not None:
        order = order[:faces]
    out.mkdir(parents=True, exist_ok=True)
    for k in range(folds):
        test = order[k::folds]
        held_out = set(test.tolist())
        train = np.array([i for i in order if i not in held_out])
        train = train[np.random.default_rng([seed, k]).permutation(len(train))]
        for name, picks in (("train", train), ("test", test)):
            pairs = [(listed.paths[i], int(listed.labels[i])) for i in picks]
            ImageList.from_pairs(pairs).write(out / f"{name}_{k}.txt")
    return images, len(order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=common.REPO / "bench" / "_work" / "utkface_finetune")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--faces", type=int, default=None, help="use only this many of the 2400 in-group faces")
    parser.add_argument("--only", default=None, help="train only these folds, e.g. 0 or 0,3 (default: all)")
    parser.add_argument("--max-iter", type=int, default=300, help="iterations per fold (default 300: ~8 epochs)")
    parser.add_argument("--batch-size", type=int, default=50, help="Levi's train_val batch size")
    parser.add_argument("--base-lr", type=float, default=None, help="override the solver's base_lr (0.001)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--devices", default=None, help="spread the folds over these devices, e.g. cuda:0,cuda:1")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    args = parser.parse_args()

    from agegender.training import DataOptions, FoldJob, Overrides, TrainOptions, train_folds

    levi = common.shared_root() / "levi"
    definitions = levi / "age_net_definitions"
    lists = args.out / "lists"
    images, count = fold_lists(lists, args.folds, args.faces, args.seed)
    for line in common.machine_lines():
        print(line)
    print(f"Levi's age net on {count} UTKFace faces (ages inside the Adience groups), {args.folds} folds; "
          f"{args.max_iter} iterations x batch {args.batch_size}, base_lr "
          f"{'of the solver' if args.base_lr is None else format(args.base_lr, 'g')}, {args.precision}")
    data = DataOptions(mean_file=levi / "models" / "mean.binaryproto", train_list=lists / "train_{fold}.txt",
                       test_list=lists / "test_{fold}.txt", images=images)
    overrides = Overrides(max_iter=args.max_iter, batch_size=args.batch_size, base_lr=args.base_lr,
                          snapshot=max(args.max_iter // 2, 1), test_interval=0, display=max(args.max_iter // 10, 1))
    options = TrainOptions(device=args.device, precision=args.precision, seed=args.seed, handle_signals=True)
    jobs = [FoldJob(train_val=definitions / "train_val_test_fold_is_0.prototxt",
                    solver=definitions / "solver_test_fold_is_0.prototxt", out_dir=args.out / f"fold_{k}", fold=k,
                    weights=levi / "models" / "age_net.caffemodel", deploy=definitions / "deploy.prototxt",
                    target="age", name="levi_age_utkface", data=data, overrides=overrides, options=options,
                    evaluate_before=True) for k in range(args.folds)]
    if args.only is not None:
        wanted = {int(k) for k in args.only.split(",")}
        jobs = [job for job in jobs if job.fold in wanted]
    started = time.perf_counter()
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    summary = train_folds(jobs, args.out, devices=devices)
    seconds = time.perf_counter() - started

    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    rows = []
    for fold in summary["folds"]:
        before, after = fold["before"] or {}, fold["after"] or {}
        rows.append([fold["fold"], after.get("n", "-"), pct(before.get("exact")), pct(after.get("exact")),
                     pct(before.get("one_off")), pct(after.get("one_off")), f"{fold['train'].get('seconds', 0):.0f}"])

    def mean_std(which: str, key: str) -> str:
        entry = (summary.get(which) or {}).get("mean_std", {}).get(key) or {}
        return "-" if entry.get("mean") is None else f"{100 * entry['mean']:.1f} ± {100 * (entry.get('std') or 0):.1f}"

    rows.append(["mean ± std", "", mean_std("before", "exact"), mean_std("after", "exact"),
                 mean_std("before", "one_off"), mean_std("after", "one_off"), ""])
    print(common.table(["fold", "test faces", "exact before %", "exact after %", "1-off before %", "1-off after %",
                        "train s"], rows))
    print(f"total {seconds:.0f} s")
    record = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "faces": count,
              "seconds": seconds, "machine": common.machine_lines(), "table": rows, "summary": summary}
    from agegender._atomic import atomic_write_text

    atomic_write_text(args.out / "experiment.json", json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'experiment.json'}")


if __name__ == "__main__":
    main()
