"""Issue #7: a ``convert`` or a ``data build`` killed (SIGKILL) at any point leaves no complete-looking
partial output, and running the command again completes it.

What "complete-looking" means, and what the commands guarantee:

* ``convert --out OUT``: OUT is a finished conversion exactly when ``OUT/card.json`` exists. The card is
  removed before any artefact is replaced and written last, listing every file of the conversion with
  its sha256; so if card.json exists, it parses and each file it lists is there with that sha256 (the
  files of one conversion, old or new, never a mix).
* ``data build --list L --out LMDB``: a folder named LMDB (no ``.partial`` suffix) is a finished LMDB:
  it opens and holds one record per list entry, under convert_imageset's keys. Unfinished records live
  in ``LMDB.partial``, from which the next run resumes; the resumed LMDB equals one built in one go.

Kill times are seeded: some at a random time after the start, some a random time after the command
began to write (when card.json disappears, or the ``.partial`` folder appears).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest

from .conftest import require_shared

CLI = [sys.executable, "-m", "agegender.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def _run_killed(args: list[str], cwd: Path, delay: float, started: callable | None = None) -> bool:
    """Run the command and SIGKILL it ``delay`` seconds after the start (or after ``started()`` first
    holds). True if it was killed, False if it finished first."""
    proc = subprocess.Popen(CLI + args, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if started is not None:
            deadline = time.monotonic() + 120
            while not started() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
        try:
            proc.wait(timeout=delay)
            return False
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- convert ------------------------------------------------------------------------------------------------
def _card_state(out: Path, sources: dict[str, str]) -> str:
    """The conversion OUT holds: a name of ``sources`` (caffemodel sha256 -> name) when card.json is there
    and every file it lists is there, unchanged; "unfinished" without card.json. Anything else fails."""
    card_path = out / "card.json"
    if not card_path.exists():
        return "unfinished"
    card = json.loads(card_path.read_text())  # a card that exists is whole: it was written atomically
    files = card["files"]
    assert "model.safetensors" in files, files
    for name, digest in files.items():
        assert (out / name).is_file(), f"card.json lists {name}, which is missing"
        assert _sha256(out / name) == digest, f"{name} is not the file card.json lists"
    return sources[card["source_files"]["caffemodel"]["sha256"]]


def test_killed_convert_leaves_the_old_or_the_new_conversion(tmp_path: Path) -> None:
    levi = require_shared("levi")
    age = ["--prototxt", str(levi / "age_net_definitions" / "deploy.prototxt"),
           "--weights", str(levi / "models" / "age_net.caffemodel"),
           "--mean", str(levi / "models" / "mean.binaryproto")]
    gender = ["--prototxt", str(levi / "gender_net_definitions" / "deploy.prototxt"),
              "--weights", str(levi / "models" / "gender_net.caffemodel")]
    fast = ["--skip-parity", "--no-onnx"]
    out = tmp_path / "out"
    sources = {_sha256(levi / "models" / "age_net.caffemodel"): "age",
               _sha256(levi / "models" / "gender_net.caffemodel"): "gender"}

    # how long an uninterrupted full conversion takes here, and what it writes
    started = time.monotonic()
    reference = _run(["convert", *age, "--out", str(tmp_path / "reference")], tmp_path)
    full_seconds = time.monotonic() - started
    assert reference.returncode == 0, reference.stderr
    assert _card_state(tmp_path / "reference", sources) == "age"
    expected = json.loads((tmp_path / "reference" / "card.json").read_text())["files"]
    assert set(expected) == {"model.safetensors", "parity.json", "model.onnx", "model.export.json"}

    # an older, complete conversion of another net in the folder: a killed run must not mix with it
    first = _run(["convert", *gender, *fast, "--out", str(out)], tmp_path)
    assert first.returncode == 0, first.stderr
    assert _card_state(out, sources) == "gender"

    rng = random.Random(7)
    kills, states = 0, []
    writing = lambda: not (out / "card.json").exists()  # noqa: E731  (start_output removed it)
    # (options ([] is a full convert), kill a random time after the start or after the card was removed,
    # at most this fraction of a full convert's time later)
    plans = [(fast, None, 0.45), (fast, writing, 0.03), ([], None, 0.9), ([], writing, 0.4), ([], writing, 0.4),
             (fast, writing, 0.02)]
    for extra, trigger, latest in plans:
        delay = rng.uniform(0.0, latest * full_seconds)
        kills += _run_killed(["convert", *age, *extra, "--out", str(out)], tmp_path, delay, trigger)
        states.append(_card_state(out, sources))  # "gender" (old), "age" (new) or "unfinished"
    assert kills >= 3, kills
    assert "unfinished" in states, states  # at least one kill landed between the card's removal and its return

    final = _run(["convert", *age, "--out", str(out)], tmp_path)
    assert final.returncode == 0, final.stderr
    assert _card_state(out, sources) == "age"
    card = json.loads((out / "card.json").read_text())
    assert set(card["files"]) == set(expected)
    from safetensors.numpy import load_file

    weights = load_file(out / "model.safetensors")
    reference_weights = load_file(tmp_path / "reference" / "model.safetensors")
    assert weights.keys() == reference_weights.keys()  # the same weights, bit for bit (the header's order may vary)
    assert all(np.array_equal(weights[k], reference_weights[k]) for k in weights)
    assert not list(out.glob(".*.tmp")), list(out.iterdir())  # a finished run leaves no temporary files


def test_check_output_names_what_is_wrong(tmp_path: Path) -> None:
    from agegender.card import check_output, publish_card
    from agegender.errors import FileFormatError

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    publish_card({"name": "x"}, tmp_path, ["model.safetensors"])
    assert check_output(tmp_path)["files"] == {"model.safetensors": _sha256(tmp_path / "model.safetensors")}
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(FileFormatError, match="sha256 differs"):
        check_output(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileFormatError, match="missing"):
        check_output(tmp_path)
    (tmp_path / "card.json").unlink()
    with pytest.raises(FileFormatError, match="not a finished conversion"):
        check_output(tmp_path)


# --- data build ---------------------------------------------------------------------------------------------
def _lmdb_items(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor().iternext())
    finally:
        env.close()


def _image_tree(folder: Path, images: int, entries: int) -> Path:
    """``images`` small random JPEGs under ``folder/images`` and a list of ``entries`` lines naming them."""
    rng = np.random.default_rng(3)
    (folder / "images" / "sub").mkdir(parents=True)
    names = []
    for i in range(images):
        name = f"sub/face_{i}.jpg"
        assert cv2.imwrite(str(folder / "images" / name), rng.integers(0, 256, (40 + i % 7, 36, 3), np.uint8))
        names.append(name)
    list_file = folder / f"list_{entries}.txt"
    list_file.write_text("".join(f"{names[i % images]} {i % 8}\n" for i in range(entries)))
    return list_file


@pytest.mark.parametrize("entries, extra", [(300, []), (2200, ["--encoded"])], ids=["raw", "encoded"])
def test_killed_data_build_leaves_no_complete_looking_lmdb_and_resumes(tmp_path: Path, entries: int,
                                                                       extra: list[str]) -> None:
    list_file = _image_tree(tmp_path, 40, entries)
    args = ["data", "build", "--list", str(list_file), "--images", str(tmp_path / "images"), "--resize", "256", *extra]

    started = time.monotonic()
    reference = _run([*args, "--out", str(tmp_path / "reference_lmdb")], tmp_path)
    seconds = time.monotonic() - started
    assert reference.returncode == 0, reference.stderr
    expected = _lmdb_items(tmp_path / "reference_lmdb")
    assert len(expected) == entries

    out = tmp_path / "out_lmdb"
    partial = tmp_path / "out_lmdb.partial"
    rng = random.Random(entries)
    kills = 0
    for attempt in range(4):
        trigger = (lambda: partial.exists()) if attempt % 2 else None
        kills += _run_killed([*args, "--out", str(out)], tmp_path, rng.uniform(0.0, seconds * 0.6), trigger)
        if out.exists():  # a folder without the suffix is finished: every record, convert_imageset's keys
            assert _lmdb_items(out) == expected and not partial.exists()
            shutil.rmtree(out)  # the next attempt starts afresh
    assert kills >= 2, kills

    final = _run([*args, "--out", str(out)], tmp_path)
    if final.returncode != 0:  # only when a kill came after the rename: then the LMDB is already complete
        assert "already exists" in final.stderr, final.stderr
    assert not partial.exists() and _lmdb_items(out) == expected


def test_export_report_goes_first_and_comes_back_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``export``'s report is its completeness marker, as card.json is convert's."""
    from agegender.caffe2torch import export_python as export_python_module
    from agegender.errors import ParityError

    from .fuzz_targets import _TINY_NET
    from .helpers import write_seeded_caffemodels
    from .test_cli import run_cli

    (tmp_path / "tiny.prototxt").write_text(_TINY_NET)
    model = write_seeded_caffemodels(tmp_path / "tiny.prototxt", tmp_path, layouts=("V2",))
    args = ["export", "-p", tmp_path / "tiny.prototxt", "-w", model.caffemodels["V2"], "-f", "python",
            "--out", tmp_path / "m.py"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "m.export.json").read_text())
    assert report["files"] == {"m.py": _sha256(tmp_path / "m.py"), "m.pt": _sha256(tmp_path / "m.pt")}

    def failing(*args: object, **kwargs: object) -> None:
        raise ParityError("the generated module disagrees")

    monkeypatch.setattr(export_python_module, "export_python", failing)
    result = run_cli(*args)
    assert result.exit_code == ParityError.exit_code
    assert not (tmp_path / "m.export.json").exists()  # the old report no longer vouches for the files
