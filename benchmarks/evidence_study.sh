#!/usr/bin/env bash
# The evidence study of benchmarks/RESULTS.md: a competent teacher, paired students, a KD-weight sweep on a
# validation split, the final comparison over seeds. Every step is resumable: it skips what is finished
# (nnU-Net checkpoint_final.pth, recokd bench result.json files), so run it again to continue.
#
#   bash benchmarks/evidence_study.sh [STEP ...]
#   STEP: data teacher students curves sweep adam-students adam-curves adam-sweep adam-long final int8 backends
#   (default: all but int8 and backends, the deployment figures of issue 13, written to DEPLOY)
#
# CPU, 2 cores: data ~1 min, teacher ~35 min, each student run 2-5 min. Environment knobs: STUDY (folder,
# default benchmarks/results/evidence), PY (python, default .venv/bin/python), SEEDS (final bench, default 3).
# Heavy folders (nnU-Net data, models, predictions) stay out of git (STUDY/.gitignore); the per-run
# result.json / evaluation files and the reports are committed, which is what the benches resume from.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${STUDY:-benchmarks/results/evidence}
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
SEEDS=${SEEDS:-3}
DATA=$STUDY/data
DEPLOY=${DEPLOY:-benchmarks/results/deploy}
export nnUNet_raw=$PWD/$DATA/nnUNet_raw nnUNet_preprocessed=$PWD/$DATA/nnUNet_preprocessed
export nnUNet_results=$PWD/$DATA/nnUNet_results
export nnUNet_extTrainer=$("$PY" -c "import recokd.nnunet as n; print(n.ext_trainer_dir())")
export nnUNet_def_n_proc=1 nnUNet_compile=0 nnUNet_wandb_enabled=0 PYTHONWARNINGS=ignore::FutureWarning
DATASET=Dataset801_P32s2p0
TEACHER=$nnUNet_results/$DATASET/nnUNetTrainerShortNoDA__nnUNetPlans__3d_fullres
VAL=$PWD/$DATA/validation_raw/Dataset802_P32s2p0Validation
# regime 1 (sweep): the students' schedule: epochs x 50 iterations, no augmentation, nnU-Net's SGD
STUDENT=(--no-augmentation --iters-per-epoch 50 --val-iters 2 --epochs 10 -t 2 --device cpu --no-progress)
# regime 2 (adam-sweep, final): the same schedule with nnU-Net's AdamW (nnUNetTrainerAdam) for every student, t=3
ADAM_T=${ADAM_T:-3}
STUDENT_ADAM=(--no-augmentation --iters-per-epoch 50 --val-iters 2 --epochs 10 -t "$ADAM_T" --optimizer adam
    --device cpu --no-progress)
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(data teacher students curves sweep adam-students adam-curves adam-sweep adam-long final)
want() { [[ " ${steps[*]} " == *" $1 "* ]]; }
mkdir -p "$STUDY"
printf 'data/\n**/nnUNet_results/\n**/nnUNet_raw/\n**/nnUNet_preprocessed/\n**/predictions/\n' > "$STUDY/.gitignore"

if want data; then
    # 60 training + 16 held-out (test) phantoms of 32^3 (1 mm), small structures x2 (~100 voxels each)
    [ -d "$nnUNet_raw/$DATASET" ] || "$BIN/recokd" phantoms --id 801 --name P32s2p0 --cases 60 --test-cases 16 \
        --shape 32 32 32 --small-scale 2 --seed 0 --raw "$nnUNet_raw"
    # the validation split of the KD sweep: 16 more phantoms from another generator seed (never the test cases)
    [ -d "$VAL" ] || "$BIN/recokd" phantoms --id 802 --name P32s2p0Validation --cases 2 --test-cases 16 \
        --shape 32 32 32 --small-scale 2 --seed 1 --raw "$PWD/$DATA/validation_raw"
    # nnU-Net's planner: no nnUNet_n_proc_DA=0 here (it would call torch.set_num_threads(0))
    [ -f "$nnUNet_preprocessed/$DATASET/nnUNetPlans.json" ] || \
        "$BIN/nnUNetv2_plan_and_preprocess" -d 801 -c 3d_fullres -np 1 --verify_dataset_integrity
fi

export nnUNet_n_proc_DA=0  # training: augmentation (here: none) in the main process
if want teacher && [ ! -f "$TEACHER/fold_0/checkpoint_final.pth" ]; then
    # stock nnU-Net (nnUNetTrainerNoDA on a short schedule): 40 epochs x 50 iterations, seed 0
    RECOKD_SHORT_EPOCHS=40 RECOKD_SHORT_ITERS=50 RECOKD_SHORT_VAL_ITERS=4 RECOKD_SEED=0 \
        "$BIN/nnUNetv2_train" 801 3d_fullres 0 -tr nnUNetTrainerShortNoDA -device cpu
fi

if want students; then
    # students trained alone (stock nnU-Net, NoDA, seed 0) for the regime's learning curves
    for spec in "2 20" "3 10" "1 20"; do
        set -- $spec
        "$BIN/recokd" student-plans 801 -c 3d_fullres -t "$1" > /dev/null
        fold=$nnUNet_results/$DATASET/nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t$1__3d_fullres/fold_0
        [ -f "$fold/checkpoint_final.pth" ] || RECOKD_SHORT_EPOCHS=$2 RECOKD_SHORT_ITERS=50 RECOKD_SHORT_VAL_ITERS=4 \
            RECOKD_SEED=0 "$BIN/nnUNetv2_train" 801 3d_fullres 0 -tr nnUNetTrainerShortNoDA -p "nnUNetPlans_recokd_t$1" \
            -device cpu
    done
fi

if want curves; then
    folds=()
    for f in "$nnUNet_results/$DATASET"/nnUNetTrainerShortNoDA__nnUNetPlans*__3d_fullres*/fold_0; do
        [ -d "$f" ] && folds+=("$f")
    done
    "$PY" benchmarks/learning_curves.py "${folds[@]}" --every 100 --csv "$STUDY/curves.csv" \
        --plot "$STUDY/curves.png" > "$STUDY/curves.txt"
fi

bench() {  # bench FOLDER ARGS...: a regime-1 student bench against the teacher above
    local out=$1; shift
    "$BIN/recokd" bench --dataset 801 --teacher "$TEACHER" -o "$out" "${STUDENT[@]}" "$@"
}
bench_adam() {  # bench_adam FOLDER ARGS...: a regime-2 student bench
    local out=$1; shift
    "$BIN/recokd" bench --dataset 801 --teacher "$TEACHER" -o "$out" "${STUDENT_ADAM[@]}" "$@"
}

if want sweep; then
    # 1. KD weight lambda_max in {0.01, 0.1, 1} (reco, reco:10, reco:100 at --kd-weight 0.01), warm-up 0.2;
    # 2. warm-up fraction in {0, 0.6} at the best lambda of 1 (BEST_WEIGHT, a method spec: reco:10 = 0.1).
    # Seed 0, scored on the validation phantoms, never on the test cases.
    sweep=(--seed-list 0 --test-images "$VAL/imagesTs" --test-labels "$VAL/labelsTs" --no-profile)
    bench "$STUDY/sweep/warmup0.2" --warmup 0.2 --methods reco,reco:10,reco:100 "${sweep[@]}"
    for w in 0 0.6; do
        bench "$STUDY/sweep/warmup$w" --warmup "$w" --methods "${BEST_WEIGHT:-reco:100}" "${sweep[@]}"
    done
    # 3. the students' schedule: the teacher's length (40 epochs = 2000 iterations) instead of 10
    bench "$STUDY/sweep/long" --epochs 40 --warmup 0.2 --methods "${BEST_WEIGHT:-reco:100}" "${sweep[@]}"
fi

if want adam-students; then
    # students trained alone with nnU-Net's AdamW (nnUNetTrainerAdam's optimiser), 10 x 50 iterations, seed 0
    for t in 2 3; do
        "$BIN/recokd" student-plans 801 -c 3d_fullres -t "$t" > /dev/null
        fold=$nnUNet_results/$DATASET/nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t${t}__3d_fullres_adam/fold_0
        [ -f "$fold/checkpoint_final.pth" ] || (
            tmp=$(mktemp -d) && export nnUNet_results=$tmp &&
            RECOKD_SHORT_EPOCHS=10 RECOKD_SHORT_ITERS=50 RECOKD_SHORT_VAL_ITERS=4 RECOKD_SHORT_OPTIMIZER=adam \
            RECOKD_SEED=0 "$BIN/nnUNetv2_train" 801 3d_fullres 0 -tr nnUNetTrainerShortNoDA \
                -p "nnUNetPlans_recokd_t$t" -device cpu &&
            mkdir -p "$(dirname "$fold")" &&
            trained=$tmp/$DATASET/nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t${t}__3d_fullres &&
            cp "$trained"/*.json "$(dirname "$fold")/" && mv "$trained/fold_0" "$fold" )
    done
fi

if want adam-curves; then
    "$PY" benchmarks/learning_curves.py "$nnUNet_results/$DATASET"/*_adam/fold_0 --every 100 \
        --csv "$STUDY/curves_adam.csv" --plot "$STUDY/curves_adam.png" > "$STUDY/curves_adam.txt"
fi

if want adam-sweep; then
    # regime 2 on the validation phantoms, seed 0: lambda_max in {0.01, 0.1, 1} at warm-up 0.2, then
    # warm-up in {0, 0.6} at the best lambda (ADAM_BEST, a method spec at --kd-weight 0.01: reco:10 = 0.1)
    sweep=(--seed-list 0 --test-images "$VAL/imagesTs" --test-labels "$VAL/labelsTs" --no-profile)
    bench_adam "$STUDY/adam-sweep/warmup0.2" --warmup 0.2 --methods reco,reco:10,reco:100 "${sweep[@]}"
    if [ -n "${ADAM_BEST:-}" ]; then
        for w in 0 0.6; do
            bench_adam "$STUDY/adam-sweep/warmup$w" --warmup "$w" --methods "$ADAM_BEST" "${sweep[@]}"
        done
    fi
fi

if want adam-long; then
    # regime 2 with the students' schedule doubled (20 x 50 iterations): does KD help once the no-KD student is
    # further along? Validation phantoms, seed 0, lambda_max 0.01, warm-up 0.2; ReCo-KD and the final table's
    # best baseline (DIST)
    bench_adam "$STUDY/adam-sweep/long20" --epochs 20 --warmup 0.2 --methods reco,dist --seed-list 0 \
        --test-images "$VAL/imagesTs" --test-labels "$VAL/labelsTs" --no-profile
fi

if want final; then
    # the comparison on the test phantoms with the setting chosen on the validation split (RESULTS.md)
    bench_adam "$STUDY/final" --kd-weight "${KD_WEIGHT:-0.01}" --warmup "${WARMUP:-0.2}" --seeds "$SEEDS" \
        --methods reco,reco-sard,reco-ca,cwd,fitnet,logits,dist
fi

ADAM_T2=$nnUNet_results/$DATASET/nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t2__3d_fullres_adam
if want int8; then
    # what int8 costs on trained models: the teacher and the t=2 AdamW student of adam-students, on the 16 test
    # phantoms; PyTorch vs OpenVINO fp32 vs OpenVINO int8 (recokd quantize, 8 calibration cases of fold 0's
    # training split), mirroring off
    [ -d "$ADAM_T2" ] || { echo "int8: run the adam-students step first" >&2; exit 1; }
    # (folders trained by an older version of adam-students lack plans.json / dataset.json)
    [ -f "$ADAM_T2/plans.json" ] || cp "$nnUNet_preprocessed/$DATASET/nnUNetPlans_recokd_t2.json" "$ADAM_T2/plans.json"
    [ -f "$ADAM_T2/dataset.json" ] || cp "$nnUNet_preprocessed/$DATASET/dataset.json" "$ADAM_T2/dataset.json"
    # recokd predict finds models by dataset/trainer/plans/configuration under nnUNet_results: link both there
    models=$PWD/$DATA/int8_models/$DATASET
    mkdir -p "$models"
    ln -sfn "$TEACHER" "$models/$(basename "$TEACHER")"
    ln -sfn "$ADAM_T2" "$models/nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t2__3d_fullres"
    nnUNet_results=$(dirname "$models") "$PY" benchmarks/int8_accuracy.py -d 801 -i "$nnUNet_raw/$DATASET/imagesTs" \
        -l "$nnUNet_raw/$DATASET/labelsTs" --dataset-json "$nnUNet_raw/$DATASET/dataset.json" -o "$DATA/int8" \
        "teacher=$models/$(basename "$TEACHER")" "student_t2=$models/nnUNetTrainerShortNoDA__nnUNetPlans_recokd_t2__3d_fullres"
    mkdir -p "$DEPLOY" && cp "$DATA/int8/int8_accuracy.md" "$DATA/int8/int8_accuracy.json" "$DEPLOY/"
fi

if want backends; then
    # recokd profile on every backend, one test phantom (32^3: one tile), mirroring off and on
    "$BIN/recokd" profile "teacher=$TEACHER" "student_t2=$ADAM_T2" --backends all --threads 2 \
        --case "$nnUNet_raw/$DATASET/imagesTs/P32s2p0_060_0000.nii.gz" -o "$DEPLOY/profile" --overwrite \
        > "$DEPLOY/profile.txt"
fi
