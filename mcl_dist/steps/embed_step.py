"""stage_s/embed: every rank embeds its own share of the data (shards, CSV rows) with stage s-1's
model, once.

Writes `stage_s/embed/part<rank>-of<world>.feats.npy` (fp16) and `.keys.npy` (mcl_dist/clustering/embedding.py
`part_paths`), each part's own bad-sample counts `.stats.json` (a resumed step adds them up
rather than counting zero), and `embed_stats.json`; its entry in data_report.json (paths:
mcl_dist/core/layout.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from mcl_dist.clustering.embedding import embed_shards
from mcl_dist.core import layout
from mcl_dist.objectives import get_objective
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step import StageStep
from mcl_dist.steps.step_helpers import load_stage_model, remove_stale


@dataclass
class EmbedStep(StageStep):
    kind = "embed"

    def result_settings(self) -> dict:
        # the autocast dtype changes the features, so a resumed run with another precision re-embeds
        return {"mode": self.cfg.cluster.embed, "precision": self.cfg.train.precision}

    def outputs(self, run_dir: str, world: int) -> list[str]:
        d = layout.embed_dir(run_dir, self.stage)
        parts = [layout.embed_parts_pattern(d, world, x) for x in (layout.FEATS, layout.KEYS, layout.PART_STATS)]
        return parts + [layout.embed_stats_path(run_dir, self.stage)]

    def describe(self, world: int) -> str:
        return (f"{self.cfg.cluster.embed} embeddings of every sample (towers at train.precision "
                f"{self.cfg.train.precision}), stored fp16, each rank its own shards")

    def run(self, ctx: RunContext) -> dict:
        out = layout.embed_dir(ctx.run_dir, self.stage)
        remove_stale(layout.embed_parts_glob(out), ctx.info.world_size)
        bundle = load_stage_model(ctx, self.stage - 1)
        c = ctx.cfg
        data, info = ctx.data, ctx.info
        return embed_shards(bundle["model"], bundle, data.units, out, mode=c.cluster.embed,
                            batch_size=c.cluster.embed_batch_size, workers=c.data.workers,
                            image_ext=c.data.image_ext, caption_ext=c.data.caption_ext,
                            max_pixels=c.data.max_image_pixels, max_bytes=c.data.max_member_bytes,
                            max_bad_fraction=c.data.max_bad_fraction, precision=c.train.precision,
                            need_caption=get_objective(c).captions, run_dir=ctx.run_dir, step=self.name,
                            mine=data.embed_share(info.rank, info.world_size), read=data.read)
