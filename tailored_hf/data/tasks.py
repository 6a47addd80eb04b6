"""Registry of the tasks `tailored_hf` trains and evaluates on.

Each task is described by a [`TaskSpec`]: its schema (required columns, label column), how many answer options it
has and the accuracy of random guessing, where its splits live inside a local data directory, and where to find it on
the Hugging Face Hub for online use.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

logger = logging.getLogger(__name__)

TaskKind = Literal["multiple_choice", "classification", "generation"]
TASK_KINDS: tuple[str, ...] = ("multiple_choice", "classification", "generation")

BINARY_CHANCE = 1 / 2
FOUR_WAY_CHANCE = 1 / 4
THREE_WAY_CHANCE = 1 / 3
FIVE_WAY_CHANCE = 1 / 5


@dataclass(frozen=True)
class TaskSpec:
    """
    Static description of a task.

    Args:
        name (`str`): Canonical task name (registry key).
        kind (`str`): One of `"multiple_choice"`, `"classification"` or `"generation"`.
        required_columns (`tuple[str, ...]`): Columns every row must carry (the schema of the local files, which is
            the schema of the Hub dataset named by `hub_id`).
        label_column (`str`, *optional*): Column holding the gold label, `None` for generation tasks.
        num_choices (`int`, *optional*): Number of answer options (nominal for ARC, which has a few 3- and 5-way
            items), `None` for generation tasks.
        chance (`float`, *optional*): Accuracy of uniform random guessing, `None` for generation tasks.
        local_files (`Mapping[str, str]`): Split name -> file path relative to the data directory.
        hub_id (`str`, *optional*): Hugging Face Hub dataset id for online use.
        hub_config (`str`, *optional*): Hub dataset configuration name.
        reference_column (`str`, *optional*): Column holding the reference text of generation tasks.
        column_aliases (`Mapping[str, str]`): Source column -> canonical column, applied when loading a dataset whose
            schema differs only by column names (e.g. the Hub copy of BillSum calls `source` `text`).
        citation (`str`): Paper introducing the dataset.
        license (`str`): Upstream data license.
        description (`str`): One-line description.
    """

    name: str
    kind: TaskKind
    required_columns: tuple[str, ...]
    label_column: str | None
    num_choices: int | None
    chance: float | None
    local_files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    hub_id: str | None = None
    hub_config: str | None = None
    reference_column: str | None = None
    column_aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    citation: str = ""
    license: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"TaskSpec {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}.")
        if self.kind == "generation" and self.reference_column is None:
            raise ValueError(f"TaskSpec {self.name!r}: generation tasks need a `reference_column`.")
        if self.kind != "generation" and self.label_column is None:
            raise ValueError(f"TaskSpec {self.name!r}: {self.kind} tasks need a `label_column`.")
        # Freeze mappings so specs are safely shareable.
        object.__setattr__(self, "local_files", MappingProxyType(dict(self.local_files)))
        object.__setattr__(self, "column_aliases", MappingProxyType(dict(self.column_aliases)))

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits available in the local data directory layout."""
        return tuple(self.local_files)

    @property
    def schema(self) -> str:
        """Human-readable schema, used in error messages."""
        return f"{self.name}: columns {list(self.required_columns)}" + (
            f", label column {self.label_column!r}" if self.label_column else ""
        )


def _commonsense_files(name: str) -> dict[str, str]:
    return {split: f"commonsense/{name}/{split}.jsonl.gz" for split in ("train", "validation")}


_ARC_COLUMNS = ("question", "choices", "answerKey")

_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="boolq",
        kind="multiple_choice",
        required_columns=("question", "answer", "passage"),
        label_column="answer",
        num_choices=2,
        chance=BINARY_CHANCE,
        local_files=_commonsense_files("boolq"),
        hub_id="google/boolq",
        citation="Clark et al., 2019. BoolQ: Exploring the Surprising Difficulty of Natural Yes/No Questions.",
        license="CC BY-SA 3.0",
        description="Yes/no questions about a Wikipedia passage.",
    ),
    TaskSpec(
        name="piqa",
        kind="multiple_choice",
        required_columns=("goal", "sol1", "sol2", "label"),
        label_column="label",
        num_choices=2,
        chance=BINARY_CHANCE,
        local_files=_commonsense_files("piqa"),
        # Parquet copy of `ybisk/piqa` (the original uses a loading script, which `datasets>=4` refuses).
        hub_id="baber/piqa",
        citation="Bisk et al., 2020. PIQA: Reasoning about Physical Commonsense in Natural Language.",
        license="AFL-3.0",
        description="Physical commonsense: pick the better of two solutions to a goal.",
    ),
    TaskSpec(
        name="hellaswag",
        kind="multiple_choice",
        required_columns=("activity_label", "endings", "label"),
        label_column="label",
        num_choices=4,
        chance=FOUR_WAY_CHANCE,
        local_files=_commonsense_files("hellaswag"),
        hub_id="Rowan/hellaswag",
        citation="Zellers et al., 2019. HellaSwag: Can a Machine Really Finish Your Sentence?",
        license="MIT",
        description="Pick the most plausible continuation of an event description.",
    ),
    TaskSpec(
        name="winogrande",
        kind="multiple_choice",
        required_columns=("sentence", "option1", "option2", "answer"),
        label_column="answer",
        num_choices=2,
        chance=BINARY_CHANCE,
        local_files=_commonsense_files("winogrande"),
        hub_id="allenai/winogrande",
        hub_config="winogrande_xl",
        citation="Sakaguchi et al., 2020. WinoGrande: An Adversarial Winograd Schema Challenge at Scale.",
        license="CC-BY",
        description="Fill the blank of a sentence with one of two entities.",
    ),
    TaskSpec(
        name="arc_easy",
        kind="multiple_choice",
        required_columns=_ARC_COLUMNS,
        label_column="answerKey",
        num_choices=4,
        chance=FOUR_WAY_CHANCE,
        local_files=_commonsense_files("arc_easy"),
        hub_id="allenai/ai2_arc",
        hub_config="ARC-Easy",
        citation="Clark et al., 2018. Think you have Solved Question Answering? Try ARC, the AI2 Reasoning Challenge.",
        license="CC BY-SA 4.0",
        description="Grade-school science questions (easy set).",
    ),
    TaskSpec(
        name="arc_challenge",
        kind="multiple_choice",
        required_columns=_ARC_COLUMNS,
        label_column="answerKey",
        num_choices=4,
        chance=FOUR_WAY_CHANCE,
        local_files=_commonsense_files("arc_challenge"),
        hub_id="allenai/ai2_arc",
        hub_config="ARC-Challenge",
        citation="Clark et al., 2018. Think you have Solved Question Answering? Try ARC, the AI2 Reasoning Challenge.",
        license="CC BY-SA 4.0",
        description="Grade-school science questions (challenge set).",
    ),
    TaskSpec(
        name="openbookqa",
        kind="multiple_choice",
        required_columns=("question_stem", "choices", "answerKey"),
        label_column="answerKey",
        num_choices=4,
        chance=FOUR_WAY_CHANCE,
        local_files=_commonsense_files("openbookqa"),
        hub_id="allenai/openbookqa",
        hub_config="main",
        citation="Mihaylov et al., 2018. Can a Suit of Armor Conduct Electricity? A New Dataset for Open Book QA.",
        license="Apache-2.0",
        description="Elementary science questions needing broad common knowledge.",
    ),
    TaskSpec(
        name="alpaca",
        kind="generation",
        required_columns=("instruction", "input", "output"),
        label_column=None,
        num_choices=None,
        chance=None,
        local_files={
            "train": "instruct/alpaca/alpaca_data_1k.json",
            # A second, independent 200-example sample (3 instructions overlap with `train`).
            "sample_200": "instruct/alpaca/alpaca_200.json",
        },
        hub_id="tatsu-lab/alpaca",
        reference_column="output",
        citation="Taori et al., 2023. Stanford Alpaca: An Instruction-following LLaMA model.",
        license="CC BY-NC 4.0",
        description="Generic instruction following (Stanford Alpaca; `yahma/alpaca-cleaned` has the same schema).",
    ),
    TaskSpec(
        name="pubmedqa",
        kind="classification",
        required_columns=("QUESTION", "CONTEXTS", "final_decision"),
        label_column="final_decision",
        num_choices=3,
        chance=THREE_WAY_CHANCE,
        local_files={"train": "domain/pubmedqa/train.jsonl", "test": "domain/pubmedqa/test.jsonl"},
        hub_id="bigbio/pubmed_qa",
        hub_config="pubmed_qa_labeled_fold0_source",
        citation="Jin et al., 2019. PubMedQA: A Dataset for Biomedical Research Question Answering.",
        license="MIT",
        description="Answer a biomedical research question from an abstract with yes, no or maybe.",
    ),
    TaskSpec(
        name="mednli",
        kind="classification",
        required_columns=("sentence1", "sentence2", "gold_label"),
        label_column="gold_label",
        num_choices=3,
        chance=THREE_WAY_CHANCE,
        # Official PhysioNet file names; the data is not redistributable, users supply it.
        local_files={
            "train": "domain/mednli/mli_train_v1.jsonl",
            "validation": "domain/mednli/mli_dev_v1.jsonl",
            "test": "domain/mednli/mli_test_v1.jsonl",
        },
        hub_id=None,
        citation="Romanov & Shivade, 2018. Lessons from Natural Language Inference in the Clinical Domain.",
        license="PhysioNet Credentialed Health Data License (not redistributable)",
        description="Clinical natural language inference: entailment, neutral or contradiction.",
    ),
    TaskSpec(
        name="hqs",
        kind="generation",
        required_columns=("CHQ", "Summary"),
        label_column=None,
        num_choices=None,
        chance=None,
        local_files={"train": "domain/hqs/train.jsonl", "test": "domain/hqs/test.jsonl"},
        hub_id=None,
        reference_column="Summary",
        citation="Ben Abacha & Demner-Fushman, 2019. On the Summarization of Consumer Health Questions (MeQSum).",
        license="CC BY 4.0 (MeQSum)",
        description="Summarize a consumer health question (CHQ) into a short question.",
    ),
    TaskSpec(
        name="casehold",
        kind="multiple_choice",
        required_columns=("citing_prompt", "holding_0", "holding_1", "holding_2", "holding_3", "holding_4", "label"),
        label_column="label",
        num_choices=5,
        chance=FIVE_WAY_CHANCE,
        local_files={"train": "domain/casehold/train_2000.jsonl"},
        hub_id="casehold/casehold",
        hub_config="all",
        citation="Zheng et al., 2021. When Does Pretraining Help? Assessing Self-Supervised Learning for Law and the "
        "CaseHOLD Dataset.",
        license="Apache-2.0",
        description="Pick the legal holding that fits the <HOLDING> slot of a citing context.",
    ),
    TaskSpec(
        name="billsum",
        kind="generation",
        required_columns=("source", "summary"),
        label_column=None,
        num_choices=None,
        chance=None,
        local_files={"test": "domain/billsum/test_200.jsonl"},
        hub_id="FiscalNote/billsum",
        reference_column="summary",
        column_aliases={"text": "source"},
        citation="Kornilova & Eidelman, 2019. BillSum: A Corpus for Automatic Summarization of US Legislation.",
        license="CC0-1.0",
        description="Summarize a US congressional bill.",
    ),
)

TASKS: MappingProxyType = MappingProxyType({spec.name: spec for spec in _SPECS})
"""Canonical task name -> [`TaskSpec`]."""

TASK_ALIASES: MappingProxyType = MappingProxyType(
    {
        "meqsum": "hqs",
        "alpaca_cleaned": "alpaca",
        "alpaca-cleaned": "alpaca",
        "arc-easy": "arc_easy",
        "arc-challenge": "arc_challenge",
        "obqa": "openbookqa",
    }
)
"""Alternative names -> canonical task name (same schema)."""

COMMONSENSE_TASKS: tuple[str, ...] = (
    "boolq",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
)
"""The seven zero-shot commonsense tasks of LLM-Pruner / Tailored-LLaMA, in their reporting order."""


def list_tasks() -> list[str]:
    """Returns the canonical names of all registered tasks."""
    return list(TASKS)


def get_task(task: str | TaskSpec) -> TaskSpec:
    """
    Looks up a task by name (case-insensitive, aliases such as `"meqsum"` accepted).

    Args:
        task (`str` or [`TaskSpec`]): Task name, or a spec (returned as is).

    Returns:
        [`TaskSpec`]: The task spec.

    Raises:
        `ValueError`: If the name is unknown; the message lists the known tasks.
    """
    if isinstance(task, TaskSpec):
        return task
    if not isinstance(task, str):
        raise ValueError(f"`task` must be a task name or a TaskSpec, got {type(task).__name__}.")
    key = task.strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(
            f"Unknown task {task!r}. Known tasks: {sorted(TASKS)} (aliases: {sorted(TASK_ALIASES)}). "
            "Pass one of these names or a TaskSpec."
        )
    return TASKS[key]
