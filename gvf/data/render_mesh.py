"""Ground-truth views of animated meshes: a vectorised triangle rasteriser in plain PyTorch.

Upstream renders its training views with Blender Cycles (spec §7.4). We rasterise instead: the same
code runs on CPU and on CUDA without EGL/OpenGL system packages, so the demo data can be generated on
a bare GPU machine. Why and how is documented in docs/data.md ("Mesh renderer").

Algorithm (all cameras of one frame at once, chunked to bound memory):

1. Vertices -> camera space (OpenCV extrinsics) -> pixel coordinates at the supersampled resolution.
2. Every triangle's pixel bounding box is expanded into pixel–triangle pairs (`repeat_interleave`);
   barycentrics of the pixel centre decide coverage (double-sided, no back-face culling).
3. A z-buffer keeps, per pixel, the minimum of ``depth_bits << 32 | face`` (`scatter_reduce` 'amin'):
   nearest surface wins, ties go to the lower face index, so the result is deterministic.
4. Winning pixels get perspective-correct attributes (vertex colour, uv, smooth normal), bilinear
   repeat-wrapped texture lookups, and a fixed Lambert lighting in linear RGB.
5. Supersamples are averaged (premultiplied, in linear RGB); output is sRGB with straight alpha.

Colour convention: `AnimatedMesh.vertex_colors` and textures are both sRGB-encoded (the glTF loader
stores sRGB(baseColorFactor · COLOR_0)); the linear albedo is
``srgb_to_linear(texture(uv)) · srgb_to_linear(vertex colour)``, which equals glTF 2.0's
``texture_linear · factor · COLOR_0`` (what Blender's glTF importer renders). Vertex colours are
interpolated in linear space. Texture alpha is ignored (every face is opaque).

Lighting (`MeshLighting`): ``albedo · (ambient + diffuse · max(0, n·l))`` with a world-fixed
directional light ``l`` coming from above and slightly in front of the object (upstream's only light
is a large area light above the object). Lambert with a world-fixed light is view-independent, which
suits the SH-degree-0 Gaussians that are trained on these images.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .mesh import AnimatedMesh

logger = logging.getLogger(__name__)

__all__ = [
    "MeshLighting",
    "MeshRenderOutput",
    "MeshRenderer",
    "render_mesh",
    "rasterize",
    "srgb_to_linear",
    "linear_to_srgb",
    "to_uint8",
]

_NO_HIT = torch.iinfo(torch.int64).max
_COVER_EPS = 1e-6  # barycentric tolerance so that pixels on shared edges are never dropped
SMOOTH_ANGLE_DEG = 30.0  # Blender's default auto-smooth angle: sharper edges are shaded flat
_MAX_CORNER_PAIRS = 1 << 25


@dataclass(frozen=True)
class MeshLighting:
    """Fixed lighting of ground-truth views: ``albedo · (ambient + diffuse · max(0, n·direction))``.

    Attributes:
        ambient: constant term (every visible surface gets at least this fraction of its albedo).
        diffuse: Lambert term of one directional light.
        direction: world-space direction TOWARD the light (normalised internally); default from above
            (+Z) and a little in front (−Y, where the front camera sits).
    """

    ambient: float = 0.45
    diffuse: float = 0.55
    direction: tuple[float, float, float] = (0.25, -0.45, 0.86)


@dataclass
class MeshRenderOutput:
    """Rendered views.

    Attributes:
        rgba: (C, H, W, 4) float32 in [0, 1]; sRGB colour with straight (non-premultiplied) alpha;
            alpha = pixel coverage (1 on the object, 0 on the background, fractional on edges).
        depth: (C, H, W) float32 camera-space z of the nearest surface over the pixel's subsamples,
            +inf on the background.
        face_id: (C, H, W) int64 face seen at that nearest subsample, -1 on the background.
    """

    rgba: torch.Tensor
    depth: torch.Tensor
    face_id: torch.Tensor


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear RGB (IEC 61966-2-1 piecewise curve)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear RGB in [0, 1] -> sRGB-encoded values (inverse of `srgb_to_linear`)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def to_uint8(rgba: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 numpy array (round to nearest), same shape."""
    return (rgba.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------------- rasteriser
def rasterize(
    screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    *,
    near: float = 1e-3,
    max_pairs: int = 1 << 19,
    return_keys: bool = False,
):
    """Visibility of triangles in C views by brute-force coverage of their pixel bounding boxes.

    Pixel (y, x) covers [x, x+1) × [y, y+1) and is sampled at its centre (x + 0.5, y + 0.5).
    Triangles with a vertex closer than `near` (or behind the camera) are dropped, not clipped:
    upstream's cameras sit 2 units from a unit-cube object, so this never happens for prepared data.

    Args:
        screen: (C, V, 3) per-view vertices: pixel x, pixel y, camera-space depth z.
        faces: (F, 3) int64 vertex indices.
        height, width: image size in pixels.
        near: minimum vertex depth of a drawn triangle.
        max_pairs: pixel–triangle pairs processed per chunk (memory bound, ~40 bytes per pair).
        return_keys: return the raw z-buffer (C, H, W) int64 ``depth_bits << 32 | face`` instead.
    Returns:
        face_id (C, H, W) int64 (-1 = background) and depth (C, H, W) float32 (+inf = background).
    """
    C = screen.shape[0]
    F_ = faces.shape[0]
    device = screen.device
    tri = screen[:, faces].reshape(C * F_, 3, 3).double()  # (C·F, 3 vertices, xyz); setup in float64
    x, y, z = tri.unbind(-1)  # each (C·F, 3)
    e1 = tri[:, 1, :2] - tri[:, 0, :2]
    e2 = tri[:, 2, :2] - tri[:, 0, :2]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]  # twice the signed screen area
    ok = (z > near).all(-1) & torch.isfinite(tri).all(-1).all(-1) & (area.abs() > 1e-12)

    # pixel centres inside the bbox: i + 0.5 in [min, max]
    x0 = torch.ceil(x.min(-1).values - 0.5).clamp(0, width).long()
    x1 = torch.floor(x.max(-1).values - 0.5).clamp(-1, width - 1).long()
    y0 = torch.ceil(y.min(-1).values - 0.5).clamp(0, height).long()
    y1 = torch.floor(y.max(-1).values - 0.5).clamp(-1, height - 1).long()
    bw = (x1 - x0 + 1).clamp_min(0)
    bh = (y1 - y0 + 1).clamp_min(0)
    counts = torch.where(ok, bw * bh, torch.zeros_like(bw))

    # b1, b2 and 1/z are affine in the pixel offset (lx, ly) from the bbox's first pixel centre:
    # coef[:, 3k:3k+3] = (d/dlx, d/dly, value at (0, 0)); small offsets keep float32 exact enough
    area_safe = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
    X0 = tri[:, 0, 0] - (x0.double() + 0.5)
    Y0 = tri[:, 0, 1] - (y0.double() + 0.5)
    b1 = torch.stack([e2[:, 1], -e2[:, 0], -X0 * e2[:, 1] + Y0 * e2[:, 0]], -1) / area_safe[:, None]
    b2 = torch.stack([-e1[:, 1], e1[:, 0], e1[:, 1] * X0 - e1[:, 0] * Y0], -1) / area_safe[:, None]
    inv = 1.0 / torch.where(ok[:, None], z, torch.ones_like(z))
    invz = b1 * (inv[:, 1] - inv[:, 0])[:, None] + b2 * (inv[:, 2] - inv[:, 0])[:, None]
    invz[:, 2] += inv[:, 0]
    coef = torch.cat([b1, b2, invz], -1).float()  # (C·F, 9)
    view = torch.div(torch.arange(C * F_, device=device), F_, rounding_mode="floor")
    base = (view * height + y0) * width + x0  # flat pixel index of each bbox's first pixel

    zbuf = torch.full((C * height * width,), _NO_HIT, dtype=torch.int64, device=device)
    nonzero = torch.nonzero(counts).squeeze(1)
    if nonzero.numel() > 0:
        cnt = counts[nonzero]
        cum_cpu = torch.cumsum(cnt, 0).cpu()
        # chunks of consecutive triangles whose pairs sum to <= max_pairs (at least one triangle each)
        bounds = [0]
        while bounds[-1] < nonzero.numel():
            start = bounds[-1]
            offset = int(cum_cpu[start - 1]) if start > 0 else 0
            end = int(torch.searchsorted(cum_cpu, offset + max_pairs, right=True))
            bounds.append(max(end, start + 1))
        for start, end in zip(bounds[:-1], bounds[1:]):
            ids = nonzero[start:end]
            _raster_chunk(ids, cnt[start:end], coef[ids], bw[ids], base[ids], ids - view[ids] * F_, width, zbuf)
        logger.debug("rasterised %d pixel-triangle pairs in %d chunk(s)", int(cum_cpu[-1]), len(bounds) - 1)

    if return_keys:
        return zbuf.view(C, height, width)
    face_id, depth = _decode_keys(zbuf)
    return face_id.view(C, height, width), depth.view(C, height, width)


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z-buffer keys -> face ids (-1 on background) and depths (+inf on background)."""
    hit = keys != _NO_HIT
    face_id = torch.where(hit, keys & 0xFFFFFFFF, torch.full_like(keys, -1))
    depth = (keys >> 32).to(torch.int32).view(torch.float32)
    return face_id, torch.where(hit, depth, torch.full_like(depth, math.inf))


def _raster_chunk(ids, cnt, coef, bw, base, face, width, zbuf):
    """Coverage + depth test of one chunk of triangles (per-triangle tensors already selected)."""
    device = zbuf.device
    n = int(cnt.sum())
    # index_select: much faster than advanced indexing on CPU
    k = torch.repeat_interleave(torch.arange(ids.numel(), device=device), cnt, output_size=n)  # (P,)
    local = torch.arange(n, device=device) - (torch.cumsum(cnt, 0) - cnt).index_select(0, k)
    w = bw.index_select(0, k)
    ly = torch.div(local, w, rounding_mode="floor")
    lx = local - ly * w
    c = coef.index_select(0, k)  # (P, 9)
    lxf, lyf = lx.float(), ly.float()
    b1 = c[:, 0] * lxf + c[:, 1] * lyf + c[:, 2]
    b2 = c[:, 3] * lxf + c[:, 4] * lyf + c[:, 5]
    inside = (b1 >= -_COVER_EPS) & (b2 >= -_COVER_EPS) & (b1 + b2 <= 1.0 + _COVER_EPS)
    sel = inside.nonzero().squeeze(1)
    if sel.numel() == 0:
        return
    k, lx, ly = k.index_select(0, sel), lx.index_select(0, sel), ly.index_select(0, sel)
    c = c.index_select(0, sel)
    inv_z = c[:, 6] * lx.float() + c[:, 7] * ly.float() + c[:, 8]  # 1/z is affine in screen space
    depth = 1.0 / inv_z.clamp_min(1e-12)
    pix = base.index_select(0, k) + ly * width + lx
    # positive float32 values sort like their bit patterns
    key = (depth.view(torch.int32).to(torch.int64) << 32) | face.index_select(0, k)
    zbuf.scatter_reduce_(0, pix, key, reduce="amin")


# ----------------------------------------------------------------------------------- shading
class MeshRenderer:
    """Renders one `AnimatedMesh` (any of its frames) from many cameras.

    Textures, colours and topology are uploaded to `device` once; `render` is then called per frame.

    Args:
        mesh: the animated mesh (its colours, uvs, textures and faces are used; positions are passed
            to `render`).
        device: torch device for all computation (default CPU).
        lighting: `MeshLighting` (default: the documented fixed lighting); `None` fields not allowed.
        smooth_normals: auto-smooth shading (normals averaged over faces within `SMOOTH_ANGLE_DEG`);
            False = flat face normals.
        max_pairs: pixel–triangle pairs per rasteriser chunk.
        max_subpixels: views are rendered in batches of at most this many supersampled pixels.

    Buffers are kept to a few tens of MB (chunked pairs, batched views): glibc returns larger blocks
    to the OS on free, and re-faulting them in cost as much system time as the rendering itself.
    """

    def __init__(self, mesh: AnimatedMesh, device=None, lighting: MeshLighting | None = None,
                 smooth_normals: bool = True, max_pairs: int = 1 << 19, max_subpixels: int = 1 << 21):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.lighting = lighting or MeshLighting()
        self.smooth_normals = smooth_normals
        self.max_pairs = int(max_pairs)
        self.max_subpixels = int(max_subpixels)
        dev = self.device
        self.faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=dev)  # (F, 3)
        # sRGB-encoded per vertex (see the module docstring); shading happens in linear RGB
        self.vertex_colors = srgb_to_linear(torch.as_tensor(mesh.vertex_colors, dtype=torch.float32, device=dev))
        self.uvs = None if mesh.uvs is None else torch.as_tensor(mesh.uvs, dtype=torch.float32, device=dev)
        self.face_texture = torch.as_tensor(mesh.face_texture, dtype=torch.int64, device=dev)
        # textures decoded to linear RGB once, so that bilinear filtering happens in linear space
        self.textures = [
            srgb_to_linear(torch.as_tensor(np.asarray(t)[..., :3], device=dev).float() / 255.0)
            for t in mesh.textures
        ]
        light = torch.tensor(self.lighting.direction, dtype=torch.float32, device=dev)
        self.light_dir = light / light.norm()
        self.num_vertices = mesh.num_vertices
        self._corner_pairs = self._build_corner_pairs() if smooth_normals else None

    @torch.no_grad()
    def render(self, vertices, extrinsics: torch.Tensor, intrinsics: torch.Tensor, resolution: int,
               ssaa: int = 2) -> MeshRenderOutput:
        """Render the mesh posed at `vertices` from C cameras.

        Args:
            vertices: (V, 3) world positions of one frame (numpy or tensor).
            extrinsics: (C, 4, 4) world->camera, OpenCV axes.
            intrinsics: (C, 3, 3) normalised intrinsics (image coordinates in [0, 1]).
            resolution: output side length H = W in pixels.
            ssaa: supersampling factor per axis (1 = no antialiasing).
        Returns:
            `MeshRenderOutput` with (C, H, W) images.
        """
        dev = self.device
        verts = torch.as_tensor(np.asarray(vertices) if not torch.is_tensor(vertices) else vertices,
                                dtype=torch.float32, device=dev)
        if verts.shape != (self.num_vertices, 3):
            raise ValueError(f"render: vertices must be ({self.num_vertices}, 3), got {tuple(verts.shape)}")
        extrinsics = torch.as_tensor(extrinsics, dtype=torch.float32, device=dev)
        intrinsics = torch.as_tensor(intrinsics, dtype=torch.float32, device=dev)
        if extrinsics.ndim == 2:
            extrinsics, intrinsics = extrinsics[None], intrinsics.reshape(1, 3, 3)
        if extrinsics.shape[1:] != (4, 4) or intrinsics.shape != (extrinsics.shape[0], 3, 3):
            raise ValueError("render: extrinsics must be (C, 4, 4) and intrinsics (C, 3, 3), got "
                             f"{tuple(extrinsics.shape)} and {tuple(intrinsics.shape)}")
        if int(resolution) < 1 or int(ssaa) < 1:
            raise ValueError(f"render: resolution and ssaa must be positive, got {resolution}, {ssaa}")
        S = int(resolution) * int(ssaa)  # supersampled side
        step = max(1, self.max_subpixels // (S * S))
        if extrinsics.shape[0] > step:
            parts = [self._render(verts, extrinsics[i:i + step], intrinsics[i:i + step], int(resolution), int(ssaa))
                     for i in range(0, extrinsics.shape[0], step)]
            return MeshRenderOutput(*(torch.cat(x) for x in zip(*((p.rgba, p.depth, p.face_id) for p in parts))))
        return self._render(verts, extrinsics, intrinsics, int(resolution), int(ssaa))

    def _render(self, verts, extrinsics, intrinsics, resolution: int, ssaa: int) -> MeshRenderOutput:
        """`render` of one batch of views (inputs validated, on the device)."""
        dev = self.device
        C = extrinsics.shape[0]
        S = resolution * ssaa

        cam = verts @ extrinsics[:, :3, :3].transpose(1, 2) + extrinsics[:, None, :3, 3]  # (C, V, 3)
        z = cam[..., 2]
        zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
        px = (intrinsics[:, None, 0, 0] * cam[..., 0] / zs + intrinsics[:, None, 0, 2]) * S
        py = (intrinsics[:, None, 1, 1] * cam[..., 1] / zs + intrinsics[:, None, 1, 2]) * S
        screen = torch.stack([px, py, z], -1)  # (C, V, 3)
        keys = rasterize(screen, self.faces, S, S, max_pairs=self.max_pairs, return_keys=True)  # (C, S, S)

        # box filter of the supersamples, accumulated straight at the output resolution:
        # premultiplied linear colour (background 0) and coverage
        R, s_ = int(resolution), int(ssaa)
        flat = (keys.view(-1) != _NO_HIT).nonzero().squeeze(1)
        acc = torch.zeros(C * R * R, 4, device=dev)
        if flat.numel() > 0:
            xx = flat % S
            yy = torch.div(flat, S, rounding_mode="floor") % S
            view = torch.div(flat, S * S, rounding_mode="floor")
            face = keys.view(-1)[flat] & 0xFFFFFFFF
            color = self._shade(verts, screen, extrinsics, view, yy, xx, face)
            out_y = torch.div(yy, s_, rounding_mode="floor")
            out_pix = (view * R + out_y) * R + torch.div(xx, s_, rounding_mode="floor")
            acc.index_add_(0, out_pix, torch.cat([color, torch.ones_like(color[:, :1])], 1))
        acc = acc.view(C, R, R, 4) / (s_ * s_)
        a = acc[..., 3:]
        rgb = linear_to_srgb(acc[..., :3] / a.clamp_min(1e-8)) * (a > 0)
        # nearest subsample per output pixel (smallest key) gives depth and face id
        nearest = keys[:, ::s_, ::s_]
        for i in range(s_):
            for j in range(s_):
                if i or j:
                    nearest = torch.minimum(nearest, keys[:, i::s_, j::s_])  # strided min: fast for int64
        face_out, depth_out = _decode_keys(nearest)
        rgba = torch.cat([rgb, a], -1).clamp(0, 1)
        return MeshRenderOutput(rgba=rgba, depth=depth_out, face_id=face_out)

    def _shade(self, verts, screen, extrinsics, view, yy, xx, face) -> torch.Tensor:
        """Linear RGB (P, 3) of P covered subsamples (view, row, col) seeing faces `face`.

        Everything constant over a triangle is tabulated per (view, face) or per face first, then
        gathered once per subsample.
        """
        C, F_ = screen.shape[0], self.faces.shape[0]
        tri = screen[:, self.faces]  # (C, F, 3 corners, xyz): pixel x, y, depth
        e1 = tri[..., 1, :2] - tri[..., 0, :2]
        e2 = tri[..., 2, :2] - tri[..., 0, :2]
        area = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
        area = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
        # the camera sees one side of a (planar) triangle everywhere: flip normals toward it
        wv = verts[self.faces]  # (F, 3, 3) world
        geo = F.normalize(torch.linalg.cross(wv[:, 1] - wv[:, 0], wv[:, 2] - wv[:, 0]), dim=-1)  # (F, 3)
        R = extrinsics[:, :3, :3]
        cam_center = -(R.transpose(1, 2) @ extrinsics[:, :3, 3:]).squeeze(-1)  # (C, 3)
        facing = ((cam_center[:, None] - wv[None, :, 0]) * geo[None]).sum(-1)  # (C, F)
        flip = torch.where(facing < 0, -1.0, 1.0)
        table = torch.cat([tri[..., 0, :2], e1, e2, area[..., None], 1.0 / tri[..., 2], flip[..., None]], -1)
        row = table.view(C * F_, -1).index_select(0, view * F_ + face)  # (P, 11)
        x0, y0, e1x, e1y, e2x, e2y, a = row[:, :7].unbind(-1)
        dx = xx.float() + 0.5 - x0
        dy = yy.float() + 0.5 - y0
        b1 = (dx * e2y - dy * e2x) / a
        b2 = (e1x * dy - e1y * dx) / a
        bary = torch.stack([1 - b1 - b2, b1, b2], -1).clamp_min(0)
        # perspective-correct weights: screen barycentrics divided by depth, renormalised
        persp = bary * row[:, 7:10]
        persp = persp / persp.sum(-1, keepdim=True).clamp_min(1e-12)
        pf = persp[..., None]  # (P, 3, 1)

        def interp(per_corner):  # (F, 3, D) -> (P, D)
            return (pf * per_corner.reshape(F_, -1).index_select(0, face).view(-1, 3, per_corner.shape[-1])).sum(1)

        albedo = interp(self.vertex_colors[self.faces])  # (P, 3) linear
        tex_id = self.face_texture.index_select(0, face)
        if self.uvs is not None and bool((tex_id >= 0).any()):
            uv = interp(self.uvs[self.faces])
            for k in torch.unique(tex_id[tex_id >= 0]).tolist():
                sel = (tex_id == k).nonzero().squeeze(1)
                albedo[sel] = albedo.index_select(0, sel) * _sample_texture(self.textures[k], uv.index_select(0, sel))

        sign = row[:, 10:11]
        normal = geo.index_select(0, face) * sign
        if self._corner_pairs is not None:
            smooth = F.normalize(interp(self._corner_normals(verts)), dim=-1) * sign
            normal = torch.where((smooth * normal).sum(-1, keepdim=True) > 0, smooth, normal)
        lam = (normal @ self.light_dir).clamp_min(0)[:, None]
        shade = self.lighting.ambient + self.lighting.diffuse * lam
        return (albedo * shade).clamp(0, 1)

    def _build_corner_pairs(self):
        """(corner, face) pairs of every face corner with every face sharing that corner's vertex."""
        corner_vertex = self.faces.reshape(-1)  # (3F,)
        count = torch.bincount(corner_vertex, minlength=self.num_vertices)
        per_corner = count[corner_vertex]
        total = int(per_corner.sum())
        if total > _MAX_CORNER_PAIRS:
            logger.info("mesh has %d corner-face pairs (very high vertex valence): flat shading", total)
            return None
        order = torch.argsort(corner_vertex, stable=True)
        start = torch.cumsum(count, 0) - count
        corner = torch.repeat_interleave(torch.arange(corner_vertex.numel(), device=self.device), per_corner,
                                         output_size=total)
        first = torch.cumsum(per_corner, 0) - per_corner
        local = torch.arange(total, device=self.device) - first[corner]
        partner_face = torch.div(order[start[corner_vertex[corner]] + local], 3, rounding_mode="floor")
        return corner, partner_face

    def _corner_normals(self, verts: torch.Tensor) -> torch.Tensor:
        """Auto-smoothed normals (F, 3 corners, 3) of the current pose.

        A corner averages (area-weighted) the normals of the faces around its vertex that deviate from
        its own face's normal by less than `SMOOTH_ANGLE_DEG`, so sharp creases stay sharp while
        curved surfaces tessellated into flat triangles shade smoothly.
        """
        corner, partner = self._corner_pairs
        tri = verts[self.faces]
        fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2·area
        unit = F.normalize(fn, dim=-1)
        own = torch.div(corner, 3, rounding_mode="floor")
        keep = (unit[own] * unit[partner]).sum(-1) >= math.cos(math.radians(SMOOTH_ANGLE_DEG))
        acc = torch.zeros(self.faces.numel(), 3, device=verts.device, dtype=verts.dtype)
        acc.index_add_(0, corner[keep], fn[partner[keep]])
        return F.normalize(acc, dim=-1).view(-1, 3, 3)


def _sample_texture(tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear, repeat-wrapped lookup of (H, W, 3) `tex` at (P, 2) glTF uvs (origin top-left)."""
    H, W = tex.shape[:2]
    x = uv[:, 0] * W - 0.5  # texel centres at (i + 0.5) / W
    y = uv[:, 1] * H - 0.5
    xf, yf = torch.floor(x), torch.floor(y)
    fx, fy = (x - xf)[:, None], (y - yf)[:, None]
    xi0 = torch.remainder(xf.long(), W)
    yi0 = torch.remainder(yf.long(), H)
    xi1 = torch.remainder(xi0 + 1, W)
    yi1 = torch.remainder(yi0 + 1, H)
    top = tex[yi0, xi0] * (1 - fx) + tex[yi0, xi1] * fx
    bot = tex[yi1, xi0] * (1 - fx) + tex[yi1, xi1] * fx
    return top * (1 - fy) + bot * fy


def render_mesh(vertices, mesh: AnimatedMesh, extrinsics: torch.Tensor, intrinsics: torch.Tensor,
                resolution: int, device=None, *, ssaa: int = 2, lighting: MeshLighting | None = None,
                smooth_normals: bool = True) -> MeshRenderOutput:
    """Render one pose of `mesh` from C cameras (convenience wrapper around `MeshRenderer`).

    Args:
        vertices: (V, 3) world positions (e.g. ``mesh.vertices[t]``).
        mesh: the `AnimatedMesh` providing faces, colours, uvs and textures.
        extrinsics: (C, 4, 4) world->camera OpenCV matrices.
        intrinsics: (C, 3, 3) normalised intrinsics.
        resolution: output side in pixels.
        device: computation device (default CPU).
        ssaa: supersampling factor per axis.
    Returns:
        `MeshRenderOutput`: rgba (C, H, W, 4), depth (C, H, W), face_id (C, H, W).
    """
    renderer = MeshRenderer(mesh, device=device, lighting=lighting, smooth_normals=smooth_normals)
    return renderer.render(vertices, extrinsics, intrinsics, resolution, ssaa=ssaa)
