import pytest
from omegaconf import OmegaConf

CONFIGS = [
    "config/shs-clews.yaml",
    "config/dvi-clews.yaml",
    "config/dvi2-clews.yaml",
    "config/dvi2fm_light-clews.yaml",
]


@pytest.mark.parametrize("path", CONFIGS)
def test_original_values(path):
    conf = OmegaConf.load(path)
    # "2e-4"-style numbers must be floats (plain YAML 1.1 would read them as strings)
    for value, want in [
        (conf.training.optim.lr, 2e-4),
        (conf.training.optim.min_lr, 1e-6),
        (conf.model.loss.epsilon, 1e-6),
    ]:
        assert isinstance(value, float) and value == want
    assert conf.seed == 43 and conf.fabric.precision == "32"
    assert (
        conf.data.samplerate == 16000 and conf.data.audiolen == 150 and conf.data.n_per_class == 4
    )
    assert conf.data.pad_mode == "repeat" and conf.data.p_samesong == 0 and conf.data.maxlen is None
    assert conf.training.batchsize == 25 and conf.training.optim.sched == "plateau_10"
    model = conf.model
    assert model.name == "clews" and (model.shingling.len, model.shingling.hop) == (20, 20)
    assert (model.cqt.hoplen, model.cqt.noctaves, model.cqt.nbinsoct, model.cqt.pool) == (
        0.02,
        7,
        12,
        5,
    )
    assert list(model.backbone.blocks) == [3, 4, 6, 3]
    assert list(model.backbone.channels) == [256, 512, 1024, 2048]
    assert list(model.backbone.down) == [1, 2, 2, 1]
    assert (model.loss.redux.pos, model.loss.redux.neg, model.loss.gamma) == ("bpwr-5", "min", 5)
    assert set(conf.augmentations) == {"specaugment", "timestretch", "pitchtranspose"}


def test_dataset_specific_values():
    shs, dvi = (OmegaConf.load(p) for p in CONFIGS[:2])
    assert (shs.model.zdim, dvi.model.zdim) == (2048, 1024)
    assert shs.path.meta == "cache/metadata-shs.pt" and dvi.path.meta == "cache/metadata-dvi.pt"
    assert [shs.augmentations[k].p for k in ("specaugment", "timestretch", "pitchtranspose")] == [
        0.4,
        0.3,
        0.5,
    ]
    assert [dvi.augmentations[k].p for k in ("specaugment", "timestretch", "pitchtranspose")] == [
        0.1,
        0.1,
        0.1,
    ]
    assert (shs.training.monitor.quantity, shs.training.monitor.mode) == ("m_MAP", "max")
    assert (dvi.training.monitor.quantity, dvi.training.monitor.mode) == ("m_COMP", "min")


def test_fork_configs_differ_from_dvi_only_in_paths_and_workers():
    from omegaconf import OmegaConf

    for name in ("dvi2", "dvi2fm_light"):
        dvi = OmegaConf.to_container(OmegaConf.load("config/dvi-clews.yaml"))
        fork = OmegaConf.to_container(OmegaConf.load(f"config/{name}-clews.yaml"))
        assert fork["path"]["meta"] == f"cache/metadata-{name}.pt"
        assert fork["data"]["nworkers"] == 8
        for conf in (fork, dvi):
            conf["path"].pop("meta"), conf["path"].pop("audio"), conf["data"].pop("nworkers")
        assert fork == dvi


@pytest.mark.parametrize("subset", ["divers", "divers_small", "yvi"])
@pytest.mark.parametrize(
    "model", ["clews", "dvinetp", "cqtnet", "bytecover2x", "bytecover3x", "coverhunterc"]
)
def test_divers_configs_are_the_dvi2_ones_with_their_metadata_and_audio(subset, model):
    dvi2 = OmegaConf.to_container(OmegaConf.load(f"config/dvi2-{model}.yaml"))
    divers = OmegaConf.to_container(OmegaConf.load(f"config/{subset}-{model}.yaml"))
    assert divers["path"].pop("meta") == f"cache/metadata-{subset}.pt"
    assert divers["path"].pop("audio") == "data/divers/audio/"
    dvi2["path"].pop("meta"), dvi2["path"].pop("audio")
    assert divers == dvi2


# the small-collection configs of every model, in benchmarks/bench_paper.py's order
SMALL_CONFIGS = [
    f"config/small-{name}.yaml"
    for name in ("clews", "dvinetp", "cqtnet", "bytecover2x", "bytecover3x", "coverhunterc", "move")
]


@pytest.mark.parametrize(
    "path",
    [
        "config/demo-clews.yaml",
        "config/demo-dvinetp.yaml",
        "config/demo-move.yaml",
        *SMALL_CONFIGS,
    ],
)
def test_cpu_configs_take_a_training_step_on_their_excerpt_length(path):
    """The CQT and network settings fit together: a batch of ``data.audiolen`` seconds goes
    through the model and its loss (too few frames for a kernel fails here, not in train.py),
    and one optimiser step moves the weights."""
    import torch

    from lib.config import load_run_config
    from lib.extract import window_embeddings
    from lib.model_base import build_model

    conf = load_run_config(path)
    torch.manual_seed(0)
    model = build_model(conf.model, sr=conf.data.samplerate)
    per_class = conf.data.n_per_class
    x = 0.1 * torch.randn(2 * per_class, int(conf.data.audiolen * conf.data.samplerate))
    labels = torch.arange(2).repeat_interleave(per_class)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    optim = torch.optim.Adam(model.parameters(), lr=conf.training.optim.lr)
    z, extra = model.embed(model.prepare(x))
    loss, _ = model.loss(labels, torch.arange(len(x)), z, extra)
    loss.backward()
    optim.step()
    assert torch.isfinite(loss)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # benchmarks/bench_paper.py queries with windows of 10 s: the model embeds one
    z = window_embeddings(model.eval(), x[0], 10, 5, "cpu")  # 20 s: 3 windows
    assert z.shape[0] == 3 and torch.isfinite(z).all()
