"""Long fuzz runs of agegender's readers (not run in CI; CI runs the bounded pass of tests/test_fuzz.py).

    python fuzz/run.py TARGET [--seconds 600] [-- LIBFUZZER_ARGS...]   coverage-guided, with atheris
    python fuzz/run.py TARGET --random 20000 [--seed 1]                 structure-aware mutations only,
                                                                         in a worker process (no atheris)
    python fuzz/run.py TARGET --replay CASE_FILE...                     run saved cases (e.g. from CI)
    python fuzz/run.py --list                                           the targets

The targets, their seeds (from ../shared, or $AGEGENDER_SHARED) and the mutators are those of
tests/fuzz_targets.py. The property is the same as in CI: each case is read, or refused with an
AgegenderError; any other exception, a crash, a hang or a peak of allocations past the target's bound
is a finding. See fuzz/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fuzz_targets import MEMORY_BASE, TARGETS, RandomChooser, Worker, _max_rss, load_seeds  # noqa: E402


class MemoryBoundExceeded(Exception):
    """A case allocated more than its target's bound (reported to libFuzzer as a finding)."""


def _corpus(name: str, folder: Path) -> Path:
    """The corpus folder of ``name``, seeded from the shared files when empty."""
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        for index, seed in enumerate(load_seeds([name])[name]):
            (folder / f"seed-{index}").write_bytes(seed)
    return folder


def run_atheris(name: str, seconds: int, corpus: Path, extra: list[str]) -> None:
    import atheris

    target = TARGETS[name]
    with atheris.instrument_imports(include=["agegender"]):
        import agegender.caffe2torch  # noqa: F401
        import agegender.folds  # noqa: F401
        import agegender.prototxt  # noqa: F401
    from agegender.errors import AgegenderError

    work = Path(tempfile.mkdtemp(prefix=f"agegender-fuzz-{name}-"))
    tracemalloc.start()

    def test_one_input(data: bytes) -> None:
        path = target.write_case(data, work)
        tracemalloc.reset_peak()
        baseline, rss_before = tracemalloc.get_traced_memory()[0], _max_rss()
        try:
            target.run(path)
        except AgegenderError:
            pass
        peak, grown = tracemalloc.get_traced_memory()[1] - baseline, _max_rss() - rss_before
        bound = MEMORY_BASE + target.memory_factor * len(data)
        if max(peak, grown) > bound:  # as in tests/fuzz_targets.run_case
            raise MemoryBoundExceeded(f"peak {peak} bytes of allocations, resident memory grown by {grown} bytes, "
                                      f"for a {len(data)}-byte case (bound {bound})")

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        if seed % 2:  # libFuzzer's own byte-level mutations, or ours (structure-aware)
            return atheris.Mutate(data, max_size)
        return target.mutate(data, RandomChooser(seed))[:max_size]

    seeds = load_seeds([name])[name]
    max_len = max(2 * max(len(s) for s in seeds), 4096)
    argv = [sys.argv[0], str(_corpus(name, corpus)), f"-max_total_time={seconds}", f"-max_len={max_len}",
            "-timeout=20", "-rss_limit_mb=6144", f"-artifact_prefix={REPO / 'fuzz' / 'artifacts'}/{name}-", *extra]
    (REPO / "fuzz" / "artifacts").mkdir(exist_ok=True)
    atheris.Setup(argv, test_one_input, custom_mutator=mutator)
    atheris.Fuzz()


def run_random(name: str, cases: int, seed: int, save: Path) -> int:
    """``cases`` structure-aware mutations of the seeds, in a worker process; returns the findings count."""
    target = TARGETS[name]
    seeds = load_seeds([name])[name]
    worker = Worker([name])
    findings, counts, started = 0, {}, time.monotonic()
    try:
        for index in range(cases):
            chooser = RandomChooser(seed * 1_000_003 + index)
            case = target.mutate(chooser.choice(seeds), chooser)
            outcome = worker.run(name, case)
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            if not outcome.acceptable:
                findings += 1
                save.mkdir(parents=True, exist_ok=True)
                saved = save / f"{name}-{seed}-{index}.case"
                saved.write_bytes(case)
                print(f"{saved}: {outcome.status} {outcome.error}\n{outcome.detail}", flush=True)
    finally:
        worker.close()
    print(f"{name}: {cases} cases in {time.monotonic() - started:.0f} s: {counts}; worker peak RSS "
          f"{worker.max_rss >> 20} MiB")
    return findings


def replay(name: str, files: list[Path]) -> int:
    worker = Worker([name])
    bad = 0
    try:
        for path in files:
            outcome = worker.run(name, path.read_bytes())
            bad += not outcome.acceptable
            print(f"{path}: {outcome.status} {outcome.error} ({outcome.seconds:.3f} s, peak {outcome.peak} bytes)")
            if outcome.detail:
                print(outcome.detail)
    finally:
        worker.close()
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", choices=sorted(TARGETS))
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--seconds", type=int, default=600, help="atheris: how long to run")
    parser.add_argument("--corpus", type=Path, help="atheris: corpus folder (default fuzz/corpus/TARGET)")
    parser.add_argument("--random", type=int, metavar="N", help="run N structure-aware cases without atheris")
    parser.add_argument("--seed", type=int, default=1, help="--random: the seed of the mutations")
    parser.add_argument("--replay", type=Path, nargs="+", metavar="CASE", help="run saved cases")
    args, extra = parser.parse_known_args()
    if args.list or args.target is None:
        for name, target in TARGETS.items():
            print(f"{name:14} {target.format:6} {target.run.__doc__ or target.run.__name__}")
        return 0
    if args.replay:
        return 1 if replay(args.target, args.replay) else 0
    if args.random:
        return 1 if run_random(args.target, args.random, args.seed, REPO / "fuzz" / "artifacts") else 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_atheris(args.target, args.seconds, args.corpus or REPO / "fuzz" / "corpus" / args.target,
                [a for a in extra if a != "--"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
