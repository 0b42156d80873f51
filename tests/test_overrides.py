"""The command line wins: a value typed on the command line is never silently overridden by a preset
(a preset's train.epochs over train.steps, its once-an-epoch evaluation), or is refused in one line
that says exactly what to add."""
import pytest

from conftest import ROOT, compose_cfg, run_cmd, summary
from nplm.config import ConfigError, command_line_wins, to_config


def composed(*overrides):
    """The validated config of these command-line overrides, with the command line's precedence."""
    cfg = compose_cfg(overrides)
    notes = command_line_wins(cfg, overrides)
    return to_config(cfg), notes


@pytest.mark.parametrize("preset", ["words", "words_large", "bengio2003"])
def test_steps_on_the_command_line_end_a_presets_epochs(preset):
    cfg, notes = composed(f"experiment={preset}", "data=shakespeare", "train.steps=50")
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.eval_interval) == (50, 0, 5)
    assert notes[0] == (f"train.steps=50 from the command line: the preset's train.epochs="
                        f"{compose_cfg([f'experiment={preset}']).train.epochs:g} is not used")
    assert "val is evaluated every 5 steps instead (train.eval_interval=5)" in notes[1]
    cfg, notes = composed(f"experiment={preset}", "data=shakespeare", "train.steps=50", "train.eval_interval=25")
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.eval_interval) == (50, 0, 25) and len(notes) == 1


def test_epochs_zero_on_the_command_line_falls_back_to_steps_with_an_interval():
    cfg, notes = composed("experiment=words", "data=shakespeare", "train.epochs=0")
    assert (cfg.train.epochs, cfg.train.steps, cfg.train.eval_interval) == (0, 6000, 600)  # data=shakespeare's steps
    assert len(notes) == 1 and "train.eval_interval=600" in notes[0]


def test_what_the_command_line_does_not_touch_stays_as_the_preset_says():
    cfg, notes = composed("experiment=words", "data=shakespeare", "train.epochs=2")
    assert (cfg.train.epochs, cfg.train.eval_interval, notes) == (2, 0, [])  # once an epoch, as the preset says
    cfg, notes = composed("experiment=lecture", "train.steps=1000")
    assert (cfg.train.steps, cfg.train.eval_interval, cfg.train.threads, notes) == (1000, 10000, 1, [])
    cfg, notes = composed("train.steps=300")
    assert (cfg.train.steps, cfg.train.eval_interval, notes) == (300, 500, [])


@pytest.mark.parametrize("overrides, message", [
    (["experiment=words", "data=shakespeare", "train.steps=50", "train.epochs=2"],
     "train.steps=50 and train.epochs=2 both set the training length; give one of them"),
    (["experiment=words", "data=shakespeare", "train.steps=50", "train.eval_interval=0"],
     "train.eval_interval=0 must be at least 1 (steps), or 0 (once an epoch) with train.epochs"),
    (["experiment=words_large", "data=shakespeare", "model.block_size=3"],
     "model.mix_order=5 must be 0 (off) or an n-gram order from 1 to 4 (at most model.block_size + 1); add "
     "model.mix_order=4 (or model.mix_order=0: no mixture)"),
    (["experiment=best", "model.block_size=4"],
     "model.maxent_order=6 must be 0 (off) or an order from 1 to model.block_size (4): each order reads that many "
     "tokens of the context; add model.maxent_order=4 (or model.maxent_order=0: off)"),
])
def test_a_preset_value_that_cannot_follow_the_command_line_is_refused_with_what_to_add(overrides, message):
    with pytest.raises(ConfigError) as e:
        composed(*overrides)
    assert str(e.value) == message


def test_train_steps_trains_those_steps_through_the_command(tmp_path):
    """`python train.py experiment=words data=shakespeare train.steps=N` trains N steps (it trained the
    preset's 6 epochs, 10,800 steps, before), says so, and evaluates about ten times."""
    corpus = tmp_path / "shakespeare_1000.txt"
    corpus.write_text("\n".join((ROOT / "nplm/assets/tinyshakespeare.txt").read_text().splitlines()[:1000]) + "\n")
    run_dir = tmp_path / "r"
    args = [ROOT / "train.py", "experiment=words", "data=shakespeare", f"data.path={corpus}", "train.steps=40",
            "train.log_interval=10", "train.ema=0.9", "optim.warmup_steps=5", "train.num_samples=2", "device=cpu",
            "wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
    proc = run_cmd(args)
    s = summary(run_dir)
    assert (s["status"], s["steps"], s["config"]["train"]["epochs"]) == ("finished", 40, 0)
    assert s["config"]["train"]["eval_interval"] == 4
    assert "the preset's train.epochs=6 is not used" in proc.stdout
    assert "val is evaluated every 4 steps instead (train.eval_interval=4)" in proc.stdout
    # the same command again is the same run: skipped, not trained again
    assert "skipping the run: it finished already" in run_cmd(args).stdout


def test_help_shows_the_values_the_command_line_leaves():
    out = run_cmd([ROOT / "train.py", "--help", "experiment=words", "data=shakespeare", "train.steps=50"]).stdout
    assert "  train.steps = 50   (int)" in out and "  train.epochs = 0.0   (float)" in out
    assert "  train.eval_interval = 5   (int)" in out
