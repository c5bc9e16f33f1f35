"""The third benchmark family (mcl_dist/synthetic/dials.py): pairs differ only in their attribute,
captions name every value, the writers of mcl_dist/synthetic/trifeature.py accept it."""
import numpy as np
import pytest

from mcl_dist.synthetic.dials import DialSpec
from mcl_dist.synthetic.trifeature import read_json, write_mmvp_pairs, write_synthetic_shards


def test_render_pairs_differ_only_where_the_attribute_is_drawn():
    spec = DialSpec()
    a = spec.sample(np.random.default_rng(0), 1)[0]
    for attr in spec.attributes:
        k = len(spec.vocab(attr))
        b = dict(a, **{attr: spec.vocab(attr)[(a[attr + "_id"] + 1) % k]})
        x = np.asarray(spec.render(a, np.random.default_rng(5)), np.int16)
        y = np.asarray(spec.render(b, np.random.default_rng(5)), np.int16)
        changed = (np.abs(x - y).sum(-1) > 0).mean()
        assert 0 < changed < (0.95 if attr == "tint" else 0.3), (attr, changed)  # tint: the whole gradient
    same = np.asarray(spec.render(a, np.random.default_rng(5)))
    assert (same == np.asarray(spec.render(a, np.random.default_rng(5)))).all()


def test_captions_and_statements_name_every_value():
    spec = DialSpec()
    rng = np.random.default_rng(1)
    for a in spec.sample(rng, 50):
        text = spec.caption(a, rng)
        assert all(a[k] in text for k in spec.attributes), text
        for attr in spec.attributes:
            assert a[attr] in spec.statement(a, attr)
    assert DialSpec(no_easy=True).sample(rng, 20)[5]["tint_id"] == 0
    with pytest.raises(ValueError):
        DialSpec(rings=("red",))  # red is a tint too: captions would be ambiguous


def test_the_shared_writers_accept_the_family(tmp_path):
    paths = write_synthetic_shards(str(tmp_path / "s"), n_samples=8, samples_per_shard=8, seed=0, spec=DialSpec(),
                                   progress=False)
    assert len(paths) == 1 and read_json(str(tmp_path / "s" / "train.manifest.json"))["params"]["spec"]["family"] == "dials"
    folder = write_mmvp_pairs(str(tmp_path / "m"), spec=DialSpec(), n_pairs_per_attribute=2, seed=0)
    assert sorted(read_json(folder + "/synthetic.json")["attributes"]) == sorted(DialSpec().attributes)
