import re,sys,glob
for out in sys.argv[1:]:
  for tag in ['epoch-0026','final']:
    gaps={}; mean=[]
    for f in sorted(glob.glob(f'{out}.{tag}.eval*')):
        for line in open(f):
            m=re.match(r'class (\S+)\s.*SWD mean\s+([\d.]+).*other classes\s+([\d.]+)',line)
            if m:
                c,own,oth=m.group(1),float(m.group(2)),float(m.group(3))
                gaps.setdefault(c,[]).append((oth-own)/oth*100)
            m=re.match(r'\s+mean\s+([\d.]+)',line)
            if m: mean.append(float(m.group(1)))
    if not gaps: continue
    g={c:sum(v)/len(v) for c,v in gaps.items()}
    print(out.split('/')[-1], tag, ' '.join(f'{c[:5]} {v:+.1f}' for c,v in g.items()), f'| mean {sum(g.values())/len(g):+.1f} min {min(g.values()):+.1f} | SWD {sum(mean)/len(mean):.1f}')
