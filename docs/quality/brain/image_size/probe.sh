#!/usr/bin/env bash
# Run on the GPU machine from the repository root with the BraTS 2015 folder copied to .gpudata/brats2015 and
# the missing wheels (pydantic, pydantic_core, annotated-types, typing-inspection, nibabel, pydicom) in .whl/.
# Probe: brain pixel AUROC vs model image size (128 / 192 / 240 px), 3 registered folds, seed 0, GPU-trained.
# Pixel-scale scoring settings at 192/240 either as at 128 ("same") or scaled with the size ("scaled").
set -u
R=${R:-/tmp/r}; OUTD=${OUT:-/tmp/out}; G=${G---gpu}; EP=${EP:-}; SIZES=${SIZES:-128 192 240}; FOLDS=${FOLDS:-1 2 3}
DATA=${DATA:-.gpudata/brats2015}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONSAFEPATH=1
py=${PY:-python3}
if [ -d .whl ] && [ -z "${NOWHL:-}" ]; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
mkdir -p /tmp/pr/patchrank "$R" "$OUTD"; cp patchrank/*.py /tmp/pr/patchrank/
for d in model pipeline actors deploy configs; do ln -sfn "$PWD/$d" /tmp/pr/patchrank/$d; done
export PYTHONPATH=/tmp/pr${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null; $py -c "import torch, pydantic, nibabel, patchrank.pipeline.cli as c; print('torch', torch.__version__, c.__file__)" || exit 1
cfg() {  # size variant -> config path
  local s=$1 v=$2 f=$R/cfg_${1}_$2.json
  case "$s/$v" in
    192/scaled) echo "{\"preprocess\":{\"image_size\":192},\"scoring\":{\"prior_smooth\":13,\"pixel_smooth\":11,\"pixel_close\":19,\"pixel_guide\":9}}" >"$f";;
    240/scaled) echo "{\"preprocess\":{\"image_size\":240},\"scoring\":{\"prior_smooth\":17,\"pixel_smooth\":13,\"pixel_close\":25,\"pixel_guide\":11}}" >"$f";;
    *) echo "{\"preprocess\":{\"image_size\":$s}}" >"$f";;
  esac; echo "$f"; }
job() {  # size variant fold limit
  local t0=$SECONDS
  timeout $4 $py -m patchrank.pipeline.cli bench quality --data "$DATA" --folds 3 --seed 0 --methods patchrank $G $EP \
    --config "$(cfg $1 $2)" --models "$R/m$1" --only-folds $3 --out "$R/$1_$2_$3" >"$R/$1_$2_$3.log" 2>&1
  echo "[pix] $1 $2 fold $3 rc=$? $((SECONDS - t0)) s"; }
pids=(); for s in $SIZES; do for f in $FOLDS; do job $s same $f ${L1:-300} & pids+=($!); done; done; wait "${pids[@]}"
pids=(); for s in $SIZES; do [ $s = 128 ] && continue; for f in $FOLDS; do job $s scaled $f ${L2:-170} & pids+=($!); done; done; wait "${pids[@]}"
for v in $(ls $R | grep -E '^[0-9]+_(same|scaled)_[0-9]$' | sed 's/_[0-9]$//' | sort -u); do
  $py -m patchrank.pipeline.cli bench quality --merge $R/${v}_*/quality.json --out "$R/merged_$v" >/dev/null 2>&1
  echo "## $v"; cat "$R/merged_$v/quality.md" 2>/dev/null
  for f in $R/${v}_*/quality.json; do $py -c "import json,sys; d=json.load(open(sys.argv[1])); [print(sys.argv[1].split('/')[-2], {k: r.get(k) for k in ('image_auroc','small_lesion_auroc','pixel_auroc','best_dice','fit_seconds')}) for r in d.get('runs', d.get('rows', []))]" $f 2>&1 | head -3; done
done | tee "$OUTD/summary.md"
for f in $R/*.log; do grep -q Traceback $f && { echo "== $f"; tail -6 $f; }; done
tar czf "$OUTD/runs.tgz" -C "$R" --exclude='m*' . 2>/dev/null; ls -la "$OUTD"
