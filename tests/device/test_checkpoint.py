"""`save_srm` / `load_srm`: round trips for every registered model, clear errors otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from seqrec.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_srm, save_srm
from seqrec.models import MODEL_REGISTRY, build_model
from shared.manifest import MANIFEST_NAME, ManifestError

HISTORY = torch.tensor([[3, 7, 1, 0, 0], [5, 0, 0, 0, 0], [2, 9, 4, 11, 6]])


def small_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, num_items=30, max_len=6).eval()


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_round_trip_gives_identical_scores(name, tmp_path):
    model = small_model(name)
    save_srm(model, tmp_path / "ckpt")
    torch.manual_seed(1)  # a different init, so a load that does nothing would show
    loaded = load_srm(tmp_path / "ckpt")
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.score_all(HISTORY), model.score_all(HISTORY), rtol=0, atol=0
        )
        other = small_model(name, seed=2).score_all(HISTORY)
    assert not torch.equal(other, model.score_all(HISTORY))


def test_config_json_names_the_model(tmp_path):
    save_srm(small_model("din"), tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["model"] == "din"
    assert meta["format_version"] == 1
    assert meta["config"]["num_items"] == 30
    assert meta["config"]["attention_hidden_sizes"] == [64, 32]


@pytest.fixture
def saved(tmp_path):
    """A saved SRM without its manifest (as written before manifests), so that each test
    below reaches the loader's own checks instead of the manifest's hash check."""
    save_srm(small_model("sasrec"), tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    return tmp_path


def test_save_writes_a_manifest_and_a_changed_file_is_refused(tmp_path):
    save_srm(small_model("sasrec"), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "srm" and manifest["model"] == "sasrec"
    assert sorted(manifest["files"]) == [CONFIG_NAME, WEIGHTS_NAME]
    (tmp_path / "training_log.json").write_text("{}")  # train-srm writes it after saving
    load_srm(tmp_path)
    rewrite_config(tmp_path, lambda meta: meta["config"].update(dropout=0.3))
    with pytest.raises(ManifestError, match="config.json does not match its SHA-256"):
        load_srm(tmp_path)


def test_a_folder_from_before_manifests_loads_with_one_warning(saved, manifest_warnings):
    assert load_srm(saved).name == "sasrec"
    [warning] = manifest_warnings
    assert "written before manifests" in warning.getMessage()


def test_truncated_weights_are_unreadable(saved):
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: unreadable weights"):
        load_srm(saved)


def rewrite_config(folder, edit) -> None:
    path = folder / CONFIG_NAME
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_srm(tmp_path / "nope")


@pytest.mark.parametrize("file_name", [WEIGHTS_NAME, CONFIG_NAME])
def test_missing_file(saved, file_name):
    (saved / file_name).unlink()
    with pytest.raises(FileNotFoundError, match=file_name):
        load_srm(saved)


def test_unknown_model_name(saved):
    rewrite_config(saved, lambda meta: meta.update(model="bert4rec"))
    with pytest.raises(ValueError, match=r"config\.json.*unknown model name 'bert4rec'"):
        load_srm(saved)


def test_config_that_does_not_fit_the_weights(saved):
    rewrite_config(saved, lambda meta: meta["config"].update(hidden_size=32, inner_size=64))
    with pytest.raises(ValueError, match=r"model\.safetensors do not fit"):
        load_srm(saved)


def test_weights_of_another_model(saved, tmp_path):
    save_srm(small_model("gru4rec"), tmp_path / "gru")
    (saved / WEIGHTS_NAME).write_bytes((tmp_path / "gru" / WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match="do not fit"):
        load_srm(saved)


def test_unknown_config_field(saved):
    rewrite_config(saved, lambda meta: meta["config"].update(num_hedas=2))
    with pytest.raises(ValueError, match=r"config\.json: bad config.*num_hedas"):
        load_srm(saved)


def test_bad_config_value(saved):
    rewrite_config(saved, lambda meta: meta["config"].update(num_heads=3))
    with pytest.raises(ValueError, match="num_heads"):
        load_srm(saved)


def test_invalid_json(saved):
    (saved / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        load_srm(saved)


def test_unsupported_format_version(saved):
    rewrite_config(saved, lambda meta: meta.update(format_version=99))
    with pytest.raises(ValueError, match="format_version 99"):
        load_srm(saved)


def test_corrupt_weights_file(saved):
    (saved / WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load_srm(saved)
