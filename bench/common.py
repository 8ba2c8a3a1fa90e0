"""Helpers shared by the benchmark scripts: paths, machine description, memory readings, statistics.

The scripts run from a checkout without installing the package: importing this module puts the
repository root first on ``sys.path``. Benchmarks print figures; they are not tests and assert nothing
about speed.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORK_DIR = REPO / "bench" / "_work"  # scratch files (git-ignored)
MIB = 1024 * 1024

# One deploy of each architecture (folders of adience/model_definitions)
ARCHS = {
    "adiencenet": "age_net_definitions",
    "caffenet": "age_fromscratch_caffereference",
    "googlenet": "age_fromscratch_googlenet",
    "vgg16": "age_imdbwiki_vgg16",
}
ARCH_NAMES = {"adiencenet": "AdienceNet", "caffenet": "CaffeNet", "googlenet": "GoogLeNet", "vgg16": "VGG16"}


def shared_root() -> Path:
    """The project's shared files (``../shared`` beside the repository, or ``$AGEGENDER_SHARED``)."""
    return Path(os.environ.get("AGEGENDER_SHARED", REPO.parent / "shared"))


def model_definitions() -> Path:
    """The folder of the Adience model definitions (Lapuschkin et al.)."""
    return shared_root() / "adience" / "model_definitions"


def require_file(path: Path) -> Path:
    """``path``, or exit with a one-line message naming it (benchmarks need the shared files)."""
    if not path.is_file():
        sys.exit(f"missing {path}: the benchmarks need the project's shared files (set AGEGENDER_SHARED)")
    return path


# --- memory -----------------------------------------------------------------------------------------
def _proc_status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    ``VmHWM`` of /proc/self/status where there is one: it is ``ru_maxrss`` of this process image only.
    ``getrusage().ru_maxrss`` itself is not used on Linux because a child started by ``subprocess``
    inherits the parent's RSS at the fork as its starting maximum, which would spoil a clean baseline.
    """
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    """Resident set size now (``VmRSS`` of /proc/self/status), in MiB; the peak where /proc is absent."""
    rss = _proc_status_mib("VmRSS")
    return peak_rss_mib() if rss is None else rss


# --- the machine ------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total memory (``MemTotal`` of /proc/meminfo) in GiB."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), which is what thread pools should use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_lines() -> list[str]:
    """A few lines naming the machine and the library versions, to print above any figures."""
    import numpy as np

    lines = [
        f"CPU: {cpu_model()}, {usable_cores()} usable core(s) (os.cpu_count() = {os.cpu_count()})",
    ]
    mem = memory_gib()
    if mem is not None:
        lines.append(f"memory: {mem:.1f} GiB")
    versions = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for module in ("torch", "cv2"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} (not installed)")
    lines.append(", ".join(versions))
    lines.append(f"platform: {platform.platform()}")
    lines.append(load_line())
    return lines


def load_line() -> str:
    """The load average now: on a shared machine, the figures mean little without it."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average: unknown"
    return f"load average (1/5/15 min): {one:.2f} {five:.2f} {fifteen:.2f} on {usable_cores()} core(s)"


# --- statistics and tables --------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    """The median of ``values`` (the figure every benchmark reports: robust to a noisy, shared machine)."""
    return float(statistics.median(list(values)))


def spread(values: Sequence[float]) -> str:
    """``min..max`` of ``values``, to show how noisy the repeats were."""
    return f"{min(values):.3g}..{max(values):.3g}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


__all__ = [
    "ARCHS", "ARCH_NAMES", "MIB", "REPO", "WORK_DIR", "cpu_model", "current_rss_mib", "load_line", "machine_lines",
    "median", "memory_gib", "model_definitions", "peak_rss_mib", "require_file", "shared_root", "spread", "table",
    "usable_cores",
]


def parse_list(text: str, known: Sequence[str] | None = None) -> list[str]:
    """A comma-separated command-line list; names outside ``known`` end the script with a message."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if known is not None:
        bad = [t for t in items if t not in known]
        if bad:
            raise SystemExit(f"unknown {bad}; choose from {', '.join(known)}")
    return items


def interleaved_times(engines: dict, warmup: int, repeats: int, min_repeats: int, budget: float,
                      wrap=None) -> dict[str, list[float]]:
    """Time each engine (a no-argument callable) ``repeats`` times, rotating which goes first each round
    so that a noisy machine hurts all of them alike. Warm-up rounds stop early for heavy cases, and the
    repeats drop towards ``min_repeats`` when one round costs more than ``budget`` / ``repeats`` seconds.
    ``wrap`` (a context manager factory, e.g. ``torch.inference_mode``) surrounds every timed call."""
    import contextlib
    import time

    names = list(engines)

    def timed(name: str) -> float:
        with wrap() if wrap else contextlib.nullcontext():
            start = time.perf_counter()
            engines[name]()
            return time.perf_counter() - start

    last: dict[str, float] = {}
    for _ in range(warmup):
        for name in names:
            last[name] = timed(name)
        if sum(last.values()) > budget / 6:  # a heavy case (VGG16 at batch 16): one warm-up round is enough
            break
    per_round = sum(last.values()) if last else 0.0
    if per_round > 0:
        repeats = max(min_repeats, min(repeats, int(budget / per_round)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(name))
    return times
