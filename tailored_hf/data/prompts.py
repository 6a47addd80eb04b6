"""Prompt catalogue: named prompt variants per task.

A prompt variant turns one dataset row into a [`FormattedExample`], which defines both

- the **scoring form**: answer option `i` is scored as `log p(delimiter + choices[i] | contexts[i])`, and
- the **training form**: `prompt = contexts[gold]`, `completion = delimiter + choices[gold]` (TRL prompt-completion),

so a model is trained and evaluated on the same format. Built-in variants, registered for every task:

- `lm_eval`: the exact zero-shot format of lm-evaluation-harness 0.4.13 (harness-style formats for tasks the harness
  does not ship: MedNLI follows GLUE-MNLI, CaseHOLD, HQS, BillSum and Alpaca use a `Question:/Answer:`-style format).
- `tailored`: a task-specific instruction naming the task and the answer options.
- `alpaca`: the generic Stanford Alpaca instruction template.
- `reread`: re-reading (Xu et al., 2023, "Re-Reading Improves Reasoning in Large Language Models").
- `chat`: the tokenizer's chat template around the `tailored` instruction (needs a tokenizer with a chat template).
"""

from __future__ import annotations

import inspect
import logging
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .tasks import TASKS, TaskSpec, get_task

logger = logging.getLogger(__name__)

DEFAULT_TARGET_DELIMITER = " "
"""lm-evaluation-harness' default `target_delimiter`, prepended to every continuation."""

LM_EVAL_PROMPT = "lm_eval"
TAILORED_PROMPT = "tailored"
ALPACA_PROMPT = "alpaca"
REREAD_PROMPT = "reread"
CHAT_PROMPT = "chat"
BUILTIN_PROMPTS: tuple[str, ...] = (LM_EVAL_PROMPT, TAILORED_PROMPT, ALPACA_PROMPT, REREAD_PROMPT, CHAT_PROMPT)

ALPACA_TEMPLATE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
REREAD_TEMPLATE = "Q: {question}\nRead the question again: {question}\n"

BOOLQ_CHOICES = ("no", "yes")
PUBMEDQA_CHOICES = ("yes", "no", "maybe")
MEDNLI_LABELS = ("entailment", "neutral", "contradiction")
MEDNLI_LM_EVAL_CHOICES = ("True", "Neither", "False")  # lm-eval's GLUE-MNLI wording, same label order
WINOGRANDE_ANSWER_TO_INDEX = {"1": 0, "2": 1}
CASEHOLD_NUM_HOLDINGS = 5
OPTION_LETTERS = string.ascii_uppercase


@dataclass
class FormattedExample:
    """
    One row rendered by a prompt variant.

    Args:
        contexts (`list[str]`): One context per answer option (identical for ordinary tasks; WinoGrande's partial
            scoring substitutes each option into its own context).
        choices (`list[str]`): One continuation per option, *without* the target delimiter. Generation tasks have a
            single choice: the reference text.
        gold (`int`): Index of the correct option.
        target_delimiter (`str`): Prepended to every continuation (`" "` as in lm-eval; `""` after a newline or a chat
            template's generation prompt).
    """

    contexts: list[str]
    choices: list[str]
    gold: int
    target_delimiter: str = DEFAULT_TARGET_DELIMITER

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("FormattedExample needs at least one choice.")
        if len(self.contexts) != len(self.choices):
            raise ValueError(
                f"FormattedExample needs one context per choice, got {len(self.contexts)} contexts and "
                f"{len(self.choices)} choices. Repeat the shared context for every choice."
            )
        if not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold={self.gold} is out of range for {len(self.choices)} choices.")

    @classmethod
    def shared(
        cls, context: str, choices: Sequence[str], gold: int, target_delimiter: str = DEFAULT_TARGET_DELIMITER
    ) -> FormattedExample:
        """Builds an example whose options share one context."""
        return cls([context] * len(choices), list(choices), gold, target_delimiter)

    @property
    def continuations(self) -> list[str]:
        """Continuations with the target delimiter, exactly as scored."""
        return [f"{self.target_delimiter}{choice}" for choice in self.choices]

    @property
    def prompt(self) -> str:
        """Training prompt: the context of the gold option."""
        return self.contexts[self.gold]

    @property
    def completion(self) -> str:
        """Training completion: the gold continuation, with the target delimiter."""
        return self.continuations[self.gold]


PromptBuilder = Callable[..., FormattedExample]
"""`builder(example, tokenizer=None) -> FormattedExample` (the `tokenizer` parameter is optional)."""


# --------------------------------------------------------------------------------------------------------------------
# Task views: the pieces of a row that the generic variants (tailored/alpaca/reread/chat) assemble.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TaskView:
    """
    Task-agnostic pieces of one row.

    Args:
        instruction (`str`): What to do, naming the answer options.
        question (`str`): The part re-read by the `reread` variant (may be empty).
        choices (`list[str]`): Answer texts (the reference for generation tasks).
        gold (`int`): Index of the correct answer.
        context (`str`): Background shown before the question (passage, abstract, bill...).
        question_label (`str`): Label printed before the question (`""` prints the question bare).
        show_options (`bool`): Whether to list the options in the prompt (not needed when the instruction names them).
        answer_prefix (`str`): Cue ending the prompt, e.g. `"Answer:"`.
    """

    instruction: str
    question: str
    choices: list[str]
    gold: int
    context: str = ""
    question_label: str = "Question"
    show_options: bool = False
    answer_prefix: str = "Answer:"

    @property
    def options_block(self) -> str:
        if not self.show_options:
            return ""
        return "Options:\n" + "\n".join(f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(self.choices))

    @property
    def question_block(self) -> str:
        if not self.question:
            return ""
        return f"{self.question_label}: {self.question}" if self.question_label else self.question

    @property
    def input(self) -> str:
        """The content (context, question, options) without the instruction."""
        return "\n".join(part for part in (self.context, self.question_block, self.options_block) if part)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval 0.4.13's HellaSwag text cleaning (`tasks/hellaswag/utils.py::preprocess`)."""
    text = text.strip()
    # Brackets are artifacts of the WikiHow portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_query_and_endings(example: Mapping[str, Any]) -> tuple[str, list[str]]:
    """
    Returns lm-eval's HellaSwag `query` and cleaned endings.

    Handles the full Hub schema (`ctx_a`, `ctx_b`, raw endings) and rows already cleaned upstream
    (`preprocessed=True`, or no `ctx_a`/`ctx_b`: `ctx` and `endings` are used as they are).
    """
    if "ctx_a" in example and "ctx_b" in example and not example.get("preprocessed", False):
        ctx = example["ctx_a"] + " " + example["ctx_b"].capitalize()
        query = hellaswag_preprocess(example["activity_label"] + ": " + ctx)
        endings = [hellaswag_preprocess(ending) for ending in example["endings"]]
        return query, endings
    if "ctx" not in example:
        raise ValueError("HellaSwag rows need `ctx_a`/`ctx_b` (Hub schema) or `ctx` (preprocessed rows).")
    query = f"{example['activity_label'].strip()}: {example['ctx'].strip()}"
    return query, list(example["endings"])


def _letter_index(labels: Sequence[str], key: str) -> int:
    key = str(key).strip()
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the choice labels {list(labels)}.")
    return list(labels).index(key)


def _boolq_gold(example: Mapping[str, Any]) -> int:
    answer = example["answer"]
    if isinstance(answer, str):
        if answer.lower() not in ("true", "false"):
            raise ValueError(f"BoolQ `answer` must be a bool, got {answer!r}.")
        return int(answer.lower() == "true")
    return int(bool(answer))


def _pubmedqa_gold(example: Mapping[str, Any]) -> int:
    decision = str(example["final_decision"]).strip().lower()
    if decision not in PUBMEDQA_CHOICES:
        raise ValueError(f"PubMedQA `final_decision` must be one of {PUBMEDQA_CHOICES}, got {decision!r}.")
    return PUBMEDQA_CHOICES.index(decision)


def _mednli_gold(example: Mapping[str, Any]) -> int:
    label = str(example["gold_label"]).strip().lower()
    if label not in MEDNLI_LABELS:
        raise ValueError(f"MedNLI `gold_label` must be one of {MEDNLI_LABELS}, got {label!r}.")
    return MEDNLI_LABELS.index(label)


def _casehold_holdings(example: Mapping[str, Any]) -> list[str]:
    return [example[f"holding_{i}"] for i in range(CASEHOLD_NUM_HOLDINGS)]


def _winogrande_gold(example: Mapping[str, Any]) -> int:
    answer = str(example["answer"]).strip()
    if answer not in WINOGRANDE_ANSWER_TO_INDEX:
        raise ValueError(f"WinoGrande `answer` must be '1' or '2', got {answer!r}.")
    return WINOGRANDE_ANSWER_TO_INDEX[answer]


def _view(example: Mapping[str, Any], spec: TaskSpec) -> TaskView:
    name = spec.name
    if name == "boolq":
        return TaskView(
            instruction="Read the passage and answer the question with yes or no.",
            context=f"Passage: {example['passage']}",
            question=f"{example['question']}?",
            choices=list(BOOLQ_CHOICES),
            gold=_boolq_gold(example),
        )
    if name == "piqa":
        return TaskView(
            instruction="Choose the solution that best achieves the physical goal: option A or option B.",
            question_label="Goal",
            question=example["goal"],
            choices=[example["sol1"], example["sol2"]],
            gold=int(example["label"]),
            show_options=True,
        )
    if name == "hellaswag":
        query, endings = hellaswag_query_and_endings(example)
        return TaskView(
            instruction="Choose the most plausible continuation of the description: option A, B, C or D.",
            question_label="Description",
            question=query,
            choices=endings,
            gold=int(example["label"]),
            show_options=True,
        )
    if name == "winogrande":
        return TaskView(
            instruction="Choose the option that correctly fills the blank (_) in the sentence: option A or option B.",
            question_label="Sentence",
            question=example["sentence"],
            choices=[example["option1"], example["option2"]],
            gold=_winogrande_gold(example),
            show_options=True,
        )
    if name in ("arc_easy", "arc_challenge", "openbookqa"):
        question = example["question"] if name != "openbookqa" else example["question_stem"]
        labels = list(example["choices"]["label"])
        letters = ", ".join(OPTION_LETTERS[: len(labels)])
        subject = "science question" if name != "openbookqa" else "elementary science question"
        return TaskView(
            instruction=f"Answer the {subject} by choosing the correct option ({letters}).",
            question=question,
            choices=list(example["choices"]["text"]),
            gold=_letter_index(labels, example["answerKey"]),
            show_options=True,
        )
    if name == "pubmedqa":
        return TaskView(
            instruction="Read the abstract and answer the biomedical research question with yes, no or maybe.",
            context="Abstract: " + "\n".join(example["CONTEXTS"]),
            question=example["QUESTION"],
            choices=list(PUBMEDQA_CHOICES),
            gold=_pubmedqa_gold(example),
        )
    if name == "mednli":
        return TaskView(
            instruction=(
                "Decide whether the clinical premise entails the hypothesis. "
                "Answer with entailment, neutral or contradiction."
            ),
            context=f"Premise: {example['sentence1']}",
            question_label="Hypothesis",
            question=example["sentence2"],
            choices=list(MEDNLI_LABELS),
            gold=_mednli_gold(example),
        )
    if name == "casehold":
        holdings = _casehold_holdings(example)
        return TaskView(
            instruction="Choose the legal holding that fills the <HOLDING> slot of the citing text: option A to E.",
            question_label="Citing text",
            question=example["citing_prompt"],
            choices=holdings,
            gold=int(example["label"]),
            show_options=True,
        )
    if name == "alpaca":
        return TaskView(
            instruction=example["instruction"],
            question_label="",
            question=example["input"],
            choices=[example["output"]],
            gold=0,
            answer_prefix="Response:",
        )
    if name == "hqs":
        return TaskView(
            instruction="Summarize the consumer health question into a short question that keeps its medical focus.",
            question=example["CHQ"],
            choices=[example["Summary"]],
            gold=0,
            answer_prefix="Summary:",
        )
    if name == "billsum":
        return TaskView(
            instruction="Summarize the US congressional bill.",
            context=f"Bill: {example['source']}",
            question="",
            choices=[example["summary"]],
            gold=0,
            answer_prefix="Summary:",
        )
    raise ValueError(
        f"No built-in prompt view for task {name!r}; register your own variant with "
        f"`register_prompt({name!r}, name, builder)`."
    )


def task_view(example: Mapping[str, Any], task: str | TaskSpec) -> TaskView:
    """Returns the task-agnostic [`TaskView`] of one row."""
    return _view(example, get_task(task))


# --------------------------------------------------------------------------------------------------------------------
# Built-in variants
# --------------------------------------------------------------------------------------------------------------------


def _lm_eval(example: Mapping[str, Any], spec: TaskSpec) -> FormattedExample:
    name = spec.name
    if name == "boolq":  # super_glue/boolq/default.yaml
        context = f"{example['passage']}\nQuestion: {example['question']}?\nAnswer:"
        return FormattedExample.shared(context, BOOLQ_CHOICES, _boolq_gold(example))
    if name == "piqa":  # piqa/piqa.yaml
        context = f"Question: {example['goal']}\nAnswer:"
        return FormattedExample.shared(context, [example["sol1"], example["sol2"]], int(example["label"]))
    if name == "hellaswag":  # hellaswag/hellaswag.yaml + utils.process_docs
        query, endings = hellaswag_query_and_endings(example)
        return FormattedExample.shared(query, endings, int(example["label"]))
    if name == "winogrande":  # winogrande/preprocess_winogrande.py: partial scoring
        sentence = example["sentence"]
        if "_" not in sentence:
            raise ValueError(f"WinoGrande sentence has no blank '_': {sentence!r}.")
        idx = sentence.index("_")
        contexts = [sentence[:idx] + option for option in (example["option1"], example["option2"])]
        target = sentence[idx + 1 :].strip()
        return FormattedExample(contexts, [target, target], _winogrande_gold(example))
    if name in ("arc_easy", "arc_challenge"):  # arc/arc_easy.yaml
        context = f"Question: {example['question']}\nAnswer:"
        choices = example["choices"]
        return FormattedExample.shared(context, choices["text"], _letter_index(choices["label"], example["answerKey"]))
    if name == "openbookqa":  # openbookqa/openbookqa.yaml
        choices = example["choices"]
        gold = _letter_index(choices["label"], example["answerKey"])
        return FormattedExample.shared(example["question_stem"], choices["text"], gold)
    if name == "pubmedqa":  # pubmedqa/preprocess_pubmedqa.py
        context = "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(example["CONTEXTS"]), example["QUESTION"])
        return FormattedExample.shared(context, PUBMEDQA_CHOICES, _pubmedqa_gold(example))
    if name == "mednli":  # glue/mnli/utils.py format
        hypothesis = example["sentence2"].strip()
        hypothesis += "" if hypothesis.endswith(".") else "."
        context = f"{example['sentence1']}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:"
        return FormattedExample.shared(context, MEDNLI_LM_EVAL_CHOICES, _mednli_gold(example))
    if name == "casehold":
        context = f"{example['citing_prompt']}\nHolding:"
        return FormattedExample.shared(context, _casehold_holdings(example), int(example["label"]))
    if name == "alpaca":
        question = example["instruction"] + (f"\n{example['input']}" if example["input"] else "")
        return FormattedExample.shared(f"Question: {question}\nAnswer:", [example["output"]], 0)
    if name == "hqs":
        return FormattedExample.shared(f"Question: {example['CHQ']}\nSummary:", [example["Summary"]], 0)
    if name == "billsum":
        return FormattedExample.shared(f"Bill: {example['source']}\nSummary:", [example["summary"]], 0)
    raise ValueError(f"No lm_eval format for task {name!r}; register one with `register_prompt`.")


def _tailored(example: Mapping[str, Any], spec: TaskSpec) -> FormattedExample:
    view = _view(example, spec)
    body = f"{view.instruction}\n\n{view.input}" if view.input else view.instruction
    return FormattedExample.shared(f"{body}\n{view.answer_prefix}", view.choices, view.gold)


def _alpaca(example: Mapping[str, Any], spec: TaskSpec) -> FormattedExample:
    view = _view(example, spec)
    if view.input:
        prompt = ALPACA_TEMPLATE_WITH_INPUT.format(instruction=view.instruction, input=view.input)
    else:
        prompt = ALPACA_TEMPLATE_NO_INPUT.format(instruction=view.instruction)
    return FormattedExample.shared(prompt, view.choices, view.gold, target_delimiter="")


def _reread(example: Mapping[str, Any], spec: TaskSpec) -> FormattedExample:
    view = _view(example, spec)
    question = view.question or view.instruction
    parts = [view.instruction, ""] if view.question else []
    if view.context:
        parts.append(view.context)
    parts.append(REREAD_TEMPLATE.format(question=question).rstrip("\n"))
    if view.options_block:
        parts.append(view.options_block)
    parts.append("A:")
    return FormattedExample.shared("\n".join(parts), view.choices, view.gold)


def _chat(example: Mapping[str, Any], spec: TaskSpec, tokenizer: Any = None) -> FormattedExample:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The 'chat' prompt needs a tokenizer with a chat template: pass `tokenizer=` (e.g. an *-Instruct model's "
            "tokenizer) or set `tokenizer.chat_template`, or use another prompt such as 'tailored'."
        )
    view = _view(example, spec)
    content = f"{view.instruction}\n\n{view.input}" if view.input else view.instruction
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(prompt, str):
        raise ValueError("`tokenizer.apply_chat_template(..., tokenize=False)` must return a string.")
    return FormattedExample.shared(prompt, view.choices, view.gold, target_delimiter="")


_BUILTIN_FACTORIES: dict[str, Callable[..., FormattedExample]] = {
    LM_EVAL_PROMPT: _lm_eval,
    TAILORED_PROMPT: _tailored,
    ALPACA_PROMPT: _alpaca,
    REREAD_PROMPT: _reread,
    CHAT_PROMPT: _chat,
}


def _bind(factory: Callable[..., FormattedExample], spec: TaskSpec) -> PromptBuilder:
    if factory is _chat:

        def builder(example: Mapping[str, Any], tokenizer: Any = None) -> FormattedExample:
            return _chat(example, spec, tokenizer)

    else:

        def builder(example: Mapping[str, Any], tokenizer: Any = None) -> FormattedExample:
            return factory(example, spec)

    builder.__name__ = f"{factory.__name__.lstrip('_')}_{spec.name}"
    return builder


_REGISTRY: dict[str, dict[str, PromptBuilder]] = {
    name: {variant: _bind(factory, spec) for variant, factory in _BUILTIN_FACTORIES.items()}
    for name, spec in TASKS.items()
}


# --------------------------------------------------------------------------------------------------------------------
# Registry API
# --------------------------------------------------------------------------------------------------------------------


def register_prompt(task: str | TaskSpec, name: str, builder: PromptBuilder, overwrite: bool = False) -> None:
    """
    Registers a prompt variant for a task.

    Args:
        task (`str` or [`TaskSpec`]): Registered task (name or spec).
        name (`str`): Variant name.
        builder (`Callable`): `builder(example) -> FormattedExample` or `builder(example, tokenizer=None)`.
        overwrite (`bool`, defaults to `False`): Replace an existing variant of the same name.

    Raises:
        `ValueError`: Unknown task, non-callable builder, or duplicate name without `overwrite=True`.
    """
    spec = get_task(task)
    if not isinstance(name, str) or not name:
        raise ValueError("Prompt `name` must be a non-empty string.")
    if not callable(builder):
        raise ValueError(f"Prompt builder for {spec.name!r}/{name!r} must be callable, got {type(builder).__name__}.")
    variants = _REGISTRY.setdefault(spec.name, {})
    if name in variants and not overwrite:
        raise ValueError(
            f"Prompt {name!r} is already registered for task {spec.name!r}; pass `overwrite=True` to replace it."
        )
    variants[name] = builder


def list_prompts(task: str | TaskSpec) -> list[str]:
    """Returns the prompt variant names registered for `task`."""
    return list(_REGISTRY.get(get_task(task).name, {}))


def get_prompt(task: str | TaskSpec, name: str) -> PromptBuilder:
    """
    Returns the builder of a prompt variant.

    Raises:
        `ValueError`: If the variant is unknown; the message lists the known names.
    """
    spec = get_task(task)
    variants = _REGISTRY.get(spec.name, {})
    if name not in variants:
        raise ValueError(f"Unknown prompt {name!r} for task {spec.name!r}. Known prompts: {sorted(variants)}.")
    return variants[name]


def _accepts_tokenizer(builder: PromptBuilder) -> bool:
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return True
    return "tokenizer" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def format_example(
    example: Mapping[str, Any], task: str | TaskSpec, prompt: str = LM_EVAL_PROMPT, tokenizer: Any = None
) -> FormattedExample:
    """
    Renders one row with a registered prompt variant.

    Raises:
        `ValueError`: Unknown task/prompt, or a builder that does not return a [`FormattedExample`].
    """
    spec = get_task(task)
    builder = get_prompt(spec, prompt)
    result = builder(example, tokenizer=tokenizer) if _accepts_tokenizer(builder) else builder(example)
    if not isinstance(result, FormattedExample):
        raise ValueError(
            f"Prompt {prompt!r} for task {spec.name!r} returned {type(result).__name__}; builders must return a "
            "FormattedExample."
        )
    return result
