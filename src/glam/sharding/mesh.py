"""Device mesh from config (reference doc §4) and multi-host start-up through ``jax.distributed``."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from glam.config import ConfigError, GLaMConfig, MeshConfig

MESH_AXES = ("data", "data_inner", "model")  # data_inner > 1 only when mesh.data > moe.num_experts


def initialize_distributed(mesh_cfg: MeshConfig) -> None:
    """Join a multi-process job when ``mesh.num_processes > 1`` (idempotent)."""
    if mesh_cfg.num_processes <= 1 or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=mesh_cfg.coordinator_address,
        num_processes=mesh_cfg.num_processes,
        process_id=mesh_cfg.process_id,
    )


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> tuple[int, int]:
    """Resolve -1 and check that data × model equals the device count."""
    data, model = mesh_cfg.data, mesh_cfg.model
    if data == -1:
        if num_devices % model:
            raise ConfigError(f"mesh.model={model} does not divide the {num_devices} devices; pick a divisor")
        data = num_devices // model
    if model == -1:
        if num_devices % data:
            raise ConfigError(f"mesh.data={data} does not divide the {num_devices} devices; pick a divisor")
        model = num_devices // data
    if data * model != num_devices:
        raise ConfigError(
            f"mesh {data}x{model} needs {data * model} devices but {num_devices} are available; "
            "set mesh.data and mesh.model so their product is the device count (or use -1 for one of them)"
        )
    return data, model


def validate_mesh(cfg: GLaMConfig, data: int, model: int, batch_size: int | None = None) -> None:
    """Every size the mesh splits must divide: one clear error naming the field and the fix."""
    m = cfg.model
    batch = cfg.train.batch_size // cfg.train.grad_accum if batch_size is None else batch_size
    checks = [
        (m.num_heads, model, "model.num_heads", "mesh.model"),
        (m.ffn_dim, model, "model.ffn_dim", "mesh.model"),
        (m.d_model, model, "model.d_model", "mesh.model"),
        (m.vocab_size, model, "model.vocab_size", "mesh.model"),
        (m.d_model, data, "model.d_model", "mesh.data"),
        (batch, data, "train.batch_size (per micro-batch)", "mesh.data"),
    ]
    for size, shards, name, axis in checks:
        if size % shards:
            raise ConfigError(f"{name}={size} is not divisible by {axis}={shards}; choose a mesh that divides it")
    e = cfg.moe.num_experts
    if e and e % data and data % e:
        raise ConfigError(
            f"moe.num_experts={e} and mesh.data={data}: one must divide the other "
            "(experts are split over the data axis; with more data shards than experts an expert spans several)"
        )
    if e and data > e and (m.ffn_dim % (model * (data // e))):
        raise ConfigError(
            f"model.ffn_dim={m.ffn_dim} must divide over mesh.model x (mesh.data / moe.num_experts) = "
            f"{model * (data // e)} so each expert can span {data // e} devices"
        )


def _grid(cfg: GLaMConfig | None, devices: list, data: int, model: int) -> Mesh:
    """Devices as [data, data_inner, model]; data_inner = mesh.data / E when there are more data shards
    than experts (one expert then spans data_inner devices, reference doc §4), else 1."""
    e = cfg.moe.num_experts if cfg is not None else 0
    inner = data // e if e and data > e else 1
    grid = np.asarray(devices, dtype=object).reshape(data // inner, inner, model)
    return Mesh(grid, MESH_AXES)


def make_mesh(cfg: GLaMConfig, devices: list | None = None) -> Mesh:
    """The device mesh over ``devices`` (default: all), validated against the model.

    Its logical shape is mesh.data × mesh.model; ``data`` is stored as data × data_inner (see _grid).
    """
    devices = list(jax.devices()) if devices is None else list(devices)
    data, model = mesh_shape(cfg.mesh, len(devices))
    validate_mesh(cfg, data, model)
    return _grid(cfg, devices, data, model)


def abstract_mesh(data: int, model: int, cfg: GLaMConfig | None = None) -> Mesh:
    """A mesh over ``data × model`` devices for ahead-of-time planning (needs that many devices)."""
    n = data * model
    devices = jax.devices()
    if len(devices) < n:
        raise ConfigError(
            f"planning a {data}x{model} mesh needs {n} devices but JAX sees {len(devices)}; "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts (glam plan does this)"
        )
    return _grid(cfg, devices[:n], data, model)


def request_devices(n: int) -> None:
    """Ask for ``n`` simulated devices when JAX runs on the CPU (possible only before its backend starts).

    On an accelerator the flag is harmless (it sizes the host platform only); a backend that has
    started already keeps its devices, and :func:`inference_mesh` then names the shortfall.
    """
    try:
        jax.config.update("jax_num_cpu_devices", max(n, jax.config.jax_num_cpu_devices or 1))
    except RuntimeError:
        pass


def inference_mesh(cfg: GLaMConfig, data: int, model: int, batch_size: int) -> tuple[GLaMConfig, Mesh]:
    """(cfg with mesh.data × mesh.model, the mesh over the first data·model devices) for generating or serving.

    ``batch_size`` is the rows decoded together (``--max-batch``): it must split over ``data``, as
    every size the mesh splits must (validate_mesh names the field and the fix otherwise).
    """
    import dataclasses

    if data < 1 or model < 1:
        raise ConfigError(f"--mesh {data}x{model}: both sizes must be at least 1")
    devices = jax.devices()
    if len(devices) < data * model:
        raise ConfigError(
            f"--mesh {data}x{model} needs {data * model} devices but JAX sees {len(devices)} "
            f"({devices[0].platform}); choose a mesh of at most {len(devices)} devices"
        )
    cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=data, model=model))
    validate_mesh(cfg, data, model, batch_size=batch_size)
    return cfg, _grid(cfg, devices[: data * model], data, model)


def place_for_inference(cfg: GLaMConfig, params: dict, mesh: tuple[int, int], batch_size: int):
    """(cfg, params placed on a data × model mesh, the mesh): experts over ``data``, hidden over ``model``.

    The parameters were restored on one device first (a run's config is needed to shape the mesh);
    the rule table then places each on the mesh.
    """
    from glam.model.init import param_shardings

    cfg, device_mesh = inference_mesh(cfg, *mesh, batch_size=batch_size)
    return cfg, jax.device_put(params, param_shardings(cfg, device_mesh)), device_mesh
