"""Image I/O: every supported format, bit depth and mode, and clear errors on bad files."""
import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mmaif_pl.data.io import read_image, to_tensor, write_image
from mmaif_pl.errors import ImageReadError

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)
GRAY8 = RGB8[:, :, 0]
RGB16 = RNG.integers(0, 65536, (17, 23, 3), dtype=np.uint16)
GRAY16 = RGB16[:, :, 0]


def _check(img, expected_rgb):
    assert img.dtype == np.float32 and img.shape == expected_rgb.shape
    assert img.min() >= 0 and img.max() <= 1
    np.testing.assert_allclose(img, expected_rgb, atol=1e-6)


@pytest.mark.parametrize("ext", [".png", ".PNG", ".bmp", ".BMP", ".tif", ".TIFF"])
def test_rgb8_and_gray8_lossless_formats(tmp_path, ext):
    rgb_path, gray_path = tmp_path / f"rgb{ext}", tmp_path / f"gray{ext}"
    Image.fromarray(RGB8).save(rgb_path)
    Image.fromarray(GRAY8).save(gray_path)
    _check(read_image(rgb_path), RGB8 / 255.0)
    _check(read_image(gray_path), np.repeat(GRAY8[:, :, None], 3, 2) / 255.0)


@pytest.mark.parametrize("ext", [".jpg", ".JPEG"])
def test_jpeg_is_read_close_to_what_was_written(tmp_path, ext):
    smooth = cv2.GaussianBlur(RGB8, (0, 0), 3)
    Image.fromarray(smooth).save(tmp_path / f"x{ext}", quality=98)
    img = read_image(tmp_path / f"x{ext}")
    assert img.shape == smooth.shape and np.abs(img - smooth / 255.0).mean() < 0.01


def test_sixteen_bit_png_and_tiff(tmp_path):
    cv2.imwrite(str(tmp_path / "rgb16.png"), cv2.cvtColor(RGB16, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "gray16.png"), GRAY16)
    tifffile.imwrite(tmp_path / "rgb16.tif", RGB16)
    tifffile.imwrite(tmp_path / "gray16.tiff", GRAY16)
    _check(read_image(tmp_path / "rgb16.png"), RGB16 / 65535.0)
    _check(read_image(tmp_path / "rgb16.tif"), RGB16 / 65535.0)
    gray = np.repeat(GRAY16[:, :, None], 3, 2) / 65535.0
    _check(read_image(tmp_path / "gray16.png"), gray)
    _check(read_image(tmp_path / "gray16.tiff"), gray)


def test_rgba_drops_alpha_and_palette_expands(tmp_path):
    rgba = np.dstack([RGB8, np.full(GRAY8.shape, 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    _check(read_image(tmp_path / "rgba.png"), RGB8 / 255.0)
    pal = Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png")
    expected = np.asarray(pal.convert("RGB")) / 255.0
    _check(read_image(tmp_path / "pal.png"), expected)
    pal.save(tmp_path / "pal.bmp")
    _check(read_image(tmp_path / "pal.bmp"), expected)


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_bad_files_raise_one_clear_error_naming_the_path(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(path)


def test_truncated_png_is_an_error(tmp_path):
    good = tmp_path / "good.png"
    write_image(good, RGB8 / 255.0)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_write_is_lossless_atomic_and_accepts_tensors(tmp_path):
    img = RGB8 / 255.0
    write_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(np.rint(read_image(tmp_path / "a.png") * 255), RGB8)
    write_image(tmp_path / "t.png", to_tensor(img)[None])
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), read_image(tmp_path / "a.png"))
    write_image(tmp_path / "b16.png", RGB16 / 65535.0, bits=16)
    np.testing.assert_allclose(read_image(tmp_path / "b16.png"), RGB16 / 65535.0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b16.png", "t.png"]  # no temp leftovers
    assert torch.equal(to_tensor(img), torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_publish_with_the_modes_of_a_plain_write(tmp_path, monkeypatch, umask):
    """tempfile makes private files (0600) and folders (0700); what the atomic writes publish gets the modes a
    plain open() or mkdir() gives under the process's umask (before, every image, config, metrics file and the
    embedded data folder were readable by their owner only). A library that writes private files (safetensors)
    inside a published folder is brought in line too."""
    import stat

    from safetensors.torch import save_file

    import mmaif_pl.atomic as atomic

    monkeypatch.setattr(atomic, "UMASK", umask)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    atomic.write_bytes_atomic(tmp_path / "a.bin", b"x")

    def write(folder):
        (folder / "sub").mkdir()
        save_file({"w": torch.zeros(2)}, folder / "sub" / "w.safetensors")

    assert atomic.write_dir_atomic(tmp_path / "folder", write)
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "folder" / "sub" / "w.safetensors") == 0o666 & ~umask
    assert mode(tmp_path / "folder") == mode(tmp_path / "folder" / "sub") == 0o777 & ~umask


def test_write_dir_atomic_replaces_keeps_or_leaves_the_old_folder(tmp_path):
    from mmaif_pl.atomic import write_dir_atomic

    def files(*names):
        return lambda folder: [(folder / n).write_text(n) for n in names]

    target = tmp_path / "out"
    assert write_dir_atomic(target, files("one")) is True
    assert write_dir_atomic(target, files("two"), replace=False) is False  # kept: the first one published wins
    assert sorted(p.name for p in target.iterdir()) == ["one"]
    assert write_dir_atomic(target, files("three")) is True  # replaced whole: nothing of the old one left
    assert sorted(p.name for p in target.iterdir()) == ["three"]

    def fails(folder):
        (folder / "half").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_dir_atomic(target, fails)
    assert sorted(p.name for p in target.iterdir()) == ["three"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or trash folder left
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        write_dir_atomic(tmp_path / "file", files("x"))
    assert (tmp_path / "file").read_text() == "not a folder"
