#!/bin/bash
# Prepared for issue 13's next device session (docs/RESULTS.md section 6): the shipped recommendation,
# block_adapter with the ResNet-20 backbone (recipe adapter+aug), 3 keys, and ResNet-20 alone on disguised images
# (1 key each), 100 epochs, on the same 16,200 owner images as run_inverse.sh. Prepared as run_inverse.sh says;
# results go to $OUT/adapter.
T0=$(date +%s); BUDGET=${BUDGET:-380}; EPOCHS=${EPOCHS:-100}; LIMIT=${LIMIT:-16200}
source benchmarks/device/prelude.sh
O=$OUT/adapter; mkdir -p $O
common="--data $DATA --epochs $EPOCHS --batch-size 512 --learning-rate 2e-3 --parallel 3 --limit $LIMIT --out $O"
alone=(cifar-poster cifar-perm)
for g in 0 1 2; do
  left=$(( BUDGET - ($(date +%s) - T0) - 30 ))
  [ $left -lt 60 ] && { echo "no time left for group $g"; break; }
  echo "group $g: --max-seconds $left, started at $(( $(date +%s) - T0 )) s"
  # Two invocations share the GPU: each child takes 0.9 / --parallel of its memory, 3 children in all.
  $PY benchmarks/model_gap_jax.py $common --recipe adapter+aug --parts cifar-poster,cifar-perm --seed $g \
      --max-seconds $left > $OUT/log_g${g}_adapter.txt 2>&1 &
  adapter=$!
  if [ $g -lt 2 ]; then
    $PY benchmarks/model_gap_jax.py $common --parts ${alone[$g]} --seed 0 --max-seconds $left \
        > $OUT/log_g${g}_alone.txt 2>&1
  fi
  wait $adapter
  echo "group $g: done at $(( $(date +%s) - T0 )) s"
  grep -h '"final_val_accuracy"' $OUT/log_g${g}_*.txt | cut -c1-300
done
