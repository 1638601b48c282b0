"""``streamflow data generate``: realistic synthetic months in the course's CSV format.

Each month folder holds the six files of ../shared/DATA_CONTRACT.md. Users carry a persistent latent engagement
that drives usage; churn is drawn from a logistic model with non-linear terms and interactions (tenure curve,
contract, fibre x rebuffering, low watch time, failed payments as a step, slow support), one of whose inputs
(contract_type) is not a model feature, so a model reaches a realistic ROC AUC (about 0.8), not a perfect one.
Churners of month N are gone from month N+1, survivors age by a month, and new users join.

Drift knobs act on months with index >= ``drift_start``; features are changed before labels are drawn, so labels
stay consistent with the drifted features (covariate drift); ``churn_shift`` moves the churn log-odds (target
drift). Everything is drawn from generators seeded by (seed, month): the same arguments write the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import InvalidInput
from pipelines.months import as_of_for_index, month_dir_name
from pipelines.tables import CONTRACT_TYPES, NET_SERVICES, RAW_TABLES

NUMERIC_FEATURES = (
    "months_active",
    "monthly_fee",
    "watch_hours_30d",
    "avg_session_mins_7d",
    "unique_devices_30d",
    "skips_7d",
    "rebuffer_events_7d",
    "failed_payments_90d",
    "support_tickets_90d",
    "ticket_avg_resolution_hrs_90d",
)
INT_FEATURES = frozenset(
    {
        "months_active",
        "unique_devices_30d",
        "skips_7d",
        "rebuffer_events_7d",
        "failed_payments_90d",
        "support_tickets_90d",
    }
)
BOOL_FEATURES = ("paperless_billing", "plan_stream_tv", "plan_stream_movies")
DRIFTABLE = (*NUMERIC_FEATURES, *BOOL_FEATURES, "net_service")
ADD_ONS = ("add_on_security", "add_on_backup", "add_on_device_protect", "add_on_support")

# Each month's intercept is solved so that, before any drift, the month churns at the course data's rate.
BASE_CHURN_RATE = 0.24
_LETTERS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)


@dataclass(frozen=True)
class DriftSpec:
    """Shift one feature: numeric ×(1 + shift); boolean: move a share |shift| to True (>0) or False (<0);
    ``net_service``: move a share ``shift`` of DSL users to Fiber optic."""

    feature: str
    shift: float


@dataclass(frozen=True)
class MonthSummary:
    folder: Path
    as_of: date
    users: int
    churn_rate: float


@dataclass(frozen=True)
class GenerateResult:
    months: list[MonthSummary]


def parse_drift(spec: str) -> DriftSpec:
    """Parse ``FEATURE=SHIFT`` as given to ``--drift``.

    Raises:
        InvalidInput: no ``=``, an unknown feature, or a shift that is not a number.
    """
    match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*=\s*(\S+)\s*", spec)
    if not match:
        raise InvalidInput(f"--drift {spec!r}: expected FEATURE=SHIFT, e.g. watch_hours_30d=-0.4")
    feature, raw = match.groups()
    if feature not in DRIFTABLE:
        raise InvalidInput(f"--drift {spec!r}: unknown feature {feature!r}; choose one of {', '.join(DRIFTABLE)}")
    try:
        shift = float(raw)
    except ValueError:
        raise InvalidInput(f"--drift {spec!r}: shift {raw!r} is not a number") from None
    if not np.isfinite(shift) or (feature not in NUMERIC_FEATURES and not -1 <= shift <= 1):
        raise InvalidInput(f"--drift {spec!r}: shift {raw!r} out of range (a share in [-1, 1] for {feature})")
    if feature in NUMERIC_FEATURES and shift <= -1:
        raise InvalidInput(f"--drift {spec!r}: shift {raw!r} would make {feature} negative (need > -1)")
    return DriftSpec(feature, shift)


# ------------------------------------------------------------------------------------------------ users


def _new_ids(rng: np.random.Generator, n: int, taken: set[str]) -> np.ndarray:
    """Unique ids in the course style (``7590-VHVEG``), none of them already ``taken``."""
    out: list[str] = []
    while len(out) < n:
        k = int((n - len(out)) * 1.05) + 16
        raw = np.empty((k, 10), dtype=np.uint8)
        raw[:, :4] = rng.integers(ord("0"), ord("9") + 1, size=(k, 4), dtype=np.uint8)
        raw[:, 4] = ord("-")
        raw[:, 5:] = _LETTERS[rng.integers(0, 26, size=(k, 5))]
        for uid in raw.view("S10").ravel().astype(str):
            if uid not in taken:
                taken.add(uid)
                out.append(uid)
                if len(out) == n:
                    break
    return np.array(out, dtype=object)


def _new_users(rng: np.random.Generator, n: int, as_of: date, taken: set[str], joining: bool) -> pd.DataFrame:
    """Profiles of ``n`` users; ``joining`` users signed up during the month of ``as_of``."""
    if joining:
        months_active = rng.integers(0, 2, n)
        days_back = rng.integers(0, 28, n)
    else:
        # tenure like the course data: many new users, a long tail up to 72 months, a bump of old loyal ones
        months_active = np.where(rng.random(n) < 0.12, rng.integers(60, 73, n), np.minimum(rng.exponential(22, n), 72))
        months_active = months_active.astype(np.int64)
        days_back = months_active * 30 + rng.integers(0, 30, n)
    net = rng.choice(np.array(NET_SERVICES, dtype=object), n, p=[0.34, 0.44, 0.22])
    internet = net != "No"
    # long-tenure users tend to hold longer contracts
    p_long = np.clip(0.15 + months_active / 100, 0, 0.8)
    u = rng.random(n)
    contract = np.where(
        u < 1 - p_long, CONTRACT_TYPES[0], np.where(u < 1 - p_long / 2, CONTRACT_TYPES[1], CONTRACT_TYPES[2])
    )
    tv = rng.random(n) < 0.49
    movies = rng.random(n) < 0.50
    fee = np.where(net == "Fiber optic", 70.0, np.where(net == "DSL", 45.0, 20.0))
    fee = fee + internet * (10.0 * tv + 10.0 * movies) + rng.normal(0, 4, n)
    fee = np.clip(fee, 18.25, 118.75)
    frame = pd.DataFrame(
        {
            "user_id": _new_ids(rng, n, taken),
            "signup_date": [as_of - timedelta(days=int(d)) for d in days_back],
            "user_gender": rng.choice(np.array(["Male", "Female"], dtype=object), n),
            "user_is_senior": rng.random(n) < 0.16,
            "has_family": rng.random(n) < 0.48,
            "has_dependents": rng.random(n) < 0.30,
            "months_active": months_active,
            "contract_type": contract,
            "net_service": net,
            "tv": tv,
            "movies": movies,
            "paperless_billing": rng.random(n) < 0.59,
            "monthly_fee": fee,
            "total_paid": np.maximum(months_active * fee * rng.normal(1.0, 0.05, n), 0.0),
            "engagement": rng.normal(0, 1, n),
            "pay_risk": rng.gamma(1.0, 0.12, n),
        }
    )
    for i, name in enumerate(ADD_ONS):
        frame[name] = rng.random(n) < (0.29 + 0.05 * i)
    return frame


def _usage(rng: np.random.Generator, users: pd.DataFrame) -> None:
    """Draw this month's usage, payments and support from each user's latent state (in place)."""
    n = len(users)
    e = users["engagement"].to_numpy()
    net = users["net_service"].to_numpy()
    users["watch_hours_30d"] = np.exp(2.6 + 0.7 * e + rng.normal(0, 0.35, n))
    users["avg_session_mins_7d"] = 28.0 * np.exp(0.3 * e + rng.normal(0, 0.25, n))
    users["unique_devices_30d"] = np.clip(1 + rng.poisson(np.exp(-0.2 + 0.35 * e)), 1, 6)
    users["skips_7d"] = rng.poisson(np.exp(1.1 - 0.35 * e))
    rebuffer_rate = np.where(net == "DSL", 3.2, np.where(net == "Fiber optic", 1.6, 0.6))
    users["rebuffer_events_7d"] = rng.poisson(rebuffer_rate * rng.gamma(2.0, 0.5, n))
    users["failed_payments_90d"] = rng.poisson(users["pay_risk"].to_numpy() * 2.0)
    tickets = rng.poisson(0.35 + 0.12 * users["rebuffer_events_7d"].to_numpy())
    users["support_tickets_90d"] = tickets
    users["ticket_avg_resolution_hrs_90d"] = np.where(tickets > 0, rng.gamma(2.0, 9.0, n), 0.0)


def _apply_drift(rng: np.random.Generator, users: pd.DataFrame, drift: Sequence[DriftSpec]) -> None:
    for spec in drift:
        if spec.feature in NUMERIC_FEATURES:
            values = users[spec.feature].to_numpy(dtype=float) * (1 + spec.shift)
            if spec.feature in INT_FEATURES:
                values = np.maximum(np.rint(values), 1 if spec.feature == "unique_devices_30d" else 0)
                users[spec.feature] = values.astype(np.int64)
            else:
                users[spec.feature] = np.maximum(values, 0.01 if spec.feature == "monthly_fee" else 0.0)
        elif spec.feature == "net_service":
            move = (users["net_service"].to_numpy() == "DSL") & (rng.random(len(users)) < spec.shift)
            users.loc[move, "net_service"] = "Fiber optic"
        else:
            column = {"plan_stream_tv": "tv", "plan_stream_movies": "movies"}.get(spec.feature, spec.feature)
            target = spec.shift > 0
            move = rng.random(len(users)) < abs(spec.shift)
            users.loc[move, column] = target


def _calibrated_intercept(logit: np.ndarray, rate: float = BASE_CHURN_RATE) -> float:
    """The intercept b with mean(sigmoid(logit + b)) == rate (bisection; the mean is monotonic in b)."""
    low, high = -20.0, 20.0
    for _ in range(50):
        mid = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _churn_logit(users: pd.DataFrame) -> np.ndarray:
    """Churn log-odds without intercept: non-linear in tenure and watch time, with interactions."""
    tenure = users["months_active"].to_numpy(dtype=float)
    contract = users["contract_type"].to_numpy()
    fiber = users["net_service"].to_numpy() == "Fiber optic"
    rebuffer = users["rebuffer_events_7d"].to_numpy(dtype=float)
    watch = users["watch_hours_30d"].to_numpy(dtype=float)
    failed = users["failed_payments_90d"].to_numpy(dtype=float)
    tickets = users["support_tickets_90d"].to_numpy(dtype=float)
    slow = users["ticket_avg_resolution_hrs_90d"].to_numpy(dtype=float) > 24
    fee = users["monthly_fee"].to_numpy(dtype=float)
    return (
        0.9 * (contract == "Month-to-month")
        - 0.7 * (contract == "Two year")
        + 1.4 * np.exp(-tenure / 6.0)  # the first months are the riskiest
        + 1.4 * fiber * np.tanh(rebuffer / 3.0)  # fibre users do not forgive buffering
        + 1.8 * (watch < 6.0)
        + 0.7 * (watch < 12.0)
        + np.where(failed >= 2, 2.0, 0.7 * failed)
        + 0.6 * np.minimum(tickets, 4) * slow
        + 0.012 * (fee - 65.0)
        + 0.25 * users["paperless_billing"].to_numpy(dtype=float)
        + 0.3 * users["user_is_senior"].to_numpy(dtype=float)
    )


def _age(rng: np.random.Generator, users: pd.DataFrame) -> pd.DataFrame:
    """Survivors move one month on: tenure +1, one more fee paid, engagement and payment risk wander."""
    users = users.copy()
    n = len(users)
    users["months_active"] = users["months_active"] + 1
    users["total_paid"] = users["total_paid"] + users["monthly_fee"]
    users["engagement"] = 0.9 * users["engagement"] + rng.normal(0, 0.3, n)
    users["pay_risk"] = np.maximum(0.7 * users["pay_risk"] + rng.gamma(1.0, 0.036, n), 0.0)
    return users


# ------------------------------------------------------------------------------------------------ writing


def _write_month(folder: Path, users: pd.DataFrame, labels: np.ndarray, add_ons: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    internet = (users["net_service"] != "No").to_numpy()
    frame = users.assign(
        plan_stream_tv=pd.Series(users["tv"].to_numpy(), dtype=object).where(internet),
        plan_stream_movies=pd.Series(users["movies"].to_numpy(), dtype=object).where(internet),
        churn_label=labels,
    )
    for name in ADD_ONS:
        frame[name] = pd.Series(users[name].to_numpy(), dtype=object).where(internet)
    for table in RAW_TABLES:
        columns = [c.name for c in table.columns if not c.optional or add_ons]
        frame[columns].to_csv(folder / table.file_name, index=False)


def generate(
    out: Path,
    *,
    users: int = 7043,
    months: int = 2,
    seed: int = 42,
    drift: Sequence[DriftSpec] = (),
    drift_start: int = 1,
    churn_shift: float = 0.0,
    add_ons: bool = False,
    progress: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Write ``months`` month folders (``month_000`` …) under ``out``.

    Args:
        out: destination folder (created; existing month folders are overwritten).
        users: users in month_000 (later months: survivors plus newcomers, about as many).
        months: number of month folders.
        seed: the same seed and arguments write byte-identical files.
        drift: feature shifts applied to months with index >= ``drift_start``.
        drift_start: first month index the drift knobs act on.
        churn_shift: added to the churn log-odds of months >= ``drift_start`` (1.0 takes ~24 % to ~45 %).
        add_ons: also write the four optional ``add_on_*`` columns.
        progress: called with the month index after each month is written.

    Returns:
        One summary per month (folder, as_of, users, churn rate).

    Raises:
        InvalidInput: a count or index out of range.
    """
    if users < 1:
        raise InvalidInput(f"--users {users}: need at least 1 user")
    if months < 1:
        raise InvalidInput(f"--months {months}: need at least 1 month")
    if drift_start < 0:
        raise InvalidInput(f"--drift-start {drift_start}: must be >= 0")
    if not np.isfinite(churn_shift):
        raise InvalidInput(f"--churn-shift {churn_shift}: not a finite number")

    taken: set[str] = set()
    summaries: list[MonthSummary] = []
    population = pd.DataFrame()
    labels = np.zeros(0, dtype=bool)
    for index in range(months):
        rng = np.random.default_rng([seed, index])
        as_of = as_of_for_index(index)
        if index == 0:
            population = _new_users(rng, users, as_of, taken, joining=False)
        else:
            survivors = _age(rng, population[~labels])
            joining = int(round(int(labels.sum()) * rng.uniform(0.9, 1.1)))
            population = pd.concat([survivors, _new_users(rng, joining, as_of, taken, joining=True)], ignore_index=True)
        _usage(rng, population)
        intercept = _calibrated_intercept(_churn_logit(population))  # on the undrifted month
        active_drift = index >= drift_start
        if active_drift and drift:
            _apply_drift(rng, population, drift)
        logit = _churn_logit(population) + intercept + (churn_shift if active_drift else 0.0)
        labels = rng.random(len(population)) < 1.0 / (1.0 + np.exp(-logit))
        folder = out / month_dir_name(index)
        _write_month(folder, population, labels, add_ons)
        summaries.append(MonthSummary(folder, as_of, len(population), float(labels.mean())))
        if progress:
            progress(index)
    return GenerateResult(summaries)
