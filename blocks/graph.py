"""A model graph: block nodes from JSON, validated and built with every width inferred.

A graph is an ``nn.Module`` whose forward maps the batch's inputs to a dict holding the value of
every node, so that losses can reach any named output (the logits, a hidden state, ...).

Node syntax (inside ``models.<name>.graph``)::

    {"name": "encoder", "block": "BiLSTM", "input": "embed", "hidden": 150}
    {"name": "encoder_b", "share": "encoder", "input": "embed_b"}   # same block instance

``input`` names model inputs or other nodes (one name or a list); when left out, a node reads
the node before it. Nodes may be listed in any order; they run in dependency order.

Named outputs: a block may offer values besides its main one (see :class:`blocks.block.Block`),
e.g. an encoder with ``"attentions": true`` offers ``attentions``. The graph lists each as a node
of its own named ``"<node>:<output>"`` (``"encoder:attentions"``; node names cannot contain
``:``), computed by the same forward as its node, so an input, a loss's ``output`` or
``teacher_output`` can name it like any node.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from blocks.block import NamedOutputs
from blocks.errors import ConfigError, WidthError, did_you_mean
from blocks.registry import BLOCKS
from blocks.values import LABELS, Spec

RESERVED_NODE_KEYS = ("name", "block", "input", "share", "init_from")
OUTPUT_SEPARATOR = ":"  # "<node>:<named output>"


def missing_output_message(model: str, ref: str, specs: dict) -> str:
    """Why ``"<node>:<output>"`` names nothing: the node's named outputs, or how to get some."""
    base, output = ref.split(OUTPUT_SEPARATOR, 1)
    offered = [name.split(OUTPUT_SEPARATOR, 1)[1] for name in specs
               if name.startswith(base + OUTPUT_SEPARATOR)]
    if offered:
        listing = f"its named outputs: {', '.join(offered)}"
    else:
        listing = ("it offers none; e.g. a TransformerEncoder or PretrainedEncoder node offers "
                   "'attentions' with \"attentions\": true, a PretrainedEncoder 'layer0', 'layer1', ... "
                   "with \"hidden_states\": true")
    return (f"node '{base}' of model '{model}' has no output '{output}'"
            f"{did_you_mean(output, offered)} ({listing})")


@dataclass
class Node:
    name: str
    owner: str  # node whose block instance runs here (itself unless shared)
    inputs: list[str]
    spec: Spec
    block_name: str
    path: str  # JSON path of the node in the config
    part_of: str | None = None  # a named output: the node whose forward computes it


def _accepts_labels(annotation: Any) -> bool:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return LABELS in args
    return any(_accepts_labels(a) for a in args)


def block_params(node: dict, file: str | None, path: str, num_outputs: int) -> tuple[str, dict]:
    """Validate a node's block name and parameters; fill defaults; resolve "labels"."""
    name = node["block"]
    BLOCKS.get(name, file, f"{path}/block")
    params = {k: v for k, v in node.items() if k not in RESERVED_NODE_KEYS}
    BLOCKS.validate_params(name, params, file, path)
    resolved = {}
    for p in BLOCKS.parameters(name):
        value = params.get(p.name, p.default)
        if isinstance(value, tuple):
            value = list(value)
        if value == LABELS and _accepts_labels(p.annotation):
            value = num_outputs
        resolved[p.name] = value
    return name, resolved


class Graph(nn.Module):
    """Build the nodes of one model from its config.

    Args:
        name: model name (for messages).
        model_config: the ``models.<name>`` object (validated structurally).
        input_specs: Spec of each model input, by the input's name in the config.
        num_outputs: number of labels (1 for regression), substituted for "labels".
        file: config file name for messages.
        path: JSON path of the model, e.g. ``/models/student``.
    """

    def __init__(self, name: str, model_config: dict, input_specs: dict[str, Spec], num_outputs: int,
                 file: str | None = None, path: str = ""):
        super().__init__()
        self.name = name
        self.input_names = list(input_specs)
        self.blocks = nn.ModuleDict()
        self.nodes: list[Node] = []
        self.params: dict[str, dict] = {}
        raw_nodes = model_config["graph"]
        self._check_names(raw_nodes, input_specs, file, path)
        by_name = {node["name"]: (i, node) for i, node in enumerate(raw_nodes)}
        specs: dict[str, Spec] = dict(input_specs)
        for index in self._order(raw_nodes, by_name, input_specs, file, path):
            self._build_node(index, raw_nodes, by_name, specs, num_outputs, file, path)
        self.output_name = model_config.get("output") or raw_nodes[-1]["name"]
        if self.output_name not in by_name:
            raise ConfigError(f"output '{self.output_name}' is not a node of model '{name}'"
                              f"{did_you_mean(self.output_name, by_name)}", file, f"{path}/output")
        self.output_spec = specs[self.output_name]

    @staticmethod
    def _check_names(raw_nodes, input_specs, file, path):
        seen: set[str] = set()
        for i, node in enumerate(raw_nodes):
            if node["name"] in seen:
                raise ConfigError(f"node name '{node['name']}' is used twice", file, f"{path}/graph/{i}/name")
            if node["name"] in input_specs:
                raise ConfigError(f"node name '{node['name']}' is also an input name", file, f"{path}/graph/{i}/name")
            seen.add(node["name"])

    @staticmethod
    def _inputs_of(i: int, raw_nodes: list[dict]) -> list[str]:
        node = raw_nodes[i]
        if "input" in node:
            return [node["input"]] if isinstance(node["input"], str) else list(node["input"])
        if i == 0:
            return []
        return [raw_nodes[i - 1]["name"]]

    def _order(self, raw_nodes, by_name, input_specs, file, path) -> list[int]:
        """Topological order of the nodes; unknown references and cycles are config errors."""
        known = set(by_name) | set(input_specs)
        dependencies: dict[int, list[int]] = {}
        for i, node in enumerate(raw_nodes):
            refs = self._inputs_of(i, raw_nodes)
            if not refs:
                raise ConfigError(f"node '{node['name']}' has no input; name one of the model inputs "
                                  f"({', '.join(input_specs)}) in 'input'", file, f"{path}/graph/{i}")
            for j, ref in enumerate(refs):
                base = ref.split(OUTPUT_SEPARATOR, 1)[0]
                if base not in known or (base != ref and base not in by_name):
                    where = f"{path}/graph/{i}/input" + (f"/{j}" if isinstance(node.get("input"), list) else "")
                    raise ConfigError(f"'{ref}' is neither a node nor an input of model '{self.name}'"
                                      f"{did_you_mean(base, known)}", file, where)
            deps = [by_name[base][0] for base in (r.split(OUTPUT_SEPARATOR, 1)[0] for r in refs) if base in by_name]
            if "share" in node:
                if node["share"] not in by_name:
                    raise ConfigError(f"shared node '{node['share']}' does not exist"
                                      f"{did_you_mean(node['share'], by_name)}", file, f"{path}/graph/{i}/share")
                deps.append(by_name[node["share"]][0])
            dependencies[i] = deps
        order: list[int] = []
        state: dict[int, str] = {}

        def visit(i: int, trail: list[int]) -> None:
            if state.get(i) == "done":
                return
            if state.get(i) == "active":
                cycle = trail[trail.index(i):] + [i]
                names = " -> ".join(raw_nodes[k]["name"] for k in cycle)
                raise ConfigError(f"the graph has a cycle: {names}", file, f"{path}/graph/{i}")
            state[i] = "active"
            for d in dependencies[i]:
                visit(d, trail + [i])
            state[i] = "done"
            order.append(i)

        for i in range(len(raw_nodes)):
            visit(i, [])
        return order

    def _build_node(self, i, raw_nodes, by_name, specs, num_outputs, file, path):
        node = raw_nodes[i]
        node_path = f"{path}/graph/{i}"
        inputs = self._inputs_of(i, raw_nodes)
        for j, ref in enumerate(inputs):
            if ref not in specs:  # "<node>:<output>" naming an output the node does not offer
                where = f"{node_path}/input" + (f"/{j}" if isinstance(node.get("input"), list) else "")
                raise ConfigError(missing_output_message(self.name, ref, specs), file, where)
        in_specs = [specs[r] for r in inputs]
        if "share" in node:
            owner = node["share"]
            owner_node = next(n for n in self.nodes if n.name == owner)
            if owner_node.owner != owner:
                owner = owner_node.owner
            original = next(n for n in self.nodes if n.name == owner)
            original_specs = [specs[r] for r in original.inputs]
            if in_specs != original_specs:
                got = ", ".join(s.describe() for s in in_specs)
                want = ", ".join(s.describe() for s in original_specs)
                raise ConfigError(f"node '{node['name']}' shares '{owner}' but its inputs ({got}) differ "
                                  f"from that node's ({want})", file, f"{node_path}/input")
            spec = original.spec
            block_name = original.block_name
        else:
            owner = node["name"]
            block_name, params = block_params(node, file, node_path, num_outputs)
            try:
                block = BLOCKS.build(block_name, in_specs, params=params)
            except WidthError as error:
                got = ", ".join(f"{r}: {s.describe()}" for r, s in zip(inputs, in_specs))
                raise ConfigError(f"{block_name} '{node['name']}' {error} (inputs: {got})", file, node_path) from None
            except ValueError as error:
                raise ConfigError(f"{block_name} '{node['name']}': {error}", file, node_path) from None
            spec = getattr(block, "output_spec", None)
            if not isinstance(spec, Spec):  # a custom block that forgot it
                raise ConfigError(f"{block_name} '{node['name']}': the block did not set self.output_spec in its "
                                  f"constructor (a Spec of its output's kind and width, e.g. Spec(SEQUENCE, width), "
                                  f"from which the next node sizes itself)", file, node_path)
            self.blocks[owner] = block
            self.params[owner] = params
        specs[node["name"]] = spec
        self.nodes.append(Node(node["name"], owner, inputs, spec, block_name, node_path))
        for output, output_spec in self.blocks[owner].named_outputs.items():
            part = f"{node['name']}{OUTPUT_SEPARATOR}{output}"
            specs[part] = output_spec
            self.nodes.append(Node(part, owner, [node["name"]], output_spec, block_name, node_path,
                                   part_of=node["name"]))

    def forward(self, inputs: dict[str, Any], stop_at: str | None = None) -> dict[str, Any]:
        """Run every node (up to node ``stop_at`` included, when given). ``inputs`` maps this
        model's input names to run-time values."""
        values = dict(inputs)
        for node in self.nodes:
            if node.part_of is not None:
                continue  # set with its node's value
            value = self.blocks[node.owner](*[values[r] for r in node.inputs])
            if isinstance(value, NamedOutputs):
                for output, named in value.named.items():
                    values[f"{node.name}{OUTPUT_SEPARATOR}{output}"] = named
                value = value.main
            values[node.name] = value
            if node.name == stop_at:
                break
        return values

    def parameter_count(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def describe(self) -> str:
        """A table of the nodes with their widths and parameter counts."""
        rows = [("node", "block", "inputs", "output", "parameters")]
        for name in self.input_names:
            rows.append((name, "(input)", "", "", ""))
        for node in self.nodes:
            if node.part_of is not None:
                count = f"output of {node.part_of}"
            elif node.owner == node.name:
                count = f"{sum(p.numel() for p in self.blocks[node.owner].parameters()):,}"
            else:
                count = f"shared with {node.owner}"
            rows.append((node.name, node.block_name, ", ".join(node.inputs), node.spec.describe(), count))
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        total = self.parameter_count()
        trainable = self.parameter_count(trainable_only=True)
        lines.append(f"total parameters: {total:,} ({trainable:,} trainable); output: {self.output_name} "
                     f"{self.output_spec.describe()}")
        return "\n".join(lines)
