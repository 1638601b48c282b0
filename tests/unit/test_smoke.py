"""`streamflow smoke`'s reading of an answer (pipelines/smoke.py), on the bodies the served path gives: which
bootstrap step an error answer means, and what a 200 answer must hold. The same against real servers:
tests/integration/test_serving.py."""

from __future__ import annotations

import pytest

from pipelines.config import Settings
from pipelines.errors import InvalidInput
from pipelines.smoke import SmokeFailed, check_answer, refusal, run_smoke

URL = "http://streamflow-churn.streamflow/"
NOT_READY = "Model with name streamflow-churn is not ready."


def answer(proba: list, labels: list, version: str | None = "3", where: str = "top") -> dict:
    body: dict = {
        "model_name": "streamflow-churn",
        "outputs": [
            {"name": "user_id", "datatype": "BYTES", "shape": [len(proba)], "data": ["a"] * len(proba)},
            {"name": "churn_probability", "datatype": "FP32", "shape": [len(proba)], "data": proba},
            {"name": "churn_label", "datatype": "INT64", "shape": [len(labels)], "data": labels},
        ],
    }
    if version is not None:
        body |= {"model_version": version} if where == "top" else {"parameters": {"model_version": version}}
    return body


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (503, {"error": NOT_READY}, "the predictor has no model loaded yet (HTTP 503: " + NOT_READY),
        # the transformer's 502 naming its predictor's 503
        (502, {"error": f"predictor p: http://p/v2/models/m/infer: HTTP 503: {NOT_READY}"}, "no model loaded"),
        (422, {"error": "missing features: no prediction was made", "missing_features": {"0000-NOONE": ["x"]}},
         "user ids unknown to the online store (0000-NOONE): run the ingest workflow (ingest → snapshot → "
         "materialize) for month_000"),
        (502, {"error": "predictor p.streamflow: http://p/v2/models/m/infer: unreachable (refused)"},
         f"{URL} answered HTTP 502: predictor p.streamflow"),
        (404, "404 page not found", f"{URL} answered HTTP 404: 404 page not found"),
    ],
    ids=["predictor-503", "transformer-502-of-503", "unknown-ids", "predictor-down", "not-json"],
)  # fmt: skip
def test_an_error_answer_names_the_missing_step(status: int, body, expected: str) -> None:
    assert expected in refusal(URL, status, body, ["0000-NOONE"])


@pytest.mark.parametrize("where", ["top", "parameters"])
def test_a_good_answer_gives_its_version_probabilities_and_labels(where: str) -> None:
    version, proba, labels = check_answer(answer([0.25, 1.0], [0, 1], where=where), ["a", "b"], {"production": "3"})
    assert (version, proba, labels) == ("3", [0.25, 1.0], [0, 1])


def test_any_of_several_aliases_may_answer() -> None:
    assert check_answer(answer([0.5], [1], "4"), ["a"], {"production": "3", "challenger": "4"})[0] == "4"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (answer([0.2], [0]), "churn_probability: expected 2 values (one per user id), got 1 values"),
        (answer([0.2, 1.5], [0, 1]), "churn_probability outside [0, 1]: [1.5]"),
        (answer([0.2, float("nan")], [0, 1]), "churn_probability outside [0, 1]: [nan]"),
        (answer([0.2, 0.3], [0, 2]), "churn_label must be 0 or 1"),
        (answer([0.2, 0.3], [0, 1], version=None), "names no model_version"),
        (answer([0.2, 0.3], [0, 1], version="2"), "answered by model version 2, but the registry says production = "
                                                   "version 3: a promotion the predictor has not picked up yet"),
        ({"error": "?"}, "the answer is not a v2 response"),
        ({"outputs": [{"name": "churn_label", "data": [0, 1]}]}, "churn_probability: expected 2 values"),
    ],
    ids=["count", "range", "nan", "label", "no-version", "version-mismatch", "not-v2", "missing-output"],
)  # fmt: skip
def test_a_wrong_answer_says_what_is_wrong(body: dict, message: str) -> None:
    with pytest.raises(SmokeFailed) as err:
        check_answer(body, ["a", "b"], {"production": "3"})
    assert message in str(err.value)
    assert err.value.exit_code == 1


@pytest.mark.parametrize(
    ("url", "ids", "message"),
    [
        ("localhost:8080", ["a"], "--url 'localhost:8080': expected http://host[:port][/path]"),
        ("http://g/", [], "give at least one --user-id"),
        ("http://g/", ["a", " "], "give at least one --user-id (and no blank one)"),
    ],
)
def test_bad_input_is_refused_before_asking_anyone(url: str, ids: list[str], message: str, tmp_path) -> None:
    with pytest.raises(InvalidInput) as err:
        run_smoke(Settings(home=tmp_path, mlflow_tracking_uri="http://127.0.0.1:9"), url, ids)
    assert message in str(err.value) and err.value.exit_code == 2
