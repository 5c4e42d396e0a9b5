"""Training settings: the released recipe as defaults, one precedence (CLI > YAML > defaults),
unknown keys and wrong types as errors naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deepfakejudge.cli import main
from deepfakejudge.errors import UsageError
from deepfakejudge.train.config import CONFIG_KEYS, TrainConfig, load_config, parse_set

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"base": "B", "data": "D", "out": "O"}


def test_defaults_are_the_released_recipe():
    c = load_config("pointwise", REQUIRED)
    assert (c.lora_r, c.lora_alpha) == (32, 64)
    assert c.learning_rate == 1e-6
    assert c.num_train_epochs == 2.0
    assert c.per_device_train_batch_size == 16
    assert c.warmup_ratio == 0.05
    assert (c.min_pixels, c.max_pixels) == (3136, 1003520)
    assert c.max_length == 4096
    assert c.dtype == "auto"  # bf16 on GPU, fp32 on CPU (runtime.resolve_dtype)
    assert load_config("pairwise", REQUIRED).max_length == 2048


def test_shipped_paper_config_equals_the_defaults():
    from_yaml = load_config("pointwise", REQUIRED, REPO / "configs" / "train-paper.yaml")
    assert from_yaml == load_config("pointwise", REQUIRED)


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    # 1e-4 without a dot is a string in YAML 1.1; it must still be read as a number.
    cfg.write_text("learning_rate: 1e-4\nlora_r: 8\nbase: from-yaml\nmax_length: 1000\n", encoding="utf-8")
    c = load_config("pointwise", {"data": "D", "out": "O", "lora_r": 16, "max_length": None}, cfg)
    assert c.learning_rate == 1e-4  # YAML over default
    assert c.lora_r == 16  # CLI over YAML
    assert c.base == "from-yaml"  # required key may come from YAML
    assert c.max_length == 1000  # a CLI None means "not given": YAML stays
    assert c.lora_alpha == 64  # default


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1.0e-4\nlearnig_rate: 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="learnig_rate"):
        load_config("pointwise", REQUIRED, cfg)
    cfg.write_text("kind: pairwise\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'kind' is given by the command"):
        load_config("pointwise", REQUIRED, cfg)


@pytest.mark.parametrize(
    "text, key",
    [("lora_r: 8.5\n", "lora_r"), ("learning_rate: fast\n", "learning_rate"),
     ("gradient_checkpointing: 1\n", "gradient_checkpointing"), ("- a\n- b\n", "mapping")],
)
def test_wrong_types_name_the_key(tmp_path, text, key):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=key):
        load_config("pointwise", REQUIRED, cfg)


@pytest.mark.parametrize(
    "cli, key",
    [({"learning_rate": -1.0}, "learning_rate"), ({"warmup_ratio": 1.5}, "warmup_ratio"),
     ({"min_pixels": 5000, "max_pixels": 4000}, "min_pixels"), ({"device": "tpu"}, "device"),
     ({"dtype": "int8"}, "dtype"), ({"max_steps": 0}, "max_steps"),
     ({"lr_scheduler_type": "poly"}, "'lr_scheduler_type' = 'poly': must be one of cosine, linear, constant, ")],
)
def test_invalid_values_name_the_setting(cli, key):
    with pytest.raises(ValueError, match=key):
        load_config("pointwise", {**REQUIRED, **cli})


def test_missing_required_and_set_parsing():
    with pytest.raises(ValueError, match="--base"):
        load_config("pointwise", {"data": "D", "out": "O"})
    assert parse_set(["learning_rate=2e-4", "lora-dropout=0", "template=null", "base=123"]) == {
        "learning_rate": 2e-4, "lora_dropout": 0.0, "template": None, "base": "123"}
    with pytest.raises(ValueError, match="unknown key 'lr'"):
        parse_set(["lr=1"])
    assert set(CONFIG_KEYS) == {f for f in TrainConfig.__dataclass_fields__} - {"kind"}


def test_cli_dry_run_resolves_precedence(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 3.0e-4\nper_device_train_batch_size: 4\nmax_pixels: 50176\n", encoding="utf-8")
    rc = main(["train", "pairwise", "--base", str(tiny_model_dir), "--data", str(REPO / "examples" / "pairwise.jsonl"),
               "--out", str(tmp_path / "run"), "--config", str(cfg), "--batch-size", "2",
               "--set", "lora_dropout=0.1", "--dry-run", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    c = out["config"]
    assert (c["learning_rate"], c["per_device_train_batch_size"], c["lora_dropout"]) == (3e-4, 2, 0.1)
    assert c["max_length"] == 2048 and c["kind"] == "pairwise"
    assert out["data"]["examples"] == 56 and out["data"]["skipped"] == 0
    # Batch 2 on this one CPU device: 16 accumulation steps make the default effective batch of 32.
    assert out["batch"] == {"effective": 32, "per_device": 2, "devices": 1, "gradient_accumulation_steps": 16,
                            "note": None}
    assert c["gradient_accumulation_steps"] == 16 and c["end_of_turn"] == "im_end_newline"
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_cli_unknown_config_key_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\n", encoding="utf-8")
    rc = main(["train", "pointwise", "--base", "B", "--data", "D", "--out", "O", "--config", str(cfg)])
    assert rc == 2
    assert "unknown key(s) 'epochs'" in capsys.readouterr().err


# -- the effective batch: 16 per device x 2 GPUs = 32 in the released run -----------------------------

@pytest.mark.parametrize("processes, per_device, accumulation, note", [
    (1, 16, 2, None),  # one GPU reproduces the recipe by accumulating two batches
    (2, 16, 1, None),  # the released run
    (4, 8, 1, "per-device batch lowered from 16 to keep the effective batch 32"),
])
def test_effective_batch_of_32_on_1_2_and_4_processes(monkeypatch, processes, per_device, accumulation, note):
    from deepfakejudge.train.sft import plan_batch

    monkeypatch.setenv("WORLD_SIZE", str(processes))  # what torchrun / accelerate launch set
    config, plan = plan_batch(load_config("pointwise", {**REQUIRED, "device": "cpu"}))
    assert (plan.per_device, plan.devices, plan.accumulation, plan.note) == (per_device, processes, accumulation, note)
    assert plan.effective == 32 == per_device * processes * accumulation
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (per_device, accumulation)
    assert plan.describe().startswith(f"effective batch 32 = {per_device} per device x {processes} device(s) x "
                                      f"{accumulation} gradient accumulation step(s)")


def test_batch_plan_explicit_accumulation_and_impossible_targets(monkeypatch):
    from deepfakejudge.train.config import batch_plan

    given = load_config("pointwise", {**REQUIRED, "gradient_accumulation_steps": 3})
    assert batch_plan(given, 2).effective == 16 * 2 * 3  # as given, never second-guessed
    small = load_config("pointwise", {**REQUIRED, "per_device_train_batch_size": 4, "effective_batch_size": 64})
    assert (batch_plan(small, 1).accumulation, batch_plan(small, 4).accumulation) == (16, 4)
    with pytest.raises(ValueError, match=r"effective_batch_size 32 is not a multiple of per_device_train_batch_size "
                                         r"12 x 1 device\(s\).*--grad-accum"):
        batch_plan(load_config("pointwise", {**REQUIRED, "per_device_train_batch_size": 12}), 1)
    with pytest.raises(ValueError, match="effective_batch_size 32 is not a multiple"):
        batch_plan(load_config("pointwise", REQUIRED), 3)  # 3 devices cannot share 32 evenly
    with pytest.raises(ValueError, match="'end_of_turn'"):
        load_config("pointwise", {**REQUIRED, "end_of_turn": "newline"})


# -- one declaration per setting: flags, --set and --help derived from the dataclass ------------------

def _kind_parser(kind):
    import argparse

    from deepfakejudge.cli import build_parser

    parser = build_parser()
    for name in ("train", kind):
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def _help_blocks(text):
    """--help's option entries: the first option string -> the entry's text on one line."""
    blocks, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


def _expected_default(name, default, kind):
    """The dataclass default as --help should print it, computed here, not by the code under test."""
    if name == "max_length":  # None in the dataclass: the recipe's length for the kind
        default = {"pointwise": 4096, "pairwise": 2048}[kind]
    if isinstance(default, bool):
        return f"default {str(default).lower()}"
    if default == ():  # image_root: no folder but the data's
        return "default none"
    return f"default {default:g}" if isinstance(default, float) else f"default {default}"


@pytest.mark.parametrize("kind", ["pointwise", "pairwise"])
def test_every_setting_has_one_flag_and_help_shows_its_default(kind, monkeypatch, capsys):
    import dataclasses

    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "kind"]
    parser = _kind_parser(kind)
    own = {f.name for f in fields if f.metadata["flag"]}
    for f in fields:
        actions = [a for a in parser._actions if a.dest == f.name]
        if f.name in own:  # its one flag, and nothing else writes the field
            assert len(actions) == 1 and actions[0].option_strings == [f.metadata["flag"]], f.name
        else:  # no flag of its own: --set KEY=VALUE (or YAML) is the one way in
            assert actions == [], f.name
    flags = [s for a in parser._actions for s in a.option_strings]
    assert len(flags) == len(set(flags))
    assert own >= {"base", "data", "out", "learning_rate", "num_train_epochs", "per_device_train_batch_size",
                   "max_length", "device", "dtype", "allow_errors"}

    monkeypatch.setenv("COLUMNS", "2000")  # one line per entry, nothing wrapped
    with pytest.raises(SystemExit) as exit_:
        main(["train", kind, "--help"])
    assert exit_.value.code == 0
    blocks = _help_blocks(capsys.readouterr().out)
    for f in fields:
        if f.default is dataclasses.MISSING:  # base, data, out: required, no default to show
            assert f.metadata["flag"] in blocks, f.name
            continue
        entry = blocks[f.metadata["flag"]] if f.name in own else blocks["--set"]
        if f.default is None and f.name != "max_length":  # template, grad_accum: what None means
            assert "default:" in entry, f.name
            continue
        expected = _expected_default(f.name, f.default, kind)
        if f.name in own:
            assert expected in entry, (f.name, entry)
        else:
            assert re.search(rf"\b{f.name}: [^;]*\b{re.escape(expected)}\)", entry), (f.name, entry)


def test_every_flag_reaches_its_setting(tmp_path):
    """Each flag, given a value other than the default, lands in its own field and nowhere else."""
    import dataclasses

    from deepfakejudge.cli.train import config_from_args

    picked = {"template": "default", "end_of_turn": "im_end", "device": "cpu", "dtype": "float32",
              "gradient_accumulation_steps": 3, "max_length": 100, "max_steps": 7, "min_pixels": 3137}
    argv, expected = ["train", "pointwise"], {}
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata.get("flag")
        if not flag:
            continue
        if f.type == "bool":
            argv.append(flag)
            expected[f.name] = True
            continue
        if f.name == "image_root":  # repeatable: each use adds one folder
            argv += [flag, "/a", flag, "/b"]
            expected[f.name] = ("/a", "/b")
            continue
        if f.name in picked:
            value = picked[f.name]
        else:
            value = f"v-{f.name}" if f.type == "str" else f.default * 2
        argv += [flag, str(value)]
        expected[f.name] = value
    from deepfakejudge.cli import build_parser

    config = config_from_args(build_parser().parse_args(argv))
    for name, value in expected.items():
        assert getattr(config, name) == value, name
    untouched = {f.name for f in dataclasses.fields(TrainConfig)} - set(expected) - {"kind"}
    defaults = load_config("pointwise", REQUIRED)
    assert {n: getattr(config, n) for n in untouched} == {n: getattr(defaults, n) for n in untouched}


def test_python_callers_get_the_same_validation():
    assert TrainConfig("pairwise", "B", "D", "O").max_length == 2048  # the recipe's length, filled in
    assert TrainConfig("pointwise", "B", "D", "O", num_train_epochs=3).num_train_epochs == 3.0
    with pytest.raises(ValueError, match="'lora_r' = 0: must be >= 1"):
        TrainConfig("pointwise", "B", "D", "O", lora_r=0)
    with pytest.raises(ValueError, match="'learning_rate' must be a number"):
        TrainConfig("pointwise", "B", "D", "O", learning_rate="fast")
    with pytest.raises(ValueError, match="kind must be one of"):
        TrainConfig("listwise", "B", "D", "O")
    with pytest.raises(ValueError, match="'device'"):
        dataclasses_replace(TrainConfig("pointwise", "B", "D", "O"), device="tpu")


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_image_root_is_a_list_of_folders_from_yaml_set_or_flag(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("image_root: [/a, /b]\n", encoding="utf-8")
    assert load_config("pointwise", {"base": "B", "data": "D", "out": "O"}, config).image_root == ("/a", "/b")
    assert parse_set(["image_root=/c"]) == {"image_root": ("/c",)}
    assert parse_set(["image_root=[/c, /d]"]) == {"image_root": ("/c", "/d")}
    assert load_config("pointwise", {"base": "B", "data": "D", "out": "O"}).image_root == ()
    config.write_text("image_root: 3\n", encoding="utf-8")
    with pytest.raises(UsageError, match="'image_root' must be a list of strings"):
        load_config("pointwise", {"base": "B", "data": "D", "out": "O"}, config)
