"""``streamflow data generate``: realistic, deterministic synthetic months in the course's CSV format.

Each month folder holds the six files of ../shared/DATA_CONTRACT.md, written byte for byte as pandas'
``DataFrame.to_csv(index=False)`` would write them (``True``/``False``, empty cells for NULL, ISO dates, floats as
``repr``), but about three times faster: two months of a million users take about 11 s on two cores.

The population is a set of users with a hidden state (engagement, payment risk, support propensity, line quality,
contract, add-ons, household) that persists from month to month. Observable features are drawn from that state;
90-day aggregates are sums of three monthly draws, so consecutive months overlap the way real windows do. Churn is
drawn from a logistic model that is non-linear (tenure curve, low watch time, failed payments as a step) and has
interactions (fibre x rebuffering, tickets x resolution time); some of its inputs (contract, add-ons, household) are
not model features, so a model reaches a realistic ROC AUC (about 0.8), not a perfect one. The intercept of each
month is solved so that the undrifted month churns at the course data's rate (about 24 %). Churners of month N are
gone from month N+1, survivors age by a month, and about as many new users join.

Drift knobs act on months with index >= ``drift_start``. They change the written features before labels are drawn,
so labels stay consistent with the drifted features (covariate drift); ``churn_shift`` moves the intercept so that
the log-odds of the month's base churn rate move by that much (target drift: 1.0 takes 24 % to 46 %);
``concept_shift`` blends the churn model with a different one (concept drift: the same features, new reasons to
leave — a model trained before the shift loses ranking quality although no feature distribution moved). Drift is
applied to a copy of each month, never to the carried state, so it does not compound from month to month, and it
picks the same users every month (a persistent per-user key), so a user moved to fibre stays on fibre. Randomness
comes from one generator per month seeded by ``(seed, month)``: the same arguments write the same bytes, and months
before ``drift_start`` are identical with or without drift.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

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
INT_FEATURES = (
    "months_active",
    "unique_devices_30d",
    "skips_7d",
    "rebuffer_events_7d",
    "failed_payments_90d",
    "support_tickets_90d",
)
BOOL_FEATURES = ("paperless_billing", "plan_stream_tv", "plan_stream_movies")
# The 14 model features: every one of them can be drifted.
DRIFTABLE = (*NUMERIC_FEATURES[:2], *BOOL_FEATURES, "net_service", *NUMERIC_FEATURES[2:])
ADD_ONS = ("add_on_security", "add_on_backup", "add_on_device_protect", "add_on_support")

# The course data's churn rate; each undrifted month is calibrated to it.
BASE_CHURN_RATE = 0.24

_DSL, _FIBER, _NO_NET = 0, 1, 2  # indexes into NET_SERVICES
_MONTH_TO_MONTH, _ONE_YEAR, _TWO_YEAR = 0, 1, 2  # indexes into CONTRACT_TYPES
_PLAN_COLUMNS = {"plan_stream_tv": "tv", "plan_stream_movies": "movies"}  # contract name -> state name
_WRITE_CHUNK_ROWS = 200_000
_ID_SPACE = 10_000 * 26**5  # 4 digits, dash, 5 uppercase letters
_GOLDEN = (math.sqrt(5) - 1) / 2  # decorrelates the per-user drift keys of several specs
_FALSE_TRUE_EMPTY = np.array(["False", "True", ""], dtype=object)
_CENTS = np.array([repr(k / 100)[1:] if k else ".0" for k in range(100)], dtype=object)  # ".0", ".01", … ".99"

_Population = dict[str, np.ndarray]  # one array per column, one row per user


@dataclass(frozen=True)
class DriftSpec:
    """A drift knob.

    Attributes:
        feature: one of the 14 model features (:data:`DRIFTABLE`).
        shift: numeric feature: multiplied by ``1 + shift``; boolean feature: a share ``|shift|`` of the users moves
            to True (``shift > 0``) or False (``shift < 0``); ``net_service``: a share ``shift`` of the DSL users moves
            to Fiber optic (``shift < 0``: a share ``-shift`` of the Fiber optic users moves to DSL).
    """

    feature: str
    shift: float


@dataclass(frozen=True)
class MonthSummary:
    """One written month.

    Attributes:
        folder: the ``month_NNN`` folder.
        as_of: the month's as_of date.
        users: users active in the month (rows of every file).
        churn_rate: share of those users whose ``churn_label`` is True.
    """

    folder: Path
    as_of: date
    users: int
    churn_rate: float


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate` wrote.

    Attributes:
        months: one summary per month folder, in order.
    """

    months: list[MonthSummary]


def parse_drift(spec: str) -> DriftSpec:
    """Parse ``FEATURE=SHIFT`` as given to ``--drift``.

    Args:
        spec: text such as ``watch_hours_30d=-0.4``, ``paperless_billing=0.3`` or ``net_service=0.5``.

    Returns:
        The parsed knob.

    Raises:
        InvalidInput: no ``=``, an unknown feature, a shift that is not a number, or a shift out of range.
    """
    feature, sep, raw = spec.partition("=")
    feature, raw = feature.strip(), raw.strip()
    allowed = ", ".join(DRIFTABLE)
    if not sep or not feature or not raw:
        raise InvalidInput(f"--drift {spec!r}: expected FEATURE=SHIFT, e.g. watch_hours_30d=-0.4 (features: {allowed})")
    if feature not in DRIFTABLE:
        raise InvalidInput(f"--drift {spec!r}: unknown feature {feature!r}; choose one of {allowed}")
    try:
        shift = float(raw)
    except ValueError:
        raise InvalidInput(f"--drift {spec!r}: shift {raw!r} is not a number") from None
    drift = DriftSpec(feature, shift)
    _check_drift(drift)
    return drift


def generate(
    out: Path,
    *,
    users: int = 7043,
    months: int = 2,
    seed: int = 42,
    drift: Sequence[DriftSpec] = (),
    drift_start: int = 1,
    churn_shift: float = 0.0,
    concept_shift: float = 0.0,
    add_ons: bool = False,
    progress: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Write ``months`` month folders (``month_000`` …) under ``out``.

    Args:
        out: destination folder (created if missing; files of existing month folders are overwritten).
        users: users in month_000; later months hold its survivors plus about as many newcomers as churned.
        months: number of month folders.
        seed: the same seed and arguments write byte-identical files.
        drift: feature knobs applied to months with index >= ``drift_start`` (see :class:`DriftSpec`).
        drift_start: first month index the drift knobs and ``churn_shift`` act on.
        churn_shift: target drift of months >= ``drift_start``: the intercept moves so that the log-odds of the
            month's base churn rate move by this much (1.0 takes ~24 % to ~46 %, -1.0 to ~10 %).
        concept_shift: concept drift of months >= ``drift_start``, in [0, 1]: the churn log-odds become
            ``(1 - c) * usual + c * shifted``, where the shifted model turns price, heavy viewing and device count
            into the reasons to leave and makes tenure and failed payments matter less; the month's churn rate stays
            calibrated, so only the relation between features and label moves.
        add_ons: also write the four optional ``add_on_*`` columns of ``subscriptions.csv``.
        progress: called after each month is written with the number of months written so far.

    Returns:
        One summary per month (folder, as_of, users, churn rate).

    Raises:
        InvalidInput: an argument out of range or an unknown drift feature; nothing is written then.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"out {str(out)!r} exists and is not a folder")
    _check_int("users", users, 1)
    _check_int("months", months, 1)
    _check_int("seed", seed, 0)
    _check_int("drift_start", drift_start, 0)
    if not math.isfinite(churn_shift):
        raise InvalidInput(f"churn_shift {churn_shift!r} is not a finite number")
    if not (isinstance(concept_shift, numbers.Real) and 0.0 <= concept_shift <= 1.0):
        raise InvalidInput(f"concept_shift {concept_shift!r} must be a number in [0, 1]")
    for spec in drift:
        _check_drift(spec)

    summaries: list[MonthSummary] = []
    taken = np.zeros(0, dtype=np.int64)  # id codes already issued: ids are unique across months
    population: _Population = {}
    labels = np.zeros(0, dtype=bool)
    for index in range(months):
        rng = np.random.default_rng([seed, index])
        as_of = as_of_for_index(index)
        if index == 0:
            population = newcomers = _new_users(rng, users, as_of, taken, joining=False)
        else:
            churned = int(labels.sum())
            survivors = _age(rng, _take(population, ~labels))
            joining = int(round(churned * rng.uniform(0.9, 1.1)))
            if len(survivors["code"]) == 0:
                joining = max(joining, 1)
            newcomers = _new_users(rng, joining, as_of, taken, joining=True)
            population = _concat(survivors, newcomers)
        taken = np.sort(np.concatenate([taken, newcomers["code"]]))
        _observe(rng, population)
        active = index >= drift_start
        # Calibrated on the undrifted features, so feature drift moves the churn rate only through what it changes.
        # churn_shift moves the target rate's log-odds rather than adding to every user's: with users this spread
        # out, adding 1.0 to each logit would move the rate far less than the same shift on the rate itself.
        rate = _sigmoid(_logit(BASE_CHURN_RATE) + (churn_shift if active else 0.0))
        concept = concept_shift if active else 0.0
        intercept = _calibrated_intercept(_churn_logit(population, concept), float(rate))
        view = _apply_drift(population, drift) if active and drift else population
        logit = _churn_logit(view, concept) + intercept
        labels = rng.random(len(logit)) < _sigmoid(logit)
        folder = out / month_dir_name(index)
        _write_month(folder, view, labels, add_ons)
        summaries.append(MonthSummary(folder, as_of, len(labels), float(labels.mean()) if len(labels) else 0.0))
        if progress is not None:
            progress(index + 1)
    return GenerateResult(summaries)


# ------------------------------------------------------------------------------------------------ validation


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInput(f"{name} {value!r}: must be an integer >= {minimum}")


def _check_drift(spec: DriftSpec) -> None:
    """Refuse a knob that names an unknown feature or whose shift is out of range."""
    if spec.feature not in DRIFTABLE:
        raise InvalidInput(f"drift feature {spec.feature!r} is unknown; choose one of {', '.join(DRIFTABLE)}")
    if isinstance(spec.shift, bool) or not isinstance(spec.shift, numbers.Real) or not math.isfinite(spec.shift):
        raise InvalidInput(f"drift {spec.feature}={spec.shift!r}: the shift must be a finite number")
    if spec.feature in NUMERIC_FEATURES and spec.shift <= -1:
        raise InvalidInput(
            f"drift {spec.feature}={spec.shift!r}: a shift <= -1 would make {spec.feature} zero or negative (need > -1)"
        )
    if spec.feature not in NUMERIC_FEATURES and not -1 <= spec.shift <= 1:
        raise InvalidInput(f"drift {spec.feature}={spec.shift!r}: out of range, need a share in [-1, 1]")


# ------------------------------------------------------------------------------------------------ population


def _new_ids(rng: np.random.Generator, n: int, taken: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unique ids in the course style (``7590-VHVEG``), none of them already ``taken``.

    Returns:
        The integer codes and the id strings.
    """
    codes = np.zeros(0, dtype=np.int64)
    while len(codes) < n:
        draw = np.concatenate([codes, rng.integers(0, _ID_SPACE, size=n - len(codes) + 16, dtype=np.int64)])
        order = np.argsort(draw, kind="stable")
        repeat = np.zeros(len(draw), dtype=bool)
        repeat[order[1:]] = draw[order[1:]] == draw[order[:-1]]  # later copies of a code, in draw order
        codes = draw[~repeat & ~_isin_sorted(draw, taken)][:n]
    chars = np.empty((n, 10), dtype=np.uint8)
    digits, letters = np.divmod(codes, 26**5)
    for i in range(3, -1, -1):
        digits, chars[:, i] = np.divmod(digits, 10)
    chars[:, :4] += ord("0")
    chars[:, 4] = ord("-")
    for i in range(9, 4, -1):
        letters, chars[:, i] = np.divmod(letters, 26)
    chars[:, 5:] += ord("A")
    return codes, chars.view("S10").ravel().astype(str).astype(object)


def _isin_sorted(values: np.ndarray, sorted_pool: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted pool, without hashing a million codes every month."""
    if len(sorted_pool) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_pool, values), len(sorted_pool) - 1)
    return sorted_pool[at] == values


def _new_users(rng: np.random.Generator, n: int, as_of: date, taken: np.ndarray, joining: bool) -> _Population:
    """Hidden state and profile of ``n`` users; ``joining`` users signed up during the month of ``as_of``."""
    as_of_day = np.datetime64(as_of, "D")
    if joining:
        days = rng.integers(0, as_of.day, n)  # signed up inside the month
        months_active = (days >= 15).astype(np.int64)  # billed once when they joined in the first half
    else:
        # tenure like the course data: many recent users, a long flat middle, a bump of loyal ones at 72
        kind = rng.random(n)
        months_active = np.where(
            kind < 0.30,
            np.minimum(rng.geometric(1 / 7, n), 72),
            np.where(kind < 0.88, rng.integers(0, 73, n), rng.integers(62, 73, n)),
        ).astype(np.int64)
        months_active[rng.random(n) < 0.002] = 0
        days = np.floor(months_active * 30.44).astype(np.int64) + rng.integers(0, 30, n)
    net = rng.choice(3, n, p=[0.34, 0.44, 0.22]).astype(np.int8)
    internet = net != _NO_NET
    # long-tenure users hold longer contracts; newcomers are mostly month-to-month
    tenure = months_active.astype(float)
    scores = np.stack([np.zeros(n), -2.0 + 0.042 * tenure, -3.35 + 0.07 * tenure], axis=1)
    weights = np.exp(scores)
    cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    contract = (rng.random(n)[:, None] > cumulative[:, :2]).sum(axis=1).astype(np.int8)
    fiber = net == _FIBER
    tv = rng.random(n) < np.where(fiber, 0.56, 0.40)
    movies = rng.random(n) < np.where(fiber, 0.57, 0.41)
    add_ons = {name: rng.random(n) < p for name, p in zip(ADD_ONS, (0.37, 0.44, 0.44, 0.37), strict=True)}
    extras = 10.0 * tv + 10.0 * movies + sum(5.0 * flags for flags in add_ons.values())
    fee = np.where(fiber, 68.0, 36.0) + extras + rng.normal(0, 3.0, n)
    fee = np.where(internet, fee, rng.uniform(18.25, 26.0, n))
    fee = np.round(np.clip(fee, 18.25, 118.75), 2)
    codes, ids = _new_ids(rng, n, taken)
    users: _Population = {
        "code": codes,
        "user_id": ids,
        "signup_date": as_of_day - days.astype("timedelta64[D]"),
        "male": rng.random(n) < 0.505,
        "user_is_senior": rng.random(n) < 0.162,
        "has_family": rng.random(n) < 0.48,
        "has_dependents": rng.random(n) < 0.30,
        "months_active": months_active,
        "contract": contract,
        "net": net,
        "tv": tv,
        "movies": movies,
        "paperless_billing": rng.random(n) < 0.59,
        "monthly_fee": fee,
        "total_paid": np.round(np.maximum(months_active * fee * rng.normal(1.0, 0.04, n), 0.0), 2),
        **add_ons,
        # hidden state, carried from month to month
        "engagement": rng.normal(-0.15 if joining else 0.0, 1.0, n),
        "pay_risk": rng.gamma(0.6, 0.09, n),
        "support_need": rng.gamma(1.5, 0.10, n),
        "line_quality": rng.gamma(4.0, 0.25, n),  # multiplies the rebuffering rate
        "drift_key": rng.random(n),
    }
    # the two months before this one, for the 90-day windows (a newcomer has no history)
    for lag in (1, 2):
        users[f"failed_lag{lag}"] = np.zeros(n, np.int64) if joining else rng.poisson(users["pay_risk"])
        users[f"tickets_lag{lag}"] = np.zeros(n, np.int64) if joining else rng.poisson(users["support_need"])
        users[f"hours_lag{lag}"] = np.where(users[f"tickets_lag{lag}"] > 0, rng.gamma(2.0, 8.0, n), 0.0)
    return users


def _age(rng: np.random.Generator, users: _Population) -> _Population:
    """Survivors move one month on: tenure +1, one more fee paid, the hidden state wanders with persistence."""
    n = len(users["code"])
    aged = dict(users)
    aged["months_active"] = users["months_active"] + 1
    aged["total_paid"] = np.round(users["total_paid"] + users["monthly_fee"], 2)
    rho = 0.85  # AR(1) with stationary unit variance: engagement persists but moves
    aged["engagement"] = rho * users["engagement"] + math.sqrt(1 - rho**2) * rng.normal(0, 1, n)
    aged["pay_risk"] = 0.8 * users["pay_risk"] + rng.gamma(0.6, 0.018, n)
    aged["support_need"] = 0.8 * users["support_need"] + rng.gamma(1.5, 0.02, n)
    for name in ("failed", "tickets", "hours"):
        aged[f"{name}_lag2"] = users[f"{name}_lag1"]
        aged[f"{name}_lag1"] = users[f"{name}_month"]
    return aged


def _observe(rng: np.random.Generator, users: _Population) -> None:
    """Draw this month's usage, payments and support from each user's hidden state (in place)."""
    n = len(users["code"])
    e = users["engagement"]
    net = users["net"]
    plans = (users["tv"].astype(float) + users["movies"]) * (net != _NO_NET)
    watch_scale = np.where(net == _NO_NET, 0.7, 1.0) * (1.0 + 0.15 * plans)
    users["watch_hours_30d"] = watch_scale * np.exp(2.7 + 0.8 * e + rng.normal(0, 0.35, n))
    active_7d = rng.random(n) > _sigmoid(-2.8 - 1.2 * e)  # no session in the last 7 days: average 0
    users["avg_session_mins_7d"] = active_7d * 26.0 * np.exp(0.3 * e + rng.normal(0, 0.3, n))
    users["unique_devices_30d"] = np.minimum(1 + rng.poisson(np.exp(-0.35 + 0.3 * e + 0.3 * users["has_family"])), 6)
    users["skips_7d"] = rng.poisson(np.exp(1.0 - 0.3 * e) * rng.gamma(2.0, 0.5, n))
    rebuffer_rate = np.where(net == _DSL, 3.0, np.where(net == _FIBER, 1.4, 0.7)) * users["line_quality"]
    users["rebuffer_events_7d"] = rng.poisson(rebuffer_rate * rng.gamma(3.0, 1 / 3, n))
    failed = rng.poisson(users["pay_risk"] * (1.0 + 0.5 * ~users["paperless_billing"]))
    users["failed_month"] = failed
    users["failed_payments_90d"] = failed + users["failed_lag1"] + users["failed_lag2"]
    tickets = rng.poisson(users["support_need"] * (1.0 + 0.15 * users["rebuffer_events_7d"]))
    hours = np.where(tickets > 0, rng.gamma(2.0, 8.0, n) * (1.0 + 0.2 * np.minimum(tickets, 5)), 0.0)
    users["tickets_month"], users["hours_month"] = tickets, hours
    total = tickets + users["tickets_lag1"] + users["tickets_lag2"]
    weighted = (
        tickets * hours + users["tickets_lag1"] * users["hours_lag1"] + users["tickets_lag2"] * users["hours_lag2"]
    )
    users["support_tickets_90d"] = total
    users["ticket_avg_resolution_hrs_90d"] = np.divide(weighted, total, out=np.zeros(n), where=total > 0)


def _take(users: _Population, mask: np.ndarray) -> _Population:
    return {name: values[mask] for name, values in users.items()}


def _concat(a: _Population, b: _Population) -> _Population:
    return {name: np.concatenate([a[name], b[name]]) for name in b}


# ------------------------------------------------------------------------------------------------ drift and churn


def _apply_drift(users: _Population, drift: Sequence[DriftSpec]) -> _Population:
    """A copy of the month with the knobs applied; the same users (by their drift key) move every month."""
    view = dict(users)
    for i, spec in enumerate(drift):
        moved = (users["drift_key"] + i * _GOLDEN) % 1.0 < abs(spec.shift)
        if spec.feature in NUMERIC_FEATURES:
            values = view[spec.feature] * (1.0 + spec.shift)
            if spec.feature in INT_FEATURES:
                floor = 1 if spec.feature == "unique_devices_30d" else 0
                view[spec.feature] = np.maximum(np.rint(values), floor).astype(np.int64)
            elif spec.feature == "monthly_fee":
                view[spec.feature] = np.maximum(np.round(values, 2), 0.01)
            else:
                view[spec.feature] = np.maximum(values, 0.0)
        elif spec.feature == "net_service":
            source, target = (_DSL, _FIBER) if spec.shift > 0 else (_FIBER, _DSL)
            view["net"] = np.where(moved & (view["net"] == source), target, view["net"]).astype(np.int8)
        else:
            column = _PLAN_COLUMNS.get(spec.feature, spec.feature)
            view[column] = np.where(moved, spec.shift > 0, view[column])
    return view


def _churn_logit(users: _Population, concept: float = 0.0) -> np.ndarray:
    """Churn log-odds without intercept, blended with the shifted concept by ``concept`` (0: the usual model)."""
    usual = _usual_logit(users)
    return usual if concept == 0.0 else (1.0 - concept) * usual + concept * _shifted_logit(users)


def _shifted_logit(users: _Population) -> np.ndarray:
    """The concept-drift model: a price rise and a thinner catalogue make heavy, multi-device viewers leave."""
    tenure = users["months_active"].astype(float)
    return (
        0.06 * (users["monthly_fee"] - 65.0)
        + 2.0 * np.tanh(users["watch_hours_30d"] / 40.0)
        + 0.5 * np.minimum(users["unique_devices_30d"], 5)
        + 0.5 * np.exp(-tenure / 9.0)
        + 0.3 * np.minimum(users["failed_payments_90d"], 2)
        - 0.4 * (users["net"] == _FIBER)
    )


def _usual_logit(users: _Population) -> np.ndarray:
    """Churn log-odds without intercept: non-linear, with interactions, partly driven by hidden inputs."""
    tenure = users["months_active"].astype(float)
    contract = users["contract"]
    net = users["net"]
    internet = net != _NO_NET
    fiber = net == _FIBER
    rebuffer = users["rebuffer_events_7d"].astype(float)
    watch = users["watch_hours_30d"]
    failed = users["failed_payments_90d"]
    tickets = np.minimum(users["support_tickets_90d"], 4).astype(float)
    return (
        2.2 * np.exp(-tenure / 9.0)  # the first months are the riskiest
        + 0.6 * (contract == _MONTH_TO_MONTH)  # hidden from the model
        - 0.7 * (contract == _TWO_YEAR)
        + 0.3 * fiber
        + 1.8 * fiber * np.tanh(rebuffer / 3.0)  # fibre users do not forgive buffering
        + 0.3 * (net == _DSL) * np.tanh(rebuffer / 5.0)
        + 2.2 * _sigmoid((7.0 - watch) / 1.5)  # barely watching
        + np.where(failed >= 2, 2.2, 0.7 * failed)  # a second failed payment is a strong signal
        + 0.6 * tickets * np.tanh(users["ticket_avg_resolution_hrs_90d"] / 30.0)  # slow support hurts
        + 0.45 * (users["avg_session_mins_7d"] == 0)
        + 0.015 * (users["monthly_fee"] - 65.0)
        + 0.3 * users["paperless_billing"]
        + 0.3 * users["user_is_senior"]
        - 0.25 * users["has_family"]
        - 0.3 * (internet & users["add_on_security"])
        - 0.3 * (internet & users["add_on_support"])
    )


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the logistic function, without overflow


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _calibrated_intercept(logit: np.ndarray, rate: float) -> float:
    """The intercept b with mean(sigmoid(logit + b)) == rate (Newton's method on a monotonic function)."""
    if len(logit) == 0:
        return 0.0
    rate = min(max(rate, 1e-9), 1 - 1e-9)  # an extreme churn_shift asks for (almost) nobody or everybody
    b = _logit(rate) - float(np.median(logit))
    for _ in range(50):
        p = _sigmoid(logit + b)
        gap = float(p.mean()) - rate
        slope = float((p * (1 - p)).mean())
        if abs(gap) < 1e-9 or slope <= 0:
            break
        b -= max(min(gap / slope, 5.0), -5.0)
    return b


# ------------------------------------------------------------------------------------------------ writing


def _bools(values: np.ndarray, applicable: np.ndarray | None = None) -> np.ndarray:
    """``True``/``False`` as pandas writes them; empty where not ``applicable``."""
    index = values.astype(np.int8)
    if applicable is not None:
        index = np.where(applicable, index, 2)
    return _FALSE_TRUE_EMPTY[index]


def _floats(values: np.ndarray) -> list[str]:
    # pandas writes a float64 column as numpy's str of each value, which is repr: the shortest round-trip form
    return list(map(repr, values.tolist()))


def _money(values: np.ndarray) -> np.ndarray | list[str]:
    """repr of values already rounded to cents, built from two small lookup tables instead of a repr per value."""
    cents = np.rint(values * 100).astype(np.int64)
    if len(cents) == 0 or cents.min() < 0 or cents.max() >= 10**9 or not np.array_equal(cents / 100, values):
        return _floats(values)  # not plain cents (cannot happen for generated money): the general path
    units, fraction = np.divmod(cents, 100)
    return _ints(units) + _CENTS[fraction]


def _ints(values: np.ndarray) -> np.ndarray:
    """Decimal text of integers; small non-negative ranges (all counts here) through a lookup table."""
    values = values.astype(np.int64)
    if len(values) and values.min() >= 0 and values.max() < 1 << 20:
        table = np.array([str(i) for i in range(int(values.max()) + 1)], dtype=object)
        return table[values]
    return values.astype(str).astype(object)


def _dates(values: np.ndarray) -> np.ndarray:
    """ISO text of datetime64[D] values through a table of the (few thousand) distinct days."""
    days = values.astype(np.int64)
    if len(days) == 0:
        return np.zeros(0, dtype=object)
    first = int(days.min())
    table = np.arange(first, int(days.max()) + 1).astype("datetime64[D]").astype(str).astype(object)
    return table[days - first]


def _write_month(folder: Path, users: _Population, labels: np.ndarray, add_ons: bool) -> None:
    """Write the six files of one month as ``DataFrame.to_csv(index=False)`` would."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = len(labels)
    for table in RAW_TABLES:
        columns = [c.name for c in table.columns if add_ons or not c.optional]
        with open(folder / table.file_name, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(",".join(columns) + "\n")
            # in chunks: a million users' cells as Python strings would take ~50 MB per column at once
            for first in range(0, rows, _WRITE_CHUNK_ROWS):
                part = slice(first, first + _WRITE_CHUNK_ROWS)
                chunk = {name: values[part] for name, values in users.items()}
                cells = [_column_text(name, chunk, labels[part]) for name in columns]
                handle.write("\n".join(map(",".join, zip(*cells, strict=True))))
                handle.write("\n")


def _column_text(name: str, users: _Population, labels: np.ndarray) -> np.ndarray | list[str]:
    """The cells of one contract column, as pandas writes them."""
    if name == "user_id":
        return users["user_id"]
    if name == "churn_label":
        return _bools(labels)
    if name == "signup_date":
        return _dates(users["signup_date"])
    if name == "user_gender":
        return np.where(users["male"], "Male", "Female").astype(object)
    if name == "contract_type":
        return np.array(CONTRACT_TYPES, dtype=object)[users["contract"]]
    if name == "net_service":
        return np.array(NET_SERVICES, dtype=object)[users["net"]]
    if name in ("plan_stream_tv", "plan_stream_movies", *ADD_ONS):  # not applicable without internet: empty
        return _bools(users[_PLAN_COLUMNS.get(name, name)], users["net"] != _NO_NET)
    values = users[name]
    if values.dtype == bool:
        return _bools(values)
    if name in INT_FEATURES:
        return _ints(values)
    if name in ("monthly_fee", "total_paid"):
        return _money(values)
    return _floats(values)
