"""The cipher layer between the protocol and the relay (format: docs/format.md).

Every relay object passes through a :class:`Cipher` as a stream, in both
directions, so memory use never depends on object size.

:class:`StreamCipher` is a chunked AEAD in the STREAM construction (as in Tink's
streaming AEAD and age): a per-object random salt gives a per-object key, derived
from the repository's content key *and the object's relay name* (so an object moved
or swapped to another name fails to decrypt); each chunk's nonce holds a counter and
a last-chunk flag (so reordered, dropped or truncated chunks fail); the object header
is authenticated as associated data. The plaintext starts with its own length, which
lets an object be padded (Padmé) without leaking the real size and catches truncation
twice over.

:class:`Plain` (``encryption = off``) passes bytes through, for trusted relays and tests.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import ConfigError, IntegrityError
from .stream import BlockReader, read_exactly

log = logging.getLogger(__name__)

MAGIC = b"ESCE"
VERSION = 1
ALGORITHMS = {"aes256gcm": (1, AESGCM), "chacha20poly1305": (2, ChaCha20Poly1305)}
_BY_ID = {i: (name, cls) for name, (i, cls) in ALGORITHMS.items()}
HEADER = struct.Struct(">4sBBBB16s7s")  # magic, version, algorithm, log2 chunk size, flags, salt, nonce prefix
HEADER_LEN = HEADER.size  # 31
TAG = 16
LENGTH = struct.Struct(">Q")
FLAG_PADDED = 1
DEFAULT_CHUNK_LOG2 = 18  # 256 KiB: ~1 GB/s here (64 KiB: a third of that)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 17, 8, 1


class Cipher(ABC):
    """Turns plaintext streams into relay bytes and back; the object name is bound in."""

    name = "abstract"

    @abstractmethod
    def encrypt(self, obj_name: str, plaintext: BinaryIO, size: int, pad_to: int = 0) -> BinaryIO:
        """A stream of the relay bytes for ``size`` bytes read from ``plaintext``; with
        padding, ``pad_to`` rounds the padded size up to a multiple of it."""

    @abstractmethod
    def decrypt(self, obj_name: str, ciphertext: BinaryIO) -> BinaryIO:
        """A stream of the plaintext; raises IntegrityError (naming the object) when
        the bytes were not produced by this repository's key for this name."""

    @abstractmethod
    def size_on_relay(self, plaintext_size: int, pad_to: int = 0) -> int:
        """Exact relay size of an object of this plaintext size (quota accounting)."""


class Plain(Cipher):
    """No encryption: for trusted relays and tests. The manager warns at start."""

    name = "off"

    def encrypt(self, obj_name: str, plaintext: BinaryIO, size: int, pad_to: int = 0) -> BinaryIO:
        return plaintext

    def decrypt(self, obj_name: str, ciphertext: BinaryIO) -> BinaryIO:
        return ciphertext

    def size_on_relay(self, plaintext_size: int, pad_to: int = 0) -> int:
        return plaintext_size


def hkdf(key: bytes, info: bytes, salt: bytes | None = None, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def padme(length: int) -> int:
    """Padmé (Nikitin et al., 2019): round up so that at most O(log log L) bits of the
    length remain; the overhead is at most 12 %."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


class StreamCipher(Cipher):
    """Chunked AEAD objects under a repository's master key."""

    def __init__(self, master_key: bytes, algorithm: str = "aes256gcm", padding: bool = True,
                 chunk_log2: int = DEFAULT_CHUNK_LOG2, *, repository: str = ""):
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        self.name = algorithm
        self.padding = padding
        self.chunk_log2 = chunk_log2
        # bound to the repository id: an object copied from another repository that
        # shares the passphrase or key file fails to decrypt here
        self._content_key = hkdf(master_key, b"escale/v2/content\x00" + repository.encode())

    def _key(self, salt: bytes, obj_name: str) -> bytes:
        return hkdf(self._content_key, b"escale/v1/object\x00" + obj_name.encode(), salt=salt)

    def _plain_total(self, size: int, pad_to: int = 0) -> int:
        total = LENGTH.size + size
        if self.padding:
            total = padme(total)
            if pad_to:  # a fixed size class (member cards: the name's length must not show)
                total = max(total, -(-total // pad_to) * pad_to)
        return total

    def size_on_relay(self, plaintext_size: int, pad_to: int = 0) -> int:
        total = self._plain_total(plaintext_size, pad_to)
        chunks = max(1, -(-total // (1 << self.chunk_log2)))
        return HEADER_LEN + total + chunks * TAG

    def encrypt(self, obj_name: str, plaintext: BinaryIO, size: int, pad_to: int = 0) -> BinaryIO:
        alg_id, cls = ALGORITHMS[self.name]
        salt, prefix = os.urandom(16), os.urandom(7)
        header = HEADER.pack(MAGIC, VERSION, alg_id, self.chunk_log2, FLAG_PADDED if self.padding else 0,
                             salt, prefix)
        return _Encryptor(cls(self._key(salt, obj_name)), header + obj_name.encode(), header, prefix, plaintext,
                          size, self._plain_total(size, pad_to), 1 << self.chunk_log2)

    def decrypt(self, obj_name: str, ciphertext: BinaryIO) -> BinaryIO:
        return _Decryptor(self, obj_name, ciphertext)


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class _ChunkStream(BlockReader):
    """A readable stream that produces its bytes one AEAD chunk at a time (a block each,
    handed out by :class:`~escale.stream.BlockReader` with no further copy)."""

    src: BinaryIO
    done_all = False

    def close(self) -> None:
        if not self.closed:
            self.src.close()
        super().close()


class _Encryptor(_ChunkStream):
    def __init__(self, aead, aad: bytes, header: bytes, prefix: bytes, src: BinaryIO, size: int, total: int,
                 chunk: int):
        self.aead, self.aad, self.prefix, self.src = aead, aad, prefix, src
        self.size, self.total, self.chunk = size, total, chunk
        self.header: bytes | None = header
        self.done = 0       # plaintext bytes (length prefix, data, padding) sealed so far
        self.src_left = size
        self.counter = 0
        self._src_readinto = getattr(src, "readinto", None)

    def _block(self) -> bytes | None:
        """The header, then each sealed chunk; None after the last."""
        if self.header is not None:
            header, self.header = self.header, None
            return header
        if self.done_all:
            return None
        return self._next()

    def _next(self) -> bytes:
        """Seal the next chunk of the plaintext (length prefix, data, padding).

        The source is read straight into the chunk's buffer (``readinto``; a
        :class:`~escale.stream.HashingReader` hashes it there) and the buffer sealed as it
        is: no copy of the plaintext on the way. The buffer starts zeroed, so whatever the
        source does not fill (padding, or a source that ended early — the caller's digest
        check catches that) is zeros."""
        n = min(self.chunk, self.total - self.done)
        buf = bytearray(n)
        have = 0
        if self.done == 0:
            buf[:LENGTH.size] = LENGTH.pack(self.size)
            have = LENGTH.size
        with memoryview(buf) as view:
            while have < n and self.src_left > 0:
                want = min(n - have, self.src_left)
                if self._src_readinto is not None:
                    got = self._src_readinto(view[have:have + want]) or 0
                else:
                    data = self.src.read(want)
                    got = len(data)
                    view[have:have + got] = data
                if not got:
                    self.src_left = 0  # the source ended early; the caller's digest check catches it
                    break
                have += got
                self.src_left -= got
        last = self.done + n == self.total
        sealed = self.aead.encrypt(_nonce(self.prefix, self.counter, last), buf, self.aad)
        self.counter += 1
        self.done += n
        self.done_all = last
        return sealed


class _Decryptor(_ChunkStream):
    def __init__(self, cipher: StreamCipher, name: str, src: BinaryIO):
        self.name, self.src = name, src
        head = read_exactly(src, HEADER_LEN)
        if len(head) < HEADER_LEN:
            raise IntegrityError(name, "truncated: shorter than an encrypted object's header")
        magic, version, alg_id, log2, flags, salt, prefix = HEADER.unpack(head)
        if magic != MAGIC:
            raise IntegrityError(name, "not an encrypted escale object (forged, or written without encryption)")
        if version != VERSION or alg_id not in _BY_ID or not 12 <= log2 <= 24 or flags & ~FLAG_PADDED:
            raise IntegrityError(name, f"unsupported encrypted format (version {version}, algorithm {alg_id})")
        self.aead = _BY_ID[alg_id][1](cipher._key(salt, name))
        self.aad, self.prefix, self.chunk = head + name.encode(), prefix, 1 << log2
        self.ahead = b""
        self.pending: bytes = b""  # the current chunk's plaintext
        self.counter = 0
        self.length: int | None = None
        self.emitted = 0

    def _next(self) -> None:
        """Open (authenticate and decrypt) the next chunk.

        One more byte than a chunk is read (kept for the next one): a chunk followed by
        nothing is the last. The ciphertext is read into one buffer and the plaintext
        handed out as AES-GCM gives it, with no further copy (:meth:`read`)."""
        want = self.chunk + TAG
        buf = bytearray(want + 1)
        have = len(self.ahead)
        buf[:have] = self.ahead
        with memoryview(buf) as view:
            readinto = getattr(self.src, "readinto", None)
            while have < want + 1:
                if readinto is not None:
                    n = readinto(view[have:]) or 0
                else:
                    data = self.src.read(want + 1 - have)
                    n = len(data)
                    view[have:have + n] = data
                if not n:
                    break
                have += n
        last = have <= want
        if last:
            del buf[have:]
            self.ahead = b""
        else:
            self.ahead = bytes(buf[want:])
            del buf[want:]
        try:
            pt = self.aead.decrypt(_nonce(self.prefix, self.counter, last), bytes(buf) if have < 1024 else buf,
                                   self.aad)
        except InvalidTag:
            if self.counter == 0:
                raise IntegrityError(self.name, "authentication failed: forged, modified, made with another key "
                                                "or for another repository, or moved here from another "
                                                "name") from None
            raise IntegrityError(self.name, f"authentication failed at chunk {self.counter}: modified, "
                                            "truncated or reordered") from None
        self.counter += 1
        start = 0
        if self.length is None:
            if len(pt) < LENGTH.size:
                raise IntegrityError(self.name, "malformed: no length")
            (self.length,) = LENGTH.unpack(pt[:LENGTH.size])
            start = LENGTH.size
        take = min(len(pt) - start, self.length - self.emitted)
        self.pending = pt if start == 0 and take == len(pt) else pt[start:start + take]
        self.emitted += take
        if last:
            self.done_all = True
            if self.emitted != self.length:
                raise IntegrityError(self.name, "truncated: shorter than its authenticated length")

    def _block(self) -> bytes | None:
        """The next chunk's plaintext (handed out by BlockReader.read with no further copy
        when it fits whole), or None after the last chunk."""
        if self.done_all:
            return None
        self._next()
        return self.pending


# ---------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Secret:
    """What the ``passphrase`` option gave: a passphrase, or a raw 32-byte key."""

    passphrase: bytes | None = None
    raw_key: bytes | None = None


#: written before a passphrase given in the configuration itself: ``passphrase = text:…``
TEXT_PREFIX = "text:"


def passphrase_file(value: str, config_path=None) -> Path | None:
    """The file a ``passphrase`` value names, or None when the value is the text itself.

    Only ``text:…`` is text; anything else is a file name (absolute, ``~``, or relative
    to the configuration file's folder), so a mistyped path can never become the key.
    """
    v = value.strip()
    if v[:len(TEXT_PREFIX)].lower() == TEXT_PREFIX:
        return None
    path = Path(os.path.expanduser(v))
    if not path.is_absolute() and config_path is not None:
        path = Path(config_path).parent / path
    return path


def passphrase_file_problem(value: str, config_path=None) -> str | None:
    """Why the file a ``passphrase`` value names cannot be used (None: it is text, or a file).

    The message shows the path only when the value looks like one (a ``/``, or a leading
    ``~`` or ``.``): a bare word may be a 0.7-style literal passphrase and is never shown.
    """
    path = passphrase_file(value, config_path)
    if path is None:
        return None
    try:
        if path.is_file():
            return None
        exists = path.exists()
    except (OSError, ValueError):
        exists = False
    v = value.strip()
    looks_like_path = v.startswith(("/", "~", ".")) or "/" in v
    if looks_like_path:
        what = f"passphrase file {path} {'is not a regular file' if exists else 'does not exist'}"
    else:
        where = Path(config_path).parent if config_path is not None else Path.cwd()
        what = f"the passphrase names no existing file (a name without '/' is looked for in {where}; " \
               "the value is not shown)"
    return (what + "; check the path, or, to write the passphrase itself in the configuration, "
            f"write 'passphrase = {TEXT_PREFIX}<the passphrase>'")


def load_secret(value: str, *, repository: str, strict: bool = True, config_path=None) -> Secret:
    """Read the ``passphrase`` option: ``text:`` and the passphrase itself, or the path of
    a file holding the passphrase (or a base64 raw key). A file other users can read is
    an error when ``strict`` (the default), else a warning."""
    path = passphrase_file(value, config_path)
    if path is None:
        text = value.strip()[len(TEXT_PREFIX):].strip()
        if not text:
            raise ConfigError(f"empty passphrase after '{TEXT_PREFIX}'", path=config_path,
                              section=repository, option="passphrase")
        return Secret(passphrase=text.encode())
    problem = passphrase_file_problem(value, config_path)
    if problem is not None:
        raise ConfigError(problem, path=config_path, section=repository, option="passphrase")
    mode = path.stat().st_mode
    if mode & 0o077:
        msg = (f"passphrase file {path} can be read by other users (chmod 600 it, or set "
               "'strict permissions = no')")
        if strict:
            raise ConfigError(msg, path=config_path, section=repository, option="passphrase")
        log.warning("%s: %s", repository, msg)
    data = path.read_bytes().rstrip(b"\r\n")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raw = b""
    if len(raw) == 32:
        return Secret(raw_key=raw)
    if not data:
        raise ConfigError(f"passphrase file {path} is empty", path=config_path, section=repository,
                          option="passphrase")
    return Secret(passphrase=data)


def new_kdf(secret: Secret) -> dict:
    """KDF parameters for a new repository header."""
    if secret.raw_key is not None:
        return {"name": "raw"}
    return {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
            "salt": base64.b64encode(os.urandom(16)).decode()}


def master_key(secret: Secret, kdf: dict) -> bytes:
    """The repository's master key from the secret and the header's KDF parameters."""
    if kdf.get("name") == "raw":
        if secret.raw_key is None:
            raise ValueError("the repository uses a raw key file, but a passphrase was given")
        return secret.raw_key
    if kdf.get("name") != "scrypt":
        raise ValueError(f"unknown key derivation {kdf.get('name')!r}")
    if secret.passphrase is None:
        raise ValueError("the repository uses a passphrase, but a raw key file was given")
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    # bounded so that a tampered header cannot make us allocate gigabytes (n=2^18: 256 MiB)
    if not (2 ** 15 <= n <= 2 ** 18 and n & (n - 1) == 0 and r == SCRYPT_R and 1 <= p <= 4):
        raise ValueError("scrypt parameters out of range")
    salt = base64.b64decode(kdf["salt"])
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret.passphrase)


def key_check(master: bytes, settings: dict) -> str:
    """A value stored in the repository header that tells a wrong key at once — and, as
    it is a MAC over the header's settings (format, repository id, checksum, cipher), an
    altered header."""
    check_key = hkdf(master, b"escale/v2/key-check")
    fields = {k: settings.get(k) for k in ("format", "id", "hash", "encryption")}
    message = b"escale key check\x00" + json.dumps(fields, sort_keys=True).encode()
    return base64.b64encode(hmac.new(check_key, message, hashlib.sha256).digest()[:16]).decode()


def make_cipher(name: str, master: bytes | None = None, padding: bool = True, repository: str = "") -> Cipher:
    if name == "off":
        return Plain()
    if master is None:
        raise ConfigError(f"encryption '{name}' needs a key", option="passphrase")
    return StreamCipher(master, name, padding, repository=repository)
