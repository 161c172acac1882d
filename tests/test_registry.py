"""Every registry lists exactly the entries the package's decorators register, each with a usable schema."""
import ast
from pathlib import Path

import jsonschema
import pytest

import blocks
from blocks.catalog import load_builtin_entries
from blocks.registry import BLOCKS, LOSSES, METRICS, OPTIMIZERS, SCHEDULES, TOKENIZERS

REGISTRIES = {"register_block": BLOCKS, "register_loss": LOSSES, "register_tokenizer": TOKENIZERS,
              "register_metric": METRICS, "register_optimizer": OPTIMIZERS, "register_schedule": SCHEDULES}
BY_NAME = {"BLOCKS": BLOCKS, "LOSSES": LOSSES, "TOKENIZERS": TOKENIZERS, "METRICS": METRICS,
           "OPTIMIZERS": OPTIMIZERS, "SCHEDULES": SCHEDULES}


def decorated_names() -> dict[str, set[str]]:
    """``{registry kind: names}`` read from the source: ``@register_block("X")``, ``@BLOCKS.register()``..."""
    found: dict[str, set[str]] = {registry.kind: set() for registry in REGISTRIES.values()}
    for path in Path(blocks.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                continue
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(call, ast.Name) and call.id in REGISTRIES:
                    registry = REGISTRIES[call.id]
                elif isinstance(call, ast.Attribute) and call.attr == "register" and getattr(call.value, "id", None) in BY_NAME:
                    registry = BY_NAME[call.value.id]
                else:
                    continue
                args = decorator.args if isinstance(decorator, ast.Call) else []
                name = args[0].value if args and isinstance(args[0], ast.Constant) else node.name
                found[registry.kind].add(name)
    return found


def test_every_decorated_entry_is_registered_and_nothing_else():
    """The package's entries are exactly its decorated ones (entries that tests or users register
    from their own modules are left out of the comparison)."""
    load_builtin_entries()
    expected = decorated_names()
    assert all(expected.values()), expected  # the scan finds entries of every kind
    for registry in REGISTRIES.values():
        builtin = {name for name in registry.names() if registry.get(name).__module__.split(".")[0] == "blocks"}
        assert builtin == expected[registry.kind], registry.kind


@pytest.mark.parametrize("registry", list(REGISTRIES.values()), ids=lambda r: r.kind)
def test_every_entry_has_a_valid_schema_and_a_description(registry):
    load_builtin_entries()
    key = "type" if registry in (OPTIMIZERS, SCHEDULES) else "block"
    for name in registry.names():
        schema = registry.schema(name, key=key)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert registry.describe(name), f"{registry.kind} '{name}' has no docstring summary"
        for parameter in registry.parameters(name):
            if not parameter.required:  # the defaults a config gets are valid values of their own schema
                default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
                assert jsonschema.Draft202012Validator(schema["properties"][parameter.name]).is_valid(default), \
                    f"{registry.kind} '{name}': default of {parameter.name}"
