"""Every bad input of issue #2 gives one clear AgegenderError: the right class, the file, the position
(line:col, layer or byte offset) and what was expected. Nothing from numpy, torch or the decoder escapes,
and corrupted files never hang."""

from __future__ import annotations

import contextlib
import signal
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pytest
import torch

from agegender.caffe2torch import init_seeded, load, load_weights, save_caffemodel
from agegender.errors import (
    AgegenderError,
    CaffemodelError,
    FileFormatError,
    MeanFileError,
    MissingFileError,
    NetDefinitionError,
    PrototxtSyntaxError,
    UnknownFieldError,
    UnsupportedLayerError,
    WeightsMismatchError,
)
from agegender.folds.mean import MeanImage
from agegender.prototxt import read_blobproto, read_caffemodel, read_net, read_solver, write_blobproto

from .conftest import require_shared


def expect(
    cls: type[AgegenderError],
    action: Callable[[], object],
    *,
    path: Path | str | None = None,
    line: int | None = None,
    col: int | None = None,
    layer: str | None = None,
    words: tuple[str, ...] = (),
) -> AgegenderError:
    """Run ``action``; it must raise exactly ``cls`` (so no foreign exception escapes), with these details."""
    with pytest.raises(AgegenderError) as info:
        action()
    err = info.value
    assert type(err) is cls, f"{type(err).__name__} instead of {cls.__name__}: {err}"
    text = str(err)
    if path is not None:
        assert err.path == str(path) and str(path) in text, text
    if line is not None:
        assert (err.line, err.col) == (line, col), text
        assert f"{path}:{line}:{col}" in text if col is not None else f"{path}:{line}" in text, text
    if layer is not None:
        assert err.layer == layer and f"'{layer}'" in text, text
    for word in words:
        assert word in text, f"{word!r} not in: {text}"
    return err


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    if not hasattr(signal, "setitimer"):  # not on Windows: the elapsed-time asserts still bound it
        yield
        return
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- malformed prototxt text --------------------------------------------------------------------------
def _net_file(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unclosed_brace(tmp_path: Path) -> None:
    path = _net_file(tmp_path, 'name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=5, col=1,
           words=("missing '}'", "opened at line 2:1"))


def test_missing_colon(tmp_path: Path) -> None:
    path = _net_file(tmp_path, 'name: "x"\nlayer {\n  name "a"\n}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=3, col=8, words=("expected ':'", "name"))


@pytest.mark.parametrize(
    ("value", "col", "word"),
    [("12x", 17, "bad number '12x'"), ("1.5", 17, "expected an integer"), ("abc", 17, "expected an integer"),
     ("99999999999", 17, "out of range"), ("-1", 17, "out of range")],
)
def test_bad_integer(tmp_path: Path, value: str, col: int, word: str) -> None:
    path = _net_file(tmp_path, f'name: "x"\nlayer {{\n  convolution_param {{\n    num_output: {value}\n  }}\n}}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=4, col=col, words=(word, "num_output")
           if "bad number" not in word else (word,))


@pytest.mark.parametrize(
    ("value", "word"),
    [("1e", "bad number '1e'"), ("1.5.3", "bad number '1.5.3'"), ("0x", "bad number '0x'"),
     ("--2", "unexpected character '-'"), ("abc", "expected a number for 'alpha'"), ('"1"', "expected a number")],
)
def test_bad_float(tmp_path: Path, value: str, word: str) -> None:
    path = _net_file(tmp_path, f'layer {{\n  lrn_param {{ alpha: {value} }}\n}}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=2, col=22, words=(word,))


def test_bad_enum_value(tmp_path: Path) -> None:
    path = _net_file(tmp_path, 'layer {\n  pooling_param {\n    pool: MAXX\n  }\n}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=3, col=11,
           words=("'MAXX'", "PoolMethod", "MAX, AVE, STOCHASTIC"))
    path = _net_file(tmp_path, 'layer {\n  pooling_param { pool: 7 }\n}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=2, col=25, words=("7", "PoolMethod"))


def test_bad_v1_layer_type(tmp_path: Path) -> None:
    path = _net_file(tmp_path, 'layers {\n  name: "a"\n  type: FROBNICATE\n}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=3, col=9,
           words=("'FROBNICATE'", "LayerType", "CONVOLUTION"))


def test_bad_string_escape(tmp_path: Path) -> None:
    path = _net_file(tmp_path, 'name: "x"\nlayer {\n  name: "con\\qv"\n}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=3, col=9, words=("escape", "\\q"))
    path = _net_file(tmp_path, 'layer {\n  name: "a\\xZZ"\n}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=2, col=9, words=("\\x escape",))
    path = _net_file(tmp_path, 'layer {\n  name: "open\n}\n')
    expect(PrototxtSyntaxError, lambda: read_net(path), path=path, line=2, col=9, words=("not closed",))


def test_other_syntax_errors(tmp_path: Path) -> None:
    cases = [
        ('name: "x"\n}\n', 2, 1, "expected a field name"),
        ('name: "x"\n@\n', 2, 1, "unexpected character '@'"),
        ('name: "a"\nname: "b"\n', 2, 1, "given twice"),
        ("layer: 3\n", 1, 8, "expected '{'"),
        ('layer {\n  bias_term: 2\n}\n', 2, 3, "unknown"),  # bias_term is not a LayerParameter field
        ('layer {\n  convolution_param { bias_term: 2 }\n}\n', 2, 34, "true or false"),
        ('layer { top: ["a" "b"] }\n', 1, 15, None),  # adjacent strings in a list are one string: fine
    ]
    for text, line, col, word in cases:
        path = _net_file(tmp_path, text)
        if word is None:
            assert list(read_net(path).layer[0].top) == ["ab"]
            continue
        cls = UnknownFieldError if word == "unknown" else PrototxtSyntaxError
        expect(cls, lambda: read_net(path), path=path, line=line, col=col,
               words=() if word == "unknown" else (word,))


def test_unknown_field_has_a_did_you_mean_hint(tmp_path: Path) -> None:
    path = _net_file(tmp_path, 'layer {\n  name: "a"\n  convolution_param {\n    num_ouput: 3\n  }\n}\n')
    err = expect(UnknownFieldError, lambda: read_net(path), path=path, line=4, col=5,
                 words=("ConvolutionParameter", "'num_ouput'", "did you mean 'num_output'?"))
    assert err.hint == "did you mean 'num_output'?"


def test_solver_with_unknown_field(tmp_path: Path) -> None:
    path = _net_file(tmp_path, 'net: "train_val.prototxt"\nbase_lr: 0.01\n  lr_polcy: "step"\n', "solver.prototxt")
    err = expect(UnknownFieldError, lambda: read_solver(path), path=path, line=3, col=3,
                 words=("SolverParameter", "'lr_polcy'"))
    assert err.hint == "did you mean 'lr_policy'?"


# --- nets that parse but are not valid nets -----------------------------------------------------------
TINY = """name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
}
layer {
  name: "fc"
  type: "InnerProduct"
  bottom: "conv1"
  top: "fc"
  inner_product_param { num_output: 5 }
}
layer {
  name: "prob"
  type: "Softmax"
  bottom: "fc"
  top: "prob"
}
"""


def test_unknown_layer_type(tmp_path: Path) -> None:
    path = _net_file(tmp_path, TINY.replace('type: "ReLU"', 'type: "Frobnicate"'))
    err = expect(UnsupportedLayerError, lambda: load(path), path=path, line=11, layer="relu1",
                 words=("'Frobnicate'", "not supported"))
    assert "ReLU" in (err.hint or "")


def test_missing_bottom(tmp_path: Path) -> None:
    path = _net_file(tmp_path, TINY.replace('bottom: "fc"', 'bottom: "fc_typo"'))
    expect(NetDefinitionError, lambda: load(path), path=path, line=24, layer="prob",
           words=("'fc_typo'", "not produced by any earlier layer", "fc"))


def test_duplicate_top(tmp_path: Path) -> None:
    path = _net_file(tmp_path, TINY.replace('  top: "prob"', '  top: "conv1"'))
    expect(NetDefinitionError, lambda: load(path), path=path, line=24, layer="prob",
           words=("'conv1'", "produced by an earlier layer"))


# --- caffemodels: truncated, corrupted, of another net ------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "tiny.prototxt").write_text(TINY)
    net = load(folder / "tiny.prototxt")
    init_seeded(net, seed=11)
    out = {"prototxt": folder / "tiny.prototxt"}
    for layout in ("V1", "V2"):
        out[layout] = folder / f"tiny_{layout}.caffemodel"
        save_caffemodel(net, net.net_def, out[layout], layout=layout)
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _top_level_fields(buf: bytes) -> list[tuple[int, int, int]]:
    """(start, payload start, end) of each top-level field, walked by hand (not by the decoder)."""
    fields, pos = [], 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        wire = key & 7
        if wire == 2:
            length, pos = _read_varint(buf, pos)
            payload, pos = pos, pos + length
        elif wire == 0:
            payload = pos
            _, pos = _read_varint(buf, pos)
        else:
            payload, pos = pos, pos + {1: 8, 5: 4}[wire]
        fields.append((start, payload, pos))
    return fields


def test_truncated_caffemodel_at_every_byte(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Cut anywhere: a CaffemodelError naming the file and byte offset, unless the cut falls between two
    top-level fields, where the file is a valid shorter message (loading then names the missing layers)."""
    net = load(tiny["prototxt"])
    cut_file = tmp_path / "cut.caffemodel"
    for layout in ("V1", "V2"):
        raw = tiny[layout].read_bytes()
        boundaries = {end for _, _, end in _top_level_fields(raw)}
        # inside a float array every cut takes the same path: there, one cut in 7 (not 4-aligned) is enough
        in_floats = np.zeros(len(raw) + 1, bool)
        for layer in read_caffemodel(tiny[layout]).layers.values():
            for blob in layer.blobs:
                at = raw.find(np.ascontiguousarray(blob).tobytes())
                in_floats[at + 1 : at + blob.nbytes] = True
        cuts = [cut for cut in range(1, len(raw)) if not in_floats[cut] or cut % 7 == 0]
        assert len(cuts) > 500
        with time_limit(60):
            for cut in cuts:
                cut_file.write_bytes(raw[:cut])
                if cut in boundaries:  # a valid protobuf message: the later layers are missing
                    try:
                        weights = read_caffemodel(cut_file)
                    except CaffemodelError as err:
                        assert "holds no layers" in str(err) and err.path == str(cut_file)
                        continue
                    if {"conv1", "fc"} - set(weights.layers):
                        expect(WeightsMismatchError, lambda: load_weights(net, weights), path=cut_file,
                               words=("no weights",))
                    continue
                err = expect(CaffemodelError, lambda: read_caffemodel(cut_file), path=cut_file)
                offset = int(str(err).split(" at byte ")[1].split()[0]) if " at byte " in str(err) else None
                assert offset is not None and 0 <= offset <= cut or "no layers" in str(err), str(err)


def test_truncated_levi_caffemodel_mid_varint_and_mid_float_array(tmp_path: Path) -> None:
    source = require_shared("levi", "models", "age_net.caffemodel")
    raw = source.read_bytes()
    fields = _top_level_fields(raw)
    # a layers entry whose length varint has several bytes: cut inside that varint
    start, payload, end = next(f for f in fields if f[1] - f[0] >= 4)
    weights = read_caffemodel(source)
    fc6 = np.ascontiguousarray(weights.layers["fc6"].blobs[0]).tobytes()
    fc6_at = raw.find(fc6[:64])
    assert fc6_at > 0
    cuts = {
        "mid-varint": payload - 1,
        "mid-string": payload + 4,
        "mid-float-array": fc6_at + 4 * 1000 + 2,
        "last byte missing": len(raw) - 1,
    }
    cut_file = tmp_path / "age_cut.caffemodel"
    for what, cut in cuts.items():
        cut_file.write_bytes(raw[:cut])
        err = expect(CaffemodelError, lambda: read_caffemodel(cut_file), path=cut_file, words=("at byte",))
        text = str(err)
        assert "truncated" in text or "remain" in text or "past" in text, (what, text)
    cut_file.write_bytes(raw[: payload - 1])
    expect(CaffemodelError, lambda: read_caffemodel(cut_file), path=cut_file,
           words=("truncated varint", f"at byte {start + 1} "))  # the length varint starts after the tag


def test_corrupted_caffemodel_never_escapes_or_hangs(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Random bit flips and garbage: read (and load) either succeed or raise a FileFormatError (or, once
    read, a WeightsMismatchError such as NaN weights); never another exception, never a hang."""
    rng = np.random.default_rng(2024)
    net = load(tiny["prototxt"])
    bad_file = tmp_path / "bad.caffemodel"
    outcomes: dict[str, int] = {}

    def attempt(data: bytes) -> None:
        bad_file.write_bytes(data)
        try:
            weights = read_caffemodel(bad_file)
            load_weights(net, weights, allow_missing=True)
            outcome = "read"
        except (FileFormatError, WeightsMismatchError) as err:
            assert err.path == str(bad_file), err
            outcome = type(err).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    start = time.perf_counter()
    with time_limit(60):
        for layout in ("V1", "V2"):
            raw = np.frombuffer(tiny[layout].read_bytes(), np.uint8)
            for _ in range(400):
                flipped = raw.copy()
                for pos in rng.integers(0, raw.size, rng.integers(1, 4)):
                    flipped[pos] ^= np.uint8(1 << int(rng.integers(0, 8)))
                attempt(flipped.tobytes())
            for _ in range(100):  # a valid start, then garbage
                keep = int(rng.integers(1, raw.size))
                attempt(raw[:keep].tobytes() + rng.integers(0, 256, int(rng.integers(1, 300)), np.uint8).tobytes())
        for _ in range(300):  # pure garbage of many lengths
            attempt(rng.integers(0, 256, int(rng.integers(1, 2000)), np.uint8).tobytes())
        for data in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\x80" * 20, b"\x0b\x0c" * 100):
            attempt(data)
    elapsed = time.perf_counter() - start
    assert outcomes.get("CaffemodelError", 0) > 300 and outcomes.get("read", 0) > 50, outcomes
    assert elapsed < 60


def test_corrupted_levi_caffemodel_structure(tmp_path: Path) -> None:
    """Bit flips in the tag and length bytes of each layer of the real file (its structure, not its weights)."""
    raw = require_shared("levi", "models", "age_net.caffemodel").read_bytes()
    fields = _top_level_fields(raw)
    bad_file = tmp_path / "age_bad.caffemodel"
    bad_file.write_bytes(raw)
    rng = np.random.default_rng(7)
    errors = 0
    with time_limit(60), open(bad_file, "r+b") as handle:
        for start, payload, _ in fields:
            pos = int(rng.integers(start, payload + 3))
            flipped = raw[pos] ^ (1 << int(rng.integers(0, 8)))
            handle.seek(pos)
            handle.write(bytes([flipped]))
            handle.flush()
            try:
                read_caffemodel(bad_file)
            except FileFormatError as err:
                assert err.path == str(bad_file) and " at byte " in str(err), str(err)
                errors += 1
            handle.seek(pos)
            handle.write(raw[pos : pos + 1])
            handle.flush()
    assert len(fields) == 21 and errors >= 10, errors  # the name, then 20 layers


def _write_jpeg(path: Path) -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:12, 4:12] = (0, 128, 255)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    path.write_bytes(data.tobytes())


def test_wrong_file_types(tiny: dict[str, Path], tmp_path: Path) -> None:
    prototxt, caffemodel = tiny["prototxt"], tiny["V2"]
    with zipfile.ZipFile(tmp_path / "weights.pth", "w") as archive:
        archive.writestr("data.pkl", b"not a caffemodel")
    _write_jpeg(tmp_path / "face.jpg")
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    (tmp_path / "empty.prototxt").write_bytes(b"")
    (tmp_path / "folder").mkdir()

    expect(FileFormatError, lambda: read_caffemodel(prototxt), path=prototxt,
           words=("expected a binary caffemodel", "found text", "swap"))
    expect(FileFormatError, lambda: load(prototxt, prototxt), path=prototxt, words=("expected a binary caffemodel",))
    expect(FileFormatError, lambda: read_net(caffemodel), path=caffemodel,
           words=("expected a text net prototxt", "binary", "swap"))
    expect(FileFormatError, lambda: load(caffemodel, caffemodel), path=caffemodel, words=("text net prototxt",))
    for reader, what in ((read_caffemodel, "caffemodel"), (read_net, "net prototxt")):
        path = tmp_path / "weights.pth"
        expect(FileFormatError, lambda: reader(path), path=path, words=(what, "zip archive"))
        path = tmp_path / "face.jpg"
        expect(FileFormatError, lambda: reader(path), path=path, words=(what, "an image"))
        path = tmp_path / "folder"
        expect(FileFormatError, lambda: reader(path), path=path, words=(what, "found a folder"))
    expect(CaffemodelError, lambda: read_caffemodel(tmp_path / "empty.caffemodel"),
           path=tmp_path / "empty.caffemodel", words=("empty", "0 bytes"))
    expect(FileFormatError, lambda: read_net(tmp_path / "empty.prototxt"), path=tmp_path / "empty.prototxt",
           words=("empty",))
    expect(FileFormatError, lambda: read_blobproto(prototxt), path=prototxt, words=("binaryproto", "text"))
    # a binaryproto where a caffemodel is expected, and the reverse: both are protobuf, of other types
    mean_path = tmp_path / "mean.binaryproto"
    write_blobproto(np.ones((3, 4, 4), np.float32), mean_path)
    expect(CaffemodelError, lambda: read_caffemodel(mean_path), path=mean_path, words=("at byte",))
    expect(CaffemodelError, lambda: read_blobproto(caffemodel), path=caffemodel, words=("at byte",))


def test_net_prototxt_given_as_solver_and_back() -> None:
    deploy = require_shared("levi", "age_net_definitions", "deploy.prototxt")
    solver = require_shared("levi", "age_net_definitions", "solver_test_fold_is_0.prototxt")
    expect(UnknownFieldError, lambda: read_solver(deploy), path=deploy, line=1, col=1, words=("'name'",))
    expect(UnknownFieldError, lambda: read_net(solver), path=solver, line=1, col=1, words=("'net'",))


def test_missing_files(tmp_path: Path) -> None:
    for reader, what in ((read_net, "net prototxt"), (read_solver, "solver prototxt"),
                         (read_caffemodel, "caffemodel"), (read_blobproto, "binaryproto"),
                         (MeanImage.from_binaryproto, "binaryproto")):
        path = tmp_path / "nope" / "missing.file"
        expect(MissingFileError, lambda: reader(path), path=path, words=(what, "not found"))
    path = tmp_path / "missing.caffemodel"
    (tmp_path / "ok.prototxt").write_text(TINY)
    expect(MissingFileError, lambda: load(tmp_path / "ok.prototxt", path), path=path)


# --- weights that do not fit the net ------------------------------------------------------------------
def test_prototxt_and_caffemodel_of_different_nets(tiny: dict[str, Path]) -> None:
    levi = require_shared("levi")
    age_model = levi / "models" / "age_net.caffemodel"
    # same layer names, the gender head has 2 outputs: fc8 is the first layer that differs
    expect(WeightsMismatchError, lambda: load(levi / "gender_net_definitions" / "deploy.prototxt", age_model),
           path=age_model, layer="fc8", words=("[2, 512]", "[1, 1, 8, 512]", "same net"))
    # an unrelated net: its first weighted layer is named
    googlenet = require_shared("adience", "model_definitions", "age_finetuning_googlenet", "deploy.prototxt")
    expect(WeightsMismatchError, lambda: load(googlenet, age_model), path=age_model, layer="conv1/7x7_s2",
           words=("no weights for any layer",))
    # the tiny net's weights in Levi's net: conv1 is the first mismatch
    expect(WeightsMismatchError, lambda: load(levi / "age_net_definitions" / "deploy.prototxt", tiny["V1"]),
           path=tiny["V1"], layer="conv1", words=("[96, 3, 7, 7]", "[4, 3, 3, 3]"))


def test_blob_shape_mismatch(tiny: dict[str, Path], tmp_path: Path) -> None:
    path = _net_file(tmp_path, TINY.replace("num_output: 5", "num_output: 6"))
    for layout in ("V1", "V2"):
        stored = "[1, 1, 5, 144]" if layout == "V1" else "[5, 144]"
        expect(WeightsMismatchError, lambda: load(path, tiny[layout]), path=tiny[layout], layer="fc",
               words=("blob 0", stored, "[6, 144]"))


def test_blob_count_mismatch(tiny: dict[str, Path], tmp_path: Path) -> None:
    path = _net_file(tmp_path, TINY.replace("num_output: 5", "num_output: 5 bias_term: false"))
    err = expect(WeightsMismatchError, lambda: load(path, tiny["V2"]), path=tiny["V2"], layer="fc",
                 words=("expects 1 blob", "has 2"))
    assert "bias_term" in (err.hint or "")


def test_missing_layer_weights(tiny: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _net_file(tmp_path, TINY.replace('name: "fc"', 'name: "fc_new"'))
    expect(WeightsMismatchError, lambda: load(path, tiny["V2"]), path=tiny["V2"], layer="fc_new",
           words=("no weights", "fc_new"))
    caplog.clear()
    with caplog.at_level("WARNING"):
        net = load(path, tiny["V2"], allow_missing=True)
    assert net.weights_report.missing == ["fc_new"] and net.weights_report.extra == ["fc"]
    # asking for it is allowed, but loudly: the layers left uninitialised are named
    loud = [r for r in caplog.records if "UNINITIALISED" in r.getMessage()]
    assert len(loud) == 1 and loud[0].levelname == "WARNING" and "fc_new" in loud[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING"):
        load(tiny["prototxt"], tiny["V2"])
    assert not [r for r in caplog.records if "UNINITIALISED" in r.getMessage()]


def test_weightless_and_empty_caffemodels(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Caffe runs a net on random weights, exit 0, when its caffemodel is empty or holds no blobs: we refuse."""
    from agegender.prototxt import write_message_binary

    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    expect(CaffemodelError, lambda: load(tiny["prototxt"], empty), path=empty, words=("empty", "0 bytes"))
    for layout in ("V1", "V2"):  # every layer, no blob: a net definition saved as binary
        stripped = read_caffemodel(tiny[layout]).net
        assert stripped is not None
        for layer in stripped.layer:
            layer.clear("blobs")
        weightless = tmp_path / f"weightless_{layout}.caffemodel"
        write_message_binary(stripped, weightless)
        expect(CaffemodelError, lambda: read_caffemodel(weightless), path=weightless,
               words=("holds no weights", f"none of its {len(stripped.layer)} layer(s)"))
        expect(CaffemodelError, lambda: load(tiny["prototxt"], weightless, allow_missing=True), path=weightless)


def test_nan_weights(tiny: dict[str, Path], tmp_path: Path) -> None:
    net = load(tiny["prototxt"], tiny["V2"])
    for value in (float("nan"), float("inf")):
        with torch.no_grad():
            net.fc.weight[1, 2] = value
        bad = tmp_path / "nan.caffemodel"
        save_caffemodel(net, net.net_def, bad, layout="V1")
        expect(WeightsMismatchError, lambda: load(tiny["prototxt"], bad), path=bad, layer="fc",
               words=("1 NaN or infinite",))


# --- mean files ---------------------------------------------------------------------------------------
def test_mean_file_of_the_wrong_size(tmp_path: Path) -> None:
    small = tmp_path / "small_mean.binaryproto"
    write_blobproto(np.full((1, 3, 200, 200), 100, np.float32), small)
    mean = MeanImage.from_binaryproto(small)
    net_file = tmp_path / "deploy.prototxt"
    err = expect(MeanFileError, lambda: mean.check_for_input(3, 227, 227, path=net_file), path=net_file,
                 words=("200 x 200", "227 x 227", str(small)))
    assert err.exit_code == MeanFileError.exit_code
    expect(MeanFileError, lambda: mean.check_for_input(3, 227, 150), path=small, words=("227 x 150",))
    expect(MeanFileError, lambda: mean.crop(14, 14, 227, 227), path=small, words=("does not fit",))

    grey = tmp_path / "grey_mean.binaryproto"
    write_blobproto(np.full((1, 1, 256, 256), 100, np.float32), grey)
    expect(MeanFileError, lambda: MeanImage.from_binaryproto(grey).check_for_input(3, 227, 227), path=grey,
           words=("1 channel", "has 3"))
    expect(MeanFileError, lambda: MeanImage.from_values([104, 117]).check_for_input(3, 227, 227),
           words=("2 channel", "has 3"))

    batch = tmp_path / "batch_mean.binaryproto"
    write_blobproto(np.zeros((2, 3, 8, 8), np.float32), batch)
    expect(MeanFileError, lambda: MeanImage.from_binaryproto(batch), path=batch, words=("[2, 3, 8, 8]",))

    nan_mean = tmp_path / "nan_mean.binaryproto"
    values = np.full((3, 8, 8), 1, np.float32)
    values[1, 2, 3] = np.nan
    write_blobproto(values, nan_mean)
    expect(MeanFileError, lambda: MeanImage.from_binaryproto(nan_mean), path=nan_mean, words=("NaN",))


def test_real_mean_refuses_a_bigger_crop() -> None:
    path = require_shared("levi", "models", "mean.binaryproto")
    mean = MeanImage.from_binaryproto(path)
    mean.check_for_input(3, 227, 227)  # fits
    expect(MeanFileError, lambda: mean.check_for_input(3, 257, 227), path=path,
           words=("256 x 256", "257 x 227"))
