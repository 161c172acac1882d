"""Task types: classification, regression, tagging (see :mod:`blocks.tasks.base`)."""
from blocks.tasks.base import (TASK_TYPES, UNLABELLED, TaskType, load_task_types, register_task_type, task_class,
                               task_from_config, task_from_json)

__all__ = ["TASK_TYPES", "UNLABELLED", "TaskType", "load_task_types", "register_task_type", "task_class",
           "task_from_config", "task_from_json"]
