"""Following a repository that moved to another relay (``escalectl migrate``).

A cycle that finds a notice ``n/<cid>`` on its relay (or, at connect, a relay with a
notice but no header any more) reads the newest one signed by a member whose key this
client pinned, for this repository (anything else is reported by name and ignored).
If this client's configuration reaches the new address — read again from its file, so
an edit counts without a restart — and that relay holds exactly the header this client
pinned, it carries its own late objects over (it is their only writer), records the
move (state alias, configuration edited in place) and switches. Otherwise the
repository stops syncing with a relay error (exit 2) saying what to change.
Protocol: docs/protocol.md, "Moving to another relay".
"""
from __future__ import annotations

import json
import logging
import time

from ..errors import EscaleError, RelayError, RelayObjectMissing
from ..migrate import alias_state, copy_object, newest_notice, public_address
from ..protocol import HEADER_NAME, Notice, RelayView, signer_of
from ..relay.base import Relay
from .context import Repo

log = logging.getLogger(__name__)


class RelayMoved(RelayError):
    """The repository moved to a relay this client cannot reach with its configuration
    (exit code 2); the message says what to change."""


class Moves:
    """Reads move notices and switches the repository's relay."""

    def __init__(self, ctx: Repo, members):
        self.ctx, self.members = ctx, members

    def instead_of_header(self, view: RelayView) -> bool:
        """At connect (``view``: its listing): the relay holds a notice but no header (the
        repository moved and the old relay was cleared). True if this client switched
        (connect again)."""
        ctx = self.ctx
        if view.header is not None or ctx.state.get("repository_header") is None:
            return False
        if not view.notices:
            return False
        self.members.open_pinned_header()
        return self.follow(view)

    def newest(self, view: RelayView) -> tuple[str, Notice] | None:
        return newest_notice(self.ctx, (i.name for i in view.notices.values()), self.ctx.problem)

    def follow(self, view: RelayView) -> bool:
        """Switch to the relay a valid notice names (True: the caller reconnects), or
        raise RelayMoved saying what to change."""
        ctx = self.ctx
        found = self.newest(view)
        if found is None:
            return False
        name, notice = found
        if public_address(notice.relay).rstrip("/") == public_address(ctx.relay.address).rstrip("/"):
            return False
        writer = ctx.name_of(signer_of(name) or "")
        section, options, target = None, {}, None
        try:
            if ctx.section is None:
                raise RelayError("no configuration file to find its credentials in")
            section, target, options = ctx.section.moved(notice.relay)
            target.open()
            try:
                with target.get(HEADER_NAME) as s:
                    header = json.loads(s.read())
            except RelayObjectMissing:
                raise RelayError(f"no repository header on {notice.relay} yet") from None
            if json.dumps(header, sort_keys=True) != ctx.state.get("repository_header"):
                raise RelayError(f"{notice.relay} holds another repository header than the one this client pinned")
        except (EscaleError, OSError, ValueError) as exc:
            if target is not None:
                target.close()
            if section is not None:
                try:  # an edited configuration then finds this client's identity
                    alias_state(ctx, section.relay_url)
                except (OSError, EscaleError) as err:
                    log.warning("%s: %s", ctx.name, err)
            where = f"in {ctx.config_path} " if ctx.config_path else ""
            raise RelayMoved(f"{ctx.name}: the repository moved to {notice.relay} (notice {name}, signed by "
                             f"{writer}, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(notice.time))}), and "
                             f"this client cannot use it with its configuration ({exc}). Set 'relay address = "
                             f"{notice.relay}' {where}in section [{ctx.name}], with the credentials of that relay "
                             "(user, password or the backend's options); syncing resumes once it can be "
                             "reached") from None
        carried = self.carry_over(ctx.relay, target)
        old = ctx.relay
        ctx.relay = target
        ctx.store.relay = target
        try:
            old.close()
        except Exception:  # closing must not stop the switch
            log.debug("closing the old relay", exc_info=True)
        ctx.section.record_move(ctx, section, options)
        ctx.section = section
        log.warning("%s: the repository moved to %s (notice %s, signed by %s): switched%s", ctx.name,
                    notice.relay, name, writer, f", {carried} object(s) of this client carried over" if carried else "")
        return True

    def carry_over(self, old: Relay, new: Relay) -> int:
        """This client's own objects still on the old relay (written after the migrating
        client's last listing) go to the new one — it is their only writer, so nothing of
        another client is touched — and its updates collected meanwhile leave the new one."""
        ctx = self.ctx
        me = ctx.me
        mine_old = {i.name: i for i in old.list() if signer_of(i.name) == me and not i.name.startswith("n/")}
        mine_new = {i.name: i for i in new.list() if signer_of(i.name) == me}
        moved = 0
        for name in sorted(mine_old, key=lambda n: n.startswith("u/")):  # large files before their update
            try:
                copy_object(old, new, name, ctx.state_dir)
            except RelayObjectMissing:
                continue
            old.delete(name)
            moved += 1
        pending = {p.seq for p in ctx.state.published()}
        for name in mine_new:
            parts = name.split("/")
            if name not in mine_old and parts[0] in ("u", "b") and int(parts[2]) not in pending \
                    and int(parts[2]) <= ctx.state.own_seq:
                new.delete(name)  # collected after the copy: it must not reappear
        return moved
