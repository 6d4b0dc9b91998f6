#!/usr/bin/env bash
# One prepared GPU session (issue 18): at most 9 minutes on one H200, results as JSON.
#
#   bash bench/gpu_check.sh OUT_DIR                 # on the GPU machine: python3, PYTHONPATH=., no install
#   bash bench/gpu_check.sh OUT_DIR --cpu-dry-run   # every stage at tiny size on CPU (~1-2 min)
#
# Runs on the GPU machine's own python3 (torch 2.11, triton, timm, numba; no ffcv, deepspeed,
# submitit) against this source tree. PYTHON=... picks another interpreter.
#
# Stages, each under its own `timeout` (so one hang cannot eat the session) and all inside
# GPU_CHECK_TOTAL_S (default 520 s; a stage gets at most what is left, and is skipped when
# under 15 s are left). Budgets on the GPU, in order:
#
#   env          30 s  nvidia-smi, versions, bf16 8192^3 matmul peak (MFU is quoted against it)
#   precompile  180 s  the fast path of rmt_t/s/b/l, one step each, 4 processes in parallel:
#                      fills the inductor cache (TORCHINDUCTOR_CACHE_DIR) so the timed stages
#                      compile from cache; its warm-up time is the cold compile time
#   cuda_tests  180 s  (alongside precompile) the CUDA tests (-k cuda) of every test module that
#                      mentions cuda; a module that needs ffcv/deepspeed/submitit counts as skipped
#   train_rmt_l 120 s  bench/train_step.py rmt_l, reference vs fast, bf16, batch 128, 224 px,
#                      + torch.profiler top-15 kernels of the fast step
#   randaugment  35 s  device RandAugment (rand-m9-mstd0.5-inc1) per 128-image 224 px batch
#   train_rmt_t  40 s  \
#   train_rmt_s  45 s   } as train_rmt_l, no profile
#   train_rmt_b  55 s  /
#   total       505 s  + ~10 s of collecting; the stages' sum stays under the 520 s cap
#
# Compile mode: --compile shared-blocks (bench/train_step.py): per-block regional compile
# with the blocks of a stage sharing one graph. Measured on CPU with a counting backend
# (`bench/train_step.py --count-graphs --precision bf16`, torch 2.13 and 2.11, docs/perf.md):
#   graphs       rmt_t  rmt_s  rmt_b  rmt_l
#   blocks         14     29     45     45   the engine's per-block compile: dynamo guards on
#                                            each block's DropPath float, one graph per block
#   shared-blocks   4      4      6      6   one per stage (+1 in each layer-scale stage: its
#                                            first block takes bf16 in, the others fp32)
#   model           2      2      2      2   the whole network, compiled twice (the stage
#                                            tables are cached after step 1)
# so the GPU compiles 20 block graphs in all (each forward + backward), 4 processes at once.
#
# OUT_DIR gets (7 files): gpu_check.log (everything printed), env.json, cuda_tests.json,
# h200_train_step.json ({"gpu", "driver", "torch", "rows": [{"model", "path", "img_per_s",
# "ms_per_step", "mfu", "peak_mem_gib", ...}], "cold_compile", "targets"}; mfu a fraction of
# the measured peak), profile_rmt_l_fast.json, randaugment_device.json, stages.json (each
# stage's budget, wall time and exit status). They are rewritten after every stage, so a run
# cut short still leaves what it measured.
#
# GPU_CHECK_ONLY=train_rmt_l,cuda_tests runs only the stages named (a rerun after a fix;
# the inductor cache of the first run is reused on the same machine).

set -uo pipefail

usage() { echo "usage: bash bench/gpu_check.sh OUT_DIR [--cpu-dry-run]" >&2; exit 2; }
OUT="" DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg; use --cpu-dry-run or none" >&2; exit 2 ;;
    *) [[ -z "$OUT" ]] || usage; OUT=$arg ;;
  esac
done
[[ -n "$OUT" ]] || usage

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create OUT_DIR $OUT; pass a writable folder" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Kept between runs on one machine: a rerun compiles from cache.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/rmt_gpu_check_inductor}
# Per-stage outputs, merged into OUT_DIR by `collect`; kept for a GPU_CHECK_ONLY rerun.
PARTS=${TMPDIR:-/tmp}/rmt_gpu_check_parts_$(printf '%s' "$OUT" | cksum | cut -d' ' -f1)
[[ -n "${GPU_CHECK_ONLY:-}" ]] || rm -rf "$PARTS"
mkdir -p "$PARTS" || exit 1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

TOTAL=${GPU_CHECK_TOTAL_S:-520}
START=$SECONDS
if (( DRY )); then
  MODELS=(rmt_test) PROFILE_MODEL=rmt_test DEVICE=cpu
  TRAIN=(--device cpu --batch-size 2 --img-size 64 --precision bf16 --compile shared-blocks
         --compile-backend aot_eager --steps 1 --warmup 1)
  RANDAUG=(--device cpu --batch 4 --size 64 --batches 1)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  MODELS=(rmt_t rmt_s rmt_b rmt_l) PROFILE_MODEL=rmt_l DEVICE=cuda
  TRAIN=(--device cuda --batch-size 128 --img-size 224 --precision bf16 --compile shared-blocks)
  RANDAUG=(--device cuda --batch 128 --size 224 --batches 10)
fi
declare -A BUDGET=([env]=30 [precompile]=180 [cuda_tests]=180 [randaugment]=35
                   [train_rmt_l]=120 [train_rmt_t]=40 [train_rmt_s]=45 [train_rmt_b]=55 [train_rmt_test]=60)

collect() {
  "$PY" bench/gpu_check.py collect "$OUT" "$PARTS" --models "$(IFS=,; echo "${MODELS[*]}")" \
    || echo "gpu_check.sh: collect failed (rc $?)"
}

# stage NAME CMD...: run CMD under NAME's budget (cut to what is left), record, collect.
stage() {
  local name=$1; shift
  local budget=${BUDGET[$name]} left=$((TOTAL - (SECONDS - START) - 5)) t0=$SECONDS rc
  if [[ -n "${GPU_CHECK_ONLY:-}" && ",$GPU_CHECK_ONLY," != *",$name,"* ]]; then
    printf '%s\t%s\tnot-selected\t0\n' "$name" "$budget" >> "$PARTS/stages.tsv"
    return
  fi
  if (( left < 15 )); then
    echo "=== $name: skipped, ${left}s left of ${TOTAL}s ==="
    printf '%s\t%s\tskipped\t0\n' "$name" "$budget" >> "$PARTS/stages.tsv"
    return
  fi
  (( budget > left )) && budget=$left
  echo "=== $name (budget ${budget}s, $((SECONDS - START))s elapsed) ==="
  GPU_CHECK_STAGE_BUDGET=$budget timeout -k 10 "$budget" "$@"
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$budget" "$rc" "$((SECONDS - t0))" >> "$PARTS/stages.tsv"
  echo "=== $name: rc $rc after $((SECONDS - t0))s ==="
  collect
}

echo "gpu_check.sh: OUT=$OUT dry_run=$DRY python=$PY started $(date -u +%FT%TZ)"
stage env "$PY" bench/gpu_check.py env "$OUT/env.json" --device "$DEVICE"
PEAK=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['bf16_matmul_tflops'])" "$OUT/env.json" \
       2>/dev/null) || PEAK=""
[[ -n "$PEAK" ]] || { PEAK=790; echo "gpu_check.sh: no measured peak; MFU against $PEAK TFLOP/s"; }

# Compile-bound and test stages overlap (neither is timed); the timed stages run alone.
stage precompile "$PY" bench/gpu_check.py precompile "$PARTS" --models "$(IFS=,; echo "${MODELS[*]}")" \
  -- "${TRAIN[@]}" --peak-tflops "$PEAK" &
PRE=$!
stage cuda_tests "$PY" bench/gpu_check.py tests "$OUT/cuda_tests.json" "$PARTS"
wait "$PRE"

stage "train_$PROFILE_MODEL" "$PY" bench/train_step.py "${TRAIN[@]}" --models "$PROFILE_MODEL" \
  --peak-tflops "$PEAK" --json "$PARTS/train_$PROFILE_MODEL.json" \
  --profile "$OUT/profile_${PROFILE_MODEL}_fast.json" --profile-models "$PROFILE_MODEL"
stage randaugment "$PY" bench/gpu_check.py randaugment "$OUT/randaugment_device.json" "${RANDAUG[@]}"
for model in "${MODELS[@]}"; do
  [[ "$model" == "$PROFILE_MODEL" ]] && continue
  stage "train_$model" "$PY" bench/train_step.py "${TRAIN[@]}" --models "$model" \
    --peak-tflops "$PEAK" --json "$PARTS/train_$model.json"
done
collect
echo "gpu_check.sh: done in $((SECONDS - START))s; results in $OUT"
"$PY" -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1])), indent=1))" "$OUT/stages.json"
