"""configs/cc12m_vit_l14_paper.yaml is the public MCL command (MajorDavidZhang/MCL README's main.py
line, my_training/params.py defaults, cluster.py defaults, MMVP.ipynb's integration) setting by setting."""
import os

from conftest import ROOT
from mcl_dist.config.load import load_config
from mcl_dist.config.schema import micro_batch_size


def test_paper_config_is_the_public_command():
    cfg = load_config(os.path.join(ROOT, "configs/cc12m_vit_l14_paper.yaml"))
    m, t, c = cfg.model, cfg.train, cfg.cluster
    assert (m.name, m.pretrained, m.force_quick_gelu) == ("ViT-L-14", "openai", True)
    assert (m.lock_text, m.lock_image, m.lock_image_unlocked_groups) == (True, True, 6)
    assert m.integration == "raw"  # torch.cat of raw features, then normalised
    assert t.global_batch_size == 8000 and micro_batch_size(cfg, 8) == 1000  # --batch-size 1000 per GPU, 8 GPUs
    assert (t.accum_freq, t.epochs) == (1, 20)
    assert (t.lr, t.beta1, t.beta2, t.eps, t.wd) == (5e-4, 0.9, 0.98, 1e-6, 0.2)  # open_clip's ViT defaults
    assert (t.lr_scheduler, t.warmup_steps, t.warmup_share) == ("const", 600, 0.0)
    assert t.precision == "amp"  # fp16 autocast + GradScaler
    assert (t.gather_with_grad, t.local_loss) == (True, False)
    assert (t.engine, t.seed) == ("ddp", 0)
    assert (c.embed, c.kmeans_iters, c.kmeans_tol, c.spherical) == ("image", 100, 1e-5, False)
    assert cfg.data.workers == 16
    assert len(cfg.stages) == 4 and cfg.stages[0].pretrained == "openai"  # openai + 3 MCL stages
    for st in cfg.stages[1:]:
        assert (st.k, st.group_size, st.init, st.pretrained) == (10, 1000, "base", "")
        assert (st.lr, st.epochs, st.max_steps) == (None, None, None)  # the train.* values above
