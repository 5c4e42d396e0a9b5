"""One device and dtype rule (`runtime`) for judging, training and export: `cuda:N` and the fp16
fallback on a GPU without bf16 resolve the same way in all three. No GPU needed: torch's
capability queries are monkeypatched to describe a machine with two such GPUs."""

from __future__ import annotations

import pytest
import torch

from deepfakejudge.backends.base import LoadOptions
from deepfakejudge.errors import UsageError
from deepfakejudge.train.config import load_config

REQUIRED = {"base": "B", "data": "D", "out": "O"}


@pytest.fixture
def two_gpus_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def _judge_runtime(device, dtype, tmp_path):
    """The device and dtype HFBackend resolves for the options, read from the backend itself: its
    constructor resolves them first, then stops at the missing model folder."""
    from deepfakejudge.backends.hf import HFBackend

    backend = HFBackend.__new__(HFBackend)
    with pytest.raises(UsageError, match="directory not found"):
        backend.__init__(LoadOptions(model=str(tmp_path / "missing"), device=device, dtype=dtype))
    return backend.device, backend.dtype


def _train_runtime(device, dtype):
    from deepfakejudge.train.sft import data_parallel_devices, training_runtime

    config = load_config("pointwise", {**REQUIRED, "device": device, "dtype": dtype})
    resolved, model_dtype, bf16, fp16 = training_runtime(config)
    assert (bf16, fp16) == (model_dtype == torch.bfloat16, model_dtype == torch.float16)
    return resolved, model_dtype, data_parallel_devices(config)


def _export_runtime(device, saved_dtype, tmp_path, monkeypatch):
    """The device and dtype the export's parity check loads its two models with."""
    import deepfakejudge.backends.hf as hf
    from deepfakejudge.backends.base import PixelBudget
    from deepfakejudge.train import export as export_mod

    monkeypatch.setattr(export_mod, "parity_samples", lambda *a: ([], None, "pointwise", PixelBudget()))
    monkeypatch.setattr(export_mod, "merge_adapter", lambda adapter, out, *a: ("base", saved_dtype, []))
    seen = []

    class Spy(hf.HFBackend):
        def __init__(self, options):
            try:
                super().__init__(options)
            finally:
                seen.append((self.device, self.dtype))

    monkeypatch.setattr(hf, "HFBackend", Spy)
    with pytest.raises(UsageError, match="directory not found"):
        export_mod.export(tmp_path / "adapter", tmp_path / "out", device=device)
    return seen[0]


def test_cuda_1_and_the_fp16_fallback_resolve_alike_in_judge_train_and_export(
        two_gpus_without_bf16, tmp_path, monkeypatch):
    gpu1 = torch.device("cuda", 1)
    # auto precision on a GPU without bf16: fp16, for the judge and for training.
    assert _judge_runtime("cuda:1", "auto", tmp_path) == (gpu1, torch.float16)
    assert _train_runtime("cuda:1", "auto") == (gpu1, torch.float16, 1)  # one GPU: one device in the batch
    # an explicit dtype is used as given, everywhere; the export's parity check uses the saved one.
    assert _judge_runtime("cuda:1", "bfloat16", tmp_path) == (gpu1, torch.bfloat16)
    assert _train_runtime("cuda:1", "bfloat16") == (gpu1, torch.bfloat16, 1)
    assert _export_runtime("cuda:1", "bfloat16", tmp_path, monkeypatch) == (gpu1, torch.bfloat16)
    # plain cuda / auto: the first GPU, and a single training process spreads over both.
    assert _judge_runtime("auto", "auto", tmp_path) == (torch.device("cuda"), torch.float16)
    assert _train_runtime("cuda", "auto") == (torch.device("cuda"), torch.float16, 2)


def test_a_missing_gpu_is_the_same_error_in_judge_train_and_export(two_gpus_without_bf16, tmp_path, monkeypatch):
    from deepfakejudge.backends.hf import HFBackend
    from deepfakejudge.train import export as export_mod
    from deepfakejudge.train.sft import training_runtime

    message = r"device: 'cuda:2' does not exist \(2 CUDA devices\)"
    with pytest.raises(UsageError, match=message):
        HFBackend(LoadOptions(model=str(tmp_path / "missing"), device="cuda:2"))
    with pytest.raises(UsageError, match=message):
        training_runtime(load_config("pointwise", {**REQUIRED, "device": "cuda:2"}))
    merged = []
    monkeypatch.setattr(export_mod, "merge_adapter", lambda *a, **k: merged.append(a))
    with pytest.raises(UsageError, match=message):  # before the (long) merge
        export_mod.export(tmp_path / "adapter", tmp_path / "out", device="cuda:2")
    assert merged == [] and not (tmp_path / "out").exists()


def test_unknown_devices_and_dtypes_are_refused_alike(tmp_path):
    from deepfakejudge.backends.hf import HFBackend
    from deepfakejudge.train import export as export_mod

    with pytest.raises(UsageError, match="device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"):
        HFBackend(LoadOptions(model=str(tmp_path / "missing"), device="tpu"))
    with pytest.raises(UsageError, match="device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"):
        export_mod.export(tmp_path / "adapter", tmp_path / "out", device="tpu")
    with pytest.raises(ValueError, match="'device' = 'tpu': use auto, cpu, cuda or cuda:N"):
        load_config("pointwise", {**REQUIRED, "device": "tpu"})
    assert load_config("pointwise", {**REQUIRED, "device": "cuda:3"}).device == "cuda:3"  # checked when run
    with pytest.raises(UsageError, match="dtype: unknown dtype 'int8'"):
        HFBackend(LoadOptions(model=str(tmp_path / "missing"), dtype="int8"))
    with pytest.raises(ValueError, match="'dtype' = 'int8'"):
        load_config("pointwise", {**REQUIRED, "dtype": "int8"})


def test_cuda_n_under_a_launcher_is_refused(two_gpus_without_bf16, monkeypatch):
    from deepfakejudge.train.sft import training_runtime

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="'cuda:1' picks one GPU, but this is one of 2 processes.*CUDA_VISIBLE_DEVICES"):
        training_runtime(load_config("pointwise", {**REQUIRED, "device": "cuda:1"}))


def test_cpu_training_precision_is_unchanged():
    from deepfakejudge.train.sft import training_runtime

    assert training_runtime(load_config("pointwise", {**REQUIRED, "device": "cpu"}))[:2] == (
        torch.device("cpu"), torch.float32)
    with pytest.raises(UsageError, match="dtype: bfloat16 training needs a GPU"):
        training_runtime(load_config("pointwise", {**REQUIRED, "device": "cpu", "dtype": "bfloat16"}))


def test_pin_device_puts_the_trainer_on_gpu_n_alone(monkeypatch, tmp_path):
    """transformers puts one process on cuda:0 with DataParallel over all GPUs; `cuda:N` must
    override the arguments' cached device (checked on the installed transformers, on CPU)."""
    pytest.importorskip("trl")
    from trl import SFTConfig

    from deepfakejudge.train.sft import pin_device

    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    pin_device(args, torch.device("cuda", 1))
    assert current == [torch.device("cuda", 1)]
    assert args.device == torch.device("cuda", 1) and args.n_gpu == 1
    assert args.train_batch_size == 4  # no DataParallel multiplication
    pin_device(args, torch.device("cpu"))  # anything but cuda:N leaves the arguments alone
    assert current == [torch.device("cuda", 1)]


def test_one_user_cache_folder_for_requests_prompts_and_data(monkeypatch, tmp_path):
    """The request cache, the official prompts and the fetched data sit under one folder:
    $XDG_CACHE_HOME/deepfakejudge (~/.cache when unset or empty); $DFJ_CACHE and $DFJ_DATA still
    move their own file or folder."""
    from deepfakejudge.backends.cache import default_cache_path
    from deepfakejudge.data.splits import data_root
    from deepfakejudge.prompts.official import COMMIT, cache_dir

    def places():
        return default_cache_path(), cache_dir(), data_root()

    for name in ("DFJ_CACHE", "DFJ_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = tmp_path / "xdg" / "deepfakejudge"
    assert places() == (base / "requests.sqlite", base / "official-prompts" / COMMIT, base / "DeepfakeJudge-Dataset")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home" / ".cache" / "deepfakejudge"
    for unset in (lambda: monkeypatch.setenv("XDG_CACHE_HOME", ""), lambda: monkeypatch.delenv("XDG_CACHE_HOME")):
        unset()
        assert places() == (home / "requests.sqlite", home / "official-prompts" / COMMIT, home / "DeepfakeJudge-Dataset")
    monkeypatch.setenv("DFJ_CACHE", str(tmp_path / "c.sqlite"))
    monkeypatch.setenv("DFJ_DATA", str(tmp_path / "data"))
    assert places() == (tmp_path / "c.sqlite", home / "official-prompts" / COMMIT, tmp_path / "data")
