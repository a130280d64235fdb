import math

import pytest
import torch
from omegaconf import OmegaConf

from lib import tensor_ops
from models.clews import Model

SR = 16000


def tiny_conf(**loss):
    conf = OmegaConf.load("config/shs-clews.yaml").model
    conf.frontend.channels = [8, 16]
    conf.backbone.blocks = [1, 1, 1, 1]
    conf.backbone.channels = [16, 32, 64, 64]
    conf.zdim = 24
    conf.loss = OmegaConf.merge(conf.loss, loss)
    return conf


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Model(tiny_conf(), sr=SR).eval()


# --------------------------------------------------------------------------------------------------
# architecture of the released models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, zdim, nparams",
    [("config/shs-clews.yaml", 2048, 198_890_515), ("config/dvi-clews.yaml", 1024, 196_793_363)],
)
def test_full_size_parameter_counts_and_state_dict_names(config, zdim, nparams):
    conf = OmegaConf.load(config)
    assert conf.model.zdim == zdim
    model = Model(conf.model, sr=conf.data.samplerate)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == nparams
    assert all(p.requires_grad for p in model.parameters())
    assert count(model.frontend) == 1_184_514
    assert count(model.backbone) == 193_507_600
    assert count(model.pool) == 1
    assert count(model.proj) == 2048 * zdim + 2 * 2048
    sd = model.state_dict()
    assert len(sd) == 277
    shapes = {
        "cqt.0.cqt_kernels_real": (84, 1, 16384),
        "cqt.0.cqt_kernels_imag": (84, 1, 16384),
        "cqt.0.lenghts": (84,),
        "frontend.0.gain": (1,),
        "frontend.0.bias": (1,),
        "frontend.1.weight": (128, 1, 12, 3),
        "frontend.2.running_var": (128,),
        "frontend.4.weight": (256, 128, 12, 3),
        "backbone.0.gain": (1,),
        "backbone.0.convs.0.bn.weight": (128,),
        "backbone.0.convs.0.inst.weight": (128,),
        "backbone.0.convs.2.conv.weight": (128, 256, 3, 3),
        "backbone.0.convs.3.running_mean": (128,),
        "backbone.0.convs.5.conv.weight": (256, 128, 3, 3),
        "backbone.3.skip.0.weight": (256,),
        "backbone.3.skip.2.conv.weight": (512, 256, 3, 3),
        "backbone.15.convs.5.conv.weight": (2048, 1024, 3, 3),
        "pool.p": (1, 1, 1),
        "proj.0.running_mean": (2048,),
        "proj.1.weight": (zdim, 2048),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # only the first block of stages 2-4 has a convolutional skip path
    assert sorted(k for k in sd if k.endswith("skip.2.conv.weight")) == [
        f"backbone.{i}.skip.2.conv.weight" for i in (13, 3, 7)
    ]


def test_full_size_shapes_per_shingle():
    conf = OmegaConf.load("config/dvi-clews.yaml")
    model = Model(conf.model).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = tuple(output.shape)

        return hook

    model.frontend.register_forward_hook(record("frontend"))
    model.backbone.register_forward_hook(record("backbone"))
    x = torch.randn(1, 150 * SR) * 0.1
    cqt = model.prepare(x)
    assert cqt.shape == (1, 8, 84, 200)  # 150 s -> 8 shingles of 20 s (the last repeat-padded)
    assert model.prepare(x, shingle_hop=10).shape == (1, 14, 84, 200)
    with torch.no_grad():
        z, extra = model.embed(cqt[:, :1])
    assert extra is None and z.shape == (1, 1, 1024)
    assert seen["frontend"] == (1, 256, 31, 49) and seen["backbone"] == (1, 2048, 8, 13)


# --------------------------------------------------------------------------------------------------
# behaviour (small model)
# --------------------------------------------------------------------------------------------------


def test_forward_shingles(tiny):
    x = torch.randn(2, 30 * SR) * 0.1
    assert tiny(x).shape == (2, 2, 24)
    assert tiny(x, shingle_len=10, shingle_hop=5).shape == (2, 5, 24)
    # a 10 s shingle is repeat-padded to the 20 s minimum length before the CQT
    assert tiny.prepare(x, shingle_len=10, shingle_hop=5).shape == (2, 5, 84, 200)
    assert tiny.get_shingle_params() == (20.0, 20.0)


def test_embeddings_are_deterministic_and_noise_free(tiny):
    torch.manual_seed(1)
    x = torch.randn(2, 25 * SR) * 0.1
    z1, z2 = tiny(x), tiny(x)
    assert torch.equal(z1, z2)
    prep = tiny.frontend[0]
    prep.noise = "always"  # the original's behaviour: U(0, 1e-6) noise also at evaluation
    try:
        z3 = tiny(x)
    finally:
        prep.noise = "train"
    assert not torch.equal(z1, z3)
    assert ((z3 - z1).abs().max() / z1.abs().max()).item() < 1e-5


def _plain_clews_loss(labels, ids, z, conf):
    """Loop-based CLEWS loss (plain form) on python floats."""
    nb, ns, dim = z.shape
    dist = torch.zeros(nb, nb, ns, ns, dtype=torch.float64)
    for a in range(nb):
        for b in range(nb):
            for i in range(ns):
                for j in range(ns):
                    dist[a, b, i, j] = ((z[a, i] - z[b, j]) ** 2).sum() / dim
    pos = tensor_ops.distance_tensor_redux(dist, conf.loss.redux.pos, eps=0)
    neg = tensor_ops.distance_tensor_redux(dist, conf.loss.redux.neg, eps=0)
    dpos = [
        pos[a, b]
        for a in range(nb)
        for b in range(nb)
        if labels[a] == labels[b] and ids[a] != ids[b]
    ]
    dneg = [neg[a, b] for a in range(nb) for b in range(nb) if labels[a] != labels[b]]
    align = sum(dpos) / len(dpos)
    uniform = math.log(
        conf.loss.epsilon + sum(math.exp(-conf.loss.gamma * d) for d in dneg) / len(dneg)
    )
    return float(align), uniform


def test_loss_hand_computed_case():
    # 4 tracks, one 1-d segment each: z = 0, 1 (clique A) and 3, 5 (clique B); nsqeuc = (a - b)^2
    model = Model(tiny_conf(), sr=SR)
    z = torch.tensor([0.0, 1.0, 3.0, 5.0]).view(4, 1, 1)
    labels, ids = torch.tensor([0, 0, 1, 1]), torch.arange(4)
    # positives (0,1),(1,0): 1;  (2,3),(3,2): 4  -> alignment = 2.5
    # negatives: 9, 25, 4, 16 (twice each)  -> uniformity = log(1e-6 + mean(exp(-5 d)))
    uniform = math.log(1e-6 + (math.exp(-45) + math.exp(-125) + math.exp(-20) + math.exp(-80)) / 4)
    loss, logs = model.loss(labels, ids, z, numerically_friendly=False)
    assert logs["l_cent"].item() == pytest.approx(2.5, abs=1e-5)
    assert loss.item() == pytest.approx(2.5 + uniform, abs=1e-5)
    assert logs["v_dneg"].item() == pytest.approx((9 + 25 + 4 + 16) / 4, abs=1e-4)
    friendly, logs_f = model.loss(labels, ids, z)
    # the friendly form is the same loss shifted by log(1 / eps)
    assert friendly.item() == pytest.approx(loss.item() + math.log(1e6), abs=1e-4)
    assert set(logs_f) == {
        "l_main",
        "l_cent",
        "l_cont",
        "v_dpos",
        "v_dneg",
        "v_zmax",
        "v_zmean",
        "v_zstd",
    }
    assert logs_f["v_zmax"].item() == 5.0


@pytest.mark.parametrize("pos, neg", [("bpwr-5", "min"), ("meanmin", "min"), ("mean", "best-2")])
def test_loss_matches_plain_definition_with_segments(pos, neg):
    conf = tiny_conf(redux={"pos": pos, "neg": neg})
    model = Model(conf, sr=SR)
    torch.manual_seed(3)
    z = torch.randn(6, 3, 4, dtype=torch.float64) * 0.3
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ids = torch.tensor([0, 1, 2, 3, 4, 4])  # the last two are the same song: not a positive pair
    align, uniform = _plain_clews_loss(labels, ids, z, conf)
    loss, logs = model.loss(labels, ids, z, numerically_friendly=False)
    assert logs["l_cent"].item() == pytest.approx(align, abs=1e-6)
    assert logs["l_cont"].item() == pytest.approx(uniform, abs=1e-6)
    assert loss.item() == pytest.approx(align + uniform, abs=1e-6)


def test_loss_does_not_modify_labels_and_trains(tiny):
    model = Model(tiny_conf(), sr=SR).train()
    labels = torch.zeros(4, dtype=torch.long)
    x = torch.randn(4, 20 * SR) * 0.1
    z, _ = model.embed(model.prepare(x))
    loss, _ = model.loss(labels, torch.arange(4), z)
    assert labels.tolist() == [0, 0, 0, 0]  # the original relabelled the caller's tensor in place
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with pytest.raises(ValueError, match="at least 4"):
        model.loss(labels[:3], torch.arange(3), z[:3])


def test_distances_with_masks(tiny):
    torch.manual_seed(4)
    q, c = torch.randn(3, 4, 24), torch.randn(5, 6, 24)
    qmask = torch.zeros(3, 4, dtype=torch.bool)
    cmask = torch.zeros(5, 6, dtype=torch.bool)
    qmask[0, 2:] = True
    cmask[1] = True  # a candidate with no valid segment ranks last
    got = tiny.distances(q, c, qmask, cmask, redux_strategy="min")
    assert got.shape == (3, 5)
    for a in range(3):
        for b in range(5):
            qs = q[a][~qmask[a]]
            cs = c[b][~cmask[b]]
            if len(cs) == 0:
                assert got[a, b].item() == pytest.approx(tensor_ops.INF, rel=1e-6)
                continue
            want = ((qs[:, None] - cs[None]) ** 2).mean(-1).min()
            assert got[a, b].item() == pytest.approx(want.item(), rel=1e-4)
    default = tiny.distances(q, c)
    explicit = tiny.distances(q, c, redux_strategy="bpwr-5")
    assert torch.allclose(default, explicit, atol=1e-6)
    half = tiny.distances(q.half(), c.half(), redux_strategy="min")
    assert half.dtype == torch.float32
