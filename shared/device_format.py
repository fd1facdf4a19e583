"""What the training side hands a device, in numpy terms: the contract between `seqrec` (torch
models, ONNX export) and `device` (the torch-free runtime), which never import each other.

- The surprise columns a step reports for each click, and the drift window.
- The names of the ONNX graphs' inputs, outputs and metadata keys.
- A model's carried state as bytes. TTT4Rec's (format TTS2): a header, then fp32 tensors and
  int32 `pos`, little-endian; `seqrec.models.ttt4rec.TTT4RecState` writes it from torch
  tensors. Any other stateful model's (format STN1): named tensors, each with its dtype and
  shape (GRU4Rec: `hidden`, `feature`, `recent`). Every state has a `feature` tensor, the user
  feature `F_s` after the last click. A device reads either with `decode_any_state`.

Letters used in shape comments:
    B  users    N  TTT layers    H  heads    F  head width    D  hidden width    R  recent clicks
"""

from __future__ import annotations

import struct

import numpy as np

# ---------------------------------------------------------------- surprise

SURPRISE_COLUMNS: tuple[str, ...] = ("logit", "nll", "catalogue_rank", "drift", "inner_loss")
DRIFT_WINDOW = 4  # last clicks whose mean F_t a click's drift is measured from

# ---------------------------------------------------------------- the ONNX graphs

ITEMS_INPUT = "items"  # step graph: [B] the clicks
FEATURES_INPUT = "features"  # scorer graph: [B, D] F_s
CANDIDATES_INPUT = "candidates"  # scorer and step graphs: [B, C] item ids
SCORES_OUTPUT = "scores"  # scorer and step graphs: [B, C] logits
SURPRISE_OUTPUT = "surprise"  # step graph: [B, 5] in SURPRISE_COLUMNS order
INIT_STATE_KEY = "lsc4rec.init_state"  # step graph metadata: base64 of a one-user state
CONFIG_KEY = "lsc4rec.config"  # step graph metadata: the model config as JSON
# step graph metadata: "1" if the surprise scores the whole catalogue (surprisal, rank share),
# "0" if those columns are NaN
CATALOGUE_SURPRISE_KEY = "lsc4rec.catalogue_surprise"
CATALOGUE_COLUMNS = ("nll", "catalogue_rank")  # the columns that need the catalogue product

# ---------------------------------------------------------------- the carried state

STATE_NAMES: tuple[str, ...] = (
    "weight",  # [B, N, H, F, F] fast weights W at the last mini-batch boundary
    "bias",  # [B, N, H, F]
    "grad_weight",  # [B, N, H, F, F] running gradient sums of the partly filled mini-batch
    "grad_bias",  # [B, N, H, F]
    "pos",  # [B] int64 clicks already in the current mini-batch
    "feature",  # [B, D] F_s after the last click
    "recent",  # [B, R, D] F_t of the last R clicks
)
STATE_MAGIC = b"TTS2"  # TTS2 added the recent target features (drift)
FEATURE_STATE = "feature"  # the state tensor every model carries: [B, D] F_s after the last click
STATE_HEADER = struct.Struct("<4s6i")  # magic, B, N, H, F, D, R


def state_output_names(names: tuple[str, ...] | list[str] = STATE_NAMES) -> tuple[str, ...]:
    """Output names of a step graph: `<state tensor>_out` for its state tensors `names`
    (TTT4Rec's `STATE_NAMES` by default)."""
    return tuple(f"{name}_out" for name in names)


def state_dtype(name: str) -> type:
    """The in-memory dtype of a state tensor (`pos` is int64, the rest float32)."""
    return np.int64 if name == "pos" else np.float32


def state_shapes(
    batch: int, layers: int, heads: int, head_dim: int, width: int, recent: int
) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in serialisation order (floats first, then `pos`)."""
    return {
        "weight": (batch, layers, heads, head_dim, head_dim),
        "bias": (batch, layers, heads, head_dim),
        "grad_weight": (batch, layers, heads, head_dim, head_dim),
        "grad_bias": (batch, layers, heads, head_dim),
        "feature": (batch, width),
        "recent": (batch, recent, width),
        "pos": (batch,),
    }


def encode_state(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise state arrays (keyed by `STATE_NAMES`) in the TTS2 format."""
    batch, layers, heads, head_dim, _ = arrays["weight"].shape
    width, recent = arrays["feature"].shape[-1], arrays["recent"].shape[1]
    header = STATE_HEADER.pack(STATE_MAGIC, batch, layers, heads, head_dim, width, recent)
    shapes = state_shapes(batch, layers, heads, head_dim, width, recent)
    body = [
        np.ascontiguousarray(arrays[name], dtype="<i4" if name == "pos" else "<f4").tobytes()
        for name in shapes
    ]
    return header + b"".join(body)


def decode_state(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of `encode_state`: arrays keyed by `STATE_NAMES` (float32, `pos` int64).

    Raises:
        ValueError: `data` is not a serialised state, or has the wrong length.
    """
    if len(data) < STATE_HEADER.size:
        raise ValueError(f"state bytes too short: {len(data)} bytes")
    magic = data[:4]
    if magic != STATE_MAGIC:
        raise ValueError(f"not a TTT4Rec state (or an older format): magic {magic!r}")
    _, batch, layers, heads, head_dim, width, recent = STATE_HEADER.unpack_from(data)
    shapes = state_shapes(batch, layers, heads, head_dim, width, recent)
    expected = STATE_HEADER.size + 4 * sum(int(np.prod(s)) for s in shapes.values())
    if len(data) != expected:
        raise ValueError(f"state bytes have length {len(data)}, expected {expected}")
    offset, out = STATE_HEADER.size, {}
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        stored = np.frombuffer(data, "<i4" if name == "pos" else "<f4", count, offset)
        out[name] = stored.reshape(shape).astype(state_dtype(name))
        offset += 4 * count
    return {name: out[name] for name in STATE_NAMES}


# ---------------------------------------------------------------- any model's state (STN1)

NAMED_MAGIC = b"STN1"
_NAMED_HEADER = struct.Struct("<4sI")  # magic, tensor count
_TENSOR_HEADER = struct.Struct("<HBB")  # name length, dtype code, rank
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<i8")}  # stored dtype by code
_CODES = {np.dtype(np.float32): 0, np.dtype(np.int64): 1}


def encode_named_state(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise state arrays (float32 or int64, any shapes, in the dict's order) as STN1.

    Raises:
        ValueError: an array of another dtype.
    """
    parts = [_NAMED_HEADER.pack(NAMED_MAGIC, len(arrays))]
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype not in _CODES:
            raise ValueError(f"state tensor {name!r} is {array.dtype}, not float32 or int64")
        code = _CODES[array.dtype]
        encoded = name.encode("utf-8")
        parts.append(_TENSOR_HEADER.pack(len(encoded), code, array.ndim) + encoded)
        parts.append(struct.pack(f"<{array.ndim}I", *array.shape))
        parts.append(np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes())
    return b"".join(parts)


def decode_named_state(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of `encode_named_state`: the arrays in their stored order.

    Raises:
        ValueError: `data` is not an STN1 state, or is cut short or too long.
    """
    if data[:4] != NAMED_MAGIC or len(data) < _NAMED_HEADER.size:
        raise ValueError(f"not a named state: magic {data[:4]!r}")
    (_, count), offset, out = _NAMED_HEADER.unpack_from(data), _NAMED_HEADER.size, {}
    try:
        for _ in range(count):
            length, code, rank = _TENSOR_HEADER.unpack_from(data, offset)
            offset += _TENSOR_HEADER.size
            name = data[offset : offset + length].decode("utf-8")
            offset += length
            shape = struct.unpack_from(f"<{rank}I", data, offset)
            offset += 4 * rank
            dtype = _DTYPES[code]
            size = int(np.prod(shape)) * dtype.itemsize
            if offset + size > len(data):
                raise ValueError("cut short")
            stored = np.frombuffer(data, dtype, int(np.prod(shape)), offset)
            out[name] = stored.reshape(shape).astype(dtype.newbyteorder("="))
            offset += size
    except (struct.error, KeyError, UnicodeDecodeError) as err:
        raise ValueError(f"named state bytes are corrupt ({type(err).__name__})") from None
    if offset != len(data):
        raise ValueError(f"named state bytes have length {len(data)}, expected {offset}")
    return out


def decode_any_state(data: bytes) -> dict[str, np.ndarray]:
    """A stored state of any model, by its magic: TTS2 (TTT4Rec) or STN1 (named tensors).

    Raises:
        ValueError: neither format, or corrupt bytes.
    """
    if data[:4] == NAMED_MAGIC:
        return decode_named_state(data)
    return decode_state(data)
