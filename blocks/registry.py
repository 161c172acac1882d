"""One registry class, many instances: blocks, losses, tokenizers, metrics, optimizers, schedules.

An entry is a class (or function) registered under a name with a decorator::

    from blocks import register_block, Block

    @register_block("Highway")
    class Highway(Block):
        def __init__(self, inputs, layers: int = 1, dropout: float = 0.0):
            '''Highway layers over a sequence or vector.

            Args:
                layers: number of highway layers.
                dropout: dropout between layers.
            '''

Its configurable parameters are read from the constructor signature (type hints and defaults)
and the docstring's ``Args:`` section. From them the registry generates a JSON Schema, so a
config is validated with ``jsonschema`` before anything is built, and ``blocks list`` can show
every parameter. The first constructor arguments named in ``context_args`` (``inputs`` for
blocks) are supplied by the framework, never by the config.

The built-in entries are registered the first time a registry is asked for the list of its
names or for a name it does not hold yet, so ``import blocks`` stays light and a user's script
needs no loader call.
"""
from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

from blocks.errors import ConfigError, did_you_mean

_NO_DEFAULT = inspect.Parameter.empty

_builtins_loaded = False


def _load_builtins() -> None:
    """Import the modules that register the built-in entries, once per process."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: those modules register entries while they load
    from blocks.catalog import load_builtin_entries

    try:
        load_builtin_entries()
    except BaseException:
        _builtins_loaded = False
        raise


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: Any
    default: Any
    doc: str

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT

    def type_name(self) -> str:
        return _type_name(self.annotation)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "dict"
    if annotation is type(None):
        return "null"
    if annotation is Any or annotation is _NO_DEFAULT:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


class Schema:
    """JSON Schema keywords that narrow a parameter's type hint, e.g. its range::

        lr: Annotated[float, Schema(exclusiveMinimum=0)] = 1e-3
    """

    def __init__(self, **keywords: Any):
        self.keywords = keywords

    def __repr__(self) -> str:
        return f"Schema({', '.join(f'{k}={v!r}' for k, v in self.keywords.items())})"


def type_schema(annotation: Any) -> dict:
    """JSON Schema for a Python type hint (the subset that configs use)."""
    if annotation is Any or annotation is _NO_DEFAULT:
        return {}
    origin = typing.get_origin(annotation)
    if origin is Annotated:  # Annotated[float, Schema(exclusiveMinimum=0)]: the type plus schema keywords
        schema = type_schema(typing.get_args(annotation)[0])
        for extra in annotation.__metadata__:
            if isinstance(extra, Schema):
                schema.update(extra.keywords)
        return schema
    if origin is Literal:
        return {"enum": list(typing.get_args(annotation))}
    if origin in (Union, types.UnionType):
        return {"anyOf": [type_schema(a) for a in typing.get_args(annotation)]}
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        schema: dict = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = type_schema(args[0])
        return schema
    if origin is dict or annotation is dict:
        return {"type": "object"}
    simple = {int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
              str: {"type": "string"}, type(None): {"type": "null"}, list: {"type": "array"}}
    if annotation in simple:
        return dict(simple[annotation])
    raise TypeError(f"type hint {annotation!r} cannot be expressed in a config")


def _docstring_args(doc: str | None) -> tuple[str, dict[str, str]]:
    """(summary, {arg: description}) from a Google-style docstring."""
    if not doc:
        return "", {}
    doc = inspect.cleandoc(doc)
    summary = doc.split("\n\n")[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    match = re.search(r"^Args:\s*$(.*?)(?=^\S|\Z)", doc, flags=re.M | re.S)
    if match:
        current = None
        for line in match.group(1).splitlines():
            item = re.match(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if item and (current is None or len(line) - len(line.lstrip()) <= 4):
                current = item.group(1)
                args[current] = item.group(2).strip()
            elif current and line.strip():
                args[current] += " " + line.strip()
    return summary, args


class Registry:
    """Named entries of one kind, with schemas generated from their constructors."""

    def __init__(self, kind: str, context_args: tuple[str, ...] = (), reserved: tuple[str, ...] = ()):
        self.kind = kind
        self.context_args = context_args
        self.reserved = reserved  # keys next to the parameters in a config node (name, input, ...)
        self._entries: dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable:
        def decorate(entry: Callable) -> Callable:
            key = name or entry.__name__
            existing = self._entries.get(key)
            if existing is not None and existing is not entry and existing.__qualname__ != entry.__qualname__:
                raise ValueError(f"{self.kind} '{key}' is already registered by {existing.__module__}")
            self._entries[key] = entry
            entry.registered_name = key
            self.parameters(key)  # fail at import time on a type hint a config cannot express
            return entry

        return decorate

    def _entry(self, name: str) -> Callable:
        if name not in self._entries:
            _load_builtins()
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        if name not in self._entries:
            _load_builtins()
        return name in self._entries

    def typed_options(self, config: Any, default: str, where: str) -> tuple[str, dict]:
        """A config object ``{"type": name, ...options}`` (None: ``{}``) as the registered name
        (``default`` when ``type`` is left out) and the options; a ConfigError at ``where`` when it
        is not an object or names no entry of this registry (with a suggestion)."""
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise ConfigError(f"the {self.kind} must be an object, not {config!r}", None, where)
        options = dict(config)
        kind = options.pop("type", default)
        if not isinstance(kind, str) or kind not in self:
            known = self.names()
            hint = did_you_mean(kind, known) if isinstance(kind, str) else ""
            raise ConfigError(f"unknown {self.kind} type {kind!r}{hint} (known: {', '.join(known)})", None,
                              f"{where}/type")
        return kind, options

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._entries)

    def get(self, name: str, file: str | None = None, path: str | None = None) -> Callable:
        try:
            return self._entry(name)
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}"
                              f" (known: {', '.join(self.names())})", file, path) from None

    def parameters(self, name: str) -> list[Parameter]:
        entry = self._entry(name)
        target = entry.__init__ if inspect.isclass(entry) else entry
        signature = inspect.signature(target)
        hints = typing.get_type_hints(target, include_extras=True)
        _, docs = self.describe_parts(name)
        params = []
        names = [p for p in signature.parameters if p != "self"]
        for pname in names:
            if pname in self.context_args:
                continue
            p = signature.parameters[pname]
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            annotation = hints.get(pname, Any)
            type_schema(annotation)
            params.append(Parameter(pname, annotation, p.default, docs.get(pname, "")))
        return params

    def describe_parts(self, name: str) -> tuple[str, dict[str, str]]:
        entry = self._entry(name)
        summary, args = _docstring_args(entry.__doc__)
        if inspect.isclass(entry):
            _, init_args = _docstring_args(entry.__init__.__doc__)
            args = {**init_args, **args}
        return summary, args

    def describe(self, name: str) -> str:
        return self.describe_parts(name)[0]

    def schema(self, name: str, key: str = "block") -> dict:
        """JSON Schema of one config node naming this entry (parameters plus reserved keys)."""
        properties: dict[str, dict] = {key: {"const": name}}
        for reserved in self.reserved:
            properties[reserved] = {}
        required = []
        for p in self.parameters(name):
            prop = type_schema(p.annotation)
            if p.doc:
                prop["description"] = p.doc
            if not p.required:
                prop["default"] = p.default if not isinstance(p.default, tuple) else list(p.default)
            else:
                required.append(p.name)
            properties[p.name] = prop
        schema = {"type": "object", "description": self.describe(name), "properties": properties,
                  "additionalProperties": False}
        if required:
            schema["required"] = required
        return schema

    def validate_params(self, name: str, params: dict, file: str | None, path: str) -> None:
        """Check a node's parameters: unknown keys (with a suggestion), missing keys, types."""
        import jsonschema

        known = {p.name for p in self.parameters(name)}
        for key in params:
            if key not in known:
                hint = did_you_mean(key, known)
                listing = ", ".join(sorted(known)) or "none"
                raise ConfigError(f"{self.kind} '{name}' has no parameter '{key}'{hint}"
                                  f" (its parameters: {listing})", file, f"{path}/{key}")
        properties = {k: v for k, v in self.schema(name)["properties"].items() if k in known}
        schema = {"type": "object", "properties": properties,
                  "required": [p.name for p in self.parameters(name) if p.required]}
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params),
                        key=lambda e: list(e.absolute_path))
        if errors:
            error = errors[0]
            where = path + "".join(f"/{part}" for part in error.absolute_path)
            raise ConfigError(f"{self.kind} '{name}': {error.message}", file, where)

    def build(self, name: str, *context: Any, params: dict | None = None) -> Any:
        return self._entry(name)(*context, **(params or {}))


# The framework's registries. Each module that defines entries imports the one it needs.
BLOCKS = Registry("block", context_args=("inputs",), reserved=("name", "input", "share"))
LOSSES = Registry("loss", context_args=("stage",), reserved=("weight",))
TOKENIZERS = Registry("tokenizer")
METRICS = Registry("metric", context_args=("predictions",))
OPTIMIZERS = Registry("optimizer", context_args=("parameters", "where"))
SCHEDULES = Registry("schedule", context_args=("optimizer", "total_steps", "where"))

register_block = BLOCKS.register
register_loss = LOSSES.register
register_tokenizer = TOKENIZERS.register
register_metric = METRICS.register
register_optimizer = OPTIMIZERS.register
register_schedule = SCHEDULES.register
