"""Space cost of padding (docs/threat-model.md, docs/format.md): relay bytes of an
update of 5,000 small files and of the snapshot describing them, with padding on and
off (aes256gcm), through the real CLI on a file:// relay; and the exact relay size of
a 500 MB file's object (the cipher's own size formula, which the tests check).

    python bench/bench_padding.py /tmp/somewhere
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster import Cluster  # noqa: E402

from escale.encryption import StreamCipher  # noqa: E402


def run(base: Path, padding: bool, sizes: list[int]) -> dict[str, int]:
    cl = Cluster(base)
    pw = base / "pw"
    pw.parent.mkdir(parents=True, exist_ok=True)
    pw.write_text("measure\n")
    pw.chmod(0o600)
    extra = f"passphrase = {pw}\npadding = {'on' if padding else 'off'}\n"
    a, b = cl.add("a", extra=extra), cl.add("b", extra=extra)
    b.once()
    rnd = random.Random(1)
    for i, size in enumerate(sizes):
        a.write(f"d{i // 500:02d}/f{i:05d}.bin", rnd.randbytes(size))
    a.once()
    objs = cl.relay_objects()
    update = sum(v for k, v in objs.items() if k.startswith("u/"))
    cl.round("b", "a")  # b acknowledges; a writes its snapshot and collects
    objs = cl.relay_objects()
    snapshot = sum(v for k, v in objs.items() if k.startswith("s/"))
    cards = [v for k, v in objs.items() if k.startswith("m/")]
    return {"update": update, "snapshot": snapshot, "card": max(cards), "data": sum(sizes)}


def main() -> None:
    base = Path(sys.argv[1])
    for label, sizes in (("5000 x 4 KiB", [4096] * 5000),
                         ("5000 x 0-8 KiB", [random.Random(i).randrange(8192) for i in range(5000)])):
        off = run(base / f"{label}-off".replace(" ", ""), False, sizes)
        on = run(base / f"{label}-on".replace(" ", ""), True, sizes)
        for what in ("update", "snapshot", "card"):
            print(f"{label:16} {what:9} off {off[what]:>10} on {on[what]:>10} "
                  f"+{100 * (on[what] - off[what]) / off[what]:.2f} %")
    key = os.urandom(32)
    on, off = StreamCipher(key, padding=True), StreamCipher(key, padding=False)
    for size in (500_000_000, 500 << 20, 4 << 20, 5_000_000):
        print(f"file of {size} bytes: off {off.size_on_relay(size)} on {on.size_on_relay(size)} "
              f"+{100 * (on.size_on_relay(size) - off.size_on_relay(size)) / off.size_on_relay(size):.2f} %")


if __name__ == "__main__":
    main()
