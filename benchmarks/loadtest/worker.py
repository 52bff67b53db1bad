"""A locust worker process of `exaone-serve bench --processes N`: runs its share, writes it to a file.

    python -m benchmarks.loadtest.worker CONFIG.json MASTER_PORT OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from locust.env import Environment
from locust.log import setup_logging

from benchmarks.loadtest.users import LoadConfig, LoadContext, user_classes


def main() -> None:
    """Connect to the master on loopback, run until it says quit, then write records and client samples."""
    config_path, port, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    setup_logging("WARNING")
    ctx = LoadContext(LoadConfig(**json.loads(Path(config_path).read_text())))
    env = Environment(user_classes=user_classes(ctx), host=ctx.cfg.base_url)
    ctx.environment = env
    runner = env.create_worker_runner(master_host="127.0.0.1", master_port=port)

    def start_at(msg: Any, **_: Any) -> None:
        ctx.worker_rank = msg.data["order"].index(runner.client_id)
        ctx.start = msg.data["start"]

    runner.register_message("start_at", start_at)
    runner.greenlet.join()
    out.write_text(json.dumps({"records": ctx.records, "client_samples": ctx.client_samples}))


if __name__ == "__main__":
    main()
