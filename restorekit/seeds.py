"""Seeds on the command line: the range every seed option takes, and one parser for seed lists.

``torch.Generator.manual_seed`` takes 0 … 2**64 − 1 and raises an unexplained ``ValueError``
("Overflow when unpacking long long") beyond it; so every seed option (``run --seed``,
``realism --seed``, ``generate --seeds``, ``compare --seeds``) takes exactly that range, and a
value outside it is a usage error naming it. On the CPU, though, it keeps only a seed's low 32 bits
(seeds 1 and 2**32 + 1 drew the same noise): :func:`torch_seed` is what a user's seed is handed to
a CPU generator as. A list (``0-7,12``) is checked and
counted before any range is expanded: a command refuses more seeds than it runs in one go.
"""

from __future__ import annotations

import click

__all__ = ["SEED_MAX", "SEED", "MAX_SEEDS", "check_seed", "mix_seed", "torch_seed", "parse_seeds"]

#: The largest seed (torch's generators take 0 … 2**64 − 1).
SEED_MAX = 2**64 - 1

#: The click type of a single ``--seed``.
SEED = click.IntRange(0, SEED_MAX)

#: Default cap on the seeds of one ``--seeds`` list (``generate`` writes one image per seed).
MAX_SEEDS = 100_000


def check_seed(seed: int) -> None:
    """Raise :class:`click.BadParameter` for a seed outside 0 … :data:`SEED_MAX`."""
    if not 0 <= seed <= SEED_MAX:
        raise click.BadParameter(f"seed {seed} is out of range: seeds are 0 to {SEED_MAX}")


def mix_seed(*parts: int) -> int:
    """One seed (0 … :data:`SEED_MAX`) from several non-negative integers, each taken modulo 2**64:
    splitmix64's finaliser over them in order, so that nearby inputs give unrelated seeds and no
    two tuples are related by a simple shift (``(seed 1, key k)`` is not ``(seed 0, key k + c)``)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (part & SEED_MAX)) * 0xBF58476D1CE4E5B9 & SEED_MAX
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & SEED_MAX
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & SEED_MAX
        x ^= x >> 31
        x = (x + 0x9E3779B97F4A7C15) & SEED_MAX
    return x


def torch_seed(seed: int) -> int:
    """What to hand ``torch.Generator().manual_seed`` for a seed of 0 … :data:`SEED_MAX`: the seed
    itself below 2**32 (the noise every such seed drew before stays), else :func:`mix_seed` of it
    folded to 32 bits, so that seeds differing by a multiple of 2**32 no longer draw the same noise.

    A CPU generator's state is seeded from 32 bits only, so 2**32 streams exist in all: a seed at or
    above 2**32 draws what one seed below it draws, and two distinct ones collide about one pair in
    2**32 — unlikely, never ruled out."""
    if seed < 2**32:
        return seed
    x = mix_seed(seed)
    return (x ^ (x >> 32)) & 0xFFFFFFFF


def _int(text: str, part: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"'{part}' is not a seed or a range like 0-7") from None


def parse_seeds(text: str, *, limit: int = MAX_SEEDS) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``: seeds and inclusive ranges, comma-separated, repeats
    dropped (first kept). Raises :class:`click.BadParameter` (one line) for a word that is
    neither, a seed outside 0 … :data:`SEED_MAX`, a descending range, no seeds, or more than
    ``limit`` seeds — counted from the ranges' bounds, before any is expanded."""
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("-"):  # '-3' or '-3-5': a negative seed, not a range
            rest = part[1:].partition("-")
            check_seed(-_int(rest[0], part))
        lo, sep, hi = part.partition("-")
        a = _int(lo, part)
        b = _int(hi, part) if sep else a
        check_seed(a)
        check_seed(b)
        if b < a:
            raise click.BadParameter(f"'{part}': a range goes up ({b}-{a})")
        spans.append((a, b))
    if not spans:
        raise click.BadParameter("no seeds given")
    count = sum(b - a + 1 for a, b in spans)
    if count > limit:
        raise click.BadParameter(f"{count:,} seeds; at most {limit:,} in one run (split the job)")
    return list(dict.fromkeys(s for a, b in spans for s in range(a, b + 1)))
