"""The repository's derived master key, kept in the private state between runs.

Deriving the key from a passphrase (scrypt, N = 2^17, r = 8) costs about 0.4 s and 128 MiB
of working memory. A ``--once`` run from cron paid that every time: the derived key is
now kept in the state database (a 0600 file in the 0700 state folder) after the header's
key check accepted it, and used again while the passphrase and the header's KDF
parameters are the ones it was derived from.

The kept record binds the passphrase with an HMAC keyed by the master key itself, so a
changed (or mistyped) passphrase is noticed without running scrypt: the cache misses,
scrypt runs, and the header's key check says "wrong passphrase" as before. What this
gives an attacker who can read the state folder is in docs/threat-model.md ("The key
cache"): the master key, and a check of passphrase guesses that costs one HMAC instead
of one scrypt.

A raw key file has no derivation, so nothing is cached for it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging

from .encryption import Secret

log = logging.getLogger(__name__)

#: key of the record in the state's meta table
CACHE_KEY = "derived_key"


def _params(kdf: dict) -> str:
    return json.dumps(kdf, sort_keys=True)


def _tag(master: bytes, params: str, passphrase: bytes) -> str:
    message = b"escale key cache\x00" + params.encode() + b"\x00" + passphrase
    return hmac.new(master, message, hashlib.sha256).hexdigest()


def recall(state, secret: Secret, kdf: dict) -> bytes | None:
    """The master key kept for this passphrase and these KDF parameters, or None."""
    if secret.passphrase is None or not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        return None
    raw = state.get(CACHE_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        master = bytes.fromhex(record["key"])
        params = _params(kdf)
        if len(master) == 32 and record["kdf"] == params and \
                hmac.compare_digest(str(record["tag"]), _tag(master, params, secret.passphrase)):
            return master
    except (ValueError, KeyError, TypeError):
        log.debug("unreadable key cache record: ignored")
        return None
    log.debug("key cache made for another passphrase or repository: deriving the key again")
    return None


def keep(state, secret: Secret, kdf: dict, master: bytes) -> None:
    """Remember a master key the header's key check accepted."""
    if secret.passphrase is None or not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        return
    params = _params(kdf)
    state.set(CACHE_KEY, json.dumps({"kdf": params, "key": master.hex(),
                                     "tag": _tag(master, params, secret.passphrase)}))


def forget(state) -> None:
    state.unset(CACHE_KEY)
