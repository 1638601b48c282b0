"""``streamflow demo``: the whole loop on the embedded default, from an empty ``STREAMFLOW_HOME``.

Three generated months go through ``streamflow monthly`` one by one, as the monthly workflow would run them:

1. ``month_000`` — no model yet: ingest, snapshot, Feast apply + materialize, train, gate: the first model becomes
   ``production``; then the predictor and the transformer start on loopback;
2. ``month_001`` — a calm month: Evidently finds little drift, the model still ranks well: NO_ACTION, and a v2
   request through the transformer is answered by version 1;
3. ``month_002`` — generated with strong drift on purpose (usage and price move, a share of DSL users go to fibre,
   and the reasons to churn change): RETRAIN, the challenger trained on it beats the champion and is promoted, and
   the running predictor picks it up by itself — the next v2 request reports the new version.

Each month ends with its retention list (``streamflow score``, inside ``monthly``); the demo ends by showing the
drifted month's top five and where its CSV is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipelines.config import Settings
from pipelines.db import connect
from pipelines.errors import StreamflowError
from pipelines.generate import generate, parse_drift
from pipelines.monthly import run_monthly
from pipelines.status import collect_status

# the drift month: five features moved and a new churn model (see pipelines/generate.py)
DRIFT = ("watch_hours_30d=-0.4", "avg_session_mins_7d=-0.4", "rebuffer_events_7d=1.0", "monthly_fee=0.3",
         "net_service=0.5")  # fmt: skip
CONCEPT_SHIFT = 0.7
DEMO_POLL_SECONDS = 1.0


def run_demo(settings: Settings, *, users: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Generate three months under ``STREAMFLOW_HOME/data`` and run them through the loop (see the module doc).

    Returns:
        The stored state (:func:`pipelines.status.collect_status`), each month's ``monthly`` result, both v2
        answers (before and after the drift month) and the last month's list (``score``).
    """
    from model_server.local import LocalServers, curl_line

    data_dir = settings.home / "data"
    log(f"generating 3 months of {users:,} users into {data_dir} (month_002 drifted on purpose)")
    generated = generate(
        data_dir,
        users=users,
        months=3,
        seed=seed,
        drift=[parse_drift(d) for d in DRIFT],
        drift_start=2,
        concept_shift=CONCEPT_SHIFT,
    )
    first, calm, drifted = (m.folder for m in generated.months)
    # the demo's servers check the registry every second, so the promotion shows within the demo
    serving = settings.model_copy(update={"model_poll_seconds": min(settings.model_poll_seconds, DEMO_POLL_SECONDS)})
    servers = LocalServers(serving)
    db = connect(settings)
    try:
        months = [run_monthly(settings, db, first, log=log).to_json()]
        log(
            f"starting the predictor (:{settings.predictor_http_port}) and the transformer "
            f"(:{settings.transformer_http_port}) on {settings.serve_host}"
        )
        servers.launch()
        months.append(run_monthly(settings, db, calm, log=log).to_json())
        # users active in month_001 who stay for month_002 (churners leave), so both answers are for the same people
        survivors = db.query(
            "SELECT user_id FROM labels WHERE as_of = ? AND NOT churn_label ORDER BY user_id LIMIT 3",
            (generated.months[1].as_of,),
        )["user_id"].tolist()
        servers.wait_ready()
        before = servers.infer(survivors)
        log(f"v2 answer from model version {before['model_version']} (calm month: production unchanged)")
        months.append(run_monthly(settings, db, drifted, log=log).to_json())
        after = _wait_for_version(servers, survivors, months[-1]["production_version"])
        log(f"v2 answer from model version {after['model_version']}: the predictor swapped models without a restart")
        return collect_status(db) | {
            "months_run": months,
            # the drifted month's retention list, scored by monthly with the model promoted that month
            "score": months[-1]["score"],
            "serve": {
                "request_user_ids": survivors,
                "before": before,
                "response": after,
                "curl": curl_line(settings, survivors),
            },
        }
    finally:
        servers.stop()
        db.close()


def _wait_for_version(servers, user_ids: list[str], version: str, timeout: float = 60.0) -> dict[str, Any]:
    """Ask until the answer comes from ``version`` (the predictor polls the registry)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = servers.infer(user_ids)
        if answer["model_version"] == version:
            return answer
        if time.monotonic() > deadline:
            raise StreamflowError(
                f"the predictor still serves version {answer['model_version']} {timeout:.0f} s after version "
                f"{version} became production (see {servers.log_dir})"
            )
        time.sleep(0.2)
