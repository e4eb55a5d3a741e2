"""``glam serve``: an OpenAI-compatible completions server over a glam checkpoint.

Modules, read in this order: ``rows`` (what a request asks and gets back: rows, tokens, events, the
refusals, the prompt's ids and the context check), ``reports`` (a token's reported text and top
alternatives, the echo scoring pass), ``engine`` (the batching thread that owns the model), ``protocol``
(request checks and response bodies), ``chat`` (chat completions through a template), ``app`` (the
HTTP routes, FastAPI), with ``auth`` (API keys) and ``metrics`` (Prometheus). Needs the optional extra
``pip install 'glam[serve]'`` (FastAPI, uvicorn, prometheus-client, jinja2); ``glam.serve.engine``
alone needs none of them.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading

log = logging.getLogger("uvicorn.error")


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
    warmup: bool = True,
    api_key: str | None = None,
    chat_template: str | None = None,
    batching: str | None = None,
    prefill_chunk: int | None = None,
    drain_timeout_s: float = 30.0,
    mesh: tuple[int, int] | None = None,
) -> None:
    """Load a run's checkpoint and serve it until SIGTERM or Ctrl-C, which drain it (then return).

    The port is bound before the model loads, so a busy port is one error at once. With ``warmup``
    the serving shapes compile before ``/health`` says ready (requests that come meanwhile wait).
    ``batching`` and ``prefill_chunk`` go to :class:`Engine` (None: its defaults). The first SIGTERM
    or SIGINT drains: new requests get 503, admitted ones get up to ``drain_timeout_s`` seconds to
    finish, then the server exits; a second signal exits at once.
    """
    import os

    app_module = _app_module()
    from glam.checkpoint import load_for_inference
    from glam.serve.auth import is_loopback
    from glam.serve.chat import ChatTemplate, read_template
    from glam.serve.engine import Engine

    sock = bind(host, port)
    engine = None
    try:
        template_source = read_template(chat_template) if chat_template else None
        if not api_key and not is_loopback(host):
            print(
                f"warning: serving on {host}, reachable from other machines, without an API key; "
                "set --api-key (or GLAM_API_KEY), or bind 127.0.0.1",
                file=sys.stderr,
                flush=True,
            )
        if mesh is not None:
            from glam.sharding.mesh import request_devices

            request_devices(mesh[0] * mesh[1])
        cfg, params, tokenizer = load_for_inference(run_dir, step=step)
        options = {k: v for k, v in (("batching", batching), ("prefill_chunk", prefill_chunk)) if v is not None}
        if mesh is not None:
            from glam.sharding.mesh import place_for_inference

            cfg, params, options["mesh"] = place_for_inference(cfg, params, mesh, max_batch)
        engine = Engine(cfg, params, tokenizer, max_batch=max_batch, max_queue=max_queue, **options)
        template = None
        if template_source is not None:
            bos, eos = tokenizer.id_to_piece(tokenizer.bos_id), tokenizer.id_to_piece(tokenizer.eos_id)
            template = ChatTemplate(template_source, bos_token=bos, eos_token=eos)
        name = model_name or os.path.basename(os.path.normpath(run_dir))
        app = app_module.create_app(
            engine, model_name=name, max_body_bytes=max_body_bytes, api_key=api_key, chat_template=template
        )
        server = _server_class()(app, drain_timeout_s)
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "serving %r on http://%s:%d (OpenAI-compatible /v1/completions, /v1/chat/completions)",
            name,
            shown,
            sock.getsockname()[1],
        )
        threading.Thread(target=_start, args=(engine, warmup), name="glam-serve-start", daemon=True).start()
        server.run(sockets=[sock])
    finally:
        sock.close()
        if engine is not None:
            engine.stop()


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), not yet listening; a busy port or a bad host is one GLaMError."""
    from glam.errors import GLaMError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise GLaMError(f"--host {host!r}: not an address this machine can listen on ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise GLaMError(
                f"port {port} on {host} is in use (another server?); stop it or choose another --port"
            ) from None
        raise GLaMError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host or --port") from None
    sock.set_inheritable(True)
    return sock


def _start(engine, warmup: bool) -> None:
    """Compile the serving shapes (when asked), then start the engine thread: /health turns ready."""
    seconds = None
    if warmup:
        try:
            seconds = engine.warmup()
        except Exception as exc:  # serve anyway: requests compile what they need
            log.error("warm-up failed (%s: %s); serving without it", type(exc).__name__, str(exc).splitlines()[0])
    engine.start()
    log.info("ready%s", f" (warm-up compiled the serving shapes in {seconds:.1f} s)" if seconds else "")


def _app_module():
    from glam.errors import GLaMError

    try:
        from glam.serve import app
    except ImportError as exc:
        raise GLaMError(
            f"glam serve needs the serve extra ({exc.name} is missing): pip install 'glam[serve]'"
        ) from None
    return app


def _server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server with a drain on the first SIGTERM / SIGINT (and an exit at once on the second)."""

        def __init__(self, app, drain_timeout_s: float):
            config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=2, lifespan="off")
            super().__init__(config)
            self.state, self.drain_timeout_s, self.drainer = app.state.glam, drain_timeout_s, None

        def handle_exit(self, sig, frame) -> None:  # not recorded, so uvicorn does not re-raise it at exit
            if self.drainer is None:
                self.drainer = threading.Thread(target=self.drain, args=(sig,), name="glam-serve-drain", daemon=True)
                self.drainer.start()
            else:
                self.should_exit = self.force_exit = True

        def drain(self, sig: int) -> None:
            engine = self.state.engine
            log.info(
                "%s: draining (new requests get 503); %d requests in flight have up to %g s to finish",
                signal.Signals(sig).name,
                engine.in_flight,
                self.drain_timeout_s,
            )
            self.state.drain()
            if not engine.wait_idle(self.drain_timeout_s):
                log.warning(
                    "drain: %d requests still in flight after %g s; stopping them",
                    engine.in_flight,
                    self.drain_timeout_s,
                )
            self.should_exit = True

    return DrainingServer


class background:  # noqa: N801 - used as a context manager, like contextlib's
    """Run an app with uvicorn on a background thread: ``with background(app) as url: ...`` (a notebook, a test).

    ``port=0`` picks a free port; ``url`` is ``http://HOST:PORT``. Leaving the block stops the server.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.host = host

    def __enter__(self) -> str:
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
