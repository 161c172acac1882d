"""Where registered entries come from: the built-in modules, and the user's own modules."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from blocks.errors import ConfigError


def load_builtin_entries() -> None:
    """Import every module that registers built-in entries (blocks, losses, tokenizers, metrics,
    optimizers, learning-rate schedules).

    The registries call this themselves the first time they are asked for their names or for an
    entry they do not hold; calling it again does nothing.
    """
    import blocks.data.tokenizers  # noqa: F401
    import blocks.distill.annealing  # noqa: F401
    import blocks.distill.attention_losses  # noqa: F401
    import blocks.distill.generation_losses  # noqa: F401
    import blocks.distill.losses  # noqa: F401
    import blocks.distill.multi_teacher  # noqa: F401
    import blocks.distill.tagging_losses  # noqa: F401
    import blocks.layers  # noqa: F401
    import blocks.tasks.tagging  # noqa: F401  (the tagging metrics)
    import blocks.metrics  # noqa: F401
    import blocks.lr_schedules  # noqa: F401
    import blocks.optimizers  # noqa: F401


def import_user_module(name: str, base_dir: str | Path, file: str | None = None, path: str | None = None) -> None:
    """Import a module that registers custom entries: a ``.py`` file (relative to ``base_dir``) or
    a dotted module name (looked up on ``sys.path`` and in ``base_dir``).

    A failure is a :class:`ConfigError` naming the module and the cause, at ``file`` and ``path``
    (the config and JSON path that listed it; both None for a command-line option).
    """
    base_dir = Path(base_dir)
    try:
        if name.endswith(".py"):
            module_file = Path(name) if Path(name).is_absolute() else base_dir / name
            if not module_file.is_file():
                raise ConfigError(f"module file not found: {module_file}", file, path)
            module_name = f"distilblocks_user_{module_file.stem}"
            if module_name in sys.modules:
                return
            spec = importlib.util.spec_from_file_location(module_name, module_file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]  # a fixed file can be imported again
                raise
        else:
            if str(base_dir) not in sys.path:
                sys.path.insert(0, str(base_dir))
            importlib.import_module(name)
    except ConfigError:
        raise
    except Exception as error:  # the user's module failed: say which one and why
        raise ConfigError(f"importing '{name}' failed: {type(error).__name__}: {error}", file, path) from error
