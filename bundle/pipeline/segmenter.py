"""Nucleus instance segmentation of whole slides and large images, tile by tile, with bounded memory.

For each input, :class:`NucleusSegmenter` writes into ``<output_dir>/<stem>/``:

- ``<stem>_instances.tif``: uint32 instance label image, level-0 size, tiled and compressed;
- ``<stem>.geojson``: QuPath-compatible FeatureCollection of nucleus polygons (level-0 pixels) with measurements;
- ``<stem>_nuclei.csv``: one row per nucleus (:data:`bundle.pipeline.measure.CSV_COLUMNS`);
- ``<stem>_thumbnail.png``: a low-resolution overlay with the nuclei and the detected tissue outlined;
- ``<stem>_summary.json``: count, density per mm^2 of tissue, resolution and its source, tiles, time, memory;

and, for a batch, ``report.json`` with what was written and what was skipped and why.

The slide is read at the model's resolution (``model_mpp``) in tiles of ``tile_size`` pixels with ``margin``
pixels of context on each side; tiles without tissue (on a thumbnail) are skipped. Each tile's nuclei are
split by :func:`bundle.pipeline.split.split_instances` and a nucleus is kept by the one tile whose core holds its
centroid, so nuclei across tile borders are neither duplicated nor cut (the margin exceeds a nucleus diameter).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import tifffile
import torch
from PIL import Image
from skimage.draw import polygon as fill_polygon
from skimage.draw import polygon_perimeter
from tqdm import tqdm

from bundle.training.checkpoints import load_state_dict
from bundle.pipeline.measure import Nucleus, density_per_mm2, measure_nuclei, write_csv, write_geojson
from bundle.pipeline.split import split_instances
from bundle.io.slides import IMAGE_SUFFIXES, SLIDE_SUFFIXES, SlideReadError, open_source, tissue_mask

__all__ = ["NucleusSegmenter", "find_inputs", "peak_rss_mb"]
logger = logging.getLogger(__name__)
LABEL_TILE = 512  # tile side of the instance TIFF
THUMBNAIL_SIDE = 2048


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def find_inputs(path: Union[str, os.PathLike]) -> List[Path]:
    """A file, or the slides and images directly inside a folder (sorted).

    Raises:
        SlideReadError: the path does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise SlideReadError(f"{p}: no such file or folder")
    if p.is_file():
        return [p]
    suffixes = set(SLIDE_SUFFIXES) | set(IMAGE_SUFFIXES)
    return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)


class _TileGrid:
    """Tiles of a ``width`` x ``height`` (model pixels) plane: cores of ``size`` and reads with ``margin`` around."""

    def __init__(self, width: int, height: int, size: int, margin: int):
        self.width, self.height, self.size, self.margin = width, height, size, margin

    def __iter__(self) -> Iterator[Tuple[Tuple[int, int, int, int], Tuple[int, int, int, int]]]:
        """Yields (core, read) boxes as (x0, y0, x1, y1) in model pixels, row-major."""
        for y0 in range(0, self.height, self.size):
            for x0 in range(0, self.width, self.size):
                core = (x0, y0, min(x0 + self.size, self.width), min(y0 + self.size, self.height))
                read = (max(0, x0 - self.margin), max(0, y0 - self.margin), min(self.width, core[2] + self.margin), min(self.height, core[3] + self.margin))
                yield core, read

    def __len__(self) -> int:
        return math.ceil(self.width / self.size) * math.ceil(self.height / self.size)


class NucleusSegmenter:
    """Segments nuclei in slides and images and writes instance maps, GeoJSON, CSV, thumbnail and summary.

    Args:
        network: the segmentation network, (B, 3, H, W) in [0, 1] -> (B, 1, H, W) logits.
        inferer: called as ``inferer(image, network)`` on one tile (1, 3, h, w); a sliding-window inferer.
        checkpoint: weights to load into ``network`` (``None``: use it as it is).
        device: where the network runs.
        model_mpp: microns per pixel the network was trained at.
        tile_size: tile core side in model pixels.
        margin: context read around each tile, in model pixels; must exceed the largest nucleus diameter.
        threshold: nucleus probability threshold.
        min_size: smallest nucleus in model pixels.
        min_distance: smallest distance between nucleus centres in model pixels (watershed markers).
        sigma: smoothing of the distance map before marker finding, in model pixels. The defaults (6, 3.0) scored
            best by AJI on 8 MoNuSeg training images (``scripts/evaluate_instances.py``). Both apply to networks
            without a distance head.
        marker_height: h-maxima height of the watershed markers, for a network with a distance head.
        amp: run the network under autocast (CUDA).
        progress: show a progress bar over tiles.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable[[torch.Tensor, torch.nn.Module], torch.Tensor],
        checkpoint: Optional[Union[str, os.PathLike]] = None,
        device: Union[str, torch.device] = "cpu",
        model_mpp: float = 0.25,
        tile_size: int = 1024,
        margin: int = 64,
        threshold: float = 0.5,
        min_size: int = 10,
        min_distance: int = 6,
        sigma: float = 3.0,
        marker_height: float = 0.2,
        amp: bool = False,
        progress: bool = True,
    ):
        if tile_size <= 0 or margin < 0:
            raise ValueError(f"tile_size must be positive and margin non-negative, got {tile_size} and {margin}")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if checkpoint is not None:
            self.network.load_state_dict(load_state_dict(checkpoint))
        self.inferer = inferer
        self.model_mpp = float(model_mpp)
        self.tile_size, self.margin = int(tile_size), int(margin)
        self.threshold, self.min_size, self.min_distance, self.sigma = threshold, min_size, min_distance, sigma
        self.marker_height = marker_height
        self.amp = amp and self.device.type == "cuda"
        self.progress = progress

    # -- one tile ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, rgb: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Nucleus probability (h, w) float32 of an RGB uint8 tile (h, w, 3) at model resolution, and the
        normalised distance (h, w) float32 when the network has a distance head (None otherwise)."""
        image = torch.tensor(rgb).permute(2, 0, 1)[None].float().div_(255.0).to(self.device)
        with torch.autocast(self.device.type, enabled=self.amp, dtype=torch.bfloat16):
            logits = self.inferer(image, self.network)
        out = torch.sigmoid(logits.float())[0].cpu().numpy()
        return out[0], (out[1] if out.shape[0] > 1 else None)

    def split(self, rgb: np.ndarray) -> np.ndarray:
        """Instance labels (h, w) int32 of an RGB uint8 tile (h, w, 3) at model resolution."""
        prob, distance = self.predict(rgb)
        return split_instances(prob, self.threshold, self.min_size, self.min_distance, self.sigma, distance, self.marker_height)

    # -- one slide or image -----------------------------------------------------------------------------------
    def segment(self, path: Union[str, os.PathLike], output_dir: Union[str, os.PathLike], mpp: Optional[float] = None) -> Dict[str, Any]:
        """Segment one slide or image and write its outputs into ``output_dir/<stem>/``; returns the summary.

        Raises:
            SlideReadError: the input cannot be read (the message names it and the problem).
        """
        t0 = time.perf_counter()
        source = open_source(path, mpp, default_mpp=self.model_mpp)
        scale = source.mpp / self.model_mpp  # model pixels per level-0 pixel
        mw, mh = max(1, round(source.width * scale)), max(1, round(source.height * scale))
        thumb, thumb_down = source.thumbnail(THUMBNAIL_SIDE)
        tissue = tissue_mask(thumb)
        thumb_mpp = source.mpp * thumb_down
        grid = _TileGrid(mw, mh, self.tile_size, self.margin)
        nuclei: List[Nucleus] = []
        processed = skipped = processed_px = 0
        bar = tqdm(grid, total=len(grid), desc=source.path.name, unit="tile", disable=not self.progress, leave=False)
        for core, read in bar:
            if not self._has_tissue(tissue, core, 1.0 / (scale * thumb_down)):
                skipped += 1
                continue
            # level-0 box of the read window
            lx0, ly0 = int(math.floor(read[0] / scale)), int(math.floor(read[1] / scale))
            lx1, ly1 = min(source.width, int(math.ceil(read[2] / scale))), min(source.height, int(math.ceil(read[3] / scale)))
            out_shape = (max(1, round((ly1 - ly0) * scale)), max(1, round((lx1 - lx0) * scale)))
            rgb = source.read_region(lx0, ly0, lx1 - lx0, ly1 - ly0, out_shape)
            labels = self.split(rgb)
            ox, oy = lx0 * scale, ly0 * scale  # model-pixel position of the read window
            keep = (core[1] - oy, core[0] - ox, core[3] - oy, core[2] - ox)
            nuclei += measure_nuclei(labels, rgb, self.model_mpp, source.mpp, origin=(lx0, ly0), keep=keep)
            processed += 1
            processed_px += (core[2] - core[0]) * (core[3] - core[1])
        bar.close()
        for i, n in enumerate(nuclei, start=1):
            n.id = i
        out = Path(output_dir) / source.path.stem
        out.mkdir(parents=True, exist_ok=True)
        stem = source.path.stem
        files = {
            "instances": self._write_instances(out / f"{stem}_instances.tif", nuclei, source.width, source.height, source.mpp),
            "geojson": write_geojson(out / f"{stem}.geojson", nuclei),
            "csv": write_csv(out / f"{stem}_nuclei.csv", nuclei),
            "thumbnail": self._write_thumbnail(out / f"{stem}_thumbnail.png", thumb, thumb_down, tissue, nuclei),
        }
        seconds = time.perf_counter() - t0
        tissue_um2 = float(tissue.sum()) * thumb_mpp**2
        summary = {
            "input": str(source.path),
            "width": source.width,
            "height": source.height,
            "mpp": source.mpp,
            "mpp_source": source.mpp_source,
            "model_mpp": self.model_mpp,
            "nucleus_count": len(nuclei),
            "tissue_area_mm2": round(tissue_um2 * 1e-6, 6),
            "nuclei_per_mm2_tissue": round(density_per_mm2(len(nuclei), tissue_um2), 2) if tissue_um2 > 0 else None,
            "tiles": len(grid),
            "tiles_processed": processed,
            "tiles_skipped_background": skipped,
            "seconds": round(seconds, 2),
            "megapixels_level0": round(source.width * source.height / 1e6, 3),
            "mpx_per_s_level0": round(source.width * source.height / 1e6 / seconds, 4),
            "megapixels_processed_model": round(processed_px / 1e6, 3),
            "mpx_per_s_processed_model": round(processed_px / 1e6 / seconds, 4),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "device": str(self.device),
            "files": {k: str(v) for k, v in files.items()},
        }
        if not nuclei:
            summary["message"] = "no tissue detected" if not tissue.any() else "tissue detected but no nuclei found"
        (out / f"{stem}_summary.json").write_text(json.dumps(summary, indent=2))
        logger.info("%s: %d nuclei, %d/%d tiles, %.1f s -> %s", source.path, len(nuclei), processed, len(grid), seconds, out)
        return summary

    @staticmethod
    def _has_tissue(tissue: np.ndarray, core: Tuple[int, int, int, int], to_thumb: float) -> bool:
        x0, y0 = int(core[0] * to_thumb), int(core[1] * to_thumb)
        x1, y1 = max(x0 + 1, int(math.ceil(core[2] * to_thumb))), max(y0 + 1, int(math.ceil(core[3] * to_thumb)))
        return bool(tissue[y0:y1, x0:x1].any())

    # -- outputs ----------------------------------------------------------------------------------------------
    @staticmethod
    def _write_instances(path: Path, nuclei: Sequence[Nucleus], width: int, height: int, mpp: float) -> Path:
        """uint32 label TIFF (tiled, zlib) rasterised tile by tile from the polygons: memory ~ one tile."""
        index: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for k, n in enumerate(nuclei):
            (x0, y0), (x1, y1) = n.polygon.min(0), n.polygon.max(0)
            for ty in range(max(0, int(y0) // LABEL_TILE), min(height - 1, int(y1)) // LABEL_TILE + 1):
                for tx in range(max(0, int(x0) // LABEL_TILE), min(width - 1, int(x1)) // LABEL_TILE + 1):
                    index[(ty, tx)].append(k)

        def tiles() -> Iterator[np.ndarray]:
            for ty in range(math.ceil(height / LABEL_TILE)):
                for tx in range(math.ceil(width / LABEL_TILE)):
                    tile = np.zeros((LABEL_TILE, LABEL_TILE), np.uint32)
                    for k in index.get((ty, tx), ()):
                        poly = nuclei[k].polygon
                        rr, cc = fill_polygon(poly[:, 1] - ty * LABEL_TILE - 0.5, poly[:, 0] - tx * LABEL_TILE - 0.5, tile.shape)
                        tile[rr, cc] = nuclei[k].id
                    yield tile

        res = 1e4 / mpp  # pixels per centimetre
        tifffile.imwrite(
            path, tiles(), shape=(height, width), dtype=np.uint32, tile=(LABEL_TILE, LABEL_TILE),
            compression="zlib", resolution=(res, res), resolutionunit="CENTIMETER", metadata=None,
        )
        return path

    @staticmethod
    def _write_thumbnail(path: Path, thumb: np.ndarray, down: float, tissue: np.ndarray, nuclei: Sequence[Nucleus]) -> Path:
        """Thumbnail with nuclei outlined in green (filled where smaller than 3 px) and tissue outlined in blue."""
        canvas = thumb.copy()
        edge = tissue ^ np.pad(tissue, 1)[2:, 1:-1] | tissue ^ np.pad(tissue, 1)[1:-1, 2:]
        canvas[edge] = (0, 90, 255)
        for n in nuclei:
            poly = n.polygon / down
            if np.ptp(poly[:, 0]) < 3 and np.ptp(poly[:, 1]) < 3:
                rr, cc = fill_polygon(poly[:, 1], poly[:, 0], canvas.shape[:2])
            else:
                rr, cc = polygon_perimeter(poly[:, 1], poly[:, 0], canvas.shape[:2], clip=True)
            canvas[rr, cc] = (0, 220, 0)
        Image.fromarray(canvas).save(path)
        return path

    # -- a batch ----------------------------------------------------------------------------------------------
    def run(self, input_path: Union[str, os.PathLike], output_dir: Union[str, os.PathLike], mpp: Optional[float] = None) -> Dict[str, Any]:
        """Segment a file or every slide and image in a folder; a bad input is skipped and reported.

        Returns and writes ``<output_dir>/report.json``: ``{"written": [...summaries], "skipped": [{"input", "reason"}]}``.

        Raises:
            SlideReadError: ``input_path`` does not exist, or a folder holds no slide or image.
        """
        inputs = find_inputs(input_path)
        if not inputs:
            raise SlideReadError(f"{input_path}: no slides or images ({', '.join(sorted(set(SLIDE_SUFFIXES) | set(IMAGE_SUFFIXES)))}) in this folder")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        report: Dict[str, Any] = {"written": [], "skipped": []}
        for p in inputs:
            try:
                report["written"].append(self.segment(p, output_dir, mpp))
            except SlideReadError as e:
                logger.error("skipped %s", e)
                report["skipped"].append({"input": str(p), "reason": str(e)})
        (Path(output_dir) / "report.json").write_text(json.dumps(report, indent=2))
        logger.info("%d written, %d skipped -> %s", len(report["written"]), len(report["skipped"]), Path(output_dir) / "report.json")
        return report
