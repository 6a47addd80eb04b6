"""`trainer.push_to_hub()` with the tailored_hf card instead of the Trainer's generic draft.

`Trainer.push_to_hub()` saves the model into `args.output_dir`, lets `Trainer.create_model_card` write README.md and
uploads the folder. `install_trainer_card` wraps that one method on the Trainer instance: after the Trainer's draft is
written, a folder holding a pruned model (`pruning_plan.json` beside `config.json`) gets the generated card and plot
instead, merged with the card already on the Hub so that a user's edits outside our sections survive. Folders without
a saved pruned model (e.g. TRL's card refresh at checkpoint time) keep the Trainer's draft.
"""

from __future__ import annotations

import logging
import sys
from functools import wraps
from pathlib import Path
from typing import Any

from ..structure import PLAN_FILENAME
from .card import CARD_FILENAME, build_card, load_report, merge_cards

logger = logging.getLogger(__name__)

#: Set on a Trainer whose `create_model_card` is already wrapped.
INSTALLED_ATTRIBUTE = "_tailored_hf_card_installed"


def find_calling_trainer(max_depth: int = 12) -> Any | None:
    """The `transformers.Trainer` whose constructor is on the call stack (callbacks receive no Trainer reference).

    `PrunerCallback.on_init_end` runs inside `Trainer.__init__`; the frame's `self` is the Trainer (or a subclass
    such as TRL's `SFTTrainer`). Returns `None` when the callback is driven by something else.
    """
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def _remote_card(trainer: Any) -> str | None:
    """README.md of `trainer.hub_model_id` on the Hub, or `None` (no repo, no card, or the Hub unreachable)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .push import _existing_card

    if not trainer.hub_model_id:
        return None
    try:
        api = HfApi(token=trainer.args.hub_token)
        return _existing_card(api, trainer.hub_model_id, getattr(trainer.args, "hub_revision", None))
    except (HfHubHTTPError, OSError) as err:
        logger.warning("Could not read the card of %s (%s); writing a fresh one.", trainer.hub_model_id, err)
        return None


def install_trainer_card(trainer: Any) -> None:
    """Wrap `trainer.create_model_card` so that `trainer.push_to_hub()` uploads the tailored_hf card and plot."""
    if getattr(trainer, INSTALLED_ATTRIBUTE, False):
        return
    original = trainer.create_model_card

    @wraps(original)
    def create_model_card(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        if not trainer.is_world_process_zero():
            return
        output_dir = Path(trainer.args.output_dir)
        if not ((output_dir / PLAN_FILENAME).is_file() and (output_dir / "config.json").is_file()):
            return
        card = build_card(
            output_dir,
            report=load_report(output_dir),
            repo_id=trainer.hub_model_id,
            model_name=kwargs.get("model_name"),
        )
        existing = _remote_card(trainer)
        if existing is not None:
            card = merge_cards(existing, card)
        card.save(output_dir / CARD_FILENAME)
        logger.info("Wrote the tailored_hf model card to %s", output_dir / CARD_FILENAME)

    trainer.create_model_card = create_model_card
    setattr(trainer, INSTALLED_ATTRIBUTE, True)
