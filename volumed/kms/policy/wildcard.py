"""IAM wildcard matching (``*`` any run of characters, ``?`` exactly one) in time linear in the text.

One concern: decide ``match(pattern, text)`` for StringLike/ArnLike conditions, Action, Resource
and the audit log's principal filter without a backtracking regular expression. The regex this
replaces turned ``*a*a*a*a*a*a*a*a*b`` against a 46-character encryption-context value into
seconds of backtracking while the keystore's write lock was held (issue 13, item 5).

Method (pattern compiled once, cached):

- runs of ``*`` are one ``*``;
- no wildcard: string equality;
- only ``*``: the pieces between stars must appear in order; the first piece is anchored at the
  start, the last at the end, and each middle piece is found at its leftmost place after the
  previous one (``str.find``). Leftmost is always safe: any later occurrence leaves less text for
  the rest. One pass over the text;
- with ``?``: a bit-parallel NFA (shift-and). Bit i of the state means "the first i pattern
  characters matched a prefix of the text read so far"; each text character costs a constant
  number of operations on an integer of ``len(pattern)`` bits, so the total is
  O(len(text) * len(pattern) / 64) machine words, with no backtracking.

Lengths are bounded where requests enter (docs/POLICY.md): a policy document is at most 32 KB
(policy.MAX_POLICY_BYTES), an encryption context at most 8,192 characters
(awsmodel.MAX_ENCRYPTION_CONTEXT_CHARS), an ARN at most 2,048 (arn.MAX_ARN_LENGTH).
"""

from __future__ import annotations

import functools
import re
from typing import Any


# ("equal", text) | ("stars", pieces) | ("nfa", masks, default_mask, star_mask, final_bit)
_Compiled = tuple[Any, ...]


@functools.lru_cache(maxsize=2048)
def _compile(pattern: str) -> _Compiled:
    """("equal", text) | ("stars", pieces) | ("nfa", masks, default_mask, star_mask, final_bit)."""
    p = re.sub(r"\*+", "*", pattern)
    if "*" not in p and "?" not in p:
        return ("equal", p)
    if "?" not in p:
        return ("stars", tuple(p.split("*")))
    masks: dict[str, int] = {}
    qmask = star = 0
    for i, c in enumerate(p):
        bit = 1 << i
        if c == "*":
            star |= bit
        elif c == "?":
            qmask |= bit
        else:
            masks[c] = masks.get(c, 0) | bit
    masks = {c: m | qmask for c, m in masks.items()}
    return ("nfa", masks, qmask, star, 1 << len(p))


def _stars(pieces: tuple[str, ...], text: str) -> bool:
    first, last = pieces[0], pieces[-1]
    if len(first) + len(last) > len(text) or not text.startswith(first) or not text.endswith(last):
        return False
    pos, end = len(first), len(text) - len(last)
    for piece in pieces[1:-1]:
        at = text.find(piece, pos, end)
        if at < 0:
            return False
        pos = at + len(piece)
    return True


def _nfa(masks: dict[str, int], qmask: int, star: int, final: int, text: str) -> bool:
    state = 1
    state |= (state & star) << 1  # a leading * may match nothing (no two stars are adjacent)
    get = masks.get
    for ch in text:
        state = ((state & get(ch, qmask)) << 1) | (state & star)
        state |= (state & star) << 1
        if not state:
            return False
    return bool(state & final)


def match(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """Whether ``text`` matches the IAM wildcard ``pattern`` as a whole (``*``, ``?``; nothing else
    is special). ``ignore_case`` compares lower-cased (action names)."""
    if ignore_case:
        pattern, text = pattern.lower(), text.lower()
    compiled = _compile(pattern)
    kind = compiled[0]
    if kind == "equal":
        return bool(text == compiled[1])
    if kind == "stars":
        return _stars(compiled[1], text)
    return _nfa(compiled[1], compiled[2], compiled[3], compiled[4], text)
