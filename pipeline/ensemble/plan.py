"""The member plan: which members an ensemble has, in which order, in which work units.

Members are checkpoints x (optional control + bred pairs x {+1, -1}) x
samples. Member indices run in this fixed order (checkpoint-major)::

    for checkpoint c in 0 .. C-1:
        [control (pair -1, sign 0)] x samples s = 0 .. S-1     if include_control
        for pair p in 0 .. P-1:
            for sign in (+1, -1):
                (p, sign, s) for s in 0 .. S-1

so with ``include_control`` member 0 is checkpoint 0's control, and the
members of a pair are neighbours. ``samples`` (S) > 1 is for stochastic
models (Spherical DYffusion's Monte Carlo dropout): the S samples of a bred
member start from the same state and differ only in their dropout noise,
so an ensemble spans model (checkpoints), initial-condition (bred pairs)
and sampling uncertainty.

Members are cut into contiguous *member blocks* of ``member_block`` members
(the last may be shorter; a block may span two checkpoints). A *work unit*
is one init time x one member block: the unit of scheduling, of writing
(one Zarr chunk per channel and lead time) and of completion.

Seeds: a member's bred-vector seed is
``member_seed(init_time, checkpoint, pair, BRED_VECTOR, base_seed=...)``,
so the + and - members of a pair share it (they share one bred vector);
its sampling seed (:meth:`EnsemblePlan.sampling_seed`) adds the sign and
the sample to the purpose, so every member draws its own dropout noise. Any
member can be regenerated from (init time, checkpoint, pair, sign, sample) alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from pipeline.ensemble.seeds import (
    BRED_VECTOR,
    CONTROL_PAIR,
    SAMPLING,
    InitTime,
    canonical_init_time,
    member_seed,
)
from pipeline.errors import MyriadError


@dataclass(frozen=True)
class Member:
    """One ensemble member.

    Attributes
    ----------
    index
        Position on the store's ``member`` dimension.
    checkpoint_index
        Index into :attr:`EnsemblePlan.checkpoints`.
    pair_index
        Bred pair, or :data:`pipeline.ensemble.seeds.CONTROL_PAIR` (-1) for the control.
    sign
        ``+1`` (x0 + dx), ``-1`` (x0 - dx) or ``0`` (control).
    sample
        Stochastic sample of the bred member, ``0 .. samples - 1``.
    """

    index: int
    checkpoint_index: int
    pair_index: int
    sign: int
    sample: int = 0

    @property
    def is_control(self) -> bool:
        return self.sign == 0


@dataclass(frozen=True)
class WorkUnit:
    """One init time x one member block: members ``[member_start, member_stop)``."""

    init_index: int
    block_index: int
    init_time: np.datetime64
    member_start: int
    member_stop: int

    @property
    def key(self) -> tuple[int, int]:
        """``(init_index, block_index)``: the unit's cell in the completion record."""
        return (self.init_index, self.block_index)

    @property
    def n_members(self) -> int:
        return self.member_stop - self.member_start

    def __str__(self) -> str:
        return f"init {np.datetime_as_string(self.init_time, unit='h')} members {self.member_start}-{self.member_stop - 1}"


@dataclass(frozen=True)
class EnsemblePlan:
    """Members, member blocks and work units of one ensemble.

    Parameters
    ----------
    init_times
        Initialisation times (sorted and made unique-checked here).
    checkpoints
        Checkpoint paths, in checkpoint-index order.
    n_pairs
        Bred pairs per checkpoint (each gives a +1 and a -1 member).
    include_control
        Give each checkpoint an unperturbed control member first.
    samples
        Stochastic samples per bred member (and control).
    member_block
        Members per block (the store's chunk size along ``member``).
    base_seed
        The run's seed, passed to :func:`member_seed`.
    """

    init_times: tuple[np.datetime64, ...]
    checkpoints: tuple[str, ...]
    n_pairs: int
    include_control: bool = False
    member_block: int = 32
    base_seed: int = 0
    samples: int = 1
    members: tuple[Member, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        times = [canonical_init_time(t) for t in self.init_times]
        if not times:
            raise MyriadError("ensemble plan: no init times")
        duplicates = sorted({str(t) for t in times if times.count(t) > 1})
        if duplicates:
            raise MyriadError(f"ensemble plan: init times given twice: {duplicates}")
        if not self.checkpoints:
            raise MyriadError("ensemble plan: no checkpoints")
        if min(self.n_pairs, self.member_block, self.samples) < 1:
            raise MyriadError(f"ensemble plan: n_pairs ({self.n_pairs}), member_block ({self.member_block}) "
                              f"and samples ({self.samples}) must be >= 1")
        object.__setattr__(self, "init_times", tuple(sorted(times)))
        object.__setattr__(self, "checkpoints", tuple(str(c) for c in self.checkpoints))
        object.__setattr__(self, "members", self._enumerate_members())

    @classmethod
    def build(
        cls,
        init_times: Sequence[InitTime],
        checkpoints: Sequence[str],
        n_pairs: int,
        include_control: bool = False,
        member_block: int = 32,
        base_seed: int = 0,
        samples: int = 1,
    ) -> "EnsemblePlan":
        """Plan from plain values (any init time form :func:`canonical_init_time` takes)."""
        return cls(tuple(init_times), tuple(checkpoints), n_pairs, include_control, member_block, base_seed, samples)

    def _enumerate_members(self) -> tuple[Member, ...]:
        members: list[Member] = []
        for checkpoint in range(len(self.checkpoints)):
            bred = [(CONTROL_PAIR, 0)] if self.include_control else []
            bred += [(pair, sign) for pair in range(self.n_pairs) for sign in (+1, -1)]
            for pair, sign in bred:
                for sample in range(self.samples):
                    members.append(Member(len(members), checkpoint, pair, sign, sample))
        return tuple(members)

    # ------------------------------------------------------------------ sizes

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def members_per_checkpoint(self) -> int:
        return (2 * self.n_pairs + int(self.include_control)) * self.samples

    @property
    def n_blocks(self) -> int:
        return -(-self.n_members // self.member_block)

    # ------------------------------------------------------------------ units

    def block_range(self, block_index: int) -> range:
        """Member indices of a block."""
        start = block_index * self.member_block
        return range(start, min(start + self.member_block, self.n_members))

    @cached_property
    def units(self) -> tuple[WorkUnit, ...]:
        """All work units, init-time-major then block order."""
        units = []
        for i, init_time in enumerate(self.init_times):
            for b in range(self.n_blocks):
                block = self.block_range(b)
                units.append(WorkUnit(i, b, init_time, block.start, block.stop))
        return tuple(units)

    def unit(self, init_index: int, block_index: int) -> WorkUnit:
        return self.units[init_index * self.n_blocks + block_index]

    def members_of(self, unit: WorkUnit) -> tuple[Member, ...]:
        return self.members[unit.member_start : unit.member_stop]

    def checkpoint_groups(self, unit: WorkUnit) -> list[tuple[int, tuple[Member, ...]]]:
        """The unit's members split by checkpoint, in member order: ``[(checkpoint, members), ...]``."""
        groups: list[tuple[int, tuple[Member, ...]]] = []
        for member in self.members_of(unit):
            if groups and groups[-1][0] == member.checkpoint_index:
                groups[-1] = (member.checkpoint_index, groups[-1][1] + (member,))
            else:
                groups.append((member.checkpoint_index, (member,)))
        return groups

    # ------------------------------------------------------------------ seeds

    def seed(self, member: Member, init_time: InitTime) -> int:
        """Seed of a member's bred pair at an init time (shared by its + and - members)."""
        return member_seed(init_time, member.checkpoint_index, member.pair_index, BRED_VECTOR, base_seed=self.base_seed)

    def sampling_seed(self, member: Member, init_time: InitTime) -> int:
        """Seed of a member's own sampling (dropout) noise: distinct for every member of an init time."""
        purpose = f"{SAMPLING}|sign={member.sign}|sample={member.sample}"
        return member_seed(init_time, member.checkpoint_index, member.pair_index, purpose, base_seed=self.base_seed)

    def seed_table(self) -> np.ndarray:
        """``(n_init, n_members)`` int64 seeds, the store's ``seed`` coordinate."""
        return np.array([[self.seed(m, t) for m in self.members] for t in self.init_times], dtype=np.int64)

    # ------------------------------------------------------------------ identity

    def describe(self) -> dict[str, Any]:
        """JSON-able description; two plans with equal descriptions are the same plan."""
        return {
            "init_times": [np.datetime_as_string(t, unit="s") for t in self.init_times],
            "checkpoints": list(self.checkpoints),
            "n_pairs": self.n_pairs,
            "include_control": self.include_control,
            "member_block": self.member_block,
            "samples_per_member": self.samples,
            "base_seed": self.base_seed,
        }
