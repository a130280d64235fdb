"""CQTNet and DVINet+: parameter counts of the original configs (spec 9.9), shapes, losses by
hand, retrieval distances through the engine, and the common interface."""

import pytest
import torch
from omegaconf import OmegaConf

from lib import losses as L
from lib import retrieval as R
from lib import tensor_ops as T
from models import cqtnet, dvinetp

SR = 16000


@pytest.mark.parametrize("dataset", ["shs", "dvi", "dvi2", "dvi2fm_light"])
@pytest.mark.parametrize(
    "name, module, nparams", [("cqtnet", cqtnet, 35_180_428), ("dvinetp", dvinetp, 11_474_528)]
)
def test_original_configs_build_the_published_sizes(dataset, name, module, nparams):
    conf = OmegaConf.load(f"config/{dataset}-{name}.yaml")
    assert conf.model.name == name and conf.training.optim.lr == 3e-4
    model = module.Model(conf.model, sr=SR)
    assert sum(p.numel() for p in model.parameters()) == nparams
    # the swapped cqtnet blocks of the original (spec 2.4) are kept
    swapped = (dataset == "shs") == (name == "cqtnet")
    quantity = "m_COMP" if swapped else "m_MAP"
    assert conf.training.monitor.quantity == quantity
    assert conf.augmentations.specaugment.p == (0.1 if swapped else 0.4)


def small(module, **extra):
    conf = OmegaConf.load("config/demo-dvinetp.yaml").model
    conf.name = module.__name__.split(".")[-1]
    conf = OmegaConf.merge(conf, {"zdim": 16, "maxcliques": 10}, extra)
    torch.manual_seed(0)
    return module.Model(conf, sr=SR)


@pytest.mark.parametrize("module", [cqtnet, dvinetp])
def test_shapes_and_common_interface(module):
    model = small(module).eval()
    audio = torch.randn(2, 50 * SR)
    with torch.inference_mode():
        h = model.prepare(audio)  # 20 s shingles every 20 s: 3 (the last zero-padded)
        assert h.shape == (2, 3, 84, 250)
        z = model(audio, shingle_len=20, shingle_hop=10)
    assert z.shape == (2, 4, 16)
    if module is dvinetp:
        assert torch.allclose(z.norm(dim=-1), torch.ones(2, 4), atol=1e-5)
    # distances: cosine of segments reduced with the model's default (min), equal to the engine
    q = R.Embeddings(torch.tensor([0, 1]), torch.tensor([0, 1]), z.half(), None)
    want = model.distances(z.half(), z.half())
    got = R.block_distances(q, q, model.default_redux, metric=model.segment_metric)
    assert torch.allclose(got, want, atol=1e-5)
    flat = z.reshape(-1, 16).float()
    dist = T.pairwise_distance_matrix(flat, flat, mode="cos").view(2, 4, 2, 4)
    assert torch.allclose(want[0, 1], dist[0, :, 1, :].min(), atol=1e-6)


def test_cqtnet_loss_with_several_segments_and_class_ids():
    model = small(cqtnet)
    z = torch.randn(4, 3, 16)  # the original crashed for S > 1
    labels = torch.tensor([0, 0, 1, 1])
    loss, logs = model.loss(labels, torch.arange(4), z)
    logits = model.classifier(z.reshape(12, 16))
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
    with pytest.raises(ValueError, match="model.mining.negative"):
        small(dvinetp, mining={"negative": "medium"})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests.corpus import folder_corpus

    return folder_corpus(
        tmp_path_factory.mktemp("baselines"), 6, 3, 22, seed=5, split="0.5,0.25,0.25"
    )


@pytest.mark.parametrize("name", ["cqtnet", "dvinetp"])
def test_trains_an_epoch_on_cpu_and_evaluates_with_test_py(corpus, tmp_path, name):
    import json
    import sys

    from tests.corpus import run_script

    conf = OmegaConf.load("config/demo-dvinetp.yaml")
    conf.model.name = name
    if name == "cqtnet":
        conf.model.maxcliques = 10
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
    assert run["redux"] == "min" and run["n_queries"] == 6 and 0 < run["MAP"]["mean"] <= 1


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
