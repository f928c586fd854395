"""G.711 mu-law (PCMU) and A-law (PCMA), table-driven with numpy (ITU-T G.711).

Decoding is a 256-entry table; encoding a 65536-entry table indexed by the 16-bit
sample, both built once at import from the reference bit manipulations. The results
match the stdlib `audioop.lin2ulaw`/`lin2alaw` (tested where audioop exists), so no
conditional dependency on `audioop-lts` is needed on Python 3.13 and later.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from voice.audio import Int16Array
from voice.errors import ProtocolError

Uint8Array = npt.NDArray[np.uint8]

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # on 14-bit magnitudes
_ULAW_SEG_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], np.int32)
_ALAW_SEG_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], np.int32)


def _build_ulaw_encode() -> Uint8Array:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    value = pcm >> 2  # mu-law works on 14 bits
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEG_ENDS, magnitude, side="left")
    mantissa = (magnitude >> (np.minimum(segment, 7) + 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa) ^ mask
    return _index_by_uint16(pcm, code)


def _build_alaw_encode() -> Uint8Array:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    value = pcm >> 3  # A-law works on 13 bits
    mask = np.where(value >= 0, 0xD5, 0x55)
    magnitude = np.where(value >= 0, value, -value - 1)
    segment = np.searchsorted(_ALAW_SEG_ENDS, magnitude, side="left")
    shift = np.where(segment < 2, 1, np.minimum(segment, 7))
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> shift) & 0x0F)) ^ mask
    return _index_by_uint16(pcm, code)


def _index_by_uint16(pcm: npt.NDArray[np.int32], code: npt.NDArray[Any]) -> Uint8Array:
    table = np.zeros(65536, np.uint8)
    table[pcm.astype(np.int16).view(np.uint16)] = code.astype(np.uint8)
    return table


def _build_ulaw_decode() -> Int16Array:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    table: Int16Array = np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)
    return table


def _build_alaw_decode() -> Int16Array:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = (code & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8,
                         (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    table: Int16Array = np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)
    return table


_ULAW_ENC = _build_ulaw_encode()
_ALAW_ENC = _build_alaw_encode()
_ULAW_DEC = _build_ulaw_decode()
_ALAW_DEC = _build_alaw_decode()

# RTP static payload types (RFC 3551) and their SDP encoding names
PCMU = 0
PCMA = 8
ENCODING_NAMES = {PCMU: "PCMU", PCMA: "PCMA"}


def encode(samples: Int16Array, payload_type: int) -> bytes:
    """16-bit PCM at 8 kHz to G.711 bytes of the given payload type (0 PCMU, 8 PCMA)."""
    table = _table(payload_type, _ULAW_ENC, _ALAW_ENC)
    return bytes(table[samples.astype(np.int16, copy=False).view(np.uint16)])


def decode(payload: bytes, payload_type: int) -> Int16Array:
    """G.711 bytes to 16-bit PCM at 8 kHz."""
    table = _table(payload_type, _ULAW_DEC, _ALAW_DEC)
    decoded: Int16Array = np.asarray(table[np.frombuffer(payload, np.uint8)], np.int16)
    return decoded


def silence(payload_type: int, samples: int) -> bytes:
    return encode(np.zeros(samples, np.int16), payload_type)


def _table(payload_type: int, ulaw: npt.NDArray[np.generic],
           alaw: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    if payload_type == PCMU:
        return ulaw
    if payload_type == PCMA:
        return alaw
    raise ProtocolError(f"payload type {payload_type} is not G.711", code="rtp_payload_type")
