"""Integer level sets as data: ``(q_min, q_max)`` pairs, and the published table's notation.

Ternary ``[-1, 0, 1]`` is ``(-1, 1)``; 2-bit unsigned ``[0, 1, 2, 3]`` is ``(0, 3)``. Kept free of
torch so that the experiment tables and the report load without it.
"""

from __future__ import annotations

from lsq.errors import ConfigError

Levels = tuple[int, int]

TERNARY: Levels = (-1, 1)
UNSIGNED_2BIT: Levels = (0, 3)

def check_levels(q_min: int, q_max: int) -> Levels:
    """Validate an integer level range and return it as a ``(q_min, q_max)`` tuple."""
    for name, value in (("q_min", q_min), ("q_max", q_max)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer level, got {value!r}")
    if q_min >= q_max:
        raise ConfigError(f"q_min must be smaller than q_max, got q_min={q_min}, q_max={q_max}")
    if q_max < 1:
        raise ConfigError(
            f"Q_P = q_max must be at least 1 (the paper's grad scale and init divide by "
            f"sqrt(Q_P)), got q_max={q_max}"
        )
    if q_min > 0:
        raise ConfigError(f"q_min must be <= 0 so that zero is representable, got q_min={q_min}")
    return (q_min, q_max)


def signed_levels(bits: int, *, narrow: bool = False) -> Levels:
    """b-bit two's-complement levels ``[-2^(b-1), 2^(b-1) - 1]``; narrow drops the lowest.

    ``signed_levels(2, narrow=True) == TERNARY``.
    """
    if bits < 2:
        raise ConfigError(f"signed levels need at least 2 bits, got {bits}")
    q_max = 2 ** (bits - 1) - 1
    return check_levels(-q_max if narrow else -q_max - 1, q_max)


def unsigned_levels(bits: int) -> Levels:
    """b-bit unsigned levels ``[0, 2^b - 1]`` for post-ReLU activations."""
    if bits < 1:
        raise ConfigError(f"unsigned levels need at least 1 bit, got {bits}")
    return check_levels(0, 2**bits - 1)


def parse_levels(text: str | None) -> Levels | None:
    """Parse the published table's notation: ``"[-1,0,1]"`` -> ``(-1, 1)``; ``"none"`` -> None;
    a range too long to list as ``"[-128..127]"``."""
    if text is None or text.strip().lower() in ("none", "", "float"):
        return None
    body = text.strip().strip("[]")
    if ".." in body:
        low, _, high = body.partition("..")
        try:
            return check_levels(int(low), int(high))
        except ValueError:
            raise ConfigError(f"cannot parse level set {text!r}; expected e.g. '[-128..127]'") from None
    try:
        values = [int(part) for part in body.split(",")]
    except ValueError:
        raise ConfigError(f"cannot parse level set {text!r}; expected e.g. '[-1,0,1]' or 'none'")
    if values != list(range(values[0], values[-1] + 1)):
        raise ConfigError(f"level set {text!r} must list consecutive integers")
    return check_levels(values[0], values[-1])


def format_levels(levels: Levels | None) -> str:
    """Inverse of :func:`parse_levels`: ``(-1, 1)`` -> ``"[-1,0,1]"``."""
    if levels is None:
        return "none"
    if levels[1] - levels[0] >= LISTED_LEVELS:
        return f"[{levels[0]}..{levels[1]}]"
    return "[" + ",".join(str(v) for v in range(levels[0], levels[1] + 1)) + "]"


LISTED_LEVELS = 8  # up to 8 levels (3 bits) are written out as the seed table writes them
