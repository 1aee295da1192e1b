"""Log sequence numbers: PostgreSQL's ``X/Y`` text form and plain ints."""

from __future__ import annotations

__all__ = ["format_lsn", "parse_lsn"]


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` → 97500059720."""
    try:
        high, low = text.split("/")
        value = (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r} (expected 'X/Y' in hex)") from None
    if not 0 <= value < 1 << 64:
        raise ValueError(f"LSN out of range: {text!r}")
    return value


def format_lsn(value: int) -> str:
    """97500059720 → ``"16/B374D848"``."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
