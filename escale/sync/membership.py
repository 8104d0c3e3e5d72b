"""Membership: the repository header and its key, pinned signing keys, member cards.

The header is created once and pinned by every client on first sight (with
encryption, the key is derived from it and checked before anything else is read).
Each member publishes a card signed with the key it carries; a key is pinned the
first time its card is seen. ``status`` and ``forget`` read and edit the member list.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .. import keycache
from ..encryption import StreamCipher, key_check, master_key, new_kdf
from ..errors import (ConfigError, EscaleError, IntegrityError, ObjectExists, RelayError, RelayObjectMissing,
                      WrongPassphrase)
from ..labels import MAX_LABEL, labels, printable
from ..protocol import FORMAT_VERSION, HEADER_NAME, UPDATE_MAGIC, RelayView, member_name, signer_of, update_name
from ..relay import Usage
from ..repository_id import WrongRepository, check_pinned, is_id, new_id
from .context import Repo

log = logging.getLogger(__name__)

#: a running client re-signs its acknowledgements at least this often (its activity time)
ACTIVITY_INTERVAL = 3600.0


@dataclass(frozen=True)
class MemberStatus:
    name: str
    mode: str
    pending_updates: int
    is_me: bool
    #: the latest time this member signed (its acknowledgements' heartbeat, its newest
    #: update): one whose time stops advancing is offline, or hidden by the relay
    last_activity: float | None = None
    client_id: str = ""
    #: updates of other members on the relay that this one has not acknowledged (None: unknown)
    to_take: int | None = None


@dataclass(frozen=True)
class RepositoryStatus:
    repository: str
    relay: str
    repository_id: str | None
    used_bytes: int
    quota: int | None
    members: list[MemberStatus]
    wanted_files: int
    held_deletes: int = 0
    #: the storage's own account of space (Relay.usage(): Drive's about.get, WebDAV's quota props)
    storage: Usage | None = None


class Membership:
    """The header, the keys and the member cards of one repository."""

    def __init__(self, ctx: Repo):
        self.ctx = ctx

    def ensure_header(self, view: RelayView | None = None) -> bool:
        """Create or read the repository header; with encryption, derive the key and check
        it against the header's key-check value before anything else is read or written.
        Returns whether it was created here.

        ``view``: a listing of the relay, which tells whether the header is there (else one
        ``stat``). A header listed with the size and version it had when this client last
        read it is not downloaded again: the header pinned at first sight is checked
        instead (what a client uses is always the pinned header: reading the relay's copy
        only finds a header altered or a relay replaced, which changes its version)."""
        encrypted = self.ctx.enc_name != "off"
        master = None
        info = view.header if view is not None else self.ctx.relay.stat(HEADER_NAME)
        if info is None:
            if self.ctx.state.get("repository_header") is not None:
                raise RelayError(f"no repository header ({HEADER_NAME}) on {self.ctx.relay.address}, but this client "
                                 "synced with it before: the relay looks unmounted or replaced. escale does not "
                                 "create the repository again; mount or restore the relay (to start a new "
                                 f"repository on purpose, remove this client's state folder {self.ctx.state_dir})")
            if self.ctx.pinned_id is not None:
                raise WrongRepository(f"the relay {self.ctx.relay.address} holds no repository, but 'repository id' "
                                      f"pins {self.ctx.pinned_id}: refusing to create a new one there (remove the "
                                      "option to start a new repository)", path=self.ctx.config_path,
                                      section=self.ctx.name, option="repository id")
            header = {"format": FORMAT_VERSION, "id": new_id(), "hash": self.ctx.algorithm,
                      "encryption": self.ctx.enc_name}
            if encrypted and self.ctx.secret is not None:
                header["kdf"] = new_kdf(self.ctx.secret)
                master = master_key(self.ctx.secret, header["kdf"])
                header["check"] = key_check(master, header)
                keycache.keep(self.ctx.state, self.ctx.secret, header["kdf"], master)
            try:
                self.ctx.store.put_header(header)
                log.info("%s: created repository on %s", self.ctx.name, self.ctx.relay.address)
                self._pin_header(header)
                self._use_key(master)
                return True
            except ObjectExists:
                pass  # another client created it first: use theirs
        listed = f"{info.size}:{info.version}" if info is not None else None
        pinned = self.ctx.state.get("repository_header")
        if listed is not None and pinned is not None and self.ctx.state.get("header_listed") == listed:
            found = json.loads(pinned)
        else:
            found = self.ctx.store.get_header()
        if isinstance(found, dict) and found.get("format") == 1:
            raise WrongRepository(f"the repository on {self.ctx.relay.address} has format 1 (escale before repository "
                                  "ids): its objects are not bound to one repository, and this version refuses "
                                  "them. Let every client finish syncing with the old version, then point all "
                                  "clients at a new, empty relay folder (docs/format.md, 'Format 1')",
                                  path=self.ctx.config_path, section=self.ctx.name, option="relay address")
        if not isinstance(found, dict) or found.get("format") != FORMAT_VERSION:
            raise IntegrityError(HEADER_NAME, f"unsupported repository format {found!r:.80}")
        if not is_id(found.get("id")):
            raise IntegrityError(HEADER_NAME, f"no valid repository id ({found.get('id')!r:.40})")
        check_pinned(found["id"], self.ctx.pinned_id, repository=self.ctx.name, address=self.ctx.relay.address,
                     config_path=self.ctx.config_path)
        if not isinstance(found.get("hash"), str) or found["hash"] not in hashlib.algorithms_available \
                or found["hash"].startswith("shake"):
            raise IntegrityError(HEADER_NAME, f"unusable checksum algorithm {found.get('hash')!r:.40}")
        theirs = found.get("encryption")
        if (theirs != "off") != encrypted:
            raise ConfigError(f"the repository on {self.ctx.relay.address} uses encryption '{theirs}', this "
                              f"section says '{self.ctx.enc_name}'", path=self.ctx.config_path, section=self.ctx.name,
                              option="encryption")
        if encrypted and self.ctx.secret is not None:
            kdf = found.get("kdf") or {}
            master = keycache.recall(self.ctx.state, self.ctx.secret, kdf)
            kept = master is not None
            try:
                master = master or master_key(self.ctx.secret, kdf)
            except (ValueError, KeyError, TypeError) as exc:
                raise WrongPassphrase(f"cannot open repository {self.ctx.name}: {exc}", path=self.ctx.config_path,
                                      section=self.ctx.name, option="passphrase") from None
            if hmac.compare_digest(key_check(master, found), str(found.get("check", ""))):
                if not kept:
                    keycache.keep(self.ctx.state, self.ctx.secret, kdf, master)
            else:
                keycache.forget(self.ctx.state)
                raise WrongPassphrase(f"wrong passphrase for repository {self.ctx.name} (or its header on the "
                                      "relay was altered)", path=self.ctx.config_path, section=self.ctx.name,
                                      option="passphrase")
        self._pin_header(found)
        if listed is not None and self.ctx.state.get("header_listed") != listed:
            self.ctx.state.set("header_listed", listed)
        self._use_key(master)
        algo = found.get("hash")
        if algo != self.ctx.algorithm:
            log.warning("%s: the repository uses checksum '%s'; using it instead of '%s'",
                        self.ctx.name, algo, self.ctx.algorithm)
            self.ctx.algorithm = algo
            if self.ctx.cache is not None:
                self.ctx.cache.algorithm = algo
                self.ctx.folder.algorithm = algo

    def open_pinned_header(self) -> None:
        """Take the key from the header this client pinned (a relay that moved away keeps
        no header, only a notice to read: escale.sync.moves)."""
        header = json.loads(self.ctx.state.get("repository_header"))
        master = None
        if self.ctx.enc_name != "off" and self.ctx.secret is not None:
            master = master_key(self.ctx.secret, header.get("kdf") or {})
        self._pin_header(header)
        self._use_key(master)

    def _pin_header(self, header: dict) -> None:
        """Remember the header as first seen; a later change is an attack (or a relay
        swapped under us) and is refused before anything else happens. Its repository
        id is bound into every signature (and key) from here on."""
        self.ctx.repository_id = header["id"]
        self.ctx.store.repository = header["id"]
        canonical = json.dumps(header, sort_keys=True)
        pinned = self.ctx.state.get("repository_header")
        if pinned is None:
            self.ctx.state.set("repository_header", canonical)
        elif pinned != canonical:
            raise IntegrityError(HEADER_NAME, "differs from the header this client first saw (relay altered "
                                              "or replaced); refusing to sync. If the repository was re-created "
                                              f"on purpose, remove this client's state folder {self.ctx.state_dir}")

    def _use_key(self, master: bytes | None) -> None:
        if master is not None:
            self.ctx.cipher = StreamCipher(master, self.ctx.enc_name, self.ctx.padding, repository=self.ctx.repository_id)
            self.ctx.store.cipher = self.ctx.cipher

    def _card(self) -> dict:
        key = self.ctx.state.pinned(self.ctx.me)
        return {"v": FORMAT_VERSION, "name": self.ctx.clientname, "mode": self.ctx.mode, "key": key.hex(),
                "pulls": self.ctx.repository.may_pull(), "pushes": self.ctx.repository.may_push()}

    def ensure_card(self, present: bool | None = None) -> bool:
        """Write our member card if it is missing or changed; returns whether it was written.
        ``present``: whether a listing showed it (else one ``stat``)."""
        name = member_name(self.ctx.me)
        card = self._card()
        if present is None:
            present = self.ctx.relay.stat(name) is not None
        if present and self.ctx.state.get("card") == repr(card):
            return False
        self.ctx.store.put_json(name, card)
        self.ctx.state.set("card", repr(card))
        return True

    def read_cards(self, view: RelayView, repair: bool = True) -> None:
        """Member cards, each signed with the key it carries; a client's key is pinned the
        first time its card is seen, and a card with another key is refused."""
        self.ctx.cards = {}
        for cid, info in view.members.items():
            self.ctx.check_stop()
            card = self.ctx.read_small(info.name, info, self_signed="key", junk=True)
            if not (isinstance(card, dict) and isinstance(card.get("name"), str)):
                continue
            key = bytes.fromhex(card["key"])
            pinned = self.ctx.state.pinned(cid)
            if pinned is None:
                self.ctx.state.pin(cid, key)
            elif pinned != key:
                self.ctx.problem(IntegrityError(info.name, f"member card of '{printable(card['name'], MAX_LABEL)}' now "
                                                        "carries another "
                                                        "signing key: refused (someone posing as that client?)"))
                self.ctx.state.set_seen(info.name, -1, -1, None)  # read it again next time
                continue
            self.ctx.cards[cid] = card
        self.ctx.names.update(labels({cid: card["name"] for cid, card in self.ctx.cards.items()}))
        self.ctx.bad = {n: v for n, v in self.ctx.bad.items() if signer_of(n) in view.members}
        if repair and self.ctx.me not in view.members:  # e.g. removed by hand: put it back
            self.ensure_card(present=False)

    def refuse_name_clash(self) -> None:
        """Two members with one client name would be told apart by nobody (forget, status,
        conflict names): refused before our card is written."""
        others = sorted(cid for cid, card in self.ctx.cards.items() if cid != self.ctx.me and card["name"] == self.ctx.clientname)
        if others:
            raise ConfigError(f"another member of the repository on {self.ctx.relay.address} already uses client name "
                              f"'{self.ctx.clientname}' (member {others[0][:8]}; this client is {self.ctx.me[:8]}). If it "
                              "is this folder's former identity (state folder removed, folder copied or restored "
                              f"elsewhere), remove it with 'escalectl forget {self.ctx.clientname}'; otherwise give "
                              "this section a different 'client name'", path=self.ctx.config_path, section=self.ctx.name,
                              option="client name")

    def pullers(self) -> list[str]:
        return sorted(c for c, card in self.ctx.cards.items() if c != self.ctx.me and card.get("pulls"))

    def forget(self, view: RelayView, client_name: str) -> list[str]:
        """Remove the member card of a client that will not come back, so pushers stop
        waiting for its acknowledgements. If it does come back it re-registers and
        catches up from snapshots. Returns the ids removed."""
        self.read_cards(view, repair=False)
        removed = [cid for cid, card in self.ctx.cards.items() if card["name"] == client_name and cid != self.ctx.me]
        for cid in removed:  # its card, acks, requests, and the updates nobody will collect
            names = [i.name for i in self.ctx.relay.list() if signer_of(i.name) == cid and i.name != member_name(cid)]
            for name in sorted(names, key=lambda n: not n.startswith("u/")):
                self.ctx.relay.delete(name)
            self.ctx.relay.delete(member_name(cid))
        return removed

    def status(self, view: RelayView, held_deletes: int,
               to_take: Callable[[RelayView, str], int] | None = None) -> RepositoryStatus:
        """What the relay and our state say, without syncing (safe while a daemon runs);
        ``to_take(view, cid)``: updates a member has not acknowledged (escale.sync.acks)."""
        self.read_cards(view, repair=False)
        members = [MemberStatus(self.ctx.names.get(cid, "?") if cid in self.ctx.cards else "?",
                                printable(str(self.ctx.cards.get(cid, {}).get("mode", "?")), 16),
                                len(view.updates.get(cid, {})), cid == self.ctx.me, self._last_activity(view, cid),
                                cid, to_take(view, cid) if to_take is not None else None)
                   for cid in sorted(view.members)]
        try:
            storage = self.ctx.relay.usage()
        except EscaleError as exc:  # the space report is optional: status still answers
            log.info("%s: the relay does not tell its space: %s", self.ctx.name, exc)
            storage = None
        return RepositoryStatus(self.ctx.name, self.ctx.relay.address, self.ctx.repository_id, view.used,
                                self.ctx.tq.quota, members, self.ctx.state.want_count(), held_deletes, storage)

    def _last_activity(self, view: RelayView, cid: str) -> float | None:
        """The latest signed time of a member: its acknowledgements (rewritten at least
        every ACTIVITY_INTERVAL while it runs) and its newest update."""
        times = []
        info = view.acks.get(cid)
        ack = self.ctx.read_small(info.name, info) if info is not None else None
        if isinstance(ack, dict) and isinstance(ack.get("time"), (int, float)):
            times.append(float(ack["time"]))
        seqs = view.updates.get(cid, {})
        if seqs:
            name = update_name(cid, max(seqs))
            try:
                header, _digest, stream = self.ctx.store.open_framed(name, UPDATE_MAGIC)
                stream.close()
                times.append(float(header.get("time", 0)))
            except (IntegrityError, RelayObjectMissing, TypeError, ValueError) as exc:
                log.info("%s: cannot read %s for its time: %s", self.ctx.name, name, exc)
        return max(times) if times else None
