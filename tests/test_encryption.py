"""The encrypted object format and key handling, without a relay (docs/format.md)."""
from __future__ import annotations

import base64
import io
import os

import pytest

from escale.encryption import (HEADER_LEN, TAG, Secret, StreamCipher, key_check, load_secret, master_key,
                               new_kdf, padme)
from escale.errors import ConfigError, IntegrityError

KEY = bytes(range(32))
CHUNK = 1 << 12  # small chunks so that tests cross many boundaries cheaply


def cipher(**kw) -> StreamCipher:
    return StreamCipher(KEY, chunk_log2=12, **kw)


def seal(c, name, data) -> bytes:
    return c.encrypt(name, io.BytesIO(data), len(data)).read()


def open_(c, name, blob) -> bytes:
    return c.decrypt(name, io.BytesIO(blob)).read()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 8, CHUNK - 9, CHUNK, CHUNK * 3 + 7, 100_000])
@pytest.mark.parametrize("algorithm", ["aes256gcm", "chacha20poly1305"])
def test_round_trip_and_exact_size(size, algorithm):
    c = cipher(algorithm=algorithm)
    data = os.urandom(size)
    blob = seal(c, "u/0123456789abcdef/1", data)
    assert len(blob) == c.size_on_relay(size)
    assert open_(c, "u/0123456789abcdef/1", blob) == data
    assert data[:64] not in blob or size < 16


def test_every_object_differs_even_for_equal_plaintext():
    c = cipher()
    assert seal(c, "a/x", b"same") != seal(c, "a/x", b"same")


def test_name_is_bound():
    c = cipher()
    blob = seal(c, "u/0123456789abcdef/1", b"x" * 10_000)
    with pytest.raises(IntegrityError, match="u/0123456789abcdef/2.*authentication failed"):
        open_(c, "u/0123456789abcdef/2", blob)


def test_other_key_refused():
    blob = seal(cipher(), "n", b"data")
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_(StreamCipher(os.urandom(32), chunk_log2=12), "n", blob)


def test_every_truncation_point_is_caught():
    c = cipher()
    blob = seal(c, "n", os.urandom(3 * CHUNK + 100))
    for cut in range(0, len(blob), 97):
        with pytest.raises(IntegrityError):
            open_(c, "n", blob[:cut])
    # exactly at chunk boundaries too
    for k in range(1, 4):
        with pytest.raises(IntegrityError):
            open_(c, "n", blob[:HEADER_LEN + k * (CHUNK + TAG)])


def test_appended_bytes_and_chunks_are_caught():
    c = cipher()
    blob = seal(c, "n", os.urandom(2 * CHUNK))
    with pytest.raises(IntegrityError):
        open_(c, "n", blob + b"\0")
    with pytest.raises(IntegrityError):
        open_(c, "n", blob + blob[HEADER_LEN:HEADER_LEN + CHUNK + TAG])


def test_header_bytes_are_authenticated():
    c = cipher()
    blob = bytearray(seal(c, "n", b"x" * 5000))
    blob[7] ^= 1  # the flags byte
    with pytest.raises(IntegrityError):
        open_(c, "n", bytes(blob))
    with pytest.raises(IntegrityError, match="not an encrypted escale object"):
        open_(c, "n", b"plain text, not ours" * 3)


def test_padding_sizes():
    assert [padme(n) for n in (1, 9, 100, 1000, 10**6)] == [1, 10, 104, 1024, 1015808]
    for n in range(2, 5000, 7):
        assert n <= padme(n) <= n * 1.12 + 1
    c = cipher(padding=True)
    sizes = {len(seal(c, "n", os.urandom(n))) for n in range(1000, 1100)}
    assert len(sizes) <= 3  # a hundred different lengths fall into a few size classes
    data = os.urandom(1234)
    assert open_(c, "n", seal(c, "n", data)) == data


def test_short_source_is_padded_not_hung():
    """A file that shrank while being sent: the object still has its announced size; the
    caller's digest check drops it."""
    c = cipher()
    blob = c.encrypt("n", io.BytesIO(b"abc"), 10).read()
    assert open_(c, "n", blob) == b"abc" + bytes(7)


def test_streaming_memory_is_bounded():
    import tracemalloc

    c = StreamCipher(KEY)
    size = 64 << 20

    class Zeros(io.RawIOBase):
        left = size

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    tracemalloc.start()
    enc = c.encrypt("big", Zeros(), size)
    n = 0
    while chunk := enc.read(1 << 20):
        n += len(chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == c.size_on_relay(size)
    assert peak < 8 << 20, peak  # a few chunks, not the object


def test_kdf_and_key_check():
    s = Secret(passphrase=b"correct horse")
    kdf = new_kdf(s)
    assert kdf["name"] == "scrypt" and kdf["n"] >= 2 ** 17
    m1, m2 = master_key(s, kdf), master_key(s, kdf)
    assert m1 == m2 and len(m1) == 32
    settings = {"format": 1, "hash": "sha256", "encryption": "aes256gcm"}
    assert key_check(m1, settings) == key_check(m2, dict(settings, kdf=kdf))
    assert key_check(m1, settings) != key_check(master_key(Secret(passphrase=b"wrong"), kdf), settings)
    assert key_check(m1, settings) != key_check(m1, dict(settings, hash="md5"))  # an altered header
    raw = Secret(raw_key=os.urandom(32))
    assert new_kdf(raw) == {"name": "raw"} and master_key(raw, {"name": "raw"}) == raw.raw_key
    with pytest.raises(ValueError):
        master_key(s, {"name": "raw"})
    with pytest.raises(ValueError):
        master_key(s, dict(kdf, n=3))
    with pytest.raises(ValueError):  # a tampered header asking for gigabytes
        master_key(s, dict(kdf, n=2 ** 22))


def test_load_secret(tmp_path):
    f = tmp_path / "pw"
    f.write_text("words with spaces\n")
    f.chmod(0o600)
    assert load_secret(str(f), repository="r") == Secret(passphrase=b"words with spaces")
    key = os.urandom(32)
    f.write_text(base64.b64encode(key).decode() + "\n")
    assert load_secret(str(f), repository="r") == Secret(raw_key=key)
    assert load_secret("text:literal passphrase", repository="r") == Secret(passphrase=b"literal passphrase")
    with pytest.raises(ConfigError, match="passphrase = text:"):  # never the name as the passphrase
        load_secret("literal passphrase", repository="r")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="other users"):
        load_secret(str(f), repository="r")
    assert load_secret(str(f), repository="r", strict=False) == Secret(raw_key=key)
    f.chmod(0o600)
    f.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_secret(str(f), repository="r")
