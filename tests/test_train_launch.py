"""Training across GPUs and machines, as far as a CPU-only machine allows.

Every shipped accelerate configuration is loaded by accelerate itself; every `accelerate launch`
line of the docs parses with accelerate's own launcher into what it says (config, nodes, rank,
rendezvous address, our module). The docs' two-node data-parallel command runs for real as two
"machines" on one host (one CPU process each, gloo): one optimizer step over both ranks, one run
record. DeepSpeed and FSDP run only on accelerators: their configurations are checked, not run."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

accelerate_launch = pytest.importorskip("accelerate.commands.launch")
from accelerate.commands.config.config_args import load_config_from_file  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

from deepfakejudge.train.record import RUN_FILE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
DOCS = (REPO / "docs" / "train-and-evaluate.md", REPO / "docs" / "scale-out.md", REPO / "README.md")
SMALL_PIXELS = 16 * 28 * 28

# What each shipped configuration must be, as accelerate reads it.
EXPECTED = {
    "multi_gpu.yaml": {"distributed_type": DistributedType.MULTI_GPU},
    "deepspeed_zero2.yaml": {"distributed_type": DistributedType.DEEPSPEED, "zero_stage": 2},
    "deepspeed_zero3.yaml": {"distributed_type": DistributedType.DEEPSPEED, "zero_stage": 3},
    "fsdp.yaml": {"distributed_type": DistributedType.FSDP, "fsdp_version": 2},
}


def launch_lines() -> list[tuple[Path, str]]:
    """Every `accelerate launch` command in the docs' bash blocks, continuation lines joined."""
    found = []
    for path in DOCS:
        if not path.exists():
            continue
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.strip()
                if command.startswith("accelerate launch"):
                    found.append((path, " ".join(command.split())))
    return found


def parse_launch(command: str):
    """accelerate's own launcher arguments for a docs line (its trailing `...` filled in), with
    the config file merged in as `accelerate launch` does."""
    argv = shlex.split(command)[2:]
    if argv[-1] == "...":
        argv = [*argv[:-1], "--base", "B", "--data", "D", "--out", "O"]
    args = accelerate_launch.launch_command_parser().parse_args(argv)
    merge = getattr(accelerate_launch, "_validate_launch_command", None)
    return args if merge is None else merge(args)[0]


def test_the_shipped_configs_are_all_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_loads_each_shipped_config(name):
    config = load_config_from_file(str(CONFIGS / name))
    want = EXPECTED[name]
    assert config.distributed_type == want["distributed_type"]
    assert config.num_machines == 1 and config.machine_rank == 0 and config.num_processes == 2
    assert config.mixed_precision == "bf16" and not config.use_cpu
    if "zero_stage" in want:
        ds = config.deepspeed_config
        assert ds["zero_stage"] == want["zero_stage"]
        # The trainer's settings rule: accelerate must not fix them behind its back.
        assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"
        assert ds["deepspeed_multinode_launcher"] == "standard"  # torchrun on each node, as the docs run it
        if want["zero_stage"] == 3:
            assert ds["zero3_init_flag"] and ds["zero3_save_16bit_model"]  # rank 0 can save the whole adapter
    if "fsdp_version" in want:
        import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen

        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        classes = fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert classes and all(hasattr(qwen, c) for c in classes), classes  # a renamed class would wrap nothing
    # The usage line at the top of the file starts a command the docs give.
    usage = (CONFIGS / name).read_text(encoding="utf-8").splitlines()[0].lstrip("# ").removesuffix("...").strip()
    assert any(c.startswith(usage) for _, c in launch_lines()), usage


def test_every_config_has_a_docs_command_and_every_docs_command_parses():
    lines = launch_lines()
    assert lines, "no accelerate launch line found in the docs"
    used = set()
    for path, command in lines:
        args = parse_launch(command)
        config = Path(args.config_file)
        assert (REPO / config).is_file(), f"{path.name}: {command}: no such config"
        used.add(config.name)
        assert args.module and args.training_script == "deepfakejudge.cli", command
        assert args.training_script_args[:1] == ["train"], command
        want = EXPECTED[config.name]
        if want["distributed_type"] == DistributedType.DEEPSPEED:
            assert args.use_deepspeed and int(args.zero_stage) == want["zero_stage"], command
        elif want["distributed_type"] == DistributedType.FSDP:
            assert args.use_fsdp and int(args.fsdp_version) == 2, command
        else:
            assert args.multi_gpu and not args.use_deepspeed and not args.use_fsdp, command
    assert used == set(EXPECTED), f"configs without a docs command: {set(EXPECTED) - used}"


def test_the_docs_give_the_multi_node_command_as_typed():
    multi = [(p, c) for p, c in launch_lines() if "--num_machines" in c]
    assert any("multi_gpu.yaml" in c for _, c in multi) and any("deepspeed" in c for _, c in multi)
    for _path, command in multi:
        args = parse_launch(command)
        assert int(args.num_machines) == 2 and int(args.num_processes) == 16, command
        assert args.machine_rank == 0 and args.main_process_ip == "10.0.0.1" and args.main_process_port == 29500
    if "prepare_multi_gpu_env" in dir(accelerate_launch):
        # What torchrun is started with on a node: 2 nodes of 8 processes, the rendezvous address.
        args = parse_launch(next(c for _, c in multi if "multi_gpu.yaml" in c))
        env = accelerate_launch.prepare_multi_gpu_env(args)
        assert (str(args.nnodes), str(args.nproc_per_node), args.node_rank) == ("2", "8", 0)
        assert args.rdzv_endpoint == "10.0.0.1:29500"
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def docs_two_node_command(rank: int, port: int, base: Path, out: Path) -> list[str]:
    """The docs' two-node data-parallel command with this host's values: 2 processes in all (one
    per "machine"), the rendezvous on 127.0.0.1, the tiny model and a short run on CPU."""
    command = next(c for _, c in launch_lines() if "--num_machines" in c and "multi_gpu.yaml" in c)
    argv = shlex.split(command)
    values = {"--num_processes": "2", "--machine_rank": str(rank), "--main_process_ip": "127.0.0.1",
              "--main_process_port": str(port), "--base": str(base),
              "--data": str(REPO / "examples" / "pointwise.jsonl"), "--out": str(out)}
    for flag, value in values.items():
        argv[argv.index(flag) + 1] = value
    assert argv[:2] == ["accelerate", "launch"]
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", *argv[1:],
            "--max-steps", "2", "--batch-size", "2", "--effective-batch", "8", "--max-pixels", str(SMALL_PIXELS),
            "--device", "cpu", "--set", "logging_steps=1", "--json"]


def test_the_docs_two_node_command_trains_as_two_machines_on_one_host(tiny_model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two-nodes"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    nodes = [subprocess.Popen(docs_two_node_command(rank, port, tiny_model_dir, out), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    try:
        results = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    (out0, err0), (out1, err1) = results
    # Rank 0 speaks for both and writes the record; the other machine's rank prints nothing of it.
    assert json.loads(out0)["global_step"] == 2 and out1.strip() == ""
    assert "effective batch 8 = 2 per device x 2 device(s) x 2 gradient accumulation step(s)" in err0
    assert "run record" not in err1
    record = json.loads((out / RUN_FILE).read_text())
    assert record["status"] == "done" and record["train"]["global_step"] == 2
    assert record["runtime"]["world_size"] == 2 and record["runtime"]["effective_batch"] == 8
    assert [x["step"] for x in record["train"]["losses"]] == [1, 2]
    assert (out / "adapter_model.safetensors").is_file()
