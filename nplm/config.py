"""Configuration: the typed schema every YAML file in conf/ is checked against, and its validation.

The dataclasses give types; the values of the core recipe live in conf/*.yaml. Options added later
(off unless asked for) have their defaults here, so that checkpoints written before an option
existed still load with it off. Hydra merges
the YAML into this schema, so an unknown key or a wrong type fails at composition; `validate`
then checks ranges and names once at start-up, with messages that say how to fix the problem.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from nplm.data import asset_path

MODEL_TYPES = ("nplm", "ngram")
INITS = ("lecture", "scaled")
NORMS = ("none", "batchnorm", "layernorm")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle", "inverse")
WANDB_MODES = ("online", "offline", "disabled")
MODES = ("train", "lr_find", "overfit_batch")
FAST = ("auto", "on", "off")
LEVELS = ("char", "word")
TOKENIZERS = ("words", "whitespace")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
# the keys whose value is one of a list; validate() checks them and `python train.py --help` shows them
CHOICES = {"data.level": LEVELS, "data.tokenizer": TOKENIZERS, "model.type": MODEL_TYPES, "model.init": INITS, "model.norm": NORMS,
           "optim.name": OPTIMIZERS, "optim.schedule": SCHEDULES, "train.fast": FAST, "wandb.mode": WANDB_MODES,
           "mode": MODES, "device": DEVICES}


class ConfigError(ValueError):
    """A configuration value is out of range or unknown; the message says how to fix it."""


@dataclass
class DataConfig:
    path: Optional[str] = None  # one word (level=word: one sentence) per line; None = the bundled names.txt
    train_frac: float = MISSING  # first fraction of the shuffled words (level=word: of the lines, in order)
    val_frac: float = MISSING  # next fraction -> val; the rest -> test
    split_seed: int = MISSING  # Python random.Random(split_seed).shuffle(words); level=word: unused
    level: str = "char"  # char (names, makemore) | word (sentences, Bengio et al.; nplm/data.py)
    lowercase: bool = False  # level=word: fold case before tokenising
    tokenizer: str = "words"  # level=word: words | whitespace (a corpus tokenised already: tokens as they are,
    # its own <unk> the unknown word)
    min_count: int = 1  # level=word: words seen fewer times in the training split become <unk>
    max_vocab: int = 0  # level=word: keep at most this many tokens (</s> and <unk> included); 0 = all
    train_tokens: int = 0  # level=word: split by token counts instead of fractions: the lines holding the
    # first train_tokens tokens train, the next val_tokens val, the rest test; 0 = split by fractions
    val_tokens: int = 0  # level=word, with train_tokens: the tokens of the val split; 0 = split by fractions


@dataclass
class ModelConfig:
    type: str = MISSING  # nplm (conf/model/nplm.yaml) | ngram (conf/model/ngram.yaml)
    block_size: int = MISSING  # characters of context (ngram: order - 1, at least 1)
    n_embd: int = 0  # nplm: size of each character's feature vector C[i]
    n_hidden: int = 0  # nplm: tanh units in each hidden layer; 0 = no hidden layer (the paper's h = 0)
    init: str = "scaled"  # nplm: lecture (raw randn draws) | scaled (fan-in with tanh gain, small output)
    n_layer: int = 1  # nplm: hidden layers, each n_hidden wide
    norm: str = "none"  # nplm: none | batchnorm (running statistics for evaluation) | layernorm, before tanh
    dropout: float = 0.0  # nplm: dropout after each tanh, while training
    word_dropout: float = 0.0  # nplm: while training, zero each context token's whole feature vector with this
    # probability p in [0, 1) (the rest scaled by 1 / (1 - p)), so that no prediction leans on one word of its
    # context; 0 = off
    direct: bool = False  # nplm: the paper's direct connections from the embeddings to the output
    softmax_cutoffs: list[int] = field(default_factory=list)  # nplm: an adaptive softmax (Grave et al. 2017) for
    # a large vocabulary: token ids below the first cutoff (at word level the most frequent words) are scored
    # directly, each further range through a projection softmax_div times smaller; [] = the full softmax
    softmax_div: float = 4.0  # nplm, with softmax_cutoffs: cluster i (1, 2, ...) reads a projection of the last
    # layer to n_hidden / softmax_div ** i units
    maxent_order: int = 0  # nplm: hashed n-gram direct connections (Mikolov et al. 2011's RNNME): the last
    # 1 .. maxent_order tokens each add a learned vector of logits, trained with the network; 0 = off
    maxent_buckets: int = 131072  # nplm: rows per n-gram order (orders with fewer contexts get one row each)
    order: int = 0  # ngram: n, the characters of an n-gram (context + next)
    mix_order: int = 0  # nplm: interpolate the trained network with a Kneser-Ney n-gram of this order,
    # weight fitted on val (the paper's mixture, nplm/mixture.py); 0 = off


@dataclass
class OptimConfig:
    name: str = MISSING  # sgd | adamw
    lr: float = MISSING  # peak learning rate
    weight_decay: float = 0.0  # decoupled (adamw) or L2 (sgd) weight decay, on the weight matrices unless decay_all
    decay_all: bool = False  # weight decay on every parameter; default: the weight matrices only (not the
    # embeddings, biases or norm gains)
    decay_features: bool = False  # weight decay on the embedding table C too (Bengio et al.: on the weights and
    # the features, not the biases)
    momentum: float = 0.0  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    schedule: str = MISSING  # constant | step | cosine (linear warmup, then cosine to min_lr) | onecycle | inverse
    maxent_lr_scale: float = 1.0  # the n-gram weights of model.maxent_order learn at lr x this
    warmup_steps: int = 0  # cosine and onecycle (onecycle: 0 = 30% of the steps)
    min_lr: float = 0.0  # cosine only: the learning rate at the last step
    decay_steps: list[int] = field(default_factory=list)  # step only: multiply lr by decay_factor at each
    decay_factor: float = 0.1  # step only: the factor applied at each of decay_steps
    decay_rate: float = 0.0  # inverse only: r in Bengio et al.'s lr / (1 + r t), t the steps taken
    grad_clip: float = 0.0  # clip the gradients' global norm to this; 0 = no clipping


@dataclass
class TrainConfig:
    steps: int = MISSING  # optimiser steps to train (set from train.epochs when that is given)
    batch_size: int = MISSING  # examples (contexts) per minibatch
    eval_interval: int = MISSING  # steps between full val-split evaluations (and at the last step); with
    # train.epochs, 0 = once an epoch
    epochs: float = 0.0  # training length in passes over the training split, instead of train.steps: the
    # steps are ceil(epochs x training examples / batch_size), worked out when the data is read; 0 = use steps
    log_interval: int = MISSING  # steps between metrics rows / progress lines
    eval_chunk: int = 4096  # rows per chunk when evaluating a whole split (bounds memory); fewer with a large
    # vocabulary, so a chunk's logits stay cache-sized (nplm/evaluate.py)
    threads: int = 0  # torch CPU threads; 0 = chosen for the model's size (nplm/threads.py: one thread for
    # small models, which other busy processes would stall at two or more)
    num_samples: int = 20  # names sampled at the end of the run
    keep_best: bool = False  # end with the weights of the best val evaluation, not the last step's
    fast: str = "auto"  # auto | on | off: compiled training steps (nplm/fast.py; a CUDA graph on a GPU); auto
    # takes them where covered and long enough to pay for a first build (2,000 steps; the lecture's SGD 100,000)
    ema: float = 0.0  # decay of an exponential moving average of the weights, used for evaluation and
    # kept at the end (Polyak averaging; 0.999 averages over ~1,000 steps); 0 = off
    patience: int = 0  # early stopping: end once the val loss has not improved for this many evaluations,
    # with the best evaluation's weights; 0 = off

    @property
    def ends_with_best(self) -> bool:
        """Whether the run ends with its best evaluation's weights (keep_best, or early stopping)."""
        return self.keep_best or self.patience > 0


@dataclass
class LRFindConfig:  # mode=lr_find: one step at each of `steps` lrs, exponentially spaced min_lr..max_lr
    steps: int = 1000  # mode=lr_find: optimiser steps, one at each learning rate
    min_lr: float = 1e-4  # mode=lr_find: the first learning rate
    max_lr: float = 10.0  # mode=lr_find: the last (it stops early once the loss is 4x its lowest)


@dataclass
class OverfitBatchConfig:  # mode=overfit_batch: train on one fixed minibatch of train.batch_size
    steps: int = 1000  # mode=overfit_batch: steps on one fixed minibatch of train.batch_size
    tolerance: float = 0.05  # pass when the batch loss ends within this of the lowest possible


@dataclass
class WandbConfig:
    mode: Optional[str] = None  # online | offline | disabled; null = $WANDB_MODE if set, else offline
    project: str = MISSING  # the W&B project the runs are logged to
    entity: Optional[str] = None  # your W&B user or team (online only); null = your default
    group: Optional[str] = None  # null = the sweep folder in a multirun (all jobs of a sweep share it)
    name: Optional[str] = None  # null = the job's overrides in a multirun, else W&B's generated name
    tags: list[str] = field(default_factory=list)  # W&B tags of the run


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mode: str = "train"  # train | lr_find | overfit_batch (nplm/tools.py)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    overfit_batch: OverfitBatchConfig = field(default_factory=OverfitBatchConfig)
    device: str = MISSING  # auto | cpu | cuda | cuda:N
    seed: int = MISSING  # seeds the training generator: parameter init, then minibatch draws
    reproducible: bool = True  # the same numbers on any x86-64 CPU: plain code paths pinned, one thread
    # (nplm/repro.py); false, given on the command line, lets torch pick the CPU's fastest kernels and threads
    # (on the plain path up to about 2x faster; on the compiled path, 0-15%)
    resume: Optional[str] = None  # the folder of an interrupted run to continue (nplm/resume.py)


def register_schema() -> None:
    """Make the schema available to conf/config.yaml's defaults list as `nplm_schema`, and the
    resolvers `${nplm.cores:}` (CPU cores this process may use), `${nplm.context:order}`,
    `${nplm.asset:name}` (a data file shipped in the package) and `${nplm.hydra_subdir:output_dir}`."""
    ConfigStore.instance().store(name="nplm_schema", node=Config)
    if not OmegaConf.has_resolver("nplm.cores"):
        OmegaConf.register_new_resolver("nplm.cores", lambda: len(os.sched_getaffinity(0)))
    if not OmegaConf.has_resolver("nplm.context"):  # an n-gram of order n reads n - 1 characters
        OmegaConf.register_new_resolver("nplm.context", lambda order: max(1, int(order) - 1))
    if not OmegaConf.has_resolver("nplm.asset"):  # the path of a data file shipped in the package
        OmegaConf.register_new_resolver("nplm.asset", lambda name: str(asset_path(name)))
    if not OmegaConf.has_resolver("nplm.hydra_subdir"):  # Hydra's record of the command that made a folder
        OmegaConf.register_new_resolver("nplm.hydra_subdir", _hydra_subdir)


def _hydra_subdir(output_dir: str) -> str | None:
    """hydra.output_subdir: `.hydra` in a new folder; None (Hydra writes no record) in a folder that
    has one, so a re-run sweep, a resume or a refused command never overwrites the original record."""
    return None if os.path.isdir(os.path.join(output_dir, ".hydra")) else ".hydra"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, f"{key}={value!r} is not known; use one of: {', '.join(choices)}")


def validate(cfg: Config) -> Config:
    """Check ranges and names; raise ConfigError with a message that says what to change."""
    _validate_data(cfg.data)
    _validate_model(cfg.model, cfg.optim)
    _validate_training(cfg.model, cfg.train, cfg.optim)
    _validate_modes(cfg)
    d = cfg.data
    if d.path:  # absolute, so that the record finds the data from any directory, and equal configs compare equal
        d.path = str(Path(d.path).expanduser().resolve())
    return cfg


def _validate_data(d: DataConfig) -> None:
    for key, frac in (("data.train_frac", d.train_frac), ("data.val_frac", d.val_frac)):
        _check(0 < frac < 1, f"{key}={frac} must be between 0 and 1 (exclusive)")
    _check(d.train_frac + d.val_frac < 1,
           f"data.train_frac + data.val_frac = {d.train_frac + d.val_frac:g} must be below 1 "
           "so the test split is not empty")
    _check_choice(d.level, LEVELS, "data.level")
    _check_choice(d.tokenizer, TOKENIZERS, "data.tokenizer")
    _check(d.tokenizer == "words" or d.level == "word", f"data.tokenizer={d.tokenizer} splits sentences into words; "
           "it needs data.level=word (characters are not tokenised)")
    _check(d.min_count >= 1, f"data.min_count={d.min_count} must be at least 1")
    _check(d.max_vocab == 0 or d.max_vocab >= 3, f"data.max_vocab={d.max_vocab} must be 0 (no limit) or at least 3")
    if d.train_tokens or d.val_tokens:
        _check(d.level == "word", "data.train_tokens / data.val_tokens split sentences by token counts; they need "
               "data.level=word (characters are split by data.train_frac / data.val_frac)")
        _check(d.train_tokens > 0 and d.val_tokens > 0,
               f"data.train_tokens={d.train_tokens} and data.val_tokens={d.val_tokens} must both be positive "
               "(or both 0 to split by data.train_frac / data.val_frac)")


def _validate_model(m: ModelConfig, o: OptimConfig) -> None:
    _check_choice(m.type, MODEL_TYPES, "model")
    if m.type == "ngram":
        _check(1 <= m.order <= 10, f"model.order={m.order} must be between 1 and 10")
        _check(m.block_size >= max(1, m.order - 1),
               f"model.block_size={m.block_size} is too short for model.order={m.order}: an n-gram reads n - 1 "
               "tokens of context; raise model.block_size (or leave it out: model=ngram derives it)")
    else:
        for key, value in (("model.n_embd", m.n_embd), ("model.n_layer", m.n_layer)):
            _check(value >= 1, f"{key}={value} must be at least 1")
        _check(m.n_hidden >= 0, f"model.n_hidden={m.n_hidden} must be 0 (no hidden layer) or more")
        _check_choice(m.norm, NORMS, "model.norm")
        _check(0 <= m.dropout < 1, f"model.dropout={m.dropout} must be in [0, 1)")
        _check(0 <= m.word_dropout < 1, f"model.word_dropout={m.word_dropout} must be in [0, 1)")
        _check(0 <= m.maxent_order <= m.block_size,
               f"model.maxent_order={m.maxent_order} must be 0 (off) or an order from 1 to model.block_size "
               f"({m.block_size}): each order reads that many tokens of the context; add "
               f"model.maxent_order={max(0, m.block_size)} (or model.maxent_order=0: off)")
        _check(m.maxent_buckets >= 1, f"model.maxent_buckets={m.maxent_buckets} must be at least 1")
        _check(not (m.maxent_order and o.name == "sgd" and o.momentum),
               f"optim.momentum={o.momentum} does not work with model.maxent_order: its n-gram weights are updated "
               "only where used (sparse), and momentum would move all of them every step; use optim.name=adamw "
               "or optim.momentum=0")
        cut = list(m.softmax_cutoffs)
        _check(all(a < b for a, b in zip([0] + cut, cut)),
               f"model.softmax_cutoffs={cut} must be token ids in increasing order, each at least 1")
        _check(not cut or m.softmax_div >= 1, f"model.softmax_div={m.softmax_div} must be at least 1")
        _check(not cut or not (m.direct or m.maxent_order),
               "model.softmax_cutoffs do not combine with model.direct or model.maxent_order (they add a logit "
               "for every token, which the adaptive softmax never computes whole); leave one of them out")
        _check(m.mix_order == 0 or 1 <= m.mix_order <= min(10, m.block_size + 1),
               f"model.mix_order={m.mix_order} must be 0 (off) or an n-gram order from 1 to "
               f"{min(10, m.block_size + 1)} (at most model.block_size + 1); add "
               f"model.mix_order={min(10, m.block_size + 1)} (or model.mix_order=0: no mixture)")


def _validate_training(m: ModelConfig, t: TrainConfig, o: OptimConfig) -> None:
    for key, value in (("model.block_size", m.block_size), ("train.batch_size", t.batch_size),
                       ("train.log_interval", t.log_interval), ("train.eval_chunk", t.eval_chunk)):
        _check(value >= 1, f"{key}={value} must be at least 1")
    _check(t.epochs >= 0, f"train.epochs={t.epochs} must be 0 (train.steps sets the length) or more")
    _check(t.eval_interval >= 1 or (t.eval_interval == 0 and t.epochs > 0),
           f"train.eval_interval={t.eval_interval} must be at least 1 (steps), or 0 (once an epoch) with train.epochs")
    _check(t.steps >= 0, f"train.steps={t.steps} must be 0 or more")
    _check(t.threads >= 0, f"train.threads={t.threads} must be 0 (torch's default) or more")
    _check(0 <= t.ema < 1, f"train.ema={t.ema} must be in [0, 1): the decay of the weights' moving average, "
           "0 = off")
    _check(t.num_samples >= 0, f"train.num_samples={t.num_samples} must be 0 or more")
    _check(t.patience >= 0, f"train.patience={t.patience} must be 0 (no early stopping) or more")
    _check_choice(m.init, INITS, "model.init")
    _check_choice(o.name, OPTIMIZERS, "optim.name")
    _check_choice(o.schedule, SCHEDULES, "optim.schedule")
    _check(o.lr > 0, f"optim.lr={o.lr} must be positive")
    _check(o.maxent_lr_scale > 0, f"optim.maxent_lr_scale={o.maxent_lr_scale} must be positive")
    _check(o.min_lr >= 0, f"optim.min_lr={o.min_lr} must be 0 or more")
    _check(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be 0 or more")
    _check(0 <= o.momentum < 1, f"optim.momentum={o.momentum} must be in [0, 1)")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
           f"optim.betas={list(o.betas)} must be two numbers in [0, 1)")
    _check(o.warmup_steps >= 0, f"optim.warmup_steps={o.warmup_steps} must be 0 or more")
    _check(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be 0 (off) or positive")
    _check(o.decay_factor > 0, f"optim.decay_factor={o.decay_factor} must be positive")
    _check(o.decay_rate >= 0, f"optim.decay_rate={o.decay_rate} must be 0 or more")
    _check(all(s >= 1 for s in o.decay_steps), f"optim.decay_steps={list(o.decay_steps)} must be steps >= 1")


def _validate_modes(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    _check(not (cfg.reproducible and t.threads > 1),
           f"train.threads={t.threads} needs reproducible=false: reproducible mode trains on one thread, the same on "
           "every machine")
    _check_choice(cfg.mode, MODES, "mode")
    _check_choice(t.fast, FAST, "train.fast")
    if cfg.mode != "train":
        _check(m.type == "nplm", f"mode={cfg.mode} trains a neural model; it does nothing for model={m.type}")
    _check(not (t.fast == "on" and (m.type != "nplm" or cfg.mode != "train")),
           f"train.fast=on compiles training steps, and {f'model={m.type}' if m.type != 'nplm' else f'mode={cfg.mode}'} "
           "takes none; drop train.fast=on")
    f = cfg.lr_find
    _check(f.steps >= 10, f"lr_find.steps={f.steps} must be at least 10")
    _check(0 < f.min_lr < f.max_lr, f"lr_find.min_lr={f.min_lr:g} and lr_find.max_lr={f.max_lr:g} must be "
           "positive with min_lr < max_lr")
    _check(cfg.overfit_batch.steps >= 1, f"overfit_batch.steps={cfg.overfit_batch.steps} must be at least 1")
    _check(cfg.overfit_batch.tolerance >= 0,
           f"overfit_batch.tolerance={cfg.overfit_batch.tolerance} must be 0 or more")
    if cfg.wandb.mode is not None:
        _check_choice(cfg.wandb.mode, WANDB_MODES, "wandb.mode")
    _check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device == "cuda"
           or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit()),
           f"device={cfg.device!r} is not known; use auto, cpu, cuda or cuda:N")


def setting_warnings(cfg: Config) -> list[str]:
    """Settings that are valid but cannot do what they say in this run (a schedule step beyond its end)."""
    o, t, out = cfg.optim, cfg.train, []
    if cfg.model.type != "nplm" or cfg.mode != "train":
        return out
    if o.schedule in ("cosine", "onecycle") and o.warmup_steps >= t.steps > 0:
        out.append(f"optim.warmup_steps={o.warmup_steps} is not below train.steps={t.steps}: the learning rate never "
                   f"reaches optim.lr={o.lr:g}; lower optim.warmup_steps")
    if o.schedule == "inverse" and o.decay_rate == 0:
        out.append("optim.schedule=inverse with optim.decay_rate=0 keeps the learning rate constant; set "
                   "optim.decay_rate (the paper's r in lr / (1 + r t))")
    if t.ema and 0 < t.steps < 3 / (1 - t.ema):  # the average starts from the untrained weights
        out.append(f"train.ema={t.ema:g} averages the weights over about {1 / (1 - t.ema):.0f} steps, too many for "
                   f"train.steps={t.steps}: {t.ema ** t.steps:.0%} of the average is still the untrained weights, so "
                   f"val loss looks bad; lower train.ema (e.g. {1 - 3 / t.steps:.4g}) or train longer")
    late = [s for s in o.decay_steps if s >= t.steps]
    if o.schedule == "step" and late and t.steps > 0:
        out.append(f"optim.decay_steps {late} {'is' if len(late) == 1 else 'are'} not below train.steps={t.steps}: "
                   "the learning rate never decays there; lower them or raise train.steps")
    return out


def _unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """Keys of node (added with +key=...) that the schema does not have, as dotted paths."""
    fields = {f.name: f.type for f in dataclasses.fields(schema)}
    unknown = []
    for key in node.keys():
        if key not in fields:
            unknown.append(prefix + str(key))
        elif dataclasses.is_dataclass(sub := getattr(schema(), key, None)) and isinstance(node[key], DictConfig):
            unknown += _unknown_keys(node[key], type(sub), f"{prefix}{key}.")
    return unknown


RENAMED = {"data.dev_frac": "data.val_frac", "data.dev_tokens": "data.val_tokens"}  # old key -> its name now


def upgrade(saved: dict) -> dict:
    """A config saved as a plain dict before keys were renamed (RENAMED), with the names of now."""
    saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for old, new in RENAMED.items():
        (section, name), (_, new_name) = old.split("."), new.split(".")
        if name in saved.get(section, {}):
            saved[section][new_name] = saved[section].pop(name)
    return saved


def from_dict(saved: dict) -> Config:
    """A config saved as a plain dict (checkpoints, training states) as validated dataclasses; keys
    added to the schema since it was saved take their defaults (off), renamed ones their new names."""
    return validate(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), upgrade(saved))))


def given_keys(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The dotted keys a list of Hydra overrides sets (`train.steps=50`, `+key=1`, `~key`), in order."""
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides]


def command_line_wins(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Make what a preset derives give way to what the command line sets, in place; returns a line
    per change, for the log. A preset's train.epochs sets the length over train.steps, and its
    train.eval_interval=0 means once an epoch; so `train.steps=N` given alone ends the preset's epochs,
    and an evaluation once an epoch left without epochs becomes about ten evaluations a run."""
    keys, t, notes = given_keys(overrides), cfg.train, []
    if "train.steps" in keys and "train.epochs" in keys and t.epochs:
        raise ConfigError(f"train.steps={t.steps} and train.epochs={t.epochs:g} both set the training length; "
                          "give one of them")
    with open_dict(cfg):
        if "train.steps" in keys and t.epochs:
            notes.append(f"train.steps={t.steps} from the command line: the preset's train.epochs={t.epochs:g} "
                         "is not used")
            t.epochs = 0.0
        if not t.epochs and t.eval_interval == 0 and "train.eval_interval" not in keys:
            t.eval_interval = max(1, t.steps // 10)
            notes.append(f"the preset's train.eval_interval=0 (once an epoch) needs train.epochs: val is evaluated "
                         f"every {t.eval_interval} steps instead (train.eval_interval={t.eval_interval})")
    return notes


def to_config(cfg: DictConfig) -> Config:
    """Turn Hydra's composed DictConfig into validated plain dataclasses."""
    unknown = _unknown_keys(cfg, Config)
    renamed = [k for k in unknown if k in RENAMED]
    if renamed:
        raise ConfigError("; ".join(f"{k} is now called {RENAMED[k]}: write {RENAMED[k]}=..." for k in renamed))
    if unknown:
        raise ConfigError(f"unknown key {', '.join(map(repr, unknown))}: the config has no such key; check its "
                          "spelling (python train.py --cfg job prints every key and its value)")
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config), f"expected the nplm schema, got {type(obj).__name__}"
    return validate(obj)
