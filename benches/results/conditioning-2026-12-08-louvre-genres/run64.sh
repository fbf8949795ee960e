#!/bin/bash
# run64.sh NAME SEED [extra]: louvre-genres conditional dcgan 64 px, 82 epochs (~100k images), checkpoint at epoch 26 (~32k)
name=$1; seed=$2; shift 2
bin=/tmp/cond/artgan-new
out=/tmp/cond/$name-s$seed
rm -rf $out
/usr/bin/time -f "%e s wall" $bin train --data /work/shared/data/louvre-genres --condition artist --labels subfolder --preset dcgan --image-size 64 --ngf 32 --ndf 32 --epochs 82 --checkpoint-every 26 --keep-checkpoints 10 --seed $seed --device cpu --out $out "$@" > $out.log 2>&1 || { echo "train failed $out"; exit 1; }
for ck in $out/checkpoints/epoch-0026 $out; do
  tag=$(basename $ck); [ "$ck" = "$out" ] && tag=final
  for es in 1 2 3; do
    $bin evaluate --checkpoint $ck --data /work/shared/data/louvre-genres --count 256 --device cpu --seed $es 2>&1 | grep "^class\|      mean" > $out.$tag.eval$es
  done
done
echo done $out
