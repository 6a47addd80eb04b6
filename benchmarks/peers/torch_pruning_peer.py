"""Peer comparison: Torch-Pruning (DepGraph) vs Tailored-LLaMA on SmolLM2-135M-Instruct at 20% / 50% of parameters.

Torch-Pruning 1.6.1 (PyPI `torch-pruning`, installed into `.peers/` by `make peers`, outside the repository and its
virtualenv) is used the way its own LLM example does (`examples/LLMs/prune_llm.py`): `tp.pruner.BasePruner` over the
Hugging Face `LlamaForCausalLM`, local ranking (`global_pruning=False`, every layer loses the same fraction),
`num_heads` for q/k/v, `prune_num_heads=True`, `prune_head_dims=False` (RoPE untouched), `head_pruning_ratio` equal to
`pruning_ratio`, `round_to=4`, `ignored_layers=[lm_head]`, then the example's config / attention fix-up. Importance:
"magnitude" = `GroupMagnitudeImportance(p=2)` (the example's), "taylor" = `GroupTaylorImportance()` with gradients of
the next-token loss summed over the calibration batches our method uses (20 x 128 tokens of the book sample, seed 0).

Dimensions Torch-Pruning prunes (its example's default): the hidden (residual-stream) dimension of the whole model
(embedding, every RMSNorm, the input side of q/k/v/gate/up and the output side of o/down, the tied lm_head), the FFN
intermediate channels of every layer, and whole query heads inside each KV group (GQA: all KV heads and head dims are
kept). With SmolLM2's 3 query heads per KV head, a TP ratio in (0, 1/3] removes one query head per KV group (9 -> 6).
Above 1/3 TP 1.6.1 removes no head at all: after choosing 2 per KV group it sees as many query as KV heads, stops
treating the layer as GQA, asks to prune the KV projections by the query indices, and its group check drops the whole
attention group silently. So the 50% cells prune hidden and FFN channels only (the table shows the kept heads).

Ratio matching: our target is the fraction of TOTAL parameters removed (`count_parameters`, tied weights once), while
Torch-Pruning's `pruning_ratio` is a per-dimension channel ratio. The script searches the TP ratio (bracketed secant
steps, each a real prune of a copy) until the achieved total fraction is within half a point of the target, and fails
if the best is more than 1 point off. Local pruning makes the pruned shapes independent of the importance, so the
second importance starts from the first one's ratio (one prune when it matches); Taylor reuses one set of gradients.

Three adaptations to run TP 1.6.1 on transformers 5 (none changes what is pruned): while TP traces the graph the model
runs eager attention (transformers 5's SDPA passes GQA keys un-repeated, so TP's head grouping fails with
"shape '[9, -1]' is invalid for input of size 192", cf. VainF/Torch-Pruning#516) with `use_cache=False` (the KV
cache's update sends TP's group search round an endless index-mapping cycle, cf. #527); after pruning, the lm_head,
which TP prunes as a separate copy of the tied embedding, is tied back (the copies are checked equal).

Evaluation and recovery are `benchmarks/tailored_llama.py`'s own (imported, not copied): the first 200 validation items
per task (BoolQ 100), primary metric; WikiText-2 token perplexity over 40 windows of 128 tokens; task LoRA r=8 on all
7 projections, lr 1e-4, 3 epochs, batch 8, K=50 shots, completion-only, max_length 512, seed 0. The task-LoRA cells
use the importance with the higher no-tune 7-task mean. That importance's model is also trained with the C4 LoRA of
our NutePrune row (`tailored_llama.c4_lora`: NutePrune's masks learn while their LoRA trains, so a peer left untrained
is no fair comparison for them), then evaluated and task-tuned again (`{ratio}/{importance}/c4/...` cells;
`--no-c4-lora` skips them). Our numbers are read from `benchmarks/results/tailored_llama.json` (never rerun here).
Cells are cached in the JSON, so an interrupted run resumes.

    make peers                                                            # once: Torch-Pruning into .peers/
    .venv/bin/python benchmarks/peers/torch_pruning_peer.py               # full comparison (~2.5 h on 2 quiet cores)
    .venv/bin/python benchmarks/peers/torch_pruning_peer.py --report-only # Markdown from the cached cells
    .venv/bin/python benchmarks/peers/torch_pruning_peer.py --ratios 0.2 --tasks piqa --limit 10 --boolq-limit 10 \
        --ppl-windows 2 --no-tune --out /tmp/tp_smoke/torch_pruning      # smoke

Sharing the 2 cores with another job, run with `OMP_NUM_THREADS=1`: oversubscribed threads made a forward + backward
about 8x slower here.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = ROOT / ".peers"
sys.path.append(str(ROOT / "benchmarks"))  # the protocol of record: tailored_llama.py's Bench

from common import RESULTS_DIR, add_model_arguments, read_results, write_markdown  # noqa: E402
from tailored_llama import (  # noqa: E402
    C4_BUDGET_CONFIGS,
    CHANCE,
    EXTRA_LABELS,
    PEER_CONFIGS,
    Bench,
    add_recovery_arguments,
    c4_budget_text,
    c4_lora,
    config_text,
    peer_configs,
)

from tailored_hf.eval import COMMONSENSE_TASKS  # noqa: E402
from tailored_hf.methods.depgraph import DepGraphConfig, calibration_for  # noqa: E402
from tailored_hf.structure import count_parameters  # noqa: E402

RESULTS = RESULTS_DIR / "torch_pruning"
OURS = RESULTS_DIR / "tailored_llama.json"
TP_VERSION = "1.6.1"
INSTALL_COMMAND = f".venv/bin/python -m pip install --no-deps --target .peers torch-pruning=={TP_VERSION}"
IMPORTANCES = ("magnitude", "taylor")
#: Torch-Pruning's LLM example: tracing input and channel rounding.
EXAMPLE_TEXT = "Hello world."
ROUND_TO = 4
#: Search of TP's channel ratio for a total-parameter target: stop within RATIO_GOAL, fail beyond RATIO_TOLERANCE.
RATIO_GOAL = 0.005
RATIO_TOLERANCE = 0.01
MAX_TP_RATIO = 0.9
MAX_SEARCH_STEPS = 12
#: Each secant step lands at least this fraction of the bracket away from its ends, so the bracket always shrinks.
MIN_BRACKET_STEP = 0.1
#: Command-line options that do not change any cell (the rest must match the cache's settings to reuse it).
RUN_OPTIONS = ("out", "report_only", "tune", "c4_lora", "ours")
#: Settings that must agree with tailored_llama.json's for the two to be compared.
PROTOCOL_KEYS = ("model", "limit", "boolq_limit", "ppl_windows", "k", "lora_r", "learning_rate", "epochs")
PROTOCOL_KEYS += ("batch_size", "seed")
#: Perplexity cell of the LoRA rows: not part of the protocol (as in tailored_llama.md).
NOT_MEASURED = "n/a"

logger = logging.getLogger("torch_pruning_peer")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5], help="total-parameter fractions")
    parser.add_argument("--importances", nargs="+", choices=IMPORTANCES, default=list(IMPORTANCES))
    parser.add_argument("--tasks", nargs="+", default=list(COMMONSENSE_TASKS))
    parser.add_argument("--limit", type=int, default=200, help="validation items per task")
    parser.add_argument("--boolq-limit", type=int, default=100, help="BoolQ items (long passages)")
    parser.add_argument("--ppl-windows", type=int, default=40, help="WikiText-2 windows of 128 tokens")
    parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True, help="task LoRA cells")
    parser.add_argument(
        "--c4-lora",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cells of the best importance after the C4 LoRA budget of our NutePrune row (no tune and task LoRA)",
    )
    add_recovery_arguments(parser)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--ours", default=str(OURS), help="tailored_llama.py's cached cells (read only)")
    parser.add_argument("--report-only", action="store_true", help="render the Markdown from the cached cells only")
    return parser.parse_args()


def import_torch_pruning():
    """Import Torch-Pruning from `.peers/` (never from the main virtualenv)."""
    if str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))
    try:
        import torch_pruning
    except ImportError as err:
        raise SystemExit(
            f"torch_pruning is not installed in {PEERS_DIR}. Install it with `make peers` or `{INSTALL_COMMAND}`."
        ) from err
    version = tp_version()
    if version != TP_VERSION:
        logger.warning("Torch-Pruning %s found in .peers/, the comparison was written for %s", version, TP_VERSION)
    # TP prunes the RMSNorm weights (plain parameters) along their only dimension, which is right; silence the notice.
    warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
    return torch_pruning


def tp_version() -> str:
    """The installed distribution's version (the module's `__version__` string lags behind in 1.6.1)."""
    for dist in importlib.metadata.distributions(path=[str(PEERS_DIR)]):
        if dist.metadata["Name"] == "torch-pruning":
            return dist.version
    return "unknown"


# ---------------------------------------------------------------------------------------------------- pruning
def calibration_gradients(model: torch.nn.Module, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of the next-token loss summed over the calibration rows (one row per step, as our method does)."""
    model.zero_grad(set_to_none=True)
    for row in calibration:
        ids = row.unsqueeze(0)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Non-finite calibration loss {loss.item()}.")
        loss.backward()
    grads = {name: param.grad for name, param in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def make_importance(tp, name: str):
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"Unknown importance {name!r}; expected one of {IMPORTANCES}.")


def tp_prune(
    model: torch.nn.Module,
    tokenizer,
    importance: str,
    tp_ratio: float,
    grads: dict[str, torch.Tensor] | None = None,
) -> dict[str, int]:
    """Prunes `model` in place as Torch-Pruning's `examples/LLMs/prune_llm.py` does; returns the pruned sizes.

    Args:
        model: a `LlamaForCausalLM` (modified in place).
        tokenizer: encodes the example's tracing input.
        importance: `"magnitude"` or `"taylor"`.
        tp_ratio: TP's `pruning_ratio` and `head_pruning_ratio` (a per-dimension channel / head ratio).
        grads: parameter name -> gradient, required by `"taylor"`.
    """
    tp = import_torch_pruning()
    config = model.config
    attn_implementation, use_cache = config._attn_implementation, config.use_cache
    model.set_attn_implementation("eager")  # repeat_kv in the traced graph (GQA), see the module docstring
    config.use_cache = False  # no KV-cache concatenation in the traced graph
    if importance == "taylor":
        if grads is None:
            raise ValueError("The Taylor importance needs calibration gradients.")
        for name, param in model.named_parameters():
            param.grad = grads[name]
    num_heads = {}
    for layer in model.model.layers:
        num_heads[layer.self_attn.q_proj] = config.num_attention_heads
        num_heads[layer.self_attn.k_proj] = config.num_key_value_heads
        num_heads[layer.self_attn.v_proj] = config.num_key_value_heads
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=tokenizer(EXAMPLE_TEXT, return_tensors="pt").input_ids,
        importance=make_importance(tp, importance),
        global_pruning=False,
        output_transform=lambda output: output.logits,
        pruning_ratio=tp_ratio,
        ignored_layers=[model.lm_head],
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,  # keeps RoPE intact
        head_pruning_ratio=tp_ratio,
        round_to=ROUND_TO,
    )
    for group in pruner.step(interactive=True):
        group.prune()
    del pruner
    model.zero_grad(set_to_none=True)
    sizes = fix_config(model)
    retie_embeddings(model)
    model.set_attn_implementation(attn_implementation)
    config.use_cache = use_cache
    return sizes


def fix_config(model: torch.nn.Module) -> dict[str, int]:
    """The example's fix-up: config and module attributes from the pruned weight shapes."""
    config = model.config
    shapes = set()
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        heads = attn.q_proj.out_features // attn.head_dim
        kv_heads = attn.k_proj.out_features // attn.head_dim
        attn.num_key_value_groups = heads // kv_heads
        mlp.hidden_size, mlp.intermediate_size = mlp.gate_proj.in_features, mlp.gate_proj.out_features
        layer.hidden_size = mlp.hidden_size
        shapes.add((heads, kv_heads, mlp.intermediate_size))
    if len(shapes) != 1:  # local pruning keeps layers alike; a per-layer config would need another model class
        raise ValueError(f"Layers were pruned to different shapes {sorted(shapes)}; one config cannot describe them.")
    (heads, kv_heads, intermediate) = shapes.pop()
    config.hidden_size = model.lm_head.in_features
    config.num_attention_heads, config.num_key_value_heads, config.intermediate_size = heads, kv_heads, intermediate
    return {
        "hidden_size": config.hidden_size,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
    }


def retie_embeddings(model: torch.nn.Module) -> None:
    """TP prunes the tied lm_head as its own copy of the embedding; tie the (equal) copies back."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not model.config.tie_word_embeddings or head.weight is embed.weight:
        return
    if not torch.equal(head.weight, embed.weight):
        raise RuntimeError("Torch-Pruning pruned the tied embedding and lm_head differently.")
    head.weight = embed.weight


def check_runs(model: torch.nn.Module, ids: torch.Tensor) -> None:
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        raise FloatingPointError("The pruned model produces non-finite logits.")


def match_ratio(
    prune_at: Callable[[float], tuple[torch.nn.Module, dict[str, int]]],
    target: float,
    dense_params: int,
    start: float | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Finds TP's `pruning_ratio` whose pruned model has `target` of the total parameters removed.

    The achieved fraction grows with TP's ratio, in steps, except where TP stops pruning heads (above 1/3 here, see
    the module docstring). Each step prunes a fresh copy at a secant guess inside the bracket [lo, hi], at least
    `MIN_BRACKET_STEP` of the bracket away from its ends; the closest trial is kept, and none within
    `RATIO_TOLERANCE` is an error. `start` is the first guess (default: the secant from (0, 0) to (MAX_TP_RATIO, 1)).
    """
    lo, f_lo, hi, f_hi = 0.0, 0.0, MAX_TP_RATIO, 1.0
    ratio = start if start is not None else target * MAX_TP_RATIO
    best: tuple[torch.nn.Module, float, float, dict[str, int]] | None = None
    trials = []
    for _ in range(MAX_SEARCH_STEPS):
        model, sizes = prune_at(ratio)
        achieved = 1 - count_parameters(model) / dense_params
        trials.append({"tp_ratio": ratio, "achieved": achieved})
        logger.info("TP pruning_ratio %.4f -> %.2f%% of the parameters removed", ratio, 100 * achieved)
        if best is None or abs(achieved - target) < abs(best[2] - target):
            best = (model, ratio, achieved, sizes)
        del model
        if abs(achieved - target) <= RATIO_GOAL:
            break
        if achieved < target:
            lo, f_lo = ratio, achieved
        else:
            hi, f_hi = ratio, achieved
        margin = MIN_BRACKET_STEP * (hi - lo)
        ratio = min(max(lo + (target - f_lo) * (hi - lo) / (f_hi - f_lo), lo + margin), hi - margin)
    model, ratio, achieved, sizes = best
    if abs(achieved - target) > RATIO_TOLERANCE:
        raise RuntimeError(
            f"No Torch-Pruning ratio reaches {target:.0%} of the parameters within {RATIO_TOLERANCE:.0%}: best "
            f"{achieved:.2%} at pruning_ratio {ratio:.4f} (trials {trials})."
        )
    return model, {"tp_ratio": ratio, "achieved": achieved, "trials": trials, **sizes}


# ---------------------------------------------------------------------------------------------------- bench
class PeerBench(Bench):
    """`tailored_llama.Bench` (cells, evaluation, task shots, LoRA recovery) with Torch-Pruning as the pruner."""

    run_options = RUN_OPTIONS

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.model.eval()
        self.dense_params = count_parameters(self.model)
        self.calibration = calibration_for(DepGraphConfig(seed=args.seed), self.tokenizer, data_dir=args.data_dir)
        self._grads: dict[str, torch.Tensor] | None = None
        self.gradient_seconds = 0.0

    def grads(self) -> dict[str, torch.Tensor]:
        if self._grads is None:
            start = time.perf_counter()
            self._grads = calibration_gradients(self.model, self.calibration)
            self.gradient_seconds = time.perf_counter() - start
        return self._grads

    def prune_copy(self, importance: str, tp_ratio: float) -> tuple[torch.nn.Module, dict[str, int], float]:
        """A copy of the dense model pruned by Torch-Pruning at its `tp_ratio`, its sizes and the pruning seconds."""
        grads = self.grads() if importance == "taylor" else None
        model = copy.deepcopy(self.model)
        begin = time.perf_counter()
        sizes = tp_prune(model, self.tokenizer, importance, tp_ratio, grads=grads)
        return model, sizes, time.perf_counter() - begin

    def tp_pruned(self, ratio: float, importance: str, start: float | None = None):
        """A pruned copy of the dense model at `ratio` of the total parameters, and its pruning record."""
        if importance == "taylor":
            self.grads()  # once, before the timed search
        timings = []

        def prune_at(tp_ratio: float) -> tuple[torch.nn.Module, dict[str, int]]:
            model, sizes, seconds = self.prune_copy(importance, tp_ratio)
            timings.append(seconds)
            return model, sizes

        begin = time.perf_counter()
        model, record = match_ratio(prune_at, ratio, self.dense_params, start=start)
        check_runs(model, self.calibration[:1])
        best = [t["tp_ratio"] for t in record["trials"]].index(record["tp_ratio"])
        record |= {
            "dense": self.dense_params,
            "pruned": count_parameters(model),
            "pruning_seconds": timings[best],
            "search_seconds": time.perf_counter() - begin,
            "gradient_seconds": self.gradient_seconds if importance == "taylor" else 0.0,
        }
        return model, record

    def repruned(self, tag: str, importance: str) -> torch.nn.Module:
        """The model of the cached `{tag}/{importance}/pruned` cell, pruned again at its recorded TP ratio (pruning is
        deterministic; the size is checked)."""
        record = self.data["cells"][f"{tag}/{importance}/pruned"]["value"]["pruning"]
        model, _, _ = self.prune_copy(importance, record["tp_ratio"])
        if count_parameters(model) != record["pruned"]:
            raise RuntimeError(f"Re-pruning {tag}/{importance} gave another size than the cached cell's.")
        return model

    def pruned_cell(
        self, ratio: float, importance: str, start: float | None, keep: dict[str, torch.nn.Module]
    ) -> dict[str, Any]:
        """The `{ratio}/{importance}/pruned` cell; a model pruned in this run is kept in `keep` for the LoRA cells."""

        def run() -> dict[str, Any]:
            model, record = self.tp_pruned(ratio, importance, start=start)
            keep[importance] = model
            return {**self.evaluate(model, self.args.tasks), "pruning": record}

        return self.cell(f"{ratio:.0%}/{importance}/pruned", run)


def mean_score(cell: dict[str, Any] | None, tasks: list[str]) -> float | None:
    if not cell or any(t not in cell["tasks"] for t in tasks):
        return None
    return sum(cell["tasks"][t]["score"] for t in tasks) / len(tasks)


def best_importance(cells: dict[str, Any], tag: str, importances: list[str], tasks: list[str]) -> str | None:
    """The importance with the higher no-tune mean at `tag`, once every importance's pruned cell exists."""
    means = {imp: mean_score(cells.get(f"{tag}/{imp}/pruned"), tasks) for imp in importances}
    if any(m is None for m in means.values()):
        return None
    return max(importances, key=lambda imp: means[imp])


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(0)
    args = parse_args()
    ours = json.loads(Path(args.ours).read_text()) if Path(args.ours).is_file() else None
    if args.report_only:  # e.g. while a long run is still filling the cache
        write_markdown(args.out, render(read_results(args.out), ours))
        return
    bench = PeerBench(args)
    tasks = args.tasks
    for ratio in args.ratios:
        tag = f"{ratio:.0%}"
        models: dict[str, torch.nn.Module] = {}
        found = None  # TP ratio of the first importance: the search start for the next one
        for importance in args.importances:
            found = bench.pruned_cell(ratio, importance, found, models)["pruning"]["tp_ratio"]
        cells = {k: v["value"] for k, v in bench.data["cells"].items()}
        best = best_importance(cells, tag, args.importances, tasks)
        keys = [f"{tag}/{best}/task/{t}" for t in tasks]
        if args.tune and not all(key in bench.data["cells"] for key in keys):
            if best not in models:
                models[best] = bench.repruned(tag, best)
            model = models[best]
            for task in tasks:
                bench.tuned_cell(model, f"{tag}/{best}/task/{task}", bench.shots(task, args.k), [task])
        if args.c4_lora:
            keys = [f"{tag}/{best}/c4/pruned"] + [f"{tag}/{best}/c4/task/{t}" for t in tasks if args.tune]
            if not all(key in bench.data["cells"] for key in keys):
                # The pruned model after the same C4 LoRA as our "c4" and "l0" rows (their generic budget), merged.
                base = models.pop(best) if best in models else bench.repruned(tag, best)
                model = c4_lora(base, bench.tokenizer, args)
                bench.cell(keys[0], lambda model=model: bench.evaluate(model, tasks), model=model)
                for task, key in zip(tasks, keys[1:]):
                    bench.tuned_cell(model, key, bench.shots(task, args.k), [task])
        models.clear()
    bench.data["environment"] = {
        "torch_pruning": tp_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    bench.save()
    write_markdown(args.out, render(bench.data, ours))


# ---------------------------------------------------------------------------------------------------- report
def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def comparison(data: dict[str, Any], ours: dict[str, Any] | None) -> list[str]:
    """Per ratio: Torch-Pruning rows beside ours, and whether ours is ahead before and after tuning."""
    s = data["settings"]
    tasks = s["tasks"]
    cells = {k: v["value"] for k, v in data["cells"].items()}
    our_cells = {k: v["value"] for k, v in ours["cells"].items()} if ours else {}
    our_params = ours.get("params", {}) if ours else {}
    lines = []
    if ours is None:
        lines += ["Our results (`tailored_llama.json`) are missing: our rows show —.", ""]
    else:
        differ = [k for k in PROTOCOL_KEYS if ours["settings"].get(k) != s.get(k)]
        if differ:
            lines += [
                f"**Not comparable**: this run's settings differ from `tailored_llama.json`'s in {', '.join(differ)}.",
                "",
            ]

    def scores(cell_map: dict[str, Any], key: str) -> list[float | None]:
        cell = cell_map.get(key)
        return [cell["tasks"][t]["score"] if cell and t in cell["tasks"] else None for t in tasks]

    def tuned(cell_map: dict[str, Any], prefix: str) -> list[float | None]:
        return [scores(cell_map, f"{prefix}/task/{t}")[i] for i, t in enumerate(tasks)]

    def mean(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(values) / len(values)

    def row(label: str, removed: float | None, values: list[float | None], ppl: float | None | str) -> str:
        if isinstance(ppl, str):
            ppl_text = ppl
        else:
            ppl_text = "—" if ppl is None or not math.isfinite(ppl) else f"{ppl:.1f}"
        return (
            f"| {label} | {pct(removed)} | "
            + " | ".join(pct(v) for v in values)
            + f" | {pct(mean(values))} | {ppl_text} |"
        )

    def verdict(
        when: str,
        ours: tuple[float | None, float | None],
        peer: tuple[float | None, float | None],
        peer_label: str | None = None,
    ) -> str:
        (our_mean, our_ppl), (peer_mean, peer_ppl) = ours, peer
        if our_mean is None or peer_mean is None:
            return f"- {when}: not computed yet."
        ahead = "yes" if our_mean > peer_mean else "no"
        text = f"- {when}: ours ahead: **{ahead}** ({len(tasks)}-task mean {pct(our_mean)} vs {pct(peer_mean)} for "
        text += f"Torch-Pruning {peer_label or best}"
        if our_ppl is not None and peer_ppl is not None:
            text += f"; WikiText-2 ppl {our_ppl:.1f} vs {peer_ppl:.1f}: **{'yes' if our_ppl < peer_ppl else 'no'}**"
        return text + ")."

    def c4_budget_rows(tag: str, best: str | None, names: list[str]) -> list[str]:
        """Our rows that carry the C4 LoRA budget (`C4_BUDGET_CONFIGS`) beside Torch-Pruning after the same LoRA."""
        out = [
            "",
            f"At the same generic LoRA budget (the C4 LoRA of our NutePrune row, {c4_budget_text()}):",
            "",
            header,
        ]
        out.append(rule)
        peer_key = f"{tag}/{best}/c4"
        best_cell = cells.get(f"{tag}/{best}/pruned") if best else None
        peer_removed = best_cell["pruning"]["achieved"] if best_cell else None
        peer_cell = cells.get(f"{peer_key}/pruned", {})
        peer_values = scores(cells, f"{peer_key}/pruned")
        for name in names:
            prefix = f"{tag}/{name}"
            removed = our_params.get(prefix, {}).get("achieved")
            ppl = our_cells.get(f"{prefix}/pruned", {}).get("wikitext2_ppl")
            out.append(row(f"ours, {EXTRA_LABELS[name]}", removed, scores(our_cells, f"{prefix}/pruned"), ppl))
        out.append(
            row(f"Torch-Pruning {best} + the same C4 LoRA", peer_removed, peer_values, peer_cell.get("wikitext2_ppl"))
        )
        for name in names:
            removed = our_params.get(f"{tag}/{name}", {}).get("achieved")
            label = f"ours, {EXTRA_LABELS[name]} + task LoRA (K={s['k']})"
            out.append(row(label, removed, tuned(our_cells, f"{tag}/{name}"), NOT_MEASURED))
        peer_tuned = tuned(cells, peer_key)
        label = f"Torch-Pruning {best} + the same C4 LoRA + task LoRA (K={s['k']})"
        out += [row(label, peer_removed, peer_tuned, NOT_MEASURED), ""]
        for name in names:
            prefix, label = f"{tag}/{name}", EXTRA_LABELS[name]
            before = (
                mean(scores(our_cells, f"{prefix}/pruned")),
                our_cells.get(f"{prefix}/pruned", {}).get("wikitext2_ppl"),
            )
            peer = (mean(peer_values), peer_cell.get("wikitext2_ppl"))
            out.append(verdict(f"After the C4 LoRA, {label}", before, peer, f"{best} + the same C4 LoRA"))
            after = (mean(tuned(our_cells, prefix)), None)
            out.append(
                verdict(
                    f"After the C4 LoRA + task LoRA, {label}",
                    after,
                    (mean(peer_tuned), None),
                    f"{best} + the same C4 LoRA + task LoRA",
                )
            )
        return out

    header = "| model | removed % | " + " | ".join(tasks) + " | mean | WikiText-2 ppl |"
    rule = "|---" * (len(tasks) + 4) + "|"
    for ratio in s["ratios"]:
        tag = f"{ratio:.0%}"
        ours_removed = our_params.get(tag, {}).get("achieved")
        lines += [f"### {tag} of parameters removed", "", header, rule]
        lines.append(row("dense", 0.0, scores(our_cells, "dense"), our_cells.get("dense", {}).get("wikitext2_ppl")))
        ours_pruned = scores(our_cells, f"{tag}/pruned")
        ours_ppl = our_cells.get(f"{tag}/pruned", {}).get("wikitext2_ppl")
        lines.append(row("ours, no tune", ours_removed, ours_pruned, ours_ppl))
        found = peer_configs([*our_cells, *our_params], tag)
        extras = [name for name in found if name not in C4_BUDGET_CONFIGS]
        budget_extras = [name for name in found if name in C4_BUDGET_CONFIGS]
        for name in extras:
            prefix = f"{tag}/{name}"
            removed = our_params.get(prefix, {}).get("achieved")
            cell = our_cells.get(f"{prefix}/pruned", {})
            label = f"ours, {EXTRA_LABELS.get(name, name)}, no tune"
            lines.append(row(label, removed, scores(our_cells, f"{prefix}/pruned"), cell.get("wikitext2_ppl")))
        peer_means = {}
        for importance in s["importances"]:
            cell = cells.get(f"{tag}/{importance}/pruned")
            removed = cell["pruning"]["achieved"] if cell else None
            values = scores(cells, f"{tag}/{importance}/pruned")
            peer_means[importance] = mean(values)
            label = f"Torch-Pruning {importance}, no tune"
            lines.append(row(label, removed, values, cell.get("wikitext2_ppl") if cell else None))
        best = best_importance(cells, tag, s["importances"], tasks)
        ours_tuned = tuned(our_cells, tag)
        lines.append(row(f"ours + task LoRA (K={s['k']})", ours_removed, ours_tuned, NOT_MEASURED))
        for name in extras:
            removed = our_params.get(f"{tag}/{name}", {}).get("achieved")
            label = f"ours, {EXTRA_LABELS.get(name, name)} + task LoRA (K={s['k']})"
            lines.append(row(label, removed, tuned(our_cells, f"{tag}/{name}"), NOT_MEASURED))
        best_cell = cells.get(f"{tag}/{best}/pruned") if best else None
        best_removed = best_cell["pruning"]["achieved"] if best_cell else None
        peer_tuned = tuned(cells, f"{tag}/{best}") if best else [None] * len(tasks)
        label = f"Torch-Pruning {best or 'best'} + task LoRA (K={s['k']})"
        lines.append(row(label, best_removed, peer_tuned, NOT_MEASURED))
        lines.append("")
        peer_ppl = best_cell.get("wikitext2_ppl") if best_cell else None
        lines.append(verdict("Before tuning", (mean(ours_pruned), ours_ppl), (peer_means.get(best), peer_ppl)))
        lines.append(verdict("After task LoRA", (mean(ours_tuned), None), (mean(peer_tuned), None)))
        for name in extras:
            prefix, label = f"{tag}/{name}", EXTRA_LABELS.get(name, name)
            extra_ppl = our_cells.get(f"{prefix}/pruned", {}).get("wikitext2_ppl")
            before = (mean(scores(our_cells, f"{prefix}/pruned")), extra_ppl)
            lines.append(verdict(f"Before tuning, {label}", before, (peer_means.get(best), peer_ppl)))
            after = (mean(tuned(our_cells, prefix)), None)
            lines.append(verdict(f"After task LoRA, {label}", after, (mean(peer_tuned), None)))
        if budget_extras or any(k.startswith(f"{tag}/{best}/c4/") for k in cells):
            lines += c4_budget_rows(tag, best, budget_extras)
        lines.append("")
    return lines


def render(data: dict[str, Any], ours: dict[str, Any] | None) -> str:
    """Markdown: protocol, the comparison per ratio, then Torch-Pruning's pruned shapes and search."""
    s = data["settings"]
    cells = {k: v["value"] for k, v in data["cells"].items()}
    version = data.get("environment", {}).get("torch_pruning", TP_VERSION)
    lines = [
        f"# Peer comparison: Torch-Pruning {version} vs Tailored-LLaMA (ours), SmolLM2-135M-Instruct",
        "",
        f"Zero-shot accuracy (%) on the first {s['limit']} validation items per task (BoolQ {s['boolq_limit']}), "
        f"lm-eval protocol, primary metric per task; WikiText-2 token perplexity over {s['ppl_windows']} windows of "
        f"128 tokens. Recovery: LoRA r={s['lora_r']}, lr {s['learning_rate']}, {s['epochs']:g} epochs, batch "
        f"{s['batch_size']}, K={s['k']} task shots, seed {s['seed']} (the `tailored_llama.py` protocol; our rows are "
        "read from `tailored_llama.json`). Ours: `tailored_llama.py`'s dependency-group pass (Taylor importance; "
        "query heads, KV groups and FFN channels; hidden size kept; first and last layers protected), and its extra "
        f"configurations ({', '.join(f'{EXTRA_LABELS[n]}: `{config_text(n)}`' for n in PEER_CONFIGS)}). "
        "Torch-Pruning: "
        "`BasePruner` as in its LLM example (hidden size, FFN channels and query heads per KV group, every layer "
        "alike), magnitude (L2) or Taylor importance, its channel ratio searched to the same share of total "
        "parameters; the task LoRA uses the importance with the higher no-tune mean. With 3 query heads per KV head, "
        "TP 1.6.1 removes no query head at a channel ratio above 1/3 (its GQA branch drops the attention group), so "
        "its 50% models keep every head (see the shapes table).",
        "",
        "Chance: " + ", ".join(f"{t} {100 * CHANCE[t]:.0f}" for t in s["tasks"]) + ".",
        "",
    ]
    lines += comparison(data, ours)
    lines += [
        "### Torch-Pruning pruned shapes",
        "",
        "| ratio | importance | TP pruning_ratio | hidden | intermediate | heads (q/kv) | params | removed % | "
        "prune s | search steps |",
        "|---" * 10 + "|",
    ]
    for ratio in s["ratios"]:
        tag = f"{ratio:.0%}"
        for importance in s["importances"]:
            cell = cells.get(f"{tag}/{importance}/pruned")
            if not cell:
                continue
            p = cell["pruning"]
            lines.append(
                f"| {tag} | {importance} | {p['tp_ratio']:.4f} | {p['hidden_size']} | {p['intermediate_size']} | "
                f"{p['num_attention_heads']}/{p['num_key_value_heads']} | {p['pruned']:,} | {pct(p['achieved'])} | "
                f"{p['pruning_seconds']:.0f} | {len(p['trials'])} |"
            )
    lines.append("")
    if any("| — |" in line or "not computed yet" in line for line in lines):
        lines += [
            "**Partial report**: cells marked — are not computed yet; rerunning the command below resumes from the "
            "cached cells.",
            "",
        ]
    timing = sum(v["seconds"] for v in data["cells"].values())
    lines.append(
        f"Total cell time: {timing / 60:.1f} min. Reproduce: `make peers && "
        ".venv/bin/python benchmarks/peers/torch_pruning_peer.py`."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
