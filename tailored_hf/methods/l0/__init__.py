"""L0 masks with progressive numerous-teacher distillation (NutePrune, arXiv 2402.09773), registered as `"l0"`.

```python
from tailored_hf import PrunerCallback
from tailored_hf.methods.l0 import L0Config

trainer = SFTTrainer(..., peft_config=LoraConfig(...), callbacks=[PrunerCallback(L0Config(target_sparsity=0.2))])
trainer.train()                 # masks + LoRA co-trained, distilled from snapshots; pruned physically at the end
trainer.save_model("out/model")
```

Pieces: `HardConcrete` (the gate distribution), `L0Masks` + `expected_parameters` (s_hat), `TeacherBank` (snapshots
and the progressive schedule), `select_plan` (deterministic final masks) and `L0Pruner` (the Trainer-facing method).
"""

from ...distillation.losses import chunked_logit_distillation, logit_distillation, token_selection
from .config import L0Config, NutePruneConfig
from .hard_concrete import HardConcrete
from .masks import L0Masks, MaskValues, expected_parameters, max_feasible_sparsity, minimal_plan
from .pruner import L0Pruner, MaskDivergenceError
from .selection import fit_gqa, select_plan
from .teachers import Snapshot, TeacherBank, layer_distillation

__all__ = [
    "HardConcrete",
    "L0Config",
    "L0Masks",
    "L0Pruner",
    "MaskDivergenceError",
    "MaskValues",
    "NutePruneConfig",
    "Snapshot",
    "TeacherBank",
    "chunked_logit_distillation",
    "expected_parameters",
    "fit_gqa",
    "layer_distillation",
    "logit_distillation",
    "max_feasible_sparsity",
    "minimal_plan",
    "select_plan",
    "token_selection",
]
