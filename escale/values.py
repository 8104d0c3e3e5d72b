"""Text values of options that both the configuration and the relay backends read:
booleans, sizes and the ``verify ssl`` setting.

It sits below both (it imports neither), so that a backend can check its own options
without importing :mod:`escale.config`, which imports the backends.
"""
from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation

_TRUE = {"yes", "on", "true", "1"}
_FALSE = {"no", "off", "false", "0"}


def parse_bool(text: str) -> bool:
    """yes/no, on/off, true/false, 1/0, in any case."""
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError("expected yes/no, on/off, true/false or 1/0")


_SIZE_UNITS: dict[str, Decimal] = {"": Decimal(10**6), "B": Decimal(1)}
for _exp, _letter in enumerate("KMGTP", start=1):
    for _u in (_letter, _letter + "B", _letter + "o"):
        _SIZE_UNITS[_u] = Decimal(10 ** (3 * _exp))
    _SIZE_UNITS[_letter + "iB"] = Decimal(1024**_exp)
    _SIZE_UNITS[_letter + "b"] = Decimal(10 ** (3 * _exp)) / 8  # bits, as escale 0.7 read them
_SIZE_UNITS.update({"k": Decimal(10**3), "kB": Decimal(10**3)})
_SIZE_RE = re.compile(r"^\s*(\d+(?:[.,]\d*)?|[.,]\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``500MB``, ``1,5 GB``, ``2GiB`` or ``5`` (a bare number is MB).

    Units are case-sensitive: ``MB``/``Mo``/``M`` are 10**6 bytes, ``MiB`` is
    2**20, and a lowercase ``b`` means bits (``Mb`` = 125 000 bytes), as in 0.7.
    Raises ValueError on anything else.
    """
    if not isinstance(text, str):
        raise ValueError("a size must be text")
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (expected a number and a unit such as 500MB or 2GiB)")
    number, unit = m.groups()
    if unit not in _SIZE_UNITS:
        units = ", ".join(u for u in _SIZE_UNITS if u)
        raise ValueError(f"unknown size unit {unit!r} (known units: {units})")
    try:
        value = Decimal(number.replace(",", "."))
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise ValueError(f"not a number: {number!r}") from exc
    return int((value * _SIZE_UNITS[unit]).to_integral_value())


def parse_verify_ssl(text: str | bool | None) -> bool | str:
    """``verify ssl``: a strict boolean, or the path of an existing CA bundle (file or folder).

    One parser for every backend, so a typo such as ``flase`` is an error everywhere
    instead of a CA-bundle path somewhere. Empty or None means yes. Raises ValueError.
    """
    if text is None or text is True or text is False:
        return True if text is None else text
    t = str(text).strip()
    if not t:
        return True
    if t.lower() in _TRUE:
        return True
    if t.lower() in _FALSE:
        return False
    path = os.path.expanduser(t)
    if not os.path.exists(path):
        raise ValueError(f"'{t}' is neither yes/no (on/off, true/false, 1/0) nor an existing CA bundle file "
                         "or folder")
    return path
