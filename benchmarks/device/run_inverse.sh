#!/bin/bash
# Issue 13's device run (docs/RESULTS.md section 6, H100): ResNet-20 on Keras/JAX for 100 epochs, plain against
# the key-free attack's inverse in front of the classifier (cifar-poster, cifar-perm); one seed (= key) at a
# time, three trainings at once. Prepare here: the wheels in .gpu/whl (benchmarks/device/README.md) and
#   python benchmarks/device/pack_cifar.py pack ../shared/data/cifar10/train.npz 24000 .gpu/d/cifar_d.npz --check
# then run `bash benchmarks/device/run_inverse.sh` on the device, carrying .gpu/d and .gpu/whl. Results go to
# $OUT/inv; a seed that would not finish inside BUDGET seconds is stopped by --max-seconds.
T0=$(date +%s); BUDGET=${BUDGET:-560}; EPOCHS=${EPOCHS:-100}; PUBLIC=${PUBLIC:-3000}
source benchmarks/device/prelude.sh
O=$OUT/inv; mkdir -p $O
for s in 0 1 2; do
  left=$(( BUDGET - ($(date +%s) - T0) - 45 ))
  [ $left -lt 60 ] && { echo "no time left for seed $s"; break; }
  echo "seed $s: --max-seconds $left, started at $(( $(date +%s) - T0 )) s"
  $PY benchmarks/model_gap_jax.py --data $DATA --parts plain,cifar-poster,cifar-perm --epochs $EPOCHS \
      --batch-size 512 --learning-rate 2e-3 --parallel 3 --inverse-stem --public-limit $PUBLIC --seed $s \
      --max-seconds $left --out $O > $OUT/log_s$s.txt 2>&1
  echo "seed $s: rc $?, done at $(( $(date +%s) - T0 )) s"
  grep -h '"final_val_accuracy"' $OUT/log_s$s.txt | cut -c1-330
done
