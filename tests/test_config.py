"""The typed run configuration: every setting checked when it is loaded, one line naming key, value and
what is allowed; presets, files and overrides; a config.yaml that travels between processes."""

from __future__ import annotations

import time

import pytest
import yaml
from support.runs import run_in_process

from lift_dist.config import RunConfig, config_yaml, load_config, load_yaml
from lift_dist.errors import ConfigError
from lift_dist.run_dir import RunDir

BAD_SETTINGS = [
    ("out=", "out='' is not valid: give a run directory (an empty path means the current directory)"),
    ("optim.loss=lsa", "optim.loss='lsa' is not valid: Input should be 'la', 'ce'"),
    ("model.peft=[adaptformr]", "model.peft[0]='adaptformr' is not valid: Input should be 'adaptformer'"),
    ("model.scale=0", "model.scale=0 is not valid: Input should be greater than 0"),
    ("model.scale=-3", "model.scale=-3 is not valid: Input should be greater than 0"),
    ("optim.lr=nan", "optim.lr='nan' is not valid: Input should be a finite number"),
    ("optim.lr=.inf", "optim.lr=inf is not valid: Input should be a finite number"),
    ("max_steps=-5", "max_steps=-5 is not valid: Input should be greater than or equal to 0"),
    ("optim.betas=0.9", "optim.betas=0.9 is not valid: Input should be a valid tuple"),
    ("optim.betas=[0.9, 1.5]", "optim.betas[1]=1.5 is not valid: Input should be less than 1"),
    ("model.name=ViT-Q-99", "model.name='ViT-Q-99' is not valid: unknown model; valid ViT names: ViT-B-16-plus-240"),
    ("data.resolution=8", "data.resolution=8 does not fit ViT-B-16: its positional embeddings are for a 14×14 grid"),
    ("data.tte_expand=-100", "data.tte_expand=-100 is not valid: Input should be greater than or equal to 0"),
    ("checkpoint_every_steps=-1", "checkpoint_every_steps=-1 is not valid"),
    ("eval_every_epochs=-2", "eval_every_epochs=-2 is not valid"),
    ("optim.warmup_steps=-1", "optim.warmup_steps=-1 is not valid"),
    ("model.r=-1", "model.r=-1 is not valid: Input should be greater than or equal to 1"),
    ("model.alpha=2", "model.alpha=2 is not valid: Input should be less than or equal to 1"),
    ("model.peft_options={lora: {r: 0}}", "options given for 'lora', which is not among the chosen modules"),
    ("model.layers=last:40", "adaptformer: last:40 is out of range; the model has 12 blocks"),
    ("model.layers=first", "model.layers='first' is not valid: use all, none, last:K or a list like 0,5,11"),
    ("data.augment=randaug", "data.augment='randaug' is not valid: Input should be 'lift', 'mda' or 'none'"),
    ("data.interpolation=nearest", "data.interpolation='nearest' is not valid"),
    ("optim.zero_stage=3", "optim.zero_stage=3 is not valid: Input should be 0 or 1"),
    ("optim.lrr=0.1", "unknown setting 'optim.lrr'; valid: batch_size, betas"),
    ("seed=-1", "seed=-1 is not valid"),
    ("data.train_split=tr-ain", "data.train_split='tr-ain' is not valid: String should match pattern"),
    ("model.template=a photo", "model.template='a photo' is not valid: the prompt template needs a '{}'"),
    ("model.template=a {} {bad}", "the prompt template needs exactly one '{}', for the class name, and no other braces"),
    ("model.template=a {} {", "no other braces (write a literal brace as '{{' or '}}'); ValueError: Single '{'"),
    ("model.template=a {} and {}", "no other braces (write a literal brace as '{{' or '}}'); IndexError"),
    ("data.workers=two", "data.workers='two' is not valid: Input should be a valid integer"),
]


@pytest.mark.parametrize("override, message", BAD_SETTINGS)
def test_bad_settings_are_named_at_load_time(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("places_lt", None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_and_bad_override_shapes():
    with pytest.raises(ConfigError, match=r"--set optim.betas=\[0.9: the value is not valid YAML"):
        load_config(None, None, ["optim.betas=[0.9"])
    with pytest.raises(ConfigError, match="override 'optim.lr' must look like section.key=value"):
        load_config(None, None, ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown preset 'places'; valid: cifar100_ir10"):
        load_config("places", None, [])
    with pytest.raises(ConfigError, match="unknown recipe 'lift_pro' in preset"):
        load_config("places_lt/lift_pro", None, [])


def test_bad_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: [1\n")
    with pytest.raises(ConfigError, match=f"{f} is not valid YAML"):
        load_config(None, str(f), [])


@pytest.mark.parametrize("text, message", [
    ("optim: {lr: 0.1, lr: 0.2}\n", "duplicate key 'lr'"),
    ("optim:\n  lr: 0.1\nmodel:\n  r: 4\noptim:\n  epochs: 3\n", "duplicate key 'optim'"),
    ("optim: 5\n", "optim=5 is not valid: a section is a mapping of settings"),
    ("model: [lora]\n", "model=['lora'] is not valid: a section is a mapping of settings"),
])
def test_a_config_file_that_yaml_would_half_read_is_named(tmp_path, text, message):
    """YAML keeps the last of two equal keys, and a section given as a scalar was rebuilt from scratch by
    any flag of that section (--lr): both silently dropped settings."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    for overrides in ([], ["optim.lr=0.3"]):
        with pytest.raises(ConfigError) as e:
            load_config(None, str(f), overrides)
        assert message in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)
    f.write_text("optim:\n")  # an empty section is no section
    assert load_config(None, str(f), ["optim.lr=0.3"]).optim.lr == 0.3
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping of settings"):
        load_config(None, str(f), [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, str(tmp_path / "none.yaml"), [])


def test_validation_is_fast():
    t0 = time.perf_counter()
    for override, _ in BAD_SETTINGS:
        with pytest.raises(ConfigError):
            load_config("inat2018/lift_plus", None, [override])
    assert time.perf_counter() - t0 < 5


def test_presets_layers_and_overrides():
    cfg = load_config("inat2018/lift_plus", None, ["optim.lr=0.03", "model.peft=lora,ssf", "model.peft_options.lora.r=8",
                                                    "model.peft_options.lora.layers=last:2"])
    assert cfg.preset == "inat2018/lift_plus" and cfg.optim.epochs == 15 and cfg.optim.lr == 0.03
    assert cfg.data.augment == "mda" and cfg.data.interpolation == "bicubic"
    assert cfg.model.peft == ["lora", "ssf"] and cfg.model.peft_options == {"lora": {"r": 8, "layers": "last:2"}}
    assert load_config("places_lt", None, []).preset == "places_lt/lift"


def test_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    cfg = load_config(None, None, ["model.pretrained=w.pt", "data.shards=shards", "out=runs/a", "model.pretrained=w.pt"])
    assert cfg.model.pretrained == str(tmp_path / "w.pt") and cfg.data.shards == str(tmp_path / "shards")
    assert cfg.out == str(tmp_path / "runs" / "a")
    assert load_config(None, None, ["model.pretrained=openai"]).model.pretrained == "openai"  # a tag stays a tag


def test_assignment_is_checked_too():
    cfg = load_config(None, None, [])
    with pytest.raises(Exception, match="greater than 0"):
        cfg.optim.lr = -1.0


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config("cifar100_ir100/lift_plus", None, ["model.name=tiny", "model.pretrained=null", "seed=7"])
    f = tmp_path / "config.yaml"
    f.write_text(config_yaml(cfg))
    again = load_config(None, str(f), [])
    assert again == cfg and isinstance(again, RunConfig)
    assert yaml.safe_load(f.read_text())["optim"]["betas"] == [0.9, 0.999]


def test_print_config_shows_the_resolved_config():
    p = run_in_process("train", "--preset", "places_lt/lift_plus", "--set", "optim.lr=0.05", "--print-config")
    assert p.returncode == 0, p.stderr
    printed = yaml.safe_load(p.stdout)
    assert printed["optim"]["lr"] == 0.05 and printed["data"]["augment"] == "mda" and printed["preset"] == "places_lt/lift_plus"


def test_yaml_merge_keys_still_work_and_an_unhashable_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base: &b {lr: 0.5, epochs: 3}\noptim: {<<: *b, lr: 0.2}\n")
    assert load_yaml(f.read_text())["optim"] == {"lr": 0.2, "epochs": 3}  # an own key overrides a merged one
    with pytest.raises(ConfigError, match="unknown setting 'base'"):  # merged as safe_load does, then validated
        load_config(None, str(f), [])
    f.write_text("? [a]\n: 1\n")
    with pytest.raises(ConfigError, match="found an unhashable key"):
        load_config(None, str(f), [])


def test_history_lines_that_are_json_but_no_epoch_record_are_skipped_or_named(tmp_path):
    run = RunDir(tmp_path)
    run.history_file.write_text('{"epoch": 1, "loss": 2.0}\n[1, 2]\n"x"\n{"epoch": "2"}\n{"epoch": 3, "loss": 1.0}\n')
    assert [h["epoch"] for h in run.read_history()] == [1, 3]
    with pytest.raises(Exception, match=r"history.jsonl line 2 is not an epoch record"):
        run.read_history(strict=True)
    run.trim_history(1)  # what a resume does: no crash, the good records kept
    assert [h["epoch"] for h in run.read_history()] == [1]
