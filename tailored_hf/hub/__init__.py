"""Sharing pruned models: generated model cards (`model_cards/` template), per-layer plots, `push_to_hub`.

```python
from tailored_hf.hub import push_to_hub

push_to_hub("outputs/boolq-20", "me/smollm2-boolq-20")   # pipeline output, or a save_pruned directory, or a model
```
"""

from .card import build_card, merge_cards, write_card
from .plot import PLOT_FILENAME, plot_per_layer
from .push import HubPushError, push_to_hub, resolve_model_dir

__all__ = [
    "PLOT_FILENAME",
    "HubPushError",
    "build_card",
    "merge_cards",
    "plot_per_layer",
    "push_to_hub",
    "resolve_model_dir",
    "write_card",
]
