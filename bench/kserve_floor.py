"""Issue 6's calibration, re-measured in the same run as our servers (built under bench/ only, like the course server).

The issue set its serving targets from measurements of plain KServe 0.21 servers on these 2 cores, with no Feast in
the path: one server answering a 1-row HistGradientBoosting request fed numpy with one OpenMP thread (1.3 ms p50,
765 req/s), and a transformer forwarding to it with ``--predictor_protocol grpc-v2`` (2.5 ms p50, 806 req/s, 2.3 ms
CPU per request). This machine's speed drifts by tens of percent from one hour to the next, so the benchmark starts
the same two servers beside ours and measures them in the same rounds: the floor of the framework at that minute.

``--role predictor``: a kserve.Model with a HistGradientBoostingClassifier fitted at start on seeded synthetic data
(14 numeric features as the FeatureService has; 40 trees, as many as early stopping gives the production model at the
benchmark's 7k users), scored by scikit-learn on the request's numpy array and answering ``proba`` FP32 for an input
``x`` FP64 [N, 14]. ``--role transformer``: KServe's own Model with nothing overridden, which forwards the request
unchanged to ``--predictor_host`` over ``--predictor_protocol``. Logs are quiet (no line per request: KServe's
access, trace and gRPC lines, FastAPI's per-response deprecation warning), as the issue's calibration had them.
Nothing of StreamFlow's runs here: no Feast, no checks, no metrics of ours. The one change to KServe's own server:
it binds REST and gRPC to ``--host`` (loopback), where KServe binds every address.
"""

from __future__ import annotations

import argparse
import logging
import os
import types
import warnings

FEATURES = 14


def main() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # before scikit-learn loads OpenMP: as the calibration ran

    import numpy as np
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest.server import RESTServer

    class FloorPredictor(Model):
        def load(self) -> bool:
            from sklearn.ensemble import HistGradientBoostingClassifier

            rng = np.random.default_rng(0)
            x = rng.normal(size=(5000, FEATURES))
            y = x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=5000) > 0
            self.clf = HistGradientBoostingClassifier(max_iter=40, early_stopping=False, random_state=0).fit(x, y)
            self.ready = True
            return True

        def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            proba = self.clf.predict_proba(payload.inputs[0].as_numpy())[:, 1].astype(np.float32)
            out = InferOutput("proba", list(proba.shape), "FP32")
            out.set_data_from_numpy(proba, binary_data=False)
            return InferResponse(payload.id or "", self.name, [out])

    class FloorTransformer(Model):
        def load(self) -> bool:
            self.ready = True
            return True

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--role", choices=["predictor", "transformer"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    class LoopbackREST(RESTServer):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.config.host = args.host

    def loopback_grpc(*a, **kw):
        server = grpc_aio.server(*a, **kw)
        bind = server.add_insecure_port
        server.add_insecure_port = lambda address: bind(address.replace("[::]", args.host))
        return server

    grpc_aio = grpc_server.aio
    model_server.RESTServer = LoopbackREST
    grpc_server.aio = types.SimpleNamespace(server=loopback_grpc)

    model = (FloorPredictor if args.role == "predictor" else FloorTransformer)(args.model_name)
    model.load()
    server = ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_latency_logging=False)
    for name in ("uvicorn.access", "kserve", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from fastapi.exceptions import FastAPIDeprecationWarning

    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    server.start([model])


if __name__ == "__main__":
    main()
