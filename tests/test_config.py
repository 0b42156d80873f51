"""Every config file composes into the schema; bad values fail with a message that says what to do."""
import pytest
from hydra.errors import ConfigCompositionException

from conftest import CONF, ROOT, compose_cfg, run_cmd
from nplm.config import ConfigError, setting_warnings, to_config
from nplm.optim import lr_at

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def test_every_yaml_starts_with_the_command_that_uses_it():
    for path in CONF.rglob("*.yaml"):
        header = [line for line in path.read_text().splitlines()[:3] if not line.startswith("# @")]
        assert header[0].startswith("# python train.py"), path


def test_default_config_composes():
    cfg = to_config(compose_cfg())
    assert cfg.model.init == "scaled" and cfg.device == "auto"


# What each shipped experiment sets, written out here (not read from its file): an experiment that
# loses a setting, in its YAML or in composition, fails below.
EXPERIMENT_SETTINGS = {
    "bengio2003": {
        "model.type": "nplm", "model.n_embd": 30, "model.block_size": 4, "model.n_hidden": 100, "model.n_layer": 1,
        "model.norm": "none", "model.dropout": 0.0, "model.direct": False, "model.init": "scaled",
        "model.maxent_order": 0, "model.mix_order": 3,
        "optim.name": "sgd", "optim.lr": 1.0, "optim.momentum": 0.0, "optim.weight_decay": 0.0001,
        "optim.decay_features": True, "optim.schedule": "inverse", "optim.decay_rate": 0.00001,
        "train.epochs": 20, "train.batch_size": 128, "train.eval_interval": 0, "train.log_interval": 500,
        "train.patience": 2, "train.ema": 0.0},
    "best": {
        "model.n_embd": 32, "model.block_size": 8, "model.n_hidden": 384, "model.n_layer": 3,
        "model.norm": "layernorm", "model.dropout": 0.25, "model.init": "scaled", "model.maxent_order": 6,
        "optim.name": "adamw", "optim.lr": 0.003, "optim.weight_decay": 0.1, "optim.schedule": "cosine",
        "optim.warmup_steps": 500, "optim.min_lr": 0.00001, "optim.maxent_lr_scale": 0.33,
        "train.steps": 15000, "train.batch_size": 256, "train.eval_interval": 2000, "train.log_interval": 500,
        "train.keep_best": True, "train.ema": 0.999},
    "words": {
        "model.n_embd": 80, "model.block_size": 6, "model.n_hidden": 256, "model.dropout": 0.5, "model.init": "scaled",
        "optim.name": "adamw", "optim.lr": 0.004, "optim.weight_decay": 0.1, "optim.schedule": "cosine",
        "optim.warmup_steps": 200, "optim.min_lr": 0.00001,
        "train.epochs": 6, "train.batch_size": 128, "train.eval_interval": 0, "train.log_interval": 500,
        "train.keep_best": True, "train.ema": 0.999},
    "words_large": {
        "model.n_embd": 96, "model.block_size": 9, "model.n_hidden": 256, "model.dropout": 0.45, "model.init": "scaled",
        "model.word_dropout": 0.1, "model.mix_order": 5, "model.softmax_cutoffs": [1000, 3000], "model.softmax_div": 4.0,
        "optim.name": "adamw", "optim.lr": 0.003, "optim.weight_decay": 0.1, "optim.schedule": "cosine",
        "optim.warmup_steps": 200, "optim.min_lr": 0.00001,
        "train.epochs": 16, "train.batch_size": 256, "train.eval_interval": 0, "train.log_interval": 500,
        "train.keep_best": True, "train.ema": 0.999},
    "fast": {
        "model.n_embd": 16, "model.block_size": 5, "model.n_hidden": 128, "model.init": "scaled",
        "optim.name": "adamw", "optim.lr": 0.03, "optim.schedule": "cosine", "optim.warmup_steps": 20,
        "optim.min_lr": 0.001,
        "train.steps": 300, "train.batch_size": 512, "train.eval_interval": 300, "train.log_interval": 50},
    "lecture": {
        "model.n_embd": 10, "model.block_size": 3, "model.n_hidden": 200, "model.init": "lecture",
        "optim.name": "sgd", "optim.lr": 0.1, "optim.schedule": "step", "optim.decay_steps": [100000],
        "optim.decay_factor": 0.1, "optim.weight_decay": 0.0, "optim.momentum": 0.0,
        "train.steps": 200000, "train.batch_size": 32, "train.eval_interval": 10000, "train.log_interval": 10000,
        "train.threads": 1, "seed": 2147483647},
    "mixture": {
        "model.n_embd": 32, "model.block_size": 8, "model.n_hidden": 384, "model.n_layer": 3,
        "model.norm": "layernorm", "model.dropout": 0.25, "model.init": "scaled", "model.mix_order": 6,
        "optim.name": "adamw", "optim.lr": 0.003, "optim.weight_decay": 0.1, "optim.schedule": "cosine",
        "optim.warmup_steps": 500, "optim.min_lr": 0.00001,
        "train.steps": 30000, "train.batch_size": 256, "train.eval_interval": 2000, "train.log_interval": 500,
        "train.keep_best": True, "train.ema": 0.999},
}


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _written(name: str) -> dict:
    """The settings conf/experiment/<name>.yaml writes, with those of the experiments it starts from
    (its defaults list) under them."""
    import yaml
    text = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    written = {}
    for parent in text.pop("defaults", []):
        if parent != "_self_":
            written.update(_written(parent))
    return {**written, **_leaves(text)}


def test_every_experiment_is_listed():
    assert sorted(EXPERIMENT_SETTINGS) == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose_with_every_setting_of_their_file(name):
    import dataclasses

    cfg = to_config(compose_cfg([f"experiment={name}"]))
    composed = _leaves(dataclasses.asdict(cfg))
    written = _written(name)
    expected = EXPERIMENT_SETTINGS[name]
    assert set(expected) <= set(written), f"conf/experiment/{name}.yaml lost {set(expected) - set(written)}"
    for key, value in {**written, **expected}.items():
        assert key in composed and composed[key] == value, (name, key, composed.get(key), value)
    # what is not in the file keeps the default recipe's value (an experiment changes only what it says)
    default = _leaves(dataclasses.asdict(to_config(compose_cfg())))
    changed = {k for k in default if default[k] != composed[k]}
    assert changed <= set(written), (name, changed - set(written))
    # the learning-rate schedule the recipe trains with
    o, steps = cfg.optim, cfg.train.steps
    if o.schedule == "step":
        assert [lr_at(s, o, steps) for s in (0, o.decay_steps[0] - 1, o.decay_steps[0], steps - 1)] == \
            [o.lr, o.lr, 0.01, 0.01]
    elif o.schedule == "inverse":  # Bengio et al.'s lr / (1 + r t)
        assert [lr_at(t, o, steps) for t in (0, 100_000)] == pytest.approx([o.lr, o.lr / (1 + o.decay_rate * 1e5)])
    else:
        assert lr_at(0, o, steps) < lr_at(o.warmup_steps, o, steps) == pytest.approx(o.lr)
        assert lr_at(steps - 1, o, steps) == pytest.approx(o.min_lr)


@pytest.mark.parametrize("name", DATA)
def test_data_presets_compose(name):
    cfg = to_config(compose_cfg([f"data={name}"]))
    assert cfg.data.level == ("word" if name == "shakespeare" else "char")


@pytest.mark.parametrize("name", MODELS)
def test_models_compose(name):
    assert to_config(compose_cfg([f"model={name}"])).model.type == name


def test_ngram_context_follows_its_order():
    cfg = to_config(compose_cfg(["model=ngram", "model.order=7"]))
    assert (cfg.model.order, cfg.model.block_size) == (7, 6)
    assert to_config(compose_cfg(["model=ngram", "model.order=1"])).model.block_size == 1


def test_lecture_experiment_is_the_lecture_recipe():
    cfg = to_config(compose_cfg(["experiment=lecture"]))
    assert (cfg.model.n_embd, cfg.model.block_size, cfg.model.n_hidden, cfg.model.init) == (10, 3, 200, "lecture")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("sgd", 0.1, "step")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.seed) == (200000, 32, 2147483647)
    assert [lr_at(s, cfg.optim, cfg.train.steps) for s in (0, 99999, 100000, 199999)] == \
        [0.1, 0.1, 0.01, 0.01]  # exactly the lecture's literals, not 0.1 * 0.1 = 0.010000000000000002


def test_overrides_apply():
    cfg = to_config(compose_cfg(["model.n_embd=24", "model.block_size=5", "train.batch_size=64",
                                 "optim.lr=0.05", "device=cpu", "seed=3"]))
    assert (cfg.model.n_embd, cfg.model.block_size, cfg.train.batch_size, cfg.optim.lr, cfg.seed) == \
        (24, 5, 64, 0.05, 3)


@pytest.mark.parametrize("override", ["model.n_embed=10", "model.n_embd=ten", "train.steps=1.5"])
def test_unknown_keys_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_cfg([override])


@pytest.mark.parametrize("override, key", [("+model.n_embed=10", "model.n_embed"), ("+foo=1", "foo"),
                                           ("+train.step=5", "train.step")])
def test_keys_added_with_plus_that_the_schema_lacks_are_refused(override, key):
    with pytest.raises(ConfigError) as e:
        to_config(compose_cfg([override]))
    assert str(e.value) == (f"unknown key '{key}': the config has no such key; check its spelling (python train.py "
                            "--cfg job prints every key and its value)")


@pytest.mark.parametrize("args, message", [
    (["model.n_embed=10"], "Could not override 'model.n_embed'; Key 'n_embed' not in 'ModelConfig'; check its spelling"),
    pytest.param(["+model.n_embed=10"], "unknown key 'model.n_embed': the config has no such key",
                 marks=pytest.mark.slow),
    pytest.param(["+foo=1"], "unknown key 'foo'", marks=pytest.mark.slow),
    (["model.n_embd=ten"], "cannot apply model.n_embd=ten: Value 'ten' of type 'str' could not be converted to Integer; "
                           "give it a whole number (python train.py --help lists each key's type)"),
    pytest.param(["train.keep_best=maybe"], "Value 'maybe' is not a valid bool (type str); give it true or false",
                 marks=pytest.mark.slow),
    (["model=transformer"], "Could not find 'model/transformer'; available: ngram, nplm"),
    pytest.param(["+sweep=nope"], "Could not find 'sweep/nope'; available: best, grid, lr_batch, optuna, seeds",
                 marks=pytest.mark.slow),
    pytest.param(["model.n_embd=[1,2"], "no viable alternative at input '[1,2'", marks=pytest.mark.slow),
    (["-m", "model.n_embed=1,2"], "Key 'n_embed' not in 'ModelConfig'"),
])
def test_composition_errors_are_one_line_and_exit_2(tmp_path, args, message):
    proc = run_cmd([ROOT / "train.py", *args, f"hydra.run.dir={tmp_path}/r", f"hydra.sweep.dir={tmp_path}/s"],
                   check=False)
    assert proc.returncode == 2
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:") or "[ERROR]" in ln]
    assert len(errors) == 1 and "error: " in errors[0] and message in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "r" / "summary.json").exists()  # nothing was trained


def test_hydra_full_error_is_the_debug_flag(tmp_path):
    import os
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, ROOT / "train.py", "model.n_embed=10", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "1"}, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# Out-of-range values and unknown choices: one table in tests/test_errors.py (CONFIG_ERRORS), each
# refused in-process and through train.py.


def test_maxent_refuses_momentum():
    with pytest.raises(ConfigError, match="optim.momentum=0.9 does not work with model.maxent_order"):
        to_config(compose_cfg(["model.maxent_order=3", "optim.name=sgd", "optim.momentum=0.9"]))


def test_adaptive_softmax_refuses_logits_added_over_the_vocabulary():
    for extra in ("model.direct=true", "model.maxent_order=2"):
        with pytest.raises(ConfigError, match="model.softmax_cutoffs do not combine with model.direct or"):
            to_config(compose_cfg(["model.softmax_cutoffs=[10]", extra]))


def test_token_counts_come_together():
    with pytest.raises(ConfigError, match="must both be positive"):
        to_config(compose_cfg(["data=shakespeare", "data.train_tokens=800000"]))
    assert to_config(compose_cfg(["data=shakespeare", "data.train_tokens=8", "data.val_tokens=2"])).data.val_tokens == 2


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    o = to_config(compose_cfg(["optim.warmup_steps=10", "optim.lr=0.01", "optim.min_lr=0.001"])).optim
    lrs = [lr_at(s, o, 100) for s in range(100)]
    assert lrs[0] < lrs[9] < lrs[10] == pytest.approx(0.01)
    assert lrs[-1] == pytest.approx(0.001)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_inverse_schedule_is_the_papers():
    """Bengio et al. 2003: e_t = e_0 / (1 + r t), t the updates done; r = 0 keeps lr constant (a warning)."""
    cfg = to_config(compose_cfg(["optim.schedule=inverse", "optim.lr=0.01", "optim.decay_rate=0.001"]))
    assert [lr_at(t, cfg.optim, 5000) for t in (0, 1000, 4000)] == pytest.approx([0.01, 0.005, 0.002])
    assert setting_warnings(cfg) == []
    flat = to_config(compose_cfg(["optim.schedule=inverse"]))
    assert lr_at(4000, flat.optim, 5000) == flat.optim.lr and "keeps the learning rate constant" in setting_warnings(flat)[0]


def test_a_moving_average_too_long_for_the_run_is_a_warning():
    """train.ema starts from the untrained weights: 0.999 over 540 steps is still 58% of them."""
    short = to_config(compose_cfg(["train.ema=0.999", "train.steps=540"]))
    assert setting_warnings(short) == ["train.ema=0.999 averages the weights over about 1000 steps, too many for "
                                       "train.steps=540: 58% of the average is still the untrained weights, so val "
                                       "loss looks bad; lower train.ema (e.g. 0.9944) or train longer"]
    # the value it suggests is below the one given, also where three digits would round it back up
    assert "lower train.ema (e.g. 0.9985)" in setting_warnings(to_config(compose_cfg(
        ["experiment=best", "train.steps=2000"])))[0]
    assert setting_warnings(to_config(compose_cfg(["experiment=best"]))) == []


def test_onecycle_schedule():
    o = to_config(compose_cfg(["optim.schedule=onecycle", "optim.lr=0.1", "optim.min_lr=0",
                               "optim.warmup_steps=0"])).optim
    lrs = [lr_at(s, o, 1000) for s in range(1000)]
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1)
    assert lrs.index(max(lrs)) == 300 and lrs[-1] == pytest.approx(0.1 / 1e4)
