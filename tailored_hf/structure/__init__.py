"""The structure engine: prunable units, run-time masks, `PruningPlan`, `apply_plan`, saving, task vocabulary."""

from .geometry import LayerGeometry, ModelGeometry
from .io import check_saved_plan, merged_state_dict, save_pruned
from .masks import RuntimeMasks
from .plan import PLAN_FILENAME, LayerPlan, PlanError, PruningPlan, top_indices
from .prune import PLAN_ATTRIBUTE, apply_plan, compose_plans, count_parameters
from .vocabulary import remaining_sparsity, select_tokens, trim_tokenizer, trim_vocabulary

__all__ = [
    "PLAN_ATTRIBUTE",
    "PLAN_FILENAME",
    "LayerGeometry",
    "LayerPlan",
    "ModelGeometry",
    "PlanError",
    "PruningPlan",
    "RuntimeMasks",
    "apply_plan",
    "check_saved_plan",
    "compose_plans",
    "count_parameters",
    "merged_state_dict",
    "remaining_sparsity",
    "save_pruned",
    "select_tokens",
    "top_indices",
    "trim_tokenizer",
    "trim_vocabulary",
]
