"""The step-reward model sharded over N ranks: one torch process group of N Ray actors, the model sharded by torch
FSDP2 (``torch.distributed.fsdp.fully_shard``), scoring and training data-parallel over the ranks, behind the same
service interface as the one-actor model (``score``, ``update``, ``save`` / ``load``, restarts).

Three layers:

* :class:`ShardedStepRewardModel`: one rank's part, a :class:`~spa_reward.steprm.service.StepRewardModel` whose
  modules are sharded (every decoder layer an FSDP unit, so is an untied input embedding; the progress /
  discriminator head a unit of its own that stays fp32; the rest in the root unit) over the default process group (gloo on CPU, NCCL on GPU). Mixed precision
  where the one-actor model would autocast to bf16 (``precision``: on CUDA): fp32 sharded master weights, gradients
  reduce-scattered in fp32, fp32 sharded AdamW state, bf16 compute (``MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32)``). Everything above the forward pass is the one-actor code: every rank receives the whole
  batch, splits the same micro-batch plan (``_micro_batches``) round-robin, computes its share and all-gathers the
  values, so the losses and their gradients dL/dQ are computed identically on every rank; the backward passes sum
  the rank gradients (FSDP averages, so each rank's loss is multiplied by N). A rank with fewer micro-batches runs
  idle passes (a two-token input, zero loss), because every forward and backward of an FSDP model is a collective.
  No serving copy: the group runs one call at a time (below), so the trained weights are the served weights.
* :class:`ShardedGroup`: the coordinator's handle on the N rank actors (a placement group of N bundles on the PRM's
  own GPUs, beside verl's pool; ``PACK``, so several nodes when one has too few). It has the model interface the
  service actor uses and runs one call at a time on all ranks. A rank that dies, or fails while the others do not,
  fails the call with :class:`GroupFailure` and kills every rank: one rank never continues alone.
* :class:`ShardedStepRewardServiceActor`: the named Ray actor (``start_service(..., ranks=N)``), the one-actor
  :class:`~spa_reward.steprm.service.StepRewardServiceActor` with a :class:`ShardedGroup` as its model. On a
  :class:`GroupFailure` it starts a fresh group in the same placement group, restores what it last published (a
  base state, sharded, and the journal of update batches since, replayed by the new group: ``restore_state``) and
  retries the call once; the new group is a new ``incarnation``,
  which the trainer hooks count as a restart and check against the version they expect. A group that cannot come
  back (``max_group_restarts`` used up, no published state, a second failure) refuses to serve with one error.

Checkpoints (``save`` / ``load``, the published state, ``global_step_N/steprm``) are written with torch's
distributed checkpoint (``torch.distributed.checkpoint``, DCP): ``dcp/`` holds the trainable weights and the AdamW
state sharded as they are in memory, ``state.json`` the version, counters, settings, AdamW hyperparameters and
``layout: "dcp"``, ``replay.json`` the replay window. DCP reshards on load, so a group of any size restores it; the
one-actor model reads it too (:func:`read_full_dcp`), and a group restores the one-actor format
(``weights.safetensors`` + ``optimizer.pt``) as well: a run may change ``ranks`` when it resumes.

Ordering differs from the one-actor service in one respect: a score call that arrives while an update runs waits
for it and is answered with the updated weights (the one-actor service answers it from the pre-update copy). The
trainer hooks score a batch before they update on it, and verl's synchronous trainer runs no rollout during the
update, so rewards are the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from spa_reward.steprm.service import (
    DCP_LAYOUT,
    STATE_FORMAT,
    StepRewardModel,
    StepRewardServiceActor,
    StepRMSettings,
    check_saved_state,
)

logger = logging.getLogger(__name__)

DCP_DIR = "dcp"
DEFAULT_GROUP_RESTARTS = 3


class GroupFailure(RuntimeError):
    """A rank died, or failed while the other ranks did not: the group is gone (every rank was killed)."""


# ------------------------------------------------------------------------------------------------ sharding


def _unit_classes(module: nn.Module) -> set[str]:
    """Class names of the blocks to shard one by one: Hugging Face models list them in ``_no_split_modules``."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard_module(root: nn.Module, mesh, mp_policy, fp32_modules: Sequence[nn.Module] = ()) -> nn.Module:
    """FSDP2 over ``mesh``: every decoder block (``_no_split_modules``) an FSDP unit, the input embedding a unit
    when it is not tied to the output layer, each of ``fp32_modules`` a unit that computes in fp32 whatever
    ``mp_policy`` says (the progress head), then ``root``, which keeps the rest (output layer, final norm, a tied
    embedding): the output layer is called in chunks outside the LM's forward, so it must stay gathered from the
    root's forward to the end of its backward. Returns ``root``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    classes = _unit_classes(root)
    for m in root.modules():
        if type(m).__name__ in classes:
            fully_shard(m, mesh=mesh, mp_policy=mp_policy)
    for m in root.modules():
        inp = getattr(m, "get_input_embeddings", None)
        if inp is None or not callable(getattr(m, "get_output_embeddings", None)):
            continue
        emb, out = m.get_input_embeddings(), m.get_output_embeddings()
        if emb is not None and (out is None or out.weight is not emb.weight):
            fully_shard(emb, mesh=mesh, mp_policy=mp_policy)
        break  # the outermost model that has both
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for m in fp32_modules:
        fully_shard(m, mesh=mesh, mp_policy=fp32)
    fully_shard(root, mesh=mesh, mp_policy=mp_policy)
    return root


class _LogProbRoot(nn.Module):
    """The FSDP root of a causal-LM step-reward model: its forward is the one-actor model's token log-prob path
    (hidden states, then the output layer in chunks), so every parameter it touches is unsharded by FSDP's hooks
    (the output layer is called outside the LM's own forward)."""

    def __init__(self, owner: StepRewardModel, model: nn.Module):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_owner", owner)  # not a submodule

    def forward(self, input_ids, attention_mask, turn_idx):
        return StepRewardModel._turn_token_logprobs(self._owner, self.model, input_ids, attention_mask, turn_idx)


# ------------------------------------------------------------------------------------------------ one rank


class ShardedStepRewardModel(StepRewardModel):
    """One rank's part of the sharded model (see the module docstring). The default process group must be up
    (:meth:`RankActor.setup` starts it); every rank must make the same calls with the same arguments.

    The ranks build their full model one after another (a barrier between them) before sharding it, so a node
    holds one full copy in host memory at a time, not one per rank."""

    def __init__(self, settings: StepRMSettings | Mapping[str, Any]):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        s = settings if isinstance(settings, StepRMSettings) else StepRMSettings.from_dict(settings)
        if s.lora_r > 0:
            raise ValueError("lora_r > 0 with a sharded step-reward service is not supported: LoRA already fits one "
                             "GPU (use ranks=1), or train the whole model sharded (lora_r=0)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        device = torch.device(s.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.mesh = init_device_mesh(device.type, (self.world,))
        self._roots: dict[int, nn.Module] = {}
        for r in range(self.world):
            if r == self.rank:
                super().__init__(s)
            dist.barrier()

    # -------------------------------------------------------------------------------------------- building

    def _mp_policy(self):
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.autocast_bf16:  # where the one-actor model computes in bf16: bf16 all-gathers, fp32 reduce
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()

    def _place(self) -> None:
        if self.settings.objective == "implicit":  # on the whole model in host memory, before sharding
            device, self.device = self.device, torch.device("cpu")
            try:
                StepRewardModel._check_logprob_path(self)
            finally:
                self.device = device
        mp = self._mp_policy()
        if self._head_model:  # ProgressEstimator: its forward is the root; its head stays fp32
            shard_module(self.model, self.mesh, mp, fp32_modules=[self.model.head])
            self._roots[id(self.model)] = self.model
        else:
            self._roots[id(self.model)] = shard_module(_LogProbRoot(self, self.model), self.mesh, mp)
        if self.reference is not None:
            if self.autocast_bf16:  # frozen: bf16 shards are what the mixed-precision all-gather would give
                self.reference.to(torch.bfloat16)
            self._roots[id(self.reference)] = shard_module(_LogProbRoot(self, self.reference), self.mesh, mp)
            self.reference.to(self.device)
        self.model.to(self.device)

    def _serving_copy(self):
        return self.model  # one call at a time: the trained weights are the served weights

    def _sync_serving(self) -> None:
        pass

    # -------------------------------------------------------------------------------------------- forward

    def _turn_token_logprobs(self, model, input_ids, attention_mask, turn_idx):
        root = self._roots.get(id(model))
        if root is None:  # not a sharded module (the one-actor path of the base class)
            return super()._turn_token_logprobs(model, input_ids, attention_mask, turn_idx)
        return root(input_ids, attention_mask, turn_idx)

    def _reshard(self) -> None:
        """Free the all-gathered weights of the roots: FSDP keeps a root's weights gathered after a forward
        without backward, and its modules then show the gathered tensors instead of the sharded parameters."""
        for root in self._roots.values():
            root.reshard()

    def _idle_item(self) -> tuple:
        """The input of an idle pass (two padding tokens, the second a one-token turn; the rollout reference 0)."""
        return ([self.pad_id, self.pad_id], [[1, 2]], [0], [0.0, 0.0])

    def _share(self, batches: list[list[int]]) -> tuple[list[list[int]], int]:
        """This rank's micro-batches (round-robin over the global plan) and the idle passes that match the rank
        with the most."""
        mine = batches[self.rank :: self.world]
        return mine, math.ceil(len(batches) / self.world) - len(mine)

    def _values(self, model, prepared: list, grad: bool = False) -> list[torch.Tensor]:
        import torch.distributed as dist

        mine, idle = self._share(self._micro_batches(prepared))
        local: dict[int, torch.Tensor] = {}
        for chunk in mine:
            todo = [i for i in chunk if prepared[i][1]]
            for i in chunk:
                local[i] = torch.zeros(0)
            if not todo:
                idle += 1
                continue
            values = self._forward(model, [prepared[i] for i in todo], grad)
            for row, i in enumerate(todo):
                local[i] = values[row, : len(prepared[i][1])].detach().cpu()
        for _ in range(idle):
            self._forward(model, [self._idle_item()], grad)
        self._reshard()
        parts: list = [None] * self.world
        dist.all_gather_object(parts, local)
        out: list[Optional[torch.Tensor]] = [None] * len(prepared)
        for part in parts:
            for i, v in part.items():
                out[i] = v
        return out

    def _accumulate(self, prepared: list, loss_of: Callable, skip: Optional[Callable] = None) -> float:
        """The base class's gradient accumulation, data-parallel: this rank's micro-batches, each loss times N
        (FSDP averages the rank gradients; the base class sums micro-batches), idle passes with zero loss, and the
        sum of the losses over all ranks."""
        import torch.distributed as dist

        batches = [c for c in self._micro_batches(prepared) if skip is None or not skip(c)]
        mine, idle = self._share(batches)
        total = 0.0
        for chunk in mine:
            out = self._forward(self.model, [prepared[i] for i in chunk], grad=True)
            loss = loss_of(chunk, out)
            (loss * self.world).backward()
            total += float(loss.detach())
        for _ in range(idle):
            out = self._forward(self.model, [self._idle_item()], grad=True)
            (out.float().sum() * 0.0).backward()
        self._reshard()  # a frozen reference's root stays gathered after its no-grad forwards
        t = torch.tensor([total], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    # -------------------------------------------------------------------------------------------- state

    def info(self) -> dict[str, Any]:
        return {**super().info(), "rank": self.rank, "ranks": self.world}

    def _trainable(self) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters())
        trainable = {k: p for k, p in named.items() if p.requires_grad}
        return trainable or named

    def save(self, directory: str | os.PathLike) -> None:
        """Every rank writes its shards (DCP), rank 0 the replicated files; returns when all are written."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with self._train_lock:
            self._reshard()
            params = self._trainable()
            state: dict[str, Any] = {"model": params}
            optim_meta = None
            if self.optimizer is not None and self.optimizer.state:
                state["optim"] = {k: self.optimizer.state[p] for k, p in params.items() if p in self.optimizer.state}
                optim_meta = _param_groups(self.optimizer, list(params), list(state["optim"]))
            dcp.save(state, checkpoint_id=str(out / DCP_DIR))
            if self.rank == 0:
                with open(out / "replay.json", "w", encoding="utf-8") as f:
                    json.dump([[it.to_json() for it in b] for b in self.window], f)
                meta = {"format": STATE_FORMAT, "layout": DCP_LAYOUT, "ranks": self.world, "version": self.version,
                        "stats": self.stats, "settings": self.settings.to_dict(), "optimizer": optim_meta}
                with open(out / "state.json", "w", encoding="utf-8") as f:
                    json.dump(meta, f, indent=1, sort_keys=True)
            dist.barrier()

    def load(self, directory: str | os.PathLike) -> None:
        """Restore a state written by a group of any size (DCP reshards) or by the one-actor model."""
        import torch.distributed.checkpoint as dcp

        src = Path(directory)
        state = check_saved_state(src, self.settings)
        with self._train_lock:
            self._reshard()
            params = self._trainable()
            if state.get("layout") == DCP_LAYOUT:
                template: dict[str, Any] = {"model": params}
                meta = state.get("optimizer")
                if self.optimizer is not None and meta:
                    template["optim"] = {k: _adam_template(p) for k, p in params.items() if k in meta["state"]}
                dcp.load(template, checkpoint_id=str(src / DCP_DIR))
                optim = template.get("optim")
            else:  # the one-actor format: full tensors on every rank, each keeps its shard
                weights, optim_full, meta = _read_full_files(src, list(params), self.optimizer is not None)
                unknown = sorted(set(weights) - set(params))
                if unknown:
                    raise ValueError(f"{src}: weights {unknown[:3]}... do not belong to this model")
                with torch.no_grad():
                    for k, full in weights.items():
                        _local(params[k]).copy_(_local(_shard_of(full, params[k])))
                optim = None
                if optim_full is not None:
                    optim = {k: {n: (_shard_of(v, params[k]) if torch.is_tensor(v) and v.dim() else v)
                                 for n, v in st.items()} for k, st in optim_full.items()}
            if self.optimizer is not None:
                _set_optimizer_state(self.optimizer, params, optim, meta)
            self._set_counters(src, state)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _shard_of(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` sharded as ``like`` (a DTensor: each rank cuts its own shard, no communication)."""
    full = full.to(like.device, like.dtype)
    if not hasattr(like, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def _adam_template(p: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p), "step": torch.zeros((), dtype=torch.float32)}


def _param_groups(optimizer: torch.optim.Optimizer, names: list[str], with_state: list[str]) -> dict[str, Any]:
    """AdamW's hyperparameters (JSON), the parameter names in its order and those that have a state (a parameter
    that never had a gradient has none)."""
    groups = []
    for g in optimizer.param_groups:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"})
    return {"param_groups": groups, "params": names, "state": with_state}


def _set_optimizer_state(optimizer, params: dict[str, torch.Tensor], state: Optional[dict], meta: Optional[dict]) -> None:
    """Replace ``optimizer``'s state by ``state`` (name -> AdamW state, None = fresh) and its hyperparameters by
    ``meta``'s."""
    optimizer.state.clear()
    if state:
        for k, st in state.items():
            optimizer.state[params[k]] = dict(st)
    if meta:
        for g, saved in zip(optimizer.param_groups, meta["param_groups"]):
            for k, v in saved.items():
                if k in g:
                    g[k] = tuple(v) if isinstance(g[k], tuple) else v


def _read_full_files(src: Path, names: list[str], with_optimizer: bool):
    """The one-actor format: ``(weights, AdamW state by name or None, hyperparameters or None)``; ``names``: the
    trainable parameters in the optimiser's order."""
    from safetensors.torch import load_file

    weights = load_file(str(src / "weights.safetensors"))
    if not with_optimizer:
        return weights, None, None
    opt = src / "optimizer.pt"
    if not opt.is_file():
        raise FileNotFoundError(f"step-reward model state {str(opt)!r} is missing")
    sd = torch.load(opt, map_location="cpu", weights_only=True)
    groups = sd["param_groups"]
    if len(groups) != 1 or len(groups[0]["params"]) != len(names):
        raise ValueError(f"{opt} holds an optimiser of {[len(g['params']) for g in groups]} parameters; this model "
                         f"trains {len(names)} in one group")
    by_name = {names[j]: sd["state"][i] for j, i in enumerate(groups[0]["params"]) if i in sd["state"]}
    meta = {"param_groups": [{k: v for k, v in groups[0].items() if k != "params"}], "params": names,
            "state": list(by_name)}
    return weights, (by_name or None), meta


def read_full_dcp(src: str | os.PathLike, params: Mapping[str, torch.Tensor], with_optimizer: bool
                  ) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """A sharded checkpoint as full tensors, without a process group (the one-actor model's load): ``(weights by
    name, optimizer state_dict in ``torch.optim`` form for the trainable ``params`` in their order, or None when
    it was saved before any update)``."""
    import torch.distributed.checkpoint as dcp

    src = Path(src)
    with open(src / "state.json", encoding="utf-8") as f:
        meta = json.load(f).get("optimizer") if with_optimizer else None
    template: dict[str, Any] = {"model": {k: torch.empty_like(p, device="cpu") for k, p in params.items()}}
    if meta:
        saved = set(meta["state"])
        template["optim"] = {k: _adam_template(torch.empty_like(p, device="cpu")) for k, p in params.items() if k in saved}
    dcp.load(template, checkpoint_id=str(src / DCP_DIR), no_dist=True)
    if not meta:
        return template["model"], None
    names = list(params)
    groups = [{**{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}, "params": list(range(len(names)))}
              for g in meta["param_groups"]]
    state = {i: template["optim"][k] for i, k in enumerate(names) if k in template["optim"]}
    return template["model"], {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------------ Ray: a rank


class RankActor:
    """One rank (a Ray actor of the group's placement group): starts the process group, builds its
    :class:`ShardedStepRewardModel` and runs the calls the coordinator sends to every rank."""

    def __init__(self):
        self.model: Optional[ShardedStepRewardModel] = None

    def address(self) -> tuple[str, int]:
        """This node's address and a free port for the process group's rendezvous (rank 0)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address().strip("[]"), int(port)

    def setup(self, settings: dict, rank: int, ranks: int, master: str, port: int, timeout_s: float) -> dict:
        import torch.distributed as dist

        cuda = torch.cuda.is_available() and (settings.get("device") or "cuda").startswith("cuda")
        if cuda:
            torch.cuda.set_device(0)  # Ray shows each rank its own GPU
            settings = dict(settings, device="cuda")
        else:
            settings = dict(settings, device="cpu")
            threads = int(os.environ.get("SPA_STEPRM_RANK_THREADS", "1"))
            torch.set_num_threads(max(1, threads))
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{master}:{port}", rank=int(rank),
                                world_size=int(ranks), timeout=timedelta(seconds=float(timeout_s)))
        self.model = ShardedStepRewardModel(settings)
        return self.model.info()

    def call(self, method: str, *args):
        """``model.<method>(*args)``; rank 0 sends back ``(answer, model.info())`` (every rank computes the same),
        the others None."""
        result = getattr(self.model, method)(*args)
        return (result, self.model.info()) if self.model.rank == 0 else None

    def version(self) -> int:
        return self.model.version

    def memory(self) -> dict[str, int]:
        """This rank's tensors (:func:`spa_reward.steprm.memory_plan.held_bytes`) and its peak RSS (bytes)."""
        import resource

        from spa_reward.steprm.memory_plan import held_bytes

        return {**held_bytes(self.model), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ------------------------------------------------------------------------------------------------ Ray: the group


class ShardedGroup:
    """The coordinator's handle on N rank actors, with the model interface
    :class:`~spa_reward.steprm.service.StepRewardServiceActor` uses (``settings``, ``version``, ``score``,
    ``update``, ``save``, ``load``, ``info``). One call at a time on every rank (a lock): the ranks' collectives
    then always match.

    Args:
        settings: the model's settings.
        ranks: N (>= 1).
        gpus_per_rank: 1 (one GPU each; NCCL) or 0 (CPU ranks on gloo: tests and tiny models).
        name: names the placement group (``<name>.ranks``, replaced if a dead coordinator left one) and the rank
            actors (``<name>.rank<i>.g<generation>``).
        generation: this group's number within its service (new on every restart).
        timeout_s: for the placement group (GPUs free) and for the ranks to start and build the model; also
            the process group's collective timeout.
        grace_s: once one rank has failed, how long the others get to finish before the group is declared gone.
    """

    def __init__(self, settings: StepRMSettings, ranks: int, gpus_per_rank: float = 1.0, cpus_per_rank: float = 1.0,
                 name: str = "steprm", generation: int = 0, timeout_s: float = 600.0, grace_s: float = 30.0,
                 namespace: Optional[str] = None, placement=None):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if int(ranks) < 1:
            raise ValueError(f"ranks={ranks} must be >= 1")
        self.settings = settings
        self.ranks = int(ranks)
        self.name = name
        self.generation = int(generation)
        self.grace_s = float(grace_s)
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self.version = 0
        self.broken: Optional[str] = None
        bundle = {"CPU": float(cpus_per_rank)}
        if gpus_per_rank:
            bundle["GPU"] = float(gpus_per_rank)
        self.placement = placement
        if self.placement is None:
            _remove_stale_placement_group(f"{name}.ranks", namespace)
            self.placement = placement_group([dict(bundle) for _ in range(self.ranks)], strategy="PACK",
                                             name=f"{name}.ranks")
        try:
            ray.get(self.placement.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self.placement)
            raise TimeoutError(
                f"the sharded step-reward service {name!r} asked for {self.ranks} bundles of {bundle} (one per rank) "
                f"and did not get them within {timeout_s:.0f} s; the cluster has {ray.cluster_resources()} with "
                f"{ray.available_resources()} free. Give it GPUs outside the trainer's pool (PRM_GPUS / SCORER_GPUS "
                "of the launch script) or lower its ranks") from None
        remote = ray.remote(RankActor)
        self.actor_names = [f"{name}.rank{i}.g{self.generation}" for i in range(self.ranks)]
        self.actors = [
            remote.options(name=self.actor_names[i], namespace=namespace, num_cpus=bundle["CPU"],
                           num_gpus=bundle.get("GPU", 0), max_restarts=0, max_concurrency=1,
                           scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=i)
                           ).remote()
            for i in range(self.ranks)]
        try:
            master, port = ray.get(self.actors[0].address.remote(), timeout=timeout_s)
            infos = self._run([a.setup.remote(settings.to_dict(), i, self.ranks, master, port, timeout_s)
                               for i, a in enumerate(self.actors)], timeout_s=timeout_s)
        except BaseException:
            self.shutdown(keep_placement=True)
            raise
        self._info = infos[0]
        self.version = int(infos[0]["version"])

    # ------------------------------------------------------------------------------------------- calls

    def _run(self, refs: list, timeout_s: Optional[float] = None) -> list:
        """Wait for one call on every rank. A rank that died, or that failed while the others did not finish
        within ``grace_s``, kills the group (:class:`GroupFailure`); the same error on every rank (e.g. a bad
        item, raised before any collective) is raised as it is and the group stays up."""
        import ray

        index = {r: i for i, r in enumerate(refs)}
        pending, results, errors = list(refs), [None] * len(refs), {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait)
            if not ready:
                break
            for r in ready:
                i = index[r]
                try:
                    results[i] = ray.get(r)
                except ray.exceptions.RayActorError as e:
                    self._fail(f"rank {i} ({self.actor_names[i]}) died: {type(e).__name__}: {_brief(e)}")
                except Exception as e:  # noqa: BLE001 - the rank's own error
                    errors[i] = e
                    grace = time.monotonic() + self.grace_s
                    deadline = grace if deadline is None else min(deadline, grace)
        if pending:
            late = sorted(index[r] for r in pending)
            why = f"ranks {late} did not answer"
            if errors:
                i = min(errors)
                why += f" within {self.grace_s:.0f} s after rank {i} failed ({type(errors[i]).__name__}: {_brief(errors[i])})"
            self._fail(why)
        if errors:
            if len(errors) < len(refs):
                i = min(errors)
                self._fail(f"rank {i} failed ({type(errors[i]).__name__}: {_brief(errors[i])}) while ranks "
                           f"{sorted(set(range(len(refs))) - set(errors))} did not")
            raise errors[min(errors)]
        return results

    def _fail(self, why: str):
        self.broken = why
        logger.error("sharded step-reward service %r (generation %d): %s; killing every rank", self.name,
                     self.generation, why)
        self.shutdown(keep_placement=True)
        raise GroupFailure(f"the sharded step-reward service {self.name!r} lost its group: {why}")

    def _all(self, method: str, *args) -> Any:
        import ray

        with self._lock:
            if self.broken:
                raise GroupFailure(f"the sharded step-reward service {self.name!r} lost its group: {self.broken}")
            args = tuple(ray.put(a) if isinstance(a, list) else a for a in args)  # one copy for every rank
            result, self._info = self._run([a.call.remote(method, *args) for a in self.actors])[0]
            self.version = int(self._info["version"])
            return result

    def score(self, batch: Sequence[Mapping[str, Any]]) -> list[list[float]]:
        return self._all("score", list(batch))

    def update(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        return self._all("update", list(batch))

    def save(self, directory: str | os.PathLike) -> None:
        self._all("save", str(directory))

    def load(self, directory: str | os.PathLike) -> None:
        self._all("load", str(directory))

    def info(self) -> dict[str, Any]:
        """Rank 0's model info as of the last call (no call to the ranks: an update may be running), and the group."""
        return {**self._info, "ranks": self.ranks, "generation": self.generation, "rank_actors": list(self.actor_names)}

    def shutdown(self, keep_placement: bool = False) -> None:
        import ray

        for a in getattr(self, "actors", []):
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if not keep_placement and self.placement is not None:
            try:
                ray.util.remove_placement_group(self.placement)
            except Exception:  # noqa: BLE001
                pass


def _brief(e: BaseException) -> str:
    """The exception line of a (remote) error: a Ray task error's text is the remote traceback, ending with it."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _remove_stale_placement_group(name: str, namespace: Optional[str]) -> None:
    """A coordinator that died and was restarted by Ray left its placement group (a placement group lives as long
    as the job that made it): free its GPUs before asking for them again."""
    import ray
    from ray.util import get_placement_group

    try:
        stale = get_placement_group(name)
    except ValueError:
        return
    logger.warning("removing the placement group %r left by a previous coordinator", name)
    ray.util.remove_placement_group(stale)


# ------------------------------------------------------------------------------------------------ Ray: the service


class ShardedStepRewardServiceActor(StepRewardServiceActor):
    """The named service actor of a sharded model: :class:`StepRewardServiceActor` (publication, restore, version
    checks, coalesced scoring) over a :class:`ShardedGroup`, plus group restarts (module docstring).

    Args (beyond the base class's): ranks, gpus_per_rank, cpus_per_rank: the group; name: the service's name (its
    placement group and rank actors are named after it); start_timeout_s: for each group start;
    max_group_restarts: group restarts before the service gives up and refuses to serve."""

    def __init__(self, settings: dict, ranks: int, gpus_per_rank: float = 1.0, cpus_per_rank: float = 1.0,
                 name: str = "steprm", coalesce_items: int = 256, state_dir: Optional[str] = None,
                 run_token: Optional[str] = None, publish_every: int = 1, start_timeout_s: float = 600.0,
                 max_group_restarts: int = DEFAULT_GROUP_RESTARTS, namespace: Optional[str] = None):
        self._group_kwargs = dict(ranks=int(ranks), gpus_per_rank=float(gpus_per_rank),
                                  cpus_per_rank=float(cpus_per_rank), name=str(name), timeout_s=float(start_timeout_s),
                                  namespace=namespace)
        self.max_group_restarts = int(max_group_restarts)
        self.group_restarts = 0
        self._generation = 0
        self._restart_lock = threading.Lock()
        super().__init__(settings, coalesce_items=coalesce_items, state_dir=state_dir, run_token=run_token,
                         publish_every=publish_every)

    def _make_model(self, settings: dict):
        s = settings if isinstance(settings, StepRMSettings) else StepRMSettings.from_dict(settings)
        placement = getattr(getattr(self, "model", None), "placement", None)
        return ShardedGroup(s, generation=self._generation, placement=placement, **self._group_kwargs)

    # ------------------------------------------------------------------------------------------- faults

    def _guarded(self, fn: Callable, *args):
        """``fn(*args)``; on a :class:`GroupFailure`, restart the group from the published state and retry once."""
        generation = self.model.generation
        try:
            return fn(*args)
        except GroupFailure as e:
            self._restart_group(generation, e)
        self._refuse_if_not_restored()
        try:
            return fn(*args)
        except GroupFailure as e:
            raise RuntimeError(f"{e}; it failed again right after restarting its group from its published state. "
                               "Stopping rather than serving rewards from an unknown state: see the rank actors' logs") from e

    def _restart_group(self, generation: int, failure: GroupFailure) -> None:
        with self._restart_lock:
            if self.model.generation != generation:
                return  # another call restarted it already
            if self.group_restarts >= self.max_group_restarts:
                self.not_restored = (f"the sharded step-reward service lost its group {self.group_restarts + 1} "
                                     f"times (max_group_restarts={self.max_group_restarts}); last: {failure}")
                logger.error("%s; it refuses to serve", self.not_restored)
                return
            self.group_restarts += 1
            self._generation += 1
            logger.warning("%s; starting group %d from the last published state", failure, self._generation)
            old = self.model
            try:
                self.model = self._make_model(self._settings_dict)
            except Exception as e:  # noqa: BLE001 - cannot come back
                self.model = old
                self.not_restored = f"the sharded step-reward service could not start a new group after: {failure} ({e})"
                logger.error("%s", self.not_restored)
                return
            self.incarnation = uuid.uuid4().hex  # the trainer hooks see a restart and check the version
            self.restored_from, self.not_restored = None, None
            if self.model.settings.online:
                self._restore(f"lost a rank and restarted its group ({failure})")

    def _score(self, batch):
        return self._guarded(super()._score, batch)

    def _update(self, batch, base_version):
        return self._guarded(super()._update, batch, base_version)

    def _save(self, directory: str) -> None:
        self._guarded(super()._save, directory)

    def _load(self, directory: str) -> None:
        self._guarded(super()._load, directory)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "ranks": self.model.ranks, "group_restarts": self.group_restarts,
                "generation": self.model.generation, "rank_actors": list(self.model.actor_names)}


__all__ = ["GroupFailure", "RankActor", "ShardedGroup", "ShardedStepRewardModel", "ShardedStepRewardServiceActor",
           "read_full_dcp", "shard_module"]
