#!/usr/bin/env bash
# The cost benchmarks on a lent GPU: the same scripts as on the CPU, a larger setting (issue 9).
#
# Prepare on the CPU machine (`make gpu-bundle`): `.gpu/` holds SmolLM2-135M's config and tokenizer (no weights: the
# GPU machine takes 64 MiB of files, less than the weights), the pruned layouts computed from the real weights, and
# the calibration text; `.whl/` the pure-Python pins of requirements-lock.txt that the GPU image lacks. Then, through
# the device tool, with `.gpu` and `.whl` carried:  bash benchmarks/gpu/run.sh
# Writes `$OUT/{nuteprune,performance,training_overhead}_h200.{json,md}` and `$OUT/run.log`; commit them under
# `benchmarks/results/`.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
BUNDLE=.gpu
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH="/tmp/site:$PWD" TAILORED_HF_DATA_DIR="$BUNDLE/data" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -c "
import torch, transformers, peft, datasets, tailored_hf
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__,
      'datasets', datasets.__version__, torch.cuda.get_device_name())
" || exit 1
COMMON=(--model "$BUNDLE/smollm2" --data-dir "$BUNDLE/data" --random-weights --device cuda)

part() {  # name, time limit (s), script and arguments
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" python3 "$@"
    echo "== $name: rc $? in $((SECONDS - start)) s"
}

# PARTS selects and orders what runs (default: all three); `importance` then `inference` split `performance` in two
# (the first keeps the inference figures of the committed performance_h200.json, the second replaces them).
for name in ${PARTS:-nuteprune performance training_overhead}; do
    case $name in
    nuteprune)  # issue 6's memory claim at the CPU report's setting (8 x 256 tokens, LoRA on q_proj, v_proj)
        part nuteprune 120 benchmarks/nuteprune.py "${COMMON[@]}" --skip-quality --batch-size 8 --seq-len 256 \
            --cost-steps 5 --out "$OUT/nuteprune_h200" ;;
    performance)  # importance (5 variants, a process each), 20 x 2048 tokens; bf16 inference at batch 32, real layouts
        part performance 240 benchmarks/performance.py "${COMMON[@]}" --shapes-dir "$BUNDLE/shapes" --seq-len 2048 \
            --rounds 1 --dtype bfloat16 --batch-size 32 --prefill-tokens 1024 --decode-tokens 64 --repeats 5 \
            --out "$OUT/performance_h200" ;;
    importance)
        cp benchmarks/results/performance_h200.json "$OUT/performance_h200.json"
        part importance 130 benchmarks/performance.py "${COMMON[@]}" --skip-inference --seq-len 2048 --rounds 1 \
            --out "$OUT/performance_h200" ;;
    inference)  # the inference figures only, into the report the `importance` part just wrote
        part inference 150 benchmarks/performance.py "${COMMON[@]}" --skip-importance --shapes-dir "$BUNDLE/shapes" \
            --dtype bfloat16 --batch-size 32 --prefill-tokens 1024 --decode-tokens 64 --repeats "${REPEATS:-5}" \
            --out "$OUT/performance_h200" ;;
    training_overhead)  # every step kind at batch 8 x 512
        part training_overhead 180 benchmarks/training_overhead.py "${COMMON[@]}" --batch-size 8 --seq-len 512 \
            --warmup-steps 2 --steps 5 --rounds 1 --out "$OUT/training_overhead_h200" ;;
    *) echo "unknown part $name"; exit 2 ;;
    esac
done
