"""Episodes as animated GIFs, rendered offscreen: what `vidt eval --record` writes.

MuJoCo renders without a display through EGL (Debian: libegl1, with Mesa's software
renderer when there is no GPU); MUJOCO_GL=osmesa (libosmesa6) is the other choice. GIF needs
nothing beyond Pillow and plays in every browser and image viewer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

MAX_FPS = 30  # GIF frame delays under 20 ms are slowed down to 100 ms by most viewers
MAX_SIDE = 320  # pixels: a 1,000-step episode stays a few MB


def use_offscreen_gl() -> None:
    """Offscreen rendering when there is no display: MuJoCo on EGL, pygame on SDL's dummy driver
    (set before either is imported)."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
        # pygame (classic-control envs) too: without it SDL complains on every headless start.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class GifRecorder:
    """Collects every k-th rendered frame of one episode; `save` writes the GIF atomically."""

    def __init__(self, render_fps: float | None):
        fps = float(render_fps or MAX_FPS)
        self.every = max(1, math.ceil(fps / MAX_FPS))
        self.frame_ms = int(round(1000 * self.every / fps))
        self.frames: list[np.ndarray] = []
        self._n = 0

    def add(self, frame: np.ndarray | None) -> None:
        if frame is None:
            raise RuntimeError("the env rendered no frame (was it made with render_mode="
                               "'rgb_array'?)")
        if self._n % self.every == 0:
            self.frames.append(np.asarray(frame, dtype=np.uint8))
        self._n += 1

    def save(self, path: str | Path) -> Path:
        from PIL import Image

        if not self.frames:
            raise RuntimeError("no frames to write")
        h, w = self.frames[0].shape[:2]
        scale = min(1.0, MAX_SIDE / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        images = [Image.fromarray(f).resize(size) if scale < 1 else Image.fromarray(f)
                  for f in self.frames]
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=self.frame_ms, loop=0)
        os.replace(tmp, path)
        return path
