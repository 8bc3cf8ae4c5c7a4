r"""The ensemble generator: bred members rolled out on the device, streamed to the store.

For each work unit (init time :math:`t_0` x member block) of the plan
(:mod:`pipeline.ensemble.plan`):

1. the unit's members are split by checkpoint; for each checkpoint the
   pairs the unit holds are bred once (:func:`pipeline.ensemble.bred_vectors.breed`,
   seeds from :func:`pipeline.ensemble.seeds.member_seed`) through the
   analyses before :math:`t_0`, and the members' initial states are
   :math:`x_0 + s_m \delta x_{p(m)}` (:func:`perturbed_states`, non-negative
   channels clipped);
2. each checkpoint's members advance as one batch, ``n_steps`` times,
   :math:`x_{k+1} = M(x_k)` (in the checkpoint's normalised space,
   :class:`pipeline.training.forecast.Forecaster`; bf16 autocast on CUDA with
   the SHT in float32, float32 on CPU) under :func:`torch.inference_mode`;
   a Spherical DYffusion checkpoint advances by its cold sampler. Each
   member draws its Monte Carlo dropout masks (if the model has any) from its
   own generator seeded by :meth:`pipeline.ensemble.plan.EnsemblePlan.sampling_seed`,
   so its noise does not depend on the batch it is computed in;
3. with ``ensemble.time_mean_hours`` the states are averaged over windows of
   ``k`` steps, :math:`\bar x_j = \frac1k \sum_{i=1}^{k} x_{(j-1)k+i}`
   (float32, on the device), and only the window means are stored;
4. lead 0 (the initial states) and every later lead go to the store through
   :class:`pipeline.ensemble.store.AsyncLeadWriter`, which gathers a shard's
   leads and writes it on a background thread while the next leads compute;
   only the output channels are kept; the unit is marked complete behind its
   last write.

Everything a unit's data depends on is fixed by the unit itself (its
members, their seeds, the checkpoints and the analyses), and the batches are
formed per unit, so a unit's bytes do not depend on which rank, process or
run computes it: ranks, reruns and regenerations agree bit for bit.

Ranks: rank 0 creates (or reopens) the store and lists the pending units of
the selected init times (complete units are skipped, partial ones
rewritten); rank ``r`` of ``W`` takes pending units ``r, r + W, ...``.

Threads (CPU): a process with ``T`` torch threads runs ``T`` units at a time,
each on its own thread with one intra-op thread (:func:`unit_workers`),
instead of one unit on ``T`` intra-op threads. The batches of an ensemble
member block are small for CPU kernels: their intra-op parallelism gains
little, and with more runnable threads than free cores (a shared machine)
its synchronisation collapses (measured on 2 shared cores: one SFNO step of
8 members took 2.6 s on 2 intra-op threads against 0.13 s on one). A unit is
therefore always computed by one thread on the CPU, so its bytes do not
depend on the thread count either.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.config import MyriadConfig
from pipeline.ensemble.bred_vectors import breed, perturbed_states
from pipeline.ensemble.inputs import (
    CheckpointCache,
    EnsembleInputs,
    ensemble_section,
    prepare_inputs,
    select_init_times,
)
from pipeline.ensemble.plan import Member, WorkUnit
from pipeline.ensemble.progress import MemberStepProgress, bar_wanted
from pipeline.ensemble.seed_field import SphericalSeedField
from pipeline.ensemble.seeds import InitTime, canonical_init_time
from pipeline.ensemble.store import AsyncLeadWriter, EnsembleStore
from pipeline.errors import MyriadError
from pipeline.training.distributed import DistributedContext
from pipeline.zarr_metadata import consolidate

logger = logging.getLogger(__name__)


@dataclass
class EnsembleRunResult:
    """What one process of an ensemble run did."""

    store_path: Path
    units_written: list[tuple[int, int]] = field(default_factory=list)
    """``(init_index, block_index)`` of the units this process wrote."""
    units_skipped: int = 0
    """Units of the selected init times that were already complete."""
    member_steps: int = 0
    seconds: float = 0.0

    @property
    def member_steps_per_second(self) -> float:
        return self.member_steps / self.seconds if self.seconds > 0 else 0.0


class MemberForecaster:
    """Initial states and rollouts of any members, for one process.

    Parameters
    ----------
    inputs
        The checked run inputs (:func:`prepare_inputs`).
    cache
        This process's models.
    """

    def __init__(self, inputs: EnsembleInputs, cache: CheckpointCache) -> None:
        self.inputs = inputs
        self.cache = cache
        self.device = cache.device
        self.seed_field: SphericalSeedField = inputs.settings.perturbation.build_seed_field(inputs.grid).to(self.device)
        self._output_index = torch.tensor(inputs.output_index, device=self.device)

    def initial_states(self, init_time: InitTime, checkpoint_index: int, members: Sequence[Member]) -> torch.Tensor:
        """``(M, C, H, W)`` initial states of members of one checkpoint (all model channels).

        The pairs among ``members`` are bred together in one call; controls get ``x0``.
        """
        inputs = self.inputs
        t0 = canonical_init_time(init_time)
        x0, breeding = inputs.frames.fields(t0)
        x0 = x0.to(self.device)
        forecaster = self.cache.get(inputs.checkpoint_files[checkpoint_index])
        pairs = sorted({m.pair_index for m in members if not m.is_control})
        dx = torch.zeros((len(members), *x0.shape), dtype=torch.float32, device=self.device)
        if pairs:
            member_of_pair = {m.pair_index: m for m in members}
            seeds = [inputs.plan.seed(member_of_pair[p], t0) for p in pairs]
            bred = breed(forecaster.step, breeding, inputs.targets[checkpoint_index], inputs.seed_mask, seeds,
                         self.seed_field, inputs.settings.perturbation.extratropics_deg,
                         times=inputs.frames.times_needed(t0)[:-1])
            position = {p: k for k, p in enumerate(pairs)}
            for row, member in enumerate(members):
                if not member.is_control:
                    dx[row] = bred[position[member.pair_index]]
        signs = torch.tensor([m.sign for m in members])
        return perturbed_states(x0, dx, signs, inputs.non_negative)

    def leads(self, init_time: InitTime, groups: Sequence[tuple[int, Sequence[Member]]]) -> Iterator[np.ndarray]:
        """Output channels of ``groups``' members at each stored lead (0, then every step or window mean): ``(M, C_out, H, W)`` float32.

        ``groups`` is ``[(checkpoint_index, members), ...]``; each group
        advances as one batch; the rows follow the groups' member order.
        """
        t0 = canonical_init_time(init_time)
        states = [self.initial_states(t0, c, members) for c, members in groups]
        yield self._to_host(self._output(states))
        plan = self.inputs.plan
        rollouts = [
            self.cache.get(self.inputs.checkpoint_files[c]).rollout(
                s, self.inputs.n_steps,
                [torch.Generator(self.device).manual_seed(plan.sampling_seed(m, t0)) for m in members], time=t0,
                constraint=self.inputs.constraints[c])
            for (c, members), s in zip(groups, states)
        ]
        window = self.inputs.steps_per_output
        for _ in range(self.inputs.n_steps // window):
            total = self._output([next(r) for r in rollouts])
            for _ in range(window - 1):
                total += self._output([next(r) for r in rollouts])
            yield self._to_host(total / window if window > 1 else total)

    def _output(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([s.index_select(1, self._output_index) for s in states]).float()

    @staticmethod
    def _to_host(out: torch.Tensor) -> np.ndarray:
        return out.to("cpu", torch.float32).numpy()


def generate_unit(forecaster: MemberForecaster, unit: WorkUnit, writer: AsyncLeadWriter, progress: MemberStepProgress,
                  progress_lock: threading.Lock | None = None) -> None:
    """Compute one work unit and queue its leads and its completion mark on ``writer``."""
    groups = forecaster.inputs.plan.checkpoint_groups(unit)
    lock = progress_lock or contextlib.nullcontext()
    for lead, data in enumerate(forecaster.leads(unit.init_time, groups)):
        writer.submit(unit, lead, data)
        if lead:
            with lock:
                progress.advance(unit.n_members * forecaster.inputs.steps_per_output)
    writer.complete(unit)


def unit_workers(device: torch.device) -> int:
    """Units computed at once by one process: its torch thread count on the CPU, 1 on an accelerator."""
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


@contextlib.contextmanager
def one_intra_op_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, torch's intra-op thread count set to 1 for the duration (restored after)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_units(forecaster: MemberForecaster, units: Sequence[WorkUnit], writer: AsyncLeadWriter,
              progress: MemberStepProgress, workers: int) -> list[tuple[int, int]]:
    """Compute ``units`` on ``workers`` threads (each takes the next unit when it is free); returns their keys.

    The first error stops the other threads after their current unit and is raised.
    """
    if workers <= 1 or len(units) <= 1:
        for unit in units:
            generate_unit(forecaster, unit, writer, progress)
        return [u.key for u in units]
    pending = iter(units)
    take, progress_lock = threading.Lock(), threading.Lock()
    done: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def work() -> None:
        with torch.inference_mode():  # grad modes are per thread
            while not errors:
                with take:
                    unit = next(pending, None)
                if unit is None:
                    return
                try:
                    generate_unit(forecaster, unit, writer, progress, progress_lock)
                except BaseException as exc:  # raised in the caller's thread below
                    errors.append(exc)
                    return
                with take:
                    done.append(unit.key)

    # each thread runs in a copy of the caller's context (logging inside a Prefect task keeps its run)
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work,), name=f"ensemble-unit-{k}", daemon=True)
               for k in range(min(workers, len(units)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sorted(done)


def single_process_context() -> DistributedContext:
    """Rank 0 of 1 on the first CUDA device, else the CPU."""
    device = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    return DistributedContext(0, 1, 0, device, None)


def _open_store(inputs: EnsembleInputs) -> EnsembleStore:
    return EnsembleStore.create(
        inputs.store_path, inputs.plan, inputs.output_channels, inputs.grid, inputs.lead_times,
        content_key=inputs.content_key, compression_level=inputs.settings.compression_level, attrs=inputs.store_attrs,
        shard_leads=inputs.settings.leads_per_shard,
    )


def _pending_on_every_rank(inputs: EnsembleInputs, units: list[WorkUnit], ctx: DistributedContext) -> tuple[EnsembleStore, list[WorkUnit]]:
    """Rank 0 creates the store and lists pending units; every rank gets the same list (or the same error)."""
    message: tuple[str, object]
    store = None
    if ctx.is_main:
        try:
            store = _open_store(inputs)
            message = ("ok", [u.key for u in store.pending_units(units)])
        except MyriadError as exc:
            message = ("error", str(exc))
    else:
        message = ("", None)
    status, payload = ctx.broadcast_object(message)
    if status == "error":
        raise MyriadError(str(payload))
    if store is None:
        store = _open_store(inputs)
    keys = {tuple(k) for k in payload}  # type: ignore[union-attr]
    return store, [u for u in units if u.key in keys]


def generate_ensemble(
    config: MyriadConfig,
    init_times: Sequence[InitTime] | None = None,
    ctx: DistributedContext | None = None,
    progress: bool | None = None,
) -> EnsembleRunResult:
    """Generate (or finish) the configured ensemble on this process's share of the work.

    Parameters
    ----------
    config
        Run config with an ``ensemble:`` section; the analysis store and the
        checkpoints (with their calibration) must exist.
    init_times
        Restrict the run to these of ``ensemble.init_times`` (default: all).
    ctx
        This process's rank and device (default: one process, first CUDA
        device or the CPU). Every rank of a torchrun job calls this.
    progress
        Show a progress bar (default: on rank 0 when stderr is a terminal;
        otherwise log lines).

    Returns
    -------
    EnsembleRunResult
        The store and what this process wrote.

    Raises
    ------
    MyriadError
        Bad or inconsistent inputs (before any compute or write), a store
        made for another plan, or non-finite states (the unit is not marked
        complete).
    """
    ctx = ctx or single_process_context()
    start = time.perf_counter()
    settings = ensemble_section(config)
    cache = CheckpointCache(ctx.device, settings.bf16, settings.compile, settings.dyffusion_sampler)
    inputs = prepare_inputs(config, cache)
    selected = set(select_init_times(inputs.plan, init_times))
    units = [u for u in inputs.plan.units if u.init_time in selected]
    store, pending = _pending_on_every_rank(inputs, units, ctx)
    mine = pending[ctx.rank :: ctx.world_size]
    result = EnsembleRunResult(store.path, units_skipped=len(units) - len(pending))
    total = sum(u.n_members for u in mine) * inputs.n_steps
    logger.info("ensemble %s: %d of %d units pending, %d on this rank (%d member-steps)",
                store.path.name, len(pending), len(units), len(mine), total)
    forecaster = MemberForecaster(inputs, cache)
    show_bar = bar_wanted(ctx.rank) if progress is None else progress and ctx.is_main
    workers = unit_workers(ctx.device)
    with torch.inference_mode(), MemberStepProgress(total, f"ensemble {store.path.name}", show_bar) as bar, \
            AsyncLeadWriter(store, inputs.settings.writer_queue * workers) as writer, one_intra_op_thread(ctx.device):
        result.units_written = run_units(forecaster, mine, writer, bar, workers)
        writer.flush()
        result.member_steps = bar.done
    ctx.barrier()
    result.seconds = time.perf_counter() - start
    if ctx.is_main:
        complete = len(store.completed_units())
        if complete == len(inputs.plan.units):
            consolidate(store.path)
        logger.info("ensemble %s: %d of %d units complete (%.1f member-steps/s on rank 0)",
                    store.path, complete, len(inputs.plan.units), result.member_steps_per_second)
    return result


def regenerate_member(config: MyriadConfig, init_time: InitTime, member_index: int, same_batch: bool = True,
                      cache: CheckpointCache | None = None) -> np.ndarray:
    """One member's forecast computed again from its seeds alone, without reading or writing the store.

    Parameters
    ----------
    config
        The run config of the ensemble.
    init_time
        One of ``ensemble.init_times``.
    member_index
        Position on the store's ``member`` dimension.
    same_batch
        Compute the member inside the batch the generator used (the members
        of its work unit that share its checkpoint), which reproduces the
        stored values bit for bit (on the CPU both use one intra-op thread);
        ``False`` computes it as a batch of one, equal up to floating-point
        reassociation in the model's kernels.
    cache
        Models already loaded in this process.

    Returns
    -------
    numpy.ndarray
        ``(n_leads, C_out, nlat, nlon)`` float32: the member's output channels
        at every lead time, as the store holds them.

    Raises
    ------
    MyriadError
        Bad inputs, an init time not in the plan or a member index out of range.
    """
    settings = ensemble_section(config)
    cache = cache or CheckpointCache(single_process_context().device, settings.bf16, settings.compile,
                                     settings.dyffusion_sampler)
    inputs = prepare_inputs(config, cache)
    plan = inputs.plan
    (t0,) = select_init_times(plan, [init_time])
    if not 0 <= member_index < plan.n_members:
        raise MyriadError(f"member {member_index}: the ensemble has members 0..{plan.n_members - 1}")
    member = plan.members[member_index]
    batch: tuple[Member, ...] = (member,)
    if same_batch:
        unit = plan.unit(plan.init_times.index(t0), member_index // plan.member_block)
        batch = dict(plan.checkpoint_groups(unit))[member.checkpoint_index]
    row = batch.index(member)
    with torch.inference_mode(), one_intra_op_thread(cache.device):
        leads = MemberForecaster(inputs, cache).leads(t0, [(member.checkpoint_index, batch)])
        return np.stack([lead[row] for lead in leads])
