"""install_requirements.sh refuses an interpreter the pinned wheels do not support, before it
creates or touches anything."""

import os
import subprocess

from tests.corpus import ROOT


def test_python_older_than_3_11_is_refused_with_a_clear_message(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\n[ "$1" = "-c" ] && exit 1\necho "Python 3.10.12"\n')
    fake.chmod(0o755)
    before = os.listdir(ROOT)
    result = subprocess.run(
        ["bash", str(ROOT / "install_requirements.sh")],
        env=dict(os.environ, PYTHON=str(fake)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Python >= 3.11 is required (Python 3.10.12 found" in result.stderr
    assert os.listdir(ROOT) == before
