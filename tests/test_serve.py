"""``ddpm serve``: the request limits, each tab's functions, and the page through its HTTP API (gradio_client)
against a tiny trained run: a sample streams its denoising and returns an image, bad values are refused without
stopping the server, 20 concurrent requests all come back with their own results."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from ddpm.serve.limits import Limits, RequestError, choice, image_array, integer, is_local, number

SAMPLE = ("latest", True)  # checkpoint, EMA


def sample_args(run: str, *, method: str = "unipc", steps: object = 2, eta: object = 0.0, seed: object = 0,
                n: object = 2, klass: object = "none", guidance: object = 0.0) -> tuple[object, ...]:  # fmt: skip
    return (run, *SAMPLE, method, steps, eta, seed, n, klass, guidance)


# --------------------------------------------------------------------------------------------- limits
def test_checks_refuse_what_a_request_must_not_ask():
    assert integer("n", 4.0, 1, 8) == 4
    for bad in (0, 9, -1, 4.5, float("nan"), "4", True, None, 10**9):
        with pytest.raises(RequestError, match="n must"):
            integer("n", bad, 1, 8)
    assert number("eta", 0.5, 0, 1) == 0.5
    for bad in (float("inf"), -0.1, "x", None):
        with pytest.raises(RequestError, match="eta must"):
            number("eta", bad, 0, 1)
    with pytest.raises(RequestError, match="method must be one of"):
        choice("method", "../../etc/passwd", ["ddpm", "ddim"])
    lim = Limits(max_image_side=64)
    assert image_array("image", np.zeros((64, 32, 3), np.uint8), lim).shape == (64, 32, 3)
    with pytest.raises(RequestError, match="up to 64 a side"):
        image_array("image", np.zeros((65, 8), np.uint8), lim)
    with pytest.raises(RequestError, match="must be an image"):
        image_array("image", np.zeros((4, 4, 2), np.uint8), lim)
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("127.0.0.2")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.4") and not is_local("example.org")


@pytest.fixture(scope="module")
def ctx(serve_run):
    from ddpm.serve import Context, Runs

    c = Context(Runs([serve_run], device="cpu"))
    yield c
    c.close()


def test_handlers_refuse_out_of_range_values_before_any_work(ctx):
    from ddpm.serve.edit_tab import edit_inpaint
    from ddpm.serve.sample_tab import sample_stream

    run = ctx.runs.labels[0]
    cases = {"steps must be between 1 and 100": {"steps": 10**9}, "n must be between 1 and 16": {"n": -1},
             "seed must be": {"seed": -5}, "method must be one of": {"method": "euler"},
             "class: this run is not class-conditional": {"klass": "3"}}  # fmt: skip
    for message, bad in cases.items():
        with pytest.raises(RequestError, match=message):
            next(sample_stream(ctx, *sample_args(run, **bad)))
    with pytest.raises(RequestError, match="run must be one of"):
        next(sample_stream(ctx, *sample_args("/etc")))
    with pytest.raises(RequestError, match="has no checkpoint"):
        next(sample_stream(ctx, run, "../../x", True, "ddpm", 2, 0, 0, 1, "none", 0))
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(RequestError, match="network evaluations"):  # 100 steps × 20 resamplings > 1,000
        edit_inpaint(ctx.__class__(ctx.runs, Limits(max_evals=1000)), run, img, "center", 100, 5, 20, 1, 0)


# --------------------------------------------------------------------------------------------- tabs
def test_sample_stream_shows_the_chain_then_the_result(ctx):
    from ddpm.pipeline import generate
    from ddpm.serve.sample_tab import sample_stream

    run = ctx.runs.labels[0]
    updates = list(sample_stream(ctx, *sample_args(run, method="ddpm", steps=20, n=3, seed=7)))
    assert len(updates) >= 5  # frames while sampling, then the result
    for xt, x0, status, grid, files in updates[:-1]:
        assert grid is None and files is None and status.startswith("evaluation ")
        assert xt.shape == x0.shape and xt.dtype == np.uint8
    _, _, status, grid, files = updates[-1]
    assert status.startswith("done: 3 image(s), ddpm, 20 steps")
    png, npz = files
    assert png.endswith(".png") and grid.shape == (38, 38)  # 3 gray 16×16 images in a 2×2 grid, 2 px padding
    x = np.load(npz)["x"]
    ref = generate(ctx.runs.model(run), 3, method="ddpm", steps=20, seed=7, batch_size=3, threads=None)
    np.testing.assert_array_equal(x, ref.permute(0, 2, 3, 1).numpy())  # the streamed chain is the plain one


def test_edit_inpaint_keeps_known_pixels_sdedit_and_interpolate(ctx):
    from ddpm.serve.edit_tab import edit_inpaint, edit_interpolate, edit_sdedit

    run = ctx.runs.labels[0]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16), dtype=np.uint8)  # the tiny run's images are gray 16×16
    grid, (npz,) = edit_inpaint(ctx, run, img, "left-half", 10, 5, 2, 2, 0)  # keeps the left half
    out = np.load(npz)["x"][..., 0]
    assert out.shape == (2, 16, 16) and grid.ndim == 2
    np.testing.assert_array_equal(out[:, :, :8], np.broadcast_to(img[:, :8], (2, 16, 8)))  # known: exact
    assert not np.array_equal(out[:, :, 8:], np.broadcast_to(img[:, 8:], (2, 16, 8)))
    drawn = np.zeros((32, 32, 4), np.uint8)
    drawn[:, 16:, 3] = 255  # painted over the right half of a 32×32 RGBA upload: the same mask at 16×16
    big = np.repeat(np.repeat(np.stack([img] * 3 + [np.full_like(img, 255)], -1), 2, 0), 2, 1)
    editor = {"background": big, "layers": [drawn], "composite": None}
    out2 = np.load(edit_inpaint(ctx, run, editor, "drawn", 10, 5, 2, 2, 0)[1][0])["x"][..., 0]
    out3 = np.load(edit_inpaint(ctx, run, big, "left-half", 10, 5, 2, 2, 0)[1][0])["x"][..., 0]
    np.testing.assert_array_equal(out2, out3)  # the drawn mask, resized with the image, is the preset's
    with pytest.raises(RequestError, match="draw over the pixels"):
        edit_inpaint(ctx, run, {"background": img, "layers": []}, "drawn", 10, 5, 2, 1, 0)
    same = np.load(edit_sdedit(ctx, run, img, 0.0, "ddpm", 10, 0)[1][0])["x"]
    np.testing.assert_array_equal(same[0, ..., 0], img)  # strength 0 returns the input
    moved = np.load(edit_sdedit(ctx, run, img, 0.8, "ddpm", 10, 0)[1][0])["x"]
    assert not np.array_equal(moved[0, ..., 0], img)
    grid, (npz,) = edit_interpolate(ctx, run, img, img[::-1], 5, 10)
    assert np.load(npz)["x"].shape == (5, 16, 16, 1) and grid.shape[1] == 7 * 18 + 2


def test_dashboard_reads_the_log_and_skips_when_unchanged(ctx, serve_run):
    import gradio as gr

    from ddpm import runlog
    from ddpm.serve.dashboard_tab import curves_figure, dashboard

    run = ctx.runs.labels[0]
    summary, pixels, slider, image, config, seen = dashboard(ctx, run, None, None)
    assert "step 6" in summary and config["data"]["name"] == "blobs"
    assert pixels.ndim == 3 and pixels.dtype == np.uint8 and pixels.shape[1] > pixels.shape[0]
    fig = curves_figure(runlog.read(serve_run))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "learning rate"]  # no FID logged by this run
    lines = {ln.get_label(): ln for ln in fig.axes[0].lines}
    steps, losses = map(list, lines["train"].get_data())
    log = [(r["step"], r["loss"]) for r in runlog.read(serve_run) if "loss" in r]
    assert list(zip(steps, losses, strict=True)) == [(float(s), v) for s, v in log]
    assert "val_loss" in {k for r in runlog.read(serve_run) for k in r} and "validation" in lines
    assert slider["maximum"] == 1 and slider["value"] == 1 and image["value"].ndim == 3  # 2 grids: steps 3, 6
    again = dashboard(ctx, run, 1, seen)
    assert all(isinstance(v, type(gr.skip())) for v in (again[1], again[3], again[4]))


def test_learn_forward_process_under_both_schedules(ctx):
    from ddpm.serve.learn_tab import forward_images, schedule_figure, schedules

    run = ctx.runs.labels[0]
    img = np.full((16, 16), 200, np.uint8)
    x0, lin, cos, info = forward_images(ctx, run, img, 0, 0)
    assert np.abs(lin.astype(int) - 200).max() <= 8 and np.abs(cos.astype(int) - 200).max() <= 8  # t = 0: x₀
    _, lin, cos, info = forward_images(ctx, run, img, 500, 0)
    a_lin, a_cos = (float(s.alphas_cumprod[500]) for s in schedules().values())
    assert f"ᾱ_t = {a_lin:.4f}" in info and f"ᾱ_t = {a_cos:.4f}" in info
    # the cosine schedule keeps more signal at mid t: x_t is closer to x₀ there
    assert np.abs(cos.astype(int) - 200).mean() < np.abs(lin.astype(int) - 200).mean()
    fig = schedule_figure(500)
    assert len(fig.axes) == 2 and fig.axes[1].get_yscale() == "log"


# --------------------------------------------------------------------------------------------- the page
@pytest.fixture(scope="module")
def client(serve_page):
    from gradio_client import Client

    return Client(serve_page[1], verbose=False)


def test_api_sample_streams_and_returns_an_image(client, serve_page):
    from PIL import Image

    run = serve_page[0].runs.labels[0]
    job = client.submit(*sample_args(run, method="ddpm", steps=20, n=4), api_name="/sample")
    xt, x0, status, grid, files = job.result(timeout=60)
    assert status.startswith("done: 4 image(s)")
    assert Image.open(grid).size == (2 * 18 + 2, 2 * 18 + 2)  # 4 images of 16×16 in a 2×2 grid, 2 px padding
    assert [f.rsplit(".", 1)[1] for f in files] == ["png", "npz"]
    assert np.load(files[1])["x"].shape == (4, 16, 16, 1)
    statuses = [o[2] for o in job.outputs()]
    assert sum(s.startswith("evaluation ") for s in statuses) >= 5  # progress updates before the end


def test_api_bad_values_are_errors_and_the_server_keeps_serving(client, serve_page):
    from gradio_client.exceptions import AppError

    run = serve_page[0].runs.labels[0]
    for bad in ({"steps": 10**9}, {"n": -1}, {"method": "nope"}, {"seed": 2**62}):  # the last: the handler's
        with pytest.raises(AppError):
            client.predict(*sample_args(run, **bad), api_name="/sample")
    assert client.predict(*sample_args(run), api_name="/sample")[2].startswith("done: 2 image(s)")


def test_api_20_concurrent_requests_all_complete_with_their_own_results(client, serve_page):
    from ddpm.pipeline import generate

    ctx = serve_page[0]
    run = ctx.runs.labels[0]
    jobs = [client.submit(*sample_args(run, seed=i, n=1 + i % 3), api_name="/sample") for i in range(20)]
    results = [j.result(timeout=120) for j in jobs]
    lm = ctx.runs.model(run)
    for i, (_, _, status, _, files) in enumerate(results):
        assert status.startswith(f"done: {1 + i % 3} image(s)")
        want = generate(lm, 1 + i % 3, method="unipc", steps=2, seed=i, batch_size=1 + i % 3, threads=None)
        np.testing.assert_array_equal(np.load(files[1])["x"], want.permute(0, 2, 3, 1).numpy())


def test_wide_host_warns(serve_run, monkeypatch):
    pytest.importorskip("gradio")
    import socket

    from ddpm.serve import Context, Runs, launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = Context(Runs([serve_run], device="cpu"))
    with pytest.warns(UserWarning, match="reachable from other machines"):
        demo = launch(ctx, "0.0.0.0", port, block=False, quiet=True)
    demo.close()
    ctx.close()


# --------------------------------------------------------------------------------------------- command line
def test_cli_missing_or_corrupt_run_and_missing_gradio_are_one_line(capsys, serve_run, tmp_path, monkeypatch):
    from conftest import run_cli as cli

    code, _, err = cli(capsys, "serve", str(tmp_path / "nope"))
    assert code == 1 and err.count("\n") == 1 and err.startswith("ddpm: error: no such file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"\0" * 10)
    code, _, err = cli(capsys, "serve", str(bad))
    assert code == 1 and err.count("\n") == 1 and err.startswith("ddpm: error:")
    code, _, err = cli(capsys, "serve", str(serve_run), "--port", "70000")
    assert code == 2 and "port number" in err
    monkeypatch.setitem(sys.modules, "gradio", None)  # gradio not installed
    code, _, err = cli(capsys, "serve", str(serve_run))
    assert code == 1 and err == "ddpm: error: ddpm serve needs gradio: pip install 'ddpm[serve]'\n"


def test_runs_follow_new_checkpoints(ctx, serve_run):
    names = ctx.runs.checkpoints(ctx.runs.labels[0])
    assert names[0] == "latest" and names[1:] == sorted(names[1:], reverse=True) and len(names) >= 2
    lm = ctx.runs.model(ctx.runs.labels[0], names[-1], False)
    assert lm.step <= ctx.runs.model(ctx.runs.labels[0]).step
    assert isinstance(lm.model.parameters().__next__(), torch.Tensor)
