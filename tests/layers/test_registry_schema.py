import jsonschema
import pytest

import blocks.layers  # noqa: F401
from blocks.registry import BLOCKS

NAMES = ["Embedding", "CharCNN", "BiLSTM", "BiGRU", "TextCNN", "Pooling", "AttentionPooling",
         "MultiHeadSelfAttention", "CrossAttention", "TransformerEncoder", "Combine", "Concat",
         "Linear", "MLP", "Dropout", "LayerNorm"]


@pytest.mark.parametrize("name", NAMES)
def test_schema_and_docs(name):
    assert name in BLOCKS
    schema = BLOCKS.schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["description"] and not schema["description"].startswith("Args")
    for parameter in BLOCKS.parameters(name):
        assert parameter.doc, f"{name}.{parameter.name} has no doc"
        assert not parameter.required, f"{name}.{parameter.name} has no default"
    # the defaults themselves pass the schema
    defaults = {p.name: schema["properties"][p.name]["default"] for p in BLOCKS.parameters(name)}
    BLOCKS.validate_params(name, defaults, None, "/graph/0")


def test_labels_parameters_accept_labels_and_int():
    for name in ["Linear", "MLP"]:
        BLOCKS.validate_params(name, {"out": "labels"}, None, "/graph/0")
        BLOCKS.validate_params(name, {"out": 3}, None, "/graph/0")


def test_combine_parts_are_checked_by_the_schema():
    from blocks.errors import ConfigError

    with pytest.raises(ConfigError):
        BLOCKS.validate_params("Combine", {"parts": ["a", "sum"]}, None, "/graph/0")
