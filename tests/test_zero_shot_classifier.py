"""The zero-shot classifier is open_clip.build_zero_shot_classifier, and equals the recipe by hand
(encode each filled template, normalise, average, normalise) for str, callable and mixed templates,
on a real tiny open_clip model and on our integrated model."""
import os

import open_clip
import torch
import torch.nn.functional as F

from conftest import ROOT
from mcl_dist.eval.zero_shot import zero_shot_classifier
from mcl_dist.integration.integrated_model import IntegratedModel

CLASSES = ["red", "green", "blue"]


def by_hand(model, tok, templates):
    cols = []
    for c in CLASSES:
        texts = [t(c) if callable(t) else t.format(c) for t in templates]
        emb = F.normalize(model.encode_text(tok(texts)).float(), dim=-1).mean(0)
        cols.append(F.normalize(emb, dim=0))
    return torch.stack(cols, dim=1)


def test_classifier_is_open_clips_and_equals_the_recipe():
    open_clip.add_model_config(os.path.join(ROOT, "configs/models/tiny-vit.json"))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(open_clip.create_model("tiny-vit").eval())
    tok = open_clip.get_tokenizer("tiny-vit")
    for model in (models[0], IntegratedModel(models).eval()):
        for templates in (["a {} square.", "a photo of {}."], [lambda c: f"the colour {c}."],
                          ["a {} square.", lambda c: f"the colour {c}."]):
            with torch.no_grad():
                got = zero_shot_classifier(model, tok, CLASSES, templates)
                want = by_hand(model, tok, templates)
                ref = open_clip.build_zero_shot_classifier(model, tok, CLASSES, [
                    t if callable(t) else (lambda c, t=t: t.format(c)) for t in templates])
            assert got.shape == (want.shape[0], 3)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            assert torch.equal(got, ref.float())
