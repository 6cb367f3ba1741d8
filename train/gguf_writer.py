"""A small GGUF v3 writer: header, typed key/values (arrays included), tensor infos,
aligned tensor data. Only what the export needs: F32 and F16 tensors.

Layout (little-endian): magic "GGUF", u32 version 3, u64 n_tensors, u64 n_kv; each kv is
a string key, a u32 value type and the value; each tensor info is a string name, u32
n_dims, u64 dims (innermost first), u32 ggml type, u64 offset from the start of the data
section; padding to general.alignment; the tensor data, each tensor padded likewise.
Strings are a u64 byte length and the UTF-8 bytes (no terminator).
"""
import struct

import numpy as np

# value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = range(10)
UINT64, INT64, FLOAT64 = 10, 11, 12
# ggml tensor types
GGML_F32, GGML_F16 = 0, 1

_SCALAR = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
           FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
_NP = {UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
       FLOAT32: "<f4", BOOL: "<u1", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8"}


def _str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


class GGUFWriter:
    def __init__(self, alignment=32):
        self.alignment = alignment
        self.kv = []        # (key, type, encoded value bytes)
        self.tensors = []   # (name, dims innermost-first, ggml type, bytes)
        self.add_u32("general.alignment", alignment)

    # ---- key/values ---------------------------------------------------------------------
    def _add(self, key, vtype, payload):
        if any(k == key for k, _, _ in self.kv):
            raise ValueError(f"duplicate key {key}")
        self.kv.append((key, vtype, payload))

    def add_scalar(self, key, vtype, value):
        self._add(key, vtype, struct.pack(_SCALAR[vtype], value))

    def add_u32(self, key, v):
        self.add_scalar(key, UINT32, v)

    def add_i32(self, key, v):
        self.add_scalar(key, INT32, v)

    def add_f32(self, key, v):
        self.add_scalar(key, FLOAT32, v)

    def add_bool(self, key, v):
        self.add_scalar(key, BOOL, bool(v))

    def add_string(self, key, v):
        self._add(key, STRING, _str(v))

    def add_array(self, key, etype, values):
        head = struct.pack("<IQ", etype, len(values))
        if etype == STRING:
            body = b"".join(_str(v) for v in values)
        elif etype == ARRAY:
            raise ValueError("nested arrays are not supported")
        else:
            body = np.asarray(values).astype(_NP[etype]).tobytes()
        self._add(key, ARRAY, head + body)

    # ---- tensors ------------------------------------------------------------------------
    def add_tensor(self, name, array, ggml_type=GGML_F32):
        """array: numpy, C order, shape as torch has it ([out, in] for a Linear weight);
        GGUF dims are written innermost first (reversed), with the same bytes."""
        if any(n == name for n, _, _, _ in self.tensors):
            raise ValueError(f"duplicate tensor {name}")
        a = np.ascontiguousarray(array)
        if ggml_type == GGML_F32:
            raw = a.astype("<f4").tobytes()
        elif ggml_type == GGML_F16:
            raw = a.astype("<f2").tobytes()
        else:
            raise ValueError(f"unsupported ggml type {ggml_type}")
        dims = [int(d) for d in reversed(a.shape)] or [1]
        self.tensors.append((name, dims, ggml_type, raw))

    # ---- output -------------------------------------------------------------------------
    def _pad(self, n):
        return (-n) % self.alignment

    def write(self, path):
        out = bytearray()
        out += b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for key, vtype, payload in self.kv:
            out += _str(key) + struct.pack("<I", vtype) + payload
        offset = 0
        for name, dims, gtype, raw in self.tensors:
            out += _str(name) + struct.pack("<I", len(dims))
            out += struct.pack(f"<{len(dims)}Q", *dims)
            out += struct.pack("<IQ", gtype, offset)
            offset += len(raw) + self._pad(len(raw))
        out += b"\0" * self._pad(len(out))
        for _name, _dims, _gtype, raw in self.tensors:
            out += raw + b"\0" * self._pad(len(raw))
        with open(path, "wb") as f:
            f.write(out)
        return len(out)


def read_gguf(path):
    """A minimal independent reader (for tests): (kv dict, {name: (dims, type, ndarray)})."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v if len(v) > 1 else v[0]

    def rstr():
        nonlocal pos
        n = take("<Q")
        s = buf[pos : pos + n].decode("utf-8")
        pos += n
        return s

    def rval(t):
        if t == STRING:
            return rstr()
        if t == ARRAY:
            et, n = take("<I"), take("<Q")
            return [rval(et) for _ in range(n)]
        return take(_SCALAR[t])

    assert buf[:4] == b"GGUF", "bad magic"
    pos = 4
    version, n_t, n_kv = take("<I"), take("<Q"), take("<Q")
    assert version == 3
    kv = {}
    for _ in range(n_kv):
        k = rstr()
        kv[k] = rval(take("<I"))
    infos = []
    for _ in range(n_t):
        name = rstr()
        nd = take("<I")
        dims = [take("<Q") for _ in range(nd)]
        infos.append((name, dims, take("<I"), take("<Q")))
    align = kv.get("general.alignment", 32)
    data_start = pos + (-pos) % align
    tensors = {}
    for name, dims, t, off in infos:
        dt = "<f4" if t == GGML_F32 else "<f2"
        n = int(np.prod(dims))
        a = np.frombuffer(buf, dtype=dt, count=n, offset=data_start + off)
        tensors[name] = (dims, t, a.reshape(list(reversed(dims))).astype(np.float32))
    return kv, tensors
