"""`AnimatedMesh`: one animated, coloured triangle mesh with constant topology.

Every loader (glTF/GLB, per-frame OBJ/PLY folders, procedural objects) produces this one type; the
renderer, point sampler and voxeliser consume it. World frame is upstream's Blender world (Z up);
after `normalized()` the object sits in [-0.5, 0.5]^3 (upstream §7.4, §8).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["AnimatedMesh", "AssetError", "StaticSequenceError", "sample_texture"]


class AssetError(ValueError):
    """An asset file is missing, corrupt, empty or unusable; the message names the file and why."""


class StaticSequenceError(ValueError):
    """An animation barely moves (or is too short) and is skipped, as upstream writes `static.txt`."""


@dataclass
class AnimatedMesh:
    """One animated, coloured triangle mesh with constant topology (all parts merged).

    Final colour of a textured face = texture(uv) × vertex_colors; untextured faces use vertex_colors.

    Attributes:
        vertices: (T, V, 3) float32 world positions (Z up) per frame.
        faces: (F, 3) int64 vertex indices.
        vertex_colors: (V, 3) float32 in [0, 1], sRGB-encoded like the textures (material base colour
            factor × vertex colour; 1 if none).
        uvs: (V, 2) float32 texture coordinates, glTF convention (origin at the image's top-left), or None.
        textures: list of (H, W, 3|4) uint8 sRGB base-colour images.
        face_texture: (F,) int64 index into `textures`, -1 = untextured face.
        times: (T,) float64 seconds (or frame index) of each frame.
        name: free-form label (animation or folder name).
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray
    uvs: np.ndarray | None
    textures: list[np.ndarray]
    face_texture: np.ndarray
    times: np.ndarray
    name: str = ""

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        self.vertex_colors = np.ascontiguousarray(self.vertex_colors, dtype=np.float32)
        if self.uvs is not None:
            self.uvs = np.ascontiguousarray(self.uvs, dtype=np.float32)
        self.face_texture = np.ascontiguousarray(self.face_texture, dtype=np.int64)
        self.times = np.ascontiguousarray(self.times, dtype=np.float64)
        self.textures = list(self.textures)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError when arrays disagree in shape or index out of range."""
        v, f = self.vertices, self.faces
        if v.ndim != 3 or v.shape[-1] != 3:
            raise ValueError(f"AnimatedMesh {self.name!r}: vertices must be (T, V, 3), got {v.shape}")
        T, V = v.shape[:2]
        if f.ndim != 2 or f.shape[-1] != 3:
            raise ValueError(f"AnimatedMesh {self.name!r}: faces must be (F, 3), got {f.shape}")
        if f.size and (f.min() < 0 or f.max() >= V):
            raise ValueError(f"AnimatedMesh {self.name!r}: face indices must lie in [0, {V}), "
                             f"got [{f.min()}, {f.max()}]")
        if self.vertex_colors.shape != (V, 3):
            raise ValueError(f"AnimatedMesh {self.name!r}: vertex_colors must be ({V}, 3), "
                             f"got {self.vertex_colors.shape}")
        if self.uvs is not None and self.uvs.shape != (V, 2):
            raise ValueError(f"AnimatedMesh {self.name!r}: uvs must be ({V}, 2), got {self.uvs.shape}")
        if self.face_texture.shape != (f.shape[0],):
            raise ValueError(f"AnimatedMesh {self.name!r}: face_texture must be ({f.shape[0]},), "
                             f"got {self.face_texture.shape}")
        ft = self.face_texture
        if ft.size and (ft.max() >= len(self.textures) or ft.min() < -1):
            raise ValueError(f"AnimatedMesh {self.name!r}: face_texture indexes {len(self.textures)} "
                             f"textures, got values in [{ft.min()}, {ft.max()}]")
        if (ft >= 0).any() and self.uvs is None:
            raise ValueError(f"AnimatedMesh {self.name!r}: textured faces need uvs")
        if self.times.shape != (T,):
            raise ValueError(f"AnimatedMesh {self.name!r}: times must be ({T},), got {self.times.shape}")

    # ------------------------------------------------------------------ accessors
    @property
    def num_frames(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[1])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def frame(self, t: int) -> np.ndarray:
        """Vertex positions of frame `t`, (V, 3) float32."""
        return self.vertices[t]

    def bounds(self, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (min (3,), max (3,)) of one frame, or over all frames when `frame` is None.

        Only vertices referenced by faces count (loose vertices would not be rendered).
        """
        used = self._used_vertices()
        pts = self.vertices[:, used] if frame is None else self.vertices[frame][None, used]
        if pts.size == 0:
            raise ValueError(f"AnimatedMesh {self.name!r} has no referenced vertices")
        pts = pts.reshape(-1, 3)
        return pts.min(0), pts.max(0)

    def _used_vertices(self) -> np.ndarray:
        if self.faces.size == 0:
            return np.arange(self.num_vertices)
        return np.unique(self.faces)

    # ------------------------------------------------------------------ transforms
    def replace(self, **changes) -> "AnimatedMesh":
        """A copy with some fields replaced (arrays not named are shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def normalization(self, frame: int | None = 0) -> tuple[float, np.ndarray]:
        """(scale, offset) such that `v * scale + offset` puts frame `frame`'s bbox into [-0.5, 0.5]^3.

        Mirrors Blender's `normalize_scene` (upstream §7.4): scale by 1 / max bbox extent, then centre
        the bbox, both computed once (on the pose at load time) and applied to every frame.
        `frame=None` uses the box over all frames instead (every frame then stays in the cube).
        """
        lo, hi = self.bounds(frame)
        extent = float((hi - lo).max())
        if not np.isfinite(extent) or extent <= 0:
            raise ValueError(f"AnimatedMesh {self.name!r}: bbox of frame {frame} is degenerate (extent {extent})")
        scale = 1.0 / extent
        offset = -(lo + hi) * 0.5 * scale
        return scale, offset.astype(np.float64)

    def normalized(self, frame: int | None = 0) -> "AnimatedMesh":
        """The same sequence with ONE similarity transform putting frame `frame` into [-0.5, 0.5]^3.

        Later frames may leave the cube slightly (as upstream's data do); the transform is never
        recomputed per frame so motion is preserved exactly. `frame=None`: fit all frames.
        """
        scale, offset = self.normalization(frame)
        verts = (self.vertices.astype(np.float64) * scale + offset).astype(np.float32)
        return self.replace(vertices=verts)

    def subsample_frames(self, idx) -> "AnimatedMesh":
        """Keep frames `idx` (any integer index array / slice), in that order."""
        idx = np.arange(self.num_frames)[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"subsample_frames needs a non-empty 1-D index, got shape {idx.shape}")
        if idx.min() < -self.num_frames or idx.max() >= self.num_frames:
            raise ValueError(f"subsample_frames: index out of range for {self.num_frames} frames")
        return self.replace(vertices=self.vertices[idx], times=self.times[idx])

    # ------------------------------------------------------------------ colour
    def color_at(self, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """Surface colour at barycentric points (independent of the frame).

        Args:
            face_idx: (N,) int face index of each point.
            bary: (N, 3) barycentric weights of the face's three vertices.
        Returns:
            (N, 3) float32 sRGB colour in [0, 1] = texture(uv) × vertex colour (texture bilinear,
            repeat-wrapped; untextured faces use the vertex colour alone).
        """
        face_idx = np.asarray(face_idx, dtype=np.int64)
        bary = np.asarray(bary, dtype=np.float32)
        tri = self.faces[face_idx]  # (N, 3)
        col = np.einsum("nk,nkc->nc", bary, self.vertex_colors[tri])
        tex_id = self.face_texture[face_idx]
        for k in np.unique(tex_id[tex_id >= 0]):
            sel = tex_id == k
            uv = np.einsum("nk,nkc->nc", bary[sel], self.uvs[tri[sel]])
            col[sel] *= sample_texture(self.textures[k], uv)[:, :3]
        return np.clip(col, 0.0, 1.0).astype(np.float32)

    def face_colors(self) -> np.ndarray:
        """(F, 3) float32 colour at each face centroid (cheap flat shading / previews)."""
        bary = np.full((self.num_faces, 3), 1.0 / 3.0, dtype=np.float32)
        return self.color_at(np.arange(self.num_faces), bary)


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear, repeat-wrapped lookup of a uint8 image at glTF uvs (origin top-left, v down).

    Args:
        image: (H, W, C) uint8.
        uv: (N, 2) texture coordinates.
    Returns:
        (N, C) float32 in [0, 1].
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    H, W = img.shape[:2]
    uv = np.asarray(uv, dtype=np.float64)
    # texel centres sit at (i + 0.5) / W
    x = uv[:, 0] * W - 0.5
    y = uv[:, 1] * H - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xi0, xi1 = np.mod(x0, W), np.mod(x0 + 1, W)
    yi0, yi1 = np.mod(y0, H), np.mod(y0 + 1, H)
    f = img.astype(np.float32) / 255.0
    top = f[yi0, xi0] * (1 - fx) + f[yi0, xi1] * fx
    bot = f[yi1, xi0] * (1 - fx) + f[yi1, xi1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)
