"""Procedural animated objects: seeded, coloured/textured, articulated meshes that always move.

A stand-in for animated Objaverse assets when none are at hand (tests, smoke training, demos).
Each seed picks an archetype (creature, lamp, plant, worm, totem, windmill), builds it from
lathe primitives (spheres, capsules, cylinders, cones, boxes) bound to a small joint rig, colours
every part with vertex colours or a procedural checker/stripe texture, and animates a subset of
motion kinds with linear-blend skinning (`gvf.data.animation.skin_vertices`):

* ``bend``   – a chain of joints skinning one smooth tube, phase-lagged wave (tails, stems, worms);
* ``swing``  – rigid limbs swinging about hinge joints (legs, lamp arms, leaves);
* ``twist``  – rotation about a part's own long axis (head roll, stem torsion, stacked pieces);
* ``squash`` – squash-and-stretch of the whole object about its base (volume preserving);
* ``turn``   – a rigid, steady rotation (turntable, windmill rotor).

Objects have at most a few thousand triangles, frames are 1/24 s apart, and the whole sequence
is normalised with ONE transform fitting all frames into [-0.5, 0.5]^3 (upstream normalises on
the first frame only; fitting all frames keeps every frame inside the voxel grid).
"""
from __future__ import annotations

import colorsys
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .animation import (mean_displacement, quat_from_axis_angle, quat_multiply, skin_vertices, trs_matrix,
                        world_matrices)
from .mesh import AnimatedMesh

__all__ = ["make_procedural_object", "procedural_spec", "list_motion_kinds", "list_archetypes"]

MOTION_KINDS = ("bend", "swing", "twist", "squash", "turn")
FPS = 24.0
MIN_MOTION = 0.02  # required mean displacement (normalised units), twice upstream's static threshold


def list_motion_kinds() -> list[str]:
    """Names of the motion kinds procedural objects use."""
    return list(MOTION_KINDS)


def list_archetypes() -> list[str]:
    """Names of the procedural object archetypes."""
    return list(_ARCHETYPES)


# ============================================================================================ shapes
def _lathe(radii, heights, segments: int = 10, angle0: float = 0.0):
    """Surface of revolution about +Z from a profile (r_i, z_i).

    Returns positions (V, 3), faces (F, 3) outward-wound, uvs (V, 2) (u around, v along the profile),
    along (V,) in [0, 1] = normalised height. Zero-area triangles (at r = 0 poles) are dropped.
    """
    r = np.asarray(radii, dtype=np.float64)
    z = np.asarray(heights, dtype=np.float64)
    P, S = r.shape[0], segments
    ang = angle0 + 2 * np.pi * np.arange(S + 1) / S
    pos = np.stack([r[:, None] * np.cos(ang), r[:, None] * np.sin(ang), np.repeat(z[:, None], S + 1, 1)], -1)
    seg = np.sqrt(np.diff(r) ** 2 + np.diff(z) ** 2)
    v = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-9)
    uvs = np.stack(np.meshgrid(np.arange(S + 1) / S, v, indexing="xy"), -1)
    ids = np.arange(P * (S + 1)).reshape(P, S + 1)
    a, b, c, d = ids[:-1, :-1], ids[:-1, 1:], ids[1:, :-1], ids[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    pos = pos.reshape(-1, 3)
    area = np.linalg.norm(np.cross(pos[faces[:, 1]] - pos[faces[:, 0]], pos[faces[:, 2]] - pos[faces[:, 0]]), axis=1)
    faces = faces[area > 1e-12]
    along = (pos[:, 2] - z.min()) / max(z.max() - z.min(), 1e-9)
    return pos, faces, uvs.reshape(-1, 2), along


def _sphere(radius, rings=8, segments=10):
    phi = np.linspace(0, np.pi, rings + 1)
    return _lathe(radius * np.sin(phi), radius * (1 - np.cos(phi)), segments)  # bottom pole at z = 0


def _capsule(radius, length, rings=4, body_rings=3, segments=10):
    """Capsule along +Z from 0 to `length` (caps included)."""
    length = max(length, 2 * radius + 1e-3)
    phi = np.linspace(0, np.pi / 2, rings + 1)
    r0, z0 = radius * np.sin(phi), radius * (1 - np.cos(phi))
    zb = np.linspace(radius, length - radius, body_rings + 2)[1:-1]
    return _lathe(np.concatenate([r0, np.full_like(zb, radius), r0[::-1]]),
                  np.concatenate([z0, zb, length - z0[::-1]]), segments)


def _tube(r_bottom, r_top, length, rings=6, segments=10, round_top=False):
    """Closed (optionally tapered) cylinder along +Z; `rings` body rings let it bend smoothly."""
    zs = np.linspace(0, length, rings + 1)
    rs = np.linspace(r_bottom, r_top, rings + 1)
    if round_top and r_top > 0:
        phi = np.linspace(0, np.pi / 2, 4)[1:]
        return _lathe(np.concatenate([[0.0], rs, r_top * np.cos(phi)]),
                      np.concatenate([[0.0], zs, length + r_top * np.sin(phi)]), segments)
    return _lathe(np.concatenate([[0.0], rs, [0.0]]), np.concatenate([[0.0], zs, [length]]), segments)


def _box(sx, sy, sz):
    """Box [-sx/2, sx/2] × [-sy/2, sy/2] × [0, sz] (a 4-sided lathe, then scaled)."""
    h = np.sqrt(0.5)
    pos, faces, uvs, along = _lathe([0.0, h, h, 0.0], [0.0, 0.0, 1.0, 1.0], segments=4, angle0=np.pi / 4)
    return pos * [sx, sy, sz], faces, uvs, along


def _rotation_z_to(d) -> np.ndarray:
    """Rotation matrix taking +Z to the unit vector d."""
    d = np.asarray(d, dtype=np.float64)
    d = d / np.linalg.norm(d)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(z, d), float(z @ d)
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


# ============================================================================================ colours
def _palette(rng, n):
    h0 = rng.random()
    cols = []
    for i in range(n):
        h = (h0 + i / n + rng.normal(0, 0.05)) % 1.0
        cols.append(colorsys.hsv_to_rgb(h, rng.uniform(0.35, 0.9), rng.uniform(0.45, 1.0)))
    return np.asarray(cols, dtype=np.float32)


def _pattern_texture(rng, c0, c1, size=64) -> np.ndarray:
    """(size, size, 3) uint8 checker or stripe image in two colours."""
    kind = rng.choice(["checker", "stripes_u", "stripes_v"])
    n = int(rng.integers(3, 9))
    yy, xx = np.mgrid[0:size, 0:size] * n // size
    mask = {"checker": (xx + yy) % 2, "stripes_u": xx % 2, "stripes_v": yy % 2}[kind].astype(bool)
    img = np.where(mask[..., None], c1, c0)
    return np.round(img * 255).astype(np.uint8)


# ============================================================================================ rig
@dataclass
class _Rig:
    heads: list = field(default_factory=list)      # joint pivots, world rest positions
    parents: list = field(default_factory=list)
    parts: list = field(default_factory=list)      # (pos, faces, uvs, joints (V,2), weights (V,2), colour spec)
    handles: dict = field(default_factory=lambda: defaultdict(list))  # kind -> motion records

    def joint(self, head, parent=-1) -> int:
        self.heads.append(np.asarray(head, dtype=np.float64))
        self.parents.append(parent)
        return len(self.heads) - 1

    def part(self, shape, origin, direction=(0, 0, 1), joints=(0,), colour=None):
        """Place a +Z-axis shape at `origin` pointing along `direction`, bound to one joint or a chain."""
        pos, faces, uvs, along = shape
        pos = pos @ _rotation_z_to(direction).T + np.asarray(origin, dtype=np.float64)
        n = len(joints)
        if n == 1:
            jj = np.full((pos.shape[0], 2), joints[0])
            ww = np.tile([1.0, 0.0], (pos.shape[0], 1))
        else:  # smooth blend between consecutive chain joints along the part
            c = along * n - 0.5
            k0 = np.floor(c).astype(np.int64)
            frac = c - k0
            lo, hi = np.clip(k0, 0, n - 1), np.clip(k0 + 1, 0, n - 1)
            jj = np.stack([np.asarray(joints)[lo], np.asarray(joints)[hi]], 1)
            ww = np.stack([1 - frac, frac], 1)
            ww[k0 < 0] = [1.0, 0.0]
            ww[k0 >= n - 1] = [1.0, 0.0]
        self.parts.append((pos, faces, uvs, jj, ww, colour))

    def chain(self, start, direction, length, n, parent):
        """n joints evenly spaced along a segment; returns their indices (each the next one's parent)."""
        d = np.asarray(direction, dtype=np.float64)
        d = d / np.linalg.norm(d)
        out = []
        for k in range(n):
            out.append(self.joint(np.asarray(start) + d * length * k / n, parent if k == 0 else out[-1]))
        return out

    def rot(self, kind, joint, axis, amp, phase=0.0):
        self.handles[kind].append(("rot", joint, np.asarray(axis, dtype=np.float64), amp, phase))

    def spin(self, kind, joint, axis, total):
        self.handles[kind].append(("spin", joint, np.asarray(axis, dtype=np.float64), total, 0.0))

    def squash(self, joint, amp, phase=0.0):
        self.handles["squash"].append(("scale", joint, None, amp, phase))


def _deg(rng, lo, hi):
    return np.deg2rad(rng.uniform(lo, hi)) * rng.choice([-1, 1])


# ============================================================================================ archetypes
def _creature(rng, rig, pal):
    rb, Lb = rng.uniform(0.16, 0.28), rng.uniform(0.5, 1.0)
    leg = rng.uniform(0.25, 0.5)
    h = leg + rb * 0.8
    root = rig.joint([0, 0, 0])
    x0 = -(Lb / 2 + rb)
    spine = rig.chain([x0, 0, h], (1, 0, 0), Lb + 2 * rb, 3, root)  # the body bends along its spine
    rig.part(_capsule(rb, Lb + 2 * rb, body_rings=6), [x0, 0, h], (1, 0, 0), spine, pal[0])

    def spine_joint(x):
        return spine[int(np.clip((x - x0) / (Lb + 2 * rb) * 3, 0, 2))]

    n_pairs = int(rng.choice([1, 2, 2, 3]))
    xs = np.linspace(-Lb / 2 + 0.05, Lb / 2 - 0.05, n_pairs) if n_pairs > 1 else [0.0]
    swing = _deg(rng, 20, 40)
    for i, x in enumerate(xs):
        for side in (-1, 1):
            hip = rig.joint([x, side * rb * 0.6, h - rb * 0.3], spine_joint(x))
            r = rb * rng.uniform(0.25, 0.4)
            rig.part(_capsule(r, h - rb * 0.3 + r, body_rings=2), [x, side * rb * 0.6, h - rb * 0.3], (0, 0, -1),
                     (hip,), pal[1])
            rig.rot("swing", hip, (0, 1, 0), swing, np.pi * ((i + (side > 0)) % 2))
    rh = rb * rng.uniform(0.6, 1.0)
    neck = rig.joint([Lb / 2 + rb * 0.5, 0, h + rb * 0.3], spine[-1])
    head_c = np.array([Lb / 2 + rb * 0.6 + rh * 0.6, 0, h + rb * 0.5])
    rig.part(_sphere(rh), head_c - [0, 0, rh], (0, 0, 1), (neck,), pal[2])
    for side in (-1, 1):
        eye = head_c + [rh * 0.8, side * rh * 0.4, rh * 0.25]
        rig.part(_sphere(rh * 0.2, rings=4, segments=6), eye - [0, 0, rh * 0.2], (0, 0, 1), (neck,),
                 np.array([0.05, 0.05, 0.05], np.float32))
        if rng.random() < 0.6:
            rig.part(_tube(rh * 0.25, 0.0, rh * 0.7, rings=1, segments=6), head_c + [0, side * rh * 0.5, rh * 0.7],
                     (0, side * 0.4, 1), (neck,), pal[1])
    rig.rot("swing", neck, (0, 1, 0), _deg(rng, 10, 25))
    rig.rot("twist", neck, (1, 0, 0), _deg(rng, 25, 45))
    rig.rot("twist", spine[1], (1, 0, 0), _deg(rng, 10, 20))
    tail_dir = np.array([-1.0, 0.0, rng.uniform(0.2, 0.9)])
    tail_len = rng.uniform(0.4, 0.9)
    start = np.array([-(Lb / 2 + rb * 0.6), 0, h + rb * 0.2])
    tail = rig.chain(start, tail_dir, tail_len, 4, spine[0])
    rig.part(_tube(rb * 0.3, rb * 0.08, tail_len, rings=10, round_top=True), start, tail_dir, tail, pal[3])
    amp, lag = _deg(rng, 15, 30), rng.uniform(0.5, 1.2)
    axis = (0, 0, 1) if rng.random() < 0.5 else (0, 1, 0)
    for k, j in enumerate(tail):
        rig.rot("bend", j, axis, amp, -k * lag)
    body_amp = _deg(rng, 10, 20)
    for k, j in enumerate(spine[1:]):
        rig.rot("bend", j, (0, 0, 1), body_amp, -k * lag)
    rig.squash(root, rng.uniform(0.12, 0.22))
    rig.spin("turn", root, (0, 0, 1), _deg(rng, 60, 160))


def _lamp(rng, rig, pal):
    rbase = rng.uniform(0.2, 0.35)
    root = rig.joint([0, 0, 0])
    rig.part(_tube(rbase, rbase * 0.9, 0.06, rings=1, segments=12), [0, 0, 0], (0, 0, 1), (root,), pal[0])
    pivot = rig.joint([0, 0, 0.06], root)
    n = int(rng.integers(2, 4))
    p, parent = np.array([0, 0, 0.06]), pivot
    tilt = rng.uniform(-0.5, 0.5)
    r = rng.uniform(0.025, 0.045)
    for k in range(n):
        hinge = rig.joint(p, parent)
        length = rng.uniform(0.3, 0.55)
        d = np.array([np.sin(tilt), 0.0, np.cos(tilt)])
        rig.part(_sphere(r * 1.6, rings=4, segments=8), p - [0, 0, r * 1.6], (0, 0, 1), (hinge,), pal[1])
        rig.part(_tube(r, r, length, rings=2, segments=8), p, d, (hinge,), pal[2])
        rig.rot("swing", hinge, (0, 1, 0), _deg(rng, 15, 35), rng.uniform(0, np.pi))
        p, parent = p + d * length, hinge
        tilt += rng.uniform(0.6, 1.3) * (1 if k % 2 == 0 else -0.5)
    head = rig.joint(p, parent)
    shade_dir = np.array([np.sin(tilt + 0.8), 0.0, np.cos(tilt + 0.8)])
    rs = rng.uniform(0.12, 0.22)
    rig.part(_tube(r * 1.5, rs, rs * 1.3, rings=2, segments=12), p, shade_dir, (head,), pal[3])
    rig.part(_sphere(rs * 0.5, rings=5, segments=8), p + shade_dir * rs * 0.9, shade_dir, (head,),
             np.array([1.0, 0.95, 0.7], np.float32))
    rig.rot("swing", head, (0, 1, 0), _deg(rng, 15, 30))
    rig.rot("twist", pivot, (0, 0, 1), _deg(rng, 30, 70))
    rig.rot("twist", head, shade_dir, _deg(rng, 30, 60))
    rig.squash(root, rng.uniform(0.1, 0.2))
    rig.spin("turn", root, (0, 0, 1), _deg(rng, 60, 160))


def _plant(rng, rig, pal):
    root = rig.joint([0, 0, 0])
    hp, rp = rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.25)
    rig.part(_tube(rp * 0.75, rp, hp, rings=1, segments=12), [0, 0, 0], (0, 0, 1), (root,), pal[0])
    L = rng.uniform(0.8, 1.4)
    n = int(rng.integers(4, 7))
    stem = rig.chain([0, 0, hp], (0, 0, 1), L, n, root)
    rig.part(_tube(rng.uniform(0.03, 0.05), 0.015, L, rings=12, segments=8), [0, 0, hp], (0, 0, 1), stem, pal[1])
    n_leaves = int(rng.integers(2, 6))
    for i in range(n_leaves):
        k = int(rng.integers(1, n))
        a = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(a), np.sin(a), rng.uniform(0.2, 0.8)])
        base = np.array([0, 0, hp + L * k / n])
        leaf = rig.joint(base, stem[k])
        ll = rng.uniform(0.2, 0.4)
        pos, faces, uvs, along = _sphere(1.0, rings=6, segments=8)
        shape = (pos * [ll * 0.35, ll * 0.06, ll * 0.5], faces, uvs, along)
        rig.part(shape, base, d, (leaf,), pal[2])
        flap_axis = np.cross(d, [0, 0, 1.0])
        rig.rot("swing", leaf, flap_axis, _deg(rng, 15, 35), rng.uniform(0, 2 * np.pi))
    tip = rig.joint([0, 0, hp + L], stem[-1])
    rf = rng.uniform(0.08, 0.15)
    rig.part(_sphere(rf, rings=6, segments=10), [0, 0, hp + L - rf * 0.3], (0, 0, 1), (tip,), pal[3])
    n_pet = int(rng.integers(4, 8))
    for i in range(n_pet):
        a = 2 * np.pi * i / n_pet
        d = np.array([np.cos(a), np.sin(a), 0.3])
        pos, faces, uvs, along = _sphere(1.0, rings=4, segments=6)
        rig.part((pos * [rf * 0.6, rf * 0.15, rf * 1.0], faces, uvs, along), [0, 0, hp + L + rf * 0.5], d, (tip,),
                 pal[4 % len(pal)])
    rig.rot("swing", tip, (1, 0, 0), _deg(rng, 20, 35))  # the flower nods
    amp, lag = _deg(rng, 6, 14), rng.uniform(0.3, 0.9)
    axis = np.array([np.cos(rng.uniform(0, np.pi)), np.sin(rng.uniform(0, np.pi)), 0.0])
    for k, j in enumerate(stem):
        rig.rot("bend", j, axis, amp, -k * lag)
    tw = _deg(rng, 15, 30)
    for j in stem:
        rig.rot("twist", j, (0, 0, 1), tw)
    rig.squash(root, rng.uniform(0.08, 0.16))
    rig.spin("turn", root, (0, 0, 1), _deg(rng, 60, 160))


def _worm(rng, rig, pal):
    r, L = rng.uniform(0.08, 0.16), rng.uniform(1.2, 2.2)
    root = rig.joint([0, 0, 0])
    n = int(rng.integers(5, 9))
    start = np.array([-L / 2, 0, r])
    chain = rig.chain(start, (1, 0, 0), L, n, root)
    square = rng.random() < 0.4  # square cross-section makes torsion visible
    rig.part(_tube(r * 0.5, r, L, rings=16, segments=4 if square else 10, round_top=True), start, (1, 0, 0), chain,
             pal[0])
    head = rig.joint([L / 2, 0, r], chain[-1])
    for side in (-1, 1):
        rig.part(_sphere(r * 0.3, rings=4, segments=6), [L / 2 + r * 0.4, side * r * 0.5, r * 1.3], (0, 0, 1),
                 (head,), np.array([0.05, 0.05, 0.05], np.float32))
    for k in range(int(rng.integers(2, 6))):
        x = rng.uniform(-L / 2 + r, L / 2 - r)
        j = chain[min(int((x + L / 2) / L * n), n - 1)]
        rig.part(_sphere(r * rng.uniform(0.3, 0.5), rings=4, segments=6), [x, 0, r * 1.7], (0, 0, 1), (j,), pal[1])
    amp, lag = _deg(rng, 15, 30), rng.uniform(0.6, 1.2)
    axis = (0, 0, 1) if rng.random() < 0.6 else (0, 1, 0)
    for k, j in enumerate(chain):
        rig.rot("bend", j, axis, amp, -k * lag)
    tw = _deg(rng, 12, 25)
    for j in chain:
        rig.rot("twist", j, (1, 0, 0), tw)
    rig.rot("swing", head, (0, 1, 0), _deg(rng, 20, 40))
    rig.rot("swing", chain[n // 2], (0, 0, 1), _deg(rng, 20, 35))  # front half swings rigidly
    rig.squash(root, rng.uniform(0.12, 0.22))
    rig.spin("turn", root, (0, 0, 1), _deg(rng, 60, 160))


def _totem(rng, rig, pal):
    root = rig.joint([0, 0, 0])
    z, parent, pieces = 0.0, root, []
    for i in range(int(rng.integers(3, 6))):
        j = rig.joint([0, 0, z], parent)
        kind = rng.choice(["box", "sphere", "cylinder"])
        s = rng.uniform(0.25, 0.45)
        if kind == "box":
            shape, hgt = _box(s, s * rng.uniform(0.7, 1.0), s * rng.uniform(0.6, 1.0)), None
        elif kind == "sphere":
            shape = _sphere(s / 2)
        else:
            shape = _tube(s / 2, s / 2 * rng.uniform(0.6, 1.0), s * rng.uniform(0.6, 1.0), rings=2)
        hgt = shape[0][:, 2].max()
        rig.part(shape, [0, 0, z], (0, 0, 1), (j,), pal[i % len(pal)])
        pieces.append((j, z, s, hgt))
        z, parent = z + hgt, j
    tw = _deg(rng, 20, 45)
    for k, (j, *_rest) in enumerate(pieces):
        rig.rot("twist", j, (0, 0, 1), tw, k * rng.uniform(0.3, 1.0))
    j, z0, s, hgt = pieces[len(pieces) // 2]
    for side in (-1, 1):
        sh = rig.joint([0, side * s / 2, z0 + hgt * 0.6], j)
        rig.part(_box(0.06, 0.3, 0.06), [0, side * s / 2, z0 + hgt * 0.6], (0, side, -0.3), (sh,), pal[-1])
        rig.rot("swing", sh, (1, 0, 0), _deg(rng, 20, 45), np.pi * (side > 0))
    rig.rot("swing", pieces[-1][0], (1, 0, 0) if rng.random() < 0.5 else (0, 1, 0), _deg(rng, 20, 35))
    amp, lag = _deg(rng, 6, 12), rng.uniform(0.3, 0.8)
    axis = (1, 0, 0) if rng.random() < 0.5 else (0, 1, 0)
    for k, (j, *_rest) in enumerate(pieces):
        rig.rot("bend", j, axis, amp, -k * lag)
    rig.squash(root, rng.uniform(0.1, 0.2))
    rig.spin("turn", root, (0, 0, 1), _deg(rng, 60, 160))


def _windmill(rng, rig, pal):
    root = rig.joint([0, 0, 0])
    H = rng.uniform(0.8, 1.3)
    pole = rig.chain([0, 0, 0], (0, 0, 1), H, 3, root)  # a flexible pole sways ("bend")
    rig.part(_tube(0.12, 0.06, H, rings=9, segments=8), [0, 0, 0], (0, 0, 1), pole, pal[0])
    top = rig.joint([0, 0, H], pole[-1])
    rig.part(_box(0.3, 0.16, 0.16), [0, 0, H - 0.08], (0, 0, 1), (top,), pal[1])
    hub_p = np.array([0.18, 0, H])
    hub = rig.joint(hub_p, top)
    rig.part(_sphere(0.07, rings=5, segments=8), hub_p - [0, 0, 0.07], (0, 0, 1), (hub,), pal[2])
    nb = int(rng.integers(3, 6))
    bl = rng.uniform(0.35, 0.6)
    for i in range(nb):
        a = 2 * np.pi * i / nb
        d = np.array([0.0, np.cos(a), np.sin(a)])
        rig.part(_box(0.02, rng.uniform(0.08, 0.14), bl), hub_p + [0.04, 0, 0], d, (hub,), pal[3])
    rig.spin("turn", hub, (1, 0, 0), np.deg2rad(rng.uniform(120, 360)) * rng.choice([-1, 1]))
    rig.rot("twist", top, (0, 0, 1), _deg(rng, 25, 50))
    rig.rot("swing", top, (0, 1, 0), _deg(rng, 8, 15))
    amp, lag = _deg(rng, 6, 12), rng.uniform(0.3, 0.8)
    for k, j in enumerate(pole[1:]):
        rig.rot("bend", j, (1, 0, 0), amp, -k * lag)
    rig.squash(root, rng.uniform(0.08, 0.15))
    rig.spin("turn", root, (0, 0, 1), _deg(rng, 40, 120))


_ARCHETYPES = {"creature": _creature, "lamp": _lamp, "plant": _plant, "worm": _worm, "totem": _totem,
               "windmill": _windmill}
# motion kinds each archetype can show (a lamp has rigid arms: no bending)
_ARCHETYPE_KINDS = {name: MOTION_KINDS for name in _ARCHETYPES}
_ARCHETYPE_KINDS["lamp"] = ("swing", "twist", "squash", "turn")


# ============================================================================================ generator
def procedural_spec(seed: int) -> dict:
    """The archetype and motion kinds `make_procedural_object(seed)` uses (cheap, no geometry)."""
    rng = np.random.default_rng([int(seed), 0])
    archetype = str(rng.choice(list(_ARCHETYPES)))
    n = int(rng.choice([1, 1, 2, 2, 3]))
    kinds = sorted(str(k) for k in rng.choice(_ARCHETYPE_KINDS[archetype], size=n, replace=False))
    colour_mode = str(rng.choice(["vertex", "texture", "mixed"]))
    return {"seed": int(seed), "archetype": archetype, "motion_kinds": kinds, "colour_mode": colour_mode}


def _animate(rig: _Rig, kinds, times, duration, gain, rng):
    """Local joint transforms (T, J, 4, 4) for the chosen motion kinds."""
    T, J = times.shape[0], len(rig.heads)
    heads = np.stack(rig.heads)
    parents = np.asarray(rig.parents)
    rest_t = heads - np.where(parents[:, None] >= 0, heads[np.maximum(parents, 0)], 0.0)
    quat = np.tile([0.0, 0.0, 0.0, 1.0], (T, J, 1))
    scale = np.ones((T, J, 3))
    omega = 2 * np.pi * rng.uniform(0.75, 1.75) / duration  # 0.75–1.75 cycles over the clip
    for kind in kinds:
        for op, j, axis, amp, phase in rig.handles[kind]:
            if op == "rot":
                ang = gain * amp * np.sin(omega * times + phase)
                quat[:, j] = quat_multiply(quat[:, j], quat_from_axis_angle(axis, ang))
            elif op == "spin":  # steady rotation: `amp` radians over the whole clip
                ang = gain * amp * times / duration
                quat[:, j] = quat_multiply(quat[:, j], quat_from_axis_angle(axis, ang))
            else:  # volume-preserving squash about the joint (stretch z, shrink x, y)
                sz = 1.0 + min(gain * amp, 0.45) * np.sin(omega * times + phase)
                scale[:, j] = np.stack([1 / np.sqrt(sz), 1 / np.sqrt(sz), sz], -1)
    local = trs_matrix(np.broadcast_to(rest_t, (T, J, 3)), quat, scale)
    return local


def make_procedural_object(seed: int, num_frames: int = 24, *, archetype: str | None = None,
                           motion_kinds: list[str] | None = None) -> AnimatedMesh:
    """A seeded, coloured, articulated object that moves (see the module docstring).

    Args:
        seed: any int; the same seed always gives the same object and motion.
        num_frames: T frames, 1/24 s apart.
        archetype: force one of `list_archetypes()` (default: chosen by the seed).
        motion_kinds: force a subset of `list_motion_kinds()` (default: 1–3 chosen by the seed).
    Returns:
        AnimatedMesh (T, V, 3) normalised so that all frames lie in [-0.5, 0.5]^3, with mean
        displacement > 0.02; name "procedural_<seed>_<archetype>_<kind+kind>".
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    spec = procedural_spec(seed)
    archetype = archetype or spec["archetype"]
    kinds = sorted(motion_kinds) if motion_kinds is not None else spec["motion_kinds"]
    if archetype not in _ARCHETYPES:
        raise ValueError(f"archetype must be one of {list(_ARCHETYPES)}, got {archetype!r}")
    allowed = _ARCHETYPE_KINDS[archetype]
    if not kinds or any(k not in allowed for k in kinds):
        raise ValueError(f"motion_kinds for a {archetype} must be a non-empty subset of {list(allowed)}, "
                         f"got {motion_kinds!r}")

    rng = np.random.default_rng([int(seed), 1])
    pal = _palette(rng, 5)
    rig = _Rig()
    _ARCHETYPES[archetype](rng, rig, pal)

    # geometry, colours, textures
    verts, faces, uvs, joints, weights, colors, face_tex, textures = [], [], [], [], [], [], [], []
    off = 0
    for pos, fc, uv, jj, ww, col in rig.parts:
        V = pos.shape[0]
        textured = spec["colour_mode"] == "texture" or (spec["colour_mode"] == "mixed" and rng.random() < 0.5)
        textured = textured and V > 30  # tiny parts (eyes) stay flat-coloured
        base = np.asarray(col if col is not None else pal[0], dtype=np.float32)
        if textured:
            c2 = np.clip(base * rng.uniform(0.3, 0.6) + rng.uniform(0, 0.3), 0, 1)
            textures.append(_pattern_texture(rng, base, c2))
            face_tex.append(np.full(fc.shape[0], len(textures) - 1))
            colors.append(np.ones((V, 3), np.float32))
        else:
            face_tex.append(np.full(fc.shape[0], -1))
            if rng.random() < 0.4:  # gradient along the part
                tip = np.clip(base * rng.uniform(0.5, 1.3), 0, 1)
                a = (pos[:, 2] - pos[:, 2].min()) / max(np.ptp(pos[:, 2]), 1e-9)
                colors.append(((1 - a)[:, None] * base + a[:, None] * tip).astype(np.float32))
            else:
                colors.append(np.repeat(base[None], V, 0))
        verts.append(pos)
        faces.append(fc + off)
        uvs.append(uv)
        joints.append(jj)
        weights.append(ww)
        off += V
    rest = np.concatenate(verts)
    joints, weights = np.concatenate(joints), np.concatenate(weights)
    heads = np.stack(rig.heads)
    inv_bind = np.tile(np.eye(4), (len(heads), 1, 1))
    inv_bind[:, :3, 3] = -heads  # joints rest unrotated at their pivots

    times = np.arange(num_frames) / FPS
    duration = num_frames / FPS
    best, best_disp = None, -1.0
    attempts = [(kinds, g) for g in (1.0, 1.5, 2.2, 3.0)]
    if "turn" not in kinds:  # last resort: add a turntable rotation, which always moves
        attempts.append((sorted(kinds + ["turn"]), 1.0))
    for kinds, gain in attempts:  # raise amplitudes until the object clearly moves (deterministic)
        local = _animate(rig, kinds, times, duration, gain, np.random.default_rng([int(seed), 2]))
        world = world_matrices(local, np.asarray(rig.parents))
        pos = skin_vertices(rest, joints, weights, world @ inv_bind)
        mesh = AnimatedMesh(vertices=pos, faces=np.concatenate(faces), vertex_colors=np.concatenate(colors),
                            uvs=np.concatenate(uvs) if textures else None, textures=textures,
                            face_texture=np.concatenate(face_tex), times=times,
                            name=f"procedural_{seed}_{archetype}_{'+'.join(kinds)}").normalized(None)
        disp = mean_displacement(mesh)
        if disp > best_disp:
            best, best_disp = mesh, disp
        if disp > MIN_MOTION:
            break
    return best
