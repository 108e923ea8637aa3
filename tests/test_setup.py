"""Kept setups (model/setup.py): a model's tokenizer and config as the Classifier reads them, kept by the first run
so that later runs do not import transformers, and giving the same tokens and probabilities as transformers'."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from conftest import varied_texts
from families import FAMILIES, build_family_model

from batchsent.errors import ModelLoadError
from batchsent.model.classifier import Classifier
from batchsent.model.setup import keep_setup
from batchsent.state.kept import UNUSED_DAYS, setup_folder

TEXTS = ["a fine film", "the plot was long and the acting dull, yet the music was wonderful", "ok", "", "fine"]
PAIRS = ["a second text", "and another", "x", "y", ""]


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("setup-families")
    return {family: build_family_model(root / family, family, varied_texts(200, seed=3)) for family in FAMILIES}


def built_then_kept(folder: Path, **options) -> tuple[Classifier, Classifier]:
    """A Classifier whose setup transformers built now, and one that read it back."""
    for path in setup_folder().glob("*.json"):
        path.unlink()
    built = Classifier(str(folder), device="cpu", weights=False, **options)
    again = Classifier(str(folder), device="cpu", weights=False, **options)
    assert built._pretrained is not None and again._pretrained is None  # the second never loaded transformers'
    return built, again  # their weights load with their first batch


SAME = (
    "setup",
    "identity",
    "labels",
    "activation",
    "max_length",
    "encoding_key",
    "_eos_id",
    "_pad_id",
    "_pad_type_id",
    "_wants_type_ids",
    "_input_names",
    "_graph_key",
    "token_budget",
    "batch_size",
)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_kept_setup_scores_every_family_as_the_one_transformers_built(families, family):
    built, again = built_then_kept(families[family])
    for name in SAME:
        assert getattr(again, name) == getattr(built, name), name
    for pairs in (None, PAIRS):
        ours, theirs = again.tokenized(TEXTS, pairs), built.tokenized(TEXTS, pairs)
        assert ours.flat_ids.tobytes() == theirs.flat_ids.tobytes() and ours.lengths.tolist() == theirs.lengths.tolist()
        assert (
            again.predict(TEXTS, pairs).probabilities.tobytes() == built.predict(TEXTS, pairs).probabilities.tobytes()
        )
    # and the tokens are transformers' own
    expected = built.tokenizer(TEXTS[:3], truncation=True, max_length=built.max_length)["input_ids"]
    tokens = again.tokenized(TEXTS[:3])
    assert [tokens.flat_ids[o : o + n].tolist() for o, n in zip(tokens.offsets, tokens.lengths)] == expected


@pytest.mark.parametrize(
    "options",
    [
        {"long_text": "chunk", "max_length": 8, "stride": 2},
        {"labels": "neutral,positive", "hypothesis_template": "It is {}."},
    ],
    ids=["windows", "zero-shot"],
)
def test_windows_and_zero_shot_from_a_kept_setup_are_the_same(tiny_models, options):
    model = tiny_models["nli"] if "labels" in options else tiny_models["three"]
    built, again = built_then_kept(model, **options)
    for name in SAME:
        assert getattr(again, name) == getattr(built, name), name
    long = ["word " * 40, *TEXTS]
    assert again.predict(long).probabilities.tobytes() == built.predict(long).probabilities.tobytes()


def test_split_special_tokens_survive_the_kept_setup(tmp_path):
    folder = build_family_model(tmp_path / "m", "roberta", varied_texts(100, seed=1), split_special_tokens=True)
    built, again = built_then_kept(folder)
    assert again.setup.encode_special_tokens and again.encoding_key == built.encoding_key
    text = ["a </s> inside"]
    assert again.tokenized(text).flat_ids.tobytes() == built.tokenized(text).flat_ids.tobytes()


def test_a_changed_file_or_a_damaged_setup_is_built_again(tmp_path, binary_model):
    model = tmp_path / "model"
    shutil.copytree(binary_model, model)
    built, _ = built_then_kept(model)
    (path,) = setup_folder().glob("*.json")
    path.write_text('{"identity": ')  # damaged (a disk fault: runs write setups atomically, never half a file)
    assert Classifier(str(model), device="cpu", weights=False)._pretrained is not None
    damaged = json.loads(path.read_text())
    damaged["tokenizer_json"] = damaged["tokenizer_json"][:100]  # valid JSON around a tokenizer that is not
    path.write_text(json.dumps(damaged))
    rebuilt = Classifier(str(model), device="cpu", weights=False)
    assert rebuilt._pretrained is not None and rebuilt.encoding_key == built.encoding_key
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {"0": "BAD", "1": "GOOD"}
    (model / "config.json").write_text(json.dumps(config))
    changed = Classifier(str(model), device="cpu", weights=False)
    assert changed._pretrained is not None and changed.labels == ["BAD", "GOOD"]
    assert changed.identity != built.identity
    assert len(list(setup_folder().glob("*.json"))) == 2  # one per version of the files


def test_a_model_with_code_of_its_own_is_never_kept(tiny_models, tmp_path):
    from dataclasses import replace

    for path in setup_folder().glob("*.json"):
        path.unlink()
    plain = Classifier(str(tiny_models["three"]), device="cpu", weights=False).setup
    (path,) = setup_folder().glob("*.json")
    path.unlink()
    keep_setup(replace(plain, custom_code=("AutoTokenizer -> tokenization_custom.CustomTokenizer",)))
    assert not list(setup_folder().glob("*.json"))  # its tokenizer class may do more than tokenizer.json
    model = tmp_path / "model"
    shutil.copytree(tiny_models["three"], model)
    Classifier(str(model), device="cpu", weights=False)  # the plain files' setup is kept...
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_custom.CustomTokenizer"]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ModelLoadError, match="auto_map"):  # ...and code added to them is refused all the same
        Classifier(str(model), device="cpu", weights=False)


def test_a_hub_model_is_kept_by_its_cached_commit(tmp_path, binary_model, tiny_models, monkeypatch):
    first, second = "1" * 40, "2" * 40
    repository = tmp_path / "hub" / "models--org--sentiment"
    shutil.copytree(binary_model, repository / "snapshots" / first)
    shutil.copytree(tiny_models["three"], repository / "snapshots" / second)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(first)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _, again = built_then_kept(Path("org/sentiment"))
    assert again.identity["revision"] == first and again.labels == ["NEGATIVE", "POSITIVE"]
    assert again.pretrained.commit == first  # transformers' objects, when asked for, come from the same commit
    (repository / "refs" / "main").write_text(second)  # main moves: the other commit's setup is built
    moved = Classifier("org/sentiment", device="cpu", weights=False)
    assert moved._pretrained is not None and moved.identity["revision"] == second and len(moved.labels) == 3


def test_keeping_a_setup_removes_setups_unused_for_a_month_and_partial_files(binary_model):
    folder = setup_folder()
    folder.mkdir(parents=True, exist_ok=True)
    month_ago = time.time() - (UNUSED_DAYS + 1) * 86400
    stale, recent, killed = folder / "stale.json", folder / "recent.json", folder / ".x.json.abc.partial"
    for path in (stale, recent, killed):
        path.write_text("{}")
    os.utime(stale, (month_ago, month_ago))
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    for path in folder.glob("*.json"):
        if path not in (stale, recent):
            path.unlink()
    Classifier(str(binary_model), device="cpu", weights=False)
    names = {path.name for path in folder.iterdir()}
    assert "recent.json" in names and "stale.json" not in names and killed.name not in names and len(names) == 2


def test_reading_a_setup_marks_it_used(tmp_path, binary_model):
    model = tmp_path / "model"
    shutil.copytree(binary_model, model)
    built_then_kept(model)
    (path,) = setup_folder().glob("*.json")
    os.utime(path, (0, 0))
    assert Classifier(str(model), device="cpu", weights=False)._pretrained is None
    assert path.stat().st_mtime > time.time() - 60
    assert np.isfinite(Classifier(str(model), device="cpu").predict(["fine"]).probabilities).all()


def test_info_names_the_kept_setups(binary_model):
    from batchsent.runtime import info

    Classifier(str(binary_model), device="cpu", weights=False)
    count = len(list(setup_folder().glob("*.json")))
    (said,) = [line for line in info.render(info.collect()) if line.startswith("kept setups")]
    assert f": {count} (" in said and str(setup_folder()) in said and count >= 1
