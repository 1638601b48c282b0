"""The reference for the serving benchmark: the course stack's prediction API, rebuilt the way the course built it.

FastAPI, one Feast SDK ``get_online_features`` call per request, an MLflow pyfunc model (the course's RandomForest
with 300 trees) loaded from the registry, a one-row DataFrame per prediction. It lives under bench/ only: it is what
StreamFlow's serving path is measured against, not part of the product.

    python bench/course_server.py --port 8000 --model-uri models:/streamflow_churn/2

``POST /predict {"user_id": …}`` answers ``{"user_id", "prediction", "features_used"}`` or the course's error with
``missing_features``; ``POST /predict_batch {"user_ids": [...]}`` is the same code for many users (the course API had
no batch route; it is here so the 1,000-user figure has a reference).
"""

import argparse


def build_app(model_uri: str):
    import mlflow
    import pandas as pd
    from fastapi import FastAPI
    from pydantic import BaseModel

    from pipelines.config import Settings
    from pipelines.online import feature_names, open_store

    settings = Settings()
    store = open_store(settings)
    service = store.get_feature_service(settings.feature_service)
    features = feature_names(service)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri)
    # Feast answers int64; the signature says int32 where the training frame had it, and pyfunc refuses to narrow
    narrow = {c.name: "int32" for c in model.metadata.get_input_schema().inputs if c.type.name == "integer"}
    app = FastAPI(title="course-style churn API (reference)")

    class PredictRequest(BaseModel):
        user_id: str

    class BatchRequest(BaseModel):
        user_ids: list[str]

    def _predict(user_ids: list[str]) -> dict:
        online = store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
        frame = pd.DataFrame({f: online[f] for f in features})
        missing = [f for f in features if frame[f].isna().any() and not f.startswith("plan_stream")]
        if missing:
            return {"error": f"Missing features for user_id={user_ids[0]}", "missing_features": missing}
        predictions = model.predict(frame.astype(narrow))
        return {"user_ids": user_ids, "predictions": predictions.tolist(), "features": frame}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(req: PredictRequest) -> dict:
        out = _predict([req.user_id])
        if "error" in out:
            return out
        features_used = {k: (None if pd.isna(v) else v) for k, v in out["features"].iloc[0].to_dict().items()}
        return {"user_id": req.user_id, "prediction": float(out["predictions"][0]), "features_used": features_used}

    @app.post("/predict_batch")
    def predict_batch(req: BatchRequest) -> dict:
        out = _predict(req.user_ids)
        if "error" in out:
            return out
        return {"user_ids": req.user_ids, "predictions": [float(p) for p in out["predictions"]]}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-uri", required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model_uri), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
