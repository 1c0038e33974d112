"""Every seed that sampling derives, in one place: the noise of a completion depends only on (seed, step, round,
its row in the step's global batch), so 1 or N ranks and a resumed run sample alike, whatever engine samples.

    step_seed(seed, step, round)   a GRPO step's generation round (and, for rounds > 0, its prompt draw)
    complete_seed(seed, start)     an evaluation / rejection-sampling batch starting at prompt `start`
    request_seed(seed, row)        a vLLM request: one per row of the global batch
    turn_seed(seed, turn)          a tool trajectory's turn (multi-turn rollouts)
`RowNoise` carries a generate call's seed with the rows it samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RowNoise:
    """The sampling noise of one generate call: rows of a global batch of `total_rows` whose noise is seeded by
    `seed`; this call samples `rows` (global indices) when given, else the rows from `first_row` on."""

    seed: int
    total_rows: int
    first_row: int = 0
    rows: tuple[int, ...] | None = None

    def global_rows(self, count: int) -> list[int]:
        """The global row of each of this call's `count` completions."""
        return list(self.rows) if self.rows is not None else list(range(self.first_row, self.first_row + count))

    def for_rows(self, seed: int, rows: list[int]) -> RowNoise:
        """The same global batch, another seed, these rows (a tool trajectory's next turn)."""
        return replace(self, seed=seed, first_row=0, rows=tuple(rows))


def step_seed(seed: int, step: int, round_: int = 0) -> int:
    return (seed * 1_000_003 + step) * 101 + round_


def complete_seed(seed: int, start: int) -> int:
    return seed * 7919 + start


def request_seed(seed: int, row: int) -> int:
    """A positive 31-bit int, as vLLM takes it."""
    return (seed * 1_000_003 + row * 7_919 + 1) % (2**31 - 1)


def turn_seed(seed: int, turn: int) -> int:
    return seed * 31 + turn
