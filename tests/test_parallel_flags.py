"""vLLM's ``--tensor-parallel-size/-tp`` and ``--data-parallel-size/-dp`` as spellings of ``--mesh``."""

from __future__ import annotations

import argparse

import pytest

from engine.args import parse_args
from engine.config import EngineConfig, add_engine_flags, engine_config
from sharding.mesh import combine_mesh_flags


@pytest.mark.parametrize(("argv", "mesh"), [
    (["-tp", "2"], "tp=2"),
    (["--tensor-parallel-size", "4"], "tp=4"),
    (["-dp", "2"], "dp=2"),
    (["-dp", "2", "-tp", "2"], "dp=2,tp=2"),
    (["--mesh", "tp=2"], "tp=2"),
    (["--mesh", "tp=2", "-tp", "2"], "tp=2"),
    (["--mesh", "dp=2,tp=2", "-dp", "2"], "dp=2,tp=2"),
    (["-tp", "1"], None),
    ([], None),
])
def test_sizes_become_the_mesh(argv: list[str], mesh: str | None) -> None:
    assert parse_args(argv).mesh == mesh


def test_tp_flag_and_mesh_make_the_same_engine_config() -> None:
    by_size = engine_config(parse_args(["MODEL", "-tp", "2"]))
    by_mesh = engine_config(parse_args(["MODEL", "--mesh", "tp=2"]))
    assert by_size == by_mesh and by_size.mesh_spec() == "tp=2"


@pytest.mark.parametrize(("argv", "words"), [
    (["--mesh", "tp=4", "-tp", "2"], ["--tensor-parallel-size 2 disagrees with --mesh tp=4", "tp=4"]),
    (["--mesh", "dp=2,tp=2", "--data-parallel-size", "4"], ["--data-parallel-size 4 disagrees"]),
    (["--mesh", "tp=2", "-dp", "2"], ["--data-parallel-size 2 disagrees", "dp=1"]),
    (["-tp", "0"], ["--tensor-parallel-size must be a positive integer"]),
])
def test_disagreeing_flags_are_clear_errors(argv: list[str], words: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err


def test_llm_keyword_and_its_disagreement() -> None:
    assert EngineConfig(tensor_parallel_size=4).mesh_spec() == "tp=4"
    assert EngineConfig(data_parallel_size=2, tensor_parallel_size=2).mesh_spec() == "dp=2,tp=2"
    assert EngineConfig(mesh="tp=4", tensor_parallel_size=4).mesh_spec() == "tp=4"
    with pytest.raises(ValueError, match="disagrees with --mesh tp=4"):
        EngineConfig(mesh="tp=4", tensor_parallel_size=2).validate()
    with pytest.raises(ValueError, match="positive integer"):
        combine_mesh_flags(None, -1, None)


def test_entry_points_with_the_engine_flags_accept_the_sizes() -> None:
    parser = argparse.ArgumentParser()
    add_engine_flags(parser)
    assert engine_config(parser.parse_args(["-tp", "4", "-dp", "2"])).mesh == "dp=2,tp=4"
    with pytest.raises(ValueError, match="disagrees"):
        engine_config(parser.parse_args(["--mesh", "tp=8", "-tp", "4"]))
