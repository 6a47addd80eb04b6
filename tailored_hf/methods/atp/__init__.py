"""ATP: All-in-One Tuning and Structural Pruning (Lu et al., arXiv 2412.14426) as a `PrunerCallback` method.

```python
from tailored_hf import PrunerCallback
from tailored_hf.methods.atp import ATPConfig

trainer = SFTTrainer(..., peft_config=LoraConfig(...), callbacks=[PrunerCallback(ATPConfig(target_sparsity=0.4))])
```

Pieces: `DecisionGenerator` (the trainable pruning-decision generator), `ATPForwards` (the LoRA-aware forwards
f_G / f_L), `group_lasso`, `ParameterBudget` / `sparsity_loss` (R(d) and L_s), `CalibrationStream` (the cycled
calibration loader) and `ATPMethod` (registered as `"atp"`).
"""

from .calibration import CalibrationStream, EmptyCalibrationError
from .config import ATPConfig
from .forwards import ATPForwards, ParameterBudget, expanded_masks, group_lasso, sparsity_loss
from .generator import Clamp, DecisionGenerator, LayerDecision, decision_lengths, gumbel_sigmoid, straight_through
from .pruner import ATPMethod, layer_pruning_ratios

__all__ = [
    "ATPConfig",
    "ATPForwards",
    "ATPMethod",
    "CalibrationStream",
    "Clamp",
    "DecisionGenerator",
    "EmptyCalibrationError",
    "LayerDecision",
    "ParameterBudget",
    "decision_lengths",
    "expanded_masks",
    "group_lasso",
    "gumbel_sigmoid",
    "layer_pruning_ratios",
    "sparsity_loss",
    "straight_through",
]
