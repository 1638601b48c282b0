"""Both servers answered by the v2 clients people use: NVIDIA's ``tritonclient`` (HTTP JSON, HTTP binary tensors,
gRPC) and KServe's own ``InferenceRESTClient`` / ``InferenceGRPCClient`` — real processes on loopback, no mocks.

What each client must get (issue 16): one user and a batch with the registry model's own predictions and the served
version; an unknown user refused with its ``missing_features``; only the ``outputs`` a request names, in its order,
an unknown name refused naming it; binary tensors when asked for; every gRPC output in ``raw_output_contents`` (what
Triton's client reads); the model metadata naming the served version. The stack is ``test_serving``'s, started for
this module.

tritonclient's gRPC stubs and KServe's cannot be imported into one process: both register the v2 protocol's messages
(package ``inference``) in protobuf's default descriptor pool ("duplicate symbol 'inference.ServerLiveRequest'").
So the tritonclient gRPC calls run in a child process of their own (:func:`clients`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from tests.integration.test_serving import MODEL, Stack, expected, get, infer, production_version, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRANSFORMER_OUTPUTS = ["user_id", "churn_probability", "churn_label"]
PREDICTOR_OUTPUTS = ["churn_probability", "churn_label"]
CLIENTS = ["triton-http-json", "triton-http-binary", "triton-grpc", "kserve-rest", "kserve-grpc"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("v2-clients")) as started:
        yield started


# ------------------------------------------------------------------------------------------------ one client API


@dataclass
class Answer:
    outputs: dict[str, np.ndarray]  # in the order the server sent them
    version: str
    binary: bool | None  # REST: every output came as binary tensors (True) or JSON data (False); gRPC: None


class Refused(Exception):
    def __init__(self, code: str, message: str, missing: dict | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.missing = code, message, missing

    def __reduce__(self):  # raised in the tritonclient gRPC child process, re-raised here
        return Refused, (self.code, self.message, self.missing)


def _text(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else v for v in values.reshape(-1)], dtype=object)
    return values


def triton_http(binary: bool) -> Callable:
    def call(host: str, _grpc: str, tensors: list, outputs: list[str] | None) -> Answer:
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, datatype, values in tensors:
            tensor = http.InferInput(name, list(values.shape), datatype)
            tensor.set_data_from_numpy(values, binary_data=binary)
            inputs.append(tensor)
        # no outputs named: tritonclient asks for every output in binary (``binary_data_output``); the JSON client
        # names them all with binary_data=False instead
        asked = outputs if outputs is not None or binary else names(host)
        requested = None if asked is None else [http.InferRequestedOutput(n, binary_data=binary) for n in asked]
        client = http.InferenceServerClient(host, network_timeout=60)
        try:
            result = client.infer(MODEL, inputs, outputs=requested)
        except InferenceServerException as err:
            raise Refused(err.status(), err.message()) from None
        finally:
            client.close()
        body = result.get_response()
        sent = body["outputs"]
        return Answer(
            {o["name"]: _text(result.as_numpy(o["name"])) for o in sent},
            body.get("model_version") or body["parameters"]["model_version"],
            all("binary_data_size" in (o.get("parameters") or {}) and "data" not in o for o in sent),
        )

    return call


def triton_grpc(_host: str, address: str, tensors: list, outputs: list[str] | None) -> Answer:
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    inputs = []
    for name, datatype, values in tensors:
        tensor = tgrpc.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    requested = None if outputs is None else [tgrpc.InferRequestedOutput(n) for n in outputs]
    client = tgrpc.InferenceServerClient(address)
    try:
        result = client.infer(MODEL, inputs, outputs=requested, client_timeout=60)
    except InferenceServerException as err:
        raise Refused(err.status(), err.message()) from None
    finally:
        client.close()
    response = result.get_response()
    assert len(response.raw_output_contents) == len(response.outputs), "every output in raw_output_contents"
    return Answer(
        {o.name: _text(result.as_numpy(o.name)) for o in response.outputs},
        response.model_version or response.parameters["model_version"].string_param,
        None,
    )


def _kserve_request(tensors: list, outputs: list[str] | None):
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    inputs = []
    for name, datatype, values in tensors:
        tensor = InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=False)
        inputs.append(tensor)
    requested = None if outputs is None else [RequestedOutput(n) for n in outputs]
    return InferRequest(MODEL, inputs, request_outputs=requested)


def _kserve_answer(response) -> Answer:
    version = response.model_version or (response.parameters or {}).get("model_version")
    if not isinstance(version, str):  # gRPC parameters are InferParameter messages
        version = version.string_param
    return Answer({o.name: _text(o.as_numpy()) for o in response.outputs}, version, None)


def kserve_rest(host: str, _grpc: str, tensors: list, outputs: list[str] | None) -> Answer:
    import httpx
    from kserve import InferenceRESTClient, RESTConfig

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
        try:
            return await client.infer(f"http://{host}", _kserve_request(tensors, outputs), model_name=MODEL)
        finally:
            await client.close()

    try:
        return _kserve_answer(asyncio.run(run()))
    except httpx.HTTPStatusError as err:
        body = err.response.json()
        raise Refused(str(err.response.status_code), body["error"], body.get("missing_features")) from None


def kserve_grpc(_host: str, address: str, tensors: list, outputs: list[str] | None) -> Answer:
    from kserve import InferenceGRPCClient

    async def run():
        client = InferenceGRPCClient(address, timeout=60, retries=2)
        try:
            return await client.infer(_kserve_request(tensors, outputs))
        finally:
            await client.close()

    try:
        return _kserve_answer(asyncio.run(run()))
    except grpc.RpcError as err:
        raise Refused(str(err.code()), err.details()) from None


@pytest.fixture(scope="module")
def clients() -> dict[str, Callable]:
    """Each client's call; tritonclient's gRPC one in a child process (see the module's docstring)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        yield {
            "triton-http-json": triton_http(binary=False),
            "triton-http-binary": triton_http(binary=True),
            "triton-grpc": lambda *args: child.submit(triton_grpc, *args).result(timeout=120),
            "kserve-rest": kserve_rest,
            "kserve-grpc": kserve_grpc,
        }


def names(host: str) -> list[str]:
    """The outputs the model's metadata lists."""
    _, meta = get(f"http://{host}/v2/models/{MODEL}")
    return [o["name"] for o in meta["outputs"]]


# ------------------------------------------------------------------------------------------------ what is sent


def complete_users(stack: Stack, n: int) -> list[str]:
    """Users without a NULL feature (a NaN has no JSON spelling tritonclient would send)."""
    features = [c for c in stack.feb.columns if c != "churn_label"]
    return list(stack.feb[features].dropna().index[:n])


def tensors_for(stack: Stack, server: str, ids: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """What a client sends: the transformer takes user ids, the predictor one tensor per feature (its metadata)."""
    if server == "transformer":
        return [("user_id", "BYTES", np.array(ids, dtype=object))]
    _, meta = get(f"{stack.predictor}/v2/models/{MODEL}")
    out = []
    for spec in meta["inputs"]:
        column = stack.feb.loc[ids, spec["name"]]
        if spec["datatype"] == "BYTES":
            out.append((spec["name"], "BYTES", np.array([str(v) for v in column], dtype=object)))
        else:
            out.append((spec["name"], spec["datatype"], column.to_numpy(dtype=np.float64)))
    return out


def call(stack: Stack, send: Callable, server: str, ids: list[str], outputs: list[str] | None = None) -> Answer:
    http_base = stack.transformer if server == "transformer" else stack.predictor
    address = stack.transformer_grpc if server == "transformer" else stack.predictor_grpc
    return send(http_base.removeprefix("http://"), address, tensors_for(stack, server, ids), outputs)


def is_invalid_argument(code: str) -> bool:
    return code in ("400", "StatusCode.INVALID_ARGUMENT")


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("server", ["transformer", "predictor"])
def test_one_user_and_a_batch_as_the_registry_model_answers(stack: Stack, clients, server: str, client: str) -> None:
    version = production_version(stack)
    for ids in (complete_users(stack, 1), complete_users(stack, 300)):
        answer = call(stack, clients[client], server, ids)
        wanted = TRANSFORMER_OUTPUTS if server == "transformer" else PREDICTOR_OUTPUTS
        assert list(answer.outputs) == wanted
        proba, label = expected(stack, ids)
        np.testing.assert_allclose(answer.outputs["churn_probability"], proba, atol=1e-6)
        assert answer.outputs["churn_probability"].dtype == np.float32
        assert answer.outputs["churn_label"].tolist() == label.tolist()
        if server == "transformer":
            assert answer.outputs["user_id"].tolist() == ids
        assert answer.version == version
        if client.startswith("triton-http"):  # what was asked: binary tensors, or JSON data
            assert answer.binary is (client == "triton-http-binary"), answer


@pytest.mark.parametrize("client", CLIENTS)
def test_an_unknown_user_is_refused_naming_its_missing_features(stack: Stack, clients, client: str) -> None:
    known = complete_users(stack, 1)[0]
    with pytest.raises(Refused) as refused:
        call(stack, clients[client], "transformer", [known, "0000-NOONE"])
    err = refused.value
    assert err.code in ("422", "StatusCode.INVALID_ARGUMENT"), err
    if err.missing is not None:  # KServe's REST client hands over the whole body
        assert list(err.missing) == ["0000-NOONE"] and len(err.missing["0000-NOONE"]) == 14
    elif err.code == "422":  # tritonclient over HTTP keeps only the body's "error"
        assert err.message == "missing features: no prediction was made"
    else:  # gRPC: the status details carry them
        assert "missing_features=" in err.message and '"0000-NOONE":["months_active"' in err.message
        assert known not in err.message


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("server", ["transformer", "predictor"])
def test_requested_outputs_only_in_their_order(stack: Stack, clients, server: str, client: str) -> None:
    ids = complete_users(stack, 3)
    send = clients[client]
    proba, label = expected(stack, ids)
    one = call(stack, send, server, ids, ["churn_label"])
    assert list(one.outputs) == ["churn_label"]
    assert one.outputs["churn_label"].tolist() == label.tolist()
    two = call(stack, send, server, ids, ["churn_label", "churn_probability"])
    assert list(two.outputs) == ["churn_label", "churn_probability"]
    np.testing.assert_allclose(two.outputs["churn_probability"], proba, atol=1e-6)
    if client.startswith("triton-http"):
        assert one.binary is two.binary is (client == "triton-http-binary")
    if server == "transformer":
        ids_only = call(stack, send, server, ids, ["user_id"])
        assert list(ids_only.outputs) == ["user_id"] and ids_only.outputs["user_id"].tolist() == ids
    with pytest.raises(Refused) as refused:
        call(stack, send, server, ids, ["churn_probability", "churn_score"])
    assert is_invalid_argument(refused.value.code), refused.value
    assert "unknown output 'churn_score'" in refused.value.message


def test_rest_binary_outputs_per_output_and_for_all(stack: Stack) -> None:
    """The binary-tensor extension as KServe documents it, on the wire: ``binary_data_output`` for every output, an
    output's own ``binary_data`` overriding it; the JSON part's length in ``Inference-Header-Content-Length``."""
    import json
    import urllib.request

    from kserve.protocol.infer_type import InferResponse

    ids = complete_users(stack, 2)
    proba, label = expected(stack, ids)
    base = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ids}]}
    cases = [
        ({"parameters": {"binary_data_output": True}}, {"user_id", "churn_probability", "churn_label"}),
        ({"outputs": [{"name": "churn_label", "parameters": {"binary_data": True}}, {"name": "user_id"}]},
         {"churn_label"}),
        ({"parameters": {"binary_data_output": True},
          "outputs": [{"name": "churn_probability"}, {"name": "churn_label", "parameters": {"binary_data": False}}]},
         {"churn_probability"}),
    ]  # fmt: skip
    for extra, binary in cases:
        data = json.dumps({**base, **extra}).encode()
        request = urllib.request.Request(
            f"{stack.transformer}/v2/models/{MODEL}/infer", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            body, length = resp.read(), resp.headers.get("Inference-Header-Content-Length")
        assert length is not None and int(length) < len(body), (extra, body[:300])
        head = json.loads(body[: int(length)])
        sent = {o["name"] for o in head["outputs"] if "binary_data_size" in (o.get("parameters") or {})}
        assert sent == binary and all("data" in o for o in head["outputs"] if o["name"] not in binary), head
        response = InferResponse.from_bytes(body, int(length))
        got = {o.name: o.as_numpy() for o in response.outputs}
        if "churn_label" in got:
            assert got["churn_label"].tolist() == label.tolist()
        if "churn_probability" in got:
            np.testing.assert_allclose(got["churn_probability"], proba, atol=1e-6)


def test_metadata_names_the_served_version(stack: Stack) -> None:
    """REST and gRPC metadata of both servers name the version served (the transformer: the one its predictor
    answered with last, so one request goes first)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    version = production_version(stack)
    assert infer(stack, complete_users(stack, 1))[0] == 200
    for base, address in ((stack.predictor, stack.predictor_grpc), (stack.transformer, stack.transformer_grpc)):
        status, meta = get(f"{base}/v2/models/{MODEL}")
        assert status == 200 and meta["versions"] == [version], (base, meta)
        with grpc.insecure_channel(address) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
        assert list(reply.versions) == [version], (address, reply)
