"""The explicit SRM registry and `build_model`."""

from __future__ import annotations

import pytest

from seqrec.models import MODEL_REGISTRY, SequentialRecommender, SRMConfig, build_model


def test_registry_names_the_four_models():
    assert set(MODEL_REGISTRY) == {"ttt4rec", "sasrec", "gru4rec", "din"}


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_registered_class_matches_its_name_and_config(name):
    model_class = MODEL_REGISTRY[name]
    assert issubclass(model_class, SequentialRecommender)
    assert model_class.name == name
    assert issubclass(model_class.config_class, SRMConfig)
    assert model_class.config_class is not SRMConfig


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_build_model_passes_config_fields(name):
    model = build_model(name, num_items=17, max_len=7)
    assert isinstance(model, MODEL_REGISTRY[name])
    assert model.config.num_items == 17
    assert model.config.max_len == 7


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model name 'bert4rec'.*din, gru4rec, sasrec"):
        build_model("bert4rec", num_items=5)


def test_unknown_config_field_is_a_value_error():
    with pytest.raises(ValueError, match="num_hedas"):
        build_model("sasrec", num_items=5, num_hedas=2)


def test_bad_config_value_is_a_value_error():
    with pytest.raises(ValueError, match="num_items"):
        build_model("gru4rec", num_items=0)
