"""Import every module that registers built-in entries (blocks, losses, tokenizers, metrics)."""
from __future__ import annotations


def load_builtin_entries() -> None:
    import blocks.data.tokenizers  # noqa: F401
    import blocks.distill.annealing  # noqa: F401
    import blocks.distill.attention_losses  # noqa: F401
    import blocks.distill.losses  # noqa: F401
    import blocks.distill.multi_teacher  # noqa: F401
    import blocks.layers  # noqa: F401
    import blocks.metrics  # noqa: F401
    import blocks.lr_schedules  # noqa: F401
    import blocks.optimizers  # noqa: F401
