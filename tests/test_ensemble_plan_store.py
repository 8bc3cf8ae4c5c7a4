"""Member plan, ensemble store schema, completion record, reruns and the background writer."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from pipeline.data.channels import channel_attrs
from pipeline.ensemble.config import EnsembleConfig
from pipeline.ensemble.plan import EnsemblePlan, WorkUnit
from pipeline.ensemble.seeds import BRED_VECTOR, member_seed
from pipeline.ensemble.store import AsyncLeadWriter, EnsembleStore
from pipeline.errors import MyriadError
from pipeline.grid import Grid

GRID = Grid(9, 16)
CHANNELS = ["z500", "t850", "tcwv"]
INITS = ["2000-01-02T00:00", "2000-01-01T12:00"]
CHECKPOINTS = ["runs/x/checkpoints/sfno/seed-0/best.pt", "runs/x/checkpoints/sfno/seed-1/best.pt"]
LEADS = [timedelta(hours=6 * k) for k in range(4)]


def _plan(**overrides: object) -> EnsemblePlan:
    kwargs: dict[str, object] = {"n_pairs": 2, "include_control": True, "member_block": 4}
    kwargs.update(overrides)
    return EnsemblePlan.build(INITS, CHECKPOINTS, **kwargs)  # type: ignore[arg-type]


def _lead_data(unit: WorkUnit, lead: int) -> np.ndarray:
    """Recognisable values: init index, member, lead and channel are all encoded."""
    members = np.arange(unit.member_start, unit.member_stop, dtype=np.float32)[:, None, None, None]
    channels = np.arange(len(CHANNELS), dtype=np.float32)[None, :, None, None]
    field = np.linspace(0, 1, GRID.nlat * GRID.nlon, dtype=np.float32).reshape(1, 1, GRID.nlat, GRID.nlon)
    return (1000 * unit.init_index + 100 * lead + 10 * channels + members + field).astype(np.float32)


def _run_units(store: EnsembleStore, fail_at: tuple[int, int, int] | None = None) -> list[tuple[int, int]]:
    """What the generator does: every pending unit, every lead, then mark it (optionally 'crash')."""
    written = []
    for unit in store.pending_units():
        written.append(unit.key)
        for lead in range(len(LEADS)):
            if fail_at == (*unit.key, lead):
                raise RuntimeError("killed")
            store.write_lead(unit, lead, _lead_data(unit, lead))
        store.mark_complete(unit)
    return written


# ------------------------------------------------------------------ plan


def test_member_order_blocks_and_units() -> None:
    plan = _plan()
    layout = [(m.checkpoint_index, m.pair_index, m.sign) for m in plan.members]
    assert layout == [
        (0, -1, 0), (0, 0, 1), (0, 0, -1), (0, 1, 1), (0, 1, -1),
        (1, -1, 0), (1, 0, 1), (1, 0, -1), (1, 1, 1), (1, 1, -1),
    ]
    assert [m.index for m in plan.members] == list(range(10))
    assert all(m.sample == 0 for m in plan.members)
    assert plan.members_per_checkpoint == 5 and plan.n_blocks == 3
    assert [str(t) for t in plan.init_times] == ["2000-01-01T12:00:00", "2000-01-02T00:00:00"]  # sorted
    assert [(u.key, u.member_start, u.member_stop) for u in plan.units] == [
        ((0, 0), 0, 4), ((0, 1), 4, 8), ((0, 2), 8, 10),
        ((1, 0), 0, 4), ((1, 1), 4, 8), ((1, 2), 8, 10),
    ]
    groups = plan.checkpoint_groups(plan.unit(0, 1))
    assert [(c, [m.index for m in ms]) for c, ms in groups] == [(0, [4]), (1, [5, 6, 7])]
    without_control = EnsemblePlan.build(INITS, CHECKPOINTS, n_pairs=64, member_block=32)
    assert without_control.n_members == 256 and without_control.members[0].sign == 1


def test_seeds_are_deterministic_and_shared_within_a_pair() -> None:
    plan, again = _plan(), _plan()
    table = plan.seed_table()
    assert table.dtype == np.int64 and table.shape == (2, 10)
    assert np.array_equal(table, again.seed_table())
    # plan.members[3] is checkpoint 0, pair 1, +1
    assert table[1, 3] == member_seed("2000-01-02T00:00", 0, 1, BRED_VECTOR)
    assert table[0, 3] == table[0, 4]  # + and - of one pair share the bred vector
    assert len({table[0, 1], table[0, 3], table[0, 6], table[0, 8], table[1, 1]}) == 5
    assert not np.array_equal(table, _plan(base_seed=7).seed_table())


def test_plan_rejects_bad_input() -> None:
    with pytest.raises(MyriadError, match="init times given twice"):
        EnsemblePlan.build(["2000-01-01T00", "2000-01-01T00:00"], CHECKPOINTS, n_pairs=1)
    with pytest.raises(MyriadError, match="no checkpoints"):
        EnsemblePlan.build(INITS, [], n_pairs=1)


def test_config_builds_the_plan_and_forbids_unknown_keys() -> None:
    config = EnsembleConfig.model_validate(
        {"checkpoints": CHECKPOINTS, "init_times": INITS, "n_pairs": 2, "include_control": True, "member_block": 4,
         "perturbation": {"seed_channels": ["z500", "t850"]}}
    )
    assert config.plan() == _plan()
    assert config.perturbation.alpha == 0.35 and config.perturbation.cycles == 3
    assert config.store_path("runs/x") == Path("runs/x/ensembles/ensemble.zarr")
    with pytest.raises(ValueError, match="alpah"):
        EnsembleConfig.model_validate({"checkpoints": CHECKPOINTS, "init_times": INITS, "perturbation": {"alpah": 0.3}})
    with pytest.raises(ValueError, match="unknown name"):
        EnsembleConfig.model_validate({"checkpoints": CHECKPOINTS, "init_times": INITS, "output_channels": ["zz500"]})


# ------------------------------------------------------------------ store


def test_store_schema(tmp_path: Path) -> None:
    plan = _plan()
    path = tmp_path / "ensembles" / "demo.zarr"
    EnsembleStore.create(path, plan, CHANNELS, GRID, LEADS, content_key="abc", attrs={"model": "sfno"})
    ds = xr.open_zarr(path, consolidated=False)
    assert set(ds.data_vars) == {*CHANNELS, "unit_complete"}
    for name in CHANNELS:
        var = ds[name]
        assert var.dims == ("init_time", "member", "lead_time", "latitude", "longitude")
        assert var.dtype == np.float32 and var.shape == (2, 10, 4, 9, 16)
        assert var.encoding["chunks"] == (1, 4, 1, 9, 16)
        assert var.encoding["compressors"][0].cname.value == "zstd"
        for key, value in channel_attrs(name).items():
            assert var.attrs[key] == value
        assert np.isnan(var.values).all()  # nothing written yet
    assert ds["init_time"].values.tolist() == np.array(["2000-01-01T12", "2000-01-02T00"], dtype="datetime64[ns]").tolist()
    assert ds["lead_time"].dtype.kind == "m" and ds["lead_time"].values[0] == np.timedelta64(0)
    assert ds["valid_time"].dims == ("init_time", "lead_time")
    assert ds["valid_time"].values[1, 2] == np.datetime64("2000-01-02T12:00", "ns")
    assert ds["latitude"].values[0] == 90 and ds["latitude"].values[-1] == -90
    assert ds["member"].values.tolist() == list(range(10))
    assert ds["checkpoint"].dims == ("member",) and ds["checkpoint"].values.tolist() == [0] * 5 + [1] * 5
    assert ds["checkpoint"].attrs["paths"] == CHECKPOINTS
    assert ds["perturbation"].values.tolist() == [0, 1, -1, 1, -1] * 2
    assert ds["pair"].values.tolist() == [-1, 0, 0, 1, 1] * 2
    assert ds["seed"].dims == ("init_time", "member") and ds["seed"].dtype == np.int64
    assert np.array_equal(ds["seed"].values, plan.seed_table())
    assert ds["unit_complete"].dims == ("init_time", "member_block") and ds["unit_complete"].dtype == np.int8
    assert ds["unit_complete"].encoding["chunks"] == (1, 1) and int(ds["unit_complete"].sum()) == 0
    assert ds.attrs["model"] == "sfno" and json.loads(ds.attrs["myriad_layout"])["content_key"] == "abc"
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no partial leftovers


def test_completion_record_and_rerun_rewrites_only_partial_units(tmp_path: Path) -> None:
    plan = _plan()
    path = tmp_path / "e.zarr"
    store = EnsembleStore.create(path, plan, CHANNELS, GRID, LEADS)
    with pytest.raises(RuntimeError, match="killed"):
        _run_units(store, fail_at=(1, 0, 2))  # dies inside unit (1, 0) after two leads
    done = {(0, 0), (0, 1), (0, 2)}
    assert store.completed_units() == done
    assert [u.key for u in store.pending_units()] == [(1, 0), (1, 1), (1, 2)]
    partial = xr.open_zarr(path, consolidated=False)["z500"].isel(init_time=1, member=slice(0, 4))
    assert not np.isnan(partial.isel(lead_time=1).values).any() and np.isnan(partial.isel(lead_time=2).values).all()

    rerun = EnsembleStore.create(path, plan, CHANNELS, GRID, LEADS)  # same identity: reopened
    assert _run_units(rerun) == [(1, 0), (1, 1), (1, 2)]  # complete units skipped, the partial one rewritten
    assert _run_units(rerun) == []
    assert rerun.completed_units() == {(i, b) for i in range(2) for b in range(3)}

    clean = EnsembleStore.create(tmp_path / "clean.zarr", plan, CHANNELS, GRID, LEADS)
    _run_units(clean)
    resumed, reference = xr.open_zarr(path, consolidated=False), xr.open_zarr(tmp_path / "clean.zarr", consolidated=False)
    xr.testing.assert_identical(resumed.drop_attrs(), reference.drop_attrs())
    assert resumed["t850"].isel(init_time=1, member=9, lead_time=3).values[0, 0] == 1000 + 300 + 10 + 9


def test_reuse_with_another_plan_or_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.zarr"
    store = EnsembleStore.create(path, _plan(), CHANNELS, GRID, LEADS, content_key="k1")
    unit = store.plan.units[0]
    store.write_lead(unit, 0, _lead_data(unit, 0))
    store.mark_complete(unit)
    for kwargs, key in [
        ({"plan": _plan(n_pairs=3)}, "plan.n_pairs"),
        ({"plan": _plan(member_block=5)}, "plan.member_block"),
        ({"channels": CHANNELS[:2]}, "channels"),
        ({"grid": Grid(9, 18)}, "grid.nlon"),
        ({"lead_times": LEADS[:3]}, "lead_times_s"),
        ({"content_key": "k2"}, "content_key"),
        ({"shard_leads": 2}, "leads_per_shard"),
    ]:
        args = {"plan": _plan(), "channels": CHANNELS, "grid": GRID, "lead_times": LEADS, "content_key": "k1", **kwargs}
        with pytest.raises(MyriadError, match=rf"different plan/config \({key}: store has"):
            EnsembleStore.create(path, **args)  # type: ignore[arg-type]
    assert EnsembleStore.create(path, _plan(), CHANNELS, GRID, LEADS, content_key="k1").completed_units() == {(0, 0)}
    other = tmp_path / "other.zarr"
    other.mkdir()
    (other / "notes.txt").write_text("not a store")
    with pytest.raises(MyriadError, match="not a readable Zarr v3 store|not a Myriad ensemble store"):
        EnsembleStore.create(other, _plan(), CHANNELS, GRID, LEADS)
    with pytest.raises(MyriadError, match="lead times must start at 0"):
        EnsembleStore.create(tmp_path / "x.zarr", _plan(), CHANNELS, GRID, LEADS[1:])


def test_write_refuses_non_finite_values(tmp_path: Path) -> None:
    store = EnsembleStore.create(tmp_path / "e.zarr", _plan(), CHANNELS, GRID, LEADS)
    unit = store.plan.units[1]
    data = _lead_data(unit, 0)
    data[2, 1, 3, 3] = np.inf
    expected = r"non-finite values in init 2000-01-01T12 members 4-7, lead index 0, channels \['t850'\]"
    with pytest.raises(MyriadError, match=expected):
        store.write_lead(unit, 0, data)


# ------------------------------------------------------------------ background writer


@pytest.mark.parametrize(("shard_leads", "files_per_unit"), [(4, 1), (3, 2), (1, 4)])
def test_async_writer_writes_whole_shards_equal_to_per_lead_writes(tmp_path: Path, shard_leads: int, files_per_unit: int) -> None:
    """Shards of all 4 leads, of 3 (the last one holds one lead) and none: the same data, fewer files."""
    plan = _plan()
    sync_store = EnsembleStore.create(tmp_path / "sync.zarr", plan, CHANNELS, GRID, LEADS)
    _run_units(sync_store)
    store = EnsembleStore.create(tmp_path / "async.zarr", plan, CHANNELS, GRID, LEADS, shard_leads=shard_leads)
    assert store.leads_per_shard == shard_leads
    with AsyncLeadWriter(store, max_pending=2) as writer:
        for unit in plan.units:
            for lead in range(len(LEADS)):
                writer.submit(unit, lead, _lead_data(unit, lead))
            writer.complete(unit)
        writer.flush()
        assert store.completed_units() == {u.key for u in plan.units}
    stored = xr.open_zarr(tmp_path / "async.zarr", consolidated=False)
    assert stored["z500"].encoding["chunks"] == (1, plan.member_block, 1, GRID.nlat, GRID.nlon)  # readers read one lead
    xr.testing.assert_identical(stored.drop_attrs(), xr.open_zarr(tmp_path / "sync.zarr", consolidated=False).drop_attrs())
    files = [f for f in (tmp_path / "async.zarr" / "z500").rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert len(files) == files_per_unit * len(plan.units)


def test_async_writer_refuses_leads_out_of_order(tmp_path: Path) -> None:
    plan = _plan()
    store = EnsembleStore.create(tmp_path / "e.zarr", plan, CHANNELS, GRID, LEADS)
    unit = plan.units[0]
    writer = AsyncLeadWriter(store)
    writer.submit(unit, 0, _lead_data(unit, 0))
    writer.submit(unit, 2, _lead_data(unit, 2))
    with pytest.raises(RuntimeError, match="lead 2 submitted out of order"):
        writer.close()
    assert store.completed_units() == set()


def test_async_writer_propagates_errors_and_marks_nothing_after_them(tmp_path: Path) -> None:
    plan = _plan()
    store = EnsembleStore.create(tmp_path / "e.zarr", plan, CHANNELS, GRID, LEADS)
    first, second = plan.units[0], plan.units[1]
    writer = AsyncLeadWriter(store, max_pending=1)
    writer.submit(first, 0, _lead_data(first, 0)[:, :2])  # wrong channel count: fails on the thread
    writer.complete(first)
    with pytest.raises(ValueError, match="expected float32"):
        for lead in range(len(LEADS)):
            writer.submit(second, lead, _lead_data(second, lead))
    with pytest.raises(ValueError, match="expected float32"):
        writer.close()
    assert store.completed_units() == set()  # the failed unit was not marked complete

    bad = AsyncLeadWriter(store)
    data = _lead_data(second, 0)
    data[0, 0, 0, 0] = np.nan
    bad.submit(second, 0, data)
    with pytest.raises(MyriadError, match="non-finite"):
        bad.close()
    assert zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["unit_complete"][...].sum() == 0
