#!/bin/bash
# run.sh NAME SEED BIN [extra train args...] ; env passes through
name=$1; seed=$2; bin=$3; shift 3
out=/tmp/cond/$name-s$seed
rm -rf $out
$bin train --data /work/shared/data/louvre-genres --condition artist --labels subfolder --preset dcgan --image-size ${SIZE:-32} --ngf 32 --ndf 32 --epochs ${EPOCHS:-26} --seed $seed --device cpu --out $out "$@" > $out.log 2>&1 || { echo "train failed $out"; exit 1; }
for es in 1 2 3; do
  $bin evaluate --checkpoint $out --data /work/shared/data/louvre-genres --count 256 --device cpu --seed $es 2>&1 | grep "^class\|      mean" > $out.eval$es
done
python3 - "$out" <<'PY'
import re,sys,glob
out=sys.argv[1]
gaps={}; mean=[]
for f in sorted(glob.glob(out+'.eval*')):
    for line in open(f):
        m=re.match(r'class (\S+)\s.*SWD mean\s+([\d.]+).*other classes\s+([\d.]+)',line)
        if m:
            c,own,oth=m.group(1),float(m.group(2)),float(m.group(3))
            gaps.setdefault(c,[]).append((oth-own)/oth*100)
        m=re.match(r'\s+mean\s+([\d.]+)',line)
        if m: mean.append(float(m.group(1)))
g={c:sum(v)/len(v) for c,v in gaps.items()}
print(out.split('/')[-1], 'gap%% per class', ' '.join(f'{c[:5]} {v:+.1f}' for c,v in g.items()), f'| mean {sum(g.values())/len(g):+.1f} min {min(g.values()):+.1f} | SWD {sum(mean)/len(mean):.1f}')
PY
