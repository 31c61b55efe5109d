"""The VLM stage: one mean-1 density map per image of a stage's manifest.

Input: ``images_dir/manifest.parquet`` (columns id, file (relative path), sha256) and the
images. Output (``out_dir`` is emptied first):

* ``{id}_vlm_density.npy``: float32 [size, size], mean 1, row 0 = top of the image;
* ``index.json``: settings plus, per id, provider, branch, grid_size, cache_key, status
  ("computed", "cached" or "failed"), repairs and rejections;
* ``failed.json``: [{"id", "reason"}] for images without a usable answer.

Provider "vlm": answers are cached in ``cache_dir`` (default
``fresnel.io.cache_root()/"vlm"``) as ``<key>.json`` holding the raw answer texts and the
parsed result; the key hashes image content sha256, prompt texts, model, grid size and smart
(``VLMProvider.cache_key``), so reruns and added images only ask about unanswered images, and
images sharing content are asked once. Failed images are not cached: the next run asks
again. Before the first request the server is checked with GET /v1/models; a server that
cannot be reached stops the stage whatever ``on_failure`` says (that is a setup error, not
a bad image). Provider "offline" computes every image locally and uses no cache.

on_failure: "fail" raises VLMStageError naming every failed id and reason after all images
were attempted (index.json and failed.json are written first); "uniform" writes an all-ones
density for them and lists them in failed.json. Nothing ever falls back from one provider to
the other.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fresnel import io
from fresnel.images import BadImage
from fresnel.vlm.client import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_MODEL,
    DEFAULT_URL,
    VLMClient,
    VLMError,
    VLMHTTPError,
    redact_url,
)
from fresnel.vlm.density import RESAMPLE_METHODS, DensityResult, uniform_density
from fresnel.vlm.grid import check_grid_size
from fresnel.vlm.providers import (
    PROVIDERS,
    ImageRejected,
    OfflineProvider,
    VLMAnswer,
    VLMProvider,
    image_bytes,
)

log = logging.getLogger(__name__)

ON_FAILURE = ("fail", "uniform")
DENSITY_SUFFIX = "_vlm_density.npy"


class VLMStageError(RuntimeError):
    """Bad stage input or settings, or (on_failure: fail) images without a density."""


@dataclass
class Item:
    id: str
    path: Path
    sha256: str
    key: str | None = None
    result: DensityResult | None = None
    status: str = "pending"
    reason: str | None = None


# ------------------------------------------------------------------------- inputs


def read_manifest(images_dir) -> list[Item]:
    """One Item per manifest row, sorted by id; errors name the manifest."""
    import pandas as pd

    images_dir = Path(images_dir)
    manifest = images_dir / "manifest.parquet"
    if not manifest.is_file():
        raise VLMStageError(f"image manifest not found: {manifest} (expected a stage output dir)")
    table = pd.read_parquet(manifest)
    missing = {"id", "file", "sha256"} - set(table.columns)
    if missing:
        raise VLMStageError(f"{manifest}: missing columns {sorted(missing)}")
    ids = [str(i) for i in table["id"]]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise VLMStageError(f"{manifest}: duplicate ids {duplicates[:5]}")
    items = [
        Item(i, images_dir / str(f), str(s))
        for i, f, s in zip(ids, table["file"], table["sha256"], strict=True)
    ]
    return sorted(items, key=lambda item: item.id)


def _check_content(item: Item) -> None:
    """Fail the item when its file is missing or differs from the manifest's sha256."""
    if not item.path.is_file():
        raise BadImage(item.id, f"file not found: {item.path}")
    if io.sha256_file(item.path) != item.sha256:
        raise BadImage(item.id, f"{item.path} differs from the manifest sha256 (file changed)")


def _check_settings(provider, on_failure, size, grid_size, resample) -> None:
    if provider not in PROVIDERS:
        raise VLMStageError(f"vlm provider must be one of {PROVIDERS}, got {provider!r}")
    if on_failure not in ON_FAILURE:
        raise VLMStageError(f"vlm on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not isinstance(size, int) or size < 1:
        raise VLMStageError(f"vlm size must be a positive integer, got {size!r}")
    if resample not in RESAMPLE_METHODS:
        raise VLMStageError(f"vlm resample must be one of {RESAMPLE_METHODS}, got {resample!r}")
    try:
        check_grid_size(grid_size)
    except ValueError as exc:
        raise VLMStageError(str(exc)) from None


# ------------------------------------------------------------------------- cache


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.json"


def load_cached(cache_dir: Path, provider: VLMProvider, item: Item) -> VLMAnswer | None:
    """The cached answer for `item`, or None (absent, unreadable, or for other settings)."""
    path = _cache_path(cache_dir, item.key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") != provider.key_fields(item.sha256):
            return None
        return VLMAnswer.from_json(data["answer"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable VLM cache entry %s: %s", path, exc)
        return None


def store_cached(cache_dir: Path, provider: VLMProvider, item: Item, answer: VLMAnswer) -> None:
    io.write_json(
        _cache_path(cache_dir, item.key),
        {"key": provider.key_fields(item.sha256), "answer": answer.to_json()},
    )


# ------------------------------------------------------------------------- providers


def _run_vlm(items: list[Item], provider: VLMProvider, cache_dir: Path, size: int) -> None:
    """Fill item.result / status from the cache, then ask the server about the rest."""
    todo: dict[str, Item] = {}
    answers: dict[str, VLMAnswer] = {}
    for item in items:
        if item.status == "failed":
            continue
        item.key = provider.cache_key(item.sha256)
        cached = answers.get(item.key) or load_cached(cache_dir, provider, item)
        if cached is not None:
            answers[item.key] = cached
            item.status = "cached"
        else:
            todo.setdefault(item.key, item)
    log.info("vlm: %d images, %d to ask, cache %s", len(items), len(todo), cache_dir)
    if todo:
        _check_server(provider.client)
        answers.update(_ask_all(list(todo.values()), provider, cache_dir))
    for item in items:
        if item.status == "failed":
            continue
        if item.key in answers:
            item.result = provider.density(answers[item.key], size)
            item.status = "cached" if item.status == "cached" else "computed"
        else:
            first = todo[item.key]
            item.status, item.reason = "failed", first.reason


def _check_server(client: VLMClient) -> None:
    """Stop early with "Cannot connect to VLM at ..." when the server is down.

    A server without a /models endpoint (404/405) is tolerated: chat may still work.
    """
    try:
        models = client.list_models()
    except VLMHTTPError as exc:
        if exc.status not in (404, 405):
            raise
        log.warning("the server has no model list (%s); going on without the check", exc)
        return
    if client.config.model not in models:
        log.warning(
            "model %r is not in the server's model list %s; the server may reject it",
            client.config.model,
            models,
        )


def _ask_all(todo: list[Item], provider: VLMProvider, cache_dir: Path) -> dict[str, VLMAnswer]:
    def ask(item: Item) -> VLMAnswer:
        answer = provider.ask(image_bytes(item.path, item.id))
        store_cached(cache_dir, provider, item, answer)
        return answer

    outcomes = provider.client.map(ask, todo, catch=(VLMError, ImageRejected, BadImage))
    answers = {}
    for outcome in outcomes:
        item = outcome.item
        if outcome.error is None:
            answers[item.key] = outcome.value
        else:
            item.status, item.reason = "failed", _reason(outcome.error)
    return answers


def _run_offline(items: list[Item], size: int) -> None:
    provider = OfflineProvider()
    for item in tqdm(items, desc="vlm offline", unit="img"):
        if item.status == "failed":
            continue
        try:
            item.result = provider.density_for_file(item.path, size, item.id)
            item.status = "computed"
        except BadImage as exc:
            item.status, item.reason = "failed", _reason(exc)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc)


# ------------------------------------------------------------------------- outputs


def _save_density(path: Path, density: np.ndarray) -> None:
    with io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(density, dtype=np.float32))


def _entry(item: Item, provider_name: str, grid_size: int | None) -> dict:
    if item.result is not None:
        record = item.result.record()
    else:
        record = {"provider": provider_name, "branch": "uniform", "grid_size": grid_size}
        record["reason"] = item.reason
    return {**record, "sha256": item.sha256, "cache_key": item.key, "status": item.status}


def _write_outputs(out: Path, items: list[Item], settings: dict, on_failure: str) -> list[dict]:
    failed = [{"id": item.id, "reason": item.reason} for item in items if item.status == "failed"]
    size = settings["size"]
    for item in items:
        if item.result is not None:
            _save_density(out / f"{item.id}{DENSITY_SUFFIX}", item.result.density)
        elif on_failure == "uniform":
            _save_density(out / f"{item.id}{DENSITY_SUFFIX}", uniform_density(size))
    provider_name, grid_size = settings["provider_name"], settings["grid_size"]
    entries = {item.id: _entry(item, provider_name, grid_size) for item in items}
    io.write_json(out / "index.json", {**settings, "items": entries})
    io.write_json(out / "failed.json", failed)
    return failed


def run(
    images_dir,
    out_dir,
    *,
    provider: str = "vlm",
    url: str = DEFAULT_URL,
    model: str = DEFAULT_MODEL,
    grid_size: int = 8,
    smart: bool = False,
    on_failure: str = "fail",
    size: int = 64,
    resample: str = "bilinear",
    temperature: float = 0.1,
    max_tokens: int = 1024,
    connect_timeout: float = 5.0,
    read_timeout: float = 120.0,
    max_in_flight: int = 2,
    retries: int = 3,
    backoff: float = 1.0,
    backoff_max: float = 30.0,
    api_key_env: str | None = DEFAULT_API_KEY_ENV,
    cache_dir=None,
) -> dict:
    """Write a density map per manifest image to `out_dir`; return counts (see module doc)."""
    _check_settings(provider, on_failure, size, grid_size, resample)
    vlm = None
    if provider == "vlm":
        try:
            vlm = VLMProvider.from_settings(
                grid_size, smart, resample, url=url, model=model, temperature=temperature,
                max_tokens=max_tokens, connect_timeout=connect_timeout,
                read_timeout=read_timeout, retries=retries, backoff=backoff,
                backoff_max=backoff_max, max_in_flight=max_in_flight, api_key_env=api_key_env,
            )  # fmt: skip
        except ValueError as exc:
            raise VLMStageError(f"vlm settings: {exc}") from None
    items = read_manifest(images_dir)
    out = io.reset_dir(out_dir)
    for item in items:
        try:
            _check_content(item)
        except BadImage as exc:
            item.status, item.reason = "failed", _reason(exc)
    if vlm is not None:
        cache = Path(cache_dir) if cache_dir is not None else io.cache_root() / "vlm"
        _run_vlm(items, vlm, cache, size)
        client, provider_name = vlm.client, vlm.name
    else:
        client, cache, provider_name = None, None, "offline"
        _run_offline(items, size)
    settings = {
        "provider_name": provider_name,
        "provider": provider,
        "grid_size": grid_size if provider == "vlm" else None,
        "smart": bool(smart) if provider == "vlm" else None,
        "size": size,
        "resample": resample if provider == "vlm" else None,
        "on_failure": on_failure,
        "dtype": "float32",
    }
    failed = _write_outputs(out, items, settings, on_failure)
    stats = _stats(items, settings, client, cache, url if provider == "vlm" else None)
    log.info("vlm: %s", stats)
    if failed and on_failure == "fail":
        lines = "\n".join(f"  {f['id']}: {f['reason']}" for f in failed)
        raise VLMStageError(
            f"{len(failed)} image(s) without a VLM density (vlm.on_failure: fail; set it to "
            f"'uniform' to write all-ones maps for them instead):\n{lines}"
        )
    return stats


def _stats(items: list[Item], settings: dict, client, cache, url) -> dict:
    status = Counter(item.status for item in items)
    branches = Counter(item.result.branch for item in items if item.result is not None)
    return {
        "provider": settings["provider_name"],
        "images": len(items),
        "computed": status["computed"],
        "cached": status["cached"],
        "failed": status["failed"],
        "uniform": status["failed"] if settings["on_failure"] == "uniform" else 0,
        "branches": dict(sorted(branches.items())),
        "requests": client.requests_sent if client is not None else 0,
        "cache": str(cache) if cache is not None else None,
        "url": redact_url(url) if url else None,
    }
