"""The cipher layer between the protocol and the relay.

Every relay object passes through a :class:`Cipher` on its way out and back, as a
stream. This version ships only :class:`Plain` (``encryption = off``); the
authenticated, chunked format lands with the encryption work (docs/format.md).
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import BinaryIO

log = logging.getLogger(__name__)


class Cipher(ABC):
    """Turns plaintext streams into relay bytes and back; the object name is bound in."""

    name = "abstract"

    @abstractmethod
    def encrypt(self, obj_name: str, plaintext: BinaryIO) -> BinaryIO:
        ...

    @abstractmethod
    def decrypt(self, obj_name: str, ciphertext: BinaryIO) -> BinaryIO:
        ...

    @abstractmethod
    def size_on_relay(self, plaintext_size: int) -> int:
        """Exact relay size of an object of this plaintext size (quota accounting)."""


class Plain(Cipher):
    """No encryption: for trusted relays and tests. The manager warns at start."""

    name = "off"

    def encrypt(self, obj_name: str, plaintext: BinaryIO) -> BinaryIO:
        return plaintext

    def decrypt(self, obj_name: str, ciphertext: BinaryIO) -> BinaryIO:
        return ciphertext

    def size_on_relay(self, plaintext_size: int) -> int:
        return plaintext_size


def make_cipher(name: str, passphrase: str | None = None) -> Cipher:
    if name in ("off", "plain", "none", "no", "false"):
        return Plain()
    from .errors import ConfigError

    raise ConfigError(f"encryption '{name}' is not available in this version", option="encryption")
