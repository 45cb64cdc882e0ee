"""HTTP serving with dynamic batching (FastAPI + uvicorn) for any folder slimformer writes."""
