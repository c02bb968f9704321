"""One visitor cannot change another's settings (issue 30, point 5), with two gradio_client sessions: the ComfyUI
models folder, which every session shares, is an administrator's setting (the page may change it only where no one
else can reach it, and only inside the allowed folders), and files written for one session (a panorama padded to
2:1) never replace another's. The endpoints audited are listed in ui/sessions.py's docstring and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from engine.demo.comfy import build_demo_comfy, yaml_path
from tests.conftest import app_client, free_port
from ui import sessions


def _serve(engine, policy: sessions.FolderPolicy):
    from ui import build_app, launch_options

    sessions.set_folder_policy(policy)
    try:
        app = build_app(engine)  # the page keeps the policy it was built with
    finally:
        sessions.set_folder_policy(sessions.FolderPolicy())
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                           **launch_options(engine))
    return app, url


@pytest.fixture(scope="module")
def comfy(models_dir):
    return build_demo_comfy(models_dir)


@pytest.fixture
def engine(models_dir, tmp_path, comfy):
    from engine import Engine

    engine = Engine(demo=True, models_dir=models_dir, outputs_dir=tmp_path / "out")
    engine.comfy.cache_file = tmp_path / "index.json"
    engine.comfy.configure(comfy, yaml_path(models_dir))
    return engine


def _choices(client: Client) -> str:
    status, *updates = client.predict(api_name="/comfy_models_rescan")
    return status + " ".join(str(c) for u in updates if isinstance(u, dict) for c in u.get("choices", []))


def test_a_shared_page_refuses_to_change_the_folder_for_everyone(engine, comfy):
    policy = sessions.policy_for_launch("auto", "0.0.0.0", False, None, [])
    assert not policy.editable and "--host 0.0.0.0" in policy.why_locked
    app, url = _serve(engine, policy)
    try:
        alice, bob = app_client(url), app_client(url)
        before = _choices(bob)
        assert "flux1-dev-tiny" in before
        for folder in ("/etc", str(comfy), ""):  # not even a good folder, nor switching it off
            with pytest.raises(AppError, match="the page cannot change the ComfyUI models folder"):
                alice.predict(folder, "", api_name="/comfy_models_set")
        assert engine.comfy.models_dir == str(comfy)
        assert _choices(bob) == before  # Bob sees exactly what he saw
    finally:
        app.close()


def test_a_local_page_refuses_a_folder_outside_the_allowed_roots(engine, comfy, tmp_path):
    policy = sessions.policy_for_launch("auto", "127.0.0.1", False, None, [])
    assert policy.editable
    app, url = _serve(engine, policy)
    try:
        alice, bob = app_client(url), app_client(url)
        before = _choices(bob)
        with pytest.raises(AppError, match=r"ComfyUI models folder: /etc is outside the folders this app may read"):
            alice.predict("/etc", "", api_name="/comfy_models_set")
        outside = tmp_path / "elsewhere.yaml"  # a yaml inside the roots whose base path points outside them
        outside.write_text("other:\n  base_path: /etc\n  loras: loras\n")
        with pytest.raises(AppError, match="outside the folders this app may read"):
            alice.predict("", str(outside), api_name="/comfy_models_set")
        assert engine.comfy.models_dir == str(comfy) and _choices(bob) == before
        status, *_ = alice.predict(str(comfy), "", api_name="/comfy_models_set")  # inside: the admin may
        assert "files in" in status
    finally:
        app.close()


def test_allowed_folders_flag_and_locked_mode_from_the_command_line(tmp_path):
    import app as app_module

    args = app_module.parse_args(["--folder-settings", "locked", "--allowed-folders", str(tmp_path)])
    policy = sessions.policy_for_launch(args.folder_settings, args.host, args.share, args.auth, args.allowed_folders)
    assert not policy.editable and policy.roots == (str(tmp_path),)
    for flags, why in ((["--share"], "--share"), (["--auth", "a:b"], "--auth")):
        args = app_module.parse_args(flags)
        policy = sessions.policy_for_launch(args.folder_settings, args.host, args.share, args.auth, [])
        assert not policy.editable and why in policy.why_locked


def test_two_sessions_padding_a_panorama_of_the_same_name_keep_their_own(served, tmp_path):
    _, url = served
    alice, bob = app_client(url), app_client(url)
    outs = []
    for client, colour in ((alice, (255, 0, 0)), (bob, (0, 0, 255))):
        folder = tmp_path / str(colour[0])
        folder.mkdir()
        Image.new("RGB", (60, 40), colour).save(folder / "pano.png")
        out = client.predict(handle_file(str(folder / "pano.png")), api_name="/perception_pad")
        outs.append(Path(out["path"] if isinstance(out, dict) else out))
    # each session's copy holds its own colour (Gradio hands back a cached copy; the app's file is what runs)
    assert Image.open(outs[0]).convert("RGB").getpixel((30, 20)) == (255, 0, 0)
    assert Image.open(outs[1]).convert("RGB").getpixel((30, 20)) == (0, 0, 255)
    engine = served[0]
    padded = sorted((Path(engine.outputs_dir) / "inputs").rglob("pano-pad-*.png"))
    assert len(padded) >= 2 and len({p.parent for p in padded}) >= 2
