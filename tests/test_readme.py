"""The README's examples work as written: the custom block and the config sketch."""
import re
from pathlib import Path

import torch

from blocks.values import SEQUENCE, TOKENS, Sequence, Spec

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_custom_block_example_registers_builds_and_respects_the_mask(tmp_path):
    from blocks.registry import BLOCKS

    namespace: dict = {}
    example = next(block for block in python_blocks() if "class Highway" in block)
    exec(compile(example, "README.md", "exec"), namespace)
    assert "Highway" in BLOCKS
    assert [p.name for p in BLOCKS.parameters("Highway")] == ["layers"]
    assert BLOCKS.parameters("Highway")[0].doc == "number of highway layers."
    block = BLOCKS.build("Highway", [Spec(SEQUENCE, 6)], params={"layers": 2})
    assert block.output_spec == Spec(SEQUENCE, 6)
    values = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    out = block(Sequence(values, mask))
    assert out.values.shape == (2, 4, 6)
    assert torch.all(out.values[1, 2:] == 0)


def test_config_sketch_is_valid_json_with_the_documented_shape():
    import json

    text = re.findall(r"```json\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)[0]
    config = json.loads(text)
    assert [s["name"] for s in config["stages"]] == ["teacher", "distill"]
    assert config["stages"][1]["teachers"] == ["teacher"]
    assert TOKENS == "tokens"
