#!/usr/bin/env bash
# The lever study of README "The zoo": which recipe puts the zoo in the merging papers' regime
# (R1: zero-shot-like base at least 30 points below the fine-tunes; R2: simple averaging
# recovers at least a third of that gap). Each lever is one `amalgam zoo build` with one
# option changed from the reference recipe (the pretrain-18+ ones: one more on top of
# pretrain-epochs-18); zoo.json's "regime" section holds the figures
# (zoo/regime.h), and this script tabulates them. Judged by R1, R2 and build time only:
# no RegMean, TSV-M or MASS run here.
#
# The study fine-tunes on a reduced budget (20,000 train images per task at most, 40,000
# images per fine-tune) so that a lever costs minutes; the chosen recipe is then built in
# full. Builds are cached by their options: rerunning skips the finished ones.
#
#   bench/zoo_levers.sh OUT [LEVER...]     # default: every lever below, in this order
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "$1")
shift
mkdir -p "$out"
amalgam=$(realpath "${AMALGAM:-./build/amalgam}")
# The reference is the recipe the study started from (six pretraining epochs, CLIP's logit
# scale 100), pinned so that the study reads the same whatever the preset has become since.
study="--heads prototype --logit-scale 100 --pretrain-epochs 6"
study+=" --finetune-examples 20000 --finetune-min-images 40000 --finetune-epochs 1"

# NAME: options. Where only the heads or fine-tunes change, `--base-from` reuses the data and
# base of the lever named there, which is built (or found cached) first.
declare -A levers=(
  [reference]=""
  [heads-probe]="--base-from $out/reference --heads probe"
  [finetune-lr-1e-4]="--base-from $out/reference --finetune-lr 1e-4"
  [finetune-lr-1e-3]="--base-from $out/reference --finetune-lr 1e-3"
  [finetune-images-10k]="--base-from $out/reference --finetune-min-images 10000 --finetune-examples 5000"
  [finetune-full]="--base-from $out/reference --finetune-examples 60000 --finetune-min-images 78000 --finetune-epochs 6"
  [logit-scale-20]="--base-from $out/reference --logit-scale 20"
  [logit-scale-10]="--base-from $out/reference --logit-scale 10"
  [logit-scale-5]="--base-from $out/reference --logit-scale 5"
  [prototype-per-class-4]="--base-from $out/reference --prototype-per-class 4"
  [prototype-per-class-1]="--base-from $out/reference --prototype-per-class 1"
  [width-64]="--width 64"
  [width-256]="--width 256"
  [layers-3]="--layers 3"
  [pretrain-epochs-18]="--pretrain-epochs 18"
  [pool-all-real]="--pool-per-task 100000"
  [pool-generated-40k]="--pool-extra 40000"
  [views-strong]="--view-strength 1.5"
  [domain-supervised-3]="--base-from $out/reference --domain-epochs 3"
  [pretrain-epochs-36]="--pretrain-epochs 36"
  # Combinations on the longer-pretrained base.
  [pretrain-18+per-class-4]="--base-from $out/pretrain-epochs-18 --pretrain-epochs 18 --prototype-per-class 4"
  [pretrain-18+per-class-1]="--base-from $out/pretrain-epochs-18 --pretrain-epochs 18 --prototype-per-class 1"
  [pretrain-18+logit-scale-20]="--base-from $out/pretrain-epochs-18 --pretrain-epochs 18 --logit-scale 20"
)
order=(reference heads-probe logit-scale-20 logit-scale-10 logit-scale-5 prototype-per-class-4 prototype-per-class-1
  finetune-lr-1e-4 finetune-lr-1e-3 finetune-images-10k finetune-full
  width-64 width-256 layers-3 pretrain-epochs-18 pretrain-epochs-36 pool-all-real pool-generated-40k views-strong domain-supervised-3
  pretrain-18+per-class-4 pretrain-18+per-class-1 pretrain-18+logit-scale-20)
[ $# -gt 0 ] && order=("$@")

reuses_base='--base-from [^ ]*/([^ /]+)'
for name in "${order[@]}"; do
  [ -n "${levers[$name]+x}" ] || { echo "unknown lever '$name'" >&2; exit 2; }
  if [[ ${levers[$name]} =~ $reuses_base ]] && [ "${BASH_REMATCH[1]}" != "$name" ]; then
    base=${BASH_REMATCH[1]}  # build (or find cached) the zoo whose base this lever reuses
    # shellcheck disable=SC2086
    "$amalgam" zoo build -o "$out/$base" $study ${levers[$base]} --progress none -q >/dev/null
  fi
  echo "== $name: ${levers[$name]}" >&2
  # shellcheck disable=SC2086
  "$amalgam" zoo build -o "$out/$name" $study ${levers[$name]} --progress none -q >"$out/$name.txt"
done

echo "| lever | base | probe ceiling | fine-tuned | simple average | task arithmetic 0.3 | own vector / 8 | recovery | disentanglement error |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in "${order[@]}"; do
  jq -r --arg name "$name" '.regime as $r | def p: 1000*. | round/10 | tostring | if test("[.]") then . else . + ".0" end;
    "| \($name) | \($r.mean.base|p) | \($r.mean.probe_ceiling|p) | \($r.mean.finetuned|p) | \($r.mean.average|p) | \($r.mean.task_arithmetic|p) | \($r.mean.alone_at_average_weight|p) | \($r.average_recovery | .*100 | round/100) | \($r.disentanglement.mean_disagreement | .*1000 | round/1000) |"' \
    "$out/$name/zoo.json"
done
