"""The model server over HTTP: the seed's contract, and a clear 4xx for every bad input."""

import asyncio
import base64
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from modelcloud import InvalidInput, Model
from modelcloud._files import FilePolicy
from modelcloud._runtime import ModelRuntime
from modelcloud._server import create_app
from modelcloud.data_types import any as any_type
from modelcloud.data_types import array, file, image, number, text
from modelcloud.exceptions import SetupFailed

PROBLEM = "application/problem+json"


def png_base64(size: tuple[int, int] = (32, 24), color: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def seed_model() -> Model:
    """The seed's cloud_model.py shape, with a model that reports the photo's size."""
    model = Model()

    @model.setup
    def setup():
        return {"name": "size-model"}

    @model.command("classify", inputs={"photo": image()}, outputs={"label": text()})
    def classify(model, input):
        img = input["photo"]
        return {"label": f"{model['name']} {img.mode} {img.size[0]}x{img.size[1]}"}

    @model.command(
        "top",
        inputs={"photo": image(), "k": number(min=1, max=5, step=1, default=2)},
        outputs={"labels": array(text()), "scores": array(number())},
        description="The k best labels.",
    )
    def top(model, input):
        return {"labels": ["a"] * input["k"], "scores": [0.5] * input["k"]}

    return model


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert "Traceback" not in response.text
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


# ----------------------------------------------------------------------------- happy paths


async def test_classify_base64_json_as_the_seed_sends_it(serve):
    client = serve(seed_model())
    response = await client.post("/classify", json={"photo": png_base64((40, 30))})
    assert response.status_code == 200
    assert response.json() == {"label": "size-model RGB 40x30"}


async def test_data_url_prefix_and_curl_style_json_without_content_type(serve):
    client = serve(seed_model())
    body = '{"photo": "data:image/png;base64,' + png_base64((8, 9)) + '"}'
    # `curl -d` labels the body application/x-www-form-urlencoded.
    response = await client.post(
        "/classify",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"label": "size-model RGB 8x9"}


async def test_multipart_upload_and_form_fields_are_typed(serve):
    client = serve(seed_model())
    raw = base64.b64decode(png_base64((5, 6)))
    response = await client.post(
        "/top", files={"photo": ("cat.png", raw, "image/png")}, data={"k": "3"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"labels": ["a", "a", "a"], "scores": [0.5, 0.5, 0.5]}


async def test_default_input_is_used_when_absent(serve):
    client = serve(seed_model())
    response = await client.post("/top", json={"photo": png_base64()})
    assert response.json()["labels"] == ["a", "a"]


async def test_meta_lists_commands_inputs_outputs_and_sdk_version(serve):
    client = serve(seed_model())
    meta = (await client.get("/meta")).json()
    assert meta["sdk_version"]
    commands = {c["name"]: c for c in meta["commands"]}
    assert set(commands) == {"classify", "top"}
    assert commands["classify"]["inputs"] == [
        {"name": "photo", "type": "image", "required": True, "channels": 3}
    ]
    k = commands["top"]["inputs"][1]
    assert (k["type"], k["minimum"], k["maximum"], k["default"]) == ("number", 1, 5, 2)
    assert commands["top"]["outputs"][0]["item"]["type"] == "text"
    assert commands["top"]["description"] == "The k best labels."


async def test_openapi_is_generated_from_the_declared_types(serve):
    client = serve(seed_model())
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    operation = doc["paths"]["/top"]["post"]
    assert "422" in operation["responses"]
    schemas = doc["components"]["schemas"]
    top_input = schemas["TopInput"]
    assert top_input["required"] == ["photo"]
    assert top_input["properties"]["k"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 5,
        "multipleOf": 1,
        "default": 2,
    }
    assert top_input["properties"]["photo"]["contentEncoding"] == "base64"
    multipart = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["properties"]["photo"] == {"type": "string", "format": "binary"}
    assert schemas["TopOutput"]["properties"]["labels"]["items"] == {"type": "string"}


async def test_image_output_is_a_base64_data_url(serve):
    model = Model()

    @model.command("invert", inputs={"photo": image()}, outputs={"photo": image()})
    def invert(_, inputs):
        return {"photo": Image.new("RGB", inputs["photo"].size, "blue")}

    client = serve(model)
    response = await client.post("/invert", json={"photo": png_base64((7, 3))})
    data_url = response.json()["photo"]
    assert data_url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    assert decoded.size == (7, 3)


async def test_async_commands_run_on_the_event_loop(serve):
    model = Model()

    @model.command("echo", inputs={"value": any_type()}, outputs={"value": any_type()})
    async def echo(_, inputs):
        await asyncio.sleep(0)
        return {"value": inputs["value"]}

    client = serve(model)
    response = await client.post("/echo", json={"value": {"nested": [1, None]}})
    assert response.json() == {"value": {"nested": [1, None]}}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({}, "photo", "is required"),
        ({"photo": 5}, "photo", "must be a base64-encoded image or a URL, not a number"),
        ({"photo": "!!! not base64 !!!"}, "photo", "is not valid base64"),
        ({"photo": base64.b64encode(b"plain text").decode()}, "photo", "not a decodable image"),
        ({"photo": "data:image/png,abc"}, "photo", "must be base64-encoded"),
        ({"photo": png_base64(), "k": 9}, "k", "must be at most 5"),
        ({"photo": png_base64(), "k": 0}, "k", "must be at least 1"),
        ({"photo": png_base64(), "k": 1.5}, "k", "must be a multiple of 1"),
        ({"photo": png_base64(), "k": "2"}, "k", "must be a number, not a string"),
        ({"photo": png_base64(), "k": True}, "k", "must be a number, not a boolean"),
        ({"photo": png_base64(), "kk": 2}, "kk", "is not an input"),
    ],
)
async def test_bad_input_names_the_field(serve, body, field, message):
    client = serve(seed_model())
    problem = assert_problem(await client.post("/top", json=body), 422, field)
    assert problem["type"] == "urn:modelcloud:problem:invalid-input"
    assert message in next(e["message"] for e in problem["errors"] if e["field"] == field)


async def test_every_bad_field_is_reported_at_once(serve):
    client = serve(seed_model())
    problem = assert_problem(await client.post("/top", json={"k": 99, "x": 1}), 422)
    assert {e["field"] for e in problem["errors"]} == {"photo", "k", "x"}


async def test_bad_item_inside_an_array_is_located(serve):
    model = Model()

    @model.command("tags", inputs={"tags": array(text(max_length=3))}, outputs={"n": number()})
    def tags(_, inputs):
        return {"n": len(inputs["tags"])}

    client = serve(model)
    assert_problem(await client.post("/tags", json={"tags": ["ok", "far too long"]}), 422, "tags.1")


async def test_unknown_command_is_a_404_problem_listing_the_commands(serve):
    client = serve(seed_model())
    problem = assert_problem(await client.post("/segment", json={}), 404)
    assert problem["type"] == "urn:modelcloud:problem:unknown-command"
    assert "classify" in problem["detail"]


async def test_wrong_method_and_unknown_route_are_problems(serve):
    client = serve(seed_model())
    assert_problem(await client.get("/classify"), 405)
    assert_problem(await client.post("/a/b", json={}), 404)


async def test_malformed_bodies(serve):
    client = serve(seed_model())
    json_header = {"content-type": "application/json"}
    assert_problem(await client.post("/classify", content=b"{nope", headers=json_header), 400)
    assert_problem(await client.post("/classify", content=b"[1, 2]", headers=json_header), 400)
    assert_problem(await client.post("/classify", content=b"\xff\xfe", headers=json_header), 400)
    # Valid-looking JSON that Python refuses to read: a 5,000-digit integer, deep nesting.
    huge = b'{"photo": ' + b"9" * 5000 + b"}"
    assert_problem(await client.post("/classify", content=huge, headers=json_header), 400)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_problem(await client.post("/classify", content=deep, headers=json_header), 400)
    problem = assert_problem(
        await client.post("/classify", content=b"photo", headers={"content-type": "text/plain"}),
        415,
    )
    assert "text/plain" in problem["detail"]


async def test_oversize_body_with_content_length_gets_a_fast_413(serve):
    client = serve(seed_model(), max_body_bytes=1000)
    problem = assert_problem(await client.post("/classify", json={"photo": "A" * 5000}), 413)
    assert "1000 bytes" in problem["detail"]


async def test_oversize_streamed_body_without_content_length_gets_413(serve):
    client = serve(seed_model(), max_body_bytes=1000)

    async def chunks():
        for _ in range(10):
            yield b'{"photo": "' + b"A" * 200

    response = await client.post(
        "/classify", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


async def test_oversize_image_dimensions_are_refused_before_decoding(serve):
    model = Model()

    @model.command("size", inputs={"photo": image(max_pixels=100)}, outputs={"n": number()})
    def size(_, inputs):
        return {"n": 1}

    client = serve(model)
    problem = assert_problem(await client.post("/size", json={"photo": png_base64((20, 20))}), 422)
    assert "over the limit of 100 pixels" in problem["errors"][0]["message"]


# ----------------------------------------------------------------------------- model errors


async def test_a_failing_model_gives_a_500_problem_without_traceback(serve):
    model = Model()

    @model.command("boom", inputs={}, outputs={"x": text()})
    def boom(_, inputs):
        raise RuntimeError("CUDA out of memory")

    client = serve(model)
    problem = assert_problem(await client.post("/boom"), 500)
    assert problem["type"] == "urn:modelcloud:problem:model-error"
    assert problem["detail"] == "boom raised RuntimeError: CUDA out of memory"


async def test_model_code_can_reject_an_input_itself(serve):
    model = Model()

    @model.command("check", inputs={"photo": image()}, outputs={"x": text()})
    def check(_, inputs):
        raise InvalidInput("photo", "is completely black")

    client = serve(model)
    problem = assert_problem(await client.post("/check", json={"photo": png_base64()}), 422)
    assert problem["errors"] == [{"field": "photo", "message": "is completely black"}]


@pytest.mark.parametrize(
    ("returned", "detail"),
    [
        ({"other": 1}, "returned no ['label']"),
        ({"label": 5}, "bad 'label': must be a string"),
    ],
)
async def test_outputs_that_do_not_match_the_declaration_are_reported(serve, returned, detail):
    model = Model()

    @model.command("bad", inputs={}, outputs={"label": text()})
    def bad(_, inputs):
        return returned

    client = serve(model)
    problem = assert_problem(await client.post("/bad"), 500)
    assert problem["type"] == "urn:modelcloud:problem:invalid-output"
    assert detail in problem["detail"]


async def test_a_single_output_may_be_returned_bare(serve):
    model = Model()

    @model.command("hello", inputs={"name": text()}, outputs={"greeting": text()})
    def hello(_, inputs):
        return f"hello {inputs['name']}"

    client = serve(model)
    response = await client.post("/hello", json={"name": "ada"})
    assert response.json() == {"greeting": "hello ada"}


# ----------------------------------------------------------------------------- setup


def checkpoint_model(calls: list[dict]) -> Model:
    model = Model()

    @model.setup(options={"checkpoint": file(extension=".pkl"), "scale": number(default=2)})
    def setup(opts):
        calls.append(opts)
        if opts["scale"] < 0:
            raise ValueError("scale must not be negative")
        with open(opts["checkpoint"]) as f:
            return {"weights": f.read(), "scale": opts["scale"]}

    @model.command("predict", inputs={"x": number()}, outputs={"y": text()})
    def predict(model, inputs):
        return {"y": f"{model['weights']}:{inputs['x'] * model['scale']}"}

    return model


async def test_setup_waits_for_required_options_then_serves(serve, tmp_path):
    calls: list[dict] = []
    client = serve(checkpoint_model(calls), run_setup=False)
    health = await client.get("/healthz")
    assert health.status_code == 503
    assert health.json()["status"] == "awaiting_setup_options"
    assert_problem(await client.post("/predict", json={"x": 1}), 503)

    (tmp_path / "model.pkl").write_text("w1")
    response = await client.post("/setup", json={"checkpoint": str(tmp_path / "model.pkl")})
    assert response.status_code == 200, response.text
    assert (await client.get("/healthz")).json() == {"status": "ready"}
    assert (await client.post("/predict", json={"x": 2})).json() == {"y": "w1:4"}


async def test_post_setup_reruns_setup_with_new_options(serve, tmp_path):
    calls: list[dict] = []
    (tmp_path / "a.pkl").write_text("a")
    (tmp_path / "b.PKL").write_text("b")
    client = serve(checkpoint_model(calls), options={"checkpoint": str(tmp_path / "a.pkl")})
    assert (await client.post("/predict", json={"x": 1})).json() == {"y": "a:2"}

    response = await client.post("/setup", json={"checkpoint": str(tmp_path / "b.PKL"), "scale": 3})
    assert response.status_code == 200
    assert (await client.post("/predict", json={"x": 1})).json() == {"y": "b:3"}
    assert [c["scale"] for c in calls] == [2, 3]


async def test_bad_setup_options_and_failing_setup_keep_the_model_serving(serve, tmp_path):
    calls: list[dict] = []
    (tmp_path / "a.pkl").write_text("a")
    (tmp_path / "weights.txt").write_text("t")
    client = serve(checkpoint_model(calls), options={"checkpoint": str(tmp_path / "a.pkl")})

    wrong_extension = {"checkpoint": str(tmp_path / "weights.txt")}
    problem = assert_problem(await client.post("/setup", json=wrong_extension), 422, "checkpoint")
    assert "must be a .pkl file" in problem["errors"][0]["message"]
    outside = {"checkpoint": "/etc/passwd"}
    assert_problem(await client.post("/setup", json=outside), 422, "checkpoint")

    failing = {"checkpoint": str(tmp_path / "a.pkl"), "scale": -1}
    problem = assert_problem(await client.post("/setup", json=failing), 500)
    assert problem["detail"] == "setup raised ValueError: scale must not be negative"
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.post("/predict", json={"x": 1})).json() == {"y": "a:2"}


async def test_healthz_reports_a_failed_first_setup(tmp_path):
    model = Model()

    @model.setup
    def setup():
        raise OSError("weights file missing")

    runtime = ModelRuntime(model, FilePolicy(roots=(tmp_path,)))
    with pytest.raises(SetupFailed, match="OSError: weights file missing"):
        runtime.setup({})
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://model") as client:
        health = await client.get("/healthz")
    assert health.status_code == 503
    assert health.json() == {
        "status": "setup_failed",
        "detail": "setup failed: OSError: weights file missing",
    }


# ----------------------------------------------------------------------------- concurrency


async def test_a_running_prediction_does_not_block_the_server(serve):
    release = threading.Event()
    started = threading.Event()
    model = Model()

    @model.command("slow", inputs={}, outputs={"done": text()})
    def slow(_, inputs):
        started.set()
        release.wait(10)
        return {"done": "yes"}

    client = serve(model)
    call = asyncio.create_task(client.post("/slow"))
    await asyncio.to_thread(started.wait, 10)
    health = await asyncio.wait_for(client.get("/healthz"), timeout=5)
    assert health.status_code == 200
    assert not call.done()
    release.set()
    assert (await call).json() == {"done": "yes"}


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_at_most_concurrency_predictions_run_at_once(serve, concurrency):
    lock = threading.Lock()
    running = peak = 0
    model = Model()

    @model.command("work", inputs={}, outputs={"ok": text()})
    def work(_, inputs):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return {"ok": "y"}

    client = serve(model, concurrency=concurrency)
    responses = await asyncio.gather(*(client.post("/work") for _ in range(6)))
    assert all(r.status_code == 200 for r in responses)
    assert peak == concurrency
