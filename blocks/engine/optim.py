"""A stage's optimizer and learning-rate schedule, built from its ``optimizer`` and ``schedule`` nodes.

The optimizers and schedules themselves are registered entries (:mod:`blocks.optimizers`,
:mod:`blocks.lr_schedules`: their options, defaults and checks). This module builds them for the
trainer and adds what training needs around them: an embedding with sparse gradients paired with
``SparseAdam`` (:class:`SparseAwareOptimizer`), and gradient clipping that accepts sparse gradients.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from blocks.lr_schedules import check_schedule
from blocks.optimizers import check_optimizer, option_defaults
from blocks.registry import OPTIMIZERS, SCHEDULES

if TYPE_CHECKING:
    from blocks.graph import Graph


def sparse_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The trainable weights of ``module`` whose gradients are sparse (embeddings with ``sparse=True``)."""
    return [m.weight for m in module.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad]


class SparseAwareOptimizer(torch.optim.Optimizer):
    """The configured Adam/AdamW for dense gradients plus ``SparseAdam`` for sparse ones, as one optimizer.

    torch's Adam rejects sparse gradients and ``SparseAdam`` accepts nothing else, so a model with a
    sparse embedding needs both. This pairs them behind the ``Optimizer`` interface the engine uses:
    ``param_groups`` lists both optimizers' groups (the very dicts, so a learning-rate schedule
    scales both), ``step``/``zero_grad`` go to both, and ``state_dict`` holds both states.
    """

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.SparseAdam):
        # Optimizer.__init__ is not called: the parameter groups and state live in the two parts.
        self.dense, self.sparse = dense, sparse
        self.defaults = dict(dense.defaults)
        self._optimizer_step_pre_hooks: dict = OrderedDict()
        self._optimizer_step_post_hooks: dict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict = OrderedDict()

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    @property
    def state(self) -> dict:
        return {**self.dense.state, **self.sparse.state}

    def step(self, closure=None):
        loss = self.dense.step(closure)
        self.sparse.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"dense", "sparse"}:
            raise ValueError("the saved optimizer state is not a dense + sparse pair (was the embedding "
                             "'sparse' setting changed since it was saved?)")
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])

    def __repr__(self) -> str:
        return f"SparseAwareOptimizer(dense={type(self.dense).__name__}, sparse=SparseAdam)"


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes sparse gradients (which torch's rejects).

    The total 2-norm is over all gradients, a sparse one counted by its coalesced values (repeated
    rows summed first, as the dense gradient would have them); all are scaled by the same factor.
    """
    parameters = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in parameters):
        return nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = []
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(factor.to(g.dtype))
    return total


def parameter_groups(model: Graph, parameters: list[nn.Parameter], block_lr: dict | None,
                     where: str = "/block_lr") -> list:
    """``parameters`` as they go to :func:`build_optimizer`: unchanged without ``block_lr``, else
    one group per node named in ``block_lr`` (its parameters, with that ``lr``) and one for the rest.

    Args:
        model: the trained graph (its ``blocks`` are keyed by the name of the node that owns them).
        parameters: the trainable parameters, the model's and any others (loss projections).
        block_lr: the stage's ``block_lr`` node, {node name: learning rate}.
        where: JSON path of that node, for error messages.

    Raises:
        ConfigError: a name that is not a node with parameters of ``model``, or a node that
            shares another's weights (the rate belongs to the node that owns them).
    """
    if not block_lr:
        return parameters
    from blocks.errors import ConfigError, did_you_mean

    owners = {node.name: node.owner for node in model.nodes if node.part_of is None}
    trainable = {id(p) for p in parameters}
    groups, taken = [], set()
    for name, lr in block_lr.items():
        if name not in owners:
            raise ConfigError(f"'{name}' is not a node of model '{model.name}'"
                              f"{did_you_mean(name, owners)}", None, f"{where}/{name}")
        if owners[name] != name:
            raise ConfigError(f"node '{name}' shares the weights of '{owners[name]}'; set the learning rate "
                              f"on '{owners[name]}'", None, f"{where}/{name}")
        chosen = [p for p in model.blocks[name].parameters() if id(p) in trainable]
        if not chosen:
            raise ConfigError(f"node '{name}' has no trainable parameters (a block without weights, or "
                              f"frozen), so a learning rate for it changes nothing", None, f"{where}/{name}")
        groups.append({"params": chosen, "lr": float(lr)})
        taken.update(id(p) for p in chosen)
    rest = [p for p in parameters if id(p) not in taken]
    return ([{"params": rest}] if rest else []) + groups


def build_optimizer(parameters: Any, config: dict | None, where: str = "/optimizer",
                    sparse: Iterable[torch.Tensor] = ()) -> torch.optim.Optimizer:
    """An optimizer over ``parameters`` (an iterable of tensors or of parameter-group dicts).

    Args:
        parameters: what ``torch.optim`` optimizers accept.
        config: the ``optimizer`` config node (see :mod:`blocks.optimizers`); None means defaults.
        where: JSON path of the node, for error messages.
        sparse: those of ``parameters`` whose gradients are sparse (:func:`sparse_parameters`). An
            optimizer marked ``takes_sparse_gradients`` (sgd) gets them in a group without weight
            decay; the others are paired with ``SparseAdam`` (same lr, betas and eps; no weight
            decay) inside a :class:`SparseAwareOptimizer`.

    Raises:
        ConfigError: unknown type or option (with a suggestion), or a bad value, at ``where/<key>``.
    """
    kind, options = check_optimizer(config, where)
    parameters = list(parameters)  # a generator would be spent by a first try
    sparse = list(sparse)
    if sparse:
        if any(isinstance(p, dict) for p in parameters):
            from blocks.errors import ConfigError

            raise ConfigError("'block_lr' cannot be combined with an Embedding with 'sparse': true (its "
                              "sparse gradients go to SparseAdam, which has one learning rate); set "
                              "'sparse': false", None, where.rsplit("/", 1)[0] + "/block_lr")
        chosen = {id(p) for p in sparse}
        dense = [p for p in parameters if id(p) not in chosen]
        if getattr(OPTIMIZERS.get(kind), "takes_sparse_gradients", False):
            groups = ([{"params": dense}] if dense else []) + [{"params": sparse, "weight_decay": 0.0}]
            return OPTIMIZERS.build(kind, groups, where, params=options)
        resolved = {**option_defaults(kind), **options}
        betas = resolved.get("betas", (0.9, 0.999))
        sparse_optimizer = torch.optim.SparseAdam(sparse, lr=resolved["lr"], betas=(float(betas[0]), float(betas[1])),
                                                  eps=resolved.get("eps", 1e-8))
        if not dense:
            return sparse_optimizer
        return SparseAwareOptimizer(OPTIMIZERS.build(kind, dense, where, params=options), sparse_optimizer)
    return OPTIMIZERS.build(kind, parameters, where, params=options)


def build_schedule(optimizer: torch.optim.Optimizer, config: dict | None, total_steps: int,
                   where: str = "/schedule") -> LambdaLR:
    """A learning-rate schedule for ``optimizer`` over ``total_steps`` optimizer steps.

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        config: the ``schedule`` config node (see :mod:`blocks.lr_schedules`); None means constant.
        total_steps: number of optimizer steps in the whole training (>= 1).
        where: JSON path of the node, for error messages.

    The returned scheduler's ``state_dict()`` is JSON-able (its multiplier is a plain function,
    which torch does not save); rebuild it with the same config and ``total_steps`` before
    ``load_state_dict``.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, not {total_steps!r}")
    kind, options = check_schedule(config, where)
    return SCHEDULES.build(kind, optimizer, total_steps, where, params=options)
