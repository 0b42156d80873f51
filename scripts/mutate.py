"""Prove the test suite's power: apply deliberate small breakages (mutations) to a copy of the project,
one at a time, and run the default test suite against each. Every mutation must make a test fail.

    python scripts/mutate.py                  # every mutation: its likely tests first, then (if they all
                                              # pass) the whole default suite; exit 1 if one survives
    python scripts/mutate.py --list           # the mutations, one line each
    python scripts/mutate.py --only dropout_off,kn_discount
    python scripts/mutate.py --full           # the whole default suite for each (about 3 min each)
    python scripts/mutate.py --quick          # only the tests each names: a quick check while writing tests

The copy holds the project's tracked and untracked-but-not-ignored files; the checkout is never
touched. The tests that the mutations name must pass on the unmutated copy first (else a failure
would say nothing about a mutation). Each mutation replaces one exact piece of code (it must occur exactly once, so a mutation
that no longer applies says so instead of silently testing nothing). `tests` names the tests that
should catch it: they run first, since they are part of the default suite a failure there is a
failure of the default suite; only if they all pass does the whole default suite run. The results
and the list are in docs/design.md ("The suite's power").
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutation:
    name: str
    what: str  # the breakage, in words
    path: str  # the file, relative to the project
    old: str  # the code replaced (exactly one occurrence)
    new: str
    tests: tuple[str, ...]  # the tests expected to catch it (pytest node ids or files)


MUTATIONS = [
    Mutation("weight_decay_ignored", "optim.weight_decay never reaches the optimiser", "nplm/optim.py",
             'groups = [{"params": decay, "weight_decay": o.weight_decay}',
             'groups = [{"params": decay, "weight_decay": 0.0}',
             ("tests/test_optim.py::test_weight_decay_reaches_the_weight_matrices_through_make_optimizer",)),
    Mutation("adamw_decay_coupled", "AdamW's weight decay applied to the gradient (Adam + L2), not decoupled",
             "nplm/optim.py", "                if wd != 0:\n                    p.mul_(1 - lr * wd)\n",
             "                if wd != 0:\n                    grad = grad + wd * p\n", ("tests/test_optim.py",
                                                                                      "tests/test_model.py")),
    Mutation("dropout_off", "dropout between the hidden layers never applied in training", "nplm/model.py",
             "h = self.dropout(h) if noise is None", "h = h if noise is None",
             ("tests/test_model.py",)),
    Mutation("word_dropout_off", "model.word_dropout never drops a context word", "nplm/model.py",
             "if self.training and self.word_dropout > 0:", "if self.training and self.word_dropout > 1:",
             ("tests/test_model.py",)),
    Mutation("context_off_by_one", "each context window shifted one token late: it holds the target itself",
             "nplm/data.py", "X = stream[targets.unsqueeze(1) - block_size + torch.arange(block_size)]",
             "X = stream[targets.unsqueeze(1) - block_size + 1 + torch.arange(block_size)]",
             ("tests/test_data.py",)),
    Mutation("kn_discount", "Kneser-Ney's discounts computed with i where Chen & Goodman have i + 1",
             "nplm/ngram.py", "i - (i + 1) * Y * n[i] / n[i - 1]", "i - i * Y * n[i] / n[i - 1]",
             ("tests/test_ngram.py",)),
    Mutation("resume_without_optimiser", "a resumed run starts its optimiser afresh (Adam's moments lost)",
             "nplm/train.py", "        optimizer.load_state_dict(resume.optimizer)\n", "        pass\n",
             ("tests/test_resume.py::test_a_run_resumed_after_ctrl_c_ends_with_the_losses_of_one_never_stopped",)),
    Mutation("swept_lr_not_applied", "a vectorised sweep trains every run of a group at the first run's lr",
             "nplm/sweep/vector.py", "lrs_at(done, n, cfg.optim, t.steps) for cfg in cfgs",
             "lrs_at(done, n, cfgs[0].optim, t.steps) for cfg in cfgs",
             ("tests/test_vector.py::test_each_run_of_a_group_trains_with_its_own_seed_and_learning_rate",)),
    Mutation("leaderboard_backwards", "the leaderboard sorted worst first", "nplm/sweep/jobs.py",
             'df.sort_values("val_loss", na_position="last", kind="stable")',
             'df.sort_values("val_loss", ascending=False, na_position="last", kind="stable")',
             ("tests/test_report.py", "tests/test_dashboard.py")),
    Mutation("refused_run_leaves_folder", "a refused single run leaves its new folder behind", "nplm/command.py",
             "            folders.remove_new(out_dir)\n            fail(str(e))",
             "            fail(str(e))", ("tests/test_errors.py", "tests/test_cli.py")),
    Mutation("seed_ignored", "the run's generator seeded with a constant, not train's seed", "nplm/train.py",
             "    g = torch.Generator().manual_seed(cfg.seed)\n", "    g = torch.Generator().manual_seed(1337)\n",
             ("tests/test_train.py", "tests/test_lecture.py")),
    Mutation("warmup_skipped", "the cosine schedule's linear warmup replaced by the full lr at once",
             "nplm/optim.py", "            return o.lr * (step + 1) / (warmup + 1)", "            return o.lr",
             ("tests/test_config.py",)),
    Mutation("min_lr_ignored", "the cosine schedule decays to 0, not optim.min_lr", "nplm/optim.py",
             "return min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (o.lr - min_lr)",
             "return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * o.lr", ("tests/test_config.py",)),
    Mutation("grad_clip_ignored", "optim.grad_clip never clips the plain path's gradients", "nplm/loop.py",
             "    if s.cfg.optim.grad_clip:\n        clip_grad_norm(", "    if s.cfg.optim.grad_clip < 0:\n        clip_grad_norm(",
             ("tests/test_train.py::test_grad_clip_bounds_every_step_of_the_plain_path",)),
    Mutation("ema_not_kept", "a run with train.ema ends with its last weights, not their average", "nplm/loop.py",
             "        model.load_state_dict(ema.module.state_dict())\n", "        pass\n",
             ("tests/test_train.py::test_a_run_with_ema_ends_with_the_averaged_weights_its_evaluations_measured",)),
    Mutation("keep_best_ignored", "train.keep_best ends with the last weights", "nplm/train.py",
             "        done.model.load_state_dict(fitted.best_state)\n", "        pass\n",
             ("tests/test_train.py",)),
    Mutation("patience_off_by_one", "early stopping waits one evaluation longer than train.patience",
             "nplm/loop.py", "done - self.best_step >= patience * eval_interval",
             "done - self.best_step > patience * eval_interval", ("tests/test_train.py",)),
    Mutation("perplexity_base_2", "perplexity computed as 2 ** loss of a loss in nats", "nplm/evaluate.py",
             "return math.exp(loss) if loss < 700 else math.inf", "return 2 ** loss if loss < 700 else math.inf",
             ("tests/test_train.py::test_perplexities_are_exp_of_the_losses_in_nats",)),
    Mutation("min_count_off_by_one", "words seen exactly data.min_count times become <unk>", "nplm/data.py",
             "if c >= min_count)", "if c > min_count)", ("tests/test_words.py",)),
    Mutation("direct_ignored", "model.direct's connections never added to the logits", "nplm/model.py",
             "(h)  # (B, vocab_size)\n        if self.direct is not None:\n            logits = logits + x @ self.direct\n",
             "(h)  # (B, vocab_size)\n        if self.direct is not None:\n            logits = logits\n",
             ("tests/test_model.py",)),
    Mutation("step_weight_decay_off", "the compiled step never decays AdamW's weights", "nplm/step.py",
             "            if wd[group]:\n                p.mul_(decay)", "            if False:\n                p.mul_(decay)",
             ("tests/test_step.py::test_the_step_function_is_the_plain_paths_step",)),
    Mutation("step_rows_not_summed", "the compiled step keeps one gradient of a repeated n-gram row, not their sum",
             "nplm/step.py", "summed = torch.zeros_like(g).index_add_(0, segment, g[perm])",
             "summed = torch.zeros_like(g).index_copy_(0, segment, g[perm])",
             ("tests/test_step.py::test_ngram_rows_gradient_is_the_coalesced_sparse_one",)),
    Mutation("step_factored_wrong_position", "the factored first layer reads each position's weights one position off",
             "nplm/model.py", "[idx + torch.arange(T, device=idx.device) * V]",
             "[idx + (torch.arange(T, device=idx.device) + 1) % T * V]",
             ("tests/test_step.py::test_the_step_function_is_the_plain_paths_step",)),
    Mutation("step_cluster_rows_shifted", "the compiled step gathers an adaptive softmax cluster's rows one slot late",
             "nplm/model.py", "pos = inside.cumsum(0) - 1", "pos = inside.cumsum(0)",
             ("tests/test_step.py::test_the_step_function_is_the_plain_paths_step",)),
    Mutation("step_crowded_cluster_fits", "a minibatch with too many targets in a cluster still runs the package",
             "nplm/step.py", ".sum(1).max()) <= cap for", ".sum(1).max()) <= cap + 256 for",
             ("tests/test_step.py::test_capacities_hold_a_clusters_rows_and_no_more",)),
    Mutation("layernorm_ignored", "model.norm=layernorm builds no norm", "nplm/model.py",
             '"layernorm": nn.LayerNorm}[cfg.norm]', '"layernorm": lambda n: nn.Identity()}[cfg.norm]',
             ("tests/test_model.py",)),
    Mutation("mixture_weight_not_fitted", "the mixture's weight is 0.5 whatever val says", "nplm/mixture.py",
             "    weight, nplm_val, ngram_val = best_weight(lp_nn, lp_ng), ",
             "    weight, nplm_val, ngram_val = 0.5, ", ("tests/test_mixture.py",)),
    Mutation("diverged_exit_0", "a diverged single run exits 0", "nplm/command.py",
             "raise SystemExit(1)  # diverged", "raise SystemExit(0)  # diverged",
             ("tests/test_train.py::test_a_single_run_that_diverges_exits_1_and_keeps_its_record",)),
    Mutation("unknown_key_accepted", "a key the schema does not have (+model.n_embed=3) is accepted",
             "nplm/config.py", "    if unknown:\n        raise ConfigError(f\"unknown key",
             "    if False:\n        raise ConfigError(f\"unknown key",
             ("tests/test_config.py::test_keys_added_with_plus_that_the_schema_lacks_are_refused",)),
    Mutation("preset_epochs_win", "a preset's train.epochs wins over train.steps typed on the command line",
             "nplm/config.py", "            t.epochs = 0.0\n", "            pass\n", ("tests/test_overrides.py",)),
    Mutation("val_split_is_train", "the val split's examples are the training split's", "nplm/data.py",
             "        X[name], Y[name] = build_examples(ws, vocab, block_size)\n",
             "        X[name], Y[name] = build_examples(splits['train'] if name == 'val' else ws, vocab, block_size)\n",
             ("tests/test_data.py",)),
    Mutation("sgd_momentum_ignored", "SGD's momentum buffer never used", "nplm/optim.py",
             "                    d_p = buf\n", "                    d_p = d_p\n", ("tests/test_optim.py",)),
    Mutation("curves_not_thinned", "the dashboard's curves keep ten times as many points", "nplm/sweep/dashboard.py",
             "MAX_POINTS = 300 ", "MAX_POINTS = 3000 ", ("tests/test_sweep_command.py",)),
    Mutation("wandb_mode_env_ignored", "$WANDB_MODE is ignored when wandb.mode is not given", "nplm/tracking.py",
             'env = os.environ.get("WANDB_MODE", "").lower()', 'env = ""', ("tests/test_command.py",)),
    Mutation("tool_runs_never_started", "a sweep's tool runs counted as jobs that never started",
             "nplm/sweep/jobs.py", "max(0, planned - len(df) - tools)", "max(0, planned - len(df))",
             ("tests/test_sweep_command.py",)),
    Mutation("live_page_not_reloading", "a running sweep's page does not reload itself", "nplm/sweep/dashboard.py",
             """refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if state.get("live") else \"\"""",
             'refresh = ""', ("tests/test_sweep_command.py", "tests/test_dashboard.py")),
    Mutation("signal_saves_nothing", "a Ctrl-C between evaluations stops without saving the state", "nplm/loop.py",
             "            if not cadence.evaluates(done):\n                save(done)\n            raise Interrupted",
             "            raise Interrupted", ("tests/test_resume.py",)),
    Mutation("eval_fallback_once", "a preset's once-an-epoch evaluation, left without epochs, evaluates once",
             "nplm/config.py", "t.eval_interval = max(1, t.steps // 10)", "t.eval_interval = max(1, t.steps)",
             ("tests/test_overrides.py",)),
    Mutation("speed_watch_silent", "a run slowed by other processes never says so", "nplm/threads.py",
             "        if self.slow < 2:\n", "        if self.slow < 2 or True:\n", ("tests/test_cli.py",)),
    Mutation("group_seed_shared", "every run of a vectorised group draws from the first run's seed",
             "nplm/sweep/vector.py", "torch.Generator().manual_seed(cfg.seed) for cfg in cfgs",
             "torch.Generator().manual_seed(cfgs[0].seed) for cfg in cfgs",
             ("tests/test_vector.py::test_each_run_of_a_group_trains_with_its_own_seed_and_learning_rate",)),
]


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def make_copy(dest: Path) -> Path:
    """The project copied to dest/project. Its processes import the copy's nplm (PYTHONPATH comes
    before the editable install's finder); Hydra's launcher plugin, nplm/sweep/launcher, is still
    loaded from the installed checkout, so no mutation may change it (`apply` refuses)."""
    project = dest / "project"
    for name in project_files():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, project / name)
    return project


def pytest(project: Path, targets: list[str]) -> tuple[bool, str]:
    """(whether a test failed or errored, the first failure's line)."""
    env = {**os.environ, "PYTHONPATH": str(project), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider", *targets],
                          cwd=project, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return False, ""
    first = next((ln for ln in out.splitlines() if re.match(r"(FAILED|ERROR) ", ln)), out.strip().splitlines()[-1])
    return True, first[:160]


def apply(project: Path, m: Mutation) -> str:
    """Apply m; returns the file's original text."""
    if m.path.startswith("nplm/sweep/launcher/"):
        raise SystemExit(f"error: mutation {m.name} changes {m.path}, which the copy cannot load (make_copy)")
    path = project / m.path
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"error: mutation {m.name} no longer applies: its code occurs {n} times in {m.path}; "
                         "update it in scripts/mutate.py")
    path.write_text(text.replace(m.old, m.new))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", default="", help="comma-separated names of the mutations to run")
    parser.add_argument("--full", action="store_true", help="the whole default suite for each mutation")
    parser.add_argument("--quick", action="store_true", help="only the tests each mutation names (a quick check "
                        "while writing tests: one they miss is reported, not tried on the whole suite)")
    args = parser.parse_args()
    chosen = MUTATIONS
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {m.name for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation {', '.join(unknown)}; --list shows them")
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:28s} {m.path:26s} {m.what}")
        return
    survived = []
    with tempfile.TemporaryDirectory(prefix="nplm-mutate-") as tmp:
        project = make_copy(Path(tmp))
        for m in chosen:  # every mutation applies before any runs: a stale one stops at once
            (project / m.path).write_text(apply(project, m))
        hints = sorted({t for m in chosen for t in m.tests})
        failed, line = pytest(project, hints)  # the tests pass on the copy before any mutation
        if failed:
            raise SystemExit(f"error: the tests fail on the unmutated copy, so a mutation could not be told apart: "
                             f"{line}")
        print(f"{len(chosen)} mutations of a copy in {project}; their {len(hints)} test targets pass on it unmutated")
        for m in chosen:
            start, original = time.time(), apply(project, m)
            try:
                caught, line = (False, "") if args.full else pytest(project, list(m.tests))
                where = "its tests"
                if not caught and not args.quick:
                    caught, line = pytest(project, [])
                    where = "the default suite"
            finally:
                (project / m.path).write_text(original)
            verdict = f"caught by {where}: {line}" if caught else "MISSED by its tests" if args.quick else "SURVIVED"
            print(f"{m.name:28s} {time.time() - start:6.0f} s  {verdict}", flush=True)
            if not caught:
                survived.append(m.name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations caught"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
