"""integrate (rank 0): the stages' checkpoints concatenated into one model (mcl_dist/integration/integrated_model.py);
writes `integrated/model.pt` and, for open_clip objectives, `integrated/open_clip/` (each stage as an
open_clip local-dir folder, plus the weights and scaling: mcl_dist/model/open_clip_dir.py).
model.integration chooses how each stage's features are scaled (normalized or raw); with
model.integration_weights cka_drop / cka_weight, each stage's weight comes from its linear CKA with
the earlier stages' features on the first training samples (mcl_dist/integration/stage_similarity.py), recorded
with the weights in the manifest; first_last keeps stage 0 and the last stage (no features read)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mcl_dist.model import open_clip_dir

from mcl_dist.core import layout
from mcl_dist.core.files import load_torch
from mcl_dist.integration.integrated_model import NEEDS_CKA, save_integrated, stage_weights
from mcl_dist.integration.stage_similarity import cka_to_earlier, sample_features
from mcl_dist.objectives import get_objective
from mcl_dist.run.run_context import RunContext
from mcl_dist.steps.step import Step
from mcl_dist.steps.step_helpers import load_stage_model

log = logging.getLogger("mcl_dist")


@dataclass
class IntegrateStep(Step):
    kind = "integrate"
    main_only = True

    def result_settings(self) -> dict:
        # the defaults stay out of the settings: runs made before either choice keep their fingerprint
        m, out = self.cfg.model, {}
        if m.integration != "normalized":
            out["integration"] = m.integration
        if m.integration_weights in NEEDS_CKA:
            out.update(weights=m.integration_weights, redundant_cka=m.integration_redundant_cka,
                       samples=m.integration_samples)
        elif m.integration_weights != "equal":
            out["weights"] = m.integration_weights
        return out

    def outputs(self, run_dir: str, world: int) -> list[str]:
        out = [layout.integrated_path(run_dir)]
        if get_objective(self.cfg).open_clip_folder:
            out.append(layout.folder(layout.integrated_open_clip(run_dir)))
        return out

    def describe(self, world: int) -> str:
        m, n = self.cfg.model, len(self.cfg.stages)
        how = "raw features concatenated, then L2-normalised" if m.integration == "raw" else \
            "features concatenated (each L2-normalised)"
        w = ("equal weights" if m.integration_weights == "equal" else
             f"{m.integration_weights} weights from CKA on {m.integration_samples} samples"
             if m.integration_weights in NEEDS_CKA else f"{m.integration_weights} weights")
        return f"the {n} stages' {how}, {w}"

    def run(self, ctx: RunContext) -> dict:
        names, states, configs, config = [], [], [], None
        for s in range(len(ctx.cfg.stages)):
            ck = load_torch(layout.stage_checkpoint(ctx.run_dir, s))
            names.append(ck["model_name"])
            states.append(ck["state_dict"])
            configs.append(ck.get("model_config"))
            config = ck.get("model_config", config)
        m, out = ctx.cfg.model, {"model": layout.integrated_path(ctx.run_dir)}
        weights = None
        if m.integration_weights not in ("equal", *NEEDS_CKA):
            weights = stage_weights(m.integration_weights, [None] * len(ctx.cfg.stages))
            out["weights"] = weights
            log.info("integration weights (%s): %s", m.integration_weights, weights)
        elif m.integration_weights != "equal":
            bundles = [load_stage_model(ctx, s) for s in range(len(ctx.cfg.stages))]
            feats = sample_features(bundles, ctx.data.units, m.integration_samples, batch_size=ctx.cfg.cluster.embed_batch_size,
                                    image_ext=ctx.cfg.data.image_ext, device=ctx.info.device, read=ctx.data.read)
            cka = cka_to_earlier(feats)
            weights = stage_weights(m.integration_weights, cka, m.integration_redundant_cka)
            out.update(cka=cka, weights=weights)
            log.info("integration weights (%s): %s; CKA with the earlier stages: %s", m.integration_weights, weights, cka)
        # the weights scale each stage's block after the per-stage scaling model.integration chose
        save_integrated(layout.integrated_path(ctx.run_dir), names, states, weights, config, m.integration)
        if get_objective(ctx.cfg).open_clip_folder:  # each stage as plain open_clip builds it
            stage_dirs = [ctx.stage_dir(s) for s in range(len(ctx.cfg.stages))]
            open_clip_dir.write_integrated(ctx.run_dir, stage_dirs, names, configs, states, weights, m.integration)
        return out
