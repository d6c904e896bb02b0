"""Running the app under uvicorn: :func:`run` serves until SIGINT/SIGTERM, then shuts down cleanly
(in-flight requests finish, the batcher drains, the index is snapshotted).

If the model or index cannot be loaded, the server stops and :func:`run` raises the reason.
"""

from __future__ import annotations

import ipaddress
import logging

from metric_sim.serve.app import create_app
from metric_sim.serve.config import ServeConfig

__all__ = ["run"]

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(config: ServeConfig, *, log_level: str = "info") -> None:
    """Serve ``config`` on ``config.host:config.port`` until stopped."""
    import uvicorn

    if not _is_loopback(config.host) and not config.api_key:
        logger.warning("listening on %s without --api-key: anyone who can reach this address can use the "
                       "server%s", config.host, "" if config.write_api_key else " and change its index")
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                          access_log=False, server_header=False, lifespan="on",
                                          timeout_graceful_shutdown=30))
    state = app.state.server

    def stop(_: BaseException) -> None:
        server.should_exit = True

    state.on_failure = stop
    server.run()
    if state.failure is not None:
        raise state.failure
