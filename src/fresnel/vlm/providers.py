"""The two density providers behind one shape: "vlm" (a chat server) and "offline".

``VLMProvider`` splits its work in two so answers can be cached:

* ``ask(image_bytes) -> VLMAnswer``: the requests. Grid mode asks ``grid_prompt(n)``. Smart
  mode (the guide's ``--smart``) asks ``FACE_PROMPT``; on a clear "yes" it asks
  ``LANDMARK_PROMPT`` and, if the landmarks parse, the answer's branch is "smart-face".
  On "no", or on a face/landmark answer that was rejected, it asks the grid prompt and the
  branch is "grid" - the rejection is kept in ``VLMAnswer.rejections``, never dropped.
  A grid answer that cannot be parsed (or repaired) raises ``ImageRejected``.
* ``density(answer, size) -> DensityResult``: pure computation from the parsed answer.

``VLMAnswer`` holds every raw answer text and the parsed result; it round-trips through
JSON (``to_json`` / ``from_json``) for the stage's cache. ``cache_key`` hashes the image
content sha256, every prompt text the mode may ask, the model, temperature, max tokens, the
grid size and smart.

``OfflineProvider`` wraps ``offline.offline_density``; it needs no cache.
"""

from __future__ import annotations

import hashlib
import io as pyio
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fresnel.images import load_rgb
from fresnel.vlm import grid as prompts
from fresnel.vlm.client import ClientConfig, VLMClient, sniff_mime
from fresnel.vlm.density import DensityResult, grid_density, landmark_density
from fresnel.vlm.offline import offline_density

log = logging.getLogger(__name__)

PROVIDERS = ("vlm", "offline")


class ImageRejected(RuntimeError):
    """Every answer for one image was unusable; `reason` tells the whole story."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class VLMAnswer:
    """What the VLM said about one image (raw texts + parsed result)."""

    branch: str
    exchanges: list[dict] = field(default_factory=list)  # {"question", "prompt", "answer"}
    face: bool | None = None
    landmarks: dict[str, list[float]] | None = None
    grid: list[list[float]] | None = None
    repairs: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "branch": self.branch,
            "exchanges": self.exchanges,
            "face": self.face,
            "landmarks": self.landmarks,
            "grid": self.grid,
            "repairs": self.repairs,
            "rejections": self.rejections,
        }

    @classmethod
    def from_json(cls, data: dict) -> VLMAnswer:
        if data.get("branch") not in ("grid", "smart-face"):
            raise ValueError(f"cached answer has branch {data.get('branch')!r}")
        if data["branch"] == "grid" and not data.get("grid"):
            raise ValueError("cached grid answer has no grid")
        if data["branch"] == "smart-face" and not data.get("landmarks"):
            raise ValueError("cached smart-face answer has no landmarks")
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


def image_bytes(path: str | os.PathLike, item_id: str | None = None) -> bytes:
    """PNG or JPEG bytes of an image file for the request: the file itself when it is PNG/JPEG
    (after checking it decodes), else a lossless PNG re-encoding. Raises images.BadImage."""
    path = Path(path)
    rgb = load_rgb(path, item_id or path.name)
    data = path.read_bytes()
    if sniff_mime(data):
        return data
    buffer = pyio.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


class VLMProvider:
    """Density maps from a VLM; `client` carries the server settings and concurrency."""

    kind = "vlm"

    def __init__(
        self, client: VLMClient, grid_size: int = 8, smart: bool = False, resample="bilinear"
    ):
        prompts.check_grid_size(grid_size)
        self.client = client
        self.grid_size = grid_size
        self.smart = bool(smart)
        self.resample = resample

    @classmethod
    def from_settings(
        cls, grid_size: int = 8, smart: bool = False, resample: str = "bilinear", **client
    ) -> VLMProvider:
        """A provider with its own VLMClient; `client` holds ClientConfig fields (url, model,
        temperature, max_tokens, connect_timeout, read_timeout, retries, backoff, ...)."""
        return cls(VLMClient(ClientConfig(**client)), grid_size, smart, resample)

    @property
    def name(self) -> str:
        return self.client.provider_name

    def prompt_texts(self) -> list[str]:
        """Every prompt this mode may send, in the order it sends them."""
        grid_text = prompts.grid_prompt(self.grid_size)
        return (
            [prompts.FACE_PROMPT, prompts.LANDMARK_PROMPT, grid_text] if self.smart else [grid_text]
        )

    def key_fields(self, image_sha256: str) -> dict:
        return {
            "image_sha256": image_sha256,
            "prompts": self.prompt_texts(),
            "model": self.client.config.model,
            "temperature": self.client.config.temperature,
            "max_tokens": self.client.config.max_tokens,
            "grid_size": self.grid_size,
            "smart": self.smart,
        }

    def cache_key(self, image_sha256: str) -> str:
        """32 hex digits naming the cached answer for this image under these settings."""
        blob = json.dumps(self.key_fields(image_sha256), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    # ---------------------------------------------------------------- requests

    def _ask(self, answer: VLMAnswer, question: str, prompt: str, image: bytes) -> str:
        text = self.client.chat(prompt, image)
        answer.exchanges.append({"question": question, "prompt": prompt, "answer": text})
        log.debug("%s prompt:\n%s\nanswer:\n%s", question, prompt, text)
        return text

    def ask(self, image: bytes) -> VLMAnswer:
        """Query the VLM about one PNG/JPEG image (see the module docstring for the flow)."""
        answer = VLMAnswer(branch="grid")
        if self.smart and self._ask_face(answer, image):
            return answer
        text = self._ask(answer, "grid", prompts.grid_prompt(self.grid_size), image)
        try:
            parsed = prompts.parse_grid(text, self.grid_size)
        except prompts.AnswerRejected as exc:
            earlier = f" (earlier: {'; '.join(answer.rejections)})" if answer.rejections else ""
            raise ImageRejected(exc.code, f"grid answer rejected: {exc.reason}{earlier}") from None
        answer.grid = parsed.values.tolist()
        answer.repairs.extend(f"grid: {r}" for r in parsed.repairs)
        return answer

    def _ask_face(self, answer: VLMAnswer, image: bytes) -> bool:
        """Smart mode's face branch; True when it produced landmarks."""
        text = self._ask(answer, "face", prompts.FACE_PROMPT, image)
        try:
            answer.face = prompts.parse_yes_no(text)
        except prompts.AnswerRejected as exc:
            answer.rejections.append(f"face question: {exc.reason}")
            return False
        if not answer.face:
            return False
        text = self._ask(answer, "landmarks", prompts.LANDMARK_PROMPT, image)
        try:
            points = prompts.parse_landmarks(text)
        except prompts.AnswerRejected as exc:
            answer.rejections.append(f"landmarks: {exc.reason}")
            return False
        answer.branch = "smart-face"
        answer.landmarks = {name: [x, y] for name, (x, y) in points.items()}
        return True

    def density_for_file(self, path: str | os.PathLike, size: int, item_id=None):
        """Ask about one image file (no cache) and return its (size, size) DensityResult.

        Raises images.BadImage, client.VLMError or ImageRejected.
        """
        return self.density(self.ask(image_bytes(path, item_id)), size)

    # ---------------------------------------------------------------- density

    def density(self, answer: VLMAnswer, size: int) -> DensityResult:
        """The (size, size) density of a (fresh or cached) answer."""
        if answer.branch == "smart-face":
            points = {k: (float(v[0]), float(v[1])) for k, v in answer.landmarks.items()}
            array = landmark_density(points, size)
        else:
            array = grid_density(np.asarray(answer.grid, dtype=np.float64), size, self.resample)
            points = None
        return DensityResult(
            array,
            provider=self.name,
            branch=answer.branch,
            grid_size=self.grid_size,
            repairs=list(answer.repairs),
            rejections=list(answer.rejections),
            grid=None if answer.grid is None else np.asarray(answer.grid),
            landmarks=points,
        )


class OfflineProvider:
    """Density maps without a server (LBP face cascade, else saliency); see `offline`."""

    kind = "offline"
    name = "offline"

    def density_for_file(self, path: str | os.PathLike, size: int, item_id=None):
        """The (size, size) DensityResult of one image file; raises images.BadImage."""
        return offline_density(load_rgb(path, item_id or Path(path).name), size)
