"""A real uvicorn on loopback serving the embedded default model, one per test module that asks for it;
an httpx client. (The tiny EXAONE checkpoint the mode, fuzz, security and Responses tests serve is
tests/conftest.py's exaone_model.)"""

from __future__ import annotations

import httpx2
import pytest
from harness import MODEL, live_server, running_engine
from openai import OpenAI

from server.app import create_app


@pytest.fixture(scope="module")
def default_engine():
    """The embedded default model's engine, for a module's servers to share."""
    with running_engine(None, max_model_len=1024) as engine:
        yield engine


@pytest.fixture(scope="module")
def base_url(default_engine):
    with live_server(create_app(default_engine, served_model_names=[MODEL, "alias"])) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(base_url: str):
    """A plain HTTP client on the module's server, for bodies the SDK would not send."""
    with httpx2.Client(base_url=base_url, timeout=60) as client:
        yield client
