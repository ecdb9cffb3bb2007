"""gvf.video: reading, frame sampling, foreground alpha, crop and centring (upstream §7.5 geometry)."""

import subprocess

import numpy as np
import pytest
from PIL import Image

from gvf.video import (
    CANVAS_SIZE,
    OBJECT_SIZE,
    PASTE_OFFSET,
    VideoError,
    crop_box,
    estimate_background_alpha,
    foreground_alpha,
    natural_key,
    prepare_video,
    read_video,
    sample_indices,
)


def write_mp4(path, frames, fps=10):
    import imageio.v2 as imageio

    w = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, pixelformat="yuv420p", macro_block_size=16)
    for f in frames:
        w.append_data(f)
    w.close()
    return path


def grey_frames(levels, size=32):
    return [np.full((size, size, 3), v, np.uint8) for v in levels]


# ------------------------------------------------------------------------------------------ sampling


def test_sample_indices():
    assert sample_indices(10, 4, start=1, stride=2) == [1, 3, 5, 7]
    assert sample_indices(10, 5, start=1, stride=2) == [1, 3, 5, 7, 9]
    assert sample_indices(100) == list(range(32))  # default: the upstream 32 frames
    assert sample_indices(10, None, start=4, stride=3) == [4, 7]
    with pytest.raises(VideoError, match="has 10 frames but 6 frames from index 1 with stride 2 need 12"):
        sample_indices(10, 6, start=1, stride=2)
    with pytest.raises(VideoError, match="no frame at start index 10"):
        sample_indices(10, None, start=10)
    with pytest.raises(VideoError, match="contains no frames"):
        sample_indices(0)
    with pytest.raises(VideoError, match="stride"):
        sample_indices(10, 2, stride=0)


def test_video_file_sampling(tmp_path):
    levels = [10 * i + 20 for i in range(12)]
    path = write_mp4(tmp_path / "v.mp4", grey_frames(levels))
    clip = read_video(path, num_frames=4, start=2, stride=3)
    assert clip.indices == [2, 5, 8, 11]
    assert clip.frames.shape == (4, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(10.0)
    means = clip.frames.reshape(4, -1).mean(1)
    np.testing.assert_allclose(means, [levels[i] for i in (2, 5, 8, 11)], atol=3)  # lossy codec
    with pytest.raises(VideoError, match="has 12 frames"):
        read_video(path, num_frames=5, start=2, stride=3)


def test_frame_folder_natural_order(tmp_path):
    for k, name in enumerate(["f10.png", "f2.png", "f1.png", "f9.jpg"]):
        value = {"f1.png": 10, "f2.png": 20, "f9.jpg": 90, "f10.png": 100}[name]
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / name, quality=100)
    (tmp_path / "notes.txt").write_text("not a frame")
    clip = read_video(tmp_path)
    assert clip.fps is None and clip.num_available == 4
    np.testing.assert_allclose(clip.frames.reshape(4, -1).mean(1), [10, 20, 90, 100], atol=2)
    assert sorted(["a10", "a2", "a1"], key=natural_key) == ["a1", "a2", "a10"]


@pytest.mark.parametrize("kind", ["missing", "garbage", "empty_file", "empty_folder", "zero_frames", "image"])
def test_bad_videos(tmp_path, kind):
    if kind == "missing":
        path, match = tmp_path / "nope.mp4", "video not found"
    elif kind == "garbage":
        path, match = tmp_path / "bad.mp4", "cannot read video"
        path.write_bytes(b"this is not a video" * 20)
    elif kind == "empty_file":
        path, match = tmp_path / "empty.mp4", "the file is empty"
        path.write_bytes(b"")
    elif kind == "empty_folder":
        path, match = tmp_path / "frames", "contains no frames"
        path.mkdir()
    elif kind == "zero_frames":
        import imageio_ffmpeg

        src = write_mp4(tmp_path / "src.mp4", grey_frames([0, 50]))
        path = tmp_path / "zero.mp4"
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-frames:v", "0", str(path)]
        subprocess.run(cmd, check=True)
        match = "cannot read video|contains no frames"
    else:
        path, match = tmp_path / "one.png", "single image"
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(VideoError, match=match) as info:
        prepare_video(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- foreground


def test_background_estimation():
    rng = np.random.default_rng(0)
    frame = np.full((60, 80, 3), 250, np.uint8)
    frame = np.clip(frame + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8)  # codec-like noise
    frame[20:40, 30:50] = (40, 160, 220)
    alpha = estimate_background_alpha(frame)
    assert alpha.dtype == np.uint8 and alpha.shape == (60, 80)
    assert (alpha[20:40, 30:50] == 255).all()
    outside = np.ones_like(alpha, bool)
    outside[19:41, 29:51] = False
    assert (alpha[outside] == 0).all()


def test_alpha_priority():
    """mask > own alpha > plain background; a single mask image covers the first frame only."""
    rgba = np.zeros((3, 16, 16, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = 255
    rgba[1, :, :, 3] = 0
    rgba[1, 4:8, 4:8, 3] = 200  # frame 1 has its own alpha
    rgba[2, 10:14, 10:14, :3] = 0  # frame 2 is opaque: dark square on white
    mask0 = np.zeros((16, 16), np.uint8)
    mask0[2:5, 2:5] = 255
    alpha = foreground_alpha(rgba, [mask0, None, None])
    np.testing.assert_array_equal(alpha[0], mask0)
    np.testing.assert_array_equal(alpha[1], rgba[1, :, :, 3])
    assert (alpha[2][10:14, 10:14] == 255).all() and alpha[2].sum() == 16 * 255


# ------------------------------------------------------------------------------------- crop + centre


def _object_frame(x0, x1, y0, y1, shape=(96, 128)):
    """RGBA frame, transparent except an opaque red rectangle covering columns x0..x1, rows y0..y1."""
    f = np.zeros(shape + (4,), np.uint8)
    f[y0 : y1 + 1, x0 : x1 + 1] = (220, 20, 20, 255)
    return f


def _extent(mask, axis):
    idx = np.nonzero((mask > 127).any(axis=axis))[0]
    return idx.min(), idx.max()


def test_crop_box_formula():
    # bbox x 40..79 (w = 39), y 30..59 (h = 29): side int(1.2·39) = 46, centre (59.5, 44.5)
    alpha = _object_frame(40, 79, 30, 59)[..., 3]
    assert crop_box(alpha) == (36.5, 21.5, 82.5, 67.5)
    with pytest.raises(VideoError, match="no foreground"):
        crop_box(np.zeros((8, 8), np.uint8))


def test_centring_geometry():
    frames = np.stack([_object_frame(40, 79, 30, 59), _object_frame(50, 89, 30, 59)])  # frame 1 moves +10 px in x
    video = prepare_video(frames)
    assert video.images.shape == (2, CANVAS_SIZE, CANVAS_SIZE, 3) and video.masks.shape == (2, CANVAS_SIZE, CANVAS_SIZE)
    assert video.images.dtype == np.uint8 and video.masks.dtype == np.uint8
    # PIL rounds the box (36.5, 21.5, 82.5, 67.5) half-to-even -> (36, 22, 82, 68): 46 px -> 380 px
    s = OBJECT_SIZE / 46
    left, right = PASTE_OFFSET + (40 - 36) * s, PASTE_OFFSET + (80 - 36) * s
    top, bottom = PASTE_OFFSET + (30 - 22) * s, PASTE_OFFSET + (60 - 22) * s
    x_first, x_last = _extent(video.masks[0], 0)
    y_first, y_last = _extent(video.masks[0], 1)
    assert abs(x_first - left) <= 1.5 and abs(x_last + 1 - right) <= 1.5
    assert abs(y_first - top) <= 1.5 and abs(y_last + 1 - bottom) <= 1.5
    # the same box for every frame: a 10 px move becomes 10·380/46 px in the canvas
    x1_first, _ = _extent(video.masks[1], 0)
    assert abs((x1_first - x_first) - 10 * s) <= 1.5
    # white outside the pasted crop, the object's colour inside, composited on white
    assert (video.images[:, :PASTE_OFFSET] == 255).all() and (video.masks[:, :PASTE_OFFSET] == 0).all()
    centre = video.images[0, int((top + bottom) / 2), int((left + right) / 2)]
    np.testing.assert_allclose(centre, (220, 20, 20), atol=2)
    assert video.indices == [0, 1] and video.box == (36.5, 21.5, 82.5, 67.5)


def test_prepare_video_with_mask_folder(tmp_path):
    frames = [np.full((40, 40, 3), 128, np.uint8) for _ in range(3)]  # grey: no usable background
    (tmp_path / "masks").mkdir()
    for t in range(3):
        m = np.zeros((40, 40), np.uint8)
        m[10:30, 5 + t : 25 + t] = 255
        Image.fromarray(m).save(tmp_path / "masks" / f"m{t}.png")
    video = prepare_video(frames, mask=tmp_path / "masks", stride=1)
    assert video.masks.shape == (3, 512, 512)
    # the masks move right by one source pixel per frame; the box is the first frame's
    starts = [_extent(m, 0)[0] for m in video.masks]
    assert starts[0] < starts[1] < starts[2]
    with pytest.raises(VideoError, match="mask not found"):
        prepare_video(frames, mask=tmp_path / "missing")
