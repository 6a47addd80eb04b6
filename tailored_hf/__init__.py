"""tailored_hf: physically smaller, task-tailored LLaMA-family models inside a transformers Trainer run.

Importing the package registers the `tailored_llama` / `tailored_mistral` / `tailored_qwen2` model types with
`AutoConfig` and `AutoModelForCausalLM`.
"""

__version__ = "0.1.0.dev0"

from . import modeling  # noqa: E402,F401  (registers the Auto classes)
from .arch import ARCHITECTURES, UnsupportedArchitectureError, get_arch  # noqa: E402
from .callback import PrunerCallback  # noqa: E402
from .hub import push_to_hub  # noqa: E402
from .loading import load_model  # noqa: E402
from .methods.atp import ATPConfig  # noqa: E402
from .methods.depgraph import DepGraphConfig, prune  # noqa: E402
from .methods.l0 import L0Config, NutePruneConfig  # noqa: E402
from .structure import (  # noqa: E402
    PlanError,
    PruningPlan,
    RuntimeMasks,
    apply_plan,
    count_parameters,
    save_pruned,
)

__all__ = [
    "ATPConfig",
    "ARCHITECTURES",
    "DepGraphConfig",
    "L0Config",
    "NutePruneConfig",
    "PlanError",
    "PrunerCallback",
    "PruningPlan",
    "RuntimeMasks",
    "UnsupportedArchitectureError",
    "__version__",
    "apply_plan",
    "count_parameters",
    "get_arch",
    "load_model",
    "push_to_hub",
    "prune",
    "save_pruned",
]
