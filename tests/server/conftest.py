"""A real uvicorn on loopback serving the embedded default model, one per test module that asks for it."""

from __future__ import annotations

import pytest
from harness import MODEL, live_server, make_engine
from openai import OpenAI

from server.app import create_app


@pytest.fixture(scope="module")
def base_url():
    engine = make_engine(None, max_model_len=1024)
    try:
        with live_server(create_app(engine, served_model_names=[MODEL, "alias"])) as url:
            yield url
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
