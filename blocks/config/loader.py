"""Reading a config file: JSON with exact error positions, ``extends``, ``--set`` overrides,
the data root, schema validation and defaults.

The result is a plain dict, the *resolved* config, which is what a run directory stores: every
default filled in, every path absolute, no ``extends`` left.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jsonschema

from blocks.config.run_models import PlannedRun, drop_unused_run_models, expand_run_models, take_run_recipes
from blocks.config.schema import CONFIG_SCHEMA
from blocks.errors import ConfigError, did_you_mean

DATA_ROOT_VARIABLE = "DISTILBLOCKS_DATA"
REGRESSION_METRICS = ("pearson", "spearman", "mse", "rmse")  # the first three are the regression default


@dataclass
class Config:
    """A resolved config and where it came from."""

    values: dict
    file: str  # the file the user named (used in error messages)
    base_dir: Path  # that file's folder: relative paths in block parameters resolve against it
    planned_runs: list[PlannedRun] = field(default_factory=list)  # runs not made yet (validation only)
    #: models whose weights come from elsewhere: a task's view of a multi-task config whose model
    #: is taken from a multi-task run (trained, though no stage of this config trains it)
    external_models: frozenset = frozenset()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("file not found", str(path)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read: {error}", str(path)) from None
    repeated: list[tuple[dict, str]] = []  # (object, key) for each key an object states twice

    def unique_keys(pairs: list) -> dict:
        obj: dict = {}
        for key, value in pairs:
            if key in obj and not repeated:
                repeated.append((obj, key))
            obj[key] = value
        return obj

    try:
        values = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise ConfigError(f"JSON syntax error at line {error.lineno}, column {error.colno}: {error.msg}",
                          str(path)) from None
    if repeated:
        obj, key = repeated[0]
        where = f"{_path_of(values, obj)}/{key}"
        raise ConfigError(f"the key '{key}' appears twice in one object (JSON would silently keep the second "
                          f"value); keep one", str(path), where)
    return values


def _path_of(values: Any, target: dict, path: str = "") -> str | None:
    """The JSON path of the object ``target`` (by identity) inside ``values``."""
    if values is target:
        return path
    children = values.items() if isinstance(values, dict) else enumerate(values) if isinstance(values, list) else ()
    for key, child in children:
        found = _path_of(child, target, f"{path}/{key}")
        if found is not None:
            return found
    return None


def first_non_finite(values: Any, path: str = "") -> str | None:
    """The JSON path of the first NaN or infinite number in ``values`` (JSON has neither, but
    Python's parser accepts ``NaN``, ``Infinity`` and overflowing numbers such as ``1e999``)."""
    if isinstance(values, float) and not math.isfinite(values):
        return path or "/"
    children = values.items() if isinstance(values, dict) else enumerate(values) if isinstance(values, list) else ()
    for key, child in children:
        found = first_non_finite(child, f"{path}/{key}")
        if found is not None:
            return found
    return None


# Lists of named objects that an extending file may merge into by name instead of replacing:
# ``"stages": {"distill": {"epochs": 6}}`` changes only the stage named "distill".
NAMED_LISTS = ("stages", "graph")


def deep_merge(base: dict, override: dict, file: str | None = None, path: str = "") -> dict:
    """``override`` on top of ``base`` (neither is modified).

    - objects merge key by key;
    - ``null`` deletes the inherited key (where nothing is inherited it stays, as the value "none");
    - a list replaces the inherited value;
    - an object given for a list of named objects (``stages``, a model's ``graph``) merges into that
      list by name: each key names an entry, its object merges into that entry, ``null`` deletes it,
      and a name the list does not hold is appended. Entries without a name, or two with the same
      name, make the merge ambiguous: a ``ConfigError`` naming ``file`` and the JSON path.
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}/{key}"
        inherited = merged.get(key)
        if value is None and key in merged:
            del merged[key]
        elif isinstance(value, dict) and (isinstance(inherited, list) or (inherited is None and key in NAMED_LISTS)):
            merged[key] = merge_by_name(inherited or [], value, file, where)
        elif isinstance(value, dict):
            merged[key] = deep_merge(inherited if isinstance(inherited, dict) else {}, value, file, where)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_by_name(base: list, override: dict, file: str | None, path: str) -> list:
    """The entries of ``base`` (objects with a unique ``name``) with ``override``'s changes by name."""
    positions: dict[str, int] = {}
    for index, entry in enumerate(base):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise ConfigError(f"cannot merge an object into this list by name: its entry {index} has no "
                              f"\"name\" (give the whole list instead)", file, path)
        if name in positions:
            raise ConfigError(f"cannot merge by name: entries {positions[name]} and {index} are both named "
                              f"'{name}' (give the whole list instead)", file, path)
        positions[name] = index
    merged: list = copy.deepcopy(base)
    removed: set[int] = set()
    for name, change in override.items():
        where = f"{path}/{name}"
        if change is None:
            if name not in positions:
                raise ConfigError(f"null deletes an inherited entry, and there is no '{name}'"
                                  f"{did_you_mean(name, positions)} (entries: {', '.join(positions) or 'none'})",
                                  file, where)
            removed.add(positions[name])
            continue
        if not isinstance(change, dict):
            raise ConfigError(f"an entry merged by name is an object (or null to delete it), got "
                              f"{type(change).__name__}", file, where)
        if change.get("name", name) != name:
            raise ConfigError(f"the entry keyed '{name}' is named '{change['name']}': the key is its name",
                              file, f"{where}/name")
        if name in positions:
            merged[positions[name]] = deep_merge(merged[positions[name]], change, file, where)
        else:
            merged.append({"name": name, **deep_merge({}, change, file, where)})
    return [entry for index, entry in enumerate(merged) if index not in removed]


def _load_with_extends(path: Path, chain: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(f"'extends' forms a cycle: {cycle}", str(chain[0]), "/extends")
    values = read_json(path)
    if not isinstance(values, dict):
        raise ConfigError("a config file must hold a JSON object", str(path))
    _absolutize_paths(values, path.parent)
    extends = values.pop("extends", [])
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        raise ConfigError("'extends' must be a file path or a list of file paths", str(path), "/extends")
    merged: dict = {}
    for i, parent in enumerate(extends):
        parent_path = (path.parent / parent)
        if not parent_path.is_file():
            raise ConfigError(f"extended file not found: {parent_path}", str(path), f"/extends/{i}")
        merged = deep_merge(merged, _load_with_extends(parent_path, chain + (path,)), str(path))
    return deep_merge(merged, values, str(path))


STAGE_DEFAULTS = "stage_defaults"


def apply_stage_defaults(values: dict, file: str, extra_keys: tuple[str, ...] = ()) -> None:
    """``"stage_defaults"``: settings every stage gets unless it states its own (merged under each
    stage as ``extends`` merges a file under the one that extends it; ``null`` in a stage deletes a
    default). The key is removed, so a resolved config lists each stage in full."""
    defaults = values.pop(STAGE_DEFAULTS, None)
    if defaults is None:
        return
    if not isinstance(defaults, dict):
        raise ConfigError("'stage_defaults' must be an object of stage settings", file, f"/{STAGE_DEFAULTS}")
    allowed = list(CONFIG_SCHEMA["$defs"]["stage"]["properties"]) + list(extra_keys)
    for key in defaults:
        if key not in allowed or key == "name":
            raise ConfigError(f"unknown stage setting '{key}'{did_you_mean(key, allowed)} (allowed here: "
                              f"{', '.join(k for k in allowed if k != 'name')})", file, f"/{STAGE_DEFAULTS}/{key}")
    stages = values.get("stages")
    if isinstance(stages, list):
        values["stages"] = [deep_merge(defaults, stage, file, f"/stages/{i}") if isinstance(stage, dict) else stage
                            for i, stage in enumerate(stages)]


def load_merged(path: str | Path) -> dict:
    """A config file with its ``extends`` merged and its stage defaults applied: the config as the
    file states it, before overrides, schema defaults and models from runs."""
    values = _load_with_extends(Path(path), ())
    multitask_keys = ("task", "tasks", "mixing", "replay", "keep") if "tasks" in values else ()
    apply_stage_defaults(values, str(path), extra_keys=multitask_keys)
    return values


def _absolutize_paths(values: dict, folder: Path) -> None:
    """A relative data root, run directory (or recipe) of a model, or a task's data fragment, is
    relative to the file that states it."""
    data = values.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and not os.path.isabs(data["root"]):
        data["root"] = os.path.normpath(folder / data["root"])
    tasks = values.get("tasks")  # a multi-task config's data fragments and data roots
    for entry in (tasks.values() if isinstance(tasks, dict) else []):
        if isinstance(entry, dict) and isinstance(entry.get("extends"), str) and not os.path.isabs(entry["extends"]):
            entry["extends"] = os.path.normpath(folder / entry["extends"])
        data = entry.get("data") if isinstance(entry, dict) else None
        if isinstance(data, dict) and isinstance(data.get("root"), str) and not os.path.isabs(data["root"]):
            data["root"] = os.path.normpath(folder / data["root"])
    models = values.get("models")
    for model in (models.values() if isinstance(models, dict) else []):
        for key in ("run", "recipe"):
            if isinstance(model, dict) and isinstance(model.get(key), str) and not os.path.isabs(model[key]):
                model[key] = os.path.normpath(folder / model[key])


def _command_line_paths(parts: list[str], value: Any) -> Any:
    """An override's value with its data root, cache folder and run directories made absolute from
    where the command runs (a config file's own are relative to that file), whether the override
    names the path itself (``models.teacher.run=...``) or an object holding it (``models.t2={"run": ...}``)."""
    if parts == ["cache_dir"] and isinstance(value, str):
        return os.path.abspath(value)
    nested = value
    for part in reversed(parts):
        nested = {part: nested}
    _absolutize_paths(nested, Path.cwd())
    for part in parts:
        nested = nested[part]
    return nested


def parse_override(text: str) -> tuple[list[str], Any]:
    """``stages.0.epochs=3`` or ``/stages/0/epochs=3`` -> (["stages", "0", "epochs"], 3).

    The value is parsed as JSON when it can be (numbers, true/false, null, lists, objects) and
    taken as a string otherwise.
    """
    if "=" not in text:
        raise ConfigError(f"--set expects path=value, got '{text}'")
    path, raw = text.split("=", 1)
    parts = [p for p in (path.strip("/").split("/") if path.startswith("/") else path.split(".")) if p]
    if not parts:
        raise ConfigError(f"--set has an empty path in '{text}'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return parts, value


def apply_override(values: dict, parts: list[str], value: Any, text: str) -> None:
    node: Any = values
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = "/" + "/".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_position(node, part, text, where)
            if last and value is None:
                del node[index]  # null deletes, as in a file that extends another
            elif last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last and value is None:
                node.pop(part, None)  # null deletes, as in a file that extends another
            elif last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {text}: {where} is inside a {type(node).__name__}, not an object or list")


def _list_position(items: list, part: str, text: str, where: str) -> int:
    """The entry of ``items`` that an override path names: by index, or by ``name`` (``stages.distill``)."""
    if part.isdigit() and int(part) < len(items):
        return int(part)
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if not part.isdigit() and names.count(part) == 1:
        return names.index(part)
    if names.count(part) > 1:
        raise ConfigError(f"--set {text}: {where} is ambiguous: {names.count(part)} entries are named '{part}'")
    named = [name for name in names if isinstance(name, str)]
    raise ConfigError(f"--set {text}: {where} is not an index{' or the name' if named else ''} of an entry of a "
                      f"list of {len(items)} items{did_you_mean(part, named)}"
                      + (f" (names: {', '.join(named)})" if named else ""))


def _schema_error(error: jsonschema.ValidationError, file: str) -> ConfigError:
    path = "/" + "/".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
        if extra:
            key = extra[0]
            known = ", ".join(allowed)
            return ConfigError(f"unknown key '{key}'{did_you_mean(key, allowed)} (allowed here: {known})",
                               file, f"{path.rstrip('/')}/{key}")
    if error.validator in ("anyOf", "oneOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best.validator not in ("anyOf", "oneOf"):
            return ConfigError(f"{best.message}", file, path)
    if error.validator == "required":
        return ConfigError(error.message, file, path)
    return ConfigError(error.message, file, path)


def _fill_defaults(schema: dict, value: Any, defs: dict) -> None:
    """Fill ``default`` values of object properties, recursively (through $ref and arrays)."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    if schema.get("x-fill-defaults") is False:
        return  # defaults that depend on other choices (e.g. the optimizer type) are filled elsewhere
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            resolved = defs[sub["$ref"].rsplit("/", 1)[1]] if "$ref" in sub else sub
            if key not in value and "default" in resolved:
                value[key] = copy.deepcopy(resolved["default"])
            if key in value:
                _fill_defaults(sub, value[key], defs)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                if key not in schema.get("properties", {}):
                    _fill_defaults(extra, value[key], defs)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _fill_defaults(schema["items"], item, defs)
    for option in schema.get("anyOf", []):
        if isinstance(value, dict) and option.get("type") == "object":
            _fill_defaults(option, value, defs)


FINE_TUNING_BLOCKS = ("PretrainedEncoder",)


def _fill_training_defaults(values: dict) -> None:
    """Optimizer and schedule defaults per stage: fine-tuning settings for pretrained encoders.
    Their options are checked once the config's modules are imported (they may register an
    optimizer or a schedule): :func:`blocks.experiment.check_references`."""
    from blocks import lr_schedules, optimizers

    for stage in values["stages"]:
        graph = values["models"].get(stage["train"], {}).get("graph", [])
        pretrained = any(node.get("block") in FINE_TUNING_BLOCKS for node in graph)
        stage["optimizer"] = optimizers.with_stage_defaults(stage.get("optimizer"), pretrained)
        stage["schedule"] = lr_schedules.with_stage_defaults(stage.get("schedule"), pretrained)


def _value_at(values: Any, path: str) -> Any:
    for part in path.strip("/").split("/"):
        values = values[int(part)] if isinstance(values, list) else values[part]
    return values


def validate_structure(values: dict, file: str) -> None:
    validator = jsonschema.Draft202012Validator(CONFIG_SCHEMA)
    errors = list(validator.iter_errors(values))
    if errors:
        # The deepest error is the most specific one to show.
        error = max(errors, key=lambda e: (len(list(e.absolute_path)), e.validator != "anyOf"))
        raise _schema_error(error, file)


def load_config(path: str | Path, overrides: Iterable[str] = (), environ: dict | None = None,
                planned_runs: bool = False) -> Config:
    """Read, merge, override, validate and complete a config file.

    With ``planned_runs`` (``blocks validate``), a model from a run that does not exist yet is taken
    from the recipe that makes it (``"recipe"`` beside ``"run"``), and ``Config.planned_runs`` lists
    the runs still needed."""
    path = Path(path)
    return complete_config(read_config_values(path, overrides, environ), path, planned_runs)


def read_config_values(path: Path, overrides: Iterable[str] = (), environ: dict | None = None) -> dict:
    """A config file's values with its ``extends`` merged, the data root from the environment and
    the command line's overrides applied; not yet validated or completed."""
    environ = os.environ if environ is None else environ
    values = _load_with_extends(path, ())
    if environ.get(DATA_ROOT_VARIABLE):
        values.setdefault("data", {})["root"] = os.path.abspath(environ[DATA_ROOT_VARIABLE])
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(values, parts, _command_line_paths(parts, value), text)
    return values


def complete_config(values: dict, path: Path, planned_runs: bool = False) -> Config:
    """Validate and complete config values read by :func:`read_config_values` (see
    :func:`load_config`)."""
    file = str(path)
    apply_stage_defaults(values, file)
    recipes = take_run_recipes(values, file)
    values.pop("$schema", None)
    non_finite = first_non_finite(values)
    if non_finite:
        raise ConfigError(f"{_value_at(values, non_finite)} is not a number a config can hold (a NaN or infinite "
                          f"value, from the file or a --set)", file, non_finite)
    validate_structure(values, file)
    task = values.setdefault("task", {})
    if "metrics" not in task and task.get("type", "classification") != "classification":
        from blocks.tasks import TASK_TYPES, load_task_types

        load_task_types()
        if task["type"] in TASK_TYPES:  # an unknown type is reported by the schema
            task["metrics"] = TASK_TYPES[task["type"]].config_default_metrics(task)
    _fill_defaults(CONFIG_SCHEMA, values, CONFIG_SCHEMA["$defs"])
    if "task" not in values:
        values["task"] = {}
        _fill_defaults(CONFIG_SCHEMA["$defs"]["task"], values["task"], CONFIG_SCHEMA["$defs"])
    base_dir = path.resolve().parent
    drop_unused_run_models(values)
    planned = expand_run_models(values, base_dir, file, recipes, planned_runs)
    _fill_training_defaults(values)
    values["imports"] = [str(base_dir / name) if name.endswith(".py") and not os.path.isabs(name) else name
                         for name in values["imports"]]
    if values.get("cache_dir") and not os.path.isabs(values["cache_dir"]):
        values["cache_dir"] = os.path.normpath(base_dir / values["cache_dir"])
    data = values["data"]
    if not os.path.isabs(data["root"]):
        data["root"] = os.path.normpath(path.resolve().parent / data["root"])
    return Config(values=values, file=file, base_dir=path.resolve().parent, planned_runs=planned)
