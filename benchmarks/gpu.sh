#!/usr/bin/env bash
# The GPU check set, run as one command on a lent H100/H200 (about 8 minutes in all), in order:
#   1. versions of the stack (the GPU machine runs torch 2.11 / transformers 5.17);
#   2. DPO, rlhfkit vs TRL's DPOTrainer (qwen2-0.5b preset, bf16, prompt 128 / responses 384):
#      tokens/s (whole run, and steady: warm-up left out), peak GPU memory, MFU
#      (benchmarks/gpu_dpo.py);
#   3. PPO steps (qwen2-0.5b, bf16): samples/s, generated tokens/s, ratio to bare `generate`
#      (benchmarks/gpu_ppo.py);
#   4. the CPU test suite under this machine's torch/transformers (GPU hidden): the
#      "code runs on torch 2.11 / transformers 5.17" check;
#   5. a profile of rlhfkit's DPO step: GPU busy share, top operators (gpu_profile_dpo.py).
#
# Usage:  benchmarks/gpu.sh [SECTION...]   (on the GPU machine; TRL etc. importable)
#         benchmarks/gpu.sh --dry-run      (here, on CPU: tiny preset, checks the script end to end)
# SECTIONs: env dpo ppo tests profile (default: all). DPO_SIDES, DPO_ROUNDS, TESTS and
# PROFILE_ARGS override what runs, DPO_BATCHES the DPO batch sizes (default 8), DPO_ARGS adds
# options (e.g. "--keep-going --timeout 150"), LIMIT_DPO / LIMIT_PPO / LIMIT_TESTS /
# LIMIT_PROFILE the seconds each section may take.
# Each section has its own time limit, so one that hangs cannot eat the others' time. Logs and
# JSON go to $OUT (the device tool's folder) or runs/gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
RESULTS="${OUT:-runs/gpu}"
mkdir -p "$RESULTS"
DRY=()
SECTIONS=()
for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then DRY=(--dry-run); else SECTIONS+=("$arg"); fi
done
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

section() {  # section NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$RESULTS/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started))s"
}

want() {  # run a section when no section was named, or when it was named
    [[ ${#SECTIONS[@]} -eq 0 ]] || [[ " ${SECTIONS[*]} " == *" $1 "* ]]
}

want env && section env 60 "$PY" -c "
import platform, torch, transformers, accelerate
print('python', platform.python_version(), 'torch', torch.__version__,
      'transformers', transformers.__version__, 'accelerate', accelerate.__version__)
for name in ('trl', 'datasets', 'peft', 'pyarrow'):
    try:
        print(name, __import__(name).__version__)
    except Exception as error:
        print(name, 'NOT IMPORTABLE:', repr(error))
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')
"
# DPO at each batch size of DPO_BATCHES (pairs per step; 32 steps each): a larger batch gives each
# kernel more work, which is what a launch-bound host needs.
if want dpo; then
    for batch in ${DPO_BATCHES:-8}; do
        pairs=()
        [[ ${#DRY[@]} -eq 0 ]] && pairs=(--pairs $((32 * batch)))
        section "dpo-batch$batch" "${LIMIT_DPO:-280}" "$PY" benchmarks/gpu_dpo.py --rounds "${DPO_ROUNDS:-2}" \
            --threads 8 --batch-size "$batch" "${pairs[@]}" \
            --sides "${DPO_SIDES:-rlhfkit,rlhfkit-stacked,trl,trl-precompute}" \
            --json "$RESULTS/gpu_dpo_batch$batch.json" ${DPO_ARGS:-} "${DRY[@]}"
    done
fi
want ppo && section ppo "${LIMIT_PPO:-150}" "$PY" benchmarks/gpu_ppo.py --json "$RESULTS/gpu_ppo.json" "${DRY[@]}"
if [[ ${#DRY[@]} -eq 0 ]] && want tests; then
    # -v: each test's outcome is in the log as it finishes, even if the section hits its limit.
    section tests "${LIMIT_TESTS:-150}" env CUDA_VISIBLE_DEVICES= "$PY" -m pytest -v -n 14 -p no:cacheprovider \
        -rfE ${TESTS:-tests/}
fi
want profile && section profile "${LIMIT_PROFILE:-120}" "$PY" benchmarks/gpu_profile_dpo.py ${PROFILE_ARGS:---max-steps 8} "${DRY[@]}"
