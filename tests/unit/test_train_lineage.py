"""The training split and the lineage of a run, without MLflow: the split is the same whatever the row order and
really stratified; the commit and lock hash come from the checkout, the environment or the build info file."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipelines.train as train_module
from pipelines.train import LABEL, VALID_SHARE, split


def frame(n: int = 1000, positives: int = 250) -> pd.DataFrame:
    """Users in *reverse* id order, the positives first: the frame's order is not the split's."""
    ids = [f"{i:04d}-USER" for i in range(n)][::-1]
    return pd.DataFrame({"user_id": ids, "x": np.arange(n), LABEL: [1] * positives + [0] * (n - positives)})


def test_the_split_is_the_same_whatever_the_row_order_and_stratified() -> None:
    rows = frame()
    _, valid = split(rows, seed=42)
    for seed in (1, 2, 3):
        _, again = split(rows.sample(frac=1, random_state=seed), seed=42)
        assert sorted(again["user_id"]) == sorted(valid["user_id"])
    # stratified on each row's own label: the held-out share of each class is the overall share
    assert len(valid) == VALID_SHARE * len(rows)
    assert int(valid[LABEL].sum()) == VALID_SHARE * int(rows[LABEL].sum())
    # every row keeps its own label and features
    assert (rows.set_index("user_id").loc[valid["user_id"], LABEL].to_numpy() == valid[LABEL].to_numpy()).all()


@pytest.fixture
def no_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package as installed from a wheel or copied into an image: no .git, no requirements.lock beside it."""
    monkeypatch.setattr(train_module, "SOURCE_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(train_module, "BUILD_INFO", tmp_path / "site-packages" / "pipelines" / "_build_info.json")
    monkeypatch.delenv("STREAMFLOW_GIT_COMMIT", raising=False)
    monkeypatch.delenv("STREAMFLOW_LOCK_HASH", raising=False)
    (tmp_path / "site-packages" / "pipelines").mkdir(parents=True)
    return tmp_path / "site-packages"


def test_without_a_checkout_lineage_is_unknown_not_a_crash(no_checkout: Path) -> None:
    assert train_module._git_commit() == "unknown" and train_module._lock_hash() == "unknown"
    train_module.BUILD_INFO.write_text("{not json")  # a broken build info file is not a crash either
    assert train_module._git_commit() == "unknown" and train_module._lock_hash() == "unknown"


def test_without_a_checkout_lineage_comes_from_the_build_info_file(no_checkout: Path) -> None:
    train_module.BUILD_INFO.write_text(json.dumps({"git_commit": "abc123", "lock_hash": "f00d"}))
    assert train_module._git_commit() == "abc123" and train_module._lock_hash() == "f00d"


def test_the_environment_wins(no_checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_module.BUILD_INFO.write_text(json.dumps({"git_commit": "abc123", "lock_hash": "f00d"}))
    monkeypatch.setenv("STREAMFLOW_GIT_COMMIT", "deadbeef")
    monkeypatch.setenv("STREAMFLOW_LOCK_HASH", "cafe")
    assert train_module._git_commit() == "deadbeef" and train_module._lock_hash() == "cafe"


def test_a_checkout_gives_its_own_commit_and_lock(no_checkout: Path) -> None:
    root = no_checkout
    (root / "requirements.lock").write_text("numpy==2.0\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)  # fmt: skip
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert train_module._git_commit() == head.strip()
    assert train_module._lock_hash() == hashlib.sha256(b"numpy==2.0\n").hexdigest()


def test_a_package_inside_some_other_repository_does_not_report_its_commit(no_checkout: Path) -> None:
    outer = no_checkout.parent  # e.g. a venv inside another project's checkout
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    subprocess.run(["git", "-C", str(outer), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)  # fmt: skip
    assert train_module._git_commit() == "unknown"
