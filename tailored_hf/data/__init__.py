"""Data layer: task registry, loading, prompt formats, K-shot sampling and calibration text."""

from .calibration import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_CALIBRATION_SEQ_LEN,
    calibration_batches,
    load_calibration_texts,
    load_lm_text,
    packed_windows,
)
from .kshot import DEFAULT_RECOVERY_K, allocate_stratified, sample_k_shots
from .mappers import (
    IGNORE_INDEX,
    map_for_scoring,
    map_for_training,
    to_prompt_completion,
    to_scoring,
    tokenize_prompt_completion,
)
from .prompts import (
    BUILTIN_PROMPTS,
    FormattedExample,
    TaskView,
    format_example,
    get_prompt,
    hellaswag_preprocess,
    list_prompts,
    register_prompt,
    task_view,
)
from .sources import (
    DATA_DIR_ENV_VAR,
    PACKAGED_DATA_DIR,
    load_local_file,
    load_task_split,
    resolve_data_dir,
    validate_columns,
)
from .tasks import COMMONSENSE_TASKS, TASK_ALIASES, TASKS, TaskSpec, get_task, list_tasks

__all__ = [
    "BUILTIN_PROMPTS",
    "COMMONSENSE_TASKS",
    "DATA_DIR_ENV_VAR",
    "DEFAULT_CALIBRATION_SAMPLES",
    "DEFAULT_CALIBRATION_SEQ_LEN",
    "DEFAULT_RECOVERY_K",
    "IGNORE_INDEX",
    "PACKAGED_DATA_DIR",
    "TASKS",
    "TASK_ALIASES",
    "FormattedExample",
    "TaskSpec",
    "TaskView",
    "allocate_stratified",
    "calibration_batches",
    "format_example",
    "get_prompt",
    "get_task",
    "hellaswag_preprocess",
    "list_prompts",
    "list_tasks",
    "load_calibration_texts",
    "load_lm_text",
    "packed_windows",
    "load_local_file",
    "load_task_split",
    "map_for_scoring",
    "map_for_training",
    "register_prompt",
    "resolve_data_dir",
    "sample_k_shots",
    "task_view",
    "to_prompt_completion",
    "to_scoring",
    "tokenize_prompt_completion",
    "validate_columns",
]
