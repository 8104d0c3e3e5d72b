"""The block streams' two ways of reading (``read`` and ``readinto``) give the same bytes,
and a HashingReader hashes exactly the bytes it handed out, whichever way it was read."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from escale.encryption import StreamCipher
from escale.stream import BlockReader, HashingReader, ReadAhead


class Blocks(BlockReader):
    """Hands out the given blocks (bytes, bytearray or memoryview; empty ones included)."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = list(blocks)

    def _block(self):
        return self.blocks.pop(0) if self.blocks else None


def mixed_read(stream, total_hint: int) -> bytes:
    """Read with read() and readinto() in turn, in sizes that cut across block borders."""
    out = bytearray()
    step, k = 1, 0
    while True:
        if k % 2:
            buf = bytearray(step)
            with memoryview(buf) as view:
                n = stream.readinto(view)
            data = bytes(buf[:n])
        else:
            data = stream.read(step)
        if not data:
            break
        out += data
        step = step * 7 % 70_001 + 1
        k += 1
    return bytes(out)


def test_block_reader_read_and_readinto_agree() -> None:
    data = os.urandom(300_000)
    cuts = [0, 1, 1, 4096, 100_000, 100_000, 250_000, 299_999, 300_000]
    blocks = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    kinds = [bytes, bytearray, lambda b: memoryview(bytearray(b))]
    for i in range(3):
        stream = Blocks(kinds[(i + j) % 3](b) for j, b in enumerate(blocks))
        assert mixed_read(stream, len(data)) == data
        assert stream.read(10) == b"" and stream.readinto(bytearray(10)) == 0
    closed = Blocks([b"x"])
    closed.close()
    with pytest.raises(ValueError):
        closed.readinto(bytearray(1))


def test_hashing_reader_hashes_what_it_hands_out() -> None:
    """Read straight from the source (readinto) or through read(): the digest and count are
    those of the bytes that came out, also when the reader stops before the end."""
    data = os.urandom(1_000_003)
    for source in (io.BytesIO(data), io.BufferedReader(io.BytesIO(data))):
        r = HashingReader(source, "sha256")
        got = mixed_read(r, len(data))
        assert got == data and r.count == len(data)
        assert r.hexdigest() == hashlib.sha256(data).hexdigest()
    r = HashingReader(io.BytesIO(data), "sha256")
    part = r.read(12_345) + bytes(memoryview(bytearray(1000))[:r.readinto(bytearray(1000))])
    assert r.count == len(part) and r.hexdigest() == hashlib.sha256(data[:len(part)]).hexdigest()


@pytest.mark.parametrize("size", [0, 5, (1 << 12) - 8, 1 << 12, 3 * (1 << 12) + 17, 100_000])
def test_sealed_stream_round_trip_through_read_ahead(size: int) -> None:
    """File -> HashingReader -> encrypt -> ReadAhead, read both ways, then decrypted: the same
    bytes; the digest is that of the whole source; a source shorter than announced is
    sealed (zeros after its end) with a digest of what it gave, so the caller sees the
    mismatch."""
    data = os.urandom(size)
    cipher = StreamCipher(b"k" * 32, chunk_log2=12, repository="r")
    reader = HashingReader(io.BufferedReader(io.BytesIO(data)), "sha256")
    with ReadAhead(cipher.encrypt("b/x/1/0", reader, size), block=5000) as sealed:
        blob = mixed_read(sealed, 0)
    assert len(blob) == cipher.size_on_relay(size)
    assert reader.count == size and reader.hexdigest() == hashlib.sha256(data).hexdigest()
    assert mixed_read(cipher.decrypt("b/x/1/0", io.BytesIO(blob)), size) == data
    if size:
        short = HashingReader(io.BytesIO(data[:size // 2]), "sha256")
        blob = cipher.encrypt("b/x/1/0", short, size).read()
        assert short.count == size // 2 and short.hexdigest() != hashlib.sha256(data).hexdigest()
        assert cipher.decrypt("b/x/1/0", io.BytesIO(blob)).read() == data[:size // 2] + bytes(size - size // 2)
