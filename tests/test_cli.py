"""``python -m engine.serve`` / ``tessera serve`` flags: vLLM's names, sizes like 32k, --config files
(the command line wins), mesh validation, and the ``tessera`` entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import cli
from engine.args import parse_args
from engine.config import engine_config
from engine.config_flags import human_int, mesh_spec
from engine.serve import main as serve_main

VLLM_FLAGS = ("--model", "--tokenizer", "--served-model-name", "--host", "--port", "--dtype", "--max-model-len",
              "--max-num-seqs", "--max-num-batched-tokens", "--gpu-memory-utilization", "--block-size", "--seed",
              "--load-format", "--api-key", "--chat-template", "--generation-config", "--mesh", "--config",
              "--disable-log-requests", "--uvicorn-log-level", "--allowed-origins", "--allowed-methods",
              "--allowed-headers", "--allow-credentials", "--ssl-keyfile", "--ssl-certfile", "--root-path",
              "--trust-request-chat-template")


@pytest.mark.parametrize("text, value", [("4096", 4096), ("32k", 32_000), ("32K", 32_768), ("1.5K", 1536),
                                         ("2M", 2 * 2**20), ("1g", 10**9)])
def test_human_sizes(text: str, value: int) -> None:
    assert human_int(text) == value


@pytest.mark.parametrize("text", ["abc", "0", "1.5", "-4", "12 tokens"])
def test_bad_sizes_are_rejected(text: str) -> None:
    with pytest.raises(Exception, match="not a"):
        human_int(text)


@pytest.mark.parametrize("spec", ["tp=4", "dp=2,tp=2", "dp=2, tp=4"])
def test_mesh_specs(spec: str) -> None:
    assert mesh_spec(spec) == spec.replace(" ", "")


@pytest.mark.parametrize("spec", ["tp=abc", "tp", "tp=0", "tp=2,tp=2", "TP=2", "tp=2;dp=2"])
def test_bad_mesh_specs_are_clear_errors(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--mesh", spec])
    assert exit_info.value.code == 2
    assert "--mesh" in capsys.readouterr().err


def test_defaults_match_vllm() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.model, args.dtype, args.block_size) == ("0.0.0.0", 8000, None, "auto", 16)
    config = engine_config(args)
    assert config.model is None and config.max_num_seqs == 256 and config.gpu_memory_utilization == 0.9


def test_positional_model_and_flags_reach_the_engine_config() -> None:
    args = parse_args(["some/model", "--max-model-len", "2K", "--served-model-name", "a", "b", "--mesh", "tp=2",
                       "--no-enable-chunked-prefill", "--max-num-batched-tokens", "4k"])
    assert args.model == "some/model" and args.served_model_name == ["a", "b"]
    config = engine_config(args)
    assert (config.model, config.max_model_len, config.mesh) == ("some/model", 2048, "tp=2")
    assert config.enable_chunked_prefill is False and config.max_num_batched_tokens == 4000


def test_config_file_under_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("model: from/file\nmax-model-len: 4K\nport: 9000\nserved_model_name: [x, y]\n"
                    "disable-log-requests: true\nenable-chunked-prefill: false\nuvicorn-log-level: warning\n")
    args = parse_args(["--config", str(path), "--port", "9001"])
    assert args.port == 9001 and args.max_model_len == 4096 and args.model == "from/file"
    assert args.served_model_name == ["x", "y"] and args.disable_log_requests is True
    assert args.enable_chunked_prefill is False and args.uvicorn_log_level == "warning"
    assert parse_args(["cli/model", "--config", str(path)]).model == "cli/model"


def test_config_file_with_an_unknown_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("max-model-len: 4K\ntensor-parallel-sizee: 2\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    assert "unknown option 'tensor-parallel-sizee'" in capsys.readouterr().err


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_API_KEY", "from-env")
    assert parse_args([]).api_key == ["from-env"]
    assert parse_args(["--api-key", "flag"]).api_key == ["flag"]


def test_several_api_keys_never_become_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TESSERA_API_KEY", raising=False)
    args = parse_args(["--api-key", "k1", "k2", "--api-key", "k3"])
    assert args.api_key == ["k1", "k2", "k3"] and args.model is None
    assert parse_args(["model.gguf", "--api-key", "k1"]).model == "model.gguf"
    assert parse_args([]).api_key is None


def test_server_flags_of_vllm(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--allowed-origins", "https://a.example", "--root-path", "/tessera",
                       "--ssl-keyfile", "k.pem", "--ssl-certfile", "c.pem", "--trust-request-chat-template"])
    assert args.allowed_origins == ["https://a.example"] and args.root_path == "/tessera"
    assert args.trust_request_chat_template and args.metric_prefixes == ["vllm:", "tessera:"]
    with pytest.raises(SystemExit):
        parse_args(["--ssl-keyfile", "k.pem"])
    assert "go together" in capsys.readouterr().err


def test_tool_and_reasoning_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"])
    assert (args.tool_call_parser, args.reasoning_parser) == ("hermes", "qwen3")
    assert engine_config(args).reasoning_end == "</think>"  # the engine core leaves the thinking unconstrained
    assert engine_config(parse_args([])).reasoning_end is None
    with pytest.raises(SystemExit):
        parse_args(["--enable-auto-tool-choice"])
    assert "needs --tool-call-parser" in capsys.readouterr().err


def test_help_lists_vllms_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in VLLM_FLAGS:
        assert flag in text


def test_tessera_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("tessera ")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0 and "usage: tessera serve" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["nonsense"])
    assert exit_info.value.code == 2


def test_start_up_errors_exit_1_with_a_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert serve_main(["--model", str(tmp_path / "missing"), "--port", "0"]) == 1
    assert "not found" in caplog.text
    assert serve_main(["--chat-template", "no-such-template-file.jinja"]) == 1
    assert "neither a file nor a Jinja template" in caplog.text
