"""EngineConfig's fields as flags (engine/config.py): every field has one, every spelling the
flags ever had still works (on the command line and in --config files), and --mesh and
--sharding-rules pass the same checks in every entry point that builds an engine."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import sweep, throughput
from engine.args import build_parser, parse_args
from engine.config import EngineConfig, add_engine_flags, checked_engine_config, engine_config


def test_every_engine_config_field_is_a_flag() -> None:
    dests = {action.dest for action in build_parser()._actions}
    assert {field.name for field in dataclasses.fields(EngineConfig)} - dests == set()


def test_the_flags_defaults_are_the_engine_configs() -> None:
    assert engine_config(parse_args([])) == EngineConfig()


@pytest.mark.parametrize(("argv", "field", "value"), [
    (["--kv-cache-memory", "4G"], "kv_cache_memory_bytes", 4 * 2**30),
    (["--kv-cache-memory-bytes", "1k"], "kv_cache_memory_bytes", 1000),
    (["--skip-warmup"], "precompile", False),
    (["--no-precompile"], "precompile", False),
    (["--no-compilation-cache"], "compilation_cache_dir", None),
    (["--compilation-cache-dir", "/tmp/jax"], "compilation_cache_dir", "/tmp/jax"),
    (["--token-buckets", "16,64"], "token_bucket_ladder", (16, 64)),
    (["--token-bucket-ladder", "32"], "token_bucket_ladder", (32,)),
    (["--seq-buckets", "4,8"], "seq_bucket_ladder", (4, 8)),
    (["--no-use-checkpoint-cache"], "use_checkpoint_cache", False),
    (["--no-async-scheduling"], "async_scheduling", False),
    (["--block-size", "32"], "block_size", 32),
])
def test_every_spelling_reaches_its_field(argv: list[str], field: str, value: object) -> None:
    assert getattr(engine_config(parse_args(argv)), field) == value


def test_config_files_take_every_spelling(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("kv-cache-memory: 2K\nskip-warmup: true\ncompilation-cache-dir: /tmp/jax\n"
                    "token_buckets: 16,64\nno-compilation-cache: false\n")
    config = engine_config(parse_args(["--config", str(path)]))
    assert (config.kv_cache_memory_bytes, config.precompile, config.compilation_cache_dir,
            config.token_bucket_ladder) == (2048, False, "/tmp/jax", (16, 64))


def _throughput(argv: list[str]) -> object:
    parser = throughput.build_parser()
    return checked_engine_config(parser, parser.parse_args(argv))


ENTRY_POINTS: list[Callable[[list[str]], object]] = [parse_args, _throughput]


@pytest.mark.parametrize("parse", ENTRY_POINTS, ids=["engine.serve", "benchmarks.throughput"])
@pytest.mark.parametrize(("argv", "message"), [
    (["--mesh", "pp=2"], "unknown mesh axis 'pp'"),
    (["--sharding-rules", "nosuch"], "unknown sharding rules 'nosuch'"),
    (["--mesh", "tp=2", "--sharding-rules", "nosuch"], "unknown sharding rules 'nosuch'"),
    (["--mesh", "tp=4", "-tp", "2"], "--tensor-parallel-size 2 disagrees with --mesh tp=4"),
    (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization must be in (0, 1]"),
])
def test_one_check_for_every_entry_point(parse: Callable[[list[str]], object], argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("config", "message"), [
    (EngineConfig(mesh="pp=2"), "unknown mesh axis 'pp'"),
    (EngineConfig(sharding_rules="nosuch"), "unknown sharding rules 'nosuch'"),
])
def test_the_engine_runs_the_same_check(config: EngineConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_a_benchmark_sets_its_own_defaults_and_fields() -> None:
    args = sweep.parse_args(["--meshes", "tp=1", "--max-num-seqs", "8"])
    config = engine_config(args)
    assert (config.load_format, config.compilation_cache_dir, config.max_num_seqs) == ("dummy", None, 8)
    with pytest.raises(SystemExit):
        sweep.parse_args(["--meshes", "pp=2"])


def test_help_shows_a_benchmarks_own_default() -> None:
    parser = argparse.ArgumentParser()
    add_engine_flags(parser, defaults={"max_model_len": 4096}, only=("max_model_len",))
    assert "(default: 4096)" in parser.format_help() and "--max-num-seqs" not in parser.format_help()
