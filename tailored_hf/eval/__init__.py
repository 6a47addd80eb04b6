"""Evaluation: lm-eval-exact multiple-choice scoring, lm-eval bridge, perplexity, generation metrics, reports."""

from .aggregate import (
    PairedDifference,
    mean_accuracy,
    paired_mean_difference,
    recovery_rate,
    relative_performance,
    task_score,
)
from .domain import evaluate_domain_task
from .evaluate import PRIMARY_METRIC, evaluate_tasks
from .generation import (
    GenerationSettings,
    accuracy,
    average_over_runs,
    extract_label,
    generate_predictions,
    macro_f1,
    rouge_scores,
)
from .lm_eval_bridge import LOCAL_TASKS, evaluate_with_lm_eval, lm_eval_requests, wikitext_documents
from .multiple_choice import (
    MultipleChoiceItemResult,
    MultipleChoiceResult,
    encode_pair,
    loglikelihood_tokens,
    packed_loglikelihood_tokens,
    score_multiple_choice,
)
from .perplexity import (
    PerplexityResult,
    llm_pruner_perplexity,
    lm_eval_wikitext_perplexity,
    load_ppl_text,
    token_perplexity,
)
from .report import EvalReport

COMMONSENSE_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")

__all__ = [
    "COMMONSENSE_TASKS",
    "EvalReport",
    "GenerationSettings",
    "accuracy",
    "average_over_runs",
    "evaluate_domain_task",
    "extract_label",
    "generate_predictions",
    "macro_f1",
    "mean_accuracy",
    "PairedDifference",
    "paired_mean_difference",
    "recovery_rate",
    "relative_performance",
    "rouge_scores",
    "task_score",
    "LOCAL_TASKS",
    "PRIMARY_METRIC",
    "MultipleChoiceItemResult",
    "MultipleChoiceResult",
    "PerplexityResult",
    "encode_pair",
    "evaluate_tasks",
    "evaluate_with_lm_eval",
    "llm_pruner_perplexity",
    "lm_eval_requests",
    "lm_eval_wikitext_perplexity",
    "load_ppl_text",
    "loglikelihood_tokens",
    "packed_loglikelihood_tokens",
    "score_multiple_choice",
    "token_perplexity",
    "wikitext_documents",
]
