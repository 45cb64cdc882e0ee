"""The server: predictions through dynamic batching, every bad request a clear 4xx, 503 when
the queue is full (and the server keeps serving), queued work finished on shutdown."""

import asyncio
import threading
import time

import pytest
from fastapi.testclient import TestClient

from slimformer.serve.app import ServeSettings, create_app
from slimformer.serve.batcher import ClosedError, DynamicBatcher, QueueFullError
from slimformer.serve.classifier import TextClassifier


@pytest.fixture(scope="module")
def classifier(tiny_teacher):
    return TextClassifier(tiny_teacher)


@pytest.fixture
def client(classifier):
    settings = ServeSettings(
        max_batch_size=8, max_wait_ms=2, max_queue=64, max_texts=4, max_chars=50
    )
    with TestClient(create_app(classifier.predict, settings)) as c:
        yield c


def test_predict_health_metrics_openapi(client, classifier):
    r = client.post("/predict", json={"texts": ["a gorgeous film", "dull"]})
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == [
        p["label"] for p in classifier.predict(["a gorgeous film", "dull"])
    ]
    assert set(preds[0]["scores"]) == {"negative", "positive"}
    assert abs(sum(preds[0]["scores"].values()) - 1) < 1e-4
    assert client.get("/health").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'slimformer_requests_total{status="200"} 1.0' in metrics
    assert "slimformer_batch_size_bucket" in metrics
    assert "/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "json"),
        ({"json": {"texts": []}}, 422, "at least 1"),
        ({"json": {"text": ["x"]}}, 422, "texts"),
        ({"json": {"texts": ["a"] * 5}}, 413, "limit is 4"),
        ({"json": {"texts": ["a" * 51]}}, 413, "51 characters"),
        ({"json": {"texts": [3]}}, 422, "string"),
    ],
)
def test_bad_requests_get_clear_4xx_and_the_server_lives(client, kwargs, status, words):
    r = client.post("/predict", **kwargs)
    assert r.status_code == status
    assert words.lower() in r.text.lower()
    assert client.post("/predict", json={"texts": ["still alive"]}).status_code == 200


def _slow_predict(texts):
    time.sleep(0.05)
    return [{"label": "x", "score": 1.0, "scores": {"x": 1.0}} for _ in texts]


def test_queue_bound_gives_503_and_serving_continues():
    settings = ServeSettings(max_batch_size=2, max_wait_ms=1, max_queue=4, max_texts=4)
    with TestClient(create_app(_slow_predict, settings)) as c:
        codes = []

        def hit():
            codes.append(c.post("/predict", json={"texts": ["a", "b", "c"]}).status_code)

        threads = [threading.Thread(target=hit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 503 in codes and 200 in codes
        assert c.post("/predict", json={"texts": ["a"]}).status_code == 200


def test_batcher_merges_concurrent_requests_and_drains_on_close():
    calls = []

    def record(texts):
        calls.append(len(texts))
        time.sleep(0.01)
        return [t.upper() for t in texts]

    async def scenario():
        b = DynamicBatcher(record, max_batch_size=16, max_wait_ms=20, max_queue=100)
        b.start()
        jobs = [asyncio.create_task(b.submit([f"t{i}"])) for i in range(12)]
        await asyncio.sleep(0)
        closing = asyncio.create_task(b.close())
        results = await asyncio.gather(*jobs)
        await closing
        with pytest.raises(ClosedError):
            await b.submit(["late"])
        return results

    results = asyncio.run(scenario())
    assert results == [[f"T{i}"] for i in range(12)]  # every queued request answered, in order
    assert max(calls) > 1 and sum(calls) == 12


def test_batcher_refuses_beyond_its_queue():
    async def scenario():
        b = DynamicBatcher(_slow_predict, max_batch_size=1, max_wait_ms=0, max_queue=2)
        b.start()
        first = asyncio.create_task(b.submit(["a", "b"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await b.submit(["c", "d", "e"])
        await first
        await b.close()

    asyncio.run(scenario())


def test_serve_command_parses_and_binds_loopback_by_default(monkeypatch, tiny_teacher):
    import slimformer.serve.app as app_module
    from slimformer.cli import main

    seen = {}

    def fake_serve(model, host, port, settings, max_length):
        seen.update(model=model, host=host, port=port, batch=settings.max_batch_size)

    monkeypatch.setattr(app_module, "serve", fake_serve)
    assert main(["serve", str(tiny_teacher), "--max-batch-size", "1"]) == 0
    assert seen == {"model": str(tiny_teacher), "host": "127.0.0.1", "port": 8000, "batch": 1}
