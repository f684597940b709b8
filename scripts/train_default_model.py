#!/usr/bin/env python3
"""Train rwkv-cli's small built-in default model: a byte-level RWKV-7 ("x070").

Usage, from the repository root, with a python3 that has the packages listed
in scripts/requirements-train.txt (torch, numpy, safetensors) and a Debian
machine with apt (only for fetching the data package):

    python3 scripts/train_default_model.py --self-test     # checks, ~1 minute
    python3 scripts/train_default_model.py                 # trains, writes models/default.*
    python3 scripts/train_default_model.py --export-heldout heldout.txt   # the eval bytes

What it does
------------
Data.  The six novels of Jane Austen (public domain), as shipped by the Debian
package r-cran-janeaustenr 1.0.0-1 (the CRAN package janeaustenr by Julia
Silge, MIT licence, texts from Project Gutenberg).  The script runs
`apt-get download r-cran-janeaustenr` (or takes --deb FILE), reads the .deb (an
ar archive) itself, and decodes the R lazy-load database data/Rdata.rdb/.rdx
with a small R-unserializer written here (no R needed).  Each book is a
character vector of lines; lines are joined with "\\n".  Books are taken in the
order the package stores them (emma, mansfieldpark, northangerabbey,
persuasion, prideprejudice, sensesensibility).

Split.  For each book of n bytes, the held-out part starts at the first
non-newline byte after the first blank line ("\\n\\n") at or after byte
floor(0.95 n); everything before is training text.  The training stream and
the held-out stream are the respective parts joined (in book order) with
SEP = "\\n\\n\\n\\n\\n".

Vocabulary.  Bytes: token id = byte value, V = 256.  Id 0 (NUL, never in the
text) serves as an optional start token.

Model.  Official RWKV-7 x070 layout (tensor names, shapes, equations) -- the
same function as RWKV_x070 in BlinkDL's `rwkv` pip package: decay
w = exp(-0.606531 * sigmoid(w0 + tanh(x@w1)@w2)), kk = L2-normalise(k*k_k) per
head (eps 1e-12), ln_x = GroupNorm(H) with eps 64e-5, value residual from layer
0, squared-ReLU channel mix.  Training evaluates the WKV-7 recurrence with an
exact chunked (parallel-in-chunk) form, see wkv7_chunked(); --self-test checks
it and the whole training forward against a per-token implementation that
mirrors the inference code, and (if the `rwkv` package is importable) against
rwkv.model.RWKV itself.

Training.  Truncated BPTT over B parallel streams of the training text: each
stream reads consecutive windows of ctx bytes and carries its RNN state from
window to window (gradients stop at window boundaries).  Before each window a
stream is reset (zero state) with probability --reset-prob; half of the resets
start the window with the start token 0, half with the raw text, so that
zero-state starts with and without the 0 byte are both trained.  AdamW, linear
warm-up, constant, then cosine decay ("WSD"), gradient clipping, fixed --steps: the run is
deterministic given --seed (and torch version / thread count).

Evaluation (the numbers written to default.json).  "Inference protocol": with
the exported (dtype-rounded, upcast to f32) weights and the per-token
inference code path, start from the zero state, feed token 0, then feed the
evaluated bytes one after the other (in chunks of 1024 with the state carried
over; chunking does not change the function); the logits after each fed token
give the distribution of the next byte.  bpb = mean over all evaluated bytes of
-log2 softmax(logits)[byte].  Held-out: all bytes of the held-out stream.
Train: the last 65536 bytes of the training stream, same protocol.

Outputs: models/default.safetensors (weights, metadata {"format": "pt"}),
models/default.json (hyper-parameters, data, split, timings, losses, samples).
Scratch files (data cache, checkpoints, log) go to --work-dir.
"""

import argparse
import hashlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import tarfile
import time
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEB_NAME = "r-cran-janeaustenr"
DEB_VERSION = "1.0.0-1"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
RDATA_DIR = "./usr/lib/R/site-library/janeaustenr/data/"
SEP = b"\n\n\n\n\n"
HELDOUT_FRACTION = 0.05
DECAY_SCALE = 0.606531  # exp(-0.5), as in RWKV_x070
GN_EPS = 64e-5
EVAL_CHUNK = 1024

# --------------------------------------------------------------------------------------
# Data: Debian package -> R lazy-load database -> text
# --------------------------------------------------------------------------------------


def ar_members(blob):
    """Yield (name, bytes) of an ar archive (the .deb container)."""
    assert blob[:8] == b"!<arch>\n", "not an ar archive"
    p = 8
    while p + 60 <= len(blob):
        hdr = blob[p:p + 60]
        name = hdr[:16].decode().strip().rstrip("/")
        size = int(hdr[48:58].decode().strip())
        p += 60
        yield name, blob[p:p + size]
        p += size + (size & 1)


class RUnserializer:
    """Just enough of R's XDR serialization format (version 2/3) for character data."""

    def __init__(self, blob):
        assert blob[:2] == b"X\n", "expected XDR serialization"
        self.b, self.p, self.refs = blob, 2, []
        version = self.int()
        self.int()  # writer R version
        self.int()  # minimal reader version
        if version == 3:
            n = self.int()
            self.p += n  # native encoding name

    def int(self):
        v = struct.unpack_from(">i", self.b, self.p)[0]
        self.p += 4
        return v

    def length(self):
        n = self.int()
        if n == -1:  # long vector
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t == 254:  # NILVALUE
            return None
        if t == 255:  # REFSXP
            i = flags >> 8
            return self.refs[(i if i else self.int()) - 1]
        if t in (241, 242, 250, 251, 252, 253):  # environments / special markers
            return ("special", t)
        if t == 1:  # SYMSXP
            sym = ("sym", self.item())
            self.refs.append(sym)
            return sym
        if t in (2, 6, 239, 240):  # pairlists
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            cdr = self.item()
            return ("pair", tag, car, cdr, attr)
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.p:self.p + n]
            self.p += n
            return s
        if t in (10, 13):  # logical, integer
            n = self.length()
            x = list(struct.unpack_from(">%di" % n, self.b, self.p))
            self.p += 4 * n
        elif t == 14:  # double
            n = self.length()
            x = list(struct.unpack_from(">%dd" % n, self.b, self.p))
            self.p += 8 * n
        elif t in (16, 19, 20):  # character vector, list, expression
            n = self.length()
            x = [self.item() for _ in range(n)]
        else:
            raise ValueError("unsupported R SEXP type %d" % t)
        attr = self.item() if has_attr else None
        return ("vec", t, x, attr)


def r_names(obj):
    """names() attribute of an R vector as a list of str."""
    pl = obj[3]
    while pl is not None:
        _, tag, car, cdr, _ = pl
        if tag == ("sym", b"names"):
            return [s.decode() for s in car[2]]
        pl = cdr
    return None


def get_deb(args):
    if args.deb:
        path = args.deb
    else:
        cache = os.path.join(args.work_dir, "data")
        os.makedirs(cache, exist_ok=True)
        path = os.path.join(cache, "%s_%s_all.deb" % (DEB_NAME, DEB_VERSION))
        if not os.path.exists(path):
            print("fetching %s=%s with apt-get download" % (DEB_NAME, DEB_VERSION), flush=True)
            subprocess.run(["apt-get", "download", "%s=%s" % (DEB_NAME, DEB_VERSION)], cwd=cache, check=True)
    blob = open(path, "rb").read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != DEB_SHA256:
        print("WARNING: %s has sha256 %s, expected %s" % (path, digest, DEB_SHA256), flush=True)
    return blob, digest


def load_books(args):
    """Return (list of (name, bytes)) in the package's order, and the .deb sha256."""
    blob, digest = get_deb(args)
    data = dict(ar_members(blob))
    tar_name = [n for n in data if n.startswith("data.tar")][0]
    with tarfile.open(fileobj=io.BytesIO(data[tar_name]), mode="r:*") as tf:
        rdx = tf.extractfile(RDATA_DIR + "Rdata.rdx").read()
        rdb = tf.extractfile(RDATA_DIR + "Rdata.rdb").read()
    # .rdx: gzip of a serialized list(variables=list(name=c(offset, length)), ...)
    index = RUnserializer(zlib.decompress(rdx, 16 + zlib.MAX_WBITS)).item()
    variables = index[2][r_names(index).index("variables")]
    books = []
    for name, ent in zip(r_names(variables), variables[2]):
        off, ln = ent[2]
        chunk = rdb[off:off + ln]
        raw_len = struct.unpack(">I", chunk[:4])[0]
        raw = zlib.decompress(chunk[4:])
        assert len(raw) == raw_len
        obj = RUnserializer(raw).item()
        assert obj[1] == 16, "expected a character vector"
        lines = [(s if s is not None else b"") for s in obj[2]]
        text = b"\n".join(lines)
        text.decode("utf-8")  # must be valid text
        books.append((name, text))
    return books, digest


def split_books(books):
    """Per book: held-out = tail starting at a paragraph start at/after 95% of its bytes."""
    train_parts, held_parts, info = [], [], []
    for name, text in books:
        cut = int(math.floor((1.0 - HELDOUT_FRACTION) * len(text)))
        j = text.find(b"\n\n", cut)
        assert j >= 0
        while text[j:j + 1] == b"\n":
            j += 1
        train_parts.append(text[:j])
        held_parts.append(text[j:])
        info.append({"book": name, "bytes": len(text), "train_bytes": j, "heldout_bytes": len(text) - j,
                     "heldout_starts_at_byte": j})
    return SEP.join(train_parts), SEP.join(held_parts), info


# --------------------------------------------------------------------------------------
# WKV-7 recurrence: per-token reference and exact chunked form
# --------------------------------------------------------------------------------------
#
# Per head, with the state S (N_value x N_key) as in RWKV_x070:
#     S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,     y_t = S_t r_t
# with a_t = -kk_t and b_t = kk_t * a_t (RWKV's in-context learning rate a).


def wkv7_reference(r, logw, k, v, a, b, S):
    """Per-token loop. r..b: (B,T,H,N); logw = log(decay); S: (B,H,N,N) [value, key]."""
    B, T, H, N = r.shape
    w = torch.exp(logw)
    ys = []
    for t in range(T):
        sa = S @ a[:, t, :, :, None]  # (B,H,N,1)
        S = S * w[:, t, :, None, :] + sa @ b[:, t, :, None, :] + v[:, t, :, :, None] @ k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None])[..., 0])
    return torch.stack(ys, 1), S


def wkv7_chunked(r, logw, k, v, a, b, S0, L=16):
    """Same function as wkv7_reference, parallel within chunks of L steps.

    Within a chunk (t = 0..L-1, state X = S^T at its start, G_t = prod_{u<=t} w_u):
        sa_t = X^T (a_t*G_{t-1}) + sum_{s<t} [sa_s (b_s/G_s).(a_t G_{t-1}) + v_s (k_s/G_s).(a_t G_{t-1})]
    i.e. SA = A~ X + M_ab SA + M_ak V (strictly lower-triangular M), solved by a
    unit-triangular solve: SA = Q X + SA0.  Then
        Y     = (r*G) X + M_rb SA + M_rk V                 (M_r* lower-triangular incl. diagonal)
        X_end = diag(G_L) X + Bbar^T SA + Kbar^T V,   Bbar = b*G_L/G_s, Kbar = k*G_L/G_s
    Only X_end -> next chunk is sequential.  Decays are >= exp(-0.606531), so the
    ratios 1/G_s stay below ~1.6e4 (L=16) / 2.7e8 (L=32): no overflow in f32.
    """
    B, T, H, N = r.shape
    pad = (-T) % L
    if pad:
        z = lambda x: F.pad(x, (0, 0, 0, 0, 0, pad))
        r, logw, k, v, a, b = z(r), z(logw), z(k), z(v), z(a), z(b)
    Tp = T + pad
    nc = Tp // L

    def rs(x):
        return x.view(B, nc, L, H, N).permute(0, 3, 1, 2, 4)  # B,H,nc,L,N

    r, logw, k, v, a, b = map(rs, (r, logw, k, v, a, b))
    cum = torch.cumsum(logw, dim=-2)  # log G_t (inclusive)
    cumL = cum[..., -1:, :]
    ea = a * torch.exp(cum - logw)  # a_t * G_{t-1}
    er = r * torch.exp(cum)  # r_t * G_t
    inv = torch.exp(-cum)
    bh, kh = b * inv, k * inv
    tail = torch.exp(cumL - cum)
    bbar, kbar = b * tail, k * tail
    ones = torch.ones(L, L, dtype=r.dtype, device=r.device)
    strict, incl = torch.tril(ones, -1), torch.tril(ones, 0)
    bhT, khT = bh.transpose(-1, -2), kh.transpose(-1, -2)
    Mab = (ea @ bhT) * strict
    Mak = (ea @ khT) * strict
    Mrb = (er @ bhT) * incl
    Mrk = (er @ khT) * incl
    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    sol = torch.linalg.solve_triangular(eye - Mab, torch.cat([ea, Mak @ v], -1), upper=False, unitriangular=True)
    Q, SA0 = sol[..., :N], sol[..., N:]
    Wr = er + Mrb @ Q  # (L, N_key)
    Y0 = Mrb @ SA0 + Mrk @ v  # (L, N_value)
    bbarT = bbar.transpose(-1, -2)
    A = torch.diag_embed(torch.exp(cumL[..., 0, :])) + bbarT @ Q  # (N_key, N_key)
    U = bbarT @ SA0 + kbar.transpose(-1, -2) @ v  # (N_key, N_value)
    X = S0.transpose(-1, -2)
    Xs = []
    for c in range(nc):
        Xs.append(X)
        X = A[:, :, c] @ X + U[:, :, c]
    Y = Wr @ torch.stack(Xs, 2) + Y0  # B,H,nc,L,N
    y = Y.permute(0, 2, 3, 1, 4).reshape(B, Tp, H, N)[:, :T]
    return y, X.transpose(-1, -2)


# --------------------------------------------------------------------------------------
# Training model (official parameter names and shapes)
# --------------------------------------------------------------------------------------


def lora_dims(C):
    """The low-rank sizes suggested in BlinkDL's x070 training code."""
    d = lambda f: max(32, int(round(f * (C ** 0.5) / 32)) * 32)
    return {"w": d(2.5), "a": d(2.5), "v": d(1.7), "g": d(5.0)}


def ortho_(t, scale):
    shape = t.shape
    gain = math.sqrt(shape[0] / shape[1]) if shape[0] > shape[1] else 1.0
    nn.init.orthogonal_(t, gain=gain * scale)
    return t


class TimeMix(nn.Module):
    def __init__(self, C, H, N, layer_id, n_layer, dims):
        super().__init__()
        self.C, self.H, self.N, self.layer_id = C, H, N, layer_id
        r01 = layer_id / max(n_layer - 1, 1)
        r10 = 1.0 - layer_id / n_layer
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        lin = torch.arange(C, dtype=torch.float32) / (C - 1) - 0.5
        zz = ((torch.arange(C) % N).float() - (N - 1) / 2) / ((N - 1) / 2)
        zz = zz * zz.abs()
        www = -6 + 6 * (torch.arange(C, dtype=torch.float32) / (C - 1)) ** (1 + r01 ** 0.3)
        P = lambda t: nn.Parameter(t.clone())
        self.x_r = P(1.0 - ddd ** (0.2 * r10))
        self.x_w = P(1.0 - ddd ** (0.9 * r10))
        self.x_k = P(1.0 - ddd ** (0.7 * r10))
        self.x_v = P(1.0 - ddd ** (0.7 * r10))
        self.x_a = P(1.0 - ddd ** (0.9 * r10))
        self.x_g = P(1.0 - ddd ** (0.2 * r10))
        self.w0 = P((www + 0.5 + zz * 2.5).view(1, 1, C))
        self.w1 = P(torch.zeros(C, dims["w"]))
        self.w2 = P(ortho_(torch.empty(dims["w"], C), 0.1))
        self.a0 = P((-0.19 + zz * 0.3 + lin * 0.4).view(1, 1, C))
        self.a1 = P(torch.zeros(C, dims["a"]))
        self.a2 = P(ortho_(torch.empty(dims["a"], C), 0.1))
        if layer_id > 0:
            self.v0 = P((0.73 - lin * 0.4).view(1, 1, C))
            self.v1 = P(torch.zeros(C, dims["v"]))
            self.v2 = P(ortho_(torch.empty(dims["v"], C), 0.1))
        self.g1 = P(torch.zeros(C, dims["g"]))
        self.g2 = P(ortho_(torch.empty(dims["g"], C), 0.1))
        self.k_k = P((0.71 - lin * 0.1).view(1, 1, C))
        self.k_a = P(torch.full((1, 1, C), 1.02))
        self.r_k = P(torch.full((H, N), -0.04))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GN_EPS)
        with torch.no_grad():
            nn.init.orthogonal_(self.receptance.weight, gain=1.0)
            nn.init.orthogonal_(self.key.weight, gain=0.1)
            nn.init.orthogonal_(self.value.weight, gain=1.0)
            self.output.weight.zero_()
            self.ln_x.weight.fill_(((1 + layer_id) / n_layer) ** 0.7)
            self.ln_x.bias.zero_()

    def forward(self, x, v_first, x_prev, S, chunk, reference=False):
        B, T, C = x.shape
        H, N = self.H, self.N
        xx = torch.cat([x_prev[:, None], x[:, :-1]], 1) - x
        xr, xw, xk = x + xx * self.x_r, x + xx * self.x_w, x + xx * self.x_k
        xv, xa, xg = x + xx * self.x_v, x + xx * self.x_a, x + xx * self.x_g
        r = self.receptance(xr)
        w = torch.tanh(xw @ self.w1) @ self.w2
        k = self.key(xk)
        v = self.value(xv)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        if self.layer_id == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        logw = -DECAY_SCALE * torch.sigmoid(self.w0 + w)  # decay = exp(logw)
        hv = lambda t: t.view(B, T, H, N)
        fn = wkv7_reference if reference else (lambda *z: wkv7_chunked(*z, L=chunk))
        y, S = fn(hv(r), hv(logw), hv(k), hv(v), hv(-kk), hv(kk * a), S)
        y = F.group_norm(y.reshape(B * T, C), H, self.ln_x.weight, self.ln_x.bias, eps=GN_EPS).view(B, T, C)
        y = y + ((hv(r) * hv(k) * self.r_k).sum(-1, keepdim=True) * hv(v)).view(B, T, C)
        return self.output(y * g), v_first, x[:, -1], S


class ChannelMix(nn.Module):
    def __init__(self, C, Fdim, layer_id, n_layer):
        super().__init__()
        r10 = 1.0 - layer_id / n_layer
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        self.x_k = nn.Parameter(1.0 - ddd ** (r10 ** 4))
        self.key = nn.Linear(C, Fdim, bias=False)
        self.value = nn.Linear(Fdim, C, bias=False)
        with torch.no_grad():
            ortho_(self.key.weight, 1.0)
            self.value.weight.zero_()

    def forward(self, x, x_prev):
        xx = torch.cat([x_prev[:, None], x[:, :-1]], 1) - x
        k = torch.relu(self.key(x + xx * self.x_k)) ** 2
        return self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, C, H, N, Fdim, layer_id, n_layer, dims):
        super().__init__()
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix(C, H, N, layer_id, n_layer, dims)
        self.ffn = ChannelMix(C, Fdim, layer_id, n_layer)


class RWKV7(nn.Module):
    def __init__(self, V, C, n_layer, head_size, ffn_mult=4):
        super().__init__()
        assert C % head_size == 0
        self.V, self.C, self.L, self.N, self.H = V, C, n_layer, head_size, C // head_size
        self.Fdim = ffn_mult * C
        self.dims = lora_dims(C)
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(
            [Block(C, self.H, head_size, self.Fdim, i, n_layer, self.dims) for i in range(n_layer)])
        self.ln_out = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
            nn.init.orthogonal_(self.head.weight, gain=0.5 * math.sqrt(V / C) if V > C else 0.5)

    def zero_state(self, B):
        z = []
        for _ in range(self.L):
            z += [torch.zeros(B, self.C), torch.zeros(B, self.H, self.N, self.N), torch.zeros(B, self.C)]
        return z

    def forward(self, idx, state, chunk=16, reference=False):
        """idx (B,T) int64; state: list of 3 per layer; returns logits (B,T,V), new state."""
        x = self.blocks[0].ln0(self.emb(idx))
        v_first = None
        new = []
        for i, blk in enumerate(self.blocks):
            dx, v_first, sx, S = blk.att(blk.ln1(x), v_first, state[3 * i], state[3 * i + 1], chunk, reference)
            x = x + dx
            dx, sf = blk.ffn(blk.ln2(x), state[3 * i + 2])
            x = x + dx
            new += [sx, S, sf]
        return self.head(self.ln_out(x)), new


# --------------------------------------------------------------------------------------
# Inference code path: mirrors RWKV_x070 (rwkv pip package, non-CUDA 'cpu fp32')
# --------------------------------------------------------------------------------------


class Inference:
    """Runs a state dict of official x070 tensors exactly like rwkv.model.RWKV_x070."""

    def __init__(self, sd):
        z = {}
        for k, t in sd.items():
            t = t.float()
            if any(s in k for s in ("key.weight", "value.weight", "receptance.weight", "output.weight", "head.weight")):
                t = t.t().contiguous()
            t = t.squeeze()
            if k.endswith("att.r_k"):
                t = t.flatten()
            z[k] = t
        self.H, self.N = sd["blocks.0.att.r_k"].shape
        self.V, self.C = sd["emb.weight"].shape
        self.L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        z["emb.weight"] = F.layer_norm(z["emb.weight"], (self.C,), weight=z["blocks.0.ln0.weight"],
                                       bias=z["blocks.0.ln0.bias"])
        self.z = z

    def zero_state(self):
        s = []
        for _ in range(self.L):
            s += [torch.zeros(self.C), torch.zeros(self.H, self.N, self.N), torch.zeros(self.C)]
        return s

    @torch.no_grad()
    def forward(self, tokens, state):
        """Sequence mode (per-token state loop, batched projections). Returns logits (T,V)."""
        z, H, N, C = self.z, self.H, self.N, self.C
        x = z["emb.weight"][torch.as_tensor(tokens, dtype=torch.long)]
        T = x.shape[0]
        v_first = None
        for i in range(self.L):
            p = "blocks.%d." % i
            att = p + "att."
            xx_in = F.layer_norm(x, (C,), weight=z[p + "ln1.weight"], bias=z[p + "ln1.bias"])
            xx = torch.cat((state[3 * i].unsqueeze(0), xx_in[:-1, :])) - xx_in
            xi = xx_in
            xr, xw, xk = xi + xx * z[att + "x_r"], xi + xx * z[att + "x_w"], xi + xx * z[att + "x_k"]
            xv, xa, xg = xi + xx * z[att + "x_v"], xi + xx * z[att + "x_a"], xi + xx * z[att + "x_g"]
            r = xr @ z[att + "receptance.weight"]
            w = torch.tanh(xw @ z[att + "w1"]) @ z[att + "w2"]
            k = xk @ z[att + "key.weight"]
            v = xv @ z[att + "value.weight"]
            a = torch.sigmoid(z[att + "a0"] + (xa @ z[att + "a1"]) @ z[att + "a2"])
            g = torch.sigmoid(xg @ z[att + "g1"]) @ z[att + "g2"]
            kk = F.normalize((k * z[att + "k_k"]).view(T, H, N), dim=-1, p=2.0).view(T, H * N)
            k = k * (1 + (a - 1) * z[att + "k_a"])
            if i == 0:
                v_first = v
            else:
                v = v + (v_first - v) * torch.sigmoid(z[att + "v0"] + (xv @ z[att + "v1"]) @ z[att + "v2"])
            w = torch.exp(-DECAY_SCALE * torch.sigmoid(z[att + "w0"] + w))
            S = state[3 * i + 1]
            out = torch.empty(T, H * N)
            for t in range(T):
                vk = v[t].view(H, N, 1) @ k[t].view(H, 1, N)
                ab = (-kk[t]).view(H, N, 1) @ (kk[t] * a[t]).view(H, 1, N)
                S = S * w[t].view(H, 1, N) + S @ ab + vk
                out[t] = (S @ r[t].view(H, N, 1)).view(H * N)
            out = F.group_norm(out.view(T, H * N), num_groups=H, weight=z[att + "ln_x.weight"],
                               bias=z[att + "ln_x.bias"], eps=GN_EPS).view(T, H * N)
            out = out + ((r * k * z[att + "r_k"]).view(T, H, N).sum(dim=-1, keepdim=True) * v.view(T, H, N)).view(T, H * N)
            x = x + (out * g) @ z[att + "output.weight"]
            state[3 * i], state[3 * i + 1] = xx_in[-1, :], S
            ffn = p + "ffn."
            xf = F.layer_norm(x, (C,), weight=z[p + "ln2.weight"], bias=z[p + "ln2.bias"])
            xx = torch.cat((state[3 * i + 2].unsqueeze(0), xf[:-1, :])) - xf
            kf = torch.relu((xf + xx * z[ffn + "x_k"]) @ z[ffn + "key.weight"]) ** 2
            x = x + kf @ z[ffn + "value.weight"]
            state[3 * i + 2] = xf[-1, :]
        x = F.layer_norm(x, (C,), weight=z["ln_out.weight"], bias=z["ln_out.bias"])
        return x @ z["head.weight"], state


def inference_bpb(inf, data):
    """The evaluation protocol of the module docstring. data: bytes. Returns (bpb, n)."""
    tokens = [0] + list(data)
    state = inf.zero_state()
    total, n = 0.0, 0
    for s in range(0, len(data), EVAL_CHUNK):
        inp = tokens[s:s + EVAL_CHUNK]
        tgt = torch.tensor(list(data[s:s + EVAL_CHUNK]), dtype=torch.long)
        logits, state = inf.forward(inp, state)
        lp = torch.log_softmax(logits.double(), -1)
        total += -lp[torch.arange(len(tgt)), tgt].sum().item()
        n += len(tgt)
    return total / n / math.log(2), n


def sample_bytes(inf, prompt, n, temperature, top_p, seed):
    """Feed the prompt bytes from the zero state (no start token), then sample n bytes.

    temperature 0 = greedy (argmax).  Otherwise: p = softmax(logits); keep the
    smallest set of most-probable bytes whose mass reaches top_p (ties at the
    cut-off kept); p = p ** (1/temperature); renormalise; draw with
    numpy.random.default_rng(seed).random() by inverse CDF over byte ids 0..255.
    """
    rng = np.random.default_rng(seed)
    state = inf.zero_state()
    logits, state = inf.forward(list(prompt), state)
    logits = logits[-1]
    out = bytearray()
    for _ in range(n):
        if temperature == 0:
            tok = int(torch.argmax(logits))
        else:
            p = torch.softmax(logits.double(), -1).numpy()
            srt = np.sort(p)[::-1]
            cut = srt[min(np.searchsorted(np.cumsum(srt), top_p), len(srt) - 1)]
            p = np.where(p >= cut, p, 0.0) ** (1.0 / temperature)
            c = np.cumsum(p / p.sum())
            tok = int(min(np.searchsorted(c, rng.random(), side="right"), 255))
        out.append(tok)
        logits, state = inf.forward([tok], state)
        logits = logits[-1]
    return bytes(out)


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def export_state_dict(model, dtype):
    """Official names/shapes; rounded to dtype. Returns (sd_in_dtype, sd_upcast_f32)."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    stored = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    return stored, {k: v.float() for k, v in stored.items()}


def save_safetensors(sd, path):
    from safetensors.torch import save_file
    save_file(sd, path, metadata={"format": "pt"})


# --------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------


def randomize_(model, seed):
    """Perturb every parameter so that all code paths (LoRAs, gates, output) are exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            scale = 0.5 if p.dim() >= 2 and p.shape[0] > 1 else 0.3
            if p.dim() >= 2 and min(p.shape) > 1:
                scale = 1.0 / math.sqrt(p.shape[1])
            p.add_(torch.randn(p.shape, generator=g) * scale)


def self_test(args):
    torch.manual_seed(0)
    ok = True
    # 1. chunked WKV vs per-token reference, forward and backward
    B, T, H, N = 2, 100, 2, 64
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    r, k, v = mk(B, T, H, N), mk(B, T, H, N) * 0.3, mk(B, T, H, N)
    logw = -DECAY_SCALE * torch.sigmoid(mk(B, T, H, N) * 3)
    kk = F.normalize(mk(B, T, H, N), dim=-1)
    alpha = torch.sigmoid(mk(B, T, H, N))
    S0 = mk(B, H, N, N)
    for dt in (torch.float64, torch.float32):
        for L in (16, 32):
            ins = [t.detach().clone().to(dt).requires_grad_() for t in (r, logw, k, v, -kk, kk * alpha, S0)]
            y1, S1 = wkv7_chunked(*ins, L=L)
            (y1.sum() + (S1 * S1).sum() * 0.01).backward()
            g1 = [t.grad.clone() for t in ins]
            ins2 = [t.detach().double().requires_grad_() for t in ins]
            y2, S2 = wkv7_reference(*ins2)
            (y2.sum() + (S2 * S2).sum() * 0.01).backward()
            dy = (y1.double() - y2).abs().max().item()
            dS = (S1.double() - S2).abs().max().item()
            dg = max(((a.double() - b.grad) .abs().max() / (1 + b.grad.abs().max())).item() for a, b in zip(g1, ins2))
            tol = 1e-9 if dt == torch.float64 else 1e-4
            good = dy < tol and dS < tol and dg < tol * 10
            ok &= good
            print("wkv7_chunked L=%d %s vs per-token f64: max|dy|=%.2e max|dS|=%.2e max rel|dgrad|=%.2e |y|max=%.1f %s"
                  % (L, str(dt).split(".")[-1], dy, dS, dg, y2.abs().max().item(), "OK" if good else "FAIL"))
    # 2. whole training forward (chunked, with carried state) vs the inference code path
    m = RWKV7(256, 128, 3, 64)
    randomize_(m, 2)
    m.eval()
    toks = torch.randint(0, 256, (2, 77), generator=g)
    with torch.no_grad():
        st = m.zero_state(2)
        la, st = m(toks[:, :40], st, chunk=16)
        lb, st = m(toks[:, 40:], st, chunk=16)
        lt = torch.cat([la, lb], 1)
        lr_, _ = m(toks, m.zero_state(2), reference=True)
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    inf = Inference(sd)
    d_ref = (lt - lr_).abs().max().item()
    d_inf = 0.0
    d_one = 0.0
    for bi in range(2):
        s = inf.zero_state()
        lseq, s = inf.forward(toks[bi, :50].tolist(), s)
        lseq2, s = inf.forward(toks[bi, 50:].tolist(), s)
        li = torch.cat([lseq, lseq2])
        d_inf = max(d_inf, (lt[bi] - li).abs().max().item())
        s = inf.zero_state()
        one = []
        for tkn in toks[bi, :20].tolist():
            l1, s = inf.forward([tkn], s)
            one.append(l1[0])
        d_one = max(d_one, (torch.stack(one) - li[:20]).abs().max().item())
    scale = lt.abs().max().item()
    good = d_ref < 1e-4 and d_inf < 1e-4 and d_one < 1e-4
    ok &= good
    print("model (C=128, L=3, random weights, |logits|max=%.1f): training-chunked vs training-per-token %.2e, "
          "vs inference seq %.2e; inference one-by-one vs seq %.2e %s" % (scale, d_ref, d_inf, d_one, "OK" if good else "FAIL"))
    # 3. inference mirror vs the official rwkv package (if present)
    try:
        os.environ["RWKV_V7_ON"] = "1"
        os.environ["RWKV_JIT_ON"] = "0"
        os.environ["RWKV_CUDA_ON"] = "0"
        from rwkv.model import RWKV  # noqa
        import tempfile
        with tempfile.TemporaryDirectory() as td:
            torch.save(sd, os.path.join(td, "m.pth"))
            import contextlib
            with contextlib.redirect_stdout(io.StringIO()):
                ref = RWKV(model=os.path.join(td, "m"), strategy="cpu fp32")
            lo, _ = ref.forward(toks[0].tolist(), None, full_output=True)
            d_pkg = (lo.float() - lt[0]).abs().max().item()
        good = d_pkg < 1e-4
        ok &= good
        print("training forward vs rwkv.model.RWKV (RWKV_x070, cpu fp32): max|dlogits|=%.2e %s" % (d_pkg, "OK" if good else "FAIL"))
    except ImportError:
        print("rwkv package not importable: skipped the comparison with rwkv.model.RWKV")
    # 4. data pipeline
    books, digest = load_books(args)
    tr, ho, info = split_books(books)
    print("data: %d books, train %d bytes, held-out %d bytes, deb sha256 %s" % (len(books), len(tr), len(ho), digest))
    print("SELF-TEST", "PASSED" if ok else "FAILED")
    return ok


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def decay_start(args):
    return args.steps - int(round(args.decay_frac * args.steps))


def lr_at(step, args):
    """Warm-up / stable / decay ("WSD"): linear warm-up over --warmup steps, constant --lr,
    then cosine decay to --lr-final over the last --decay-frac of the steps.  Before the
    decay starts the schedule does not depend on --steps, so a run stopped (checkpoint) during
    the stable phase and resumed with another --steps is identical to a fresh run with it."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    d0 = decay_start(args)
    if step < d0:
        return args.lr
    p = (step - d0) / max(1, args.steps - d0)
    return args.lr_final + 0.5 * (args.lr - args.lr_final) * (1 + math.cos(math.pi * min(1.0, p)))


def make_optimizer(model, args):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if (p.dim() >= 2 and n.endswith(".weight")) else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=args.lr, betas=(0.9, 0.99), eps=1e-8)


class Streams:
    """B cursors over the circular training stream, each carrying its RNN state."""

    def __init__(self, data, B, T, reset_prob, seed):
        self.data = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        self.n, self.B, self.T, self.reset_prob = len(self.data), B, T, reset_prob
        self.rng = np.random.default_rng(seed + 1)
        self.pos = np.array([(j * self.n) // B for j in range(B)], dtype=np.int64)
        self.first = True

    def next(self):
        B, T = self.B, self.T
        u = self.rng.random((B, 2))
        reset = np.ones(B, bool) if self.first else (u[:, 0] < self.reset_prob)
        bos = reset & (u[:, 1] < 0.5)
        self.first = False
        inp = np.empty((B, T), np.int64)
        tgt = np.empty((B, T), np.int64)
        for j in range(B):
            p = self.pos[j]
            if reset[j] and not bos[j]:  # start on the raw text: first byte is not predicted
                idx = np.arange(p, p + T + 1) % self.n
                inp[j], tgt[j] = self.data[idx[:-1]], self.data[idx[1:]]
                self.pos[j] = (p + T + 1) % self.n
                continue
            idx = np.arange(p - 1, p + T) % self.n
            inp[j], tgt[j] = self.data[idx[:-1]], self.data[idx[1:]]
            if bos[j]:
                inp[j, 0] = 0
            self.pos[j] = (p + T) % self.n
        return torch.from_numpy(inp), torch.from_numpy(tgt), torch.from_numpy(reset)

    def get_state(self):
        return {"pos": self.pos.copy(), "rng": self.rng.bit_generator.state, "first": self.first}

    def set_state(self, s):
        self.pos, self.first = s["pos"].copy(), s["first"]
        self.rng.bit_generator.state = s["rng"]


def quick_heldout(model, held, args, nbytes=16384):
    """Fast estimate (training forward, chunked) on the first nbytes of the held-out stream."""
    data = held[:nbytes]
    toks = torch.tensor([0] + list(data[:-1]), dtype=torch.long)[None]
    tgt = torch.tensor(list(data), dtype=torch.long)
    with torch.no_grad():
        st = model.zero_state(1)
        tot = 0.0
        for s in range(0, len(data), 2048):
            lg, st = model(toks[:, s:s + 2048], st, chunk=args.chunk)
            tot += F.cross_entropy(lg[0], tgt[s:s + 2048], reduction="sum").item()
    return tot / len(data) / math.log(2)


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def train(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    log = open(os.path.join(args.work_dir, "train.log"), "a")

    def say(*a):
        s = " ".join(str(x) for x in a)
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    books, digest = load_books(args)
    train_data, held, info = split_books(books)
    model = RWKV7(256, args.n_embd, args.n_layer, args.head_size)
    n_params = param_count(model)
    say("params %d (%.2f MB f32), dims %s, train bytes %d, held-out bytes %d" %
        (n_params, n_params * 4 / 1e6, model.dims, len(train_data), len(held)))
    opt = make_optimizer(model, args)
    streams = Streams(train_data, args.batch, args.ctx, args.reset_prob, args.seed)
    state = model.zero_state(args.batch)
    step, elapsed, hist, evals = 0, 0.0, [], []
    ckpt_path = os.path.join(args.work_dir, "ckpt.pt")
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        streams.set_state(ck["streams"])
        state, step, elapsed, hist, evals = ck["state"], ck["step"], ck["elapsed"], ck["hist"], ck["evals"]
        torch.set_rng_state(ck["torch_rng"])
        say("resumed at step %d with --steps %d (decay starts at step %d)" % (step, args.steps, decay_start(args)))
        assert step <= decay_start(args) or ck["args"]["steps"] == args.steps, "cannot change --steps after the decay began"

    def checkpoint():
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "streams": streams.get_state(),
                    "state": state, "step": step, "elapsed": elapsed, "hist": hist, "evals": evals,
                    "torch_rng": torch.get_rng_state(), "args": vars(args)}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)

    t_start = time.time() - elapsed
    stopped_early = False
    model.train()
    while step < args.steps:
        if args.time_limit and time.time() - t_start > args.time_limit:
            say("time limit reached at step %d: stopping early" % step)
            stopped_early = True
            break
        lr = lr_at(step, args)
        for gr in opt.param_groups:
            gr["lr"] = lr
        inp, tgt, reset = streams.next()
        keep = (~reset).float()
        state = [s.detach() * keep.view(-1, *([1] * (s.dim() - 1))) for s in state]
        logits, state = model(inp, state, chunk=args.chunk)
        loss = F.cross_entropy(logits.reshape(-1, 256), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        hist.append(loss.item() / math.log(2))
        elapsed = time.time() - t_start
        if step % args.log_every == 0 or step == 1:
            say("step %d/%d  loss %.4f bpb (avg last %d: %.4f)  lr %.2e  gnorm %.2f  %.1f min  %.0f tok/s" % (
                step, args.steps, hist[-1], min(len(hist), 100), float(np.mean(hist[-100:])), lr, gn.item(),
                elapsed / 60, step * args.batch * args.ctx / max(elapsed, 1e-9)))
        if step % args.eval_every == 0:
            model.eval()
            q = quick_heldout(model, held, args)
            model.train()
            evals.append((step, q))
            say("  quick held-out (first 16 KiB, training forward): %.4f bpb" % q)
        if step % args.ckpt_every == 0:
            checkpoint()
    checkpoint()
    train_time = time.time() - t_start
    say("training done: %d steps in %.1f min" % (step, train_time / 60))
    finish(args, model, books, digest, train_data, held, info, n_params, step, train_time, hist, evals,
           stopped_early, say)


def finish(args, model, books, digest, train_data, held, info, n_params, step, train_time, hist, evals,
           stopped_early, say):
    model.eval()
    dtype = torch.float32 if n_params * 4 <= args.max_bytes - 100_000 else torch.bfloat16
    stored, upcast = export_state_dict(model, dtype)
    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "default.safetensors")
    save_safetensors(stored, st_path)
    size = os.path.getsize(st_path)
    say("wrote %s: %d bytes (%s)" % (st_path, size, str(dtype).split(".")[-1]))
    assert size <= args.max_bytes
    inf = Inference(upcast)
    torch.set_num_threads(1)  # the per-token loop is made of tiny ops: extra threads only spin
    t0 = time.time()
    ho_bpb, ho_n = inference_bpb(inf, held)
    say("held-out bpb (inference protocol, %d bytes): %.4f  [%.0f s]" % (ho_n, ho_bpb, time.time() - t0))
    tr_slice = train_data[-args.train_eval_bytes:]
    tr_bpb, tr_n = inference_bpb(inf, tr_slice)
    say("train-slice bpb (inference protocol, last %d training bytes): %.4f" % (tr_n, tr_bpb))
    samples = []
    for prompt, seed, temp, top_p in [("It is a truth universally acknowledged", 0, 0.0, 1.0),
                                      ("The weather was", 1, 1.0, 0.9),
                                      ("\"My dear Emma,\" said", 2, 0.8, 0.95)]:
        out = sample_bytes(inf, prompt.encode(), args.sample_len, temp, top_p, seed)
        samples.append({"prompt": prompt, "seed": seed, "temperature": temp, "top_p": top_p,
                        "n_bytes": args.sample_len, "output": out.decode("utf-8", errors="replace")})
        say("--- sample (T=%s, top_p=%s, seed=%d) ---\n%s%s" % (temp, top_p, seed, prompt, samples[-1]["output"]))
    meta = {
        "name": "rwkv-cli default model",
        "architecture": "RWKV-7 (x070), byte-level",
        "files": {"weights": "models/default.safetensors", "bytes": size, "sha256": hashlib.sha256(open(st_path, "rb").read()).hexdigest(),
                  "dtype": str(dtype).split(".")[-1]},
        "vocab": {"type": "bytes", "size": 256, "token_id": "byte value", "start_token": 0,
                  "note": "token 0 (NUL) never occurs in the data; it was trained as an optional start token"},
        "model": {"n_embd": model.C, "n_layer": model.L, "head_size": model.N, "n_head": model.H,
                  "dim_ffn": model.Fdim, "lora_dims": {"decay_w": model.dims["w"], "a": model.dims["a"],
                                                         "v": model.dims["v"], "gate_g": model.dims["g"]},
                  "params": n_params, "v0_v1_v2": "layers >= 1 only",
                  "ln_x_eps": GN_EPS, "kk_normalize_eps": 1e-12, "decay": "exp(-0.606531*sigmoid(w0 + tanh(x@w1)@w2))"},
        "data": {"source": "Debian package %s %s (CRAN package janeaustenr 1.0.0 by Julia Silge)" % (DEB_NAME, DEB_VERSION),
                 "deb_sha256": digest,
                 "texts": "Jane Austen's six completed novels (Project Gutenberg transcriptions)",
                 "licence": "novels: public domain (Austen died 1817); package code/packaging: MIT",
                 "decoding": "R lazy-load data/Rdata.rdb; each book a character vector of lines joined with '\\n'",
                 "book_order": [b for b, _ in books],
                 "split": "per book: held-out = the tail starting at the first non-newline byte after the first "
                          "'\\n\\n' at or after byte floor(0.95*len(book)); train = the rest",
                 "separator": "books joined with 5 newlines ('\\n'*5), both streams",
                 "books": info, "train_bytes": len(train_data), "heldout_bytes": len(held),
                 "heldout_sha256": hashlib.sha256(held).hexdigest(),
                 "export_heldout": "python3 scripts/train_default_model.py --export-heldout FILE"},
        "training": {"seed": args.seed, "steps": step, "planned_steps": args.steps, "stopped_early": stopped_early,
                     "batch_streams": args.batch, "ctx_len": args.ctx, "tokens_seen": step * args.batch * args.ctx,
                     "epochs": step * args.batch * args.ctx / len(train_data),
                     "optimizer": "AdamW betas (0.9, 0.99) eps 1e-8; weight decay %g on 2-D .weight tensors" % args.wd,
                     "lr": {"peak": args.lr, "final": args.lr_final, "warmup_steps": args.warmup,
                            "decay_start_step": decay_start(args),
                            "schedule": "WSD: linear warm-up, constant, cosine decay to final over the last "
                                        "%g of the steps" % args.decay_frac},
                     "grad_clip": args.clip, "reset_prob": args.reset_prob,
                     "state": "truncated BPTT: state carried across consecutive windows of each stream",
                     "wkv_chunk": args.chunk, "threads": args.threads, "torch": torch.__version__,
                     "wall_time_s": round(train_time, 1),
                     "final_train_loss_bpb_avg_last_100_steps": round(float(np.mean(hist[-100:])), 4),
                     "quick_heldout_curve": [[s, round(q, 4)] for s, q in evals]},
        "evaluation": {
            "protocol": "Load default.safetensors, upcast to f32. Zero state. Feed token 0, then the evaluated "
                        "bytes in order (in chunks of %d tokens with the state carried; the token fed at "
                        "position i is 0 for i=0 and byte i-1 otherwise). bpb = mean over all evaluated bytes b_i "
                        "of -log2(softmax(logits after feeding position i)[b_i])." % EVAL_CHUNK,
            "heldout_bpb": round(ho_bpb, 4), "heldout_bytes": ho_n,
            "train_slice": "last %d bytes of the training stream" % tr_n,
            "train_slice_bpb": round(tr_bpb, 4),
            "heldout_bpb_exact": ho_bpb, "train_slice_bpb_exact": tr_bpb},
        "samples": {"procedure": "prompt bytes fed from the zero state without a start token; then sampling as in "
                                 "sample_bytes() of the script (greedy when temperature is 0)",
                    "list": samples},
    }
    with open(os.path.join(args.out_dir, "default.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    say("wrote %s" % os.path.join(args.out_dir, "default.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-test", action="store_true", help="check the chunked WKV and the forward, then exit")
    ap.add_argument("--export-heldout", metavar="FILE", help="write the held-out evaluation bytes and exit")
    ap.add_argument("--finish-from-ckpt", action="store_true", help="skip training; export from work-dir/ckpt.pt")
    ap.add_argument("--deb", help="path of %s_%s_all.deb (else apt-get download)" % (DEB_NAME, DEB_VERSION))
    ap.add_argument("--work-dir", default="/tmp/rwkv-default-train")
    ap.add_argument("--out-dir", default="models")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-embd", type=int, default=192)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--head-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=32, help="WKV chunk length")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--decay-frac", type=float, default=0.35, help="fraction of the steps spent in the final decay")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--reset-prob", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--ckpt-every", type=int, default=25)
    ap.add_argument("--time-limit", type=float, default=0, help="seconds; stop early (non-deterministic) if hit")
    ap.add_argument("--max-bytes", type=int, default=16_000_000)
    ap.add_argument("--sample-len", type=int, default=300)
    ap.add_argument("--train-eval-bytes", type=int, default=65536, help="size of the train slice evaluated at the end")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--bench", type=int, default=0, help="time this many training steps and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.self_test:
        sys.exit(0 if self_test(args) else 1)
    if args.export_heldout:
        books, _ = load_books(args)
        _, held, _ = split_books(books)
        open(args.export_heldout, "wb").write(held)
        print("wrote %d bytes, sha256 %s" % (len(held), hashlib.sha256(held).hexdigest()))
        return
    if args.bench:
        model = RWKV7(256, args.n_embd, args.n_layer, args.head_size)
        opt = make_optimizer(model, args)
        st = model.zero_state(args.batch)
        x = torch.randint(1, 256, (args.batch, args.ctx))
        for i in range(args.bench + 1):
            if i == 1:
                t0 = time.time()
            lg, st = model(x, [s.detach() for s in st], chunk=args.chunk)
            loss = F.cross_entropy(lg.reshape(-1, 256), x.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = (time.time() - t0) / args.bench
        print("C=%d L=%d B=%d T=%d chunk=%d params=%d: %.3f s/step, %.0f tok/s" % (
            args.n_embd, args.n_layer, args.batch, args.ctx, args.chunk, param_count(model), dt,
            args.batch * args.ctx / dt))
        return
    if args.finish_from_ckpt:
        torch.set_num_threads(args.threads)
        books, digest = load_books(args)
        train_data, held, info = split_books(books)
        ck = torch.load(os.path.join(args.work_dir, "ckpt.pt"), weights_only=False)
        for k, v in ck["args"].items():
            if k not in ("out_dir", "work_dir", "deb", "finish_from_ckpt", "threads"):
                setattr(args, k, v)
        model = RWKV7(256, args.n_embd, args.n_layer, args.head_size)
        model.load_state_dict(ck["model"])
        log = open(os.path.join(args.work_dir, "train.log"), "a")

        def say(*a):
            s = " ".join(str(x) for x in a)
            print(s, flush=True)
            log.write(s + "\n")
            log.flush()
        finish(args, model, books, digest, train_data, held, info, param_count(model), ck["step"], ck["elapsed"],
               ck["hist"], ck["evals"], ck["step"] < args.steps, say)
        return
    train(args)


if __name__ == "__main__":
    main()
