"""The whole MCL run as one list of resumable steps recorded in the manifest.

    stage_0/train
    stage_s/embed -> stage_s/kmeans -> stage_s/labels -> stage_s/train      (s = 1 .. S-1)
    integrate -> eval -> report

`Pipeline.plan()` lists every step with the settings its result depends on (each step's
settings include the fingerprints of the steps it reads); the bodies live in mcl_dist/steps.py.
Every rank walks the same list. A step that the manifest records as done with the same
fingerprint is skipped; one whose settings changed is refused; an interrupted one is redone
(training steps resume from their last checkpoint).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from mcl_dist import distributed as dist_utils
from mcl_dist import data_report, files, rundir, steps, verify
from mcl_dist.config import Config, ConfigError, default_run_dir, save_config
from mcl_dist.config_load import check_world, load_config
from mcl_dist.data.preflight import DataError, check_index, check_shard_count
from mcl_dist.data.shards import expand_urls, is_local, local_path
from mcl_dist.data.tar_index import build_or_load_index
from mcl_dist.manifest import Manifest, fingerprint
from mcl_dist.objectives import get_objective
from mcl_dist.report import REPORT_FILES
from mcl_dist.synthetic import ensure_demo_data

log = logging.getLogger("mcl_dist")

# settings that change how a run is logged or checkpointed, not what it computes
_NOT_RESULTS = {"log_every", "checkpoint_every", "keep_checkpoints", "workers", "index_dir", "embed_batch_size"}


def _results_only(section: Any) -> dict:
    d = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    return {k: v for k, v in d.items() if k not in _NOT_RESULTS}


def data_identity(urls: list[str]) -> list:
    """Shard names plus size and mtime where local: a rewritten shard changes the fingerprint."""
    out = []
    for u in urls:
        if is_local(u):
            st = os.stat(local_path(u))
            out.append([os.path.abspath(local_path(u)), st.st_size, st.st_mtime_ns])
        else:
            out.append([u])
    return out


def resolve_data(cfg: Config) -> list[str]:
    """Make the synthetic demo data on first use (rank 0 only), then expand the shard list."""
    if cfg.data.synthetic:
        def make() -> dict:
            return ensure_demo_data(cfg.data.synthetic_dir, n_train=cfg.data.synthetic_train,
                                    n_test=cfg.data.synthetic_test, seed=0,
                                    samples_per_shard=cfg.data.synthetic_samples_per_shard)

        paths = dist_utils.run_on_main("synthetic-data", make)  # the others wait outside collectives
        cfg.data.train_shards = cfg.data.train_shards or paths["train"]
        cfg.eval.test_shards = cfg.eval.test_shards or paths["test"]
        cfg.eval.mmvp_dir = cfg.eval.mmvp_dir or paths["mmvp"]
        cfg.eval.zero_shot_classes = cfg.eval.zero_shot_classes or paths.get("zero_shot", "")
        cfg.eval.label_fields = cfg.eval.label_fields or list(paths.get("label_fields", []))
    return expand_urls(cfg.data.train_shards)


@dataclass
class Step:
    name: str
    settings: dict  # what the step's result depends on; its fingerprint is recorded in the manifest
    body: Callable[[str], dict]  # body(fingerprint) -> outputs
    main_only: bool = False  # rank 0 alone, the others wait outside any collective

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.settings)


def step_outputs(run_dir: str, name: str) -> list[str]:
    """What `--redo` removes before recomputing a step (so no part of the old result is reused)."""
    stage, _, step = name.partition("/")
    sd = os.path.join(run_dir, stage)
    return {"train": [os.path.join(sd, p) for p in ("checkpoints", "checkpoint.pt", "metrics.jsonl", "tb", "batches")],
            "embed": [os.path.join(sd, "embed")], "kmeans": [os.path.join(sd, "kmeans")],
            "labels": [os.path.join(sd, "labels.npz")]}.get(step, []) if step else \
        {"integrate": [os.path.join(run_dir, "integrated")], "eval": [os.path.join(run_dir, "eval")],
         "report": [os.path.join(run_dir, p) for p in REPORT_FILES]}.get(name, [])


class Pipeline:
    def __init__(self, cfg: Config, run_dir: str, redo: str = ""):
        self.cfg, self.run_dir = cfg, run_dir
        self.info = dist_utils.info()
        self.urls = resolve_data(cfg)
        self.manifest = Manifest(run_dir)
        self.data_fp = fingerprint({"shards": data_identity(self.urls)})
        self.steps = self.plan()
        self.redo, self.redoing = redo, False
        names = [st.name for st in self.steps]
        if redo and redo not in names:
            raise ConfigError(f"--redo {redo}: no such step; the steps of this run are {', '.join(names)}")
        kill = cfg.debug.kill_at
        if kill.startswith("write:"):  # tests: die while writing this file (temp written, not renamed)
            files.kill_on_write(kill[len("write:"):], dist_utils.kill_job_now)

    def stage_dir(self, s: int) -> str:
        return os.path.join(self.run_dir, f"stage_{s}")

    def kill_step(self, step: str) -> int:
        """debug.kill_at="stage_1/train:3" -> 3 for that step, else 0."""
        name, _, at = self.cfg.debug.kill_at.partition(":")
        return int(at) if name == step and at.isdigit() else 0

    def run_step(self, step: Step) -> dict:
        """Run the step's body unless the manifest has it done with these settings; all ranks agree."""
        name, settings = step.name, step.settings

        def fn() -> dict:
            return step.body(step.fingerprint)

        self.manifest = Manifest(self.run_dir)  # re-read: rank 0 may have written it
        if name == self.redo and not self.redoing:
            self.redoing = True
            if self.info.is_main:
                self._clear_from(name)
        if self.redoing:
            pass  # recomputed whatever the manifest says
        elif self.manifest.is_done(name, settings):
            verify.check_step(self.run_dir, name, self.manifest.step(name))  # its files are still what it wrote
            log.info("step %s: done already, skipped", name)
            return self.manifest.step(name)["outputs"]
        else:
            self.manifest.check_running(name, settings)
        if step.main_only:  # rank 0 alone; the others wait outside any collective
            return dist_utils.run_on_main(f"step-{name}", lambda: self._main_only(name, settings, fn))
        dist_utils.barrier()
        if self.info.is_main:
            self.manifest.start(name, settings)
        log.info("step %s: running", name)
        outputs = fn() or {}
        if self.cfg.debug.kill_at == name:
            dist_utils.kill_launcher()
        dist_utils.barrier()
        if self.info.is_main:
            self.manifest.finish(name, outputs, files=verify.record(self.run_dir, step_outputs(self.run_dir, name)))
        dist_utils.barrier()
        return outputs

    def _main_only(self, name: str, settings: dict, fn: Callable[[], dict]) -> dict:
        self.manifest.start(name, settings)
        log.info("step %s: running (rank 0)", name)
        outputs = fn() or {}
        if self.cfg.debug.kill_at == name:
            dist_utils.kill_job_now()
        self.manifest.finish(name, outputs, files=verify.record(self.run_dir, step_outputs(self.run_dir, name)))
        return outputs

    def _clear_from(self, name: str) -> None:
        """--redo: forget the records and remove the outputs of `name` and every later step, all
        at once, so that a launch killed during the redo cannot reuse any of them."""
        names = [st.name for st in self.steps]
        for later in names[names.index(name):]:
            for path in step_outputs(self.run_dir, later):
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
            if self.manifest.data["steps"].pop(later, None) is not None:
                self.manifest.data["order"].remove(later)
        self.manifest.save()
        log.info("step %s: recomputing it and every later step (--redo %s)", name, self.redo)

    # -- the step list, with what each step's result depends on ---------------------------
    def plan(self) -> list[Step]:
        c, out, fps = self.cfg, [], {}

        def add(name: str, settings: dict, body: Callable[[str], dict], main_only: bool = False) -> None:
            out.append(Step(name, settings, body, main_only))
            fps[name] = out[-1].fingerprint

        def train(s: int, upstream: list[str]) -> dict:
            return {"data": self.data_fp, "data_cfg": _results_only(c.data), "model": _results_only(c.model),
                    "train": _results_only(c.train), "stage": _results_only(c.stages[s]),
                    "world_size": self.info.world_size, "files": verify.model_files(c), "upstream": [fps[u] for u in upstream]}

        add("stage_0/train", train(0, []), lambda fp: steps.train_step(self, 0, fp))
        for s in range(1, len(c.stages)):
            d = f"stage_{s}/"
            add(d + "embed", {"upstream": [fps[f"stage_{s - 1}/train"]], "data": self.data_fp, "mode": c.cluster.embed},
                lambda fp, s=s: steps.embed_step(self, s))
            add(d + "kmeans", {"upstream": [fps[d + "embed"]], "k": c.stages[s].k, "iters": c.cluster.kmeans_iters,
                               "tol": c.cluster.kmeans_tol, "spherical": c.cluster.spherical,
                               "backend": c.cluster.backend, "seed": c.train.seed},
                lambda fp, s=s: steps.kmeans_step(self, s))
            up = [fps[d + "kmeans"]] + ([fps[f"stage_{s - 1}/labels"]] if s > 1 else [])
            add(d + "labels", {"upstream": up, "min_label_size": c.cluster.min_label_size},
                lambda fp, s=s: steps.labels_step(self, s), main_only=True)
            add(d + "train", train(s, [d + "labels", f"stage_{s - 1}/train"]), lambda fp, s=s: steps.train_step(self, s, fp))
        add("integrate", {"upstream": [fps[f"stage_{s}/train"] for s in range(len(c.stages))]},
            lambda fp: steps.integrate_step(self), main_only=True)
        if c.eval.enabled:
            ev = json.loads(json.dumps(c.eval.__dict__, default=str))
            add("eval", {"upstream": [fps["integrate"]], "eval": ev, "files": verify.eval_files(c)}, lambda fp: steps.eval_step(self), main_only=True)
        add("report", {"upstream": [fps["integrate"]] + ([fps["eval"]] if "eval" in fps else [])},
            lambda fp: steps.report_step(self), main_only=True)
        return out

    def preflight(self) -> None:
        """Refuse data that would hang, idle a rank or fail at a late step (mcl_dist/data/preflight.py)."""
        check_shard_count(len(self.urls), self.info.world_size, stage0_trains=not self.cfg.stages[0].pretrained)
        if not all(is_local(u) for u in self.urls):
            return  # remote shards cannot be indexed: streaming counts their bad samples
        result = dist_utils.run_on_main("preflight", self._check_data)
        if "error" in result:
            raise DataError(result["error"])

    def _check_data(self) -> dict:
        c = self.cfg
        try:
            index = build_or_load_index(steps.shard_paths(self), steps.index_dir(self), progress=True)
            stats = check_index(index, image_exts=c.data.image_ext, caption_ext=c.data.caption_ext,
                                need_caption=get_objective(c).captions, max_member_bytes=c.data.max_member_bytes,
                                max_bad_fraction=c.data.max_bad_fraction)
        except (ValueError, DataError) as e:  # duplicate keys come as ValueError from the index
            return {"error": str(e)}
        files.write_json(stats, os.path.join(self.run_dir, "data_check.json"))
        data_report.record(self.run_dir, "preflight", data_report.counted(stats["reasons"]))
        if stats["bad"]:
            log.warning("data check: %d of %d samples unusable (%s); they are skipped and counted",
                        stats["bad"], stats["samples"], stats["reasons"])
        return {"stats": stats}

    def run(self) -> int:
        self.preflight()
        outputs: dict[str, dict] = {}
        for step in self.steps:
            outputs[step.name] = self.run_step(step)
        if self.info.is_main:
            print(f"\nMCL run finished. Report: {os.path.join(self.run_dir, outputs['report'].get('report'))}\nIntegrated model: "
                  f"{steps.integrated_path(self.run_dir)} (load with mcl_dist.integrate.load_model)", flush=True)
        dist_utils.barrier()
        return 0


def _lock_run_dir(run_dir: str) -> str:
    """Rank 0 takes the run directory's lock and sweeps what a killed launch left; all ranks agree."""
    lock, err = "", None
    if dist_utils.info().is_main:
        os.makedirs(run_dir, exist_ok=True)
        try:
            lock = rundir.acquire(run_dir)
            rundir.sweep(run_dir)
        except ConfigError as e:
            err = str(e)
    err = dist_utils.broadcast_object(err)
    if err:
        raise rundir.RunDirBusy(err)
    dist_utils.setup_sync(os.path.join(run_dir, rundir.SYNC_DIR))
    return lock


def run_pipeline(config_path: str, run_dir: str | None, overrides: list[str], redo: str = "") -> int:
    cfg = load_config(config_path, overrides)
    info = dist_utils.init_distributed(timeout_min=cfg.dist.timeout_min)
    check_world(cfg, info.world_size, config_path)
    run_dir = run_dir or cfg.run_dir or default_run_dir(config_path)
    cfg.run_dir = run_dir
    lock = ""
    try:
        lock = _lock_run_dir(run_dir)
        pipe = Pipeline(cfg, run_dir, redo=redo)
        if info.is_main:
            save_config(cfg, os.path.join(run_dir, "config.yaml"))
            log.info("run directory: %s (%d shards, world size %d, device %s)", run_dir, len(pipe.urls),
                     info.world_size, info.device)
        return pipe.run()
    finally:
        if lock:
            rundir.release(lock)
        dist_utils.destroy()
