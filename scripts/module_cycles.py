#!/usr/bin/env python3
"""Import cycles between sibling modules of the library, from cargo-modules' graph.

    cargo install cargo-modules --version 0.27.0 --locked
    cargo modules dependencies --lib --no-externs --no-sysroot --no-fns --no-traits \
        --no-types --no-owns > /tmp/deps.dot
    python3 scripts/module_cycles.py /tmp/deps.dot

For every module P, every `use` between P's descendants is collapsed onto P's direct children,
and a cycle among those children is reported (two modules that import each other, directly or
through others). A module's own `mod.rs` re-exporting its children, and children using what
their parent defines, is a parent–child relation, not a cycle, and is not reported. Prints
"sibling cycles: none" and exits 0, or lists them and exits 1.
"""
import re, collections, sys
sys.setrecursionlimit(10000)
edges=set()
for line in open(sys.argv[1]):
    m=re.match(r'\s*"([^"]+)"\s*->\s*"([^"]+)"',line)
    if m: edges.add(m.groups())
def sccs(nodes, g):
    idx={};low={};st=[];on=set();out=[];c=[0]
    def sc(v):
        idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
        for w in g[v]:
            if w not in idx: sc(w);low[v]=min(low[v],low[w])
            elif w in on: low[v]=min(low[v],idx[w])
        if low[v]==idx[v]:
            comp=[]
            while True:
                w=st.pop();on.discard(w);comp.append(w)
                if w==v:break
            out.append(comp)
    for v in nodes:
        if v not in idx: sc(v)
    return [s for s in out if len(s)>1]
def level(path, depth): return "::".join(path.split("::")[:depth])
bad=[]
# For every parent module P, collapse descendants to P's direct children and look for cycles among siblings.
parents=set()
for a,b in edges:
    for p in (a,b):
        parts=p.split("::")
        for d in range(1,len(parts)): parents.add("::".join(parts[:d]))
for P in sorted(parents):
    d=len(P.split("::"))+1
    g=collections.defaultdict(set); nodes=set()
    for a,b in edges:
        if a.startswith(P+"::") and b.startswith(P+"::"):
            ca,cb=level(a,d),level(b,d)
            if ca!=cb: g[ca].add(cb); nodes|={ca,cb}
    for c in sccs(sorted(nodes), g): bad.append((P,c))
print("sibling cycles:", bad if bad else "none")
sys.exit(1 if bad else 0)
