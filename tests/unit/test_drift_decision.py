"""The retraining decision on given drift results (Evidently itself runs in tests/integration/test_drift.py)."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import Settings
from pipelines.drift import NO_ACTION, RETRAIN, ColumnDrift, Comparison, decide

NAMES = ("2024-01-31", "2024-02-29")
RATES = {NAMES[0]: 0.24, NAMES[1]: 0.25}
SETTINGS = Settings(home=Path("/nonexistent"))


def comparison(drifted: int, target_drifted: bool = False) -> Comparison:
    features = [
        ColumnDrift(f"f{i}", "Wasserstein distance (normed)", 0.5 if i < drifted else 0.01, 0.1, i < drifted)
        for i in range(14)
    ]
    target = ColumnDrift("churn_label", "Jensen-Shannon distance", 0.2 if target_drifted else 0.01, 0.1, target_drifted)
    return Comparison(features, target, None, snapshot=None)


def test_drift_share_at_the_threshold_is_retrain_below_is_not() -> None:
    # 5/14 = 0.357 >= 0.30; 4/14 = 0.286 < 0.30
    decision, reasons = decide(comparison(5), 0.80, 0.81, RATES, SETTINGS, NAMES)
    assert decision == RETRAIN and reasons == ["drift_share=0.36 >= 0.30 (f0, f1, f2, f3, f4)"]
    decision, reasons = decide(comparison(4), 0.80, 0.81, RATES, SETTINGS, NAMES)
    assert decision == NO_ACTION
    assert reasons[0] == "drift_share=0.29 < 0.30 (f0, f1, f2, f3)"
    assert reasons[1] == "no target drift (label rate 24.0% -> 25.0%)"
    assert reasons[2] == "ROC AUC 0.8000 on 2024-02-29 vs 0.8100 at validation"


def test_every_reason_that_holds_is_listed() -> None:
    decision, reasons = decide(comparison(6, target_drifted=True), 0.70, 0.81, RATES, SETTINGS, NAMES)
    assert decision == RETRAIN and len(reasons) == 3
    assert reasons[1].startswith("target drift on churn_label: label rate 24.0% -> 25.0% (Jensen-Shannon distance")
    assert reasons[2] == "quality drop: ROC AUC 0.7000 on 2024-02-29 vs 0.8100 at validation (drop 0.1100 > 0.05)"


def test_the_quality_margin_is_configurable() -> None:
    assert decide(comparison(0), 0.77, 0.81, RATES, SETTINGS, NAMES)[0] == NO_ACTION  # drop 0.04 within 0.05
    assert decide(comparison(0), 0.75, 0.81, RATES, SETTINGS, NAMES)[0] == RETRAIN  # drop 0.06
    lenient = SETTINGS.model_copy(update={"quality_drop_margin": 0.2})
    assert decide(comparison(0), 0.70, 0.81, RATES, lenient, NAMES)[0] == NO_ACTION


def test_a_single_class_month_or_no_validation_auc_is_explicit_not_a_crash() -> None:
    decision, reasons = decide(comparison(0), None, 0.81, RATES, SETTINGS, NAMES)
    assert decision == NO_ACTION and "realized AUC undefined (2024-02-29 has a single churn_label class)" in reasons
    decision, reasons = decide(comparison(0), 0.80, None, RATES, SETTINGS, NAMES)
    assert decision == NO_ACTION and "ROC AUC 0.8000 on 2024-02-29 (the version records no validation AUC)" in reasons
