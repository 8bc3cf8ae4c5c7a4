"""Config loading: strict keys, clear messages, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import INGEST_SECTIONS, load_config
from pipeline.errors import MyriadError
from pipeline.training.config import ModelConfig

from .conftest import REPO_ROOT

QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _quickstart() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def test_every_shipped_config_validates() -> None:
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_quickstart_defaults() -> None:
    cfg = load_config(QUICKSTART)
    assert cfg.source.kind == "planet"
    assert cfg.time.n_times == 731 * 4  # 2000 is a leap year
    assert cfg.analysis_path == Path("runs/quickstart/analysis.zarr")


def test_unknown_key_is_named(tmp_path: Path) -> None:
    data = _quickstart()
    data["ingest"]["blok_size"] = 3
    with pytest.raises(MyriadError, match=r"ingest\.blok_size: unknown key"):
        load_config(_write(tmp_path, data))


def test_unknown_top_level_section_is_named(tmp_path: Path) -> None:
    data = _quickstart()
    data["ingset"] = {}
    with pytest.raises(MyriadError, match=r"ingset: unknown key"):
        load_config(_write(tmp_path, data))


def test_bad_value_is_named(tmp_path: Path) -> None:
    data = _quickstart()
    data["source"]["dt_seconds"] = -5
    with pytest.raises(MyriadError, match=r"source\.dt_seconds"):
        load_config(_write(tmp_path, data))


def test_unknown_channel_lists_known_codes(tmp_path: Path) -> None:
    data = _quickstart()
    data["channels"] = ["z500", "zz500"]
    with pytest.raises(MyriadError, match=r"zz500.*unknown name"):
        load_config(_write(tmp_path, data))


def test_unknown_source_kind(tmp_path: Path) -> None:
    data = _quickstart()
    data["source"] = {"kind": "satellite"}
    with pytest.raises(MyriadError, match=r"source"):
        load_config(_write(tmp_path, data))


def test_time_range_must_be_whole_steps(tmp_path: Path) -> None:
    data = _quickstart()
    data["time"]["end"] = "2001-12-31T17:00"
    with pytest.raises(MyriadError, match="whole number"):
        load_config(_write(tmp_path, data))


def test_chunk_must_divide_block(tmp_path: Path) -> None:
    data = _quickstart()
    data["ingest"] = {"block_size": 10, "chunk_time": 3}
    with pytest.raises(MyriadError, match="chunk_time"):
        load_config(_write(tmp_path, data))


def test_overrides_apply_before_validation() -> None:
    cfg = load_config(QUICKSTART, ["time.end=2000-01-31T18:00", "source.seed=7", "run_dir=/tmp/x"])
    assert cfg.source.seed == 7
    assert cfg.time.n_times == 31 * 4
    assert cfg.run_dir == Path("/tmp/x")
    with pytest.raises(MyriadError, match=r"source\.sede: unknown key"):
        load_config(QUICKSTART, ["source.sede=7"])
    with pytest.raises(MyriadError, match="KEY=VALUE"):
        load_config(QUICKSTART, ["source.seed"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(MyriadError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: [unclosed\n")
    with pytest.raises(MyriadError, match="invalid YAML"):
        load_config(bad)


def test_section_hash_tracks_content() -> None:
    a = load_config(QUICKSTART)
    b = load_config(QUICKSTART, ["statistics.start=2000-06-01T00:00"])
    c = load_config(QUICKSTART, ["source.seed=1"])
    assert a.section_hash(*INGEST_SECTIONS) == b.section_hash(*INGEST_SECTIONS)
    assert a.section_hash(*INGEST_SECTIONS) != c.section_hash(*INGEST_SECTIONS)
    assert a.section_hash("statistics") != b.section_hash("statistics")


def test_wind_vectors_pair_the_wind_components_or_say_why_not() -> None:
    channels = ["z500", "v500", "u850", "u500", "u10m", "v10m", "vo500"]
    assert ModelConfig(wind_vectors=True).hparams(channels, 0, 9, 16)["wind_pairs"] == [[3, 1], [4, 5]]
    assert "wind_pairs" not in ModelConfig().hparams(channels, 0, 9, 16)  # older checkpoints keep resuming
    with pytest.raises(MyriadError, match=r"no eastward/northward wind pair .* \['z500', 'u850', 'vo500'\]"):
        ModelConfig(wind_vectors=True).hparams(["z500", "u850", "vo500"], 0, 9, 16)
    with pytest.raises(MyriadError, match="needs model.bandlimit_output: true"):
        ModelConfig(wind_vectors=True, bandlimit_output=False).hparams(channels, 0, 9, 16)
