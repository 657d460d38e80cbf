#!/usr/bin/env bash
# The paper's experiment with our tool, at a budget that fits 2 CPU cores.
# Usage: bash benchmarks/paper_experiment.sh [DATA_DIR (default ../shared/data)] [OUT (default docs/results)]
set -euo pipefail
data=${1:-../shared/data}
out=${2:-docs/results}
tfd=${TFDISGUISE:-.venv/bin/tfdisguise}

# MNIST: the shared 10k test split as 8k train / 2k validation (seeded shuffle, seed 0).
$tfd calibrate --input "$data/mnist" --validation-fraction 0.2 --seed 0 \
    --block-sizes 7 --noise-levels 100 --rmt orthogonal --rmt-mode matrix,vector --permute \
    --model simple_cnn --epochs 15 --ks 1,10,100 --attack-images 1000 --key-agnostic-keys 16 \
    --out "$out/mnist" --resume

# CIFAR-10: the shared 50k train file as 40k train / 10k validation (seeded shuffle, seed 0).
$tfd calibrate --input "$data/cifar10/train.npz" --validation-fraction 0.2 --seed 0 \
    --block-sizes 2 --noise-levels 25 --rmt orthogonal --rmt-mode matrix,vector --no-permute \
    --model resnet20 --epochs 4 --batch-size 128 --ks 1,10,100 --attack-images 500 \
    --key-agnostic-keys 16 --key-agnostic-images 10000 --out "$out/cifar10" --resume
