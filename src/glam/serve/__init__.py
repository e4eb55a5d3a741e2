"""``glam serve``: an OpenAI-compatible completions server over a glam checkpoint.

Modules, read in this order: ``engine`` (the batching thread that owns the model), ``protocol``
(request checks and response bodies), ``app`` (the HTTP routes, FastAPI). Needs the optional extra
``pip install 'glam[serve]'`` (FastAPI and uvicorn); ``glam.serve.engine`` alone needs neither.
"""

from __future__ import annotations


def serve(
    run_dir: str,
    *,
    step: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 8,
    max_queue: int = 64,
    max_body_bytes: int = 4 << 20,
    model_name: str | None = None,
) -> None:
    """Load a run's checkpoint and serve it until interrupted (Ctrl-C)."""
    import os

    from glam.checkpoint import load_for_inference
    from glam.serve.engine import Engine

    app_module = _app_module()
    import uvicorn

    cfg, params, tokenizer = load_for_inference(run_dir, step=step)
    engine = Engine(cfg, params, tokenizer, max_batch=max_batch, max_queue=max_queue).start()
    name = model_name or os.path.basename(os.path.normpath(run_dir))
    app = app_module.create_app(engine, model_name=name, max_body_bytes=max_body_bytes)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.stop()


def _app_module():
    from glam.errors import GLaMError

    try:
        from glam.serve import app
    except ImportError as exc:
        raise GLaMError(
            f"glam serve needs the serve extra ({exc.name} is missing): pip install 'glam[serve]'"
        ) from None
    return app


class background:  # noqa: N801 - used as a context manager, like contextlib's
    """Run an app with uvicorn on a background thread: ``with background(app) as url: ...`` (a notebook, a test).

    ``port=0`` picks a free port; ``url`` is ``http://HOST:PORT``. Leaving the block stops the server.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.host = host

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, name="glam-serve-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (is the port free?)")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
