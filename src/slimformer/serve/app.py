"""The HTTP API: ``POST /predict``, ``GET /health``, ``GET /metrics`` (Prometheus), OpenAPI at
``/docs``. Requests are validated before they reach the model: an empty list, a wrong field or
malformed JSON is a 422 with the reason; too many texts or an oversized text a 413; a full queue
a 503 with Retry-After. Shutdown finishes every queued request before the process exits."""

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from slimformer.errors import SlimformerError
from slimformer.serve.batcher import ClosedError, DynamicBatcher, QueueFullError


@dataclass
class ServeSettings:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_texts: int = 64
    max_chars: int = 2000


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="texts to classify")


class Prediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def create_app(predict, settings: ServeSettings, model_name: str = "model") -> FastAPI:
    """``predict(texts) -> [{label, score, scores}]`` is called in batches by the batcher."""
    if settings.max_texts > settings.max_queue:
        raise SlimformerError(
            f"max_texts ({settings.max_texts}) must not exceed max_queue ({settings.max_queue}): "
            "a request that large could never be queued."
        )
    registry = CollectorRegistry()
    requests = Counter("slimformer_requests", "Requests by outcome", ["status"], registry=registry)
    texts_total = Counter("slimformer_texts", "Texts classified", registry=registry)
    latency = Histogram(
        "slimformer_request_seconds",
        "Request latency",
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    batch_size = Histogram(
        "slimformer_batch_size",
        "Texts per model call",
        registry=registry,
        buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    )
    queue_depth = Gauge("slimformer_queue_depth", "Texts waiting", registry=registry)
    batcher = DynamicBatcher(
        predict,
        settings.max_batch_size,
        settings.max_wait_ms,
        settings.max_queue,
        on_batch=lambda n, _s: batch_size.observe(n),
    )
    queue_depth.set_function(lambda: batcher.queued)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await batcher.close()  # graceful: queued requests are answered first

    app = FastAPI(
        title="slimformer", summary=f"Text classification with {model_name}", lifespan=lifespan
    )
    app.state.batcher = batcher

    @app.post("/predict", response_model=PredictResponse)
    async def predict_route(body: PredictRequest) -> PredictResponse:
        t0 = time.perf_counter()
        if len(body.texts) > settings.max_texts:
            requests.labels("413").inc()
            raise HTTPException(
                413,
                f"{len(body.texts)} texts in one request; the limit is {settings.max_texts}. "
                "Split the request.",
            )
        for i, text in enumerate(body.texts):
            if len(text) > settings.max_chars:
                requests.labels("413").inc()
                raise HTTPException(
                    413,
                    f"texts[{i}] has {len(text)} characters; the limit is {settings.max_chars}.",
                )
        try:
            results = await batcher.submit(body.texts)
        except QueueFullError:
            requests.labels("503").inc()
            raise HTTPException(
                503,
                "The server is at capacity (queue full); retry shortly.",
                headers={"Retry-After": "1"},
            ) from None
        except ClosedError:
            requests.labels("503").inc()
            raise HTTPException(503, "The server is shutting down.") from None
        requests.labels("200").inc()
        texts_total.inc(len(body.texts))
        latency.observe(time.perf_counter() - t0)
        return PredictResponse(predictions=results)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "queued": batcher.queued}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    max_length: int = 128,
) -> None:
    """Load ``model`` (any slimformer folder) and serve it until SIGINT/SIGTERM."""
    import uvicorn

    from slimformer.models.loading import check_model_ref
    from slimformer.serve.classifier import TextClassifier

    check_model_ref(model)  # a clear error for a missing folder, before uvicorn starts
    classifier = TextClassifier(model, max_length)
    classifier.predict(["warm-up"])  # compile/load kernels before the first request
    app = create_app(classifier.predict, settings or ServeSettings(), str(model))
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
