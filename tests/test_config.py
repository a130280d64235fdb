import pytest

from lib.config import ConfigError, load_config, parse_arguments, parse_overrides

BASE = ["jobname=run", "conf=config/shs-clews.yaml"]


def test_overrides_are_yaml_typed_and_win():
    conf = load_config(
        BASE
        + [
            "training.batchsize=10",
            "training.optim.lr=2e-4",
            "data.maxlen=null",
            "path.cache=None",
            "model.loss.redux.pos=bpwr-3",
        ]
    )
    assert conf.jobname == "run" and conf.conf == "config/shs-clews.yaml"
    assert conf.training.batchsize == 10
    assert isinstance(conf.training.optim.lr, float) and conf.training.optim.lr == 2e-4
    assert conf.data.maxlen is None
    assert conf.path.cache == "None"  # a string key: only null is None
    assert conf.model.loss.redux.pos == "bpwr-3"
    assert conf.model.zdim == 2048  # untouched keys keep the YAML's values


def test_fabric_shortcuts_and_defaults():
    conf = load_config(BASE)
    assert conf.fabric.accelerator == "auto" and conf.fabric.ngpus == 1
    conf = load_config(BASE + ["nnodes=2", "ngpus=4", "fabric.accelerator=cpu"])
    assert (conf.fabric.nnodes, conf.fabric.ngpus, conf.fabric.accelerator) == (2, 4, "cpu")
    assert load_config(BASE + ["fabric.devices=2"]).fabric.ngpus == 2


def test_new_augmentation_blocks_can_be_added():
    conf = load_config(BASE + ["augmentations.polarity.p=0.5"])
    assert conf.augmentations.polarity.p == 0.5


@pytest.mark.parametrize(
    "args, message",
    [
        (
            BASE + ["training.batchsze=3"],
            "unknown config key 'training.batchsze'; did you mean 'training.batchsize'",
        ),
        (BASE + ["modle.zdim=3"], "did you mean 'model.zdim'"),
        (
            BASE + ["completely_unrelated_thing=1"],
            "unknown config key 'completely_unrelated_thing'$",
        ),
        (["jobname=x"], "missing required argument.*conf"),
        (["conf=config/shs-clews.yaml"], "missing required argument.*jobname"),
        (["jobname=x", "conf=config/nope.yaml"], "config/nope.yaml: config file not found"),
        (BASE + ["fabric.accelerator=tpu"], "fabric.accelerator='tpu' is not one of"),
        (BASE + ["batchsize"], "not of the form key=value"),
    ],
)
def test_mistakes_are_one_clear_error(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(args)


def test_bad_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not a valid YAML config"):
        load_config(["jobname=x", f"conf={tmp_path / 'bad.yaml'}"])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(["jobname=x", f"conf={tmp_path / 'list.yaml'}"])


def test_values_cannot_run_code_or_read_the_environment():
    conf = load_config(
        BASE
        + ["jobname=!!python/object/apply:os.system ['echo hi']", "path.audio=${oc.env:HOME}"]
    )
    assert conf.jobname == "!!python/object/apply:os.system ['echo hi']"  # a string key: text
    assert conf.path.audio == "${oc.env:HOME}"  # kept as written, not resolved


def test_override_values_take_the_type_of_their_key():
    conf = load_config(
        [
            "jobname=2024-01-01",  # YAML 1.1 would make it a date
            "conf=config/shs-clews.yaml",
            "fabric.precision=32",
            "training.optim.sched=plateau_10",
            "model.shingling.len=10",
            "augmentations.timestretch.r=[0.5,2]",
        ]
    )
    assert conf.jobname == "2024-01-01"
    assert conf.fabric.precision == "32"
    assert isinstance(conf.model.shingling.len, float) and conf.model.shingling.len == 10.0
    assert list(conf.augmentations.timestretch.r) == [0.5, 2.0]
    assert isinstance(parse_overrides(["a=1"])["a"], str)  # typed later, by the key's schema


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.batchsize=abc", r"^training.batchsize=abc: expected int$"),
        ("training.batchsize=2.5", "training.batchsize=2.5: expected int"),
        ("training.batchsize=true", "expected int"),
        ("model.zdim=[1,2]", "model.zdim=.*: expected int"),
        ("data.maxlen=long", "data.maxlen=long: expected float or null"),
        ("model.loss.redux=min", "model.loss.redux is a section"),
        ("model.zdm=3", "unknown config key 'model.zdm'; did you mean 'model.zdim'"),
        ("augmentations.noise.p=0.5", "missing required config key 'augmentations.noise.snr'"),
        ("model.name=cqtnet", "another model needs its own config file"),
        ("logger=comet", "logger='comet' is not one of tensorboard, csv, wandb"),
    ],
)
def test_wrong_override_values_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(BASE + [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (("training:\n  batchsize: 25", "training:\n  batchsize: many"),
         "x.yaml: training.batchsize: expected int, got 'many'"),
        (("  zdim: 2048", "  zdims: 2048"), "x.yaml: unknown config key 'model.zdims'; did you "
         "mean 'model.zdim'"),
        (("  numepochs: 1000\n", ""), "x.yaml: missing required config key "
         "'training.numepochs' \\(int\\)"),
        (('name: "clews"', 'name: "clewz"'), "x.yaml: model.name='clewz': unknown model; "
         "available: bytecover2x"),
    ],
)
def test_config_files_are_checked_against_the_schema(tmp_path, edit, message):
    text = open("config/shs-clews.yaml").read()
    assert edit[0] in text
    (tmp_path / "x.yaml").write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(ConfigError, match=message):
        load_config(["jobname=x", f"conf={tmp_path / 'x.yaml'}"])


def test_every_shipped_config_fits_the_schema():
    import glob

    from lib.config import load_run_config

    for path in glob.glob("config/*.yaml"):
        conf = load_run_config(path)
        assert isinstance(conf.training.optim.lr, float), path
        assert isinstance(conf.model.shingling.hop, float), path


# the values a new user tried (issue 36): each is one line naming the key, the value and what is
# valid, exit 2, before anything is read or written
WRONG_VALUES = [
    ("training.optim.name=adamx", "training.optim.name='adamx' is not one of adam, adamw, sgd; "
     "did you mean 'adam'?"),
    ("training.optim.sched=foo_3", "training.optim.sched='foo_3' is not a schedule (flat, "),
    ("training.optim.sched=cosin_2", "did you mean cosine_...?"),
    ("training.batchsize=0", "training.batchsize=0 must be >= 1"),
    ("model.zdim=-3", "model.zdim=-3 must be >= 1"),
    ("data.samplerate=-5", "data.samplerate=-5 must be >= 1"),
    ("augmentations.specaugment.p=1.5", "augmentations.specaugment.p=1.5 must be <= 1"),
    ("ssl.views=other", "ssl.views='other' is not one of same-passage, different-time"),
    ("ssl.views=different-time", "ssl.views='different-time' only means something with "
     "ssl.method (now none"),
    ("training.numepochs=-1", "training.numepochs=-1 must be >= 0"),
    ("model.shingling.hop=0", "model.shingling.hop=0.0 must be > 0"),
    ("training.optim.lr=-0.1", "training.optim.lr=-0.1 must be > 0"),
    ("data.audiolen=0", "data.audiolen=0.0 must be > 0"),
    ("data.n_per_class=1", "data.n_per_class=1 must be >= 2"),
    ("model.loss.redux.pos=maximum", "model.loss.redux.pos='maximum' is not a reduction"),
    ("model.backbone.channels=[64,0,64,64]", "channels=[64, 0, 64, 64] must be >= 1"),
]


@pytest.mark.parametrize("override, message", WRONG_VALUES)
def test_wrong_values_of_the_issue_table_are_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(["jobname=run", "conf=config/demo-clews.yaml", override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_wrong_values_stop_train_py_before_anything_is_written(tmp_path):
    """Through the script as a user types it: exit 2, one error line, no run folder."""
    import subprocess
    import sys

    for override, message in WRONG_VALUES[:4] + WRONG_VALUES[9:11]:
        cmd = [sys.executable, "train.py", "jobname=run", "conf=config/demo-clews.yaml"]
        cmd += [f"path.logs={tmp_path / 'logs'}", f"path.cache={tmp_path / 'cache'}", override]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2, (override, run.stderr[-2000:])
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("error: ") and message in lines[-1], lines[-3:]
        assert "Traceback" not in run.stderr
        assert not (tmp_path / "logs").exists() and not (tmp_path / "cache").exists()


# keys that only mean something with (or without) another key
CROSS_KEYS = [
    ("config/demo-clews.yaml", ["ssl.method=byol", "training.freeze=encoder"],
     "training.freeze=encoder only means something without ssl.method (now byol)"),
    ("config/demo-clews.yaml", ["ssl.hidden=64"],
     "ssl.hidden=64 only means something with ssl.method (now none"),
    ("config/small-cqtnet.yaml", ["training.freeze=encoder"],
     "training.freeze=encoder: model.name=cqtnet declares no projection to train alone"),
    ("config/demo-clews.yaml", ["ssl.method=simclr"],
     "ssl.method='simclr' is not one of none, contrastive, byol, barlow, vicreg, dino, clews"),
]


@pytest.mark.parametrize("path, overrides, message", CROSS_KEYS)
def test_keys_that_need_another_key_say_so(path, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(["jobname=run", f"conf={path}", *overrides])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("maxlen=0", "maxlen=0.0 must be > 0"),
        ("limit_num=0", "limit_num=0 must be >= 1"),
        ("max_elements=0", "max_elements=0 must be >= 1"),
        ("noise_segment_seconds=-1", "noise_segment_seconds=-1.0 must be > 0"),
        ("fabric.ngpus=0", "fabric.ngpus=0 must be >= 1"),
        ("fabric.accelerator=tpu", "fabric.accelerator='tpu' is not one of auto, cpu"),
    ],
)
def test_wrong_values_of_test_py_arguments(override, message):
    from lib.schema import TestArgs

    with pytest.raises(ConfigError) as info:
        parse_arguments(TestArgs, ["checkpoint=x.ckpt", override])
    assert message in str(info.value)
