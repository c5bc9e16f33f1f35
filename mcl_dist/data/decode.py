"""Turn a raw webdataset sample (dict of bytes) into model inputs, or say why it is bad."""
from __future__ import annotations

import io
from typing import Any, Callable, Optional

import torch
from PIL import Image


class BadSample(Exception):
    """A sample that cannot be used; `reason` is a short category for the counters."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _first(raw: dict, exts: tuple[str, ...]) -> Optional[bytes]:
    for ext in exts:
        if ext in raw:
            return raw[ext]
    return None


MAX_IMAGE_PIXELS = 40_000_000  # data.max_image_pixels' default
MAX_MEMBER_BYTES = 64 << 20  # data.max_member_bytes' default


def decode_image(raw: dict, exts: tuple[str, ...], max_pixels: int = MAX_IMAGE_PIXELS,
                 max_bytes: int = MAX_MEMBER_BYTES) -> Image.Image:
    data = _first(raw, exts)
    if data is None:
        raise BadSample("missing_image", f"{raw.get('__key__')} has none of {'/'.join(exts)}")
    if max_bytes and len(data) > max_bytes:
        raise BadSample("too_large", f"{raw.get('__key__')}: {len(data)} bytes > data.max_member_bytes={max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
    except Image.DecompressionBombError as e:  # PIL's own refusal, over 2x its limit of 89 M pixels
        raise BadSample("too_large", f"{raw.get('__key__')}: {e}") from e
    except Exception as e:
        raise BadSample("corrupt_image", f"{raw.get('__key__')}: {type(e).__name__}") from e
    # a small file can decode to gigabytes (PIL only warns below 2x its own limit of 89 M pixels)
    if max_pixels and img.width * img.height > max_pixels:
        raise BadSample("too_large", f"{raw.get('__key__')}: {img.width}x{img.height} pixels > "
                                     f"data.max_image_pixels={max_pixels}")
    try:
        img.load()  # force the full decode now: truncated JPEGs fail here, not in the model
        return img.convert("RGB")
    except Exception as e:
        raise BadSample("corrupt_image", f"{raw.get('__key__')}: {type(e).__name__}") from e


def decode_caption(raw: dict, ext: str) -> str:
    data = raw.get(ext)
    if data is None:
        raise BadSample("missing_caption", f"{raw.get('__key__')} has no .{ext}")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise BadSample("bad_caption", f"{raw.get('__key__')}: not UTF-8") from e
    if not text:
        raise BadSample("missing_caption", f"{raw.get('__key__')} has an empty caption")
    return text


class ClipDecoder:
    """Image + caption -> (image tensor, token ids). Picklable, so DataLoader workers can use it."""

    def __init__(self, preprocess: Callable, tokenizer: Optional[Callable], image_exts: str = "jpg;png;webp;jpeg",
                 caption_ext: str = "txt", need_text: bool = True, max_pixels: int = MAX_IMAGE_PIXELS,
                 max_bytes: int = MAX_MEMBER_BYTES):
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.image_exts = tuple(e.strip().lower() for e in image_exts.split(";") if e.strip())
        self.caption_ext = caption_ext
        self.need_text = need_text

    def __call__(self, raw: dict) -> dict[str, Any]:
        image = self.preprocess(decode_image(raw, self.image_exts, self.max_pixels, self.max_bytes))
        out = {"image": image, "key": raw["__key__"]}
        if self.need_text:
            out["text"] = self.tokenizer([decode_caption(raw, self.caption_ext)])[0]
        return out


class CachedDecode:
    """Memoise a deterministic decoder by sample key (data.cache_decoded): after the first pass
    over a small data set, a step costs no PNG decoding and no tokenising. Each process that
    decodes keeps its own cache; it starts empty when pickled into a DataLoader worker."""

    def __init__(self, decode: Callable[[dict], dict]):
        self.decode, self.cache = decode, {}

    def __getstate__(self) -> dict:
        return {"decode": self.decode, "cache": {}}

    def __call__(self, raw: dict) -> dict[str, Any]:
        hit = self.cache.get(raw["__key__"])
        if hit is None:
            hit = self.cache[raw["__key__"]] = self.decode(raw)
        return dict(hit)  # a new dict: callers may add fields; the tensors are only read (stacked)


def collate(samples: list[dict]) -> dict[str, Any]:
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples]),
                             "key": [s["key"] for s in samples]}
    for extra in ("text", "image2"):  # captions (CLIP) or the second view (SimCLR)
        if samples and extra in samples[0]:
            batch[extra] = torch.stack([s[extra] for s in samples])
    return batch
