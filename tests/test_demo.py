"""demo.py: the whole pipeline on a tiny corpus as a real subprocess, and its guards."""

import json
import sys

import pytest

import demo
from tests.corpus import ROOT, run_script

TINY = ["--works=8", "--versions=4", "--seconds=20", "--split=0.5,0.25,0.25", "--epochs=1"]


def test_tiny_demo_runs_every_step_and_reports_both_models(tmp_path):
    out = tmp_path / "demo"
    # one epoch on 16 tracks need not beat the untrained model: --min_gain=-1 keeps the exit
    # status about the pipeline
    result = run_script([sys.executable, "demo.py", f"--out={out}", *TINY, "--min_gain=-1"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("lib.synth", "data_preproc.py", "train.py", "test.py", "inference.py"):
        assert f"$ python {step}" in result.stdout or f"$ python -m {step}" in result.stdout
    assert "match.py index" in result.stdout and "match.py query" in result.stdout
    assert result.stdout.rstrip().endswith(f"python match.py serve --catalogue={out / 'catalogue'}")
    assert "untrained" in result.stdout and "20 s windows MAP" in result.stdout
    summary = json.loads((out / "demo_results.json").read_text())
    for model in ("untrained", "trained"):
        for level in ("track", "20 s windows"):
            assert 0 < summary["results"][model][level]["MAP"]["mean"] <= 1
            assert summary["results"][model][level]["n_queries"] == 8  # 2 test works x 4
    assert summary["ok"] is True
    assert len(list((out / "embeddings").rglob("*.pt"))) == 32
    assert (out / "runs" / "demo-clews" / "checkpoint_epoch0.ckpt").is_file()
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs[:3] == ["1-corpus.log", "2-preproc.log", "3-train.log"] and "7-query.log" in logs
    assert "8-serve.log" in logs and "the web page answers the same 5 tracks" in result.stdout
    clip_work = summary["query"]["work"]
    assert (out / "clips" / f"{clip_work}-unseen-version.wav").is_file()

    # the same command again reuses the corpus, the trained epoch and the embeddings; a gain it
    # cannot reach makes the exit status 1 and says so
    again = run_script([sys.executable, "demo.py", f"--out={out}", *TINY, "--min_gain=2"])
    assert again.returncode == 1, again.stderr[-3000:]
    assert "does not beat the untrained one" in again.stderr
    assert "Corpus already rendered" in again.stdout
    assert "Resumed after epoch 1" in again.stdout
    assert "Done: 0 embedded" in again.stdout and "32 already there" in again.stdout
    rerun = json.loads((out / "demo_results.json").read_text())
    assert rerun["results"] == summary["results"] and rerun["ok"] is False


def args_for(out, *extra):
    return demo.parse_args([f"--out={out}", *TINY, *extra])


def test_refuses_a_folder_that_is_not_a_demo_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(demo.StepError, match="not a demo folder"):
        demo.prepare_out(args_for(tmp_path, "--fresh"))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_other_settings_need_fresh(tmp_path):
    out = tmp_path / "d"
    demo.prepare_out(args_for(out))
    (out / "audio").mkdir()
    with pytest.raises(demo.StepError, match="--fresh"):
        demo.prepare_out(args_for(out, "--seconds=25"))
    assert (out / "audio").is_dir()
    demo.prepare_out(args_for(out, "--seconds=25", "--fresh"))
    assert not (out / "audio").exists()
    assert json.loads((out / demo.MARKER).read_text())["seconds"] == 25


def test_corpus_variation_is_a_setting_of_the_folder(tmp_path):
    out = tmp_path / "d"
    demo.prepare_out(args_for(out))
    with pytest.raises(demo.StepError, match="--fresh"):
        demo.prepare_out(args_for(out, "--variation=arrangement"))
    demo.prepare_out(args_for(out, "--variation=arrangement", "--fresh"))
    assert json.loads((out / demo.MARKER).read_text())["variation"] == "arrangement"
    # a demo folder from before the option holds the cover corpus: it is reused as it is
    marker = {"works": 8, "versions": 4, "seconds": 20.0, "split": "0.5,0.25,0.25", "seed": 0}
    (out / demo.MARKER).write_text(json.dumps(marker))
    demo.prepare_out(args_for(out))
    with pytest.raises(demo.StepError, match="--fresh"):
        demo.prepare_out(args_for(out, "--variation=arrangement"))


def test_a_failing_step_names_its_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(demo.StepError, match=r"'x' failed \(exit status 3\).*x\.log"):
        demo.run_step("x", cmd, str(tmp_path))
    assert "boom" in (tmp_path / "x.log").read_text()


def test_verdict_needs_the_gain_at_both_levels():
    def run(value):
        return {"MAP": {"mean": value, "ci95": 0.1}}

    table = {
        "untrained": {"track": run(0.2), "20 s windows": run(0.2)},
        "trained": {"track": run(0.5), "20 s windows": run(0.25)},
    }
    ok, lines = demo.verdict(table, 0.1)
    assert not ok and "+0.300" in lines[0] and "+0.050" in lines[1]
    assert demo.verdict(table, 0.04)[0]


def test_paths_inside_the_repository_stay_relative(tmp_path):
    assert demo.from_root(str(ROOT / "runs" / "demo")) == "runs/demo"
    assert demo.from_root(str(tmp_path)) == str(tmp_path)
