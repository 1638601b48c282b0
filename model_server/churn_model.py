"""The model the predictor serves: one registered MLflow version, loaded once, scored from v2 feature tensors.

The registered artifact is the training Pipeline (encoding + classifier). Scoring it through pandas costs ~8 ms for
one row, most of it DataFrame and ColumnTransformer bookkeeping; the classifier itself needs a fraction of that.
So a :class:`ServedModel` scores on a *lean path* when the Pipeline has the shape training builds
(``OrdinalEncoder`` on the categorical columns + passthrough numbers → classifier): the categorical values are mapped
with the fitted encoder's own ``categories_`` and the classifier gets one float matrix. For a few rows a tree
ensemble is scored by treelite (the fitted trees imported once at load): scikit-learn spends ~0.8 ms of overhead on
one row of a 40-tree HistGradientBoosting (input checks, one Python call per tree), treelite ~0.07 ms; from
``COMPILED_MAX_ROWS`` rows on, scikit-learn's own vectorised predict is faster and is used. Both are checked
against the Pipeline at load on probe rows (the logged input example, NULLs, an unseen category, numbers at the
contract's floor and far past anything seen); if one ever disagrees it is not used, and a Pipeline of another shape
is scored through the Pipeline.

The linear families (``logreg``: one-hot + standardised numbers; ``spline``: one-hot + B-splines of each number, both
a logistic regression) are additive in their features, so their lean path is a sum of per-feature contributions:
each category's share of the coefficients is looked up in a dict, each number goes through one function (a line for
logreg; for spline the fitted B-spline basis folded with its coefficients into one scipy ``BSpline``, evaluated
on the number clipped to the knots' span, which is what SplineTransformer's constant extrapolation does). No
DataFrame and no ColumnTransformer: scikit-learn's SplineTransformer alone spent milliseconds per call on checks.

Wire format of the feature tensors (the predictor's metadata says the same): one input per feature, shape ``[N]``;
text features ``BYTES`` (UTF-8); every other feature any numeric datatype or ``BOOL`` (booleans as 0/1), ``NaN``
meaning NULL — accepted only where the model signature marks the feature optional (the contract's plan_stream_*).
Features of one datatype may also travel together as a *block*: one input of shape ``[N, k]`` whose parameter
``columns`` names its k features in order (``"months_active,monthly_fee,…"``). The transformer sends two blocks
(numbers FP64, texts BYTES): each tensor costs both KServe servers Python work, and 14 of them were ~a third of the
predictor's time per request. A block is split into the same per-feature columns, so every check below applies.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

NUMERIC_DATATYPES = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
}


# measured (bench/README): treelite beats scikit-learn below ~150–200 rows for hgb and rf, loses beyond
COMPILED_MAX_ROWS = 64  # rows; from this batch size on, scikit-learn scores


BLOCK_COLUMNS = "columns"  # the input parameter naming the features of a [N, k] block


def wire_tensor(cls, name: str, values: np.ndarray, datatype: str, binary: bool, parameters: dict | None = None):
    """A KServe ``InferInput`` or ``InferOutput`` (``cls``) holding ``values``: raw bytes when ``binary`` (gRPC, or
    the REST binary extension), else JSON data from one ``tolist`` — KServe's ``set_data_from_numpy(binary_data=
    False)`` converts value by value (~6 ms for a 1,000 × 10 block)."""
    shape = list(values.shape)
    if binary:
        tensor = cls(name, shape, datatype, parameters=parameters)
        tensor.set_data_from_numpy(np.ascontiguousarray(values), binary_data=True)
        return tensor
    return cls(name, shape, datatype, data=values.reshape(-1).tolist(), parameters=parameters)


class FeatureError(ValueError):
    """A feature tensor the model cannot take (the message names the tensor and the value)."""


# The only types, beyond skops' own defaults, a served model file may hold: those of the Pipelines `streamflow
# train` builds (pipelines.train.SKOPS_TRUSTED, every model kind; a unit test holds the two together). Fixed here,
# never read from the artifact: MLflow's loader trusts the ``skops_trusted_types`` the model's own MLmodel file
# lists, so a crafted version could vouch for any type, and loading it would run its code.
TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "scipy._lib.array_api_compat.numpy._aliases.asarray",  # spline: named by scipy's BSpline state
    "scipy.interpolate._bsplines.BSpline",  # spline: SplineTransformer's fitted basis, one per number
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
)


class ModelRefused(RuntimeError):
    """A registered version the predictor will not load (not a skops file, or a type outside TRUSTED_TYPES):
    loading it could run code. Not retried until the alias moves."""


def contract_bounds() -> dict[str, tuple[float | None, float | None]]:
    """``feature -> (ge, gt)``: the data contract's lower bounds (pipelines.tables declares them once)."""
    from pipelines.tables import RAW_TABLES

    return {c.name: (c.ge, c.gt) for t in RAW_TABLES for c in t.columns if c.ge is not None or c.gt is not None}


def feature_tensors(inputs) -> dict[str, tuple[str, np.ndarray]]:
    """v2 inputs ``(name, datatype, values, parameters)`` → one ``(datatype, values)`` per feature name, blocks split.

    Raises:
        FeatureError: a feature given twice, or a block whose shape does not match its ``columns``.
    """
    tensors: dict[str, tuple[str, np.ndarray]] = {}

    def put(name: str, datatype: str, values) -> None:
        if name in tensors:
            raise FeatureError(f"input {name!r} given twice")
        tensors[name] = (datatype, values)

    for name, datatype, values, parameters in inputs:
        columns = (parameters or {}).get(BLOCK_COLUMNS)
        if columns is None:
            put(name, datatype, values)
            continue
        names = [c.strip() for c in str(columns).split(",")]
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != len(names):
            raise FeatureError(
                f"input {name!r}: shape {list(values.shape)}, but its {BLOCK_COLUMNS!r} parameter names "
                f"{len(names)} features; expected [N, {len(names)}]"
            )
        for j, column in enumerate(names):
            put(column, datatype, values[:, j])
    return tensors


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str  # "text" | "number" | "boolean" (from the MLflow signature)
    optional: bool

    @property
    def datatype(self) -> str:
        return "BYTES" if self.kind == "text" else "FP64"


def specs_from_signature(signature) -> list[FeatureSpec]:
    kinds = {"string": "text", "boolean": "boolean"}
    specs = []
    for col in signature.inputs.inputs:
        type_name = str(getattr(col.type, "name", col.type)).lower()
        specs.append(FeatureSpec(col.name, kinds.get(type_name, "number"), not col.required))
    return specs


def _as_text(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v.decode("utf-8") if isinstance(v, bytes | bytearray) else v
    return out


@dataclass
class ServedModel:
    """One model version ready to score."""

    name: str
    version: str
    run_id: str
    threshold: float
    pipeline: Any
    specs: list[FeatureSpec]
    tags: dict[str, str] = field(default_factory=dict)
    lean: bool = False
    compiled: Any = field(default=None, repr=False)  # the classifier's trees in treelite, for small batches
    additive: _Additive | None = field(default=None, repr=False)  # a linear family's per-feature contributions
    _codes: list[dict] = field(default_factory=list, repr=False)
    _missing_code: list[float] = field(default_factory=list, repr=False)
    _unknown_code: list[float] = field(default_factory=list, repr=False)
    _cat_cols: list[str] = field(default_factory=list, repr=False)
    _num_cols: list[str] = field(default_factory=list, repr=False)
    _bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=contract_bounds, repr=False)

    @property
    def scoring(self) -> str:
        """How this version is scored, for the log."""
        if not self.lean:
            return "pipeline"
        if self.additive is not None:
            return f"lean, additive ({self.additive.what})"
        return f"lean, treelite under {COMPILED_MAX_ROWS} rows" if self.compiled is not None else "lean"

    # ---------------------------------------------------------------- build

    @classmethod
    def from_pipeline(cls, pipeline, specs, *, name="", version="", run_id="", threshold=0.5, tags=None, probe=None):
        model = cls(name, version, run_id, threshold, pipeline, specs, dict(tags or {}))
        model.lean = model._prepare_lean()
        checked = model._probe(probe) if model.lean else None  # the Pipeline's answers, computed once for both checks
        model.lean = model.lean and model._agrees(*checked, compiled=False)
        if model.lean:
            model.compiled = model._compile()
            if model.compiled is not None and not model._agrees(*checked, compiled=True):
                model.compiled = None
        if not model.lean:
            log.info("model %s v%s: scored through the sklearn Pipeline (no lean path)", name, version)
        return model

    def _prepare_lean(self) -> bool:
        from sklearn.compose import ColumnTransformer
        from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder

        steps = getattr(self.pipeline, "steps", None)
        if not steps or len(steps) != 2 or not isinstance(steps[0][1], ColumnTransformer):
            return False
        ct = steps[0][1]
        self.additive = _Additive.of(ct, steps[1][1])
        if self.additive is not None:
            return set(self.additive.features) == {s.name for s in self.specs}
        cat_cols: list[str] = []
        num_cols: list[str] = []
        for name, transformer, cols in ct.transformers_:
            if name == "remainder":
                if transformer != "drop" and len(cols):
                    return False
                continue
            if isinstance(transformer, OrdinalEncoder) and not cat_cols:
                encoder = transformer
                cat_cols = list(cols)
            elif transformer == "passthrough" or (
                isinstance(transformer, FunctionTransformer) and transformer.func is None
            ):
                num_cols += list(cols)
            else:
                return False
        if cat_cols:
            if encoder.handle_unknown != "use_encoded_value" or encoder.min_frequency or encoder.max_categories:
                return False
            self._codes, self._missing_code, self._unknown_code = [], [], []
            for cats in encoder.categories_:
                self._codes.append({c: float(i) for i, c in enumerate(cats) if not _is_missing(c)})
                # the encoder treats only NaN as missing: a None seen in training (parquet NULLs in an object
                # column) is an ordinary category. A NULL on the wire is scored as that None when there was one.
                none = [i for i, c in enumerate(cats) if c is None]
                seen_nan = any(isinstance(c, float) and c != c for c in cats)
                self._missing_code.append(
                    float(none[0]) if none
                    else float(encoder.encoded_missing_value) if seen_nan
                    else float(encoder.unknown_value)
                )  # fmt: skip
                self._unknown_code.append(float(encoder.unknown_value))
        self._cat_cols, self._num_cols = cat_cols, num_cols
        return set(cat_cols + num_cols) == {s.name for s in self.specs}

    def _compile(self):
        """The classifier's trees imported into treelite, or None (not a tree ensemble treelite knows)."""
        import treelite.sklearn

        if self.additive is not None:
            return None
        classifier = self.pipeline.steps[-1][1]
        try:
            return treelite.sklearn.import_model(classifier)
        except Exception as err:  # noqa: BLE001 - any model treelite cannot import is scored by scikit-learn
            log.info("model %s v%s: %s not compiled (%s)", self.name, self.version, type(classifier).__name__, err)
            return None

    def _probe(self, probe: pd.DataFrame | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The probe rows as wire columns, and the Pipeline's probabilities for them."""
        rows = self._probe_rows(probe)
        columns = {s.name: _column_from_frame(rows[s.name], s) for s in self.specs}
        return columns, self.pipeline.predict_proba(rows[[s.name for s in self.specs]])[:, 1]

    def _agrees(self, columns: dict[str, np.ndarray], reference: np.ndarray, compiled: bool) -> bool:
        """The lean path (scikit-learn's classifier, or treelite's trees when ``compiled``) gives the Pipeline's
        probabilities (``reference``) on the probe columns, NULLs and unseen values included."""
        lean = self._lean_proba(columns, compiled=compiled)
        if not np.allclose(lean, reference, rtol=0, atol=1e-9):
            log.warning(
                "model %s v%s: the lean path%s disagrees with the Pipeline; not used",
                self.name,
                self.version,
                " (treelite)" if compiled else "",
            )
            return False
        return True

    def _probe_rows(self, probe: pd.DataFrame | None) -> pd.DataFrame:
        base = probe.copy() if probe is not None and len(probe) else None
        if base is None:
            return pd.DataFrame()
        extra = []
        for spec in self.specs:
            row = base.iloc[[0]].copy()
            if spec.optional:
                row[spec.name] = None
                extra.append(row.copy())
            if spec.kind == "text":
                row[spec.name] = "a value never seen in training"
                extra.append(row)
        # every number at the contract's floor, then far past anything seen: a spline's ends are checked too
        numbers = [s.name for s in self.specs if s.kind == "number"]
        for far in (False, True):
            row = base.iloc[[0]].copy()
            for name in numbers:
                ge, gt = self._bounds.get(name, (None, None))
                floor = ge if ge is not None else (gt + 1.0 if gt is not None else 0.0)
                row[name] = (float(base[name].max()) * 10 + 1000.0) if far else floor
            extra.append(row)
        return pd.concat([base, *extra], ignore_index=True)

    # ---------------------------------------------------------------- score

    def columns_from_tensors(self, tensors: dict[str, tuple[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
        """Check and convert v2 input tensors (name → (datatype, values)) to one column per feature.

        Raises:
            FeatureError: a feature is absent, unexpected, of the wrong datatype or length, or NULL where the
                model does not allow it.
        """
        expected = {s.name: s for s in self.specs}
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            block = np.ndim(tensors[unexpected[0]][1]) == 2
            hint = f" (a [N, k] block needs a {BLOCK_COLUMNS!r} parameter naming its features)" if block else ""
            raise FeatureError(f"unexpected input {unexpected[0]!r}{hint}; the model takes {', '.join(expected)}")
        absent = [n for n in expected if n not in tensors]
        if absent:
            raise FeatureError(f"input {absent[0]!r} is missing ({len(absent)} of {len(expected)} features absent)")
        columns: dict[str, np.ndarray] = {}
        rows = None
        for name, spec in expected.items():
            datatype, values = tensors[name]
            values = np.asarray(values)
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise FeatureError(
                    f"input {name!r}: shape {list(values.shape)}; expected [N] "
                    f"(or a [N, k] block with a {BLOCK_COLUMNS!r} parameter naming its features)"
                )
            if rows is None:
                rows = len(values)
            elif len(values) != rows:
                raise FeatureError(f"input {name!r}: {len(values)} values, but other inputs have {rows}")
            if spec.kind == "text":
                if datatype != "BYTES":
                    raise FeatureError(f"input {name!r}: datatype {datatype}; expected BYTES")
                column = _as_text(values)
                nulls = np.array([v is None or v == "" for v in column], dtype=bool)
                column[nulls] = None
            else:
                if datatype not in NUMERIC_DATATYPES:
                    raise FeatureError(f"input {name!r}: datatype {datatype}; expected FP64 (or another number/BOOL)")
                try:
                    column = values.astype(np.float64)
                except (TypeError, ValueError):
                    bad = next(v for v in values if not _is_number(v))
                    raise FeatureError(f"input {name!r}: value {bad!r} is not a number") from None
                nulls = np.isnan(column)
                if spec.kind == "boolean":
                    wrong = ~nulls & (column != 0) & (column != 1)
                    if wrong.any():
                        raise FeatureError(f"input {name!r}: value {float(column[wrong][0])!r} is not a boolean (0/1)")
                else:
                    _check_range(name, column, nulls, self._bounds.get(name, (None, None)))
            if nulls.any() and not spec.optional:
                raise FeatureError(
                    f"input {name!r}: NULL/NaN at position {int(np.argmax(nulls))}; this feature may not be NULL"
                )
            columns[name] = column
        if not rows:
            raise FeatureError("empty batch: every input has 0 values")
        return columns, rows

    def predict_proba(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Churn probability of each row (float64)."""
        if self.lean:
            return self._lean_proba(columns)
        frame = pd.DataFrame({s.name: _column_for_pipeline(columns[s.name], s) for s in self.specs})
        return self.pipeline.predict_proba(frame)[:, 1]

    def _lean_proba(self, columns: dict[str, np.ndarray], compiled: bool | None = None) -> np.ndarray:
        """``compiled``: score with treelite (True), scikit-learn (False), or by batch size (None)."""
        import sklearn

        if self.additive is not None:
            return self.additive.proba(columns)
        n = len(next(iter(columns.values())))
        X = np.empty((n, len(self._cat_cols) + len(self._num_cols)), dtype=np.float64)
        for j, name in enumerate(self._cat_cols):
            codes, missing, unknown = self._codes[j], self._missing_code[j], self._unknown_code[j]
            col = columns[name]
            if col.dtype == object:
                X[:, j] = [missing if v is None else codes.get(v, unknown) for v in col]
            else:  # booleans as 0/1 floats: 1.0 == True and hashes alike, so the bool categories match
                X[:, j] = [missing if v != v else codes.get(v, unknown) for v in col.tolist()]
        for k, name in enumerate(self._num_cols, start=len(self._cat_cols)):
            X[:, k] = columns[name]
        if compiled or (compiled is None and self.compiled is not None and n < COMPILED_MAX_ROWS):
            import treelite.gtil

            if not hasattr(self.pipeline.steps[-1][1], "_predictors"):
                # scikit-learn's decision trees compare float32 features with their thresholds (HistGradientBoosting
                # compares float64): rounded the same way, or a value close to a threshold takes the other branch
                X = X.astype(np.float32).astype(np.float64)
            # [N, 1, 1] for HistGradientBoosting (P(class 1)), [N, 1, 2] for a forest: the last column is P(1)
            return treelite.gtil.predict(self.compiled, X, nthread=1).reshape(n, -1)[:, -1]
        classifier = self.pipeline.steps[-1][1]
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            if not hasattr(classifier, "feature_names_in_"):
                return classifier.predict_proba(X)[:, 1]
            with warnings.catch_warnings():  # fitted on a DataFrame (rf): the matrix has its columns, in order
                warnings.filterwarnings("ignore", message="X does not have valid feature names")
                return classifier.predict_proba(X)[:, 1]

    def labels(self, proba: np.ndarray) -> np.ndarray:
        return (proba >= self.threshold).astype(np.int64)


@dataclass
class _Additive:
    """A logistic regression on one-hot categories and per-number encodings, as one sum of per-feature terms:
    ``P(churn) = expit(intercept + sum of cat[value] + sum of num(x))``.

    Built from the fitted Pipeline only when every part has a shape it knows (else :meth:`of` says None); the probe
    check then holds it to the Pipeline's own probabilities.
    """

    intercept: float
    cats: list[tuple[str, dict, float]]  # (feature, value -> its coefficient, contribution of NULL)
    nums: list[tuple[str, float, Any]]  # (feature, value of NULL after imputation, x -> contribution)
    what: str

    @property
    def features(self) -> list[str]:
        return [c[0] for c in self.cats] + [n[0] for n in self.nums]

    @classmethod
    def of(cls, ct, classifier) -> _Additive | None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import OneHotEncoder

        if not isinstance(classifier, LogisticRegression) or classifier.coef_.shape[0] != 1:
            return None
        coef = classifier.coef_[0]
        cats: list[tuple[str, dict, float]] = []
        nums: list[tuple[str, float, Any]] = []
        kinds = set()
        for name, transformer, cols in ct.transformers_:
            if name == "remainder":
                if transformer != "drop" and len(cols):
                    return None
                continue
            block = coef[ct.output_indices_[name]]
            steps = getattr(transformer, "steps", [(None, transformer)])
            before, last = steps[:-1], steps[-1][1]
            imputer = _imputer(before)
            if imputer is _UNKNOWN:
                return None
            if isinstance(last, OneHotEncoder):
                terms = _one_hot_terms(last, list(cols), block, imputer)
                kinds.add("one-hot")
            else:
                terms, kind = _number_terms(last, list(cols), block, imputer)
                kinds.add(kind)
            if terms is None:
                return None
            (cats if isinstance(last, OneHotEncoder) else nums).extend(terms)
        what = " + ".join(sorted(k for k in kinds if k))
        return cls(float(classifier.intercept_[0]), cats, nums, what)

    def proba(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        from scipy.special import expit  # scikit-learn's own logistic function

        n = len(next(iter(columns.values())))
        logit = np.full(n, self.intercept)
        for name, table, null in self.cats:
            col = columns[name]
            if col.dtype == object:
                logit += [null if v is None else table.get(v, 0.0) for v in col]
            else:  # booleans as 0/1 floats: 1.0 == True and hashes alike, so the bool categories match
                logit += [null if v != v else table.get(v, 0.0) for v in col.tolist()]
        for name, fill, term in self.nums:
            x = columns[name]
            if fill == fill:
                x = np.where(np.isnan(x), fill, x)
            logit += term(x)
        return expit(logit)


_UNKNOWN = object()  # a preprocessing step the additive path does not know


def _imputer(steps) -> Any:
    """The SimpleImputer before an encoder, None without one, or _UNKNOWN (any other step)."""
    from sklearn.impute import SimpleImputer

    if not steps:
        return None
    if len(steps) != 1 or not isinstance(steps[0][1], SimpleImputer) or steps[0][1].add_indicator:
        return _UNKNOWN
    imputer = steps[0][1]
    if not (imputer.missing_values is None or _is_missing(imputer.missing_values)):
        return _UNKNOWN
    return imputer


def _one_hot_terms(encoder, cols: list[str], block: np.ndarray, imputer) -> list | None:
    """(feature, value -> coefficient, NULL's coefficient) per column of a fitted OneHotEncoder (no drop, unknown
    values ignored: they add nothing). A NULL reaches the Pipeline's categorical columns as None, which only an
    imputer of None replaces (one of NaN leaves it to the encoder, for which None is a category of its own)."""
    if encoder.handle_unknown != "ignore" or encoder.drop is not None:
        return None
    if getattr(encoder, "_infrequent_enabled", False):
        return None
    terms, at = [], 0
    for j, (name, cats) in enumerate(zip(cols, encoder.categories_, strict=True)):
        weights = block[at : at + len(cats)]
        at += len(cats)
        table = {c: float(w) for c, w in zip(cats, weights, strict=True) if not _is_missing(c)}
        null = imputer.statistics_[j] if imputer is not None and imputer.missing_values is None else None
        if null is None or _is_missing(null):
            missing = [float(w) for c, w in zip(cats, weights, strict=True) if _is_missing(c)]
            null_weight = missing[0] if missing else 0.0  # NULL never seen in training: ignored like an unknown
        else:
            null_weight = table.get(null, 0.0)
        terms.append((name, table, null_weight))
    return terms if at == len(block) else None


def _number_terms(encoder, cols: list[str], block: np.ndarray, imputer) -> tuple[list | None, str]:
    """(feature, NULL's value, x -> contribution) per column of a StandardScaler or a SplineTransformer (a NULL
    number is NaN, replaced by an imputer of NaN)."""
    from scipy.interpolate import BSpline
    from sklearn.preprocessing import SplineTransformer, StandardScaler

    nan_imputer = imputer is not None and _is_missing(imputer.missing_values)
    fills = list(imputer.statistics_) if nan_imputer else [np.nan] * len(cols)
    if isinstance(encoder, StandardScaler):
        mean = encoder.mean_ if encoder.with_mean else np.zeros(len(cols))
        scale = encoder.scale_ if encoder.with_std else np.ones(len(cols))
        terms = [
            (name, float(f), _line(float(w) / float(s), -float(w) * float(m) / float(s)))
            for name, f, w, m, s in zip(cols, fills, block, mean, scale, strict=True)
        ]
        return (terms if len(block) == len(cols) else None), "scaled numbers"
    if isinstance(encoder, SplineTransformer):
        if encoder.extrapolation != "constant" or not encoder.include_bias or encoder.sparse_output:
            return None, ""
        width = encoder.n_features_out_ // len(cols)
        if width * len(cols) != len(block):
            return None, ""
        terms = []
        for i, (name, f, basis) in enumerate(zip(cols, fills, encoder.bsplines_, strict=True)):
            t, k = basis.t, basis.k
            combined = BSpline(t, basis.c @ block[i * width : (i + 1) * width], k, extrapolate=False)
            lo, hi = float(t[k]), float(t[len(t) - k - 1])
            terms.append((name, float(f), _clipped(combined, lo, hi)))
        return terms, "B-splines"
    return None, ""


def _line(slope: float, offset: float):
    return lambda x: x * slope + offset


def _clipped(spline, lo: float, hi: float):
    return lambda x: spline(np.clip(x, lo, hi))


def _check_range(name: str, column: np.ndarray, nulls: np.ndarray, bounds: tuple[float | None, float | None]) -> None:
    """Refuse ±Infinity anywhere and values under the contract's bound (NaN is NULL, checked by the caller)."""
    ge, gt = bounds
    bad = ~nulls & ~np.isfinite(column)
    why = "is not a finite number"
    if not bad.any() and ge is not None:
        bad, why = ~nulls & (column < ge), f"is out of range (the data contract says >= {ge:g})"
    if not bad.any() and gt is not None:
        bad, why = ~nulls & (column <= gt), f"is out of range (the data contract says > {gt:g})"
    if bad.any():
        at = int(np.argmax(bad))
        raise FeatureError(f"input {name!r}: value {float(column[at])!r} at position {at} {why}")


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _column_from_frame(series: pd.Series, spec: FeatureSpec) -> np.ndarray:
    """A DataFrame column as it would arrive on the wire (the probe check uses it)."""
    if spec.kind == "text":
        return np.array([None if _is_missing(v) else str(v) for v in series], dtype=object)
    return np.array([np.nan if _is_missing(v) else float(v) for v in series.astype(object)], dtype=np.float64)


def _column_for_pipeline(column: np.ndarray, spec: FeatureSpec) -> pd.Series | np.ndarray:
    """A wire column as the Pipeline saw it in training (booleans as True/False/None objects)."""
    if spec.kind == "boolean":
        return pd.Series([None if v != v else bool(v) for v in column.tolist()], dtype=object)
    return column


def load_version(model_name: str, version) -> ServedModel:
    """Download and prepare one registered version (``version`` is an MLflow ModelVersion) from the registry the
    process points at (:func:`pipelines.registry.mlflow_client` sets it)."""
    import tempfile

    import mlflow

    uri = f"models:/{model_name}/{version.version}"
    with tempfile.TemporaryDirectory(prefix="streamflow-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        meta = mlflow.models.Model.load(local)
        pipeline = load_pipeline(local, meta, f"version {version.version} of {model_name}")
        specs = specs_from_signature(meta.signature)
        try:
            example = meta.load_input_example(local)
            probe = pd.DataFrame(example) if example is not None else None
        except Exception as err:  # noqa: BLE001 - an example is a nicety: without one the probe is synthetic
            log.info("no input example for %s: %s", uri, err)
            probe = None
    if probe is None:
        probe = _synthetic_probe(specs)
    tags = dict(version.tags or {})
    if "threshold" not in tags:
        log.warning("%s has no threshold tag (not trained by streamflow train?): labels use 0.5", uri)
    threshold = float(tags.get("threshold", 0.5))
    return ServedModel.from_pipeline(
        pipeline,
        specs,
        name=model_name,
        version=str(version.version),
        run_id=version.run_id or "",
        threshold=threshold,
        tags=tags,
        probe=probe,
    )


def load_pipeline(local: str, meta, what: str):
    """The scikit-learn model file of a downloaded MLflow model, loaded by skops trusting :data:`TRUSTED_TYPES` only
    (not the types the artifact lists, not pickle whatever MLflow's flag says).

    Raises:
        ModelRefused: not a skops-serialized sklearn model, or one holding a type outside the list.
    """
    from pathlib import Path

    import skops.io

    flavor = (meta.flavors or {}).get("sklearn")
    if flavor is None:
        raise ModelRefused(f"{what} is not a scikit-learn model (flavors: {', '.join(meta.flavors or {}) or 'none'})")
    fmt = flavor.get("serialization_format", "pickle")
    if fmt != "skops":
        raise ModelRefused(f"{what} is serialized as {fmt!r}: only 'skops' models are loaded (pickle runs code)")
    path = Path(local) / flavor.get("pickled_model", "model.skops")
    untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if untrusted:
        raise ModelRefused(f"{what} holds types outside the serving allow-list: {', '.join(untrusted)}")
    return skops.io.load(path, trusted=list(TRUSTED_TYPES))


def _synthetic_probe(specs: list[FeatureSpec]) -> pd.DataFrame:
    return pd.DataFrame(
        {s.name: ["x"] if s.kind == "text" else [True] if s.kind == "boolean" else [1.0] for s in specs}
    )


def metadata_inputs(specs: list[FeatureSpec]) -> list[dict]:
    return [{"name": s.name, "datatype": s.datatype, "shape": [-1]} for s in specs]
