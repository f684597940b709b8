#!/usr/bin/env python3
"""Import cycles between sibling modules of the library (src/, less the binary's main.rs and cli/),
and source files over the line limit (every .rs file under src/, cli/ and main.rs included).

    python3 scripts/module_cycles.py [SRC_DIR]

Every reference one module makes to another counts — a `use` or a path written in the code
(`crate::a::b::f()`, `super::x`) — outside comments. For every module P, the references
between P's descendants are collapsed onto P's direct children, and a cycle among those
children is reported: two modules that import each other, directly or through others. A
parent's `mod.rs` re-exporting its children, and children using what their parent defines, is
the parent–child relation, not a cycle. Prints "sibling cycles: none", or lists them.

Every .rs file under src/ must have at most MAX_LINES lines; each one over is named with its
line count. Exits 0 when there is no cycle and no file over the limit, 1 otherwise.
"""
import collections, os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
src = os.path.normpath(src)
top = os.path.dirname(os.path.abspath(src))  # files are named relative to src/'s parent
MAX_LINES = 800
too_long = []
for root, dirs, names in os.walk(src):
    dirs.sort()
    for n in sorted(names):
        if n.endswith(".rs"):
            path = os.path.join(root, n)
            with open(path, encoding="utf-8") as f:
                count = sum(1 for _ in f)
            if count > MAX_LINES:
                too_long.append((os.path.relpath(path, top), count))
skip = {"main.rs"}
files = {}
for root, dirs, names in os.walk(src):
    rel = os.path.relpath(root, src)
    if rel.split(os.sep)[0] == "cli":
        continue
    for n in names:
        if not n.endswith(".rs") or (rel == "." and n in skip):
            continue
        parts = [] if rel == "." else rel.split(os.sep)
        if n == "lib.rs" and rel == ".":
            mod = []
        elif n == "mod.rs":
            mod = parts
        else:
            mod = parts + [n[:-3]]
        files["::".join(["crate"] + mod)] = (os.path.join(root, n), n == "mod.rs" or n == "lib.rs")

modules = set(files)

def longest_module(segs):
    for k in range(len(segs), 0, -1):
        cand = "::".join(segs[:k])
        if cand in modules:
            return cand
    return None

def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(l.split("//")[0] for l in text.splitlines())

def expand(prefix, body):
    """`a::{b, c::d}` → [a::b, a::c::d] (one level of braces is enough here)."""
    out = []
    for item in body.split(","):
        item = item.strip().split(" as ")[0].strip()
        if item and item != "self":
            out.append(prefix + "::" + item)
        elif item == "self":
            out.append(prefix)
    return out

refs = collections.defaultdict(set)
path_re = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)(::\{([^{}]*)\})?")
for mod, (path, is_dir) in files.items():
    here = mod.split("::")
    # `super` of x/mod.rs is x's parent; of x/y.rs is x.
    parent = here[:-1] if len(here) > 1 else here
    text = strip_comments(open(path, encoding="utf-8").read())
    for m in path_re.finditer(text):
        root, rest, _, braces = m.groups()
        base = {"crate": ["crate"], "super": parent, "self": here}[root]
        segs = base + [s for s in rest.split("::") if s]
        paths = [segs]
        if braces is not None:
            paths = [p.split("::") for p in expand("::".join(segs), braces)]
        for p in paths:
            target = longest_module(p)
            if target and target != mod:
                refs[mod].add(target)

def sccs(nodes, g):
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in g[v]:
            if w not in idx:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            out.append(comp)
    for v in nodes:
        if v not in idx:
            visit(v)
    return [s for s in out if len(s) > 1]

bad = []
for P in sorted(modules):
    d = len(P.split("::")) + 1
    g, nodes = collections.defaultdict(set), set()
    for a, targets in refs.items():
        for b in targets:
            if a.startswith(P + "::") and b.startswith(P + "::"):
                ca, cb = "::".join(a.split("::")[:d]), "::".join(b.split("::")[:d])
                if ca != cb:
                    g[ca].add(cb); nodes |= {ca, cb}
    for comp in sccs(sorted(nodes), g):
        bad.append((P, sorted(comp)))
for path, count in too_long:
    print(f"{path}: {count} lines, over the {MAX_LINES}-line limit")
if bad:
    for P, comp in bad:
        print(f"sibling cycle under {P}: {' <-> '.join(comp)}")
else:
    print(f"sibling cycles: none ({len(modules)} modules, {sum(len(v) for v in refs.values())} references)")
if not too_long:
    print(f"files over {MAX_LINES} lines: none")
sys.exit(1 if bad or too_long else 0)
