#!/usr/bin/env python3
"""Rewrites a safetensors checkpoint as a PyTorch `.pth` archive in the layout of the files
BlinkDL publishes (a stored zip: `archive/data.pkl`, a protocol-2 pickle of the state dict whose
tensors name their storages by persistent id, and one `archive/data/N` entry per storage;
unlike torch.save, storages are not padded to 64-byte offsets), without torch.
For benchmarks of the official format's load path (`bench_scale.sh` with MODEL_1_5B=x.pth):

    python3 scripts/safetensors_to_pth.py IN.safetensors OUT.pth

rwkv-cli reads the result as it reads `torch.save` files (same tensors, same values); torch
itself is not needed here, and the file is not meant for torch.
"""
import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile


src, dst = sys.argv[1], sys.argv[2]
f = open(src, 'rb')
n = struct.unpack('<Q', f.read(8))[0]
hdr = json.loads(f.read(n))
base = 8 + n
hdr.pop('__metadata__', None)

torch = types.ModuleType('torch'); sys.modules['torch'] = torch
utils = types.ModuleType('torch._utils'); sys.modules['torch._utils'] = utils
def _rebuild_tensor_v2(*a): pass
_rebuild_tensor_v2.__module__ = 'torch._utils'; _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
class BFloat16Storage: pass
class FloatStorage: pass
class HalfStorage: pass
for c in (BFloat16Storage, FloatStorage, HalfStorage):
    c.__module__ = 'torch'; setattr(torch, c.__name__, c)
stype = {'BF16': (BFloat16Storage, 2), 'F32': (FloatStorage, 4), 'F16': (HalfStorage, 2)}

class Storage:
    def __init__(s, key, cls, numel): s.key, s.cls, s.numel = key, cls, numel
class T:
    def __init__(s, storage, shape): s.storage, s.shape = storage, shape
    def __reduce__(s):
        stride, acc = [], 1
        for d in reversed(s.shape):
            stride.insert(0, acc); acc *= d
        return (_rebuild_tensor_v2, (s.storage, 0, tuple(s.shape), tuple(stride), False, collections.OrderedDict()))

class P(pickle.Pickler):
    def persistent_id(self, o):
        if isinstance(o, Storage):
            return ('storage', o.cls, o.key, 'cpu', o.numel)
        return None

d = collections.OrderedDict()
items = sorted(hdr.items(), key=lambda kv: kv[1]['data_offsets'][0])
for i, (name, m) in enumerate(items):
    cls, es = stype[m['dtype']]
    a, b = m['data_offsets']
    d[name] = T(Storage(str(i), cls, (b - a) // es), m['shape'])
buf = io.BytesIO(); P(buf, protocol=2).dump(d)
z = zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED, allowZip64=True)
z.writestr('archive/data.pkl', buf.getvalue())
z.writestr('archive/byteorder', 'little')
for i, (name, m) in enumerate(items):
    a, b = m['data_offsets']
    f.seek(base + a)
    with z.open(zipfile.ZipInfo(f'archive/data/{i}'), 'w', force_zip64=True) as w:
        left = b - a
        while left:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                sys.exit(f"{src} ends inside tensor {name}")
            w.write(chunk); left -= len(chunk)
z.writestr('archive/version', '3\n')
z.close()
