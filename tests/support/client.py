"""The K2V client package against a real node: the Python client's constructor arguments, and the
``garagekv k2v`` CLI's command line and environment.

Shared by the client tests (``tests/integration/test_client_api.py``, ``test_client_extensions.py``)
and the CLI tests (``tests/integration/test_client_cli.py``, ``test_client_ttl.py``).
"""

from __future__ import annotations

import os
import sys

from tests.support import REGION


def kwargs(node, creds, **kw) -> dict:
    return {
        "endpoint": node.endpoint,
        "region": REGION,
        "access_key_id": creds["access_key"],
        "secret_access_key": creds["secret_key"],
        "bucket": creds["bucket"],
        **kw,
    }


def run_env(node, creds, with_creds: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GARAGEKV_", "K2V_"))}
    if with_creds:
        env.update(
            {
                "AWS_ACCESS_KEY_ID": creds["access_key"],
                "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
                "AWS_REGION": REGION,
                "GARAGEKV_K2V_ENDPOINT": f"http://{node.endpoint}",
                "GARAGEKV_BUCKET": creds["bucket"],
            }
        )
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "garagekv.cli.main", "k2v", *args]
