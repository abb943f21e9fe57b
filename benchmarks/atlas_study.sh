#!/usr/bin/env bash
# Learning curves on real anatomy (issue 28, benchmarks/RESULTS.md "Real anatomy"): the 12 subcortical
# structures of Colin27 + AAL (recokd atlas-dataset, Debian's mricron-data), a stock nnU-Net teacher and
# t=2 / t=3 students trained alone, held-out pseudo Dice per class after every epoch. Resumable: a finished
# run (checkpoint_final.pth) is skipped, a stopped one continues from its checkpoint_latest.pth (written every
# epoch), so run it again to continue.
#
#   bash benchmarks/atlas_study.sh [STEP ...]     STEP: data teacher students curves (default: all four)
#   STEP env: print the study's nnU-Net environment as export lines
#
# The schedule is defined in iterations, not time: EPOCHS x 50 iterations for every run (default 30 = 1500,
# about the 45-minute budget of a stock teacher on an idle 2-core CPU; RESULTS.md). Teacher: nnU-Net's
# nnUNetTrainerNoDA on that schedule (SGD, nnUNetTrainerShortNoDA); students: the same with nnU-Net's AdamW
# (regime 2 of the phantom study) and channel widths / 2^t (recokd student-plans). Knobs: STUDY (folder,
# default benchmarks/results/atlas), PY (python, default .venv/bin/python), EPOCHS, STUDENT_TS (default
# "2 3"; `STUDENT_TS=3 bash ... students` runs one of them, e.g. next to the teacher), TINY=1 (10 + 2 cases,
# 2 iterations per epoch, 2 epochs: the figures mean nothing), THREADS (torch threads per training; default:
# nnUNetv2_train's own, every core; THREADS=1 runs nnU-Net's same entry point with one thread, for runs side by
# side on a loaded machine, where two-thread runs mostly wait for each other's threads).
# Heavy folders (nnU-Net data and models) stay out of git (STUDY/.gitignore); the curves are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=$(realpath -m "${STUDY:-benchmarks/results/atlas}")
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
DATA=$STUDY/data
if [ "${TINY:-0}" = 1 ]; then
    CASES=10 TEST_CASES=2 ITERS=2 VAL_ITERS=1 EPOCHS=2
else
    CASES=40 TEST_CASES=10 ITERS=50 VAL_ITERS=4 EPOCHS=${EPOCHS:-30}
fi
run() {  # run [VAR=VALUE ...] COMMAND ARGS...: print the command (the study's record), then run it
    echo "+ $*" >&2
    env "$@"
}
export nnUNet_raw=$DATA/nnUNet_raw nnUNet_preprocessed=$DATA/nnUNet_preprocessed
export nnUNet_results=$DATA/nnUNet_results
export nnUNet_extTrainer=$("$PY" -c "import recokd.nnunet as n; print(n.ext_trainer_dir())")
export nnUNet_def_n_proc=1 nnUNet_compile=0 nnUNet_wandb_enabled=0 PYTHONWARNINGS=ignore::FutureWarning
DATASET=Dataset811_Subcortical
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(data teacher students curves)
want() { [[ " ${steps[*]} " == *" $1 "* ]]; }
if want env; then
    printf 'export nnUNet_raw=%q nnUNet_preprocessed=%q nnUNet_results=%q nnUNet_extTrainer=%q\n' \
        "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results" "$nnUNet_extTrainer"
    exit 0
fi
mkdir -p "$STUDY"
printf 'data/\n' > "$STUDY/.gitignore"

if want data; then
    # 40 training + 10 held-out cases, 2 mm, the default 12 classes (recokd atlas-dataset's defaults), seed 0
    [ -d "$nnUNet_raw/$DATASET" ] || run "$BIN/recokd" atlas-dataset --id 811 --cases "$CASES" \
        --test-cases "$TEST_CASES" --seed 0 --raw "$nnUNet_raw"
    [ -f "$nnUNet_preprocessed/$DATASET/nnUNetPlans.json" ] || \
        run "$BIN/nnUNetv2_plan_and_preprocess" -d 811 -c 3d_fullres -np 1 --verify_dataset_integrity
fi

export nnUNet_n_proc_DA=0  # training only (nnU-Net's planner crashes with it)
train() {  # train PLANS [VAR=VALUE ...]: stock nnU-Net, no augmentation, EPOCHS x ITERS, seed 0, resumable
    local plans=$1; shift
    local fold=$nnUNet_results/$DATASET/nnUNetTrainerShortNoDA__${plans}__3d_fullres/fold_0 cont=()
    [ -f "$fold/checkpoint_final.pth" ] && return 0
    [ -f "$fold/checkpoint_latest.pth" ] && cont=(--c)
    run "$@" RECOKD_SHORT_EPOCHS="$EPOCHS" RECOKD_SHORT_ITERS="$ITERS" RECOKD_SHORT_VAL_ITERS="$VAL_ITERS" \
        RECOKD_SHORT_SAVE_EVERY=1 RECOKD_SEED=0 \
        "${NNUNET_TRAIN[@]}" 811 3d_fullres 0 -tr nnUNetTrainerShortNoDA -p "$plans" -device cpu "${cont[@]}"
}
NNUNET_TRAIN=("$BIN/nnUNetv2_train")
if [ -n "${THREADS:-}" ]; then  # nnUNetv2_train sets torch's threads to multiprocessing.cpu_count() on the CPU
    NNUNET_TRAIN=("$PY" -c "import multiprocessing, sys; n = int(sys.argv.pop(1)); multiprocessing.cpu_count = lambda: n; \
from nnunetv2.run.run_training import run_training_entry; run_training_entry()" "$THREADS")
fi
if want teacher; then
    train nnUNetPlans
fi
if want students; then
    for t in ${STUDENT_TS:-2 3}; do
        run "$BIN/recokd" student-plans 811 -c 3d_fullres -t "$t" > /dev/null
        train "nnUNetPlans_recokd_t$t" RECOKD_SHORT_OPTIMIZER=adam
    done
fi

if want curves; then
    # every run's held-out pseudo Dice (fold 0's 8 validation cases, VAL_ITERS batches of 2 whole cases per
    # epoch), finished or not: a stopped run's curve is what its training logs hold
    folds=()
    for f in "$nnUNet_results/$DATASET"/nnUNetTrainerShortNoDA__nnUNetPlans*__3d_fullres/fold_0; do
        [ -d "$f" ] && folds+=("$f")
    done
    labels=$("$PY" -c "import json, sys; d = json.load(open(sys.argv[1]))['labels']; \
print(','.join(k for k, v in sorted(d.items(), key=lambda kv: kv[1]) if v))" "$nnUNet_raw/$DATASET/dataset.json")
    run "$PY" benchmarks/learning_curves.py "${folds[@]}" --iters-per-epoch "$ITERS" --every $((4 * ITERS)) \
        --labels "$labels" --small Pallidum_L,Pallidum_R,Amygdala_L,Amygdala_R \
        --csv "$STUDY/curves.csv" --plot "$STUDY/curves.png" > "$STUDY/curves.txt"
fi
