"""Knowledge distillation: the logit losses, and recovery of a pruned model from the dense model as its teacher."""

from .losses import chunked_logit_distillation, logit_distillation, token_selection
from .trainer import TeacherDistillationTrainer, distill_from_teacher

__all__ = [
    "TeacherDistillationTrainer",
    "chunked_logit_distillation",
    "distill_from_teacher",
    "logit_distillation",
    "token_selection",
]
