"""The servers' command lines, parsed by their real parsers (no server started): the args a Kubernetes manifest
renders must parse to what the pod needs, and a misspelled flag must stop the pod, not be ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_server import predictor, transformer
from pipelines.config import Settings

# what the chart's InferenceServices render (k8s-spec.md, "Server commands")
PREDICTOR_ARGS = "--model_name streamflow-churn --http_port 8080 --grpc_port 8081 --host 0.0.0.0 --alias production"
TRANSFORMER_ARGS = (
    "--model_name streamflow-churn --predictor_host streamflow-champion-predictor.streamflow --predictor_protocol v2 "
    "--http_port 8080 --grpc_port 8081 --host 0.0.0.0"
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, model_poll_seconds=7)


def test_predictor_parses_the_charts_args(settings: Settings) -> None:
    args = predictor.build_parser(settings).parse_args(PREDICTOR_ARGS.split())
    assert (args.model_name, args.http_port, args.grpc_port, args.host) == ("streamflow-churn", 8080, 8081, "0.0.0.0")
    assert (args.alias, args.registered_model, args.poll_seconds) == ("production", "streamflow_churn", 7)
    assert args.workers == 1 and args.enable_grpc


def test_transformer_parses_the_charts_args(settings: Settings) -> None:
    args = transformer.build_parser(settings).parse_args(TRANSFORMER_ARGS.split())
    assert (args.model_name, args.http_port, args.grpc_port, args.host) == ("streamflow-churn", 8080, 8081, "0.0.0.0")
    assert (args.predictor_host, args.predictor_protocol) == ("streamflow-champion-predictor.streamflow", "v2")
    assert args.max_batch_size == settings.max_batch_size


def test_defaults_are_the_embedded_layout(settings: Settings) -> None:
    args = predictor.build_parser(settings).parse_args([])
    assert (args.http_port, args.grpc_port, args.host, args.alias) == (8082, 8083, "127.0.0.1", "production")
    args = transformer.build_parser(settings).parse_args([])
    assert (args.http_port, args.predictor_host, args.predictor_protocol) == (8080, "127.0.0.1:8082", "v2")


@pytest.mark.parametrize("module", [predictor, transformer], ids=["predictor", "transformer"])
@pytest.mark.parametrize(
    "bad",
    [["--htpp_port", "8080"], ["--http", "8080"], ["--model-name", "x"], ["serve"]],
    ids=["misspelled", "abbreviated", "dashes-for-underscores", "positional"],
)
def test_an_unknown_flag_is_an_error(module, bad: list[str], settings: Settings, capsys) -> None:
    """KServe's own parser (a parent here) only parse_known_args at import: ours must refuse what it ignores."""
    with pytest.raises(SystemExit) as exit_:
        module.build_parser(settings).parse_args(bad)
    assert exit_.value.code == 2
    assert bad[0] in capsys.readouterr().err
