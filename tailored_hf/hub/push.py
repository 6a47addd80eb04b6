"""`push_to_hub`: upload a pruned model (never the dense original) with its tokenizer, plan, card and plot."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from torch import nn

from .. import arch as A
from ..structure import PLAN_ATTRIBUTE, PLAN_FILENAME, PlanError, PruningPlan, save_pruned
from ..structure.geometry import ModelGeometry
from .card import CARD_FILENAME, build_card, load_report, merge_cards
from .plot import PLOT_FILENAME

logger = logging.getLogger(__name__)

#: Files never uploaded from a model directory (training leftovers, hidden files, temporary files).
SKIPPED_PARTS = ("checkpoint-", "runs", "trainer")


class HubPushError(RuntimeError):
    """A Hub request failed; the message names the repository and the HTTP status."""

    def __init__(self, repo_id: str, status: int | None, detail: str) -> None:
        self.repo_id = repo_id
        self.status = status
        super().__init__(f"Pushing to {repo_id!r} failed (HTTP {status if status is not None else '?'}): {detail}")


def is_main_process() -> bool:
    """False on every rank but 0 of a distributed run (torch.distributed or the launcher's RANK variable)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The pruned-model directory of a pipeline output (`OUTPUT/model`) or a model directory itself.

    Raises:
        `ValueError`: the directory (or its `model/`) has no `pruning_plan.json`, or the plan disagrees with the
            saved config, or nothing was pruned.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: pass a pipeline output directory or a saved model directory.")
    model_dir = path / "model" if (path / "model" / PLAN_FILENAME).is_file() else path
    plan_path = model_dir / PLAN_FILENAME
    if not plan_path.is_file():
        raise ValueError(
            f"Refusing to push {path}: it has no {PLAN_FILENAME}, so it is not a model pruned by tailored_hf. "
            "Prune it first (PrunerCallback / tailored_hf.prune) and save it with `save_pruned` or "
            "`trainer.save_model()`; tailored_hf never pushes a dense model."
        )
    plan = PruningPlan.load(plan_path)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"Refusing to push {model_dir}: config.json is missing; re-save it with `save_pruned`.")
    from transformers import AutoConfig

    import tailored_hf.modeling  # noqa: F401  (tailored_* configs)

    geometry = ModelGeometry.from_config(AutoConfig.from_pretrained(model_dir))
    if geometry != plan.pruned_geometry():
        raise ValueError(
            f"Refusing to push {model_dir}: {PLAN_FILENAME} does not describe the saved weights' sizes (the weights "
            "may be the dense original). Re-save the pruned model with `save_pruned`."
        )
    if plan.is_identity:
        raise ValueError(f"Refusing to push {model_dir}: its plan removes nothing (the model is not pruned).")
    return model_dir


def _is_trainer(obj: Any) -> bool:
    return not isinstance(obj, (str, os.PathLike, nn.Module)) and hasattr(obj, "save_model") and hasattr(obj, "args")


def _files(model_dir: Path) -> list[Path]:
    files = []
    for file in sorted(model_dir.rglob("*")):
        rel = file.relative_to(model_dir)
        if not file.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if any(part.startswith(SKIPPED_PARTS) for part in rel.parts[:-1]) or rel.name.endswith(".tmp"):
            continue
        files.append(file)
    return files


def _existing_card(api: HfApi, repo_id: str, revision: str | None) -> str | None:
    from huggingface_hub import hf_hub_download

    with tempfile.TemporaryDirectory(prefix="tailored_hf-card-") as tmp:
        try:
            path = hf_hub_download(
                repo_id,
                CARD_FILENAME,
                revision=revision,
                cache_dir=tmp,
                token=api.token,
                endpoint=api.endpoint,
            )
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        return Path(path).read_text(encoding="utf-8")


def _raise_hub_error(err: HfHubHTTPError, repo_id: str) -> None:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    detail = getattr(err, "server_message", None) or str(err).splitlines()[0]
    raise HubPushError(repo_id, status, detail) from err


def push_to_hub(
    output_dir_or_model: str | os.PathLike | nn.Module | Any,
    repo_id: str | None = None,
    *,
    tokenizer: Any = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload pruned model with tailored_hf",
    endpoint: str | None = None,
    report: dict[str, Any] | None = None,
    base_model: str | None = None,
    license: str | None = None,
    create_repo: bool = True,
) -> CommitInfo | None:
    """Push a pruned model, its tokenizer, `pruning_plan.json`, the generated card and the per-layer plot.

    Args:
        output_dir_or_model: a pipeline output directory (`OUTPUT`, with `model/` and `report.json`), a directory
            written by `save_pruned` / `trainer.save_model()`, an in-memory pruned model (saved to a temporary
            directory first, LoRA merged), or a `Trainer` whose `PrunerCallback` pruned its model (saved with
            `trainer.save_model()`, tokenizer included; `trainer.push_to_hub()` does the same through the Trainer,
            card included).
        repo_id: `namespace/name` on the Hub (default for a Trainer: `trainer.hub_model_id`).
        tokenizer: saved with an in-memory model.
        token: Hub token (used for the requests only; it is never written to the card, plan or logs).
        private: visibility when the repository is created.
        revision: branch to commit to (default `main`).
        commit_message: the commit's title.
        endpoint: Hub endpoint (default: `HF_ENDPOINT` / huggingface.co).
        report: pipeline report for the card (default: `report.json` next to the model directory).
        base_model: Hub id of the base model (default: from the report).
        license: license id (default: inherited from the base model).
        create_repo: create the repository when it does not exist.

    Returns:
        The `CommitInfo` of the commit, or `None` on a non-main process (nothing is pushed there).

    Raises:
        `ValueError`: unpruned model, or a directory without `pruning_plan.json`.
        `HubPushError`: a Hub request failed (message names the repository and HTTP status).
    """
    if not is_main_process():
        logger.info("push_to_hub: not the main process, nothing pushed")
        return None
    if _is_trainer(output_dir_or_model):
        repo_id = repo_id or getattr(output_dir_or_model, "hub_model_id", None)
    if not repo_id:
        raise ValueError("push_to_hub needs a repo_id ('namespace/name').")
    with tempfile.TemporaryDirectory(prefix="tailored_hf-push-") as tmp:
        if _is_trainer(output_dir_or_model):
            trainer = output_dir_or_model
            if getattr(A.unwrap_model(trainer.model), PLAN_ATTRIBUTE, None) is None:
                raise ValueError(
                    "Refusing to push: the Trainer's model is not pruned (no PrunerCallback plan yet). Add "
                    "`callbacks=[PrunerCallback(config)]` and prune (or train) first; tailored_hf never pushes the "
                    "dense original."
                )
            trainer.save_model(str(Path(tmp) / "model"))  # the pruned save installed by PrunerCallback
            model_dir = resolve_model_dir(Path(tmp) / "model")
        elif isinstance(output_dir_or_model, nn.Module):
            lm = A.unwrap_model(output_dir_or_model)
            plan = getattr(lm, PLAN_ATTRIBUTE, None)
            if plan is None or plan.is_identity:
                raise ValueError(
                    "Refusing to push: this model is not pruned (it carries no pruning plan). Prune it with "
                    "PrunerCallback or tailored_hf.prune first; tailored_hf never pushes the dense original."
                )
            try:
                model_dir = save_pruned(output_dir_or_model, Path(tmp) / "model", tokenizer)
            except PlanError as err:
                raise ValueError(f"Refusing to push: {err}") from err
        else:
            model_dir = resolve_model_dir(output_dir_or_model)
            if report is None:
                report = load_report(model_dir)
        api = HfApi(endpoint=endpoint, token=token)
        try:
            if create_repo:
                api.create_repo(repo_id, private=private, exist_ok=True)
            existing = _existing_card(api, repo_id, revision)
        except HfHubHTTPError as err:
            _raise_hub_error(err, repo_id)
        card_dir = Path(tmp) / "card"
        card_dir.mkdir()
        for name in (PLAN_FILENAME, "config.json"):
            (card_dir / name).write_bytes((model_dir / name).read_bytes())
        card = build_card(card_dir, report=report, repo_id=repo_id, base_model=base_model, license=license)
        if existing is not None:
            card = merge_cards(existing, card)
        operations = [
            CommitOperationAdd(path_in_repo=file.relative_to(model_dir).as_posix(), path_or_fileobj=str(file))
            for file in _files(model_dir)
            if file.name not in (CARD_FILENAME, PLOT_FILENAME)
        ]
        operations.append(CommitOperationAdd(CARD_FILENAME, card.content.encode("utf-8")))
        operations.append(CommitOperationAdd(PLOT_FILENAME, str(card_dir / PLOT_FILENAME)))
        try:
            info = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision)
        except HfHubHTTPError as err:
            _raise_hub_error(err, repo_id)
        logger.info("Pushed %d files to %s (%s)", len(operations), repo_id, info.oid)
        return info
