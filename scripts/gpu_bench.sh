#!/usr/bin/env bash
# GPU checks and the brain quality benchmark on one CUDA machine (docs/training.md "GPUs").
#   bash scripts/gpu_bench.sh OUT BRATS_DIR [ISIC_DIR]
# 1. scripts/gpu_check.py: training and scoring on the GPU vs the CPU, same process.
# 2. smoke: `bench quality --quick --gpu` on BraTS (volumes) and, given ISIC_DIR, on ISIC
#    with the skin config (2D path: appearance, features, lesion shape), then
#    `evaluate --gpu` on a kept fold checkpoint.
# 3. `bench quality --gpu` (default config, 3 folds, seed 0) for PatchRank, no_ranking and
#    no_discriminator, one process per method and fold (the small model leaves the GPU
#    mostly idle, so they share it), merged into OUT/brain.
# Every stage has a time limit and logs to OUT; a failed stage does not stop the others.
set -u
out=${1:?usage: gpu_bench.sh OUT BRATS_DIR [ISIC_DIR]}; brats=${2:?BRATS_DIR}; isic=${3:-}
py=${PYTHON:-python3}
mkdir -p "$out"; work=$(mktemp -d); trap 'rm -rf "$work"' EXIT  # fold checkpoints: not needed afterwards
export PYTHONUNBUFFERED=1
stage() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1; local rc=$?
  echo "[gpu_bench] $name rc=$rc $((SECONDS - t0)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
stage check 150 $py scripts/gpu_check.py --threads 8 --out "$out/gpu_check.json"

pids=()
for m in patchrank no_ranking no_discriminator; do
  for f in 1 2 3; do
    OMP_NUM_THREADS=1 stage "brain_${m}_$f" "${FULL_LIMIT:-330}" $py -m patchrank.pipeline.cli bench quality --data "$brats" --folds 3 \
      --seed 0 --only-folds $f --methods $m --gpu --models "$work/models" --out "$work/brain_${m}_$f" &
    pids+=($!)
  done
done
smoke_brain() {
  OMP_NUM_THREADS=2 stage smoke_brain 150 $py -m patchrank.pipeline.cli bench quality --quick --gpu --data "$brats" \
    --methods patchrank --models "$work/quick" --out "$out/quick_brain"
  [ -f "$work/quick/patchrank_fold0.pt" ] && stage evaluate 90 $py -m patchrank.pipeline.cli evaluate --gpu --quiet \
    --checkpoint "$work/quick/patchrank_fold0.pt" --data "$brats" --out "$out/evaluate"
}
smoke_brain & pids+=($!)
if [ -n "$isic" ]; then
  OMP_NUM_THREADS=2 stage smoke_skin 200 $py -m patchrank.pipeline.cli bench quality --quick --gpu --data "$isic" \
    --methods patchrank --out "$out/quick_skin" & pids+=($!)
fi
wait "${pids[@]}"
parts=$(ls "$work"/brain_*/quality.json 2>/dev/null)
[ -n "$parts" ] && $py -m patchrank.pipeline.cli bench quality --merge $parts --out "$out/brain" >"$out/merge.log" 2>&1
cat "$out/gpu_check.json" "$out/merge.log" 2>/dev/null
echo "[gpu_bench] done"
