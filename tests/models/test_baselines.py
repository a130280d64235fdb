"""The baselines (CQTNet, DVINet+, ByteCover2x/3x, CoverHunter-C): parameter counts of the
original configs (the published sizes), shapes, losses by hand, retrieval distances through the
engine, a training epoch and test.py for each; the interface every model declares."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from models.parts import losses as L
from lib import retrieval as R
from lib import tensor_ops as T
from tests import golden_recipe
from models import bytecover2x, bytecover3x, coverhunterc, cqtnet, dvinetp

SR = 16000


MODULES = {
    "cqtnet": cqtnet,
    "dvinetp": dvinetp,
    "bytecover2x": bytecover2x,
    "bytecover3x": bytecover3x,
    "coverhunterc": coverhunterc,
}
PUBLISHED_SIZES = {  # parameters of the original models at 100,000 classes
    "cqtnet": 35_180_428,
    "dvinetp": 11_474_528,
    "bytecover2x": 202_277_377,
    "bytecover3x": 969_229_314,
    "coverhunterc": 27_830_976,
}


@pytest.mark.parametrize("dataset", ["shs", "dvi", "dvi2", "dvi2fm_light"])
@pytest.mark.parametrize("name", list(MODULES))
def test_original_configs_build_the_published_sizes(dataset, name):
    conf = OmegaConf.load(f"config/{dataset}-{name}.yaml")
    assert conf.model.name == name and conf.training.optim.lr == 3e-4
    with torch.device("meta"):  # sizes without allocating ByteCover3x's 3.9 GB
        model = MODULES[name].Model(conf.model, sr=SR)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_SIZES[name]
    # the original cqtnet configs have the other dataset's augmentations and monitor: kept
    swapped = (dataset == "shs") == (name == "cqtnet")
    quantity = "m_COMP" if swapped else "m_MAP"
    assert conf.training.monitor.quantity == quantity
    assert conf.augmentations.specaugment.p == (0.1 if swapped else 0.4)
    batch = 18 if name == "bytecover3x" and dataset != "shs" else 25
    assert conf.training.batchsize == batch and conf.data.n_per_class == 4


def test_coverhunterc_freezes_the_bottleneck_bias_only():
    with torch.device("meta"):
        model = coverhunterc.Model(OmegaConf.load("config/dvi2-coverhunterc.yaml").model)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["bottleneck.bias"]


TINY = {  # tiny widths of every model on 20 s shingles
    "bytecover2x": {
        "cqt": {"hoplen": 0.023, "noctaves": 7, "pool": {"len": 5, "hop": 5}},
        "ncha": 64,
        "smooth": 0.1,
        "margin": 0.3,
        "lamb": 0.1,
    },
    "bytecover3x": {
        "cqt": {"hoplen": 0.023, "noctaves": 7, "pool": {"len": 6, "hop": 6}},
        "ncha": 64,
        "nsub": 3,
        "smooth": 0.1,
        "margin": 0.1,
        "lamb": 0.1,
    },
    "coverhunterc": {
        "cqt": {"hoplen": 0.04, "noctaves": 8, "pool": {"len": 1, "hop": 1}},
        "ncha": 16,
        "ncha_attn": 32,
        "nblocks": 2,
        "gamma": 2,
        "margin": 0.3,
    },
}


def tiny_conf(name, **extra):
    """The demo-dvinetp model section turned into a tiny ``name`` (zdim 16, 10 classes)."""
    conf = OmegaConf.load("config/demo-dvinetp.yaml").model
    conf.name = name
    # the CQT of the 16 kHz models (the demo runs at 8 kHz with 6 octaves and shorter kernels)
    full_cqt = {"cqt": {"noctaves": 7, "fscale": 1.0}}
    merged = OmegaConf.merge(
        conf, full_cqt, {"zdim": 16, "maxcliques": 10}, TINY.get(name, {}), extra
    )
    # only the keys that the model's config declares (dvinetp's ncha_in is unknown elsewhere)
    return golden_recipe.declared_only(merged)


def small(module, **extra):
    torch.manual_seed(0)
    name = module.__name__.split(".")[-1]
    return module.Model(tiny_conf(name, **extra), sr=SR)


SHINGLE_SHAPES = {  # CQT shingles of 50 s of audio: (S, bins, frames)
    "cqtnet": (3, 84, 250),  # 20 s every 20 s, the last one padded; 1001 frames / 4
    "dvinetp": (3, 84, 250),
    "bytecover2x": (3, 84, 174),  # hop 368 samples: 870 frames / 5
    "bytecover3x": (3, 84, 145),  # 870 / 6
    "coverhunterc": (4, 96, 501),  # training hop 10 s; hop 640 samples: 501 frames
}


@pytest.mark.parametrize("name", list(MODULES))
def test_shapes_and_common_interface(name):
    module = MODULES[name]
    model = small(module).eval()
    audio = torch.randn(2, 50 * SR)
    with torch.inference_mode():
        h = model.prepare(audio)
        assert h.shape == (2, *SHINGLE_SHAPES[name])
        z, extra = model.embed(h)
        assert z.shape == (2, SHINGLE_SHAPES[name][0], 16)
        assert extra is None or extra.shape == z.shape
        z = model(audio, shingle_len=20, shingle_hop=10)
    assert z.shape == (2, 4, 16)
    if module is dvinetp:
        assert torch.allclose(z.norm(dim=-1), torch.ones(2, 4), atol=1e-5)
    # distances: cosine of segments reduced with the model's default, equal to the engine
    q = R.Embeddings(torch.tensor([0, 1]), torch.tensor([0, 1]), z.half(), None)
    want = model.distances(z.half(), z.half())
    got = R.block_distances(q, q, model.default_redux, metric=model.segment_metric)
    assert torch.allclose(got, want, atol=1e-5)
    flat = z.reshape(-1, 16).half().float()
    dist = T.pairwise_distance_matrix(flat, flat, mode="cos").view(2, 4, 2, 4)[0, :, 1, :]
    if name == "bytecover3x":  # smeanmin: mean of both directions' mean of row minima
        assert model.default_redux == "smeanmin"
        pair = (dist.min(1).values.mean() + dist.min(0).values.mean()) / 2
    else:
        assert model.default_redux == "min"
        pair = dist.min()
    assert want[0, 1].item() == pytest.approx(pair.item(), abs=1e-5)


def test_cqtnet_loss_with_several_segments_and_class_ids():
    model = small(cqtnet)
    z = torch.randn(4, 3, 16)  # the original crashed for S > 1
    labels = torch.tensor([0, 0, 1, 1])
    loss, logs = model.loss(labels, torch.arange(4), z)
    logits = model.fc1(z.reshape(12, 16))
    want = torch.nn.functional.cross_entropy(logits, labels.repeat_interleave(3))
    assert loss.item() == pytest.approx(want.item()) and logs["l_main"] == loss.detach()
    with pytest.raises(ValueError, match="model.maxcliques"):
        model.loss(torch.tensor([0, 0, 10, 10]), torch.arange(4), z)


def test_dvinetp_loss_by_hand():
    model = small(dvinetp)
    z = torch.nn.functional.normalize(torch.randn(4, 2, 16), dim=-1)
    labels = torch.tensor([0, 0, 1, 1])
    loss, logs = model.loss(labels, torch.arange(4), z)
    flat = z.reshape(8, 16)
    dist = L.euclidean(flat, flat).view(4, 2, 4, 2).mean(dim=(1, 3))
    hinge = []
    for i in range(4):
        pos = [j for j in range(4) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(4) if labels[j] != labels[i]]
        hinge.append(max(0.0, max(dist[i, pos]).item() - min(dist[i, neg]).item() + 0.3))
    sim = (flat @ flat.T).view(4, 2, 4, 2).mean(dim=(1, 3))
    negative = labels[:, None] != labels[None, :]
    reg = (sim[negative] ** 2).mean().item()
    assert logs["l_cont"].item() == pytest.approx(sum(hinge) / 4, rel=1e-5)
    assert logs["l_cent"].item() == pytest.approx(reg, rel=1e-4)
    assert loss.item() == pytest.approx(sum(hinge) / 4 + 0.02 * reg, rel=1e-5)


def test_unknown_mining_strategy_is_an_error():
    from lib.config import ConfigError

    # refused by the schema's declaration, as a config's value, when the model is built
    with pytest.raises(ConfigError, match="model.mining.negative='medium' is not one of"):
        small(dvinetp, mining={"negative": "medium"})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.corpus import folder_corpus

    return folder_corpus(
        tmp_path_factory.mktemp("baselines"), 6, 3, 22, seed=5, split="0.5,0.25,0.25"
    )


@pytest.mark.parametrize("name", list(MODULES))
def test_trains_an_epoch_on_cpu_and_evaluates_with_test_py(corpus, tmp_path, name):
    import json
    import sys

    from tests.corpus import run_script

    conf = OmegaConf.load("config/demo-dvinetp.yaml")
    conf.model = tiny_conf(name)
    conf.data.samplerate = SR
    OmegaConf.save(conf, tmp_path / "conf.yaml")
    paths = [f"path.audio={corpus / 'audio'}", f"path.meta={corpus / 'meta.pt'}"]
    train = [
        sys.executable,
        "train.py",
        f"jobname={name}",
        f"conf={tmp_path / 'conf.yaml'}",
        "fabric.accelerator=cpu",
        "training.numepochs=1",
        "training.batchsize=2",
        "data.nworkers=0",
        f"path.logs={tmp_path}",
        *paths,
    ]
    result = run_script(train)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / name / "checkpoint_last.ckpt"
    test = [
        sys.executable,
        "test.py",
        f"checkpoint={ckpt}",
        "accelerator=cpu",
        "nworkers=0",
        f"cache_dir={tmp_path / 'cache'}",
        f"out={tmp_path / 'out'}",
        "qslen=-1",
        "cslen=-1",
    ]
    result = run_script(test)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert (
        run["redux"] == MODULES[name].Model.default_redux
        and run["n_queries"] == 6
        and 0 < run["MAP"]["mean"] <= 1
    )


def test_classifier_too_small_for_the_clique_ids_is_caught_before_training(corpus):
    from lib.config import ConfigError
    from lib.dataset import Dataset
    from lib.training import check_classifier_size

    conf = OmegaConf.load("config/demo-dvinetp.yaml").data
    conf.path = {"audio": str(corpus / "audio"), "meta": str(corpus / "meta.pt")}
    train, valid = Dataset(conf, "train"), Dataset(conf, "valid")
    largest = max(valid.clique_id.values())  # validation ids follow the training ones
    check_classifier_size(small(cqtnet, maxcliques=largest + 1), train, valid)
    with pytest.raises(ConfigError, match=f"at least {largest + 1}"):
        check_classifier_size(small(cqtnet, maxcliques=largest), train, valid)
    check_classifier_size(small(dvinetp), train, valid)  # no classifier: nothing to check


def smoothed_ce_by_hand(logits, labels, eps):
    logp = logits.log_softmax(-1)
    rows = range(len(labels))
    return sum(-(1 - eps) * logp[i, labels[i]] - eps * logp[i].mean() for i in rows).item() / len(
        labels
    )


def batch_hard_by_hand(dist, labels, ids, margin):
    """Mean hinge of the farthest positive (same label, other id) and closest negative."""
    hinge = []
    for i in range(len(labels)):
        pos = [j for j in range(len(labels)) if labels[j] == labels[i] and ids[j] != ids[i]]
        neg = [j for j in range(len(labels)) if labels[j] != labels[i]]
        worst = max(dist[i, j].item() for j in pos)
        hinge.append(max(0.0, worst - min(dist[i, j].item() for j in neg) + margin))
    return sum(hinge) / len(hinge)


LABELS, IDS = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([3, 4, 5, 6, 7])


def test_bytecover2x_loss_by_hand_with_every_segment():
    model = small(bytecover2x)
    f_c, f_t = torch.randn(5, 2, 16), torch.randn(5, 2, 16)
    loss, logs = model.loss(LABELS, IDS, f_c, f_t)
    labels, ids = LABELS.repeat_interleave(2), IDS.repeat_interleave(2)  # segments of a track
    ce = smoothed_ce_by_hand(model.fc(f_c.reshape(10, 16)), labels, 0.1)
    flat = f_t.reshape(10, 16)
    dist = (flat[:, None] - flat[None]).norm(dim=-1)
    triplet = batch_hard_by_hand(dist, labels, ids, 0.3)
    positive = (labels[:, None] == labels[None]) & (ids[:, None] != ids[None])
    d_pos = dist[positive].mean().item()
    assert logs["l_cent"].item() == pytest.approx(ce, rel=1e-5)
    assert logs["l_cont"].item() == pytest.approx(triplet, rel=1e-4)
    assert logs["v_dpos"].item() == pytest.approx(d_pos, rel=1e-4)
    assert loss.item() == pytest.approx(ce + triplet + 0.1 * d_pos, rel=1e-4)


def test_bytecover3x_maxmean_and_loss_by_hand():
    model = small(bytecover3x)
    z = torch.randn(5, 3, 16)

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    def maxmean(x, y):
        return sum(max(cos(xs, ys) for ys in y) for xs in x) / len(x)

    with torch.no_grad():
        model.tau.fill_(0.5)
    sim = bytecover3x.maxmean(z, z)
    assert sim[1, 3].item() == pytest.approx(maxmean(z[1], z[3]), abs=1e-5)
    assert sim[3, 1].item() == pytest.approx(maxmean(z[3], z[1]), abs=1e-5)  # asymmetric
    classes = bytecover3x.maxmean(z, model.w)
    assert classes.shape == (5, 10)
    assert classes[2, 7].item() == pytest.approx(maxmean(z[2], model.w[7]), abs=1e-5)
    loss, logs = model.loss(LABELS, IDS, z)
    ce = smoothed_ce_by_hand(math.exp(0.5) * classes, LABELS, 0.1)
    hinge, reg = [], []
    for i in range(5):
        pos = [sim[i, j].item() for j in range(5) if LABELS[j] == LABELS[i] and j != i]
        neg = [sim[i, j].item() for j in range(5) if LABELS[j] != LABELS[i]]
        hinge.append(max(0.0, 1.1 * max(neg) - min(pos)))
        reg += [1 - s for s in pos]
    triplet, reg = sum(hinge) / 5, 0.1 * sum(reg) / len(reg)
    assert logs["l_cent"].item() == pytest.approx(ce, rel=1e-4)
    assert logs["l_cont"].item() == pytest.approx(triplet, rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx(ce + triplet + reg, rel=1e-4)
    loss.backward()
    assert model.tau.grad is not None and model.w.grad.abs().sum() > 0


def test_coverhunterc_loss_by_hand():
    model = small(coverhunterc)
    f_i, f_t = torch.randn(5, 2, 16), torch.randn(5, 2, 16)
    loss, logs = model.loss(LABELS, IDS, f_i, f_t)
    labels, ids = LABELS.repeat_interleave(2), IDS.repeat_interleave(2)
    probs = model.ce_layer(f_i.reshape(10, 16)).softmax(-1)
    focal = (
        sum(
            -((1 - probs[i, labels[i]]) ** 2) * torch.log(probs[i, labels[i]]) for i in range(10)
        ).item()
        / 10
    )
    flat = f_t.reshape(10, 16)
    centers = model.center_loss.centers
    center = sum(((flat[i] - centers[labels[i]]) ** 2).sum() for i in range(10)).item() / 10
    dist = (flat[:, None] - flat[None]).norm(dim=-1)
    triplet = batch_hard_by_hand(dist, labels, ids, 0.3)
    assert logs["l_cent"].item() == pytest.approx(focal, rel=1e-4)
    assert logs["l_cont"].item() == pytest.approx(triplet, rel=1e-4)
    assert loss.item() == pytest.approx(focal + 0.01 * center + 0.1 * triplet, rel=1e-4)
    # through the network: the bottleneck's frozen bias gets no gradient, its weight does
    f_i, f_t = model.embed(torch.rand(5, 1, 96, 101))
    model.loss(LABELS, IDS, f_i, f_t)[0].backward()
    assert model.bottleneck.bias.grad is None and model.bottleneck.weight.grad is not None


@pytest.mark.parametrize("name", ["cqtnet", "bytecover2x", "bytecover3x", "coverhunterc"])
def test_classifier_models_reject_ids_beyond_maxcliques(name):
    model = small(MODULES[name])
    z = torch.randn(4, 2, 16)
    with pytest.raises(ValueError, match="model.maxcliques"):
        model.loss(torch.tensor([0, 0, 10, 10]), torch.arange(4), z, torch.randn(4, 2, 16))


@pytest.mark.parametrize("name", ["clews", *MODULES])
def test_every_model_declares_the_interface(name):
    """What callers read of a model is declared by each one, checked when it is built; a model
    that leaves something out is a clear TypeError, not a crash deep in an evaluation."""
    from lib.model_base import SEGMENT_METRICS, SegmentModel, build_model
    from tests.models.test_clews import tiny_conf as clews_conf

    conf = clews_conf() if name == "clews" else tiny_conf(name)
    model = build_model(conf, sr=SR)
    assert isinstance(model, SegmentModel)
    assert model.embedding_dim == model(torch.randn(1, 21 * SR)).shape[-1]
    assert model.segment_metric in SEGMENT_METRICS
    assert (model.maxcliques is None) == (name in ("clews", "dvinetp"))

    class Incomplete(SegmentModel):
        def embed(self, h):
            return h, None

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(conf, sr=SR)  # no loss

    class Widthless(type(model)):
        def __init__(self, conf, sr):
            super().__init__(conf, sr)
            del self.embedding_dim

    from lib import model_base

    with pytest.raises(TypeError, match="sets no integer embedding_dim"):
        model_base.check_interface(Widthless(conf, SR))
