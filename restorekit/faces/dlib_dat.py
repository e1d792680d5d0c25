"""A reader (and a small writer) for dlib's binary serialization of DNN networks.

dlib's ``serialize(net, out)`` writes a network as a recursive stream of dlib's primitive
encodings; the layout is documented in ``docs/dlib-dat-format.md``. In short:

* integers: one control byte (bit 7: negative, bits 0-3: number of following bytes; bits 4-6
  are zero) then the magnitude, little endian, in that many bytes (zero is ``01 00``);
* floats: ``float_details`` = integer mantissa then integer exponent, value ``m·2^e``
  (exponents 32000/32001/32002 mean +inf/-inf/NaN);
* strings: integer length then the bytes; bools: the ASCII bytes ``'1'``/``'0'``;
* tensors (``resizable_tensor``, version 2): ``n, k, nr, nc`` then ``n·k·nr·nc`` raw
  little-endian IEEE float32 values; alias tensors (version 1): just ``n, k, nr, nc``;
* networks: ``add_loss_layer`` (version 1, loss details, subnet), then nested ``add_layer``
  (version 2) / ``add_tag_layer`` / ``add_skip_layer`` (version 1, no name) headers from the top
  down, the input layer at the bottom, then each layer's details and state from the bottom up.

The reader is pure Python + numpy (no dlib needed) and checks every field it reads; a file it
cannot follow raises :class:`DlibFormatError` naming the byte offset.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RestorekitError

__all__ = [
    "DlibFormatError", "DlibStream", "LayerDetails", "Wrapper", "DlibNetwork", "read_network",
    "encode_int", "encode_float", "encode_string", "encode_bool", "encode_tensor",
    "encode_alias_tensor",
]

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002


class DlibFormatError(RestorekitError):
    """A dlib ``.dat`` stream does not have the layout this reader expects."""


class DlibStream:
    """Sequential decoder of dlib's primitive encodings over an in-memory byte buffer."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = memoryview(data)
        self.pos = pos

    def tell(self) -> int:
        return self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def _fail(self, what: str, at: int | None = None) -> DlibFormatError:
        return DlibFormatError(f"dlib stream: {what} at byte offset {self.pos if at is None else at}")

    def read_bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self._fail(f"unexpected end of data reading {n} bytes")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def read_int(self) -> int:
        """A signed or unsigned integer in dlib's control-byte encoding."""
        at = self.pos
        ctrl = self.read_bytes(1)[0]
        if ctrl & 0x70:
            raise self._fail(f"bad integer control byte 0x{ctrl:02x}", at)
        size = ctrl & 0x0F
        if size > 8:
            raise self._fail(f"integer of {size} bytes", at)
        value = int.from_bytes(self.read_bytes(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def read_uint(self) -> int:
        at = self.pos
        v = self.read_int()
        if v < 0:
            raise self._fail(f"negative value {v} where an unsigned integer was expected", at)
        return v

    def read_float(self) -> float:
        """A ``float_details`` value (mantissa, exponent) as a Python float; ±inf and NaN where
        dlib's codes for them say so, a :class:`DlibFormatError` where it is beyond a double."""
        at = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self._fail("old ASCII float encoding (not supported)", at)
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        if not -32768 <= exponent < _FLOAT_INF:
            raise self._fail(f"float exponent {exponent} out of range", at)
        try:  # (a double ends below 2^1024: dlib writes no finite value beyond it)
            return math.ldexp(float(mantissa), exponent)
        except OverflowError:
            raise self._fail(f"float {mantissa}·2^{exponent} beyond a double's range", at) from None

    def read_string(self) -> str:
        n = self.read_uint()
        if n > 1 << 20:
            raise self._fail(f"implausible string length {n}")
        return self.read_bytes(n).decode("latin-1")

    def peek_string(self) -> str | None:
        """The string at the current position if one plausibly starts here; position unchanged."""
        pos = self.pos
        try:
            s = self.read_string()
        except DlibFormatError:
            s = None
        self.pos = pos
        return s

    def read_bool(self) -> bool:
        at = self.pos
        b = self.read_bytes(1)
        if b not in (b"0", b"1"):
            raise self._fail(f"bad bool byte {b!r}", at)
        return b == b"1"

    def read_tensor(self) -> np.ndarray:
        """A ``resizable_tensor`` (version 2) as float32 ``n×k×nr×nc``."""
        at = self.pos
        version = self.read_int()
        if version != 2:
            raise self._fail(f"resizable_tensor version {version} (only version 2 is supported)", at)
        n, k, nr, nc = (self.read_int() for _ in range(4))
        if min(n, k, nr, nc) < 0:
            raise self._fail(f"negative tensor dimensions {(n, k, nr, nc)}", at)
        count = n * k * nr * nc
        raw = self.read_bytes(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(n, k, nr, nc)

    def read_alias_tensor(self) -> tuple[int, int, int, int]:
        """An ``alias_tensor`` (version 1): its shape ``(n, k, nr, nc)`` only."""
        at = self.pos
        version = self.read_int()
        if version != 1:
            raise self._fail(f"alias_tensor version {version} (expected 1)", at)
        n, k, nr, nc = (self.read_int() for _ in range(4))
        return (n, k, nr, nc)


# ---------------------------------------------------------------------------------------------
# Writers (used by tests to build synthetic streams; they follow the same rules)


def encode_int(value: int) -> bytes:
    """dlib's integer encoding (shortest little-endian magnitude; zero takes one byte)."""
    mag = abs(int(value))
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    if len(body) > 8:
        raise ValueError(f"{value} does not fit in 64 bits")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def encode_float(value: float, digits: int = 53) -> bytes:
    """dlib's ``float_details`` encoding; ``digits`` is 24 for float, 53 for double."""
    if math.isnan(value):
        return encode_int(0) + encode_int(_FLOAT_NAN)
    if math.isinf(value):
        return encode_int(0) + encode_int(_FLOAT_INF if value > 0 else _FLOAT_NINF)
    frac, exp = math.frexp(value)
    mantissa = int(frac * (1 << digits))
    exponent = exp - digits
    for _ in range(8):  # dlib drops low zero bytes of the mantissa
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return encode_int(mantissa) + encode_int(exponent)


def encode_string(text: str) -> bytes:
    raw = text.encode("latin-1")
    return encode_int(len(raw)) + raw


def encode_bool(value: bool) -> bytes:
    return b"1" if value else b"0"


def encode_tensor(array: np.ndarray) -> bytes:
    """A ``resizable_tensor`` (version 2); ``array`` is reshaped to 4-D ``n×k×nr×nc``."""
    a = np.asarray(array, dtype="<f4")
    shape = tuple(a.shape) + (1,) * (4 - a.ndim)
    if len(shape) != 4:
        raise ValueError("tensors have at most 4 dimensions")
    return encode_int(2) + b"".join(encode_int(s) for s in shape) + a.tobytes()


def encode_alias_tensor(shape: tuple[int, int, int, int]) -> bytes:
    return encode_int(1) + b"".join(encode_int(s) for s in shape)


# ---------------------------------------------------------------------------------------------
# Networks


@dataclass
class LayerDetails:
    """One layer's serialized details: dlib's version string, fields and parameter tensor."""

    name: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    params: np.ndarray | None = None
    offset: int = 0


@dataclass(frozen=True)
class Wrapper:
    """An ``add_tag_layer`` or ``add_skip_layer``: in the stream only a version number (1).

    Which of the two it is, and its tag id, are template arguments that dlib does not write;
    the network definition supplies them.
    """

    offset: int


@dataclass
class DlibNetwork:
    """A parsed network: loss, input layer, and the layers from the bottom (input side) up."""

    loss: LayerDetails
    input: LayerDetails
    layers: list[LayerDetails | Wrapper]

    def kinds(self) -> list[str]:
        return ["wrapper" if isinstance(e, Wrapper) else e.kind for e in self.layers]


def _lr_multipliers(s: DlibStream, names: tuple[str, ...]) -> dict[str, float]:
    return {n: s.read_float() for n in names}


_MULTS = ("learning_rate_multiplier", "weight_decay_multiplier",
          "bias_learning_rate_multiplier", "bias_weight_decay_multiplier")


def _read_details(s: DlibStream) -> LayerDetails:
    """One layer's details, dispatched on the version string dlib writes first."""
    at = s.tell()
    name = s.read_string()
    d = LayerDetails(name=name, kind="", offset=at)
    if name == "con_4":
        d.kind = "con"
        d.params = s.read_tensor()
        f = d.fields
        f["num_filters"] = s.read_int()
        f["nr"], f["nc"] = s.read_int(), s.read_int()
        f["stride_y"], f["stride_x"] = s.read_int(), s.read_int()
        f["padding_y"], f["padding_x"] = s.read_int(), s.read_int()
        f["filters"] = s.read_alias_tensor()
        f["biases"] = s.read_alias_tensor()
        f.update(_lr_multipliers(s, _MULTS))
    elif name == "fc_2":
        d.kind = "fc"
        f = d.fields
        f["num_outputs"], f["num_inputs"] = s.read_uint(), s.read_uint()
        d.params = s.read_tensor()
        f["weights"] = s.read_alias_tensor()
        f["biases"] = s.read_alias_tensor()
        f["bias_mode"] = s.read_int()  # 0: has bias, 1: no bias
        f.update(_lr_multipliers(s, _MULTS))
    elif name == "affine_":
        d.kind = "affine"
        d.params = s.read_tensor()
        d.fields["gamma"] = s.read_alias_tensor()
        d.fields["beta"] = s.read_alias_tensor()
        d.fields["mode"] = s.read_int()  # 0: conv (per channel), 1: fc (per element)
    elif name in ("max_pool_2", "avg_pool_2"):
        d.kind = name[:-2]
        f = d.fields
        f["nr"], f["nc"] = s.read_int(), s.read_int()
        f["stride_y"], f["stride_x"] = s.read_int(), s.read_int()
        f["padding_y"], f["padding_x"] = s.read_int(), s.read_int()
    elif name == "relu_":
        d.kind = "relu"
    elif name == "add_prev_":
        d.kind = "add_prev"
    else:
        raise DlibFormatError(f"dlib stream: unsupported layer type '{name}' at byte offset {at}")
    return d


def _read_input(s: DlibStream) -> LayerDetails:
    at = s.tell()
    name = s.read_string()
    d = LayerDetails(name=name, kind="input", offset=at)
    if name in ("input_rgb_image_sized", "input_rgb_image"):
        d.fields["avg_red"] = s.read_float()
        d.fields["avg_green"] = s.read_float()
        d.fields["avg_blue"] = s.read_float()
        if name == "input_rgb_image_sized":
            d.fields["nr"], d.fields["nc"] = s.read_uint(), s.read_uint()
    else:
        raise DlibFormatError(f"dlib stream: unsupported input layer '{name}' at byte offset {at}")
    return d


def _read_loss(s: DlibStream) -> LayerDetails:
    at = s.tell()
    name = s.read_string()
    d = LayerDetails(name=name, kind="loss", offset=at)
    if name == "loss_metric_2":
        d.fields["margin"] = s.read_float()
        d.fields["distance_threshold"] = s.read_float()
    elif name == "loss_metric_":
        pass
    else:
        raise DlibFormatError(f"dlib stream: unsupported loss layer '{name}' at byte offset {at}")
    return d


def _read_layer_state(s: DlibStream, version: int, bottom: bool) -> dict[str, Any]:
    """What ``add_layer`` writes after its details: flags and cached tensors (ignored here)."""
    state: dict[str, Any] = {
        "this_layer_setup_called": s.read_bool(),
        "gradient_input_is_stale": s.read_bool(),
        "get_output_and_gradient_input_disabled": s.read_bool(),
        "x_grad": s.read_tensor().shape,
        "cached_output": s.read_tensor().shape,
    }
    if bottom:
        state["grad_final"] = s.read_tensor().shape
        if version >= 3:
            state["sample_expansion_factor"] = s.read_uint()
    elif version >= 2:
        state["params_grad"] = s.read_tensor().shape
    return state


def read_network(data: bytes) -> DlibNetwork:
    """Parse a ``serialize(net)`` stream of an ``add_loss_layer`` network (see module doc)."""
    s = DlibStream(data)
    at = s.tell()
    version = s.read_int()
    if version != 1:
        raise DlibFormatError(f"dlib stream: add_loss_layer version {version} (expected 1) at byte offset {at}")
    loss = _read_loss(s)
    # Top-down chain of headers until the add_layer that sits on the input layer.
    chain: list[tuple[str, int, int]] = []  # (what, version, offset)
    while True:
        at = s.tell()
        version = s.read_int()
        if version == 1:
            chain.append(("wrapper", 1, at))
            continue
        if version in (2, 3):
            nxt = s.peek_string()
            if version == 3 or (nxt is not None and nxt.startswith("input")):
                bottom_version = version
                break
            chain.append(("layer", version, at))
            continue
        raise DlibFormatError(f"dlib stream: unexpected layer header version {version} at byte offset {at}")
    inp = _read_input(s)
    bottom = _read_details(s)
    _read_layer_state(s, bottom_version, bottom=True)
    layers: list[LayerDetails | Wrapper] = [bottom]
    for what, version, offset in reversed(chain):
        if what == "wrapper":
            layers.append(Wrapper(offset))
            continue
        details = _read_details(s)
        _read_layer_state(s, version, bottom=False)
        layers.append(details)
    if not s.at_end():
        raise DlibFormatError(f"dlib stream: {len(s.data) - s.tell()} unread bytes after the network "
                              f"at byte offset {s.tell()}")
    return DlibNetwork(loss=loss, input=inp, layers=layers)


def float32_bits(value: float) -> bytes:
    """The little-endian bytes of ``value`` as float32 (helper for format documentation/tests)."""
    return struct.pack("<f", value)
