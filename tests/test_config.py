import pytest

from lib.config import ConfigError, load_config, parse_overrides

BASE = ["jobname=run", "conf=config/shs-clews.yaml"]


def test_overrides_are_yaml_typed_and_win():
    conf = load_config(
        BASE
        + [
            "training.batchsize=10",
            "training.optim.lr=2e-4",
            "data.maxlen=null",
            "training.optim.sched=None",
            "model.loss.redux.pos=bpwr-3",
        ]
    )
    assert conf.jobname == "run" and conf.conf == "config/shs-clews.yaml"
    assert conf.training.batchsize == 10
    assert isinstance(conf.training.optim.lr, float) and conf.training.optim.lr == 2e-4
    assert conf.data.maxlen is None
    assert conf.training.optim.sched == "None"  # as in the original: only null is None
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


def test_values_cannot_run_code():
    values = parse_overrides(["a=!!python/object/apply:os.system ['echo hi']", "b=${oc.env:HOME}"])
    assert values["a"] == "!!python/object/apply:os.system ['echo hi']"  # safe_load refuses tags
    assert isinstance(values["b"], str)
