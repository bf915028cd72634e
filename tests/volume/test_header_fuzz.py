"""Fuzz the header parsers: arbitrary bytes, mutated valid headers and mutated JSON behind valid
checksums give a header or FormatError; never another exception, never a hang or a big allocation."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from volumed.errors import FormatError
from volumed.volume import gcmformat, luks2
from volumed.volume.device import load_header

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


class MemBacking:
    """A read-only in-memory backing file (load_header only needs size and pread)."""

    def __init__(self, data: bytes, size: int | None = None):
        self.data = data
        self._size = len(data) if size is None else size

    def size(self):
        return self._size

    def pread(self, off, n):
        return bytearray(self.data[off:off + n].ljust(n, b"\0"))


def _parse(data: bytes, size: int | None = None):
    tracemalloc.start()
    try:
        load_header(MemBacking(data, size), "fuzz")
    except FormatError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 32 << 20


@pytest.fixture(scope="module")
def valid_headers(tmp_path_factory):
    """Raw header areas of one real XTS and one real GCM volume (made with the embedded KMS)."""
    from tests.volume.conftest import VIA
    from volumed import kms as kmsmod
    from volumed.volume import Volume

    d = tmp_path_factory.mktemp("fuzz")
    client = kmsmod.connect(str(d / "ks"), via_service=VIA)
    out = {}
    for cipher in ("xts", "gcm"):
        p = d / cipher
        Volume.create(p, size=1 << 20, kms=client, cipher=cipher)
        with open(p, "rb") as f:
            out[cipher] = f.read(2 * 16384)
    return out


@FUZZ
@given(st.binary(max_size=70_000))
def test_arbitrary_bytes(data):
    _parse(data)
    _parse(luks2.MAGIC_1 + data)
    _parse(gcmformat.MAGIC + data)


@FUZZ
@given(st.data())
def test_mutated_valid_headers(valid_headers, data):
    cipher = data.draw(st.sampled_from(["xts", "gcm"]))
    raw = bytearray(valid_headers[cipher])
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    _parse(bytes(raw), size=data.draw(st.sampled_from([len(raw), 1 << 40, 2 << 20])))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _reseal_luks(raw: bytes, j: dict) -> bytes:
    text = json.dumps(j).encode() + b"\0"
    if len(text) > luks2.JSON_SIZE:
        text = text[:luks2.JSON_SIZE]
    area = text + bytes(luks2.JSON_SIZE - len(text))
    out = b""
    for i in range(2):
        binhdr = bytearray(raw[i * 16384:i * 16384 + 4096])
        binhdr[448:512] = bytes(64)
        binhdr[448:480] = hashlib.sha256(bytes(binhdr) + area).digest()
        out += bytes(binhdr) + area
    return out


def _reseal_gcm(raw: bytes, j: dict) -> bytes:
    out = b""
    for i in range(2):
        copy = bytearray(raw[i * 16384:(i + 1) * 16384])
        text = json.dumps(j).encode()[:16384 - 128]
        copy[128:] = text + bytes(16384 - 128 - len(text))
        copy[12:16] = len(text).to_bytes(4, "big")
        copy[32:64] = bytes(32)
        copy[32:64] = hashlib.sha256(bytes(copy)).digest()
        out += bytes(copy)
    return out


@FUZZ
@given(st.data())
def test_mutated_json_behind_valid_checksums(valid_headers, data):
    cipher = data.draw(st.sampled_from(["xts", "gcm"]))
    raw = valid_headers[cipher]
    if cipher == "xts":
        j = json.loads(raw[4096:16384].split(b"\0", 1)[0])
        target = data.draw(st.sampled_from([j, j["tokens"]["0"], j["segments"]["0"], j["digests"]["0"]]))
    else:
        n = int.from_bytes(raw[12:16], "big")
        j = json.loads(raw[128:128 + n])
        target = j
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(_json_values)
    blob = _reseal_luks(raw, j) if cipher == "xts" else _reseal_gcm(raw, j)
    _parse(blob, size=64 << 20)
