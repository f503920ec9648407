"""app.py's launch decisions: Colab, Space, local, and no network for the share link."""

import importlib
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
app = importlib.import_module("app")


@pytest.fixture
def env(monkeypatch):
    for key in ("SPACE_ID", "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(app, "share_reachable", lambda timeout=3.0: True)  # never touch the network in tests
    return monkeypatch


def test_local_default_is_no_share_unless_asked(env):
    assert app.resolve_share(None) == (False, None)
    assert app.resolve_share(True) == (True, None)


def test_colab_shares_by_default_and_can_opt_out(env):
    env.setenv("COLAB_RELEASE_TAG", "release-colab-x")
    assert app.resolve_share(None) == (True, None)
    assert app.resolve_share(False) == (False, None)


def test_space_never_shares(env):
    env.setenv("SPACE_ID", "someone/lora-studio")
    assert app.resolve_share(True) == (False, None)


def test_no_network_is_one_clear_line_and_local_serving(env):
    env.setattr(app, "share_reachable", lambda timeout=3.0: False)
    share, note = app.resolve_share(True)
    assert share is False and "serving locally" in note and "\n" not in note


def test_readme_front_matter_is_a_space_config():
    import yaml

    text = (ROOT / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert {"sdk_version", "title", "emoji", "short_description", "suggested_hardware"} <= set(front)
    import gradio

    assert front["sdk_version"] == gradio.__version__
