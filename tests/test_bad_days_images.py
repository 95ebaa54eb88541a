"""Bad days for images (issue 12, items 3 and 10): wide-range images (16-bit, 32-bit ``I``,
float ``F``) keep their contrast instead of turning white, and image URLs have a timeout
and a size limit."""
from __future__ import annotations

import http.server
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from llava.mm_utils import load_image, process_images


# ---------------------------------------------------------------- item 3: wide-range images
def _noise(dtype, lo, hi, shape=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    return (lo + rng.random(shape) * (hi - lo)).astype(dtype)


def _check_scaled(rgb: Image.Image, data: np.ndarray):
    assert rgb.mode == "RGB" and rgb.size == (data.shape[1], data.shape[0])
    out = np.asarray(rgb).astype(np.float64)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # grey
    gray = out[..., 0]
    assert gray.min() == 0 and gray.max() == 255  # the data's real range spans 0..255
    expected = (data - data.min()) / (data.max() - data.min()) * 255
    assert np.abs(gray - expected).max() <= 0.5 + 1e-9  # a linear map, rounded
    assert np.corrcoef(gray.ravel(), data.astype(np.float64).ravel())[0, 1] > 0.9999
    assert 100 < gray.mean() < 155 and gray.std() > 50  # noise, not a blank image


@pytest.mark.parametrize("kind", ["png16", "I", "F"])
def test_wide_range_images_keep_their_statistics(tmp_path, kind):
    if kind == "png16":
        data = _noise(np.uint16, 0, 65535)
        path = tmp_path / "noise16.png"
        Image.fromarray(data).save(path)
        assert Image.open(path).mode.startswith("I;16")
        # what used to happen: convert("RGB") clips at 255, the noise becomes nearly white
        assert np.asarray(Image.open(path).convert("RGB")).mean() > 250
        _check_scaled(load_image(str(path)), data)
    elif kind == "I":
        data = _noise(np.int32, -100000, 3000000)
        path = tmp_path / "noise32.tif"
        Image.fromarray(data, mode="I").save(path)
        assert Image.open(path).mode == "I"
        _check_scaled(load_image(str(path)), data)
    else:
        data = _noise(np.float32, -3.5, 7.25)
        img = Image.fromarray(data, mode="F")
        path = tmp_path / "noise_f.tif"
        img.save(path)
        assert Image.open(path).mode == "F"
        _check_scaled(load_image(str(path)), data)
        from llava.mm_utils import to_rgb

        _check_scaled(to_rgb(img), data)


def test_constant_wide_image_is_black_and_non_finite_values_do_not_break_it():
    from llava.mm_utils import to_rgb

    const = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    assert np.asarray(to_rgb(const)).max() == 0  # documented: a constant image maps to 0
    data = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    data[0, 0], data[0, 1], data[0, 2] = np.nan, np.inf, -np.inf
    out = np.asarray(to_rgb(Image.fromarray(data, mode="F")))[..., 0]
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[0, 2] == 0 and out.max() == 255


class _Processor:
    """Records what the image processor is given (the last step before pixels)."""
    image_mean = (0.5, 0.5, 0.5)

    def __init__(self):
        self.seen = []

    def preprocess(self, img, return_tensors="pt"):
        import torch

        self.seen.append(img)
        return {"pixel_values": torch.zeros(1, 3, 4, 4)}

    def __call__(self, images, return_tensors="pt"):
        import torch

        self.seen.extend(images)
        return {"pixel_values": torch.zeros(len(images), 3, 4, 4)}


@pytest.mark.parametrize("aspect", ["pad", "square"])
def test_process_images_scales_in_memory_wide_images(aspect):
    """lmms-eval hands PIL images straight to process_images: those are scaled too."""
    data = _noise(np.uint16, 1000, 60000, shape=(30, 50))
    processor = _Processor()
    process_images([Image.fromarray(data)], processor, SimpleNamespace(image_aspect_ratio=aspect))
    (seen,) = processor.seen
    assert seen.mode == "RGB"
    gray = np.asarray(seen)[..., 0].astype(np.float64)
    if aspect == "pad":  # padded to 50 x 50 with the mean colour (127) above and below
        assert seen.size == (50, 50)
        gray = gray[10:40]
    assert gray.min() == 0 and gray.max() == 255 and gray.std() > 50


# ---------------------------------------------------------------- item 10: URLs
@pytest.fixture()
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted = []
    stop = threading.Event()

    def serve():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                accepted.append(conn)  # kept open, never written to
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/image.png"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


def test_url_that_never_answers_times_out_naming_the_url(silent_server):
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        load_image(silent_server, timeout=0.5)
    took = time.monotonic() - start
    assert took < 5, took
    assert silent_server in str(err.value) and "0.5 s" in str(err.value)


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    send_length = True
    trickle = False

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.send_length:
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.trickle:
            for i in range(len(self.body)):
                self.wfile.write(self.body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.05)
        else:
            try:
                self.wfile.write(self.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_server():
    servers = []

    def start(body: bytes, send_length: bool = True, trickle: bool = False) -> str:
        handler = type("H", (_Handler,), {"body": body, "send_length": send_length, "trickle": trickle})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/img.png"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _png_bytes(size=(20, 10)) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_url_image_within_the_limits_loads(http_server):
    url = http_server(_png_bytes())
    img = load_image(url, timeout=5)
    assert img.mode == "RGB" and img.size == (20, 10) and img.getpixel((3, 3)) == (10, 200, 30)


@pytest.mark.parametrize("send_length", [True, False])
def test_url_that_sends_too_much_is_refused_naming_the_url(http_server, send_length):
    url = http_server(b"\0" * 300_000, send_length=send_length)
    with pytest.raises(ValueError) as err:
        load_image(url, timeout=5, max_bytes=100_000)
    assert url in str(err.value) and "100000 bytes" in str(err.value)


def test_url_that_trickles_is_given_up_on(http_server):
    url = http_server(_png_bytes() * 4, trickle=True)  # one byte per 50 ms: ~ a minute in all
    start = time.monotonic()
    with pytest.raises(ValueError, match="did not send the image within 0.5 s"):
        load_image(url, timeout=0.5)
    assert time.monotonic() - start < 3


def test_bad_url_limits_and_http_errors(http_server):
    with pytest.raises(ValueError, match="timeout=0 must be"):
        load_image("http://127.0.0.1:9/x.png", timeout=0)
    with pytest.raises(ValueError, match="max_bytes=0 must be"):
        load_image("http://127.0.0.1:9/x.png", max_bytes=0)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with pytest.raises(ValueError, match=f"127.0.0.1:{port}/x.png.*could not be fetched"):
        load_image(f"http://127.0.0.1:{port}/x.png", timeout=2)
