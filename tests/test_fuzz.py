"""Issue #7: every reader survives hostile and broken files. A bounded, reproducible fuzz pass.

Each reader of :data:`tests.fuzz_targets.TARGETS` (net prototxts in both dialects, solver prototxts,
caffemodels, binaryprotos, Datum records, LMDB folders, Adience fold metadata, image lists, label
maps) gets a few hundred files mutated from real seeds in ../shared, structure-aware (see
``fuzz_targets``). Every case must be read or refused with an :class:`AgegenderError`; another
exception, a crash of the worker process, a case running past its time or allocating past its memory
bound fails the test, with the case saved for replay (``python fuzz/run.py TARGET --replay FILE``).

Hypothesis draws the mutations: ``derandomize=True`` makes the pass the same on every run, no
database is written, and a failure shrinks to a small case. Longer runs: ``fuzz/`` (atheris).
"""

from __future__ import annotations

import collections
import hashlib
import struct
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agegender.errors import FileFormatError
from agegender.prototxt import Message, encode_message
from agegender.prototxt.wire import encode_varint

from .conftest import require_shared
from .fuzz_targets import TARGETS, Worker, load_seeds

# cases per reader: about 3000 in all, well under a minute on two busy cores
CASES = {"net_v1": 250, "net_v2": 250, "solver": 300, "caffemodel": 450, "binaryproto": 300, "datum": 450,
         "lmdb": 250, "fold_metadata": 200, "image_list": 300, "label_map": 250}
CASE_TIMEOUT_S = 8.0  # per case, inside the worker (generous: the CI machine is shared)
MAX_WORKER_RSS = 1 << 30  # the worker's peak resident memory over the whole pass (torch alone is ~0.3 GiB)


class HypothesisChooser:
    """The mutators' decisions, drawn by hypothesis (so a failing case shrinks)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.integer(0, len(options) - 1)]


@pytest.fixture(scope="module")
def seeds() -> dict[str, list[bytes]]:
    return load_seeds(list(TARGETS), require_shared())


@pytest.fixture(scope="module")
def worker() -> Any:
    pool = Worker(list(TARGETS), case_timeout=CASE_TIMEOUT_S)
    yield pool
    pool.close()


def _save_case(name: str, data: bytes, folder: Path) -> Path:
    path = folder / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.case"
    path.write_bytes(data)
    return path


def test_every_seed_reads(seeds: dict[str, list[bytes]], worker: Worker) -> None:
    """The unmutated seeds are read without complaint: the targets really read their files."""
    for name, found in seeds.items():
        assert found, name
        for index, data in enumerate(found):
            outcome = worker.run(name, data)
            assert outcome.status == "ok", (name, index, outcome)


@pytest.mark.parametrize("name", list(CASES))
def test_reader_survives_mutated_files(name: str, seeds: dict[str, list[bytes]], worker: Worker,
                                       tmp_path: Path) -> None:
    target = TARGETS[name]
    outcomes: collections.Counter[str] = collections.Counter()

    @settings(max_examples=CASES[name], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data: Any) -> None:
        chooser = HypothesisChooser(data)
        case = target.mutate(chooser.choice(seeds[name]), chooser)
        outcome = worker.run(name, case)
        outcomes[outcome.status] += 1
        if not outcome.acceptable:
            saved = _save_case(name, case, tmp_path)
            pytest.fail(f"{name}: {outcome.status} {outcome.error} on a {len(case)}-byte case "
                        f"(replay: python fuzz/run.py {name} --replay {saved})\n{outcome.detail}", pytrace=False)

    check()
    # the mutations are not vacuous: some files still read, most are refused
    assert outcomes["ok"] > 0 and outcomes["refused"] > CASES[name] // 4, dict(outcomes)
    assert worker.max_rss < MAX_WORKER_RSS, worker.max_rss


# --- the harness catches what it claims to catch ---------------------------------------------------------------
def test_the_harness_reports_bugs_hangs_crashes_and_memory() -> None:
    pool = Worker([], case_timeout=0.5, hard_timeout=5.0)
    try:
        found = {b: pool.run(f"selftest-{b}", b"x") for b in ("ok", "bug", "memory", "hang", "crash", "deaf-hang")}
        after = pool.run("selftest-ok", b"x")  # a new worker takes over after a crash or a hang
    finally:
        pool.close()
    assert {b: o.status for b, o in found.items()} == {
        "ok": "ok", "bug": "bug", "memory": "memory", "hang": "timeout", "crash": "crash", "deaf-hang": "timeout"}
    assert found["bug"].error == "KeyError" and found["crash"].error == "SIGSEGV"
    assert after.status == "ok" and pool.restarts == 2


# --- resource limits, case by case (each was a hang, a crash or a foreign exception before #7) ------------------
def _datum(**fields: Any) -> bytes:
    return encode_message(Message("Datum", **fields))


def _refused(worker: Worker, name: str, data: bytes, *words: str) -> None:
    outcome = worker.run(name, data)
    assert outcome.status == "refused", outcome
    for word in words:
        assert word in outcome.detail, (word, outcome.detail)


def test_declared_sizes_are_checked_before_anything_is_allocated(worker: Worker) -> None:
    # a Datum that declares 2^31 x 2^31 x 3 pixels in 60 bytes
    _refused(worker, "datum", _datum(channels=3, height=2**31 - 1, width=2**31 - 1, data=bytes(60)), "needs", "60")
    # a blob whose dimensions multiply past int64 (numpy's product would wrap to 0 and "fit" no data)
    blob = Message("BlobProto")
    blob.mutable("shape").dim = [2**62, 4, 0]
    _refused(worker, "binaryproto", encode_message(blob), "INT_MAX")
    blob.mutable("shape").dim = [0] + [400] * 8  # no values, but numpy refuses even an empty array of that shape
    _refused(worker, "binaryproto", encode_message(blob), "INT_MAX")
    blob.mutable("shape").dim = [1] * 40
    _refused(worker, "binaryproto", encode_message(blob), "40 axes")
    # a PNG that declares 60000 x 60000 pixels (10.8 GB decoded) in a few hundred bytes
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    assert ok
    bomb = bytearray(png.tobytes())
    bomb[16:24] = struct.pack(">II", 60000, 60000)
    _refused(worker, "datum", _datum(data=bytes(bomb), encoded=True), "60000 x 60000", "corrupted header")
    # a PNG chunk that declares 512 MiB in a 100-byte file: OpenCV allocated it before reading (found by
    # the worker's resident-memory check: tracemalloc does not see OpenCV's allocations)
    lying = bytearray(png.tobytes())
    idat = lying.index(b"IDAT") - 4
    lying[idat:idat + 4] = struct.pack(">I", 536_870_946)
    _refused(worker, "datum", _datum(data=bytes(lying), encoded=True), "damaged PNG",
             "'IDAT' chunk declares 536,870,946")
    # a prototxt layer whose weights would need 1.4e11 floats: refused while the net is built, not by torch
    net = TARGETS["net_v2"].seeds(require_shared())[-1].replace(b"num_output: 3", b"num_output: 4000000000")
    _refused(worker, "net_v2", net, "layer 'fc'", "INT_MAX")


def test_text_prototxts_are_bounded_in_size(tmp_path: Path) -> None:
    from agegender.prototxt import read_net
    from agegender.prototxt.files import MAX_TEXT_BYTES

    huge = tmp_path / "huge.prototxt"
    with open(huge, "wb") as handle:  # sparse: no disk space, no time
        handle.truncate(MAX_TEXT_BYTES + 1)
    with pytest.raises(FileFormatError, match="more than the 64 MiB") as info:
        read_net(huge)
    assert info.value.path == str(huge)


def test_a_float_field_split_into_many_runs_reads_whole(worker: Worker) -> None:
    """40k one-float runs of a repeated float field, split by other fields: each run was joined to the
    previous ones and rescanned the rest of the message (quadratic: a large file of them hung)."""
    run = b"\x2d" + struct.pack("<f", 1.5) + b"\xc8\x3e\x01"  # data (field 5, one float), then unknown field 1001
    blob = b"\x08\x01\x10\x01\x18\x01\x20" + encode_varint(40_000) + run * 40_000
    assert worker.run("binaryproto", blob).status == "ok"
    from agegender.prototxt import decode_message

    data = decode_message(blob, "BlobProto").data
    assert isinstance(data, np.ndarray) and data.shape == (40_000,) and bool(np.all(data == 1.5))
    # a float cut short after its tag: once an endless loop
    _refused(worker, "datum", bytes.fromhex("0801100218032801350000000035") + b"\x00", "truncated float")


def test_a_truncated_lmdb_is_refused_not_a_crash(tmp_path: Path) -> None:
    """LMDB maps data.mdb and trusts its page numbers: reading a cut file used to kill the process (SIGBUS)."""
    raw = require_shared("caffe-reference", "lmdb_sample", "encoded", "data.mdb").read_bytes()
    folder = tmp_path / "cut_lmdb"
    folder.mkdir()
    (folder / "data.mdb").write_bytes(raw[: len(raw) // 2])
    from agegender.folds.lmdb_io import DatumLMDB

    with pytest.raises(FileFormatError, match="truncated") as info:
        DatumLMDB(folder)
    assert info.value.path == str(folder / "data.mdb") and "copy or build it again" in str(info.value)


def test_long_digit_runs_are_refused_not_a_value_error(worker: Worker) -> None:
    """int() refuses more than 4300 digits with a ValueError: readers must say which line instead."""
    _refused(worker, "image_list", b"a.jpg 1\nb.jpg " + b"9" * 5000 + b"\n", ":2", "64 bits")
    header = b"\t".join(x.encode() for x in ("user_id", "original_image", "face_id", "age", "gender", "x", "y", "dx",
                                               "dy", "tilt_ang", "fiducial_yaw_angle", "fiducial_score"))
    row = b"u\ti.jpg\t1\t(25, 32)\tm\t" + b"9" * 5000 + b"\t0\t1\t1\t0\t0\t1"
    _refused(worker, "fold_metadata", header + b"\n" + row + b"\n", ":2", "64-bit integer")
    age = b"u\ti.jpg\t1\t(" + b"9" * 5000 + b", 3)\tm\t0\t0\t1\t1\t0\t0\t1"
    _refused(worker, "fold_metadata", header + b"\n" + age + b"\n", ":2", "not an age")
    # "48\x1d": str.strip() drops the group separator, int() does not accept it (found by atheris)
    spaced = b"u\ti.jpg\t1\t(25, 32)\tm\t48\x1d\t0\t1\t1\t0\t0\t1"
    assert worker.run("fold_metadata", header + b"\n" + spaced + b"\n").status == "ok"


def test_a_long_label_map_with_a_repeated_name_is_refused_quickly(worker: Worker) -> None:
    """Finding a repeated class name was quadratic in the number of lines."""
    names = b"\n".join(b"class %d" % i for i in range(200_000)) + b"\nclass 7\n"
    _refused(worker, "label_map", names, ":200001", "already on line 8")


# --- through the command line: one line naming the file, the class's exit code --------------------------------
def test_fuzz_found_errors_through_the_cli(tmp_path: Path) -> None:
    from .test_cli import _error_line, run_cli

    raw = require_shared("caffe-reference", "lmdb_sample", "encoded", "data.mdb").read_bytes()
    (tmp_path / "cut_lmdb").mkdir()
    (tmp_path / "cut_lmdb" / "data.mdb").write_bytes(raw[:12288])
    result = run_cli("data", "info", tmp_path / "cut_lmdb")
    line = _error_line(result)
    assert result.exit_code == FileFormatError.exit_code, result.stderr
    assert f"{tmp_path / 'cut_lmdb' / 'data.mdb'}: the LMDB's data.mdb is truncated" in line, line

    net = tmp_path / "huge.prototxt"
    net.write_bytes(TARGETS["net_v2"].seeds(require_shared())[-1].replace(b"num_output: 3", b"num_output: 4000000000"))
    result = run_cli("inspect", "--prototxt", net)
    line = _error_line(result)
    assert result.exit_code == 4 and f"{net}:8, layer 'fc': InnerProduct: a parameter blob" in line, line
    result = run_cli("--debug", "inspect", "--prototxt", net)
    assert result.exit_code == 4 and "Traceback" in result.stderr  # --debug shows where it was raised
