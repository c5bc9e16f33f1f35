"""open_clip_train's flags on launch/pretrain.py (mapped to config keys), key suggestions that know
synonyms, and override errors that blame the command line (real argparse + config loading)."""
import os
import re

import pytest

from conftest import ROOT
import forked_ranks
from mcl_dist.commands.pretrain import parse, resolve
from mcl_dist.config.load import load_config
from mcl_dist.config.oc_flags import to_overrides
from mcl_dist.config.schema import ConfigError
from mcl_dist.data.csv_data import separator

DEMO = os.path.join(ROOT, "configs/demo.yaml")


def flags(*argv, world=None):
    args = parse(["--config", DEMO, *(["--dry-run", "--world-size", str(world)] if world else []), *argv])
    return resolve(args)


def test_flags_map_to_config_keys_with_open_clips_meanings(capsys):
    run_dir, over = flags("--batch-size", "32", "--lr", "1e-3", "--wd", "0.05", "--warmup", "7", "--epochs", "2",
                          "--precision", "amp", "--lock-text", "--lock-image", "--lock-image-unlocked-groups", "2",
                          "--force-quick-gelu", "--lr-scheduler", "const", "--local-loss", "--gather-with-grad",
                          "--grad-checkpointing", "--report-to", "tensorboard", "--seed", "3", "--workers", "0",
                          "--accum-freq", "2", "train.log_every=7", world=4)
    cfg = load_config(DEMO, over)
    t, m = cfg.train, cfg.model
    assert t.global_batch_size == 32 * 4 * 2  # --batch-size is per GPU, times world size and accum_freq
    assert (t.lr, t.wd, t.warmup_steps, t.epochs, t.precision, t.lr_scheduler) == (1e-3, 0.05, 7, 2.0, "amp", "const")
    assert (t.local_loss, t.gather_with_grad, t.report_to, t.seed, t.accum_freq, t.log_every) == \
        (True, True, "tensorboard", 3, 2, 7)
    assert (m.lock_text, m.lock_image, m.lock_image_unlocked_groups, m.force_quick_gelu, m.grad_checkpointing) == \
        (True, True, 2, True, True)
    assert cfg.data.workers == 0 and run_dir is None
    out = capsys.readouterr().out
    assert out.count("open_clip_train flags:") == 1  # printed once
    assert "--batch-size 32 -> train.global_batch_size=256 (32 per rank x 4 ranks x train.accum_freq 2)" in out


def test_batch_size_uses_the_configs_accum_freq_and_torchruns_world(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # only rank 0 prints
    _, over = flags("--batch-size", "16", "train.accum_freq=4")
    assert load_config(DEMO, over).train.global_batch_size == 16 * 2 * 4
    _, over = flags("--precision", "amp_bfloat16")  # open_clip's other spelling
    assert load_config(DEMO, over).train.precision == "amp_bf16"


def test_name_and_logs_pick_the_run_directory():
    assert flags("--name", "exp")[0] == os.path.join("runs", "exp")
    assert flags("--logs", "/tmp/l", "--name", "exp")[0] == "/tmp/l/exp"
    assert flags("--logs", "/tmp/l")[0] == "/tmp/l/demo"
    with pytest.raises(ConfigError, match="either --run-dir or open_clip's --name/--logs"):
        flags("--run-dir", "x", "--name", "y")


@pytest.mark.parametrize("argv,message", [
    (["--learning-rate", "1"], "command line: unknown flag --learning-rate; did you mean --lr (train.lr)?"),
    (["--warmup-steps", "5"], "command line: unknown flag --warmup-steps; did you mean --warmup (train.warmup_steps)?"),
    (["--batch_size", "5"], "command line: unknown flag --batch_size; did you mean --batch-size (train.global_batch_size)?"),
    (["--shuffle-buffer", "5"], "command line: --shuffle-buffer has no mapping to a config key; the closest config "
                                "key is data.shuffle_buffer (set it as data.shuffle_buffer=VALUE)"),
    (["--lr", "abc"], "command line: --lr abc: not a number"),
])
def test_unmapped_flags_are_refused_naming_the_closest(argv, message):
    with pytest.raises(ConfigError) as e:
        flags(*argv)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("override,message", [
    ("train.learning_rate=1e-4", "unknown key 'train.learning_rate'; did you mean 'train.lr'?"),
    ("train.warmup=10", "unknown key 'train.warmup'; did you mean 'train.warmup_steps'?"),
    ("train.batch_size=64", "unknown key 'train.batch_size'; did you mean 'train.global_batch_size'?"),
    ("train.weight_decay=0.1", "unknown key 'train.weight_decay'; did you mean 'train.wd'?"),
    ("stages.1.num_clusters=8", "unknown key 'stages.1.num_clusters'; did you mean 'stages.1.k'?"),
    ("train.lrr=1", "unknown key 'train.lrr'; did you mean 'train.lr'?"),
])
def test_key_suggestions_know_synonyms(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [override])
    assert str(e.value).endswith(message)


def test_a_bad_override_value_names_the_command_line_not_the_yaml():
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, ["train.lr=abc"])
    assert str(e.value) == "train.lr=abc (command line): 'train.lr' must be float, got str 'abc'"
    proc = forked_ranks.python([os.path.join(ROOT, "launch/pretrain.py"), "--config", DEMO, "--dry-run",
                                "--zeroshot-frequency", "1"], timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: command line: --zeroshot-frequency has no mapping")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_readme_flag_table_lists_every_mapped_flag():
    from mcl_dist.config.oc_flags import FLAGS, INSTEAD, RUN_DIR_FLAGS

    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.index("### open_clip_train flags")
    section = text[start:text.index("| key | default | meaning |", start)]
    refused = section[section.index("| refused flag |"):section.index("```bash")]
    mapped = section[section.index("| flag | config key |"):]
    listed = set(re.findall(r"`(--[a-zA-Z0-9-]+)[ `]", mapped))
    assert listed == set(FLAGS) | set(RUN_DIR_FLAGS)
    for flag, (key, _) in FLAGS.items():
        assert key.rsplit(".", 1)[-1] in mapped, key
    rows = {m for line in refused.splitlines()[2:] if line.startswith("|") for m in re.findall(r"`(--[a-zA-Z-]+)`", line.split("|")[1])}
    assert rows == set(INSTEAD)  # every refused flag has a row saying what to use instead


# the public MCL command (MajorDavidZhang/MCL readme: torchrun --nproc_per_node 8 main.py ...)
PUBLIC = ["--train-data", "SHARDS", "--batch-size", "1000", "--precision", "amp", "--workers", "16",
          "--MCL-label-path", "./save/ViT-L-14_0_pseudo_labels.pt", "--epochs", "20", "--pretrained", "openai",
          "--model", "ViT-L-14", "--force-quick-gelu", "--report-to", "tensorboard", "--zeroshot-frequency", "1",
          "--dataset-type", "files", "--ddp-static-graph", "--gather-with-grad", "--lock-text", "--lr-scheduler",
          "const", "--warmup", "600", "--lock-image", "--lock-image-unlocked-groups", "6"]
DROP = ("--MCL-label-path", "--zeroshot-frequency", "--ddp-static-graph")


def test_the_public_command_names_every_unmapped_flag_at_once_then_runs(tmp_path):
    from conftest import write_test_shards

    shards = "::".join(write_test_shards(str(tmp_path), n_shards=8, per_shard=2))
    argv = [shards if a == "SHARDS" else a for a in PUBLIC]
    paper = os.path.join(ROOT, "configs/cc12m_vit_l14_paper.yaml")
    base = ["--config", paper, "--dry-run", "--world-size", "8", "data.num_samples=100000"]
    with pytest.raises(ConfigError) as e:
        resolve(parse(base + argv))
    msg = str(e.value)
    assert msg.startswith("command line: 3 flags have no mapping here: ") and "\n" not in msg
    for flag in DROP:  # each named once, with what to do instead
        assert msg.count(flag + " ") == 1 and f"{flag} has no mapping here; drop it: " in msg
    mapped = [a for a in argv if a.startswith("--") and a not in DROP]  # named only as replacements, never refused
    assert not any(f"{flag} has no mapping" in msg or f"unknown flag {flag}" in msg for flag in mapped)
    keep, skip = [], False  # the command without the three (and their values)
    for a in argv:
        if skip:
            skip = False
        elif a in DROP:
            skip = a != "--ddp-static-graph"
        else:
            keep.append(a)
    # --dataset-type is mapped; the public code's own type `files` is none of open_clip's
    _, overrides = resolve(parse(base + keep))
    with pytest.raises(ConfigError, match="'data.dataset_type' must be one of webdataset, csv, auto, got 'files'"):
        load_config(paper, overrides)
    keep[keep.index("files")] = "webdataset"
    proc = forked_ranks.python([os.path.join(ROOT, "launch/pretrain.py"), *base, *keep], timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--model ViT-L-14 -> model.name=ViT-L-14" in proc.stdout
    assert f"--train-data {shards} -> data.train_shards={shards}" in proc.stdout


def test_csv_flags_set_the_csv_source(tmp_path):
    """open_clip_train's CSV flags: --dataset-type csv, the two column names and the separator
    (a tab typed as \\t, or any character, YAML-special ones included)."""
    ns = parse(["--config", "c.yaml", "--dataset-type", "csv", "--csv-img-key", "path", "--csv-caption-key", "text",
                "--csv-separator", "\\t"])
    overrides, told = to_overrides(ns, 1, lambda: 1)
    cfg = load_config(None, ["data.synthetic=true"] + overrides)
    assert (cfg.data.dataset_type, cfg.data.csv_img_key, cfg.data.csv_caption_key) == ("csv", "path", "text")
    assert separator(cfg.data.csv_separator) == "\t"
    for sep in ("|", ",", "\t", ":"):
        overrides, _ = to_overrides(parse(["--config", "c.yaml", "--csv-separator", sep]), 1, lambda: 1)
        assert load_config(None, ["data.synthetic=true"] + overrides).data.csv_separator == sep
